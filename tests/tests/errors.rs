//! One test per class of bad input: each error names the file and the place
//! (JSON path or node) and says what was expected. And no input panics.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use xlac_driver::{compile_model, Options};
use xlac_tests::{assert_has, small_model, Rng};

/// Writes `model` (and optional weight tensors) to a temp dir and compiles it;
/// returns the error text.
fn error_of(model: &Value, bindings: &[(&str, u64)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    std::fs::write(&path, serde_json::to_string_pretty(model).unwrap()).unwrap();
    error_at(&path, bindings)
}

fn error_at(path: &Path, bindings: &[(&str, u64)]) -> String {
    let b: BTreeMap<String, u64> = bindings.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    match compile_model(path, &Options { bindings: b.clone(), ..Options::default() }, &BTreeMap::new()) {
        Ok(_) => panic!("expected an error for {}", std::fs::read_to_string(path).unwrap()),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("model.json"), "the error must name the file: {text}");
            text
        }
    }
}

/// A small valid model: y = relu(x @ w + b), w f32[4,3].
fn base() -> Value {
    small_model(3)
}

#[test]
fn the_base_model_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    std::fs::write(&path, base().to_string()).unwrap();
    let b: BTreeMap<String, u64> = [("batch".to_string(), 2)].into_iter().collect();
    compile_model(&path, &Options { bindings: b.clone(), ..Options::default() }, &BTreeMap::new()).unwrap();
}

#[test]
fn malformed_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    std::fs::write(&path, "{\n  \"format_version\": 1,\n  \"nodes\": [,]\n}").unwrap();
    assert_has(&error_at(&path, &[]), &["model.json:3:", "malformed JSON"]);
}

#[test]
fn unknown_format_version() {
    let mut m = base();
    m["format_version"] = json!(7);
    assert_has(&error_of(&m, &[("batch", 2)]), &["format_version", "unknown format version 7", "reads version 1"]);
}

#[test]
fn unknown_op_with_a_suggestion() {
    let mut m = base();
    m["nodes"][2]["op"] = json!("rellu");
    assert_has(&error_of(&m, &[("batch", 2)]), &["nodes[2]", "node `y`", "unknown op `rellu`", "did you mean `relu`"]);
}

#[test]
fn wrong_arity() {
    let mut m = base();
    m["nodes"][1]["inputs"] = json!(["h"]);
    assert_has(&error_of(&m, &[("batch", 2)]), &["nodes[1].inputs", "op `add` takes 2 operands, found 1"]);
}

#[test]
fn unknown_and_missing_attributes() {
    let mut m = base();
    m["nodes"][2]["attrs"] = json!({"alpha": 0.1});
    assert_has(&error_of(&m, &[("batch", 2)]), &["nodes[2].attrs.alpha", "unknown attribute"]);
    let mut m = base();
    m["nodes"][2] = json!({"op": "cast", "inputs": ["z"], "outputs": ["y"]});
    assert_has(&error_of(&m, &[("batch", 2)]), &["nodes[2].attrs.to", "missing attribute"]);
    let mut m = base();
    m["nodes"][2] = json!({"op": "softmax", "inputs": ["z"], "outputs": ["y"], "attrs": {"axis": 5}});
    assert_has(&error_of(&m, &[("batch", 2)]), &["nodes[2].attrs.axis", "axis 5 is out of range for rank 2"]);
}

#[test]
fn shape_mismatch() {
    let mut m = base();
    m["parameters"][1]["shape"] = json!([5]);
    m["parameters"][1]["value"] = json!([1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_has(&error_of(&m, &[("batch", 2)]), &["nodes[1]", "node `z`", "not broadcastable", "f32[2,3], f32[5]"]);
    let mut m = base();
    m["inputs"][0]["shape"] = json!(["batch", 5]);
    assert_has(&error_of(&m, &[("batch", 2)]), &["node `h`", "contracting dimensions differ (5 vs 4)"]);
}

#[test]
fn dtype_mismatch() {
    let mut m = base();
    m["parameters"][1]["dtype"] = json!("i32");
    m["parameters"][1]["value"] = json!([1, 2, 3]);
    assert_has(&error_of(&m, &[("batch", 2)]), &["node `z`", "operand 0 is f32, operand 1 is i32", "insert a cast"]);
}

#[test]
fn undefined_value() {
    let mut m = base();
    m["nodes"][2]["inputs"] = json!(["zz"]);
    assert_has(&error_of(&m, &[("batch", 2)]), &["nodes[2].inputs[0]", "undefined value `zz`"]);
    let mut m = base();
    m["outputs"] = json!(["nope"]);
    assert_has(&error_of(&m, &[("batch", 2)]), &["outputs[0]", "undefined value `nope`"]);
}

#[test]
fn cycle() {
    let mut m = base();
    m["nodes"][0]["inputs"] = json!(["y", "w"]);
    assert_has(&error_of(&m, &[("batch", 2)]), &["cycle", "`h`", "`z`", "`y`"]);
}

#[test]
fn duplicate_name() {
    let mut m = base();
    m["nodes"][1]["outputs"] = json!(["h"]);
    assert_has(&error_of(&m, &[("batch", 2)]), &["nodes[1].outputs[0]", "duplicate name `h`", "nodes[0].outputs[0]"]);
    let mut m = base();
    m["parameters"][1]["name"] = json!("x");
    assert_has(&error_of(&m, &[("batch", 2)]), &["parameters[1].name", "duplicate name `x`", "inputs[0]"]);
}

#[test]
fn missing_weight_file_and_tensor() {
    let mut m = base();
    m["parameters"][0] = json!({"name": "w", "dtype": "f32", "shape": [4, 3], "file": "nowhere.safetensors"});
    assert_has(&error_of(&m, &[("batch", 2)]), &["parameters[0].file", "nowhere.safetensors", "cannot open"]);
    let fixture = xlac_tests::repo_root().join("fixtures/mlp/weights.safetensors");
    let mut m = base();
    m["parameters"][0] = json!({"name": "w", "dtype": "f32", "shape": [4, 3], "file": fixture, "tensor": "fc9.weight"});
    assert_has(&error_of(&m, &[("batch", 2)]), &["parameters[0].tensor", "tensor `fc9.weight` is not in"]);
}

#[test]
fn weight_shape_or_dtype_differs_from_the_declaration() {
    let fixture = xlac_tests::repo_root().join("fixtures/mlp/weights.safetensors");
    let mut m = base();
    m["parameters"][0] = json!({"name": "w", "dtype": "f32", "shape": [4, 3], "file": fixture, "tensor": "fc1.weight"});
    assert_has(
        &error_of(&m, &[("batch", 2)]),
        &["parameters[0].tensor", "is f32[16,32], but the parameter is declared f32[4,3]"],
    );
    let mut m = base();
    m["parameters"][0] =
        json!({"name": "w", "dtype": "f16", "shape": [16, 32], "file": fixture, "tensor": "fc1.weight"});
    assert_has(&error_of(&m, &[("batch", 2)]), &["is f32[16,32], but the parameter is declared f16[16,32]"]);
}

#[test]
fn bad_transposed_weight_views() {
    let fixture = xlac_tests::repo_root().join("fixtures/mlp/weights.safetensors");
    let view = |shape: Value, perm: Value| {
        let mut m = base();
        m["parameters"][0] = json!({"name": "w", "dtype": "f32", "shape": shape, "file": fixture, "tensor": "fc1.weight", "transpose": perm});
        error_of(&m, &[("batch", 2)])
    };
    assert_has(
        &view(json!([16, 32]), json!([1, 0])),
        &["parameters[0].tensor", "is f32[32,16] read transposed, but the parameter is declared f32[16,32]"],
    );
    assert_has(
        &view(json!([32, 16]), json!([0, 0])),
        &["parameters[0].transpose", "[0, 0] is not a permutation of the 2 dimensions of tensor `fc1.weight`"],
    );
    assert_has(&view(json!([32, 16]), json!([1])), &["parameters[0].transpose", "not a permutation"]);
    assert_has(&view(json!([32, 16]), json!("yes")), &["parameters[0].transpose", "expected a permutation", "\"yes\""]);
    let mut m = base();
    m["parameters"][0]["transpose"] = json!([1, 0]);
    m["parameters"][0]["value"] = json!(0.5);
    m["parameters"][0].as_object_mut().unwrap().remove("file");
    assert_has(&error_of(&m, &[("batch", 2)]), &["parameters[0].transpose", "only a `file` parameter has `transpose`"]);
}

#[test]
fn bad_converted_weight_views() {
    let fixture = xlac_tests::repo_root().join("fixtures/mlp/weights.safetensors");
    let view = |dtype: &str, convert: Value| {
        let mut m = base();
        m["parameters"][0] = json!({"name": "w", "dtype": dtype, "shape": [16, 32], "file": fixture,
            "tensor": "fc1.weight", "convert": convert});
        error_of(&m, &[("batch", 2)])
    };
    assert_has(
        &view("bf16", json!("f16")),
        &["parameters[0].convert", "expected the parameter's dtype `bf16` (a float type), found \"f16\""],
    );
    assert_has(&view("i32", json!("i32")), &["parameters[0].convert", "(a float type), found \"i32\""]);
    assert_has(&view("f16", json!(16)), &["parameters[0].convert", "found 16"]);
    // Integers do not convert.
    let dir = tempfile::tempdir().unwrap();
    let header = br#"{"ids":{"dtype":"I32","shape":[4,3],"data_offsets":[0,48]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0; 48]);
    std::fs::write(dir.path().join("ids.safetensors"), file).unwrap();
    let mut m = base();
    m["parameters"][0] = json!({"name": "w", "dtype": "f32", "shape": [4, 3], "file": dir.path().join("ids.safetensors"),
        "tensor": "ids", "convert": "f32"});
    assert_has(&error_of(&m, &[("batch", 2)]), &["parameters[0].convert", "tensor `ids` is i32: only floats convert"]);
}

/// A weight file rewritten after compiling, its tensor now of another rank:
/// reading the transposed view fails, naming the file and tensor.
#[test]
fn a_weight_file_changed_after_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    std::fs::copy(xlac_tests::repo_root().join("fixtures/mlp/weights.safetensors"), &weights).unwrap();
    let mut m = base();
    m["parameters"][0] = json!({"name": "w", "dtype": "f32", "shape": [32, 16], "file": "w.safetensors", "tensor": "fc1.weight", "transpose": [1, 0]});
    m["inputs"][0]["shape"] = json!(["batch", 32]);
    m["parameters"][1] = json!({"name": "b", "dtype": "f32", "shape": [16], "value": vec![0.5; 16]});
    let path = dir.path().join("model.json");
    std::fs::write(&path, m.to_string()).unwrap();
    let b: BTreeMap<String, u64> = [("batch".to_string(), 2)].into_iter().collect();
    let model = compile_model(&path, &Options { bindings: b.clone(), ..Options::default() }, &BTreeMap::new()).unwrap();
    xlac_driver::eval_model(&model, &BTreeMap::new(), 0).unwrap();
    // The same tensor name, now one-dimensional.
    let header = br#"{"fc1.weight":{"dtype":"F32","shape":[512],"data_offsets":[0,2048]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0; 2048]);
    std::fs::write(&weights, file).unwrap();
    let e = xlac_driver::eval_model(&model, &BTreeMap::new(), 0).unwrap_err().to_string();
    assert_has(
        &e,
        &["w.safetensors", "tensor `fc1.weight`", "[1, 0] is not a permutation of the dimensions of f32[512]"],
    );
}

#[test]
fn truncated_weight_file() {
    // The mlp fixture with its weights cut after 1,000 data bytes: fc1.bias
    // (bytes 0..128) is whole; fc1.weight, fc2.bias and fc2.weight are not.
    let dir = tempfile::tempdir().unwrap();
    let fixture = xlac_tests::repo_root().join("fixtures/mlp");
    let bytes = std::fs::read(fixture.join("weights.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    std::fs::write(dir.path().join("weights.safetensors"), &bytes[..8 + header_len + 1000]).unwrap();
    std::fs::copy(fixture.join("model.json"), dir.path().join("model.json")).unwrap();
    let e = error_at(&dir.path().join("model.json"), &[("batch", 2)]);
    assert_has(
        &e,
        &[
            "parameters[0].tensor: weight file",
            "tensor `fc1.weight`: data range 128..2176 is outside the file's 1000 data bytes (truncated file?)",
            "parameters[2].tensor",
            "tensor `fc2.weight`: data range 2208..3232",
            "parameters[3].tensor",
            "tensor `fc2.bias`: data range 2176..2208",
            "3 errors",
        ],
    );
    assert!(!e.contains("parameters[1]"), "fc1.bias is whole:\n{e}");
}

#[test]
fn shape_products_that_overflow() {
    let mut m = base();
    m["inputs"][0]["shape"] = json!([4294967296u64, 4294967296u64]);
    assert_has(&error_of(&m, &[]), &["inputs[0].shape", "more than 2^53 elements"]);
    let mut m = base();
    m["nodes"][2] = json!({"op": "broadcast_to", "inputs": ["z"], "outputs": ["y"], "attrs": {"shape": [4294967296u64, 4294967296u64, 3]}});
    assert_has(&error_of(&m, &[("batch", 2)]), &["nodes[2].attrs.shape", "more than 2^53 elements"]);
}

#[test]
fn unbound_and_unknown_symbols() {
    assert_has(&error_of(&base(), &[]), &["inputs[0].shape[0]", "symbol `batch` is not bound", "--bind batch=N"]);
    assert_has(&error_of(&base(), &[("batch", 2), ("seq", 3)]), &["binding `seq`", "no such symbol", "batch"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut m = base();
    m["nodes"][0]["op"] = json!("matmull");
    m["nodes"][2]["attrs"] = json!({"alpha": 1});
    m["outputs"] = json!(["y", "missing"]);
    let text = error_of(&m, &[("batch", 2)]);
    assert_has(&text, &["unknown op `matmull`", "undefined value `missing`", "errors"]);
}

/// Replaces one random leaf or container of `v` with an odd value, or drops a key.
fn mutate(v: &mut Value, rng: &mut Rng) {
    let odd = [
        json!(-1),
        json!(0),
        json!(1e300),
        json!(18446744073709551615u64),
        json!("batch"),
        json!(""),
        json!([]),
        json!({}),
        json!(null),
        json!(true),
        json!([-3, 2]),
        json!("f16"),
    ];
    let go_deeper = rng.below(3) != 0;
    match v {
        Value::Array(a) if !a.is_empty() && go_deeper => {
            let i = rng.below(a.len());
            mutate(&mut a[i], rng);
        }
        Value::Object(o) if !o.is_empty() && go_deeper => {
            let keys: Vec<String> = o.keys().cloned().collect();
            let k = keys[rng.below(keys.len())].clone();
            if rng.below(8) == 0 {
                o.remove(&k);
            } else if let Some(child) = o.get_mut(&k) {
                mutate(child, rng);
            }
        }
        _ => *v = odd[rng.below(odd.len())].clone(),
    }
}

#[test]
fn no_input_panics() {
    let mut rng = Rng(0x5EED);
    let dir = tempfile::tempdir().unwrap();
    let mut outcomes = (0, 0);
    for fixture in xlac_tests::fixtures() {
        let original: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("model.json")).unwrap()).unwrap();
        if fixture.join("weights.safetensors").exists() {
            std::fs::copy(fixture.join("weights.safetensors"), dir.path().join("weights.safetensors")).unwrap();
        }
        for round in 0..400 {
            let mut m = original.clone();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut m, &mut rng);
            }
            let path = dir.path().join("model.json");
            std::fs::write(&path, m.to_string()).unwrap();
            let b: BTreeMap<String, u64> = [("batch".to_string(), 2), ("seq".to_string(), 3)].into_iter().collect();
            let result = std::panic::catch_unwind(|| {
                compile_model(&path, &Options { bindings: b.clone(), ..Options::default() }, &BTreeMap::new())
                    .map(|_| ())
            });
            match result {
                Ok(Ok(())) => outcomes.0 += 1,
                Ok(Err(e)) => {
                    assert!(!e.to_string().is_empty());
                    outcomes.1 += 1;
                }
                Err(_) => panic!("{} round {round}: xlac panicked on:\n{m}", fixture.display()),
            }
        }
    }
    println!("mutated models: {} accepted, {} rejected with an error", outcomes.0, outcomes.1);
    assert!(outcomes.1 > outcomes.0, "most mutations should be caught");
}

#[test]
fn bad_donations() {
    // y is f32[batch, 3], x f32[batch, 4]: no buffer of x fits y.
    let mut m = base();
    m["outputs"] = json!([{"value": "y", "donates": "w"}]);
    assert_has(&error_of(&m, &[("batch", 2)]), &["outputs[0].donates", "`w` is not an input of the model (inputs: x)"]);
    let mut m = base();
    m["outputs"] = json!([{"value": "y", "donates": "x"}]);
    assert_has(
        &error_of(&m, &[("batch", 2)]),
        &["outputs[0].donates", "input `x` is f32[2,4] but the output is f32[2,3]", "keeps its type"],
    );
    let mut m = base();
    m["outputs"] = json!([{"value": "y", "donates": 3}]);
    assert_has(&error_of(&m, &[("batch", 2)]), &["outputs[0].donates", "expected the name of an input, found 3"]);
    // Two outputs of x's type donated from the one input.
    let mut m = small_model(4);
    m["nodes"][2]["inputs"] = json!(["z"]);
    m["outputs"] = json!([{"value": "y", "donates": "x"}, {"value": "z", "donates": "x"}]);
    assert_has(
        &error_of(&m, &[("batch", 2)]),
        &["outputs[1].donates", "input `x` is already donated to another output"],
    );
}

#[test]
fn a_donated_input_is_updated_in_place_on_xla() {
    let Some(session) = xlac_tests::shared_session(None) else { return };
    let mut m = small_model(4);
    m["outputs"] = json!([{"value": "y", "donates": "x"}]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    std::fs::write(&path, m.to_string()).unwrap();
    let model = compile_model(
        &path,
        &Options { bindings: BTreeMap::from([("batch".into(), 2)]), ..Options::default() },
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(model.lowered.donations, vec![(0, 0)], "argument 0 (x) becomes output 0");
    assert!(model.lowered.text.contains("tf.aliasing_output = 0"), "{}", model.lowered.text);
    let (device, _) = session.load(&model, &mut |_| {}).unwrap();
    assert_eq!(device.executable().donations(), &[(0, 0)]);
}
