//! The `xlac` binary, run as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A compilation cache private to this test binary's run.
fn cache_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn xlac(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xlac"))
        .args(args)
        .current_dir(root())
        .env("XLAC_CACHE_DIR", cache_dir())
        .output()
        .unwrap()
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

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in ["compile", "run", "devices"] {
        let o = xlac(&[cmd, "--help"]);
        assert!(o.status.success());
        assert!(text(&o).0.contains("Example:"), "{cmd} --help");
    }
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
