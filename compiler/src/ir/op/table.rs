//! The op table: every op of op set v1 declared once, with its name, its
//! operands, how its attributes are read and a smallest valid use. Parsing
//! (model.json, the IR text, the importers' documents), the op-name list and
//! "did you mean" all come from [`OPS`]; [`Op::def`] maps every op back to
//! its entry (an exhaustive match, so a new op cannot lack one). Type
//! inference is [`crate::ir::infer`], the interpreter
//! [`crate::backend::interp`], the lowering [`crate::backend::stablehlo`];
//! `tests/tests/ops.rs` runs every entry's example through all of them.
//! docs/contributing.md is the checklist for adding an op.

use crate::error::Diagnostic;
use crate::ir::op::attrs::{normalize_axis, parse_values, Attrs, Bindings};
use crate::ir::op::{BinaryOp, CompareDir, DotDims, Op, ReduceKind, UnaryOp};
use crate::ir::types::{element_count, TensorType};

/// How an op's attributes are read: against its operand types (axes are
/// normalised by rank) and the shape symbols' values.
pub type ParseAttrs = fn(&mut Attrs, &[&TensorType], &Bindings) -> Result<Op, Diagnostic>;

/// One op of the op set.
pub struct OpDef {
    /// The name in model.json and the IR text.
    pub name: &'static str,
    /// The operands' names, in order; those from `required` on are optional.
    pub operands: &'static [&'static str],
    pub required: usize,
    /// True when the last operand repeats (`concat`).
    pub variadic: bool,
    pub parse: ParseAttrs,
    /// A smallest valid use, for the conformance tests and the docs.
    pub example: Example,
}

/// Operand types (`f32[2,3]`) and attributes (a JSON object) of a valid use of an op.
pub struct Example {
    pub operands: &'static [&'static str],
    pub attrs: &'static str,
}

impl OpDef {
    /// How many operands it takes: `(min, max)`, `max = None` for variadic.
    pub fn arity(&self) -> (usize, Option<usize>) {
        (self.required, (!self.variadic).then_some(self.operands.len()))
    }
}

/// The entry of the op called `name`.
pub fn lookup(name: &str) -> Option<&'static OpDef> {
    OPS.iter().copied().find(|d| d.name == name)
}

/// Every op name of op set v1, in table order.
pub fn names() -> impl Iterator<Item = &'static str> {
    OPS.iter().map(|d| d.name)
}

macro_rules! unary {
    ($def:ident, $name:literal, $variant:ident, $ty:literal) => {
        pub static $def: OpDef = OpDef {
            name: $name,
            operands: &["x"],
            required: 1,
            variadic: false,
            parse: |_, _, _| Ok(Op::Unary(UnaryOp::$variant)),
            example: Example { operands: &[$ty], attrs: "{}" },
        };
    };
}

macro_rules! binary {
    ($def:ident, $name:literal, $variant:ident, $a:literal, $b:literal) => {
        pub static $def: OpDef = OpDef {
            name: $name,
            operands: &["a", "b"],
            required: 2,
            variadic: false,
            parse: |_, _, _| Ok(Op::Binary(BinaryOp::$variant)),
            example: Example { operands: &[$a, $b], attrs: "{}" },
        };
    };
}

macro_rules! reduce {
    ($def:ident, $name:literal, $kind:ident) => {
        pub static $def: OpDef = OpDef {
            name: $name,
            operands: &["x"],
            required: 1,
            variadic: false,
            parse: |a, x, _| reduce(a, x, ReduceKind::$kind),
            example: Example { operands: &["f32[2,3,4]"], attrs: r#"{"axes": [1], "keepdims": true}"# },
        };
    };
}

unary!(NEG, "neg", Neg, "f32[2,3]");
unary!(ABS, "abs", Abs, "f32[2,3]");
unary!(EXP, "exp", Exp, "f32[2,3]");
unary!(LOG, "log", Log, "f32[2,3]");
unary!(SQRT, "sqrt", Sqrt, "f32[2,3]");
unary!(RSQRT, "rsqrt", Rsqrt, "f32[2,3]");
unary!(TANH, "tanh", Tanh, "f32[2,3]");
unary!(SIGMOID, "sigmoid", Sigmoid, "f32[2,3]");
unary!(ERF, "erf", Erf, "f32[2,3]");
unary!(RELU, "relu", Relu, "f32[2,3]");
unary!(GELU, "gelu", GeluErf, "f32[2,3]");
unary!(GELU_TANH, "gelu_tanh", GeluTanh, "f32[2,3]");
unary!(SILU, "silu", Silu, "f32[2,3]");
unary!(SIN, "sin", Sin, "f32[2,3]");
unary!(COS, "cos", Cos, "f32[2,3]");
unary!(FLOOR, "floor", Floor, "f32[2,3]");
unary!(CEIL, "ceil", Ceil, "f32[2,3]");
unary!(NOT, "not", Not, "bool[2,3]");

binary!(ADD, "add", Add, "f32[2,3]", "f32[3]");
binary!(SUB, "sub", Sub, "f32[2,3]", "f32[3]");
binary!(MUL, "mul", Mul, "f32[2,3]", "f32[3]");
binary!(DIV, "div", Div, "f32[2,3]", "f32[3]");
binary!(POW, "pow", Pow, "f32[2,3]", "f32[3]");
binary!(MAX, "max", Max, "f32[2,3]", "f32[3]");
binary!(MIN, "min", Min, "f32[2,3]", "f32[3]");
binary!(AND, "and", And, "bool[2,3]", "bool[3]");
binary!(OR, "or", Or, "bool[2,3]", "bool[3]");

reduce!(REDUCE_SUM, "reduce_sum", Sum);
reduce!(REDUCE_MEAN, "reduce_mean", Mean);
reduce!(REDUCE_MAX, "reduce_max", Max);
reduce!(REDUCE_MIN, "reduce_min", Min);

pub static COMPARE: OpDef = OpDef {
    name: "compare",
    operands: &["a", "b"],
    required: 2,
    variadic: false,
    parse: |a, _, _| {
        let v = a.required("dir")?.clone();
        let dir = CompareDir::NAMES.iter().find(|(n, _)| Some(*n) == v.as_str()).map(|(_, d)| *d);
        Ok(Op::Compare(dir.ok_or_else(|| a.err("dir", format!("expected one of eq, ne, lt, le, gt, ge; found {v}")))?))
    },
    example: Example { operands: &["f32[2,3]", "f32[2,3]"], attrs: r#"{"dir": "lt"}"# },
};

pub static WHERE: OpDef = OpDef {
    name: "where",
    operands: &["cond", "a", "b"],
    required: 3,
    variadic: false,
    parse: |_, _, _| Ok(Op::Where),
    example: Example { operands: &["bool[2,3]", "f32[2,3]", "f32[3]"], attrs: "{}" },
};

pub static CAST: OpDef = OpDef {
    name: "cast",
    operands: &["x"],
    required: 1,
    variadic: false,
    parse: |a, _, _| Ok(Op::Cast { to: a.dtype("to")? }),
    example: Example { operands: &["f32[2,3]"], attrs: r#"{"to": "i32"}"# },
};

pub static MATMUL: OpDef = OpDef {
    name: "matmul",
    operands: &["a", "b"],
    required: 2,
    variadic: false,
    parse: |a, _, _| Ok(Op::MatMul { acc: a.accumulate()? }),
    example: Example { operands: &["f32[2,3,4]", "f32[4,5]"], attrs: "{}" },
};

pub static DOT: OpDef = OpDef {
    name: "dot",
    operands: &["a", "b"],
    required: 2,
    variadic: false,
    parse: |a, _, _| {
        let mut dims = |key: &'static str, required: bool| -> Result<Vec<usize>, Diagnostic> {
            match a.ints(key)? {
                None if required => Err(a.err(key, "missing attribute")),
                None => Ok(vec![]),
                Some(v) => v
                    .iter()
                    .map(|&d| usize::try_from(d).map_err(|_| a.err(key, format!("dimension {d} is negative"))))
                    .collect(),
            }
        };
        Ok(Op::Dot(DotDims {
            lhs_batch: dims("lhs_batch", false)?,
            rhs_batch: dims("rhs_batch", false)?,
            lhs_contract: dims("lhs_contract", true)?,
            rhs_contract: dims("rhs_contract", true)?,
            acc: a.accumulate()?,
        }))
    },
    example: Example {
        operands: &["f32[2,3,4]", "f32[2,4,5]"],
        attrs: r#"{"lhs_batch": [0], "rhs_batch": [0], "lhs_contract": [2], "rhs_contract": [1]}"#,
    },
};

pub static ARGMAX: OpDef = OpDef {
    name: "argmax",
    operands: &["x"],
    required: 1,
    variadic: false,
    parse: |a, x, _| Ok(Op::ArgMax { axis: a.axis("axis", None, rank(x))?, keepdims: a.bool("keepdims", false)? }),
    example: Example { operands: &["f32[2,5]"], attrs: r#"{"axis": 1}"# },
};

pub static ARGSORT: OpDef = OpDef {
    name: "argsort",
    operands: &["x"],
    required: 1,
    variadic: false,
    parse: |a, x, _| {
        Ok(Op::ArgSort { axis: a.axis("axis", Some(-1), rank(x))?, descending: a.bool("descending", false)? })
    },
    example: Example { operands: &["f32[2,5]"], attrs: r#"{"axis": 1, "descending": true}"# },
};

pub static RESHAPE: OpDef = OpDef {
    name: "reshape",
    operands: &["x"],
    required: 1,
    variadic: false,
    parse: |a, x, b| {
        let total = x.first().map_or(1, |t| t.num_elements());
        Ok(Op::Reshape { shape: a.shape("shape", b, Some(total), None)? })
    },
    example: Example { operands: &["f32[2,3,4]"], attrs: r#"{"shape": [6, -1]}"# },
};

pub static TRANSPOSE: OpDef = OpDef {
    name: "transpose",
    operands: &["x"],
    required: 1,
    variadic: false,
    parse: |a, x, _| {
        let rank = rank(x);
        Ok(match a.ints("perm")? {
            None => Op::Transpose { perm: (0..rank).rev().collect() },
            Some(p) => Op::Transpose {
                perm: p
                    .iter()
                    .map(|&d| normalize_axis(d, rank))
                    .collect::<Result<_, _>>()
                    .map_err(|e| a.err("perm", e))?,
            },
        })
    },
    example: Example { operands: &["f32[2,3,4]"], attrs: r#"{"perm": [2, 0, 1]}"# },
};

pub static BROADCAST_TO: OpDef = OpDef {
    name: "broadcast_to",
    operands: &["x"],
    required: 1,
    variadic: false,
    parse: |a, _, b| Ok(Op::BroadcastTo { shape: a.shape("shape", b, None, None)? }),
    example: Example { operands: &["f32[3,1]"], attrs: r#"{"shape": [2, 3, 4]}"# },
};

pub static CONCAT: OpDef = OpDef {
    name: "concat",
    operands: &["x"],
    required: 1,
    variadic: true,
    parse: |a, x, _| Ok(Op::Concat { axis: a.axis("axis", None, rank(x))? }),
    example: Example { operands: &["f32[2,3]", "f32[2,5]"], attrs: r#"{"axis": 1}"# },
};

pub static SLICE: OpDef = OpDef {
    name: "slice",
    operands: &["x"],
    required: 1,
    variadic: false,
    parse: |a, x, _| slice(a, x.first().map_or(&[][..], |t| &t.shape[..])),
    example: Example { operands: &["f32[4,6]"], attrs: r#"{"starts": [1, 0], "ends": [3, 6], "steps": [1, 2]}"# },
};

pub static PAD: OpDef = OpDef {
    name: "pad",
    operands: &["x"],
    required: 1,
    variadic: false,
    parse: |a, _, _| {
        let low = a.ints("low")?.ok_or_else(|| a.err("low", "missing attribute"))?;
        let high = a.ints("high")?.ok_or_else(|| a.err("high", "missing attribute"))?;
        Ok(Op::Pad { low, high, value: a.float("value")?.unwrap_or(0.0) })
    },
    example: Example { operands: &["f32[2,3]"], attrs: r#"{"low": [1, 0], "high": [0, 2], "value": 0.5}"# },
};

pub static DYNAMIC_SLICE: OpDef = OpDef {
    name: "dynamic_slice",
    operands: &["x", "start"],
    required: 2,
    variadic: false,
    parse: |a, x, b| Ok(Op::DynamicSlice { axis: a.axis("axis", None, rank(x))?, size: a.size("size", b)? }),
    example: Example { operands: &["f32[3,5]", "i64[]"], attrs: r#"{"axis": 1, "size": 2}"# },
};

pub static DYNAMIC_UPDATE_SLICE: OpDef = OpDef {
    name: "dynamic_update_slice",
    operands: &["x", "update", "start"],
    required: 3,
    variadic: false,
    parse: |a, x, _| Ok(Op::DynamicUpdateSlice { axis: a.axis("axis", None, rank(x))? }),
    example: Example { operands: &["f32[2,5,3]", "f32[2,2,3]", "i64[]"], attrs: r#"{"axis": 1}"# },
};

pub static GATHER: OpDef = OpDef {
    name: "gather",
    operands: &["data", "indices"],
    required: 2,
    variadic: false,
    parse: |a, x, _| Ok(Op::Gather { axis: a.axis("axis", Some(0), rank(x))? }),
    example: Example { operands: &["f32[5,3]", "i64[2,2]"], attrs: r#"{"axis": 0}"# },
};

pub static SCATTER_ADD: OpDef = OpDef {
    name: "scatter_add",
    operands: &["data", "indices", "updates"],
    required: 3,
    variadic: false,
    parse: |a, x, _| Ok(Op::ScatterAdd { axis: a.axis("axis", Some(0), rank(x))? }),
    example: Example { operands: &["f32[5,3]", "i64[2,2]", "f32[2,2,3]"], attrs: r#"{"axis": 0}"# },
};

pub static STOP_GRADIENT: OpDef = OpDef {
    name: "stop_gradient",
    operands: &["x"],
    required: 1,
    variadic: false,
    parse: |_, _, _| Ok(Op::StopGradient),
    example: Example { operands: &["f32[2,3]"], attrs: "{}" },
};

pub static IOTA: OpDef = OpDef {
    name: "iota",
    operands: &[],
    required: 0,
    variadic: false,
    parse: |a, _, b| {
        let dtype = a.dtype("dtype")?;
        let shape = a.shape("shape", b, None, None)?;
        Ok(Op::Iota { dtype, axis: a.axis("axis", Some(0), shape.len().max(1))?, shape })
    },
    example: Example { operands: &[], attrs: r#"{"dtype": "i32", "shape": [2, 3], "axis": 1}"# },
};

pub static CONSTANT: OpDef = OpDef {
    name: "constant",
    operands: &[],
    required: 0,
    variadic: false,
    parse: |a, _, b| {
        let dtype = a.dtype("dtype")?;
        let shape = a.shape("shape", b, None, Some(vec![]))?;
        let count = element_count(&shape).map_err(|e| a.err("shape", e))?;
        let at = a.place("value");
        let value = a.required("value")?.clone();
        let data = parse_values(&value, dtype, count, &at)?;
        Ok(Op::Constant { dtype, shape, data })
    },
    example: Example { operands: &[], attrs: r#"{"dtype": "f32", "shape": [2], "value": [1.5, -2.0]}"# },
};

pub static RANDOM_UNIFORM: OpDef = OpDef {
    name: "random_uniform",
    operands: &["seed"],
    required: 1,
    variadic: false,
    parse: |a, _, b| {
        let dtype = a.dtype("dtype")?;
        let shape = a.shape("shape", b, None, Some(vec![]))?;
        let stream = match a.int("stream")? {
            None => 0,
            Some(s) if (0..1 << 24).contains(&s) => s as u64,
            Some(s) => return Err(a.err("stream", format!("expected 0 ≤ stream < 2^24, found {s}"))),
        };
        Ok(Op::RandomUniform { dtype, shape, stream })
    },
    example: Example { operands: &["i64[]"], attrs: r#"{"dtype": "f32", "shape": [3, 4], "stream": 2}"# },
};

pub static CONV2D: OpDef = OpDef {
    name: "conv2d",
    operands: &["x", "weight", "bias"],
    required: 2,
    variadic: false,
    parse: |a, _, _| {
        Ok(Op::Conv2d {
            window: a.window(None)?,
            groups: match a.int("groups")? {
                None => 1,
                Some(g) if g >= 1 => g as u64,
                Some(g) => return Err(a.err("groups", format!("expected ≥ 1, found {g}"))),
            },
            acc: a.accumulate()?,
        })
    },
    example: Example { operands: &["f32[1,2,5,5]", "f32[4,2,3,3]", "f32[4]"], attrs: r#"{"padding": 1}"# },
};

pub static MAX_POOL2D: OpDef = OpDef {
    name: "max_pool2d",
    operands: &["x"],
    required: 1,
    variadic: false,
    parse: |a, _, _| {
        let kernel = a.pair("kernel", None)?;
        Ok(Op::MaxPool2d { kernel, window: a.window(Some(kernel))? })
    },
    example: Example { operands: &["f32[1,2,4,4]"], attrs: r#"{"kernel": 2}"# },
};

pub static AVG_POOL2D: OpDef = OpDef {
    name: "avg_pool2d",
    operands: &["x"],
    required: 1,
    variadic: false,
    parse: |a, _, _| {
        let kernel = a.pair("kernel", None)?;
        Ok(Op::AvgPool2d { kernel, window: a.window(Some(kernel))? })
    },
    example: Example { operands: &["f32[1,2,5,5]"], attrs: r#"{"kernel": 3, "stride": 2, "padding": 1}"# },
};

pub static SOFTMAX: OpDef = OpDef {
    name: "softmax",
    operands: &["x"],
    required: 1,
    variadic: false,
    parse: |a, x, _| Ok(Op::Softmax { axis: a.axis("axis", Some(-1), rank(x))? }),
    example: Example { operands: &["f32[2,5]"], attrs: "{}" },
};

pub static LOG_SOFTMAX: OpDef = OpDef {
    name: "log_softmax",
    operands: &["x"],
    required: 1,
    variadic: false,
    parse: |a, x, _| Ok(Op::LogSoftmax { axis: a.axis("axis", Some(-1), rank(x))? }),
    example: Example { operands: &["f32[2,5]"], attrs: r#"{"axis": 0}"# },
};

pub static LAYER_NORM: OpDef = OpDef {
    name: "layer_norm",
    operands: &["x", "scale", "bias"],
    required: 1,
    variadic: false,
    parse: |a, x, _| {
        Ok(Op::LayerNorm { axis: a.axis("axis", Some(-1), rank(x))?, epsilon: a.float("epsilon")?.unwrap_or(1e-5) })
    },
    example: Example { operands: &["f32[2,3,8]", "f32[8]", "f32[8]"], attrs: "{}" },
};

pub static RMS_NORM: OpDef = OpDef {
    name: "rms_norm",
    operands: &["x", "scale"],
    required: 1,
    variadic: false,
    parse: |a, _, _| Ok(Op::RmsNorm { epsilon: a.float("epsilon")?.unwrap_or(1e-6) }),
    example: Example { operands: &["f32[2,8]", "f32[8]"], attrs: r#"{"epsilon": 1e-5}"# },
};

pub static ATTENTION: OpDef = OpDef {
    name: "scaled_dot_product_attention",
    operands: &["q", "k", "v", "mask"],
    required: 3,
    variadic: false,
    parse: |a, _, _| {
        Ok(Op::Attention { causal: a.bool("causal", false)?, scale: a.float("scale")?, acc: a.accumulate()? })
    },
    example: Example { operands: &["f32[1,2,4,8]", "f32[1,2,4,8]", "f32[1,2,4,8]"], attrs: r#"{"causal": true}"# },
};

pub static LINEAR: OpDef = OpDef {
    name: "linear",
    operands: &["x", "weight", "bias"],
    required: 2,
    variadic: false,
    parse: |a, _, _| {
        let activation =
            match a.get("activation").cloned() {
                None => None,
                Some(v) => {
                    let names: Vec<&str> = UnaryOp::ACTIVATIONS.iter().map(|u| u.name()).collect();
                    let found = UnaryOp::ACTIVATIONS.iter().find(|u| Some(u.name()) == v.as_str());
                    Some(*found.ok_or_else(|| {
                        a.err("activation", format!("expected one of {}, found {v}", names.join(", ")))
                    })?)
                }
            };
        Ok(Op::Linear { activation, acc: a.accumulate()? })
    },
    example: Example { operands: &["f32[2,3,4]", "f32[4,5]", "f32[5]"], attrs: r#"{"activation": "gelu"}"# },
};

/// Every op of op set v1.
pub static OPS: &[&OpDef] = &[
    &NEG,
    &ABS,
    &EXP,
    &LOG,
    &SQRT,
    &RSQRT,
    &TANH,
    &SIGMOID,
    &ERF,
    &RELU,
    &GELU,
    &GELU_TANH,
    &SILU,
    &SIN,
    &COS,
    &FLOOR,
    &CEIL,
    &NOT,
    &ADD,
    &SUB,
    &MUL,
    &DIV,
    &POW,
    &MAX,
    &MIN,
    &AND,
    &OR,
    &COMPARE,
    &WHERE,
    &CAST,
    &MATMUL,
    &DOT,
    &REDUCE_SUM,
    &REDUCE_MEAN,
    &REDUCE_MAX,
    &REDUCE_MIN,
    &ARGMAX,
    &ARGSORT,
    &RESHAPE,
    &TRANSPOSE,
    &BROADCAST_TO,
    &CONCAT,
    &SLICE,
    &PAD,
    &DYNAMIC_SLICE,
    &DYNAMIC_UPDATE_SLICE,
    &GATHER,
    &SCATTER_ADD,
    &STOP_GRADIENT,
    &IOTA,
    &CONSTANT,
    &RANDOM_UNIFORM,
    &CONV2D,
    &MAX_POOL2D,
    &AVG_POOL2D,
    &SOFTMAX,
    &LOG_SOFTMAX,
    &LAYER_NORM,
    &RMS_NORM,
    &ATTENTION,
    &LINEAR,
];

fn rank(operands: &[&TensorType]) -> usize {
    operands.first().map_or(0, |t| t.rank())
}

/// A reduction's sorted, distinct `axes` (all by default) and `keepdims`.
fn reduce(a: &mut Attrs, x: &[&TensorType], kind: ReduceKind) -> Result<Op, Diagnostic> {
    let rank = rank(x);
    let axes = match a.ints("axes")? {
        None => (0..rank).collect(),
        Some(list) => {
            let mut axes = list
                .iter()
                .map(|&d| normalize_axis(d, rank))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| a.err("axes", e))?;
            axes.sort_unstable();
            if axes.windows(2).any(|w| w[0] == w[1]) {
                return Err(a.err("axes", format!("{list:?} names an axis twice")));
            }
            axes
        }
    };
    Ok(Op::Reduce { kind, axes, keepdims: a.bool("keepdims", false)? })
}

/// NumPy-style slice: `starts`/`ends` (negative counts from the end, clamped),
/// optional `axes` and positive `steps`.
fn slice(a: &mut Attrs, shape: &[u64]) -> Result<Op, Diagnostic> {
    let rank = shape.len();
    let starts = a.ints("starts")?.ok_or_else(|| a.err("starts", "missing attribute"))?;
    let ends = a.ints("ends")?.ok_or_else(|| a.err("ends", "missing attribute"))?;
    let axes = match a.ints("axes")? {
        None => (0..starts.len()).collect(),
        Some(ax) => {
            ax.iter().map(|&x| normalize_axis(x, rank)).collect::<Result<Vec<_>, _>>().map_err(|e| a.err("axes", e))?
        }
    };
    let steps = a.ints("steps")?.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(a.err("starts", "starts, ends, axes and steps must have the same length"));
    }
    if axes.iter().any(|&x| x >= rank) {
        return Err(a.err("axes", format!("more axes than the operand's rank {rank}")));
    }
    let mut s: Vec<u64> = vec![0; rank];
    let mut l: Vec<u64> = shape.to_vec();
    let mut st: Vec<u64> = vec![1; rank];
    for i in 0..starts.len() {
        let (ax, dim) = (axes[i], shape[axes[i]] as i64);
        if steps[i] < 1 {
            return Err(a.err("steps", format!("step {} must be ≥ 1 (negative steps are not supported)", steps[i])));
        }
        let clamp = |x: i64| (if x < 0 { x + dim } else { x }).clamp(0, dim) as u64;
        s[ax] = clamp(starts[i]);
        l[ax] = clamp(ends[i]).max(s[ax]);
        st[ax] = steps[i] as u64;
    }
    Ok(Op::Slice { starts: s, limits: l, strides: st })
}

impl Op {
    /// The op's entry in the table.
    pub fn def(&self) -> &'static OpDef {
        match self {
            Op::Unary(u) => u.def(),
            Op::Binary(b) => b.def(),
            Op::Compare(_) => &COMPARE,
            Op::Where => &WHERE,
            Op::Cast { .. } => &CAST,
            Op::MatMul { .. } => &MATMUL,
            Op::Dot(_) => &DOT,
            Op::Reduce { kind, .. } => kind.def(),
            Op::ArgMax { .. } => &ARGMAX,
            Op::ArgSort { .. } => &ARGSORT,
            Op::Reshape { .. } => &RESHAPE,
            Op::Transpose { .. } => &TRANSPOSE,
            Op::BroadcastTo { .. } => &BROADCAST_TO,
            Op::Concat { .. } => &CONCAT,
            Op::Slice { .. } => &SLICE,
            Op::Pad { .. } => &PAD,
            Op::DynamicSlice { .. } => &DYNAMIC_SLICE,
            Op::DynamicUpdateSlice { .. } => &DYNAMIC_UPDATE_SLICE,
            Op::Gather { .. } => &GATHER,
            Op::ScatterAdd { .. } => &SCATTER_ADD,
            Op::StopGradient => &STOP_GRADIENT,
            Op::Iota { .. } => &IOTA,
            Op::Constant { .. } => &CONSTANT,
            Op::RandomUniform { .. } => &RANDOM_UNIFORM,
            Op::Conv2d { .. } => &CONV2D,
            Op::MaxPool2d { .. } => &MAX_POOL2D,
            Op::AvgPool2d { .. } => &AVG_POOL2D,
            Op::Softmax { .. } => &SOFTMAX,
            Op::LogSoftmax { .. } => &LOG_SOFTMAX,
            Op::LayerNorm { .. } => &LAYER_NORM,
            Op::RmsNorm { .. } => &RMS_NORM,
            Op::Attention { .. } => &ATTENTION,
            Op::Linear { .. } => &LINEAR,
        }
    }
}

impl UnaryOp {
    /// The op's entry in the table.
    pub fn def(self) -> &'static OpDef {
        match self {
            UnaryOp::Neg => &NEG,
            UnaryOp::Abs => &ABS,
            UnaryOp::Exp => &EXP,
            UnaryOp::Log => &LOG,
            UnaryOp::Sqrt => &SQRT,
            UnaryOp::Rsqrt => &RSQRT,
            UnaryOp::Tanh => &TANH,
            UnaryOp::Sigmoid => &SIGMOID,
            UnaryOp::Erf => &ERF,
            UnaryOp::Relu => &RELU,
            UnaryOp::GeluErf => &GELU,
            UnaryOp::GeluTanh => &GELU_TANH,
            UnaryOp::Silu => &SILU,
            UnaryOp::Sin => &SIN,
            UnaryOp::Cos => &COS,
            UnaryOp::Floor => &FLOOR,
            UnaryOp::Ceil => &CEIL,
            UnaryOp::Not => &NOT,
        }
    }
}

impl BinaryOp {
    /// The op's entry in the table.
    pub fn def(self) -> &'static OpDef {
        match self {
            BinaryOp::Add => &ADD,
            BinaryOp::Sub => &SUB,
            BinaryOp::Mul => &MUL,
            BinaryOp::Div => &DIV,
            BinaryOp::Pow => &POW,
            BinaryOp::Max => &MAX,
            BinaryOp::Min => &MIN,
            BinaryOp::And => &AND,
            BinaryOp::Or => &OR,
        }
    }
}

impl ReduceKind {
    /// The op's entry in the table.
    pub fn def(self) -> &'static OpDef {
        match self {
            ReduceKind::Sum => &REDUCE_SUM,
            ReduceKind::Mean => &REDUCE_MEAN,
            ReduceKind::Max => &REDUCE_MAX,
            ReduceKind::Min => &REDUCE_MIN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_entry_parses_back_to_itself() {
        let mut names: Vec<&str> = names().collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OPS.len());
        for def in OPS {
            let types: Vec<TensorType> = def.example.operands.iter().map(|t| t.parse().unwrap()).collect();
            let refs: Vec<&TensorType> = types.iter().collect();
            let attrs: serde_json::Value = serde_json::from_str(def.example.attrs).unwrap();
            let mut a = Attrs::new(attrs.as_object(), "attrs".into(), def.name);
            let op = (def.parse)(&mut a, &refs, &Bindings::new()).unwrap_or_else(|e| panic!("{}: {e}", def.name));
            a.finish().unwrap_or_else(|e| panic!("{}: {e}", def.name));
            assert_eq!(op.def().name, def.name, "`{}` parses to an op whose entry is `{}`", def.name, op.def().name);
        }
    }
}
