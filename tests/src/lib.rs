//! Shared helpers for xlac's end-to-end tests.

pub mod train_cases;

use libtest_mimic::Arguments;
pub use libtest_mimic::Trial;
use std::path::PathBuf;
use xlac_runtime::{Platform, Plugin};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the repo").to_path_buf()
}

/// The CPU plugin, or `None` (with a note) when it is not installed. Under CI
/// (`CI` set) a missing plugin fails the test instead: CI must install it.
pub fn cpu_plugin() -> Option<Plugin> {
    match Plugin::discover(Platform::Cpu, None) {
        Ok(p) => Some(p),
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI is set but the CPU plugin is missing: {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// A test named `name` running `f`: one data-driven case, failed by a panic
/// (the assertions' way) without hiding the other cases.
pub fn trial(name: impl Into<String>, f: impl FnOnce() + Send + 'static) -> Trial {
    Trial::test(name, move || {
        f();
        Ok(())
    })
}

/// Runs `trials` as this test binary's tests (its `[[test]]` has `harness = false`),
/// with libtest's command line (`cargo test -- NAME`, `--list`, ...).
pub fn run_trials(trials: Vec<Trial>) -> ! {
    libtest_mimic::run(&Arguments::from_args(), trials).exit()
}

/// A session on the CPU plugin with `devices` devices, shared by the cases
/// of one test binary; `None` (with a note) without the plugin, a failure
/// under CI. Its compilation cache is in memory only (no disk: a test never
/// reads another run's executables; in memory: a case that runs one program
/// step after step through [`xlac_driver::Session::run`] compiles it once).
/// Cases on threads of their own may run one multi-device executable at
/// once: each execution has a launch id of its own, which keeps their
/// collectives apart (without one, the 0.81 plugin crashed here in CI:
/// `next_launch_id` in runtime/src/pjrt/executable.rs).
pub fn shared_session(devices: Option<u32>) -> Option<&'static xlac_driver::Session> {
    use std::sync::{Mutex, OnceLock};
    /// Sessions by device count.
    type Sessions = Mutex<Vec<(Option<u32>, &'static xlac_driver::Session)>>;
    static SESSIONS: OnceLock<Sessions> = OnceLock::new();
    let plugin = cpu_plugin()?;
    let mut sessions = SESSIONS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, s)) = sessions.iter().find(|(d, _)| *d == devices) {
        return Some(s);
    }
    let options = xlac_runtime::ClientOptions { cpu_device_count: devices };
    let cache = xlac_runtime::CacheConfig { dir: None, max_bytes: 0, memory_entries: 64 };
    let session = xlac_driver::Session::new(Platform::Cpu, Some(plugin.path()), &options, &cache)
        .expect("a session on the CPU plugin");
    let session: &'static xlac_driver::Session = Box::leak(Box::new(session));
    sessions.push((devices, session));
    Some(session)
}

/// Where a case runs: `Some(Some(session))` on XLA, `Some(None)` on the
/// interpreter; `None` when XLA is asked for and there is no plugin (a
/// failure under CI, as [`shared_session`] says).
pub fn backend(xla: bool) -> Option<Option<&'static xlac_driver::Session>> {
    if xla {
        shared_session(None).map(Some)
    } else {
        Some(None)
    }
}

/// The model of a fixture folder under `fixtures/`: its model.json, or the
/// folder itself (a Hugging Face checkpoint directory).
pub fn fixture_model(fixture: &str) -> PathBuf {
    match repo_root().join("fixtures").join(fixture) {
        dir if dir.join("model.json").exists() => dir.join("model.json"),
        dir => dir,
    }
}

/// Each fixture's name and folder, sorted.
pub fn named_fixtures() -> Vec<(String, PathBuf)> {
    fixtures().into_iter().map(|d| (d.file_name().unwrap().to_string_lossy().into_owned(), d)).collect()
}

/// Every pass case (`tests/passes/PASS/CASE.{ir,json}`): the pass's name and the file, sorted.
pub fn pass_cases() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(repo_root().join("tests/passes")).expect("tests/passes exists").flatten() {
        let pass = dir.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(dir.path()).expect("a pass folder").flatten() {
            out.push((pass.clone(), f.path()));
        }
    }
    out.sort();
    out
}

/// A case's name for test names: `PASS/CASE` from `tests/passes/PASS/CASE.ext`.
pub fn case_name(pass: &str, path: &std::path::Path) -> String {
    format!("{pass}/{}", path.file_stem().unwrap().to_string_lossy())
}

/// The fixture folders (each with model.json, inputs/ and expected/), sorted.
pub fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo_root().join("fixtures"))
        .expect("fixtures/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.json").is_file())
        .collect();
    v.sort();
    v
}

/// Every `.npy` in `dir`, by file stem.
pub fn read_npy_dir(dir: &std::path::Path) -> std::collections::BTreeMap<String, xlac_runtime::HostTensor> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "npy") {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            out.insert(name, xlac_runtime::npy::read(&p).unwrap_or_else(|e| panic!("{e}")));
        }
    }
    out
}

/// Every tensor of `batch` with its examples (first axis) repeated in
/// order, cyclically, up to the next multiple of `n`: a batch that divides
/// over `n` devices or micro-batches.
pub fn repeated_to_multiple(
    batch: std::collections::BTreeMap<String, xlac_runtime::HostTensor>,
    n: usize,
) -> std::collections::BTreeMap<String, xlac_runtime::HostTensor> {
    batch
        .into_iter()
        .map(|(name, t)| {
            let len = t.shape()[0];
            let (rows, row) = (len.div_ceil(n) * n, t.data().len() / len);
            let bytes: Vec<u8> =
                (0..rows).flat_map(|i| t.data()[(i % len) * row..(i % len + 1) * row].to_vec()).collect();
            let mut shape = t.shape().to_vec();
            shape[0] = rows;
            (name, xlac_runtime::HostTensor::new(t.element_type(), shape, bytes).expect("the rows fit the shape"))
        })
        .collect()
}

/// The first `rows` examples (first axis) of every array of `data`.
pub fn first_rows(
    data: &std::collections::BTreeMap<String, xlac_runtime::HostTensor>,
    rows: usize,
) -> std::collections::BTreeMap<String, xlac_runtime::HostTensor> {
    data.iter()
        .map(|(k, t)| {
            let row = t.data().len() / t.shape()[0];
            let mut shape = t.shape().to_vec();
            shape[0] = rows;
            let bytes = t.data()[..rows * row].to_vec();
            (k.clone(), xlac_runtime::HostTensor::new(t.element_type(), shape, bytes).expect("the rows fit the shape"))
        })
        .collect()
}

/// Compares `actual` to `expected`: same dtype and shape, and for floats
/// |a − e| ≤ atol + rtol·|e| elementwise (integers and bools exactly).
pub fn compare(
    name: &str,
    actual: &xlac_runtime::HostTensor,
    expected: &xlac_runtime::HostTensor,
    rtol: f64,
    atol: f64,
) -> Result<(), String> {
    if actual.element_type() != expected.element_type() || actual.shape() != expected.shape() {
        return Err(format!(
            "{name}: got {}{:?}, expected {}{:?}",
            actual.element_type(),
            actual.shape(),
            expected.element_type(),
            expected.shape()
        ));
    }
    let (a, e) = (actual.to_f64_vec(), expected.to_f64_vec());
    let mut worst: Option<(usize, f64)> = None;
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        let excess = (x - y).abs() - (atol + rtol * y.abs());
        let bad = excess > 0.0 || x.is_nan() != y.is_nan();
        if bad && worst.is_none_or(|(_, w)| excess > w) {
            worst = Some((i, excess));
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => {
            Err(format!("{name}: element {i} is {} but expected {} (rtol {rtol}, atol {atol})", a[i], e[i]))
        }
    }
}

/// A fixed-seed stream of pseudo-random numbers (xorshift) for generated test cases.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One element of `v`.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// A small valid model.json: `y = relu(x @ w + b)` with `x: f32[batch, 4]`,
/// `w: f32[4, width]` holding 0, 1, 2, … and `b: f32[width]` holding 1, 2, ….
pub fn small_model(width: usize) -> serde_json::Value {
    serde_json::json!({
        "format_version": 1,
        "name": "small",
        "inputs": [{"name": "x", "dtype": "f32", "shape": ["batch", 4]}],
        "parameters": [
            {"name": "w", "dtype": "f32", "shape": [4, width], "value": (0..4 * width).map(|i| i as f64).collect::<Vec<_>>()},
            {"name": "b", "dtype": "f32", "shape": [width], "value": (1..=width).map(|i| i as f64).collect::<Vec<_>>()}
        ],
        "nodes": [
            {"op": "matmul", "inputs": ["x", "w"], "outputs": ["h"]},
            {"op": "add", "inputs": ["h", "b"], "outputs": ["z"]},
            {"op": "relu", "inputs": ["z"], "outputs": ["y"]}
        ],
        "outputs": ["y"]
    })
}

/// A model.json named `widened`: `x` (f32 `[1, rows, inner]`) times an int8
/// matrix `q` (`[outer, inner]`, contracted on `inner`) widened to f32 as the
/// product reads it, the output `y`; with `scaled`, `y` is then multiplied by
/// `s` and `b` is added (both f32 `[outer]`), the output `z`.
pub fn int8_product_model(rows: usize, inner: usize, outer: usize, scaled: bool) -> serde_json::Value {
    let mut inputs = vec![
        serde_json::json!({"name": "x", "dtype": "f32", "shape": [1, rows, inner]}),
        serde_json::json!({"name": "q", "dtype": "i8", "shape": [outer, inner]}),
    ];
    let mut nodes = vec![
        serde_json::json!({"op": "cast", "inputs": ["q"], "outputs": ["w"], "attrs": {"to": "f32"}}),
        serde_json::json!({"op": "dot", "inputs": ["x", "w"], "outputs": ["y"], "attrs": {"lhs_contract": [2], "rhs_contract": [1]}}),
    ];
    let mut output = "y";
    if scaled {
        for name in ["s", "b"] {
            inputs.push(serde_json::json!({"name": name, "dtype": "f32", "shape": [outer]}));
        }
        nodes.push(serde_json::json!({"op": "mul", "inputs": ["y", "s"], "outputs": ["scaled"]}));
        nodes.push(serde_json::json!({"op": "add", "inputs": ["scaled", "b"], "outputs": ["z"]}));
        output = "z";
    }
    serde_json::json!({"format_version": 1, "name": "widened", "inputs": inputs, "nodes": nodes, "outputs": [output]})
}

/// Asserts that `text` (an error message) contains every one of `parts`.
pub fn assert_has(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "expected `{p}` in:\n{text}");
    }
}

/// Up to 16 floats at the start of a 64-byte aligned block: host memory a CPU
/// plugin can read in place (`Client::upload_in_place`), shared as its owner.
#[repr(align(64))]
pub struct AlignedFloats {
    bytes: [u8; 64],
    len: usize,
}

impl AlignedFloats {
    /// `values` (at most 16) in an aligned block.
    pub fn new(values: &[f32]) -> std::sync::Arc<AlignedFloats> {
        assert!(values.len() <= 16, "{} floats do not fit 64 bytes", values.len());
        let mut bytes = [0; 64];
        for (chunk, v) in bytes.chunks_mut(4).zip(values) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        std::sync::Arc::new(AlignedFloats { bytes, len: values.len() })
    }

    /// The floats as a 1-D f32 tensor, viewed where they lie.
    pub fn tensor(&self) -> xlac_runtime::TensorRef<'_> {
        xlac_runtime::TensorRef::new(
            xlac_runtime::DType::F32,
            std::slice::from_ref(&self.len),
            &self.bytes[..4 * self.len],
        )
        .expect("the bytes hold the floats")
    }

    /// The floats, read back from the block.
    pub fn values(&self) -> Vec<f32> {
        self.bytes[..4 * self.len].chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}
