//! `xlac generate`: prompts in, text out, streamed as it is produced.

use crate::{session_for, CacheArgs, PluginArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use xlac_compiler::passes::precision::Precision;
use xlac_compiler::passes::OptLevel;
use xlac_driver::generate::{eos_tokens, GenerateOptions, Generation, Generator, Sampling};
use xlac_driver::text::{Codec, TextStream};
use xlac_driver::Options;
use xlac_runtime::calibration::Workload;

#[derive(Args)]
pub struct GenerateArgs {
    /// A Hugging Face causal LM checkpoint directory (GPT-2, Llama) with its tokenizer.json.
    checkpoint: PathBuf,
    /// A prompt (repeatable: the prompts run as one batch, left-padded).
    #[arg(long, value_name = "TEXT")]
    prompt: Vec<String>,
    /// A prompt as token ids, e.g. 1,2,3 (repeatable); no tokenizer needed.
    #[arg(long, value_name = "ID,...", value_parser = parse_ids)]
    prompt_ids: Vec<Ids>,
    /// A file of prompts, one per line (blank lines skipped).
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// The most new tokens per prompt.
    #[arg(long, default_value = "32", value_name = "N")]
    max_new_tokens: usize,
    /// Sample at this temperature (default: greedy decoding; 0 is greedy too).
    #[arg(long, value_name = "T")]
    temperature: Option<f64>,
    /// Sample from the K likeliest tokens only (sampling at temperature 1 unless given).
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Sample from the likeliest tokens whose probabilities add up to P (nucleus sampling).
    #[arg(long, value_name = "P")]
    top_p: Option<f64>,
    /// Divide the scores of tokens already in the sequence by R (transformers' repetition_penalty).
    #[arg(long, default_value = "1.0", value_name = "R")]
    repetition_penalty: f64,
    /// Seeds the sampling: the same seed gives the same text.
    #[arg(long, default_value = "0")]
    seed: u64,
    /// End a sequence once its new text holds TEXT (repeatable).
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
    /// Do not end a sequence at the checkpoint's end-of-sequence token (benchmarks: every token generated).
    #[arg(long)]
    ignore_eos: bool,
    /// Generate once, untimed and unprinted, before the generation shown (benchmarks: the
    /// timings are then those of a warm process, as a server's, not of a fresh one's first run).
    #[arg(long)]
    warm_up: bool,
    /// Precision policy: f32, mixed-bf16 or mixed-f16 (see docs/precision.md).
    #[arg(long, default_value = "f32", value_parser = crate::parse_precision)]
    precision: Precision,
    /// Print, per prompt, its ids, the new ids, the text and why it ended, and the timings, as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    plugin: PluginArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

impl GenerateArgs {
    fn options(&self) -> GenerateOptions {
        let sampling = match (self.temperature, self.top_k, self.top_p) {
            (Some(0.0), _, _) => None,
            (None, None, None) => None,
            (t, top_k, top_p) => Some(Sampling { temperature: t.unwrap_or(1.0), top_k, top_p, seed: self.seed }),
        };
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            sampling,
            repetition_penalty: self.repetition_penalty,
            eos: if self.ignore_eos { Vec::new() } else { eos_tokens(&self.checkpoint) },
            stop: self.stop.clone(),
        }
    }
}

/// One `--prompt-ids` list.
#[derive(Clone)]
struct Ids(Vec<i64>);

fn parse_ids(s: &str) -> Result<Ids, String> {
    let ids = s.split(',').map(|t| t.trim().parse::<i64>().map_err(|_| format!("`{t}` is not a token id in `{s}`")));
    Ok(Ids(ids.collect::<Result<_, _>>()?))
}

/// A prompt as given and as token ids.
struct Prompt {
    text: Option<String>,
    ids: Vec<i64>,
}

fn prompts(a: &GenerateArgs, codec: Option<&Codec>) -> Result<Vec<Prompt>> {
    let mut texts = a.prompt.clone();
    if let Some(file) = &a.prompts {
        let all = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        texts.extend(all.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
    }
    let mut out = Vec::new();
    if !texts.is_empty() {
        let Some(codec) = codec else {
            bail!("text prompts need the checkpoint's tokenizer.json; give --prompt-ids instead")
        };
        for t in texts {
            out.push(Prompt { ids: codec.encode(&t)?, text: Some(t) });
        }
    }
    out.extend(a.prompt_ids.iter().map(|p| Prompt { text: None, ids: p.0.clone() }));
    if out.is_empty() {
        bail!("no prompt: give --prompt TEXT, --prompt-ids 1,2,3 or --prompts FILE");
    }
    Ok(out)
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let codec = Codec::open_if_present(&a.checkpoint)?;
    let prompts = prompts(&a, codec.as_ref())?;
    let options = a.options();
    // Decode steps with narrow weights widen them in one-row products: the plugins rank differently there.
    let narrow = a.precision != Precision::F32 || xlac_compiler::frontend::hf::is_quantized(&a.checkpoint)?;
    let workload = if narrow { Workload::Widening } else { Workload::Dense };
    let session = session_for(&a.plugin, &a.cache, 1, workload)?;
    let compile = Options { precision: a.precision, ..Options::at(OptLevel::O2, Default::default()) };
    let mut generator = Generator::new(&session, &a.checkpoint, &compile)?;
    let ids: Vec<Vec<i64>> = prompts.iter().map(|p| p.ids.clone()).collect();
    if a.warm_up {
        generator.generate(&ids, &options, &mut |_| {})?;
    }
    // One prompt streams to a terminal or a pipe as its tokens come; a batch prints at the end.
    let streaming = prompts.len() == 1 && !a.json;
    let mut out = std::io::stdout().lock();
    if streaming {
        if let Some(t) = &prompts[0].text {
            write!(out, "{t}")?;
            out.flush()?;
        }
    }
    let mut stream = codec.as_ref().map(|c| TextStream::new(c, &ids[0]));
    let mut failure: Option<anyhow::Error> = None;
    let result = generator.generate(&ids, &options, &mut |step| {
        if !streaming || failure.is_some() {
            return;
        }
        let Some(t) = step.tokens[0] else { return };
        // What the new token adds (a token may complete a character only with the next).
        let added = match &mut stream {
            Some(s) => match s.push(t) {
                Ok(text) => text,
                Err(e) => return failure = Some(e.into()),
            },
            None => format!("{t} "),
        };
        let _ = write!(out, "{added}").and_then(|_| out.flush());
    });
    let generation = result?;
    if let Some(e) = failure {
        return Err(e);
    }
    if a.json {
        return print_json(&mut out, &prompts, &generation, codec.as_ref(), &session);
    }
    if streaming {
        let rest = stream.map(TextStream::finish).transpose()?.unwrap_or_default();
        writeln!(out, "{rest}")?;
    } else {
        for (i, (p, new)) in prompts.iter().zip(&generation.tokens).enumerate() {
            let continuation = match &codec {
                Some(c) => c.continuation(&p.ids, new)?,
                None => format!("{new:?}"),
            };
            let prompt = p.text.clone().unwrap_or_else(|| format!("{:?}", p.ids));
            writeln!(out, "[{}] {prompt}{continuation}", i + 1)?;
        }
    }
    eprintln!("xlac: {}", timing(&generation));
    Ok(())
}

/// New tokens, time to first token and decode speed, in words.
fn timing(g: &Generation) -> String {
    let new: usize = g.tokens.iter().map(Vec::len).sum();
    let per_s = decode_tokens_per_s(g);
    format!(
        "{new} new tokens; first token after {:.1} ms (prompt bucket {}, cache {}); decode {:.1} tokens/s over {} steps",
        g.prefill.as_secs_f64() * 1e3,
        g.prompt_bucket,
        g.cache_bucket,
        per_s,
        g.decode_steps
    )
}

/// Tokens per second over the decode steps, all sequences together.
fn decode_tokens_per_s(g: &Generation) -> f64 {
    let secs = g.decode.as_secs_f64();
    if secs == 0.0 {
        return 0.0;
    }
    (g.decode_steps * g.tokens.len()) as f64 / secs
}

fn print_json(
    out: &mut dyn Write,
    prompts: &[Prompt],
    g: &Generation,
    codec: Option<&Codec>,
    session: &xlac_driver::Session,
) -> Result<()> {
    let mut results = Vec::new();
    for ((p, new), finish) in prompts.iter().zip(&g.tokens).zip(&g.finish) {
        let text = codec.map(|c| c.continuation(&p.ids, new)).transpose()?;
        results.push(serde_json::json!({
            "prompt": p.text,
            "prompt_ids": p.ids,
            "ids": new,
            "text": text,
            "finish_reason": finish.name(),
        }));
    }
    let doc = serde_json::json!({
        "results": results,
        "time_to_first_token_ms": g.prefill.as_secs_f64() * 1e3,
        "decode_steps": g.decode_steps,
        "decode_tokens_per_s": decode_tokens_per_s(g),
        "prompt_bucket": g.prompt_bucket,
        "cache_bucket": g.cache_bucket,
        "batches": g.batches,
        "plugin": session.plugin.path().display().to_string(),
    });
    writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}
