//! Backward of the ops that only move or scale values: Reshape (and Flatten), Rescaling.

use ndarray::{ArrayD, Axis, IxDyn};

use crate::error::{Error, Result};

/// Reshape's gradient is dy in the input's shape (row-major order is kept).
pub(super) fn reshape_back(dy: ArrayD<f32>, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    dy.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(x.shape()))
        .map_err(|e| Error::Internal(format!("reshape backward: {e}")))
}

/// y = x * scale + offset: dx = dy * scale (per last-axis channel, or one scalar).
pub(super) fn rescaling(scale: &[f32], mut dy: ArrayD<f32>) -> ArrayD<f32> {
    let last = dy.ndim() - 1;
    for mut lane in dy.lanes_mut(Axis(last)) {
        for (c, v) in lane.iter_mut().enumerate() {
            *v *= scale[if scale.len() == 1 { 0 } else { c }];
        }
    }
    dy
}
