//! Activation functions with Keras's parameters, shared by every op that has one.

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
