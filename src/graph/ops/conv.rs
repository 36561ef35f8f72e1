//! 2-D windows (convolution and pooling geometry, TensorFlow's `same` padding) and Conv2D.

use super::{Activation, ShapeResult};
use crate::graph::params::ParamId;
use crate::graph::Shape;

/// Padding as Keras names it. `Same` follows TensorFlow: the odd extra pad goes at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Valid,
    Same,
}

/// Output length and padding before, along one spatial axis, for a window of `k` at `stride`.
/// TensorFlow's `same`: out = ceil(in / stride), total pad = max((out-1)*stride + k - in, 0),
/// pad before = total / 2 (the extra one goes after).
pub fn window_output(input: usize, k: usize, stride: usize, padding: Padding) -> (usize, usize) {
    match padding {
        Padding::Valid => {
            if input < k {
                (0, 0)
            } else {
                ((input - k) / stride + 1, 0)
            }
        }
        Padding::Same => {
            let out = input.div_ceil(stride);
            let needed = ((out.saturating_sub(1)) * stride + k).saturating_sub(input);
            (out, needed / 2)
        }
    }
}

/// The geometry of a 2-D window op (conv or pool) on an NHWC tensor, resolved for one input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window2d {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub padding: Padding,
    pub in_hw: [usize; 2],
    pub out_hw: [usize; 2],
    /// Padding before, rows and columns.
    pub pad_top_left: [usize; 2],
}

impl Window2d {
    pub fn new(
        kernel: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
        in_hw: [usize; 2],
    ) -> Self {
        let (oh, pt) = window_output(in_hw[0], kernel[0], strides[0], padding);
        let (ow, pl) = window_output(in_hw[1], kernel[1], strides[1], padding);
        Window2d {
            kernel,
            strides,
            padding,
            in_hw,
            out_hw: [oh, ow],
            pad_top_left: [pt, pl],
        }
    }

    /// The shape rule shared by convolutions and pooling: (H, W, C) -> (OH, OW, channels_out).
    pub fn output_shape(&self, input: &[usize], channels_out: usize) -> ShapeResult<Shape> {
        match input {
            [h, w, _] if [*h, *w] == self.in_hw => {}
            _ => {
                return Err(format!(
                    "input {input:?} does not match the window's {:?} (H, W, C)",
                    self.in_hw
                ))
            }
        }
        if self.out_hw.contains(&0) {
            return Err(format!(
                "window {:?} does not fit the input {input:?} with 'valid' padding",
                self.kernel
            ));
        }
        Ok(vec![self.out_hw[0], self.out_hw[1], channels_out])
    }
}

#[derive(Debug, Clone)]
pub struct Conv2d {
    pub filters: usize,
    pub window: Window2d,
    pub in_channels: usize,
    /// HWIO, as Keras stores it; cross-correlation.
    pub kernel: ParamId,
    pub bias: Option<ParamId>,
    pub activation: Activation,
}

impl Conv2d {
    pub fn output_shape(&self, input: &[usize]) -> ShapeResult<Shape> {
        if input.last() != Some(&self.in_channels) {
            return Err(format!(
                "input {input:?} does not have the kernel's {} channels",
                self.in_channels
            ));
        }
        self.window.output_shape(input, self.filters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_puts_extra_pad_at_the_end() {
        // in 5, k 2, stride 2: out 3, total pad 1 -> 0 before, 1 after (TensorFlow).
        assert_eq!(window_output(5, 2, 2, Padding::Same), (3, 0));
        // in 32, k 3, stride 1: out 32, pad 1 before.
        assert_eq!(window_output(32, 3, 1, Padding::Same), (32, 1));
        // in 6, k 4, stride 1: total 3 -> 1 before, 2 after.
        assert_eq!(window_output(6, 4, 1, Padding::Same), (6, 1));
        assert_eq!(window_output(7, 3, 2, Padding::Valid), (3, 0));
    }
}
