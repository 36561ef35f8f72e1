//! Dense backward on the last axis of any rank: dW = xᵀ·dy, db = Σ dy, dx = dy·Wᵀ.

use ndarray::{Array2, ArrayD, Axis, IxDyn};

use super::NodeIo;
use crate::cpu::gemm;
use crate::error::{Error, Result};
use crate::graph::{Activation, Dense};
use crate::train::ParamGrads;

pub(super) fn backward(
    d: &Dense,
    io: &NodeIo,
    dy: ArrayD<f32>,
    grads: &mut ParamGrads,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    if d.activation != Activation::Linear {
        return Err(Error::Internal(format!(
            "node '{}': the training graph runs Dense's activation as its own node",
            io.node.name
        )));
    }
    let x = io.input(0)?;
    let rows = x.len() / d.in_features.max(1);
    let x2 = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((rows, d.in_features))
        .map_err(|e| Error::Internal(format!("dense backward input: {e}")))?;
    let dy2 = dy
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((rows, d.units))
        .map_err(|e| Error::Internal(format!("dense backward gradient: {e}")))?;
    let params = io.params();
    if params.param(d.kernel).trainable {
        let mut dw = Array2::<f32>::zeros((d.in_features, d.units));
        gemm::matmul_into(x2.t(), dy2.view(), dw.view_mut());
        grads.add(d.kernel, dw.into_dyn());
    }
    if let Some(b) = d.bias.filter(|&b| params.param(b).trainable) {
        grads.add(b, dy2.sum_axis(Axis(0)).into_dyn());
    }
    if !io.needs[0] {
        return Ok(vec![None]);
    }
    let mut dx = Array2::<f32>::zeros((rows, d.in_features));
    gemm::matmul_into(dy2.view(), params.view2(d.kernel).t(), dx.view_mut());
    let dx = dx
        .into_shape_with_order(IxDyn(x.shape()))
        .map_err(|e| Error::Internal(format!("dense backward output: {e}")))?;
    Ok(vec![Some(dx)])
}
