//! Canonicalization: algebraic identities that hold bit for bit, each keeping
//! the result's type. A node whose result equals an operand becomes an alias
//! of it; a chain of two transposes or reshapes becomes one.
//!
//! The patterns, and what is deliberately not matched, are listed in docs/passes.md.

use super::pattern::splat;
use crate::ir::dtype::DType;
use crate::ir::op::{BinaryOp, Op, UnaryOp};
use crate::ir::{Module, Node, Value, ValueDef};

/// What one rewrite of a node did.
#[derive(PartialEq)]
enum Rewrite {
    None,
    /// The result became an alias of another value.
    Aliased,
    /// The node became a simpler node (look at it again).
    Replaced,
}

/// Applies the identities once over the module; returns how many fired.
pub fn run(m: &mut Module) -> usize {
    let mut rewrites = 0;
    for n in m.order().to_vec() {
        // A replaced node may now match another identity (two transposes that compose to none).
        for _ in 0..4 {
            match rewrite(m, n) {
                Rewrite::None => break,
                Rewrite::Aliased => {
                    rewrites += 1;
                    break;
                }
                Rewrite::Replaced => rewrites += 1,
            }
        }
    }
    rewrites
}

/// The node defining `v`, if a node does.
fn producer(m: &Module, v: Value) -> Option<Node> {
    match m.value(v).def {
        ValueDef::Node(n) => Some(n),
        _ => None,
    }
}

/// True when every value of `from` is exactly a value of `to`.
fn widens_exactly(from: DType, to: DType) -> bool {
    use DType::*;
    from == to
        || matches!(
            (from, to),
            (BF16 | F16, F32 | F64) | (F32, F64) | (I8, I32 | I64) | (U8, I32 | I64) | (I32, I64) | (Bool, _)
        )
}

fn rewrite(m: &mut Module, n: Node) -> Rewrite {
    let node = m.node(n);
    let inputs: Vec<Value> = node.inputs.iter().map(|&v| m.resolve(v)).collect();
    let out = node.output;
    let same_type = |v: Value| m.value(v).ty == m.value(out).ty;
    let x = inputs.first().copied();
    let identity: Option<Value> = match &node.op {
        Op::Binary(op) => {
            let (a, b) = (inputs[0], inputs[1]);
            let (sa, sb) = (splat(m, a), splat(m, b));
            match op {
                BinaryOp::Add if sb == Some(0.0) => Some(a),
                BinaryOp::Add if sa == Some(0.0) => Some(b),
                BinaryOp::Sub if sb == Some(0.0) => Some(a),
                BinaryOp::Mul if sb == Some(1.0) => Some(a),
                BinaryOp::Mul if sa == Some(1.0) => Some(b),
                BinaryOp::Div | BinaryOp::Pow if sb == Some(1.0) => Some(a),
                BinaryOp::Max | BinaryOp::Min if a == b => Some(a),
                _ => None,
            }
        }
        Op::Where if inputs[1] == inputs[2] => Some(inputs[1]),
        Op::Unary(u @ (UnaryOp::Neg | UnaryOp::Not)) => {
            let inner = producer(m, inputs[0]).map(|p| m.node(p));
            inner.filter(|p| p.op == Op::Unary(*u)).map(|p| m.resolve(p.inputs[0]))
        }
        Op::Transpose { perm } if perm.iter().enumerate().all(|(i, &p)| i == p) => x,
        // Same shape out as in means nothing moved, except for a pad, which can shift (low 1, high -1).
        Op::Reshape { .. } | Op::BroadcastTo { .. } | Op::Concat { .. } | Op::Slice { .. } => x,
        Op::Pad { low, high, .. } if low.iter().chain(high).all(|&p| p == 0) => x,
        Op::Reduce { axes, .. } if axes.is_empty() => x,
        // A cast to the operand's own dtype; cast(cast(y: T → U) → T) is y when U holds every value of T.
        Op::Cast { to } if m.value(inputs[0]).ty.dtype == *to => x,
        Op::Cast { to } => producer(m, inputs[0]).map(|p| m.node(p)).and_then(|inner| match inner.op {
            Op::Cast { to: wide } => {
                let y = m.resolve(inner.inputs[0]);
                (m.value(y).ty.dtype == *to && widens_exactly(*to, wide)).then_some(y)
            }
            _ => None,
        }),
        _ => None,
    };
    if let Some(v) = identity.filter(|&v| same_type(v)) {
        m.set_alias(out, v);
        return Rewrite::Aliased;
    }
    // Chains of two layout ops become one.
    let Some(inner) = x.and_then(|v| producer(m, v)) else { return Rewrite::None };
    let inner = m.node(inner).clone();
    let new_op = match (&m.node(n).op, &inner.op) {
        (Op::Transpose { perm: outer }, Op::Transpose { perm: first }) => {
            Some(Op::Transpose { perm: outer.iter().map(|&i| first[i]).collect() })
        }
        (Op::Reshape { shape }, Op::Reshape { .. }) => Some(Op::Reshape { shape: shape.clone() }),
        _ => None,
    };
    match new_op {
        Some(op) => {
            let node = m.node_mut(n);
            node.op = op;
            node.inputs = vec![inner.inputs[0]];
            Rewrite::Replaced
        }
        None => Rewrite::None,
    }
}
