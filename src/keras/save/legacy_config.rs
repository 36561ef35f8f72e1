//! A legacy `.h5`'s `model_config` in the form `keras.saving.load_model` reads from a `.keras`.
//!
//! Keras 3's legacy writer stores `{"class_name", "config"}` with the model's `get_config()`,
//! whose layer entries lack what `serialize_keras_object` adds to find their classes: `module`
//! and `registered_name` (their inner objects — initializers, dtype policies, a wrapper's layer —
//! are already serialized). Adding those is all Keras 3 needs (tried with Keras 3.15 on every
//! legacy fixture). A Keras 2 config is not converted: it carries arguments Keras 3 refuses
//! (`time_major`, `implementation`, `input_length` ...) — Keras 3's own legacy loader fails on
//! Keras 2 RNN files for that reason — so saving one as `.keras` is an error.

use serde_json::Value;

use crate::keras::build::is_operator;

/// The modules of the Keras 3 operators wgnn reads (keras.src.ops.*), by class name.
const OPERATOR_MODULES: &[(&str, &str)] = &[
    ("Add", "keras.src.ops.numpy"),
    ("Subtract", "keras.src.ops.numpy"),
    ("Multiply", "keras.src.ops.numpy"),
    ("Divide", "keras.src.ops.numpy"),
    ("TrueDivide", "keras.src.ops.numpy"),
    ("Maximum", "keras.src.ops.numpy"),
    ("Minimum", "keras.src.ops.numpy"),
    ("Concatenate", "keras.src.ops.numpy"),
    ("Mean", "keras.src.ops.numpy"),
    ("NotEqual", "keras.src.ops.numpy"),
    ("ExpandDims", "keras.src.ops.numpy"),
    ("ZerosLike", "keras.src.ops.numpy"),
    ("OnesLike", "keras.src.ops.numpy"),
    ("LogicalOr", "keras.src.ops.numpy"),
    ("Any", "keras.src.ops.numpy"),
    ("Tanh", "keras.src.ops.numpy"),
    ("Gelu", "keras.src.ops.nn"),
    ("Relu", "keras.src.ops.nn"),
    ("Relu6", "keras.src.ops.nn"),
    ("Sigmoid", "keras.src.ops.nn"),
    ("Silu", "keras.src.ops.nn"),
    ("Softplus", "keras.src.ops.nn"),
    ("Softsign", "keras.src.ops.nn"),
    ("HardSigmoid", "keras.src.ops.nn"),
    ("HardSilu", "keras.src.ops.nn"),
    ("HardTanh", "keras.src.ops.nn"),
    ("TanhShrink", "keras.src.ops.nn"),
    ("SparsePlus", "keras.src.ops.nn"),
    ("SparseSigmoid", "keras.src.ops.nn"),
    ("LogSigmoid", "keras.src.ops.nn"),
];

/// Whether a legacy file's `keras_version` says Keras 3 wrote it.
pub(crate) fn written_by_keras3(keras_version: Option<&str>) -> bool {
    keras_version.is_some_and(|v| v.starts_with("3."))
}

/// A Keras 3 legacy `model_config` as `serialize_keras_object` would have written it. The error
/// names what cannot be converted.
pub(crate) fn serialize_model(config: &Value) -> Result<Value, String> {
    let mut out = config.clone();
    serialize_entry(&mut out, false)?;
    Ok(out)
}

/// Adds `module` / `registered_name` to one model or layer entry, and to the layers inside a
/// model.
fn serialize_entry(entry: &mut Value, in_container: bool) -> Result<(), String> {
    let operator = in_container && is_operator(entry);
    let Some(map) = entry.as_object_mut() else {
        return Err("a layer entry is not a JSON object".into());
    };
    let class = map
        .get("class_name")
        .and_then(Value::as_str)
        .ok_or("a layer entry has no class_name")?
        .to_string();
    if map.contains_key("module") {
        return Ok(());
    }
    let (module, registered) = if operator {
        let module = OPERATOR_MODULES
            .iter()
            .find(|(c, _)| *c == class)
            .map(|(_, m)| *m)
            .ok_or_else(|| format!("operator '{class}' has no known Keras module"))?;
        (module, Value::Null)
    } else {
        match class.as_str() {
            "Sequential" => ("keras", Value::Null),
            "Functional" | "Model" => {
                map.insert("class_name".into(), "Functional".into());
                ("keras.src.models.functional", "Functional".into())
            }
            _ => ("keras.layers", Value::Null),
        }
    };
    map.insert("module".into(), module.into());
    map.insert("registered_name".into(), registered);
    if matches!(class.as_str(), "Sequential" | "Functional" | "Model") {
        if let Some(layers) = map
            .get_mut("config")
            .and_then(|c| c.get_mut("layers"))
            .and_then(Value::as_array_mut)
        {
            for layer in layers {
                serialize_entry(layer, true)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn layers_and_operators_get_their_modules() {
        let config = json!({"class_name": "Functional", "config": {"name": "m", "layers": [
            {"class_name": "InputLayer", "config": {"name": "x", "batch_shape": [null, 3]},
                "name": "x", "inbound_nodes": []},
            {"class_name": "NotEqual", "config": {"name": "not_equal"}, "name": "not_equal"},
            {"class_name": "Add", "config": {"name": "add", "trainable": true}, "name": "add"},
            {"class_name": "Sequential", "config": {"name": "inner", "layers": [
                {"class_name": "Dense", "config": {"name": "d", "units": 2}}]}}]}});
        let out = serialize_model(&config).unwrap();
        assert_eq!(out["module"], "keras.src.models.functional");
        assert_eq!(out["registered_name"], "Functional");
        let layers = out["config"]["layers"].as_array().unwrap();
        assert_eq!(layers[0]["module"], "keras.layers");
        // An entry whose config holds only a name is an operator, not the merge layer.
        assert_eq!(layers[1]["module"], "keras.src.ops.numpy");
        assert_eq!(layers[2]["module"], "keras.layers");
        assert_eq!(layers[3]["module"], "keras");
        assert_eq!(layers[3]["config"]["layers"][0]["module"], "keras.layers");
    }

    #[test]
    fn an_unknown_operator_is_named() {
        let config = json!({"class_name": "Functional", "config": {"layers": [
            {"class_name": "Cumsum", "config": {"name": "c"}}]}});
        let err = serialize_model(&config).unwrap_err();
        assert!(err.contains("Cumsum"), "{err}");
    }

    #[test]
    fn only_keras3_files_convert() {
        assert!(written_by_keras3(Some("3.15.1")));
        assert!(!written_by_keras3(Some("2.21.0")));
        assert!(!written_by_keras3(Some("2.2.4")));
        assert!(!written_by_keras3(None));
    }
}
