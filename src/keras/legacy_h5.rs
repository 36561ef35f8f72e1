//! Legacy Keras HDF5: whole-model files from Keras 2 / tf.keras `model.save("m.h5")` (and Keras
//! 3's own legacy writer) and weights-only files from Keras 2's `model.save_weights("w.h5")`.
//!
//! A model file holds the root attributes `model_config` (the model's JSON config),
//! `keras_version`, `backend` and maybe `training_config` (ignored), a `model_weights` group and
//! maybe `optimizer_weights` (ignored). A weights-only file is the `model_weights` group's content
//! at the root. Either way the weights group lists the model's layers in its `layer_names`
//! attribute (split into `layer_names0`, `layer_names1` ... when the list outgrows an HDF5 object
//! header), and each layer's group `<name>` lists that layer's arrays in order in `weight_names`:
//! the dataset `<name>/<weight name>`, e.g. `dense/dense/kernel:0` (Keras 2) or
//! `dense/sequential/dense/kernel` (Keras 3, which names weights by variable path). Keras 2
//! keeps a Bidirectional layer's two directions in the one group, forward first
//! (`bidirectional/forward_lstm/lstm_cell/kernel:0` ...). Names are strings of any HDF5 kind:
//! h5py 3 writes variable-length ones, h5py 2 fixed-length ones; a layer without weights gets an
//! empty float64 array.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hdf5_pure::AttrValue;
use serde_json::Value;

use super::weights::{read_dataset, RawWeight};
use crate::error::{Error, Result};

/// The 8-byte signature every HDF5 file Keras writes starts with.
pub const HDF5_SIGNATURE: &[u8] = b"\x89HDF\r\n\x1a\n";

/// The group Keras writes a model's own (non-layer) variables to; empty for the models wgnn runs.
const TOP_LEVEL_GROUP: &str = "top_level_model_weights";

/// What an HDF5 file holds, told by its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hdf5Kind {
    /// A `layers` group: Keras 3 `.weights.h5` (see `H5Weights`).
    Keras3Weights,
    /// A root `model_config` attribute: a legacy `model.save("m.h5")` file.
    LegacyModel,
    /// A root `layer_names` attribute: a legacy `save_weights("w.h5")` file.
    LegacyWeights,
    /// None of these.
    Unknown,
}

/// Tells the kind of an opened HDF5 file (see [`Hdf5Kind`]).
pub fn classify(file: &hdf5_pure::File) -> Hdf5Kind {
    let attrs = file.root().attrs().unwrap_or_default();
    // `layer_names` before `layers`: a legacy file may hold a layer named "layers".
    if attrs.contains_key("model_config") {
        Hdf5Kind::LegacyModel
    } else if has_string_list(&attrs, "layer_names") {
        Hdf5Kind::LegacyWeights
    } else if file.group("layers").is_ok() {
        Hdf5Kind::Keras3Weights
    } else {
        Hdf5Kind::Unknown
    }
}

/// A legacy model file: its config and, when it has a `model_weights` group, its weights.
pub struct LegacyModel {
    pub config: Value,
    /// The `model_config` attribute's text, as saving writes it back.
    pub config_text: String,
    /// The `keras_version` attribute: who wrote the config.
    pub keras_version: Option<String>,
    pub weights: Option<LegacyWeights>,
}

/// Reads a legacy `model.save("m.h5")` file. Any other HDF5 file is an error that says what it
/// is and what to pass instead.
pub fn read_model_file(path: &Path, bytes: Vec<u8>) -> Result<LegacyModel> {
    let file = open(path, bytes)?;
    match classify(&file) {
        Hdf5Kind::LegacyModel => {}
        Hdf5Kind::Keras3Weights => {
            return Err(Error::format(
                path,
                "a Keras 3 weights file (.weights.h5), not a model: pass the model's JSON \
                 (model.to_json()) as the model and this file with --weights, or save the whole \
                 model with model.save(\"model.keras\")",
            ))
        }
        Hdf5Kind::LegacyWeights => {
            return Err(Error::format(
                path,
                "a legacy Keras weights file (save_weights) without a model config: pass the \
                 model's JSON (model.to_json()) as the model and this file with --weights",
            ))
        }
        Hdf5Kind::Unknown => {
            return Err(Error::format(
                path,
                "an HDF5 file that is not a Keras model: no 'model_config' attribute (expected \
                 a .keras file, a legacy model.save(\"m.h5\") file, or a model JSON with --weights)",
            ))
        }
    }
    let attrs = file
        .root()
        .attrs()
        .map_err(|e| Error::format(path, format!("corrupt HDF5 attributes: {e}")))?;
    let text = attrs
        .get("model_config")
        .and_then(AttrValue::as_str)
        .ok_or_else(|| {
            Error::format(
                path,
                "legacy .h5: the 'model_config' attribute is not a string",
            )
        })?;
    let config: Value = serde_json::from_str(text).map_err(|e| {
        Error::format(
            path,
            format!("legacy .h5: the 'model_config' attribute is not valid JSON: {e}"),
        )
    })?;
    let config_text = text.to_string();
    let keras_version = attrs
        .get("keras_version")
        .and_then(AttrValue::as_str)
        .map(str::to_string);
    let weights = if file.group("model_weights").is_ok() {
        Some(LegacyWeights::from_file(path, file, "model_weights")?)
    } else {
        None
    };
    Ok(LegacyModel {
        config,
        config_text,
        keras_version,
        weights,
    })
}

/// Opens an HDF5 file held in memory, refusing one shorter than its superblock says: hdf5-pure
/// reads lazily, so a file cut after the parts a loader reads would otherwise open cleanly.
pub fn open(path: &Path, bytes: Vec<u8>) -> Result<hdf5_pure::File> {
    let len = bytes.len() as u64;
    let file = hdf5_pure::File::from_bytes(bytes)
        .map_err(|e| Error::format(path, format!("corrupt HDF5 file: {e}")))?;
    let sb = file.superblock();
    let end = sb.base_address.get().saturating_add(sb.eof_address);
    if len < end {
        return Err(Error::format(
            path,
            format!("truncated HDF5 file: {len} bytes, its superblock says {end}"),
        ));
    }
    Ok(file)
}

/// One layer's entry in a legacy weights group.
struct LegacyLayer {
    name: String,
    weight_names: Vec<String>,
    /// Which of `weight_names` the model has taken so far.
    used: Vec<bool>,
}

impl LegacyLayer {
    fn taken(&self) -> usize {
        self.used.iter().filter(|&&u| u).count()
    }

    fn unused(&self) -> Vec<String> {
        self.weight_names
            .iter()
            .zip(&self.used)
            .filter(|(_, &u)| !u)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Whether a nested model's weight name (`container/layer/var` or `layer/var`) belongs to `layer`.
fn names_layer(weight_name: &str, layer: &str) -> bool {
    let parts: Vec<&str> = weight_name.split('/').collect();
    parts.len() >= 2 && parts[..parts.len() - 1].contains(&layer)
}

/// Legacy weights (see the module docs), found by layer name: a layer's arrays come out in
/// `weight_names` order, over one or several `take`s (a Bidirectional layer takes its forward
/// and then its backward cell).
pub struct LegacyWeights {
    path: PathBuf,
    file: hdf5_pure::File,
    /// The group holding the layer groups: `model_weights`, or "" for the file root.
    root: String,
    layers: Vec<LegacyLayer>,
    by_name: HashMap<String, usize>,
    /// Names listed in the model-level group (see [`TOP_LEVEL_GROUP`]).
    top_level: Vec<String>,
}

impl LegacyWeights {
    /// A standalone legacy weights file: a `save_weights("w.h5")` file, or a whole
    /// `model.save("m.h5")` file whose `model_weights` are used.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let file = open(path, bytes)?;
        Self::from_opened(path, file)
    }

    /// Like [`from_bytes`](Self::from_bytes), for a file already opened.
    pub fn from_opened(path: &Path, file: hdf5_pure::File) -> Result<Self> {
        match classify(&file) {
            Hdf5Kind::LegacyModel if file.group("model_weights").is_ok() => {
                Self::from_file(path, file, "model_weights")
            }
            Hdf5Kind::LegacyModel => Err(Error::format(
                path,
                "legacy .h5 model file without a 'model_weights' group: it holds no weights",
            )),
            _ => Self::from_file(path, file, ""),
        }
    }

    /// Reads the layer list of the weights group `root` ("" for the file root).
    pub fn from_file(path: &Path, file: hdf5_pure::File, root: &str) -> Result<Self> {
        let corrupt = |what: String| Error::format(path, format!("legacy weights: {what}"));
        let group_path = |name: &str| {
            if root.is_empty() {
                name.to_string()
            } else {
                format!("{root}/{name}")
            }
        };
        let group = if root.is_empty() {
            file.root()
        } else {
            file.group(root)
                .map_err(|e| corrupt(format!("cannot open group '{root}': {e}")))?
        };
        let attrs = group
            .attrs()
            .map_err(|e| corrupt(format!("corrupt attributes of '/{root}': {e}")))?;
        let names = string_list(&attrs, "layer_names")
            .map_err(corrupt)?
            .ok_or_else(|| {
                corrupt(format!(
                    "no 'layer_names' attribute on '/{root}' (not a Keras weights file)"
                ))
            })?;
        let mut layers = Vec::with_capacity(names.len());
        let mut by_name = HashMap::with_capacity(names.len());
        for name in names {
            if by_name.contains_key(&name) {
                return Err(corrupt(format!("layer_names lists '{name}' twice")));
            }
            let weight_names = match file.group(&group_path(&name)) {
                Ok(g) => {
                    let attrs = g.attrs().map_err(|e| {
                        corrupt(format!("corrupt attributes of layer group '{name}': {e}"))
                    })?;
                    string_list(&attrs, "weight_names")
                        .map_err(|m| corrupt(format!("layer '{name}': {m}")))?
                        .unwrap_or_default()
                }
                // Keras writes a group for every layer; without one the layer has no weights,
                // which `take` reports if the model needs some.
                Err(_) => Vec::new(),
            };
            by_name.insert(name.clone(), layers.len());
            layers.push(LegacyLayer {
                name,
                used: vec![false; weight_names.len()],
                weight_names,
            });
        }
        let top_level = match file.group(&group_path(TOP_LEVEL_GROUP)) {
            Ok(g) => g
                .attrs()
                .ok()
                .and_then(|a| string_list(&a, "weight_names").ok().flatten())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        Ok(LegacyWeights {
            path: path.to_path_buf(),
            file,
            root: root.to_string(),
            layers,
            by_name,
            top_level,
        })
    }

    /// The next `count` arrays of the layer named `layer`, in `weight_names` order.
    pub fn take(&mut self, layer: &str, count: usize) -> Result<Vec<RawWeight>> {
        let err = |message: String| Error::Weights {
            path: self.path.clone(),
            layer: layer.to_string(),
            message,
        };
        // A layer of a nested model has no entry of its own: its arrays sit in the container's
        // entry as `container/layer/var` (or `layer/var`). The container lists all its
        // trainable arrays before the non-trainable ones (Keras's legacy order), so a layer's
        // arrays are the untaken names under its own name, in order, wherever they sit.
        let direct = self.by_name.get(layer).copied();
        let nested = || {
            self.layers.iter().position(|l| {
                l.weight_names
                    .iter()
                    .zip(&l.used)
                    .any(|(w, &u)| !u && names_layer(w, layer))
            })
        };
        let Some(index) = direct.or_else(nested) else {
            if count == 0 {
                return Ok(Vec::new());
            }
            let with_weights: Vec<&str> = self
                .layers
                .iter()
                .filter(|l| !l.weight_names.is_empty())
                .map(|l| l.name.as_str())
                .collect();
            return Err(err(format!(
                "missing: the file has no layer of this name (expected {count} arrays; its layers \
                 with weights: {})",
                list_or_none(&with_weights)
            )));
        };
        let entry = &self.layers[index];
        let picked: Vec<usize> = (0..entry.weight_names.len())
            .filter(|&i| {
                !entry.used[i] && (direct.is_some() || names_layer(&entry.weight_names[i], layer))
            })
            .take(count)
            .collect();
        if picked.len() < count {
            return Err(err(format!(
                "missing: the model needs {} arrays for this layer, the file holds {} ({})",
                entry.taken() + count,
                entry.taken() + picked.len(),
                list_or_none(&entry.weight_names)
            )));
        }
        let group = if self.root.is_empty() {
            entry.name.clone()
        } else {
            format!("{}/{}", self.root, entry.name)
        };
        let mut out = Vec::with_capacity(count);
        for &i in &picked {
            let ds_path = format!("{group}/{}", entry.weight_names[i]);
            out.push(read_dataset(&self.file, &ds_path).map_err(&err)?);
        }
        for i in picked {
            self.layers[index].used[i] = true;
        }
        Ok(out)
    }

    /// Fails when a layer's weights (or some of them) were not taken by any layer of the model.
    pub fn finish(self) -> Result<()> {
        for l in &self.layers {
            let taken = l.taken();
            if taken == l.weight_names.len() {
                continue;
            }
            let message = if taken == 0 {
                format!(
                    "extra: the file holds weights for a layer the model config does not have \
                     ({})",
                    list_or_none(&l.weight_names)
                )
            } else {
                format!(
                    "extra: the file holds {} arrays for this layer, the model uses {} (unused: {})",
                    l.weight_names.len(),
                    taken,
                    list_or_none(&l.unused())
                )
            };
            return Err(Error::Weights {
                path: self.path.clone(),
                layer: l.name.clone(),
                message,
            });
        }
        if !self.top_level.is_empty() {
            return Err(Error::Weights {
                path: self.path.clone(),
                layer: TOP_LEVEL_GROUP.into(),
                message: format!(
                    "extra: model-level weights no layer uses ({})",
                    list_or_none(&self.top_level)
                ),
            });
        }
        Ok(())
    }
}

fn list_or_none<S: AsRef<str>>(names: &[S]) -> String {
    const SHOWN: usize = 8;
    if names.is_empty() {
        return "none".into();
    }
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", ... {} in all", names.len()));
    }
    s
}

/// Whether the attribute `name` (or its first chunk `name0`) is there.
fn has_string_list(attrs: &HashMap<String, AttrValue>, name: &str) -> bool {
    attrs.contains_key(name) || attrs.contains_key(&format!("{name}0"))
}

/// A Keras list-of-names attribute: `name`, or its chunks `name0`, `name1` ... in order
/// (keras `save_attributes_to_hdf5_group`). `None` when neither is there. An empty list may be
/// stored as an empty float64 array (what `np.asarray([])` gives).
fn string_list(
    attrs: &HashMap<String, AttrValue>,
    name: &str,
) -> std::result::Result<Option<Vec<String>>, String> {
    if let Some(value) = attrs.get(name) {
        return strings_of(value, name).map(Some);
    }
    let mut out = Vec::new();
    let mut chunk = 0;
    while let Some(value) = attrs.get(&format!("{name}{chunk}")) {
        out.extend(strings_of(value, &format!("{name}{chunk}"))?);
        chunk += 1;
    }
    Ok((chunk > 0).then_some(out))
}

fn strings_of(value: &AttrValue, name: &str) -> std::result::Result<Vec<String>, String> {
    if let Some(strings) = value.as_strings() {
        return Ok(strings.to_vec());
    }
    let empty = match value {
        AttrValue::F64Array(v) => v.is_empty(),
        AttrValue::F32Array(v) => v.is_empty(),
        AttrValue::I64Array(v) => v.is_empty(),
        AttrValue::I32Array(v) => v.is_empty(),
        AttrValue::U8Array(v) => v.is_empty(),
        _ => false,
    };
    if empty {
        Ok(Vec::new())
    } else {
        Err(format!("the '{name}' attribute is not a list of strings"))
    }
}
