//! Classification metrics with scikit-learn's semantics: accuracy, per-class precision, recall and
//! F1 (`zero_division=0`), macro averages over a fixed number of classes, and the confusion matrix
//! (rows = true class, columns = predicted class).

use ndarray::{ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Index of the largest value in each row (the first one on ties, as NumPy's `argmax`).
/// A NaN never wins over a number, so a row of NaN picks 0.
pub fn argmax_rows(probs: ArrayView2<f32>) -> Vec<usize> {
    probs
        .axis_iter(Axis(0))
        .map(|row| {
            let mut best = 0;
            let mut best_value = f32::NEG_INFINITY;
            for (i, &v) in row.iter().enumerate() {
                if v > best_value {
                    best = i;
                    best_value = v;
                }
            }
            best
        })
        .collect()
}

/// Fraction of predictions equal to the label; 0 for no samples.
pub fn accuracy(labels: &[usize], predictions: &[usize]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let correct = labels
        .iter()
        .zip(predictions)
        .filter(|(label, prediction)| label == prediction)
        .count();
    correct as f64 / labels.len() as f64
}

/// Counts of (true, predicted) pairs: `matrix[true][predicted]`, `num_classes` square.
pub fn confusion_matrix(
    labels: &[usize],
    predictions: &[usize],
    num_classes: usize,
) -> Result<Vec<Vec<usize>>> {
    check_inputs(labels, predictions, num_classes)?;
    let mut matrix = vec![vec![0usize; num_classes]; num_classes];
    for (&label, &prediction) in labels.iter().zip(predictions) {
        // check_inputs proved both are < num_classes.
        matrix[label][prediction] += 1;
    }
    Ok(matrix)
}

fn check_inputs(labels: &[usize], predictions: &[usize], num_classes: usize) -> Result<()> {
    if labels.len() != predictions.len() {
        return Err(Error::Input(format!(
            "metrics: {} labels but {} predictions",
            labels.len(),
            predictions.len()
        )));
    }
    if num_classes == 0 {
        return Err(Error::Input("metrics: number of classes is 0".into()));
    }
    let out_of_range = |values: &[usize], what: &str| -> Result<()> {
        match values.iter().position(|&v| v >= num_classes) {
            Some(row) => Err(Error::Input(format!(
                "metrics: {what} {} at row {row} is not a class in 0..{num_classes}",
                values[row]
            ))),
            None => Ok(()),
        }
    };
    out_of_range(labels, "label")?;
    out_of_range(predictions, "prediction")
}

/// `numerator / denominator`, or 0 when the denominator is 0 (sklearn's `zero_division=0`).
fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Class name (or its index as text when no names were given).
    pub name: String,
    /// tp / (tp + fp), 0 when nothing was predicted as this class.
    pub precision: f64,
    /// tp / (tp + fn), 0 when the class has no samples.
    pub recall: f64,
    /// 2 tp / (2 tp + fp + fn), 0 when that is 0 / 0 (sklearn's formula).
    pub f1: f64,
    /// Number of samples whose true label is this class.
    pub support: usize,
}

/// Unweighted (macro) or support-weighted means of the per-class scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AveragedMetrics {
    /// Mean precision.
    pub precision: f64,
    /// Mean recall.
    pub recall: f64,
    /// Mean F1.
    pub f1: f64,
}

/// Everything `wgnn eval` reports: overall accuracy, per-class scores, averages, confusion matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// Number of samples scored.
    pub samples: usize,
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Macro-F1: the unweighted mean of the per-class F1 over all `classes` (absent ones count as 0).
    pub macro_f1: f64,
    /// Unweighted means over all classes.
    pub macro_avg: AveragedMetrics,
    /// Means weighted by each class's support.
    pub weighted_avg: AveragedMetrics,
    /// One entry per class, in class-index order.
    pub classes: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

impl ClassificationReport {
    /// Scores `predictions` against `labels` over `class_names.len()` classes.
    pub fn new(
        labels: &[usize],
        predictions: &[usize],
        class_names: &[String],
    ) -> Result<ClassificationReport> {
        let num_classes = class_names.len();
        let confusion = confusion_matrix(labels, predictions, num_classes)?;
        let classes: Vec<ClassMetrics> = (0..num_classes)
            .map(|class| {
                let tp = confusion[class][class];
                let support: usize = confusion[class].iter().sum();
                let predicted: usize = confusion.iter().map(|row| row[class]).sum();
                let fp = predicted - tp;
                let fn_ = support - tp;
                ClassMetrics {
                    name: class_names[class].clone(),
                    precision: ratio(tp, predicted),
                    recall: ratio(tp, support),
                    f1: ratio(2 * tp, 2 * tp + fp + fn_),
                    support,
                }
            })
            .collect();
        let macro_avg = average(&classes, |_| 1.0);
        let total = labels.len() as f64;
        let weighted_avg = if labels.is_empty() {
            AveragedMetrics {
                precision: 0.0,
                recall: 0.0,
                f1: 0.0,
            }
        } else {
            average(&classes, |c| c.support as f64 * num_classes as f64 / total)
        };
        Ok(ClassificationReport {
            samples: labels.len(),
            accuracy: accuracy(labels, predictions),
            macro_f1: macro_avg.f1,
            macro_avg,
            weighted_avg,
            classes,
            confusion,
        })
    }

    /// Like [`ClassificationReport::new`], with classes named `0`, `1`, ... `num_classes - 1`.
    pub fn unnamed(
        labels: &[usize],
        predictions: &[usize],
        num_classes: usize,
    ) -> Result<ClassificationReport> {
        let names: Vec<String> = (0..num_classes).map(|i| i.to_string()).collect();
        ClassificationReport::new(labels, predictions, &names)
    }

    /// Scores class probabilities (N, classes): each prediction is the row's argmax.
    pub fn from_probabilities(
        labels: &[usize],
        probabilities: ArrayView2<f32>,
        class_names: &[String],
    ) -> Result<ClassificationReport> {
        if probabilities.ncols() != class_names.len() {
            return Err(Error::Input(format!(
                "metrics: predictions have {} columns but there are {} class names",
                probabilities.ncols(),
                class_names.len()
            )));
        }
        ClassificationReport::new(labels, &argmax_rows(probabilities), class_names)
    }

    /// A plain-text table in the layout of sklearn's `classification_report`, followed by the
    /// confusion matrix with class names on both axes.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let name_width = self
            .classes
            .iter()
            .map(|c| c.name.chars().count())
            .chain(["weighted avg".len()])
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>name_width$}  {:>9}  {:>9}  {:>9}  {:>9}",
            "", "precision", "recall", "f1-score", "support"
        );
        let _ = writeln!(out);
        for c in &self.classes {
            let _ = writeln!(
                out,
                "{:>name_width$}  {:>9.4}  {:>9.4}  {:>9.4}  {:>9}",
                c.name, c.precision, c.recall, c.f1, c.support
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:>name_width$}  {:>9}  {:>9}  {:>9.4}  {:>9}",
            "accuracy", "", "", self.accuracy, self.samples
        );
        for (label, avg) in [
            ("macro avg", &self.macro_avg),
            ("weighted avg", &self.weighted_avg),
        ] {
            let _ = writeln!(
                out,
                "{:>name_width$}  {:>9.4}  {:>9.4}  {:>9.4}  {:>9}",
                label, avg.precision, avg.recall, avg.f1, self.samples
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "confusion matrix (rows = true, columns = predicted):");
        let cell_width = self
            .classes
            .iter()
            .map(|c| c.name.chars().count())
            .chain(self.confusion.iter().flatten().map(|n| n.to_string().len()))
            .max()
            .unwrap_or(1);
        let _ = write!(out, "{:>name_width$}", "");
        for c in &self.classes {
            let _ = write!(out, "  {:>cell_width$}", c.name);
        }
        let _ = writeln!(out);
        for (c, row) in self.classes.iter().zip(&self.confusion) {
            let _ = write!(out, "{:>name_width$}", c.name);
            for n in row {
                let _ = write!(out, "  {n:>cell_width$}");
            }
            let _ = writeln!(out);
        }
        out
    }
}

/// Weighted mean of the per-class scores; `weight` returns each class's weight times the class
/// count, so that a weight of 1 for every class gives the plain mean.
fn average(classes: &[ClassMetrics], weight: impl Fn(&ClassMetrics) -> f64) -> AveragedMetrics {
    let n = classes.len().max(1) as f64;
    let mean = |score: fn(&ClassMetrics) -> f64| -> f64 {
        classes.iter().map(|c| weight(c) * score(c)).sum::<f64>() / n
    };
    AveragedMetrics {
        precision: mean(|c| c.precision),
        recall: mean(|c| c.recall),
        f1: mean(|c| c.f1),
    }
}

/// Macro-F1 over `num_classes` classes (sklearn `f1_score(average="macro", labels=range(n),
/// zero_division=0)`).
pub fn macro_f1(labels: &[usize], predictions: &[usize], num_classes: usize) -> Result<f64> {
    Ok(ClassificationReport::unnamed(labels, predictions, num_classes)?.macro_f1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn argmax_takes_the_first_maximum() {
        let probs = array![[0.1f32, 0.7, 0.2], [0.5, 0.5, 0.0], [f32::NAN, 0.2, 0.1]];
        assert_eq!(argmax_rows(probs.view()), vec![1, 0, 1]);
    }

    #[test]
    fn weighted_average_weights_by_support() {
        // Class 0: support 3, f1 = 2*2/(4+0+1) = 0.8; class 1: support 1, f1 = 2*1/(2+1+0) = 2/3.
        let r = ClassificationReport::unnamed(&[0, 0, 0, 1], &[0, 0, 1, 1], 2).unwrap();
        let expected = (3.0 * 0.8 + 2.0 / 3.0) / 4.0;
        assert!((r.weighted_avg.f1 - expected).abs() < 1e-12);
    }
}
