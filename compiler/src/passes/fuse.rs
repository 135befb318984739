//! Fusion: recognises the decomposed forms that exporters produce and rewrites
//! them into xlac's fused ops, which lower to one well-formed StableHLO
//! expansion each. Each rewrite happens in
//! place at the pattern's last node, and only when type inference on the
//! fused op gives that node's exact type; intermediate nodes stay for any
//! other user and DCE removes the rest. Commutative operands match in either
//! order; constants match up to f32 rounding.
//!
//! The patterns, and what is deliberately not matched, are listed in docs/passes.md.

use super::pattern::{binary, commuted, def, reduce_keep, splat, splat_near, square, unary};
use crate::ir::infer::infer;
use crate::ir::op::{BinaryOp, Op, ReduceKind, UnaryOp};
use crate::ir::{Module, Node, Value};

/// Rewrites every matching pattern once, in order; returns how many were fused.
pub fn run(m: &mut Module) -> usize {
    let mut rewrites = 0;
    for n in m.order().to_vec() {
        let out = m.node(n).output;
        let found = [softmax, log_softmax, layer_norm, layer_norm_affine, rms_norm, gelu_erf, gelu_tanh, silu, linear]
            .iter()
            .find_map(|f| f(m, out));
        if let Some((op, inputs)) = found {
            rewrites += usize::from(replace(m, n, op, inputs));
        } else if let Some(parts) = attention(m, out) {
            rewrites += usize::from(fuse_attention(m, n, parts));
        }
    }
    rewrites
}

/// Makes node `n` compute `op(inputs)` when that has exactly its type.
fn replace(m: &mut Module, n: Node, op: Op, inputs: Vec<Value>) -> bool {
    let types: Vec<_> = inputs.iter().map(|&v| &m.value(v).ty).collect();
    if infer(&op, &types).ok().as_ref() != Some(&m.value(m.node(n).output).ty) {
        return false;
    }
    let node = m.node_mut(n);
    node.op = op;
    node.inputs = inputs;
    true
}

type Match = Option<(Op, Vec<Value>)>;

/// `x` and axis `a` of `x - reduce_max(x, [a], keepdims)`.
fn max_shifted(m: &Module, d: Value) -> Option<(Value, usize)> {
    let (x, mx) = binary(m, d, BinaryOp::Sub)?;
    let (x2, axes) = reduce_keep(m, mx, ReduceKind::Max)?;
    match axes.as_slice() {
        [a] if x2 == x => Some((x, *a)),
        _ => None,
    }
}

fn softmax(m: &Module, y: Value) -> Match {
    let (e, s) = binary(m, y, BinaryOp::Div)?;
    let (e2, axes) = reduce_keep(m, s, ReduceKind::Sum)?;
    let (x, a) = max_shifted(m, unary(m, e, UnaryOp::Exp)?)?;
    (e2 == e && axes == [a]).then(|| (Op::Softmax { axis: a }, vec![x]))
}

fn log_softmax(m: &Module, y: Value) -> Match {
    let (d, l) = binary(m, y, BinaryOp::Sub)?;
    let (e, axes) = reduce_keep(m, unary(m, l, UnaryOp::Log)?, ReduceKind::Sum)?;
    let (x, a) = max_shifted(m, d)?;
    (unary(m, e, UnaryOp::Exp)? == d && axes == [a]).then(|| (Op::LogSoftmax { axis: a }, vec![x]))
}

/// `(v, ε)` of `v + ε` with ε a splat constant ≥ 0.
fn plus_epsilon(m: &Module, v: Value) -> Option<(Value, f64)> {
    commuted(m, v, BinaryOp::Add, |v, e| splat(m, e).filter(|&e| e >= 0.0 && e.is_finite()).map(|e| (v, e)))
}

/// `(c, inner)` of `c * rsqrt(inner)` or `c / sqrt(inner)`.
fn times_inverse_sqrt(m: &Module, y: Value) -> Option<(Value, Value)> {
    commuted(m, y, BinaryOp::Mul, |c, r| unary(m, r, UnaryOp::Rsqrt).map(|i| (c, i)))
        .or_else(|| binary(m, y, BinaryOp::Div).and_then(|(c, s)| unary(m, s, UnaryOp::Sqrt).map(|i| (c, i))))
}

/// True when `axes` are the trailing axes `k..rank`; returns `k`.
fn trailing(axes: &[usize], rank: usize) -> Option<usize> {
    let k = *axes.first()?;
    (axes.iter().copied().eq(k..rank)).then_some(k)
}

fn layer_norm(m: &Module, y: Value) -> Match {
    let (c, inner) = times_inverse_sqrt(m, y)?;
    let (var, eps) = plus_epsilon(m, inner)?;
    let (sq, axes) = reduce_keep(m, var, ReduceKind::Mean)?;
    let (x, mu) = binary(m, c, BinaryOp::Sub)?;
    let (x2, axes2) = reduce_keep(m, mu, ReduceKind::Mean)?;
    let axis = trailing(&axes, m.value(x).ty.rank())?;
    (square(m, sq)? == c && x2 == x && axes2 == axes).then(|| (Op::LayerNorm { axis, epsilon: eps }, vec![x]))
}

fn layer_norm_affine(m: &Module, y: Value) -> Match {
    let with = |ln: Value, p: Value, want_inputs: usize| match def(m, ln)? {
        (Op::LayerNorm { axis, epsilon }, ins) if ins.len() == want_inputs => {
            let mut ins = ins.clone();
            ins.push(p);
            Some((Op::LayerNorm { axis: *axis, epsilon: *epsilon }, ins))
        }
        _ => None,
    };
    commuted(m, y, BinaryOp::Mul, |ln, g| with(ln, g, 1))
        .or_else(|| commuted(m, y, BinaryOp::Add, |ln, b| with(ln, b, 2)))
}

fn rms_norm(m: &Module, y: Value) -> Match {
    let plain = || {
        let (x, inner) = times_inverse_sqrt(m, y)?;
        let (ms, eps) = plus_epsilon(m, inner)?;
        let (sq, axes) = reduce_keep(m, ms, ReduceKind::Mean)?;
        let last = m.value(x).ty.rank().checked_sub(1)?;
        (square(m, sq)? == x && axes == [last]).then(|| (Op::RmsNorm { epsilon: eps }, vec![x]))
    };
    plain().or_else(|| {
        commuted(m, y, BinaryOp::Mul, |r, w| match def(m, r)? {
            (Op::RmsNorm { epsilon }, ins) if ins.len() == 1 => {
                Some((Op::RmsNorm { epsilon: *epsilon }, vec![ins[0], w]))
            }
            _ => None,
        })
    })
}

/// The factors of a product tree of `mul` nodes, up to 4 deep.
fn factors(m: &Module, v: Value, depth: usize, out: &mut Vec<Value>) {
    match binary(m, v, BinaryOp::Mul) {
        Some((a, b)) if depth < 4 => {
            factors(m, a, depth + 1, out);
            factors(m, b, depth + 1, out);
        }
        _ => out.push(v),
    }
}

/// `(x, t)` when `y` is the product `0.5 · x · (1 + t)` in any order.
fn half_x_one_plus(m: &Module, y: Value) -> Option<(Value, Value)> {
    let mut f = Vec::new();
    factors(m, y, 0, &mut f);
    if f.len() != 3 {
        return None;
    }
    let half = f.iter().position(|&v| splat_near(m, v, 0.5))?;
    f.remove(half);
    let one_plus = |v: Value| commuted(m, v, BinaryOp::Add, |one, t| splat_near(m, one, 1.0).then_some(t));
    one_plus(f[1]).map(|t| (f[0], t)).or_else(|| one_plus(f[0]).map(|t| (f[1], t)))
}

fn gelu_erf(m: &Module, y: Value) -> Match {
    let (x, t) = half_x_one_plus(m, y)?;
    let u = unary(m, t, UnaryOp::Erf)?;
    let scaled = commuted(m, u, BinaryOp::Mul, |a, c| {
        (a == x && splat_near(m, c, std::f64::consts::FRAC_1_SQRT_2)).then_some(())
    })
    .or_else(|| {
        binary(m, u, BinaryOp::Div)
            .and_then(|(a, c)| (a == x && splat_near(m, c, std::f64::consts::SQRT_2)).then_some(()))
    });
    scaled.map(|()| (Op::Unary(UnaryOp::GeluErf), vec![x]))
}

/// True when `v` is `x³` as `pow(x, 3)` or a product of three `x`.
fn cube_of(m: &Module, v: Value, x: Value) -> bool {
    if let Some((b, e)) = binary(m, v, BinaryOp::Pow) {
        return b == x && splat_near(m, e, 3.0);
    }
    let mut f = Vec::new();
    factors(m, v, 0, &mut f);
    f.len() == 3 && f.iter().all(|&a| a == x)
}

fn gelu_tanh(m: &Module, y: Value) -> Match {
    let (x, t) = half_x_one_plus(m, y)?;
    let arg = unary(m, t, UnaryOp::Tanh)?;
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let inner = commuted(m, arg, BinaryOp::Mul, |c, w| splat_near(m, c, k).then_some(w))?;
    let cubic = commuted(m, inner, BinaryOp::Add, |a, p| (a == x).then_some(p))?;
    let ok = commuted(m, cubic, BinaryOp::Mul, |c, x3| (splat_near(m, c, 0.044715) && cube_of(m, x3, x)).then_some(()));
    ok.map(|()| (Op::Unary(UnaryOp::GeluTanh), vec![x]))
}

fn silu(m: &Module, y: Value) -> Match {
    commuted(m, y, BinaryOp::Mul, |x, s| {
        (unary(m, s, UnaryOp::Sigmoid)? == x).then(|| (Op::Unary(UnaryOp::Silu), vec![x]))
    })
}

fn linear(m: &Module, y: Value) -> Match {
    let with_bias = commuted(m, y, BinaryOp::Add, |mm, b| match def(m, mm)? {
        (Op::MatMul { acc }, ins) if m.value(ins[1]).ty.rank() == 2 && m.value(ins[0]).ty.rank() >= 1 => {
            Some((Op::Linear { activation: None, acc: *acc }, vec![ins[0], ins[1], b]))
        }
        _ => None,
    });
    with_bias.or_else(|| {
        let (Op::Unary(act), ins) = def(m, y)? else { return None };
        if !UnaryOp::ACTIVATIONS.contains(act) {
            return None;
        }
        match def(m, ins[0])? {
            (Op::Linear { activation: None, acc }, lin) => {
                Some((Op::Linear { activation: Some(*act), acc: *acc }, lin))
            }
            _ => None,
        }
    })
}

/// An attention found: its operands and scale, and for `k` the permutation
/// still to apply when the exporter transposed it to `kᵀ` in one step from
/// another layout (`[b, s, h, d]` to `[b, h, d, s]`).
struct AttentionParts {
    q: Value,
    k: Value,
    k_perm: Option<Vec<usize>>,
    v: Value,
    mask: Option<Value>,
    scale: f64,
}

fn attention(m: &Module, y: Value) -> Option<AttentionParts> {
    let (Op::MatMul { acc: None }, pv) = def(m, y)? else { return None };
    let (p, v) = (pv[0], pv[1]);
    let rank = m.value(p).ty.rank();
    let (Op::Softmax { axis }, s) = def(m, p)? else { return None };
    if *axis + 1 != rank {
        return None;
    }
    // scores = scaled [+ mask]; scaled = qk · c, qk / c or qk.
    let scaled_qk = |v: Value| -> Option<(Value, f64)> {
        commuted(m, v, BinaryOp::Mul, |qk, c| splat(m, c).map(|c| (qk, c)))
            .or_else(|| {
                binary(m, v, BinaryOp::Div).and_then(|(qk, c)| splat(m, c).filter(|&c| c != 0.0).map(|c| (qk, 1.0 / c)))
            })
            .filter(|(qk, _)| matches!(def(m, *qk), Some((Op::MatMul { acc: None }, _))))
            .or_else(|| matches!(def(m, v), Some((Op::MatMul { acc: None }, _))).then_some((v, 1.0)))
    };
    let (scores, mask) = (s[0], None);
    let ((qk, mut scale), mask) = match scaled_qk(scores) {
        Some(found) => (found, mask),
        None => commuted(m, scores, BinaryOp::Add, |a, mk| scaled_qk(a).map(|f| (f, Some(mk))))?,
    };
    let (Op::MatMul { acc: None }, qkt) = def(m, qk)? else { return None };
    // A scale may also sit on q or on kᵀ (PyTorch's export scales both by √c).
    let mut unscaled = |x: Value| match commuted(m, x, BinaryOp::Mul, |a, c| splat(m, c).map(|c| (a, c))) {
        Some((a, c)) => {
            scale *= c;
            a
        }
        None => x,
    };
    let (q, kt) = (unscaled(qkt[0]), unscaled(qkt[1]));
    let (Op::Transpose { perm }, k) = def(m, kt)? else { return None };
    let r = perm.len();
    if r < 2 {
        return None;
    }
    // kᵀ = transpose(k, perm): k is the source with the last two entries of perm swapped.
    let mut k_perm = perm.clone();
    k_perm.swap(r - 2, r - 1);
    let k_perm = (!k_perm.iter().enumerate().all(|(i, &p)| i == p)).then_some(k_perm);
    Some(AttentionParts { q, k: k[0], k_perm, v, mask, scale })
}

/// Makes node `n` the fused attention of `parts` when that has its exact
/// type, first adding the transpose that brings `k` to `[..., Lk, D]` if one is needed.
fn fuse_attention(m: &mut Module, n: Node, parts: AttentionParts) -> bool {
    let op = Op::Attention { causal: false, scale: Some(parts.scale), acc: None };
    let k_ty = match &parts.k_perm {
        None => m.value(parts.k).ty.clone(),
        Some(perm) => {
            let src = &m.value(parts.k).ty;
            crate::ir::types::TensorType { dtype: src.dtype, shape: perm.iter().map(|&p| src.shape[p]).collect() }
        }
    };
    let mut operands = vec![parts.q, parts.k, parts.v];
    operands.extend(parts.mask);
    let types: Vec<_> =
        operands.iter().enumerate().map(|(i, &v)| if i == 1 { k_ty.clone() } else { m.value(v).ty.clone() }).collect();
    let refs: Vec<_> = types.iter().collect();
    if infer(&op, &refs).ok().as_ref() != Some(&m.value(m.node(n).output).ty) {
        return false;
    }
    if let Some(perm) = parts.k_perm {
        let name = m.fresh_name(&format!("{}.keys", m.value(parts.k).name));
        operands[1] = m.insert_before(n, &name, Op::Transpose { perm }, vec![parts.k], k_ty);
    }
    replace(m, n, op, operands)
}
