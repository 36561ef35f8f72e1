//! Backward of the spatial-shape ops: zero padding (dx is dy cropped), cropping (dx is dy
//! padded with zeros), nearest upsampling (each input gets the sum of its copies), bilinear
//! upsampling (TensorFlow's ResizeBilinearGrad: each output's gradient split between its four
//! inputs with the forward's half-pixel weights), and TimeDistributed (the inner op's rule on
//! the N*T items).

use ndarray::{ArrayD, Axis, IxDyn};
use rayon::prelude::*;

use super::conv::flat;
use super::{backward, NodeIo};
use crate::cpu::merge::strided_copy;
use crate::cpu::Tensor;
use crate::error::{Error, Result};
use crate::graph::merge::{bilinear_scale, bilinear_tap, crop_copy, pad_copy};
use crate::graph::*;
use crate::train::ParamGrads;

fn item(x: &ArrayD<f32>) -> &[usize] {
    &x.shape()[1..]
}

/// ZeroPadding backward: the window of dy that the input was copied to.
pub(super) fn pad(pads: &[[usize; 2]], x: &ArrayD<f32>, dy: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let batch = x.shape()[0];
    let copy = crop_copy(pads, item(dy), item(x), batch);
    let mut dx = vec![0.0f32; x.len()];
    strided_copy(&copy, &flat(dy), &mut dx);
    ArrayD::from_shape_vec(x.raw_dim(), dx)
        .map_err(|e| Error::Internal(format!("padding gradient: {e}")))
}

/// Cropping backward: dy placed where the kept window was, zeros elsewhere.
pub(super) fn crop(crops: &[[usize; 2]], x: &ArrayD<f32>, dy: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let batch = x.shape()[0];
    let copy = pad_copy(crops, item(dy), item(x), batch);
    let mut dx = vec![0.0f32; x.len()];
    strided_copy(&copy, &flat(dy), &mut dx);
    ArrayD::from_shape_vec(x.raw_dim(), dx)
        .map_err(|e| Error::Internal(format!("cropping gradient: {e}")))
}

/// Nearest upsampling backward: output index d * f + r of each axis came from input d, so dy
/// read as (N, d0, f0, d1, f1, ...) summed over the f axes is dx.
pub(super) fn upsample_nearest(
    factors: &[usize],
    x: &ArrayD<f32>,
    dy: &ArrayD<f32>,
) -> Result<ArrayD<f32>> {
    let bad = |e: ndarray::ShapeError| Error::Internal(format!("upsampling gradient: {e}"));
    let mut split = vec![x.shape()[0]];
    for (&d, &f) in item(x).iter().zip(factors) {
        split.extend([d, f]);
    }
    let mut g = dy
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&split))
        .map_err(bad)?;
    // Innermost factor axis first, so the earlier axes keep their positions.
    for (a, &f) in factors.iter().enumerate().rev() {
        if f > 1 {
            g = g.sum_axis(Axis(2 + 2 * a));
        } else {
            g = g.index_axis_move(Axis(2 + 2 * a), 0);
        }
    }
    g.as_standard_layout()
        .into_owned()
        .into_shape_with_order(x.raw_dim())
        .map_err(bad)
}

/// Bilinear upsampling backward (NHWC), the adjoint of `cpu::merge::bilinear`.
pub(super) fn upsample_bilinear(x: &ArrayD<f32>, dy: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    if x.ndim() != 4 || dy.ndim() != 4 {
        return Err(Error::Internal(format!(
            "bilinear upsampling gradient of {:?} for an input {:?}",
            dy.shape(),
            x.shape()
        )));
    }
    let (n, ih, iw, c) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (oh, ow) = (dy.shape()[1], dy.shape()[2]);
    let (sy, sx) = (bilinear_scale(ih, oh), bilinear_scale(iw, ow));
    let xs: Vec<_> = (0..ow).map(|o| bilinear_tap(o, iw, sx)).collect();
    let dys = flat(dy);
    let mut dx = vec![0.0f32; n * ih * iw * c];
    if !dx.is_empty() && oh * ow > 0 {
        dx.par_chunks_mut(ih * iw * c)
            .zip(dys.par_chunks(oh * ow * c))
            .for_each(|(img, g)| {
                for oy in 0..oh {
                    let (y0, y1, yl) = bilinear_tap(oy, ih, sy);
                    for (ox, &(x0, x1, xl)) in xs.iter().enumerate() {
                        let src = &g[(oy * ow + ox) * c..][..c];
                        let weights = [
                            (y0, x0, (1.0 - yl) * (1.0 - xl)),
                            (y0, x1, (1.0 - yl) * xl),
                            (y1, x0, yl * (1.0 - xl)),
                            (y1, x1, yl * xl),
                        ];
                        for (yy, xx, wt) in weights {
                            img[(yy * iw + xx) * c..][..c]
                                .iter_mut()
                                .zip(src)
                                .for_each(|(d, &v)| *d += v * wt);
                        }
                    }
                }
            });
    }
    ArrayD::from_shape_vec(x.raw_dim(), dx)
        .map_err(|e| Error::Internal(format!("bilinear upsampling gradient: {e}")))
}

/// (N, T, rest...) as (N * T, rest...).
fn fold_time(x: &ArrayD<f32>, name: &str) -> Result<ArrayD<f32>> {
    if x.ndim() < 2 {
        return Err(Error::Internal(format!(
            "layer '{name}': TimeDistributed expects (N, T, ...) values, got {:?}",
            x.shape()
        )));
    }
    let mut dims = vec![x.shape()[0] * x.shape()[1]];
    dims.extend_from_slice(&x.shape()[2..]);
    x.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&dims))
        .map_err(|e| Error::Internal(format!("layer '{name}': TimeDistributed fold: {e}")))
}

/// TimeDistributed backward: the inner op's rule on the N*T folded items (it adds its
/// parameters' gradients summed over every timestep), and dx given back its time axis.
pub(super) fn time_distributed(
    inner: &Op,
    io: &NodeIo,
    dy: &ArrayD<f32>,
    grads: &mut ParamGrads,
) -> Result<Option<ArrayD<f32>>> {
    let node = io.node;
    let x = io.input(0)?;
    let inner_node = Node {
        name: node.name.clone(),
        class: node.class.clone(),
        op: inner.clone(),
        inputs: Vec::new(),
        mask: None,
        outputs: Vec::new(),
    };
    let inputs = [Tensor::F32(fold_time(x, &node.name)?)];
    let outputs = [Tensor::F32(fold_time(io.output(0)?, &node.name)?)];
    let inner_io = NodeIo {
        graph: io.graph,
        node: &inner_node,
        inputs: &[&inputs[0]],
        outputs: &[&outputs[0]],
        mask: None,
        saved: &None,
        needs: io.needs,
    };
    let dys = [Some(fold_time(dy, &node.name)?)];
    let mut dxs = backward(&inner_io, &dys, grads)?;
    let Some(dx) = dxs.pop().flatten() else {
        return Ok(None);
    };
    dx.into_shape_with_order(x.raw_dim())
        .map_err(|e| {
            Error::Internal(format!(
                "layer '{}': TimeDistributed unfold: {e}",
                node.name
            ))
        })
        .map(Some)
}
