//! Pipeline parallelism, one test per model and stage count: the model cut
//! into S stages (balanced by their work, at layer boundaries for the tiny
//! BERT, GPT-2 and Llama checkpoints), stage s compiled for CPU device s, the
//! batch run as 4 micro-batches passed device to device, equals the whole
//! model run on one device (1e-5). Every stage runs on its own device, every
//! micro-batch passes every stage, and the measured idle share per device is
//! a share.

use std::collections::BTreeMap;
use xlac_compiler::passes::OptLevel;
use xlac_compiler::stages::cut;
use xlac_driver::stages::{join, split, Pipeline};
use xlac_driver::{compile_model, Options};
use xlac_runtime::HostTensor;
use xlac_tests::{
    compare, fixture_model, read_npy_dir, repeated_to_multiple, repo_root, run_trials, shared_session, trial,
};

const MICRO: usize = 4;

/// The batch: a fixture's inputs (or a training case's data for a
/// checkpoint) with their examples repeated up to a multiple of [`MICRO`].
fn batch(fixture: &str) -> BTreeMap<String, HostTensor> {
    let root = repo_root();
    let mut given = match fixture {
        "hf/gpt2" => read_npy_dir(&root.join("fixtures/train/gpt2_causal_lm_adamw/data")),
        "hf/llama" => read_npy_dir(&root.join("fixtures/train/llama_causal_lm_adamw/data")),
        "hf/bert" => read_npy_dir(&root.join("fixtures/train/bert_sequence_classification_adamw/data")),
        _ => read_npy_dir(&root.join("fixtures").join(fixture).join("inputs")),
    };
    given.remove("labels");
    repeated_to_multiple(given, MICRO)
}

fn pipelined_equals_one_device(fixture: &str, stages: usize) {
    let (Some(one), Some(many)) = (shared_session(None), shared_session(Some(4))) else { return };
    let model = fixture_model(fixture);
    let options = Options::at(OptLevel::O2, BTreeMap::new());
    let given = batch(fixture);
    let whole = compile_model(&model, &options, &given).unwrap();
    let want = one.run(&whole, &given, 0).unwrap();
    let micro = split(&given, MICRO).unwrap();
    let small = compile_model(&model, &options, &micro[0]).unwrap();
    let c = cut(&small.module, stages, &[]).unwrap();
    assert_eq!(c.stages.len(), stages);
    let total: f64 = c.stages.iter().map(|s| s.flops).sum();
    assert!((total - xlac_compiler::plan::flops(&small.module).total()).abs() <= 1e-6 * total);
    assert!(c.stages.iter().all(|s| !s.module.order().is_empty()), "{fixture}: an empty stage");
    let pipeline = Pipeline::load(many, &small, c).unwrap();
    assert_eq!(pipeline.devices(), (0..stages).collect::<Vec<_>>(), "{fixture}: stage s on device s");
    let (parts, timeline) = pipeline.run(&micro).unwrap();
    let got = join(parts).unwrap();
    assert_eq!(got.len(), want.len());
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        compare(&format!("{fixture} in {stages} stages: {name}"), g, w, 1e-5, 1e-5).unwrap();
    }
    assert!(timeline.busy.iter().all(|b| b.len() == MICRO));
    for s in 0..stages {
        let idle = timeline.idle_share(s);
        assert!((0.0..1.0).contains(&idle), "{fixture}: stage {s} idle {idle}");
    }
}

fn main() {
    let mut trials = Vec::new();
    for (fixture, counts) in [
        ("mlp", &[2, 3][..]),
        ("transformer_block", &[2, 4]),
        ("cnn", &[2]),
        ("hf/bert", &[2, 4]),
        ("hf/gpt2", &[2, 4]),
        ("hf/llama", &[2, 4]),
    ] {
        for &stages in counts {
            trials.push(trial(format!("{fixture}::stages{stages}"), move || {
                pipelined_equals_one_device(fixture, stages)
            }));
        }
    }
    run_trials(trials)
}
