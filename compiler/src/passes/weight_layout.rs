//! Weight layout: a dot that contracts a 2-D weight over its last dimension
//! (`x · wᵀ`, `w` stored `[out, in]` as PyTorch and Hugging Face store linear
//! layers) reads the weight transposed instead, contracting its leading
//! dimension. fold-weights then turns the transpose into a transposed view of
//! the stored tensor, so nothing is copied at compile time and the runtime
//! lays the weight out once, while uploading it.
//!
//! Why: on the 0.81 CPU plugin, profiles show `[out, in]` dots running on
//! Eigen, which spent 27% of a MiniLM-L6 forward packing the transposed
//! operand element by element, while `[in, out]` dots run on XNNPACK's GEMM.
//! Twelve BERT feed-forward GEMMs (`[128,384]` by `[384,1536]` and back) ran
//! 2.0–2.4× faster with `[in, out]` weights (see docs/benchmarks.md). GPU GEMM
//! libraries read either layout at full speed.
//!
//! Weights stored in bf16 or f16 (the mixed-precision policies) go the other
//! way: a dot contracting one over its first dimension reads it `[out, in]`.
//! XLA's CPU backend widens a 16-bit weight inside the product, and on the
//! 0.81 plugin that runs faster `[out, in]` at every size measured (a
//! 4096×1024 bf16 weight, eight in a row: 4.5 against 108.8 ms for one row
//! of activations, 4.0 against 6.1 ms for 8, 10.8 against 12.5 ms for 128,
//! 79.8 against 94.5 ms for 1024), where f32 weights are 9× slower
//! `[out, in]` for 8 rows and no faster for one.
//!
//! A 16-bit weight that fused `linear` ops read (`[in, out]`, as GPT-2's
//! `Conv1D` stores it) is read `[out, in]` too: each such `linear` is spelt
//! out again as the dot, the bias added and its activation (what its
//! lowering emits anyway), so its dot can read the weight transposed; fuse
//! forms `linear` from `matmul` only, so it leaves these dots as they are.
//! A 16-bit weight widened to f32 for a matrix-vector product (precision.rs)
//! is read `[out, in]` as well, through its widening: the prefill's and the
//! decode step's programs then read one upload of it.
//!
//! A pipeline can ask for f32 weights `[out, in]` as well
//! ([`F32Layout::OutIn`]): then they follow the 16-bit rule. The driver
//! asks for it to generate on a plugin whose products of one row read
//! `[out, in]` weights faster while its products of many rows read them as
//! fast (the 0.115 build; see `xlac_driver::generate`): a decode step is
//! matrix-vector products, bound by reading the weights.
//!
//! A weight is rewritten only when every use is such a dot (so it is still
//! uploaded once), it is not a module output, and it has no sharding
//! annotation of its own.

use crate::ir::dtype::DType;
use crate::ir::infer::infer;
use crate::ir::op::{BinaryOp, DotDims, Op};
use crate::ir::types::TensorType;
use crate::ir::{Module, Node, ParamSource, Value, ValueDef};
use crate::passes::PassContext;

/// How products read f32 weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum F32Layout {
    /// `[in, out]`, contracting the leading dimension: what Eigen's and
    /// XNNPACK's GEMMs read fastest (the default).
    #[default]
    InOut,
    /// `[out, in]`, contracting the last dimension, as 16-bit weights are read.
    OutIn,
}

/// Rewrites the dots of every eligible weight; returns how many weights it transposed.
pub fn run(m: &mut Module, cx: &PassContext) -> usize {
    let mut rewrites = 0;
    for w in candidates(m) {
        let ty = m.value(w).ty.clone();
        // f32 products read the weight [in, out] unless asked otherwise; 16-bit ones [out, in] (see the module docs).
        let sixteen_bit = matches!(ty.dtype, DType::BF16 | DType::F16);
        let out_in = sixteen_bit || cx.f32_layout == F32Layout::OutIn;
        let (from, to) = if out_in { (0, 1) } else { (1, 0) };
        let Some(Uses { widenings, mut dots, linears }) = uses(m, w, from, sixteen_bit) else { continue };
        dots.extend(linears.into_iter().map(|n| unfuse_linear(m, n)));
        if dots.is_empty() {
            continue;
        }
        let transposed = TensorType::new(ty.dtype, vec![ty.shape[1], ty.shape[0]]);
        let name = m.fresh_name(&format!("{}.transposed", m.value(w).name));
        let first = m.order().iter().copied().find(|n| dots.contains(n) || widenings.contains(n));
        let t = m.insert_before(first.expect("a read"), &name, Op::Transpose { perm: vec![1, 0] }, vec![w], transposed);
        for c in widenings {
            m.node_mut(c).inputs[0] = t;
            let out = m.node(c).output;
            m.set_type(out, TensorType::new(DType::F32, vec![ty.shape[1], ty.shape[0]]));
        }
        for d in dots {
            let direct = m.resolve(m.node(d).inputs[1]) == w;
            let node = m.node_mut(d);
            if direct {
                node.inputs[1] = t;
            }
            if let Op::Dot(dims) = &mut node.op {
                dims.rhs_contract = vec![to];
            }
        }
        rewrites += 1;
    }
    rewrites
}

/// File parameters of rank 2 without a sharding annotation that are no module output.
fn candidates(m: &Module) -> Vec<Value> {
    m.params()
        .iter()
        .filter(|p| matches!(p.source, ParamSource::File { .. }))
        .map(|p| p.value)
        .filter(|&v| m.value(v).ty.rank() == 2 && m.value(v).sharding.is_none())
        .filter(|&v| !m.outputs().iter().any(|&o| m.resolve(o) == v))
        .collect()
}

/// The reads of a weight this pass rewrites, in program order.
struct Uses {
    /// Casts of the (16-bit) weight to f32.
    widenings: Vec<Node>,
    /// Dots contracting the weight, or a widening, as their right operand over the axis asked.
    dots: Vec<Node>,
    /// `linear`s reading the (16-bit) weight as theirs.
    linears: Vec<Node>,
}

/// How `w` is read, when every use is one of [`Uses`] (widenings count only
/// for a `sixteen_bit` weight, linears only with `axis` 0: read `[out, in]`)
/// and neither it nor a widening is a module output; one walk.
fn uses(m: &Module, w: Value, axis: usize, sixteen_bit: bool) -> Option<Uses> {
    let mut readers = vec![w];
    let mut found = Uses { widenings: Vec::new(), dots: Vec::new(), linears: Vec::new() };
    for &n in m.order() {
        let node = m.node(n);
        for (k, &i) in node.inputs.iter().enumerate() {
            let i = m.resolve(i);
            if !readers.contains(&i) {
                continue;
            }
            match &node.op {
                Op::Cast { to: DType::F32 } if sixteen_bit && i == w => {
                    found.widenings.push(n);
                    readers.push(node.output);
                }
                Op::Dot(d) if k == 1 && d.rhs_batch.is_empty() && d.rhs_contract == [axis] => {
                    if readers.contains(&m.resolve(node.inputs[0])) {
                        return None;
                    }
                    found.dots.push(n);
                }
                Op::Linear { .. } if k == 1 && axis == 0 => found.linears.push(n),
                _ => return None,
            }
        }
    }
    let output = m.outputs().iter().any(|&o| readers.contains(&m.resolve(o)));
    (!output).then_some(found)
}

/// A `linear` spelt out in its place as the dot, the bias added and the
/// activation (what its lowering emits), so its dot can read the weight
/// transposed; returns the dot.
fn unfuse_linear(m: &mut Module, n: Node) -> Node {
    let node = m.node(n).clone();
    let Op::Linear { activation, acc } = node.op else { unreachable!("collected as a linear") };
    let mark = m.order().len();
    let x = node.inputs[0];
    let dims = DotDims::batched(0, m.value(x).ty.rank() - 1, 0, acc);
    let product = append(m, &format!("{}.dot", node.name), Op::Dot(dims), vec![x, node.inputs[1]]);
    let mut y = product;
    if let Some(&b) = node.inputs.get(2) {
        y = append(m, &format!("{}.bias", node.name), Op::Binary(BinaryOp::Add), vec![y, b]);
    }
    if let Some(a) = activation {
        y = append(m, &format!("{}.activation", node.name), Op::Unary(a), vec![y]);
    }
    m.replace_with_appended(n, mark, y);
    m.apply_aliases();
    match m.value(product).def {
        ValueDef::Node(dot) => dot,
        _ => unreachable!("appended as a node"),
    }
}

/// Appends `op(inputs)` named after `base`, its type inferred (the parts of a
/// verified `linear` always infer).
fn append(m: &mut Module, base: &str, op: Op, inputs: Vec<Value>) -> Value {
    let types: Vec<&TensorType> = inputs.iter().map(|&v| &m.value(v).ty).collect();
    let ty = infer(&op, &types).expect("the parts of a verified linear have types");
    let name = m.fresh_name(base);
    m.append_node(name.clone(), op, inputs, name, ty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::print::print;

    /// A module whose f32 weight `w`, stored `stored`, is read by a dot
    /// contracting its dimension `contract`.
    fn module(stored: [u64; 2], contract: usize) -> Module {
        let [a, b] = stored;
        let (k, out) = if contract == 0 { (a, b) } else { (b, a) };
        let mut m = Module::new("m");
        let x = m.add_input("x", TensorType::new(DType::F32, vec![2, k]));
        let source = ParamSource::File { path: "w.safetensors".into(), tensor: "w".into(), view: Default::default() };
        let w = m.add_param("w", TensorType::new(DType::F32, vec![a, b]), source);
        let dot = Op::Dot(DotDims::batched(0, 1, contract, None));
        let y = m.append_node("y", dot, vec![x, w], "y", TensorType::new(DType::F32, vec![2, out]));
        m.add_output(y);
        m
    }

    fn context(f32_layout: F32Layout) -> PassContext {
        PassContext { f32_layout, ..PassContext::default() }
    }

    /// The right operand of the module's dot: the weight, or a transpose of it.
    fn reads(m: &Module) -> String {
        print(m).lines().filter(|l| l.contains("= dot(") || l.contains("= transpose(")).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn f32_weights_are_read_in_out_by_default() {
        let mut m = module([16, 32], 1);
        assert_eq!(run(&mut m, &context(F32Layout::InOut)), 1);
        assert!(reads(&m).contains("transpose(%w) {perm=[1,0]}: f32[32,16]"), "{}", reads(&m));
        assert!(reads(&m).contains("rhs_contract=[0]"), "{}", reads(&m));
        let mut stored_in_out = module([32, 8], 0);
        assert_eq!(run(&mut stored_in_out, &context(F32Layout::InOut)), 0);
    }

    #[test]
    fn f32_weights_are_read_out_in_when_the_pipeline_asks() {
        let mut stored_out_in = module([16, 32], 1);
        assert_eq!(run(&mut stored_out_in, &context(F32Layout::OutIn)), 0, "{}", reads(&stored_out_in));
        let mut m = module([32, 8], 0);
        assert_eq!(run(&mut m, &context(F32Layout::OutIn)), 1);
        assert!(reads(&m).contains("transpose(%w) {perm=[1,0]}: f32[8,32]"), "{}", reads(&m));
        assert!(reads(&m).contains("rhs_contract=[1]"), "{}", reads(&m));
    }
}
