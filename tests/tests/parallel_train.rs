//! Training on many devices, one test per training case of fixtures/train/
//! and layout: data parallelism on 2 and 4 CPU devices, ZeRO stages 1-3 over
//! them, tensor parallelism over 2 and 2-D (data=2, model=2) parallelism
//! (the checkpoints: ZeRO 1 on 2 devices and 3 on 4; the LoRA cases: data=2,
//! model=2 and data=2,model=2).
//! Each runs 20 steps through the device-resident `Trainer` (weights and
//! optimizer state split over the devices as the layout says, donated from
//! step to step) and equals the one-device run: every step's loss and
//! gradient norm within 1e-5 relative, the final weights within 1e-5
//! (but those `train_cases::rounding_noise` says are rounding noise). The
//! compiled program really is split: it runs on the layout's devices, and
//! XLA's per-device memory statistics show what each layout divides.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use xlac_compiler::ir::sharding::Mesh;
use xlac_compiler::passes::{OptLevel, ShardPolicy};
use xlac_compiler::train::shard::Zero;
use xlac_compiler::train::TrainConfig;
use xlac_driver::train::Trainer;
use xlac_driver::{compile_model, CompiledModel, Options, Session};
use xlac_runtime::HostTensor;
use xlac_tests::train_cases::{cases, compare_trained};
use xlac_tests::{fixture_model, read_npy_dir, repeated_to_multiple, repo_root, run_trials, shared_session, trial};

const STEPS: usize = 20;

/// How a run splits over devices.
#[derive(Clone, Copy, Debug)]
struct Layout {
    name: &'static str,
    mesh: &'static str,
    policies: &'static [ShardPolicy],
    zero: Zero,
}

impl Layout {
    fn devices(&self) -> u32 {
        Mesh::parse(self.mesh).unwrap().devices() as u32
    }

    /// The size of the mesh's `data` axis (1 without one).
    fn data(&self) -> usize {
        Mesh::parse(self.mesh).unwrap().size("data").unwrap_or(1) as usize
    }
}

use ShardPolicy::{Data, Tensor};

const LAYOUTS: &[Layout] = &[
    Layout { name: "data2", mesh: "data=2", policies: &[Data], zero: Zero::Off },
    Layout { name: "data4", mesh: "data=4", policies: &[Data], zero: Zero::Off },
    Layout { name: "data2_zero1", mesh: "data=2", policies: &[Data], zero: Zero::OptimizerState },
    Layout { name: "data2_zero2", mesh: "data=2", policies: &[Data], zero: Zero::Gradients },
    Layout { name: "data2_zero3", mesh: "data=2", policies: &[Data], zero: Zero::Weights },
    Layout { name: "data4_zero1", mesh: "data=4", policies: &[Data], zero: Zero::OptimizerState },
    Layout { name: "data4_zero2", mesh: "data=4", policies: &[Data], zero: Zero::Gradients },
    Layout { name: "data4_zero3", mesh: "data=4", policies: &[Data], zero: Zero::Weights },
    Layout { name: "model2", mesh: "model=2", policies: &[Tensor], zero: Zero::Off },
    Layout { name: "data2_model2", mesh: "data=2,model=2", policies: &[Data, Tensor], zero: Zero::Off },
    Layout {
        name: "data2_model2_zero1",
        mesh: "data=2,model=2",
        policies: &[Data, Tensor],
        zero: Zero::OptimizerState,
    },
    Layout { name: "data2_model2_zero3", mesh: "data=2,model=2", policies: &[Data, Tensor], zero: Zero::Weights },
];

/// The case's data with its examples repeated (in order, cyclically) up to
/// a multiple of `n`, so that the batch divides over `n` devices.
fn batch_for(case: &str, n: usize) -> BTreeMap<String, HostTensor> {
    repeated_to_multiple(read_npy_dir(&repo_root().join("fixtures/train").join(case).join("data")), n)
}

fn compile(
    fixture: &str,
    config: &TrainConfig,
    layout: Option<&Layout>,
    batch: &BTreeMap<String, HostTensor>,
) -> CompiledModel {
    let mut inputs = batch.clone();
    inputs.remove("labels");
    let config = TrainConfig { zero: layout.map_or(Zero::Off, |l| l.zero), ..config.clone() };
    let options = Options {
        train: Some(config),
        mesh: layout.map(|l| Mesh::parse(l.mesh).unwrap()),
        policies: layout.map_or(vec![], |l| l.policies.to_vec()),
        ..Options::at(OptLevel::O2, BTreeMap::new())
    };
    compile_model(&fixture_model(fixture), &options, &inputs).unwrap_or_else(|e| panic!("{fixture}: {e}"))
}

/// Each step's (loss, grad_norm) and the final weights.
type Run = (Vec<(f64, f64)>, Vec<(String, HostTensor)>);

fn train(session: &Session, step: &CompiledModel, lr: f64, batch: &BTreeMap<String, HostTensor>) -> Run {
    let mut trainer = Trainer::new(session, step, lr).unwrap();
    let reports = (0..STEPS).map(|i| trainer.step(batch, i as i64).unwrap()).map(|r| (r.loss, r.grad_norm)).collect();
    (reports, trainer.weights().unwrap())
}

/// The one-device run of `case` on `batch` (of `rows` examples), made once per case and batch size.
fn one_device(
    case: &str,
    fixture: &str,
    config: &TrainConfig,
    lr: f64,
    batch: &BTreeMap<String, HostTensor>,
) -> Arc<Run> {
    /// By case and batch size.
    type Runs = Mutex<HashMap<(String, usize), Arc<Run>>>;
    static RUNS: OnceLock<Runs> = OnceLock::new();
    let key = (case.to_string(), batch["labels"].shape()[0]);
    let runs = RUNS.get_or_init(Default::default);
    if let Some(run) = runs.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return run.clone();
    }
    let one = shared_session(None).expect("checked by the caller");
    let run = Arc::new(train(one, &compile(fixture, config, None, batch), lr, batch));
    runs.lock().unwrap_or_else(|e| e.into_inner()).insert(key, run.clone());
    run
}

fn equals_one_device(case: &str, fixture: &str, config: TrainConfig, lr: f64, layout: Layout) {
    let Some(many) = shared_session(Some(layout.devices())) else { return };
    let batch = batch_for(case, layout.data());
    let split = compile(fixture, &config, Some(&layout), &batch);
    assert_eq!(split.num_partitions(), layout.devices(), "{case}: the step runs on the layout's devices");
    let (want, want_weights) = &*one_device(case, fixture, &config, lr, &batch);
    let (got, got_weights) = train(many, &split, lr, &batch);
    for (i, ((loss, norm), (want_loss, want_norm))) in got.iter().zip(want).enumerate() {
        let close = |got: f64, want: f64| (got - want).abs() <= 1e-5 * want.abs() + 1e-7;
        assert!(close(*loss, *want_loss), "{case} step {}: loss {loss}, one device {want_loss}", i + 1);
        assert!(close(*norm, *want_norm), "{case} step {}: grad_norm {norm}, one device {want_norm}", i + 1);
    }
    assert_eq!(got_weights.len(), want_weights.len());
    for ((name, got), (_, want)) in got_weights.iter().zip(want_weights) {
        compare_trained(case, name, got, want, 1e-5, 1e-5).unwrap();
    }
}

/// ZeRO's stages on `devices` devices divide what each device holds, as
/// XLA's compiled statistics show and as the plan predicts (the arguments
/// exactly): stage 1 and 3 hold fewer argument bytes than the stage before,
/// stage 1 half or a quarter of the optimizer state. Prints the table
/// docs/sharding.md shows.
fn zero_divides_memory(case: &str, fixture: &str, config: TrainConfig, devices: u32) {
    let Some(session) = shared_session(Some(devices)) else { return };
    let batch = batch_for(case, devices as usize);
    let mut rows = Vec::new();
    for stage in 0..=3 {
        let mesh = if devices == 2 { "data=2" } else { "data=4" };
        let layout = Layout { name: "", mesh, policies: &[Data], zero: Zero::from_stage(stage).unwrap() };
        let step = compile(fixture, &config, Some(&layout), &batch);
        let predicted = xlac_driver::plan::footprint(&step);
        let (exe, _) = session.compile(&step).unwrap();
        let xla = exe.memory_stats().unwrap();
        assert_eq!(predicted.arguments(), xla.argument_bytes as u64, "{case} ZeRO {stage}: argument bytes");
        let peak = (xla.argument_bytes + xla.temp_bytes + xla.output_bytes - xla.alias_bytes) as u64;
        let kb = |b: u64| format!("{:.1}", b as f64 / 1e3);
        eprintln!(
            "| {case} | {} | {devices} | {stage} | {} | {} | {} | {} / {} | {} / {} |",
            batch["labels"].shape()[0],
            kb(predicted.weights),
            kb(predicted.optimizer_state),
            kb(predicted.arguments()),
            kb(predicted.temporaries),
            kb(xla.temp_bytes as u64),
            kb(predicted.peak()),
            kb(peak)
        );
        rows.push((predicted, xla.argument_bytes));
    }
    let (zero0, zero1, zero2, zero3) = (&rows[0], &rows[1], &rows[2], &rows[3]);
    assert!(
        zero1.1 < zero0.1 && zero3.1 < zero2.1,
        "{case}: arguments by stage {:?}",
        rows.iter().map(|r| r.1).collect::<Vec<_>>()
    );
    let state = |r: &(xlac_compiler::plan::Footprint, i64)| r.0.optimizer_state as f64;
    let share = state(zero1) / state(zero0);
    assert!(share < 1.0 / devices as f64 + 0.1, "{case}: ZeRO 1 keeps {share:.2} of the optimizer state per device");
    assert!(zero3.0.weights < zero2.0.weights, "{case}: ZeRO 3 splits the weights");
}

fn main() {
    let mut trials = Vec::new();
    for (case, fixture, config, _) in cases() {
        if [
            "mlp_adamw_cosine_clip",
            "transformer_block_adamw_warmup_cosine_clip",
            "bert_sequence_classification_adamw",
            "llama_causal_lm_adamw",
        ]
        .contains(&case)
        {
            for devices in [2, 4] {
                let config = config.clone();
                trials.push(trial(format!("{case}::zero_memory_on_{devices}"), move || {
                    zero_divides_memory(case, fixture, config, devices)
                }));
            }
        }
    }
    for (case, fixture, config, lr) in cases() {
        // Every ZeRO stage on 2 and 4 devices for the fixtures; the checkpoints (slower to
        // build) run one stage on each; LoRA trains small adapters: data and tensor parallelism
        // on 2 devices show they split like everything else.
        let (lora, checkpoint) = (config.lora.is_some(), fixture.starts_with("hf/") || fixture.contains("checkpoint"));
        let runs = |l: &Layout| match (lora, checkpoint) {
            (true, _) => ["data2", "model2", "data2_model2"].contains(&l.name),
            (false, true) => {
                ["data2", "data4", "data2_zero1", "data4_zero3", "model2", "data2_model2"].contains(&l.name)
            }
            // ZeRO with tensor parallelism: the MLP (one MLP pair) and the transformer block.
            (false, false) => {
                !l.name.starts_with("data2_model2_zero")
                    || ["mlp_adamw_cosine_clip", "transformer_block_adamw_warmup_cosine_clip"].contains(&case)
            }
        };
        for layout in LAYOUTS.iter().filter(|l| runs(l)) {
            let (config, layout) = (config.clone(), *layout);
            trials.push(trial(format!("{case}::{}", layout.name), move || {
                equals_one_device(case, fixture, config, lr, layout)
            }));
        }
    }
    run_trials(trials)
}
