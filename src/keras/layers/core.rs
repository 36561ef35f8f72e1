//! Dense, Reshape, Rescaling, the activation layers and Embedding.

use serde_json::Value;

use crate::error::Result;
use crate::graph::*;
use crate::keras::build::Builder;
use crate::keras::fields::LayerConfig;

impl Builder<'_> {
    pub(super) fn reshape(&mut self, cfg: &LayerConfig, x: &ValueInfo) -> Result<Op> {
        let target = cfg
            .get("target_shape")
            .and_then(Value::as_array)
            .ok_or_else(|| cfg.error("target_shape", "missing"))?;
        let total = x.elements();
        let mut dims = Vec::new();
        let mut free = None;
        for (i, d) in target.iter().enumerate() {
            match d.as_i64() {
                Some(-1) if free.is_none() => {
                    free = Some(i);
                    dims.push(1);
                }
                Some(n) if n > 0 => dims.push(n as usize),
                _ => {
                    return Err(cfg.unsupported(
                        "target_shape",
                        &Value::Array(target.clone()),
                        "positive sizes and at most one -1",
                    ))
                }
            }
        }
        let known: usize = dims.iter().product();
        if let Some(i) = free {
            if known == 0 || !total.is_multiple_of(known) {
                return Err(cfg.error(
                    "target_shape",
                    format!("cannot reshape {:?} to {target:?}", x.shape),
                ));
            }
            dims[i] = total / known;
        }
        if dims.iter().product::<usize>() != total {
            return Err(cfg.error(
                "target_shape",
                format!("cannot reshape {:?} to {target:?}", x.shape),
            ));
        }
        Ok(Op::Reshape { shape: dims })
    }

    pub(super) fn dense(&mut self, cfg: &LayerConfig, x: &ValueInfo) -> Result<Op> {
        cfg.require_absent_or("lora_rank", &[], "LoRA layers are not supported")?;
        let units = cfg.usize("units")?;
        let use_bias = cfg.bool_or("use_bias", true)?;
        let activation = cfg.activation("activation")?;
        let Some(&in_features) = x.shape.last() else {
            return Err(cfg.error(
                "input_shape",
                "Dense needs an input with at least one feature axis",
            ));
        };
        let (kernel, bias) =
            self.kernel_and_bias(cfg, vec![in_features, units], units, use_bias)?;
        Ok(Op::Dense(Dense {
            units,
            in_features,
            kernel,
            bias,
            activation,
        }))
    }

    pub(super) fn rescaling(&mut self, cfg: &LayerConfig) -> Result<Op> {
        let read = |field: &str, default: f32| -> Result<Vec<f32>> {
            match cfg.get(field) {
                None => Ok(vec![default]),
                Some(Value::Array(items)) => {
                    let vals: Option<Vec<f32>> =
                        items.iter().map(|v| v.as_f64().map(|x| x as f32)).collect();
                    vals.ok_or_else(|| cfg.error(field, "expected numbers"))
                }
                Some(_) => Ok(vec![cfg.f32_or(field, default)?]),
            }
        };
        Ok(Op::Rescaling {
            scale: read("scale", 1.0)?,
            offset: read("offset", 0.0)?,
        })
    }

    /// Activation, ReLU, LeakyReLU and ELU layers (Softmax is in `norm.rs`).
    pub(super) fn activation_layer(
        &mut self,
        cfg: &LayerConfig,
        _x: &ValueInfo,
    ) -> Result<Activation> {
        Ok(match cfg.class.as_str() {
            "ReLU" => {
                let max_value = match cfg.get("max_value") {
                    None => None,
                    Some(_) => Some(cfg.f32_or("max_value", 0.0)?),
                };
                Activation::Relu {
                    negative_slope: cfg.f32_or("negative_slope", 0.0)?,
                    max_value,
                    threshold: cfg.f32_or("threshold", 0.0)?,
                }
            }
            "LeakyReLU" => {
                // Keras 3 calls it negative_slope (default 0.3); Keras 2 called it alpha.
                let slope = match cfg.get("negative_slope") {
                    Some(_) => cfg.f32_or("negative_slope", 0.3)?,
                    None => cfg.f32_or("alpha", 0.3)?,
                };
                Activation::Relu {
                    negative_slope: slope,
                    max_value: None,
                    threshold: 0.0,
                }
            }
            "ELU" => Activation::Elu {
                alpha: cfg.f32_or("alpha", 1.0)?,
            },
            _ => cfg.activation("activation")?,
        })
    }

    /// Embedding reads token ids from a model input; with `mask_zero` its output carries the
    /// padding mask `ids != 0`.
    pub(super) fn embedding(&mut self, cfg: &LayerConfig, x: ValueId) -> Result<Vec<ValueId>> {
        cfg.require_absent_or("lora_rank", &[], "LoRA layers are not supported")?;
        let ids = self.as_ids(cfg, x)?;
        if self.info(ids).shape.len() != 1 {
            return Err(cfg.error(
                "input_shape",
                format!(
                    "expects token ids (T,) input, got shape {:?} (without the batch axis)",
                    self.info(ids).shape
                ),
            ));
        }
        let input_dim = cfg.usize("input_dim")?;
        let output_dim = cfg.usize("output_dim")?;
        let mask_zero = cfg.bool_or("mask_zero", false)?;
        let p = self.params(cfg, &[], &[("embeddings", vec![input_dim, output_dim])])?;
        let op = Op::Embedding(Embedding {
            input_dim,
            output_dim,
            table: p[0],
            mask_zero,
        });
        let y = self.add1(cfg, op, &[ids], None)?;
        if mask_zero {
            let mask = self.add_padding_mask(cfg, ids, "mask_zero")?;
            self.masks.insert(y, mask);
        }
        Ok(vec![y])
    }
}

impl Builder<'_> {
    /// Dropout, SpatialDropout1D/2D/3D, GaussianNoise, GaussianDropout, AlphaDropout: the
    /// identity at inference; their rate and `noise_shape` matter in training.
    pub(crate) fn dropout(&mut self, cfg: &LayerConfig, x: &ValueInfo) -> Result<Op> {
        let rank = x.shape.len();
        let (kind, rate) = match cfg.class.as_str() {
            "GaussianNoise" => (
                DropoutKind::GaussianNoise {
                    stddev: cfg.f32_or("stddev", 0.0)?,
                },
                0.0,
            ),
            "GaussianDropout" => (DropoutKind::GaussianDropout, cfg.f32_or("rate", 0.0)?),
            "AlphaDropout" => (DropoutKind::AlphaDropout, cfg.f32_or("rate", 0.0)?),
            _ => (DropoutKind::Dropout, cfg.f32_or("rate", 0.0)?),
        };
        if !(0.0..1.0).contains(&rate) {
            return Err(cfg.error("rate", format!("{rate} is not in [0, 1)")));
        }
        // SpatialDropoutND drops whole channels: one draw shared over the N spatial axes.
        let spatial = match cfg.class.as_str() {
            "SpatialDropout1D" => Some(1),
            "SpatialDropout2D" => Some(2),
            "SpatialDropout3D" => Some(3),
            _ => None,
        };
        let shared_axes = match (spatial, cfg.get("noise_shape")) {
            (Some(n), _) => {
                cfg.require_channels_last()?;
                if rank != n + 1 {
                    return Err(cfg.error(
                        "input_shape",
                        format!("expects {n} spatial axes and channels, got {:?}", x.shape),
                    ));
                }
                (0..n).collect()
            }
            (None, None) => Vec::new(),
            (None, Some(Value::Array(dims))) if dims.len() == rank + 1 => {
                // (batch, ...): a 1 on an item axis shares the draw along it; None or the full
                // size does not. A shared batch axis is not supported.
                let mut shared = Vec::new();
                for (i, d) in dims.iter().enumerate() {
                    match (i, d.as_u64()) {
                        (0, Some(1)) => {
                            return Err(cfg.unsupported(
                                "noise_shape",
                                &Value::Array(dims.clone()),
                                "one draw per batch item",
                            ))
                        }
                        (0, _) => {}
                        (_, Some(1)) if x.shape[i - 1] != 1 => shared.push(i - 1),
                        (_, None) | (_, Some(_)) => {}
                    }
                }
                shared
            }
            (None, Some(v)) => {
                return Err(cfg.unsupported(
                    "noise_shape",
                    v,
                    "a list with one entry per axis, batch included",
                ))
            }
        };
        Ok(Op::Dropout(Dropout {
            kind,
            rate,
            shared_axes,
        }))
    }
}
