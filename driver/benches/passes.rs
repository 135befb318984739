//! `cargo bench -p xlac-driver --bench passes`: the -O2 pipeline plus lowering on a
//! generated BERT-base-shaped encoder (hidden 768, 12 heads, FFN 3072, seq 128)
//! written in exporters' decomposed form, at 24 layers and 10× that; then the
//! execute latency of the transformer_block fixture at -O0 and -O2.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use xlac_compiler::backend::stablehlo::lower;
use xlac_compiler::frontend::json::ModelFile;
use xlac_compiler::passes::{preset, OptLevel, Pass, PassContext};
use xlac_driver::{compile_model, DeviceModel, Options, Session};
use xlac_runtime::{CacheConfig, ClientOptions, Platform};

const HIDDEN: u64 = 768;
const HEADS: u64 = 12;
const FFN: u64 = 3072;

struct Graph {
    nodes: Vec<Value>,
    params: Vec<Value>,
    tensors: Vec<(String, Vec<u64>)>,
}

impl Graph {
    fn node(&mut self, op: &str, inputs: &[&str], out: &str, attrs: Value) -> String {
        let mut n = json!({"op": op, "inputs": inputs, "outputs": [out]});
        if attrs != json!(null) {
            n["attrs"] = attrs;
        }
        self.nodes.push(n);
        out.to_string()
    }
    fn weight(&mut self, name: &str, shape: &[u64]) -> String {
        self.params.push(json!({"name": name, "dtype": "f32", "shape": shape, "file": "weights.safetensors"}));
        self.tensors.push((name.to_string(), shape.to_vec()));
        name.to_string()
    }
    fn constant(&mut self, out: &str, v: f64) -> String {
        self.node("constant", &[], out, json!({"dtype": "f32", "value": v}))
    }
    /// matmul + bias, as exported.
    fn linear(&mut self, x: &str, p: &str, n_in: u64, n_out: u64) -> String {
        let w = self.weight(&format!("{p}.weight"), &[n_in, n_out]);
        let b = self.weight(&format!("{p}.bias"), &[n_out]);
        let mm = self.node("matmul", &[x, &w], &format!("{p}.mm"), json!(null));
        self.node("add", &[&mm, &b], p, json!(null))
    }
    /// Decomposed layer norm with affine parameters.
    fn layer_norm(&mut self, x: &str, p: &str) -> String {
        let g = self.weight(&format!("{p}.gamma"), &[HIDDEN]);
        let b = self.weight(&format!("{p}.beta"), &[HIDDEN]);
        let mu = self.node("reduce_mean", &[x], &format!("{p}.mean"), json!({"axes": [-1], "keepdims": true}));
        let c = self.node("sub", &[x, &mu], &format!("{p}.centered"), json!(null));
        let c2 = self.node("mul", &[&c, &c], &format!("{p}.sq"), json!(null));
        let var = self.node("reduce_mean", &[&c2], &format!("{p}.var"), json!({"axes": [-1], "keepdims": true}));
        let eps = self.constant(&format!("{p}.eps"), 1e-12);
        let ve = self.node("add", &[&var, &eps], &format!("{p}.var_eps"), json!(null));
        let sd = self.node("sqrt", &[&ve], &format!("{p}.std"), json!(null));
        let n = self.node("div", &[&c, &sd], &format!("{p}.norm"), json!(null));
        let s = self.node("mul", &[&n, &g], &format!("{p}.scaled"), json!(null));
        self.node("add", &[&s, &b], p, json!(null))
    }
    /// Decomposed (erf) GELU.
    fn gelu(&mut self, x: &str, p: &str) -> String {
        let c = self.constant(&format!("{p}.c"), std::f64::consts::FRAC_1_SQRT_2);
        let u = self.node("mul", &[x, &c], &format!("{p}.u"), json!(null));
        let e = self.node("erf", &[&u], &format!("{p}.erf"), json!(null));
        let one = self.constant(&format!("{p}.one"), 1.0);
        let t = self.node("add", &[&e, &one], &format!("{p}.t"), json!(null));
        let half = self.constant(&format!("{p}.half"), 0.5);
        let hx = self.node("mul", &[x, &half], &format!("{p}.hx"), json!(null));
        self.node("mul", &[&hx, &t], p, json!(null))
    }
    fn heads(&mut self, x: &str, p: &str) -> String {
        let r = self.node(
            "reshape",
            &[x],
            &format!("{p}.split"),
            json!({"shape": ["batch", "seq", HEADS, HIDDEN / HEADS]}),
        );
        self.node("transpose", &[&r], &format!("{p}.bhsd"), json!({"perm": [0, 2, 1, 3]}))
    }
    fn layer(&mut self, x: &str, l: usize) -> String {
        let p = format!("encoder.layer.{l}");
        let q = self.linear(x, &format!("{p}.attention.query"), HIDDEN, HIDDEN);
        let k = self.linear(x, &format!("{p}.attention.key"), HIDDEN, HIDDEN);
        let v = self.linear(x, &format!("{p}.attention.value"), HIDDEN, HIDDEN);
        let (q, k, v) =
            (self.heads(&q, &format!("{p}.q")), self.heads(&k, &format!("{p}.k")), self.heads(&v, &format!("{p}.v")));
        let kt = self.node("transpose", &[&k], &format!("{p}.kt"), json!({"perm": [0, 1, 3, 2]}));
        let qk = self.node("matmul", &[&q, &kt], &format!("{p}.qk"), json!(null));
        let scale = self.constant(&format!("{p}.scale"), 1.0 / ((HIDDEN / HEADS) as f64).sqrt());
        let s = self.node("mul", &[&qk, &scale], &format!("{p}.scores"), json!(null));
        let sm = self.node("add", &[&s, "mask"], &format!("{p}.masked"), json!(null));
        let mx = self.node("reduce_max", &[&sm], &format!("{p}.max"), json!({"axes": [-1], "keepdims": true}));
        let d = self.node("sub", &[&sm, &mx], &format!("{p}.shift"), json!(null));
        let e = self.node("exp", &[&d], &format!("{p}.exp"), json!(null));
        let z = self.node("reduce_sum", &[&e], &format!("{p}.z"), json!({"axes": [-1], "keepdims": true}));
        let pr = self.node("div", &[&e, &z], &format!("{p}.probs"), json!(null));
        let ctx = self.node("matmul", &[&pr, &v], &format!("{p}.context"), json!(null));
        let t = self.node("transpose", &[&ctx], &format!("{p}.bshd"), json!({"perm": [0, 2, 1, 3]}));
        let merged = self.node("reshape", &[&t], &format!("{p}.merged"), json!({"shape": ["batch", "seq", HIDDEN]}));
        let o = self.linear(&merged, &format!("{p}.attention.output"), HIDDEN, HIDDEN);
        let r1 = self.node("add", &[x, &o], &format!("{p}.res1"), json!(null));
        let h1 = self.layer_norm(&r1, &format!("{p}.attention.ln"));
        let up = self.linear(&h1, &format!("{p}.intermediate"), HIDDEN, FFN);
        let act = self.gelu(&up, &format!("{p}.gelu"));
        let down = self.linear(&act, &format!("{p}.output"), FFN, HIDDEN);
        let r2 = self.node("add", &[&h1, &down], &format!("{p}.res2"), json!(null));
        self.layer_norm(&r2, &format!("{p}.output.ln"))
    }
}

/// Writes model.json and a sparse weights file (header and size, no data) for `layers` layers.
fn write_encoder(dir: &Path, layers: usize) -> std::path::PathBuf {
    let mut g = Graph { nodes: Vec::new(), params: Vec::new(), tensors: Vec::new() };
    let mut x = "hidden".to_string();
    for l in 0..layers {
        x = g.layer(&x, l);
    }
    let model = json!({
        "format_version": 1, "name": format!("bert_{layers}"),
        "inputs": [{"name": "hidden", "dtype": "f32", "shape": ["batch", "seq", HIDDEN]}, {"name": "mask", "dtype": "f32", "shape": ["batch", 1, 1, "seq"]}],
        "parameters": g.params, "nodes": g.nodes, "outputs": [x],
    });
    let path = dir.join(format!("bert_{layers}.json"));
    std::fs::write(&path, model.to_string()).unwrap();
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in &g.tensors {
        let len = shape.iter().product::<u64>() * 4;
        header.insert(name.clone(), json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}));
        offset += len;
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    let weights = dir.join("weights.safetensors");
    std::fs::write(&weights, &bytes).unwrap();
    std::fs::File::options().write(true).open(&weights).unwrap().set_len(8 + h.len() as u64 + offset).unwrap();
    path
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Peak resident memory of this process so far, in MiB (VmHWM).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn main() {
    std::env::set_var("TF_CPP_MIN_LOG_LEVEL", "3");
    let dir = tempfile::tempdir().unwrap();
    let bindings: BTreeMap<String, u64> = [("batch".to_string(), 8), ("seq".to_string(), 128)].into_iter().collect();
    println!(
        "{:>7} {:>7} {:>7} {:>12} {:>12} {:>12} {:>12} {:>10}",
        "layers", "nodes", "-O2", "read+verify", "-O2 passes", "lower", "passes+lower", "peak RSS"
    );
    for layers in [24, 240] {
        let path = write_encoder(dir.path(), layers);
        let file = ModelFile::load(&path).unwrap();
        let runs = if layers > 100 { 3 } else { 9 };
        let (mut read, mut opt, mut low) = (Vec::new(), Vec::new(), Vec::new());
        let (mut before, mut after) = (0, 0);
        for _ in 0..runs {
            let t = Instant::now();
            let mut m = file.build(&bindings).unwrap();
            read.push(t.elapsed());
            before = m.order().len();
            // The pipeline as a release build runs it: the verifier after each changed pass, no unchanged-check.
            let mut cx = PassContext::default();
            cx.verify_each = false;
            let t = Instant::now();
            preset(OptLevel::O2).run(&mut m, &mut cx).unwrap();
            opt.push(t.elapsed());
            after = m.order().len();
            let t = Instant::now();
            std::hint::black_box(lower(&m));
            low.push(t.elapsed());
        }
        let (r, o, l) = (median(read), median(opt), median(low));
        println!(
            "{layers:>7} {before:>7} {after:>7} {r:>12.2?} {o:>12.2?} {l:>12.2?} {:>12.2?} {:>8.0}MiB",
            o + l,
            peak_rss_mib()
        );
    }
    let session =
        Session::new(Platform::Cpu, None, &ClientOptions::default(), &CacheConfig::disabled()).expect("the CPU plugin");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("fixtures/transformer_block/model.json");
    let b: BTreeMap<String, u64> = [("batch".to_string(), 8), ("seq".to_string(), 128)].into_iter().collect();
    // Both programs compiled first, then run alternately so that neither gets the quieter moments.
    let mut runs = Vec::new();
    for level in [OptLevel::O0, OptLevel::O2] {
        let model = compile_model(&fixture, &Options::at(level, b.clone()), &BTreeMap::new()).unwrap();
        let (exe, _) = session.compile(&model).unwrap();
        let device = DeviceModel::upload(exe, &model, &mut |_| {}).unwrap();
        let inputs = device.upload_inputs(&BTreeMap::new(), 0).unwrap();
        runs.push((level, model.module.order().len(), device, inputs, Vec::new()));
    }
    for _ in 0..200 {
        for (_, _, device, inputs, times) in runs.iter_mut() {
            let t = Instant::now();
            device.execute(inputs).unwrap();
            times.push(t.elapsed());
        }
    }
    for (level, nodes, _, _, times) in runs {
        println!(
            "transformer_block batch 8 × seq 128 at {level:?}: {nodes} nodes, execute median {:.2?}",
            median(times)
        );
    }
}
