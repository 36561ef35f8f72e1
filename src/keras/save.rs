//! Saving a model the way Keras 3.15 does, so that `keras.saving.load_model` reads it back: a
//! `.keras` zip of `metadata.json`, `config.json` (the config the model was loaded from, as it
//! was), `model.weights.h5` and the `assets/` it came with; or a `.weights.h5` alone
//! (`model.load_weights`). The weights file has Keras's group layout (see [`layout`]) with each
//! parameter's current values at the place the loader recorded for it
//! ([`crate::graph::KerasVar`]), whichever file the model was read from, and the optimizer's
//! variables under `optimizer/vars` when they are given. Files are written whole or not at all
//! (a temporary file in the target's folder, renamed into place).

mod h5;
mod layout;
mod legacy_config;

use std::io::Write;
use std::path::Path;

use ndarray::ArrayD;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::graph::{ConfigOrigin, Graph, KerasDType, SourceConfig};
use layout::{H5Data, H5Dataset};

/// The Keras version written to `metadata.json`: the one whose layout this module follows.
pub const KERAS_VERSION: &str = "3.15.1";

/// Saves `graph` as its file name says: `*.keras` is the whole model ([`save_keras`]),
/// `*.weights.h5` its weights alone ([`save_weights`]). `optimizer` holds the optimizer's
/// variables in the order of Keras's `optimizer.variables`, each with its name (Keras's variable
/// path, e.g. `adam/iteration`); the model must be compiled (a non-empty `compile_config`, the
/// graph's when set), since Keras restores them only into the optimizer that config builds.
pub fn save(path: &Path, graph: &Graph, optimizer: Option<&[(String, ArrayD<f32>)]>) -> Result<()> {
    let config = graph.source_config.as_deref().ok_or_else(|| {
        Error::format(
            path,
            "cannot save: the model has no Keras config to save (it was not loaded from a Keras file)",
        )
    })?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".weights.h5") {
        save_weights(path, graph, config, optimizer)
    } else if name.ends_with(".keras") {
        save_keras(path, graph, config, optimizer)
    } else {
        Err(Error::format(
            path,
            "cannot save: the file name must end in .keras (the whole model; Keras loads no other \
             name) or .weights.h5 (the weights alone)",
        ))
    }
}

/// Writes the `.keras` file for `graph` built from `config`. A legacy Keras 2 config is refused
/// (Keras 3 cannot always read it back): its weights can still be saved with [`save_weights`].
pub fn save_keras(
    path: &Path,
    graph: &Graph,
    config: &SourceConfig,
    optimizer: Option<&[(String, ArrayD<f32>)]>,
) -> Result<()> {
    let (text, model_config) = keras3_config(path, graph, config)?;
    let weights = weights_h5(path, graph, &model_config, optimizer)?;
    let metadata = format!(
        r#"{{"keras_version": "{KERAS_VERSION}", "date_saved": "{}"}}"#,
        date_saved(std::time::SystemTime::now())
    );
    // Keras stores every entry uncompressed, in this order.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let zip_error = |e: zip::result::ZipError| Error::io(path, std::io::Error::other(e));
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("metadata.json", metadata.as_bytes()),
        ("config.json", text.as_bytes()),
        ("model.weights.h5", &weights),
    ];
    entries.extend(
        config
            .assets
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice())),
    );
    for (name, bytes) in entries {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(bytes.len() as u64 >= u64::from(u32::MAX));
        zip.start_file(name, options).map_err(zip_error)?;
        zip.write_all(bytes).map_err(|e| Error::io(path, e))?;
    }
    let bytes = zip.finish().map_err(zip_error)?.into_inner();
    crate::npy::write_atomically(path, &bytes)
}

/// Writes Keras 3's `.weights.h5` for `graph` (what `model.save_weights` writes): the layout
/// depends only on the config's layer classes and order, so a legacy config saves here too.
pub fn save_weights(
    path: &Path,
    graph: &Graph,
    config: &SourceConfig,
    optimizer: Option<&[(String, ArrayD<f32>)]>,
) -> Result<()> {
    let mut model_config = parse_config(config)?;
    if let (Some(compile), Some(map)) = (&graph.compile_config, model_config.as_object_mut()) {
        map.insert("compile_config".into(), compile.clone());
    }
    let weights = weights_h5(path, graph, &model_config, optimizer)?;
    crate::npy::write_atomically(path, &weights)
}

fn parse_config(config: &SourceConfig) -> Result<Value> {
    serde_json::from_str(&config.json)
        .map_err(|e| Error::Internal(format!("the kept model config is not JSON: {e}")))
}

/// The `config.json` text to write and its parsed form: the config as read when Keras 3
/// serialized it (with the graph's `compile_config` when that differs), a Keras 3 legacy
/// `model_config` serialized as Keras would, and an error for a Keras 2 config.
fn keras3_config(path: &Path, graph: &Graph, config: &SourceConfig) -> Result<(String, Value)> {
    const INSTEAD: &str = "Keras 3 cannot always read a Keras 2 config back; save the weights \
                           instead (a file name ending in .weights.h5: Keras 3's layout, which \
                           load_weights reads into the model rebuilt in Keras 3)";
    let parsed = parse_config(config)?;
    let (mut value, mut verbatim) = if parsed.get("module").is_some() {
        (parsed, true)
    } else {
        match &config.origin {
            ConfigOrigin::LegacyH5 { keras_version }
                if legacy_config::written_by_keras3(keras_version.as_deref()) =>
            {
                let value = legacy_config::serialize_model(&parsed).map_err(|m| {
                    Error::format(
                        path,
                        format!("cannot save as .keras: the legacy model config: {m}"),
                    )
                })?;
                (value, false)
            }
            ConfigOrigin::LegacyH5 { keras_version } => {
                return Err(Error::format(
                    path,
                    format!(
                        "cannot save as .keras: the model comes from a legacy .h5 written by Keras {}; {INSTEAD}",
                        keras_version.as_deref().unwrap_or("2 (no keras_version)")
                    ),
                ))
            }
            ConfigOrigin::Json => {
                return Err(Error::format(
                    path,
                    format!(
                        "cannot save as .keras: the model JSON is a Keras 2 config (no 'module' \
                         at its top, as tf.keras's to_json writes); {INSTEAD}"
                    ),
                ))
            }
        }
    };
    if let Some(compile) = &graph.compile_config {
        if value.get("compile_config") != Some(compile) {
            let map = value.as_object_mut().ok_or_else(|| {
                Error::Internal("the kept model config is not a JSON object".into())
            })?;
            map.insert("compile_config".into(), compile.clone());
            verbatim = false;
        }
    }
    let text = if verbatim {
        config.json.clone()
    } else {
        serde_json::to_string(&value)
            .map_err(|e| Error::Internal(format!("serializing the model config: {e}")))?
    };
    Ok((text, value))
}

/// The `model.weights.h5` bytes: Keras's groups for `model_config`, every parameter at its
/// recorded place (its current values, at Keras's shape and dtype), the optimizer's variables.
fn weights_h5(
    path: &Path,
    graph: &Graph,
    model_config: &Value,
    optimizer: Option<&[(String, ArrayD<f32>)]>,
) -> Result<Vec<u8>> {
    let mut root = layout::model_groups(model_config);
    for (_, p) in graph.params.iter() {
        // A weight the config holds (Normalization's mean given in the config) has no place.
        let Some(var) = &p.keras else { continue };
        let misplaced = |why: &str| {
            Error::Internal(format!(
                "parameter '{}' is recorded at '{}', {why}",
                p.name, var.path
            ))
        };
        let (group_path, index) = var
            .path
            .rsplit_once('/')
            .ok_or_else(|| misplaced("not a dataset path"))?;
        if var.shape.iter().product::<usize>() != p.value.len() {
            return Err(misplaced(&format!(
                "with Keras shape {:?}, but it holds {} values",
                var.shape,
                p.value.len()
            )));
        }
        let data = match var.dtype {
            KerasDType::Float32 => H5Data::F32(p.value.iter().copied().collect()),
            KerasDType::Int64 => H5Data::I64(p.value.iter().map(|&v| v.round() as i64).collect()),
        };
        let group = root
            .find_mut(group_path)
            .ok_or_else(|| misplaced("a group Keras does not write for this model config"))?;
        let ds = H5Dataset {
            shape: var.shape.clone(),
            data,
        };
        if group.datasets.insert(index.to_string(), ds).is_some() {
            return Err(misplaced("where another parameter is too"));
        }
    }
    let variables = optimizer.unwrap_or_default();
    match compiled_optimizer(model_config) {
        // A compiled model has an optimizer group, empty until its variables are given.
        Some(entry) => {
            let name = layout::optimizer_name(&entry).unwrap_or_else(|| "optimizer".into());
            root.add_vars("optimizer", &name);
            let vars = root.group_mut("optimizer/vars");
            for (i, (var_name, value)) in variables.iter().enumerate() {
                vars.datasets
                    .insert(i.to_string(), optimizer_dataset(var_name, value));
            }
        }
        None if !variables.is_empty() => {
            return Err(Error::format(
                path,
                "cannot save the optimizer's state: the model is not compiled (its config has \
                 no compile_config), and Keras restores optimizer variables only into the \
                 optimizer that compile_config builds",
            ))
        }
        None => {}
    }
    h5::h5_bytes(&root).map_err(|m| Error::format(path, format!("writing model.weights.h5: {m}")))
}

/// The optimizer a compiled model's config builds: its `compile_config`'s `optimizer`, or
/// `compile()`'s default `"rmsprop"` when a compiled config leaves it out. None when the model
/// was not compiled (Keras writes `{}`).
fn compiled_optimizer(model_config: &Value) -> Option<Value> {
    let compile = model_config
        .get("compile_config")?
        .as_object()
        .filter(|c| !c.is_empty())?;
    match compile.get("optimizer") {
        None | Some(Value::Null) => Some(Value::from("rmsprop")),
        Some(o) => Some(o.clone()),
    }
}

/// One optimizer variable as Keras stores it: the step counter (`.../iteration`) is int64,
/// everything else float32.
fn optimizer_dataset(name: &str, value: &ArrayD<f32>) -> H5Dataset {
    let data = if name.rsplit('/').next() == Some("iteration") {
        H5Data::I64(value.iter().map(|&v| v.round() as i64).collect())
    } else {
        H5Data::F32(value.iter().copied().collect())
    };
    H5Dataset {
        shape: value.shape().to_vec(),
        data,
    }
}

/// `metadata.json`'s `date_saved` in Keras's format (`%Y-%m-%d@%H:%M:%S`), in UTC (Keras writes
/// local time, which needs a time-zone database).
fn date_saved(now: std::time::SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}@{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_saved_is_kerass_format() {
        let at = |s: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        assert_eq!(date_saved(at(0)), "1970-01-01@00:00:00");
        // 2024-02-29 23:59:59 UTC: a leap day.
        assert_eq!(date_saved(at(1_709_251_199)), "2024-02-29@23:59:59");
        assert_eq!(date_saved(at(1_796_165_632)), "2026-12-01@22:53:52");
    }

    #[test]
    fn the_iteration_counter_is_int64() {
        let scalar = ArrayD::from_elem(ndarray::IxDyn(&[]), 3.0f32);
        assert_eq!(
            optimizer_dataset("adam/iteration", &scalar).data,
            H5Data::I64(vec![3])
        );
        assert_eq!(
            optimizer_dataset("adam/learning_rate", &scalar).data,
            H5Data::F32(vec![3.0])
        );
    }
}
