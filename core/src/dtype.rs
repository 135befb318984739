//! Element types of tensors, shared by the IR, the weights and the runtime's
//! buffers, with their limits and rounding.

use std::fmt;
use std::str::FromStr;

/// The element type of a tensor. The set is closed: it is what model.json v1 accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    /// 8-bit floats ([`crate::float8`]): OCP E4M3FN and E5M2, and the FNUZ
    /// variants (no infinity, no −0).
    F8E4M3FN,
    F8E4M3FNUZ,
    F8E5M2,
    F8E5M2FNUZ,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    /// Unsigned 64-bit. Where xlac holds integers in i64 (constants, the
    /// interpreter), a u64 is held as its bits: values from 2^63 up read as
    /// negative i64s there, and the ops that order or convert them read
    /// them back as u64 ([`DType::ordinal`], [`DType::int_to_f64`]).
    U64,
    Bool,
}

impl DType {
    /// Every dtype, in a fixed order (used for error messages and tests).
    pub const ALL: [DType; 17] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::F8E4M3FN,
        DType::F8E4M3FNUZ,
        DType::F8E5M2,
        DType::F8E5M2FNUZ,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::Bool,
    ];

    /// The name used in model.json and the IR text (`f32`, `bf16`, `bool`, …).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F8E4M3FN => "f8e4m3fn",
            DType::F8E4M3FNUZ => "f8e4m3fnuz",
            DType::F8E5M2 => "f8e5m2",
            DType::F8E5M2FNUZ => "f8e5m2fnuz",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::Bool => "bool",
        }
    }

    /// Size of one element in bytes.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ => 1,
        }
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16) || self.float8().is_some()
    }

    /// The format of an 8-bit float type; `None` for the others.
    pub fn float8(self) -> Option<crate::float8::Format> {
        match self {
            DType::F8E4M3FN => Some(crate::float8::E4M3FN),
            DType::F8E4M3FNUZ => Some(crate::float8::E4M3FNUZ),
            DType::F8E5M2 => Some(crate::float8::E5M2),
            DType::F8E5M2FNUZ => Some(crate::float8::E5M2FNUZ),
            _ => None,
        }
    }

    /// True for the signed and unsigned integer types (not bool).
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DType::I8 | DType::I16 | DType::I32 | DType::I64 | DType::U8 | DType::U16 | DType::U32 | DType::U64
        )
    }

    /// True for types with a sign: floats and signed integers.
    pub fn is_signed(self) -> bool {
        self.is_float() || matches!(self, DType::I8 | DType::I16 | DType::I32 | DType::I64)
    }

    /// The dtype called `name` in model.json (`f32`, `bf16`, `bool`, …).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The largest finite value of a float type; `None` for integers and bool.
    pub fn max_finite(self) -> Option<f64> {
        match self {
            DType::F32 => Some(f32::MAX as f64),
            DType::F64 => Some(f64::MAX),
            DType::F16 => Some(half::f16::MAX.to_f64()),
            DType::BF16 => Some(half::bf16::MAX.to_f64()),
            d => d.float8().map(|f| f.max_finite()),
        }
    }

    /// The precision of a float type in bits, the implicit leading bit
    /// included (f32: 24); `None` for integers and bool.
    pub fn significand_bits(self) -> Option<u32> {
        match self {
            DType::F32 => Some(f32::MANTISSA_DIGITS),
            DType::F64 => Some(f64::MANTISSA_DIGITS),
            DType::F16 => Some(11),
            DType::BF16 => Some(8),
            d => d.float8().map(|f| f.significand_bits()),
        }
    }

    /// The smallest and largest value of an integer type or bool (0, 1);
    /// `None` for floats.
    pub fn int_range(self) -> Option<(i128, i128)> {
        match self {
            DType::I8 => Some((i8::MIN as i128, i8::MAX as i128)),
            DType::I16 => Some((i16::MIN as i128, i16::MAX as i128)),
            DType::I32 => Some((i32::MIN as i128, i32::MAX as i128)),
            DType::I64 => Some((i64::MIN as i128, i64::MAX as i128)),
            DType::U8 => Some((0, u8::MAX as i128)),
            DType::U16 => Some((0, u16::MAX as i128)),
            DType::U32 => Some((0, u32::MAX as i128)),
            DType::U64 => Some((0, u64::MAX as i128)),
            DType::Bool => Some((0, 1)),
            _ => None,
        }
    }

    /// The value an integer of this type held in i64 stands for: `x` itself,
    /// or for u64 its bits read unsigned. Ordering these orders the values.
    pub fn ordinal(self, x: i64) -> i128 {
        if self == DType::U64 {
            x as u64 as i128
        } else {
            x as i128
        }
    }

    /// The integer `x` of this type (held in i64) as the nearest f64.
    pub fn int_to_f64(self, x: i64) -> f64 {
        if self == DType::U64 {
            x as u64 as f64
        } else {
            x as f64
        }
    }

    /// `x` truncated toward zero and wrapped to this integer type's width,
    /// held in i64 (beyond i64's range, or u64's for u64, it saturates
    /// first, as Rust's `as`; a NaN gives 0).
    pub fn int_from_f64(self, x: f64) -> i64 {
        if self == DType::U64 {
            x as u64 as i64
        } else {
            self.wrap_i64(x as i64)
        }
    }

    /// `x` rounded to the nearest value of a float type (ties to even; too
    /// large rounds to infinity); `x` itself for f64 and non-float types.
    pub fn round_f64(self, x: f64) -> f64 {
        match self {
            DType::F32 => x as f32 as f64,
            DType::F16 => half::f16::from_f64(x).to_f64(),
            DType::BF16 => half::bf16::from_f64(x).to_f64(),
            d => d.float8().map_or(x, |f| f.round(x)),
        }
    }

    /// `x` wrapped to the width of an integer type (two's complement); `x`
    /// itself for i64 and other types.
    pub fn wrap_i64(self, x: i64) -> i64 {
        match self {
            DType::I8 => x as i8 as i64,
            DType::I16 => x as i16 as i64,
            DType::I32 => x as i32 as i64,
            DType::U8 => x as u8 as i64,
            DType::U16 => x as u16 as i64,
            DType::U32 => x as u32 as i64,
            _ => x,
        }
    }

    /// The safetensors name of the type (`F32`, `BF16`, `BOOL`, …).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            // safetensors names E4M3FN and E5M2; the FNUZ names are xlac's.
            DType::F8E4M3FN => "F8_E4M3",
            DType::F8E4M3FNUZ => "F8_E4M3FNUZ",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E5M2FNUZ => "F8_E5M2FNUZ",
            DType::I8 => "I8",
            DType::I16 => "I16",
            DType::I32 => "I32",
            DType::I64 => "I64",
            DType::U8 => "U8",
            DType::U16 => "U16",
            DType::U32 => "U32",
            DType::U64 => "U64",
            DType::Bool => "BOOL",
        }
    }

    /// The type of a safetensors dtype name, or the name back when xlac does not support it.
    pub fn from_safetensors(name: &str) -> Result<DType, String> {
        DType::ALL.into_iter().find(|d| d.safetensors_name() == name).ok_or_else(|| name.to_string())
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::from_name(s).ok_or_else(|| {
            let names: Vec<_> = DType::ALL.iter().map(|d| d.name()).collect();
            format!("unknown dtype `{s}` (expected one of {})", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        assert!("float32".parse::<DType>().unwrap_err().contains("bf16"));
        for d in DType::ALL {
            assert_eq!(DType::from_safetensors(d.safetensors_name()), Ok(d));
        }
        assert_eq!(DType::from_safetensors("F8_E4M3"), Ok(DType::F8E4M3FN));
        assert_eq!(DType::from_safetensors("F4"), Err("F4".into()));
    }

    #[test]
    fn limits_and_rounding() {
        assert_eq!(DType::F16.max_finite(), Some(65504.0));
        assert_eq!(DType::BF16.max_finite(), Some(3.3895313892515355e38));
        assert_eq!(DType::U8.int_range(), Some((0, 255)));
        assert_eq!(DType::F32.int_range(), None);
        assert_eq!(DType::BF16.round_f64(1.00390625), 1.0, "ties to even");
        assert_eq!(DType::F16.round_f64(1e6), f64::INFINITY);
        assert_eq!(DType::I8.wrap_i64(200), -56);
        assert_eq!(DType::U16.wrap_i64(-1), 65535);
        assert_eq!(DType::U64.int_range(), Some((0, u64::MAX as i128)));
    }

    #[test]
    fn u64_held_as_bits() {
        let top = u64::MAX as i64;
        assert_eq!(DType::U64.wrap_i64(top), -1, "the bits are kept");
        assert_eq!(DType::U64.ordinal(top), u64::MAX as i128);
        assert!(DType::U64.ordinal(top) > DType::U64.ordinal(1));
        assert_eq!(DType::U64.int_to_f64(top), 18446744073709551615.0);
        assert_eq!(DType::U64.int_from_f64(1e19) as u64, 10_000_000_000_000_000_000);
        assert_eq!(DType::I64.int_to_f64(-3), -3.0);
        assert_eq!(DType::U8.int_from_f64(300.7), 44);
    }
}
