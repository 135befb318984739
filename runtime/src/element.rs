//! The Rust types that hold one element of a [`DType`], bit for bit.

use crate::DType;

/// A Rust type that holds one element of an [`DType`], bit for bit.
pub trait Element: Copy + Default + 'static {
    /// The element type this Rust type holds.
    const TYPE: DType;
    /// Reads one element from little-endian bytes (`bytes.len() == size_bytes`).
    fn read_le(bytes: &[u8]) -> Self;
    /// Appends the element's little-endian bytes.
    fn write_le(self, out: &mut Vec<u8>);
    /// The value as f64 (for summaries and comparisons).
    fn to_f64(self) -> f64;
}

macro_rules! element {
    ($t:ty, $e:ident, $n:literal) => {
        impl Element for $t {
            const TYPE: DType = DType::$e;
            fn read_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; $n];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn to_f64(self) -> f64 {
                f64::from(self)
            }
        }
    };
}
element!(f32, F32, 4);
element!(f64, F64, 8);
element!(half::f16, F16, 2);
element!(half::bf16, BF16, 2);
element!(i8, I8, 1);
element!(i16, I16, 2);
element!(i32, I32, 4);
element!(u8, U8, 1);
element!(u16, U16, 2);
element!(u32, U32, 4);

/// The 64-bit integers, which f64 holds exactly only up to 2^53.
macro_rules! wide_element {
    ($t:ty, $e:ident) => {
        impl Element for $t {
            const TYPE: DType = DType::$e;
            fn read_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; 8];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    };
}
wide_element!(i64, I64);
wide_element!(u64, U64);

impl Element for bool {
    const TYPE: DType = DType::Bool;
    fn read_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
    fn to_f64(self) -> f64 {
        self as u8 as f64
    }
}
