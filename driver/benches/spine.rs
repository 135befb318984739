//! `cargo bench -p xlac-driver --bench spine`: for each fixture, xlac's own time
//! (read, verify, lower) against XLA's cold compile, a disk-cache hit, a
//! memory-cache hit and execute (medians), then resident memory before and
//! after 1,000 uncached compile/execute cycles. `XLAC_BENCH_CYCLES` changes
//! the cycle count.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use xlac_driver::{compile_model, DeviceModel, Session};
use xlac_runtime::{CacheConfig, ClientOptions, CompilationCache, CompileOptions, Platform};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(n: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

/// Resident set size in MiB, from /proc/self/statm.
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

fn inputs(dir: &Path) -> BTreeMap<String, xlac_runtime::HostTensor> {
    std::fs::read_dir(dir.join("inputs"))
        .unwrap()
        .flatten()
        .map(|e| {
            let p = e.path();
            (p.file_stem().unwrap().to_string_lossy().into_owned(), xlac_runtime::npy::read(&p).unwrap())
        })
        .collect()
}

fn main() {
    std::env::set_var("TF_CPP_MIN_LOG_LEVEL", "3");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("fixtures");
    let session = Session::new(Platform::Cpu, None, &ClientOptions::default(), &CacheConfig::disabled())
        .expect("the CPU plugin (pip install xla-cpu-pjrt)");
    let cache_dir = tempfile::tempdir().unwrap();
    let disk_only = CacheConfig { dir: Some(cache_dir.path().to_path_buf()), max_bytes: 1 << 30, memory_entries: 0 };
    let with_memory = CacheConfig { memory_entries: 8, ..disk_only.clone() };
    let options = CompileOptions::default();
    let (major, minor) = session.plugin.api_version();
    println!(
        "plugin: {} (PJRT API {major}.{minor}, platform {} {})",
        session.plugin.path().display(),
        session.client.platform_name(),
        session.client.platform_version()
    );
    println!(
        "{:<18} {:>6} {:>12} {:>12} {:>12} {:>12} {:>8} {:>12}",
        "fixture", "nodes", "xlac", "XLA compile", "disk hit", "memory hit", "disk/cold", "execute"
    );
    for name in ["mlp", "cnn", "transformer_block", "ops"] {
        let dir = root.join(name);
        let given = inputs(&dir);
        let path = dir.join("model.json");
        let model = compile_model(&path, &Default::default(), &given).unwrap();
        let ours = time(50, || compile_model(&path, &Default::default(), &given).unwrap());
        let cold = time(5, || session.compile(&model).unwrap());
        let program = model.program();
        let disk = CompilationCache::new(&disk_only).unwrap();
        disk.get_or_compile(&session.client, &program, &options).unwrap();
        let disk_hit = time(20, || disk.get_or_compile(&session.client, &program, &options).unwrap());
        let memory = CompilationCache::new(&with_memory).unwrap();
        memory.get_or_compile(&session.client, &program, &options).unwrap();
        let memory_hit = time(200, || memory.get_or_compile(&session.client, &program, &options).unwrap());
        let (exe, _) = session.compile(&model).unwrap();
        let device = DeviceModel::upload(exe, &model, &mut |_| {}).unwrap();
        let on_device = device.upload_inputs(&given, 0).unwrap();
        let run = time(200, || device.execute(&on_device).unwrap());
        println!(
            "{name:<18} {:>6} {:>12.2?} {:>12.2?} {:>12.2?} {:>12.2?} {:>7.1}% {:>12.2?}",
            model.module.order().len(),
            ours,
            cold,
            disk_hit,
            memory_hit,
            100.0 * disk_hit.as_secs_f64() / cold.as_secs_f64(),
            run
        );
    }
    let cycles: usize = std::env::var("XLAC_BENCH_CYCLES").ok().and_then(|c| c.parse().ok()).unwrap_or(1000);
    let dir = root.join("mlp");
    let given = inputs(&dir);
    let model = compile_model(&dir.join("model.json"), &Default::default(), &given).unwrap();
    let cycle = || {
        let (exe, _) = session.compile(&model).unwrap();
        DeviceModel::upload(exe, &model, &mut |_| {}).unwrap().run(&given, 0).unwrap();
    };
    for _ in 0..20 {
        cycle();
    }
    let before = rss_mib();
    let mut marks = Vec::new();
    let t = Instant::now();
    for i in 0..cycles {
        cycle();
        if (i + 1) % (cycles / 4).max(1) == 0 {
            marks.push(format!("{:.1}", rss_mib()));
        }
    }
    println!(
        "RSS over {cycles} compile+execute cycles of mlp: {before:.1} MiB after warm-up, then {} MiB ({:?} per cycle)",
        marks.join(" → "),
        t.elapsed() / cycles as u32
    );
    let counts = xlac_runtime::object_counts();
    let live: Vec<String> = counts.iter().map(|c| format!("{:?} {}/{}", c.kind, c.created, c.destroyed)).collect();
    println!("PJRT objects created/destroyed: {}", live.join(", "));
}
