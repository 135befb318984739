//! Optimizers, learning-rate schedules and gradient clipping as IR, with
//! PyTorch's and transformers' semantics, so that a trajectory can be
//! compared with theirs step by step: `torch.optim.SGD`, `torch.optim.AdamW`,
//! `get_constant_schedule`, `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup` and `clip_grad_norm_`. The operations
//! follow PyTorch's order of evaluation (`_single_tensor_sgd`,
//! `_single_tensor_adamw`), which decides the last bits of f32 results.

use super::quantize;
use crate::ir::builder::{Builder, Built};
use crate::ir::dtype::DType;
use crate::ir::op::{BinaryOp, CompareDir, UnaryOp};
use crate::ir::types::TensorType;
use crate::ir::Value;
use std::collections::HashMap;

/// A hyperparameter a step can take at run time instead of as a constant:
/// built tunable ([`super::TrainConfig::tunable`]), the step has one f32
/// scalar input per knob its optimizer and schedule use, so that one
/// compiled step serves every value (a sweep's trials). Each is the very
/// number the constant would be (`1 − β₁` computed on the host in f64), so
/// a tunable step computes what the fixed one does, bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Knob {
    WeightDecay,
    Beta1,
    OneMinusBeta1,
    Beta2,
    OneMinusBeta2,
    /// 0 constant, 1 linear, 2 cosine.
    Schedule,
    Warmup,
    /// `1 / max(1, warmup)`.
    WarmupRate,
    /// The schedule's last step.
    Total,
    /// `1 / max(1, total − warmup)`: the linear decay's slope.
    LinearRate,
    /// `π / max(1, total − warmup)`: the cosine's angular rate.
    CosineRate,
}

impl Knob {
    /// The step input's name.
    pub fn name(self) -> &'static str {
        match self {
            Knob::WeightDecay => "hyper.weight_decay",
            Knob::Beta1 => "hyper.beta1",
            Knob::OneMinusBeta1 => "hyper.one_minus_beta1",
            Knob::Beta2 => "hyper.beta2",
            Knob::OneMinusBeta2 => "hyper.one_minus_beta2",
            Knob::Schedule => "hyper.schedule",
            Knob::Warmup => "hyper.warmup",
            Knob::WarmupRate => "hyper.warmup_rate",
            Knob::Total => "hyper.total",
            Knob::LinearRate => "hyper.linear_rate",
            Knob::CosineRate => "hyper.cosine_rate",
        }
    }

    /// The knobs a step updating with `optimizer` takes (the schedule's always).
    pub fn of(optimizer: &Optimizer) -> Vec<Knob> {
        let mut knobs = vec![Knob::WeightDecay];
        if matches!(optimizer, Optimizer::AdamW { .. } | Optimizer::AdamW8bit { .. }) {
            knobs.extend([Knob::Beta1, Knob::OneMinusBeta1, Knob::Beta2, Knob::OneMinusBeta2]);
        }
        knobs.extend([Knob::Schedule, Knob::Warmup, Knob::WarmupRate, Knob::Total, Knob::LinearRate, Knob::CosineRate]);
        knobs
    }

    /// The knob's value in a step that updates with `optimizer` on `schedule`.
    pub fn value(self, optimizer: &Optimizer, schedule: &Schedule) -> f64 {
        let (beta1, beta2, weight_decay) = match *optimizer {
            Optimizer::Sgd { weight_decay, .. } | Optimizer::Adafactor { weight_decay, .. } => (0.0, 0.0, weight_decay),
            Optimizer::AdamW { beta1, beta2, weight_decay, .. }
            | Optimizer::AdamW8bit { beta1, beta2, weight_decay, .. } => (beta1, beta2, weight_decay),
        };
        match self {
            Knob::WeightDecay => weight_decay,
            Knob::Beta1 => beta1,
            Knob::OneMinusBeta1 => 1.0 - beta1,
            Knob::Beta2 => beta2,
            Knob::OneMinusBeta2 => 1.0 - beta2,
            _ => self.of_schedule(schedule),
        }
    }

    /// A schedule knob's value on `schedule` (0 for the optimizer's knobs).
    fn of_schedule(self, schedule: &Schedule) -> f64 {
        let (code, warmup, total) = match *schedule {
            Schedule::Constant => (0.0, 0, 1),
            Schedule::Linear { warmup, total } => (1.0, warmup, total),
            Schedule::Cosine { warmup, total } => (2.0, warmup, total),
        };
        let span = total.saturating_sub(warmup).max(1) as f64;
        match self {
            Knob::Schedule => code,
            Knob::Warmup => warmup as f64,
            Knob::WarmupRate => 1.0 / warmup.max(1) as f64,
            Knob::Total => total as f64,
            Knob::LinearRate => 1.0 / span,
            Knob::CosineRate => std::f64::consts::PI / span,
            _ => 0.0,
        }
    }
}

/// A hyperparameter as a step uses it: fixed when the step is built, or a
/// knob, a scalar input of the step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hyper {
    Fixed(f64),
    Input(Value),
}

impl Hyper {
    /// `x · h`.
    fn times(self, b: &mut Builder, x: Value) -> Built {
        match self {
            Hyper::Fixed(c) => b.scale(x, c),
            Hyper::Input(v) => b.mul(x, v),
        }
    }

    /// `h` as a scalar of `like`'s dtype.
    fn value(self, b: &mut Builder, like: Value) -> Built {
        match self {
            Hyper::Fixed(c) => b.scalar_like(c, like),
            Hyper::Input(v) => Ok(v),
        }
    }

    /// True when fixed at 0 (a term it multiplies can be left out).
    fn is_zero(self) -> bool {
        self == Hyper::Fixed(0.0)
    }
}

/// The knobs of a tunable step, by knob (empty: every hyperparameter fixed).
#[derive(Clone, Debug, Default)]
pub struct Tuning {
    pub inputs: HashMap<Knob, Value>,
}

impl Tuning {
    /// `knob`'s input, or `fixed` when the step has none.
    fn get(&self, knob: Knob, fixed: f64) -> Hyper {
        self.inputs.get(&knob).map_or(Hyper::Fixed(fixed), |&v| Hyper::Input(v))
    }
}

/// An optimizer and its hyperparameters (the learning rate comes from the schedule).
#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    /// `torch.optim.SGD(momentum, dampening, nesterov, weight_decay)`.
    Sgd { momentum: f64, dampening: f64, nesterov: bool, weight_decay: f64 },
    /// `torch.optim.AdamW(betas, eps, weight_decay)` (amsgrad off).
    AdamW { beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
    /// bitsandbytes' `AdamW8bit` (block-wise): AdamW's update computed in f32
    /// from moments stored in 8 bits ([`super::quantize`]: the first moment on
    /// the signed dynamic map, the second on the unsigned one, each block of
    /// 256 with its absmax), about a quarter of AdamW's state. Tensors of fewer
    /// than `min_8bit_size` elements keep 32-bit moments, as bitsandbytes'.
    AdamW8bit { beta1: f64, beta2: f64, eps: f64, weight_decay: f64, min_8bit_size: u64 },
    /// transformers' `Adafactor(scale_parameter=False, relative_step=False)`:
    /// second moments factored into row and column averages for tensors of
    /// rank ≥ 2 (the memory-light optimizer), updates clipped by their RMS.
    Adafactor { eps: f64, clip_threshold: f64, decay_rate: f64, beta1: Option<f64>, weight_decay: f64 },
}

impl Optimizer {
    /// The command-line name: `sgd`, `adamw`, `adamw8bit` or `adafactor`.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::AdamW { .. } => "adamw",
            Optimizer::AdamW8bit { .. } => "adamw8bit",
            Optimizer::Adafactor { .. } => "adafactor",
        }
    }

    /// transformers' `Adafactor(scale_parameter=False, relative_step=False)`
    /// with its defaults (eps 1e-30, clip_threshold 1, decay_rate -0.8, no
    /// first moment) and `weight_decay`.
    pub fn adafactor(weight_decay: f64) -> Optimizer {
        Optimizer::Adafactor { eps: 1e-30, clip_threshold: 1.0, decay_rate: -0.8, beta1: None, weight_decay }
    }

    /// PyTorch's defaults for `name` (`sgd`, `adamw`).
    pub fn default_for(name: &str) -> Option<Optimizer> {
        match name {
            "sgd" => Some(Optimizer::Sgd { momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 }),
            "adamw" => Some(Optimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }),
            "adafactor" => Some(Optimizer::adafactor(0.0)),
            _ => None,
        }
    }

    /// The state it keeps per parameter of type `ty`: each tensor's name
    /// suffix and type (zeros at the start).
    pub fn state(&self, ty: &TensorType) -> Vec<(&'static str, TensorType)> {
        match self {
            Optimizer::Sgd { momentum, .. } if *momentum != 0.0 => vec![("momentum_buffer", ty.clone())],
            Optimizer::Sgd { .. } => vec![],
            Optimizer::AdamW { .. } => vec![("exp_avg", ty.clone()), ("exp_avg_sq", ty.clone())],
            Optimizer::AdamW8bit { min_8bit_size, .. } if ty.num_elements() < *min_8bit_size => {
                vec![("exp_avg", ty.clone()), ("exp_avg_sq", ty.clone())]
            }
            Optimizer::AdamW8bit { .. } => {
                let nb = quantize::blocks(ty.num_elements());
                let codes = TensorType::new(DType::U8, vec![nb, quantize::BLOCK]);
                let absmax = TensorType::new(DType::F32, vec![nb]);
                vec![
                    ("exp_avg.codes", codes.clone()),
                    ("exp_avg.absmax", absmax.clone()),
                    ("exp_avg_sq.codes", codes),
                    ("exp_avg_sq.absmax", absmax),
                ]
            }
            Optimizer::Adafactor { beta1, .. } => {
                let r = ty.rank();
                let mut s = if r >= 2 {
                    let row = TensorType::new(ty.dtype, ty.shape[..r - 1].to_vec());
                    let mut col = ty.shape[..r - 2].to_vec();
                    col.push(ty.shape[r - 1]);
                    vec![("exp_avg_sq_row", row), ("exp_avg_sq_col", TensorType::new(ty.dtype, col))]
                } else {
                    vec![("exp_avg_sq", ty.clone())]
                };
                if beta1.is_some() {
                    s.push(("exp_avg", ty.clone()));
                }
                s
            }
        }
    }

    /// Appends one update of parameter `p` by gradient `g` with state
    /// `state` (as [`Optimizer::state`] lists it), learning rate `lr` and the
    /// 1-based step number `step` (f32 scalars), the hyperparameters `tuning`
    /// has knobs for taken from them; returns the new parameter and state.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        b: &mut Builder,
        p: Value,
        g: Value,
        state: &[Value],
        lr: Value,
        step: Value,
        tuning: &Tuning,
    ) -> Result<(Value, Vec<Value>), String> {
        match *self {
            Optimizer::Sgd { momentum, dampening, nesterov, weight_decay } => {
                let weight_decay = tuning.get(Knob::WeightDecay, weight_decay);
                let mut d = g;
                if !weight_decay.is_zero() {
                    let decay = weight_decay.times(b, p)?;
                    d = b.add(d, decay)?;
                }
                let mut new_state = Vec::new();
                if momentum != 0.0 {
                    // buf = d on the first step, then momentum·buf + (1 − dampening)·d.
                    let kept = b.scale(state[0], momentum)?;
                    let fresh = b.scale(d, 1.0 - dampening)?;
                    let later = b.add(kept, fresh)?;
                    let first = b.compare_to(CompareDir::Eq, step, 1.0)?;
                    let buf = b.select(first, d, later)?;
                    new_state.push(buf);
                    d = if nesterov {
                        let ahead = b.scale(buf, momentum)?;
                        b.add(d, ahead)?
                    } else {
                        buf
                    };
                }
                let delta = b.mul(d, lr)?;
                Ok((b.sub(p, delta)?, new_state))
            }
            Optimizer::AdamW { beta1, beta2, eps, weight_decay } => {
                let hyper = Adam::new(tuning, beta1, beta2, eps, weight_decay);
                let (p, m, v) = adamw(b, p, g, state[0], state[1], lr, step, hyper)?;
                Ok((p, vec![m, v]))
            }
            Optimizer::AdamW8bit { beta1, beta2, eps, weight_decay, .. } => {
                let hyper = Adam::new(tuning, beta1, beta2, eps, weight_decay);
                if let [m, v] = state {
                    let (p, m, v) = adamw(b, p, g, *m, *v, lr, step, hyper)?;
                    return Ok((p, vec![m, v]));
                }
                let shape = b.ty(p).shape;
                let m = quantize::dequantize(b, state[0], state[1], true, &shape)?;
                let v = quantize::dequantize(b, state[2], state[3], false, &shape)?;
                let (p, m, v) = adamw(b, p, g, m, v, lr, step, hyper)?;
                let (m_codes, m_absmax) = quantize::quantize(b, m, true)?;
                let (v_codes, v_absmax) = quantize::quantize(b, v, false)?;
                Ok((p, vec![m_codes, m_absmax, v_codes, v_absmax]))
            }
            Optimizer::Adafactor { eps, clip_threshold, decay_rate, beta1, weight_decay } => {
                let weight_decay = tuning.get(Knob::WeightDecay, weight_decay);
                adafactor(b, p, g, state, lr, step, eps, clip_threshold, decay_rate, beta1, weight_decay)
            }
        }
    }
}

/// AdamW's hyperparameters, each fixed or a knob.
#[derive(Clone, Copy)]
struct Adam {
    beta1: Hyper,
    one_minus_beta1: Hyper,
    beta2: Hyper,
    one_minus_beta2: Hyper,
    eps: f64,
    weight_decay: Hyper,
}

impl Adam {
    fn new(tuning: &Tuning, beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Adam {
        Adam {
            beta1: tuning.get(Knob::Beta1, beta1),
            one_minus_beta1: tuning.get(Knob::OneMinusBeta1, 1.0 - beta1),
            beta2: tuning.get(Knob::Beta2, beta2),
            one_minus_beta2: tuning.get(Knob::OneMinusBeta2, 1.0 - beta2),
            eps,
            weight_decay: tuning.get(Knob::WeightDecay, weight_decay),
        }
    }
}

/// One AdamW update of `p` with moments `m` and `v`, in
/// `_single_tensor_adamw`'s order: the new parameter and moments.
#[allow(clippy::too_many_arguments)]
fn adamw(
    b: &mut Builder,
    p: Value,
    g: Value,
    m: Value,
    v: Value,
    lr: Value,
    step: Value,
    h: Adam,
) -> Result<(Value, Value, Value), String> {
    // p ← p·(1 − lr·λ)
    let lr_decay = h.weight_decay.times(b, lr)?;
    let one = b.scalar_like(1.0, lr)?;
    let keep = b.sub(one, lr_decay)?;
    let p = b.mul(p, keep)?;
    // m ← m + (1 − β₁)(g − m)  (torch's lerp_), v ← β₂·v + (1 − β₂)·g²
    let gm = b.sub(g, m)?;
    let gm = h.one_minus_beta1.times(b, gm)?;
    let m = b.add(m, gm)?;
    let vv = h.beta2.times(b, v)?;
    let gg = b.mul(g, g)?;
    let gg = h.one_minus_beta2.times(b, gg)?;
    let v = b.add(vv, gg)?;
    // Bias corrections: 1 − βᵗ.
    let bc1 = bias_correction(b, h.beta1, step)?;
    let bc2 = bias_correction(b, h.beta2, step)?;
    let step_size = b.div(lr, bc1)?;
    let bc2_sqrt = b.unary(UnaryOp::Sqrt, bc2)?;
    // denom = √v / √bc₂ + ε;  p ← p − step_size · m / denom
    let sv = b.unary(UnaryOp::Sqrt, v)?;
    let denom = b.div(sv, bc2_sqrt)?;
    let e = b.scalar_like(h.eps, denom)?;
    let denom = b.add(denom, e)?;
    let ratio = b.div(m, denom)?;
    let delta = b.mul(ratio, step_size)?;
    Ok((b.sub(p, delta)?, m, v))
}

/// One Adafactor update, in transformers' order of evaluation.
#[allow(clippy::too_many_arguments)]
fn adafactor(
    b: &mut Builder,
    p: Value,
    g: Value,
    state: &[Value],
    lr: Value,
    step: Value,
    eps: f64,
    clip_threshold: f64,
    decay_rate: f64,
    beta1: Option<f64>,
    weight_decay: Hyper,
) -> Result<(Value, Vec<Value>), String> {
    let ty = b.ty(p);
    let r = ty.rank();
    let mean = |b: &mut Builder, v: Value, axis: usize, keep: bool| -> Built {
        let n = b.ty(v).shape[axis];
        let s = b.sum(v, vec![axis], keep)?;
        b.scale(s, 1.0 / n as f64)
    };
    // β₂ₜ = 1 − t^decay_rate
    let decay = b.scalar_like(decay_rate, step)?;
    let power = b.binary(BinaryOp::Pow, step, decay)?;
    let one = b.scalar_like(1.0, step)?;
    let beta2t = b.sub(one, power)?;
    let rest = b.sub(one, beta2t)?;
    let gg = b.mul(g, g)?;
    let e = b.scalar_like(eps, gg)?;
    let u = b.add(gg, e)?;
    let mut new_state = Vec::new();
    let update = if r >= 2 {
        // Row and column averages of u; their outer quotient approximates it.
        let ur = mean(b, u, r - 1, false)?;
        let uc = mean(b, u, r - 2, false)?;
        let row = b.mul(state[0], beta2t)?;
        let ur = b.mul(ur, rest)?;
        let row = b.add(row, ur)?;
        let col = b.mul(state[1], beta2t)?;
        let uc = b.mul(uc, rest)?;
        let col = b.add(col, uc)?;
        new_state.extend([row, col]);
        let row_mean = mean(b, row, r - 2, true)?;
        let rf = b.div(row, row_mean)?;
        let rf = b.unary(UnaryOp::Rsqrt, rf)?;
        let mut rs = ty.shape[..r - 1].to_vec();
        rs.push(1);
        let rf = b.reshape(rf, &rs)?;
        let cf = b.unary(UnaryOp::Rsqrt, col)?;
        let mut cs = ty.shape[..r - 2].to_vec();
        cs.extend([1, ty.shape[r - 1]]);
        let cf = b.reshape(cf, &cs)?;
        let approx = b.mul(rf, cf)?;
        b.mul(approx, g)?
    } else {
        let v = b.mul(state[0], beta2t)?;
        let uv = b.mul(u, rest)?;
        let v = b.add(v, uv)?;
        new_state.push(v);
        let rv = b.unary(UnaryOp::Rsqrt, v)?;
        b.mul(rv, g)?
    };
    // update /= max(rms(update) / clip_threshold, 1);  update *= lr
    let rms = rms(b, update)?;
    let ratio = b.scale(rms, 1.0 / clip_threshold)?;
    let floor = b.scalar_like(1.0, ratio)?;
    let ratio = b.binary(BinaryOp::Max, ratio, floor)?;
    let update = b.div(update, ratio)?;
    let mut update = b.mul(update, lr)?;
    if let Some(beta1) = beta1 {
        let m = b.scale(state[new_state.len()], beta1)?;
        let fresh = b.scale(update, 1.0 - beta1)?;
        update = b.add(m, fresh)?;
        new_state.push(update);
    }
    let mut p = p;
    if !weight_decay.is_zero() {
        let rate = match weight_decay {
            Hyper::Fixed(w) => b.scale(lr, -w)?,
            Hyper::Input(w) => {
                let minus = b.unary(UnaryOp::Neg, w)?;
                b.mul(lr, minus)?
            }
        };
        let decay = b.mul(p, rate)?;
        p = b.add(p, decay)?;
    }
    Ok((b.sub(p, update)?, new_state))
}

/// `‖x‖₂ / √n`, the root mean square of every element of `x`.
fn rms(b: &mut Builder, x: Value) -> Built {
    let n: u64 = b.ty(x).shape.iter().product();
    let xx = b.mul(x, x)?;
    let axes = (0..b.ty(x).rank()).collect();
    let s = b.sum(xx, axes, false)?;
    let norm = b.unary(UnaryOp::Sqrt, s)?;
    b.scale(norm, 1.0 / (n as f64).sqrt())
}

/// `1 − βᵗ` for the step number `step`.
fn bias_correction(b: &mut Builder, beta: Hyper, step: Value) -> Built {
    let base = beta.value(b, step)?;
    let power = b.binary(BinaryOp::Pow, base, step)?;
    let one = b.scalar_like(1.0, step)?;
    b.sub(one, power)
}

/// A learning-rate schedule: the factor on the base learning rate at each
/// step, as transformers' `LambdaLR` schedules (`current_step` counts from
/// 0, so the first update of a warmup schedule has learning rate 0).
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    Constant,
    /// Linear warmup over `warmup` steps, then linear decay to 0 at `total`.
    Linear {
        warmup: u64,
        total: u64,
    },
    /// Linear warmup over `warmup` steps, then a half cosine to 0 at `total`.
    Cosine {
        warmup: u64,
        total: u64,
    },
}

impl Schedule {
    /// Appends the learning rate of the update numbered `step` (1-based, f32):
    /// `base · λ(step − 1)`. With a [`Knob::Schedule`] in `tuning`, the
    /// schedule itself, its warmup and its length are the knobs' (this
    /// schedule gives only their defaults).
    pub fn rate(&self, b: &mut Builder, base: Value, step: Value, tuning: &Tuning) -> Built {
        let kind = tuning.inputs.get(&Knob::Schedule).copied();
        if kind.is_none() && *self == Schedule::Constant {
            return Ok(base);
        }
        let knob = |k: Knob| tuning.get(k, k.of_schedule(self));
        let one = b.scalar_like(1.0, step)?;
        let current = b.sub(step, one)?;
        // During warmup: current / max(1, warmup).
        let ramp = knob(Knob::WarmupRate).times(b, current)?;
        // After it: progress = (current − warmup) / max(1, total − warmup).
        let w = knob(Knob::Warmup).value(b, step)?;
        let since = b.sub(current, w)?;
        let linear = |b: &mut Builder| -> Built {
            // max(0, (total − current) / span)
            let t = knob(Knob::Total).value(b, step)?;
            let left = b.sub(t, current)?;
            knob(Knob::LinearRate).times(b, left)
        };
        let cosine = |b: &mut Builder| -> Built {
            // max(0, ½(1 + cos(π · progress)))
            let progress = knob(Knob::CosineRate).times(b, since)?;
            let c = b.unary(UnaryOp::Cos, progress)?;
            let c = b.add(one, c)?;
            b.scale(c, 0.5)
        };
        let after = match (kind, self) {
            (Some(k), _) => {
                let (l, c) = (linear(b)?, cosine(b)?);
                let is_linear = b.compare_to(CompareDir::Eq, k, 1.0)?;
                b.select(is_linear, l, c)?
            }
            (None, Schedule::Linear { .. }) => linear(b)?,
            (None, _) => cosine(b)?,
        };
        let zero = b.scalar_like(0.0, step)?;
        let after = b.binary(BinaryOp::Max, after, zero)?;
        let warming = b.compare(CompareDir::Lt, current, w)?;
        let mut factor = b.select(warming, ramp, after)?;
        if let Some(k) = kind {
            let constant = b.compare_to(CompareDir::Eq, k, 0.0)?;
            factor = b.select(constant, one, factor)?;
        }
        b.mul(base, factor)
    }
}

/// `torch.nn.utils.clip_grad_norm_(max_norm)`: every gradient scaled by
/// `min(1, max_norm / (norm + 1e-6))`, `norm` the global 2-norm (given).
pub fn clip(b: &mut Builder, grads: &[Value], norm: Value, max_norm: f64) -> Result<Vec<Value>, String> {
    let eps = b.scalar_like(1e-6, norm)?;
    let n = b.add(norm, eps)?;
    let m = b.scalar_like(max_norm, norm)?;
    let coef = b.div(m, n)?;
    let one = b.scalar_like(1.0, norm)?;
    let coef = b.binary(BinaryOp::Min, coef, one)?;
    grads.iter().map(|&g| b.mul(g, coef)).collect()
}
