//! Training against PyTorch, one test per case of fixtures/train/
//! (generate.py ran torch once; its outputs are committed): a fixture's
//! training step (the mlp with SGD and AdamW, the cnn with AdamW, the
//! transformer block with AdamW, warmup, cosine decay and clipping; a tiny
//! BertForSequenceClassification, and the tiny GPT-2 and Llama checkpoints
//! with transformers' causal-LM loss), built by xlac as one program (loss, gradients,
//! clipping, schedule, optimizer), run for 20 steps from the same weights on
//! the same data, reports PyTorch's loss, gradient norm and learning rate at
//! every step (1e-5 relative) and ends at its parameters (1e-4), on XLA at -O2
//! and on the reference interpreter. On XLA, the compiled memory statistics
//! show the parameters, optimizer state and step aliased to their updates
//! (updated in place, not held twice). The trained model's evaluation step
//! gives PyTorch's loss (and accuracy, for class labels) on the same data.
//! LoRA (the tiny BERT classifier's query and value with its classifier
//! trained in full, the tiny Llama's q_proj and v_proj, the tiny GPT-2's
//! `Conv1D` c_attn and c_fc, with SGD) starts from PEFT's
//! saved initial adapter and follows PEFT's trajectory the same way.

use std::collections::BTreeMap;
use xlac_compiler::passes::OptLevel;
use xlac_compiler::train::TrainConfig;
use xlac_driver::train::{after_step, initial_state};
use xlac_driver::{compile_model, eval_model, Options};
use xlac_tests::train_cases::{cases, compare_trained};
use xlac_tests::{backend, fixture_model, read_npy_dir, repo_root, run_trials, trial};

/// Runs `steps` steps of the case on XLA (`xla`) or the interpreter and compares with PyTorch.
fn matches_pytorch(case: &str, fixture: &str, config: TrainConfig, lr: f64, xla: bool) {
    let dir = repo_root().join("fixtures/train").join(case);
    let data = read_npy_dir(&dir.join("data"));
    let expected = read_npy_dir(&dir.join("expected"));
    // A model.json fixture, or a Hugging Face checkpoint directory under fixtures/hf.
    let model = fixture_model(fixture);
    let level = if xla { OptLevel::O2 } else { OptLevel::O0 };
    let options = Options { train: Some(config), ..Options::at(level, BTreeMap::new()) };
    let batch = data.clone();
    // The model's own inputs bind its symbols; the labels are the step's.
    let mut inputs = data.clone();
    inputs.remove("labels");
    let step = compile_model(&model, &options, &inputs).unwrap();
    let Some(session) = backend(xla) else { return };
    if let Some(s) = session {
        // Parameters, optimizer state and step are donated: XLA updates them in place.
        let m = &step.module;
        let donated: u64 = m.donations().iter().map(|&(v, _)| m.value(v).ty.size_bytes()).sum();
        let (exe, _) = s.compile(&step).unwrap();
        let stats = exe.memory_stats().unwrap();
        assert!(donated > 0 && stats.alias_bytes as u64 == donated, "{case}: {stats:?}, donated {donated} B");
    }
    let mut state = initial_state(&step, lr).unwrap();
    let want = |name: &str| expected[name].to_f64_vec();
    let (losses, norms, lrs) = (want("loss"), want("grad_norm"), want("lr"));
    // Compiled and loaded once, run each step.
    let loaded = session.map(|s| s.load(&step, &mut |_| {}).unwrap().0);
    for i in 0..losses.len() {
        let mut given = state.clone();
        given.extend(batch.clone());
        let outputs = match &loaded {
            Some(device) => device.run(&given, 0).unwrap(),
            None => eval_model(&step, &given, 0).unwrap(),
        };
        let r = after_step(outputs, &mut state).unwrap();
        let close = |what: &str, got: f64, want: f64, rtol: f64| {
            assert!(
                (got - want).abs() <= rtol * want.abs() + 1e-7,
                "{case} step {}: {what} {got}, PyTorch {want}",
                i + 1
            );
        };
        close("loss", r.loss, losses[i], 1e-5);
        close("grad_norm", r.grad_norm, norms[i], 1e-5);
        close("lr", r.lr, lrs[i], 1e-6);
    }
    let weights: Vec<&String> = expected
        .keys()
        .filter(|k| !["loss", "grad_norm", "lr"].contains(&k.as_str()))
        .filter(|k| !k.starts_with("eval_"))
        .collect();
    assert!(!weights.is_empty());
    for name in weights {
        compare_trained(case, name, &state[name], &expected[name], 1e-4, 1e-5).unwrap();
    }
    // The trained model's evaluation on its data: PyTorch's loss, and accuracy for class labels.
    let options = Options { eval: options.train, train: None, ..options };
    let evaluation = compile_model(&model, &options, &inputs).unwrap();
    let m = &evaluation.module;
    let wanted: Vec<String> = m.inputs().iter().map(|&v| m.value(v).name.clone()).collect();
    let mut given: BTreeMap<_, _> = state.into_iter().filter(|(k, _)| wanted.contains(k)).collect();
    given.extend(batch);
    let outputs: BTreeMap<String, _> = match session {
        Some(s) => s.run(&evaluation, &given, 0).unwrap(),
        None => eval_model(&evaluation, &given, 0).unwrap(),
    }
    .into_iter()
    .map(|(k, v)| (k, v.to_f64_vec()[0]))
    .collect();
    let loss = outputs["loss_sum"] / outputs["count"];
    let want_loss = expected["eval_loss"].to_f64_vec()[0];
    assert!((loss - want_loss).abs() <= 1e-4 * want_loss.abs(), "{case}: eval loss {loss}, PyTorch {want_loss}");
    match (outputs.get("correct"), expected.get("eval_accuracy")) {
        (Some(c), Some(want)) => assert_eq!(c / outputs["count"], want.to_f64_vec()[0], "{case}: eval accuracy"),
        (None, None) => {}
        (got, want) => panic!("{case}: accuracy {got:?}, PyTorch's {:?}", want.map(|w| w.to_f64_vec())),
    }
}

fn main() {
    let mut trials = Vec::new();
    for (case, fixture, config, lr) in cases() {
        let c = config.clone();
        trials.push(trial(format!("{case}::xla"), move || matches_pytorch(case, fixture, c, lr, true)));
        trials.push(trial(format!("{case}::interpreter"), move || matches_pytorch(case, fixture, config, lr, false)));
    }
    run_trials(trials)
}
