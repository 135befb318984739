//! `xlac quantize` on the tiny Hugging Face fixtures: every matrix the model
//! multiplies by is stored int8 per output channel, or int4 in groups of 16
//! (GPT-2's `Conv1D`s transposed to `[out, in]`), the rest as it was; the
//! quantized checkpoint's outputs stay within the measured bounds of f32's,
//! on XLA and on the interpreter (which agree with each other to 1e-5), and
//! so does its perplexity on the fixture's tokens; it generates; bad output
//! directories are errors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use xlac_compiler::frontend::hf::CacheStep;
use xlac_compiler::passes::OptLevel;
use xlac_compiler::DType;
use xlac_driver::generate::{GenerateOptions, Generator};
use xlac_driver::quantize::{quantize_checkpoint, Bits};
use xlac_driver::{compile_model, eval_model, Options};
use xlac_runtime::HostTensor;
use xlac_tests::{read_npy_dir, repo_root, run_trials, shared_session, trial};

fn checkpoint(name: &str) -> PathBuf {
    repo_root().join("fixtures/hf").join(name)
}

/// The model's outputs on the fixture's inputs, by name: on XLA at `level`, or on the interpreter.
fn outputs(dir: &std::path::Path, name: &str, level: OptLevel, xla: bool) -> BTreeMap<String, HostTensor> {
    let inputs = read_npy_dir(&checkpoint(name).join("inputs"));
    let model = compile_model(dir, &Options::at(level, BTreeMap::new()), &inputs).unwrap();
    let out = match xla {
        true => shared_session(None).expect("the CPU plugin").run(&model, &inputs, 0).unwrap(),
        false => eval_model(&model, &inputs, 0).unwrap(),
    };
    out.into_iter().collect()
}

/// exp(mean −log p(next token)) over the fixture's tokens, from `[batch, seq, vocab]` logits.
fn perplexity(logits: &HostTensor, ids: &HostTensor) -> f64 {
    let (l, ids) = (logits.to_f64_vec(), ids.to_f64_vec());
    let (batch, seq) = (ids.len() / logits.shape()[1], logits.shape()[1]);
    let vocab = logits.shape()[2];
    let mut nll = 0.0;
    for b in 0..batch {
        for t in 0..seq - 1 {
            let row = &l[(b * seq + t) * vocab..(b * seq + t + 1) * vocab];
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let log_z = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            nll += log_z - row[ids[b * seq + t + 1] as usize];
        }
    }
    (nll / (batch * (seq - 1)) as f64).exp()
}

/// The largest output error (relative to the largest |f32| output) and perplexity change allowed, per form.
fn bounds(bits: Bits) -> (f64, f64) {
    match bits {
        // Measured on these fixtures: up to 0.95% of the largest |output|, perplexity within 0.05%.
        Bits::Int8 => (0.03, 0.01),
        // Groups of 16: up to 20% (Llama's last hidden state), perplexity within 0.5%.
        Bits::Int4 { .. } => (0.25, 0.02),
    }
}

fn quantized_follows_f32(name: &'static str, bits: Bits) {
    if shared_session(None).is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let q = out.path().join("int8");
    let report = quantize_checkpoint(&checkpoint(name), &q, bits).unwrap();
    let (steps, values, dtype) = match bits {
        Bits::Int8 => (127.0, ".qweight", DType::I8),
        Bits::Int4 { .. } => (7.0, ".qweight4", DType::U8),
    };
    assert!(report.matrices > 0 && report.max_relative_error <= 0.5 / steps + 1e-6, "{report:?}");
    let header = xlac_core::safetensors::read_header(&q.join("model.safetensors")).unwrap();
    for m in xlac_compiler::frontend::hf::matrices(&checkpoint(name)).unwrap() {
        let (stored, shape, _) = header.tensor(&format!("{}{values}", m.tensor)).unwrap();
        let (scale_dtype, scales, _) = header.tensor(&format!("{}.scales", m.tensor)).unwrap();
        assert_eq!((stored, scale_dtype, scales[0]), (dtype, DType::F32, shape[0]), "{}", m.tensor);
        assert!(header.get(&m.tensor).is_none(), "{} is replaced by its quantized form", m.tensor);
    }
    let (output_bound, perplexity_bound) = bounds(bits);
    let f32_out = outputs(&checkpoint(name), name, OptLevel::O2, true);
    let int8_out = outputs(&q, name, OptLevel::O2, true);
    // -O0 keeps every int8 matrix an int8 parameter widened in the program (at -O2 these tiny ones fold).
    let int8_xla = outputs(&q, name, OptLevel::O0, true);
    let int8_interp = outputs(&q, name, OptLevel::O0, false);
    for (output, want) in &f32_out {
        let got = &int8_out[output];
        let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
        let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let worst = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= output_bound * scale, "{name} {output}: {bits:?} differs by {worst} (largest |f32| {scale})");
        xlac_tests::compare(
            &format!("{name} {output}: XLA vs interpreter"),
            &int8_xla[output],
            &int8_interp[output],
            1e-5,
            1e-5,
        )
        .unwrap();
        eprintln!(
            "{name} {output}: {bits:?} max error {worst:.2e}, {:.2}% of the largest |f32| {scale:.3}",
            100.0 * worst / scale
        );
    }
    if let Some(logits) = f32_out.get("logits") {
        let ids = &read_npy_dir(&checkpoint(name).join("inputs"))["input_ids"];
        let (p32, p8) = (perplexity(logits, ids), perplexity(&int8_out["logits"], ids));
        eprintln!("{name}: perplexity f32 {p32:.4}, {bits:?} {p8:.4}");
        assert!((p8 / p32 - 1.0).abs() < perplexity_bound, "{name}: perplexity f32 {p32}, {bits:?} {p8}");
        let session = shared_session(None).unwrap();
        let mut g = Generator::new(session, &q, &Options::default()).unwrap();
        let got = g.generate(&[vec![5, 17, 42]], &GenerateOptions::greedy(6, vec![]), &mut |_| {}).unwrap();
        assert_eq!(got.tokens[0].len(), 6, "the quantized checkpoint generates");
    }
}

/// The main function's lines of the decode step of `name` quantized to
/// `bits`, at `batch`, lowered at -O0 (where every matrix stays a quantized
/// parameter; the composites' decompositions number their own values).
fn decode_step_lines(name: &str, bits: Bits, batch: u64) -> Vec<String> {
    let out = tempfile::tempdir().unwrap();
    let q = out.path().join("quantized");
    quantize_checkpoint(&checkpoint(name), &q, bits).unwrap();
    let bindings = BTreeMap::from([("batch".into(), batch), ("seq".into(), 1), ("cache".into(), 8)]);
    let mut options = Options::at(OptLevel::O0, bindings);
    options.import.kv_cache = Some(CacheStep::Decode);
    let text = compile_model(&q, &options, &BTreeMap::new()).unwrap().lowered.text;
    text.lines()
        .skip_while(|l| !l.contains("func.func public @main"))
        .take_while(|l| *l != "  }")
        .map(String::from)
        .collect()
}

/// The matrix products of `main` (`dot_general`s without batch dimensions).
fn products(main: &[String]) -> Vec<&String> {
    main.iter().filter(|l| l.contains("stablehlo.dot_general") && !l.contains("batching_dimensions")).collect()
}

/// The decode step of `name` quantized to `bits`, at batch 1: no `add`
/// reads a matrix-vector product (XLA's CPU backend would fuse it into the
/// product, which then widens its whole quantized matrix into a buffer every
/// step instead of as it reads it: GPT-2-small's int4 step 6.0 tok/s against
/// 42-48).
fn decode_keeps_adds_out_of_products(name: &'static str, bits: Bits) {
    let main = decode_step_lines(name, bits, 1);
    let products: Vec<&str> = products(&main).iter().filter_map(|l| l.trim().split(" = ").next()).collect();
    assert!(!products.is_empty(), "{name}: no matrix product in\n{}", main.join("\n"));
    for line in main.iter().filter(|l| l.contains("= stablehlo.add ")) {
        let operands = line.split("stablehlo.add ").nth(1).unwrap().split(" : ").next().unwrap();
        for operand in operands.split(", ") {
            assert!(!products.contains(&operand), "{name} {bits:?}: an add reads the product {operand}: {line}");
        }
    }
}

/// The decode step of `name` quantized to `bits`, at batch 8: every matrix
/// product multiplies one row (XLA's CPU backend widens a quantized matrix
/// as it reads it only in a matrix-vector product; of 8 rows it widens the
/// whole matrix into a buffer first, every step: the Llama shape's int8
/// step 6 tokens/s against 17-18).
fn decode_at_batch_8_multiplies_a_row_at_a_time(name: &'static str, bits: Bits) {
    let main = decode_step_lines(name, bits, 8);
    let products = products(&main);
    assert!(!products.is_empty(), "{name}: no matrix product in\n{}", main.join("\n"));
    for line in products {
        let operands = line.split(" : (").nth(1).unwrap_or_default();
        assert!(operands.split(", ").any(|t| t.starts_with("tensor<1x")), "{name} {bits:?}: not one row: {line}");
    }
}

/// A row, and 8 rows (one product a row in the lowering), times an int8
/// matrix, scaled, plus a bias: XLA's result equals the interpreter's.
fn split_products_match_the_interpreter() {
    let Some(session) = shared_session(None) else { return };
    for rows in [1, 8] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.json");
        let model = xlac_tests::int8_product_model(rows, 64, 1024, true);
        std::fs::write(&path, model.to_string()).unwrap();
        let compiled = compile_model(&path, &Options::at(OptLevel::O0, BTreeMap::new()), &BTreeMap::new()).unwrap();
        let products = compiled.lowered.text.matches("stablehlo.dot_general").count();
        assert_eq!(products, rows, "{}", compiled.lowered.text);
        let want = eval_model(&compiled, &BTreeMap::new(), 3).unwrap();
        let got = session.run(&compiled, &BTreeMap::new(), 3).unwrap();
        xlac_tests::compare(&format!("{rows} rows"), &got[0].1, &want[0].1, 1e-5, 1e-5).unwrap();
    }
}

/// 32 rows times an int8 matrix widened whole: the session's plugin rule
/// decides how the product reads it (`CompiledModel::lower_for`), and both
/// ways give the interpreter's result.
fn many_rows_follow_the_plugins_rule() {
    use xlac_compiler::backend::stablehlo::{lower_with, WholeWidening};
    let Some(session) = shared_session(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    std::fs::write(&path, xlac_tests::int8_product_model(32, 64, 1024, true).to_string()).unwrap();
    let compiled = compile_model(&path, &Options::at(OptLevel::O0, BTreeMap::new()), &BTreeMap::new()).unwrap();
    assert_eq!(compiled.lowered.whole_widening, Some(WholeWidening::AsRead));
    let mut for_plugin = compiled.clone();
    for_plugin.lower_for(session);
    let rule = xlac_driver::plugin_rules::whole_widening(session);
    assert_eq!(for_plugin.lowered.whole_widening, Some(rule));
    assert_eq!(for_plugin.lowered.text.contains("stablehlo.gather"), rule == WholeWidening::Gathered);
    let want = eval_model(&compiled, &BTreeMap::new(), 3).unwrap();
    for whole in [WholeWidening::AsRead, WholeWidening::Gathered] {
        let mut model = compiled.clone();
        model.lowered = lower_with(&model.module, whole);
        let got = session.run(&model, &BTreeMap::new(), 3).unwrap();
        xlac_tests::compare(&format!("{whole:?}"), &got[0].1, &want[0].1, 1e-5, 1e-5).unwrap();
    }
}

fn quantized_checkpoints_are_recognised() {
    let out = tempfile::tempdir().unwrap();
    let (int8, int4) = (out.path().join("int8"), out.path().join("int4"));
    quantize_checkpoint(&checkpoint("gpt2"), &int8, Bits::Int8).unwrap();
    quantize_checkpoint(&checkpoint("llama"), &int4, Bits::Int4 { group: 16 }).unwrap();
    let quantized = |dir: &std::path::Path| xlac_compiler::frontend::hf::is_quantized(dir).unwrap();
    assert!(quantized(&int8) && quantized(&int4));
    assert!(!quantized(&checkpoint("gpt2")) && !quantized(&checkpoint("llama")));
    let e = xlac_compiler::frontend::hf::is_quantized(out.path()).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
}

fn bad_output_directories_are_errors() {
    let src = checkpoint("gpt2");
    let e = quantize_checkpoint(&src, &src, Bits::Int8).unwrap_err().to_string();
    assert!(e.contains("is the checkpoint itself"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
    let e = quantize_checkpoint(&src, dir.path(), Bits::Int8).unwrap_err().to_string();
    assert!(e.contains("is not empty"), "{e}");
    assert_eq!(std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(), "mine", "nothing overwritten");
}

fn main() {
    let mut trials = Vec::new();
    for name in ["bert", "gpt2", "llama"] {
        for (label, bits) in [("int8", Bits::Int8), ("int4", Bits::Int4 { group: 16 })] {
            trials.push(trial(format!("{name}/{label}_follows_f32"), move || quantized_follows_f32(name, bits)));
            if name != "bert" {
                trials.push(trial(format!("{name}/{label}_decode_keeps_adds_out_of_products"), move || {
                    decode_keeps_adds_out_of_products(name, bits)
                }));
                trials.push(trial(format!("{name}/{label}_decode_at_batch_8_multiplies_a_row_at_a_time"), move || {
                    decode_at_batch_8_multiplies_a_row_at_a_time(name, bits)
                }));
            }
        }
    }
    trials.push(trial("split_products_match_the_interpreter", split_products_match_the_interpreter));
    trials.push(trial("many_rows_follow_the_plugins_rule", many_rows_follow_the_plugins_rule));
    trials.push(trial("quantized_checkpoints_are_recognised", quantized_checkpoints_are_recognised));
    trials.push(trial("bad_output_directories", bad_output_directories_are_errors));
    run_trials(trials)
}
