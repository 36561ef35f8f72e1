//! Activation functions with Keras's parameters, shared by every op that has one.

/// Elementwise (or, for softmax and log_softmax, last-axis) activation functions, with Keras's parameters.
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
    /// Keras 2's hard_sigmoid: clip(0.2·x + 0.5, 0, 1).
    HardSigmoidKeras2,
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
    /// 0.5 x (1 + erf(x / sqrt 2)); `approximate`: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    Gelu {
        approximate: bool,
    },
    /// x * tanh(softplus(x)).
    Mish,
    /// max(x, 0) + alpha * expm1(min(x, 0) / alpha).
    Celu {
        alpha: f32,
    },
    /// hard_swish: x * hard_sigmoid(x).
    HardSilu,
    /// clip(x, -1, 1).
    HardTanh,
    /// x where |x| > threshold, else 0.
    HardShrink {
        threshold: f32,
    },
    /// x - threshold above threshold, x + threshold below -threshold, else 0.
    SoftShrink {
        threshold: f32,
    },
    /// x - tanh(x).
    TanhShrink,
    /// 0 for x <= -1, (x + 1)^2 / 4 for x < 1, else x.
    SparsePlus,
    /// 0 for x <= -1, 1 for x >= 1, else (x + 1) / 2.
    SparseSigmoid,
    /// (x + sqrt(x^2 + b)) / 2.
    Squareplus {
        b: f32,
    },
    /// log(sigmoid(x)) = -softplus(-x).
    LogSigmoid,
    /// x - logsumexp(x) over the last axis.
    LogSoftmax,
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
            Activation::HardSigmoidKeras2 => "hard_sigmoid (Keras 2)",
            Activation::Tanh => "tanh",
            Activation::Softmax => "softmax",
            Activation::Elu { .. } => "elu",
            Activation::Selu => "selu",
            Activation::Silu => "silu",
            Activation::Softplus => "softplus",
            Activation::Softsign => "softsign",
            Activation::Exponential => "exponential",
            Activation::Gelu { approximate: false } => "gelu",
            Activation::Gelu { approximate: true } => "gelu_tanh",
            Activation::Mish => "mish",
            Activation::Celu { .. } => "celu",
            Activation::HardSilu => "hard_silu",
            Activation::HardTanh => "hard_tanh",
            Activation::HardShrink { .. } => "hard_shrink",
            Activation::SoftShrink { .. } => "soft_shrink",
            Activation::TanhShrink => "tanh_shrink",
            Activation::SparsePlus => "sparse_plus",
            Activation::SparseSigmoid => "sparse_sigmoid",
            Activation::Squareplus { .. } => "squareplus",
            Activation::LogSigmoid => "log_sigmoid",
            Activation::LogSoftmax => "log_softmax",
        }
    }

    /// Softmax and log_softmax: they read a whole last-axis row, not one element.
    pub fn is_row_wise(&self) -> bool {
        matches!(self, Activation::Softmax | Activation::LogSoftmax)
    }
}
