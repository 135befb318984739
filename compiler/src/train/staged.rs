//! Pipeline-parallel training's programs: the model with its loss cut into
//! stages ([`crate::stages::split`]), and per stage four programs, each run
//! on the stage's device:
//!
//! - **forward**: the stage's nodes on one micro-batch, its inputs fed from
//!   the batch, its copy of the trainable weights and earlier stages'
//!   forward outputs (the loss's stage also returns the micro-batch's loss
//!   sum and count);
//! - **backward**: the stage's vector-Jacobian product
//!   ([`crate::autodiff::pullback`]) on the same micro-batch, from the same
//!   inputs (the forward is recomputed inside it, as GPipe rematerializes:
//!   a stage keeps only its inputs between a micro-batch's forward and
//!   backward) and the cotangents later stages' backwards return; it returns
//!   its float inputs' cotangents for the stages before it, and adds its
//!   weights' gradients to their accumulators (donated: summed on the device
//!   over the micro-batches);
//! - **norm**: the stage's share of the squared global gradient norm;
//! - **update**: the global norm from every stage's share, clipping, the
//!   schedule and the optimizer update of the stage's weights and state
//!   (donated), its accumulators zeroed for the next step.
//!
//! The gradients are the micro-batches' summed loss gradients over their
//! summed count: the step equals one device's on the whole batch, as
//! gradient accumulation does. A weight read by several stages (tied
//! embeddings) is held by each; each sums the stages' accumulated
//! gradients in stage order and updates its copy identically (as Megatron's
//! embedding group), and only the first counts it in the norm.

use super::{
    apply, donate, donate_updates, invalid, loss, prepare, state_inputs, Applied, Prepared, StepArg, TrainConfig,
};
use crate::autodiff::pullback;
use crate::error::Error;
use crate::ir::builder::Builder;
use crate::ir::dtype::DType;
use crate::ir::op::UnaryOp;
use crate::ir::types::TensorType;
use crate::ir::{Module, Value};
use crate::stages::{split, Source, Split};
use crate::train::lora::LoraSite;
use crate::train::optim::Tuning;

/// What an input of a stage program is fed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// Input `j` of the model with its loss ([`StagedStep::args`] says
    /// which: a batch array, the labels, the seed, or a trainable weight,
    /// the stage's copy).
    Input(usize),
    /// Output `output` of stage `stage`'s forward, on the same micro-batch.
    Activation { stage: usize, output: usize },
    /// Output `output` of stage `stage`'s backward (a cotangent of one of
    /// its inputs), on the same micro-batch.
    Cotangent { stage: usize, output: usize },
    /// The loss sum's own cotangent: 1.
    LossSeed,
    /// The gradient of weight input `weight` accumulated by stage `stage`.
    Grad { weight: usize, stage: usize },
    /// Optimizer state of weight input `weight` (its states in order).
    State { weight: usize },
    /// The micro-batches' summed count (the loss's denominator), f32.
    Count,
    /// Stage `stage`'s share of the squared global gradient norm.
    SquaredNorm(usize),
    /// The base learning rate.
    LearningRate,
    /// How many updates were made.
    StepCount,
}

/// A stage program and what each of its inputs is fed.
#[derive(Clone, Debug)]
pub struct Program {
    pub module: Module,
    pub feeds: Vec<Feed>,
}

/// A stage's programs (see the module documentation). The backward's
/// first inputs are the forward's, fed alike; its outputs are its float
/// activation inputs' cotangents, then its accumulators; a stage none of
/// whose float values reach the loss (or that reads no weight and no float
/// activation) has none. The update's outputs are `grad_norm` and `lr`,
/// then its donated inputs' new values.
#[derive(Clone, Debug)]
pub struct StageStep {
    pub forward: Program,
    pub backward: Option<Program>,
    pub norm: Program,
    pub update: Program,
}

impl StageStep {
    /// The programs, in the order forward, backward (if any), norm, update.
    pub fn programs(&self) -> Vec<&Program> {
        [Some(&self.forward), self.backward.as_ref(), Some(&self.norm), Some(&self.update)]
            .into_iter()
            .flatten()
            .collect()
    }

    /// [`StageStep::programs`], to change.
    pub fn programs_mut(&mut self) -> Vec<&mut Program> {
        [Some(&mut self.forward), self.backward.as_mut(), Some(&mut self.norm), Some(&mut self.update)]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// A training step split into pipeline stages.
#[derive(Clone, Debug)]
pub struct StagedStep {
    pub stages: Vec<StageStep>,
    /// How each input of the model with its loss is fed (`Batch`, `Labels`,
    /// `Seed` or `Weight`), with its name and type.
    pub args: Vec<(StepArg, String, TensorType)>,
    /// (stage, forward output) of a micro-batch's loss sum, and of its count.
    pub loss_sum: (usize, usize),
    pub count: (usize, usize),
    /// The layers LoRA adapted (empty without LoRA).
    pub lora: Vec<LoraSite>,
}

/// A forward's feeds: its inputs' sources.
fn forward_feeds(sources: &[Source]) -> Vec<Feed> {
    sources
        .iter()
        .map(|source| match *source {
            Source::Input(j) => Feed::Input(j),
            Source::Stage { stage, output } => Feed::Activation { stage, output },
        })
        .collect()
}

/// What pipeline-parallel training does not combine with.
fn refuse(config: &TrainConfig) -> Result<(), Error> {
    let refused = if config.accumulate != 1 {
        Some(("--accumulate", "a pipelined step accumulates over its micro-batches: give --microbatches instead"))
    } else if config.loss_scale.is_some() {
        Some(("--precision", "dynamic loss scaling (mixed-f16) is not pipelined: train in f32 or mixed-bf16"))
    } else if config.tunable {
        Some(("--pipeline", "a sweep's tunable step is not pipelined"))
    } else if config.remat != crate::autodiff::Remat::None {
        Some(("--remat", "a pipeline stage already recomputes its forward pass in its backward: drop --remat"))
    } else if config.zero != super::shard::Zero::Off {
        Some(("--zero", "a pipeline stage holds its weights and optimizer state whole on each of its devices"))
    } else {
        None
    };
    match refused {
        Some((option, message)) => Err(invalid(option, message.into())),
        None => Ok(()),
    }
}

/// Builds the pipelined training step of `model` as `config` says, cut
/// into `count` stages (before the nodes named in `starts`, else balanced;
/// see [`crate::stages`]).
pub fn staged_step(model: &Module, config: &TrainConfig, count: usize, starts: &[String]) -> Result<StagedStep, Error> {
    refuse(config)?;
    let Prepared { mut m, args, sums, lora, .. } = prepare(model, config, true)?;
    m.clear_outputs();
    for (i, (v, name)) in [(sums.total, "loss_sum"), (sums.count, "count")].into_iter().enumerate() {
        m.add_output(v);
        m.set_output_name(i, name);
    }
    // What only the evaluation reads (the correct count) is not cut into the stages.
    m.remove_dead_nodes();
    let Split { stages, outputs } = split(&m, count, starts)?;
    let (loss_sum, count_at) = (outputs[0], outputs[1]);
    let args: Vec<(StepArg, String, TensorType)> =
        m.inputs().iter().zip(args).map(|(&v, a)| (a, m.value(v).name.clone(), m.value(v).ty.clone())).collect();
    let is_weight = |j: usize| matches!(args[j].0, StepArg::Weight(_));
    let is_float = |module: &Module, i: usize| module.value(module.inputs()[i]).ty.dtype.is_float();
    // Per stage: its float activation inputs, and its weight inputs (input position, weight j).
    let activations: Vec<Vec<usize>> = stages
        .iter()
        .map(|(module, sources)| {
            (0..sources.len()).filter(|&i| matches!(sources[i], Source::Stage { .. }) && is_float(module, i)).collect()
        })
        .collect();
    let weights: Vec<Vec<(usize, usize)>> = stages
        .iter()
        .map(|(_, sources)| {
            sources
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match *s {
                    Source::Input(j) if is_weight(j) => Some((i, j)),
                    _ => None,
                })
                .collect()
        })
        .collect();
    // The stages holding weight j, in order.
    let users = |j: usize| -> Vec<usize> { (0..count).filter(|&t| weights[t].iter().any(|&(_, w)| w == j)).collect() };
    // Backwards from the loss: a stage differentiates when a float value it
    // hands on reaches the loss through a later stage's backward, and it has
    // something to differentiate by (else its gradients are zero: none is built).
    let mut backwards: Vec<Option<Program>> = vec![None; count];
    for (s, (module, sources)) in stages.iter().enumerate().rev() {
        // The float outputs later stages differentiate, once per reader, and the loss sum.
        let mut f = module.clone();
        let outs: Vec<(Value, String)> = module.outputs().iter().copied().zip(module.output_names().to_vec()).collect();
        f.clear_outputs();
        let mut cotangents = Vec::new();
        for (o, (v, name)) in outs.into_iter().enumerate() {
            if (s, o) == loss_sum {
                f.add_output(v);
                cotangents.push(Feed::LossSeed);
                continue;
            }
            for (t, (_, later)) in stages.iter().enumerate().skip(s + 1) {
                for (i, source) in later.iter().enumerate() {
                    let read = *source == (Source::Stage { stage: s, output: o });
                    if read && backwards[t].is_some() && activations[t].contains(&i) {
                        f.add_output(v);
                        let k = f.outputs().len() - 1;
                        f.set_output_name(k, format!("{name}@stage{t}"));
                        let output = activations[t].iter().position(|&a| a == i).expect("a float activation input");
                        cotangents.push(Feed::Cotangent { stage: t, output });
                    }
                }
            }
        }
        let input_name = |i: usize| module.value(module.inputs()[i]).name.clone();
        let wrt: Vec<String> =
            activations[s].iter().copied().chain(weights[s].iter().map(|&(i, _)| i)).map(input_name).collect();
        if f.outputs().is_empty() || wrt.is_empty() {
            continue;
        }
        let mut g = pullback(&f, &wrt)?;
        let grads = g.outputs().to_vec();
        let names = g.output_names().to_vec();
        g.clear_outputs();
        let acts = activations[s].len();
        for (k, (&v, name)) in grads.iter().zip(&names).take(acts).enumerate() {
            g.add_output(v);
            g.set_output_name(k, name.clone());
        }
        let mut feeds = forward_feeds(sources);
        feeds.extend(cotangents);
        for (&(i, j), &grad) in weights[s].iter().zip(&grads[acts..]) {
            let ty = g.value(grad).ty.clone();
            let acc = g.add_input(g.fresh_name(&format!("grad.{}", input_name(i))), ty);
            feeds.push(Feed::Grad { weight: j, stage: s });
            let sum = Builder::new(&mut g).add(acc, grad).map_err(|e| invalid("--pipeline", e))?;
            donate(&mut g, acc, sum);
        }
        backwards[s] = Some(Program { module: g, feeds });
    }
    let mut built = Vec::with_capacity(count);
    for (s, ((module, sources), backward)) in stages.iter().zip(backwards).enumerate() {
        let forward = Program { module: module.clone(), feeds: forward_feeds(sources) };
        let norm = norm_program(&m.name, s, &weights[s], &args, &users)?;
        let update = update_program(&m.name, s, count, &weights[s], &args, &users, config)?;
        built.push(StageStep { forward, backward, norm, update });
    }
    Ok(StagedStep { stages: built, args, loss_sum, count: count_at, lora })
}

/// Weight `j`'s gradient in `m`: its stages' accumulators (inputs, fed
/// [`Feed::Grad`], in stage order) summed, over the count.
fn summed_gradient(
    b: &mut Builder,
    feeds: &mut Vec<Feed>,
    j: usize,
    (name, ty): (&str, &TensorType),
    users: &[usize],
    count: Value,
) -> Result<(Value, Vec<Value>), String> {
    let mut total: Option<Value> = None;
    let mut inputs = Vec::new();
    for &t in users {
        let acc = b.m.add_input(b.m.fresh_name(&format!("grad.{name}@stage{t}")), ty.clone());
        feeds.push(Feed::Grad { weight: j, stage: t });
        inputs.push(acc);
        total = Some(match total {
            Some(x) => b.add(x, acc)?,
            None => acc,
        });
    }
    let total = total.ok_or("a weight held by no stage")?;
    let count = if ty.dtype == DType::F32 { count } else { b.cast(count, ty.dtype)? };
    Ok((b.div(total, count)?, inputs))
}

fn norm_program(
    model: &str,
    s: usize,
    weights: &[(usize, usize)],
    args: &[(StepArg, String, TensorType)],
    users: &dyn Fn(usize) -> Vec<usize>,
) -> Result<Program, Error> {
    let rule = |e: String| invalid("--pipeline", e);
    let mut m = Module::new(format!("{model}.stage{s}.norm"));
    let scalar = TensorType::scalar(DType::F32);
    let count = m.add_input("count", scalar);
    let mut feeds = vec![Feed::Count];
    let mut b = Builder::new(&mut m);
    let mut grads = Vec::new();
    // Each weight counts once: on the first stage holding it.
    for &(_, j) in weights {
        let held = users(j);
        if held.first() == Some(&s) {
            let (_, name, ty) = &args[j];
            grads.push(summed_gradient(&mut b, &mut feeds, j, (name, ty), &held, count).map_err(rule)?.0);
        }
    }
    let mut share = match grads.is_empty() {
        true => b.scalar(0.0, DType::F32),
        false => loss::squared_norm(&mut b, &grads),
    }
    .map_err(rule)?;
    if b.ty(share).dtype != DType::F32 {
        share = b.cast(share, DType::F32).map_err(rule)?;
    }
    m.add_output(share);
    m.set_output_name(0, "squared_norm");
    crate::ir::verify::verify(&m, &format!("pipeline stage {s}'s norm"))?;
    Ok(Program { module: m, feeds })
}

fn update_program(
    model: &str,
    s: usize,
    count: usize,
    weights: &[(usize, usize)],
    args: &[(StepArg, String, TensorType)],
    users: &dyn Fn(usize) -> Vec<usize>,
    config: &TrainConfig,
) -> Result<Program, Error> {
    let rule = |e: String| invalid("--pipeline", e);
    let mut m = Module::new(format!("{model}.stage{s}.update"));
    let scalar = TensorType::scalar(DType::F32);
    let total = m.add_input("count", scalar.clone());
    let mut feeds = vec![Feed::Count];
    let shares: Vec<Value> =
        (0..count).map(|t| m.add_input(format!("squared_norm@stage{t}"), scalar.clone())).collect();
    feeds.extend((0..count).map(Feed::SquaredNorm));
    let lr_base = m.add_input("lr", scalar.clone());
    let step = m.add_input("step", scalar);
    feeds.extend([Feed::LearningRate, Feed::StepCount]);
    let (mut trainable, mut states, mut own) = (Vec::new(), Vec::new(), Vec::new());
    let mut sums = Vec::new();
    for &(_, j) in weights {
        let (_, name, ty) = &args[j];
        let p = m.add_input(name.clone(), ty.clone());
        feeds.push(Feed::Input(j));
        let state = state_inputs(&mut m, &config.optimizer, p, name);
        feeds.extend(state.iter().map(|_| Feed::State { weight: j }));
        let held = users(j);
        let mut b = Builder::new(&mut m);
        let (g, inputs) = summed_gradient(&mut b, &mut feeds, j, (name, ty), &held, total).map_err(rule)?;
        own.push(inputs[held.iter().position(|&t| t == s).expect("the stage holds its weight")]);
        trainable.push(p);
        states.push(state);
        sums.push(g);
    }
    let mut b = Builder::new(&mut m);
    let mut squared = shares[0];
    for &x in &shares[1..] {
        squared = b.add(squared, x).map_err(rule)?;
    }
    let norm = b.unary(UnaryOp::Sqrt, squared).map_err(rule)?;
    let Applied { lr, new_step, updated } =
        apply(&mut b, config, &trainable, sums, &states, norm, lr_base, step, &Tuning::default()).map_err(rule)?;
    let zeros: Vec<Value> = own
        .iter()
        .map(|&acc| {
            let ty = b.ty(acc);
            b.zeros(ty.dtype, &ty.shape)
        })
        .collect::<Result<_, _>>()
        .map_err(rule)?;
    for (i, (v, name)) in [(norm, "grad_norm"), (lr, "lr")].into_iter().enumerate() {
        m.add_output(v);
        m.set_output_name(i, name);
    }
    donate_updates(&mut m, &updated);
    for (&acc, &z) in own.iter().zip(&zeros) {
        donate(&mut m, acc, z);
    }
    donate(&mut m, step, new_step);
    crate::ir::verify::verify(&m, &format!("pipeline stage {s}'s update"))?;
    Ok(Program { module: m, feeds })
}
