//! TimeDistributed(Conv2D / pooling / a recurrent layer) on the CPU: (N, T, H, W, C) is run as N*T images.

use ndarray::ArrayD;

use super::{conv, reshape};
use crate::error::{Error, Result};
use crate::graph::{Op, ParamStore};

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
    let items = x.shape()[0] * x.shape()[1];
    let mut folded = vec![items];
    folded.extend_from_slice(&x.shape()[2..]);
    let x = reshape(x, &folded)?;
    let mut folded_out = vec![items];
    folded_out.extend_from_slice(out_dims.get(2..).unwrap_or_default());
    let y = match inner {
        Op::Conv(c) => conv::conv(c, params, &x, None, &folded_out)?,
        Op::Pool(p) => conv::pool(p, &x, &folded_out)?,
        Op::GlobalPool { op, .. } => conv::global_pool(*op, &x, None, &folded_out)?,
        Op::Recurrent(r) => {
            let x3 = x.into_dimensionality::<ndarray::Ix3>().map_err(|_| {
                Error::Internal(format!("layer '{name}' expects (N, T, steps, F) input"))
            })?;
            let mut outs = super::recurrent::run(r, params, &x3, None, &[]);
            if outs.is_empty() {
                return Err(Error::Internal(format!("layer '{name}': no output")));
            }
            outs.swap_remove(0)
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
