//! Sharding through the whole driver: model.json → policies → propagation →
//! Shardy StableHLO → SPMD execution on 2 and 4 CPU devices. Data-parallel,
//! tensor-parallel and 2-D runs of the fixtures equal the single-device
//! results, the compiled program really is partitioned (per-device parameter
//! bytes shrink with the tensor-parallel degree), sharded artifacts run,
//! programs running at once on separate clients keep their collectives
//! apart, and bad annotations give errors naming the value.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use xlac_compiler::ir::sharding::Mesh;
use xlac_compiler::passes::ShardPolicy;
use xlac_driver::{compile_model, CompiledModel, Options, Session};
use xlac_runtime::{Artifact, CacheConfig, ClientOptions, HostTensor, Platform};
use xlac_tests::{assert_has, compare, cpu_plugin, repo_root, run_trials, small_model, trial};

fn bindings(list: &[(&str, u64)]) -> BTreeMap<String, u64> {
    list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn compile(path: &Path, b: &BTreeMap<String, u64>, mesh: Option<&str>, policies: &[ShardPolicy]) -> CompiledModel {
    try_compile(path, b, mesh, policies).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn try_compile(
    path: &Path,
    b: &BTreeMap<String, u64>,
    mesh: Option<&str>,
    policies: &[ShardPolicy],
) -> Result<CompiledModel, xlac_driver::Error> {
    let options = Options {
        bindings: b.clone(),
        mesh: mesh.map(|m| Mesh::parse(m).unwrap()),
        policies: policies.to_vec(),
        ..Options::default()
    };
    compile_model(path, &options, &BTreeMap::new())
}

fn session(devices: u32) -> Session {
    let plugin = cpu_plugin().expect("checked by the caller");
    let options = ClientOptions { cpu_device_count: Some(devices) };
    Session::new(Platform::Cpu, Some(plugin.path()), &options, &CacheConfig::disabled()).unwrap()
}

/// Per-device bytes of the parameters: the executable's argument bytes less the inputs' share.
fn param_bytes(session: &Session, model: &CompiledModel) -> i64 {
    let (exe, _) = session.compile(model).unwrap();
    let inputs: i64 = exe
        .inputs()
        .iter()
        .zip(&exe.partitioning().inputs)
        .take(model.module.inputs().len())
        .map(|(spec, sharding)| {
            let split: usize =
                sharding.0.iter().flatten().map(|a| exe.partitioning().mesh.size(a).unwrap_or(1) as usize).product();
            (spec.shape.iter().product::<usize>() * spec.ty.size_bytes() / split) as i64
        })
        .sum();
    exe.memory_stats().unwrap().argument_bytes - inputs
}

/// Fixture `name` with `b` split by each layout equals the one-device result,
/// and tensor parallelism shrinks the per-device parameters with its degree.
fn data_tensor_and_2d_parallel_equal_one_device(name: &str, b: &BTreeMap<String, u64>) {
    if cpu_plugin().is_none() {
        return;
    }
    use ShardPolicy::{Data, Tensor};
    // (devices, mesh, policies)
    let layouts: [(u32, &str, &[ShardPolicy]); 5] = [
        (2, "data=2", &[Data]),
        (4, "data=4", &[Data]),
        (2, "model=2", &[Tensor]),
        (4, "model=4", &[Tensor]),
        (4, "data=2,model=2", &[Data, Tensor]),
    ];
    let one = session(1);
    let (two, four) = (session(2), session(4));
    {
        let path = repo_root().join("fixtures").join(name).join("model.json");
        let single = compile(&path, b, None, &[]);
        let want = one.run(&single, &BTreeMap::new(), 3).unwrap();
        let base_bytes = param_bytes(&one, &single);
        let mut tensor_bytes = vec![(1, base_bytes)];
        for (devices, mesh, policies) in layouts {
            let model = compile(&path, b, Some(mesh), policies);
            let s = if devices == 2 { &two } else { &four };
            assert_eq!(model.program().compile_options().num_partitions, devices);
            let got = s.run(&model, &BTreeMap::new(), 3).unwrap();
            for ((out, g), (_, w)) in got.iter().zip(&want) {
                compare(&format!("{name} {mesh} {out}"), g, w, 1e-5, 1e-5).unwrap();
            }
            let bytes = param_bytes(s, &model);
            println!("{name} mesh {mesh}: per-device parameter bytes {bytes} (one device: {base_bytes})");
            if mesh.starts_with("model") {
                tensor_bytes.push((devices, bytes));
            } else if mesh == "data=2,model=2" {
                assert!(bytes < base_bytes, "{name} {mesh}: {bytes} vs {base_bytes}");
            } else {
                assert_eq!(bytes, base_bytes, "{name} {mesh}: data parallelism replicates parameters");
            }
        }
        // Tensor parallelism really splits the weights: bytes shrink with the degree.
        assert!(tensor_bytes.windows(2).all(|w| w[1].1 < w[0].1), "{name}: {tensor_bytes:?}");
    }
}

fn the_lowering_declares_mesh_shardings_and_partitions() {
    let path = repo_root().join("fixtures/transformer_block/model.json");
    let b = bindings(&[("batch", 4), ("seq", 8)]);
    let model = compile(&path, &b, Some("data=2,model=2"), &[ShardPolicy::Data, ShardPolicy::Tensor]);
    let text = &model.lowered.text;
    assert!(text.contains("mhlo.num_partitions = 4 : i32"), "{text}");
    assert!(text.contains(r#"sdy.mesh @mesh = <["data"=2, "model"=2]>"#), "{text}");
    assert!(text.contains(r#"sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {}, {}]>"#), "{text}");
    assert!(text.contains(r#"sdy.sharding_constraint"#), "{text}");
    let p = model.program().partitioning.expect("a partitioned program");
    assert_eq!(p.mesh.devices(), 4);
    assert_eq!(p.outputs, vec![xlac_runtime::Sharding(vec![Some("data".to_string()), None, None])]);
    // Without a mesh nothing changes: one partition, no Shardy attributes.
    let plain = compile(&path, &b, None, &[]);
    assert!(!plain.lowered.text.contains("sdy.") && plain.program().partitioning.is_none());
}

fn annotations_written_in_model_json_are_honoured() {
    let Some(_) = cpu_plugin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    let mut model = base();
    model["mesh"] = json!({"model": 2});
    model["parameters"][0]["sharding"] = json!([null, "model"]);
    model["nodes"][0]["sharding"] = json!([null, "model"]);
    model["outputs"] = json!([{"value": "y", "sharding": [null, "model"]}]);
    std::fs::write(&path, model.to_string()).unwrap();
    let b = bindings(&[("batch", 2)]);
    let sharded = compile(&path, &b, None, &[]);
    // Fusion keeps the annotations: the fused node carries the sharding written on the nodes it replaced.
    let ir = xlac_compiler::ir::print::print(&sharded.module);
    assert!(
        ir.contains("mesh model=2")
            && ir.contains("%y = linear(%x, %w, %b) {activation=relu}: f32[2,4] sharding [_,model]"),
        "{ir}"
    );
    // The IR text, annotations included, reads back to the same module.
    let reparsed =
        xlac_compiler::frontend::text::parse(&xlac_compiler::ir::print::print_full(&sharded.module), &path).unwrap();
    assert_eq!(xlac_compiler::ir::print::print(&reparsed), ir);
    let got = session(2).run(&sharded, &BTreeMap::new(), 1).unwrap();
    let mut plain = base();
    plain["outputs"] = json!(["y"]);
    std::fs::write(&path, plain.to_string()).unwrap();
    let want = session(1).run(&compile(&path, &b, None, &[]), &BTreeMap::new(), 1).unwrap();
    compare("y", &got[0].1, &want[0].1, 1e-6, 1e-6).unwrap();
}

fn sharded_artifacts_run_split_over_their_devices() {
    let Some(_) = cpu_plugin() else { return };
    let path = repo_root().join("fixtures/transformer_block/model.json");
    let b = bindings(&[("batch", 4), ("seq", 8)]);
    let model = compile(&path, &b, Some("data=2,model=2"), &[ShardPolicy::Data, ShardPolicy::Tensor]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("block.xlac");
    let four = session(4);
    four.write_artifact(&model, &file, true).unwrap();
    let artifact = Artifact::open(&file).unwrap();
    assert_eq!(artifact.program().compile_options().num_partitions, 4);
    let x = HostTensor::random(xlac_runtime::DType::F32, &[4, 8, 32], 9).unwrap();
    let given: BTreeMap<String, HostTensor> = [("x".to_string(), x)].into_iter().collect();
    let (got, _) = four.run_artifact(&artifact, &given, 0).unwrap();
    let want = session(1).run(&compile(&path, &b, None, &[]), &given, 0).unwrap();
    compare("y", &got[0].1, &want[0].1, 1e-5, 1e-5).unwrap();
    // Split over devices, the weights are copies, shard by shard (a one-device
    // program reads them in place: artifact.rs).
    let loaded = artifact.load(&four.client, &four.cache).unwrap();
    assert_eq!(loaded.weights_in_place(), 0);
    // On two devices the four-way program cannot run: a clear error, not a crash.
    let e = session(2).run_artifact(&artifact, &given, 0).expect_err("4 partitions on 2 devices").to_string();
    assert!(e.contains("runs on 4 devices") && e.contains("the client has 2"), "{e}");
}

/// Two tensor-parallel programs run at the same time on clients of their
/// own, as two threads of one process may: each run's collectives meet only
/// their own program's, so every run equals the one-device result. (Both
/// launched with the same id, the 0.81 plugin's all-reduces of the two met
/// and corrupted the heap: `next_launch_id` in runtime/src/pjrt/executable.rs.)
fn concurrent_sharded_runs_keep_their_collectives_apart() {
    let Some(_) = cpu_plugin() else { return };
    const ROUNDS: usize = 200;
    let fixtures = [("mlp", bindings(&[("batch", 8)])), ("transformer_block", bindings(&[("batch", 4), ("seq", 8)]))];
    std::thread::scope(|scope| {
        for (name, b) in &fixtures {
            scope.spawn(move || {
                let path = repo_root().join("fixtures").join(name).join("model.json");
                let want = session(1).run(&compile(&path, b, None, &[]), &BTreeMap::new(), 3).unwrap();
                let four = session(4);
                let model = compile(&path, b, Some("model=4"), &[ShardPolicy::Tensor]);
                let (loaded, _) = four.load(&model, &mut |_| {}).unwrap();
                for round in 0..ROUNDS {
                    let got = loaded.run(&BTreeMap::new(), 3).unwrap();
                    for ((out, g), (_, w)) in got.iter().zip(&want) {
                        compare(&format!("{name} round {round} {out}"), g, w, 1e-5, 1e-5).unwrap();
                    }
                }
            });
        }
    });
}

/// A small valid model: y = relu(x @ w + b), w f32[4,4].
fn base() -> Value {
    small_model(4)
}

/// Compiles `model` (after `edit`) with `mesh` and `policies`; returns the error text.
fn error_of(edit: impl FnOnce(&mut Value), mesh: Option<&str>, policies: &[ShardPolicy]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    let mut model = base();
    edit(&mut model);
    std::fs::write(&path, model.to_string()).unwrap();
    match try_compile(&path, &bindings(&[("batch", 6)]), mesh, policies) {
        Ok(_) => panic!("expected an error for {model}"),
        Err(e) => e.to_string(),
    }
}

fn bad_shardings_name_the_value() {
    // A sharding that does not divide its dimension: written, and from a policy.
    let e = error_of(|m| m["inputs"][0]["sharding"] = json!(["data", null]), Some("data=4"), &[]);
    assert_has(&e, &["model.json", "inputs[0].sharding", "value `x`", "size 6", "axis `data` of size 4"]);
    let e = error_of(|_| {}, Some("data=4"), &[ShardPolicy::Data]);
    assert_has(&e, &["input `x`", "batch dimension", "(size 6) does not divide over axis `data` of size 4"]);
    // An unknown axis.
    let e = error_of(|m| m["parameters"][0]["sharding"] = json!([null, "modle"]), Some("data=2,model=2"), &[]);
    assert_has(&e, &["parameters[0].sharding", "value `w`", "axis `modle`", "mesh (data=2, model=2)"]);
    // A policy whose axis the mesh lacks, and a policy without a mesh.
    let e = error_of(|_| {}, Some("data=2"), &[ShardPolicy::Tensor]);
    assert_has(&e, &["shard-tensor", "needs a mesh axis named `model`", "data=2"]);
    let e = error_of(|_| {}, None, &[ShardPolicy::Data]);
    assert_has(&e, &["shard-data", "--mesh data=N"]);
    // A sharding without a mesh, a wrong rank, a malformed one.
    let e = error_of(|m| m["nodes"][2]["sharding"] = json!(["data", null]), None, &[]);
    assert_has(&e, &["nodes[2].sharding", "value `y` is sharded but the model has no mesh"]);
    let e = error_of(|m| m["nodes"][2]["sharding"] = json!(["data"]), Some("data=2"), &[]);
    assert_has(&e, &["nodes[2].sharding", "value `y`", "1 entries for a value of type f32[6,4]"]);
    let e = error_of(|m| m["nodes"][2]["sharding"] = json!([1, null]), Some("data=2"), &[]);
    assert_has(&e, &["nodes[2].sharding", "expected a mesh axis name or null, found 1"]);
    let e = error_of(|m| m["mesh"] = json!({"data": 0}), None, &[]);
    assert_has(&e, &["mesh", "size 0"]);
    // The same axis on two dimensions.
    let e = error_of(|m| m["parameters"][0]["sharding"] = json!(["data", "data"]), Some("data=2"), &[]);
    assert_has(&e, &["value `w`", "splits two dimensions over axis `data`"]);
}

fn conflicting_annotations_name_the_value_or_node() {
    // A node annotated one way and listed as an output annotated another.
    let e = error_of(
        |m| {
            m["nodes"][2]["sharding"] = json!(["data", null]);
            m["outputs"] = json!([{"value": "y", "sharding": [null, "model"]}]);
        },
        Some("data=2,model=2"),
        &[],
    );
    assert_has(&e, &["outputs[0].sharding", "conflicting shardings", "value `y`", "[_,model]", "[data,_]"]);
    // Operands split one result dimension over different axes: propagation stops at the node.
    let conflicting = |m: &mut Value| {
        m["inputs"][0]["sharding"] = json!([null, "model"]);
        m["parameters"][1]["sharding"] = json!(["data"]);
        m["nodes"][0] = json!({"op": "add", "inputs": ["x", "b"], "outputs": ["h"]});
    };
    let e = error_of(conflicting, Some("data=2,model=2"), &[]);
    assert_has(&e, &["propagate-sharding", "node `h` (add)", "conflicting shardings", "`x`", "`b`", "annotate"]);
    // Annotating the node resolves it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    let mut model = base();
    conflicting(&mut model);
    model["nodes"][0]["sharding"] = json!([null, "data"]);
    std::fs::write(&path, model.to_string()).unwrap();
    try_compile(&path, &bindings(&[("batch", 6)]), Some("data=2,model=2"), &[]).unwrap();
}

fn a_mesh_larger_than_the_devices_is_refused() {
    if cpu_plugin().is_none() {
        return;
    }
    let path = repo_root().join("fixtures/mlp/model.json");
    let model = compile(&path, &bindings(&[("batch", 8)]), Some("data=4"), &[ShardPolicy::Data]);
    let e = session(2).run(&model, &BTreeMap::new(), 0).expect_err("4 partitions on 2 devices").to_string();
    assert_has(&e, &["runs on 4 devices", "the client has 2", "--cpu-devices"]);
}

fn main() {
    let fixtures = [("mlp", bindings(&[("batch", 8)])), ("transformer_block", bindings(&[("batch", 4), ("seq", 8)]))];
    let mut trials: Vec<_> = fixtures
        .into_iter()
        .map(|(name, b)| {
            trial(format!("{name}::data_tensor_and_2d_parallel_equal_one_device"), move || {
                data_tensor_and_2d_parallel_equal_one_device(name, &b)
            })
        })
        .collect();
    trials.push(trial(
        "the_lowering_declares_mesh_shardings_and_partitions",
        the_lowering_declares_mesh_shardings_and_partitions,
    ));
    trials
        .push(trial("annotations_written_in_model_json_are_honoured", annotations_written_in_model_json_are_honoured));
    trials
        .push(trial("sharded_artifacts_run_split_over_their_devices", sharded_artifacts_run_split_over_their_devices));
    trials.push(trial(
        "concurrent_sharded_runs_keep_their_collectives_apart",
        concurrent_sharded_runs_keep_their_collectives_apart,
    ));
    trials.push(trial("bad_shardings_name_the_value", bad_shardings_name_the_value));
    trials
        .push(trial("conflicting_annotations_name_the_value_or_node", conflicting_annotations_name_the_value_or_node));
    trials.push(trial("a_mesh_larger_than_the_devices_is_refused", a_mesh_larger_than_the_devices_is_refused));
    run_trials(trials)
}
