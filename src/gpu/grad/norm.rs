//! BatchNormalization in training on the GPU (shaders/norm_grad.wgsl), by cpu/grad/norm.rs's
//! rules: the training forward normalizes with the batch's mean and biased variance over every
//! axis but the channel axes (two passes: the mean, then the squares about it) and moves the
//! moving statistics towards them in place; the backward runs through those statistics. A frozen
//! layer (`trainable=False`, which Keras runs in inference mode even in `fit`) keeps the
//! inference forward, and its backward is the affine one on the moving statistics.
//!
//! The per-channel reductions are deterministic: fixed chunks of each channel's values summed
//! in order, then the chunks in order (no atomics).
//!
//! Binding rule (the parameter arena is one buffer): a dispatch that writes a `BufRef::Param`
//! range binds no other parameter, so each moving statistic is updated by its own dispatch, which
//! reads only the `saved` scratch.

// Called by the training plan; until it lands only the tests do.
#![cfg_attr(not(test), allow(dead_code))]

use crate::error::{Error, Result};
use crate::graph::{axis_layout, BatchNorm, Node};

use super::super::kernels::{Kernel, LINEAR_THREADS};
use super::super::plan::BufRef;
use super::conv::{check_buffer, layer_error};
use super::merge::copy_range;
use super::{linear_workgroups, word, Emit};

/// Each chunk of a channel's values is at least this long (and about √ of their count).
const MIN_CHUNK: usize = 16;

/// batch_norm_sums' modes.
const SUM_X: u32 = 0;
const SUM_SQUARES: u32 = 1;
const SUM_GRADS: u32 = 2;
/// batch_norm_grad's modes.
const GRAD_TRAINING: u32 = 0;
const GRAD_FROZEN: u32 = 1;
/// The uniform block's flags.
const HAS_GAMMA: u32 = 1;
const HAS_BETA: u32 = 2;

/// An input of `rows * channels * inner` values as the kernels see it.
struct Layout {
    rows: usize,
    channels: usize,
    inner: usize,
}

impl Layout {
    fn of(layer: &Node, bn: &BatchNorm, batch: usize, item: &[usize]) -> Result<Layout> {
        let l = axis_layout(item, &bn.axes).map_err(|m| layer_error(layer, "axis", m))?;
        Ok(Layout {
            rows: batch * l.outer,
            channels: l.reduced,
            inner: l.inner,
        })
    }

    fn values_per_channel(&self) -> usize {
        self.rows * self.inner
    }

    fn elements(&self) -> usize {
        self.rows * self.channels * self.inner
    }

    /// (values per chunk, chunks)
    fn chunks(&self) -> (usize, usize) {
        let m = self.values_per_channel();
        let chunk = ((m as f64).sqrt().ceil() as usize).max(MIN_CHUNK);
        (chunk, m.div_ceil(chunk).max(1))
    }

    /// The uniform block: rows, channels, inner, chunk, chunks, mode, epsilon, keep, take,
    /// flags, 2 words of padding.
    fn words(&self, layer: &Node, mode: u32, floats: [f32; 3], flags: u32) -> Result<Vec<u32>> {
        let (chunk, chunks) = self.chunks();
        let mut w = [self.rows, self.channels, self.inner, chunk, chunks]
            .into_iter()
            .map(|v| word(layer, "batch normalization", v))
            .collect::<Result<Vec<_>>>()?;
        w.push(mode);
        w.extend(floats.map(f32::to_bits));
        w.extend([flags, 0, 0]);
        Ok(w)
    }
}

/// The f32s of the `saved` buffer the training forward fills for the backward: per channel the
/// batch mean, the biased batch variance and 1 / sqrt(variance + epsilon), in that order
/// (3 * channels; the channels are the product of the normalized axes' sizes). `item` is the
/// input's shape without the batch axis.
pub(crate) fn batch_norm_saved_floats(
    layer: &Node,
    bn: &BatchNorm,
    item: &[usize],
) -> Result<usize> {
    Ok(3 * Layout::of(layer, bn, 1, item)?.channels)
}

/// What neither training kernel supports; `trainable` is whether the caller needs a layer
/// running in training mode (else a frozen one).
fn check_supported(layer: &Node, bn: &BatchNorm, trainable: bool) -> Result<()> {
    check_no_renorm(layer, bn)?;
    if trainable && !bn.trainable {
        return Err(Error::Internal(format!(
            "layer '{}' ({}): a frozen BatchNormalization (trainable=False) runs in inference \
             mode: its forward is the inference one, its backward batch_norm_inference_backward",
            layer.name, layer.class
        )));
    }
    if !trainable && bn.trainable {
        return Err(Error::Internal(format!(
            "layer '{}' ({}): a trainable BatchNormalization trains on its batch statistics, \
             not in inference mode",
            layer.name, layer.class
        )));
    }
    if trainable && layer.mask.is_some() {
        return Err(layer_error(
            layer,
            "mask",
            "a BatchNormalization reached by a mask (Keras's masked moments) is not supported \
             in GPU training",
        ));
    }
    Ok(())
}

fn check_no_renorm(layer: &Node, bn: &BatchNorm) -> Result<()> {
    if !bn.unused.is_empty() {
        return Err(layer_error(
            layer,
            "renorm",
            "batch renormalization (renorm=True) is not supported in training",
        ));
    }
    Ok(())
}

/// y = x normalized with `stats` (laid out as `saved`), then gamma / beta: the training
/// forward's and the evaluation forward's last dispatch.
#[allow(clippy::too_many_arguments)]
fn apply_stats(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    bn: &BatchNorm,
    l: &Layout,
    x: BufRef,
    stats: BufRef,
    gamma: BufRef,
    beta: BufRef,
    y: BufRef,
    what: &str,
) -> Result<()> {
    let flags = u32::from(bn.gamma.is_some()) * HAS_GAMMA + u32::from(bn.beta.is_some()) * HAS_BETA;
    e.dispatch(
        layer,
        node,
        Kernel::BatchNormApply,
        vec![x, stats, gamma, beta, BufRef::Dummy, y],
        l.words(layer, 0, [bn.epsilon, 0.0, 0.0], flags)?,
        linear_workgroups(l.elements(), LINEAR_THREADS),
        format!("batch norm ({what}) over {} channels", l.channels),
    )
}

fn bound(layer: &Node, what: &str, has: bool, given: Option<BufRef>) -> Result<BufRef> {
    match (has, given) {
        (true, Some(b)) => Ok(b),
        (false, None) => Ok(BufRef::Dummy),
        (true, None) => Err(Error::Internal(format!(
            "layer '{}': the {what} weight exists but no buffer was given",
            layer.name
        ))),
        (false, Some(_)) => Err(layer_error(
            layer,
            what,
            format!(
                "a buffer was given for {what}, which this layer does not have (center/scale off)"
            ),
        )),
    }
}

/// The two chunked passes of one per-channel sum (`mode`): partial sums of `x` (and `dy`) over
/// chunks, then the chunks in order into `stats` (see norm_grad.wgsl).
#[allow(clippy::too_many_arguments)]
fn channel_sums(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    l: &Layout,
    mode: u32,
    epsilon: f32,
    x: BufRef,
    dy: BufRef,
    read_stats: BufRef,
    stats: BufRef,
) -> Result<()> {
    let (chunk, chunks) = l.chunks();
    let width = if mode == SUM_GRADS { 2 } else { 1 };
    check_buffer(
        e,
        layer,
        "batch normalization partial sums",
        width * chunks * l.channels,
    )?;
    let partials = e.scratch(
        node,
        "batch normalization partial sums",
        width * chunks * l.channels,
    );
    let words = l.words(layer, mode, [epsilon, 0.0, 0.0], 0)?;
    let what = ["sums", "squares about the mean", "sums of dy and dy x̂"][mode as usize];
    let d = BufRef::Dummy;
    e.dispatch(
        layer,
        node,
        Kernel::BatchNormSums,
        vec![x, dy, read_stats, d, d, partials],
        words.clone(),
        linear_workgroups(chunks * l.channels, LINEAR_THREADS),
        format!(
            "batch norm {what}: {} channels, {chunks} chunks of {chunk}",
            l.channels
        ),
    )?;
    e.dispatch(
        layer,
        node,
        Kernel::BatchNormReduce,
        vec![partials, d, d, d, d, stats],
        words,
        linear_workgroups(width * l.channels, LINEAR_THREADS),
        format!("batch norm {what}: {chunks} chunks summed"),
    )?;
    e.release(partials);
    Ok(())
}

/// BatchNormalization's training forward: `y` = x normalized with the batch's statistics over
/// every axis but `bn.axes` (any contiguous axes of `item`, the input's shape without the batch
/// axis), then `gamma` / `beta` (None exactly when scale / center is off); `saved`
/// ([`batch_norm_saved_floats`]) receives the mean, variance and 1 / sqrt(variance + eps) for
/// the backward; `moving_mean` and `moving_var` move in place to moving * momentum + statistic
/// * (1 - momentum) with the biased batch variance (as the CPU and Keras do).
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_train_forward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    bn: &BatchNorm,
    batch: usize,
    item: &[usize],
    x: BufRef,
    gamma: Option<BufRef>,
    beta: Option<BufRef>,
    moving_mean: BufRef,
    moving_var: BufRef,
    y: BufRef,
    saved: BufRef,
) -> Result<()> {
    check_supported(layer, bn, true)?;
    let gamma = bound(layer, "gamma", bn.gamma.is_some(), gamma)?;
    let beta = bound(layer, "beta", bn.beta.is_some(), beta)?;
    let l = Layout::of(layer, bn, batch, item)?;
    check_buffer(e, layer, "x", l.elements())?;
    if l.elements() == 0 {
        return Ok(());
    }
    let eps = bn.epsilon;
    let d = BufRef::Dummy;
    channel_sums(e, layer, node, &l, SUM_X, eps, x, d, d, saved)?;
    channel_sums(e, layer, node, &l, SUM_SQUARES, eps, x, d, saved, saved)?;
    apply_stats(e, layer, node, bn, &l, x, saved, gamma, beta, y, "training")?;
    // Keras: moving * momentum + stat * (1 - momentum), the Python floats rounded to f32.
    let (keep, take) = (bn.momentum as f32, (1.0 - bn.momentum) as f32);
    for (which, moving, what) in [(0, moving_mean, "mean"), (1, moving_var, "variance")] {
        e.dispatch(
            layer,
            node,
            Kernel::BatchNormMoving,
            vec![saved, d, d, d, d, moving],
            l.words(layer, which, [eps, keep, take], 0)?,
            linear_workgroups(l.channels, LINEAR_THREADS),
            format!(
                "batch norm: moving {what} update (momentum {})",
                bn.momentum
            ),
        )?;
    }
    Ok(())
}

/// BatchNormalization's training backward, through the batch statistics the forward left in
/// `saved`: dx = gamma r (dy - mean(dy) - x̂ mean(dy x̂)) per channel, dgamma = Σ dy x̂, dbeta
/// = Σ dy (each written when given; dgamma / dbeta only for a layer with scale / center). `x` is
/// the forward's input, `gamma` (None exactly when scale is off) its weight.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    bn: &BatchNorm,
    batch: usize,
    item: &[usize],
    x: BufRef,
    dy: BufRef,
    gamma: Option<BufRef>,
    saved: BufRef,
    dx: Option<BufRef>,
    dgamma: Option<BufRef>,
    dbeta: Option<BufRef>,
) -> Result<()> {
    check_supported(layer, bn, true)?;
    let gamma = bound(layer, "gamma", bn.gamma.is_some(), gamma)?;
    if dgamma.is_some() && bn.gamma.is_none() {
        return Err(layer_error(
            layer,
            "gamma",
            "no gamma (scale=False) to take a gradient of",
        ));
    }
    if dbeta.is_some() && bn.beta.is_none() {
        return Err(layer_error(
            layer,
            "beta",
            "no beta (center=False) to take a gradient of",
        ));
    }
    let l = Layout::of(layer, bn, batch, item)?;
    check_buffer(e, layer, "x", l.elements())?;
    if l.elements() == 0 || (dx.is_none() && dgamma.is_none() && dbeta.is_none()) {
        return Ok(());
    }
    let c = l.channels;
    // Σ dy per channel, then Σ dy x̂.
    let sums = e.scratch(node, "batch normalization gradient sums", 2 * c);
    channel_sums(
        e, layer, node, &l, SUM_GRADS, bn.epsilon, x, dy, saved, sums,
    )?;
    if let Some(dx) = dx {
        let flags = u32::from(bn.gamma.is_some()) * HAS_GAMMA;
        e.dispatch(
            layer,
            node,
            Kernel::BatchNormGrad,
            vec![x, dy, saved, sums, gamma, dx],
            l.words(layer, GRAD_TRAINING, [bn.epsilon, 0.0, 0.0], flags)?,
            linear_workgroups(l.elements(), LINEAR_THREADS),
            format!("d batch norm (training) over {c} channels"),
        )?;
    }
    if let Some(dgamma) = dgamma {
        let detail = "d gamma: Σ dy x̂".to_string();
        copy_range(e, layer, node, sums, c, c, dgamma, detail)?;
    }
    if let Some(dbeta) = dbeta {
        let detail = "d beta: Σ dy".to_string();
        copy_range(e, layer, node, sums, 0, c, dbeta, detail)?;
    }
    e.release(sums);
    Ok(())
}

/// A frozen BatchNormalization's backward (`trainable=False`: Keras runs it in inference mode in
/// training too, on its moving statistics, and its weights are not trainable): dx = dy * gamma
/// / sqrt(moving_var + epsilon) per channel, no weight gradients. `gamma` is None exactly when
/// scale is off.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_inference_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    bn: &BatchNorm,
    batch: usize,
    item: &[usize],
    dy: BufRef,
    gamma: Option<BufRef>,
    moving_var: BufRef,
    dx: BufRef,
) -> Result<()> {
    check_supported(layer, bn, false)?;
    let gamma = bound(layer, "gamma", bn.gamma.is_some(), gamma)?;
    let l = Layout::of(layer, bn, batch, item)?;
    check_buffer(e, layer, "dy", l.elements())?;
    if l.elements() == 0 {
        return Ok(());
    }
    let d = BufRef::Dummy;
    let flags = u32::from(bn.gamma.is_some()) * HAS_GAMMA;
    e.dispatch(
        layer,
        node,
        Kernel::BatchNormGrad,
        vec![d, dy, moving_var, d, gamma, dx],
        l.words(layer, GRAD_FROZEN, [bn.epsilon, 0.0, 0.0], flags)?,
        linear_workgroups(l.elements(), LINEAR_THREADS),
        format!("d batch norm (frozen) over {} channels", l.channels),
    )
}

/// A trainable BatchNormalization evaluated (Keras's `evaluate`, validation data): `y` = x
/// normalized with the moving statistics as they are in the parameter arena now. The moving
/// statistics are first laid out as the training forward's `saved` (mean, variance,
/// 1 / sqrt(variance + eps)) by `batch_norm_reduce` over one chunk of one value each, so the
/// training forward's `batch_norm_apply` (tf.nn.batch_normalization's order, as the CPU's
/// inference affine) computes y.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_evaluate_forward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    bn: &BatchNorm,
    batch: usize,
    item: &[usize],
    x: BufRef,
    gamma: Option<BufRef>,
    beta: Option<BufRef>,
    moving_mean: BufRef,
    moving_var: BufRef,
    y: BufRef,
) -> Result<()> {
    check_no_renorm(layer, bn)?;
    let gamma = bound(layer, "gamma", bn.gamma.is_some(), gamma)?;
    let beta = bound(layer, "beta", bn.beta.is_some(), beta)?;
    let l = Layout::of(layer, bn, batch, item)?;
    check_buffer(e, layer, "x", l.elements())?;
    if l.elements() == 0 {
        return Ok(());
    }
    let (c, eps, d) = (l.channels, bn.epsilon, BufRef::Dummy);
    let stats = e.scratch(node, "moving statistics", 3 * c);
    // One value per channel in one chunk: the "mean" is the moving mean, the "variance" the
    // moving variance, each divided by 1.
    let one = Layout {
        rows: 1,
        channels: c,
        inner: 1,
    };
    for (mode, moving, what) in [
        (SUM_X, moving_mean, "mean"),
        (
            SUM_SQUARES,
            moving_var,
            "variance and 1 / sqrt(variance + eps)",
        ),
    ] {
        e.dispatch(
            layer,
            node,
            Kernel::BatchNormReduce,
            vec![moving, d, d, d, d, stats],
            one.words(layer, mode, [eps, 0.0, 0.0], 0)?,
            linear_workgroups(c, LINEAR_THREADS),
            format!("batch norm (evaluation): moving {what} of {c} channels"),
        )?;
    }
    apply_stats(
        e,
        layer,
        node,
        bn,
        &l,
        x,
        stats,
        gamma,
        beta,
        y,
        "evaluation",
    )?;
    e.release(stats);
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::super::test_emit::TestEmit;
    use super::*;
    use crate::cpu::grad::check::uniform;
    use crate::cpu::grad::testing::{assert_close, one_node, run_backward, run_forward};
    use crate::gpu::testing::{runner, KernelRunner};
    use crate::graph::{Graph, Op, ParamId};

    const STALE: f32 = 123.0;

    struct Case {
        item: Vec<usize>,
        axes: Vec<usize>,
        batch: usize,
        center: bool,
        scale: bool,
        trainable: bool,
        momentum: f64,
        epsilon: f32,
    }

    fn case(item: &[usize], batch: usize) -> Case {
        Case {
            item: item.to_vec(),
            axes: vec![item.len() - 1],
            batch,
            center: true,
            scale: true,
            trainable: true,
            momentum: 0.99,
            epsilon: 1e-3,
        }
    }

    fn bn_graph(c: &Case) -> Graph {
        let channels: Vec<usize> = c.axes.iter().map(|&a| c.item[a]).collect();
        let mut g = one_node(&c.item, |p| {
            let gamma = c
                .scale
                .then(|| p.add("n/gamma", uniform(&channels, 1, 0.5) + 1.0, c.trainable));
            let beta = c
                .center
                .then(|| p.add("n/beta", uniform(&channels, 2, 0.5), c.trainable));
            let moving_mean = p.add("n/moving_mean", uniform(&channels, 3, 0.5), false);
            let moving_variance =
                p.add("n/moving_variance", uniform(&channels, 4, 0.5) + 1.0, false);
            Op::BatchNorm(BatchNorm {
                axes: c.axes.clone(),
                gamma,
                beta,
                moving_mean,
                moving_variance,
                epsilon: c.epsilon,
                momentum: c.momentum,
                trainable: c.trainable,
                unused: Vec::new(),
            })
        });
        g.nodes[0].class = "BatchNormalization".into();
        g
    }

    /// x = 3 + 2 noise plus a per-channel offset, so the mean subtraction matters.
    fn input(c: &Case) -> ArrayD<f32> {
        let mut shape = vec![c.batch];
        shape.extend(&c.item);
        let noise = uniform(&shape, 9, 1.0);
        let layout = axis_layout(&c.item, &c.axes).expect("layout");
        let item: usize = c.item.iter().product();
        let mut x = noise.as_standard_layout().into_owned();
        for (j, v) in x.iter_mut().enumerate() {
            let ch = (j % item / layout.inner) % layout.reduced;
            *v = 3.0 + 2.0 * *v + 0.7 * ch as f32;
        }
        x
    }

    fn values(g: &Graph, id: ParamId) -> Vec<f32> {
        g.params.slice(id).to_vec()
    }

    fn close(what: &str, got: &[f32], expected: &ArrayD<f32>) {
        let got = ArrayD::from_shape_vec(IxDyn(expected.shape()), got.to_vec()).expect("shape");
        assert_close(what, &got, expected);
    }

    /// The training forward and backward of case `c` on the GPU against the CPU's: y, the
    /// moving statistics after the update, dx, dgamma, dbeta.
    fn check_training(r: &mut KernelRunner, name: &str, c: &Case) {
        let g = bn_graph(c);
        let Op::BatchNorm(bn) = &g.nodes[0].op else {
            panic!("not a batch norm")
        };
        let x = input(c);
        let dy = uniform(x.shape(), 5, 1.0);
        let (outputs, state) = run_forward(&g, &x, None);
        let (dx, grads) = run_backward(&g, &x, &dy, true, None);
        let dx = dx.expect("dx");

        let saved_len = batch_norm_saved_floats(&g.nodes[0], bn, &c.item).expect("saved");
        let channels = saved_len / 3;
        // 0 x, 1 dy, 2 gamma, 3 beta, 4 moving mean, 5 moving variance, 6 y, 7 saved, 8 dx,
        // 9 dgamma, 10 dbeta.
        let buffers = vec![
            x.iter().copied().collect::<Vec<_>>(),
            dy.iter().copied().collect(),
            bn.gamma.map_or(vec![0.0], |id| values(&g, id)),
            bn.beta.map_or(vec![0.0], |id| values(&g, id)),
            values(&g, bn.moving_mean),
            values(&g, bn.moving_variance),
            vec![STALE; x.len()],
            vec![STALE; saved_len],
            vec![STALE; x.len()],
            vec![STALE; channels],
            vec![STALE; channels],
        ];
        let i = BufRef::Input;
        let mut emit = TestEmit::new(r.limits, buffers.len());
        let node = &g.nodes[0];
        batch_norm_train_forward(
            &mut emit,
            node,
            0,
            bn,
            c.batch,
            &c.item,
            i(0),
            bn.gamma.map(|_| i(2)),
            bn.beta.map(|_| i(3)),
            i(4),
            i(5),
            i(6),
            i(7),
        )
        .expect("forward lowering");
        batch_norm_backward(
            &mut emit,
            node,
            0,
            bn,
            c.batch,
            &c.item,
            i(0),
            i(1),
            bn.gamma.map(|_| i(2)),
            i(7),
            Some(i(8)),
            bn.gamma.map(|_| i(9)),
            bn.beta.map(|_| i(10)),
        )
        .expect("backward lowering");
        let got = emit.run(r, &buffers).expect("GPU run");

        close(&format!("{name}: y"), &got[6], &outputs[0]);
        for (k, id) in [(4, bn.moving_mean), (5, bn.moving_variance)] {
            let (_, moved) = state.iter().find(|(s, _)| *s == id).expect("state");
            close(
                &format!("{name}: {}", g.params.param(id).name),
                &got[k],
                moved,
            );
        }
        close(&format!("{name}: dx"), &got[8], &dx);
        for (k, id) in [(9, bn.gamma), (10, bn.beta)] {
            match id {
                Some(id) => close(
                    &format!("{name}: d {}", g.params.param(id).name),
                    &got[k],
                    grads.get(id).expect("a weight gradient"),
                ),
                None => assert!(got[k].iter().all(|&v| v == STALE), "{name}: untouched"),
            }
        }
    }

    #[test]
    fn batch_norm_training_matches_the_cpu() {
        let Some(mut r) = runner() else { return };
        check_training(&mut r, "4-D, 10 channels", &case(&[5, 7, 10], 3));
        check_training(&mut r, "4-D, batch 33, 3 channels", &case(&[5, 7, 3], 33));
        check_training(&mut r, "2-D, 70 features", &case(&[70], 17));
        check_training(&mut r, "3-D sequence", &case(&[9, 6], 4));
        check_training(
            &mut r,
            "momentum 0.9, epsilon 1e-5",
            &Case {
                momentum: 0.9,
                epsilon: 1e-5,
                ..case(&[4, 4, 6], 5)
            },
        );
        // A batch of one item: the statistics over its positions only.
        check_training(&mut r, "batch 1", &case(&[6, 5, 4], 1));
    }

    #[test]
    fn batch_norm_training_without_center_or_scale() {
        let Some(mut r) = runner() else { return };
        for (center, scale) in [(false, false), (true, false), (false, true)] {
            let c = Case {
                center,
                scale,
                ..case(&[4, 6, 5], 4)
            };
            check_training(&mut r, &format!("center {center} scale {scale}"), &c);
        }
    }

    /// Channels not last: Keras's axis=1 on NHWC-shaped data (channels first), a 3-D input's
    /// middle axis, and Keras 2's list of axes.
    #[test]
    fn batch_norm_training_on_other_axes() {
        let Some(mut r) = runner() else { return };
        let axes = |item: &[usize], axes: &[usize], batch| Case {
            axes: axes.to_vec(),
            ..case(item, batch)
        };
        check_training(&mut r, "axis 1 of 4-D", &axes(&[4, 5, 6], &[0], 3));
        check_training(&mut r, "axis 2 of 4-D", &axes(&[3, 5, 4], &[1], 2));
        check_training(&mut r, "axis 1 of 3-D", &axes(&[7, 5], &[0], 6));
        check_training(&mut r, "axes 2 and 3 of 4-D", &axes(&[3, 4, 5], &[1, 2], 3));
    }

    /// 32K values per channel: many chunks in both passes.
    #[test]
    fn batch_norm_training_on_a_large_batch() {
        let Some(mut r) = runner() else { return };
        check_training(&mut r, "32x32x32 per channel", &case(&[32, 32, 2], 32));
    }

    /// A frozen layer: the CPU runs it on the moving statistics; the GPU's backward is the
    /// affine one, with no weight gradients.
    #[test]
    fn frozen_batch_norm_backward_matches_the_cpu() {
        let Some(mut r) = runner() else { return };
        for (name, c) in [
            ("frozen 4-D", case(&[5, 7, 10], 3)),
            (
                "frozen 2-D, no scale",
                Case {
                    scale: false,
                    ..case(&[70], 17)
                },
            ),
            (
                "frozen axis 1",
                Case {
                    axes: vec![0],
                    ..case(&[4, 5, 6], 3)
                },
            ),
        ] {
            let c = Case {
                trainable: false,
                ..c
            };
            let g = bn_graph(&c);
            let Op::BatchNorm(bn) = &g.nodes[0].op else {
                panic!("not a batch norm")
            };
            let x = input(&c);
            let dy = uniform(x.shape(), 5, 1.0);
            let (dx, grads) = run_backward(&g, &x, &dy, true, None);
            for id in [bn.gamma, bn.beta].into_iter().flatten() {
                assert!(
                    grads.get(id).is_none(),
                    "{name}: no weight gradient on the CPU"
                );
            }
            let buffers = vec![
                dy.iter().copied().collect::<Vec<_>>(),
                bn.gamma.map_or(vec![0.0], |id| values(&g, id)),
                values(&g, bn.moving_variance),
                vec![STALE; x.len()],
            ];
            let i = BufRef::Input;
            let mut emit = TestEmit::new(r.limits, buffers.len());
            batch_norm_inference_backward(
                &mut emit,
                &g.nodes[0],
                0,
                bn,
                c.batch,
                &c.item,
                i(0),
                bn.gamma.map(|_| i(1)),
                i(2),
                i(3),
            )
            .expect("lowering");
            let got = emit.run(&mut r, &buffers).expect("GPU run");
            close(&format!("{name}: dx"), &got[3], &dx.expect("dx"));
        }
    }

    #[test]
    fn unsupported_batch_norms_are_refused() {
        let limits = crate::gpu::plan::PlanLimits {
            max_binding_bytes: 1 << 30,
            max_workgroups_per_dim: 65535,
            max_storage_buffers_per_stage: 8,
            fold_batch_norm: false,
            loop_iterations: None,
        };
        let c = case(&[4, 3], 2);
        let g = bn_graph(&c);
        let Op::BatchNorm(bn) = &g.nodes[0].op else {
            panic!("not a batch norm")
        };
        let i = BufRef::Input;
        let forward = |node: &Node, bn: &BatchNorm| {
            let mut emit = TestEmit::new(limits, 8);
            batch_norm_train_forward(
                &mut emit,
                node,
                0,
                bn,
                2,
                &c.item,
                i(0),
                Some(i(1)),
                Some(i(2)),
                i(3),
                i(4),
                i(5),
                i(6),
            )
        };
        forward(&g.nodes[0], bn).expect("supported");
        let renorm = BatchNorm {
            unused: vec![bn.moving_mean],
            ..bn.clone()
        };
        let err = forward(&g.nodes[0], &renorm).expect_err("renorm");
        assert!(
            err.to_string().contains("'n'") && err.to_string().contains("renorm"),
            "{err}"
        );
        let frozen = BatchNorm {
            trainable: false,
            ..bn.clone()
        };
        forward(&g.nodes[0], &frozen).expect_err("frozen in training mode");
        let mut masked = g.nodes[0].clone();
        masked.mask = Some(masked.inputs[0]);
        let err = forward(&masked, bn).expect_err("mask");
        assert!(err.to_string().contains("mask"), "{err}");
        let no_scale = BatchNorm {
            gamma: None,
            ..bn.clone()
        };
        forward(&g.nodes[0], &no_scale).expect_err("gamma given to a layer without one");
        let mut emit = TestEmit::new(limits, 8);
        batch_norm_inference_backward(
            &mut emit,
            &g.nodes[0],
            0,
            bn,
            2,
            &c.item,
            i(0),
            Some(i(1)),
            i(2),
            i(3),
        )
        .expect_err("a trainable layer is not frozen");
    }
}
