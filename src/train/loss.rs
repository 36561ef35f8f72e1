//! Keras 3's losses as its TensorFlow backend computes them (keras/src/losses/losses.py,
//! keras/src/backend/tensorflow/nn.py), with their gradients.
//!
//! Inside `fit` (graph mode) Keras's TF backend sees through a Softmax or Sigmoid op that feeds
//! a cross-entropy and uses its logits, with no clipping; `Loss::uses_logits_of` says which
//! activation's input the trainer should hand over instead of the output. Plain probabilities
//! are clipped to [1e-7, 1 − 1e-7] (and categorical ones renormalized) as Keras does.

use ndarray::ArrayD;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::graph::Activation;

/// Keras's `backend.epsilon()`.
const EPSILON: f32 = 1e-7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    MeanSquaredError,
    MeanAbsoluteError,
    BinaryCrossentropy,
    CategoricalCrossentropy,
    SparseCategoricalCrossentropy,
}

/// How per-item losses become the batch's loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// Sum over all per-item values divided by their count (Keras's default; "mean" too).
    SumOverBatchSize,
    Sum,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Loss {
    pub kind: LossKind,
    pub from_logits: bool,
    pub label_smoothing: f32,
    pub reduction: Reduction,
}

/// What the prediction handed to [`Loss::value_and_grad`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The model's output as it is.
    Output,
    /// The input of the output's Softmax / Sigmoid (see [`Loss::uses_logits_of`]).
    Logits,
}

const NAMES: &str = "mean_squared_error (mse), mean_absolute_error (mae), binary_crossentropy, \
                     categorical_crossentropy, sparse_categorical_crossentropy";

impl Loss {
    pub fn new(kind: LossKind) -> Loss {
        Loss {
            kind,
            from_logits: false,
            label_smoothing: 0.0,
            reduction: Reduction::SumOverBatchSize,
        }
    }

    /// A loss by Keras name: `mse`, `mean_squared_error`, `MeanSquaredError`, ...
    pub fn by_name(name: &str) -> Result<Loss> {
        let kind = match name {
            "mse" | "MSE" | "mean_squared_error" | "MeanSquaredError" => LossKind::MeanSquaredError,
            "mae" | "MAE" | "mean_absolute_error" | "MeanAbsoluteError" => {
                LossKind::MeanAbsoluteError
            }
            "binary_crossentropy" | "BinaryCrossentropy" => LossKind::BinaryCrossentropy,
            "categorical_crossentropy" | "CategoricalCrossentropy" => {
                LossKind::CategoricalCrossentropy
            }
            "sparse_categorical_crossentropy" | "SparseCategoricalCrossentropy" => {
                LossKind::SparseCategoricalCrossentropy
            }
            other => {
                return Err(Error::Train(format!(
                    "unknown loss '{other}' (wgnn trains with {NAMES})"
                )))
            }
        };
        Ok(Loss::new(kind))
    }

    /// A loss as `compile_config` serializes it: a name, or `{"class_name": ..., "config": {...}}`.
    pub fn from_keras(v: &Value) -> Result<Loss> {
        match v {
            Value::String(name) => Loss::by_name(name),
            Value::Object(o) => {
                let class = o.get("class_name").and_then(Value::as_str).ok_or_else(|| {
                    Error::Train(format!("loss: expected a name or a class_name, found {v}"))
                })?;
                let config = o.get("config");
                // A function saved by reference: {"class_name": "function", "config": "mse"}.
                if class == "function" {
                    if let Some(Value::String(name)) = config {
                        return Loss::by_name(name);
                    }
                }
                let mut loss = Loss::by_name(class)?;
                let Some(Value::Object(c)) = config else {
                    return Ok(loss);
                };
                let field = |name: &str| c.get(name).filter(|v| !v.is_null());
                let bad =
                    |name: &str, why: &str| Error::Train(format!("loss {class}: {name}: {why}"));
                if let Some(f) = field("from_logits") {
                    loss.from_logits = f
                        .as_bool()
                        .ok_or_else(|| bad("from_logits", "expected true or false"))?;
                }
                if let Some(s) = field("label_smoothing") {
                    let s = s
                        .as_f64()
                        .ok_or_else(|| bad("label_smoothing", "expected a number"))?
                        as f32;
                    if !(0.0..=1.0).contains(&s) {
                        return Err(bad("label_smoothing", "must be in [0, 1]"));
                    }
                    loss.label_smoothing = s;
                }
                if let Some(r) = field("reduction") {
                    loss.reduction = match r.as_str() {
                        Some("sum_over_batch_size") | Some("mean") | Some("auto") => {
                            Reduction::SumOverBatchSize
                        }
                        Some("sum") => Reduction::Sum,
                        _ => {
                            return Err(bad(
                                "reduction",
                                &format!("{r} is not supported (sum_over_batch_size, mean or sum)"),
                            ))
                        }
                    };
                }
                if let Some(a) = field("axis") {
                    if a.as_i64() != Some(-1) {
                        return Err(bad("axis", &format!("{a} is not supported (only -1)")));
                    }
                }
                if let Some(ic) = field("ignore_class") {
                    return Err(bad("ignore_class", &format!("{ic} is not supported")));
                }
                if loss.label_smoothing != 0.0
                    && !matches!(
                        loss.kind,
                        LossKind::BinaryCrossentropy | LossKind::CategoricalCrossentropy
                    )
                {
                    return Err(bad(
                        "label_smoothing",
                        "only the binary and categorical cross-entropies have it",
                    ));
                }
                Ok(loss)
            }
            other => Err(Error::Train(format!(
                "loss: expected a name or a serialized loss, found {other}"
            ))),
        }
    }

    /// Keras's snake_case name.
    pub fn name(&self) -> &'static str {
        match self.kind {
            LossKind::MeanSquaredError => "mean_squared_error",
            LossKind::MeanAbsoluteError => "mean_absolute_error",
            LossKind::BinaryCrossentropy => "binary_crossentropy",
            LossKind::CategoricalCrossentropy => "categorical_crossentropy",
            LossKind::SparseCategoricalCrossentropy => "sparse_categorical_crossentropy",
        }
    }

    /// Does this loss take the logits of a softmax or sigmoid output? Keras's TF backend tags
    /// every softmax and sigmoid output with its logits (`_keras_logits`) and each
    /// cross-entropy uses them when present, whichever of the two made the output: a softmax
    /// output under binary cross-entropy gets sigmoid cross-entropy of the softmax's logits.
    pub fn uses_logits_of(&self, act: Activation) -> bool {
        let ce = matches!(
            self.kind,
            LossKind::BinaryCrossentropy
                | LossKind::CategoricalCrossentropy
                | LossKind::SparseCategoricalCrossentropy
        );
        ce && matches!(act, Activation::Softmax | Activation::Sigmoid)
    }

    /// Checks that targets of `target_shape` (with the batch axis) fit an output of
    /// `output_shape` (with the batch axis), and that sparse labels are class indices.
    pub fn check_targets(
        &self,
        output_shape: &[usize],
        target: &ArrayD<f32>,
    ) -> std::result::Result<(), String> {
        let t = target.shape();
        match self.kind {
            LossKind::SparseCategoricalCrossentropy => {
                let lead = &output_shape[..output_shape.len() - 1];
                let fits = t == lead
                    || (t.len() == output_shape.len()
                        && t.last() == Some(&1)
                        && &t[..t.len() - 1] == lead);
                if !fits {
                    return Err(format!(
                        "sparse_categorical_crossentropy needs one integer label per output row: labels of shape {t:?} do not fit the output's {output_shape:?}"
                    ));
                }
                let classes = output_shape[output_shape.len() - 1];
                if let Some(bad) = target
                    .iter()
                    .find(|&&l| l < 0.0 || l.fract() != 0.0 || l as usize >= classes)
                {
                    return Err(format!(
                        "label {bad} is not a class index in 0..{classes} (the output has {classes} classes)"
                    ));
                }
                Ok(())
            }
            _ => {
                if t != output_shape {
                    let hint = if self.kind == LossKind::CategoricalCrossentropy
                        && t.len() + 1 == output_shape.len()
                    {
                        " (integer labels need sparse_categorical_crossentropy, or one-hot targets)"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "{}: targets of shape {t:?} do not match the output's {output_shape:?}{hint}",
                        self.name()
                    ));
                }
                if let Some(bad) = target.iter().find(|v| !v.is_finite()) {
                    return Err(format!("target value {bad} is not finite"));
                }
                Ok(())
            }
        }
    }

    /// The batch's loss and its gradient w.r.t. `pred` (the output, or the logits of its
    /// softmax / sigmoid when `what` is `Logits`). `pred` has the batch axis first; the
    /// targets passed `check_targets`. `mask` (one flag per row of the last axis, e.g. per
    /// timestep of a masked sequence output) weights the rows as Keras does: masked rows
    /// count 0 and the sum is divided by the unmasked count.
    pub fn value_and_grad(
        &self,
        pred: &ArrayD<f32>,
        what: Prediction,
        target: &ArrayD<f32>,
        mask: Option<&[bool]>,
    ) -> (f64, ArrayD<f32>) {
        let pred = pred.as_standard_layout();
        let width = pred.shape().last().copied().unwrap_or(1).max(1);
        let rows = pred.len() / width;
        let p = pred.as_slice().expect("standard layout");
        let target = target.as_standard_layout();
        let t = target.as_slice().expect("standard layout");
        let logits = what == Prediction::Logits || self.from_logits;
        // Per-row losses (Keras reduces the last axis first), then the reduction over rows.
        let mut grad = vec![0.0f32; p.len()];
        let mut total = 0.0f64;
        // Every loss reduces the last axis first: one value per row. Keras's mask weights
        // are total/valid on unmasked rows, so sum_over_batch_size divides by `valid`.
        let valid = mask.map_or(rows, |m| m.iter().filter(|&&k| k).count());
        let divisor = match self.reduction {
            Reduction::SumOverBatchSize => valid as f32,
            Reduction::Sum => 1.0,
        };
        let smooth = self.label_smoothing;
        for r in 0..rows {
            let pr = &p[r * width..(r + 1) * width];
            let g = &mut grad[r * width..(r + 1) * width];
            let row_loss: f32 = match self.kind {
                LossKind::MeanSquaredError => {
                    let tr = &t[r * width..(r + 1) * width];
                    let mut s = 0.0f32;
                    for j in 0..width {
                        let d = pr[j] - tr[j];
                        s += d * d;
                        g[j] = 2.0 * d / width as f32;
                    }
                    s / width as f32
                }
                LossKind::MeanAbsoluteError => {
                    let tr = &t[r * width..(r + 1) * width];
                    let mut s = 0.0f32;
                    for j in 0..width {
                        let d = pr[j] - tr[j];
                        s += d.abs();
                        // TF's gradient of |x| is sign(x), 0 at 0.
                        g[j] = if d > 0.0 {
                            1.0
                        } else if d < 0.0 {
                            -1.0
                        } else {
                            0.0
                        } / width as f32;
                    }
                    s / width as f32
                }
                LossKind::BinaryCrossentropy => {
                    let tr = &t[r * width..(r + 1) * width];
                    let mut s = 0.0f32;
                    for j in 0..width {
                        let y = tr[j] * (1.0 - smooth) + 0.5 * smooth;
                        let x = pr[j];
                        if logits {
                            // tf.nn.sigmoid_cross_entropy_with_logits.
                            s += x.max(0.0) - x * y + (-x.abs()).exp().ln_1p();
                            g[j] = (crate::cpu::activation::sigmoid(x) - y) / width as f32;
                        } else {
                            let c = x.clamp(EPSILON, 1.0 - EPSILON);
                            s += -(y * c.ln() + (1.0 - y) * (1.0 - c).ln());
                            g[j] = if x > EPSILON && x < 1.0 - EPSILON {
                                (-y / c + (1.0 - y) / (1.0 - c)) / width as f32
                            } else {
                                0.0
                            };
                        }
                    }
                    s / width as f32
                }
                LossKind::CategoricalCrossentropy => {
                    let tr = &t[r * width..(r + 1) * width];
                    let k = width as f32;
                    let y: Vec<f32> = tr
                        .iter()
                        .map(|&v| v * (1.0 - smooth) + smooth / k)
                        .collect();
                    if logits {
                        softmax_xent(pr, &y, g)
                    } else {
                        // o = p / sum(p), clipped; L = -sum y log o.
                        let sum: f32 = pr.iter().sum();
                        let mut l = 0.0f32;
                        let mut dl_do = vec![0.0f32; width];
                        for j in 0..width {
                            let o = pr[j] / sum;
                            let c = o.clamp(EPSILON, 1.0 - EPSILON);
                            l -= y[j] * c.ln();
                            if o > EPSILON && o < 1.0 - EPSILON {
                                dl_do[j] = -y[j] / c;
                            }
                        }
                        let dot: f32 = (0..width).map(|j| dl_do[j] * pr[j] / sum).sum();
                        for j in 0..width {
                            g[j] = (dl_do[j] - dot) / sum;
                        }
                        l
                    }
                }
                LossKind::SparseCategoricalCrossentropy => {
                    let label = t[r] as usize;
                    if logits {
                        let mut y = vec![0.0f32; width];
                        y[label] = 1.0;
                        softmax_xent(pr, &y, g)
                    } else {
                        // Keras: log(clip(p)) fed to sparse softmax cross-entropy, i.e.
                        // -log(c_l / sum c) with c = clip(p).
                        let c: Vec<f32> =
                            pr.iter().map(|v| v.clamp(EPSILON, 1.0 - EPSILON)).collect();
                        let sum: f32 = c.iter().sum();
                        for j in 0..width {
                            let inside = pr[j] > EPSILON && pr[j] < 1.0 - EPSILON;
                            let d = 1.0 / sum - if j == label { 1.0 / c[j] } else { 0.0 };
                            g[j] = if inside { d } else { 0.0 };
                        }
                        sum.ln() - c[label].ln()
                    }
                }
            };
            if mask.is_some_and(|m| !m[r]) {
                g.fill(0.0);
                continue;
            }
            total += row_loss as f64;
        }
        if divisor == 0.0 {
            // Keras's divide_no_nan: an all-masked batch has loss 0.
            grad.fill(0.0);
            let grad = ArrayD::from_shape_vec(pred.raw_dim(), grad).expect("same shape");
            return (0.0, grad);
        }
        grad.iter_mut().for_each(|v| *v /= divisor);
        let grad = ArrayD::from_shape_vec(pred.raw_dim(), grad).expect("same shape");
        (total / divisor as f64, grad)
    }
}

/// Softmax cross-entropy with logits `z` and (smoothed) targets `y`: the row's loss; its
/// gradient softmax(z)·Σy − y into `g`.
fn softmax_xent(z: &[f32], y: &[f32], g: &mut [f32]) -> f32 {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = z.iter().map(|&v| (v - max).exp()).sum();
    let lse = max + sum.ln();
    let ysum: f32 = y.iter().sum();
    let mut l = 0.0f32;
    for j in 0..z.len() {
        l += y[j] * (lse - z[j]);
        g[j] = (z[j] - lse).exp() * ysum - y[j];
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn arr(shape: &[usize], v: &[f32]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap()
    }

    /// The gradient of every loss against central differences of its value.
    #[test]
    fn gradients_match_finite_differences() {
        let probs = arr(&[2, 3], &[0.2, 0.5, 0.3, 0.6, 0.1, 0.3]);
        let logits = arr(&[2, 3], &[0.3, -1.2, 0.8, 2.0, 0.1, -0.4]);
        let onehot = arr(&[2, 3], &[0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        let labels = arr(&[2], &[1.0, 2.0]);
        let binary = arr(&[2, 3], &[1.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
        let real = arr(&[2, 3], &[0.1, -0.7, 1.4, 0.35, 0.9, -0.2]);
        let mut cases = vec![];
        for kind in [LossKind::MeanSquaredError, LossKind::MeanAbsoluteError] {
            cases.push((
                Loss::new(kind),
                logits.clone(),
                Prediction::Output,
                real.clone(),
            ));
        }
        for smooth in [0.0, 0.1] {
            let mut bce = Loss::new(LossKind::BinaryCrossentropy);
            bce.label_smoothing = smooth;
            cases.push((
                bce.clone(),
                probs.clone(),
                Prediction::Output,
                binary.clone(),
            ));
            cases.push((bce, logits.clone(), Prediction::Logits, binary.clone()));
            let mut cce = Loss::new(LossKind::CategoricalCrossentropy);
            cce.label_smoothing = smooth;
            cases.push((
                cce.clone(),
                probs.clone(),
                Prediction::Output,
                onehot.clone(),
            ));
            cases.push((cce, logits.clone(), Prediction::Logits, onehot.clone()));
        }
        let scce = Loss::new(LossKind::SparseCategoricalCrossentropy);
        cases.push((
            scce.clone(),
            probs.clone(),
            Prediction::Output,
            labels.clone(),
        ));
        cases.push((scce, logits.clone(), Prediction::Logits, labels.clone()));
        for (loss, pred, what, target) in cases {
            let (_, g) = loss.value_and_grad(&pred, what, &target, None);
            for i in 0..pred.len() {
                let h = 1e-3f32;
                let mut up = pred.clone();
                up.as_slice_mut().unwrap()[i] += h;
                let mut down = pred.clone();
                down.as_slice_mut().unwrap()[i] -= h;
                let fd = (loss.value_and_grad(&up, what, &target, None).0
                    - loss.value_and_grad(&down, what, &target, None).0)
                    / (2.0 * h as f64);
                let an = g.as_slice().unwrap()[i] as f64;
                assert!(
                    (fd - an).abs() <= 2e-3 * (1.0 + an.abs()),
                    "{:?} {what:?} [{i}]: fd {fd} vs {an}",
                    loss.kind
                );
            }
        }
    }

    #[test]
    fn values_match_keras() {
        // keras.losses.*(y_true, y_pred) on the docstring examples, reduced over the batch.
        let y_pred = arr(&[2, 3], &[0.05, 0.95, 0.0, 0.1, 0.8, 0.1]);
        let onehot = arr(&[2, 3], &[0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        let cce = Loss::new(LossKind::CategoricalCrossentropy);
        let (v, _) = cce.value_and_grad(&y_pred, Prediction::Output, &onehot, None);
        // Keras: [0.0513, 2.303] -> mean 1.1769392.
        assert!((v - 1.176_939).abs() < 1e-5, "{v}");
        let scce = Loss::new(LossKind::SparseCategoricalCrossentropy);
        let (v, _) =
            scce.value_and_grad(&y_pred, Prediction::Output, &arr(&[2], &[1.0, 2.0]), None);
        assert!((v - 1.176_939).abs() < 1e-5, "{v}");
    }

    #[test]
    fn parses_serialized_losses() {
        let v: Value = serde_json::json!({"module": "keras.losses", "class_name": "CategoricalCrossentropy",
            "config": {"name": "categorical_crossentropy", "reduction": "sum_over_batch_size",
                       "from_logits": true, "label_smoothing": 0.1, "axis": -1}});
        let l = Loss::from_keras(&v).unwrap();
        assert_eq!(l.kind, LossKind::CategoricalCrossentropy);
        assert!(l.from_logits);
        assert_eq!(l.label_smoothing, 0.1);
        assert!(Loss::from_keras(&Value::String("hinge".into())).is_err());
        assert_eq!(
            Loss::by_name("mse").unwrap().kind,
            LossKind::MeanSquaredError
        );
    }

    #[test]
    fn rejects_targets_that_do_not_fit() {
        let scce = Loss::new(LossKind::SparseCategoricalCrossentropy);
        assert!(scce
            .check_targets(&[2, 3], &arr(&[2], &[0.0, 3.0]))
            .is_err());
        assert!(scce.check_targets(&[2, 3], &arr(&[2], &[0.0, 2.0])).is_ok());
        assert!(scce
            .check_targets(&[2, 3], &arr(&[2, 1], &[0.0, 2.0]))
            .is_ok());
        let cce = Loss::new(LossKind::CategoricalCrossentropy);
        let e = cce
            .check_targets(&[2, 3], &arr(&[2], &[0.0, 2.0]))
            .unwrap_err();
        assert!(e.contains("sparse_categorical_crossentropy"), "{e}");
    }
}
