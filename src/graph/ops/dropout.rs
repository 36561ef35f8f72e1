//! Dropout and the noise layers: the identity at inference, random in training.

/// Which random perturbation a layer applies in training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DropoutKind {
    /// Dropout / SpatialDropout*: zero with probability `rate`, scale the rest by 1/(1-rate).
    Dropout,
    /// GaussianDropout: multiply by N(1, rate / (1 - rate)).
    GaussianDropout,
    /// GaussianNoise: add N(0, stddev²).
    GaussianNoise { stddev: f32 },
    /// AlphaDropout: SELU-preserving dropout.
    AlphaDropout,
}

impl DropoutKind {
    /// Which terms of y = x * multiplier + addend the layer's training noise has.
    pub fn noise_terms(&self) -> (bool, bool) {
        match self {
            DropoutKind::GaussianNoise { .. } => (false, true),
            DropoutKind::Dropout | DropoutKind::GaussianDropout => (true, false),
            DropoutKind::AlphaDropout => (true, true),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dropout {
    pub kind: DropoutKind,
    pub rate: f32,
    /// Item axes (0-based, without the batch) along which one draw is shared:
    /// SpatialDropout2D shares over the two spatial axes; a `noise_shape` with 1s does the same.
    pub shared_axes: Vec<usize>,
}

impl Dropout {
    pub fn is_noop_in_training(&self) -> bool {
        match self.kind {
            DropoutKind::GaussianNoise { stddev } => stddev == 0.0,
            _ => self.rate == 0.0,
        }
    }
}
