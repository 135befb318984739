//! Artifacts: written by the driver, loaded and run by the runtime alone, with
//! and without an AOT executable; damaged files give clear errors.

use std::collections::BTreeMap;
use xlac_driver::{compile_model, Session};
use xlac_runtime::calibration::Workload;
use xlac_runtime::{
    Artifact, CacheConfig, CacheOutcome, Client, ClientOptions, CompilationCache, HostTensor, LoadOutcome, Platform,
    Plugin,
};
use xlac_tests::{compare, cpu_plugin, read_npy_dir, repo_root, run_trials, trial};

fn no_cache() -> CompilationCache {
    CompilationCache::new(&CacheConfig::disabled()).unwrap()
}

/// Writes the fixture `name` as an artifact; returns its path and the expected outputs.
fn write(
    name: &str,
    aot: bool,
    dir: &std::path::Path,
    plugin: &Plugin,
) -> (std::path::PathBuf, BTreeMap<String, HostTensor>, BTreeMap<String, HostTensor>) {
    let fixture = repo_root().join("fixtures").join(name);
    let inputs = read_npy_dir(&fixture.join("inputs"));
    let model = compile_model(&fixture.join("model.json"), &Default::default(), &inputs).unwrap();
    let path = dir.join(format!("{name}.xlac"));
    let session =
        Session::new(Platform::Cpu, Some(plugin.path()), &ClientOptions::default(), &CacheConfig::disabled()).unwrap();
    session.write_artifact(&model, &path, aot).unwrap();
    (path, inputs, read_npy_dir(&fixture.join("expected")))
}

fn run_and_check(
    artifact: &Artifact,
    client: &Client,
    inputs: &BTreeMap<String, HostTensor>,
    expected: &BTreeMap<String, HostTensor>,
) -> LoadOutcome {
    let loaded = artifact.load(client, &no_cache()).unwrap();
    let args: Vec<_> = loaded.inputs().iter().map(|s| inputs[&s.name].as_ref()).collect();
    let outputs = loaded.run(&args).unwrap();
    for (spec, out) in artifact.outputs().iter().zip(&outputs) {
        compare(&spec.name, out, &expected[&spec.name], 1e-5, 1e-6).unwrap();
    }
    loaded.outcome
}

fn round_trip_without_and_with_aot(name: &'static str) {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, inputs, expected) = write(name, false, dir.path(), &plugin);
    let artifact = Artifact::open(&path).unwrap();
    assert!(!artifact.has_executable());
    assert_eq!(
        run_and_check(&artifact, &client, &inputs, &expected),
        LoadOutcome::Cache(CacheOutcome::Compiled { note: None })
    );
    let (path, inputs, expected) = write(name, true, dir.path(), &plugin);
    let artifact = Artifact::open(&path).unwrap();
    assert!(artifact.has_executable());
    assert_eq!(run_and_check(&artifact, &client, &inputs, &expected), LoadOutcome::Aot, "{name}");
}

/// A Hugging Face checkpoint's `[out, in]` weights are transposed views in
/// the program; the artifact stores them laid out, and they load dense.
fn transposed_weight_views_are_stored_laid_out() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fixture = repo_root().join("fixtures/hf/bert");
    let inputs = read_npy_dir(&fixture.join("inputs"));
    let model = compile_model(&fixture, &Default::default(), &inputs).unwrap();
    let views = model
        .module
        .params()
        .iter()
        .filter(|p| matches!(&p.source, xlac_compiler::ir::ParamSource::File { view, .. } if view.perm.is_some()));
    assert!(views.count() >= 12, "every projection weight is read transposed");
    let path = dir.path().join("bert.xlac");
    let session =
        Session::new(Platform::Cpu, Some(plugin.path()), &ClientOptions::default(), &CacheConfig::disabled()).unwrap();
    session.write_artifact(&model, &path, false).unwrap();
    let artifact = Artifact::open(&path).unwrap();
    let loaded = artifact.load(&client, &no_cache()).unwrap();
    let args: Vec<_> = loaded.inputs().iter().map(|s| inputs[&s.name].as_ref()).collect();
    let outputs = loaded.run(&args).unwrap();
    let expected = read_npy_dir(&fixture.join("expected"));
    let (spec, out) = (&artifact.outputs()[0], &outputs[0]);
    assert_eq!(spec.name, "last_hidden_state");
    compare(&spec.name, out, &expected[&spec.name], 0.0, 1e-4).unwrap();
}

/// On the CPU plugin an artifact's weights are read in place from its
/// memory map, which the loaded model keeps alive after the artifact is dropped.
fn weights_are_read_in_place_and_outlive_the_artifact() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, inputs, expected) = write("mlp", true, dir.path(), &plugin);
    let artifact = Artifact::open(&path).unwrap();
    let names: Vec<String> = artifact.outputs().iter().map(|s| s.name.clone()).collect();
    let weights = artifact.params().count();
    assert!(weights >= 2, "{weights}");
    let loaded = artifact.load(&client, &no_cache()).unwrap();
    assert_eq!(loaded.weights_in_place(), weights, "every weight is read from the map, none copied");
    drop(artifact);
    let args: Vec<_> = loaded.inputs().iter().map(|s| inputs[&s.name].as_ref()).collect();
    for (name, out) in names.iter().zip(loaded.run(&args).unwrap()) {
        compare(name, &out, &expected[name], 1e-5, 1e-6).unwrap();
    }
}

fn an_aot_executable_for_other_devices_is_recompiled() {
    let Some(plugin) = cpu_plugin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (path, inputs, expected) = write("mlp", true, dir.path(), &plugin);
    let other = Client::new(&plugin, &ClientOptions { cpu_device_count: Some(2) }).unwrap();
    let outcome = run_and_check(&Artifact::open(&path).unwrap(), &other, &inputs, &expected);
    assert!(
        matches!(&outcome, LoadOutcome::Cache(CacheOutcome::Compiled { note: Some(n) }) if n.contains("another plugin or device set")),
        "{outcome:?}"
    );
}

fn inputs_are_checked_against_the_signature() {
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = write("mlp", false, dir.path(), &plugin);
    let loaded = Artifact::open(&path).unwrap().load(&client, &no_cache()).unwrap();
    let wrong = HostTensor::from_array(&ndarray::Array2::<f64>::zeros((2, 16)));
    let e = loaded.run(&[wrong.as_ref()]).err().unwrap().to_string();
    assert!(e.contains("argument 0 (`x`): expected f32[2, 16], found f64[2, 16]"), "{e}");
    assert!(loaded.run(&[]).err().unwrap().to_string().contains("expected 1 inputs (x), found 0"));
}

fn damaged_artifacts_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = repo_root().join("fixtures/mlp");
    let inputs = read_npy_dir(&fixture.join("inputs"));
    let model = compile_model(&fixture.join("model.json"), &Default::default(), &inputs).unwrap();
    let path = dir.path().join("mlp.xlac");
    xlac_driver::write_artifact(&model, &path, None).unwrap();
    let good = std::fs::read(&path).unwrap();
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("truncated", good[..good.len() - 100].to_vec(), "lie outside the file"),
        (
            "a flipped weight byte",
            {
                let mut b = good.clone();
                let n = b.len();
                b[n - 3] ^= 1;
                b
            },
            "checksum mismatch: the file is corrupted",
        ),
        (
            "bad magic",
            {
                let mut b = good.clone();
                b[0] = b'Y';
                b
            },
            "not an xlac artifact",
        ),
        (
            "another version",
            {
                let mut b = good.clone();
                b[8] = 9;
                b
            },
            "artifact format version 9",
        ),
        ("empty", Vec::new(), "not an xlac artifact"),
    ];
    for (what, bytes, expected) in cases {
        let p = dir.path().join("damaged.xlac");
        std::fs::write(&p, bytes).unwrap();
        // The weights' checksums are checked by verify_weights (and load), the rest on opening.
        let e = Artifact::open(&p)
            .and_then(|a| a.verify_weights())
            .err()
            .unwrap_or_else(|| panic!("{what}: must be refused"))
            .to_string();
        assert!(e.contains("damaged.xlac") && e.contains(expected), "{what}: {e}");
    }
    // A corrupt weight never reaches a device.
    let Some(plugin) = cpu_plugin() else { return };
    let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
    let mut bytes = good.clone();
    let n = bytes.len();
    bytes[n - 3] ^= 1;
    let p = dir.path().join("damaged.xlac");
    std::fs::write(&p, bytes).unwrap();
    let artifact = Artifact::open(&p).expect("the program's sections are intact");
    let e = artifact.load(&client, &no_cache()).err().expect("a corrupt weight").to_string();
    assert!(e.contains("parameter `") && e.contains("checksum mismatch"), "{e}");
    // A corrupt program is refused on opening.
    let mut bytes = good.clone();
    let hlo = good.windows(8).position(|w| w == b"module @").expect("the StableHLO is in the file");
    bytes[hlo + 3] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    let e = Artifact::open(&p).err().expect("a corrupt program").to_string();
    assert!(e.contains("StableHLO: checksum mismatch"), "{e}");
}

/// `x[1, 20, 4] · wᵀ` with `w` an int8 `[3, 4]` matrix widened: a product
/// of more rows than the lowering splits, so its program is compiled with
/// XLA's memory-minimising scheduler. The flag travels in the artifact.
fn xla_flags_travel_with_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.json");
    let model_json = xlac_tests::int8_product_model(20, 4, 3, false);
    std::fs::write(&model_path, model_json.to_string()).unwrap();
    let model = compile_model(&model_path, &Default::default(), &BTreeMap::new()).unwrap();
    let flag = "xla_cpu_enable_concurrency_optimized_scheduler";
    assert_eq!(model.lowered.xla_flags, BTreeMap::from([(flag.to_string(), false)]));
    let path = dir.path().join("widened.xlac");
    xlac_driver::write_artifact(&model, &path, None).unwrap();
    let artifact = Artifact::open(&path).unwrap();
    assert_eq!(artifact.program().xla_flags, model.lowered.xla_flags);
    assert_eq!(artifact.program().compile_options().xla_flags, model.lowered.xla_flags);
    if let Some(plugin) = cpu_plugin() {
        let client = Client::new(&plugin, &ClientOptions::default()).unwrap();
        let loaded = artifact.load(&client, &no_cache()).unwrap();
        let x = HostTensor::random(xlac_runtime::DType::F32, &[1, 20, 4], 1).unwrap();
        let q = HostTensor::random(xlac_runtime::DType::I8, &[3, 4], 2).unwrap();
        let got = loaded.run(&[x.as_ref(), q.as_ref()]).unwrap();
        let given = BTreeMap::from([("x".to_string(), x), ("q".to_string(), q)]);
        let want = xlac_driver::eval_model(&model, &given, 0).unwrap();
        compare("y", &got[0], &want[0].1, 1e-5, 1e-6).unwrap();
    }
    // A flag's value that is not a boolean is named (the header keeps its length).
    let mut bytes = std::fs::read(&path).unwrap();
    let (good, bad) = (format!("\"{flag}\":false"), format!("\"{flag}\":\"off\""));
    let at = bytes.windows(good.len()).position(|w| w == good.as_bytes()).expect("the flag in the header");
    bytes[at..at + bad.len()].copy_from_slice(bad.as_bytes());
    std::fs::write(&path, bytes).unwrap();
    let e = Artifact::open(&path).err().expect("a bad flag must not open").to_string();
    assert!(e.contains("widened.xlac") && e.contains("xla_flags: expected an object of true or false"), "{e}");
}

/// The workload a model's program is ranked by for the choice of a CPU
/// plugin travels in the artifact (the MLP at batch 8, one sequence's
/// rows, and 512, batched); a bad one is named.
fn the_workload_travels_with_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = repo_root().join("fixtures/mlp/model.json");
    for (batch, want) in [(8, Workload::Dense), (512, Workload::DenseBatched)] {
        let options = xlac_compiler::pipeline::Options {
            bindings: BTreeMap::from([("batch".to_string(), batch)]),
            ..Default::default()
        };
        let model = compile_model(&fixture, &options, &BTreeMap::new()).unwrap();
        assert_eq!(model.workload(), want);
        let path = dir.path().join(format!("mlp-{batch}.xlac"));
        xlac_driver::write_artifact(&model, &path, None).unwrap();
        assert_eq!(Artifact::open(&path).unwrap().workload(), want);
    }
    let path = dir.path().join("mlp-512.xlac");
    let mut bytes = std::fs::read(&path).unwrap();
    let (good, bad) = ("\"workload\":\"dense batched\"", "\"workload\":\"dense batchez\"");
    let at = bytes.windows(good.len()).position(|w| w == good.as_bytes()).expect("the workload in the header");
    bytes[at..at + bad.len()].copy_from_slice(bad.as_bytes());
    std::fs::write(&path, bytes).unwrap();
    let e = Artifact::open(&path).err().expect("a bad workload must not open").to_string();
    assert!(e.contains("mlp-512.xlac") && e.contains("workload: expected one of \"dense\""), "{e}");
    assert!(e.contains("found \"dense batchez\""), "{e}");
}

fn main() {
    let mut trials: Vec<_> = ["mlp", "transformer_block", "ops"]
        .into_iter()
        .map(|name| {
            trial(format!("{name}::round_trip_without_and_with_aot"), move || round_trip_without_and_with_aot(name))
        })
        .collect();
    trials.push(trial("transposed_weight_views_are_stored_laid_out", transposed_weight_views_are_stored_laid_out));
    trials.push(trial(
        "an_aot_executable_for_other_devices_is_recompiled",
        an_aot_executable_for_other_devices_is_recompiled,
    ));
    trials.push(trial(
        "weights_are_read_in_place_and_outlive_the_artifact",
        weights_are_read_in_place_and_outlive_the_artifact,
    ));
    trials.push(trial("inputs_are_checked_against_the_signature", inputs_are_checked_against_the_signature));
    trials.push(trial("damaged_artifacts_give_clear_errors", damaged_artifacts_give_clear_errors));
    trials.push(trial("xla_flags_travel_with_the_program", xla_flags_travel_with_the_program));
    trials.push(trial("the_workload_travels_with_the_program", the_workload_travels_with_the_program));
    run_trials(trials)
}
