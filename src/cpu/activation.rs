//! Activation functions with Keras 3's exact formulas. The GPU shaders mirror these.

use ndarray::{ArrayViewMut1, ArrayViewMutD, Axis};

use crate::ir::Activation;

/// Keras 3's selu constants.
pub const SELU_ALPHA: f32 = 1.673_263_2;
pub const SELU_SCALE: f32 = 1.050_701;

#[inline]
fn sigmoid(x: f32) -> f32 {
    // Stable on both tails.
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
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
        Activation::Tanh => x.tanh(),
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

/// Numerically stable softmax of one row, in place.
pub fn softmax_row(mut row: ArrayViewMut1<f32>) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    row.mapv_inplace(|v| {
        let e = (v - max).exp();
        sum += e;
        e
    });
    row.mapv_inplace(|v| v / sum);
}

/// Applies an activation in place; softmax runs over the last axis.
pub fn apply(act: Activation, mut x: ArrayViewMutD<f32>) {
    match act {
        Activation::Linear => {}
        Activation::Softmax => {
            let last = Axis(x.ndim() - 1);
            for row in x.lanes_mut(last) {
                softmax_row(row);
            }
        }
        other => x.mapv_inplace(|v| scalar(other, v)),
    }
}
