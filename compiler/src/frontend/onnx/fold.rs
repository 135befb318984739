//! Folding at import: operators whose inputs are known (initializers,
//! constants, shapes) computed by the importer instead of emitted, exactly
//! where a dimension is a shape symbol (sizes as products of symbols).

use xlac_core::DType;

use super::ops::{
    broadcast, cast_target, concrete, constant_of_shape_value, constant_value, reshape_target, squeeze_target,
};
use super::tensor::{product, Dim, Elem, Known};
use super::{bad, foldable, unsupported, Importer, Node, Problem, Val};

impl Importer<'_> {
    /// The result of `n` when it can be computed at import (its inputs known,
    /// or only their shapes needed); `None` to translate it.
    pub(super) fn fold(&mut self, n: &Node) -> Result<Option<Val>, Problem> {
        let op = n.proto.op_type.as_str();
        match op {
            "Constant" => {
                let k = constant_value(n)?;
                return Ok(Some(self.known(k)));
            }
            "Shape" | "Size" => {
                let shape = match self.input(n, 0)? {
                    Some(Val::Rt(r)) => r.shape,
                    Some(Val::Known(k)) => Dim::sizes(&k.shape),
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
            // Only input 1's element type matters: it may be computed at run time.
            "CastLike" => {
                let to = match self.input(n, 1)? {
                    Some(Val::Rt(r)) => r.dtype,
                    Some(Val::Known(k)) => k.dtype,
                    _ => return bad("input 1 is required"),
                };
                return Ok(match self.input(n, 0)? {
                    Some(Val::Known(k)) if foldable(&k) => Some(self.known(cast_known(&k, to, n))),
                    _ => None,
                });
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
            "Cast" => Some(cast_known(&k0, cast_target(n)?, n)),
            "Unsqueeze" | "Squeeze" => {
                let axes = self.axes_of(n, 1)?;
                let dims = Dim::sizes(&k0.shape);
                let t = squeeze_target(op, &dims, axes)?;
                Some(k0.reshaped(concrete(&t)?))
            }
            "Reshape" => match ks.get(1).cloned().flatten() {
                Some(s) => {
                    let dims = Dim::sizes(&k0.shape);
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
            "Add" | "Sub" | "Mul" | "Div" | "Equal" | "Less" | "Greater" | "Max" | "Min" | "And" | "Or" | "Xor"
                if ks.len() == 2 =>
            {
                let k1 = ks[1].clone().expect("two inputs");
                fold_binary(op, &k0, &k1)?
            }
            // ONNX's Mod: the divisor's sign (as Python's %) unless fmod = 1 (C's fmod).
            "Mod" if ks.len() == 2 && k0.dtype != DType::U64 => {
                let k1 = ks[1].clone().expect("two inputs");
                fold_binary(if n.int("fmod", 0) == 1 { "Fmod" } else { "Mod" }, &k0, &k1)?
            }
            "Not" => k0.ints().map(|v| {
                Known::new(DType::Bool, k0.shape.clone(), v.iter().map(|&b| Elem::Int((b == 0) as i64)).collect())
            }),
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

/// ONNX Range: `start, start + delta, ...` below `limit` (above, for a negative delta).
pub(super) fn range(start: &Known, limit: &Known, delta: &Known) -> Result<Known, Problem> {
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

/// `k` cast to `to` as `n` (a Cast or CastLike) casts it: as the translated
/// one (`Importer::onnx_cast`), saturated into an 8-bit float's range unless
/// `saturate = 0`.
fn cast_known(k: &Known, to: DType, n: &Node) -> Known {
    let mut elems = k.elems();
    if let Some(f) = to.float8().filter(|_| n.int("saturate", 1) != 0) {
        for e in &mut elems {
            if let Some(v) = e.as_f64().filter(|v| !v.is_nan()) {
                *e = Elem::Float(v.clamp(-f.max_finite(), f.max_finite()));
            }
        }
    }
    Known::new(to, k.shape.clone(), elems)
}

/// Elementwise `op` on two known tensors (broadcasting); symbols only where exact.
pub(super) fn fold_binary(op: &str, a: &Known, b: &Known) -> Result<Option<Known>, Problem> {
    let da = Dim::sizes(&a.shape);
    let db = Dim::sizes(&b.shape);
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
                    "Fmod" => Elem::Float(p % q),
                    "Equal" => Elem::Int((p == q) as i64),
                    "Less" => Elem::Int((p < q) as i64),
                    "Greater" => Elem::Int((p > q) as i64),
                    _ => return Ok(None),
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
                    "Mod" | "Fmod" if q == 0 => return bad("integer modulo by zero"),
                    "Mod" => {
                        let r = p.wrapping_rem(q);
                        Elem::Int(if r != 0 && (r < 0) != (q < 0) { r + q } else { r })
                    }
                    "Fmod" => Elem::Int(p.wrapping_rem(q)),
                    "And" => Elem::Int((p != 0 && q != 0) as i64),
                    "Or" => Elem::Int((p != 0 || q != 0) as i64),
                    "Xor" => Elem::Int(((p != 0) != (q != 0)) as i64),
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
pub(super) fn fold_symbolic(op: &str, x: &Elem, y: &Elem) -> Option<Elem> {
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
