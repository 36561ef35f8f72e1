//! LayerNormalization (Standard, rms_scaling, RMSNormalization, UnitNormalization; any
//! contiguous axes) and GroupNormalization in training on the GPU (shaders/layer_norm_grad.wgsl),
//! by cpu/grad/norm.rs's rules. Their forward is the inference one (each item's own
//! statistics); the backward recomputes each group's statistics from x, then dx from them and
//! the group's two gradient sums, then the weight gradients over the batch.
//!
//! Every reduction is deterministic: one workgroup's fixed tree per group, and for the weights
//! fixed chunks of each weight's values summed in order, then the chunks in order (no atomics).

use crate::error::Result;
use crate::graph::{axis_layout, GroupNorm, LayerNorm, LayerNormKind, Node};

use super::super::kernels::{Kernel, LINEAR_THREADS};
use super::super::plan::BufRef;
use super::conv::{check_buffer, layer_error};
use super::{linear_workgroups, word, Emit};

/// Each chunk of a weight's values is at least this long (and about √ of their count).
const MIN_CHUNK: usize = 16;
/// The uniform block's flags.
const HAS_GAMMA: u32 = 1;
const GROUPED: u32 = 2;

/// A layer normalized over groups of its values, with an optional per-value weight pair.
#[derive(Clone, Copy)]
pub(crate) enum RowNorm<'a> {
    Layer(&'a LayerNorm),
    Group(&'a GroupNorm),
}

impl RowNorm<'_> {
    fn gamma(self) -> bool {
        match self {
            RowNorm::Layer(l) => l.gamma.is_some(),
            RowNorm::Group(g) => g.gamma.is_some(),
        }
    }

    fn beta(self) -> bool {
        match self {
            RowNorm::Layer(l) => l.beta.is_some(),
            RowNorm::Group(g) => g.beta.is_some(),
        }
    }
}

/// How the kernels see a batch: `groups` groups of `n` values (see layer_norm_grad.wgsl).
struct Rows {
    groups: usize,
    n: usize,
    inner: usize,
    channels: usize,
    per_item: usize,
    weights: usize,
    kind: u32,
    epsilon: f32,
    flags: u32,
}

impl Rows {
    fn of(layer: &Node, op: RowNorm, batch: usize, item: &[usize]) -> Result<Rows> {
        let gamma = u32::from(op.gamma()) * HAS_GAMMA;
        match op {
            RowNorm::Layer(l) => {
                let kind = match l.kind {
                    LayerNormKind::Standard => 0,
                    LayerNormKind::RmsScaling => 1,
                    LayerNormKind::Rms => 2,
                    LayerNormKind::Unit => 3,
                };
                // What Keras never builds, and the CPU rule would not differentiate.
                if kind != 0 && l.beta.is_some() {
                    return Err(layer_error(
                        layer,
                        "beta",
                        format!("a {:?} normalization has no beta to train", l.kind),
                    ));
                }
                if l.kind == LayerNormKind::Unit && l.gamma.is_some() {
                    return Err(layer_error(
                        layer,
                        "gamma",
                        "a UnitNormalization has no gamma to train",
                    ));
                }
                let a = axis_layout(item, &l.axes).map_err(|m| layer_error(layer, "axis", m))?;
                Ok(Rows {
                    groups: batch * a.outer * a.inner,
                    n: a.reduced,
                    inner: a.inner,
                    channels: 0,
                    per_item: 1,
                    weights: a.reduced,
                    kind,
                    epsilon: l.epsilon,
                    flags: gamma,
                })
            }
            RowNorm::Group(gn) => {
                let channels = item.last().copied().unwrap_or(0);
                if gn.groups == 0 || channels == 0 || !channels.is_multiple_of(gn.groups) {
                    return Err(layer_error(
                        layer,
                        "groups",
                        format!("{channels} channels do not split into {} groups", gn.groups),
                    ));
                }
                let run = channels / gn.groups;
                let positions = item.iter().product::<usize>() / channels;
                Ok(Rows {
                    groups: batch * gn.groups,
                    n: positions * run,
                    inner: run,
                    channels,
                    per_item: gn.groups,
                    weights: channels,
                    kind: 0,
                    epsilon: gn.epsilon,
                    flags: gamma | GROUPED,
                })
            }
        }
    }

    fn elements(&self) -> usize {
        self.groups * self.n
    }

    fn values_per_weight(&self) -> usize {
        self.elements() / self.weights.max(1)
    }

    /// (values per chunk, chunks)
    fn chunks(&self) -> (usize, usize) {
        let m = self.values_per_weight();
        let chunk = ((m as f64).sqrt().ceil() as usize).max(MIN_CHUNK);
        (chunk, m.div_ceil(chunk).max(1))
    }

    /// The uniform block: groups, n, inner, kind, epsilon, flags, channels, weights, chunk,
    /// chunks, which, per_item.
    fn words(&self, layer: &Node, which: u32) -> Result<Vec<u32>> {
        let (chunk, chunks) = self.chunks();
        let w = |what: &str, v: usize| word(layer, what, v);
        Ok(vec![
            w("groups", self.groups)?,
            w("group size", self.n)?,
            w("inner", self.inner)?,
            self.kind,
            self.epsilon.to_bits(),
            self.flags,
            w("channels", self.channels)?,
            w("weights", self.weights)?,
            w("chunk", chunk)?,
            w("chunks", chunks)?,
            which,
            w("groups per item", self.per_item)?,
        ])
    }
}

fn bound(layer: &Node, what: &str, has: bool, given: Option<BufRef>) -> Result<BufRef> {
    match (has, given) {
        (true, Some(b)) => Ok(b),
        (false, None) => Ok(BufRef::Dummy),
        _ => Err(layer_error(
            layer,
            what,
            format!("the {what} buffer does not match the layer's weights (center/scale)"),
        )),
    }
}

/// The backward of a LayerNormalization / GroupNormalization over `batch` items of `item`
/// (the input's shape without the batch axis): `dx`, `dgamma`, `dbeta` each written when
/// given (dgamma / dbeta only for a layer with scale / center). `x` is the forward's input,
/// `gamma` (None exactly when the layer has none) its weight.
#[allow(clippy::too_many_arguments)]
pub(crate) fn row_norm_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    op: RowNorm,
    batch: usize,
    item: &[usize],
    x: BufRef,
    dy: BufRef,
    gamma: Option<BufRef>,
    dx: Option<BufRef>,
    dgamma: Option<BufRef>,
    dbeta: Option<BufRef>,
) -> Result<()> {
    let rows = Rows::of(layer, op, batch, item)?;
    let gamma = bound(layer, "gamma", op.gamma(), gamma)?;
    if dgamma.is_some() && !op.gamma() {
        return Err(layer_error(
            layer,
            "gamma",
            "no gamma to take a gradient of",
        ));
    }
    if dbeta.is_some() && !op.beta() {
        return Err(layer_error(layer, "beta", "no beta to take a gradient of"));
    }
    check_buffer(e, layer, "x", rows.elements())?;
    if rows.elements() == 0 || (dx.is_none() && dgamma.is_none() && dbeta.is_none()) {
        return Ok(());
    }
    let d = BufRef::Dummy;
    check_buffer(e, layer, "normalization statistics", 4 * rows.groups)?;
    let stats = e.scratch(node, "normalization statistics", 4 * rows.groups);
    let words = rows.words(layer, 0)?;
    e.dispatch(
        layer,
        node,
        Kernel::NormRowStats,
        vec![x, dy, gamma, d, stats],
        words.clone(),
        rows.groups as u64,
        format!(
            "d normalization: statistics of {} groups of {}",
            rows.groups, rows.n
        ),
    )?;
    if let Some(dx) = dx {
        e.dispatch(
            layer,
            node,
            Kernel::NormRowGrad,
            vec![x, dy, gamma, stats, dx],
            words.clone(),
            linear_workgroups(rows.elements(), LINEAR_THREADS),
            format!("d normalization: dx over {} values", rows.elements()),
        )?;
    }
    let targets: Vec<(u32, BufRef, &str)> =
        [(0, dgamma, "gamma: Σ dy x̂"), (1, dbeta, "beta: Σ dy")]
            .into_iter()
            .filter_map(|(which, t, what)| t.map(|t| (which, t, what)))
            .collect();
    if !targets.is_empty() {
        let (chunk, chunks) = rows.chunks();
        let w = rows.weights;
        check_buffer(e, layer, "normalization weight sums", 2 * chunks * w)?;
        let partials = e.scratch(node, "normalization weight sums", 2 * chunks * w);
        e.dispatch(
            layer,
            node,
            Kernel::NormWeightSums,
            vec![x, dy, stats, d, partials],
            words.clone(),
            linear_workgroups(chunks * w, LINEAR_THREADS),
            format!("d normalization weights: {w} weights, {chunks} chunks of {chunk}"),
        )?;
        for (which, target, what) in targets {
            e.dispatch(
                layer,
                node,
                Kernel::NormWeightReduce,
                vec![partials, d, d, d, target],
                rows.words(layer, which)?,
                linear_workgroups(w, LINEAR_THREADS),
                format!("d {what}, {chunks} chunks summed"),
            )?;
        }
        e.release(partials);
    }
    e.release(stats);
    Ok(())
}
