//! Training as one program: a model, its loss, the loss's gradients, gradient
//! clipping, the learning-rate schedule and the optimizer update, built into
//! a single step
//!
//! ```text
//! (batch, labels, parameters, optimizer state, step, lr) → (loss, grad_norm, lr,
//!                                                           parameters', state', step')
//! ```
//!
//! whose parameters, state and step are donated: XLA updates them in place,
//! and they stay on the device from one step to the next. The host feeds
//! batches and reads the three scalars.

pub mod lora;
pub mod loss;
pub mod optim;
pub mod quantize;
pub mod shard;
pub mod staged;

use crate::autodiff::{grad, GradOptions, Remat};
use crate::error::{Diagnostic, Error};
use crate::ir::builder::Builder;
use crate::ir::builder::Built;
use crate::ir::dtype::DType;
use crate::ir::op::{BinaryOp, CompareDir, ConstData, Op, UnaryOp};
use crate::ir::types::TensorType;
use crate::ir::{Module, ParamSource, Value, STEP_SEED_INPUT};
use lora::{Lora, LoraSite};
use loss::Loss;
use optim::{Knob, Optimizer, Schedule, Tuning};
use shard::Zero;

/// What a training step computes.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub loss: Loss,
    /// The model output the loss reads; `None`: the first output.
    pub output: Option<String>,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    /// Clip the gradients' global 2-norm to this (`clip_grad_norm_`).
    pub clip_norm: Option<f64>,
    /// Parameters whose name matches one of these patterns (`*` matches any
    /// run of characters) stay fixed: no gradient, no optimizer state.
    pub freeze: Vec<String>,
    /// Micro-batches per step (gradient accumulation): the step takes this
    /// many batches of the model's batch size at once, runs forward and
    /// backward on each in turn and sums their gradients, so it equals the
    /// step on the larger batch while keeping one micro-batch's activations.
    /// 1: no accumulation.
    pub accumulate: u64,
    /// What the backward pass recomputes instead of keeping
    /// ([`GradOptions::remat`]): less activation memory, more compute.
    pub remat: Remat,
    /// Train low-rank adapters of these layers (and the modules to save)
    /// instead of the model's weights, which stay fixed.
    pub lora: Option<Lora>,
    /// Dynamic loss scaling (for f16 compute), as `torch.amp.GradScaler`.
    pub loss_scale: Option<LossScale>,
    /// What a data-parallel step splits over the mesh axis `data` besides
    /// the batch ([`shard::shard_step`]).
    pub zero: Zero,
    /// Take the optimizer's weight decay and betas and the whole schedule
    /// as scalar inputs ([`Knob`]s, fed their values here by default), so
    /// that one compiled step runs any of their values (a sweep).
    pub tunable: bool,
}

/// `torch.amp.GradScaler(init_scale, growth_factor=2, backoff_factor=0.5,
/// growth_interval)`: the loss is multiplied by the scale before the
/// backward pass (so small f16 gradients do not flush to zero) and the
/// gradients divided by it after; a step whose gradients are not all finite
/// changes no weight, state or step count (the schedule does not advance,
/// as transformers' Trainer skips it too) and halves the scale; every
/// `growth_interval` finite steps in a row double it. The scale is kept as
/// its exponent over `init` (optimizer state `loss_scale.exponent`, with
/// `loss_scale.growth_tracker`), so it saves and resumes with the rest.
/// A skipped step reports a non-finite `grad_norm`.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScale {
    pub init: f64,
    pub growth_interval: u64,
}

impl Default for LossScale {
    /// PyTorch's defaults: 2¹⁶, every 2000 steps.
    fn default() -> LossScale {
        LossScale { init: 65536.0, growth_interval: 2000 }
    }
}
/// Where an argument of the step program gets its value.
#[derive(Clone, Debug, PartialEq)]
pub enum StepArg {
    /// A model input, fed with each batch.
    Batch,
    /// The labels (or targets), fed with each batch; integer class labels
    /// lie in `0..classes` (or equal the ignore index).
    Labels { classes: Option<u64> },
    /// A trainable parameter: first the model's weight, then the previous step's output.
    Weight(ParamSource),
    /// Optimizer state: first zeros, then the previous step's output; `of`,
    /// the input index of the weight it belongs to (`None`: the loss scaler's).
    State { of: Option<usize> },
    /// How many updates were made: first 0, then the previous step's output.
    StepCount,
    /// The base learning rate, a runtime scalar (a sweep changes it without recompiling).
    LearningRate,
    /// The model input [`STEP_SEED_INPUT`]: a new random seed every step (dropout).
    Seed,
    /// A hyperparameter of a tunable step, `value` as the step was configured.
    Knob { knob: Knob, value: f64 },
}

/// The step program and how each of its inputs is fed. Its outputs are
/// `loss`, `grad_norm` and `lr` (scalars), then the new weights, the new
/// optimizer state and the new step count, each donated from its input
/// ([`Module::donations`] pairs them).
#[derive(Clone, Debug)]
pub struct TrainStep {
    pub module: Module,
    pub args: Vec<StepArg>,
    /// The layers LoRA adapted (empty without LoRA).
    pub lora: Vec<LoraSite>,
}

/// The scalars a step reports, before the updated values.
pub const REPORTED: [&str; 3] = ["loss", "grad_norm", "lr"];

/// True when `name` matches `pattern`, where `*` stands for any run of characters.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else { return false };
            (0..=tail.len()).filter(|&i| tail.is_char_boundary(i)).any(|i| matches_pattern(rest, &tail[i..]))
        }
    }
}

fn invalid(location: &str, message: String) -> Error {
    Error::Invalid { origin: "train".into(), diagnostics: vec![Diagnostic::new(location, message)] }
}

/// The model with the labels as an input, the loss's sums appended and the
/// trainable parameters made inputs (after the batch and the labels): what
/// the train and evaluation steps share.
struct Prepared {
    m: Module,
    args: Vec<StepArg>,
    trainable: Vec<Value>,
    sums: loss::Sums,
    lora: Vec<LoraSite>,
    /// With loss scaling: the scale's exponent (an input) and the scale.
    scale: Option<(Value, Value)>,
}

/// `training`: the train step's (LoRA's dropout on), else the evaluation's.
fn prepare(model: &Module, config: &TrainConfig, training: bool) -> Result<Prepared, Error> {
    let mut m = model.clone();
    let lora = match &config.lora {
        Some(l) => l.apply(&mut m, training)?,
        None => vec![],
    };
    let pred = match &config.output {
        Some(name) => {
            let i = m.output_names().iter().position(|n| n == name).ok_or_else(|| {
                invalid(
                    "--output",
                    format!("the model has no output `{name}` (outputs: {})", m.output_names().join(", ")),
                )
            })?;
            m.outputs()[i]
        }
        None => m.outputs()[0],
    };
    let pt = m.value(pred).ty.clone();
    if !pt.dtype.is_float() {
        return Err(invalid("output", format!("the loss reads a float prediction, found {pt}")));
    }
    let labels_ty = match &config.loss {
        Loss::Mse => pt.clone(),
        Loss::CrossEntropy { .. } => TensorType::new(DType::I64, pt.shape[..pt.rank().saturating_sub(1)].to_vec()),
        Loss::CausalLm { .. } => TensorType::new(DType::I64, pt.shape[..pt.rank().min(2)].to_vec()),
    };
    let seed = TensorType::scalar(DType::I64);
    let mut args: Vec<StepArg> = m
        .inputs()
        .iter()
        .map(|&v| match m.value(v) {
            x if x.name == STEP_SEED_INPUT && x.ty == seed => StepArg::Seed,
            _ => StepArg::Batch,
        })
        .collect();
    let labels = m.add_input(m.fresh_name("labels"), labels_ty);
    let classes = config.loss.has_class_labels().then(|| pt.shape.last().copied()).flatten();
    args.push(StepArg::Labels { classes });
    let sums = {
        let mut b = Builder::new(&mut m);
        loss::sums(&mut b, &config.loss, pred, labels).map_err(|e| invalid("loss", e))?
    };
    // Trainable parameters become inputs: fed by the previous step, never folded as constants.
    // With LoRA, only the adapters and the modules to save train.
    let adapted = |name: &str| {
        lora.iter().any(|s| s.a == name || s.b == name) || config.lora.as_ref().is_some_and(|l| l.saves(name))
    };
    let trainable: Vec<Value> = m
        .params()
        .iter()
        .map(|p| p.value)
        .filter(|&v| m.value(v).ty.dtype.is_float())
        .filter(|&v| config.lora.is_none() || adapted(&m.value(v).name))
        .filter(|&v| !config.freeze.iter().any(|f| matches_pattern(f, &m.value(v).name)))
        .collect();
    if trainable.is_empty() {
        return Err(invalid("--freeze", "no float parameter is left to train".into()));
    }
    for &v in &trainable {
        let source = m.promote_param_to_input(v).expect("a parameter of the module");
        args.push(StepArg::Weight(source));
    }
    let scale = match &config.loss_scale {
        Some(s) if training => {
            let exponent = m.add_input(m.fresh_name("loss_scale.exponent"), TensorType::scalar(DType::F32));
            args.push(StepArg::State { of: None });
            let mut b = Builder::new(&mut m);
            let scale = scale_of(&mut b, exponent, s.init).map_err(|e| invalid("loss scale", e))?;
            Some((exponent, scale))
        }
        _ => None,
    };
    Ok(Prepared { m, args, trainable, sums, lora, scale })
}

/// The evaluation of `model` as `config` trains it: the same inputs as the
/// train step up to its weights (batch, labels, weights), and the outputs
/// `loss_sum`, `count` and, for class labels, `correct` (scalars summed over
/// the batch: the loss is `loss_sum / count`, the accuracy `correct / count`).
pub fn eval_step(model: &Module, config: &TrainConfig) -> Result<TrainStep, Error> {
    let Prepared { mut m, args, sums, lora, .. } = prepare(model, config, false)?;
    m.clear_outputs();
    let mut outputs = vec![(sums.total, "loss_sum"), (sums.count, "count")];
    outputs.extend(sums.correct.map(|c| (c, "correct")));
    for (i, (v, name)) in outputs.into_iter().enumerate() {
        m.add_output(v);
        m.set_output_name(i, name);
    }
    crate::ir::verify::verify(&m, "after building the evaluation step")?;
    Ok(TrainStep { module: m, args, lora })
}

/// `init · 2^exponent`.
fn scale_of(b: &mut Builder, exponent: Value, init: f64) -> Built {
    let two = b.scalar(2.0, DType::F32)?;
    let power = b.binary(BinaryOp::Pow, two, exponent)?;
    b.scale(power, init)
}

/// The loss and its gradients, computed on the whole batch at once; with
/// loss scaling, both times the scale (`Some`: the scale's exponent, an input of `m`).
struct Gradients {
    m: Module,
    loss: Value,
    grads: Vec<Value>,
    /// The trainable weights, inputs of `m`.
    trainable: Vec<Value>,
    exponent: Option<Value>,
}

/// `loss = total / count` (times the scale) and its gradients by the prepared model's weights.
fn whole_batch(p: Prepared, remat: Remat) -> Result<Gradients, Error> {
    let Prepared { mut m, trainable, sums, scale, .. } = p;
    let mut b = Builder::new(&mut m);
    let mut loss = b.div(sums.total, sums.count).map_err(|e| invalid("train step", e))?;
    if let Some((_, s)) = scale {
        loss = b.mul(loss, s).map_err(|e| invalid("train step", e))?;
    }
    m.clear_outputs();
    m.add_output(loss);
    m.set_output_name(0, "loss");
    let names: Vec<String> = trainable.iter().map(|&v| m.value(v).name.clone()).collect();
    let m = grad(&m, &GradOptions { loss: Some("loss".into()), wrt: names, remat })?;
    let grads = m.outputs()[1..].to_vec();
    Ok(Gradients { loss: m.outputs()[0], m, grads, trainable, exponent: scale.map(|(e, _)| e) })
}

/// Added to the step's seed for micro-batch `k` (times `k`), so each draws its own dropout masks.
const MICRO_BATCH_SEED_STRIDE: i64 = 0x9E37_79B9_7F4A_7C15_u64 as i64;

/// Gradient accumulation: the step's batch arrays hold `k` micro-batches
/// (their first axis `k` times the model's); the model's forward and
/// backward run on each slice in turn, as one program, and the loss and
/// gradients are the sums of the slices' over the summed count: those of
/// the whole batch, up to rounding.
fn accumulated(p: Prepared, k: u64, remat: Remat) -> Result<Gradients, Error> {
    let rule = |e: String| invalid("--accumulate", e);
    let Prepared { mut m, args, trainable, sums, scale, .. } = p;
    // One micro-batch: its loss sum (times the scale) and count, and the sum's gradients.
    let total = match scale {
        Some((_, s)) => Builder::new(&mut m).mul(sums.total, s).map_err(rule)?,
        None => sums.total,
    };
    let mut micro = m.clone();
    micro.clear_outputs();
    for (i, (v, name)) in [(total, "loss_sum"), (sums.count, "count")].into_iter().enumerate() {
        micro.add_output(v);
        micro.set_output_name(i, name);
    }
    let names: Vec<String> = trainable.iter().map(|&v| m.value(v).name.clone()).collect();
    let micro = grad(&micro, &GradOptions { loss: Some("loss_sum".into()), wrt: names, remat })?;

    let mut step = Module::new(m.name.clone());
    let mut whole = Vec::new();
    for (&v, arg) in m.inputs().iter().zip(&args) {
        let x = m.value(v);
        let mut ty = x.ty.clone();
        if matches!(arg, StepArg::Batch | StepArg::Labels { .. }) {
            let Some(rows) = ty.shape.first_mut() else {
                return Err(rule(format!("input `{}` is a scalar: a micro-batch needs an example axis", x.name)));
            };
            *rows *= k;
        }
        whole.push(step.add_input(x.name.clone(), ty));
    }
    let params: Vec<Value> = m
        .params()
        .iter()
        .map(|p| {
            let x = m.value(p.value);
            step.add_param(x.name.clone(), x.ty.clone(), p.source.clone())
        })
        .collect();
    let mut b = Builder::new(&mut step);
    let mut total: Option<(Value, Value, Vec<Value>)> = None;
    for i in 0..k {
        // Micro-batch i's rows are gathered at indices offset by a zero that
        // waits for micro-batch i-1's summed gradients, so XLA runs the
        // micro-batches in turn and one micro-batch's activations are live.
        let after = match &total {
            Some((_, _, g)) => {
                b.zero_after(g).map_err(rule)?.map(|z| b.cast(z, DType::I64)).transpose().map_err(rule)?
            }
            None => None,
        };
        let mut inputs = Vec::new();
        for ((&v, &w), arg) in m.inputs().iter().zip(&whole).zip(&args) {
            inputs.push(match arg {
                StepArg::Batch | StepArg::Labels { .. } => {
                    let rows = m.value(v).ty.shape[0];
                    micro_batch(&mut b, w, rows, i, after).map_err(rule)?
                }
                StepArg::Seed if i > 0 => {
                    let data = ConstData::Int(vec![MICRO_BATCH_SEED_STRIDE.wrapping_mul(i as i64)]);
                    let offset = b.op(Op::Constant { dtype: DType::I64, shape: vec![], data }, &[]).map_err(rule)?;
                    b.add(w, offset).map_err(rule)?
                }
                _ => w,
            });
        }
        let out = b.m.inline(&micro, &inputs, &params, &format!("micro{i}."));
        total = Some(match total {
            None => (out[0], out[1], out[2..].to_vec()),
            Some((t, c, g)) => {
                let t = b.add(t, out[0]).map_err(rule)?;
                let c = b.add(c, out[1]).map_err(rule)?;
                let g = g.iter().zip(&out[2..]).map(|(&a, &x)| b.add(a, x)).collect::<Result<_, _>>().map_err(rule)?;
                (t, c, g)
            }
        });
    }
    let (t, c, g) = total.ok_or_else(|| rule("at least one micro-batch".into()))?;
    let loss = b.div(t, c).map_err(rule)?;
    let grads = g.iter().map(|&x| b.div(x, c)).collect::<Result<_, _>>().map_err(rule)?;
    // The step's inputs stand for the model's, in order.
    let outer = |v: Value| m.inputs().iter().position(|&i| i == v).map(|k| whole[k]);
    let exponent = scale.and_then(|(e, _)| outer(e));
    let trainable = m.inputs().iter().zip(&whole).filter(|(v, _)| trainable.contains(v)).map(|(_, &w)| w).collect();
    Ok(Gradients { m: step, loss, grads, trainable, exponent })
}

/// Rows `i·rows..(i+1)·rows` of `whole`: sliced, or gathered at indices offset by `after`.
fn micro_batch(b: &mut Builder, whole: Value, rows: u64, i: u64, after: Option<Value>) -> Result<Value, String> {
    let shape = b.ty(whole).shape;
    let Some(after) = after else {
        let mut starts = vec![0; shape.len()];
        let mut limits = shape.clone();
        starts[0] = i * rows;
        limits[0] = (i + 1) * rows;
        return b.op(Op::Slice { starts, limits, strides: vec![1; shape.len()] }, &[whole]);
    };
    let iota = b.op(Op::Iota { dtype: DType::I64, shape: vec![rows], axis: 0 }, &[])?;
    let first = b.scalar((i * rows) as f64, DType::I64)?;
    let at = b.add(iota, first)?;
    let at = b.add(at, after)?;
    b.op(Op::Gather { axis: 0 }, &[whole, at])
}

/// Builds the training step of `model` as `config` says.
pub fn train_step(model: &Module, config: &TrainConfig) -> Result<TrainStep, Error> {
    let rule = |e: String| invalid("train step", e);
    let prepared = prepare(model, config, true)?;
    let mut args = prepared.args.clone();
    let lora = prepared.lora.clone();
    let Gradients { mut m, loss, grads, trainable, exponent } = match config.accumulate {
        0 => return Err(invalid("--accumulate", "at least 1 micro-batch per step".into())),
        1 => whole_batch(prepared, config.remat)?,
        k => accumulated(prepared, k, config.remat)?,
    };
    let names: Vec<String> = trainable.iter().map(|&v| m.value(v).name.clone()).collect();

    let f32 = TensorType::scalar(DType::F32);
    let lr_base = m.add_input(m.fresh_name("lr"), f32.clone());
    args.push(StepArg::LearningRate);
    let step = m.add_input(m.fresh_name("step"), f32.clone());
    args.push(StepArg::StepCount);
    let mut tuning = Tuning::default();
    if config.tunable {
        for knob in Knob::of(&config.optimizer) {
            tuning.inputs.insert(knob, m.add_input(m.fresh_name(knob.name()), f32.clone()));
            args.push(StepArg::Knob { knob, value: knob.value(&config.optimizer, &config.schedule) });
        }
    }
    let mut states: Vec<Vec<Value>> = Vec::new();
    for (&p, name) in trainable.iter().zip(&names) {
        let of = m.inputs().iter().position(|&v| v == p);
        let s = state_inputs(&mut m, &config.optimizer, p, name);
        args.extend(s.iter().map(|_| StepArg::State { of }));
        states.push(s);
    }

    let tracker = config.loss_scale.as_ref().map(|_| {
        args.push(StepArg::State { of: None });
        m.add_input(m.fresh_name("loss_scale.growth_tracker"), TensorType::scalar(DType::F32))
    });
    let mut b = Builder::new(&mut m);
    // With loss scaling: the loss and gradients divided by the scale (a power of two: exact).
    let scale = match (exponent, &config.loss_scale) {
        (Some(e), Some(ls)) => Some(scale_of(&mut b, e, ls.init).map_err(rule)?),
        _ => None,
    };
    let (loss, grads) = match scale {
        Some(s) => {
            let one = b.scalar(1.0, DType::F32).map_err(rule)?;
            let inverse = b.div(one, s).map_err(rule)?;
            let grads = grads.iter().map(|&g| b.mul(g, inverse)).collect::<Result<Vec<_>, _>>().map_err(rule)?;
            (b.div(loss, s).map_err(rule)?, grads)
        }
        None => (loss, grads),
    };
    shard::zero_gradients(b.m, &grads, config.zero)?;
    let norm = loss::global_norm(&mut b, &grads).map_err(rule)?;
    let Applied { lr, new_step, mut updated } =
        apply(&mut b, config, &trainable, grads, &states, norm, lr_base, step, &tuning).map_err(rule)?;
    let one = b.scalar(1.0, DType::F32).map_err(rule)?;
    let mut new_step = new_step;
    let mut scaler = Vec::new();
    if let (Some(exponent), Some(tracker), Some(ls)) = (exponent, tracker, &config.loss_scale) {
        // A step whose gradients are not all finite (their norm is not) keeps everything as it was.
        let infinity = b.scalar(f64::INFINITY, DType::F32).map_err(rule)?;
        let finite = b.compare(CompareDir::Lt, norm, infinity).map_err(rule)?;
        let keep = |b: &mut Builder, new: Value, old: Value| b.select(finite, new, old);
        for (p, new_p, s, new_s) in &mut updated {
            *new_p = keep(&mut b, *new_p, *p).map_err(rule)?;
            for (old, new) in s.iter().zip(new_s.iter_mut()) {
                *new = keep(&mut b, *new, *old).map_err(rule)?;
            }
        }
        new_step = keep(&mut b, new_step, step).map_err(rule)?;
        // GradScaler's update: back off on overflow, grow after growth_interval finite steps.
        let counted = b.add(tracker, one).map_err(rule)?;
        let grow = b.compare_to(CompareDir::Ge, counted, ls.growth_interval as f64).map_err(rule)?;
        let up = b.add(exponent, one).map_err(rule)?;
        let down = b.sub(exponent, one).map_err(rule)?;
        let zero = b.scalar(0.0, DType::F32).map_err(rule)?;
        let grown = b.select(grow, up, exponent).map_err(rule)?;
        let counted = b.select(grow, zero, counted).map_err(rule)?;
        let new_exponent = b.select(finite, grown, down).map_err(rule)?;
        let new_tracker = b.select(finite, counted, zero).map_err(rule)?;
        scaler = vec![(exponent, new_exponent), (tracker, new_tracker)];
    }

    m.clear_outputs();
    for (i, (v, name)) in [(loss, "loss"), (norm, "grad_norm"), (lr, "lr")].into_iter().enumerate() {
        m.add_output(v);
        m.set_output_name(i, name);
    }
    donate_updates(&mut m, &updated);
    donate(&mut m, step, new_step);
    for (old, new) in scaler {
        donate(&mut m, old, new);
    }
    crate::ir::verify::verify(&m, "after building the train step")?;
    Ok(TrainStep { module: m, args, lora })
}

/// Adds `p`'s optimizer state as inputs of `m`, named `NAME.SUFFIX` after the weight `name`.
fn state_inputs(m: &mut Module, optimizer: &Optimizer, p: Value, name: &str) -> Vec<Value> {
    let ty = m.value(p).ty.clone();
    optimizer
        .state(&ty)
        .into_iter()
        .map(|(suffix, sty)| m.add_input(m.fresh_name(&format!("{name}.{suffix}")), sty))
        .collect()
}

/// An update applied: the new step count, its learning rate, and per
/// weight (weight, new weight, state, new state).
struct Applied {
    lr: Value,
    new_step: Value,
    updated: Vec<(Value, Value, Vec<Value>, Vec<Value>)>,
}

/// The optimizer's update of the weights `trainable` by `grads` (clipped
/// by their global norm `norm` as `config` says), with their `states`, at
/// step `step + 1` of the schedule from the base rate `lr_base`.
#[allow(clippy::too_many_arguments)]
fn apply(
    b: &mut Builder,
    config: &TrainConfig,
    trainable: &[Value],
    grads: Vec<Value>,
    states: &[Vec<Value>],
    norm: Value,
    lr_base: Value,
    step: Value,
    tuning: &Tuning,
) -> Result<Applied, String> {
    let grads = match config.clip_norm {
        Some(max) => optim::clip(b, &grads, norm, max)?,
        None => grads,
    };
    let one = b.scalar(1.0, DType::F32)?;
    let new_step = b.add(step, one)?;
    let lr = config.schedule.rate(b, lr_base, new_step, tuning)?;
    let after_backward = zero_after_norm(b, norm)?;
    let mut updated = Vec::new();
    for ((&p, &g), s) in trainable.iter().zip(&grads).zip(states) {
        let z = b.cast(after_backward, b.ty(p).dtype)?;
        let read = b.add(p, z)?;
        let (new_p, new_s) = config.optimizer.update(b, read, g, s, lr, new_step, tuning)?;
        updated.push((p, new_p, s.clone(), new_s));
    }
    Ok(Applied { lr, new_step, updated })
}

/// A scalar f32 `-0.0` computed from the gradients' global norm `norm`: a
/// weight plus it is the weight bit for bit, and an update that reads its
/// weight so waits for every gradient, so for every product of the backward
/// pass that reads the old weights. XLA then sees that nothing reads a
/// donated weight after its update and writes the new weight into the old
/// buffer, instead of copying each weight at the start of the step (its copy
/// insertion cannot order two independent readers: the backward product and
/// the update). A non-finite norm counts as 0, so that one non-finite
/// gradient spoils only its own weight's update, as in PyTorch.
fn zero_after_norm(b: &mut Builder, norm: Value) -> Built {
    let norm = b.cast(norm, DType::F32)?;
    let magnitude = b.unary(UnaryOp::Abs, norm)?;
    let infinity = b.scalar(f64::INFINITY, DType::F32)?;
    let finite = b.compare(CompareDir::Lt, magnitude, infinity)?;
    let finite_magnitude = b.zero_where_not(finite, magnitude)?;
    let zero = b.scale(finite_magnitude, 0.0)?;
    b.neg(zero)
}

/// Appends `new` as an output that reuses input `arg`'s buffer, named as `arg`.
fn donate(m: &mut Module, arg: Value, new: Value) {
    m.add_output(new);
    let k = m.outputs().len() - 1;
    let name = m.value(arg).name.clone();
    m.set_output_name(k, name);
    m.donate(arg, k);
}

/// Appends the new weights, then the new states, of an [`Applied`] update
/// as outputs donated from the values they replace.
fn donate_updates(m: &mut Module, updated: &[(Value, Value, Vec<Value>, Vec<Value>)]) {
    for (p, new_p, _, _) in updated {
        donate(m, *p, *new_p);
    }
    for (_, _, s, new_s) in updated {
        for (&old, &new) in s.iter().zip(new_s) {
            donate(m, old, new);
        }
    }
}

/// The seed micro-batch `k` of a step seeded `seed` draws its random numbers from.
pub fn micro_batch_seed(seed: i64, k: u64) -> i64 {
    seed.wrapping_add(MICRO_BATCH_SEED_STRIDE.wrapping_mul(k as i64))
}

#[cfg(test)]
mod tests {
    use super::matches_pattern;

    #[test]
    fn freeze_patterns_match_with_stars() {
        assert!(matches_pattern("embeddings.*", "embeddings.word_embeddings.weight"));
        assert!(matches_pattern("*.bias", "fc1.bias"));
        assert!(matches_pattern("encoder.layer.*.attention.*", "encoder.layer.0.attention.self.query.weight"));
        assert!(!matches_pattern("fc1.*", "fc2.bias"));
        assert!(matches_pattern("fc1.bias", "fc1.bias") && !matches_pattern("fc1", "fc1.bias"));
    }
}
