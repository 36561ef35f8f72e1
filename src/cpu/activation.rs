//! Activation functions with Keras 3's exact formulas. The GPU shaders mirror these.

use crate::graph::Activation;

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

/// One element. Softmax is not elementwise: see [`apply`].
#[inline]
pub fn scalar(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Linear | Activation::Softmax => x,
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
        Activation::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
        Activation::Softsign => x / (1.0 + x.abs()),
        Activation::Exponential => x.exp(),
    }
}

/// Numerically stable softmax of one contiguous row, in place.
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

/// Applies an activation to contiguous rows of `width` values, in place; softmax runs over each
/// row. The common activations get their own loops so that they vectorize.
pub fn apply_rows(act: Activation, data: &mut [f32], width: usize) {
    match act {
        Activation::Linear => {}
        Activation::Softmax => data.chunks_exact_mut(width.max(1)).for_each(softmax_slice),
        relu if relu == Activation::RELU => data.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Sigmoid => data.iter_mut().for_each(|v| *v = sigmoid(*v)),
        Activation::Tanh => data.iter_mut().for_each(|v| *v = tanh(*v)),
        other => data.iter_mut().for_each(|v| *v = scalar(other, *v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
