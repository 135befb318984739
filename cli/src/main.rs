//! The `xlac` command line: argument parsing and printing over the `xlac` library.
//!
//! Exit codes: 0 success, 1 an error (bad model, bad input, XLA failure), 2 bad usage.

mod generate;
mod onnx_test;
mod progress;
mod quantize;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use progress::{Counter, Shown, StepProgress};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use xlac_compiler::autodiff::{GradOptions, Remat};
use xlac_compiler::frontend::hf::{Dropout, ImportOptions, NewHead, Pooling};
use xlac_compiler::ir::print::print;
use xlac_compiler::ir::sharding::Mesh;
use xlac_compiler::passes::precision::Precision;
use xlac_compiler::passes::{OptLevel, PassStat, ShardPolicy};
use xlac_compiler::pipeline::{self, DebugOptions, Options, Stage, StopAfter};
use xlac_compiler::train::lora::{Lora, LoraInit};
use xlac_compiler::train::loss::{Loss, IGNORE_INDEX};
use xlac_compiler::train::optim::{Optimizer, Schedule};
use xlac_compiler::train::shard::Zero;
use xlac_compiler::train::{LossScale, TrainConfig};
use xlac_driver::pipeline_train::{PipelineTrainer, Schedule as PipelineSchedule};
use xlac_driver::sweep::{MedianPruner, Metric, Param};
use xlac_driver::text;
use xlac_driver::train::{AdapterSave, Batches, Dataset, Evaluator, RunState, Trainer, Training};
use xlac_driver::{compile_model, plan, Session};
use xlac_runtime::cache::disk::DiskCache;
use xlac_runtime::calibration::{Calibration, Workload};
use xlac_runtime::memory::{self, human_bytes};
use xlac_runtime::{npy, ClientOptions, Platform, Plugin};
use xlac_runtime::{Artifact, CacheConfig, CacheOutcome, LoadOutcome};

#[derive(Parser)]
#[command(name = "xlac", version, about = "Compile and run ML models on XLA through PJRT plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a model to StableHLO, its IR, or a deployable artifact (-o NAME.xlac).
    #[command(
        after_help = "Example:\n  xlac compile fixtures/mlp/model.json --bind batch=8 -o mlp.mlir\n  xlac compile fixtures/mlp/model.json --bind batch=8 --emit ir --stats\n  xlac compile fixtures/mlp/model.json --bind batch=8 -o mlp.xlac --aot --precision mixed-bf16"
    )]
    Compile(CompileArgs),
    /// Compile (or load from the cache) and run a model or an .xlac artifact on a PJRT plugin.
    #[command(
        after_help = "Example:\n  xlac run fixtures/mlp/model.json --input x=fixtures/mlp/inputs/x.npy --out-dir out/\n  xlac run fixtures/cnn/model.json --bind batch=4          # random inputs, seed 0\n  xlac run mlp.xlac --input x=fixtures/mlp/inputs/x.npy   # an artifact, no compiler needed\n  xlac run fixtures/transformer_block/model.json --bind batch=8 --bind seq=16 --pipeline 2 --microbatches 4"
    )]
    Run(RunArgs),
    /// Run a model on xlac's reference interpreter (no plugin): the oracle passes are tested against.
    #[command(
        after_help = "Example:\n  xlac eval fixtures/mlp/model.json --input x=fixtures/mlp/inputs/x.npy\n  xlac eval fixtures/cnn/model.json --bind batch=2 -O0 --out-dir ref/"
    )]
    Eval(EvalArgs),
    /// Compare a model under a low --precision with f32 on the reference interpreter:
    /// output errors, each node's range against the low type, the first overflow.
    #[command(
        name = "check-precision",
        after_help = "Example:\n  xlac check-precision fixtures/transformer_block/model.json --bind batch=2 --bind seq=8 --precision mixed-f16\n  xlac check-precision model.json --input x=x.npy --precision mixed-f16 --keep-f32 big_matmul"
    )]
    CheckPrecision(EvalArgs),
    /// Train a model: every step one XLA program (loss, gradients, clipping, schedule and
    /// optimizer update), the weights and optimizer state updated in place on the device.
    #[command(
        after_help = "Example:\n  xlac train fixtures/mlp/model.json --data data/ --loss cross-entropy --output fc2 \\\n      --optimizer adamw --lr 1e-3 --schedule cosine --warmup 10 --clip-norm 1.0 --steps 200 --batch 32 \\\n      --save trained/ --log train.jsonl\n  xlac train bert-checkpoint/ --data texts.jsonl --task sequence-classification --num-labels 2 \\\n      --lora r=8,alpha=16,targets=query,value,modules_to_save=classifier --optimizer adamw8bit \\\n      --lr 2e-4 --steps 500 --batch 16 --precision mixed-bf16 --save adapter/\n\nDIR holds NAME.npy per model input and labels.npy, examples along the first axis; batches\nare drawn in an order reshuffled every epoch from --seed, a last partial batch dropped."
    )]
    Train(Box<TrainArgs>),
    /// Predict what a training step holds in memory before compiling it (weights, gradients,
    /// optimizer state, activations kept for the backward pass, temporaries), with XLA's
    /// compiled statistics beside it; with --memory, the configurations that fit, fastest first.
    #[command(
        after_help = "Example:\n  xlac plan path/to/bert --task sequence-classification --num-labels 2 --optimizer adamw \\\n      --batch 8 --seq 512\n  xlac plan path/to/llama --task causal-lm --optimizer adamw --batch 4 --seq 256 --memory 16GiB\n  xlac plan fixtures/mlp/model.json --loss cross-entropy --output fc2 --optimizer sgd --batch 32 --json\n\nThe prediction reads the step's IR only; XLA's column compiles it (not with --no-compile).\nA search builds each configuration's step (a minute or more for a BERT-base) and measures\nthis machine's matrix-product throughput once, to rank them."
    )]
    Plan(Box<PlanArgs>),
    /// Search hyperparameters: trials of one compiled training step whose learning rate,
    /// weight decay, betas and schedule are runtime scalars (one XLA compile for the whole
    /// sweep), drawn at random or on a grid, ranked by an evaluation metric, the worse
    /// stopped early with --prune median; prints a table and saves the best trial.
    #[command(
        after_help = "Example:\n  xlac sweep fixtures/mlp/model.json --data data/ --eval-data eval/ --loss cross-entropy \\\n      --output fc2 --optimizer adamw --steps 100 --batch 32 --trials 10 \\\n      --param lr=log:1e-5:1e-2 --param weight_decay=0,0.01,0.1 --param warmup=0:20 \\\n      --param schedule=linear,cosine --metric eval_loss --prune median --eval-every 10 --save best/\n\nEvery option of `xlac train` applies to every trial (but --resume). --param NAME=VALUES varies\nlr, weight_decay, warmup, beta1, beta2 or schedule: log:LOW:HIGH (log-uniform), LOW:HIGH\n(uniform; whole numbers for warmup), or a list A,B,C (--grid: every combination of lists).\nTrials share the data order (--seed). Without --eval-data, the training data is evaluated."
    )]
    Sweep(Box<SweepArgs>),
    /// Import a model from another format: `import hf DIR` reads a Hugging Face checkpoint
    /// (config.json and safetensors) into a model.json whose parameters reference its tensors;
    /// `import onnx MODEL.onnx` writes a model.json and its initializers beside it (.safetensors).
    #[command(
        after_help = "Example:\n  xlac import hf path/to/bert -o bert.json --pooling mean\n  xlac run path/to/bert --bind batch=8 --bind seq=128   # a checkpoint directory runs directly\n  xlac import onnx resnet50.onnx -o resnet50.json      # writes resnet50.safetensors too\n  xlac run resnet50.onnx                               # an .onnx file runs directly"
    )]
    Import(ImportArgs),
    /// Run ONNX's backend conformance suite (written by fixtures/onnx/make_suite.py): each case
    /// passes, fails (with its largest error) or is unsupported (with the reason); a table per operator.
    #[command(
        after_help = "Example:\n  pip install onnx numpy && python3 fixtures/onnx/make_suite.py target/onnx-suite\n  xlac onnx-test target/onnx-suite --filter node/test_conv\n  xlac onnx-test target/onnx-suite --write-manifest fixtures/onnx/expected-pass.txt"
    )]
    OnnxTest(onnx_test::OnnxTestArgs),
    /// Benchmark a model: compile time (cold and cached), execute latency (median and
    /// spread over repeated runs, weights and inputs on the device) and GFLOP/s.
    #[command(
        after_help = "Example:\n  xlac bench fixtures/transformer_block/model.json --bind batch=8 --bind seq=128\n  xlac bench path/to/minilm --bind batch=8 --bind seq=128 --precision mixed-bf16 --runs 50 --json"
    )]
    Bench(BenchArgs),
    /// Generate text with a causal LM checkpoint (GPT-2, Llama): a prefill and a decode
    /// program, the KV cache on the device and updated in place; greedy or sampled.
    #[command(
        after_help = "Example:\n  xlac generate path/to/gpt2 --prompt \"The quick brown fox\" --max-new-tokens 50\n  xlac generate path/to/llama --prompt \"Once upon a time\" --temperature 0.8 --top-p 0.95 --seed 1\n  xlac generate path/to/llama --prompts prompts.txt --max-new-tokens 64 --stop \"\\n\\n\" --json\n  xlac generate path/to/gpt2 --prompt-ids 464,2068,7586 --max-new-tokens 8\n\nPrompts run as one batch, left-padded to a bucket length (a power of two, at least 16); the\ncache holds a bucket too, so generations of similar lengths reuse the compiled programs."
    )]
    Generate(generate::GenerateArgs),
    /// Write a Hugging Face checkpoint with its matrices (linear layers, embeddings, the LM
    /// head) in int8 per output channel (a quarter of the f32 bytes), or int4 in groups.
    #[command(
        after_help = "Example:\n  xlac quantize path/to/llama -o llama-int8/\n  xlac quantize path/to/llama -o llama-int4/ --bits 4 --group 64\n  xlac generate llama-int8/ --prompt \"Once upon a time\"   # reads the int8 weights as they are\n\nThe quantized checkpoint runs with run, generate, bench, eval and artifacts like any other;\ntransformers does not read it (quantization_config's quant_method is xlac-int8 or xlac-int4)."
    )]
    Quantize(quantize::QuantizeArgs),
    /// Show the PJRT plugin found, its platform, version and devices; --all lists every
    /// plugin installed for the platform.
    #[command(
        after_help = "Example:\n  xlac devices\n  xlac devices --all\n  XLAC_PJRT_PLUGIN=/path/to/plugin.so xlac devices --cpu-devices 4"
    )]
    Devices(DevicesArgs),
    /// Inspect or clear the compilation cache, or explain a miss.
    #[command(
        after_help = "Example:\n  xlac cache stats\n  xlac cache explain fixtures/mlp/model.json --bind batch=8\n  xlac cache clear"
    )]
    Cache(CacheCommand),
}

#[derive(Args)]
struct CacheArgs {
    /// The compilation cache directory (default: XLAC_CACHE_DIR, else $XDG_CACHE_HOME/xlac, else ~/.cache/xlac).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Neither read nor write the compilation cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// The disk cache's size cap in bytes (default: XLAC_CACHE_MAX_BYTES, else 2 GiB).
    #[arg(long, value_name = "BYTES")]
    cache_max_bytes: Option<u64>,
}

impl CacheArgs {
    fn config(&self) -> CacheConfig {
        if self.no_cache {
            return CacheConfig::disabled();
        }
        let mut c = CacheConfig::from_env();
        if let Some(d) = &self.cache_dir {
            c.dir = Some(d.clone());
        }
        if let Some(m) = self.cache_max_bytes {
            c.max_bytes = m;
        }
        c
    }
}

#[derive(Args)]
struct CacheCommand {
    #[command(subcommand)]
    action: CacheAction,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Subcommand)]
enum CacheAction {
    /// Where the cache is, how many entries, how much space.
    #[command(after_help = "Example:\n  xlac cache stats\n  xlac cache --cache-dir /tmp/xlac-cache stats")]
    Stats,
    /// Every entry, most recently used first.
    #[command(after_help = "Example:\n  xlac cache list")]
    List,
    /// Remove every entry.
    #[command(after_help = "Example:\n  xlac cache clear\n  XLAC_CACHE_DIR=/tmp/xlac-cache xlac cache clear")]
    Clear,
    /// A model's cache key, component by component, and why it misses.
    #[command(after_help = "Example:\n  xlac cache explain fixtures/mlp/model.json --bind batch=8")]
    Explain {
        /// The model.json file.
        model: PathBuf,
        /// Bind a shape symbol, e.g. --bind batch=8 (repeatable).
        #[arg(long = "bind", value_name = "SYM=N", value_parser = parse_binding)]
        bindings: Vec<(String, u64)>,
        #[command(flatten)]
        plugin: PluginArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// StableHLO (MLIR text), what XLA compiles.
    Stablehlo,
    /// xlac's typed graph IR.
    Ir,
    /// The IR of the gradient program (as --grad --emit ir): the loss's gradients as outputs.
    GradIr,
}

#[derive(Args)]
struct OptArgs {
    /// Optimisation level: 0 (no pass), 1 (each pass once) or 2 (to a fixed point).
    #[arg(short = 'O', value_name = "LEVEL", default_value = "2", value_parser = parse_level)]
    level: OptLevel,
    /// Run exactly these passes, in order, instead of a level (e.g. canonicalize,cse,dce).
    #[arg(long, value_name = "A,B,...")]
    passes: Option<String>,
    /// Print the IR to standard error after each run of PASS (repeatable).
    #[arg(long, value_name = "PASS")]
    print_after: Vec<String>,
    /// Write the IR after each pass to DIR/NN-pass.ir.
    #[arg(long, value_name = "DIR")]
    dump_after_each: Option<PathBuf>,
    /// Stop after a stage (load, verify, optimize, precision, shard, lower) or after the
    /// first run of a pass. `compile --emit ir` prints the IR where it stopped.
    #[arg(long, value_name = "STAGE|PASS")]
    stop_after: Option<String>,
    /// Verify the IR after every pass and check that a pass reporting no rewrite made none
    /// (always on in debug builds; passes that changed the module are verified in any build).
    #[arg(long)]
    verify_each: bool,
    /// Precision policy: f32 (as declared), mixed-bf16 or mixed-f16 (contractions in the
    /// low type with f32 accumulation, everything else in f32). See docs/precision.md.
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    precision: Precision,
    /// Nodes to keep in f32 under a mixed policy (comma-separated names).
    #[arg(long, value_name = "NODE,...", value_delimiter = ',')]
    keep_f32: Vec<String>,
    /// Print per-pass statistics (nodes before and after, rewrites, time) and, when
    /// compiling with XLA, its cost analysis and memory statistics, to standard error.
    #[arg(long)]
    stats: bool,
    /// A device mesh with named axes, e.g. data=2,model=2 (replaces the model's own "mesh").
    /// The program is split over its devices by the shardings (see docs/sharding.md).
    #[arg(long, value_name = "AXIS=N,...", value_parser = Mesh::parse)]
    mesh: Option<Mesh>,
    /// Sharding policies: data (batches over the `data` axis), tensor (Megatron-style over
    /// `model`), or data,tensor for 2-D parallelism.
    #[arg(long, value_name = "POLICY,...", value_delimiter = ',', value_parser = parse_policy)]
    shard: Vec<ShardPolicy>,
    /// Differentiate: the gradients of the loss (--loss) with respect to every float
    /// parameter (or --wrt) become outputs named grad.NAME (reverse-mode autodiff).
    #[arg(long)]
    grad: bool,
    /// The loss output to differentiate (default: the model's only float scalar output).
    #[arg(long, value_name = "OUTPUT")]
    loss: Option<String>,
    /// The inputs or parameters to differentiate by (default: every float parameter).
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    wrt: Vec<String>,
    /// For a Hugging Face BERT checkpoint: also output `sentence_embedding`, the masked mean
    /// of the last hidden state, L2-normalised.
    #[arg(long, value_enum, default_value = "none")]
    pooling: PoolingArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum PoolingArg {
    None,
    Mean,
}

impl PoolingArg {
    fn import(self) -> ImportOptions {
        ImportOptions {
            pooling: match self {
                PoolingArg::None => Pooling::None,
                PoolingArg::Mean => Pooling::Mean,
            },
            ..ImportOptions::default()
        }
    }
}

fn parse_policy(s: &str) -> Result<ShardPolicy, String> {
    match s {
        "data" => Ok(ShardPolicy::Data),
        "tensor" => Ok(ShardPolicy::Tensor),
        _ => Err(format!("unknown sharding policy `{s}` (expected data or tensor)")),
    }
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse()
}

fn parse_level(s: &str) -> Result<OptLevel, String> {
    match s {
        "0" => Ok(OptLevel::O0),
        "1" => Ok(OptLevel::O1),
        "2" => Ok(OptLevel::O2),
        _ => Err(format!("unknown level `{s}` (expected 0, 1 or 2)")),
    }
}

impl OptArgs {
    /// The compile options given other than at their defaults, by flag:
    /// none applies to an artifact, whose program was fixed when it was compiled.
    fn compile_flags_given(&self) -> Vec<&'static str> {
        let flags = [
            (self.level != OptLevel::default(), "-O"),
            (self.passes.is_some(), "--passes"),
            (!self.print_after.is_empty(), "--print-after"),
            (self.dump_after_each.is_some(), "--dump-after-each"),
            (self.stop_after.is_some(), "--stop-after"),
            (self.verify_each, "--verify-each"),
            (self.precision != Precision::default(), "--precision"),
            (!self.keep_f32.is_empty(), "--keep-f32"),
            (self.stats, "--stats"),
            (self.mesh.is_some(), "--mesh"),
            (!self.shard.is_empty(), "--shard"),
            (self.grad, "--grad"),
            (self.loss.is_some(), "--loss"),
            (!self.wrt.is_empty(), "--wrt"),
            (!matches!(self.pooling, PoolingArg::None), "--pooling"),
        ];
        flags.into_iter().filter(|&(given, _)| given).map(|(_, flag)| flag).collect()
    }

    /// The pipeline options these flags give, at precision `precision`, with `bindings`.
    fn options(&self, precision: Precision, bindings: BTreeMap<String, u64>) -> Result<Options> {
        let keep_f32 = if precision == self.precision { self.keep_f32.clone() } else { Vec::new() };
        let passes = self.passes.as_ref().map(|list| {
            list.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_string).collect::<Vec<_>>()
        });
        let stop_after = self.stop_after.as_deref().map(StopAfter::parse).transpose()?;
        let options = Options {
            bindings,
            level: self.level,
            passes,
            precision,
            keep_f32,
            f32_layout: Default::default(),
            whole_widening: Default::default(),
            mesh: self.mesh.clone(),
            policies: self.shard.clone(),
            import: self.pooling.import(),
            onnx_values: BTreeMap::new(),
            grad: self.grad.then(|| GradOptions { loss: self.loss.clone(), wrt: self.wrt.clone(), remat: Remat::None }),
            train: None,
            eval: None,
            debug: DebugOptions {
                print_after: self.print_after.clone(),
                dump_after_each: self.dump_after_each.clone(),
                stop_after,
                verify_each: self.verify_each,
            },
        };
        options.check()?;
        Ok(options)
    }

    /// Reads, optimises and lowers `path` as these options say; prints statistics if asked.
    fn compile(
        &self,
        path: &Path,
        bindings: &BTreeMap<String, u64>,
        given: &BTreeMap<String, xlac_runtime::HostTensor>,
    ) -> Result<xlac_driver::CompiledModel> {
        self.compile_at(self.precision, path, bindings, given)
    }

    /// [`OptArgs::compile`] under the policy `precision`.
    fn compile_at(
        &self,
        precision: Precision,
        path: &Path,
        bindings: &BTreeMap<String, u64>,
        given: &BTreeMap<String, xlac_runtime::HostTensor>,
    ) -> Result<xlac_driver::CompiledModel> {
        let model = xlac_driver::compile_model(path, &self.options(precision, bindings.clone())?, given)?;
        if self.stats {
            print_pass_stats(&model.stats, &model.capped);
        }
        Ok(model)
    }
}

/// Prints per-pass statistics to standard error, and the fixed points that hit their cap.
fn print_pass_stats(stats: &[PassStat], capped: &[String]) {
    eprintln!("{:<18} {:>7} {:>7} {:>8} {:>10}", "pass", "before", "after", "rewrites", "time");
    for s in stats {
        eprintln!("{:<18} {:>7} {:>7} {:>8} {:>10.1?}", s.pass, s.nodes_before, s.nodes_after, s.rewrites, s.time);
    }
    for c in capped {
        eprintln!("warning: fixed point `{c}` stopped at its cap while passes were still rewriting");
    }
}

#[derive(Args)]
struct BenchArgs {
    /// The model: model.json, IR text, a Hugging Face checkpoint directory or an .onnx file.
    model: PathBuf,
    #[command(flatten)]
    io: InputArgs,
    #[command(flatten)]
    plugin: PluginArgs,
    #[command(flatten)]
    opt: OptArgs,
    /// Timed executions.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Untimed executions first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn bench(a: BenchArgs) -> Result<()> {
    let given = a.io.given(&a.model)?;
    let start = std::time::Instant::now();
    let mut model = a.opt.compile(&a.model, &bindings(&a.io.bindings)?, &given)?;
    let xlac_time = start.elapsed();
    let no_cache = CacheArgs { cache_dir: None, no_cache: true, cache_max_bytes: None };
    let session = session_for_model(&a.plugin, &no_cache, &mut model)?;
    let r = xlac_driver::bench::bench(&session, &model, &given, a.io.seed, a.warmup, a.runs)?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let (major, minor) = session.plugin.api_version();
    let (cpu, features) = xlac_runtime::cpu::describe().unwrap_or_else(|| ("unknown CPU".into(), Vec::new()));
    let mut notes: Vec<String> = bf16_note(a.opt.precision, &features).into_iter().collect();
    let found = xlac_runtime::pjrt::plugin::find_all(a.plugin.platform);
    if let Some(fastest) = remembered_calibration()
        .filter(|c| c.holds_for(&found))
        .and_then(|c| c.fastest(model.workload()).map(Path::to_path_buf))
    {
        if fastest != session.plugin.path() {
            notes.push(format!("`xlac devices --calibrate` measured {} faster on this machine", fastest.display()));
        }
    }
    if a.json {
        let report = serde_json::json!({
            "model": a.model.display().to_string(),
            "cpu": cpu,
            "cpu_features": features,
            "notes": notes,
            "plugin": session.plugin.path().display().to_string(),
            "platform": format!("{} {}", session.client.platform_name(), session.client.platform_version()),
            "pjrt_api": format!("{major}.{minor}"),
            "xlac_ms": ms(xlac_time),
            "compile_cold_ms": ms(r.compile_cold),
            "compile_cached_ms": ms(r.compile_cached),
            "load_ms": ms(r.load),
            "weight_bytes": r.weight_bytes,
            "rss_before_load_bytes": r.load_rss.map(|(b, _)| b),
            "rss_peak_load_bytes": r.load_rss.map(|(_, p)| p),
            "runs": r.runs.len(),
            "median_ms": ms(r.quantile(0.5)),
            "p10_ms": ms(r.quantile(0.1)),
            "p90_ms": ms(r.quantile(0.9)),
            "min_ms": ms(r.runs[0]),
            "max_ms": ms(r.runs[r.runs.len() - 1]),
            "flops": r.flops,
            "gflops_per_s": r.gflops(),
        });
        println!("{report}");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "plugin: {} ({} {}, PJRT API {major}.{minor})",
        session.plugin.path().display(),
        session.client.platform_name(),
        session.client.platform_version()
    )?;
    writeln!(out, "cpu: {cpu} ({})", features.join(" "))?;
    for note in &notes {
        writeln!(out, "note: {note}")?;
    }
    writeln!(
        out,
        "compile: xlac {:.1} ms, XLA cold {:.1} ms, cached {:.1} ms",
        ms(xlac_time),
        ms(r.compile_cold),
        ms(r.compile_cached)
    )?;
    let mb = |b: u64| b as f64 / 1e6;
    match r.load_rss {
        Some((before, peak)) => {
            let growth = peak.saturating_sub(before);
            // Relative to the weights when there are any (a model of inputs only has none).
            let growth = match r.weight_bytes {
                0 => format!("{:.1} MB", mb(growth)),
                w => format!("{:.2}x the weights", growth as f64 / w as f64),
            };
            writeln!(
                out,
                "load: {:.1} ms ({:.1} MB of weights; resident memory {:.1} MB before, peak {:.1} MB: +{growth})",
                ms(r.load),
                mb(r.weight_bytes),
                mb(before),
                mb(peak),
            )?
        }
        None => writeln!(out, "load: {:.1} ms ({:.1} MB of weights)", ms(r.load), mb(r.weight_bytes))?,
    }
    writeln!(
        out,
        "execute: median {:.3} ms (p10 {:.3}, p90 {:.3}, min {:.3}, max {:.3}) over {} runs",
        ms(r.quantile(0.5)),
        ms(r.quantile(0.1)),
        ms(r.quantile(0.9)),
        ms(r.runs[0]),
        ms(r.runs[r.runs.len() - 1]),
        r.runs.len()
    )?;
    match (r.flops, r.gflops()) {
        (Some(f), Some(g)) => writeln!(out, "throughput: {:.3} GFLOP per run, {g:.1} GFLOP/s", f / 1e9)?,
        _ => writeln!(out, "throughput: the plugin reports no cost analysis")?,
    }
    Ok(())
}

/// What defines a training step: the model, its loss, optimizer, precision, batch
/// and memory techniques (shared by `xlac train` and `xlac plan`).
#[derive(Args)]
struct StepArgs {
    /// The model: model.json (or IR text), a Hugging Face checkpoint directory or an .onnx file.
    model: PathBuf,
    /// Tokens per example of text data (truncated or padded to this).
    #[arg(long, value_name = "N", default_value_t = 128)]
    seq: usize,
    /// The loss: cross-entropy (logits [..., C], integer labels), mse, or causal-lm.
    #[arg(long, value_parser = ["cross-entropy", "mse", "causal-lm"], required_unless_present = "task")]
    loss: Option<String>,
    /// The task of a Hugging Face model: causal-lm trains its logits with the causal-LM
    /// loss against the input ids (labels.npy, if there, gives them instead: -100 masks a token);
    /// sequence-classification trains a BertForSequenceClassification's logits with
    /// cross-entropy against labels.npy.
    #[arg(long, value_parser = ["causal-lm", "sequence-classification"], conflicts_with = "loss")]
    task: Option<String>,
    /// With --task sequence-classification on a BERT checkpoint without a classifier:
    /// add one with N labels, initialised from --seed as transformers does.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..), requires = "task")]
    num_labels: Option<u64>,
    /// The model output the loss reads (default: the first output; logits for a --task).
    #[arg(long, value_name = "NAME")]
    output: Option<String>,
    /// Cross-entropy's label smoothing.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// The optimizer: sgd or adamw (PyTorch's semantics and defaults), adafactor
    /// (transformers' Adafactor with scale_parameter and relative_step off), or adamw8bit
    /// (AdamW with its moments stored in 8 bits, block-wise, as bitsandbytes' AdamW8bit).
    #[arg(long, value_parser = ["sgd", "adamw", "adafactor", "adamw8bit"])]
    optimizer: String,
    /// adamw8bit keeps 32-bit moments for tensors of fewer elements than this (bitsandbytes' min_8bit_size).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    min_8bit_size: u64,
    /// SGD's momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    /// SGD's dampening.
    #[arg(long, default_value_t = 0.0)]
    dampening: f64,
    /// SGD's Nesterov momentum.
    #[arg(long)]
    nesterov: bool,
    /// Weight decay (default: 0 for sgd, 0.01 for adamw, as PyTorch's).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// AdamW's betas.
    #[arg(long, value_name = "B1,B2", value_delimiter = ',', num_args = 2, default_values_t = [0.9, 0.999])]
    betas: Vec<f64>,
    /// AdamW's epsilon.
    #[arg(long, default_value_t = 1e-8)]
    eps: f64,
    /// The learning-rate schedule: constant, linear or cosine (with --warmup steps first).
    #[arg(long, default_value = "constant", value_parser = ["constant", "linear", "cosine"])]
    schedule: String,
    /// Warmup steps of a linear or cosine schedule.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Clip the gradients' global norm to this.
    #[arg(long, value_name = "X")]
    clip_norm: Option<f64>,
    /// Dropout probability P at every dropout site of a checkpoint (default: the
    /// checkpoint's own, e.g. hidden_dropout_prob; 0 turns dropout off).
    /// Evaluation never drops out.
    #[arg(long, value_name = "P", value_parser = dropout_rate)]
    dropout: Option<f64>,
    /// Keep the parameters matching PATTERN fixed (`*` matches any run; repeatable).
    #[arg(long, value_name = "PATTERN")]
    freeze: Vec<String>,
    /// Examples per micro-batch (per step without --accumulate).
    #[arg(long)]
    batch: usize,
    /// Gradient accumulation: K micro-batches of --batch examples per step, their
    /// gradients summed inside the one step program (equal to a step on K x --batch
    /// examples, with one micro-batch's activations).
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    accumulate: u64,
    /// Rematerialization: layers recomputes each transformer layer of a checkpoint (the
    /// nodes named layerN.*) in the backward pass instead of keeping its activations;
    /// full also recomputes what lies between layers (embeddings, head), or, for a
    /// model without layers, the whole forward pass once.
    #[arg(long, default_value = "none", value_parser = parse_remat)]
    remat: Remat,
    /// Seeds the order examples are drawn in, dropout and a new head's weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Optimisation level of the step program.
    #[arg(short = 'O', value_name = "LEVEL", default_value = "2", value_parser = parse_level)]
    level: OptLevel,
    /// Train on a device mesh, e.g. data=4, model=2 or data=2,model=2 (on the CPU plugin,
    /// as many devices are created). See docs/sharding.md.
    #[arg(long, value_name = "AXIS=N,...", value_parser = Mesh::parse)]
    mesh: Option<Mesh>,
    /// How the step splits over --mesh: data (each batch over `data`: --batch is the
    /// examples of all devices together), tensor (the weights Megatron-style over
    /// `model`), or data,tensor.
    #[arg(long, value_name = "POLICY,...", value_delimiter = ',', value_parser = parse_policy, requires = "mesh")]
    shard: Vec<ShardPolicy>,
    /// ZeRO stage of data parallelism: 1 splits the optimizer state over `data`, 2 also
    /// the gradients, 3 also the weights (gathered where used); 0 holds them whole on
    /// every device.
    #[arg(long, value_name = "STAGE", default_value = "0", requires = "mesh")]
    zero: Zero,
    /// Mixed-precision training: mixed-bf16 (or mixed-f16) runs the forward and backward
    /// passes' contractions in bf16 (f16) with f32 accumulation; the weights, optimizer
    /// state and update stay f32 (docs/precision.md's policy, applied to the whole step).
    /// mixed-f16 scales the loss dynamically, as torch.amp.GradScaler: a step whose
    /// gradients overflow is skipped and the scale halved.
    #[arg(long, default_value = "f32", value_parser = parse_train_precision)]
    precision: Precision,
    /// mixed-f16's initial loss scale (GradScaler's init_scale).
    #[arg(long, value_name = "S", default_value_t = 65536.0)]
    loss_scale: f64,
    /// mixed-f16 doubles the loss scale after this many finite steps in a row.
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    growth_interval: u64,
    /// LoRA, as PEFT's: train low-rank adapters of the named linear layers (each
    /// W x + alpha/r B A x, A Kaiming-uniform from --seed, B zero) and the
    /// modules_to_save in full; every other weight stays fixed. SPEC:
    /// r=8,alpha=16,targets=query,value[,dropout=0.1][,modules_to_save=classifier]
    #[arg(long, value_name = "SPEC", value_parser = parse_lora, conflicts_with = "adapter")]
    lora: Option<Lora>,
    /// LoRA from a saved PEFT adapter (DIR/adapter_config.json, DIR/adapter_model.safetensors):
    /// its configuration, and its tensors to start from.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    step: StepArgs,
    /// Bind another shape symbol of a model.json, e.g. --bind seq=64 (repeatable); --batch
    /// binds batch, and --seq a checkpoint's seq.
    #[arg(long = "bind", value_name = "SYM=N", value_parser = parse_binding)]
    bindings: Vec<(String, u64)>,
    /// Search --remat, --accumulate (keeping the examples per step), lighter optimizer
    /// states and mixed-bf16 for the configurations whose predicted peak fits in this much
    /// memory (e.g. 24GiB, 512MB), ranked by predicted step time.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    memory: Option<u64>,
    /// Predict only: do not compile the step with XLA.
    #[arg(long)]
    no_compile: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    plugin: PluginArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    step: StepArgs,
    /// The data: a directory of NAME.npy per model input and labels.npy, or, for a
    /// checkpoint with a tokenizer.json, FILE.jsonl with a `text` (and `label`) per line.
    #[arg(long, value_name = "DIR|FILE.jsonl")]
    data: PathBuf,
    /// The base learning rate (required; in a sweep, the trials' unless --param lr varies it).
    #[arg(long)]
    lr: Option<f64>,
    /// How many steps.
    #[arg(long)]
    steps: u64,
    /// Write the trained model (DIR/model.json and DIR/model.safetensors; for a checkpoint
    /// directory, a checkpoint directory), with DIR/optimizer.safetensors and
    /// DIR/state.json (to --resume from), at the end.
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
    /// Also save every N steps (to --save's DIR).
    #[arg(long, value_name = "N", requires = "save")]
    save_every: Option<u64>,
    /// Evaluate on this data (same layout as --data): loss, and accuracy for class labels,
    /// every --eval-every steps and at the end.
    #[arg(long, value_name = "DIR")]
    eval_data: Option<PathBuf>,
    /// Evaluate every N steps (with --eval-data; default: at the end only).
    #[arg(long, value_name = "N")]
    eval_every: Option<u64>,
    /// Continue the run saved in DIR (its weights, optimizer state, step and data position)
    /// up to --steps in all.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Write one JSON object per step (step, loss, lr, grad_norm, examples_per_s).
    #[arg(long, value_name = "FILE.jsonl")]
    log: Option<PathBuf>,
    /// With LoRA, --save writes PEFT's adapter; --merge also writes the model (checkpoint or
    /// model.json) with the adapters merged into their weights, which runs without them.
    #[arg(long, requires = "save")]
    merge: bool,
    /// The memory the step may use (e.g. 24GiB): a step the plan (`xlac plan`) predicts
    /// will not fit is refused before XLA compiles it, with the options that would fit.
    /// Default: on the CPU plugin, the host's available memory.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    memory: Option<u64>,
    /// Train even when the plan predicts the step will not fit.
    #[arg(long)]
    no_memory_check: bool,
    #[command(flatten)]
    pipeline: TrainPipelineArgs,
    #[command(flatten)]
    plugin: PluginArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Args)]
struct TrainPipelineArgs {
    /// Pipeline-parallel training: cut the model with its loss into S stages, stage s on
    /// device s (balanced by their work, at layer boundaries where the model has layers),
    /// each step's --microbatches flowing through them forward and back; the step equals
    /// one device's on all its examples. With --mesh data=N, each stage runs on N devices
    /// of its own, its micro-batches split over them (docs/sharding.md).
    #[arg(long, value_name = "S", conflicts_with = "accumulate")]
    pipeline: Option<usize>,
    /// With --pipeline: micro-batches of --batch examples per step (default: S).
    #[arg(long, value_name = "M", requires = "pipeline", value_parser = clap::value_parser!(u64).range(1..))]
    microbatches: Option<u64>,
    /// With --pipeline: the order each stage runs its passes in: gpipe (every forward,
    /// then every backward) or 1f1b (one forward, one backward: at most S - s
    /// micro-batches' inputs kept by stage s instead of M).
    #[arg(long, value_name = "SCHEDULE", default_value = "gpipe", value_parser = parse_pipeline_schedule)]
    pipeline_schedule: PipelineSchedule,
    /// With --pipeline: the first node of each stage after the first, by name, instead of
    /// the balanced cut.
    #[arg(long, value_name = "NODE,...", value_delimiter = ',', requires = "pipeline")]
    stages: Vec<String>,
}

fn parse_pipeline_schedule(s: &str) -> Result<PipelineSchedule, String> {
    s.parse()
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// A hyperparameter to vary (repeatable): lr, weight_decay, warmup, beta1, beta2 or
    /// schedule, as NAME=log:LOW:HIGH, NAME=LOW:HIGH or NAME=A,B,C.
    #[arg(long = "param", value_name = "NAME=VALUES", required = true, value_parser = parse_param)]
    params: Vec<Param>,
    /// How many trials (random search: default 10; with --grid, at most this many of the grid).
    #[arg(long, value_name = "N")]
    trials: Option<usize>,
    /// Every combination of the --param lists, in order, instead of random draws.
    #[arg(long)]
    grid: bool,
    /// What ranks the trials: eval_loss (lower is better) or eval_accuracy.
    #[arg(long, default_value = "eval_loss", value_parser = parse_metric)]
    metric: Metric,
    /// Stop a trial whose metric at an evaluation is worse than the median of the earlier
    /// trials' there (Optuna's MedianPruner: after 5 trials); evaluations every --eval-every
    /// steps, else at every fifth of the run.
    #[arg(long, value_parser = ["median"])]
    prune: Option<String>,
    /// Run N trials side by side, each on a device of its own (on the CPU plugin, N devices
    /// are created); the step is loaded once per device.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "mesh")]
    parallel: Option<u32>,
}

fn parse_param(s: &str) -> Result<Param, String> {
    s.parse()
}

fn parse_metric(s: &str) -> Result<Metric, String> {
    match s {
        "eval_loss" => Ok(Metric::EvalLoss),
        "eval_accuracy" => Ok(Metric::EvalAccuracy),
        _ => Err(format!("unknown metric `{s}` (expected eval_loss or eval_accuracy)")),
    }
}

/// A training precision: f32, mixed-bf16 or mixed-f16.
fn parse_train_precision(s: &str) -> Result<Precision, String> {
    match s.parse()? {
        p @ (Precision::F32 | Precision::MixedBf16 | Precision::MixedF16) => Ok(p),
        Precision::Bf16 | Precision::F16 => {
            Err(format!("training keeps f32 weights and optimizer state: use mixed-bf16 or mixed-f16, not {s}"))
        }
    }
}

/// A `--remat` choice.
fn parse_remat(s: &str) -> Result<Remat, String> {
    s.parse()
}

/// A `--lora` specification.
fn parse_lora(s: &str) -> Result<Lora, String> {
    s.parse()
}

impl StepArgs {
    /// The pipeline options of the step (training) or of its evaluation, for a
    /// run of `steps` steps (the schedule's length).
    fn options(&self, training: bool, steps: u64) -> Result<Options> {
        let config = self.config(steps)?;
        let (train, eval) = if training { (Some(config), None) } else { (None, Some(config)) };
        Ok(Options {
            train,
            eval,
            import: self.import(training),
            precision: self.precision,
            mesh: self.mesh.clone(),
            policies: self.shard.clone(),
            ..Options::at(self.level, BTreeMap::new())
        })
    }

    /// LoRA's configuration: --lora's, seeded by --seed, or --adapter's.
    fn lora(&self) -> Result<Option<Lora>> {
        Ok(match (&self.lora, &self.adapter) {
            (Some(l), _) => Some(Lora { init: LoraInit::Seeded(self.seed), ..l.clone() }),
            (None, Some(dir)) => Some(Lora::from_adapter(dir)?),
            (None, None) => None,
        })
    }

    fn config(&self, steps: u64) -> Result<TrainConfig> {
        let task_loss = self.task.as_deref().map(|t| if t == "causal-lm" { t } else { "cross-entropy" });
        let loss = match task_loss.or(self.loss.as_deref()) {
            Some("mse") => Loss::Mse,
            Some("causal-lm") => Loss::CausalLm { ignore_index: IGNORE_INDEX },
            _ => Loss::CrossEntropy { ignore_index: IGNORE_INDEX, label_smoothing: self.label_smoothing },
        };
        let optimizer = match self.optimizer.as_str() {
            "adafactor" => Optimizer::adafactor(self.weight_decay.unwrap_or(0.0)),
            "adamw" => Optimizer::AdamW {
                beta1: self.betas[0],
                beta2: self.betas[1],
                eps: self.eps,
                weight_decay: self.weight_decay.unwrap_or(0.01),
            },
            "adamw8bit" => Optimizer::AdamW8bit {
                beta1: self.betas[0],
                beta2: self.betas[1],
                eps: self.eps,
                weight_decay: self.weight_decay.unwrap_or(0.01),
                min_8bit_size: self.min_8bit_size,
            },
            _ => Optimizer::Sgd {
                momentum: self.momentum,
                dampening: self.dampening,
                nesterov: self.nesterov,
                weight_decay: self.weight_decay.unwrap_or(0.0),
            },
        };
        let schedule = match self.schedule.as_str() {
            "linear" => Schedule::Linear { warmup: self.warmup, total: steps },
            "cosine" => Schedule::Cosine { warmup: self.warmup, total: steps },
            _ => Schedule::Constant,
        };
        Ok(TrainConfig {
            loss,
            output: self.output.clone().or_else(|| self.task.as_ref().map(|_| "logits".into())),
            optimizer,
            schedule,
            clip_norm: self.clip_norm,
            freeze: self.freeze.clone(),
            accumulate: self.accumulate,
            remat: self.remat,
            lora: self.lora()?,
            loss_scale: (self.precision == Precision::MixedF16)
                .then_some(LossScale { init: self.loss_scale, growth_interval: self.growth_interval }),
            zero: self.zero,
            tunable: false,
        })
    }

    /// How the model is imported for training (with dropout) or evaluation
    /// (without): with a new classification head for --num-labels.
    fn import(&self, training: bool) -> ImportOptions {
        let head = self.num_labels.map(|labels| NewHead { labels, seed: self.seed });
        let dropout = match (training, self.dropout) {
            (false, _) => Dropout::Off,
            (true, None) => Dropout::Checkpoint,
            (true, Some(p)) => Dropout::Rate(p),
        };
        ImportOptions { head, dropout, ..ImportOptions::default() }
    }
}

impl TrainArgs {
    /// The data at `dir`: text tokenized with the checkpoint's tokenizer, or arrays
    /// (for a causal LM, labelled by its input ids where labels.npy is absent).
    fn dataset(&self, dir: &Path) -> Result<Dataset> {
        if dir.extension().is_some_and(|e| e == "jsonl") {
            let labels = match self.step.task.as_deref() {
                Some("causal-lm") => text::Labels::InputIds,
                _ => text::Labels::Field,
            };
            return Ok(text::load(dir, &self.step.model, self.step.seq, labels)?);
        }
        let mut data = Dataset::load(dir)?;
        if self.step.task.as_deref() == Some("causal-lm") {
            data.label_by("input_ids")?;
        }
        Ok(data)
    }
}

/// A dropout probability: a number in [0, 1).
fn dropout_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..1.0).contains(&p) => Ok(p),
        _ => Err(format!("expected a probability in [0, 1), found `{s}`")),
    }
}

fn train(a: TrainArgs) -> Result<()> {
    if a.step.batch == 0 || a.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    let lr = a.lr.context("--lr is required: the base learning rate")?;
    if a.eval_every.is_some() && a.eval_data.is_none() {
        bail!("--eval-every evaluates on --eval-data: give it");
    }
    if a.step.dropout.is_some() && !a.step.model.is_dir() {
        bail!("--dropout sets a checkpoint's dropout; a model.json has none but what its nodes compute");
    }
    let data = a.dataset(&a.data)?;
    // One batch binds the model's shape symbols (its batch size, a sequence length).
    let mut sample = data.batch(&(0..a.step.batch.min(data.len)).collect::<Vec<_>>())?;
    sample.remove("labels");
    if a.merge && a.step.lora.is_none() && a.step.adapter.is_none() {
        bail!("--merge merges LoRA adapters: give --lora or --adapter");
    }
    let options = a.step.options(true, a.steps)?;
    let lora = options.train.as_ref().and_then(|t| t.lora.clone());
    let micro = a.pipeline.pipeline.map(|s| a.pipeline.microbatches.unwrap_or(s as u64)).unwrap_or(1);
    let per_step = a.step.batch * (a.step.accumulate * micro) as usize;
    let (run, saved) = match &a.resume {
        Some(dir) => (Some(RunState::load(dir)?), xlac_driver::train::load_saved(dir)?),
        None => (None, BTreeMap::new()),
    };
    let (session, mut trainer, step_sites): (Session, Box<dyn Training>, _) = match a.pipeline.pipeline {
        Some(stages) => {
            let staged = xlac_driver::compile_staged(&a.step.model, &options, &sample, stages, &a.pipeline.stages)?;
            data.check_inputs(&staged.step.args, per_step)?;
            let per_stage = a.step.mesh.as_ref().map_or(1, |m| m.devices() as u32);
            let session = session(&a.plugin, &a.cache, stages as u32 * per_stage)?;
            let schedule = a.pipeline.pipeline_schedule;
            let trainer = with_notice("compiling the stages' programs with XLA", || {
                PipelineTrainer::new(&session, &staged, schedule, micro as usize, lr, &saved)
            })?;
            eprintln!(
                "pipeline: {stages} stages on devices {:?}, {micro} micro-batches of {} per step ({})",
                trainer.devices(),
                a.step.batch,
                schedule.name()
            );
            (session, Box::new(trainer), staged.step.lora.clone())
        }
        None => {
            let mut step = xlac_driver::compile_model(&a.step.model, &options, &sample)?;
            data.check(&step, per_step)?;
            let session = session_for_model(&a.plugin, &a.cache, &mut step)?;
            let platform_budget = (a.plugin.platform == Platform::Cpu).then(memory::available_host_bytes).flatten();
            if let (Some(budget), false) = (a.memory.or(platform_budget), a.no_memory_check) {
                refuse_what_will_not_fit(&a, &step, &options, budget, &session)?;
            }
            let trainer =
                with_notice("compiling the training step with XLA", || Trainer::resume(&session, &step, lr, saved))?;
            (session, Box::new(trainer), step.lora.clone())
        }
    };
    let mut idle: Vec<Vec<f64>> = Vec::new();
    let eval = match &a.eval_data {
        Some(dir) => {
            let data = a.dataset(dir)?;
            let program = xlac_driver::compile_model(&a.step.model, &a.step.options(false, a.steps)?, &sample)?;
            data.check(&program, a.step.batch)?;
            Some((Evaluator::new(&session, &program)?, data))
        }
        None => None,
    };
    let mut log = match &a.log {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        )),
        None => None,
    };
    let (first, seed) = run.as_ref().map_or((1, a.step.seed), |r| (r.step + 1, r.seed));
    let mut batches = match &run {
        Some(r) => Batches::at(data.len, per_step, r.seed, r.epoch, r.position),
        None => Batches::new(data.len, per_step, a.step.seed),
    };
    if first > a.steps {
        bail!("the saved run already made {} steps; --steps {} adds none", first - 1, a.steps);
    }
    let save = |trainer: &dyn Training, batches: &Batches, step: u64, dir: &Path| -> Result<()> {
        let (epoch, position) = batches.position();
        let state = RunState { step, epoch, position, seed };
        let adapter = lora.as_ref().map(|lora| AdapterSave { lora, sites: &step_sites, merge: a.merge });
        let (weights, optimizer) = (trainer.weights()?, trainer.state()?);
        Ok(xlac_driver::train::save_run(&a.step.model, &weights, &optimizer, &state, dir, adapter.as_ref())?)
    };
    let progress = StepProgress::new(first, a.steps, std::io::stderr().is_terminal());
    for i in first..=a.steps {
        let t = std::time::Instant::now();
        let batch = data.batch(&batches.next_batch())?;
        let r = trainer.step(&batch, xlac_driver::train::step_seed(seed, i))?;
        let rate = per_step as f64 / t.elapsed().as_secs_f64();
        if let Some(p) = trainer.measured() {
            idle.push((0..p.timeline.busy.len()).map(|s| p.timeline.idle_share(s)).collect());
        }
        // Under loss scaling, a non-finite gradient norm is a skipped step.
        let skipped = !r.grad_norm.is_finite();
        if let Some(log) = &mut log {
            let mut line = serde_json::json!({"step": i, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm, "examples_per_s": rate});
            if skipped {
                line["skipped"] = true.into();
            }
            writeln!(log, "{line}")?;
        }
        if skipped && a.step.precision == Precision::MixedF16 {
            progress.println(&format!("step {i}: the gradients overflowed in f16: update skipped, loss scale halved"));
        }
        progress.step(&Shown { step: i, loss: r.loss, lr: r.lr, grad_norm: r.grad_norm, examples_per_s: rate });
        if let Some((evaluator, eval_data)) = &eval {
            if i == a.steps || a.eval_every.is_some_and(|n| i % n == 0) {
                let e = evaluator.run(&*trainer, eval_data, a.step.batch)?;
                let accuracy = e.accuracy.map(|acc| format!(", accuracy {acc:.4}")).unwrap_or_default();
                progress
                    .println(&format!("eval at step {i}: loss {:.6}{accuracy} over {} examples", e.loss, e.examples));
                if let Some(log) = &mut log {
                    let line = serde_json::json!({"step": i, "eval_loss": e.loss, "eval_accuracy": e.accuracy, "eval_examples": e.examples});
                    writeln!(log, "{line}")?;
                }
            }
        }
        if let (Some(every), Some(dir)) = (a.save_every, &a.save) {
            if i % every == 0 && i < a.steps {
                save(&*trainer, &batches, i, dir)?;
            }
        }
    }
    progress.finish();
    if let (Some(stages), Some(p)) = (a.pipeline.pipeline, trainer.measured()) {
        show_pipeline(stages, micro as usize, &idle, p);
    }
    if let Some(dir) = &a.save {
        save(&*trainer, &batches, a.steps, dir)?;
        let runnable = if a.step.model.is_dir() { dir.clone() } else { dir.join("model.json") };
        if lora.is_some() && !a.merge {
            eprintln!(
                "saved the LoRA adapter in {} (PEFT's format; --merge also writes the merged model)",
                dir.display()
            );
        } else {
            eprintln!("saved {} (xlac run {} runs it)", dir.display(), runnable.display());
        }
    }
    Ok(())
}

/// A pipelined run's bubble (each stage's idle share, the median over the
/// steps after the first, beside the theory's) and its last step's memory per device.
fn show_pipeline(stages: usize, micro: usize, idle: &[Vec<f64>], last: &xlac_driver::pipeline_train::PipelineStep) {
    let steady = if idle.len() > 1 { &idle[1..] } else { idle };
    let median = |s: usize| {
        let mut v: Vec<f64> = steady.iter().filter_map(|i| i.get(s).copied()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    eprintln!(
        "  {:>5} {:>7} {:>10} {:>10} {:>10} {:>10}",
        "stage", "idle", "resident", "stashed", "temporary", "total"
    );
    for (s, m) in last.memory.iter().enumerate() {
        eprintln!(
            "  {s:>5} {:>6.1}% {:>10} {:>10} {:>10} {:>10}",
            100.0 * median(s),
            human_bytes(m.resident),
            human_bytes(m.stashed),
            human_bytes(m.temporary),
            human_bytes(m.total())
        );
    }
    let mean = (0..stages).map(median).sum::<f64>() / stages as f64;
    eprintln!(
        "  bubble: measured mean idle {:.1}% (median over steps); (S-1)/(M+S-1) = {:.1}%",
        100.0 * mean,
        100.0 * xlac_driver::stages::bubble_theory(stages, micro)
    );
}

/// One trial's end: its values, by step, the step it was pruned at, and its final metric.
struct TrialEnd {
    number: usize,
    assignment: xlac_driver::sweep::Assignment,
    metric: Option<f64>,
    pruned_at: Option<u64>,
}

/// `m` locked; a poisoned lock (a panicking trial thread) still holds what it held.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A sweep under way: what every trial shares, and what the trials report.
struct Sweep<'a> {
    s: &'a SweepArgs,
    step: &'a xlac_driver::CompiledModel,
    data: &'a Dataset,
    eval_data: &'a Dataset,
    assignments: &'a [xlac_driver::sweep::Assignment],
    trials: &'a [(xlac_compiler::train::TrainConfig, f64)],
    per_step: usize,
    /// Evaluate every this many steps (and at the end).
    every: Option<u64>,
    lora: Option<Lora>,
    /// Show a progress bar per trial.
    terminal: bool,
    pruner: Mutex<MedianPruner>,
    log: Mutex<Option<std::io::BufWriter<std::fs::File>>>,
    /// The best finished trial so far: (index, metric).
    best: Mutex<Option<(usize, f64)>>,
    ends: Mutex<Vec<TrialEnd>>,
    /// The next trial to run.
    next: std::sync::atomic::AtomicUsize,
}

impl Sweep<'_> {
    /// Runs trials, taking the next one until none is left, on `device` (one
    /// of the --parallel ones; `None`: the first). Its first trial loads the
    /// step there; the others restart on it. Returns whether XLA compiled it.
    fn worker(&self, session: &Session, program: &xlac_driver::CompiledModel, device: Option<usize>) -> Result<bool> {
        let devices = device.map(|d| vec![d]);
        let step = xlac_driver::CompiledModel { devices: devices.clone(), ..self.step.clone() };
        let program = xlac_driver::CompiledModel { devices, ..program.clone() };
        let evaluator = Evaluator::new(session, &program)?;
        let mut first: Option<Trainer> = None;
        loop {
            let k = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if k >= self.assignments.len() {
                return Ok(first.as_ref().is_some_and(Trainer::compiled));
            }
            let (config, lr) = &self.trials[k];
            let knobs = xlac_driver::sweep::knob_inputs(&step, config)?;
            let trainer = match &first {
                Some(t) => t.restart(&step, *lr, knobs)?,
                None => {
                    with_notice("compiling the training step with XLA", || Trainer::resume(session, &step, *lr, knobs))?
                }
            };
            let trainer = self.trial(k, trainer, &evaluator)?;
            first.get_or_insert(trainer);
        }
    }

    /// Trial `k` on `trainer`: its steps, evaluations and pruning, its line
    /// on stderr, and its weights saved when it is the best so far.
    fn trial(&self, k: usize, mut trainer: Trainer, evaluator: &Evaluator) -> Result<Trainer> {
        let (s, a) = (self.s, &self.s.train);
        let mut batches = Batches::new(self.data.len, self.per_step, a.step.seed);
        let progress = StepProgress::new(1, a.steps, self.terminal);
        let (mut values, mut pruned_at) = (BTreeMap::new(), None);
        for i in 1..=a.steps {
            let t = std::time::Instant::now();
            let batch = self.data.batch(&batches.next_batch())?;
            let r = trainer.step(&batch, xlac_driver::train::step_seed(a.step.seed, i))?;
            let rate = self.per_step as f64 / t.elapsed().as_secs_f64();
            if self.terminal {
                progress.step(&Shown { step: i, loss: r.loss, lr: r.lr, grad_norm: r.grad_norm, examples_per_s: rate });
            }
            if let Some(log) = locked(&self.log).as_mut() {
                let line = serde_json::json!({"trial": k + 1, "step": i, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm});
                writeln!(log, "{line}")?;
            }
            if i == a.steps || self.every.is_some_and(|n| i.is_multiple_of(n)) {
                let e = evaluator.run(&trainer, self.eval_data, a.step.batch)?;
                let value = match s.metric {
                    Metric::EvalLoss => e.loss,
                    Metric::EvalAccuracy => {
                        e.accuracy.context("--metric eval_accuracy needs class labels (a cross-entropy loss)")?
                    }
                };
                values.insert(i, value);
                if let Some(log) = locked(&self.log).as_mut() {
                    writeln!(log, "{}", serde_json::json!({"trial": k + 1, "step": i, s.metric.name(): value}))?;
                }
                if s.prune.is_some() && i < a.steps && locked(&self.pruner).prune(i, value) {
                    pruned_at = Some(i);
                    break;
                }
            }
        }
        progress.finish();
        let metric = values.get(&a.steps).copied();
        locked(&self.pruner).record(values.clone());
        let assignment = &self.assignments[k];
        let shown: Vec<String> = assignment.iter().map(|(t, v)| format!("{}={}", t.name(), t.show(*v))).collect();
        let result = match (metric, pruned_at) {
            (_, Some(at)) => format!("pruned at step {at} ({} {:.6})", s.metric.name(), values[&at]),
            (Some(m), None) => format!("{} {m:.6}", s.metric.name()),
            (None, None) => "no evaluation".into(),
        };
        eprintln!("trial {}/{}: {} -> {result}", k + 1, self.assignments.len(), shown.join(" "));
        if let Some(m) = metric.filter(|m| m.is_finite()) {
            let mut best = locked(&self.best);
            if best.is_none_or(|(_, b)| s.metric.better(m, b)) {
                *best = Some((k, m));
                if let Some(dir) = &a.save {
                    let (epoch, position) = batches.position();
                    let state = RunState { step: a.steps, epoch, position, seed: a.step.seed };
                    let sites = &self.step.lora;
                    let adapter = self.lora.as_ref().map(|lora| AdapterSave { lora, sites, merge: false });
                    let (weights, optimizer) = (trainer.weights()?, trainer.state()?);
                    xlac_driver::train::save_run(&a.step.model, &weights, &optimizer, &state, dir, adapter.as_ref())?;
                }
            }
        }
        let end = TrialEnd { number: k + 1, assignment: assignment.clone(), metric, pruned_at };
        locked(&self.ends).push(end);
        Ok(trainer)
    }
}

fn sweep(s: SweepArgs) -> Result<()> {
    let a = &s.train;
    if a.step.batch == 0 || a.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    if a.pipeline.pipeline.is_some() {
        bail!("a sweep runs each trial on one device (--parallel: one per trial): --pipeline does not apply");
    }
    if a.resume.is_some() || a.save_every.is_some() || a.merge {
        bail!("a sweep starts every trial from the model's weights and saves only the best: --resume, --save-every and --merge do not apply");
    }
    let varies_lr = s.params.iter().any(|p| p.tunable == xlac_driver::sweep::Tunable::Lr);
    let lr = match (a.lr, varies_lr) {
        (Some(lr), _) => lr,
        (None, true) => 0.0,
        (None, false) => bail!("give --lr, or vary it with --param lr=..."),
    };
    let assignments = if s.grid {
        let mut all = xlac_driver::sweep::grid(&s.params).map_err(anyhow::Error::msg)?;
        all.truncate(s.trials.unwrap_or(usize::MAX));
        all
    } else {
        xlac_driver::sweep::random(&s.params, s.trials.unwrap_or(10), a.step.seed)
    };
    if assignments.is_empty() {
        bail!("--trials 0: nothing to try");
    }
    let data = a.dataset(&a.data)?;
    let mut sample = data.batch(&(0..a.step.batch.min(data.len)).collect::<Vec<_>>())?;
    sample.remove("labels");
    let mut options = a.step.options(true, a.steps)?;
    let base = options.train.as_mut().context("a training step")?;
    base.tunable = true;
    let base = base.clone();
    // Every trial's configuration is checked before anything is compiled.
    let trials: Vec<_> = assignments
        .iter()
        .map(|t| xlac_driver::sweep::configure(&base, lr, a.steps, t))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let step = with_notice("building the training step", || compile_model(&a.step.model, &options, &sample))?;
    let per_step = a.step.batch * a.step.accumulate as usize;
    data.check(&step, per_step)?;
    let devices = step.num_partitions().max(s.parallel.unwrap_or(1));
    let session = session_for(&a.plugin, &a.cache, devices, step.workload())?;
    let budget = a.memory.or_else(|| (a.plugin.platform == Platform::Cpu).then(memory::available_host_bytes).flatten());
    if let (Some(budget), false) = (budget, a.no_memory_check) {
        refuse_what_will_not_fit(a, &step, &options, budget, &session)?;
    }
    let eval_data = match &a.eval_data {
        Some(dir) => a.dataset(dir)?,
        None => a.dataset(&a.data)?,
    };
    let program = compile_model(&a.step.model, &a.step.options(false, a.steps)?, &sample)?;
    eval_data.check(&program, a.step.batch)?;
    let every = a.eval_every.or(s.prune.as_ref().map(|_| (a.steps / 5).max(1)));
    let log = Mutex::new(match &a.log {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        )),
        None => None,
    });
    let sweep = Sweep {
        s: &s,
        step: &step,
        data: &data,
        eval_data: &eval_data,
        assignments: &assignments,
        trials: &trials,
        per_step,
        every,
        lora: options.train.as_ref().and_then(|t| t.lora.clone()),
        terminal: std::io::stderr().is_terminal() && s.parallel.is_none(),
        pruner: Mutex::new(MedianPruner::new(s.metric, 5)),
        log,
        best: Mutex::new(None),
        ends: Mutex::new(Vec::new()),
        next: std::sync::atomic::AtomicUsize::new(0),
    };
    // One worker per device: each loads the step there once and runs trials on it in turn.
    let workers = s.parallel.unwrap_or(1) as usize;
    let compiled: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|d| {
                let (sweep, session, program) = (&sweep, &session, &program);
                scope.spawn(move || sweep.worker(session, program, s.parallel.map(|_| d)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect::<Vec<_>>()
    })
    .into_iter()
    .collect::<Result<_>>()?;
    let (mut ends, best) = (sweep.ends.into_inner().unwrap_or_default(), sweep.best.into_inner().unwrap_or_default());
    if let Some(log) = sweep.log.into_inner().unwrap_or_default().as_mut() {
        log.flush()?;
    }
    // The table: finished trials best first, then the pruned ones.
    ends.sort_by(|x, y| match (x.metric, y.metric) {
        (Some(a), Some(b)) if s.metric.better(a, b) => std::cmp::Ordering::Less,
        (Some(a), Some(b)) if s.metric.better(b, a) => std::cmp::Ordering::Greater,
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        _ => x.number.cmp(&y.number),
    });
    let names: Vec<&str> = s.params.iter().map(|p| p.tunable.name()).collect();
    let mut out = std::io::stdout().lock();
    write!(out, "{:>5}", "trial")?;
    for n in &names {
        write!(out, " {n:>12}")?;
    }
    writeln!(out, " {:>14}  status", s.metric.name())?;
    for e in &ends {
        write!(out, "{:>5}", e.number)?;
        for (t, v) in &e.assignment {
            write!(out, " {:>12}", t.show(*v))?;
        }
        let status = match (e.pruned_at, best) {
            (Some(at), _) => format!("pruned at step {at}"),
            (None, Some((b, _))) if b + 1 == e.number => "best".into(),
            _ => "finished".into(),
        };
        let metric = e.metric.map_or("-".into(), |m| format!("{m:.6}"));
        writeln!(out, " {metric:>14}  {status}")?;
    }
    let fresh = compiled.iter().filter(|&&c| c).count();
    writeln!(
        out,
        "{} trials on one step program, loaded once per device ({} device(s)): {fresh} XLA compile(s) of the training step, {} from the compilation cache; every trial on a device ran its executable",
        ends.len(),
        compiled.len(),
        compiled.len() - fresh
    )?;
    match (best, &a.save) {
        (Some((b, _)), Some(dir)) => eprintln!("saved trial {} (the best) in {}", b + 1, dir.display()),
        (None, _) => eprintln!("no trial finished with a finite {}", s.metric.name()),
        _ => {}
    }
    Ok(())
}

/// A size in bytes: a number with an optional unit, B, kB, MB, GB, TB (powers of 1000)
/// or KiB, MiB, GiB, TiB (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.trim();
    let expected = || format!("expected a size such as 24GiB or 512MB, found `{s}`");
    if number.is_empty() {
        return Err(expected());
    }
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        _ => return Err(format!("unknown unit `{unit}` in `{s}` (expected B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)")),
    };
    match number.parse::<f64>() {
        Ok(n) if n > 0.0 => Ok((n * scale) as u64),
        _ => Err(expected()),
    }
}

fn plan(a: PlanArgs) -> Result<()> {
    let mut options = a.step.options(true, 1)?;
    options.bindings = bindings(&a.bindings)?;
    options.bindings.insert(plan::BATCH_SYMBOL.into(), a.step.batch as u64);
    if a.step.model.is_dir() {
        options.bindings.insert("seq".into(), a.step.seq as u64);
    }
    let planned = with_notice("building the training step", || plan::plan(&a.step.model, &options))?;
    let devices = planned.step.num_partitions();
    let workload = planned.step.workload();
    let session = if a.no_compile && a.memory.is_none() {
        None
    } else {
        Some(session_for(&a.plugin, &a.cache, devices, workload)?)
    };
    let compiled = match (&session, a.no_compile) {
        (Some(session), false) => {
            Some(with_notice("compiling the step with XLA", || plan::compile(session, &planned))?)
        }
        _ => None,
    };
    let search = match (a.memory, &session) {
        (Some(budget), Some(session)) => {
            let throughput = with_notice("measuring this machine's matrix-product throughput", || {
                plan::measure_throughput(session)
            })?;
            let scale = compiled.as_ref().and_then(|c| c.flops).map_or(1.0, |f| f / planned.flops.total());
            let total = plan::choices(&options).len();
            let progress = Counter::new(total as u64, "configurations built", std::io::stderr().is_terminal());
            let fits = plan::search(&a.step.model, &options, budget, throughput, scale, &mut |done, _| {
                progress.set(done as u64)
            })?;
            progress.finish();
            Some((budget, throughput, total, fits))
        }
        _ => None,
    };
    let asked = asked_choice(&a.step, &options);
    let f = &planned.footprint;
    if a.json {
        let xla = compiled.as_ref().map(|c| {
            let m = &c.memory;
            serde_json::json!({"arguments": m.argument_bytes, "outputs": m.output_bytes, "aliased": m.alias_bytes,
                "temporaries": m.temp_bytes, "peak": c.peak(), "reported_peak": m.peak_bytes, "flops": c.flops})
        });
        let search = search.as_ref().map(|(budget, t, total, fits)| {
            let fits: Vec<_> = fits
                .iter()
                .map(|c| {
                    let ch = &c.choice;
                    serde_json::json!({"options": flags(ch, &asked), "remat": ch.remat.name(), "accumulate": ch.accumulate,
                        "batch": ch.batch, "optimizer": ch.optimizer.name(), "precision": ch.precision.name(),
                        "peak": c.footprint.peak(), "temporaries": c.footprint.temporaries,
                        "optimizer_state": c.footprint.optimizer_state, "seconds": c.seconds})
                })
                .collect();
            serde_json::json!({"memory": budget, "tried": total, "throughput": {"f32": t.f32, "bf16": t.bf16}, "fits": fits})
        });
        let doc = serde_json::json!({
            "model": a.step.model, "bindings": planned.step.bindings,
            "predicted": {"weights": f.weights, "trainable": f.trainable, "optimizer_state": f.optimizer_state,
                "batch": f.batch, "arguments": f.arguments(), "gradients": f.gradients(), "activations": f.activations,
                "temporaries": f.temporaries, "outputs": f.outputs, "aliased": f.aliased, "peak": f.peak(),
                "flops": planned.flops.total(), "low_precision_flops": planned.flops.low_precision},
            "xla": xla,
            "search": search,
            "caveat": session.as_ref().and_then(plan::caveat),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    let binds: Vec<String> = planned.step.bindings.iter().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(
        out,
        "plan: {} ({}), {}, {}, remat {}, accumulate {}",
        a.step.model.display(),
        binds.join(", "),
        asked.optimizer.name(),
        asked.precision.name(),
        asked.remat.name(),
        asked.accumulate
    )?;
    if let Some(mesh) = planned.step.module.mesh.as_ref().filter(|m| m.devices() > 1) {
        let zero = options.train.as_ref().map_or(0, |t| t.zero.stage());
        writeln!(out, "  per device of {} (mesh {mesh}, ZeRO stage {zero})", mesh.devices())?;
    }
    let xla =
        |pick: &dyn Fn(&plan::Compiled) -> u64| compiled.as_ref().map(|c| human_bytes(pick(c))).unwrap_or_default();
    let row = |out: &mut dyn Write, what: &str, predicted: u64, xla: String| -> std::io::Result<()> {
        writeln!(out, "  {what:<34} {:>10}  {xla:>10}", human_bytes(predicted))
    };
    writeln!(out, "  {:<34} {:>10}  {:>10}", "", "predicted", if compiled.is_some() { "XLA" } else { "" })?;
    row(&mut out, "weights", f.weights, String::new())?;
    row(&mut out, "  trainable", f.trainable, String::new())?;
    row(&mut out, "optimizer state", f.optimizer_state, String::new())?;
    row(&mut out, "batch", f.batch, String::new())?;
    row(&mut out, "arguments", f.arguments(), xla(&|c| c.memory.argument_bytes as u64))?;
    row(&mut out, "gradients", f.gradients(), String::new())?;
    row(&mut out, "activations kept for the backward", f.activations, String::new())?;
    row(&mut out, "temporaries (peak, with both above)", f.temporaries, xla(&|c| c.memory.temp_bytes as u64))?;
    row(&mut out, "outputs", f.outputs, xla(&|c| c.memory.output_bytes as u64))?;
    row(&mut out, "  aliased to donated arguments", f.aliased, xla(&|c| c.memory.alias_bytes as u64))?;
    row(&mut out, "peak", f.peak(), xla(&|c| c.peak()))?;
    if let Some(c) = &compiled {
        writeln!(
            out,
            "  predicted peak / XLA's: {:.2}x; {:.3e} flops a step ({})",
            f.peak() as f64 / c.peak().max(1) as f64,
            planned.flops.total(),
            c.flops.map_or("XLA's cost analysis: not available".into(), |x| format!("XLA's cost analysis: {x:.3e}"))
        )?;
    }
    if let Some(caveat) = session.as_ref().and_then(plan::caveat) {
        writeln!(out, "  note: {caveat}")?;
    }
    if let Some((budget, t, total, fits)) = &search {
        writeln!(
            out,
            "\n{} of {total} configurations fit in {} (predicted step time at this machine's measured {:.1} GFLOP/s f32, {:.1} GFLOP/s mixed-bf16):",
            fits.len(),
            human_bytes(*budget),
            t.f32 / 1e9,
            t.bf16 / 1e9
        )?;
        if !fits.is_empty() {
            writeln!(out, "  {:>10} {:>12} {:>10} {:>9}  options", "peak", "temporaries", "opt. state", "step")?;
        }
        for c in fits.iter().take(12) {
            let f = &c.footprint;
            writeln!(
                out,
                "  {:>10} {:>12} {:>10} {:>9}  {}",
                human_bytes(f.peak()),
                human_bytes(f.temporaries),
                human_bytes(f.optimizer_state),
                human_seconds(c.seconds),
                flags(&c.choice, &asked)
            )?;
        }
        if fits.len() > 12 {
            writeln!(out, "  ... and {} more (--json lists them all)", fits.len() - 12)?;
        }
        writeln!(out, "{}", TRADE_OFFS)?;
    }
    Ok(())
}

/// Fails, before XLA compiles `step`, when the plan predicts a peak above
/// `budget`, saying which configurations of the search would fit.
fn refuse_what_will_not_fit(
    a: &TrainArgs,
    step: &xlac_driver::CompiledModel,
    options: &Options,
    budget: u64,
    session: &Session,
) -> Result<()> {
    let f = plan::footprint(step);
    if f.peak() <= budget {
        return Ok(());
    }
    let mut base = options.clone();
    base.bindings = step.bindings.clone();
    let asked = asked_choice(&a.step, &base);
    eprintln!(
        "xlac: the plan predicts {} for this step, more than {}; searching for configurations that fit…",
        human_bytes(f.peak()),
        human_bytes(budget)
    );
    let throughput = plan::measure_throughput(session)?;
    let fits = plan::search(&a.step.model, &base, budget, throughput, 1.0, &mut |_, _| {})?;
    let mut text = format!(
        "the plan predicts this step needs {} (weights {}, optimizer state {}, temporaries {} of which activations {}), more than the {} {}",
        human_bytes(f.peak()),
        human_bytes(f.weights),
        human_bytes(f.optimizer_state),
        human_bytes(f.temporaries),
        human_bytes(f.activations),
        human_bytes(budget),
        if a.memory.is_some() { "--memory allows" } else { "of memory available" }
    );
    if fits.is_empty() {
        text.push_str(
            "; none of the configurations `xlac plan --memory` searches fits: try a smaller --batch or --seq, LoRA, or more memory",
        );
    } else {
        text.push_str("; these fit (fastest first; `xlac plan` shows more):");
        for c in fits.iter().take(5) {
            text.push_str(&format!("\n  {}  (peak {})", flags(&c.choice, &asked), human_bytes(c.footprint.peak())));
        }
    }
    if let Some(caveat) = plan::caveat(session) {
        text.push_str(&format!("\n(note: {caveat})"));
    }
    text.push_str("\n(--no-memory-check trains anyway)");
    bail!(text)
}

/// The search's choice that `step`'s options make, with `options`' optimizer.
fn asked_choice(step: &StepArgs, options: &Options) -> plan::Choice {
    plan::Choice {
        remat: step.remat,
        accumulate: step.accumulate,
        batch: step.batch as u64,
        optimizer: options.train.as_ref().map(|t| t.optimizer.clone()).expect("a training step"),
        precision: step.precision,
    }
}

/// A warning for bf16 compute on a CPU without bf16 instructions (`features` as [`xlac_runtime::cpu::describe`] lists them).
fn bf16_note(precision: Precision, features: &[&str]) -> Option<String> {
    let has = features.iter().any(|f| *f == "avx512_bf16" || *f == "amx_bf16");
    (precision.low() == Some(xlac_compiler::DType::BF16) && !has).then(|| {
        "this CPU has no bf16 instructions (AVX512-BF16 or AMX): XLA emulates the bf16 products, which can be slower than f32"
            .to_string()
    })
}

/// `seconds` for people: `12.3 s`, `45.6 ms`, `7.8 µs`.
fn human_seconds(seconds: f64) -> String {
    match seconds {
        s if s >= 1.0 => format!("{s:.1} s"),
        s if s >= 1e-3 => format!("{:.1} ms", s * 1e3),
        s => format!("{:.1} µs", s * 1e6),
    }
}

/// What each option of a search trades, printed under its table.
const TRADE_OFFS: &str = "What they trade: --remat recomputes activations in the backward pass (more compute);\n\
--accumulate runs K micro-batches in turn (same examples per step, less parallel work);\n\
adamw8bit stores AdamW's moments in 8 bits (its loss stays within 2e-3 of AdamW's over\n\
200 steps: docs/training.md); adafactor keeps factored second moments and no momentum (a\n\
different optimizer); mixed-bf16 multiplies in bf16 (its loss within 5e-3 of f32's).";

/// The flags that make `choice` from `asked`: only those that differ, or `(as asked)`.
fn flags(choice: &plan::Choice, asked: &plan::Choice) -> String {
    let mut f = Vec::new();
    if choice.remat != asked.remat {
        f.push(format!("--remat {}", choice.remat.name()));
    }
    if choice.batch != asked.batch || choice.accumulate != asked.accumulate {
        f.push(format!("--batch {} --accumulate {}", choice.batch, choice.accumulate));
    }
    if choice.optimizer != asked.optimizer {
        f.push(format!("--optimizer {}", choice.optimizer.name()));
    }
    if choice.precision != asked.precision {
        f.push(format!("--precision {}", choice.precision.name()));
    }
    if f.is_empty() {
        "(as asked)".into()
    } else {
        f.join(" ")
    }
}

#[derive(Args)]
struct ImportArgs {
    /// The source format: hf (a Hugging Face checkpoint directory) or onnx (an .onnx file).
    #[arg(value_enum)]
    format: ImportFormat,
    /// The checkpoint directory, or the .onnx file.
    source: PathBuf,
    /// The model.json to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Also output the mean-pooled, L2-normalised sentence embedding (BERT).
    #[arg(long, value_enum, default_value = "none")]
    pooling: PoolingArg,
    /// For onnx: a symbolic dimension's size, fixed in the written model.
    #[arg(long = "bind", value_name = "SYM=N", value_parser = parse_binding)]
    bind: Vec<(String, u64)>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ImportFormat {
    /// A Hugging Face checkpoint: config.json with model.safetensors or a sharded index.
    Hf,
    /// An ONNX model (opsets 7-21); external data is read beside it.
    Onnx,
}

fn import(a: ImportArgs) -> Result<()> {
    match a.format {
        ImportFormat::Hf => {
            if !a.bind.is_empty() {
                bail!("--bind: a checkpoint's symbols are bound when it runs (xlac run --bind ...), not at import");
            }
            xlac_driver::import_checkpoint(&a.source, &a.output, &a.pooling.import())?;
            eprintln!(
                "wrote {} (parameters reference the checkpoint's tensors; bind batch and seq)",
                a.output.display()
            );
        }
        ImportFormat::Onnx => {
            let weights = xlac_driver::import_onnx(&a.source, &a.output, &bindings(&a.bind)?)?;
            match weights {
                Some(w) => eprintln!("wrote {} and its initializers {}", a.output.display(), w.display()),
                None => eprintln!("wrote {} (no initializer large enough for a weights file)", a.output.display()),
            }
        }
    }
    Ok(())
}

#[derive(Args)]
struct CompileArgs {
    /// The model: model.json, IR text, a Hugging Face checkpoint directory or an .onnx file.
    model: PathBuf,
    /// Write here instead of standard output; a name ending in .xlac writes an artifact.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// With an .xlac output: also store an executable compiled for this plugin and devices.
    #[arg(long)]
    aot: bool,
    #[command(flatten)]
    plugin: PluginArgs,
    #[command(flatten)]
    cache: CacheArgs,
    /// What to write.
    #[arg(long, value_enum, default_value = "stablehlo")]
    emit: Emit,
    /// Bind a shape symbol, e.g. --bind batch=8 (repeatable).
    #[arg(long = "bind", value_name = "SYM=N", value_parser = parse_binding)]
    bindings: Vec<(String, u64)>,
    #[command(flatten)]
    opt: OptArgs,
}

/// Inputs, bindings, seed and output directory of `run`, `eval` and `check-precision`.
#[derive(Args)]
struct InputArgs {
    /// An input from a .npy file, e.g. --input x=x.npy (repeatable); others are random.
    #[arg(long = "input", value_name = "NAME=FILE", value_parser = parse_input)]
    inputs: Vec<(String, PathBuf)>,
    /// Text for a Hugging Face checkpoint with a tokenizer.json (repeatable: a batch, padded
    /// to its longest text): its input_ids, attention_mask and token_type_ids.
    #[arg(long = "text", value_name = "TEXT")]
    texts: Vec<String>,
    /// Bind a shape symbol, e.g. --bind batch=8 (repeatable); given inputs bind their own.
    #[arg(long = "bind", value_name = "SYM=N", value_parser = parse_binding)]
    bindings: Vec<(String, u64)>,
    /// Write each output to DIR/NAME.npy.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Seed for the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct EvalArgs {
    /// The model: model.json, IR text, a Hugging Face checkpoint directory or an .onnx file.
    model: PathBuf,
    #[command(flatten)]
    io: InputArgs,
    #[command(flatten)]
    opt: OptArgs,
}

#[derive(Args)]
struct DevicesArgs {
    #[command(flatten)]
    plugin: PluginArgs,
    /// List every plugin installed for --platform (where pip puts them), the one used by
    /// default first, with its package, PJRT API and XLA versions, and the host CPU.
    #[arg(long)]
    all: bool,
    /// Time every CPU plugin installed on a matrix product and attention shaped as a
    /// BERT-base layer's, and make the fastest the default (remembered in the cache
    /// directory until the CPU or the plugins change; --plugin and XLAC_PJRT_PLUGIN still
    /// choose another).
    #[arg(long, conflicts_with = "all")]
    calibrate: bool,
}

#[derive(Args)]
struct PluginArgs {
    /// The PJRT plugin library (else XLAC_PJRT_PLUGIN, else found where pip installs it).
    #[arg(long, value_name = "PATH")]
    plugin: Option<PathBuf>,
    /// The platform whose plugin to look for: cpu, cuda or tpu.
    #[arg(long, default_value = "cpu", value_parser = parse_platform)]
    platform: Platform,
    /// For the CPU plugin: how many devices to create.
    #[arg(long, value_name = "N")]
    cpu_devices: Option<u32>,
}

#[derive(Args)]
struct RunArgs {
    /// The model: model.json, IR text, a Hugging Face checkpoint directory, an .onnx file, or an .xlac artifact.
    model: PathBuf,
    #[command(flatten)]
    io: InputArgs,
    #[command(flatten)]
    plugin: PluginArgs,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    opt: OptArgs,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

#[derive(Args)]
struct PipelineArgs {
    /// Pipeline parallelism: cut the model into S stages, stage s on device s (balanced by
    /// their work, at layer boundaries where the model has layers; see docs/sharding.md).
    #[arg(long, value_name = "S", conflicts_with = "mesh")]
    pipeline: Option<usize>,
    /// With --pipeline: split the batch (every input's first axis) into M micro-batches
    /// that flow from stage to stage (default: S).
    #[arg(long, value_name = "M", requires = "pipeline")]
    microbatches: Option<usize>,
    /// With --pipeline: the first node of each stage after the first, by name, instead of
    /// the balanced cut (`xlac compile --emit ir` lists the nodes).
    #[arg(long, value_name = "NODE,...", value_delimiter = ',', requires = "pipeline")]
    stages: Vec<String>,
}

fn parse_binding(s: &str) -> Result<(String, u64), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected SYM=N, found `{s}`"))?;
    let n = v.parse().map_err(|_| format!("`{v}` is not a size ≥ 0 in `{s}`"))?;
    Ok((k.to_string(), n))
}

fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected NAME=FILE.npy, found `{s}`"))?;
    Ok((k.to_string(), PathBuf::from(v)))
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    Platform::from_name(s).ok_or_else(|| format!("unknown platform `{s}` (expected cpu, cuda or tpu)"))
}

fn bindings(list: &[(String, u64)]) -> Result<BTreeMap<String, u64>> {
    let mut map = BTreeMap::new();
    for (k, v) in list {
        if map.insert(k.clone(), *v).is_some_and(|old| old != *v) {
            bail!("--bind {k} is given twice with different values");
        }
    }
    Ok(map)
}

fn main() {
    if std::env::var_os("TF_CPP_MIN_LOG_LEVEL").is_none() {
        // Silence XLA's own logging unless the user asks for it.
        std::env::set_var("TF_CPP_MIN_LOG_LEVEL", "3");
    }
    let cli = Cli::parse();
    if matches!(cli.command, Command::Train(_) | Command::Sweep(_)) {
        // Every training step allocates its XLA temporaries afresh (huge_pages.rs).
        xlac_driver::huge_pages::restart_with_huge_pages();
        eprintln!("huge pages: {}", xlac_driver::huge_pages::current().describe());
    }
    let result = match cli.command {
        Command::Compile(a) => compile(a),
        Command::Run(a) => run(a),
        Command::Eval(a) => eval(a),
        Command::CheckPrecision(a) => check_precision(a),
        Command::Devices(a) => devices(a),
        Command::Cache(a) => cache(a),
        Command::Import(a) => import(a),
        Command::OnnxTest(a) => onnx_test::onnx_test(a),
        Command::Bench(a) => bench(a),
        Command::Generate(a) => generate::generate(a),
        Command::Quantize(a) => quantize::quantize(a),
        Command::Train(a) => train(*a),
        Command::Plan(a) => plan(*a),
        Command::Sweep(a) => sweep(*a),
    };
    if let Err(e) = result {
        // A closed pipe (`xlac devices | head`) ends the output normally.
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
            return;
        }
        eprintln!("error: {}", message(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each cause once: library errors
/// already write their source into their own message, context added here
/// (`with_context`) does not.
fn message(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// The first `n` characters of `s` (all of it when shorter): cache entries
/// are read from disk, where a field may be short or not ASCII.
fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

fn is_artifact(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "xlac")
}

/// Prints XLA's cost analysis and compiled memory statistics of `exe` to standard error.
fn print_xla_stats(exe: &xlac_runtime::Executable) -> Result<()> {
    match exe.cost_analysis() {
        Ok(costs) => {
            let cost = |name: &str| costs.iter().find(|(k, _)| k == name).map_or(0.0, |(_, v)| *v);
            eprintln!(
                "XLA cost analysis: {:.3e} flops, {:.3e} transcendentals, {:.3e} bytes accessed",
                cost("flops"),
                cost("transcendentals"),
                cost("bytes accessed")
            );
        }
        // A plugin may not implement it (the 0.115 CPU build does not): say so and go on.
        Err(xlac_runtime::Error::Pjrt { code, message, .. }) if code.name() == "UNIMPLEMENTED" => {
            eprintln!("XLA cost analysis: not available from this plugin ({message})")
        }
        Err(e) => return Err(e.into()),
    }
    let m = exe.memory_stats()?;
    eprintln!(
        "XLA memory: arguments {} B, outputs {} B, temporaries {} B, aliased {} B, code {} B, peak {} B",
        m.argument_bytes, m.output_bytes, m.temp_bytes, m.alias_bytes, m.generated_code_bytes, m.peak_bytes
    );
    Ok(())
}

fn compile(mut a: CompileArgs) -> Result<()> {
    if matches!(a.emit, Emit::GradIr) {
        a.opt.grad = true;
        a.emit = Emit::Ir;
    }
    let options = a.opt.options(a.opt.precision, bindings(&a.bindings)?)?;
    if let Some(StopAfter::Stage(stage)) = &options.debug.stop_after {
        if *stage < Stage::Lower {
            // Nothing is lowered: the IR where the pipeline stopped is the result.
            if !matches!(a.emit, Emit::Ir) || a.aot || a.output.as_ref().is_some_and(|p| is_artifact(p)) {
                bail!("--stop-after {}: nothing is lowered; add --emit ir to print the IR there", stage.name());
            }
            let c = pipeline::compile(&a.model, &BTreeMap::new(), &options)?;
            if a.opt.stats {
                print_pass_stats(&c.stats, &c.capped);
            }
            return write_text(&print(&c.module), a.output.as_deref());
        }
    }
    let artifact = a.output.as_deref().filter(|p| is_artifact(p));
    if a.aot && artifact.is_none() {
        bail!("--aot needs an artifact output: -o NAME.xlac");
    }
    let mut model = a.opt.compile(&a.model, &bindings(&a.bindings)?, &BTreeMap::new())?;
    if let (true, Some(path)) = (a.aot, artifact) {
        // An ahead-of-time executable is for one plugin: its program as that plugin's rules lower it.
        let session = session_for_model(&a.plugin, &a.cache, &mut model)?;
        if a.opt.stats {
            print_compile_stats(&session, &model)?;
        }
        session.write_artifact(&model, path, true)?;
        return Ok(());
    }
    if a.opt.stats {
        // XLA's statistics of the program as the plugin runs it; the text emitted stays the plugin's own to choose.
        let mut for_plugin = model.clone();
        let session = session_for_model(&a.plugin, &a.cache, &mut for_plugin)?;
        print_compile_stats(&session, &for_plugin)?;
    }
    if let Some(path) = artifact {
        xlac_driver::write_artifact(&model, path, None)?;
        return Ok(());
    }
    let text = match a.emit {
        Emit::Stablehlo => model.lowered.text,
        Emit::Ir | Emit::GradIr => print(&model.module),
    };
    write_text(&text, a.output.as_deref())
}

/// Compiles `model` on `session` (through its cache) and prints XLA's
/// statistics of it to standard error.
fn print_compile_stats(session: &Session, model: &xlac_driver::CompiledModel) -> Result<()> {
    let (exe, outcome) = session.compile(model)?;
    report(&outcome);
    print_xla_stats(&exe)
}

/// Writes `text` to `output` (replaced whole: an error leaves any previous
/// file intact), or to standard output.
fn write_text(text: &str, output: Option<&Path>) -> Result<()> {
    match output {
        Some(path) => xlac_core::file::replace(path, |f| f.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(())
}

/// A session for a program on `devices` devices: on the CPU plugin, that many
/// devices are created unless --cpu-devices says otherwise.
fn session(a: &PluginArgs, cache: &CacheArgs, devices: u32) -> Result<Session> {
    session_for(a, cache, devices, Workload::Dense)
}

/// A session for `model`: on its devices, on the plugin fastest at its
/// [`CompiledModel::workload`]; `model` lowered anew where that plugin's
/// rules say ([`CompiledModel::lower_for`]).
fn session_for_model(a: &PluginArgs, cache: &CacheArgs, model: &mut xlac_driver::CompiledModel) -> Result<Session> {
    let session = session_for(a, cache, model.num_partitions(), model.workload())?;
    model.lower_for(&session);
    Ok(session)
}

/// [`session`] on the plugin fastest for `workload`.
fn session_for(a: &PluginArgs, cache: &CacheArgs, devices: u32, workload: Workload) -> Result<Session> {
    let cpu_device_count = a.cpu_devices.or((devices > 1).then_some(devices));
    let plugin = find_plugin(a, workload)?;
    Ok(Session::new(a.platform, Some(&plugin), &ClientOptions { cpu_device_count }, &cache.config())?)
}

/// The plugin to use for `workload` ([`choose_plugins`]); when finding it
/// first timed the installed CPU plugins, says which one was found fastest.
fn find_plugin(a: &PluginArgs, workload: Workload) -> Result<PathBuf> {
    let (choice, timed) = choose_plugins(a)?;
    let path = choice.of(workload).to_path_buf();
    if timed {
        eprintln!("xlac: using {} (remembered for this machine; `xlac devices --all` shows the times)", path.display());
    }
    Ok(path)
}

/// The plugin for each workload ([`xlac_runtime::calibration::choose_noting`]),
/// and whether the installed plugins were timed for it (said on stderr before).
fn choose_plugins(a: &PluginArgs) -> Result<(xlac_runtime::calibration::Choice, bool)> {
    let mut timed = false;
    let choice = xlac_runtime::calibration::choose_noting(a.platform, a.plugin.as_deref(), |found| {
        timed = true;
        eprintln!(
            "xlac: {} CPU plugins are installed; timing each once on this machine to use the fastest…",
            found.len()
        );
    })?;
    Ok((choice, timed))
}

/// Says on stderr why the cache could not serve a compile, when it could not.
fn report(outcome: &CacheOutcome) {
    if let CacheOutcome::Compiled { note: Some(note) } = outcome {
        eprintln!("warning: {note}");
    }
}

/// Reads `--input NAME=FILE` arguments.
impl InputArgs {
    /// The inputs given: each --input's .npy file, and --text tokenized with `model`'s tokenizer.
    fn given(&self, model: &Path) -> Result<BTreeMap<String, xlac_runtime::HostTensor>> {
        let mut given = BTreeMap::new();
        for (name, path) in &self.inputs {
            if given.insert(name.clone(), npy::read(path)?).is_some() {
                bail!("--input {name} is given twice");
            }
        }
        if !self.texts.is_empty() {
            if !model.is_dir() {
                bail!(
                    "--text needs a Hugging Face checkpoint directory with a tokenizer.json; {} is not one",
                    model.display()
                );
            }
            for (name, tensor) in text::encode(model, &self.texts)? {
                if given.insert(name.clone(), tensor).is_some() {
                    bail!("--input {name} and --text both give `{name}`: give one");
                }
            }
        }
        Ok(given)
    }
}

/// Prints each output's name, type and summary, and writes DIR/NAME.npy when asked.
fn show_outputs(outputs: &[(String, xlac_runtime::HostTensor)], out_dir: Option<&Path>) -> Result<()> {
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut out = std::io::stdout().lock();
    for (name, t) in outputs {
        writeln!(out, "{name}: {}{:?} {}", t.element_type(), t.shape(), t.summary())?;
        if let Some(dir) = out_dir {
            npy::write(&dir.join(file_name(name)).with_extension("npy"), t)?;
        }
    }
    Ok(())
}

fn run(a: RunArgs) -> Result<()> {
    let given = a.io.given(&a.model)?;
    let outputs = if is_artifact(&a.model) {
        if !a.io.bindings.is_empty() {
            bail!("an artifact's shapes are fixed when it is compiled; --bind does not apply to {}", a.model.display());
        }
        let pipeline = a.pipeline.pipeline.map(|_| "--pipeline");
        if let Some(flag) = a.opt.compile_flags_given().into_iter().chain(pipeline).next() {
            bail!(
                "{flag} does not apply to {}: an artifact's program is fixed when it is compiled (give it to `xlac compile`)",
                a.model.display()
            );
        }
        let artifact = Artifact::open(&a.model)?;
        let session = session_for(&a.plugin, &a.cache, artifact.num_partitions(), artifact.workload())?;
        let (outputs, outcome) = session.run_artifact(&artifact, &given, a.io.seed)?;
        if let LoadOutcome::Cache(o) = &outcome {
            report(o);
        }
        outputs
    } else if let Some(stages) = a.pipeline.pipeline {
        run_pipelined(&a, &given, stages)?
    } else {
        let mut model = a.opt.compile(&a.model, &bindings(&a.io.bindings)?, &given)?;
        let session = session_for_model(&a.plugin, &a.cache, &mut model)?;
        let (device, outcome) = load_with_progress(&session, &model)?;
        report(&outcome);
        if a.opt.stats {
            print_xla_stats(device.executable())?;
        }
        device.run(&given, a.io.seed)?
    };
    show_outputs(&outputs, a.io.out_dir.as_deref())
}

/// `xlac run --pipeline S`: the whole batch's inputs (given, or random),
/// split into micro-batches, run through the model's stages, one device
/// each; prints the stages and the measured bubble to stderr.
fn run_pipelined(
    a: &RunArgs,
    given: &BTreeMap<String, xlac_runtime::HostTensor>,
    stages: usize,
) -> Result<Vec<(String, xlac_runtime::HostTensor)>> {
    use xlac_driver::stages::{bubble_theory, join, split, Pipeline};
    let micro = a.pipeline.microbatches.unwrap_or(stages);
    let bound = bindings(&a.io.bindings)?;
    let whole = a.opt.compile(&a.model, &bound, given)?;
    let specs = whole.input_specs();
    let values = xlac_driver::input_values(&a.model, &specs, given, a.io.seed)?;
    let full: BTreeMap<_, _> = specs.iter().map(|s| s.name.clone()).zip(values).collect();
    let parts = split(&full, micro)?;
    // The micro-batch's shapes bind the batch.
    let mut small_bound = bound.clone();
    small_bound.remove("batch");
    let small = a.opt.compile(&a.model, &small_bound, &parts[0])?;
    let cut = xlac_compiler::stages::cut(&small.module, stages, &a.pipeline.stages)?;
    let described: Vec<(String, f64)> = cut
        .stages
        .iter()
        .map(|s| {
            let order = s.module.order();
            let name = |i: usize| s.module.node(order[i]).name.clone();
            (format!("{} … {}", name(0), name(order.len() - 1)), s.flops)
        })
        .collect();
    let session = session(&a.plugin, &a.cache, stages as u32)?;
    let pipeline = with_notice("compiling the stages with XLA", || Pipeline::load(&session, &small, cut))?;
    // One micro-batch through every stage first: a stage's first execution sets up what later ones reuse.
    pipeline.run(&parts[..1])?;
    let (outputs, timeline) = pipeline.run(&parts)?;
    let total: f64 = described.iter().map(|(_, f)| f).sum::<f64>().max(1.0);
    let xla = pipeline.xla_flops();
    let xla_total: f64 = xla.iter().flatten().sum::<f64>().max(1.0);
    eprintln!(
        "pipeline: {stages} stages, {micro} micro-batches (GPipe), wall {:.3} ms",
        timeline.wall.as_secs_f64() * 1e3
    );
    eprintln!(
        "  {:>5} {:>6} {:>10} {:>7} {:>9} {:>7}  nodes",
        "stage", "device", "flops", "share", "XLA share", "idle"
    );
    for (s, ((nodes, flops), device)) in described.iter().zip(pipeline.devices()).enumerate() {
        // XLA's cost analysis of the compiled stage, where the plugin has one.
        let by_xla = xla[s].map_or("-".to_string(), |f| format!("{:.1}%", 100.0 * f / xla_total));
        eprintln!(
            "  {s:>5} {device:>6} {flops:>10.3e} {:>6.1}% {by_xla:>9} {:>6.1}%  {nodes}",
            100.0 * flops / total,
            100.0 * timeline.idle_share(s)
        );
    }
    let mean = (0..stages).map(|s| timeline.idle_share(s)).sum::<f64>() / stages as f64;
    eprintln!(
        "  bubble: measured mean idle {:.1}%; GPipe's (S-1)/(M+S-1) = {:.1}%",
        100.0 * mean,
        100.0 * bubble_theory(stages, micro)
    );
    Ok(join(outputs)?)
}

/// Runs `f`; if it takes more than a second, says on stderr what is going on.
fn with_notice<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    let notice = std::thread::spawn(move || {
        // Woken at once when `done` is dropped, so the caller never waits on it.
        if finished.recv_timeout(std::time::Duration::from_secs(1)) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            eprintln!("xlac: {what}…");
        }
    });
    let out = f();
    drop(done);
    let _ = notice.join();
    out
}

/// Compiles (or finds in the cache) and uploads the weights at once, saying
/// so on stderr, with the weights' progress, when it takes more than a second.
fn load_with_progress(
    session: &Session,
    model: &xlac_driver::CompiledModel,
) -> Result<(xlac_driver::DeviceModel, CacheOutcome)> {
    let start = std::time::Instant::now();
    let mut shown = false;
    let loaded = with_notice("compiling with XLA and loading the weights", || {
        session.load(model, &mut |p| {
            let late = start.elapsed() > std::time::Duration::from_secs(1);
            if late && (p.tensors % 16 == 0 || p.tensors == p.total_tensors) {
                shown = true;
                eprint!(
                    "\rxlac: loading weights: {}/{} tensors, {:.0}/{:.0} MB",
                    p.tensors,
                    p.total_tensors,
                    p.bytes as f64 / 1e6,
                    p.total_bytes as f64 / 1e6
                );
            }
        })
    })?;
    if shown {
        eprintln!(" in {:.1} s", start.elapsed().as_secs_f64());
    }
    Ok(loaded)
}

fn eval(a: EvalArgs) -> Result<()> {
    let given = a.io.given(&a.model)?;
    let model = a.opt.compile(&a.model, &bindings(&a.io.bindings)?, &given)?;
    show_outputs(&xlac_driver::eval_model(&model, &given, a.io.seed)?, a.io.out_dir.as_deref())
}

/// An output name as a file name: path separators replaced.
fn file_name(name: &str) -> PathBuf {
    Path::new(&name.replace(['/', '\\'], "_")).to_path_buf()
}

fn devices(a: DevicesArgs) -> Result<()> {
    if a.calibrate {
        return calibrate(&a.plugin);
    }
    if a.all {
        return all_plugins(&a.plugin);
    }
    let s = session(&a.plugin, &CacheArgs { cache_dir: None, no_cache: true, cache_max_bytes: None }, 1)?;
    let mut out = std::io::stdout().lock();
    write_plugin(&mut out, &s.plugin)?;
    writeln!(out, "platform: {} {}", s.client.platform_name(), s.client.platform_version())?;
    let devices = s.client.devices();
    writeln!(out, "devices: {}", devices.len())?;
    for d in devices {
        writeln!(out, "  {}: {} ({})", d.id, d.kind, d.description)?;
    }
    Ok(())
}

/// A plugin's path, the pip package that installed it, its PJRT API version,
/// attributes and the debug options xlac sets to avoid its XLA's known defects.
fn write_plugin(out: &mut dyn Write, plugin: &Plugin) -> Result<()> {
    let (major, minor) = plugin.api_version();
    writeln!(out, "plugin: {}", plugin.path().display())?;
    if let Some((name, version)) = xlac_runtime::pjrt::plugin::distribution(plugin.path()) {
        writeln!(out, "package: {name} {version}")?;
    }
    writeln!(out, "PJRT API: {major}.{minor}")?;
    for (k, v) in plugin.attributes() {
        writeln!(out, "  {k}: {v}")?;
    }
    for w in xlac_runtime::workarounds::for_plugin_api(plugin.api_version()) {
        let which = if w.only_if_products_read_broadcasts { " (programs whose products may read one)" } else { "" };
        writeln!(out, "  compiles with {}={}: {}{which}", w.option, w.value, w.reason)?;
    }
    Ok(())
}

/// `xlac devices --all`: the host CPU, then every plugin installed for the platform.
fn all_plugins(a: &PluginArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if let Some((model, features)) = xlac_runtime::cpu::describe() {
        writeln!(
            out,
            "CPU: {model} ({})",
            if features.is_empty() { "none of AVX2, AVX-512, AMX".into() } else { features.join(" ") }
        )?;
    }
    let found = xlac_runtime::pjrt::plugin::find_all(a.platform);
    let choice = match choose_plugins(a) {
        Ok((choice, _)) => Some(choice),
        Err(_) if found.is_empty() => {
            bail!("no {} plugin is installed. {}", a.platform.name(), a.platform.install_hint())
        }
        Err(e) => {
            // Listed all the same: this is where the user looks for the reason.
            writeln!(out, "default: none (other commands stop here): {e:#}")?;
            None
        }
    };
    // The calibration the choice read, else (a plugin chosen by the user) the one remembered.
    let calibration = match choice.as_ref().and_then(|c| c.calibration()) {
        Some(c) => Some(c.clone()),
        None => remembered_calibration().filter(|c| c.holds_for(&found)),
    };
    let chosen = choice.as_ref().map(|c| c.of(Workload::Dense).to_path_buf());
    let listed = chosen.iter().chain(found.iter().filter(|p| Some(*p) != chosen.as_ref()));
    for (i, path) in listed.enumerate() {
        writeln!(out)?;
        match Plugin::load(path) {
            Ok(plugin) => write_plugin(&mut out, &plugin)?,
            Err(e) => writeln!(out, "plugin: {}\n  cannot load: {e}", path.display())?,
        }
        if let Some(m) = calibration.as_ref().and_then(|c| c.plugins.iter().find(|m| m.path == *path)) {
            writeln!(out, "  calibration: {}", timed(m))?;
        }
        if i == 0 && chosen.is_some() {
            writeln!(out, "  (used by default; --plugin or XLAC_PJRT_PLUGIN chooses another)")?;
        }
        // The workloads it is chosen for, where the default is not.
        if let Some(c) = choice.as_ref().filter(|_| i > 0) {
            for w in Workload::ALL.into_iter().filter(|&w| c.of(w) == path.as_path()) {
                writeln!(out, "  (used by default {})", w.used_for())?;
            }
        }
    }
    if found.len() > 1 && calibration.is_none() {
        writeln!(out, "\n`xlac devices --calibrate` times them and makes the fastest the default.")?;
    }
    Ok(())
}

/// A plugin's calibration times, or why it has none (it could not run the
/// probes, or gave a wrong result on one).
fn timed(m: &xlac_runtime::calibration::Measured) -> String {
    m.times.map_or_else(
        || match &m.failure {
            Some(why) => format!("never chosen: {why}"),
            None => "cannot run".into(),
        },
        |t| {
            let whole = if t.widens_whole { " (the whole matrix first)" } else { "" };
            let each = Workload::ALL.map(|w| format!("{:.2} ms {}", t.of(w) * 1e3, w.name()));
            format!("{}{whole}", each.join(", "))
        },
    )
}

/// The plugin calibration remembered in the default cache directory.
fn remembered_calibration() -> Option<Calibration> {
    Calibration::load(&xlac_runtime::cache::disk::default_dir()?)
}

/// `xlac devices --calibrate`: times each installed CPU plugin and remembers the result.
fn calibrate(a: &PluginArgs) -> Result<()> {
    let platform = a.platform;
    if platform != Platform::Cpu {
        bail!("--calibrate times CPU plugins; --platform {} has one plugin per machine", platform.name());
    }
    let found = xlac_runtime::pjrt::plugin::find_all(platform);
    if found.is_empty() {
        bail!("no CPU plugin is installed. {}", platform.install_hint());
    }
    let dir = xlac_runtime::cache::disk::default_dir()
        .context("no cache directory to remember the calibration in (set XLAC_CACHE_DIR or HOME)")?;
    let c = with_notice(&format!("timing {} plugins", found.len()), || Calibration::run(&found));
    c.save(&dir)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "CPU: {}", c.cpu)?;
    for m in &c.plugins {
        writeln!(out, "  {:>38}  {}", timed(m), m.path.display())?;
    }
    let fastest = c.fastest(Workload::Dense);
    if let Some(fastest) = fastest {
        writeln!(out, "default: {} (remembered in {})", fastest.display(), dir.join("plugins.json").display())?;
    }
    for w in Workload::ALL.into_iter().filter(|&w| w != Workload::Dense) {
        if let Some(other) = c.fastest(w).filter(|&p| fastest != Some(p)) {
            writeln!(out, "used {}: {}", w.used_for(), other.display())?;
        }
    }
    let used = xlac_runtime::calibration::find(platform, a.plugin.as_deref(), Workload::Dense)?;
    if fastest != Some(used.as_path()) {
        writeln!(
            out,
            "used instead: {} (chosen by --plugin, {} or the configuration file)",
            used.display(),
            xlac_runtime::pjrt::plugin::PLUGIN_ENV
        )?;
    }
    Ok(())
}

fn cache(a: CacheCommand) -> Result<()> {
    let config = a.cache.config();
    let mut out = std::io::stdout().lock();
    if let CacheAction::Explain { model, bindings: b, plugin } = &a.action {
        let options = Options { bindings: bindings(b)?, ..Options::default() };
        let mut model = compile_model(model, &options, &BTreeMap::new())?;
        let s = session_for_model(plugin, &a.cache, &mut model)?;
        let program = model.program();
        let e = s.cache.explain(&s.client, &program, &program.compile_options())?;
        writeln!(out, "key: {}", e.key.hex)?;
        for c in &e.key.components {
            writeln!(out, "  {:<26} {}  {}", c.label, prefix(&c.digest, 16), c.shown)?;
        }
        match (&e.hit, &e.closest, s.cache.disk()) {
            (_, _, None) => writeln!(out, "no disk cache (--no-cache)")?,
            (true, _, Some(_)) => writeln!(out, "hit: an entry for this key is in the cache")?,
            (false, None, Some(d)) => writeln!(out, "miss: the cache at {} is empty", d.dir().display())?,
            (false, Some((entry, differ)), Some(_)) => {
                writeln!(
                    out,
                    "miss: the closest entry, {}, differs in: {}",
                    prefix(&entry.key, 16),
                    differ.join(", ")
                )?;
                for label in differ {
                    let theirs = entry.components.iter().find(|c| &c.label == label);
                    let ours = e.key.components.iter().find(|c| &c.label == label);
                    if let (Some(t), Some(o)) = (theirs, ours) {
                        writeln!(out, "  {label}: {} (cached) vs {} (now)", t.shown, o.shown)?;
                    }
                }
            }
        }
        return Ok(());
    }
    let Some(dir) = config.dir.clone() else { bail!("--no-cache: there is no cache to inspect") };
    let disk = DiskCache::open(&dir, config.max_bytes)?;
    match a.action {
        CacheAction::Stats => {
            let entries = disk.entries()?;
            let total: u64 = entries.iter().map(|e| e.size).sum();
            writeln!(out, "cache: {}", disk.dir().display())?;
            writeln!(out, "entries: {}", entries.len())?;
            writeln!(
                out,
                "size: {} of {} bytes ({:.1}%)",
                total,
                disk.max_bytes(),
                100.0 * total as f64 / disk.max_bytes().max(1) as f64
            )?;
        }
        CacheAction::List => {
            for e in disk.entries()? {
                let shown = |label: &str| {
                    e.components.iter().find(|c| c.label == label).map(|c| c.shown.clone()).unwrap_or_default()
                };
                let age = e.last_used.elapsed().map(|d| d.as_secs()).unwrap_or(0);
                let program = e
                    .components
                    .iter()
                    .find(|c| c.label == "program")
                    .map(|c| prefix(&c.digest, 12).to_string())
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{}  {:>10} bytes  used {age}s ago  program {program}  {} {}",
                    prefix(&e.key, 16),
                    e.size,
                    shown("platform_name"),
                    shown("platform_version")
                )?;
            }
        }
        CacheAction::Clear => writeln!(out, "removed {} entries from {}", disk.clear()?, disk.dir().display())?,
        CacheAction::Explain { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn check_precision(a: EvalArgs) -> Result<()> {
    if a.opt.precision.low().is_none() {
        bail!("check-precision needs a low --precision (bf16, f16, mixed-bf16 or mixed-f16)");
    }
    let given = a.io.given(&a.model)?;
    let b = bindings(&a.io.bindings)?;
    let reference = a.opt.compile_at(Precision::F32, &a.model, &b, &given)?;
    let mixed = a.opt.compile(&a.model, &b, &given)?;
    let r = xlac_driver::check::check_precision(&reference, &mixed, a.opt.precision, &given, a.io.seed)?;
    let mut out = std::io::stdout().lock();
    let how = if r.policy.is_mixed() {
        format!("{} contractions with f32 accumulation", r.low)
    } else {
        format!("everything in {}", r.low)
    };
    writeln!(out, "outputs ({how}, against f32):")?;
    for o in &r.outputs {
        writeln!(
            out,
            "  {}: max abs error {:.3e}, max rel error {:.3e}, cosine similarity {:.7}",
            o.name, o.max_abs, o.max_rel, o.cosine
        )?;
    }
    writeln!(
        out,
        "nodes (largest magnitude in f32; {} holds up to {:.5e}; share of nonzero values that {} flushes to 0):",
        r.low, r.low_max, r.low
    )?;
    for n in &r.nodes {
        let flag = if n.overflows { "  OVERFLOWS" } else { "" };
        writeln!(out, "  {:<28} {:<14} {:>12.4e} {:>8.3}%{flag}", n.node, n.op, n.max_abs, 100.0 * n.underflow)?;
    }
    match &r.first_overflow {
        Some(o) if !r.policy.is_mixed() => writeln!(
            out,
            "first overflow: node `{}` reaches {:.4e} > {:.5e}; use mixed-{} (with --keep-f32 where needed) or f32",
            o.node, o.magnitude, r.low_max, r.low
        )?,
        Some(o) => writeln!(
            out,
            "first overflow: node `{}` multiplies `{}`, which reaches {:.4e} > {:.5e}; keep it in f32 with --keep-f32 {}",
            o.node, o.operand, o.magnitude, r.low_max, o.node
        )?,
        None => writeln!(out, "no contraction operand overflows {}", r.low)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_their_units() {
        assert_eq!(parse_bytes("24GiB"), Ok(24 << 30));
        assert_eq!(parse_bytes("512MB"), Ok(512_000_000));
        assert_eq!(parse_bytes("1.5kB"), Ok(1500));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert_eq!(parse_bytes("2 TiB"), Ok(2 << 40));
        assert!(parse_bytes("lots").unwrap_err().contains("expected a size"));
        assert!(parse_bytes("0GB").unwrap_err().contains("expected a size"));
        assert!(parse_bytes("3 bananas").unwrap_err().contains("unknown unit `bananas`"));
    }

    #[test]
    fn bf16_on_a_cpu_without_bf16_instructions_is_noted() {
        assert!(bf16_note(Precision::MixedBf16, &["avx2", "fma"]).unwrap().contains("no bf16 instructions"));
        assert!(bf16_note(Precision::Bf16, &["avx512f"]).is_some());
        assert_eq!(bf16_note(Precision::MixedBf16, &["avx512f", "avx512_bf16"]), None);
        assert_eq!(bf16_note(Precision::MixedBf16, &["amx_bf16"]), None);
        assert_eq!(bf16_note(Precision::F32, &["avx2"]), None);
        assert_eq!(bf16_note(Precision::MixedF16, &["avx2"]), None);
    }

    #[test]
    fn times_read_in_their_unit() {
        assert_eq!(human_seconds(12.34), "12.3 s");
        assert_eq!(human_seconds(0.0456), "45.6 ms");
        assert_eq!(human_seconds(7.8e-6), "7.8 µs");
    }
}
