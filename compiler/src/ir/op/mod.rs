//! The operations of the IR (op set v1) and their attributes.
//!
//! Attributes are typed and already normalised (negative axes resolved, defaults
//! filled in) by the time an [`Op`] exists: the verifier and the lowering never
//! see raw JSON.

pub mod attrs;
pub mod table;

use crate::ir::dtype::DType;
use crate::ir::types::TensorType;

/// Elementwise operations of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Erf,
    Relu,
    /// GELU, exact form: `0.5·x·(1 + erf(x/√2))`.
    GeluErf,
    /// GELU, tanh approximation: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    GeluTanh,
    Silu,
    Sin,
    Cos,
    Floor,
    Ceil,
    /// Logical not on bool, bitwise not on integers.
    Not,
}

/// Elementwise operations of two operands, with NumPy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// Division; on integers it truncates toward zero (like C, unlike NumPy's
    /// `//`), `x / 0` is 0 (as in NumPy) and `MIN / -1` wraps to `MIN`.
    Div,
    Pow,
    Max,
    Min,
    /// Logical and on bool, bitwise and on integers.
    And,
    /// Logical or on bool, bitwise or on integers.
    Or,
}

/// The comparison of a `compare` op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompareDir {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// The combining function of a reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
}

/// Explicit dimension numbers of a general dot (the StableHLO `dot_general` form).
/// The result's dimensions are: batch, then lhs free, then rhs free, each in operand order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DotDims {
    pub lhs_batch: Vec<usize>,
    pub rhs_batch: Vec<usize>,
    pub lhs_contract: Vec<usize>,
    pub rhs_contract: Vec<usize>,
    /// The result dtype when it differs from the operands' (accumulation type).
    pub acc: Option<DType>,
}

impl DotDims {
    /// Batch dimensions `0..nb` on both sides, contracting `lhs_contract` with
    /// `rhs_contract`, with accumulation dtype `acc`: the shape of every
    /// matmul-like product (`nb = 0` for plain matrix products).
    pub fn batched(nb: usize, lhs_contract: usize, rhs_contract: usize, acc: Option<DType>) -> DotDims {
        let batch: Vec<usize> = (0..nb).collect();
        DotDims {
            lhs_batch: batch.clone(),
            rhs_batch: batch,
            lhs_contract: vec![lhs_contract],
            rhs_contract: vec![rhs_contract],
            acc,
        }
    }
}

/// The window of a 2-D convolution or pooling over NCHW data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Window2d {
    /// Strides along H and W.
    pub stride: [u64; 2],
    /// Padding as `[top, bottom, left, right]`.
    pub padding: [u64; 4],
    /// Dilation along H and W.
    pub dilation: [u64; 2],
}

/// Constant data, stored exactly as the tensor's dtype requires: floats as f64
/// (rounded to the dtype when lowered), integers and bools as i64.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstData {
    Float(Vec<f64>),
    Int(Vec<i64>),
}

impl ConstData {
    /// The number of elements held.
    pub fn len(&self) -> usize {
        match self {
            ConstData::Float(v) => v.len(),
            ConstData::Int(v) => v.len(),
        }
    }

    /// True when no element is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `shown` values as `[a,b,…N more]`, for people (the printer).
    pub fn display(&self, shown: usize) -> String {
        let n = self.len();
        let mut items: Vec<String> = (0..n.min(shown))
            .map(|i| match self {
                ConstData::Float(v) => fmt_f64(v[i]),
                ConstData::Int(v) => v[i].to_string(),
            })
            .collect();
        if n > shown {
            items.push(format!("…{} more", n - shown));
        }
        format!("[{}]", items.join(","))
    }

    /// The data as dense little-endian bytes of `dtype`: floats rounded to
    /// nearest (even), integers and bools stored as they are (the reader has
    /// checked that they fit).
    pub fn to_le_bytes(&self, dtype: DType) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * dtype.size_bytes());
        let as_f64: Box<dyn Iterator<Item = f64>> = match self {
            ConstData::Float(v) => Box::new(v.iter().copied()),
            ConstData::Int(v) => Box::new(v.iter().map(|&x| x as f64)),
        };
        match (self, dtype) {
            (ConstData::Int(v), _) if !dtype.is_float() => {
                for &x in v {
                    out.extend_from_slice(&x.to_le_bytes()[..dtype.size_bytes()]);
                }
            }
            (_, DType::F64) => as_f64.for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            (_, DType::F32) => as_f64.for_each(|x| out.extend_from_slice(&(x as f32).to_le_bytes())),
            (_, DType::F16) => as_f64.for_each(|x| out.extend_from_slice(&half::f16::from_f64(x).to_le_bytes())),
            (_, DType::BF16) => as_f64.for_each(|x| out.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes())),
            (_, d) if d.is_float() => {
                let f = d.float8().expect("the other floats are written above");
                as_f64.for_each(|x| out.push(f.encode(f.round(x))))
            }
            (ConstData::Float(v), _) => {
                for &x in v {
                    out.extend_from_slice(&(x as i64).to_le_bytes()[..dtype.size_bytes()]);
                }
            }
            (ConstData::Int(_), _) => unreachable!("integer data of an integer dtype is handled first"),
        }
        out
    }
}

/// One IR operation with its attributes. Operands are not part of the op: they
/// live on the node, so rewrites can change either independently.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Compare(CompareDir),
    /// `where(cond, a, b)`: elementwise select with broadcasting.
    Where,
    Cast {
        to: DType,
    },
    /// NumPy `matmul`: 1-D operands promoted, batch dimensions broadcast.
    /// `acc` is the result dtype (e.g. f32 from bf16 operands: f32 accumulation).
    MatMul {
        acc: Option<DType>,
    },
    Dot(DotDims),
    /// Reduction over sorted, distinct `axes`.
    Reduce {
        kind: ReduceKind,
        axes: Vec<usize>,
        keepdims: bool,
    },
    /// Index (i64) of the first maximum along `axis`.
    ArgMax {
        axis: usize,
        keepdims: bool,
    },
    /// The indices (i64) that sort `x` along `axis`, ascending (or
    /// `descending`), stably: equal elements keep their order. A NaN sorts
    /// as the largest value.
    ArgSort {
        axis: usize,
        descending: bool,
    },
    Reshape {
        shape: Vec<u64>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    BroadcastTo {
        shape: Vec<u64>,
    },
    Concat {
        axis: usize,
    },
    /// Strided slice with normalised, in-range bounds; `limits` are exclusive.
    Slice {
        starts: Vec<u64>,
        limits: Vec<u64>,
        strides: Vec<u64>,
    },
    /// Edge padding per dimension (negative values crop) with a constant value.
    Pad {
        low: Vec<i64>,
        high: Vec<i64>,
        value: f64,
    },
    /// `size` elements along `axis` from the scalar integer `start` (JAX's
    /// `dynamic_slice_in_dim`): `start` is clamped to `[0, dim - size]`, as
    /// StableHLO clamps it, so the window always lies inside `x`.
    DynamicSlice {
        axis: usize,
        size: u64,
    },
    /// `x` with `update` written along `axis` from the scalar integer `start`
    /// (JAX's `dynamic_update_slice_in_dim`; clamped as [`Op::DynamicSlice`]).
    /// A donated `x` is updated in place: a KV cache's new entries.
    DynamicUpdateSlice {
        axis: usize,
    },
    /// NumPy `take(data, indices, axis)`; indices are clamped to the valid range.
    Gather {
        axis: usize,
    },
    /// The transpose of `gather`: `data` with each slice of `updates` added
    /// at its (clamped) index along `axis`; repeated indices accumulate.
    ScatterAdd {
        axis: usize,
    },
    /// The identity, through which no gradient flows.
    StopGradient,
    Iota {
        dtype: DType,
        shape: Vec<u64>,
        axis: usize,
    },
    Constant {
        dtype: DType,
        shape: Vec<u64>,
        data: ConstData,
    },
    /// Uniform numbers in `[0, 1)` of a float `dtype`, a pure function of the
    /// `seed` operand (an `i64` scalar) and `stream`: XLA's `THREE_FRY` bit
    /// generator keyed by the seed, its counter starting at `stream·2⁴⁰`, so
    /// the streams of one seed never overlap while each draws fewer than 2⁴⁰
    /// numbers. Each number is the top `significand_bits` of a 64-bit draw,
    /// scaled by 2^-bits: exact in the dtype, the same on every backend.
    RandomUniform {
        dtype: DType,
        shape: Vec<u64>,
        stream: u64,
    },
    /// 2-D convolution, NCHW input and OIHW weights, optional bias of shape `[O]`.
    Conv2d {
        window: Window2d,
        groups: u64,
        /// The result (and bias) dtype when it differs from the operands'.
        acc: Option<DType>,
    },
    MaxPool2d {
        kernel: [u64; 2],
        window: Window2d,
    },
    /// Average pooling; padded positions count in the divisor (PyTorch's default).
    AvgPool2d {
        kernel: [u64; 2],
        window: Window2d,
    },
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },
    /// Normalises over dimensions `axis..rank`; optional scale and bias of that trailing shape.
    LayerNorm {
        axis: usize,
        epsilon: f64,
    },
    /// Normalises over the last dimension; optional scale of that size.
    RmsNorm {
        epsilon: f64,
    },
    /// `softmax(q·kᵀ·scale + mask)·v`, optional additive mask broadcastable to the scores.
    Attention {
        causal: bool,
        scale: Option<f64>,
        /// The scores' and result's dtype (and the mask's) when it differs from q, k, v's.
        acc: Option<DType>,
    },
    /// `activation(x·w + b)`: `x` is `[..., K]`, `w` is `[K, N]`, optional `b` is `[N]`.
    Linear {
        activation: Option<UnaryOp>,
        /// The result (and bias) dtype when it differs from `x` and `w`'s.
        acc: Option<DType>,
    },
}

impl UnaryOp {
    /// The model.json and IR name.
    pub fn name(self) -> &'static str {
        self.def().name
    }
}

impl UnaryOp {
    /// The activations a `linear` op can apply.
    pub const ACTIVATIONS: [UnaryOp; 6] =
        [UnaryOp::Relu, UnaryOp::GeluErf, UnaryOp::GeluTanh, UnaryOp::Silu, UnaryOp::Tanh, UnaryOp::Sigmoid];
}

impl BinaryOp {
    /// The model.json and IR name.
    pub fn name(self) -> &'static str {
        self.def().name
    }
}

impl CompareDir {
    /// Every comparison with its model.json name.
    pub const NAMES: [(&'static str, CompareDir); 6] = [
        ("eq", CompareDir::Eq),
        ("ne", CompareDir::Ne),
        ("lt", CompareDir::Lt),
        ("le", CompareDir::Le),
        ("gt", CompareDir::Gt),
        ("ge", CompareDir::Ge),
    ];

    /// The model.json and IR name.
    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, op)| *op == self).map(|(n, _)| *n).unwrap_or("?")
    }
}

impl Op {
    /// The op's name as written in model.json and printed in the IR.
    pub fn name(&self) -> &'static str {
        self.def().name
    }

    /// True for ops computed element by element of their (broadcast)
    /// operands: unary, binary, compare, select and cast.
    pub fn is_elementwise(&self) -> bool {
        matches!(self, Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::Cast { .. })
    }

    /// For a matrix product without batch dimensions (a `dot` without batch
    /// dimensions, a `linear`, a `matmul` by a matrix), the dimensions each
    /// of its first two operands contracts, given the operands' types; `None`
    /// for any other op.
    pub fn contracted_dims(&self, operands: &[&TensorType]) -> Option<[Vec<usize>; 2]> {
        let [lhs, rhs, ..] = operands else { return None };
        match self {
            Op::Dot(d) if d.lhs_batch.is_empty() => Some([d.lhs_contract.clone(), d.rhs_contract.clone()]),
            Op::Linear { .. } => Some([vec![lhs.rank().checked_sub(1)?], vec![0]]),
            Op::MatMul { .. } if rhs.rank() == 2 => Some([vec![lhs.rank().checked_sub(1)?], vec![0]]),
            _ => None,
        }
    }

    /// How many operands the op takes: `(min, max)`, `max = None` for variadic.
    pub fn arity(&self) -> (usize, Option<usize>) {
        self.def().arity()
    }

    /// The attributes as `key=value` text (model.json's keys), in a fixed
    /// order, for the IR printer, showing at most `shown` values of a constant
    /// (`usize::MAX` for all: the parseable form). Empty for ops without attributes.
    pub fn attributes_text(&self, shown: usize) -> String {
        let list = |v: &[usize]| format!("{v:?}").replace(' ', "");
        let ulist = |v: &[u64]| format!("{v:?}").replace(' ', "");
        let ilist = |v: &[i64]| format!("{v:?}").replace(' ', "");
        let window = |w: &Window2d| {
            format!("stride={}, padding={}, dilation={}", ulist(&w.stride), ulist(&w.padding), ulist(&w.dilation))
        };
        match self {
            Op::Unary(_) | Op::Binary(_) | Op::Where | Op::StopGradient | Op::MatMul { acc: None } => String::new(),
            Op::MatMul { acc: Some(a) } => format!("accumulate={a}"),
            Op::Compare(dir) => format!("dir={}", dir.name()),
            Op::Cast { to } => format!("to={to}"),
            Op::Dot(d) => with_acc(
                format!(
                    "lhs_batch={}, rhs_batch={}, lhs_contract={}, rhs_contract={}",
                    list(&d.lhs_batch),
                    list(&d.rhs_batch),
                    list(&d.lhs_contract),
                    list(&d.rhs_contract)
                ),
                d.acc,
            ),
            Op::Reduce { axes, keepdims, .. } => format!("axes={}, keepdims={keepdims}", list(axes)),
            Op::ArgMax { axis, keepdims } => format!("axis={axis}, keepdims={keepdims}"),
            Op::ArgSort { axis, descending } => format!("axis={axis}, descending={descending}"),
            Op::Reshape { shape } | Op::BroadcastTo { shape } => format!("shape={}", ulist(shape)),
            Op::Transpose { perm } => format!("perm={}", list(perm)),
            Op::Concat { axis } | Op::Gather { axis } | Op::ScatterAdd { axis } | Op::DynamicUpdateSlice { axis } => {
                format!("axis={axis}")
            }
            Op::DynamicSlice { axis, size } => format!("axis={axis}, size={size}"),
            Op::Softmax { axis } | Op::LogSoftmax { axis } => format!("axis={axis}"),
            Op::Slice { starts, limits, strides } => {
                // model.json's names, so that the text form parses back through the same reader.
                format!("starts={}, ends={}, steps={}", ulist(starts), ulist(limits), ulist(strides))
            }
            Op::Pad { low, high, value } => {
                format!("low={}, high={}, value={}", ilist(low), ilist(high), fmt_f64(*value))
            }
            Op::Iota { dtype, shape, axis } => {
                format!("dtype={dtype}, shape={}, axis={axis}", ulist(shape))
            }
            Op::Constant { dtype, shape, data } => {
                format!("dtype={dtype}, shape={}, value={}", ulist(shape), data.display(shown))
            }
            Op::RandomUniform { dtype, shape, stream } => {
                format!("dtype={dtype}, shape={}, stream={stream}", ulist(shape))
            }
            Op::Conv2d { window: w, groups, acc } => with_acc(format!("{}, groups={groups}", window(w)), *acc),
            Op::MaxPool2d { kernel, window: w } | Op::AvgPool2d { kernel, window: w } => {
                format!("kernel={}, {}", ulist(kernel), window(w))
            }
            Op::LayerNorm { axis, epsilon } => format!("axis={axis}, epsilon={}", fmt_f64(*epsilon)),
            Op::RmsNorm { epsilon } => format!("epsilon={}", fmt_f64(*epsilon)),
            Op::Linear { activation, acc } => {
                with_acc(activation.map(|a| format!("activation={}", a.name())).unwrap_or_default(), *acc)
            }
            Op::Attention { causal, scale, acc } => with_acc(
                match scale {
                    Some(s) => format!("causal={causal}, scale={}", fmt_f64(*s)),
                    None => format!("causal={causal}"),
                },
                *acc,
            ),
        }
    }
}

/// Appends `accumulate=DTYPE` to attribute text when there is one.
fn with_acc(text: String, acc: Option<DType>) -> String {
    match (acc, text.is_empty()) {
        (None, _) => text,
        (Some(a), true) => format!("accumulate={a}"),
        (Some(a), false) => format!("{text}, accumulate={a}"),
    }
}

/// Formats an f64 so that it reads back to the same value and always looks like
/// a float (`1.0`, `1.0e-5`, `-inf`, `nan`); used by the printer and the lowering.
pub fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        // MLIR's float literals need a decimal point, also before an exponent.
        let s = format!("{v:?}");
        match (s.contains('.'), s.find('e')) {
            (true, _) => s,
            (false, Some(e)) => format!("{}.0{}", &s[..e], &s[e..]),
            (false, None) => format!("{s}.0"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_f64;

    #[test]
    fn floats_always_have_a_decimal_point() {
        assert_eq!(fmt_f64(1.0), "1.0");
        assert_eq!(fmt_f64(1e-5), "1.0e-5");
        assert_eq!(fmt_f64(0.044715), "0.044715");
        assert_eq!(fmt_f64(-2.5e20), "-2.5e20");
        assert_eq!(fmt_f64(f64::NEG_INFINITY), "-inf");
    }
}
