//! ONNX Attention (opsets 23 and 24): scaled dot-product attention over 4-D
//! [batch, heads, sequence, head size] inputs, or 3-D [batch, sequence,
//! hidden] ones split into `q_num_heads` and `kv_num_heads` heads; grouped
//! keys and values repeated to the query heads; a past key and value cache
//! concatenated in front (and returned as the present ones); a boolean or
//! additive mask, padded to the keys' length; `is_causal` aligned to the
//! cache's end; `softcap`; the score output in its four modes. As ONNX's
//! reference: Q and K are each scaled by √scale, a row whose bias masks
//! every key gives zeros, not NaN.

use serde_json::json;
use xlac_core::DType;

use super::ops::{concrete, dims_json, Res};
use super::tensor::Dim;
use super::{bad, unsupported, Importer, Node, Problem, Rt, Val};

impl Importer<'_> {
    pub(super) fn attention(&mut self, n: &Node) -> Res {
        let (q, k, v) = (self.rt_input(n, 0)?, self.rt_input(n, 1)?, self.rt_input(n, 2)?);
        let mask = self.optional_rt(n, 3)?;
        let (past_k, past_v) = (self.optional_rt(n, 4)?, self.optional_rt(n, 5)?);
        if n.inputs() > 6 && self.optional_rt(n, 6)?.is_some() {
            return unsupported("Attention's nonpad_kv_seqlen");
        }
        if n.int("left_window_size", -1) >= 0 || n.int("right_window_size", -1) >= 0 {
            return unsupported("Attention with a sliding window");
        }
        if past_k.is_some() != past_v.is_some() {
            return bad("past_key and past_value must be given together");
        }
        let rank = q.shape.len();
        let (q, k, v) = match rank {
            4 => (q, k, v),
            3 => {
                let (hq, hkv) = (n.int("q_num_heads", 0), n.int("kv_num_heads", 0));
                if hq < 1 || hkv < 1 {
                    return bad("3-D inputs need q_num_heads and kv_num_heads");
                }
                (self.split_heads(&q, hq as u64)?, self.split_heads(&k, hkv as u64)?, self.split_heads(&v, hkv as u64)?)
            }
            r => return bad(format!("Q of rank {r}, expected 3 or 4")),
        };
        let cat = |me: &mut Self, past: Option<Rt>, x: Rt| -> Result<Rt, Problem> {
            let Some(p) = past else { return Ok(x) };
            let (a, b) = (concrete(&p.shape)?, concrete(&x.shape)?);
            let mut shape = x.shape.clone();
            shape[2] = Dim::size(a[2] + b[2]);
            Ok(me.emit("concat", &[&p, &x], json!({"axis": 2}), x.dtype, shape))
        };
        let offset = past_k.as_ref().map_or(Ok(0), |p| concrete(&p.shape).map(|d| d[2]))?;
        let present_k = cat(self, past_k, k)?;
        let present_v = cat(self, past_v, v)?;
        let (qd, kd) = (concrete(&q.shape)?, concrete(&present_k.shape)?);
        let (sq, skv) = (qd[2], kd[2]);
        let scale = n.attr("scale").map_or(1.0 / (qd[3] as f64).sqrt(), |a| a.f as f64);
        let root = self.scalar(q.dtype, scale.sqrt());
        let qs = self.binary("mul", &q, &root)?;
        let ks = self.binary("mul", &present_k, &root)?;
        let (ks, vs) = (self.repeat_heads(&ks, qd[1])?, self.repeat_heads(&present_v, qd[1])?);
        let mut kt_shape = ks.shape.clone();
        kt_shape.swap(2, 3);
        let kt = self.emit("transpose", &[&ks], json!({"perm": [0, 1, 3, 2]}), ks.dtype, kt_shape);
        let mut scores = self.matmul(&qs, &kt)?;
        let softcap = n.float("softcap", 0.0);
        if softcap > 0.0 {
            let c = self.scalar(q.dtype, softcap);
            let t = self.binary("div", &scores, &c)?;
            let t = self.unary("tanh", &t);
            scores = self.binary("mul", &t, &c)?;
        }
        let bias = self.attention_bias(mask, n.int("is_causal", 0) != 0, q.dtype, sq, skv, offset)?;
        let biased = match &bias {
            Some(b) => self.binary("add", &scores, b)?,
            None => scores.clone(),
        };
        let precision = match n.attr("softmax_precision") {
            Some(a) => super::tensor::dtype(a.i as i32).or_else(|name| unsupported(format!("softmax in {name}")))?,
            None => q.dtype,
        };
        let wide = self.cast(&biased, precision);
        let bias_wide = bias.as_ref().map(|b| self.cast(b, precision));
        let probs = self.reference_softmax(&wide, bias_wide.as_ref())?;
        let probs = self.cast(&probs, q.dtype);
        let qk = match n.int("qk_matmul_output_mode", 0) {
            0 | 1 => scores,
            2 => biased,
            3 => probs.clone(),
            m => return bad(format!("qk_matmul_output_mode {m}, expected 0 to 3")),
        };
        let mut y = self.matmul(&probs, &vs)?;
        if rank == 3 {
            let d = concrete(&y.shape)?;
            let moved = self.emit(
                "transpose",
                &[&y],
                json!({"perm": [0, 2, 1, 3]}),
                y.dtype,
                Dim::sizes(&[d[0], d[2], d[1], d[3]]),
            );
            y = self.reshape(&moved, vec![Dim::size(d[0]), Dim::size(d[2]), Dim::size(d[1] * d[3])])?;
        }
        Ok(vec![Val::Rt(y), Val::Rt(present_k), Val::Rt(present_v), Val::Rt(qk)])
    }

    /// [b, s, heads·d] as [b, heads, s, d].
    fn split_heads(&mut self, x: &Rt, heads: u64) -> Result<Rt, Problem> {
        let d = concrete(&x.shape)?;
        if !d[2].is_multiple_of(heads) {
            return bad(format!("hidden size {} does not split into {heads} heads", d[2]));
        }
        let split = self.reshape(x, Dim::sizes(&[d[0], d[1], heads, d[2] / heads]))?;
        let shape = Dim::sizes(&[d[0], heads, d[1], d[2] / heads]);
        Ok(self.emit("transpose", &[&split], json!({"perm": [0, 2, 1, 3]}), x.dtype, shape))
    }

    /// Grouped keys or values [b, h, s, d] repeated to `heads` (each head
    /// `heads / h` times in a row, as `numpy.repeat`).
    fn repeat_heads(&mut self, x: &Rt, heads: u64) -> Result<Rt, Problem> {
        let d = concrete(&x.shape)?;
        if d[1] == heads {
            return Ok(x.clone());
        }
        if !heads.is_multiple_of(d[1]) {
            return bad(format!("{heads} query heads do not group over {} key/value heads", d[1]));
        }
        let r = heads / d[1];
        let one = self.reshape(x, Dim::sizes(&[d[0], d[1], 1, d[2], d[3]]))?;
        let wide = Dim::sizes(&[d[0], d[1], r, d[2], d[3]]);
        let b = self.emit("broadcast_to", &[&one], json!({"shape": dims_json(&wide)?}), x.dtype, wide);
        self.reshape(&b, Dim::sizes(&[d[0], heads, d[2], d[3]]))
    }

    /// The additive bias of the scores (0 where a key is attended, −∞ where
    /// not): the mask (a boolean one as 0/−∞), padded with −∞ to the keys'
    /// length, plus the causal frontier `key ≤ query + offset`.
    fn attention_bias(
        &mut self,
        mask: Option<Rt>,
        causal: bool,
        dtype: DType,
        sq: u64,
        skv: u64,
        offset: u64,
    ) -> Result<Option<Rt>, Problem> {
        let mut bias = match mask {
            None => None,
            Some(m) => {
                let m = if m.dtype == DType::Bool { self.additive_bias(&m, dtype) } else { m };
                let md = concrete(&m.shape)?;
                let last = *md.last().ok_or_else(|| Problem::Invalid("a mask of rank 0".into()))?;
                if last > skv {
                    return bad(format!("a mask over {last} keys, more than the {skv} keys"));
                }
                let m = if last < skv {
                    let mut high = vec![0; md.len()];
                    high[md.len() - 1] = (skv - last) as i64;
                    let mut shape = m.shape.clone();
                    shape[md.len() - 1] = Dim::size(skv);
                    self.pad_constant(&m, &vec![0; md.len()], &high, f64::NEG_INFINITY, shape)?
                } else {
                    m
                };
                Some(m)
            }
        };
        if causal {
            let grid = |me: &mut Self, axis: usize| {
                let dims = json!([sq, skv]);
                me.emit(
                    "iota",
                    &[],
                    json!({"dtype": "i64", "shape": dims, "axis": axis}),
                    DType::I64,
                    vec![Dim::size(sq), Dim::size(skv)],
                )
            };
            let (i, j) = (grid(self, 0), grid(self, 1));
            let off = self.scalar(DType::I64, offset as f64);
            let frontier = self.binary("add", &i, &off)?;
            let allowed = self.compare("le", &j, &frontier)?;
            let c = self.additive_bias(&allowed, dtype);
            bias = Some(match bias {
                Some(b) => self.binary("add", &b, &c)?,
                None => c,
            });
        }
        Ok(bias)
    }

    /// A boolean "attend" tensor as an additive bias: 0 where true, −∞ where false.
    fn additive_bias(&mut self, allowed: &Rt, dtype: DType) -> Rt {
        let (zero, minus_inf) = (self.scalar(dtype, 0.0), self.scalar(dtype, f64::NEG_INFINITY));
        self.emit("where", &[allowed, &zero, &minus_inf], json!({}), dtype, allowed.shape.clone())
    }

    /// Softmax over the last axis of `x` (which includes `bias`), op by op as
    /// ONNX's reference rounds it (NumPy sums an f16 tensor in f32): a row
    /// all −∞ subtracts 0 instead of its maximum and divides by 1, and a row
    /// whose bias masks every key is 0.
    fn reference_softmax(&mut self, x: &Rt, bias: Option<&Rt>) -> Result<Rt, Problem> {
        let last = x.shape.len() - 1;
        let (zero, one) = (self.scalar(x.dtype, 0.0), self.scalar(x.dtype, 1.0));
        let minus_inf = self.scalar(x.dtype, f64::NEG_INFINITY);
        let max = self.reduce("reduce_max", x, &[last], true);
        let empty = self.compare("eq", &max, &minus_inf)?;
        let safe = self.emit("where", &[&empty, &zero, &max], json!({}), x.dtype, max.shape.clone());
        let shifted = self.binary("sub", x, &safe)?;
        let e = self.unary("exp", &shifted);
        let sum = if x.dtype == DType::F16 {
            let wide = self.cast(&e, DType::F32);
            let sum = self.reduce("reduce_sum", &wide, &[last], true);
            self.cast(&sum, DType::F16)
        } else {
            self.reduce("reduce_sum", &e, &[last], true)
        };
        let nothing = self.compare("eq", &sum, &zero)?;
        let sum = self.emit("where", &[&nothing, &one, &sum], json!({}), x.dtype, sum.shape.clone());
        let p = self.binary("div", &e, &sum)?;
        let Some(bias) = bias else { return Ok(p) };
        let bias_last = bias.shape.len() - 1;
        let bias_max = self.reduce("reduce_max", bias, &[bias_last], true);
        let masked = self.compare("eq", &bias_max, &minus_inf)?;
        let shape = p.shape.clone();
        Ok(self.emit("where", &[&masked, &zero, &p], json!({}), x.dtype, shape))
    }
}
