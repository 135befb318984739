//! Which of several installed CPU plugins is fastest on this machine, for
//! each kind of work ([`Workload`]): each is timed on programs shaped as a
//! BERT-base layer's work at 128 tokens (a feed-forward matrix product, and
//! attention as xlac lowers it: two batched products around a softmax), at batch 1 and
//! at batch 8, in f32 and with bf16 operands (the plugins rank differently
//! by the products' rows and type: docs/benchmarks.md); and on a decode
//! step's product of one row by an int8 matrix widened as it is read (with
//! whether the compiled program holds the whole widened matrix); the
//! result is remembered in the cache directory (`plugins.json`) with the CPU
//! model and the plugin files it holds for. Each probe's result is checked
//! against the host's arithmetic, and one more program is run for its check
//! alone (a known defect's shape, [`crate::workarounds`]): a plugin that
//! computes wrongly is never chosen. [`find`] times them on first use (or
//! after the CPU or a plugin changed) and uses the fastest; `xlac devices
//! --calibrate` measures again.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::executable::Executable;
use crate::host::{HostTensor, TensorSpec};
use crate::pjrt::client::{Client, ClientOptions};
use crate::pjrt::plugin::{self, Platform, Plugin};
use crate::program::Program;
use crate::sharding::ShardedBuffer;
use crate::DType;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The plugin library to use: the one the user chose (`--plugin`, then
/// `XLAC_PJRT_PLUGIN`: [`plugin::chosen`]; then the configuration file's
/// `plugin`: [`crate::config`]); else, of several CPU plugins installed,
/// the fastest on this machine, by the calibration remembered in the
/// default cache directory, or by one run now (then remembered: see
/// [`choose_noting`]); else the first found ([`plugin::find`]). Without a
/// cache directory to remember a calibration in, or when no plugin can run
/// the probes, the first found. Of several calibrated, the fastest at
/// `workload` (an artifact's: [`crate::Artifact::workload`]).
pub fn find(platform: Platform, explicit: Option<&Path>, workload: Workload) -> Result<PathBuf> {
    Ok(choose_noting(platform, explicit, |_| {})?.of(workload).to_path_buf())
}

/// What a program's time goes to, as far as the choice of a CPU plugin is
/// concerned: the installed plugins can rank the other way round on these
/// (on a 2-core AVX-512 EPYC, the 0.81 build ran a product of 128 rows 20%
/// faster than the 0.115 build, and one of 1024 rows 12% slower in f32 and
/// 37% slower with bf16 operands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Matrix products of f32 operands with few rows: a forward pass over
    /// one sequence of 128 tokens, a decode step.
    Dense,
    /// Matrix products of f32 operands with many rows: batched forward
    /// passes (8 sequences of 128 tokens), training steps.
    DenseBatched,
    /// Matrix products of bf16 or f16 operands (a mixed precision) with few rows.
    Mixed,
    /// Matrix products of bf16 or f16 operands with many rows.
    MixedBatched,
    /// Products of one row by an int8, int4 or 16-bit matrix widened to f32
    /// as it is read: the decode step of a quantized or mixed-precision
    /// model. XLA's 0.81 plugin widens inside the product; newer builds
    /// (0.115) widen the whole matrix into a buffer first, every step, which
    /// made a Llama-shaped int8 decode 8.6× slower (docs/benchmarks.md).
    Widening,
}

/// The rows from which a product counts as batched: between the probes'
/// 128 (one sequence) and 1024 (eight).
const BATCHED_ROWS: u64 = 384;

impl Workload {
    /// Every workload, in the order [`Times`] and [`Choice`] hold them.
    pub const ALL: [Workload; 5] =
        [Workload::Dense, Workload::DenseBatched, Workload::Mixed, Workload::MixedBatched, Workload::Widening];

    /// The workload of a program whose largest matrix product has `rows`
    /// rows (its result's elements over its last dimension), with 16-bit
    /// float operands when `low_precision`.
    pub fn of_products(rows: u64, low_precision: bool) -> Workload {
        match (rows >= BATCHED_ROWS, low_precision) {
            (false, false) => Workload::Dense,
            (true, false) => Workload::DenseBatched,
            (false, true) => Workload::Mixed,
            (true, true) => Workload::MixedBatched,
        }
    }

    /// Its position in [`Workload::ALL`].
    fn index(self) -> usize {
        self as usize
    }

    /// Its name, as `xlac devices` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Dense => "dense",
            Workload::DenseBatched => "dense batched",
            Workload::Mixed => "bf16",
            Workload::MixedBatched => "bf16 batched",
            Workload::Widening => "widening int8",
        }
    }

    /// The workload named `name` ([`Workload::name`]).
    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// What it is used for, as `xlac devices` says where its plugin is not the default's.
    pub fn used_for(self) -> &'static str {
        match self {
            Workload::Dense => "for f32 programs",
            Workload::DenseBatched => "for f32 programs with batched products (384 rows or more)",
            Workload::Mixed => "for mixed-precision programs (bf16 or f16 products)",
            Workload::MixedBatched => "for mixed-precision programs with batched products (384 rows or more)",
            Workload::Widening => "to generate with int8, int4 or 16-bit weights: faster at widening them",
        }
    }

    /// Its time's key in `plugins.json`.
    fn key(self) -> &'static str {
        match self {
            Workload::Dense => "seconds",
            Workload::DenseBatched => "batched_seconds",
            Workload::Mixed => "bf16_seconds",
            Workload::MixedBatched => "bf16_batched_seconds",
            Workload::Widening => "widening_seconds",
        }
    }
}

/// The plugin to use for each [`Workload`]: the same one where the user
/// chose it, where one plugin is installed, or where no calibration could run.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    paths: [PathBuf; Workload::ALL.len()],
    calibration: Option<Calibration>,
}

impl Choice {
    /// One plugin for every workload.
    fn only(path: PathBuf) -> Choice {
        Choice { paths: Workload::ALL.map(|_| path.clone()), calibration: None }
    }

    /// The plugin for `workload`.
    pub fn of(&self, workload: Workload) -> &Path {
        &self.paths[workload.index()]
    }

    /// The calibration the choice was made by, as read or run for it; none
    /// where the user chose the plugin or one plugin is installed.
    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }
}

/// The plugin for each workload, by [`find`]'s rules, the calibration read
/// (or run) at most once; `timing` is called with the installed CPU plugins
/// just before they are timed (on first use, or after the CPU or a plugin
/// changed), so that a caller can say why it waits.
pub fn choose_noting(platform: Platform, explicit: Option<&Path>, timing: impl FnOnce(&[PathBuf])) -> Result<Choice> {
    if plugin::chosen(explicit).is_some() {
        return plugin::find(platform, explicit).map(Choice::only);
    }
    if let Some(configured) = Config::load()?.plugin {
        return plugin::find(platform, Some(&configured)).map(Choice::only);
    }
    let candidates = plugin::find_all(platform);
    if platform == Platform::Cpu && candidates.len() > 1 {
        let dir = crate::cache::disk::default_dir();
        if let Some(calibration) = dir.map(|dir| calibrated(&candidates, &dir, timing)) {
            let fastest: Option<Vec<PathBuf>> =
                Workload::ALL.iter().map(|&w| calibration.fastest(w).map(Path::to_path_buf)).collect();
            if let Some(paths) = fastest.and_then(|f| f.try_into().ok()) {
                return Ok(Choice { paths, calibration: Some(calibration) });
            }
        }
    }
    match candidates.into_iter().next() {
        Some(first) => Ok(Choice::only(first)),
        // None installed: plugin::find's error says where it looked.
        None => plugin::find(platform, None).map(Choice::only),
    }
}

/// The calibration of `candidates` remembered in `dir`, or one run now
/// (announced to `timing`), remembered there (if it can be written).
fn calibrated(candidates: &[PathBuf], dir: &Path, timing: impl FnOnce(&[PathBuf])) -> Calibration {
    match Calibration::load(dir).filter(|c| c.holds_for(candidates)) {
        Some(c) => c,
        None => {
            timing(candidates);
            let c = Calibration::run(candidates);
            // Unwritable: used for this run, timed again on the next.
            let _ = c.save(dir);
            c
        }
    }
}

/// Finds (see [`find`]) and loads the plugin to use for `workload`.
pub fn discover(platform: Platform, explicit: Option<&Path>, workload: Workload) -> Result<Plugin> {
    Plugin::load(&find(platform, explicit, workload)?)
}

/// The file, in the cache directory, that remembers a calibration.
const FILE: &str = "plugins.json";

/// The probes' version, remembered with their times: a calibration timed
/// on other probes is timed again (2: attention with xlac's softmax, where
/// version 1 had an exponential alone; 3: the results' copy to the host
/// left out of the times).
const PROBES_VERSION: u64 = 3;

/// One plugin's measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub path: PathBuf,
    /// The library's size and modification time (seconds since the epoch):
    /// a reinstalled plugin is measured again.
    pub bytes: u64,
    pub modified: u64,
    /// Its times; `None` when the plugin could not load or run the probes,
    /// or gave a wrong result on one.
    pub times: Option<Times>,
    /// Why it has no times, when it has none.
    pub failure: Option<String>,
}

/// A plugin's times on the probes of each [`Workload`]: each probe's fastest
/// run, summed over the workload's probes; and whether its compiled widening
/// probe holds the whole widened matrix as a temporary (XLA's memory
/// statistics: a fact of the program, where a time taken on a busy machine
/// can rank the plugins the other way round).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Times {
    /// Seconds per workload, in [`Workload::ALL`]'s order.
    pub seconds: [f64; Workload::ALL.len()],
    pub widens_whole: bool,
}

impl Times {
    /// Times of `seconds(workload)` for each workload.
    pub fn from_fn(seconds: impl Fn(Workload) -> f64, widens_whole: bool) -> Times {
        Times { seconds: Workload::ALL.map(seconds), widens_whole }
    }

    /// The time for `workload`.
    pub fn of(&self, workload: Workload) -> f64 {
        self.seconds[workload.index()]
    }
}

/// A calibration: the CPU it ran on and each plugin's times.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    pub cpu: String,
    pub plugins: Vec<Measured>,
}

/// The host CPU's identity for a calibration: its model and extensions.
fn cpu() -> String {
    crate::cpu::describe()
        .map_or_else(|| "unknown CPU".into(), |(model, features)| format!("{model} ({})", features.join(" ")))
}

/// A plugin file's size and modification time.
fn stamp(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some((meta.len(), modified))
}

impl Calibration {
    /// Times each plugin of `candidates` (loading each in this process; their
    /// runs interleaved: [`time_probes`]); one that cannot load or run the
    /// probes, or gives a wrong result on one (checked against the host's),
    /// is recorded without a time, and why.
    pub fn run(candidates: &[PathBuf]) -> Calibration {
        let plugins = candidates
            .iter()
            .zip(time_probes(candidates))
            .map(|(path, timed)| {
                let (bytes, modified) = stamp(path).unwrap_or_default();
                let (times, failure) = match timed {
                    Ok(times) => (Some(times), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                Measured { path: path.clone(), bytes, modified, times, failure }
            })
            .collect();
        Calibration { cpu: cpu(), plugins }
    }

    /// The calibration remembered in `dir`, if there is a readable one (one
    /// written before the widening, batched or bf16 probes, before the
    /// probes' results were checked, on other probes than this xlac's
    /// ([`PROBES_VERSION`]) or under other plugin workarounds, is not: it is
    /// timed again).
    pub fn load(dir: &Path) -> Option<Calibration> {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(FILE)).ok()?).ok()?;
        if v["probes"].as_u64()? != PROBES_VERSION
            || v["workarounds"].as_str()? != crate::workarounds::known_signature()
        {
            return None;
        }
        let plugins = v["plugins"].as_array()?.iter().map(|m| {
            let seconds = Workload::ALL.iter().map(|w| m.get(w.key())).collect::<Option<Vec<_>>>()?;
            let whole = m.get("widens_whole")?;
            let times = match (seconds.iter().map(|s| s.as_f64()).collect::<Option<Vec<_>>>(), whole.as_bool()) {
                (Some(s), Some(widens_whole)) => Some(Times { seconds: s.try_into().ok()?, widens_whole }),
                _ if seconds.iter().all(|s| s.is_null()) && whole.is_null() => None,
                _ => return None,
            };
            Some(Measured {
                path: PathBuf::from(m["path"].as_str()?),
                bytes: m["bytes"].as_u64()?,
                modified: m["modified"].as_u64()?,
                failure: match m.get("failure")? {
                    serde_json::Value::Null => None,
                    f => Some(f.as_str()?.to_string()),
                },
                times,
            })
        });
        Some(Calibration { cpu: v["cpu"].as_str()?.to_string(), plugins: plugins.collect::<Option<_>>()? })
    }

    /// Remembers this calibration in `dir` (written whole beside it, then renamed into place).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(FILE);
        let io = |source| Error::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let plugins: Vec<serde_json::Value> = self
            .plugins
            .iter()
            .map(|m| {
                let mut v = serde_json::json!({"path": m.path, "bytes": m.bytes, "modified": m.modified,
                    "widens_whole": m.times.map(|t| t.widens_whole), "failure": m.failure});
                for w in Workload::ALL {
                    v[w.key()] = serde_json::json!(m.times.map(|t| t.of(w)));
                }
                v
            })
            .collect();
        let workarounds = crate::workarounds::known_signature();
        let text = serde_json::json!({"cpu": self.cpu, "probes": PROBES_VERSION, "workarounds": workarounds, "plugins": plugins}).to_string();
        let tmp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// True when it was measured on this CPU for exactly these plugin files, unchanged.
    pub fn holds_for(&self, candidates: &[PathBuf]) -> bool {
        self.cpu == cpu()
            && self.plugins.len() == candidates.len()
            && candidates
                .iter()
                .all(|c| self.plugins.iter().any(|m| m.path == *c && stamp(c) == Some((m.bytes, m.modified))))
    }

    /// The fastest plugin measured for `workload` (of those that ran the
    /// probes); for [`Workload::Widening`], of those that do not widen the
    /// whole matrix first if any, then by time.
    pub fn fastest(&self, workload: Workload) -> Option<&Path> {
        let whole = |t: &Times| workload == Workload::Widening && t.widens_whole;
        self.plugins
            .iter()
            .filter_map(|m| Some((m.times?, &m.path)))
            .min_by(|(a, _), (b, _)| whole(a).cmp(&whole(b)).then(a.of(workload).total_cmp(&b.of(workload))))
            .map(|(_, path)| path.as_path())
    }
}

/// A check of a probe's output (see [`Probe`]).
type Check = Box<dyn Fn(&[Vec<f64>], &[f64]) -> std::result::Result<(), String>>;

/// A probe: the workload it stands for (`None`: run once for its check,
/// not timed), its StableHLO text, whether some product of it reads a
/// broadcast (compiled with that workaround, as xlac compiles such a
/// program: [`Program::products_read_broadcasts`]), its
/// inputs' types and shapes, its f32 output's shape, and a check of its
/// output against the host's arithmetic (the inputs and the output as f64,
/// row-major; `Err` says what is wrong).
struct Probe {
    name: String,
    workload: Option<Workload>,
    mlir: String,
    products_read_broadcasts: bool,
    inputs: Vec<(DType, Vec<usize>)>,
    output: Vec<usize>,
    check: Check,
}

/// A BERT-base layer's feed-forward product at `rows` rows (128 tokens a
/// sequence) for `workload`, as xlac lowers it: `x · w` with `w` [in, out]
/// in f32; `x · wᵀ` with `w` [out, in] in bf16 (the weight layout the
/// mixed precisions get), accumulated in f32.
fn product_probe(rows: usize, workload: Workload) -> Probe {
    let (k, n) = (768, 3072);
    let bf16 = matches!(workload, Workload::Mixed | Workload::MixedBatched);
    let (ty, w, contract) = if bf16 { ("bf16", [n, k], 1) } else { ("f32", [k, n], 0) };
    let mlir = format!(
        r#"module @probe {{ func.func public @main(%a: tensor<{rows}x{k}x{ty}>, %b: tensor<{}x{}x{ty}>) -> tensor<{rows}x{n}xf32> {{
  %0 = "stablehlo.dot_general"(%a, %b) {{dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [{contract}]>}} : (tensor<{rows}x{k}x{ty}>, tensor<{}x{}x{ty}>) -> tensor<{rows}x{n}xf32>
  return %0 : tensor<{rows}x{n}xf32>
}} }}"#,
        w[0], w[1], w[0], w[1]
    );
    let dtype = if bf16 { DType::BF16 } else { DType::F32 };
    let check: Check = if bf16 {
        Box::new(move |x, y| check_product_by_transposed(&x[0], &x[1], y, (rows, k, n)))
    } else {
        Box::new(move |x, y| check_product(&x[0], &x[1], y, (rows, k, n)))
    };
    Probe {
        name: format!("{} {rows}-row matrix-product", if bf16 { "bf16" } else { "f32" }),
        workload: Some(workload),
        mlir,
        products_read_broadcasts: false,
        inputs: vec![(dtype, vec![rows, k]), (dtype, w.to_vec())],
        output: vec![rows, n],
        check,
    }
}

/// A BERT-base layer's attention at `batch` sequences of 128 tokens, in f32
/// (12 heads of 64, the query scaled): the body of [`attention_probe_program`].
fn attention_probe(batch: usize, workload: Workload) -> Probe {
    Probe {
        name: format!("attention at batch {batch}"),
        workload: Some(workload),
        mlir: attention_probe_program(batch),
        products_read_broadcasts: false,
        inputs: vec![(DType::F32, vec![batch, 12, 128, 64]); 3],
        output: vec![batch, 12, 128, 64],
        check: Box::new(move |x, y| check_attention(&x[0], &x[1], &x[2], y, (batch * 12, 128, 64))),
    }
}

/// The attention probe's program at `batch` sequences: `softmax(q·kᵀ)·v`
/// over 12 heads of 64 at 128 tokens, written as xlac lowers
/// `scaled_dot_product_attention` once the `scale-query` pass has scaled
/// the query (the softmax shifted by its row's maximum, each difference
/// held above a floor): the plugins differ most at that softmax, so a
/// probe of another attention ranked them wrongly. Public for the test
/// that holds it to the compiler's lowering (tests/tests/runtime.rs).
pub fn attention_probe_program(batch: usize) -> String {
    let x = format!("{batch}x12x128x64xf32");
    let s = format!("{batch}x12x128x128xf32");
    let r = format!("{batch}x12x128xf32");
    format!(
        r#"module @probe {{ func.func public @main(%arg0: tensor<{x}>, %arg1: tensor<{x}>, %arg2: tensor<{x}>) -> tensor<{x}> {{
    %0 = "stablehlo.dot_general"(%arg0, %arg1) {{dot_dimension_numbers = #stablehlo.dot<lhs_batching_dimensions = [0, 1], rhs_batching_dimensions = [0, 1], lhs_contracting_dimensions = [3], rhs_contracting_dimensions = [3]>}} : (tensor<{x}>, tensor<{x}>) -> tensor<{s}>
    %1 = stablehlo.constant dense<0xFF800000> : tensor<f32>
    %2 = "stablehlo.reduce"(%0, %1) ({{
    ^bb0(%3: tensor<f32>, %4: tensor<f32>):
      %5 = stablehlo.maximum %3, %4 : tensor<f32>
      stablehlo.return %5 : tensor<f32>
    }}) {{dimensions = array<i64: 3>}} : (tensor<{s}>, tensor<f32>) -> tensor<{r}>
    %6 = stablehlo.broadcast_in_dim %2, dims = [0, 1, 2] : (tensor<{r}>) -> tensor<{s}>
    %7 = stablehlo.maximum %0, %6 : tensor<{s}>
    %8 = stablehlo.subtract %0, %7 : tensor<{s}>
    %9 = stablehlo.subtract %2, %2 : tensor<{r}>
    %10 = stablehlo.constant dense<-80.0> : tensor<{r}>
    %11 = stablehlo.add %9, %10 : tensor<{r}>
    %12 = stablehlo.broadcast_in_dim %11, dims = [0, 1, 2] : (tensor<{r}>) -> tensor<{s}>
    %13 = stablehlo.maximum %8, %12 : tensor<{s}>
    %14 = stablehlo.exponential %13 : tensor<{s}>
    %15 = stablehlo.constant dense<0.0> : tensor<f32>
    %16 = "stablehlo.reduce"(%14, %15) ({{
    ^bb0(%17: tensor<f32>, %18: tensor<f32>):
      %19 = stablehlo.add %17, %18 : tensor<f32>
      stablehlo.return %19 : tensor<f32>
    }}) {{dimensions = array<i64: 3>}} : (tensor<{s}>, tensor<f32>) -> tensor<{r}>
    %20 = stablehlo.broadcast_in_dim %16, dims = [0, 1, 2] : (tensor<{r}>) -> tensor<{s}>
    %21 = stablehlo.divide %14, %20 : tensor<{s}>
    %22 = "stablehlo.dot_general"(%21, %arg2) {{dot_dimension_numbers = #stablehlo.dot<lhs_batching_dimensions = [0, 1], rhs_batching_dimensions = [0, 1], lhs_contracting_dimensions = [3], rhs_contracting_dimensions = [2]>}} : (tensor<{s}>, tensor<{x}>) -> tensor<{x}>
    return %22 : tensor<{x}>
}} }}"#
    )
}

/// The probes: each workload's, then one run for its check alone.
fn probes() -> Vec<Probe> {
    // One row by an 8 MiB int8 matrix (32 MiB widened), `x · wᵀ` as a decode step reads its `[out, in]` weights.
    let widening = r#"module @probe { func.func public @main(%x: tensor<1x1024xf32>, %w: tensor<8192x1024xi8>) -> tensor<1x8192xf32> {
  %0 = stablehlo.convert %w : (tensor<8192x1024xi8>) -> tensor<8192x1024xf32>
  %1 = "stablehlo.dot_general"(%x, %0) {dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [1]>} : (tensor<1x1024xf32>, tensor<8192x1024xf32>) -> tensor<1x8192xf32>
  return %1 : tensor<1x8192xf32>
} }"#;
    // A product by a broadcast constant, summed over its rows: the 0.115
    // build's YNNPACK reduce fusions got it wrong (crate::workarounds).
    let broadcast_product = r#"module @probe { func.func public @main(%x: tensor<169x4xf32>) -> tensor<64xf32> {
  %c = stablehlo.constant dense<0.5> : tensor<f32>
  %w = stablehlo.broadcast_in_dim %c, dims = [] : (tensor<f32>) -> tensor<4x64xf32>
  %y = "stablehlo.dot_general"(%x, %w) {dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [0]>} : (tensor<169x4xf32>, tensor<4x64xf32>) -> tensor<169x64xf32>
  %z = stablehlo.constant dense<0.0> : tensor<f32>
  %s = "stablehlo.reduce"(%y, %z) ({
  ^bb0(%a: tensor<f32>, %b: tensor<f32>):
    %t = stablehlo.add %a, %b : tensor<f32>
    stablehlo.return %t : tensor<f32>
  }) {dimensions = array<i64: 0>} : (tensor<169x64xf32>, tensor<f32>) -> tensor<64xf32>
  return %s : tensor<64xf32>
} }"#;
    vec![
        product_probe(128, Workload::Dense),
        attention_probe(1, Workload::Dense),
        product_probe(1024, Workload::DenseBatched),
        attention_probe(8, Workload::DenseBatched),
        product_probe(128, Workload::Mixed),
        product_probe(1024, Workload::MixedBatched),
        Probe {
            name: "int8-widening".into(),
            workload: Some(Workload::Widening),
            mlir: widening.into(),
            products_read_broadcasts: false,
            inputs: vec![(DType::F32, vec![1, 1024]), (DType::I8, vec![8192, 1024])],
            output: vec![1, 8192],
            check: Box::new(|x, y| check_product_by_transposed(&x[0], &x[1], y, (1, 1024, 8192))),
        },
        Probe {
            name: "broadcast-product".into(),
            workload: None,
            mlir: broadcast_product.into(),
            products_read_broadcasts: true,
            inputs: vec![(DType::F32, vec![169, 4])],
            output: vec![64],
            check: Box::new(|x, y| {
                let sum: f64 = x[0].iter().sum::<f64>() * 0.5;
                let bound: f64 = x[0].iter().map(|v| v.abs()).sum::<f64>() * 0.5;
                within(y.iter().copied().enumerate().map(|(i, v)| (i, v, sum, bound)), "sum")
            }),
        },
    ]
}

/// Relative error a check allows, against the sum of the terms'
/// magnitudes: f32 products and sums of up to ~1000 terms stay below it
/// (at worst k·2⁻²⁴ ≈ 6e-5 for k = 1024; in practice far less), a wrong
/// result does not.
const CHECK_TOLERANCE: f64 = 2e-4;

/// Ok when each `(index, got, want, magnitude)` has `|got − want| ≤
/// CHECK_TOLERANCE · magnitude`; else the first that does not, named `what`.
fn within(values: impl Iterator<Item = (usize, f64, f64, f64)>, what: &str) -> std::result::Result<(), String> {
    for (i, got, want, magnitude) in values {
        let close = (got - want).abs() <= CHECK_TOLERANCE * magnitude;
        if !close {
            return Err(format!("{what} {i} is {got}, the host computes {want}"));
        }
    }
    Ok(())
}

/// `c = a · b` for row-major `a` [m, k], `b` [k, n], `c` [m, n]: four rows
/// computed on the host, element by element, and every row by Freivalds'
/// method (`c·r` against `a·(b·r)` for a fixed `r` without zeros, in
/// O(mk + kn + mn)), which a wrong row fails unless its errors cancel.
fn check_product(a: &[f64], b: &[f64], c: &[f64], (m, k, n): (usize, usize, usize)) -> std::result::Result<(), String> {
    let mut rows = vec![0, m / 3, 2 * m / 3, m - 1];
    rows.dedup();
    let elements = rows.into_iter().flat_map(|i| {
        (0..n).map(move |j| {
            let terms = (0..k).map(|p| a[i * k + p] * b[p * n + j]);
            let (want, magnitude) = terms.fold((0.0, 0.0), |(w, g), t| (w + t, g + t.abs()));
            (i * n + j, c[i * n + j], want, magnitude)
        })
    });
    within(elements, "element")?;
    let r: Vec<f64> = (0..n).map(|j| 1.0 + (j % 7) as f64 / 7.0).collect();
    let (mut br, mut br_abs) = (vec![0.0; k], vec![0.0; k]);
    for p in 0..k {
        for j in 0..n {
            br[p] += b[p * n + j] * r[j];
            br_abs[p] += (b[p * n + j] * r[j]).abs();
        }
    }
    let rows = (0..m).map(|i| {
        let (mut want, mut magnitude) = (0.0, 0.0);
        for p in 0..k {
            want += a[i * k + p] * br[p];
            magnitude += a[i * k + p].abs() * br_abs[p];
        }
        let got = (0..n).map(|j| c[i * n + j] * r[j]).sum();
        (i, got, want, magnitude)
    });
    within(rows, "row (times a fixed vector)")
}

/// `c = a · wᵀ` for row-major `a` [m, k] and `w` [n, k]: [`check_product`]
/// with `wᵀ` laid out.
fn check_product_by_transposed(
    a: &[f64],
    w: &[f64],
    c: &[f64],
    (m, k, n): (usize, usize, usize),
) -> std::result::Result<(), String> {
    let wt: Vec<f64> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
    check_product(a, &wt, c, (m, k, n))
}

/// `o = softmax(q·kᵀ)·v` per head for `q`, `k`, `v` [heads, s, d] (each
/// score less its row's maximum held above the probe's floor, −80), checked
/// on three rows of each head computed on the host.
fn check_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    o: &[f64],
    (heads, s, d): (usize, usize, usize),
) -> std::result::Result<(), String> {
    let mut values = Vec::new();
    for h in 0..heads {
        let at = |t: &[f64], j: usize, c: usize| t[(h * s + j) * d + c];
        for i in [0, s / 3, s - 1] {
            let scores: Vec<f64> = (0..s).map(|j| (0..d).map(|c| at(q, i, c) * at(k, j, c)).sum()).collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|x| (x - max).max(-80.0).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for c in 0..d {
                let want: f64 = (0..s).map(|j| exps[j] / sum * at(v, j, c)).sum();
                let magnitude: f64 = (0..s).map(|j| exps[j] / sum * at(v, j, c).abs()).sum();
                values.push(((h * s + i) * d + c, at(o, i, c), want, magnitude));
            }
        }
    }
    within(values.into_iter(), "element")
}

/// The times of each plugin of `paths` on the probes, or why it has none
/// (it could not load, compile or run a probe, or got one wrong): each
/// probe's fastest of up to 7 runs after 2 untimed ones (inputs on the
/// device; each run until its results are computed, their copy to the host
/// not timed), summed per workload. The plugins take turns, one run each,
/// probe by probe, so that the machine's speed, which moves by several
/// percent within seconds on a shared machine, moves for all of them alike.
/// The fastest, not the median: other work on the machine slows some runs,
/// and a median taken under load ranked the two plugins on the development
/// machine the other way round from an idle one.
fn time_probes(paths: &[PathBuf]) -> Vec<Result<Times>> {
    let load = |path: &PathBuf| Plugin::load(path).and_then(|p| Client::new(&p, &ClientOptions::default()));
    let mut clients: Vec<Result<Client>> = paths.iter().map(load).collect();
    let mut times = vec![Times::from_fn(|_| 0.0, false); paths.len()];
    for probe in probes() {
        // The same inputs for every plugin, made once.
        let host: Vec<HostTensor> = match probe.host_inputs() {
            Ok(host) => host,
            Err(e) => {
                let why = format!("the {} probe's inputs: {e}", probe.name);
                clients.iter_mut().filter(|c| c.is_ok()).for_each(|c| *c = Err(Error::Tensor(why.clone())));
                break;
            }
        };
        let inputs: Vec<Vec<f64>> = host.iter().map(HostTensor::to_f64_vec).collect();
        let mut prepared: Vec<Option<Prepared>> = Vec::with_capacity(clients.len());
        for (client, times) in clients.iter_mut().zip(&mut times) {
            let ready = client.as_ref().ok().map(|c| Prepared::new(c, &probe, &host, times));
            prepared.push(match ready {
                Some(Ok(p)) => Some(p),
                Some(Err(e)) => {
                    *client = Err(e);
                    None
                }
                None => None,
            });
        }
        let count = if probe.workload.is_some() { 9 } else { 1 };
        for run in 0..count {
            for (slot, client) in prepared.iter_mut().zip(&mut clients) {
                if let Some(Err(e)) = slot.as_mut().map(|p| p.run(run >= 2)) {
                    (*slot, *client) = (None, Err(e));
                }
            }
            if prepared.iter().flatten().all(Prepared::enough) {
                break;
            }
        }
        for ((slot, client), times) in prepared.into_iter().zip(&mut clients).zip(&mut times) {
            let Some(p) = slot else { continue };
            let output = match p.output() {
                Ok(output) => output,
                Err(e) => {
                    *client = Err(e);
                    continue;
                }
            };
            match (probe.check)(&inputs, &output) {
                Err(e) => *client = Err(Error::Tensor(format!("its result on the {} probe is wrong: {e}", probe.name))),
                Ok(()) => {
                    if let Some(w) = probe.workload {
                        times.seconds[w.index()] += p.fastest();
                    }
                }
            }
        }
    }
    clients.into_iter().zip(times).map(|(client, times)| client.map(|_| times)).collect()
}

/// The timed runs' seconds after which a probe's fastest of 3 or more
/// stands: the batched probes (~15–40 ms a run) stop at 3, the others run 7.
const ENOUGH_SECONDS: f64 = 0.05;

impl Probe {
    /// Its inputs: random values of its inputs' types and shapes, the same at every call.
    fn host_inputs(&self) -> Result<Vec<HostTensor>> {
        (self.inputs.iter().enumerate()).map(|(i, (ty, shape))| HostTensor::random(*ty, shape, i as u64)).collect()
    }
}

/// A probe compiled on one plugin, its inputs uploaded: its runs' times
/// so far and its last run's results, on the device.
struct Prepared {
    exe: Executable,
    args: Vec<ShardedBuffer>,
    runs: Vec<f64>,
    last: Vec<ShardedBuffer>,
}

impl Prepared {
    /// Compiles `probe` on `client` as xlac compiles such a program and
    /// uploads `host`, its inputs; notes in `times` whether the widening
    /// probe widens its matrix whole.
    fn new(client: &Client, probe: &Probe, host: &[HostTensor], times: &mut Times) -> Result<Prepared> {
        let spec = |name: String, (ty, shape): &(DType, Vec<usize>)| TensorSpec { name, ty: *ty, shape: shape.clone() };
        let inputs: Vec<TensorSpec> = probe.inputs.iter().enumerate().map(|(i, s)| spec(format!("x{i}"), s)).collect();
        let mut program =
            Program::new(probe.mlir.clone(), inputs, vec![spec("y".into(), &(DType::F32, probe.output.clone()))]);
        program.products_read_broadcasts = probe.products_read_broadcasts;
        let exe = client.compile(&program, &program.compile_options())?;
        if probe.workload == Some(Workload::Widening) {
            // The narrow inputs as f32: what a plugin that widens them whole holds.
            // Statistics a plugin does not give leave the time to rank it.
            let narrow = probe.inputs.iter().filter(|(ty, _)| *ty != DType::F32);
            let widened = 4 * narrow.map(|(_, shape)| shape.iter().product::<usize>()).sum::<usize>() as i64;
            times.widens_whole = exe.memory_stats().is_ok_and(|s| s.temp_bytes >= widened);
        }
        let args = host.iter().enumerate().map(|(i, t)| exe.upload_argument(i, t.as_ref())).collect::<Result<_>>()?;
        Ok(Prepared { exe, args, runs: Vec::new(), last: Vec::new() })
    }

    /// Runs it once, keeping the time when `timed`, and its results (on the device).
    fn run(&mut self, timed: bool) -> Result<()> {
        let refs: Vec<_> = self.args.iter().collect();
        let start = Instant::now();
        let outputs = self.exe.execute_sharded(&refs)?;
        outputs.iter().flat_map(|out| out.shards()).try_for_each(|b| b.wait_ready())?;
        if timed {
            self.runs.push(start.elapsed().as_secs_f64());
        }
        self.last = outputs;
        Ok(())
    }

    /// Whether its fastest run stands: 3 or more timed, that took [`ENOUGH_SECONDS`].
    fn enough(&self) -> bool {
        self.runs.len() >= 3 && self.runs.iter().sum::<f64>() >= ENOUGH_SECONDS
    }

    fn fastest(&self) -> f64 {
        self.runs.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Its last run's first output, copied to the host, as f64, row-major
    /// (empty before a run).
    fn output(&self) -> Result<Vec<f64>> {
        let Some(out) = self.last.first() else { return Ok(Vec::new()) };
        Ok(out.to_host()?.to_f64_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `path` measured at `dense` seconds on every workload but widening's, `widening` on that.
    fn measured(path: &Path, dense: f64, widening: f64) -> Measured {
        let (bytes, modified) = stamp(path).unwrap();
        let times = Some(Times::from_fn(|w| if w == Workload::Widening { widening } else { dense }, false));
        Measured { path: path.into(), bytes, modified, times, failure: None }
    }

    /// Two files standing for plugins in `dir` (neither loads), `b` measured
    /// faster than `a` on dense products and slower on widening ones, and
    /// that calibration remembered in `dir`.
    fn remembered_pair(dir: &Path) -> (PathBuf, PathBuf, Calibration) {
        let (a, b) = (dir.join("a.so"), dir.join("b.so"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let c = Calibration { cpu: cpu(), plugins: vec![measured(&a, 0.009, 0.001), measured(&b, 0.005, 0.004)] };
        c.save(dir).unwrap();
        (a, b, c)
    }

    #[test]
    fn a_calibration_is_remembered_and_holds_until_the_plugins_change() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = remembered_pair(dir.path());
        let back = Calibration::load(dir.path()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.fastest(Workload::Dense), Some(b.as_path()));
        assert_eq!(back.fastest(Workload::Widening), Some(a.as_path()));
        // A plugin that widens the whole matrix is chosen for widening only when every one does.
        let mut whole = back.clone();
        whole.plugins[0].times.as_mut().unwrap().widens_whole = true;
        assert_eq!(whole.fastest(Workload::Widening), Some(b.as_path()));
        assert_eq!(whole.fastest(Workload::Dense), Some(b.as_path()));
        whole.plugins[1].times.as_mut().unwrap().widens_whole = true;
        assert_eq!(whole.fastest(Workload::Widening), Some(a.as_path()));
        whole.save(dir.path()).unwrap();
        assert_eq!(Calibration::load(dir.path()).unwrap(), whole);
        c.save(dir.path()).unwrap();
        assert!(back.holds_for(&[a.clone(), b.clone()]));
        assert!(back.holds_for(&[b.clone(), a.clone()]));
        assert!(!back.holds_for(std::slice::from_ref(&a)), "a plugin removed");
        let c2 = dir.path().join("c.so");
        std::fs::write(&c2, b"c").unwrap();
        assert!(!back.holds_for(&[a.clone(), b.clone(), c2]), "a plugin added");
        std::fs::write(&b, b"reinstalled, larger").unwrap();
        assert!(!back.holds_for(&[a, b]), "a plugin reinstalled");
        assert!(!Calibration { cpu: "another CPU".into(), ..back }.holds_for(&[]));
    }

    #[test]
    fn each_workload_gets_the_plugin_fastest_at_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.so"), dir.path().join("b.so"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        // `a` faster on few rows, `b` on many: as the 0.81 and 0.115 builds on an AVX-512 EPYC.
        let batched = |w: Workload| matches!(w, Workload::DenseBatched | Workload::MixedBatched);
        let (bytes, modified) = stamp(&a).unwrap();
        let times = |fast_batched: bool| {
            Some(Times::from_fn(|w| if batched(w) == fast_batched { 0.001 } else { 0.002 }, false))
        };
        let c = Calibration {
            cpu: cpu(),
            plugins: vec![
                Measured { path: a.clone(), bytes, modified, times: times(false), failure: None },
                Measured { path: b.clone(), bytes, modified, times: times(true), failure: None },
            ],
        };
        c.save(dir.path()).unwrap();
        let back = Calibration::load(dir.path()).unwrap();
        assert_eq!(back, c);
        for w in Workload::ALL {
            assert_eq!(back.fastest(w), Some(if batched(w) { b.as_path() } else { a.as_path() }), "{w:?}");
        }
    }

    #[test]
    fn a_programs_products_name_its_workload() {
        assert_eq!(Workload::of_products(1, false), Workload::Dense);
        assert_eq!(Workload::of_products(128, false), Workload::Dense);
        assert_eq!(Workload::of_products(BATCHED_ROWS - 1, false), Workload::Dense);
        assert_eq!(Workload::of_products(BATCHED_ROWS, false), Workload::DenseBatched);
        assert_eq!(Workload::of_products(1024, false), Workload::DenseBatched);
        assert_eq!(Workload::of_products(128, true), Workload::Mixed);
        assert_eq!(Workload::of_products(1024, true), Workload::MixedBatched);
        for (i, w) in Workload::ALL.into_iter().enumerate() {
            assert_eq!(w.index(), i);
        }
    }

    #[test]
    fn a_plugin_that_cannot_run_the_probes_is_remembered_and_never_the_fastest() {
        let dir = tempfile::tempdir().unwrap();
        let (broken, working) = (dir.path().join("broken.so"), dir.path().join("working.so"));
        std::fs::write(&broken, b"not a library").unwrap();
        std::fs::write(&working, b"w").unwrap();
        // Not a shared library: loading it fails, so it is recorded without a time.
        let run = Calibration::run(std::slice::from_ref(&broken));
        assert_eq!(run.plugins[0].times, None);
        assert_eq!(run.fastest(Workload::Dense), None);
        let c = Calibration { cpu: cpu(), plugins: vec![run.plugins[0].clone(), measured(&working, 0.02, 0.03)] };
        c.save(dir.path()).unwrap();
        let back = Calibration::load(dir.path()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.fastest(Workload::Dense), Some(working.as_path()));
        assert_eq!(back.fastest(Workload::Widening), Some(working.as_path()));
    }

    #[test]
    fn a_remembered_calibration_chooses_without_timing_again() {
        let dir = tempfile::tempdir().unwrap();
        // Neither file loads: a fresh run would time neither, so the choice is the remembered one's.
        let (a, b, _) = remembered_pair(dir.path());
        let untimed = |_: &[PathBuf]| panic!("a remembered calibration is not timed again");
        let c = calibrated(&[a.clone(), b.clone()], dir.path(), untimed);
        assert_eq!(c.fastest(Workload::Dense), Some(b.as_path()));
        assert_eq!(c.fastest(Workload::Widening), Some(a.as_path()));
        // A plugin added: timed again (and neither of these runs), so no choice.
        let added = dir.path().join("c.so");
        std::fs::write(&added, b"c").unwrap();
        let mut timed = Vec::new();
        assert_eq!(
            calibrated(&[a, b, added], dir.path(), |found| timed = found.to_vec()).fastest(Workload::Dense),
            None
        );
        assert_eq!(timed.len(), 3, "the caller is told before the plugins are timed");
        assert!(Calibration::load(dir.path()).unwrap().plugins.iter().all(|m| m.times.is_none()));
    }

    #[test]
    fn an_unreadable_calibration_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Calibration::load(dir.path()).is_none());
        std::fs::write(dir.path().join(FILE), "{\"cpu\": 3}").unwrap();
        assert!(Calibration::load(dir.path()).is_none());
    }

    #[test]
    fn a_calibration_from_before_a_probe_or_the_checks_is_timed_again() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, _) = remembered_pair(dir.path());
        let old = serde_json::json!({"cpu": cpu(), "plugins": [
            {"path": a, "bytes": 1, "modified": stamp(&a).unwrap().1, "seconds": 0.009},
            {"path": b, "bytes": 1, "modified": stamp(&b).unwrap().1, "seconds": 0.005}]});
        std::fs::write(dir.path().join(FILE), old.to_string()).unwrap();
        assert!(Calibration::load(dir.path()).is_none());
        // Nor one from before the results were checked: it chose unchecked.
        let mut unchecked: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(FILE)).unwrap()).unwrap();
        for m in unchecked["plugins"].as_array_mut().unwrap() {
            m["widening_seconds"] = 0.001.into();
            m["widens_whole"] = false.into();
        }
        std::fs::write(dir.path().join(FILE), unchecked.to_string()).unwrap();
        assert!(Calibration::load(dir.path()).is_none());
        // Nor one from before the batched and bf16 probes: it chose by batch-1 f32 products alone.
        for m in unchecked["plugins"].as_array_mut().unwrap() {
            m["failure"] = serde_json::Value::Null;
        }
        std::fs::write(dir.path().join(FILE), unchecked.to_string()).unwrap();
        assert!(Calibration::load(dir.path()).is_none());
        for m in unchecked["plugins"].as_array_mut().unwrap() {
            for w in Workload::ALL {
                m[w.key()] = 0.001.into();
            }
        }
        std::fs::write(dir.path().join(FILE), unchecked.to_string()).unwrap();
        assert!(Calibration::load(dir.path()).is_none(), "timed before xlac recorded its plugin workarounds");
        unchecked["workarounds"] = "0.115 some_option=an older value".into();
        std::fs::write(dir.path().join(FILE), unchecked.to_string()).unwrap();
        assert!(Calibration::load(dir.path()).is_none(), "timed under other workarounds");
        unchecked["workarounds"] = crate::workarounds::known_signature().into();
        std::fs::write(dir.path().join(FILE), unchecked.to_string()).unwrap();
        assert!(Calibration::load(dir.path()).is_none(), "timed before the probes had a version");
        unchecked["probes"] = (PROBES_VERSION - 1).into();
        std::fs::write(dir.path().join(FILE), unchecked.to_string()).unwrap();
        assert!(Calibration::load(dir.path()).is_none(), "timed on older probes");
        unchecked["probes"] = PROBES_VERSION.into();
        std::fs::write(dir.path().join(FILE), unchecked.to_string()).unwrap();
        assert!(Calibration::load(dir.path()).is_some(), "with every workload's time, the file is read");
        std::fs::write(dir.path().join(FILE), old.to_string()).unwrap();
        let mut timed = false;
        assert_eq!(calibrated(&[a, b], dir.path(), |_| timed = true).fastest(Workload::Dense), None);
        assert!(timed, "the old file does not hold for the plugins");
    }

    /// Each probe's result on the plugin the tests use passes its check, and
    /// the same result with one element off by a tenth of the largest does not.
    #[test]
    fn the_probes_checks_pass_the_plugins_results_and_fail_a_changed_one() {
        let Ok(path) = plugin::find(Platform::Cpu, None) else {
            assert!(std::env::var_os("CI").is_none(), "CI is set but the CPU plugin is missing");
            return;
        };
        let client = Client::new(&Plugin::load(&path).unwrap(), &ClientOptions::default()).unwrap();
        let mut times = Times::from_fn(|_| 0.0, false);
        for probe in probes() {
            let host = probe.host_inputs().unwrap();
            let mut prepared = Prepared::new(&client, &probe, &host, &mut times).unwrap();
            prepared.run(false).unwrap();
            let inputs: Vec<Vec<f64>> = host.iter().map(HostTensor::to_f64_vec).collect();
            let mut output = prepared.output().unwrap();
            (probe.check)(&inputs, &output).unwrap_or_else(|e| panic!("{}: {e}", probe.name));
            let largest = output.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            output[3] += 0.1 * largest + 1.0;
            assert!((probe.check)(&inputs, &output).is_err(), "{}: a changed element passed", probe.name);
            output[3] = f64::NAN;
            assert!((probe.check)(&inputs, &output).is_err(), "{}: NaN passed", probe.name);
        }
    }

    /// The probes run on the plugin the tests use, and the widening one times
    /// an int8 matrix's product (where a plugin is installed).
    #[test]
    fn the_probes_run_on_an_installed_plugin() {
        let Ok(path) = plugin::find(Platform::Cpu, None) else {
            assert!(std::env::var_os("CI").is_none(), "CI is set but the CPU plugin is missing");
            return;
        };
        let times = time_probes(std::slice::from_ref(&path)).remove(0).unwrap();
        assert!(times.seconds.iter().all(|&s| s > 0.0), "{times:?}");
        // The official wheel (0.81), the plugin the tests use, widens inside the product.
        let official = path.file_name().is_some_and(|n| n == "xla_cpu_pjrt.so");
        assert!(!official || !times.widens_whole, "{times:?}");
    }
}
