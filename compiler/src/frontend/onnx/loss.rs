//! The loss operators: NegativeLogLikelihoodLoss, and SoftmaxCrossEntropyLoss
//! (a log-softmax over the classes, then the same loss). Each target picks
//! its class's value along axis 1 (a gather from the flattened input), is
//! weighted by its class's weight and dropped where it is `ignore_index`;
//! `mean` divides by the weights kept, as ONNX and PyTorch define it.

use serde_json::json;
use xlac_core::DType;

use super::ops::Res;
use super::tensor::Dim;
use super::{bad, Importer, Node, Problem, Rt, Val};

impl Importer<'_> {
    /// NegativeLogLikelihoodLoss: `input` [N, C, d…] of log-probabilities, `target` [N, d…].
    pub(super) fn nll_loss(&mut self, n: &Node) -> Res {
        let input = self.rt_input(n, 0)?;
        let target = self.rt_input(n, 1)?;
        let weight = self.optional_rt(n, 2)?;
        Ok(vec![Val::Rt(self.weighted_nll(n, &input, &target, weight.as_ref())?)])
    }

    /// SoftmaxCrossEntropyLoss: the loss of `log_softmax(scores)` over axis
    /// 1, and that log-probability as an optional second output.
    pub(super) fn softmax_cross_entropy(&mut self, n: &Node) -> Res {
        let scores = self.rt_input(n, 0)?;
        let labels = self.rt_input(n, 1)?;
        let weight = self.optional_rt(n, 2)?;
        if scores.shape.len() < 2 {
            return bad(format!("scores of rank {}, expected [N, C, ...]", scores.shape.len()));
        }
        let log_prob = self.emit("log_softmax", &[&scores], json!({"axis": 1}), scores.dtype, scores.shape.clone());
        let loss = self.weighted_nll(n, &log_prob, &labels, weight.as_ref())?;
        Ok(vec![Val::Rt(loss), Val::Rt(log_prob)])
    }

    fn weighted_nll(&mut self, n: &Node, input: &Rt, target: &Rt, weight: Option<&Rt>) -> Result<Rt, Problem> {
        let reduction = n.string("reduction", "mean");
        if !matches!(reduction.as_str(), "none" | "sum" | "mean") {
            return bad(format!("reduction `{reduction}`, expected none, sum or mean"));
        }
        let mut want = input.shape.clone();
        if want.len() < 2 {
            return bad(format!("input of rank {}, expected [N, C, ...]", want.len()));
        }
        want.remove(1);
        if target.shape != want || target.dtype.is_float() || target.dtype == DType::Bool {
            return bad(format!("target is {}{:?}, expected integers of shape {want:?}", target.dtype, target.shape));
        }
        let t = self.cast(target, DType::I64);
        let kept = match n.attr("ignore_index") {
            Some(a) => {
                let ii = self.scalar(DType::I64, a.i as f64);
                Some(self.compare("ne", &t, &ii)?)
            }
            None => None,
        };
        // An ignored target picks class 0, whose value its zero weight drops.
        let safe = match &kept {
            Some(k) => {
                let zero = self.scalar(DType::I64, 0.0);
                self.emit("where", &[k, &t, &zero], json!({}), DType::I64, t.shape.clone())
            }
            None => t,
        };
        let mut column = safe.shape.clone();
        column.insert(1, Dim::size(1));
        let at = self.reshape(&safe, column)?;
        let (flat_input, flat) = self.flat_positions(input, &at, 1)?;
        let picked = self.emit("gather", &[&flat_input, &flat], json!({"axis": 0}), input.dtype, at.shape.clone());
        let picked = self.reshape(&picked, safe.shape.clone())?;
        let mut w = match weight {
            Some(w) => self.emit("gather", &[w, &safe], json!({"axis": 0}), input.dtype, safe.shape.clone()),
            None => {
                let one = self.scalar(input.dtype, 1.0);
                let dims = super::ops::dims_json(&safe.shape)?;
                self.emit("broadcast_to", &[&one], json!({"shape": dims}), input.dtype, safe.shape.clone())
            }
        };
        if let Some(k) = &kept {
            let zero = self.scalar(input.dtype, 0.0);
            w = self.emit("where", &[k, &w, &zero], json!({}), input.dtype, w.shape.clone());
        }
        let weighted = self.binary("mul", &picked, &w)?;
        let loss = self.unary("neg", &weighted);
        let all: Vec<usize> = (0..loss.shape.len()).collect();
        Ok(match reduction.as_str() {
            "none" => loss,
            "sum" => self.reduce("reduce_sum", &loss, &all, false),
            _ => {
                let total = self.reduce("reduce_sum", &loss, &all, false);
                let count = self.reduce("reduce_sum", &w, &all, false);
                self.binary("div", &total, &count)?
            }
        })
    }
}
