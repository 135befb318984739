//! Text out: a causal LM generating tokens one compiled step at a time, its
//! KV cache held on the device.
//!
//! A generation runs two programs of the checkpoint's generation step
//! ([`ImportOptions::kv_cache`](xlac_compiler::frontend::hf::ImportOptions),
//! inputs as [`KV_CACHE_INPUTS`] says): the prefill, over the prompts
//! left-padded to a bucket length, and the decode step, one token per
//! sequence. Both are compiled for one cache length, the bucket that holds
//! the padded prompts and every new token; both read the weights uploaded
//! once. The prefill makes the caches; each decode step takes them donated,
//! so XLA writes the new keys and values in place (`dynamic_update_slice`)
//! and no step copies a cache or sends it to the host. Programs come from the compilation cache, so
//! generations whose lengths fall in the same buckets compile nothing.
//! When the sequences still running fit half the batch (a power of two)
//! and enough steps are left, a small program gathers their rows of the
//! caches on the device and the decode steps go on at the smaller batch:
//! ended sequences stop costing work.
//!
//! Choosing a token follows transformers' `generate`: the repetition penalty
//! first, then (when sampling) temperature, top-k and top-p, then the
//! softmax and a draw; greedy takes the first highest score.

use crate::text::{Codec, TextStream};
use crate::{compile_model, CompiledModel, DeviceModel, Error, Session};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xlac_compiler::frontend::hf::{CacheStep, CACHE_UPDATE, KV_CACHE_INPUTS};
use xlac_compiler::ir::op::Op;
use xlac_compiler::ir::{Module, Value};
use xlac_compiler::passes::{F32Layout, OptLevel};
use xlac_compiler::pipeline::Options;
use xlac_compiler::{DType, TensorType};
use xlac_core::rng::Rng;
use xlac_runtime::{Executable, HostTensor, ShardedBuffer, TensorSpec};

/// How the next token is drawn from the processed scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Scores are divided by it (> 0).
    pub temperature: f64,
    /// Keep the `k` highest scores (and ties with the k-th).
    pub top_k: Option<usize>,
    /// Keep the fewest highest-probability tokens whose probabilities add up to more than `p` (0 < p ≤ 1).
    pub top_p: Option<f64>,
    /// Seeds the draws: the same seed, prompts and options give the same tokens.
    pub seed: u64,
}

/// What to generate and when to stop.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// At most this many new tokens per prompt.
    pub max_new_tokens: usize,
    /// Sampling; `None` is greedy decoding.
    pub sampling: Option<Sampling>,
    /// transformers' `repetition_penalty`: the score of a token the sequence
    /// holds (prompt and new tokens, not padding) is divided by it when
    /// positive, multiplied when negative. 1 is none.
    pub repetition_penalty: f64,
    /// Tokens that end a sequence (kept as its last token).
    pub eos: Vec<i64>,
    /// Texts that end a sequence once its new text holds one (decoded with the
    /// checkpoint's tokenizer; the token that completes it is kept).
    pub stop: Vec<String>,
}

impl GenerateOptions {
    /// Greedy decoding of up to `max_new_tokens`, stopping at `eos`.
    pub fn greedy(max_new_tokens: usize, eos: Vec<i64>) -> GenerateOptions {
        GenerateOptions { max_new_tokens, sampling: None, repetition_penalty: 1.0, eos, stop: Vec::new() }
    }

    fn check(&self) -> Result<(), String> {
        if self.max_new_tokens == 0 {
            return Err("at least one new token must be asked for".into());
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!("the repetition penalty must be > 0, found {}", self.repetition_penalty));
        }
        if let Some(s) = &self.sampling {
            if !(s.temperature > 0.0 && s.temperature.is_finite()) {
                return Err(format!("the temperature must be > 0 to sample, found {}", s.temperature));
            }
            if s.top_k == Some(0) {
                return Err("top-k must keep at least 1 token".into());
            }
            if let Some(p) = s.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
                return Err(format!("top-p must be in (0, 1], found {p}"));
            }
        }
        Ok(())
    }
}

/// One step of a generation, as the caller sees it.
pub struct Step<'a> {
    /// 0 for the prefill's token, then one per decode step.
    pub index: usize,
    /// The model's raw scores for this step, one row of `vocab` per prompt
    /// (transformers' `output_logits`); NaN for a sequence that had already ended.
    pub logits: &'a [f32],
    pub vocab: usize,
    /// The token chosen for each prompt; `None` for a sequence that had already ended.
    pub tokens: &'a [Option<i64>],
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// It generated an end-of-sequence token.
    Eos,
    /// Its text came to hold a stop text.
    Stop,
    /// It reached the most new tokens asked for.
    Length,
}

impl Finish {
    /// The name `--json` prints (transformers' and OpenAI's `finish_reason`).
    pub fn name(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What a generation produced and how long it took.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The new tokens of each prompt, its end-of-sequence token included.
    pub tokens: Vec<Vec<i64>>,
    /// Why each sequence ended.
    pub finish: Vec<Finish>,
    /// The prefill: the prompts' run and the first token (time to first token).
    pub prefill: Duration,
    /// The decode steps, all together, and how many there were.
    pub decode: Duration,
    pub decode_steps: usize,
    /// The prompt and cache lengths of the programs (buckets).
    pub prompt_bucket: u64,
    pub cache_bucket: u64,
    /// The batch each step ran at: the prompts' count, then smaller powers
    /// of two as sequences end and the rest are compacted.
    pub batches: Vec<u64>,
}

/// A causal LM checkpoint ready to generate: its step programs, compiled on
/// first use for each (batch, length, cache) bucket, sharing one upload of the weights.
pub struct Generator<'s> {
    session: &'s Session,
    checkpoint: PathBuf,
    options: Options,
    /// The most positions the model embeds, from its config.
    positions: Option<u64>,
    /// By (prefill, batch, seq, cache).
    loaded: BTreeMap<(bool, u64, u64, u64), DeviceModel>,
    /// The programs that gather the caches' rows of the sequences still
    /// running, by (batch, rows kept, cache).
    compactions: BTreeMap<(u64, u64, u64), Arc<Executable>>,
}

/// The smallest bucket length: shorter prompts and caches are padded to it.
const MIN_BUCKET: u64 = 16;

/// The fewest decode steps left for which the sequences still running are
/// compacted into a smaller batch: fewer, and loading the smaller batch's
/// decode program (compiled, the first time) costs more than its steps save.
const MIN_STEPS_TO_COMPACT: usize = 8;

/// `n` rounded up to a bucket: a power of two, at least [`MIN_BUCKET`].
pub fn bucket(n: u64) -> u64 {
    n.max(MIN_BUCKET).next_power_of_two()
}

/// How a generation of `batch` sequences reads f32 weights on `session`'s
/// plugin: `[out, in]` for one sequence on the CPU builds measured to run
/// one-row products faster that way, else as any program reads them (see
/// `weight-layout`). A decode step at batch 1 is one-row products bound by
/// reading the weights. Measured (AMD EPYC Zen 4, 2 cores, AVX-512,
/// 2026-12-04), an m×4096 by 4096×4096 product reading `[out, in]` against
/// `[in, out]` on 0.115: 1.8–2.2 against 2.2–2.6 ms at one row, but 6.9–7.9
/// against 4.0–7.0 ms at 2 to 8 rows and 25.5–29.6 against 25.8–26.5 ms at
/// 128; on 0.81 1.5–2.2 against 2.4 ms at one row but 83–103 against 30–35
/// ms at 128 (Eigen packs the transposed operand). A Llama-shaped (~400M)
/// decode at batch 1 on 0.115 then made 16.2 tokens/s against 13.3 (medians
/// of 4 alternated runs), its first token as soon; at batch 8, in two runs
/// of `bench/peers/generate.py`, 216.9 ms a step against 190.3.
fn f32_layout(session: &Session, batch: u64) -> F32Layout {
    const ONE_ROW_FASTER_OUT_IN: [(i32, i32); 1] = [(0, 115)];
    if batch == 1 && crate::plugin_rules::cpu_build_among(session, &ONE_ROW_FASTER_OUT_IN) {
        F32Layout::OutIn
    } else {
        F32Layout::InOut
    }
}

impl<'s> Generator<'s> {
    /// A generator for the Hugging Face checkpoint `checkpoint` (GPT-2 or
    /// Llama with its LM head), compiled as `options` say (precision,
    /// passes), but for `options.f32_layout` and `options.whole_widening`:
    /// the plugin and the first generation's batch choose how f32 weights
    /// are read (this module's `f32_layout`), the plugin (here) how a
    /// prefill reads a widened matrix ([`crate::plugin_rules`]). Nothing is
    /// compiled until the first generation.
    pub fn new(session: &'s Session, checkpoint: &Path, options: &Options) -> Result<Generator<'s>, Error> {
        let mut options = options.clone();
        options.import.kv_cache = Some(CacheStep::Decode);
        options.whole_widening = crate::plugin_rules::whole_widening(session);
        // Import once now: a checkpoint that cannot generate says so before any prompt is read.
        xlac_compiler::frontend::hf::import(checkpoint, &options.import)?;
        let positions = crate::text::positions(checkpoint);
        Ok(Generator {
            session,
            checkpoint: checkpoint.into(),
            options,
            positions,
            loaded: BTreeMap::new(),
            compactions: BTreeMap::new(),
        })
    }

    /// How many step programs it has loaded (each compiled or found in the cache once).
    pub fn programs(&self) -> usize {
        self.loaded.len()
    }

    /// The step programs it has loaded: each prefill and decode step, by
    /// whether it is a prefill, its batch, new tokens and cache length.
    pub fn loaded(&self) -> impl Iterator<Item = ((bool, u64, u64, u64), &DeviceModel)> {
        self.loaded.iter().map(|(k, d)| (*k, d))
    }

    /// The fewest caches a loaded decode program donates (updates in place).
    pub fn donated_caches(&self) -> usize {
        let decode = self.loaded.iter().filter(|((prefill, ..), _)| !prefill);
        decode.map(|(_, d)| d.executable().donations().len()).min().unwrap_or(0)
    }

    /// The step program (the prefill, or a decode step) for `batch`
    /// sequences of `seq` new tokens and caches of `cache` slots.
    fn program(&mut self, step: CacheStep, batch: u64, seq: u64, cache: u64) -> Result<&DeviceModel, Error> {
        let key = (step == CacheStep::Prefill, batch, seq, cache);
        if self.loaded.is_empty() {
            // The first program uploads the weights and the others share them: laid out for its batch.
            self.options.f32_layout = f32_layout(self.session, batch);
        }
        if !self.loaded.contains_key(&key) {
            let mut options = self.options.clone();
            options.import.kv_cache = Some(step);
            options.bindings = BTreeMap::from([("batch".into(), batch), ("seq".into(), seq), ("cache".into(), cache)]);
            let model = compile_model(&self.checkpoint, &options, &BTreeMap::new())?;
            let device = match self.loaded.values().next() {
                Some(first) => first.sharing_weights(self.session.compile(&model)?.0, &model)?,
                None => self.session.load(&model, &mut |_| {})?.0,
            };
            self.loaded.insert(key, device);
        }
        Ok(&self.loaded[&key])
    }

    /// Gathers the rows `keep` of `caches` (`[batch, ...]` each) on the
    /// device into caches of `keep.len()` rows, freeing the old ones; the
    /// gathering program is compiled once per shape.
    fn compact(&mut self, caches: &mut BTreeMap<String, ShardedBuffer>, keep: &[usize]) -> Result<(), Error> {
        let specs: Vec<TensorSpec> = caches
            .iter()
            .map(|(name, b)| TensorSpec { name: name.clone(), ty: b.spec().ty, shape: b.spec().shape.clone() })
            .collect();
        let Some(first) = specs.first() else { return Ok(()) };
        let (batch, rows, cache) = (first.shape[0] as u64, keep.len() as u64, first.shape[2] as u64);
        let exe = match self.compactions.get(&(batch, rows, cache)) {
            Some(exe) => exe.clone(),
            None => {
                let exe = self.session.compile(&gather_rows(&specs, rows)?)?.0;
                self.compactions.insert((batch, rows, cache), exe.clone());
                exe
            }
        };
        let indices: Vec<u8> = keep.iter().flat_map(|&r| (r as i64).to_le_bytes()).collect();
        let indices = HostTensor::new(DType::I64, vec![keep.len()], indices)?;
        let indices = exe.upload_argument(specs.len(), indices.as_ref())?;
        let old: Vec<ShardedBuffer> = specs.iter().map(|s| caches.remove(&s.name).expect("a cache's name")).collect();
        let args: Vec<&ShardedBuffer> = old.iter().chain([&indices]).collect();
        for (spec, out) in specs.iter().zip(exe.execute_sharded(&args)?) {
            caches.insert(spec.name.clone(), out);
        }
        Ok(())
    }

    /// Generates after each of `prompts` (token ids), all in one batch,
    /// calling `on_step` after every step with the scores and the chosen tokens.
    pub fn generate(
        &mut self,
        prompts: &[Vec<i64>],
        o: &GenerateOptions,
        on_step: &mut dyn FnMut(&Step),
    ) -> Result<Generation, Error> {
        let bad = |message: String| Error::Input { model: self.checkpoint.clone(), name: "prompt".into(), message };
        o.check().map_err(|m| Error::Input { model: self.checkpoint.clone(), name: "options".into(), message: m })?;
        if prompts.is_empty() {
            return Err(bad("no prompt given".into()));
        }
        if let Some(i) = prompts.iter().position(Vec::is_empty) {
            return Err(bad(format!("prompt {} has no tokens", i + 1)));
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) as u64;
        if let Some(limit) = self.positions {
            let need = longest + o.max_new_tokens as u64;
            if need > limit {
                return Err(bad(format!(
                    "{longest} prompt tokens and {} new ones need {need} positions; the model has {limit}",
                    o.max_new_tokens
                )));
            }
        }
        let batch = prompts.len() as u64;
        let width = bucket(longest);
        // The last new token is never fed back: the cache holds the padded prompts and the others.
        let cache = bucket(width + o.max_new_tokens.saturating_sub(1) as u64);
        let codec = if o.stop.is_empty() { None } else { Some(Codec::open(&self.checkpoint)?) };
        // With stop texts, each sequence's new text so far, decoded as it comes.
        let mut texts: Vec<(TextStream, String)> =
            codec.iter().flat_map(|c| prompts.iter().map(move |p| (TextStream::new(c, p), String::new()))).collect();
        let mut run = Run::new(prompts, width as usize, cache as usize);
        let mut finish = vec![Finish::Length; prompts.len()];
        let mut rng = o.sampling.map(|s| Rng::new(s.seed, 0));
        let (mut prefill, mut decode, mut decode_steps) = (Duration::ZERO, Duration::ZERO, 0);
        let mut batches = Vec::new();
        let mut caches = BTreeMap::new();
        // Both programs loaded before the clock starts: the timings are the generation's own.
        self.program(CacheStep::Prefill, batch, width, cache)?;
        if o.max_new_tokens > 1 {
            self.program(CacheStep::Decode, batch, 1, cache)?;
        }
        for step in 0..o.max_new_tokens {
            let start = Instant::now();
            let rows = run.rows.len() as u64;
            batches.push(rows);
            let device = match step {
                0 => self.program(CacheStep::Prefill, rows, width, cache)?,
                _ => self.program(CacheStep::Decode, rows, 1, cache)?,
            };
            let logits = run.execute(device, step, &mut caches)?;
            let vocab = logits.len() / run.rows.len();
            // Each prompt's scores (NaN for one that had ended) and token.
            let mut scores_by_prompt = vec![f32::NAN; prompts.len() * vocab];
            let mut chosen = vec![None; prompts.len()];
            for (&i, row) in run.rows.iter().zip(logits.chunks(vocab)) {
                if run.done[i] {
                    continue;
                }
                scores_by_prompt[i * vocab..(i + 1) * vocab].copy_from_slice(row);
                let mut scores = row.to_vec();
                penalize(&mut scores, &run.seqs[i], o.repetition_penalty);
                let t = match (&o.sampling, &mut rng) {
                    (Some(s), Some(rng)) => sample(&mut scores, s, rng),
                    _ => argmax(&scores),
                };
                chosen[i] = Some(t);
                run.seqs[i].push(t);
                let stopped = match texts.get_mut(i) {
                    Some((stream, text)) => {
                        text.push_str(&stream.push(t)?);
                        o.stop.iter().any(|s| text.contains(s.as_str()))
                    }
                    None => false,
                };
                if o.eos.contains(&t) {
                    finish[i] = Finish::Eos;
                } else if stopped {
                    finish[i] = Finish::Stop;
                }
                run.done[i] = finish[i] != Finish::Length;
            }
            let ended = run.done.iter().all(|&d| d);
            // The sequences still running leave the ended ones' rows behind when that halves the batch.
            if let Some(keep) = run.compaction(o.max_new_tokens - step - 1).filter(|_| !ended) {
                self.compact(&mut caches, &keep)?;
                run.keep_rows(&keep);
            }
            if step == 0 {
                prefill = start.elapsed();
            } else {
                decode += start.elapsed();
                decode_steps += 1;
            }
            on_step(&Step { index: step, logits: &scores_by_prompt, vocab, tokens: &chosen });
            if ended {
                break;
            }
        }
        let tokens = (0..prompts.len()).map(|i| run.new_tokens(i).to_vec()).collect();
        Ok(Generation {
            tokens,
            finish,
            prefill,
            decode,
            decode_steps,
            prompt_bucket: width,
            cache_bucket: cache,
            batches,
        })
    }
}

/// The host's side of one generation: each sequence's tokens, which
/// sequence each row of the batch computes, and the cache slots that hold tokens.
struct Run {
    /// Each prompt's real tokens (prompt, then new ones).
    seqs: Vec<Vec<i64>>,
    /// Each prompt's length: where its new tokens start in `seqs`.
    prompt_lens: Vec<usize>,
    done: Vec<bool>,
    /// The prompt each row of the batch (and of the caches) computes; an
    /// ended one's row computes nothing used.
    rows: Vec<usize>,
    width: usize,
    cache: usize,
    /// `[rows, cache]`: 1 where a slot holds a real token.
    mask: Vec<i64>,
}

impl Run {
    fn new(prompts: &[Vec<i64>], width: usize, cache: usize) -> Run {
        let mut mask = vec![0; prompts.len() * cache];
        for (i, p) in prompts.iter().enumerate() {
            mask[i * cache + width - p.len()..i * cache + width].fill(1);
        }
        Run {
            seqs: prompts.to_vec(),
            prompt_lens: prompts.iter().map(Vec::len).collect(),
            done: vec![false; prompts.len()],
            rows: (0..prompts.len()).collect(),
            width,
            cache,
            mask,
        }
    }

    /// Sequence `i`'s tokens after its prompt.
    fn new_tokens(&self, i: usize) -> &[i64] {
        &self.seqs[i][self.prompt_lens[i]..]
    }

    /// The rows to keep when the sequences still running fit a batch of at
    /// most half the rows (a power of two: few decode programs), with
    /// `steps_left` decode steps to come: theirs, then ended ones' to fill it.
    fn compaction(&self, steps_left: usize) -> Option<Vec<usize>> {
        let (running, ended): (Vec<usize>, Vec<usize>) = (0..self.rows.len()).partition(|&r| !self.done[self.rows[r]]);
        let batch = running.len().next_power_of_two();
        if batch > self.rows.len() / 2 || steps_left < MIN_STEPS_TO_COMPACT {
            return None;
        }
        Some(running.into_iter().chain(ended).take(batch).collect())
    }

    /// Keeps the rows `keep` of the batch, in that order (as the caches were gathered).
    fn keep_rows(&mut self, keep: &[usize]) {
        self.rows = keep.iter().map(|&r| self.rows[r]).collect();
        self.mask = keep.iter().flat_map(|&r| self.mask[r * self.cache..(r + 1) * self.cache].to_vec()).collect();
    }

    /// The step inputs: the prefill's padded prompts (step 0) or each row's
    /// last token, their positions (padding at 1, as transformers puts it),
    /// the first slot they fill and the cache mask after this step.
    fn inputs(&mut self, step: usize) -> Result<BTreeMap<&'static str, HostTensor>, Error> {
        let batch = self.rows.len();
        let (ids, positions, start) = if step == 0 {
            let mut ids = Vec::with_capacity(batch * self.width);
            let mut positions = Vec::with_capacity(batch * self.width);
            for seq in self.rows.iter().map(|&i| &self.seqs[i]) {
                let pad = self.width - seq.len();
                ids.extend(std::iter::repeat_n(seq[0], pad).chain(seq.iter().copied()));
                positions.extend(std::iter::repeat_n(1, pad).chain(0..seq.len() as i64));
            }
            (ids, positions, 0)
        } else {
            let slot = self.width + step - 1;
            for row in self.mask.chunks_mut(self.cache) {
                row[slot] = 1;
            }
            let seqs = || self.rows.iter().map(|&i| &self.seqs[i]);
            let ids = seqs().map(|s| *s.last().expect("prompts are not empty")).collect();
            let positions = seqs().map(|s| s.len() as i64 - 1).collect();
            (ids, positions, slot)
        };
        let seq = if step == 0 { self.width } else { 1 };
        let i64s = |shape: Vec<usize>, v: &[i64]| {
            HostTensor::new(DType::I64, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        };
        let [ids_name, positions_name, start_name, mask_name] = KV_CACHE_INPUTS;
        Ok(BTreeMap::from([
            (ids_name, i64s(vec![batch, seq], &ids)?),
            (positions_name, i64s(vec![batch, seq], &positions)?),
            (start_name, i64s(vec![], &[start as i64])?),
            (mask_name, i64s(vec![batch, self.cache], &self.mask)?),
        ]))
    }

    /// Runs `device` for `step`: the caches the previous step made are
    /// handed over (a decode step updates them in place) and replaced by the
    /// ones it outputs ([`CACHE_UPDATE`] appended to the input's name); returns the logits.
    fn execute(
        &mut self,
        device: &DeviceModel,
        step: usize,
        caches: &mut BTreeMap<String, ShardedBuffer>,
    ) -> Result<Vec<f32>, Error> {
        let mut host = self.inputs(step)?;
        let exe = device.executable();
        let specs: &[TensorSpec] = device.input_specs();
        let mut args = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let buffer = match (host.remove(spec.name.as_str()), caches.remove(&spec.name)) {
                (Some(t), _) => exe.upload_argument(i, t.as_ref())?,
                (None, Some(cache)) => cache,
                (None, None) => {
                    return Err(Error::Input {
                        model: PathBuf::from("generate"),
                        name: spec.name.clone(),
                        message: "the generation step takes an input no earlier step made".into(),
                    })
                }
            };
            args.push(buffer);
        }
        let mut logits = None;
        for (name, out) in device.output_names().iter().zip(device.execute_consuming(args)?) {
            match name.strip_suffix(CACHE_UPDATE) {
                Some(cache) => {
                    caches.insert(cache.to_string(), out);
                }
                None => logits = Some(out),
            }
        }
        let logits = logits.expect("a generation step outputs its logits").to_host()?;
        Ok(logits.to_f64_vec().into_iter().map(|x| x as f32).collect())
    }
}

/// The program that keeps some rows of the caches: each cache (`[batch,
/// ...]`) and `rows` (i64 `[n]`, the rows kept, in order) in, each cache's
/// `[n, ...]` rows out.
fn gather_rows(caches: &[TensorSpec], n: u64) -> Result<CompiledModel, Error> {
    let mut m = Module::new("generate.compaction");
    let shape = |spec: &TensorSpec| spec.shape.iter().map(|&d| d as u64).collect::<Vec<u64>>();
    let inputs: Vec<Value> = caches.iter().map(|c| m.add_input(&c.name, TensorType::new(c.ty, shape(c)))).collect();
    let rows = m.add_input("rows", TensorType::new(DType::I64, vec![n]));
    for (c, v) in caches.iter().zip(inputs) {
        let mut kept = shape(c);
        kept[0] = n;
        let name = format!("{}.kept", c.name);
        let out = m.append_node(&name, Op::Gather { axis: 0 }, vec![v, rows], &name, TensorType::new(c.ty, kept));
        m.add_output(out);
    }
    crate::compile_module(Path::new("generate (cache compaction)"), m, &Options::at(OptLevel::O0, Default::default()))
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: each distinct token of
/// `seen` has its score divided by `penalty` when positive, multiplied when
/// negative (once, however often it occurs).
fn penalize(scores: &mut [f32], seen: &[i64], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let p = penalty as f32;
    let distinct: std::collections::BTreeSet<usize> = seen.iter().filter_map(|&t| usize::try_from(t).ok()).collect();
    for t in distinct {
        if let Some(s) = scores.get_mut(t) {
            *s = if *s < 0.0 { *s * p } else { *s / p };
        }
    }
}

/// The first index of the highest score (as `torch.argmax`).
fn argmax(scores: &[f32]) -> i64 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as i64
}

/// transformers' temperature, top-k and top-p warpers in that order, then a
/// draw from the softmax of what is left.
fn sample(scores: &mut [f32], s: &Sampling, rng: &mut Rng) -> i64 {
    let t = s.temperature as f32;
    scores.iter_mut().for_each(|x| *x /= t);
    if let Some(k) = s.top_k {
        let mut sorted = scores.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let threshold = sorted[k.min(sorted.len()) - 1];
        scores.iter_mut().filter(|x| **x < threshold).for_each(|x| *x = f32::NEG_INFINITY);
    }
    if let Some(p) = s.top_p {
        // Ascending; drop the low tail whose probabilities add up to at most 1 - p, keeping the top one.
        let probs = softmax(scores);
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let mut cumulative = 0.0;
        for &i in &order[..order.len() - 1] {
            cumulative += probs[i];
            if cumulative <= 1.0 - p {
                scores[i] = f32::NEG_INFINITY;
            }
        }
    }
    let probs = softmax(scores);
    let u = rng.uniform();
    let mut cumulative = 0.0;
    for (i, &q) in probs.iter().enumerate() {
        cumulative += q;
        if u < cumulative {
            return i as i64;
        }
    }
    // Rounding left the sum a little under 1: the last token that has any probability.
    probs.iter().rposition(|&q| q > 0.0).unwrap_or(0) as i64
}

fn softmax(scores: &[f32]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = scores.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// The JSON file `path`, or null when it is missing or not JSON.
fn read_json_or_null(path: &Path) -> serde_json::Value {
    std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

/// The checkpoint's end-of-sequence tokens: `eos_token_id` (a number or a
/// list) of its generation_config.json, else of its config.json.
pub fn eos_tokens(checkpoint: &Path) -> Vec<i64> {
    let generation = read_json_or_null(&checkpoint.join("generation_config.json"));
    let config = read_json_or_null(&checkpoint.join("config.json"));
    let eos = if generation["eos_token_id"].is_null() { &config["eos_token_id"] } else { &generation["eos_token_id"] };
    match eos {
        serde_json::Value::Array(list) => list.iter().filter_map(serde_json::Value::as_i64).collect(),
        v => v.as_i64().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_applies_once_per_distinct_token() {
        let mut s = vec![2.0, -2.0, 1.0];
        penalize(&mut s, &[0, 1, 1], 2.0);
        assert_eq!(s, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn argmax_takes_the_first_of_equal_scores() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_keep_only_the_likeliest_tokens() {
        let draws = |s: Sampling| {
            let mut rng = Rng::new(s.seed, 0);
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..2000 {
                seen.insert(sample(&mut [3.0, 2.0, 1.0, 0.0], &s, &mut rng));
            }
            seen.into_iter().collect::<Vec<_>>()
        };
        let base = Sampling { temperature: 1.0, top_k: None, top_p: None, seed: 7 };
        assert_eq!(draws(base), vec![0, 1, 2, 3]);
        assert_eq!(draws(Sampling { top_k: Some(2), ..base }), vec![0, 1]);
        // Probabilities 0.644, 0.237, 0.087, 0.032: the top two add up to 0.881 > 0.8.
        assert_eq!(draws(Sampling { top_p: Some(0.8), ..base }), vec![0, 1]);
        assert_eq!(draws(Sampling { top_p: Some(0.5), ..base }), vec![0]);
    }

    #[test]
    fn sampling_follows_the_softmax_of_the_tempered_scores() {
        let s = Sampling { temperature: 2.0, top_k: None, top_p: None, seed: 3 };
        let mut rng = Rng::new(s.seed, 0);
        let n = 20000;
        let ones = (0..n).filter(|_| sample(&mut [0.0, 2.0_f32.ln() * 2.0], &s, &mut rng) == 1).count();
        // exp(ln 2) / (1 + exp(ln 2)) = 2/3 at temperature 2.
        let rate = ones as f64 / n as f64;
        assert!((rate - 2.0 / 3.0).abs() < 0.015, "{rate}");
    }

    #[test]
    fn buckets_are_powers_of_two_from_sixteen() {
        assert_eq!((bucket(1), bucket(16), bucket(17), bucket(100)), (16, 16, 32, 128));
    }
}
