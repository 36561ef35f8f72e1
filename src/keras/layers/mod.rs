//! Keras layer configs -> ops, one file per layer family. Each function reads the layer's
//! options (an unsupported one is an error naming the layer and the field), takes its weights,
//! and adds its node(s); the ops' shape rules give the output shapes.

mod conv;
mod conv_lstm;
mod core;
mod merge;
mod norm;
mod recurrent;
mod time_distributed;

pub(crate) use merge::{is_merge_layer, MaskExpr};

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
            | "ActivityRegularization"
            | "SpatialDropout1D"
            | "Activation"
            | "Dense"
            | "GaussianNoise"
            | "GaussianDropout"
            | "BatchNormalization"
            | "LayerNormalization"
            | "RMSNormalization"
            | "GroupNormalization"
            | "UnitNormalization"
            | "Normalization"
            | "PReLU"
            | "ReLU"
            | "LeakyReLU"
            | "ELU"
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
            "Conv1D" | "Convolution1D" => self.conv(cfg, &info, 1)?,
            "Conv2D" | "Convolution2D" => self.conv(cfg, &info, 2)?,
            "Conv3D" | "Convolution3D" => self.conv(cfg, &info, 3)?,
            "DepthwiseConv1D" => self.depthwise_conv(cfg, &info, 1)?,
            "DepthwiseConv2D" => self.depthwise_conv(cfg, &info, 2)?,
            "SeparableConv1D" | "SeparableConvolution1D" => return self.separable_conv(cfg, x, 1),
            "SeparableConv2D" | "SeparableConvolution2D" => return self.separable_conv(cfg, x, 2),
            "Conv1DTranspose" | "Convolution1DTranspose" => self.conv_transpose(cfg, &info, 1)?,
            "Conv2DTranspose" | "Convolution2DTranspose" => self.conv_transpose(cfg, &info, 2)?,
            "Conv3DTranspose" | "Convolution3DTranspose" => self.conv_transpose(cfg, &info, 3)?,
            "MaxPooling1D" | "MaxPool1D" => self.pool(cfg, &info, 1, PoolOp::Max)?,
            "MaxPooling2D" | "MaxPool2D" => self.pool(cfg, &info, 2, PoolOp::Max)?,
            "MaxPooling3D" | "MaxPool3D" => self.pool(cfg, &info, 3, PoolOp::Max)?,
            "AveragePooling1D" | "AvgPool1D" => self.pool(cfg, &info, 1, PoolOp::Average)?,
            "AveragePooling2D" | "AvgPool2D" => self.pool(cfg, &info, 2, PoolOp::Average)?,
            "AveragePooling3D" | "AvgPool3D" => self.pool(cfg, &info, 3, PoolOp::Average)?,
            "GlobalMaxPooling1D" | "GlobalMaxPool1D" => {
                self.global_pool(cfg, &info, 1, PoolOp::Max)?
            }
            "GlobalMaxPooling2D" | "GlobalMaxPool2D" => {
                self.global_pool(cfg, &info, 2, PoolOp::Max)?
            }
            "GlobalMaxPooling3D" | "GlobalMaxPool3D" => {
                self.global_pool(cfg, &info, 3, PoolOp::Max)?
            }
            "GlobalAveragePooling1D" | "GlobalAvgPool1D" => {
                self.global_pool(cfg, &info, 1, PoolOp::Average)?
            }
            "GlobalAveragePooling2D" | "GlobalAvgPool2D" => {
                self.global_pool(cfg, &info, 2, PoolOp::Average)?
            }
            "GlobalAveragePooling3D" | "GlobalAvgPool3D" => {
                self.global_pool(cfg, &info, 3, PoolOp::Average)?
            }
            "Flatten" => {
                cfg.require_channels_last()?;
                Op::Reshape {
                    shape: vec![info.elements()],
                }
            }
            "Reshape" => self.reshape(cfg, &info)?,
            "Dense" => self.dense(cfg, &info)?,
            "Dropout" | "SpatialDropout1D" | "SpatialDropout2D" | "SpatialDropout3D"
            | "GaussianNoise" | "GaussianDropout" | "AlphaDropout" => self.dropout(cfg, &info)?,
            "ActivityRegularization" => Op::Identity,
            "Rescaling" => self.rescaling(cfg)?,
            "BatchNormalization" => self.batch_normalization(cfg, &info)?,
            "LayerNormalization" => self.layer_normalization(cfg, &info, false)?,
            "RMSNormalization" => self.layer_normalization(cfg, &info, true)?,
            "GroupNormalization" => self.group_normalization(cfg, &info)?,
            "UnitNormalization" => self.unit_normalization(cfg, &info)?,
            "Normalization" => self.normalization(cfg, &info)?,
            "PReLU" => self.prelu(cfg, &info)?,
            "Softmax" => self.softmax_layer(cfg, &info, mask)?,
            "Activation" | "ReLU" | "LeakyReLU" | "ELU" => {
                Op::Activation(self.activation_layer(cfg, &info)?)
            }
            "Embedding" => return self.embedding(cfg, x),
            "TimeDistributed" => return self.time_distributed(cfg, x, mask),
            "ConvLSTM1D" | "ConvLSTM2D" => self.conv_lstm(cfg, &info, mask)?,
            "SimpleRNN" | "LSTM" | "GRU" | "Bidirectional" => {
                return self.recurrent_layer(cfg, &[x], mask, mask)
            }
            "ZeroPadding1D" | "ZeroPadding2D" | "ZeroPadding3D" | "Cropping1D" | "Cropping2D"
            | "Cropping3D" | "UpSampling1D" | "UpSampling2D" | "UpSampling3D" | "Permute"
            | "RepeatVector" => self.shape_layer(cfg, &info)?,
            "Masking" | "Attention" | "MultiHeadAttention" | "RNN" => {
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
