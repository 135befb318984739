//! Precision policies. The pure ones (`bf16`, `f16`) run every op in the low
//! type: float inputs are cast at entry, weights are cast (and folded at
//! compile time), float constants, iotas and casts produce the low type, and
//! outputs are cast back to their declared dtypes.
//!
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
//!
//! A matrix-vector product — a weight times one row of activations, as a
//! decode step at batch 1 runs — stores its weight in the low type too but
//! multiplies in f32: the weight is widened inside the product and the
//! activations are not rounded. XLA's CPU backend (0.81) runs such a product
//! as a loop that widens each weight element as it reads it: the 50257×768
//! table times one row took 2.4 ms so, 5.6 ms as a bf16×bf16 product and
//! 9.6 ms in f32 (as long as no add is fused into it: see `lower_linear`).

use crate::error::{Diagnostic, Error};
use crate::ir::dtype::DType;
use crate::ir::infer::infer;
use crate::ir::op::Op;
use crate::ir::types::TensorType;
use crate::ir::{Module, Node, Value, ValueDef};
use std::collections::HashMap;
use std::str::FromStr;

/// A precision policy (`--precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Everything as declared.
    #[default]
    F32,
    /// Everything in bf16; inputs and outputs keep their declared dtypes.
    Bf16,
    /// Everything in f16; inputs and outputs keep their declared dtypes.
    F16,
    /// Contractions in bf16 with f32 accumulation.
    MixedBf16,
    /// Contractions in f16 with f32 accumulation.
    MixedF16,
}

impl Precision {
    /// The command-line name (`f32`, `mixed-bf16`...), as [`FromStr`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
            Precision::MixedBf16 => "mixed-bf16",
            Precision::MixedF16 => "mixed-f16",
        }
    }

    /// The low type of a mixed policy.
    pub fn low(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 | Precision::MixedBf16 => Some(DType::BF16),
            Precision::F16 | Precision::MixedF16 => Some(DType::F16),
        }
    }

    /// True for the mixed policies (contractions only, f32 accumulation).
    pub fn is_mixed(self) -> bool {
        matches!(self, Precision::MixedBf16 | Precision::MixedF16)
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Precision::F32, Precision::Bf16, Precision::F16, Precision::MixedBf16, Precision::MixedF16]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision `{s}` (expected f32, bf16, f16, mixed-bf16 or mixed-f16)"))
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

/// Applies the mixed policy with low type `low`; returns how many contractions changed.
pub fn apply(m: &mut Module, low: DType, keep_f32: &[String]) -> Result<usize, Error> {
    let names: Vec<String> = m.order().iter().map(|&n| m.node(n).name.clone()).collect();
    if let Some(unknown) = keep_f32.iter().find(|k| !names.contains(k)) {
        return Err(Error::Invalid {
            origin: "--keep-f32".into(),
            diagnostics: vec![Diagnostic::new(format!("`{unknown}`"), "no node of the model has this name")],
        });
    }
    let mut casts: HashMap<Value, Value> = HashMap::new();
    let mut rewrites = 0;
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
        if let Some(w) = matrix_vector_weight(m, &node.op, &operands) {
            // The weight stored low, widened inside an f32 product.
            let low_w = low_cast(m, &mut casts, n, operands[w], low);
            let name = m.fresh_name(&format!("{}.widened", m.value(low_w).name));
            let ty = m.value(low_w).ty.with_dtype(DType::F32);
            let widened = m.insert_before(n, &name, Op::Cast { to: DType::F32 }, vec![low_w], ty);
            m.node_mut(n).inputs[w] = widened;
            rewrites += 1;
            continue;
        }
        let mut inputs = Vec::with_capacity(operands.len());
        for &v in &operands[..k] {
            inputs.push(low_cast(m, &mut casts, n, v, low));
        }
        inputs.extend(&operands[k..]);
        let nd = m.node_mut(n);
        nd.op = new_op;
        nd.inputs = inputs;
        rewrites += 1;
    }
    Ok(rewrites)
}

/// `v` cast to `low` before node `at`, one cast per value.
fn low_cast(m: &mut Module, casts: &mut HashMap<Value, Value>, at: Node, v: Value, low: DType) -> Value {
    if let Some(&c) = casts.get(&v) {
        return c;
    }
    let name = m.fresh_name(&format!("{}.{low}", m.value(v).name));
    let ty = m.value(v).ty.with_dtype(low);
    let c = m.insert_before(at, &name, Op::Cast { to: low }, vec![v], ty);
    casts.insert(v, c);
    c
}

/// Which operand of a two-operand product is a 2-D weight (a parameter)
/// multiplying a single row of the other operand: a matrix-vector product.
fn matrix_vector_weight(m: &Module, op: &Op, operands: &[Value]) -> Option<usize> {
    let is_weight = |v: Value| matches!(m.value(v).def, ValueDef::Param(_)) && m.value(v).ty.rank() == 2;
    let ty = |i: usize| &m.value(operands[i]).ty;
    let types: Vec<&TensorType> = operands.iter().map(|&v| &m.value(v).ty).collect();
    let contracted = op.contracted_dims(&types)?;
    // A matmul's or linear's weight is its second operand; a dot's either.
    let w = if matches!(op, Op::Dot(_)) { [1, 0].into_iter().find(|&i| is_weight(operands[i]))? } else { 1 };
    let row = 1 - w;
    let rows_of_one = ty(row).num_elements() > 0 && ty(row).rows(&contracted[row]) == 1;
    (is_weight(operands[w]) && !is_weight(operands[row]) && rows_of_one).then_some(w)
}

/// Applies a pure policy: every float computation in `low`. `keep_f32` is
/// refused: pinning nodes is a mixed-policy feature. Returns how many
/// inputs and weights it casts on entry.
pub fn apply_pure(m: &mut Module, low: DType, keep_f32: &[String]) -> Result<usize, Error> {
    if !keep_f32.is_empty() {
        return Err(Error::Invalid {
            origin: "--keep-f32".into(),
            diagnostics: vec![Diagnostic::new(
                "policy",
                "applies to mixed-bf16 and mixed-f16; bf16 and f16 run every node in the low type",
            )],
        });
    }
    let declared: Vec<DType> = m.outputs().iter().map(|&v| m.value(v).ty.dtype).collect();
    let narrow = |d: DType| d.is_float() && d != low;
    // Entry casts of float inputs and weights, placed first; every use is redirected to them.
    let sources: Vec<Value> = m
        .inputs()
        .iter()
        .copied()
        .chain(m.params().iter().map(|p| p.value))
        .filter(|&v| narrow(m.value(v).ty.dtype))
        .collect();
    let mut entry: HashMap<Value, Value> = HashMap::new();
    let first = m.order().first().copied();
    for v in sources {
        let name = m.fresh_name(&format!("{}.{low}", m.value(v).name));
        let ty = m.value(v).ty.with_dtype(low);
        let c = match first {
            Some(at) => m.insert_before(at, &name, Op::Cast { to: low }, vec![v], ty),
            None => m.append_node(name.clone(), Op::Cast { to: low }, vec![v], name, ty),
        };
        entry.insert(v, c);
    }
    let casts: Vec<Value> = entry.values().copied().collect();
    for n in m.order().to_vec() {
        let node = m.node(n);
        if casts.contains(&node.output) {
            continue;
        }
        let inputs: Vec<Value> = node.inputs.iter().map(|&v| *entry.get(&m.resolve(v)).unwrap_or(&v)).collect();
        let mut op = node.op.clone();
        match &mut op {
            Op::Constant { dtype, .. } | Op::Iota { dtype, .. } | Op::RandomUniform { dtype, .. } if narrow(*dtype) => {
                *dtype = low
            }
            Op::Cast { to } if narrow(*to) => *to = low,
            _ => {}
        }
        let types: Vec<_> = inputs.iter().map(|&v| &m.value(v).ty).collect();
        let ty = infer(&op, &types).map_err(|e| Error::Invalid {
            origin: format!("--precision {low}"),
            diagnostics: vec![Diagnostic::new(format!("node `{}`", m.node(n).name), e)],
        })?;
        let output = m.node(n).output;
        let nd = m.node_mut(n);
        nd.op = op;
        nd.inputs = inputs;
        m.set_type(output, ty);
    }
    // Outputs back to their declared dtypes.
    for (i, want) in declared.into_iter().enumerate() {
        let v = m.resolve(m.outputs()[i]);
        let v = *entry.get(&v).unwrap_or(&v);
        if m.value(v).ty.dtype != want {
            let name = m.fresh_name(&format!("{}.{want}", m.value(v).name));
            let ty = m.value(v).ty.with_dtype(want);
            let c = m.append_node(name.clone(), Op::Cast { to: want }, vec![v], name, ty);
            m.set_output(i, c);
        }
    }
    Ok(casts.len())
}
