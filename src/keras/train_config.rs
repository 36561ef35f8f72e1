//! What a Keras config says about training, recorded in the Graph: weight and activity
//! regularizers (`Graph.regularizers`), `trainable: false` on layers and nested models
//! (`Param.trainable`), and the saved `compile_config`.
//!
//! Keras 3 (keras/src/layers/layer.py) counts a weight's regularizer once per variable and only
//! while the variable is trainable (`Layer.losses` sums over `trainable_weights`), and an
//! activity regularizer once per call and per output tensor of the call.

use serde_json::Value;

use super::build::Builder;
use super::fields::LayerConfig;
use super::weight_fields::weight_fields;
use crate::error::Result;
use crate::graph::{DType, Graph, ParamId, Penalized, Regularizer, ValueId};

/// A serialized Keras regularizer as (l1, l2): `L1`, `L2`, `L1L2` (Keras 3 class names, their
/// snake_case names, and the strings `"l1"`, `"l2"`, `"l1l2"` with Keras's defaults).
pub(crate) fn regularizer_from_keras(v: &Value) -> std::result::Result<(f32, f32), String> {
    let empty = serde_json::Map::new();
    let (class, config) = match v {
        Value::String(s) => (s.as_str(), &empty),
        Value::Object(o) => {
            let class = o
                .get("class_name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("regularizer {v} has no class_name"))?;
            let config = match o.get("config") {
                None | Some(Value::Null) => &empty,
                Some(Value::Object(c)) => c,
                Some(other) => return Err(format!("regularizer config {other} is not an object")),
            };
            (class, config)
        }
        other => {
            return Err(format!(
                "expected a regularizer name or object, found {other}"
            ))
        }
    };
    // keras validate_float_arg: a finite, non-negative number; None takes the default.
    let factor = |key: &str, default: f64| -> std::result::Result<f32, String> {
        match config.get(key).filter(|x| !x.is_null()) {
            None => Ok(default as f32),
            Some(x) => match x.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 => Ok(f as f32),
                _ => Err(format!(
                    "{class} '{key}' must be a non-negative number, found {x}"
                )),
            },
        }
    };
    match class {
        "L1" | "l1" => Ok((factor("l1", 0.01)?, 0.0)),
        "L2" | "l2" => Ok((0.0, factor("l2", 0.01)?)),
        // L1L2's defaults are 0 (its docstring's 0.01 is not what the code does).
        "L1L2" | "l1l2" => Ok((factor("l1", 0.0)?, factor("l2", 0.0)?)),
        "OrthogonalRegularizer" | "orthogonal_regularizer" => {
            Err("OrthogonalRegularizer is not supported by wgnn (L1, L2 and L1L2 are)".into())
        }
        other => Err(format!(
            "unknown regularizer '{other}' (wgnn knows L1, L2 and L1L2)"
        )),
    }
}

fn penalty(field: &str, cfg: &LayerConfig, v: &Value) -> Result<(f32, f32)> {
    regularizer_from_keras(v).map_err(|m| cfg.error(field, m))
}

impl Builder<'_> {
    /// Trainable flags and weight regularizers of weights just created for `cfg` (`fields`
    /// configures them: the layer itself, or the layer a Bidirectional wraps).
    pub(crate) fn record_weight_config(
        &mut self,
        cfg: &LayerConfig,
        fields: &LayerConfig,
        specs: &[(&str, Vec<usize>)],
        ids: &[ParamId],
    ) -> Result<()> {
        let trainable =
            !self.frozen && cfg.bool_or("trainable", true)? && fields.bool_or("trainable", true)?;
        for (&id, (what, _)) in ids.iter().zip(specs) {
            if !trainable {
                self.graph.params.set_trainable(id, false);
            }
            let field = weight_fields(&fields.class, what).and_then(|w| w.regularizer);
            if let Some((field, v)) = field.and_then(|f| fields.get(f).map(|v| (f, v))) {
                let (l1, l2) = penalty(field, fields, v)?;
                self.graph.regularizers.push(Regularizer {
                    target: Penalized::Param(id),
                    l1,
                    l2,
                });
            }
        }
        Ok(())
    }

    /// The activity penalty of one call of `cfg`'s layer on each of its float outputs: its
    /// `activity_regularizer`, or an ActivityRegularization layer's `l1` / `l2`. (A layer inside
    /// TimeDistributed has none: Keras runs it through `layer.call`, which adds no penalty.)
    pub(crate) fn record_activity_regularizer(
        &mut self,
        cfg: &LayerConfig,
        outputs: &[ValueId],
    ) -> Result<()> {
        if cfg.class == "Bidirectional" {
            // Keras penalizes each direction's own output, which the merged op does not expose.
            for key in ["layer", "backward_layer"] {
                let inner = cfg.get(key).and_then(|e| e.get("config"));
                if inner
                    .and_then(|c| c.get("activity_regularizer"))
                    .is_some_and(|r| !r.is_null())
                {
                    return Err(cfg.error(
                        key,
                        "an activity_regularizer on the layer Bidirectional wraps is not supported",
                    ));
                }
            }
        }
        let (l1, l2) = if cfg.class == "ActivityRegularization" {
            (cfg.f32_or("l1", 0.0)?, cfg.f32_or("l2", 0.0)?)
        } else {
            match cfg.get("activity_regularizer") {
                Some(v) => penalty("activity_regularizer", cfg, v)?,
                None => return Ok(()),
            }
        };
        for &v in outputs {
            if self.graph.value(v).dtype == DType::F32 {
                self.graph.regularizers.push(Regularizer {
                    target: Penalized::Activity(v),
                    l1,
                    l2,
                });
            }
        }
        Ok(())
    }
}

/// The whole-model part, once every layer is built: regularizers of weights that are not
/// trainable are dropped, as Keras does not count them; the `compile_config` saved beside the
/// model config (`.keras` config.json, or `to_json()`) is kept as it is, unless it is empty (an
/// uncompiled model).
pub(crate) fn finish(graph: &mut Graph, model: &Value) {
    let params = &graph.params;
    graph.regularizers.retain(|r| match r.target {
        Penalized::Param(id) => params.param(id).trainable,
        Penalized::Activity(_) => true,
    });
    // An uncompiled model saves `{}`, which Keras's loader skips (`if compile_config:`).
    let compiled = |c: &&Value| match c {
        Value::Null => false,
        Value::Object(o) => !o.is_empty(),
        _ => true,
    };
    graph.compile_config = model.get("compile_config").filter(compiled).cloned();
}

#[cfg(test)]
mod tests {
    use super::regularizer_from_keras;
    use serde_json::json;

    #[test]
    fn regularizers_parse_with_keras_defaults() {
        let keras3 = |class: &str, config: serde_json::Value| {
            json!({"module": "keras.regularizers", "class_name": class, "config": config,
                   "registered_name": null})
        };
        for (v, want) in [
            (keras3("L1", json!({"l1": 0.5})), (0.5, 0.0)),
            (keras3("L2", json!({"l2": 0.25})), (0.0, 0.25)),
            (keras3("L1L2", json!({"l1": 0.1, "l2": 0.2})), (0.1, 0.2)),
            (keras3("L1L2", json!({"l1": null, "l2": 0.2})), (0.0, 0.2)),
            (
                json!({"class_name": "L1L2", "config": {"l1": 0.0, "l2": 0.01}}),
                (0.0, 0.01),
            ),
            (json!("l1"), (0.01, 0.0)),
            (json!("L2"), (0.0, 0.01)),
            (json!("l1l2"), (0.0, 0.0)),
        ] {
            assert_eq!(regularizer_from_keras(&v).unwrap(), want, "{v}");
        }
        for bad in [
            keras3(
                "OrthogonalRegularizer",
                json!({"factor": 0.01, "mode": "rows"}),
            ),
            json!("l1_l2"),
            keras3("L1", json!({"l1": -1.0})),
            keras3("L2", json!({"l2": "x"})),
            json!(3),
        ] {
            assert!(regularizer_from_keras(&bad).is_err(), "{bad}");
        }
        let message =
            regularizer_from_keras(&json!({"class_name": "OrthogonalRegularizer"})).unwrap_err();
        assert!(message.contains("OrthogonalRegularizer"), "{message}");
    }
}
