//! Conv2D and the 2-D poolings.

use serde_json::Value;

use crate::error::Result;
use crate::graph::*;
use crate::keras::build::Builder;
use crate::keras::fields::LayerConfig;

impl Builder<'_> {
    fn require_rank(cfg: &LayerConfig, x: &ValueInfo, rank: usize, what: &str) -> Result<()> {
        if x.shape.len() != rank {
            return Err(cfg.error(
                "input_shape",
                format!(
                    "expects {what} input, got shape {:?} (without the batch axis)",
                    x.shape
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn conv2d(&mut self, cfg: &LayerConfig, x: &ValueInfo) -> Result<Op> {
        cfg.require_channels_last()?;
        Self::require_rank(cfg, x, 3, "(H, W, C)")?;
        let dilation = cfg.pair_or("dilation_rate", [1, 1])?;
        if dilation != [1, 1] {
            return Err(cfg.unsupported(
                "dilation_rate",
                &cfg.get("dilation_rate").cloned().unwrap_or_default(),
                "only 1 is supported",
            ));
        }
        cfg.require_absent_or("groups", &[Value::from(1)], "only groups=1 is supported")?;
        cfg.require_absent_or("lora_rank", &[], "LoRA layers are not supported")?;
        let filters = cfg.usize("filters")?;
        let kernel_size = cfg.pair("kernel_size")?;
        let strides = cfg.pair_or("strides", [1, 1])?;
        let padding = cfg.padding()?;
        let use_bias = cfg.bool_or("use_bias", true)?;
        let activation = cfg.activation("activation")?;
        let in_channels = x.shape[2];
        let window = Window2d::new(kernel_size, strides, padding, [x.shape[0], x.shape[1]]);
        if window.out_hw.contains(&0) {
            return Err(cfg.error(
                "kernel_size",
                format!(
                    "kernel {kernel_size:?} does not fit the input {:?} with 'valid' padding",
                    x.shape
                ),
            ));
        }
        let mut specs = vec![(
            "kernel",
            vec![kernel_size[0], kernel_size[1], in_channels, filters],
        )];
        if use_bias {
            specs.push(("bias", vec![filters]));
        }
        let p = self.params(cfg, &[], &specs)?;
        Ok(Op::Conv2d(Conv2d {
            filters,
            window,
            in_channels,
            kernel: p[0],
            bias: p.get(1).copied(),
            activation,
        }))
    }

    pub(super) fn pool2d(&mut self, cfg: &LayerConfig, x: &ValueInfo, op: PoolOp) -> Result<Op> {
        cfg.require_channels_last()?;
        Self::require_rank(cfg, x, 3, "(H, W, C)")?;
        let pool = cfg.pair_or("pool_size", [2, 2])?;
        let strides = cfg.pair_or("strides", pool)?;
        let padding = cfg.padding()?;
        let window = Window2d::new(pool, strides, padding, [x.shape[0], x.shape[1]]);
        if window.out_hw.contains(&0) {
            return Err(cfg.error(
                "pool_size",
                format!(
                    "pool {pool:?} does not fit the input {:?} with 'valid' padding",
                    x.shape
                ),
            ));
        }
        Ok(Op::Pool2d(Pool2d {
            op,
            window,
            channels: x.shape[2],
        }))
    }

    pub(super) fn global_pool2d(&mut self, cfg: &LayerConfig, op: PoolOp) -> Result<Op> {
        cfg.require_channels_last()?;
        let keepdims = cfg.bool_or("keepdims", false)?;
        Ok(Op::GlobalPool2d { op, keepdims })
    }
}
