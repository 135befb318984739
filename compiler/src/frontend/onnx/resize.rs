//! Resize (and Upsample, its predecessor) in nearest and linear modes: axis
//! by axis, each output position mapped to the input by the coordinate
//! transformation ONNX names, then a gather of the nearest input position,
//! or of the two neighbours weighted by their distances.

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
        if !matches!(mode.as_str(), "nearest" | "linear" | "bilinear") {
            return unsupported(format!("{} mode `{mode}`", n.proto.op_type));
        }
        let linear = mode != "nearest";
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
        if n.string("keep_aspect_ratio_policy", "stretch") != "stretch" {
            return unsupported("Resize with a keep_aspect_ratio_policy");
        }
        n.has("cubic_coeff_a");
        n.has("exclude_outside");
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
        for (k, &a) in axes.iter().enumerate() {
            if a >= r {
                return bad(format!("axis {a} for rank {r}"));
            }
            match (&sizes, &scales) {
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
            y = if linear {
                self.linear_along(&y, a, dims[a], &coords)?
            } else {
                let idx: Vec<i64> =
                    coords.iter().map(|&c| nearest_index(&nearest, c, dims[a])).collect::<Result<_, _>>()?;
                self.gather_along(&y, a, &idx)?
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

    /// Linear interpolation along `axis` at the (fractional) input coordinates `coords`, clamped to the edges.
    fn linear_along(&mut self, x: &Rt, axis: usize, len: u64, coords: &[f64]) -> Result<Rt, Problem> {
        if !x.dtype.is_float() {
            return unsupported(format!("linear Resize of {}", x.dtype));
        }
        let last = (len - 1) as f64;
        let clamped: Vec<f64> = coords.iter().map(|&c| c.clamp(0.0, last)).collect();
        let lo: Vec<i64> = clamped.iter().map(|c| c.floor() as i64).collect();
        let hi: Vec<i64> = lo.iter().map(|&l| (l + 1).min(last as i64)).collect();
        let w: Vec<Elem> = clamped.iter().zip(&lo).map(|(c, &l)| Elem::Float(c - l as f64)).collect();
        let a = self.gather_along(x, axis, &lo)?;
        let b = self.gather_along(x, axis, &hi)?;
        let mut wshape = vec![1u64; x.shape.len()];
        wshape[axis] = coords.len() as u64;
        let w = Known::new(x.dtype, wshape, w);
        let w = self.write_known(&w, &self.hint.clone())?;
        // a + (b - a)·w
        let d = self.emit("sub", &[&b, &a], json!({}), x.dtype, a.shape.clone());
        let dw = self.emit("mul", &[&d, &w], json!({}), x.dtype, a.shape.clone());
        Ok(self.emit("add", &[&a, &dw], json!({}), x.dtype, a.shape.clone()))
    }
}

/// The input coordinate of output position `o` (ONNX's coordinate_transformation_mode).
fn source_coordinate(mode: &str, o: f64, scale: f64, len: f64, out: f64) -> Result<f64, Problem> {
    Ok(match mode {
        "half_pixel" => (o + 0.5) / scale - 0.5,
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
