//! Lowering of the normalization family (shaders/norm.wgsl), and BatchNormalization folding.
//!
//! Folding: a BatchNormalization over the channel (last) axis whose input comes straight from a
//! Conv2D or Dense with a linear activation, and which is that layer's only reader, is folded
//! into the layer's weights at plan time: the layer gets new GPU weight buffers and the
//! BatchNormalization costs nothing (its output aliases the layer's). The graph is unchanged,
//! and the CPU path keeps running the two ops apart as the reference. This is exact in real
//! arithmetic: at inference BatchNormalization is a per-output-channel affine map
//! z[o] = y[o] * s[o] + t[o], and the layer is linear in its weights,
//! y[o] = sum_k x[k] W[k, o] + b[o], so z[o] = sum_k x[k] (W[k, o] s[o]) + (b[o] s[o] + t[o]).
//! In f32 only the rounding differs (a product rounded once more per weight).

use super::*;
use crate::graph::{
    axis_layout, broadcast_strides, keep_axes, BatchNorm, GroupNorm, LayerNorm, LayerNormKind,
    Normalization, PRelu, Softmax,
};

/// For each node, the BatchNormalization node folded into it (see the module comment).
pub(crate) fn batch_norm_folds(graph: &Graph) -> Vec<Option<usize>> {
    let producers = graph.producers();
    let mut readers = vec![0usize; graph.values.len()];
    for n in &graph.nodes {
        for &v in n.inputs.iter().chain(n.mask.iter()) {
            readers[v] += 1;
        }
    }
    for o in &graph.outputs {
        readers[o.value] += 1;
    }
    let mut folds = vec![None; graph.nodes.len()];
    for (j, node) in graph.nodes.iter().enumerate() {
        let GraphOp::BatchNorm(b) = &node.op else {
            continue;
        };
        let v = node.inputs[0];
        let Some(p) = producers[v] else {
            continue;
        };
        let linear = match &graph.nodes[p].op {
            GraphOp::Conv(c) => c.activation == Activation::Linear,
            GraphOp::Dense(d) => d.activation == Activation::Linear,
            _ => false,
        };
        let rank = graph.value(v).shape.len();
        if linear && readers[v] == 1 && rank > 0 && b.axes == [rank - 1] && folds[p].is_none() {
            folds[p] = Some(j);
        }
    }
    folds
}

/// The folded (kernel, bias) of Conv2D / Dense node `layer` with BatchNormalization node `bn`:
/// W[k, o] * s[o] and b[o] * s[o] + t[o]. Both kernels are (k, out) row-major (HWIO flattens
/// to it).
pub(crate) fn folded_weights(
    graph: &Graph,
    layer: usize,
    bn: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let p = &graph.params;
    let (kernel, bias) = match &graph.nodes[layer].op {
        GraphOp::Conv(c) => (c.kernel, c.bias),
        GraphOp::Dense(d) => (d.kernel, d.bias),
        _ => return Err(Error::Internal("only convolutions and Dense fold".into())),
    };
    let GraphOp::BatchNorm(b) = &graph.nodes[bn].op else {
        return Err(Error::Internal(
            "folding a node that is no BatchNormalization".into(),
        ));
    };
    let (scale, shift) = b.affine(p);
    let out = scale.len();
    let folded_kernel = p
        .slice(kernel)
        .chunks_exact(out.max(1))
        .flat_map(|row| row.iter().zip(&scale).map(|(w, s)| w * s))
        .collect();
    let folded_bias = (0..out)
        .map(|o| {
            let b0 = bias.map_or(0.0, |id| p.slice(id)[o]);
            b0 * scale[o] + shift[o]
        })
        .collect();
    Ok((folded_kernel, folded_bias))
}

/// The uniform words of shaders/norm.wgsl's `NormParams`.
struct NormWords {
    len: u32,
    rank: u32,
    mode: u32,
    epsilon: f32,
    inner: u32,
    flags: u32,
    dims: [u32; 8],
    strides: [u32; 8],
}

impl NormWords {
    fn reduction(len: u32, reduced: u32, inner: u32, mode: u32, epsilon: f32, flags: u32) -> Self {
        NormWords {
            len,
            rank: reduced,
            mode,
            epsilon,
            inner,
            flags,
            dims: [1; 8],
            strides: [0; 8],
        }
    }

    fn words(&self) -> Vec<u32> {
        let mut w = vec![
            self.len,
            self.rank,
            self.mode,
            self.epsilon.to_bits(),
            self.inner,
            self.flags,
            0,
            0,
        ];
        w.extend(self.dims);
        w.extend(self.strides);
        w
    }
}

impl Builder<'_> {
    /// An in-place broadcast kernel (affine or prelu) over node `i`'s input, weights shaped
    /// `weight` in broadcast form.
    fn broadcast_kernel(
        &mut self,
        i: usize,
        kernel: Kernel,
        x: BufRef,
        weights: [BufRef; 2],
        weight: &[usize],
        what: &str,
    ) -> Result<()> {
        let l = self.layer(i);
        let shape = self.in_shape(i);
        if shape.len() > 8 {
            return Err(layer_error(l, "input_shape", "more than 8 axes on the GPU"));
        }
        let strides = broadcast_strides(shape, weight).map_err(|m| layer_error(l, "weights", m))?;
        let len = self.batch * shape.iter().product::<usize>();
        let mut words = NormWords::reduction(to_u32(l, "length", len)?, 0, 0, 0, 0.0, 0);
        words.rank = shape.len() as u32;
        for (k, (&d, &s)) in shape.iter().zip(&strides).enumerate() {
            words.dims[k] = to_u32(l, "shape", d)?;
            words.strides[k] = to_u32(l, "shape", s)?;
        }
        let detail = format!("{what} over {len} values, weights {weight:?}, in place");
        self.dispatch(
            i,
            kernel,
            vec![x, weights[0], weights[1]],
            words.words(),
            Self::linear_workgroups(len),
            detail,
        )
    }

    /// BatchNormalization: nothing when folded into the layer before it, else x * s + t in place.
    pub(super) fn batch_norm(&mut self, i: usize, b: &BatchNorm, x: ValueId) -> Result<BufRef> {
        if self.bn_folds.contains(&Some(i)) {
            return self.value_buf[x].ok_or_else(|| Error::Internal("no input buffer".into()));
        }
        let y = self.in_place(i, x)?;
        let weight = keep_axes(self.in_shape(i), &b.axes);
        let w = [
            self.weight(i, WeightRole::Scale),
            self.weight(i, WeightRole::Offset),
        ];
        self.broadcast_kernel(
            i,
            Kernel::Affine,
            y,
            w,
            &weight,
            "batch norm x * scale + shift",
        )?;
        Ok(y)
    }

    pub(super) fn normalization(
        &mut self,
        i: usize,
        n: &Normalization,
        x: ValueId,
    ) -> Result<BufRef> {
        let y = self.in_place(i, x)?;
        let graph = self.graph;
        let weight = graph.params.param(n.mean).value.shape();
        let w = [
            self.weight(i, WeightRole::Scale),
            self.weight(i, WeightRole::Offset),
        ];
        let what = if n.invert {
            "x * sd + mean"
        } else {
            "(x - mean) / sd"
        };
        self.broadcast_kernel(i, Kernel::Affine, y, w, weight, what)?;
        Ok(y)
    }

    pub(super) fn prelu(&mut self, i: usize, p: &PRelu, x: ValueId) -> Result<BufRef> {
        let y = self.in_place(i, x)?;
        let graph = self.graph;
        let alpha = graph.params.param(p.alpha).value.shape();
        let w = [self.weight(i, WeightRole::Scale), BufRef::Dummy];
        self.broadcast_kernel(i, Kernel::PRelu, y, w, alpha, "prelu")?;
        Ok(y)
    }

    /// One workgroup per group of node `i`'s input for `axes`: (groups, reduced, inner).
    fn groups(&self, i: usize, axes: &[usize]) -> Result<(u32, u32, u32)> {
        let l = self.layer(i);
        let layout = axis_layout(self.in_shape(i), axes).map_err(|m| layer_error(l, "axis", m))?;
        let groups = self.batch * layout.outer * layout.inner;
        Ok((
            to_u32(l, "groups", groups)?,
            to_u32(l, "axis", layout.reduced)?,
            to_u32(l, "axis", layout.inner.max(1))?,
        ))
    }

    pub(super) fn layer_norm(&mut self, i: usize, n: &LayerNorm, x: ValueId) -> Result<BufRef> {
        let (groups, reduced, inner) = self.groups(i, &n.axes)?;
        let y = self.in_place(i, x)?;
        let mode = match n.kind {
            LayerNormKind::Standard => 0,
            LayerNormKind::RmsScaling => 1,
            LayerNormKind::Rms => 2,
            LayerNormKind::Unit => 3,
        };
        let flags = u32::from(n.gamma.is_some()) | (u32::from(n.beta.is_some()) << 1);
        let words = NormWords::reduction(groups, reduced, inner, mode, n.epsilon, flags);
        let detail = format!(
            "{:?} over {groups} groups of {reduced} values {inner} apart, in place",
            n.kind
        );
        let buffers = vec![
            y,
            self.weight(i, WeightRole::Scale),
            self.weight(i, WeightRole::Offset),
        ];
        self.dispatch(
            i,
            Kernel::LayerNorm,
            buffers,
            words.words(),
            u64::from(groups),
            detail,
        )?;
        Ok(y)
    }

    pub(super) fn group_norm(&mut self, i: usize, gn: &GroupNorm, x: ValueId) -> Result<BufRef> {
        let l = self.layer(i);
        let shape = self.in_shape(i);
        let channels = shape.last().copied().unwrap_or(1).max(1);
        let run = channels / gn.groups.max(1);
        let item: usize = shape.iter().product();
        let groups = to_u32(l, "groups", self.batch * gn.groups)?;
        let values = to_u32(l, "group size", item / gn.groups.max(1))?;
        let flags = u32::from(gn.gamma.is_some()) | (u32::from(gn.beta.is_some()) << 1);
        let mut words =
            NormWords::reduction(groups, values, to_u32(l, "run", run)?, 0, gn.epsilon, flags);
        // group_norm reads the channel count from the first dims word.
        words.dims[0] = to_u32(l, "channels", channels)?;
        let y = self.in_place(i, x)?;
        let detail = format!(
            "{groups} groups of {values} values ({run} channels at each of {} positions), in place",
            item / channels
        );
        let buffers = vec![
            y,
            self.weight(i, WeightRole::Scale),
            self.weight(i, WeightRole::Offset),
        ];
        self.dispatch(
            i,
            Kernel::GroupNorm,
            buffers,
            words.words(),
            u64::from(groups),
            detail,
        )?;
        Ok(y)
    }

    fn softmax_groups(
        &mut self,
        i: usize,
        x: BufRef,
        (groups, reduced, inner): (u32, u32, u32),
        log: bool,
    ) -> Result<()> {
        let words = NormWords::reduction(groups, reduced, inner, u32::from(log), 0.0, 0);
        let detail = format!(
            "{} over {groups} groups of {reduced} values {inner} apart, in place",
            if log { "log_softmax" } else { "softmax" }
        );
        self.dispatch(
            i,
            Kernel::SoftmaxAxes,
            vec![x, BufRef::Dummy, BufRef::Dummy],
            words.words(),
            u64::from(groups),
            detail,
        )
    }

    pub(super) fn softmax_axes(&mut self, i: usize, s: &Softmax, x: ValueId) -> Result<BufRef> {
        let groups = self.groups(i, &s.axes)?;
        let y = self.in_place(i, x)?;
        self.softmax_groups(i, y, groups, s.log)?;
        Ok(y)
    }

    /// log_softmax over contiguous rows (the activation after a GEMM or on its own), in place.
    pub(super) fn log_softmax_rows(
        &mut self,
        i: usize,
        x: BufRef,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let l = self.layer(i);
        let groups = (to_u32(l, "rows", rows)?, to_u32(l, "columns", cols)?, 1);
        self.softmax_groups(i, x, groups, true)
    }
}
