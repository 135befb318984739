//! Pipeline-parallel training at run time (`xlac train --pipeline S
//! --microbatches M`): a staged step's programs
//! ([`xlac_compiler::train::staged`]), stage `s`'s on device `s` (or, when
//! each stage's programs split over a mesh `data=N`, on the `s`-th group of
//! N devices), with its copy of its weights, optimizer state and gradient
//! accumulators held there from step to step.
//!
//! A step splits the batch into micro-batches; each stage runs on a thread
//! of its own, its forward and backward passes in the [`Schedule`]'s order,
//! each as soon as its inputs are there; activations and cotangents are
//! copied device to device by the plugin (no host round trip), and a
//! stage keeps a micro-batch's inputs from its forward to its backward.
//! Then each stage computes its share of the gradients' squared norm, the
//! shares are copied to every stage, and each stage updates its weights.
//! Only the scalars reach the host: the micro-batches' loss sums and counts,
//! the norm and the learning rate.

use crate::stages::{split, Timeline};
use crate::train::{batch_array, initial_values, seed_tensor, take_saved, HeldWeights, StepReport, Training};
use crate::{CompiledModel, DeviceModel, Error, Session};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use xlac_compiler::pipeline::CompiledStages;
use xlac_compiler::train::staged::{Feed, Program};
use xlac_compiler::train::{micro_batch_seed, StepArg};
use xlac_compiler::TensorType;
use xlac_runtime::{Arg, HostTensor, ShardedBuffer};

/// The order each stage runs its micro-batches' forward and backward passes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Every forward, then every backward (GPipe): each stage keeps all M
    /// micro-batches' inputs at once.
    GPipe,
    /// One forward, one backward (PipeDream-Flush's 1F1B): stage `s` first
    /// runs `S − s − 1` forwards to fill the pipeline, then alternates, so it
    /// keeps at most `S − s` micro-batches' inputs. Same bubble as GPipe.
    OneFOneB,
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Schedule, String> {
        match s {
            "gpipe" => Ok(Schedule::GPipe),
            "1f1b" => Ok(Schedule::OneFOneB),
            _ => Err(format!("unknown pipeline schedule `{s}` (expected gpipe or 1f1b)")),
        }
    }
}

/// Which way a pass goes through a stage: a forward sends activations on,
/// a backward sends cotangents back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Forward = 0,
    Backward = 1,
}

/// One pass of a micro-batch through a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward(usize),
    Backward(usize),
}

impl Schedule {
    /// The name `--pipeline-schedule` takes.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::GPipe => "gpipe",
            Schedule::OneFOneB => "1f1b",
        }
    }

    /// Stage `s`'s passes, in order, with `stages` stages and `micro`
    /// micro-batches; the backwards run in micro-batch order under both, so
    /// the gradients are summed in the same order.
    pub fn passes(self, s: usize, stages: usize, micro: usize) -> Vec<Pass> {
        let warmup = match self {
            Schedule::GPipe => micro,
            Schedule::OneFOneB => (stages - s - 1).min(micro),
        };
        let mut out: Vec<Pass> = (0..warmup).map(Pass::Forward).collect();
        for k in 0..micro - warmup {
            out.push(Pass::Forward(warmup + k));
            out.push(Pass::Backward(k));
        }
        out.extend((micro - warmup..micro).map(Pass::Backward));
        out
    }
}

/// One stage's bytes on its device during a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageMemory {
    /// Its weights, optimizer state, gradient accumulators and step count,
    /// held between steps.
    pub resident: u64,
    /// The most bytes of micro-batch inputs it kept at once between a
    /// forward and its backward (what the schedule decides).
    pub stashed: u64,
    /// The temporaries of its largest program (XLA's compiled memory statistics).
    pub temporary: u64,
}

impl StageMemory {
    pub fn total(&self) -> u64 {
        self.resident + self.stashed + self.temporary
    }
}

/// What one pipelined step reports.
#[derive(Clone, Debug)]
pub struct PipelineStep {
    pub report: StepReport,
    /// When each stage's device was busy with a forward or backward pass.
    pub timeline: Timeline,
    pub memory: Vec<StageMemory>,
}

/// A stage program loaded on the stage's device.
struct Loaded {
    device: DeviceModel,
    feeds: Vec<Feed>,
}

impl Loaded {
    fn donated(&self, i: usize) -> bool {
        self.device.exe.donations().iter().any(|&(d, _)| d == i)
    }
}

/// What a stage holds between steps: per input of its update program, the
/// buffer where the update donates it (its weights, optimizer state, own
/// gradient accumulators and step count).
struct Held {
    /// The update's feeds and input names.
    feeds: Vec<Feed>,
    names: Vec<String>,
    values: Vec<Option<ShardedBuffer>>,
}

impl Held {
    /// The held buffer fed as `feed` (a weight or accumulator of this stage).
    fn get(&self, feed: Feed) -> Result<&ShardedBuffer, Error> {
        let i = self.feeds.iter().position(|&f| f == feed);
        i.and_then(|i| self.values[i].as_ref()).ok_or_else(|| lost(&format!("{feed:?}")))
    }

    /// Takes the held buffer fed as `feed` out, to give it to a program that donates it.
    fn take(&mut self, feed: Feed) -> Result<ShardedBuffer, Error> {
        let i = self.feeds.iter().position(|&f| f == feed);
        i.and_then(|i| self.values[i].take()).ok_or_else(|| lost(&format!("{feed:?}")))
    }

    /// Keeps the donated outputs of `program` where the inputs they replace were held.
    fn keep(&mut self, program: &Loaded, outputs: &mut [Option<ShardedBuffer>]) {
        for &(input, output) in program.device.exe.donations() {
            if let Some(i) = self.feeds.iter().position(|&f| f == program.feeds[input]) {
                self.values[i] = outputs[output].take();
            }
        }
    }
}

/// A stage on its device: its programs and what it holds between steps.
struct StageState {
    forward: Loaded,
    /// `None`: nothing the stage computes reaches the loss by a float value.
    backward: Option<Loaded>,
    norm: Loaded,
    update: Loaded,
    held: Held,
    /// On the loss's stage: the loss sum's cotangent (1), uploaded once.
    seed: Option<ShardedBuffer>,
}

impl StageState {
    fn devices(&self) -> &[usize] {
        self.forward.device.exe.devices()
    }

    /// The program that runs its passes going `way`.
    fn pass(&self, way: Way) -> Option<&Loaded> {
        match way {
            Way::Forward => Some(&self.forward),
            Way::Backward => self.backward.as_ref(),
        }
    }

    fn programs(&self) -> impl Iterator<Item = &Loaded> {
        [Some(&self.forward), self.backward.as_ref(), Some(&self.norm), Some(&self.update)].into_iter().flatten()
    }
}

fn lost(what: &str) -> Error {
    Error::Input {
        model: PathBuf::from("pipeline"),
        name: what.into(),
        message: "the stage holds no such value (lost by a failed step?)".into(),
    }
}

/// The bytes `b` takes on one device of its stage (its first shard's).
fn bytes(b: &ShardedBuffer) -> Result<u64, Error> {
    let elements: usize = b.shards()[0].dims()?.iter().product();
    Ok((b.spec().ty.size_bytes() * elements) as u64)
}

/// The bytes the buffers of `all` take on one device of their stage.
fn total_bytes<'a>(all: impl IntoIterator<Item = &'a ShardedBuffer>) -> Result<u64, Error> {
    all.into_iter().map(bytes).sum()
}

fn scalar(b: &ShardedBuffer) -> Result<f64, Error> {
    Ok(b.to_host()?.to_f64_vec().first().copied().unwrap_or(f64::NAN))
}

/// A pipelined training step loaded: stage `s` on device `s` (or the `s`-th group of its mesh's size).
pub struct PipelineTrainer {
    stages: Vec<StageState>,
    /// How each input of the model with its loss is fed, its name and type.
    args: Vec<(StepArg, String, TensorType)>,
    loss_sum: (usize, usize),
    count: (usize, usize),
    /// Per [`Way`], per stage, per output of its pass: how many stages read it.
    readers: [Vec<Vec<usize>>; 2],
    schedule: Schedule,
    micro: usize,
    lr: f64,
    compiled: bool,
    last: Option<PipelineStep>,
}

impl PipelineTrainer {
    /// Compiles (or finds in the cache) the programs of `step` and loads
    /// stage `s`'s on device `s` of `session` (the `s`-th group of devices
    /// for stages over a mesh), with its weights, zeroed state (or, where
    /// `saved` has a tensor of an input's name, that) and base learning
    /// rate `lr`; each step runs `micro` micro-batches in `schedule`'s order.
    pub fn new(
        session: &Session,
        step: &CompiledStages,
        schedule: Schedule,
        micro: usize,
        lr: f64,
        saved: &BTreeMap<String, HostTensor>,
    ) -> Result<PipelineTrainer, Error> {
        if micro == 0 {
            return Err(Error::Input {
                model: step.path.clone(),
                name: "--microbatches".into(),
                message: "at least one micro-batch".into(),
            });
        }
        let args = step.step.args.clone();
        let mut compiled = false;
        let mut stages = Vec::new();
        for (s, (stage, lowered)) in step.step.stages.iter().zip(&step.lowered).enumerate() {
            let mut loaded = Vec::with_capacity(4);
            for (program, lowered) in stage.programs().into_iter().zip(lowered) {
                let model = CompiledModel {
                    path: step.path.clone(),
                    bindings: step.bindings.clone(),
                    module: program.module.clone(),
                    lowered: lowered.clone(),
                    stats: Vec::new(),
                    capped: Vec::new(),
                    step_args: None,
                    lora: Vec::new(),
                    devices: None,
                };
                // Stage s on the s-th group of as many devices as its mesh has.
                let n = model.num_partitions() as usize;
                let mut model = CompiledModel { devices: Some((s * n..(s + 1) * n).collect()), ..model };
                model.lower_for(session);
                let (device, outcome) = session.load(&model, &mut |_| {})?;
                compiled |= matches!(outcome, xlac_runtime::CacheOutcome::Compiled { .. });
                loaded.push(Loaded { device, feeds: program.feeds.clone() });
            }
            let mut loaded = loaded.into_iter();
            let mut next = || loaded.next().expect("a program per lowering");
            let forward = next();
            let backward = stage.backward.as_ref().map(|_| next());
            let (norm, update) = (next(), next());
            let held = start(&step.path, &stage.update, &update, &args, lr, saved)?;
            let seed = match backward.as_ref().and_then(|b| b.feeds.iter().position(|&f| f == Feed::LossSeed)) {
                Some(i) => {
                    let one = HostTensor::from_array(&ndarray::arr0(1.0f32));
                    let exe = &backward.as_ref().expect("a backward with the loss seed").device.exe;
                    Some(exe.upload_argument(i, one.as_ref())?)
                }
                None => None,
            };
            stages.push(StageState { forward, backward, norm, update, held, seed });
        }
        let readers = [Way::Forward, Way::Backward].map(|way| {
            let outputs = |st: &StageState| st.pass(way).map_or(0, |p| p.device.exe.outputs().len());
            (0..stages.len())
                .map(|s| {
                    (0..outputs(&stages[s]))
                        .map(|output| {
                            let read = match way {
                                Way::Forward => Feed::Activation { stage: s, output },
                                Way::Backward => Feed::Cotangent { stage: s, output },
                            };
                            let reads = |st: &StageState| {
                                st.pass(way).map_or(0, |p| p.feeds.iter().filter(|&&f| f == read).count())
                            };
                            stages.iter().map(reads).sum()
                        })
                        .collect()
                })
                .collect()
        });
        let (loss_sum, count) = (step.step.loss_sum, step.step.count);
        Ok(PipelineTrainer { stages, args, loss_sum, count, readers, schedule, micro, lr, compiled, last: None })
    }

    /// True when XLA compiled any of the programs (else the cache had them all).
    pub fn compiled(&self) -> bool {
        self.compiled
    }

    /// The devices the stages run on, in stage order.
    pub fn devices(&self) -> Vec<usize> {
        self.stages.iter().flat_map(|st| st.devices().to_vec()).collect()
    }

    /// One step on `batch` (the model inputs and `labels`, the whole step's
    /// examples), split into the micro-batches, its random numbers (dropout)
    /// drawn from `seed`: its report, when each stage was busy, and each
    /// stage's memory.
    pub fn step_measured(&mut self, batch: &BTreeMap<String, HostTensor>, seed: i64) -> Result<PipelineStep, Error> {
        let micro = split(batch, self.micro)?;
        let n = self.stages.len();
        let board = Mutex::new(Board::new(n, self.micro));
        let ready = Condvar::new();
        let start = Instant::now();
        let shared = Shared {
            args: &self.args,
            micro: &micro,
            seed,
            board: &board,
            ready: &ready,
            readers: &self.readers,
            loss_sum: self.loss_sum,
            count: self.count,
            start,
        };
        let schedule = self.schedule;
        let results: Vec<Result<Passed, Error>> = std::thread::scope(|scope| {
            let threads: Vec<_> = self
                .stages
                .iter_mut()
                .enumerate()
                .map(|(s, stage)| {
                    let shared = &shared;
                    scope.spawn(move || {
                        let passes = schedule.passes(s, n, shared.micro.len());
                        let result = run_passes(s, stage, &passes, shared);
                        if result.is_err() {
                            shared.board.lock().unwrap_or_else(|e| e.into_inner()).failed = true;
                            shared.ready.notify_all();
                        }
                        result
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        let wall = start.elapsed();
        let mut busy = Vec::with_capacity(n);
        let mut stashed = Vec::with_capacity(n);
        for r in results {
            let (b, peak) = r?;
            busy.push(b);
            stashed.push(peak);
        }
        let [total, count] = board.into_inner().unwrap_or_else(|e| e.into_inner()).sums;
        let (grad_norm, lr) = self.update(count)?;
        let memory = self.memory(&stashed)?;
        Ok(PipelineStep {
            report: StepReport { loss: total / count, grad_norm, lr },
            timeline: Timeline { busy, wall },
            memory,
        })
    }

    /// Every stage's norm share, then every stage's update (the other
    /// stages' accumulators it reads copied first, before any update zeroes
    /// them); returns the global norm and the learning rate.
    fn update(&mut self, count: f64) -> Result<(f64, f64), Error> {
        let count = HostTensor::from_array(&ndarray::arr0(count as f32));
        let lr = HostTensor::from_array(&ndarray::arr0(self.lr as f32));
        // What each stage reads of the others' accumulators, copied to its device.
        let mut copies: Vec<Vec<Option<ShardedBuffer>>> = Vec::new();
        for (s, st) in self.stages.iter().enumerate() {
            let mut per = Vec::new();
            for feed in st.norm.feeds.iter().chain(&st.update.feeds) {
                per.push(match *feed {
                    Feed::Grad { stage, .. } if stage != s => {
                        Some(self.stages[stage].held.get(*feed)?.copy_to(st.devices())?)
                    }
                    _ => None,
                });
            }
            copies.push(per);
        }
        let mut shares = Vec::new();
        for (st, copied) in self.stages.iter().zip(&copies) {
            let uploaded = st.norm.device.exe.upload_argument(0, count.as_ref())?;
            let mut args = Vec::new();
            for (i, feed) in st.norm.feeds.iter().enumerate() {
                args.push(match (*feed, &copied[i]) {
                    (_, Some(b)) => Arg::Lend(b),
                    (Feed::Count, None) => Arg::Lend(&uploaded),
                    (f, None) => Arg::Lend(st.held.get(f)?),
                });
            }
            shares.push(st.norm.device.execute_args(args)?.remove(0));
        }
        let mut reported = None;
        for (s, copied) in copies.iter().enumerate() {
            let norms = self.stages.len();
            let devices = self.stages[s].devices().to_vec();
            let shares_here: Vec<ShardedBuffer> =
                shares.iter().map(|b| b.copy_to(&devices)).collect::<Result<_, _>>()?;
            let st = &mut self.stages[s];
            let offset = st.norm.feeds.len();
            let mut given: Vec<Option<ShardedBuffer>> = Vec::new();
            // The update's inputs are what the stage holds, in order.
            for (i, &feed) in st.update.feeds.iter().enumerate() {
                let donated = st.update.donated(i);
                given.push(if donated {
                    Some(st.held.values[i].take().ok_or_else(|| lost(&format!("{feed:?}")))?)
                } else {
                    None
                });
            }
            let exe = &st.update.device.exe;
            let (count_arg, lr_arg) =
                (exe.upload_argument(0, count.as_ref())?, exe.upload_argument(norms + 1, lr.as_ref())?);
            let mut args = Vec::new();
            for (i, feed) in st.update.feeds.iter().enumerate() {
                args.push(match (given[i].take(), &copied[offset + i], *feed) {
                    (Some(b), _, _) => Arg::Give(b),
                    (None, Some(b), _) => Arg::Lend(b),
                    (None, None, Feed::Count) => Arg::Lend(&count_arg),
                    (None, None, Feed::LearningRate) => Arg::Lend(&lr_arg),
                    (None, None, Feed::SquaredNorm(t)) => Arg::Lend(&shares_here[t]),
                    (None, None, f) => return Err(lost(&format!("{f:?}"))),
                });
            }
            let outputs = st.update.device.execute_args(args)?;
            if reported.is_none() {
                reported = Some((scalar(&outputs[0])?, scalar(&outputs[1])?));
            }
            let mut outputs: Vec<Option<ShardedBuffer>> = outputs.into_iter().map(Some).collect();
            for &(input, output) in st.update.device.exe.donations() {
                st.held.values[input] = outputs[output].take();
            }
        }
        Ok(reported.expect("at least one stage"))
    }

    fn memory(&self, stashed: &[u64]) -> Result<Vec<StageMemory>, Error> {
        let mut out = Vec::new();
        for (st, &stashed) in self.stages.iter().zip(stashed) {
            let resident = total_bytes(st.held.values.iter().flatten().chain(&st.seed))?;
            let mut temporary = 0;
            for p in st.programs() {
                temporary = temporary.max(p.device.exe.memory_stats()?.temp_bytes.max(0) as u64);
            }
            out.push(StageMemory { resident, stashed, temporary });
        }
        Ok(out)
    }

    /// The held values `which` picks, by input name (one several stages hold, from the first).
    fn gathered(&self, which: impl Fn(Feed) -> bool) -> Result<Vec<(String, HostTensor)>, Error> {
        let mut out: Vec<(String, HostTensor)> = Vec::new();
        for st in &self.stages {
            for ((&feed, name), b) in st.held.feeds.iter().zip(&st.held.names).zip(&st.held.values) {
                if let (true, Some(b)) = (which(feed), b) {
                    if !out.iter().any(|(n, _)| n == name) {
                        out.push((name.clone(), b.to_host()?));
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Training for PipelineTrainer {
    fn step(&mut self, batch: &BTreeMap<String, HostTensor>, seed: i64) -> Result<StepReport, Error> {
        let measured = self.step_measured(batch, seed)?;
        let report = measured.report;
        self.last = Some(measured);
        Ok(report)
    }

    fn weights(&self) -> Result<Vec<(String, HostTensor)>, Error> {
        self.gathered(|f| matches!(f, Feed::Input(_)))
    }

    fn state(&self) -> Result<Vec<(String, HostTensor)>, Error> {
        self.gathered(|f| matches!(f, Feed::State { .. } | Feed::StepCount))
    }

    fn measured(&self) -> Option<&PipelineStep> {
        self.last.as_ref()
    }
}

impl HeldWeights for PipelineTrainer {
    fn buffer(&self, name: &str) -> Option<&ShardedBuffer> {
        let j = self.args.iter().position(|(a, n, _)| n == name && matches!(a, StepArg::Weight(_)))?;
        self.stages.iter().find_map(|st| st.held.get(Feed::Input(j)).ok())
    }
}

/// What a stage holds as it starts: the inputs of its update program
/// `program` (loaded as `update`) that the update donates, the weights read
/// from their files (or `saved`, by name), the state and accumulators zeroed.
fn start(
    path: &std::path::Path,
    program: &Program,
    update: &Loaded,
    args: &[(StepArg, String, TensorType)],
    lr: f64,
    saved: &BTreeMap<String, HostTensor>,
) -> Result<Held, Error> {
    let m = &program.module;
    let inputs: Vec<(&String, &TensorType)> = m.inputs().iter().map(|&v| (&m.value(v).name, &m.value(v).ty)).collect();
    // Each input as a training step's argument: the weights read from their
    // files, the state and accumulators zeroed; the scalars fed each step are skipped.
    let as_step: Vec<StepArg> = program
        .feeds
        .iter()
        .map(|f| match *f {
            Feed::Input(j) => args[j].0.clone(),
            Feed::State { weight } | Feed::Grad { weight, .. } => StepArg::State { of: Some(weight) },
            Feed::StepCount => StepArg::StepCount,
            Feed::LearningRate => StepArg::LearningRate,
            _ => StepArg::Batch,
        })
        .collect();
    let mut values = initial_values(&as_step, &inputs, lr)?;
    let restored: BTreeMap<String, HostTensor> = program
        .feeds
        .iter()
        .zip(&inputs)
        .filter(|(f, _)| matches!(f, Feed::Input(_) | Feed::State { .. } | Feed::StepCount))
        .filter_map(|(_, (name, _))| saved.get(*name).map(|t| ((*name).clone(), t.clone())))
        .collect();
    take_saved(path, &mut values, restored)?;
    let mut held = Vec::with_capacity(inputs.len());
    for (i, (name, _)) in inputs.iter().enumerate() {
        held.push(match values.remove(*name) {
            Some(t) if update.donated(i) => Some(update.device.exe.upload_argument(i, t.as_ref())?),
            _ => None,
        });
    }
    let names = inputs.iter().map(|(n, _)| (*n).clone()).collect();
    Ok(Held { feeds: program.feeds.clone(), names, values: held })
}

/// What the stage threads share during a step.
struct Shared<'a> {
    args: &'a [(StepArg, String, TensorType)],
    micro: &'a [BTreeMap<String, HostTensor>],
    seed: i64,
    board: &'a Mutex<Board>,
    ready: &'a Condvar,
    readers: &'a [Vec<Vec<usize>>; 2],
    loss_sum: (usize, usize),
    count: (usize, usize),
    start: Instant,
}

/// Made outputs of one pass: per output, the buffer and how many readers
/// have yet to copy it (freed after the last).
type Made = Vec<Option<(ShardedBuffer, usize)>>;

/// The passes' outputs still to be read, and the loss's sums, as the stages make them.
struct Board {
    /// [`Way`][stage][micro-batch]: the outputs, once made.
    made: [Vec<Vec<Option<Made>>>; 2],
    /// The micro-batches' loss sums and counts, summed in micro-batch order.
    sums: [f64; 2],
    /// A stage failed: the others stop waiting.
    failed: bool,
}

impl Board {
    fn new(stages: usize, micro: usize) -> Board {
        let empty = || (0..stages).map(|_| (0..micro).map(|_| None).collect()).collect();
        Board { made: [empty(), empty()], sums: [0.0; 2], failed: false }
    }
}

impl Shared<'_> {
    /// Output `output` of stage `stage`'s pass going `way` as the board
    /// keeps it: with its readers, or dropped when none.
    fn readable(
        &self,
        way: Way,
        stage: usize,
        output: usize,
        b: Option<ShardedBuffer>,
    ) -> Option<(ShardedBuffer, usize)> {
        let readers = self.readers[way as usize][stage].get(output).copied().unwrap_or(0);
        b.filter(|_| readers > 0).map(|b| (b, readers))
    }

    /// Output `output` of stage `stage`'s pass going `way` on micro-batch
    /// `k`, copied to `devices` once made; the last reader frees it.
    fn read(&self, way: Way, stage: usize, k: usize, output: usize, devices: &[usize]) -> Result<ShardedBuffer, Error> {
        let mut board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if board.failed {
                return Err(Error::Input {
                    model: PathBuf::from("pipeline"),
                    name: format!("stage {stage}"),
                    message: "another stage failed".into(),
                });
            }
            if let Some(made) = &mut board.made[way as usize][stage][k] {
                let slot = made.get_mut(output).and_then(Option::take);
                let (b, left) = slot.ok_or_else(|| lost("a stage output read more often than it has readers"))?;
                let copy = b.copy_to(devices)?;
                copy.shards().iter().try_for_each(|b| b.wait_ready())?;
                if left > 1 {
                    made[output] = Some((b, left - 1));
                }
                return Ok(copy);
            }
            board = self.ready.wait(board).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// When a stage was busy during its passes, and the most bytes it stashed.
type Passed = (Vec<(Duration, Duration)>, u64);

/// Stage `s`'s passes of one step, in order.
fn run_passes(s: usize, st: &mut StageState, passes: &[Pass], cx: &Shared) -> Result<Passed, Error> {
    let devices = st.devices().to_vec();
    let mut stash: Vec<Option<Vec<Option<ShardedBuffer>>>> = (0..cx.micro.len()).map(|_| None).collect();
    let (mut current, mut peak) = (0u64, 0u64);
    let mut busy = Vec::with_capacity(passes.len());
    for &pass in passes {
        match pass {
            Pass::Forward(k) => {
                let mut inputs: Vec<Option<ShardedBuffer>> = Vec::new();
                for (i, &feed) in st.forward.feeds.iter().enumerate() {
                    let exe = &st.forward.device.exe;
                    inputs.push(match feed {
                        Feed::Input(j) => match &cx.args[j] {
                            (StepArg::Weight(_), _, _) => None,
                            (StepArg::Seed, _, _) => {
                                Some(exe.upload_argument(i, seed_tensor(micro_batch_seed(cx.seed, k as u64)).as_ref())?)
                            }
                            (arg, name, _) => {
                                let key = batch_array(arg, name).unwrap_or(name);
                                let t = cx.micro[k].get(key).ok_or_else(|| Error::Input {
                                    model: PathBuf::from("train"),
                                    name: key.into(),
                                    message: "missing from the batch".into(),
                                })?;
                                Some(exe.upload_argument(i, t.as_ref())?)
                            }
                        },
                        Feed::Activation { stage, output } => {
                            Some(cx.read(Way::Forward, stage, k, output, &devices)?)
                        }
                        other => return Err(lost(&format!("{other:?} in a forward"))),
                    });
                }
                let args = inputs
                    .iter()
                    .zip(&st.forward.feeds)
                    .map(|(b, &f)| {
                        Ok(Arg::Lend(match b {
                            Some(b) => b,
                            None => st.held.get(f)?,
                        }))
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                let from = cx.start.elapsed();
                let outputs = st.forward.device.execute_args(args)?;
                for o in &outputs {
                    o.shards().iter().try_for_each(|b| b.wait_ready())?;
                }
                busy.push((from, cx.start.elapsed()));
                // Kept for the backward, if the stage has one.
                if st.backward.is_some() {
                    current += total_bytes(inputs.iter().flatten())?;
                    peak = peak.max(current);
                    stash[k] = Some(inputs);
                }
                let mut board = cx.board.lock().unwrap_or_else(|e| e.into_inner());
                for (which, (stage, output)) in [cx.loss_sum, cx.count].into_iter().enumerate() {
                    if stage == s {
                        board.sums[which] += scalar(&outputs[output])?;
                    }
                }
                let made =
                    outputs.into_iter().enumerate().map(|(o, b)| cx.readable(Way::Forward, s, o, Some(b))).collect();
                board.made[Way::Forward as usize][s][k] = Some(made);
                drop(board);
                cx.ready.notify_all();
            }
            Pass::Backward(k) => {
                let StageState { backward, held, seed, .. } = &mut *st;
                let Some(backward) = backward else { continue };
                let inputs = stash[k].take().ok_or_else(|| lost("a backward before its forward"))?;
                // The cotangents later stages made (lent), and the accumulators (given).
                let mut cotangents: Vec<Option<ShardedBuffer>> = Vec::new();
                let mut given: Vec<Option<ShardedBuffer>> = Vec::new();
                for (i, &feed) in backward.feeds.iter().enumerate() {
                    cotangents.push(match feed {
                        Feed::Cotangent { stage, output } => {
                            Some(cx.read(Way::Backward, stage, k, output, &devices)?)
                        }
                        _ => None,
                    });
                    given.push(if backward.donated(i) { Some(held.take(feed)?) } else { None });
                }
                let mut args = Vec::with_capacity(backward.feeds.len());
                for (i, &feed) in backward.feeds.iter().enumerate() {
                    let stashed = inputs.get(i).and_then(Option::as_ref);
                    args.push(match (given[i].take(), stashed.or(cotangents[i].as_ref()), feed) {
                        (Some(b), _, _) => Arg::Give(b),
                        (None, Some(b), _) => Arg::Lend(b),
                        (None, None, Feed::LossSeed) => Arg::Lend(seed.as_ref().ok_or_else(|| lost("the loss seed"))?),
                        (None, None, f) => Arg::Lend(held.get(f)?),
                    });
                }
                let from = cx.start.elapsed();
                let outputs = backward.device.execute_args(args)?;
                for o in &outputs {
                    o.shards().iter().try_for_each(|b| b.wait_ready())?;
                }
                busy.push((from, cx.start.elapsed()));
                current -= total_bytes(inputs.iter().flatten())?;
                drop(inputs);
                let mut outputs: Vec<Option<ShardedBuffer>> = outputs.into_iter().map(Some).collect();
                held.keep(backward, &mut outputs);
                let made = outputs.into_iter().enumerate().map(|(o, b)| cx.readable(Way::Backward, s, o, b)).collect();
                cx.board.lock().unwrap_or_else(|e| e.into_inner()).made[Way::Backward as usize][s][k] = Some(made);
                cx.ready.notify_all();
            }
        }
    }
    Ok((busy, peak))
}
