//! `Model`: the public face of the crate. Loads a Keras model into the IR, validates inputs once,
//! and hands them to the chosen backend.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, IxDyn};

use crate::error::{Error, Result};
use crate::ir::{InputKind, LayerKind, ModelIr};

/// Where a prediction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The ndarray reference path.
    Cpu,
    /// wgpu compute shaders; an error when no adapter is found.
    Gpu,
    /// A hardware GPU when one is found, else the CPU with one warning line on stderr (a
    /// software rasterizer such as llvmpipe is slower than the CPU path: ask for it with `Gpu`).
    #[default]
    Auto,
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Backend::Cpu),
            "gpu" => Ok(Backend::Gpu),
            "auto" => Ok(Backend::Auto),
            other => Err(Error::Usage(format!(
                "unknown backend '{other}' (expected auto, cpu or gpu)"
            ))),
        }
    }
}

/// A validated batch, in the form both backends read.
#[derive(Debug, Clone)]
pub enum PreparedInput {
    /// (N, ...model input shape), standard layout.
    Float(ArrayD<f32>),
    /// (N, T) token ids, each checked to be < the Embedding's input_dim.
    Ids(Array2<u32>),
}

impl PreparedInput {
    pub fn batch(&self) -> usize {
        match self {
            PreparedInput::Float(x) => x.shape()[0],
            PreparedInput::Ids(x) => x.nrows(),
        }
    }

    /// Rows `start..end` of the batch.
    pub fn slice(&self, start: usize, end: usize) -> PreparedInput {
        use ndarray::{s, Axis};
        match self {
            PreparedInput::Float(x) => PreparedInput::Float(
                x.slice_axis(Axis(0), (start..end).into())
                    .as_standard_layout()
                    .into_owned(),
            ),
            PreparedInput::Ids(x) => PreparedInput::Ids(x.slice(s![start..end, ..]).to_owned()),
        }
    }
}

/// A Keras model loaded for inference. `Send + Sync`: share it between threads freely.
pub struct Model {
    ir: ModelIr,
    source: PathBuf,
    gpu: Mutex<Option<crate::gpu::GpuRuntime>>,
    /// For `Backend::Auto`: Some(name) when the only adapter is a software rasterizer.
    auto_software: std::sync::OnceLock<Option<String>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("source", &self.source)
            .field("ir", &self.ir)
            .finish()
    }
}

impl Model {
    /// Loads a `.keras` file (Keras 3 zip of config.json + model.weights.h5).
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let ir = crate::keras::load(path, None)?;
        Ok(Model::from_ir(ir, path))
    }

    /// Loads a model JSON (`model.to_json()`) with a weights file: `.weights.h5` (or any HDF5)
    /// or `.npz` holding `model.get_weights()` in order. A `.keras` file with separate weights is
    /// accepted too: its own weights are then replaced.
    pub fn load_with_weights(config: impl AsRef<Path>, weights: impl AsRef<Path>) -> Result<Model> {
        let path = config.as_ref();
        let ir = crate::keras::load(path, Some(weights.as_ref()))?;
        Ok(Model::from_ir(ir, path))
    }

    pub fn from_ir(ir: ModelIr, source: &Path) -> Model {
        Model {
            ir,
            source: source.to_path_buf(),
            gpu: Mutex::new(None),
            auto_software: std::sync::OnceLock::new(),
        }
    }

    pub fn ir(&self) -> &ModelIr {
        &self.ir
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Runs the model on a float batch shaped `(N, ...input_shape)`. For token-id models the
    /// values must be integral (they are taken as ids).
    pub fn predict(&self, x: ArrayViewD<f32>, backend: Backend) -> Result<ArrayD<f32>> {
        let input = self.prepare_float(x)?;
        self.run(&input, backend)
    }

    /// Runs a token-id model on ids shaped `(N, T)`.
    pub fn predict_ids(&self, ids: ArrayView2<i64>, backend: Backend) -> Result<ArrayD<f32>> {
        let input = self.prepare_ids(ids)?;
        self.run(&input, backend)
    }

    /// Runs a prepared batch; the lowest-level entry point.
    pub fn run(&self, input: &PreparedInput, backend: Backend) -> Result<ArrayD<f32>> {
        match backend {
            Backend::Cpu => crate::cpu::run(&self.ir, input),
            Backend::Gpu => self.with_gpu(None, |gpu| gpu.run(&self.ir, input)),
            Backend::Auto => {
                let software = self
                    .auto_software
                    .get_or_init(|| crate::gpu::auto_adapter_is_software(None));
                if let Some(name) = software {
                    warn_cpu_fallback(&format!(
                        "the only GPU adapter is a software one ({name}); use --backend gpu to run on it"
                    ));
                    return crate::cpu::run(&self.ir, input);
                }
                match self.with_gpu(None, |gpu| gpu.run(&self.ir, input)) {
                    Err(Error::Gpu(msg)) if crate::gpu::is_no_adapter(&msg) => {
                        warn_cpu_fallback(&msg);
                        crate::cpu::run(&self.ir, input)
                    }
                    other => other,
                }
            }
        }
    }

    /// Gives access to this model's GPU runtime, creating it on first use (adapter chosen by
    /// `adapter`, else env `WGNN_ADAPTER`, else the best one). Plans are cached inside it, so
    /// repeated predictions build nothing.
    pub fn with_gpu<T>(
        &self,
        adapter: Option<&str>,
        f: impl FnOnce(&crate::gpu::GpuRuntime) -> Result<T>,
    ) -> Result<T> {
        let mut guard = self
            .gpu
            .lock()
            .map_err(|_| Error::Gpu("GPU runtime lock poisoned by an earlier panic".into()))?;
        if guard.is_none() {
            *guard = Some(crate::gpu::GpuRuntime::new(&self.ir, adapter)?);
        }
        match guard.as_ref() {
            Some(gpu) => f(gpu),
            None => Err(Error::Gpu("GPU runtime missing".into())),
        }
    }

    /// Checks a float batch against the model's input and converts it for the backends.
    pub fn prepare_float(&self, x: ArrayViewD<f32>) -> Result<PreparedInput> {
        match self.ir.input_kind {
            InputKind::Float => {
                self.check_shape(x.shape())?;
                Ok(PreparedInput::Float(x.as_standard_layout().into_owned()))
            }
            InputKind::TokenIds => {
                if x.ndim() != 2 {
                    return Err(Error::Input(format!(
                        "expected token ids shaped (N, {}), found shape {:?}",
                        self.ir.input_shape[0],
                        x.shape()
                    )));
                }
                let mut ids = Array2::<i64>::zeros((x.shape()[0], x.shape()[1]));
                for (dst, &v) in ids.iter_mut().zip(x.iter()) {
                    if !v.is_finite() || v.fract() != 0.0 {
                        return Err(Error::Input(format!(
                            "token ids must be integers, found {v}"
                        )));
                    }
                    *dst = v as i64;
                }
                self.prepare_ids(ids.view())
            }
        }
    }

    /// Checks token ids against the model's input and its Embedding's vocabulary.
    pub fn prepare_ids(&self, ids: ArrayView2<i64>) -> Result<PreparedInput> {
        if self.ir.input_kind != InputKind::TokenIds {
            return Err(Error::Input(format!(
                "this model takes float input shaped (N, {}), not token ids",
                shape_str(&self.ir.input_shape)
            )));
        }
        self.check_shape(ids.shape())?;
        let (name, vocab) = self
            .ir
            .layers
            .iter()
            .find_map(|l| match &l.kind {
                LayerKind::Embedding(e) => Some((l.name.as_str(), e.input_dim)),
                _ => None,
            })
            .ok_or_else(|| Error::Input("model takes token ids but has no Embedding".into()))?;
        let mut out = Array2::<u32>::zeros(ids.raw_dim());
        for ((pos, &id), dst) in ids.indexed_iter().zip(out.iter_mut()) {
            if id < 0 || id as u64 >= vocab as u64 {
                return Err(Error::Input(format!(
                    "token id {id} at row {}, position {} is outside layer '{name}' (Embedding) vocabulary [0, {vocab})",
                    pos.0, pos.1
                )));
            }
            *dst = id as u32;
        }
        Ok(PreparedInput::Ids(out))
    }

    fn check_shape(&self, shape: &[usize]) -> Result<()> {
        let expected = &self.ir.input_shape;
        if shape.len() != expected.len() + 1 || &shape[1..] != expected.as_slice() {
            return Err(Error::Input(format!(
                "expected shape (N, {}), found {:?}",
                shape_str(expected),
                shape
            )));
        }
        Ok(())
    }

    /// Output shape for a batch of `n`.
    pub fn output_dim(&self, n: usize) -> IxDyn {
        let mut dims = vec![n];
        dims.extend_from_slice(self.ir.output_shape());
        IxDyn(&dims)
    }
}

fn shape_str(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn warn_cpu_fallback(reason: &str) {
    use std::sync::Once;
    static WARNED: Once = Once::new();
    WARNED.call_once(|| eprintln!("warning: {reason}; running on the CPU instead"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn model_is_send_and_sync() {
        assert_send_sync::<Model>();
    }
}
