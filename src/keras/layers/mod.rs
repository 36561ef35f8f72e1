//! Keras layer configs -> ops, one file per layer family. Each function reads the layer's
//! options (an unsupported one is an error naming the layer and the field), takes its weights,
//! and adds its node(s); the ops' shape rules give the output shapes.

mod conv;
mod conv_lstm;
mod core;
mod recurrent;
mod time_distributed;

use super::build::Builder;
use super::fields::LayerConfig;
use crate::error::Result;
use crate::graph::*;

/// Layers whose output carries their input's mask unchanged (Keras `supports_masking` layers
/// that do not compute a mask of their own).
fn passes_mask(class: &str) -> bool {
    matches!(
        class,
        "Dropout"
            | "SpatialDropout1D"
            | "Activation"
            | "Dense"
            | "GaussianNoise"
            | "GaussianDropout"
    )
}

impl Builder<'_> {
    /// A layer with one input: builds its op(s) and sets the mask of its output.
    pub(crate) fn single_input_layer(
        &mut self,
        cfg: &LayerConfig,
        x: ValueId,
        mask: Option<ValueId>,
    ) -> Result<Vec<ValueId>> {
        let info = self.info(x).clone();
        let op = match cfg.class.as_str() {
            "InputLayer" => {
                return Err(cfg.error("class_name", "an InputLayer in the middle of the model"))
            }
            "Conv2D" | "Convolution2D" => self.conv2d(cfg, &info)?,
            "MaxPooling2D" | "MaxPool2D" => self.pool2d(cfg, &info, PoolOp::Max)?,
            "AveragePooling2D" | "AvgPool2D" => self.pool2d(cfg, &info, PoolOp::Average)?,
            "GlobalMaxPooling2D" | "GlobalMaxPool2D" => self.global_pool2d(cfg, PoolOp::Max)?,
            "GlobalAveragePooling2D" | "GlobalAvgPool2D" => {
                self.global_pool2d(cfg, PoolOp::Average)?
            }
            "Flatten" => {
                cfg.require_channels_last()?;
                Op::Reshape {
                    shape: vec![info.elements()],
                }
            }
            "Reshape" => self.reshape(cfg, &info)?,
            "Dense" => self.dense(cfg, &info)?,
            "Dropout"
            | "SpatialDropout1D"
            | "SpatialDropout2D"
            | "SpatialDropout3D"
            | "GaussianNoise"
            | "GaussianDropout"
            | "AlphaDropout"
            | "ActivityRegularization" => Op::Identity,
            "Rescaling" => self.rescaling(cfg)?,
            "Activation" | "ReLU" | "LeakyReLU" | "ELU" | "Softmax" => {
                Op::Activation(self.activation_layer(cfg, &info)?)
            }
            "Embedding" => return self.embedding(cfg, x),
            "TimeDistributed" => return self.time_distributed(cfg, x, mask),
            "ConvLSTM1D" | "ConvLSTM2D" => self.conv_lstm(cfg, &info, mask)?,
            "SimpleRNN" | "LSTM" | "GRU" | "Bidirectional" => {
                return self.recurrent_layer(cfg, &[x], mask, mask)
            }
            "Conv1D" | "Conv3D" | "DepthwiseConv2D" | "SeparableConv2D" | "Conv2DTranspose"
            | "BatchNormalization" | "LayerNormalization" | "Masking" | "Attention"
            | "MultiHeadAttention" | "Add" | "Concatenate" | "Multiply" | "RNN" => {
                return Err(cfg.error(
                    "class_name",
                    format!("layer class '{}' is not supported by wgnn", cfg.class),
                ))
            }
            other => {
                return Err(cfg.error("class_name", format!("unknown layer class '{other}'")));
            }
        };
        let node_mask = if op.takes_mask() { mask } else { None };
        let keeps_sequence = match &op {
            Op::Recurrent(r) => r.return_sequences,
            _ => passes_mask(&cfg.class),
        };
        let y = self.add1(cfg, op, &[x], node_mask)?;
        if let (Some(m), true) = (mask, keeps_sequence) {
            self.masks.insert(y, m);
        }
        Ok(vec![y])
    }
}
