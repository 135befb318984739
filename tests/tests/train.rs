//! Training against PyTorch, one test per case of fixtures/train/
//! (generate.py ran torch once; its outputs are committed): the mlp
//! fixture's training step, built by xlac as one program (loss, gradients,
//! clipping, schedule, optimizer), run for 20 steps from the same weights on
//! the same data, reports PyTorch's loss, gradient norm and learning rate at
//! every step (1e-5 relative) and ends at its parameters (1e-4), on XLA at -O2
//! and on the reference interpreter. On XLA, the compiled memory statistics
//! show the parameters, optimizer state and step aliased to their updates
//! (updated in place, not held twice).

use std::collections::BTreeMap;
use std::path::Path;
use xlac_compiler::passes::OptLevel;
use xlac_compiler::train::loss::{Loss, IGNORE_INDEX};
use xlac_compiler::train::optim::{Optimizer, Schedule};
use xlac_compiler::train::TrainConfig;
use xlac_driver::train::{after_step, initial_state};
use xlac_driver::{compile_model, eval_model, Options};
use xlac_runtime::HostTensor;
use xlac_tests::{compare, read_npy_dir, repo_root, run_trials, shared_session, trial};

/// A case: its folder under fixtures/train, the training configuration and the base learning rate.
fn cases() -> Vec<(&'static str, TrainConfig, f64)> {
    let ce = |label_smoothing| Loss::CrossEntropy { ignore_index: IGNORE_INDEX, label_smoothing };
    let config = |loss, optimizer, schedule, clip_norm| TrainConfig {
        loss,
        output: Some("fc2".into()),
        optimizer,
        schedule,
        clip_norm,
        freeze: vec![],
    };
    vec![
        (
            "mlp_sgd_momentum",
            config(
                ce(0.0),
                Optimizer::Sgd { momentum: 0.9, dampening: 0.1, nesterov: false, weight_decay: 0.01 },
                Schedule::Constant,
                None,
            ),
            0.1,
        ),
        (
            "mlp_sgd_nesterov_linear",
            config(
                ce(0.0),
                Optimizer::Sgd { momentum: 0.8, dampening: 0.0, nesterov: true, weight_decay: 0.0 },
                Schedule::Linear { warmup: 3, total: 20 },
                None,
            ),
            0.2,
        ),
        (
            "mlp_adamw_cosine_clip",
            config(
                ce(0.1),
                Optimizer::AdamW { beta1: 0.9, beta2: 0.98, eps: 1e-7, weight_decay: 0.05 },
                Schedule::Cosine { warmup: 3, total: 20 },
                Some(0.5),
            ),
            0.01,
        ),
    ]
}

/// Runs `steps` steps of the case on XLA (`xla`) or the interpreter and compares with PyTorch.
fn matches_pytorch(case: &str, config: TrainConfig, lr: f64, xla: bool) {
    let dir = repo_root().join("fixtures/train").join(case);
    let data = read_npy_dir(&dir.join("data"));
    let expected = read_npy_dir(&dir.join("expected"));
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/mlp/model.json");
    let level = if xla { OptLevel::O2 } else { OptLevel::O0 };
    let options = Options { train: Some(config), ..Options::at(level, BTreeMap::new()) };
    let batch: BTreeMap<String, HostTensor> =
        [("x".to_string(), data["x"].clone()), ("labels".to_string(), data["labels"].clone())].into();
    // The model's own input binds its batch size; the labels are the step's.
    let x: BTreeMap<String, HostTensor> = [("x".to_string(), data["x"].clone())].into();
    let step = compile_model(&model, &options, &x).unwrap();
    let session = if xla {
        match shared_session(None) {
            Some(s) => Some(s),
            None => return,
        }
    } else {
        None
    };
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
    for i in 0..losses.len() {
        let mut given = state.clone();
        given.extend(batch.clone());
        let outputs = match session {
            Some(s) => s.run(&step, &given, 0).unwrap(),
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
    for name in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"] {
        compare(&format!("{case}: final {name}"), &state[name], &expected[name], 1e-4, 1e-5).unwrap();
    }
}

fn main() {
    let mut trials = Vec::new();
    for (case, config, lr) in cases() {
        let c = config.clone();
        trials.push(trial(format!("{case}::xla"), move || matches_pytorch(case, c, lr, true)));
        trials.push(trial(format!("{case}::interpreter"), move || matches_pytorch(case, config, lr, false)));
    }
    run_trials(trials)
}
