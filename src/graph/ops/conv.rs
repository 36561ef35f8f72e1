//! Window geometry for 1-D, 2-D and 3-D convolutions and poolings (TensorFlow's `same`, Keras's
//! `causal`, dilation), and the convolutions: Conv1D/2D/3D (groups), DepthwiseConv1D/2D and
//! Conv1D/2D/3DTranspose. SeparableConv is a depthwise node followed by a 1x1 `Conv`.
//!
//! Every window is stored as three spatial axes (D, H, W): a 1-D op has D = H = 1 (kernel 1,
//! stride 1), a 2-D op D = 1, so Conv1D is exactly a Conv2D on an image one row high and the
//! backends walk one geometry. `rank` remembers how many axes the Keras layer had, for shapes.

use super::{Activation, ShapeResult};
use crate::graph::params::ParamId;
use crate::graph::Shape;

/// Padding as Keras names it. `Same` follows TensorFlow: the odd extra pad goes at the end.
/// `Causal` (Conv1D only) pads `dilation * (kernel - 1)` before and nothing after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Valid,
    Same,
    Causal,
}

/// Output length and padding before, along one spatial axis, for a window of `k` taps at
/// `stride` (no dilation). See [`axis_output`].
pub fn window_output(input: usize, k: usize, stride: usize, padding: Padding) -> (usize, usize) {
    axis_output(input, k, stride, 1, padding)
}

/// Output length and padding before along one axis, for `k` taps `dilation` apart at `stride`.
/// With the window's span `e = (k - 1) * dilation + 1`:
/// - valid: out = (in - e) / stride + 1 (0 when the window does not fit), no padding;
/// - TensorFlow's same: out = ceil(in / stride), total pad = max((out-1)*stride + e - in, 0),
///   pad before = total / 2 (the extra one goes after);
/// - causal: pad before = e - 1, out = ceil(in / stride).
pub fn axis_output(
    input: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    padding: Padding,
) -> (usize, usize) {
    let span = k.saturating_sub(1) * dilation + 1;
    let stride = stride.max(1);
    match padding {
        Padding::Valid => {
            if input < span {
                (0, 0)
            } else {
                ((input - span) / stride + 1, 0)
            }
        }
        Padding::Same => {
            let out = input.div_ceil(stride);
            let needed = ((out.saturating_sub(1)) * stride + span).saturating_sub(input);
            (out, needed / 2)
        }
        Padding::Causal => (input.div_ceil(stride), span - 1),
    }
}

/// The geometry of a plain 2-D window (no dilation) on an NHWC tensor: what the CPU's Winograd
/// and im2col fast paths read. Derived from a [`Window`] by [`Window::plane`].
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

    /// The same geometry as a [`Window`] of `rank` 1 or 2 (a 1-D window has height 1), for the
    /// kernels that walk (D, H, W); the inverse of [`Window::plane`].
    pub fn as_window(&self, rank: usize) -> Window {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.strides;
        let [h, w] = self.in_hw;
        let [oh, ow] = self.out_hw;
        let [pt, pl] = self.pad_top_left;
        Window {
            rank,
            kernel: [1, kh, kw],
            strides: [1, sh, sw],
            dilation: [1, 1, 1],
            padding: self.padding,
            input: [1, h, w],
            output: [1, oh, ow],
            pad_before: [0, pt, pl],
        }
    }
}

/// The geometry of a 1-, 2- or 3-D window op (conv or pool) on a channels-last tensor, resolved
/// for one input size. Arrays are (D, H, W); the axes a lower-rank op lacks are 1 (size, kernel,
/// stride, dilation) with no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Spatial axes of the Keras layer: 1, 2 or 3.
    pub rank: usize,
    pub kernel: [usize; 3],
    pub strides: [usize; 3],
    pub dilation: [usize; 3],
    pub padding: Padding,
    pub input: [usize; 3],
    pub output: [usize; 3],
    /// Padding before, per axis.
    pub pad_before: [usize; 3],
}

/// `values` (one per spatial axis of a rank-`values.len()` op) as (D, H, W), `fill` in front.
pub fn to_dhw(values: &[usize], fill: usize) -> [usize; 3] {
    let mut out = [fill; 3];
    let skip = 3 - values.len().min(3);
    for (o, v) in out[skip..].iter_mut().zip(values) {
        *o = *v;
    }
    out
}

impl Window {
    /// `kernel`, `strides`, `dilation` and `input` have one entry per spatial axis (1 to 3).
    pub fn new(
        kernel: &[usize],
        strides: &[usize],
        dilation: &[usize],
        padding: Padding,
        input: &[usize],
    ) -> Self {
        let rank = kernel.len().clamp(1, 3);
        let (kernel, strides) = (to_dhw(kernel, 1), to_dhw(strides, 1));
        let (dilation, input) = (to_dhw(dilation, 1), to_dhw(input, 1));
        let mut output = [1; 3];
        let mut pad_before = [0; 3];
        for a in 3 - rank..3 {
            let (o, p) = axis_output(input[a], kernel[a], strides[a], dilation[a], padding);
            output[a] = o;
            pad_before[a] = p;
        }
        Window {
            rank,
            kernel,
            strides,
            dilation,
            padding,
            input,
            output,
            pad_before,
        }
    }

    /// The Keras-facing spatial sizes (the last `rank` axes).
    pub fn spatial(&self, dhw: [usize; 3]) -> Vec<usize> {
        dhw[3 - self.rank..].to_vec()
    }

    /// Taps in one window (product of the kernel sizes).
    pub fn taps(&self) -> usize {
        self.kernel.iter().product()
    }

    pub fn out_positions(&self) -> usize {
        self.output.iter().product()
    }

    pub fn in_positions(&self) -> usize {
        self.input.iter().product()
    }

    /// The 2-D geometry when there is no depth axis and no dilation (the fast paths' case).
    pub fn plane(&self) -> Option<Window2d> {
        if self.input[0] != 1 || self.kernel[0] != 1 || self.dilation != [1, 1, 1] {
            return None;
        }
        Some(Window2d {
            kernel: [self.kernel[1], self.kernel[2]],
            strides: [self.strides[1], self.strides[2]],
            padding: self.padding,
            in_hw: [self.input[1], self.input[2]],
            out_hw: [self.output[1], self.output[2]],
            pad_top_left: [self.pad_before[1], self.pad_before[2]],
        })
    }

    /// The shape rule shared by convolutions and pooling: (spatial..., C) -> (out spatial...,
    /// channels_out), for an input with `channels_in` channels.
    pub fn output_shape(
        &self,
        input: &[usize],
        channels_in: usize,
        channels_out: usize,
    ) -> ShapeResult<Shape> {
        let spatial = self.spatial(self.input);
        if input.len() != self.rank + 1 || input[..self.rank] != spatial[..] {
            return Err(format!(
                "input {input:?} does not match the window's {spatial:?} (spatial axes, then channels)"
            ));
        }
        if input[self.rank] != channels_in {
            return Err(format!(
                "input {input:?} does not have the layer's {channels_in} channels"
            ));
        }
        if self.output.contains(&0) {
            return Err(format!(
                "window {:?} (dilation {:?}) does not fit the input {input:?} with 'valid' padding",
                self.spatial(self.kernel),
                self.spatial(self.dilation)
            ));
        }
        let mut out = self.spatial(self.output);
        out.push(channels_out);
        Ok(out)
    }

    /// e.g. "3x3 /2x2 same" or "3 /1 dil 2 causal", for plans and `info`.
    pub fn text(&self) -> String {
        let join = |v: Vec<usize>| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("x")
        };
        let mut s = format!(
            "{} /{}",
            join(self.spatial(self.kernel)),
            join(self.spatial(self.strides))
        );
        if self.dilation != [1, 1, 1] {
            s += &format!(" dil {}", join(self.spatial(self.dilation)));
        }
        s += match self.padding {
            Padding::Valid => " valid",
            Padding::Same => " same",
            Padding::Causal => " causal",
        };
        s
    }
}

/// Conv1D, Conv2D, Conv3D (and SeparableConv's pointwise half): cross-correlation with
/// `groups` independent channel groups.
#[derive(Debug, Clone)]
pub struct Conv {
    pub filters: usize,
    pub window: Window,
    pub in_channels: usize,
    /// Input channels and filters split into this many groups; group g reads channels
    /// g*C/G.. and writes filters g*F/G.. (Keras: kernel (k..., C/G, F)).
    pub groups: usize,
    /// (k..., in_channels / groups, filters), as Keras stores it.
    pub kernel: ParamId,
    pub bias: Option<ParamId>,
    pub activation: Activation,
}

impl Conv {
    pub fn kernel_shape(&self) -> Vec<usize> {
        let mut s = self.window.spatial(self.window.kernel);
        s.extend([self.in_channels / self.groups.max(1), self.filters]);
        s
    }

    pub fn output_shape(&self, input: &[usize]) -> ShapeResult<Shape> {
        if self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.filters.is_multiple_of(self.groups)
        {
            return Err(format!(
                "{} groups do not divide {} input channels and {} filters",
                self.groups, self.in_channels, self.filters
            ));
        }
        self.window
            .output_shape(input, self.in_channels, self.filters)
    }

    /// The plain 2-D case (rank 1 or 2, one group, no dilation, no causal pad) that the CPU's
    /// Winograd and im2col fast paths and the implicit-GEMM kernel's 2-D form take.
    pub fn plane(&self) -> Option<Window2d> {
        if self.groups != 1 {
            return None;
        }
        self.window.plane()
    }
}

/// DepthwiseConv1D/2D (and SeparableConv's depthwise half): each input channel c convolved with
/// its own `multiplier` kernels; output channel c * multiplier + m.
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    pub window: Window,
    pub channels: usize,
    pub multiplier: usize,
    /// (k..., channels, multiplier), as Keras stores it.
    pub kernel: ParamId,
    /// channels * multiplier values.
    pub bias: Option<ParamId>,
    pub activation: Activation,
}

impl DepthwiseConv {
    pub fn kernel_shape(&self) -> Vec<usize> {
        let mut s = self.window.spatial(self.window.kernel);
        s.extend([self.channels, self.multiplier]);
        s
    }

    pub fn out_channels(&self) -> usize {
        self.channels * self.multiplier
    }

    pub fn output_shape(&self, input: &[usize]) -> ShapeResult<Shape> {
        self.window
            .output_shape(input, self.channels, self.out_channels())
    }
}

/// Conv1DTranspose, Conv2DTranspose, Conv3DTranspose: the gradient of a convolution. Input
/// position i, tap k writes output position i * stride + k * dilation - pad_before (per axis).
#[derive(Debug, Clone)]
pub struct ConvTranspose {
    pub filters: usize,
    pub in_channels: usize,
    pub rank: usize,
    /// (D, H, W) as in [`Window`]: leading axes 1 for lower ranks.
    pub kernel_size: [usize; 3],
    pub strides: [usize; 3],
    pub dilation: [usize; 3],
    pub padding: Padding,
    pub input: [usize; 3],
    pub output: [usize; 3],
    pub pad_before: [usize; 3],
    /// (k..., filters, in_channels), as Keras stores it.
    pub kernel: ParamId,
    pub bias: Option<ParamId>,
    pub activation: Activation,
}

/// Output length and padding before along one axis of a transposed convolution, as Keras
/// (backend_utils.compute_conv_transpose_output_shape) and TensorFlow (conv_transpose with that
/// output shape) define them. With span e = (k - 1) * dilation + 1:
/// - valid: out = (in - 1) * stride + e + output_padding (default max(e, stride) - e), pad 0;
/// - same: out = in * stride without output_padding, else (in - 1) * stride + k % 2 +
///   output_padding (k the span); pad before = max((in - 1) * stride + e - out, 0) / 2.
pub fn transpose_axis(
    input: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    padding: Padding,
    output_padding: Option<usize>,
) -> ShapeResult<(usize, usize)> {
    let span = k.saturating_sub(1) * dilation + 1;
    if input == 0 {
        return Err("an empty input axis".into());
    }
    match padding {
        Padding::Valid => {
            let extra = output_padding.unwrap_or(span.max(stride) - span);
            Ok(((input - 1) * stride + span + extra, 0))
        }
        Padding::Same => {
            let out = match output_padding {
                None => input * stride,
                Some(p) => (input - 1) * stride + span % 2 + p,
            };
            let needed = ((input - 1) * stride + span).saturating_sub(out);
            Ok((out, needed / 2))
        }
        Padding::Causal => {
            Err("'causal' padding is not defined for transposed convolutions".into())
        }
    }
}

impl ConvTranspose {
    pub fn kernel_shape(&self) -> Vec<usize> {
        let mut s = self.kernel_size[3 - self.rank..].to_vec();
        s.extend([self.filters, self.in_channels]);
        s
    }

    pub fn taps(&self) -> usize {
        self.kernel_size.iter().product()
    }

    pub fn output_shape(&self, input: &[usize]) -> ShapeResult<Shape> {
        let r = self.rank;
        let spatial = &self.input[3 - r..];
        if input.len() != r + 1 || &input[..r] != spatial || input[r] != self.in_channels {
            return Err(format!(
                "input {input:?} does not match the layer's {spatial:?} x {} channels",
                self.in_channels
            ));
        }
        let mut out = self.output[3 - r..].to_vec();
        out.push(self.filters);
        Ok(out)
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

    #[test]
    fn dilation_and_causal_padding() {
        // k 3 dilation 2 spans 5: valid on 11 -> 7; same pads 4 total, 2 before.
        assert_eq!(axis_output(11, 3, 1, 2, Padding::Valid), (7, 0));
        assert_eq!(axis_output(11, 3, 1, 2, Padding::Same), (11, 2));
        // causal: left pad (k-1)*d, out ceil(in / stride).
        assert_eq!(axis_output(11, 3, 1, 2, Padding::Causal), (11, 4));
        assert_eq!(axis_output(11, 3, 2, 1, Padding::Causal), (6, 2));
    }

    #[test]
    fn one_d_windows_are_one_row_images() {
        let w = Window::new(&[3], &[2], &[1], Padding::Same, &[11]);
        assert_eq!(w.input, [1, 1, 11]);
        assert_eq!(w.output, [1, 1, 6]);
        assert_eq!(w.output_shape(&[11, 5], 5, 4), Ok(vec![6, 4]));
        let p = w.plane().expect("plain");
        assert_eq!(p.in_hw, [1, 11]);
        assert_eq!(p.out_hw, [1, 6]);
    }

    #[test]
    fn transposed_output_sizes_follow_keras() {
        // Keras: valid (in-1)*s + k + max(k, s) - k; same in*s; with output_padding.
        assert_eq!(
            transpose_axis(11, 3, 2, 1, Padding::Valid, None),
            Ok((23, 0))
        );
        assert_eq!(
            transpose_axis(11, 4, 2, 1, Padding::Same, None),
            Ok((22, 1))
        );
        assert_eq!(
            transpose_axis(11, 3, 3, 1, Padding::Valid, Some(2)),
            Ok((35, 0))
        );
        // same with output_padding: (in - 1) * s + k % 2 + output_padding = 12 + 0 + 1.
        assert_eq!(
            transpose_axis(7, 4, 2, 1, Padding::Same, Some(1)),
            Ok((13, 1))
        );
        assert_eq!(transpose_axis(7, 3, 2, 1, Padding::Same, None), Ok((14, 0)));
    }
}
