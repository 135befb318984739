//! Appending nodes to a module: each helper adds one op at the end of the
//! execution order, its result type inferred. The transforms that build
//! programs from a model (gradients, losses, optimizer updates) use it; an
//! inference failure is a bug in such a rule and is reported, not panicked on.

use crate::ir::dtype::DType;
use crate::ir::infer::infer;
use crate::ir::op::{BinaryOp, CompareDir, ConstData, DotDims, Op, ReduceKind, UnaryOp};
use crate::ir::types::TensorType;
use crate::ir::{Module, Value};

/// Appends nodes to a module under construction; every method returns the new value.
pub struct Builder<'a> {
    pub m: &'a mut Module,
}

/// A gradient rule's result: a value, or why the rule could not build it.
pub type Built = Result<Value, String>;

impl<'a> Builder<'a> {
    pub fn new(m: &'a mut Module) -> Self {
        Builder { m }
    }

    pub fn ty(&self, v: Value) -> TensorType {
        self.m.value(v).ty.clone()
    }

    /// Appends `op(inputs)`, its result named after the op (`d.mul.3`).
    pub fn op(&mut self, op: Op, inputs: &[Value]) -> Built {
        let types: Vec<TensorType> = inputs.iter().map(|&v| self.ty(v)).collect();
        let refs: Vec<&TensorType> = types.iter().collect();
        let ty = infer(&op, &refs).map_err(|e| format!("gradient rule: {} of {types:?}: {e}", op.name()))?;
        let name = self.m.fresh_name(&format!("d.{}", op.name()));
        Ok(self.m.append_node(name.clone(), op, inputs.to_vec(), name, ty))
    }

    /// A scalar constant.
    pub fn scalar(&mut self, value: f64, dtype: DType) -> Built {
        let data = if dtype.is_float() { ConstData::Float(vec![value]) } else { ConstData::Int(vec![value as i64]) };
        self.op(Op::Constant { dtype, shape: vec![], data }, &[])
    }

    /// A scalar constant of `like`'s dtype.
    pub fn scalar_like(&mut self, value: f64, like: Value) -> Built {
        let d = self.ty(like).dtype;
        self.scalar(value, d)
    }

    pub fn unary(&mut self, u: UnaryOp, x: Value) -> Built {
        self.op(Op::Unary(u), &[x])
    }

    pub fn binary(&mut self, b: BinaryOp, x: Value, y: Value) -> Built {
        self.op(Op::Binary(b), &[x, y])
    }

    pub fn add(&mut self, x: Value, y: Value) -> Built {
        self.binary(BinaryOp::Add, x, y)
    }

    pub fn sub(&mut self, x: Value, y: Value) -> Built {
        self.binary(BinaryOp::Sub, x, y)
    }

    pub fn mul(&mut self, x: Value, y: Value) -> Built {
        self.binary(BinaryOp::Mul, x, y)
    }

    pub fn div(&mut self, x: Value, y: Value) -> Built {
        self.binary(BinaryOp::Div, x, y)
    }

    pub fn neg(&mut self, x: Value) -> Built {
        self.unary(UnaryOp::Neg, x)
    }

    /// `x * c` for a constant `c`.
    pub fn scale(&mut self, x: Value, c: f64) -> Built {
        let c = self.scalar_like(c, x)?;
        self.mul(x, c)
    }

    /// `x OP c` as a bool tensor, for a constant `c`.
    pub fn compare_to(&mut self, dir: CompareDir, x: Value, c: f64) -> Built {
        let c = self.scalar_like(c, x)?;
        self.op(Op::Compare(dir), &[x, c])
    }

    pub fn compare(&mut self, dir: CompareDir, x: Value, y: Value) -> Built {
        self.op(Op::Compare(dir), &[x, y])
    }

    pub fn select(&mut self, cond: Value, a: Value, b: Value) -> Built {
        self.op(Op::Where, &[cond, a, b])
    }

    /// `where(cond, x, 0)`: `x` where `cond` holds, zero elsewhere.
    pub fn zero_where_not(&mut self, cond: Value, x: Value) -> Built {
        let zero = self.scalar_like(0.0, x)?;
        self.select(cond, x, zero)
    }

    /// `where(cond, 0, x)`: `x` with the places `cond` holds zeroed.
    pub fn zero_where(&mut self, cond: Value, x: Value) -> Built {
        let zero = self.scalar_like(0.0, x)?;
        self.select(cond, zero, x)
    }

    pub fn reshape(&mut self, x: Value, shape: &[u64]) -> Built {
        if self.ty(x).shape == shape {
            return Ok(x);
        }
        self.op(Op::Reshape { shape: shape.to_vec() }, &[x])
    }

    pub fn transpose(&mut self, x: Value, perm: Vec<usize>) -> Built {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x);
        }
        self.op(Op::Transpose { perm }, &[x])
    }

    pub fn broadcast_to(&mut self, x: Value, shape: &[u64]) -> Built {
        if self.ty(x).shape == shape {
            return Ok(x);
        }
        self.op(Op::BroadcastTo { shape: shape.to_vec() }, &[x])
    }

    pub fn sum(&mut self, x: Value, axes: Vec<usize>, keepdims: bool) -> Built {
        if axes.is_empty() {
            return Ok(x);
        }
        self.op(Op::Reduce { kind: ReduceKind::Sum, axes, keepdims }, &[x])
    }

    pub fn cast(&mut self, x: Value, to: DType) -> Built {
        if self.ty(x).dtype == to {
            return Ok(x);
        }
        self.op(Op::Cast { to }, &[x])
    }

    /// An f32 `-0.0` that XLA can neither fold nor compute before every one
    /// of `values`: `-(0·max_v |max(v)|)` (no float rule folds `x·0`; NaN
    /// for an infinite or NaN maximum). Added to a float, it leaves it bit for bit
    /// as it is (`x + -0 = x`); cast to an integer, it is 0 (NaN casts to 0
    /// in XLA). Whatever reads it waits for `values`: it orders a program's
    /// phases where XLA's `optimization_barrier` does not (the CPU backend
    /// erases barriers before scheduling), and keeps a recomputation apart
    /// from the original for XLA's CSE. Maxima, not a sum: a sum of finite
    /// values can overflow, and XLA merges a sum of a value
    /// that is itself a sum (a bias gradient) into one reduction of the
    /// latter's operands, which then stay until whatever else reads that
    /// value (micro-batch i's bias-gradient operands kept through micro-batch
    /// i+1). `None` when `values` is empty.
    pub fn zero_after(&mut self, values: &[Value]) -> Result<Option<Value>, String> {
        let mut largest: Option<Value> = None;
        for &x in values {
            let rank = self.ty(x).rank();
            let m = match rank {
                0 => x,
                _ => self.op(Op::Reduce { kind: ReduceKind::Max, axes: (0..rank).collect(), keepdims: false }, &[x])?,
            };
            let m = self.cast(m, DType::F32)?;
            let m = self.unary(UnaryOp::Abs, m)?;
            largest = Some(match largest {
                Some(t) => self.binary(BinaryOp::Max, t, m)?,
                None => m,
            });
        }
        let Some(largest) = largest else { return Ok(None) };
        let zero = self.scale(largest, 0.0)?;
        self.neg(zero).map(Some)
    }

    /// `x` cast to the dtype of `like` (a contraction's cotangent can be wider than its operand).
    pub fn cast_like(&mut self, x: Value, like: Value) -> Built {
        let d = self.ty(like).dtype;
        self.cast(x, d)
    }

    pub fn dot(&mut self, a: Value, b: Value, dims: DotDims) -> Built {
        self.op(Op::Dot(dims), &[a, b])
    }

    /// Zero-padding (negative values crop).
    pub fn pad(&mut self, x: Value, low: Vec<i64>, high: Vec<i64>) -> Built {
        if low.iter().chain(&high).all(|&p| p == 0) {
            return Ok(x);
        }
        self.op(Op::Pad { low, high, value: 0.0 }, &[x])
    }

    /// Sums `g` (of a broadcast result's shape) down to `target`'s shape:
    /// the adjoint of NumPy broadcasting.
    pub fn unbroadcast(&mut self, g: Value, target: &[u64]) -> Built {
        let shape = self.ty(g).shape;
        if shape == target {
            return Ok(g);
        }
        let lead = shape.len() - target.len();
        let mut axes: Vec<usize> = (0..lead).collect();
        axes.extend((0..target.len()).filter(|&d| target[d] == 1 && shape[lead + d] != 1).map(|d| lead + d));
        let summed = self.sum(g, axes, true)?;
        self.reshape(summed, target)
    }

    /// A float tensor of `shape` and `dtype` filled with zeros.
    pub fn zeros(&mut self, dtype: DType, shape: &[u64]) -> Built {
        let z = self.scalar(0.0, dtype)?;
        self.broadcast_to(z, shape)
    }
}
