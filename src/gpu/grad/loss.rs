//! A training loss on the GPU: the gradient w.r.t. the prediction that seeds the backward
//! pass, and the batch's loss as one f32, as `train::loss::Loss::value_and_grad` computes
//! them (every kind, the output or its softmax / sigmoid's logits, label smoothing,
//! from_logits, both reductions, the per-row mask).
//!
//! Buffers: `pred` and `dpred` (rows, cols) f32, distinct; `target` f32 (rows, cols), or for
//! sparse categorical cross-entropy one class index per row as an f32 (the CPU's targets);
//! `mask` u32 per row, a row counting where it is not 0 (the token ids a sequence mask comes
//! from, or 0/1 words); `loss_out[loss_index]` gets the loss (before the loss weight, as
//! `value_and_grad` returns it; the gradient is scaled by the weight).
//!
//! Two or three dispatches: [count the unmasked rows,] each row's loss and gradient (one
//! thread per row, the row's arithmetic in the CPU's order), the sum of the row losses
//! (strided f32 partial sums then a tree in one workgroup; the CPU sums in f64, so the value
//! differs in the last bits, well within 1e-6 relative for batches of thousands of rows).

// Called by the training plan, which is not wired in yet.
use crate::error::{Error, Result};
use crate::gpu::kernels::{Kernel, LINEAR_THREADS};
use crate::gpu::plan::BufRef;
use crate::train::loss::{Loss, LossKind, Prediction, Reduction};

use super::{linear_workgroups, model_word, Emit};

/// Keras's `backend.epsilon()`, as train::loss clips probabilities with it.
const EPSILON: f32 = 1e-7;

/// Appends the loss's dispatches: the gradient of `loss` (times `weight`) w.r.t. `pred` into
/// `dpred`, and its value into `loss_out[loss_index]`. `rows` is the number of rows of the last
/// axis (`pred.len() / cols`); targets must have passed `Loss::check_targets` on the CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) fn loss_forward_backward(
    e: &mut dyn Emit,
    loss: &Loss,
    what: Prediction,
    rows: usize,
    cols: usize,
    pred: BufRef,
    target: BufRef,
    mask: Option<BufRef>,
    weight: f32,
    dpred: BufRef,
    loss_out: BufRef,
    loss_index: usize,
) -> Result<()> {
    let who = format!("loss '{}'", loss.name());
    if cols == 0 {
        return Err(Error::Internal(format!("{who}: a prediction of width 0")));
    }
    if rows == 0 {
        return Ok(());
    }
    let limits = e.limits();
    let bytes = 4 * (rows as u64) * (cols as u64);
    if bytes > limits.max_binding_bytes {
        return Err(Error::Gpu(format!(
            "{who}: the prediction takes {bytes} bytes, more than one buffer binding allows ({})",
            limits.max_binding_bytes
        )));
    }
    let rows32 = model_word(&who, "rows", rows)?;
    let cols32 = model_word(&who, "columns", cols)?;
    model_word(&who, "prediction", rows * cols)?;
    let kind = match loss.kind {
        LossKind::MeanSquaredError => 0,
        LossKind::MeanAbsoluteError => 1,
        LossKind::BinaryCrossentropy => 2,
        LossKind::CategoricalCrossentropy => 3,
        LossKind::SparseCategoricalCrossentropy => 4,
    };
    let logits = what == Prediction::Logits || loss.from_logits;
    // The divisor: the row count, 1 for a sum, or the unmasked rows counted on the GPU.
    let count = mask.is_some() && loss.reduction == Reduction::SumOverBatchSize;
    let divisor = match loss.reduction {
        Reduction::SumOverBatchSize => rows as f32,
        Reduction::Sum => 1.0,
    };
    let params = vec![
        kind,
        u32::from(logits),
        rows32,
        cols32,
        loss.label_smoothing.to_bits(),
        weight.to_bits(),
        EPSILON.to_bits(),
        (1.0 - EPSILON).to_bits(),
        u32::from(mask.is_some()),
        u32::from(count),
        divisor.to_bits(),
        model_word(&who, "loss index", loss_index)?,
    ];
    let row_loss = e.scratch(usize::MAX, "loss per row", rows + 1);
    let buffers = vec![
        pred,
        target,
        mask.unwrap_or(BufRef::Dummy),
        dpred,
        row_loss,
        loss_out,
    ];
    if count {
        e.dispatch_model(
            &who,
            Kernel::LossCount,
            buffers.clone(),
            params.clone(),
            1,
            format!("unmasked rows of {rows}"),
        )?;
    }
    e.dispatch_model(
        &who,
        Kernel::LossRows,
        buffers.clone(),
        params.clone(),
        linear_workgroups(rows, LINEAR_THREADS),
        format!(
            "{}{} of {rows}x{cols} and its gradient",
            loss.name(),
            if logits { " from logits" } else { "" }
        ),
    )?;
    e.dispatch_model(
        &who,
        Kernel::LossReduce,
        buffers,
        params,
        1,
        format!("the mean of {rows} row losses"),
    )?;
    e.release(row_loss);
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::*;
    use crate::gpu::grad::test_emit::TestEmit;
    use crate::gpu::testing::runner;
    use crate::train::Rng;

    fn loss(kind: LossKind, from_logits: bool, smooth: f32, reduction: Reduction) -> Loss {
        let mut l = Loss::new(kind);
        l.from_logits = from_logits;
        l.label_smoothing = smooth;
        l.reduction = reduction;
        l
    }

    /// Predictions and targets of the shape and kind `loss` and `what` take; probabilities
    /// include values outside Keras's clip range so the clipped branches run too.
    fn data(
        loss: &Loss,
        what: Prediction,
        rows: usize,
        cols: usize,
        rng: &mut Rng,
    ) -> (Vec<f32>, Vec<f32>) {
        let n = rows * cols;
        let logits = what == Prediction::Logits || loss.from_logits;
        let pred: Vec<f32> = match loss.kind {
            LossKind::MeanSquaredError | LossKind::MeanAbsoluteError => {
                (0..n).map(|_| rng.normal()).collect()
            }
            _ if logits => (0..n).map(|_| rng.normal() * 3.0).collect(),
            _ => (0..n)
                .map(|i| match i % 17 {
                    3 => 0.0,
                    5 => 1.0,
                    _ => rng.uniform(),
                })
                .collect(),
        };
        let target: Vec<f32> = match loss.kind {
            LossKind::MeanSquaredError | LossKind::MeanAbsoluteError => {
                (0..n).map(|_| rng.normal()).collect()
            }
            LossKind::BinaryCrossentropy => (0..n).map(|_| rng.below(2) as f32).collect(),
            LossKind::CategoricalCrossentropy => {
                let mut t = vec![0f32; n];
                for r in 0..rows {
                    t[r * cols + rng.below(cols)] = 1.0;
                }
                t
            }
            LossKind::SparseCategoricalCrossentropy => {
                (0..rows).map(|_| rng.below(cols) as f32).collect()
            }
        };
        (pred, target)
    }

    /// Every kind and prediction form, smoothing, from_logits and both reductions, 1 and 33
    /// rows of 1 and 10 columns and 600 of 3, with and without a mask (and all rows masked), against
    /// `Loss::value_and_grad`: the gradient (times the weight) and the value.
    #[test]
    fn losses_match_the_cpu() {
        let Some(mut r) = runner() else { return };
        use LossKind::*;
        use Prediction::{Logits, Output};
        let mean = Reduction::SumOverBatchSize;
        let mut cases = vec![
            (loss(MeanSquaredError, false, 0.0, mean), Output),
            (loss(MeanSquaredError, false, 0.0, Reduction::Sum), Output),
            (loss(MeanAbsoluteError, false, 0.0, mean), Output),
        ];
        for smooth in [0.0, 0.1] {
            for kind in [BinaryCrossentropy, CategoricalCrossentropy] {
                cases.push((loss(kind, false, smooth, mean), Output));
                cases.push((loss(kind, false, smooth, mean), Logits));
                cases.push((loss(kind, true, smooth, mean), Output));
            }
        }
        cases.push((
            loss(SparseCategoricalCrossentropy, false, 0.0, mean),
            Output,
        ));
        cases.push((
            loss(SparseCategoricalCrossentropy, false, 0.0, mean),
            Logits,
        ));
        cases.push((
            loss(SparseCategoricalCrossentropy, true, 0.0, Reduction::Sum),
            Output,
        ));
        cases.push((
            loss(CategoricalCrossentropy, false, 0.1, Reduction::Sum),
            Logits,
        ));
        let mut rng = Rng::new(11);
        let mut worst = 0f64;
        for (l, what) in &cases {
            // 600 rows: more than the reduction's 256 threads.
            for (rows, cols) in [(1, 1), (1, 10), (33, 1), (33, 10), (600, 3)] {
                for masking in 0..3 {
                    // 0: no mask; 1: every third row masked; 2: all rows masked.
                    let mask: Option<Vec<bool>> = match masking {
                        0 => None,
                        1 => Some((0..rows).map(|i| i % 3 != 1 || rows == 1).collect()),
                        _ => Some(vec![false; rows]),
                    };
                    let weight = if masking == 1 { 0.5 } else { 1.0 };
                    let (pred, target) = data(l, *what, rows, cols, &mut rng);
                    let shape = [rows, cols];
                    let p = ArrayD::from_shape_vec(IxDyn(&shape), pred.clone()).unwrap();
                    let tshape: &[usize] = if l.kind == SparseCategoricalCrossentropy {
                        &shape[..1]
                    } else {
                        &shape
                    };
                    let t = ArrayD::from_shape_vec(IxDyn(tshape), target.clone()).unwrap();
                    l.check_targets(&shape, &t).unwrap();
                    let (want, mut grad) = l.value_and_grad(&p, *what, &t, mask.as_deref());
                    grad.mapv_inplace(|v| v * weight);

                    // Ids as a mask: 0 drops the row.
                    let ids: Vec<f32> = mask
                        .iter()
                        .flatten()
                        .enumerate()
                        .map(|(i, &k)| f32::from_bits(if k { i as u32 + 1 } else { 0 }))
                        .collect();
                    let mut buffers = vec![pred, target, vec![0.0; rows * cols], vec![0.0; 2]];
                    if mask.is_some() {
                        buffers.push(ids);
                    }
                    let mut e = TestEmit::new(r.limits, buffers.len());
                    loss_forward_backward(
                        &mut e,
                        l,
                        *what,
                        rows,
                        cols,
                        BufRef::Input(0),
                        BufRef::Input(1),
                        mask.is_some().then_some(BufRef::Input(4)),
                        weight,
                        BufRef::Input(2),
                        BufRef::Input(3),
                        1,
                    )
                    .unwrap();
                    let out = e.run(&mut r, &buffers).unwrap();
                    let name = format!(
                        "{}{} {what:?} smooth {} {:?}, {rows}x{cols}, mask {masking}",
                        l.name(),
                        if l.from_logits { " from_logits" } else { "" },
                        l.label_smoothing,
                        l.reduction
                    );
                    for (i, (&g, &w)) in out[2].iter().zip(grad.iter()).enumerate() {
                        // A zero-sum probability row is NaN on both.
                        if g.is_nan() && w.is_nan() {
                            continue;
                        }
                        assert!(
                            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{name}: gradient[{i}]: GPU {g}, CPU {w}"
                        );
                        worst = worst.max(f64::from((g - w).abs() / (1.0 + w.abs())));
                    }
                    let got = f64::from(out[3][1]);
                    assert!(
                        (got.is_nan() && want.is_nan())
                            || (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{name}: loss GPU {got}, CPU {want}"
                    );
                    assert_eq!(out[3][0], 0.0, "{name}: only loss_out[1] is written");
                    if !want.is_nan() {
                        worst = worst.max((got - want).abs() / (1.0 + want.abs()));
                    }
                }
            }
        }
        eprintln!("{} cases: worst relative error {worst:e}", cases.len() * 15);
    }
}
