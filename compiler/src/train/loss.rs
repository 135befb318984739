//! Losses appended to a model, with PyTorch's semantics (mean reduction):
//! `torch.nn.functional.cross_entropy` (classes on the last axis, integer
//! labels, `ignore_index`, `label_smoothing`), `mse_loss`, and the causal
//! language-model loss of transformers (logits[:, :-1] against labels[:, 1:]).

use crate::ir::builder::{Builder, Built};
use crate::ir::op::{BinaryOp, CompareDir, Op, UnaryOp};
use crate::ir::Value;

/// A loss and its options.
#[derive(Clone, Debug, PartialEq)]
pub enum Loss {
    /// Cross-entropy of logits `[..., C]` against integer labels `[...]`;
    /// labels equal to `ignore_index` count for nothing, and the mean is over the others.
    CrossEntropy { ignore_index: i64, label_smoothing: f64 },
    /// Mean squared error against targets of the prediction's shape and dtype.
    Mse,
    /// Cross-entropy of each position's logits `[B, S, V]` against the next
    /// position's label (`labels[:, 1:]`, the input ids), as transformers' causal LM heads.
    CausalLm { ignore_index: i64 },
}

/// PyTorch's default `ignore_index`.
pub const IGNORE_INDEX: i64 = -100;

impl Loss {
    /// The name `--loss` takes.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::CrossEntropy { .. } => "cross-entropy",
            Loss::Mse => "mse",
            Loss::CausalLm { .. } => "causal-lm",
        }
    }

    /// Whether the labels are integer classes (else targets of the prediction's dtype).
    pub fn has_class_labels(&self) -> bool {
        !matches!(self, Loss::Mse)
    }
}

/// A loss as sums over a batch: `total / count` is the loss; `correct`
/// counts the examples whose largest logit is their label (class labels only).
pub struct Sums {
    pub total: Value,
    pub count: Value,
    pub correct: Option<Value>,
}

/// Appends the loss's sums of `pred` against `labels` (see [`Sums`]).
pub fn sums(b: &mut Builder, loss: &Loss, pred: Value, labels: Value) -> Result<Sums, String> {
    match loss {
        Loss::CrossEntropy { ignore_index, label_smoothing } => {
            cross_entropy(b, pred, labels, *ignore_index, *label_smoothing)
        }
        Loss::Mse => {
            let (pt, lt) = (b.ty(pred), b.ty(labels));
            if pt != lt {
                return Err(format!("mse compares a prediction {pt} with targets of the same type, found {lt}"));
            }
            let d = b.sub(pred, labels)?;
            let dd = b.mul(d, d)?;
            let total = b.sum(dd, (0..pt.rank()).collect(), false)?;
            let count = b.scalar(pt.num_elements() as f64, pt.dtype)?;
            Ok(Sums { total, count, correct: None })
        }
        Loss::CausalLm { ignore_index } => {
            let (pt, lt) = (b.ty(pred), b.ty(labels));
            if pt.rank() != 3 || lt.rank() != 2 || lt.shape[..] != pt.shape[..2] || pt.shape[1] < 2 {
                return Err(format!(
                    "the causal LM loss takes logits [batch, seq ≥ 2, vocab] and labels [batch, seq], found {pt} and {lt}"
                ));
            }
            let (bs, s, v) = (pt.shape[0], pt.shape[1], pt.shape[2]);
            let logits =
                b.op(Op::Slice { starts: vec![0, 0, 0], limits: vec![bs, s - 1, v], strides: vec![1, 1, 1] }, &[pred])?;
            let next = b.op(Op::Slice { starts: vec![0, 1], limits: vec![bs, s], strides: vec![1, 1] }, &[labels])?;
            cross_entropy(b, logits, next, *ignore_index, 0.0)
        }
    }
}

/// `F.cross_entropy(logits, labels, ignore_index, label_smoothing)` with the classes on the last axis, as sums.
fn cross_entropy(
    b: &mut Builder,
    logits: Value,
    labels: Value,
    ignore_index: i64,
    smoothing: f64,
) -> Result<Sums, String> {
    let (pt, lt) = (b.ty(logits), b.ty(labels));
    let r = pt.rank();
    if r == 0 || lt.shape[..] != pt.shape[..r - 1] || !lt.dtype.is_integer() {
        return Err(format!(
            "cross-entropy takes logits [..., classes] and integer labels [...] of the leading shape, found {pt} and {lt}"
        ));
    }
    if !(0.0..=1.0).contains(&smoothing) {
        return Err(format!("label smoothing must be in [0, 1], found {smoothing}"));
    }
    let classes = pt.shape[r - 1];
    let logp = b.op(Op::LogSoftmax { axis: r - 1 }, &[logits])?;
    // The label's log-probability: a one-hot of the labels against the class index.
    let class = b.op(Op::Iota { dtype: lt.dtype, shape: pt.shape.clone(), axis: r - 1 }, &[])?;
    let mut keep = lt.shape.clone();
    keep.push(1);
    let column = b.reshape(labels, &keep)?;
    let hit = b.compare(CompareDir::Eq, class, column)?;
    let picked = b.zero_where_not(hit, logp)?;
    let picked = b.sum(picked, vec![r - 1], false)?;
    let mut per = b.neg(picked)?;
    if smoothing > 0.0 {
        let all = b.sum(logp, vec![r - 1], false)?;
        let smooth = b.scale(all, -1.0 / classes as f64)?;
        let nll = b.scale(per, 1.0 - smoothing)?;
        let smooth = b.scale(smooth, smoothing)?;
        per = b.add(nll, smooth)?;
    }
    let ignore = b.scalar(ignore_index as f64, lt.dtype)?;
    let valid = b.compare(CompareDir::Ne, labels, ignore)?;
    let per = b.zero_where_not(valid, per)?;
    let all: Vec<usize> = (0..r - 1).collect();
    let total = b.sum(per, all.clone(), false)?;
    let counted = b.cast(valid, pt.dtype)?;
    let count = b.sum(counted, all.clone(), false)?;
    // Correct: the largest logit is the label (an ignored label never is).
    let guess = b.op(Op::ArgMax { axis: r - 1, keepdims: false }, &[logits])?;
    let guess = b.cast(guess, lt.dtype)?;
    let right = b.compare(CompareDir::Eq, guess, labels)?;
    let right = b.binary(BinaryOp::And, right, valid)?;
    let right = b.cast(right, pt.dtype)?;
    let correct = b.sum(right, all, false)?;
    Ok(Sums { total, count, correct: Some(correct) })
}

/// `√Σ x²` over every element of every value in `xs`, as a scalar of their dtype.
pub fn global_norm(b: &mut Builder, xs: &[Value]) -> Built {
    let total = squared_norm(b, xs)?;
    b.unary(UnaryOp::Sqrt, total)
}

/// `Σ x²` over every element of every value in `xs`, as a scalar of their dtype.
pub fn squared_norm(b: &mut Builder, xs: &[Value]) -> Built {
    let mut total: Option<Value> = None;
    for &x in xs {
        let xx = b.mul(x, x)?;
        let axes = (0..b.ty(x).rank()).collect();
        let s = b.sum(xx, axes, false)?;
        total = Some(match total {
            Some(t) => b.add(t, s)?,
            None => s,
        });
    }
    total.ok_or_else(|| "the norm of no value".into())
}
