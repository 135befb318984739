//! Tensor types: a dtype and a static shape.

use crate::ir::dtype::DType;
use std::fmt;

/// A tensor's type. Shapes in the IR are always static: symbols such as `batch`
/// are bound before the IR is built, and each binding is its own program.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<u64>,
}

/// The largest element count xlac accepts for one tensor (2^53, so that counts
/// stay exact in f64 and byte sizes fit in u64 and i64 for every dtype).
pub const MAX_ELEMENTS: u64 = 1 << 53;

impl TensorType {
    /// A tensor type; does not check the element count (see [`element_count`]).
    pub fn new(dtype: DType, shape: Vec<u64>) -> Self {
        TensorType { dtype, shape }
    }

    /// A rank-0 tensor of `dtype`.
    pub fn scalar(dtype: DType) -> Self {
        TensorType { dtype, shape: vec![] }
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements (the product of the shape, 1 for a scalar).
    /// Only types that passed [`element_count`] exist in a verified module, so this cannot overflow there.
    pub fn num_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// The rows of a product's operand: its elements over those of its
    /// `contracted` dimensions (see [`crate::ir::Op::contracted_dims`]).
    pub fn rows(&self, contracted: &[usize]) -> u64 {
        self.num_elements() / contracted.iter().map(|&c| self.shape[c]).product::<u64>().max(1)
    }

    /// The same shape with another dtype.
    pub fn with_dtype(&self, dtype: DType) -> Self {
        TensorType { dtype, shape: self.shape.clone() }
    }

    /// Size in bytes of the dense, row-major data.
    pub fn size_bytes(&self) -> u64 {
        self.num_elements() * self.dtype.size_bytes() as u64
    }
}

/// Splits a type written `f32[2,3]` into its dtype name (unchecked: the
/// readers report an unknown one where it stands) and its shape.
pub fn split_type(t: &str) -> Result<(String, Vec<u64>), String> {
    let (dtype, dims) =
        t.trim().split_once('[').ok_or_else(|| format!("expected a type such as f32[2,3], found `{t}`"))?;
    let dims = dims.strip_suffix(']').ok_or_else(|| format!("expected `]` closing the shape in `{t}`"))?;
    let shape = dims
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.trim().parse::<u64>().map_err(|_| format!("bad dimension `{d}` in `{t}`")))
        .collect::<Result<_, _>>()?;
    Ok((dtype.to_string(), shape))
}

impl std::str::FromStr for TensorType {
    type Err = String;

    /// Reads `f32[2,3]` (`f32[]` for a scalar), as the printer writes types.
    fn from_str(t: &str) -> Result<Self, String> {
        let (dtype, shape) = split_type(t)?;
        Ok(TensorType::new(dtype.parse()?, shape))
    }
}

/// The product of `shape`, or an error when it exceeds [`MAX_ELEMENTS`].
pub fn element_count(shape: &[u64]) -> Result<u64, String> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= MAX_ELEMENTS))
        .ok_or_else(|| format!("shape {} has more than 2^53 elements", ShapeDisplay(shape)))
}

/// Displays a shape as `[8,16]`.
pub struct ShapeDisplay<'a>(pub &'a [u64]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, ShapeDisplay(&self.shape))
    }
}

/// NumPy broadcasting of two shapes, or `None` when they are incompatible.
pub fn broadcast_shapes(a: &[u64], b: &[u64]) -> Option<Vec<u64>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[u64], i: usize| {
        let pad = rank - s.len();
        if i < pad {
            1
        } else {
            s[i - pad]
        }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shapes(&[8, 1, 4], &[3, 1]), Some(vec![8, 3, 4]));
        assert_eq!(broadcast_shapes(&[], &[2, 2]), Some(vec![2, 2]));
        assert_eq!(broadcast_shapes(&[2, 3], &[4, 3]), None);
    }

    #[test]
    fn element_count_rejects_overflow() {
        assert_eq!(element_count(&[2, 3]).unwrap(), 6);
        assert_eq!(element_count(&[]).unwrap(), 1);
        assert!(element_count(&[1 << 40, 1 << 40]).unwrap_err().contains("2^53"));
        assert!(element_count(&[u64::MAX, 2]).is_err());
    }
}
