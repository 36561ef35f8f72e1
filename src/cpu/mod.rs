//! CPU reference path on ndarray: the oracle every GPU result is tested against. Readable first;
//! convolutions are im2col + GEMM (ndarray `dot`), with threads over the batch.

pub mod activation;
mod recurrent;

use ndarray::{s, Array2, Array3, Array4, ArrayD, ArrayView2, Axis, Ix4, IxDyn, Zip};
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
    let mut y = x2.dot(&d.kernel);
    if let Some(b) = &d.bias {
        y += b;
    }
    let mut y = y
        .into_shape_with_order(IxDyn(out_dims))
        .map_err(|e| Error::Input(format!("dense output: {e}")))?;
    activation::apply(d.activation, y.view_mut());
    Ok(y)
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

/// im2col of one image: rows are output pixels, columns (kh, kw, c) — the order of an HWIO
/// kernel flattened to (kh*kw*c, filters). Out-of-bounds taps stay zero (zero padding).
fn im2col(w: &Window2d, channels: usize, img: ndarray::ArrayView3<f32>) -> Array2<f32> {
    let [kh, kw] = w.kernel;
    let [oh, ow] = w.out_hw;
    let [ih, iw] = w.in_hw;
    let mut cols = Array2::<f32>::zeros((oh * ow, kh * kw * channels));
    for oy in 0..oh {
        for ox in 0..ow {
            let mut row = cols.row_mut(oy * ow + ox);
            for ky in 0..kh {
                let y = (oy * w.strides[0] + ky) as isize - w.pad_top_left[0] as isize;
                if y < 0 || y >= ih as isize {
                    continue;
                }
                for kx in 0..kw {
                    let xx = (ox * w.strides[1] + kx) as isize - w.pad_top_left[1] as isize;
                    if xx < 0 || xx >= iw as isize {
                        continue;
                    }
                    let start = (ky * kw + kx) * channels;
                    row.slice_mut(s![start..start + channels])
                        .assign(&img.slice(s![y as usize, xx as usize, ..]));
                }
            }
        }
    }
    cols
}

fn conv2d(c: &Conv2d, x: &Array4<f32>) -> Array4<f32> {
    let n = x.shape()[0];
    let [oh, ow] = c.window.out_hw;
    let k = c.kernel.len() / c.filters;
    let kernel: ArrayView2<f32> = c
        .kernel
        .view()
        .into_shape_with_order((k, c.filters))
        .expect("HWIO kernel is contiguous");
    let mut out = Array4::<f32>::zeros((n, oh, ow, c.filters));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(x.axis_iter(Axis(0)).into_par_iter())
        .for_each(|(mut o, img)| {
            let cols = im2col(&c.window, c.in_channels, img);
            let mut y = cols.dot(&kernel);
            if let Some(b) = &c.bias {
                y += b;
            }
            activation::apply(c.activation, y.view_mut().into_dyn());
            o.assign(
                &y.into_shape_with_order((oh, ow, c.filters))
                    .expect("conv output shape"),
            );
        });
    out
}

fn pool2d(p: &Pool2d, x: &Array4<f32>) -> Array4<f32> {
    let w = &p.window;
    let n = x.shape()[0];
    let [oh, ow] = w.out_hw;
    let [ih, iw] = w.in_hw;
    let mut out = Array4::<f32>::zeros((n, oh, ow, p.channels));
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * w.strides[0]) as isize - w.pad_top_left[0] as isize;
                let x0 = (ox * w.strides[1]) as isize - w.pad_top_left[1] as isize;
                let ys =
                    y0.max(0) as usize..((y0 + w.kernel[0] as isize).min(ih as isize)) as usize;
                let xs =
                    x0.max(0) as usize..((x0 + w.kernel[1] as isize).min(iw as isize)) as usize;
                let window = x.slice(s![b, ys, xs, ..]);
                let mut dst = out.slice_mut(s![b, oy, ox, ..]);
                match p.op {
                    // Padding never wins a max (TensorFlow pads with -inf).
                    PoolOp::Max => dst.assign(
                        &window
                            .fold_axis(Axis(0), f32::NEG_INFINITY, |a, v| a.max(*v))
                            .fold_axis(Axis(0), f32::NEG_INFINITY, |a, v| a.max(*v)),
                    ),
                    // Average divides by the in-bounds count, as TensorFlow does for `same`.
                    PoolOp::Average => {
                        let count = (window.shape()[0] * window.shape()[1]) as f32;
                        dst.assign(&(window.sum_axis(Axis(0)).sum_axis(Axis(0)) / count));
                    }
                }
            }
        }
    }
    out
}
