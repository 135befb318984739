//! Convolutions and pooling in 1, 2 and 3 dimensions, and ConvTranspose:
//! ONNX's windows (pads or auto_pad, strides, dilations, ceil_mode) as
//! xlac's 2-D ops; a third dimension folded into the batch, tap by tap.

use serde_json::json;
use xlac_core::DType;

use super::ops::{concrete, Res};
use super::tensor::{Dim, Elem, Known};
use super::{bad, unsupported, Importer, Node, Problem, Rt, Val};

impl Importer<'_> {
    pub(super) fn conv(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let w = self.rt_input(n, 1)?;
        let spatial = x.shape.len().saturating_sub(2);
        if !(1..=3).contains(&spatial) {
            return unsupported(format!("{spatial}-D convolution (xlac has 1-D, 2-D and 3-D)"));
        }
        let kernel = concrete(&w.shape[2..])?;
        if n.ints("kernel_shape").is_some_and(|k| k.iter().map(|&v| v as u64).collect::<Vec<_>>() != kernel) {
            return bad("kernel_shape differs from the weight's shape");
        }
        let groups = n.int("group", 1);
        let w_ = window(n, &x.shape[2..], &kernel, false)?;
        let bias = self.optional_rt(n, 2)?;
        if spatial == 3 {
            return self.conv3d(&x, &w, bias.as_ref(), &w_, groups);
        }
        // 1-D: a 2-D convolution over a height of 1.
        let (x2, w2) =
            if spatial == 1 { (self.with_height(&x)?, self.with_height(&w)?) } else { (x.clone(), w.clone()) };
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
            return self.without_height(&y);
        }
        Ok(y)
    }

    /// A 1-D operand (`[N, C, L]`, a kernel `[O, I, K]`) as 2-D, its height 1.
    pub(super) fn with_height(&mut self, t: &Rt) -> Result<Rt, Problem> {
        let mut s = t.shape.clone();
        s.insert(2, Dim::size(1));
        self.reshape(t, s)
    }

    /// A 2-D result of height 1 back to 1-D.
    pub(super) fn without_height(&mut self, t: &Rt) -> Result<Rt, Problem> {
        let mut s = t.shape.clone();
        s.remove(2);
        self.reshape(t, s)
    }

    /// A 3-D convolution as 2-D ones: for each depth tap `k` of the kernel,
    /// the input's depth positions it reads (a strided slice of the padded
    /// input) folded into the batch and convolved with that tap's 2-D
    /// kernel; the taps summed.
    pub(super) fn conv3d(
        &mut self,
        x: &Rt,
        w: &Rt,
        bias: Option<&Rt>,
        win: &Window,
        groups: i64,
    ) -> Result<Rt, Problem> {
        let (kd, sd, dd) = (win.kernel[0], win.stride[0], win.dilation[0]);
        let (lo, hi) = (win.pads[0], win.pads[3]);
        let xp = self.pad_axis(x, 2, lo, hi, 0.0)?;
        let depth = concrete(&xp.shape[2..3])?[0];
        let span = (kd - 1) * dd + 1;
        if depth < span {
            return bad(format!("a kernel spanning {span} over depth {depth}"));
        }
        let d_out = (depth - span) / sd + 1;
        let plane = win.drop_depth().to_2d();
        let hw = conv_out(&x.shape[3..], &plane.kernel, &plane)?;
        let (n, o) = (x.shape[0].clone(), w.shape[0].clone());
        let folded = n.mul(&Dim::size(d_out));
        let mut acc: Option<Rt> = None;
        for k in 0..kd {
            let taps = self.depth_taps(&xp, k * dd, sd, d_out)?;
            let mut wshape = w.shape.clone();
            wshape[2] = Dim::size(1);
            let wk = self.emit("slice", &[w], json!({"starts": [k], "ends": [k + 1], "axes": [2]}), w.dtype, wshape);
            let mut w2 = w.shape.clone();
            w2.remove(2);
            let wk = self.reshape(&wk, w2)?;
            let mut ins = vec![&taps, &wk];
            if let (0, Some(b)) = (k, bias) {
                ins.push(b);
            }
            let attrs =
                json!({"stride": plane.stride, "dilation": plane.dilation, "padding": plane.padding, "groups": groups});
            let shape = vec![folded.clone(), o.clone(), Dim::size(hw[0]), Dim::size(hw[1])];
            let y = self.emit("conv2d", &ins, attrs, x.dtype, shape);
            acc = Some(match acc {
                None => y,
                Some(a) => self.binary("add", &a, &y)?,
            });
        }
        let acc = acc.expect("a kernel has at least one tap");
        self.unfold_depth(&acc, &n, d_out)
    }

    /// `x` (`[N, C, D, H, W]`) at depth positions `start, start + stride, ...`
    /// (`count` of them), with the depth folded into the batch: `[N·count, C, H, W]`.
    pub(super) fn depth_taps(&mut self, x: &Rt, start: u64, stride: u64, count: u64) -> Result<Rt, Problem> {
        let mut shape = x.shape.clone();
        shape[2] = Dim::size(count);
        let end = start + (count - 1) * stride + 1;
        let attrs = json!({"starts": [start], "ends": [end], "axes": [2], "steps": [stride]});
        let s = self.emit("slice", &[x], attrs, x.dtype, shape.clone());
        let t_shape = vec![shape[0].clone(), shape[2].clone(), shape[1].clone(), shape[3].clone(), shape[4].clone()];
        let t = self.emit("transpose", &[&s], json!({"perm": [0, 2, 1, 3, 4]}), x.dtype, t_shape);
        self.reshape(&t, vec![shape[0].mul(&shape[2]), shape[1].clone(), shape[3].clone(), shape[4].clone()])
    }

    /// `[N·D, C, H, W]` back to `[N, C, D, H, W]`.
    pub(super) fn unfold_depth(&mut self, y: &Rt, n: &Dim, depth: u64) -> Result<Rt, Problem> {
        let s = &y.shape;
        let r = self.reshape(y, vec![n.clone(), Dim::size(depth), s[1].clone(), s[2].clone(), s[3].clone()])?;
        let shape = vec![n.clone(), s[1].clone(), Dim::size(depth), s[2].clone(), s[3].clone()];
        Ok(self.emit("transpose", &[&r], json!({"perm": [0, 2, 1, 3, 4]}), y.dtype, shape))
    }

    /// `x` padded along one axis with `value`.
    pub(super) fn pad_axis(&mut self, x: &Rt, axis: usize, lo: u64, hi: u64, value: f64) -> Result<Rt, Problem> {
        if lo == 0 && hi == 0 {
            return Ok(x.clone());
        }
        let r = x.shape.len();
        let (mut low, mut high) = (vec![0u64; r], vec![0u64; r]);
        low[axis] = lo;
        high[axis] = hi;
        let mut shape = x.shape.clone();
        shape[axis] = Dim::size(concrete(&x.shape[axis..axis + 1])?[0] + lo + hi);
        Ok(self.emit("pad", &[x], json!({"low": low, "high": high, "value": value}), x.dtype, shape))
    }

    /// ConvTranspose (1-D and 2-D): the input with `stride - 1` zeros between
    /// elements, convolved with the kernel flipped and its channels swapped
    /// per group, padded by `dilation·(k - 1)` less ONNX's pads.
    pub(super) fn conv_transpose(&mut self, n: &Node) -> Result<Rt, Problem> {
        let x = self.rt_input(n, 0)?;
        let w = self.rt_input(n, 1)?;
        let spatial = x.shape.len().saturating_sub(2);
        if !(1..=2).contains(&spatial) {
            return unsupported(format!("{spatial}-D ConvTranspose (xlac has 1-D and 2-D)"));
        }
        let auto = n.string("auto_pad", "NOTSET");
        if !matches!(auto.as_str(), "NOTSET" | "VALID" | "SAME_UPPER" | "SAME_LOWER") {
            return bad(format!("auto_pad is `{auto}`"));
        }
        let bias = self.optional_rt(n, 2)?;
        let (x, w) = if spatial == 1 { (self.with_height(&x)?, self.with_height(&w)?) } else { (x, w) };
        let g = n.int("group", 1).max(1) as u64;
        let kernel = concrete(&w.shape[2..])?;
        let list = |name: &str, default: u64| -> Vec<u64> {
            let v: Vec<u64> =
                n.ints(name).map_or(vec![default; spatial], |v| v.iter().map(|&x| x.max(0) as u64).collect());
            if spatial == 1 {
                vec![default, v[0]]
            } else {
                v
            }
        };
        let stride = list("strides", 1);
        let dilation = list("dilations", 1);
        let out_pad = list("output_padding", 0);
        let pads: Vec<u64> = match n.ints("pads") {
            None => vec![0; 4],
            Some(p) if spatial == 1 && p.len() == 2 => vec![0, p[0].max(0) as u64, 0, p[1].max(0) as u64],
            Some(p) if p.len() == 4 => p.iter().map(|&x| x.max(0) as u64).collect(),
            Some(p) => return bad(format!("pads is {p:?}")),
        };
        n.has("kernel_shape");
        let hw = concrete(&x.shape[2..])?;
        // Zeros between elements: [N, C, H, 1, W, 1] padded to [N, C, H, s, W, s], cropped.
        let z = if stride.iter().any(|&s| s > 1) {
            let (n0, c0) = (x.shape[0].clone(), x.shape[1].clone());
            let six = vec![n0.clone(), c0.clone(), Dim::size(hw[0]), Dim::size(1), Dim::size(hw[1]), Dim::size(1)];
            let r = self.reshape(&x, six)?;
            let high = [0, 0, 0, stride[0] - 1, 0, stride[1] - 1];
            let big = vec![
                n0.clone(),
                c0.clone(),
                Dim::size(hw[0]),
                Dim::size(stride[0]),
                Dim::size(hw[1]),
                Dim::size(stride[1]),
            ];
            let p = self.emit("pad", &[&r], json!({"low": [0, 0, 0, 0, 0, 0], "high": high, "value": 0}), x.dtype, big);
            let flat = vec![n0.clone(), c0.clone(), Dim::size(hw[0] * stride[0]), Dim::size(hw[1] * stride[1])];
            let f = self.reshape(&p, flat)?;
            let keep = [(hw[0] - 1) * stride[0] + 1, (hw[1] - 1) * stride[1] + 1];
            let shape = vec![n0, c0, Dim::size(keep[0]), Dim::size(keep[1])];
            self.emit(
                "slice",
                &[&f],
                json!({"starts": [0, 0], "ends": [keep[0], keep[1]], "axes": [2, 3]}),
                x.dtype,
                shape,
            )
        } else {
            x.clone()
        };
        // The kernel [C, O/g, kh, kw] as [O, C/g, kh, kw], flipped in space.
        let c = concrete(&w.shape[..2])?;
        let (ci, og) = (c[0], c[1]);
        if ci % g != 0 {
            return bad(format!("{ci} input channels in {g} groups"));
        }
        let five = vec![Dim::size(g), Dim::size(ci / g), Dim::size(og), Dim::size(kernel[0]), Dim::size(kernel[1])];
        let w5 = self.reshape(&w, five)?;
        let t = vec![Dim::size(g), Dim::size(og), Dim::size(ci / g), Dim::size(kernel[0]), Dim::size(kernel[1])];
        let wt = self.emit("transpose", &[&w5], json!({"perm": [0, 2, 1, 3, 4]}), w.dtype, t);
        let mut wf =
            self.reshape(&wt, vec![Dim::size(g * og), Dim::size(ci / g), Dim::size(kernel[0]), Dim::size(kernel[1])])?;
        for (axis, &k) in kernel.iter().enumerate() {
            let rev = Known::new(DType::I64, vec![k], (0..k).rev().map(|i| Elem::Int(i as i64)).collect());
            let rev = self.write_known(&rev, &self.hint.clone())?;
            wf = self.emit("gather", &[&wf, &rev], json!({"axis": axis + 2}), w.dtype, wf.shape.clone());
        }
        // output_shape (or SAME's input·stride) fixes the total padding, split
        // as ONNX's reference splits it; otherwise the pads give the size.
        let wanted: Option<Vec<i64>> = match n.ints("output_shape") {
            Some(o) if o.len() >= spatial => {
                let o = o[o.len() - spatial..].to_vec();
                Some(if spatial == 1 { vec![1, o[0]] } else { o })
            }
            Some(o) => return bad(format!("output_shape {o:?} for {spatial} spatial dimensions")),
            None if auto.starts_with("SAME") => Some((0..2).map(|i| (hw[i] * stride[i]) as i64).collect()),
            None => None,
        };
        let mut padding = [0u64; 4];
        let mut out = [0u64; 2];
        for i in 0..2 {
            let full = (dilation[i] * (kernel[i] - 1)) as i64;
            let natural = ((hw[i] - 1) * stride[i]) as i64 + full + 1 + out_pad[i] as i64;
            let (pb, pe) = match &wanted {
                Some(o) if auto.starts_with("SAME") || n.ints("pads").is_none() => {
                    let total = natural - o[i];
                    let (upper, lower) = (total / 2, total - total / 2);
                    match auto.as_str() {
                        "SAME_UPPER" => (upper, lower),
                        "SAME_LOWER" => (lower, upper),
                        _ => (0, total),
                    }
                }
                Some(o) => (pads[i] as i64, natural - pads[i] as i64 - o[i]),
                None => (pads[i] as i64, pads[i + 2] as i64),
            };
            let (low, high) = (full - pb, full - pe + out_pad[i] as i64);
            if low < 0 || high < 0 {
                return unsupported("ConvTranspose pads larger than the kernel's span");
            }
            padding[2 * i] = low as u64;
            padding[2 * i + 1] = high as u64;
            out[i] = (natural - pb - pe) as u64;
        }
        let shape = vec![x.shape[0].clone(), Dim::size(g * og), Dim::size(out[0]), Dim::size(out[1])];
        let mut ins = vec![&z, &wf];
        if let Some(b) = &bias {
            ins.push(b);
        }
        let attrs = json!({"stride": [1, 1], "dilation": [dilation[0], dilation[1]], "padding": padding, "groups": g});
        let y = self.emit("conv2d", &ins, attrs, x.dtype, shape);
        if spatial == 1 {
            return self.without_height(&y);
        }
        Ok(y)
    }

    pub(super) fn pool(&mut self, n: &Node) -> Res {
        let x = self.rt_input(n, 0)?;
        self.pool_of(n, x)
    }

    pub(super) fn pool_f32(&mut self, n: &Node, x: &Rt) -> Res {
        let f = self.cast(x, DType::F32);
        self.pool_of(n, f)
    }

    pub(super) fn pool_of(&mut self, n: &Node, x: Rt) -> Res {
        let spatial = x.shape.len().saturating_sub(2);
        if !(1..=3).contains(&spatial) {
            return unsupported(format!("{spatial}-D pooling (xlac has 1-D, 2-D and 3-D)"));
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
        if spatial == 3 {
            return Ok(vec![Val::Rt(self.pool3d(&x, &w, avg, include_pad)?)]);
        }
        let x2 = if spatial == 1 { self.with_height(&x)? } else { x.clone() };
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

    /// 3-D pooling as 2-D pooling of the depth taps (see [`Self::conv3d`]),
    /// every padding written out first: max over the taps, or for the average
    /// the taps' sum over the sum of a ones tensor padded the same way (its
    /// explicit padding counting where `count_include_pad`, ceil_mode's never).
    pub(super) fn pool3d(&mut self, x: &Rt, w: &Window, avg: bool, include_pad: bool) -> Result<Rt, Problem> {
        let fill = if avg { 0.0 } else { -x.dtype.max_finite().unwrap_or(f64::MAX) };
        let padded = |im: &mut Self, t: &Rt, explicit: f64, extra: f64| -> Result<Rt, Problem> {
            let mut t = t.clone();
            for a in 0..3 {
                t = im.pad_axis(&t, a + 2, w.pads[a], w.pads[a + 3], explicit)?;
                t = im.pad_axis(&t, a + 2, 0, w.extra[a], extra)?;
            }
            Ok(t)
        };
        let sum_taps = |im: &mut Self, t: &Rt| -> Result<(Rt, u64), Problem> {
            let depth = concrete(&t.shape[2..3])?[0];
            let span = (w.kernel[0] - 1) * w.dilation[0] + 1;
            let d_out = (depth - span) / w.stride[0] + 1;
            let hw = concrete(&t.shape[3..])?;
            let mut out = [0; 2];
            for i in 0..2 {
                out[i] = (hw[i] - ((w.kernel[i + 1] - 1) * w.dilation[i + 1] + 1)) / w.stride[i + 1] + 1;
            }
            let mut acc: Option<Rt> = None;
            for k in 0..w.kernel[0] {
                let taps = im.depth_taps(t, k * w.dilation[0], w.stride[0], d_out)?;
                let attrs = json!({"kernel": [w.kernel[1], w.kernel[2]], "stride": [w.stride[1], w.stride[2]],
                    "dilation": [w.dilation[1], w.dilation[2]]});
                let shape = vec![taps.shape[0].clone(), taps.shape[1].clone(), Dim::size(out[0]), Dim::size(out[1])];
                let y = im.emit(if avg { "avg_pool2d" } else { "max_pool2d" }, &[&taps], attrs, t.dtype, shape);
                acc = Some(match acc {
                    None => y,
                    Some(a) => im.binary(if avg { "add" } else { "max" }, &a, &y)?,
                });
            }
            Ok((acc.expect("a kernel has at least one tap"), d_out))
        };
        let xp = padded(self, x, fill, fill)?;
        let (s, d_out) = sum_taps(self, &xp)?;
        let y = self.unfold_depth(&s, &x.shape[0], d_out)?;
        if !avg {
            return Ok(y);
        }
        let dims = concrete(&x.shape[2..])?;
        let count = (dims.iter().product::<u64>()) as usize;
        let ones = Known::new(x.dtype, vec![1, 1, dims[0], dims[1], dims[2]], vec![Elem::Float(1.0); count]);
        let ones = self.write_known(&ones, &self.hint.clone())?;
        let op = padded(self, &ones, if include_pad { 1.0 } else { 0.0 }, 0.0)?;
        let (c, _) = sum_taps(self, &op)?;
        let c = self.unfold_depth(&c, &Dim::size(1), d_out)?;
        self.binary("div", &y, &c)
    }
}

/// The convolution or pooling window of `n` over spatial dims `spatial`:
/// explicit pads or auto_pad, strides, dilations; pooling's ceil_mode as
/// extra padding at the end.
pub(super) struct Window {
    kernel: Vec<u64>,
    stride: Vec<u64>,
    dilation: Vec<u64>,
    /// begin per axis, then end per axis (ONNX's order).
    pads: Vec<u64>,
    /// Padding added for ceil_mode, at the end of each axis.
    extra: Vec<u64>,
}

/// A window as the 2-D ops take it.
pub(super) struct Window2 {
    kernel: [u64; 2],
    stride: [u64; 2],
    dilation: [u64; 2],
    /// top, bottom, left, right, ceil_mode's extra included.
    padding: [u64; 4],
    /// The explicit padding alone.
    explicit: [u64; 4],
}

impl Window {
    /// The window over the last two of three spatial axes.
    pub(super) fn drop_depth(&self) -> Window {
        Window {
            kernel: self.kernel[1..].to_vec(),
            stride: self.stride[1..].to_vec(),
            dilation: self.dilation[1..].to_vec(),
            pads: vec![self.pads[1], self.pads[2], self.pads[4], self.pads[5]],
            extra: self.extra[1..].to_vec(),
        }
    }

    pub(super) fn to_2d(&self) -> Window2 {
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

pub(super) fn window(n: &Node, spatial: &[Dim], kernel: &[u64], pooling: bool) -> Result<Window, Problem> {
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
pub(super) fn conv_out(hw: &[Dim], kernel: &[u64; 2], w: &Window2) -> Result<[u64; 2], Problem> {
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
