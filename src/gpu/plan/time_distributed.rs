//! TimeDistributed(Conv2D / pooling / a recurrent layer): the inner op's lowering with the time axis folded into
//! the batch (the activation layout (N, T, ...) is already (N*T, ...) row-major).

use super::{layer_error, BufRef, Builder};
use crate::error::Result;
use crate::graph::Op as GraphOp;

impl Builder<'_> {
    pub(super) fn time_distributed(
        &mut self,
        i: usize,
        inner: &GraphOp,
        x: BufRef,
    ) -> Result<BufRef> {
        let steps = self.in_shape(i).first().copied().unwrap_or(1);
        let batch = self.batch;
        self.batch = batch * steps;
        let out = match inner {
            GraphOp::Conv(c) => self.conv(i, c, x),
            GraphOp::Pool(p) => self.pool(i, p, x),
            GraphOp::GlobalPool { op, rank, .. } => self.global_pool(i, *op, *rank, x),
            GraphOp::Recurrent(r) => self.recurrent(i, r, x).and_then(|outs| {
                outs.into_iter().next().ok_or_else(|| {
                    layer_error(self.layer(i), "layer", "the recurrent layer has no output")
                })
            }),
            other => Err(layer_error(
                self.layer(i),
                "layer",
                format!("TimeDistributed cannot run a {} op", other.name()),
            )),
        };
        self.batch = batch;
        out
    }
}
