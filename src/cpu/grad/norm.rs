//! The normalization family in training: BatchNormalization's training forward (the batch's
//! statistics, masked like Keras's `_moments`, and the moving-average updates) and the backward
//! of every normalization layer (through their statistics), PReLU and softmax over several axes.
//! Statistics and reductions are accumulated in f64; the forward's outputs are f32 as at
//! inference.

use ndarray::{Array2, ArrayD, Axis, IxDyn, Zip};
use rayon::prelude::*;

use super::merge::sum_to_shape;
use super::{as_float, Forward, NodeIo};
use crate::cpu::Tensor;
use crate::error::{Error, Result};
use crate::graph::*;
use crate::train::ParamGrads;

/// The gradients of a weight pair (gamma, beta) summed over one part of the batch.
#[derive(Clone)]
struct WeightSums {
    gamma: Vec<f64>,
    beta: Vec<f64>,
}

impl WeightSums {
    fn zeros(n: usize) -> Self {
        WeightSums {
            gamma: vec![0.0; n],
            beta: vec![0.0; n],
        }
    }

    fn merged(mut self, other: WeightSums) -> Self {
        self.gamma
            .iter_mut()
            .zip(&other.gamma)
            .for_each(|(a, b)| *a += b);
        self.beta
            .iter_mut()
            .zip(&other.beta)
            .for_each(|(a, b)| *a += b);
        self
    }

    /// Adds the sums to the trainable ones of `gamma` and `beta`, in their stored shapes.
    fn add_to(
        self,
        params: &ParamStore,
        gamma: Option<ParamId>,
        beta: Option<ParamId>,
        grads: &mut ParamGrads,
    ) -> Result<()> {
        for (id, sums) in [(gamma, self.gamma), (beta, self.beta)] {
            let Some(id) = id.filter(|&id| params.param(id).trainable) else {
                continue;
            };
            let shape = params.get(id).shape().to_vec();
            let g = ArrayD::from_shape_vec(IxDyn(&shape), sums.iter().map(|&v| v as f32).collect())
                .map_err(|e| Error::Internal(format!("weight gradient shape: {e}")))?;
            grads.add(id, g);
        }
        Ok(())
    }
}

/// Values per item of a batch of `shape`.
fn item_len(shape: &[usize]) -> usize {
    shape[1..].iter().product()
}

fn layout_of(shape: &[usize], axes: &[usize], node: &Node) -> Result<AxisLayout> {
    axis_layout(&shape[1..], axes)
        .map_err(|m| Error::Internal(format!("node '{}': {m}", node.name)))
}

/// Runs `row` on every group of `layout` in every item: the group's values of x and dy gathered
/// into contiguous rows, dx written back from the row `row` fills. Items run in parallel, each
/// with its own `P` (weight-gradient sums), merged at the end.
#[allow(clippy::too_many_arguments)]
fn per_group<P: Send>(
    layout: AxisLayout,
    item: usize,
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    init: impl Fn() -> P + Sync + Send,
    row: impl Fn(&[f32], &[f32], &mut [f32], &mut P) + Sync + Send,
    merge: impl Fn(P, P) -> P + Sync + Send,
) -> P {
    let AxisLayout { reduced, inner, .. } = layout;
    if item == 0 {
        return init();
    }
    dx.par_chunks_mut(item)
        .zip(x.par_chunks(item).zip(dy.par_chunks(item)))
        .fold(&init, |mut acc, (dxi, (xi, dyi))| {
            let (mut xr, mut dyr, mut dxr) = (
                vec![0f32; reduced],
                vec![0f32; reduced],
                vec![0f32; reduced],
            );
            for base in (0..item).step_by(reduced * inner) {
                for i in 0..inner {
                    for r in 0..reduced {
                        xr[r] = xi[base + r * inner + i];
                        dyr[r] = dyi[base + r * inner + i];
                    }
                    row(&xr, &dyr, &mut dxr, &mut acc);
                    for r in 0..reduced {
                        dxi[base + r * inner + i] = dxr[r];
                    }
                }
            }
            acc
        })
        .reduce(&init, &merge)
}

/// Mean and variance (about the mean) of a row, in f64.
fn moments(row: &[f32]) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = row
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var)
}

/// The backward of `(x - mean) * r * gamma + beta` over one group with r = 1/sqrt(var + eps)
/// (the statistics the group's own): dx = r (g - mean(g) - xhat mean(g xhat)), g = dy * gamma.
/// `channel(j)` is the weight index of the group's value j.
fn standardize_back(
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    epsilon: f32,
    gamma: Option<&[f32]>,
    channel: impl Fn(usize) -> usize,
    sums: &mut WeightSums,
) {
    let n = x.len() as f64;
    let (mean, var) = moments(x);
    let r = 1.0 / (var + f64::from(epsilon)).sqrt();
    let g = |j: usize| f64::from(dy[j]) * gamma.map_or(1.0, |w| f64::from(w[channel(j)]));
    let xhat = |j: usize| (f64::from(x[j]) - mean) * r;
    let (mut sg, mut sgx) = (0.0, 0.0);
    for (j, &d) in dy.iter().enumerate() {
        let (gj, xh) = (g(j), xhat(j));
        sg += gj;
        sgx += gj * xh;
        let c = channel(j);
        sums.gamma[c] += f64::from(d) * xh;
        sums.beta[c] += f64::from(d);
    }
    let (mg, mgx) = (sg / n, sgx / n);
    for (j, v) in dx.iter_mut().enumerate() {
        *v = (r * (g(j) - mg - xhat(j) * mgx)) as f32;
    }
}

/// The backward of `x * r * gamma` where r = 1/sqrt(stat + eps) and stat's gradient is
/// `centre`-relative: RMS scaling (the variance about the mean) and RMSNormalization (the mean
/// square, centre 0). dx_j = r g_j - r^3 (x_j - centre) / n * sum(g x).
fn rms_back(
    kind: LayerNormKind,
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    epsilon: f32,
    gamma: Option<&[f32]>,
    sums: &mut WeightSums,
) {
    let n = x.len() as f64;
    let (centre, stat) = match kind {
        LayerNormKind::RmsScaling => moments(x),
        _ => (
            0.0,
            x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n,
        ),
    };
    let r = 1.0 / (stat + f64::from(epsilon)).sqrt();
    let g = |j: usize| f64::from(dy[j]) * gamma.map_or(1.0, |w| f64::from(w[j]));
    let mut sgx = 0.0;
    for (j, (&v, &d)) in x.iter().zip(dy).enumerate() {
        sgx += g(j) * f64::from(v);
        sums.gamma[j] += f64::from(d) * f64::from(v) * r;
    }
    for (j, (out, &v)) in dx.iter_mut().zip(x).enumerate() {
        *out = (r * g(j) - r.powi(3) * (f64::from(v) - centre) / n * sgx) as f32;
    }
}

/// The backward of `x * min(1/sqrt(sum x^2), cap)` (UnitNormalization, Dot's normalize). Where
/// the cap is taken (as TensorFlow's minimum routes it, ties to the first argument) the scale
/// is a constant.
pub(super) fn l2_normalize_back(x: &[f32], g: &[f32], dx: &mut [f32], cap: f32) {
    let ss: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
    // The forward's own choice, in its f32 arithmetic.
    let ss32: f32 = x.iter().map(|v| v * v).sum();
    let raw = 1.0 / ss32.sqrt();
    if raw <= cap {
        let r = 1.0 / ss.sqrt();
        let sgx: f64 = g
            .iter()
            .zip(x)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        for ((out, &gj), &v) in dx.iter_mut().zip(g).zip(x) {
            *out = (r * f64::from(gj) - r.powi(3) * f64::from(v) * sgx) as f32;
        }
    } else {
        for (out, &gj) in dx.iter_mut().zip(g) {
            *out = gj * cap;
        }
    }
}

pub(super) fn layer_norm_backward(
    l: &LayerNorm,
    io: &NodeIo,
    dy: ArrayD<f32>,
    grads: &mut ParamGrads,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    let params = io.params();
    let x = io.input(0)?.as_standard_layout();
    let dy = dy.as_standard_layout();
    let layout = layout_of(x.shape(), &l.axes, io.node)?;
    let gamma = l.gamma.map(|g| params.slice(g));
    let mut dx = ArrayD::<f32>::zeros(x.raw_dim());
    let (xs, dys) = (
        x.as_slice().expect("standard layout"),
        dy.as_slice().expect("standard layout"),
    );
    let dxs = dx.as_slice_mut().expect("standard layout");
    let sums = per_group(
        layout,
        item_len(x.shape()),
        xs,
        dys,
        dxs,
        || WeightSums::zeros(layout.reduced),
        |xr, dyr, dxr, sums| match l.kind {
            LayerNormKind::Standard => {
                standardize_back(xr, dyr, dxr, l.epsilon, gamma, |j| j, sums)
            }
            LayerNormKind::RmsScaling | LayerNormKind::Rms => {
                rms_back(l.kind, xr, dyr, dxr, l.epsilon, gamma, sums)
            }
            LayerNormKind::Unit => {
                let g: Vec<f32> = match gamma {
                    Some(w) => dyr.iter().zip(w).map(|(a, b)| a * b).collect(),
                    None => dyr.to_vec(),
                };
                l2_normalize_back(xr, &g, dxr, UNIT_NORM_MAX_INV);
            }
        },
        WeightSums::merged,
    );
    sums.add_to(params, l.gamma, l.beta, grads)?;
    Ok(vec![io.needs[0].then_some(dx)])
}

pub(super) fn group_norm_backward(
    gn: &GroupNorm,
    io: &NodeIo,
    dy: ArrayD<f32>,
    grads: &mut ParamGrads,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    let params = io.params();
    let x = io.input(0)?.as_standard_layout();
    let dy = dy.as_standard_layout();
    let channels = x.shape().last().copied().unwrap_or(1).max(1);
    let groups = gn.groups.max(1);
    let run = channels / groups;
    let gamma = gn.gamma.map(|g| params.slice(g));
    let item = item_len(x.shape());
    let mut dx = ArrayD::<f32>::zeros(x.raw_dim());
    let (xs, dys) = (
        x.as_slice().expect("standard layout"),
        dy.as_slice().expect("standard layout"),
    );
    let init = || WeightSums::zeros(channels);
    let sums = if item == 0 {
        init()
    } else {
        dx.as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(item)
            .zip(xs.par_chunks(item).zip(dys.par_chunks(item)))
            .fold(init, |mut sums, (dxi, (xi, dyi))| {
                let positions = item / channels;
                let (mut xr, mut dyr, mut dxr) =
                    (Vec::new(), Vec::new(), vec![0f32; item / groups]);
                let mut part = WeightSums::zeros(run);
                for g in 0..groups {
                    let span = g * run..(g + 1) * run;
                    // Group g: channels g*run..(g+1)*run at every position, as one row.
                    xr.clear();
                    dyr.clear();
                    for p in 0..positions {
                        xr.extend_from_slice(&xi[p * channels..][span.clone()]);
                        dyr.extend_from_slice(&dyi[p * channels..][span.clone()]);
                    }
                    part.gamma.fill(0.0);
                    part.beta.fill(0.0);
                    let gamma_g = gamma.map(|w| &w[span.clone()]);
                    standardize_back(
                        &xr,
                        &dyr,
                        &mut dxr,
                        gn.epsilon,
                        gamma_g,
                        |j| j % run,
                        &mut part,
                    );
                    for p in 0..positions {
                        dxi[p * channels..][span.clone()]
                            .copy_from_slice(&dxr[p * run..(p + 1) * run]);
                    }
                    for (j, c) in span.enumerate() {
                        sums.gamma[c] += part.gamma[j];
                        sums.beta[c] += part.beta[j];
                    }
                }
                sums
            })
            .reduce(init, WeightSums::merged)
    };
    sums.add_to(params, gn.gamma, gn.beta, grads)?;
    Ok(vec![io.needs[0].then_some(dx)])
}

/// What BatchNormalization's training forward normalized with.
enum BatchNormSaved {
    /// The batch's statistics per channel (as the f32 values the forward used, widened):
    /// mean, 1 / sqrt(var + eps), and the divisor of both (the count, or with a mask the
    /// mask's weight + Keras's epsilon).
    Batch {
        mean: Vec<f64>,
        rstd: Vec<f64>,
        divisor: Vec<f64>,
    },
    /// A frozen layer (`trainable=False`): the moving statistics, as at inference.
    Moving,
}

/// Where a value of a BatchNormalization input lies: its channel, and its step's mask weight.
struct BatchNormIndex<'a> {
    layout: AxisLayout,
    item: usize,
    /// The step mask (N, T) and the values per step, when a mask reaches the layer.
    mask: Option<(&'a Array2<bool>, usize)>,
}

impl BatchNormIndex<'_> {
    fn channel(&self, j: usize) -> usize {
        (j / self.layout.inner) % self.layout.reduced
    }

    /// The weight of value j of item n: 1, or whether the mask keeps its step.
    fn weight(&self, n: usize, j: usize) -> f64 {
        match self.mask {
            Some((m, per_step)) => f64::from(u8::from(m[[n, j / per_step]])),
            None => 1.0,
        }
    }

    /// Per-channel sums over the batch of `f(n, j, channel)`, items in parallel.
    fn channel_sums<const K: usize>(
        &self,
        batch: usize,
        f: impl Fn(usize, usize, usize) -> [f64; K] + Sync,
    ) -> Vec<[f64; K]> {
        let c = self.layout.reduced;
        (0..batch)
            .into_par_iter()
            .fold(
                || vec![[0.0; K]; c],
                |mut acc, n| {
                    for j in 0..self.item {
                        let ch = self.channel(j);
                        let v = f(n, j, ch);
                        for k in 0..K {
                            acc[ch][k] += v[k];
                        }
                    }
                    acc
                },
            )
            .reduce(
                || vec![[0.0; K]; c],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(&b) {
                        for k in 0..K {
                            x[k] += y[k];
                        }
                    }
                    a
                },
            )
    }
}

fn batch_norm_index<'a>(
    b: &BatchNorm,
    shape: &[usize],
    mask: Option<&'a Array2<bool>>,
    node: &Node,
) -> Result<BatchNormIndex<'a>> {
    let layout = layout_of(shape, &b.axes, node)?;
    let item = item_len(shape);
    let mask = match mask {
        None => None,
        // Keras broadcasts the mask with one axis added at the end: it needs (N, T, C) input.
        Some(m) if shape.len() == 3 && m.dim() == (shape[0], shape[1]) => Some((m, shape[2])),
        Some(m) => {
            return Err(Error::Train(format!(
                "layer '{}' ({}): a mask of shape {:?} reaches an input of shape {:?}; Keras's \
                 BatchNormalization needs the mask to have one dimension less than its input",
                node.name,
                node.class,
                m.shape(),
                shape
            )))
        }
    };
    Ok(BatchNormIndex { layout, item, mask })
}

/// BatchNormalization in training: normalized with the batch's mean and (biased) variance over
/// every axis but the channel axes (`tf.nn.moments`, or Keras's masked moments), in
/// `tf.nn.batch_normalization`'s term order; the moving statistics move towards them. A frozen
/// layer runs as at inference.
pub(super) fn batch_norm_forward(
    b: &BatchNorm,
    graph: &Graph,
    node: &Node,
    inputs: &[Tensor],
    mask: Option<&Array2<bool>>,
) -> Result<Forward> {
    if !b.trainable {
        let outputs = crate::cpu::run_node(graph, node, inputs.to_vec(), mask)?;
        return Ok(Forward {
            outputs,
            saved: Some(Box::new(BatchNormSaved::Moving)),
            state: Vec::new(),
        });
    }
    let params = &graph.params;
    let x = as_float(&inputs[0], node)?.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let batch = x.shape()[0];
    let ix = batch_norm_index(b, x.shape(), mask, node)?;
    let item = ix.item;
    let at = |n: usize, j: usize| f64::from(xs[n * item + j]);
    let first = ix.channel_sums(batch, |n, j, _| {
        let w = ix.weight(n, j);
        [w * at(n, j), w]
    });
    let divisor: Vec<f64> = first
        .iter()
        .map(|&[_, count]| match ix.mask {
            // Keras: sum / (sum_of_weights + epsilon()), in f32.
            Some(_) => f64::from(count as f32 + 1e-7f32),
            None => count,
        })
        .collect();
    let mean32: Vec<f32> = first
        .iter()
        .zip(&divisor)
        .map(|(&[s, _], &d)| (s / d) as f32)
        .collect();
    let second = ix.channel_sums(batch, |n, j, c| {
        [ix.weight(n, j) * (at(n, j) - f64::from(mean32[c])).powi(2)]
    });
    let var32: Vec<f32> = second
        .iter()
        .zip(&divisor)
        .map(|(&[s], &d)| (s / d) as f32)
        .collect();

    let (scale, shift) = b.affine_with(params, &mean32, &var32);
    let mut y = x.to_owned();
    for (j, v) in y.iter_mut().enumerate() {
        let c = ix.channel(j % item.max(1));
        *v = *v * scale[c] + shift[c];
    }

    // Keras: moving * momentum + stat * (1 - momentum), the Python floats rounded to f32.
    let (keep, take) = (b.momentum as f32, (1.0 - b.momentum) as f32);
    let moved = |id: ParamId, stat: &[f32]| -> (ParamId, ArrayD<f32>) {
        let mut m = params.get(id).to_owned();
        m.iter_mut()
            .zip(stat)
            .for_each(|(v, &s)| *v = *v * keep + s * take);
        (id, m)
    };
    let state = vec![
        moved(b.moving_mean, &mean32),
        moved(b.moving_variance, &var32),
    ];
    let saved = BatchNormSaved::Batch {
        mean: mean32.iter().map(|&m| f64::from(m)).collect(),
        rstd: var32
            .iter()
            .map(|&v| 1.0 / (f64::from(v) + f64::from(b.epsilon)).sqrt())
            .collect(),
        divisor,
    };
    Ok(Forward {
        outputs: vec![Tensor::F32(y)],
        saved: Some(Box::new(saved)),
        state,
    })
}

/// The full batch-norm gradient. With x̂ = (x - μ) r, g = dy γ, per channel:
/// dL/dv = -r³/2 Σ g (x - μ), dL/dμ = -r Σ g + dL/dv dv/dμ, and
/// dx = g r + w dL/dμ / D + dL/dv 2 w (x - μ) / D (w the mask weight, D the divisor). Without a
/// mask dv/dμ is 0 (`tf.nn.moments` stops the mean's gradient in the variance; Σ (x - μ) = 0
/// anyway); with one Keras's variance reads the mean, and Σ w (x - μ) is μ·epsilon, not 0.
pub(super) fn batch_norm_backward(
    b: &BatchNorm,
    io: &NodeIo,
    dy: ArrayD<f32>,
    grads: &mut ParamGrads,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    let params = io.params();
    let x = io.input(0)?.as_standard_layout();
    let dy = dy.as_standard_layout();
    let (xs, dys) = (
        x.as_slice().expect("standard layout"),
        dy.as_slice().expect("standard layout"),
    );
    let batch = x.shape()[0];
    let ix = batch_norm_index(b, x.shape(), io.mask, io.node)?;
    let item = ix.item;
    let at = |n: usize, j: usize| (f64::from(xs[n * item + j]), f64::from(dys[n * item + j]));
    let c = ix.layout.reduced;
    let gamma: Vec<f64> = match b.gamma {
        Some(g) => params.slice(g).iter().map(|&v| f64::from(v)).collect(),
        None => vec![1.0; c],
    };
    let (mean, rstd, divisor) = match io.saved::<BatchNormSaved>()? {
        BatchNormSaved::Batch {
            mean,
            rstd,
            divisor,
        } => (mean.clone(), rstd.clone(), Some(divisor)),
        BatchNormSaved::Moving => {
            let eps = f64::from(b.epsilon);
            let mean = params.slice(b.moving_mean).iter().map(|&v| f64::from(v));
            let rstd = params
                .slice(b.moving_variance)
                .iter()
                .map(|&v| 1.0 / (f64::from(v) + eps).sqrt());
            (mean.collect(), rstd.collect(), None)
        }
    };
    // Per channel: Σ dy, Σ dy x̂, Σ w (x - μ).
    let sums = ix.channel_sums(batch, |n, j, ch| {
        let (xv, d) = at(n, j);
        let centred = xv - mean[ch];
        [d, d * centred * rstd[ch], ix.weight(n, j) * centred]
    });
    let weights = WeightSums {
        gamma: sums.iter().map(|s| s[1]).collect(),
        beta: sums.iter().map(|s| s[0]).collect(),
    };
    weights.add_to(params, b.gamma, b.beta, grads)?;
    if !io.needs[0] {
        return Ok(vec![None]);
    }
    let mut dx = ArrayD::<f32>::zeros(x.raw_dim());
    let dxs = dx.as_slice_mut().expect("standard layout");
    match divisor {
        None => {
            // Moving statistics are constants: dx = dy * scale.
            for (k, v) in dxs.iter_mut().enumerate() {
                let ch = ix.channel(k % item.max(1));
                *v = (f64::from(dys[k]) * gamma[ch] * rstd[ch]) as f32;
            }
        }
        Some(divisor) => {
            let per_channel: Vec<(f64, f64)> = (0..c)
                .map(|ch| {
                    let (r, g) = (rstd[ch], gamma[ch]);
                    // Σ g (x - μ) = γ Σ dy x̂ / r; Σ g = γ Σ dy.
                    let dv = -0.5 * r.powi(3) * g * sums[ch][1] / r;
                    let dv_dmean = if ix.mask.is_some() {
                        -2.0 * sums[ch][2] / divisor[ch]
                    } else {
                        0.0
                    };
                    (-r * g * sums[ch][0] + dv * dv_dmean, dv)
                })
                .collect();
            dxs.par_chunks_mut(item.max(1))
                .enumerate()
                .for_each(|(n, row)| {
                    for (j, v) in row.iter_mut().enumerate() {
                        let ch = ix.channel(j);
                        let (xv, d) = at(n, j);
                        let (dmean, dv) = per_channel[ch];
                        let w = ix.weight(n, j);
                        let dd = divisor[ch];
                        *v = (d * gamma[ch] * rstd[ch]
                            + w * dmean / dd
                            + dv * 2.0 * w * (xv - mean[ch]) / dd)
                            as f32;
                    }
                });
        }
    }
    Ok(vec![Some(dx)])
}

/// Normalization: y = (x - mean) / sd (or mean + x * sd inverted), constants: dx = dy / sd.
pub(super) fn normalization_backward(
    n: &Normalization,
    io: &NodeIo,
    mut dy: ArrayD<f32>,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    if !io.needs[0] {
        return Ok(vec![None]);
    }
    let sd = io.params().get(n.variance).mapv(Normalization::deviation);
    let sd_b = sd.view().insert_axis(Axis(0));
    let z = Zip::from(&mut dy).and_broadcast(&sd_b);
    if n.invert {
        z.for_each(|g, &s| *g *= s);
    } else {
        z.for_each(|g, &s| *g /= s);
    }
    Ok(vec![Some(dy)])
}

/// PReLU, y = relu(x) - alpha * relu(-x): dx = dy where x > 0, dy * alpha where x < 0, 0 at 0
/// (TensorFlow's relu gradient); d alpha = Σ dy * min(x, 0) over the batch and shared axes.
pub(super) fn prelu_backward(
    p: &PRelu,
    io: &NodeIo,
    dy: ArrayD<f32>,
    grads: &mut ParamGrads,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    let params = io.params();
    let x = io.input(0)?;
    let alpha = params.get(p.alpha);
    if params.param(p.alpha).trainable {
        let mut full = dy.clone();
        Zip::from(&mut full)
            .and(x)
            .for_each(|g, &v| *g *= v.min(0.0));
        let mut shape = vec![1];
        shape.extend_from_slice(alpha.shape());
        let g = sum_to_shape(&full, &shape)
            .into_shape_with_order(IxDyn(alpha.shape()))
            .map_err(|e| Error::Internal(format!("PReLU alpha gradient: {e}")))?;
        grads.add(p.alpha, g);
    }
    if !io.needs[0] {
        return Ok(vec![None]);
    }
    let mut dx = dy;
    let alpha_b = alpha.insert_axis(Axis(0));
    Zip::from(&mut dx)
        .and(x)
        .and_broadcast(&alpha_b)
        .for_each(|g, &v, &a| {
            *g *= if v > 0.0 {
                1.0
            } else if v < 0.0 {
                a
            } else {
                0.0
            }
        });
    Ok(vec![Some(dx)])
}

/// Softmax over several axes: dx = y (dy - <dy, y>); log_softmax: dx = dy - exp(y) Σ dy.
pub(super) fn softmax_backward(
    s: &Softmax,
    io: &NodeIo,
    dy: ArrayD<f32>,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    if !io.needs[0] {
        return Ok(vec![None]);
    }
    let y = io.output(0)?.as_standard_layout();
    let dy = dy.as_standard_layout();
    let layout = layout_of(y.shape(), &s.axes, io.node)?;
    let mut dx = ArrayD::<f32>::zeros(y.raw_dim());
    per_group(
        layout,
        item_len(y.shape()),
        y.as_slice().expect("standard layout"),
        dy.as_slice().expect("standard layout"),
        dx.as_slice_mut().expect("standard layout"),
        || (),
        |yr, dyr, dxr, _| {
            if s.log {
                let sum: f64 = dyr.iter().map(|&v| f64::from(v)).sum();
                for ((d, &g), &ly) in dxr.iter_mut().zip(dyr).zip(yr) {
                    *d = (f64::from(g) - f64::from(ly).exp() * sum) as f32;
                }
            } else {
                let dot: f64 = dyr
                    .iter()
                    .zip(yr)
                    .map(|(&g, &p)| f64::from(g) * f64::from(p))
                    .sum();
                for ((d, &g), &p) in dxr.iter_mut().zip(dyr).zip(yr) {
                    *d = (f64::from(p) * (f64::from(g) - dot)) as f32;
                }
            }
        },
        |(), ()| (),
    );
    Ok(vec![Some(dx)])
}

#[cfg(test)]
pub(super) mod tests {
    use ndarray::Array2;

    use super::super::check::{check_node, uniform};
    use super::super::{forward, Forward};
    use super::*;
    use crate::train::Rng;

    /// A graph of one node "n" on float inputs of the given item shapes; with `mask_steps` a
    /// mask input (N, steps) reaches the node too.
    pub(in crate::cpu::grad) fn graph_of(
        items: &[&[usize]],
        mask_steps: Option<usize>,
        op: impl FnOnce(&mut ParamStore) -> Op,
    ) -> Graph {
        let mut g = Graph::new("t");
        let xs: Vec<ValueId> = items
            .iter()
            .enumerate()
            .map(|(i, s)| g.add_input(format!("x{i}"), s.to_vec(), DType::F32))
            .collect();
        let mask = mask_steps.map(|t| g.add_input("m", vec![t], DType::Mask));
        let op = op(&mut g.params);
        let y = g.add_node("n", "Test", op, &xs, mask).expect("shape rule");
        g.add_output("y", y[0]);
        g
    }

    fn f32s(x: ArrayD<f32>) -> Tensor {
        Tensor::F32(x)
    }

    fn train_forward(g: &Graph, x: &ArrayD<f32>, mask: Option<&Array2<bool>>) -> Forward {
        forward(g, &g.nodes[0], &[f32s(x.clone())], mask, &mut Rng::new(1)).expect("forward")
    }

    fn batch_norm_op(
        p: &mut ParamStore,
        axes: Vec<usize>,
        channels: &[usize],
        center: bool,
        scale: bool,
        epsilon: f32,
    ) -> Op {
        let gamma = scale.then(|| p.add("n/gamma", uniform(channels, 1, 0.5) + 1.0, true));
        let beta = center.then(|| p.add("n/beta", uniform(channels, 2, 0.5), true));
        let moving_mean = p.add("n/moving_mean", uniform(channels, 3, 0.5), false);
        let moving_variance = p.add("n/moving_variance", uniform(channels, 4, 0.5) + 1.0, false);
        Op::BatchNorm(BatchNorm {
            axes,
            gamma,
            beta,
            moving_mean,
            moving_variance,
            epsilon,
            momentum: 0.9,
            trainable: true,
            unused: Vec::new(),
        })
    }

    /// Batch mean and biased variance of channel c (axis `axis` of the item), straight from
    /// the definition, with optional per-step weights.
    fn direct_moments(
        x: &ArrayD<f32>,
        axis: usize,
        mask: Option<&Array2<bool>>,
    ) -> (Vec<f64>, Vec<f64>) {
        let c = x.shape()[axis + 1];
        let (mut s, mut w) = (vec![0.0; c], vec![0.0; c]);
        for (idx, &v) in x.indexed_iter() {
            let keep = mask.is_none_or(|m| m[[idx[0], idx[1]]]);
            if keep {
                s[idx[axis + 1]] += f64::from(v);
                w[idx[axis + 1]] += 1.0;
            }
        }
        let masked = mask.is_some();
        let d: Vec<f64> = w
            .iter()
            .map(|&w| if masked { w + 1e-7 } else { w })
            .collect();
        let mean: Vec<f64> = s.iter().zip(&d).map(|(s, d)| s / d).collect();
        let mut var = vec![0.0; c];
        for (idx, &v) in x.indexed_iter() {
            if mask.is_none_or(|m| m[[idx[0], idx[1]]]) {
                let ch = idx[axis + 1];
                var[ch] += (f64::from(v) - mean[ch]).powi(2);
            }
        }
        let var = var.iter().zip(&d).map(|(v, d)| v / d).collect();
        (mean, var)
    }

    fn close(a: f64, b: f64, what: &str) {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "{what}: {a} vs expected {b}"
        );
    }

    #[test]
    fn batch_norm_training_matches_finite_differences() {
        // (item shape, axes, batch): channels last and axis 1, batch 1 and 3, odd sizes.
        let cases: [(&[usize], Vec<usize>, usize); 6] = [
            (&[5], vec![0], 3),
            (&[5], vec![0], 1),
            (&[3, 5], vec![1], 3),
            (&[3, 5], vec![0], 3),
            (&[3, 2, 5], vec![2], 1),
            (&[3, 2, 5], vec![1, 2], 3),
        ];
        for (item, axes, batch) in cases {
            for (center, scale) in [(true, true), (false, true), (true, false), (false, false)] {
                let channels: Vec<usize> = axes.iter().map(|&a| item[a]).collect();
                let g = graph_of(&[item], None, |p| {
                    batch_norm_op(p, axes.clone(), &channels, center, scale, 1e-3)
                });
                let mut shape = vec![batch];
                shape.extend_from_slice(item);
                let x = uniform(&shape, 9, 2.0) + 0.3;
                let r = std::panic::catch_unwind(|| {
                    check_node(&g, 0, vec![f32s(x.clone())], None, 1e-2)
                });
                assert!(
                    r.is_ok(),
                    "item {item:?} axes {axes:?} batch {batch} center {center} scale {scale}"
                );
            }
        }
    }

    #[test]
    fn batch_norm_training_normalizes_with_batch_statistics_and_moves_the_averages() {
        for (item, axis, epsilon) in [(&[4usize, 5][..], 1usize, 1e-3f32), (&[4, 5], 0, 0.1)] {
            let channels = [item[axis]];
            let g = graph_of(&[item], None, |p| {
                batch_norm_op(p, vec![axis], &channels, true, true, epsilon)
            });
            let Op::BatchNorm(b) = &g.nodes[0].op else {
                unreachable!()
            };
            let x = uniform(&[3, 4, 5], 21, 1.5) + 0.7;
            let fw = train_forward(&g, &x, None);
            let (mean, var) = direct_moments(&x, axis, None);
            let Tensor::F32(y) = &fw.outputs[0] else {
                panic!("float output")
            };
            let gamma = g.params.slice(b.gamma.expect("gamma"));
            let beta = g.params.slice(b.beta.expect("beta"));
            for (idx, &v) in x.indexed_iter() {
                let c = idx[axis + 1];
                let want = (f64::from(v) - mean[c]) / (var[c] + f64::from(epsilon)).sqrt()
                    * f64::from(gamma[c])
                    + f64::from(beta[c]);
                close(f64::from(y[&idx]), want, "output");
            }
            assert_eq!(fw.state.len(), 2);
            for (id, new) in &fw.state {
                let (stat, old) = if *id == b.moving_mean {
                    (&mean, g.params.slice(b.moving_mean))
                } else {
                    assert_eq!(*id, b.moving_variance);
                    (&var, g.params.slice(b.moving_variance))
                };
                // Biased variance, momentum 0.9.
                for c in 0..channels[0] {
                    let want = f64::from(old[c]) * 0.9 + stat[c] * 0.1;
                    close(f64::from(new[c]), want, "moving statistic");
                }
            }
        }
    }

    fn step_mask(batch: usize, steps: usize) -> Array2<bool> {
        // Item 0 keeps its first steps, item 1 keeps none but one, item 2 keeps all.
        Array2::from_shape_fn((batch, steps), |(n, t)| match n % 3 {
            0 => t < steps - 1,
            1 => t == 1,
            _ => true,
        })
    }

    #[test]
    fn masked_batch_norm_uses_the_kept_steps_only() {
        for axis in [1usize, 0] {
            let item = [4usize, 5];
            let channels = [item[axis]];
            let g = graph_of(&[&item], Some(4), |p| {
                batch_norm_op(p, vec![axis], &channels, true, true, 1e-3)
            });
            let x = uniform(&[3, 4, 5], 33, 1.0) - 0.2;
            let mask = step_mask(3, 4);
            check_node(&g, 0, vec![f32s(x.clone())], Some(&mask), 1e-2);
            let fw = train_forward(&g, &x, Some(&mask));
            let (mean, var) = direct_moments(&x, axis, Some(&mask));
            let Op::BatchNorm(b) = &g.nodes[0].op else {
                unreachable!()
            };
            let old = g.params.slice(b.moving_mean);
            let (_, new_mean) = &fw.state[0];
            let (_, new_var) = &fw.state[1];
            let old_var = g.params.slice(b.moving_variance);
            for c in 0..channels[0] {
                close(
                    f64::from(new_mean[c]),
                    f64::from(old[c]) * 0.9 + mean[c] * 0.1,
                    "masked moving mean",
                );
                close(
                    f64::from(new_var[c]),
                    f64::from(old_var[c]) * 0.9 + var[c] * 0.1,
                    "masked moving variance",
                );
            }
        }
    }

    #[test]
    fn masked_batch_norm_needs_a_sequence_input() {
        let g = graph_of(&[&[4, 2, 5]], Some(4), |p| {
            batch_norm_op(p, vec![2], &[5], true, true, 1e-3)
        });
        let x = uniform(&[3, 4, 2, 5], 1, 1.0);
        let mask = step_mask(3, 4);
        let err = forward(&g, &g.nodes[0], &[f32s(x)], Some(&mask), &mut Rng::new(1))
            .err()
            .expect("a rank-4 input with a step mask is refused");
        let msg = err.to_string();
        assert!(
            msg.contains("layer 'n'") && msg.contains("one dimension less"),
            "{msg}"
        );
    }

    #[test]
    fn frozen_batch_norm_trains_on_its_moving_statistics() {
        let g = graph_of(&[&[3, 5]], None, |p| {
            let mut op = batch_norm_op(p, vec![1], &[5], true, true, 1e-3);
            if let Op::BatchNorm(b) = &mut op {
                b.trainable = false;
            }
            op
        });
        let x = uniform(&[3, 3, 5], 5, 1.0);
        let fw = train_forward(&g, &x, None);
        assert!(fw.state.is_empty(), "a frozen layer updates nothing");
        let at_inference =
            crate::cpu::run_node(&g, &g.nodes[0], vec![f32s(x.clone())], None).expect("run");
        let (Tensor::F32(a), Tensor::F32(b)) = (&fw.outputs[0], &at_inference[0]) else {
            panic!("float outputs")
        };
        assert_eq!(a, b);
        check_node(&g, 0, vec![f32s(x)], None, 1e-2);
    }

    #[test]
    fn batch_norm_with_renorm_has_no_backward() {
        let mut p = ParamStore::default();
        let mut op = batch_norm_op(&mut p, vec![0], &[3], true, true, 1e-3);
        if let Op::BatchNorm(b) = &mut op {
            b.unused
                .push(p.add("n/moving_stddev", uniform(&[3], 1, 1.0), false));
        }
        let why = super::super::support(&op).expect_err("renorm is refused");
        assert!(why.contains("renorm"), "{why}");
    }

    #[test]
    fn every_layer_norm_kind_matches_finite_differences() {
        use LayerNormKind::*;
        // (item, axes, batch)
        let layouts: [(&[usize], Vec<usize>, usize); 5] = [
            (&[7], vec![0], 3),
            (&[7], vec![0], 1),
            (&[4, 5], vec![1], 3),
            (&[4, 5], vec![0], 3),
            (&[3, 4, 5], vec![0, 1], 1),
        ];
        for (item, axes, batch) in layouts {
            for (kind, has_gamma, has_beta) in [
                (Standard, true, true),
                (Standard, false, true),
                (Standard, true, false),
                (Standard, false, false),
                (RmsScaling, true, false),
                (Rms, true, false),
                (Unit, false, false),
            ] {
                let shape: Vec<usize> = axes.iter().map(|&a| item[a]).collect();
                let g = graph_of(&[item], None, |p| {
                    Op::LayerNorm(LayerNorm {
                        axes: axes.clone(),
                        gamma: has_gamma
                            .then(|| p.add("n/gamma", uniform(&shape, 1, 0.5) + 1.0, true)),
                        beta: has_beta.then(|| p.add("n/beta", uniform(&shape, 2, 0.5), true)),
                        epsilon: if kind == Unit { 0.0 } else { 1e-3 },
                        kind,
                    })
                });
                let mut xs = vec![batch];
                xs.extend_from_slice(item);
                let x = uniform(&xs, 4, 1.5) + 0.2;
                let r = std::panic::catch_unwind(|| check_node(&g, 0, vec![f32s(x)], None, 1e-2));
                assert!(
                    r.is_ok(),
                    "{kind:?} item {item:?} axes {axes:?} batch {batch}"
                );
            }
        }
    }

    #[test]
    fn unit_normalization_of_a_zero_row_scales_by_the_cap() {
        let g = graph_of(&[&[3]], None, |_| {
            Op::LayerNorm(LayerNorm {
                axes: vec![0],
                gamma: None,
                beta: None,
                epsilon: 0.0,
                kind: LayerNormKind::Unit,
            })
        });
        let x = ArrayD::zeros(IxDyn(&[1, 3]));
        let fw = train_forward(&g, &x, None);
        let io = NodeIo {
            graph: &g,
            node: &g.nodes[0],
            inputs: &[f32s(x)],
            outputs: &fw.outputs,
            mask: None,
            saved: &fw.saved,
            needs: &[true],
        };
        let dy = uniform(&[1, 3], 3, 1.0);
        let mut grads = ParamGrads::new(&g.params);
        let dx = super::super::backward(&io, &[Some(dy.clone())], &mut grads).expect("backward");
        // TensorFlow: minimum(rsqrt(0) = inf, 1e12) routes the gradient to the cap.
        assert_eq!(
            dx[0].as_ref().expect("dx"),
            &dy.mapv(|v| v * UNIT_NORM_MAX_INV)
        );
    }

    #[test]
    fn group_norm_matches_finite_differences() {
        // (item, groups, batch): channels 6 in 1, 2, 3 and 6 groups; 1-D and 2-D positions.
        let cases: [(&[usize], usize, usize); 6] = [
            (&[6], 2, 3),
            (&[4, 6], 3, 3),
            (&[4, 6], 1, 1),
            (&[4, 6], 6, 3),
            (&[3, 2, 6], 2, 1),
            (&[5, 6], 2, 3),
        ];
        for (item, groups, batch) in cases {
            for (center, scale) in [(true, true), (false, false), (true, false)] {
                let g = graph_of(&[item], None, |p| {
                    Op::GroupNorm(GroupNorm {
                        groups,
                        gamma: scale.then(|| p.add("n/gamma", uniform(&[6], 1, 0.5) + 1.0, true)),
                        beta: center.then(|| p.add("n/beta", uniform(&[6], 2, 0.5), true)),
                        epsilon: 1e-3,
                    })
                });
                let mut xs = vec![batch];
                xs.extend_from_slice(item);
                let x = uniform(&xs, 6, 1.0) - 0.3;
                let r = std::panic::catch_unwind(|| check_node(&g, 0, vec![f32s(x)], None, 1e-2));
                assert!(r.is_ok(), "item {item:?} groups {groups} batch {batch}");
            }
        }
    }

    #[test]
    fn normalization_matches_finite_differences() {
        for invert in [false, true] {
            // Per-channel statistics (broadcast over steps) and per-value statistics.
            for stat_shape in [&[1usize, 5][..], &[4, 5]] {
                let g = graph_of(&[&[4, 5]], None, |p| {
                    Op::Normalization(Normalization {
                        mean: p.add("n/mean", uniform(stat_shape, 1, 1.0), false),
                        variance: p.add("n/variance", uniform(stat_shape, 2, 0.5) + 1.0, false),
                        count: None,
                        invert,
                    })
                });
                for batch in [1, 3] {
                    let x = uniform(&[batch, 4, 5], 3, 2.0);
                    check_node(&g, 0, vec![f32s(x)], None, 1e-2);
                }
            }
        }
    }

    #[test]
    fn prelu_matches_finite_differences() {
        // Alpha per value, shared over axis 1, over both axes.
        for alpha_shape in [&[4usize, 5][..], &[1, 5], &[1, 1]] {
            let g = graph_of(&[&[4, 5]], None, |p| {
                Op::PRelu(PRelu {
                    alpha: p.add("n/alpha", uniform(alpha_shape, 1, 0.3) + 0.2, true),
                })
            });
            for batch in [1, 3] {
                // Away from the kink at 0.
                let x =
                    uniform(&[batch, 4, 5], 8, 2.0)
                        .mapv(|v| if v.abs() < 0.05 { v + 0.1 } else { v });
                check_node(&g, 0, vec![f32s(x)], None, 1e-2);
            }
        }
    }

    #[test]
    fn softmax_over_several_axes_matches_finite_differences() {
        let cases: [(&[usize], Vec<usize>); 4] = [
            (&[4, 5], vec![0]),
            (&[4, 5], vec![0, 1]),
            (&[3, 4, 5], vec![1]),
            (&[3, 4, 5], vec![0, 1]),
        ];
        for (item, axes) in cases {
            for log in [false, true] {
                let g = graph_of(&[item], None, |_| {
                    Op::Softmax(Softmax {
                        axes: axes.clone(),
                        log,
                    })
                });
                for batch in [1, 3] {
                    let mut xs = vec![batch];
                    xs.extend_from_slice(item);
                    let x = uniform(&xs, 2, 2.0);
                    let r =
                        std::panic::catch_unwind(|| check_node(&g, 0, vec![f32s(x)], None, 1e-2));
                    assert!(
                        r.is_ok(),
                        "item {item:?} axes {axes:?} log {log} batch {batch}"
                    );
                }
            }
        }
    }
}
