//! The `wgnn` command line: wires the library together, nothing more.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ndarray::{ArrayD, Axis};

use wgnn::ir::LayerKind;
use wgnn::npy::NpyArray;
use wgnn::{Backend, Error, Model, PreparedInput, Result};

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
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    #[arg(long)]
    adapter: Option<String>,
}

#[derive(Args)]
struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input .npy: float32 (N, ...input shape), or integer token ids (N, T).
    input: PathBuf,
    /// Output .npy (float32).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// Items per batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => info(args),
        Command::Predict(args) => predict(args),
    };
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

fn shape_string(shape: &[usize]) -> String {
    let dims: Vec<String> = std::iter::once("N".to_string())
        .chain(shape.iter().map(|d| d.to_string()))
        .collect();
    format!("({})", dims.join(", "))
}

fn layer_details(kind: &LayerKind) -> String {
    match kind {
        LayerKind::Conv2d(c) => format!(
            "{}x{} /{}x{} {:?} {}",
            c.window.kernel[0],
            c.window.kernel[1],
            c.window.strides[0],
            c.window.strides[1],
            c.window.padding,
            c.activation.name()
        ),
        LayerKind::Pool2d(p) => format!(
            "{:?} {}x{} /{}x{} {:?}",
            p.op,
            p.window.kernel[0],
            p.window.kernel[1],
            p.window.strides[0],
            p.window.strides[1],
            p.window.padding
        ),
        LayerKind::Dense(d) => d.activation.name().to_string(),
        LayerKind::Activation(a) => a.name().to_string(),
        LayerKind::Embedding(e) => {
            if e.mask_zero {
                "mask_zero".into()
            } else {
                String::new()
            }
        }
        LayerKind::Recurrent(r) => {
            let mut s = format!("{:?} units={}", r.forward.kind, r.units());
            if r.backward.is_some() {
                s += &format!(" bidirectional merge={:?}", r.merge_mode);
            }
            if r.return_sequences {
                s += " return_sequences";
            }
            if r.forward.go_backwards && r.backward.is_none() {
                s += " go_backwards";
            }
            if r.masked {
                s += " masked";
            }
            s
        }
        _ => String::new(),
    }
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
    let ir = model.ir();
    println!("model: {} ({})", ir.name, model.source().display());
    println!(
        "input: {} {}",
        shape_string(&ir.input_shape),
        match ir.input_kind {
            wgnn::ir::InputKind::Float => "float32",
            wgnn::ir::InputKind::TokenIds => "token ids",
        }
    );
    if let Some(tv) = &ir.text_vectorization {
        println!(
            "text: TextVectorization '{}' vocabulary {} tokens, sequence length {:?}",
            tv.name,
            tv.vocabulary.len(),
            tv.output_sequence_length
        );
    }
    println!(
        "{:<28} {:<20} {:<20} {:>12} {:>14}  details",
        "layer", "type", "output shape", "params", "FLOPs/item"
    );
    for l in &ir.layers {
        println!(
            "{:<28} {:<20} {:<20} {:>12} {:>14}  {}",
            l.name,
            l.class,
            shape_string(&l.output_shape),
            l.param_count(),
            l.flops(),
            layer_details(&l.kind)
        );
    }
    println!(
        "total params: {}   FLOPs per item: {} ({:.3} GFLOP)",
        ir.param_count(),
        ir.flops_per_item(),
        ir.flops_per_item() as f64 / 1e9
    );
    if args.plan {
        println!();
        print!(
            "{}",
            wgnn::gpu::describe_plan(ir, args.batch_size, args.adapter.as_deref())?
        );
    }
    Ok(())
}

/// Turns an .npy array into the model's input form, with errors naming the file.
fn prepare(model: &Model, path: &Path, array: NpyArray) -> Result<PreparedInput> {
    let named = |e: Error| match e {
        Error::Input(m) => Error::Input(format!("{}: {m}", path.display())),
        other => other,
    };
    match (model.ir().input_kind, array) {
        (wgnn::ir::InputKind::TokenIds, NpyArray::Int(ids)) => {
            let ids = ids.into_dimensionality::<ndarray::Ix2>().map_err(|_| {
                Error::Input(format!("{}: token ids must be 2-D (N, T)", path.display()))
            })?;
            model.prepare_ids(ids.view()).map_err(named)
        }
        (_, NpyArray::Float(x)) => model.prepare_float(x.view()).map_err(named),
        (wgnn::ir::InputKind::Float, NpyArray::Int(_)) => Err(Error::Input(format!(
            "{}: expected float32 input, found an integer array",
            path.display()
        ))),
    }
}

/// Runs a prepared batch in chunks of `batch_size`, concatenating the outputs.
fn run_batched(
    model: &Model,
    input: &PreparedInput,
    backend: Backend,
    batch_size: usize,
) -> Result<ArrayD<f32>> {
    let n = input.batch();
    let size = batch_size.max(1);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + size).min(n);
        parts.push(model.run(&input.slice(start, end), backend)?);
        start = end;
    }
    if parts.is_empty() {
        return Ok(ArrayD::zeros(model.output_dim(0)));
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(Axis(0), &views)
        .map_err(|e| Error::Input(format!("concatenating outputs: {e}")))
}

fn predict(args: PredictArgs) -> Result<()> {
    let backend = args.device.backend()?;
    let model = args.model.load()?;
    if let Some(a) = &args.device.adapter {
        if backend != Backend::Cpu {
            model.with_gpu(Some(a), |_| Ok(()))?;
        }
    }
    let array = wgnn::npy::read(&args.input)?;
    let input = prepare(&model, &args.input, array)?;
    let out = run_batched(&model, &input, backend, args.batch_size)?;
    wgnn::npy::write_f32(&args.output, &out)?;
    eprintln!(
        "wrote {} {:?} to {}",
        out.len(),
        out.shape(),
        args.output.display()
    );
    Ok(())
}
