//! The 8-bit float formats (OCP's E4M3FN and E5M2, and the FNUZ variants of
//! Graphcore and AMD): rounding a value to one, and its byte. The semantics
//! are those of XLA's conversions and of `ml_dtypes` (what ONNX's reference
//! uses): round to nearest, ties to even, subnormals kept; a value beyond
//! the largest finite one becomes infinity in E5M2 and NaN in the others,
//! which have no infinity; the FNUZ formats have no negative zero.

/// One 8-bit float format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// Exponent bits.
    exponent: u32,
    /// Stored significand bits (the leading one implicit).
    mantissa: u32,
    /// The exponent bias.
    bias: i32,
    /// E5M2's IEEE-like infinities and NaNs (all-ones exponent).
    ieee: bool,
    /// No negative zero; 0x80 is the one NaN.
    fnuz: bool,
}

/// OCP E4M3FN: no infinity, NaN is S.1111.111, largest 448.
pub const E4M3FN: Format = Format { exponent: 4, mantissa: 3, bias: 7, ieee: false, fnuz: false };
/// E4M3FNUZ: no infinity, no −0, NaN is 0x80, largest 240.
pub const E4M3FNUZ: Format = Format { exponent: 4, mantissa: 3, bias: 8, ieee: false, fnuz: true };
/// OCP E5M2: IEEE-like with infinities, largest 57344.
pub const E5M2: Format = Format { exponent: 5, mantissa: 2, bias: 15, ieee: true, fnuz: false };
/// E5M2FNUZ: no infinity, no −0, NaN is 0x80, largest 57344.
pub const E5M2FNUZ: Format = Format { exponent: 5, mantissa: 2, bias: 16, ieee: false, fnuz: true };

impl Format {
    /// The exponent of the smallest normal value.
    fn min_exponent(self) -> i32 {
        1 - self.bias
    }

    /// The largest finite value.
    pub fn max_finite(self) -> f64 {
        let top_exponent = (1i32 << self.exponent) - 1 - self.bias;
        // E4M3FN spends S.1111.111 on NaN and E5M2 the whole top exponent.
        let (e, m) = match (self.ieee, self.fnuz) {
            (true, _) => (top_exponent - 1, (1u32 << self.mantissa) - 1),
            (false, false) => (top_exponent, (1u32 << self.mantissa) - 2),
            (false, true) => (top_exponent, (1u32 << self.mantissa) - 1),
        };
        (1.0 + m as f64 / (1u32 << self.mantissa) as f64) * 2f64.powi(e)
    }

    /// The precision in bits, the implicit one included.
    pub fn significand_bits(self) -> u32 {
        self.mantissa + 1
    }

    /// `x` rounded to the nearest value of the format (ties to even).
    pub fn round(self, x: f64) -> f64 {
        if x.is_nan() {
            return f64::NAN;
        }
        if x.is_infinite() {
            return if self.ieee { x } else { f64::NAN };
        }
        let a = x.abs();
        // The spacing of the values around `a`: fixed below the normal range.
        let e = if a == 0.0 { self.min_exponent() } else { (a.log2().floor() as i32).max(self.min_exponent()) };
        let quantum = 2f64.powi(e - self.mantissa as i32);
        let r = (a / quantum).round_ties_even() * quantum;
        if r > self.max_finite() {
            return if self.ieee { f64::INFINITY.copysign(x) } else { f64::NAN };
        }
        if r == 0.0 && self.fnuz {
            return 0.0;
        }
        r.copysign(x)
    }

    /// The byte of `x`, which must already be a value of the format (as
    /// [`Format::round`] gives): its sign, biased exponent and mantissa.
    pub fn encode(self, x: f64) -> u8 {
        let m = self.mantissa;
        if x.is_nan() {
            return if self.fnuz { 0x80 } else { 0x7F };
        }
        let sign = if x.is_sign_negative() && !(self.fnuz && x == 0.0) { 0x80u8 } else { 0 };
        let a = x.abs();
        if a.is_infinite() {
            return sign | (((1u8 << self.exponent) - 1) << m);
        }
        if a < 2f64.powi(self.min_exponent()) {
            // Subnormal (or zero): the mantissa counts the smallest step.
            let steps = a / 2f64.powi(self.min_exponent() - m as i32);
            return sign | steps as u8;
        }
        let e = a.log2().floor() as i32;
        let fraction = (a / 2f64.powi(e) - 1.0) * (1u32 << m) as f64;
        sign | (((e + self.bias) as u8) << m) | fraction as u8
    }

    /// The value of byte `b`.
    pub fn decode(self, b: u8) -> f64 {
        let m = self.mantissa;
        let all_ones = (1u8 << self.exponent) - 1;
        let exp = (b >> m) & all_ones;
        let frac = b & ((1u8 << m) - 1);
        let negative = b & 0x80 != 0;
        if self.fnuz && b == 0x80 {
            return f64::NAN;
        }
        if self.ieee && exp == all_ones {
            return if frac == 0 {
                if negative {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                }
            } else {
                f64::NAN
            };
        }
        if !self.ieee && !self.fnuz && exp == all_ones && frac == (1u8 << m) - 1 {
            return f64::NAN;
        }
        let magnitude = if exp == 0 {
            frac as f64 * 2f64.powi(self.min_exponent() - m as i32)
        } else {
            (1.0 + frac as f64 / (1u32 << m) as f64) * 2f64.powi(exp as i32 - self.bias)
        };
        if negative {
            -magnitude
        } else {
            magnitude
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Format; 4] = [E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ];

    #[test]
    fn largest_values() {
        assert_eq!(E4M3FN.max_finite(), 448.0);
        assert_eq!(E4M3FNUZ.max_finite(), 240.0);
        assert_eq!(E5M2.max_finite(), 57344.0);
        assert_eq!(E5M2FNUZ.max_finite(), 57344.0);
    }

    #[test]
    fn every_byte_decodes_rounds_to_itself_and_encodes_back() {
        for f in ALL {
            for b in 0..=255u8 {
                let v = f.decode(b);
                if v.is_nan() {
                    assert!(f.decode(f.encode(v)).is_nan(), "{f:?} {b:#x}");
                    continue;
                }
                assert_eq!(f.round(v), v, "{f:?} {b:#x} = {v}");
                if !(f.fnuz && v == 0.0) {
                    assert_eq!(f.encode(v), b, "{f:?} {b:#x} = {v}");
                }
            }
        }
    }

    #[test]
    fn rounding_ties_to_even_and_overflow() {
        // 1.0625 lies halfway between 1 and 1.125 in E4M3: ties go to 1.
        assert_eq!(E4M3FN.round(1.0625), 1.0);
        assert_eq!(E4M3FN.round(1.1875), 1.25);
        // Halfway between 448 (1.110 × 2^8) and the next step (the NaN
        // pattern 1.111) ties to the even 448; anything above is NaN.
        assert_eq!(E4M3FN.round(464.0), 448.0);
        assert!(E4M3FN.round(464.5).is_nan());
        assert_eq!(E5M2.round(61439.0), 57344.0);
        assert_eq!(E5M2.round(61440.0), f64::INFINITY);
        assert_eq!(E5M2.round(1e6), f64::INFINITY);
        assert_eq!(E5M2.round(-1e6), f64::NEG_INFINITY);
        assert!(E5M2FNUZ.round(f64::INFINITY).is_nan());
        // The smallest subnormal of E4M3FN is 2^-9; half of it ties to 0.
        assert_eq!(E4M3FN.round(2f64.powi(-10)), 0.0);
        assert_eq!(E4M3FN.round(3.0 * 2f64.powi(-11)), 2f64.powi(-9));
        assert!(E4M3FNUZ.round(-1e-9).is_sign_positive(), "no negative zero");
        assert!(E4M3FN.round(-1e-9).is_sign_negative());
    }
}
