//! The `wgnn` command line: wires the library together, nothing more.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ndarray::{ArrayD, Axis};

use wgnn::graph::DType;
use wgnn::npy::NpyArray;
use wgnn::{Backend, Error, Model, PreparedInput, Result};

mod cli_train;

// Batch-sized layer outputs are tens of MB each; glibc's malloc hands them back to the OS and
// zero-faults fresh pages on every layer, which cost ~20% of CPU inference. mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (in the option enum of the mimalloc 3 that libmimalloc-sys
/// builds by default, which it does not name; tests/allocator.rs checks the index). By default
/// freed memory goes back to the OS after a delay, so every
/// training step (and every batch) faulted in — and the kernel zeroed — its buffers again
/// (14% of a CIFAR-10 training step); -1 keeps freed memory for reuse until the process ends.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn keep_freed_memory() {
    // SAFETY: sets one of mimalloc's global options; valid at any time, from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[derive(Parser)]
#[command(
    name = "wgnn",
    version,
    about = "Run Keras CNN/RNN models on any GPU (wgpu) or the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per layer: name, type, output shape, parameters, FLOPs; `--plan` shows the GPU plan.
    Info(InfoArgs),
    /// Runs a model on an .npy batch and writes the output as float32 .npy.
    Predict(PredictArgs),
    /// Scores a model on a dataset: accuracy, macro-F1, per-class scores, confusion matrix.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Classifies PNG/JPEG images with a CIFAR-10 model: the top-3 classes.
    Classify(ClassifyArgs),
    /// Labels sentences with a NusaX sentiment model (arguments, or one per line on stdin).
    Sentiment(SentimentArgs),
    /// Keras Tokenizer tools.
    #[command(subcommand)]
    Tokenizer(TokenizerCommand),
    /// Throughput (items/s, GFLOP/s), batch-1 latency and peak memory on synthetic input.
    Bench(BenchArgs),
    /// Trains a model as Keras's `fit` does (CPU reference path) and saves it as .keras.
    Train(Box<cli_train::TrainArgs>),
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Timed iterations after warm-up.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed batch-1 runs for latency percentiles (0 to skip).
    #[arg(long, default_value_t = 20)]
    latency_runs: usize,
    /// One JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Time training steps (forward, loss, backward, update) instead of inference, with the
    /// model's compile config (else sparse_categorical_crossentropy and adam).
    #[arg(long)]
    train: bool,
    /// Also time every GPU dispatch of one batch with timestamp queries and print them by
    /// layer and kernel (--backend gpu; the adapter needs timestamp queries).
    #[arg(long)]
    profile: bool,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// The CIFAR-10 test set (10,000 images).
    Cifar10(EvalCifarArgs),
    /// NusaX-Senti (Indonesian) sentences.
    Nusax(EvalNusaxArgs),
}

#[derive(Subcommand)]
enum TokenizerCommand {
    /// Fits a Keras `Tokenizer` on a CSV's `text` column and writes `Tokenizer.to_json()`.
    Fit(TokenizerFitArgs),
}

#[derive(Args)]
struct EvalCommon {
    /// Data folder (holding cifar10/ and nusax/, or the files); default env WGNN_DATA, else the cache.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Download the dataset into the cache first if it is missing.
    #[arg(long)]
    download: bool,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Only the first N items.
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Also run the CPU path: argmax agreement and max |gpu - cpu|.
    #[arg(long)]
    compare: bool,
    /// Write the model's outputs (N, classes) as float32 .npy.
    #[arg(long)]
    save_probs: Option<PathBuf>,
}

#[derive(Args)]
struct EvalCifarArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    common: EvalCommon,
}

#[derive(Args)]
struct EvalNusaxArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Keras `Tokenizer.to_json()` file (not needed when the model has TextVectorization).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// test, valid or train.
    #[arg(long, default_value = "test")]
    split: String,
    /// Label names in index order (default neutral,positive,negative).
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    #[command(flatten)]
    common: EvalCommon,
}

#[derive(Args)]
struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// PNG or JPEG files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Class names, comma-separated (default: CIFAR-10's).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
}

#[derive(Args)]
struct SentimentArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Sentences; none reads one per line from stdin.
    sentences: Vec<String>,
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct TokenizerFitArgs {
    /// CSV with a `text` column (e.g. NusaX train.csv).
    csv: PathBuf,
    #[arg(short, long)]
    output: PathBuf,
    /// Out-of-vocabulary token (Keras default: none).
    #[arg(long)]
    oov: Option<String>,
    #[arg(long)]
    num_words: Option<usize>,
}

#[derive(Args)]
struct ModelArgs {
    /// A .keras file, or a model JSON (`model.to_json()`) with --weights.
    model: PathBuf,
    /// Weights for a model JSON: .weights.h5 or .npz of `model.get_weights()`.
    #[arg(long)]
    weights: Option<PathBuf>,
}

impl ModelArgs {
    fn load(&self) -> Result<Model> {
        match &self.weights {
            Some(w) => Model::load_with_weights(&self.model, w),
            None => Model::load(&self.model),
        }
    }
}

#[derive(Args)]
struct DeviceArgs {
    /// auto (GPU if found, else CPU), cpu or gpu.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// GPU adapter name (substring); default env WGNN_ADAPTER, else the best adapter.
    #[arg(long)]
    adapter: Option<String>,
}

impl DeviceArgs {
    fn backend(&self) -> Result<Backend> {
        self.backend.parse()
    }
}

#[derive(Args)]
struct InfoArgs {
    /// Model file (not needed with --adapters).
    model: Option<PathBuf>,
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Print the GPU dispatch plan for --batch-size.
    #[arg(long)]
    plan: bool,
    /// List the GPU adapters wgpu finds.
    #[arg(long)]
    adapters: bool,
    /// Print the GPU training step for --batch-size (the compile config's loss and
    /// optimizer, else sparse_categorical_crossentropy and adam).
    #[arg(long)]
    train_plan: bool,
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    #[arg(long)]
    adapter: Option<String>,
}

#[derive(Args)]
struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input .npy files, one per model input in the model's input order: float32
    /// (N, ...input shape), or integer token ids (N, T).
    #[arg(required = true, num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// Output .npy (float32); a model with several outputs writes an .npz with one array per
    /// output, named after it.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// Items per batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
}

fn main() -> ExitCode {
    quiet_mesa_device_select();
    keep_freed_memory();
    let cli = Cli::parse();
    // A bad WGNN_CPU is refused before any command runs, CPU or not.
    let result = wgnn::cpu::simd::checked_level().and_then(|_| match cli.command {
        Command::Info(args) => info(args),
        Command::Train(args) => cli_train::train(*args),
        Command::Predict(args) => predict(args),
        Command::Eval(EvalCommand::Cifar10(args)) => eval_cifar10(args),
        Command::Eval(EvalCommand::Nusax(args)) => eval_nusax(args),
        Command::Classify(args) => classify(args),
        Command::Sentiment(args) => sentiment(args),
        Command::Tokenizer(TokenizerCommand::Fit(args)) => tokenizer_fit(args),
        Command::Bench(args) => bench(args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                eprintln!("caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(if matches!(e, Error::Usage(_)) { 2 } else { 1 })
        }
    }
}

/// Mesa's Vulkan device-select layer (implicit, so on wherever Mesa's Vulkan drivers are
/// installed) asks a Wayland compositor for the default GPU, and without `XDG_RUNTIME_DIR`
/// libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment." on every
/// enumeration, which reads as wgnn's own error. With neither that variable nor an absolute
/// `WAYLAND_DISPLAY` there is no compositor to ask, so the layer is switched off by its own
/// `NODEVICE_SELECT=1`, unless the user set that or picked a device with
/// `MESA_VK_DEVICE_SELECT`; wgnn ranks adapters itself. Runs first in `main`, before any thread.
fn quiet_mesa_device_select() {
    let absolute = |name: &str| {
        std::env::var_os(name).is_some_and(|v| v.as_encoded_bytes().first() == Some(&b'/'))
    };
    let user_chose = |name: &str| std::env::var_os(name).is_some();
    if absolute("XDG_RUNTIME_DIR")
        || absolute("WAYLAND_DISPLAY")
        || user_chose("NODEVICE_SELECT")
        || user_chose("MESA_VK_DEVICE_SELECT")
    {
        return;
    }
    std::env::set_var("NODEVICE_SELECT", "1");
}

fn shape_string(shape: &[usize]) -> String {
    let dims: Vec<String> = std::iter::once("N".to_string())
        .chain(shape.iter().map(|d| d.to_string()))
        .collect();
    format!("({})", dims.join(", "))
}

fn info(args: InfoArgs) -> Result<()> {
    if args.adapters {
        let adapters = wgnn::gpu::list_adapters();
        if adapters.is_empty() {
            println!("no GPU adapters found");
        }
        for a in adapters {
            println!("{a}");
        }
        if args.model.is_none() {
            return Ok(());
        }
    }
    let path = args
        .model
        .ok_or_else(|| Error::Usage("info needs a MODEL (or --adapters)".into()))?;
    let model = ModelArgs {
        model: path,
        weights: args.weights,
    }
    .load()?;
    let graph = model.graph();
    println!("model: {} ({})", graph.name, model.source().display());
    for port in &graph.inputs {
        let v = graph.value(port.value);
        println!(
            "input '{}': {} {}",
            port.name,
            shape_string(&v.shape),
            v.dtype.name()
        );
    }
    if let Some(tv) = &graph.text_vectorization {
        println!(
            "text: TextVectorization '{}' vocabulary {} tokens, sequence length {:?}",
            tv.name,
            tv.vocabulary.len(),
            tv.output_sequence_length
        );
    }
    println!(
        "{:<28} {:<20} {:<22} {:>12} {:>14}  {:<24} details",
        "layer", "type", "output shape", "params", "FLOPs/item", "inputs"
    );
    for node in &graph.nodes {
        let outputs = node
            .outputs
            .iter()
            .map(|&v| shape_string(&graph.value(v).shape))
            .collect::<Vec<_>>()
            .join(" ");
        let mut inputs = node
            .inputs
            .iter()
            .map(|&v| graph.value_name(v))
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(m) = node.mask {
            inputs += &format!(" mask={}", graph.value_name(m));
        }
        println!(
            "{:<28} {:<20} {:<22} {:>12} {:>14}  {:<24} {}",
            node.name,
            node.class,
            outputs,
            graph.node_param_count(node),
            graph.node_flops(node),
            inputs,
            node.op.detail()
        );
    }
    for port in &graph.outputs {
        println!(
            "output '{}': {} from {}",
            port.name,
            shape_string(&graph.value(port.value).shape),
            graph.value_name(port.value)
        );
    }
    println!(
        "total params: {}   FLOPs per item: {} ({:.3} GFLOP)",
        graph.param_count(),
        graph.flops_per_item(),
        graph.flops_per_item() as f64 / 1e9
    );
    if args.plan {
        println!();
        print!(
            "{}",
            wgnn::gpu::describe_plan(graph, args.batch_size, args.adapter.as_deref())?
        );
    }
    if args.train_plan {
        println!();
        print!(
            "{}",
            train_plan(&model, args.batch_size, args.adapter.as_deref())?
        );
    }
    Ok(())
}

/// `info --train-plan`: the GPU training step with the model's own loss and optimizer.
fn train_plan(model: &Model, batch: usize, adapter: Option<&str>) -> Result<String> {
    let graph = model.graph();
    let compiled = wgnn::train::compile::Compiled::from_graph(graph, model.source())?;
    let losses = if compiled.losses.is_empty() {
        vec![wgnn::train::Loss::by_name("sparse_categorical_crossentropy")?; graph.outputs.len()]
    } else {
        compiled.losses
    };
    let optimizer = match compiled.optimizer {
        Some(o) => o,
        None => wgnn::train::optim::OptimizerSpec::by_name("adam")?,
    };
    let tg = wgnn::train::TrainGraph::new(graph)?;
    let spec = wgnn::gpu::train::StepSpec {
        losses: &losses,
        loss_weights: &compiled.loss_weights,
        optimizer: Some(&optimizer),
    };
    wgnn::gpu::train::describe_train_plan(&tg, &spec, batch, adapter)
}

/// Turns an .npy array into the model's input form, with errors naming the file.
fn prepare(model: &Model, index: usize, path: &Path, array: NpyArray) -> Result<PreparedInput> {
    let named = |e: Error| match e {
        Error::Input(m) => Error::Input(format!("{}: {m}", path.display())),
        other => other,
    };
    let graph = model.graph();
    let dtype = graph
        .inputs
        .get(index)
        .map(|p| graph.value(p.value).dtype)
        .ok_or_else(|| {
            Error::Usage(format!(
                "{}: the model has {} input(s), this is input {}",
                path.display(),
                graph.inputs.len(),
                index + 1
            ))
        })?;
    match (dtype, array) {
        (DType::Ids, NpyArray::Int(ids)) => {
            let ids = ids.into_dimensionality::<ndarray::Ix2>().map_err(|_| {
                Error::Input(format!("{}: token ids must be 2-D (N, T)", path.display()))
            })?;
            model.prepare_ids_for(index, ids.view()).map_err(named)
        }
        (_, NpyArray::Float(x)) => model.prepare_input(index, x.view()).map_err(named),
        (DType::Ids, NpyArray::Float64(x)) => {
            // Check integrality in float64, before any rounding to float32.
            if let Some(v) = x
                .iter()
                .find(|v| !v.is_finite() || v.fract() != 0.0 || v.abs() > 9.0e15)
            {
                return Err(Error::Input(format!(
                    "{}: token ids must be integers, found {v}",
                    path.display()
                )));
            }
            let ids = x
                .mapv(|v| v as i64)
                .into_dimensionality::<ndarray::Ix2>()
                .map_err(|_| {
                    Error::Input(format!("{}: token ids must be 2-D (N, T)", path.display()))
                })?;
            model.prepare_ids_for(index, ids.view()).map_err(named)
        }
        (_, NpyArray::Float64(x)) => model
            .prepare_input(index, x.mapv(|v| v as f32).view())
            .map_err(named),
        (_, NpyArray::Int(_)) => Err(Error::Input(format!(
            "{}: expected float32 input, found an integer array",
            path.display()
        ))),
    }
}

/// Runs prepared batches (one per model input) in chunks of `batch_size`, concatenating each
/// output's parts.
fn run_batched(
    model: &Model,
    inputs: &[PreparedInput],
    backend: Backend,
    batch_size: usize,
) -> Result<Vec<ArrayD<f32>>> {
    let n = wgnn::input::common_batch(inputs)?;
    let size = batch_size.max(1);
    let outputs = model.graph().outputs.len();
    let mut parts: Vec<Vec<ArrayD<f32>>> = vec![Vec::new(); outputs];
    let mut start = 0;
    while start < n {
        let end = (start + size).min(n);
        let chunk: Vec<PreparedInput> = inputs.iter().map(|x| x.slice(start, end)).collect();
        for (all, part) in parts.iter_mut().zip(model.run_all(&chunk, backend)?) {
            all.push(part);
        }
        start = end;
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(k, p)| {
            if p.is_empty() {
                return Ok(ArrayD::zeros(model.output_dim_of(k, 0)));
            }
            let views: Vec<_> = p.iter().map(|a| a.view()).collect();
            ndarray::concatenate(Axis(0), &views)
                .map_err(|e| Error::Input(format!("concatenating outputs: {e}")))
        })
        .collect()
}

fn predict(args: PredictArgs) -> Result<()> {
    let backend = args.device.backend()?;
    let model = args.model.load()?;
    let graph = model.graph();
    if args.inputs.len() != graph.inputs.len() {
        let names: Vec<&str> = graph.inputs.iter().map(|p| p.name.as_str()).collect();
        return Err(Error::Usage(format!(
            "the model takes {} input(s) ({}), {} .npy file(s) given",
            names.len(),
            names.join(", "),
            args.inputs.len()
        )));
    }
    if let Some(a) = &args.device.adapter {
        if backend != Backend::Cpu {
            model.with_gpu(Some(a), |_| Ok(()))?;
        }
    }
    let mut inputs = Vec::with_capacity(args.inputs.len());
    for (index, path) in args.inputs.iter().enumerate() {
        let array = wgnn::npy::read(path)?;
        inputs.push(prepare(&model, index, path, array)?);
    }
    let outs = run_batched(&model, &inputs, backend, args.batch_size)?;
    if let [out] = outs.as_slice() {
        wgnn::npy::write_f32(&args.output, out)?;
        eprintln!(
            "wrote {} {:?} to {}",
            out.len(),
            out.shape(),
            args.output.display()
        );
        return Ok(());
    }
    // Several outputs: one .npz, an array per output named after it.
    let path = args.output.with_extension("npz");
    let named: Vec<(&str, &ArrayD<f32>)> = graph
        .outputs
        .iter()
        .map(|p| p.name.as_str())
        .zip(&outs)
        .collect();
    wgnn::npy::write_npz(&path, &named)?;
    let shapes: Vec<String> = named
        .iter()
        .map(|(n, a)| format!("{n} {:?}", a.shape()))
        .collect();
    eprintln!("wrote {} to {}", shapes.join(", "), path.display());
    Ok(())
}

impl EvalCommon {
    fn options(&self) -> Result<wgnn::eval::EvalOptions> {
        Ok(wgnn::eval::EvalOptions {
            backend: self.device.backend()?,
            adapter: self.device.adapter.clone(),
            batch_size: self.batch_size,
            limit: self.limit,
            progress: !self.json && wgnn::data::download::stderr_is_terminal(),
            compare: self.compare,
        })
    }

    fn downloader(&self) -> wgnn::data::Downloader {
        wgnn::data::Downloader::new(wgnn::data::DownloadOptions {
            progress: wgnn::data::download::stderr_is_terminal(),
            force: false,
        })
    }
}

/// Prints an evaluation: a readable report, or with `json` one JSON object on the last line.
fn print_outcome(
    model: &Model,
    dataset: &str,
    common: &EvalCommon,
    outcome: &wgnn::eval::EvalOutcome,
) -> Result<()> {
    if let Some(path) = &common.save_probs {
        wgnn::npy::write_f32(path, &outcome.probabilities.clone().into_dyn())?;
    }
    if common.json {
        let json = serde_json::json!({
            "model": model.source().display().to_string(),
            "dataset": dataset,
            "n": outcome.n,
            "accuracy": outcome.accuracy,
            "macro_f1": outcome.macro_f1,
            "items_per_s": outcome.items_per_s,
            "seconds": outcome.seconds,
            "backend": outcome.backend,
            "adapter": outcome.adapter,
            "per_class": outcome.report.classes,
            "macro_avg": outcome.report.macro_avg,
            "weighted_avg": outcome.report.weighted_avg,
            "confusion": outcome.report.confusion,
            "compare": outcome.compare,
        });
        println!("{json}");
        return Ok(());
    }
    println!("model:    {}", model.source().display());
    println!("dataset:  {dataset}, {} items", outcome.n);
    println!("backend:  {} ({})", outcome.backend, outcome.adapter);
    println!(
        "accuracy: {:.4}   macro-F1: {:.4}",
        outcome.accuracy, outcome.macro_f1
    );
    println!(
        "speed:    {:.1} items/s ({:.2} s in the model)",
        outcome.items_per_s, outcome.seconds
    );
    if let Some(c) = &outcome.compare {
        println!(
            "compare:  argmax agrees with the CPU on {}/{}; max |gpu - cpu| = {:.3e}",
            c.argmax_agree, c.n, c.max_abs_diff
        );
    }
    println!();
    print!("{}", outcome.report.to_table());
    Ok(())
}

fn eval_cifar10(args: EvalCifarArgs) -> Result<()> {
    let common = &args.common;
    let opts = common.options()?;
    let data = match wgnn::data::locate_cifar10(common.data.as_deref()) {
        Ok(d) => d,
        Err(_) if common.download => {
            let root = wgnn::data::DataRoot::resolve(common.data.as_deref())?;
            common
                .downloader()
                .cifar10(&root.path, &wgnn::data::RemoteFile::cifar10())?
        }
        Err(e) => return Err(e),
    };
    let model = args.model.load()?;
    let outcome = wgnn::eval::eval_cifar10(&model, &data, &opts)?;
    print_outcome(&model, "cifar10 test", common, &outcome)
}

fn eval_nusax(args: EvalNusaxArgs) -> Result<()> {
    let common = &args.common;
    let opts = common.options()?;
    let split: wgnn::data::nusax::Split = args.split.parse()?;
    let data = match wgnn::data::locate_nusax(common.data.as_deref()) {
        Ok(d) if d.path(split).is_file() => d,
        Ok(_) | Err(_) if common.download => {
            let root = wgnn::data::DataRoot::resolve(common.data.as_deref())?;
            common
                .downloader()
                .nusax(&root.path, wgnn::data::download::NUSAX_BASE_URL)?
        }
        Ok(d) => d,
        Err(e) => return Err(e),
    };
    let model = args.model.load()?;
    let tokenizer = load_tokenizer(args.tokenizer.as_deref())?;
    let examples = data.load(split, args.labels.as_deref())?;
    let outcome = wgnn::eval::eval_nusax(&model, &examples, tokenizer.as_ref(), &opts)?;
    print_outcome(
        &model,
        &format!("nusax {}", split.file_name()),
        common,
        &outcome,
    )
}

/// Loads an image as a (1, 32, 32, 3) batch of pixels/255, resizing other sizes.
fn load_image(path: &Path, size: (u32, u32)) -> Result<ndarray::Array4<f32>> {
    let img =
        image::open(path).map_err(|e| Error::format(path, format!("cannot read image: {e}")))?;
    let rgb = img.to_rgb8();
    let rgb = if rgb.dimensions() != size {
        eprintln!(
            "note: {} is {}x{}, resized to {}x{}",
            path.display(),
            rgb.width(),
            rgb.height(),
            size.0,
            size.1
        );
        image::imageops::resize(&rgb, size.0, size.1, image::imageops::FilterType::Triangle)
    } else {
        rgb
    };
    let (w, h) = (size.0 as usize, size.1 as usize);
    Ok(ndarray::Array4::from_shape_fn(
        (1, h, w, 3),
        |(_, y, x, c)| rgb.get_pixel(x as u32, y as u32)[c] as f32 / 255.0,
    ))
}

fn classify(args: ClassifyArgs) -> Result<()> {
    let backend = args.device.backend()?;
    let model = args.model.load()?;
    let shape = &model.graph().single_input()?.shape;
    if shape.len() != 3 || shape[2] != 3 {
        return Err(Error::Input(format!(
            "{}: classify needs a model taking (N, H, W, 3) RGB images, this one takes {:?}",
            model.source().display(),
            shape
        )));
    }
    let names: Vec<String> = args.classes.unwrap_or_else(|| {
        wgnn::data::cifar10::CLASS_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    for path in &args.images {
        let x = load_image(path, (shape[1] as u32, shape[0] as u32))?;
        let probs = model.predict(x.into_dyn().view(), backend)?;
        let row: Vec<f32> = probs.iter().copied().collect();
        if row.len() != names.len() {
            return Err(Error::Input(format!(
                "the model gives {} outputs but there are {} class names",
                row.len(),
                names.len()
            )));
        }
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let top: Vec<String> = order
            .iter()
            .take(3)
            .map(|&i| format!("{} {:.4}", names[i], row[i]))
            .collect();
        println!("{}: {}", path.display(), top.join(", "));
    }
    Ok(())
}

fn sentiment(args: SentimentArgs) -> Result<()> {
    let backend = args.device.backend()?;
    let model = args.model.load()?;
    let tokenizer = load_tokenizer(args.tokenizer.as_deref())?;
    let sentences: Vec<String> = if args.sentences.is_empty() {
        use std::io::BufRead;
        std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| Error::io(Path::new("<stdin>"), e))?
    } else {
        args.sentences
    };
    let labels: Vec<String> = args.labels.unwrap_or_else(nusax_labels);
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let input = wgnn::eval::texts_to_input(&model, tokenizer.as_ref(), &texts)?;
    let probs = model.run(&input, backend)?;
    let probs = probs
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|_| Error::Input("the model's output is not (N, classes)".into()))?;
    if probs.ncols() != labels.len() {
        return Err(Error::Input(format!(
            "the model gives {} outputs but there are {} labels",
            probs.ncols(),
            labels.len()
        )));
    }
    for (text, row) in texts.iter().zip(probs.rows()) {
        let best = wgnn::metrics::argmax_rows(row.insert_axis(Axis(0)))[0];
        let parts: Vec<String> = labels
            .iter()
            .zip(row.iter())
            .map(|(l, p)| format!("{l}={p:.4}"))
            .collect();
        println!("{}\t{}\t{}", labels[best], parts.join(" "), text);
    }
    Ok(())
}

fn tokenizer_fit(args: TokenizerFitArgs) -> Result<()> {
    let labels = nusax_labels();
    let examples = wgnn::data::nusax::read_csv(&args.csv, &labels)?.texts;
    let options = wgnn::text::TokenizerOptions {
        oov_token: args.oov,
        num_words: args.num_words,
        ..Default::default()
    };
    let mut tokenizer = wgnn::text::Tokenizer::new(options);
    tokenizer.fit_on_texts(&examples);
    tokenizer.save(&args.output)?;
    eprintln!(
        "fitted on {} texts: {} words; wrote {}",
        examples.len(),
        tokenizer.vocabulary_size(),
        args.output.display()
    );
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    let model = args.model.load()?;
    let eval_opts = wgnn::eval::EvalOptions {
        backend: args.device.backend()?,
        adapter: args.device.adapter.clone(),
        ..Default::default()
    };
    let (backend, adapter) = wgnn::eval::resolve_backend(&model, &eval_opts)?;
    let opts = wgnn::bench::BenchOptions {
        backend,
        batch_size: args.batch_size,
        iters: args.iters,
        warmup: args.warmup,
        latency_runs: args.latency_runs,
        profile: args.profile,
    };
    if args.profile && (args.train || backend != Backend::Gpu) {
        return Err(Error::Usage(
            "--profile times the GPU's dispatches of inference: use it with --backend gpu, without --train".into(),
        ));
    }
    if args.train {
        let backend = match backend {
            Backend::Gpu => wgnn::train::TrainBackend::Gpu {
                adapter: args.device.adapter.clone(),
            },
            _ => wgnn::train::TrainBackend::Cpu,
        };
        let report = wgnn::bench::run_train(&model, backend, &opts)?;
        if args.json {
            let json = serde_json::to_string(&report)
                .map_err(|e| Error::Usage(format!("cannot serialize the report: {e}")))?;
            println!("{json}");
            return Ok(());
        }
        println!("model:      {}", report.model);
        println!("backend:    {} ({})", report.backend, report.adapter);
        println!(
            "training, batch {}: {:.2} steps/s, {:.1} items/s, {:.2} GFLOP/s ({:.4} s per step, {} steps; {} with {})",
            report.batch_size,
            report.steps_per_s,
            report.items_per_s,
            report.gflops,
            report.step_s,
            report.steps,
            report.loss,
            report.optimizer
        );
        return Ok(());
    }
    let report = wgnn::bench::run(&model, &adapter, &opts)?;
    if args.json {
        let json = serde_json::to_string(&report)
            .map_err(|e| Error::Usage(format!("cannot serialize the report: {e}")))?;
        println!("{json}");
        return Ok(());
    }
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3} ms"));
    println!("model:      {}", report.model);
    println!("backend:    {} ({})", report.backend, report.adapter);
    println!(
        "batch {}:  {:.1} items/s, {:.2} GFLOP/s ({:.4} s per batch, {} iterations)",
        report.batch_size, report.items_per_s, report.gflops, report.batch_s, report.iters
    );
    println!(
        "batch 1:    latency p50 {}, p90 {}, p99 {}",
        ms(report.latency_ms_p50),
        ms(report.latency_ms_p90),
        ms(report.latency_ms_p99)
    );
    println!(
        "FLOPs/item: {} ({:.4} GFLOP); peak RSS {}",
        report.flops_per_item,
        report.flops_per_item as f64 / 1e9,
        report
            .peak_rss_mb
            .map_or("-".to_string(), |m| format!("{m:.0} MiB"))
    );
    if let Some(profile) = &report.profile {
        print_profile(profile, report.batch_s);
    }
    Ok(())
}

fn load_tokenizer(path: Option<&Path>) -> Result<Option<wgnn::text::Tokenizer>> {
    path.map(wgnn::text::Tokenizer::load).transpose()
}

/// The seed report's label order: neutral, positive, negative.
fn nusax_labels() -> Vec<String> {
    wgnn::data::nusax::DEFAULT_LABELS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `wgnn bench --profile`'s table: each dispatch's GPU time and share, then the total against
/// the measured wall time per batch.
fn print_profile(profile: &[wgnn::gpu::DispatchTime], batch_s: f64) {
    let total: f64 = profile.iter().map(|d| d.ms).sum();
    let batch = profile.first().map_or(0, |d| d.batch);
    println!(
        "GPU time per dispatch, batch {batch} (least of {} runs, timestamp queries):",
        wgnn::bench::PROFILE_RUNS
    );
    println!(
        "{:<28} {:<16} {:>18} {:>10} {:>7}",
        "layer", "kernel", "grid", "ms", "share"
    );
    for d in profile {
        let [x, y, z] = d.grid;
        println!(
            "{:<28} {:<16} {:>18} {:>10.4} {:>6.1}%",
            d.layer,
            d.kernel,
            format!("{x}x{y}x{z}"),
            d.ms,
            if total > 0.0 {
                100.0 * d.ms / total
            } else {
                0.0
            }
        );
    }
    println!(
        "total {total:.4} ms GPU in {} dispatch ops; {:.4} ms wall per batch",
        profile.len(),
        batch_s * 1e3
    );
}
