//! Normalization layers at inference, PReLU and softmax over any axes: the unfused reference
//! the GPU (which may fold BatchNormalization into the layer before it) is tested against.
//! Formulas follow TensorFlow's term order; statistics are summed in f64.

use ndarray::{ArrayD, ArrayViewD, Axis, Zip};
use rayon::prelude::*;

use super::activation::{log_softmax_slice, softmax_slice};
use crate::graph::*;

/// Items of `x` (the batch axis split off) in parallel, each as a contiguous slice.
fn per_item(x: &mut ArrayD<f32>, f: impl Fn(&mut [f32]) + Sync + Send) {
    let item: usize = x.shape()[1..].iter().product();
    let data = x.as_slice_mut().expect("standard layout is contiguous");
    if item == 0 {
        return;
    }
    data.par_chunks_mut(item).for_each(f);
}

pub fn batch_norm(b: &BatchNorm, params: &ParamStore, x: &mut ArrayD<f32>) {
    let layout = axis_layout(&x.shape()[1..], &b.axes).expect("checked by the shape rule");
    let (scale, shift) = b.affine(params);
    per_item(x, |item| {
        if layout.inner == 1 {
            // Channels last: one contiguous row of channels per position.
            for row in item.chunks_exact_mut(layout.reduced) {
                for ((v, &s), &t) in row.iter_mut().zip(&scale).zip(&shift) {
                    *v = *v * s + t;
                }
            }
            return;
        }
        for block in item.chunks_exact_mut(layout.reduced * layout.inner) {
            for (c, run) in block.chunks_exact_mut(layout.inner).enumerate() {
                let (s, t) = (scale[c], shift[c]);
                run.iter_mut().for_each(|v| *v = *v * s + t);
            }
        }
    });
}

/// One value of LayerNormalization / RMSNormalization given its group's mean and
/// inv = 1 / sqrt(statistic + eps), with Keras's term order.
#[inline]
fn layer_norm_value(
    kind: LayerNormKind,
    v: f32,
    mean: f32,
    inv: f32,
    g: Option<f32>,
    b: Option<f32>,
) -> f32 {
    match kind {
        LayerNormKind::Standard => {
            // Keras: inv = rsqrt(var + eps) * gamma; x * inv + (beta - mean * inv).
            let k = g.map_or(inv, |g| inv * g);
            let res = -mean * k;
            v * k + b.map_or(res, |b| res + b)
        }
        LayerNormKind::RmsScaling | LayerNormKind::Rms | LayerNormKind::Unit => {
            let y = v * inv;
            g.map_or(y, |g| y * g)
        }
    }
}

/// (mean, 1 / sqrt(statistic + eps)) of one contiguous group: the variance about the mean, or
/// for RMSNormalization the mean square (mean is then 0, unused).
fn layer_norm_stats(kind: LayerNormKind, epsilon: f32, row: &[f32]) -> (f32, f32) {
    let n = row.len() as f64;
    if kind == LayerNormKind::Unit {
        let sq: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        return (0.0, (1.0 / (sq as f32).sqrt()).min(UNIT_NORM_MAX_INV));
    }
    if kind == LayerNormKind::Rms {
        let sq: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        return (0.0, 1.0 / ((sq / n) as f32 + epsilon).sqrt());
    }
    let mean = (row.iter().map(|&v| f64::from(v)).sum::<f64>() / n) as f32;
    let var: f64 = row
        .iter()
        .map(|&v| {
            let d = f64::from(v - mean);
            d * d
        })
        .sum();
    (mean, 1.0 / ((var / n) as f32 + epsilon).sqrt())
}

pub fn layer_norm(l: &LayerNorm, params: &ParamStore, x: &mut ArrayD<f32>) {
    let AxisLayout { reduced, inner, .. } =
        axis_layout(&x.shape()[1..], &l.axes).expect("checked by the shape rule");
    let gamma = l.gamma.map(|g| params.slice(g));
    let beta = l.beta.map(|g| params.slice(g));
    let weights = |r: usize| (gamma.map(|g| g[r]), beta.map(|b| b[r]));
    per_item(x, |item| {
        if inner == 1 {
            for row in item.chunks_exact_mut(reduced) {
                let (mean, inv) = layer_norm_stats(l.kind, l.epsilon, row);
                for (r, v) in row.iter_mut().enumerate() {
                    let (g, b) = weights(r);
                    *v = layer_norm_value(l.kind, *v, mean, inv, g, b);
                }
            }
            return;
        }
        // Groups `inner` apart: gather each into a row, normalize, scatter back.
        let mut row = vec![0f32; reduced];
        for block in item.chunks_exact_mut(reduced * inner) {
            for i in 0..inner {
                for (r, v) in row.iter_mut().enumerate() {
                    *v = block[r * inner + i];
                }
                let (mean, inv) = layer_norm_stats(l.kind, l.epsilon, &row);
                for (r, &v) in row.iter().enumerate() {
                    let (g, b) = weights(r);
                    block[r * inner + i] = layer_norm_value(l.kind, v, mean, inv, g, b);
                }
            }
        }
    });
}

pub fn group_norm(gn: &GroupNorm, params: &ParamStore, x: &mut ArrayD<f32>) {
    let channels = x.shape().last().copied().unwrap_or(1).max(1);
    let run = channels / gn.groups.max(1);
    let gamma = gn.gamma.map(|g| params.slice(g));
    let beta = gn.beta.map(|g| params.slice(g));
    per_item(x, |item| {
        // Group g: channels g*run..(g+1)*run at every position, gathered into one row.
        let mut row = Vec::with_capacity(item.len() / gn.groups.max(1));
        for g in 0..gn.groups {
            row.clear();
            for pixel in item.chunks_exact(channels) {
                row.extend_from_slice(&pixel[g * run..(g + 1) * run]);
            }
            let (mean, inv) = layer_norm_stats(LayerNormKind::Standard, gn.epsilon, &row);
            for pixel in item.chunks_exact_mut(channels) {
                for (j, v) in pixel[g * run..(g + 1) * run].iter_mut().enumerate() {
                    let c = g * run + j;
                    let (ga, be) = (gamma.map(|w| w[c]), beta.map(|w| w[c]));
                    *v = layer_norm_value(LayerNormKind::Standard, *v, mean, inv, ga, be);
                }
            }
        }
    });
}

/// `w` (broadcast form over one item) with a batch axis of 1, to broadcast over a batch.
fn with_batch_axis(w: ArrayViewD<'_, f32>) -> ArrayViewD<'_, f32> {
    w.insert_axis(Axis(0))
}

pub fn normalization(n: &Normalization, params: &ParamStore, x: &mut ArrayD<f32>) {
    let mean = params.get(n.mean);
    let sd = params.get(n.variance).mapv(Normalization::deviation);
    let mean_b = with_batch_axis(mean);
    let sd_b = with_batch_axis(sd.view());
    let z = Zip::from(&mut *x)
        .and_broadcast(&mean_b)
        .and_broadcast(&sd_b);
    if n.invert {
        z.par_for_each(|v, &m, &s| *v = m + *v * s);
    } else {
        z.par_for_each(|v, &m, &s| *v = (*v - m) / s);
    }
}

pub fn prelu(p: &PRelu, params: &ParamStore, x: &mut ArrayD<f32>) {
    let alpha = params.get(p.alpha);
    let alpha_b = with_batch_axis(alpha);
    // Keras: relu(x) - alpha * relu(-x).
    Zip::from(&mut *x)
        .and_broadcast(&alpha_b)
        .par_for_each(|v, &a| *v = v.max(0.0) + -a * (-*v).max(0.0));
}

pub fn softmax(s: &Softmax, x: &mut ArrayD<f32>) {
    let AxisLayout { reduced, inner, .. } =
        axis_layout(&x.shape()[1..], &s.axes).expect("checked by the shape rule");
    let row_fn: fn(&mut [f32]) = if s.log {
        log_softmax_slice
    } else {
        softmax_slice
    };
    per_item(x, |item| {
        if inner == 1 {
            item.chunks_exact_mut(reduced).for_each(row_fn);
            return;
        }
        let mut row = vec![0f32; reduced];
        for block in item.chunks_exact_mut(reduced * inner) {
            for i in 0..inner {
                for (r, v) in row.iter_mut().enumerate() {
                    *v = block[r * inner + i];
                }
                row_fn(&mut row);
                for (r, v) in row.iter().enumerate() {
                    block[r * inner + i] = *v;
                }
            }
        }
    });
}
