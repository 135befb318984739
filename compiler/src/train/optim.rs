//! Optimizers, learning-rate schedules and gradient clipping as IR, with
//! PyTorch's and transformers' semantics, so that a trajectory can be
//! compared with theirs step by step: `torch.optim.SGD`, `torch.optim.AdamW`,
//! `get_constant_schedule`, `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup` and `clip_grad_norm_`. The operations
//! follow PyTorch's order of evaluation (`_single_tensor_sgd`,
//! `_single_tensor_adamw`), which decides the last bits of f32 results.

use crate::ir::builder::{Builder, Built};
use crate::ir::op::{BinaryOp, CompareDir, UnaryOp};
use crate::ir::types::TensorType;
use crate::ir::Value;

/// An optimizer and its hyperparameters (the learning rate comes from the schedule).
#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    /// `torch.optim.SGD(momentum, dampening, nesterov, weight_decay)`.
    Sgd { momentum: f64, dampening: f64, nesterov: bool, weight_decay: f64 },
    /// `torch.optim.AdamW(betas, eps, weight_decay)` (amsgrad off).
    AdamW { beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
}

impl Optimizer {
    /// PyTorch's defaults for `name` (`sgd`, `adamw`).
    pub fn default_for(name: &str) -> Option<Optimizer> {
        match name {
            "sgd" => Some(Optimizer::Sgd { momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 }),
            "adamw" => Some(Optimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }),
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
        }
    }

    /// Appends one update of parameter `p` by gradient `g` with state
    /// `state` (as [`Optimizer::state`] lists it), learning rate `lr` and the
    /// 1-based step number `step` (f32 scalars); returns the new parameter and state.
    pub fn update(
        &self,
        b: &mut Builder,
        p: Value,
        g: Value,
        state: &[Value],
        lr: Value,
        step: Value,
    ) -> Result<(Value, Vec<Value>), String> {
        match *self {
            Optimizer::Sgd { momentum, dampening, nesterov, weight_decay } => {
                let mut d = g;
                if weight_decay != 0.0 {
                    let decay = b.scale(p, weight_decay)?;
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
                // p ← p·(1 − lr·λ)
                let lr_decay = b.scale(lr, weight_decay)?;
                let one = b.scalar_like(1.0, lr)?;
                let keep = b.sub(one, lr_decay)?;
                let p = b.mul(p, keep)?;
                // m ← m + (1 − β₁)(g − m)  (torch's lerp_), v ← β₂·v + (1 − β₂)·g²
                let gm = b.sub(g, state[0])?;
                let gm = b.scale(gm, 1.0 - beta1)?;
                let m = b.add(state[0], gm)?;
                let vv = b.scale(state[1], beta2)?;
                let gg = b.mul(g, g)?;
                let gg = b.scale(gg, 1.0 - beta2)?;
                let v = b.add(vv, gg)?;
                // Bias corrections: 1 − βᵗ.
                let bc1 = bias_correction(b, beta1, step)?;
                let bc2 = bias_correction(b, beta2, step)?;
                let step_size = b.div(lr, bc1)?;
                let bc2_sqrt = b.unary(UnaryOp::Sqrt, bc2)?;
                // denom = √v / √bc₂ + ε;  p ← p − step_size · m / denom
                let sv = b.unary(UnaryOp::Sqrt, v)?;
                let denom = b.div(sv, bc2_sqrt)?;
                let e = b.scalar_like(eps, denom)?;
                let denom = b.add(denom, e)?;
                let ratio = b.div(m, denom)?;
                let delta = b.mul(ratio, step_size)?;
                Ok((b.sub(p, delta)?, vec![m, v]))
            }
        }
    }
}

/// `1 − βᵗ` for the step number `step`.
fn bias_correction(b: &mut Builder, beta: f64, step: Value) -> Built {
    let base = b.scalar_like(beta, step)?;
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
    /// Appends the learning rate of the update numbered `step` (1-based, f32): `base · λ(step − 1)`.
    pub fn rate(&self, b: &mut Builder, base: Value, step: Value) -> Built {
        let (warmup, total) = match *self {
            Schedule::Constant => return Ok(base),
            Schedule::Linear { warmup, total } | Schedule::Cosine { warmup, total } => (warmup, total),
        };
        let one = b.scalar_like(1.0, step)?;
        let current = b.sub(step, one)?;
        // During warmup: current / max(1, warmup).
        let ramp = b.scale(current, 1.0 / warmup.max(1) as f64)?;
        // After it: progress = (current − warmup) / max(1, total − warmup).
        let w = b.scalar_like(warmup as f64, step)?;
        let since = b.sub(current, w)?;
        let span = total.saturating_sub(warmup).max(1) as f64;
        let after = match self {
            Schedule::Linear { .. } => {
                // max(0, (total − current) / span)
                let t = b.scalar_like(total as f64, step)?;
                let left = b.sub(t, current)?;
                b.scale(left, 1.0 / span)?
            }
            _ => {
                // max(0, ½(1 + cos(π · progress)))
                let progress = b.scale(since, std::f64::consts::PI / span)?;
                let c = b.unary(UnaryOp::Cos, progress)?;
                let c = b.add(one, c)?;
                b.scale(c, 0.5)?
            }
        };
        let zero = b.scalar_like(0.0, step)?;
        let after = b.binary(BinaryOp::Max, after, zero)?;
        let warming = b.compare(CompareDir::Lt, current, w)?;
        let factor = b.select(warming, ramp, after)?;
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
