//! Matching helpers shared by the rewriting passes. Operands are read through
//! aliases, so a pass sees the module as rewritten so far.

use crate::ir::op::{BinaryOp, ConstData, Op, ReduceKind, UnaryOp};
use crate::ir::{Module, Value, ValueDef};

/// The op and (resolved) operands of the node defining `v`, if a node does.
pub fn def(m: &Module, v: Value) -> Option<(&Op, Vec<Value>)> {
    match m.value(m.resolve(v)).def {
        ValueDef::Node(n) => {
            let node = m.node(n);
            Some((&node.op, node.inputs.iter().map(|&i| m.resolve(i)).collect()))
        }
        _ => None,
    }
}

/// The value of every element of `v` when it is a constant with all elements equal.
pub fn splat(m: &Module, v: Value) -> Option<f64> {
    let (Op::Constant { data, .. }, _) = def(m, v)? else { return None };
    let all: Vec<f64> = match data {
        ConstData::Float(x) => x.clone(),
        ConstData::Int(x) => x.iter().map(|&i| i as f64).collect(),
    };
    let first = *all.first()?;
    all.iter().all(|&x| x == first).then_some(first)
}

/// True when `v` is a splat constant equal to `want` up to f32 rounding (exporters store f32).
pub fn splat_near(m: &Module, v: Value, want: f64) -> bool {
    splat(m, v).is_some_and(|c| (c - want).abs() <= 1e-6 * want.abs())
}

/// The operands of `v = op(a, b)`.
pub fn binary(m: &Module, v: Value, op: BinaryOp) -> Option<(Value, Value)> {
    match def(m, v)? {
        (Op::Binary(o), ins) if *o == op => Some((ins[0], ins[1])),
        _ => None,
    }
}

/// `f(a, b)`, else `f(b, a)`: a commutative match of `v = op(a, b)`.
pub fn commuted<T>(m: &Module, v: Value, op: BinaryOp, f: impl Fn(Value, Value) -> Option<T>) -> Option<T> {
    let (a, b) = binary(m, v, op)?;
    f(a, b).or_else(|| f(b, a))
}

/// The operand of `v = op(x)`.
pub fn unary(m: &Module, v: Value, op: UnaryOp) -> Option<Value> {
    match def(m, v)? {
        (Op::Unary(o), ins) if *o == op => Some(ins[0]),
        _ => None,
    }
}

/// The operand and axes of `v = reduce(x)` of `kind` with keepdims.
pub fn reduce_keep(m: &Module, v: Value, kind: ReduceKind) -> Option<(Value, Vec<usize>)> {
    match def(m, v)? {
        (Op::Reduce { kind: k, axes, keepdims: true }, ins) if *k == kind => Some((ins[0], axes.clone())),
        _ => None,
    }
}

/// `x` when `v` is `x * x` or `x ** 2`.
pub fn square(m: &Module, v: Value) -> Option<Value> {
    binary(m, v, BinaryOp::Mul).filter(|(a, b)| a == b).map(|(a, _)| a).or_else(|| {
        let (x, e) = binary(m, v, BinaryOp::Pow)?;
        splat_near(m, e, 2.0).then_some(x)
    })
}
