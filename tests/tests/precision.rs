//! Mixed precision: every fixture at mixed-bf16 and mixed-f16 stays within the
//! documented bounds of the f32 expectations on the CPU plugin (cosine
//! similarity ≥ 0.9999, max |error| ≤ 2% of the output's largest magnitude),
//! weights become low-precision parameters, --keep-f32 keeps a node in f32,
//! and an unknown node name is an error.

use std::collections::BTreeMap;
use std::path::Path;
use xlac_compiler::ir::op::Op;
use xlac_compiler::ir::ValueDef;
use xlac_compiler::passes::precision::Precision;
use xlac_compiler::DType;
use xlac_driver::{compile_model, CompiledModel, Options};
use xlac_runtime::HostTensor;
use xlac_tests::{named_fixtures, read_npy_dir, run_trials, shared_session, trial};

/// The options of a policy at -O2, keeping `keep` in f32.
fn pipeline(policy: Precision, keep: &[&str]) -> Options {
    Options { precision: policy, keep_f32: keep.iter().map(|s| s.to_string()).collect(), ..Options::default() }
}

fn compile(
    path: &std::path::Path,
    given: &BTreeMap<String, HostTensor>,
    options: &Options,
) -> Result<CompiledModel, xlac_driver::Error> {
    compile_model(path, options, given)
}

/// (cosine similarity, max |a − e| / max |e|).
fn errors(a: &HostTensor, e: &HostTensor) -> (f64, f64) {
    let (a, e) = (a.to_f64_vec(), e.to_f64_vec());
    let dot: f64 = a.iter().zip(&e).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = e.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let max_err = a.iter().zip(&e).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    (dot / (norm(&a) * norm(&e)).max(f64::MIN_POSITIVE), max_err / scale.max(f64::MIN_POSITIVE))
}

/// Runs fixture `dir` under `policy` on the CPU plugin and checks each f32
/// output against its expectation: cosine ≥ `min_cosine`, largest error ≤
/// `max_rel` of the largest magnitude. Under a pure policy every float weight is in the low type.
fn within_bounds(dir: &Path, policy: Precision, min_cosine: f64, max_rel: f64) {
    let Some(session) = shared_session(None) else { return };
    let given = read_npy_dir(&dir.join("inputs"));
    let expected = read_npy_dir(&dir.join("expected"));
    let model = compile(&dir.join("model.json"), &given, &pipeline(policy, &[])).unwrap();
    if !policy.is_mixed() {
        let m = &model.module;
        let low = policy.low().unwrap();
        let float_params = m.params().iter().map(|p| m.value(p.value).ty.dtype).filter(|d| d.is_float());
        assert!(float_params.into_iter().all(|d| d == low), "{policy:?}: every float weight is stored in {low}");
    }
    for (name, out) in session.run(&model, &given, 0).unwrap() {
        let want = &expected[&name];
        assert_eq!(out.element_type(), want.element_type(), "outputs keep their declared dtypes");
        if !matches!(want.element_type(), xlac_runtime::DType::F32) {
            continue;
        }
        let (cos, rel) = errors(&out, want);
        println!("{policy:?} {}:{name}: cosine {cos:.7}, max error {rel:.2e} of the largest magnitude", dir.display());
        assert!(
            cos >= min_cosine && rel <= max_rel,
            "{policy:?} {}:{name}: cosine {cos}, max error {rel}",
            dir.display()
        );
    }
}

fn weights_become_low_precision_parameters() {
    let dir = xlac_tests::repo_root().join("fixtures/transformer_block");
    let given = read_npy_dir(&dir.join("inputs"));
    let model = compile(&dir.join("model.json"), &given, &pipeline(Precision::MixedBf16, &[])).unwrap();
    let m = &model.module;
    let weights: Vec<_> = m.params().iter().map(|p| &m.value(p.value).ty).filter(|t| t.rank() == 2).collect();
    assert_eq!(weights.len(), 6);
    assert!(weights.iter().all(|t| t.dtype == DType::BF16), "{weights:?}");
    let biases = m.params().iter().map(|p| &m.value(p.value).ty).filter(|t| t.rank() == 1);
    assert!(biases.into_iter().all(|t| t.dtype == DType::F32), "biases and norm parameters stay f32");
}

fn keep_f32_pins_a_node_and_unknown_names_are_errors() {
    let dir = xlac_tests::repo_root().join("fixtures/transformer_block");
    let given = read_npy_dir(&dir.join("inputs"));
    let model =
        compile(&dir.join("model.json"), &given, &pipeline(Precision::MixedBf16, &["attn.out", "attn"])).unwrap();
    let m = &model.module;
    for &n in m.order() {
        let node = m.node(n);
        let low = node.inputs.iter().any(|&i| m.value(i).ty.dtype == DType::BF16);
        let pinned = node.name == "attn" || m.value(node.output).name == "attn.out";
        if pinned {
            assert!(!low, "`{}` must stay in f32: {:?}", node.name, node.op);
        }
        if let Op::Linear { acc, .. } = &node.op {
            assert_eq!(acc.is_none(), pinned, "{}", node.name);
        }
    }
    // The pinned linear keeps its f32 weight.
    let out_w = m.params().iter().find(|p| m.value(p.value).name == "attn.out.weight").expect("the f32 weight stays");
    assert!(matches!(m.value(out_w.value).def, ValueDef::Param(_)) && m.value(out_w.value).ty.dtype == DType::F32);
    let e = compile(&dir.join("model.json"), &given, &pipeline(Precision::MixedBf16, &["no.such.node"]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--keep-f32") && e.contains("`no.such.node`: no node of the model has this name"), "{e}");
}

fn an_f16_overflow_is_named_and_fixed_by_keep_f32() {
    let path = xlac_tests::repo_root().join("tests/models/f16_overflow.json");
    let given = BTreeMap::new();
    let reference = compile(&path, &given, &Options::default()).unwrap();
    let broken = compile(&path, &given, &pipeline(Precision::MixedF16, &[])).unwrap();
    let r = xlac_driver::check::check_precision(&reference, &broken, Precision::MixedF16, &given, 0).unwrap();
    let o = r.first_overflow.as_ref().expect("the overflow is found");
    assert_eq!((o.node.as_str(), o.operand.as_str()), ("logits", "scaled"));
    assert!(o.magnitude > 65504.0);
    assert!(r.nodes.iter().any(|n| n.node == "scaled" && n.overflows));
    assert!(r.outputs[0].cosine < 0.5 && r.outputs[0].max_abs.is_infinite(), "{:?}", r.outputs);

    let fixed = compile(&path, &given, &pipeline(Precision::MixedF16, &["logits"])).unwrap();
    let r = xlac_driver::check::check_precision(&reference, &fixed, Precision::MixedF16, &given, 0).unwrap();
    assert!(r.first_overflow.is_none(), "{:?}", r.first_overflow);
    assert!(r.outputs[0].cosine > 0.9999 && r.outputs[0].max_rel < 1e-2, "{:?}", r.outputs);

    // XLA agrees: the broken program gives non-finite logits, the fixed one does not.
    let Some(session) = shared_session(None) else { return };
    let bad = session.run(&broken, &given, 0).unwrap();
    assert!(bad[0].1.to_f64_vec().iter().any(|x| !x.is_finite()));
    let good = session.run(&fixed, &given, 0).unwrap();
    assert!(good[0].1.to_f64_vec().iter().all(|x| x.is_finite()));
}

fn main() {
    // The mixed policies keep the documented bounds; the pure ones, looser ones.
    let policies = [
        (Precision::MixedBf16, 0.9999, 0.02),
        (Precision::MixedF16, 0.9999, 0.02),
        (Precision::Bf16, 0.999, 0.1),
        (Precision::F16, 0.999, 0.02),
    ];
    let mut trials = Vec::new();
    for (name, dir) in named_fixtures() {
        for (policy, cos, rel) in policies {
            let dir = dir.clone();
            trials.push(trial(format!("{name}::{policy:?}_within_bounds"), move || {
                within_bounds(&dir, policy, cos, rel)
            }));
        }
    }
    trials.push(trial("weights_become_low_precision_parameters", weights_become_low_precision_parameters));
    trials.push(trial(
        "keep_f32_pins_a_node_and_unknown_names_are_errors",
        keep_f32_pins_a_node_and_unknown_names_are_errors,
    ));
    trials
        .push(trial("an_f16_overflow_is_named_and_fixed_by_keep_f32", an_f16_overflow_is_named_and_fixed_by_keep_f32));
    run_trials(trials)
}
