//! Text data for training: JSON lines with a `text` field (and an integer
//! `label` for classification), tokenized with a checkpoint's
//! `tokenizer.json` as Hugging Face's tokenizers library does (the same crate),
//! padded and truncated to a fixed length.

use crate::train::Dataset;
use crate::Error;
use std::collections::BTreeMap;
use std::path::Path;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use xlac_compiler::train::loss::IGNORE_INDEX;
use xlac_compiler::DType;
use xlac_runtime::HostTensor;

/// What the labels of text data are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Labels {
    /// Each line's integer `label` field (sequence classification).
    Field,
    /// The input ids, padding masked with -100 (a causal LM: the loss shifts them).
    InputIds,
}

/// Reads the JSON lines at `path` and tokenizes every `text` with the
/// Hugging Face checkpoint's `tokenizer.json`, truncated and padded to `seq`
/// tokens (the tokenizer's padding token, else `[PAD]`, `<pad>`, else id 0).
/// The data set holds `labels` and those of `input_ids`, `attention_mask`
/// and `token_type_ids` (i64 `[examples, seq]`) that the checkpoint's model takes.
pub fn load(path: &Path, checkpoint: &Path, seq: usize, labels: Labels) -> Result<Dataset, Error> {
    let bad = |message: String| Error::Data { dir: path.into(), message };
    let tokenizer = checkpoint.join("tokenizer.json");
    if !tokenizer.is_file() {
        return Err(bad(format!(
            "text data needs the checkpoint's tokenizer.json: {} is not there",
            tokenizer.display()
        )));
    }
    let tokenizer = tokenizer.as_path();
    let model = xlac_compiler::frontend::hf::import(checkpoint, &Default::default())?;
    let takes = |name: &str| model["inputs"].as_array().into_iter().flatten().any(|i| i["name"] == name);
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut texts = Vec::new();
    let mut classes = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = |message: String| bad(format!("line {}: {message}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let t = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| at("expected a string field `text`".into()))?;
        texts.push(t.to_string());
        if labels == Labels::Field {
            let l = v
                .get("label")
                .and_then(|l| l.as_i64())
                .ok_or_else(|| at("expected an integer field `label`".into()))?;
            classes.push(l);
        }
    }
    if texts.is_empty() {
        return Err(bad("no lines with a `text` field".into()));
    }
    let mut tok = Tokenizer::from_file(tokenizer).map_err(|e| Error::Data {
        dir: tokenizer.into(),
        message: format!("not a tokenizer.json this version of Hugging Face's tokenizers reads: {e}"),
    })?;
    let (pad_id, pad_token) = pad(&tok);
    tok.with_truncation(Some(TruncationParams { max_length: seq, ..Default::default() }))
        .map_err(|e| bad(format!("cannot truncate to {seq} tokens: {e}")))?;
    tok.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(seq),
        pad_id,
        pad_token,
        ..Default::default()
    }));
    let encodings = tok.encode_batch(texts, true).map_err(|e| bad(format!("cannot tokenize: {e}")))?;
    let n = encodings.len();
    let table = |get: &dyn Fn(&tokenizers::Encoding) -> Vec<i64>| -> Result<HostTensor, Error> {
        let bytes = encodings.iter().flat_map(get).flat_map(i64::to_le_bytes).collect();
        Ok(HostTensor::new(DType::I64, vec![n, seq], bytes)?)
    };
    let widen = |xs: &[u32]| xs.iter().map(|&x| x as i64).collect::<Vec<i64>>();
    let mut arrays = BTreeMap::new();
    arrays.insert("input_ids".to_string(), table(&|e| widen(e.get_ids()))?);
    arrays.insert("attention_mask".to_string(), table(&|e| widen(e.get_attention_mask()))?);
    arrays.insert("token_type_ids".to_string(), table(&|e| widen(e.get_type_ids()))?);
    let labels = match labels {
        Labels::Field => HostTensor::new(DType::I64, vec![n], classes.iter().flat_map(|l| l.to_le_bytes()).collect())?,
        Labels::InputIds => table(&|e| {
            e.get_ids()
                .iter()
                .zip(e.get_attention_mask())
                .map(|(&id, &m)| if m == 0 { IGNORE_INDEX } else { id as i64 })
                .collect()
        })?,
    };
    arrays.retain(|name, _| takes(name));
    arrays.insert("labels".to_string(), labels);
    Ok(Dataset { dir: path.into(), arrays, len: n })
}

/// The padding token: the tokenizer's own, else `[PAD]` or `<pad>`, else id 0.
fn pad(tok: &Tokenizer) -> (u32, String) {
    if let Some(p) = tok.get_padding() {
        return (p.pad_id, p.pad_token.clone());
    }
    ["[PAD]", "<pad>"]
        .iter()
        .find_map(|t| tok.token_to_id(t).map(|id| (id, t.to_string())))
        .unwrap_or_else(|| (0, tok.id_to_token(0).unwrap_or_default()))
}
