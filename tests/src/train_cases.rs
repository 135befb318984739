//! The training cases of `fixtures/train/` (generate.py ran PyTorch on
//! each once): which fixture model each trains and how.

use crate::repo_root;

/// The elements of the trained weight `name` (of `len` elements) whose
/// gradient is zero up to rounding: attention's key bias shifts every score
/// of a query by the same amount, which softmax ignores, and AdamW's
/// normalised update follows that rounding noise (a GPT-2 key bias element
/// near 5e-6 ended with the other sign on the 0.115 plugin once its reduce
/// fusions changed). GPT-2's `c_attn` bias holds the query's, the key's and
/// the value's one after another: its middle third.
pub fn rounding_noise(name: &str, len: usize) -> std::ops::Range<usize> {
    if name.ends_with("attn.k.bias") || name.ends_with("attention.self.key.bias") {
        0..len
    } else if name.ends_with("attn.c_attn.bias") {
        len / 3..2 * len / 3
    } else {
        0..0
    }
}

/// Compares a trained weight with its reference, as [`crate::compare`] does,
/// but for the elements that are [`rounding_noise`].
pub fn compare_trained(
    case: &str,
    name: &str,
    actual: &xlac_runtime::HostTensor,
    expected: &xlac_runtime::HostTensor,
    rtol: f64,
    atol: f64,
) -> Result<(), String> {
    let noise = rounding_noise(name, expected.to_f64_vec().len());
    if noise.is_empty() || actual.shape() != expected.shape() {
        return crate::compare(&format!("{case}: final {name}"), actual, expected, rtol, atol);
    }
    // The other elements, as an f64 vector.
    let kept = |t: &xlac_runtime::HostTensor| {
        let v: Vec<f64> =
            (t.to_f64_vec().into_iter().enumerate()).filter(|(i, _)| !noise.contains(i)).map(|(_, x)| x).collect();
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        xlac_runtime::HostTensor::new(xlac_runtime::DType::F64, vec![v.len()], bytes).expect("an f64 vector")
    };
    let what = format!("{case}: final {name} (but elements {noise:?}, rounding noise)");
    crate::compare(&what, &kept(actual), &kept(expected), rtol, atol)
}
use xlac_compiler::autodiff::Remat;
use xlac_compiler::train::lora::Lora;
use xlac_compiler::train::loss::{Loss, IGNORE_INDEX};
use xlac_compiler::train::optim::{Optimizer, Schedule};
use xlac_compiler::train::shard::Zero;
use xlac_compiler::train::TrainConfig;

/// A case: its folder under fixtures/train, the fixture model (under fixtures/), the training configuration and the base learning rate.
pub fn cases() -> Vec<(&'static str, &'static str, TrainConfig, f64)> {
    let ce = |label_smoothing| Loss::CrossEntropy { ignore_index: IGNORE_INDEX, label_smoothing };
    let with_output = |output: &str, loss, optimizer, schedule, clip_norm| TrainConfig {
        loss,
        output: Some(output.into()),
        optimizer,
        schedule,
        clip_norm,
        freeze: vec![],
        accumulate: 1,
        remat: Remat::None,
        lora: None,
        loss_scale: None,
        zero: Zero::Off,
        tunable: false,
    };
    let config = |loss, optimizer, schedule, clip_norm| with_output("fc2", loss, optimizer, schedule, clip_norm);
    let adamw = |weight_decay| Optimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay };
    let mlp = vec![
        (
            "mlp_sgd_momentum",
            config(
                ce(0.0),
                Optimizer::Sgd { momentum: 0.9, dampening: 0.1, nesterov: false, weight_decay: 0.01 },
                Schedule::Constant,
                None,
            ),
            0.1,
        ),
        (
            "mlp_sgd_nesterov_linear",
            config(
                ce(0.0),
                Optimizer::Sgd { momentum: 0.8, dampening: 0.0, nesterov: true, weight_decay: 0.0 },
                Schedule::Linear { warmup: 3, total: 20 },
                None,
            ),
            0.2,
        ),
        (
            "mlp_adamw_cosine_clip",
            config(
                ce(0.1),
                Optimizer::AdamW { beta1: 0.9, beta2: 0.98, eps: 1e-7, weight_decay: 0.05 },
                Schedule::Cosine { warmup: 3, total: 20 },
                Some(0.5),
            ),
            0.01,
        ),
    ];
    let mut all: Vec<_> = mlp.into_iter().map(|(case, config, lr)| (case, "mlp", config, lr)).collect();
    let adafactor = Optimizer::default_for("adafactor").expect("adafactor");
    all.push(("mlp_adafactor", "mlp", config(ce(0.0), adafactor, Schedule::Constant, None), 0.01));
    all.push(("cnn_adamw", "cnn", with_output("log_probs", ce(0.0), adamw(0.01), Schedule::Constant, None), 0.003));
    all.push((
        "transformer_block_adamw_warmup_cosine_clip",
        "transformer_block",
        with_output("y", Loss::Mse, adamw(0.1), Schedule::Cosine { warmup: 5, total: 20 }, Some(1.0)),
        0.002,
    ));
    all.push((
        "bert_sequence_classification_adamw",
        "train/bert_sequence_classification_adamw/checkpoint",
        with_output("logits", ce(0.0), adamw(0.01), Schedule::Linear { warmup: 2, total: 20 }, None),
        0.001,
    ));
    let lm = Loss::CausalLm { ignore_index: IGNORE_INDEX };
    all.push((
        "gpt2_causal_lm_adamw",
        "hf/gpt2",
        with_output("logits", lm.clone(), adamw(0.01), Schedule::Linear { warmup: 4, total: 20 }, Some(1.0)),
        0.003,
    ));
    all.push((
        "llama_causal_lm_adamw",
        "hf/llama",
        with_output("logits", lm.clone(), adamw(0.01), Schedule::Constant, None),
        0.001,
    ));
    let momentum = Optimizer::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
    // LoRA from PEFT's initial adapter: the adapters (and the BERT classifier, a module to save) train.
    let lora = |case: &str| {
        let dir = repo_root().join("fixtures/train").join(case).join("adapter");
        Some(Lora::from_adapter(&dir).unwrap())
    };
    all.push((
        "bert_lora_adamw",
        "train/bert_sequence_classification_adamw/checkpoint",
        TrainConfig {
            lora: lora("bert_lora_adamw"),
            ..with_output("logits", ce(0.0), adamw(0.01), Schedule::Linear { warmup: 2, total: 20 }, None)
        },
        0.01,
    ));
    all.push((
        "llama_lora_adamw",
        "hf/llama",
        TrainConfig {
            lora: lora("llama_lora_adamw"),
            ..with_output("logits", lm.clone(), adamw(0.01), Schedule::Constant, None)
        },
        0.01,
    ));
    all.push((
        "gpt2_lora_sgd",
        "hf/gpt2",
        TrainConfig { lora: lora("gpt2_lora_sgd"), ..with_output("logits", lm, momentum, Schedule::Constant, None) },
        0.5,
    ));
    all
}
