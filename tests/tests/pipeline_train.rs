//! Pipeline-parallel training, one test per training case of
//! fixtures/train/ and pipeline (the checkpoints on fewer, see `main`): the step cut into S stages, stage s on CPU
//! device s, M micro-batches per step flowing forward and back under GPipe's
//! or 1F1B's order, gradients accumulated on each stage's device, each
//! stage updating its own weights from the global norm. 20 steps equal the
//! one-device run on the whole batch: every step's loss and gradient norm
//! within 1e-5 relative, the final weights within 1e-5 (but those
//! `train_cases::rounding_noise` says are rounding noise). GPT-2's embedding, tied to its
//! head across stages, stays one weight.
//!
//! With `data=2` per stage (4 devices), each stage's micro-batches split
//! over its two devices, the same.
//!
//! And what the schedules decide: every stage runs every micro-batch's
//! forward and backward, on its own device, in the schedule's order, each
//! after what it reads; 1F1B keeps at most S − s micro-batches' inputs on
//! stage s where GPipe keeps all M (the bytes measured on the devices).

use std::collections::BTreeMap;
use xlac_compiler::ir::sharding::Mesh;
use xlac_compiler::passes::{OptLevel, ShardPolicy};
use xlac_compiler::pipeline::CompiledStages;
use xlac_compiler::train::TrainConfig;
use xlac_driver::pipeline_train::{Pass, PipelineTrainer, Schedule};
use xlac_driver::train::{Trainer, Training};
use xlac_driver::{compile_model, compile_staged, Options};
use xlac_runtime::HostTensor;
use xlac_tests::train_cases::{cases, compare_trained};
use xlac_tests::{
    first_rows, fixture_model, read_npy_dir, repeated_to_multiple, repo_root, run_trials, shared_session, trial,
};

const STEPS: usize = 20;

/// A pipeline: stages, micro-batches, schedule, and each stage's data-parallel devices.
#[derive(Clone, Copy, Debug)]
struct Layout {
    name: &'static str,
    stages: usize,
    micro: usize,
    schedule: Schedule,
    data: usize,
}

const LAYOUTS: &[Layout] = &[
    Layout { name: "gpipe_s2_m2", stages: 2, micro: 2, schedule: Schedule::GPipe, data: 1 },
    Layout { name: "1f1b_s2_m4", stages: 2, micro: 4, schedule: Schedule::OneFOneB, data: 1 },
    Layout { name: "1f1b_s4_m4", stages: 4, micro: 4, schedule: Schedule::OneFOneB, data: 1 },
    Layout { name: "gpipe_s2_m2_data2", stages: 2, micro: 2, schedule: Schedule::GPipe, data: 2 },
    Layout { name: "1f1b_s2_m2_data2", stages: 2, micro: 2, schedule: Schedule::OneFOneB, data: 2 },
];

/// The case's data with its examples repeated up to a multiple of `micro`.
fn batch_for(case: &str, micro: usize) -> BTreeMap<String, HostTensor> {
    repeated_to_multiple(read_npy_dir(&repo_root().join("fixtures/train").join(case).join("data")), micro)
}

/// The options of `config`'s step, over a mesh `data=N` when `data` > 1.
fn options(config: &TrainConfig, data: usize) -> Options {
    Options {
        train: Some(config.clone()),
        mesh: (data > 1).then(|| Mesh::parse(&format!("data={data}")).unwrap()),
        policies: if data > 1 { vec![ShardPolicy::Data] } else { vec![] },
        ..Options::at(OptLevel::O2, BTreeMap::new())
    }
}

/// The step of `fixture` cut into `stages`, compiled at one micro-batch's
/// shapes, each stage over `data` devices.
fn staged(
    fixture: &str,
    config: &TrainConfig,
    micro: &BTreeMap<String, HostTensor>,
    stages: usize,
    data: usize,
) -> CompiledStages {
    let mut inputs = micro.clone();
    inputs.remove("labels");
    compile_staged(&fixture_model(fixture), &options(config, data), &inputs, stages, &[])
        .unwrap_or_else(|e| panic!("{fixture}: {e}"))
}

/// Each step's (loss, grad_norm) and the final weights.
type Run = (Vec<(f64, f64)>, Vec<(String, HostTensor)>);

fn train(trainer: &mut dyn Training, batch: &BTreeMap<String, HostTensor>) -> Run {
    let reports = (0..STEPS).map(|i| trainer.step(batch, i as i64).unwrap()).map(|r| (r.loss, r.grad_norm)).collect();
    (reports, trainer.weights().unwrap())
}

fn equals_one_device(case: &str, fixture: &str, config: TrainConfig, lr: f64, layout: Layout) {
    let devices = layout.stages * layout.data;
    let (Some(one), Some(many)) = (shared_session(None), shared_session(Some(devices as u32))) else { return };
    let batch = batch_for(case, layout.micro * layout.data);
    let micro = first_rows(&batch, batch["labels"].shape()[0] / layout.micro);
    let mut whole = batch.clone();
    whole.remove("labels");
    let step = compile_model(&fixture_model(fixture), &options(&config, 1), &whole).unwrap();
    let (want, want_weights) = train(&mut Trainer::new(one, &step, lr).unwrap(), &batch);

    let stages = staged(fixture, &config, &micro, layout.stages, layout.data);
    let mut pipelined = PipelineTrainer::new(many, &stages, layout.schedule, layout.micro, lr, &BTreeMap::new())
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let expected: Vec<usize> = (0..devices).collect();
    assert_eq!(pipelined.devices(), expected, "{case}: stage s on the s-th group of {} devices", layout.data);
    let (got, got_weights) = train(&mut pipelined, &batch);
    for (i, ((loss, norm), (want_loss, want_norm))) in got.iter().zip(&want).enumerate() {
        let close = |got: f64, want: f64| (got - want).abs() <= 1e-5 * want.abs() + 1e-7;
        assert!(close(*loss, *want_loss), "{case} step {}: loss {loss}, one device {want_loss}", i + 1);
        assert!(close(*norm, *want_norm), "{case} step {}: grad_norm {norm}, one device {want_norm}", i + 1);
    }
    assert_eq!(got_weights.len(), want_weights.len(), "{case}: every trained weight, once");
    for (name, got) in &got_weights {
        let (_, want) = want_weights.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{case}: {name}"));
        compare_trained(case, name, got, want, 1e-5, 1e-5).unwrap();
    }
}

/// Every stage ran each micro-batch's forward and backward, in its
/// schedule's order, each pass after the passes it reads from had ended;
/// and the inputs a stage keeps are what the schedule says: all M under
/// GPipe, at most S − s under 1F1B (the same bytes per micro-batch).
fn schedules_order_and_keep(case: &str, fixture: &str, config: TrainConfig, lr: f64) {
    let (stages, micro) = (2, 4);
    let Some(session) = shared_session(Some(stages as u32)) else { return };
    let batch = batch_for(case, micro);
    let one = first_rows(&batch, batch["labels"].shape()[0] / micro);
    let compiled = staged(fixture, &config, &one, stages, 1);
    let mut stashed = Vec::new();
    for schedule in [Schedule::GPipe, Schedule::OneFOneB] {
        let mut trainer = PipelineTrainer::new(session, &compiled, schedule, micro, lr, &BTreeMap::new()).unwrap();
        let step = trainer.step_measured(&batch, 0).unwrap();
        let busy = &step.timeline.busy;
        assert_eq!(busy.len(), stages);
        for (s, spans) in busy.iter().enumerate() {
            let passes = schedule.passes(s, stages, micro);
            assert_eq!(spans.len(), 2 * micro, "{case} {schedule:?}: stage {s} runs every forward and backward");
            for (span, pass) in spans.iter().zip(&passes) {
                assert!(span.0 <= span.1, "{case}: a pass ends after it starts");
                // A forward after the previous stage's forward of the micro-batch; a backward after the next stage's backward.
                let after = match *pass {
                    Pass::Forward(k) if s > 0 => Some((s - 1, Pass::Forward(k))),
                    Pass::Backward(k) if s + 1 < stages => Some((s + 1, Pass::Backward(k))),
                    _ => None,
                };
                if let Some((t, before)) = after {
                    let at = schedule.passes(t, stages, micro).iter().position(|p| *p == before).unwrap();
                    assert!(busy[t][at].1 <= span.0, "{case} {schedule:?}: stage {s}'s {pass:?} before stage {t}'s");
                }
            }
        }
        let share = (0..stages).map(|s| step.timeline.idle_share(s)).collect::<Vec<_>>();
        assert!(share.iter().all(|x| (0.0..1.0).contains(x)), "{case}: idle shares {share:?}");
        stashed.push(step.memory.iter().map(|m| m.stashed).collect::<Vec<_>>());
    }
    let (gpipe, one_f_one_b) = (&stashed[0], &stashed[1]);
    for s in 0..stages {
        let per_micro = gpipe[s] / micro as u64;
        assert_eq!(gpipe[s], per_micro * micro as u64, "{case}: GPipe keeps every micro-batch's inputs on stage {s}");
        assert_eq!(
            one_f_one_b[s],
            per_micro * (stages - s).min(micro) as u64,
            "{case}: 1F1B keeps S - s micro-batches' inputs on stage {s} (GPipe {gpipe:?}, 1F1B {one_f_one_b:?})"
        );
    }
}

fn main() {
    let mut trials = Vec::new();
    for (case, fixture, config, lr) in cases() {
        let checkpoint = fixture.starts_with("hf/") || fixture.contains("checkpoint");
        for layout in LAYOUTS {
            // The checkpoints (slower to build) on two stages: GPT-2 (its tied embedding across
            // the stages) under each schedule and with data parallelism, BERT and Llama under 1F1B,
            // the LoRA runs under GPipe; the rest on every layout.
            let runs = match case {
                _ if !checkpoint => true,
                "gpt2_causal_lm_adamw" => layout.stages == 2,
                _ if config.lora.is_some() => layout.name == "gpipe_s2_m2",
                _ => layout.name == "1f1b_s2_m4",
            };
            if !runs {
                continue;
            }
            let (config, layout) = (config.clone(), *layout);
            trials.push(trial(format!("{case}::{}", layout.name), move || {
                equals_one_device(case, fixture, config, lr, layout)
            }));
        }
        if ["mlp_adamw_cosine_clip", "transformer_block_adamw_warmup_cosine_clip", "gpt2_causal_lm_adamw"]
            .contains(&case)
        {
            let config = config.clone();
            trials.push(trial(format!("{case}::schedules_order_and_keep"), move || {
                schedules_order_and_keep(case, fixture, config, lr)
            }));
        }
    }
    run_trials(trials)
}
