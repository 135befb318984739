//! Weight folding: computations whose operands are only parameters (weights)
//! and constants are done at compile time, into new parameters. XLA cannot do
//! this itself: it sees parameters as runtime inputs. Typical cases are
//! transposed or cast weights, scaled weights, and batch norm after a
//! convolution or linear layer, which is first absorbed into that layer:
//!
//! | pattern | becomes |
//! | --- | --- |
//! | `conv2d(x, w, b) * s`, `s` weight-only, one value per output channel (or a scalar) | `conv2d(x, w·s, b·s)` |
//! | `conv2d(x, w, b) + t` or `- t`, `t` per channel | `conv2d(x, w, b ± t)` |
//! | `linear(x, w, b) * s`, `s` of shape `[N]` (or a scalar) | `linear(x, w·s, b·s)` |
//! | `linear(x, w, b) + t` or `- t`, `t` of shape `[N]` | `linear(x, w, b ± t)` |
//!
//! (the layer's output having no other user). A transpose or float cast of a
//! weight stored in a file becomes a view of the same tensor (`file ..
//! tensor .. transposed [1,0] as bf16`): nothing is read or copied at compile
//! time, and the runtime lays out and rounds the tensor while uploading it.
//! Then every weight-only node
//! that a runtime computation uses is evaluated by the reference interpreter
//! and replaced by an inline parameter, unless its result is larger (in
//! bytes) than its largest weight and either has more than 65,536 elements
//! (a broadcast would only grow the program's inputs) or has wider elements
//! than its narrowest weight (int8 or bf16 weights widened to f32 would undo
//! their narrow storage; and a model's programs that share one upload of its
//! weights, a generation's prefill and decode steps, must all read the narrow
//! weight, whatever its size). Parameters no longer used leave the signature.

use super::pattern::{commuted, def};
use crate::backend::interp::{eval_op, Data, Tensor};
use crate::ir::op::{BinaryOp, ConstData, Op};
use crate::ir::types::TensorType;
use crate::ir::{Module, Node, ParamSource, Value, ValueDef};
use std::collections::{HashMap, HashSet};
use xlac_core::safetensors::read_tensor;
use xlac_core::view::WeightView;

/// Results up to this many elements are always folded.
const SMALL: u64 = 1 << 16;

/// Absorbs scale/shift ops into convolutions and linear layers, folds
/// weight-only computations and drops unused parameters; returns how many
/// nodes were absorbed, viewed or folded.
pub fn run(m: &mut Module) -> usize {
    let mut rewrites = 0;
    // Computed once: values added by absorption are weight-only helpers, never candidates.
    let (weights, uses) = (weight_only(m), use_counts(m));
    for n in m.order().to_vec() {
        rewrites += usize::from(absorb(m, n, &weights, &uses));
    }
    m.apply_aliases();
    rewrites += views(m);
    m.apply_aliases();
    rewrites += fold(m);
    if rewrites > 0 {
        m.apply_aliases();
        super::dce::run(m);
        m.remove_unused_params();
    }
    rewrites
}

/// True for values computed from parameters and constants only.
fn weight_only(m: &Module) -> Vec<bool> {
    let mut w = vec![false; m.num_values()];
    for p in m.params() {
        w[p.value.index()] = true;
    }
    for &n in m.order() {
        let node = m.node(n);
        w[node.output.index()] = node.inputs.iter().all(|&i| w[m.resolve(i).index()]);
    }
    w
}

/// How many live nodes (and outputs) use each value.
fn use_counts(m: &Module) -> Vec<usize> {
    let mut c = vec![0; m.num_values()];
    for &n in m.order() {
        for &i in &m.node(n).inputs {
            c[m.resolve(i).index()] += 1;
        }
    }
    for &o in m.outputs() {
        c[m.resolve(o).index()] += 1;
    }
    c
}

/// Rewrites `layer(x, w, b) ⊙ s` at node `n` into `layer(x, w', b')`.
fn absorb(m: &mut Module, n: Node, weights: &[bool], uses: &[usize]) -> bool {
    let out = m.node(n).output;
    // (layer value, other operand, op) for the three arithmetic forms.
    let found = [BinaryOp::Mul, BinaryOp::Add]
        .into_iter()
        .find_map(|op| commuted(m, out, op, |l, s| is_absorbable(m, l, s, weights, uses).then_some((l, s, op))))
        .or_else(|| match def(m, out)? {
            (Op::Binary(BinaryOp::Sub), ins) if is_absorbable(m, ins[0], ins[1], weights, uses) => {
                Some((ins[0], ins[1], BinaryOp::Sub))
            }
            _ => None,
        });
    let Some((layer, s, op)) = found else { return false };
    let Some((layer_op, ins)) = def(m, layer).map(|(o, i)| (o.clone(), i)) else { return false };
    let is_conv = matches!(layer_op, Op::Conv2d { .. });
    let channels = m.value(ins[1]).ty.shape[if is_conv { 0 } else { 1 }];
    let dtype = m.value(out).ty.dtype;
    // Check the rewritten layer's type before adding any node.
    let (x_ty, w_ty) = (m.value(ins[0]).ty.clone(), m.value(ins[1]).ty.clone());
    let bias_ty = TensorType::new(dtype, vec![channels]);
    let has_bias = ins.len() == 3 || op != BinaryOp::Mul;
    let types: Vec<&TensorType> = [&x_ty, &w_ty].into_iter().chain(has_bias.then_some(&bias_ty)).collect();
    if crate::ir::infer::infer(&layer_op, &types).ok().as_ref() != Some(&m.value(out).ty) {
        return false;
    }
    // s as a scalar or a vector of the channels, and shaped to scale w.
    let s_elems = m.value(s).ty.num_elements();
    let vec_shape = if s_elems == 1 { vec![] } else { vec![channels] };
    // Helpers are named after the layer: `y.weight`, `y.bias`, …
    let base = m.node(n).name.clone();
    let sv = reshape(m, n, s, &vec_shape, &format!("{base}.factor"));
    let (w, b) = (ins[1], ins.get(2).copied());
    let (new_w, new_b) = match op {
        BinaryOp::Mul => {
            let w_shape = match (s_elems, is_conv) {
                (1, _) => vec![],
                (_, true) => vec![channels, 1, 1, 1],
                (_, false) => vec![1, channels],
            };
            let sw = reshape(m, n, s, &w_shape, &format!("{base}.weight_factor"));
            let w_ty = m.value(w).ty.clone();
            let new_w = binary(m, n, BinaryOp::Mul, w, sw, w_ty, &format!("{base}.weight"));
            let new_b = b.map(|b| {
                binary(m, n, BinaryOp::Mul, b, sv, TensorType::new(dtype, vec![channels]), &format!("{base}.bias"))
            });
            (new_w, new_b)
        }
        _ => {
            let shift = match op {
                BinaryOp::Sub => negate(m, n, sv, &format!("{base}.shift")),
                _ => sv,
            };
            let shift = broadcast(m, n, shift, &[channels], &format!("{base}.shift"));
            let new_b = match b {
                Some(b) => binary(m, n, BinaryOp::Add, b, shift, bias_ty.clone(), &format!("{base}.bias")),
                None => shift,
            };
            (w, Some(new_b))
        }
    };
    let mut inputs = vec![ins[0], new_w];
    inputs.extend(new_b);
    let node = m.node_mut(n);
    node.op = layer_op;
    node.inputs = inputs;
    true
}

/// True when `layer` is a convolution or plain linear layer used only here
/// and `s` is weight-only with one value per output channel, or one value.
fn is_absorbable(m: &Module, layer: Value, s: Value, weights: &[bool], uses: &[usize]) -> bool {
    let Some((op, ins)) = def(m, layer) else { return false };
    let ty = &m.value(layer).ty;
    let channel_axis = match op {
        Op::Conv2d { .. } => 1,
        Op::Linear { activation: None, .. } => ty.rank() - 1,
        _ => return false,
    };
    let flag = |v: Value| weights.get(v.index()).copied().unwrap_or(false);
    if !flag(s) || flag(ins[0]) || uses.get(layer.index()) != Some(&1) {
        return false;
    }
    let st = &m.value(s).ty;
    // The factor meets both the weight and the bias: all of one dtype (not a bf16 weight with f32 accumulation).
    if st.dtype != ty.dtype || m.value(ins[1]).ty.dtype != st.dtype || st.rank() > ty.rank() || st.num_elements() == 0 {
        return false;
    }
    // Aligned to the layer's output, s may vary only along the channel axis.
    let pad = ty.rank() - st.rank();
    st.num_elements() == 1
        || st.shape.iter().enumerate().all(|(i, &d)| d == 1 || (i + pad == channel_axis && d == ty.shape[channel_axis]))
}

/// `v` laid out to `shape` by `layout` (a reshape or broadcast), unless it already has it.
fn shaped(m: &mut Module, at: Node, v: Value, shape: &[u64], name: &str, layout: fn(Vec<u64>) -> Op) -> Value {
    let ty = m.value(v).ty.clone();
    if ty.shape == shape {
        return v;
    }
    let name = m.fresh_name(name);
    m.insert_before(at, &name, layout(shape.to_vec()), vec![v], TensorType::new(ty.dtype, shape.to_vec()))
}

fn reshape(m: &mut Module, at: Node, v: Value, shape: &[u64], name: &str) -> Value {
    shaped(m, at, v, shape, name, |shape| Op::Reshape { shape })
}

fn broadcast(m: &mut Module, at: Node, v: Value, shape: &[u64], name: &str) -> Value {
    shaped(m, at, v, shape, name, |shape| Op::BroadcastTo { shape })
}

fn binary(m: &mut Module, at: Node, op: BinaryOp, a: Value, b: Value, ty: TensorType, name: &str) -> Value {
    let name = m.fresh_name(name);
    m.insert_before(at, &name, Op::Binary(op), vec![a, b], ty)
}

fn negate(m: &mut Module, at: Node, v: Value, name: &str) -> Value {
    let ty = m.value(v).ty.clone();
    let name = m.fresh_name(name);
    m.insert_before(at, &name, Op::Unary(crate::ir::op::UnaryOp::Neg), vec![v], ty)
}

/// Replaces each transpose or float cast of a file parameter by a view of its tensor.
fn views(m: &mut Module) -> usize {
    let mut rewrites = 0;
    for n in m.order().to_vec() {
        let node = m.node(n);
        let [x] = node.inputs.as_slice() else { continue };
        let ValueDef::Param(i) = m.value(m.resolve(*x)).def else { continue };
        let ParamSource::File { path, tensor, view: WeightView { perm: stored, convert } } = &m.params()[i].source
        else {
            continue;
        };
        let from = m.value(m.params()[i].value).ty.dtype;
        let (perm, convert, suffix) = match &node.op {
            // Dimension d of the transpose is dimension perm[d] of the parameter, which may be a view itself.
            Op::Transpose { perm } => {
                let composed: Vec<usize> = match stored {
                    Some(s) => perm.iter().map(|&d| s[d]).collect(),
                    None => perm.clone(),
                };
                let identity = composed.iter().enumerate().all(|(d, &p)| d == p);
                ((!identity).then_some(composed), *convert, "T".to_string())
            }
            // One rounding only: a converted view is not converted again.
            Op::Cast { to } if convert.is_none() && from.is_float() && to.is_float() => {
                (stored.clone(), (*to != from).then_some(*to), format!("as_{to}"))
            }
            _ => continue,
        };
        let source =
            ParamSource::File { path: path.clone(), tensor: tensor.clone(), view: WeightView { perm, convert } };
        let name = m.fresh_name(&format!("{}.{suffix}", m.value(m.params()[i].value).name));
        let out = node.output;
        let (ty, sharding) = (m.value(out).ty.clone(), m.value(out).sharding.clone());
        let p = m.add_param(name, ty, source);
        m.set_sharding(p, sharding);
        m.set_alias(out, p);
        rewrites += 1;
    }
    rewrites
}

/// Evaluates and replaces the weight-only nodes that runtime computations use.
fn fold(m: &mut Module) -> usize {
    let weights = weight_only(m);
    // Per value: whether a parameter feeds it, the largest parameter feeding it (bytes),
    // and the narrowest element of the parameters feeding it (bytes).
    let mut from_param = vec![false; m.num_values()];
    let mut largest = vec![0u64; m.num_values()];
    let mut narrowest = vec![usize::MAX; m.num_values()];
    for p in m.params() {
        from_param[p.value.index()] = true;
        largest[p.value.index()] = m.value(p.value).ty.size_bytes();
        narrowest[p.value.index()] = m.value(p.value).ty.dtype.size_bytes();
    }
    for &n in m.order() {
        let node = m.node(n);
        let o = node.output.index();
        for &i in &node.inputs {
            let i = m.resolve(i).index();
            from_param[o] |= from_param[i];
            largest[o] = largest[o].max(largest[i]);
            narrowest[o] = narrowest[o].min(narrowest[i]);
        }
    }
    let is_node = |v: Value| matches!(m.value(v).def, ValueDef::Node(_));
    let mut boundary = Vec::new();
    let mut seen = HashSet::new();
    let used_at_runtime = m
        .order()
        .iter()
        .filter(|&&n| !weights[m.node(n).output.index()])
        .flat_map(|&n| m.node(n).inputs.iter().map(|&i| m.resolve(i)))
        .chain(m.outputs().iter().map(|&o| m.resolve(o)));
    for v in used_at_runtime {
        // Pure constants are fold-constants' business; a broadcast is not worth materialising,
        // nor a widened weight (int8 weights dequantised at compile time would be f32 again).
        let ty = &m.value(v).ty;
        let widened = ty.dtype.size_bytes() > narrowest[v.index()];
        let worth_it = (ty.num_elements() <= SMALL && !widened) || ty.size_bytes() <= largest[v.index()];
        if weights[v.index()] && is_node(v) && from_param[v.index()] && worth_it && seen.insert(v) {
            boundary.push(v);
        }
    }
    let mut env: HashMap<Value, Tensor> = HashMap::new();
    let mut rewrites = 0;
    for v in boundary {
        let Some(t) = evaluate(m, v, &mut env) else { continue };
        let data = match &t.data {
            Data::Float(a) => ConstData::Float(a.iter().copied().collect()),
            Data::Int(a) => ConstData::Int(a.iter().copied().collect()),
            Data::Bool(a) => ConstData::Int(a.iter().map(|&b| b as i64).collect()),
        };
        let ty = m.value(v).ty.clone();
        let name = m.fresh_name(&format!("{}.folded", m.value(v).name));
        let p = m.add_param(name, ty, ParamSource::Inline(data));
        m.set_alias(v, p);
        rewrites += 1;
    }
    rewrites
}

/// The value of weight-only `v`, reading parameters as needed; `None` if a
/// weight cannot be read or the interpreter refuses an op.
fn evaluate(m: &Module, v: Value, env: &mut HashMap<Value, Tensor>) -> Option<Tensor> {
    if let Some(t) = env.get(&v) {
        return Some(t.clone());
    }
    let ty = m.value(v).ty.clone();
    let t = match m.value(v).def {
        ValueDef::Input(_) => return None,
        ValueDef::Param(i) => match &m.params()[i].source {
            ParamSource::Inline(data) => Tensor::from_const(ty.dtype, &ty.shape, data),
            ParamSource::File { path, tensor, view } => {
                let (dtype, shape, bytes) = read_tensor(path, tensor).ok()?;
                let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                let (dtype, shape, bytes) = view.apply(dtype, &shape, &bytes).ok()?;
                let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
                Tensor::from_le_bytes(dtype, &shape, &bytes).ok()?
            }
        },
        ValueDef::Node(n) => {
            let node = m.node(n).clone();
            let operands = node.inputs.iter().map(|&i| evaluate(m, m.resolve(i), env)).collect::<Option<Vec<_>>>()?;
            let refs: Vec<&Tensor> = operands.iter().collect();
            eval_op(&node.op, &refs, ty.dtype, &ty.shape).ok()?
        }
    };
    env.insert(v, t.clone());
    Some(t)
}
