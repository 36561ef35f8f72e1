//! `Model`: the public face of the crate. Loads a Keras model into the IR, validates inputs once,
//! and hands them to the chosen backend.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, IxDyn};

use crate::error::{Error, Result};
use crate::graph::{DType, Graph};
pub use crate::input::PreparedInput;

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

/// A lock that is held across the GPU's asynchronous steps (device creation, readback): an
/// `async` mutex, so a browser's single thread awaits it instead of blocking, and native callers
/// block on it through `pollster`.
type AsyncMutex<T> = futures_intrusive::sync::Mutex<T>;

/// A Keras model loaded for inference. `Send + Sync`: share it between threads freely.
pub struct Model {
    graph: Graph,
    source: PathBuf,
    gpu: AsyncMutex<Option<crate::gpu::GpuRuntime>>,
    /// For `Backend::Auto`: Some(name) when the only adapter is a software rasterizer (native
    /// only: a browser offers one adapter, used as it is).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    auto_software: std::sync::OnceLock<Option<String>>,
    /// Set when an input's time axis is free (`keras.Input((None, F))`).
    free_time: Option<FreeTime>,
}

/// A model whose graph depends on its inputs' lengths: `graph` is built for a placeholder
/// length; each set of lengths actually given gets its own graph, rebuilt from the model files
/// (and, on the GPU, its own runtime), cached.
struct FreeTime {
    config: PathBuf,
    /// The model file's content when it was loaded from memory (`config` then names it).
    bytes: Option<Arc<[u8]>>,
    weights: Option<PathBuf>,
    /// Some: the weights are initialized from this seed (`load_initialized`), not read.
    init_seed: Option<u64>,
    /// The graph inputs whose axis 1 (after the batch) is free.
    inputs: Vec<usize>,
    /// Keyed by the lengths of `inputs`, in order.
    graphs: Mutex<HashMap<Vec<usize>, Arc<Graph>>>,
    gpus: AsyncMutex<HashMap<Vec<usize>, Arc<crate::gpu::GpuRuntime>>>,
}

/// Each set of lengths keeps its graph (and GPU runtime); past this many, the caches start over.
const FREE_TIME_CACHE: usize = 16;

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("source", &self.source)
            .field("graph", &self.graph)
            .finish()
    }
}

impl Model {
    /// Loads a `.keras` file (Keras 3 zip of config.json + model.weights.h5).
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Model::load_files(path.as_ref(), None)
    }

    /// Loads a model JSON or a `.keras` file without reading weights: each weight is
    /// initialized from its layer's config as Keras builds a fresh model, drawn from `seed`
    /// (see [`crate::keras::load_initialized`]).
    pub fn load_initialized(path: impl AsRef<Path>, seed: u64) -> Result<Model> {
        Model::load_from(path.as_ref(), None, Some(seed))
    }

    fn load_files(path: &Path, weights: Option<&Path>) -> Result<Model> {
        Model::load_from(path, weights, None)
    }

    fn load_from(path: &Path, weights: Option<&Path>, init_seed: Option<u64>) -> Result<Model> {
        let (graph, free_inputs) = match init_seed {
            Some(seed) => crate::keras::load_initialized_for_lengths(path, seed, &[])?,
            None => crate::keras::load_for_lengths(path, weights, &[])?,
        };
        let mut model = Model::from_graph(graph, path);
        if !free_inputs.is_empty() {
            model.free_time = Some(FreeTime {
                config: path.to_path_buf(),
                bytes: None,
                weights: weights.map(Path::to_path_buf),
                init_seed,
                inputs: free_inputs,
                graphs: Mutex::new(HashMap::new()),
                gpus: AsyncMutex::new(HashMap::new(), false),
            });
        }
        Ok(model)
    }

    /// Loads a model file held in memory: a `.keras` file's bytes (or a legacy `.h5` model
    /// file's), read exactly as [`Model::load`] reads the file. `name` stands for the file in
    /// error messages and as [`Model::source`]. What the browser build loads.
    pub fn load_bytes(name: impl AsRef<Path>, bytes: &[u8]) -> Result<Model> {
        let name = name.as_ref();
        let (graph, free_inputs) = crate::keras::load_bytes_for_lengths(name, bytes, &[])?;
        let mut model = Model::from_graph(graph, name);
        if !free_inputs.is_empty() {
            model.free_time = Some(FreeTime {
                config: name.to_path_buf(),
                bytes: Some(Arc::from(bytes)),
                weights: None,
                init_seed: None,
                inputs: free_inputs,
                graphs: Mutex::new(HashMap::new()),
                gpus: AsyncMutex::new(HashMap::new(), false),
            });
        }
        Ok(model)
    }

    /// Keras's `fit` on the CPU reference path (see [`crate::train::Trainer`]): trains the
    /// model's weights in place and returns the history (`history.epochs[e].loss` is Keras's
    /// `history["loss"][e]`). Later predictions, on either backend, use the trained weights;
    /// `save` writes them.
    pub fn train(
        &mut self,
        data: &crate::train::TrainData,
        config: &crate::train::TrainConfig,
    ) -> Result<crate::train::History> {
        self.train_with_validation(data, None, config)
    }

    /// [`Model::train`] with validation data scored after every epoch (`val_loss`, `val_…`).
    pub fn train_with_validation(
        &mut self,
        data: &crate::train::TrainData,
        validation: Option<&crate::train::TrainData>,
        config: &crate::train::TrainConfig,
    ) -> Result<crate::train::History> {
        if self.free_time.is_some() {
            // Each input length rebuilds its graph from the files, which would not hold the
            // trained weights.
            return Err(Error::Input(
                "Model::train: a model whose time axis is None trains through \
                 wgnn::train::Trainer on the graph of one length"
                    .into(),
            ));
        }
        let mut trainer = crate::train::Trainer::new(&self.graph, config.clone())?;
        let history = trainer.fit(data, validation, &mut crate::train::fit::Quiet)?;
        self.graph.params = trainer.params().clone();
        // A GPU plan holds the old weights.
        self.gpu = AsyncMutex::new(None, false);
        Ok(history)
    }

    /// Loads a model JSON (`model.to_json()`) with a weights file: `.weights.h5` (or any HDF5)
    /// or `.npz` holding `model.get_weights()` in order. A `.keras` file with separate weights is
    /// accepted too: its own weights are then replaced.
    pub fn load_with_weights(config: impl AsRef<Path>, weights: impl AsRef<Path>) -> Result<Model> {
        Model::load_files(config.as_ref(), Some(weights.as_ref()))
    }

    /// Loads a model config (JSON or `.keras`) with its weights given as arrays in
    /// `model.get_weights()` order: (shape, row-major values).
    pub fn load_with_weight_arrays(
        config: impl AsRef<Path>,
        arrays: Vec<(Vec<usize>, Vec<f32>)>,
    ) -> Result<Model> {
        let path = config.as_ref();
        let arrays = arrays
            .into_iter()
            .map(|(shape, values)| crate::keras::weights::RawWeight { shape, values })
            .collect();
        let graph = crate::keras::load_with_arrays(path, arrays)?;
        Ok(Model::from_graph(graph, path))
    }

    pub fn from_graph(graph: Graph, source: &Path) -> Model {
        Model {
            graph,
            source: source.to_path_buf(),
            gpu: AsyncMutex::new(None, false),
            auto_software: std::sync::OnceLock::new(),
            free_time: None,
        }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Saves the model as Keras 3 does, by file name: `*.keras` (config, weights, metadata:
    /// what `keras.saving.load_model` reads) or `*.weights.h5` (the weights alone, for
    /// `model.load_weights`). Written to a temporary file beside `path` and renamed into place.
    /// See [`crate::keras::save`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::keras::save::save(path.as_ref(), &self.graph, None)
    }

    /// Like [`save`](Self::save), with the optimizer's state: its variables in the order of
    /// Keras's `optimizer.variables`, each named by its Keras path (`adam/iteration` ...).
    pub fn save_with_optimizer(
        &self,
        path: impl AsRef<Path>,
        optimizer: &[(String, ArrayD<f32>)],
    ) -> Result<()> {
        crate::keras::save::save(path.as_ref(), &self.graph, Some(optimizer))
    }

    /// Runs a single-input model on a float batch shaped `(N, ...input_shape)`, returning its
    /// (first) output. For token-id models the values must be integral (they are taken as ids).
    pub fn predict(&self, x: ArrayViewD<f32>, backend: Backend) -> Result<ArrayD<f32>> {
        self.graph.single_input()?;
        let input = self.prepare_float(x)?;
        self.run(&input, backend)
    }

    /// Runs a token-id model on ids shaped `(N, T)`.
    pub fn predict_ids(&self, ids: ArrayView2<i64>, backend: Backend) -> Result<ArrayD<f32>> {
        let input = self.prepare_ids(ids)?;
        self.run(&input, backend)
    }

    /// Runs a model with any number of inputs (in the model's input order; token ids as
    /// integral floats) and returns every output, in the model's output order.
    pub fn predict_many(
        &self,
        xs: &[ArrayViewD<f32>],
        backend: Backend,
    ) -> Result<Vec<ArrayD<f32>>> {
        let inputs = xs
            .iter()
            .enumerate()
            .map(|(i, x)| self.prepare_input(i, x.view()))
            .collect::<Result<Vec<_>>>()?;
        self.run_all(&inputs, backend)
    }

    /// Runs a prepared single-input batch and returns the first output.
    pub fn run(&self, input: &PreparedInput, backend: Backend) -> Result<ArrayD<f32>> {
        let mut outs = self.run_all(std::slice::from_ref(input), backend)?;
        if outs.is_empty() {
            return Err(Error::Internal("the model has no outputs".into()));
        }
        Ok(outs.swap_remove(0))
    }

    /// Runs prepared batches, one per model input; the lowest-level entry point. Blocks until
    /// the GPU is done ([`Model::run_all_async`] is the same without blocking). In WebAssembly
    /// only the CPU backend can block: use `run_all_async` there.
    pub fn run_all(&self, inputs: &[PreparedInput], backend: Backend) -> Result<Vec<ArrayD<f32>>> {
        #[cfg(target_arch = "wasm32")]
        if backend != Backend::Cpu {
            return Err(Error::Usage(
                "in WebAssembly the GPU answers asynchronously: use Model::run_all_async".into(),
            ));
        }
        pollster::block_on(self.run_all_async(inputs, backend))
    }

    /// [`Model::run_all`] as a future: creating the GPU device and reading results back are
    /// awaited, never blocked on (what a browser needs).
    pub async fn run_all_async(
        &self,
        inputs: &[PreparedInput],
        backend: Backend,
    ) -> Result<Vec<ArrayD<f32>>> {
        if inputs.len() != self.graph.inputs.len() {
            return Err(Error::Input(format!(
                "the model takes {} input(s), got {}",
                self.graph.inputs.len(),
                inputs.len()
            )));
        }
        if let Some(free) = &self.free_time {
            let lengths: Vec<usize> = free
                .inputs
                .iter()
                .map(|&i| match &inputs[i] {
                    PreparedInput::Float(x) => x.shape().get(1).copied().unwrap_or(0),
                    PreparedInput::Ids(ids) => ids.ncols(),
                })
                .collect();
            let graph = self.graph_for(free, &lengths)?;
            return self
                .run_graph(&graph, Some((free, &lengths)), inputs, backend)
                .await;
        }
        self.run_graph(&self.graph, None, inputs, backend).await
    }

    /// The graph for inputs of these free-axis lengths: built once per set of lengths.
    fn graph_for(&self, free: &FreeTime, lengths: &[usize]) -> Result<Arc<Graph>> {
        let mut graphs = free
            .graphs
            .lock()
            .map_err(|_| Error::Internal("graph cache lock poisoned".into()))?;
        if let Some(g) = graphs.get(lengths) {
            return Ok(Arc::clone(g));
        }
        if let Some(&bad) = lengths.iter().find(|&&t| t == 0) {
            return Err(Error::Input(format!(
                "a sequence of length {bad}: the time axis needs at least one step"
            )));
        }
        let mut by_input = vec![0; self.graph.inputs.len()];
        for (&i, &t) in free.inputs.iter().zip(lengths) {
            by_input[i] = t;
        }
        let (graph, _) = match free.init_seed {
            Some(seed) => {
                crate::keras::load_initialized_for_lengths(&free.config, seed, &by_input)?
            }
            None => match &free.bytes {
                Some(bytes) => {
                    crate::keras::load_bytes_for_lengths(&free.config, bytes, &by_input)?
                }
                None => crate::keras::load_for_lengths(
                    &free.config,
                    free.weights.as_deref(),
                    &by_input,
                )?,
            },
        };
        if graphs.len() >= FREE_TIME_CACHE {
            graphs.clear();
        }
        let graph = Arc::new(graph);
        graphs.insert(lengths.to_vec(), Arc::clone(&graph));
        Ok(graph)
    }

    /// The GPU runtime for the graph of these free-axis lengths.
    async fn free_time_gpu(
        &self,
        free: &FreeTime,
        lengths: &[usize],
        graph: &Graph,
    ) -> Result<Arc<crate::gpu::GpuRuntime>> {
        let mut gpus = free.gpus.lock().await;
        if let Some(g) = gpus.get(lengths) {
            return Ok(Arc::clone(g));
        }
        let gpu = Arc::new(crate::gpu::GpuRuntime::new_async(graph, None).await?);
        if gpus.len() >= FREE_TIME_CACHE {
            gpus.clear();
        }
        gpus.insert(lengths.to_vec(), Arc::clone(&gpu));
        Ok(gpu)
    }

    /// Runs `graph` on `backend`. `free`: the free-axis lengths `graph` was built for (it then
    /// has a GPU runtime of its own).
    async fn run_graph(
        &self,
        graph: &Graph,
        free: Option<(&FreeTime, &[usize])>,
        inputs: &[PreparedInput],
        backend: Backend,
    ) -> Result<Vec<ArrayD<f32>>> {
        match backend {
            Backend::Cpu => crate::cpu::run(graph, inputs),
            Backend::Gpu => self.run_gpu(graph, free, inputs).await,
            Backend::Auto => {
                // A browser offers one adapter and no list: it is used even when it is a
                // fallback (software) one.
                #[cfg(not(target_arch = "wasm32"))]
                {
                    let software = self
                        .auto_software
                        .get_or_init(|| crate::gpu::auto_adapter_is_software(None));
                    if let Some(name) = software {
                        warn_cpu_fallback(&format!(
                            "the only GPU adapter is a software one ({name}); use --backend gpu to run on it"
                        ));
                        return crate::cpu::run(graph, inputs);
                    }
                }
                match self.run_gpu(graph, free, inputs).await {
                    Err(Error::Gpu(msg)) if crate::gpu::is_no_adapter(&msg) => {
                        warn_cpu_fallback(&msg);
                        crate::cpu::run(graph, inputs)
                    }
                    other => other,
                }
            }
        }
    }

    async fn run_gpu(
        &self,
        graph: &Graph,
        free: Option<(&FreeTime, &[usize])>,
        inputs: &[PreparedInput],
    ) -> Result<Vec<ArrayD<f32>>> {
        match free {
            Some((free, lengths)) => {
                let gpu = self.free_time_gpu(free, lengths, graph).await?;
                gpu.run_async(graph, inputs).await
            }
            None => {
                let mut guard = self.gpu.lock().await;
                if guard.is_none() {
                    *guard = Some(crate::gpu::GpuRuntime::new_async(&self.graph, None).await?);
                }
                match guard.as_ref() {
                    Some(gpu) => gpu.run_async(graph, inputs).await,
                    None => Err(Error::Gpu("GPU runtime missing".into())),
                }
            }
        }
    }

    /// The adapter this model's GPU runtime runs on, creating the runtime on first use: what
    /// the browser build reports as its backend.
    pub async fn gpu_adapter_name_async(&self) -> Result<String> {
        let mut guard = self.gpu.lock().await;
        if guard.is_none() {
            *guard = Some(crate::gpu::GpuRuntime::new_async(&self.graph, None).await?);
        }
        match guard.as_ref() {
            Some(gpu) => Ok(gpu.adapter_name()),
            None => Err(Error::Gpu("GPU runtime missing".into())),
        }
    }

    /// Gives access to this model's GPU runtime, creating it on first use (adapter chosen by
    /// `adapter`, else env `WGNN_ADAPTER`, else the best one). Plans are cached inside it, so
    /// repeated predictions build nothing.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_gpu<T>(
        &self,
        adapter: Option<&str>,
        f: impl FnOnce(&crate::gpu::GpuRuntime) -> Result<T>,
    ) -> Result<T> {
        let mut guard = pollster::block_on(self.gpu.lock());
        if guard.is_none() {
            *guard = Some(crate::gpu::GpuRuntime::new(&self.graph, adapter)?);
        }
        match guard.as_ref() {
            Some(gpu) => f(gpu),
            None => Err(Error::Gpu("GPU runtime missing".into())),
        }
    }

    /// Checks a float batch against the single input and converts it for the backends.
    pub fn prepare_float(&self, x: ArrayViewD<f32>) -> Result<PreparedInput> {
        self.graph.single_input()?;
        self.prepare_input(0, x)
    }

    /// Checks a float batch against input `index` (token ids given as integral floats).
    pub fn prepare_input(&self, index: usize, x: ArrayViewD<f32>) -> Result<PreparedInput> {
        let info = self.input_info(index)?;
        match info.dtype {
            DType::F32 => {
                self.check_shape(index, x.shape())?;
                Ok(PreparedInput::Float(x.as_standard_layout().into_owned()))
            }
            DType::Ids | DType::Mask => {
                if x.ndim() != 2 {
                    return Err(Error::Input(format!(
                        "expected token ids shaped (N, {}), found shape {:?}",
                        shape_str(&info.shape),
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
                self.prepare_ids_for(index, ids.view())
            }
        }
    }

    /// Checks token ids against the single input and its Embedding's vocabulary.
    pub fn prepare_ids(&self, ids: ArrayView2<i64>) -> Result<PreparedInput> {
        self.graph.single_input()?;
        self.prepare_ids_for(0, ids)
    }

    /// Checks token ids against input `index` and the vocabulary of the Embedding reading it.
    pub fn prepare_ids_for(&self, index: usize, ids: ArrayView2<i64>) -> Result<PreparedInput> {
        let info = self.input_info(index)?;
        if info.dtype != DType::Ids {
            return Err(Error::Input(format!(
                "this model takes float input shaped (N, {}), not token ids",
                shape_str(&info.shape)
            )));
        }
        self.check_shape(index, ids.shape())?;
        let (name, vocab) = match self.graph.embedding_for_input(index) {
            Some(found) => found,
            // Read only as a mask (`layer(x, mask=mask_input)`): any id counts, nonzero is on.
            None if self.input_only_masks(index) => ("mask", u32::MAX as usize),
            None => {
                return Err(Error::Input(
                    "model takes token ids but has no Embedding".into(),
                ))
            }
        };
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

    /// Whether graph input `index` is read only by padding-mask nodes.
    fn input_only_masks(&self, index: usize) -> bool {
        let Some(port) = self.graph.inputs.get(index) else {
            return false;
        };
        let readers: Vec<_> = self
            .graph
            .nodes
            .iter()
            .filter(|n| n.inputs.contains(&port.value))
            .collect();
        !readers.is_empty()
            && readers
                .iter()
                .all(|n| matches!(n.op, crate::graph::Op::PaddingMask))
    }

    fn input_info(&self, index: usize) -> Result<&crate::graph::ValueInfo> {
        self.graph
            .inputs
            .get(index)
            .map(|p| self.graph.value(p.value))
            .ok_or_else(|| {
                Error::Input(format!(
                    "the model has {} input(s), no input #{index}",
                    self.graph.inputs.len()
                ))
            })
    }

    fn check_shape(&self, index: usize, shape: &[usize]) -> Result<()> {
        let expected = &self.input_info(index)?.shape;
        let free = self
            .free_time
            .as_ref()
            .is_some_and(|f| f.inputs.contains(&index));
        if free {
            // Any length along the free time axis; every other axis as the config says.
            if shape.len() != expected.len() + 1 || shape[2..] != expected[1..] {
                let mut dims = vec!["None".to_string()];
                dims.extend(expected[1..].iter().map(|d| d.to_string()));
                return Err(Error::Input(format!(
                    "{}expected shape (N, {}), found {shape:?}",
                    self.input_label(index),
                    dims.join(", ")
                )));
            }
            return Ok(());
        }
        if shape.len() != expected.len() + 1 || &shape[1..] != expected.as_slice() {
            let which = if self.graph.inputs.len() > 1 {
                format!("input '{}': ", self.graph.inputs[index].name)
            } else {
                String::new()
            };
            return Err(Error::Input(format!(
                "{which}expected shape (N, {}), found {:?}",
                shape_str(expected),
                shape
            )));
        }
        Ok(())
    }

    fn input_label(&self, index: usize) -> String {
        if self.graph.inputs.len() > 1 {
            format!("input '{}': ", self.graph.inputs[index].name)
        } else {
            String::new()
        }
    }

    /// Shape of output `index` for a batch of `n`.
    pub fn output_dim_of(&self, index: usize, n: usize) -> IxDyn {
        let mut dims = vec![n];
        dims.extend_from_slice(&self.graph.output_info(index).shape);
        IxDyn(&dims)
    }

    /// Shape of the first output for a batch of `n`.
    pub fn output_dim(&self, n: usize) -> IxDyn {
        self.output_dim_of(0, n)
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
