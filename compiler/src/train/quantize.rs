//! Block-wise 8-bit quantization of optimizer state, as bitsandbytes' 8-bit
//! optimizers store it: a tensor, flattened and zero-padded to blocks of
//! [`BLOCK`] elements, keeps per block its largest magnitude (`absmax`, f32)
//! and per element one byte, the index of the nearest value of bitsandbytes'
//! *dynamic map* (256 sorted values in [-1, 1] whose spacing grows with
//! their magnitude, like a float's) to the element over its block's absmax.
//! All zeros (the state's start) stand for zeros: the absmax is 0.

use crate::ir::builder::{Builder, Built};
use crate::ir::dtype::DType;
use crate::ir::op::{BinaryOp, CompareDir, ConstData, Op, ReduceKind, UnaryOp};
use crate::ir::Value;

/// Elements per block.
pub const BLOCK: u64 = 256;

/// bitsandbytes' `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`,
/// sorted: per decade `10^(i-6)`, `i` in 0..7, the midpoints of a
/// `linspace(0.1, 1, k+1)` (`k = 2^i`, and its negation, when signed; `k =
/// 2^(i+1)` unsigned), then 0 and 1.
pub fn dynamic_map(signed: bool) -> Vec<f64> {
    let mut data = Vec::with_capacity(256);
    for i in 0..7 {
        let k = if signed { 1u32 << i } else { 1u32 << (i + 1) };
        let decade = 10f64.powi(i - 6);
        for j in 0..k {
            let at = |t: u32| 0.1 + 0.9 * f64::from(t) / f64::from(k);
            let mean = ((at(j) + at(j + 1)) / 2.0) as f32 as f64;
            data.push(decade * mean);
            if signed {
                data.push(-decade * mean);
            }
        }
    }
    data.extend([0.0, 1.0]);
    data.sort_by(f64::total_cmp);
    data.into_iter().map(|x| x as f32 as f64).collect()
}

/// The blocks a tensor of `n` elements takes.
pub fn blocks(n: u64) -> u64 {
    n.div_ceil(BLOCK)
}

fn table(b: &mut Builder, values: Vec<f64>) -> Built {
    let shape = vec![values.len() as u64];
    b.op(Op::Constant { dtype: DType::F32, shape, data: ConstData::Float(values) }, &[])
}

/// The f32 tensor of `shape` that `codes` (u8 `[blocks, BLOCK]`) and
/// `absmax` (f32 `[blocks]`) store.
pub fn dequantize(b: &mut Builder, codes: Value, absmax: Value, signed: bool, shape: &[u64]) -> Built {
    let nb = b.ty(absmax).shape[0];
    let map = table(b, dynamic_map(signed))?;
    let at = b.cast(codes, DType::I32)?;
    let unit = b.op(Op::Gather { axis: 0 }, &[map, at])?;
    let scale = b.reshape(absmax, &[nb, 1])?;
    let x = b.mul(unit, scale)?;
    let n: u64 = shape.iter().product();
    let flat = b.reshape(x, &[nb * BLOCK])?;
    let flat = b.op(Op::Slice { starts: vec![0], limits: vec![n], strides: vec![1] }, &[flat])?;
    b.reshape(flat, shape)
}

/// `x` (f32) quantized: its codes (u8 `[blocks, BLOCK]`) and absmax (f32
/// `[blocks]`), each element the nearest value of the map.
pub fn quantize(b: &mut Builder, x: Value, signed: bool) -> Result<(Value, Value), String> {
    let n: u64 = b.ty(x).shape.iter().product();
    let nb = blocks(n);
    let flat = b.reshape(x, &[n])?;
    let flat = b.pad(flat, vec![0], vec![(nb * BLOCK - n) as i64])?;
    let blocked = b.reshape(flat, &[nb, BLOCK])?;
    let magnitude = b.unary(UnaryOp::Abs, blocked)?;
    let absmax = b.op(Op::Reduce { kind: ReduceKind::Max, axes: vec![1], keepdims: false }, &[magnitude])?;
    // An all-zero block divides by the least normal f32 instead of 0: its zeros stay zeros.
    let least = b.scalar(f64::from(f32::MIN_POSITIVE), DType::F32)?;
    let divisor = b.binary(BinaryOp::Max, absmax, least)?;
    let divisor = b.reshape(divisor, &[nb, 1])?;
    let unit = b.div(blocked, divisor)?;
    let code = nearest(b, unit, signed)?;
    Ok((b.cast(code, DType::U8)?, absmax))
}

/// The midpoints between neighbouring map values, with the largest f32s
/// before and after (finite, so the program prints as IR text): `x` in
/// [-1, 1] is nearest to value `k` when `mids[k] ≤ x < mids[k+1]`.
fn midpoints(signed: bool) -> Vec<f64> {
    let map = dynamic_map(signed);
    let mut mids = vec![f64::from(f32::MIN)];
    mids.extend(map.windows(2).map(|w| ((w[0] + w[1]) / 2.0) as f32 as f64));
    mids.push(f64::from(f32::MAX));
    mids
}

/// The index (i32) of the map value nearest each element of `unit` (in
/// [-1, 1]). The map's structure gives it: the decade `i` of `|u|` (the
/// number of the thresholds 10⁻⁶ … 10⁻¹ it reaches, 0..7) and, in it, the
/// bin `j` of the `linspace(0.1, 1, k+1)` its mantissa `|u| · 10^(6−i)`
/// falls in, whose mean is the value (within a decade the bins' edges are
/// the midpoints); the values before decade `i` number `k − 1` (signed, `k
/// = 2^i`) or `k − 2` (unsigned, `k = 2^(i+1)`). Rounding at a decade's edge
/// leaves this at most one off, which one comparison with each neighbouring
/// midpoint corrects. (Comparisons and selects: XLA's CPU backend runs them
/// vectorized, where a logarithm, powers or a gather per step cost more.)
fn nearest(b: &mut Builder, unit: Value, signed: bool) -> Built {
    let f = |b: &mut Builder, v: f64| b.scalar(v, DType::F32);
    let a = b.unary(UnaryOp::Abs, unit)?;
    let values = |i: i32| (10f64.powi(6 - i), f64::from(1u32 << if signed { i } else { i + 1 }));
    let (first_scale, first_k) = values(0);
    let mut scale = f(b, first_scale)?;
    let mut k = f(b, first_k)?;
    for i in 1..7 {
        let threshold = f(b, 10f64.powi(i - 7))?;
        let reached = b.compare(CompareDir::Ge, a, threshold)?;
        let (s, n) = values(i);
        let (s, n) = (f(b, s)?, f(b, n)?);
        scale = b.select(reached, s, scale)?;
        k = b.select(reached, n, k)?;
    }
    let mantissa = b.mul(a, scale)?;
    let (zero, one) = (f(b, 0.0)?, f(b, 1.0)?);
    // j = clamp(floor((t − 0.1) / 0.9 · k), 0, k − 1)
    let tenth = f(b, 0.1)?;
    let t = b.sub(mantissa, tenth)?;
    let t = b.scale(t, 1.0 / 0.9)?;
    let t = b.mul(t, k)?;
    let j = b.unary(UnaryOp::Floor, t)?;
    let last = b.sub(k, one)?;
    let j = b.binary(BinaryOp::Max, j, zero)?;
    let j = b.binary(BinaryOp::Min, j, last)?;
    let before = f(b, if signed { 1.0 } else { 2.0 })?;
    let before = b.sub(k, before)?;
    let rank = b.add(before, j)?;
    let approx = if signed {
        let (up, down) = (f(b, 128.0)?, f(b, 126.0)?);
        let positive = b.add(up, rank)?;
        let negative = b.sub(down, rank)?;
        let sign = b.compare(CompareDir::Ge, unit, zero)?;
        b.select(sign, positive, negative)?
    } else {
        b.add(one, rank)?
    };
    let approx = b.cast(approx, DType::I32)?;
    let mids = table(b, midpoints(signed))?;
    let below = b.op(Op::Gather { axis: 0 }, &[mids, approx])?;
    let step = b.scalar(1.0, DType::I32)?;
    let next = b.add(approx, step)?;
    let above = b.op(Op::Gather { axis: 0 }, &[mids, next])?;
    let low = b.compare(CompareDir::Lt, unit, below)?;
    let high = b.compare(CompareDir::Ge, unit, above)?;
    let previous = b.sub(approx, step)?;
    let code = b.select(low, previous, approx)?;
    b.select(high, next, code)
}

#[cfg(test)]
mod tests {
    use super::dynamic_map;

    #[test]
    fn the_dynamic_maps_are_bitsandbytes() {
        for signed in [true, false] {
            let map = dynamic_map(signed);
            assert_eq!(map.len(), 256);
            assert!(map.windows(2).all(|w| w[0] <= w[1]), "sorted");
            assert_eq!(map[255], 1.0);
            assert!(map.contains(&0.0));
        }
        let signed = dynamic_map(true);
        // 127 negative values, zero, 128 positive ones up to 1; the last decade's last midpoint is 0.99296875.
        assert_eq!(signed.iter().filter(|&&x| x < 0.0).count(), 127);
        assert_eq!(signed[0], -(0.99296875f32 as f64));
        let unsigned = dynamic_map(false);
        assert_eq!(unsigned[0], 0.0);
        assert_eq!(unsigned[1], (1e-6 * (0.325f32 as f64)) as f32 as f64);
    }
}
