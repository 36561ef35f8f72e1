//! Shape-family backward on the GPU: the ops that move or scale values without parameters
//! (cpu/grad/{shape,copy,spatial}.rs and the Scalar / Normalization rules are the reference).
//! ZeroPadding's dx is dy's inner window and Permute's dy permuted back, strided copies
//! (shaders/copy.wgsl); Cropping's is a cleared dx with dy copied into the kept window. Nearest
//! upsampling and RepeatVector sum dy over blocks, bilinear upsampling gathers over the outputs
//! each input reaches, Rescaling and Normalization scale dy by the forward's own weight, and an
//! operator node with a constant applies TensorFlow's rule (shaders/shape_grad.wgsl). Every
//! kernel overwrites dx; none uses atomics.

use crate::error::{Error, Result};
use crate::graph::merge::{bilinear_scale, crop_copy, pad_copy, permute_copy};
use crate::graph::{
    broadcast_strides, BinaryOp, Interpolation, Node, Op as GraphOp, ParamStore, ScalarOp,
};

use super::super::kernels::{Kernel, LINEAR_THREADS};
use super::super::plan::{BufRef, Op};
use super::super::weights::{WeightKey, WeightRole};
use super::conv::{check_buffer, layer_error};
use super::merge::strided_copy;
use super::{linear_workgroups, word, Emit};

/// The axes (batch included) shape_grad.wgsl's kernels walk at most.
const MAX_RANK: usize = 8;

/// Whether [`backward`] lowers `op`.
pub(crate) fn handles(op: &GraphOp) -> bool {
    matches!(
        op,
        GraphOp::Pad { .. }
            | GraphOp::Crop { .. }
            | GraphOp::Permute { .. }
            | GraphOp::RepeatVector { .. }
            | GraphOp::Upsample { .. }
            | GraphOp::Rescaling { .. }
            | GraphOp::Scalar(_)
            | GraphOp::Normalization(_)
    )
}

/// The input gradient `dx` (overwritten) of node `node` from its output's gradient `dy`, for
/// `batch` items: `x_item` / `y_item` are its input's and output's item shapes, `x` the
/// forward's input (the Scalar rules read it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    params: &ParamStore,
    batch: usize,
    x_item: &[usize],
    y_item: &[usize],
    x: BufRef,
    dy: BufRef,
    dx: BufRef,
) -> Result<()> {
    let x_len = batch * x_item.iter().product::<usize>();
    let y_len = batch * y_item.iter().product::<usize>();
    check_buffer(e, layer, "dx", x_len)?;
    check_buffer(e, layer, "dy", y_len)?;
    if x_len == 0 {
        return Ok(());
    }
    // The forward's weight in the form its kernel reads: Rescaling's scale, Normalization's
    // 1 / sd (or sd, inverted).
    let scale = BufRef::Weight(WeightKey {
        node,
        role: WeightRole::Scale,
    });
    match &layer.op {
        GraphOp::Pad { pads } => {
            let copy = crop_copy(pads, y_item, x_item, batch);
            let detail = format!("d zero padding {pads:?}: dy's window {x_item:?}");
            strided_copy(e, layer, node, &copy, dy, dx, detail)
        }
        GraphOp::Crop { crops } => {
            e.push(Op::Clear { node, buffer: dx });
            let copy = pad_copy(crops, y_item, x_item, batch);
            let detail = format!("d cropping {crops:?}: dy into the kept window of {x_item:?}");
            strided_copy(e, layer, node, &copy, dy, dx, detail)
        }
        GraphOp::Permute { perm } => {
            // Output axis k is input axis perm[k]: dx reads dy with the inverse order.
            let mut inverse = vec![0; perm.len()];
            for (k, &a) in perm.iter().enumerate() {
                inverse[a] = k;
            }
            let copy = permute_copy(y_item, &inverse, batch);
            let detail = format!("d permute {perm:?}: dy {y_item:?} permuted back");
            strided_copy(e, layer, node, &copy, dy, dx, detail)
        }
        GraphOp::RepeatVector { n } => {
            let (dims, factors) = (vec![batch, 1, x_item[0]], vec![1, *n, 1]);
            let detail = format!("d repeat vector: dy summed over {n} repeats");
            block_sum(e, layer, node, &dims, &factors, dy, dx, detail)
        }
        GraphOp::Upsample {
            factors,
            interpolation: Interpolation::Nearest,
        } => {
            let mut dims = vec![batch];
            dims.extend_from_slice(x_item);
            let mut f = vec![1];
            f.extend_from_slice(factors);
            let detail = format!("d nearest upsampling {factors:?}: dy summed over each block");
            block_sum(e, layer, node, &dims, &f, dy, dx, detail)
        }
        GraphOp::Upsample {
            interpolation: Interpolation::Bilinear,
            ..
        } => bilinear_backward(e, layer, node, batch, x_item, y_item, dy, dx),
        GraphOp::Rescaling { scale: s, .. } => {
            // One scale, or one per last-axis channel.
            let mut shape = vec![1; x_item.len()];
            if let Some(last) = shape.last_mut() {
                *last = s.len();
            }
            let what = "d rescaling: dy * scale";
            scale_grad(e, layer, node, batch, x_item, &shape, dy, scale, dx, what)
        }
        GraphOp::Normalization(n) => {
            let shape = params.param(n.mean).value.shape().to_vec();
            let what = if n.invert {
                "d normalization (inverted): dy * sd"
            } else {
                "d normalization: dy / sd"
            };
            scale_grad(e, layer, node, batch, x_item, &shape, dy, scale, dx, what)
        }
        GraphOp::Scalar(s) => scalar_grad(e, layer, node, s, x_len, x, dy, dx),
        other => Err(Error::Internal(format!(
            "layer '{}': {} is not a shape-family op",
            layer.name,
            other.name()
        ))),
    }
}

/// The 32 uniform words of shape_grad.wgsl: three 8-word axis fields, then 8 others.
fn words(layer: &Node, fields: [&[usize]; 3], w: &[u32]) -> Result<Vec<u32>> {
    let rank = fields.iter().map(|f| f.len()).max().unwrap_or(0);
    if rank > MAX_RANK {
        return Err(layer_error(
            layer,
            "input_shape",
            format!("needs {rank} axes, the GPU kernels walk at most {MAX_RANK}"),
        ));
    }
    let mut words = Vec::with_capacity(4 * MAX_RANK);
    for field in fields {
        for k in 0..MAX_RANK {
            words.push(word(layer, "index", field.get(k).copied().unwrap_or(0))?);
        }
    }
    words.extend(w);
    words.resize(4 * MAX_RANK, 0);
    Ok(words)
}

/// dx (shape `dims`, batch first) = dy (each axis `factors` times longer) summed over blocks.
#[allow(clippy::too_many_arguments)]
fn block_sum(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    dims: &[usize],
    factors: &[usize],
    dy: BufRef,
    dx: BufRef,
    detail: String,
) -> Result<()> {
    let y_dims: Vec<usize> = dims.iter().zip(factors).map(|(d, f)| d * f).collect();
    let mut strides = vec![1; y_dims.len()];
    for k in (0..y_dims.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * y_dims[k + 1];
    }
    let total: usize = dims.iter().product();
    let block: usize = factors.iter().product();
    let w = [
        dims.len() as u32,
        word(layer, "length", total)?,
        word(layer, "factors", block)?,
    ];
    let words = words(layer, [dims, factors, &strides], &w)?;
    e.dispatch(
        layer,
        node,
        Kernel::BlockSum,
        vec![dy, BufRef::Dummy, dx],
        words,
        linear_workgroups(total, LINEAR_THREADS),
        detail,
    )
}

/// dx = dy times `weight` (shaped `weight_shape`, broadcast over each item).
#[allow(clippy::too_many_arguments)]
fn scale_grad(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    batch: usize,
    item: &[usize],
    weight_shape: &[usize],
    dy: BufRef,
    weight: BufRef,
    dx: BufRef,
    what: &str,
) -> Result<()> {
    let strides =
        broadcast_strides(item, weight_shape).map_err(|m| layer_error(layer, "weights", m))?;
    let len = batch * item.iter().product::<usize>();
    let w = [word(layer, "length", len)?, item.len() as u32];
    let words = words(layer, [item, &[], &strides], &w)?;
    e.dispatch(
        layer,
        node,
        Kernel::ScaleGrad,
        vec![dy, weight, dx],
        words,
        linear_workgroups(len, LINEAR_THREADS),
        format!("{what} over {len} values, weights {weight_shape:?}"),
    )
}

/// An operator node with constant `s.value`: dx from x and dy, elementwise.
#[allow(clippy::too_many_arguments)]
fn scalar_grad(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    s: &ScalarOp,
    len: usize,
    x: BufRef,
    dy: BufRef,
    dx: BufRef,
) -> Result<()> {
    let op = match s.op {
        BinaryOp::Add => 0,
        BinaryOp::Subtract => 1,
        BinaryOp::Multiply => 2,
        BinaryOp::Divide => 3,
        BinaryOp::Maximum => 4,
        BinaryOp::Minimum => 5,
    };
    let w = [
        word(layer, "length", len)?,
        op,
        u32::from(s.scalar_first),
        s.value.to_bits(),
    ];
    let words = words(layer, [&[], &[], &[]], &w)?;
    let detail = if s.scalar_first {
        format!("d ({} {:?} x) over {len} values", s.value, s.op)
    } else {
        format!("d (x {:?} {}) over {len} values", s.op, s.value)
    };
    e.dispatch(
        layer,
        node,
        Kernel::ScalarGrad,
        vec![x, dy, dx],
        words,
        linear_workgroups(len, LINEAR_THREADS),
        detail,
    )
}

/// UpSampling2D bilinear (NHWC items) backward: TensorFlow's ResizeBilinearGrad as a gather.
#[allow(clippy::too_many_arguments)]
fn bilinear_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    batch: usize,
    x_item: &[usize],
    y_item: &[usize],
    dy: BufRef,
    dx: BufRef,
) -> Result<()> {
    let (&[ih, iw, c], &[oh, ow, oc]) = (x_item, y_item) else {
        return Err(layer_error(
            layer,
            "input_shape",
            format!("bilinear upsampling of {x_item:?} to {y_item:?}: expected (H, W, C) items"),
        ));
    };
    if oc != c || oh == 0 || ow == 0 {
        return Err(layer_error(
            layer,
            "input_shape",
            format!("bilinear upsampling of {x_item:?} to {y_item:?}"),
        ));
    }
    let w = [
        word(layer, "batch", batch)?,
        word(layer, "height", ih)?,
        word(layer, "width", iw)?,
        word(layer, "channels", c)?,
        word(layer, "height", oh)?,
        word(layer, "width", ow)?,
        bilinear_scale(ih, oh).to_bits(),
        bilinear_scale(iw, ow).to_bits(),
    ];
    let words = words(layer, [&[], &[], &[]], &w)?;
    let len = batch * ih * iw * c;
    e.dispatch(
        layer,
        node,
        Kernel::BilinearGrad,
        vec![dy, BufRef::Dummy, dx],
        words,
        linear_workgroups(len, LINEAR_THREADS),
        format!("d bilinear upsampling {x_item:?} -> {y_item:?}: a gather over the taps"),
    )
}
