//! Einsum as xlac's contractions: each operand's letters summed away where no
//! other operand or the output has them, pairs of operands contracted with
//! `dot` (shared letters the output keeps are batch dimensions), the result
//! transposed to the output's order.

use serde_json::json;

use super::ops::{concrete, Res};
use super::tensor::Dim;
use super::{bad, unsupported, Importer, Node, Problem, Rt, Val};

/// An operand with one letter per dimension.
#[derive(Clone)]
struct Labeled {
    value: Rt,
    letters: Vec<char>,
}

impl Importer<'_> {
    pub(super) fn einsum(&mut self, n: &Node) -> Res {
        let eq: String = n.string("equation", "").chars().filter(|c| !c.is_whitespace()).collect();
        if eq.contains("...") {
            return unsupported("Einsum with an ellipsis");
        }
        let (lhs, out) = match eq.split_once("->") {
            Some((l, o)) => (l.to_string(), Some(o.to_string())),
            None => (eq.clone(), None),
        };
        let terms: Vec<Vec<char>> = lhs.split(',').map(|t| t.chars().collect()).collect();
        if terms.len() != n.inputs() || terms.iter().flatten().any(|c| !c.is_ascii_alphabetic()) {
            return bad(format!("equation `{eq}` for {} inputs", n.inputs()));
        }
        // Implicit output: the letters used once, in alphabetical order.
        let out: Vec<char> = match out {
            Some(o) => o.chars().collect(),
            None => {
                let mut once: Vec<char> = terms
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|c| terms.iter().flatten().filter(|d| *d == c).count() == 1)
                    .collect();
                once.sort_unstable();
                once
            }
        };
        let mut ops = Vec::new();
        for (i, t) in terms.iter().enumerate() {
            let v = self.rt_input(n, i)?;
            if v.shape.len() != t.len() {
                return bad(format!(
                    "operand {i} has rank {}, the equation gives it {} letters",
                    v.shape.len(),
                    t.len()
                ));
            }
            if (1..t.len()).any(|k| t[..k].contains(&t[k])) {
                return unsupported("Einsum with a repeated letter in one operand (a diagonal)");
            }
            ops.push(Labeled { value: v, letters: t.clone() });
        }
        let mut acc = self.sum_unused(ops[0].clone(), &ops[1..], &out)?;
        for i in 1..ops.len() {
            let others: Vec<Labeled> = std::iter::once(acc.clone()).chain(ops[i + 1..].iter().cloned()).collect();
            let b = self.sum_unused(ops[i].clone(), &others, &out)?;
            let keep: Vec<char> =
                out.iter().chain(ops[i + 1..].iter().flat_map(|o| o.letters.iter())).copied().collect();
            acc = self.contract(&acc, &b, &keep)?;
        }
        let perm: Vec<usize> = out
            .iter()
            .map(|c| {
                acc.letters
                    .iter()
                    .position(|d| d == c)
                    .ok_or(Problem::Invalid(format!("output letter `{c}` is in no operand")))
            })
            .collect::<Result<_, _>>()?;
        if perm.len() != acc.letters.len() {
            return bad(format!("equation `{eq}` leaves letters the output does not name"));
        }
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(vec![Val::Rt(acc.value)]);
        }
        let shape = perm.iter().map(|&p| acc.value.shape[p].clone()).collect();
        let y = self.emit("transpose", &[&acc.value], json!({"perm": perm}), acc.value.dtype, shape);
        Ok(vec![Val::Rt(y)])
    }

    /// `x` summed over the letters neither `later` operands nor the output use.
    fn sum_unused(&mut self, x: Labeled, later: &[Labeled], out: &[char]) -> Result<Labeled, Problem> {
        let used = |c: &char| out.contains(c) || later.iter().any(|o| o.letters.contains(c));
        let axes: Vec<usize> = (0..x.letters.len()).filter(|&i| !used(&x.letters[i])).collect();
        if axes.is_empty() {
            return Ok(x);
        }
        let letters: Vec<char> = x.letters.iter().copied().filter(|c| used(c)).collect();
        let shape: Vec<Dim> =
            (0..x.letters.len()).filter(|i| !axes.contains(i)).map(|i| x.value.shape[i].clone()).collect();
        let v = self.emit("reduce_sum", &[&x.value], json!({"axes": axes, "keepdims": false}), x.value.dtype, shape);
        Ok(Labeled { value: v, letters })
    }

    /// `a · b` over their shared letters; shared letters in `keep` are batch dimensions.
    fn contract(&mut self, a: &Labeled, b: &Labeled, keep: &[char]) -> Result<Labeled, Problem> {
        let shared: Vec<char> = a.letters.iter().copied().filter(|c| b.letters.contains(c)).collect();
        let (batch, summed): (Vec<char>, Vec<char>) = shared.iter().partition(|c| keep.contains(c));
        let pos = |l: &Labeled, c: &char| l.letters.iter().position(|d| d == c).expect("a shared letter");
        for c in &shared {
            let (da, db) = (&a.value.shape[pos(a, c)], &b.value.shape[pos(b, c)]);
            if da != db {
                concrete(std::slice::from_ref(da))?;
                return bad(format!("letter `{c}` is {da} in one operand and {db} in the other"));
            }
        }
        let attrs = json!({
            "lhs_batch": batch.iter().map(|c| pos(a, c)).collect::<Vec<_>>(),
            "rhs_batch": batch.iter().map(|c| pos(b, c)).collect::<Vec<_>>(),
            "lhs_contract": summed.iter().map(|c| pos(a, c)).collect::<Vec<_>>(),
            "rhs_contract": summed.iter().map(|c| pos(b, c)).collect::<Vec<_>>(),
        });
        let free = |l: &Labeled| -> Vec<char> { l.letters.iter().copied().filter(|c| !shared.contains(c)).collect() };
        let letters: Vec<char> = batch.iter().copied().chain(free(a)).chain(free(b)).collect();
        let shape: Vec<Dim> = batch
            .iter()
            .map(|c| a.value.shape[pos(a, c)].clone())
            .chain(free(a).iter().map(|c| a.value.shape[pos(a, c)].clone()))
            .chain(free(b).iter().map(|c| b.value.shape[pos(b, c)].clone()))
            .collect();
        if a.value.dtype != b.value.dtype {
            return bad(format!("Einsum operands are {} and {}", a.value.dtype, b.value.dtype));
        }
        let v = self.emit("dot", &[&a.value, &b.value], attrs, a.value.dtype, shape);
        Ok(Labeled { value: v, letters })
    }
}
