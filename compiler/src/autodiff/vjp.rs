//! The vector-Jacobian product of every op: given the cotangent `g` of an
//! op's result `y`, the cotangent of each operand (`None`: no gradient flows
//! to it). Where PyTorch documents a convention (ties of `max`, `abs` at 0,
//! `pow`'s masks), the rule follows it, so that trajectories can be compared.

use crate::ir::builder::{Builder, Built};
use crate::ir::infer::matmul_shape;
use crate::ir::op::{BinaryOp, CompareDir, DotDims, Op, ReduceKind, UnaryOp, Window2d};
use crate::ir::Value;

/// The operands' cotangents of `op(x) = y` given `y`'s cotangent `g`.
pub(super) fn vjp(b: &mut Builder, op: &Op, x: &[Value], y: Value, g: Value) -> Result<Vec<Option<Value>>, String> {
    let one = |v: Built| v.map(|v| vec![Some(v)]);
    match op {
        Op::Unary(u) => Ok(vec![unary(b, *u, x[0], y, g)?]),
        Op::Binary(k) => binary(b, *k, x[0], x[1], y, g),
        Op::Compare(_)
        | Op::ArgMax { .. }
        | Op::ArgSort { .. }
        | Op::Iota { .. }
        | Op::Constant { .. }
        | Op::RandomUniform { .. }
        | Op::StopGradient => Ok(vec![None; x.len()]),
        Op::Where => {
            let shape = |b: &Builder, v: Value| b.ty(v).shape;
            let (sa, sb) = (shape(b, x[1]), shape(b, x[2]));
            let ga = b.zero_where_not(x[0], g)?;
            let gb = b.zero_where(x[0], g)?;
            Ok(vec![None, Some(b.unbroadcast(ga, &sa)?), Some(b.unbroadcast(gb, &sb)?)])
        }
        Op::Cast { .. } => one(Ok(g)),
        Op::MatMul { .. } => matmul(b, x[0], x[1], g),
        Op::Dot(d) => dot(b, d, x[0], x[1], g),
        Op::Reduce { kind, axes, .. } => one(reduce(b, *kind, axes, x[0], y, g)),
        Op::Reshape { .. } => {
            let s = b.ty(x[0]).shape;
            one(b.reshape(g, &s))
        }
        Op::Transpose { perm } => {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            one(b.transpose(g, inverse))
        }
        Op::BroadcastTo { .. } => {
            let s = b.ty(x[0]).shape;
            one(b.unbroadcast(g, &s))
        }
        Op::Concat { axis } => {
            let mut offset = 0;
            let mut out = Vec::with_capacity(x.len());
            let total = b.ty(g).shape[*axis];
            for &v in x {
                let n = b.ty(v).shape[*axis];
                let rank = b.ty(g).rank();
                let mut low = vec![0i64; rank];
                let mut high = vec![0i64; rank];
                low[*axis] = -(offset as i64);
                high[*axis] = -((total - offset - n) as i64);
                out.push(Some(b.pad(g, low, high)?));
                offset += n;
            }
            Ok(out)
        }
        Op::Slice { starts, limits, strides } => one(slice(b, x[0], starts, limits, strides, g)),
        Op::Pad { low, high, .. } => {
            let neg = |v: &[i64]| v.iter().map(|p| -p).collect();
            one(b.pad(g, neg(low), neg(high)))
        }
        Op::DynamicSlice { axis, .. } => {
            // The window's cotangent written into zeros, at the same (clamped) start.
            let ty = b.ty(x[0]);
            let zeros = b.zeros(ty.dtype, &ty.shape)?;
            Ok(vec![Some(b.op(Op::DynamicUpdateSlice { axis: *axis }, &[zeros, g, x[1]])?), None])
        }
        Op::DynamicUpdateSlice { axis } => {
            // The overwritten window gets no gradient; the update gets the window's.
            let ty = b.ty(x[1]);
            let zeros = b.zeros(ty.dtype, &ty.shape)?;
            let gx = b.op(Op::DynamicUpdateSlice { axis: *axis }, &[g, zeros, x[2]])?;
            let gu = b.op(Op::DynamicSlice { axis: *axis, size: ty.shape[*axis] }, &[g, x[2]])?;
            Ok(vec![Some(gx), Some(gu), None])
        }
        Op::Gather { axis } => {
            let ty = b.ty(x[0]);
            let zeros = b.zeros(ty.dtype, &ty.shape)?;
            Ok(vec![Some(b.op(Op::ScatterAdd { axis: *axis }, &[zeros, x[1], g])?), None])
        }
        Op::ScatterAdd { axis } => Ok(vec![Some(g), None, Some(b.op(Op::Gather { axis: *axis }, &[g, x[1]])?)]),
        Op::Conv2d { window, groups, .. } => conv2d(b, x, window, *groups, g),
        Op::MaxPool2d { kernel, window } => one(pool(b, x[0], y, *kernel, window, true, g)),
        Op::AvgPool2d { kernel, window } => one(pool(b, x[0], y, *kernel, window, false, g)),
        Op::Softmax { axis } => {
            // y ⊙ (g − Σ g⊙y)
            let gy = b.mul(g, y)?;
            let s = b.sum(gy, vec![*axis], true)?;
            let d = b.sub(g, s)?;
            one(b.mul(y, d))
        }
        Op::LogSoftmax { axis } => {
            // g − exp(y) ⊙ Σ g
            let s = b.sum(g, vec![*axis], true)?;
            let p = b.unary(UnaryOp::Exp, y)?;
            let ps = b.mul(p, s)?;
            one(b.sub(g, ps))
        }
        Op::LayerNorm { axis, epsilon } => layer_norm(b, x, *axis, *epsilon, g),
        Op::RmsNorm { epsilon } => rms_norm(b, x, *epsilon, g),
        Op::Attention { causal, scale, .. } => attention(b, x, *causal, *scale, g),
        Op::Linear { activation, .. } => linear(b, x, *activation, y, g),
    }
}

/// The cotangent of a unary op's operand; `None` where none flows (floor, ceil, not).
fn unary(b: &mut Builder, u: UnaryOp, x: Value, y: Value, g: Value) -> Result<Option<Value>, String> {
    use std::f64::consts::PI;
    let d = match u {
        UnaryOp::Neg => b.neg(g)?,
        UnaryOp::Abs => {
            // sign(x), 0 at 0 (PyTorch's convention).
            let pos = b.compare_to(CompareDir::Gt, x, 0.0)?;
            let neg = b.compare_to(CompareDir::Lt, x, 0.0)?;
            let (one, minus, zero) = (b.scalar_like(1.0, x)?, b.scalar_like(-1.0, x)?, b.scalar_like(0.0, x)?);
            let s = b.select(neg, minus, zero)?;
            let s = b.select(pos, one, s)?;
            b.mul(g, s)?
        }
        UnaryOp::Exp => b.mul(g, y)?,
        UnaryOp::Log => b.div(g, x)?,
        UnaryOp::Sqrt => {
            let twice = b.scale(y, 2.0)?;
            b.div(g, twice)?
        }
        UnaryOp::Rsqrt => {
            // d/dx x^-1/2 = -1/2 · y / x
            let r = b.div(y, x)?;
            let r = b.scale(r, -0.5)?;
            b.mul(g, r)?
        }
        UnaryOp::Tanh => {
            let yy = b.mul(y, y)?;
            let one = b.scalar_like(1.0, y)?;
            let d = b.sub(one, yy)?;
            b.mul(g, d)?
        }
        UnaryOp::Sigmoid => {
            let one = b.scalar_like(1.0, y)?;
            let c = b.sub(one, y)?;
            let d = b.mul(y, c)?;
            b.mul(g, d)?
        }
        UnaryOp::Erf => {
            // 2/√π · exp(−x²)
            let xx = b.mul(x, x)?;
            let e = b.neg(xx)?;
            let e = b.unary(UnaryOp::Exp, e)?;
            let d = b.scale(e, 2.0 / PI.sqrt())?;
            b.mul(g, d)?
        }
        UnaryOp::Relu => {
            let pos = b.compare_to(CompareDir::Gt, x, 0.0)?;
            b.zero_where_not(pos, g)?
        }
        UnaryOp::GeluErf => {
            // ½(1 + erf(x/√2)) + x · exp(−x²/2)/√(2π)
            let xs = b.scale(x, std::f64::consts::FRAC_1_SQRT_2)?;
            let erf = b.unary(UnaryOp::Erf, xs)?;
            let one = b.scalar_like(1.0, x)?;
            let cdf = b.add(one, erf)?;
            let cdf = b.scale(cdf, 0.5)?;
            let xx = b.mul(x, x)?;
            let e = b.scale(xx, -0.5)?;
            let e = b.unary(UnaryOp::Exp, e)?;
            let pdf = b.scale(e, 1.0 / (2.0 * PI).sqrt())?;
            let xpdf = b.mul(x, pdf)?;
            let d = b.add(cdf, xpdf)?;
            b.mul(g, d)?
        }
        UnaryOp::GeluTanh => {
            // t = tanh(c·(x + a·x³)); ½(1 + t) + ½x(1 − t²)·c·(1 + 3a·x²)
            let (c, a) = ((2.0 / PI).sqrt(), 0.044715);
            let xx = b.mul(x, x)?;
            let xxx = b.mul(xx, x)?;
            let inner = b.scale(xxx, a)?;
            let inner = b.add(x, inner)?;
            let inner = b.scale(inner, c)?;
            let t = b.unary(UnaryOp::Tanh, inner)?;
            let one = b.scalar_like(1.0, x)?;
            let left = b.add(one, t)?;
            let left = b.scale(left, 0.5)?;
            let tt = b.mul(t, t)?;
            let sech2 = b.sub(one, tt)?;
            let poly = b.scale(xx, 3.0 * a)?;
            let poly = b.add(one, poly)?;
            let poly = b.scale(poly, 0.5 * c)?;
            let right = b.mul(x, sech2)?;
            let right = b.mul(right, poly)?;
            let d = b.add(left, right)?;
            b.mul(g, d)?
        }
        UnaryOp::Silu => {
            // σ(x) · (1 + x · (1 − σ(x)))
            let s = b.unary(UnaryOp::Sigmoid, x)?;
            let one = b.scalar_like(1.0, x)?;
            let c = b.sub(one, s)?;
            let xc = b.mul(x, c)?;
            let inner = b.add(one, xc)?;
            let d = b.mul(s, inner)?;
            b.mul(g, d)?
        }
        UnaryOp::Sin => {
            let c = b.unary(UnaryOp::Cos, x)?;
            b.mul(g, c)?
        }
        UnaryOp::Cos => {
            let s = b.unary(UnaryOp::Sin, x)?;
            let gs = b.mul(g, s)?;
            b.neg(gs)?
        }
        UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Not => return Ok(None),
    };
    Ok(Some(d))
}

fn binary(b: &mut Builder, k: BinaryOp, x: Value, z: Value, y: Value, g: Value) -> Result<Vec<Option<Value>>, String> {
    let (sx, sz) = (b.ty(x).shape, b.ty(z).shape);
    let (gx, gz) = match k {
        BinaryOp::Add => (g, g),
        BinaryOp::Sub => (g, b.neg(g)?),
        BinaryOp::Mul => (b.mul(g, z)?, b.mul(g, x)?),
        BinaryOp::Div => {
            let gx = b.div(g, z)?;
            let yz = b.div(y, z)?;
            let gyz = b.mul(g, yz)?;
            (gx, b.neg(gyz)?)
        }
        BinaryOp::Pow => {
            // PyTorch: g·z·x^(z−1), 0 where z = 0; g·y·log(x), 0 where x = 0 and z ≥ 0.
            let one = b.scalar_like(1.0, z)?;
            let zm1 = b.sub(z, one)?;
            let p = b.binary(BinaryOp::Pow, x, zm1)?;
            let p = b.mul(z, p)?;
            let gx = b.mul(g, p)?;
            let z0 = b.compare_to(CompareDir::Eq, z, 0.0)?;
            let gx = b.zero_where(z0, gx)?;
            let l = b.unary(UnaryOp::Log, x)?;
            let yl = b.mul(y, l)?;
            let gz = b.mul(g, yl)?;
            let x0 = b.compare_to(CompareDir::Eq, x, 0.0)?;
            let zp = b.compare_to(CompareDir::Ge, z, 0.0)?;
            let mask = b.binary(BinaryOp::And, x0, zp)?;
            (gx, b.zero_where(mask, gz)?)
        }
        BinaryOp::Max | BinaryOp::Min => {
            // PyTorch's maximum/minimum: the gradient goes to the larger (smaller)
            // operand, split in half on ties.
            let (lose_x, lose_z) =
                if k == BinaryOp::Max { (CompareDir::Lt, CompareDir::Gt) } else { (CompareDir::Gt, CompareDir::Lt) };
            let tie = b.compare(CompareDir::Eq, x, z)?;
            let half = b.scale(g, 0.5)?;
            let shared = b.select(tie, half, g)?;
            let cx = b.compare(lose_x, x, z)?;
            let cz = b.compare(lose_z, x, z)?;
            (b.zero_where(cx, shared)?, b.zero_where(cz, shared)?)
        }
        BinaryOp::And | BinaryOp::Or => return Ok(vec![None, None]),
    };
    Ok(vec![Some(b.unbroadcast(gx, &sx)?), Some(b.unbroadcast(gz, &sz)?)])
}

/// NumPy `matmul`: both operands promoted to `batch + [m, k]` and `batch + [k, n]`.
fn matmul(b: &mut Builder, x: Value, w: Value, g: Value) -> Result<Vec<Option<Value>>, String> {
    let (tx, tw) = (b.ty(x), b.ty(w));
    let ms = matmul_shape(&tx, &tw)?;
    if tw.rank() == 2 && tx.rank() >= 2 {
        // One matrix for every leading index of x (a layer's weight).
        let (dx, dw) = weight_products(b, x, w, g)?;
        return Ok(vec![Some(dx), Some(dw)]);
    }
    let nb = ms.batch.len();
    let with = |tail: [u64; 2]| -> Vec<u64> { ms.batch.iter().copied().chain(tail).collect() };
    let xs = if ms.lhs_vector { vec![1, ms.k] } else { tx.shape.clone() };
    let ws = if ms.rhs_vector { vec![ms.k, 1] } else { tw.shape.clone() };
    let xp = b.reshape(x, &xs)?;
    let wp = b.reshape(w, &ws)?;
    let xb = b.broadcast_to(xp, &with([ms.m, ms.k]))?;
    let wb = b.broadcast_to(wp, &with([ms.k, ms.n]))?;
    let gm = b.reshape(g, &with([ms.m, ms.n]))?;
    // dx = g · wᵀ over n; dw = xᵀ · g over m.
    let dx = b.dot(gm, wb, DotDims::batched(nb, nb + 1, nb + 1, None))?;
    let dw = b.dot(xb, gm, DotDims::batched(nb, nb, nb, None))?;
    let dx = b.unbroadcast(dx, &xs)?;
    let dw = b.unbroadcast(dw, &ws)?;
    Ok(vec![Some(b.reshape(dx, &tx.shape)?), Some(b.reshape(dw, &tw.shape)?)])
}

/// The cotangents of `x · w` for `x` [..., k] and a matrix `w` [k, n], from
/// `g` [..., n]: dx = g · wᵀ, and dw = x₂ᵀ · g₂ with every leading dimension
/// of x and g flattened into rows, one product for them all.
fn weight_products(b: &mut Builder, x: Value, w: Value, g: Value) -> Result<(Value, Value), String> {
    let tx = b.ty(x);
    let rx = tx.rank();
    let dx = b.dot(g, w, DotDims::batched(0, rx - 1, 1, None))?;
    let rows: u64 = tx.shape[..rx - 1].iter().product();
    let n = b.ty(w).shape[1];
    let x2 = b.reshape(x, &[rows, tx.shape[rx - 1]])?;
    let g2 = b.reshape(g, &[rows, n])?;
    let dw = b.dot(x2, g2, DotDims::batched(0, 0, 0, None))?;
    Ok((dx, dw))
}

/// A general dot: each operand's cotangent is a dot of `g` with the other
/// operand, transposed back into the operand's layout.
fn dot(b: &mut Builder, d: &DotDims, x: Value, w: Value, g: Value) -> Result<Vec<Option<Value>>, String> {
    let (rx, rw) = (b.ty(x).rank(), b.ty(w).rank());
    let free = |rank: usize, batch: &[usize], contract: &[usize]| -> Vec<usize> {
        (0..rank).filter(|i| !batch.contains(i) && !contract.contains(i)).collect()
    };
    let (fx, fw) = (free(rx, &d.lhs_batch, &d.lhs_contract), free(rw, &d.rhs_batch, &d.rhs_contract));
    let nb = d.lhs_batch.len();
    let g_batch: Vec<usize> = (0..nb).collect();
    let g_x_free: Vec<usize> = (nb..nb + fx.len()).collect();
    let g_w_free: Vec<usize> = (nb + fx.len()..nb + fx.len() + fw.len()).collect();
    // Pairs (x contracting dim, w contracting dim), sorted by one side.
    let pairs: Vec<(usize, usize)> = d.lhs_contract.iter().copied().zip(d.rhs_contract.iter().copied()).collect();

    // dx = dot(g, w): g's w-free dims with w's free dims; result [batch, x free, w's contracting (ascending)].
    let dx_dims = DotDims {
        lhs_batch: g_batch.clone(),
        rhs_batch: d.rhs_batch.clone(),
        lhs_contract: g_w_free.clone(),
        rhs_contract: fw.clone(),
        acc: None,
    };
    let dx = b.dot(g, w, dx_dims)?;
    let mut by_w = pairs.clone();
    by_w.sort_by_key(|&(_, wd)| wd);
    let dx_layout: Vec<usize> =
        d.lhs_batch.iter().copied().chain(fx.iter().copied()).chain(by_w.iter().map(|&(xd, _)| xd)).collect();
    let dx = b.transpose(dx, positions(&dx_layout))?;

    // dw = dot(x, g): x's free dims with g's x-free dims; result [batch, x's contracting (ascending), w free].
    let dw_dims = DotDims {
        lhs_batch: d.lhs_batch.clone(),
        rhs_batch: g_batch,
        lhs_contract: fx,
        rhs_contract: g_x_free,
        acc: None,
    };
    let dw = b.dot(x, g, dw_dims)?;
    let mut by_x = pairs;
    by_x.sort_by_key(|&(xd, _)| xd);
    let dw_layout: Vec<usize> = d.rhs_batch.iter().copied().chain(by_x.iter().map(|&(_, wd)| wd)).chain(fw).collect();
    let dw = b.transpose(dw, positions(&dw_layout))?;
    Ok(vec![Some(dx), Some(dw)])
}

/// The permutation that puts dimension `layout[i]` of an operand at place `layout[i]`:
/// `layout` lists, for each result dimension, the operand dimension it is.
fn positions(layout: &[usize]) -> Vec<usize> {
    let mut perm = vec![0; layout.len()];
    for (i, &d) in layout.iter().enumerate() {
        perm[d] = i;
    }
    perm
}

/// A reduction's cotangent: `g` (with or without the kept dimensions) spread
/// back over the reduced axes.
fn reduce(b: &mut Builder, kind: ReduceKind, axes: &[usize], x: Value, y: Value, g: Value) -> Built {
    let tx = b.ty(x);
    let kept: Vec<u64> = tx.shape.iter().enumerate().map(|(i, &n)| if axes.contains(&i) { 1 } else { n }).collect();
    let gk = b.reshape(g, &kept)?;
    let gb = b.broadcast_to(gk, &tx.shape)?;
    match kind {
        ReduceKind::Sum => Ok(gb),
        ReduceKind::Mean => {
            let n: u64 = axes.iter().map(|&a| tx.shape[a]).product();
            b.scale(gb, 1.0 / n as f64)
        }
        ReduceKind::Max | ReduceKind::Min => {
            // PyTorch's amax/amin: the gradient is shared evenly by the tied extremes.
            let yk = b.reshape(y, &kept)?;
            let hit = b.compare(CompareDir::Eq, x, yk)?;
            let ones = b.cast(hit, tx.dtype)?;
            let count = b.sum(ones, axes.to_vec(), true)?;
            let share = b.div(gk, count)?;
            let share = b.broadcast_to(share, &tx.shape)?;
            b.zero_where_not(hit, share)
        }
    }
}

/// A strided slice's cotangent: `g` spread back to its places, zeros between
/// and around them (one dimension at a time).
fn slice(b: &mut Builder, x: Value, starts: &[u64], limits: &[u64], strides: &[u64], g: Value) -> Built {
    let shape = b.ty(x).shape;
    let mut cur = g;
    for d in 0..shape.len() {
        let (s, l, st) = (starts[d], limits[d], strides[d]);
        if st > 1 {
            // [.., n, ..] → [.., n, 1, ..] → pad to [.., n, st, ..] → [.., n·st, ..], cropped to l − s.
            let mut t = b.ty(cur).shape;
            let n = t[d];
            t.insert(d + 1, 1);
            let spread = b.reshape(cur, &t)?;
            let mut high = vec![0i64; t.len()];
            high[d + 1] = st as i64 - 1;
            let spread = b.pad(spread, vec![0; t.len()], high)?;
            let mut flat = b.ty(cur).shape;
            flat[d] = n * st;
            let spread = b.reshape(spread, &flat)?;
            let mut crop = vec![0i64; flat.len()];
            crop[d] = (l - s) as i64 - (n * st) as i64;
            cur = b.pad(spread, vec![0; flat.len()], crop)?;
        }
        let rank = shape.len();
        let (mut low, mut high) = (vec![0i64; rank], vec![0i64; rank]);
        low[d] = s as i64;
        high[d] = (shape[d] - l) as i64;
        cur = b.pad(cur, low, high)?;
    }
    Ok(cur)
}

fn layer_norm(b: &mut Builder, x: &[Value], axis: usize, epsilon: f64, g: Value) -> Result<Vec<Option<Value>>, String> {
    let xv = x[0];
    let tx = b.ty(xv);
    let axes: Vec<usize> = (axis..tx.rank()).collect();
    let lead: Vec<usize> = (0..axis).collect();
    let n: u64 = axes.iter().map(|&a| tx.shape[a]).product();
    let mean = |b: &mut Builder, v: Value| -> Built {
        let s = b.sum(v, axes.clone(), true)?;
        b.scale(s, 1.0 / n as f64)
    };
    // x̂ = (x − μ) · r, r = 1/√(σ² + ε)
    let mu = mean(b, xv)?;
    let c = b.sub(xv, mu)?;
    let cc = b.mul(c, c)?;
    let var = mean(b, cc)?;
    let eps = b.scalar_like(epsilon, xv)?;
    let ve = b.add(var, eps)?;
    let r = b.unary(UnaryOp::Rsqrt, ve)?;
    let xhat = b.mul(c, r)?;
    let mut out = vec![None; x.len()];
    let gxhat = match x.get(1) {
        Some(&scale) => {
            let gx = b.mul(g, xhat)?;
            out[1] = Some(b.sum(gx, lead.clone(), false)?);
            b.mul(g, scale)?
        }
        None => g,
    };
    if x.len() > 2 {
        out[2] = Some(b.sum(g, lead, false)?);
    }
    // dx = r · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂))
    let m1 = mean(b, gxhat)?;
    let gx = b.mul(gxhat, xhat)?;
    let m2 = mean(b, gx)?;
    let t = b.mul(xhat, m2)?;
    let d = b.sub(gxhat, m1)?;
    let d = b.sub(d, t)?;
    out[0] = Some(b.mul(r, d)?);
    Ok(out)
}

fn rms_norm(b: &mut Builder, x: &[Value], epsilon: f64, g: Value) -> Result<Vec<Option<Value>>, String> {
    let xv = x[0];
    let tx = b.ty(xv);
    let last = tx.rank() - 1;
    let n = tx.shape[last];
    // x̂ = x · r, r = 1/√(mean(x²) + ε)
    let xx = b.mul(xv, xv)?;
    let ms = b.sum(xx, vec![last], true)?;
    let ms = b.scale(ms, 1.0 / n as f64)?;
    let eps = b.scalar_like(epsilon, xv)?;
    let me = b.add(ms, eps)?;
    let r = b.unary(UnaryOp::Rsqrt, me)?;
    let xhat = b.mul(xv, r)?;
    let mut out = vec![None; x.len()];
    let gxhat = match x.get(1) {
        Some(&scale) => {
            let gx = b.mul(g, xhat)?;
            out[1] = Some(b.sum(gx, (0..last).collect(), false)?);
            b.mul(g, scale)?
        }
        None => g,
    };
    // dx = r · (ĝ − x̂ · mean(ĝ ⊙ x̂))
    let gx = b.mul(gxhat, xhat)?;
    let m = b.sum(gx, vec![last], true)?;
    let m = b.scale(m, 1.0 / n as f64)?;
    let t = b.mul(xhat, m)?;
    let d = b.sub(gxhat, t)?;
    out[0] = Some(b.mul(r, d)?);
    Ok(out)
}

/// Attention's probabilities are recomputed (the fused op does not expose
/// them), then the usual backward of softmax(q·kᵀ·s + mask)·v.
fn attention(
    b: &mut Builder,
    x: &[Value],
    causal: bool,
    scale: Option<f64>,
    g: Value,
) -> Result<Vec<Option<Value>>, String> {
    let (q, k, v) = (x[0], x[1], x[2]);
    let tq = b.ty(q);
    let r = tq.rank();
    let nb = r - 2;
    let s = scale.unwrap_or(1.0 / (tq.shape[r - 1] as f64).sqrt());
    let scores = b.dot(q, k, DotDims::batched(nb, r - 1, r - 1, None))?;
    let mut scores = b.scale(scores, s)?;
    if let Some(&mask) = x.get(3) {
        scores = b.add(scores, mask)?;
    }
    if causal {
        let shape = b.ty(scores).shape;
        let row = b.op(Op::Iota { dtype: crate::ir::dtype::DType::I64, shape: shape.clone(), axis: nb }, &[])?;
        let col = b.op(Op::Iota { dtype: crate::ir::dtype::DType::I64, shape, axis: nb + 1 }, &[])?;
        let future = b.compare(CompareDir::Gt, col, row)?;
        let ninf = b.scalar_like(f64::NEG_INFINITY, scores)?;
        scores = b.select(future, ninf, scores)?;
    }
    let p = b.op(Op::Softmax { axis: r - 1 }, &[scores])?;
    let dv = b.dot(p, g, DotDims::batched(nb, nb, nb, None))?;
    let dp = b.dot(g, v, DotDims::batched(nb, r - 1, r - 1, None))?;
    // dS = P ⊙ (dP − Σ dP ⊙ P)
    let dpp = b.mul(dp, p)?;
    let sum = b.sum(dpp, vec![r - 1], true)?;
    let diff = b.sub(dp, sum)?;
    let ds = b.mul(p, diff)?;
    let dss = b.scale(ds, s)?;
    let dq = b.dot(dss, k, DotDims::batched(nb, r - 1, nb, None))?;
    let dk = b.dot(dss, q, DotDims::batched(nb, nb, nb, None))?;
    let mut out = vec![Some(dq), Some(dk), Some(dv)];
    if let Some(&mask) = x.get(3) {
        let sm = b.ty(mask).shape;
        out.push(Some(b.unbroadcast(ds, &sm)?));
    }
    Ok(out)
}

/// `activation(x·w + b)`: the pre-activation is recomputed when there is an activation.
fn linear(
    b: &mut Builder,
    x: &[Value],
    activation: Option<UnaryOp>,
    y: Value,
    g: Value,
) -> Result<Vec<Option<Value>>, String> {
    let (xv, w) = (x[0], x[1]);
    let gz = match activation {
        None => g,
        Some(a) => {
            // The rules read the pre-activation as the operand and `y` as the result.
            let pre = b.op(Op::Linear { activation: None, acc: None }, x)?;
            unary(b, a, pre, y, g)?.ok_or_else(|| format!("activation `{}` has no gradient", a.name()))?
        }
    };
    let (dx, dw) = weight_products(b, xv, w, gz)?;
    let mut out = vec![Some(dx), Some(dw)];
    if x.len() > 2 {
        // db = Σ gz over every leading dimension.
        out.push(Some(b.sum(gz, (0..b.ty(xv).rank() - 1).collect(), false)?));
    }
    Ok(out)
}

/// A window op's input padded as the op pads it (with `value`), and for each
/// kernel offset `(p, q)` the strided slice of it that offset reads: the
/// operand of every output position, `[N, C, Ho, Wo]`.
struct Windows {
    padded: Value,
    /// Per offset, row-major over the kernel: the slice's bounds.
    offsets: Vec<(Vec<u64>, Vec<u64>, Vec<u64>)>,
    low: Vec<i64>,
    high: Vec<i64>,
}

impl Windows {
    fn new(b: &mut Builder, x: Value, kernel: [u64; 2], w: &Window2d, out: &[u64], value: f64) -> Result<Self, String> {
        let p = w.padding;
        let (low, high) = (vec![0, 0, p[0] as i64, p[2] as i64], vec![0, 0, p[1] as i64, p[3] as i64]);
        let padded = if low.iter().chain(&high).all(|&v| v == 0) {
            x
        } else {
            b.op(Op::Pad { low: low.clone(), high: high.clone(), value }, &[x])?
        };
        let shape = b.ty(padded).shape;
        let mut offsets = Vec::new();
        for i in 0..kernel[0] {
            for j in 0..kernel[1] {
                let (r0, c0) = (i * w.dilation[0], j * w.dilation[1]);
                let starts = vec![0, 0, r0, c0];
                let limits =
                    vec![shape[0], shape[1], r0 + (out[2] - 1) * w.stride[0] + 1, c0 + (out[3] - 1) * w.stride[1] + 1];
                offsets.push((starts, limits, vec![1, 1, w.stride[0], w.stride[1]]));
            }
        }
        Ok(Windows { padded, offsets, low, high })
    }

    /// The slice offset `k` reads.
    fn read(&self, b: &mut Builder, k: usize) -> Built {
        let (starts, limits, strides) = self.offsets[k].clone();
        b.op(Op::Slice { starts, limits, strides }, &[self.padded])
    }

    /// `g_k` (one per offset, or `None`) put back where offset `k` read, summed,
    /// and the padding cropped: the input's cotangent.
    fn scatter(&self, b: &mut Builder, parts: Vec<Option<Value>>) -> Built {
        let mut sum = None;
        for (k, part) in parts.into_iter().enumerate() {
            let Some(part) = part else { continue };
            let (starts, limits, strides) = &self.offsets[k];
            let placed = slice(b, self.padded, starts, limits, strides, part)?;
            sum = Some(match sum {
                Some(acc) => b.add(acc, placed)?,
                None => placed,
            });
        }
        let sum = sum.ok_or("a window op without offsets")?;
        let neg = |v: &[i64]| v.iter().map(|p| -p).collect();
        b.pad(sum, neg(&self.low), neg(&self.high))
    }
}

/// Convolution, offset by offset over the kernel: each offset reads a strided
/// slice of the padded input; per group, its input cotangent is `g` times the
/// weights at that offset and its weight cotangent `g` against the slice.
fn conv2d(b: &mut Builder, x: &[Value], w: &Window2d, groups: u64, g: Value) -> Result<Vec<Option<Value>>, String> {
    let (xv, wv) = (x[0], x[1]);
    let (tx, tw, tg) = (b.ty(xv), b.ty(wv), b.ty(g));
    let (n, c) = (tx.shape[0], tx.shape[1]);
    let (o, cg, kh, kw) = (tw.shape[0], tw.shape[1], tw.shape[2], tw.shape[3]);
    let (ho, wo) = (tg.shape[2], tg.shape[3]);
    let og = o / groups;
    let win = Windows::new(b, xv, [kh, kw], w, &tg.shape, 0.0)?;
    // g as [N, G, Og, Ho, Wo]; the weights as [G, Og, Cg, kh·kw].
    let gg = b.reshape(g, &[n, groups, og, ho, wo])?;
    let wg = b.reshape(wv, &[groups, og, cg, kh * kw])?;
    let (mut dx_parts, mut dw_parts) = (Vec::new(), Vec::new());
    for k in 0..(kh * kw) as usize {
        // The weights at offset k: [G, Og, Cg].
        let wk = b.op(
            Op::Slice {
                starts: vec![0, 0, 0, k as u64],
                limits: vec![groups, og, cg, k as u64 + 1],
                strides: vec![1, 1, 1, 1],
            },
            &[wg],
        )?;
        let wk = b.reshape(wk, &[groups, og, cg])?;
        // dx_k[n, g, cg, i, j] = Σ_og gg[n, g, og, i, j] · wk[g, og, cg] → [G, N, Ho, Wo, Cg].
        let dims =
            DotDims { lhs_batch: vec![1], rhs_batch: vec![0], lhs_contract: vec![2], rhs_contract: vec![1], acc: None };
        let dx = b.dot(gg, wk, dims)?;
        let dx = b.transpose(dx, vec![1, 0, 4, 2, 3])?;
        dx_parts.push(Some(b.reshape(dx, &[n, c, ho, wo])?));
        // dw_k[g, og, cg] = Σ_{n,i,j} gg[n, g, og, i, j] · x_k[n, g, cg, i, j].
        let xk = win.read(b, k)?;
        let xk = b.reshape(xk, &[n, groups, cg, ho, wo])?;
        let dims = DotDims {
            lhs_batch: vec![1],
            rhs_batch: vec![1],
            lhs_contract: vec![0, 3, 4],
            rhs_contract: vec![0, 3, 4],
            acc: None,
        };
        let dw = b.dot(gg, xk, dims)?;
        dw_parts.push(b.reshape(dw, &[o, cg, 1])?);
    }
    let dx = win.scatter(b, dx_parts)?;
    let dw = match dw_parts.as_slice() {
        [one] => *one,
        parts => b.op(Op::Concat { axis: 2 }, parts)?,
    };
    let dw = b.reshape(dw, &[o, cg, kh, kw])?;
    let mut out = vec![Some(dx), Some(dw)];
    if x.len() > 2 {
        out.push(Some(b.sum(g, vec![0, 2, 3], false)?));
    }
    Ok(out)
}

/// Pooling, offset by offset: an average spreads `g / (kh·kw)` to every
/// position it read (padding included, PyTorch's default); a maximum sends
/// `g` to the first position in the window that holds it (PyTorch's scan order).
fn pool(b: &mut Builder, x: Value, y: Value, kernel: [u64; 2], w: &Window2d, max: bool, g: Value) -> Built {
    let fill = if max { f64::NEG_INFINITY } else { 0.0 };
    let out = b.ty(g).shape;
    let win = Windows::new(b, x, kernel, w, &out, fill)?;
    let count = (kernel[0] * kernel[1]) as usize;
    let mut parts = Vec::with_capacity(count);
    if !max {
        let share = b.scale(g, 1.0 / count as f64)?;
        parts.resize(count, Some(share));
        return win.scatter(b, parts);
    }
    let mut taken: Option<Value> = None;
    for k in 0..count {
        let xk = win.read(b, k)?;
        let hit = b.compare(CompareDir::Eq, xk, y)?;
        let first = match taken {
            None => hit,
            Some(t) => {
                let free = b.unary(UnaryOp::Not, t)?;
                b.binary(BinaryOp::And, hit, free)?
            }
        };
        taken = Some(match taken {
            None => first,
            Some(t) => b.binary(BinaryOp::Or, t, first)?,
        });
        parts.push(Some(b.zero_where_not(first, g)?));
    }
    win.scatter(b, parts)
}
