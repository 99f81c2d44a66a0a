//! 8-bit floats (FP8 E4M3 and E5M2, the OCP / NVIDIA formats as `ml_dtypes`
//! defines them) and the NF4 code book (QLoRA's 4-bit NormalFloat), as scalar
//! encode/decode routines: the codecs of FP8 and NF4 weight formats.
//!
//! - `E4M3` (`float8_e4m3fn`): bias 7, no infinities, one NaN pattern per sign
//!   (`S.1111.111`), largest finite value 448, subnormals down to 2⁻⁹.
//! - `E5M2` (`float8_e5m2`): IEEE-like, bias 15, infinities (`S.11111.00`), NaNs,
//!   largest finite value 57344, subnormals down to 2⁻¹⁶.
//!
//! Encoding rounds to nearest, ties to even. A magnitude that rounds past the
//! largest finite value becomes infinity (E5M2) or NaN (E4M3, which has no
//! infinity), as `ml_dtypes` converts; [`Fp8::encode_saturating`] clamps instead,
//! which is what a weight quantizer wants.

/// An 8-bit float format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fp8 {
    E4M3,
    E5M2,
}

impl Fp8 {
    pub fn name(self) -> &'static str {
        match self {
            Fp8::E4M3 => "e4m3",
            Fp8::E5M2 => "e5m2",
        }
    }

    /// Mantissa bits.
    const fn man(self) -> u32 {
        match self {
            Fp8::E4M3 => 3,
            Fp8::E5M2 => 2,
        }
    }

    const fn bias(self) -> i32 {
        match self {
            Fp8::E4M3 => 7,
            Fp8::E5M2 => 15,
        }
    }

    /// Largest finite value.
    pub fn max(self) -> f32 {
        match self {
            Fp8::E4M3 => 448.0,
            Fp8::E5M2 => 57344.0,
        }
    }

    /// The value of code `b`.
    pub fn decode(self, b: u8) -> f32 {
        let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
        let m_bits = self.man();
        let e = ((b & 0x7f) >> m_bits) as i32;
        let m = (b & ((1 << m_bits) - 1)) as i32;
        let e_max = (1 << (7 - m_bits)) - 1;
        match self {
            Fp8::E4M3 if e == e_max && m == (1 << m_bits) - 1 => return f32::NAN,
            Fp8::E5M2 if e == e_max => return if m == 0 { sign * f32::INFINITY } else { f32::NAN },
            _ => {}
        }
        let mag = if e == 0 {
            // Subnormal: m · 2^(1 - bias - man).
            m as f32 * pow2(1 - self.bias() - m_bits as i32)
        } else {
            ((1 << m_bits) + m) as f32 * pow2(e - self.bias() - m_bits as i32)
        };
        sign * mag
    }

    /// The code of `x`, rounded to nearest, ties to even (`ml_dtypes` semantics:
    /// overflow gives infinity for E5M2 and NaN for E4M3; NaN gives NaN).
    pub fn encode(self, x: f32) -> u8 {
        let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
        let m_bits = self.man();
        if x.is_nan() {
            return sign | 0x7f; // a NaN code in both formats
        }
        let overflow = match self {
            Fp8::E4M3 => sign | 0x7f,
            Fp8::E5M2 => sign | 0x7c,
        };
        let a = x.abs() as f64;
        if a.is_infinite() {
            return overflow;
        }
        if a == 0.0 {
            return sign;
        }
        let min_exp = 1 - self.bias(); // exponent of the smallest normal
        // The exponent of a (a normal f64: it came from an f32), from its bits.
        let e = (((a.to_bits() >> 52) & 0x7ff) as i32 - 1023).max(min_exp);
        // Units of the last place at exponent e (subnormals share min_exp's ulp).
        let ulp = pow2_f64(e - m_bits as i32);
        let mut q = (a / ulp).round_ties_even() as u32; // exact: a / ulp is a scaled f32
        let mut e = e;
        // Rounding up to the next power of two: one exponent more.
        if q >= 2 << m_bits {
            q = ((a / pow2_f64(e + 1 - m_bits as i32)).round_ties_even()) as u32;
            e += 1;
        }
        let (field, man) = if q < (1 << m_bits) {
            (0, q) // subnormal (only at e == min_exp)
        } else {
            ((e - min_exp + 1) as u32, q - (1 << m_bits))
        };
        let code = (field << m_bits) | man;
        let too_big = match self {
            Fp8::E4M3 => code > 0x7e,
            Fp8::E5M2 => code > 0x7b,
        };
        if too_big {
            return overflow;
        }
        sign | code as u8
    }

    /// [`encode`](Self::encode) with magnitudes beyond the largest finite value
    /// (including infinities) clamped to it; NaN stays NaN.
    pub fn encode_saturating(self, x: f32) -> u8 {
        if x.is_nan() {
            return self.encode(x);
        }
        self.encode(x.clamp(-self.max(), self.max()))
    }
}

fn pow2(e: i32) -> f32 {
    pow2_f64(e) as f32
}

fn pow2_f64(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// QLoRA's NF4 code book: 16 values in [-1, 1], quantiles of a standard normal
/// distribution with an exact zero (bitsandbytes' table).
#[allow(clippy::excessive_precision)] // bitsandbytes' literals, verbatim
pub const NF4_VALUES: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Index of the NF4 value nearest to `x` (ties to the lower index; NaN gives 7, zero).
pub fn nf4_encode(x: f32) -> u8 {
    let mut best = 7u8;
    let mut err = f32::INFINITY;
    for (i, v) in NF4_VALUES.iter().enumerate() {
        let d = (x - v).abs();
        if d < err {
            err = d;
            best = i as u8;
        }
    }
    best
}

pub fn nf4_decode(code: u8) -> f32 {
    NF4_VALUES[(code & 15) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for f in [Fp8::E4M3, Fp8::E5M2] {
            for b in 0..=255u8 {
                let v = f.decode(b);
                if v.is_nan() {
                    assert!(f.decode(f.encode(v)).is_nan());
                } else {
                    assert_eq!(f.encode(v), b, "{f:?} code {b:#04x} value {v}");
                }
            }
        }
    }

    #[test]
    fn format_limits() {
        assert_eq!(Fp8::E4M3.decode(0x7e), 448.0);
        assert!(Fp8::E4M3.decode(0x7f).is_nan() && Fp8::E4M3.decode(0xff).is_nan());
        assert_eq!(Fp8::E4M3.decode(0x01), 2f32.powi(-9));
        assert_eq!(Fp8::E5M2.decode(0x7b), 57344.0);
        assert_eq!(Fp8::E5M2.decode(0x7c), f32::INFINITY);
        assert_eq!(Fp8::E5M2.decode(0xfc), f32::NEG_INFINITY);
        assert_eq!(Fp8::E5M2.decode(0x01), 2f32.powi(-16));
        // Ties to even: 1 + 1/16 lies halfway between 1 and 1.125 (E4M3).
        assert_eq!(Fp8::E4M3.encode(1.0625), 0x38);
        assert_eq!(Fp8::E4M3.encode(1.1875), 0x3a);
        // Saturation for weights; overflow otherwise.
        assert_eq!(Fp8::E4M3.encode_saturating(1e6), 0x7e);
        assert!(Fp8::E4M3.decode(Fp8::E4M3.encode(1e6)).is_nan());
        assert_eq!(Fp8::E5M2.encode(1e6), 0x7c);
        assert_eq!(Fp8::E5M2.encode_saturating(-1e6), 0xfb);
        assert_eq!(Fp8::E4M3.encode(0.0), 0);
        assert_eq!(Fp8::E4M3.encode(-0.0), 0x80);
    }

    #[test]
    fn nf4_nearest() {
        for (i, v) in NF4_VALUES.iter().enumerate() {
            assert_eq!(nf4_encode(*v), i as u8);
            assert_eq!(nf4_decode(i as u8), *v);
        }
        assert_eq!(nf4_encode(0.01), 7);
        assert_eq!(nf4_encode(5.0), 15);
        assert_eq!(nf4_encode(-5.0), 0);
    }
}
