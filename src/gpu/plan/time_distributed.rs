//! TimeDistributed(Conv2D / pooling): the inner op's lowering with the time axis folded into
//! the batch (the activation layout (N, T, ...) is already (N*T, ...) row-major).

use super::{layer_error, pool_name, to_u32, BufRef, Builder};
use crate::error::Result;
use crate::gpu::kernels::Kernel;
use crate::graph::{Op as GraphOp, PoolOp};

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
            GraphOp::Conv2d(c) => self.conv2d(i, c, x),
            GraphOp::Pool2d(p) => self.pool2d(i, p.op, &p.window, p.channels, x),
            GraphOp::GlobalPool2d { op, .. } => self.global_pool_items(i, *op, x),
            other => Err(layer_error(
                self.layer(i),
                "layer",
                format!("TimeDistributed cannot run a {} op", other.name()),
            )),
        };
        self.batch = batch;
        out
    }

    /// Global pooling of every (H, W, C) item of a (T, H, W, C) value, `self.batch` = N*T.
    fn global_pool_items(&mut self, i: usize, op: PoolOp, x: BufRef) -> Result<BufRef> {
        let l = self.layer(i);
        let [h, w, c] = match self.in_shape(i) {
            &[_, h, w, c] => [h, w, c],
            other => {
                return Err(layer_error(
                    l,
                    "input_shape",
                    format!("{other:?} is not (time, height, width, channels)"),
                ))
            }
        };
        let mut params = vec![0u32; 16];
        params[0] = to_u32(l, "batch", self.batch)?;
        params[1] = to_u32(l, "height", h)?;
        params[2] = to_u32(l, "width", w)?;
        params[3] = to_u32(l, "channels", c)?;
        params[12] = u32::from(op == PoolOp::Max);
        let out_len = self.batch * c;
        let out = self.alloc(i, "output", out_len);
        let detail = format!("{} over {h}x{w} positions per step", pool_name(op));
        self.dispatch(
            i,
            Kernel::GlobalPool2d,
            vec![x, out],
            params,
            Self::linear_workgroups(out_len),
            1,
            detail,
        )?;
        Ok(out)
    }
}
