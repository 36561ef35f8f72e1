//! ConvLSTM1D and ConvLSTM2D (inference; no mask, no states in or out).

use serde_json::Value;

use crate::error::Result;
use crate::graph::*;
use crate::keras::build::Builder;
use crate::keras::fields::{as_usize, LayerConfig};

/// A Keras n-tuple field (`kernel_size`, `strides`, `dilation_rate`) of a 1-D or 2-D layer as
/// (height, width); a 1-D layer has height 1.
fn spatial(cfg: &LayerConfig, field: &str, one_d: bool, default: usize) -> Result<[usize; 2]> {
    let bad = |v: &Value| cfg.error(field, format!("expected positive integers, found {v}"));
    let values: Vec<usize> = match cfg.get(field) {
        None => vec![default; if one_d { 1 } else { 2 }],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| as_usize(i).filter(|&n| n > 0).ok_or_else(|| bad(i)))
            .collect::<Result<_>>()?,
        Some(v) => {
            let n = as_usize(v).filter(|&n| n > 0).ok_or_else(|| bad(v))?;
            vec![n; if one_d { 1 } else { 2 }]
        }
    };
    match (one_d, values.as_slice()) {
        (true, [w]) => Ok([1, *w]),
        (false, [h, w]) => Ok([*h, *w]),
        _ => Err(cfg.error(
            field,
            format!("expected {} values", if one_d { 1 } else { 2 }),
        )),
    }
}

impl Builder<'_> {
    pub(super) fn conv_lstm(
        &mut self,
        cfg: &LayerConfig,
        x: &ValueInfo,
        mask: Option<ValueId>,
    ) -> Result<Op> {
        let one_d = cfg.class == "ConvLSTM1D";
        cfg.require_channels_last()?;
        for (field, what) in [
            ("stateful", "stateful RNNs are not supported"),
            ("return_state", "return_state is not supported for ConvLSTM"),
        ] {
            if cfg.bool_or(field, false)? {
                return Err(cfg.unsupported(field, &Value::Bool(true), what));
            }
        }
        if mask.is_some() {
            return Err(cfg.error("mask", "a masked ConvLSTM is not supported"));
        }
        let (t, h, w, c) = match (one_d, x.shape.as_slice()) {
            (true, &[t, w, c]) => (t, 1, w, c),
            (false, &[t, h, w, c]) => (t, h, w, c),
            (_, other) => {
                return Err(cfg.error(
                    "input_shape",
                    format!(
                        "expects {} input, got {other:?}",
                        if one_d { "(T, W, C)" } else { "(T, H, W, C)" }
                    ),
                ))
            }
        };
        if spatial(cfg, "dilation_rate", one_d, 1)? != [1, 1] {
            return Err(cfg.unsupported(
                "dilation_rate",
                &cfg.get("dilation_rate").cloned().unwrap_or_default(),
                "only 1 is supported",
            ));
        }
        let filters = cfg.usize("filters")?;
        if filters == 0 {
            return Err(cfg.error("filters", "must be positive"));
        }
        let kernel = spatial(cfg, "kernel_size", one_d, 1)?;
        let strides = spatial(cfg, "strides", one_d, 1)?;
        let padding = cfg.padding()?;
        let window = Window2d::new(kernel, strides, padding, [h, w]);
        if window.out_hw.contains(&0) {
            return Err(cfg.error(
                "kernel_size",
                format!("kernel {kernel:?} does not fit the input {:?}", x.shape),
            ));
        }
        let recurrent_window = Window2d::new(kernel, [1, 1], Padding::Same, window.out_hw);
        let activation = match cfg.get("activation") {
            None => Activation::Tanh,
            Some(_) => cfg.activation("activation")?,
        };
        let recurrent_activation = match cfg.get("recurrent_activation") {
            None => Activation::Sigmoid,
            Some(_) => cfg.activation("recurrent_activation")?,
        };
        if activation == Activation::Softmax || recurrent_activation == Activation::Softmax {
            return Err(cfg.error(
                "activation",
                "softmax is not supported inside a recurrent cell",
            ));
        }
        let use_bias = cfg.bool_or("use_bias", true)?;
        let g = 4 * filters;
        let shape = |rows: usize| {
            if one_d {
                vec![kernel[1], rows, g]
            } else {
                vec![kernel[0], kernel[1], rows, g]
            }
        };
        let mut specs = vec![("kernel", shape(c)), ("recurrent_kernel", shape(filters))];
        if use_bias {
            specs.push(("bias", vec![g]));
        }
        let p = self.params(cfg, &["cell"], &specs)?;
        Ok(Op::ConvLstm(Box::new(ConvLstm {
            filters,
            timesteps: t,
            in_channels: c,
            one_d,
            window,
            recurrent_window,
            kernel: p[0],
            recurrent_kernel: p[1],
            bias: p.get(2).copied(),
            activation,
            recurrent_activation,
            return_sequences: cfg.bool_or("return_sequences", false)?,
            go_backwards: cfg.bool_or("go_backwards", false)?,
            dropout: cfg.f32_or("dropout", 0.0)?,
            recurrent_dropout: cfg.f32_or("recurrent_dropout", 0.0)?,
        })))
    }
}
