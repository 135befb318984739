//! Running a training step program ([`xlac_compiler::train`]): the state it
//! starts from (the weights from their files, zeroed optimizer state, step
//! 0, the base learning rate) and, after each step, the state the next one
//! takes (the step's donated outputs, by the input each replaces).

use crate::{CompiledModel, DeviceModel, Error, Parameters, Session};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xlac_compiler::train::lora::{Lora, LoraSite, PEFT_PREFIX};
use xlac_compiler::train::loss::IGNORE_INDEX;
use xlac_compiler::train::{StepArg, REPORTED};
use xlac_compiler::{DType, TensorType};
use xlac_runtime::weights::WeightFile;
use xlac_runtime::{Arg, HostTensor, ShardedBuffer};

/// The scalars one step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

/// The program kinds a step's arguments come from: (error name, what it is).
const TRAIN: (&str, &str) = ("train", "a training step");
const EVAL: (&str, &str) = ("eval", "an evaluation step");

/// How `model`, compiled as `kind` ([`TRAIN`] or [`EVAL`]), feeds each
/// input; an error naming the kind when it was compiled as neither.
fn step_args<'a>(model: &'a CompiledModel, kind: (&str, &str)) -> Result<&'a [StepArg], Error> {
    model.step_args.as_deref().ok_or_else(|| Error::Input {
        model: model.path.clone(),
        name: kind.0.into(),
        message: format!("the model was not compiled as {}", kind.1),
    })
}

/// A step program loaded: its executable and weights on the devices, how
/// each input is fed, the inputs' names, and whether XLA compiled it (else
/// the compilation cache had it).
struct Loaded {
    device: DeviceModel,
    args: Vec<StepArg>,
    names: Vec<String>,
    compiled: bool,
}

/// `model`'s step arguments, loaded onto the devices, and its input names.
fn load_step(session: &Session, model: &CompiledModel, kind: (&str, &str)) -> Result<Loaded, Error> {
    let args = step_args(model, kind)?.to_vec();
    let (device, outcome) = session.load(model, &mut |_| {})?;
    let m = &model.module;
    let names = m.inputs().iter().map(|&v| m.value(v).name.clone()).collect();
    let compiled = matches!(outcome, xlac_runtime::CacheOutcome::Compiled { .. });
    Ok(Loaded { device, args, names, compiled })
}

/// The step program's inputs besides the batch, as they start: by input name.
pub fn initial_state(model: &CompiledModel, lr: f64) -> Result<BTreeMap<String, HostTensor>, Error> {
    let m = &model.module;
    let inputs: Vec<(&String, &TensorType)> = m.inputs().iter().map(|&v| (&m.value(v).name, &m.value(v).ty)).collect();
    initial_values(step_args(model, TRAIN)?, &inputs, lr)
}

/// The starting values of the inputs `inputs` (name, type) fed as `args` say,
/// besides the batch: by input name.
pub(crate) fn initial_values(
    args: &[StepArg],
    inputs: &[(&String, &TensorType)],
    lr: f64,
) -> Result<BTreeMap<String, HostTensor>, Error> {
    let weights: Vec<_> = args
        .iter()
        .zip(inputs)
        .filter_map(|(a, (_, ty))| match a {
            StepArg::Weight(source) => Some((source, *ty)),
            _ => None,
        })
        .collect();
    let params = Parameters::of(weights)?;
    let mut next_weight = 0;
    let mut state = BTreeMap::new();
    for (arg, &(name, ty)) in args.iter().zip(inputs) {
        let shape: Vec<usize> = ty.shape.iter().map(|&d| d as usize).collect();
        let value = match arg {
            StepArg::Batch | StepArg::Labels { .. } | StepArg::Seed => continue,
            StepArg::Weight(_) => {
                let v = params.value(next_weight)?;
                next_weight += 1;
                let t = v.as_ref()?;
                HostTensor::new(t.ty, t.shape.to_vec(), t.dense_bytes().into_owned())?
            }
            StepArg::State { .. } => {
                let bytes =
                    xlac_runtime::memory::zeroed(&format!("optimizer state `{name}`"), ty.size_bytes() as usize)?;
                HostTensor::new(ty.dtype, shape, bytes)?
            }
            StepArg::StepCount => HostTensor::from_array(&ndarray::arr0(0.0f32)),
            StepArg::LearningRate => HostTensor::from_array(&ndarray::arr0(lr as f32)),
            StepArg::Knob { value, .. } => HostTensor::from_array(&ndarray::arr0(*value as f32)),
        };
        state.insert(name.clone(), value);
    }
    Ok(state)
}

/// Replaces the values of `start` that `saved` holds a tensor of the same
/// name for; an error (naming the model at `path`) when one differs in type or shape.
pub(crate) fn take_saved(
    path: &Path,
    start: &mut BTreeMap<String, HostTensor>,
    saved: BTreeMap<String, HostTensor>,
) -> Result<(), Error> {
    for (name, t) in saved {
        if let Some(slot) = start.get_mut(&name) {
            if (slot.element_type(), slot.shape()) != (t.element_type(), t.shape()) {
                return Err(Error::Input {
                    model: path.into(),
                    name,
                    message: format!(
                        "the saved state holds {}{:?}; the step takes {}{:?}",
                        t.element_type(),
                        t.shape(),
                        slot.element_type(),
                        slot.shape()
                    ),
                });
            }
            *slot = t;
        }
    }
    Ok(())
}

/// Splits a step's outputs into its report and the state the next step
/// takes (each updated value under the name of the input it replaces),
/// carrying the inputs no output replaces (the learning rate) over from `state`.
pub fn after_step(
    outputs: Vec<(String, HostTensor)>,
    state: &mut BTreeMap<String, HostTensor>,
) -> Result<StepReport, String> {
    let scalar = |i: usize| -> Result<f64, String> {
        let (name, t) = outputs.get(i).ok_or("a step reports loss, grad_norm and lr")?;
        if name != REPORTED[i] {
            return Err(format!("output {i} is `{name}`, expected `{}`", REPORTED[i]));
        }
        t.to_f64_vec().first().copied().ok_or_else(|| format!("`{name}` is empty"))
    };
    let report = StepReport { loss: scalar(0)?, grad_norm: scalar(1)?, lr: scalar(2)? };
    for (name, t) in outputs.into_iter().skip(REPORTED.len()) {
        state.insert(name, t);
    }
    Ok(report)
}

/// The random seed of step `step` (from 1) of a run seeded by `run_seed`:
/// what [`StepArg::Seed`] is fed, so a resumed run draws what it would have.
pub fn step_seed(run_seed: u64, step: u64) -> i64 {
    xlac_core::rng::Rng::new(run_seed, step).next_u64() as i64
}

/// The seed input as a host tensor.
pub(crate) fn seed_tensor(seed: i64) -> HostTensor {
    HostTensor::from_array(&ndarray::arr0(seed))
}

/// The data array a step argument named `name` reads: the model input of its
/// name, or `labels`; `None` for the weights and state the step carries.
pub(crate) fn batch_array<'a>(arg: &StepArg, name: &'a str) -> Option<&'a str> {
    match arg {
        StepArg::Batch => Some(name),
        StepArg::Labels { .. } => Some("labels"),
        _ => None,
    }
}

/// A data set on disk: one `NAME.npy` per model input plus `labels.npy`,
/// examples along the first axis.
pub struct Dataset {
    pub dir: PathBuf,
    pub arrays: BTreeMap<String, HostTensor>,
    /// How many examples each array holds.
    pub len: usize,
}

impl Dataset {
    /// Reads every `.npy` in `dir`; they must hold the same number of examples.
    pub fn load(dir: &Path) -> Result<Dataset, Error> {
        let bad = |message: String| Error::Data { dir: dir.into(), message };
        let entries = std::fs::read_dir(dir).map_err(|e| bad(format!("cannot read the data directory: {e}")))?;
        let mut arrays = BTreeMap::new();
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "npy") {
                let name = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                arrays.insert(name, xlac_runtime::npy::read(&p)?);
            }
        }
        if arrays.is_empty() {
            return Err(bad("no .npy files (expected one per model input and labels.npy)".into()));
        }
        let counts: BTreeMap<&String, usize> =
            arrays.iter().map(|(n, t)| (n, t.shape().first().copied().unwrap_or(0))).collect();
        let len = counts.values().copied().min().unwrap_or(0);
        if counts.values().any(|&c| c != len) {
            let list: Vec<String> = counts.iter().map(|(n, c)| format!("{n}.npy: {c}")).collect();
            return Err(bad(format!("the arrays hold different numbers of examples ({})", list.join(", "))));
        }
        Ok(Dataset { dir: dir.into(), arrays, len })
    }

    /// Labels the examples by their array `input` (a causal LM's input ids:
    /// the loss shifts them), unless `labels.npy` already gives the labels.
    pub fn label_by(&mut self, input: &str) -> Result<(), Error> {
        if self.arrays.contains_key("labels") {
            return Ok(());
        }
        let ids = self.arrays.get(input).ok_or_else(|| Error::Data {
            dir: self.dir.clone(),
            message: format!("{input}.npy is missing (a causal LM's labels are its input ids)"),
        })?;
        self.arrays.insert("labels".into(), ids.clone());
        Ok(())
    }

    /// Checks the data against the step program's batch inputs before
    /// anything is compiled: every input and the labels present and nothing
    /// else, each example's shape and dtype as the program takes it, at
    /// least `batch` examples, and class labels in range.
    pub fn check(&self, model: &CompiledModel, batch: usize) -> Result<(), Error> {
        let args = model.step_args.as_deref().unwrap_or_default();
        let m = &model.module;
        let inputs: Vec<(StepArg, String, TensorType)> = args
            .iter()
            .zip(m.inputs())
            .map(|(a, &v)| (a.clone(), m.value(v).name.clone(), m.value(v).ty.clone()))
            .collect();
        self.check_inputs(&inputs, batch)
    }

    /// [`Dataset::check`] against inputs fed as their [`StepArg`]s say (with
    /// their names and types): a pipelined step's.
    pub fn check_inputs(&self, inputs: &[(StepArg, String, TensorType)], batch: usize) -> Result<(), Error> {
        let bad = |message: String| Error::Data { dir: self.dir.clone(), message };
        let mut wanted = Vec::new();
        for (arg, name, ty) in inputs {
            let Some(file) = batch_array(arg, name).map(str::to_string) else { continue };
            wanted.push(file.clone());
            let t =
                self.arrays.get(&file).ok_or_else(|| bad(format!("{file}.npy is missing ({name}: {ty} per batch)")))?;
            let per_example: Vec<usize> = ty.shape.iter().skip(1).map(|&d| d as usize).collect();
            let dtype_fits = t.element_type() == ty.dtype
                || (matches!(arg, StepArg::Labels { .. }) && t.element_type().is_integer() && ty.dtype.is_integer());
            if t.shape().get(1..) != Some(&per_example[..]) || !dtype_fits {
                return Err(bad(format!(
                    "{file}.npy holds {}{:?}; each example must be {}{per_example:?} (the batch is {ty})",
                    t.element_type(),
                    t.shape(),
                    ty.dtype
                )));
            }
            if let StepArg::Labels { classes: Some(c) } = arg {
                if let Some(l) =
                    t.to_f64_vec().into_iter().find(|&l| l != IGNORE_INDEX as f64 && !(0.0..*c as f64).contains(&l))
                {
                    return Err(bad(format!(
                        "labels.npy holds label {l}, outside 0..{c} (or {IGNORE_INDEX}, ignored)"
                    )));
                }
            }
        }
        if let Some(extra) = self.arrays.keys().find(|k| !wanted.contains(k)) {
            return Err(bad(format!("{extra}.npy is not an input of the model (expected {})", wanted.join(", "))));
        }
        if self.len < batch {
            return Err(bad(format!("{} examples, fewer than one batch of {batch}", self.len)));
        }
        Ok(())
    }

    /// The examples at `indices`, one tensor per array (labels widened to i64).
    pub fn batch(&self, indices: &[usize]) -> Result<BTreeMap<String, HostTensor>, Error> {
        let mut out = BTreeMap::new();
        for (name, t) in &self.arrays {
            let row = t.data().len() / self.len.max(1);
            let mut data = Vec::with_capacity(row * indices.len());
            for &i in indices {
                data.extend_from_slice(&t.data()[i * row..(i + 1) * row]);
            }
            let mut shape = t.shape().to_vec();
            shape[0] = indices.len();
            let mut b = HostTensor::new(t.element_type(), shape, data)?;
            if name == "labels" && b.element_type().is_integer() && b.element_type() != DType::I64 {
                let wide = b.to_f64_vec().iter().flat_map(|&l| (l as i64).to_le_bytes()).collect();
                b = HostTensor::new(DType::I64, b.shape().to_vec(), wide)?;
            }
            out.insert(name.clone(), b);
        }
        Ok(out)
    }
}

/// The order examples are drawn in: a permutation of `0..len` reshuffled
/// at the start of every epoch (Fisher–Yates with xorshift64* seeded by
/// `seed` and the epoch number); a last partial batch is dropped.
pub struct Batches {
    len: usize,
    batch: usize,
    seed: u64,
    epoch: u64,
    order: Vec<usize>,
    next: usize,
}

impl Batches {
    pub fn new(len: usize, batch: usize, seed: u64) -> Batches {
        Batches::at(len, batch, seed, 0, 0)
    }

    /// The order as it stands at example `next` of epoch `epoch` (a resumed run).
    pub fn at(len: usize, batch: usize, seed: u64, epoch: u64, next: usize) -> Batches {
        let mut b = Batches { len, batch, seed, epoch, order: Vec::new(), next: 0 };
        b.shuffle();
        b.next = next.min(len);
        b
    }

    /// Where the next batch starts: (epoch, position in it).
    pub fn position(&self) -> (u64, usize) {
        (self.epoch, self.next)
    }

    fn shuffle(&mut self) {
        let mut rng = xlac_core::rng::Rng::new(self.seed, self.epoch);
        self.order = (0..self.len).collect();
        for i in (1..self.len).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
        self.next = 0;
    }

    /// The epoch the next batch belongs to (0-based).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The example indices of the next batch.
    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.next + self.batch > self.len {
            self.epoch += 1;
            self.shuffle();
        }
        let b = self.order[self.next..self.next + self.batch].to_vec();
        self.next += self.batch;
        b
    }
}

/// A training step compiled and loaded: the frozen weights uploaded once,
/// the trainable weights, optimizer state, step count and learning rate
/// held on the devices from one step to the next.
pub struct Trainer {
    device: DeviceModel,
    args: Vec<StepArg>,
    names: Vec<String>,
    /// Per input: its buffer between steps, for the donated ones.
    state: Vec<Option<ShardedBuffer>>,
    /// Per input: its value, for the ones no step updates (the learning rate).
    fixed: Vec<Option<HostTensor>>,
    compiled: bool,
}

impl Trainer {
    /// Compiles (or finds in the cache) `model`, a training step, and uploads its starting state.
    pub fn new(session: &Session, model: &CompiledModel, lr: f64) -> Result<Trainer, Error> {
        Trainer::resume(session, model, lr, BTreeMap::new())
    }

    /// [`Trainer::new`], the state (weights, optimizer state, step count) taken
    /// from `saved` where it has a tensor of that input's name (as
    /// [`Trainer::state`] returned it), else as it starts.
    pub fn resume(
        session: &Session,
        model: &CompiledModel,
        lr: f64,
        saved: BTreeMap<String, HostTensor>,
    ) -> Result<Trainer, Error> {
        Trainer::start(model, load_step(session, model, TRAIN)?, lr, saved)
    }

    /// A new run of this trainer's step from the start (as [`Trainer::resume`]
    /// with `saved`, e.g. another trial's hyperparameters), sharing its
    /// executable and frozen weights: nothing compiled, the frozen weights not
    /// uploaded again. `model` is the step this trainer runs.
    pub fn restart(
        &self,
        model: &CompiledModel,
        lr: f64,
        saved: BTreeMap<String, HostTensor>,
    ) -> Result<Trainer, Error> {
        let device = self.device.sharing_weights(self.device.exe.clone(), model)?;
        let loaded = Loaded { device, args: self.args.clone(), names: self.names.clone(), compiled: false };
        Trainer::start(model, loaded, lr, saved)
    }

    fn start(
        model: &CompiledModel,
        loaded: Loaded,
        lr: f64,
        saved: BTreeMap<String, HostTensor>,
    ) -> Result<Trainer, Error> {
        let Loaded { device, args, names, compiled } = loaded;
        let mut start = initial_state(model, lr)?;
        take_saved(&model.path, &mut start, saved)?;
        let donated = |i: usize| device.exe.donations().iter().any(|&(d, _)| d == i);
        let (mut state, mut fixed) = (Vec::new(), Vec::new());
        for (i, n) in names.iter().enumerate() {
            let value = start.remove(n);
            match value {
                Some(t) if donated(i) => {
                    state.push(Some(device.exe.upload_argument(i, t.as_ref())?));
                    fixed.push(None);
                }
                other => {
                    state.push(None);
                    fixed.push(other);
                }
            }
        }
        Ok(Trainer { device, args, names, state, fixed, compiled })
    }

    /// True when XLA compiled the step for this trainer (else it came from the cache).
    pub fn compiled(&self) -> bool {
        self.compiled
    }

    /// One step on `batch` (the model inputs and `labels`), its random
    /// numbers (dropout) drawn from `seed` ([`step_seed`]); the updated
    /// state stays on the devices.
    pub fn step(&mut self, batch: &BTreeMap<String, HostTensor>, seed: i64) -> Result<StepReport, Error> {
        let mut inputs = Vec::with_capacity(self.names.len());
        for (i, (arg, name)) in self.args.iter().zip(&self.names).enumerate() {
            let buffer = match batch_array(arg, name) {
                _ if *arg == StepArg::Seed => self.device.exe.upload_argument(i, seed_tensor(seed).as_ref())?,
                Some(key) => {
                    let t = batch.get(key).ok_or_else(|| Error::Input {
                        model: PathBuf::from("train"),
                        name: key.into(),
                        message: "missing from the batch".into(),
                    })?;
                    self.device.exe.upload_argument(i, t.as_ref())?
                }
                // The donated state is handed over; a scalar no step updates is uploaded from the host.
                None => match (self.state[i].take(), &self.fixed[i]) {
                    (Some(b), _) => b,
                    (None, Some(t)) => self.device.exe.upload_argument(i, t.as_ref())?,
                    (None, None) => {
                        return Err(Error::Input {
                            model: PathBuf::from("train"),
                            name: name.clone(),
                            message: "the state was lost by a failed step".into(),
                        })
                    }
                },
            };
            inputs.push(buffer);
        }
        let outputs = self.device.execute_consuming(inputs)?;
        let scalar = |k: usize| -> Result<f64, Error> { Ok(outputs[k].to_host()?.to_f64_vec()[0]) };
        let report = StepReport { loss: scalar(0)?, grad_norm: scalar(1)?, lr: scalar(2)? };
        let mut outputs: Vec<Option<ShardedBuffer>> = outputs.into_iter().map(Some).collect();
        for &(arg, out) in self.device.exe.donations() {
            self.state[arg] = outputs[out].take();
        }
        Ok(report)
    }

    /// The trainable weights as they are now, by parameter name.
    pub fn weights(&self) -> Result<Vec<(String, HostTensor)>, Error> {
        self.held(|a| matches!(a, StepArg::Weight(_)))
    }

    /// The optimizer state and the step count as they are now, by input name.
    pub fn state(&self) -> Result<Vec<(String, HostTensor)>, Error> {
        self.held(|a| matches!(a, StepArg::State { .. } | StepArg::StepCount))
    }

    fn held(&self, which: impl Fn(&StepArg) -> bool) -> Result<Vec<(String, HostTensor)>, Error> {
        let mut out = Vec::new();
        for ((arg, name), buffer) in self.args.iter().zip(&self.names).zip(&self.state) {
            if let (true, Some(b)) = (which(arg), buffer) {
                out.push((name.clone(), b.to_host()?));
            }
        }
        Ok(out)
    }
}

/// A trainer's weights on its devices, by parameter name: what an
/// [`Evaluator`] reads.
pub trait HeldWeights {
    /// The device buffer of the trainable weight `name`.
    fn buffer(&self, name: &str) -> Option<&ShardedBuffer>;
}

impl HeldWeights for Trainer {
    fn buffer(&self, name: &str) -> Option<&ShardedBuffer> {
        let i = self.names.iter().position(|n| n == name)?;
        matches!(self.args[i], StepArg::Weight(_)).then(|| self.state[i].as_ref()).flatten()
    }
}

/// A training step on the devices, as a run drives it: one program
/// ([`Trainer`]) or pipelined stages ([`crate::pipeline_train::PipelineTrainer`]).
pub trait Training: HeldWeights {
    /// One step on `batch` (the model inputs and `labels`), its random
    /// numbers drawn from `seed` ([`step_seed`]).
    fn step(&mut self, batch: &BTreeMap<String, HostTensor>, seed: i64) -> Result<StepReport, Error>;
    /// The trainable weights as they are now, by parameter name.
    fn weights(&self) -> Result<Vec<(String, HostTensor)>, Error>;
    /// The optimizer state and the step count as they are now, by input name.
    fn state(&self) -> Result<Vec<(String, HostTensor)>, Error>;
    /// A pipelined step's measurements of its last step (its bubble and memory); `None` for one program.
    fn measured(&self) -> Option<&crate::pipeline_train::PipelineStep> {
        None
    }
}

impl Training for Trainer {
    fn step(&mut self, batch: &BTreeMap<String, HostTensor>, seed: i64) -> Result<StepReport, Error> {
        Trainer::step(self, batch, seed)
    }

    fn weights(&self) -> Result<Vec<(String, HostTensor)>, Error> {
        Trainer::weights(self)
    }

    fn state(&self) -> Result<Vec<(String, HostTensor)>, Error> {
        Trainer::state(self)
    }
}

/// The loss (and accuracy, for class labels) over an evaluation data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: Option<f64>,
    /// The examples evaluated (whole batches; a last partial one is left out).
    pub examples: usize,
}

/// A training step's evaluation program ([`xlac_compiler::train::eval_step`]), loaded.
pub struct Evaluator {
    device: DeviceModel,
    args: Vec<StepArg>,
    names: Vec<String>,
}

impl Evaluator {
    /// Compiles (or finds in the cache) `model`, an evaluation step, and uploads its frozen weights.
    pub fn new(session: &Session, model: &CompiledModel) -> Result<Evaluator, Error> {
        let Loaded { device, args, names, .. } = load_step(session, model, EVAL)?;
        Ok(Evaluator { device, args, names })
    }

    /// Evaluates `trainer`'s current weights on `data`, `batch` examples at a time, in order.
    pub fn run(&self, trainer: &dyn HeldWeights, data: &Dataset, batch: usize) -> Result<Evaluation, Error> {
        let (mut total, mut count, mut correct) = (0.0, 0.0, None::<f64>);
        let mut examples = 0;
        // The trainer's weights, each laid out as this program takes it: lent as
        // they are, or (split otherwise by the training step, or on other
        // devices) gathered and split anew once.
        let expected = &self.device.exe.partitioning().inputs;
        let devices = self.device.exe.devices();
        let mut weights: Vec<Option<ShardedBuffer>> = Vec::new();
        for (i, (arg, name)) in self.args.iter().zip(&self.names).enumerate() {
            let laid_out = match (batch_array(arg, name), *arg == StepArg::Seed, trainer.buffer(name)) {
                (None, false, Some(b)) if b.sharding() != &expected[i] || b.devices() != devices => {
                    Some(self.device.exe.upload_argument(i, b.to_host()?.as_ref())?)
                }
                _ => None,
            };
            weights.push(laid_out);
        }
        for start in (0..data.len).step_by(batch.max(1)).filter(|s| s + batch <= data.len) {
            let indices: Vec<usize> = (start..start + batch).collect();
            let tensors = data.batch(&indices)?;
            let mut uploaded = Vec::new();
            for (i, (arg, name)) in self.args.iter().zip(&self.names).enumerate() {
                if *arg == StepArg::Seed {
                    // A model that draws random numbers itself draws the same ones at every evaluation.
                    uploaded.push((i, self.device.exe.upload_argument(i, seed_tensor(0).as_ref())?));
                    continue;
                }
                let Some(key) = batch_array(arg, name) else { continue };
                let t = tensors
                    .get(key)
                    .ok_or_else(|| Error::Data { dir: data.dir.clone(), message: format!("{key}.npy is missing") })?;
                uploaded.push((i, self.device.exe.upload_argument(i, t.as_ref())?));
            }
            let mut args = Vec::with_capacity(self.names.len());
            for (i, name) in self.names.iter().enumerate() {
                args.push(match (uploaded.iter().find(|(j, _)| *j == i), &weights[i]) {
                    (Some((_, b)), _) | (None, Some(b)) => Arg::Lend(b),
                    (None, None) => Arg::Lend(trainer.buffer(name).ok_or_else(|| Error::Input {
                        model: PathBuf::from("eval"),
                        name: name.clone(),
                        message: "the trainer holds no such weight".into(),
                    })?),
                });
            }
            args.extend(self.device.params.iter().map(Arg::Lend));
            let out = self.device.exe.execute_donating(args)?;
            let scalar = |k: usize| -> Result<f64, Error> { Ok(out[k].to_host()?.to_f64_vec()[0]) };
            total += scalar(0)?;
            count += scalar(1)?;
            if out.len() > 2 {
                correct = Some(correct.unwrap_or(0.0) + scalar(2)?);
            }
            examples += batch;
        }
        if examples == 0 {
            return Err(Error::Data {
                dir: data.dir.clone(),
                message: format!("{} examples, fewer than one batch of {batch}", data.len),
            });
        }
        Ok(Evaluation { loss: total / count, accuracy: correct.map(|c| c / count), examples })
    }
}

/// Where a run stands, saved beside its weights (`state.json`) so that `--resume` continues it exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct RunState {
    pub step: u64,
    pub epoch: u64,
    pub position: usize,
    pub seed: u64,
}

impl RunState {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"step": self.step, "epoch": self.epoch, "position": self.position, "seed": self.seed})
    }

    /// Reads `dir/state.json`.
    pub fn load(dir: &Path) -> Result<RunState, Error> {
        let path = dir.join("state.json");
        let bad = |message: String| Error::Data { dir: path.clone(), message };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let field =
            |k: &str| v[k].as_u64().ok_or_else(|| bad(format!("`{k}`: expected a whole number, found {}", v[k])));
        Ok(RunState {
            step: field("step")?,
            epoch: field("epoch")?,
            position: field("position")? as usize,
            seed: field("seed")?,
        })
    }
}

/// Reads a saved run's weights and optimizer state, by input name: a LoRA
/// run's trained weights from its adapter (PEFT's names less their prefix),
/// any other's from its model.
pub fn load_saved(dir: &Path) -> Result<BTreeMap<String, HostTensor>, Error> {
    let mut out = BTreeMap::new();
    let adapter = [dir.join(ADAPTER_FILE), dir.join("adapter").join(ADAPTER_FILE)].into_iter().find(|p| p.is_file());
    let weights = adapter.clone().unwrap_or_else(|| dir.join("model.safetensors"));
    for file in [weights, dir.join("optimizer.safetensors")] {
        let f = WeightFile::open(&file)?;
        for name in f.names() {
            let key =
                if Some(&file) == adapter.as_ref() { name.strip_prefix(PEFT_PREFIX).unwrap_or(name) } else { name };
            out.insert(key.to_string(), read_tensor(&f, name)?);
        }
    }
    Ok(out)
}

/// A PEFT adapter's tensors.
const ADAPTER_FILE: &str = "adapter_model.safetensors";

/// How a LoRA run is saved: PEFT's adapter (its configuration and the
/// trained tensors), and with `merge` the model with the adapters merged into
/// its weights as well (the adapter then in `DIR/adapter`: transformers would
/// apply an adapter beside the checkpoint's weights on top of them).
pub struct AdapterSave<'a> {
    pub lora: &'a Lora,
    pub sites: &'a [LoraSite],
    pub merge: bool,
}

/// Tensor `name` of `file`, copied to the host.
fn read_tensor(file: &WeightFile, name: &str) -> Result<HostTensor, Error> {
    let t = file.tensor(name)?;
    Ok(HostTensor::new(t.ty, t.shape.to_vec(), t.dense_bytes().into_owned())?)
}

/// Writes a trained model and its run to `dir`. For a model.json model,
/// `dir/model.safetensors` with the trained weights and `dir/model.json` (the
/// original document with those parameters read from it, the others as they
/// were, their files referenced by absolute path); for a Hugging Face
/// checkpoint directory, a checkpoint directory (its files copied, one
/// `model.safetensors` with every tensor, the trained ones replaced). Then
/// what `--resume` needs to continue the run:
/// `dir/optimizer.safetensors` (the optimizer state and step count) and
/// `dir/state.json` (the step, the data position and the seed). The state
/// file is written last: a save without it is not resumable.
///
/// A LoRA run (`adapter`) writes PEFT's `adapter_model.safetensors` and
/// `adapter_config.json` instead of the model; with `merge`, the model (a
/// checkpoint, or model.json and model.safetensors) with every adapted
/// weight `W + (alpha/r)·B·A`, and the adapter in `dir/adapter`.
///
/// The save is written into `DIR.new`, then swapped in: the previous save
/// moves to `DIR.old` and is removed once the new one is in place, so a
/// crash at any point leaves a complete save (`DIR`, or else `DIR.old`).
pub fn save_run(
    model: &Path,
    weights: &[(String, HostTensor)],
    state: &[(String, HostTensor)],
    run: &RunState,
    dir: &Path,
    adapter: Option<&AdapterSave>,
) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Data { dir: dir.into(), message: format!("cannot save: {e}") };
    let sibling = |suffix: &str| {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        dir.with_file_name(name)
    };
    let (staging, old) = (sibling(".new"), sibling(".old"));
    let _ = std::fs::remove_dir_all(&staging);
    write_into(model, weights, state, run, &staging, adapter)?;
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(io)?;
    }
    std::fs::rename(&staging, dir).map_err(io)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn write_into(
    model: &Path,
    weights: &[(String, HostTensor)],
    state: &[(String, HostTensor)],
    run: &RunState,
    dir: &Path,
    adapter: Option<&AdapterSave>,
) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Data { dir: dir.into(), message: format!("cannot save: {e}") };
    std::fs::create_dir_all(dir).map_err(io)?;
    let write_tensors = |file: &str, list: &[(String, HostTensor)]| {
        let shapes: Vec<Vec<u64>> = list.iter().map(|(_, t)| t.shape().iter().map(|&d| d as u64).collect()).collect();
        let tensors: Vec<(&str, DType, &[u64], &[u8])> =
            list.iter().zip(&shapes).map(|((n, t), s)| (n.as_str(), t.element_type(), &s[..], t.data())).collect();
        xlac_core::safetensors::write(&dir.join(file), &tensors).map_err(io)
    };
    let write_text = |file: &str, text: String| {
        xlac_core::file::replace(&dir.join(file), |f| f.write_all(text.as_bytes())).map_err(io)
    };
    match adapter {
        Some(a) => {
            let peft: Vec<_> = weights.iter().map(|(n, t)| (format!("{PEFT_PREFIX}{n}"), t.clone())).collect();
            let sub = if a.merge { "adapter/" } else { "" };
            std::fs::create_dir_all(dir.join(sub)).map_err(io)?;
            write_tensors(&format!("{sub}{ADAPTER_FILE}"), &peft)?;
            let config = serde_json::to_string_pretty(&a.lora.adapter_config(model)).expect("JSON values serialize");
            write_text(&format!("{sub}adapter_config.json"), config + "\n")?;
            if a.merge && model.is_dir() {
                write_tensors("model.safetensors", &checkpoint_tensors(model, weights, dir, a.sites)?)?;
            } else if a.merge {
                // The model.json with each adapted weight merged, the modules saved in full beside them.
                let mut out: Vec<(String, HostTensor)> =
                    weights.iter().filter(|(n, _)| !is_adapter(a.sites, n)).cloned().collect();
                for site in a.sites {
                    let w = base_weight(model, site)?;
                    let m = merged(&w, site, weights).map_err(|message| Error::Data { dir: model.into(), message })?;
                    out.push((site.weight.clone(), m));
                }
                write_tensors("model.safetensors", &out)?;
                write_text("model.json", trained_model_json(model, &out, dir)?)?;
            }
        }
        None if model.is_dir() => write_tensors("model.safetensors", &checkpoint_tensors(model, weights, dir, &[])?)?,
        None => {
            write_tensors("model.safetensors", weights)?;
            write_text("model.json", trained_model_json(model, weights, dir)?)?;
        }
    }
    write_tensors("optimizer.safetensors", state)?;
    write_text("state.json", run.json().to_string() + "\n")
}

/// A trained Hugging Face checkpoint's tensors, every one of the original
/// checkpoint (in one file) with the trained ones replaced and the LoRA
/// adapters of `lora` (among `weights`) merged into their layers' weights;
/// its other files (config.json, the tokenizer's) are copied into `dir`, so
/// that it loads as the original did.
fn checkpoint_tensors(
    checkpoint: &Path,
    weights: &[(String, HostTensor)],
    dir: &Path,
    lora: &[LoraSite],
) -> Result<Vec<(String, HostTensor)>, Error> {
    let files = xlac_compiler::frontend::hf::weight_files(checkpoint)?;
    let io = |e: std::io::Error| Error::Data { dir: checkpoint.into(), message: format!("cannot copy: {e}") };
    for entry in std::fs::read_dir(checkpoint).map_err(io)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let weight_file = files.contains(&name) || name == "model.safetensors.index.json";
        if entry.path().is_file() && !weight_file {
            std::fs::copy(entry.path(), dir.join(&name)).map_err(io)?;
        }
    }
    let mut tensors = Vec::new();
    for file in files {
        let f = WeightFile::open(&checkpoint.join(file))?;
        for name in f.names() {
            let t = match weights.iter().find(|(n, _)| n == name) {
                Some((_, t)) => t.clone(),
                None => read_tensor(&f, name)?,
            };
            let t = match lora.iter().find(|s| s.weight == name) {
                Some(site) => merged(&t, site, weights).map_err(|message| Error::Data { dir: dir.into(), message })?,
                None => t,
            };
            tensors.push((name.to_string(), t));
        }
    }
    // Weights the checkpoint did not have: a classification head added by the import.
    let new: Vec<&(String, HostTensor)> =
        weights.iter().filter(|(n, _)| !is_adapter(lora, n) && !tensors.iter().any(|(m, _)| m == n)).collect();
    for (name, t) in new {
        if !name.starts_with("classifier.") {
            return Err(Error::Data {
                dir: checkpoint.into(),
                message: format!("the trained weight `{name}` has no place in a checkpoint of this model"),
            });
        }
        if name == "classifier.weight" {
            with_classifier(&dir.join("config.json"), t.shape()[0])?;
        }
        tensors.push((name.clone(), t.clone()));
    }
    Ok(tensors)
}

/// True when `name` is one of the `sites`' adapter matrices (A or B).
fn is_adapter(sites: &[LoraSite], name: &str) -> bool {
    sites.iter().any(|s| s.a == name || s.b == name)
}

/// Weight `w` of a LoRA-adapted layer with its adapters (in `weights`)
/// merged, as PEFT's `merge_and_unload`: `W + scale·B·A` (transposed for a
/// weight stored `[in, out]`), in f32, stored in `w`'s type.
fn merged(w: &HostTensor, site: &LoraSite, weights: &[(String, HostTensor)]) -> Result<HostTensor, String> {
    let matrix = |name: &str| -> Result<ndarray::Array2<f32>, String> {
        let (_, t) = weights.iter().find(|(n, _)| n == name).ok_or(format!("the adapter `{name}` was not trained"))?;
        let a = t.to_array::<f32>().map_err(|e| format!("adapter `{name}`: {e}"))?;
        a.into_dimensionality().map_err(|e| format!("adapter `{name}`: {e}"))
    };
    let (a, b) = (matrix(&site.a)?, matrix(&site.b)?);
    let delta = b.dot(&a) * site.scale as f32;
    let delta = if site.in_out { delta.reversed_axes() } else { delta };
    let what = |e: String| format!("weight `{}`: {e}", site.weight);
    let bytes = xlac_core::view::convert_floats(w.element_type(), w.data(), DType::F32).map_err(what)?;
    let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let base = ndarray::Array2::from_shape_vec(delta.raw_dim(), values)
        .map_err(|e| what(format!("shape {:?} against the adapters' {:?}: {e}", w.shape(), delta.shape())))?;
    let sum = base + delta;
    let bytes: Vec<u8> = sum.iter().flat_map(|x| x.to_le_bytes()).collect();
    let out = xlac_core::view::convert_floats(DType::F32, &bytes, w.element_type()).map_err(what)?;
    HostTensor::new(w.element_type(), w.shape().to_vec(), out).map_err(|e| what(e.to_string()))
}

/// The stored value of LoRA `site`'s base weight in the model.json `model`:
/// its file's tensor or its inline values. A weight read through a view
/// (`transpose`, `convert`) is refused: its merged value would not read back.
fn base_weight(model: &Path, site: &LoraSite) -> Result<HostTensor, Error> {
    if let xlac_compiler::ir::ParamSource::File { view, .. } = &site.source {
        if !view.is_identity() {
            return Err(Error::Data {
                dir: model.into(),
                message: format!(
                    "parameter `{}` is read through a view (transpose, convert): --merge cannot write it",
                    site.weight
                ),
            });
        }
    }
    let parameters = crate::Parameters::of([(&site.source, &site.ty)])?;
    let value = parameters.value(0)?;
    let t = value.as_ref()?;
    Ok(HostTensor::new(t.ty, t.shape.to_vec(), t.dense_bytes().into_owned())?)
}

/// Rewrites the saved `config.json` as transformers' `BertForSequenceClassification` with `labels` classes.
fn with_classifier(config: &Path, labels: usize) -> Result<(), Error> {
    let bad = |message: String| Error::Data { dir: config.into(), message };
    let text = std::fs::read_to_string(config).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut c: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    c["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
    let label = |i: usize| format!("LABEL_{i}");
    c["id2label"] = (0..labels).map(|i| (i.to_string(), serde_json::Value::from(label(i)))).collect();
    c["label2id"] = (0..labels).map(|i| (label(i), serde_json::Value::from(i))).collect();
    let text = serde_json::to_string_pretty(&c).expect("JSON values serialize") + "\n";
    std::fs::write(config, text).map_err(|e| bad(format!("cannot write: {e}")))
}

/// The model.json document at `model_json` with the trained parameters read
/// from `model.safetensors` beside it and the others' files by absolute path.
/// An ONNX model is imported into `dir`: its other initializers are written
/// to `dir/initializers.safetensors`, so the saved model stands alone.
fn trained_model_json(model_json: &Path, weights: &[(String, HostTensor)], dir: &Path) -> Result<String, Error> {
    let (mut doc, base) = if xlac_compiler::frontend::onnx::is_onnx(model_json) {
        let file = "initializers.safetensors";
        use std::collections::BTreeMap;
        let doc = xlac_compiler::frontend::onnx::import(
            model_json,
            &dir.join(file),
            file,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeMap::new(),
        )?;
        (doc, dir.to_path_buf())
    } else {
        let text = std::fs::read_to_string(model_json)
            .map_err(|source| xlac_compiler::Error::Read { path: model_json.into(), source })?;
        let doc: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Data { dir: model_json.into(), message: format!("not JSON: {e}") })?;
        (doc, model_json.parent().unwrap_or(Path::new(".")).to_path_buf())
    };
    let base = base.as_path();
    for p in doc["parameters"].as_array_mut().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let obj = p.as_object_mut().expect("a parameter is an object");
        if weights.iter().any(|(n, _)| *n == name) {
            for key in ["value", "transpose", "convert"] {
                obj.remove(key);
            }
            obj.insert("file".into(), "model.safetensors".into());
            obj.insert("tensor".into(), name.into());
        } else if let Some(f) = obj.get("file").and_then(|f| f.as_str()) {
            let abs = std::path::absolute(base.join(f)).unwrap_or_else(|_| base.join(f));
            obj.insert("file".into(), abs.display().to_string().into());
        }
    }
    Ok(serde_json::to_string_pretty(&doc).expect("JSON values serialize") + "\n")
}

#[cfg(test)]
mod tests {
    use super::Batches;

    #[test]
    fn batches_are_seeded_reshuffled_each_epoch_and_drop_the_partial_one() {
        let draw = |seed| {
            let mut b = Batches::new(10, 4, seed);
            (0..6).map(|_| b.next_batch()).collect::<Vec<_>>()
        };
        let (a, again, other) = (draw(1), draw(1), draw(2));
        assert_eq!(a, again, "the same seed gives the same order");
        assert_ne!(a, other);
        // 10 examples in batches of 4: two per epoch, the last 2 examples dropped.
        let mut epoch: Vec<usize> = a[0].iter().chain(&a[1]).copied().collect();
        epoch.sort_unstable();
        epoch.dedup();
        assert_eq!(epoch.len(), 8, "no example twice within an epoch");
        assert_ne!(a[0..2], a[2..4], "each epoch is shuffled anew");
        let mut b = Batches::new(10, 4, 1);
        b.next_batch();
        b.next_batch();
        assert_eq!(b.epoch(), 0);
        b.next_batch();
        assert_eq!(b.epoch(), 1);
    }
}
