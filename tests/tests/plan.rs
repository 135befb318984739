//! The memory plan (`xlac_compiler::plan`, behind `xlac plan`) against XLA's
//! compiled memory statistics, one test per model and configuration: the
//! arguments and the aliased outputs are predicted exactly, the outputs to
//! the 8 bytes per output of XLA's tuple table, and the peak (arguments,
//! temporaries and outputs that alias no argument) within 10%, the goal,
//! in every case (docs/training.md's table lists the errors measured).
//!
//! The full-size models (BERT-base's shape, a Llama-shaped one) are
//! fixtures/plan's configs and tensor lists, their safetensors written
//! without data (sparse): compiling a step needs the shapes only.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use xlac_compiler::autodiff::Remat;
use xlac_compiler::frontend::hf::{Dropout, ImportOptions, NewHead};
use xlac_compiler::passes::precision::Precision;
use xlac_compiler::passes::OptLevel;
use xlac_compiler::train::loss::{Loss, IGNORE_INDEX};
use xlac_compiler::train::optim::{Optimizer, Schedule};
use xlac_compiler::train::TrainConfig;
use xlac_driver::{plan, Options};
use xlac_tests::{fixture_model, repo_root, run_trials, shared_session, trial};

/// What a case trains.
#[derive(Clone, Copy)]
enum Task {
    /// A model.json: the loss on this output.
    Output(&'static str, fn() -> Loss),
    /// A checkpoint's sequence classification with a new 2-label head.
    Classify,
    /// A checkpoint's causal language modelling.
    CausalLm,
}

/// A memory technique, as `xlac train`'s options.
#[derive(Clone, Copy, Debug)]
enum Technique {
    Plain,
    Remat,
    /// K micro-batches of the batch over K.
    Accumulate(u64),
    MixedBf16,
}

/// Shape symbols and their sizes.
type Bindings = &'static [(&'static str, u64)];

fn cross_entropy() -> Loss {
    Loss::CrossEntropy { ignore_index: IGNORE_INDEX, label_smoothing: 0.0 }
}

fn mse() -> Loss {
    Loss::Mse
}

/// The step's options: AdamW, the checkpoint's dropout off, `bindings` with the batch divided by K.
fn options(task: Task, technique: Technique, bindings: &[(&str, u64)]) -> Options {
    let (loss, output) = match task {
        Task::Output(output, loss) => (loss(), output),
        Task::Classify => (cross_entropy(), "logits"),
        Task::CausalLm => (Loss::CausalLm { ignore_index: IGNORE_INDEX }, "logits"),
    };
    let accumulate = match technique {
        Technique::Accumulate(k) => k,
        _ => 1,
    };
    let mut bindings: BTreeMap<String, u64> = bindings.iter().map(|&(k, v)| (k.to_string(), v)).collect();
    if let Some(b) = bindings.get_mut("batch") {
        *b /= accumulate;
    }
    let config = TrainConfig {
        loss,
        output: Some(output.into()),
        optimizer: Optimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
        schedule: Schedule::Constant,
        clip_norm: None,
        freeze: vec![],
        accumulate,
        remat: if matches!(technique, Technique::Remat) { Remat::Layers } else { Remat::None },
        lora: None,
        loss_scale: None,
        zero: xlac_compiler::train::shard::Zero::Off,
        tunable: false,
    };
    let head = matches!(task, Task::Classify).then_some(NewHead { labels: 2, seed: 0 });
    Options {
        train: Some(config),
        precision: if matches!(technique, Technique::MixedBf16) { Precision::MixedBf16 } else { Precision::F32 },
        import: ImportOptions { head, dropout: Dropout::Rate(0.0), ..ImportOptions::default() },
        ..Options::at(OptLevel::O2, bindings)
    }
}

/// How far the predicted peak may be from XLA's, relative.
const WITHIN: f64 = 0.10;

/// The plan of `model`'s step against XLA's statistics; the peak within [`WITHIN`].
fn check(model: &Path, options: &Options) {
    let Some(session) = shared_session(None) else { return };
    let planned = plan::plan(model, options).unwrap();
    let xla = plan::compile(session, &planned).unwrap();
    let (f, m) = (&planned.footprint, &xla.memory);
    assert_eq!(f.arguments(), m.argument_bytes as u64, "arguments");
    assert_eq!(f.aliased, m.alias_bytes as u64, "aliased outputs");
    let outputs = planned.step.module.outputs().len() as u64;
    assert_eq!(f.outputs + 8 * outputs, m.output_bytes as u64, "outputs and XLA's tuple table");
    let ratio = f.peak() as f64 / xla.peak() as f64;
    eprintln!(
        "peak {} / XLA {} = {ratio:.3}; temporaries {} / {} = {:.3}",
        f.peak(),
        xla.peak(),
        f.temporaries,
        m.temp_bytes,
        f.temporaries as f64 / m.temp_bytes as f64
    );
    assert!((ratio - 1.0).abs() <= WITHIN, "predicted peak {} is {ratio:.3}x XLA's {}", f.peak(), xla.peak());
}

/// A checkpoint directory of fixtures/plan/NAME's config, its tensors written without data.
fn shaped_checkpoint(name: &str) -> tempfile::TempDir {
    let src = repo_root().join("fixtures/plan").join(name);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let tensors: BTreeMap<String, (String, Vec<u64>)> =
        serde_json::from_str(&std::fs::read_to_string(src.join("tensors.json")).unwrap()).unwrap();
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, (dtype, shape)) in &tensors {
        let bytes = shape.iter().product::<u64>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut file = std::fs::File::create(dir.path().join("model.safetensors")).unwrap();
    file.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    file.write_all(&text).unwrap();
    // The data: a hole the file system keeps sparse.
    file.set_len(8 + text.len() as u64 + offset).unwrap();
    dir
}

fn main() {
    use Technique::*;
    let ce = Task::Output("fc2", cross_entropy);
    let fixtures: [(&str, Task, Bindings); 6] = [
        ("mlp", ce, &[("batch", 8)]),
        ("cnn", Task::Output("log_probs", cross_entropy), &[("batch", 8)]),
        ("transformer_block", Task::Output("y", mse), &[("batch", 4), ("seq", 8)]),
        ("hf/bert", Task::Classify, &[("batch", 4), ("seq", 8)]),
        ("hf/gpt2", Task::CausalLm, &[("batch", 4), ("seq", 8)]),
        ("hf/llama", Task::CausalLm, &[("batch", 4), ("seq", 8)]),
    ];
    let mut trials = Vec::new();
    for (fixture, task, bindings) in fixtures {
        for technique in [Plain, Remat, Accumulate(2), MixedBf16] {
            let name = format!("{fixture}::{technique:?}").replace(['(', ')'], "");
            trials.push(trial(name, move || check(&fixture_model(fixture), &options(task, technique, bindings))));
        }
    }
    let full: [(&str, Task, Bindings, Technique); 6] = [
        ("bert-base", Task::Classify, &[("batch", 8), ("seq", 512)], Plain),
        ("bert-base", Task::Classify, &[("batch", 8), ("seq", 512)], Remat),
        ("bert-base", Task::Classify, &[("batch", 8), ("seq", 512)], Accumulate(4)),
        ("bert-base", Task::Classify, &[("batch", 8), ("seq", 512)], MixedBf16),
        ("llama", Task::CausalLm, &[("batch", 4), ("seq", 512)], Plain),
        ("llama", Task::CausalLm, &[("batch", 4), ("seq", 512)], Remat),
    ];
    for (name, task, bindings, technique) in full {
        trials.push(trial(format!("{name}::{technique:?}").replace(['(', ')'], ""), move || {
            let dir = shaped_checkpoint(name);
            check(dir.path(), &options(task, technique, bindings))
        }));
    }
    run_trials(trials)
}
