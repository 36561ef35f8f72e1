//! TimeDistributed(layer): the inner layer on every timestep. Dense, Flatten, Reshape,
//! activations and dropout act on trailing axes, so they become their own op over (T, ...);
//! Conv2D, pooling and recurrent layers become `Op::TimeDistributed`, which folds time into the
//! batch.

use serde_json::Value;

use crate::error::Result;
use crate::graph::*;
use crate::keras::build::Builder;
use crate::keras::fields::LayerConfig;

impl Builder<'_> {
    pub(super) fn time_distributed(
        &mut self,
        cfg: &LayerConfig,
        x: ValueId,
        mask: Option<ValueId>,
    ) -> Result<Vec<ValueId>> {
        let entry = cfg
            .get("layer")
            .ok_or_else(|| cfg.error("layer", "missing"))?;
        let inner = LayerConfig::new(cfg.path, entry)?;
        let info = self.info(x).clone();
        let Some((&steps, item)) = info.shape.split_first() else {
            return Err(cfg.error(
                "input_shape",
                "expects (timesteps, ...) input, got a scalar per item",
            ));
        };
        if item.is_empty() {
            return Err(cfg.error(
                "input_shape",
                format!(
                    "expects (timesteps, features...) input, got {:?}",
                    info.shape
                ),
            ));
        }
        let item = ValueInfo::new(item.to_vec(), info.dtype);
        self.weights_owner = Some((cfg.name.clone(), vec!["layer".to_string()]));
        let op = self.time_distributed_op(cfg, &inner, &item, steps);
        self.weights_owner = None;
        let y = self.add1(cfg, op?, &[x], None)?;
        // TimeDistributed supports masking: its output keeps the input's mask.
        if let Some(m) = mask {
            self.masks.insert(y, m);
        }
        Ok(vec![y])
    }

    fn time_distributed_op(
        &mut self,
        cfg: &LayerConfig,
        inner: &LayerConfig,
        item: &ValueInfo,
        steps: usize,
    ) -> Result<Op> {
        let folded = |op: Op| Op::TimeDistributed {
            inner: Box::new(op),
        };
        Ok(match inner.class.as_str() {
            "Dense" => self.dense(inner, item)?,
            "Activation" | "ReLU" | "LeakyReLU" | "ELU" | "Softmax" => {
                Op::Activation(self.activation_layer(inner, item)?)
            }
            "Dropout" | "SpatialDropout1D" | "SpatialDropout2D" | "GaussianNoise"
            | "GaussianDropout" | "AlphaDropout" => match self.dropout(inner, item)? {
                // The op runs over (T, ...): the item's axes move up by one.
                Op::Dropout(mut d) => {
                    d.shared_axes.iter_mut().for_each(|a| *a += 1);
                    Op::Dropout(d)
                }
                _ => return Err(inner.error("class_name", "not a dropout layer")),
            },
            "Flatten" => {
                inner.require_channels_last()?;
                Op::Reshape {
                    shape: vec![steps, item.elements()],
                }
            }
            "Reshape" => match self.reshape(inner, item)? {
                Op::Reshape { shape } => Op::Reshape {
                    shape: std::iter::once(steps).chain(shape).collect(),
                },
                _ => return Err(inner.error("target_shape", "not a reshape")),
            },
            "Conv1D" | "Convolution1D" => folded(self.conv(inner, item, 1)?),
            "Conv2D" | "Convolution2D" => folded(self.conv(inner, item, 2)?),
            "Conv3D" | "Convolution3D" => folded(self.conv(inner, item, 3)?),
            "MaxPooling1D" | "MaxPool1D" => folded(self.pool(inner, item, 1, PoolOp::Max)?),
            "MaxPooling2D" | "MaxPool2D" => folded(self.pool(inner, item, 2, PoolOp::Max)?),
            "MaxPooling3D" | "MaxPool3D" => folded(self.pool(inner, item, 3, PoolOp::Max)?),
            "AveragePooling1D" | "AvgPool1D" => {
                folded(self.pool(inner, item, 1, PoolOp::Average)?)
            }
            "AveragePooling2D" | "AvgPool2D" => {
                folded(self.pool(inner, item, 2, PoolOp::Average)?)
            }
            "AveragePooling3D" | "AvgPool3D" => {
                folded(self.pool(inner, item, 3, PoolOp::Average)?)
            }
            "GlobalMaxPooling1D" | "GlobalMaxPool1D" => {
                folded(self.global_pool(inner, item, 1, PoolOp::Max)?)
            }
            "GlobalMaxPooling2D" | "GlobalMaxPool2D" => {
                folded(self.global_pool(inner, item, 2, PoolOp::Max)?)
            }
            "GlobalMaxPooling3D" | "GlobalMaxPool3D" => {
                folded(self.global_pool(inner, item, 3, PoolOp::Max)?)
            }
            "GlobalAveragePooling1D" | "GlobalAvgPool1D" => {
                folded(self.global_pool(inner, item, 1, PoolOp::Average)?)
            }
            "GlobalAveragePooling2D" | "GlobalAvgPool2D" => {
                folded(self.global_pool(inner, item, 2, PoolOp::Average)?)
            }
            "GlobalAveragePooling3D" | "GlobalAvgPool3D" => {
                folded(self.global_pool(inner, item, 3, PoolOp::Average)?)
            }
            "SimpleRNN" | "LSTM" | "GRU" | "Bidirectional" => {
                let r = if inner.class == "Bidirectional" {
                    self.bidirectional(inner, item)?
                } else {
                    self.recurrent(inner, item)?
                };
                if r.return_state {
                    return Err(inner.error(
                        "return_state",
                        "a recurrent layer inside TimeDistributed must return one tensor",
                    ));
                }
                folded(Op::Recurrent(Box::new(r)))
            }
            other => {
                return Err(cfg.unsupported(
                    "layer",
                    &Value::from(other),
                    "TimeDistributed wraps Dense, Conv1D/2D/3D, pooling, SimpleRNN/LSTM/GRU/Bidirectional, Flatten, Reshape, activations and dropout",
                ))
            }
        })
    }
}
