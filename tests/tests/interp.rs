//! The reference interpreter as the oracle: it matches NumPy on every fixture,
//! every pass preserves its results (bit for bit, but for fusion's single
//! rounding), and on randomly generated graphs (fixed seeds; a failure prints
//! the model to reproduce it) -O0 and -O2 agree in the interpreter and XLA at
//! -O2 agrees with the interpreter.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use xlac_compiler::passes::{OptLevel, PassKind, REGISTRY};
use xlac_driver::{compile_model, eval_model, CompiledModel, Options};
use xlac_runtime::HostTensor;
use xlac_tests::{
    case_name, compare, named_fixtures, pass_cases, read_npy_dir, run_trials, shared_session, trial, Rng,
};

fn compile(
    path: &Path,
    bindings: &BTreeMap<String, u64>,
    given: &BTreeMap<String, HostTensor>,
    options: Options,
) -> CompiledModel {
    compile_model(path, &Options { bindings: bindings.clone(), ..options }, given).unwrap()
}

/// Options at `level`.
fn at(level: OptLevel) -> Options {
    Options::at(level, BTreeMap::new())
}

/// Options running just the registered pass `name`.
fn only(name: &str) -> Options {
    Options { passes: Some(vec![name.to_string()]), ..Options::default() }
}

/// The optimisation passes.
fn named_passes() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().filter(|p| p.kind == PassKind::Optimization).map(|p| p.name)
}

fn matches_numpy(dir: &Path) {
    let inputs = read_npy_dir(&dir.join("inputs"));
    let expected = read_npy_dir(&dir.join("expected"));
    let model = compile(&dir.join("model.json"), &BTreeMap::new(), &inputs, at(OptLevel::O0));
    for (name, out) in eval_model(&model, &inputs, 0).unwrap() {
        compare(&format!("{}:{name}", dir.display()), &out, &expected[&name], 1e-5, 1e-6).unwrap();
    }
}

/// Outputs equal bit for bit (NaNs included) when `exact`, else within
/// rounding (a fused op rounds once where its decomposition rounded per op);
/// or the same refusal.
fn close(
    what: &str,
    a: &Result<Vec<(String, HostTensor)>, String>,
    b: &Result<Vec<(String, HostTensor)>, String>,
    exact: bool,
) {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.len(), b.len(), "{what}");
            for ((n, x), (_, y)) in a.iter().zip(b) {
                if exact {
                    assert!(x == y, "{what}: output `{n}` differs:\n{}\nvs\n{}", x.summary(), y.summary());
                } else {
                    compare(&format!("{what}: {n}"), y, x, 1e-5, 1e-6).unwrap();
                }
            }
        }
        (Err(x), Err(y)) => assert_eq!(x.split(": ").last(), y.split(": ").last(), "{what}"),
        _ => panic!("{what}: one run failed and the other did not: {a:?} vs {b:?}"),
    }
}

/// Each optimisation pass alone, and -O2, keep `path`'s results in the interpreter.
fn every_pass_preserves_the_results(path: &Path) {
    let b: BTreeMap<String, u64> = [("batch".to_string(), 2), ("seq".to_string(), 3)].into_iter().collect();
    let none = BTreeMap::new();
    let eval = |m: &CompiledModel| eval_model(m, &none, 3).map_err(|e| e.to_string());
    // IR text has concrete shapes; model.json may use the symbols.
    let symbols = match path.extension().is_some_and(|e| e == "json") {
        true => xlac_compiler::frontend::json::ModelFile::load(path).unwrap().symbols(),
        false => Default::default(),
    };
    let bindings: BTreeMap<String, u64> =
        b.iter().filter(|(k, _)| symbols.contains(*k)).map(|(k, v)| (k.clone(), *v)).collect();
    let reference = eval(&compile(path, &bindings, &none, at(OptLevel::O0)));
    for name in named_passes() {
        let model = compile(path, &bindings, &none, only(name));
        // Fusion, weight folding and the query's scale regroup arithmetic: equal up to rounding.
        close(
            &format!("{} after {name}", path.display()),
            &reference,
            &eval(&model),
            !["fuse", "fold-weights", "scale-query"].contains(&name),
        );
    }
    let o2 = compile(path, &bindings, &none, at(OptLevel::O2));
    close(&format!("{} at -O2", path.display()), &reference, &eval(&o2), false);
}

/// A random, valid model of f32 values: elementwise ops, broadcasting,
/// layout chains, reductions, softmax, matmuls, splat constants and repeated
/// nodes, so that every pass has something to do.
fn random_model(seed: u64) -> Value {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut values: Vec<(String, Vec<u64>)> =
        vec![("x0".into(), vec![2, 3, 4]), ("x1".into(), vec![4]), ("x2".into(), vec![3, 4])];
    let inputs: Vec<Value> = values.iter().map(|(n, s)| json!({"name": n, "dtype": "f32", "shape": s})).collect();
    let mut nodes: Vec<Value> = Vec::new();
    let broadcast = |a: &[u64], b: &[u64]| -> Option<Vec<u64>> {
        let r = a.len().max(b.len());
        (0..r)
            .map(|i| {
                let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
                let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
                match (da, db) {
                    (x, y) if x == y => Some(x),
                    (1, y) => Some(y),
                    (x, 1) => Some(x),
                    _ => None,
                }
            })
            .collect()
    };
    for i in 0..8 + rng.below(10) {
        let out = format!("v{i}");
        let (a, sa) = rng.pick(&values).clone();
        let (node, shape): (Value, Vec<u64>) = match rng.below(10) {
            0 | 1 => {
                let op = *rng.pick(&[
                    "tanh",
                    "sin",
                    "cos",
                    "neg",
                    "abs",
                    "sigmoid",
                    "relu",
                    "silu",
                    "gelu",
                    "gelu_tanh",
                    "erf",
                    "floor",
                ]);
                (json!({"op": op, "inputs": [a], "outputs": [out]}), sa)
            }
            2 | 3 => {
                let partners: Vec<_> =
                    values.iter().filter_map(|(b, sb)| broadcast(&sa, sb).map(|s| (b.clone(), s))).collect();
                let (b, s) = rng.pick(&partners).clone();
                let op = *rng.pick(&["add", "sub", "mul", "max", "min"]);
                (json!({"op": op, "inputs": [a, b], "outputs": [out]}), s)
            }
            4 => {
                // x op splat(0 or 1): canonicalize's identities.
                let c = format!("c{i}");
                let (op, v) = *rng.pick(&[("add", 0.0), ("mul", 1.0), ("sub", 0.0), ("div", 1.0)]);
                nodes.push(
                    json!({"op": "constant", "inputs": [], "outputs": [c], "attrs": {"dtype": "f32", "value": v}}),
                );
                (json!({"op": op, "inputs": [a, c], "outputs": [out]}), sa)
            }
            5 if sa.len() >= 2 => {
                let mut perm: Vec<usize> = (0..sa.len()).collect();
                perm.swap(0, sa.len() - 1);
                let t = format!("t{i}");
                nodes.push(json!({"op": "transpose", "inputs": [a], "outputs": [t], "attrs": {"perm": perm}}));
                let twice = rng.below(2) == 0;
                if twice {
                    (json!({"op": "transpose", "inputs": [t], "outputs": [out], "attrs": {"perm": perm}}), sa)
                } else {
                    let s: Vec<u64> = perm.iter().map(|&p| sa[p]).collect();
                    (
                        json!({"op": "reshape", "inputs": [t], "outputs": [out], "attrs": {"shape": [-1]}}),
                        vec![s.iter().product()],
                    )
                }
            }
            6 if !sa.is_empty() => {
                let axis = rng.below(sa.len());
                let keep = rng.below(2) == 0;
                let op = *rng.pick(&["reduce_sum", "reduce_max", "reduce_mean", "reduce_min"]);
                let mut s = sa.clone();
                if keep {
                    s[axis] = 1
                } else {
                    s.remove(axis);
                }
                (json!({"op": op, "inputs": [a], "outputs": [out], "attrs": {"axes": [axis], "keepdims": keep}}), s)
            }
            7 if !sa.is_empty() => {
                (json!({"op": "softmax", "inputs": [a], "outputs": [out], "attrs": {"axis": rng.below(sa.len())}}), sa)
            }
            8 if sa.len() >= 2 => {
                let r = sa.len();
                let mut perm: Vec<usize> = (0..r).collect();
                perm.swap(r - 2, r - 1);
                let t = format!("t{i}");
                nodes.push(json!({"op": "transpose", "inputs": [a], "outputs": [t], "attrs": {"perm": perm}}));
                let mut s = sa.clone();
                s[r - 1] = sa[r - 2];
                (json!({"op": "matmul", "inputs": [a, t], "outputs": [out]}), s)
            }
            _ if !nodes.is_empty() => {
                // Repeat an earlier computation under a new name: CSE's case.
                let prev = rng.pick(&nodes).clone();
                if prev["op"] == "constant" {
                    continue;
                }
                let prev_out = prev["outputs"][0].as_str().unwrap().to_string();
                let shape = values
                    .iter()
                    .chain([(String::new(), vec![])].iter())
                    .find(|(n, _)| *n == prev_out)
                    .map(|(_, s)| s.clone());
                let Some(shape) = shape else { continue };
                let mut n = prev.clone();
                n["outputs"] = json!([out]);
                (n, shape)
            }
            _ => continue,
        };
        nodes.push(node);
        values.push((out, shape));
    }
    let last = values.last().unwrap().0.clone();
    let mut outputs = vec![last.clone()];
    let extra = values[3..].iter().map(|(n, _)| n.clone()).find(|n| *n != last && rng.below(3) == 0);
    outputs.extend(extra);
    json!({"format_version": 1, "name": format!("random_{seed}"), "inputs": inputs, "nodes": nodes, "outputs": outputs})
}

fn random_graphs_agree_across_passes_and_with_xla() {
    let session = shared_session(None);
    let dir = tempfile::tempdir().unwrap();
    let (no_bindings, no_inputs) = (BTreeMap::new(), BTreeMap::new());
    let (mut shrunk, mut nodes) = (0, 0);
    for seed in 0..60 {
        let model = random_model(seed);
        let path = dir.path().join("model.json");
        std::fs::write(&path, serde_json::to_string_pretty(&model).unwrap()).unwrap();
        let repro = || format!("random graph seed {seed}; model:\n{}", serde_json::to_string_pretty(&model).unwrap());
        let o0 = compile_model(&path, &Options::at(OptLevel::O0, no_bindings.clone()), &no_inputs)
            .unwrap_or_else(|e| panic!("{e}\n{}", repro()));
        let o2 = compile(&path, &no_bindings, &no_inputs, at(OptLevel::O2));
        nodes += o0.module.order().len();
        shrunk += usize::from(o2.module.order().len() < o0.module.order().len());
        let reference = eval_model(&o0, &no_inputs, seed).unwrap();
        for name in named_passes() {
            let single = compile(&path, &no_bindings, &no_inputs, only(name));
            for ((n, a), (_, b)) in reference.iter().zip(&eval_model(&single, &no_inputs, seed).unwrap()) {
                compare(n, b, a, 1e-6, 1e-7)
                    .unwrap_or_else(|e| panic!("after {name} in the interpreter: {e}; {}", repro()));
            }
        }
        let optimised = eval_model(&o2, &no_inputs, seed).unwrap();
        for ((n, a), (_, b)) in reference.iter().zip(&optimised) {
            compare(n, b, a, 1e-6, 1e-7).unwrap_or_else(|e| panic!("-O0 vs -O2 in the interpreter: {e}; {}", repro()));
        }
        if let Some(session) = session {
            let xla = session.run(&o2, &no_inputs, seed).unwrap();
            for ((n, want), (_, got)) in reference.iter().zip(&xla) {
                compare(n, got, want, 1e-4, 1e-5).unwrap_or_else(|e| panic!("XLA vs interpreter: {e}; {}", repro()));
            }
        }
    }
    println!("60 random graphs, {nodes} nodes at -O0; -O2 shrank {shrunk}");
    assert!(shrunk >= 30, "the generator should give the passes work in most graphs ({shrunk} of 60)");
}

fn main() {
    let mut trials = Vec::new();
    for (name, dir) in named_fixtures() {
        let model = dir.join("model.json");
        trials.push(trial(format!("fixture::{name}::matches_numpy"), move || matches_numpy(&dir)));
        trials.push(trial(format!("fixture::{name}::every_pass_preserves_the_results"), move || {
            every_pass_preserves_the_results(&model)
        }));
    }
    for (pass, path) in pass_cases() {
        trials.push(trial(format!("{}::every_pass_preserves_the_results", case_name(&pass, &path)), move || {
            every_pass_preserves_the_results(&path)
        }));
    }
    trials
        .push(trial("random_graphs_agree_across_passes_and_with_xla", random_graphs_agree_across_passes_and_with_xla));
    run_trials(trials)
}
