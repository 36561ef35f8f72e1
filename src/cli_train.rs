//! `wgnn train`: Keras's `fit` on the CPU reference path or the GPU, from the command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use ndarray::{ArrayD, Axis, Ix2};

use wgnn::graph::{DType, Graph, ParamStore};
use wgnn::npy::NpyArray;
use wgnn::train::compile::Compiled;
use wgnn::train::optim::{Optimizer, OptimizerSpec};
use wgnn::train::train_metrics::TrainMetrics;
use wgnn::train::{
    EpochLog, Loss, Observer, Shuffle, TrainBackend, TrainConfig, TrainData, Trainer,
};
use wgnn::{Backend, Error, Model, PreparedInput, Result};

#[derive(Args)]
pub struct TrainArgs {
    /// A .keras file (its weights are the start), a model JSON with --weights, or a model JSON
    /// alone (wgnn initializes it, seeded by --seed).
    model: PathBuf,
    /// Starting weights for a model JSON: .weights.h5 or .npz of `model.get_weights()`.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Where the trained model goes (.keras, or .weights.h5 for the weights alone).
    #[arg(short, long)]
    output: PathBuf,
    /// Inputs as .npy (floats or token ids), one per model input, in its input order.
    #[arg(long)]
    x: Vec<PathBuf>,
    /// Targets as .npy (integer labels or one-hot / float targets), one per model output.
    #[arg(long)]
    y: Vec<PathBuf>,
    /// A dataset instead of --x/--y: cifar10 (the training batches present) or nusax (with
    /// --tokenizer unless the model has TextVectorization).
    #[arg(long)]
    dataset: Option<String>,
    /// Data folder (holding cifar10/ and nusax/); default env WGNN_DATA, else the cache.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Download the dataset into the cache first if it is missing.
    #[arg(long)]
    download: bool,
    /// Keras `Tokenizer.to_json()` file for --dataset nusax.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Only the first N training items of --dataset.
    #[arg(long)]
    limit: Option<usize>,
    /// Overrides the compile config's loss (a Keras name: sparse_categorical_crossentropy, mse, ...).
    #[arg(long)]
    loss: Option<String>,
    /// Overrides the compile config's optimizer (sgd, adam, adamw, rmsprop, adagrad) with
    /// Keras's defaults.
    #[arg(long)]
    optimizer: Option<String>,
    #[arg(long)]
    learning_rate: Option<f32>,
    /// Overrides the compile config's metrics (comma-separated Keras names, e.g. accuracy).
    #[arg(long, value_delimiter = ',')]
    metrics: Option<Vec<String>>,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Keras's default is 32.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Batches in file order (x[0:b], x[b:2b], ...; a short last batch kept), as Keras's
    /// shuffle=False. Without it, each epoch is shuffled with --seed.
    #[arg(long)]
    no_shuffle: bool,
    /// Seeds the shuffle, dropout and (for a model without weights) the initializers.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The last fraction of the rows is the validation data (before shuffling), as Keras.
    #[arg(long)]
    validation_split: Option<f64>,
    #[arg(long)]
    validation_x: Vec<PathBuf>,
    #[arg(long)]
    validation_y: Vec<PathBuf>,
    /// cpu (the reference path), gpu, or auto (a hardware GPU if there is one, else the CPU).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// GPU adapter name (substring); default env WGNN_ADAPTER, else the best adapter.
    #[arg(long)]
    adapter: Option<String>,
    /// Saves the optimizer's variables too, so that Keras resumes where wgnn stopped.
    #[arg(long)]
    save_optimizer: bool,
    /// Saves the model to --output after every N epochs (the last whole epoch survives a crash).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Every step's loss, one JSON object per line.
    #[arg(long)]
    log_steps: Option<PathBuf>,
    /// One JSON object on the last line of stdout: history, epochs, steps, items/s, backend.
    #[arg(long)]
    json: bool,
    /// Draws loss and the first metric per epoch, training and validation, as a PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

pub fn train(args: TrainArgs) -> Result<()> {
    let backend = match args.backend.parse::<Backend>()? {
        Backend::Cpu => TrainBackend::Cpu,
        Backend::Gpu => TrainBackend::Gpu {
            adapter: args.adapter.clone(),
        },
        Backend::Auto => match wgnn::gpu::auto_adapter_is_software(args.adapter.as_deref()) {
            Some(name) => {
                eprintln!(
                    "warning: the only GPU adapter is a software one ({name}); training on the CPU (--backend gpu trains on it)"
                );
                TrainBackend::Cpu
            }
            None => TrainBackend::Gpu {
                adapter: args.adapter.clone(),
            },
        },
    };
    let auto = args.backend.eq_ignore_ascii_case("auto");
    let model = load_model(&args)?;
    let graph = model.graph();
    let (losses, loss_weights, optimizer, metrics) = compile_settings(&args, graph, &model)?;
    let mut data = load_data(&args, &model)?;
    let validation = match (&args.validation_split, args.validation_x.is_empty()) {
        (Some(_), false) => {
            return Err(Error::Usage(
                "give --validation-split or --validation-x/--validation-y, not both".into(),
            ))
        }
        (Some(f), true) => {
            let (train, val) = data.split_validation(*f)?;
            data = train;
            Some(val)
        }
        (None, false) => Some(read_xy(&model, &args.validation_x, &args.validation_y)?),
        (None, true) => None,
    };
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        shuffle: if args.no_shuffle {
            Shuffle::None
        } else {
            Shuffle::Seeded(args.seed)
        },
        seed: args.seed,
        losses,
        loss_weights,
        optimizer,
        metrics,
    };
    let mut trainer = match Trainer::on(graph, config.clone(), backend) {
        Ok(t) => t,
        // auto falls back to the CPU when there is no adapter.
        Err(Error::Gpu(msg)) if auto && wgnn::gpu::is_no_adapter(&msg) => {
            eprintln!("warning: {msg}; training on the CPU instead");
            Trainer::new(graph, config)?
        }
        Err(e) => return Err(e),
    };
    let adapter = trainer.gpu_adapter();
    let mut observer = CliObserver {
        model: graph.clone(),
        output: args.output.clone(),
        checkpoint_every: args.checkpoint_every,
        save_optimizer: args.save_optimizer,
        bar: None,
        quiet: args.json,
        steps_log: args.log_steps.as_ref().map(|_| String::new()),
        epochs: args.epochs,
    };
    let started = Instant::now();
    let fitted = trainer.fit(&data, validation.as_ref(), &mut observer);
    if let (Some(path), Some(log)) = (&args.log_steps, &observer.steps_log) {
        wgnn::npy::write_atomically(path, log.as_bytes())?;
    }
    let history = fitted?;
    if let Some(bar) = observer.bar.take() {
        bar.finish_and_clear();
    }
    save(
        &observer.model,
        trainer.params(),
        &args.output,
        args.save_optimizer.then_some(&trainer.optimizer),
    )?;
    if let Some(path) = &args.plot {
        wgnn::train::plot::plot_history(&history, path)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let items: usize = history.epochs.iter().map(|e| e.items).sum();
    if args.json {
        let mut h = serde_json::Map::new();
        for (key, values) in history.keras_history() {
            h.insert(key, values.into());
        }
        let out = serde_json::json!({
            "history": h,
            "epochs": history.epochs.len(),
            "steps": history.steps,
            "items_per_s": items as f64 / seconds.max(1e-9),
            "seconds": seconds,
            "epoch_seconds": history.epochs.iter().map(|e| e.seconds).collect::<Vec<_>>(),
            "backend": if adapter.is_some() { "gpu" } else { "cpu" },
            "adapter": adapter.clone().unwrap_or_else(wgnn::cpu::simd::describe),
            "output": args.output.display().to_string(),
        });
        println!("{out}");
    } else {
        println!(
            "saved {} ({} epochs, {:.1} s)",
            args.output.display(),
            history.epochs.len(),
            seconds
        );
    }
    Ok(())
}

/// The model with its starting weights: from the file, from --weights, or (a model JSON alone,
/// or a `.keras` file without `model.weights.h5`) initialized from its config, seeded by --seed.
fn load_model(args: &TrainArgs) -> Result<Model> {
    if let Some(w) = &args.weights {
        return Model::load_with_weights(&args.model, w);
    }
    if has_no_weights(&args.model)? {
        Model::load_initialized(&args.model, args.seed)
    } else {
        Model::load(&args.model)
    }
}

/// Is `path` a model JSON, or a `.keras` zip without `model.weights.h5`? (Anything else —
/// a `.keras` with weights, a legacy HDF5 model — is left to `Model::load` to read or refuse.)
fn has_no_weights(path: &Path) -> Result<bool> {
    let mut head = [0u8; 64];
    let read = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map_err(|e| Error::io(path, e))?;
    let head = &head[..read];
    if head.starts_with(b"PK") {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let zip = zip::ZipArchive::new(file)
            .map_err(|e| Error::format(path, format!("not a readable .keras zip: {e}")))?;
        return Ok(zip.index_for_name("model.weights.h5").is_none());
    }
    Ok(head
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{'))
}

/// Loss, optimizer and metrics: the command line's where given, else the model's compile
/// config; neither is an error.
fn compile_settings(
    args: &TrainArgs,
    graph: &Graph,
    model: &Model,
) -> Result<(Vec<Loss>, Vec<f32>, OptimizerSpec, TrainMetrics)> {
    let compiled = Compiled::from_graph(graph, model.source())?;
    let source = model.source().display().to_string();
    let losses = match &args.loss {
        Some(name) => vec![Loss::by_name(name)?; graph.outputs.len()],
        None if !compiled.losses.is_empty() => compiled.losses,
        None => {
            return Err(Error::Usage(format!(
                "{source} has no compile config with a loss: pass --loss (e.g. sparse_categorical_crossentropy)"
            )))
        }
    };
    let mut optimizer = match (&args.optimizer, compiled.optimizer) {
        (Some(name), _) => OptimizerSpec::by_name(name)?,
        (None, Some(spec)) => spec,
        (None, None) => {
            return Err(Error::Usage(format!(
                "{source} has no compile config with an optimizer: pass --optimizer (e.g. adam)"
            )))
        }
    };
    if let Some(lr) = args.learning_rate {
        optimizer = optimizer.with_learning_rate(lr);
    }
    let metrics = match &args.metrics {
        Some(names) => {
            let outputs: Vec<String> = graph.outputs.iter().map(|p| p.name.clone()).collect();
            TrainMetrics::from_names(names, &outputs)?
        }
        None => compiled.metrics,
    };
    Ok((losses, compiled.loss_weights, optimizer, metrics))
}

fn load_data(args: &TrainArgs, model: &Model) -> Result<TrainData> {
    match args.dataset.as_deref() {
        None => {
            if args.x.is_empty() || args.y.is_empty() {
                return Err(Error::Usage(
                    "give the data: --x X.npy --y Y.npy, or --dataset cifar10|nusax".into(),
                ));
            }
            read_xy(model, &args.x, &args.y)
        }
        Some("cifar10") => {
            let data = match wgnn::data::locate_cifar10(args.data.as_deref()) {
                Ok(d) => d,
                Err(_) if args.download => {
                    let root = wgnn::data::DataRoot::resolve(args.data.as_deref())?;
                    wgnn::data::Downloader::new(wgnn::data::DownloadOptions {
                        progress: wgnn::data::download::stderr_is_terminal(),
                        force: false,
                    })
                    .cifar10(&root.path, &wgnn::data::RemoteFile::cifar10())?
                }
                Err(e) => return Err(e),
            };
            let batch = data.load(wgnn::data::cifar10::Split::Train, args.limit)?;
            let labels = ArrayD::from_shape_vec(
                ndarray::IxDyn(&[batch.len()]),
                batch.labels.iter().map(|&l| l as f32).collect(),
            )
            .map_err(|e| Error::Internal(e.to_string()))?;
            let x = model.prepare_input(0, batch.images.into_dyn().view())?;
            Ok(TrainData {
                inputs: vec![x],
                targets: vec![labels],
            })
        }
        Some("nusax") => {
            let data = wgnn::data::locate_nusax(args.data.as_deref())?;
            let examples = data.load(wgnn::data::nusax::Split::Train, None)?;
            let n = args.limit.map_or(examples.len(), |l| l.min(examples.len()));
            let tokenizer = args
                .tokenizer
                .as_deref()
                .map(wgnn::text::Tokenizer::load)
                .transpose()?;
            let texts: Vec<&str> = examples.texts[..n].iter().map(String::as_str).collect();
            let x = wgnn::eval::texts_to_input(model, tokenizer.as_ref(), &texts)?;
            let labels = ArrayD::from_shape_vec(
                ndarray::IxDyn(&[n]),
                examples.labels[..n].iter().map(|&l| l as f32).collect(),
            )
            .map_err(|e| Error::Internal(e.to_string()))?;
            Ok(TrainData {
                inputs: vec![x],
                targets: vec![labels],
            })
        }
        Some(other) => Err(Error::Usage(format!(
            "unknown --dataset '{other}' (cifar10 or nusax)"
        ))),
    }
}

/// `--x` arrays (prepared as the model's inputs: floats, or token ids checked against the
/// vocabulary) and `--y` arrays as float targets.
fn read_xy(model: &Model, xs: &[PathBuf], ys: &[PathBuf]) -> Result<TrainData> {
    let graph = model.graph();
    if xs.len() != graph.inputs.len() {
        return Err(Error::Usage(format!(
            "the model has {} input(s), got {} --x file(s)",
            graph.inputs.len(),
            xs.len()
        )));
    }
    if ys.len() != graph.outputs.len() {
        return Err(Error::Usage(format!(
            "the model has {} output(s), got {} --y file(s)",
            graph.outputs.len(),
            ys.len()
        )));
    }
    let mut inputs = Vec::new();
    for (i, path) in xs.iter().enumerate() {
        let array = wgnn::npy::read(path)?;
        let prepared = if graph.input_info(i).dtype == DType::Ids {
            let ids = match array {
                NpyArray::Int(a) => a,
                NpyArray::Float(a) => float_ids(path, a.mapv(|v| v as f64))?,
                NpyArray::Float64(a) => float_ids(path, a)?,
            };
            let ids = ids
                .into_dimensionality::<Ix2>()
                .map_err(|_| Error::format(path, "token ids must be a 2-D (N, T) array"))?;
            model.prepare_ids_for(i, ids.view())
        } else {
            let x = to_f32(array);
            if let Some((at, bad)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                let row = at / (x.len() / x.len_of(Axis(0)).max(1)).max(1);
                return Err(Error::format(
                    path,
                    format!("input value {bad} (row {row}) is not finite"),
                ));
            }
            model.prepare_input(i, x.view())
        };
        inputs.push(prepared.map_err(|e| Error::format(path, e.to_string()))?);
    }
    let mut targets = Vec::new();
    for path in ys {
        let y = to_f32(wgnn::npy::read(path)?);
        if let Some(bad) = y.iter().find(|v| !v.is_finite()) {
            return Err(Error::format(
                path,
                format!("target value {bad} is not finite"),
            ));
        }
        targets.push(y);
    }
    let n = inputs.first().map_or(0, PreparedInput::batch);
    for (path, y) in ys.iter().zip(&targets) {
        if y.len_of(Axis(0)) != n {
            return Err(Error::format(
                path,
                format!(
                    "{} rows of targets for {n} rows of inputs",
                    y.len_of(Axis(0))
                ),
            ));
        }
    }
    Ok(TrainData { inputs, targets })
}

fn to_f32(a: NpyArray) -> ArrayD<f32> {
    match a {
        NpyArray::Float(x) => x,
        NpyArray::Float64(x) => x.mapv(|v| v as f32),
        NpyArray::Int(x) => x.mapv(|v| v as f32),
    }
}

fn float_ids(path: &Path, a: ArrayD<f64>) -> Result<ArrayD<i64>> {
    if let Some(bad) = a.iter().find(|v| v.fract() != 0.0 || !v.is_finite()) {
        return Err(Error::format(
            path,
            format!("token id {bad} is not an integer"),
        ));
    }
    Ok(a.mapv(|v| v as i64))
}

/// The model with the trained weights, saved whole or not at all.
fn save(
    model: &Graph,
    params: &ParamStore,
    path: &Path,
    optimizer: Option<&Optimizer>,
) -> Result<()> {
    let mut graph = model.clone();
    graph.params = params.clone();
    let vars = optimizer.map(Optimizer::keras_variables);
    wgnn::keras::save::save(path, &graph, vars.as_deref())
}

/// A float as JSON writes it (null for NaN and the infinities, which JSON lacks).
fn json_number(v: f64) -> String {
    serde_json::Value::from(v).to_string()
}

struct CliObserver {
    model: Graph,
    output: PathBuf,
    checkpoint_every: Option<usize>,
    save_optimizer: bool,
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    steps_log: Option<String>,
    epochs: usize,
}

impl Observer for CliObserver {
    fn on_step(
        &mut self,
        epoch: usize,
        step: usize,
        steps: usize,
        loss: f64,
        output_losses: &[(String, f64)],
    ) -> Result<()> {
        if let Some(log) = &mut self.steps_log {
            log.push_str(&format!(
                "{{\"epoch\": {}, \"step\": {}, \"loss\": {}",
                epoch + 1,
                step + 1,
                json_number(loss)
            ));
            for (name, v) in output_losses {
                let key = serde_json::Value::from(name.as_str());
                log.push_str(&format!(", {key}: {}", json_number(*v)));
            }
            log.push_str("}\n");
        }
        if !self.quiet && std::io::stderr().is_terminal() {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = indicatif::ProgressBar::new(steps as u64);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {pos}/{len} {msg}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                bar
            });
            bar.set_prefix(format!("epoch {}/{}", epoch + 1, self.epochs));
            bar.set_position(step as u64 + 1);
            bar.set_message(format!("loss {loss:.4}"));
        }
        Ok(())
    }

    fn on_epoch(&mut self, log: &EpochLog, graph: &Graph, optimizer: &Optimizer) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.quiet {
            let mut line = format!(
                "epoch {}/{}: loss {:.6}",
                log.epoch + 1,
                self.epochs,
                log.loss
            );
            for (name, v) in &log.output_losses {
                line.push_str(&format!(" {name} {v:.6}"));
            }
            for (name, v) in &log.metrics {
                line.push_str(&format!(" {name} {v:.4}"));
            }
            if let Some(v) = log.val_loss {
                line.push_str(&format!(" val_loss {v:.6}"));
            }
            for (name, v) in &log.val_output_losses {
                line.push_str(&format!(" val_{name} {v:.6}"));
            }
            for (name, v) in &log.val_metrics {
                line.push_str(&format!(" val_{name} {v:.4}"));
            }
            line.push_str(&format!(
                " ({:.1} s, {:.0} items/s)",
                log.seconds,
                log.items as f64 / log.seconds.max(1e-9)
            ));
            eprintln!("{line}");
        }
        if let Some(every) = self.checkpoint_every {
            if every > 0 && (log.epoch + 1).is_multiple_of(every) {
                save(
                    &self.model,
                    &graph.params,
                    &self.output,
                    self.save_optimizer.then_some(optimizer),
                )?;
            }
        }
        Ok(())
    }
}
