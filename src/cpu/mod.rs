//! CPU reference path on ndarray: the oracle every GPU result is tested against. Readable first;
//! convolutions are im2col + GEMM (ndarray `dot`), with threads over the batch.

pub mod activation;
mod gemm;
mod recurrent;
mod winograd;

use ndarray::{s, Array1, Array2, Array3, Array4, ArrayD, ArrayView3, Axis, Ix4, IxDyn, Zip};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ir::*;
use crate::model::PreparedInput;

/// Runs the whole model on a validated batch.
pub fn run(ir: &ModelIr, input: &PreparedInput) -> Result<ArrayD<f32>> {
    let batch = input.batch();
    let (mut x, ids) = match input {
        PreparedInput::Float(x) => (x.clone(), None),
        PreparedInput::Ids(ids) => (ArrayD::zeros(IxDyn(&[batch, 0])), Some(ids)),
    };
    // The padding mask (id != 0), when an Embedding(mask_zero=True) asked for one.
    let mask: Option<Array2<bool>> = match ids {
        Some(ids) if ir.masks_padding() => Some(ids.mapv(|id| id != 0)),
        _ => None,
    };
    for layer in &ir.layers {
        x = run_layer(layer, x, ids, mask.as_ref())?;
        let mut expected = vec![batch];
        expected.extend_from_slice(&layer.output_shape);
        if x.shape() != expected.as_slice() {
            // A bug, not bad input: the IR's shape inference and this backend disagree.
            return Err(Error::Input(format!(
                "internal: layer '{}' produced shape {:?}, the IR expects {:?}",
                layer.name,
                x.shape(),
                expected
            )));
        }
    }
    Ok(x)
}

fn run_layer(
    layer: &Layer,
    x: ArrayD<f32>,
    ids: Option<&Array2<u32>>,
    mask: Option<&Array2<bool>>,
) -> Result<ArrayD<f32>> {
    let batch = x.shape()[0];
    let mut out_dims = vec![batch];
    out_dims.extend_from_slice(&layer.output_shape);
    Ok(match &layer.kind {
        LayerKind::Conv2d(c) => conv2d(c, &to4(x, &layer.name)?).into_dyn(),
        LayerKind::Pool2d(p) => pool2d(p, &to4(x, &layer.name)?).into_dyn(),
        LayerKind::GlobalPool2d { op, .. } => {
            let x4 = to4(x, &layer.name)?;
            let pooled = match op {
                PoolOp::Max => x4
                    .fold_axis(Axis(1), f32::NEG_INFINITY, |a, b| a.max(*b))
                    .fold_axis(Axis(1), f32::NEG_INFINITY, |a, b| a.max(*b)),
                PoolOp::Average => {
                    let hw = (x4.shape()[1] * x4.shape()[2]) as f32;
                    x4.sum_axis(Axis(1)).sum_axis(Axis(1)) / hw
                }
            };
            reshape(pooled.into_dyn(), &out_dims)?
        }
        LayerKind::Dense(d) => dense(d, x, &out_dims)?,
        LayerKind::Activation(a) => {
            let mut x = x;
            activation::apply(*a, x.view_mut());
            x
        }
        LayerKind::Rescaling { scale, offset } => rescale(x, scale, offset),
        LayerKind::Embedding(e) => {
            let ids = ids.ok_or_else(|| Error::Input("Embedding needs token ids".into()))?;
            embedding(e, ids).into_dyn()
        }
        LayerKind::Recurrent(r) => {
            let x3 = x.into_dimensionality::<ndarray::Ix3>().map_err(|_| {
                Error::Input(format!("layer '{}' expects (N, T, F) input", layer.name))
            })?;
            let m = if r.masked { mask } else { None };
            recurrent::run(r, &x3, m).into_dyn()
        }
        LayerKind::Reshape => reshape(x, &out_dims)?,
        LayerKind::Identity => x,
    })
}

fn to4(x: ArrayD<f32>, layer: &str) -> Result<Array4<f32>> {
    x.into_dimensionality::<Ix4>()
        .map_err(|_| Error::Input(format!("layer '{layer}' expects (N, H, W, C) input")))
}

fn reshape(x: ArrayD<f32>, dims: &[usize]) -> Result<ArrayD<f32>> {
    let x = x.as_standard_layout().into_owned();
    x.into_shape_with_order(IxDyn(dims))
        .map_err(|e| Error::Input(format!("reshape to {dims:?}: {e}")))
}

/// Dense on the last axis of any rank: one GEMM over all leading rows.
fn dense(d: &Dense, x: ArrayD<f32>, out_dims: &[usize]) -> Result<ArrayD<f32>> {
    let in_dim = d.kernel.nrows();
    let rows = x.len() / in_dim.max(1);
    let x2 = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((rows, in_dim))
        .map_err(|e| Error::Input(format!("dense input: {e}")))?;
    let mut y = Array2::<f32>::zeros((rows, d.units));
    gemm::matmul_into(x2.view(), d.kernel.view(), y.view_mut());
    bias_activation(y.view_mut(), d.bias.as_ref(), d.activation);
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

fn embedding(e: &Embedding, ids: &Array2<u32>) -> Array3<f32> {
    let (n, t) = ids.dim();
    let mut out = Array3::zeros((n, t, e.output_dim));
    Zip::from(out.lanes_mut(Axis(2)))
        .and(ids)
        .for_each(|mut row, &id| row.assign(&e.table.row(id as usize)));
    out
}

/// im2col of one image into `cols` (one row per output pixel, columns (kh, kw, c) — the order
/// of an HWIO kernel flattened to (kh*kw*c, filters)). Out-of-bounds taps are zero padding.
fn im2col_into(
    w: &Window2d,
    channels: usize,
    img: ArrayView3<f32>,
    mut cols: ndarray::ArrayViewMut2<f32>,
) {
    let [kh, kw] = w.kernel;
    let [oh, ow] = w.out_hw;
    let [ih, iw] = w.in_hw;
    for oy in 0..oh {
        for ox in 0..ow {
            let mut row = cols.row_mut(oy * ow + ox);
            for ky in 0..kh {
                let y = (oy * w.strides[0] + ky) as isize - w.pad_top_left[0] as isize;
                for kx in 0..kw {
                    let xx = (ox * w.strides[1] + kx) as isize - w.pad_top_left[1] as isize;
                    let start = (ky * kw + kx) * channels;
                    let mut dst = row.slice_mut(s![start..start + channels]);
                    if y < 0 || y >= ih as isize || xx < 0 || xx >= iw as isize {
                        dst.fill(0.0);
                    } else {
                        dst.assign(&img.slice(s![y as usize, xx as usize, ..]));
                    }
                }
            }
        }
    }
}

/// Adds the bias and applies the activation to GEMM output rows, in parallel.
fn bias_activation(
    mut y: ndarray::ArrayViewMut2<f32>,
    bias: Option<&Array1<f32>>,
    act: Activation,
) {
    y.axis_chunks_iter_mut(Axis(0), 1024)
        .into_par_iter()
        .for_each(|mut rows| {
            if let Some(b) = bias {
                rows += b;
            }
            activation::apply(act, rows.view_mut().into_dyn());
        });
}

/// Convolution: Winograd F(2x2, 3x3) for 3x3 stride-1 layers with enough input channels,
/// im2col + GEMM for everything else.
fn conv2d(c: &Conv2d, x: &Array4<f32>) -> Array4<f32> {
    if let Some(y) = winograd::conv2d(c, x) {
        return y;
    }
    conv2d_im2col(c, x)
}

/// Convolution as im2col + one GEMM per chunk of images (M = images x output pixels).
fn conv2d_im2col(c: &Conv2d, x: &Array4<f32>) -> Array4<f32> {
    let n = x.shape()[0];
    let [oh, ow] = c.window.out_hw;
    let pixels = oh * ow;
    let k = c.kernel.len() / c.filters;
    let kernel = c
        .kernel
        .view()
        .into_shape_with_order((k, c.filters))
        .expect("HWIO kernel is contiguous");
    let mut out = Array4::<f32>::zeros((n, oh, ow, c.filters));
    // Bounded scratch: about 8M floats of im2col at a time.
    let chunk = ((8 << 20) / (pixels * k).max(1)).clamp(1, n.max(1));
    let mut cols = Array2::<f32>::zeros((chunk * pixels, k));
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        let m = (end - start) * pixels;
        cols.slice_mut(s![..m, ..])
            .axis_chunks_iter_mut(Axis(0), pixels)
            .into_par_iter()
            .zip(
                x.slice(s![start..end, .., .., ..])
                    .axis_iter(Axis(0))
                    .into_par_iter(),
            )
            .for_each(|(dst, img)| im2col_into(&c.window, c.in_channels, img, dst));
        let mut y = out
            .slice_mut(s![start..end, .., .., ..])
            .into_shape_with_order((m, c.filters))
            .expect("NHWC output is contiguous");
        gemm::matmul_into(cols.slice(s![..m, ..]), kernel, y.view_mut());
        bias_activation(y, c.bias.as_ref(), c.activation);
        start = end;
    }
    out
}

/// Max or average pooling; windows clipped to the input (TensorFlow: padding never wins a
/// max, and `same` averages divide by the in-bounds count).
fn pool2d(p: &Pool2d, x: &Array4<f32>) -> Array4<f32> {
    let w = &p.window;
    let n = x.shape()[0];
    let [oh, ow] = w.out_hw;
    let [ih, iw] = w.in_hw;
    let ch = p.channels;
    let mut out = Array4::<f32>::zeros((n, oh, ow, ch));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(x.axis_iter(Axis(0)).into_par_iter())
        .for_each(|(mut o, img)| {
            let mut acc = vec![0.0f32; ch];
            for oy in 0..oh {
                let y0 = (oy * w.strides[0]) as isize - w.pad_top_left[0] as isize;
                let ys =
                    y0.max(0) as usize..((y0 + w.kernel[0] as isize).min(ih as isize)) as usize;
                for ox in 0..ow {
                    let x0 = (ox * w.strides[1]) as isize - w.pad_top_left[1] as isize;
                    let xs =
                        x0.max(0) as usize..((x0 + w.kernel[1] as isize).min(iw as isize)) as usize;
                    let init = match p.op {
                        PoolOp::Max => f32::NEG_INFINITY,
                        PoolOp::Average => 0.0,
                    };
                    acc.fill(init);
                    for yy in ys.clone() {
                        for xx in xs.clone() {
                            let px = img.slice(s![yy, xx, ..]);
                            for (a, &v) in acc.iter_mut().zip(px.iter()) {
                                match p.op {
                                    PoolOp::Max => *a = a.max(v),
                                    PoolOp::Average => *a += v,
                                }
                            }
                        }
                    }
                    if p.op == PoolOp::Average {
                        let count = (ys.len() * xs.len()) as f32;
                        acc.iter_mut().for_each(|a| *a /= count);
                    }
                    o.slice_mut(s![oy, ox, ..])
                        .iter_mut()
                        .zip(&acc)
                        .for_each(|(d, &a)| *d = a);
                }
            }
        });
    out
}
