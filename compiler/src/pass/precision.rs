//! Mixed precision: contractions (matmul, dot, conv2d, linear, attention)
//! multiply in bf16 or f16 and accumulate in f32; everything else stays f32.
//!
//! The policy touches only the contractions: their main operands (not a bias
//! or mask) are cast to the low type and the op accumulates in f32, so its
//! result keeps its f32 type and every other op — softmax, log_softmax,
//! layer_norm, rms_norm, reductions, exp, log and whatever follows them until
//! the next contraction — runs in f32 unchanged. Model inputs and outputs keep
//! their declared dtypes. A cast of a weight is a weight-only computation, so
//! `fold-weights` stores the weight in the low type at compile time. Nodes
//! named in `--keep-f32` are left in f32.

use crate::dtype::DType;
use crate::error::{Diagnostic, Error};
use crate::infer::infer;
use crate::ir::{Module, Value};
use crate::op::Op;
use std::collections::HashMap;
use std::str::FromStr;

/// A precision policy (`--precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Everything as declared.
    F32,
    /// Contractions in bf16 with f32 accumulation.
    MixedBf16,
    /// Contractions in f16 with f32 accumulation.
    MixedF16,
}

impl Precision {
    /// The low type of a mixed policy.
    pub fn low(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::MixedBf16 => Some(DType::BF16),
            Precision::MixedF16 => Some(DType::F16),
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "mixed-bf16" => Ok(Precision::MixedBf16),
            "mixed-f16" => Ok(Precision::MixedF16),
            _ => Err(format!("unknown precision `{s}` (expected f32, mixed-bf16 or mixed-f16)")),
        }
    }
}

/// How many leading operands of a contraction are multiplied (the rest are a bias or mask).
fn multiplied(op: &Op) -> Option<usize> {
    match op {
        Op::MatMul { acc: None } => Some(2),
        Op::Dot(d) if d.acc.is_none() => Some(2),
        Op::Conv2d { acc: None, .. } | Op::Linear { acc: None, .. } => Some(2),
        Op::Attention { acc: None, .. } => Some(3),
        _ => None,
    }
}

/// `op` accumulating in `acc`.
fn accumulating(op: &Op, acc: DType) -> Op {
    let mut op = op.clone();
    match &mut op {
        Op::MatMul { acc: a }
        | Op::Conv2d { acc: a, .. }
        | Op::Linear { acc: a, .. }
        | Op::Attention { acc: a, .. } => *a = Some(acc),
        Op::Dot(d) => d.acc = Some(acc),
        _ => {}
    }
    op
}

/// Applies the mixed policy with low type `low`; true when any contraction changed.
pub fn apply(m: &mut Module, low: DType, keep_f32: &[String]) -> Result<bool, Error> {
    let names: Vec<String> = m.order().iter().map(|&n| m.node(n).name.clone()).collect();
    if let Some(unknown) = keep_f32.iter().find(|k| !names.contains(k)) {
        return Err(Error::Invalid {
            origin: "--keep-f32".into(),
            diagnostics: vec![Diagnostic::new(format!("`{unknown}`"), "no node of the model has this name")],
        });
    }
    let mut casts: HashMap<Value, Value> = HashMap::new();
    let mut changed = false;
    for n in m.order().to_vec() {
        let node = m.node(n).clone();
        let Some(k) = multiplied(&node.op) else { continue };
        let out_ty = m.value(node.output).ty.clone();
        let operands: Vec<Value> = node.inputs.iter().map(|&v| m.resolve(v)).collect();
        let all_f32 = operands[..k].iter().all(|&v| m.value(v).ty.dtype == DType::F32);
        if keep_f32.contains(&node.name) || out_ty.dtype != DType::F32 || !all_f32 {
            continue;
        }
        let new_op = accumulating(&node.op, DType::F32);
        // Check the result keeps its type before adding any cast.
        let low_types: Vec<_> = operands[..k].iter().map(|&v| m.value(v).ty.with_dtype(low)).collect();
        let rest: Vec<_> = operands[k..].iter().map(|&v| m.value(v).ty.clone()).collect();
        let all: Vec<_> = low_types.iter().chain(&rest).collect();
        if infer(&new_op, &all).ok().as_ref() != Some(&out_ty) {
            continue;
        }
        let mut inputs = Vec::with_capacity(operands.len());
        for &v in &operands[..k] {
            let cast = match casts.get(&v) {
                Some(&c) => c,
                None => {
                    let name = m.fresh_name(&format!("{}.{low}", m.value(v).name));
                    let ty = m.value(v).ty.with_dtype(low);
                    let c = m.insert_before(n, &name, Op::Cast { to: low }, vec![v], ty);
                    casts.insert(v, c);
                    c
                }
            };
            inputs.push(cast);
        }
        inputs.extend(&operands[k..]);
        let nd = m.node_mut(n);
        nd.op = new_op;
        nd.inputs = inputs;
        changed = true;
    }
    Ok(changed)
}
