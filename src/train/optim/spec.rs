//! What optimizer to train with: parsed from a `.keras` file's `compile_config` (the serialized
//! `{"module": "keras.optimizers", "class_name": "Adam", "config": {...}}`, or a bare name such
//! as "adam") or chosen on the command line by name with Keras's defaults. Hyperparameters are
//! kept as Keras's config holds them (Python floats, f64) and cast where Keras casts them.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::train::schedule::{LearningRate, Schedule};

/// One optimizer's update rule and hyperparameters, with the options every Keras 3 optimizer
/// has (weight decay, one kind of clipping).
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerSpec {
    pub rule: Rule,
    /// Keras's name for it ("adam"): the prefix of its variables' paths.
    pub name: String,
    pub learning_rate: LearningRate,
    /// The schedule as serialized, kept to write it back unchanged.
    pub(crate) schedule_source: Option<Value>,
    /// `variable -= variable * weight_decay * lr` before each update (AdamW's default 0.004).
    pub weight_decay: Option<f64>,
    pub clip: Clip,
    /// Read and written back, unused while `use_ema` is false (the only supported value).
    ema_momentum: f64,
    ema_overwrite_frequency: Option<i64>,
}

/// The update rule: Keras's optimizer classes wgnn implements.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Sgd {
        momentum: f64,
        nesterov: bool,
    },
    Adam(AdamParams),
    /// Adam whose weight decay is required (Keras's AdamW is exactly Adam plus the base
    /// optimizer's weight decay).
    AdamW(AdamParams),
    RmsProp {
        rho: f64,
        momentum: f64,
        epsilon: f64,
        centered: bool,
    },
    Adagrad {
        initial_accumulator_value: f64,
        epsilon: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamParams {
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    pub amsgrad: bool,
}

/// Gradient clipping before the update; Keras allows at most one kind. A bound that is not
/// positive clips nothing, as in Keras.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clip {
    None,
    /// Each gradient scaled to an L2 norm of at most this.
    Norm(f64),
    /// All gradients scaled together to a global L2 norm of at most this.
    GlobalNorm(f64),
    /// Each gradient value clamped to [-v, v].
    Value(f64),
}

/// The names `by_name` and compile configs accept (case-insensitive, as Keras matches them).
pub const KNOWN_OPTIMIZERS: [&str; 5] = ["sgd", "adam", "adamw", "rmsprop", "adagrad"];

/// Fields of every Keras 3 optimizer's config.
const BASE_FIELDS: [&str; 12] = [
    "name",
    "learning_rate",
    "weight_decay",
    "clipnorm",
    "global_clipnorm",
    "clipvalue",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
    // Keras 2's argument: Keras 3 drops it with a warning.
    "decay",
];

impl Rule {
    /// Keras's class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            Rule::Sgd { .. } => "SGD",
            Rule::Adam(_) => "Adam",
            Rule::AdamW(_) => "AdamW",
            Rule::RmsProp { .. } => "RMSprop",
            Rule::Adagrad { .. } => "Adagrad",
        }
    }
}

impl OptimizerSpec {
    /// The optimizer `name` (sgd, adam, adamw, rmsprop, adagrad, any case) with Keras's
    /// defaults, as `compile(optimizer="adam")` makes it.
    pub fn by_name(name: &str) -> Result<Self> {
        Self::from_class(name, &Map::new()).map_err(Error::Usage)
    }

    /// The same optimizer with a constant learning rate `lr`.
    pub fn with_learning_rate(mut self, lr: f32) -> Self {
        self.learning_rate = LearningRate::Constant(lr);
        self.schedule_source = None;
        self
    }

    /// Parses the `optimizer` entry of the compile config of the model file `path`: a
    /// serialized optimizer or a bare name.
    pub fn from_keras(value: &Value, path: &Path) -> Result<Self> {
        Self::parse(value)
            .map_err(|m| Error::format(path, format!("compile_config: optimizer: {m}")))
    }

    fn parse(value: &Value) -> Result<Self, String> {
        match value {
            Value::String(name) => Self::from_class(name, &Map::new()),
            Value::Object(obj) => {
                let class = obj
                    .get("class_name")
                    .and_then(Value::as_str)
                    .ok_or("a serialized optimizer needs a class_name")?;
                if let Some(module) = obj.get("module").and_then(Value::as_str) {
                    if module != "keras.optimizers" {
                        return Err(format!(
                            "{class} from module '{module}' is not a Keras optimizer (known: {})",
                            KNOWN_OPTIMIZERS.join(", ")
                        ));
                    }
                }
                let empty = Map::new();
                let config = match obj.get("config") {
                    Some(Value::Object(c)) => c,
                    None | Some(Value::Null) => &empty,
                    Some(other) => {
                        return Err(format!("{class}: config must be an object, found {other}"))
                    }
                };
                Self::from_class(class, config)
            }
            other => Err(format!(
                "expected a serialized optimizer or a name, found {other}"
            )),
        }
    }

    fn from_class(class: &str, config: &Map<String, Value>) -> Result<Self, String> {
        let lower = class.to_ascii_lowercase();
        let c = Fields { class, config };
        let (rule, own, default_lr, default_name): (Rule, &[&str], f64, &str) = match lower.as_str()
        {
            "sgd" => {
                let momentum = c.number_or("momentum", 0.0)?;
                if !(0.0..=1.0).contains(&momentum) {
                    return Err(format!(
                        "{class}: momentum must be a float in [0, 1], found {momentum}"
                    ));
                }
                let rule = Rule::Sgd {
                    momentum,
                    nesterov: c.bool_or("nesterov", false)?,
                };
                (rule, &["momentum", "nesterov"], 0.01, "sgd")
            }
            "adam" | "adamw" => {
                let p = AdamParams {
                    beta_1: c.number_or("beta_1", 0.9)?,
                    beta_2: c.number_or("beta_2", 0.999)?,
                    epsilon: c.number_or("epsilon", 1e-7)?,
                    amsgrad: c.bool_or("amsgrad", false)?,
                };
                let own: &[&str] = &["beta_1", "beta_2", "epsilon", "amsgrad"];
                if lower == "adam" {
                    (Rule::Adam(p), own, 0.001, "adam")
                } else {
                    (Rule::AdamW(p), own, 0.001, "adam_w")
                }
            }
            "rmsprop" => {
                let rule = Rule::RmsProp {
                    rho: c.number_or("rho", 0.9)?,
                    momentum: c.number_or("momentum", 0.0)?,
                    epsilon: c.number_or("epsilon", 1e-7)?,
                    centered: c.bool_or("centered", false)?,
                };
                (
                    rule,
                    &["rho", "momentum", "epsilon", "centered"],
                    0.001,
                    "rm_sprop",
                )
            }
            "adagrad" => {
                let rule = Rule::Adagrad {
                    initial_accumulator_value: c.number_or("initial_accumulator_value", 0.1)?,
                    epsilon: c.number_or("epsilon", 1e-7)?,
                };
                (
                    rule,
                    &["initial_accumulator_value", "epsilon"],
                    0.001,
                    "adagrad",
                )
            }
            _ => {
                return Err(format!(
                    "unknown optimizer '{class}' (known: {})",
                    KNOWN_OPTIMIZERS.join(", ")
                ))
            }
        };
        if let Some(k) = config
            .keys()
            .find(|k| !BASE_FIELDS.contains(&k.as_str()) && !own.contains(&k.as_str()))
        {
            let mut known: Vec<&str> = BASE_FIELDS[..11].to_vec();
            known.extend_from_slice(own);
            return Err(format!(
                "{class}: unknown field '{k}' (known: {})",
                known.join(", ")
            ));
        }
        if c.bool_or("use_ema", false)? {
            return Err(format!(
                "{class}: use_ema: exponential moving averages of the weights are not supported"
            ));
        }
        for field in ["loss_scale_factor", "gradient_accumulation_steps"] {
            if !matches!(config.get(field), None | Some(Value::Null)) {
                let what = if field == "loss_scale_factor" {
                    "loss scaling is not supported"
                } else {
                    "gradient accumulation is not supported"
                };
                return Err(format!("{class}: {field}: {what}"));
            }
        }
        let (learning_rate, schedule_source) = match config.get("learning_rate") {
            None | Some(Value::Null) => (LearningRate::Constant(default_lr as f32), None),
            Some(Value::Number(n)) if n.is_f64() => (
                LearningRate::Constant(n.as_f64().unwrap_or(f64::NAN) as f32),
                None,
            ),
            Some(v @ Value::Object(_)) => {
                let s =
                    Schedule::from_keras(v).map_err(|m| format!("{class}: learning_rate: {m}"))?;
                (LearningRate::Schedule(s), Some(v.clone()))
            }
            Some(other) => {
                return Err(format!(
                    "{class}: learning_rate must be a float or a serialized schedule, found {other}"
                ))
            }
        };
        let weight_decay = c.optional("weight_decay")?;
        let weight_decay = match (&rule, weight_decay) {
            (Rule::AdamW(_), None) if config.contains_key("weight_decay") => {
                return Err(format!("{class}: weight_decay must be a float, found null"))
            }
            (Rule::AdamW(_), None) => Some(0.004),
            (_, wd) => wd,
        };
        let clips = [
            ("clipnorm", c.optional("clipnorm")?),
            ("global_clipnorm", c.optional("global_clipnorm")?),
            ("clipvalue", c.optional("clipvalue")?),
        ];
        let set: Vec<&str> = clips
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect();
        if set.len() > 1 {
            return Err(format!(
                "{class}: only one of clipnorm, clipvalue and global_clipnorm can be set, found {}",
                set.join(", ")
            ));
        }
        let clip = match clips {
            [(_, Some(v)), _, _] => Clip::Norm(v),
            [_, (_, Some(v)), _] => Clip::GlobalNorm(v),
            [_, _, (_, Some(v))] => Clip::Value(v),
            _ => Clip::None,
        };
        let name = match config.get("name") {
            None | Some(Value::Null) => default_name.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(format!("{class}: name must be a string, found {other}")),
        };
        let ema_overwrite_frequency = match config.get("ema_overwrite_frequency") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().ok_or_else(|| {
                format!("{class}: ema_overwrite_frequency must be an integer, found {v}")
            })?),
        };
        Ok(OptimizerSpec {
            rule,
            name,
            learning_rate,
            schedule_source,
            weight_decay,
            clip,
            ema_momentum: c.number_or("ema_momentum", 0.99)?,
            ema_overwrite_frequency,
        })
    }

    /// The optimizer serialized as Keras's `keras.optimizers.serialize` writes it, for a
    /// compile_config: a `from_keras` of Keras's own output gives it back unchanged.
    pub fn to_keras(&self) -> Value {
        let learning_rate = match (&self.learning_rate, &self.schedule_source) {
            (LearningRate::Schedule(_), Some(source)) => source.clone(),
            // A schedule always comes with its source; a constant is the float32 variable's value.
            (LearningRate::Schedule(s), None) => json!(s.at(0) as f64),
            (LearningRate::Constant(lr), _) => json!(*lr as f64),
        };
        let (clipnorm, global_clipnorm, clipvalue) = match self.clip {
            Clip::None => (None, None, None),
            Clip::Norm(v) => (Some(v), None, None),
            Clip::GlobalNorm(v) => (None, Some(v), None),
            Clip::Value(v) => (None, None, Some(v)),
        };
        let mut config = json!({
            "name": self.name,
            "learning_rate": learning_rate,
            "weight_decay": self.weight_decay,
            "clipnorm": clipnorm,
            "global_clipnorm": global_clipnorm,
            "clipvalue": clipvalue,
            "use_ema": false,
            "ema_momentum": self.ema_momentum,
            "ema_overwrite_frequency": self.ema_overwrite_frequency,
            "loss_scale_factor": null,
            "gradient_accumulation_steps": null,
        });
        let own = match &self.rule {
            Rule::Sgd { momentum, nesterov } => json!({"momentum": momentum, "nesterov": nesterov}),
            Rule::Adam(p) | Rule::AdamW(p) => json!({
                "beta_1": p.beta_1,
                "beta_2": p.beta_2,
                "epsilon": p.epsilon,
                "amsgrad": p.amsgrad,
            }),
            Rule::RmsProp {
                rho,
                momentum,
                epsilon,
                centered,
            } => json!({
                "rho": rho,
                "momentum": momentum,
                "epsilon": epsilon,
                "centered": centered,
            }),
            Rule::Adagrad {
                initial_accumulator_value,
                epsilon,
            } => json!({
                "initial_accumulator_value": initial_accumulator_value,
                "epsilon": epsilon,
            }),
        };
        if let (Value::Object(config), Value::Object(own)) = (&mut config, own) {
            config.extend(own);
        }
        json!({
            "module": "keras.optimizers",
            "class_name": self.rule.class_name(),
            "config": config,
            "registered_name": null,
        })
    }
}

/// An optimizer config's fields, read with errors that name the class and the field.
struct Fields<'a> {
    class: &'a str,
    config: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn number_or(&self, field: &str, default: f64) -> Result<f64, String> {
        Ok(self.optional(field)?.unwrap_or(default))
    }

    fn optional(&self, field: &str) -> Result<Option<f64>, String> {
        match self.config.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(other) => Err(format!(
                "{}: {field} must be a number, found {other}",
                self.class
            )),
        }
    }

    fn bool_or(&self, field: &str, default: bool) -> Result<bool, String> {
        match self.config.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(format!(
                "{}: {field} must be true or false, found {other}",
                self.class
            )),
        }
    }
}
