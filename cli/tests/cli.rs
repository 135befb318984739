//! The `xlac` binary, run as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use xlac_runtime::calibration::Workload;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A compilation cache private to this test binary's run.
fn cache_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// The binary with `args`, run from the repository root on the cache
/// `cache`, on the plugin the test crates use (the first found, or
/// `XLAC_PJRT_PLUGIN`'s): with several installed, a run would otherwise
/// time them all first and use the fastest (see [`choosing`]).
fn command(args: &[&str], cache: &Path) -> Command {
    let mut c = choosing(args, cache);
    if let Ok(plugin) = xlac_runtime::pjrt::plugin::find(xlac_runtime::Platform::Cpu, None) {
        c.env(xlac_runtime::pjrt::plugin::PLUGIN_ENV, plugin);
    }
    c
}

/// The binary with `args` on the cache `cache`, choosing its plugin itself
/// (with no configuration file: the user's would choose for it).
fn choosing(args: &[&str], cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xlac"));
    c.args(args)
        .current_dir(root())
        .env("XLAC_CACHE_DIR", cache)
        .env(xlac_runtime::config::CONFIG_ENV, cache.join("no-config.json"))
        .env_remove(xlac_runtime::pjrt::plugin::PLUGIN_ENV);
    c
}

fn xlac(args: &[&str]) -> Output {
    xlac_with_cache(args, cache_dir())
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Whether the CPU plugin is installed; under CI its absence is a failure.
fn have_plugin() -> bool {
    let found = xlac_runtime::pjrt::plugin::find(xlac_runtime::Platform::Cpu, None).is_ok();
    assert!(found || std::env::var_os("CI").is_none(), "CI is set but the CPU plugin is missing");
    if !found {
        eprintln!("skipping: no CPU plugin");
    }
    found
}

#[test]
fn compile_emits_stablehlo_and_ir() {
    let o = xlac(&["compile", "fixtures/mlp/model.json", "--bind", "batch=3"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("func.func public @main(%arg0: tensor<3x16xf32>"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let ir = dir.path().join("mlp.ir");
    let o =
        xlac(&["compile", "fixtures/mlp/model.json", "--bind", "batch=3", "--emit", "ir", "-o", ir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(std::fs::read_to_string(ir).unwrap().contains("input %x: f32[3,16]"));
}

#[test]
fn bad_models_exit_1_naming_the_place() {
    let o = xlac(&["compile", "fixtures/mlp/model.json"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("fixtures/mlp/model.json: inputs[0].shape[0]: symbol `batch` is not bound"), "{err}");
    let o = xlac(&["compile", "no/such/model.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("no/such/model.json: cannot read"), "{}", text(&o).1);
}

#[test]
fn bad_usage_exits_2() {
    let o = xlac(&["compile", "fixtures/mlp/model.json", "--bind", "batch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("expected SYM=N"));
}

/// The subcommands `xlac [prefix] --help` lists (besides `help`).
fn subcommands(prefix: &[&str]) -> Vec<String> {
    let args: Vec<&str> = prefix.iter().copied().chain(["--help"]).collect();
    let help = text(&xlac(&args)).0;
    let listed = help.split("Commands:").nth(1).and_then(|rest| rest.split("\n\n").next()).unwrap_or_default();
    listed.lines().filter_map(|l| l.split_whitespace().next()).filter(|c| *c != "help").map(str::to_string).collect()
}

#[test]
fn every_command_has_help_with_an_example() {
    let commands = subcommands(&[]);
    assert!(commands.len() >= 8, "{commands:?}");
    for cmd in &commands {
        let o = xlac(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd} --help");
        assert!(text(&o).0.contains("Example:"), "{cmd} --help has no example:\n{}", text(&o).0);
        for sub in subcommands(&[cmd]) {
            let o = xlac(&[cmd, &sub, "--help"]);
            assert!(o.status.success(), "{cmd} {sub} --help");
            assert!(text(&o).0.contains("Example:"), "{cmd} {sub} --help has no example:\n{}", text(&o).0);
        }
    }
}

#[test]
fn bad_inputs_a_new_user_tries_are_clear_errors() {
    // A missing file is said once, with its path.
    let o = xlac(&["run", "nope.json"]);
    let err = text(&o).1;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.starts_with("error: nope.json: cannot read"), "{err}");
    // A value larger than the machine's memory is refused before anything is allocated.
    let o = xlac(&["eval", "fixtures/mlp/model.json", "--bind", "batch=100000000000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("value `x` (f32[100000000000,16], 8 bytes per element in the interpreter) needs 12.80 TB of host memory, more than the"), "{}", text(&o).1);
    if have_plugin() {
        let o = xlac(&["run", "fixtures/mlp/model.json", "--bind", "batch=100000000000"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(text(&o).1.contains("input `x` (f32[100000000000,16]) needs 6.40 TB of host memory"), "{}", text(&o).1);
    }
    // An architecture xlac does not import says so, and which it does, before looking for weights.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"architectures": ["T5Model"], "model_type": "t5"}"#).unwrap();
    let o = xlac(&["run", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o)
            .1
            .contains("config.architectures: architecture `T5Model` is not supported (supported: BertModel, BertForSequenceClassification, GPT2Model"),
        "{}",
        text(&o).1
    );
}

#[test]
fn run_prints_and_writes_outputs() {
    if !have_plugin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let o = xlac(&[
        "run",
        "fixtures/mlp/model.json",
        "--input",
        "x=fixtures/mlp/inputs/x.npy",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("probs: f32[2, 8] min="), "{out}");
    let probs = xlac_runtime::npy::read(&out_dir.join("probs.npy")).unwrap();
    let expected = xlac_runtime::npy::read(&root().join("fixtures/mlp/expected/probs.npy")).unwrap();
    for (a, e) in probs.to_f64_vec().iter().zip(expected.to_f64_vec()) {
        assert!((a - e).abs() <= 1e-6 + 1e-5 * e.abs(), "{a} vs {e}");
    }
}

#[test]
fn run_with_random_inputs_is_seeded() {
    if !have_plugin() {
        return;
    }
    let run = |seed: &str| text(&xlac(&["run", "fixtures/cnn/model.json", "--bind", "batch=1", "--seed", seed])).0;
    let a = run("1");
    assert!(a.contains("log_probs: f32[1, 10]"), "{a}");
    assert_eq!(a, run("1"));
    assert_ne!(a, run("2"));
}

#[test]
fn run_rejects_inputs_that_do_not_fit() {
    if !have_plugin() {
        return;
    }
    let o = xlac(&["run", "fixtures/mlp/model.json", "--input", "x=fixtures/cnn/inputs/image.npy"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("input `x`: given shape [2,3,16,16] has rank 4, declared rank is 2"), "{}", text(&o).1);
    let o = xlac(&["run", "fixtures/mlp/model.json", "--input", "y=fixtures/mlp/inputs/x.npy"]);
    assert!(text(&o).1.contains("input `y`: the model has no such input (inputs: x)"), "{}", text(&o).1);
}

#[test]
fn devices_lists_the_plugin_and_devices() {
    if !have_plugin() {
        return;
    }
    let o = xlac(&["devices", "--cpu-devices", "2"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("platform: cpu") && out.contains("PJRT API: 0.") && out.contains("devices: 2"), "{out}");
    let o = xlac(&["devices", "--plugin", "/no/such/plugin.so"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("/no/such/plugin.so: cannot load PJRT plugin: no such file"));
}

#[test]
fn devices_all_lists_every_installed_plugin_the_default_first() {
    if !have_plugin() {
        return;
    }
    // The plugin `xlac devices` uses (with the same cache, so the same calibration, if any).
    let default = text(&xlac(&["devices"])).0.lines().next().unwrap().to_string();
    let o = xlac(&["devices", "--all"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let first = out.lines().find(|l| l.starts_with("plugin: ")).unwrap();
    assert_eq!(first, default, "{out}");
    assert!(out.contains("(used by default"), "{out}");
    for path in xlac_runtime::pjrt::plugin::find_all(xlac_runtime::Platform::Cpu) {
        assert!(out.contains(&format!("plugin: {}", path.display())), "{} missing from\n{out}", path.display());
    }
    assert_eq!(out.matches("PJRT API: 0.").count(), out.matches("plugin: ").count(), "{out}");
    // The 0.115 and 0.81 builds (installed in CI) say what xlac compiles them with to avoid their defects.
    let workaround = "compiles with xla_cpu_experimental_ynn_fusion_type=";
    assert_eq!(out.matches(workaround).count(), out.matches("PJRT API: 0.115").count(), "{out}");
    let workaround = "compiles with xla_cpu_use_xnnpack=false";
    assert_eq!(out.matches(workaround).count(), out.matches("PJRT API: 0.81").count(), "{out}");
    if cfg!(target_os = "linux") {
        assert!(out.starts_with("CPU: "), "{out}");
    }
}

fn xlac_with_cache(args: &[&str], cache: &Path) -> Output {
    command(args, cache).output().unwrap()
}

#[test]
fn the_cache_key_is_the_same_in_two_processes_and_places() {
    if !have_plugin() {
        return;
    }
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = |cache: &Path| {
        let o = xlac_with_cache(&["cache", "explain", "fixtures/mlp/model.json", "--bind", "batch=4"], cache);
        assert!(o.status.success(), "{}", text(&o).1);
        text(&o).0.lines().next().unwrap().to_string()
    };
    let first = key(a.path());
    assert!(first.starts_with("key: ") && first.len() == 5 + 64, "{first}");
    assert_eq!(first, key(a.path()));
    assert_eq!(first, key(b.path()));
    let o = xlac_with_cache(&["cache", "explain", "fixtures/mlp/model.json", "--bind", "batch=4"], a.path());
    assert!(text(&o).0.contains("miss: the cache at"), "{}", text(&o).0);
    // XLA_FLAGS change the compiled code, so they change the key.
    let o = command(&["cache", "explain", "fixtures/mlp/model.json", "--bind", "batch=4"], a.path())
        .env("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
        .output()
        .unwrap();
    let flagged = text(&o).0.lines().next().unwrap_or_default().to_string();
    assert!(o.status.success() && flagged.starts_with("key: ") && flagged != first, "{flagged}");
}

#[test]
fn concurrent_writers_leave_one_valid_entry() {
    if !have_plugin() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let args = ["run", "fixtures/cnn/model.json", "--bind", "batch=1"];
    let children: Vec<_> = (0..4)
        .map(|_| {
            command(&args, cache.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for o in &outputs {
        assert!(o.status.success(), "{}", text(o).1);
        assert_eq!(text(o).0, text(&outputs[0]).0);
        assert!(!text(o).1.contains("warning"), "{}", text(o).1);
    }
    let disk = xlac_runtime::cache::disk::DiskCache::open(cache.path(), 1 << 30).unwrap();
    assert_eq!(disk.entries().unwrap().len(), 1);
    let leftovers: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
    // The entry is valid: the next run loads it without a warning and matches.
    let o = xlac_with_cache(&args, cache.path());
    assert!(o.status.success() && !text(&o).1.contains("warning"), "{}", text(&o).1);
    assert_eq!(text(&o).0, text(&outputs[0]).0);
    let o = xlac_with_cache(&["cache", "explain", "fixtures/cnn/model.json", "--bind", "batch=1"], cache.path());
    assert!(text(&o).0.contains("hit: an entry for this key is in the cache"), "{}", text(&o).0);
}

#[test]
fn cache_stats_list_clear_and_no_cache() {
    if !have_plugin() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    let o = xlac_with_cache(&["run", "fixtures/mlp/model.json", "--bind", "batch=2", "--no-cache"], c);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&xlac_with_cache(&["cache", "stats"], c)).0.contains("entries: 0"));
    assert!(xlac_with_cache(&["run", "fixtures/mlp/model.json", "--bind", "batch=2"], c).status.success());
    let stats = text(&xlac_with_cache(&["cache", "stats"], c)).0;
    assert!(stats.contains("entries: 1") && stats.contains("of 2147483648 bytes"), "{stats}");
    let list = text(&xlac_with_cache(&["cache", "list"], c)).0;
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(list.contains("cpu"), "{list}");
    assert!(text(&xlac_with_cache(&["cache", "clear"], c)).0.contains("removed 1 entries"));
    assert!(text(&xlac_with_cache(&["cache", "stats"], c)).0.contains("entries: 0"));
}

#[test]
fn cache_entries_with_odd_fields_are_listed_not_panicked_on() {
    use xlac_runtime::cache::disk::DiskCache;
    use xlac_runtime::cache::key::{CacheKey, KeyComponent};
    let cache = tempfile::tempdir().unwrap();
    let component = |label: &str, digest: &str, shown: &str| KeyComponent {
        label: label.into(),
        digest: digest.into(),
        shown: shown.into(),
    };
    let key = CacheKey {
        hex: "ab".repeat(32),
        components: vec![component("program", "", ""), component("platform_name", "é", "ünïcödé")],
    };
    DiskCache::open(cache.path(), 1 << 20).unwrap().put(&key, b"not an executable").unwrap();
    let o = xlac_with_cache(&["cache", "list"], cache.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.starts_with("abababababababab") && out.contains("ünïcödé"), "{out}");
}

#[test]
fn a_world_writable_cache_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().unwrap();
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = xlac_with_cache(&["cache", "stats"], cache.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("refusing to use this compilation cache directory"), "{}", text(&o).1);
}

#[test]
fn artifacts_compile_and_run_with_and_without_aot() {
    if !have_plugin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let expected = text(&xlac(&["run", "fixtures/mlp/model.json", "--input", "x=fixtures/mlp/inputs/x.npy"])).0;
    for aot in [false, true] {
        let path = dir.path().join(format!("mlp-{aot}.xlac"));
        let mut args = vec!["compile", "fixtures/mlp/model.json", "--bind", "batch=2", "-o", path.to_str().unwrap()];
        if aot {
            // With XLA's statistics too: of the executable the artifact keeps.
            args.extend(["--aot", "--stats"]);
        }
        let o = xlac(&args);
        assert!(o.status.success(), "{}", text(&o).1);
        assert_eq!(text(&o).1.contains("XLA memory: arguments"), aot, "{}", text(&o).1);
        // A fresh, empty cache: the AOT artifact needs no compile at all.
        let empty = tempfile::tempdir().unwrap();
        let o =
            xlac_with_cache(&["run", path.to_str().unwrap(), "--input", "x=fixtures/mlp/inputs/x.npy"], empty.path());
        assert!(o.status.success(), "{}", text(&o).1);
        assert_eq!(text(&o).0, expected);
        let entries = std::fs::read_dir(empty.path())
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "xlacexe"))
            .count();
        assert_eq!(entries, usize::from(!aot), "aot={aot}: an AOT artifact compiles nothing");
    }
    let o = xlac(&["compile", "fixtures/mlp/model.json", "--bind", "batch=2", "--aot"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("--aot needs an artifact output"));
    let bad = dir.path().join("bad.xlac");
    std::fs::write(&bad, b"XLACART\0garbage").unwrap();
    let o = xlac(&["run", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("bad.xlac"), "{}", text(&o).1);
    // The commands that compile say that an artifact is compiled already,
    // and `run` refuses the options that only a compile would apply.
    let built = dir.path().join("mlp-true.xlac");
    for option in [&["--precision", "mixed-bf16"][..], &["-O", "0"], &["--stats"], &["--pipeline", "2"]] {
        let o = xlac(&[&["run", built.to_str().unwrap()][..], option].concat());
        assert_eq!(o.status.code(), Some(1), "{option:?}");
        let err = text(&o).1;
        assert!(err.contains(&format!("{} does not apply to", option[0])) && err.contains("mlp-true.xlac"), "{err}");
    }
    for command in ["bench", "eval", "compile"] {
        let o = xlac(&[command, built.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{command}");
        let err = text(&o).1;
        assert!(err.contains("mlp-true.xlac") && err.contains("`xlac run` runs it"), "{command}: {err}");
    }
}

#[test]
fn pass_debugging_options() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let o = xlac(&[
        "compile",
        "tests/passes/fuse/layer_norm.json",
        "--emit",
        "ir",
        "--stats",
        "--dump-after-each",
        dump.to_str().unwrap(),
        "--stop-after",
        "fuse",
        "--print-after",
        "canonicalize",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("// IR after pass canonicalize") && err.contains("rewrites"), "{err}");
    let fuse = err.lines().find(|l| l.starts_with("fuse ")).unwrap_or_else(|| panic!("a stats line for fuse:\n{err}"));
    assert_eq!(fuse.split_whitespace().nth(3), Some("3"), "fuse rewrites the mean, variance and normalisation: {fuse}");
    let mut files: Vec<String> =
        std::fs::read_dir(&dump).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(
        files,
        ["01-canonicalize.ir", "02-fold-constants.ir", "03-weight-layout.ir", "04-fuse.ir"],
        "stops after fuse"
    );
    assert!(out.contains("layer_norm(%x, %gamma, %beta)"), "{out}");
    // A dump reads back: run dce alone on it.
    let o = xlac(&["compile", dump.join("04-fuse.ir").to_str().unwrap(), "--emit", "ir", "--passes", "dce"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let nodes = text(&o).0.lines().filter(|l| l.trim_start().starts_with('%')).count();
    assert_eq!(nodes, 1, "only the fused node is left:\n{}", text(&o).0);
    let o = xlac(&["compile", "tests/passes/fuse/layer_norm.json", "--passes", "cse,fuze"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("--passes: unknown pass `fuze`; did you mean `fuse`?"), "{}", text(&o).1);
    let o = xlac(&["compile", "tests/passes/fuse/layer_norm.json", "--print-after", "cse,dce"]);
    assert!(text(&o).1.contains("--print-after: unknown pass `cse,dce`"), "{}", text(&o).1);
}

#[test]
fn the_gradient_program_is_emitted_and_run() {
    // The mlp fixture's probabilities summed: a scalar loss whose gradient by every weight is an output.
    let dir = tempfile::tempdir().unwrap();
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("fixtures/mlp/model.json")).unwrap()).unwrap();
    for p in doc["parameters"].as_array_mut().unwrap() {
        p["file"] = root().join("fixtures/mlp").join(p["file"].as_str().unwrap()).display().to_string().into();
    }
    doc["nodes"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"op": "reduce_max", "inputs": ["fc2"], "outputs": ["loss"]}));
    doc["outputs"] = serde_json::json!(["probs", "loss"]);
    let model = dir.path().join("model.json");
    std::fs::write(&model, doc.to_string()).unwrap();
    let m = model.to_str().unwrap();
    let o = xlac(&["compile", m, "--bind", "batch=2", "--emit", "grad-ir"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for w in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"] {
        assert!(out.contains(&format!("grad.{w}=%")), "no gradient of {w}:\n{out}");
    }
    let o = xlac(&["eval", m, "--bind", "batch=2", "--grad", "--wrt", "fc2.bias"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("grad.fc2.bias: f32[8]"), "{out}");
    let o = xlac(&["compile", m, "--bind", "batch=2", "--grad", "--loss", "probs"]);
    assert!(text(&o).1.contains("output `probs` is f32[2,8]; a loss is a float scalar"), "{}", text(&o).1);
    let o = xlac(&["compile", m, "--bind", "batch=2", "--grad", "--wrt", "nope"]);
    assert!(text(&o).1.contains("`nope` is not an input or parameter of the model"), "{}", text(&o).1);
}

#[test]
fn stop_after_a_stage_prints_the_ir_there() {
    let model = "tests/passes/fuse/layer_norm.json";
    let o = xlac(&["compile", model, "--emit", "ir", "--stop-after", "verify"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("%mu = reduce_mean(%x)") && !out.contains("layer_norm("), "not optimised:\n{out}");
    let o = xlac(&["compile", model, "--emit", "ir", "--stop-after", "optimize", "--verify-each"]);
    assert!(text(&o).0.contains("layer_norm(%x, %gamma, %beta)"), "{}", text(&o).1);
    let o = xlac(&["run", model, "--stop-after", "optimize"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("stopped after stage `optimize`; nothing was lowered"), "{}", text(&o).1);
    let o = xlac(&["compile", model, "--stop-after", "optimise"]);
    assert!(text(&o).1.contains("did you mean `optimize`?"), "{}", text(&o).1);
}

#[test]
fn check_precision_names_the_overflow() {
    let o = xlac(&["check-precision", "tests/models/f16_overflow.json", "--precision", "mixed-f16"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("scaled") && out.contains("OVERFLOWS"), "{out}");
    assert!(
        out.contains("first overflow: node `logits` multiplies `scaled`") && out.contains("--keep-f32 logits"),
        "{out}"
    );
    let o = xlac(&["check-precision", "tests/models/f16_overflow.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("needs a low --precision"));
}

#[test]
fn run_sharded_over_a_mesh_matches_one_device() {
    if !have_plugin() {
        return;
    }
    let args = ["run", "fixtures/transformer_block/model.json", "--bind", "batch=4", "--bind", "seq=8", "--seed", "5"];
    let one = xlac(&args);
    assert!(one.status.success(), "{}", text(&one).1);
    // The CPU plugin gets as many devices as the mesh spans.
    let two_d = xlac(&[&args[..], &["--mesh", "data=2,model=2", "--shard", "data,tensor", "--stats"]].concat());
    let (out, err) = text(&two_d);
    assert!(two_d.status.success(), "{err}");
    // Same summary line up to f32 rounding in the last printed digit: compare the shape and the mean.
    let mean = |s: &str| s.split("mean=").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string);
    assert_eq!(mean(&out), mean(&text(&one).0), "{out}");
    assert!(out.starts_with("y: f32[4, 8, 32]"), "{out}");
    assert!(err.contains("propagate-sharding"), "--stats lists the sharding passes: {err}");
    let ir = xlac(&[
        "compile",
        "fixtures/mlp/model.json",
        "--bind",
        "batch=4",
        "--mesh",
        "model=2",
        "--shard",
        "tensor",
        "--emit",
        "ir",
    ]);
    assert!(text(&ir).0.contains("param %fc1.weight: f32[16,32] sharding [_,model]"), "{}", text(&ir).0);
    // A mesh larger than the devices asked for.
    let o = xlac(&[&args[..], &["--mesh", "data=4", "--shard", "data", "--cpu-devices", "2"]].concat());
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("runs on 4 devices") && err.contains("the client has 2"), "{err}");
    // A bad mesh and an unknown policy are usage errors.
    assert_eq!(xlac(&[&args[..], &["--mesh", "data"]].concat()).status.code(), Some(2));
    assert_eq!(xlac(&[&args[..], &["--shard", "pipeline"]].concat()).status.code(), Some(2));
}

#[test]
fn a_pipelined_run_equals_one_device_and_reports_its_stages() {
    if !have_plugin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let model = "fixtures/transformer_block/model.json";
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec!["run", model, "--bind", "batch=8", "--bind", "seq=8", "--out-dir", out.to_str().unwrap()];
        args.extend(extra);
        xlac(&args)
    };
    let o = run(&one, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let o = run(&two, &["--pipeline", "2", "--microbatches", "4"]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("pipeline: 2 stages, 4 micro-batches (GPipe)") && err.contains("bubble: measured"), "{err}");
    let (a, b) =
        (xlac_runtime::npy::read(&one.join("y.npy")).unwrap(), xlac_runtime::npy::read(&two.join("y.npy")).unwrap());
    for (x, y) in a.to_f64_vec().iter().zip(b.to_f64_vec()) {
        assert!((x - y).abs() <= 1e-5 * x.abs() + 1e-5, "{x} vs {y}");
    }
    // By hand: the second stage starts at the attention's output projection.
    let o = run(&two, &["--pipeline", "2", "--stages", "attn.out"]);
    let (_, err) = text(&o);
    assert!(o.status.success() && err.contains("attn.out … y"), "{err}");
    let e = text(&run(&two, &["--pipeline", "2", "--microbatches", "3"])).1;
    assert!(e.contains("does not split into 3 micro-batches"), "{e}");
    let e = text(&run(&two, &["--pipeline", "2", "--stages", "nowhere"])).1;
    assert!(e.contains("no node is named `nowhere`"), "{e}");
    let e = text(&xlac(&[
        "run",
        "fixtures/mlp/model.json",
        "--bind",
        "batch=8",
        "--pipeline",
        "40",
        "--microbatches",
        "2",
    ]))
    .1;
    assert!(e.contains("cannot be cut into 40 stages"), "{e}");
}

#[test]
fn onnx_models_import_run_and_report_what_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mlp.json");
    let o = xlac(&["import", "onnx", "fixtures/onnx/symbolic.onnx", "-o", out.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("mlp.safetensors"), "{err}");
    assert!(dir.path().join("mlp.safetensors").exists());
    let o = xlac(&["import", "onnx", "fixtures/onnx/unsupported.onnx", "-o", out.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("operator NonZero (opset 17)") && err.contains("3 errors"), "{err}");
    let o = xlac(&["import", "hf", "fixtures/hf/bert", "-o", out.to_str().unwrap(), "--bind", "batch=2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("--bind: a checkpoint's symbols are bound when it runs"), "{}", text(&o).1);
    let o = xlac(&["onnx-test", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("no case (expected DIR/<kind>/<case>/model.onnx"), "{}", text(&o).1);
    if !have_plugin() {
        return;
    }
    let o = xlac(&["run", "fixtures/onnx/symbolic.onnx", "--input", "x=fixtures/onnx/inputs/x.npy"]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(stdout.contains("y: f32[3, 2, 4]"), "{stdout}");
    // It trains (mse on y), saves a model.json that runs without the .onnx, and resumes.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let floats = |n: usize| (0..n).flat_map(|i| ((i % 7) as f32 / 7.0).to_le_bytes()).collect::<Vec<u8>>();
    let x = xlac_runtime::HostTensor::new(xlac_runtime::DType::F32, vec![8, 16], floats(8 * 16)).unwrap();
    let labels = xlac_runtime::HostTensor::new(xlac_runtime::DType::F32, vec![8, 2, 4], floats(8 * 8)).unwrap();
    xlac_runtime::npy::write(&data.join("x.npy"), &x).unwrap();
    xlac_runtime::npy::write(&data.join("labels.npy"), &labels).unwrap();
    let save = dir.path().join("trained");
    let train = |steps: &str, flag: &str| {
        let args = ["train", "fixtures/onnx/symbolic.onnx", "--data", data.to_str().unwrap(), "--loss", "mse"];
        let more = ["--output", "y", "--optimizer", "adamw", "--lr", "0.01", "--batch", "4", "--steps", steps];
        xlac(&[&args[..], &more[..], &[flag, save.to_str().unwrap()]].concat())
    };
    let o = train("2", "--save");
    assert!(o.status.success(), "{}", text(&o).1);
    let trained = save.join("model.json");
    let o = xlac(&["run", trained.to_str().unwrap(), "--input", "x=fixtures/onnx/inputs/x.npy"]);
    assert!(o.status.success() && text(&o).0.contains("y: f32[3, 2, 4]"), "{}", text(&o).1);
    let o = train("4", "--resume");
    assert!(o.status.success() && text(&o).1.contains("step 4/4"), "{}", text(&o).1);
}

#[test]
fn hugging_face_checkpoints_import_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bert.json");
    let o = xlac(&["import", "hf", "fixtures/hf/bert", "-o", out.to_str().unwrap(), "--pooling", "mean"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let doc = std::fs::read_to_string(&out).unwrap();
    assert!(doc.contains("\"tensor\": \"encoder.layer.1.output.dense.weight\""), "{doc}");
    let o = xlac(&["import", "hf", "fixtures/mlp", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("config.json"), "{}", text(&o).1);
    if !have_plugin() {
        return;
    }
    // A checkpoint directory runs directly; batch and seq are bound at run time.
    let o = xlac(&["run", "fixtures/hf/gpt2", "--bind", "batch=3", "--bind", "seq=5"]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        stdout.contains("last_hidden_state: f32[3, 5, 32]") && stdout.contains("logits: f32[3, 5, 96]"),
        "{stdout}"
    );
    let o = xlac(&["run", out.to_str().unwrap(), "--bind", "batch=2", "--bind", "seq=4"]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(stdout.contains("sentence_embedding: f32[2, 32]"), "{stdout}");
    // Random token ids and masks (integers in 0..8) give finite results: any nonzero mask value attends.
    assert!(!stdout.contains("nan="), "{stdout}");
}

#[test]
fn bench_reports_compile_times_latency_and_flops() {
    if !have_plugin() {
        return;
    }
    let o = xlac(&["bench", "fixtures/mlp/model.json", "--bind", "batch=8", "--runs", "5", "--warmup", "1", "--json"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["runs"], 5);
    for key in ["compile_cold_ms", "compile_cached_ms", "median_ms", "p10_ms", "p90_ms", "load_ms"] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {r}");
    }
    assert!(r["min_ms"].as_f64() <= r["median_ms"].as_f64() && r["median_ms"].as_f64() <= r["max_ms"].as_f64());
    // 2·8·16·32 + 2·8·32·8 multiply-adds at least (XLA counts the rest too).
    assert!(r["flops"].as_f64().is_some_and(|f| f >= 12288.0), "{r}");
    // The machine: benchmarks move between CPUs, so each says which.
    if cfg!(target_os = "linux") {
        assert!(r["cpu"].as_str().is_some_and(|c| !c.is_empty()) && r["cpu_features"].is_array(), "{r}");
    }
    assert!(r["notes"].is_array(), "{r}");
    let o = xlac(&["bench", "fixtures/mlp/model.json", "--bind", "batch=8", "--runs", "2"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("execute: median") && out.contains("GFLOP/s") && out.contains("cached"), "{out}");
    assert!(out.lines().nth(1).is_some_and(|l| l.starts_with("cpu: ")), "{out}");
    // A model without weights: the load's memory growth in MB, not as a multiple of no weights.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("add.json");
    let add = r#"{"format_version": 1, "name": "add", "inputs": [{"name": "x", "dtype": "f32", "shape": [4]}],
        "nodes": [{"op": "add", "inputs": ["x", "x"], "outputs": ["y"]}], "outputs": ["y"]}"#;
    std::fs::write(&model, add).unwrap();
    let o = xlac(&["bench", model.to_str().unwrap(), "--runs", "2"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let load = out.lines().find(|l| l.starts_with("load: ")).unwrap_or_default();
    assert!(load.contains("0.0 MB of weights") && !load.contains("x the weights"), "{out}");
}

/// The mlp fixture's data and reference trajectory from PyTorch (fixtures/train/generate.py).
fn train_case() -> PathBuf {
    root().join("fixtures/train/mlp_sgd_momentum")
}

const TRAIN_FLAGS: [&str; 14] = [
    "--loss",
    "cross-entropy",
    "--output",
    "fc2",
    "--optimizer",
    "sgd",
    "--lr",
    "0.1",
    "--momentum",
    "0.9",
    "--dampening",
    "0.1",
    "--weight-decay",
    "0.01",
];

#[test]
fn train_follows_pytorch_logs_and_saves_a_model_that_runs() {
    if !have_plugin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (log, saved) = (dir.path().join("train.jsonl"), dir.path().join("trained"));
    let data = train_case().join("data");
    let mut args =
        vec!["train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap(), "--steps", "20", "--batch", "6"];
    args.extend(TRAIN_FLAGS);
    args.extend(["--log", log.to_str().unwrap(), "--save", saved.to_str().unwrap()]);
    args.extend(["--eval-data", data.to_str().unwrap(), "--eval-every", "10"]);
    let o = xlac(&args);
    assert!(o.status.success(), "{}", text(&o).1);
    let want = xlac_runtime::npy::read(&train_case().join("expected/loss.npy")).unwrap().to_f64_vec();
    let mut lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Evaluations at steps 10 and 20, each after its step's line; the last is the trained model's.
    let evals: Vec<serde_json::Value> = lines.iter().filter(|l| l.get("eval_loss").is_some()).cloned().collect();
    lines.retain(|l| l.get("eval_loss").is_none());
    assert_eq!(evals.iter().map(|e| e["step"].as_u64().unwrap()).collect::<Vec<_>>(), [10, 20]);
    let scalar = |name: &str| {
        xlac_runtime::npy::read(&train_case().join(format!("expected/{name}.npy"))).unwrap().to_f64_vec()[0]
    };
    let (eval_loss, eval_accuracy) =
        (evals[1]["eval_loss"].as_f64().unwrap(), evals[1]["eval_accuracy"].as_f64().unwrap());
    assert!(
        (eval_loss - scalar("eval_loss")).abs() <= 1e-4 * scalar("eval_loss"),
        "eval loss {eval_loss} vs PyTorch {}",
        scalar("eval_loss")
    );
    assert_eq!(eval_accuracy, scalar("eval_accuracy"));
    assert_eq!(evals[1]["eval_examples"], 6);
    assert_eq!(lines.len(), 20);
    for (i, (line, want)) in lines.iter().zip(&want).enumerate() {
        assert_eq!(line["step"], i + 1);
        let got = line["loss"].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-5 * want.abs(), "step {}: loss {got}, PyTorch {want}", i + 1);
        assert!(line["lr"].is_f64() && line["grad_norm"].is_f64() && line["examples_per_s"].is_f64(), "{line}");
    }
    // The saved model runs, with PyTorch's final weights.
    let o = xlac(&[
        "run",
        saved.join("model.json").to_str().unwrap(),
        "--input",
        &format!("x={}", data.join("x.npy").display()),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    for name in ["fc1.weight", "fc2.bias"] {
        let (_, _, bytes) = xlac_core_read(&saved.join("model.safetensors"), name);
        let want = xlac_runtime::npy::read(&train_case().join(format!("expected/{name}.npy"))).unwrap();
        let got: Vec<f64> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect();
        for (g, w) in got.iter().zip(want.to_f64_vec()) {
            assert!((g - w).abs() <= 1e-4 * w.abs() + 1e-5, "{name}: {g} vs PyTorch {w}");
        }
    }
}

/// A training step updates its weight matrices in place: XLA's optimised
/// program copies none of them before the step's products read it (the
/// update waits for the gradients' norm, so XLA sees every read of the old
/// weights come first). Checked in the program XLA dumps, under the
/// caller's XLA_FLAGS (CI's included).
#[test]
fn a_train_step_updates_its_weight_matrices_without_copying_them() {
    if !have_plugin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let data = train_case().join("data");
    let mut args = vec!["train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap(), "--steps", "1"];
    args.extend(["--batch", "6", "--optimizer", "adamw", "--loss", "cross-entropy", "--lr", "0.01"]);
    let flags = format!(
        "{} --xla_dump_to={} --xla_dump_hlo_as_text",
        std::env::var("XLA_FLAGS").unwrap_or_default(),
        dump.display()
    );
    let o = command(&args, &dir.path().join("cache")).env("XLA_FLAGS", flags).output().unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let programs: Vec<String> = std::fs::read_dir(&dump)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".cpu_after_optimizations.txt"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(!programs.is_empty(), "XLA wrote no optimised program to {}", dump.display());
    // `%copy.2 = f32[32,8]{1,0} copy(%Arg_4.1), …`: a parameter of rank 2 or more copied.
    let copies_a_matrix = |line: &&str| {
        let ty = line.split(" = ").nth(1).and_then(|rest| rest.split(" copy(%Arg_").next()).unwrap_or("");
        line.contains(" copy(%Arg_") && ty.split('{').next().is_some_and(|dims| dims.contains(','))
    };
    let copied: Vec<&str> = programs.iter().flat_map(|p| p.lines()).filter(copies_a_matrix).collect();
    assert!(copied.is_empty(), "weights copied before their update: {copied:#?}");
}

/// `xlac train` restarts itself once with glibc asked for huge pages where the
/// kernel gives them on request, says what the process got, and the restarted
/// run trains as a run the user kept from restarting does, loss for loss.
#[test]
fn training_asks_for_huge_pages_by_restarting_and_trains_the_same() {
    if !have_plugin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = train_case().join("data");
    let train = |log: &Path, tunables: Option<&str>| {
        let mut args = vec!["train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap()];
        args.extend(["--steps", "3", "--batch", "6", "--log", log.to_str().unwrap()]);
        args.extend(TRAIN_FLAGS);
        let mut c = command(&args, cache_dir());
        match tunables {
            Some(t) => c.env("GLIBC_TUNABLES", t),
            None => c.env_remove("GLIBC_TUNABLES"),
        };
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", text(&o).1);
        let said = text(&o).1.lines().find_map(|l| l.strip_prefix("huge pages: ").map(String::from));
        (said.unwrap_or_else(|| panic!("no huge-page line in {}", text(&o).1)), logged_losses(log))
    };
    let (asked, restarted) = train(&dir.path().join("asked.jsonl"), None);
    let (off, kept) = train(&dir.path().join("off.jsonl"), Some("glibc.malloc.hugetlb=0"));
    let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
    let (want_asked, want_off) = match () {
        _ if !glibc || mode.is_empty() => ("not known", "not known"),
        _ if mode.contains("[madvise]") => ("asked of glibc", "off"),
        _ if mode.contains("[always]") => ("given by the kernel", "given by the kernel"),
        _ => ("off", "off"),
    };
    assert!(asked.starts_with(want_asked), "kernel mode {mode:?}, GLIBC_TUNABLES unset: {asked}");
    assert!(off.starts_with(want_off), "kernel mode {mode:?}, glibc.malloc.hugetlb=0: {off}");
    assert_eq!(restarted.len(), 3);
    assert_eq!(restarted, kept);
}

/// The loss of every step a `--log` file holds, in order.
fn logged_losses(log: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect()
}

/// A tensor of a safetensors file, read with the runtime's own reader.
fn xlac_core_read(path: &Path, name: &str) -> (String, Vec<usize>, Vec<u8>) {
    let f = xlac_runtime::weights::WeightFile::open(path).unwrap();
    let t = f.tensor(name).unwrap();
    (t.ty.to_string(), t.shape.to_vec(), t.data.to_vec())
}

#[test]
fn bad_training_data_is_refused_before_compiling() {
    let data = train_case().join("data");
    let train = |dir: &Path, extra: &[&str]| {
        let mut args = vec!["train", "fixtures/mlp/model.json", "--data", dir.to_str().unwrap(), "--steps", "1"];
        args.extend(TRAIN_FLAGS);
        args.extend(if extra.is_empty() { &["--batch", "6"][..] } else { extra });
        let o = xlac(&args);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o).1);
        text(&o).1
    };
    let copy = |skip: &str| {
        let d = tempfile::tempdir().unwrap();
        for f in ["x.npy", "labels.npy"].iter().filter(|f| **f != skip) {
            std::fs::copy(data.join(f), d.path().join(f)).unwrap();
        }
        d
    };
    let no_labels = copy("labels.npy");
    assert!(train(no_labels.path(), &[]).contains("labels.npy is missing"));
    let extra = copy("");
    std::fs::copy(data.join("x.npy"), extra.path().join("y.npy")).unwrap();
    let e = train(extra.path(), &[]);
    assert!(e.contains("input `y`: the model has no such input (inputs: x)"), "{e}");
    let e = train(&data, &["--batch", "7"]);
    assert!(e.contains("6 examples, fewer than one batch of 7"), "{e}");
    let wrong = copy("x.npy");
    let x = xlac_runtime::HostTensor::from_array(&ndarray::Array2::<f32>::zeros((6, 15)));
    xlac_runtime::npy::write(&wrong.path().join("x.npy"), &x).unwrap();
    let e = train(wrong.path(), &[]);
    assert!(e.contains("input `x`: given shape [6,15] does not match the declared shape [batch=6,16]"), "{e}");
    let range = copy("labels.npy");
    let labels = xlac_runtime::HostTensor::from_array(&ndarray::array![0i64, 1, 2, 8, 3, -100]);
    xlac_runtime::npy::write(&range.path().join("labels.npy"), &labels).unwrap();
    let e = train(range.path(), &[]);
    assert!(e.contains("labels.npy holds label 8, outside 0..8 (or -100, ignored)"), "{e}");
}

/// Trains `model` for `steps` steps, and for `part` steps then resumed to
/// `steps`; asserts the resumed steps' logs and the saved files equal the
/// uninterrupted run's. Returns the directory (`whole`, `part`, `rest`).
fn resumed_equals_uninterrupted(
    model: &str,
    data: &Path,
    flags: &[&str],
    steps: usize,
    part: usize,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let run = |steps: usize, extra: &[String]| {
        let mut args: Vec<String> = ["train", model, "--data", data.to_str().unwrap()].map(String::from).to_vec();
        args.extend(flags.iter().map(|s| s.to_string()));
        args.extend(["--batch".into(), "2".into(), "--seed".into(), "5".into(), "--steps".into(), steps.to_string()]);
        args.extend(extra.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = xlac(&refs);
        assert!(o.status.success(), "{}", text(&o).1);
    };
    run(steps, &["--log".into(), p("whole.jsonl"), "--save".into(), p("whole")]);
    run(part, &["--save".into(), p("part")]);
    run(steps, &["--resume".into(), p("part"), "--log".into(), p("rest.jsonl"), "--save".into(), p("rest")]);
    let lines = |f: &str| std::fs::read_to_string(p(f)).unwrap().lines().map(str::to_string).collect::<Vec<_>>();
    let (whole, rest) = (lines("whole.jsonl"), lines("rest.jsonl"));
    assert_eq!(rest.len(), steps - part);
    let strip = |l: &str| {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        v.as_object_mut().unwrap().remove("examples_per_s");
        v
    };
    for (w, r) in whole[part..].iter().zip(&rest) {
        assert_eq!(strip(w), strip(r), "the resumed step differs");
    }
    for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        let (a, b) = (
            std::fs::read(dir.path().join("whole").join(file)).unwrap(),
            std::fs::read(dir.path().join("rest").join(file)).unwrap(),
        );
        assert!(a == b, "{file} differs");
    }
    dir
}

#[test]
fn a_resumed_run_with_dropout_draws_what_the_uninterrupted_one_drew() {
    if !have_plugin() {
        return;
    }
    let data = root().join("fixtures/train/gpt2_causal_lm_adamw/data");
    // GPT-2's checkpoint dropout (0.1): each step's masks come from the seed and the step number.
    let flags = ["--task", "causal-lm", "--optimizer", "adamw", "--lr", "0.003"];
    let dir = resumed_equals_uninterrupted("fixtures/hf/gpt2", &data, &flags, 6, 3);
    // And dropout changed the trajectory: without it, the losses differ.
    let log = dir.path().join("plain.jsonl");
    #[rustfmt::skip]
    let o = xlac(&[
        "train", "fixtures/hf/gpt2", "--data", data.to_str().unwrap(), "--task", "causal-lm", "--optimizer", "adamw",
        "--lr", "0.003", "--batch", "2", "--seed", "5", "--steps", "6", "--dropout", "0", "--log", log.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let (with, without) = (logged_losses(&dir.path().join("whole.jsonl")), logged_losses(&log));
    assert!(with.iter().zip(&without).all(|(a, b)| a != b), "{with:?} vs {without:?}");
}

#[test]
fn a_resumed_run_equals_the_uninterrupted_one_bit_for_bit() {
    if !have_plugin() {
        return;
    }
    let data = train_case().join("data");
    // Batches of 2 from 6 examples: three per epoch, so the run crosses reshuffles.
    let dir = resumed_equals_uninterrupted("fixtures/mlp/model.json", &data, &TRAIN_FLAGS, 20, 7);
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let o = xlac(&[
        "train",
        "fixtures/mlp/model.json",
        "--data",
        data.to_str().unwrap(),
        "--resume",
        &p("rest"),
        "--steps",
        "20",
        "--batch",
        "2",
        "--loss",
        "cross-entropy",
        "--output",
        "fc2",
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
    ]);
    assert!(text(&o).1.contains("the saved run already made 20 steps"), "{}", text(&o).1);
}

#[test]
fn data_parallel_training_with_zero_follows_pytorch_and_resumes_exactly() {
    if !have_plugin() {
        return;
    }
    let data = train_case().join("data");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("train.jsonl");
    let mut args =
        vec!["train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap(), "--steps", "20", "--batch", "6"];
    args.extend(TRAIN_FLAGS);
    args.extend(["--mesh", "data=2", "--shard", "data", "--zero", "3", "--log", log.to_str().unwrap()]);
    let o = xlac(&args);
    assert!(o.status.success(), "{}", text(&o).1);
    follows_reference(&log, &train_case());
    // Split over two devices, saved at step 7 and resumed: the run it would have been.
    let mut flags = TRAIN_FLAGS.to_vec();
    flags.extend(["--mesh", "data=2", "--shard", "data", "--zero", "1"]);
    resumed_equals_uninterrupted("fixtures/mlp/model.json", &data, &flags, 12, 7);
}

#[test]
fn pipelined_training_follows_transformers_evaluates_and_resumes_exactly() {
    if !have_plugin() {
        return;
    }
    // GPT-2 (its embedding tied to its head, across the stages) on two stages, two
    // micro-batches of 2 per step under 1F1B: transformers' trajectory on batches of 4.
    let case = root().join("fixtures/train/gpt2_causal_lm_adamw");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let data = case.join("data");
    #[rustfmt::skip]
    let o = xlac(&[
        "train", "fixtures/hf/gpt2", "--data", data.to_str().unwrap(), "--task", "causal-lm", "--optimizer", "adamw",
        "--lr", "0.003", "--schedule", "linear", "--warmup", "4", "--clip-norm", "1.0", "--steps", "20",
        "--batch", "2", "--dropout", "0", "--pipeline", "2", "--microbatches", "2", "--pipeline-schedule", "1f1b",
        "--log", log.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    follows_reference(&log, &case);
    let err = text(&o).1;
    for part in ["pipeline: 2 stages on devices [0, 1], 2 micro-batches of 2 per step (1f1b)", "stashed", "bubble:"] {
        assert!(err.contains(part), "{err}");
    }
    // Saved at step 3 and resumed: the run it would have been.
    #[rustfmt::skip]
    let flags = ["--task", "causal-lm", "--optimizer", "adamw", "--lr", "0.003", "--pipeline", "2", "--microbatches", "2"];
    resumed_equals_uninterrupted("fixtures/hf/gpt2", &data, &flags, 6, 3);
    // Evaluated from the stages' weights: what one device's run evaluates.
    let eval = |extra: &[&str]| -> f64 {
        let log = dir.path().join("eval.jsonl");
        #[rustfmt::skip]
        let mut args = vec![
            "train", "fixtures/hf/gpt2", "--data", data.to_str().unwrap(), "--task", "causal-lm", "--optimizer",
            "adamw", "--lr", "0.003", "--steps", "2", "--dropout", "0", "--eval-data", data.to_str().unwrap(),
            "--log", log.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = xlac(&args);
        assert!(o.status.success(), "{}", text(&o).1);
        let text = std::fs::read_to_string(&log).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        last["eval_loss"].as_f64().unwrap()
    };
    let (pipelined, one) = (eval(&["--batch", "2", "--pipeline", "2", "--microbatches", "2"]), eval(&["--batch", "4"]));
    assert!((pipelined - one).abs() <= 1e-5 * one.abs(), "eval loss {pipelined}, one device {one}");
}

#[test]
fn pipelined_training_over_a_data_parallel_mesh_per_stage_equals_one_device() {
    if !have_plugin() {
        return;
    }
    // Two stages of two devices each: micro-batches of 2 split over each stage's two devices.
    let data = train_case().join("data");
    let dir = tempfile::tempdir().unwrap();
    let losses = |log: &str, extra: &[&str]| -> (Vec<f64>, String) {
        let log = dir.path().join(log);
        let mut args = vec!["train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap(), "--steps", "6"];
        args.extend(TRAIN_FLAGS);
        args.extend(["--log", log.to_str().unwrap()]);
        args.extend(extra);
        let o = xlac(&args);
        assert!(o.status.success(), "{}", text(&o).1);
        (logged_losses(&log), text(&o).1)
    };
    let (one, _) = losses("one.jsonl", &["--batch", "4"]);
    let flags = ["--batch", "2", "--pipeline", "2", "--microbatches", "2", "--mesh", "data=2", "--shard", "data"];
    let (split, err) = losses("split.jsonl", &flags);
    assert!(err.contains("pipeline: 2 stages on devices [0, 1, 2, 3]"), "{err}");
    for (s, o) in split.iter().zip(&one) {
        assert!((s - o).abs() <= 1e-5 * o.abs(), "{split:?} vs {one:?}");
    }
}

#[test]
fn pipelined_training_refuses_what_it_does_not_combine_with() {
    if !have_plugin() {
        return;
    }
    let data = train_case().join("data");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap(), "--steps", "1"];
        args.extend(TRAIN_FLAGS);
        args.extend(["--batch", "2"]);
        args.extend(extra);
        let o = xlac(&args);
        assert!(!o.status.success(), "{extra:?} was accepted");
        text(&o).1
    };
    assert!(train(&["--pipeline", "2", "--accumulate", "2"]).contains("cannot be used with"));
    assert!(train(&["--pipeline", "2", "--mesh", "model=2", "--shard", "tensor"]).contains("over `data` only"));
    assert!(train(&["--pipeline", "2", "--mesh", "model=2"]).contains("over `data` only"));
    assert!(train(&["--pipeline", "2", "--remat", "layers"]).contains("already recomputes its forward pass"));
    assert!(train(&["--pipeline", "2", "--mesh", "data=2", "--zero", "1"]).contains("holds its weights and optimizer"));
    assert!(train(&["--microbatches", "2"]).contains("--pipeline"));
    assert!(train(&["--pipeline", "2", "--precision", "mixed-f16"])
        .contains("dynamic loss scaling (mixed-f16) is not pipelined"));
    assert!(train(&["--pipeline", "200", "--microbatches", "1"]).contains("cannot be cut into 200 stages"));
    assert!(train(&["--pipeline", "2", "--pipeline-schedule", "interleaved"]).contains("expected gpipe or 1f1b"));
    assert!(train(&["--pipeline", "2", "--stages", "nowhere"]).contains("no node is named `nowhere`"));
    let mut args = vec!["sweep", "fixtures/mlp/model.json", "--data", data.to_str().unwrap(), "--steps", "1"];
    args.extend(TRAIN_FLAGS);
    args.extend(["--batch", "2", "--eval-data", data.to_str().unwrap(), "--param", "lr=0.1,0.2", "--pipeline", "2"]);
    let o = xlac(&args);
    assert!(!o.status.success() && text(&o).1.contains("--pipeline does not apply"), "{}", text(&o).1);
}

#[test]
fn a_classifier_with_dropout_trains_and_evaluates_split_as_on_one_device() {
    if !have_plugin() {
        return;
    }
    let case = root().join("fixtures/train/bert_sequence_classification_adamw");
    let dir = tempfile::tempdir().unwrap();
    let train = |log: &str, extra: &[&str]| {
        let (data, log) = (case.join("data"), dir.path().join(log));
        let checkpoint = case.join("checkpoint");
        let mut args = vec!["train", checkpoint.to_str().unwrap(), "--task", "sequence-classification"];
        let data = data.to_str().unwrap();
        args.extend(["--data", data, "--eval-data", data, "--optimizer", "adamw", "--lr", "1e-3"]);
        args.extend(["--batch", "6", "--steps", "4", "--eval-every", "2", "--log", log.to_str().unwrap()]);
        args.extend(extra);
        let o = xlac(&args);
        assert!(o.status.success(), "{}", text(&o).1);
        std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| v.get("loss").or(v.get("eval_loss")).and_then(|x| x.as_f64()).unwrap())
            .collect::<Vec<f64>>()
    };
    // The checkpoint's dropout is on: the split step draws the one-device step's masks.
    let one = train("one.jsonl", &[]);
    for (log, layout) in [("tp.jsonl", ["model=2", "tensor"]), ("2d.jsonl", ["data=2,model=2", "data,tensor"])] {
        let split = train(log, &["--mesh", layout[0], "--shard", layout[1]]);
        assert_eq!(split.len(), one.len());
        for (a, b) in split.iter().zip(&one) {
            assert!((a - b).abs() <= 1e-5 * b.abs(), "{layout:?}: {a} vs one device {b}");
        }
    }
}

#[test]
fn parallel_training_options_that_cannot_work_are_refused() {
    let data = train_case().join("data");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap(), "--steps", "1"];
        args.extend(TRAIN_FLAGS);
        args.extend(extra);
        text(&xlac(&args)).1
    };
    let e = train(&["--batch", "6", "--zero", "1"]);
    assert!(e.contains("--mesh"), "{e}");
    let e = train(&["--batch", "6", "--mesh", "data=2", "--shard", "data", "--zero", "4"]);
    assert!(e.contains("ZeRO has stages 0 to 3, not 4"), "{e}");
    let e = train(&["--batch", "6", "--mesh", "model=2", "--shard", "data", "--zero", "1"]);
    assert!(e.contains("needs a mesh axis named `data`"), "{e}");
    let e = train(&["--batch", "3", "--mesh", "data=2", "--shard", "data"]);
    assert!(e.contains("input `x`") && e.contains("does not divide over axis `data` of size 2"), "{e}");
}

/// `xlac sweep` on the MLP case with AdamW and `extra`.
fn sweep_mlp(extra: &[&str]) -> Output {
    let data = train_case().join("data");
    let mut args =
        vec!["sweep", "fixtures/mlp/model.json", "--data", data.to_str().unwrap(), "--loss", "cross-entropy"];
    args.extend(["--output", "fc2", "--optimizer", "adamw", "--steps", "20", "--batch", "6"]);
    args.extend(extra);
    xlac(&args)
}

#[test]
fn a_grid_sweep_runs_one_step_program_and_saves_the_best_trial_as_train_would() {
    if !have_plugin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let best = dir.path().join("best");
    let grid = |extra: &[&str]| {
        let mut args = vec!["--grid", "--param", "lr=0.003,0.03", "--param", "schedule=linear,cosine"];
        args.extend(["--param", "warmup=0,4"]);
        args.extend(extra);
        sweep_mlp(&args)
    };
    let o = grid(&["--save", best.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let rows: Vec<Vec<&str>> =
        out.lines().skip(1).take_while(|l| !l.contains("trials")).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 8, "a 2x2x2 grid:\n{out}");
    assert!(out.contains("8 trials on one step program, loaded once per device (1 device(s))"), "{out}");
    let losses: Vec<f64> = rows.iter().map(|r| r[4].parse().unwrap()).collect();
    assert!(losses.windows(2).all(|w| w[0] <= w[1]), "best first:\n{out}");
    // The best trial, trained by `xlac train` with its values, saves the same weights, bit for bit.
    let (lr, schedule, warmup) = (rows[0][1], rows[0][2], rows[0][3]);
    assert_eq!(rows[0][5], "best");
    let lr = if lr == "0.0300" { "0.03" } else { "0.003" };
    let again = dir.path().join("again");
    let data = train_case().join("data");
    let o = xlac(&[
        "train",
        "fixtures/mlp/model.json",
        "--data",
        data.to_str().unwrap(),
        "--loss",
        "cross-entropy",
        "--output",
        "fc2",
        "--optimizer",
        "adamw",
        "--steps",
        "20",
        "--batch",
        "6",
        "--lr",
        lr,
        "--schedule",
        schedule,
        "--warmup",
        warmup,
        "--save",
        again.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let (a, b) = (std::fs::read(best.join(file)).unwrap(), std::fs::read(again.join(file)).unwrap());
        assert!(a == b, "{file}: the sweep's best trial and `xlac train` with its values differ");
    }
    // Two trials at a time, each on a device of its own: the same table and the same best trial.
    let side_by_side = dir.path().join("parallel");
    let o = grid(&["--parallel", "2", "--save", side_by_side.to_str().unwrap()]);
    let (parallel_out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let table = |t: &str| t.lines().take_while(|l| !l.contains("trials on")).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(table(&parallel_out), table(&out));
    assert!(parallel_out.contains("(2 device(s))"), "{parallel_out}");
    let (a, b) = (
        std::fs::read(best.join("model.safetensors")).unwrap(),
        std::fs::read(side_by_side.join("model.safetensors")).unwrap(),
    );
    assert!(a == b, "the parallel sweep saved another best trial");
}

#[test]
fn a_random_sweep_prunes_trials_worse_than_the_median() {
    if !have_plugin() {
        return;
    }
    let o = sweep_mlp(&[
        "--trials",
        "10",
        "--param",
        "lr=log:1e-4:1e-1",
        "--param",
        "weight_decay=0,0.01,0.1",
        "--prune",
        "median",
        "--eval-every",
        "5",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let rows: Vec<&str> = out.lines().skip(1).take_while(|l| !l.contains("trials")).collect();
    assert_eq!(rows.len(), 10, "{out}");
    let pruned = rows.iter().filter(|r| r.contains("pruned at step")).count();
    assert!(pruned > 0 && pruned <= 5, "the first five trials are never pruned:\n{out}");
    assert_eq!(rows.iter().filter(|r| r.ends_with("best")).count(), 1, "{out}");
    assert!(err.contains("trial 10/10: lr="), "{err}");
}

#[test]
fn sweep_parameters_that_cannot_work_are_refused() {
    let e = |extra: &[&str]| text(&sweep_mlp(extra)).1;
    assert!(e(&["--param", "momentum=0.9"]).contains("not a hyperparameter a sweep varies"));
    assert!(e(&["--grid", "--param", "lr=log:1e-5:1e-2"]).contains("--grid takes lists"));
    assert!(e(&["--param", "weight_decay=0,0.1"]).contains("give --lr, or vary it"));
    let sgd = text(&xlac(&[
        "sweep",
        "fixtures/mlp/model.json",
        "--data",
        train_case().join("data").to_str().unwrap(),
        "--loss",
        "cross-entropy",
        "--output",
        "fc2",
        "--optimizer",
        "sgd",
        "--steps",
        "2",
        "--batch",
        "6",
        "--param",
        "lr=0.1",
        "--param",
        "beta1=0.8,0.9",
    ]))
    .1;
    assert!(sgd.contains("sgd has no betas to vary"), "{sgd}");
    assert!(e(&["--lr", "0.1", "--param", "lr=0.1", "--resume", "x"]).contains("--resume"));
}

#[test]
fn frozen_parameters_stay_as_they_were() {
    if !have_plugin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("trained");
    let data = train_case().join("data");
    let mut args =
        vec!["train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap(), "--steps", "3", "--batch", "6"];
    args.extend(TRAIN_FLAGS);
    args.extend(["--freeze", "fc1.*", "--save", saved.to_str().unwrap()]);
    let o = xlac(&args);
    assert!(o.status.success(), "{}", text(&o).1);
    // Only fc2 was trained: the saved weights and optimizer state hold nothing of fc1.
    let weights = xlac_runtime::weights::WeightFile::open(&saved.join("model.safetensors")).unwrap();
    assert_eq!(weights.names(), ["fc2.bias", "fc2.weight"]);
    let state = xlac_runtime::weights::WeightFile::open(&saved.join("optimizer.safetensors")).unwrap();
    assert!(state.names().iter().all(|n| !n.starts_with("fc1")), "{:?}", state.names());
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("model.json")).unwrap()).unwrap();
    let fc1 = doc["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "fc1.weight").unwrap();
    assert!(fc1["file"].as_str().unwrap().ends_with("fixtures/mlp/weights.safetensors"), "{fc1}");
    let mut args =
        vec!["train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap(), "--steps", "1", "--batch", "6"];
    args.extend(TRAIN_FLAGS);
    args.extend(["--freeze", "*"]);
    assert!(text(&xlac(&args)).1.contains("no float parameter is left to train"));
}

#[test]
fn a_checkpoint_trains_as_a_causal_lm_and_saves_a_checkpoint() {
    if !have_plugin() {
        return;
    }
    let case = root().join("fixtures/train/gpt2_causal_lm_adamw");
    // Only the input ids: --task causal-lm labels the examples by them.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(case.join("data/input_ids.npy"), data.join("input_ids.npy")).unwrap();
    let (log, saved) = (dir.path().join("log.jsonl"), dir.path().join("trained"));
    let d = data.to_str().unwrap();
    #[rustfmt::skip]
    let o = xlac(&[
        "train", "fixtures/hf/gpt2", "--data", d, "--task", "causal-lm", "--optimizer", "adamw",
        "--lr", "0.003", "--schedule", "linear", "--warmup", "4", "--clip-norm", "1.0",
        "--steps", "20", "--batch", "4", "--log", log.to_str().unwrap(), "--save", saved.to_str().unwrap(),
        "--dropout", "0",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    // transformers' trajectory was made in eval mode: no dropout.
    follows_reference(&log, &case);
    // A checkpoint directory: the original's files and every tensor of its
    // checkpoint (transformers loads it: checked by hand, see docs/training.md),
    // with transformers' trained values.
    assert!(saved.join("config.json").is_file() && saved.join("generation_config.json").is_file());
    let original = xlac_runtime::weights::WeightFile::open(&root().join("fixtures/hf/gpt2/model.safetensors")).unwrap();
    let trained = xlac_runtime::weights::WeightFile::open(&saved.join("model.safetensors")).unwrap();
    assert_eq!(trained.names(), original.names());
    for name in ["transformer.wte.weight", "transformer.h.1.attn.c_attn.weight", "transformer.ln_f.bias"] {
        let (_, shape, bytes) = xlac_core_read(&saved.join("model.safetensors"), name);
        let want = xlac_runtime::npy::read(&case.join(format!("expected/{name}.npy"))).unwrap();
        assert_eq!(shape, want.shape());
        let got: Vec<f64> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect();
        for (g, w) in got.iter().zip(want.to_f64_vec()) {
            assert!((g - w).abs() <= 1e-4 * w.abs() + 1e-5, "{name}: {g} vs transformers {w}");
        }
    }
    let input = format!("input_ids={}", data.join("input_ids.npy").display());
    let o = xlac(&["run", saved.to_str().unwrap(), "--input", &input]);
    assert!(o.status.success(), "{}", text(&o).1);
    // Without input_ids.npy there is nothing to label by.
    std::fs::rename(data.join("input_ids.npy"), data.join("ids.npy")).unwrap();
    #[rustfmt::skip]
    let o = xlac(&[
        "train", "fixtures/hf/gpt2", "--data", d, "--task", "causal-lm", "--optimizer", "adamw",
        "--lr", "0.003", "--steps", "1", "--batch", "4",
    ]);
    assert!(text(&o).1.contains("input_ids.npy is missing"), "{}", text(&o).1);
}

#[test]
fn a_sequence_classifier_trains_on_its_labels() {
    if !have_plugin() {
        return;
    }
    let case = root().join("fixtures/train/bert_sequence_classification_adamw");
    let dir = tempfile::tempdir().unwrap();
    let (log, saved) = (dir.path().join("log.jsonl"), dir.path().join("trained"));
    let (model, data) = (case.join("checkpoint"), case.join("data"));
    #[rustfmt::skip]
    let o = xlac(&[
        "train", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--task", "sequence-classification",
        "--optimizer", "adamw", "--lr", "0.001", "--schedule", "linear", "--warmup", "2", "--steps", "20",
        "--batch", "6", "--log", log.to_str().unwrap(), "--save", saved.to_str().unwrap(), "--dropout", "0",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    // The whole data set each step, in another order: the mean is the same.
    follows_reference(&log, &case);
    let (_, shape, _) = xlac_core_read(&saved.join("model.safetensors"), "classifier.weight");
    assert_eq!(shape, [3, 32]);
}

/// The losses of a `--log` equal, step by step, those PyTorch (or transformers) made for `case` (fixtures/train/generate.py).
fn follows_reference(log: &Path, case: &Path) {
    let want = xlac_runtime::npy::read(&case.join("expected/loss.npy")).unwrap().to_f64_vec();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), want.len());
    for (i, (line, want)) in lines.iter().zip(&want).enumerate() {
        let got = line["loss"].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-5 * want.abs(), "step {}: loss {got}, reference {want}", i + 1);
    }
}

#[test]
fn text_data_is_tokenized_with_the_checkpoints_tokenizer() {
    if !have_plugin() {
        return;
    }
    let case = root().join("fixtures/train/bert_sequence_classification_adamw");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let (model, data) = (case.join("checkpoint"), case.join("text/texts.jsonl"));
    #[rustfmt::skip]
    let o = xlac(&[
        "train", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--seq", "8",
        "--task", "sequence-classification", "--optimizer", "adamw", "--lr", "0.001", "--steps", "4",
        "--batch", "3", "--log", log.to_str().unwrap(), "--eval-data", data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Four steps, then the evaluation over the six texts.
    assert_eq!(lines.len(), 5);
    assert!(lines[..4].iter().all(|l| l["loss"].as_f64().is_some_and(f64::is_finite)), "{lines:?}");
    assert_eq!(lines[4]["eval_examples"], 6);
}

#[test]
fn a_base_bert_gets_a_new_classifier_that_is_saved_with_it() {
    if !have_plugin() {
        return;
    }
    let data = root().join("fixtures/train/bert_sequence_classification_adamw/data");
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("trained");
    #[rustfmt::skip]
    let o = xlac(&[
        "train", "fixtures/hf/bert", "--data", data.to_str().unwrap(), "--task", "sequence-classification",
        "--num-labels", "3", "--optimizer", "adamw", "--lr", "0.001", "--steps", "3", "--batch", "6",
        "--save", saved.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    // A checkpoint of transformers' BertForSequenceClassification: its config says so, its head is there.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"].as_object().unwrap().len(), 3);
    let (_, shape, _) = xlac_core_read(&saved.join("model.safetensors"), "classifier.weight");
    assert_eq!(shape, [3, 32]);
    let mut args = vec!["run".to_string(), saved.display().to_string()];
    for k in ["input_ids", "attention_mask", "token_type_ids"] {
        args.extend(["--input".into(), format!("{k}={}", data.join(format!("{k}.npy")).display())]);
    }
    let o = xlac(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success() && text(&o).0.contains("logits: f32[6, 3]"), "{}", text(&o).1);
}

#[test]
fn a_dropout_that_is_no_probability_or_has_no_checkpoint_is_refused() {
    let data = train_case().join("data");
    let d = data.to_str().unwrap();
    let base = ["train", "fixtures/hf/gpt2", "--data", d, "--task", "causal-lm", "--optimizer", "sgd", "--lr", "0.1"];
    let mut args = base.to_vec();
    args.extend(["--steps", "1", "--batch", "2", "--dropout", "1"]);
    let o = xlac(&args);
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(err.contains("--dropout") && err.contains("expected a probability in [0, 1), found `1`"), "{err}");
    let mut args = vec!["train", "fixtures/mlp/model.json", "--data", d];
    args.extend(TRAIN_FLAGS);
    args.extend(["--steps", "1", "--batch", "2", "--dropout", "0.1"]);
    let o = xlac(&args);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("--dropout sets a checkpoint's dropout"), "{}", text(&o).1);
}

#[test]
fn accumulated_micro_batches_follow_the_larger_batch() {
    if !have_plugin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = train_case().join("data");
    // Six examples: one batch of 6, or 3 micro-batches of 2, each step.
    let losses = |batching: &[&str], log: &str| -> Vec<f64> {
        let log = dir.path().join(log);
        let mut args = vec!["train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap()];
        args.extend(TRAIN_FLAGS);
        args.extend(["--steps", "5", "--log", log.to_str().unwrap()]);
        args.extend(batching);
        let o = xlac(&args);
        assert!(o.status.success(), "{}", text(&o).1);
        logged_losses(&log)
    };
    let whole = losses(&["--batch", "6"], "whole.jsonl");
    let micro = losses(&["--batch", "2", "--accumulate", "3"], "micro.jsonl");
    assert_eq!(whole.len(), 5);
    for (m, w) in micro.iter().zip(&whole) {
        assert!((m - w).abs() <= 1e-6 * w.abs(), "{micro:?} vs {whole:?}");
    }
}

/// `xlac train` of the tiny BERT classifier on its data (AdamW at learning rate 1e-3, no dropout) with
/// `extra` arguments, logging to `dir/log.jsonl`: the output and the log's path.
fn train_bert_classifier(dir: &Path, extra: &[&str]) -> (std::process::Output, PathBuf) {
    let case = root().join("fixtures/train/bert_sequence_classification_adamw");
    let log = dir.join("log.jsonl");
    let (model, data) = (case.join("checkpoint"), case.join("data"));
    #[rustfmt::skip]
    let mut args = vec![
        "train", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--task", "sequence-classification",
        "--optimizer", "adamw", "--lr", "0.001", "--dropout", "0", "--log", log.to_str().unwrap(),
    ];
    args.extend(extra);
    (xlac(&args), log)
}

#[test]
fn a_classifier_with_recomputed_layers_and_micro_batches_follows_reference() {
    if !have_plugin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // transformers trained on all 6 examples a step: here 2 micro-batches of 3, each layer recomputed.
    #[rustfmt::skip]
    let (o, log) = train_bert_classifier(dir.path(), &[
        "--schedule", "linear", "--warmup", "2", "--steps", "20", "--batch", "3", "--accumulate", "2",
        "--remat", "layers",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    follows_reference(&log, &root().join("fixtures/train/bert_sequence_classification_adamw"));
}

#[test]
fn a_classifier_with_everything_recomputed_follows_reference() {
    if !have_plugin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    #[rustfmt::skip]
    let (o, log) = train_bert_classifier(dir.path(), &[
        "--schedule", "linear", "--warmup", "2", "--steps", "20", "--batch", "6", "--remat", "full",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    follows_reference(&log, &root().join("fixtures/train/bert_sequence_classification_adamw"));
}

#[test]
fn an_unknown_remat_is_refused_with_the_choices() {
    let data = train_case().join("data");
    let mut args = vec!["train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap()];
    args.extend(TRAIN_FLAGS);
    args.extend(["--steps", "1", "--batch", "2", "--remat", "some"]);
    let o = xlac(&args);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("expected none, layers or full"), "{}", text(&o).1);
}

#[test]
fn a_training_precision_without_f32_master_weights_is_refused() {
    let data = train_case().join("data");
    for (precision, says) in [("bf16", "use mixed-bf16 or mixed-f16, not bf16"), ("f16", "not f16")] {
        let mut args = vec!["train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap()];
        args.extend(TRAIN_FLAGS);
        args.extend(["--steps", "1", "--batch", "2", "--precision", precision]);
        let o = xlac(&args);
        assert!(!o.status.success());
        assert!(text(&o).1.contains(says), "{}", text(&o).1);
    }
}

#[test]
fn mixed_f16_skips_the_steps_whose_gradients_overflow_and_says_so() {
    if !have_plugin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scaled = ["--steps", "8", "--batch", "6", "--precision", "mixed-f16", "--loss-scale", "16777216"];
    let (o, log) = train_bert_classifier(dir.path(), &scaled);
    let err = text(&o).1;
    assert!(o.status.success(), "{err}");
    assert!(err.contains("step 1: the gradients overflowed in f16: update skipped, loss scale halved"), "{err}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["skipped"], true);
    assert!(lines[0]["grad_norm"].is_null(), "{}", lines[0]);
    let last = &lines[7];
    assert!(last.get("skipped").is_none() && last["grad_norm"].as_f64().is_some_and(f64::is_finite), "{last}");
}

/// The tiny BERT classifier's checkpoint, and the LoRA case PEFT trained on its data (fixtures/train/generate.py).
fn lora_case() -> (PathBuf, PathBuf) {
    let root = root().join("fixtures/train");
    (root.join("bert_sequence_classification_adamw/checkpoint"), root.join("bert_lora_adamw"))
}

#[test]
fn lora_from_a_peft_adapter_follows_peft_and_saves_an_adapter_and_a_merged_checkpoint() {
    if !have_plugin() {
        return;
    }
    let (model, case) = lora_case();
    let dir = tempfile::tempdir().unwrap();
    let (log, saved) = (dir.path().join("log.jsonl"), dir.path().join("trained"));
    let (data, adapter) = (case.join("data"), case.join("adapter"));
    #[rustfmt::skip]
    let o = xlac(&[
        "train", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--task", "sequence-classification",
        "--optimizer", "adamw", "--lr", "0.01", "--schedule", "linear", "--warmup", "2", "--steps", "20",
        "--batch", "6", "--dropout", "0", "--adapter", adapter.to_str().unwrap(), "--log", log.to_str().unwrap(),
        "--save", saved.to_str().unwrap(), "--merge",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    follows_reference(&log, &case);
    // PEFT's adapter, in a folder of its own beside the merged checkpoint: the adapters and the classifier.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        (config["peft_type"].as_str(), config["r"].as_u64(), config["lora_alpha"].as_f64()),
        (Some("LORA"), Some(4), Some(12.0))
    );
    let file = saved.join("adapter/adapter_model.safetensors");
    let (_, shape, _) =
        xlac_core_read(&file, "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight");
    assert_eq!(shape, [32, 4]);
    let (_, shape, _) = xlac_core_read(&file, "base_model.model.classifier.weight");
    assert_eq!(shape, [3, 2 * 16]);
    // The merged checkpoint alone computes what the adapted model does: its loss on the data
    // (a first step at learning rate 0) is the loss PEFT's trained model has.
    let log = dir.path().join("merged.jsonl");
    #[rustfmt::skip]
    let o = xlac(&[
        "train", saved.to_str().unwrap(), "--data", data.to_str().unwrap(), "--task", "sequence-classification",
        "--optimizer", "sgd", "--lr", "0", "--steps", "1", "--batch", "6", "--dropout", "0",
        "--log", log.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let line: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    let want = xlac_runtime::npy::read(&case.join("expected/eval_loss.npy")).unwrap().to_f64_vec()[0];
    let got = line["loss"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-5 * want, "merged model's loss {got}, PEFT's {want}");
}

#[test]
fn seeded_lora_starts_as_the_base_model_and_resumes_from_its_adapter() {
    if !have_plugin() {
        return;
    }
    let (model, case) = lora_case();
    let dir = tempfile::tempdir().unwrap();
    let data = case.join("data");
    let run = |extra: &[&str], log: &str| -> Vec<f64> {
        let log = dir.path().join(log);
        #[rustfmt::skip]
        let mut args = vec![
            "train", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--task", "sequence-classification",
            "--optimizer", "adamw", "--lr", "0.01", "--batch", "6", "--dropout", "0", "--log", log.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = xlac(&args);
        assert!(o.status.success(), "{}", text(&o).1);
        logged_losses(&log)
    };
    let spec = "r=2,alpha=4,targets=query,value,dropout=0.1,modules_to_save=classifier";
    let saved = dir.path().join("adapter");
    let plain = run(&["--steps", "1"], "plain.jsonl");
    let first = run(&["--steps", "3", "--lora", spec, "--save", saved.to_str().unwrap()], "first.jsonl");
    // B starts at zero: the first step's loss is the base model's (LoRA's dropout changes nothing then).
    assert_eq!(first[0], plain[0]);
    assert!(first[2] < first[0], "{first:?}");
    let whole = run(&["--steps", "6", "--lora", spec], "whole.jsonl");
    let resumed = run(&["--steps", "6", "--lora", spec, "--resume", saved.to_str().unwrap()], "resumed.jsonl");
    assert_eq!(resumed, whole[3..], "a resumed LoRA run continues exactly");
    // The saved adapter is a PEFT adapter xlac starts from as well.
    let again = run(&["--steps", "1", "--adapter", saved.to_str().unwrap()], "again.jsonl");
    assert!((again[0] - first[2]).abs() < 0.05 && again[0] != plain[0], "{again:?} after {first:?}");
}

#[test]
fn a_lora_that_names_no_layer_or_no_rank_is_refused() {
    let (model, case) = lora_case();
    let data = case.join("data");
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let base = ["train", m, "--data", d, "--task", "sequence-classification", "--optimizer", "sgd", "--lr", "0.1"];
    for (spec, says) in [
        ("r=4,targets=querry", "target `querry` matches no module with a weight"),
        ("alpha=8,targets=query", "`r=RANK` is required"),
        ("r=4,alpha=8", "at least one module to adapt"),
        ("r=4,targets=query,dropout=1", "`dropout`: a probability in [0, 1), found 1"),
        ("r=4,rank=2,targets=query", "unknown key `rank`"),
        ("r=4,targets=embeddings.LayerNorm", "LoRA target is a linear layer's 2-D float weight"),
    ] {
        let mut args = base.to_vec();
        args.extend(["--steps", "1", "--batch", "2", "--lora", spec]);
        let o = xlac(&args);
        assert!(!o.status.success(), "{spec}");
        assert!(text(&o).1.contains(says), "{spec}: {}", text(&o).1);
    }
    // An adapter xlac's LoRA does not follow is refused by the JSON path of what it does not follow.
    let dir = tempfile::tempdir().unwrap();
    let text_of = std::fs::read_to_string(case.join("adapter/adapter_config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text_of).unwrap();
    config["use_dora"] = true.into();
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
    let mut args = base.to_vec();
    args.extend(["--steps", "1", "--batch", "2", "--adapter", dir.path().to_str().unwrap()]);
    let o = xlac(&args);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("$.use_dora") && text(&o).1.contains("needs false, found true"), "{}", text(&o).1);
    // --merge needs LoRA.
    let mut args = base.to_vec();
    args.extend(["--steps", "1", "--batch", "2", "--save", "/nonexistent/x", "--merge"]);
    let o = xlac(&args);
    assert!(!o.status.success() && text(&o).1.contains("--merge merges LoRA adapters"), "{}", text(&o).1);
}

#[test]
fn a_model_json_matmul_layer_takes_lora_adapters_and_merges_them() {
    if !have_plugin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = train_case().join("data");
    let run = |extra: &[&str], name: &str| -> Vec<f64> {
        let log = dir.path().join(format!("{name}.jsonl"));
        let mut args = vec!["train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap()];
        args.extend(TRAIN_FLAGS);
        args.extend(["--batch", "6", "--log", log.to_str().unwrap()]);
        args.extend(extra);
        let o = xlac(&args);
        assert!(o.status.success(), "{}", text(&o).1);
        let text = std::fs::read_to_string(&log).unwrap();
        text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64()).collect()
    };
    let saved = dir.path().join("merged");
    let plain = run(&["--steps", "1"], "plain");
    #[rustfmt::skip]
    let lora = run(&[
        "--steps", "10", "--lora", "r=2,alpha=4,targets=fc1,modules_to_save=fc2", "--save", saved.to_str().unwrap(),
        "--merge", "--eval-data", data.to_str().unwrap(),
    ], "lora");
    // fc1 is `x @ W` with W stored [in, out]: A is [r, in], B [out, r], B zero at the start.
    assert_eq!(lora[0], plain[0]);
    assert!(lora[9] < lora[0], "{lora:?}");
    let file = saved.join("adapter/adapter_model.safetensors");
    let (_, shape, _) = xlac_core_read(&file, "base_model.model.fc1.lora_A.weight");
    assert_eq!(shape, [2, 16]);
    // The merged model.json computes what the adapted model does: its loss (a step at learning
    // rate 0) is the adapted model's evaluation after the last step.
    let text_of = std::fs::read_to_string(dir.path().join("lora.jsonl")).unwrap();
    let evaluated: serde_json::Value = serde_json::from_str(text_of.lines().last().unwrap()).unwrap();
    let want = evaluated["eval_loss"].as_f64().unwrap();
    let log = dir.path().join("merged.jsonl");
    let model = saved.join("model.json");
    #[rustfmt::skip]
    let o = xlac(&[
        "train", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--loss", "cross-entropy",
        "--output", "fc2", "--optimizer", "sgd", "--lr", "0", "--steps", "1", "--batch", "6",
        "--log", log.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let line: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    let got = line["loss"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-5 * want, "merged model's loss {got}, adapted model's {want}");
}

/// `xlac plan` on the MLP with AdamW, batch 8, and `extra` options.
fn plan_mlp(extra: &[&str]) -> Output {
    let mut args =
        vec!["plan", "fixtures/mlp/model.json", "--loss", "cross-entropy", "--output", "fc2", "--optimizer", "adamw"];
    args.extend(["--batch", "8"]);
    args.extend(extra);
    xlac(&args)
}

#[test]
fn plan_puts_xlas_compiled_memory_beside_the_prediction() {
    if !have_plugin() {
        return;
    }
    let o = plan_mlp(&[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for row in ["weights", "optimizer state", "gradients", "activations kept for the backward", "temporaries", "peak"] {
        assert!(out.contains(row), "no `{row}` in\n{out}");
    }
    assert!(out.contains("predicted peak / XLA's"), "{out}");
    let o = plan_mlp(&["--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (predicted, xla) = (&doc["predicted"], &doc["xla"]);
    assert_eq!(predicted["arguments"], xla["arguments"], "{doc}");
    assert_eq!(predicted["aliased"], xla["aliased"], "{doc}");
    let ratio = predicted["peak"].as_f64().unwrap() / xla["peak"].as_f64().unwrap();
    assert!((ratio - 1.0).abs() <= 0.1, "predicted peak {ratio}x XLA's: {doc}");
}

#[test]
fn plan_says_when_the_plugin_is_not_the_xla_it_models() {
    if !have_plugin() {
        return;
    }
    // CI installs the official plugin (the XLA the plan models) and the 0.115 build.
    for plugin in xlac_runtime::pjrt::plugin::find_all(xlac_runtime::Platform::Cpu) {
        let plugin = plugin.display().to_string();
        let o = xlac(&["devices", "--plugin", &plugin]);
        assert!(o.status.success(), "{}", text(&o).1);
        let modelled = text(&o).0.lines().any(|l| l == "PJRT API: 0.81");
        let o = plan_mlp(&["--json", "--plugin", &plugin]);
        assert!(o.status.success(), "{}", text(&o).1);
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let caveat = doc["caveat"].as_str();
        assert_eq!(caveat.is_none(), modelled, "{plugin}: {doc}");
        if let Some(caveat) = caveat {
            assert!(caveat.contains("the plan models the XLA of PJRT API 0.81"), "{caveat}");
        }
        let o = plan_mlp(&["--plugin", &plugin]);
        assert_eq!(text(&o).0.contains("  note: the plan models"), !modelled, "{}", text(&o).0);
    }
}

#[test]
fn plan_predicts_a_checkpoint_without_compiling() {
    // No plugin needed: --no-compile builds the step and predicts only.
    #[rustfmt::skip]
    let o = xlac(&[
        "plan", "fixtures/hf/bert", "--task", "sequence-classification", "--num-labels", "2", "--optimizer", "adamw8bit",
        "--batch", "2", "--seq", "8", "--remat", "layers", "--no-compile", "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(doc["xla"].is_null(), "{doc}");
    assert_eq!(doc["bindings"], serde_json::json!({"batch": 2, "seq": 8}));
    let p = &doc["predicted"];
    let peak = p["arguments"].as_u64().unwrap() + p["outputs"].as_u64().unwrap() - p["aliased"].as_u64().unwrap()
        + p["temporaries"].as_u64().unwrap();
    assert_eq!(p["peak"].as_u64().unwrap(), peak, "{doc}");
}

#[test]
fn plan_searches_the_configurations_that_fit_and_ranks_them() {
    if !have_plugin() {
        return;
    }
    let o = plan_mlp(&["--memory", "20kB", "--json"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fits = doc["search"]["fits"].as_array().unwrap();
    assert!(!fits.is_empty() && fits.len() < doc["search"]["tried"].as_u64().unwrap() as usize, "{doc}");
    let seconds: Vec<f64> = fits.iter().map(|c| c["seconds"].as_f64().unwrap()).collect();
    assert!(seconds.windows(2).all(|w| w[0] <= w[1]), "not fastest first: {seconds:?}");
    for c in fits {
        assert!(c["peak"].as_u64().unwrap() <= 20_000, "{c}");
        // Every configuration keeps the step's 8 examples.
        assert_eq!(c["batch"].as_u64().unwrap() * c["accumulate"].as_u64().unwrap(), 8, "{c}");
    }
    let o = plan_mlp(&["--memory", "1kB"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("0 of "), "{}", text(&o).0);
    let o = plan_mlp(&["--memory", "lots"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("expected a size such as 24GiB"), "{}", text(&o).1);
}

#[test]
fn train_refuses_a_step_the_plan_says_will_not_fit_and_says_what_would() {
    if !have_plugin() {
        return;
    }
    let data = train_case().join("data");
    #[rustfmt::skip]
    let args = vec![
        "train", "fixtures/mlp/model.json", "--data", data.to_str().unwrap(), "--loss", "cross-entropy", "--output", "fc2",
        "--optimizer", "adamw", "--lr", "0.01", "--steps", "2", "--batch", "6",
    ];
    let fits = |memory: &'static str| {
        let mut a = args.clone();
        a.extend(["--memory", memory]);
        xlac(&a)
    };
    let o = fits("12kB");
    let err = text(&o).1;
    assert!(!o.status.success());
    assert!(err.contains("the plan predicts this step needs") && err.contains("these fit"), "{err}");
    assert!(err.contains("--optimizer adafactor"), "{err}");
    let o = fits("1kB");
    assert!(!o.status.success());
    assert!(text(&o).1.contains("none of the configurations"), "{}", text(&o).1);
    let mut a = args.clone();
    a.extend(["--memory", "1kB", "--no-memory-check"]);
    let o = xlac(&a);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(fits("1GB").status.success());
}

#[test]
fn run_takes_text_and_gives_what_its_ids_give() {
    if !have_plugin() {
        return;
    }
    let bert = root().join("fixtures/hf/bert");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bert.join("expected/text.json")).unwrap()).unwrap();
    let texts: Vec<String> = serde_json::from_value(expected["texts"].clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The tokenizers package's ids, as .npy inputs.
    let mut by_ids = vec!["run".to_string(), bert.display().to_string(), "--pooling".into(), "mean".into()];
    for name in ["input_ids", "attention_mask", "token_type_ids"] {
        let rows: Vec<Vec<i64>> = serde_json::from_value(expected[name].clone()).unwrap();
        let shape = vec![rows.len(), rows[0].len()];
        let bytes = rows.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
        let path = dir.path().join(format!("{name}.npy"));
        let tensor = xlac_runtime::HostTensor::new(xlac_runtime::DType::I64, shape, bytes).unwrap();
        xlac_runtime::npy::write(&path, &tensor).unwrap();
        by_ids.extend(["--input".to_string(), format!("{name}={}", path.display())]);
    }
    by_ids.extend(["--out-dir".to_string(), dir.path().join("ids").display().to_string()]);
    let o = xlac(&by_ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o).1);
    let mut by_text = vec!["run".to_string(), bert.display().to_string(), "--pooling".into(), "mean".into()];
    for t in &texts {
        by_text.extend(["--text".to_string(), t.clone()]);
    }
    by_text.extend(["--out-dir".to_string(), dir.path().join("text").display().to_string()]);
    let o = xlac(&by_text.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o).1);
    for name in ["last_hidden_state", "pooler_output", "sentence_embedding"] {
        let read = |d: &str| std::fs::read(dir.path().join(d).join(format!("{name}.npy"))).unwrap();
        assert_eq!(read("text"), read("ids"), "{name}");
    }
    // A sentence embedding per text, L2-normalised.
    let e = xlac_runtime::npy::read(&dir.path().join("text/sentence_embedding.npy")).unwrap();
    assert_eq!(e.shape(), [texts.len(), 32]);
    for row in e.to_f64_vec().chunks(32) {
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
}

#[test]
fn text_for_a_model_without_a_tokenizer_is_refused() {
    let o = xlac(&["run", "fixtures/mlp/model.json", "--text", "hello"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("--text needs a Hugging Face checkpoint directory with a tokenizer.json"));
    let o = xlac(&[
        "eval",
        "fixtures/hf/bert",
        "--text",
        "hello",
        "--input",
        "input_ids=fixtures/hf/bert/inputs/input_ids.npy",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("--input input_ids and --text both give `input_ids`"), "{}", text(&o).1);
}

#[test]
fn calibration_times_every_plugin_and_the_fastest_becomes_the_default() {
    if !have_plugin() {
        return;
    }
    // Its own cache: the calibration it remembers must not choose the other tests' plugin.
    let cache = tempfile::tempdir().unwrap();
    let o = choosing(&["devices", "--calibrate"], cache.path()).output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let found = xlac_runtime::pjrt::plugin::find_all(xlac_runtime::Platform::Cpu);
    for path in &found {
        let timed =
            out.lines().any(|l| l.contains(" ms widening int8") && l.ends_with(&format!("  {}", path.display())));
        assert!(timed, "{} not timed:\n{out}", path.display());
    }
    assert!(cache.path().join("plugins.json").is_file());
    let default = out.lines().find_map(|l| l.strip_prefix("default: ")).unwrap().split(" (").next().unwrap();
    let o = choosing(&["devices"], cache.path()).output().unwrap();
    assert!(text(&o).0.starts_with(&format!("plugin: {default}\n")), "{}", text(&o).0);
    let o = choosing(&["devices", "--all"], cache.path()).output().unwrap();
    assert_eq!(text(&o).0.matches("  calibration: ").count(), found.len(), "{}", text(&o).0);
    assert!(!out.contains("used instead"), "{out}");
    // A plugin the user chose is used, and --calibrate says so (a file of
    // the user's own, not among those timed, so never the fastest).
    let chosen = cache.path().join("my_plugin.so");
    std::fs::write(&chosen, b"").unwrap();
    let o = choosing(&["devices", "--calibrate"], cache.path())
        .env(xlac_runtime::pjrt::plugin::PLUGIN_ENV, &chosen)
        .output()
        .unwrap();
    assert!(text(&o).0.contains(&format!("used instead: {}", chosen.display())), "{}", text(&o).0);
}

#[test]
fn the_first_run_times_the_installed_plugins_once_and_uses_the_fastest() {
    if !have_plugin() {
        return;
    }
    let found = xlac_runtime::pjrt::plugin::find_all(xlac_runtime::Platform::Cpu);
    // CI installs two CPU plugins (.ci/run), so the choice is made there between both.
    assert!(found.len() > 1 || std::env::var_os("CI").is_none(), "CI installs two CPU plugins; found {found:?}");
    let cache = tempfile::tempdir().unwrap();
    let devices = |cache: &Path| {
        let o = choosing(&["devices"], cache).output().unwrap();
        assert!(o.status.success(), "{}", text(&o).1);
        text(&o)
    };
    let (out, err) = devices(cache.path());
    let remembered = xlac_runtime::calibration::Calibration::load(cache.path());
    if found.len() == 1 {
        // One plugin: nothing to time, nothing remembered.
        assert!(!err.contains("timing") && remembered.is_none(), "{err}");
        assert!(out.starts_with(&format!("plugin: {}\n", found[0].display())), "{out}");
        return;
    }
    assert!(err.contains(&format!("{} CPU plugins are installed; timing each once", found.len())), "{err}");
    let calibration = remembered.expect("the timing is remembered in the cache directory");
    assert_eq!(calibration.plugins.len(), found.len());
    let fastest = calibration.fastest(xlac_runtime::calibration::Workload::Dense).expect("a plugin ran the probes");
    let fastest = fastest.to_path_buf();
    assert!(out.starts_with(&format!("plugin: {}\n", fastest.display())), "{out}");
    assert!(err.contains(&format!("xlac: using {}", fastest.display())), "{err}");
    // Remembered: the next run times nothing and uses the same plugin.
    let (out, err) = devices(cache.path());
    assert!(!err.contains("timing"), "{err}");
    // Where it cannot be remembered (the cache directory cannot be made), the
    // plugins are timed once per command, even by `devices --all`, which
    // needs the plugin for each workload.
    let file = cache.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let o = choosing(&["devices", "--all"], &file.join("cache"))
        .env(xlac_runtime::config::CONFIG_ENV, cache.path().join("no-config.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).1.matches("timing each once").count(), 1, "{}", text(&o).1);
    assert!(out.starts_with(&format!("plugin: {}\n", fastest.display())), "{out}");
    // The user's choice wins, and times nothing: --plugin, then XLAC_PJRT_PLUGIN.
    let other = found.iter().find(|p| **p != fastest).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let o = choosing(&["devices", "--plugin", &other.display().to_string()], fresh.path()).output().unwrap();
    let (out, err) = text(&o);
    assert!(out.starts_with(&format!("plugin: {}\n", other.display())) && !err.contains("timing"), "{out}{err}");
    let o = choosing(&["devices"], fresh.path()).env(xlac_runtime::pjrt::plugin::PLUGIN_ENV, other).output().unwrap();
    let (out, err) = text(&o);
    assert!(out.starts_with(&format!("plugin: {}\n", other.display())) && !err.contains("timing"), "{out}{err}");
    // Then the configuration file's `plugin`.
    let config = fresh.path().join("config.json");
    std::fs::write(&config, serde_json::json!({"plugin": other}).to_string()).unwrap();
    let o = choosing(&["devices"], fresh.path()).env(xlac_runtime::config::CONFIG_ENV, &config).output().unwrap();
    let (out, err) = text(&o);
    assert!(out.starts_with(&format!("plugin: {}\n", other.display())) && !err.contains("timing"), "{out}{err}");
    assert!(!fresh.path().join("plugins.json").exists());
}

/// The installed CPU plugins, where there are several to choose between
/// (CI installs two); else `None`: no choice to test.
fn several_plugins() -> Option<Vec<PathBuf>> {
    let found = xlac_runtime::pjrt::plugin::find_all(xlac_runtime::Platform::Cpu);
    (have_plugin() && found.len() > 1).then_some(found)
}

/// Calibrates into `cache`, then rewrites the times so that of the plugins
/// `found`, the second is the fastest at the workloads `second_faster`
/// says, the first at the others.
fn rank_the_first_two_plugins(cache: &Path, found: &[PathBuf], second_faster: impl Fn(Workload) -> bool) {
    let o = choosing(&["devices", "--calibrate"], cache).output().unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let mut calibration = xlac_runtime::calibration::Calibration::load(cache).unwrap();
    for m in &mut calibration.plugins {
        let second = m.path == found[1];
        let seconds = |w| if second_faster(w) == second { 0.001 } else { 0.009 };
        m.times = Some(xlac_runtime::calibration::Times::from_fn(seconds, false));
    }
    calibration.save(cache).unwrap();
}

/// A model's program runs on the plugin the calibration found fastest at
/// its largest product's rows and type: `xlac bench` and `xlac cache
/// explain` (as `run` compiles) of the MLP at batch 8 and 512, in f32 and
/// mixed-bf16.
#[test]
fn a_program_runs_on_the_plugin_fastest_at_its_products() {
    let Some(found) = several_plugins() else { return };
    let cache = tempfile::tempdir().unwrap();
    let batched = |w| matches!(w, Workload::DenseBatched | Workload::MixedBatched);
    rank_the_first_two_plugins(cache.path(), &found, batched);
    let plugin_of = |batch: &str, precision: &str| {
        let bind = format!("batch={batch}");
        let args = ["bench", "fixtures/mlp/model.json", "--bind", &bind, "--precision", precision];
        let o = choosing(&[&args[..], &["--runs", "1", "--warmup", "0", "--json"]].concat(), cache.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o).1);
        let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
        PathBuf::from(v["plugin"].as_str().unwrap())
    };
    assert_eq!(plugin_of("8", "f32"), found[0]);
    assert_eq!(plugin_of("512", "f32"), found[1]);
    assert_eq!(plugin_of("8", "mixed-bf16"), found[0]);
    assert_eq!(plugin_of("512", "mixed-bf16"), found[1]);
    // `cache explain` (as `run` would compile) keys each on its plugin.
    let plugin_digest = |batch: &str| {
        let bind = format!("batch={batch}");
        let o = choosing(&["cache", "explain", "fixtures/mlp/model.json", "--bind", &bind], cache.path()).output();
        let out = text(&o.unwrap()).0;
        out.lines().find(|l| l.trim_start().starts_with("plugin_digest")).expect(&out).to_string()
    };
    assert_ne!(plugin_digest("8"), plugin_digest("512"));
    // An artifact compiled ahead of time runs on the plugin it was compiled on: its workload travels with it.
    let artifact = cache.path().join("mlp-512.xlac");
    let compile =
        ["compile", "fixtures/mlp/model.json", "--bind", "batch=512", "--aot", "-o", artifact.to_str().unwrap()];
    let o = choosing(&compile, cache.path()).output().unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let o = choosing(&["run", artifact.to_str().unwrap()], cache.path()).output().unwrap();
    assert!(o.status.success() && !text(&o).1.contains("another plugin"), "{}", text(&o).1);
    // devices --all and --calibrate say which workloads the other plugin is used for.
    let o = choosing(&["devices", "--all"], cache.path()).output().unwrap();
    let out = text(&o).0;
    let note = out.find("used by default for f32 programs with batched products").expect(&out);
    assert!(out[..note].rfind("plugin: ") == out.find(&format!("plugin: {}", found[1].display())), "{out}");
}

/// `xlac generate` with int8 weights, or under a mixed precision, runs on
/// the plugin the calibration found fastest at widening narrow weights in
/// one-row products; with f32 weights, on the one fastest at dense products.
#[test]
fn generating_with_narrow_weights_uses_the_plugin_fastest_at_widening_them() {
    let Some(found) = several_plugins() else { return };
    let cache = tempfile::tempdir().unwrap();
    rank_the_first_two_plugins(cache.path(), &found, |w| w == Workload::Widening);
    let quantized = cache.path().join("gpt2-int8");
    let o =
        choosing(&["quantize", "fixtures/hf/gpt2", "-o", quantized.to_str().unwrap()], cache.path()).output().unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let plugin_of = |args: &[&str]| {
        let mut all = vec!["generate", "--prompt-ids", "1,2,3", "--max-new-tokens", "2", "--json"];
        all.extend(args);
        let o = choosing(&all, cache.path()).output().unwrap();
        assert!(o.status.success(), "{}", text(&o).1);
        let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
        PathBuf::from(v["plugin"].as_str().unwrap())
    };
    assert_eq!(plugin_of(&["fixtures/hf/gpt2"]), found[0]);
    assert_eq!(plugin_of(&[quantized.to_str().unwrap()]), found[1]);
    assert_eq!(plugin_of(&["fixtures/hf/gpt2", "--precision", "mixed-bf16"]), found[1]);
    // devices --all says which plugin generates with narrow weights.
    let o = choosing(&["devices", "--all"], cache.path()).output().unwrap();
    let out = text(&o).0;
    let note = out.find("used by default to generate with int8, int4 or 16-bit weights").expect(&out);
    assert!(out[..note].rfind("plugin: ") == out.find(&format!("plugin: {}", found[1].display())), "{out}");
}

#[test]
fn a_bad_configuration_file_is_named_with_its_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"plugin": ["a.so"]}"#).unwrap();
    let o = choosing(&["devices"], dir.path()).env(xlac_runtime::config::CONFIG_ENV, &config).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert!(err.contains(&format!("{}: $.plugin: expected a path string", config.display())), "{err}");
    std::fs::write(&config, r#"{"plugin": "/no/such/plugin.so"}"#).unwrap();
    let o = choosing(&["devices"], dir.path()).env(xlac_runtime::config::CONFIG_ENV, &config).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert!(err.contains(&format!("{}: $.plugin: /no/such/plugin.so: no such file", config.display())), "{err}");
    // `devices --all` still lists what is installed, and says why there is no default.
    let o =
        choosing(&["devices", "--all"], dir.path()).env(xlac_runtime::config::CONFIG_ENV, &config).output().unwrap();
    let out = text(&o).0;
    if !xlac_runtime::pjrt::plugin::find_all(xlac_runtime::Platform::Cpu).is_empty() {
        assert!(o.status.success(), "{}", text(&o).1);
        assert!(out.contains("default: none (other commands stop here): ") && out.contains("$.plugin"), "{out}");
        assert!(!out.contains("(used by default"), "{out}");
    }
}

#[test]
fn merging_lora_into_a_weight_read_through_a_view_is_refused() {
    if !have_plugin() {
        return;
    }
    // The MLP with fc1.weight stored transposed and read through `"transpose": [1, 0]`.
    let dir = tempfile::tempdir().unwrap();
    let weights = root().join("fixtures/mlp/weights.safetensors");
    std::fs::copy(&weights, dir.path().join("weights.safetensors")).unwrap();
    let (_, shape, bytes) = xlac_core_read(&weights, "fc1.weight");
    let (rows, cols) = (shape[0], shape[1]);
    let transposed: Vec<u8> = (0..rows * cols)
        .flat_map(|i| {
            let (c, r) = (i / rows, i % rows);
            bytes[(r * cols + c) * 4..(r * cols + c) * 4 + 4].to_vec()
        })
        .collect();
    let header = serde_json::json!({"fc1.weight": {"dtype": "F32", "shape": [cols, rows], "data_offsets": [0, transposed.len()]}});
    let mut file = header.to_string().into_bytes();
    file.resize(file.len().next_multiple_of(8), b' ');
    let mut out = (file.len() as u64).to_le_bytes().to_vec();
    out.extend(file);
    out.extend(&transposed);
    std::fs::write(dir.path().join("fc1_t.safetensors"), out).unwrap();
    let mut model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("fixtures/mlp/model.json")).unwrap()).unwrap();
    for p in model["parameters"].as_array_mut().unwrap() {
        if p["name"] == "fc1.weight" {
            p["file"] = "fc1_t.safetensors".into();
            p["transpose"] = serde_json::json!([1, 0]);
        }
    }
    let path = dir.path().join("model.json");
    std::fs::write(&path, model.to_string()).unwrap();
    let data = train_case().join("data");
    let save = dir.path().join("saved");
    let mut args = vec!["train", path.to_str().unwrap(), "--data", data.to_str().unwrap()];
    args.extend(TRAIN_FLAGS);
    #[rustfmt::skip]
    args.extend(["--batch", "6", "--steps", "1", "--lora", "r=2,alpha=4,targets=fc1", "--save", save.to_str().unwrap(), "--merge"]);
    let o = xlac(&args);
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(
        err.contains("parameter `fc1.weight` is read through a view") && err.contains("--merge cannot write it"),
        "{err}"
    );
}

#[test]
fn generate_prints_transformers_greedy_tokens_as_json() {
    if !have_plugin() {
        return;
    }
    // fixtures/hf/llama/expected/generate.json, case "batch_left_padded" (transformers' generate).
    let args = ["generate", "fixtures/hf/llama", "--prompt-ids", "5,17,42,8,23", "--prompt-ids", "61,3,77"];
    let o = xlac(&[&args[..], &["--max-new-tokens", "8", "--json"]].concat());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results[0]["ids"], serde_json::json!([63, 40, 93, 94, 39, 68, 42, 73]), "{out}");
    assert_eq!(results[1]["ids"], serde_json::json!([72, 94, 39, 62, 7, 60, 78, 72]), "{out}");
    assert_eq!(results[1]["prompt_ids"], serde_json::json!([61, 3, 77]));
    assert_eq!(results[0]["finish_reason"], "length");
    assert!(!results[0]["text"].as_str().unwrap().is_empty(), "the tokenizer decodes the new ids: {out}");
    assert!(doc["decode_tokens_per_s"].as_f64().unwrap() > 0.0, "{out}");
    assert_eq!(doc["batches"], serde_json::json!(vec![2; 8]), "no sequence ended early: {out}");
    // A warm-up generation first changes the timings, not the tokens.
    let o = xlac(&[&args[..], &["--max-new-tokens", "8", "--json", "--warm-up"]].concat());
    let warm: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(warm["results"], doc["results"]);
    let o = xlac(&["generate", "fixtures/hf/llama", "--prompt-ids", "5,x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("`x` is not a token id in `5,x`"), "{}", text(&o).1);
}

#[test]
fn generate_streams_text_and_stops_at_a_stop_text() {
    if !have_plugin() {
        return;
    }
    let base = ["generate", "fixtures/hf/llama", "--prompt", "the quick brown", "--max-new-tokens", "30"];
    let o = xlac(&base);
    let (full, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(full.starts_with("the quick brown"), "the prompt, then what follows: {full}");
    assert!(err.contains("30 new tokens; first token after"), "{err}");
    // Stop at the first few characters the model writes after the prompt's.
    let continuation = full.trim_end_matches('\n')["the quick brown".len()..].to_string();
    let stop: String = continuation.chars().take(4).collect();
    let o = xlac(&[&base[..], &["--stop", &stop, "--json"]].concat());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = &doc["results"][0];
    assert_eq!(r["finish_reason"], "stop", "{out}");
    let t = r["text"].as_str().unwrap();
    assert!(t.contains(&stop) && continuation.starts_with(t), "{t:?} ends the text at {stop:?}");
    assert!(r["ids"].as_array().unwrap().len() < 30);
}

#[test]
fn generate_refuses_what_cannot_generate() {
    let o = xlac(&["generate", "fixtures/hf/bert", "--prompt", "hi"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("generation needs a causal LM with its head"), "{}", text(&o).1);
    let o = xlac(&["generate", "fixtures/hf/llama"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("no prompt: give --prompt TEXT"), "{}", text(&o).1);
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(root().join("fixtures/hf/gpt2").join(f), dir.path().join(f)).unwrap();
    }
    let o = xlac(&["generate", dir.path().to_str().unwrap(), "--prompt", "hello"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("text prompts need the checkpoint's tokenizer.json"), "{}", text(&o).1);
    // A tokenizer.json that does not parse is named, not taken for a missing one.
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 1}").unwrap();
    let o = xlac(&["generate", dir.path().to_str().unwrap(), "--prompt-ids", "1,2", "--max-new-tokens", "1"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert!(err.contains("tokenizer.json") && err.contains("cannot read"), "{err}");
}

#[test]
fn quantize_writes_an_int8_checkpoint_that_generates() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gpt2-int8");
    let o = xlac(&["quantize", "fixtures/hf/gpt2", "-o", out.to_str().unwrap()]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(stdout.contains("10 matrices in int8 (per output channel)"), "{stdout}");
    assert!(out.join("tokenizer.json").is_file() && out.join("generation_config.json").is_file());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization_config"]["quant_method"], "xlac-int8");
    let o = xlac(&["quantize", "fixtures/hf/gpt2", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("is not empty"), "{}", text(&o).1);
    let int4 = dir.path().join("gpt2-int4");
    let o = xlac(&["quantize", "fixtures/hf/gpt2", "-o", int4.to_str().unwrap(), "--bits", "4", "--group", "16"]);
    assert!(text(&o).0.contains("10 matrices in int4 (groups of 16)"), "{}", text(&o).1);
    let o = xlac(&["quantize", "fixtures/hf/gpt2", "-o", dir.path().join("g").to_str().unwrap(), "--bits", "4"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("do not split into groups of 64 (give another --group)"), "{}", text(&o).1);
    if have_plugin() {
        let o = xlac(&["generate", out.to_str().unwrap(), "--prompt", "hello world", "--max-new-tokens", "4"]);
        assert!(o.status.success(), "{}", text(&o).1);
        assert!(text(&o).0.starts_with("hello world"), "{}", text(&o).0);
    }
}

#[test]
fn compile_output_is_replaced_whole_or_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mlp.mlir");
    std::fs::write(&out, "previous").unwrap();
    let o = xlac(&["compile", "fixtures/mlp/model.json", "--bind", "batch=2", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(std::fs::read_to_string(&out).unwrap().contains("func.func public @main"));
    // Where the output cannot be written, the error names it and nothing is left behind.
    let missing = dir.path().join("no-such-dir").join("mlp.mlir");
    let o = xlac(&["compile", "fixtures/mlp/model.json", "--bind", "batch=2", "-o", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains(&format!("cannot write {}", missing.display())), "{}", text(&o).1);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("mlp.mlir")]);
}
