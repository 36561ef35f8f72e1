//! Which fields of a layer's Keras config govern each of its weights: the initializer that
//! creates it (with Keras's per-layer default) and the regularizer that penalizes it. The
//! weight names are the loader's (`Builder::params`), which are Keras's variable names.

use serde_json::Value;

use super::fields::LayerConfig;
use crate::error::Result;
use crate::train::init::Initializer;

/// How one weight is made and penalized.
pub(crate) struct WeightFields {
    /// The config field naming its initializer; None where Keras fixes it (RMSNormalization's
    /// scale, Normalization's statistics).
    pub initializer: Option<&'static str>,
    /// Keras's initializer when the field is absent (or fixed).
    pub default: Initializer,
    pub regularizer: Option<&'static str>,
    /// BatchNormalization's renorm stddevs (Keras 2): the square root of what the moving
    /// variance's initializer draws.
    pub sqrt: bool,
}

fn fields(
    initializer: Option<&'static str>,
    default: Initializer,
    regularizer: Option<&'static str>,
) -> WeightFields {
    WeightFields {
        initializer,
        default,
        regularizer,
        sqrt: false,
    }
}

/// The fields of weight `what` of a layer of class `class`; None for a weight name the loader
/// does not create.
pub(crate) fn weight_fields(class: &str, what: &str) -> Option<WeightFields> {
    use Initializer::{Ones, Zeros};
    Some(match what {
        // DepthwiseConv's single kernel is named `kernel` but configured as `depthwise_*`.
        "kernel" if class.starts_with("DepthwiseConv") => fields(
            Some("depthwise_initializer"),
            Initializer::glorot_uniform(),
            Some("depthwise_regularizer"),
        ),
        "kernel" => fields(
            Some("kernel_initializer"),
            Initializer::glorot_uniform(),
            Some("kernel_regularizer"),
        ),
        "bias" => fields(Some("bias_initializer"), Zeros, Some("bias_regularizer")),
        "recurrent_kernel" => fields(
            Some("recurrent_initializer"),
            Initializer::orthogonal(),
            Some("recurrent_regularizer"),
        ),
        "embeddings" => fields(
            Some("embeddings_initializer"),
            Initializer::uniform(),
            Some("embeddings_regularizer"),
        ),
        "depthwise_kernel" => fields(
            Some("depthwise_initializer"),
            Initializer::glorot_uniform(),
            Some("depthwise_regularizer"),
        ),
        "pointwise_kernel" => fields(
            Some("pointwise_initializer"),
            Initializer::glorot_uniform(),
            Some("pointwise_regularizer"),
        ),
        "gamma" => fields(Some("gamma_initializer"), Ones, Some("gamma_regularizer")),
        "beta" => fields(Some("beta_initializer"), Zeros, Some("beta_regularizer")),
        "moving_mean" | "renorm_mean" => fields(Some("moving_mean_initializer"), Zeros, None),
        "moving_variance" => fields(Some("moving_variance_initializer"), Ones, None),
        "moving_stddev" | "renorm_stddev" => WeightFields {
            sqrt: true,
            ..fields(Some("moving_variance_initializer"), Ones, None)
        },
        "alpha" => fields(Some("alpha_initializer"), Zeros, Some("alpha_regularizer")),
        // RMSNormalization's scale and an un-adapted Normalization's statistics.
        "scale" | "variance" => fields(None, Ones, None),
        "mean" | "count" => fields(None, Zeros, None),
        _ => return None,
    })
}

/// The config holding the fields of the weights under `sub`: a Bidirectional's weights are
/// configured by the layer it wraps (`layer`, or `backward_layer` when given for the backward
/// direction); None means `cfg` itself.
pub(crate) fn fields_config<'c>(
    cfg: &LayerConfig<'c>,
    sub: &[&str],
) -> Result<Option<LayerConfig<'c>>> {
    if cfg.class != "Bidirectional" {
        return Ok(None);
    }
    let key = match sub.first() {
        Some(&"backward_layer") if cfg.get("backward_layer").is_some() => "backward_layer",
        _ => "layer",
    };
    let entry: &'c Value = cfg.get(key).ok_or_else(|| cfg.error(key, "missing"))?;
    LayerConfig::new(cfg.path, entry).map(Some)
}
