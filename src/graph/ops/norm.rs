//! Normalization layers at inference (BatchNormalization, LayerNormalization, RMSNormalization,
//! Normalization), PReLU, and softmax / log_softmax over any contiguous axes. Axes here index
//! the value's shape without the batch axis (Keras's axis 1 is axis 0 here).

use super::ShapeResult;
use crate::graph::params::{ParamId, ParamStore};

/// Where the values one reduction (or one channel) reads lie in a row-major item: `outer`
/// blocks, each of `reduced` values `inner` apart (the reduced axes are contiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisLayout {
    pub outer: usize,
    pub reduced: usize,
    pub inner: usize,
}

/// The layout of `axes` (sorted, distinct, contiguous, each below the rank) in `shape`.
pub fn axis_layout(shape: &[usize], axes: &[usize]) -> ShapeResult<AxisLayout> {
    let (Some(&first), Some(&last)) = (axes.first(), axes.last()) else {
        return Err("needs at least one axis".into());
    };
    if last >= shape.len() {
        return Err(format!(
            "axis {} is out of range for an input of shape {shape:?} (without the batch axis)",
            last + 1
        ));
    }
    if axes.windows(2).any(|w| w[1] != w[0] + 1) {
        return Err(format!(
            "axes {:?} are not contiguous (only neighbouring axes are supported)",
            axes.iter().map(|a| a + 1).collect::<Vec<_>>()
        ));
    }
    Ok(AxisLayout {
        outer: shape[..first].iter().product(),
        reduced: shape[first..=last].iter().product(),
        inner: shape[last + 1..].iter().product(),
    })
}

/// `shape` with every axis outside `axes` set to 1: the broadcast form of a per-axes weight.
pub fn keep_axes(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .map(|(k, &d)| if axes.contains(&k) { d } else { 1 })
        .collect()
}

/// Row-major strides of a weight in broadcast form (same rank as `shape`, each dimension 1 or
/// the input's), with 0 on its broadcast (size-1) dimensions: weight index = sum of
/// coordinate * stride.
pub fn broadcast_strides(shape: &[usize], weight: &[usize]) -> ShapeResult<Vec<usize>> {
    if weight.len() != shape.len() || weight.iter().zip(shape).any(|(&w, &s)| w != 1 && w != s) {
        return Err(format!(
            "a weight shaped {weight:?} does not broadcast to the input's {shape:?}"
        ));
    }
    let mut strides = vec![0; shape.len()];
    let mut stride = 1;
    for k in (0..shape.len()).rev() {
        if weight[k] != 1 {
            strides[k] = stride;
            stride *= weight[k];
        }
    }
    Ok(strides)
}

fn check_shape(params: &ParamStore, id: ParamId, shape: &[usize]) -> ShapeResult<()> {
    let p = params.param(id);
    if p.value.shape() != shape {
        return Err(format!(
            "weight '{}' has shape {:?}, expected {shape:?}",
            p.name,
            p.value.shape()
        ));
    }
    Ok(())
}

/// BatchNormalization at inference: per channel of `axes`,
/// y = x * inv + (beta - mean * inv) with inv = gamma / sqrt(moving_variance + epsilon)
/// (TensorFlow's `tf.nn.batch_normalization`, term for term).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    /// Sorted and contiguous; Keras 3 has one, Keras 2 allowed a list.
    pub axes: Vec<usize>,
    /// Shaped like the axes' dimensions; absent with `scale=False` / `center=False`.
    pub gamma: Option<ParamId>,
    pub beta: Option<ParamId>,
    pub moving_mean: ParamId,
    pub moving_variance: ParamId,
    pub epsilon: f32,
    /// Training's moving average: moving = moving * momentum + batch statistic * (1 - momentum).
    pub momentum: f64,
    /// The layer's own `trainable` flag: Keras runs a frozen BatchNormalization on its moving
    /// statistics in training too (`training and self.trainable`).
    pub trainable: bool,
    /// Batch renormalization's training statistics (moving_stddev, renorm_mean,
    /// renorm_stddev): stored, never read at inference.
    pub unused: Vec<ParamId>,
}

impl BatchNorm {
    pub fn channel_shape(&self, input: &[usize]) -> Vec<usize> {
        self.axes.iter().map(|&a| input[a]).collect()
    }

    /// Per-channel (scale, shift) with y = x * scale + shift: inv = gamma / sqrt(var + eps),
    /// shift = beta - mean * inv, in `tf.nn.batch_normalization`'s order. Both backends use it.
    pub fn affine(&self, params: &ParamStore) -> (Vec<f32>, Vec<f32>) {
        let mean = params.slice(self.moving_mean);
        let var = params.slice(self.moving_variance);
        self.affine_with(params, mean, var)
    }

    /// `affine` with the given statistics (a training batch's, or the moving ones).
    pub fn affine_with(
        &self,
        params: &ParamStore,
        mean: &[f32],
        var: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let gamma = self.gamma.map(|g| params.slice(g));
        let beta = self.beta.map(|g| params.slice(g));
        let mut scale = Vec::with_capacity(mean.len());
        let mut shift = Vec::with_capacity(mean.len());
        for c in 0..mean.len() {
            let mut inv = 1.0 / (var[c] + self.epsilon).sqrt();
            if let Some(g) = gamma {
                inv *= g[c];
            }
            shift.push(match beta {
                Some(bt) => bt[c] - mean[c] * inv,
                None => -mean[c] * inv,
            });
            scale.push(inv);
        }
        (scale, shift)
    }

    pub fn check(&self, input: &[usize], params: &ParamStore) -> ShapeResult<AxisLayout> {
        let layout = axis_layout(input, &self.axes)?;
        let shape = self.channel_shape(input);
        for id in [self.gamma, self.beta].into_iter().flatten() {
            check_shape(params, id, &shape)?;
        }
        check_shape(params, self.moving_mean, &shape)?;
        check_shape(params, self.moving_variance, &shape)?;
        Ok(layout)
    }
}

/// How LayerNormalization normalizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerNormKind {
    /// (x - mean) / sqrt(var + eps) * gamma + beta.
    Standard,
    /// LayerNormalization(rms_scaling=True), deprecated in Keras 3: x / sqrt(var + eps) * gamma
    /// (the variance about the mean, no mean subtracted, no beta).
    RmsScaling,
    /// RMSNormalization: x / sqrt(mean(x^2) + eps) * scale.
    Rms,
    /// UnitNormalization: x * min(1 / sqrt(sum(x^2)), 1e12) (`keras.ops.normalize`, order 2).
    Unit,
}

/// UnitNormalization's bound on 1 / norm (Keras passes epsilon 1e-12).
pub const UNIT_NORM_MAX_INV: f32 = 1e12;

/// LayerNormalization and RMSNormalization: statistics over `axes` of each item.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Sorted and contiguous.
    pub axes: Vec<usize>,
    /// Shaped like the axes' dimensions (RMSNormalization's `scale` is its gamma).
    pub gamma: Option<ParamId>,
    pub beta: Option<ParamId>,
    pub epsilon: f32,
    pub kind: LayerNormKind,
}

impl LayerNorm {
    pub fn check(&self, input: &[usize], params: &ParamStore) -> ShapeResult<AxisLayout> {
        let layout = axis_layout(input, &self.axes)?;
        let shape: Vec<usize> = self.axes.iter().map(|&a| input[a]).collect();
        for id in [self.gamma, self.beta].into_iter().flatten() {
            check_shape(params, id, &shape)?;
        }
        Ok(layout)
    }
}

/// GroupNormalization over the last (channel) axis: the channels split into `groups` runs of
/// channels / groups; each run's statistics cover every position of the item.
/// y = x * inv + (beta - mean * inv), inv = gamma / sqrt(var + eps), per channel.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    pub groups: usize,
    /// Shaped (channels,).
    pub gamma: Option<ParamId>,
    pub beta: Option<ParamId>,
    pub epsilon: f32,
}

impl GroupNorm {
    pub fn check(&self, input: &[usize], params: &ParamStore) -> ShapeResult<()> {
        let Some(&c) = input.last() else {
            return Err("needs a channel axis".into());
        };
        if self.groups == 0 || !c.is_multiple_of(self.groups) {
            return Err(format!(
                "{c} channels do not split into {} groups",
                self.groups
            ));
        }
        for id in [self.gamma, self.beta].into_iter().flatten() {
            check_shape(params, id, &[c])?;
        }
        Ok(())
    }
}

/// Keras's Normalization layer: y = (x - mean) / max(sqrt(variance), 1e-7), or with `invert`
/// y = mean + x * max(sqrt(variance), 1e-7). `mean` and `variance` are in broadcast form.
#[derive(Debug, Clone)]
pub struct Normalization {
    pub mean: ParamId,
    pub variance: ParamId,
    /// The adapted sample count Keras stores alongside (not read).
    pub count: Option<ParamId>,
    pub invert: bool,
}

/// Keras's `backend.epsilon()`, the floor of Normalization's standard deviation.
pub const NORMALIZATION_EPSILON: f32 = 1e-7;

impl Normalization {
    /// The standard deviation Keras divides by (or, inverted, multiplies with).
    pub fn deviation(variance: f32) -> f32 {
        variance.sqrt().max(NORMALIZATION_EPSILON)
    }

    /// (scale, shift) in broadcast form with y = x * scale + shift: 1/sd and -mean/sd, or sd and
    /// mean with `invert`. The GPU's form; the CPU divides as Keras does.
    pub fn affine(&self, params: &ParamStore) -> (Vec<f32>, Vec<f32>) {
        let mean = params.slice(self.mean);
        let var = params.slice(self.variance);
        mean.iter()
            .zip(var)
            .map(|(&m, &v)| {
                let sd = Self::deviation(v);
                if self.invert {
                    (sd, m)
                } else {
                    (1.0 / sd, -m / sd)
                }
            })
            .unzip()
    }

    pub fn check(&self, input: &[usize], params: &ParamStore) -> ShapeResult<()> {
        let m = params.get(self.mean);
        if params.get(self.variance).shape() != m.shape() {
            return Err("mean and variance differ in shape".into());
        }
        broadcast_strides(input, m.shape()).map(|_| ())
    }
}

/// PReLU: y = max(x, 0) + alpha * min(x, 0), alpha in broadcast form (1 on shared axes).
#[derive(Debug, Clone)]
pub struct PRelu {
    pub alpha: ParamId,
}

/// Softmax (or log_softmax) over contiguous axes jointly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Softmax {
    pub axes: Vec<usize>,
    pub log: bool,
}
