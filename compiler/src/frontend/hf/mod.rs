//! Hugging Face checkpoints: a directory with `config.json` and
//! `model.safetensors` (or sharded `model-0000N-of-0000M.safetensors` with
//! `model.safetensors.index.json`) becomes a model.json document whose
//! parameters reference the checkpoint's tensors by name — nothing is copied.
//! Batch and sequence length are the symbols `batch` and `seq`, bound at
//! compile time.
//!
//! Supported: the BERT family (`BertModel`, `BertForSequenceClassification`;
//! MiniLM-style configs are BERTs),
//! GPT-2 (`GPT2Model`, `GPT2LMHeadModel`) and Llama (`LlamaModel`,
//! `LlamaForCausalLM`). Anything else, or a config option or tensor layout
//! these builders do not implement, is an error naming the config field or tensor.

mod bert;
mod gpt2;
mod llama;

use crate::error::{Diagnostic, Error};
use crate::frontend::json::ModelFile;
use crate::ir::dtype::DType;
use crate::ir::STEP_SEED_INPUT;
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xlac_core::safetensors::read_header;

/// What to build besides the architecture's own outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pooling {
    /// `last_hidden_state` (and the architecture's head outputs).
    #[default]
    None,
    /// Also `sentence_embedding`: the attention-masked mean over the
    /// sequence, L2-normalised (sentence-transformers' mean pooling). BERT only.
    Mean,
}

/// A sequence-classification head to add to a checkpoint that has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewHead {
    /// How many classes.
    pub labels: u64,
    /// Seeds its initial weights: normal with the config's `initializer_range`
    /// (default 0.02) as standard deviation, the bias zero, as transformers initialises it.
    pub seed: u64,
}

/// Dropout, which only training applies.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Dropout {
    /// None: evaluation and inference.
    #[default]
    Off,
    /// The checkpoint's probabilities (`hidden_dropout_prob`, `attn_pdrop`, …), as transformers trains.
    Checkpoint,
    /// This probability wherever the architecture has dropout.
    Rate(f64),
}

/// Import options.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    pub pooling: Pooling,
    /// Dropout as a training step applies it: each dropout site zeroes an
    /// element with its probability `p` and scales the rest by `1/(1-p)`
    /// (`torch.nn.Dropout`), drawing from `random_uniform` on the input
    /// [`STEP_SEED_INPUT`], each site its own stream.
    pub dropout: Dropout,
    /// For a BERT checkpoint: import it as `BertForSequenceClassification`,
    /// with this head where the checkpoint holds none.
    pub head: Option<NewHead>,
    /// For a causal LM (GPT-2, Llama with their LM heads): import a step of
    /// generation with a KV cache instead of the forward pass (see [`KV_CACHE_INPUTS`]).
    pub kv_cache: Option<CacheStep>,
}

/// Which step of generation ([`ImportOptions::kv_cache`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStep {
    /// The prompts: the caches are made (zeros but for the prompts' keys and
    /// values, written from slot 0) rather than read, and the tokens attend
    /// to each other only.
    Prefill,
    /// New tokens after the prompts: they attend to the cache and to each
    /// other, and the caches (inputs, donated) are updated in place.
    Decode,
}

/// The inputs of a causal LM's generation step ([`ImportOptions::kv_cache`]):
/// `input_ids` and `position_ids` (`[batch, seq]`, i64: the new tokens and
/// their positions), `cache_start` (`[]`, i64: the cache slot of the first
/// new token; the new keys and values are written from there) and
/// `cache_mask` (`[batch, cache]`, i64: 1 where a slot holds a token of the
/// sequence once this step has written its own, 0 for left padding and free
/// slots). A new token attends to the slots the mask marks, up to its own.
/// The first output, `logits` (`[batch, vocab]`), is the last new token's;
/// then each layer's `layer{i}.key_cache.next` and `layer{i}.value_cache.next`
/// (`[batch, kv_heads, cache, head_dim]`, f32). A decode step also takes each
/// cache as the input `layer{i}.key_cache` (`.value_cache`), donated to its
/// `.next` output: the cache updated in place.
pub const KV_CACHE_INPUTS: [&str; 4] = ["input_ids", "position_ids", "cache_start", "cache_mask"];

/// What a generation step's cache outputs append to their cache's name
/// (`layer0.key_cache` becomes `layer0.key_cache.next`; see [`KV_CACHE_INPUTS`]).
pub const CACHE_UPDATE: &str = ".next";

/// Int8 weight-only quantization of a checkpoint (`xlac quantize`): a
/// matrix `W`, read as `[out, in]` (GPT-2's `[in, out]` `Conv1D` weights
/// transposed), is stored as `W.qweight`, int8 `[out, in]`, and `W.scales`,
/// f32 `[out]`, with `W ≈ W.qweight · W.scales[:, None]` (symmetric, one scale
/// per output channel, the largest magnitude of the row mapped to 127). The
/// importer reads either form: an int8 matrix is multiplied as int8 values
/// widened to f32 inside the product, then scaled per output, so its weight
/// bytes stay a quarter of f32's on the device.
pub const QWEIGHT: &str = ".qweight";
/// The scales of a quantized matrix: per output channel (`[out]`) for int8
/// (see [`QWEIGHT`]), per group of columns (`[out, groups]`) for int4 (see [`QWEIGHT4`]).
pub const SCALES: &str = ".scales";
/// Int4 weight-only quantization (`xlac quantize --bits 4 --group G`): a
/// matrix `W`, read as `[out, in]`, stored as `W.qweight4`, uint8
/// `[out, in/2]` (two values a byte: byte j of a row holds column j in its
/// low nibble and column j + in/2 in its high one, each value v in −7..=7
/// stored as v + 8), and `W.scales`, f32 `[out, in/G]`: each group of G
/// columns of a row scaled by its largest magnitude over 7. The importer
/// multiplies by each half of the columns apart, widened and scaled inside the product.
pub const QWEIGHT4: &str = ".qweight4";

/// A matrix a model multiplies by, as `xlac quantize` needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    /// The checkpoint's tensor.
    pub tensor: String,
    /// Stored `[in, out]` (GPT-2's `Conv1D`), not `[out, in]` (`nn.Linear`, embeddings).
    pub stored_in_out: bool,
}

/// The matrices of the checkpoint in `dir` that its model multiplies by
/// (linear layers, embedding tables, the LM head), each once.
pub fn matrices(dir: &Path) -> Result<Vec<Matrix>, Error> {
    Ok(build(dir, &ImportOptions::default())?.matrices)
}

/// True when `path` is a directory holding a Hugging Face `config.json`.
pub fn is_checkpoint(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file()
}

/// True when the checkpoint in `dir` holds matrices `xlac quantize` wrote in
/// int8 or int4 (see [`QWEIGHT`], [`QWEIGHT4`]); its errors are those of
/// loading the checkpoint.
pub fn is_quantized(dir: &Path) -> Result<bool, Error> {
    let ckpt = Checkpoint::open(dir)?;
    Ok(ckpt.tensors.keys().any(|t| t.ends_with(QWEIGHT) || t.ends_with(QWEIGHT4)))
}

/// Imports the checkpoint in `dir` as a model.json document; weight files are
/// named relative to `dir`. See [`load`] for the parsed model.
pub fn import(dir: &Path, options: &ImportOptions) -> Result<Json, Error> {
    Ok(build(dir, options)?.document)
}

/// An imported checkpoint: its model document and the matrices it multiplies by.
struct Built {
    document: Json,
    matrices: Vec<Matrix>,
}

fn build(dir: &Path, options: &ImportOptions) -> Result<Built, Error> {
    let ckpt = Checkpoint::open(dir)?;
    let arch = ckpt.architecture()?;
    let mut g = Graph::new(&ckpt, options.dropout);
    if options.kv_cache.is_some() && !matches!(arch.as_str(), "GPT2LMHeadModel" | "LlamaForCausalLM") {
        return Err(ckpt.config_error(
            "architectures",
            format!("generation needs a causal LM with its head (GPT2LMHeadModel, LlamaForCausalLM), not `{arch}`"),
        ));
    }
    g.kv_cache = options.kv_cache;
    match arch.as_str() {
        "BertModel" | "BertForSequenceClassification" => {
            bert::build(&mut g, options, arch == "BertForSequenceClassification" || options.head.is_some())?
        }
        "GPT2Model" | "GPT2LMHeadModel" => gpt2::build(&mut g, arch == "GPT2LMHeadModel")?,
        "LlamaModel" | "LlamaForCausalLM" => llama::build(&mut g, arch == "LlamaForCausalLM")?,
        other => unreachable!("Checkpoint::open refuses architecture `{other}`"),
    }
    if options.pooling == Pooling::Mean && !arch.starts_with("Bert") {
        return Err(ckpt.config_error("architectures", format!("--pooling mean is for BERT models, not `{arch}`")));
    }
    let matrices = std::mem::take(&mut g.matrices);
    Ok(Built { document: g.finish(), matrices })
}

/// The safetensors files of the checkpoint in `dir`, as its loader reads them:
/// `model.safetensors`, or the files of `model.safetensors.index.json`'s weight map.
pub fn weight_files(dir: &Path) -> Result<Vec<String>, Error> {
    let index = dir.join("model.safetensors.index.json");
    if dir.join("model.safetensors").is_file() {
        Ok(vec!["model.safetensors".into()])
    } else if index.is_file() {
        let json = read_json(&index)?;
        let map = json["weight_map"]
            .as_object()
            .ok_or_else(|| invalid(&index, "weight_map", "expected an object of tensor name → file".into()))?;
        let mut files: Vec<String> = Vec::new();
        for (tensor, file) in map {
            let file = file.as_str().filter(|f| !f.contains('/') && !f.contains('\\')).ok_or_else(|| {
                invalid(&index, &format!("weight_map.{tensor}"), "expected a file name in the checkpoint".into())
            })?;
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
        }
        Ok(files)
    } else {
        Err(invalid(
            dir,
            "weights",
            "no model.safetensors or model.safetensors.index.json (PyTorch .bin checkpoints are not read: convert them to safetensors)".into(),
        ))
    }
}

/// Imports the checkpoint in `dir` and parses it as a model file located at
/// `dir/model.json`, so that its weight paths resolve into the checkpoint.
pub fn load(dir: &Path, options: &ImportOptions) -> Result<ModelFile, Error> {
    ModelFile::from_json(import(dir, options)?, &dir.join("model.json"))
}

/// The architectures (`config.json`'s `architectures[0]`) xlac imports.
pub const ARCHITECTURES: [&str; 6] =
    ["BertModel", "BertForSequenceClassification", "GPT2Model", "GPT2LMHeadModel", "LlamaModel", "LlamaForCausalLM"];

/// A checkpoint directory: its config and where each tensor lives.
pub(crate) struct Checkpoint {
    dir: PathBuf,
    config: Map<String, Json>,
    /// Tensor name → (file name relative to `dir`, dtype, shape).
    tensors: BTreeMap<String, (String, DType, Vec<u64>)>,
}

impl Checkpoint {
    fn open(dir: &Path) -> Result<Checkpoint, Error> {
        let config_path = dir.join("config.json");
        let Json::Object(config) = read_json(&config_path)? else {
            return Err(invalid(&config_path, "$", "expected a JSON object".into()));
        };
        // The architecture first: an unsupported one says so, whatever its weights.
        let mut ckpt = Checkpoint { dir: dir.into(), config, tensors: BTreeMap::new() };
        let arch = ckpt.architecture()?;
        if !ARCHITECTURES.contains(&arch.as_str()) {
            return Err(ckpt.config_error(
                "architectures",
                format!("architecture `{arch}` is not supported (supported: {})", ARCHITECTURES.join(", ")),
            ));
        }
        let files = weight_files(dir)?;
        let mut tensors = BTreeMap::new();
        for file in files {
            let path = dir.join(&file);
            let header = read_header(&path).map_err(|e| invalid(&path, "header", e))?;
            for name in header.names() {
                let (dtype, shape, _) =
                    header.tensor(name).map_err(|e| invalid(&path, &format!("tensor `{name}`"), e))?;
                tensors.insert(name.to_string(), (file.clone(), dtype, shape.to_vec()));
            }
        }
        ckpt.tensors = tensors;
        Ok(ckpt)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    fn config_error(&self, field: &str, message: String) -> Error {
        invalid(&self.config_path(), &format!("config.{field}"), message)
    }

    fn tensor_error(&self, name: &str, message: String) -> Error {
        invalid(&self.dir, &format!("tensor `{name}`"), message)
    }

    fn architecture(&self) -> Result<String, Error> {
        match self.config.get("architectures").and_then(|a| a.get(0)).and_then(Json::as_str) {
            Some(a) => Ok(a.to_string()),
            None => match self.config.get("model_type").and_then(Json::as_str) {
                Some("bert") => Ok("BertModel".into()),
                Some("gpt2") => Ok("GPT2Model".into()),
                Some("llama") => Ok("LlamaModel".into()),
                _ => Err(self
                    .config_error("architectures", "missing, and model_type does not name a supported family".into())),
            },
        }
    }

    /// A required positive integer field.
    fn usize(&self, field: &str) -> Result<u64, Error> {
        self.config
            .get(field)
            .and_then(Json::as_u64)
            .filter(|&n| n > 0)
            .ok_or_else(|| self.config_error(field, "expected a positive integer".into()))
    }

    /// An optional positive integer field.
    fn usize_or(&self, field: &str, default: u64) -> Result<u64, Error> {
        match self.config.get(field) {
            None | Some(Json::Null) => Ok(default),
            Some(_) => self.usize(field),
        }
    }

    fn f64_or(&self, field: &str, default: f64) -> Result<f64, Error> {
        match self.config.get(field) {
            None | Some(Json::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.config_error(field, format!("expected a number, found {v}"))),
        }
    }

    fn str_or<'a>(&'a self, field: &str, default: &'a str) -> Result<&'a str, Error> {
        match self.config.get(field) {
            None | Some(Json::Null) => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.config_error(field, format!("expected a string, found {v}"))),
        }
    }

    fn bool_or(&self, field: &str, default: bool) -> Result<bool, Error> {
        match self.config.get(field) {
            None | Some(Json::Null) => Ok(default),
            Some(v) => {
                v.as_bool().ok_or_else(|| self.config_error(field, format!("expected true or false, found {v}")))
            }
        }
    }

    /// Requires `field`, when present, to be one of `allowed` (as JSON).
    fn only(&self, field: &str, allowed: &[Json], what: &str) -> Result<(), Error> {
        match self.config.get(field) {
            Some(v) if !allowed.contains(v) => Err(self.config_error(field, format!("{v} is not supported ({what})"))),
            _ => Ok(()),
        }
    }

    /// Whether the checkpoint holds the tensor `name`, as stored or quantized (see [`QWEIGHT`], [`QWEIGHT4`]).
    fn has(&self, tensor: &str) -> bool {
        [tensor.to_string(), format!("{tensor}{QWEIGHT}"), format!("{tensor}{QWEIGHT4}")]
            .iter()
            .any(|t| self.tensors.contains_key(t))
    }

    /// Dimension `axis` of the checkpoint's `[out, in]` tensor `name` (a
    /// head's size, read from its weight, or from its quantized values).
    fn tensor_dim(&self, name: &str, axis: usize) -> Result<u64, Error> {
        let (_, _, shape) = self
            .tensors
            .get(name)
            .or_else(|| self.tensors.get(&format!("{name}{QWEIGHT}")))
            .or_else(|| self.tensors.get(&format!("{name}{QWEIGHT4}")).filter(|_| axis == 0))
            .ok_or_else(|| self.tensor_error(name, "not in the checkpoint".into()))?;
        shape
            .get(axis)
            .copied()
            .ok_or_else(|| self.tensor_error(name, format!("expected at least {} dimensions", axis + 1)))
    }

    /// The prefix under which the base model's tensors are stored: `""` for a
    /// checkpoint of the base model, e.g. `"bert."` for one saved from a head model.
    fn prefix(&self, probe: &str, candidates: &[&'static str]) -> Result<&'static str, Error> {
        candidates.iter().copied().find(|p| self.has(&format!("{p}{probe}"))).ok_or_else(|| {
            self.tensor_error(
                probe,
                format!(
                    "not in the checkpoint (looked for {}; {} tensors there)",
                    candidates.iter().map(|p| format!("`{p}{probe}`")).collect::<Vec<_>>().join(", "),
                    self.tensors.len()
                ),
            )
        })
    }
}

/// Reads and parses the JSON file `path`.
fn read_json(path: &Path) -> Result<Json, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|e| Error::json(path, &e))
}

fn invalid(path: &Path, location: &str, message: String) -> Error {
    Error::Invalid { origin: path.display().to_string(), diagnostics: vec![Diagnostic::new(location, message)] }
}

/// A model.json document being written: inputs, parameters, nodes, outputs.
pub(crate) struct Graph<'a> {
    ckpt: &'a Checkpoint,
    inputs: Vec<Json>,
    params: Vec<Json>,
    nodes: Vec<Json>,
    outputs: Vec<Json>,
    /// Parameters already declared, by tensor name → the f32 value to use.
    declared: BTreeMap<String, String>,
    dropout: Dropout,
    /// Dropout sites so far: the next one's random stream.
    dropout_sites: u64,
    /// A generation step: attention makes, or reads and extends, each layer's KV cache.
    kv_cache: Option<CacheStep>,
    /// A prefill's additive padding mask, once built.
    prompt_mask: Option<String>,
    /// A decode step's additive masks (over the cache, over the new tokens), once built.
    cache_masks: Option<(String, String)>,
    /// The caches made or updated: (value, the input it is donated from, in a decode step).
    cache_outputs: Vec<(String, Option<String>)>,
    /// The matrices the model multiplies by, as declared.
    matrices: Vec<Matrix>,
}

/// What the masks of a generation step are made of ([`Graph::step_inputs`]).
struct StepInputs {
    /// Bool `[batch, seq]`: the new tokens that are not padding.
    real: String,
    /// The additive mask's values: 0, and the lowest f32.
    open: String,
    lowest: String,
    /// An i64 0: a `cache_mask` slot without a token.
    none: String,
}

/// A matrix as the checkpoint stores it ([`Graph::stored`]).
enum Stored {
    /// Floats, as an f32 value.
    Float(String),
    /// Int8 values, scaled after the product.
    Int8(Int8),
    /// Int4 values widened and scaled, as two f32 halves of its columns
    /// (`[out, in/2]` each) that XLA computes inside the products reading them.
    Int4(String, String),
}

/// A matrix stored in int8 (`xlac quantize`): its values, them cast to f32, its per-row scales.
struct Int8 {
    values: String,
    as_f32: String,
    scales: String,
}

impl<'a> Graph<'a> {
    fn new(ckpt: &'a Checkpoint, dropout: Dropout) -> Self {
        Graph {
            ckpt,
            inputs: Vec::new(),
            params: Vec::new(),
            nodes: Vec::new(),
            outputs: Vec::new(),
            declared: BTreeMap::new(),
            dropout,
            dropout_sites: 0,
            kv_cache: None,
            prompt_mask: None,
            cache_masks: None,
            cache_outputs: Vec::new(),
            matrices: Vec::new(),
        }
    }

    /// The dropout probability of a site whose config field is the first
    /// present of `fields` (0 when none is, and when not training).
    fn dropout_rate(&self, fields: &[&str]) -> Result<f64, Error> {
        let p = match self.dropout {
            Dropout::Off => return Ok(0.0),
            Dropout::Rate(p) => p,
            Dropout::Checkpoint => {
                match fields.iter().find(|f| self.ckpt.config.get(**f).is_some_and(|v| !v.is_null())) {
                    Some(f) => {
                        let p = self.ckpt.f64_or(f, 0.0)?;
                        if !(0.0..1.0).contains(&p) {
                            return Err(self
                                .ckpt
                                .config_error(f, format!("a dropout probability in [0, 1), found {p}")));
                        }
                        p
                    }
                    None => 0.0,
                }
            }
        };
        Ok(p)
    }

    /// `x` (of `shape`) with each element zeroed with probability `p` and the
    /// others scaled by `1/(1-p)`; `x` itself when `p` is 0.
    fn dropout(&mut self, out: &str, x: &str, shape: Json, p: f64) -> String {
        if p == 0.0 {
            return x.to_string();
        }
        if self.dropout_sites == 0 {
            self.inputs.push(json!({"name": STEP_SEED_INPUT, "dtype": "i64", "shape": []}));
        }
        let attrs = json!({"dtype": "f32", "shape": shape, "stream": self.dropout_sites});
        self.dropout_sites += 1;
        let u = self.op(&format!("{out}.uniform"), "random_uniform", &[STEP_SEED_INPUT], attrs);
        let rate = self.scalar(&format!("{out}.p"), p);
        let keep = self.op(&format!("{out}.keep"), "compare", &[&u, &rate], json!({"dir": "ge"}));
        let scale = self.scalar(&format!("{out}.scale"), 1.0 / (1.0 - p));
        let scaled = self.op(&format!("{out}.scaled"), "mul", &[x, &scale], json!({}));
        let zero = self.scalar(&format!("{out}.zero"), 0.0);
        self.op(out, "where", &[&keep, &scaled, &zero], json!({}))
    }

    /// Attention of `[batch, heads, seq, d]` queries, keys and values with an
    /// optional additive `mask` (broadcastable to the scores) and a causal
    /// mask, its probabilities dropped out with probability `p`: the fused op
    /// when `p` is 0, else spelt out (scores, softmax, dropout, values).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        out: &str,
        q: &str,
        k: &str,
        v: &str,
        mask: Option<&str>,
        causal: bool,
        heads: u64,
        d: u64,
        p: f64,
    ) -> String {
        if p == 0.0 {
            let mut operands = vec![q, k, v];
            operands.extend(mask);
            let attrs = if causal { json!({"causal": true}) } else { json!({}) };
            return self.op(out, "scaled_dot_product_attention", &operands, attrs);
        }
        let qk = json!({"lhs_batch": [0, 1], "rhs_batch": [0, 1], "lhs_contract": [3], "rhs_contract": [3]});
        let s = self.op(&format!("{out}.qk"), "dot", &[q, k], qk);
        let scale = self.scalar(&format!("{out}.scale"), 1.0 / (d as f64).sqrt());
        let mut s = self.op(&format!("{out}.scores"), "mul", &[&s, &scale], json!({}));
        if let Some(m) = mask {
            s = self.op(&format!("{out}.masked"), "add", &[&s, m], json!({}));
        }
        if causal {
            let row = self.op(
                &format!("{out}.row"),
                "iota",
                &[],
                json!({"dtype": "i64", "shape": ["seq", "seq"], "axis": 0}),
            );
            let col = self.op(
                &format!("{out}.col"),
                "iota",
                &[],
                json!({"dtype": "i64", "shape": ["seq", "seq"], "axis": 1}),
            );
            let seen = self.op(&format!("{out}.seen"), "compare", &[&col, &row], json!({"dir": "le"}));
            let lowest = self.scalar(&format!("{out}.lowest"), f32::MIN as f64);
            s = self.op(&format!("{out}.causal"), "where", &[&seen, &s, &lowest], json!({}));
        }
        let probs = self.op(&format!("{out}.probs"), "softmax", &[&s], json!({"axis": -1}));
        let probs = self.dropout(&format!("{out}.probs.dropout"), &probs, json!(["batch", heads, "seq", "seq"]), p);
        let pv = json!({"lhs_batch": [0, 1], "rhs_batch": [0, 1], "lhs_contract": [3], "rhs_contract": [2]});
        self.op(out, "dot", &[&probs, v], pv)
    }

    /// Causal self-attention of `[batch, heads, seq, d]` queries over
    /// `[batch, kv_heads, seq, d]` keys and values (each key/value head serving
    /// `heads / kv_heads` query heads); in a generation step, over the
    /// layer's cache as well ([`Graph::cached_attention`]).
    #[allow(clippy::too_many_arguments)]
    fn causal_attention(
        &mut self,
        out: &str,
        q: &str,
        k: &str,
        v: &str,
        heads: u64,
        kv_heads: u64,
        d: u64,
        p: f64,
    ) -> String {
        match self.kv_cache {
            Some(CacheStep::Decode) => return self.cached_attention(out, q, k, v, heads, kv_heads, d),
            Some(CacheStep::Prefill) => return self.prefill_attention(out, q, k, v, heads, kv_heads, d),
            None => {}
        }
        let k = self.repeat_kv(&format!("{out}.k.repeated"), k, kv_heads, heads / kv_heads, d);
        let v = self.repeat_kv(&format!("{out}.v.repeated"), v, kv_heads, heads / kv_heads, d);
        self.attention(out, q, &k, &v, None, true, heads, d, p)
    }

    /// Attention of a generation step: the new tokens' queries over the
    /// layer's cache (the tokens before `cache_start`) and over the new keys
    /// and values themselves (causally), as one softmax spelt out over both
    /// parts. The cache is only read, and written once, by the update that is
    /// the step's output: XLA updates it in place and never copies it (an
    /// attention that read the updated cache would make XLA materialise a
    /// second one). Query heads are grouped by the key/value head they read,
    /// so grouped-query attention reads the cache without repeating it.
    #[allow(clippy::too_many_arguments)]
    fn cached_attention(&mut self, out: &str, q: &str, k: &str, v: &str, heads: u64, kv: u64, d: u64) -> String {
        let layer = out.split('.').next().unwrap_or(out);
        let (old_mask, new_mask) = self.cache_masks();
        let (key_cache, value_cache) = (format!("{layer}.key_cache"), format!("{layer}.value_cache"));
        for cache in [&key_cache, &value_cache] {
            self.inputs.push(json!({"name": cache, "dtype": "f32", "shape": ["batch", kv, "cache", d]}));
        }
        let groups = heads / kv;
        let grouped = json!({"shape": ["batch", kv, groups, "seq", d]});
        let q = self.op(&format!("{out}.q.grouped"), "reshape", &[q], grouped);
        let scale = self.scalar(&format!("{out}.scale"), 1.0 / (d as f64).sqrt());
        // Over the cache, the keys are the left operand (XLA's CPU product then reads the
        // cache as stored instead of transposing it); the scores come out [b, kv, cache, g, seq].
        // In f32 under a mixed policy too ("accumulate" keeps the precision pass off them): the
        // cache is f32, and a bf16 copy of it every step would cost more than the product saves.
        let kq = json!({"lhs_batch": [0, 1], "rhs_batch": [0, 1], "lhs_contract": [3], "rhs_contract": [4], "accumulate": "f32"});
        let old = self.op(&format!("{out}.old.kq"), "dot", &[&key_cache, &q], kq);
        let old = self.op(&format!("{out}.old.qk"), "transpose", &[&old], json!({"perm": [0, 1, 3, 4, 2]}));
        let qk = json!({"lhs_batch": [0, 1], "rhs_batch": [0, 1], "lhs_contract": [4], "rhs_contract": [3], "accumulate": "f32"});
        let new = self.op(&format!("{out}.new.qk"), "dot", &[&q, k], qk);
        let pv = json!({"lhs_batch": [0, 1], "rhs_batch": [0, 1], "lhs_contract": [4], "rhs_contract": [2], "accumulate": "f32"});
        let mut parts = Vec::new();
        for (part, s, values, mask) in [("old", old, &value_cache as &str, &old_mask), ("new", new, v, &new_mask)] {
            let s = self.op(&format!("{out}.{part}.scores"), "mul", &[&s, &scale], json!({}));
            let s = self.op(&format!("{out}.{part}.masked"), "add", &[&s, mask], json!({}));
            let m = self.op(&format!("{out}.{part}.max"), "reduce_max", &[&s], json!({"axes": [4], "keepdims": true}));
            parts.push((part, s, m, values));
        }
        let m = self.op(&format!("{out}.max"), "max", &[&parts[0].2, &parts[1].2], json!({}));
        let (mut total, mut weighted) = (Vec::new(), Vec::new());
        for (part, s, _, values) in parts {
            let shifted = self.op(&format!("{out}.{part}.shifted"), "sub", &[&s, &m], json!({}));
            let e = self.op(&format!("{out}.{part}.exp"), "exp", &[&shifted], json!({}));
            let sum = json!({"axes": [4], "keepdims": true});
            total.push(self.op(&format!("{out}.{part}.sum"), "reduce_sum", &[&e], sum));
            weighted.push(self.op(&format!("{out}.{part}.pv"), "dot", &[&e, values], pv.clone()));
        }
        let z = self.op(&format!("{out}.sum"), "add", &[&total[0], &total[1]], json!({}));
        let o = self.op(&format!("{out}.pv"), "add", &[&weighted[0], &weighted[1]], json!({}));
        let o = self.op(&format!("{out}.normalized"), "div", &[&o, &z], json!({}));
        // The caches are written after they were read: the new entries wait for the
        // attention's result through a -0 added to them (bit for bit the same values), so
        // XLA sees the reads ordered before the in-place update and copies neither cache.
        let total = self.op(&format!("{out}.total"), "reduce_sum", &[&o], json!({}));
        let magnitude = self.op(&format!("{out}.total.abs"), "abs", &[&total], json!({}));
        let zero = self.scalar(&format!("{out}.zero"), 0.0);
        let after = self.op(&format!("{out}.after.zero"), "mul", &[&magnitude, &zero], json!({}));
        let after = self.op(&format!("{out}.after"), "neg", &[&after], json!({}));
        for (cache, new) in [(&key_cache, k), (&value_cache, v)] {
            let entries = self.op(&format!("{cache}.entries"), "add", &[new, &after], json!({}));
            let next = format!("{cache}{CACHE_UPDATE}");
            self.op(&next, "dynamic_update_slice", &[cache, &entries, "cache_start"], json!({"axis": 2}));
            self.cache_outputs.push((next, Some(cache.clone())));
        }
        self.op(out, "reshape", &[&o], json!({"shape": ["batch", heads, "seq", d]}))
    }

    /// Attention of a prefill: the prompts' tokens attend causally to each
    /// other, padding masked; their keys and values become the caches (zeros
    /// from the prompts' length on).
    #[allow(clippy::too_many_arguments)]
    fn prefill_attention(&mut self, out: &str, q: &str, k: &str, v: &str, heads: u64, kv: u64, d: u64) -> String {
        let layer = out.split('.').next().unwrap_or(out);
        let mask = self.prompt_mask();
        let zero = self.scalar(&format!("{layer}.cache.zero"), 0.0);
        let start = self.op(&format!("{layer}.cache.start"), "constant", &[], json!({"dtype": "i64", "value": 0}));
        for (cache, new) in [(format!("{layer}.key_cache"), k), (format!("{layer}.value_cache"), v)] {
            let shape = json!({"shape": ["batch", kv, "cache", d]});
            let empty = self.op(&format!("{cache}.empty"), "broadcast_to", &[&zero], shape);
            let next = format!("{cache}{CACHE_UPDATE}");
            self.op(&next, "dynamic_update_slice", &[&empty, new, &start], json!({"axis": 2}));
            self.cache_outputs.push((next, None));
        }
        let k = self.repeat_kv(&format!("{out}.k.repeated"), k, kv, heads / kv, d);
        let v = self.repeat_kv(&format!("{out}.v.repeated"), v, kv, heads / kv, d);
        self.attention(out, q, &k, &v, Some(&mask), true, heads, d, 0.0)
    }

    /// The additive padding mask of a prefill, `[batch, 1, 1, seq]`: 0 for the
    /// prompts' tokens, the lowest f32 for their left padding (`cache_mask`'s
    /// first `seq` slots). Built once; its inputs (`cache_start`, `cache_mask`)
    /// are declared as in a decode step.
    fn prompt_mask(&mut self) -> String {
        if let Some(m) = &self.prompt_mask {
            return m.clone();
        }
        let m = self.step_inputs();
        let real = self.op("mask.prompt.4d", "reshape", &[&m.real], json!({"shape": ["batch", 1, 1, "seq"]}));
        let mask = self.op("mask.prompt", "where", &[&real, &m.open, &m.lowest], json!({}));
        self.prompt_mask = Some(mask.clone());
        mask
    }

    /// Declares a generation step's `cache_start` and `cache_mask` inputs;
    /// returns which new tokens are not padding (their slots of `cache_mask`)
    /// and the constants the masks are made of.
    fn step_inputs(&mut self) -> StepInputs {
        for (name, shape) in [("cache_start", json!([])), ("cache_mask", json!(["batch", "cache"]))] {
            self.inputs.push(json!({"name": name, "dtype": "i64", "shape": shape}));
        }
        let (open, lowest) = (self.scalar("mask.open", 0.0), self.scalar("mask.lowest", f32::MIN as f64));
        let none = self.op("mask.none", "constant", &[], json!({"dtype": "i64", "value": 0}));
        let slots = json!({"axis": 1, "size": "seq"});
        let held = self.op("mask.new.held", "dynamic_slice", &["cache_mask", "cache_start"], slots);
        let real = self.op("mask.new.real", "compare", &[&held, &none], json!({"dir": "ne"}));
        StepInputs { real, open, lowest, none }
    }

    /// The additive masks of a generation step's attention, for scores
    /// `[batch, kv_heads, groups, seq, ·]`: 0 where a new token may look, the
    /// lowest f32 elsewhere (as transformers masks). Over the cache
    /// (`[batch, 1, 1, 1, cache]`): the slots before `cache_start` that hold a
    /// token of the sequence. Over the new tokens (`[batch, 1, 1, seq, seq]`):
    /// those up to its own that are not padding. Built once; their inputs
    /// (`cache_start`, `cache_mask`) come before the caches.
    fn cache_masks(&mut self) -> (String, String) {
        if let Some(m) = &self.cache_masks {
            return m.clone();
        }
        let StepInputs { real: new, open, lowest, none } = self.step_inputs();
        let slot = self.op("mask.slot", "iota", &[], json!({"dtype": "i64", "shape": [1, "cache"], "axis": 1}));
        let before = self.op("mask.before", "compare", &[&slot, "cache_start"], json!({"dir": "lt"}));
        let held = self.op("mask.held", "compare", &["cache_mask", &none], json!({"dir": "ne"}));
        let seen = self.op("mask.cache.seen", "and", &[&before, &held], json!({}));
        let seen = self.op("mask.cache.5d", "reshape", &[&seen], json!({"shape": ["batch", 1, 1, 1, "cache"]}));
        let old = self.op("mask.cache", "where", &[&seen, &open, &lowest], json!({}));
        let new = self.op("mask.new.real.5d", "reshape", &[&new], json!({"shape": ["batch", 1, 1, 1, "seq"]}));
        let row = self.op("mask.new.row", "iota", &[], json!({"dtype": "i64", "shape": ["seq", "seq"], "axis": 0}));
        let col = self.op("mask.new.col", "iota", &[], json!({"dtype": "i64", "shape": ["seq", "seq"], "axis": 1}));
        let causal = self.op("mask.new.causal", "compare", &[&col, &row], json!({"dir": "le"}));
        let seen = self.op("mask.new.seen", "and", &[&causal, &new], json!({}));
        let new = self.op("mask.new", "where", &[&seen, &open, &lowest], json!({}));
        self.cache_masks = Some((old.clone(), new.clone()));
        (old, new)
    }

    /// `[batch, kv, seq, d]` → `[batch, kv·groups, seq, d]`, query head j reading key/value head j / groups.
    fn repeat_kv(&mut self, out: &str, x: &str, kv: u64, groups: u64, d: u64) -> String {
        if groups == 1 {
            return x.to_string();
        }
        let r = self.op(&format!("{out}.expand"), "reshape", &[x], json!({"shape": ["batch", kv, 1, "seq", d]}));
        let shape = json!(["batch", kv, groups, "seq", d]);
        let b = self.op(&format!("{out}.broadcast"), "broadcast_to", &[&r], json!({ "shape": shape }));
        self.op(out, "reshape", &[&b], json!({"shape": ["batch", kv * groups, "seq", d]}))
    }

    /// The hidden states a causal LM's head reads: all of `x` (`[batch, seq,
    /// width]`), or in a generation step the last new token's (`[batch, 1, width]`).
    fn head_input(&mut self, x: &str) -> String {
        if self.kv_cache.is_none() {
            return x.to_string();
        }
        self.op("last_token", "slice", &[x], json!({"starts": [-1], "ends": [i64::MAX], "axes": [1]}))
    }

    /// The LM head's logits `x·tableᵀ` (`[batch, seq, vocab]`), and the final
    /// norm's output `last` as `last_hidden_state` unless this is a
    /// generation step, whose only outputs are `[batch, vocab]` logits and the caches.
    /// `head` is the LM head's table (`[vocab, width]`) when the model has one.
    fn lm_outputs(&mut self, last: &str, head: Option<(&str, [u64; 2])>) -> Result<(), Error> {
        if self.kv_cache.is_none() {
            self.output(last);
        }
        let Some((table, [vocab, width])) = head else { return Ok(()) };
        self.matrix(table, false);
        if self.kv_cache.is_none() {
            let l = self.times_transposed("logits", last, 3, table, [vocab, width])?;
            self.output(&l);
            return Ok(());
        }
        // The table as the left operand: XLA's CPU matrix-vector product reads it as
        // stored, where `last·tableᵀ` made it transpose the whole table every step.
        let dims = json!({"lhs_contract": [1], "rhs_contract": [2], "accumulate": "f32"});
        let l = match self.stored(table, [vocab, width])? {
            Stored::Int8(q) => {
                let l = self.op("logits.by_vocab.int8", "dot", &[&q.as_f32, last], dims);
                let s = self.op("logits.scales", "reshape", &[&q.scales], json!({"shape": [vocab, 1, 1]}));
                self.op("logits.by_vocab", "mul", &[&l, &s], json!({}))
            }
            Stored::Float(w) => self.op("logits.by_vocab", "dot", &[&w, last], dims),
            Stored::Int4(low, high) => {
                let parts = self.halves("last.half", last, 2, width);
                let l = self.op("logits.by_vocab.low", "dot", &[&low, &parts.0], dims.clone());
                let h = self.op("logits.by_vocab.high", "dot", &[&high, &parts.1], dims);
                self.op("logits.by_vocab", "add", &[&l, &h], json!({}))
            }
        };
        let l = self.op("logits.by_vocab.2d", "reshape", &[&l], json!({"shape": [vocab, "batch"]}));
        let l = self.op("logits", "transpose", &[&l], json!({"perm": [1, 0]}));
        self.output(&l);
        Ok(())
    }

    /// Declares an `i64` input of shape `[batch, seq]`.
    fn token_input(&mut self, name: &str) -> String {
        self.inputs.push(json!({"name": name, "dtype": "i64", "shape": ["batch", "seq"]}));
        name.to_string()
    }

    /// The checkpoint tensor `name` as a parameter, checked to have `shape`;
    /// a bf16/f16 tensor is cast to f32 (the computation type).
    fn weight(&mut self, name: &str, shape: &[u64]) -> Result<String, Error> {
        if let Some(v) = self.declared.get(name) {
            return Ok(v.clone());
        }
        let value = match self.declare(name, shape, |d| d.is_float(), "a float weight")? {
            DType::F32 => name.to_string(),
            _ => self.op(&format!("{name}.f32"), "cast", &[name], json!({"to": "f32"})),
        };
        self.declared.insert(name.to_string(), value.clone());
        Ok(value)
    }

    /// Declares the checkpoint tensor `name` as a parameter, checked to have
    /// `shape` and a dtype `ok` accepts (`expected` says which); returns its dtype.
    fn declare(&mut self, name: &str, shape: &[u64], ok: fn(DType) -> bool, expected: &str) -> Result<DType, Error> {
        let (file, dtype, actual) = self
            .ckpt
            .tensors
            .get(name)
            .ok_or_else(|| self.ckpt.tensor_error(name, "is not in the checkpoint".into()))?
            .clone();
        if actual != shape {
            return Err(self.ckpt.tensor_error(
                name,
                format!("has shape {actual:?}, but the config implies {shape:?} (an unsupported layout?)"),
            ));
        }
        if !ok(dtype) {
            return Err(self.ckpt.tensor_error(name, format!("has dtype {dtype}; {expected} is expected")));
        }
        self.params.push(json!({"name": name, "dtype": dtype.name(), "shape": shape, "file": file, "tensor": name}));
        Ok(dtype)
    }

    /// Notes that the model multiplies by the matrix `name` (for [`matrices`]).
    fn matrix(&mut self, name: &str, stored_in_out: bool) {
        if !self.matrices.iter().any(|m| m.tensor == name) {
            self.matrices.push(Matrix { tensor: name.to_string(), stored_in_out });
        }
    }

    /// Whether the checkpoint holds the matrix `name` quantized (int8 or int4).
    fn is_quantized(&self, name: &str) -> bool {
        !self.ckpt.tensors.contains_key(name)
            && [QWEIGHT, QWEIGHT4].iter().any(|q| self.ckpt.tensors.contains_key(&format!("{name}{q}")))
    }

    /// The `[out, in]` matrix `name` as the checkpoint stores it: floats (as
    /// f32), int8 (see [`QWEIGHT`]) or int4 (see [`QWEIGHT4`], widened here).
    fn stored(&mut self, name: &str, dims: [u64; 2]) -> Result<Stored, Error> {
        if !self.is_quantized(name) {
            return Ok(Stored::Float(self.weight(name, &dims)?));
        }
        let scales = format!("{name}{SCALES}");
        let int8 = format!("{name}{QWEIGHT}");
        if self.ckpt.tensors.contains_key(&int8) {
            let as_f32 = format!("{int8}.f32");
            if !self.declared.contains_key(&int8) {
                self.declare(&int8, &dims, |d| d == DType::I8, "int8 (xlac quantize's values)")?;
                self.declare(&scales, &[dims[0]], |d| d == DType::F32, "f32 (xlac quantize's scales)")?;
                self.op(&as_f32, "cast", &[&int8], json!({"to": "f32"}));
                self.declared.insert(int8.clone(), int8.clone());
            }
            return Ok(Stored::Int8(Int8 { values: int8, as_f32, scales }));
        }
        let int4 = format!("{name}{QWEIGHT4}");
        let [rows, cols] = dims;
        let half = cols / 2;
        let planes = (format!("{int4}.low"), format!("{int4}.high"));
        if self.declared.contains_key(&int4) {
            return Ok(Stored::Int4(planes.0, planes.1));
        }
        let groups = self.ckpt.tensor_dim(&scales, 1)?;
        if !cols.is_multiple_of(2) || groups % 2 != 0 || !half.is_multiple_of(groups / 2) {
            return Err(self
                .ckpt
                .tensor_error(&scales, format!("{groups} groups do not split both halves of {cols} columns")));
        }
        self.declare(&int4, &[rows, half], |d| d == DType::U8, "uint8 (xlac quantize's int4 pairs)")?;
        self.declare(&scales, &[rows, groups], |d| d == DType::F32, "f32 (xlac quantize's scales)")?;
        self.declared.insert(int4.clone(), int4.clone());
        // Byte j holds column j (+8) in its low nibble and column j + cols/2 (+8) in its high one:
        // each half is elementwise in the bytes, so XLA widens it inside the product that reads it.
        let i32s = |g: &mut Graph, out: &str, v: i64| g.op(out, "constant", &[], json!({"dtype": "i32", "value": v}));
        let bytes = self.op(&format!("{int4}.i32"), "cast", &[&int4], json!({"to": "i32"}));
        let (sixteen, eight) = (i32s(self, &format!("{int4}.16"), 16), i32s(self, &format!("{int4}.8"), 8));
        let high = self.op(&format!("{int4}.high.nibble"), "div", &[&bytes, &sixteen], json!({}));
        let shifted = self.op(&format!("{int4}.high.16"), "mul", &[&high, &sixteen], json!({}));
        let low = self.op(&format!("{int4}.low.nibble"), "sub", &[&bytes, &shifted], json!({}));
        let per_half = groups / 2;
        for (plane, nibble, first) in [(&planes.0, low, 0), (&planes.1, high, per_half)] {
            let centred = self.op(&format!("{plane}.centred"), "sub", &[&nibble, &eight], json!({}));
            let values = self.op(&format!("{plane}.f32"), "cast", &[&centred], json!({"to": "f32"}));
            let grouped = json!({"shape": [rows, per_half, half / per_half]});
            let values = self.op(&format!("{plane}.grouped"), "reshape", &[&values], grouped);
            let range = json!({"starts": [first], "ends": [first + per_half], "axes": [1]});
            let s = self.op(&format!("{plane}.scales"), "slice", &[&scales], range);
            let s = self.op(&format!("{plane}.scales.3d"), "reshape", &[&s], json!({"shape": [rows, per_half, 1]}));
            let w = self.op(&format!("{plane}.scaled"), "mul", &[&values, &s], json!({}));
            self.op(plane, "reshape", &[&w], json!({"shape": [rows, half]}));
        }
        Ok(Stored::Int4(planes.0, planes.1))
    }

    /// `x · wᵀ`, contracting `x`'s dimension `rank - 1` with the checkpoint's
    /// `[out, in]` matrix `name` in place (not transposed or copied); for an
    /// int8 matrix, the product with its values, then scaled per output.
    fn times_transposed(
        &mut self,
        out: &str,
        x: &str,
        rank: usize,
        name: &str,
        dims: [u64; 2],
    ) -> Result<String, Error> {
        let contract = json!({"lhs_contract": [rank - 1], "rhs_contract": [1]});
        Ok(match self.stored(name, dims)? {
            Stored::Int8(q) => {
                let y = self.op(&format!("{out}.int8"), "dot", &[x, &q.as_f32], contract);
                self.op(out, "mul", &[&y, &q.scales], json!({}))
            }
            Stored::Float(w) => self.op(out, "dot", &[x, &w], contract),
            Stored::Int4(low, high) => {
                let parts = self.halves(&format!("{out}.x"), x, rank - 1, dims[1]);
                let l = self.op(&format!("{out}.low"), "dot", &[&parts.0, &low], contract.clone());
                let h = self.op(&format!("{out}.high"), "dot", &[&parts.1, &high], contract);
                self.op(out, "add", &[&l, &h], json!({}))
            }
        })
    }

    /// The two halves of `x` along `axis` (of size `size`), for an int4 matrix's halves.
    fn halves(&mut self, out: &str, x: &str, axis: usize, size: u64) -> (String, String) {
        let half = size / 2;
        let part = |g: &mut Graph, name: String, from: u64, to: u64| {
            g.op(&name, "slice", &[x], json!({"starts": [from], "ends": [to], "axes": [axis]}))
        };
        (part(self, format!("{out}.low"), 0, half), part(self, format!("{out}.high"), half, size))
    }

    /// Adds node `out = op(inputs) {attrs}`; returns `out`.
    fn op(&mut self, out: &str, op: &str, inputs: &[&str], attrs: Json) -> String {
        let mut node = json!({"op": op, "inputs": inputs, "outputs": [out]});
        if attrs.as_object().is_some_and(|a| !a.is_empty()) {
            node["attrs"] = attrs;
        }
        self.nodes.push(node);
        out.to_string()
    }

    /// A scalar f32 constant.
    fn scalar(&mut self, out: &str, value: f64) -> String {
        self.op(out, "constant", &[], json!({"dtype": "f32", "value": value}))
    }

    /// `x·wᵀ + b` for a PyTorch `nn.Linear` weight `w` of shape `[out, in]`
    /// (contracted in place: the checkpoint is not transposed or copied).
    fn dense(
        &mut self,
        out: &str,
        x: &str,
        rank: usize,
        layer: &str,
        dims: [u64; 2],
        bias: bool,
    ) -> Result<String, Error> {
        let name = format!("{layer}.weight");
        self.matrix(&name, false);
        let y = self.times_transposed(
            &if bias { format!("{out}.xw") } else { out.to_string() },
            x,
            rank,
            &name,
            [dims[1], dims[0]],
        )?;
        if !bias {
            return Ok(y);
        }
        let b = self.weight(&format!("{layer}.bias"), &[dims[1]])?;
        Ok(self.op(out, "add", &[&y, &b], json!({})))
    }

    /// A new f32 parameter `name` (not in the checkpoint), its values inline in the model.
    fn new_weight(&mut self, name: &str, shape: &[u64], values: Vec<f64>) -> String {
        self.params.push(json!({"name": name, "dtype": "f32", "shape": shape, "value": values}));
        self.declared.insert(name.to_string(), name.to_string());
        name.to_string()
    }

    /// `layer_norm(x)` over the last dimension with the checkpoint's `{layer}.weight` and `{layer}.bias`.
    fn layer_norm(&mut self, out: &str, x: &str, layer: &str, width: u64, eps: f64) -> Result<String, Error> {
        let w = self.weight(&format!("{layer}.weight"), &[width])?;
        let b = self.weight(&format!("{layer}.bias"), &[width])?;
        Ok(self.op(out, "layer_norm", &[x, &w, &b], json!({"epsilon": eps})))
    }

    /// `[batch, seq, heads·d]` → `[batch, heads, seq, d]`.
    fn split_heads(&mut self, out: &str, x: &str, heads: u64, d: u64) -> String {
        let r = self.op(&format!("{out}.bshd"), "reshape", &[x], json!({"shape": ["batch", "seq", heads, d]}));
        self.op(out, "transpose", &[&r], json!({"perm": [0, 2, 1, 3]}))
    }

    /// `[batch, heads, seq, d]` → `[batch, seq, heads·d]`.
    fn merge_heads(&mut self, out: &str, x: &str, width: u64) -> String {
        let t = self.op(&format!("{out}.bshd"), "transpose", &[x], json!({"perm": [0, 2, 1, 3]}));
        self.op(out, "reshape", &[&t], json!({"shape": ["batch", "seq", width]}))
    }

    /// `table[ids]` for an embedding table of `[rows, width]` (int8 rows
    /// gathered, then widened and scaled).
    fn embed(&mut self, out: &str, table: &str, ids: &str, rows: u64, width: u64) -> Result<String, Error> {
        self.matrix(table, false);
        Ok(match self.stored(table, [rows, width])? {
            Stored::Int8(q) => {
                let v = self.op(&format!("{out}.int8"), "gather", &[&q.values, ids], json!({"axis": 0}));
                let v = self.op(&format!("{out}.int8.f32"), "cast", &[&v], json!({"to": "f32"}));
                let column = self.op(&format!("{out}.scales"), "reshape", &[&q.scales], json!({"shape": [rows, 1]}));
                let s = self.op(&format!("{out}.scales.rows"), "gather", &[&column, ids], json!({"axis": 0}));
                self.op(out, "mul", &[&v, &s], json!({}))
            }
            Stored::Float(t) => self.op(out, "gather", &[&t, ids], json!({"axis": 0})),
            // Widened only where gathered: XLA fuses the widening into the gathers.
            Stored::Int4(low, high) => {
                let l = self.op(&format!("{out}.low"), "gather", &[&low, ids], json!({"axis": 0}));
                let h = self.op(&format!("{out}.high"), "gather", &[&high, ids], json!({"axis": 0}));
                self.op(out, "concat", &[&l, &h], json!({"axis": -1}))
            }
        })
    }

    /// The tokens' positions: `0..seq` as i64, or in a generation step the
    /// input `position_ids` (`[batch, seq]`).
    fn positions(&mut self) -> String {
        if self.kv_cache.is_some() {
            return self.token_input("position_ids");
        }
        self.op("positions", "iota", &[], json!({"dtype": "i64", "shape": ["seq"]}))
    }

    fn output(&mut self, v: &str) {
        self.outputs.push(json!(v));
    }

    fn finish(mut self) -> Json {
        for (value, input) in std::mem::take(&mut self.cache_outputs) {
            self.outputs.push(match input {
                Some(input) => json!({"value": value, "donates": input}),
                None => json!(value),
            });
        }
        json!({
            "format_version": crate::frontend::json::FORMAT_VERSION,
            "name": self.ckpt.dir.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned()),
            "inputs": self.inputs,
            "parameters": self.params,
            "nodes": self.nodes,
            "outputs": self.outputs,
        })
    }
}

/// The activation op of a Hugging Face `hidden_act` / `activation_function` name.
fn activation(ckpt: &Checkpoint, field: &str, default: &str) -> Result<&'static str, Error> {
    match ckpt.str_or(field, default)? {
        "gelu" => Ok("gelu"),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok("gelu_tanh"),
        "relu" => Ok("relu"),
        "silu" | "swish" => Ok("silu"),
        "tanh" => Ok("tanh"),
        other => Err(ckpt.config_error(
            field,
            format!("activation `{other}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu, silu, tanh)"),
        )),
    }
}

/// Heads and head size of a config, checked to divide the width.
fn heads(ckpt: &Checkpoint, width: u64, field: &str) -> Result<(u64, u64), Error> {
    let h = ckpt.usize(field)?;
    if !width.is_multiple_of(h) {
        return Err(ckpt.config_error(field, format!("{h} heads do not divide the hidden size {width}")));
    }
    Ok((h, width / h))
}
