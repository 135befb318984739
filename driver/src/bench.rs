//! `xlac bench`: compile time (cold, and served from the disk cache), weight
//! loading, execute latency over repeated runs with the weights and inputs
//! already on the devices, and the achieved FLOP rate from XLA's cost analysis.

use crate::{CompiledModel, DeviceModel, Error, Session};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use xlac_runtime::{CacheConfig, CompilationCache, HostTensor};

/// What one benchmark measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// XLA compile with nothing cached (written to an empty cache directory).
    pub compile_cold: Duration,
    /// The same program from that disk cache, in a fresh in-memory cache.
    pub compile_cached: Duration,
    /// Uploading the weights.
    pub load: Duration,
    /// Bytes of weights uploaded.
    pub weight_bytes: u64,
    /// Resident memory before the upload and its peak during it (Linux only).
    pub load_rss: Option<(u64, u64)>,
    /// Every timed execution, sorted.
    pub runs: Vec<Duration>,
    /// Floating-point operations per execution, when the plugin reports them.
    pub flops: Option<f64>,
}

impl BenchReport {
    /// The `q`-quantile of the runs (0.5: the median), nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        let i = ((self.runs.len() - 1) as f64 * q).round() as usize;
        self.runs[i]
    }

    /// Achieved GFLOP/s at the median latency.
    pub fn gflops(&self) -> Option<f64> {
        self.flops.map(|f| f / self.quantile(0.5).as_secs_f64() / 1e9)
    }
}

/// Benchmarks `model` on `session`'s client: `warmup` untimed then `runs`
/// timed executions (at least 1) on inputs uploaded once (given, else seeded random).
pub fn bench(
    session: &Session,
    model: &CompiledModel,
    given: &BTreeMap<String, HostTensor>,
    seed: u64,
    warmup: usize,
    runs: usize,
) -> Result<BenchReport, Error> {
    let program = model.program();
    let options = program.compile_options();
    let dir = tempfile::tempdir().map_err(|source| xlac_runtime::Error::Io { path: std::env::temp_dir(), source })?;
    let config = CacheConfig { dir: Some(dir.path().to_path_buf()), memory_entries: 1, ..CacheConfig::from_env() };
    let start = Instant::now();
    CompilationCache::new(&config)?.get_or_compile(&session.client, &program, &options)?;
    let compile_cold = start.elapsed();
    let start = Instant::now();
    let (exe, _) = CompilationCache::new(&config)?.get_or_compile(&session.client, &program, &options)?;
    let compile_cached = start.elapsed();
    let before = reset_peak_rss();
    let start = Instant::now();
    let mut weight_bytes = 0;
    let device = DeviceModel::upload(exe, model, &mut |p| weight_bytes = p.bytes)?;
    let load = start.elapsed();
    let load_rss = before.zip(status_bytes("VmHWM:"));
    let inputs = device.upload_inputs(given, seed)?;
    for _ in 0..warmup {
        device.execute(&inputs)?;
    }
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        device.execute(&inputs)?;
        times.push(start.elapsed());
    }
    times.sort();
    let flops = device
        .executable()
        .cost_analysis()
        .ok()
        .and_then(|c| c.into_iter().find(|(k, _)| k == "flops").map(|(_, v)| v))
        .map(|f| f * options.num_partitions as f64);
    Ok(BenchReport { compile_cold, compile_cached, load, weight_bytes, load_rss, runs: times, flops })
}

/// A `/proc/self/status` field in bytes (`VmRSS:`, `VmHWM:`), on Linux.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Resets the kernel's peak-RSS mark to the current RSS (Linux's
/// `clear_refs` 5) and returns the current RSS; `None` where unsupported.
fn reset_peak_rss() -> Option<u64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    status_bytes("VmRSS:")
}
