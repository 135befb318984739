//! Sharding policies and propagation (docs/sharding.md has the rules).
//!
//! The policies annotate for the user: `shard-data` splits the batch
//! dimension of every input over the mesh axis `data`; `shard-tensor` splits
//! weights over `model` the way Megatron-LM does (column-parallel for the
//! Q/K/V projections and the first linear of an MLP, row-parallel for the
//! attention output projection and the second linear). `propagate-sharding`
//! then carries annotations forward to every value they determine, so the
//! results' shardings are known and the partitioning is visible in the IR.
//! Annotations already present (written by the user) are never overridden.

use crate::error::{Diagnostic, Error};
use crate::ir::op::Op;
use crate::ir::sharding::{Mesh, Sharding};
use crate::ir::{Module, Node, Value, ValueDef};
use std::collections::{HashMap, HashSet};

/// What `--shard` asks for: data parallelism, tensor parallelism, or both (2-D).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShardPolicy {
    Data,
    Tensor,
}

/// The mesh axis `shard-data` splits batches over.
pub const DATA_AXIS: &str = "data";
/// The mesh axis `shard-tensor` splits weights (and attention heads) over.
pub const MODEL_AXIS: &str = "model";

fn error(pass: &str, location: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Invalid { origin: format!("pass {pass}"), diagnostics: vec![Diagnostic::new(location, message)] }
}

/// The size of the mesh's `axis`, or an error saying what is missing.
fn axis_size(m: &Module, pass: &str, axis: &str) -> Result<u64, Error> {
    let mesh = m.mesh.as_ref().ok_or_else(|| {
        error(pass, "module", format!("needs a device mesh with an axis `{axis}` (pass --mesh {axis}=N)"))
    })?;
    mesh.size(axis).ok_or_else(|| error(pass, "mesh", format!("needs a mesh axis named `{axis}`; the mesh is {mesh}")))
}

/// `shard-data`: splits dimension 0 of every unannotated input of rank ≥ 1
/// over `data`. An input whose batch does not divide is an error naming it.
pub fn shard_data(m: &mut Module) -> Result<usize, Error> {
    let mut rewrites = 0;
    for v in m.inputs().to_vec() {
        rewrites += usize::from(split_batch(m, v)?);
    }
    Ok(rewrites)
}

/// Splits dimension 0 of input `v` over `data`, unless it is annotated or a
/// scalar; returns whether it did. A batch that does not divide is an error naming `v`.
pub fn split_batch(m: &mut Module, v: Value) -> Result<bool, Error> {
    let n = axis_size(m, "shard-data", DATA_AXIS)?;
    let data = m.value(v);
    if data.sharding.is_some() || data.ty.rank() == 0 {
        return Ok(false);
    }
    if !data.ty.shape[0].is_multiple_of(n) {
        return Err(error(
            "shard-data",
            format!("input `{}`", data.name),
            format!(
                "the batch dimension of {} (size {}) does not divide over axis `{DATA_AXIS}` of size {n}",
                data.ty, data.ty.shape[0]
            ),
        ));
    }
    let mut s = Sharding::replicated(data.ty.rank());
    s.0[0] = Some(DATA_AXIS.into());
    m.set_sharding(v, Some(s));
    Ok(true)
}

/// A projection: a node multiplying activations by a rank-2 weight.
struct Projection {
    weight: Value,
    /// A parameter bias (of `linear`).
    bias: Option<Value>,
    /// The weight's output-feature dimension (split when column-parallel); the other is the input features.
    out_dim: usize,
}

/// `linear` and `matmul` with a `[in, out]` weight, or a `dot` that
/// contracts the activations' last dimension with either dimension of the
/// weight (`[out, in]` as PyTorch stores `nn.Linear`, used in place by the
/// Hugging Face importer).
fn projection(m: &Module, n: Node, weights: &HashSet<Value>) -> Option<Projection> {
    let node = m.node(n);
    let w = *node.inputs.get(1)?;
    if !weights.contains(&w) || m.value(w).ty.rank() != 2 {
        return None;
    }
    match &node.op {
        Op::Linear { .. } | Op::MatMul { .. } => {
            let bias =
                node.inputs.get(2).copied().filter(|&b| matches!(node.op, Op::Linear { .. }) && weights.contains(&b));
            Some(Projection { weight: w, bias, out_dim: 1 })
        }
        Op::Dot(d) if d.lhs_batch.is_empty() && d.lhs_contract == [m.value(node.inputs[0]).ty.rank() - 1] => {
            match d.rhs_contract.as_slice() {
                [c] => Some(Projection { weight: w, bias: None, out_dim: 1 - c }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The projections `v` is computed from, walking back through nodes that
/// `through` accepts (at most `depth` steps; projections end a path).
fn projections_behind(
    m: &Module,
    v: Value,
    through: fn(&Op) -> bool,
    depth: usize,
    weights: &HashSet<Value>,
) -> Vec<Node> {
    let (mut found, mut seen) = (Vec::new(), HashSet::new());
    let mut stack = vec![(v, 0)];
    while let Some((v, d)) = stack.pop() {
        let ValueDef::Node(n) = m.value(v).def else { continue };
        if !seen.insert(n) {
            continue;
        }
        if projection(m, n, weights).is_some() {
            found.push(n);
        } else if d < depth && through(&m.node(n).op) {
            stack.extend(m.node(n).inputs.iter().map(|&u| (u, d + 1)));
        }
    }
    found
}

fn is_layout(op: &Op) -> bool {
    matches!(op, Op::Reshape { .. } | Op::Transpose { .. } | Op::Cast { .. })
}

/// Between a projection and attention: head split/merge, rotary embeddings (slices, concat, products),
/// grouped-query heads repeated (broadcast).
fn is_head_shaping(op: &Op) -> bool {
    is_layout(op) || op.is_elementwise() || matches!(op, Op::Slice { .. } | Op::Concat { .. } | Op::BroadcastTo { .. })
}

/// The attention computations of `m`, each as its (q, k, v) and its result:
/// the fused op, and attention spelt out (as a training step's with dropout
/// on its probabilities): `dot(P, v)` where `P` is computed elementwise from a
/// softmax of values computed elementwise from `dot(q, k)`, both batched.
fn attention_cores(m: &Module) -> Vec<([Value; 3], Value)> {
    let batched_dot = |v: Value| match m.value(v).def {
        ValueDef::Node(n) => matches!(&m.node(n).op, Op::Dot(d) if !d.lhs_batch.is_empty()).then_some(n),
        _ => None,
    };
    // The first node `want` accepts behind `v`, walking back through elementwise ops (at most 6).
    let behind = |v: Value, want: &dyn Fn(Node) -> bool| -> Option<Node> {
        let mut stack = vec![(v, 0)];
        while let Some((v, depth)) = stack.pop() {
            let ValueDef::Node(n) = m.value(v).def else { continue };
            if want(n) {
                return Some(n);
            }
            if depth < 6 && m.node(n).op.is_elementwise() {
                stack.extend(m.node(n).inputs.iter().map(|&u| (u, depth + 1)));
            }
        }
        None
    };
    let mut cores = Vec::new();
    for &node in m.order() {
        let d = m.node(node);
        if let Op::Attention { .. } = d.op {
            cores.push(([d.inputs[0], d.inputs[1], d.inputs[2]], d.output));
            continue;
        }
        if batched_dot(d.output).is_none() {
            continue;
        }
        let softmax = behind(d.inputs[0], &|n| matches!(m.node(n).op, Op::Softmax { .. }));
        let scores = softmax.and_then(|p| behind(m.node(p).inputs[0], &|n| batched_dot(m.node(n).output).is_some()));
        if let Some(s) = scores {
            cores.push(([m.node(s).inputs[0], m.node(s).inputs[1], d.inputs[1]], d.output));
        }
    }
    cores
}

/// `shard-tensor`: Megatron-style tensor parallelism over `model`. Q/K/V
/// projections and the first linear(s) of an MLP (up, or gate and up) split
/// their output features (weight dimension 1, and the bias); the attention
/// output projection and the MLP's last linear split their input features
/// (weight dimension 0), so each device computes a partial sum. Weights that
/// already have a sharding, or whose features do not divide, are left alone.
/// The weights are the module's parameters.
pub fn shard_tensor(m: &mut Module) -> Result<usize, Error> {
    let params = m.params().iter().map(|p| p.value).collect();
    tensor_parallel(m, &params)
}

/// [`shard_tensor`] with `weights` the values projections multiply by (a
/// training step's weights are inputs, carried from step to step).
pub fn tensor_parallel(m: &mut Module, weights: &HashSet<Value>) -> Result<usize, Error> {
    let n = axis_size(m, "shard-tensor", MODEL_AXIS)?;
    let mut users: HashMap<Value, Vec<Node>> = HashMap::new();
    for &node in m.order() {
        for &i in &m.node(node).inputs {
            users.entry(i).or_default().push(node);
        }
    }
    // (column-parallel projections, the row-parallel one they feed)
    let mut pairs: Vec<(Vec<Node>, Node)> = Vec::new();
    for (qkv, output) in attention_cores(m) {
        let column: Vec<Node> =
            qkv.iter().flat_map(|&v| projections_behind(m, v, is_head_shaping, 12, weights)).collect();
        // Forward from the attention result through head merging to the output projection.
        let mut frontier = vec![output];
        let mut row = None;
        while let Some(v) = frontier.pop() {
            for &u in users.get(&v).into_iter().flatten() {
                if projection(m, u, weights).is_some() && m.node(u).inputs[0] == v {
                    row = Some(u);
                } else if is_layout(&m.node(u).op) {
                    frontier.push(m.node(u).output);
                }
            }
        }
        if let Some(row) = row {
            pairs.push((column, row));
        }
    }
    for &node in m.order() {
        if projection(m, node, weights).is_none() || pairs.iter().any(|(c, r)| *r == node || c.contains(&node)) {
            continue;
        }
        let column = projections_behind(m, m.node(node).inputs[0], Op::is_elementwise, 8, weights);
        let claimed = |p: &Node| pairs.iter().any(|(c, r)| r == p || c.contains(p));
        if !column.is_empty() && !column.iter().any(claimed) {
            pairs.push((column, node));
        }
    }
    let mut rewrites = 0;
    for (column, row) in pairs {
        // The weight dimension split: output features when column-parallel, input features when row-parallel.
        let split = |p: Node, column: bool| {
            let proj = projection(m, p, weights).expect("a projection");
            // A column-parallel bias is split with the outputs; a row-parallel one is added whole after the sum.
            let bias = proj.bias.filter(|_| column);
            (proj.weight, if column { proj.out_dim } else { 1 - proj.out_dim }, bias)
        };
        let divides = |(w, dim, _): (Value, usize, Option<Value>)| m.value(w).ty.shape[dim].is_multiple_of(n);
        if !divides(split(row, false)) || !column.iter().all(|&c| divides(split(c, true))) {
            continue;
        }
        let plan: Vec<_> = column.iter().map(|&c| split(c, true)).chain([split(row, false)]).collect();
        for (w, dim, bias) in plan {
            let dims = if dim == 0 { [Some(MODEL_AXIS), None] } else { [None, Some(MODEL_AXIS)] };
            rewrites += usize::from(annotate(m, w, &dims));
            if let Some(b) = bias {
                rewrites += usize::from(annotate(m, b, &[Some(MODEL_AXIS)]));
            }
        }
    }
    Ok(rewrites)
}

/// Annotates `v` with `dims` unless it already has a sharding (or `dims`
/// does not fit its rank); returns whether it did.
fn annotate(m: &mut Module, v: Value, dims: &[Option<&str>]) -> bool {
    if m.value(v).sharding.is_some() || m.value(v).ty.rank() != dims.len() {
        return false;
    }
    m.set_sharding(v, Some(Sharding(dims.iter().map(|d| d.map(str::to_string)).collect())));
    true
}

/// A result sharding being put together from the operands', remembering
/// which operand set each dimension so that a conflict can name both.
struct Proposal<'a> {
    m: &'a Module,
    dims: Vec<Option<(String, Value)>>,
}

impl<'a> Proposal<'a> {
    fn new(m: &'a Module, rank: usize) -> Self {
        Proposal { m, dims: vec![None; rank] }
    }

    /// Result dimension `dim` is split over operand `from`'s dimension `src` axis, if any.
    fn take(&mut self, dim: usize, from: Value, src: usize) -> Result<(), String> {
        let Some(axis) = self.m.value(from).sharding.as_ref().and_then(|s| s.axis(src)) else { return Ok(()) };
        match &self.dims[dim] {
            None => self.dims[dim] = Some((axis.to_string(), from)),
            Some((a, _)) if a == axis => {}
            Some((a, other)) => {
                return Err(format!(
                    "conflicting shardings: operand `{}` splits result dimension {dim} over `{a}`, operand `{}` over `{axis}`; annotate this node's sharding to choose",
                    self.m.value(*other).name,
                    self.m.value(from).name
                ))
            }
        }
        Ok(())
    }

    /// Operand `v` broadcast (NumPy-style, aligned on the right) to the result shape.
    fn broadcast(&mut self, v: Value, result: &[u64]) -> Result<(), String> {
        let shape = &self.m.value(v).ty.shape;
        let offset = result.len().saturating_sub(shape.len());
        for (i, &size) in shape.iter().enumerate() {
            if result.get(i + offset) == Some(&size) {
                self.take(i + offset, v, i)?;
            }
        }
        Ok(())
    }

    /// The sharding, with dimensions that do not divide their axis dropped;
    /// `None` when nothing is split. An axis on two dimensions is a conflict.
    fn finish(self, shape: &[u64], mesh: &Mesh) -> Result<Option<Sharding>, String> {
        let mut out = Vec::with_capacity(self.dims.len());
        for (dim, d) in self.dims.iter().enumerate() {
            let axis = d.as_ref().filter(|(a, _)| mesh.size(a).is_some_and(|n| shape[dim].is_multiple_of(n)));
            if let Some((a, v)) = axis {
                if let Some((_, w)) = self.dims[..dim].iter().flatten().find(|(b, _)| b == a) {
                    return Err(format!(
                        "conflicting shardings: operands `{}` and `{}` both split a result dimension over `{a}`; annotate this node's sharding to choose",
                        self.m.value(*w).name,
                        self.m.value(*v).name
                    ));
                }
            }
            out.push(axis.map(|(a, _)| a.clone()));
        }
        Ok(Some(Sharding(out)).filter(|s| !s.is_replicated()))
    }
}

/// Groups of dimensions a reshape maps onto each other: each pair of index
/// ranges has equal products. Empty when a dimension is 0.
fn reshape_groups(a: &[u64], b: &[u64]) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let mut groups = Vec::new();
    if a.contains(&0) || b.contains(&0) {
        return groups;
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (i0, j0) = (i, j);
        let (mut pa, mut pb) = (a[i], b[j]);
        while pa != pb {
            if pa < pb {
                i += 1;
                let Some(&x) = a.get(i) else { return groups };
                pa *= x;
            } else {
                j += 1;
                let Some(&y) = b.get(j) else { return groups };
                pb *= y;
            }
        }
        groups.push((i0..i + 1, j0..j + 1));
        i += 1;
        j += 1;
    }
    groups
}

/// The sharding the result of `node` gets from its operands' (the rules in docs/sharding.md).
fn propose(m: &Module, mesh: &Mesh, node: Node) -> Result<Option<Sharding>, String> {
    let data = m.node(node);
    let out = &m.value(data.output).ty.shape;
    let ins = &data.inputs;
    let rank = |v: Value| m.value(v).ty.rank();
    let mut p = Proposal::new(m, out.len());
    match &data.op {
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Where
        | Op::Cast { .. }
        | Op::BroadcastTo { .. }
        | Op::StopGradient => {
            for &v in ins {
                p.broadcast(v, out)?;
            }
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } | Op::ArgSort { axis, .. } => {
            (0..out.len()).filter(|d| d != axis).try_for_each(|d| p.take(d, ins[0], d))?;
        }
        Op::LayerNorm { axis, .. } => (0..*axis).try_for_each(|d| p.take(d, ins[0], d))?,
        Op::RmsNorm { .. } => (0..out.len().saturating_sub(1)).try_for_each(|d| p.take(d, ins[0], d))?,
        Op::MatMul { .. } if rank(ins[0]) >= 2 && rank(ins[1]) >= 2 => {
            let r = out.len();
            // Batch dimensions broadcast like an elementwise op; then M from lhs, N from rhs.
            for &v in &ins[..2] {
                let k = rank(v);
                let shape = &m.value(v).ty.shape;
                for i in 0..k - 2 {
                    if out[i + r - k] == shape[i] {
                        p.take(i + r - k, v, i)?;
                    }
                }
            }
            p.take(r - 2, ins[0], rank(ins[0]) - 2)?;
            p.take(r - 1, ins[1], rank(ins[1]) - 1)?;
        }
        Op::Dot(d) => {
            for (i, (&l, &r)) in d.lhs_batch.iter().zip(&d.rhs_batch).enumerate() {
                p.take(i, ins[0], l)?;
                p.take(i, ins[1], r)?;
            }
            let mut next = d.lhs_batch.len();
            for (v, batch, contract) in
                [(ins[0], &d.lhs_batch, &d.lhs_contract), (ins[1], &d.rhs_batch, &d.rhs_contract)]
            {
                for k in (0..rank(v)).filter(|k| !batch.contains(k) && !contract.contains(k)) {
                    p.take(next, v, k)?;
                    next += 1;
                }
            }
        }
        Op::Linear { .. } => {
            (0..out.len() - 1).try_for_each(|d| p.take(d, ins[0], d))?;
            p.take(out.len() - 1, ins[1], 1)?;
        }
        Op::Attention { .. } => {
            // Batch and head dimensions (all but sequence and features) from q, k and v.
            for &v in &ins[..3] {
                (0..out.len().saturating_sub(2)).try_for_each(|d| p.take(d, v, d))?;
            }
        }
        Op::Reduce { axes, keepdims, .. } => {
            let kept = (0..rank(ins[0])).filter(|d| !axes.contains(d));
            for (i, d) in kept.enumerate() {
                p.take(if *keepdims { d } else { i }, ins[0], d)?;
            }
        }
        Op::ArgMax { axis, keepdims } => {
            for (i, d) in (0..rank(ins[0])).filter(|d| d != axis).enumerate() {
                p.take(if *keepdims { d } else { i }, ins[0], d)?;
            }
        }
        Op::Transpose { perm } => perm.iter().enumerate().try_for_each(|(i, &d)| p.take(i, ins[0], d))?,
        Op::Reshape { .. } => {
            let shape = &m.value(ins[0]).ty.shape;
            let sharding = m.value(ins[0]).sharding.as_ref();
            for (a, b) in reshape_groups(shape, out) {
                let split: Vec<usize> = a.clone().filter(|&d| sharding.and_then(|s| s.axis(d)).is_some()).collect();
                let major_in = a.clone().find(|&d| shape[d] > 1);
                let major_out = b.clone().find(|&d| out[d] > 1);
                if let ([d], Some(mi), Some(mo)) = (split.as_slice(), major_in, major_out) {
                    if *d == mi {
                        p.take(mo, ins[0], mi)?;
                    }
                }
            }
        }
        Op::Slice { starts, limits, strides } => {
            let shape = &m.value(ins[0]).ty.shape;
            for d in 0..out.len() {
                if starts[d] == 0 && limits[d] == shape[d] && strides[d] == 1 {
                    p.take(d, ins[0], d)?;
                }
            }
        }
        Op::Pad { low, high, .. } => {
            (0..out.len()).filter(|&d| low[d] == 0 && high[d] == 0).try_for_each(|d| p.take(d, ins[0], d))?;
        }
        Op::Concat { axis } => {
            for &v in ins {
                (0..out.len()).filter(|d| d != axis).try_for_each(|d| p.take(d, v, d))?;
            }
        }
        Op::Gather { axis } => {
            // data[:axis] ++ indices.shape ++ data[axis+1:]
            let k = rank(ins[1]);
            (0..*axis).try_for_each(|d| p.take(d, ins[0], d))?;
            (0..k).try_for_each(|d| p.take(axis + d, ins[1], d))?;
            (axis + 1..rank(ins[0])).try_for_each(|d| p.take(d + k - 1, ins[0], d))?;
        }
        Op::ScatterAdd { axis } => (0..out.len()).filter(|d| d != axis).try_for_each(|d| p.take(d, ins[0], d))?,
        Op::DynamicSlice { axis, .. } => {
            (0..out.len()).filter(|d| d != axis).try_for_each(|d| p.take(d, ins[0], d))?;
        }
        Op::DynamicUpdateSlice { axis } => {
            for &v in &ins[..2] {
                (0..out.len()).filter(|d| d != axis).try_for_each(|d| p.take(d, v, d))?;
            }
        }
        Op::Conv2d { .. } => {
            p.take(0, ins[0], 0)?;
            p.take(1, ins[1], 0)?;
        }
        Op::MaxPool2d { .. } | Op::AvgPool2d { .. } => {
            p.take(0, ins[0], 0)?;
            p.take(1, ins[0], 1)?;
        }
        Op::MatMul { .. } | Op::Iota { .. } | Op::Constant { .. } | Op::RandomUniform { .. } => {}
    }
    p.finish(out, mesh)
}

/// `propagate-sharding`: gives every unannotated node result the sharding
/// its operands determine, in execution order (forward only). Operands that
/// split one result dimension over different axes, or two dimensions over
/// one axis, are an error naming the node unless the node itself is annotated.
pub fn propagate(m: &mut Module) -> Result<usize, Error> {
    propagate_where(m, Conflicts::Refuse)
}

/// What propagation does where operands' shardings conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflicts {
    /// An error naming the node (the user's annotations disagree).
    Refuse,
    /// The node's result is left unannotated, for XLA's own propagation to
    /// lay out (where the annotations come from policies, not the user: a
    /// training step's backward pass meets split weights and split
    /// activations in products the forward rules do not decide).
    LeaveToXla,
}

/// [`propagate`], conflicts handled as `conflicts` says.
pub fn propagate_where(m: &mut Module, conflicts: Conflicts) -> Result<usize, Error> {
    let Some(mesh) = m.mesh.clone() else { return Ok(0) };
    let mut rewrites = 0;
    for &n in &m.order().to_vec() {
        let out = m.node(n).output;
        if m.value(out).sharding.is_some() {
            continue;
        }
        let s = match (propose(m, &mesh, n), conflicts) {
            (Ok(s), _) => s,
            (Err(_), Conflicts::LeaveToXla) => None,
            (Err(e), Conflicts::Refuse) => {
                let node = m.node(n);
                return Err(error("propagate-sharding", format!("node `{}` ({})", node.name, node.op.name()), e));
            }
        };
        if s.is_some() {
            m.set_sharding(out, s);
            rewrites += 1;
        }
    }
    Ok(rewrites)
}

#[cfg(test)]
mod tests {
    use super::reshape_groups;

    #[test]
    fn reshape_groups_pair_dimensions_with_equal_products() {
        assert_eq!(reshape_groups(&[4, 8, 32], &[4, 8, 4, 8]), vec![(0..1, 0..1), (1..2, 1..2), (2..3, 2..4)]);
        assert_eq!(reshape_groups(&[4, 8, 4, 8], &[4, 8, 32]), vec![(0..1, 0..1), (1..2, 1..2), (2..4, 2..3)]);
        assert_eq!(reshape_groups(&[6, 4], &[4, 6]), vec![(0..2, 0..2)]);
        assert_eq!(reshape_groups(&[2, 0], &[0]), vec![]);
    }
}
