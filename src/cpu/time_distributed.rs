//! TimeDistributed(Conv2D / pooling) on the CPU: (N, T, H, W, C) is run as N*T images.

use ndarray::{ArrayD, Axis};

use super::{conv2d, pool2d, reshape, to4, ConvArgs};
use crate::error::{Error, Result};
use crate::graph::{Op, ParamStore, PoolOp};

/// Runs `inner` on every timestep of `x` (N, T, ...); `out_dims` is the node's output shape
/// with the batch axis.
pub(super) fn run(
    inner: &Op,
    params: &ParamStore,
    x: ArrayD<f32>,
    out_dims: &[usize],
    name: &str,
) -> Result<ArrayD<f32>> {
    if x.ndim() < 2 {
        return Err(Error::Internal(format!(
            "layer '{name}' expects (N, T, ...) input"
        )));
    }
    let mut folded = vec![x.shape()[0] * x.shape()[1]];
    folded.extend_from_slice(&x.shape()[2..]);
    let x = reshape(x, &folded)?;
    let y = match inner {
        Op::Conv2d(c) => conv2d(&ConvArgs::new(c, params), &to4(x, name)?).into_dyn(),
        Op::Pool2d(p) => pool2d(p, &to4(x, name)?).into_dyn(),
        Op::GlobalPool2d { op, .. } => {
            let x4 = to4(x, name)?;
            match op {
                PoolOp::Max => x4
                    .fold_axis(Axis(1), f32::NEG_INFINITY, |a, b| a.max(*b))
                    .fold_axis(Axis(1), f32::NEG_INFINITY, |a, b| a.max(*b)),
                PoolOp::Average => {
                    let hw = (x4.shape()[1] * x4.shape()[2]) as f32;
                    x4.sum_axis(Axis(1)).sum_axis(Axis(1)) / hw
                }
            }
            .into_dyn()
        }
        other => {
            return Err(Error::Internal(format!(
                "layer '{name}': TimeDistributed cannot run a {} op",
                other.name()
            )))
        }
    };
    reshape(y, out_dims)
}
