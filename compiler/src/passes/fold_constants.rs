//! Constant folding: a node whose operands are all `constant` nodes is
//! computed at compile time by the reference interpreter and becomes a
//! `constant` itself, when its result has at most [`MAX_FOLDED_ELEMENTS`]
//! elements (folding a broadcast into a huge literal would bloat the program).

use crate::backend::interp::{eval_op, Data, Tensor};
use crate::ir::op::{ConstData, Op};
use crate::ir::{Module, Node, ValueDef};

/// The largest result, in elements, that is folded.
pub const MAX_FOLDED_ELEMENTS: u64 = 1 << 16;

/// Folds every foldable node once, in order (so chains fold in one run);
/// returns how many were folded.
pub fn run(m: &mut Module) -> usize {
    m.order().to_vec().into_iter().filter(|&n| fold(m, n)).count()
}

fn constant_of(m: &Module, n: Node) -> Option<Tensor> {
    match &m.node(n).op {
        Op::Constant { dtype, shape, data } => Some(Tensor::from_const(*dtype, shape, data)),
        _ => None,
    }
}

fn fold(m: &mut Module, n: Node) -> bool {
    let node = m.node(n);
    if node.inputs.is_empty() || matches!(node.op, Op::Constant { .. }) {
        return false;
    }
    let ty = m.value(node.output).ty.clone();
    if ty.num_elements() > MAX_FOLDED_ELEMENTS {
        return false;
    }
    let operands: Option<Vec<Tensor>> = node
        .inputs
        .iter()
        .map(|&v| match m.value(m.resolve(v)).def {
            ValueDef::Node(p) => constant_of(m, p),
            _ => None,
        })
        .collect();
    let Some(operands) = operands else { return false };
    let refs: Vec<&Tensor> = operands.iter().collect();
    // An op the interpreter refuses (integer division by zero) is left to run.
    let Ok(result) = eval_op(&node.op, &refs, ty.dtype, &ty.shape) else { return false };
    let data = match result.data {
        Data::Float(a) => ConstData::Float(a.iter().copied().collect()),
        Data::Int(a) => ConstData::Int(a.iter().copied().collect()),
        Data::Bool(a) => ConstData::Int(a.iter().map(|&b| b as i64).collect()),
    };
    let node = m.node_mut(n);
    node.op = Op::Constant { dtype: ty.dtype, shape: ty.shape.clone(), data };
    node.inputs.clear();
    true
}
