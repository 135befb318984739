//! Checking a precision policy before deploying it: the f32 program and the
//! mixed one run on the reference interpreter (no plugin needed) and are
//! compared output by output, and every f32 value is measured against the low
//! type's range, naming the first contraction whose operand would overflow.

use crate::{interp_args, CompiledModel, Error};
use std::collections::BTreeMap;
use xlac_compiler::backend::interp::{eval_all, Tensor};
use xlac_compiler::ir::op::Op;
use xlac_compiler::ir::Value;
use xlac_compiler::passes::precision::Precision;
use xlac_compiler::DType;
use xlac_runtime::HostTensor;

/// How far one output of the mixed program is from the f32 one.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputError {
    pub name: String,
    pub max_abs: f64,
    /// The largest |mixed − f32| / |f32| over elements of at least 0.1% of
    /// the output's largest magnitude (smaller ones make ratios meaningless).
    pub max_rel: f64,
    pub cosine: f64,
}

/// One node's f32 values measured against the low type.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRange {
    pub node: String,
    pub op: &'static str,
    pub max_abs: f64,
    /// Fraction of the nonzero values that round to zero in the low type.
    pub underflow: f64,
    /// True when a finite value exceeds the low type's largest finite value.
    pub overflows: bool,
}

/// A contraction whose multiplied operand exceeds the low type's range.
#[derive(Clone, Debug, PartialEq)]
pub struct Overflow {
    pub node: String,
    pub operand: String,
    pub magnitude: f64,
}

/// What [`check_precision`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct PrecisionReport {
    pub policy: Precision,
    pub low: DType,
    /// The low type's largest finite value.
    pub low_max: f64,
    pub outputs: Vec<OutputError>,
    pub nodes: Vec<NodeRange>,
    pub first_overflow: Option<Overflow>,
}

/// Compares `mixed` (the same model under `policy`) with `reference` (f32)
/// on the given (or seeded random) inputs. Under a mixed policy the overflow
/// that matters is a contraction's operand; under a pure one, any node's value.
pub fn check_precision(
    reference: &CompiledModel,
    mixed: &CompiledModel,
    policy: Precision,
    given: &BTreeMap<String, HostTensor>,
    seed: u64,
) -> Result<PrecisionReport, Error> {
    let low = policy.low().unwrap_or(DType::F32);
    let low_max = low.max_finite().unwrap_or(f64::MAX);
    let r = &reference.module;
    let env = eval_all(r, &interp_args(reference, given, seed)?)?;
    let value = |v: Value| env[r.resolve(v).index()].as_ref().map(Tensor::to_f64);
    let mut nodes = Vec::new();
    for &n in r.order() {
        let node = r.node(n);
        if !r.value(node.output).ty.dtype.is_float() {
            continue;
        }
        let Some(vals) = value(node.output) else { continue };
        let finite = vals.iter().filter(|x| x.is_finite());
        let max_abs = finite.clone().fold(0.0f64, |m, x| m.max(x.abs()));
        let nonzero = vals.iter().filter(|&&x| x != 0.0 && x.is_finite()).count();
        let flushed = vals.iter().filter(|&&x| x != 0.0 && x.is_finite() && low.round_f64(x) == 0.0).count();
        nodes.push(NodeRange {
            node: node.name.clone(),
            op: node.op.name(),
            max_abs,
            underflow: if nonzero == 0 { 0.0 } else { flushed as f64 / nonzero as f64 },
            overflows: max_abs > low_max,
        });
    }
    // The contractions the policy lowered, in order: the first with an operand out of range.
    let lowered: Vec<&str> = mixed
        .module
        .order()
        .iter()
        .map(|&n| mixed.module.node(n))
        .filter(|nd| nd.inputs.iter().any(|&i| mixed.module.value(i).ty.dtype == low))
        .map(|nd| nd.name.as_str())
        .collect();
    let multiplied = |op: &Op| match op {
        Op::MatMul { .. } | Op::Dot(_) | Op::Conv2d { .. } | Op::Linear { .. } => 2,
        Op::Attention { .. } => 3,
        _ => 0,
    };
    let contraction_overflow = || {
        r.order().iter().map(|&n| r.node(n)).filter(|nd| lowered.contains(&nd.name.as_str())).find_map(|nd| {
            nd.inputs.iter().take(multiplied(&nd.op)).find_map(|&i| {
                let m = value(i)?.iter().filter(|x| x.is_finite()).fold(0.0f64, |m, x| m.max(x.abs()));
                (m > low_max).then(|| Overflow {
                    node: nd.name.clone(),
                    operand: r.value(r.resolve(i)).name.clone(),
                    magnitude: m,
                })
            })
        })
    };
    let pure_overflow = || {
        let first = nodes.iter().find(|n| n.overflows)?;
        Some(Overflow { node: first.node.clone(), operand: first.node.clone(), magnitude: first.max_abs })
    };
    let first_overflow = if policy.is_mixed() { contraction_overflow() } else { pure_overflow() };
    let got = crate::eval_model(mixed, given, seed)?;
    let want = crate::eval_model(reference, given, seed)?;
    let outputs = got.iter().zip(&want).map(|((name, a), (_, e))| output_error(name, a, e)).collect();
    Ok(PrecisionReport { policy, low, low_max, outputs, nodes, first_overflow })
}

fn output_error(name: &str, a: &HostTensor, e: &HostTensor) -> OutputError {
    let (a, e) = (a.to_f64_vec(), e.to_f64_vec());
    let scale = e.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let (mut max_abs, mut max_rel, mut dot, mut na, mut ne) = (0.0f64, 0.0f64, 0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(&e) {
        let d = if x.is_finite() { (x - y).abs() } else { f64::INFINITY };
        max_abs = max_abs.max(d);
        if y.abs() >= 1e-3 * scale && y != 0.0 {
            max_rel = max_rel.max(d / y.abs());
        }
        dot += x * y;
        na += x * x;
        ne += y * y;
    }
    let cosine = if na > 0.0 && ne > 0.0 && dot.is_finite() {
        dot / (na.sqrt() * ne.sqrt())
    } else if na == ne {
        1.0
    } else {
        0.0
    };
    OutputError { name: name.into(), max_abs, max_rel, cosine: if cosine.is_nan() { 0.0 } else { cosine } }
}
