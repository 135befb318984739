//! Each ONNX operator's semantics in xlac ops, by opset where they changed.
//! Operators on values known at import (shape computations, constants) fold
//! instead of emitting nodes.

use serde_json::json;
use xlac_core::DType;

use super::tensor::{product, Dim, Elem, Known};
use super::{bad, foldable, unsupported, Importer, Node, Problem, Rt, Val};

/// The operators the importer translates (of the default domain).
pub(super) const SUPPORTED: &[&str] = &[
    "Abs",
    "Acos",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Cos",
    "Div",
    "Dropout",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
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
    "IsInf",
    "IsNaN",
    "CastLike",
    "Mod",
    "RMSNormalization",
    "Swish",
    "Trilu",
    "LRN",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "PRelu",
    "Pad",
    "Pow",
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
    "Selu",
    "Shape",
    "Sigmoid",
    "Sign",
    "Sin",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "ThresholdedRelu",
    "Tile",
    "Transpose",
    "Unsqueeze",
    "Where",
    "Xor",
];

type Res = Result<Vec<Val>, Problem>;

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
            "Acos" => unsupported("Acos"),
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
                n.has("saturate");
                n.has("round_mode");
                let to = cast_target(n)?;
                one(self.cast(&x, to))
            }
            "CastLike" => {
                let x = self.rt_input(n, 0)?;
                let like = self.rt_input(n, 1)?;
                n.has("saturate");
                n.has("round_mode");
                one(self.cast(&x, like.dtype))
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
            "Swish" => {
                let x = self.rt_input(n, 0)?;
                let a = self.scalar(x.dtype, n.float("alpha", 1.0));
                let ax = self.binary("mul", &x, &a)?;
                let s = self.unary("sigmoid", &ax);
                one(self.binary("mul", &x, &s)?)
            }
            "Mod" => self.modulo(n).and_then(one),
            "Trilu" => self.trilu(n).and_then(one),
            "Hardmax" => self.hardmax(n).and_then(one),
            "RMSNormalization" => self.rms_norm(n).and_then(one),
            "Clip" => {
                let x = self.rt_input(n, 0)?;
                let (lo, hi) = if n.opset < 11 {
                    let lo = n.attr_f("min").map(|v| self.scalar(x.dtype, v));
                    let hi = n.attr_f("max").map(|v| self.scalar(x.dtype, v));
                    (lo, hi)
                } else {
                    let lo = match self.input(n, 1)? {
                        Some(_) => Some(self.rt_input(n, 1)?),
                        None => None,
                    };
                    let hi = match self.input(n, 2)? {
                        Some(_) => Some(self.rt_input(n, 2)?),
                        None => None,
                    };
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
            "MaxPool" | "AveragePool" => self.pool(n),
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = self.rt_input(n, 0)?;
                let axes: Vec<usize> = (2..x.shape.len()).collect();
                let kind = if op == "GlobalAveragePool" { "reduce_mean" } else { "reduce_max" };
                one(self.reduce(kind, &x, &axes, true))
            }
            "BatchNormalization" => self.batch_norm(n).and_then(one),
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
        let k = Known::scalar(dtype, if dtype.is_float() { Elem::Float(v) } else { Elem::Int(v as i64) });
        let hint = self.hint.clone();
        self.write_known(&k, &hint).expect("a finite scalar is written inline")
    }

    fn unary(&mut self, op: &str, x: &Rt) -> Rt {
        self.emit(op, &[x], json!({}), x.dtype, x.shape.clone())
    }

    fn binary(&mut self, op: &str, a: &Rt, b: &Rt) -> Result<Rt, Problem> {
        if a.dtype != b.dtype {
            return bad(format!("operands of {op} are {} and {}", a.dtype, b.dtype));
        }
        let shape = broadcast(&a.shape, &b.shape)?;
        Ok(self.emit(op, &[a, b], json!({}), a.dtype, shape))
    }

    /// The two operands of an elementwise op; before opset 7, `broadcast = 1`
    /// aligns the second with the first from `axis` (default: the trailing dimensions).
    fn binary_operands(&mut self, n: &Node) -> Result<(Rt, Rt), Problem> {
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

    fn compare(&mut self, dir: &str, a: &Rt, b: &Rt) -> Result<Rt, Problem> {
        if a.dtype != b.dtype {
            return bad(format!("operands of a comparison are {} and {}", a.dtype, b.dtype));
        }
        let shape = broadcast(&a.shape, &b.shape)?;
        Ok(self.emit("compare", &[a, b], json!({"dir": dir}), DType::Bool, shape))
    }

    fn cast(&mut self, x: &Rt, to: DType) -> Rt {
        if x.dtype == to {
            return x.clone();
        }
        self.emit("cast", &[x], json!({"to": to.name()}), to, x.shape.clone())
    }

    /// `x < 0 ? neg : x`.
    fn select_negative(&mut self, x: &Rt, neg: &Rt) -> Result<Rt, Problem> {
        let zero = self.scalar(x.dtype, 0.0);
        let c = self.compare("lt", x, &zero)?;
        let shape = broadcast(&x.shape, &neg.shape)?;
        Ok(self.emit("where", &[&c, neg, x], json!({}), x.dtype, shape))
    }

    /// `x <= 0 ? neg : x` (`x < 0` unless `or_zero`).
    fn select_nonpositive(&mut self, x: &Rt, neg: &Rt, or_zero: bool) -> Result<Rt, Problem> {
        let zero = self.scalar(x.dtype, 0.0);
        let c = self.compare(if or_zero { "le" } else { "lt" }, x, &zero)?;
        Ok(self.emit("where", &[&c, neg, x], json!({}), x.dtype, x.shape.clone()))
    }

    fn reduce(&mut self, kind: &str, x: &Rt, axes: &[usize], keep: bool) -> Rt {
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

    fn matmul(&mut self, a: &Rt, b: &Rt) -> Result<Rt, Problem> {
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

    fn gemm(&mut self, n: &Node) -> Result<Rt, Problem> {
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

    fn transpose2(&mut self, x: &Rt) -> Rt {
        let shape = vec![x.shape[1].clone(), x.shape[0].clone()];
        self.emit("transpose", &[x], json!({"perm": [1, 0]}), x.dtype, shape)
    }

    fn softmax(&mut self, n: &Node) -> Result<Rt, Problem> {
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

    fn conv(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let w = self.rt_input(n, 1)?;
        let spatial = x.shape.len().saturating_sub(2);
        if !(1..=2).contains(&spatial) {
            return unsupported(format!("{spatial}-D convolution (xlac has 1-D and 2-D)"));
        }
        let kernel = concrete(&w.shape[2..])?;
        if n.ints("kernel_shape").is_some_and(|k| k.iter().map(|&v| v as u64).collect::<Vec<_>>() != kernel) {
            return bad("kernel_shape differs from the weight's shape");
        }
        let groups = n.int("group", 1);
        let w_ = window(n, &x.shape[2..], &kernel, false)?;
        let bias = match self.input(n, 2)? {
            Some(_) => Some(self.rt_input(n, 2)?),
            None => None,
        };
        // 1-D: a 2-D convolution over a height of 1.
        let (x2, w2) = if spatial == 1 {
            let mut xs = x.shape.clone();
            xs.insert(2, Dim::size(1));
            let mut ws = w.shape.clone();
            ws.insert(2, Dim::size(1));
            (self.reshape(&x, xs)?, self.reshape(&w, ws)?)
        } else {
            (x.clone(), w.clone())
        };
        let w2d = w_.to_2d();
        let out = conv_out(&x2.shape[2..], &[w2d.kernel[0], w2d.kernel[1]], &w2d)?;
        let shape = vec![x.shape[0].clone(), w.shape[0].clone(), Dim::size(out[0]), Dim::size(out[1])];
        let mut ins = vec![&x2, &w2];
        if let Some(b) = &bias {
            ins.push(b);
        }
        let attrs = json!({"stride": w2d.stride, "dilation": w2d.dilation, "padding": w2d.padding, "groups": groups});
        let y = self.emit("conv2d", &ins, attrs, x.dtype, shape);
        if spatial == 1 {
            let s = vec![y.shape[0].clone(), y.shape[1].clone(), y.shape[3].clone()];
            return self.reshape(&y, s);
        }
        Ok(y)
    }

    fn pool(&mut self, n: &Node) -> Res {
        let x = self.rt_input(n, 0)?;
        self.pool_of(n, x)
    }

    fn pool_f32(&mut self, n: &Node, x: &Rt) -> Res {
        let f = self.cast(x, DType::F32);
        self.pool_of(n, f)
    }

    fn pool_of(&mut self, n: &Node, x: Rt) -> Res {
        let spatial = x.shape.len().saturating_sub(2);
        if !(1..=2).contains(&spatial) {
            return unsupported(format!("{spatial}-D pooling (xlac has 1-D and 2-D)"));
        }
        if n.proto.output.get(1).is_some_and(|o| !o.is_empty()) {
            return unsupported("MaxPool's Indices output");
        }
        let kernel: Vec<u64> = match n.ints("kernel_shape") {
            Some(k) if k.len() == spatial && k.iter().all(|&v| v > 0) => k.iter().map(|&v| v as u64).collect(),
            k => return bad(format!("kernel_shape is {k:?}, expected {spatial} positive sizes")),
        };
        n.has("storage_order");
        let avg = n.proto.op_type == "AveragePool";
        if !x.dtype.is_float() {
            if avg || !matches!(x.dtype, DType::U8 | DType::I8) {
                return unsupported(format!("{} of {}", n.proto.op_type, x.dtype));
            }
            // 8-bit integers are exact in f32, where the max is taken.
            let mut n2 = self.pool_f32(n, &x)?;
            if let Some(Val::Rt(r)) = n2.first_mut() {
                *r = self.cast(r, x.dtype);
            }
            return Ok(n2);
        }
        let include_pad = n.int("count_include_pad", 0) != 0;
        let w = window(n, &x.shape[2..], &kernel, true)?;
        let x2 = if spatial == 1 {
            let mut xs = x.shape.clone();
            xs.insert(2, Dim::size(1));
            self.reshape(&x, xs)?
        } else {
            x.clone()
        };
        let mut w2 = w.to_2d();
        let out = conv_out(&x2.shape[2..], &w2.kernel, &w2)?;
        let mut shape = vec![x.shape[0].clone(), x.shape[1].clone(), Dim::size(out[0]), Dim::size(out[1])];
        let y = if !avg {
            let attrs =
                json!({"kernel": w2.kernel, "stride": w2.stride, "padding": w2.padding, "dilation": w2.dilation});
            self.emit("max_pool2d", &[&x2], attrs, x.dtype, shape.clone())
        } else {
            // Sum over the window divided by the count of positions that count:
            // an average over padded `x` (zeros) divided by one over padded ones.
            let hw = concrete(&x2.shape[2..])?;
            let (src, pad) = if include_pad && w2.explicit != [0; 4] {
                let p = w2.explicit;
                let low = [0, 0, p[0] as i64, p[2] as i64];
                let high = [0, 0, p[1] as i64, p[3] as i64];
                let mut s = x2.shape.clone();
                s[2] = Dim::size(hw[0] + p[0] + p[1]);
                s[3] = Dim::size(hw[1] + p[2] + p[3]);
                let xp = self.emit("pad", &[&x2], json!({"low": low, "high": high, "value": 0}), x.dtype, s);
                let extra = [w2.padding[0] - p[0], w2.padding[1] - p[1], w2.padding[2] - p[2], w2.padding[3] - p[3]];
                (xp, extra)
            } else {
                (x2.clone(), w2.padding)
            };
            w2.padding = pad;
            let attrs =
                json!({"kernel": w2.kernel, "stride": w2.stride, "padding": w2.padding, "dilation": w2.dilation});
            let s = self.emit("avg_pool2d", &[&src], attrs.clone(), x.dtype, shape.clone());
            if pad == [0; 4] {
                s
            } else {
                let hw = concrete(&src.shape[2..])?;
                let ones =
                    Known::new(x.dtype, vec![1, 1, hw[0], hw[1]], vec![Elem::Float(1.0); (hw[0] * hw[1]) as usize]);
                let ones = self.write_known(&ones, &self.hint.clone())?;
                let c = self.emit(
                    "avg_pool2d",
                    &[&ones],
                    attrs,
                    x.dtype,
                    vec![Dim::size(1), Dim::size(1), shape[2].clone(), shape[3].clone()],
                );
                self.binary("div", &s, &c)?
            }
        };
        if spatial == 1 {
            shape.remove(2);
            return Ok(vec![Val::Rt(self.reshape(&y, shape)?)]);
        }
        Ok(vec![Val::Rt(y)])
    }

    /// `-x`; for unsigned integers, the order reversed another way (`MAX - x`).
    fn negated(&mut self, x: &Rt) -> Result<Rt, Problem> {
        if x.dtype == DType::U8 {
            let m = self.scalar(DType::U8, 255.0);
            return self.binary("sub", &m, x);
        }
        Ok(self.unary("neg", x))
    }

    /// ONNX Mod: `fmod = 1` the remainder of truncated division (C's fmod),
    /// else of floored division (Python's `%`, the divisor's sign).
    fn modulo(&mut self, n: &Node) -> Result<Rt, Problem> {
        let a = self.rt_input(n, 0)?;
        let b = self.rt_input(n, 1)?;
        let fmod = n.int("fmod", 0) != 0;
        let shape = broadcast(&a.shape, &b.shape)?;
        let q = self.binary("div", &a, &b)?;
        let q = if a.dtype.is_float() {
            // trunc(q) for fmod, floor(q) otherwise.
            if fmod {
                let zero = self.scalar(a.dtype, 0.0);
                let neg = self.compare("lt", &q, &zero)?;
                let c = self.unary("ceil", &q);
                let f = self.unary("floor", &q);
                self.emit("where", &[&neg, &c, &f], json!({}), a.dtype, shape.clone())
            } else {
                self.unary("floor", &q)
            }
        } else {
            q
        };
        let bq = self.binary("mul", &b, &q)?;
        let r = self.binary("sub", &a, &bq)?;
        if fmod || a.dtype.is_float() || !a.dtype.is_signed() {
            return Ok(r);
        }
        // Integers divide truncating: move a remainder whose sign differs from the divisor's.
        let zero = self.scalar(a.dtype, 0.0);
        let rneg = self.compare("lt", &r, &zero)?;
        let bneg = self.compare("lt", &b, &zero)?;
        let differ = self.compare("ne", &rneg, &bneg)?;
        let nonzero = self.compare("ne", &r, &zero)?;
        let fix = self.binary("and", &differ, &nonzero)?;
        let rb = self.binary("add", &r, &b)?;
        Ok(self.emit("where", &[&fix, &rb, &r], json!({}), a.dtype, shape))
    }

    /// The upper (or lower) triangle of the last two dimensions from diagonal `k`.
    fn trilu(&mut self, n: &Node) -> Result<Rt, Problem> {
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
    fn hardmax(&mut self, n: &Node) -> Result<Rt, Problem> {
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

    /// `x / sqrt(mean(x², axes axis..) + ε) · scale`, computed in f32 for 16-bit inputs.
    fn rms_norm(&mut self, n: &Node) -> Result<Rt, Problem> {
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

    fn batch_norm(&mut self, n: &Node) -> Result<Rt, Problem> {
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

    fn lrn(&mut self, n: &Node) -> Result<Rt, Problem> {
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

    fn layer_norm(&mut self, n: &Node) -> Res {
        let x = self.rt_input(n, 0)?;
        let a = axis(n.int("axis", -1), x.shape.len())?;
        let eps = n.float("epsilon", 1e-5);
        let scale = self.rt_input(n, 1)?;
        let bias = match self.input(n, 2)? {
            Some(_) => Some(self.rt_input(n, 2)?),
            None => None,
        };
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
    fn layer_norm_stats(&mut self, n: &Node, x: &Rt, a: usize, eps: f64, scale: &Rt, bias: Option<&Rt>) -> Res {
        let stash = match n.int("stash_type", 1) {
            1 => DType::F32,
            t => super::tensor::dtype(t as i32).or_else(|name| unsupported(format!("stash_type {name}")))?,
        };
        let xf = self.cast(x, stash);
        let axes: Vec<usize> = (a..x.shape.len()).collect();
        let mean = self.reduce("reduce_mean", &xf, &axes, true);
        let d = self.binary("sub", &xf, &mean)?;
        let d2 = self.binary("mul", &d, &d)?;
        let var = self.reduce("reduce_mean", &d2, &axes, true);
        let e = self.scalar(stash, eps);
        let ve = self.binary("add", &var, &e)?;
        let inv = self.unary("rsqrt", &ve);
        let normed = self.binary("mul", &d, &inv)?;
        let normed = self.cast(&normed, x.dtype);
        let mut y = self.binary("mul", &normed, scale)?;
        if let Some(b) = bias {
            y = self.binary("add", &y, b)?;
        }
        Ok(vec![Val::Rt(y), Val::Rt(mean), Val::Rt(inv)])
    }

    /// The axes of a Reduce*/Squeeze/Unsqueeze: an attribute before the opset
    /// that made them input `input`, else that input. `None`: not given.
    fn axes_of(&self, n: &Node, input: usize) -> Result<Option<Vec<i64>>, Problem> {
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

    fn reduction(&mut self, n: &Node) -> Result<Rt, Problem> {
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

    fn split(&mut self, n: &Node) -> Res {
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

    fn slice(&mut self, n: &Node) -> Result<Rt, Problem> {
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
    fn symbolic_slice(&mut self, n: &Node, x: &Rt) -> Result<Option<Rt>, Problem> {
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

    fn gather(&mut self, n: &Node) -> Result<Rt, Problem> {
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
                    Some(d) if i.dtype.is_signed() => {
                        let zero = self.scalar(i.dtype, 0.0);
                        let neg = self.compare("lt", &i, &zero)?;
                        let dd = self.scalar(i.dtype, d as f64);
                        let wrapped = self.binary("add", &i, &dd)?;
                        self.emit("where", &[&neg, &wrapped, &i], json!({}), i.dtype, i.shape.clone())
                    }
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

    fn pad(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let r = x.shape.len();
        let mode = n.string("mode", "constant");
        if mode != "constant" {
            return unsupported(format!("mode `{mode}`"));
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
        if !value.is_finite() {
            return unsupported("a pad value that is not finite");
        }
        Ok(self.emit("pad", &[&x], json!({"low": low, "high": high, "value": value}), x.dtype, shape))
    }

    // ---------------------------------------------------------------- folding

    /// The result of `n` when it can be computed at import (its inputs known,
    /// or only their shapes needed); `None` to translate it.
    fn fold(&mut self, n: &Node) -> Result<Option<Val>, Problem> {
        let op = n.proto.op_type.as_str();
        match op {
            "Constant" => {
                let k = constant_value(n)?;
                return Ok(Some(self.known(k)));
            }
            "Shape" | "Size" => {
                let shape = match self.input(n, 0)? {
                    Some(Val::Rt(r)) => r.shape,
                    Some(Val::Known(k)) => k.shape.iter().map(|&d| Dim::size(d)).collect(),
                    _ => return bad("input 0 is required"),
                };
                if op == "Size" {
                    return Ok(Some(self.known(Known::scalar(DType::I64, product(&shape).elem()))));
                }
                let r = shape.len() as i64;
                let clip = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (clip(n.int("start", 0)), clip(n.int("end", r)));
                let dims: Vec<Elem> = shape[s..e.max(s)].iter().map(Dim::elem).collect();
                return Ok(Some(self.known(Known::new(DType::I64, vec![dims.len() as u64], dims))));
            }
            _ => {}
        }
        let mut ks = Vec::new();
        for i in 0..n.inputs() {
            match self.input(n, i)? {
                Some(Val::Known(k)) if foldable(&k) => ks.push(Some(k)),
                None => ks.push(None),
                _ => return Ok(None),
            }
        }
        if ks.is_empty() || ks[0].is_none() {
            return Ok(None);
        }
        let k0 = ks[0].clone().expect("checked");
        let folded = match op {
            "Identity" => Some((*k0).clone()),
            "Cast" => {
                n.has("saturate");
                let to = cast_target(n)?;
                Some(Known::new(to, k0.shape.clone(), k0.elems()))
            }
            "Unsqueeze" | "Squeeze" => {
                let axes = self.axes_of(n, 1)?;
                let dims: Vec<Dim> = k0.shape.iter().map(|&d| Dim::size(d)).collect();
                let t = squeeze_target(op, &dims, axes)?;
                Some(k0.reshaped(concrete(&t)?))
            }
            "Reshape" => match ks.get(1).cloned().flatten() {
                Some(s) => {
                    let dims: Vec<Dim> = k0.shape.iter().map(|&d| Dim::size(d)).collect();
                    let t = reshape_target(&dims, &s.elems(), n.int("allowzero", 0) != 0)?;
                    Some(k0.reshaped(concrete(&t)?))
                }
                None => None,
            },
            "Concat" => {
                let all: Option<Vec<_>> = ks.iter().cloned().collect();
                match all {
                    Some(all) if all.iter().all(|k| k.shape.len() == 1) => {
                        n.int("axis", 0);
                        let elems: Vec<Elem> = all.iter().flat_map(|k| k.elems()).collect();
                        Some(Known::new(k0.dtype, vec![elems.len() as u64], elems))
                    }
                    _ => None,
                }
            }
            "Gather" => match ks.get(1).cloned().flatten() {
                Some(idx) if k0.shape.len() == 1 => {
                    n.int("axis", 0);
                    let e = k0.elems();
                    let d = e.len() as i64;
                    let Some(iv) = idx.ints() else { return unsupported("symbolic indices") };
                    let mut out = Vec::new();
                    for i in iv {
                        let j = if i < 0 { i + d } else { i };
                        if !(0..d).contains(&j) {
                            return bad(format!("index {i} out of range for {d} elements"));
                        }
                        out.push(e[j as usize].clone());
                    }
                    Some(Known::new(k0.dtype, idx.shape.clone(), out))
                }
                _ => None,
            },
            "Slice" if k0.shape.len() == 1 && n.opset >= 10 => {
                let arg = |i: usize| ks.get(i).cloned().flatten().and_then(|k| k.ints());
                let (Some(s), Some(e)) = (arg(1), arg(2)) else { return Ok(None) };
                let step = arg(4).map_or(1, |v| v[0]);
                if s.len() != 1 || step == 0 {
                    return Ok(None);
                }
                let el = k0.elems();
                let d = el.len() as i64;
                let out: Vec<Elem> = if step > 0 {
                    let c = |v: i64| if v < 0 { (v + d).max(0) } else { v.min(d) };
                    (c(s[0])..c(e[0])).step_by(step as usize).map(|i| el[i as usize].clone()).collect()
                } else {
                    let c = |v: i64| if v < 0 { (v + d).max(-1) } else { v.min(d - 1) };
                    let (mut i, end) = (c(s[0]), c(e[0]));
                    let mut out = vec![];
                    while i > end {
                        out.push(el[i as usize].clone());
                        i += step;
                    }
                    out
                };
                Some(Known::new(k0.dtype, vec![out.len() as u64], out))
            }
            "Add" | "Sub" | "Mul" | "Div" | "Equal" | "Less" | "Greater" | "Max" | "Min" if ks.len() == 2 => {
                let k1 = ks[1].clone().expect("two inputs");
                fold_binary(op, &k0, &k1)?
            }
            "Where" if ks.len() == 3 => {
                let (a, b) = (ks[1].clone().expect("3"), ks[2].clone().expect("3"));
                let c = k0.ints();
                match c {
                    Some(c) if a.shape == k0.shape && b.shape == k0.shape => {
                        let (ea, eb) = (a.elems(), b.elems());
                        let out = c
                            .iter()
                            .enumerate()
                            .map(|(i, &c)| if c != 0 { ea[i].clone() } else { eb[i].clone() })
                            .collect();
                        Some(Known::new(a.dtype, a.shape.clone(), out))
                    }
                    _ => None,
                }
            }
            "Neg" => {
                let out: Option<Vec<Elem>> = k0
                    .elems()
                    .into_iter()
                    .map(|e| match e {
                        Elem::Int(i) => Some(Elem::Int(-i)),
                        Elem::Float(f) => Some(Elem::Float(-f)),
                        Elem::Sym(_) => None,
                    })
                    .collect();
                out.map(|o| Known::new(k0.dtype, k0.shape.clone(), o))
            }
            "Sqrt" => k0
                .floats()
                .map(|f| Known::new(k0.dtype, k0.shape.clone(), f.iter().map(|x| Elem::Float(x.sqrt())).collect())),
            "Range" if ks.len() == 3 && ks.iter().all(|k| k.as_ref().is_some_and(|k| !k.has_symbols())) => {
                let k = |i: usize| ks[i].clone().expect("checked");
                Some(range(&k(0), &k(1), &k(2))?)
            }
            "ConstantOfShape" => match k0.dims().map(|d| concrete(&d)) {
                Some(Ok(dims)) if dims.iter().product::<u64>() as usize <= super::INLINE => {
                    let v = constant_of_shape_value(n)?;
                    let count = dims.iter().product::<u64>() as usize;
                    Some(Known::new(v.dtype, dims, vec![v.elems()[0].clone(); count]))
                }
                _ => None,
            },
            _ => None,
        };
        Ok(folded.map(|k| self.known(k)))
    }
}

// -------------------------------------------------------------------- free helpers

impl Node<'_> {
    /// A float attribute when present.
    fn attr_f(&self, name: &str) -> Option<f64> {
        self.has(name).then(|| self.float(name, 0.0))
    }
}

fn cast_target(n: &Node) -> Result<DType, Problem> {
    let to = n.int("to", 0) as i32;
    super::tensor::dtype(to).or_else(|name| unsupported(format!("cast to {name}")))
}

/// The value of a `Constant` node.
fn constant_value(n: &Node) -> Result<Known, Problem> {
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

fn constant_of_shape_value(n: &Node) -> Result<Known, Problem> {
    match n.tensor("value") {
        None => Ok(Known::scalar(DType::F32, Elem::Float(0.0))),
        Some(t) => {
            let k = super::tensor::from_proto(t, std::path::Path::new("."))
                .map_err(|m| Problem::Unsupported(m.trim_start_matches("unsupported: ").to_string()))?;
            Ok(Known::scalar(k.dtype, k.elems().first().cloned().unwrap_or(Elem::Int(0))))
        }
    }
}

/// ONNX Range: `start, start + delta, ...` below `limit` (above, for a negative delta).
fn range(start: &Known, limit: &Known, delta: &Known) -> Result<Known, Problem> {
    let arg = |k: &Known| k.floats().and_then(|v| v.first().copied());
    let (Some(s), Some(l), Some(d)) = (arg(start), arg(limit), arg(delta)) else {
        return unsupported("a Range over symbolic bounds");
    };
    if d == 0.0 {
        return bad("Range with delta 0");
    }
    let count = ((l - s) / d).ceil().max(0.0) as u64;
    let out = (0..count)
        .map(|i| {
            if start.dtype.is_float() {
                Elem::Float(s + i as f64 * d)
            } else {
                Elem::Int(s as i64 + i as i64 * d as i64)
            }
        })
        .collect();
    Ok(Known::new(start.dtype, vec![count], out))
}

/// NumPy broadcasting of two shapes.
fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, Problem> {
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

fn show(s: &[Dim]) -> String {
    format!("[{}]", s.iter().map(Dim::to_string).collect::<Vec<_>>().join(", "))
}

/// An axis in `0..rank` from ONNX's possibly negative one.
fn axis(a: i64, rank: usize) -> Result<usize, Problem> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if (0..r).contains(&v) {
        Ok(v as usize)
    } else {
        bad(format!("axis {a} out of range for rank {rank}"))
    }
}

fn need_binding(shape: &[Dim]) -> String {
    let mut syms: Vec<&str> = shape.iter().flat_map(|d| d.symbols().iter().map(String::as_str)).collect();
    syms.sort_unstable();
    syms.dedup();
    format!("a shape computed from symbols ({}); bind them (--bind NAME=SIZE)", syms.join(", "))
}

/// The sizes of `dims`, an error naming the symbols when one is not a size.
fn concrete(dims: &[Dim]) -> Result<Vec<u64>, Problem> {
    dims.iter().map(Dim::as_size).collect::<Option<Vec<_>>>().ok_or_else(|| Problem::Unsupported(need_binding(dims)))
}

fn dims_json(dims: &[Dim]) -> Result<Vec<serde_json::Value>, Problem> {
    dims.iter().map(|d| d.to_json().ok_or_else(|| Problem::Unsupported(need_binding(dims)))).collect()
}

/// Reshape's target: `0` copies the input's dimension (unless `allowzero`), `-1` is inferred.
fn reshape_target(input: &[Dim], shape: &[Elem], allowzero: bool) -> Result<Vec<Dim>, Problem> {
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

fn squeeze_target(op: &str, dims: &[Dim], axes: Option<Vec<i64>>) -> Result<Vec<Dim>, Problem> {
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

/// Elementwise `op` on two known tensors (broadcasting); symbols only where exact.
fn fold_binary(op: &str, a: &Known, b: &Known) -> Result<Option<Known>, Problem> {
    let da: Vec<Dim> = a.shape.iter().map(|&d| Dim::size(d)).collect();
    let db: Vec<Dim> = b.shape.iter().map(|&d| Dim::size(d)).collect();
    let shape = concrete(&broadcast(&da, &db)?)?;
    let (ea, eb) = (a.elems(), b.elems());
    let count: u64 = shape.iter().product();
    let index = |s: &[u64], mut i: u64| -> usize {
        // Row-major index into a broadcast operand of shape `s`.
        let mut idx = 0u64;
        let mut stride = 1u64;
        for (k, &d) in shape.iter().enumerate().rev() {
            let c = i % d.max(1);
            i /= d.max(1);
            let off = shape.len() - k;
            if off <= s.len() {
                let sd = s[s.len() - off];
                if sd != 1 {
                    idx += c * stride;
                }
                stride *= sd;
            }
        }
        idx as usize
    };
    let float = a.dtype.is_float();
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let (x, y) = (&ea[index(&a.shape, i)], &eb[index(&b.shape, i)]);
        let r = match (x, y) {
            (Elem::Sym(_), _) | (_, Elem::Sym(_)) => match fold_symbolic(op, x, y) {
                Some(r) => r,
                None => return Ok(None),
            },
            _ if float => {
                let (p, q) = (x.as_f64().unwrap_or_default(), y.as_f64().unwrap_or_default());
                match op {
                    "Add" => Elem::Float(p + q),
                    "Sub" => Elem::Float(p - q),
                    "Mul" => Elem::Float(p * q),
                    "Div" => Elem::Float(p / q),
                    "Max" => Elem::Float(p.max(q)),
                    "Min" => Elem::Float(p.min(q)),
                    "Equal" => Elem::Int((p == q) as i64),
                    "Less" => Elem::Int((p < q) as i64),
                    _ => Elem::Int((p > q) as i64),
                }
            }
            _ => {
                let (p, q) = (x.as_i64().unwrap_or_default(), y.as_i64().unwrap_or_default());
                match op {
                    "Add" => Elem::Int(p.wrapping_add(q)),
                    "Sub" => Elem::Int(p.wrapping_sub(q)),
                    "Mul" => Elem::Int(p.wrapping_mul(q)),
                    "Div" if q == 0 => return bad("integer division by zero"),
                    "Div" => Elem::Int(p.wrapping_div(q)),
                    "Max" => Elem::Int(p.max(q)),
                    "Min" => Elem::Int(p.min(q)),
                    "Equal" => Elem::Int((p == q) as i64),
                    "Less" => Elem::Int((p < q) as i64),
                    _ => Elem::Int((p > q) as i64),
                }
            }
        };
        out.push(r);
    }
    let dtype = if matches!(op, "Equal" | "Less" | "Greater") { DType::Bool } else { a.dtype };
    Ok(Some(Known::new(dtype, shape, out)))
}

/// Arithmetic on shape elements that stays exact with symbols.
fn fold_symbolic(op: &str, x: &Elem, y: &Elem) -> Option<Elem> {
    let dim = |e: &Elem| match e {
        Elem::Sym(d) => Some(d.clone()),
        Elem::Int(i) if *i >= 0 => Some(Dim::size(*i as u64)),
        _ => None,
    };
    match op {
        "Mul" => Some(dim(x)?.mul(&dim(y)?).elem()),
        "Div" => Some(dim(x)?.div(&dim(y)?)?.elem()),
        "Add" | "Sub" if matches!(y, Elem::Int(0)) => Some(x.clone()),
        "Add" if matches!(x, Elem::Int(0)) => Some(y.clone()),
        // A size is never negative: it differs from -1 (exporters test `shape == -1`).
        "Equal" => match (x, y) {
            (Elem::Sym(a), Elem::Sym(b)) if a == b => Some(Elem::Int(1)),
            (Elem::Sym(_), Elem::Int(i)) | (Elem::Int(i), Elem::Sym(_)) if *i < 0 => Some(Elem::Int(0)),
            _ => None,
        },
        _ => None,
    }
}

/// The convolution or pooling window of `n` over spatial dims `spatial`:
/// explicit pads or auto_pad, strides, dilations; pooling's ceil_mode as
/// extra padding at the end.
struct Window {
    kernel: Vec<u64>,
    stride: Vec<u64>,
    dilation: Vec<u64>,
    /// begin per axis, then end per axis (ONNX's order).
    pads: Vec<u64>,
    /// Padding added for ceil_mode, at the end of each axis.
    extra: Vec<u64>,
}

/// A window as the 2-D ops take it.
struct Window2 {
    kernel: [u64; 2],
    stride: [u64; 2],
    dilation: [u64; 2],
    /// top, bottom, left, right, ceil_mode's extra included.
    padding: [u64; 4],
    /// The explicit padding alone.
    explicit: [u64; 4],
}

impl Window {
    fn to_2d(&self) -> Window2 {
        let n = self.kernel.len();
        let pick = |v: &[u64], i: usize, d: u64| {
            if n == 1 {
                if i == 0 {
                    d
                } else {
                    v[0]
                }
            } else {
                v[i]
            }
        };
        let (pb, pe) = (&self.pads[..n], &self.pads[n..]);
        let explicit = [pick(pb, 0, 0), pick(pe, 0, 0), pick(pb, 1, 0), pick(pe, 1, 0)];
        let mut padding = explicit;
        padding[1] += pick(&self.extra, 0, 0);
        padding[3] += pick(&self.extra, 1, 0);
        Window2 {
            kernel: [pick(&self.kernel, 0, 1), pick(&self.kernel, 1, 1)],
            stride: [pick(&self.stride, 0, 1), pick(&self.stride, 1, 1)],
            dilation: [pick(&self.dilation, 0, 1), pick(&self.dilation, 1, 1)],
            padding,
            explicit,
        }
    }
}

fn window(n: &Node, spatial: &[Dim], kernel: &[u64], pooling: bool) -> Result<Window, Problem> {
    let s = kernel.len();
    let list = |name: &str| -> Result<Vec<u64>, Problem> {
        match n.ints(name) {
            None => Ok(vec![1; s]),
            Some(v) if v.len() == s && v.iter().all(|&x| x >= 1) => Ok(v.iter().map(|&x| x as u64).collect()),
            Some(v) => bad(format!("{name} is {v:?}, expected {s} sizes ≥ 1")),
        }
    };
    let stride = list("strides")?;
    let dilation = list("dilations")?;
    let auto = n.string("auto_pad", "NOTSET");
    let ceil = pooling && n.int("ceil_mode", 0) != 0;
    let mut pads = vec![0u64; 2 * s];
    match auto.as_str() {
        "NOTSET" => {
            if let Some(p) = n.ints("pads") {
                if p.len() != 2 * s || p.iter().any(|&x| x < 0) {
                    return bad(format!("pads is {p:?}, expected {} sizes ≥ 0", 2 * s));
                }
                pads = p.iter().map(|&x| x as u64).collect();
            }
        }
        "VALID" => {}
        "SAME_UPPER" | "SAME_LOWER" => {
            let size = concrete(spatial)?;
            for i in 0..s {
                let out = size[i].div_ceil(stride[i]);
                let span = (kernel[i] - 1) * dilation[i] + 1;
                let total = ((out - 1) * stride[i] + span).saturating_sub(size[i]);
                let (lo, hi) =
                    if auto == "SAME_UPPER" { (total / 2, total - total / 2) } else { (total - total / 2, total / 2) };
                pads[i] = lo;
                pads[i + s] = hi;
            }
        }
        a => return bad(format!("auto_pad is `{a}`")),
    }
    let mut extra = vec![0u64; s];
    if ceil {
        let size = concrete(spatial)?;
        for i in 0..s {
            let span = (kernel[i] - 1) * dilation[i] + 1;
            let padded = size[i] + pads[i] + pads[i + s];
            if padded < span {
                continue;
            }
            let floor = (padded - span) / stride[i] + 1;
            let mut ceil_out = (padded - span).div_ceil(stride[i]) + 1;
            // The last window must start inside the input or its begin padding.
            if (ceil_out - 1) * stride[i] >= size[i] + pads[i] {
                ceil_out -= 1;
            }
            if ceil_out > floor {
                extra[i] = (ceil_out - 1) * stride[i] + span - padded;
            }
        }
    }
    Ok(Window { kernel: kernel.to_vec(), stride, dilation, pads, extra })
}

/// The output size of a 2-D window over `hw`.
fn conv_out(hw: &[Dim], kernel: &[u64; 2], w: &Window2) -> Result<[u64; 2], Problem> {
    let hw = concrete(hw)?;
    let mut out = [0; 2];
    for i in 0..2 {
        let padded = hw[i] + w.padding[2 * i] + w.padding[2 * i + 1];
        let span = (kernel[i] - 1) * w.dilation[i] + 1;
        if padded < span {
            return bad(format!("a window of {span} over {padded} positions"));
        }
        out[i] = (padded - span) / w.stride[i] + 1;
    }
    Ok(out)
}
