//! The two 8-bit float formats of safetensors files (`F8_E4M3`, torch's `float8_e4m3fn`, and
//! `F8_E5M2`), decoded and encoded without libtorch: the reader's independent cross-check and the
//! fixtures' writer (`docs/widen.md`, "Model formats").
//!
//! Encoding rounds to nearest, ties to even, and saturates at the largest finite value (where
//! libtorch's own cast gives NaN for e4m3fn and infinity for e5m2); NaN stays NaN.

/// One of the two fp8 formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8 {
    /// 4 exponent bits (bias 7), 3 mantissa bits, no infinities, NaN = `S.1111.111`; max 448.
    E4M3,
    /// 5 exponent bits (bias 15), 2 mantissa bits, IEEE-like infinities and NaNs; max 57344.
    E5M2,
}

impl Fp8 {
    /// The largest finite value.
    pub fn max(self) -> f32 {
        match self {
            Fp8::E4M3 => 448.0,
            Fp8::E5M2 => 57344.0,
        }
    }

    fn bits(self) -> (u32, u32, i32) {
        // (exponent bits, mantissa bits, bias)
        match self {
            Fp8::E4M3 => (4, 3, 7),
            Fp8::E5M2 => (5, 2, 15),
        }
    }

    /// The value of one byte.
    pub fn decode(self, b: u8) -> f32 {
        let (eb, mb, bias) = self.bits();
        let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
        let e = ((b & 0x7f) >> mb) as i32;
        let m = (b & ((1 << mb) - 1)) as i32;
        let emax = (1 << eb) - 1;
        match self {
            Fp8::E4M3 if e == emax && m == (1 << mb) - 1 => return f32::NAN,
            Fp8::E5M2 if e == emax => return if m == 0 { sign * f32::INFINITY } else { f32::NAN },
            _ => {}
        }
        let frac = m as f32 / (1 << mb) as f32;
        let v = if e == 0 { frac * 2f32.powi(1 - bias) } else { (1.0 + frac) * 2f32.powi(e - bias) };
        sign * v
    }

    /// The largest code of a finite non-negative value (codes 0..=this are increasing values).
    fn max_code(self) -> u8 {
        match self {
            Fp8::E4M3 => 0x7e,
            Fp8::E5M2 => 0x7b,
        }
    }

    /// Round to nearest (ties to even), saturating at ±[`max`](Self::max).
    pub fn encode(self, x: f32) -> u8 {
        if x.is_nan() {
            return 0x7f;
        }
        let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
        let a = x.abs();
        let top = self.max_code();
        if a >= self.max() {
            return sign | top;
        }
        // Codes 0..=top hold increasing values: find the last one not above `a`.
        let (mut lo, mut hi) = (0u8, top);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.decode(mid) <= a {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let below = lo;
        let d_below = a - self.decode(below);
        let d_above = self.decode(below + 1) - a;
        let code = if d_below < d_above || (d_below == d_above && below % 2 == 0) { below } else { below + 1 };
        sign | code
    }
}

/// [`Fp8::encode`] for many values: the format's non-negative values decoded once, so each value
/// costs a search of a small table instead of a search that decodes as it goes (a full-size fp8
/// fixture is tens of billions of values).
pub struct Fp8Encoder {
    format: Fp8,
    /// The values of codes 0..=max_code, increasing.
    values: Vec<f32>,
}

impl Fp8Encoder {
    pub fn new(format: Fp8) -> Self {
        Fp8Encoder { format, values: (0..=format.max_code()).map(|c| format.decode(c)).collect() }
    }

    /// The same byte as [`Fp8::encode`].
    pub fn encode(&self, x: f32) -> u8 {
        if x.is_nan() {
            return 0x7f;
        }
        let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
        let a = x.abs();
        let top = self.format.max_code();
        if a >= self.format.max() {
            return sign | top;
        }
        // The last code not above `a` (code 0 is 0.0, never above it).
        let below = self.values.partition_point(|&v| v <= a) - 1;
        let (d_below, d_above) = (a - self.values[below], self.values[below + 1] - a);
        let code = if d_below < d_above || (d_below == d_above && below % 2 == 0) { below } else { below + 1 };
        sign | code as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_encoder_gives_the_same_bytes_as_encode() {
        for f in [Fp8::E4M3, Fp8::E5M2] {
            let t = Fp8Encoder::new(f);
            // Every value fp8 holds, the midpoints between them (ties), and a dense sweep.
            let mut xs: Vec<f32> = (0..=255u8).map(|b| f.decode(b)).filter(|v| v.is_finite()).collect();
            let pos: Vec<f32> = (0..=f.max_code()).map(|c| f.decode(c)).collect();
            xs.extend(pos.windows(2).map(|w| (w[0] + w[1]) / 2.0));
            xs.extend((-200_000..=200_000).map(|i| i as f32 * f.max() / 150_000.0));
            xs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, f32::MIN_POSITIVE, 1e-30]);
            for x in xs {
                for v in [x, -x] {
                    assert_eq!(t.encode(v), f.encode(v), "{f:?} {v}");
                }
            }
        }
    }

    #[test]
    fn known_values_decode_and_encode() {
        assert_eq!(Fp8::E4M3.decode(0x7e), 448.0);
        assert_eq!(Fp8::E4M3.decode(0x01), 2f32.powi(-9));
        assert_eq!(Fp8::E4M3.decode(0x38), 1.0);
        assert!(Fp8::E4M3.decode(0x7f).is_nan());
        assert_eq!(Fp8::E5M2.decode(0x7b), 57344.0);
        assert_eq!(Fp8::E5M2.decode(0x3c), 1.0);
        assert_eq!(Fp8::E5M2.decode(0x7c), f32::INFINITY);
        for f in [Fp8::E4M3, Fp8::E5M2] {
            // Every finite code survives a round trip (both zeros included).
            for b in 0..=255u8 {
                let v = f.decode(b);
                if v.is_finite() {
                    assert_eq!(f.encode(v), b, "{f:?} {b:#x} = {v}");
                }
            }
            assert_eq!(f.encode(1e9), f.max_code());
            assert_eq!(f.encode(-1e9), 0x80 | f.max_code());
        }
        // Ties go to the even code: 1.0625 lies halfway between 1.0 (0x38) and 1.125 (0x39).
        assert_eq!(Fp8::E4M3.encode(1.0625), 0x38);
        assert_eq!(Fp8::E4M3.encode(1.1875), 0x3a);
        assert_eq!(Fp8::E4M3.encode(1.07), 0x39);
    }
}
