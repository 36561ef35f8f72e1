//! TimeDistributed around an op that reads one item (Conv2D, pooling, a recurrent layer over
//! each item's own sequence): the time axis is folded
//! into the batch, so the inner op sees (N*T, ...) and its output gets the time axis back.
//! (TimeDistributed around Dense, Flatten, Reshape or an activation needs no wrapper: those ops
//! already act on the trailing axes.)

use super::{Op, ShapeResult};
use crate::graph::params::ParamStore;
use crate::graph::{Shape, ValueInfo};

/// The inner op's shape rule on one timestep's item; returns (steps, inner output info).
pub fn infer(
    inner: &Op,
    input: &ValueInfo,
    params: &ParamStore,
) -> ShapeResult<(usize, ValueInfo)> {
    let Some((&steps, item)) = input.shape.split_first() else {
        return Err("TimeDistributed needs a time axis".into());
    };
    if !supported(inner) {
        return Err(format!("TimeDistributed cannot wrap a {} op", inner.name()));
    }
    let item = ValueInfo::new(item.to_vec(), input.dtype);
    match inner.infer(&[&item], params)?.as_slice() {
        [out] => Ok((steps, out.clone())),
        outs => Err(format!(
            "TimeDistributed needs an op with one output, got {}",
            outs.len()
        )),
    }
}

/// The ops both backends run with the time axis folded into the batch.
pub fn supported(inner: &Op) -> bool {
    match inner {
        Op::Conv(_) | Op::Pool(_) | Op::GlobalPool { .. } => true,
        // One output, no states in or out: each item is a sequence of its own.
        Op::Recurrent(r) => !r.return_state && !r.initial_state,
        _ => false,
    }
}

/// The output shape: the time axis, then the inner op's item shape.
pub fn output_shape(steps: usize, item: &[usize]) -> Shape {
    std::iter::once(steps).chain(item.iter().copied()).collect()
}
