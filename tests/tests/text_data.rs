//! Text data: JSON lines tokenized with a checkpoint's tokenizer.json equal
//! Hugging Face's encoding of them (transformers' PreTrainedTokenizerFast,
//! padded and truncated to 8 tokens, committed by fixtures/train/generate.py);
//! causal-LM labels mask the padding; bad lines are named. Text input
//! (`xlac run --text`): the tiny checkpoints' tokenizers give the ids,
//! masks and type ids of the `tokenizers` package (fixtures/hf/make_tokenizers.py),
//! batched and padded to the longest; a text longer than the model's
//! positions, or a checkpoint without a tokenizer, is an error.

use std::path::{Path, PathBuf};
use xlac_driver::text::{encode, load, Labels};
use xlac_tests::{read_npy_dir, repo_root, run_trials, trial};

fn case() -> PathBuf {
    repo_root().join("fixtures/train/bert_sequence_classification_adamw")
}

fn tokenizes_as_hugging_face() {
    let data = load(&case().join("text/texts.jsonl"), &case().join("checkpoint"), 8, Labels::Field).unwrap();
    let expected = read_npy_dir(&case().join("text"));
    assert_eq!(data.len, 6);
    for name in ["input_ids", "attention_mask", "token_type_ids"] {
        let want = &expected[name];
        assert_eq!(data.arrays[name].shape(), want.shape(), "{name}");
        assert_eq!(data.arrays[name].to_f64_vec(), want.to_f64_vec(), "{name}");
    }
    assert_eq!(data.arrays["labels"].to_f64_vec(), [2.0, 0.0, 1.0, 2.0, 0.0, 1.0]);
}

fn causal_lm_labels_are_the_ids_with_padding_ignored() {
    // A GPT-2 takes only input_ids: the other arrays are left out.
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(repo_root().join("fixtures/hf/gpt2")).unwrap().flatten() {
        if f.path().is_file() {
            std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
        }
    }
    std::fs::copy(case().join("checkpoint/tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let data = load(&case().join("text/texts.jsonl"), dir.path(), 8, Labels::InputIds).unwrap();
    assert_eq!(data.arrays.keys().collect::<Vec<_>>(), ["input_ids", "labels"]);
    let (ids, labels) = (data.arrays["input_ids"].to_f64_vec(), data.arrays["labels"].to_f64_vec());
    let mask = read_npy_dir(&case().join("text"))["attention_mask"].to_f64_vec();
    for ((id, label), m) in ids.iter().zip(&labels).zip(&mask) {
        assert_eq!(*label, if *m == 0.0 { -100.0 } else { *id });
    }
    assert!(mask.contains(&0.0), "some example is padded");
}

fn error(lines: &str, checkpoint: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl");
    std::fs::write(&path, lines).unwrap();
    match load(&path, checkpoint, 8, Labels::Field) {
        Ok(_) => panic!("expected an error for {lines:?}"),
        Err(e) => e.to_string(),
    }
}

fn bad_lines_are_named() {
    let ckpt = case().join("checkpoint");
    let cases = [
        ("{\"text\": \"good\", \"label\": 1}\n{\"label\": 1}\n", "line 2: expected a string field `text`"),
        ("{\"text\": \"good\", \"label\": \"yes\"}\n", "line 1: expected an integer field `label`"),
        ("{\"text\": \"good\", \"label\": 1}\nnot json\n", "line 2: not JSON"),
        ("\n\n", "no lines with a `text` field"),
    ];
    for (lines, want) in cases {
        let e = error(lines, &ckpt);
        assert!(e.contains("data.jsonl") && e.contains(want), "{lines:?}: {e}");
    }
    let bare = without_tokenizer("gpt2");
    let e = error("{\"text\": \"good\", \"label\": 1}\n", bare.path());
    assert!(e.contains("needs the checkpoint's tokenizer.json"), "{e}");
}

/// A copy of fixtures/hf/NAME's files but its tokenizer.json.
fn without_tokenizer(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(repo_root().join("fixtures/hf").join(name)).unwrap().flatten() {
        if f.path().is_file() && f.file_name() != "tokenizer.json" {
            std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
        }
    }
    dir
}

/// fixtures/hf/NAME's texts give the `tokenizers` package's arrays (those its model takes).
fn text_input_tokenizes_as_the_tokenizers_package(name: &str) {
    let dir = repo_root().join("fixtures/hf").join(name);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected/text.json")).unwrap()).unwrap();
    let texts: Vec<String> = serde_json::from_value(expected["texts"].clone()).unwrap();
    let got = encode(&dir, &texts).unwrap();
    assert!(got.contains_key("input_ids"), "{:?}", got.keys());
    for (array, tensor) in &got {
        let want: Vec<Vec<i64>> = serde_json::from_value(expected[array].clone()).unwrap();
        assert_eq!(tensor.shape(), [want.len(), want[0].len()], "{name}: {array}");
        let flat: Vec<f64> = want.iter().flatten().map(|&x| x as f64).collect();
        assert_eq!(tensor.to_f64_vec(), flat, "{name}: {array}");
    }
}

fn text_input_errors_say_what_is_wrong() {
    let bert = repo_root().join("fixtures/hf/bert");
    let long = vec!["short".to_string(), "word ".repeat(100)];
    let e = encode(&bert, &long).unwrap_err().to_string();
    assert!(e.contains("text 2 is") && e.contains("at most 32"), "{e}");
    let bare = without_tokenizer("llama");
    let e = encode(bare.path(), &["hi".to_string()]).unwrap_err().to_string();
    assert!(e.contains("needs the checkpoint's tokenizer.json"), "{e}");
    let e = encode(&bert, &[]).unwrap_err().to_string();
    assert!(e.contains("no text given"), "{e}");
}

fn main() {
    run_trials(vec![
        trial("tokenizes_as_hugging_face", tokenizes_as_hugging_face),
        trial("causal_lm_labels_are_the_ids_with_padding_ignored", causal_lm_labels_are_the_ids_with_padding_ignored),
        trial("bad_lines_are_named", bad_lines_are_named),
        trial("bert::text_input_tokenizes_as_the_tokenizers_package", || {
            text_input_tokenizes_as_the_tokenizers_package("bert")
        }),
        trial("gpt2::text_input_tokenizes_as_the_tokenizers_package", || {
            text_input_tokenizes_as_the_tokenizers_package("gpt2")
        }),
        trial("llama::text_input_tokenizes_as_the_tokenizers_package", || {
            text_input_tokenizes_as_the_tokenizers_package("llama")
        }),
        trial("text_input_errors_say_what_is_wrong", text_input_errors_say_what_is_wrong),
    ])
}
