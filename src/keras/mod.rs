//! Keras model files to the IR: `.keras` (zip of config.json + model.weights.h5 + assets/),
//! model JSON + `.weights.h5`, model JSON + `.npz`, legacy Keras 2 `.h5` (a whole model, or
//! weights only with a model JSON). Pure Rust: zip, hdf5-pure, npyz.
//!
//! The model file's kind is told by its content: a zip is a `.keras`; HDF5 with a root
//! `model_config` attribute is a legacy model file; other HDF5 (Keras 3 or legacy weights) is
//! refused as a model with a note saying to pass it as `--weights`; anything else is JSON. A
//! folder is refused, naming the SavedModel it holds if it holds one.

mod build;
mod fields;
mod initialize;
mod layers;
pub mod legacy_h5;
pub mod save;
mod train_config;
mod weight_fields;
pub mod weights;

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::graph::{ConfigOrigin, Graph, SourceConfig};
use weights::{H5Weights, InitWeights, WeightSource};

/// Everything read from the model file before layers are built.
struct ModelFile {
    config: Value,
    /// The config's text as read, and where it came from (kept on the graph for saving).
    config_text: String,
    origin: ConfigOrigin,
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
    with_placeholder_lengths(time_lengths, |lengths| {
        load_exact_lengths(path, None, weights, lengths)
    })
}

/// [`load_for_lengths`] for a model file held in memory (a `.keras` zip, a legacy `.h5` model
/// file or a model JSON carrying no weights is refused as from a file): `name` stands for the
/// file in error messages. The browser build loads models this way.
pub fn load_bytes_for_lengths(
    name: &Path,
    bytes: &[u8],
    time_lengths: &[usize],
) -> Result<(Graph, Vec<usize>)> {
    with_placeholder_lengths(time_lengths, |lengths| {
        load_exact_lengths(name, Some(bytes), None, lengths)
    })
}

/// Placeholder lengths for free time axes when no input has been seen yet, tried in order: a
/// stack of strided convolutions or poolings needs a long enough sequence to have a shape at
/// all (`Conv1D(k=7, strides=3)` twice does not fit 16 steps).
const PLACEHOLDER_LENGTHS: [usize; 4] = [build::FREE_TIME_PLACEHOLDER, 64, 256, 1024];

/// Runs `build` with `time_lengths`, or, when none are given, with each placeholder length in
/// turn until one builds; a model that builds at none gets the first attempt's error.
fn with_placeholder_lengths(
    time_lengths: &[usize],
    mut build: impl FnMut(&[usize]) -> Result<(Graph, Vec<usize>)>,
) -> Result<(Graph, Vec<usize>)> {
    if !time_lengths.is_empty() {
        return build(time_lengths);
    }
    let first = match build(&[]) {
        Ok(built) => return Ok(built),
        Err(e) => e,
    };
    for &len in &PLACEHOLDER_LENGTHS[1..] {
        // One entry per possible input; only free time axes read them.
        if let Ok(built) = build(&[len; 64]) {
            return Ok(built);
        }
    }
    Err(first)
}

/// `bytes`: the model file's content when it is held in memory (`path` then only names it).
fn load_exact_lengths(
    path: &Path,
    bytes: Option<&[u8]>,
    weights: Option<&Path>,
    time_lengths: &[usize],
) -> Result<(Graph, Vec<usize>)> {
    let (mut file, is_zip, is_hdf5) = match bytes {
        Some(bytes) => parse_model_file(path, bytes.to_vec())?,
        None => read_model_file(path)?,
    };
    if let Some(w) = weights {
        file.weights = Some(WeightSource::open(w)?);
    }
    let weights_path = weights.unwrap_or(path);
    let source = file.weights.ok_or_else(|| {
        let why = if is_zip {
            "the .keras file has no model.weights.h5 (pass --weights FILE)"
        } else if is_hdf5 {
            "the legacy .h5 model file has no 'model_weights' group (pass --weights FILE)"
        } else {
            "a model JSON carries no weights: pass --weights FILE.weights.h5 or FILE.npz"
        };
        Error::format(path, why)
    })?;
    let compile_config = file
        .config
        .get("compile_config")
        .filter(|c| !c.is_null())
        .cloned();
    let (mut graph, free) = build::build_model(
        path,
        weights_path,
        &file.config,
        source,
        &file.assets,
        time_lengths,
    )?;
    graph.compile_config = compile_config;
    keep_source(&mut graph, file.config_text, file.origin, file.assets);
    Ok((graph, free))
}

/// Keeps the config as read (and a `.keras`'s assets) on the graph: saving writes them back.
fn keep_source(
    graph: &mut Graph,
    json: String,
    origin: ConfigOrigin,
    assets: Vec<(String, Vec<u8>)>,
) {
    graph.source_config = Some(std::sync::Arc::new(SourceConfig {
        json,
        origin,
        assets,
    }));
}

/// Loads a model with no weights: every weight is initialized from its layer's config as Keras
/// builds a fresh layer (the initializer the config names, else Keras's default for the layer:
/// kernels glorot_uniform, biases zeros, recurrent kernels orthogonal, LSTM's forget-gate bias
/// one, ...), drawn from a stream seeded by `seed`: the same file and seed give the same
/// weights. `path` is a model JSON, a `.keras` file or a legacy `.h5` model file; weights the
/// file carries are not read.
pub fn load_initialized(path: &Path, seed: u64) -> Result<Graph> {
    load_initialized_for_lengths(path, seed, &[]).map(|(graph, _)| graph)
}

/// [`load_initialized`] with free time axes built for `time_lengths`, as in
/// [`load_for_lengths`]. The weights do not depend on the lengths.
pub fn load_initialized_for_lengths(
    path: &Path,
    seed: u64,
    time_lengths: &[usize],
) -> Result<(Graph, Vec<usize>)> {
    with_placeholder_lengths(time_lengths, |lengths| {
        let (file, _, _) = read_model_file(path)?;
        let source = WeightSource::Init(InitWeights::new(seed));
        let (mut graph, free) =
            build::build_model(path, path, &file.config, source, &file.assets, lengths)?;
        keep_source(&mut graph, file.config_text, file.origin, file.assets);
        Ok((graph, free))
    })
}

/// Reads a model file of any kind (told by its content); also says whether it was a zip
/// (`.keras`) or HDF5 (legacy model file).
fn read_model_file(path: &Path) -> Result<(ModelFile, bool, bool)> {
    refuse_folder_or_saved_model(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_model_file(path, bytes)
}

/// A model file's content, of any kind (told by its content); `path` names it in errors.
fn parse_model_file(path: &Path, bytes: Vec<u8>) -> Result<(ModelFile, bool, bool)> {
    if bytes.is_empty() {
        return Err(Error::format(path, "file is empty"));
    }
    let is_zip = bytes.starts_with(b"PK");
    let is_hdf5 = bytes.starts_with(legacy_h5::HDF5_SIGNATURE);
    let file = if is_zip {
        read_keras_zip(path, bytes)?
    } else if is_hdf5 {
        let legacy = legacy_h5::read_model_file(path, bytes)?;
        ModelFile {
            config: legacy.config,
            config_text: legacy.config_text,
            origin: ConfigOrigin::LegacyH5 {
                keras_version: legacy.keras_version,
            },
            weights: legacy.weights.map(WeightSource::Legacy),
            assets: Vec::new(),
        }
    } else {
        json_model_file(path, &bytes)?
    };
    let mut file = file;
    keras2_meanings(&mut file);
    Ok((file, is_zip, is_hdf5))
}

/// Whether Keras 2 (tf.keras) wrote the config: a legacy `.h5` whose `keras_version` is 1.x or
/// 2.x, or a model JSON that says so (Keras 3's `to_json()` has no `keras_version`).
fn written_by_keras2(file: &ModelFile) -> bool {
    let version = match &file.origin {
        ConfigOrigin::LegacyH5 { keras_version } => keras_version.clone(),
        ConfigOrigin::Json => file
            .config
            .get("keras_version")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    version.is_some_and(|v| v.starts_with("2.") || v.starts_with("1."))
}

/// Names that mean something else in Keras 2 get wgnn's name for the Keras 2 meaning in the
/// config that is built (the text kept for saving is untouched): `hard_sigmoid` is
/// clip(0.2·x + 0.5, 0, 1) there, relu6(x + 3)/6 in Keras 3 (the default recurrent activation
/// of Keras 2's ConvLSTM2D).
fn keras2_meanings(file: &mut ModelFile) {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    let is_activation = key == "activation" || key == "recurrent_activation";
                    if is_activation && item.as_str() == Some("hard_sigmoid") {
                        *item = Value::from(fields::KERAS2_HARD_SIGMOID);
                    } else {
                        walk(item);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if written_by_keras2(file) {
        walk(&mut file.config);
    }
}

/// Loads a model config (JSON, or the config of a `.keras` file) with weights given in memory,
/// in `model.get_weights()` order.
pub fn load_with_arrays(path: &Path, arrays: Vec<weights::RawWeight>) -> Result<Graph> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(Error::format(path, "file is empty"));
    }
    let file = if bytes.starts_with(b"PK") {
        read_keras_zip(path, bytes)?
    } else {
        json_model_file(path, &bytes)?
    };
    let source = WeightSource::Npz(weights::NpzWeights::from_arrays(path, arrays));
    let (mut graph, _) = build::build_model(path, path, &file.config, source, &file.assets, &[])?;
    keep_source(&mut graph, file.config_text, file.origin, file.assets);
    Ok(graph)
}

/// A model JSON file: its config, without weights.
fn json_model_file(path: &Path, bytes: &[u8]) -> Result<ModelFile> {
    let (config, config_text) = parse_json(path, bytes)?;
    Ok(ModelFile {
        config,
        config_text,
        origin: ConfigOrigin::Json,
        weights: None,
        assets: Vec::new(),
    })
}

/// The name TensorFlow gives a SavedModel's graph file.
const SAVED_MODEL_PB: &str = "saved_model.pb";

/// A folder, or a SavedModel's graph file, is an error saying what was found.
fn refuse_folder_or_saved_model(path: &Path) -> Result<()> {
    const RESAVE: &str = "in Python, save the model with model.save(\"model.keras\") instead";
    if path.is_dir() {
        let pb = path.join(SAVED_MODEL_PB);
        let message = if pb.is_file() {
            format!(
                "a TensorFlow SavedModel folder (found {}), which wgnn does not read: {RESAVE}",
                pb.display()
            )
        } else {
            format!(
                "a folder, not a model file (and no {SAVED_MODEL_PB} in it): pass a .keras \
                 file, a legacy .h5 model file, or a model JSON with --weights"
            )
        };
        return Err(Error::format(path, message));
    }
    if path.file_name().and_then(|n| n.to_str()) == Some(SAVED_MODEL_PB) {
        return Err(Error::format(
            path,
            format!("a TensorFlow SavedModel graph, which wgnn does not read: {RESAVE}"),
        ));
    }
    Ok(())
}

/// The config and the text it was parsed from.
fn parse_json(path: &Path, bytes: &[u8]) -> Result<(Value, String)> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::format(path, "not a .keras zip and not UTF-8 JSON"))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::format(path, format!("not a .keras zip and not valid JSON: {e}")))?;
    // `model.to_json()` may have been saved as a JSON string holding JSON.
    match value {
        Value::String(inner) => {
            let v = serde_json::from_str(&inner).map_err(|e| {
                Error::format(
                    path,
                    format!("JSON string does not hold a model config: {e}"),
                )
            })?;
            Ok((v, inner))
        }
        v => Ok((v, text.to_string())),
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
    let config_text = String::from_utf8(config_bytes)
        .map_err(|_| Error::format(path, "config.json is not valid JSON: not UTF-8 text"))?;
    let config = serde_json::from_str(&config_text)
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
        config_text,
        origin: ConfigOrigin::Json,
        weights,
        assets,
    })
}
