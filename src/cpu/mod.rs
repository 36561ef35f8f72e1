//! CPU reference path on ndarray: the oracle every GPU result is tested against. Runs the graph's
//! nodes in order and frees each value after its last use. Convolutions are Winograd
//! F(2x2,3x3) or im2col + GEMM (the `gemm` crate), threads over images; `conv.rs` adds the
//! other ranks, dilation, groups, depthwise and transposed convolutions and the poolings.

pub mod activation;
mod conv;
mod conv_lstm;
mod direct_conv;
mod gemm;
pub(crate) mod grad;
mod merge;
mod norm;
#[cfg(test)]
mod pooled_conv_tests;
mod recurrent;
pub mod simd;
mod time_distributed;
mod winograd;

/// One node's training forward and backward, for benchmarks of the backward rules.
#[doc(hidden)]
pub use grad::node_step::NodeStep;
use ndarray::{
    Array2, Array3, Array4, ArrayBase, ArrayD, ArrayView1, ArrayView4, Axis, Ix4, IxDyn, Zip,
};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::graph::*;
use crate::input::PreparedInput;

/// A value while the graph runs.
#[derive(Debug, Clone)]
pub(crate) enum Tensor {
    F32(ArrayD<f32>),
    Ids(Array2<u32>),
    Mask(Array2<bool>),
}

impl Tensor {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Tensor::F32(_) => "float32",
            Tensor::Ids(_) => "token ids",
            Tensor::Mask(_) => "mask",
        }
    }
}

/// A Conv2D with its weights resolved from the parameter store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvArgs<'a> {
    pub filters: usize,
    pub window: Window2d,
    pub in_channels: usize,
    /// HWIO.
    pub kernel: ArrayView4<'a, f32>,
    pub bias: Option<ArrayView1<'a, f32>>,
    pub activation: Activation,
    /// The kernel's `ParamStore::generation` when it is a stored parameter viewed in place;
    /// None for a kernel made on the fly (caches then compare its values).
    pub kernel_generation: Option<u64>,
}

/// Runs the whole graph on validated batches (one per graph input); returns every output.
pub fn run(graph: &Graph, inputs: &[PreparedInput]) -> Result<Vec<ArrayD<f32>>> {
    simd::checked_level()?;
    if inputs.len() != graph.inputs.len() {
        return Err(Error::Input(format!(
            "the model takes {} input(s), got {}",
            graph.inputs.len(),
            inputs.len()
        )));
    }
    let batch = crate::input::common_batch(inputs)?;
    let last_use = graph.last_uses();
    let mut values: Vec<Option<Tensor>> = vec![None; graph.values.len()];
    for (port, input) in graph.inputs.iter().zip(inputs) {
        values[port.value] = Some(match input {
            PreparedInput::Float(x) => Tensor::F32(x.clone()),
            PreparedInput::Ids(ids) => Tensor::Ids(ids.clone()),
        });
    }
    // A pooling node fused into the convolution before it, which already wrote its output.
    let mut fused_into = None;
    for (i, node) in graph.nodes.iter().enumerate() {
        if fused_into == Some(i) {
            continue;
        }
        // An input read for the last time is moved into the op (activations run in place);
        // one read again later, or twice by this node, is copied.
        let mut args = Vec::with_capacity(node.inputs.len());
        for (k, &v) in node.inputs.iter().enumerate() {
            let again = node.inputs[k + 1..].contains(&v) || node.mask == Some(v);
            let t = if last_use[v] == i && !again {
                values[v].take()
            } else {
                values[v].clone()
            };
            args.push(t.ok_or_else(|| {
                Error::Internal(format!(
                    "node '{}' reads value #{v} before it is computed",
                    node.name
                ))
            })?);
        }
        let mask = match node.mask.and_then(|m| values[m].as_ref()) {
            Some(Tensor::Mask(m)) => Some(m.clone()),
            Some(other) => {
                return Err(Error::Internal(format!(
                    "node '{}': its mask holds {}",
                    node.name,
                    other.kind()
                )))
            }
            None => None,
        };
        let (outs, made_by) = match (pooled_conv(graph, i, &last_use), args.as_slice()) {
            (Some((conv, pool, next)), [Tensor::F32(x)]) => {
                fused_into = Some(i + 1);
                let mut dims = vec![batch];
                dims.extend_from_slice(&graph.value(next.outputs[0]).shape);
                let y = conv::conv(conv, &graph.params, x, Some(pool), &dims)?;
                (vec![Tensor::F32(y)], next)
            }
            _ => (run_node(graph, node, args, mask.as_ref())?, node),
        };
        if outs.len() != made_by.outputs.len() {
            return Err(Error::Internal(format!(
                "node '{}' made {} outputs, the graph expects {}",
                made_by.name,
                outs.len(),
                made_by.outputs.len()
            )));
        }
        for (&v, t) in made_by.outputs.iter().zip(outs) {
            let info = graph.value(v);
            let mut expected = vec![batch];
            expected.extend_from_slice(&info.shape);
            let shape = match &t {
                Tensor::F32(x) => x.shape().to_vec(),
                Tensor::Ids(x) => x.shape().to_vec(),
                Tensor::Mask(x) => x.shape().to_vec(),
            };
            if shape != expected {
                // A bug, not bad input: the op's shape rule and this backend disagree.
                return Err(Error::Internal(format!(
                    "node '{}' produced shape {shape:?}, the graph expects {expected:?}",
                    made_by.name
                )));
            }
            values[v] = Some(t);
        }
        for &v in node.inputs.iter().chain(node.mask.iter()) {
            if last_use[v] == i {
                values[v] = None;
            }
        }
    }
    graph
        .outputs
        .iter()
        .map(|p| match values[p.value].clone() {
            Some(Tensor::F32(x)) => Ok(x),
            Some(other) => Err(Error::Input(format!(
                "output '{}' holds {}, not float32 values",
                p.name,
                other.kind()
            ))),
            None => Err(Error::Internal(format!(
                "output '{}' was never computed",
                p.name
            ))),
        })
        .collect()
}

/// Node `i` when it is a plain 2-D (or 1-D) convolution whose output only the next node reads,
/// a 2-D (or 1-D) pooling: the two then run as one ([`conv2d_then_pool`]), which never writes
/// the full-size convolution output. Returns the convolution, the pooling and its node.
fn pooled_conv<'g>(
    graph: &'g Graph,
    i: usize,
    last_use: &[usize],
) -> Option<(&'g Conv, &'g Pool, &'g Node)> {
    let node = &graph.nodes[i];
    let next = graph.nodes.get(i + 1)?;
    let (Op::Conv(conv), Op::Pool(pool)) = (&node.op, &next.op) else {
        return None;
    };
    let y = *node.outputs.first()?;
    let fusable = conv.plane().is_some()
        && node.mask.is_none()
        && next.mask.is_none()
        && node.outputs.len() == 1
        && next.inputs == [y]
        && next.outputs.len() == 1
        && last_use[y] == i + 1
        && pool.window.input[0] == 1
        && pool.window.kernel[0] == 1
        && pool.channels == conv.filters;
    fusable.then_some((conv, pool, next))
}

fn float(t: Tensor, node: &Node) -> Result<ArrayD<f32>> {
    match t {
        Tensor::F32(x) => Ok(x),
        other => Err(Error::Internal(format!(
            "node '{}' expects float32 input, got {}",
            node.name,
            other.kind()
        ))),
    }
}

/// Runs one node at inference: `args` are its data inputs in order (moved in).
pub(crate) fn run_node(
    graph: &Graph,
    node: &Node,
    mut args: Vec<Tensor>,
    mask: Option<&Array2<bool>>,
) -> Result<Vec<Tensor>> {
    let params = &graph.params;
    let out_info = graph.value(node.outputs[0]);
    let first = args
        .drain(..1)
        .next()
        .ok_or_else(|| Error::Internal(format!("node '{}' has no input", node.name)))?;
    let batch = match &first {
        Tensor::F32(x) => x.shape()[0],
        Tensor::Ids(x) => x.nrows(),
        Tensor::Mask(x) => x.nrows(),
    };
    let mut out_dims = vec![batch];
    out_dims.extend_from_slice(&out_info.shape);
    let name = node.name.as_str();
    let y = match &node.op {
        Op::Conv(_)
        | Op::DepthwiseConv(_)
        | Op::ConvTranspose(_)
        | Op::Pool(_)
        | Op::GlobalPool { .. }
        | Op::Dense(_) => {
            return read_only(graph, node, &float(first, node)?, mask, &out_dims).map(|y| vec![y])
        }
        Op::Activation(a) => {
            let mut x = into_standard_layout(float(first, node)?);
            let width = x.shape().last().copied().unwrap_or(1);
            let data = x.as_slice_mut().expect("standard layout is contiguous");
            activation::apply_rows(*a, data, width);
            x
        }
        Op::Rescaling { scale, offset } => rescale(float(first, node)?, scale, offset),
        Op::BatchNorm(b) => {
            let mut x = into_standard_layout(float(first, node)?);
            norm::batch_norm(b, params, &mut x);
            x
        }
        Op::LayerNorm(l) => {
            let mut x = into_standard_layout(float(first, node)?);
            norm::layer_norm(l, params, &mut x);
            x
        }
        Op::GroupNorm(gn) => {
            let mut x = into_standard_layout(float(first, node)?);
            norm::group_norm(gn, params, &mut x);
            x
        }
        Op::Normalization(n) => {
            let mut x = float(first, node)?;
            norm::normalization(n, params, &mut x);
            x
        }
        Op::PRelu(p) => {
            let mut x = float(first, node)?;
            norm::prelu(p, params, &mut x);
            x
        }
        Op::Softmax(s) => {
            let mut x = into_standard_layout(float(first, node)?);
            norm::softmax(s, &mut x);
            x
        }
        Op::Embedding(e) => match first {
            Tensor::Ids(ids) => embedding(e, params, &ids).into_dyn(),
            other => {
                return Err(Error::Internal(format!(
                    "Embedding '{name}' needs token ids, got {}",
                    other.kind()
                )))
            }
        },
        Op::Recurrent(r) => {
            let x3 = float(first, node)?
                .into_dimensionality::<ndarray::Ix3>()
                .map_err(|_| Error::Internal(format!("layer '{name}' expects (N, T, F) input")))?;
            let mut initial = Vec::with_capacity(args.len());
            for t in args {
                let s = float(t, node)?
                    .into_dimensionality::<ndarray::Ix2>()
                    .map_err(|_| {
                        Error::Internal(format!("layer '{name}': a state is not (N, U)"))
                    })?;
                initial.push(s.as_standard_layout().into_owned());
            }
            let outs = recurrent::run(r, params, &x3, mask, &initial);
            return Ok(outs.into_iter().map(Tensor::F32).collect());
        }
        Op::Reshape { .. } => reshape(float(first, node)?, &out_dims)?,
        Op::ConvLstm(c) => conv_lstm::run(c, params, float(first, node)?, &out_dims, name)?,
        Op::TimeDistributed { inner } => {
            time_distributed::run(inner, params, float(first, node)?, &out_dims, name)?
        }
        Op::Identity | Op::Dropout(_) => return Ok(vec![first]),
        Op::PaddingMask => match first {
            Tensor::Ids(ids) => return Ok(vec![Tensor::Mask(ids.mapv(|id| id != 0))]),
            other => {
                return Err(Error::Internal(format!(
                    "padding mask '{name}' needs token ids, got {}",
                    other.kind()
                )))
            }
        },
        Op::Scalar(s) => merge::scalar(s, float(first, node)?),
        Op::Upsample {
            interpolation: Interpolation::Bilinear,
            ..
        } => merge::bilinear(&float(first, node)?, &out_dims),
        Op::Merge(_)
        | Op::Concat { .. }
        | Op::Dot(_)
        | Op::Pad { .. }
        | Op::Crop { .. }
        | Op::Permute { .. }
        | Op::RepeatVector { .. }
        | Op::Upsample { .. } => {
            let mut all = vec![float(first, node)?];
            for t in args {
                all.push(float(t, node)?);
            }
            match &node.op {
                Op::Merge(m) => merge::merge(m, &all, &out_dims, mask),
                Op::Dot(d) => match all.as_slice() {
                    [x, y] => merge::dot(d, x, y, &out_dims),
                    _ => return Err(Error::Internal(format!("Dot '{name}' needs two inputs"))),
                },
                op => merge::copy_op(op, &all, &out_info.shape).ok_or_else(|| {
                    Error::Internal(format!("node '{name}': {} is not a copy op", op.name()))
                })?,
            }
        }
    };
    Ok(vec![Tensor::F32(y)])
}

/// The ops that only read their one input, run on a borrowed input (the training forward keeps
/// every value on its tape, so lending it saves a copy per node). None for the other ops.
pub(crate) fn run_read_only(
    graph: &Graph,
    node: &Node,
    args: &[&Tensor],
    mask: Option<&Array2<bool>>,
) -> Option<Result<Vec<Tensor>>> {
    let reads_only = matches!(
        node.op,
        Op::Conv(_)
            | Op::DepthwiseConv(_)
            | Op::ConvTranspose(_)
            | Op::Pool(_)
            | Op::GlobalPool { .. }
            | Op::Dense(_)
    );
    let x = match args {
        [Tensor::F32(x)] if reads_only => x,
        _ => return None,
    };
    let mut out_dims = vec![x.shape().first().copied().unwrap_or(0)];
    out_dims.extend_from_slice(&graph.value(node.outputs[0]).shape);
    Some(read_only(graph, node, x, mask, &out_dims).map(|y| vec![y]))
}

/// [`run_read_only`]'s ops on their float input.
fn read_only(
    graph: &Graph,
    node: &Node,
    x: &ArrayD<f32>,
    mask: Option<&Array2<bool>>,
    out_dims: &[usize],
) -> Result<Tensor> {
    let params = &graph.params;
    let y = match &node.op {
        Op::Conv(c) => conv::conv(c, params, x, None, out_dims)?,
        Op::DepthwiseConv(c) => conv::depthwise(c, params, x, out_dims)?,
        Op::ConvTranspose(c) => conv::conv_transpose(c, params, x, out_dims)?,
        Op::Pool(p) => conv::pool(p, x, out_dims)?,
        Op::GlobalPool { op, .. } => conv::global_pool(*op, x, mask, out_dims)?,
        Op::Dense(d) => dense(d, params, x, out_dims)?,
        op => {
            return Err(Error::Internal(format!(
                "node '{}': {} is not a read-only op",
                node.name,
                op.name()
            )))
        }
    };
    Ok(Tensor::F32(y))
}

/// `x` in row-major layout: itself when it already is (the usual case), else a copy.
fn into_standard_layout(x: ArrayD<f32>) -> ArrayD<f32> {
    if x.is_standard_layout() {
        x
    } else {
        x.as_standard_layout().into_owned()
    }
}

fn reshape(x: ArrayD<f32>, dims: &[usize]) -> Result<ArrayD<f32>> {
    into_standard_layout(x)
        .into_shape_with_order(IxDyn(dims))
        .map_err(|e| Error::Input(format!("reshape to {dims:?}: {e}")))
}

/// Dense on the last axis of any rank: one GEMM over all leading rows.
fn dense(
    d: &Dense,
    params: &ParamStore,
    x: &ArrayD<f32>,
    out_dims: &[usize],
) -> Result<ArrayD<f32>> {
    let in_dim = d.in_features;
    let rows = x.len() / in_dim.max(1);
    let x = x.as_standard_layout();
    let x2 = x
        .view()
        .into_shape_with_order((rows, in_dim))
        .map_err(|e| Error::Input(format!("dense input: {e}")))?;
    let mut y = Array2::<f32>::zeros((rows, d.units));
    gemm::matmul_into(x2.view(), params.view2(d.kernel), y.view_mut());
    let data = y.as_slice_mut().expect("a new array is contiguous");
    let bias = d.bias.map(|b| params.view1(b));
    bias_activation(data, d.units, bias, d.activation);
    y.into_shape_with_order(IxDyn(out_dims))
        .map_err(|e| Error::Input(format!("dense output: {e}")))
}

fn rescale(mut x: ArrayD<f32>, scale: &[f32], offset: &[f32]) -> ArrayD<f32> {
    let last = x.ndim() - 1;
    for mut lane in x.lanes_mut(Axis(last)) {
        for (c, v) in lane.iter_mut().enumerate() {
            let s = scale[if scale.len() == 1 { 0 } else { c }];
            let o = offset[if offset.len() == 1 { 0 } else { c }];
            *v = *v * s + o;
        }
    }
    x
}

fn embedding(e: &Embedding, params: &ParamStore, ids: &Array2<u32>) -> Array3<f32> {
    let (n, t) = ids.dim();
    let table = params.view2(e.table);
    let mut out = Array3::zeros((n, t, e.output_dim));
    Zip::from(out.lanes_mut(Axis(2)))
        .and(ids)
        .for_each(|mut row, &id| row.assign(&table.row(id as usize)));
    out
}

simd::multiversion! {
/// im2col of one NHWC image into `cols` (one row per output pixel, columns (kh, kw, c) — the
/// order of an HWIO kernel flattened to (kh*kw*c, filters)). Out-of-bounds taps are zero
/// padding. The taps of one kernel row are neighbouring pixels, so each is one contiguous copy;
/// for an image's few channels (RGB) each tap is a copy of a constant size instead, which the
/// compiler turns into a few moves rather than a call to memcpy.
fn im2col_image(w: &Window2d, channels: usize, img: &[f32], cols: &mut [f32]) {
    match channels {
        1 => im2col_taps::<1>(w, img, cols),
        3 => im2col_taps::<3>(w, img, cols),
        4 => im2col_taps::<4>(w, img, cols),
        _ => im2col_rows(w, channels, img, cols),
    }
}
}

/// The in-bounds taps `lo..hi` of a kernel row that starts at input column `x0`.
#[inline(always)]
fn tap_range(x0: isize, kw: usize, iw: usize) -> (usize, usize) {
    let lo = (-x0).clamp(0, kw as isize) as usize;
    let hi = (iw as isize - x0).clamp(lo as isize, kw as isize) as usize;
    (lo, hi)
}

/// [`im2col_image`] with one copy per kernel row.
#[inline(always)]
fn im2col_rows(w: &Window2d, channels: usize, img: &[f32], cols: &mut [f32]) {
    let [kh, kw] = w.kernel;
    let [oh, ow] = w.out_hw;
    let [ih, iw] = w.in_hw;
    let row_len = kh * kw * channels;
    let tap_row = kw * channels;
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut cols[(oy * ow + ox) * row_len..][..row_len];
            let x0 = (ox * w.strides[1]) as isize - w.pad_top_left[1] as isize;
            let (lo, hi) = tap_range(x0, kw, iw);
            for ky in 0..kh {
                let dst = &mut row[ky * tap_row..][..tap_row];
                let y = (oy * w.strides[0] + ky) as isize - w.pad_top_left[0] as isize;
                if y < 0 || y >= ih as isize || lo == hi {
                    dst.fill(0.0);
                    continue;
                }
                dst[..lo * channels].fill(0.0);
                dst[hi * channels..].fill(0.0);
                let src_start = (y as usize * iw + (x0 + lo as isize) as usize) * channels;
                dst[lo * channels..hi * channels]
                    .copy_from_slice(&img[src_start..src_start + (hi - lo) * channels]);
            }
        }
    }
}

/// [`im2col_image`] for `C` channels: one constant-size copy per tap.
#[inline(always)]
fn im2col_taps<const C: usize>(w: &Window2d, img: &[f32], cols: &mut [f32]) {
    let [kh, kw] = w.kernel;
    let [oh, ow] = w.out_hw;
    let [ih, iw] = w.in_hw;
    let row_len = kh * kw * C;
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut cols[(oy * ow + ox) * row_len..][..row_len];
            let x0 = (ox * w.strides[1]) as isize - w.pad_top_left[1] as isize;
            let (lo, hi) = tap_range(x0, kw, iw);
            for ky in 0..kh {
                let y = (oy * w.strides[0] + ky) as isize - w.pad_top_left[0] as isize;
                let inside = y >= 0 && y < ih as isize;
                for kx in 0..kw {
                    let dst: &mut [f32; C] = (&mut row[(ky * kw + kx) * C..][..C])
                        .try_into()
                        .expect("C floats");
                    if inside && (lo..hi).contains(&kx) {
                        let start = (y as usize * iw + (x0 + kx as isize) as usize) * C;
                        *dst = img[start..start + C].try_into().expect("C floats");
                    } else {
                        *dst = [0.0; C];
                    }
                }
            }
        }
    }
}

simd::multiversion! {
/// Adds the bias to contiguous rows of `width` values and applies the activation.
fn bias_activation_rows(
    data: &mut [f32],
    width: usize,
    bias: Option<ArrayView1<f32>>,
    act: Activation,
) {
    if let Some(b) = bias {
        let b = b.as_slice().expect("parameters are contiguous");
        for row in data.chunks_exact_mut(width.max(1)) {
            row.iter_mut().zip(b).for_each(|(v, &bb)| *v += bb);
        }
    }
    activation::apply_rows(act, data, width);
}
}

/// Bias + activation over GEMM output rows, in parallel chunks of rows.
fn bias_activation(data: &mut [f32], width: usize, bias: Option<ArrayView1<f32>>, act: Activation) {
    data.par_chunks_mut(1024 * width.max(1))
        .for_each(|rows| bias_activation_rows(rows, width, bias, act));
}

/// Convolution: Winograd F(2x2, 3x3) for 3x3 stride-1 layers with enough input channels,
/// im2col + GEMM for everything else.
fn conv2d<S: ndarray::Data<Elem = f32>>(c: &ConvArgs, x: &ArrayBase<S, Ix4>) -> Array4<f32> {
    conv2d_then_pool(c, x, None)
}

/// [`conv2d`], then `pool` (a pooling that reads only this output) on each group of images
/// while it is in cache: the full-size convolution output is never written.
fn conv2d_then_pool<S: ndarray::Data<Elem = f32>>(
    c: &ConvArgs,
    x: &ArrayBase<S, Ix4>,
    pool: Option<&Pool>,
) -> Array4<f32> {
    if let Some(y) = winograd::conv2d(c, x, pool) {
        return y;
    }
    conv2d_im2col(c, x, pool)
}

/// Rows and columns of each image's result: the convolution's, or with `pool` the pooling's.
fn dest_hw(pool: Option<&Pool>, conv_hw: [usize; 2]) -> [usize; 2] {
    pool.map_or(conv_hw, |p| [p.window.output[1], p.window.output[2]])
}

/// Convolution as im2col + GEMM, threads over groups of images: each group's im2col, GEMM, bias,
/// activation and (with `pool`) pooling run on one thread while its rows are still in cache.
fn conv2d_im2col<S: ndarray::Data<Elem = f32>>(
    c: &ConvArgs,
    x: &ArrayBase<S, Ix4>,
    pool: Option<&Pool>,
) -> Array4<f32> {
    let n = x.shape()[0];
    let [oh, ow] = c.window.out_hw;
    let [ih, iw] = c.window.in_hw;
    let pixels = oh * ow;
    let k = c.kernel.len() / c.filters.max(1);
    let kernel = c
        .kernel
        .view()
        .into_shape_with_order((k, c.filters))
        .expect("HWIO kernel is contiguous");
    let x = x.as_standard_layout();
    let input = x.as_slice().expect("standard layout is contiguous");
    let in_image = ih * iw * c.in_channels;
    let out_image = pixels * c.filters;
    let [dest_h, dest_w] = dest_hw(pool, [oh, ow]);
    let dest_image = dest_h * dest_w * c.filters;
    let mut out = vec![0.0f32; n * dest_image];
    if in_image == 0 || out_image == 0 || dest_image == 0 {
        return Array4::from_shape_vec((n, dest_h, dest_w, c.filters), out).expect("NHWC output");
    }
    // A layer on few input channels skips im2col (see `direct_conv`), with AVX2 or AVX-512:
    // at 4 lanes the direct loop is slower than im2col and the `gemm` crate's own kernels.
    let direct = (simd::level() > simd::Level::Baseline
        && direct_conv::supports(&c.window, c.in_channels))
    .then(|| {
        let kernel = kernel.as_standard_layout();
        let flat = kernel.as_slice().expect("standard layout is contiguous");
        direct_conv::Direct::new(c.window, c.in_channels, c.filters, flat)
    });
    // About 4096 GEMM rows per group; with fewer groups than threads (small batches) the GEMM
    // itself is threaded instead.
    let group = (4096 / pixels.max(1)).clamp(1, n.max(1));
    let threaded_gemm = n.div_ceil(group) < rayon::current_num_threads();
    out.par_chunks_mut(group * dest_image)
        .zip(input.par_chunks(group * in_image))
        .for_each(|(dest, images)| {
            let m = images.len() / in_image * pixels;
            // im2col writes every column, and the GEMM every output: reused scratch, unzeroed.
            let mut scratch = IM2COL_SCRATCH.take();
            let staged_len = if pool.is_some() { m * c.filters } else { 0 };
            let cols_len = match &direct {
                Some(d) => d.padded_len(),
                None => m * k,
            };
            if scratch.len() < cols_len + staged_len {
                scratch.resize(cols_len + staged_len, 0.0);
            }
            let (cols, staged) = scratch.split_at_mut(cols_len);
            let (y, pooled) = match pool {
                Some(p) => (&mut staged[..staged_len], Some((p, dest))),
                None => (dest, None),
            };
            if let Some(d) = &direct {
                for (img, y_img) in images
                    .chunks_exact(in_image)
                    .zip(y.chunks_exact_mut(out_image))
                {
                    d.pad_image(img, cols);
                    direct_rows(d, cols, ow * c.filters, y_img, threaded_gemm);
                }
            } else {
                let cols = &mut cols[..m * k];
                for (img, dst) in images
                    .chunks_exact(in_image)
                    .zip(cols.chunks_exact_mut(pixels * k))
                {
                    im2col_image(&c.window, c.in_channels, img, dst);
                }
                let a = ndarray::ArrayView2::from_shape((m, k), &*cols).expect("m x k scratch");
                let yv = ndarray::ArrayViewMut2::from_shape((m, c.filters), &mut *y)
                    .expect("m x filters output");
                gemm::matmul_into_on(a, kernel, yv, threaded_gemm);
            }
            bias_activation_rows(y, c.filters, c.bias, c.activation);
            if let Some((p, dest)) = pooled {
                conv::pool_images(p, dest, y);
            }
            IM2COL_SCRATCH.set(scratch);
        });
    Array4::from_shape_vec((n, dest_h, dest_w, c.filters), out).expect("NHWC output")
}

/// One image's direct convolution into `y_img` (rows of `row_len` floats), in bands of rows
/// on the threads when `threaded` (a batch too small to keep them busy with whole images).
fn direct_rows(
    d: &direct_conv::Direct,
    padded: &[f32],
    row_len: usize,
    y_img: &mut [f32],
    threaded: bool,
) {
    let rows = y_img.len() / row_len.max(1);
    let threads = rayon::current_num_threads();
    if !threaded || threads < 2 || rows < 2 {
        d.rows(padded, 0, y_img);
        return;
    }
    let band = rows.div_ceil(threads);
    y_img
        .par_chunks_mut(band * row_len)
        .enumerate()
        .for_each(|(i, out)| d.rows(padded, i * band, out));
}

thread_local! {
    /// Per-thread im2col columns and staged outputs, reused across groups and calls.
    static IM2COL_SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}
