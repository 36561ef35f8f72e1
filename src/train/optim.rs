//! Placeholder optimizers (plain SGD and Adam with Keras's defaults) until the full set with
//! Keras's exact update rules lands; same API.

use ndarray::ArrayD;
use serde_json::Value;

use super::ParamGrads;
use crate::error::{Error, Result};
use crate::graph::ParamStore;

#[derive(Debug, Clone, PartialEq)]
pub enum OptimizerSpec {
    Sgd {
        learning_rate: f32,
    },
    Adam {
        learning_rate: f32,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
    },
}

impl OptimizerSpec {
    pub fn by_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "sgd" => Ok(OptimizerSpec::Sgd {
                learning_rate: 0.01,
            }),
            "adam" => Ok(OptimizerSpec::Adam {
                learning_rate: 0.001,
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
            }),
            other => Err(Error::Train(format!("unknown optimizer '{other}'"))),
        }
    }

    pub fn from_keras(v: &Value) -> Result<Self> {
        match v {
            Value::String(s) => Self::by_name(s),
            Value::Object(o) => {
                let class = o.get("class_name").and_then(Value::as_str).unwrap_or("");
                let mut spec = Self::by_name(class)?;
                if let Some(lr) = o
                    .get("config")
                    .and_then(|c| c.get("learning_rate"))
                    .and_then(Value::as_f64)
                {
                    spec = spec.with_learning_rate(lr as f32);
                }
                Ok(spec)
            }
            other => Err(Error::Train(format!("optimizer: unexpected {other}"))),
        }
    }

    pub fn with_learning_rate(self, lr: f32) -> Self {
        match self {
            OptimizerSpec::Sgd { .. } => OptimizerSpec::Sgd { learning_rate: lr },
            OptimizerSpec::Adam {
                beta_1,
                beta_2,
                epsilon,
                ..
            } => OptimizerSpec::Adam {
                learning_rate: lr,
                beta_1,
                beta_2,
                epsilon,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct Optimizer {
    spec: OptimizerSpec,
    iterations: u64,
    slots: Vec<Option<(ArrayD<f32>, ArrayD<f32>)>>,
}

impl Optimizer {
    pub fn new(spec: OptimizerSpec, params: &ParamStore) -> Result<Self> {
        Ok(Optimizer {
            spec,
            iterations: 0,
            slots: vec![None; params.len()],
        })
    }

    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    pub fn apply(&mut self, params: &mut ParamStore, grads: &mut ParamGrads) -> Result<()> {
        let t = (self.iterations + 1) as f32;
        for (id, g) in grads.iter() {
            if !params.param(id).trainable {
                continue;
            }
            let w = params.get_mut(id);
            match self.spec {
                OptimizerSpec::Sgd { learning_rate } => {
                    w.zip_mut_with(g, |w, &g| *w -= learning_rate * g)
                }
                OptimizerSpec::Adam {
                    learning_rate,
                    beta_1,
                    beta_2,
                    epsilon,
                } => {
                    let (m, v) = self.slots[id.0].get_or_insert_with(|| {
                        (ArrayD::zeros(g.raw_dim()), ArrayD::zeros(g.raw_dim()))
                    });
                    let alpha =
                        learning_rate * (1.0 - beta_2.powf(t)).sqrt() / (1.0 - beta_1.powf(t));
                    ndarray::Zip::from(&mut *w)
                        .and(&mut *m)
                        .and(&mut *v)
                        .and(g)
                        .for_each(|w, m, v, &g| {
                            *m += (g - *m) * (1.0 - beta_1);
                            *v += (g * g - *v) * (1.0 - beta_2);
                            *w -= alpha * *m / (v.sqrt() + epsilon);
                        });
                }
            }
        }
        self.iterations += 1;
        Ok(())
    }
}
