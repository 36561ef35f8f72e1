//! A `.keras` file's `compile_config` as training settings: one loss per output, the optimizer
//! and the metrics, as `model.compile(...)` recorded them.

use serde_json::Value;

use super::loss::Loss;
use super::optim::OptimizerSpec;
use super::train_metrics::TrainMetrics;
use crate::error::{Error, Result};
use crate::graph::Graph;

/// What the model was compiled with (each part None / empty where the config has none).
#[derive(Debug, Clone)]
pub struct Compiled {
    /// One per model output, or empty when the config has no loss.
    pub losses: Vec<Loss>,
    pub loss_weights: Vec<f32>,
    pub optimizer: Option<OptimizerSpec>,
    pub metrics: TrainMetrics,
}

impl Compiled {
    /// `path` is the model file, for messages.
    pub fn from_graph(graph: &Graph, path: &std::path::Path) -> Result<Compiled> {
        let output_names: Vec<String> = graph.outputs.iter().map(|p| p.name.clone()).collect();
        let Some(c) = graph.compile_config.as_ref() else {
            return Ok(Compiled {
                losses: Vec::new(),
                loss_weights: Vec::new(),
                optimizer: None,
                metrics: TrainMetrics::from_names(&[], &output_names)?,
            });
        };
        let field = |name: &str| c.get(name).filter(|v| !v.is_null());
        let outputs = graph.outputs.len();
        let losses = match field("loss") {
            None => Vec::new(),
            Some(Value::Array(list)) => {
                if list.len() != outputs {
                    return Err(Error::Train(format!(
                        "the compile config has {} losses for {outputs} outputs",
                        list.len()
                    )));
                }
                list.iter().map(Loss::from_keras).collect::<Result<_>>()?
            }
            // {"output_name": loss, ...} for a model with named outputs.
            Some(Value::Object(map)) if !map.contains_key("class_name") => graph
                .outputs
                .iter()
                .map(|p| match map.get(&p.name) {
                    Some(v) => Loss::from_keras(v),
                    None => Err(Error::Train(format!(
                        "the compile config has no loss for output '{}'",
                        p.name
                    ))),
                })
                .collect::<Result<_>>()?,
            Some(one) => vec![Loss::from_keras(one)?; outputs],
        };
        let loss_weights = match field("loss_weights") {
            None => Vec::new(),
            Some(Value::Array(ws)) => ws
                .iter()
                .map(|w| {
                    w.as_f64()
                        .map(|w| w as f32)
                        .ok_or_else(|| Error::Train(format!("loss_weights: {w} is not a number")))
                })
                .collect::<Result<_>>()?,
            Some(Value::Number(n)) => vec![n.as_f64().unwrap_or(1.0) as f32; outputs],
            Some(other) => {
                return Err(Error::Train(format!(
                    "loss_weights: {other} is not supported (a list of numbers)"
                )))
            }
        };
        let optimizer = field("optimizer")
            .map(|v| OptimizerSpec::from_keras(v, path))
            .transpose()?;
        let metrics = TrainMetrics::from_compile_config(c, &output_names, path)?;
        Ok(Compiled {
            losses,
            loss_weights,
            optimizer,
            metrics,
        })
    }
}
