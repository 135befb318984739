//! Gradients, one test per op of the op table with a float operand: the op's
//! example, in f64, under the loss `Σ cast(op(x), f64) ⊙ r` (r fixed and
//! random), differentiated by reverse-mode autodiff and run on the reference
//! interpreter, agrees with central finite differences of the same loss.
//! Plus: the gradient programs of the fixtures agree on XLA and the interpreter.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use xlac_compiler::autodiff::{GradOptions, Remat};
use xlac_compiler::ir::op::table::{OpDef, OPS};
use xlac_compiler::passes::OptLevel;
use xlac_compiler::{DType, TensorType};
use xlac_driver::{compile_model, eval_model, Options};
use xlac_runtime::HostTensor;
use xlac_tests::{compare, named_fixtures, read_npy_dir, run_trials, shared_session, trial, Rng};

/// The ops defined on positive first operands only (the loss sums every element: one NaN spoils it).
const POSITIVE: [&str; 4] = ["log", "sqrt", "rsqrt", "pow"];

/// One use of an op: its name, operand types and attributes (JSON).
#[derive(Clone, Copy)]
struct Case {
    op: &'static str,
    operands: &'static [&'static str],
    attrs: &'static str,
}

impl Case {
    fn of(def: &OpDef) -> Case {
        Case { op: def.name, operands: def.example.operands, attrs: def.example.attrs }
    }
}

/// Uses beyond the table's examples: the window ops with strides, dilations,
/// padding and groups; matmul with batched and broadcast operands and vectors
/// (the table's example multiplies a batch by one matrix, its own rule).
const MORE: [(&str, Case); 6] = [
    (
        "conv2d_strided_dilated_grouped",
        Case {
            op: "conv2d",
            operands: &["f32[2,4,7,6]", "f32[6,2,3,2]"],
            attrs: r#"{"stride": [2, 1], "dilation": [1, 2], "padding": [1, 0, 2, 1], "groups": 2}"#,
        },
    ),
    (
        "max_pool2d_padded_strided",
        Case {
            op: "max_pool2d",
            operands: &["f32[1,2,5,6]"],
            attrs: r#"{"kernel": [3, 2], "stride": 2, "padding": 1}"#,
        },
    ),
    (
        "avg_pool2d_dilated",
        Case { op: "avg_pool2d", operands: &["f32[1,2,6,6]"], attrs: r#"{"kernel": 2, "dilation": 2}"# },
    ),
    ("matmul_broadcast_lhs", Case { op: "matmul", operands: &["f32[3,4]", "f32[2,4,5]"], attrs: "{}" }),
    ("matmul_vector_lhs", Case { op: "matmul", operands: &["f32[4]", "f32[4,5]"], attrs: "{}" }),
    ("matmul_vector_rhs", Case { op: "matmul", operands: &["f32[2,3,4]", "f32[4]"], attrs: "{}" }),
];

/// The case's operand types with f32 widened to f64 (finite differences need the precision).
fn operand_types(case: &Case) -> Vec<TensorType> {
    case.operands
        .iter()
        .map(|t| {
            let t: TensorType = t.parse().unwrap();
            if t.dtype == DType::F32 {
                t.with_dtype(DType::F64)
            } else {
                t
            }
        })
        .collect()
}

/// The op applied to inputs `x0..`, its result cast to f64 and weighed by `r`, summed into `loss`.
fn model(case: &Case, types: &[TensorType], out_shape: Option<&[u64]>) -> Value {
    let inputs: Vec<Value> = types
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"name": format!("x{i}"), "dtype": t.dtype.name(), "shape": t.shape}))
        .collect();
    let names: Vec<String> = (0..types.len()).map(|i| format!("x{i}")).collect();
    let attrs: Value = serde_json::from_str(case.attrs).unwrap();
    let mut nodes = vec![json!({"name": "y", "op": case.op, "inputs": names, "outputs": ["y"], "attrs": attrs})];
    let Some(shape) = out_shape else {
        return json!({"format_version": 1, "name": "probe", "inputs": inputs, "nodes": nodes, "outputs": ["y"]});
    };
    let mut rng = Rng(0x5eed ^ case.op.len() as u64);
    let n: u64 = shape.iter().product();
    let r: Vec<f64> = (0..n).map(|_| (rng.below(2001) as f64 - 1000.0) / 1000.0).collect();
    nodes.push(json!({"op": "cast", "inputs": ["y"], "outputs": ["y64"], "attrs": {"to": "f64"}}));
    nodes.push(json!({"op": "constant", "outputs": ["r"], "attrs": {"dtype": "f64", "shape": shape, "value": r}}));
    nodes.push(json!({"op": "mul", "inputs": ["y64", "r"], "outputs": ["weighted"]}));
    nodes.push(json!({"op": "reduce_sum", "inputs": ["weighted"], "outputs": ["loss"]}));
    json!({"format_version": 1, "name": "probe", "inputs": inputs, "nodes": nodes, "outputs": ["loss"]})
}

fn write(dir: &Path, name: &str, doc: &Value) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

/// The loss at `inputs`, on the interpreter.
fn loss_at(path: &Path, inputs: &BTreeMap<String, HostTensor>) -> f64 {
    let m = compile_model(path, &Options::at(OptLevel::O0, BTreeMap::new()), inputs).unwrap();
    eval_model(&m, inputs, 0).unwrap()[0].1.to_f64_vec()[0]
}

fn matches_finite_differences(case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let types = operand_types(&case);
    let probe = write(dir.path(), "probe.json", &model(&case, &types, None));
    let none = BTreeMap::new();
    let y = compile_model(&probe, &Options::at(OptLevel::O0, BTreeMap::new()), &none).unwrap();
    let out_shape = y.module.value(y.module.outputs()[0]).ty.shape.clone();
    let path = write(dir.path(), "model.json", &model(&case, &types, Some(&out_shape)));
    // Inputs: floats uniform in [-1, 1), as the runtime's seeded generator makes them; integers and bools likewise.
    // Positive-only ops read |x| + 0.5 as their first operand.
    let inputs: BTreeMap<String, HostTensor> = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            let mut x = HostTensor::random(t.dtype, &shape, 100 + i as u64).unwrap();
            if i == 0 && POSITIVE.contains(&case.op) {
                let bytes = x.to_f64_vec().iter().flat_map(|v| (v.abs() + 0.5).to_le_bytes()).collect();
                x = HostTensor::new(DType::F64, shape, bytes).unwrap();
            }
            (format!("x{i}"), x)
        })
        .collect();
    let wrt: Vec<String> =
        types.iter().enumerate().filter(|(_, t)| t.dtype.is_float()).map(|(i, _)| format!("x{i}")).collect();
    let options = Options {
        grad: Some(GradOptions { loss: Some("loss".into()), wrt: wrt.clone(), remat: Remat::None }),
        ..Options::at(OptLevel::O0, BTreeMap::new())
    };
    let grads = eval_model(&compile_model(&path, &options, &inputs).unwrap(), &inputs, 0).unwrap();
    if case.op == "stop_gradient" {
        // The identity, but no gradient flows through it.
        assert!(grads[1].1.to_f64_vec().iter().all(|&g| g == 0.0), "{:?}", grads[1].1.summary());
        return;
    }
    let h = 1e-6;
    for name in &wrt {
        let (_, analytic) = grads.iter().find(|(n, _)| *n == format!("grad.{name}")).unwrap();
        let x = &inputs[name];
        let base = x.to_f64_vec();
        let mut numeric = Vec::with_capacity(base.len());
        for i in 0..base.len() {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let mut moved = inputs.clone();
                let bytes = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                moved.insert(name.clone(), HostTensor::new(DType::F64, x.shape().to_vec(), bytes).unwrap());
                loss_at(&path, &moved)
            };
            numeric.push((at(h) - at(-h)) / (2.0 * h));
        }
        let bytes = numeric.iter().flat_map(|f| f.to_le_bytes()).collect();
        let numeric = HostTensor::new(DType::F64, x.shape().to_vec(), bytes).unwrap();
        compare(&format!("{}: d loss / d {name}", case.op), analytic, &numeric, 1e-5, 1e-6).unwrap();
    }
}

/// A fixture's outputs weighed into one loss; its gradients by every float
/// parameter agree on XLA (at -O2) and on the interpreter (at -O0).
fn fixture_gradients_agree_on_xla(dir: &Path) {
    let path = dir.join("model.json");
    let inputs = read_npy_dir(&dir.join("inputs"));
    let plain = compile_model(&path, &Default::default(), &inputs).unwrap();
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // Weights resolve from the fixture's folder; the rewritten model lives elsewhere.
    for p in doc["parameters"].as_array_mut().into_iter().flatten() {
        if let Some(f) = p["file"].as_str() {
            p["file"] = dir.join(f).display().to_string().into();
        }
    }
    let mut terms = Vec::new();
    for (i, (name, ty)) in plain.lowered.outputs.iter().enumerate().filter(|(_, (_, t))| t.dtype.is_float()) {
        let n: u64 = ty.shape.iter().product();
        let r: Vec<f64> = (0..n).map(|j| ((j * 7 + i as u64 * 3) % 11) as f64 / 11.0 - 0.5).collect();
        let nodes = doc["nodes"].as_array_mut().unwrap();
        nodes.push(json!({"op": "constant", "outputs": [format!("r{i}")], "attrs": {"dtype": ty.dtype.name(), "shape": ty.shape, "value": r}}));
        nodes.push(json!({"op": "mul", "inputs": [name, format!("r{i}")], "outputs": [format!("w{i}")]}));
        nodes.push(json!({"op": "reduce_sum", "inputs": [format!("w{i}")], "outputs": [format!("s{i}")]}));
        nodes.push(
            json!({"op": "cast", "inputs": [format!("s{i}")], "outputs": [format!("t{i}")], "attrs": {"to": "f32"}}),
        );
        terms.push(format!("t{i}"));
    }
    let nodes = doc["nodes"].as_array_mut().unwrap();
    let mut acc = terms[0].clone();
    for (k, t) in terms.iter().enumerate().skip(1) {
        nodes.push(json!({"op": "add", "inputs": [acc, t], "outputs": [format!("acc{k}")]}));
        acc = format!("acc{k}");
    }
    nodes.push(json!({"op": "mul", "inputs": [acc.clone(), acc], "outputs": ["loss"]}));
    doc["outputs"] = json!(["loss"]);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model.json");
    std::fs::write(&model, doc.to_string()).unwrap();
    let grad = |level| Options { grad: Some(GradOptions::default()), ..Options::at(level, BTreeMap::new()) };
    let result = compile_model(&model, &grad(OptLevel::O0), &inputs);
    let reference = eval_model(&result.unwrap(), &inputs, 0).unwrap();
    assert!(reference.len() > 1, "gradients are outputs");
    let Some(session) = shared_session(None) else { return };
    let optimised = compile_model(&model, &grad(OptLevel::O2), &inputs).unwrap();
    let xla = session.run(&optimised, &inputs, 0).unwrap();
    for ((name, want), (_, got)) in reference.iter().zip(&xla) {
        compare(&format!("{}: {name}", dir.display()), got, want, 1e-4, 1e-5).unwrap();
    }
}

fn main() {
    let mut trials = Vec::new();
    for def in OPS.iter().copied() {
        let case = Case::of(def);
        if operand_types(&case).iter().any(|t| t.dtype.is_float()) {
            trials.push(trial(format!("op::{}", def.name), move || matches_finite_differences(case)));
        }
    }
    for (name, case) in MORE {
        trials.push(trial(format!("op::{name}"), move || matches_finite_differences(case)));
    }
    for (name, dir) in named_fixtures() {
        trials.push(trial(format!("fixture::{name}::gradients_agree_on_xla"), move || {
            fixture_gradients_agree_on_xla(&dir)
        }));
    }
    run_trials(trials)
}
