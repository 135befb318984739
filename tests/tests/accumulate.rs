//! Gradient accumulation (`TrainConfig::accumulate`): K micro-batches in one
//! step program equal the step on the K× larger batch (loss, gradient norm
//! and updated weights within 1e-6 relative, f32) for every kind of model
//! the training tests cover, on XLA and the interpreter; XLA's compiled
//! memory statistics show one micro-batch's activations, not K.

use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xlac_compiler::passes::OptLevel;
use xlac_compiler::train::loss::{Loss, IGNORE_INDEX};
use xlac_compiler::train::optim::{Optimizer, Schedule};
use xlac_compiler::train::TrainConfig;
use xlac_driver::train::{after_step, initial_state, StepReport};
use xlac_driver::{compile_model, eval_model, CompiledModel, Options, Session};
use xlac_runtime::HostTensor;
use xlac_tests::{backend, fixture_model, repo_root, run_trials, shared_session, trial};

fn config(output: &str, loss: Loss, accumulate: u64) -> TrainConfig {
    TrainConfig {
        loss,
        output: Some(output.into()),
        optimizer: Optimizer::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.01 },
        schedule: Schedule::Constant,
        clip_norm: Some(1.0),
        freeze: vec![],
        accumulate,
    }
}

/// The first `rows` examples of every array.
fn first_rows(data: &BTreeMap<String, HostTensor>, rows: usize) -> BTreeMap<String, HostTensor> {
    data.iter()
        .map(|(k, t)| {
            let row = t.data().len() / t.shape()[0];
            let mut shape = t.shape().to_vec();
            shape[0] = rows;
            (k.clone(), HostTensor::new(t.element_type(), shape, t.data()[..rows * row].to_vec()).unwrap())
        })
        .collect()
}

fn compile(model: &Path, config: TrainConfig, sample: &BTreeMap<String, HostTensor>, level: OptLevel) -> CompiledModel {
    let mut inputs = sample.clone();
    inputs.remove("labels");
    let options = Options { train: Some(config), ..Options::at(level, BTreeMap::new()) };
    compile_model(model, &options, &inputs).unwrap()
}

/// `steps` steps of `step` on `batch`; the reports and the final state.
fn run(
    session: Option<&Session>,
    step: &CompiledModel,
    batch: &BTreeMap<String, HostTensor>,
    steps: usize,
) -> (Vec<StepReport>, BTreeMap<String, HostTensor>) {
    let mut state = initial_state(step, 0.1).unwrap();
    let mut reports = Vec::new();
    for _ in 0..steps {
        let mut given = state.clone();
        given.extend(batch.clone());
        let outputs = match session {
            Some(s) => s.run(step, &given, 0).unwrap(),
            None => eval_model(step, &given, 0).unwrap(),
        };
        reports.push(after_step(outputs, &mut state).unwrap());
    }
    (reports, state)
}

fn equals_the_larger_batch(fixture: &str, case: &str, output: &str, loss: Loss, k: usize, xla: bool) {
    let Some(session) = backend(xla) else { return };
    let data = xlac_tests::read_npy_dir(&repo_root().join("fixtures/train").join(case).join("data"));
    let model = fixture_model(fixture);
    let n = data["labels"].shape()[0];
    let level = if xla { OptLevel::O2 } else { OptLevel::O0 };
    let whole = compile(&model, config(output, loss.clone(), 1), &data, level);
    let micro = compile(&model, config(output, loss, k as u64), &first_rows(&data, n / k), level);
    let (want, want_state) = run(session, &whole, &data, 3);
    let (got, got_state) = run(session, &micro, &data, 3);
    let close = |what: &str, g: f64, w: f64| {
        assert!((g - w).abs() <= 1e-6 * w.abs() + 1e-7, "{case}, {k} micro-batches: {what} {g}, whole batch {w}");
    };
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        close(&format!("step {} loss", i + 1), g.loss, w.loss);
        close(&format!("step {} grad_norm", i + 1), g.grad_norm, w.grad_norm);
    }
    assert_eq!(got_state.keys().collect::<Vec<_>>(), want_state.keys().collect::<Vec<_>>());
    for (name, w) in &want_state {
        xlac_tests::compare(&format!("{case}: {name} after 3 steps"), &got_state[name], w, 1e-6, 1e-7).unwrap();
    }
}

/// A stack of `layers` ReLU layers of `width` on `[batch, width]` inputs:
/// activations grow with the batch, weights do not.
fn deep_mlp(dir: &Path, width: usize, layers: usize) -> PathBuf {
    let mut params = Vec::new();
    let mut nodes = Vec::new();
    let mut h = "x".to_string();
    for i in 0..layers {
        let values: Vec<f64> = (0..width * width).map(|j| ((j * 7 + i) % 13) as f64 / 13.0 - 0.5).collect();
        params.push(json!({"name": format!("w{i}"), "dtype": "f32", "shape": [width, width], "value": values}));
        let out = format!("h{i}");
        nodes.push(json!({"op": "matmul", "inputs": [h, format!("w{i}")], "outputs": [out.clone()]}));
        nodes.push(json!({"op": "tanh", "inputs": [out.clone()], "outputs": [format!("{out}.act")]}));
        h = format!("{out}.act");
    }
    let model = json!({
        "format_version": 1,
        "name": "deep",
        "inputs": [{"name": "x", "dtype": "f32", "shape": ["batch", width]}],
        "parameters": params,
        "nodes": nodes,
        "outputs": [h],
    });
    let path = dir.join("model.json");
    std::fs::write(&path, model.to_string()).unwrap();
    path
}

fn keeps_one_micro_batchs_activations() {
    let Some(session) = shared_session(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (width, layers, micro, k) = (64, 8, 256, 4);
    let model = deep_mlp(dir.path(), width, layers);
    let batch = |rows: usize| {
        let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[rows, width]));
        BTreeMap::from([
            ("x".to_string(), HostTensor::from_array(&x)),
            ("labels".to_string(), HostTensor::from_array(&x)),
        ])
    };
    let temp = |accumulate: u64, rows: usize| {
        let step =
            compile(&model, config(&format!("h{}.act", layers - 1), Loss::Mse, accumulate), &batch(rows), OptLevel::O2);
        let (exe, _) = session.compile(&step).unwrap();
        exe.memory_stats().unwrap().temp_bytes
    };
    let (one, whole, accumulated) = (temp(1, micro), temp(1, micro * k), temp(k as u64, micro));
    // The K× batch keeps about K× the activations of one micro-batch; K
    // micro-batches in one step keep one micro-batch's (plus the gradients'
    // sums), less than two micro-batches' worth.
    let per_micro = (whole - one) / (k as i64 - 1);
    eprintln!("temporaries: one micro-batch {one} B, {k} micro-batches {accumulated} B, the whole batch {whole} B");
    assert!(per_micro > 0, "batch {micro}: {one} B, batch {}: {whole} B", micro * k);
    assert!(
        accumulated < one + per_micro,
        "{k} micro-batches of {micro}: {accumulated} B of temporaries; one micro-batch {one} B, the whole batch {whole} B"
    );
}

fn cross_entropy() -> Loss {
    Loss::CrossEntropy { ignore_index: IGNORE_INDEX, label_smoothing: 0.0 }
}

fn main() {
    type Case = (&'static str, &'static str, &'static str, fn() -> Loss, usize);
    let cases: Vec<Case> = vec![
        ("mlp", "mlp_sgd_momentum", "fc2", cross_entropy, 3),
        ("cnn", "cnn_adamw", "log_probs", cross_entropy, 4),
        ("transformer_block", "transformer_block_adamw_warmup_cosine_clip", "y", || Loss::Mse, 2),
        (
            "train/bert_sequence_classification_adamw/checkpoint",
            "bert_sequence_classification_adamw",
            "logits",
            cross_entropy,
            2,
        ),
        ("hf/gpt2", "gpt2_causal_lm_adamw", "logits", || Loss::CausalLm { ignore_index: IGNORE_INDEX }, 2),
    ];
    let mut trials = Vec::new();
    for (fixture, case, output, loss, k) in cases {
        for xla in [true, false] {
            let backend = if xla { "xla" } else { "interpreter" };
            trials.push(trial(format!("{case}::{k}_micro_batches_equal_the_whole_batch::{backend}"), move || {
                equals_the_larger_batch(fixture, case, output, loss(), k, xla)
            }));
        }
    }
    trials.push(trial("accumulation_keeps_one_micro_batchs_activations", keeps_one_micro_batchs_activations));
    run_trials(trials)
}
