//! Lowering to StableHLO: the verified IR becomes one MLIR text module with a
//! `func.func public @main`, its arguments the model inputs then the
//! parameters, its results the model outputs.
//!
//! A module with a mesh of more than one device is lowered for Shardy, XLA's
//! SPMD partitioner: an `sdy.mesh`, an `sdy.sharding` on every argument and
//! result (replicated where unannotated) and an `sdy.sharding_constraint`
//! on every annotated intermediate value.
//!
//! The text is deterministic (values are numbered in emission order, nodes are
//! emitted in the module's order), since it is part of the compilation-cache key.
//! Composite ops (softmax, norms, attention, GELU, SiLU) become
//! `stablehlo.composite` ops named `xlac.OP` whose decomposition function
//! holds their StableHLO expansion: a backend with a fused kernel for the op
//! can use it, the others inline the decomposition.

use crate::backend::random;
use crate::ir::dtype::DType;
use crate::ir::infer::{matmul_shape, reduced_shape};
use crate::ir::op::{fmt_f64, BinaryOp, CompareDir, ConstData, DotDims, Op, ReduceKind, UnaryOp, Window2d};
use crate::ir::sharding::{Mesh, Partitioning, Sharding};
use crate::ir::types::TensorType;
use crate::ir::{Module, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;

/// Whether a program argument is a model input or a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    Input,
    Param,
}

/// One argument of the lowered program.
#[derive(Clone, Debug, PartialEq)]
pub struct ArgSpec {
    pub name: String,
    pub kind: ArgKind,
    pub ty: TensorType,
}

/// A lowered program: its StableHLO text and its signature.
#[derive(Clone, Debug, PartialEq)]
pub struct Lowered {
    /// StableHLO MLIR text.
    pub text: String,
    /// Arguments in order: the inputs, then the parameters.
    pub args: Vec<ArgSpec>,
    /// Results in order, with their names.
    pub outputs: Vec<(String, TensorType)>,
    /// How the program is split over devices (the sharding of each argument
    /// and result, replicated where the module has no annotation); `None` for one device.
    pub partitioning: Option<Partitioning>,
    /// (argument index, output index): the output reuses the argument's buffer.
    pub donations: Vec<(usize, usize)>,
    /// XLA debug options to compile it with, by name: the memory-minimising
    /// scheduler for a program with a product that widens a whole matrix
    /// ([`WideningProducts::whole`]).
    pub xla_flags: BTreeMap<String, bool>,
    /// How its products of many rows by a matrix widened whole read the
    /// matrix, where the choice applies (a program on one device with such
    /// products, [`WideningProducts::many_rows`]); `None` where lowering it
    /// another way would give the same text.
    pub whole_widening: Option<WholeWidening>,
    /// Whether some product (`dot_general`, `convolution`) may read an
    /// operand XLA computes as a broadcast: the condition of a plugin
    /// build's defect, whose workaround a program without such products
    /// goes without (`runtime/src/workarounds.rs`).
    pub products_read_broadcasts: bool,
    /// For each line of `text` (0-based), the node it was emitted for.
    line_nodes: Vec<Option<String>>,
}

/// `<@mesh, [{"data"}, {}]>`: a sharding in Shardy's syntax.
fn sdy_sharding(s: &Sharding) -> String {
    let dims: Vec<String> =
        s.0.iter().map(|a| a.as_ref().map(|a| format!("{{\"{a}\"}}")).unwrap_or("{}".into())).collect();
    format!("<@mesh, [{}]>", dims.join(", "))
}

impl Lowered {
    /// The IR node whose lowering produced line `line` (1-based, as in MLIR diagnostics).
    pub fn node_at_line(&self, line: usize) -> Option<&str> {
        self.line_nodes.get(line.checked_sub(1)?)?.as_deref()
    }
}

/// How a product of many rows reads a matrix it widens whole (int8
/// dequantized, say; [`WideningProducts::many_rows`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WholeWidening {
    /// As XLA fuses it: the widened matrix laid out as the product reads it
    /// (the default).
    #[default]
    AsRead,
    /// Gathered whole first (an identity gather): XLA then writes the
    /// widened matrix `[in, out]`, what the 0.81 plugin's Eigen GEMM reads
    /// fastest. Measured (AMD EPYC Zen 4, 2 cores, 2026-12-05), the Llama
    /// shape's int8 prefill of 128 tokens: 565–695 against 745–888 ms on
    /// 0.81, but 760–813 against 618–661 ms on 0.115.
    Gathered,
}

/// Lowers a verified module to StableHLO.
pub fn lower(m: &Module) -> Lowered {
    lower_with(m, WholeWidening::default())
}

/// Lowers a verified module to StableHLO, its products of many rows by a
/// matrix they widen whole read as `whole` says.
pub fn lower_with(m: &Module, whole: WholeWidening) -> Lowered {
    let mut e = Emitter::default();
    let mut ssa: Vec<Option<T>> = vec![None; m.num_values()];
    let mut args = Vec::new();
    let mut params_text = Vec::new();
    let mesh = m.mesh.as_ref().filter(|mesh| mesh.devices() > 1);
    e.partitioned = mesh.is_some();
    // The sharding of `v` (replicated when unannotated), on a mesh of several devices.
    let sharding_of = |v: Value| {
        let data = m.value(v);
        mesh.map(|_| data.sharding.clone().unwrap_or_else(|| Sharding::replicated(data.ty.rank())))
    };
    let attribute = |s: &Option<Sharding>, alias: Option<usize>| {
        let mut entries = Vec::new();
        if let Some(s) = s {
            entries.push(format!("sdy.sharding = #sdy.sharding{}", sdy_sharding(s)));
        }
        if let Some(k) = alias {
            // The output reuses this argument's buffer (what jax.jit's donate_argnums emits).
            entries.push(format!("tf.aliasing_output = {k} : i32"));
        }
        if entries.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", entries.join(", "))
        }
    };
    let arg_values =
        m.inputs().iter().map(|&v| (v, ArgKind::Input)).chain(m.params().iter().map(|p| (p.value, ArgKind::Param)));
    let mut arg_shardings = Vec::new();
    for (i, (v, kind)) in arg_values.enumerate() {
        let data = m.value(v);
        let sharding = sharding_of(v);
        let alias = m.donations().iter().find(|(a, _)| *a == v).map(|&(_, k)| k);
        params_text.push(format!("%arg{i}: {}{}", tensor(&data.ty), attribute(&sharding, alias)));
        arg_shardings.extend(sharding);
        ssa[v.index()] = Some(T { v: format!("%arg{i}"), ty: data.ty.clone() });
        args.push(ArgSpec { name: data.name.clone(), kind, ty: data.ty.clone() });
    }
    let widening = widening_products(m);
    for &n in m.order() {
        let node = m.node(n);
        e.node = Some(node.name.clone());
        e.comment(&format!("{} = {}", node.name, node.op.name()));
        let operands: Vec<T> = node.inputs.iter().map(|&v| get(&ssa, v)).collect();
        let out_ty = &m.value(node.output).ty;
        e.add_to_widening_product = match node.op {
            Op::Binary(BinaryOp::Add) => node.inputs.iter().position(|v| widening.one_row.contains_key(v)),
            Op::Linear { .. } => widening.one_row.contains_key(&node.output).then_some(0),
            _ => None,
        };
        e.rows_apart = widening.few_rows.get(&node.output).copied();
        let gathered_whole = match whole {
            WholeWidening::Gathered => widening.many_rows.get(&node.output),
            WholeWidening::AsRead => None,
        };
        e.gathered_operand = widening.one_row.get(&node.output).or(gathered_whole).copied();
        let mut r = lower_op(&mut e, &node.op, &operands, out_ty);
        e.add_to_widening_product = None;
        e.rows_apart = None;
        e.gathered_operand = None;
        debug_assert_eq!(&r.ty, out_ty, "lowering of {} changed the type", node.name);
        if let (Some(_), Some(s)) = (mesh, &m.value(node.output).sharding) {
            r = e.op(format!("sdy.sharding_constraint {} {} : {}", r.v, sdy_sharding(s), tensor(out_ty)), out_ty);
        }
        ssa[node.output.index()] = Some(r);
    }
    e.node = None;
    let results: Vec<T> = m.outputs().iter().map(|&v| get(&ssa, v)).collect();
    let result_types: Vec<String> = results.iter().map(|r| tensor(&r.ty)).collect();
    let result_values: Vec<&str> = results.iter().map(|r| r.v.as_str()).collect();
    let output_shardings: Vec<Option<Sharding>> = m.outputs().iter().map(|&v| sharding_of(v)).collect();
    let results_text: Vec<String> =
        result_types.iter().zip(&output_shardings).map(|(t, s)| format!("{t}{}", attribute(s, None))).collect();

    let mut lines: Vec<Line> = vec![(
        format!(
            "module @{} attributes {{mhlo.num_partitions = {} : i32, mhlo.num_replicas = 1 : i32}} {{",
            symbol(&m.name),
            mesh.map_or(1, Mesh::devices)
        ),
        None,
    )];
    if let Some(mesh) = mesh {
        let axes: Vec<String> = mesh.axes().iter().map(|(n, s)| format!("\"{n}\"={s}")).collect();
        lines.push((format!("  sdy.mesh @mesh = <[{}]>", axes.join(", ")), None));
    }
    lines.push((
        format!("  func.func public @main({}) -> ({}) {{", params_text.join(", "), results_text.join(", ")),
        None,
    ));
    lines.extend(e.lines);
    lines.push((format!("    return {} : {}", result_values.join(", "), result_types.join(", ")), None));
    lines.push(("  }".into(), None));
    for f in e.functions {
        lines.extend(f.lines);
    }
    lines.push(("}".into(), None));
    let mut text = String::new();
    for (l, _) in &lines {
        text.push_str(l);
        text.push('\n');
    }
    let outputs = m.output_names().iter().cloned().zip(m.outputs().iter().map(|&v| m.value(v).ty.clone())).collect();
    let partitioning = mesh.map(|mesh| Partitioning {
        mesh: mesh.clone(),
        inputs: arg_shardings,
        outputs: output_shardings.into_iter().flatten().collect(),
    });
    let arg_index =
        |v: Value| m.inputs().iter().copied().chain(m.params().iter().map(|p| p.value)).position(|a| a == v);
    let donations = m.donations().iter().filter_map(|&(v, k)| Some((arg_index(v)?, k))).collect();
    // XLA's default (concurrency-optimized) CPU scheduler runs every widening
    // of a weight at the program's start, as they depend on weights alone: the
    // Llama shape's int8 prefill at batch 8 held 1.35 GiB of temporaries (XLA's
    // memory report), about every matrix widened to f32 at once. The
    // memory-minimising one widens each where it is read (126-130 MiB).
    let xla_flags = match widening.whole {
        true => BTreeMap::from([("xla_cpu_enable_concurrency_optimized_scheduler".to_string(), false)]),
        false => BTreeMap::new(),
    };
    let line_nodes = lines.into_iter().map(|(_, n)| n).collect();
    let whole_widening = (!widening.many_rows.is_empty() && !e.partitioned).then_some(whole);
    let products_read_broadcasts = e.products_read_broadcasts;
    Lowered {
        text,
        args,
        outputs,
        partitioning,
        donations,
        xla_flags,
        whole_widening,
        products_read_broadcasts,
        line_nodes,
    }
}

fn get(ssa: &[Option<T>], v: Value) -> T {
    ssa[v.index()].clone().expect("verified module: operands are defined before use")
}

/// The least exponent a softmax takes ([`Emitter::softmax`]): `exp(−80)`,
/// 1.8e-35, is still a normal f32 (and bf16), and 1e28 of them add up to
/// less than one ulp of the 1 that the row's maximum contributes.
const SOFTMAX_FLOOR: f64 = -80.0;

/// The most rows a product reading narrow data widened is split into: one
/// matrix-vector product per row ([`WideningProducts::few_rows`]).
const MAX_ROWS_APART: u64 = 16;

/// The products (`dot`s and `linear`s without batch dimensions) that read
/// narrow data widened: an operand of fewer than four bytes an element (a
/// bf16 weight), or computed element by element (cast, scaled, reshaped)
/// from such data (an int8 or int4 weight dequantized). XLA's CPU backend
/// widens such an operand as it reads it in a matrix-vector product only.
struct WideningProducts {
    /// Those whose other operand is a single row. Unless an `add` reading the
    /// product is fused into it (XLA's output fusion): the fused product then
    /// widens the whole operand into a buffer every run (the GPT-2-small table
    /// times one row: 2.4 ms, 85.6 ms with the add). So an add reading one of
    /// these is emitted as `y − (−b)`, bit for bit `y + b` (IEEE 754 defines
    /// `y − c` as `y + (−c)`). Mapped to the index of the row operand
    /// ([`Emitter::gathered_operand`]).
    one_row: HashMap<Value, usize>,
    /// Those whose other operand (its index here; the one operand not narrow)
    /// has 2 to [`MAX_ROWS_APART`] rows, contracted along its last
    /// dimensions. Of several rows XLA widens the whole operand into a
    /// buffer, every run (and its default scheduler widens every such matrix
    /// of the program at its start), so each is emitted as one matrix-vector
    /// product per row (the row gathered: [`Emitter::materialized`]) (`xlac bench`, an int8 `[1024, 2816]` matrix times 8
    /// rows: 7.7 ms whole, 0.78 ms as lowered here; times 16 rows: 9.2
    /// against 2.2 ms; split by hand, times 64 rows: 12.9 against 5.8 ms,
    /// times 128: 14.3 against 11.7 ms, while XLA's compile time grows by
    /// some 5 ms a product).
    few_rows: HashMap<Value, usize>,
    /// True when another product reads one narrow operand: of more rows, or
    /// rows not contracted along their last dimensions. XLA widens its whole
    /// matrix into a buffer.
    whole: bool,
    /// The products of that kind with one narrow operand (its index here)
    /// whose other operand has more than [`MAX_ROWS_APART`] rows,
    /// contracted along its last dimensions ([`WholeWidening`]).
    many_rows: HashMap<Value, usize>,
}

fn widening_products(m: &Module) -> WideningProducts {
    let narrow_type = |v: Value| {
        let dtype = m.value(v).ty.dtype;
        dtype.size_bytes() < 4 && dtype != DType::Bool
    };
    // Values holding narrow data or computed element by element from it.
    let mut narrow: HashSet<Value> = HashSet::new();
    let mut products =
        WideningProducts { one_row: HashMap::new(), few_rows: HashMap::new(), whole: false, many_rows: HashMap::new() };
    for &n in m.order() {
        let node = m.node(n);
        let ty = |v: Value| &m.value(v).ty;
        let reads: Vec<bool> = node.inputs.iter().map(|&v| narrow.contains(&v) || narrow_type(v)).collect();
        let elementwise = node.op.is_elementwise() || matches!(node.op, Op::Reshape { .. } | Op::Transpose { .. });
        if narrow_type(node.output) || (elementwise && reads.contains(&true)) {
            narrow.insert(node.output);
        }
        // A matmul is lowered as it is, never split into rows.
        let types: Vec<&TensorType> = node.inputs.iter().map(|&v| ty(v)).collect();
        let contracted = match node.op.contracted_dims(&types) {
            Some(c) if !matches!(node.op, Op::MatMul { .. }) => c,
            _ => continue,
        };
        let rows = |i: usize| ty(node.inputs[i]).rows(&contracted[i]);
        let narrow_operands: Vec<usize> = (0..2).filter(|&i| reads[i]).collect();
        if narrow_operands.is_empty() {
            continue;
        }
        if rows(0) == 1 || rows(1) == 1 {
            products.one_row.insert(node.output, if rows(0) == 1 { 0 } else { 1 });
        } else if let [n] = narrow_operands[..] {
            let wide = 1 - n;
            let rank = ty(node.inputs[wide]).rank();
            let k = contracted[wide].len();
            let trailing = contracted[wide].iter().enumerate().all(|(i, &c)| c == rank - k + i);
            if trailing && rows(wide) <= MAX_ROWS_APART {
                products.few_rows.insert(node.output, wide);
            } else {
                products.whole = true;
                if trailing {
                    products.many_rows.insert(node.output, n);
                }
            }
        }
    }
    products
}

/// A module name as an MLIR symbol: bare when it is an identifier, else quoted.
fn symbol(name: &str) -> String {
    let bare = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_$.".contains(c));
    if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

/// An SSA value and its type.
#[derive(Clone, Debug)]
struct T {
    v: String,
    ty: TensorType,
}

/// Writes numbered SSA lines, each tagged with the node being lowered.
#[derive(Default)]
struct Emitter {
    lines: Vec<Line>,
    next: usize,
    node: Option<String>,
    /// True inside a composite's decomposition: composite ops expand inline there.
    inline_composites: bool,
    /// Decomposition functions of composites, in emission order.
    functions: Vec<Decomposition>,
    /// While lowering an `add` (or a `linear`'s bias) that reads a
    /// [`WideningProducts::one_row`] product, the index of that operand (0 for a
    /// linear): the add is emitted as `y − (−b)`.
    add_to_widening_product: Option<usize>,
    /// While lowering a product of [`WideningProducts::few_rows`], the index
    /// of its operand whose rows are multiplied one at a time.
    rows_apart: Option<usize>,
    /// While lowering a [`WideningProducts::one_row`] product, the index of
    /// its row operand; for a [`WideningProducts::many_rows`] product under
    /// [`WholeWidening::Gathered`], of its narrow operand: the product reads
    /// that operand materialized ([`Emitter::materialized`]).
    gathered_operand: Option<usize>,
    /// True for a program split over several devices: rows are then read
    /// as they are ([`Emitter::materialized`]).
    partitioned: bool,
    /// The values XLA may compute as broadcasts ([`Emitter::classify`]).
    broadcasts: HashSet<String>,
    /// Whether some product (a `dot_general` or `convolution`, here or in a
    /// decomposition it calls) reads one of [`Emitter::broadcasts`].
    products_read_broadcasts: bool,
    /// Whether it emitted any product at all.
    has_products: bool,
}

/// A lowered line and the node it was emitted for.
type Line = (String, Option<String>);

/// The private function holding a composite's expansion.
struct Decomposition {
    /// Op, attributes and types: identical composites share one function.
    key: String,
    symbol: String,
    lines: Vec<Line>,
    /// Whether its expansion multiplies (a `dot_general` or `convolution`).
    has_products: bool,
}

impl Emitter {
    fn fresh(&mut self) -> String {
        self.next += 1;
        format!("%{}", self.next - 1)
    }

    fn line(&mut self, text: String) {
        self.lines.push((text, self.node.clone()));
    }

    fn comment(&mut self, text: &str) {
        self.line(format!("    // {text}"));
    }

    /// Emits `%n = rhs` and returns the value, of type `ty`.
    fn op(&mut self, rhs: String, ty: &TensorType) -> T {
        let v = self.fresh();
        self.classify(&v, &rhs);
        self.line(format!("    {v} = {rhs}"));
        T { v, ty: ty.clone() }
    }

    /// Notes whether `v = rhs` may be computed by XLA as a broadcast, and
    /// whether it is a product reading such a value: the condition of the
    /// 0.115 plugin's reduce-fusion defect (`runtime/src/workarounds.rs`),
    /// which XLA meets once its simplifier has folded what it can. So, to be
    /// safe: every broadcast, iota and constant may be a broadcast, and so may
    /// a value every operand of which may be (any op: XLA sinks elementwise
    /// ops, reshapes, reductions and the like below broadcasts), or a gather
    /// or dynamic slice of one (whatever its indices).
    fn classify(&mut self, v: &str, rhs: &str) {
        let name = rhs.trim_start_matches('"').split(['"', ' ', '(']).next().unwrap_or("");
        let operands: Vec<&str> = rhs
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '%' || c == '_'))
            .filter(|t| t.starts_with('%'))
            .collect();
        let all = !operands.is_empty() && operands.iter().all(|o| self.broadcasts.contains(*o));
        let first = operands.first().is_some_and(|o| self.broadcasts.contains(*o));
        let broadcast = match name {
            "stablehlo.broadcast_in_dim" | "stablehlo.iota" | "stablehlo.constant" => true,
            "stablehlo.gather" | "stablehlo.dynamic_slice" => first,
            _ => all,
        };
        if matches!(name, "stablehlo.dot_general" | "stablehlo.convolution") {
            self.has_products = true;
            self.products_read_broadcasts |= operands.iter().any(|o| self.broadcasts.contains(*o));
        }
        if broadcast {
            self.broadcasts.insert(v.to_string());
        }
    }

    /// A constant of type `ty` with every element `value`.
    fn splat(&mut self, value: f64, ty: &TensorType) -> T {
        self.op(format!("stablehlo.constant dense<{}> : {}", literal(value, ty.dtype), tensor(ty)), ty)
    }

    fn unary(&mut self, name: &str, x: &T) -> T {
        self.op(format!("stablehlo.{name} {} : {}", x.v, tensor(&x.ty)), &x.ty)
    }

    /// An elementwise op on two operands of the same type.
    fn binary(&mut self, name: &str, a: &T, b: &T) -> T {
        self.op(format!("stablehlo.{name} {}, {} : {}", a.v, b.v, tensor(&a.ty)), &a.ty)
    }

    /// `y + b`, where `y` is the product when the node being lowered adds to
    /// a widening one-row product: then `y − (−b)` ([`WideningProducts::one_row`]).
    fn add(&mut self, y: &T, b: &T) -> T {
        if self.add_to_widening_product.is_none() {
            return self.binary("add", y, b);
        }
        let negated = self.unary("negate", b);
        self.binary("subtract", y, &negated)
    }

    /// `x`, gathered whole along its last dimension by an iota: what XLA's
    /// CPU backend computes into a buffer before a product reads it.
    ///
    /// XLA fuses a matrix-vector product whose vector is under 16 KiB with
    /// the elementwise ops computing the vector (and the widening of the
    /// matrix), and the fused product computes each element of the vector
    /// again for every row of the matrix: in an int8 decode step, a row
    /// normalised or gated and scaled by the previous product's per-channel
    /// scales costs four multiplies and five loads per weight. XLA fuses no
    /// gather into a consumer that reads its elements more than once (its
    /// CPU fusion's cost rule for expensive producers), so the gather
    /// computes the row once. `xlac bench` on 0.81 (AMD EPYC Zen 4, 2
    /// cores), 28 int8 `[1024, 2816]` matrices times one row made by four
    /// multiplies: 10.8–11.9 ms before, 2.5–3.0 ms with the row gathered, as
    /// fast as a row given as an input (2.8–3.4 ms). A product of a few rows
    /// ([`Emitter::rows_apart`]) gathers each row it slices out: gathering
    /// the rows together before slicing them made the Llama shape's int8
    /// decode at batch 8 slower (14.5–15.1 against 20.3–20.7 tokens/s), a
    /// gather a row made it faster (50.5–54.6).
    ///
    /// A partitioned program reads `x` as it is: gathering a dimension split
    /// over its devices would bring the whole of it to each.
    fn materialized(&mut self, x: &T) -> T {
        if self.partitioned {
            return x.clone();
        }
        let axis = x.ty.rank() - 1;
        let idx_ty = TensorType::new(DType::I32, vec![x.ty.shape[axis]]);
        let idx = self.op(format!("stablehlo.iota dim = 0 : {}", tensor(&idx_ty)), &idx_ty);
        lower_gather(self, x, &idx, axis, &x.ty)
    }

    fn convert(&mut self, x: &T, to: DType) -> T {
        if x.ty.dtype == to {
            return x.clone();
        }
        let ty = x.ty.with_dtype(to);
        self.op(format!("stablehlo.convert {} : ({}) -> {}", x.v, tensor(&x.ty), tensor(&ty)), &ty)
    }

    fn reshape(&mut self, x: &T, shape: &[u64]) -> T {
        if x.ty.shape == shape {
            return x.clone();
        }
        let ty = TensorType::new(x.ty.dtype, shape.to_vec());
        self.op(format!("stablehlo.reshape {} : ({}) -> {}", x.v, tensor(&x.ty), tensor(&ty)), &ty)
    }

    /// `broadcast_in_dim`: operand dimension i goes to result dimension `dims[i]`.
    fn broadcast_in_dim(&mut self, x: &T, dims: &[usize], shape: &[u64]) -> T {
        let ty = TensorType::new(x.ty.dtype, shape.to_vec());
        self.op(
            format!(
                "stablehlo.broadcast_in_dim {}, dims = {} : ({}) -> {}",
                x.v,
                list(dims),
                tensor(&x.ty),
                tensor(&ty)
            ),
            &ty,
        )
    }

    /// NumPy broadcasting of `x` to `shape` (trailing dimensions aligned).
    fn broadcast_to(&mut self, x: &T, shape: &[u64]) -> T {
        if x.ty.shape == shape {
            return x.clone();
        }
        let offset = shape.len() - x.ty.rank();
        let dims: Vec<usize> = (offset..shape.len()).collect();
        self.broadcast_in_dim(x, &dims, shape)
    }

    fn compare(&mut self, dir: CompareDir, a: &T, b: &T) -> T {
        let kind = if a.ty.dtype.is_float() {
            "FLOAT"
        } else if a.ty.dtype.is_signed() {
            "SIGNED"
        } else {
            "UNSIGNED"
        };
        let ty = a.ty.with_dtype(DType::Bool);
        let t = tensor(&a.ty);
        let d = format!("{dir:?}").to_uppercase();
        self.op(format!("stablehlo.compare {d}, {}, {}, {kind} : ({t}, {t}) -> {}", a.v, b.v, tensor(&ty)), &ty)
    }

    fn select(&mut self, c: &T, a: &T, b: &T) -> T {
        self.op(
            format!(
                "\"stablehlo.select\"({}, {}, {}) : ({}, {}, {}) -> {}",
                c.v,
                a.v,
                b.v,
                tensor(&c.ty),
                tensor(&a.ty),
                tensor(&b.ty),
                tensor(&a.ty)
            ),
            &a.ty,
        )
    }

    /// The product node being lowered: one `dot_general` (an operand gathered
    /// first: [`Emitter::gathered_operand`]), or one a row at a time when it
    /// is a few-row widening product ([`Emitter::rows_apart`]).
    fn product(&mut self, a: &T, b: &T, d: &DotDims, shape: Vec<u64>) -> T {
        if let Some(gathered) = self.gathered_operand {
            let (a, b) = if gathered == 0 { (&self.materialized(a), b) } else { (a, &self.materialized(b)) };
            return self.dot_general(a, b, d, shape);
        }
        let Some(wide) = self.rows_apart else {
            return self.dot_general(a, b, d, shape);
        };
        // The wide operand as [rows, contracted…] (its contracted dimensions
        // are its last), a row sliced out for each product, the products
        // concatenated along its free dimension: the first of the result for
        // the lhs, the last for the rhs (as `dot_general` orders them).
        let (x, other, other_contract) = if wide == 0 { (a, b, &d.rhs_contract) } else { (b, a, &d.lhs_contract) };
        let k = if wide == 0 { d.lhs_contract.len() } else { d.rhs_contract.len() };
        let inner = &x.ty.shape[x.ty.rank() - k..];
        let rows = x.ty.num_elements() / inner.iter().product::<u64>().max(1);
        let x = self.reshape(x, &[&[rows], inner].concat());
        let row_ty = TensorType::new(x.ty.dtype, [&[1], inner].concat());
        let row_contract: Vec<usize> = (1..=k).collect();
        let free: Vec<u64> =
            (0..other.ty.rank()).filter(|i| !other_contract.contains(i)).map(|i| other.ty.shape[i]).collect();
        let parts: Vec<T> = (0..rows)
            .map(|r| {
                let starts = [vec![r], vec![0; k]].concat();
                let limits = [&[r + 1], inner].concat();
                let row = lower_slice(self, &x, &starts, &limits, &vec![1; k + 1], &row_ty);
                let row = self.materialized(&row);
                if wide == 0 {
                    let dims = DotDims { lhs_contract: row_contract.clone(), ..d.clone() };
                    self.dot_general(&row, b, &dims, [&[1], &free[..]].concat())
                } else {
                    let dims = DotDims { rhs_contract: row_contract.clone(), ..d.clone() };
                    self.dot_general(a, &row, &dims, [&free[..], &[1]].concat())
                }
            })
            .collect();
        let (axis, joined) =
            if wide == 0 { (0, [&[rows], &free[..]].concat()) } else { (free.len(), [&free[..], &[rows]].concat()) };
        let joined = lower_concat(self, &parts, axis, &TensorType::new(parts[0].ty.dtype, joined));
        self.reshape(&joined, &shape)
    }

    fn dot_general(&mut self, a: &T, b: &T, d: &DotDims, shape: Vec<u64>) -> T {
        // A low-precision dot whose lhs is contracted along other than its
        // last dimensions (a weight gradient, `gᵀ·x`) runs in its
        // accumulation type: XLA's CPU backend (0.81 and 0.115) lays such
        // dots out in forms its DotThunk refuses in bf16 ("Unsupported
        // element type for DotThunk::Execute: BF16 x BF16 = F32"), which
        // every Hugging Face checkpoint's mixed-bf16 training step hit.
        let r = a.ty.rank();
        let k = d.lhs_contract.len();
        if let Some(acc) = d.acc.filter(|&acc| acc != a.ty.dtype) {
            if d.lhs_contract.iter().enumerate().any(|(i, &c)| c != r - k + i) {
                let (fa, fb) = (self.convert(a, acc), self.convert(b, acc));
                return self.dot_general(&fa, &fb, &DotDims { acc: None, ..d.clone() }, shape);
            }
        }
        let mut parts = Vec::new();
        if !d.lhs_batch.is_empty() {
            parts.push(format!(
                "lhs_batching_dimensions = {}, rhs_batching_dimensions = {}",
                list(&d.lhs_batch),
                list(&d.rhs_batch)
            ));
        }
        parts.push(format!(
            "lhs_contracting_dimensions = {}, rhs_contracting_dimensions = {}",
            list(&d.lhs_contract),
            list(&d.rhs_contract)
        ));
        // The result dtype may differ from the operands' (f32 accumulation of bf16).
        let ty = TensorType::new(d.acc.unwrap_or(a.ty.dtype), shape);
        self.op(
            format!(
                "\"stablehlo.dot_general\"({}, {}) {{dot_dimension_numbers = #stablehlo.dot<{}>}} : ({}, {}) -> {}",
                a.v,
                b.v,
                parts.join(", "),
                tensor(&a.ty),
                tensor(&b.ty),
                tensor(&ty)
            ),
            &ty,
        )
    }

    /// Opens `%v = "stablehlo.OP"(x, init) ({ ^bb0(a, b): combiner … })`, the
    /// region of a reduction with the binary op `combiner`; the caller writes
    /// the closing line with the op's attributes and types. Returns `%v`.
    fn binary_region(&mut self, op: &str, x: &T, init: &T, combiner: &str) -> String {
        let st = tensor(&init.ty);
        let v = self.fresh();
        let (a, b, r) = (self.fresh(), self.fresh(), self.fresh());
        self.classify(&v, &format!("\"stablehlo.{op}\"({}, {})", x.v, init.v));
        self.line(format!("    {v} = \"stablehlo.{op}\"({}, {}) ({{", x.v, init.v));
        self.line(format!("    ^bb0({a}: {st}, {b}: {st}):"));
        self.line(format!("      {r} = stablehlo.{combiner} {a}, {b} : {st}"));
        self.line(format!("      stablehlo.return {r} : {st}"));
        v
    }

    /// Reduces `x` over sorted `axes` with the binary op `combiner` from `init`.
    fn reduce(&mut self, x: &T, axes: &[usize], combiner: &str, init: f64) -> T {
        let init = self.splat(init, &TensorType::scalar(x.ty.dtype));
        let ty = TensorType::new(x.ty.dtype, reduced_shape(&x.ty.shape, axes, false));
        let v = self.binary_region("reduce", x, &init, combiner);
        self.line(format!(
            "    }}) {{dimensions = array<i64: {}>}} : ({}, {}) -> {}",
            csv(axes),
            tensor(&x.ty),
            tensor(&init.ty),
            tensor(&ty)
        ));
        T { v, ty }
    }

    /// Reduces over `axes` and broadcasts the result back to `x`'s shape.
    fn reduce_broadcast(&mut self, x: &T, axes: &[usize], combiner: &str, init: f64) -> T {
        let r = self.reduce(x, axes, combiner, init);
        self.broadcast_rows(&r, axes, &x.ty.shape)
    }

    /// `r`, reduced from a tensor of `shape` over `axes`, broadcast back to it.
    fn broadcast_rows(&mut self, r: &T, axes: &[usize], shape: &[u64]) -> T {
        let kept: Vec<usize> = (0..shape.len()).filter(|d| !axes.contains(d)).collect();
        self.broadcast_in_dim(r, &kept, shape)
    }

    /// Mean over `axes`, broadcast back to `x`'s shape.
    fn mean_broadcast(&mut self, x: &T, axes: &[usize]) -> T {
        let s = self.reduce_broadcast(x, axes, "add", 0.0);
        let n: u64 = axes.iter().map(|&a| x.ty.shape[a]).product();
        let c = self.splat(n as f64, &x.ty);
        self.binary("divide", &s, &c)
    }

    /// Softmax along `axis`; an f16 row is summed in f32 (as NumPy sums an
    /// f16 row), then rounded. (bf16 is left to XLA, which keeps its
    /// intermediates in f32: ONNX's bf16 cases pass as they are.)
    ///
    /// The exponents are floored at [`SOFTMAX_FLOOR`]: where XLA computes `x`
    /// for the max and for the subtraction apart, a copy below the max by
    /// hundreds would make every `exp` 0 and the division 0/0 (SqueezeNet's
    /// pooled logits, ~9.5e9 where one ulp is 1024, on an AVX2 machine: XLA
    /// contracted the pool's multiply by 1/169 into `x − max` as one FMA, so
    /// each element was the product's rounding error under the rounded max).
    /// Floored, such a row gives the uniform distribution its equal logits
    /// mean; any other output changes only where it was below 1e-34.
    ///
    /// The floor is made per row, `(m − m) + FLOOR` from the row's maximum
    /// `m` (the floor itself where `m` is finite; a row whose maximum is
    /// not is NaN either way), not as a constant: XLA shares one constant
    /// among every softmax of a program and, to feed it to the fusions that
    /// compute them (0.115's YNNPACK ones), writes it out whole, a tensor as
    /// large as the scores read again by each layer. Broadcast from a value
    /// the fusion computes, it stays inside.
    fn softmax(&mut self, x: &T, axis: usize) -> T {
        let (shifted, m) = self.shifted_by_max(x, axis);
        let zero = self.binary("subtract", &m, &m);
        let floor = self.splat(SOFTMAX_FLOOR, &m.ty);
        let floor = self.binary("add", &zero, &floor);
        let floor = self.broadcast_rows(&floor, &[axis], &x.ty.shape);
        let shifted = self.binary("maximum", &shifted, &floor);
        let ex = self.unary("exponential", &shifted);
        let s = if x.ty.dtype == DType::F16 {
            let wide = self.convert(&ex, DType::F32);
            let s = self.reduce_broadcast(&wide, &[axis], "add", 0.0);
            self.convert(&s, x.ty.dtype)
        } else {
            self.reduce_broadcast(&ex, &[axis], "add", 0.0)
        };
        self.binary("divide", &ex, &s)
    }

    /// `x − max(x, m)` along `axis`, `m` the row's maximum (returned too,
    /// one per row): `min(x − m, 0)` without a constant, at most 0 even where
    /// XLA computes `x` twice and the copies differ in their last bit (a
    /// fused producer recomputed with another summation order), which at
    /// magnitudes of 1e9 would be an `exp` of hundreds, an overflow, and NaN
    /// after the division. (With a constant bound, XLA merged it and the
    /// softmax's floor into a `clamp`, an op its YNNPACK fusions do not take:
    /// the scores went through memory once more.)
    fn shifted_by_max(&mut self, x: &T, axis: usize) -> (T, T) {
        let m = self.reduce(x, &[axis], "maximum", f64::NEG_INFINITY);
        let rows = self.broadcast_rows(&m, &[axis], &x.ty.shape);
        let top = self.binary("maximum", x, &rows);
        (self.binary("subtract", x, &top), m)
    }

    /// `op` as a `stablehlo.composite` named `xlac.OP` whose decomposition is
    /// a private function holding its expansion (shared by identical uses).
    fn composite(&mut self, op: &Op, x: &[T], out: &TensorType) -> T {
        let arg_types: Vec<String> = x.iter().map(|t| tensor(&t.ty)).collect();
        let key = format!("{op:?}|{}|{}", arg_types.join(","), tensor(out));
        let symbol = match self.functions.iter().find(|f| f.key == key) {
            Some(f) => f.symbol.clone(),
            None => {
                let name = format!("xlac.{}.{}", op.name(), self.functions.len());
                let mut body = Emitter { inline_composites: true, node: self.node.clone(), ..Emitter::default() };
                let args: Vec<T> =
                    x.iter().enumerate().map(|(i, t)| T { v: format!("%arg{i}"), ty: t.ty.clone() }).collect();
                let r = lower_op(&mut body, op, &args, out);
                self.products_read_broadcasts |= body.products_read_broadcasts;
                let has_products = body.has_products;
                let params: Vec<String> = args.iter().map(|a| format!("{}: {}", a.v, tensor(&a.ty))).collect();
                let mut lines = vec![(
                    format!("  func.func private @{name}({}) -> {} {{", params.join(", "), tensor(out)),
                    self.node.clone(),
                )];
                lines.extend(body.lines);
                lines.push((format!("    return {} : {}", r.v, tensor(out)), self.node.clone()));
                lines.push(("  }".into(), self.node.clone()));
                self.functions.push(Decomposition { key, symbol: name.clone(), lines, has_products });
                name
            }
        };
        // XLA inlines the call: its products read what it is given.
        if self.functions.iter().any(|f| f.symbol == symbol && f.has_products) {
            self.has_products = true;
            self.products_read_broadcasts |= x.iter().any(|t| self.broadcasts.contains(&t.v));
        }
        let attrs = composite_attributes(op);
        let vals: Vec<&str> = x.iter().map(|t| t.v.as_str()).collect();
        self.op(
            format!(
                "\"stablehlo.composite\"({}) {{composite_attributes = {{{attrs}}}, decomposition = @{symbol}, name = \"xlac.{}\"}} : ({}) -> {}",
                vals.join(", "),
                op.name(),
                arg_types.join(", "),
                tensor(out)
            ),
            out,
        )
    }

    fn reduce_window(
        &mut self,
        x: &T,
        kernel: [u64; 2],
        w: &Window2d,
        combiner: &str,
        init: f64,
        out: &TensorType,
    ) -> T {
        let init = self.splat(init, &TensorType::scalar(x.ty.dtype));
        let v = self.binary_region("reduce_window", x, &init, combiner);
        let p = w.padding;
        self.line(format!(
            "    }}) {{padding = dense<[[0, 0], [0, 0], [{}, {}], [{}, {}]]> : tensor<4x2xi64>, window_dilations = array<i64: 1, 1, {}, {}>, window_dimensions = array<i64: 1, 1, {}, {}>, window_strides = array<i64: 1, 1, {}, {}>}} : ({}, {}) -> {}",
            p[0], p[1], p[2], p[3], w.dilation[0], w.dilation[1], kernel[0], kernel[1], w.stride[0], w.stride[1], tensor(&x.ty), tensor(&init.ty), tensor(out)
        ));
        T { v, ty: out.clone() }
    }
}

fn list(v: &[usize]) -> String {
    format!("[{}]", csv(v))
}

fn csv<D: std::fmt::Display>(v: &[D]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

/// The StableHLO element type name: xlac's dtype name, but for the unsigned
/// and boolean types, which MLIR spells `ui8` and `i1`.
fn element(d: DType) -> &'static str {
    match d {
        DType::U8 => "ui8",
        DType::U16 => "ui16",
        DType::U32 => "ui32",
        DType::U64 => "ui64",
        DType::Bool => "i1",
        DType::F8E4M3FN => "f8E4M3FN",
        DType::F8E4M3FNUZ => "f8E4M3FNUZ",
        DType::F8E5M2 => "f8E5M2",
        DType::F8E5M2FNUZ => "f8E5M2FNUZ",
        _ => d.name(),
    }
}

/// The MLIR tensor type, e.g. `tensor<8x16xf32>` or `tensor<f32>`.
fn tensor(t: &TensorType) -> String {
    let mut s = String::from("tensor<");
    for d in &t.shape {
        let _ = write!(s, "{d}x");
    }
    s.push_str(element(t.dtype));
    s.push('>');
    s
}

/// A scalar literal of `dtype` for `dense<…>`; infinities use the bit pattern.
fn literal(v: f64, dtype: DType) -> String {
    if dtype == DType::Bool {
        return if v != 0.0 { "true".into() } else { "false".into() };
    }
    if !dtype.is_float() {
        let (lo, hi) = int_range(dtype);
        return (v as i128).clamp(lo, hi).to_string();
    }
    if let Some(f) = dtype.float8() {
        // The byte itself; a type without infinities takes its largest value.
        let v = if v.is_infinite() && f.round(v).is_nan() { v.signum() * f.max_finite() } else { v };
        return format!("0x{:02X}", f.encode(f.round(v)));
    }
    if v.is_infinite() {
        let bits = match (dtype, v > 0.0) {
            (DType::F32, true) => "0x7F800000",
            (DType::F32, false) => "0xFF800000",
            (DType::F64, true) => "0x7FF0000000000000",
            (DType::F64, false) => "0xFFF0000000000000",
            (DType::F16, true) => "0x7C00",
            (DType::F16, false) => "0xFC00",
            (DType::BF16, true) => "0x7F80",
            (_, _) => "0xFF80",
        };
        return bits.into();
    }
    fmt_f64(v)
}

/// The range of an integer dtype or bool.
fn int_range(d: DType) -> (i128, i128) {
    d.int_range().unwrap_or((i64::MIN as i128, i64::MAX as i128))
}

/// The identity of `max` (lowest value) or `min` (highest value) for `d`.
fn lowest(d: DType) -> f64 {
    if d.is_float() {
        f64::NEG_INFINITY
    } else {
        int_range(d).0 as f64
    }
}

fn highest(d: DType) -> f64 {
    if d.is_float() {
        f64::INFINITY
    } else {
        int_range(d).1 as f64
    }
}

/// Exact constant data: floats as little-endian hex of the stored type, integers and bools as lists.
fn dense(dtype: DType, shape: &[u64], data: &ConstData) -> String {
    match data {
        ConstData::Float(_) => {
            let hex: String = data.to_le_bytes(dtype).iter().map(|b| format!("{b:02X}")).collect();
            format!("\"0x{hex}\"")
        }
        ConstData::Int(v) => {
            let items: Vec<String> = if dtype == DType::Bool {
                v.iter().map(|&x| if x != 0 { "true".to_string() } else { "false".to_string() }).collect()
            } else {
                v.iter().map(|&x| dtype.ordinal(x).to_string()).collect()
            };
            // One element is a splat: a list would have shape [1], not the tensor's (e.g. rank 0).
            match items.as_slice() {
                [one] => one.clone(),
                _ => nested(&items, shape),
            }
        }
    }
}

/// Row-major `items` as the nested list of a tensor of `shape` (`[[1, 2], [3, 4]]`).
fn nested(items: &[String], shape: &[u64]) -> String {
    match shape {
        [] | [_] => format!("[{}]", items.join(", ")),
        [rows, rest @ ..] => {
            let row = items.len() / (*rows).max(1) as usize;
            let parts: Vec<String> = items.chunks(row.max(1)).map(|c| nested(c, rest)).collect();
            format!("[{}]", parts.join(", "))
        }
    }
}

/// True for the ops lowered as `stablehlo.composite` (so a backend can pick a fused kernel).
fn is_composite(op: &Op) -> bool {
    matches!(
        op,
        Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::LayerNorm { .. }
            | Op::RmsNorm { .. }
            | Op::Attention { .. }
            | Op::Unary(UnaryOp::GeluErf | UnaryOp::GeluTanh | UnaryOp::Silu)
    )
}

/// A composite's attributes as MLIR attribute entries.
fn composite_attributes(op: &Op) -> String {
    match op {
        Op::Softmax { axis } | Op::LogSoftmax { axis } => format!("axis = {axis} : i64"),
        Op::LayerNorm { axis, epsilon } => format!("axis = {axis} : i64, epsilon = {} : f64", fmt_f64(*epsilon)),
        Op::RmsNorm { epsilon } => format!("epsilon = {} : f64", fmt_f64(*epsilon)),
        Op::Attention { causal, scale: Some(s), .. } => format!("causal = {causal}, scale = {} : f64", fmt_f64(*s)),
        Op::Attention { causal, scale: None, .. } => format!("causal = {causal}"),
        _ => String::new(),
    }
}

fn lower_op(e: &mut Emitter, op: &Op, x: &[T], out: &TensorType) -> T {
    if is_composite(op) && !e.inline_composites {
        return e.composite(op, x, out);
    }
    match op {
        Op::Unary(u) => lower_unary(e, *u, &x[0]),
        Op::Binary(op) => lower_binary(e, *op, x, out),
        Op::Compare(dir) => {
            let a = e.broadcast_to(&x[0], &out.shape);
            let b = e.broadcast_to(&x[1], &out.shape);
            e.compare(*dir, &a, &b)
        }
        Op::Where => {
            let c = e.broadcast_to(&x[0], &out.shape);
            let a = e.broadcast_to(&x[1], &out.shape);
            let b = e.broadcast_to(&x[2], &out.shape);
            e.select(&c, &a, &b)
        }
        Op::Cast { to } => e.convert(&x[0], *to),
        Op::MatMul { .. } => lower_matmul(e, &x[0], &x[1], out),
        Op::Dot(d) => e.product(&x[0], &x[1], d, out.shape.clone()),
        Op::Reduce { kind, axes, keepdims } => lower_reduce(e, *kind, &x[0], axes, *keepdims, out),
        Op::ArgMax { axis, .. } => lower_argmax(e, &x[0], *axis, out),
        Op::ArgSort { axis, descending } => lower_argsort(e, &x[0], *axis, *descending),
        Op::Reshape { shape } => e.reshape(&x[0], shape),
        Op::Transpose { perm } => e.op(
            format!(
                "stablehlo.transpose {}, dims = {} : ({}) -> {}",
                x[0].v,
                list(perm),
                tensor(&x[0].ty),
                tensor(out)
            ),
            out,
        ),
        Op::BroadcastTo { shape } => e.broadcast_to(&x[0], shape),
        Op::Concat { axis } => lower_concat(e, x, *axis, out),
        Op::Slice { starts, limits, strides } => lower_slice(e, &x[0], starts, limits, strides, out),
        Op::Pad { low, high, value } => lower_pad(e, &x[0], low, high, *value, out),
        Op::DynamicSlice { axis, .. } => {
            let starts = start_indices(e, &x[1], *axis, x[0].ty.rank());
            e.op(
                format!(
                    "\"stablehlo.dynamic_slice\"({}, {}) {{slice_sizes = array<i64: {}>}} : ({}, {}) -> {}",
                    x[0].v,
                    starts.iter().map(|s| s.v.as_str()).collect::<Vec<_>>().join(", "),
                    csv(&out.shape),
                    tensor(&x[0].ty),
                    starts.iter().map(|s| tensor(&s.ty)).collect::<Vec<_>>().join(", "),
                    tensor(out)
                ),
                out,
            )
        }
        Op::DynamicUpdateSlice { axis } => {
            let starts = start_indices(e, &x[2], *axis, x[0].ty.rank());
            e.op(
                format!(
                    "stablehlo.dynamic_update_slice {}, {}, {} : ({}, {}, {}) -> {}",
                    x[0].v,
                    x[1].v,
                    starts.iter().map(|s| s.v.as_str()).collect::<Vec<_>>().join(", "),
                    tensor(&x[0].ty),
                    tensor(&x[1].ty),
                    starts.iter().map(|s| tensor(&s.ty)).collect::<Vec<_>>().join(", "),
                    tensor(out)
                ),
                out,
            )
        }
        Op::Gather { axis } => lower_gather(e, &x[0], &x[1], *axis, out),
        Op::ScatterAdd { axis } => lower_scatter_add(e, x, *axis, out),
        Op::StopGradient => x[0].clone(),
        Op::Iota { axis, .. } => e.op(format!("stablehlo.iota dim = {axis} : {}", tensor(out)), out),
        Op::Constant { dtype, data, .. } => {
            e.op(format!("stablehlo.constant dense<{}> : {}", dense(*dtype, &out.shape, data), tensor(out)), out)
        }
        Op::RandomUniform { stream, .. } => lower_random_uniform(e, &x[0], *stream, out),
        Op::Conv2d { window, groups, .. } => lower_conv2d(e, x, window, *groups, out),
        Op::MaxPool2d { kernel, window } => e.reduce_window(&x[0], *kernel, window, "maximum", f64::NEG_INFINITY, out),
        Op::AvgPool2d { kernel, window } => {
            let s = e.reduce_window(&x[0], *kernel, window, "add", 0.0, out);
            let n = e.splat((kernel[0] * kernel[1]) as f64, out);
            e.binary("divide", &s, &n)
        }
        Op::Softmax { axis } => e.softmax(&x[0], *axis),
        Op::LogSoftmax { axis } => lower_log_softmax(e, &x[0], *axis),
        Op::LayerNorm { axis, epsilon } => lower_layer_norm(e, x, *axis, *epsilon),
        Op::RmsNorm { epsilon } => lower_rms_norm(e, x, *epsilon),
        Op::Attention { causal, scale, .. } => lower_attention(e, x, *causal, *scale, out),
        Op::Linear { activation, .. } => lower_linear(e, x, *activation, out),
    }
}

/// A binary op with NumPy broadcasting; integer division by xlac's rules.
fn lower_binary(e: &mut Emitter, op: BinaryOp, x: &[T], out: &TensorType) -> T {
    let name = match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "subtract",
        BinaryOp::Mul => "multiply",
        BinaryOp::Div => "divide",
        BinaryOp::Pow => "power",
        BinaryOp::Max => "maximum",
        BinaryOp::Min => "minimum",
        BinaryOp::And => "and",
        BinaryOp::Or => "or",
    };
    let a = e.broadcast_to(&x[0], &out.shape);
    let b = e.broadcast_to(&x[1], &out.shape);
    if op == BinaryOp::Div && out.dtype.is_integer() {
        return integer_divide(e, &a, &b);
    }
    match (op, e.add_to_widening_product) {
        (BinaryOp::Add, Some(1)) => e.add(&b, &a),
        (BinaryOp::Add, Some(_)) => e.add(&a, &b),
        _ => e.binary(name, &a, &b),
    }
}

fn lower_reduce(e: &mut Emitter, kind: ReduceKind, x: &T, axes: &[usize], keepdims: bool, out: &TensorType) -> T {
    let d = x.ty.dtype;
    let r = match kind {
        ReduceKind::Sum => e.reduce(x, axes, "add", 0.0),
        ReduceKind::Max => e.reduce(x, axes, "maximum", lowest(d)),
        ReduceKind::Min => e.reduce(x, axes, "minimum", highest(d)),
        ReduceKind::Mean => {
            let s = e.reduce(x, axes, "add", 0.0);
            let n: u64 = axes.iter().map(|&a| x.ty.shape[a]).product();
            let c = e.splat(n as f64, &s.ty);
            e.binary("divide", &s, &c)
        }
    };
    if keepdims {
        e.reshape(&r, &out.shape)
    } else {
        r
    }
}

fn lower_concat(e: &mut Emitter, x: &[T], axis: usize, out: &TensorType) -> T {
    if x.len() == 1 {
        return x[0].clone();
    }
    let vals: Vec<&str> = x.iter().map(|t| t.v.as_str()).collect();
    let tys: Vec<String> = x.iter().map(|t| tensor(&t.ty)).collect();
    e.op(
        format!("stablehlo.concatenate {}, dim = {axis} : ({}) -> {}", vals.join(", "), tys.join(", "), tensor(out)),
        out,
    )
}

fn lower_slice(e: &mut Emitter, x: &T, starts: &[u64], limits: &[u64], strides: &[u64], out: &TensorType) -> T {
    e.op(
        format!(
            "\"stablehlo.slice\"({}) {{limit_indices = array<i64: {}>, start_indices = array<i64: {}>, strides = array<i64: {}>}} : ({}) -> {}",
            x.v,
            csv(limits),
            csv(starts),
            csv(strides),
            tensor(&x.ty),
            tensor(out)
        ),
        out,
    )
}

/// A dynamic slice's start indices, one per dimension: `start` at `axis`, zeros
/// (of `start`'s type, as StableHLO requires them all alike) elsewhere.
fn start_indices(e: &mut Emitter, start: &T, axis: usize, rank: usize) -> Vec<T> {
    (0..rank).map(|d| if d == axis { start.clone() } else { e.splat(0.0, &start.ty) }).collect()
}

fn lower_pad(e: &mut Emitter, x: &T, low: &[i64], high: &[i64], value: f64, out: &TensorType) -> T {
    let pv = e.splat(value, &TensorType::scalar(out.dtype));
    let interior = vec![0; low.len()];
    e.op(
        format!(
            "\"stablehlo.pad\"({}, {}) {{edge_padding_high = array<i64: {}>, edge_padding_low = array<i64: {}>, interior_padding = array<i64: {}>}} : ({}, {}) -> {}",
            x.v,
            pv.v,
            csv(high),
            csv(low),
            csv(&interior),
            tensor(&x.ty),
            tensor(&pv.ty),
            tensor(out)
        ),
        out,
    )
}

fn lower_gather(e: &mut Emitter, data: &T, idx: &T, axis: usize, out: &TensorType) -> T {
    let (r, q) = (data.ty.rank(), idx.ty.rank());
    let offset: Vec<usize> = (0..axis).chain(axis + q..r - 1 + q).collect();
    let mut sizes = data.ty.shape.clone();
    sizes[axis] = 1;
    e.op(
        format!(
            "\"stablehlo.gather\"({}, {}) {{dimension_numbers = #stablehlo.gather<offset_dims = {}, collapsed_slice_dims = [{axis}], start_index_map = [{axis}], index_vector_dim = {q}>, indices_are_sorted = false, slice_sizes = array<i64: {}>}} : ({}, {}) -> {}",
            data.v,
            idx.v,
            list(&offset),
            csv(&sizes),
            tensor(&data.ty),
            tensor(&idx.ty),
            tensor(out)
        ),
        out,
    )
}

/// Scatter-add, the transpose of [`lower_gather`]. Indices are clamped first,
/// as gather clamps them (XLA's scatter would skip an index out of range).
fn lower_scatter_add(e: &mut Emitter, x: &[T], axis: usize, out: &TensorType) -> T {
    let (data, idx, updates) = (&x[0], &x[1], &x[2]);
    let (r, q) = (data.ty.rank(), idx.ty.rank());
    let bound = TensorType::scalar(idx.ty.dtype);
    let lo = e.splat(0.0, &bound);
    let hi = e.splat((data.ty.shape[axis] - 1) as f64, &bound);
    let clamped = e.op(
        format!(
            "\"stablehlo.clamp\"({}, {}, {}) : ({}, {}, {}) -> {}",
            lo.v,
            idx.v,
            hi.v,
            tensor(&bound),
            tensor(&idx.ty),
            tensor(&bound),
            tensor(&idx.ty)
        ),
        &idx.ty,
    );
    let window: Vec<usize> = (0..axis).chain(axis + q..r - 1 + q).collect();
    let st = tensor(&TensorType::scalar(out.dtype));
    let v = e.fresh();
    let (a, b, s) = (e.fresh(), e.fresh(), e.fresh());
    e.classify(&v, &format!("\"stablehlo.scatter\"({}, {}, {})", data.v, clamped.v, updates.v));
    e.line(format!("    {v} = \"stablehlo.scatter\"({}, {}, {}) ({{", data.v, clamped.v, updates.v));
    e.line(format!("    ^bb0({a}: {st}, {b}: {st}):"));
    e.line(format!("      {s} = stablehlo.add {a}, {b} : {st}"));
    e.line(format!("      stablehlo.return {s} : {st}"));
    e.line(format!(
        "    }}) {{indices_are_sorted = false, scatter_dimension_numbers = #stablehlo.scatter<update_window_dims = {}, inserted_window_dims = [{axis}], scatter_dims_to_operand_dims = [{axis}], index_vector_dim = {q}>, unique_indices = false}} : ({}, {}, {}) -> {}",
        list(&window),
        tensor(&data.ty),
        tensor(&idx.ty),
        tensor(&updates.ty),
        tensor(out)
    ));
    T { v, ty: out.clone() }
}

fn lower_conv2d(e: &mut Emitter, x: &[T], w: &Window2d, groups: u64, out: &TensorType) -> T {
    let (xx, wt) = (&x[0], &x[1]);
    let p = w.padding;
    let conv_ty = out.clone();
    let c = e.op(
        format!(
            "\"stablehlo.convolution\"({}, {}) {{batch_group_count = 1 : i64, dimension_numbers = #stablehlo.conv<[b, f, 0, 1]x[o, i, 0, 1]->[b, f, 0, 1]>, feature_group_count = {groups} : i64, lhs_dilation = array<i64: 1, 1>, padding = dense<[[{}, {}], [{}, {}]]> : tensor<2x2xi64>, rhs_dilation = array<i64: {}, {}>, window_strides = array<i64: {}, {}>}} : ({}, {}) -> {}",
            xx.v, wt.v, p[0], p[1], p[2], p[3], w.dilation[0], w.dilation[1], w.stride[0], w.stride[1], tensor(&xx.ty), tensor(&wt.ty), tensor(&conv_ty)
        ),
        &conv_ty,
    );
    match x.get(2) {
        Some(bias) => {
            let b = e.broadcast_in_dim(bias, &[1], &out.shape);
            e.binary("add", &c, &b)
        }
        None => c,
    }
}

/// XLA's `THREE_FRY` generator on the state [`random::state`] makes 64 bits
/// per element; their top `significand_bits` become a float, scaled by 2^-bits.
fn lower_random_uniform(e: &mut Emitter, seed: &T, stream: u64, out: &TensorType) -> T {
    let bits = out.dtype.significand_bits().expect("verified module: a float dtype");
    let dims: String = out.shape.iter().map(|d| format!("{d}x")).collect();
    let u64s = format!("tensor<{dims}ui64>");
    let key = e.fresh();
    e.line(format!("    {key} = stablehlo.bitcast_convert {} : (tensor<i64>) -> tensor<ui64>", seed.v));
    let key1 = e.fresh();
    e.line(format!("    {key1} = stablehlo.reshape {key} : (tensor<ui64>) -> tensor<1xui64>"));
    let counter = e.fresh();
    let [_, start] = random::state(0, stream);
    e.line(format!("    {counter} = stablehlo.constant dense<{start}> : tensor<1xui64>"));
    let state = e.fresh();
    e.line(format!(
        "    {state} = stablehlo.concatenate {key1}, {counter}, dim = 0 : (tensor<1xui64>, tensor<1xui64>) -> tensor<2xui64>"
    ));
    let (next, draws) = (e.fresh(), e.fresh());
    e.line(format!(
        "    {next}, {draws} = stablehlo.rng_bit_generator {state}, algorithm = THREE_FRY : (tensor<2xui64>) -> (tensor<2xui64>, {u64s})"
    ));
    let shift = e.fresh();
    e.line(format!("    {shift} = stablehlo.constant dense<{}> : {u64s}", random::shift(bits)));
    let top = e.fresh();
    e.line(format!("    {top} = stablehlo.shift_right_logical {draws}, {shift} : {u64s}"));
    let whole = e.op(format!("stablehlo.convert {top} : ({u64s}) -> {}", tensor(out)), out);
    let scale = e.splat((-(bits as f64)).exp2(), out);
    e.binary("multiply", &whole, &scale)
}

fn lower_log_softmax(e: &mut Emitter, x: &T, axis: usize) -> T {
    let (shifted, _) = e.shifted_by_max(x, axis);
    let ex = e.unary("exponential", &shifted);
    let s = e.reduce_broadcast(&ex, &[axis], "add", 0.0);
    let lse = e.unary("log", &s);
    e.binary("subtract", &shifted, &lse)
}

fn lower_layer_norm(e: &mut Emitter, x: &[T], axis: usize, epsilon: f64) -> T {
    let xx = &x[0];
    let axes: Vec<usize> = (axis..xx.ty.rank()).collect();
    let mean = e.mean_broadcast(xx, &axes);
    let c = e.binary("subtract", xx, &mean);
    let sq = e.binary("multiply", &c, &c);
    let var = e.mean_broadcast(&sq, &axes);
    let eps = e.splat(epsilon, &xx.ty);
    let ve = e.binary("add", &var, &eps);
    let inv = e.unary("rsqrt", &ve);
    let mut y = e.binary("multiply", &c, &inv);
    if let Some(scale) = x.get(1) {
        let s = e.broadcast_in_dim(scale, &axes, &xx.ty.shape);
        y = e.binary("multiply", &y, &s);
    }
    if let Some(bias) = x.get(2) {
        let b = e.broadcast_in_dim(bias, &axes, &xx.ty.shape);
        y = e.binary("add", &y, &b);
    }
    y
}

fn lower_rms_norm(e: &mut Emitter, x: &[T], epsilon: f64) -> T {
    let xx = &x[0];
    let last = xx.ty.rank() - 1;
    let sq = e.binary("multiply", xx, xx);
    let ms = e.mean_broadcast(&sq, &[last]);
    let eps = e.splat(epsilon, &xx.ty);
    let me = e.binary("add", &ms, &eps);
    let inv = e.unary("rsqrt", &me);
    let mut y = e.binary("multiply", xx, &inv);
    if let Some(scale) = x.get(1) {
        let s = e.broadcast_in_dim(scale, &[last], &xx.ty.shape);
        y = e.binary("multiply", &y, &s);
    }
    y
}

fn lower_linear(e: &mut Emitter, x: &[T], activation: Option<UnaryOp>, out: &TensorType) -> T {
    let xx = &x[0];
    let d = DotDims::batched(0, xx.ty.rank() - 1, 0, Some(out.dtype));
    let mut y = e.product(xx, &x[1], &d, out.shape.clone());
    if let Some(b) = x.get(2) {
        let bb = e.broadcast_in_dim(b, &[out.rank() - 1], &out.shape);
        y = e.add(&y, &bb);
    }
    match activation {
        Some(a) => lower_unary(e, a, &y),
        None => y,
    }
}

/// Integer division with xlac's semantics: `x / 0 = 0` and `MIN / -1 = MIN`.
/// The divisor is made safe first: XLA's CPU backend divides in hardware, and
/// both cases would kill the process (SIGFPE).
fn integer_divide(e: &mut Emitter, a: &T, b: &T) -> T {
    let d = a.ty.dtype;
    let zero = e.splat(0.0, &b.ty);
    let one = e.splat(1.0, &b.ty);
    let by_zero = e.compare(CompareDir::Eq, b, &zero);
    let bad = if d.is_signed() {
        let min = e.splat(int_range(d).0 as f64, &a.ty);
        let minus_one = e.splat(-1.0, &b.ty);
        let a_min = e.compare(CompareDir::Eq, a, &min);
        let b_minus_one = e.compare(CompareDir::Eq, b, &minus_one);
        let overflow = e.binary("and", &a_min, &b_minus_one);
        e.binary("or", &by_zero, &overflow)
    } else {
        by_zero.clone()
    };
    let safe = e.select(&bad, &one, b);
    let q = e.binary("divide", a, &safe);
    e.select(&by_zero, &zero, &q)
}

fn lower_unary(e: &mut Emitter, u: UnaryOp, x: &T) -> T {
    let simple = match u {
        UnaryOp::Neg => Some("negate"),
        UnaryOp::Abs => Some("abs"),
        UnaryOp::Exp => Some("exponential"),
        UnaryOp::Log => Some("log"),
        UnaryOp::Sqrt => Some("sqrt"),
        UnaryOp::Rsqrt => Some("rsqrt"),
        UnaryOp::Tanh => Some("tanh"),
        UnaryOp::Sigmoid => Some("logistic"),
        UnaryOp::Sin => Some("sine"),
        UnaryOp::Cos => Some("cosine"),
        UnaryOp::Floor => Some("floor"),
        UnaryOp::Ceil => Some("ceil"),
        UnaryOp::Not => Some("not"),
        _ => None,
    };
    if let Some(name) = simple {
        return e.unary(name, x);
    }
    match u {
        UnaryOp::Erf => erf(e, x),
        UnaryOp::Relu => {
            let zero = e.splat(0.0, &x.ty);
            e.binary("maximum", x, &zero)
        }
        UnaryOp::GeluErf => {
            // 0.5 · x · (1 + erf(x / √2))
            let c = e.splat(std::f64::consts::FRAC_1_SQRT_2, &x.ty);
            let scaled = e.binary("multiply", x, &c);
            let er = erf(e, &scaled);
            gelu_tail(e, x, &er)
        }
        UnaryOp::GeluTanh => {
            // 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))
            let x2 = e.binary("multiply", x, x);
            let x3 = e.binary("multiply", &x2, x);
            let k = e.splat(0.044715, &x.ty);
            let kx3 = e.binary("multiply", &x3, &k);
            let inner = e.binary("add", x, &kx3);
            let c = e.splat((2.0 / std::f64::consts::PI).sqrt(), &x.ty);
            let arg = e.binary("multiply", &inner, &c);
            let th = e.unary("tanh", &arg);
            gelu_tail(e, x, &th)
        }
        UnaryOp::Silu => {
            let s = e.unary("logistic", x);
            e.binary("multiply", x, &s)
        }
        _ => unreachable!("simple unary ops are handled above"),
    }
}

fn erf(e: &mut Emitter, x: &T) -> T {
    e.op(format!("\"chlo.erf\"({}) : ({}) -> {}", x.v, tensor(&x.ty), tensor(&x.ty)), &x.ty)
}

/// `0.5 · x · (1 + t)`, the common end of both GELU forms.
fn gelu_tail(e: &mut Emitter, x: &T, t: &T) -> T {
    let one = e.splat(1.0, &x.ty);
    let onep = e.binary("add", &one, t);
    let half = e.splat(0.5, &x.ty);
    let hx = e.binary("multiply", x, &half);
    e.binary("multiply", &hx, &onep)
}

fn lower_matmul(e: &mut Emitter, a: &T, b: &T, out: &TensorType) -> T {
    let ms = matmul_shape(&a.ty, &b.ty).expect("verified module: matmul operands agree");
    let nb = ms.batch.len();
    let a2 = if ms.lhs_vector { e.reshape(a, &[1, ms.k]) } else { a.clone() };
    if b.ty.rank() <= 2 {
        // No rhs batch: contract a's last dimension with b directly, no broadcast needed.
        let b2 = if ms.rhs_vector { e.reshape(b, &[ms.k, 1]) } else { b.clone() };
        let mut shape = a2.ty.shape[..a2.ty.rank() - 1].to_vec();
        shape.push(ms.n);
        let d = DotDims::batched(0, a2.ty.rank() - 1, 0, Some(out.dtype));
        let r = e.dot_general(&a2, &b2, &d, shape);
        return e.reshape(&r, &out.shape);
    }
    let b2 = b.clone();
    let mut a_shape = ms.batch.clone();
    a_shape.extend([ms.m, ms.k]);
    let mut b_shape = ms.batch.clone();
    b_shape.extend([ms.k, ms.n]);
    let a3 = e.broadcast_to(&a2, &a_shape);
    let b3 = e.broadcast_to(&b2, &b_shape);
    let d = DotDims::batched(nb, nb + 1, nb, Some(out.dtype));
    let mut shape = ms.batch.clone();
    shape.extend([ms.m, ms.n]);
    let r = e.dot_general(&a3, &b3, &d, shape);
    e.reshape(&r, &out.shape)
}

fn lower_argmax(e: &mut Emitter, x: &T, axis: usize, out: &TensorType) -> T {
    let d = x.ty.dtype;
    let idx_ty = x.ty.with_dtype(DType::I64);
    let idx = e.op(format!("stablehlo.iota dim = {axis} : {}", tensor(&idx_ty)), &idx_ty);
    let sv = TensorType::scalar(d);
    let si = TensorType::scalar(DType::I64);
    let init_v = e.splat(lowest(d), &sv);
    let init_i = e.splat(0.0, &si);
    let reduced = reduced_shape(&x.ty.shape, &[axis], false);
    let (rv, ri) = (TensorType::new(d, reduced.clone()), TensorType::new(DType::I64, reduced));
    let v = e.fresh();
    let (a, ai, b, bi) = (e.fresh(), e.fresh(), e.fresh(), e.fresh());
    let (tv, ti) = (tensor(&sv), tensor(&si));
    e.line(format!("    {v}:2 = \"stablehlo.reduce\"({}, {}, {}, {}) ({{", x.v, idx.v, init_v.v, init_i.v));
    e.line(format!("    ^bb0({a}: {tv}, {ai}: {ti}, {b}: {tv}, {bi}: {ti}):"));
    // Take the lhs when it is larger, or equal with a smaller index; a NaN counts as the largest.
    let (va, via, vb, vbi) = (
        T { v: a, ty: sv.clone() },
        T { v: ai, ty: si.clone() },
        T { v: b, ty: sv.clone() },
        T { v: bi, ty: si.clone() },
    );
    let gt = e.compare(CompareDir::Gt, &va, &vb);
    let eq = e.compare(CompareDir::Eq, &va, &vb);
    let ilt = e.compare(CompareDir::Lt, &via, &vbi);
    let (gt, eq) = if d.is_float() {
        let a_nan = e.compare(CompareDir::Ne, &va, &va);
        let b_nan = e.compare(CompareDir::Ne, &vb, &vb);
        let b_num = e.unary("not", &b_nan);
        let nan_wins = e.binary("and", &a_nan, &b_num);
        let both_nan = e.binary("and", &a_nan, &b_nan);
        (e.binary("or", &gt, &nan_wins), e.binary("or", &eq, &both_nan))
    } else {
        (gt, eq)
    };
    let tie = e.binary("and", &eq, &ilt);
    let take_a = e.binary("or", &gt, &tie);
    let rv_ = e.select(&take_a, &va, &vb);
    let ri_ = e.select(&take_a, &via, &vbi);
    e.line(format!("      stablehlo.return {}, {} : {tv}, {ti}", rv_.v, ri_.v));
    e.line(format!(
        "    }}) {{dimensions = array<i64: {axis}>}} : ({}, {}, {tv}, {ti}) -> ({}, {})",
        tensor(&x.ty),
        tensor(&idx_ty),
        tensor(&rv),
        tensor(&ri)
    ));
    let r = T { v: format!("{v}#1"), ty: ri };
    e.reshape(&r, &out.shape)
}

/// A stable `stablehlo.sort` of `x` with an iota along `axis`; the iota's
/// result is the permutation. The comparator puts `a` first when it is
/// smaller (larger when `descending`), a NaN counting as the largest.
fn lower_argsort(e: &mut Emitter, x: &T, axis: usize, descending: bool) -> T {
    let d = x.ty.dtype;
    let idx_ty = x.ty.with_dtype(DType::I64);
    let idx = e.op(format!("stablehlo.iota dim = {axis} : {}", tensor(&idx_ty)), &idx_ty);
    let (sv, si) = (TensorType::scalar(d), TensorType::scalar(DType::I64));
    let v = e.fresh();
    let (a, b, ai, bi) = (e.fresh(), e.fresh(), e.fresh(), e.fresh());
    let (tv, ti) = (tensor(&sv), tensor(&si));
    e.line(format!("    {v}:2 = \"stablehlo.sort\"({}, {}) ({{", x.v, idx.v));
    e.line(format!("    ^bb0({a}: {tv}, {b}: {tv}, {ai}: {ti}, {bi}: {ti}):"));
    let (va, vb) = (T { v: a, ty: sv.clone() }, T { v: b, ty: sv.clone() });
    let (first, second) = if descending { (&va, &vb) } else { (&vb, &va) };
    // `first` before `second` when it is larger; a NaN is larger than any number.
    let mut before = e.compare(CompareDir::Gt, first, second);
    if d.is_float() {
        let first_nan = e.compare(CompareDir::Ne, first, first);
        let second_nan = e.compare(CompareDir::Ne, second, second);
        let second_num = e.unary("not", &second_nan);
        let nan_wins = e.binary("and", &first_nan, &second_num);
        before = e.binary("or", &before, &nan_wins);
    }
    e.line(format!("      stablehlo.return {} : tensor<i1>", before.v));
    e.line(format!(
        "    }}) {{dimension = {axis} : i64, is_stable = true}} : ({}, {}) -> ({}, {})",
        tensor(&x.ty),
        tensor(&idx_ty),
        tensor(&x.ty),
        tensor(&idx_ty)
    ));
    T { v: format!("{v}#1"), ty: idx_ty }
}

fn lower_attention(e: &mut Emitter, x: &[T], causal: bool, scale: Option<f64>, out: &TensorType) -> T {
    let (q, k, v) = (&x[0], &x[1], &x[2]);
    let r = q.ty.rank();
    let nb = r - 2;
    let mut scores_shape = q.ty.shape[..nb].to_vec();
    scores_shape.extend([q.ty.shape[r - 2], k.ty.shape[r - 2]]);
    let d = DotDims::batched(nb, r - 1, r - 1, Some(out.dtype));
    let mut s = e.dot_general(q, k, &d, scores_shape.clone());
    // 1 where the scale-query pass moved it onto q.
    let scale = scale.unwrap_or(1.0 / (q.ty.shape[r - 1] as f64).sqrt());
    if scale != 1.0 {
        let c = e.splat(scale, &s.ty);
        s = e.binary("multiply", &s, &c);
    }
    if let Some(mask) = x.get(3) {
        let m = e.broadcast_to(mask, &scores_shape);
        s = e.binary("add", &s, &m);
    }
    if causal {
        let it = TensorType::new(DType::I32, scores_shape.clone());
        let rows = e.op(format!("stablehlo.iota dim = {nb} : {}", tensor(&it)), &it);
        let cols = e.op(format!("stablehlo.iota dim = {} : {}", nb + 1, tensor(&it)), &it);
        let keep = e.compare(CompareDir::Ge, &rows, &cols);
        let ninf = e.splat(f64::NEG_INFINITY, &s.ty);
        s = e.select(&keep, &s, &ninf);
    }
    let p = e.softmax(&s, r - 1);
    // The probabilities meet v in v's dtype (bf16 under mixed precision), accumulating in the result's.
    let p = e.convert(&p, v.ty.dtype);
    let d2 = DotDims::batched(nb, r - 1, r - 2, Some(out.dtype));
    e.dot_general(&p, v, &d2, out.shape.clone())
}

#[cfg(test)]
mod tests {
    use super::dense;
    use crate::ir::dtype::DType;
    use crate::ir::op::ConstData;

    #[test]
    fn integer_literals_nest_as_their_shape() {
        let data = ConstData::Int((0..6).collect());
        assert_eq!(dense(DType::I32, &[2, 3], &data), "[[0, 1, 2], [3, 4, 5]]");
        assert_eq!(dense(DType::I64, &[6], &data), "[0, 1, 2, 3, 4, 5]");
        assert_eq!(dense(DType::I64, &[3, 1, 2], &data), "[[[0, 1]], [[2, 3]], [[4, 5]]]");
        assert_eq!(dense(DType::Bool, &[1, 2], &ConstData::Int(vec![1, 0])), "[[true, false]]");
        assert_eq!(dense(DType::I8, &[], &ConstData::Int(vec![7])), "7");
    }

    /// `y = linear(x[rows, 4], w[4, 3] of dtype w, b)`, lowered.
    fn linear_lowered(w: DType, rows: u64) -> String {
        use crate::ir::op::Op;
        use crate::ir::types::TensorType;
        use crate::ir::Module;
        let mut m = Module::new("m");
        let x = m.add_input("x", TensorType::new(w, vec![rows, 4]));
        let weight = m.add_input("w", TensorType::new(w, vec![4, 3]));
        let b = m.add_input("b", TensorType::new(DType::F32, vec![3]));
        let op = Op::Linear { activation: None, acc: Some(DType::F32) };
        let y = m.append_node("y", op, vec![x, weight, b], "y", TensorType::new(DType::F32, vec![rows, 3]));
        m.add_output(y);
        super::lower(&m).text
    }

    #[test]
    fn a_one_row_16_bit_linear_subtracts_its_negated_bias() {
        let bf16 = linear_lowered(DType::BF16, 1);
        assert!(bf16.contains("stablehlo.negate") && bf16.contains("stablehlo.subtract"), "{bf16}");
        assert!(!bf16.contains("stablehlo.add"), "{bf16}");
    }

    #[test]
    fn an_f32_or_many_row_linear_adds_its_bias() {
        for text in [linear_lowered(DType::F32, 1), linear_lowered(DType::BF16, 2)] {
            assert!(text.contains("stablehlo.add") && !text.contains("stablehlo.subtract"), "{text}");
        }
    }

    /// `x·wᵀ` (or `w·xᵀ` when `x_is_rhs`) for `x` of `x_dtype` and shape `x_shape`, `w` an int8
    /// `[5, 4]` matrix widened to f32 (or a bf16 one as it is), lowered: the main function's lines.
    fn product_lowered(x_dtype: DType, x_shape: &[u64], x_is_rhs: bool, w_int8: bool) -> Vec<String> {
        product_lowered_with(x_dtype, x_shape, x_is_rhs, w_int8, super::WholeWidening::default())
    }

    /// [`product_lowered`], a matrix widened whole read as `whole` says.
    fn product_lowered_with(
        x_dtype: DType,
        x_shape: &[u64],
        x_is_rhs: bool,
        w_int8: bool,
        whole: super::WholeWidening,
    ) -> Vec<String> {
        let text = super::lower_with(&product_module(x_dtype, x_shape, x_is_rhs, w_int8), whole).text;
        text.lines().skip_while(|l| !l.contains("@main")).take_while(|l| *l != "  }").map(str::to_string).collect()
    }

    /// `x` times a `[5, 4]` matrix (int8 widened to f32, or bf16), contracting
    /// `x`'s last dimension; `x` the right operand when `x_is_rhs`.
    fn product_module(x_dtype: DType, x_shape: &[u64], x_is_rhs: bool, w_int8: bool) -> crate::ir::Module {
        use crate::ir::op::{DotDims, Op};
        use crate::ir::types::TensorType;
        use crate::ir::Module;
        let mut m = Module::new("m");
        let x = m.add_input("x", TensorType::new(x_dtype, x_shape.to_vec()));
        let w = if w_int8 {
            let q = m.add_input("q", TensorType::new(DType::I8, vec![5, 4]));
            m.append_node("w", Op::Cast { to: DType::F32 }, vec![q], "w", TensorType::new(DType::F32, vec![5, 4]))
        } else {
            m.add_input("w", TensorType::new(DType::BF16, vec![5, 4]))
        };
        let (last, rows) = (x_shape.len() - 1, &x_shape[..x_shape.len() - 1]);
        let (operands, (lhs_contract, rhs_contract), shape) = match x_is_rhs {
            true => (vec![w, x], (vec![1], vec![last]), [&[5], rows].concat()),
            false => (vec![x, w], (vec![last], vec![1]), [rows, &[5]].concat()),
        };
        let dims = DotDims { lhs_contract, rhs_contract, lhs_batch: vec![], rhs_batch: vec![], acc: None };
        let dtype = if w_int8 { DType::F32 } else { x_dtype };
        let y = m.append_node("y", Op::Dot(dims), operands, "y", TensorType::new(dtype, shape));
        m.add_output(y);
        m
    }

    fn count(lines: &[String], op: &str) -> usize {
        lines.iter().filter(|l| l.contains(op)).count()
    }

    #[test]
    fn rows_times_a_widened_matrix_are_one_product_a_row() {
        let lines = product_lowered(DType::F32, &[2, 3, 4], false, true);
        assert_eq!(count(&lines, "stablehlo.dot_general"), 6, "{lines:#?}");
        assert_eq!(count(&lines, "stablehlo.slice"), 6, "{lines:#?}");
        // Each row is gathered from its slice, and its product reads the gathered row.
        let gathered: Vec<&str> = lines.iter().filter(|l| l.contains("stablehlo.gather")).map(|l| defined(l)).collect();
        assert_eq!(gathered.len(), 6, "{lines:#?}");
        for product in lines.iter().filter(|l| l.contains("stablehlo.dot_general")) {
            let lhs = product.split("dot_general\"(").nth(1).unwrap().split(',').next().unwrap();
            assert!(gathered.contains(&lhs), "{product}");
        }
        let joined = lines.iter().find(|l| l.contains("stablehlo.concatenate")).expect("the rows joined");
        assert!(joined.contains("dim = 0") && joined.contains("-> tensor<6x5xf32>"), "{joined}");
        let result = lines.iter().find(|l| l.contains("stablehlo.reshape %") && l.contains("-> tensor<2x3x5xf32>"));
        assert!(result.is_some(), "the rows reshaped to the product's shape: {lines:#?}");
    }

    #[test]
    fn a_widened_matrix_times_rows_is_one_product_a_row_joined_last() {
        let lines = product_lowered(DType::F32, &[3, 4], true, true);
        assert_eq!(count(&lines, "stablehlo.dot_general"), 3, "{lines:#?}");
        let joined = lines.iter().find(|l| l.contains("stablehlo.concatenate")).expect("the rows joined");
        assert!(joined.contains("dim = 1") && joined.contains("-> tensor<5x3xf32>"), "{joined}");
    }

    /// The value a line defines (`%7` of `    %7 = ...`).
    fn defined(line: &str) -> &str {
        line.split(" = ").next().unwrap().trim()
    }

    #[test]
    fn a_row_times_a_widened_matrix_reads_the_row_gathered_whole() {
        for (x_is_rhs, operand) in [(false, 0), (true, 1)] {
            let lines = product_lowered(DType::F32, &[1, 4], x_is_rhs, true);
            let iota = lines.iter().find(|l| l.contains("stablehlo.iota")).expect("the indices");
            assert!(iota.contains("dim = 0 : tensor<4xi32>"), "{iota}");
            let gather = lines.iter().find(|l| l.contains("stablehlo.gather")).expect("the row gathered");
            assert!(gather.contains(&format!("(%arg0, {})", defined(iota))), "{gather}");
            assert!(gather.contains("-> tensor<1x4xf32>"), "{gather}");
            let product = lines.iter().find(|l| l.contains("stablehlo.dot_general")).expect("the product");
            let operands = product.split("dot_general\"(").nth(1).unwrap().split(')').next().unwrap();
            assert_eq!(operands.split(", ").nth(operand), Some(defined(gather)), "{lines:#?}");
        }
    }

    #[test]
    fn many_rows_gather_the_matrix_they_widen_whole_only_when_asked() {
        use super::WholeWidening;
        // 32 rows: more than MAX_ROWS_APART, so the matrix is widened whole.
        let as_read = product_lowered_with(DType::F32, &[32, 4], false, true, WholeWidening::AsRead);
        assert!(!as_read.iter().any(|l| l.contains("stablehlo.gather")), "{as_read:#?}");
        let lines = product_lowered_with(DType::F32, &[32, 4], false, true, WholeWidening::Gathered);
        let widened = lines.iter().find(|l| l.contains("stablehlo.convert")).expect("the widening");
        let gather = lines.iter().find(|l| l.contains("stablehlo.gather")).expect("the matrix gathered");
        assert!(gather.contains(&format!("({}, ", defined(widened))), "{gather}");
        assert!(gather.contains("-> tensor<5x4xf32>"), "{gather}");
        let product = lines.iter().find(|l| l.contains("stablehlo.dot_general")).expect("the product");
        assert!(product.contains(&format!("(%arg0, {})", defined(gather))), "{lines:#?}");
    }

    #[test]
    fn the_lowering_says_where_reading_a_widened_matrix_is_a_choice() {
        use super::{lower_with, WholeWidening};
        let many = product_module(DType::F32, &[32, 4], false, true);
        for whole in [WholeWidening::AsRead, WholeWidening::Gathered] {
            assert_eq!(lower_with(&many, whole).whole_widening, Some(whole));
        }
        // One row, a few rows apart, or both operands narrow (bf16 by bf16,
        // nothing widened): no choice to make.
        for (x, rows, int8) in [(DType::F32, 1, true), (DType::F32, 3, true), (DType::BF16, 32, false)] {
            let m = product_module(x, &[rows, 4], false, int8);
            assert_eq!(lower_with(&m, WholeWidening::Gathered).whole_widening, None, "{x:?} x, {rows} rows");
        }
        // Split over devices, rows are read as they are (no gather either way).
        let mut split = many;
        split.mesh = Some(crate::ir::sharding::Mesh::new(vec![("model".into(), 2)]).unwrap());
        assert_eq!(lower_with(&split, WholeWidening::Gathered).whole_widening, None);
    }

    /// `x·w` for `x` f32[8, 4] and the `[4, 16]` matrix `weight` builds,
    /// summed over its rows, lowered.
    fn summed_product(weight: impl Fn(&mut crate::ir::Module) -> crate::ir::Value) -> super::Lowered {
        use crate::ir::op::{Op, ReduceKind};
        use crate::ir::types::TensorType;
        use crate::ir::Module;
        let mut m = Module::new("m");
        let x = m.add_input("x", TensorType::new(DType::F32, vec![8, 4]));
        let w = weight(&mut m);
        let y = m.append_node("y", Op::MatMul { acc: None }, vec![x, w], "y", TensorType::new(DType::F32, vec![8, 16]));
        let r = Op::Reduce { kind: ReduceKind::Sum, axes: vec![0], keepdims: false };
        let s = m.append_node("s", r, vec![y], "s", TensorType::new(DType::F32, vec![16]));
        m.add_output(s);
        super::lower(&m)
    }

    #[test]
    fn products_reading_broadcasts_are_told() {
        use crate::ir::op::{BinaryOp, ConstData, Op};
        use crate::ir::types::TensorType;
        let f32s = |shape: Vec<u64>| TensorType::new(DType::F32, shape);
        let broadcast = |m: &mut crate::ir::Module, s: crate::ir::Value| {
            m.append_node("wb", Op::BroadcastTo { shape: vec![4, 16] }, vec![s], "wb", f32s(vec![4, 16]))
        };
        // Read as given, or computed from something read as given: no broadcast.
        let given = summed_product(|m| m.add_input("w", f32s(vec![4, 16])));
        assert!(!given.products_read_broadcasts, "{}", given.text);
        let scaled = summed_product(|m| {
            let (w, s) = (m.add_input("w", f32s(vec![4, 16])), m.add_input("s", f32s(vec![])));
            m.append_node("ws", Op::Binary(BinaryOp::Mul), vec![w, s], "ws", f32s(vec![4, 16]))
        });
        assert!(!scaled.products_read_broadcasts, "{}", scaled.text);
        // A broadcast of an input, of a constant, a constant, or what XLA may fold into a broadcast.
        let of_input = summed_product(|m| {
            let s = m.add_input("s", f32s(vec![16]));
            broadcast(m, s)
        });
        assert!(of_input.products_read_broadcasts, "{}", of_input.text);
        let constant = |m: &mut crate::ir::Module, shape: Vec<u64>, data: Vec<f64>| {
            let op = Op::Constant { dtype: DType::F32, shape: shape.clone(), data: ConstData::Float(data) };
            m.append_node("c", op, vec![], "c", f32s(shape))
        };
        let of_constant = summed_product(|m| {
            let c = constant(m, vec![], vec![0.5]);
            broadcast(m, c)
        });
        assert!(of_constant.products_read_broadcasts, "{}", of_constant.text);
        let dense = summed_product(|m| constant(m, vec![4, 16], (0..64).map(f64::from).collect()));
        assert!(dense.products_read_broadcasts, "{}", dense.text);
        let folded = summed_product(|m| {
            let (a, b) = (constant(m, vec![], vec![0.5]), m.add_input("s", f32s(vec![])));
            let (a, b) = (
                broadcast(m, a),
                m.append_node("bs", Op::BroadcastTo { shape: vec![4, 16] }, vec![b], "bs", f32s(vec![4, 16])),
            );
            m.append_node("p", Op::Binary(BinaryOp::Mul), vec![a, b], "p", f32s(vec![4, 16]))
        });
        assert!(folded.products_read_broadcasts, "{}", folded.text);
    }

    #[test]
    fn a_partitioned_program_reads_its_rows_as_they_are() {
        use crate::ir::op::{DotDims, Op};
        use crate::ir::sharding::Mesh;
        use crate::ir::types::TensorType;
        use crate::ir::Module;
        let mut m = Module::new("m");
        m.mesh = Some(Mesh::new(vec![("model".into(), 2)]).unwrap());
        let x = m.add_input("x", TensorType::new(DType::F32, vec![1, 4]));
        let q = m.add_input("q", TensorType::new(DType::I8, vec![5, 4]));
        let w = m.append_node("w", Op::Cast { to: DType::F32 }, vec![q], "w", TensorType::new(DType::F32, vec![5, 4]));
        let dims = DotDims::batched(0, 1, 1, None);
        let y = m.append_node("y", Op::Dot(dims), vec![x, w], "y", TensorType::new(DType::F32, vec![1, 5]));
        m.add_output(y);
        let text = super::lower(&m).text;
        assert!(text.contains("stablehlo.dot_general") && !text.contains("stablehlo.gather"), "{text}");
    }

    #[test]
    fn an_f32_row_product_gathers_nothing() {
        let text = linear_lowered(DType::F32, 1);
        assert!(!text.contains("stablehlo.gather"), "{text}");
    }

    #[test]
    fn many_rows_or_two_narrow_operands_are_one_product() {
        let many = super::MAX_ROWS_APART + 1;
        for lines in
            [product_lowered(DType::F32, &[many, 4], false, true), product_lowered(DType::BF16, &[3, 4], false, false)]
        {
            assert_eq!(count(&lines, "stablehlo.dot_general"), 1, "{lines:#?}");
            assert_eq!(count(&lines, "stablehlo.concatenate"), 0, "{lines:#?}");
        }
    }

    /// `b + x·wᵀ` for one row `x` and the f32 matrix `weight` builds, lowered;
    /// checks that the add is emitted as `x·wᵀ − (−b)`.
    fn bias_plus_row_product_subtracts(weight: impl Fn(&mut crate::ir::Module) -> crate::ir::Value) {
        use crate::ir::op::{BinaryOp, DotDims, Op};
        use crate::ir::types::TensorType;
        use crate::ir::Module;
        let mut m = Module::new("m");
        let x = m.add_input("x", TensorType::new(DType::F32, vec![1, 4]));
        let b = m.add_input("b", TensorType::new(DType::F32, vec![1, 3]));
        let w = weight(&mut m);
        let dims = DotDims::batched(0, 1, 1, None);
        let y = m.append_node("y", Op::Dot(dims), vec![x, w], "y", TensorType::new(DType::F32, vec![1, 3]));
        // The product is the add's second operand: it is still the one subtracted from.
        let z = m.append_node("z", Op::Binary(BinaryOp::Add), vec![b, y], "z", TensorType::new(DType::F32, vec![1, 3]));
        m.add_output(z);
        let text = super::lower(&m).text;
        // The last line of each op: the weight's own arithmetic comes first.
        let line =
            |op: &str| text.lines().rev().find(|l| l.contains(op)).unwrap_or_else(|| panic!("no {op} in {text}"));
        let product = line("stablehlo.dot_general").split(" = ").next().unwrap().trim().to_string();
        let negated = line("stablehlo.negate").split(" = ").next().unwrap().trim().to_string();
        assert!(line("stablehlo.negate").contains("%arg1"), "{text}");
        assert!(line("stablehlo.subtract").contains(&format!("{product}, {negated}")), "{text}");
        assert!(!text.contains("stablehlo.add"), "{text}");
    }

    #[test]
    fn an_add_reading_a_row_times_an_int8_matrix_widened_subtracts_the_other_operand_negated() {
        use crate::ir::op::Op;
        use crate::ir::types::TensorType;
        bias_plus_row_product_subtracts(|m| {
            let q = m.add_input("q", TensorType::new(DType::I8, vec![3, 4]));
            m.append_node("w", Op::Cast { to: DType::F32 }, vec![q], "w", TensorType::new(DType::F32, vec![3, 4]))
        });
    }

    #[test]
    fn an_add_reading_a_row_times_an_int4_matrix_unpacked_in_i32_subtracts_the_other_operand_negated() {
        // As the Hugging Face import unpacks int4: bytes widened to i32, a
        // nibble taken with integer arithmetic, centred, then cast to f32 and scaled.
        use crate::ir::op::{BinaryOp, Op};
        use crate::ir::types::TensorType;
        bias_plus_row_product_subtracts(|m| {
            let (i32s, f32s) = (TensorType::new(DType::I32, vec![3, 4]), TensorType::new(DType::F32, vec![3, 4]));
            let q = m.add_input("q", TensorType::new(DType::U8, vec![3, 4]));
            let eight = m.add_input("eight", TensorType::new(DType::I32, vec![]));
            let scale = m.add_input("scale", TensorType::new(DType::F32, vec![3, 1]));
            let wide = m.append_node("wide", Op::Cast { to: DType::I32 }, vec![q], "wide", i32s.clone());
            let centred = m.append_node("centred", Op::Binary(BinaryOp::Sub), vec![wide, eight], "centred", i32s);
            let values = m.append_node("values", Op::Cast { to: DType::F32 }, vec![centred], "values", f32s.clone());
            m.append_node("w", Op::Binary(BinaryOp::Mul), vec![values, scale], "w", f32s)
        });
    }
}
