//! Reverse-mode automatic differentiation on the IR.
//!
//! [`grad`] takes a module with a scalar float output (the loss) and returns
//! the same module with one more output per differentiated value: the
//! gradient of the loss with respect to it, named `grad.NAME`. The backward
//! nodes are appended after the forward ones and reuse the forward values
//! (no recomputation, except the attention probabilities and a linear
//! layer's pre-activation, which the fused ops do not expose, and, with
//! [`GradOptions::remat`], whole layers or everything). Each op's
//! vector-Jacobian product is one arm of [`vjp::vjp`], an exhaustive match
//! like inference, the interpreter and the lowering. Integer and boolean
//! values carry no gradient; neither does anything behind `stop_gradient`.
//!
//! The tests check every rule against central finite differences in f64 on
//! the reference interpreter, and the interpreter's gradients against XLA's.

mod vjp;

use crate::error::{Diagnostic, Error};
use crate::ir::builder::Builder;
use crate::ir::{Module, Node, Value, ValueDef};
use std::collections::HashMap;

/// What to differentiate: the loss output and the values to differentiate it by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GradOptions {
    /// The name of the loss output (a float scalar); `None`: the module's only float scalar output.
    pub loss: Option<String>,
    /// The inputs or parameters to differentiate by, by name; empty: every float parameter.
    pub wrt: Vec<String>,
    /// What the backward pass recomputes instead of reading from the forward.
    pub remat: Remat,
}

/// Rematerialization: segments of the forward computed again in the
/// backward pass from their inputs, their backward reading the recomputed
/// values, so the forward's activations inside a segment die when the
/// forward moves on; only the values crossing into a segment are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Remat {
    /// Nothing is recomputed.
    #[default]
    None,
    /// Each transformer layer: the nodes named `layer{N}.…`, as xlac's
    /// Hugging Face imports name a layer's.
    Layers,
    /// Everything: each layer, and each run of nodes between layers (the
    /// embeddings, the head and loss; for a model without layers, the whole
    /// forward) as one segment.
    Full,
}

impl Remat {
    /// The command-line name: none, layers or full.
    pub fn name(self) -> &'static str {
        match self {
            Remat::None => "none",
            Remat::Layers => "layers",
            Remat::Full => "full",
        }
    }
}

impl std::str::FromStr for Remat {
    type Err = String;
    fn from_str(s: &str) -> Result<Remat, String> {
        [Remat::None, Remat::Layers, Remat::Full]
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown rematerialization `{s}` (expected none, layers or full)"))
    }
}

/// `m` with the gradient of its loss output with respect to each value
/// `options` names appended as outputs `grad.NAME`, in the order named
/// (parameters in module order by default). A value the loss does not
/// depend on gets a zero gradient.
pub fn grad(m: &Module, options: &GradOptions) -> Result<Module, Error> {
    let invalid = |location: &str, message: String| Error::Invalid {
        origin: "grad".into(),
        diagnostics: vec![Diagnostic::new(location, message)],
    };
    let loss = loss_output(m, options).map_err(|e| invalid("loss", e))?;
    let wrt = differentiated(m, options).map_err(|e| invalid("wrt", e))?;
    let mut out = m.clone();
    let rule = |d: Diagnostic| Error::Invalid { origin: "grad".into(), diagnostics: vec![d] };
    let segments = segments(m, options.remat);
    let adjoints = backward(&mut out, loss, &wrt, &segments).map_err(rule)?;
    let mut b = Builder::new(&mut out);
    for &v in &wrt {
        let g = match adjoints.get(&v) {
            Some(&g) => g,
            None => {
                let ty = b.ty(v);
                b.zeros(ty.dtype, &ty.shape).map_err(|e| rule(Diagnostic::new("zero gradient", e)))?
            }
        };
        let name = format!("grad.{}", b.m.value(v).name);
        b.m.add_output(g);
        let i = b.m.outputs().len() - 1;
        b.m.set_output_name(i, name);
    }
    crate::ir::verify::verify(&out, "after grad")?;
    Ok(out)
}

/// The pullback of `m` (its vector-Jacobian product as a module): `m`'s
/// inputs and parameters, then one cotangent input `ct.NAME` per float
/// output `NAME`; its outputs, `grad.W` for each `W` of `wrt` (inputs or
/// parameters, by name): the gradient of `Σ_k ⟨output_k, ct_k⟩`, which is
/// each output's cotangent carried back to `W`. What a pipeline stage's
/// backward pass computes from the cotangents the next stage sends back.
pub fn pullback(m: &Module, wrt: &[String]) -> Result<Module, Error> {
    let invalid = |message: String| Error::Invalid {
        origin: "pullback".into(),
        diagnostics: vec![Diagnostic::new(m.name.clone(), message)],
    };
    let mut out = m.clone();
    let outputs: Vec<(Value, String)> = m
        .outputs()
        .iter()
        .zip(m.output_names())
        .filter(|(&v, _)| m.value(m.resolve(v)).ty.dtype.is_float())
        .map(|(&v, n)| (m.resolve(v), n.clone()))
        .collect();
    if outputs.is_empty() {
        return Err(invalid("no float output to carry a cotangent".into()));
    }
    let mut total: Option<Value> = None;
    for (v, name) in outputs {
        let ty = out.value(v).ty.clone();
        let ct = out.add_input(out.fresh_name(&format!("ct.{name}")), ty.clone());
        let mut b = Builder::new(&mut out);
        let product = b.mul(v, ct).map_err(invalid)?;
        let mut inner = b.sum(product, (0..ty.rank()).collect(), false).map_err(invalid)?;
        if ty.dtype != crate::ir::dtype::DType::F32 {
            inner = b.cast(inner, crate::ir::dtype::DType::F32).map_err(invalid)?;
        }
        total = Some(match total {
            Some(t) => b.add(t, inner).map_err(invalid)?,
            None => inner,
        });
    }
    out.clear_outputs();
    out.add_output(total.expect("at least one float output"));
    let loss = out.fresh_name("pullback.inner");
    out.set_output_name(0, loss.clone());
    let mut g = grad(&out, &GradOptions { loss: Some(loss), wrt: wrt.to_vec(), remat: Remat::None })?;
    // Only the gradients.
    let grads: Vec<(Value, String)> =
        g.outputs().iter().zip(g.output_names()).skip(1).map(|(&v, n)| (v, n.clone())).collect();
    g.clear_outputs();
    for (i, (v, name)) in grads.into_iter().enumerate() {
        g.add_output(v);
        g.set_output_name(i, name);
    }
    crate::ir::verify::verify(&g, "after pullback")?;
    Ok(g)
}

/// The loss: the named output, or the only float scalar output.
fn loss_output(m: &Module, options: &GradOptions) -> Result<Value, String> {
    let is_loss = |v: Value| m.value(v).ty.rank() == 0 && m.value(v).ty.dtype.is_float();
    let outputs = m.output_names().iter().zip(m.outputs());
    match &options.loss {
        Some(name) => {
            let (_, &v) = outputs.clone().find(|(n, _)| *n == name).ok_or_else(|| {
                let names: Vec<&str> = m.output_names().iter().map(String::as_str).collect();
                format!("the model has no output `{name}` (outputs: {})", names.join(", "))
            })?;
            if !is_loss(v) {
                return Err(format!("output `{name}` is {}; a loss is a float scalar", m.value(v).ty));
            }
            Ok(v)
        }
        None => {
            let scalars: Vec<(&String, &Value)> = outputs.filter(|(_, &v)| is_loss(v)).collect();
            match scalars.as_slice() {
                [(_, &v)] => Ok(v),
                [] => Err("the model has no float scalar output to differentiate; add a loss".into()),
                many => Err(format!(
                    "the model has {} float scalar outputs ({}); name the loss",
                    many.len(),
                    many.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                )),
            }
        }
    }
}

/// The values to differentiate by: the named inputs and parameters, or every float parameter.
fn differentiated(m: &Module, options: &GradOptions) -> Result<Vec<Value>, String> {
    let candidates: Vec<Value> = m.inputs().iter().copied().chain(m.params().iter().map(|p| p.value)).collect();
    if options.wrt.is_empty() {
        return Ok(m.params().iter().map(|p| p.value).filter(|&v| m.value(v).ty.dtype.is_float()).collect());
    }
    options
        .wrt
        .iter()
        .map(|name| {
            let v = candidates
                .iter()
                .copied()
                .find(|&v| m.value(v).name == *name)
                .ok_or_else(|| format!("`{name}` is not an input or parameter of the model"))?;
            if !m.value(v).ty.dtype.is_float() {
                return Err(format!("`{name}` is {}: only floats have gradients", m.value(v).ty));
            }
            Ok(v)
        })
        .collect()
}

/// The segment each recomputed node belongs to: a layer's nodes (named
/// `layer{N}.…`) are segment N; under [`Remat::Full`], each run of other
/// nodes between layers is a segment of its own, numbered from 2⁶³.
fn segments(m: &Module, remat: Remat) -> HashMap<Node, u64> {
    let layer = |n: Node| -> Option<u64> { m.node(n).name.strip_prefix("layer")?.split_once('.')?.0.parse().ok() };
    let mut segments = HashMap::new();
    let mut run = 1u64 << 63;
    let mut in_layer = false;
    for &n in m.order() {
        match (layer(n), remat) {
            (_, Remat::None) => {}
            (Some(l), _) => {
                segments.insert(n, l);
                in_layer = true;
            }
            (None, Remat::Layers) => {}
            (None, Remat::Full) => {
                if in_layer {
                    run += 1;
                    in_layer = false;
                }
                segments.insert(n, run);
            }
        }
    }
    segments
}

/// Recomputes the nodes of one layer (`nodes`, in forward order) after the
/// adjoints of its results are known, for its backward pass to read: every
/// float activation it takes from outside gets [`Builder::zero_after`] the
/// adjoints, which leaves each value bit for bit as it is but makes the
/// recomputation wait for the backward pass and differ, to XLA's CSE, from
/// the forward. Returns the map from each original value to its recomputation.
fn recompute(
    b: &mut Builder,
    nodes: &[Node],
    adjoints: &HashMap<Value, Value>,
) -> Result<HashMap<Value, Value>, String> {
    let cotangents: Vec<Value> = nodes.iter().filter_map(|&n| adjoints.get(&b.m.node(n).output).copied()).collect();
    let Some(minus_zero) = b.zero_after(&cotangents)? else { return Ok(HashMap::new()) };
    let mut map: HashMap<Value, Value> = HashMap::new();
    for &n in nodes {
        let node = b.m.node(n).clone();
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for &x in &node.inputs {
            let x = b.m.resolve(x);
            let mapped = match map.get(&x) {
                Some(&y) => y,
                None if matches!(b.m.value(x).def, ValueDef::Node(_)) && b.ty(x).dtype.is_float() => {
                    let offset = b.cast_like(minus_zero, x)?;
                    let y = b.add(x, offset)?;
                    map.insert(x, y);
                    y
                }
                None => x,
            };
            inputs.push(mapped);
        }
        let y = b.op(node.op.clone(), &inputs)?;
        map.insert(node.output, y);
    }
    Ok(map)
}

/// Propagates the loss's cotangent (1) backwards through every node the
/// loss depends on and `wrt` feeds; returns each reached value's adjoint.
/// The nodes of a layer in `segments` are differentiated through their
/// recomputation (see [`recompute`]).
fn backward(
    m: &mut Module,
    loss: Value,
    wrt: &[Value],
    segments: &HashMap<Node, u64>,
) -> Result<HashMap<Value, Value>, Diagnostic> {
    let order = m.order().to_vec();
    // Which values depend on a differentiated value (only those need adjoints).
    let mut varies = vec![false; m.num_values()];
    for &v in wrt {
        varies[v.index()] = true;
    }
    for &n in &order {
        let node = m.node(n);
        varies[node.output.index()] = node.inputs.iter().any(|&i| varies[m.resolve(i).index()]);
    }
    let mut b = Builder::new(m);
    let mut adjoints: HashMap<Value, Value> = HashMap::new();
    let seed = b.scalar(1.0, b.ty(loss).dtype).map_err(|e| Diagnostic::new("loss", e))?;
    adjoints.insert(loss, seed);
    // The recomputed values of the layer being differentiated.
    let mut recomputed: (Option<u64>, HashMap<Value, Value>) = (None, HashMap::new());
    for &n in order.iter().rev() {
        let node = b.m.node(n).clone();
        if let Some(&layer) = segments.get(&n) {
            if recomputed.0 != Some(layer) {
                let nodes: Vec<Node> = order.iter().copied().filter(|k| segments.get(k) == Some(&layer)).collect();
                let map = recompute(&mut b, &nodes, &adjoints)
                    .map_err(|e| Diagnostic::new(format!("recomputing layer {layer}"), e))?;
                recomputed = (Some(layer), map);
            }
        }
        let Some(&g) = adjoints.get(&node.output) else { continue };
        if !varies[node.output.index()] {
            continue;
        }
        let inputs: Vec<Value> = node.inputs.iter().map(|&i| b.m.resolve(i)).collect();
        let at = format!("node `{}` ({})", node.name, node.op.name());
        // Inside a rematerialized layer the rule reads the recomputed values;
        // the cotangents still go to the original ones.
        let again = |v: Value| *recomputed.1.get(&v).unwrap_or(&v);
        let (rule_inputs, rule_output) = match segments.contains_key(&n) {
            true => (inputs.iter().map(|&v| again(v)).collect::<Vec<_>>(), again(node.output)),
            false => (inputs.clone(), node.output),
        };
        let cotangents =
            vjp::vjp(&mut b, &node.op, &rule_inputs, rule_output, g).map_err(|e| Diagnostic::new(&at, e))?;
        for (x, ct) in inputs.iter().zip(cotangents) {
            let Some(ct) = ct else { continue };
            if !varies[x.index()] || !b.ty(*x).dtype.is_float() {
                continue;
            }
            let ct = b.cast_like(ct, *x).map_err(|e| Diagnostic::new(&at, e))?;
            let sum = match adjoints.get(x) {
                Some(&acc) => b.add(acc, ct).map_err(|e| Diagnostic::new(&at, e))?,
                None => ct,
            };
            adjoints.insert(*x, sum);
        }
    }
    Ok(adjoints)
}
