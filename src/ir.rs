//! The layer IR: one ordered list of layers with Keras inference semantics, weights as f32 arrays
//! and static shapes resolved at load. Both backends read these types; shape arithmetic lives here
//! and nowhere else.

use ndarray::{Array1, Array2, Array4};

/// A shape without the batch axis, e.g. `[32, 32, 3]` for a CIFAR image or `[60]` for token ids.
pub type Shape = Vec<usize>;

/// What the model takes: float tensors or integer token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Float,
    TokenIds,
}

/// Elementwise (or, for softmax, last-axis) activation functions, with Keras's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Linear,
    /// Keras `ReLU` in full: `max_value` caps, below `threshold` the slope is `negative_slope`.
    /// Plain relu, leaky_relu and relu6 are special cases of it.
    Relu {
        negative_slope: f32,
        max_value: Option<f32>,
        threshold: f32,
    },
    Sigmoid,
    /// Keras 3's hard_sigmoid: relu6(x + 3) / 6.
    HardSigmoid,
    Tanh,
    /// Over the last axis.
    Softmax,
    Elu {
        alpha: f32,
    },
    Selu,
    /// silu / swish: x * sigmoid(x).
    Silu,
    Softplus,
    Softsign,
    Exponential,
}

impl Activation {
    pub const RELU: Activation = Activation::Relu {
        negative_slope: 0.0,
        max_value: None,
        threshold: 0.0,
    };

    /// Short name for `info` and plans.
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu { .. } => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::HardSigmoid => "hard_sigmoid",
            Activation::Tanh => "tanh",
            Activation::Softmax => "softmax",
            Activation::Elu { .. } => "elu",
            Activation::Selu => "selu",
            Activation::Silu => "silu",
            Activation::Softplus => "softplus",
            Activation::Softsign => "softsign",
            Activation::Exponential => "exponential",
        }
    }
}

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
}

#[derive(Debug, Clone)]
pub struct Conv2d {
    pub filters: usize,
    pub window: Window2d,
    pub in_channels: usize,
    /// HWIO, as Keras stores it; cross-correlation.
    pub kernel: Array4<f32>,
    pub bias: Option<Array1<f32>>,
    pub activation: Activation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolOp {
    Max,
    Average,
}

#[derive(Debug, Clone)]
pub struct Pool2d {
    pub op: PoolOp,
    pub window: Window2d,
    pub channels: usize,
}

#[derive(Debug, Clone)]
pub struct Dense {
    pub units: usize,
    /// (in, out).
    pub kernel: Array2<f32>,
    pub bias: Option<Array1<f32>>,
    pub activation: Activation,
}

#[derive(Debug, Clone)]
pub struct Embedding {
    pub input_dim: usize,
    pub output_dim: usize,
    /// (input_dim, output_dim).
    pub table: Array2<f32>,
    pub mask_zero: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    SimpleRnn,
    /// Gates in Keras order i, f, c, o.
    Lstm,
}

impl CellKind {
    /// How many blocks of `units` columns the kernels hold.
    pub fn gates(&self) -> usize {
        match self {
            CellKind::SimpleRnn => 1,
            CellKind::Lstm => 4,
        }
    }
}

/// One direction of a recurrent layer.
#[derive(Debug, Clone)]
pub struct RecurrentCell {
    pub kind: CellKind,
    pub units: usize,
    pub activation: Activation,
    /// LSTM only (sigmoid by default).
    pub recurrent_activation: Activation,
    /// (input_features, gates * units).
    pub kernel: Array2<f32>,
    /// (units, gates * units).
    pub recurrent_kernel: Array2<f32>,
    pub bias: Option<Array1<f32>>,
    /// Reads the sequence from the end. With return_sequences, outputs stay in processing order
    /// (as Keras), except inside Bidirectional, which puts the backward outputs back in time order.
    pub go_backwards: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeMode {
    Concat,
    Sum,
    Average,
    Multiply,
}

/// SimpleRNN, LSTM or Bidirectional(either).
#[derive(Debug, Clone)]
pub struct Recurrent {
    pub forward: RecurrentCell,
    /// Present for Bidirectional.
    pub backward: Option<RecurrentCell>,
    pub merge_mode: MergeMode,
    pub return_sequences: bool,
    pub timesteps: usize,
    pub input_features: usize,
    /// True when an upstream `Embedding(mask_zero=True)` masks this layer's input.
    pub masked: bool,
    /// With return_sequences: zeros at masked steps instead of repeating the previous output.
    /// Keras forces it on inside Bidirectional; a plain layer reads its `zero_output_for_mask`.
    pub zero_masked_outputs: bool,
}

impl Recurrent {
    pub fn units(&self) -> usize {
        self.forward.units
    }

    /// Features per timestep of the output.
    pub fn output_features(&self) -> usize {
        match (&self.backward, self.merge_mode) {
            (Some(_), MergeMode::Concat) => 2 * self.forward.units,
            _ => self.forward.units,
        }
    }

    /// Keras 3 writes zeros at masked steps inside Bidirectional with return_sequences, and
    /// repeats the previous output in a plain RNN layer (unless its `zero_output_for_mask`).
    pub fn zero_output_for_mask(&self) -> bool {
        self.zero_masked_outputs
    }

    pub fn cells(&self) -> impl Iterator<Item = &RecurrentCell> {
        std::iter::once(&self.forward).chain(self.backward.as_ref())
    }
}

#[derive(Debug, Clone)]
pub enum LayerKind {
    Conv2d(Conv2d),
    Pool2d(Pool2d),
    /// Over H and W of NHWC.
    GlobalPool2d {
        op: PoolOp,
        keepdims: bool,
    },
    Dense(Dense),
    Activation(Activation),
    /// y = x * scale + offset; each a scalar (len 1) or one value per last-axis channel.
    Rescaling {
        scale: Vec<f32>,
        offset: Vec<f32>,
    },
    Embedding(Embedding),
    /// Boxed: two cells of weights make it much larger than the other variants.
    Recurrent(Box<Recurrent>),
    /// Flatten and Reshape: data stays in row-major order, only the shape changes.
    Reshape,
    /// Dropout, SpatialDropout*, and other layers that do nothing at inference.
    Identity,
}

/// One layer: its Keras name and class, what it does, and its resolved shapes.
#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    /// The Keras class name, for messages and `info`.
    pub class: String,
    pub kind: LayerKind,
    pub input_shape: Shape,
    pub output_shape: Shape,
}

impl Layer {
    /// Number of weights, as Keras counts them in `model.summary()`.
    pub fn param_count(&self) -> usize {
        fn bias_len(b: &Option<Array1<f32>>) -> usize {
            b.as_ref().map_or(0, |b| b.len())
        }
        match &self.kind {
            LayerKind::Conv2d(c) => c.kernel.len() + bias_len(&c.bias),
            LayerKind::Dense(d) => d.kernel.len() + bias_len(&d.bias),
            LayerKind::Embedding(e) => e.table.len(),
            LayerKind::Recurrent(r) => r
                .cells()
                .map(|c| c.kernel.len() + c.recurrent_kernel.len() + bias_len(&c.bias))
                .sum(),
            _ => 0,
        }
    }

    /// Multiply-adds counted as 2 FLOPs, per batch item (for `info` and `bench`).
    pub fn flops(&self) -> u64 {
        let out: u64 = self.output_shape.iter().product::<usize>() as u64;
        match &self.kind {
            LayerKind::Conv2d(c) => {
                let k = (c.window.kernel[0] * c.window.kernel[1] * c.in_channels) as u64;
                2 * out * k
            }
            LayerKind::Dense(d) => {
                let rows = out / d.units as u64;
                2 * rows * d.kernel.len() as u64
            }
            LayerKind::Recurrent(r) => r
                .cells()
                .map(|c| {
                    2 * r.timesteps as u64 * (c.kernel.len() + c.recurrent_kernel.len()) as u64
                })
                .sum(),
            LayerKind::Pool2d(p) => out * (p.window.kernel[0] * p.window.kernel[1]) as u64,
            LayerKind::GlobalPool2d { .. } => self.input_shape.iter().product::<usize>() as u64,
            _ => 0,
        }
    }
}

/// Text preprocessing carried by the model itself (a leading `TextVectorization` layer):
/// raw strings in, token ids out.
#[derive(Debug, Clone)]
pub struct TextVectorizationSpec {
    pub name: String,
    /// Index = token id; `""` is 0 (padding) and `"[UNK]"` is 1, exactly as Keras saved it.
    pub vocabulary: Vec<String>,
    /// Pads or truncates (at the end) to this length; `None` pads to the longest text in the batch.
    pub output_sequence_length: Option<usize>,
    /// `lower_and_strip_punctuation`, `lower`, `strip_punctuation`, or none.
    pub standardize: Option<String>,
    /// `whitespace` or none.
    pub split: Option<String>,
}

/// A loaded model: an ordered chain of layers with static shapes.
#[derive(Debug, Clone)]
pub struct ModelIr {
    pub name: String,
    pub input_kind: InputKind,
    /// Per-item input shape (no batch axis).
    pub input_shape: Shape,
    pub layers: Vec<Layer>,
    pub text_vectorization: Option<TextVectorizationSpec>,
}

impl ModelIr {
    pub fn output_shape(&self) -> &Shape {
        self.layers
            .last()
            .map(|l| &l.output_shape)
            .unwrap_or(&self.input_shape)
    }

    pub fn param_count(&self) -> usize {
        self.layers.iter().map(Layer::param_count).sum()
    }

    pub fn flops_per_item(&self) -> u64 {
        self.layers.iter().map(Layer::flops).sum()
    }

    /// The `Embedding(mask_zero=True)` layer, if the model masks padding ids.
    pub fn masks_padding(&self) -> bool {
        self.layers
            .iter()
            .any(|l| matches!(&l.kind, LayerKind::Embedding(e) if e.mask_zero))
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
