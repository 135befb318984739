//! Type inference: the result type of an op applied to operands of given types.
//! One function serves both the model.json builder and the verifier, so what is
//! accepted when a model is read is exactly what a rewritten module must satisfy.

use crate::ir::dtype::DType;
use crate::ir::op::{BinaryOp, DotDims, Op, ReduceKind, UnaryOp, Window2d};
use crate::ir::types::{broadcast_shapes, element_count, ShapeDisplay, TensorType};

/// True when `perm` lists each of `0..rank` exactly once.
pub fn is_permutation(perm: &[usize], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    perm.len() == rank && perm.iter().all(|&p| p < rank && !std::mem::replace(&mut seen[p], true))
}

/// The result type of `op` on operands of types `inputs`, or a message saying
/// what was found and what was expected. The operand count must already be in
/// `op.arity()`.
pub fn infer(op: &Op, inputs: &[&TensorType]) -> Result<TensorType, String> {
    let ty = infer_unchecked(op, inputs)?;
    element_count(&ty.shape)?;
    Ok(ty)
}

fn infer_unchecked(op: &Op, inputs: &[&TensorType]) -> Result<TensorType, String> {
    let Some(&x) = inputs.first() else {
        return infer_nullary(op);
    };
    match op {
        Op::Unary(u) => infer_unary(*u, x),
        Op::Binary(b) => infer_binary(*b, inputs),
        Op::Compare(_) => {
            same_dtype(inputs)?;
            Ok(TensorType::new(DType::Bool, broadcast(inputs)?))
        }
        Op::Where => {
            expect_dtype(x, "condition", |d| d == DType::Bool, "bool")?;
            same_dtype(&inputs[1..])?;
            Ok(TensorType::new(inputs[1].dtype, broadcast(inputs)?))
        }
        Op::Cast { to } => Ok(x.with_dtype(*to)),
        Op::MatMul { acc } => accumulated(infer_matmul(x, inputs[1])?, *acc),
        Op::Dot(dims) => accumulated(infer_dot(x, inputs[1], dims)?, dims.acc),
        Op::Reduce { kind, axes, keepdims } => infer_reduce(*kind, x, axes, *keepdims),
        Op::ArgMax { axis, keepdims } => {
            expect_dtype(x, "operand", |d| d != DType::Bool, "a numeric type (not bool)")?;
            check_axis(*axis, x.rank())?;
            Ok(TensorType::new(DType::I64, reduced_shape(&x.shape, &[*axis], *keepdims)))
        }
        Op::ArgSort { axis, .. } => {
            expect_dtype(x, "operand", |d| d != DType::Bool, "a numeric type (not bool)")?;
            check_axis(*axis, x.rank())?;
            Ok(x.with_dtype(DType::I64))
        }
        Op::Reshape { shape } => {
            let (from, to) = (element_count(&x.shape)?, element_count(shape)?);
            if from != to {
                return Err(format!("cannot reshape {x} ({from} elements) to {} ({to} elements)", ShapeDisplay(shape)));
            }
            Ok(TensorType::new(x.dtype, shape.clone()))
        }
        Op::Transpose { perm } => {
            if !is_permutation(perm, x.rank()) {
                return Err(format!("perm {perm:?} is not a permutation of the {} dimensions of {x}", x.rank()));
            }
            Ok(TensorType::new(x.dtype, perm.iter().map(|&p| x.shape[p]).collect()))
        }
        Op::BroadcastTo { shape } => match broadcast_shapes(&x.shape, shape) {
            Some(s) if &s == shape => Ok(TensorType::new(x.dtype, shape.clone())),
            _ => Err(format!("cannot broadcast {x} to {}", ShapeDisplay(shape))),
        },
        Op::Concat { axis } => infer_concat(inputs, *axis),
        Op::Slice { starts, limits, strides } => infer_slice(x, starts, limits, strides),
        Op::Pad { low, high, .. } => infer_pad(x, low, high),
        Op::DynamicSlice { axis, size } => {
            check_axis(*axis, x.rank())?;
            expect_start(inputs[1])?;
            if *size > x.shape[*axis] {
                return Err(format!("size {size} is more than dimension {axis} of {x}"));
            }
            let mut shape = x.shape.clone();
            shape[*axis] = *size;
            Ok(TensorType::new(x.dtype, shape))
        }
        Op::DynamicUpdateSlice { axis } => {
            let update = inputs[1];
            check_axis(*axis, x.rank())?;
            expect_start(inputs[2])?;
            let fits = update.dtype == x.dtype
                && update.rank() == x.rank()
                && update
                    .shape
                    .iter()
                    .zip(&x.shape)
                    .enumerate()
                    .all(|(d, (u, n))| if d == *axis { u <= n } else { u == n });
            if !fits {
                return Err(format!(
                    "update is {update}; expected {} with {x}'s dimensions but for dimension {axis} (at most {})",
                    x.dtype, x.shape[*axis]
                ));
            }
            Ok(x.clone())
        }
        Op::Gather { axis } => {
            let idx = inputs[1];
            check_axis(*axis, x.rank())?;
            expect_dtype(idx, "indices", |d| d.is_integer(), "an integer type")?;
            let mut shape = x.shape[..*axis].to_vec();
            shape.extend_from_slice(&idx.shape);
            shape.extend_from_slice(&x.shape[axis + 1..]);
            Ok(TensorType::new(x.dtype, shape))
        }
        Op::ScatterAdd { axis } => {
            let (idx, updates) = (inputs[1], inputs[2]);
            check_axis(*axis, x.rank())?;
            expect_dtype(idx, "indices", |d| d.is_integer(), "an integer type")?;
            expect_dtype(x, "data", |d| d != DType::Bool, "a numeric type (not bool)")?;
            let mut shape = x.shape[..*axis].to_vec();
            shape.extend_from_slice(&idx.shape);
            shape.extend_from_slice(&x.shape[axis + 1..]);
            let expected = TensorType::new(x.dtype, shape);
            if *updates != expected {
                return Err(format!("updates are {updates}, expected {expected} (what gather would take out)"));
            }
            Ok(x.clone())
        }
        Op::StopGradient => Ok(x.clone()),
        Op::Iota { .. } | Op::Constant { .. } => Err(format!("{} takes no operands", op.name())),
        Op::RandomUniform { dtype, shape, .. } => {
            if *x != TensorType::scalar(DType::I64) {
                return Err(format!("seed is {x}, expected i64[] (a scalar)"));
            }
            if !dtype.is_float() {
                return Err(format!("random_uniform makes floats, not {dtype}"));
            }
            Ok(TensorType::new(*dtype, shape.clone()))
        }
        Op::Conv2d { window, groups, acc } => infer_conv(inputs, window, *groups, *acc),
        Op::MaxPool2d { kernel, window } | Op::AvgPool2d { kernel, window } => {
            expect_dtype(x, "input", DType::is_float, "a float type")?;
            expect_rank(x, "input", 4, "NCHW")?;
            let (h, w) = window_output(x.shape[2], x.shape[3], *kernel, window)?;
            Ok(TensorType::new(x.dtype, vec![x.shape[0], x.shape[1], h, w]))
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            expect_dtype(x, "operand", DType::is_float, "a float type")?;
            check_axis(*axis, x.rank())?;
            Ok(x.clone())
        }
        Op::LayerNorm { axis, epsilon } => infer_layer_norm(inputs, *axis, *epsilon),
        Op::RmsNorm { epsilon } => infer_rms_norm(inputs, *epsilon),
        Op::Attention { scale, acc, .. } => infer_attention(inputs, *scale, *acc),
        Op::Linear { activation, acc } => infer_linear(inputs, *activation, *acc),
    }
}

fn infer_unary(u: UnaryOp, x: &TensorType) -> Result<TensorType, String> {
    match u {
        UnaryOp::Not => expect_dtype(x, "operand", |d| d.is_integer() || d == DType::Bool, "bool or integer")?,
        UnaryOp::Neg | UnaryOp::Abs => expect_dtype(x, "operand", DType::is_signed, "float or signed integer")?,
        _ => expect_dtype(x, "operand", DType::is_float, "a float type")?,
    }
    Ok(x.clone())
}

fn infer_binary(b: BinaryOp, inputs: &[&TensorType]) -> Result<TensorType, String> {
    let x = inputs[0];
    same_dtype(inputs)?;
    match b {
        BinaryOp::And | BinaryOp::Or => {
            expect_dtype(x, "operands", |d| d.is_integer() || d == DType::Bool, "bool or integer")?
        }
        _ => expect_dtype(x, "operands", |d| d != DType::Bool, "a numeric type (not bool)")?,
    }
    Ok(TensorType::new(x.dtype, broadcast(inputs)?))
}

fn infer_reduce(kind: ReduceKind, x: &TensorType, axes: &[usize], keepdims: bool) -> Result<TensorType, String> {
    if kind == ReduceKind::Mean {
        expect_dtype(x, "operand", DType::is_float, "a float type")?;
    } else {
        expect_dtype(x, "operand", |d| d != DType::Bool, "a numeric type (not bool)")?;
    }
    check_axes(axes, x.rank())?;
    Ok(TensorType::new(x.dtype, reduced_shape(&x.shape, axes, keepdims)))
}

fn infer_concat(inputs: &[&TensorType], axis: usize) -> Result<TensorType, String> {
    let x = inputs[0];
    same_dtype(inputs)?;
    check_axis(axis, x.rank())?;
    let mut shape = x.shape.clone();
    for (i, t) in inputs.iter().enumerate().skip(1) {
        let agrees = t.rank() == x.rank() && (0..x.rank()).all(|d| d == axis || t.shape[d] == x.shape[d]);
        if !agrees {
            return Err(format!(
                "operand {i} is {t} but operand 0 is {x}: all dimensions except axis {axis} must agree"
            ));
        }
        shape[axis] += t.shape[axis];
    }
    Ok(TensorType::new(x.dtype, shape))
}

fn infer_slice(x: &TensorType, starts: &[u64], limits: &[u64], strides: &[u64]) -> Result<TensorType, String> {
    let r = x.rank();
    if starts.len() != r || limits.len() != r || strides.len() != r {
        return Err(format!("slice bounds must have one entry per dimension of {x}"));
    }
    let mut shape = Vec::with_capacity(r);
    for d in 0..r {
        if strides[d] == 0 || starts[d] > limits[d] || limits[d] > x.shape[d] {
            return Err(format!(
                "dimension {d}: slice {}:{}:{} is not within 0..{}",
                starts[d], limits[d], strides[d], x.shape[d]
            ));
        }
        shape.push((limits[d] - starts[d]).div_ceil(strides[d]));
    }
    Ok(TensorType::new(x.dtype, shape))
}

fn infer_pad(x: &TensorType, low: &[i64], high: &[i64]) -> Result<TensorType, String> {
    if low.len() != x.rank() || high.len() != x.rank() {
        return Err(format!("pad needs one low and one high entry per dimension of {x}"));
    }
    let shape = (0..x.rank())
        .map(|d| {
            let n = x.shape[d] as i128 + low[d] as i128 + high[d] as i128;
            u64::try_from(n).map_err(|_| format!("padding dimension {d} of {x} leaves a negative size"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TensorType::new(x.dtype, shape))
}

fn infer_layer_norm(inputs: &[&TensorType], axis: usize, epsilon: f64) -> Result<TensorType, String> {
    let x = inputs[0];
    expect_dtype(x, "input", DType::is_float, "a float type")?;
    check_axis(axis, x.rank())?;
    check_epsilon(epsilon)?;
    let trailing = &x.shape[axis..];
    for (i, t) in inputs.iter().enumerate().skip(1) {
        let what = if i == 1 { "scale" } else { "bias" };
        if t.dtype != x.dtype || t.shape != trailing {
            return Err(format!(
                "{what} is {t}, expected {}{} (the normalised trailing dimensions)",
                x.dtype,
                ShapeDisplay(trailing)
            ));
        }
    }
    Ok(x.clone())
}

fn infer_rms_norm(inputs: &[&TensorType], epsilon: f64) -> Result<TensorType, String> {
    let x = inputs[0];
    expect_dtype(x, "input", DType::is_float, "a float type")?;
    if x.rank() == 0 {
        return Err("rms_norm needs an input of rank ≥ 1, found a scalar".into());
    }
    check_epsilon(epsilon)?;
    if let Some(s) = inputs.get(1) {
        let last = &x.shape[x.rank() - 1..];
        if s.dtype != x.dtype || s.shape != last {
            return Err(format!("scale is {s}, expected {}{}", x.dtype, ShapeDisplay(last)));
        }
    }
    Ok(x.clone())
}

fn infer_linear(inputs: &[&TensorType], activation: Option<UnaryOp>, acc: Option<DType>) -> Result<TensorType, String> {
    let x = inputs[0];
    let w = inputs[1];
    same_dtype(&inputs[..2])?;
    let out = result_dtype(x.dtype, acc)?;
    expect_dtype(x, "input", DType::is_float, "a float type")?;
    if let Some(a) = activation {
        if !UnaryOp::ACTIVATIONS.contains(&a) {
            return Err(format!("`{}` is not an activation of linear", a.name()));
        }
    }
    if w.rank() != 2 || x.rank() == 0 || x.shape[x.rank() - 1] != w.shape[0] {
        return Err(format!("linear needs x [..., K] and w [K, N], found {x} and {w}"));
    }
    if let Some(b) = inputs.get(2) {
        if b.shape != [w.shape[1]] || b.dtype != out {
            return Err(format!("bias is {b}, expected {out}[{}]", w.shape[1]));
        }
    }
    let mut shape = x.shape.clone();
    shape[x.rank() - 1] = w.shape[1];
    Ok(TensorType::new(out, shape))
}

/// Ops without operands.
fn infer_nullary(op: &Op) -> Result<TensorType, String> {
    match op {
        Op::Iota { dtype, shape, axis } => {
            check_axis(*axis, shape.len())?;
            if *dtype == DType::Bool {
                return Err("iota needs a numeric dtype, found bool".into());
            }
            Ok(TensorType::new(*dtype, shape.clone()))
        }
        Op::Constant { dtype, shape, data } => {
            let n = element_count(shape)?;
            if data.len() as u64 != n {
                return Err(format!(
                    "constant of shape {} needs {n} values, found {}",
                    ShapeDisplay(shape),
                    data.len()
                ));
            }
            Ok(TensorType::new(*dtype, shape.clone()))
        }
        _ => Err(format!("{} needs at least one operand", op.name())),
    }
}

fn expect_dtype(t: &TensorType, what: &str, ok: impl Fn(DType) -> bool, expected: &str) -> Result<(), String> {
    if ok(t.dtype) {
        Ok(())
    } else {
        Err(format!("{what} has dtype {}, expected {expected}", t.dtype))
    }
}

fn expect_rank(t: &TensorType, what: &str, rank: usize, layout: &str) -> Result<(), String> {
    if t.rank() == rank {
        Ok(())
    } else {
        Err(format!("{what} is {t}, expected rank {rank} ({layout})"))
    }
}

fn same_dtype(inputs: &[&TensorType]) -> Result<(), String> {
    let d = inputs[0].dtype;
    match inputs.iter().position(|t| t.dtype != d) {
        None => Ok(()),
        Some(i) => {
            Err(format!("operand dtypes differ: operand 0 is {d}, operand {i} is {} (insert a cast)", inputs[i].dtype))
        }
    }
}

fn broadcast(inputs: &[&TensorType]) -> Result<Vec<u64>, String> {
    let mut shape = inputs[0].shape.clone();
    for t in &inputs[1..] {
        shape = broadcast_shapes(&shape, &t.shape).ok_or_else(|| {
            let shapes: Vec<_> = inputs.iter().map(|t| ShapeDisplay(&t.shape).to_string()).collect();
            format!("shapes {} are not broadcastable", shapes.join(" and "))
        })?;
    }
    Ok(shape)
}

/// A dynamic slice's start: one integer.
fn expect_start(t: &TensorType) -> Result<(), String> {
    if t.rank() != 0 || !t.dtype.is_integer() {
        return Err(format!("start is {t}, expected an integer scalar"));
    }
    Ok(())
}

fn check_axis(axis: usize, rank: usize) -> Result<(), String> {
    if axis < rank {
        Ok(())
    } else {
        Err(format!("axis {axis} is out of range for rank {rank}"))
    }
}

fn check_axes(axes: &[usize], rank: usize) -> Result<(), String> {
    for &a in axes {
        check_axis(a, rank)?;
    }
    if axes.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("axes {axes:?} must be distinct"));
    }
    Ok(())
}

fn check_epsilon(eps: f64) -> Result<(), String> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(format!("epsilon must be a finite number ≥ 0, found {eps}"))
    }
}

/// The shape left after reducing `axes` (sorted), keeping them as 1 when `keepdims`.
pub fn reduced_shape(shape: &[u64], axes: &[usize], keepdims: bool) -> Vec<u64> {
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(&i), keepdims) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect()
}

/// How NumPy's `matmul` sees its operands: batch shape and the matrix dims.
pub struct MatMulShape {
    /// The broadcast batch shape.
    pub batch: Vec<u64>,
    pub m: u64,
    pub k: u64,
    pub n: u64,
    /// The lhs was 1-D (its M dimension is dropped from the result).
    pub lhs_vector: bool,
    /// The rhs was 1-D (its N dimension is dropped from the result).
    pub rhs_vector: bool,
}

impl MatMulShape {
    /// The NumPy result shape.
    pub fn result_shape(&self) -> Vec<u64> {
        let mut s = self.batch.clone();
        if !self.lhs_vector {
            s.push(self.m);
        }
        if !self.rhs_vector {
            s.push(self.n);
        }
        s
    }
}

/// Analyses a NumPy matmul of `a` and `b`.
pub fn matmul_shape(a: &TensorType, b: &TensorType) -> Result<MatMulShape, String> {
    if a.rank() == 0 || b.rank() == 0 {
        return Err(format!("matmul operands must have rank ≥ 1, found {a} and {b}"));
    }
    let (lhs_vector, rhs_vector) = (a.rank() == 1, b.rank() == 1);
    let (m, k) = if lhs_vector { (1, a.shape[0]) } else { (a.shape[a.rank() - 2], a.shape[a.rank() - 1]) };
    let (k2, n) = if rhs_vector { (b.shape[0], 1) } else { (b.shape[b.rank() - 2], b.shape[b.rank() - 1]) };
    if k != k2 {
        return Err(format!("matmul of {a} and {b}: contracting dimensions differ ({k} vs {k2})"));
    }
    let batch_of = |t: &TensorType| t.shape[..t.rank().saturating_sub(2)].to_vec();
    let batch = broadcast_shapes(&batch_of(a), &batch_of(b))
        .ok_or_else(|| format!("matmul of {a} and {b}: batch dimensions are not broadcastable"))?;
    Ok(MatMulShape { batch, m, k, n, lhs_vector, rhs_vector })
}

/// The result dtype of a contraction of `operands` with accumulation type
/// `acc`: both must be floats when `acc` is given.
fn result_dtype(operands: DType, acc: Option<DType>) -> Result<DType, String> {
    match acc {
        None => Ok(operands),
        Some(a) if a.is_float() && operands.is_float() => Ok(a),
        Some(a) => Err(format!("accumulating {operands} operands in {a} needs float types")),
    }
}

/// `t` with the accumulation dtype, if any.
fn accumulated(t: TensorType, acc: Option<DType>) -> Result<TensorType, String> {
    Ok(TensorType::new(result_dtype(t.dtype, acc)?, t.shape))
}

fn infer_matmul(a: &TensorType, b: &TensorType) -> Result<TensorType, String> {
    same_dtype(&[a, b])?;
    expect_dtype(a, "operands", |d| d != DType::Bool, "a numeric type (not bool)")?;
    Ok(TensorType::new(a.dtype, matmul_shape(a, b)?.result_shape()))
}

fn infer_dot(a: &TensorType, b: &TensorType, d: &DotDims) -> Result<TensorType, String> {
    same_dtype(&[a, b])?;
    expect_dtype(a, "operands", |d| d != DType::Bool, "a numeric type (not bool)")?;
    if d.lhs_batch.len() != d.rhs_batch.len() || d.lhs_contract.len() != d.rhs_contract.len() {
        return Err("lhs and rhs must list the same number of batch and of contracting dimensions".into());
    }
    let check = |dims: &[usize], t: &TensorType, side: &str| -> Result<(), String> {
        let mut seen = vec![false; t.rank()];
        for &x in dims {
            if x >= t.rank() || std::mem::replace(&mut seen[x], true) {
                return Err(format!("{side} dimension {x} is out of range or repeated for {t}"));
            }
        }
        Ok(())
    };
    let lhs_dims: Vec<_> = d.lhs_batch.iter().chain(&d.lhs_contract).copied().collect();
    let rhs_dims: Vec<_> = d.rhs_batch.iter().chain(&d.rhs_contract).copied().collect();
    check(&lhs_dims, a, "lhs")?;
    check(&rhs_dims, b, "rhs")?;
    for (&l, &r) in lhs_dims.iter().zip(&rhs_dims) {
        if a.shape[l] != b.shape[r] {
            return Err(format!(
                "lhs dimension {l} ({}) and rhs dimension {r} ({}) must be equal",
                a.shape[l], b.shape[r]
            ));
        }
    }
    let mut shape: Vec<u64> = d.lhs_batch.iter().map(|&i| a.shape[i]).collect();
    shape.extend((0..a.rank()).filter(|i| !lhs_dims.contains(i)).map(|i| a.shape[i]));
    shape.extend((0..b.rank()).filter(|i| !rhs_dims.contains(i)).map(|i| b.shape[i]));
    Ok(TensorType::new(a.dtype, shape))
}

/// Output height and width of a 2-D window of size `kernel` over `h`×`w`.
fn window_output(h: u64, w: u64, kernel: [u64; 2], win: &Window2d) -> Result<(u64, u64), String> {
    let out = |size: u64, k: u64, s: u64, lo: u64, hi: u64, dil: u64, dim: &str| -> Result<u64, String> {
        if k == 0 || s == 0 || dil == 0 {
            return Err(format!("kernel, stride and dilation along {dim} must be ≥ 1"));
        }
        let padded = size + lo + hi;
        let span = dil * (k - 1) + 1;
        if span > padded {
            return Err(format!("window of {span} along {dim} is larger than the padded input ({padded})"));
        }
        Ok((padded - span) / s + 1)
    };
    let p = win.padding;
    Ok((
        out(h, kernel[0], win.stride[0], p[0], p[1], win.dilation[0], "H")?,
        out(w, kernel[1], win.stride[1], p[2], p[3], win.dilation[1], "W")?,
    ))
}

fn infer_conv(
    inputs: &[&TensorType],
    window: &Window2d,
    groups: u64,
    acc: Option<DType>,
) -> Result<TensorType, String> {
    let (x, w) = (inputs[0], inputs[1]);
    same_dtype(&inputs[..2])?;
    let out = result_dtype(x.dtype, acc)?;
    expect_dtype(x, "input", DType::is_float, "a float type")?;
    expect_rank(x, "input", 4, "NCHW")?;
    expect_rank(w, "weight", 4, "OIHW")?;
    let (c, o) = (x.shape[1], w.shape[0]);
    if groups == 0 || c % groups != 0 || o % groups != 0 {
        return Err(format!("groups {groups} must divide the input channels ({c}) and output channels ({o})"));
    }
    if w.shape[1] != c / groups {
        return Err(format!(
            "weight {w} has {} input channels per group, expected {} (input channels {c} / groups {groups})",
            w.shape[1],
            c / groups
        ));
    }
    if let Some(b) = inputs.get(2) {
        if b.shape != [o] || b.dtype != out {
            return Err(format!("bias is {b}, expected {out}[{o}]"));
        }
    }
    let (h, wd) = window_output(x.shape[2], x.shape[3], [w.shape[2], w.shape[3]], window)?;
    Ok(TensorType::new(out, vec![x.shape[0], o, h, wd]))
}

fn infer_attention(inputs: &[&TensorType], scale: Option<f64>, acc: Option<DType>) -> Result<TensorType, String> {
    let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
    same_dtype(&inputs[..3])?;
    let out = result_dtype(q.dtype, acc)?;
    expect_dtype(q, "query", DType::is_float, "a float type")?;
    if q.rank() < 2 || k.rank() != q.rank() || v.rank() != q.rank() {
        return Err(format!(
            "query, key and value must have the same rank ≥ 2 ([..., seq, head_dim]), found {q}, {k} and {v}"
        ));
    }
    let r = q.rank();
    let batch = &q.shape[..r - 2];
    if &k.shape[..r - 2] != batch || &v.shape[..r - 2] != batch {
        return Err(format!("query {q}, key {k} and value {v} must share their leading (batch, head) dimensions"));
    }
    if k.shape[r - 1] != q.shape[r - 1] {
        return Err(format!("key {k} must have the head dimension of query {q}"));
    }
    if v.shape[r - 2] != k.shape[r - 2] {
        return Err(format!("value {v} must have the sequence length of key {k}"));
    }
    if let Some(s) = scale {
        if !s.is_finite() {
            return Err(format!("scale must be finite, found {s}"));
        }
    }
    if let Some(mask) = inputs.get(3) {
        if mask.dtype != out {
            return Err(format!("mask is {mask}, expected dtype {out} (the scores' dtype)"));
        }
        let mut scores = batch.to_vec();
        scores.extend([q.shape[r - 2], k.shape[r - 2]]);
        if broadcast_shapes(&mask.shape, &scores).as_deref() != Some(&scores[..]) {
            return Err(format!("mask {mask} does not broadcast to the attention scores {}", ShapeDisplay(&scores)));
        }
    }
    let mut shape = q.shape[..r - 1].to_vec();
    shape.push(v.shape[r - 1]);
    Ok(TensorType::new(out, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dtype: DType, shape: &[u64]) -> TensorType {
        TensorType::new(dtype, shape.to_vec())
    }

    #[test]
    fn matmul_follows_numpy() {
        let f = DType::F32;
        let r = infer(&Op::MatMul { acc: None }, &[&t(f, &[2, 1, 3, 4]), &t(f, &[5, 4, 6])]).unwrap();
        assert_eq!(r.shape, vec![2, 5, 3, 6]);
        let r = infer(&Op::MatMul { acc: None }, &[&t(f, &[4]), &t(f, &[4, 6])]).unwrap();
        assert_eq!(r.shape, vec![6]);
        let e = infer(&Op::MatMul { acc: None }, &[&t(f, &[3, 4]), &t(f, &[5, 6])]).unwrap_err();
        assert!(e.contains("4 vs 5"), "{e}");
    }

    #[test]
    fn conv_output_size() {
        let f = DType::F32;
        let win = Window2d { stride: [2, 2], padding: [1, 1, 1, 1], dilation: [1, 1] };
        let r = infer(&Op::Conv2d { window: win, groups: 1, acc: None }, &[&t(f, &[1, 3, 8, 8]), &t(f, &[4, 3, 3, 3])])
            .unwrap();
        assert_eq!(r.shape, vec![1, 4, 4, 4]);
    }

    #[test]
    fn dtype_mismatch_is_reported() {
        let e = infer(&Op::Binary(BinaryOp::Add), &[&t(DType::F32, &[2]), &t(DType::I32, &[2])]).unwrap_err();
        assert!(e.contains("operand 1 is i32"), "{e}");
    }
}
