//! Weight files: Keras 3 `.weights.h5` (inside a `.keras` or alone), legacy Keras 2 HDF5
//! weights (`save_weights("w.h5")`, or the `model_weights` of a legacy model file; see
//! [`super::legacy_h5`]) and `.npz` holding `model.get_weights()` in order.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use hdf5_pure::AttrValue;

use super::fields::LayerConfig;
pub use super::initialize::InitWeights;
use super::legacy_h5::{self, Hdf5Kind, LegacyWeights};
use crate::error::{Error, Result};

/// One weight array as stored: shape and row-major f32 values.
#[derive(Debug, Clone)]
pub struct RawWeight {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Where the loader takes each layer's weights from.
// With 32-bit pointers (wasm32) the variants' sizes come out differently; one per model.
#[cfg_attr(target_arch = "wasm32", allow(clippy::large_enum_variant))]
pub enum WeightSource {
    H5(H5Weights),
    /// Legacy Keras 2 HDF5 weights, found by layer name.
    Legacy(LegacyWeights),
    Npz(NpzWeights),
    /// No file: each weight is drawn from the initializer its layer's config names.
    Init(InitWeights),
}

/// What the loader asks a source for: the weights of one layer (or of a sub-object of it), in
/// the order Keras stores them.
pub(crate) struct WeightRequest<'r> {
    /// The layer that owns the weights (a wrapper for the layer it wraps).
    pub owner: &'r str,
    /// The owner's h5 group (see [`H5Weights`]).
    pub group: &'r str,
    /// The sub-object path, e.g. `["forward_layer", "cell"]`.
    pub sub: &'r [&'r str],
    /// Each weight's name and the shape the config implies.
    pub specs: &'r [(&'r str, Vec<usize>)],
    /// The config whose fields initialize these weights: the layer itself, or the layer a
    /// Bidirectional wraps.
    pub fields: &'r LayerConfig<'r>,
}

impl WeightSource {
    /// Opens a standalone weights file, choosing the reader by content: HDF5 with a `layers`
    /// group (Keras 3), HDF5 with a root `layer_names` attribute or a legacy model file's
    /// `model_weights` (legacy Keras 2), or zip (npz).
    pub fn open(path: &Path) -> Result<WeightSource> {
        if path.is_dir() {
            return Err(Error::format(
                path,
                "a folder, not a weights file (expected a .weights.h5, a legacy .h5 or an .npz)",
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if bytes.starts_with(legacy_h5::HDF5_SIGNATURE) {
            let file = legacy_h5::open(path, bytes)?;
            match legacy_h5::classify(&file) {
                Hdf5Kind::LegacyModel | Hdf5Kind::LegacyWeights => Ok(WeightSource::Legacy(
                    LegacyWeights::from_opened(path, file)?,
                )),
                Hdf5Kind::Keras3Weights => Ok(WeightSource::H5(H5Weights::from_file(path, file)?)),
                Hdf5Kind::Unknown => Err(Error::format(
                    path,
                    "not a Keras weights file: an HDF5 file with neither a 'layers' group (Keras 3 \
                     .weights.h5) nor a 'layer_names' attribute (legacy Keras 2 weights)",
                )),
            }
        } else if bytes.starts_with(b"PK") {
            Ok(WeightSource::Npz(NpzWeights::from_bytes(path, bytes)?))
        } else if bytes.is_empty() {
            Err(Error::format(path, "weights file is empty"))
        } else {
            Err(Error::format(
                path,
                "not a weights file: expected HDF5 (.weights.h5) or .npz",
            ))
        }
    }

    /// The `count` arrays a file holds for a layer (`layer` in h5 group `group`), or for a
    /// sub-object of it (`sub` like `["forward_layer", "cell"]`, read by h5 only: npz is purely
    /// positional, and legacy h5 hands out a layer's arrays in order). An initializing source
    /// has no arrays to hand out without the layer's config.
    pub fn take(
        &mut self,
        layer: &str,
        group: &str,
        sub: &[&str],
        count: usize,
    ) -> Result<Vec<RawWeight>> {
        match self {
            WeightSource::H5(h) => h.take(layer, group, sub, count),
            WeightSource::Legacy(l) => l.take(layer, count),
            WeightSource::Npz(n) => n.take(layer, count),
            WeightSource::Init(_) => Err(Error::Internal(format!(
                "layer '{layer}': initialized weights are made from the layer's config"
            ))),
        }
    }

    /// The weights the loader asks for: from the file, or drawn from the layer's initializers.
    pub(crate) fn take_request(&mut self, req: &WeightRequest) -> Result<Vec<RawWeight>> {
        let count = req.specs.len();
        match self {
            WeightSource::H5(h) => h.take(req.owner, req.group, req.sub, count),
            WeightSource::Legacy(l) => l.take(req.owner, count),
            WeightSource::Npz(n) => n.take(req.owner, count),
            WeightSource::Init(i) => i.take(req),
        }
    }

    /// Fails when the file holds weights no layer took.
    pub fn finish(self) -> Result<()> {
        match self {
            WeightSource::H5(h) => h.finish(),
            WeightSource::Legacy(l) => l.finish(),
            WeightSource::Npz(n) => n.finish(),
            // Nothing was read, so nothing can be left over.
            WeightSource::Init(_) => Ok(()),
        }
    }
}

/// Bounds on the search for arrays under a group no layer took (see `H5Weights::has_arrays`).
const MAX_GROUP_DEPTH: usize = 16;
const MAX_GROUPS_SEARCHED: usize = 4096;

/// Keras 3 weights: `layers/<group>/[sub/]vars/<N>`. Keras finds a layer's group by position,
/// not by name: `<group>` is the snake_case class name, numbered per class in layer order
/// (`lstm`, `lstm_1` ...). The `name` attribute of the `vars` group holds the layer name it was
/// saved under, which need not match the config (the seed's original files differ), so it is
/// only a fallback.
pub struct H5Weights {
    path: PathBuf,
    file: hdf5_pure::File,
    /// Group under `layers/` -> the layer name saved in its `vars` attribute.
    groups: BTreeMap<String, String>,
    taken: BTreeSet<String>,
}

impl H5Weights {
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let corrupt =
            |e: hdf5_pure::Error| Error::format(path, format!("corrupt HDF5 weights: {e}"));
        let file = hdf5_pure::File::from_bytes(bytes).map_err(corrupt)?;
        Self::from_file(path, file)
    }

    /// Like [`from_bytes`](Self::from_bytes), for a file already opened.
    pub fn from_file(path: &Path, file: hdf5_pure::File) -> Result<Self> {
        let corrupt =
            |e: hdf5_pure::Error| Error::format(path, format!("corrupt HDF5 weights: {e}"));
        let layers = file.group("layers").map_err(|_| {
            Error::format(
                path,
                "not a Keras 3 weights file: no 'layers' group (nor the 'layer_names' of legacy Keras 2 weights)",
            )
        })?;
        let mut groups = BTreeMap::new();
        for group in layers.groups().map_err(corrupt)? {
            let vars = format!("layers/{group}/vars");
            let name = file
                .group(&vars)
                .ok()
                .and_then(|g| g.attrs().ok())
                .and_then(|attrs| match attrs.get("name") {
                    Some(
                        AttrValue::String(s)
                        | AttrValue::AsciiString(s)
                        | AttrValue::VarLenString(s)
                        | AttrValue::VarLenAsciiString(s),
                    ) => Some(s.clone()),
                    _ => None,
                })
                // Without the attribute, fall back to the group name itself.
                .unwrap_or_else(|| group.clone());
            groups.insert(group, name);
        }
        Ok(H5Weights {
            path: path.to_path_buf(),
            file,
            groups,
            taken: BTreeSet::new(),
        })
    }

    fn take(
        &mut self,
        layer: &str,
        group: &str,
        sub: &[&str],
        count: usize,
    ) -> Result<Vec<RawWeight>> {
        // A layer of a nested model lives under its container: `sequential/layers/dense`.
        let nested = group.contains('/') && self.file.group(&format!("layers/{group}")).is_ok();
        let found = if self.groups.contains_key(group) || nested {
            Some(group.to_string())
        } else {
            self.groups
                .iter()
                .find(|(_, name)| name.as_str() == layer)
                .map(|(g, _)| g.clone())
        };
        let Some(group) = found else {
            if count == 0 {
                return Ok(Vec::new());
            }
            return Err(Error::Weights {
                path: self.path.clone(),
                layer: layer.to_string(),
                message: format!(
                    "missing: the file has no weights for this layer (expected {count} arrays)"
                ),
            });
        };
        // The top-level group counts as taken; a nested model's inner groups are checked by
        // the count of arrays each inner layer takes.
        let top = group.split('/').next().unwrap_or(&group).to_string();
        self.taken.insert(top);
        let mut vars_path = format!("layers/{group}");
        for s in sub {
            vars_path.push('/');
            vars_path.push_str(s);
        }
        vars_path.push_str("/vars");
        let err = |message: String| Error::Weights {
            path: self.path.clone(),
            layer: layer.to_string(),
            message,
        };
        let names = match self.file.group(&vars_path) {
            Ok(g) => g
                .datasets()
                .map_err(|e| err(format!("corrupt group '{vars_path}': {e}")))?,
            Err(_) if count == 0 => Vec::new(),
            Err(_) => return Err(err(format!("missing group '{vars_path}'"))),
        };
        // vars/N sort numerically: "10" comes after "9".
        let mut numbered = Vec::with_capacity(names.len());
        for n in names {
            let i: usize = n
                .parse()
                .map_err(|_| err(format!("unexpected dataset '{vars_path}/{n}'")))?;
            numbered.push((i, n));
        }
        numbered.sort();
        if numbered.len() != count {
            return Err(err(format!(
                "expected {count} arrays in '{vars_path}', found {}",
                numbered.len()
            )));
        }
        let mut out = Vec::with_capacity(count);
        for (_, n) in numbered {
            let ds_path = format!("{vars_path}/{n}");
            out.push(read_dataset(&self.file, &ds_path).map_err(&err)?);
        }
        Ok(out)
    }

    fn finish(self) -> Result<()> {
        for (group, layer) in &self.groups {
            if self.taken.contains(group) {
                continue;
            }
            // A group with no arrays (Dropout, Flatten ...) is harmless.
            if self.has_arrays(&format!("layers/{group}")) {
                return Err(Error::Weights {
                    path: self.path.clone(),
                    layer: layer.clone(),
                    message:
                        "extra: the file holds weights for a layer the model config does not have"
                            .into(),
                });
            }
        }
        Ok(())
    }

    /// Whether the group or any group below it holds a dataset. Keras nests a few levels
    /// (`layers/bidirectional/forward_layer/cell/vars`); the depth and group budgets stop a
    /// corrupt file whose group links back to an ancestor from recursing forever.
    fn has_arrays(&self, group_path: &str) -> bool {
        let mut groups_left = MAX_GROUPS_SEARCHED;
        self.has_arrays_within(group_path, MAX_GROUP_DEPTH, &mut groups_left)
    }

    fn has_arrays_within(&self, group_path: &str, depth: usize, groups_left: &mut usize) -> bool {
        if depth == 0 || *groups_left == 0 {
            return false;
        }
        *groups_left -= 1;
        let Ok(g) = self.file.group(group_path) else {
            return false;
        };
        if g.datasets().map(|d| !d.is_empty()).unwrap_or(false) {
            return true;
        }
        g.groups().unwrap_or_default().iter().any(|sub| {
            self.has_arrays_within(&format!("{group_path}/{sub}"), depth - 1, groups_left)
        })
    }
}

/// `np.savez(path, *model.get_weights())`: arrays `arr_0 .. arr_N` in layer order.
pub struct NpzWeights {
    path: PathBuf,
    arrays: Vec<RawWeight>,
    next: usize,
}

impl NpzWeights {
    /// Weights already in memory, in `model.get_weights()` order; `path` names them in errors.
    pub fn from_arrays(path: &Path, arrays: Vec<RawWeight>) -> Self {
        NpzWeights {
            path: path.to_path_buf(),
            arrays,
            next: 0,
        }
    }

    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| Error::format(path, format!("not a valid npz (zip) file: {e}")))?;
        let mut by_index = BTreeMap::new();
        for i in 0..zip.len() {
            let mut entry = zip
                .by_index(i)
                .map_err(|e| Error::format(path, format!("corrupt npz entry {i}: {e}")))?;
            let name = entry
                .name()
                .map_err(|e| Error::format(path, format!("corrupt npz entry name {i}: {e}")))?
                .into_owned();
            let stem = name.strip_suffix(".npy").unwrap_or(&name);
            let index: usize = stem
                .strip_prefix("arr_")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    Error::format(
                        path,
                        format!(
                            "npz entry '{name}' is not named arr_N (save with np.savez(path, *model.get_weights()))"
                        ),
                    )
                })?;
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .map_err(|e| Error::format(path, format!("corrupt npz entry '{name}': {e}")))?;
            let array = read_npy_f32(&data)
                .map_err(|m| Error::format(path, format!("entry '{name}': {m}")))?;
            by_index.insert(index, array);
        }
        // Indices must be exactly 0..n.
        for (expected, &index) in by_index.keys().enumerate() {
            if expected != index {
                return Err(Error::format(
                    path,
                    format!("npz is missing arr_{expected}"),
                ));
            }
        }
        Ok(NpzWeights {
            path: path.to_path_buf(),
            arrays: by_index.into_values().collect(),
            next: 0,
        })
    }

    fn take(&mut self, layer: &str, count: usize) -> Result<Vec<RawWeight>> {
        let end = self.next + count;
        if end > self.arrays.len() {
            return Err(Error::Weights {
                path: self.path.clone(),
                layer: layer.to_string(),
                message: format!(
                    "missing: the npz holds {} arrays but the model needs more (this layer needs arr_{}..arr_{})",
                    self.arrays.len(),
                    self.next,
                    end - 1
                ),
            });
        }
        let out = self.arrays[self.next..end].to_vec();
        self.next = end;
        Ok(out)
    }

    fn finish(self) -> Result<()> {
        if self.next != self.arrays.len() {
            return Err(Error::format(
                &self.path,
                format!(
                    "extra weights: the npz holds {} arrays, the model uses {}",
                    self.arrays.len(),
                    self.next
                ),
            ));
        }
        Ok(())
    }
}

/// One HDF5 dataset as f32 values with its shape; the message says what is wrong with it.
pub(crate) fn read_dataset(file: &hdf5_pure::File, ds_path: &str) -> Result<RawWeight, String> {
    let ds = file
        .dataset(ds_path)
        .map_err(|e| format!("cannot open '{ds_path}': {e}"))?;
    let shape: Vec<usize> = ds
        .shape()
        .map_err(|e| format!("corrupt '{ds_path}': {e}"))?
        .into_iter()
        .map(|d| d as usize)
        .collect();
    let values = ds
        .read_f32()
        .map_err(|e| format!("cannot read '{ds_path}' as float32: {e}"))?;
    if values.len() != shape.iter().product::<usize>() {
        return Err(format!(
            "'{ds_path}' holds {} values for shape {shape:?}",
            values.len()
        ));
    }
    Ok(RawWeight { shape, values })
}

/// Reads an `.npy` payload of any float or integer dtype as f32.
pub fn read_npy_f32(bytes: &[u8]) -> std::result::Result<RawWeight, String> {
    let array = crate::npy::parse(bytes)?.into_f32();
    let shape = array.shape().to_vec();
    let values = array.as_standard_layout().iter().copied().collect();
    Ok(RawWeight { shape, values })
}
