//! Host tensors: dense, row-major, little-endian bytes with an element type and
//! a shape, convertible to and from ndarray.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::DType;
use ndarray::{ArrayBase, ArrayD, Data, Dimension, IxDyn};

/// The name, element type and shape of a program argument or result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub ty: DType,
    pub shape: Vec<usize>,
}

impl std::fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}{:?}", self.name, self.ty, self.shape)
    }
}

/// A borrowed tensor: what uploads to a device take. Its bytes are dense and
/// row-major, or, with `byte_strides`, a strided view of them (a transposed
/// weight read in place: the device copy is dense).
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub ty: DType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
    /// The byte distance between consecutive indices of each dimension;
    /// `None` for dense row-major bytes.
    pub byte_strides: Option<&'a [usize]>,
}

impl<'a> TensorRef<'a> {
    /// A view of `data`, checked to hold exactly `shape`'s elements of `ty`.
    pub fn new(ty: DType, shape: &'a [usize], data: &'a [u8]) -> Result<Self> {
        let expected = byte_len(ty, shape)?;
        if data.len() != expected {
            return Err(Error::Tensor(format!("{ty}{shape:?} needs {expected} bytes, found {}", data.len())));
        }
        Ok(TensorRef { ty, shape, data, byte_strides: None })
    }

    /// A strided view of `data`: element `[i0, i1, ..]` starts at byte
    /// `Σ ik·byte_strides[k]`. Checked to have one stride per dimension, each
    /// a multiple of the element size, and every element inside `data`.
    pub fn strided(ty: DType, shape: &'a [usize], data: &'a [u8], byte_strides: &'a [usize]) -> Result<Self> {
        let size = ty.size_bytes();
        let bad = |why: String| Error::Tensor(format!("{ty}{shape:?} with byte strides {byte_strides:?}: {why}"));
        if byte_strides.len() != shape.len() || byte_strides.iter().any(|s| s % size != 0) {
            return Err(bad("expected one multiple of the element size per dimension".into()));
        }
        byte_len(ty, shape)?;
        if !shape.contains(&0) {
            let last =
                shape.iter().zip(byte_strides).try_fold(size, |acc, (&d, &s)| acc.checked_add((d - 1).checked_mul(s)?));
            match last {
                Some(end) if end <= data.len() => {}
                _ => return Err(bad(format!("elements lie beyond the {} bytes given", data.len()))),
            }
        }
        Ok(TensorRef { ty, shape, data, byte_strides: Some(byte_strides) })
    }

    /// The elements as dense row-major bytes: borrowed when the view is dense,
    /// else gathered into a copy.
    pub fn dense_bytes(&self) -> std::borrow::Cow<'a, [u8]> {
        let Some(strides) = self.byte_strides else {
            return std::borrow::Cow::Borrowed(self.data);
        };
        std::borrow::Cow::Owned(xlac_core::view::gather(self.ty.size_bytes(), self.shape, self.data, strides))
    }
}

/// Every element of `data` (little-endian `ty` values) as f64.
fn values_f64(ty: DType, data: &[u8]) -> Vec<f64> {
    fn all<T: Element>(data: &[u8]) -> Vec<f64> {
        data.chunks_exact(T::TYPE.size_bytes()).map(|c| T::read_le(c).to_f64()).collect()
    }
    match ty {
        DType::F32 => all::<f32>(data),
        DType::F64 => all::<f64>(data),
        DType::F16 => all::<half::f16>(data),
        DType::BF16 => all::<half::bf16>(data),
        d @ (DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ) => {
            let f = d.float8().expect("an 8-bit float");
            data.iter().map(|&b| f.decode(b)).collect()
        }
        DType::I8 => all::<i8>(data),
        DType::I16 => all::<i16>(data),
        DType::I32 => all::<i32>(data),
        DType::I64 => all::<i64>(data),
        DType::U8 => all::<u8>(data),
        DType::U16 => all::<u16>(data),
        DType::U32 => all::<u32>(data),
        DType::U64 => all::<u64>(data),
        DType::Bool => all::<bool>(data),
    }
}

/// The byte length of a dense `ty` tensor of `shape`, or an error on overflow.
pub fn byte_len(ty: DType, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(ty.size_bytes(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Tensor(format!("{ty}{shape:?} has more bytes than this machine can address")))
}

/// An owned dense tensor on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    ty: DType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl HostTensor {
    /// A tensor from raw little-endian bytes, checked against `ty` and `shape`.
    pub fn new(ty: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<Self> {
        TensorRef::new(ty, &shape, &data)?;
        Ok(HostTensor { ty, shape, data })
    }

    /// Copies an ndarray (any layout) into a row-major host tensor.
    pub fn from_array<T: Element, S: Data<Elem = T>, D: Dimension>(a: &ArrayBase<S, D>) -> Self {
        let mut data = Vec::with_capacity(a.len() * T::TYPE.size_bytes());
        for &x in a.iter() {
            x.write_le(&mut data);
        }
        HostTensor { ty: T::TYPE, shape: a.shape().to_vec(), data }
    }

    /// Converts to an ndarray of `T`, which must be this tensor's element type.
    pub fn to_array<T: Element>(&self) -> Result<ArrayD<T>> {
        if T::TYPE != self.ty {
            return Err(Error::Tensor(format!("tensor holds {}, not {}", self.ty, T::TYPE)));
        }
        let n = self.ty.size_bytes();
        let v: Vec<T> = self.data.chunks_exact(n).map(T::read_le).collect();
        ArrayD::from_shape_vec(IxDyn(&self.shape), v).map_err(|e| Error::Tensor(e.to_string()))
    }

    /// Values drawn from a fixed-seed generator: floats uniform in [-1, 1),
    /// integers uniform in [0, 8), bools fair. Same seed, same tensor.
    /// Fails, before allocating, when the host cannot hold it.
    pub fn random(ty: DType, shape: &[usize], seed: u64) -> Result<Self> {
        let len = byte_len(ty, shape)?;
        let n = len / ty.size_bytes();
        let mut data = crate::memory::reserve(&format!("a random {ty}{shape:?} tensor"), len)?;
        let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            // splitmix64
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        for _ in 0..n {
            let r = next();
            let unit = (r >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            let small = (r >> 61) as i64;
            match ty {
                DType::F32 => (unit as f32).write_le(&mut data),
                DType::F64 => unit.write_le(&mut data),
                DType::F16 => half::f16::from_f64(unit).write_le(&mut data),
                DType::BF16 => half::bf16::from_f64(unit).write_le(&mut data),
                d @ (DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ) => {
                    let f = d.float8().expect("an 8-bit float");
                    data.push(f.encode(f.round(unit)))
                }
                DType::I8 => (small as i8).write_le(&mut data),
                DType::I16 => (small as i16).write_le(&mut data),
                DType::I32 => (small as i32).write_le(&mut data),
                DType::I64 => small.write_le(&mut data),
                DType::U8 => (small as u8).write_le(&mut data),
                DType::U16 => (small as u16).write_le(&mut data),
                DType::U32 => (small as u32).write_le(&mut data),
                DType::U64 => (small as u64).write_le(&mut data),
                DType::Bool => (r & 1 == 1).write_le(&mut data),
            }
        }
        Ok(HostTensor { ty, shape: shape.to_vec(), data })
    }

    /// The element type.
    pub fn element_type(&self) -> DType {
        self.ty
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The raw little-endian bytes, row-major.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// A borrowed view.
    pub fn as_ref(&self) -> TensorRef<'_> {
        TensorRef { ty: self.ty, shape: &self.shape, data: &self.data, byte_strides: None }
    }

    /// Every element as f64 (exact for all types but i64 beyond 2^53).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        values_f64(self.ty, &self.data)
    }

    /// A one-line summary: min, max, mean and the first values.
    pub fn summary(&self) -> String {
        let v = self.to_f64_vec();
        if v.is_empty() {
            return "empty".into();
        }
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let nan = v.iter().filter(|x| x.is_nan()).count();
        let head: Vec<String> = v.iter().take(4).map(|x| format!("{x:.6}")).collect();
        let more = if v.len() > 4 { ", …" } else { "" };
        let nan = if nan > 0 { format!(" nan={nan}") } else { String::new() };
        format!("min={min:.6} max={max:.6} mean={mean:.6}{nan} [{}{more}]", head.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn ndarray_round_trip_for_every_type() {
        let a = array![[1.5f32, -2.0], [3.25, 4.0]];
        let t = HostTensor::from_array(&a);
        assert_eq!(t.shape(), &[2, 2]);
        assert_eq!(t.to_array::<f32>().unwrap(), a.into_dyn());
        let b = array![half::bf16::from_f32(1.5), half::bf16::from_f32(-3.0)];
        assert_eq!(HostTensor::from_array(&b).to_array::<half::bf16>().unwrap(), b.into_dyn());
        let c = array![true, false, true];
        assert_eq!(HostTensor::from_array(&c).to_array::<bool>().unwrap(), c.into_dyn());
        assert!(HostTensor::from_array(&array![1i64]).to_array::<i32>().is_err());
    }

    #[test]
    fn random_is_seeded_and_bounded() {
        let a = HostTensor::random(DType::F32, &[64], 7).unwrap();
        assert_eq!(a, HostTensor::random(DType::F32, &[64], 7).unwrap());
        assert_ne!(a, HostTensor::random(DType::F32, &[64], 8).unwrap());
        assert!(a.to_f64_vec().iter().all(|x| (-1.0..1.0).contains(x)));
        let i = HostTensor::random(DType::I32, &[64], 7).unwrap();
        assert!(i.to_f64_vec().iter().all(|x| (0.0..8.0).contains(x)));
    }

    #[test]
    fn strided_views_read_transposed_and_are_checked() {
        let t = HostTensor::from_array(&array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        let (shape, strides) = xlac_core::view::permuted_layout(DType::F32, t.shape(), &[1, 0]).unwrap();
        assert_eq!((shape.as_slice(), strides.as_slice()), (&[3usize, 2][..], &[4usize, 12][..]));
        let view = TensorRef::strided(DType::F32, &shape, t.data(), &strides).unwrap();
        let dense = HostTensor::new(DType::F32, shape.clone(), view.dense_bytes().into_owned()).unwrap();
        assert_eq!(dense.to_array::<f32>().unwrap(), array![[1.0f32, 4.0], [2.0, 5.0], [3.0, 6.0]].into_dyn());
        assert!(matches!(t.as_ref().dense_bytes(), std::borrow::Cow::Borrowed(_)));
        let e = TensorRef::strided(DType::F32, &[3, 2], t.data(), &[4, 16]).unwrap_err();
        assert!(e.to_string().contains("beyond the 24 bytes"), "{e}");
        let e = TensorRef::strided(DType::F32, &[3, 2], t.data(), &[4]).unwrap_err();
        assert!(e.to_string().contains("one multiple of the element size"), "{e}");
        let e = TensorRef::strided(DType::F32, &[3, 2], t.data(), &[4, 6]).unwrap_err();
        assert!(e.to_string().contains("one multiple of the element size"), "{e}");
    }

    #[test]
    fn new_checks_the_byte_length() {
        let e = HostTensor::new(DType::F32, vec![2, 2], vec![0; 15]).unwrap_err();
        assert!(e.to_string().contains("needs 16 bytes"), "{e}");
    }
}
