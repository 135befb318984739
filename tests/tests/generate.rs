//! `xlac generate`'s engine against transformers' `generate` on the tiny
//! GPT-2 and Llama checkpoints (fixtures/hf/make_generation.py wrote
//! expected/generate.json): greedy tokens equal token for token, the raw
//! logits of every step within 1e-4, for one prompt, two left-padded prompts
//! and a repetition penalty; the decode step compiles once and runs with its
//! caches donated; the generation step's cached attention equals the full
//! forward pass on the interpreter; bad options and prompts are clear errors.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use xlac_compiler::frontend::hf::{CacheStep, ImportOptions, CACHE_UPDATE};
use xlac_compiler::passes::precision::Precision;
use xlac_driver::generate::{eos_tokens, GenerateOptions, Generator, Sampling};
use xlac_driver::{compile_model, Options};
use xlac_tests::{repo_root, run_trials, shared_session, trial};

fn checkpoint(name: &str) -> PathBuf {
    repo_root().join("fixtures/hf").join(name)
}

fn cases(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(checkpoint(name).join("expected/generate.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn matches_transformers(name: &'static str, case: Value) {
    let Some(session) = shared_session(None) else { return };
    let dir = checkpoint(name);
    let prompts: Vec<Vec<i64>> = case["prompts"].as_array().unwrap().iter().map(ids).collect();
    let eos = eos_tokens(&dir);
    assert_eq!(eos, vec![case["eos_token_id"].as_i64().unwrap()], "the checkpoint's EOS");
    let options = GenerateOptions {
        repetition_penalty: case.get("repetition_penalty").and_then(Value::as_f64).unwrap_or(1.0),
        ..GenerateOptions::greedy(case["max_new_tokens"].as_u64().unwrap() as usize, eos)
    };
    let mut generator = Generator::new(session, &dir, &Options::default()).unwrap();
    let mut steps: Vec<(Vec<f32>, Vec<Option<i64>>)> = Vec::new();
    let got =
        generator.generate(&prompts, &options, &mut |s| steps.push((s.logits.to_vec(), s.tokens.to_vec()))).unwrap();
    let want: Vec<Vec<i64>> = case["generated"].as_array().unwrap().iter().map(ids).collect();
    assert_eq!(got.tokens, want, "{name} {}: tokens", case["name"]);
    let logits = case["logits"].as_array().unwrap();
    assert_eq!(steps.len(), want.iter().map(Vec::len).max().unwrap(), "one step per new token");
    for (step, (row, chosen)) in steps.iter().enumerate() {
        for (b, expected) in logits[step].as_array().unwrap().iter().enumerate() {
            if chosen[b].is_none() {
                continue; // this sequence had ended; transformers pads it
            }
            let vocab = expected.as_array().unwrap().len();
            for (j, e) in expected.as_array().unwrap().iter().enumerate() {
                let (g, e) = (row[b * vocab + j] as f64, e.as_f64().unwrap());
                assert!(
                    (g - e).abs() <= 1e-4,
                    "{name} {}: step {step}, prompt {b}, logit {j}: {g} vs {e}",
                    case["name"]
                );
            }
        }
    }
}

/// A second generation with lengths in the same buckets compiles nothing new;
/// the decode step donates every cache to its update.
fn decode_compiles_once_and_updates_in_place(name: &'static str) {
    let Some(session) = shared_session(None) else { return };
    let dir = checkpoint(name);
    let mut generator = Generator::new(session, &dir, &Options::default()).unwrap();
    let options = GenerateOptions::greedy(6, vec![]);
    let first = generator.generate(&[vec![5, 6, 7]], &options, &mut |_| {}).unwrap();
    assert_eq!(first.tokens[0].len(), 6, "no EOS given: every token is generated");
    assert_eq!((first.prompt_bucket, first.cache_bucket, first.decode_steps), (16, 32, 5));
    assert_eq!(generator.programs(), 2, "a prefill and a decode program");
    let again = generator.generate(&[vec![9, 1, 2, 3, 4]], &options, &mut |_| {}).unwrap();
    assert_eq!(again.tokens[0].len(), 6);
    assert_eq!(generator.programs(), 2, "the same buckets: nothing compiled again");
    let layers = 2;
    assert_eq!(generator.donated_caches(), 2 * layers, "each key and value cache is donated");
}

/// A generation of one sequence reads f32 weights `[out, in]` on the plugin
/// build whose one-row products run faster so (API 0.115;
/// `xlac_driver::generate`), `[in, out]` on others and for more sequences,
/// whichever way the checkpoint stores them (Llama `[out, in]`, GPT-2's
/// `Conv1D` `[in, out]`); generating is right either way (the other cases).
fn f32_weights_read_as_the_plugin_multiplies_one_row_fastest(name: &'static str) {
    let Some(session) = shared_session(None) else { return };
    let dir = checkpoint(name);
    // The first feed-forward matrix: 32 in, 64 (Llama) or 128 (GPT-2) out.
    let (weight, out_in) = match name {
        "llama" => ("model.layers.0.mlp.up_proj.weight", [64, 32]),
        _ => ("transformer.h.0.mlp.c_fc.weight", [128, 32]),
    };
    let in_out = [out_in[1], out_in[0]];
    let one_row_faster_out_in = session.plugin.api_version() == (0, 115);
    for (prompts, want) in [(1, if one_row_faster_out_in { out_in } else { in_out }), (2, in_out)] {
        let mut generator = Generator::new(session, &dir, &Options::default()).unwrap();
        let batch = vec![vec![5, 6, 7]; prompts];
        generator.generate(&batch, &GenerateOptions::greedy(2, vec![]), &mut |_| {}).unwrap();
        assert_eq!(generator.loaded().count(), 2, "a prefill and a decode program");
        for ((prefill, ..), program) in generator.loaded() {
            let read: Vec<_> = program.executable().inputs().iter().filter(|s| s.name.starts_with(weight)).collect();
            assert_eq!(read.len(), 1, "{name}: {weight} is one input: {read:?}");
            assert_eq!(
                read[0].shape, want,
                "{name}, {prompts} prompts (prefill {prefill}): {weight} read as {}",
                read[0]
            );
        }
    }
}

/// The generation step on the interpreter: the prefill of a prompt and then
/// one decode step give the logits the full forward pass gives at those positions.
fn cached_step_equals_the_forward_pass(name: &'static str) {
    use xlac_compiler::DType;
    use xlac_runtime::HostTensor;
    let dir = checkpoint(name);
    let i64s = |shape: Vec<usize>, v: &[i64]| {
        HostTensor::new(DType::I64, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()).unwrap()
    };
    let tokens = [5i64, 17, 42, 8, 23];
    let full =
        compile_model(&dir, &Options::default(), &BTreeMap::from([("input_ids".into(), i64s(vec![1, 5], &tokens))]))
            .unwrap();
    let forward =
        xlac_driver::eval_model(&full, &BTreeMap::from([("input_ids".into(), i64s(vec![1, 5], &tokens))]), 0).unwrap();
    let logits = forward.iter().find(|(n, _)| n == "logits").unwrap().1.to_f64_vec();
    let vocab = logits.len() / 5;
    let bind = |step: CacheStep, seq: u64| Options {
        bindings: BTreeMap::from([("batch".into(), 1), ("seq".into(), seq), ("cache".into(), 8)]),
        import: ImportOptions { kv_cache: Some(step), ..Default::default() },
        ..Options::default()
    };
    // Prefill the first four tokens (one slot of left padding), then decode the fifth.
    let prefill = compile_model(&dir, &bind(CacheStep::Prefill, 5), &BTreeMap::new()).unwrap();
    let mut given = BTreeMap::new();
    given.insert("input_ids".into(), i64s(vec![1, 5], &[0, 5, 17, 42, 8]));
    given.insert("position_ids".into(), i64s(vec![1, 5], &[1, 0, 1, 2, 3]));
    given.insert("cache_start".into(), i64s(vec![], &[0]));
    given.insert("cache_mask".into(), i64s(vec![1, 8], &[0, 1, 1, 1, 1, 0, 0, 0]));
    let out = xlac_driver::eval_model(&prefill, &given, 0).unwrap();
    let close = |got: &[f64], want: &[f64], what: &str| {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{name} {what}: {g} vs {w}");
        }
    };
    close(&out[0].1.to_f64_vec(), &logits[3 * vocab..4 * vocab], "prefill");
    let decode = compile_model(&dir, &bind(CacheStep::Decode, 1), &BTreeMap::new()).unwrap();
    let mut given: BTreeMap<String, HostTensor> =
        out.into_iter().skip(1).map(|(n, t)| (n.trim_end_matches(CACHE_UPDATE).to_string(), t)).collect();
    given.insert("input_ids".into(), i64s(vec![1, 1], &[23]));
    given.insert("position_ids".into(), i64s(vec![1, 1], &[4]));
    given.insert("cache_start".into(), i64s(vec![], &[5]));
    given.insert("cache_mask".into(), i64s(vec![1, 8], &[0, 1, 1, 1, 1, 1, 0, 0]));
    let out = xlac_driver::eval_model(&decode, &given, 0).unwrap();
    close(&out[0].1.to_f64_vec(), &logits[4 * vocab..], "decode");
}

/// The largest absolute difference between two runs' logits, element by element.
fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Under mixed-bf16 a batch generates (XLA's CPU runtime rejects a bf16 LM
/// head at batch > 1, so the step keeps it in f32), its logits near f32's.
fn mixed_bf16_generates_a_batch(name: &'static str) {
    let Some(session) = shared_session(None) else { return };
    let dir = checkpoint(name);
    let prompts = [vec![5, 17, 42, 8, 23], vec![61, 3, 77]];
    let first_logits = |precision: Precision| {
        let mut g = Generator::new(session, &dir, &Options { precision, ..Options::default() }).unwrap();
        let mut first = Vec::new();
        g.generate(&prompts, &GenerateOptions::greedy(4, vec![]), &mut |s| {
            if s.index == 0 {
                first = s.logits.to_vec();
            }
        })
        .unwrap();
        first
    };
    let (f32s, bf16s) = (first_logits(Precision::F32), first_logits(Precision::MixedBf16));
    let worst = largest_difference(&f32s, &bf16s);
    // Measured: about 1% of the logits' magnitude (bf16 has 8 significant bits).
    assert!(worst < 0.05, "{name}: mixed-bf16 logits differ from f32 by {worst}");
}

/// One sequence under a mixed precision: its decode steps widen the 16-bit
/// weights in one-row products, yet read the same upload of them as the
/// prefill (small weights included: they were once widened at compile time
/// in the decode program only, which then could not share the prefill's
/// weights). Its greedy tokens are f32's, its logits near f32's.
fn mixed_precision_generates_one_sequence(name: &'static str, precision: Precision) {
    let Some(session) = shared_session(None) else { return };
    let dir = checkpoint(name);
    let run = |precision: Precision| {
        let mut g = Generator::new(session, &dir, &Options { precision, ..Options::default() }).unwrap();
        let mut steps = Vec::new();
        g.generate(&[vec![1, 2, 3]], &GenerateOptions::greedy(4, vec![]), &mut |s| {
            steps.push((s.tokens.to_vec(), s.logits.to_vec()))
        })
        .unwrap();
        steps
    };
    let (f32s, mixed) = (run(Precision::F32), run(precision));
    assert_eq!(f32s.len(), 4);
    for (i, ((want_tokens, want), (tokens, got))) in f32s.iter().zip(&mixed).enumerate() {
        assert_eq!(tokens, want_tokens, "{name}: step {i}");
        let worst = largest_difference(want, got);
        assert!(worst < 0.05, "{name}: step {i}: {precision:?} logits differ from f32 by {worst}");
    }
}

/// Sequences of a batch that end early are compacted out of it: the others
/// go on at a smaller batch with the tokens and logits (within 1e-4) they
/// have when generated alone; the ended ones' scores are NaN after their end.
fn ended_sequences_leave_the_batch(name: &'static str) {
    let Some(session) = shared_session(None) else { return };
    let dir = checkpoint(name);
    let mut generator = Generator::new(session, &dir, &Options::default()).unwrap();
    let prompts = [vec![5, 17, 42, 8, 23], vec![61, 3, 77], vec![9, 1, 2], vec![30, 31]];
    let new = 12;
    let mut alone = Vec::new();
    for p in &prompts {
        let mut logits = Vec::new();
        let g = generator
            .generate(std::slice::from_ref(p), &GenerateOptions::greedy(new, vec![]), &mut |s| {
                logits.push(s.logits.to_vec())
            })
            .unwrap();
        alone.push((g.tokens[0].clone(), logits));
    }
    // Prompt 2 ends at its first token, prompt 3 at its second at the latest.
    let eos = vec![alone[1].0[0], alone[2].0[1]];
    let mut steps: Vec<(Vec<f32>, Vec<Option<i64>>)> = Vec::new();
    let got = generator
        .generate(&prompts, &GenerateOptions::greedy(new, eos.clone()), &mut |s| {
            steps.push((s.logits.to_vec(), s.tokens.to_vec()))
        })
        .unwrap();
    for (i, (tokens, _)) in alone.iter().enumerate() {
        let end = tokens.iter().position(|t| eos.contains(t)).map_or(new, |e| e + 1);
        assert_eq!(got.tokens[i], tokens[..end], "{name}: prompt {i}'s tokens as generated alone");
    }
    assert_eq!(got.batches[0], 4);
    assert!(got.batches.windows(2).all(|w| w[0] >= w[1]), "{:?}", got.batches);
    assert!(*got.batches.last().unwrap() <= 2, "{name}: the batch was compacted: {:?}", got.batches);
    for (step, (row, chosen)) in steps.iter().enumerate() {
        let vocab = row.len() / prompts.len();
        for (i, token) in chosen.iter().enumerate() {
            let scores = &row[i * vocab..(i + 1) * vocab];
            if token.is_none() {
                assert!(scores.iter().all(|x| x.is_nan()), "{name}: step {step}: ended prompt {i} has scores");
                continue;
            }
            let want = &alone[i].1[step][..vocab];
            let worst = largest_difference(scores, want);
            assert!(worst <= 1e-4, "{name}: step {step}, prompt {i}: logits differ by {worst}");
        }
    }
}

fn sampling_is_reproducible_from_the_seed() {
    let Some(session) = shared_session(None) else { return };
    let dir = checkpoint("llama");
    let mut generator = Generator::new(session, &dir, &Options::default()).unwrap();
    let with_seed = |seed| GenerateOptions {
        sampling: Some(Sampling { temperature: 1.5, top_k: Some(20), top_p: Some(0.9), seed }),
        ..GenerateOptions::greedy(12, vec![])
    };
    let mut run =
        |seed| generator.generate(&[vec![1, 5, 17], vec![1, 61]], &with_seed(seed), &mut |_| {}).unwrap().tokens;
    let (a, b, c) = (run(1), run(1), run(2));
    assert_eq!(a, b, "the same seed, the same tokens");
    assert_ne!(a, c, "another seed, other tokens");
}

fn bad_requests_are_clear_errors() {
    let Some(session) = shared_session(None) else { return };
    let bert = Generator::new(session, &checkpoint("bert"), &Options::default()).err().expect("BERT cannot generate");
    assert!(bert.to_string().contains("generation needs a causal LM"), "{bert}");
    let mut g = Generator::new(session, &checkpoint("gpt2"), &Options::default()).unwrap();
    let greedy = GenerateOptions::greedy(4, vec![]);
    let e = g.generate(&[], &greedy, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("no prompt given"), "{e}");
    let e = g.generate(&[vec![1], vec![]], &greedy, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("prompt 2 has no tokens"), "{e}");
    // GPT-2's fixture embeds 32 positions.
    let e = g.generate(&[vec![1; 30]], &greedy, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("need 34 positions; the model has 32"), "{e}");
    let hot = GenerateOptions {
        sampling: Some(Sampling { temperature: 0.0, top_k: None, top_p: None, seed: 0 }),
        ..greedy.clone()
    };
    let e = g.generate(&[vec![1]], &hot, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("temperature must be > 0"), "{e}");
    let e = g
        .generate(&[vec![1]], &GenerateOptions { repetition_penalty: 0.0, ..greedy }, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("repetition penalty must be > 0"), "{e}");
    let e = g.generate(&[vec![1]], &GenerateOptions::greedy(0, vec![]), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("at least one new token"), "{e}");
}

fn main() {
    let mut trials = Vec::new();
    for name in ["gpt2", "llama"] {
        for case in cases(name) {
            let label = format!("{name}/{}", case["name"].as_str().unwrap());
            trials.push(trial(label, move || matches_transformers(name, case)));
        }
        trials.push(trial(format!("{name}/decode_compiles_once"), move || {
            decode_compiles_once_and_updates_in_place(name)
        }));
        trials.push(trial(format!("{name}/f32_weights_read_as_the_plugin_multiplies_one_row_fastest"), move || {
            f32_weights_read_as_the_plugin_multiplies_one_row_fastest(name)
        }));
        trials.push(trial(format!("{name}/cached_step_equals_forward"), move || {
            cached_step_equals_the_forward_pass(name)
        }));
        trials.push(trial(format!("{name}/mixed_bf16_batch"), move || mixed_bf16_generates_a_batch(name)));
        for precision in [Precision::MixedBf16, Precision::MixedF16] {
            trials.push(trial(format!("{name}/{precision:?}_one_sequence"), move || {
                mixed_precision_generates_one_sequence(name, precision)
            }));
        }
        trials.push(trial(format!("{name}/ended_sequences_leave_the_batch"), move || {
            ended_sequences_leave_the_batch(name)
        }));
    }
    trials.push(trial("sampling_is_reproducible", sampling_is_reproducible_from_the_seed));
    trials.push(trial("bad_requests", bad_requests_are_clear_errors));
    run_trials(trials)
}
