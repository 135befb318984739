//! Each ONNX operator's semantics in xlac ops, by opset where they changed.
//! Operators on values known at import (shape computations, constants) fold
//! instead of emitting nodes.

use serde_json::json;
use xlac_core::DType;

use super::fold::range;
use super::tensor::{product, Dim, Elem, Known};
use super::{bad, unsupported, Importer, Node, Problem, Rt, Val};

/// The operators the importer translates (of the default domain).
pub(super) const SUPPORTED: &[&str] = &[
    "Abs",
    "Acosh",
    "Add",
    "Asinh",
    "Atanh",
    "Attention",
    "And",
    "ArgMax",
    "ArgMin",
    "AveragePool",
    "BatchNormalization",
    "BitShift",
    "BitwiseAnd",
    "BitwiseNot",
    "BitwiseOr",
    "BitwiseXor",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Cos",
    "Cosh",
    "CumSum",
    "DepthToSpace",
    "Div",
    "Dropout",
    "Einsum",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "GatherND",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "Hardmax",
    "Identity",
    "InstanceNormalization",
    "IsInf",
    "IsNaN",
    "LRN",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "LpNormalization",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "MeanVarianceNormalization",
    "Min",
    "Mish",
    "Mod",
    "Mul",
    "Neg",
    "NegativeLogLikelihoodLoss",
    "Not",
    "OneHot",
    "Or",
    "PRelu",
    "Pad",
    "Pow",
    "RMSNormalization",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "Scatter",
    "ScatterElements",
    "ScatterND",
    "Selu",
    "Shape",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Size",
    "Slice",
    "Softmax",
    "SoftmaxCrossEntropyLoss",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Swish",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Tile",
    "TopK",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Upsample",
    "Where",
    "Xor",
];

pub(super) type Res = Result<Vec<Val>, Problem>;

impl Importer<'_> {
    /// The values of `n`'s outputs, in order.
    pub(super) fn translate(&mut self, n: &Node) -> Res {
        let op = n.proto.op_type.as_str();
        if let Some(v) = self.fold(n)? {
            return Ok(vec![v]);
        }
        let one = |r: Rt| Ok(vec![Val::Rt(r)]);
        match op {
            "Identity" => Ok(vec![self.input(n, 0)?.map_or_else(|| bad("input 0 is required"), Ok)?]),
            "Dropout" => {
                // Inference: the identity. Attributes of training are read and ignored.
                n.has("seed");
                n.has("is_test");
                n.has("ratio");
                let training = match self.const_input(n, 2, "training_mode")? {
                    None => false,
                    Some(k) => k.ints().is_none_or(|v| v.iter().any(|&t| t != 0)),
                };
                if training || n.int("is_test", 1) == 0 && n.opset < 7 {
                    return unsupported("Dropout in training mode (random masks)");
                }
                let x = self.rt_input(n, 0)?;
                if n.proto.output.get(1).is_some_and(|o| !o.is_empty()) {
                    let t = self.scalar(DType::Bool, 1.0);
                    let shape = dims_json(&x.shape)?;
                    let mask = self.emit("broadcast_to", &[&t], json!({"shape": shape}), DType::Bool, x.shape.clone());
                    return Ok(vec![Val::Rt(x), Val::Rt(mask)]);
                }
                one(x)
            }
            "Abs" | "Neg" | "Exp" | "Log" | "Sqrt" | "Tanh" | "Sigmoid" | "Erf" | "Relu" | "Sin" | "Cos" | "Floor"
            | "Ceil" | "Not" => {
                let x = self.rt_input(n, 0)?;
                let name = op.to_ascii_lowercase();
                one(self.unary(&name, &x))
            }
            "Reciprocal" => {
                let x = self.rt_input(n, 0)?;
                let one_ = self.scalar(x.dtype, 1.0);
                one(self.binary("div", &one_, &x)?)
            }
            "Sign" => {
                let x = self.rt_input(n, 0)?;
                let zero = self.scalar(x.dtype, 0.0);
                let pos = self.compare("gt", &x, &zero)?;
                let neg = self.compare("lt", &x, &zero)?;
                let p = self.cast(&pos, x.dtype);
                let q = self.cast(&neg, x.dtype);
                one(self.binary("sub", &p, &q)?)
            }
            "Add" | "Sub" | "Mul" | "Div" | "And" | "Or" => {
                let (a, b) = self.binary_operands(n)?;
                one(self.binary(&op.to_ascii_lowercase(), &a, &b)?)
            }
            "Xor" => {
                let (a, b) = self.binary_operands(n)?;
                one(self.compare("ne", &a, &b)?)
            }
            "Pow" => {
                let (a, b) = self.binary_operands(n)?;
                let b = self.cast(&b, a.dtype);
                one(self.binary("pow", &a, &b)?)
            }
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" => {
                let dir = match op {
                    "Equal" => "eq",
                    "Less" => "lt",
                    "Greater" => "gt",
                    "LessOrEqual" => "le",
                    _ => "ge",
                };
                let (a, b) = self.binary_operands(n)?;
                one(self.compare(dir, &a, &b)?)
            }
            "Sum" | "Max" | "Min" | "Mean" => {
                let name = match op {
                    "Sum" | "Mean" => "add",
                    "Max" => "max",
                    _ => "min",
                };
                let mut acc = self.rt_input(n, 0)?;
                for i in 1..n.inputs() {
                    let b = self.rt_input(n, i)?;
                    acc = self.binary(name, &acc, &b)?;
                }
                if op == "Mean" {
                    let k = self.scalar(acc.dtype, n.inputs() as f64);
                    acc = self.binary("div", &acc, &k)?;
                }
                one(acc)
            }
            "Where" => {
                let c = self.rt_input(n, 0)?;
                let a = self.rt_input(n, 1)?;
                let b = self.rt_input(n, 2)?;
                let shape = broadcast(&broadcast(&c.shape, &a.shape)?, &b.shape)?;
                one(self.emit("where", &[&c, &a, &b], json!({}), a.dtype, shape))
            }
            "Cast" => {
                let x = self.rt_input(n, 0)?;
                n.has("round_mode");
                let to = cast_target(n)?;
                one(self.onnx_cast(n, &x, to)?)
            }
            "CastLike" => {
                let x = self.rt_input(n, 0)?;
                let like = self.rt_input(n, 1)?;
                n.has("round_mode");
                one(self.onnx_cast(n, &x, like.dtype)?)
            }
            "IsNaN" => {
                let x = self.rt_input(n, 0)?;
                one(self.compare("ne", &x, &x)?)
            }
            "IsInf" => {
                let x = self.rt_input(n, 0)?;
                let (pos, neg) = (n.int("detect_positive", 1) != 0, n.int("detect_negative", 1) != 0);
                let inf = self.scalar(x.dtype, f64::INFINITY);
                let minus = self.scalar(x.dtype, f64::NEG_INFINITY);
                let p = self.compare("eq", &x, &inf)?;
                let q = self.compare("eq", &x, &minus)?;
                one(match (pos, neg) {
                    (true, true) => self.binary("or", &p, &q)?,
                    (true, false) => p,
                    (false, true) => q,
                    (false, false) => {
                        let f = self.scalar(DType::Bool, 0.0);
                        let shape = dims_json(&x.shape)?;
                        self.emit("broadcast_to", &[&f], json!({"shape": shape}), DType::Bool, x.shape.clone())
                    }
                })
            }
            "BitwiseAnd" | "BitwiseOr" => {
                let (a, b) = self.binary_operands(n)?;
                one(self.binary(if op == "BitwiseAnd" { "and" } else { "or" }, &a, &b)?)
            }
            "BitShift" => self.bit_shift(n).and_then(one),
            "BitwiseNot" => {
                let x = self.rt_input(n, 0)?;
                one(self.unary("not", &x))
            }
            "BitwiseXor" => {
                // a ^ b = (a | b) & !(a & b)
                let (a, b) = self.binary_operands(n)?;
                let or = self.binary("or", &a, &b)?;
                let and = self.binary("and", &a, &b)?;
                let nand = self.unary("not", &and);
                one(self.binary("and", &or, &nand)?)
            }
            "Mish" => {
                // x · tanh(softplus(x))
                let x = self.rt_input(n, 0)?;
                let e = self.unary("exp", &x);
                let one_ = self.scalar(x.dtype, 1.0);
                let s = self.binary("add", &e, &one_)?;
                let sp = self.unary("log", &s);
                let t = self.unary("tanh", &sp);
                one(self.binary("mul", &x, &t)?)
            }
            "Celu" => {
                // max(0, x) + min(0, α·(exp(x/α) − 1)), in f32 for 16-bit x (as ONNX's reference).
                let x16 = self.rt_input(n, 0)?;
                let x = if matches!(x16.dtype, DType::F16 | DType::BF16) {
                    self.cast(&x16, DType::F32)
                } else {
                    x16.clone()
                };
                let alpha = n.float("alpha", 1.0);
                let a = self.scalar(x.dtype, alpha);
                let xa = self.binary("div", &x, &a)?;
                let e = self.unary("exp", &xa);
                let one_ = self.scalar(x.dtype, 1.0);
                let em1 = self.binary("sub", &e, &one_)?;
                let neg = self.binary("mul", &em1, &a)?;
                let zero = self.scalar(x.dtype, 0.0);
                let lo = self.binary("min", &neg, &zero)?;
                let hi = self.binary("max", &x, &zero)?;
                let y = self.binary("add", &hi, &lo)?;
                one(self.cast(&y, x16.dtype))
            }
            "Shrink" => {
                // x < −λ: x + bias; x > λ: x − bias; else 0
                let x = self.rt_input(n, 0)?;
                let (lambd, bias) = (n.float("lambd", 0.5), n.float("bias", 0.0));
                let l = self.scalar(x.dtype, lambd);
                let nl = self.scalar(x.dtype, -lambd);
                let b = self.scalar(x.dtype, bias);
                let zero = self.scalar(x.dtype, 0.0);
                let below = self.compare("lt", &x, &nl)?;
                let above = self.compare("gt", &x, &l)?;
                let up = self.binary("add", &x, &b)?;
                let down = self.binary("sub", &x, &b)?;
                let inner = self.emit("where", &[&above, &down, &zero], json!({}), x.dtype, x.shape.clone());
                one(self.emit("where", &[&below, &up, &inner], json!({}), x.dtype, x.shape.clone()))
            }
            "LpNormalization" => {
                let x = self.rt_input(n, 0)?;
                let a = axis(n.int("axis", -1), x.shape.len())?;
                let norm = match n.int("p", 2) {
                    1 => {
                        let ab = self.unary("abs", &x);
                        self.reduce("reduce_sum", &ab, &[a], true)
                    }
                    2 => {
                        let sq = self.binary("mul", &x, &x)?;
                        let s = self.reduce("reduce_sum", &sq, &[a], true);
                        self.unary("sqrt", &s)
                    }
                    p => return bad(format!("p = {p}, expected 1 or 2")),
                };
                // A zero norm divides as 1 (ONNX's reference): zeros stay zeros.
                let zero = self.scalar(x.dtype, 0.0);
                let one_ = self.scalar(x.dtype, 1.0);
                let is_zero = self.compare("eq", &norm, &zero)?;
                let norm = self.emit("where", &[&is_zero, &one_, &norm], json!({}), x.dtype, norm.shape.clone());
                one(self.binary("div", &x, &norm)?)
            }
            "MeanVarianceNormalization" => {
                // (x − mean) / sqrt(mean((x − mean)²) + 1e-9) over `axes`.
                let x = self.rt_input(n, 0)?;
                let r = x.shape.len();
                let mut axes: Vec<usize> = match n.ints("axes") {
                    Some(a) => a.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?,
                    None => [0, 2, 3].into_iter().filter(|&a| a < r).collect(),
                };
                axes.sort_unstable();
                axes.dedup();
                let mean = self.reduce("reduce_mean", &x, &axes, true);
                let d = self.binary("sub", &x, &mean)?;
                let d2 = self.binary("mul", &d, &d)?;
                let var = self.reduce("reduce_mean", &d2, &axes, true);
                let e = self.scalar(x.dtype, 1e-9);
                let ve = self.binary("add", &var, &e)?;
                let sd = self.unary("sqrt", &ve);
                one(self.binary("div", &d, &sd)?)
            }
            "OneHot" => self.one_hot(n).and_then(one),
            "GatherElements" => self.gather_elements(n).and_then(one),
            "GatherND" => self.gather_nd(n).and_then(one),
            "ScatterND" => self.scatter_nd(n).and_then(one),
            "ScatterElements" | "Scatter" => self.scatter_elements(n).and_then(one),
            "Swish" => {
                let x = self.rt_input(n, 0)?;
                let a = self.scalar(x.dtype, n.float("alpha", 1.0));
                let ax = self.binary("mul", &x, &a)?;
                let s = self.unary("sigmoid", &ax);
                one(self.binary("mul", &x, &s)?)
            }
            "Mod" => self.modulo(n).and_then(one),
            "Einsum" => self.einsum(n),
            "Resize" | "Upsample" => self.resize(n),
            "CumSum" => self.cumsum(n).and_then(one),
            "Trilu" => self.trilu(n).and_then(one),
            "Hardmax" => self.hardmax(n).and_then(one),
            "TopK" => self.top_k(n),
            "Attention" => self.attention(n),
            "NegativeLogLikelihoodLoss" => self.nll_loss(n),
            "SoftmaxCrossEntropyLoss" => self.softmax_cross_entropy(n),
            "RMSNormalization" => self.rms_norm(n).and_then(one),
            "Clip" => {
                let x = self.rt_input(n, 0)?;
                let (lo, hi) = if n.opset < 11 {
                    let lo = n.attr_f("min").map(|v| self.scalar(x.dtype, v));
                    let hi = n.attr_f("max").map(|v| self.scalar(x.dtype, v));
                    (lo, hi)
                } else {
                    let lo = self.optional_rt(n, 1)?;
                    let hi = self.optional_rt(n, 2)?;
                    (lo, hi)
                };
                let mut y = x;
                if let Some(lo) = lo {
                    y = self.binary("max", &y, &lo)?;
                }
                if let Some(hi) = hi {
                    y = self.binary("min", &y, &hi)?;
                }
                one(y)
            }
            "LeakyRelu" => {
                let x = self.rt_input(n, 0)?;
                let alpha = n.float("alpha", 0.01);
                let a = self.scalar(x.dtype, alpha);
                let neg = self.binary("mul", &x, &a)?;
                one(self.select_negative(&x, &neg)?)
            }
            "PRelu" => {
                let x = self.rt_input(n, 0)?;
                let mut slope = self.rt_input(n, 1)?;
                if n.opset < 7 && slope.shape.len() == 1 && x.shape.len() > 2 {
                    // Before opset 7 a slope of C values applies along the channel axis.
                    let mut s = vec![slope.shape[0].clone()];
                    s.extend(std::iter::repeat_n(Dim::size(1), x.shape.len() - 2));
                    slope = self.reshape(&slope, s)?;
                }
                let neg = self.binary("mul", &x, &slope)?;
                one(self.select_negative(&x, &neg)?)
            }
            "ThresholdedRelu" => {
                let x = self.rt_input(n, 0)?;
                let alpha = self.scalar(x.dtype, n.float("alpha", 1.0));
                let keep = self.compare("gt", &x, &alpha)?;
                let zero = self.scalar(x.dtype, 0.0);
                one(self.emit("where", &[&keep, &x, &zero], json!({}), x.dtype, x.shape.clone()))
            }
            "Elu" | "Selu" => {
                let x = self.rt_input(n, 0)?;
                let (alpha, gamma) = if op == "Elu" {
                    (n.float("alpha", 1.0), 1.0)
                } else {
                    (n.float("alpha", 1.673_263_192_176_818_8), n.float("gamma", 1.050_701_022_148_132_3))
                };
                let e = self.unary("exp", &x);
                let one_ = self.scalar(x.dtype, 1.0);
                let em1 = self.binary("sub", &e, &one_)?;
                let a = self.scalar(x.dtype, alpha);
                let neg = self.binary("mul", &em1, &a)?;
                let y = self.select_nonpositive(&x, &neg, op == "Selu")?;
                if gamma != 1.0 {
                    let g = self.scalar(x.dtype, gamma);
                    return one(self.binary("mul", &y, &g)?);
                }
                one(y)
            }
            "Softplus" => {
                let x = self.rt_input(n, 0)?;
                let e = self.unary("exp", &x);
                let one_ = self.scalar(x.dtype, 1.0);
                let s = self.binary("add", &e, &one_)?;
                one(self.unary("log", &s))
            }
            "Sinh" | "Cosh" | "Tan" | "Asinh" | "Acosh" | "Atanh" => {
                let x = self.rt_input(n, 0)?;
                one(self.trigonometric(n.proto.op_type.as_str(), &x)?)
            }
            "Softsign" => {
                let x = self.rt_input(n, 0)?;
                let a = self.unary("abs", &x);
                let one_ = self.scalar(x.dtype, 1.0);
                let d = self.binary("add", &a, &one_)?;
                one(self.binary("div", &x, &d)?)
            }
            "HardSigmoid" | "HardSwish" => {
                let x = self.rt_input(n, 0)?;
                let (alpha, beta) =
                    if op == "HardSigmoid" { (n.float("alpha", 0.2), n.float("beta", 0.5)) } else { (1.0 / 6.0, 0.5) };
                let a = self.scalar(x.dtype, alpha);
                let b = self.scalar(x.dtype, beta);
                let ax = self.binary("mul", &x, &a)?;
                let s = self.binary("add", &ax, &b)?;
                let zero = self.scalar(x.dtype, 0.0);
                let one_ = self.scalar(x.dtype, 1.0);
                let lo = self.binary("max", &s, &zero)?;
                let y = self.binary("min", &lo, &one_)?;
                if op == "HardSwish" {
                    return one(self.binary("mul", &x, &y)?);
                }
                one(y)
            }
            "Gelu" => {
                let x = self.rt_input(n, 0)?;
                match n.string("approximate", "none").as_str() {
                    "none" => one(self.unary("gelu", &x)),
                    "tanh" => one(self.unary("gelu_tanh", &x)),
                    a => bad(format!("approximate is `{a}`, expected `none` or `tanh`")),
                }
            }
            "MatMul" => {
                let a = self.rt_input(n, 0)?;
                let b = self.rt_input(n, 1)?;
                one(self.matmul(&a, &b)?)
            }
            "Gemm" => self.gemm(n).and_then(one),
            "Softmax" | "LogSoftmax" => self.softmax(n).and_then(one),
            "Conv" => self.conv(n).and_then(one),
            "ConvTranspose" => self.conv_transpose(n).and_then(one),
            "MaxPool" | "AveragePool" => self.pool(n),
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = self.rt_input(n, 0)?;
                let axes: Vec<usize> = (2..x.shape.len()).collect();
                let kind = if op == "GlobalAveragePool" { "reduce_mean" } else { "reduce_max" };
                one(self.reduce(kind, &x, &axes, true))
            }
            "BatchNormalization" => self.batch_norm(n).and_then(one),
            "InstanceNormalization" => self.instance_norm(n).and_then(one),
            "LRN" => self.lrn(n).and_then(one),
            "LayerNormalization" => self.layer_norm(n),
            "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceL1" | "ReduceL2" | "ReduceSumSquare"
            | "ReduceLogSum" | "ReduceLogSumExp" => self.reduction(n).and_then(one),
            "ArgMax" | "ArgMin" => {
                let x = self.rt_input(n, 0)?;
                let last = n.int("select_last_index", 0) != 0;
                let axis = axis(n.int("axis", 0), x.shape.len())?;
                let keep = n.int("keepdims", 1) != 0;
                let mut src = if op == "ArgMin" { self.negated(&x)? } else { x.clone() };
                let d = if last { concrete(&x.shape[axis..axis + 1])?[0] } else { 0 };
                if last {
                    // The first maximum of the reversed axis is the last one.
                    let rev = Known::new(DType::I64, vec![d], (0..d).rev().map(|i| Elem::Int(i as i64)).collect());
                    let rev = self.write_known(&rev, &self.hint.clone())?;
                    src = self.emit("gather", &[&src, &rev], json!({"axis": axis}), src.dtype, src.shape.clone());
                }
                let mut shape = x.shape.clone();
                if keep {
                    shape[axis] = Dim::size(1);
                } else {
                    shape.remove(axis);
                }
                let i = self.emit("argmax", &[&src], json!({"axis": axis, "keepdims": keep}), DType::I64, shape);
                if last {
                    let top = self.scalar(DType::I64, (d - 1) as f64);
                    return one(self.binary("sub", &top, &i)?);
                }
                one(i)
            }
            "Reshape" => {
                let x = self.rt_input(n, 0)?;
                let Some(s) = self.const_input(n, 1, "the shape")? else { return bad("input 1 (shape) is required") };
                let target = reshape_target(&x.shape, &s.elems(), n.int("allowzero", 0) != 0)?;
                one(self.reshape(&x, target)?)
            }
            "Flatten" => {
                let x = self.rt_input(n, 0)?;
                let r = x.shape.len();
                let a = n.int("axis", 1);
                let a = if a < 0 { a + r as i64 } else { a };
                if !(0..=r as i64).contains(&a) {
                    return bad(format!("axis {} out of range for rank {r}", n.int("axis", 1)));
                }
                let (l, rgt) = x.shape.split_at(a as usize);
                let target = vec![product(l), product(rgt)];
                one(self.reshape(&x, target)?)
            }
            "Unsqueeze" | "Squeeze" => {
                let x = self.rt_input(n, 0)?;
                let axes = self.axes_of(n, 1)?;
                let target = squeeze_target(op, &x.shape, axes)?;
                one(self.reshape(&x, target)?)
            }
            "DepthToSpace" | "SpaceToDepth" => self.depth_space(n).and_then(one),
            "Transpose" => {
                let x = self.rt_input(n, 0)?;
                let r = x.shape.len();
                let perm: Vec<usize> = match n.ints("perm") {
                    Some(p) => p.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?,
                    None => (0..r).rev().collect(),
                };
                let shape = perm.iter().map(|&p| x.shape[p].clone()).collect();
                one(self.emit("transpose", &[&x], json!({"perm": perm}), x.dtype, shape))
            }
            "Expand" => {
                let x = self.rt_input(n, 0)?;
                let Some(s) = self.const_input(n, 1, "the shape")? else { return bad("input 1 (shape) is required") };
                let Some(dims) = s.dims() else { return bad("the shape has a negative size") };
                let shape = broadcast(&x.shape, &dims)?;
                let attr = dims_json(&shape)?;
                one(self.emit("broadcast_to", &[&x], json!({"shape": attr}), x.dtype, shape))
            }
            "Tile" => {
                let x = self.rt_input(n, 0)?;
                let Some(reps) = self.const_input(n, 1, "repeats")?.and_then(|k| k.ints()) else {
                    return bad("input 1 (repeats) is required");
                };
                if reps.len() != x.shape.len() || reps.iter().any(|&r| r < 0) {
                    return bad(format!("repeats {reps:?} for rank {}", x.shape.len()));
                }
                let mut inter = Vec::new();
                let mut big = Vec::new();
                let mut out = Vec::new();
                for (d, &r) in x.shape.iter().zip(&reps) {
                    inter.extend([Dim::size(1), d.clone()]);
                    big.extend([Dim::size(r as u64), d.clone()]);
                    out.push(d.mul(&Dim::size(r as u64)));
                }
                let y = self.reshape(&x, inter)?;
                let attr = dims_json(&big)?;
                let b = self.emit("broadcast_to", &[&y], json!({"shape": attr}), x.dtype, big);
                one(self.reshape(&b, out)?)
            }
            "Concat" => {
                let mut xs = Vec::new();
                for i in 0..n.inputs() {
                    xs.push(self.rt_input(n, i)?);
                }
                let r = xs[0].shape.len();
                let a = axis(n.int("axis", 0), r)?;
                let mut shape = xs[0].shape.clone();
                shape[a] = product(&[]);
                let mut total = Dim::size(0);
                let mut sizes = Vec::new();
                for x in &xs {
                    sizes.push(x.shape[a].clone());
                }
                if let Some(s) = sizes.iter().map(Dim::as_size).sum::<Option<u64>>() {
                    total = Dim::size(s);
                } else if sizes.len() == 1 {
                    total = sizes[0].clone();
                } else if sizes.iter().filter(|d| d.as_size() != Some(0)).count() == 1 {
                    total = sizes.iter().find(|d| d.as_size() != Some(0)).cloned().unwrap_or(total);
                } else {
                    return unsupported(
                        "concatenating along a symbolic dimension; bind its symbols (--bind NAME=SIZE)",
                    );
                }
                shape[a] = total;
                let refs: Vec<&Rt> = xs.iter().collect();
                one(self.emit("concat", &refs, json!({"axis": a}), xs[0].dtype, shape))
            }
            "Split" => self.split(n),
            "Slice" => self.slice(n).and_then(one),
            "Gather" => self.gather(n).and_then(one),
            "Pad" => self.pad(n).and_then(one),
            "ConstantOfShape" => {
                let Some(s) = self.const_input(n, 0, "the shape")? else { return bad("input 0 (shape) is required") };
                let Some(dims) = s.dims() else { return bad("the shape has a negative size") };
                let value = constant_of_shape_value(n)?;
                let v = self.write_known(&value, &self.hint.clone())?;
                let attr = dims_json(&dims)?;
                one(self.emit("broadcast_to", &[&v.clone()], json!({"shape": attr}), v.dtype, dims))
            }
            "Range" => {
                let mut v = Vec::new();
                for (i, what) in ["start", "limit", "delta"].iter().enumerate() {
                    let k = self
                        .const_input(n, i, what)?
                        .ok_or(Problem::Invalid(format!("input {i} ({what}) is required")))?;
                    v.push(k);
                }
                let first = |k: &Known| k.elems().first().cloned();
                if let (Some(Elem::Int(0)), Some(Elem::Sym(len)), Some(Elem::Int(1))) =
                    (first(&v[0]), first(&v[1]), first(&v[2]))
                {
                    // arange(n) over a symbolic n: an iota.
                    let shape = dims_json(std::slice::from_ref(&len))?;
                    let dtype = v[0].dtype;
                    return one(self.emit(
                        "iota",
                        &[],
                        json!({"dtype": dtype.name(), "shape": shape, "axis": 0}),
                        dtype,
                        vec![len],
                    ));
                }
                range(&v[0], &v[1], &v[2]).map(|k| vec![self.known(k)])
            }
            _ => unsupported(format!("operator {op} at opset {}", n.opset)),
        }
    }

    // ---------------------------------------------------------------- helpers

    pub(super) fn scalar(&mut self, dtype: DType, v: f64) -> Rt {
        let k = Known::scalar(dtype, if dtype.is_float() { Elem::Float(v) } else { Elem::Int(dtype.int_from_f64(v)) });
        let hint = self.hint.clone();
        self.write_known(&k, &hint).expect("a finite scalar is written inline")
    }

    pub(super) fn unary(&mut self, op: &str, x: &Rt) -> Rt {
        self.emit(op, &[x], json!({}), x.dtype, x.shape.clone())
    }

    pub(super) fn binary(&mut self, op: &str, a: &Rt, b: &Rt) -> Result<Rt, Problem> {
        if a.dtype != b.dtype {
            return bad(format!("operands of {op} are {} and {}", a.dtype, b.dtype));
        }
        let shape = broadcast(&a.shape, &b.shape)?;
        Ok(self.emit(op, &[a, b], json!({}), a.dtype, shape))
    }

    /// The two operands of an elementwise op; before opset 7, `broadcast = 1`
    /// aligns the second with the first from `axis` (default: the trailing dimensions).
    pub(super) fn binary_operands(&mut self, n: &Node) -> Result<(Rt, Rt), Problem> {
        let a = self.rt_input(n, 0)?;
        let b = self.rt_input(n, 1)?;
        if n.opset >= 7 {
            return Ok((a, b));
        }
        if n.int("broadcast", 0) == 0 {
            if a.shape != b.shape {
                return bad(format!("shapes {} and {} differ without broadcast = 1", show(&a.shape), show(&b.shape)));
            }
            return Ok((a, b));
        }
        let (ra, rb) = (a.shape.len(), b.shape.len());
        let start = n.int("axis", (ra as i64) - (rb as i64));
        let start = if start < 0 { start + ra as i64 } else { start };
        if start < 0 || start as usize + rb > ra {
            return bad(format!("broadcast axis {start} puts rank {rb} outside rank {ra}"));
        }
        let mut shape = vec![Dim::size(1); start as usize];
        shape.extend(b.shape.iter().cloned());
        shape.extend(std::iter::repeat_n(Dim::size(1), ra - start as usize - rb));
        let b = self.reshape(&b, shape)?;
        Ok((a, b))
    }

    pub(super) fn compare(&mut self, dir: &str, a: &Rt, b: &Rt) -> Result<Rt, Problem> {
        if a.dtype != b.dtype {
            return bad(format!("operands of a comparison are {} and {}", a.dtype, b.dtype));
        }
        let shape = broadcast(&a.shape, &b.shape)?;
        Ok(self.emit("compare", &[a, b], json!({"dir": dir}), DType::Bool, shape))
    }

    /// ONNX's Cast: to an 8-bit float with `saturate` (the default), a value
    /// beyond the type's range (infinities included) becomes its largest
    /// finite value of that sign, NaN staying NaN (`ml_dtypes` after
    /// `numpy.clip`, ONNX's reference); else a plain conversion.
    fn onnx_cast(&mut self, n: &Node, x: &Rt, to: DType) -> Result<Rt, Problem> {
        let saturate = n.int("saturate", 1) != 0;
        let Some(max) = to.float8().filter(|_| saturate).map(|f| f.max_finite()) else {
            return Ok(self.cast(x, to));
        };
        let wide = if x.dtype.is_float() { x.clone() } else { self.cast(x, DType::F32) };
        let (hi, lo) = (self.scalar(wide.dtype, max), self.scalar(wide.dtype, -max));
        let above = self.binary("max", &wide, &lo)?;
        let clipped = self.binary("min", &above, &hi)?;
        Ok(self.cast(&clipped, to))
    }

    pub(super) fn cast(&mut self, x: &Rt, to: DType) -> Rt {
        if x.dtype == to {
            return x.clone();
        }
        self.emit("cast", &[x], json!({"to": to.name()}), to, x.shape.clone())
    }

    /// `x < 0 ? neg : x`.
    pub(super) fn select_negative(&mut self, x: &Rt, neg: &Rt) -> Result<Rt, Problem> {
        let zero = self.scalar(x.dtype, 0.0);
        let c = self.compare("lt", x, &zero)?;
        let shape = broadcast(&x.shape, &neg.shape)?;
        Ok(self.emit("where", &[&c, neg, x], json!({}), x.dtype, shape))
    }

    /// `x <= 0 ? neg : x` (`x < 0` unless `or_zero`).
    pub(super) fn select_nonpositive(&mut self, x: &Rt, neg: &Rt, or_zero: bool) -> Result<Rt, Problem> {
        let zero = self.scalar(x.dtype, 0.0);
        let c = self.compare(if or_zero { "le" } else { "lt" }, x, &zero)?;
        Ok(self.emit("where", &[&c, neg, x], json!({}), x.dtype, x.shape.clone()))
    }

    pub(super) fn reduce(&mut self, kind: &str, x: &Rt, axes: &[usize], keep: bool) -> Rt {
        let mut shape = Vec::new();
        for (i, d) in x.shape.iter().enumerate() {
            if !axes.contains(&i) {
                shape.push(d.clone());
            } else if keep {
                shape.push(Dim::size(1));
            }
        }
        self.emit(kind, &[x], json!({"axes": axes, "keepdims": keep}), x.dtype, shape)
    }

    /// `x` reshaped to `target`; one dimension that model.json cannot write (a
    /// product of symbols) becomes `-1`.
    pub(super) fn reshape(&mut self, x: &Rt, target: Vec<Dim>) -> Result<Rt, Problem> {
        if x.shape == target {
            return Ok(x.clone());
        }
        let mut attr = Vec::new();
        let mut inferred = false;
        for d in &target {
            match d.to_json() {
                Some(j) => attr.push(j),
                None if !inferred => {
                    inferred = true;
                    attr.push(json!(-1));
                }
                None => return unsupported(need_binding(&target)),
            }
        }
        Ok(self.emit("reshape", &[x], json!({"shape": attr}), x.dtype, target))
    }

    pub(super) fn matmul(&mut self, a: &Rt, b: &Rt) -> Result<Rt, Problem> {
        if a.dtype != b.dtype {
            return bad(format!("MatMul operands are {} and {}", a.dtype, b.dtype));
        }
        let (ra, rb) = (a.shape.len(), b.shape.len());
        if ra == 0 || rb == 0 {
            return bad("MatMul of a scalar");
        }
        let mut sa = a.shape.clone();
        let mut sb = b.shape.clone();
        if ra == 1 {
            sa.insert(0, Dim::size(1));
        }
        if rb == 1 {
            sb.push(Dim::size(1));
        }
        let (m, k1) = (sa[sa.len() - 2].clone(), sa[sa.len() - 1].clone());
        let (k2, nn) = (sb[sb.len() - 2].clone(), sb[sb.len() - 1].clone());
        if k1 != k2 {
            return bad(format!("MatMul contracts {k1} with {k2}"));
        }
        let mut shape = broadcast(&sa[..sa.len() - 2], &sb[..sb.len() - 2])?;
        if ra > 1 {
            shape.push(m);
        }
        if rb > 1 {
            shape.push(nn);
        }
        Ok(self.emit("matmul", &[a, b], json!({}), a.dtype, shape))
    }

    pub(super) fn gemm(&mut self, n: &Node) -> Result<Rt, Problem> {
        let a = self.rt_input(n, 0)?;
        let b = self.rt_input(n, 1)?;
        if a.shape.len() != 2 || b.shape.len() != 2 {
            return bad("Gemm takes matrices");
        }
        let a = if n.int("transA", 0) != 0 { self.transpose2(&a) } else { a };
        let b = if n.int("transB", 0) != 0 { self.transpose2(&b) } else { b };
        let mut y = self.matmul(&a, &b)?;
        let alpha = n.float("alpha", 1.0);
        if alpha != 1.0 {
            let s = self.scalar(y.dtype, alpha);
            y = self.binary("mul", &y, &s)?;
        }
        n.has("broadcast");
        if self.input(n, 2)?.is_some() {
            let mut c = self.rt_input(n, 2)?;
            let beta = n.float("beta", 1.0);
            if beta != 1.0 {
                let s = self.scalar(c.dtype, beta);
                c = self.binary("mul", &c, &s)?;
            }
            y = self.binary("add", &y, &c)?;
        }
        Ok(y)
    }

    pub(super) fn transpose2(&mut self, x: &Rt) -> Rt {
        let shape = vec![x.shape[1].clone(), x.shape[0].clone()];
        self.emit("transpose", &[x], json!({"perm": [1, 0]}), x.dtype, shape)
    }

    pub(super) fn softmax(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let r = x.shape.len();
        let name = if n.proto.op_type == "Softmax" { "softmax" } else { "log_softmax" };
        if n.opset >= 13 {
            let a = axis(n.int("axis", -1), r)?;
            return Ok(self.emit(name, &[&x], json!({"axis": a}), x.dtype, x.shape.clone()));
        }
        // Before opset 13: the input coerced to 2-D at `axis`, normalised per row.
        let a = axis(n.int("axis", 1), r.max(1))?;
        let (l, rgt) = x.shape.split_at(a);
        let flat = self.reshape(&x, vec![product(l), product(rgt)])?;
        let y = self.emit(name, &[&flat], json!({"axis": 1}), x.dtype, flat.shape.clone());
        self.reshape(&y, x.shape.clone())
    }

    /// `-x`; for unsigned integers, the order reversed another way (`MAX - x`).
    pub(super) fn negated(&mut self, x: &Rt) -> Result<Rt, Problem> {
        if !x.dtype.is_signed() {
            let max = x.dtype.int_range().map_or(0.0, |(_, hi)| hi as f64);
            let m = self.scalar(x.dtype, max);
            return self.binary("sub", &m, x);
        }
        Ok(self.unary("neg", x))
    }

    /// The hyperbolic functions, their inverses and the tangent, from exp,
    /// log, sqrt, sin and cos: `sinh = (e^x − e^−x)/2`, `cosh = (e^x + e^−x)/2`,
    /// `tan = sin/cos`, `asinh = sign(x)·log(|x| + √(x²+1))` (no cancellation
    /// for negative x), `acosh = log(x + √(x²−1))`, `atanh = log((1+x)/(1−x))/2`.
    fn trigonometric(&mut self, op: &str, x: &Rt) -> Result<Rt, Problem> {
        if !x.dtype.is_float() {
            return unsupported(format!("{op} of {}", x.dtype));
        }
        let one = self.scalar(x.dtype, 1.0);
        let half = self.scalar(x.dtype, 0.5);
        match op {
            "Sinh" | "Cosh" => {
                let e = self.unary("exp", x);
                let m = self.unary("neg", x);
                let em = self.unary("exp", &m);
                let s = self.binary(if op == "Sinh" { "sub" } else { "add" }, &e, &em)?;
                self.binary("mul", &s, &half)
            }
            "Tan" => {
                let (s, c) = (self.unary("sin", x), self.unary("cos", x));
                self.binary("div", &s, &c)
            }
            "Asinh" | "Acosh" => {
                let a = if op == "Asinh" { self.unary("abs", x) } else { x.clone() };
                let sq = self.binary("mul", x, x)?;
                let r = self.binary(if op == "Asinh" { "add" } else { "sub" }, &sq, &one)?;
                let root = self.unary("sqrt", &r);
                let sum = self.binary("add", &a, &root)?;
                let l = self.unary("log", &sum);
                if op == "Acosh" {
                    return Ok(l);
                }
                let zero = self.scalar(x.dtype, 0.0);
                let negative = self.compare("lt", x, &zero)?;
                let minus = self.unary("neg", &l);
                Ok(self.emit("where", &[&negative, &minus, &l], json!({}), x.dtype, x.shape.clone()))
            }
            _ => {
                let (p, m) = (self.binary("add", &one, x)?, self.binary("sub", &one, x)?);
                let q = self.binary("div", &p, &m)?;
                let l = self.unary("log", &q);
                self.binary("mul", &l, &half)
            }
        }
    }

    /// DepthToSpace (modes DCR and CRD) and SpaceToDepth on [N, C, H, W]:
    /// a reshape that splits out the blocks, a transpose, a reshape.
    fn depth_space(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let d = concrete(&x.shape)?;
        let b = n.int("blocksize", 0);
        let [batch, c, h, w] = d[..] else { return bad(format!("input of rank {}, expected [N, C, H, W]", d.len())) };
        if b < 1 {
            return bad(format!("blocksize {b}, expected a positive size"));
        }
        let b = b as u64;
        // DCR: depth ordered (block row, block column, channel); CRD: (channel, row, column).
        let dcr = match n.string("mode", "DCR").as_str() {
            "DCR" => true,
            "CRD" => false,
            m => return bad(format!("mode `{m}`, expected DCR or CRD")),
        };
        let (split, perm, out) = if n.proto.op_type == "SpaceToDepth" {
            if h % b != 0 || w % b != 0 {
                return bad(format!("blocksize {b} does not divide H {h} and W {w}"));
            }
            let perm = if dcr { [0, 3, 5, 1, 2, 4] } else { [0, 1, 3, 5, 2, 4] };
            (vec![batch, c, h / b, b, w / b, b], perm, [batch, c * b * b, h / b, w / b])
        } else {
            if c % (b * b) != 0 {
                return bad(format!("blocksize {b}² does not divide C {c}"));
            }
            let out = [batch, c / (b * b), h * b, w * b];
            if dcr {
                (vec![batch, b, b, c / (b * b), h, w], [0, 3, 4, 1, 5, 2], out)
            } else {
                (vec![batch, c / (b * b), b, b, h, w], [0, 1, 4, 2, 5, 3], out)
            }
        };
        let blocks = self.reshape(&x, Dim::sizes(&split))?;
        let shape = perm.iter().map(|&p| blocks.shape[p].clone()).collect();
        let moved = self.emit("transpose", &[&blocks], json!({"perm": perm}), x.dtype, shape);
        self.reshape(&moved, Dim::sizes(&out))
    }

    /// BitShift as ONNX's reference: `x << s` wraps to the width, `x >> s`
    /// is arithmetic on signed types; a shift below 0 or from the width up
    /// gives 0 (or −1, shifting a negative right). Shifts are multiplications
    /// and divisions by `2^s` (which wraps to the minimum at `s = width − 1`
    /// of a signed type: dividing a non-negative value by it gives 0, the
    /// right shift's result there); a negative value shifts right as the
    /// complement of its complement's shift.
    fn bit_shift(&mut self, n: &Node) -> Result<Rt, Problem> {
        let (x, s) = self.binary_operands(n)?;
        if !x.dtype.is_integer() {
            return unsupported(format!("BitShift of {}", x.dtype));
        }
        let left = match n.string("direction", "").as_str() {
            "LEFT" => true,
            "RIGHT" => false,
            d => return bad(format!("direction `{d}`, expected LEFT or RIGHT")),
        };
        let shape = broadcast(&x.shape, &s.shape)?;
        let width = 8.0 * x.dtype.size_bytes() as f64;
        let (zero, top) = (self.scalar(s.dtype, 0.0), self.scalar(s.dtype, width));
        let from_zero = self.compare("ge", &s, &zero)?;
        let below_top = self.compare("lt", &s, &top)?;
        let valid = self.binary("and", &from_zero, &below_top)?;
        // Out of range shifts right as by width − 1: 0, or −1 for a negative.
        let last = self.scalar(s.dtype, if left { 0.0 } else { width - 1.0 });
        let s = self.emit("where", &[&valid, &s, &last], json!({}), s.dtype, s.shape.clone());
        let two = self.scalar(x.dtype, 2.0);
        let power = self.binary("pow", &two, &s)?;
        let shifted = if left {
            self.binary("mul", &x, &power)?
        } else if x.dtype.is_signed() {
            let zero = self.scalar(x.dtype, 0.0);
            let negative = self.compare("lt", &x, &zero)?;
            let complement = self.unary("not", &x);
            let magnitude = self.emit("where", &[&negative, &complement, &x], json!({}), x.dtype, x.shape.clone());
            let q = self.binary("div", &magnitude, &power)?;
            let back = self.unary("not", &q);
            return Ok(self.emit("where", &[&negative, &back, &q], json!({}), x.dtype, shape));
        } else {
            self.binary("div", &x, &power)?
        };
        let zero = self.scalar(x.dtype, 0.0);
        Ok(self.emit("where", &[&valid, &shifted, &zero], json!({}), x.dtype, shape))
    }

    /// ONNX Mod: `fmod = 1` the remainder of truncated division (C's fmod),
    /// else of floored division (Python's `%`, the divisor's sign).
    pub(super) fn modulo(&mut self, n: &Node) -> Result<Rt, Problem> {
        let a = self.rt_input(n, 0)?;
        let b = self.rt_input(n, 1)?;
        let fmod = n.int("fmod", 0) != 0;
        let shape = broadcast(&a.shape, &b.shape)?;
        // The remainder of truncated division (C's fmod; integers divide truncating)...
        let q = self.binary("div", &a, &b)?;
        let q = if a.dtype.is_float() {
            let zero = self.scalar(a.dtype, 0.0);
            let neg = self.compare("lt", &q, &zero)?;
            let c = self.unary("ceil", &q);
            let f = self.unary("floor", &q);
            self.emit("where", &[&neg, &c, &f], json!({}), a.dtype, shape.clone())
        } else {
            q
        };
        let bq = self.binary("mul", &b, &q)?;
        let mut r = self.binary("sub", &a, &bq)?;
        if a.dtype.is_float() {
            // fmod(a, ±inf) is a (the product above is inf·0).
            let inf = self.scalar(a.dtype, f64::INFINITY);
            let mag = self.unary("abs", &b);
            let infinite = self.compare("eq", &mag, &inf)?;
            r = self.emit("where", &[&infinite, &a, &r], json!({}), a.dtype, shape.clone());
        }
        if fmod || !a.dtype.is_signed() {
            return Ok(r);
        }
        // ...moved by the divisor where its sign differs from the divisor's (Python's %).
        let zero = self.scalar(a.dtype, 0.0);
        let rneg = self.compare("lt", &r, &zero)?;
        let bneg = self.compare("lt", &b, &zero)?;
        let differ = self.compare("ne", &rneg, &bneg)?;
        let nonzero = self.compare("ne", &r, &zero)?;
        let fix = self.binary("and", &differ, &nonzero)?;
        let rb = self.binary("add", &r, &b)?;
        Ok(self.emit("where", &[&fix, &rb, &r], json!({}), a.dtype, shape))
    }

    /// Running sums along an axis as a product with a triangular matrix of ones
    /// (`exclusive` leaves the diagonal out; `reverse` sums from the end).
    pub(super) fn cumsum(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let r = x.shape.len();
        let a = match self.const_input(n, 1, "axis")?.and_then(|k| k.ints()).as_deref() {
            Some([a]) => axis(*a, r)?,
            _ => return bad("input 1 (axis) must be one integer"),
        };
        let (exclusive, reverse) = (n.int("exclusive", 0) != 0, n.int("reverse", 0) != 0);
        let len = concrete(&x.shape[a..a + 1])?[0];
        if len > 4096 {
            return unsupported(format!("CumSum over {len} elements (the triangular product grows as the square)"));
        }
        // y[j] = Σ_i x[i]·T[i][j]: T[i][j] = 1 where i ≤ j (i < j exclusive; reversed: i ≥ j, i > j).
        let t: Vec<Elem> = (0..len * len)
            .map(|k| {
                let (i, j) = (k / len, k % len);
                let keep = match (reverse, exclusive) {
                    (false, false) => i <= j,
                    (false, true) => i < j,
                    (true, false) => i >= j,
                    (true, true) => i > j,
                };
                Elem::Int(keep as i64)
            })
            .collect();
        let t = Known::new(x.dtype, vec![len, len], t);
        let t = self.write_known(&t, &self.hint.clone())?;
        let mut perm: Vec<usize> = (0..r).filter(|&i| i != a).collect();
        perm.push(a);
        let moved = if a + 1 == r {
            x.clone()
        } else {
            let shape = perm.iter().map(|&p| x.shape[p].clone()).collect();
            self.emit("transpose", &[&x], json!({"perm": perm}), x.dtype, shape)
        };
        let s = self.emit(
            "dot",
            &[&moved, &t],
            json!({"lhs_contract": [r - 1], "rhs_contract": [0]}),
            x.dtype,
            moved.shape.clone(),
        );
        if a + 1 == r {
            return Ok(s);
        }
        let mut back = vec![0; r];
        for (i, &p) in perm.iter().enumerate() {
            back[p] = i;
        }
        Ok(self.emit("transpose", &[&s], json!({"perm": back}), x.dtype, x.shape.clone()))
    }

    /// Indices `i` with the negative ones counted from the end of an axis of `len`.
    fn counted_from_end(&mut self, i: &Rt, len: u64) -> Result<Rt, Problem> {
        let zero = self.scalar(i.dtype, 0.0);
        let neg = self.compare("lt", i, &zero)?;
        let d = self.scalar(i.dtype, len as f64);
        let wrapped = self.binary("add", i, &d)?;
        Ok(self.emit("where", &[&neg, &wrapped, i], json!({}), i.dtype, i.shape.clone()))
    }

    /// Element `k` of a 1-D value, as a scalar.
    fn element(&mut self, v: &Rt, k: u64) -> Result<Rt, Problem> {
        let attrs = json!({"starts": [k], "ends": [k + 1], "axes": [0]});
        let e = self.emit("slice", &[v], attrs, v.dtype, vec![Dim::size(1)]);
        self.reshape(&e, vec![])
    }

    /// `values[1]` where the iota along `axis` equals the index (negative
    /// indices count from `depth`), `values[0]` elsewhere.
    pub(super) fn one_hot(&mut self, n: &Node) -> Result<Rt, Problem> {
        let idx = self.rt_input(n, 0)?;
        let depth = match self.const_input(n, 1, "depth")?.and_then(|k| k.floats()).as_deref() {
            Some([d]) if *d >= 1.0 => *d as u64,
            _ => return bad("input 1 (depth) must be one positive number"),
        };
        let values = self.rt_input(n, 2)?;
        let r = idx.shape.len() + 1;
        let a = axis(n.int("axis", -1), r)?;
        let i = self.cast(&idx, DType::I64);
        let i = self.counted_from_end(&i, depth)?;
        let mut shape = i.shape.clone();
        shape.insert(a, Dim::size(1));
        let i = self.reshape(&i, shape.clone())?;
        shape[a] = Dim::size(depth);
        let dims = dims_json(&shape)?;
        let iota = self.emit("iota", &[], json!({"dtype": "i64", "shape": dims, "axis": a}), DType::I64, shape);
        let hit = self.compare("eq", &iota, &i)?;
        let (off, on) = (self.element(&values, 0)?, self.element(&values, 1)?);
        Ok(self.emit("where", &[&hit, &on, &off], json!({}), values.dtype, hit.shape.clone()))
    }

    /// `data` at `indices` along `axis`, elementwise (NumPy's `take_along_axis`):
    /// a gather from the flattened data at each element's flat position.
    pub(super) fn gather_elements(&mut self, n: &Node) -> Result<Rt, Problem> {
        let data = self.rt_input(n, 0)?;
        let idx = self.rt_input(n, 1)?;
        let a = axis(n.int("axis", 0), data.shape.len())?;
        let (flat_data, flat) = self.flat_positions(&data, &idx, a)?;
        Ok(self.emit("gather", &[&flat_data, &flat], json!({"axis": 0}), data.dtype, idx.shape.clone()))
    }

    /// ScatterElements (and Scatter before it): `updates` written (`none`) or
    /// added (`add`) into `data` at `indices` along `axis`, elementwise, as a
    /// scatter_add into the flattened data.
    pub(super) fn scatter_elements(&mut self, n: &Node) -> Result<Rt, Problem> {
        let data = self.rt_input(n, 0)?;
        let idx = self.rt_input(n, 1)?;
        let updates = self.rt_input(n, 2)?;
        if data.dtype == DType::Bool || updates.dtype != data.dtype {
            return unsupported(format!("ScatterElements of {} updates into {}", updates.dtype, data.dtype));
        }
        let a = axis(n.int("axis", 0), data.shape.len())?;
        let (flat_data, flat) = self.flat_positions(&data, &idx, a)?;
        let m = Dim::size(concrete(&idx.shape)?.iter().product());
        let flat = self.reshape(&flat, vec![m.clone()])?;
        let upd = self.reshape(&updates, vec![m])?;
        let y = self.scatter_into(&flat_data, &flat, &upd, &n.string("reduction", "none"), "ScatterElements")?;
        self.reshape(&y, data.shape.clone())
    }

    /// `into` with each slice of `updates` (indexed as a gather of `into`
    /// along axis 0 at `at`) written (`reduction` none) or added (add).
    fn scatter_into(&mut self, into: &Rt, at: &Rt, updates: &Rt, reduction: &str, op: &str) -> Result<Rt, Problem> {
        let zero = self.scalar(into.dtype, 0.0);
        let zeros = self.emit(
            "broadcast_to",
            &[&zero],
            json!({"shape": dims_json(&into.shape)?}),
            into.dtype,
            into.shape.clone(),
        );
        match reduction {
            "add" => Ok(self.scatter_flat(into, at, updates)),
            "none" => {
                // Written where some update lands (counted by scattering ones), kept elsewhere.
                let added = self.scatter_flat(&zeros, at, updates);
                let one_ = self.scalar(into.dtype, 1.0);
                let shape = dims_json(&updates.shape)?;
                let ones =
                    self.emit("broadcast_to", &[&one_], json!({"shape": shape}), into.dtype, updates.shape.clone());
                let count = self.scatter_flat(&zeros, at, &ones);
                let hit = self.compare("gt", &count, &zero)?;
                Ok(self.emit("where", &[&hit, &added, into], json!({}), into.dtype, into.shape.clone()))
            }
            r => unsupported(format!("{op} with reduction `{r}`")),
        }
    }

    /// GatherND: the slices of `data` the last axis of `indices` addresses
    /// (after `batch_dims` leading dimensions both share), as a gather of
    /// `data`'s rows at their positions.
    pub(super) fn gather_nd(&mut self, n: &Node) -> Result<Rt, Problem> {
        let data = self.rt_input(n, 0)?;
        let idx = self.rt_input(n, 1)?;
        let batch = n.int("batch_dims", 0).max(0) as usize;
        let (rows, at) = self.nd_positions(&data, &idx, batch)?;
        let mut shape = at.shape.clone();
        shape.extend_from_slice(&rows.shape[1..]);
        Ok(self.emit("gather", &[&rows, &at], json!({"axis": 0}), data.dtype, shape))
    }

    /// ScatterND: `updates` written (reduction none) or added (add) at the
    /// slices of `data` the last axis of `indices` addresses.
    pub(super) fn scatter_nd(&mut self, n: &Node) -> Result<Rt, Problem> {
        let data = self.rt_input(n, 0)?;
        let idx = self.rt_input(n, 1)?;
        let updates = self.rt_input(n, 2)?;
        if data.dtype == DType::Bool || updates.dtype != data.dtype {
            return unsupported(format!("ScatterND of {} updates into {}", updates.dtype, data.dtype));
        }
        let (rows, at) = self.nd_positions(&data, &idx, 0)?;
        let mut shape = at.shape.clone();
        shape.extend_from_slice(&rows.shape[1..]);
        let upd = self.reshape(&updates, shape)?;
        let y = self.scatter_into(&rows, &at, &upd, &n.string("reduction", "none"), "ScatterND")?;
        self.reshape(&y, data.shape.clone())
    }

    /// `data` as rows (its first `batch + m` dimensions flattened into one,
    /// `m` the last dimension of `indices`) and each index tuple's row
    /// (negative indices from the dimension's end), of `indices`' shape
    /// without its last dimension.
    fn nd_positions(&mut self, data: &Rt, idx: &Rt, batch: usize) -> Result<(Rt, Rt), Problem> {
        let dd = concrete(&data.shape)?;
        let id = concrete(&idx.shape)?;
        let q = id.len();
        let m = id.last().copied().unwrap_or(0) as usize;
        if q == 0 || m == 0 || batch + m > dd.len() || batch >= q || id[..batch] != dd[..batch] {
            return bad(format!("indices {id:?} (batch_dims {batch}) do not address slices of data {dd:?}"));
        }
        let i = self.cast(idx, DType::I64);
        let lead: Vec<Dim> = idx.shape[..q - 1].to_vec();
        let addressed = &dd[..batch + m];
        let stride = |k: usize| addressed[k + 1..].iter().product::<u64>();
        let mut at: Option<Rt> = None;
        let mut add = |this: &mut Self, term: Rt| -> Result<(), Problem> {
            at = Some(match at.take() {
                Some(a) => this.binary("add", &a, &term)?,
                None => term,
            });
            Ok(())
        };
        // The batch dimensions: each index tuple stays in its own batch element.
        for k in 0..batch {
            let iota = self.emit(
                "iota",
                &[],
                json!({"dtype": "i64", "shape": &id[..q - 1], "axis": k}),
                DType::I64,
                lead.clone(),
            );
            let s = self.scalar(DType::I64, stride(k) as f64);
            let term = self.binary("mul", &iota, &s)?;
            add(self, term)?;
        }
        for j in 0..m {
            let mut one = idx.shape.clone();
            one[q - 1] = Dim::size(1);
            let part =
                self.emit("slice", &[&i], json!({"starts": [j], "ends": [j + 1], "axes": [q - 1]}), DType::I64, one);
            let part = self.reshape(&part, lead.clone())?;
            let part = self.counted_from_end(&part, dd[batch + j])?;
            let s = self.scalar(DType::I64, stride(batch + j) as f64);
            let term = self.binary("mul", &part, &s)?;
            add(self, term)?;
        }
        let mut rows = vec![Dim::size(addressed.iter().product())];
        rows.extend_from_slice(&data.shape[batch + m..]);
        let rows = self.reshape(data, rows)?;
        Ok((rows, at.expect("at least one index")))
    }

    /// `into` (1-D) with `updates` added at the flat positions `flat`.
    fn scatter_flat(&mut self, into: &Rt, flat: &Rt, updates: &Rt) -> Rt {
        self.emit("scatter_add", &[into, flat, updates], json!({"axis": 0}), into.dtype, into.shape.clone())
    }

    /// `data` flattened, and the flat position in it of each element of
    /// `indices` taken along `axis` (negative indices from the axis's end).
    pub(super) fn flat_positions(&mut self, data: &Rt, idx: &Rt, a: usize) -> Result<(Rt, Rt), Problem> {
        let r = data.shape.len();
        let dd = concrete(&data.shape)?;
        let id = concrete(&idx.shape)?;
        if id.len() != r {
            return bad(format!("indices of rank {} for data of rank {r}", id.len()));
        }
        let i = self.cast(idx, DType::I64);
        let mut flat = self.counted_from_end(&i, dd[a])?;
        let stride = |k: usize| dd[k + 1..].iter().product::<u64>();
        let s = self.scalar(DType::I64, stride(a) as f64);
        flat = self.binary("mul", &flat, &s)?;
        for k in (0..r).filter(|&k| k != a) {
            let iota =
                self.emit("iota", &[], json!({"dtype": "i64", "shape": id, "axis": k}), DType::I64, i.shape.clone());
            let s = self.scalar(DType::I64, stride(k) as f64);
            let off = self.binary("mul", &iota, &s)?;
            flat = self.binary("add", &flat, &off)?;
        }
        let total = dd.iter().product::<u64>();
        let flat_data = self.reshape(data, vec![Dim::size(total)])?;
        Ok((flat_data, flat))
    }

    /// The upper (or lower) triangle of the last two dimensions from diagonal `k`.
    pub(super) fn trilu(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let r = x.shape.len();
        if r < 2 {
            return bad("Trilu needs at least 2 dimensions");
        }
        let k = match self.const_input(n, 1, "k")? {
            Some(k) => k.ints().and_then(|v| v.first().copied()).unwrap_or(0),
            None => 0,
        };
        let upper = n.int("upper", 1) != 0;
        let nm = concrete(&x.shape[r - 2..])?;
        let shape = vec![Dim::size(nm[0]), Dim::size(nm[1])];
        let rows = self.emit("iota", &[], json!({"dtype": "i64", "shape": nm, "axis": 0}), DType::I64, shape.clone());
        let cols = self.emit("iota", &[], json!({"dtype": "i64", "shape": nm, "axis": 1}), DType::I64, shape);
        let diff = self.binary("sub", &cols, &rows)?;
        let kk = self.scalar(DType::I64, k as f64);
        let keep = self.compare(if upper { "ge" } else { "le" }, &diff, &kk)?;
        let zero = self.scalar(x.dtype, 0.0);
        Ok(self.emit("where", &[&keep, &x, &zero], json!({}), x.dtype, x.shape.clone()))
    }

    /// 1 at the first maximum along the axis, 0 elsewhere.
    pub(super) fn hardmax(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let r = x.shape.len();
        let (src, a) = if n.opset >= 13 {
            (x.clone(), axis(n.int("axis", -1), r)?)
        } else {
            let a = axis(n.int("axis", 1), r.max(1))?;
            let (l, rgt) = x.shape.split_at(a);
            (self.reshape(&x, vec![product(l), product(rgt)])?, 1)
        };
        let mut kshape = src.shape.clone();
        kshape[a] = Dim::size(1);
        let i = self.emit("argmax", &[&src], json!({"axis": a, "keepdims": true}), DType::I64, kshape);
        let dims = concrete(&src.shape)?;
        let iota =
            self.emit("iota", &[], json!({"dtype": "i64", "shape": dims, "axis": a}), DType::I64, src.shape.clone());
        let hit = self.compare("eq", &iota, &i)?;
        let y = self.cast(&hit, x.dtype);
        self.reshape(&y, x.shape.clone())
    }

    /// TopK: the `k` largest (or smallest) elements along `axis` and their
    /// indices, from a stable sort's permutation (equal elements in index
    /// order, as ONNX says); `k` an attribute (opset 1) or an input known at import.
    pub(super) fn top_k(&mut self, n: &Node) -> Res {
        let x = self.rt_input(n, 0)?;
        let a = axis(n.int("axis", -1), x.shape.len())?;
        let k = if n.opset >= 10 {
            match self.const_input(n, 1, "K")?.and_then(|k| k.ints()).as_deref() {
                Some([k]) => *k,
                _ => return bad("input 1 (K) holds one integer"),
            }
        } else {
            n.int("k", 0)
        };
        let largest = n.opset < 11 || n.int("largest", 1) != 0;
        // Sorted or not (`sorted`), the k elements come in sorted order.
        let _sorted_or_not = n.has("sorted");
        let d = concrete(&x.shape[a..a + 1])?[0];
        if k < 0 || k as u64 > d {
            return bad(format!("K = {k} for an axis of {d} elements"));
        }
        let order = self.emit("argsort", &[&x], json!({"axis": a, "descending": largest}), DType::I64, x.shape.clone());
        let mut shape = x.shape.clone();
        shape[a] = Dim::size(k as u64);
        let idx = self.emit("slice", &[&order], json!({"starts": [0], "ends": [k], "axes": [a]}), DType::I64, shape);
        let (flat_data, flat) = self.flat_positions(&x, &idx, a)?;
        let values = self.emit("gather", &[&flat_data, &flat], json!({"axis": 0}), x.dtype, idx.shape.clone());
        Ok(vec![Val::Rt(values), Val::Rt(idx)])
    }

    /// `x / sqrt(mean(x², axes axis..) + ε) · scale`, computed in f32 for 16-bit inputs.
    pub(super) fn rms_norm(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let scale = self.rt_input(n, 1)?;
        n.has("stash_type");
        let a = axis(n.int("axis", -1), x.shape.len())?;
        let eps = n.float("epsilon", 1e-5);
        let wide = if matches!(x.dtype, DType::F16 | DType::BF16) { DType::F32 } else { x.dtype };
        let xf = self.cast(&x, wide);
        let sq = self.binary("mul", &xf, &xf)?;
        let axes: Vec<usize> = (a..x.shape.len()).collect();
        let m = self.reduce("reduce_mean", &sq, &axes, true);
        let e = self.scalar(wide, eps);
        let me = self.binary("add", &m, &e)?;
        let inv = self.unary("rsqrt", &me);
        let y = self.binary("mul", &xf, &inv)?;
        let y = self.cast(&y, x.dtype);
        self.binary("mul", &y, &scale)
    }

    pub(super) fn batch_norm(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        if n.int("training_mode", 0) != 0 || n.proto.output.iter().skip(1).any(|o| !o.is_empty()) {
            return unsupported("BatchNormalization in training mode");
        }
        if n.opset < 9 && n.int("spatial", 1) != 1 {
            return unsupported("spatial = 0");
        }
        n.has("momentum");
        n.has("is_test");
        let eps = n.float("epsilon", 1e-5);
        let r = x.shape.len();
        if r < 2 {
            return bad("BatchNormalization needs at least 2 dimensions");
        }
        let c = x.shape[1].clone();
        let mut pshape = vec![c];
        pshape.extend(std::iter::repeat_n(Dim::size(1), r - 2));
        let mut p = Vec::new();
        for i in 1..5 {
            let v = self.rt_input(n, i)?;
            p.push(self.reshape(&v, pshape.clone())?);
        }
        let e = self.scalar(x.dtype, eps);
        let ve = self.binary("add", &p[3], &e)?;
        let inv = self.unary("rsqrt", &ve);
        let a = self.binary("mul", &p[0], &inv)?;
        let xm = self.binary("sub", &x, &p[2])?;
        let y = self.binary("mul", &xm, &a)?;
        self.binary("add", &y, &p[1])
    }

    /// `(x - mean) · rsqrt(var + ε)` over `axes` (kept), with the mean and rsqrt.
    fn standardized(&mut self, x: &Rt, axes: &[usize], eps: f64) -> Result<(Rt, Rt, Rt), Problem> {
        let mean = self.reduce("reduce_mean", x, axes, true);
        let d = self.binary("sub", x, &mean)?;
        let d2 = self.binary("mul", &d, &d)?;
        let var = self.reduce("reduce_mean", &d2, axes, true);
        let e = self.scalar(x.dtype, eps);
        let ve = self.binary("add", &var, &e)?;
        let inv = self.unary("rsqrt", &ve);
        let y = self.binary("mul", &d, &inv)?;
        Ok((y, mean, inv))
    }

    /// Each channel of each example normalised over its spatial positions, then scaled and shifted per channel.
    pub(super) fn instance_norm(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let r = x.shape.len();
        if r < 3 {
            return bad("InstanceNormalization needs at least 3 dimensions");
        }
        let eps = n.float("epsilon", 1e-5);
        let axes: Vec<usize> = (2..r).collect();
        let (y, _, _) = self.standardized(&x, &axes, eps)?;
        let mut per_channel = vec![x.shape[1].clone()];
        per_channel.extend(std::iter::repeat_n(Dim::size(1), r - 2));
        let scale = self.rt_input(n, 1)?;
        let scale = self.reshape(&scale, per_channel.clone())?;
        let bias = self.rt_input(n, 2)?;
        let bias = self.reshape(&bias, per_channel)?;
        let y = self.binary("mul", &y, &scale)?;
        self.binary("add", &y, &bias)
    }

    pub(super) fn lrn(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let size = n.int("size", 0);
        if size < 1 || x.shape.len() < 3 {
            return bad(format!("size {size} (expected ≥ 1) over rank {}", x.shape.len()));
        }
        let (alpha, beta, bias) = (n.float("alpha", 1e-4), n.float("beta", 0.75), n.float("bias", 1.0));
        let c = concrete(&x.shape[1..2])?[0];
        let sq = self.binary("mul", &x, &x)?;
        let lo = (size - 1) / 2;
        let hi = size - 1 - lo;
        let r = x.shape.len();
        let mut low = vec![0i64; r];
        let mut high = vec![0i64; r];
        low[1] = lo;
        high[1] = hi;
        let mut ps = x.shape.clone();
        ps[1] = Dim::size(c + size as u64 - 1);
        let padded = self.emit("pad", &[&sq], json!({"low": low, "high": high, "value": 0}), x.dtype, ps);
        let mut sum: Option<Rt> = None;
        for k in 0..size as u64 {
            let s = self.emit(
                "slice",
                &[&padded],
                json!({"starts": [k], "ends": [k + c], "axes": [1]}),
                x.dtype,
                x.shape.clone(),
            );
            sum = Some(match sum {
                None => s,
                Some(acc) => self.binary("add", &acc, &s)?,
            });
        }
        let sum = sum.expect("size ≥ 1");
        let a = self.scalar(x.dtype, alpha / size as f64);
        let b = self.scalar(x.dtype, bias);
        let scaled = self.binary("mul", &sum, &a)?;
        let base = self.binary("add", &scaled, &b)?;
        let e = self.scalar(x.dtype, beta);
        let d = self.binary("pow", &base, &e)?;
        self.binary("div", &x, &d)
    }

    pub(super) fn layer_norm(&mut self, n: &Node) -> Res {
        let x = self.rt_input(n, 0)?;
        let a = axis(n.int("axis", -1), x.shape.len())?;
        let eps = n.float("epsilon", 1e-5);
        let scale = self.rt_input(n, 1)?;
        let bias = self.optional_rt(n, 2)?;
        if n.proto.output.iter().skip(1).any(|o| !o.is_empty()) {
            return self.layer_norm_stats(n, &x, a, eps, &scale, bias.as_ref());
        }
        n.has("stash_type");
        let trailing = &x.shape[a..];
        let exact = scale.shape == trailing && bias.as_ref().is_none_or(|b| b.shape == trailing);
        if exact {
            let mut ins = vec![&x, &scale];
            if let Some(b) = &bias {
                ins.push(b);
            }
            return Ok(vec![Val::Rt(self.emit(
                "layer_norm",
                &ins,
                json!({"axis": a, "epsilon": eps}),
                x.dtype,
                x.shape.clone(),
            ))]);
        }
        let y = self.emit("layer_norm", &[&x], json!({"axis": a, "epsilon": eps}), x.dtype, x.shape.clone());
        let mut y = self.binary("mul", &y, &scale)?;
        if let Some(b) = &bias {
            y = self.binary("add", &y, b)?;
        }
        Ok(vec![Val::Rt(y)])
    }

    /// LayerNormalization spelled out, with its Mean and InvStdDev outputs
    /// (in the stash type, f32 by default).
    pub(super) fn layer_norm_stats(
        &mut self,
        n: &Node,
        x: &Rt,
        a: usize,
        eps: f64,
        scale: &Rt,
        bias: Option<&Rt>,
    ) -> Res {
        let stash = match n.int("stash_type", 1) {
            1 => DType::F32,
            t => super::tensor::dtype(t as i32).or_else(|name| unsupported(format!("stash_type {name}")))?,
        };
        let xf = self.cast(x, stash);
        let axes: Vec<usize> = (a..x.shape.len()).collect();
        let (normed, mean, inv) = self.standardized(&xf, &axes, eps)?;
        let normed = self.cast(&normed, x.dtype);
        let mut y = self.binary("mul", &normed, scale)?;
        if let Some(b) = bias {
            y = self.binary("add", &y, b)?;
        }
        Ok(vec![Val::Rt(y), Val::Rt(mean), Val::Rt(inv)])
    }

    /// The axes of a Reduce*/Squeeze/Unsqueeze: an attribute before the opset
    /// that made them input `input`, else that input. `None`: not given.
    pub(super) fn axes_of(&self, n: &Node, input: usize) -> Result<Option<Vec<i64>>, Problem> {
        let as_input = match n.proto.op_type.as_str() {
            "ReduceSum" | "Squeeze" | "Unsqueeze" => n.opset >= 13,
            _ => n.opset >= 18,
        };
        if as_input {
            match self.const_input(n, input, "axes")? {
                None => Ok(None),
                Some(k) => Ok(Some(k.ints().ok_or(Problem::Invalid("axes are symbolic".into()))?)),
            }
        } else {
            Ok(n.ints("axes"))
        }
    }

    pub(super) fn reduction(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let r = x.shape.len();
        let keep = n.int("keepdims", 1) != 0;
        let noop = n.int("noop_with_empty_axes", 0) != 0;
        let axes = self.axes_of(n, 1)?;
        let axes: Vec<usize> = match axes {
            Some(a) if !a.is_empty() => {
                let mut v = a.iter().map(|&a| axis(a, r)).collect::<Result<Vec<_>, _>>()?;
                v.sort_unstable();
                v.dedup();
                v
            }
            _ if noop => return Ok(x),
            _ => (0..r).collect(),
        };
        let op = n.proto.op_type.as_str();
        let src = match op {
            "ReduceL1" => self.unary("abs", &x),
            "ReduceL2" | "ReduceSumSquare" => self.binary("mul", &x, &x)?,
            "ReduceLogSumExp" => self.unary("exp", &x),
            _ => x.clone(),
        };
        if x.dtype == DType::Bool {
            // max is any, min is all: over 0/1 as i32.
            let kind = match op {
                "ReduceMax" => "reduce_max",
                "ReduceMin" => "reduce_min",
                _ => return unsupported(format!("{op} of booleans")),
            };
            let i = self.cast(&x, DType::I32);
            let r = self.reduce(kind, &i, &axes, keep);
            // An empty max is i32's minimum: false, as any() of nothing.
            let zero = self.scalar(DType::I32, 0.0);
            return self.compare("gt", &r, &zero);
        }
        let kind = match op {
            "ReduceMean" => "reduce_mean",
            "ReduceMax" => "reduce_max",
            "ReduceMin" => "reduce_min",
            _ => "reduce_sum",
        };
        let y = self.reduce(kind, &src, &axes, keep);
        Ok(match op {
            "ReduceL2" => self.unary("sqrt", &y),
            "ReduceLogSum" | "ReduceLogSumExp" => self.unary("log", &y),
            _ => y,
        })
    }

    pub(super) fn split(&mut self, n: &Node) -> Res {
        let x = self.rt_input(n, 0)?;
        let r = x.shape.len();
        let a = axis(n.int("axis", 0), r)?;
        let dim = concrete(&x.shape[a..a + 1])?[0];
        let outputs = n.proto.output.len() as u64;
        let sizes: Vec<u64> =
            match if n.opset >= 13 { self.const_input(n, 1, "split")?.and_then(|k| k.ints()) } else { n.ints("split") }
            {
                Some(s) => s.iter().map(|&v| v.max(0) as u64).collect(),
                None => {
                    let parts = if n.opset >= 18 { n.int("num_outputs", outputs as i64) as u64 } else { outputs };
                    let each = dim.div_ceil(parts.max(1));
                    (0..parts).map(|i| each.min(dim.saturating_sub(i * each))).collect()
                }
            };
        if sizes.iter().sum::<u64>() != dim {
            return bad(format!("split sizes {sizes:?} do not add up to {dim}"));
        }
        let mut out = Vec::new();
        let mut start = 0;
        for s in sizes {
            let mut shape = x.shape.clone();
            shape[a] = Dim::size(s);
            let v =
                self.emit("slice", &[&x], json!({"starts": [start], "ends": [start + s], "axes": [a]}), x.dtype, shape);
            out.push(Val::Rt(v));
            start += s;
        }
        Ok(out)
    }

    pub(super) fn slice(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let r = x.shape.len();
        if n.opset >= 10 {
            if let Some(y) = self.symbolic_slice(n, &x)? {
                return Ok(y);
            }
        }
        let get = |i: usize| -> Result<Option<Vec<i64>>, Problem> {
            match self.const_input(n, i, "slice bounds")? {
                None => Ok(None),
                Some(k) => Ok(Some(k.ints().ok_or(Problem::Unsupported("symbolic slice bounds".into()))?)),
            }
        };
        let (starts, ends, axes, steps) = if n.opset < 10 {
            (n.ints("starts").unwrap_or_default(), n.ints("ends").unwrap_or_default(), n.ints("axes"), None)
        } else {
            (get(1)?.unwrap_or_default(), get(2)?.unwrap_or_default(), get(3)?, get(4)?)
        };
        let axes: Vec<usize> = match axes {
            Some(a) => a.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?,
            None => (0..starts.len()).collect(),
        };
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return bad("starts, ends, axes and steps differ in length");
        }
        let mut shape = x.shape.clone();
        let mut st = Vec::new();
        let mut en = Vec::new();
        for (k, &a) in axes.iter().enumerate() {
            if steps[k] < 1 {
                return unsupported(format!("step {} (xlac slices forward)", steps[k]));
            }
            let d = match x.shape[a].as_size() {
                Some(d) => d as i64,
                None if starts[k] == 0 && ends[k] >= i32::MAX as i64 && steps[k] == 1 => {
                    st.push(0);
                    en.push(i64::MAX);
                    continue;
                }
                None => return unsupported(need_binding(&x.shape)),
            };
            let clamp = |v: i64| if v < 0 { (v + d).max(0) } else { v.min(d) };
            let (s, e) = (clamp(starts[k]), clamp(ends[k]));
            shape[a] = Dim::size(if e > s { ((e - s) as u64).div_ceil(steps[k] as u64) } else { 0 });
            st.push(s);
            en.push(e.max(s));
        }
        let attrs = json!({"starts": st, "ends": en, "axes": axes, "steps": steps});
        Ok(self.emit("slice", &[&x], attrs, x.dtype, shape))
    }

    /// `x[..., 0:n, ...]` along one axis for a symbolic `n` (a prefix as long
    /// as the sequence: PyTorch's `position_ids[:, :seq]`), as a gather of
    /// `iota(n)`; `None` when the bounds are not of that form.
    pub(super) fn symbolic_slice(&mut self, n: &Node, x: &Rt) -> Result<Option<Rt>, Problem> {
        let elems = |i: usize| -> Result<Option<Vec<Elem>>, Problem> {
            Ok(self.const_input(n, i, "slice bounds")?.map(|k| k.elems()))
        };
        let (Some(starts), Some(ends)) = (elems(1)?, elems(2)?) else { return Ok(None) };
        let Some(Elem::Sym(len)) = ends.first().filter(|_| ends.len() == 1).cloned() else { return Ok(None) };
        let step_ok = elems(4)?.is_none_or(|s| s == [Elem::Int(1)]);
        if starts != [Elem::Int(0)] || !step_ok {
            return Ok(None);
        }
        let a = match elems(3)? {
            Some(a) => match a.as_slice() {
                [Elem::Int(a)] => axis(*a, x.shape.len())?,
                _ => return Ok(None),
            },
            None => 0,
        };
        let shape = dims_json(std::slice::from_ref(&len))?;
        let idx =
            self.emit("iota", &[], json!({"dtype": "i64", "shape": shape, "axis": 0}), DType::I64, vec![len.clone()]);
        let mut out = x.shape.clone();
        out[a] = len;
        Ok(Some(self.emit("gather", &[x, &idx], json!({"axis": a}), x.dtype, out)))
    }

    pub(super) fn gather(&mut self, n: &Node) -> Result<Rt, Problem> {
        let data = self.rt_input(n, 0)?;
        let r = data.shape.len();
        let a = axis(n.int("axis", 0), r)?;
        let idx = match self.input(n, 1)? {
            Some(Val::Known(k)) => {
                // Negative indices count from the end (ONNX); xlac clamps them.
                let Some(v) = k.ints() else { return unsupported("symbolic indices") };
                let d = if v.iter().any(|&i| i < 0) { concrete(&data.shape[a..a + 1])?[0] as i64 } else { 0 };
                let fixed: Vec<Elem> = v.iter().map(|&i| Elem::Int(if i < 0 { i + d } else { i })).collect();
                let k2 = Known::new(DType::I64, k.shape.clone(), fixed);
                self.write_known(&k2, &format!("{}.indices", self.hint))?
            }
            Some(_) => {
                let i = self.rt_input(n, 1)?;
                match data.shape[a].as_size() {
                    Some(d) if i.dtype.is_signed() => self.counted_from_end(&i, d)?,
                    _ => i,
                }
            }
            None => return bad("input 1 (indices) is required"),
        };
        let mut shape: Vec<Dim> = data.shape[..a].to_vec();
        shape.extend(idx.shape.iter().cloned());
        shape.extend(data.shape[a + 1..].iter().cloned());
        Ok(self.emit("gather", &[&data, &idx], json!({"axis": a}), data.dtype, shape))
    }

    pub(super) fn pad(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let r = x.shape.len();
        let mode = n.string("mode", "constant");
        if !matches!(mode.as_str(), "constant" | "edge" | "reflect" | "wrap") {
            return bad(format!("mode `{mode}`"));
        }
        let (pads, value) = if n.opset < 11 {
            (n.ints("pads").unwrap_or_default(), n.float("value", 0.0))
        } else {
            let Some(p) = self.const_input(n, 1, "pads")?.and_then(|k| k.ints()) else {
                return bad("input 1 (pads) is required");
            };
            let v = match self.const_input(n, 2, "the pad value")? {
                None => 0.0,
                Some(k) => k.floats().and_then(|f| f.first().copied()).unwrap_or(0.0),
            };
            (p, v)
        };
        let axes: Vec<usize> = match self.const_input(n, 3, "axes")? {
            Some(k) => k.ints().unwrap_or_default().iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?,
            None => (0..r).collect(),
        };
        if pads.len() != 2 * axes.len() {
            return bad(format!("{} pads for {} axes", pads.len(), axes.len()));
        }
        let mut low = vec![0i64; r];
        let mut high = vec![0i64; r];
        let mut shape = x.shape.clone();
        for (k, &a) in axes.iter().enumerate() {
            low[a] = pads[k];
            high[a] = pads[k + axes.len()];
            if low[a] != 0 || high[a] != 0 {
                let d = concrete(&x.shape[a..a + 1])?[0] as i64;
                shape[a] = Dim::size((d + low[a] + high[a]).max(0) as u64);
            }
        }
        if mode != "constant" {
            return self.pad_by_index(&x, &mode, &low, &high);
        }
        self.pad_constant(&x, &low, &high, value, shape)
    }

    /// `x` padded with `value` (cropped where a pad is negative) to `shape`.
    /// A value model.json cannot hold (±∞, NaN) is put where a padded ones
    /// tensor is zero.
    pub(super) fn pad_constant(
        &mut self,
        x: &Rt,
        low: &[i64],
        high: &[i64],
        value: f64,
        shape: Vec<Dim>,
    ) -> Result<Rt, Problem> {
        let attrs = |v: f64| json!({"low": low, "high": high, "value": v});
        if value.is_finite() {
            return Ok(self.emit("pad", &[x], attrs(value), x.dtype, shape));
        }
        let zeroed = self.emit("pad", &[x], attrs(0.0), x.dtype, shape.clone());
        let one = self.scalar(x.dtype, 1.0);
        let ones = self.emit("broadcast_to", &[&one], json!({"shape": dims_json(&x.shape)?}), x.dtype, x.shape.clone());
        let inside = self.emit("pad", &[&ones], attrs(0.0), x.dtype, shape.clone());
        let zero = self.scalar(x.dtype, 0.0);
        let outside = self.compare("eq", &inside, &zero)?;
        let v = self.scalar(x.dtype, value);
        Ok(self.emit("where", &[&outside, &v, &zeroed], json!({}), x.dtype, shape))
    }

    /// Edge, reflect and wrap padding: each padded axis gathered at indices
    /// that repeat the edge, mirror about it, or wrap around.
    pub(super) fn pad_by_index(&mut self, x: &Rt, mode: &str, low: &[i64], high: &[i64]) -> Result<Rt, Problem> {
        let mut y = x.clone();
        for a in 0..x.shape.len() {
            let (lo, hi) = (low[a], high[a]);
            if lo == 0 && hi == 0 {
                continue;
            }
            if lo < 0 || hi < 0 {
                return unsupported(format!("negative pads with mode `{mode}`"));
            }
            let d = concrete(&x.shape[a..a + 1])?[0] as i64;
            if d == 0 || mode == "reflect" && (lo >= d || hi >= d) {
                return bad(format!("{mode} padding of {lo} and {hi} over {d} elements"));
            }
            let index = |j: i64| -> i64 {
                match mode {
                    "edge" => j.clamp(0, d - 1),
                    "wrap" => j.rem_euclid(d),
                    _ if d == 1 => 0,
                    _ => {
                        let p = 2 * (d - 1);
                        let m = j.rem_euclid(p);
                        if m < d {
                            m
                        } else {
                            p - m
                        }
                    }
                }
            };
            let idx: Vec<Elem> = (-lo..d + hi).map(|j| Elem::Int(index(j))).collect();
            let k = Known::new(DType::I64, vec![idx.len() as u64], idx);
            let k = self.write_known(&k, &self.hint.clone())?;
            let mut shape = y.shape.clone();
            shape[a] = Dim::size((d + lo + hi) as u64);
            y = self.emit("gather", &[&y, &k], json!({"axis": a}), x.dtype, shape);
        }
        Ok(y)
    }

    // ---------------------------------------------------------------- folding
}

// -------------------------------------------------------------------- free helpers

impl Node<'_> {
    /// A float attribute when present.
    pub(super) fn attr_f(&self, name: &str) -> Option<f64> {
        self.has(name).then(|| self.float(name, 0.0))
    }
}

pub(super) fn cast_target(n: &Node) -> Result<DType, Problem> {
    let to = n.int("to", 0) as i32;
    super::tensor::dtype(to).or_else(|name| unsupported(format!("cast to {name}")))
}

/// The value of a `Constant` node.
pub(super) fn constant_value(n: &Node) -> Result<Known, Problem> {
    let p = n.proto;
    if let Some(t) = n.tensor("value") {
        return super::tensor::from_proto(t, std::path::Path::new(".")).map_err(|m| {
            if m.starts_with("unsupported") {
                Problem::Unsupported(m.trim_start_matches("unsupported: ").to_string())
            } else {
                Problem::Invalid(m)
            }
        });
    }
    if n.has("value_float") {
        return Ok(Known::scalar(DType::F32, Elem::Float(n.float("value_float", 0.0))));
    }
    if n.has("value_int") {
        return Ok(Known::scalar(DType::I64, Elem::Int(n.int("value_int", 0))));
    }
    if let Some(f) = n.floats("value_floats") {
        return Ok(Known::new(DType::F32, vec![f.len() as u64], f.iter().map(|&x| Elem::Float(x as f64)).collect()));
    }
    if let Some(i) = n.ints("value_ints") {
        return Ok(Known::new(DType::I64, vec![i.len() as u64], i.into_iter().map(Elem::Int).collect()));
    }
    let kinds: Vec<&str> = p.attribute.iter().map(|a| a.name.as_str()).collect();
    unsupported(format!("a Constant given as {}", kinds.join(", ")))
}

pub(super) fn constant_of_shape_value(n: &Node) -> Result<Known, Problem> {
    match n.tensor("value") {
        None => Ok(Known::scalar(DType::F32, Elem::Float(0.0))),
        Some(t) => {
            let k = super::tensor::from_proto(t, std::path::Path::new("."))
                .map_err(|m| Problem::Unsupported(m.trim_start_matches("unsupported: ").to_string()))?;
            Ok(Known::scalar(k.dtype, k.elems().first().cloned().unwrap_or(Elem::Int(0))))
        }
    }
}

/// NumPy broadcasting of two shapes.
pub(super) fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, Problem> {
    let r = a.len().max(b.len());
    let one = Dim::size(1);
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let x = if i + a.len() >= r { &a[i + a.len() - r] } else { &one };
        let y = if i + b.len() >= r { &b[i + b.len() - r] } else { &one };
        out.push(if x == y || *y == one {
            x.clone()
        } else if *x == one {
            y.clone()
        } else {
            return bad(format!("shapes {} and {} do not broadcast", show(a), show(b)));
        });
    }
    Ok(out)
}

pub(super) fn show(s: &[Dim]) -> String {
    format!("[{}]", s.iter().map(Dim::to_string).collect::<Vec<_>>().join(", "))
}

/// An axis in `0..rank` from ONNX's possibly negative one.
pub(super) fn axis(a: i64, rank: usize) -> Result<usize, Problem> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if (0..r).contains(&v) {
        Ok(v as usize)
    } else {
        bad(format!("axis {a} out of range for rank {rank}"))
    }
}

pub(super) fn need_binding(shape: &[Dim]) -> String {
    let mut syms: Vec<&str> = shape.iter().flat_map(|d| d.symbols().iter().map(String::as_str)).collect();
    syms.sort_unstable();
    syms.dedup();
    format!("a shape computed from symbols ({}); bind them (--bind NAME=SIZE)", syms.join(", "))
}

/// The sizes of `dims`, an error naming the symbols when one is not a size.
pub(super) fn concrete(dims: &[Dim]) -> Result<Vec<u64>, Problem> {
    dims.iter().map(Dim::as_size).collect::<Option<Vec<_>>>().ok_or_else(|| Problem::Unsupported(need_binding(dims)))
}

pub(super) fn dims_json(dims: &[Dim]) -> Result<Vec<serde_json::Value>, Problem> {
    dims.iter().map(|d| d.to_json().ok_or_else(|| Problem::Unsupported(need_binding(dims)))).collect()
}

/// Reshape's target: `0` copies the input's dimension (unless `allowzero`), `-1` is inferred.
pub(super) fn reshape_target(input: &[Dim], shape: &[Elem], allowzero: bool) -> Result<Vec<Dim>, Problem> {
    let mut out: Vec<Option<Dim>> = Vec::new();
    for (i, e) in shape.iter().enumerate() {
        out.push(match e {
            Elem::Int(0) if !allowzero => Some(
                input.get(i).cloned().ok_or(Problem::Invalid(format!("shape[{i}] is 0 beyond the input's rank")))?,
            ),
            Elem::Int(-1) => None,
            Elem::Int(v) if *v >= 0 => Some(Dim::size(*v as u64)),
            Elem::Sym(d) => Some(d.clone()),
            e => return bad(format!("shape[{i}] is {e:?}")),
        });
    }
    let holes = out.iter().filter(|d| d.is_none()).count();
    if holes > 1 {
        return bad("more than one -1 in the shape");
    }
    if holes == 1 {
        let known = product(&out.iter().flatten().cloned().collect::<Vec<_>>());
        let total = product(input);
        let Some(d) = total.div(&known) else {
            return unsupported(format!(
                "inferring -1: {total} elements over {known}; bind the symbols (--bind NAME=SIZE)"
            ));
        };
        out.iter_mut().filter(|d| d.is_none()).for_each(|h| *h = Some(d.clone()));
    }
    Ok(out.into_iter().flatten().collect())
}

pub(super) fn squeeze_target(op: &str, dims: &[Dim], axes: Option<Vec<i64>>) -> Result<Vec<Dim>, Problem> {
    let one = Dim::size(1);
    if op == "Squeeze" {
        let r = dims.len();
        let drop: Vec<usize> = match axes {
            Some(a) => a.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?,
            None => (0..r).filter(|&i| dims[i] == one).collect(),
        };
        for &a in &drop {
            if dims[a] != one {
                return bad(format!("squeezing axis {a} of size {}", dims[a]));
            }
        }
        return Ok(dims.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, d)| d.clone()).collect());
    }
    let Some(a) = axes else { return bad("Unsqueeze needs axes") };
    let r = dims.len() + a.len();
    let mut at: Vec<usize> = a.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?;
    at.sort_unstable();
    let mut out = Vec::new();
    let mut it = dims.iter();
    for i in 0..r {
        if at.contains(&i) {
            out.push(one.clone());
        } else {
            out.push(it.next().cloned().ok_or(Problem::Invalid("too many axes".into()))?);
        }
    }
    Ok(out)
}
