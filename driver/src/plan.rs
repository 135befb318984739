//! Memory plans of training steps (`xlac plan`): what a configuration will
//! hold, predicted from its IR before XLA compiles it
//! ([`xlac_compiler::plan`]); XLA's compiled statistics beside it; and the
//! search for the configurations that fit a memory budget, ranked by
//! predicted step time.
//!
//! The step time is predicted as the step's floating-point operations
//! (xlac's count, scaled to XLA's cost analysis where the step was
//! compiled) over this machine's measured contraction throughput in the
//! step's precision: a lower bound that ranks configurations by the work
//! they do.

use crate::bench::bench;
use crate::{compile_model, CompiledModel, Error, Session};
use std::collections::BTreeMap;
use std::path::Path;
use xlac_compiler::autodiff::Remat;
use xlac_compiler::passes::precision::Precision;
use xlac_compiler::passes::OptLevel;
use xlac_compiler::pipeline::Options;
use xlac_compiler::plan::{flops, Flops, Footprint};
use xlac_compiler::train::optim::Optimizer;
use xlac_compiler::train::TrainConfig;
use xlac_runtime::MemoryStats;

/// The symbol the search binds to the micro-batch size.
pub const BATCH_SYMBOL: &str = "batch";

/// A training step, built (not compiled by XLA), with its predicted footprint.
pub struct Plan {
    pub step: CompiledModel,
    pub footprint: Footprint,
    /// xlac's count of the step's floating-point operations.
    pub flops: Flops,
}

/// Builds the training step `options` describe (`options.train` set, its
/// shape symbols bound by `options.bindings`) and predicts its footprint.
pub fn plan(model: &Path, options: &Options) -> Result<Plan, Error> {
    let step = compile_model(model, options, &BTreeMap::new())?;
    let footprint = footprint(&step);
    let flops = flops(&step.module);
    Ok(Plan { step, footprint, flops })
}

/// The predicted footprint of a step already built.
pub fn footprint(step: &CompiledModel) -> Footprint {
    xlac_compiler::plan::footprint(&step.module, step.step_args.as_deref())
}

/// The PJRT C API version of the plugin whose XLA the plan models: the
/// official `xla-cpu-pjrt` wheel's (docs/training.md measures it within
/// 10% of XLA's peak on every case tested).
pub const MODELLED_PJRT_API: (i32, i32) = (0, 81);

/// What to say of the predictions on `session`'s plugin when its XLA is not
/// the one the plan models; `None` when it is.
pub fn caveat(session: &Session) -> Option<String> {
    let api = session.plugin.api_version();
    (api != MODELLED_PJRT_API).then(|| {
        let (major, minor) = MODELLED_PJRT_API;
        format!(
            "the plan models the XLA of PJRT API {major}.{minor} (the official xla-cpu-pjrt); this plugin's \
             (API {}.{}) schedules and fuses otherwise, so XLA's figures are the measure here (on 0.115 the \
             BERT-base step's predicted peak was 0.58-0.89x of XLA's)",
            api.0, api.1
        )
    })
}

/// What XLA says of a compiled step.
pub struct Compiled {
    pub memory: MemoryStats,
    /// Floating-point operations from XLA's cost analysis, where the plugin has one.
    pub flops: Option<f64>,
}

impl Compiled {
    /// The bytes the step holds while it runs: arguments, temporaries and the
    /// outputs that do not reuse a donated argument. (The CPU plugin's own
    /// `peak_bytes` leaves the temporaries out.)
    pub fn peak(&self) -> u64 {
        let m = &self.memory;
        (m.argument_bytes + m.temp_bytes + m.output_bytes - m.alias_bytes).max(0) as u64
    }
}

/// Compiles `plan`'s step with XLA (or finds it in the cache) and reads its statistics.
pub fn compile(session: &Session, plan: &Plan) -> Result<Compiled, Error> {
    let (exe, _) = session.compile(&plan.step)?;
    let memory = exe.memory_stats()?;
    let flops = exe.cost_analysis().ok().and_then(|c| c.into_iter().find(|(k, _)| k == "flops").map(|(_, v)| v));
    Ok(Compiled { memory, flops })
}

/// This machine's measured contraction throughput, in FLOP/s.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    pub f32: f64,
    /// bf16 operands, f32 accumulation (mixed-bf16's contractions).
    pub bf16: f64,
}

impl Throughput {
    /// The seconds `flops` take at these rates, `scale`d (to XLA's count).
    /// f16 products are timed at the bf16 rate.
    pub fn seconds(&self, flops: &Flops, scale: f64) -> f64 {
        scale * (flops.low_precision / self.bf16 + flops.f32 / self.f32)
    }
}

/// Measures `session`'s throughput on a 1024³ matrix product, f32 and
/// mixed-bf16: the median of 10 runs after 3 untimed ones.
pub fn measure_throughput(session: &Session) -> Result<Throughput, Error> {
    const N: u64 = 1024;
    let dir = tempfile::tempdir().map_err(|source| xlac_runtime::Error::Io { path: std::env::temp_dir(), source })?;
    let path = dir.path().join("gemm.json");
    let model = serde_json::json!({
        "format_version": 1,
        "name": "gemm",
        "inputs": [{"name": "a", "dtype": "f32", "shape": [N, N]}, {"name": "b", "dtype": "f32", "shape": [N, N]}],
        "parameters": [],
        "nodes": [{"op": "matmul", "inputs": ["a", "b"], "outputs": ["c"]}],
        "outputs": ["c"],
    });
    std::fs::write(&path, model.to_string())
        .map_err(|source| xlac_runtime::Error::Io { path: path.clone(), source })?;
    let rate = |precision: Precision| -> Result<f64, Error> {
        let options = Options { precision, ..Options::at(OptLevel::O2, BTreeMap::new()) };
        let model = compile_model(&path, &options, &BTreeMap::new())?;
        let report = bench(session, &model, &BTreeMap::new(), 0, 3, 10)?;
        Ok(2.0 * (N * N * N) as f64 / report.quantile(0.5).as_secs_f64())
    };
    Ok(Throughput { f32: rate(Precision::F32)?, bf16: rate(Precision::MixedBf16)? })
}

/// The options a search varies, each a flag of `xlac train`.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub remat: Remat,
    pub accumulate: u64,
    /// Examples per micro-batch.
    pub batch: u64,
    pub optimizer: Optimizer,
    pub precision: Precision,
}

/// A configuration the search built and predicted.
pub struct Candidate {
    pub choice: Choice,
    pub footprint: Footprint,
    /// Predicted seconds per step.
    pub seconds: f64,
}

/// The search's space around `base`: rematerialization none, layers and
/// full; accumulation over 1, 2, 4… micro-batches that divide the step's
/// examples (`base`'s micro-batch times its accumulation, kept); AdamW's
/// lighter-state alternatives, 8-bit AdamW and Adafactor; and mixed-bf16
/// compute for an f32 step. A model without a `batch` symbol keeps its
/// micro-batch.
pub fn choices(base: &Options) -> Vec<Choice> {
    let Some(train) = &base.train else { return Vec::new() };
    let micro = base.bindings.get(BATCH_SYMBOL).copied();
    let examples = micro.map(|b| b * train.accumulate);
    let accumulations: Vec<(u64, u64)> = match examples {
        Some(n) => (0..=4).map(|i| 1u64 << i).filter(|k| n % k == 0).map(|k| (k, n / k)).collect(),
        None => vec![(train.accumulate, 0)],
    };
    let mut optimizers = vec![train.optimizer.clone()];
    if let Optimizer::AdamW { beta1, beta2, eps, weight_decay } = train.optimizer {
        optimizers.push(Optimizer::AdamW8bit { beta1, beta2, eps, weight_decay, min_8bit_size: 4096 });
        optimizers.push(Optimizer::adafactor(weight_decay));
    }
    let mut precisions = vec![base.precision];
    if base.precision == Precision::F32 {
        precisions.push(Precision::MixedBf16);
    }
    let mut out = Vec::new();
    for remat in [Remat::None, Remat::Layers, Remat::Full] {
        for &(accumulate, batch) in &accumulations {
            for optimizer in &optimizers {
                for &precision in &precisions {
                    out.push(Choice { remat, accumulate, batch, optimizer: optimizer.clone(), precision });
                }
            }
        }
    }
    out
}

impl Choice {
    /// `base` with this choice's options.
    pub fn apply(&self, base: &Options) -> Options {
        let mut options = base.clone();
        if self.batch > 0 {
            options.bindings.insert(BATCH_SYMBOL.into(), self.batch);
        }
        options.precision = self.precision;
        if let Some(train) = &mut options.train {
            *train = TrainConfig {
                remat: self.remat,
                accumulate: self.accumulate,
                optimizer: self.optimizer.clone(),
                ..train.clone()
            };
        }
        options
    }
}

/// Builds and predicts every choice of [`choices`] around `base`, calling
/// `progress(done, total)` after each; returns those whose predicted peak
/// is at most `budget` bytes, fastest first (then smallest), leaving out a
/// rematerialization that predicts the same as less of it. `scale`
/// converts xlac's flop count to XLA's (1 without a compiled step).
pub fn search(
    model: &Path,
    base: &Options,
    budget: u64,
    throughput: Throughput,
    scale: f64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Candidate>, Error> {
    let all = choices(base);
    let mut fits: Vec<Candidate> = Vec::new();
    for (i, choice) in all.iter().enumerate() {
        let plan = plan(model, &choice.apply(base))?;
        progress(i + 1, all.len());
        // Rematerialization that changes nothing (a model without layers) is not a choice.
        let same = |c: &Candidate| {
            c.footprint == plan.footprint && Choice { remat: choice.remat, ..c.choice.clone() } == *choice
        };
        if plan.footprint.peak() <= budget && !fits.iter().any(same) {
            let seconds = throughput.seconds(&plan.flops, scale);
            fits.push(Candidate { choice: choice.clone(), footprint: plan.footprint, seconds });
        }
    }
    fits.sort_by(|a, b| a.seconds.total_cmp(&b.seconds).then(a.footprint.peak().cmp(&b.footprint.peak())));
    Ok(fits)
}
