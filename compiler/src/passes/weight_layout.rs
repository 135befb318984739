//! Weight layout: a dot that contracts a 2-D weight over its last dimension
//! (`x · wᵀ`, `w` stored `[out, in]` as PyTorch and Hugging Face store linear
//! layers) reads the weight transposed instead, contracting its leading
//! dimension. fold-weights then turns the transpose into a transposed view of
//! the stored tensor, so nothing is copied at compile time and the runtime
//! lays the weight out once, while uploading it.
//!
//! Why: on the 0.81 CPU plugin, profiles show `[out, in]` dots running on
//! Eigen, which spent 27% of a MiniLM-L6 forward packing the transposed
//! operand element by element, while `[in, out]` dots run on XNNPACK's GEMM.
//! Twelve BERT feed-forward GEMMs (`[128,384]` by `[384,1536]` and back) ran
//! 2.0–2.4× faster with `[in, out]` weights (see docs/benchmarks.md). GPU GEMM
//! libraries read either layout at full speed.
//!
//! Weights stored in bf16 or f16 (the mixed-precision policies) go the other
//! way: a dot contracting one over its first dimension reads it `[out, in]`.
//! XLA's CPU backend widens a 16-bit weight inside the product, and on the
//! 0.81 plugin that runs faster `[out, in]` at every size measured (a
//! 4096×1024 bf16 weight, eight in a row: 4.5 against 108.8 ms for one row
//! of activations, 4.0 against 6.1 ms for 8, 10.8 against 12.5 ms for 128,
//! 79.8 against 94.5 ms for 1024), where f32 weights are 9× slower
//! `[out, in]` for 8 rows and no faster for one.
//!
//! A weight is rewritten only when every use is such a dot (so it is still
//! uploaded once), it is not a module output, and it has no sharding
//! annotation of its own.

use crate::ir::dtype::DType;
use crate::ir::op::Op;
use crate::ir::types::TensorType;
use crate::ir::{Module, Node, ParamSource, Value};

/// Rewrites the dots of every eligible weight; returns how many weights it transposed.
pub fn run(m: &mut Module) -> usize {
    let mut rewrites = 0;
    for w in candidates(m) {
        let ty = &m.value(w).ty;
        // f32 products read the weight [in, out]; 16-bit ones [out, in] (see the module docs).
        let (from, to) = if matches!(ty.dtype, DType::BF16 | DType::F16) { (0, 1) } else { (1, 0) };
        let dots = dots_using(m, w, from);
        if dots.is_empty() {
            continue;
        }
        let ty = TensorType::new(ty.dtype, vec![ty.shape[1], ty.shape[0]]);
        let name = m.fresh_name(&format!("{}.transposed", m.value(w).name));
        let t = m.insert_before(dots[0], &name, Op::Transpose { perm: vec![1, 0] }, vec![w], ty);
        for d in dots {
            let node = m.node_mut(d);
            node.inputs[1] = t;
            if let Op::Dot(dims) = &mut node.op {
                dims.rhs_contract = vec![to];
            }
        }
        rewrites += 1;
    }
    rewrites
}

/// File parameters of rank 2 without a sharding annotation that are no module output.
fn candidates(m: &Module) -> Vec<Value> {
    m.params()
        .iter()
        .filter(|p| matches!(p.source, ParamSource::File { .. }))
        .map(|p| p.value)
        .filter(|&v| m.value(v).ty.rank() == 2 && m.value(v).sharding.is_none())
        .filter(|&v| !m.outputs().iter().any(|&o| m.resolve(o) == v))
        .collect()
}

/// The dots contracting `w` (as their right operand) over its dimension
/// `axis`, in program order; empty when `w` has any other use.
fn dots_using(m: &Module, w: Value, axis: usize) -> Vec<Node> {
    let mut dots = Vec::new();
    for &n in m.order() {
        let node = m.node(n);
        for (k, &i) in node.inputs.iter().enumerate() {
            if m.resolve(i) != w {
                continue;
            }
            let contracts_last = match &node.op {
                Op::Dot(d) => k == 1 && d.rhs_batch.is_empty() && d.rhs_contract == [axis],
                _ => false,
            };
            if !contracts_last || m.resolve(node.inputs[0]) == w {
                return Vec::new();
            }
            dots.push(n);
        }
    }
    dots
}
