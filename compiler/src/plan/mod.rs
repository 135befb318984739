//! Memory planning: the bytes a compiled program will hold, predicted from
//! its IR's types alone, before XLA compiles it: the arguments (for a
//! training step, weights, optimizer state and batch), the outputs and how
//! many of them alias donated arguments, and the temporaries, from a
//! liveness walk; within the temporaries, the gradients and the forward
//! activations the backward pass reads.
//!
//! The walk models what XLA's CPU backend does with the program:
//! - it runs the nodes in the order of XLA's default CPU scheduler, breadth
//!   first (a node as soon as its operands are made), so a backward value
//!   that needs only forward values is made, and held, in the forward pass;
//! - an elementwise or data-movement op (unary, binary, compare, select,
//!   cast, broadcast, reshape, transpose, slice, concatenation) fuses into
//!   its consumers and holds no buffer unless a non-fusing op reads it (a
//!   contraction, a reduction, a pad, a gather...) or the program returns
//!   it, or it is expensive (a division, an exponential, a square root...)
//!   and several nodes read it (XLA fuses an expensive op into one reader
//!   only: a gradient's mean over micro-batches is made once); every other
//!   result is a buffer, live from its op to its last reader, direct or
//!   through fused ones; a fused result takes over the buffer of a
//!   same-sized operand that dies there;
//! - values inside fused ops that XLA materializes: attention's scores and
//!   probabilities while it runs; and the backward's recomputation of the
//!   probabilities and of GELU's (SiLU's) erf (sigmoid), which XLA's CSE
//!   merges with the forward's, so they stay from the forward op to the
//!   backward;
//! - a 16-bit float operand of a batched contraction, or of a dot that
//!   contracts its left operand over another dimension than its last, is
//!   held as f32 (XLA's CPU backend computes those in f32);
//! - the temporaries are one block, each buffer at an offset XLA's buffer
//!   assignment would give it ([`heap`]): the block exceeds the most bytes
//!   live at once by the gaps the packing leaves (29% on the small CNN).
//!
//! In a program split over a device mesh, every byte count is one device's:
//! a value is divided over the mesh axes its sharding names.
//!
//! docs/training.md measures the prediction against XLA's compiled memory
//! statistics.

mod heap;

use crate::ir::op::{BinaryOp, Op, UnaryOp};
use crate::ir::{Module, Node, Value, ValueDef};
use crate::train::StepArg;
use std::collections::HashMap;

/// What a program holds, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// The parameters: a training step's weights, trainable and frozen.
    pub weights: u64,
    /// Of the weights, those the step updates.
    pub trainable: u64,
    /// The optimizer state and step count.
    pub optimizer_state: u64,
    /// The batch: model inputs, labels, seed and learning rate.
    pub batch: u64,
    /// The most bytes of forward values that the backward pass reads live
    /// at once (part of the temporaries).
    pub activations: u64,
    /// The block the intermediate buffers are packed into, as XLA packs
    /// them: at least the most bytes live at once.
    pub temporaries: u64,
    /// Every output.
    pub outputs: u64,
    /// Output bytes that reuse a donated argument's buffer.
    pub aliased: u64,
}

impl Footprint {
    /// Every argument: weights, optimizer state and batch.
    pub fn arguments(&self) -> u64 {
        self.weights + self.optimizer_state + self.batch
    }

    /// One gradient per trainable weight, of its type (part of the temporaries).
    pub fn gradients(&self) -> u64 {
        self.trainable
    }

    /// Arguments, outputs that are not aliased, and the temporaries' peak.
    pub fn peak(&self) -> u64 {
        self.arguments() + self.outputs - self.aliased + self.temporaries
    }
}

/// Ops XLA fuses into their consumers: their results need no buffer of their own.
fn fuses(op: &Op) -> bool {
    op.is_elementwise()
        || matches!(
            op,
            Op::BroadcastTo { .. }
                | Op::Reshape { .. }
                | Op::Transpose { .. }
                | Op::Slice { .. }
                | Op::Concat { .. }
                | Op::Constant { .. }
                | Op::Iota { .. }
                | Op::StopGradient
        )
}

/// Elementwise ops XLA's CPU fusion counts as expensive on floats: it fuses
/// one into a single reader only, never duplicating it into several. GELU
/// and SiLU count as their erf (tanh, sigmoid), of their result's size: the
/// forward's and the backward's readers share it (on the Llama-shaped step
/// the plan's peak goes from 0.933 to 0.970 of XLA's with SiLU counted).
fn expensive(op: &Op) -> bool {
    use UnaryOp::*;
    matches!(
        op,
        Op::Unary(Exp | Log | Sqrt | Rsqrt | Tanh | Erf | Sigmoid | GeluErf | GeluTanh | Silu)
            | Op::Binary(BinaryOp::Div | BinaryOp::Pow)
    )
}

/// The footprint of `m`; `args` says how a training step feeds each input
/// (without it, inputs are the batch and parameters the weights).
pub fn footprint(m: &Module, args: Option<&[StepArg]>) -> Footprint {
    let bytes = |v: Value| device_bytes(m, v, m.value(v).ty.size_bytes());
    let mut f = Footprint::default();
    for (i, &v) in m.inputs().iter().enumerate() {
        let b = bytes(v);
        match args.and_then(|a| a.get(i)) {
            Some(StepArg::Weight(_)) => {
                f.weights += b;
                f.trainable += b;
            }
            Some(StepArg::State { .. } | StepArg::StepCount) => f.optimizer_state += b,
            _ => f.batch += b,
        }
    }
    f.weights += m.params().iter().map(|p| bytes(p.value)).sum::<u64>();
    let outputs: Vec<Value> = m.outputs().iter().map(|&o| m.resolve(o)).collect();
    f.outputs = outputs.iter().map(|&o| bytes(o)).sum();
    f.aliased = m.donations().iter().map(|&(_, k)| bytes(outputs[k])).sum();
    let walk = walk(m, &outputs);
    f.temporaries = walk.temporaries;
    f.activations = walk.activations;
    f
}

/// The liveness walk's results: the temporaries' block and the activations' peak.
struct Walk {
    temporaries: u64,
    activations: u64,
}

/// What XLA makes of the fused ops' inside values, which xlac's IR does not
/// show: the bytes each node holds only while it runs (attention's scores
/// and probabilities, a linear layer's pre-activation), and the backward
/// nodes that recompute such a value (attention's probabilities, a linear
/// layer's pre-activation, an activation's erf or sigmoid), which XLA's
/// common-subexpression elimination merges with the forward op's, so that
/// the value stays from the forward op (`kept_from`, its position) to its
/// last use in the backward pass, or (`merged`, the scores) needs no
/// buffer of its own.
struct Inside {
    transient: Vec<u64>,
    kept_from: Vec<Option<usize>>,
    merged: Vec<bool>,
}

fn inside(m: &Module, order: &[Node]) -> Inside {
    let bytes = |v: Value| device_bytes(m, v, m.value(v).ty.size_bytes());
    let position: HashMap<Node, usize> = order.iter().enumerate().map(|(i, &k)| (k, i)).collect();
    let mut transient = vec![0u64; order.len()];
    let mut kept_from = vec![None; m.num_values()];
    let mut merged = vec![false; m.num_values()];
    // Each attention op's position and its scores' bytes, by (q, k).
    let mut attention: HashMap<(Value, Value), (usize, u64)> = HashMap::new();
    let mut linear: HashMap<Vec<Value>, usize> = HashMap::new();
    // The inputs of the forward's GELU and SiLU activations.
    let mut activation: HashMap<Value, usize> = HashMap::new();
    // The backward's scores, by value: the attention op whose scores they are (position, bytes).
    let mut scores_of: HashMap<Value, (usize, u64)> = HashMap::new();
    // In program order (a forward op before the backward's recomputation), placed where the walk runs them.
    for &node in m.order() {
        let i = position[&node];
        let d = m.node(node);
        let inputs: Vec<Value> = d.inputs.iter().map(|&x| m.resolve(x)).collect();
        match &d.op {
            Op::Attention { .. } => {
                // Scores and probabilities, [..., s, t] in the result's type.
                let (q, k) = (&m.value(inputs[0]).ty, &m.value(inputs[1]).ty);
                let rows: u64 = q.shape[..q.rank() - 1].iter().product();
                let scores = rows * k.shape[k.rank() - 2] * m.value(d.output).ty.dtype.size_bytes() as u64;
                // Split as q (batch and heads) is.
                let scores = device_bytes(m, inputs[0], scores);
                transient[i] = 2 * scores;
                attention.insert((inputs[0], inputs[1]), (i, scores));
            }
            Op::Linear { activation: Some(_), .. } => {
                transient[i] = bytes(d.output);
                linear.insert(inputs.clone(), i);
            }
            Op::Linear { activation: None, .. } => {
                if let Some(&at) = linear.get(&inputs) {
                    kept_from[d.output.index()] = Some(at);
                    transient[at] = transient[at].saturating_sub(bytes(d.output));
                }
            }
            Op::Dot(_) => {
                if let Some(&op) = inputs.get(..2).and_then(|qk| attention.get(&(qk[0], qk[1]))) {
                    merged[d.output.index()] = true;
                    scores_of.insert(d.output, op);
                }
            }
            Op::Softmax { .. } => {
                // The scores reach the softmax through fused ops (scale, mask).
                if let Some((at, probs)) = traced(m, inputs[0], |x| scores_of.get(&x).copied()) {
                    kept_from[d.output.index()] = Some(at);
                    transient[at] = transient[at].saturating_sub(probs);
                }
            }
            Op::Unary(UnaryOp::GeluErf | UnaryOp::GeluTanh | UnaryOp::Silu) => {
                activation.insert(inputs[0], i);
            }
            Op::Unary(UnaryOp::Erf | UnaryOp::Tanh | UnaryOp::Sigmoid) => {
                // The backward's erf (tanh, sigmoid) of the activation's input,
                // which the forward activation computes too.
                if let Some(at) = traced(m, inputs[0], |x| activation.get(&x).copied()) {
                    kept_from[d.output.index()] = Some(at);
                }
            }
            _ => {}
        }
    }
    Inside { transient, kept_from, merged }
}

/// What `found` first answers for `x` or the values it is computed from
/// through fusing ops (following each one's first operand).
fn traced<T>(m: &Module, mut x: Value, found: impl Fn(Value) -> Option<T>) -> Option<T> {
    loop {
        if let Some(at) = found(x) {
            return Some(at);
        }
        match m.value(x).def {
            ValueDef::Node(k) if fuses(&m.node(k).op) => x = m.resolve(*m.node(k).inputs.first()?),
            _ => return None,
        }
    }
}

/// How many of `node`'s operands XLA's CPU backend computes with in f32
/// even when they are 16-bit floats (rounding the result to the 16-bit
/// type): all of a batched contraction's (attention's, a dot's with batch
/// dimensions) and both of a dot's that contracts its left operand over
/// another dimension than its last (a weight gradient's `xᵀ·g`); none of
/// other ops', whose 16-bit matrix products run in the 16-bit type.
fn widened_operands(m: &Module, node: Node) -> usize {
    let d = m.node(node);
    let lhs_last = d.inputs.first().and_then(|&x| m.value(m.resolve(x)).ty.rank().checked_sub(1));
    match &d.op {
        Op::Attention { .. } => d.inputs.len(),
        Op::Dot(dims) if !dims.lhs_batch.is_empty() || lhs_last.is_some_and(|last| dims.lhs_contract != [last]) => 2,
        _ => 0,
    }
}

/// Each value's bytes as XLA's CPU backend holds it: its type's, except
/// that a 16-bit float operand XLA computes with in f32 ([`widened_operands`])
/// is held as f32.
fn sizes(m: &Module) -> Vec<u64> {
    let mut size: Vec<u64> = (0..m.num_values()).map(|i| m.value(Value(i as u32)).ty.size_bytes()).collect();
    for &node in m.order() {
        let d = m.node(node);
        for &x in d.inputs.iter().take(widened_operands(m, node)) {
            let ty = &m.value(m.resolve(x)).ty;
            if ty.dtype.is_float() && ty.dtype.size_bytes() == 2 {
                size[m.resolve(x).index()] = ty.num_elements() * 4;
            }
        }
    }
    size.iter().enumerate().map(|(i, &b)| device_bytes(m, Value(i as u32), b)).collect()
}

/// Of `bytes`, value `v`'s, what each device holds: a sharded program's
/// value is split over the devices of the mesh axes its sharding names.
fn device_bytes(m: &Module, v: Value, bytes: u64) -> u64 {
    let (Some(mesh), Some(s)) = (&m.mesh, &m.value(v).sharding) else { return bytes };
    bytes / s.0.iter().flatten().filter_map(|a| mesh.size(a)).product::<u64>().max(1)
}

/// The distinct values `node` reads (aliases resolved).
fn operands(m: &Module, node: Node) -> Vec<Value> {
    let mut operands: Vec<Value> = m.node(node).inputs.iter().map(|&x| m.resolve(x)).collect();
    operands.sort_by_key(|v| v.index());
    operands.dedup();
    operands
}

/// The order XLA's CPU backend runs `m`'s nodes in: its default
/// (concurrency-optimized) scheduler's breadth-first order, each node
/// queued once all its operands are made, arguments and operand-less nodes
/// first. With it, each value's readers (the nodes reading it, once each).
fn breadth_first(m: &Module) -> (Vec<Node>, Vec<Vec<Node>>) {
    let mut users: Vec<Vec<Node>> = vec![Vec::new(); m.num_values()];
    let mut pending: HashMap<Node, usize> = HashMap::new();
    let mut queue: std::collections::VecDeque<Value> = m.inputs().iter().copied().collect();
    queue.extend(m.params().iter().map(|p| p.value));
    for &node in m.order() {
        let operands = operands(m, node);
        for &x in &operands {
            users[x.index()].push(node);
        }
        pending.insert(node, operands.len());
        if operands.is_empty() {
            queue.push_back(m.node(node).output);
        }
    }
    let mut order = Vec::with_capacity(m.order().len());
    while let Some(v) = queue.pop_front() {
        if let ValueDef::Node(k) = m.value(v).def {
            order.push(k);
        }
        for &user in &users[v.index()] {
            let left = pending.get_mut(&user).expect("every node is counted");
            *left -= 1;
            if *left == 0 {
                queue.push_back(m.node(user).output);
            }
        }
    }
    (order, users)
}

/// Walks `m` in XLA's order: each intermediate buffer's life, packed into
/// one block as XLA packs them, and the peak of the activations kept.
fn walk(m: &Module, outputs: &[Value]) -> Walk {
    let (order, users) = breadth_first(m);
    let order = &order;
    let n = m.num_values();
    let is_argument = |v: Value| matches!(m.value(v).def, ValueDef::Input(_) | ValueDef::Param(_));
    let size = sizes(m);
    let bytes = |v: Value| size[v.index()];
    // Buffers: results of non-fusing ops, and fused results a non-fusing op reads or the program returns.
    let mut buffer = vec![false; n];
    for &node in order {
        let d = m.node(node);
        buffer[d.output.index()] = !fuses(&d.op);
    }
    for &node in order {
        let d = m.node(node);
        if !fuses(&d.op) {
            for &x in &d.inputs {
                buffer[m.resolve(x).index()] = true;
            }
        }
    }
    // An expensive elementwise result (a division, an exponential...) that several
    // nodes read: XLA's fusion does not duplicate it into each reader, so it is a buffer.
    for &node in order {
        let d = m.node(node);
        if expensive(&d.op) && m.value(d.output).ty.dtype.is_float() && users[d.output.index()].len() > 1 {
            buffer[d.output.index()] = true;
        }
    }
    let mut returned = vec![false; n];
    for &o in outputs {
        buffer[o.index()] = true;
        returned[o.index()] = true;
    }
    let inside = inside(m, order);
    for (v, is_buffer) in buffer.iter_mut().enumerate() {
        if inside.merged[v] {
            *is_buffer = false;
        }
        if inside.kept_from[v].is_some() {
            *is_buffer = true;
        }
    }
    // Forward values the backward pass reads: read by a node the
    // differentiation or the step appended (named `d.…`), directly or through fused ones.
    let backward = |node: Node| m.node(node).name.starts_with("d.");
    let mut kept = vec![false; n];
    for &node in order.iter().rev() {
        let d = m.node(node);
        let reads_for_backward = backward(node) || (!buffer[d.output.index()] && kept[d.output.index()]);
        if reads_for_backward {
            for &x in &d.inputs {
                let x = m.resolve(x);
                kept[x.index()] = true;
            }
        }
    }
    // Each buffer's last reader, through fused values (which read their inputs where they are consumed).
    let mut last = vec![0usize; n];
    for (i, &node) in order.iter().enumerate().rev() {
        let out = m.node(node).output;
        let at = if buffer[out.index()] { i } else { last[out.index()].max(i) };
        for &x in &m.node(node).inputs {
            let x = m.resolve(x);
            last[x.index()] = last[x.index()].max(at);
        }
    }
    let temporary = |v: Value| buffer[v.index()] && !returned[v.index()] && !is_argument(v);
    // Where each buffer is made (a value kept from a forward op: there) and freed.
    let mut made_at: Vec<Vec<Value>> = vec![Vec::new(); order.len()];
    let mut freed_at: Vec<Vec<Value>> = vec![Vec::new(); order.len()];
    for (i, &node) in order.iter().enumerate() {
        let out = m.node(node).output;
        if temporary(out) {
            let made = inside.kept_from[out.index()].unwrap_or(i);
            made_at[made].push(out);
            // A buffer no op reads is freed where it is made.
            freed_at[last[out.index()].max(i)].push(out);
        }
    }
    let activation = |v: Value| match m.value(v).def {
        ValueDef::Node(k) => inside.kept_from[v.index()].is_some() || (kept[v.index()] && !backward(k)),
        _ => false,
    };
    let (mut live_kept, mut peak_kept) = (0u64, 0u64);
    let mut shared = vec![false; n];
    // Each buffer's life for the packing; a buffer that takes over another's holds its place.
    let mut buffers: Vec<heap::Live> = Vec::new();
    let mut place: Vec<Option<usize>> = vec![None; n];
    for (i, &node) in order.iter().enumerate() {
        let d = m.node(node);
        for &out in &made_at[i] {
            // An elementwise result reuses an operand buffer of its size that dies here.
            let own = out == d.output && inside.kept_from[out.index()].is_none();
            let donor = (own && fuses(&d.op))
                .then(|| {
                    freed_at[i].iter().copied().find(|&x| x != out && !shared[x.index()] && bytes(x) == bytes(out))
                })
                .flatten();
            place[out.index()] = match donor {
                Some(x) => {
                    shared[x.index()] = true;
                    place[x.index()]
                }
                None => {
                    buffers.push(heap::Live { bytes: bytes(out), start: i, end: i });
                    Some(buffers.len() - 1)
                }
            };
            if activation(out) {
                live_kept += bytes(out);
            }
        }
        if inside.transient[i] > 0 {
            buffers.push(heap::Live { bytes: inside.transient[i], start: i, end: i });
        }
        peak_kept = peak_kept.max(live_kept);
        for &v in &freed_at[i] {
            if let Some(b) = place[v.index()] {
                buffers[b].end = buffers[b].end.max(i);
            }
            if activation(v) {
                live_kept -= bytes(v);
            }
        }
    }
    Walk { temporaries: heap::packed_size(&buffers), activations: peak_kept }
}

/// A program's floating-point operations, by where XLA's CPU backend runs
/// them: two per multiply-add of a contraction (matmul, dot, linear,
/// convolution, attention's two), one per element of every other op's result.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Flops {
    /// Matrix products of 16-bit float operands that XLA's CPU backend
    /// runs in the low type (see `widened_operands`): what a CPU with bf16
    /// or f16 instructions runs faster.
    pub low_precision: f64,
    /// Everything else, in f32 (XLA's CPU backend computes batched 16-bit
    /// contractions, and those of a transposed left operand, in f32 too).
    pub f32: f64,
}

impl Flops {
    pub fn total(&self) -> f64 {
        self.low_precision + self.f32
    }
}

/// The floating-point operations of one run of `m`.
pub fn flops(m: &Module) -> Flops {
    let mut flops = Flops::default();
    for &node in m.order() {
        let (n, low) = node_flops(m, node);
        if low {
            flops.low_precision += n;
        } else {
            flops.f32 += n;
        }
    }
    flops
}

/// A program's largest matrix product (a matmul, linear or dot: the one
/// with the most floating-point operations), as far as the kernel that runs
/// it is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LargestProduct {
    /// Its result's rows: its elements over its last dimension's.
    pub rows: u64,
    /// Whether it runs in a 16-bit float type ([`node_flops`]).
    pub low_precision: bool,
}

/// `m`'s largest matrix product; `None` when it has none.
pub fn largest_product(m: &Module) -> Option<LargestProduct> {
    let products =
        m.order().iter().filter(|&&n| matches!(m.node(n).op, Op::MatMul { .. } | Op::Linear { .. } | Op::Dot(_)));
    let (node, (_, low_precision)) =
        products.map(|&n| (n, node_flops(m, n))).max_by(|(_, (a, _)), (_, (b, _))| a.total_cmp(b))?;
    let out = &m.value(m.node(node).output).ty;
    let rows = out.num_elements() / out.shape.last().copied().unwrap_or(1).max(1);
    Some(LargestProduct { rows, low_precision })
}

/// Node `node`'s floating-point operations, and whether they are a 16-bit
/// matrix product's (at the low-precision rate).
pub fn node_flops(m: &Module, node: Node) -> (f64, bool) {
    let d = m.node(node);
    let ty = |i: usize| &m.value(m.resolve(d.inputs[i])).ty;
    let out = m.value(d.output).ty.num_elements() as f64;
    let product = |dims: &[usize], i: usize| dims.iter().map(|&k| ty(i).shape[k] as f64).product::<f64>();
    let (n, matrix) = match &d.op {
        Op::MatMul { .. } | Op::Linear { .. } => {
            (2.0 * out * ty(0).shape.last().copied().unwrap_or(1) as f64, ty(1).rank() == 2)
        }
        Op::Dot(dims) => (2.0 * out * product(&dims.lhs_contract, 0), widened_operands(m, node) == 0),
        Op::Conv2d { .. } => (2.0 * out * ty(1).shape[1..].iter().product::<u64>() as f64, false),
        Op::Attention { .. } => {
            // q [..., s, d] and k [..., t, d]: scores [..., s, t], then those times v.
            let (q, k) = (ty(0), ty(1));
            let rows = q.shape[..q.rank() - 1].iter().product::<u64>() as f64;
            let (t, dk) = (k.shape[k.rank() - 2] as f64, q.shape[q.rank() - 1] as f64);
            (4.0 * rows * t * dk, false)
        }
        _ => (out, false),
    };
    (n, matrix && ty(0).dtype.is_float() && ty(0).dtype.size_bytes() == 2)
}
