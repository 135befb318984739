//! GPT-2 (`GPT2Model`, `GPT2LMHeadModel`): pre-norm causal decoder blocks
//! whose projections are `Conv1D`s (weights stored `[in, out]`, used as
//! `linear` weights directly), a final norm, and the LM head tied to the
//! token embeddings unless the checkpoint has its own.

use super::{activation, heads, Graph};
use crate::error::Error;
use serde_json::json;

pub(super) fn build(g: &mut Graph, lm_head: bool) -> Result<(), Error> {
    let c = g.ckpt;
    let width = c.usize("n_embd")?;
    let layers = c.usize("n_layer")?;
    let (nh, hd) = heads(c, width, "n_head")?;
    let inner = c.usize_or("n_inner", 4 * width)?;
    let vocab = c.usize("vocab_size")?;
    let max_pos = c.usize("n_positions")?;
    let eps = c.f64_or("layer_norm_epsilon", 1e-5)?;
    let act = activation(c, "activation_function", "gelu_new")?;
    c.only("scale_attn_weights", &[json!(true)], "attention scores are scaled by 1/√d")?;
    c.only("scale_attn_by_inverse_layer_idx", &[json!(false)], "no per-layer score scaling")?;
    c.only("add_cross_attention", &[json!(false)], "no cross-attention")?;
    let p = c.prefix("wte.weight", &["", "transformer."])?;

    let (embd_pdrop, attn_pdrop, resid_pdrop) =
        (g.dropout_rate(&["embd_pdrop"])?, g.dropout_rate(&["attn_pdrop"])?, g.dropout_rate(&["resid_pdrop"])?);
    let hidden = json!(["batch", "seq", width]);
    let ids = g.token_input("input_ids");
    let tokens = g.embed("embed.tokens", &format!("{p}wte.weight"), &ids, vocab, width)?;
    let pos = g.positions();
    let positions = g.embed("embed.positions", &format!("{p}wpe.weight"), &pos, max_pos, width)?;
    let x = g.op("embed.sum", "add", &[&tokens, &positions], json!({}));
    let mut x = g.dropout("embed.dropout", &x, hidden.clone(), embd_pdrop);
    for i in 0..layers {
        let l = format!("{p}h.{i}");
        let n = format!("layer{i}");
        let a = g.layer_norm(&format!("{n}.ln_1"), &x, &format!("{l}.ln_1"), width, eps)?;
        let qkv = conv1d(g, &format!("{n}.qkv"), &a, &format!("{l}.attn.c_attn"), [width, 3 * width], None)?;
        let part = |g: &mut Graph, what: &str, k: u64| {
            let s = g.op(
                &format!("{n}.{what}"),
                "slice",
                &[&qkv],
                json!({"starts": [k * width], "ends": [(k + 1) * width], "axes": [2]}),
            );
            g.split_heads(&format!("{n}.{what}.heads"), &s, nh, hd)
        };
        let (q, k, v) = (part(g, "q", 0), part(g, "k", 1), part(g, "v", 2));
        let att = g.causal_attention(&format!("{n}.attention"), &q, &k, &v, nh, nh, hd, attn_pdrop);
        let att = g.merge_heads(&format!("{n}.attention.merged"), &att, width);
        let o = conv1d(g, &format!("{n}.attention.out"), &att, &format!("{l}.attn.c_proj"), [width, width], None)?;
        let o = g.dropout(&format!("{n}.attention.dropout"), &o, hidden.clone(), resid_pdrop);
        x = g.op(&format!("{n}.attention.residual"), "add", &[&x, &o], json!({}));
        let m = g.layer_norm(&format!("{n}.ln_2"), &x, &format!("{l}.ln_2"), width, eps)?;
        let h = conv1d(g, &format!("{n}.mlp.fc"), &m, &format!("{l}.mlp.c_fc"), [width, inner], Some(act))?;
        let o = conv1d(g, &format!("{n}.mlp.out"), &h, &format!("{l}.mlp.c_proj"), [inner, width], None)?;
        let o = g.dropout(&format!("{n}.mlp.dropout"), &o, hidden.clone(), resid_pdrop);
        x = g.op(&format!("{n}.mlp.residual"), "add", &[&x, &o], json!({}));
    }
    let x = g.head_input(&x);
    let last = g.layer_norm("last_hidden_state", &x, &format!("{p}ln_f"), width, eps)?;
    let table = if c.has("lm_head.weight") { "lm_head.weight".to_string() } else { format!("{p}wte.weight") };
    g.lm_outputs(&last, lm_head.then_some((table.as_str(), [vocab, width])))?;
    Ok(())
}

/// A GPT-2 `Conv1D`: `activation(x·w + b)` with `w` stored `[in, out]`
/// (`[out, in]` int8 or int4 in a quantized checkpoint).
fn conv1d(g: &mut Graph, out: &str, x: &str, layer: &str, dims: [u64; 2], act: Option<&str>) -> Result<String, Error> {
    let name = format!("{layer}.weight");
    g.matrix(&name, true);
    let b = g.weight(&format!("{layer}.bias"), &[dims[1]])?;
    if g.is_quantized(&name) {
        let y = g.times_transposed(&format!("{out}.xw"), x, 3, &name, [dims[1], dims[0]])?;
        let biased = if act.is_some() { format!("{out}.biased") } else { out.to_string() };
        let y = g.op(&biased, "add", &[&y, &b], json!({}));
        return Ok(match act {
            Some(a) => g.op(out, a, &[&y], json!({})),
            None => y,
        });
    }
    let w = g.weight(&name, &dims)?;
    let attrs = act.map_or(json!({}), |a| json!({"activation": a}));
    Ok(g.op(out, "linear", &[x, &w, &b], attrs))
}
