//! Op conformance: every entry of the op table, one test each, its example
//! taken through everything an op needs: parsing and type inference, the
//! printer and the IR text parser (a round trip), the verifier, the
//! reference interpreter, the StableHLO lowering and, on the CPU plugin,
//! XLA's result against the interpreter's. A new op's entry fails here until
//! each piece handles it (docs/contributing.md has the checklist).

use libtest_mimic::Failed;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use xlac_compiler::ir::op::table::{OpDef, OPS};
use xlac_compiler::ir::print::print_full;
use xlac_compiler::passes::OptLevel;
use xlac_compiler::TensorType;
use xlac_driver::{compile_model, eval_model, Options, Session};
use xlac_tests::{compare, run_trials, shared_session, Trial};

/// A model of one node applying `def` to inputs of its example's operand types.
fn model(def: &OpDef) -> Result<Value, String> {
    let mut inputs = Vec::new();
    for (i, t) in def.example.operands.iter().enumerate() {
        let ty: TensorType = t.parse()?;
        inputs.push(json!({"name": format!("x{i}"), "dtype": ty.dtype.name(), "shape": ty.shape}));
    }
    let attrs: Value = serde_json::from_str(def.example.attrs).map_err(|e| format!("example attrs: {e}"))?;
    let names: Vec<String> = (0..inputs.len()).map(|i| format!("x{i}")).collect();
    Ok(json!({
        "format_version": 1,
        "name": format!("op_{}", def.name),
        "inputs": inputs,
        "nodes": [{"name": "y", "op": def.name, "inputs": names, "outputs": ["y"], "attrs": attrs}],
        "outputs": ["y"],
    }))
}

fn check(def: &OpDef, session: Option<&Session>) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.json");
    std::fs::write(&path, model(def)?.to_string())?;
    let none = BTreeMap::new();
    let compiled = compile_model(&path, &Options::at(OptLevel::O0, BTreeMap::new()), &none)?;
    let node = compiled.module.order().first().map(|&n| compiled.module.node(n).op.name());
    if node != Some(def.name) {
        return Err(format!("the model's node is {node:?}, not `{}`", def.name).into());
    }
    // The printed IR reads back to the same IR.
    let text = print_full(&compiled.module);
    let ir = dir.path().join("model.ir");
    std::fs::write(&ir, &text)?;
    let reread = compile_model(&ir, &Options::at(OptLevel::O0, BTreeMap::new()), &none)?;
    if print_full(&reread.module) != text {
        return Err(format!("the IR text does not read back:\n{text}\nvs\n{}", print_full(&reread.module)).into());
    }
    if !compiled.lowered.text.contains("func.func public @main") {
        return Err(format!("no @main in the lowering:\n{}", compiled.lowered.text).into());
    }
    let reference = eval_model(&compiled, &none, 5)?;
    let Some(session) = session else { return Ok(()) };
    let xla = session.run(&compiled, &none, 5)?;
    for ((name, want), (_, got)) in reference.iter().zip(&xla) {
        compare(&format!("{} {name} (XLA vs interpreter)", def.name), got, want, 1e-4, 1e-5)?;
    }
    Ok(())
}

/// `argsort` on ties, infinities and a NaN, ascending and descending: the
/// interpreter and XLA give `numpy.argsort(x, kind="stable")`'s order and
/// `torch.sort(x, descending=True, stable=True)`'s (ties in index order, a
/// NaN the largest).
fn argsort_orders_ties_by_index_and_nan_as_largest(session: Option<&Session>) -> Result<(), Failed> {
    let x = [3.0f32, 1.0, f32::NAN, 3.0, 1.0, f32::NEG_INFINITY];
    let given = BTreeMap::from([("x".to_string(), xlac_runtime::HostTensor::from_array(&ndarray::arr1(&x)))]);
    for (descending, want) in [(false, [5i64, 1, 4, 0, 3, 2]), (true, [2, 0, 3, 1, 4, 5])] {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("model.json");
        let doc = json!({
            "format_version": 1,
            "name": "argsort",
            "inputs": [{"name": "x", "dtype": "f32", "shape": [6]}],
            "nodes": [{"name": "y", "op": "argsort", "inputs": ["x"], "outputs": ["y"], "attrs": {"descending": descending}}],
            "outputs": ["y"],
        });
        std::fs::write(&path, doc.to_string())?;
        let compiled = compile_model(&path, &Options::at(OptLevel::O0, BTreeMap::new()), &given)?;
        let mut results = vec![("interpreter", eval_model(&compiled, &given, 0)?)];
        if let Some(session) = session {
            results.push(("XLA", session.run(&compiled, &given, 0)?));
        }
        for (by, out) in results {
            let got: Vec<i64> = out[0].1.to_f64_vec().iter().map(|&v| v as i64).collect();
            if got != want {
                return Err(format!("{by}, descending {descending}: {got:?}, expected {want:?}").into());
            }
        }
    }
    Ok(())
}

/// u64 values from 2^63 up (which xlac holds as negative i64 bits where it
/// keeps integers in i64): compared, divided, maxed, added to a constant
/// (wrapping) and cast to f64 as u64s, on the interpreter and on XLA.
fn u64_from_two_to_the_63_orders_and_converts_unsigned(session: Option<&Session>) -> Result<(), Failed> {
    let x = [u64::MAX, 1 << 63, 5, 7];
    let y = [3u64, (1 << 63) + 1, 7, 2];
    let given = BTreeMap::from([
        ("x".to_string(), xlac_runtime::HostTensor::from_array(&ndarray::arr1(&x))),
        ("y".to_string(), xlac_runtime::HostTensor::from_array(&ndarray::arr1(&y))),
    ]);
    let node = |name: &str, op: &str, inputs: &[&str], attrs: serde_json::Value| json!({"name": name, "op": op, "inputs": inputs, "outputs": [name], "attrs": attrs});
    let doc = json!({
        "format_version": 1,
        "name": "u64",
        "inputs": [{"name": "x", "dtype": "u64", "shape": [4]}, {"name": "y", "dtype": "u64", "shape": [4]}],
        "nodes": [
            node("top", "constant", &[], json!({"dtype": "u64", "shape": [], "value": u64::MAX})),
            node("lt", "compare", &["x", "y"], json!({"dir": "lt"})),
            node("quotient", "div", &["x", "y"], json!({})),
            node("larger", "max", &["x", "y"], json!({})),
            node("wrapped", "add", &["x", "top"], json!({})),
            node("wide", "cast", &["x"], json!({"to": "f64"})),
        ],
        "outputs": ["lt", "quotient", "larger", "wrapped", "wide"],
    });
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.json");
    std::fs::write(&path, doc.to_string())?;
    let compiled = compile_model(&path, &Options::at(OptLevel::O0, BTreeMap::new()), &given)?;
    let lt: Vec<bool> = x.iter().zip(&y).map(|(a, b)| a < b).collect();
    let quotient: Vec<u64> = x.iter().zip(&y).map(|(a, b)| a / b).collect();
    let larger: Vec<u64> = x.iter().zip(&y).map(|(a, b)| *a.max(b)).collect();
    let wrapped: Vec<u64> = x.iter().map(|a| a.wrapping_add(u64::MAX)).collect();
    let wide: Vec<f64> = x.iter().map(|&a| a as f64).collect();
    let mut results = vec![("interpreter", eval_model(&compiled, &given, 0)?)];
    if let Some(session) = session {
        results.push(("XLA", session.run(&compiled, &given, 0)?));
    }
    for (by, out) in results {
        let u64s = |i: usize| out[i].1.to_array::<u64>().map(|a| a.iter().copied().collect::<Vec<_>>());
        let got_lt: Vec<bool> = out[0].1.to_array::<bool>()?.iter().copied().collect();
        let got_wide: Vec<f64> = out[4].1.to_array::<f64>()?.iter().copied().collect();
        let got = (got_lt, u64s(1)?, u64s(2)?, u64s(3)?, got_wide);
        let want = (lt.clone(), quotient.clone(), larger.clone(), wrapped.clone(), wide.clone());
        if got != want {
            return Err(format!("{by}: {got:?}, expected {want:?}").into());
        }
    }
    Ok(())
}

fn main() {
    let mut trials: Vec<Trial> = OPS
        .iter()
        .map(|def| Trial::test(format!("op::{}", def.name), move || check(def, shared_session(None))))
        .collect();
    trials.push(Trial::test("argsort_orders_ties_by_index_and_nan_as_largest", || {
        argsort_orders_ties_by_index_and_nan_as_largest(shared_session(None))
    }));
    trials.push(Trial::test("u64_from_two_to_the_63_orders_and_converts_unsigned", || {
        u64_from_two_to_the_63_orders_and_converts_unsigned(shared_session(None))
    }));
    run_trials(trials)
}
