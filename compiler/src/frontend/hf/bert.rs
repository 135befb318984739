//! BERT (`BertModel`): word + position + token-type embeddings, post-norm
//! encoder layers, the pooler when the checkpoint has it, and optionally
//! mean pooling into a normalised sentence embedding.
//! `BertForSequenceClassification` adds its head: `logits`, the classifier
//! (`classifier.weight`, `[num_labels, hidden]`) on the pooled output, new
//! and seeded when the checkpoint has none and the import asks for one.

use super::{activation, heads, Graph, ImportOptions, Pooling};
use crate::error::Error;
use serde_json::json;

pub(super) fn build(g: &mut Graph, options: &ImportOptions, classifier: bool) -> Result<(), Error> {
    let c = g.ckpt;
    let width = c.usize("hidden_size")?;
    let layers = c.usize("num_hidden_layers")?;
    let (nh, hd) = heads(c, width, "num_attention_heads")?;
    let inner = c.usize("intermediate_size")?;
    let vocab = c.usize("vocab_size")?;
    let max_pos = c.usize("max_position_embeddings")?;
    let types = c.usize_or("type_vocab_size", 2)?;
    let eps = c.f64_or("layer_norm_eps", 1e-12)?;
    let act = activation(c, "hidden_act", "gelu")?;
    c.only("position_embedding_type", &[json!("absolute")], "only absolute position embeddings")?;
    c.only("is_decoder", &[json!(false)], "BertModel as an encoder only")?;
    c.only("add_cross_attention", &[json!(false)], "no cross-attention")?;
    let p = c.prefix("embeddings.word_embeddings.weight", &["", "bert."])?;

    let hidden_dropout = g.dropout_rate(&["hidden_dropout_prob"])?;
    let attention_dropout = g.dropout_rate(&["attention_probs_dropout_prob"])?;
    let hidden = json!(["batch", "seq", width]);
    let ids = g.token_input("input_ids");
    let mask = g.token_input("attention_mask");
    let token_types = g.token_input("token_type_ids");
    let words = g.embed("embed.words", &format!("{p}embeddings.word_embeddings.weight"), &ids, vocab, width)?;
    let pos = g.positions();
    let positions =
        g.embed("embed.positions", &format!("{p}embeddings.position_embeddings.weight"), &pos, max_pos, width)?;
    let typed = g.embed(
        "embed.token_types",
        &format!("{p}embeddings.token_type_embeddings.weight"),
        &token_types,
        types,
        width,
    )?;
    let sum = g.op("embed.sum", "add", &[&words, &positions], json!({}));
    let sum = g.op("embed.all", "add", &[&sum, &typed], json!({}));
    let x = g.layer_norm("embeddings", &sum, &format!("{p}embeddings.LayerNorm"), width, eps)?;
    let mut x = g.dropout("embeddings.dropout", &x, hidden.clone(), hidden_dropout);

    // The additive attention mask: 0 where attended (any nonzero mask value), the lowest f32 where
    // masked, as transformers builds it from a 0/1 mask.
    let zero = g.op("mask.zero", "constant", &[], json!({"dtype": "i64", "value": 0}));
    let attended = g.op("mask.attended", "compare", &[&mask, &zero], json!({"dir": "ne"}));
    let m = g.op("mask.f32", "cast", &[&attended], json!({"to": "f32"}));
    let open = g.scalar("mask.open", 0.0);
    let lowest = g.scalar("mask.lowest", f32::MIN as f64);
    let bias = g.op("mask.bias", "where", &[&attended, &open, &lowest], json!({}));
    let bias = g.op("mask.bhqk", "reshape", &[&bias], json!({"shape": ["batch", 1, 1, "seq"]}));

    for i in 0..layers {
        let l = format!("{p}encoder.layer.{i}");
        let n = format!("layer{i}");
        let proj = |g: &mut Graph, what: &str| -> Result<String, Error> {
            let y =
                g.dense(&format!("{n}.{what}"), &x, 3, &format!("{l}.attention.self.{what}"), [width, width], true)?;
            Ok(g.split_heads(&format!("{n}.{what}.heads"), &y, nh, hd))
        };
        let (q, k, v) = (proj(g, "query")?, proj(g, "key")?, proj(g, "value")?);
        let a = g.attention(&format!("{n}.attention"), &q, &k, &v, Some(&bias), false, nh, hd, attention_dropout);
        let a = g.merge_heads(&format!("{n}.attention.merged"), &a, width);
        let o = g.dense(
            &format!("{n}.attention.out"),
            &a,
            3,
            &format!("{l}.attention.output.dense"),
            [width, width],
            true,
        )?;
        let o = g.dropout(&format!("{n}.attention.dropout"), &o, hidden.clone(), hidden_dropout);
        let r = g.op(&format!("{n}.attention.residual"), "add", &[&o, &x], json!({}));
        x = g.layer_norm(&format!("{n}.attention.norm"), &r, &format!("{l}.attention.output.LayerNorm"), width, eps)?;
        let h =
            g.dense(&format!("{n}.intermediate"), &x, 3, &format!("{l}.intermediate.dense"), [width, inner], true)?;
        let h = g.op(&format!("{n}.intermediate.act"), act, &[&h], json!({}));
        let o = g.dense(&format!("{n}.output"), &h, 3, &format!("{l}.output.dense"), [inner, width], true)?;
        let o = g.dropout(&format!("{n}.output.dropout"), &o, hidden.clone(), hidden_dropout);
        let r = g.op(&format!("{n}.output.residual"), "add", &[&o, &x], json!({}));
        let out = if i + 1 == layers { "last_hidden_state".to_string() } else { format!("{n}.output.norm") };
        x = g.layer_norm(&out, &r, &format!("{l}.output.LayerNorm"), width, eps)?;
    }
    let last = x;
    g.output(&last);
    if c.has(&format!("{p}pooler.dense.weight")) {
        // tanh(dense(first token)).
        let first = g.op("pooler.first", "slice", &[&last], json!({"starts": [0], "ends": [1], "axes": [1]}));
        let first = g.op("pooler.cls", "reshape", &[&first], json!({"shape": ["batch", width]}));
        let d = g.dense("pooler.dense", &first, 2, &format!("{p}pooler.dense"), [width, width], true)?;
        let pooled = g.op("pooler_output", "tanh", &[&d], json!({}));
        g.output(&pooled);
        if classifier {
            let labels = match options.head {
                Some(head) if !c.has("classifier.weight") => {
                    // transformers' _init_weights: normal(0, initializer_range), zero bias.
                    let std = c.f64_or("initializer_range", 0.02)?;
                    let mut rng = xlac_core::rng::Rng::new(head.seed, 0);
                    let w = (0..head.labels * width).map(|_| rng.normal() * std).collect();
                    g.new_weight("classifier.weight", &[head.labels, width], w);
                    g.new_weight("classifier.bias", &[head.labels], vec![0.0; head.labels as usize]);
                    head.labels
                }
                Some(head) if c.tensor_dim("classifier.weight", 0)? != head.labels => {
                    return Err(c.tensor_error(
                        "classifier.weight",
                        format!(
                            "the checkpoint's head has {} labels, not the {} asked for",
                            c.tensor_dim("classifier.weight", 0)?,
                            head.labels
                        ),
                    ));
                }
                _ => c.tensor_dim("classifier.weight", 0)?,
            };
            let rate = g.dropout_rate(&["classifier_dropout", "hidden_dropout_prob"])?;
            let pooled = g.dropout("classifier.dropout", &pooled, json!(["batch", width]), rate);
            let logits = g.dense("logits", &pooled, 2, "classifier", [width, labels], true)?;
            g.output(&logits);
        }
    } else if classifier {
        return Err(
            c.tensor_error(&format!("{p}pooler.dense.weight"), "missing: the classifier reads the pooler".into())
        );
    }
    if options.pooling == Pooling::Mean {
        let w = g.op("pool.mask", "reshape", &[&m], json!({"shape": ["batch", "seq", 1]}));
        let masked = g.op("pool.masked", "mul", &[&last, &w], json!({}));
        let total = g.op("pool.sum", "reduce_sum", &[&masked], json!({"axes": [1]}));
        let count = g.op("pool.count", "reduce_sum", &[&w], json!({"axes": [1]}));
        let floor = g.scalar("pool.min_count", 1e-9);
        let count = g.op("pool.count.clamped", "max", &[&count, &floor], json!({}));
        let mean = g.op("pool.mean", "div", &[&total, &count], json!({}));
        let sq = g.op("pool.sq", "mul", &[&mean, &mean], json!({}));
        let ss = g.op("pool.sumsq", "reduce_sum", &[&sq], json!({"axes": [1], "keepdims": true}));
        let norm = g.op("pool.norm", "sqrt", &[&ss], json!({}));
        let eps = g.scalar("pool.min_norm", 1e-12);
        let norm = g.op("pool.norm.clamped", "max", &[&norm, &eps], json!({}));
        let e = g.op("sentence_embedding", "div", &[&mean, &norm], json!({}));
        g.output(&e);
    }
    Ok(())
}
