//! The pass manager. A pass rewrites a module in place and returns how many
//! rewrites it made (0: unchanged); a pipeline is itself a pass, so pipelines
//! nest; a fixed-point wrapper repeats a pipeline until nothing changes, with
//! a cap that the statistics report when it is hit.
//!
//! Every leaf pass is declared once, in [`REGISTRY`]: its name, what it does
//! and how to build it. `--passes`, `--print-after` and `--stop-after` look
//! names up there, and an unknown name is an error with a suggestion.
//!
//! Around every leaf pass the manager applies the aliases the pass set and
//! re-runs the verifier if the pass changed the module (its errors say "after
//! pass X"). With [`PassContext::verify_each`] (on in debug builds and tests,
//! and with `--verify-each`) it also checks that a pass reporting no rewrite
//! left the module as it was. It records per-pass statistics and honours
//! print-after, dump-after-each and stop-after.

mod canonicalize;
mod cse;
mod dce;
mod fold_constants;
mod fold_weights;
mod fuse;
mod pattern;
pub mod precision;
mod scale_query;
pub mod sharding;
pub use sharding::ShardPolicy;
mod weight_layout;
pub use weight_layout::F32Layout;

use crate::error::{did_you_mean, Diagnostic, Error};
use crate::ir::print::print;
use crate::ir::verify::verify;
use crate::ir::Module;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How many rewrites a pass made; 0 means the module is unchanged.
pub type Rewrites = usize;

/// One rewrite of a module.
pub trait Pass {
    /// The pass's name, as `--passes`, `--print-after` and `--stop-after` take it.
    fn name(&self) -> &str;
    /// Runs the pass; returns how many rewrites it made.
    fn run(&self, m: &mut Module, cx: &mut PassContext) -> Result<Rewrites, Error>;
}

/// What one leaf pass did.
#[derive(Clone, Debug, PartialEq)]
pub struct PassStat {
    pub pass: String,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub rewrites: Rewrites,
    pub time: Duration,
}

/// Options and records of one pipeline run.
#[derive(Debug)]
pub struct PassContext {
    /// Besides verifying after every pass that changed the module, check
    /// that passes reporting no rewrite made none. On in debug builds by default.
    pub verify_each: bool,
    /// Print the IR to standard error after each pass with one of these names.
    pub print_after: Vec<String>,
    /// Write the IR after each leaf pass to `DIR/NN-pass.ir`.
    pub dump_after_each: Option<PathBuf>,
    /// Stop the pipeline after the first run of the pass with this name.
    pub stop_after: Option<String>,
    /// How products read f32 weights (weight-layout).
    pub f32_layout: F32Layout,
    /// Statistics of every leaf pass run, in order.
    pub stats: Vec<PassStat>,
    /// The fixed points that stopped at their iteration cap while still changing the module.
    pub capped: Vec<String>,
    stopped: bool,
}

impl Default for PassContext {
    fn default() -> Self {
        PassContext {
            verify_each: cfg!(debug_assertions),
            print_after: Vec::new(),
            dump_after_each: None,
            stop_after: None,
            f32_layout: F32Layout::default(),
            stats: Vec::new(),
            capped: Vec::new(),
            stopped: false,
        }
    }
}

impl PassContext {
    /// True once `stop_after` was reached: the remaining passes do nothing.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

/// How a registered pass rewrites a module.
#[derive(Clone, Copy)]
pub enum Rewrite {
    /// A rewrite that cannot fail.
    Total(fn(&mut Module) -> Rewrites),
    /// A rewrite that reports bad input (the sharding passes: a missing mesh axis, a conflict).
    Fallible(fn(&mut Module) -> Result<Rewrites, Error>),
    /// A rewrite steered by the pipeline's options in [`PassContext`] (weight-layout: [`F32Layout`]).
    Steered(fn(&mut Module, &PassContext) -> Rewrites),
    /// A pass built from options, not by name (the precision policies: `--precision`).
    Configured,
}

/// What a pass is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassKind {
    /// Keeps what the module computes (up to rounding) and makes it cheaper: the `-O` presets.
    Optimization,
    /// Annotates how values split over the mesh (`--shard`).
    Sharding,
    /// Changes the dtypes computations run in (`--precision`).
    Precision,
}

/// A registered leaf pass: its name, what it is for and does, and how it rewrites.
pub struct PassInfo {
    pub name: &'static str,
    pub kind: PassKind,
    pub description: &'static str,
    pub rewrite: Rewrite,
}

/// Every leaf pass, declared once: the optimisation passes (in the order of
/// the presets), the sharding passes, then the precision passes.
pub const REGISTRY: &[PassInfo] = &[
    PassInfo {
        name: "canonicalize",
        kind: PassKind::Optimization,
        description: "algebraic identities: x+0, x*1, double negation, transpose of transpose, reshape of reshape, no-op casts, broadcasts, slices, pads and concats",
        rewrite: Rewrite::Total(canonicalize::run),
    },
    PassInfo {
        name: "fold-constants",
        kind: PassKind::Optimization,
        description: "computes nodes whose operands are all constants at compile time (results up to 65536 elements)",
        rewrite: Rewrite::Total(fold_constants::run),
    },
    PassInfo {
        name: "weight-layout",
        kind: PassKind::Optimization,
        description: "reads a 2-D f32 file weight that dots contract over its last dimension ([out, in], as PyTorch stores linear layers) transposed, contracting its leading one (XLA's CPU backend runs such dots on XNNPACK, about 2x faster); a bf16 or f16 weight the other way, [out, in] (widened inside the product, faster at every size measured), and an f32 one too where the pipeline asks for [out, in] f32 weights (generation on a plugin whose one-row products read them faster)",
        rewrite: Rewrite::Steered(weight_layout::run),
    },
    PassInfo {
        name: "fuse",
        kind: PassKind::Optimization,
        description: "rewrites exporters' decomposed softmax, log_softmax, layer_norm, rms_norm, gelu, silu, linear and attention into fused ops",
        rewrite: Rewrite::Total(fuse::run),
    },
    PassInfo {
        name: "scale-query",
        kind: PassKind::Optimization,
        description: "multiplies an f32 attention's query by its scale (the scale becoming 1) where the query is no larger than the scores: XLA fuses the product into the query's producer instead of reading a constant the size of the scores",
        rewrite: Rewrite::Total(scale_query::run),
    },
    PassInfo {
        name: "fold-weights",
        kind: PassKind::Optimization,
        description: "computes weight-only subgraphs at compile time into new parameters, absorbing per-channel scales and shifts (batch norm) into conv2d and linear; a transpose or float cast of a file weight becomes a view of its tensor, applied while uploading",
        rewrite: Rewrite::Total(fold_weights::run),
    },
    PassInfo {
        name: "cse",
        kind: PassKind::Optimization,
        description: "common subexpression elimination: one node per distinct op and operands",
        rewrite: Rewrite::Total(cse::run),
    },
    PassInfo {
        name: "dce",
        kind: PassKind::Optimization,
        description: "dead code elimination: drops nodes no output depends on",
        rewrite: Rewrite::Total(dce::run),
    },
    PassInfo {
        name: "shard-data",
        kind: PassKind::Sharding,
        description: "data parallelism: splits the batch dimension (0) of every input over the mesh axis `data`",
        rewrite: Rewrite::Fallible(sharding::shard_data),
    },
    PassInfo {
        name: "shard-tensor",
        kind: PassKind::Sharding,
        description: "Megatron tensor parallelism over the mesh axis `model`: Q/K/V projections and an MLP's first linear split their outputs, the attention output projection and the MLP's last linear their inputs",
        rewrite: Rewrite::Fallible(sharding::shard_tensor),
    },
    PassInfo {
        name: "propagate-sharding",
        kind: PassKind::Sharding,
        description: "carries sharding annotations forward through elementwise ops, matmuls, reductions, reshapes and transposes",
        rewrite: Rewrite::Fallible(sharding::propagate),
    },
    PassInfo {
        name: MIXED_PRECISION,
        kind: PassKind::Precision,
        description: "--precision mixed-bf16|mixed-f16: contractions (matmul, dot, conv2d, linear, attention) take low-precision operands with f32 accumulation; everything else stays f32",
        rewrite: Rewrite::Configured,
    },
    PassInfo {
        name: LOW_PRECISION,
        kind: PassKind::Precision,
        description: "--precision bf16|f16: every float computation in the low type; outputs cast back to their declared dtypes",
        rewrite: Rewrite::Configured,
    },
];

const MIXED_PRECISION: &str = "mixed-precision";
const LOW_PRECISION: &str = "low-precision";

/// The registered pass called `name`, or an error naming `option` (the
/// flag or field that gave it) with the closest name.
pub fn lookup(name: &str, option: &str) -> Result<&'static PassInfo, Error> {
    REGISTRY.iter().find(|p| p.name == name).ok_or_else(|| Error::Option {
        option: option.into(),
        message: format!(
            "unknown pass `{name}`{} (passes: {})",
            did_you_mean(name, REGISTRY.iter().map(|p| p.name)),
            REGISTRY.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
        ),
    })
}

/// The leaf pass called `name`, built from the registry; `option` names the
/// flag in errors. A pass built from options (`mixed-precision`) is refused.
pub fn pass(name: &str, option: &str) -> Result<Box<dyn Pass>, Error> {
    let info = lookup(name, option)?;
    let run: LeafRewrite = match info.rewrite {
        Rewrite::Total(f) => Box::new(move |m, _| Ok(f(m))),
        Rewrite::Fallible(f) => Box::new(move |m, _| f(m)),
        Rewrite::Steered(f) => Box::new(move |m, cx| Ok(f(m, cx))),
        Rewrite::Configured => {
            return Err(Error::Option {
                option: option.into(),
                message: format!("pass `{name}` is configured by --precision, not run by name"),
            })
        }
    };
    Ok(Box::new(Leaf { name: info.name, run }))
}

/// The rewrite of a leaf pass, given the pipeline's options.
type LeafRewrite = Box<dyn Fn(&mut Module, &PassContext) -> Result<Rewrites, Error>>;

/// A leaf pass: a named rewrite function.
struct Leaf {
    name: &'static str,
    run: LeafRewrite,
}

impl Pass for Leaf {
    fn name(&self) -> &str {
        self.name
    }

    fn run(&self, m: &mut Module, cx: &mut PassContext) -> Result<Rewrites, Error> {
        if cx.stopped {
            return Ok(0);
        }
        let before = cx.verify_each.then(|| print(m));
        let nodes_before = m.order().len();
        let start = Instant::now();
        let rewrites = (self.run)(m, cx)?;
        m.apply_aliases();
        let time = start.elapsed();
        let origin = format!("after pass {}", self.name);
        if rewrites > 0 {
            verify(m, &origin)?;
        } else if before.is_some_and(|before| print(m) != before) {
            return Err(Error::Invalid {
                origin,
                diagnostics: vec![Diagnostic::new("module", "the pass reported no rewrite but changed the module")],
            });
        }
        cx.stats.push(PassStat { pass: self.name.into(), nodes_before, nodes_after: m.order().len(), rewrites, time });
        if cx.print_after.iter().any(|p| p == self.name) {
            eprintln!("// IR after pass {}\n{}", self.name, print(m));
        }
        if let Some(dir) = &cx.dump_after_each {
            let path = dir.join(format!("{:02}-{}.ir", cx.stats.len(), self.name));
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&path, print(m)))
                .map_err(|source| Error::Read { path, source })?;
        }
        if cx.stop_after.as_deref() == Some(self.name) {
            cx.stopped = true;
        }
        Ok(rewrites)
    }
}

/// Passes run in sequence.
pub struct Pipeline {
    name: String,
    passes: Vec<Box<dyn Pass>>,
}

impl Pipeline {
    /// A pipeline of `passes`.
    pub fn new(name: impl Into<String>, passes: Vec<Box<dyn Pass>>) -> Self {
        Pipeline { name: name.into(), passes }
    }

    /// A pipeline of the named leaf passes, in order (`--passes a,b,c`);
    /// `option` names the flag in errors.
    pub fn from_names(names: &[String], option: &str) -> Result<Pipeline, Error> {
        let passes = names.iter().map(|n| pass(n, option)).collect::<Result<Vec<_>, _>>()?;
        Ok(Pipeline::new(names.join(","), passes))
    }
}

impl Pass for Pipeline {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&self, m: &mut Module, cx: &mut PassContext) -> Result<Rewrites, Error> {
        let mut rewrites = 0;
        for p in &self.passes {
            rewrites += p.run(m, cx)?;
        }
        Ok(rewrites)
    }
}

/// Repeats a pass until it changes nothing, at most `max_iterations` times;
/// stopping at the cap while the pass still changes the module is recorded
/// in [`PassContext::capped`].
pub struct FixedPoint {
    inner: Box<dyn Pass>,
    max_iterations: usize,
}

/// XLA's cap for its fixed-point pipelines.
pub const DEFAULT_MAX_ITERATIONS: usize = 25;

impl FixedPoint {
    /// Wraps `inner` with the default cap.
    pub fn new(inner: Box<dyn Pass>) -> Self {
        FixedPoint::with_cap(inner, DEFAULT_MAX_ITERATIONS)
    }

    /// Wraps `inner`, running it at most `max_iterations` times.
    pub fn with_cap(inner: Box<dyn Pass>, max_iterations: usize) -> Self {
        FixedPoint { inner, max_iterations }
    }
}

impl Pass for FixedPoint {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn run(&self, m: &mut Module, cx: &mut PassContext) -> Result<Rewrites, Error> {
        let mut rewrites = 0;
        for _ in 0..self.max_iterations {
            let r = self.inner.run(m, cx)?;
            rewrites += r;
            if r == 0 || cx.stopped {
                return Ok(rewrites);
            }
        }
        cx.capped.push(format!("{} (cap {} iterations)", self.inner.name(), self.max_iterations));
        Ok(rewrites)
    }
}

/// The precision pass for `policy` (see [`precision`]), keeping the nodes
/// named in `keep_f32` in f32; `None` for [`precision::Precision::F32`].
pub fn precision_pass(policy: precision::Precision, keep_f32: Vec<String>) -> Option<Box<dyn Pass>> {
    let low = policy.low()?;
    let run: LeafRewrite = if policy.is_mixed() {
        Box::new(move |m, _| precision::apply(m, low, &keep_f32))
    } else {
        Box::new(move |m, _| precision::apply_pure(m, low, &keep_f32))
    };
    Some(Box::new(Leaf { name: if policy.is_mixed() { MIXED_PRECISION } else { LOW_PRECISION }, run }))
}

/// An optimisation level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OptLevel {
    /// No passes: the module as written.
    O0,
    /// One round of the optimisation passes: canonicalize, fold-constants,
    /// weight-layout, fuse, scale-query, fold-weights, cse, dce.
    O1,
    /// The same passes to a fixed point (the default).
    #[default]
    O2,
}

/// The preset pipeline of `level`: every optimisation pass, in registry order.
pub fn preset(level: OptLevel) -> Pipeline {
    let cleanup = || {
        let names: Vec<String> =
            REGISTRY.iter().filter(|p| p.kind == PassKind::Optimization).map(|p| p.name.to_string()).collect();
        let mut p = Pipeline::from_names(&names, "preset").expect("registered passes build");
        p.name = "cleanup".into();
        p
    };
    match level {
        OptLevel::O0 => Pipeline::new("O0", vec![]),
        OptLevel::O1 => Pipeline::new("O1", cleanup().passes),
        OptLevel::O2 => Pipeline::new("O2", vec![Box::new(FixedPoint::new(Box::new(cleanup())))]),
    }
}

/// The sharding pipeline: the `policies`' passes, then propagation.
pub fn sharding_pipeline(policies: &[ShardPolicy]) -> Pipeline {
    let mut names = Vec::new();
    if policies.contains(&ShardPolicy::Data) {
        names.push("shard-data".to_string());
    }
    if policies.contains(&ShardPolicy::Tensor) {
        names.push("shard-tensor".to_string());
    }
    names.push("propagate-sharding".to_string());
    let mut p = Pipeline::from_names(&names, "--shard").expect("the sharding passes are registered");
    p.name = "sharding".into();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pass that always reports a rewrite without changing anything.
    struct Restless;

    impl Pass for Restless {
        fn name(&self) -> &str {
            "restless"
        }

        fn run(&self, _: &mut Module, _: &mut PassContext) -> Result<Rewrites, Error> {
            Ok(1)
        }
    }

    #[test]
    fn a_fixed_point_at_its_cap_says_so() {
        let mut cx = PassContext::default();
        let rewrites = FixedPoint::with_cap(Box::new(Restless), 3).run(&mut Module::new("m"), &mut cx).unwrap();
        assert_eq!((rewrites, cx.capped.as_slice()), (3, &["restless (cap 3 iterations)".to_string()][..]));
        let mut cx = PassContext::default();
        preset(OptLevel::O2).run(&mut Module::new("m"), &mut cx).unwrap();
        assert!(cx.capped.is_empty(), "an empty module converges at once");
    }

    #[test]
    fn unknown_passes_are_errors_with_a_suggestion() {
        let e = pass("cs", "--passes").err().unwrap().to_string();
        assert!(e.starts_with("--passes: unknown pass `cs`; did you mean `cse`?"), "{e}");
        assert!(e.contains("propagate-sharding") && e.contains("mixed-precision"), "{e}");
        let e = pass("mixed-precision", "--passes").err().unwrap().to_string();
        assert!(e.contains("configured by --precision"), "{e}");
    }

    #[test]
    fn every_registered_name_is_unique() {
        let mut names: Vec<&str> = REGISTRY.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
    }
}
