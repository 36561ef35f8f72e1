//! ConvLSTM1D / ConvLSTM2D: an LSTM whose matmuls are convolutions. The input conv has the
//! layer's strides and padding; the recurrent conv is stride 1, `same`, on the state. A 1-D
//! layer is a 2-D one with height 1.

use super::{Activation, Conv, ShapeResult, Window2d};
use crate::graph::params::{ParamId, ParamStore};
use crate::graph::{DType, Shape, ValueInfo};

#[derive(Debug, Clone)]
pub struct ConvLstm {
    pub filters: usize,
    pub timesteps: usize,
    pub in_channels: usize,
    /// ConvLSTM1D: items are (W, C) and outputs (W', F).
    pub one_d: bool,
    /// The input conv on one step's (H, W).
    pub window: Window2d,
    /// The recurrent conv on the state's (H', W'): same kernel, stride 1, `same`.
    pub recurrent_window: Window2d,
    /// (kh, kw, C, 4F) (ConvLSTM1D: (kw, C, 4F)), gates i, f, c, o along the last axis.
    pub kernel: ParamId,
    /// (kh, kw, F, 4F) (ConvLSTM1D: (kw, F, 4F)).
    pub recurrent_kernel: ParamId,
    /// (4F).
    pub bias: Option<ParamId>,
    pub activation: Activation,
    pub recurrent_activation: Activation,
    pub return_sequences: bool,
    pub go_backwards: bool,
    /// `dropout` and `recurrent_dropout`: nothing at inference; training has no masks for
    /// them yet and refuses a nonzero rate.
    pub dropout: f32,
    pub recurrent_dropout: f32,
}

impl ConvLstm {
    /// The input shape the layer was built for: (T, H, W, C), or (T, W, C) for 1-D.
    pub fn input_shape(&self) -> Shape {
        let [h, w] = self.window.in_hw;
        let mut s = vec![self.timesteps];
        if !self.one_d {
            s.push(h);
        }
        s.extend([w, self.in_channels]);
        s
    }

    fn rank(&self) -> usize {
        if self.one_d {
            1
        } else {
            2
        }
    }

    /// The input convolution as a Conv op on one step's image: (H, W, C) -> (H', W', 4F), bias
    /// included, gates i, f, c, o along the filters.
    pub fn input_conv(&self) -> Conv {
        Conv {
            filters: 4 * self.filters,
            window: self.window.as_window(self.rank()),
            in_channels: self.in_channels,
            groups: 1,
            kernel: self.kernel,
            bias: self.bias,
            activation: Activation::Linear,
        }
    }

    /// The recurrent convolution as a Conv op on the state: (H', W', F) -> (H', W', 4F).
    pub fn recurrent_conv(&self) -> Conv {
        Conv {
            filters: 4 * self.filters,
            window: self.recurrent_window.as_window(self.rank()),
            in_channels: self.filters,
            groups: 1,
            kernel: self.recurrent_kernel,
            bias: None,
            activation: Activation::Linear,
        }
    }

    pub fn infer(&self, inputs: &[&ValueInfo], params: &ParamStore) -> ShapeResult<Vec<ValueInfo>> {
        let [x] = inputs else {
            return Err(format!("expects one input, got {}", inputs.len()));
        };
        if x.dtype != DType::F32 {
            return Err(format!("expects float32 input, got {}", x.dtype.name()));
        }
        if x.shape != self.input_shape() {
            return Err(format!(
                "expects {:?} input, got {:?}",
                self.input_shape(),
                x.shape
            ));
        }
        if self.timesteps == 0 || self.window.out_hw.contains(&0) {
            return Err("no timesteps, or the kernel does not fit the input".into());
        }
        let [kh, kw] = self.window.kernel;
        let g = 4 * self.filters;
        for (id, rows) in [
            (self.kernel, self.in_channels),
            (self.recurrent_kernel, self.filters),
        ] {
            if params.len_of(id) != kh * kw * rows * g {
                return Err(format!(
                    "weight '{}' has shape {:?}, expected {kh}x{kw}x{rows}x{g} values",
                    params.param(id).name,
                    params.get(id).shape()
                ));
            }
        }
        if let Some(b) = self.bias {
            if params.len_of(b) != g {
                return Err(format!(
                    "bias has {} values, expected {g}",
                    params.len_of(b)
                ));
            }
        }
        let [oh, ow] = self.window.out_hw;
        let mut out = Vec::new();
        if self.return_sequences {
            out.push(self.timesteps);
        }
        if !self.one_d {
            out.push(oh);
        }
        out.extend([ow, self.filters]);
        Ok(vec![ValueInfo::new(out, DType::F32)])
    }
}
