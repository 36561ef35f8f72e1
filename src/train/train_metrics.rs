//! The metrics `compile(metrics=[...])` reports while training, exact to Keras 3: each batch's
//! per-sample values (Keras's metric functions, in float32) accumulate into a running total and
//! count as Keras's `Mean` does (weighted by batch size, or by sample weights for
//! `weighted_metrics`), and the epoch value is total / count.
//!
//! "accuracy" / "acc" resolve from the shapes of the first batch, as Keras's `get_metric`
//! does: a prediction with one column is binary, labels of lower rank (or one column against
//! several) are sparse categorical, anything else categorical.

use std::path::Path;

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Zip};
use serde_json::Value;

use crate::error::{Error, Result};

/// Keras's `backend.epsilon()`.
const EPSILON: f32 = 1e-7;

/// A metric as compile names it, before "accuracy" is resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSpec {
    /// The name Keras reports: the string given, or the object's `name`.
    pub name: String,
    pub kind: MetricKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricKind {
    /// "accuracy" / "acc": one of the three accuracies below, by the shapes.
    AutoAccuracy,
    /// `keras.metrics.Accuracy`: how often y_pred equals y_true exactly.
    Accuracy,
    BinaryAccuracy {
        threshold: f32,
    },
    CategoricalAccuracy,
    SparseCategoricalAccuracy,
    MeanSquaredError,
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanSquaredLogarithmicError,
    /// sqrt of the running mean of squared errors (not a mean of per-batch roots).
    RootMeanSquaredError,
}

/// Class names (and the snake_case and short aliases Keras's `metrics.get` accepts).
const BY_NAME: [(&str, &[&str], MetricKind); 9] = [
    ("Accuracy", &[], MetricKind::Accuracy),
    (
        "BinaryAccuracy",
        &["binary_accuracy"],
        MetricKind::BinaryAccuracy { threshold: 0.5 },
    ),
    (
        "CategoricalAccuracy",
        &["categorical_accuracy"],
        MetricKind::CategoricalAccuracy,
    ),
    (
        "SparseCategoricalAccuracy",
        &["sparse_categorical_accuracy"],
        MetricKind::SparseCategoricalAccuracy,
    ),
    (
        "MeanSquaredError",
        &["mean_squared_error", "mse", "MSE"],
        MetricKind::MeanSquaredError,
    ),
    (
        "MeanAbsoluteError",
        &["mean_absolute_error", "mae", "MAE"],
        MetricKind::MeanAbsoluteError,
    ),
    (
        "MeanAbsolutePercentageError",
        &["mean_absolute_percentage_error", "mape", "MAPE"],
        MetricKind::MeanAbsolutePercentageError,
    ),
    (
        "MeanSquaredLogarithmicError",
        &["mean_squared_logarithmic_error", "msle", "MSLE"],
        MetricKind::MeanSquaredLogarithmicError,
    ),
    (
        "RootMeanSquaredError",
        &["root_mean_squared_error"],
        MetricKind::RootMeanSquaredError,
    ),
];

/// The metric functions of keras.metrics that serialize as {"class_name": "function"}.
const FUNCTIONS: [(&str, MetricKind); 7] = [
    (
        "binary_accuracy",
        MetricKind::BinaryAccuracy { threshold: 0.5 },
    ),
    ("categorical_accuracy", MetricKind::CategoricalAccuracy),
    (
        "sparse_categorical_accuracy",
        MetricKind::SparseCategoricalAccuracy,
    ),
    ("mean_squared_error", MetricKind::MeanSquaredError),
    ("mean_absolute_error", MetricKind::MeanAbsoluteError),
    (
        "mean_absolute_percentage_error",
        MetricKind::MeanAbsolutePercentageError,
    ),
    (
        "mean_squared_logarithmic_error",
        MetricKind::MeanSquaredLogarithmicError,
    ),
];

fn known_names() -> String {
    let mut names = vec!["accuracy", "acc"];
    for (class, aliases, _) in BY_NAME {
        names.push(class);
        names.extend_from_slice(aliases);
    }
    names.join(", ")
}

/// Keras's default `name` of each metric class.
fn default_name(class: &str) -> String {
    let mut out = String::new();
    for (i, ch) in class.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

impl MetricSpec {
    /// Parses one entry of compile's `metrics`: a name, or a serialized metric object.
    pub fn parse(value: &Value) -> Result<Self, String> {
        match value {
            Value::String(s) => {
                if matches!(s.to_ascii_lowercase().as_str(), "accuracy" | "acc") {
                    return Ok(MetricSpec {
                        name: s.clone(),
                        kind: MetricKind::AutoAccuracy,
                    });
                }
                BY_NAME
                    .iter()
                    .find(|(class, aliases, _)| class == s || aliases.contains(&s.as_str()))
                    .map(|&(_, _, kind)| MetricSpec {
                        name: s.clone(),
                        kind,
                    })
                    .ok_or_else(|| {
                        format!(
                            "metric '{s}' is not supported (supported: {})",
                            known_names()
                        )
                    })
            }
            Value::Object(obj) if obj.get("class_name") == Some(&Value::from("function")) => {
                // A metric function (keras.metrics.mean_squared_error): Keras wraps it in a
                // MeanMetricWrapper named after the function.
                let name = obj
                    .get("config")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                FUNCTIONS
                    .iter()
                    .find(|(f, _)| *f == name)
                    .map(|&(f, kind)| MetricSpec {
                        name: f.to_string(),
                        kind,
                    })
                    .ok_or_else(|| {
                        let known: Vec<&str> = FUNCTIONS.iter().map(|(f, _)| *f).collect();
                        format!(
                            "metric function '{name}' is not supported (supported: {})",
                            known.join(", ")
                        )
                    })
            }
            Value::Object(obj) => {
                let class = obj
                    .get("class_name")
                    .and_then(Value::as_str)
                    .ok_or("a serialized metric needs a class_name")?;
                if let Some(module) = obj.get("module").and_then(Value::as_str) {
                    if module != "keras.metrics" {
                        return Err(format!(
                            "metric {class} from module '{module}' is not a Keras metric"
                        ));
                    }
                }
                let &(class, _, mut kind) = BY_NAME
                    .iter()
                    .find(|(c, aliases, _)| *c == class || aliases.contains(&class))
                    .ok_or_else(|| {
                        format!(
                            "metric {class} is not supported (supported: {})",
                            known_names()
                        )
                    })?;
                let empty = serde_json::Map::new();
                let config = match obj.get("config") {
                    Some(Value::Object(c)) => c,
                    None | Some(Value::Null) => &empty,
                    Some(other) => {
                        return Err(format!(
                            "metric {class}: config must be an object, found {other}"
                        ))
                    }
                };
                for (k, v) in config {
                    match (k.as_str(), &mut kind) {
                        ("name", _) => {}
                        ("dtype", _) => match v {
                            Value::Null => {}
                            Value::String(d) if d == "float32" => {}
                            other => {
                                return Err(format!(
                                    "metric {class}: dtype {other} is not supported (only float32)"
                                ))
                            }
                        },
                        ("threshold", MetricKind::BinaryAccuracy { threshold }) => {
                            *threshold = v.as_f64().ok_or_else(|| {
                                format!("metric {class}: threshold must be a number, found {v}")
                            })? as f32;
                        }
                        (other, _) => {
                            return Err(format!("metric {class}: unknown field '{other}'"))
                        }
                    }
                }
                let name = match config.get("name") {
                    Some(Value::String(n)) => n.clone(),
                    None | Some(Value::Null) => default_name(class),
                    Some(other) => {
                        return Err(format!(
                            "metric {class}: name must be a string, found {other}"
                        ))
                    }
                };
                Ok(MetricSpec { name, kind })
            }
            other => Err(format!(
                "expected a metric name or a serialized metric, found {other}"
            )),
        }
    }

    /// The metric for labels and predictions of these shapes (batch axis included).
    pub fn resolve(&self, y_true_shape: &[usize], y_pred_shape: &[usize]) -> Metric {
        let kind = match self.kind {
            MetricKind::AutoAccuracy => {
                let is_binary = y_pred_shape.last() == Some(&1);
                let is_sparse = y_true_shape.len() < y_pred_shape.len()
                    || (y_true_shape.last() == Some(&1)
                        && y_pred_shape.last().is_some_and(|&d| d > 1));
                if is_binary {
                    MetricKind::BinaryAccuracy { threshold: 0.5 }
                } else if is_sparse {
                    MetricKind::SparseCategoricalAccuracy
                } else {
                    MetricKind::CategoricalAccuracy
                }
            }
            k => k,
        };
        Metric {
            name: self.name.clone(),
            kind,
            total: 0.0,
            count: 0.0,
        }
    }
}

/// A resolved metric and its running state (Keras's `Mean`: float32 total and count).
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    kind: MetricKind,
    total: f32,
    count: f32,
}

impl Metric {
    pub fn kind(&self) -> MetricKind {
        self.kind
    }

    pub fn reset(&mut self) {
        self.total = 0.0;
        self.count = 0.0;
    }

    /// The value so far: total / count (0 before any sample), rooted for RootMeanSquaredError.
    pub fn result(&self) -> f32 {
        let mean = if self.count == 0.0 {
            0.0
        } else {
            self.total / self.count
        };
        match self.kind {
            MetricKind::RootMeanSquaredError => mean.sqrt(),
            _ => mean,
        }
    }

    /// Adds one batch. `mask` is the prediction's Keras mask (time steps of a masked sequence),
    /// which every metric but RootMeanSquaredError weighs its values by; `sample_weight` is
    /// given only to weighted metrics.
    pub fn update(
        &mut self,
        y_true: ArrayViewD<f32>,
        y_pred: ArrayViewD<f32>,
        sample_weight: Option<ArrayViewD<f32>>,
        mask: Option<ArrayViewD<bool>>,
    ) -> Result<()> {
        let name = &self.name;
        let shape_error = || {
            Error::Train(format!(
                "metric '{name}': labels of shape {:?} do not fit predictions of shape {:?}",
                y_true.shape(),
                y_pred.shape()
            ))
        };
        let values = match self.kind {
            MetricKind::AutoAccuracy => {
                return Err(Error::Internal(format!("metric '{name}' was not resolved")))
            }
            MetricKind::Accuracy => {
                elementwise(y_true.view(), y_pred.view(), |t, p| (t == p) as u8 as f32)
                    .ok_or_else(shape_error)?
            }
            MetricKind::BinaryAccuracy { threshold } => {
                elementwise(y_true.view(), y_pred.view(), |t, p| {
                    let p = (p > threshold) as u8 as f32;
                    (t == p) as u8 as f32
                })
                .ok_or_else(shape_error)?
            }
            MetricKind::CategoricalAccuracy => {
                categorical_accuracy(&y_true, &y_pred).ok_or_else(shape_error)?
            }
            MetricKind::SparseCategoricalAccuracy => {
                sparse_categorical_accuracy(&y_true, &y_pred).ok_or_else(shape_error)?
            }
            MetricKind::MeanSquaredError => mean_last(
                elementwise(y_true.view(), y_pred.view(), |t, p| (t - p) * (t - p))
                    .ok_or_else(shape_error)?,
            ),
            MetricKind::MeanAbsoluteError => mean_last(
                elementwise(y_true.view(), y_pred.view(), |t, p| (t - p).abs())
                    .ok_or_else(shape_error)?,
            ),
            MetricKind::MeanAbsolutePercentageError => {
                let diff = elementwise(y_true.view(), y_pred.view(), |t, p| {
                    ((t - p) / t.abs().max(EPSILON)).abs()
                })
                .ok_or_else(shape_error)?;
                mean_last(diff).mapv(|m| 100.0 * m)
            }
            MetricKind::MeanSquaredLogarithmicError => mean_last(
                elementwise(y_true.view(), y_pred.view(), |t, p| {
                    let d = (p.max(EPSILON) + 1.0).ln() - (t.max(EPSILON) + 1.0).ln();
                    d * d
                })
                .ok_or_else(shape_error)?,
            ),
            MetricKind::RootMeanSquaredError => {
                elementwise(y_true.view(), y_pred.view(), |t, p| (p - t) * (p - t))
                    .ok_or_else(shape_error)?
            }
        };
        // MeanMetricWrapper folds the prediction's mask into the sample weights.
        let mask = match self.kind {
            MetricKind::RootMeanSquaredError => None,
            _ => mask.map(|m| m.mapv(|b| b as u8 as f32)),
        };
        let weights = match (mask, sample_weight) {
            (None, sw) => sw.map(|s| s.to_owned()),
            (Some(m), None) => Some(m),
            (Some(m), Some(sw)) => {
                let (m, sw) = squeeze_or_expand(m.view(), sw);
                let (m, sw) = co_broadcast(m.view(), sw).ok_or_else(shape_error)?;
                Some(Zip::from(&sw).and(&m).map_collect(|&s, &m| s * m))
            }
        };
        let (values, weights) = samplewise(values, weights).ok_or_else(|| {
            Error::Train(format!(
                "metric '{name}': sample weights do not fit predictions of shape {:?}",
                y_pred.shape()
            ))
        })?;
        self.total += values.sum();
        self.count += match weights {
            Some(w) => w.sum(),
            None if values.ndim() >= 1 => values.shape()[0] as f32,
            None => 1.0,
        };
        Ok(())
    }
}

/// Keras's `squeeze_or_expand_to_same_rank`: when ranks differ by one and the longer ends in
/// 1, that axis goes (or, against a rank-1 tensor, the shorter gains one).
fn squeeze_or_expand<'a, 'b>(
    a: ArrayViewD<'a, f32>,
    b: ArrayViewD<'b, f32>,
) -> (ArrayViewD<'a, f32>, ArrayViewD<'b, f32>) {
    let (ra, rb) = (a.ndim(), b.ndim());
    if ra == rb + 1 && a.shape().last() == Some(&1) {
        if rb == 1 {
            return (a, b.insert_axis(Axis(1)));
        }
        return (a.index_axis_move(Axis(ra - 1), 0), b);
    }
    if rb == ra + 1 && b.shape().last() == Some(&1) {
        if ra == 1 {
            return (a.insert_axis(Axis(1)), b);
        }
        return (a, b.index_axis_move(Axis(rb - 1), 0));
    }
    (a, b)
}

/// Both arrays broadcast to their common shape, numpy's rules (None: they do not broadcast).
fn co_broadcast(a: ArrayViewD<f32>, b: ArrayViewD<f32>) -> Option<(ArrayD<f32>, ArrayD<f32>)> {
    let n = a.ndim().max(b.ndim());
    let dim = |x: &ArrayViewD<f32>, i: usize| {
        let pad = n - x.ndim();
        if i < pad {
            1
        } else {
            x.shape()[i - pad]
        }
    };
    let mut shape = Vec::with_capacity(n);
    for i in 0..n {
        let (da, db) = (dim(&a, i), dim(&b, i));
        shape.push(match (da, db) {
            _ if da == db => da,
            (1, d) | (d, 1) => d,
            _ => return None,
        });
    }
    let a = a.broadcast(IxDyn(&shape))?.to_owned();
    let b = b.broadcast(IxDyn(&shape))?.to_owned();
    Some((a, b))
}

/// `f(y_true, y_pred)` per element after rank matching and broadcasting (None: they do not
/// broadcast).
fn elementwise(
    y_true: ArrayViewD<f32>,
    y_pred: ArrayViewD<f32>,
    f: impl Fn(f32, f32) -> f32,
) -> Option<ArrayD<f32>> {
    let (t, p) = squeeze_or_expand(y_true, y_pred);
    let (t, p) = co_broadcast(t, p)?;
    Some(Zip::from(&t).and(&p).map_collect(|&t, &p| f(t, p)))
}

/// Mean over the last axis, in float32 as TensorFlow's reduce_mean.
fn mean_last(x: ArrayD<f32>) -> ArrayD<f32> {
    let last = x.ndim() - 1;
    let n = x.shape()[last] as f32;
    x.map_axis(Axis(last), |lane| lane.iter().fold(0f32, |s, &v| s + v) / n)
}

/// Mean over every axis after the first (values already per sample stay as they are).
fn mean_trailing(x: ArrayD<f32>, from: usize) -> ArrayD<f32> {
    let mut x = x;
    while x.ndim() > from {
        x = mean_last(x);
    }
    x
}

/// Index of the first largest value along the last axis (TensorFlow's argmax).
fn argmax_last(x: &ArrayViewD<f32>) -> ArrayD<f32> {
    let last = x.ndim() - 1;
    x.map_axis(Axis(last), |lane| {
        let mut best = 0;
        for (i, &v) in lane.iter().enumerate() {
            if v > lane[best] {
                best = i;
            }
        }
        best as f32
    })
}

fn categorical_accuracy(y_true: &ArrayViewD<f32>, y_pred: &ArrayViewD<f32>) -> Option<ArrayD<f32>> {
    if y_true.ndim() == 0 || y_pred.ndim() == 0 {
        return None;
    }
    let t = argmax_last(y_true);
    let p = argmax_last(y_pred);
    let original = t.shape().to_vec();
    let rank = t.ndim();
    let t = if rank == y_pred.ndim() && rank > 0 {
        t.index_axis_move(Axis(rank - 1), 0)
    } else {
        t
    };
    let (t, p) = co_broadcast(t.view(), p.view())?;
    let matches = Zip::from(&t)
        .and(&p)
        .map_collect(|&a, &b| (a == b) as u8 as f32);
    if matches.len() == original.iter().product::<usize>() && original.len() != matches.ndim() {
        return matches.into_shape_with_order(IxDyn(&original)).ok();
    }
    Some(matches)
}

fn sparse_categorical_accuracy(
    y_true: &ArrayViewD<f32>,
    y_pred: &ArrayViewD<f32>,
) -> Option<ArrayD<f32>> {
    if y_pred.ndim() == 0 {
        return None;
    }
    let t = if y_true.ndim() == y_pred.ndim() && y_true.shape().last() == Some(&1) {
        y_true.view().index_axis_move(Axis(y_true.ndim() - 1), 0)
    } else {
        y_true.view()
    };
    let p = argmax_last(y_pred);
    let (t, p) = co_broadcast(t, p.view())?;
    let matches = Zip::from(&t)
        .and(&p)
        .map_collect(|&a, &b| (a == b) as u8 as f32);
    // Back to the labels' shape, then a trailing 1 goes: (N, 1) labels give (N,) values.
    let mut matches = if matches.len() == y_true.len() {
        matches.into_shape_with_order(IxDyn(y_true.shape())).ok()?
    } else {
        matches
    };
    if matches.ndim() > 1 && matches.shape().last() == Some(&1) {
        let last = matches.ndim() - 1;
        matches = matches.index_axis_move(Axis(last), 0);
    }
    Some(matches)
}

/// Keras's `reduce_to_samplewise_values` with mean: one value per sample (weighted when there
/// are weights) and the per-sample weights.
fn samplewise(
    values: ArrayD<f32>,
    weights: Option<ArrayD<f32>>,
) -> Option<(ArrayD<f32>, Option<ArrayD<f32>>)> {
    let Some(weights) = weights else {
        return Some((mean_trailing(values, 1), None));
    };
    let (v, w) = squeeze_or_expand(values.view(), weights.view());
    let (v, w) = (v.to_owned(), w.to_owned());
    let weight_ndim = w.ndim();
    let v = mean_trailing(v, weight_ndim.max(1));
    let w_b = w.broadcast(v.raw_dim())?.to_owned();
    let weighted = Zip::from(&v).and(&w_b).map_collect(|&v, &w| v * w);
    let w_b = if weight_ndim > 1 {
        mean_trailing(w_b, 1)
    } else {
        w_b
    };
    Some((mean_trailing(weighted, 1), Some(w_b)))
}

/// The metrics of a compile config, bound to the model's outputs, named as Keras's `fit` logs
/// them (`<output>_<metric>` with several outputs; repeats numbered; a weighted metric that
/// repeats an unweighted one is `weighted_<metric>`).
#[derive(Debug, Clone)]
pub struct TrainMetrics {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    output: usize,
    weighted: bool,
    spec: MetricSpec,
    /// Resolved on the first batch.
    metric: Option<Metric>,
    /// The name in the logs.
    log_name: String,
}

impl TrainMetrics {
    /// Reads `metrics` and `weighted_metrics` of the compile config of the model file `path`,
    /// whose outputs are named `output_names`.
    pub fn from_compile_config(
        compile_config: &Value,
        output_names: &[String],
        path: &Path,
    ) -> Result<Self> {
        let err = |m: String| Error::format(path, format!("compile_config: {m}"));
        let metrics = compile_config.get("metrics").unwrap_or(&Value::Null);
        let weighted = compile_config
            .get("weighted_metrics")
            .unwrap_or(&Value::Null);
        let mut lists = Vec::new();
        for (field, value, is_weighted) in [
            ("metrics", metrics, false),
            ("weighted_metrics", weighted, true),
        ] {
            let per_output =
                per_output(value, output_names).map_err(|m| err(format!("{field}: {m}")))?;
            lists.push((per_output, is_weighted));
        }
        Ok(Self::build(lists, output_names))
    }

    /// Metrics given by name (the command line), all on every output like a plain list is for
    /// a one-output model.
    pub fn from_names(names: &[String], output_names: &[String]) -> Result<Self> {
        let specs = names
            .iter()
            .map(|n| MetricSpec::parse(&Value::String(n.clone())).map_err(Error::Usage))
            .collect::<Result<Vec<_>>>()?;
        let per_output = (0..output_names.len().max(1))
            .map(|_| specs.clone())
            .collect();
        Ok(Self::build(vec![(per_output, false)], output_names))
    }

    fn build(lists: Vec<(Vec<Vec<MetricSpec>>, bool)>, output_names: &[String]) -> Self {
        let several = output_names.len() > 1;
        let mut entries = Vec::new();
        // CompileMetrics.result's naming: a repeat gets _1, _2 ... (the numbered names are
        // not counted themselves); a weighted repeat of a name becomes weighted_<name> first.
        let mut counters: std::collections::HashMap<String, usize> = Default::default();
        for (per_output, weighted) in lists {
            for (output, specs) in per_output.into_iter().enumerate() {
                let prefix = if several {
                    format!("{}_", output_names[output])
                } else {
                    String::new()
                };
                for spec in specs {
                    let mut name = format!("{prefix}{}", spec.name);
                    if counters.contains_key(&name) && weighted {
                        name = format!("{prefix}weighted_{}", spec.name);
                    }
                    let log_name = match counters.get_mut(&name) {
                        None => {
                            counters.insert(name.clone(), 1);
                            name
                        }
                        Some(index) => {
                            *index += 1;
                            format!("{name}_{}", *index - 1)
                        }
                    };
                    entries.push(Entry {
                        output,
                        weighted,
                        spec,
                        metric: None,
                        log_name,
                    });
                }
            }
        }
        TrainMetrics { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The names in log order (before any batch too).
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.log_name.as_str()).collect()
    }

    /// Adds one batch: labels and predictions per output, the batch's sample weights (for
    /// weighted metrics, shared by all outputs) and each prediction's mask.
    pub fn update(
        &mut self,
        y_true: &[ArrayViewD<f32>],
        y_pred: &[ArrayViewD<f32>],
        sample_weight: Option<ArrayViewD<f32>>,
        masks: &[Option<ArrayViewD<bool>>],
    ) -> Result<()> {
        for e in &mut self.entries {
            let (Some(t), Some(p)) = (y_true.get(e.output), y_pred.get(e.output)) else {
                return Err(Error::Internal(format!(
                    "metric '{}' is for output {}, the batch has {} outputs",
                    e.log_name,
                    e.output,
                    y_pred.len()
                )));
            };
            let metric = e
                .metric
                .get_or_insert_with(|| e.spec.resolve(t.shape(), p.shape()));
            let sw = if e.weighted {
                sample_weight.as_ref().map(|s| s.view())
            } else {
                None
            };
            let mask = masks
                .get(e.output)
                .and_then(|m| m.as_ref().map(|m| m.view()));
            metric.update(t.view(), p.view(), sw, mask)?;
        }
        Ok(())
    }

    /// Each metric's epoch value so far, by log name.
    pub fn results(&self) -> Vec<(String, f32)> {
        self.entries
            .iter()
            .map(|e| {
                (
                    e.log_name.clone(),
                    e.metric.as_ref().map_or(0.0, Metric::result),
                )
            })
            .collect()
    }

    /// Starts a new epoch (resolutions are kept).
    pub fn reset(&mut self) {
        self.entries
            .iter_mut()
            .filter_map(|e| e.metric.as_mut())
            .for_each(Metric::reset);
    }
}

/// A compile `metrics` value as one list per output, following Keras's `_build_metrics_set`:
/// one output takes every metric (a nested list or dict flattened); several take a list with
/// one entry per output, or a dict keyed by output names.
fn per_output(value: &Value, output_names: &[String]) -> Result<Vec<Vec<MetricSpec>>, String> {
    let n = output_names.len().max(1);
    let empty = || vec![Vec::new(); n];
    let is_empty = match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    if is_empty {
        return Ok(empty());
    }
    if !matches!(value, Value::Array(_) | Value::Object(_)) {
        return Err(format!("expected a list or a dict, found {value}"));
    }
    if n == 1 {
        let mut flat = Vec::new();
        flatten(value, &mut flat)?;
        return Ok(vec![flat]);
    }
    let mut out = empty();
    match value {
        Value::Array(items) if items.len() == n => {
            for (o, item) in items.iter().enumerate() {
                flatten(item, &mut out[o])?;
            }
        }
        Value::Object(map) if map.keys().all(|k| output_names.contains(k)) => {
            for (o, name) in output_names.iter().enumerate() {
                if let Some(item) = map.get(name) {
                    flatten(item, &mut out[o])?;
                }
            }
        }
        _ => {
            return Err(format!(
                "with {n} outputs ({}), give a list with one entry per output or a dict keyed by output name",
                output_names.join(", ")
            ))
        }
    }
    Ok(out)
}

/// Keras's `tree.flatten` of metric identifiers: lists in order, dicts by sorted key; a
/// serialized metric object (with a class_name) is one leaf.
fn flatten(value: &Value, out: &mut Vec<MetricSpec>) -> Result<(), String> {
    match value {
        Value::Null => Ok(()),
        Value::Array(items) => items.iter().try_for_each(|v| flatten(v, out)),
        Value::Object(map) if !map.contains_key("class_name") => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            keys.into_iter().try_for_each(|k| flatten(&map[k], out))
        }
        leaf => {
            out.push(MetricSpec::parse(leaf)?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_errors() {
        let s = MetricSpec::parse(&json!("ACC")).unwrap();
        assert_eq!((s.name.as_str(), s.kind), ("ACC", MetricKind::AutoAccuracy));
        let e = MetricSpec::parse(&json!("auc")).unwrap_err();
        assert!(
            e.contains("'auc'") && e.contains("sparse_categorical_accuracy"),
            "{e}"
        );
        let e = MetricSpec::parse(
            &json!({"class_name": "BinaryAccuracy", "config": {"threshold": "x"}}),
        )
        .unwrap_err();
        assert!(e.contains("threshold"), "{e}");
        let s =
            MetricSpec::parse(&json!({"class_name": "MeanAbsoluteError", "config": {}})).unwrap();
        assert_eq!(s.name, "mean_absolute_error");
    }

    #[test]
    fn several_outputs_are_prefixed_and_repeats_numbered() {
        let names = vec!["a".to_string(), "b".to_string()];
        let cc = json!({"metrics": {"a": ["mae", "mae"], "b": "accuracy"}, "weighted_metrics": {"b": ["accuracy"]}});
        let m = TrainMetrics::from_compile_config(&cc, &names, Path::new("m.keras")).unwrap();
        assert_eq!(
            m.names(),
            ["a_mae", "a_mae_1", "b_accuracy", "b_weighted_accuracy"]
        );
        let bad = json!({"metrics": ["mae", "mse", "acc"]});
        let e = TrainMetrics::from_compile_config(&bad, &names, Path::new("m.keras")).unwrap_err();
        assert!(
            e.to_string().contains("m.keras") && e.to_string().contains("one entry per output"),
            "{e}"
        );
    }
}
