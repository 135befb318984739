//! Llama (`LlamaModel`, `LlamaForCausalLM`): RMSNorm, rotary position
//! embeddings, grouped-query attention (each key/value head serves
//! `heads / kv_heads` query heads) and a SwiGLU MLP; the LM head is
//! `lm_head.weight`, or the token embeddings when they are tied.

use super::{activation, heads, Graph};
use crate::error::Error;
use serde_json::json;

pub(super) fn build(g: &mut Graph, lm_head: bool) -> Result<(), Error> {
    let c = g.ckpt;
    let width = c.usize("hidden_size")?;
    let layers = c.usize("num_hidden_layers")?;
    let (nh, default_hd) = heads(c, width, "num_attention_heads")?;
    let hd = c.usize_or("head_dim", default_hd)?;
    let nkv = c.usize_or("num_key_value_heads", nh)?;
    if !nh.is_multiple_of(nkv) {
        return Err(c.config_error(
            "num_key_value_heads",
            format!("{nkv} key/value heads do not divide the {nh} attention heads"),
        ));
    }
    if !hd.is_multiple_of(2) {
        return Err(c.config_error("head_dim", format!("rotary embeddings need an even head size, found {hd}")));
    }
    let inner = c.usize("intermediate_size")?;
    let vocab = c.usize("vocab_size")?;
    let eps = c.f64_or("rms_norm_eps", 1e-6)?;
    let theta = c.f64_or("rope_theta", 10000.0)?;
    let act = activation(c, "hidden_act", "silu")?;
    let attention_bias = c.bool_or("attention_bias", false)?;
    let mlp_bias = c.bool_or("mlp_bias", false)?;
    match c.config.get("rope_scaling") {
        None | Some(serde_json::Value::Null) => {}
        Some(s) if s.get("rope_type").or(s.get("type")).and_then(|t| t.as_str()) == Some("default") => {}
        Some(s) => {
            return Err(
                c.config_error("rope_scaling", format!("{s} is not supported (only unscaled rotary embeddings)"))
            )
        }
    }
    let p = c.prefix("embed_tokens.weight", &["", "model."])?;

    let attention_dropout = g.dropout_rate(&["attention_dropout"])?;
    let ids = g.token_input("input_ids");
    let mut x = g.embed("embed.tokens", &format!("{p}embed_tokens.weight"), &ids, vocab, width)?;
    let (cos, sin) = rotary(g, hd, theta);
    for i in 0..layers {
        let l = format!("{p}layers.{i}");
        let n = format!("layer{i}");
        let h = rms_norm(g, &format!("{n}.norm_1"), &x, &format!("{l}.input_layernorm"), width, eps)?;
        let q =
            g.dense(&format!("{n}.q"), &h, 3, &format!("{l}.self_attn.q_proj"), [width, nh * hd], attention_bias)?;
        let k =
            g.dense(&format!("{n}.k"), &h, 3, &format!("{l}.self_attn.k_proj"), [width, nkv * hd], attention_bias)?;
        let v =
            g.dense(&format!("{n}.v"), &h, 3, &format!("{l}.self_attn.v_proj"), [width, nkv * hd], attention_bias)?;
        let q = g.split_heads(&format!("{n}.q.heads"), &q, nh, hd);
        let k = g.split_heads(&format!("{n}.k.heads"), &k, nkv, hd);
        let v = g.split_heads(&format!("{n}.v.heads"), &v, nkv, hd);
        let q = rotate(g, &format!("{n}.q.rotary"), &q, &cos, &sin, hd);
        let k = rotate(g, &format!("{n}.k.rotary"), &k, &cos, &sin, hd);
        let a = g.causal_attention(&format!("{n}.attention"), &q, &k, &v, nh, nkv, hd, attention_dropout);
        let a = g.merge_heads(&format!("{n}.attention.merged"), &a, nh * hd);
        let o = g.dense(
            &format!("{n}.attention.out"),
            &a,
            3,
            &format!("{l}.self_attn.o_proj"),
            [nh * hd, width],
            attention_bias,
        )?;
        x = g.op(&format!("{n}.attention.residual"), "add", &[&x, &o], json!({}));
        let h = rms_norm(g, &format!("{n}.norm_2"), &x, &format!("{l}.post_attention_layernorm"), width, eps)?;
        let gate = g.dense(&format!("{n}.mlp.gate"), &h, 3, &format!("{l}.mlp.gate_proj"), [width, inner], mlp_bias)?;
        let gate = g.op(&format!("{n}.mlp.gate.act"), act, &[&gate], json!({}));
        let up = g.dense(&format!("{n}.mlp.up"), &h, 3, &format!("{l}.mlp.up_proj"), [width, inner], mlp_bias)?;
        let both = g.op(&format!("{n}.mlp.glu"), "mul", &[&gate, &up], json!({}));
        let o = g.dense(&format!("{n}.mlp.down"), &both, 3, &format!("{l}.mlp.down_proj"), [inner, width], mlp_bias)?;
        x = g.op(&format!("{n}.mlp.residual"), "add", &[&x, &o], json!({}));
    }
    let x = g.head_input(&x);
    let last = rms_norm(g, "last_hidden_state", &x, &format!("{p}norm"), width, eps)?;
    let table = if c.has("lm_head.weight") { "lm_head.weight".to_string() } else { format!("{p}embed_tokens.weight") };
    g.lm_outputs(&last, lm_head.then_some((table.as_str(), [vocab, width])))?;
    Ok(())
}

fn rms_norm(g: &mut Graph, out: &str, x: &str, layer: &str, width: u64, eps: f64) -> Result<String, Error> {
    let w = g.weight(&format!("{layer}.weight"), &[width])?;
    Ok(g.op(out, "rms_norm", &[x, &w], json!({"epsilon": eps})))
}

/// cos and sin of the rotary angles, `[seq, head_dim]` (in a generation
/// step `[batch, 1, seq, head_dim]`, from `position_ids`): position p,
/// frequency `theta^(-2j/d)` for j < d/2, the half repeated (transformers'
/// layout), in f32.
fn rotary(g: &mut Graph, hd: u64, theta: f64) -> (String, String) {
    let inv_freq: Vec<f64> =
        (0..hd / 2).map(|j| (1.0 / theta.powf((2 * j) as f64 / hd as f64)) as f32 as f64).collect();
    let freq =
        g.op("rotary.inv_freq", "constant", &[], json!({"dtype": "f32", "shape": [1, hd / 2], "value": inv_freq}));
    let (pos, axis) = if g.kv_cache.is_some() {
        let ids = g.positions();
        let ids = g.op("rotary.position_ids", "cast", &[&ids], json!({"to": "f32"}));
        (g.op("rotary.positions", "reshape", &[&ids], json!({"shape": ["batch", 1, "seq", 1]})), 3)
    } else {
        (g.op("rotary.positions", "iota", &[], json!({"dtype": "f32", "shape": ["seq", 1]})), 1)
    };
    let angles = g.op("rotary.angles", "mul", &[&pos, &freq], json!({}));
    let full = g.op("rotary.angles.full", "concat", &[&angles, &angles], json!({"axis": axis}));
    (g.op("rotary.cos", "cos", &[&full], json!({})), g.op("rotary.sin", "sin", &[&full], json!({})))
}

/// `x·cos + rotate_half(x)·sin`, where rotate_half swaps the halves of the
/// last dimension and negates the (new) first half.
fn rotate(g: &mut Graph, out: &str, x: &str, cos: &str, sin: &str, hd: u64) -> String {
    let half = hd / 2;
    let lo = g.op(&format!("{out}.lo"), "slice", &[x], json!({"starts": [0], "ends": [half], "axes": [3]}));
    let hi = g.op(&format!("{out}.hi"), "slice", &[x], json!({"starts": [half], "ends": [hd], "axes": [3]}));
    let neg = g.op(&format!("{out}.hi.neg"), "neg", &[&hi], json!({}));
    let rot = g.op(&format!("{out}.rotated"), "concat", &[&neg, &lo], json!({"axis": 3}));
    let a = g.op(&format!("{out}.cos"), "mul", &[x, cos], json!({}));
    let b = g.op(&format!("{out}.sin"), "mul", &[&rot, sin], json!({}));
    g.op(out, "add", &[&a, &b], json!({}))
}
