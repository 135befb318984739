//! Text in: a checkpoint's `tokenizer.json` read with Hugging Face's
//! tokenizers library (the same crate), for training data (JSON lines with a
//! `text` field and an integer `label` for classification, padded and
//! truncated to a fixed length) and for `xlac run --text` (a batch padded to
//! its longest text).

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
    let (mut tok, takes) = tokenizer(checkpoint).map_err(|m| bad(format!("text data needs {m}")))?;
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
    let mut arrays = arrays(&encodings, seq)?;
    let labels = match labels {
        Labels::Field => HostTensor::new(DType::I64, vec![n], classes.iter().flat_map(|l| l.to_le_bytes()).collect())?,
        Labels::InputIds => table(&encodings, seq, &|e| {
            e.get_ids()
                .iter()
                .zip(e.get_attention_mask())
                .map(|(&id, &m)| if m == 0 { IGNORE_INDEX } else { id as i64 })
                .collect()
        })?,
    };
    arrays.retain(|name, _| takes.contains(name));
    arrays.insert("labels".to_string(), labels);
    Ok(Dataset { dir: path.into(), arrays, len: n })
}

/// The model inputs for `texts`, tokenized with the checkpoint's
/// `tokenizer.json` and padded to the longest: those of `input_ids`,
/// `attention_mask` and `token_type_ids` (i64 `[texts, tokens]`) the
/// checkpoint's model takes. A text longer than the model's positions
/// (`max_position_embeddings`, `n_positions`) is an error.
pub fn encode(checkpoint: &Path, texts: &[String]) -> Result<BTreeMap<String, HostTensor>, Error> {
    let bad = |message: String| Error::Input { model: checkpoint.into(), name: "--text".into(), message };
    if texts.is_empty() {
        return Err(bad("no text given".into()));
    }
    let (mut tok, takes) = tokenizer(checkpoint).map_err(|m| bad(format!("needs {m}")))?;
    let (pad_id, pad_token) = pad(&tok);
    tok.with_truncation(None).map_err(|e| bad(format!("cannot tokenize: {e}")))?;
    tok.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        pad_id,
        pad_token,
        ..Default::default()
    }));
    let encodings = tok.encode_batch(texts.to_vec(), true).map_err(|e| bad(format!("cannot tokenize: {e}")))?;
    let seq = encodings.first().map_or(0, |e| e.len());
    if let Some(limit) = positions(checkpoint) {
        if seq as u64 > limit {
            let longest = encodings.iter().position(|e| e.get_attention_mask().iter().sum::<u32>() as usize == seq);
            return Err(bad(format!(
                "text {} is {seq} tokens; the model takes at most {limit} (its config's position embeddings)",
                longest.map_or(1, |i| i + 1)
            )));
        }
    }
    let mut arrays = arrays(&encodings, seq)?;
    arrays.retain(|name, _| takes.contains(name));
    Ok(arrays)
}

/// A checkpoint's tokenizer for generation: a prompt to token ids (with the
/// special tokens its template adds, as transformers' tokenizer call does),
/// token ids back to text (special tokens skipped).
pub struct Codec {
    tok: Tokenizer,
    path: std::path::PathBuf,
}

impl Codec {
    /// The checkpoint's tokenizer.json; a clear error when there is none.
    pub fn open(checkpoint: &Path) -> Result<Codec, Error> {
        let path = checkpoint.join("tokenizer.json");
        let bad = |message: String| Error::Input { model: checkpoint.into(), name: "tokenizer.json".into(), message };
        if !path.is_file() {
            return Err(bad(format!("text needs the checkpoint's tokenizer.json: {} is not there", path.display())));
        }
        let tok = Tokenizer::from_file(&path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        Ok(Codec { tok, path })
    }

    /// The checkpoint's tokenizer, `None` when it has no tokenizer.json (ids
    /// only then); a tokenizer.json that does not parse is an error.
    pub fn open_if_present(checkpoint: &Path) -> Result<Option<Codec>, Error> {
        if checkpoint.join("tokenizer.json").is_file() {
            Codec::open(checkpoint).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, Error> {
        let e = self.tok.encode(text, true).map_err(|e| self.error(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(e.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[i64]) -> Result<String, Error> {
        let ids: Vec<u32> = ids.iter().map(|&i| u32::try_from(i).unwrap_or(u32::MAX)).collect();
        self.tok.decode(&ids, true).map_err(|e| self.error(format!("cannot decode {ids:?}: {e}")))
    }

    /// The text `new` adds after `prompt`: the decoding of both past that of
    /// the prompt alone (so a word's leading space, which a tokenizer drops
    /// at the start of a text, stays), else of `new` alone.
    pub fn continuation(&self, prompt: &[i64], new: &[i64]) -> Result<String, Error> {
        let before = self.decode(prompt)?;
        let all = self.decode(&[prompt, new].concat())?;
        match all.strip_prefix(before.as_str()) {
            Some(rest) => Ok(rest.to_string()),
            None => self.decode(new),
        }
    }

    fn error(&self, message: String) -> Error {
        Error::Input { model: self.path.clone(), name: "tokenizer".into(), message }
    }
}

/// Tokens turned into text as they come, each decode over a few tokens
/// only (a generation's stream costs the same at its thousandth token as at
/// its first): a token's text is what the tokens since the last text
/// emitted decode to past what those before it decode to, so a word's
/// leading space stays; a token that ends inside a character (a byte-level
/// BPE splits some) adds nothing until the tokens that complete it.
pub struct TextStream<'c> {
    codec: &'c Codec,
    /// The prompt and the new tokens so far.
    ids: Vec<i64>,
    /// `ids[prefix..read]` is the context the next text is decoded after; `ids[read..]` has no text out yet.
    prefix: usize,
    read: usize,
}

/// How many of the prompt's last tokens give the first new token its context.
const STREAM_CONTEXT: usize = 5;

impl<'c> TextStream<'c> {
    /// A stream of the text that tokens add after `prompt`.
    pub fn new(codec: &'c Codec, prompt: &[i64]) -> TextStream<'c> {
        let read = prompt.len();
        TextStream { codec, ids: prompt.to_vec(), prefix: read.saturating_sub(STREAM_CONTEXT), read }
    }

    /// The text `token` adds; empty while it ends inside a character.
    pub fn push(&mut self, token: i64) -> Result<String, Error> {
        self.ids.push(token);
        let (added, partial) = self.pending()?;
        if partial || added.is_empty() {
            return Ok(String::new());
        }
        (self.prefix, self.read) = (self.read, self.ids.len());
        Ok(added)
    }

    /// The text of the tokens held back at the end (a character they leave
    /// incomplete as U+FFFD, as decoding them all shows it).
    pub fn finish(self) -> Result<String, Error> {
        Ok(self.pending()?.0)
    }

    /// The text `ids[read..]` adds after its context, and whether it ends inside a character.
    fn pending(&self) -> Result<(String, bool), Error> {
        let added = self.codec.continuation(&self.ids[self.prefix..self.read], &self.ids[self.read..])?;
        let partial = added.ends_with(char::REPLACEMENT_CHARACTER);
        Ok((added, partial))
    }
}

/// The checkpoint's tokenizer and the names of its model's inputs; the
/// error says what is missing (to follow "needs" or "text data needs").
fn tokenizer(checkpoint: &Path) -> Result<(Tokenizer, Vec<String>), String> {
    let path = checkpoint.join("tokenizer.json");
    if !path.is_file() {
        return Err(format!("the checkpoint's tokenizer.json: {} is not there", path.display()));
    }
    let tok = Tokenizer::from_file(&path).map_err(|e| {
        format!("a tokenizer.json this version of Hugging Face's tokenizers reads: {}: {e}", path.display())
    })?;
    let model = xlac_compiler::frontend::hf::import(checkpoint, &Default::default())
        .map_err(|e| format!("a checkpoint xlac imports: {e}"))?;
    let inputs = model["inputs"].as_array().into_iter().flatten();
    Ok((tok, inputs.filter_map(|i| i["name"].as_str().map(String::from)).collect()))
}

/// `input_ids`, `attention_mask` and `token_type_ids` of `encodings`, each `[n, seq]` i64.
fn arrays(encodings: &[tokenizers::Encoding], seq: usize) -> Result<BTreeMap<String, HostTensor>, Error> {
    let widened = |get: fn(&tokenizers::Encoding) -> &[u32]| {
        move |e: &tokenizers::Encoding| get(e).iter().map(|&x| x as i64).collect::<Vec<i64>>()
    };
    Ok(BTreeMap::from([
        ("input_ids".to_string(), table(encodings, seq, &widened(|e| e.get_ids()))?),
        ("attention_mask".to_string(), table(encodings, seq, &widened(|e| e.get_attention_mask()))?),
        ("token_type_ids".to_string(), table(encodings, seq, &widened(|e| e.get_type_ids()))?),
    ]))
}

/// One value per token of `encodings`, from `row`: an i64 `[n, seq]` tensor.
fn table(
    encodings: &[tokenizers::Encoding],
    seq: usize,
    row: &dyn Fn(&tokenizers::Encoding) -> Vec<i64>,
) -> Result<HostTensor, Error> {
    let bytes = encodings.iter().flat_map(row).flat_map(i64::to_le_bytes).collect();
    Ok(HostTensor::new(DType::I64, vec![encodings.len(), seq], bytes)?)
}

/// The most positions the checkpoint's model takes, from its config.
pub(crate) fn positions(checkpoint: &Path) -> Option<u64> {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint.join("config.json")).ok()?).ok()?;
    ["max_position_embeddings", "n_positions"].iter().find_map(|k| config[k].as_u64())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each token's text as a stream gives it, the held-back rest appended.
    fn streamed(codec: &Codec, prompt: &[i64], new: &[i64]) -> Vec<String> {
        let mut stream = TextStream::new(codec, prompt);
        let mut pieces: Vec<String> = new.iter().map(|&t| stream.push(t).unwrap()).collect();
        pieces.push(stream.finish().unwrap());
        pieces
    }

    /// A byte-level BPE without merges: every byte its own token, as GPT-2's tokenizer splits what it has no merge for.
    fn byte_level(dir: &Path) -> Codec {
        let mut alphabet: Vec<char> =
            tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
        alphabet.sort();
        let vocab: serde_json::Map<String, serde_json::Value> =
            alphabet.iter().enumerate().map(|(i, c)| (c.to_string(), i.into())).collect();
        let level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let doc = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": level, "post_processor": null, "decoder": level,
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []},
        });
        std::fs::write(dir.join("tokenizer.json"), doc.to_string()).unwrap();
        Codec::open(dir).unwrap()
    }

    #[test]
    fn a_stream_adds_up_to_the_continuation_and_holds_back_split_characters() {
        let dir = tempfile::tempdir().unwrap();
        let codec = byte_level(dir.path());
        let prompt = codec.encode("naïve").unwrap();
        let new = codec.encode(" café 🙂 ok").unwrap();
        let pieces = streamed(&codec, &prompt, &new);
        assert_eq!(pieces.concat(), codec.continuation(&prompt, &new).unwrap());
        assert_eq!(pieces.concat(), " café 🙂 ok");
        // The emoji is four byte tokens: the first three add nothing, the fourth the whole character.
        let emoji = pieces.iter().position(|p| p.contains('🙂')).unwrap();
        assert_eq!(pieces[emoji - 3..emoji], ["", "", ""]);
        assert!(pieces.iter().all(|p| !p.contains(char::REPLACEMENT_CHARACTER)), "{pieces:?}");
    }

    #[test]
    fn a_stream_keeps_leading_spaces_and_gives_an_unfinished_character_at_the_end() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf/llama");
        let codec = Codec::open(&fixture).unwrap();
        let prompt = codec.encode("the quick brown").unwrap();
        let new = codec.encode("fox jumps over the lazy dog").unwrap()[1..].to_vec();
        let pieces = streamed(&codec, &prompt, &new);
        assert_eq!(pieces.concat(), codec.continuation(&prompt, &new).unwrap());
        assert!(pieces[0].starts_with(' '), "{pieces:?}");

        let dir = tempfile::tempdir().unwrap();
        let codec = byte_level(dir.path());
        let cut = &codec.encode("🙂").unwrap()[..2];
        let pieces = streamed(&codec, &codec.encode("a").unwrap(), cut);
        assert_eq!(pieces, ["", "", "\u{FFFD}"]);
    }
}
