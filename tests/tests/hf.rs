//! Hugging Face checkpoints (fixtures/hf/, made by fixtures/hf/generate.py
//! with transformers): BERT (with mean pooling), GPT-2 with its LM head and
//! a sharded Llama with grouped-query attention match transformers' outputs
//! at -O0 and -O2; `import hf` writes a model.json that references the
//! checkpoint's tensors; a new classification head is seeded as transformers
//! initialises one; unsupported configs and layouts name the field or tensor.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xlac_compiler::frontend::hf::{ImportOptions, NewHead, Pooling};
use xlac_compiler::passes::OptLevel;
use xlac_driver::{compile_model, import_checkpoint, Options, Session};
use xlac_tests::{assert_has, compare, read_npy_dir, repo_root, run_trials, shared_session, trial};

fn checkpoint(name: &str) -> PathBuf {
    repo_root().join("fixtures/hf").join(name)
}

fn options(name: &str) -> Options {
    let pooling = if name == "bert" { Pooling::Mean } else { Pooling::None };
    Options { import: ImportOptions { pooling, ..ImportOptions::default() }, ..Options::default() }
}

/// Compiles `path` at `level` with the checkpoint's inputs, runs it and
/// compares every expected output at atol 1e-4.
fn check(session: &Session, path: &Path, name: &str, level: OptLevel) {
    check_with(session, path, name, level, &options(name));
}

fn check_with(session: &Session, path: &Path, name: &str, level: OptLevel, options: &Options) {
    let dir = checkpoint(name);
    let inputs = read_npy_dir(&dir.join("inputs"));
    let model =
        compile_model(path, &Options { level, ..options.clone() }, &inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
    let outputs: BTreeMap<String, _> = session.run(&model, &inputs, 0).unwrap().into_iter().collect();
    let expected = read_npy_dir(&dir.join("expected"));
    assert!(!expected.is_empty());
    for (out, want) in &expected {
        let got = outputs.get(out).unwrap_or_else(|| panic!("{name}: no output `{out}`"));
        compare(&format!("{name} {level:?} {out}"), got, want, 0.0, 1e-4).unwrap();
    }
}

fn matches_transformers(name: &'static str, level: OptLevel) {
    let Some(session) = shared_session(None) else { return };
    check(session, &checkpoint(name), name, level);
}

fn split_over_four_devices_matches_transformers(name: &'static str) {
    use xlac_compiler::passes::ShardPolicy;
    let Some(session) = shared_session(Some(4)) else { return };
    let sharded = Options {
        mesh: Some(xlac_compiler::ir::sharding::Mesh::parse("data=2,model=2").unwrap()),
        policies: vec![ShardPolicy::Data, ShardPolicy::Tensor],
        ..options(name)
    };
    // The tensor policy finds the imported projections (dot with [out, in] weights).
    let inputs = read_npy_dir(&checkpoint(name).join("inputs"));
    let model = compile_model(&checkpoint(name), &sharded, &inputs).unwrap();
    let split = model.module.params().iter().filter(|p| model.module.value(p.value).sharding.is_some()).count();
    assert!(split >= 8, "{name}: only {split} weights split");
    check_with(session, &checkpoint(name), name, OptLevel::O2, &sharded);
}

fn import_writes_a_model_that_references_the_checkpoint(name: &'static str) {
    let Some(session) = shared_session(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{name}.json"));
    import_checkpoint(&checkpoint(name), &out, &options(name).import).unwrap();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    // Parameters point into the checkpoint by tensor name: no weight was copied.
    for p in doc["parameters"].as_array().unwrap() {
        let file = PathBuf::from(p["file"].as_str().unwrap());
        assert!(file.starts_with(checkpoint(name).canonicalize().unwrap()), "{p}");
        assert_eq!(p["tensor"], p["name"]);
    }
    assert_eq!(doc["inputs"][0]["shape"], json!(["batch", "seq"]));
    let written: u64 = std::fs::metadata(&out).unwrap().len();
    assert!(written < 64 * 1024, "{name}: the model.json holds no weights ({written} bytes)");
    check(session, &out, name, OptLevel::O2);
}

/// Copies checkpoint `name` to a temp dir, edits its config, and returns the import error.
fn error_of(name: &str, edit: impl FnOnce(&mut Value)) -> String {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(checkpoint(name)).unwrap().flatten() {
        if f.path().is_file() {
            std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
        }
    }
    let config = dir.path().join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(&config, c.to_string()).unwrap();
    match xlac_compiler::frontend::hf::import(dir.path(), &ImportOptions::default()) {
        Ok(_) => panic!("expected an error for {c}"),
        Err(e) => e.to_string(),
    }
}

fn unsupported_checkpoints_name_the_config_field_or_tensor() {
    let e = error_of("bert", |c| c["architectures"] = json!(["T5Model"]));
    assert_has(&e, &["config.json", "config.architectures", "`T5Model` is not supported", "BertModel"]);
    let e = error_of("bert", |c| c["position_embedding_type"] = json!("relative_key"));
    assert_has(&e, &["config.position_embedding_type", "\"relative_key\" is not supported"]);
    let e = error_of("bert", |c| c["hidden_act"] = json!("mish"));
    assert_has(&e, &["config.hidden_act", "activation `mish` is not supported"]);
    let e = error_of("bert", |c| c["num_attention_heads"] = json!(5));
    assert_has(&e, &["config.num_attention_heads", "5 heads do not divide the hidden size 32"]);
    // A config that disagrees with the tensors: the layout is named.
    let e = error_of("bert", |c| c["intermediate_size"] = json!(48));
    assert_has(&e, &["tensor `encoder.layer.0.intermediate.dense.weight`", "has shape [64, 32]", "[48, 32]"]);
    let e = error_of("gpt2", |c| c["scale_attn_by_inverse_layer_idx"] = json!(true));
    assert_has(&e, &["config.scale_attn_by_inverse_layer_idx", "not supported"]);
    let e = error_of("llama", |c| c["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0}));
    assert_has(&e, &["config.rope_scaling", "only unscaled rotary embeddings"]);
    let e = error_of("llama", |c| c["num_key_value_heads"] = json!(3));
    assert_has(&e, &["config.num_key_value_heads", "3 key/value heads do not divide the 4 attention heads"]);
    let e = error_of("llama", |c| c["vocab_size"] = json!("many"));
    assert_has(&e, &["config.vocab_size", "expected a positive integer"]);
    // A classification config over a checkpoint without the head.
    let e = error_of("bert", |c| c["architectures"] = json!(["BertForSequenceClassification"]));
    assert_has(&e, &["tensor `classifier.weight`", "not in the checkpoint"]);
    // --pooling mean is for BERT.
    let e = xlac_compiler::frontend::hf::import(
        &checkpoint("gpt2"),
        &ImportOptions { pooling: Pooling::Mean, ..ImportOptions::default() },
    )
    .unwrap_err()
    .to_string();
    assert_has(&e, &["--pooling mean is for BERT models"]);
}

fn missing_weights_and_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(checkpoint("bert").join("config.json"), dir.path().join("config.json")).unwrap();
    let e = xlac_compiler::frontend::hf::import(dir.path(), &ImportOptions::default()).unwrap_err().to_string();
    assert_has(&e, &["no model.safetensors or model.safetensors.index.json"]);
    // A shard listed in the index but absent.
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors.index.json", "model-00001-of-00003.safetensors"] {
        std::fs::copy(checkpoint("llama").join(f), dir.path().join(f)).unwrap();
    }
    let e = xlac_compiler::frontend::hf::import(dir.path(), &ImportOptions::default()).unwrap_err().to_string();
    assert_has(&e, &["-of-00003.safetensors", "cannot open: No such file"]);
}

/// `--num-labels`: a base BERT gets a classifier initialised as transformers
/// does (normal, std `initializer_range`; zero bias), reproducibly from the seed.
fn a_new_classification_head_is_seeded() {
    let head = |labels, seed| {
        let options = ImportOptions { head: Some(NewHead { labels, seed }), ..ImportOptions::default() };
        let doc = xlac_compiler::frontend::hf::import(&checkpoint("bert"), &options).unwrap();
        let param = |name: &str| -> Vec<f64> {
            let p = doc["parameters"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap();
            p["value"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
        };
        assert!(doc["outputs"].as_array().unwrap().iter().any(|o| o == "logits"));
        (param("classifier.weight"), param("classifier.bias"))
    };
    let (w, b) = head(64, 1);
    assert_eq!((w.len(), b.len()), (64 * 32, 64));
    assert!(b.iter().all(|&x| x == 0.0));
    let mean = w.iter().sum::<f64>() / w.len() as f64;
    let std = (w.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / w.len() as f64).sqrt();
    // 2048 draws: the standard errors of the mean and of the deviation are 4.4e-4 and 3.1e-4.
    assert!(mean.abs() < 2e-3 && (std - 0.02).abs() < 1.5e-3, "mean {mean}, std {std}");
    assert_eq!(head(64, 1).0, w, "the same seed, the same weights");
    assert_ne!(head(64, 2).0, w);
    // A checkpoint with a head of another size is refused.
    let ckpt = repo_root().join("fixtures/train/bert_sequence_classification_adamw/checkpoint");
    let options = ImportOptions { head: Some(NewHead { labels: 5, seed: 0 }), ..ImportOptions::default() };
    let e = xlac_compiler::frontend::hf::import(&ckpt, &options).unwrap_err().to_string();
    assert_has(&e, &["tensor `classifier.weight`", "has 3 labels, not the 5 asked for"]);
}

fn main() {
    let mut trials = Vec::new();
    for name in ["bert", "gpt2", "llama"] {
        for level in [OptLevel::O0, OptLevel::O2] {
            trials.push(trial(format!("{name}::{level:?}_matches_transformers"), move || {
                matches_transformers(name, level)
            }));
        }
        trials.push(trial(format!("{name}::split_over_four_devices_matches_transformers"), move || {
            split_over_four_devices_matches_transformers(name)
        }));
    }
    for name in ["bert", "llama"] {
        trials.push(trial(format!("{name}::import_writes_a_model_that_references_the_checkpoint"), move || {
            import_writes_a_model_that_references_the_checkpoint(name)
        }));
    }
    trials.push(trial("a_new_classification_head_is_seeded", a_new_classification_head_is_seeded));
    trials.push(trial(
        "unsupported_checkpoints_name_the_config_field_or_tensor",
        unsupported_checkpoints_name_the_config_field_or_tensor,
    ));
    trials.push(trial("missing_weights_and_tensors_are_named", missing_weights_and_tensors_are_named));
    run_trials(trials)
}
