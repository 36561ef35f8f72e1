//! Learning rates: a constant or one of Keras's `keras.optimizers.schedules`, evaluated at the
//! optimizer's iteration count as Keras 3 does with the TensorFlow backend: the step (an int64)
//! and every hyperparameter are cast to float32 and combined in Keras's operation order, so
//! the values match Keras's to the last bit or two.

use serde_json::{Map, Value};

/// What an optimizer's `learning_rate` is.
#[derive(Debug, Clone, PartialEq)]
pub enum LearningRate {
    /// A float: Keras keeps it in a float32 `learning_rate` variable.
    Constant(f32),
    /// A schedule of the iteration count (no variable).
    Schedule(Schedule),
}

impl LearningRate {
    /// The rate at iteration `step`.
    pub fn at(&self, step: i64) -> f32 {
        match self {
            LearningRate::Constant(lr) => *lr,
            LearningRate::Schedule(s) => s.at(step),
        }
    }
}

/// The schedules of `keras.optimizers.schedules` wgnn supports. Hyperparameters keep the type
/// Keras computes them in: float32 where Keras casts them to the learning rate's dtype, f64
/// where Keras uses the Python float in a Python expression first (`1 - alpha`).
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// `initial * decay_rate ^ (step / decay_steps)`, the exponent floored with `staircase`.
    ExponentialDecay {
        initial: f32,
        decay_steps: f32,
        decay_rate: f32,
        staircase: bool,
    },
    /// `initial / (1 + decay_rate * step / decay_steps)`, the ratio floored with `staircase`.
    InverseTimeDecay {
        initial: f32,
        decay_steps: f32,
        decay_rate: f32,
        staircase: bool,
    },
    /// `(initial - end) * (1 - step / decay_steps) ^ power + end`; with `cycle` the horizon
    /// grows to the next multiple of `decay_steps`, else the step stops at `decay_steps`.
    PolynomialDecay {
        initial: f32,
        decay_steps: f32,
        end: f32,
        power: f32,
        cycle: bool,
    },
    /// Cosine decay from `initial` (or, after a linear warmup of `warmup_steps` from `initial`,
    /// from `warmup_target`) to `alpha` times it over `decay_steps`.
    CosineDecay {
        initial: f32,
        decay_steps: f32,
        alpha: f64,
        warmup_target: Option<f32>,
        warmup_steps: f32,
    },
    /// `values[i]` while `boundaries[i-1] < step <= boundaries[i]`.
    PiecewiseConstantDecay {
        boundaries: Vec<i64>,
        values: Vec<f32>,
    },
}

const SUPPORTED: &str =
    "ExponentialDecay, InverseTimeDecay, PolynomialDecay, CosineDecay, PiecewiseConstantDecay";

impl Schedule {
    /// Parses a serialized schedule (`{"module": "keras.optimizers.schedules", "class_name":
    /// "ExponentialDecay", "config": {...}}`). Errors name the field; the caller adds the file.
    pub fn from_keras(value: &Value) -> Result<Self, String> {
        let obj = value
            .as_object()
            .ok_or_else(|| format!("a schedule must be a serialized object, found {value}"))?;
        let class = obj
            .get("class_name")
            .and_then(Value::as_str)
            .ok_or("a schedule needs a class_name")?;
        if let Some(module) = obj.get("module").and_then(Value::as_str) {
            if module != "keras.optimizers.schedules" {
                return Err(format!(
                    "schedule {class} from module '{module}' is not a Keras schedule (supported: {SUPPORTED})"
                ));
            }
        }
        let empty = Map::new();
        let config = match obj.get("config") {
            Some(Value::Object(c)) => c,
            None | Some(Value::Null) => &empty,
            Some(other) => {
                return Err(format!(
                    "schedule {class}: config must be an object, found {other}"
                ))
            }
        };
        let c = Fields { class, config };
        let schedule = match class {
            "ExponentialDecay" | "InverseTimeDecay" => {
                c.known(&[
                    "initial_learning_rate",
                    "decay_steps",
                    "decay_rate",
                    "staircase",
                    "name",
                ])?;
                let initial = c.initial()?;
                let decay_steps = c.decay_steps("decay_steps")?;
                let decay_rate = c.number("decay_rate")? as f32;
                let staircase = c.bool_or("staircase", false)?;
                if class == "ExponentialDecay" {
                    Schedule::ExponentialDecay {
                        initial,
                        decay_steps,
                        decay_rate,
                        staircase,
                    }
                } else {
                    Schedule::InverseTimeDecay {
                        initial,
                        decay_steps,
                        decay_rate,
                        staircase,
                    }
                }
            }
            "PolynomialDecay" => {
                c.known(&[
                    "initial_learning_rate",
                    "decay_steps",
                    "end_learning_rate",
                    "power",
                    "cycle",
                    "name",
                ])?;
                Schedule::PolynomialDecay {
                    initial: c.initial()?,
                    decay_steps: c.decay_steps("decay_steps")?,
                    end: c.number_or("end_learning_rate", 0.0001)? as f32,
                    power: c.number_or("power", 1.0)? as f32,
                    cycle: c.bool_or("cycle", false)?,
                }
            }
            "CosineDecay" => {
                c.known(&[
                    "initial_learning_rate",
                    "decay_steps",
                    "alpha",
                    "name",
                    "warmup_target",
                    "warmup_steps",
                ])?;
                let warmup_target = match config.get("warmup_target") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(c.number("warmup_target")? as f32),
                };
                Schedule::CosineDecay {
                    initial: c.initial()?,
                    decay_steps: c.decay_steps("decay_steps")?,
                    alpha: c.number_or("alpha", 0.0)?,
                    warmup_target,
                    warmup_steps: c.number_or("warmup_steps", 0.0)? as f32,
                }
            }
            "PiecewiseConstantDecay" => {
                c.known(&["boundaries", "values", "name"])?;
                let list = |field: &str| -> Result<&Vec<Value>, String> {
                    config
                        .get(field)
                        .and_then(Value::as_array)
                        .ok_or_else(|| format!("schedule {class}: {field} must be a list"))
                };
                // Keras casts the boundaries to the step's int64 (truncating floats).
                let boundaries = list("boundaries")?
                    .iter()
                    .map(|b| {
                        b.as_f64().map(|b| b as i64).ok_or_else(|| {
                            format!("schedule {class}: boundaries must be numbers, found {b}")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let values = list("values")?
                    .iter()
                    .map(|v| {
                        v.as_f64().map(|v| v as f32).ok_or_else(|| {
                            format!("schedule {class}: values must be numbers, found {v}")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if boundaries.is_empty() || boundaries.len() + 1 != values.len() {
                    return Err(format!(
                        "schedule {class}: needs one more value than boundaries (and at least one boundary), found {} boundaries and {} values",
                        boundaries.len(),
                        values.len()
                    ));
                }
                Schedule::PiecewiseConstantDecay { boundaries, values }
            }
            other => {
                return Err(format!(
                    "learning-rate schedule '{other}' is not supported (supported: {SUPPORTED})"
                ))
            }
        };
        Ok(schedule)
    }

    /// The learning rate at iteration `step`.
    pub fn at(&self, step: i64) -> f32 {
        let global = step as f32;
        match *self {
            Schedule::ExponentialDecay {
                initial,
                decay_steps,
                decay_rate,
                staircase,
            } => {
                let mut p = global / decay_steps;
                if staircase {
                    p = p.floor();
                }
                initial * decay_rate.powf(p)
            }
            Schedule::InverseTimeDecay {
                initial,
                decay_steps,
                decay_rate,
                staircase,
            } => {
                let mut p = global / decay_steps;
                if staircase {
                    p = p.floor();
                }
                initial / (1.0 + decay_rate * p)
            }
            Schedule::PolynomialDecay {
                initial,
                decay_steps,
                end,
                power,
                cycle,
            } => {
                let (step, horizon) = if cycle {
                    // The first multiple of decay_steps at or past the step (1 at step 0).
                    let multiplier = if global == 0.0 {
                        1.0
                    } else {
                        (global / decay_steps).ceil()
                    };
                    (global, decay_steps * multiplier)
                } else {
                    (global.min(decay_steps), decay_steps)
                };
                let p = step / horizon;
                (initial - end) * (1.0 - p).powf(power) + end
            }
            Schedule::CosineDecay {
                initial,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
            } => {
                let decay = |step: f32, from: f32| {
                    let completed = step / decay_steps;
                    let cosine = 0.5f32 * (1.0 + (std::f32::consts::PI * completed).cos());
                    from * (((1.0 - alpha) as f32) * cosine + alpha as f32)
                };
                match warmup_target {
                    None => decay(global.min(decay_steps), initial),
                    Some(target) => {
                        let step = global.min(decay_steps + warmup_steps);
                        if step < warmup_steps {
                            let completed = step / warmup_steps;
                            (target - initial) * completed + initial
                        } else {
                            decay(step - warmup_steps, target)
                        }
                    }
                }
            }
            Schedule::PiecewiseConstantDecay {
                ref boundaries,
                ref values,
            } => {
                let last = boundaries.len() - 1;
                if step <= boundaries[0] {
                    values[0]
                } else if step > boundaries[last] {
                    values[last + 1]
                } else {
                    let i = (1..=last)
                        .find(|&i| step > boundaries[i - 1] && step <= boundaries[i])
                        .unwrap_or(last);
                    values[i]
                }
            }
        }
    }
}

/// A schedule's config fields, read with errors that name the schedule and the field.
struct Fields<'a> {
    class: &'a str,
    config: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn known(&self, fields: &[&str]) -> Result<(), String> {
        match self.config.keys().find(|k| !fields.contains(&k.as_str())) {
            Some(k) => Err(format!(
                "schedule {}: unknown field '{k}' (known: {})",
                self.class,
                fields.join(", ")
            )),
            None => Ok(()),
        }
    }

    fn number(&self, field: &str) -> Result<f64, String> {
        match self.config.get(field) {
            Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(f64::NAN)),
            Some(other) => Err(format!(
                "schedule {}: {field} must be a number, found {other}",
                self.class
            )),
            None => Err(format!("schedule {}: {field} is missing", self.class)),
        }
    }

    fn number_or(&self, field: &str, default: f64) -> Result<f64, String> {
        match self.config.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => self.number(field),
        }
    }

    fn bool_or(&self, field: &str, default: bool) -> Result<bool, String> {
        match self.config.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(format!(
                "schedule {}: {field} must be true or false, found {other}",
                self.class
            )),
        }
    }

    /// Keras computes in the dtype of `initial_learning_rate`: a Python int would make the
    /// whole schedule integer arithmetic, which wgnn does not reproduce.
    fn initial(&self) -> Result<f32, String> {
        match self.config.get("initial_learning_rate") {
            Some(Value::Number(n)) if n.is_f64() => Ok(n.as_f64().unwrap_or(f64::NAN) as f32),
            Some(other @ Value::Number(_)) => Err(format!(
                "schedule {}: initial_learning_rate must be a float (Keras computes an integer one in integers), found {other}",
                self.class
            )),
            Some(other) => Err(format!(
                "schedule {}: initial_learning_rate must be a float, found {other}",
                self.class
            )),
            None => Err(format!("schedule {}: initial_learning_rate is missing", self.class)),
        }
    }

    fn decay_steps(&self, field: &str) -> Result<f32, String> {
        let steps = self.number(field)?;
        if steps > 0.0 {
            Ok(steps as f32)
        } else {
            Err(format!(
                "schedule {}: {field} must be > 0, found {steps}",
                self.class
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(class: &str, config: Value) -> Result<Schedule, String> {
        Schedule::from_keras(
            &json!({"module": "keras.optimizers.schedules", "class_name": class, "config": config}),
        )
    }

    #[test]
    fn piecewise_picks_the_interval_including_its_upper_boundary() {
        let s = parse(
            "PiecewiseConstantDecay",
            json!({"boundaries": [2, 5], "values": [1.0, 0.5, 0.25]}),
        )
        .unwrap();
        let got: Vec<f32> = (0..8).map(|i| s.at(i)).collect();
        assert_eq!(got, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]);
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(
            "ExponentialDecay",
            json!({"initial_learning_rate": 0.1, "decay_steps": 0, "decay_rate": 0.5}),
        )
        .unwrap_err();
        assert!(e.contains("decay_steps must be > 0"), "{e}");
        let e = parse(
            "ExponentialDecay",
            json!({"initial_learning_rate": 1, "decay_steps": 3, "decay_rate": 0.5}),
        )
        .unwrap_err();
        assert!(e.contains("initial_learning_rate must be a float"), "{e}");
        let e = parse("CosineDecayRestarts", json!({})).unwrap_err();
        assert!(
            e.contains("CosineDecayRestarts") && e.contains("PiecewiseConstantDecay"),
            "{e}"
        );
        let e = parse(
            "CosineDecay",
            json!({"initial_learning_rate": 0.1, "decay_steps": 3, "beta": 1.0}),
        )
        .unwrap_err();
        assert!(e.contains("unknown field 'beta'"), "{e}");
        let e = parse(
            "PiecewiseConstantDecay",
            json!({"boundaries": [1, 2], "values": [1.0, 0.5]}),
        )
        .unwrap_err();
        assert!(e.contains("one more value"), "{e}");
    }
}
