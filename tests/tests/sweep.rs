//! Sweeps run every trial on one compiled step: a step built tunable (its
//! weight decay, betas and schedule scalar inputs), fed a trial's values,
//! computes exactly what the step built with those values as constants
//! computes. One test per training case of fixtures/train: 20 steps of the
//! tunable step, built from other hyperparameters than the case's (a
//! constant schedule, other betas and decay) and fed the case's, give the
//! case's own step's losses, gradient norms, learning rates and final
//! weights bit for bit.

use std::collections::BTreeMap;
use xlac_compiler::passes::OptLevel;
use xlac_compiler::train::optim::{Optimizer, Schedule};
use xlac_compiler::train::TrainConfig;
use xlac_driver::sweep::knob_inputs;
use xlac_driver::train::Trainer;
use xlac_driver::{compile_model, CompiledModel, Session};
use xlac_runtime::HostTensor;
use xlac_tests::train_cases::cases;
use xlac_tests::{fixture_model, read_npy_dir, repo_root, run_trials, shared_session, trial};

fn compile(fixture: &str, config: TrainConfig, batch: &BTreeMap<String, HostTensor>) -> CompiledModel {
    let mut inputs = batch.clone();
    inputs.remove("labels");
    let options =
        xlac_driver::Options { train: Some(config), ..xlac_driver::Options::at(OptLevel::O2, BTreeMap::new()) };
    compile_model(&fixture_model(fixture), &options, &inputs).unwrap_or_else(|e| panic!("{fixture}: {e}"))
}

/// Other hyperparameters than `config`'s, of the same optimizer.
fn other(config: &TrainConfig) -> TrainConfig {
    let optimizer = match config.optimizer.clone() {
        Optimizer::Sgd { momentum, dampening, nesterov, .. } => {
            Optimizer::Sgd { momentum, dampening, nesterov, weight_decay: 0.3 }
        }
        Optimizer::AdamW { eps, .. } => Optimizer::AdamW { beta1: 0.5, beta2: 0.6, eps, weight_decay: 0.3 },
        Optimizer::AdamW8bit { eps, min_8bit_size, .. } => {
            Optimizer::AdamW8bit { beta1: 0.5, beta2: 0.6, eps, weight_decay: 0.3, min_8bit_size }
        }
        Optimizer::Adafactor { eps, clip_threshold, decay_rate, beta1, .. } => {
            Optimizer::Adafactor { eps, clip_threshold, decay_rate, beta1, weight_decay: 0.3 }
        }
    };
    TrainConfig { optimizer, schedule: Schedule::Constant, tunable: true, ..config.clone() }
}

type Run = (Vec<[f64; 3]>, Vec<(String, HostTensor)>);

fn train(
    session: &Session,
    step: &CompiledModel,
    lr: f64,
    knobs: BTreeMap<String, HostTensor>,
    batch: &BTreeMap<String, HostTensor>,
) -> Run {
    let mut trainer = Trainer::resume(session, step, lr, knobs).unwrap();
    let reports = (0..20).map(|i| trainer.step(batch, i).unwrap()).map(|r| [r.loss, r.grad_norm, r.lr]).collect();
    (reports, trainer.weights().unwrap())
}

fn tunable_equals_fixed(case: &str, fixture: &str, config: TrainConfig, lr: f64) {
    let Some(session) = shared_session(None) else { return };
    let batch = read_npy_dir(&repo_root().join("fixtures/train").join(case).join("data"));
    let fixed = compile(fixture, config.clone(), &batch);
    let tunable = compile(fixture, other(&config), &batch);
    let knobs = knob_inputs(&tunable, &config).unwrap();
    let (want, want_weights) = train(session, &fixed, lr, BTreeMap::new(), &batch);
    let (got, got_weights) = train(session, &tunable, lr, knobs, &batch);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{case} step {}: [loss, grad_norm, lr] of the tunable step and the fixed one", i + 1);
    }
    for ((name, g), (_, w)) in got_weights.iter().zip(&want_weights) {
        assert!(g.data() == w.data(), "{case}: final {name} differs");
    }
    // A step built with constants has no knobs to feed.
    assert!(knob_inputs(&fixed, &config).unwrap_err().to_string().contains("not built tunable"));
}

fn main() {
    let trials = cases()
        .into_iter()
        .map(|(case, fixture, config, lr)| trial(case, move || tunable_equals_fixed(case, fixture, config, lr)))
        .collect();
    run_trials(trials)
}
