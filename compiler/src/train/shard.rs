//! How a training or evaluation step splits over a device mesh.
//!
//! - `--shard data`: every batch input (and the labels) along its first
//!   dimension over `data`; the weights and optimizer state stay whole on
//!   every device, and XLA's partitioner sums the gradients over `data`.
//! - `--shard tensor`: the weights as Megatron-LM splits them over `model`
//!   ([`tensor_parallel`]), a training step's weights being its inputs.
//!   LoRA's adapters follow their layer's weight: `B` (`[out, r]`) splits its
//!   outputs where the weight does, `A` (`[r, in]`) its inputs.
//! - Each optimizer state of a weight's shape is laid out as its weight.
//! - ZeRO ([`Zero`]) splits over `data`, on the first dimension that
//!   divides: 1 the optimizer state (the moments, whose size is the
//!   weight's; Adafactor's small factored statistics stay whole), 2 also
//!   the gradients (annotated as the
//!   step is built, see [`zero_gradients`]), 3 also the weights, which XLA
//!   gathers where they are used (FSDP). With `--shard tensor` too, ZeRO
//!   adds `data` on a dimension the tensor split leaves whole; stage 2's
//!   gradients are then XLA's to lay out (the tensor split is decided after
//!   the step is built).
//!
//! Every donated value leaves the step laid out as it came in, so the next
//! step takes the previous one's outputs as they are.
//!
//! A pipelined step's programs ([`super::staged`]) on a mesh `data=N` per
//! stage ([`shard_stage_program`]): each micro-batch over `data`, and every
//! value passed between stages (an activation, a cotangent) split as the
//! micro-batch when its first dimension is the micro-batch's, so a stage's
//! outputs arrive laid out as the next stage takes them; weights, optimizer
//! state and gradient accumulators whole on every device of the stage.

use super::lora::LoraSite;
use super::staged::Feed;
use super::StepArg;
use crate::error::{Diagnostic, Error};
use crate::ir::op::Op;
use crate::ir::sharding::{Mesh, Sharding};
use crate::ir::types::TensorType;
use crate::ir::{Module, Node, Value, ValueDef};
use crate::passes::sharding::{
    propagate_where, split_batch, tensor_parallel, Conflicts, ShardPolicy, DATA_AXIS, MODEL_AXIS,
};
use std::collections::HashSet;

/// ZeRO's stages: what of a data-parallel step is split over `data`
/// instead of held whole by every device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Zero {
    /// Nothing: plain data parallelism.
    #[default]
    Off,
    /// Stage 1: the optimizer state.
    OptimizerState,
    /// Stage 2: the optimizer state and the gradients.
    Gradients,
    /// Stage 3: the optimizer state, the gradients and the weights (FSDP).
    Weights,
}

impl Zero {
    /// The stage, 0 to 3.
    pub fn stage(self) -> u8 {
        self as u8
    }

    /// Stage `n` (0 to 3).
    pub fn from_stage(n: u8) -> Result<Zero, String> {
        match n {
            0 => Ok(Zero::Off),
            1 => Ok(Zero::OptimizerState),
            2 => Ok(Zero::Gradients),
            3 => Ok(Zero::Weights),
            _ => Err(format!("ZeRO has stages 0 to 3, not {n}")),
        }
    }
}

impl std::str::FromStr for Zero {
    type Err = String;
    fn from_str(s: &str) -> Result<Zero, String> {
        s.parse::<u8>().map_err(|_| format!("expected a ZeRO stage 0 to 3, found `{s}`")).and_then(Zero::from_stage)
    }
}

fn invalid(location: &str, message: String) -> Error {
    Error::Invalid { origin: "train: sharding".into(), diagnostics: vec![Diagnostic::new(location, message)] }
}

/// Lays out a pipelined step's program `m`, fed as `feeds` say (the inputs
/// of the model with its loss fed as `args`), over `mesh`, a `data` axis
/// (see the module documentation).
pub fn shard_stage_program(
    m: &mut Module,
    feeds: &[Feed],
    args: &[(StepArg, String, TensorType)],
    mesh: &Mesh,
) -> Result<(), Error> {
    if mesh.axes().iter().any(|(axis, _)| axis != DATA_AXIS) {
        return Err(invalid("--mesh", format!("a pipeline's stages split over `{DATA_AXIS}` only, not [{mesh}]")));
    }
    m.mesh = Some(mesh.clone());
    let rows = args.iter().find(|(a, _, _)| matches!(a, StepArg::Labels { .. })).map(|(_, _, ty)| ty.shape[0]);
    // Split as the micro-batch: a value whose first dimension is the micro-batch's.
    let as_batch = |ty: &TensorType| {
        let mut s = Sharding::replicated(ty.rank());
        if ty.rank() > 0 && Some(ty.shape[0]) == rows {
            s.0[0] = Some(DATA_AXIS.into());
        }
        s
    };
    let inputs = m.inputs().to_vec();
    for (&v, feed) in inputs.iter().zip(feeds) {
        match *feed {
            Feed::Input(j) if matches!(args[j].0, StepArg::Batch | StepArg::Labels { .. }) => {
                split_batch(m, v)?;
            }
            Feed::Activation { .. } | Feed::Cotangent { .. } => {
                let s = as_batch(&m.value(v).ty);
                m.set_sharding(v, Some(s));
            }
            _ => {
                let rank = m.value(v).ty.rank();
                m.set_sharding(v, Some(Sharding::replicated(rank)));
            }
        }
    }
    let donated: Vec<(Value, usize)> = m.donations().to_vec();
    for (k, &o) in m.outputs().to_vec().iter().enumerate() {
        let v = m.resolve(o);
        if matches!(m.value(v).def, ValueDef::Input(_)) {
            continue;
        }
        let s = match donated.iter().find(|&&(_, out)| out == k) {
            Some(&(input, _)) => m.value(input).sharding.clone(),
            None => Some(as_batch(&m.value(v).ty)),
        };
        m.set_sharding(v, s);
    }
    propagate_where(m, Conflicts::LeaveToXla)?;
    Ok(())
}

/// The size of the mesh's `data` axis, which ZeRO splits over.
fn data_size(m: &Module) -> Result<u64, Error> {
    let mesh = m.mesh.as_ref();
    mesh.and_then(|mesh| mesh.size(DATA_AXIS)).ok_or_else(|| {
        let has = mesh.map_or("no mesh".to_string(), |mesh| format!("the mesh is {mesh}"));
        invalid("--zero", format!("ZeRO splits over the data-parallel axis: pass --mesh {DATA_AXIS}=N ({has})"))
    })
}

/// `current` with `data` added on the first dimension it leaves whole whose
/// size divides by `n`: `None` when no dimension does (the value stays as it is).
pub fn with_data_axis(ty: &TensorType, current: Option<&Sharding>, n: u64) -> Option<Sharding> {
    let mut s = current.cloned().unwrap_or_else(|| Sharding::replicated(ty.rank()));
    if s.0.iter().flatten().any(|a| a == DATA_AXIS) {
        return Some(s);
    }
    let d = (0..ty.rank()).find(|&d| s.0[d].is_none() && ty.shape[d].is_multiple_of(n))?;
    s.0[d] = Some(DATA_AXIS.into());
    Some(s)
}

/// ZeRO 2 and 3: the gradients `grads` split over `data` (XLA then
/// reduce-scatters them instead of summing them whole on every device).
/// Called while the step is built, where the gradients are known.
pub fn zero_gradients(m: &mut Module, grads: &[Value], zero: Zero) -> Result<(), Error> {
    if zero < Zero::Gradients {
        return Ok(());
    }
    let n = data_size(m)?;
    // On a mesh with a `model` axis the weights' tensor split is not known yet (it is
    // decided after fusion): the gradients are left for XLA to lay out as their updates are.
    if m.mesh.as_ref().is_some_and(|mesh| mesh.size(MODEL_AXIS).is_some()) {
        return Ok(());
    }
    for &g in grads {
        if matches!(m.value(g).def, ValueDef::Node(_)) && m.value(g).sharding.is_none() {
            let s = with_data_axis(&m.value(g).ty, None, n);
            m.set_sharding(g, s);
        }
    }
    Ok(())
}

/// Annotates the step `m` (its inputs fed as `args` say) for `policies` and
/// `zero`, as the module documentation says, then propagates the
/// annotations (leaving to XLA the values whose operands conflict); returns
/// how many values it annotated.
pub fn shard_step(
    m: &mut Module,
    args: &[StepArg],
    lora: &[LoraSite],
    policies: &[ShardPolicy],
    zero: Zero,
) -> Result<usize, Error> {
    let inputs = m.inputs().to_vec();
    let mut rewrites = 0;
    if policies.contains(&ShardPolicy::Tensor) {
        let adapter = |v: &Value| lora.iter().any(|s| [&s.a, &s.b].contains(&&m.value(*v).name));
        let weights: HashSet<Value> = inputs
            .iter()
            .zip(args)
            .filter(|(_, a)| matches!(a, StepArg::Weight(_)))
            .map(|(&v, _)| v)
            .chain(m.params().iter().map(|p| p.value))
            .filter(|v| !adapter(v))
            .collect();
        rewrites += tensor_parallel(m, &weights)?;
        rewrites += adapters_as_their_weights(m, lora);
    }
    if policies.contains(&ShardPolicy::Data) {
        for (&v, arg) in inputs.iter().zip(args) {
            if matches!(arg, StepArg::Batch | StepArg::Labels { .. }) {
                rewrites += usize::from(split_batch(m, v)?);
            }
        }
    }
    // An optimizer state of its weight's shape is split as the weight.
    for (&v, arg) in inputs.iter().zip(args) {
        if let StepArg::State { of: Some(w) } = arg {
            let w = inputs[*w];
            if m.value(v).sharding.is_none() && m.value(v).ty.shape == m.value(w).ty.shape {
                if let Some(s) = m.value(w).sharding.clone() {
                    m.set_sharding(v, Some(s));
                    rewrites += 1;
                }
            }
        }
    }
    if zero > Zero::Off {
        let n = data_size(m)?;
        for (&v, arg) in inputs.iter().zip(args) {
            let split = match arg {
                // The moments (one number, or code, per weight element); Adafactor's
                // factored row and column statistics stay whole (small, and split
                // both would split the product they form twice over).
                StepArg::State { of: Some(w) } => m.value(v).ty.num_elements() >= m.value(inputs[*w]).ty.num_elements(),
                StepArg::Weight(_) => zero >= Zero::Weights,
                _ => false,
            };
            if split && m.value(v).ty.rank() > 0 {
                let s = with_data_axis(&m.value(v).ty, m.value(v).sharding.as_ref(), n);
                if s.is_some() && s != m.value(v).sharding {
                    let whole = m.value(v).sharding.clone();
                    m.set_sharding(v, s);
                    if matches!(arg, StepArg::Weight(_)) {
                        gather_where_used(m, v, whole);
                    }
                    rewrites += 1;
                }
            }
        }
    }
    // Each updated value leaves as its input came in.
    for (arg, k) in m.donations().to_vec() {
        let out = m.resolve(m.outputs()[k]);
        let want = m.value(arg).sharding.clone().unwrap_or_else(|| Sharding::replicated(m.value(arg).ty.rank()));
        if matches!(m.value(out).def, ValueDef::Node(_)) && m.value(out).sharding.as_ref() != Some(&want) {
            m.set_sharding(out, Some(want));
            rewrites += 1;
        }
    }
    // Then forward to the values they determine; where the backward pass
    // meets conflicting splits, XLA lays the value out.
    Ok(rewrites + propagate_where(m, Conflicts::LeaveToXla)?)
}

/// ZeRO 3: the weight `w`, split over `data` between steps, is used laid
/// out as `whole` (its sharding without `data`): a layout change inserted
/// before its first use, which XLA turns into an all-gather, takes its place
/// in every use.
fn gather_where_used(m: &mut Module, w: Value, whole: Option<Sharding>) {
    let users: Vec<Node> = m.order().iter().copied().filter(|&n| m.node(n).inputs.contains(&w)).collect();
    let Some(&first) = users.first() else { return };
    let ty = m.value(w).ty.clone();
    let name = m.fresh_name(&format!("{}.gathered", m.value(w).name));
    let gathered = m.insert_before(first, &name, Op::Reshape { shape: ty.shape.clone() }, vec![w], ty.clone());
    m.set_sharding(gathered, Some(whole.unwrap_or_else(|| Sharding::replicated(ty.rank()))));
    for n in users {
        for input in &mut m.node_mut(n).inputs {
            if *input == w {
                *input = gathered;
            }
        }
    }
}

/// Tensor parallelism of a LoRA step: each adapter split as its base
/// weight's features are (`B`'s outputs, `A`'s inputs), so the adapted
/// layer's two paths split alike. Returns how many adapters it annotated.
fn adapters_as_their_weights(m: &mut Module, lora: &[LoraSite]) -> usize {
    let by_name = |m: &Module, name: &str| {
        m.inputs().iter().copied().chain(m.params().iter().map(|p| p.value)).find(|&v| m.value(v).name == name)
    };
    let mut rewrites = 0;
    for site in lora {
        let (Some(w), Some(a), Some(b)) = (by_name(m, &site.weight), by_name(m, &site.a), by_name(m, &site.b)) else {
            continue;
        };
        let Some(s) = m.value(w).sharding.clone() else { continue };
        let (out_dim, in_dim) = if site.in_out { (1, 0) } else { (0, 1) };
        for (adapter, dim, split) in [(b, 0, s.axis(out_dim)), (a, 1, s.axis(in_dim))] {
            let Some(axis) = split else { continue };
            if m.value(adapter).sharding.is_none() && m.value(adapter).ty.rank() == 2 {
                let mut t = Sharding::replicated(2);
                t.0[dim] = Some(axis.to_string());
                m.set_sharding(adapter, Some(t));
                rewrites += 1;
            }
        }
    }
    rewrites
}
