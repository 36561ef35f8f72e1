//! Backward rules of the CPU reference path, one file per op family beside its forward in
//! `cpu/`. The training step (`crate::train::step`) runs `forward` on every node in order,
//! keeping each node's inputs, outputs and `Saved` state, then `backward` in reverse order.
//!
//! A rule gets the gradient of each of its outputs (None where nothing downstream reads that
//! output: take it as zeros), adds the gradients of the node's parameters to `ParamGrads`,
//! and returns one gradient per data input (None for token ids, or where `needs[i]` is false:
//! nothing upstream wants it, so the rule may skip the work).

mod activation;
#[cfg(test)]
pub(crate) mod check;
mod conv;
mod conv_lstm;
mod copy;
mod dense;
pub(crate) mod dropout;
mod embedding;
mod merge;
pub(super) mod node_step;
mod norm;
mod pool;
pub(crate) mod recurrent;
mod shape;
mod spatial;
#[cfg(test)]
pub(crate) mod testing;

use std::any::Any;

use ndarray::{Array2, ArrayD};

use super::Tensor;
use crate::error::{Error, Result};
use crate::graph::*;
use crate::train::{ParamGrads, Rng};

/// What a node's training forward keeps for its backward, beyond its inputs and outputs (the
/// gates of a recurrent layer, a dropout mask, batch statistics). Each rule downcasts its own.
pub(crate) type Saved = Option<Box<dyn Any + Send + Sync>>;

/// A node's training-mode forward.
pub(crate) struct Forward {
    pub outputs: Vec<Tensor>,
    pub saved: Saved,
    /// New values of non-trainable state that the forward updates in training (the moving
    /// statistics of BatchNormalization), applied after the step.
    pub state: Vec<(ParamId, ArrayD<f32>)>,
}

impl Forward {
    fn plain(outputs: Vec<Tensor>) -> Self {
        Forward {
            outputs,
            saved: None,
            state: Vec::new(),
        }
    }
}

/// Everything a backward rule reads about its node's forward.
pub(crate) struct NodeIo<'a> {
    pub graph: &'a Graph,
    pub node: &'a Node,
    pub inputs: &'a [&'a Tensor],
    pub outputs: &'a [&'a Tensor],
    pub mask: Option<&'a Array2<bool>>,
    pub saved: &'a Saved,
    /// Per data input: does anything upstream need its gradient?
    pub needs: &'a [bool],
}

impl<'a> NodeIo<'a> {
    pub fn params(&self) -> &'a ParamStore {
        &self.graph.params
    }

    /// Data input `i` as floats.
    pub fn input(&self, i: usize) -> Result<&'a ArrayD<f32>> {
        as_float(self.inputs[i], self.node)
    }

    /// Output `i` as floats.
    pub fn output(&self, i: usize) -> Result<&'a ArrayD<f32>> {
        as_float(self.outputs[i], self.node)
    }

    /// This rule's own saved state.
    pub fn saved<T: 'static>(&self) -> Result<&'a T> {
        self.saved
            .as_ref()
            .and_then(|s| s.downcast_ref::<T>())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "node '{}': its training forward kept no state for the backward",
                    self.node.name
                ))
            })
    }
}

pub(crate) fn as_float<'a>(t: &'a Tensor, node: &Node) -> Result<&'a ArrayD<f32>> {
    match t {
        Tensor::F32(x) => Ok(x),
        other => Err(Error::Internal(format!(
            "node '{}' expects float32 values, got {}",
            node.name,
            other.kind()
        ))),
    }
}

/// The gradient of output `i`, zeros of `like`'s shape where none arrived.
pub(crate) fn dy_or_zeros(
    dys: &[Option<ArrayD<f32>>],
    i: usize,
    like: &ArrayD<f32>,
) -> ArrayD<f32> {
    match dys.get(i).and_then(Option::as_ref) {
        Some(d) => d.clone(),
        None => ArrayD::zeros(like.raw_dim()),
    }
}

/// Runs one node in training mode. Ops that behave the same as at inference, and whose backward
/// needs only inputs and outputs, run the inference forward.
pub(crate) fn forward(
    graph: &Graph,
    node: &Node,
    inputs: &[Tensor],
    mask: Option<&Array2<bool>>,
    rng: &mut Rng,
) -> Result<Forward> {
    forward_owned(graph, node, inputs.to_vec(), mask, rng)
}

/// [`forward`] taking the inputs over: the inference forward consumes them (the tape keeps its
/// own copies), so handing them over saves a copy of every input of every node each step.
pub(crate) fn forward_owned(
    graph: &Graph,
    node: &Node,
    inputs: Vec<Tensor>,
    mask: Option<&Array2<bool>>,
    rng: &mut Rng,
) -> Result<Forward> {
    match &node.op {
        Op::Dropout(d) => dropout::forward(d, node, &inputs, rng),
        Op::Recurrent(r) => recurrent::forward(r, &graph.params, node, &inputs, mask, rng),
        Op::BatchNorm(b) => norm::batch_norm_forward(b, graph, node, &inputs, mask),
        Op::ConvLstm(c) => conv_lstm::forward(c, &graph.params, node, &inputs),
        Op::TimeDistributed { inner } if matches!(**inner, Op::Recurrent(_)) => {
            spatial::time_distributed_forward(inner, graph, node, &inputs, rng)
        }
        _ => {
            let outs = super::run_node(graph, node, inputs, mask)?;
            Ok(Forward::plain(outs))
        }
    }
}

/// Why `op` has no backward yet, or Ok. Checked on every node that needs one before the first
/// training step, so a model that cannot be trained fails at once with the layer's name.
pub(crate) fn support(op: &Op) -> std::result::Result<(), String> {
    let missing = |what: &str| Err(format!("{what} has no backward in wgnn yet"));
    match op {
        Op::Dense(_)
        | Op::Activation(_)
        | Op::Rescaling { .. }
        | Op::Reshape { .. }
        | Op::Identity
        | Op::Dropout(_)
        | Op::PaddingMask
        | Op::Embedding(_)
        | Op::Recurrent(_)
        | Op::Conv(_)
        | Op::DepthwiseConv(_)
        | Op::ConvTranspose(_)
        | Op::Pool(_)
        | Op::GlobalPool { .. }
        | Op::Pad { .. }
        | Op::Crop { .. }
        | Op::Upsample { .. }
        | Op::Merge(_)
        | Op::Scalar(_)
        | Op::Concat { .. }
        | Op::Dot(_)
        | Op::Permute { .. }
        | Op::RepeatVector { .. }
        | Op::LayerNorm(_)
        | Op::GroupNorm(_)
        | Op::Normalization(_)
        | Op::PRelu(_)
        | Op::Softmax(_) => Ok(()),
        Op::BatchNorm(b) if !b.unused.is_empty() => missing("BatchNormalization with renorm=True"),
        Op::BatchNorm(_) => Ok(()),
        Op::TimeDistributed { inner } => support(inner),
        Op::ConvLstm(c) if c.dropout != 0.0 || c.recurrent_dropout != 0.0 => {
            missing("ConvLSTM with dropout or recurrent_dropout")
        }
        Op::ConvLstm(_) => Ok(()),
    }
}

/// The backward of one node: parameter gradients into `grads`, one gradient per data input
/// returned (None: ids, or not needed).
pub(crate) fn backward(
    io: &NodeIo,
    dys: &[Option<ArrayD<f32>>],
    grads: &mut ParamGrads,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    backward_owned(io, dys.to_vec(), grads)
}

/// [`backward`] taking the output gradients over: a single-output rule works in the gradient's
/// own buffer instead of a copy of it (the training sweep's path).
pub(crate) fn backward_owned(
    io: &NodeIo,
    mut dys: Vec<Option<ArrayD<f32>>>,
    grads: &mut ParamGrads,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    let node = io.node;
    let params = io.params();
    // Rules that read all output gradients take `dys` whole; the others get the first one.
    let first = match &node.op {
        Op::Recurrent(_) | Op::ConvLstm(_) => None,
        _ => dys.get_mut(0).and_then(Option::take),
    };
    let first = std::cell::Cell::new(first);
    let dy0 = || -> Result<ArrayD<f32>> {
        match first.take() {
            Some(d) => Ok(d),
            None => Ok(ArrayD::zeros(io.output(0)?.raw_dim())),
        }
    };
    let dys = &dys[..];
    let one = |g: ArrayD<f32>| Ok(vec![Some(g)]);
    match &node.op {
        Op::Dense(d) => dense::backward(d, io, dy0()?, grads),
        Op::Activation(a) => one(activation::backward(
            *a,
            io.input(0)?,
            io.output(0)?,
            dy0()?,
        )),
        Op::Rescaling { scale, .. } => one(shape::rescaling(scale, dy0()?)),
        Op::Reshape { .. } => one(shape::reshape_back(dy0()?, io.input(0)?)?),
        Op::Identity => one(dy0()?),
        Op::Dropout(d) => one(dropout::backward(d, io, dy0()?)?),
        Op::PaddingMask => Ok(vec![None]),
        Op::Embedding(e) => {
            embedding::backward(e, params, io.inputs[0], node, dy0()?, grads)?;
            Ok(vec![None])
        }
        Op::Recurrent(r) => recurrent::backward(r, io, dys, grads),
        Op::Conv(c) => {
            let dx = conv::conv(
                c,
                params,
                &node.name,
                io.input(0)?,
                &dy0()?,
                io.needs[0],
                grads,
            )?;
            Ok(vec![dx])
        }
        Op::DepthwiseConv(c) => {
            let x = io.input(0)?;
            let dx = conv::depthwise(c, params, &node.name, x, &dy0()?, io.needs[0], grads)?;
            Ok(vec![dx])
        }
        Op::ConvTranspose(c) => {
            let x = io.input(0)?;
            let dx = conv::conv_transpose(c, params, &node.name, x, &dy0()?, io.needs[0], grads)?;
            Ok(vec![dx])
        }
        Op::TimeDistributed { inner } => {
            Ok(vec![spatial::time_distributed(inner, io, &dy0()?, grads)?])
        }
        Op::Pool(p) => wanted(io, || pool::pool(p, io.input(0)?, &dy0()?)),
        Op::GlobalPool { op, .. } => wanted(io, || {
            pool::global_pool(*op, io.input(0)?, &dy0()?, io.mask)
        }),
        Op::Pad { pads } => wanted(io, || spatial::pad(pads, io.input(0)?, &dy0()?)),
        Op::Crop { crops } => wanted(io, || spatial::crop(crops, io.input(0)?, &dy0()?)),
        Op::Upsample {
            factors,
            interpolation: Interpolation::Nearest,
        } => wanted(io, || {
            spatial::upsample_nearest(factors, io.input(0)?, &dy0()?)
        }),
        Op::Upsample {
            interpolation: Interpolation::Bilinear,
            ..
        } => wanted(io, || spatial::upsample_bilinear(io.input(0)?, &dy0()?)),
        Op::Merge(m) => merge::merge_backward(m, io, dy0()?),
        Op::Scalar(sc) => merge::scalar_backward(sc, io, dy0()?),
        Op::Dot(d) => merge::dot_backward(d, io, dy0()?),
        Op::Concat { axis } => copy::concat_backward(*axis, io, dy0()?),
        Op::Permute { perm } => copy::permute_backward(perm, io, dy0()?),
        Op::RepeatVector { .. } => copy::repeat_vector_backward(io, dy0()?),
        Op::BatchNorm(b) => norm::batch_norm_backward(b, io, dy0()?, grads),
        Op::LayerNorm(l) => norm::layer_norm_backward(l, io, dy0()?, grads),
        Op::GroupNorm(gn) => norm::group_norm_backward(gn, io, dy0()?, grads),
        Op::Normalization(n) => norm::normalization_backward(n, io, dy0()?),
        Op::PRelu(p) => norm::prelu_backward(p, io, dy0()?, grads),
        Op::Softmax(s) => norm::softmax_backward(s, io, dy0()?),
        Op::ConvLstm(c) => conv_lstm::backward(c, io, dys, grads),
    }
}

/// The one input gradient of a parameterless op, computed only when something upstream wants it.
fn wanted(
    io: &NodeIo,
    dx: impl FnOnce() -> Result<ArrayD<f32>>,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    Ok(vec![if io.needs[0] { Some(dx()?) } else { None }])
}
