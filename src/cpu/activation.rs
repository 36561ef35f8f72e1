//! Activation functions with Keras 3's exact formulas. The GPU shaders mirror these.

use crate::graph::Activation;
use rayon::prelude::*;

/// Keras 3's selu constants.
pub const SELU_ALPHA: f32 = 1.673_263_2;
pub const SELU_SCALE: f32 = 1.050_701;

/// e^x for x <= 0 (larger x is taken as 0), within a few ulp, without libm: branch-free so that
/// loops over gates vectorize. Below -87 it returns e^-87 (~1.6e-38) instead of a denormal.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact (Cody and Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r on |r| <= ln2/2: Taylor to degree 7 (truncation below 1e-8 relative).
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2^n from the integer in `shifted`'s low bits: n is in -126..=0, a normal exponent.
    let n_int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    p * scale
}

/// Logistic sigmoid, stable on both tails (only e^-|x| is ever formed).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

/// tanh within 4 ulp (tested against f64): an odd Taylor polynomial near 0 (where 1 - e^-2|x| would cancel), and
/// (1 - e^-2|x|) / (1 + e^-2|x|) elsewhere.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let e = exp_nonpositive(-2.0 * a);
    let far = (1.0 - e) / (1.0 + e);
    let a2 = a * a;
    let near = 62.0 / 2835.0;
    let near = near * a2 - 17.0 / 315.0;
    let near = near * a2 + 2.0 / 15.0;
    let near = near * a2 - 1.0 / 3.0;
    let near = (near * a2) * a + a;
    let t = if a < 0.25 { near } else { far };
    t.copysign(x)
}

/// erf within 1 ulp away from its zero and 1 ulp absolute near it (FreeBSD's s_erff.c, as musl
/// and the `libm` crate have it): a rational approximation on |x| < 0.84375, erf(1) + a
/// rational one up to 1.25, 1 - erfc with erfc = exp(-x^2 - 0.5625 + R/S) / x up to 6, and
/// +-1 beyond. shaders/common.wgsl has the same function.
pub fn erf(x: f32) -> f32 {
    const ERX: f32 = 8.450_629e-1;
    const EFX8: f32 = 1.027_033_3;
    const PP: [f32; 5] = [
        1.283_791_7e-1,
        -3.250_421e-1,
        -2.848_175e-2,
        -5.770_270_2e-3,
        -2.376_301_7e-5,
    ];
    const QQ: [f32; 5] = [
        3.979_172e-1,
        6.502_225e-2,
        5.081_306e-3,
        1.324_947_4e-4,
        -3.960_228_2e-6,
    ];
    const PA: [f32; 7] = [
        -2.362_118_6e-3,
        4.148_561e-1,
        -3.722_078_8e-1,
        3.183_466_2e-1,
        -1.108_947e-1,
        3.547_830_5e-2,
        -2.166_375_5e-3,
    ];
    const QA: [f32; 6] = [
        1.064_208_8e-1,
        5.403_979_4e-1,
        7.182_865_6e-2,
        1.261_712_2e-1,
        1.363_708_4e-2,
        1.198_45e-2,
    ];
    const RA: [f32; 8] = [
        -9.864_944e-3,
        -6.938_586e-1,
        -1.055_862_6e1,
        -6.237_533e1,
        -1.623_966_7e2,
        -1.846_050_9e2,
        -8.128_744e1,
        -9.814_329,
    ];
    const SA: [f32; 8] = [
        1.965_127_2e1,
        1.376_577_6e2,
        4.345_659e2,
        6.453_872_7e2,
        4.290_081_5e2,
        1.086_350_1e2,
        6.570_249_6,
        -6.042_441_4e-2,
    ];
    const RB: [f32; 7] = [
        -9.864_943e-3,
        -7.992_832_7e-1,
        -1.775_795_6e1,
        -1.606_363_8e2,
        -6.375_664_7e2,
        -1.025_095_1e3,
        -4.835_192e2,
    ];
    const SB: [f32; 7] = [
        3.033_806e1,
        3.257_925e2,
        1.536_729_6e3,
        3.199_858_2e3,
        2.553_050_3e3,
        4.745_285_4e2,
        -2.244_095_2e1,
    ];
    /// c[0] + s c[1] + s^2 c[2] + ...
    fn poly(s: f32, c: &[f32]) -> f32 {
        c.iter().rev().fold(0.0, |acc, &k| acc * s + k)
    }
    let ix = x.to_bits() & 0x7fff_ffff;
    if ix >= 0x7f80_0000 {
        // NaN stays NaN, +-inf gives +-1.
        return if x.is_nan() { x } else { 1.0f32.copysign(x) };
    }
    if ix < 0x3f58_0000 {
        // |x| < 0.84375
        if ix < 0x3180_0000 {
            // |x| < 2^-28: erf(x) = 2x/sqrt(pi) to within rounding.
            return 0.125 * (8.0 * x + EFX8 * x);
        }
        let z = x * x;
        let r = poly(z, &PP);
        let s = 1.0 + z * poly(z, &QQ);
        return x + x * (r / s);
    }
    let a = x.abs();
    let y = if ix < 0x3fa0_0000 {
        // |x| < 1.25
        let s = a - 1.0;
        let p = poly(s, &PA);
        let q = 1.0 + s * poly(s, &QA);
        ERX + p / q
    } else if ix < 0x40c0_0000 {
        // |x| < 6
        let s = 1.0 / (a * a);
        let (r, big_s) = if ix < 0x4036_db6d {
            (poly(s, &RA), 1.0 + s * poly(s, &SA))
        } else {
            (poly(s, &RB), 1.0 + s * poly(s, &SB))
        };
        // z = a with its low 13 mantissa bits cleared, so -z*z is exact.
        let z = f32::from_bits(a.to_bits() & 0xffff_e000);
        let erfc = (-z * z - 0.5625).exp() * ((z - a) * (z + a) + r / big_s).exp() / a;
        1.0 - erfc
    } else {
        1.0 - f32::from_bits(0x0380_0000)
    };
    y.copysign(x)
}

/// log(1 + e^x) without overflow (TensorFlow's softplus: max(x, 0) + log1p(e^-|x|)).
#[inline]
fn softplus(x: f32) -> f32 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// One element. Softmax and log_softmax are not elementwise: see [`apply_rows`].
#[inline]
pub fn scalar(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Linear | Activation::Softmax | Activation::LogSoftmax => x,
        Activation::Relu {
            negative_slope,
            max_value,
            threshold,
        } => {
            // keras.activations.relu: zero below threshold, clip to [0, max_value], then the
            // negative part with its slope.
            let mut y = if threshold != 0.0 {
                if x > threshold {
                    x
                } else {
                    0.0
                }
            } else {
                x.max(0.0)
            };
            if let Some(m) = max_value {
                y = y.clamp(0.0, m);
            }
            if negative_slope != 0.0 {
                y -= negative_slope * (threshold - x).max(0.0);
            }
            y
        }
        Activation::Sigmoid => sigmoid(x),
        Activation::HardSigmoid => ((x + 3.0).clamp(0.0, 6.0)) / 6.0,
        Activation::HardSigmoidKeras2 => (0.2 * x + 0.5).clamp(0.0, 1.0),
        Activation::Tanh => tanh(x),
        Activation::Elu { alpha } => {
            if x > 0.0 {
                x
            } else {
                alpha * x.exp_m1()
            }
        }
        Activation::Selu => {
            if x > 0.0 {
                SELU_SCALE * x
            } else {
                SELU_SCALE * SELU_ALPHA * x.exp_m1()
            }
        }
        Activation::Silu => x * sigmoid(x),
        Activation::Softplus => softplus(x),
        Activation::Softsign => x / (1.0 + x.abs()),
        Activation::Exponential => x.exp(),
        // TensorFlow's forms, term for term.
        Activation::Gelu { approximate: false } => {
            0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
        }
        Activation::Gelu { approximate: true } => {
            0.5 * x * (1.0 + tanh(0.797_884_6 * (x + 0.044_715 * (x * x * x))))
        }
        Activation::Mish => x * tanh(softplus(x)),
        Activation::Celu { alpha } => x.max(0.0) + alpha * (x.min(0.0) / alpha).exp_m1(),
        Activation::HardSilu => x * (((x + 3.0).clamp(0.0, 6.0)) / 6.0),
        Activation::HardTanh => x.clamp(-1.0, 1.0),
        Activation::HardShrink { threshold } => {
            if x.abs() > threshold {
                x
            } else {
                0.0
            }
        }
        Activation::SoftShrink { threshold } => {
            if x > threshold {
                x - threshold
            } else if x < -threshold {
                x + threshold
            } else {
                0.0
            }
        }
        Activation::TanhShrink => x - tanh(x),
        Activation::SparsePlus => {
            if x <= -1.0 {
                0.0
            } else if x < 1.0 {
                0.25 * (x + 1.0) * (x + 1.0)
            } else {
                x
            }
        }
        Activation::SparseSigmoid => {
            if x <= -1.0 {
                0.0
            } else if x >= 1.0 {
                1.0
            } else {
                0.5 * (x + 1.0)
            }
        }
        Activation::Squareplus { b } => (x + (x * x + b).sqrt()) / 2.0,
        Activation::LogSigmoid => -softplus(-x),
    }
}

/// Numerically stable softmax of one contiguous row, in place.
#[inline(always)]
pub fn softmax_slice(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// log_softmax of one contiguous row, in place: x - max - log(sum(exp(x - max))).
#[inline(always)]
pub fn log_softmax_slice(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    let log_sum = sum.ln();
    for v in row.iter_mut() {
        *v = *v - max - log_sum;
    }
}

/// Applies an activation to contiguous rows of `width` values, in place; softmax runs over each
/// row. The common activations get their own loops so that they vectorize.
pub fn apply_rows(act: Activation, data: &mut [f32], width: usize) {
    // Big arrays in parallel pieces of whole rows; every value is computed the same way on
    // whichever thread runs it.
    let width = width.max(1);
    if data.len() >= 4 * PARALLEL_PIECE && act != Activation::Linear {
        let rows = (PARALLEL_PIECE / width).max(1);
        data.par_chunks_mut(rows * width)
            .for_each(|piece| apply_rows_serial(act, piece, width));
    } else {
        apply_rows_serial(act, data, width);
    }
}

/// Elements per parallel piece of an elementwise pass (forward or backward); arrays of fewer
/// than four pieces stay on the calling thread.
pub(crate) const PARALLEL_PIECE: usize = 1 << 14;

super::simd::multiversion! {
fn apply_rows_serial(act: Activation, data: &mut [f32], width: usize) {
    match act {
        Activation::Linear => {}
        Activation::Softmax => data.chunks_exact_mut(width.max(1)).for_each(softmax_slice),
        Activation::LogSoftmax => data
            .chunks_exact_mut(width.max(1))
            .for_each(log_softmax_slice),
        relu if relu == Activation::RELU => data.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Sigmoid => data.iter_mut().for_each(|v| *v = sigmoid(*v)),
        Activation::Tanh => data.iter_mut().for_each(|v| *v = tanh(*v)),
        other => data.iter_mut().for_each(|v| *v = scalar(other, *v)),
    }
}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Big arrays run in parallel pieces of whole rows: bit for bit the serial pass, softmax's
    /// rows included.
    #[test]
    fn parallel_pieces_equal_the_serial_pass() {
        let width = 10;
        let len = width * (4 * PARALLEL_PIECE / width + 3);
        let data: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % 1000) as f32 / 125.0 - 4.0)
            .collect();
        for act in [
            Activation::RELU,
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::Softmax,
            Activation::Selu,
        ] {
            let mut parallel = data.clone();
            apply_rows(act, &mut parallel, width);
            let mut serial = data.clone();
            apply_rows_serial(act, &mut serial, width);
            assert!(
                parallel
                    .iter()
                    .zip(&serial)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{act:?}"
            );
        }
    }

    /// Points over [-lim, lim]: a dense uniform grid plus a geometric sweep towards zero.
    fn grid(lim: f32) -> Vec<f32> {
        let mut xs: Vec<f32> = (-200_000..=200_000)
            .map(|i| i as f32 * lim / 200_000.0)
            .collect();
        let mut t = 1e-30f32;
        while t < lim {
            xs.extend([t, -t]);
            t *= 1.01;
        }
        xs.extend([0.0, -0.0, f32::MIN_POSITIVE, 0.25, -0.25, 0.249_999_98]);
        xs
    }

    fn assert_close(name: &str, got: f32, want: f64, x: f32) {
        let err = (got as f64 - want).abs();
        // Four ulp of the result, or an absolute 1e-37 for results that underflow.
        let bound = 4.0 * f32::EPSILON as f64 * want.abs() + 1e-37;
        assert!(
            err <= bound,
            "{name}({x:e}) = {got:e}, want {want:e} (err {err:e})"
        );
    }

    #[test]
    fn tanh_is_within_four_ulp_of_f64() {
        for x in grid(20.0) {
            assert_close("tanh", tanh(x), (x as f64).tanh(), x);
        }
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
        assert!(tanh(f32::NAN).is_nan());
        assert!(tanh(-0.0).is_sign_negative());
    }

    /// erf in f64: its Taylor series up to |x| = 4 (terms below 4e6, so about 1e-9 absolute is
    /// left: far below an f32 ulp), 1 beyond (erfc(4) = 1.5e-8 is under an f32 ulp of 1).
    fn erf_f64(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return 1f64.copysign(x);
        }
        let mut term = x;
        let mut sum = x;
        let mut n = 0.0;
        while term.abs() > 1e-300 && n < 400.0 {
            n += 1.0;
            term *= -x * x / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() < 1e-18 * sum.abs() {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_is_within_two_ulp_of_f64() {
        for x in grid(7.0) {
            let want = erf_f64(x as f64);
            let got = erf(x) as f64;
            let bound = 2.0 * f32::EPSILON as f64 * want.abs() + 1e-37;
            assert!(
                (got - want).abs() <= bound,
                "erf({x:e}) = {got:e}, want {want:e}"
            );
        }
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert!(erf(f32::NAN).is_nan());
        assert!(erf(-0.0).is_sign_negative());
    }

    #[test]
    fn sigmoid_is_within_four_ulp_of_f64() {
        for x in grid(80.0) {
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            assert_close("sigmoid", sigmoid(x), want, x);
        }
        assert_eq!(sigmoid(f32::INFINITY), 1.0);
        assert!(sigmoid(f32::NEG_INFINITY) < 1e-37);
        assert!(sigmoid(f32::NAN).is_nan());
    }
}
