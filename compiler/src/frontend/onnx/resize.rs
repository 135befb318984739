//! Resize (and Upsample, its predecessor) in nearest, linear and cubic modes:
//! axis by axis, each output position mapped to the input by the coordinate
//! transformation ONNX names, then a gather of the nearest input position, or
//! a weighted sum of gathers of its two (linear) or four (cubic) neighbours.

use serde_json::json;
use xlac_core::DType;

use super::ops::{concrete, Res};
use super::tensor::{Dim, Elem, Known};
use super::{bad, unsupported, Importer, Node, Problem, Rt, Val};

impl Importer<'_> {
    pub(super) fn resize(&mut self, n: &Node) -> Res {
        let x = self.rt_input(n, 0)?;
        let r = x.shape.len();
        let dims = concrete(&x.shape)?;
        let upsample = n.proto.op_type == "Upsample";
        let mode = n.string("mode", "nearest");
        if !matches!(mode.as_str(), "nearest" | "linear" | "bilinear" | "cubic") {
            return bad(format!("{} mode `{mode}`", n.proto.op_type));
        }
        let (transform, nearest) = if upsample {
            ("asymmetric".to_string(), "floor".to_string())
        } else {
            let t = n.string("coordinate_transformation_mode", if n.opset < 11 { "asymmetric" } else { "half_pixel" });
            let m = n.string("nearest_mode", if n.opset < 11 { "floor" } else { "round_prefer_floor" });
            (t, m)
        };
        if n.int("antialias", 0) != 0 {
            return unsupported("Resize with antialias");
        }
        let policy = n.string("keep_aspect_ratio_policy", "stretch");
        if !matches!(policy.as_str(), "stretch" | "not_larger" | "not_smaller") {
            return bad(format!("keep_aspect_ratio_policy `{policy}`"));
        }
        let a_coef = n.float("cubic_coeff_a", -0.75);
        let exclude_outside = n.int("exclude_outside", 0) != 0;
        n.has("extrapolation_value");
        let axes: Vec<usize> = match n.ints("axes") {
            Some(a) => a.iter().map(|&a| if a < 0 { (a + r as i64) as usize } else { a as usize }).collect(),
            None => (0..r).collect(),
        };
        // Scales and sizes: attributes (Upsample 7-8), inputs (Upsample 9, Resize 10: scales; 11+: roi, scales, sizes).
        let floats = |k: Option<std::rc::Rc<Known>>| k.and_then(|k| k.floats()).filter(|v| !v.is_empty());
        let (scales, sizes) = if upsample && n.opset < 9 {
            (n.floats("scales").map(|v| v.iter().map(|&f| f as f64).collect()), None)
        } else if upsample || n.opset < 11 {
            (floats(self.const_input(n, 1, "scales")?), None)
        } else {
            let scales = floats(self.const_input(n, 2, "scales")?);
            let sizes = self.const_input(n, 3, "sizes")?.and_then(|k| k.ints()).filter(|v| !v.is_empty());
            (scales, sizes)
        };
        let mut out = dims.clone();
        let mut scale = vec![1.0; r];
        // not_larger / not_smaller: one scale for every axis, the smallest / largest the sizes ask for.
        let kept = match (&sizes, policy.as_str()) {
            (Some(s), "not_larger" | "not_smaller") => {
                let ratios = axes.iter().zip(s).map(|(&a, &o)| o as f64 / dims.get(a).map_or(1, |&d| d.max(1)) as f64);
                if policy == "not_larger" {
                    ratios.fold(f64::INFINITY, f64::min).into()
                } else {
                    ratios.fold(0.0, f64::max).into()
                }
            }
            _ => None,
        };
        for (k, &a) in axes.iter().enumerate() {
            if a >= r {
                return bad(format!("axis {a} for rank {r}"));
            }
            match (&sizes, &scales) {
                (Some(_), _) if kept.is_some() => {
                    let f: f64 = kept.expect("checked");
                    scale[a] = f;
                    out[a] = (dims[a] as f64 * f).round() as u64;
                }
                (Some(s), _) => {
                    let o = *s.get(k).ok_or(Problem::Invalid("fewer sizes than axes".into()))?;
                    out[a] = o.max(0) as u64;
                    scale[a] = out[a] as f64 / dims[a] as f64;
                }
                (None, Some(s)) => {
                    let f = *s.get(k).ok_or(Problem::Invalid("fewer scales than axes".into()))?;
                    if f <= 0.0 {
                        return bad(format!("scale {f}"));
                    }
                    scale[a] = f;
                    out[a] = (dims[a] as f64 * f).floor() as u64;
                }
                (None, None) => return bad("neither scales nor sizes"),
            }
        }
        let mut y = x.clone();
        for a in 0..r {
            if out[a] == dims[a] && scale[a] == 1.0 {
                continue;
            }
            let coords: Vec<f64> = (0..out[a])
                // ONNX's formulas take the resized length unfloored: the input's times the scale.
                .map(|o| source_coordinate(&transform, o as f64, scale[a], dims[a] as f64, dims[a] as f64 * scale[a]))
                .collect::<Result<_, _>>()?;
            y = match mode.as_str() {
                "nearest" => {
                    let idx: Vec<i64> =
                        coords.iter().map(|&c| nearest_index(&nearest, c, dims[a])).collect::<Result<_, _>>()?;
                    self.gather_along(&y, a, &idx)?
                }
                "cubic" => {
                    let taps = cubic_taps(&coords, dims[a], a_coef, exclude_outside);
                    self.interpolate_along(&y, a, &taps)?
                }
                _ => self.interpolate_along(&y, a, &linear_taps(&coords, dims[a]))?,
            };
        }
        Ok(vec![Val::Rt(y)])
    }

    /// `x` at `idx` along `axis`.
    fn gather_along(&mut self, x: &Rt, axis: usize, idx: &[i64]) -> Result<Rt, Problem> {
        let k = Known::new(DType::I64, vec![idx.len() as u64], idx.iter().map(|&i| Elem::Int(i)).collect());
        let k = self.write_known(&k, &self.hint.clone())?;
        let mut shape = x.shape.clone();
        shape[axis] = Dim::size(idx.len() as u64);
        Ok(self.emit("gather", &[x, &k], json!({"axis": axis}), x.dtype, shape))
    }

    /// `Σ_k x[taps[k].0] · taps[k].1` along `axis`: each tap an input index
    /// and a weight per output position.
    fn interpolate_along(&mut self, x: &Rt, axis: usize, taps: &[(Vec<i64>, Vec<f64>)]) -> Result<Rt, Problem> {
        if !x.dtype.is_float() {
            return unsupported(format!("interpolating Resize of {}", x.dtype));
        }
        let mut acc: Option<Rt> = None;
        for (idx, w) in taps {
            let g = self.gather_along(x, axis, idx)?;
            let mut wshape = vec![1u64; x.shape.len()];
            wshape[axis] = w.len() as u64;
            let w = Known::new(x.dtype, wshape, w.iter().map(|&v| Elem::Float(v)).collect());
            let w = self.write_known(&w, &self.hint.clone())?;
            let term = self.emit("mul", &[&g, &w], json!({}), x.dtype, g.shape.clone());
            acc = Some(match acc {
                None => term,
                Some(a) => self.emit("add", &[&a, &term], json!({}), x.dtype, a.shape.clone()),
            });
        }
        acc.ok_or(Problem::Invalid("no interpolation taps".into()))
    }
}

/// Linear interpolation's two taps: the neighbours of each coordinate
/// (clamped to the input, as the reference pads with the edge values).
fn linear_taps(coords: &[f64], len: u64) -> Vec<(Vec<i64>, Vec<f64>)> {
    let last = len as i64 - 1;
    let (mut i0, mut i1, mut w0, mut w1) = (vec![], vec![], vec![], vec![]);
    for &c in coords {
        let f = c.floor();
        let r = c - f;
        i0.push((f as i64).clamp(0, last));
        i1.push((f as i64 + 1).clamp(0, last));
        w0.push(1.0 - r);
        w1.push(r);
    }
    vec![(i0, w0), (i1, w1)]
}

/// Cubic convolution's four taps (Keys' kernel with coefficient `a`) at
/// `floor(c) - 1 ..= floor(c) + 2`, clamped to the input; with
/// `exclude_outside`, taps outside it weigh 0 and the rest are renormalised.
fn cubic_taps(coords: &[f64], len: u64, a: f64, exclude_outside: bool) -> Vec<(Vec<i64>, Vec<f64>)> {
    let kernel = |t: f64| {
        let t = t.abs();
        if t <= 1.0 {
            ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
        } else if t < 2.0 {
            ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
        } else {
            0.0
        }
    };
    let last = len as i64 - 1;
    let mut taps: Vec<(Vec<i64>, Vec<f64>)> = vec![(vec![], vec![]); 4];
    for &c in coords {
        let f = c.floor();
        let r = c - f;
        let mut w: Vec<f64> = (0..4).map(|k| kernel(r - (k as f64 - 1.0))).collect();
        let idx: Vec<i64> = (0..4).map(|k| f as i64 + k - 1).collect();
        if exclude_outside {
            for k in 0..4 {
                if idx[k] < 0 || idx[k] > last {
                    w[k] = 0.0;
                }
            }
            let sum: f64 = w.iter().sum();
            if sum != 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            }
        }
        for k in 0..4 {
            taps[k].0.push(idx[k].clamp(0, last));
            taps[k].1.push(w[k]);
        }
    }
    taps
}

/// The input coordinate of output position `o` (ONNX's coordinate_transformation_mode).
fn source_coordinate(mode: &str, o: f64, scale: f64, len: f64, out: f64) -> Result<f64, Problem> {
    Ok(match mode {
        "half_pixel" => (o + 0.5) / scale - 0.5,
        "half_pixel_symmetric" => {
            // The half-pixel grid re-centred where the output's length was rounded down.
            let adjustment = out.floor() / out;
            let offset = len / 2.0 * (1.0 - adjustment);
            offset + (o + 0.5) / scale - 0.5
        }
        "pytorch_half_pixel" if out > 1.0 => (o + 0.5) / scale - 0.5,
        "pytorch_half_pixel" => 0.0,
        "align_corners" if out > 1.0 => o * (len - 1.0) / (out - 1.0),
        "align_corners" => 0.0,
        "asymmetric" => o / scale,
        "tf_half_pixel_for_nn" => (o + 0.5) / scale,
        m => return unsupported(format!("coordinate_transformation_mode `{m}`")),
    })
}

/// The nearest input index to coordinate `c` (ONNX's nearest_mode), clamped to the input.
fn nearest_index(mode: &str, c: f64, len: u64) -> Result<i64, Problem> {
    let i = match mode {
        "round_prefer_floor" if c.fract() == 0.5 => c.floor(),
        "round_prefer_ceil" if c.fract() == 0.5 => c.ceil(),
        "round_prefer_floor" | "round_prefer_ceil" => c.round(),
        "floor" => c.floor(),
        "ceil" => c.ceil(),
        m => return unsupported(format!("nearest_mode `{m}`")),
    };
    Ok((i as i64).clamp(0, len as i64 - 1))
}
