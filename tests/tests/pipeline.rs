//! Pipeline parallelism, one test per model and stage count: the model cut
//! into S stages (balanced by their work, at layer boundaries for the tiny
//! BERT, GPT-2 and Llama checkpoints), stage s compiled for CPU device s, the
//! batch run as 4 micro-batches passed device to device, equals the whole
//! model run on one device (1e-5); each stage's share of the work by xlac's
//! count (what the cut balances) is its share by XLA's cost analysis of the
//! compiled stage, within 5 points. Every stage runs on its own device, every
//! micro-batch passes every stage, and the measured idle share per device is
//! a share. And the backward pass a pipeline would run: each stage's
//! pullback, fed the cotangents the later stages send back, gives the whole
//! model's gradients (on the interpreter, 1e-9).

use std::collections::BTreeMap;
use xlac_compiler::autodiff::pullback;
use xlac_compiler::backend::interp::{eval, Tensor};
use xlac_compiler::passes::OptLevel;
use xlac_compiler::stages::{cut, Source};
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
    let shares: Vec<f64> = c.stages.iter().map(|s| s.flops / total).collect();
    let pipeline = Pipeline::load(many, &small, c).unwrap();
    assert_eq!(pipeline.devices(), (0..stages).collect::<Vec<_>>(), "{fixture}: stage s on device s");
    // The work the cut balanced, by xlac's count, is the work XLA's cost analysis finds in each stage.
    let xla = pipeline.xla_flops();
    if let Some(xla) = xla.iter().copied().collect::<Option<Vec<f64>>>() {
        let xla_total: f64 = xla.iter().sum();
        for (s, (share, x)) in shares.iter().zip(&xla).enumerate() {
            let by_xla = x / xla_total;
            assert!(
                (share - by_xla).abs() <= 0.05,
                "{fixture}: stage {s} does {share:.3} of the work, {by_xla:.3} by XLA"
            );
        }
    }
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

/// Interpreter tensors of `m`'s parameters, by name (read from their files).
fn parameters(m: &xlac_compiler::ir::Module) -> BTreeMap<String, Tensor> {
    let params = xlac_driver::Parameters::of(m.params().iter().map(|p| (&p.source, &m.value(p.value).ty))).unwrap();
    m.params()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let v = params.value(i).unwrap();
            let t = v.as_ref().unwrap();
            let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
            (m.value(p.value).name.clone(), Tensor::from_le_bytes(t.ty, &shape, &t.dense_bytes()).unwrap())
        })
        .collect()
}

/// Runs `m` on the interpreter with its inputs and parameters taken by name from `values`.
fn interpret(m: &xlac_compiler::ir::Module, values: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let args: Vec<Tensor> = m
        .inputs()
        .iter()
        .chain(m.params().iter().map(|p| &p.value))
        .map(|&v| values.get(&m.value(v).name).unwrap_or_else(|| panic!("no value for `{}`", m.value(v).name)).clone())
        .collect();
    m.output_names().iter().cloned().zip(eval(m, &args).unwrap()).collect()
}

/// A pipeline's backward pass: each stage's pullback, fed the cotangents the
/// later stages send back, gives the whole model's gradients (the
/// interpreter, in f64): what pipeline-parallel training builds on.
fn stage_pullbacks_chain_to_the_models_gradients(fixture: &str, stages: usize) {
    let model = fixture_model(fixture);
    let given = batch(fixture);
    let compiled = compile_model(&model, &Options::at(OptLevel::O2, BTreeMap::new()), &given).unwrap();
    let m = &compiled.module;
    let mut values = parameters(m);
    for (name, t) in &given {
        let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
        values.insert(name.clone(), Tensor::from_le_bytes(t.element_type(), &shape, t.data()).unwrap());
    }
    // A cotangent for each float output.
    for (k, (&o, name)) in m.outputs().iter().zip(m.output_names()).enumerate() {
        let ty = &m.value(m.resolve(o)).ty;
        if ty.dtype.is_float() {
            let dims: Vec<usize> = ty.shape.iter().map(|&d| d as usize).collect();
            let r = HostTensor::random(ty.dtype, &dims, 7 + k as u64).unwrap();
            values.insert(format!("ct.{name}"), Tensor::from_le_bytes(ty.dtype, &ty.shape, r.data()).unwrap());
        }
    }
    let weights: Vec<String> = m.params().iter().map(|p| m.value(p.value).name.clone()).collect();
    let want = interpret(&pullback(m, &weights).unwrap(), &values);
    let c = cut(m, stages, &[]).unwrap();
    // Forward, stage by stage.
    let mut outs: Vec<BTreeMap<String, Tensor>> = Vec::new();
    for stage in &c.stages {
        let mut v = values.clone();
        for o in &outs {
            v.extend(o.iter().map(|(k, t)| (k.clone(), t.clone())));
        }
        outs.push(interpret(&stage.module, &v));
    }
    // Backward, last stage first: each stage's output cotangents are the model's (for a model
    // output) plus what the later stages sent back for it.
    let mut sent: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut got: BTreeMap<String, Tensor> = BTreeMap::new();
    for (s, stage) in c.stages.iter().enumerate().rev() {
        let sm = &stage.module;
        let mut v = values.clone();
        for o in &outs[..s] {
            v.extend(o.iter().map(|(k, t)| (k.clone(), t.clone())));
        }
        for name in sm.output_names() {
            let model_ct = values.get(&format!("ct.{name}")).filter(|_| m.output_names().contains(name));
            let ct = match (model_ct, sent.get(name)) {
                (Some(a), Some(b)) => Tensor::from_f64(a.dtype, a.to_f64() + b.to_f64()),
                (Some(a), None) | (None, Some(a)) => a.clone(),
                (None, None) => {
                    let ty = sm
                        .value(sm.resolve(sm.outputs()[sm.output_names().iter().position(|n| n == name).unwrap()]))
                        .ty
                        .clone();
                    let dims: Vec<usize> = ty.shape.iter().map(|&d| d as usize).collect();
                    Tensor::from_f64(ty.dtype, ndarray::ArrayD::zeros(dims))
                }
            };
            v.insert(format!("ct.{name}"), ct);
        }
        let from_stages: Vec<String> = sm
            .inputs()
            .iter()
            .zip(&stage.sources)
            .filter(|(&x, src)| matches!(src, Source::Stage { .. }) && sm.value(x).ty.dtype.is_float())
            .map(|(&x, _)| sm.value(x).name.clone())
            .collect();
        let mut wrt = from_stages.clone();
        wrt.extend(sm.params().iter().map(|p| sm.value(p.value).name.clone()));
        let grads = interpret(&pullback(sm, &wrt).unwrap(), &v);
        for name in from_stages {
            let g = grads[&format!("grad.{name}")].clone();
            let sum = match sent.remove(&name) {
                Some(prev) => Tensor::from_f64(g.dtype, prev.to_f64() + g.to_f64()),
                None => g,
            };
            sent.insert(name, sum);
        }
        // A weight read by several stages (GPT-2's tied embeddings) sums their gradients.
        for (k, g) in grads.into_iter().filter(|(k, _)| weights.iter().any(|w| *k == format!("grad.{w}"))) {
            let sum = match got.remove(&k) {
                Some(prev) => Tensor::from_f64(g.dtype, prev.to_f64() + g.to_f64()),
                None => g,
            };
            got.insert(k, sum);
        }
    }
    assert_eq!(got.len(), want.len(), "{fixture}: every weight's gradient");
    for (name, w) in &want {
        let (g, w) = (got[name].to_f64(), w.to_f64());
        let scale = w.iter().fold(0.0f64, |a, x| a.max(x.abs())).max(1e-30);
        let err = (&g - &w).iter().fold(0.0f64, |a, x| a.max(x.abs())) / scale;
        assert!(err <= 1e-9, "{fixture}: {name} differs by {err:e} of its largest element");
    }
}

/// Each stage of a pipeline is lowered as its plugin reads it best
/// (`CompiledModel::lower_for`), as a whole model is: a stage with a product
/// of 32 rows by an int8 matrix widened whole, cut from the rest, is the
/// program the plugin's rule lowers (on 0.81 the matrix gathered first, a
/// program other than the cut's own lowering); compiling that program after
/// the pipeline loaded finds it in the session's cache.
fn stages_follow_the_plugins_rule() {
    use xlac_compiler::backend::stablehlo::{lower_with, WholeWidening};
    let Some(plugin) = xlac_tests::cpu_plugin() else { return };
    // A session of its own: no other test's programs in its memory cache.
    let options = xlac_runtime::ClientOptions { cpu_device_count: Some(2) };
    let cache = xlac_runtime::CacheConfig { dir: None, max_bytes: 0, memory_entries: 8 };
    let session =
        xlac_driver::Session::new(xlac_runtime::Platform::Cpu, Some(plugin.path()), &options, &cache).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    std::fs::write(&path, xlac_tests::int8_product_model(32, 64, 1024, true).to_string()).unwrap();
    let compiled = compile_model(&path, &Options::at(OptLevel::O0, BTreeMap::new()), &BTreeMap::new()).unwrap();
    let c = cut(&compiled.module, 2, &["scaled".to_string()]).unwrap();
    let rule = xlac_driver::plugin_rules::whole_widening(&session);
    assert_eq!(c.stages[0].lowered.whole_widening, Some(WholeWidening::AsRead), "the first stage widens the matrix");
    let _pipeline = Pipeline::load(&session, &compiled, c.clone()).unwrap();
    for (s, stage) in c.stages.into_iter().enumerate() {
        let lowered = lower_with(&stage.module, rule);
        if s == 0 {
            assert_eq!(lowered.text != stage.lowered.text, rule == WholeWidening::Gathered);
        }
        let model =
            xlac_driver::CompiledModel { module: stage.module, lowered, devices: Some(vec![s]), ..compiled.clone() };
        let (_, outcome) = session.compile(&model).unwrap();
        assert!(matches!(outcome, xlac_runtime::CacheOutcome::MemoryHit), "stage {s}: {outcome:?}");
    }
}

fn main() {
    let mut trials = vec![trial("stages_follow_the_plugins_rule", stages_follow_the_plugins_rule)];
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
            trials.push(trial(format!("{fixture}::stages{stages}::pullbacks"), move || {
                stage_pullbacks_chain_to_the_models_gradients(fixture, stages)
            }));
        }
    }
    run_trials(trials)
}
