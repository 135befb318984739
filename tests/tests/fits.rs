//! Training that fits, each technique against the plain step:
//! - gradient accumulation (`TrainConfig::accumulate`): K micro-batches in
//!   one step program equal the step on the K× larger batch (loss, gradient
//!   norm and updated weights within 1e-6 relative, f32) for every kind of
//!   model the training tests cover, on XLA and the interpreter, and XLA's
//!   compiled memory statistics show one micro-batch's activations, not K;
//! - rematerialization (`TrainConfig::remat`): the checkpoints' steps with
//!   layers recomputed, and every case's with everything recomputed, equal
//!   the plain ones within 1e-6, and a model of layers keeps under half the
//!   temporaries (the recomputation survives XLA's CSE);
//! - mixed-bf16 and mixed-f16 training: the checkpoints' steps multiply in
//!   bf16 (f16, its loss scaled as GradScaler's), keep f32 weights and
//!   state, and follow PyTorch's f32 trajectory within 5e-3; a loss scale
//!   too large skips steps and backs off;
//! - 8-bit AdamW: every value is coded as its nearest value of the map (on
//!   XLA and the interpreter), its state for a BERT-base-shaped model is ≤ 0.3× AdamW's,
//!   and 200 steps of the tiny BERT classifier (every tensor in 8 bits) stay
//!   within 5e-3 of AdamW's losses (measured: 1.8e-3), on XLA and, for 5
//!   steps, on the interpreter.

use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xlac_compiler::autodiff::Remat;
use xlac_compiler::passes::precision::Precision;
use xlac_compiler::passes::OptLevel;
use xlac_compiler::train::loss::{Loss, IGNORE_INDEX};
use xlac_compiler::train::optim::{Optimizer, Schedule};
use xlac_compiler::train::{quantize, LossScale, TrainConfig};
use xlac_compiler::DType;
use xlac_driver::train::{after_step, initial_state, StepReport, Trainer};
use xlac_driver::{compile_model, eval_model, CompiledModel, Options, Session};
use xlac_runtime::HostTensor;
use xlac_tests::{backend, first_rows, fixture_model, repo_root, run_trials, shared_session, trial};

/// How a step saves memory.
#[derive(Clone, Copy, Debug)]
enum Technique {
    /// K micro-batches per step.
    Accumulate(u64),
    /// Layers (or everything) recomputed in the backward pass.
    Remat(Remat),
}

fn config(output: &str, loss: Loss, technique: Option<Technique>) -> TrainConfig {
    let accumulate = match technique {
        Some(Technique::Accumulate(k)) => k,
        _ => 1,
    };
    TrainConfig {
        loss,
        output: Some(output.into()),
        optimizer: Optimizer::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.01 },
        schedule: Schedule::Constant,
        clip_norm: Some(1.0),
        freeze: vec![],
        accumulate,
        remat: match technique {
            Some(Technique::Remat(r)) => r,
            _ => Remat::None,
        },
        lora: None,
        loss_scale: None,
        zero: xlac_compiler::train::shard::Zero::Off,
        tunable: false,
    }
}

fn compile(model: &Path, config: TrainConfig, sample: &BTreeMap<String, HostTensor>, level: OptLevel) -> CompiledModel {
    let mut inputs = sample.clone();
    inputs.remove("labels");
    let options = Options { train: Some(config), ..Options::at(level, BTreeMap::new()) };
    compile_model(model, &options, &inputs).unwrap()
}

/// `steps` steps of `step` on `batch` at learning rate `lr`; the reports and the final state.
fn run(
    session: Option<&Session>,
    step: &CompiledModel,
    batch: &BTreeMap<String, HostTensor>,
    steps: usize,
    lr: f64,
) -> (Vec<StepReport>, BTreeMap<String, HostTensor>) {
    let mut state = initial_state(step, lr).unwrap();
    let mut reports = Vec::new();
    // Compiled and loaded once, run each step.
    let loaded = session.map(|s| s.load(step, &mut |_| {}).unwrap().0);
    for _ in 0..steps {
        let mut given = state.clone();
        given.extend(batch.clone());
        let outputs = match &loaded {
            Some(device) => device.run(&given, 0).unwrap(),
            None => eval_model(step, &given, 0).unwrap(),
        };
        reports.push(after_step(outputs, &mut state).unwrap());
    }
    (reports, state)
}

/// 3 steps with `technique` equal 3 plain steps: on the K× batch for accumulation.
fn equals_the_plain_step(fixture: &str, case: &str, output: &str, loss: Loss, technique: Technique, xla: bool) {
    let Some(session) = backend(xla) else { return };
    let data = xlac_tests::read_npy_dir(&repo_root().join("fixtures/train").join(case).join("data"));
    let model = fixture_model(fixture);
    let n = data["labels"].shape()[0];
    let level = if xla { OptLevel::O2 } else { OptLevel::O0 };
    let plain = compile(&model, config(output, loss.clone(), None), &data, level);
    let sample = match technique {
        Technique::Accumulate(k) => first_rows(&data, n / k as usize),
        Technique::Remat(_) => data.clone(),
    };
    let saving = compile(&model, config(output, loss, Some(technique)), &sample, level);
    let (want, want_state) = run(session, &plain, &data, 3, 0.1);
    let (got, got_state) = run(session, &saving, &data, 3, 0.1);
    let close = |what: &str, g: f64, w: f64| {
        assert!((g - w).abs() <= 1e-6 * w.abs() + 1e-7, "{case}, {technique:?}: {what} {g}, plain {w}");
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

/// A stack of `layers` layers of 4 tanh sublayers of `width` on `[batch,
/// width]` inputs, the nodes named `layer{i}.…`: activations grow with the
/// batch, weights do not, and most activations lie inside a layer.
fn deep_mlp(dir: &Path, width: usize, layers: usize) -> PathBuf {
    let mut params = Vec::new();
    let mut nodes = Vec::new();
    let mut h = "x".to_string();
    for i in 0..layers {
        for j in 0..4 {
            let w = format!("w{i}.{j}");
            let values: Vec<f64> = (0..width * width).map(|e| ((e * 7 + i + j) % 13) as f64 / 26.0 - 0.25).collect();
            params.push(json!({"name": w, "dtype": "f32", "shape": [width, width], "value": values}));
            let (pre, act) = (format!("layer{i}.h{j}"), format!("layer{i}.act{j}"));
            nodes.push(json!({"op": "matmul", "inputs": [h, w], "outputs": [pre.clone()]}));
            nodes.push(json!({"op": "tanh", "inputs": [pre], "outputs": [act.clone()]}));
            h = act;
        }
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

/// XLA's temporaries for the deep model's step with `technique` on `rows` examples per micro-batch.
fn temporaries(session: &Session, model: &Path, technique: Option<Technique>, rows: usize) -> i64 {
    let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[rows, WIDTH]));
    let batch = BTreeMap::from([
        ("x".to_string(), HostTensor::from_array(&x)),
        ("labels".to_string(), HostTensor::from_array(&x)),
    ]);
    let output = format!("layer{}.act3", LAYERS - 1);
    let step = compile(model, config(&output, Loss::Mse, technique), &batch, OptLevel::O2);
    let (exe, _) = session.compile(&step).unwrap();
    exe.memory_stats().unwrap().temp_bytes
}

const WIDTH: usize = 64;
const LAYERS: usize = 12;

fn accumulation_keeps_one_micro_batchs_activations() {
    let Some(session) = shared_session(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = deep_mlp(dir.path(), WIDTH, LAYERS);
    let (micro, k) = (256, 4);
    let one = temporaries(session, &model, None, micro);
    let whole = temporaries(session, &model, None, micro * k);
    let accumulated = temporaries(session, &model, Some(Technique::Accumulate(k as u64)), micro);
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

fn remat_keeps_under_half_the_temporaries() {
    let Some(session) = shared_session(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = deep_mlp(dir.path(), WIDTH, LAYERS);
    let plain = temporaries(session, &model, None, 1024);
    let remat = temporaries(session, &model, Some(Technique::Remat(Remat::Layers)), 1024);
    eprintln!("temporaries: plain {plain} B, each layer recomputed {remat} B");
    assert!(2 * remat < plain, "recomputed layers: {remat} B of temporaries; plain {plain} B");
}

/// 20 mixed-precision steps of a checkpoint's training case (AdamW as in
/// the trajectory tests; mixed-f16 with GradScaler's loss scaling) stay
/// within 5e-3 of PyTorch's f32 losses; the weights and the optimizer state
/// stay f32, the contractions run in the low type.
fn mixed_follows_f32(fixture: &str, case: &str, loss: Loss, lr: f64, schedule: Schedule, precision: Precision) {
    let Some(session) = shared_session(None) else { return };
    let dir = repo_root().join("fixtures/train").join(case);
    let data = xlac_tests::read_npy_dir(&dir.join("data"));
    let want = xlac_tests::read_npy_dir(&dir.join("expected"))["loss"].to_f64_vec();
    let config = TrainConfig {
        optimizer: Optimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
        schedule,
        clip_norm: if case.starts_with("gpt2") { Some(1.0) } else { None },
        loss_scale: (precision == Precision::MixedF16).then(LossScale::default),
        zero: xlac_compiler::train::shard::Zero::Off,
        tunable: false,
        ..config("logits", loss, None)
    };
    let mut inputs = data.clone();
    inputs.remove("labels");
    let options = Options { train: Some(config), precision, ..Options::at(OptLevel::O2, BTreeMap::new()) };
    let step = compile_model(&fixture_model(fixture), &options, &inputs).unwrap();
    let low = if precision == Precision::MixedF16 { "xf16>" } else { "bf16>" };
    assert!(step.lowered.text.contains(low), "{case}: no {low} in the step");
    let m = &step.module;
    for (&v, arg) in m.inputs().iter().zip(step.step_args.as_ref().unwrap()) {
        if matches!(arg, xlac_compiler::train::StepArg::Weight(_) | xlac_compiler::train::StepArg::State { .. }) {
            assert_eq!(m.value(v).ty.dtype, xlac_compiler::DType::F32, "{case}: {}", m.value(v).name);
        }
    }
    let mut state = initial_state(&step, lr).unwrap();
    let (device, _) = session.load(&step, &mut |_| {}).unwrap();
    for (i, want) in want.iter().enumerate() {
        let mut given = state.clone();
        given.extend(data.clone());
        let r = after_step(device.run(&given, 0).unwrap(), &mut state).unwrap();
        assert!(
            (r.loss - want).abs() <= 5e-3 * want.abs(),
            "{case} step {}: {precision:?} loss {}, PyTorch f32 {want}",
            i + 1,
            r.loss
        );
    }
}

/// BERT-base's parameter shapes (vocabulary 30522, 512 positions, 12 layers of width 768).
fn bert_base_shapes() -> Vec<Vec<u64>> {
    let (w, inner) = (768, 3072);
    let mut shapes = vec![vec![30522, w], vec![512, w], vec![2, w], vec![w], vec![w]];
    for _ in 0..12 {
        for _ in 0..4 {
            shapes.extend([vec![w, w], vec![w]]);
        }
        shapes.extend([vec![inner, w], vec![inner], vec![w, inner], vec![w], vec![w], vec![w], vec![w], vec![w]]);
    }
    shapes.extend([vec![w, w], vec![w]]);
    shapes
}

fn adamw8bit(min_8bit_size: u64) -> Optimizer {
    Optimizer::AdamW8bit { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, min_8bit_size }
}

fn adamw8bit_state_is_under_0_3_of_adamws() {
    let bytes = |o: &Optimizer| -> u64 {
        let states = bert_base_shapes().into_iter().map(|s| o.state(&xlac_compiler::TensorType::new(DType::F32, s)));
        states.flatten().map(|(_, ty)| ty.size_bytes()).sum()
    };
    let full = bytes(&Optimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 });
    let small = bytes(&adamw8bit(4096));
    assert_eq!(full, 8 * bert_base_shapes().iter().map(|s| s.iter().product::<u64>()).sum::<u64>());
    let ratio = small as f64 / full as f64;
    assert!(ratio <= 0.3, "8-bit AdamW keeps {small} B, AdamW {full} B: {ratio:.3}");
}

/// `steps` steps of the tiny BERT classifier with AdamW and with 8-bit AdamW
/// (every tensor's moments in 8 bits) give losses within 5e-3 of each other.
fn adamw8bit_follows_adamw(steps: usize, xla: bool) {
    let Some(session) = backend(xla) else { return };
    let case = "bert_sequence_classification_adamw";
    let data = xlac_tests::read_npy_dir(&repo_root().join("fixtures/train").join(case).join("data"));
    let model = fixture_model("train/bert_sequence_classification_adamw/checkpoint");
    let level = if xla { OptLevel::O2 } else { OptLevel::O0 };
    let losses = |optimizer: Optimizer| {
        let step = compile(
            &model,
            TrainConfig { optimizer, clip_norm: None, ..config("logits", cross_entropy(), None) },
            &data,
            level,
        );
        if let Some(s) = session {
            let mut trainer = Trainer::new(s, &step, 0.001).unwrap();
            return (0..steps).map(|_| trainer.step(&data, 0).unwrap().loss).collect::<Vec<f64>>();
        }
        run(None, &step, &data, steps, 0.001).0.iter().map(|r| r.loss).collect()
    };
    let want = losses(Optimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 });
    let got = losses(adamw8bit(0));
    assert!(steps < 100 || want[steps - 1] < 0.5 * want[0], "AdamW learns in {steps} steps: {want:?}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 5e-3, "step {}: 8-bit AdamW loss {g}, AdamW {w}", i + 1);
    }
}

/// A loss scale too large for f16 (2^24): the first steps overflow, are
/// skipped (weights, state and step count unchanged: the same loss again)
/// and halve the scale, until the gradients fit; then training goes on.
fn overflowing_f16_steps_are_skipped_and_back_off() {
    let Some(session) = shared_session(None) else { return };
    let case = "bert_sequence_classification_adamw";
    let data = xlac_tests::read_npy_dir(&repo_root().join("fixtures/train").join(case).join("data"));
    let config = TrainConfig {
        optimizer: Optimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
        loss_scale: Some(LossScale { init: 16777216.0, growth_interval: 2000 }),
        zero: xlac_compiler::train::shard::Zero::Off,
        tunable: false,
        ..config("logits", cross_entropy(), None)
    };
    let mut inputs = data.clone();
    inputs.remove("labels");
    let options =
        Options { train: Some(config), precision: Precision::MixedF16, ..Options::at(OptLevel::O2, BTreeMap::new()) };
    let step = compile_model(&fixture_model("train/bert_sequence_classification_adamw/checkpoint"), &options, &inputs)
        .unwrap();
    let mut trainer = Trainer::new(session, &step, 0.001).unwrap();
    let reports: Vec<StepReport> = (0..16).map(|_| trainer.step(&data, 0).unwrap()).collect();
    let skipped = reports.iter().take_while(|r| !r.grad_norm.is_finite()).count();
    assert!((1..12).contains(&skipped), "{reports:?}");
    assert!(reports[skipped..].iter().all(|r| r.grad_norm.is_finite()), "{reports:?}");
    for r in &reports[..=skipped] {
        assert_eq!(r.loss, reports[0].loss, "a skipped step changes nothing: {reports:?}");
    }
    assert!(reports[15].loss < reports[skipped].loss, "{reports:?}");
    let state: BTreeMap<String, HostTensor> = trainer.state().unwrap().into_iter().collect();
    let exponent = state["loss_scale.exponent"].to_f64_vec()[0];
    assert_eq!(exponent, -(skipped as f64), "the scale halved once per skipped step");
    assert_eq!(state["step"].to_f64_vec()[0], (16 - skipped) as f64, "skipped steps are not counted");
}

/// 8-bit quantization codes every value as its nearest value of the map:
/// every map value, each midpoint between two and its neighbouring f32s, and
/// a sweep over eight decades (both signs for the signed map), quantized in
/// blocks whose absmax is 1 (so each value is its own fraction of it).
fn quantization_codes_the_nearest_map_value(signed: bool, xla: bool) {
    let Some(session) = backend(xla) else { return };
    let map = quantize::dynamic_map(signed);
    let mids: Vec<f64> = map.windows(2).map(|w| ((w[0] + w[1]) / 2.0) as f32 as f64).collect();
    let mut xs: Vec<f64> = map.clone();
    for &m in &mids {
        let m = m as f32;
        xs.extend([m, f32::from_bits(m.to_bits() + 1), f32::from_bits(m.to_bits() - 1)].map(f64::from));
    }
    xs.extend((0..4000).map(|i| 10f64.powf(-8.0 + 8.0 * f64::from(i) / 4000.0) as f32 as f64));
    if signed {
        let negated: Vec<f64> = xs.iter().map(|x| -x).collect();
        xs.extend(negated);
    }
    xs.retain(|x| x.abs() < 1.0);
    // Each block of 256 starts with 1.0, so its absmax is 1.
    let mut values = Vec::new();
    for chunk in xs.chunks(255) {
        values.push(1.0);
        values.extend(chunk);
    }
    let n = values.len() as u64;
    let mut m = xlac_compiler::ir::Module::new("codes");
    let x = m.add_input("x", xlac_compiler::TensorType::new(DType::F32, vec![n]));
    let (codes, _) = quantize::quantize(&mut xlac_compiler::ir::builder::Builder::new(&mut m), x, signed).unwrap();
    m.add_output(codes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("codes.ir");
    std::fs::write(&path, xlac_compiler::ir::print::print_full(&m)).unwrap();
    let input =
        HostTensor::new(DType::F32, vec![n as usize], values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect())
            .unwrap();
    let given = BTreeMap::from([("x".to_string(), input)]);
    let level = if xla { OptLevel::O2 } else { OptLevel::O0 };
    let program = compile_model(&path, &Options::at(level, BTreeMap::new()), &given).unwrap();
    let out = match session {
        Some(s) => s.run(&program, &given, 0).unwrap(),
        None => eval_model(&program, &given, 0).unwrap(),
    };
    let got = out[0].1.to_f64_vec();
    for (&x, &c) in values.iter().zip(&got) {
        // The nearest value's index: how many midpoints lie at or below x.
        let want = mids.iter().filter(|&&m| m <= x).count() as f64;
        assert_eq!(c, want, "signed {signed}: {x:e} coded {c}, nearest {want} ({})", map[want as usize]);
    }
}

fn cross_entropy() -> Loss {
    Loss::CrossEntropy { ignore_index: IGNORE_INDEX, label_smoothing: 0.0 }
}

fn main() {
    let lm = || Loss::CausalLm { ignore_index: IGNORE_INDEX };
    // Fixture, training case, output, loss, micro-batches, and whether its layers are named `layerN.…`.
    type Case = (&'static str, &'static str, &'static str, fn() -> Loss, u64, bool);
    let cases: Vec<Case> = vec![
        ("mlp", "mlp_sgd_momentum", "fc2", cross_entropy, 3, false),
        ("cnn", "cnn_adamw", "log_probs", cross_entropy, 4, false),
        ("transformer_block", "transformer_block_adamw_warmup_cosine_clip", "y", || Loss::Mse, 2, false),
        (
            "train/bert_sequence_classification_adamw/checkpoint",
            "bert_sequence_classification_adamw",
            "logits",
            cross_entropy,
            2,
            true,
        ),
        ("hf/gpt2", "gpt2_causal_lm_adamw", "logits", lm, 2, true),
        ("hf/llama", "llama_causal_lm_adamw", "logits", lm, 2, true),
    ];
    let mut trials = Vec::new();
    for (fixture, case, output, loss, k, layers) in cases {
        for xla in [true, false] {
            let backend = if xla { "xla" } else { "interpreter" };
            trials.push(trial(format!("{case}::{k}_micro_batches_equal_the_whole_batch::{backend}"), move || {
                equals_the_plain_step(fixture, case, output, loss(), Technique::Accumulate(k), xla)
            }));
            if layers {
                trials.push(trial(format!("{case}::recomputed_layers_equal_the_plain_step::{backend}"), move || {
                    equals_the_plain_step(fixture, case, output, loss(), Technique::Remat(Remat::Layers), xla)
                }));
            }
            trials.push(trial(format!("{case}::recomputing_everything_equals_the_plain_step::{backend}"), move || {
                equals_the_plain_step(fixture, case, output, loss(), Technique::Remat(Remat::Full), xla)
            }));
        }
    }
    trials.push(trial(
        "accumulation_keeps_one_micro_batchs_activations",
        accumulation_keeps_one_micro_batchs_activations,
    ));
    trials.push(trial("remat_keeps_under_half_the_temporaries", remat_keeps_under_half_the_temporaries));
    let linear = |warmup| Schedule::Linear { warmup, total: 20 };
    for precision in [Precision::MixedBf16, Precision::MixedF16] {
        let name = |case: &str| {
            format!("{case}::{}_follows_f32", if precision == Precision::MixedF16 { "mixed_f16" } else { "mixed_bf16" })
        };
        trials.push(trial(name("bert_sequence_classification_adamw"), move || {
            mixed_follows_f32(
                "train/bert_sequence_classification_adamw/checkpoint",
                "bert_sequence_classification_adamw",
                cross_entropy(),
                0.001,
                linear(2),
                precision,
            )
        }));
        trials.push(trial(name("gpt2_causal_lm_adamw"), move || {
            mixed_follows_f32("hf/gpt2", "gpt2_causal_lm_adamw", lm(), 0.003, linear(4), precision)
        }));
        trials.push(trial(name("llama_causal_lm_adamw"), move || {
            mixed_follows_f32("hf/llama", "llama_causal_lm_adamw", lm(), 0.001, Schedule::Constant, precision)
        }));
    }
    trials
        .push(trial("overflowing_f16_steps_are_skipped_and_back_off", overflowing_f16_steps_are_skipped_and_back_off));
    trials.push(trial("adamw8bit_state_is_under_0_3_of_adamws", adamw8bit_state_is_under_0_3_of_adamws));
    for (signed, xla) in [(true, true), (false, true), (true, false), (false, false)] {
        let name = format!(
            "quantization_codes_the_nearest_{}_map_value::{}",
            if signed { "signed" } else { "unsigned" },
            if xla { "xla" } else { "interpreter" }
        );
        trials.push(trial(name, move || quantization_codes_the_nearest_map_value(signed, xla)));
    }
    trials.push(trial("bert_sequence_classification::adamw8bit_follows_adamw::xla", || {
        adamw8bit_follows_adamw(200, true)
    }));
    trials.push(trial("bert_sequence_classification::adamw8bit_follows_adamw::interpreter", || {
        adamw8bit_follows_adamw(5, false)
    }));
    run_trials(trials)
}
