//! Backward of every activation: dx = dy * f'(x), and the row rules of softmax and log_softmax.
//! Where TensorFlow's gradient picks a side at a kink (relu at 0, clips at their bounds), the
//! same side is picked here.

use ndarray::{ArrayD, Zip};
use rayon::prelude::*;

use crate::cpu::activation::{erf, sigmoid, tanh, SELU_ALPHA, SELU_SCALE};
use crate::graph::Activation;

/// dx for `y = act(x)` given dy.
pub(super) fn backward(
    act: Activation,
    x: &ArrayD<f32>,
    y: &ArrayD<f32>,
    dy: ArrayD<f32>,
) -> ArrayD<f32> {
    let mut dx = dy;
    match act {
        Activation::Linear => {}
        Activation::Softmax | Activation::LogSoftmax => {
            let width = y.shape().last().copied().unwrap_or(1).max(1);
            let y = y.as_standard_layout();
            let ys = y.as_slice().expect("standard layout");
            let mut d = dx.as_standard_layout().into_owned();
            let ds = d.as_slice_mut().expect("standard layout");
            for (drow, yrow) in ds.chunks_exact_mut(width).zip(ys.chunks_exact(width)) {
                if act == Activation::Softmax {
                    // dx = y * (dy - <dy, y>)
                    let dot: f32 = drow.iter().zip(yrow).map(|(a, b)| a * b).sum();
                    drow.iter_mut()
                        .zip(yrow)
                        .for_each(|(g, &p)| *g = p * (*g - dot));
                } else {
                    // y = log p: dx = dy - p * sum(dy)
                    let sum: f32 = drow.iter().sum();
                    drow.iter_mut()
                        .zip(yrow)
                        .for_each(|(g, &lp)| *g -= lp.exp() * sum);
                }
            }
            return d;
        }
        _ => {
            if !fast_path(act, &mut dx, x, y) {
                Zip::from(&mut dx)
                    .and(x)
                    .and(y)
                    .for_each(|g, &x, &y| *g *= derivative(act, x, y))
            }
        }
    }
    dx
}

/// The common activations over contiguous slices, with the rule chosen once rather than per
/// element (a per-element `derivative` call does not vectorize). False when the layouts are
/// not all standard or the activation has no fast path. Same sides at the kinks as
/// `derivative`.
fn fast_path(act: Activation, dx: &mut ArrayD<f32>, x: &ArrayD<f32>, y: &ArrayD<f32>) -> bool {
    let (Some(g), Some(xs), Some(ys)) = (dx.as_slice_mut(), x.as_slice(), y.as_slice()) else {
        return false;
    };
    if g.len() != xs.len() || g.len() != ys.len() {
        return false;
    }
    let rule: fn(&mut [f32], &[f32], &[f32]) = match act {
        Activation::RELU => |g, xs, _| {
            g.iter_mut()
                .zip(xs)
                .for_each(|(g, &x)| *g *= if x > 0.0 { 1.0 } else { 0.0 })
        },
        Activation::Sigmoid => {
            |g, _, ys| g.iter_mut().zip(ys).for_each(|(g, &y)| *g *= y * (1.0 - y))
        }
        Activation::Tanh => |g, _, ys| g.iter_mut().zip(ys).for_each(|(g, &y)| *g *= 1.0 - y * y),
        _ => return false,
    };
    // Each element's product is the same on whichever thread computes it.
    if g.len() < 4 * crate::cpu::activation::PARALLEL_PIECE {
        rule(g, xs, ys);
    } else {
        let piece = crate::cpu::activation::PARALLEL_PIECE;
        g.par_chunks_mut(piece)
            .zip(xs.par_chunks(piece))
            .zip(ys.par_chunks(piece))
            .for_each(|((g, xs), ys)| rule(g, xs, ys));
    }
    true
}

/// f'(x) of an elementwise activation, from its input and output.
pub(crate) fn derivative(act: Activation, x: f32, y: f32) -> f32 {
    let step = |c: bool| if c { 1.0 } else { 0.0 };
    match act {
        Activation::Linear | Activation::Softmax | Activation::LogSoftmax => 1.0,
        Activation::Relu {
            negative_slope,
            max_value,
            threshold,
        } => {
            // keras.activations.relu: x * (x > threshold) (or relu / relu6), clipped to
            // [0, max_value], minus slope * relu(threshold - x).
            let mut pos = if threshold != 0.0 {
                x > threshold
            } else {
                x > 0.0
            };
            match max_value {
                Some(m) if m == 6.0 && threshold == 0.0 => pos &= x < 6.0,
                Some(m) => pos &= x <= m,
                None => {}
            }
            let leaky = negative_slope != 0.0 && max_value.is_none() && threshold == 0.0;
            let neg = if leaky {
                x <= 0.0
            } else {
                negative_slope != 0.0 && x < threshold
            };
            step(pos) + if neg { negative_slope } else { 0.0 }
        }
        Activation::Sigmoid => y * (1.0 - y),
        Activation::HardSigmoid => step(x > -3.0 && x < 3.0) / 6.0,
        Activation::HardSigmoidKeras2 => step(x > -2.5 && x < 2.5) * 0.2,
        Activation::Tanh => 1.0 - y * y,
        Activation::Elu { alpha } => {
            if x > 0.0 {
                1.0
            } else {
                alpha * x.exp()
            }
        }
        Activation::Selu => {
            if x > 0.0 {
                SELU_SCALE
            } else {
                SELU_SCALE * SELU_ALPHA * x.exp()
            }
        }
        Activation::Silu => {
            let s = sigmoid(x);
            s * (1.0 + x * (1.0 - s))
        }
        Activation::Softplus => sigmoid(x),
        Activation::Softsign => {
            let d = 1.0 + x.abs();
            1.0 / (d * d)
        }
        Activation::Exponential => y,
        Activation::Gelu { approximate: false } => {
            let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * x * x).exp() * 0.398_942_3;
            cdf + x * pdf
        }
        Activation::Gelu { approximate: true } => {
            const C: f32 = 0.797_884_6;
            let inner = C * (x + 0.044_715 * x * x * x);
            let t = tanh(inner);
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * 0.044_715 * x * x)
        }
        Activation::Mish => {
            let sp = x.max(0.0) + (-x.abs()).exp().ln_1p();
            let t = tanh(sp);
            t + x * sigmoid(x) * (1.0 - t * t)
        }
        Activation::Celu { alpha } => {
            if x > 0.0 {
                1.0
            } else {
                (x / alpha).exp()
            }
        }
        Activation::HardSilu => {
            let hs = (x + 3.0).clamp(0.0, 6.0) / 6.0;
            hs + x * step(x > -3.0 && x < 3.0) / 6.0
        }
        Activation::HardTanh => step((-1.0..=1.0).contains(&x)),
        Activation::HardShrink { threshold } | Activation::SoftShrink { threshold } => {
            step(x.abs() > threshold)
        }
        Activation::TanhShrink => {
            let t = tanh(x);
            t * t
        }
        Activation::SparsePlus => {
            if x <= -1.0 {
                0.0
            } else if x < 1.0 {
                0.5 * (x + 1.0)
            } else {
                1.0
            }
        }
        Activation::SparseSigmoid => step(x > -1.0 && x < 1.0) * 0.5,
        Activation::Squareplus { b } => 0.5 * (1.0 + x / (x * x + b).sqrt()),
        Activation::LogSigmoid => sigmoid(-x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    /// The fast rules, serial and in parallel pieces, give what the per-element derivative
    /// gives, bit for bit.
    #[test]
    fn fast_rules_equal_the_per_element_derivative_at_every_size() {
        for len in [37, 4 * crate::cpu::activation::PARALLEL_PIECE + 5] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 1000) as f32 / 125.0 - 4.0)
                .collect();
            let dy: Vec<f32> = (0..len)
                .map(|i| ((i * 104729) % 997) as f32 / 500.0 - 1.0)
                .collect();
            for act in [Activation::RELU, Activation::Sigmoid, Activation::Tanh] {
                let y: Vec<f32> = x
                    .iter()
                    .map(|&v| crate::cpu::activation::scalar(act, v))
                    .collect();
                let arr = |v: &Vec<f32>| ArrayD::from_shape_vec(IxDyn(&[len]), v.clone()).unwrap();
                let got = backward(act, &arr(&x), &arr(&y), arr(&dy));
                for i in 0..len {
                    let want = dy[i] * derivative(act, x[i], y[i]);
                    assert_eq!(
                        got[[i]].to_bits(),
                        want.to_bits(),
                        "{act:?} at {i} of {len}"
                    );
                }
            }
        }
    }
}
