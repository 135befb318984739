//! `scale-query`: an attention's scale moved onto its query. `attention(q, k,
//! v) {scale=c}` becomes `attention(q · c, k, v) {scale=1}` where the query
//! is no larger than the scores (its head size at most the keys' length) and
//! f32: XLA then fuses the product into whatever computes `q` (a projection's
//! bias add and head transpose) instead of multiplying the scores by a
//! constant that, shared by every layer, its CPU backend writes out the size
//! of the scores for each layer's fusion to read. Run before `--precision`,
//! so that a mixed-precision query is rounded to bf16 once, already scaled.
//! The result differs from the unmoved scale by rounding only.

use crate::ir::dtype::DType;
use crate::ir::op::{BinaryOp, ConstData, Op};
use crate::ir::types::TensorType;
use crate::ir::Module;

/// Moves the scale of every attention it pays for onto the query; returns how many.
pub fn run(m: &mut Module) -> usize {
    let mut rewrites = 0;
    for n in m.order().to_vec() {
        let node = m.node(n);
        let Op::Attention { causal, scale, acc } = node.op else { continue };
        let (q, k) = (m.resolve(node.inputs[0]), m.resolve(node.inputs[1]));
        let (q_ty, k_ty) = (&m.value(q).ty, &m.value(k).ty);
        let r = q_ty.rank();
        let head = q_ty.shape[r - 1];
        let scale = scale.unwrap_or(1.0 / (head as f64).sqrt());
        if scale == 1.0 || q_ty.dtype != DType::F32 || head > k_ty.shape[r - 2] {
            continue;
        }
        let q_ty = q_ty.clone();
        let base = m.value(q).name.clone();
        let c_name = m.fresh_name(&format!("{base}.scale"));
        let c_op = Op::Constant { dtype: DType::F32, shape: vec![], data: ConstData::Float(vec![scale]) };
        let c = m.insert_before(n, &c_name, c_op, vec![], TensorType::new(DType::F32, vec![]));
        let scaled_name = m.fresh_name(&format!("{base}.scaled"));
        let scaled = m.insert_before(n, &scaled_name, Op::Binary(BinaryOp::Mul), vec![q, c], q_ty);
        let node = m.node_mut(n);
        node.inputs[0] = scaled;
        node.op = Op::Attention { causal, scale: Some(1.0), acc };
        rewrites += 1;
    }
    rewrites
}
