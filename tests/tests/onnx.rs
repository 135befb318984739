//! The ONNX front end on the committed fixtures (fixtures/onnx, made by
//! make_fixtures.py): a model whose shape subgraph folds to a symbol, run
//! directly and through `import`, against ONNX's reference evaluator;
//! external data; the tiny BERT exported by torch.onnx.export against the
//! same checkpoint's transformers outputs; and the errors: every
//! unsupported operator listed at once, opsets, a missing input, a file
//! that is not ONNX.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xlac_compiler::frontend::onnx;
use xlac_compiler::pipeline::Options;
use xlac_driver::{compile_model, eval_model, import_onnx};
use xlac_runtime::HostTensor;
use xlac_tests::{compare, read_npy_dir, repo_root, run_trials, shared_session, trial};

fn fixture(name: &str) -> PathBuf {
    repo_root().join("fixtures/onnx").join(name)
}

/// The model's outputs on XLA for `inputs`.
fn run(model: &Path, inputs: &BTreeMap<String, HostTensor>, options: &Options) -> Option<BTreeMap<String, HostTensor>> {
    let session = shared_session(None)?;
    let compiled = compile_model(model, options, inputs).unwrap_or_else(|e| panic!("{e}"));
    Some(session.run(&compiled, inputs, 0).unwrap().into_iter().collect())
}

fn check_mlp(model: &Path, options: &Options) {
    let inputs = read_npy_dir(&fixture("inputs"));
    let expected = read_npy_dir(&fixture("expected"));
    let Some(out) = run(model, &inputs, options) else { return };
    compare("y", &out["y"], &expected["y"], 1e-5, 1e-6).unwrap();
}

fn error_of(path: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let e = import_onnx(path, &dir.path().join("m.json"), &BTreeMap::new()).unwrap_err();
    e.to_string()
}

/// Importing the fixture `file` fails with an error holding every one of `parts`.
fn assert_error_lists(file: &str, parts: &[&str]) {
    let e = error_of(&fixture(file));
    for part in parts {
        assert!(e.contains(part), "missing {part:?} in:\n{e}");
    }
}

fn main() {
    let trials = vec![
        trial("runs_directly_and_matches_the_reference_evaluator", || {
            check_mlp(&fixture("symbolic.onnx"), &Options::default());
        }),
        trial("imports_with_the_batch_a_symbol_and_the_shape_subgraph_folded", || {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("mlp.json");
            let weights = import_onnx(&fixture("symbolic.onnx"), &out, &BTreeMap::new()).unwrap();
            assert_eq!(weights, Some(dir.path().join("mlp.safetensors")));
            let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
            assert_eq!(doc["inputs"][0]["shape"], serde_json::json!(["batch", 16]));
            let ops: Vec<&str> = doc["nodes"].as_array().unwrap().iter().map(|n| n["op"].as_str().unwrap()).collect();
            assert_eq!(
                ops,
                ["matmul", "constant", "add", "relu", "matmul", "reshape", "softmax"],
                "Shape/Gather/Concat fold away; the small bias is inline"
            );
            let reshape = &doc["nodes"][5];
            assert_eq!(reshape["attrs"]["shape"], serde_json::json!(["batch", 2, 4]));
            assert_eq!(doc["outputs"], serde_json::json!(["y"]));
            check_mlp(&out, &Options::default());
        }),
        trial("bind_at_import_fixes_the_batch", || {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("mlp.json");
            let bind = BTreeMap::from([("batch".to_string(), 3)]);
            import_onnx(&fixture("symbolic.onnx"), &out, &bind).unwrap();
            let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
            assert_eq!(doc["inputs"][0]["shape"], serde_json::json!([3, 16]));
            check_mlp(&out, &Options::default());
        }),
        trial("reads_external_data", || {
            check_mlp(&fixture("external.onnx"), &Options::default());
        }),
        trial("bert_export_matches_the_checkpoint", || {
            let bert = repo_root().join("fixtures/hf/bert");
            let inputs = read_npy_dir(&bert.join("inputs"));
            let expected = read_npy_dir(&bert.join("expected"));
            let Some(out) = run(&fixture("bert.onnx"), &inputs, &Options::default()) else { return };
            for name in ["last_hidden_state", "pooler_output"] {
                compare(name, &out[name], &expected[name], 1e-4, 1e-5).unwrap();
            }
        }),
        trial("bert_export_runs_on_the_interpreter", || {
            // The export casts the i64 mask to bool and ands it: the interpreter's cast to bool gave integers.
            let bert = repo_root().join("fixtures/hf/bert");
            let inputs = read_npy_dir(&bert.join("inputs"));
            let expected = read_npy_dir(&bert.join("expected"));
            let model = compile_model(&fixture("bert.onnx"), &Options::default(), &inputs).unwrap();
            let out: BTreeMap<String, HostTensor> = eval_model(&model, &inputs, 0).unwrap().into_iter().collect();
            compare("last_hidden_state", &out["last_hidden_state"], &expected["last_hidden_state"], 1e-4, 1e-5)
                .unwrap();
        }),
        trial("bert_export_imports_with_batch_and_seq_symbols", || {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("bert.json");
            import_onnx(&fixture("bert.onnx"), &out, &BTreeMap::new()).unwrap();
            let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
            for input in doc["inputs"].as_array().unwrap() {
                assert_eq!(input["shape"], serde_json::json!(["batch", "seq"]), "{input}");
            }
            let bert = repo_root().join("fixtures/hf/bert");
            let inputs = read_npy_dir(&bert.join("inputs"));
            let expected = read_npy_dir(&bert.join("expected"));
            let Some(got) = run(&out, &inputs, &Options::default()) else { return };
            compare("last_hidden_state", &got["last_hidden_state"], &expected["last_hidden_state"], 1e-4, 1e-5)
                .unwrap();
        }),
        trial("every_unsupported_operator_is_listed_at_once", || {
            assert_error_lists(
                "unsupported.onnx",
                &[
                    "unsupported.onnx",
                    "node `nonzero` (NonZero): unsupported: operator NonZero (opset 17)",
                    "node `unique` (Unique): unsupported: operator Unique (opset 17)",
                    "node `fused` (FusedGemm): unsupported: operator FusedGemm of domain `com.microsoft`",
                    "3 errors",
                ],
            );
        }),
        trial("an_opset_out_of_range_is_unsupported", || {
            let e = error_of(&fixture("opset5.onnx"));
            assert!(e.contains("opset_import: unsupported: opset 5 of the default domain (xlac reads 6..=28)"), "{e}");
        }),
        trial("a_missing_input_names_the_node", || {
            let e = error_of(&fixture("missing_input.onnx"));
            assert!(
                e.contains("node `add` (Add) (opset 17): input 1 `nothing` is not computed before this node"),
                "{e}"
            );
        }),
        trial("attention_without_head_counts_or_with_a_window_is_refused_by_node", || {
            assert_error_lists(
                "attention_bad.onnx",
                &[
                    "node `no_heads` (Attention) (opset 23): 3-D inputs need q_num_heads and kv_num_heads",
                    "node `window` (Attention) (opset 23): unsupported: Attention with a sliding window",
                    "2 errors",
                ],
            );
        }),
        trial("a_file_that_is_not_onnx_is_an_error", || {
            let dir = tempfile::tempdir().unwrap();
            let bad = dir.path().join("bad.onnx");
            std::fs::write(&bad, b"{\"not\": \"protobuf\"}").unwrap();
            let e = error_of(&bad);
            assert!(e.contains("bad.onnx") && e.contains("not an ONNX model (ModelProto)"), "{e}");
            let missing = error_of(&dir.path().join("absent.onnx"));
            assert!(missing.contains("absent.onnx: cannot read"), "{missing}");
        }),
        trial("a_failed_import_leaves_the_previous_output", || {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("m.json");
            std::fs::write(&out, "previous").unwrap();
            assert!(import_onnx(&fixture("unsupported.onnx"), &out, &BTreeMap::new()).is_err());
            assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous");
        }),
        trial("tensor_files_read_back", || {
            let dir = tempfile::tempdir().unwrap();
            let e = onnx::read_tensor(&dir.path().join("none.pb")).unwrap_err().to_string();
            assert!(e.contains("none.pb: cannot read"), "{e}");
        }),
    ];
    run_trials(trials);
}
