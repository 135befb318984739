//! Random numbers and dropout: `random_uniform` gives the same numbers on XLA
//! and the interpreter (both are XLA's THREE_FRY generator) in every float
//! dtype, and they are uniform, with independent streams; a checkpoint's
//! dropout keeps 1-p of the elements and scales them by 1/(1-p); a training
//! step draws new masks from its seed (the same seed, the same step), and
//! evaluation draws none.

use ndarray::{arr0, ArrayD, IxDyn};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use xlac_compiler::autodiff::Remat;
use xlac_compiler::frontend::hf::{self, Dropout, ImportOptions};
use xlac_compiler::passes::OptLevel;
use xlac_compiler::train::lora::Lora;
use xlac_compiler::train::loss::Loss;
use xlac_compiler::train::optim::{Optimizer, Schedule};
use xlac_compiler::train::{StepArg, TrainConfig};
use xlac_driver::train::{after_step, initial_state};
use xlac_driver::{compile_model, eval_model, CompiledModel, Options};
use xlac_runtime::HostTensor;
use xlac_tests::{compare, repo_root, run_trials, shared_session, trial};

fn seed(s: i64) -> HostTensor {
    HostTensor::from_array(&arr0(s))
}

/// A model of two `random_uniform` draws of `dtype` from the input `seed`:
/// `a` of shape [3, 5, 4] from stream 0, `b` a scalar from stream 3.
fn two_draws(dir: &Path, dtype: &str, n: u64) -> CompiledModel {
    let model = json!({
        "format_version": 1,
        "name": "draws",
        "inputs": [{"name": "seed", "dtype": "i64", "shape": []}],
        "nodes": [
            {"op": "random_uniform", "inputs": ["seed"], "outputs": ["a"], "attrs": {"dtype": dtype, "shape": [n, 5, 4]}},
            {"op": "random_uniform", "inputs": ["seed"], "outputs": ["b"], "attrs": {"dtype": dtype, "stream": 3}},
        ],
        "outputs": ["a", "b"],
    });
    let path = dir.join("model.json");
    std::fs::write(&path, model.to_string()).unwrap();
    compile_model(&path, &Options::at(OptLevel::O2, BTreeMap::new()), &BTreeMap::new()).unwrap()
}

fn the_same_on_xla_and_the_interpreter(dtype: &'static str) {
    let Some(session) = shared_session(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = two_draws(dir.path(), dtype, 3);
    for s in [0, 1, -5_123_456_789_012, i64::MAX] {
        let given = BTreeMap::from([("seed".to_string(), seed(s))]);
        let xla = session.run(&model, &given, 0).unwrap();
        let reference = eval_model(&model, &given, 0).unwrap();
        for ((name, got), (_, want)) in xla.iter().zip(&reference) {
            compare(&format!("{dtype} seed {s}: {name}"), got, want, 0.0, 0.0).unwrap();
        }
    }
}

/// Mean and variance.
fn moments(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    (mean, x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n)
}

fn uniform_with_independent_streams_and_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let n = 2000; // 40 000 numbers
    let model = two_draws(dir.path(), "f32", n);
    let draw = |s: i64| eval_model(&model, &BTreeMap::from([("seed".to_string(), seed(s))]), 0).unwrap();
    let first = draw(7);
    let a = first[0].1.to_f64_vec();
    let count = a.len() as f64;
    assert!(a.iter().all(|&u| (0.0..1.0).contains(&u)));
    let (mean, var) = moments(&a);
    // Four standard errors: 1/√(12n) for the mean, √(1/180n) for the variance.
    assert!((mean - 0.5).abs() < 4.0 / (12.0 * count).sqrt(), "mean {mean}");
    assert!((var - 1.0 / 12.0).abs() < 4.0 / (180.0 * count).sqrt(), "variance {var}");
    // Each tenth of [0, 1) holds a tenth of the numbers (binomial, four standard deviations).
    for k in 0..10 {
        let inside = a.iter().filter(|&&u| (u * 10.0) as usize == k).count() as f64;
        assert!((inside / count - 0.1).abs() < 4.0 * (0.09 / count).sqrt(), "tenth {k}: {inside}");
    }
    // Another seed, or the same seed's stream 0 at another length, is uncorrelated or the same.
    let other = draw(8)[0].1.to_f64_vec();
    let correlation = |x: &[f64], y: &[f64]| {
        let ((mx, vx), (my, vy)) = (moments(x), moments(y));
        x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum::<f64>() / (x.len() as f64 * (vx * vy).sqrt())
    };
    assert!(correlation(&a, &other).abs() < 4.0 / count.sqrt());
    // Neighbouring numbers of one stream are uncorrelated.
    assert!(correlation(&a[1..], &a[..a.len() - 1]).abs() < 4.0 / count.sqrt());
    assert_eq!(draw(7)[0].1.to_f64_vec(), a, "the same seed gives the same numbers");
    // Stream 3's scalar is none of stream 0's numbers (a shifted copy would be).
    let b = first[1].1.to_f64_vec()[0];
    assert!(!a.contains(&b), "{b}");
}

/// The BERT fixture imported with dropout `p` everywhere, its outputs before
/// and after the embeddings' and the first attention's dropout.
fn bert_with_dropout(dir: &Path, p: f64) -> (CompiledModel, BTreeMap<String, HostTensor>) {
    let ckpt = repo_root().join("fixtures/hf/bert");
    let options = ImportOptions { dropout: Dropout::Rate(p), ..ImportOptions::default() };
    let mut model = hf::import(&ckpt, &options).unwrap();
    for param in model["parameters"].as_array_mut().unwrap() {
        let file = param["file"].as_str().unwrap().to_string();
        param["file"] = json!(ckpt.join(file).display().to_string());
    }
    let seen = ["embeddings", "embeddings.dropout", "layer0.attention.probs", "layer0.attention.probs.dropout"];
    model["outputs"] = json!(seen);
    let path = dir.join("model.json");
    std::fs::write(&path, model.to_string()).unwrap();
    let (batch, seq) = (8, 16);
    let ids = ArrayD::from_shape_fn(IxDyn(&[batch, seq]), |ix| ((ix[0] * 31 + ix[1] * 7) % 96) as i64);
    let given = BTreeMap::from([
        ("input_ids".to_string(), HostTensor::from_array(&ids)),
        ("attention_mask".to_string(), HostTensor::from_array(&ArrayD::<i64>::ones(IxDyn(&[batch, seq])))),
        ("token_type_ids".to_string(), HostTensor::from_array(&ArrayD::<i64>::zeros(IxDyn(&[batch, seq])))),
        ("dropout_seed".to_string(), seed(42)),
    ]);
    let model = compile_model(&path, &Options::at(OptLevel::O2, BTreeMap::new()), &given).unwrap();
    (model, given)
}

/// Of `after = dropout(before)`: the kept fraction, after checking that each
/// element is 0 or `before/(1-p)`.
fn kept_fraction(before: &[f64], after: &[f64], p: f64) -> f64 {
    let mut kept = 0;
    for (&x, &y) in before.iter().zip(after) {
        if y != 0.0 {
            assert!((y - x / (1.0 - p)).abs() <= 1e-6 * y.abs(), "{y} is neither 0 nor {x}/(1-{p})");
            kept += 1;
        }
    }
    kept as f64 / after.len() as f64
}

fn a_checkpoints_dropout_keeps_1_minus_p_scaled() {
    let p = 0.3;
    let dir = tempfile::tempdir().unwrap();
    let (model, given) = bert_with_dropout(dir.path(), p);
    let outputs = match shared_session(None) {
        Some(s) => {
            let xla = s.run(&model, &given, 0).unwrap();
            // The masks are the interpreter's: the same random numbers.
            let reference = eval_model(&model, &given, 0).unwrap();
            for ((name, got), (_, want)) in xla.iter().zip(&reference) {
                compare(&format!("XLA vs interpreter: {name}"), got, want, 1e-4, 1e-5).unwrap();
            }
            xla
        }
        None => eval_model(&model, &given, 0).unwrap(),
    };
    let v: Vec<Vec<f64>> = outputs.iter().map(|(_, t)| t.to_f64_vec()).collect();
    for (before, after) in [(&v[0], &v[1]), (&v[2], &v[3])] {
        let kept = kept_fraction(before, after, p);
        let n = after.len() as f64;
        assert!((kept - (1.0 - p)).abs() < 4.0 * (p * (1.0 - p) / n).sqrt(), "kept {kept} of {n}");
    }
}

fn gpt2_step(dropout: Dropout, eval: bool, lora: Option<Lora>) -> (CompiledModel, BTreeMap<String, HostTensor>) {
    let case = repo_root().join("fixtures/train/gpt2_causal_lm_adamw/data");
    let mut data = xlac_tests::read_npy_dir(&case);
    if !data.contains_key("labels") {
        data.insert("labels".into(), data["input_ids"].clone());
    }
    let config = TrainConfig {
        loss: Loss::CausalLm { ignore_index: -100 },
        output: Some("logits".into()),
        optimizer: Optimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
        schedule: Schedule::Constant,
        clip_norm: None,
        freeze: vec![],
        accumulate: 1,
        remat: Remat::None,
        lora,
        loss_scale: None,
        zero: xlac_compiler::train::shard::Zero::Off,
        tunable: false,
    };
    let (train, evaluate) = if eval { (None, Some(config)) } else { (Some(config), None) };
    let options = Options {
        train,
        eval: evaluate,
        import: ImportOptions { dropout, ..ImportOptions::default() },
        ..Options::at(OptLevel::O1, BTreeMap::new())
    };
    let inputs = BTreeMap::from([("input_ids".to_string(), data["input_ids"].clone())]);
    (compile_model(&repo_root().join("fixtures/hf/gpt2"), &options, &inputs).unwrap(), data)
}

fn random_nodes(model: &CompiledModel) -> usize {
    random_streams(model).len()
}

/// The streams the model's `random_uniform` nodes draw from, in order.
fn random_streams(model: &CompiledModel) -> Vec<u64> {
    let m = &model.module;
    m.order()
        .iter()
        .filter_map(|&n| match m.node(n).op {
            xlac_compiler::ir::op::Op::RandomUniform { stream, .. } => Some(stream),
            _ => None,
        })
        .collect()
}

/// LoRA's dropout (on each adapter's input) draws in the train step, each
/// site from a stream of its own beside the checkpoint's, and never in evaluation.
fn lora_dropout_draws_its_own_streams_in_training_only() {
    let lora: Lora = "r=2,alpha=4,targets=c_attn,dropout=0.1".parse().unwrap();
    let (step, _) = gpt2_step(Dropout::Checkpoint, false, Some(lora.clone()));
    let mut streams = random_streams(&step);
    // The checkpoint's 7 sites, and c_attn's adapter in each of the 2 layers.
    assert_eq!(streams.len(), 9);
    streams.sort_unstable();
    streams.dedup();
    assert_eq!(streams.len(), 9, "every site draws its own stream");
    let (alone, _) = gpt2_step(Dropout::Off, false, Some(lora.clone()));
    assert_eq!(random_nodes(&alone), 2);
    let seeds = alone.step_args.as_ref().unwrap().iter().filter(|a| **a == StepArg::Seed).count();
    assert_eq!(seeds, 1, "LoRA's dropout adds the seed input a model without dropout lacks");
    let (evaluation, _) = gpt2_step(Dropout::Off, true, Some(lora));
    assert_eq!(random_nodes(&evaluation), 0);
}

fn a_step_draws_from_its_seed_and_evaluation_draws_nothing() {
    let (step, batch) = gpt2_step(Dropout::Checkpoint, false, None);
    // GPT-2's embd_pdrop, then attn_pdrop and resid_pdrop twice in each of the 2 layers.
    assert_eq!(random_nodes(&step), 7);
    let seeds = step.step_args.as_ref().unwrap().iter().filter(|a| **a == StepArg::Seed).count();
    assert_eq!(seeds, 1);
    let loss = |s: i64| {
        let mut given = initial_state(&step, 1e-3).unwrap();
        given.extend(batch.clone());
        given.insert("dropout_seed".into(), seed(s));
        let outputs = match shared_session(None) {
            Some(session) => session.run(&step, &given, 0).unwrap(),
            None => eval_model(&step, &given, 0).unwrap(),
        };
        after_step(outputs, &mut given).unwrap().loss
    };
    let (a, again, b) = (loss(1), loss(1), loss(2));
    assert_eq!(a, again, "the same seed drops the same elements");
    assert_ne!(a, b, "another seed drops others");
    let (evaluation, _) = gpt2_step(Dropout::Off, true, None);
    assert_eq!(random_nodes(&evaluation), 0);
    assert!(!evaluation.step_args.as_ref().unwrap().contains(&StepArg::Seed));
    // Dropout 0 is no dropout: no random numbers, no seed.
    let (plain, _) = gpt2_step(Dropout::Rate(0.0), false, None);
    assert_eq!(random_nodes(&plain), 0);
}

fn main() {
    let mut trials: Vec<_> = ["f32", "f64", "f16", "bf16"]
        .into_iter()
        .map(|d| {
            trial(format!("random_uniform_is_the_same_on_xla_and_the_interpreter::{d}"), move || {
                the_same_on_xla_and_the_interpreter(d)
            })
        })
        .collect();
    trials.push(trial(
        "random_uniform_is_uniform_with_independent_streams_and_seeds",
        uniform_with_independent_streams_and_seeds,
    ));
    trials.push(trial(
        "a_checkpoints_dropout_keeps_1_minus_p_scaled_by_1_over_1_minus_p",
        a_checkpoints_dropout_keeps_1_minus_p_scaled,
    ));
    trials.push(trial(
        "a_step_draws_from_its_seed_and_evaluation_draws_nothing",
        a_step_draws_from_its_seed_and_evaluation_draws_nothing,
    ));
    trials.push(trial(
        "lora_dropout_draws_its_own_streams_in_training_only",
        lora_dropout_draws_its_own_streams_in_training_only,
    ));
    run_trials(trials)
}
