//! Typed access to one layer's Keras config, with errors that name the file, layer and field.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::graph::{Activation, Padding};

/// One layer's entry in a Keras config: `{"class_name": ..., "config": {...}}`.
pub struct LayerConfig<'a> {
    pub path: &'a Path,
    pub name: String,
    pub class: String,
    pub config: &'a Value,
}

impl<'a> LayerConfig<'a> {
    pub fn new(path: &'a Path, entry: &'a Value) -> Result<Self> {
        let class = entry
            .get("class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::format(path, "a layer entry has no 'class_name'"))?
            .to_string();
        let config = entry
            .get("config")
            .filter(|c| c.is_object())
            .ok_or_else(|| {
                Error::format(
                    path,
                    format!("layer of class '{class}' has no 'config' object"),
                )
            })?;
        let name = config
            .get("name")
            .or_else(|| entry.get("name"))
            .and_then(Value::as_str)
            .unwrap_or(&class)
            .to_string();
        Ok(LayerConfig {
            path,
            name,
            class,
            config,
        })
    }

    pub fn error(&self, field: &str, message: impl Into<String>) -> Error {
        Error::Layer {
            path: self.path.to_path_buf(),
            layer: self.name.clone(),
            class: self.class.clone(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub fn unsupported(&self, field: &str, value: &Value, supported: &str) -> Error {
        self.error(field, format!("unsupported value {value} ({supported})"))
    }

    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.config.get(field).filter(|v| !v.is_null())
    }

    pub fn usize(&self, field: &str) -> Result<usize> {
        let v = self
            .get(field)
            .ok_or_else(|| self.error(field, "missing"))?;
        as_usize(v)
            .ok_or_else(|| self.error(field, format!("expected a non-negative integer, found {v}")))
    }

    pub fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.error(field, format!("expected true or false, found {v}"))),
        }
    }

    pub fn str_or(&self, field: &str, default: &'a str) -> Result<&'a str> {
        match self.get(field) {
            None => Ok(default),
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(v) => Err(self.error(field, format!("expected a string, found {v}"))),
        }
    }

    pub fn f32_or(&self, field: &str, default: f32) -> Result<f32> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| self.error(field, format!("expected a number, found {v}"))),
        }
    }

    /// An n-tuple like Conv3D's `kernel_size`, given as a list of n positive integers or a single
    /// integer; `default` when absent.
    pub fn tuple_or(&self, field: &str, n: usize, default: Option<usize>) -> Result<Vec<usize>> {
        let v = match (self.get(field), default) {
            (Some(v), _) => v,
            (None, Some(d)) => return Ok(vec![d; n]),
            (None, None) => return Err(self.error(field, "missing")),
        };
        self.tuple_value(field, n, v, 1)
    }

    /// Like [`Self::tuple_or`] but zeros are allowed (`output_padding`); None when absent.
    pub fn tuple0(&self, field: &str, n: usize) -> Result<Option<Vec<usize>>> {
        self.get(field)
            .map(|v| self.tuple_value(field, n, v, 0))
            .transpose()
    }

    fn tuple_value(&self, field: &str, n: usize, v: &Value, min: usize) -> Result<Vec<usize>> {
        let what = if min == 0 { "non-negative" } else { "positive" };
        let bad = || self.error(field, format!("expected {n} {what} integer(s), found {v}"));
        let items = match v {
            Value::Array(items) if items.len() == n => items
                .iter()
                .map(|x| as_usize(x).ok_or_else(bad))
                .collect::<Result<Vec<_>>>()?,
            Value::Array(_) => return Err(bad()),
            other => vec![as_usize(other).ok_or_else(bad)?; n],
        };
        if items.iter().any(|&x| x < min) {
            return Err(bad());
        }
        Ok(items)
    }

    /// `padding` where Conv1D's `causal` is allowed too.
    pub fn padding_or_causal(&self) -> Result<Padding> {
        match self.str_or("padding", "valid")? {
            "causal" => Ok(Padding::Causal),
            _ => self.padding(),
        }
    }

    pub fn padding(&self) -> Result<Padding> {
        match self.str_or("padding", "valid")? {
            "valid" => Ok(Padding::Valid),
            "same" => Ok(Padding::Same),
            other => Err(self.unsupported(
                "padding",
                &Value::from(other),
                "only 'valid' and 'same' are supported",
            )),
        }
    }

    /// `data_format` must be channels_last (or absent).
    pub fn require_channels_last(&self) -> Result<()> {
        match self.get("data_format") {
            None => Ok(()),
            Some(Value::String(s)) if s == "channels_last" => Ok(()),
            Some(v) => Err(self.unsupported("data_format", v, "only 'channels_last' is supported")),
        }
    }

    /// Fails when `field` holds anything but one of the accepted values (null counts as absent).
    pub fn require_absent_or(&self, field: &str, accepted: &[Value], why: &str) -> Result<()> {
        match self.get(field) {
            None => Ok(()),
            Some(v) if accepted.contains(v) => Ok(()),
            Some(v) => Err(self.unsupported(field, v, why)),
        }
    }

    /// An activation given by name (`"relu"`), absent meaning linear.
    pub fn activation(&self, field: &str) -> Result<Activation> {
        match self.get(field) {
            None => Ok(Activation::Linear),
            Some(Value::String(s)) => activation_by_name(s)
                .ok_or_else(|| self.error(field, format!("unknown activation '{s}'"))),
            Some(v) => Err(self.unsupported(field, v, "activations must be given by name")),
        }
    }
}

pub fn as_usize(v: &Value) -> Option<usize> {
    if let Some(n) = v.as_u64() {
        return usize::try_from(n).ok();
    }
    // Some writers store integral floats (e.g. 32.0).
    v.as_f64()
        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e12)
        .map(|f| f as usize)
}

/// Keras activation names, with their Keras 3 parameters.
/// The name a Keras 2 config's `hard_sigmoid` is given before it is built (see
/// `keras2_meanings`); no Keras file uses it.
pub const KERAS2_HARD_SIGMOID: &str = "wgnn:keras2_hard_sigmoid";

pub fn activation_by_name(name: &str) -> Option<Activation> {
    Some(match name {
        KERAS2_HARD_SIGMOID => Activation::HardSigmoidKeras2,
        "linear" => Activation::Linear,
        "relu" => Activation::RELU,
        "relu6" => Activation::Relu {
            negative_slope: 0.0,
            max_value: Some(6.0),
            threshold: 0.0,
        },
        "leaky_relu" => Activation::Relu {
            negative_slope: 0.2,
            max_value: None,
            threshold: 0.0,
        },
        "sigmoid" => Activation::Sigmoid,
        "hard_sigmoid" => Activation::HardSigmoid,
        "tanh" => Activation::Tanh,
        "softmax" => Activation::Softmax,
        "elu" => Activation::Elu { alpha: 1.0 },
        "selu" => Activation::Selu,
        "silu" | "swish" => Activation::Silu,
        "softplus" => Activation::Softplus,
        "softsign" => Activation::Softsign,
        "exponential" => Activation::Exponential,
        // Keras 3 names not listed here (glu halves an axis, sparsemax sorts, threshold has no
        // defaults) stay unknown.
        "gelu" => Activation::Gelu { approximate: false },
        "mish" => Activation::Mish,
        "celu" => Activation::Celu { alpha: 1.0 },
        "hard_silu" | "hard_swish" => Activation::HardSilu,
        "hard_tanh" => Activation::HardTanh,
        "hard_shrink" => Activation::HardShrink { threshold: 0.5 },
        "soft_shrink" => Activation::SoftShrink { threshold: 0.5 },
        "tanh_shrink" => Activation::TanhShrink,
        "sparse_plus" => Activation::SparsePlus,
        "sparse_sigmoid" => Activation::SparseSigmoid,
        "squareplus" => Activation::Squareplus { b: 4.0 },
        "log_sigmoid" => Activation::LogSigmoid,
        "log_softmax" => Activation::LogSoftmax,
        _ => return None,
    })
}
