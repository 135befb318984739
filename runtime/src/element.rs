//! Element types of device buffers, and the Rust types that hold them.

use std::fmt;

/// The element type of a buffer: the v1 dtypes, named as in model.json.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElementType {
    F32,
    F64,
    F16,
    BF16,
    I8,
    I32,
    I64,
    U8,
    Bool,
}

impl ElementType {
    /// Every element type.
    pub const ALL: [ElementType; 9] = [
        ElementType::F32,
        ElementType::F64,
        ElementType::F16,
        ElementType::BF16,
        ElementType::I8,
        ElementType::I32,
        ElementType::I64,
        ElementType::U8,
        ElementType::Bool,
    ];

    /// The name used in model.json (`f32`, `bf16`, `bool`, …).
    pub fn name(self) -> &'static str {
        match self {
            ElementType::F32 => "f32",
            ElementType::F64 => "f64",
            ElementType::F16 => "f16",
            ElementType::BF16 => "bf16",
            ElementType::I8 => "i8",
            ElementType::I32 => "i32",
            ElementType::I64 => "i64",
            ElementType::U8 => "u8",
            ElementType::Bool => "bool",
        }
    }

    /// Parses a model.json dtype name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            ElementType::F64 | ElementType::I64 => 8,
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F16 | ElementType::BF16 => 2,
            ElementType::I8 | ElementType::U8 | ElementType::Bool => 1,
        }
    }

    /// The `PJRT_Buffer_Type` value.
    pub(crate) fn to_pjrt(self) -> i32 {
        match self {
            ElementType::Bool => 1,
            ElementType::I8 => 2,
            ElementType::I32 => 4,
            ElementType::I64 => 5,
            ElementType::U8 => 6,
            ElementType::F16 => 10,
            ElementType::F32 => 11,
            ElementType::F64 => 12,
            ElementType::BF16 => 13,
        }
    }

    /// The element type of a `PJRT_Buffer_Type` value, if xlac supports it.
    pub(crate) fn from_pjrt(v: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.to_pjrt() == v)
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that holds one element of an [`ElementType`], bit for bit.
pub trait Element: Copy + Default + 'static {
    /// The element type this Rust type holds.
    const TYPE: ElementType;
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
            const TYPE: ElementType = ElementType::$e;
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
element!(i32, I32, 4);
element!(u8, U8, 1);

impl Element for i64 {
    const TYPE: ElementType = ElementType::I64;
    fn read_le(bytes: &[u8]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(bytes);
        i64::from_le_bytes(a)
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Element for bool {
    const TYPE: ElementType = ElementType::Bool;
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
