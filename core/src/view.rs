//! Weight views: a stored tensor read with its dimensions permuted and its
//! floats rounded to another float type, without rewriting the file. The
//! compiler's fold-weights pass creates them; the runtime applies them while
//! uploading (a permutation as byte strides the device copies through, a
//! conversion tensor by tensor); the compiler and the interpreter apply them
//! densely. One definition serves all three.

use crate::dtype::DType;
use std::borrow::Cow;

/// How a parameter reads its stored tensor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WeightView {
    /// Dimension `i` of the view is dimension `perm[i]` of the stored tensor.
    pub perm: Option<Vec<usize>>,
    /// Floats rounded (to nearest, ties to even) to this float type.
    pub convert: Option<DType>,
}

impl WeightView {
    /// True when the view reads the tensor as stored.
    pub fn is_identity(&self) -> bool {
        self.perm.is_none() && self.convert.is_none()
    }

    /// The view of a stored `dtype` tensor of `shape` in `data`, without
    /// laying it out: its dtype, shape, bytes (borrowed unless converted) and,
    /// for a permutation, the byte strides to read them through (what a
    /// device copy takes). An error when the view does not fit the tensor.
    pub fn layout<'a>(&self, dtype: DType, shape: &[usize], data: &'a [u8]) -> Result<Laid<'a>, String> {
        let (dtype, bytes) = match self.convert {
            Some(to) => (to, Cow::Owned(convert_floats(dtype, data, to)?)),
            None => (dtype, Cow::Borrowed(data)),
        };
        let (shape, byte_strides) = match &self.perm {
            None => (shape.to_vec(), None),
            Some(perm) => {
                let (shape, strides) = permuted_layout(dtype, shape, perm)?;
                (shape, Some(strides))
            }
        };
        Ok(Laid { dtype, shape, bytes, byte_strides })
    }

    /// The view of a stored `dtype` tensor of `shape` in `data`: its dtype,
    /// shape and dense row-major bytes (converted and laid out; a copy).
    pub fn apply(&self, dtype: DType, shape: &[usize], data: &[u8]) -> Result<(DType, Vec<usize>, Vec<u8>), String> {
        let laid = self.layout(dtype, shape, data)?;
        let dense = match &laid.byte_strides {
            None => laid.bytes.into_owned(),
            Some(strides) => gather(laid.dtype.size_bytes(), &laid.shape, &laid.bytes, strides),
        };
        Ok((laid.dtype, laid.shape, dense))
    }
}

/// A tensor read through a [`WeightView`]: its bytes, in the stored order
/// (read through `byte_strides` when they are set) or dense.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Laid<'a> {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Cow<'a, [u8]>,
    pub byte_strides: Option<Vec<usize>>,
}

/// Every element of `data` (little-endian `dtype` floats) as f64.
fn floats(dtype: DType, data: &[u8]) -> Vec<f64> {
    let n = dtype.size_bytes();
    data.chunks_exact(n)
        .map(|c| match dtype {
            DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
            DType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f64(),
            DType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f64(),
            _ => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

/// `data`, little-endian `from` floats, rounded element by element to the
/// float type `to` (to nearest, ties to even; too large becomes infinite);
/// an error for other types.
pub fn convert_floats(from: DType, data: &[u8], to: DType) -> Result<Vec<u8>, String> {
    if !from.is_float() || !to.is_float() {
        return Err(format!("cannot convert {from} to {to}: only floats convert"));
    }
    let mut out = Vec::with_capacity(data.len() / from.size_bytes() * to.size_bytes());
    for x in floats(from, data) {
        match to {
            DType::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
            DType::F64 => out.extend_from_slice(&x.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
            _ => out.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes()),
        }
    }
    Ok(out)
}

/// The shape and byte strides of a row-major `dtype` tensor of `shape` read
/// with its dimensions permuted: dimension `i` of the view is dimension
/// `perm[i]` of the stored tensor. An error unless `perm` lists each dimension once.
pub fn permuted_layout(dtype: DType, shape: &[usize], perm: &[usize]) -> Result<(Vec<usize>, Vec<usize>), String> {
    let mut seen = vec![false; shape.len()];
    if perm.len() != shape.len() || !perm.iter().all(|&p| p < shape.len() && !std::mem::replace(&mut seen[p], true)) {
        return Err(format!("{perm:?} is not a permutation of the dimensions of {dtype}{shape:?}"));
    }
    let mut stored = vec![dtype.size_bytes(); shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        stored[d] = stored[d + 1] * shape[d + 1];
    }
    Ok((perm.iter().map(|&p| shape[p]).collect(), perm.iter().map(|&p| stored[p]).collect()))
}

/// The elements of a strided view (`shape`, `byte_strides` into `data`,
/// `elem` bytes each) gathered into dense row-major bytes.
pub fn gather(elem: usize, shape: &[usize], data: &[u8], byte_strides: &[usize]) -> Vec<u8> {
    let count: usize = shape.iter().product();
    let mut out = Vec::with_capacity(count * elem);
    let mut index = vec![0usize; shape.len()];
    let mut offset = 0usize;
    for _ in 0..count {
        out.extend_from_slice(&data[offset..offset + elem]);
        // Advance the row-major index, moving the byte offset along.
        for d in (0..index.len()).rev() {
            index[d] += 1;
            offset += byte_strides[d];
            if index[d] < shape[d] {
                break;
            }
            offset -= byte_strides[d] * index[d];
            index[d] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn a_view_transposes_and_converts() {
        let stored = f32s(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let view = WeightView { perm: Some(vec![1, 0]), convert: None };
        let (dtype, shape, bytes) = view.apply(DType::F32, &[2, 3], &stored).unwrap();
        assert_eq!((dtype, shape, bytes), (DType::F32, vec![3, 2], f32s(&[0.0, 3.0, 1.0, 4.0, 2.0, 5.0])));
        let view = WeightView { perm: None, convert: Some(DType::BF16) };
        let (dtype, _, bytes) = view.apply(DType::F32, &[6], &f32s(&[1.0 + 1.0 / 256.0; 6])).unwrap();
        assert_eq!((dtype, &bytes[..2]), (DType::BF16, &half::bf16::from_f32(1.0).to_le_bytes()[..]), "ties to even");
        assert!(view.apply(DType::I32, &[1], &[0; 4]).unwrap_err().contains("only floats convert"));
        // 1 + 2^-8 is halfway between bf16 neighbours: to even (1.0); 1 + 3·2^-8 rounds up; past the range, infinite.
        let bf =
            convert_floats(DType::F32, &f32s(&[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -3.4e38]), DType::BF16).unwrap();
        let back: Vec<f32> = bf.chunks(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
        assert_eq!(back, [1.0, 1.015625, f32::NEG_INFINITY]);
        assert!(permuted_layout(DType::F32, &[2, 3], &[0, 0]).unwrap_err().contains("not a permutation"));
    }
}
