//! Pipeline parallelism's cut: a module split, along its execution order,
//! into stages that run one after another, each on its own device.
//!
//! Stage `s` is a module of its own: its inputs are the model inputs its
//! nodes read and the values earlier stages computed that it reads (each
//! named by [`Source`]); its parameters are the weights its nodes read; its
//! outputs are the values later stages read and the model outputs it
//! computes; each is lowered to StableHLO on its own. Running the stages in order, each fed as its sources say,
//! computes what the whole module computes.
//!
//! Where to cut: at layer boundaries where the model has repeated layers
//! (nodes named `layerN.…`, as the Hugging Face import names them), else
//! between any two nodes; the cuts balance the stages' floating-point work
//! ([`crate::plan::node_flops`]), and among the positions within 5% of the
//! balanced one, take the one where the fewest bytes cross.

use crate::backend::stablehlo::{lower, Lowered};
use crate::error::{Diagnostic, Error};
use crate::ir::{Module, Value, ValueDef};
use crate::plan::node_flops;
use std::collections::HashMap;

/// Where a stage input's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The model's input of this index.
    Input(usize),
    /// Output `output` of stage `stage` (an earlier one).
    Stage { stage: usize, output: usize },
}

/// One stage: its module, its lowering, and for each of its inputs, the value's source.
#[derive(Clone, Debug)]
pub struct Stage {
    pub module: Module,
    pub lowered: Lowered,
    pub sources: Vec<Source>,
    /// Its nodes' floating-point operations.
    pub flops: f64,
}

/// A module cut into stages.
#[derive(Clone, Debug)]
pub struct Cut {
    pub stages: Vec<Stage>,
    /// For each model output: (stage, output of that stage).
    pub outputs: Vec<(usize, usize)>,
}

/// A module split into stages, not yet lowered: per stage its module and
/// its inputs' sources, and for each model output (stage, output).
#[derive(Clone, Debug)]
pub struct Split {
    pub stages: Vec<(Module, Vec<Source>)>,
    pub outputs: Vec<(usize, usize)>,
}

fn invalid(message: String) -> Error {
    Error::Invalid { origin: "pipeline".into(), diagnostics: vec![Diagnostic::new("--pipeline", message)] }
}

/// The layer index of a node named `layerN.…`.
fn layer(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("layer")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    rest[digits.len()..].starts_with('.').then(|| digits.parse().ok()).flatten()
}

/// Cuts `m` into `count` stages: before the nodes named in `starts` (the
/// first node of every stage but the first, in order), else where the
/// module documentation says.
pub fn cut(m: &Module, count: usize, starts: &[String]) -> Result<Cut, Error> {
    let Split { stages, outputs } = split(m, count, starts)?;
    let stages = stages
        .into_iter()
        .map(|(module, sources)| {
            let lowered = lower(&module);
            let flops = module.order().iter().map(|&n| node_flops(&module, n).0).sum();
            Stage { module, lowered, sources, flops }
        })
        .collect();
    Ok(Cut { stages, outputs })
}

/// [`cut`] without lowering the stages.
pub fn split(m: &Module, count: usize, starts: &[String]) -> Result<Split, Error> {
    let order = m.order();
    if count == 0 {
        return Err(invalid("a pipeline has at least one stage".into()));
    }
    let cuts = if starts.is_empty() {
        balanced(m, count)?
    } else {
        if starts.len() + 1 != count {
            return Err(invalid(format!("--stages names {} first nodes for {count} stages", starts.len())));
        }
        let mut cuts = Vec::new();
        for name in starts {
            let p = order
                .iter()
                .position(|&n| m.node(n).name == *name)
                .ok_or_else(|| invalid(format!("--stages: no node is named `{name}`")))?;
            if p == 0 || cuts.last().is_some_and(|&last| p <= last) {
                return Err(invalid(format!("--stages: `{name}` does not start a stage after the previous one")));
            }
            cuts.push(p);
        }
        cuts
    };
    // Stage s runs the nodes at positions bounds[s]..bounds[s + 1] of the order.
    let bounds: Vec<usize> = std::iter::once(0).chain(cuts).chain(std::iter::once(order.len())).collect();
    let segment = |s: usize| &order[bounds[s]..bounds[s + 1]];
    // Each node result's stage; the values each stage reads.
    let mut owner: HashMap<Value, usize> = HashMap::new();
    for s in 0..count {
        owner.extend(segment(s).iter().map(|&n| (m.node(n).output, s)));
    }
    let model_outputs: Vec<Value> = m.outputs().iter().map(|&o| m.resolve(o)).collect();
    // The values each stage hands on: read by a later stage, or a model output.
    let mut handed: Vec<Vec<Value>> = vec![Vec::new(); count];
    let hand = |v: Value, handed: &mut Vec<Vec<Value>>| {
        if let Some(&s) = owner.get(&v) {
            if !handed[s].contains(&v) {
                handed[s].push(v);
            }
        }
    };
    for s in 0..count {
        for &n in segment(s) {
            for &x in &m.node(n).inputs {
                let x = m.resolve(x);
                if owner.get(&x).is_some_and(|&t| t < s) {
                    hand(x, &mut handed);
                }
            }
        }
    }
    for &o in &model_outputs {
        hand(o, &mut handed);
    }
    let mut stages = Vec::with_capacity(count);
    for s in 0..count {
        let mut module = Module::new(format!("{}.stage{s}", m.name));
        let mut sources = Vec::new();
        let mut map: HashMap<Value, Value> = HashMap::new();
        for &n in segment(s) {
            for &x in &m.node(n).inputs {
                let x = m.resolve(x);
                if map.contains_key(&x) || owner.get(&x) == Some(&s) {
                    continue;
                }
                let data = m.value(x);
                let local = match data.def {
                    ValueDef::Param(_) => {
                        let source = m.params().iter().find(|p| p.value == x).map(|p| p.source.clone());
                        let source = source.expect("a parameter value is a parameter");
                        module.add_param(data.name.clone(), data.ty.clone(), source)
                    }
                    _ => {
                        let source = match owner.get(&x) {
                            Some(&t) => Source::Stage {
                                stage: t,
                                output: handed[t].iter().position(|&v| v == x).expect("handed on"),
                            },
                            None => Source::Input(m.inputs().iter().position(|&i| i == x).expect("a model input")),
                        };
                        sources.push(source);
                        module.add_input(data.name.clone(), data.ty.clone())
                    }
                };
                map.insert(x, local);
            }
            let d = m.node(n);
            let inputs = d.inputs.iter().map(|&x| map[&m.resolve(x)]).collect();
            let out = m.value(d.output);
            let v = module.append_node(d.name.clone(), d.op.clone(), inputs, out.name.clone(), out.ty.clone());
            map.insert(d.output, v);
        }
        for (k, &v) in handed[s].iter().enumerate() {
            module.add_output(map[&v]);
            module.set_output_name(k, m.value(v).name.clone());
        }
        crate::ir::verify::verify(&module, &format!("pipeline stage {s}"))?;
        stages.push((module, sources));
    }
    let mut outputs = Vec::new();
    for &o in &model_outputs {
        let s = *owner.get(&o).ok_or_else(|| {
            invalid(format!(
                "the model returns `{}`, an input or weight, not a value its nodes compute",
                m.value(o).name
            ))
        })?;
        outputs.push((s, handed[s].iter().position(|&v| v == o).expect("a model output is handed on")));
    }
    Ok(Split { stages, outputs })
}

/// The `count - 1` positions (indices into the execution order) before
/// which the stages start.
fn balanced(m: &Module, count: usize) -> Result<Vec<usize>, Error> {
    let order = m.order();
    let cost: Vec<f64> = order.iter().map(|&n| node_flops(m, n).0).collect();
    let mut prefix = vec![0.0; order.len() + 1];
    for (i, c) in cost.iter().enumerate() {
        prefix[i + 1] = prefix[i] + c;
    }
    let total = prefix[order.len()];
    let layers: Vec<Option<u64>> = order.iter().map(|&n| layer(&m.node(n).name)).collect();
    let repeated = layers.iter().flatten().max().is_some_and(|&l| l >= 1);
    // Positions a stage may start at: between layers when the model has them.
    let candidates: Vec<usize> = (1..order.len())
        .filter(|&p| !repeated || (layers[p] != layers[p - 1] && (layers[p].is_some() || layers[p - 1].is_some())))
        .collect();
    if candidates.len() + 1 < count {
        let what = if repeated { "layer boundaries" } else { "positions between nodes" };
        return Err(invalid(format!(
            "the model has {} {what}: it cannot be cut into {count} stages",
            candidates.len()
        )));
    }
    let crossing = |p: usize| crossing_bytes(m, p);
    let mut cuts: Vec<usize> = Vec::new();
    for k in 1..count {
        let target = total * k as f64 / count as f64;
        let after = cuts.last().copied().unwrap_or(0);
        // Leave room for the stages still to come.
        let open: Vec<usize> = candidates.iter().copied().filter(|&p| p > after).collect();
        let open = &open[..open.len() - (count - 1 - k)];
        let distance = |p: usize| (prefix[p] - target).abs();
        let closest = open.iter().copied().min_by(|&a, &b| distance(a).total_cmp(&distance(b))).expect("a candidate");
        let near: Vec<usize> =
            open.iter().copied().filter(|&p| distance(p) <= distance(closest) + 0.05 * total).collect();
        let best = if repeated {
            closest
        } else {
            near.into_iter().min_by_key(|&p| (crossing(p), (distance(p) * 1e-3) as u64)).unwrap_or(closest)
        };
        cuts.push(best);
    }
    Ok(cuts)
}

/// The bytes of node results made before position `p` and read at or after it.
fn crossing_bytes(m: &Module, p: usize) -> u64 {
    let order = m.order();
    let before: std::collections::HashSet<Value> = order[..p].iter().map(|&n| m.node(n).output).collect();
    let mut crossing: std::collections::HashSet<Value> = std::collections::HashSet::new();
    for &n in &order[p..] {
        crossing.extend(m.node(n).inputs.iter().map(|&x| m.resolve(x)).filter(|x| before.contains(x)));
    }
    crossing.extend(m.outputs().iter().map(|&o| m.resolve(o)).filter(|o| before.contains(o)));
    crossing.iter().map(|&v| m.value(v).ty.size_bytes()).sum()
}

#[cfg(test)]
mod tests {
    use super::layer;

    #[test]
    fn layer_indices_come_from_node_names() {
        assert_eq!(layer("layer3.attention.q"), Some(3));
        assert_eq!(layer("layer12.x"), Some(12));
        assert_eq!(layer("layers.x"), None);
        assert_eq!(layer("embeddings"), None);
    }
}
