//! Keras model files to the IR: `.keras` (zip of config.json + model.weights.h5 + assets/),
//! model JSON + `.weights.h5`, model JSON + `.npz`. Pure Rust: zip, hdf5-pure, npyz.

mod build;
mod fields;
mod layers;
pub mod weights;

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::graph::Graph;
use weights::{H5Weights, WeightSource};

/// Everything read from the model file before layers are built.
struct ModelFile {
    config: Value,
    /// Weights carried inside a `.keras` file.
    weights: Option<WeightSource>,
    /// Entries under `assets/` of a `.keras` file: (zip path, bytes).
    assets: Vec<(String, Vec<u8>)>,
}

/// Loads a model. `weights` overrides (or, for a JSON config, provides) the weights. A free
/// time axis gets a placeholder length (see `load_for_lengths`).
pub fn load(path: &Path, weights: Option<&Path>) -> Result<Graph> {
    load_for_lengths(path, weights, &[]).map(|(graph, _)| graph)
}

/// Loads a model with each input whose time axis is `None` in the config built for length
/// `time_lengths[input index]` (missing entries: a placeholder length). Returns the graph and
/// the indices of the inputs with a free time axis.
pub fn load_for_lengths(
    path: &Path,
    weights: Option<&Path>,
    time_lengths: &[usize],
) -> Result<(Graph, Vec<usize>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(Error::format(path, "file is empty"));
    }
    let is_zip = bytes.starts_with(b"PK");
    let mut file = if is_zip {
        read_keras_zip(path, bytes)?
    } else {
        let config = parse_json(path, &bytes)?;
        ModelFile {
            config,
            weights: None,
            assets: Vec::new(),
        }
    };
    if let Some(w) = weights {
        file.weights = Some(WeightSource::open(w)?);
    }
    let weights_path = weights.unwrap_or(path);
    let source = file.weights.ok_or_else(|| {
        let why = if is_zip {
            "the .keras file has no model.weights.h5 (pass --weights FILE)"
        } else {
            "a model JSON carries no weights: pass --weights FILE.weights.h5 or FILE.npz"
        };
        Error::format(path, why)
    })?;
    build::build_model(
        path,
        weights_path,
        &file.config,
        source,
        &file.assets,
        time_lengths,
    )
}

fn parse_json(path: &Path, bytes: &[u8]) -> Result<Value> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::format(path, "not a .keras zip and not UTF-8 JSON"))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::format(path, format!("not a .keras zip and not valid JSON: {e}")))?;
    // `model.to_json()` may have been saved as a JSON string holding JSON.
    match value {
        Value::String(inner) => serde_json::from_str(&inner).map_err(|e| {
            Error::format(
                path,
                format!("JSON string does not hold a model config: {e}"),
            )
        }),
        v => Ok(v),
    }
}

fn read_keras_zip(path: &Path, bytes: Vec<u8>) -> Result<ModelFile> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| Error::format(path, format!("not a valid .keras (zip) file: {e}")))?;
    let mut read_entry = |name: &str| -> Result<Option<Vec<u8>>> {
        let mut entry = match zip.by_name(name) {
            Ok(e) => e,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => {
                return Err(Error::format(
                    path,
                    format!("corrupt zip entry '{name}': {e}"),
                ))
            }
        };
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| Error::format(path, format!("corrupt zip entry '{name}': {e}")))?;
        Ok(Some(data))
    };
    let config_bytes = read_entry("config.json")?.ok_or_else(|| {
        Error::format(
            path,
            "not a Keras 3 .keras file: the zip has no config.json",
        )
    })?;
    let config = serde_json::from_slice(&config_bytes)
        .map_err(|e| Error::format(path, format!("config.json is not valid JSON: {e}")))?;
    let weights = match read_entry("model.weights.h5")? {
        Some(h5) => Some(WeightSource::H5(H5Weights::from_bytes(
            &path.join("model.weights.h5"),
            h5,
        )?)),
        None => None,
    };
    let mut names = Vec::new();
    for name in zip.file_names() {
        let name = name.map_err(|e| Error::format(path, format!("corrupt zip entry name: {e}")))?;
        if name.starts_with("assets/") && !name.ends_with('/') {
            names.push(name.into_owned());
        }
    }
    let mut assets = Vec::new();
    for name in names {
        let mut entry = zip
            .by_name(&name)
            .map_err(|e| Error::format(path, format!("corrupt zip entry '{name}': {e}")))?;
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| Error::format(path, format!("corrupt zip entry '{name}': {e}")))?;
        assets.push((name, data));
    }
    Ok(ModelFile {
        config,
        weights,
        assets,
    })
}
