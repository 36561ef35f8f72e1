//! Dataset evaluation: a model over CIFAR-10 or NusaX, scored with Keras-compatible metrics.
//! Shared by `wgnn eval`, the examples and the tests.

use std::time::{Duration, Instant};

use ndarray::{concatenate, Array2, ArrayD, Axis, Ix2};
use serde::Serialize;

use crate::data::cifar10::{Cifar10, Split as CifarSplit};
use crate::data::nusax::Examples;
use crate::error::{Error, Result};
use crate::graph::DType;
use crate::metrics::ClassificationReport;
use crate::model::{Backend, Model, PreparedInput};
use crate::text::{Side, Tokenizer};

/// How an evaluation runs.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub backend: Backend,
    /// GPU adapter name (substring), else env `WGNN_ADAPTER`, else the best one.
    pub adapter: Option<String>,
    pub batch_size: usize,
    /// Only the first N items.
    pub limit: Option<usize>,
    /// A progress bar on stderr.
    pub progress: bool,
    /// Also run the CPU path and compare (GPU runs only).
    pub compare: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            backend: Backend::Auto,
            adapter: None,
            batch_size: 256,
            limit: None,
            progress: false,
            compare: false,
        }
    }
}

/// GPU vs CPU on the same inputs.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Items whose argmax agrees.
    pub argmax_agree: usize,
    pub n: usize,
    pub max_abs_diff: f32,
}

/// The result of one evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalOutcome {
    pub n: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Items per second over the model runs alone (data loading excluded).
    pub items_per_s: f64,
    pub seconds: f64,
    /// `cpu` or `gpu`.
    pub backend: String,
    /// The GPU adapter, or `cpu`.
    pub adapter: String,
    pub report: ClassificationReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<Comparison>,
    /// (N, classes) model outputs, in input order.
    #[serde(skip)]
    pub probabilities: Array2<f32>,
}

/// `Backend::Auto` made concrete (GPU if an adapter is found), with the adapter's name.
pub fn resolve_backend(model: &Model, opts: &EvalOptions) -> Result<(Backend, String)> {
    let gpu = || model.with_gpu(opts.adapter.as_deref(), |g| Ok(g.adapter_name()));
    match opts.backend {
        Backend::Cpu => Ok((Backend::Cpu, crate::cpu::simd::describe())),
        Backend::Gpu => Ok((Backend::Gpu, gpu()?)),
        Backend::Auto => match crate::gpu::auto_adapter_is_software(opts.adapter.as_deref()) {
            Some(name) => {
                eprintln!(
                    "warning: the only GPU adapter is a software one ({name}); running on the CPU (--backend gpu runs on it)"
                );
                Ok((Backend::Cpu, crate::cpu::simd::describe()))
            }
            None => match gpu() {
                Ok(name) => Ok((Backend::Gpu, name)),
                Err(Error::Gpu(msg)) if crate::gpu::is_no_adapter(&msg) => {
                    eprintln!("warning: {msg}; running on the CPU instead");
                    Ok((Backend::Cpu, crate::cpu::simd::describe()))
                }
                Err(e) => Err(e),
            },
        },
    }
}

fn progress_bar(total: usize, show: bool, unit: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:40}} {{pos}}/{{len}} {unit} [{{elapsed_precise}} < {{eta_precise}}]"
    )) {
        bar.set_style(style);
    }
    bar
}

fn to_2d(out: ArrayD<f32>) -> Result<Array2<f32>> {
    out.into_dimensionality::<Ix2>()
        .map_err(|_| Error::Input("evaluation needs a model whose output is (N, classes)".into()))
}

/// Runs one batch, timing the model alone, and (with `compare`) the CPU path beside it.
struct Runner<'a> {
    model: &'a Model,
    backend: Backend,
    compare: Option<Comparison>,
    busy: Duration,
    outputs: Vec<Array2<f32>>,
}

impl Runner<'_> {
    fn run(&mut self, input: &PreparedInput) -> Result<()> {
        let start = Instant::now();
        let out = to_2d(self.model.run(input, self.backend)?)?;
        self.busy += start.elapsed();
        if let Some(cmp) = &mut self.compare {
            let cpu = to_2d(self.model.run(input, Backend::Cpu)?)?;
            let gpu_arg = crate::metrics::argmax_rows(out.view());
            let cpu_arg = crate::metrics::argmax_rows(cpu.view());
            cmp.argmax_agree += gpu_arg.iter().zip(&cpu_arg).filter(|(a, b)| a == b).count();
            cmp.n += out.nrows();
            let diff = (&out - &cpu).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
            cmp.max_abs_diff = cmp.max_abs_diff.max(diff);
        }
        self.outputs.push(out);
        Ok(())
    }

    fn finish(
        self,
        labels: &[usize],
        class_names: &[String],
        adapter: String,
    ) -> Result<EvalOutcome> {
        let views: Vec<_> = self.outputs.iter().map(|o| o.view()).collect();
        let probabilities = if views.is_empty() {
            Array2::zeros((0, class_names.len()))
        } else {
            concatenate(Axis(0), &views).map_err(|e| Error::Input(format!("outputs: {e}")))?
        };
        let report =
            ClassificationReport::from_probabilities(labels, probabilities.view(), class_names)?;
        let seconds = self.busy.as_secs_f64();
        let n = labels.len();
        Ok(EvalOutcome {
            n,
            accuracy: report.accuracy,
            macro_f1: report.macro_f1,
            items_per_s: if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            },
            seconds,
            backend: match self.backend {
                Backend::Gpu => "gpu".into(),
                _ => "cpu".into(),
            },
            adapter,
            report,
            compare: self.compare,
            probabilities,
        })
    }
}

fn runner<'a>(model: &'a Model, opts: &EvalOptions) -> Result<(Runner<'a>, String)> {
    let (backend, adapter) = resolve_backend(model, opts)?;
    let compare = (opts.compare && backend == Backend::Gpu).then_some(Comparison {
        argmax_agree: 0,
        n: 0,
        max_abs_diff: 0.0,
    });
    Ok((
        Runner {
            model,
            backend,
            compare,
            busy: Duration::ZERO,
            outputs: Vec::new(),
        },
        adapter,
    ))
}

/// Classifies the CIFAR-10 test set, streaming `batch_size` images at a time.
pub fn eval_cifar10(model: &Model, data: &Cifar10, opts: &EvalOptions) -> Result<EvalOutcome> {
    let input = model.graph().single_input()?;
    if input.shape != [32, 32, 3] || input.dtype != DType::F32 {
        return Err(Error::Input(format!(
            "{}: a CIFAR-10 model takes (N, 32, 32, 3) float input, this one takes {:?}",
            model.source().display(),
            input.shape
        )));
    }
    let total = data.len(CifarSplit::Test)?;
    let n = opts.limit.map_or(total, |l| l.min(total));
    let (mut runner, adapter) = runner(model, opts)?;
    let bar = progress_bar(n, opts.progress, "images");
    let mut labels = Vec::with_capacity(n);
    for batch in data.batches(CifarSplit::Test, opts.batch_size.max(1), Some(n))? {
        let batch = batch?;
        let input = PreparedInput::Float(batch.images.into_dyn());
        runner.run(&input)?;
        labels.extend(batch.labels.iter().map(|&l| l as usize));
        bar.inc(input.batch() as u64);
    }
    bar.finish_and_clear();
    runner.finish(&labels, data.class_names(), adapter)
}

/// Token ids for texts: the model's own TextVectorization, else a Keras Tokenizer with
/// post-padding and post-truncation to the model's sequence length (as the seed report did).
pub fn texts_to_input(
    model: &Model,
    tokenizer: Option<&Tokenizer>,
    texts: &[&str],
) -> Result<PreparedInput> {
    let ids = match (&model.graph().text_vectorization, tokenizer) {
        (Some(tv), _) => tv.vectorize(texts),
        (None, Some(tok)) => {
            let len =
                *model.graph().single_input()?.shape.first().ok_or_else(|| {
                    Error::Input("the model's input has no sequence length".into())
                })?;
            tok.texts_to_padded(texts, len, Side::Post, Side::Post)
        }
        (None, None) => {
            return Err(Error::Usage(
                "this model has no TextVectorization layer: pass --tokenizer TOKENIZER.json".into(),
            ))
        }
    };
    model.prepare_ids(ids.view())
}

/// Classifies NusaX sentences (raw text in).
pub fn eval_nusax(
    model: &Model,
    examples: &Examples,
    tokenizer: Option<&Tokenizer>,
    opts: &EvalOptions,
) -> Result<EvalOutcome> {
    let n = opts.limit.map_or(examples.len(), |l| l.min(examples.len()));
    let texts: Vec<&str> = examples.texts[..n].iter().map(String::as_str).collect();
    let input = texts_to_input(model, tokenizer, &texts)?;
    let (mut runner, adapter) = runner(model, opts)?;
    let bar = progress_bar(n, opts.progress, "sentences");
    let size = opts.batch_size.max(1);
    let mut start = 0;
    while start < n {
        let end = (start + size).min(n);
        runner.run(&input.slice(start, end))?;
        bar.inc((end - start) as u64);
        start = end;
    }
    bar.finish_and_clear();
    runner.finish(&examples.labels[..n], &examples.label_names, adapter)
}
