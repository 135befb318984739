//! The compiler's one pipeline: every way in (model.json, IR text, a Hugging
//! Face checkpoint) runs the same stages in the same order, configured by one
//! [`Options`] value, and can stop after any stage or pass.
//!
//! ```text
//! load ─▶ verify ─▶ grad ─▶ optimize ─▶ precision ─▶ shard ─▶ lower
//! ```
//!
//! - **load**: read the model, bind its shape symbols, build the IR (every
//!   name, attribute, type and weight checked);
//! - **verify**: the verifier on the built module;
//! - **grad**: with [`Options::grad`], the gradient program (reverse-mode
//!   autodiff, [`crate::autodiff`]): the loss's gradients become outputs;
//! - **optimize**: the `-O` preset or the `--passes` list;
//! - **precision**: the `--precision` policy, then the optimisation again
//!   (folding the new weight casts into views);
//! - **shard**: the `--shard` policies and propagation, when there is a mesh
//!   (a training step's inputs split by their role, [`crate::train::shard`]);
//! - **lower**: StableHLO text.
//!
//! The CLI, the driver library and the tests all compile through [`compile`];
//! a pipeline-parallel training step, several programs per stage, through
//! [`compile_staged`] (the same stages, the grad stage building the staged
//! step and the later ones run on each of its programs).

use crate::autodiff::{grad, GradOptions};
use crate::backend::stablehlo::{lower_with, Lowered, WholeWidening};
use crate::error::{did_you_mean, Diagnostic, Error};
use crate::frontend::hf::{self, ImportOptions};
use crate::frontend::json::{Bindings, ModelFile};
use crate::frontend::onnx;
use crate::frontend::text;
use crate::ir::sharding::Mesh;
use crate::ir::verify::verify;
use crate::ir::Module;
use crate::passes::precision::Precision;
use crate::passes::{
    self, preset, sharding_pipeline, F32Layout, OptLevel, Pass, PassContext, PassStat, Pipeline, ShardPolicy,
};
use crate::train::lora::LoraSite;
use crate::train::shard::{shard_stage_program, shard_step};
use crate::train::staged::{staged_step, StagedStep};
use crate::train::{eval_step, train_step, StepArg, TrainConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A stage of the pipeline, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Load,
    Verify,
    Grad,
    Optimize,
    Precision,
    Shard,
    Lower,
}

impl Stage {
    /// Every stage, in the order they run.
    pub const ALL: [Stage; 7] =
        [Stage::Load, Stage::Verify, Stage::Grad, Stage::Optimize, Stage::Precision, Stage::Shard, Stage::Lower];

    /// The stage's name, as `--stop-after` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Load => "load",
            Stage::Verify => "verify",
            Stage::Grad => "grad",
            Stage::Optimize => "optimize",
            Stage::Precision => "precision",
            Stage::Shard => "shard",
            Stage::Lower => "lower",
        }
    }
}

/// Where `--stop-after` stops: after a stage, or after the first run of a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopAfter {
    Stage(Stage),
    Pass(String),
}

impl StopAfter {
    /// A stage name or a registered pass name; anything else is an error
    /// naming `--stop-after`, with the closest name.
    pub fn parse(name: &str) -> Result<StopAfter, Error> {
        if let Some(s) = Stage::ALL.into_iter().find(|s| s.name() == name) {
            return Ok(StopAfter::Stage(s));
        }
        if passes::REGISTRY.iter().any(|p| p.name == name) {
            return Ok(StopAfter::Pass(name.into()));
        }
        let names: Vec<&str> =
            Stage::ALL.iter().map(|s| s.name()).chain(passes::REGISTRY.iter().map(|p| p.name)).collect();
        Err(Error::Option {
            option: "--stop-after".into(),
            message: format!(
                "unknown stage or pass `{name}`{} (stages: {}; passes: {})",
                did_you_mean(name, names.iter().copied()),
                names[..Stage::ALL.len()].join(", "),
                names[Stage::ALL.len()..].join(", ")
            ),
        })
    }
}

/// Debugging options of the pass manager.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DebugOptions {
    /// Print the IR to standard error after each run of these passes.
    pub print_after: Vec<String>,
    /// Write the IR after each pass to `DIR/NN-pass.ir`.
    pub dump_after_each: Option<PathBuf>,
    /// Stop after a stage or the first run of a pass.
    pub stop_after: Option<StopAfter>,
    /// Also check, after every pass, that a pass reporting no rewrite made
    /// none (always on in debug builds).
    pub verify_each: bool,
}

/// Everything that decides what a model compiles to.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Values of the shape symbols (`batch = 8`); completed from the shapes of given inputs.
    pub bindings: Bindings,
    /// The optimisation preset, unless `passes` names the passes.
    pub level: OptLevel,
    /// Exactly these leaf passes, in order, instead of the preset.
    pub passes: Option<Vec<String>>,
    /// The precision policy and the nodes it keeps in f32.
    pub precision: Precision,
    pub keep_f32: Vec<String>,
    /// How products read f32 weights (the weight-layout pass).
    pub f32_layout: F32Layout,
    /// How products of many rows read a matrix they widen whole (the lowering).
    pub whole_widening: WholeWidening,
    /// A device mesh replacing the model's own, and the sharding policies.
    pub mesh: Option<Mesh>,
    pub policies: Vec<ShardPolicy>,
    /// How a Hugging Face checkpoint directory is imported.
    pub import: ImportOptions,
    /// For an ONNX model: values of inputs, by name, that its import may fix
    /// where it needs one at compile time (axes, a shape or pads given as an
    /// input); the program is then compiled for these values.
    pub onnx_values: BTreeMap<String, onnx::TensorFile>,
    /// Differentiate the model: its loss's gradients become outputs (the grad stage).
    pub grad: Option<GradOptions>,
    /// Build the model's training step instead (the grad stage): loss,
    /// gradients, clipping, schedule and optimizer update in one program.
    pub train: Option<TrainConfig>,
    /// Build the evaluation of the training step instead (the grad stage):
    /// the loss's sums, and the correct count for class labels.
    pub eval: Option<TrainConfig>,
    pub debug: DebugOptions,
}

impl Options {
    /// Options at `level` with `bindings`, everything else by default.
    pub fn at(level: OptLevel, bindings: Bindings) -> Options {
        Options { level, bindings, ..Options::default() }
    }

    /// Checks the names the options give (passes, print-after) and the
    /// combinations they make, before anything is read.
    pub fn check(&self) -> Result<(), Error> {
        for name in &self.debug.print_after {
            passes::lookup(name, "--print-after")?;
        }
        if let Some(StopAfter::Pass(name)) = &self.debug.stop_after {
            passes::lookup(name, "--stop-after")?;
        }
        if !self.keep_f32.is_empty() && self.precision.low().is_none() {
            return Err(Error::Option {
                option: "--keep-f32".into(),
                message: "needs a mixed --precision (mixed-bf16 or mixed-f16)".into(),
            });
        }
        self.optimization().map(drop)
    }

    /// The optimisation pipeline: the `--passes` list or the preset.
    fn optimization(&self) -> Result<Pipeline, Error> {
        match &self.passes {
            Some(names) => Pipeline::from_names(names, "--passes"),
            None => Ok(preset(self.level)),
        }
    }

    fn stops_after(&self, stage: Stage) -> bool {
        self.debug.stop_after == Some(StopAfter::Stage(stage))
    }
}

/// A compiled model: the IR after the last stage that ran and, unless the
/// pipeline stopped before it, its lowering.
#[derive(Debug)]
pub struct Compiled {
    pub path: PathBuf,
    /// The symbol values used, including those taken from given inputs' shapes.
    pub bindings: Bindings,
    pub module: Module,
    /// `None` when `--stop-after` stopped before the lower stage.
    pub lowered: Option<Lowered>,
    /// Every leaf pass run, in order.
    pub stats: Vec<PassStat>,
    /// The fixed points that stopped at their cap while still changing the module.
    pub capped: Vec<String>,
    /// The last stage that ran.
    pub last_stage: Stage,
    /// For a training step: how each input is fed.
    pub step_args: Option<Vec<StepArg>>,
    /// For a training step with LoRA: the adapted layers.
    pub lora: Vec<LoraSite>,
}

/// Reads the model at `path` (model.json, IR text from a `.ir` file, or a
/// Hugging Face checkpoint directory) and runs the stages as `options` say.
/// `shapes` are the shapes of inputs given by the caller; they bind symbols
/// that `options.bindings` leaves open.
pub fn compile(path: &Path, shapes: &BTreeMap<String, Vec<u64>>, options: &Options) -> Result<Compiled, Error> {
    options.check()?;
    let (module, bindings) = load(path, shapes, options)?;
    run_stages(path, module, bindings, options)
}

/// Runs the stages after loading on `module`, built in memory (a program the
/// driver makes itself, as a generation's cache compaction), as [`compile`]
/// runs them on a model it reads; `origin` names it in messages.
pub fn compile_module(origin: &Path, module: Module, options: &Options) -> Result<Compiled, Error> {
    options.check()?;
    run_stages(origin, module, Bindings::new(), options)
}

fn run_stages(path: &Path, module: Module, bindings: Bindings, options: &Options) -> Result<Compiled, Error> {
    let mut c = Compiled {
        path: path.into(),
        bindings,
        module,
        lowered: None,
        stats: Vec::new(),
        capped: Vec::new(),
        last_stage: Stage::Load,
        step_args: None,
        lora: Vec::new(),
    };
    let mut cx = PassContext::default();
    cx.f32_layout = options.f32_layout;
    cx.verify_each |= options.debug.verify_each;
    cx.print_after.clone_from(&options.debug.print_after);
    cx.dump_after_each.clone_from(&options.debug.dump_after_each);
    if let Some(StopAfter::Pass(p)) = &options.debug.stop_after {
        cx.stop_after = Some(p.clone());
    }
    for stage in &Stage::ALL[1..] {
        if options.stops_after(c.last_stage) {
            break;
        }
        run_stage(*stage, &mut c, options, &mut cx)?;
        c.last_stage = *stage;
    }
    c.stats = cx.stats;
    c.capped = cx.capped;
    Ok(c)
}

fn run_stage(stage: Stage, c: &mut Compiled, options: &Options, cx: &mut PassContext) -> Result<(), Error> {
    let m = &mut c.module;
    match stage {
        Stage::Load => unreachable!("the pipeline starts with a loaded module"),
        Stage::Verify => verify(m, &c.path.display().to_string())?,
        Stage::Grad => {
            if let Some(t) = &options.train {
                let step = train_step(m, t)?;
                *m = step.module;
                c.step_args = Some(step.args);
                c.lora = step.lora;
            } else if let Some(t) = &options.eval {
                let step = eval_step(m, t)?;
                *m = step.module;
                c.step_args = Some(step.args);
                c.lora = step.lora;
            } else if let Some(g) = &options.grad {
                *m = grad(m, g)?;
            }
        }
        Stage::Optimize => optimize(m, options, cx)?,
        Stage::Precision => cast(m, options, cx)?,
        Stage::Shard => match (&c.step_args, options.train.as_ref().or(options.eval.as_ref())) {
            // A step's inputs are split by their role: batches, weights, optimizer state.
            (Some(args), Some(config)) if m.mesh.is_some() => {
                shard_step(m, args, &c.lora, &options.policies, config.zero)?;
            }
            _ if m.mesh.is_some() || !options.policies.is_empty() => {
                sharding_pipeline(&options.policies).run(m, cx)?;
            }
            _ => {}
        },
        Stage::Lower => c.lowered = Some(lower_with(m, options.whole_widening)),
    }
    Ok(())
}

/// The optimize stage.
fn optimize(m: &mut Module, options: &Options, cx: &mut PassContext) -> Result<(), Error> {
    options.optimization()?.run(m, cx).map(drop)
}

/// The precision stage.
fn cast(m: &mut Module, options: &Options, cx: &mut PassContext) -> Result<(), Error> {
    match passes::precision_pass(options.precision, options.keep_f32.clone()) {
        Some(p) => Pipeline::new("precision", vec![p, Box::new(options.optimization()?)]).run(m, cx).map(drop),
        None => Ok(()),
    }
}

/// A training step cut into pipeline stages ([`staged_step`]), its
/// programs optimized, cast by the precision policy and lowered:
/// `lowered[s]` holds stage `s`'s, in the order of [`StageStep::programs`](crate::train::staged::StageStep::programs).
#[derive(Debug)]
pub struct CompiledStages {
    pub path: PathBuf,
    pub bindings: Bindings,
    pub step: StagedStep,
    pub lowered: Vec<Vec<Lowered>>,
}

/// Reads the model at `path` as [`compile`] does and builds its training
/// step (`options.train`) cut into `count` pipeline stages, before the nodes
/// named in `starts` (else balanced).
pub fn compile_staged(
    path: &Path,
    shapes: &BTreeMap<String, Vec<u64>>,
    options: &Options,
    count: usize,
    starts: &[String],
) -> Result<CompiledStages, Error> {
    options.check()?;
    let Some(config) = &options.train else {
        return Err(Error::Option { option: "--pipeline".into(), message: "a staged step is a training step".into() });
    };
    if options.debug.stop_after.is_some() {
        return Err(Error::Option {
            option: "--stop-after".into(),
            message: "a pipelined training step (--pipeline) is several programs: compile it whole".into(),
        });
    }
    if options.policies.iter().any(|p| *p != ShardPolicy::Data) {
        return Err(Error::Option {
            option: "--shard".into(),
            message: "a pipeline's stages split their micro-batches over `data` only".into(),
        });
    }
    let (module, bindings) = load(path, shapes, options)?;
    verify(&module, &path.display().to_string())?;
    let mut step = staged_step(&module, config, count, starts)?;
    let mut cx = PassContext::default();
    cx.f32_layout = options.f32_layout;
    cx.verify_each |= options.debug.verify_each;
    let mut lowered = Vec::with_capacity(step.stages.len());
    let StagedStep { stages, args, .. } = &mut step;
    for stage in stages {
        let mut each = Vec::with_capacity(4);
        for program in stage.programs_mut() {
            optimize(&mut program.module, options, &mut cx)?;
            cast(&mut program.module, options, &mut cx)?;
            if let Some(mesh) = &options.mesh {
                shard_stage_program(&mut program.module, &program.feeds, args, mesh)?;
            }
            each.push(lower_with(&program.module, options.whole_widening));
        }
        lowered.push(each);
    }
    Ok(CompiledStages { path: path.into(), bindings, step, lowered })
}

/// The load stage: the module with its symbols bound, and the bindings used.
fn load(path: &Path, shapes: &BTreeMap<String, Vec<u64>>, options: &Options) -> Result<(Module, Bindings), Error> {
    if path.extension().is_some_and(|e| e == "xlac") {
        return Err(Error::Unsupported {
            origin: path.display().to_string(),
            diagnostics: vec![Diagnostic::new(
                "file",
                "an .xlac artifact is a model compiled already: `xlac run` runs it; this command \
                 needs the model it was compiled from (model.json, IR text, a checkpoint directory or an .onnx file)",
            )],
        });
    }
    if path.extension().is_some_and(|e| e == "ir") {
        // IR text (as --dump-after-each writes it): shapes are concrete.
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
        if let Some(sym) = options.bindings.keys().next() {
            return Err(Error::Option {
                option: format!("--bind {sym}"),
                message: format!("{}: IR text has concrete shapes; --bind does not apply", path.display()),
            });
        }
        let mut module = text::parse(&text, path)?;
        if let Some(mesh) = &options.mesh {
            module.mesh = Some(mesh.clone());
        }
        return Ok((module, Bindings::new()));
    }
    let onnx = onnx::is_onnx(path);
    let mut file = if hf::is_checkpoint(path) {
        hf::load(path, &options.import)?
    } else if onnx {
        onnx::load(path, &options.bindings, shapes, &options.onnx_values)?
    } else {
        ModelFile::load(path)?
    };
    if let Some(mesh) = &options.mesh {
        file.set_mesh(mesh.clone());
    }
    // An ONNX model is imported with the bindings substituted: the symbols left are unbound.
    let bound = if onnx { Bindings::new() } else { options.bindings.clone() };
    let mut bindings = file.bind_from_shapes(&bound, shapes)?;
    let module = file.build(&bindings)?;
    if onnx {
        bindings.extend(options.bindings.iter().map(|(k, v)| (k.clone(), *v)));
    }
    Ok((module, bindings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_after_takes_stages_and_passes_and_suggests() {
        assert_eq!(StopAfter::parse("optimize").unwrap(), StopAfter::Stage(Stage::Optimize));
        assert_eq!(StopAfter::parse("cse").unwrap(), StopAfter::Pass("cse".into()));
        let e = StopAfter::parse("optimise").unwrap_err().to_string();
        assert!(e.starts_with("--stop-after: unknown stage or pass `optimise`; did you mean `optimize`?"), "{e}");
    }

    #[test]
    fn options_are_checked_before_reading() {
        let bad = Options { passes: Some(vec!["dce".into(), "fusee".into()]), ..Options::default() };
        let e = compile(Path::new("does/not/exist.json"), &BTreeMap::new(), &bad).unwrap_err().to_string();
        assert!(e.contains("--passes: unknown pass `fusee`; did you mean `fuse`?"), "{e}");
        let keep = Options { keep_f32: vec!["n".into()], ..Options::default() };
        assert!(keep.check().unwrap_err().to_string().contains("needs a mixed --precision"));
    }
}
