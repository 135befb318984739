//! `cargo bench -p xlac-driver --bench precision`: the transformer_block fixture at
//! batch 8 × seq 128 and a BERT-base-sized layer (hidden 768, seq 128, batch
//! 8), in f32 and mixed-bf16 on the CPU plugin: execute latency (median,
//! interleaved runs), XLA's memory statistics, and artifact sizes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use xlac_compiler::passes::precision::Precision;
use xlac_compiler::passes::OptLevel;
use xlac_driver::{compile_model, Options, Session};
use xlac_runtime::{CacheConfig, ClientOptions, Platform};

fn main() {
    std::env::set_var("TF_CPP_MIN_LOG_LEVEL", "3");
    let session =
        Session::new(Platform::Cpu, None, &ClientOptions::default(), &CacheConfig::disabled()).expect("the CPU plugin");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A one-layer BERT-base encoder with the transformer_block's structure, random weights.
    let big = dir.path().join("layer.json");
    let small = root.join("fixtures/transformer_block/model.json");
    write_layer(&big, dir.path(), 768, 12, 3072);
    let b: BTreeMap<String, u64> = [("batch".to_string(), 8), ("seq".to_string(), 128)].into_iter().collect();
    for (label, path) in [("transformer_block (d=32)", small), ("BERT-base layer (d=768)", big)] {
        let mut runs = Vec::new();
        for policy in [Precision::F32, Precision::MixedBf16] {
            let model = compile_model(
                &path,
                &Options { precision: policy, ..Options::at(OptLevel::O2, b.clone()) },
                &BTreeMap::new(),
            )
            .unwrap();
            let (exe, _) = session.compile(&model).unwrap();
            let artifact = dir.path().join(format!("{policy:?}.xlac"));
            xlac_driver::write_artifact(&model, &artifact, None).unwrap();
            let size = std::fs::metadata(&artifact).unwrap().len();
            let mem = exe.memory_stats().unwrap();
            let device = xlac_driver::DeviceModel::upload(exe, &model, &mut |_| {}).unwrap();
            let inputs = device.upload_inputs(&BTreeMap::new(), 0).unwrap();
            runs.push((policy, device, inputs, size, mem, Vec::<Duration>::new()));
        }
        for _ in 0..30 {
            for (_, device, inputs, _, _, times) in runs.iter_mut() {
                let t = Instant::now();
                device.execute(inputs).unwrap();
                times.push(t.elapsed());
            }
        }
        for (policy, _, _, size, mem, mut times) in runs {
            times.sort();
            println!(
                "{label} batch 8 × seq 128, {policy:?}: execute median {:.2?}; arguments {} B, temporaries {} B; artifact {} B",
                times[times.len() / 2], mem.argument_bytes, mem.temp_bytes, size
            );
        }
    }
}

/// Writes a one-layer encoder (the fixture's structure) of width `d` with random inline-free weights.
fn write_layer(path: &Path, dir: &Path, d: u64, heads: u64, ff: u64) {
    use serde_json::json;
    let mut tensors: Vec<(String, Vec<u64>)> = Vec::new();
    let mut params = Vec::new();
    let mut w = |name: &str, shape: &[u64]| {
        tensors.push((name.to_string(), shape.to_vec()));
        params.push(json!({"name": name, "dtype": "f32", "shape": shape, "file": "layer.safetensors"}));
        name.to_string()
    };
    let (g1, b1, g2, b2) = (w("ln1.g", &[d]), w("ln1.b", &[d]), w("ln2.g", &[d]), w("ln2.b", &[d]));
    let names = ["q", "k", "v", "o"];
    let proj: Vec<(String, String)> =
        names.iter().map(|p| (w(&format!("{p}.w"), &[d, d]), w(&format!("{p}.b"), &[d]))).collect();
    let (up, upb, down, downb) = (w("up.w", &[d, ff]), w("up.b", &[ff]), w("down.w", &[ff, d]), w("down.b", &[d]));
    let mut nodes = vec![json!({"op": "layer_norm", "inputs": ["x", g1, b1], "outputs": ["h"]})];
    for (i, p) in ["q", "k", "v"].iter().enumerate() {
        nodes.push(json!({"op": "linear", "inputs": ["h", proj[i].0, proj[i].1], "outputs": [format!("{p}")]}));
        nodes.push(json!({"op": "reshape", "inputs": [p], "outputs": [format!("{p}.s")], "attrs": {"shape": ["batch", "seq", heads, d / heads]}}));
        nodes.push(json!({"op": "transpose", "inputs": [format!("{p}.s")], "outputs": [format!("{p}.t")], "attrs": {"perm": [0, 2, 1, 3]}}));
    }
    nodes.push(json!({"op": "scaled_dot_product_attention", "inputs": ["q.t", "k.t", "v.t"], "outputs": ["a"], "attrs": {"causal": true}}));
    nodes.push(json!({"op": "transpose", "inputs": ["a"], "outputs": ["a.t"], "attrs": {"perm": [0, 2, 1, 3]}}));
    nodes
        .push(json!({"op": "reshape", "inputs": ["a.t"], "outputs": ["a.m"], "attrs": {"shape": ["batch", "seq", d]}}));
    nodes.push(json!({"op": "linear", "inputs": ["a.m", proj[3].0, proj[3].1], "outputs": ["o"]}));
    nodes.push(json!({"op": "add", "inputs": ["x", "o"], "outputs": ["r"]}));
    nodes.push(json!({"op": "layer_norm", "inputs": ["r", g2, b2], "outputs": ["h2"]}));
    nodes.push(json!({"op": "linear", "inputs": ["h2", up, upb], "outputs": ["u"], "attrs": {"activation": "gelu"}}));
    nodes.push(json!({"op": "linear", "inputs": ["u", down, downb], "outputs": ["dn"]}));
    nodes.push(json!({"op": "add", "inputs": ["r", "dn"], "outputs": ["y"]}));
    let model = json!({"format_version": 1, "name": "layer", "inputs": [{"name": "x", "dtype": "f32", "shape": ["batch", "seq", d]}],
        "parameters": params, "nodes": nodes, "outputs": ["y"]});
    std::fs::write(path, model.to_string()).unwrap();
    // Small pseudo-random weights, 1/sqrt(fan-in) scaled, so activations stay O(1).
    let mut state = 0x1234_5678u64;
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape) in &tensors {
        let n: u64 = shape.iter().product();
        let scale = if shape.len() == 2 { 1.0 / (shape[0] as f32).sqrt() } else { 0.1 };
        let start = data.len() as u64;
        for _ in 0..n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let v = ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
                + if name.ends_with(".g") { 1.0 } else { 0.0 };
            data.extend_from_slice(&v.to_le_bytes());
        }
        header
            .insert(name.clone(), json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len() as u64]}));
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&data);
    std::fs::write(dir.join("layer.safetensors"), bytes).unwrap();
}
