//! Backward of the spatial-shape ops: zero padding (dx is dy cropped), cropping (dx is dy
//! padded with zeros), nearest upsampling (each input gets the sum of its copies), bilinear
//! upsampling (TensorFlow's ResizeBilinearGrad: each output's gradient split between its four
//! inputs with the forward's half-pixel weights), and TimeDistributed (the inner op's rule on
//! the N*T items; around a recurrent layer the training forward runs folded too, so the inner
//! tape is the node's own).

use ndarray::{ArrayD, Axis, IxDyn};
use rayon::prelude::*;

use super::conv::flat;
use super::{as_float, backward, recurrent, Forward, NodeIo};
use crate::cpu::merge::strided_copy;
use crate::cpu::Tensor;
use crate::error::{Error, Result};
use crate::graph::merge::{bilinear_scale, bilinear_tap, crop_copy, pad_copy};
use crate::graph::*;
use crate::train::{ParamGrads, Rng};

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

/// The op `inner` as a node of its own, no graph edges: what the inner rules read of a node.
fn inner_node(node: &Node, inner: &Op) -> Node {
    Node {
        name: node.name.clone(),
        class: node.class.clone(),
        op: inner.clone(),
        inputs: Vec::new(),
        mask: None,
        outputs: Vec::new(),
    }
}

/// TimeDistributed(recurrent) training forward: the recurrent layer's training forward on the
/// N*T folded sequences (no mask, as at inference), its first output given back its time axis,
/// and its tape kept as this node's, for `time_distributed` to hand back to the inner rule.
pub(super) fn time_distributed_forward(
    inner: &Op,
    graph: &Graph,
    node: &Node,
    inputs: &[Tensor],
    rng: &mut Rng,
) -> Result<Forward> {
    let Op::Recurrent(r) = inner else {
        return Err(Error::Internal(format!(
            "layer '{}': TimeDistributed training forward of a {} op",
            node.name,
            inner.name()
        )));
    };
    let x = as_float(&inputs[0], node)?;
    let (n, t) = (x.shape()[0], x.shape().get(1).copied().unwrap_or(0));
    let folded = [Tensor::F32(fold_time(x, &node.name)?)];
    let fw = recurrent::forward(
        r,
        &graph.params,
        &inner_node(node, inner),
        &folded,
        None,
        rng,
    )?;
    let Some(Tensor::F32(y)) = fw.outputs.into_iter().next() else {
        return Err(Error::Internal(format!(
            "layer '{}': the recurrent layer gave no float output",
            node.name
        )));
    };
    let mut dims = vec![n, t];
    dims.extend_from_slice(&y.shape()[1..]);
    let y = y
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&dims))
        .map_err(|e| {
            Error::Internal(format!(
                "layer '{}': TimeDistributed unfold: {e}",
                node.name
            ))
        })?;
    Ok(Forward {
        outputs: vec![Tensor::F32(y)],
        saved: fw.saved,
        state: fw.state,
    })
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
    let inner_node = inner_node(node, inner);
    let inputs = [Tensor::F32(fold_time(x, &node.name)?)];
    let outputs = [Tensor::F32(fold_time(io.output(0)?, &node.name)?)];
    let inner_io = NodeIo {
        graph: io.graph,
        node: &inner_node,
        inputs: &[&inputs[0]],
        outputs: &[&outputs[0]],
        mask: None,
        // A recurrent layer's tape from `time_distributed_forward`; None for the others.
        saved: io.saved,
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

#[cfg(test)]
mod tests {
    use super::super::check::{check_node, uniform};
    use super::super::testing::{distinct, one_node};
    use crate::cpu::Tensor;
    use crate::graph::*;

    fn check(g: &Graph, shape: &[usize], what: &str) {
        let x = Tensor::F32(uniform(shape, 11, 1.0));
        let r = std::panic::catch_unwind(|| check_node(g, 0, vec![x], None, 1e-2));
        assert!(r.is_ok(), "{what} {shape:?}");
    }

    #[test]
    fn pad_and_crop_backward_match_finite_differences() {
        let cases: [(&[usize], Vec<[usize; 2]>); 3] = [
            (&[7, 3], vec![[2, 1], [0, 0]]),
            (&[5, 4, 3], vec![[1, 2], [0, 3], [0, 0]]),
            (&[3, 4, 5, 2], vec![[1, 0], [2, 1], [0, 2], [0, 0]]),
        ];
        for (i, (item, pads)) in cases.into_iter().enumerate() {
            let mut shape = vec![1 + i];
            shape.extend(item);
            let g = one_node(item, |_| Op::Pad { pads: pads.clone() });
            check(&g, &shape, "padding");
            let g = one_node(item, |_| Op::Crop {
                crops: pads.clone(),
            });
            check(&g, &shape, "cropping");
        }
    }

    #[test]
    fn upsampling_backward_matches_finite_differences() {
        let nearest: [(&[usize], &[usize]); 4] = [
            (&[5, 3], &[3, 1]),
            (&[3, 4, 2], &[2, 3, 1]),
            (&[3, 5, 3], &[1, 2, 1]),
            (&[2, 3, 2, 3], &[2, 1, 2, 1]),
        ];
        for (i, (item, factors)) in nearest.into_iter().enumerate() {
            let g = one_node(item, |_| Op::Upsample {
                factors: factors.to_vec(),
                interpolation: Interpolation::Nearest,
            });
            let mut shape = vec![3 - i % 3];
            shape.extend(item);
            check(&g, &shape, "nearest upsampling");
        }
        let bilinear: [(&[usize], &[usize]); 3] = [
            (&[3, 4, 2], &[2, 3, 1]),
            (&[5, 3, 3], &[3, 2, 1]),
            (&[1, 2, 5], &[2, 2, 1]),
        ];
        for (i, (item, factors)) in bilinear.into_iter().enumerate() {
            let g = one_node(item, |_| Op::Upsample {
                factors: factors.to_vec(),
                interpolation: Interpolation::Bilinear,
            });
            let mut shape = vec![1 + i];
            shape.extend(item);
            check(&g, &shape, "bilinear upsampling");
        }
    }

    #[test]
    fn time_distributed_backward_matches_finite_differences() {
        // Conv2D over 3 steps of (5, 4, 3) images, kernel and bias summed over every step.
        let window = Window::new(&[3, 2], &[2, 1], &[1, 1], Padding::Same, &[5, 4]);
        let g = one_node(&[3, 5, 4, 3], |p| Op::TimeDistributed {
            inner: Box::new(Op::Conv(Conv {
                filters: 2,
                window,
                in_channels: 3,
                groups: 1,
                kernel: p.add("n/kernel", uniform(&[3, 2, 3, 2], 1, 0.5), true),
                bias: Some(p.add("n/bias", uniform(&[2], 2, 0.5), true)),
                activation: Activation::Linear,
            })),
        });
        check(&g, &[2, 3, 5, 4, 3], "TimeDistributed(Conv2D)");

        let window = Window::new(&[2, 2], &[2, 2], &[1, 1], Padding::Valid, &[5, 4]);
        let g = one_node(&[3, 5, 4, 3], |_| Op::TimeDistributed {
            inner: Box::new(Op::Pool(Pool {
                op: PoolOp::Max,
                window,
                channels: 3,
            })),
        });
        let x = Tensor::F32(distinct(&[2, 3, 5, 4, 3]));
        check_node(&g, 0, vec![x], None, 1e-2);

        let g = one_node(&[4, 5, 3], |_| Op::TimeDistributed {
            inner: Box::new(Op::GlobalPool {
                op: PoolOp::Average,
                keepdims: false,
                rank: 1,
            }),
        });
        check(&g, &[3, 4, 5, 3], "TimeDistributed(GlobalAveragePooling1D)");
    }
}
