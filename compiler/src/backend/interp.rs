//! The reference interpreter: the oracle that passes and the lowering are
//! tested against. It runs every v1 op on ndarray, computing floats in f64
//! and integers in i64, and rounds every result to its dtype (f32, f16 and
//! bf16 to nearest even; integers wrap to their width), so each elementwise
//! op is correctly rounded. It favours clarity over speed.

use crate::error::{Diagnostic, Error};
use crate::ir::dtype::DType;
use crate::ir::infer::matmul_shape;
use crate::ir::op::{BinaryOp, CompareDir, ConstData, DotDims, Op, ReduceKind, UnaryOp, Window2d};
use crate::ir::{Module, Value};
use ndarray::{ArrayD, Axis, IxDyn, Slice, Zip};

/// Tensor data: floats as f64, integers as i64, bools.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Float(ArrayD<f64>),
    Int(ArrayD<i64>),
    Bool(ArrayD<bool>),
}

/// A tensor of the interpreter: its dtype and its data, already rounded to the dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub data: Data,
}

fn shape_of(s: &[u64]) -> IxDyn {
    IxDyn(&s.iter().map(|&d| d as usize).collect::<Vec<_>>())
}

impl Tensor {
    /// A tensor of `dtype` from float data, rounded (or truncated toward zero and wrapped for integers).
    pub fn from_f64(dtype: DType, a: ArrayD<f64>) -> Tensor {
        let data = if dtype.is_float() {
            Data::Float(a.mapv(|x| dtype.round_f64(x)))
        } else if dtype == DType::Bool {
            Data::Bool(a.mapv(|x| x != 0.0))
        } else {
            Data::Int(a.mapv(|x| dtype.int_from_f64(x)))
        };
        Tensor { dtype, data }
    }

    fn from_i64(dtype: DType, a: ArrayD<i64>) -> Tensor {
        if dtype.is_float() {
            return Tensor::from_f64(dtype, a.mapv(|x| x as f64));
        }
        if dtype == DType::Bool {
            return Tensor { dtype, data: Data::Bool(a.mapv(|x| x != 0)) };
        }
        Tensor { dtype, data: Data::Int(a.mapv(|x| dtype.wrap_i64(x))) }
    }

    /// The tensor of a `constant` op's data.
    pub fn from_const(dtype: DType, shape: &[u64], data: &ConstData) -> Tensor {
        const COUNT: &str = "verified module: a constant holds its element count";
        match data {
            ConstData::Float(v) => from_layout(dtype, ArrayD::from_shape_vec(shape_of(shape), v.clone()).expect(COUNT)),
            ConstData::Int(v) => {
                Tensor::from_i64(dtype, ArrayD::from_shape_vec(shape_of(shape), v.clone()).expect(COUNT))
            }
        }
    }

    /// Reads dense little-endian bytes of `dtype` and `shape`.
    pub fn from_le_bytes(dtype: DType, shape: &[u64], bytes: &[u8]) -> Result<Tensor, String> {
        let n = dtype.size_bytes();
        let count: u64 = shape.iter().product();
        if bytes.len() as u64 != count * n as u64 {
            return Err(format!("{dtype}{shape:?} needs {} bytes, found {}", count * n as u64, bytes.len()));
        }
        let sh = shape_of(shape);
        let chunks = bytes.chunks_exact(n);
        let arr = |v: Vec<f64>| ArrayD::from_shape_vec(sh.clone(), v).map_err(|e| e.to_string());
        let ints = |v: Vec<i64>| ArrayD::from_shape_vec(sh.clone(), v).map_err(|e| e.to_string());
        let b2 = |c: &[u8]| [c[0], c[1]];
        Ok(match dtype {
            DType::F32 => Tensor {
                dtype,
                data: Data::Float(arr(chunks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect())?),
            },
            DType::F64 => Tensor {
                dtype,
                data: Data::Float(arr(chunks.map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default())).collect())?),
            },
            DType::F16 => Tensor {
                dtype,
                data: Data::Float(arr(chunks.map(|c| half::f16::from_le_bytes(b2(c)).to_f64()).collect())?),
            },
            DType::BF16 => Tensor {
                dtype,
                data: Data::Float(arr(chunks.map(|c| half::bf16::from_le_bytes(b2(c)).to_f64()).collect())?),
            },
            d if d.is_float() => {
                let f = d.float8().expect("the other floats are read above");
                Tensor { dtype, data: Data::Float(arr(bytes.iter().map(|&b| f.decode(b)).collect())?) }
            }
            DType::Bool => Tensor {
                dtype,
                data: Data::Bool(
                    ArrayD::from_shape_vec(sh, bytes.iter().map(|&b| b != 0).collect()).map_err(|e| e.to_string())?,
                ),
            },
            // Little-endian bytes, widened with the type's sign (a u64 kept as its bits).
            _ => Tensor {
                dtype,
                data: Data::Int(ints(
                    chunks
                        .map(|c| {
                            let mut b = [0u8; 8];
                            b[..n].copy_from_slice(c);
                            dtype.wrap_i64(i64::from_le_bytes(b))
                        })
                        .collect(),
                )?),
            },
        })
    }

    /// The dense little-endian bytes (row-major) of the tensor in its dtype.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            Data::Float(a) => ConstData::Float(a.iter().copied().collect()).to_le_bytes(self.dtype),
            Data::Int(a) => ConstData::Int(a.iter().copied().collect()).to_le_bytes(self.dtype),
            Data::Bool(a) => a.iter().map(|&b| b as u8).collect(),
        }
    }

    /// The shape.
    pub fn shape(&self) -> Vec<u64> {
        let s = match &self.data {
            Data::Float(a) => a.shape(),
            Data::Int(a) => a.shape(),
            Data::Bool(a) => a.shape(),
        };
        s.iter().map(|&d| d as u64).collect()
    }

    /// Every element as f64.
    pub fn to_f64(&self) -> ArrayD<f64> {
        match &self.data {
            Data::Float(a) => a.clone(),
            Data::Int(a) => a.mapv(|x| self.dtype.int_to_f64(x)),
            Data::Bool(a) => a.mapv(|x| x as u8 as f64),
        }
    }

    fn floats(&self) -> &ArrayD<f64> {
        match &self.data {
            Data::Float(a) => a,
            _ => unreachable!("verified module: a float operand"),
        }
    }

    /// Applies a layout function (reshape, transpose, slice, …) to the data whatever its kind.
    fn map_layout(&self, f: &dyn Fn(&ArrayD<f64>) -> ArrayD<f64>) -> Tensor {
        let data = match &self.data {
            Data::Float(a) => Data::Float(f(a)),
            Data::Int(a) => Data::Int(f(&a.mapv(|x| x as f64)).mapv(|x| x as i64)),
            Data::Bool(a) => Data::Bool(f(&a.mapv(|x| x as u8 as f64)).mapv(|x| x != 0.0)),
        };
        Tensor { dtype: self.dtype, data }
    }
}

/// Runs `m` on `args` (inputs then parameters, as the lowered program takes
/// them) and returns the outputs in order.
pub fn eval(m: &Module, args: &[Tensor]) -> Result<Vec<Tensor>, Error> {
    let env = eval_all(m, args)?;
    Ok(m.outputs().iter().map(|&v| env[m.resolve(v).index()].clone().expect("outputs are computed")).collect())
}

/// Runs `m` on `args` and returns every value it computes, indexed by value
/// id (`None` for values that are not part of the module).
pub fn eval_all(m: &Module, args: &[Tensor]) -> Result<Vec<Option<Tensor>>, Error> {
    let bad = |at: String, msg: String| Error::Invalid {
        origin: format!("interpreting {}", m.name),
        diagnostics: vec![Diagnostic::new(at, msg)],
    };
    let arg_values: Vec<Value> = m.inputs().iter().copied().chain(m.params().iter().map(|p| p.value)).collect();
    if args.len() != arg_values.len() {
        return Err(bad("arguments".into(), format!("expected {} arguments, found {}", arg_values.len(), args.len())));
    }
    let mut env: Vec<Option<Tensor>> = vec![None; m.num_values()];
    for (&v, a) in arg_values.iter().zip(args) {
        let ty = &m.value(v).ty;
        if a.dtype != ty.dtype || a.shape() != ty.shape {
            return Err(bad(
                format!("argument `{}`", m.value(v).name),
                format!("expected {ty}, found {}{:?}", a.dtype, a.shape()),
            ));
        }
        env[v.index()] = Some(a.clone());
    }
    for &n in m.order() {
        let node = m.node(n);
        let inputs: Vec<&Tensor> = node
            .inputs
            .iter()
            .map(|&v| env[m.resolve(v).index()].as_ref().expect("verified module: operands are computed first"))
            .collect();
        let out_ty = &m.value(node.output).ty;
        let r = eval_op(&node.op, &inputs, out_ty.dtype, &out_ty.shape)
            .map_err(|e| bad(format!("node `{}` ({})", node.name, node.op.name()), e))?;
        env[node.output.index()] = Some(r);
    }
    Ok(env)
}

/// Broadcasts `a` to `shape` (NumPy rules; the module is verified).
fn bcast<T: Clone>(a: &ArrayD<T>, shape: &[u64]) -> ArrayD<T> {
    a.broadcast(shape_of(shape)).expect("verified module: shapes broadcast").to_owned()
}

/// Evaluates one op. `dtype`/`shape` are the verified result type.
pub fn eval_op(op: &Op, x: &[&Tensor], dtype: DType, shape: &[u64]) -> Result<Tensor, String> {
    let float = |a: ArrayD<f64>| Tensor::from_f64(dtype, a);
    Ok(match op {
        Op::Unary(u) => eval_unary(*u, x[0], dtype),
        Op::Binary(b) => eval_binary(*b, x[0], x[1], dtype, shape)?,
        Op::Compare(dir) => eval_compare(*dir, x, shape),
        Op::Where => eval_where(x, dtype, shape)?,
        Op::Cast { to } => match (&x[0].data, to.is_float()) {
            (Data::Int(a), false) => Tensor::from_i64(*to, a.clone()),
            (Data::Float(a), false) if *to != DType::Bool => Tensor::from_i64(*to, a.mapv(|v| to.int_from_f64(v))),
            _ => Tensor::from_f64(*to, x[0].to_f64()),
        },
        Op::MatMul { .. } => eval_matmul(x, dtype, shape)?,
        Op::Dot(d) => dot_general(x[0], x[1], d, dtype),
        Op::Reduce { kind, axes, .. } => {
            let r = reduce(x[0], axes, *kind, dtype);
            reshape(&r, shape)
        }
        Op::ArgMax { axis, .. } => eval_argmax(x[0], *axis, shape),
        Op::ArgSort { axis, descending } => eval_argsort(x[0], *axis, *descending),
        Op::Reshape { shape: s } => reshape(x[0], s),
        Op::Transpose { perm } => {
            x[0].map_layout(&|a| a.clone().permuted_axes(IxDyn(perm)).as_standard_layout().into_owned())
        }
        Op::BroadcastTo { shape: s } => x[0].map_layout(&|a| bcast(a, s)),
        Op::Concat { axis } => {
            let parts: Vec<ArrayD<f64>> = x.iter().map(|t| t.to_f64()).collect();
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            let r = ndarray::concatenate(Axis(*axis), &views).map_err(|e| e.to_string())?;
            from_layout(dtype, r)
        }
        Op::Slice { starts, limits, strides } => x[0].map_layout(&|a| {
            a.slice_each_axis(|ax| {
                let d = ax.axis.index();
                Slice::new(starts[d] as isize, Some(limits[d] as isize), strides[d] as isize)
            })
            .to_owned()
        }),
        Op::Pad { low, high, value } => eval_pad(x[0], low, high, *value, dtype, shape),
        Op::DynamicSlice { axis, size } => {
            let start = clamped_start(x[1], x[0].shape()[*axis], *size);
            x[0].map_layout(&|a| a.slice_axis(Axis(*axis), Slice::from(start..start + *size as usize)).to_owned())
        }
        Op::DynamicUpdateSlice { axis } => {
            let update = x[1].to_f64();
            let start = clamped_start(x[2], x[0].shape()[*axis], update.shape()[*axis] as u64);
            let mut a = x[0].to_f64();
            a.slice_axis_mut(Axis(*axis), Slice::from(start..start + update.shape()[*axis])).assign(&update);
            from_layout(dtype, a)
        }
        Op::Gather { axis } => {
            let n = x[0].shape()[*axis] as i64;
            let idx: Vec<usize> = x[1].to_f64().iter().map(|&i| (i as i64).clamp(0, n - 1) as usize).collect();
            let picked = x[0].map_layout(&|a| a.select(Axis(*axis), &idx));
            reshape(&picked, shape)
        }
        Op::ScatterAdd { axis } => eval_scatter_add(x, *axis),
        Op::StopGradient => x[0].clone(),
        Op::Iota { axis, .. } => {
            let a = ArrayD::from_shape_fn(shape_of(shape), |ix| ix[*axis] as f64);
            from_layout(dtype, a)
        }
        Op::Constant { data, .. } => Tensor::from_const(dtype, shape, data),
        Op::RandomUniform { stream, .. } => {
            let Data::Int(seed) = &x[0].data else { unreachable!("verified module: an i64 seed") };
            let bits = dtype.significand_bits().expect("verified module: a float dtype");
            let count = shape.iter().product::<u64>() as usize;
            let u = super::random::uniform(seed.iter().copied().next().unwrap_or(0), *stream, count, bits);
            float(ArrayD::from_shape_vec(shape_of(shape), u).expect("one number per element"))
        }
        Op::Conv2d { window, groups, .. } => {
            float(conv2d(x[0].floats(), x[1].floats(), x.get(2).map(|b| b.floats()), window, *groups, shape))
        }
        Op::MaxPool2d { kernel, window } => float(pool(x[0].floats(), *kernel, window, shape, true)),
        Op::AvgPool2d { kernel, window } => float(pool(x[0].floats(), *kernel, window, shape, false)),
        Op::Softmax { axis } => float(softmax(x[0].floats(), *axis)),
        Op::LogSoftmax { axis } => {
            let a = x[0].floats();
            let m = max_keep(a, *axis);
            let shifted = a - &m;
            let lse = shifted.mapv(f64::exp).sum_axis(Axis(*axis)).insert_axis(Axis(*axis)).mapv(f64::ln);
            float(shifted - lse)
        }
        Op::LayerNorm { axis, epsilon } => float(layer_norm(x, *axis, *epsilon)),
        Op::RmsNorm { epsilon } => float(rms_norm(x, *epsilon)),
        Op::Attention { causal, scale, .. } => float(attention(x, *causal, *scale)),
        Op::Linear { activation, .. } => eval_linear(x, *activation, dtype, shape)?,
    })
}

/// A comparison with NumPy broadcasting: exact on integers, IEEE on floats (NaN: only `ne` holds).
fn eval_compare(dir: CompareDir, x: &[&Tensor], shape: &[u64]) -> Tensor {
    let holds = |o: Option<std::cmp::Ordering>| {
        use std::cmp::Ordering::*;
        match (dir, o) {
            // Unordered (NaN): only `ne` holds.
            (CompareDir::Ne, None) => true,
            (_, None) => false,
            (CompareDir::Eq, Some(o)) => o == Equal,
            (CompareDir::Ne, Some(o)) => o != Equal,
            (CompareDir::Lt, Some(o)) => o == Less,
            (CompareDir::Le, Some(o)) => o != Greater,
            (CompareDir::Gt, Some(o)) => o == Greater,
            (CompareDir::Ge, Some(o)) => o != Less,
        }
    };
    let r = match (&x[0].data, &x[1].data) {
        // Exact for every i64, unlike a comparison through f64.
        (Data::Int(p), Data::Int(q)) => {
            let (p, q) = (bcast(p, shape), bcast(q, shape));
            let d = x[0].dtype;
            Zip::from(&p).and(&q).map_collect(|&p, &q| holds(Some(d.ordinal(p).cmp(&d.ordinal(q)))))
        }
        _ => {
            let (p, q) = (bcast(&x[0].to_f64(), shape), bcast(&x[1].to_f64(), shape));
            Zip::from(&p).and(&q).map_collect(|p, q| holds(p.partial_cmp(q)))
        }
    };
    Tensor { dtype: DType::Bool, data: Data::Bool(r) }
}

fn eval_where(x: &[&Tensor], dtype: DType, shape: &[u64]) -> Result<Tensor, String> {
    let Data::Bool(c) = &x[0].data else { return Err("condition is not bool".into()) };
    let c = bcast(c, shape);
    let pick =
        |a: ArrayD<f64>, b: ArrayD<f64>| Zip::from(&c).and(&a).and(&b).map_collect(|&c, &a, &b| if c { a } else { b });
    Ok(match (&x[1].data, &x[2].data) {
        (Data::Int(a), Data::Int(b)) => {
            let (a, b) = (bcast(a, shape), bcast(b, shape));
            Tensor {
                dtype,
                data: Data::Int(Zip::from(&c).and(&a).and(&b).map_collect(|&c, &a, &b| if c { a } else { b })),
            }
        }
        _ => Tensor::from_f64(dtype, pick(bcast(&x[1].to_f64(), shape), bcast(&x[2].to_f64(), shape))),
    })
}

/// NumPy `matmul`: 1-D operands promoted, batch dimensions broadcast.
fn eval_matmul(x: &[&Tensor], dtype: DType, shape: &[u64]) -> Result<Tensor, String> {
    let ms = matmul_shape(&tt(x[0]), &tt(x[1]))?;
    let a = if ms.lhs_vector { reshape(x[0], &[1, ms.k]) } else { x[0].clone() };
    let b = if ms.rhs_vector { reshape(x[1], &[ms.k, 1]) } else { x[1].clone() };
    let nb = ms.batch.len();
    let mut ash = ms.batch.clone();
    ash.extend([ms.m, ms.k]);
    let mut bsh = ms.batch.clone();
    bsh.extend([ms.k, ms.n]);
    let (a, b) = (a.map_layout(&|v| bcast(v, &ash)), b.map_layout(&|v| bcast(v, &bsh)));
    let dims = DotDims::batched(nb, nb + 1, nb, None);
    let r = dot_general(&a, &b, &dims, dtype);
    Ok(reshape(&r, shape))
}

/// The index of the first maximum (a NaN counts as the maximum).
fn eval_argmax(x: &Tensor, axis: usize, shape: &[u64]) -> Tensor {
    let a = x.to_f64();
    let idx = a.map_axis(Axis(axis), |lane| {
        let mut best = 0usize;
        for (i, &v) in lane.iter().enumerate() {
            let b = lane[best];
            if (v > b) || (v.is_nan() && !b.is_nan()) {
                best = i;
            }
        }
        best as i64
    });
    reshape(&Tensor { dtype: DType::I64, data: Data::Int(idx) }, shape)
}

/// `numpy.argsort(x, axis, kind="stable")` (of `-x` when `descending`, ties
/// still in index order), a NaN sorting as the largest value.
fn eval_argsort(x: &Tensor, axis: usize, descending: bool) -> Tensor {
    let a = x.to_f64();
    let mut out = ndarray::ArrayD::<i64>::zeros(a.raw_dim());
    for (lane, mut target) in a.lanes(Axis(axis)).into_iter().zip(out.lanes_mut(Axis(axis))) {
        let mut order: Vec<usize> = (0..lane.len()).collect();
        // NaN above every number, equal to another NaN.
        let key = |i: usize| (lane[i].is_nan(), if lane[i].is_nan() { 0.0 } else { lane[i] });
        order.sort_by(|&i, &j| {
            let (ki, kj) = (key(i), key(j));
            let ascending = ki.0.cmp(&kj.0).then(ki.1.total_cmp(&kj.1));
            if descending {
                ascending.reverse()
            } else {
                ascending
            }
        });
        for (t, i) in target.iter_mut().zip(order) {
            *t = i as i64;
        }
    }
    Tensor { dtype: DType::I64, data: Data::Int(out) }
}

/// A dynamic slice's start (a scalar), clamped so that `size` elements from it fit in `dim`.
fn clamped_start(start: &Tensor, dim: u64, size: u64) -> usize {
    let s = start.to_f64().iter().next().copied().unwrap_or(0.0) as i64;
    s.clamp(0, (dim - size) as i64) as usize
}

/// `data` with each slice of `updates` (indexed as gather's result) added at its clamped index along `axis`.
fn eval_scatter_add(x: &[&Tensor], axis: usize) -> Tensor {
    let (data, idx, updates) = (x[0], x[1], x[2]);
    let n = data.shape()[axis] as i64;
    let idx: Vec<usize> = idx.to_f64().iter().map(|&i| (i as i64).clamp(0, n - 1) as usize).collect();
    // As gather's result, updates hold data's dimensions before `axis`, the indices', then data's after it.
    let shape = data.shape();
    let lead = shape[..axis].iter().product::<u64>() as usize;
    let trail = shape[axis + 1..].iter().product::<u64>() as usize;
    let mut sum = data.to_f64().as_standard_layout().into_owned();
    let upd = updates.to_f64().as_standard_layout().into_owned();
    let upd = upd.into_shape_with_order((lead, idx.len(), trail)).expect("verified shapes");
    {
        let mut view = sum.view_mut().into_shape_with_order((lead, n as usize, trail)).expect("row-major data");
        for l in 0..lead {
            for (k, &i) in idx.iter().enumerate() {
                for t in 0..trail {
                    view[[l, i, t]] += upd[[l, k, t]];
                }
            }
        }
    }
    match data.data {
        Data::Int(_) => Tensor::from_i64(data.dtype, sum.mapv(|v| data.dtype.int_from_f64(v))),
        _ => Tensor::from_f64(data.dtype, sum),
    }
}

fn eval_pad(x: &Tensor, low: &[i64], high: &[i64], value: f64, dtype: DType, shape: &[u64]) -> Tensor {
    let a = x.to_f64();
    // Crop the negative pads, then place into a filled array.
    let cropped = a.slice_each_axis(|ax| {
        let d = ax.axis.index();
        let n = ax.len as isize;
        Slice::new((-low[d]).max(0) as isize, Some(n - (-high[d]).max(0) as isize), 1)
    });
    let mut out = ArrayD::from_elem(shape_of(shape), value);
    out.slice_each_axis_mut(|ax| {
        let d = ax.axis.index();
        Slice::new(low[d].max(0) as isize, Some(ax.len as isize - high[d].max(0) as isize), 1)
    })
    .assign(&cropped);
    from_layout(dtype, out)
}

fn layer_norm(x: &[&Tensor], axis: usize, epsilon: f64) -> ArrayD<f64> {
    let a = x[0].floats();
    let axes: Vec<usize> = (axis..a.ndim()).collect();
    let n: usize = axes.iter().map(|&d| a.shape()[d]).product();
    let mean = sum_keep(a, &axes) / n as f64;
    let c = a - &mean;
    let var = sum_keep(&(&c * &c), &axes) / n as f64;
    let mut y = c / var.mapv(|v| (v + epsilon).sqrt());
    if let Some(s) = x.get(1) {
        y *= s.floats();
    }
    if let Some(b) = x.get(2) {
        y += b.floats();
    }
    y
}

fn rms_norm(x: &[&Tensor], epsilon: f64) -> ArrayD<f64> {
    let a = x[0].floats();
    let last = a.ndim() - 1;
    let ms = sum_keep(&(a * a), &[last]) / a.shape()[last] as f64;
    let mut y = a / ms.mapv(|v| (v + epsilon).sqrt());
    if let Some(s) = x.get(1) {
        y *= s.floats();
    }
    y
}

/// `activation(x·w + b)`, each step rounded to the dtype, as the unfused ops would be.
fn eval_linear(x: &[&Tensor], activation: Option<UnaryOp>, dtype: DType, shape: &[u64]) -> Result<Tensor, String> {
    let r = x[0].shape().len();
    let d = DotDims::batched(0, r - 1, 0, None);
    // Each step rounds to the dtype, as the unfused ops would.
    let mut y = dot_general(x[0], x[1], &d, dtype);
    if let Some(b) = x.get(2) {
        y = eval_binary(BinaryOp::Add, &y, b, dtype, shape)?;
    }
    Ok(match activation {
        Some(a) => eval_unary(a, &y, dtype),
        None => y,
    })
}

fn tt(t: &Tensor) -> crate::ir::types::TensorType {
    crate::ir::types::TensorType::new(t.dtype, t.shape())
}

fn reshape(t: &Tensor, shape: &[u64]) -> Tensor {
    t.map_layout(&|a| {
        a.as_standard_layout()
            .into_owned()
            .into_shape_with_order(shape_of(shape))
            .expect("verified module: element counts agree")
    })
}

/// A tensor of `dtype` from data that a layout op produced exactly.
fn from_layout(dtype: DType, a: ArrayD<f64>) -> Tensor {
    if dtype.is_float() || dtype == DType::Bool {
        Tensor::from_f64(dtype, a)
    } else {
        Tensor::from_i64(dtype, a.mapv(|v| dtype.int_from_f64(v)))
    }
}

fn eval_unary(u: UnaryOp, x: &Tensor, dtype: DType) -> Tensor {
    if let Data::Int(a) = &x.data {
        let r = match u {
            UnaryOp::Neg => a.mapv(i64::wrapping_neg),
            UnaryOp::Abs => a.mapv(i64::wrapping_abs),
            _ => a.mapv(|v| !v),
        };
        return Tensor::from_i64(dtype, r);
    }
    if let Data::Bool(a) = &x.data {
        return Tensor { dtype, data: Data::Bool(a.mapv(|v| !v)) };
    }
    let f: fn(f64) -> f64 = match u {
        UnaryOp::Neg => |v| -v,
        UnaryOp::Abs => f64::abs,
        UnaryOp::Exp => f64::exp,
        UnaryOp::Log => f64::ln,
        UnaryOp::Sqrt => f64::sqrt,
        UnaryOp::Rsqrt => |v| 1.0 / v.sqrt(),
        UnaryOp::Tanh => f64::tanh,
        UnaryOp::Sigmoid => |v| 1.0 / (1.0 + (-v).exp()),
        UnaryOp::Erf => libm::erf,
        UnaryOp::Relu => |v| if v > 0.0 || v.is_nan() { v } else { 0.0 },
        UnaryOp::GeluErf => |v| 0.5 * v * (1.0 + libm::erf(v * std::f64::consts::FRAC_1_SQRT_2)),
        UnaryOp::GeluTanh => {
            |v| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
        }
        UnaryOp::Silu => |v| v / (1.0 + (-v).exp()),
        UnaryOp::Sin => f64::sin,
        UnaryOp::Cos => f64::cos,
        UnaryOp::Floor => f64::floor,
        UnaryOp::Ceil => f64::ceil,
        UnaryOp::Not => |v| v,
    };
    Tensor::from_f64(dtype, x.floats().mapv(f))
}

fn eval_binary(b: BinaryOp, x: &Tensor, y: &Tensor, dtype: DType, shape: &[u64]) -> Result<Tensor, String> {
    match (&x.data, &y.data) {
        (Data::Float(p), Data::Float(q)) => {
            let f: fn(f64, f64) -> f64 = match b {
                BinaryOp::Add => |p, q| p + q,
                BinaryOp::Sub => |p, q| p - q,
                BinaryOp::Mul => |p, q| p * q,
                BinaryOp::Div => |p, q| p / q,
                BinaryOp::Pow => f64::powf,
                // NaN propagates, as in XLA's maximum and minimum.
                BinaryOp::Max => |p, q| if p.is_nan() || q.is_nan() { f64::NAN } else { p.max(q) },
                BinaryOp::Min => |p, q| if p.is_nan() || q.is_nan() { f64::NAN } else { p.min(q) },
                BinaryOp::And | BinaryOp::Or => return Err("logical op on floats".into()),
            };
            let (p, q) = (bcast(p, shape), bcast(q, shape));
            Ok(Tensor::from_f64(dtype, Zip::from(&p).and(&q).map_collect(|&p, &q| f(p, q))))
        }
        (Data::Int(p), Data::Int(q)) => {
            let (p, q) = (bcast(p, shape), bcast(q, shape));
            let r = Zip::from(&p).and(&q).map_collect(|&p, &q| match b {
                BinaryOp::Add => p.wrapping_add(q),
                BinaryOp::Sub => p.wrapping_sub(q),
                BinaryOp::Mul => p.wrapping_mul(q),
                // xlac's integer division: x / 0 = 0, MIN / -1 wraps to MIN.
                BinaryOp::Div if q == 0 => 0,
                BinaryOp::Div if dtype == DType::U64 => ((p as u64) / (q as u64)) as i64,
                BinaryOp::Div => dtype.wrap_i64(p).wrapping_div(q),
                BinaryOp::Pow if q < 0 && dtype != DType::U64 => match p {
                    1 => 1,
                    -1 => {
                        if q % 2 == 0 {
                            1
                        } else {
                            -1
                        }
                    }
                    _ => 0,
                },
                BinaryOp::Pow => p.wrapping_pow(dtype.ordinal(q).min(u32::MAX as i128) as u32),
                BinaryOp::Max => std::cmp::max_by_key(p, q, |&v| dtype.ordinal(v)),
                BinaryOp::Min => std::cmp::min_by_key(p, q, |&v| dtype.ordinal(v)),
                BinaryOp::And => p & q,
                BinaryOp::Or => p | q,
            });
            Ok(Tensor::from_i64(dtype, r))
        }
        (Data::Bool(p), Data::Bool(q)) => {
            let (p, q) = (bcast(p, shape), bcast(q, shape));
            let r = Zip::from(&p).and(&q).map_collect(|&p, &q| if b == BinaryOp::And { p && q } else { p || q });
            Ok(Tensor { dtype, data: Data::Bool(r) })
        }
        _ => Err("operands of different kinds".into()),
    }
}

/// `dot_general`: permute each side to (batch, free, contract), multiply as
/// batched matrices, and lay the result out as (batch, lhs free, rhs free).
fn dot_general(a: &Tensor, b: &Tensor, d: &DotDims, dtype: DType) -> Tensor {
    let (sa, sb) = (a.shape(), b.shape());
    let free = |rank: usize, used: &[usize]| (0..rank).filter(|i| !used.contains(i)).collect::<Vec<_>>();
    let a_used: Vec<usize> = d.lhs_batch.iter().chain(&d.lhs_contract).copied().collect();
    let b_used: Vec<usize> = d.rhs_batch.iter().chain(&d.rhs_contract).copied().collect();
    let (af, bf) = (free(sa.len(), &a_used), free(sb.len(), &b_used));
    let prod = |s: &[u64], dims: &[usize]| dims.iter().map(|&i| s[i] as usize).product::<usize>();
    let (nb, m, k, n) = (prod(&sa, &d.lhs_batch), prod(&sa, &af), prod(&sa, &d.lhs_contract), prod(&sb, &bf));
    let a_perm: Vec<usize> = d.lhs_batch.iter().chain(&af).chain(&d.lhs_contract).copied().collect();
    let b_perm: Vec<usize> = d.rhs_batch.iter().chain(&d.rhs_contract).chain(&bf).copied().collect();
    let mut out_shape: Vec<u64> = d.lhs_batch.iter().map(|&i| sa[i]).collect();
    out_shape.extend(af.iter().map(|&i| sa[i]));
    out_shape.extend(bf.iter().map(|&i| sb[i]));
    let lay = |t: &Tensor, perm: &[usize], s: [usize; 3]| {
        t.to_f64()
            .permuted_axes(IxDyn(perm))
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&s))
            .expect("sizes agree")
    };
    let (a3, b3) = (lay(a, &a_perm, [nb, m, k]), lay(b, &b_perm, [nb, k, n]));
    let mut out = ArrayD::<f64>::zeros(IxDyn(&[nb, m, n]));
    for i in 0..nb {
        let (x, y) = (a3.index_axis(Axis(0), i), b3.index_axis(Axis(0), i));
        let x = x.into_dimensionality::<ndarray::Ix2>().expect("rank 2");
        let y = y.into_dimensionality::<ndarray::Ix2>().expect("rank 2");
        out.index_axis_mut(Axis(0), i).assign(&x.dot(&y).into_dyn());
    }
    let r = out.into_shape_with_order(shape_of(&out_shape)).expect("sizes agree");
    from_layout(dtype, r)
}

fn reduce(x: &Tensor, axes: &[usize], kind: ReduceKind, dtype: DType) -> Tensor {
    let mut a = x.to_f64();
    for &ax in axes.iter().rev() {
        a = match kind {
            ReduceKind::Sum | ReduceKind::Mean => a.sum_axis(Axis(ax)),
            ReduceKind::Max => a.map_axis(Axis(ax), |l| {
                l.iter()
                    .copied()
                    .fold(f64::NEG_INFINITY, |p, q| if p.is_nan() || q.is_nan() { f64::NAN } else { p.max(q) })
            }),
            ReduceKind::Min => a.map_axis(Axis(ax), |l| {
                l.iter().copied().fold(f64::INFINITY, |p, q| if p.is_nan() || q.is_nan() { f64::NAN } else { p.min(q) })
            }),
        };
    }
    if kind == ReduceKind::Mean {
        let n: u64 = axes.iter().map(|&ax| x.shape()[ax]).product();
        a /= n as f64;
    }
    from_layout(dtype, a)
}

fn sum_keep(a: &ArrayD<f64>, axes: &[usize]) -> ArrayD<f64> {
    let mut r = a.clone();
    for &ax in axes.iter().rev() {
        r = r.sum_axis(Axis(ax)).insert_axis(Axis(ax));
    }
    r
}

fn max_keep(a: &ArrayD<f64>, axis: usize) -> ArrayD<f64> {
    a.map_axis(Axis(axis), |l| l.iter().copied().fold(f64::NEG_INFINITY, f64::max)).insert_axis(Axis(axis))
}

fn softmax(a: &ArrayD<f64>, axis: usize) -> ArrayD<f64> {
    let e = (a - &max_keep(a, axis)).mapv(f64::exp);
    let s = e.sum_axis(Axis(axis)).insert_axis(Axis(axis));
    e / s
}

fn conv2d(
    x: &ArrayD<f64>,
    w: &ArrayD<f64>,
    bias: Option<&ArrayD<f64>>,
    win: &Window2d,
    groups: u64,
    shape: &[u64],
) -> ArrayD<f64> {
    let n = x.shape()[0];
    let (o, cg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    let (h, wd) = (x.shape()[2] as isize, x.shape()[3] as isize);
    let og = o / groups as usize;
    let mut out = ArrayD::<f64>::zeros(shape_of(shape));
    let (oh, ow) = (shape[2] as usize, shape[3] as usize);
    for b in 0..n {
        for oc in 0..o {
            let g = oc / og;
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = bias.map_or(0.0, |bs| bs[[oc]]);
                    for ic in 0..cg {
                        for p in 0..kh {
                            for q in 0..kw {
                                let y = (i * win.stride[0] as usize + p * win.dilation[0] as usize) as isize
                                    - win.padding[0] as isize;
                                let z = (j * win.stride[1] as usize + q * win.dilation[1] as usize) as isize
                                    - win.padding[2] as isize;
                                if y >= 0 && y < h && z >= 0 && z < wd {
                                    acc += x[[b, g * cg + ic, y as usize, z as usize]] * w[[oc, ic, p, q]];
                                }
                            }
                        }
                    }
                    out[[b, oc, i, j]] = acc;
                }
            }
        }
    }
    out
}

fn pool(x: &ArrayD<f64>, kernel: [u64; 2], win: &Window2d, shape: &[u64], max: bool) -> ArrayD<f64> {
    let (h, wd) = (x.shape()[2] as isize, x.shape()[3] as isize);
    let mut out = ArrayD::<f64>::zeros(shape_of(shape));
    for b in 0..shape[0] as usize {
        for c in 0..shape[1] as usize {
            for i in 0..shape[2] as usize {
                for j in 0..shape[3] as usize {
                    let mut acc = if max { f64::NEG_INFINITY } else { 0.0 };
                    for p in 0..kernel[0] as usize {
                        for q in 0..kernel[1] as usize {
                            let y = (i * win.stride[0] as usize + p * win.dilation[0] as usize) as isize
                                - win.padding[0] as isize;
                            let z = (j * win.stride[1] as usize + q * win.dilation[1] as usize) as isize
                                - win.padding[2] as isize;
                            // Padded positions hold -inf for max and 0 for average.
                            if y >= 0 && y < h && z >= 0 && z < wd {
                                let v = x[[b, c, y as usize, z as usize]];
                                acc = if max { acc.max(v) } else { acc + v };
                            }
                        }
                    }
                    out[[b, c, i, j]] = if max { acc } else { acc / (kernel[0] * kernel[1]) as f64 };
                }
            }
        }
    }
    out
}

fn attention(x: &[&Tensor], causal: bool, scale: Option<f64>) -> ArrayD<f64> {
    let (q, k, v) = (x[0], x[1], x[2]);
    let r = q.shape().len();
    let nb = r - 2;
    let d = DotDims::batched(nb, r - 1, r - 1, None);
    let mut s = dot_general(q, k, &d, DType::F64).to_f64();
    let scale = scale.unwrap_or(1.0 / (q.shape()[r - 1] as f64).sqrt());
    s *= scale;
    if let Some(mask) = x.get(3) {
        let sh: Vec<u64> = s.shape().iter().map(|&d| d as u64).collect();
        s = s + bcast(mask.floats(), &sh);
    }
    if causal {
        s.indexed_iter_mut().for_each(|(ix, v)| {
            if ix[nb + 1] > ix[nb] {
                *v = f64::NEG_INFINITY;
            }
        });
    }
    // The probabilities are rounded to v's dtype, as the lowering multiplies them with v in it.
    let p = Tensor::from_f64(v.dtype, softmax(&s, r - 1));
    let d2 = DotDims::batched(nb, r - 1, r - 2, None);
    let vv = Tensor { dtype: DType::F64, data: Data::Float(v.to_f64()) };
    dot_general(&p, &vv, &d2, DType::F64).to_f64()
}
