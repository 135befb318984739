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

fn main() {
    let mut trials: Vec<Trial> = OPS
        .iter()
        .map(|def| Trial::test(format!("op::{}", def.name), move || check(def, shared_session(None))))
        .collect();
    trials.push(Trial::test("argsort_orders_ties_by_index_and_nan_as_largest", || {
        argsort_orders_ties_by_index_and_nan_as_largest(shared_session(None))
    }));
    run_trials(trials)
}
