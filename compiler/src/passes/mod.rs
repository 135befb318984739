//! The pass manager. A pass rewrites a module in place and says whether it
//! changed anything; a pipeline is itself a pass, so pipelines nest; a
//! fixed-point wrapper repeats a pipeline until nothing changes, with a cap.
//!
//! Around every leaf pass the manager applies the aliases the pass set, then
//! (when [`PassContext::verify`] is on, as in tests and debug builds) re-runs
//! the verifier if the pass changed the module — its errors say "after pass
//! X" — and checks that a pass reporting "unchanged" really left the module
//! as it was. It records per-pass statistics and honours print-after,
//! dump-after-each and stop-after.

mod canonicalize;
mod cse;
mod dce;
mod fold_constants;
mod fold_weights;
mod fuse;
mod pattern;
pub mod precision;
pub mod sharding;
mod weight_layout;

use crate::error::Error;
use crate::ir::print::print;
use crate::ir::verify::verify;
use crate::ir::Module;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Whether a pass changed the module.
pub type Changed = bool;

/// One rewrite of a module.
pub trait Pass {
    /// The pass's name, as `--passes`, `--print-after` and `--stop-after` take it.
    fn name(&self) -> &str;
    /// Runs the pass; returns whether it changed the module.
    fn run(&self, m: &mut Module, cx: &mut PassContext) -> Result<Changed, Error>;
}

/// What one leaf pass did.
#[derive(Clone, Debug, PartialEq)]
pub struct PassStat {
    pub pass: String,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub changed: bool,
    pub time: Duration,
}

/// Options and records of one pipeline run.
#[derive(Debug)]
pub struct PassContext {
    /// Verify after every pass that changed the module, and check that passes
    /// reporting no change made none. On in debug builds by default.
    pub verify: bool,
    /// Print the IR to standard error after each pass with one of these names.
    pub print_after: Vec<String>,
    /// Write the IR after each leaf pass to `DIR/NN-pass.ir`.
    pub dump_after_each: Option<PathBuf>,
    /// Stop the pipeline after the first run of the pass with this name.
    pub stop_after: Option<String>,
    /// Statistics of every leaf pass run, in order.
    pub stats: Vec<PassStat>,
    stopped: bool,
}

impl Default for PassContext {
    fn default() -> Self {
        PassContext {
            verify: cfg!(debug_assertions),
            print_after: Vec::new(),
            dump_after_each: None,
            stop_after: None,
            stats: Vec::new(),
            stopped: false,
        }
    }
}

impl PassContext {
    /// A context with the debugging options of the CLI (`--print-after`,
    /// `--dump-after-each`, `--stop-after`); verification as by default.
    pub fn with_debug(print_after: Vec<String>, dump_after_each: Option<PathBuf>, stop_after: Option<String>) -> Self {
        PassContext { print_after, dump_after_each, stop_after, ..PassContext::default() }
    }

    /// A context that neither verifies nor checks passes (release pipelines, benchmarks).
    pub fn without_checks() -> Self {
        PassContext { verify: false, ..PassContext::default() }
    }

    /// True once `stop_after` was reached: the remaining passes do nothing.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

/// A rewrite that can fail (the sharding passes report bad annotations).
type FallibleRewrite = fn(&mut Module) -> Result<Changed, Error>;

/// The rewrite of a leaf pass.
type Rewrite = Box<dyn Fn(&mut Module) -> Result<Changed, Error>>;

/// A leaf pass: a named rewrite function.
struct Leaf {
    name: &'static str,
    run: Rewrite,
}

impl Pass for Leaf {
    fn name(&self) -> &str {
        self.name
    }

    fn run(&self, m: &mut Module, cx: &mut PassContext) -> Result<Changed, Error> {
        if cx.stopped {
            return Ok(false);
        }
        let before = cx.verify.then(|| print(m));
        let nodes_before = m.order().len();
        let start = Instant::now();
        let changed = (self.run)(m)?;
        m.apply_aliases();
        let time = start.elapsed();
        let origin = format!("after pass {}", self.name);
        if let Some(before) = before {
            if changed {
                verify(m, &origin)?;
            } else if print(m) != before {
                return Err(Error::Invalid {
                    origin,
                    diagnostics: vec![crate::Diagnostic::new(
                        "module",
                        "the pass reported no change but changed the module",
                    )],
                });
            }
        }
        cx.stats.push(PassStat { pass: self.name.into(), nodes_before, nodes_after: m.order().len(), changed, time });
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
        Ok(changed)
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
}

impl Pass for Pipeline {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&self, m: &mut Module, cx: &mut PassContext) -> Result<Changed, Error> {
        let mut changed = false;
        for p in &self.passes {
            changed |= p.run(m, cx)?;
        }
        Ok(changed)
    }
}

/// Repeats a pass until it changes nothing, at most `max_iterations` times.
pub struct FixedPoint {
    inner: Box<dyn Pass>,
    max_iterations: usize,
}

/// XLA's cap for its fixed-point pipelines.
pub const DEFAULT_MAX_ITERATIONS: usize = 25;

impl FixedPoint {
    /// Wraps `inner` with the default cap.
    pub fn new(inner: Box<dyn Pass>) -> Self {
        FixedPoint { inner, max_iterations: DEFAULT_MAX_ITERATIONS }
    }
}

impl Pass for FixedPoint {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn run(&self, m: &mut Module, cx: &mut PassContext) -> Result<Changed, Error> {
        let mut changed = false;
        for _ in 0..self.max_iterations {
            if !self.inner.run(m, cx)? || cx.stopped {
                break;
            }
            changed = true;
        }
        Ok(changed)
    }
}

/// Every leaf pass, by name, with what it does.
pub const PASSES: [(&str, &str); 7] = [
    ("canonicalize", "algebraic identities: x+0, x*1, double negation, transpose of transpose, reshape of reshape, no-op casts, broadcasts, slices, pads and concats"),
    ("fold-constants", "computes nodes whose operands are all constants at compile time (results up to 65536 elements)"),
    ("fold-weights", "computes weight-only subgraphs at compile time into new parameters, absorbing per-channel scales and shifts (batch norm) into conv2d and linear; a transpose or float cast of a file weight becomes a view of its tensor, applied while uploading"),
    ("weight-layout", "reads a 2-D file weight that dots contract over its last dimension ([out, in], as PyTorch stores linear layers) transposed, contracting its leading one: XLA's CPU backend runs such dots on XNNPACK, about 2x faster"),
    ("fuse", "rewrites exporters' decomposed softmax, log_softmax, layer_norm, rms_norm, gelu, silu, linear and attention into fused ops"),
    ("cse", "common subexpression elimination: one node per distinct op and operands"),
    ("dce", "dead code elimination: drops nodes no output depends on"),
];

/// The sharding passes, by name, with what they do: run after the
/// optimisation pipeline when the module has a mesh (see [`sharding`]).
pub const SHARDING_PASSES: [(&str, &str); 3] = [
    ("shard-data", "data parallelism: splits the batch dimension (0) of every input over the mesh axis `data`"),
    ("shard-tensor", "Megatron tensor parallelism over the mesh axis `model`: Q/K/V projections and an MLP's first linear split their outputs, the attention output projection and the MLP's last linear their inputs"),
    ("propagate-sharding", "carries sharding annotations forward through elementwise ops, matmuls, reductions, reshapes and transposes"),
];

/// The leaf pass called `name` (an optimisation or a sharding pass).
pub fn pass(name: &str) -> Option<Box<dyn Pass>> {
    let sharding: Option<FallibleRewrite> = match name {
        "shard-data" => Some(sharding::shard_data),
        "shard-tensor" => Some(sharding::shard_tensor),
        "propagate-sharding" => Some(sharding::propagate),
        _ => None,
    };
    if let Some(run) = sharding {
        let name = SHARDING_PASSES.iter().find(|(n, _)| *n == name).map(|(n, _)| *n)?;
        return Some(Box::new(Leaf { name, run: Box::new(run) }));
    }
    let run: fn(&mut Module) -> Changed = match name {
        "canonicalize" => canonicalize::run,
        "cse" => cse::run,
        "dce" => dce::run,
        "fold-constants" => fold_constants::run,
        "fuse" => fuse::run,
        "fold-weights" => fold_weights::run,
        "weight-layout" => weight_layout::run,
        _ => return None,
    };
    let name = PASSES.iter().find(|(n, _)| *n == name).map(|(n, _)| *n)?;
    Some(Box::new(Leaf { name, run: Box::new(move |m| Ok(run(m))) }))
}

/// The mixed-precision pass for `policy` (see [`precision`]), keeping the
/// nodes named in `keep_f32` in f32; `None` for [`precision::Precision::F32`].
pub fn precision_pass(policy: precision::Precision, keep_f32: Vec<String>) -> Option<Box<dyn Pass>> {
    let low = policy.low()?;
    let run: Rewrite = if policy.is_mixed() {
        Box::new(move |m| precision::apply(m, low, &keep_f32))
    } else {
        Box::new(move |m| precision::apply_pure(m, low, &keep_f32))
    };
    Some(Box::new(Leaf { name: if policy.is_mixed() { "mixed-precision" } else { "low-precision" }, run }))
}

/// An optimisation level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptLevel {
    /// No passes: the module as written.
    O0,
    /// One round: canonicalize, fold-constants, weight-layout, fuse, fold-weights, cse, dce.
    O1,
    /// The same passes to a fixed point (the default).
    O2,
}

/// The preset pipeline of `level`.
pub fn preset(level: OptLevel) -> Pipeline {
    let cleanup = || -> Vec<Box<dyn Pass>> {
        ["canonicalize", "fold-constants", "weight-layout", "fuse", "fold-weights", "cse", "dce"]
            .iter()
            .filter_map(|n| pass(n))
            .collect()
    };
    match level {
        OptLevel::O0 => Pipeline::new("O0", vec![]),
        OptLevel::O1 => Pipeline::new("O1", cleanup()),
        OptLevel::O2 => {
            Pipeline::new("O2", vec![Box::new(FixedPoint::new(Box::new(Pipeline::new("cleanup", cleanup()))))])
        }
    }
}

/// What `--shard` asks for: data parallelism, tensor parallelism, or both (2-D).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShardPolicy {
    Data,
    Tensor,
}

/// The sharding pipeline: the `policies`' passes, then propagation.
pub fn sharding_pipeline(policies: &[ShardPolicy]) -> Pipeline {
    let mut names = Vec::new();
    if policies.contains(&ShardPolicy::Data) {
        names.push("shard-data");
    }
    if policies.contains(&ShardPolicy::Tensor) {
        names.push("shard-tensor");
    }
    names.push("propagate-sharding");
    Pipeline::new("sharding", names.iter().filter_map(|n| pass(n)).collect())
}

/// A pipeline of the named leaf passes, in order (`--passes a,b,c`).
pub fn from_names(names: &str) -> Result<Pipeline, String> {
    let passes = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            pass(n).ok_or_else(|| {
                let known: Vec<&str> = PASSES.iter().chain(&SHARDING_PASSES).map(|(n, _)| *n).collect();
                format!("unknown pass `{n}` (passes: {})", known.join(", "))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Pipeline::new(names, passes))
}
