//! Backward of the merge family's products and row-wise ops on the GPU (cpu/grad/merge.rs
//! dot_backward and cpu/grad/norm.rs are the reference), beside merge.rs's folds:
//!  - Dot: per operand one batched product of dy with the other operand's rows (normalized
//!    when `normalize`), then back through this operand's normalization and permutation.
//!  - PReLU: dx by x's sign; alpha's gradient summed over the batch and the shared axes.
//!  - Softmax / log_softmax over any contiguous axes (the Softmax layer).
//!
//! The arithmetic is shaders/merge_grad.wgsl's; every sum runs in one thread in a fixed order.

use crate::error::Result;
use crate::graph::merge::{permute_copy, NORMALIZE_EPSILON};
use crate::graph::{axis_layout, Dot, Node, Softmax, StridedCopy};

use super::super::kernels::{Kernel, LINEAR_THREADS};
use super::super::plan::{BufRef, Op};
use super::conv::{check_buffer, layer_error};
use super::merge::{grad_words, strided_copy, sum_to, MAX_RANK};
use super::{linear_workgroups, word, Emit};

/// Rows (batch, rows, k) of Dot operand `x` (item shape `shape`) with its axes in `order`: the
/// buffer itself when the order is the identity, else a permuted copy (`Some`: a scratch).
#[allow(clippy::too_many_arguments)]
fn dot_rows(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    batch: usize,
    shape: &[usize],
    order: &[usize],
    x: BufRef,
    what: &'static str,
) -> Result<(BufRef, Option<BufRef>)> {
    if order.iter().enumerate().all(|(a, &b)| a == b) {
        return Ok((x, None));
    }
    let floats = batch * shape.iter().product::<usize>();
    let rows = e.scratch(node, what, floats);
    let copy = permute_copy(shape, order, batch);
    strided_copy(
        e,
        layer,
        node,
        &copy,
        x,
        rows,
        format!("d dot: {what} {shape:?} as rows"),
    )?;
    Ok((rows, Some(rows)))
}

/// Dot backward, operand `side`'s gradient `dx` (0: x, 1: y), from dy (batch x m x n, the
/// forward's product of x's rows A (m x k) and y's rows B (n x k)): dA = dy B, dB = dyᵀ A with
/// the other operand's rows normalized when `normalize`, then back through this operand's
/// normalization, then into its own axis order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dot_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    d: &Dot,
    batch: usize,
    shapes: [&[usize]; 2],
    xs: [BufRef; 2],
    dy: BufRef,
    side: usize,
    dx: BufRef,
) -> Result<()> {
    if d.output_shape(shapes[0], shapes[1]).is_err() || side > 1 {
        return Err(layer_error(
            layer,
            "axes",
            format!(
                "axes {:?} do not fit inputs of shapes {:?} and {:?}",
                d.axes, shapes[0], shapes[1]
            ),
        ));
    }
    let l = d.layout(shapes[0], shapes[1]);
    let (m, n, k) = (l.m, l.n, l.k);
    if m * n * k == 0 {
        return Ok(());
    }
    check_buffer(e, layer, "dy", batch * m * n)?;
    let orders = [&l.x_order, &l.y_order];
    let rows_of = [m, n];
    let other = 1 - side;
    let mut scratch = Vec::new();
    // The other operand's rows as the product read them (normalized when asked).
    let (mut o, made) = dot_rows(
        e,
        layer,
        node,
        batch,
        shapes[other],
        orders[other],
        xs[other],
        "dot operand",
    )?;
    scratch.extend(made);
    let cap = 1.0 / NORMALIZE_EPSILON;
    if d.normalize {
        let total_rows = batch * rows_of[other];
        if made.is_none() {
            let copy = e.scratch(node, "dot operand", total_rows * k);
            e.push(Op::Copy {
                node,
                src: o,
                dst: copy,
                bytes: 4 * (total_rows * k) as u64,
            });
            scratch.push(copy);
            o = copy;
        }
        let mut words = vec![0u32; 3 * MAX_RANK];
        words.extend([
            word(layer, "rows", total_rows)?,
            word(layer, "depth", k)?,
            cap.to_bits(),
            0,
            0,
            0,
            0,
            0,
        ]);
        e.dispatch(
            layer,
            node,
            Kernel::NormalizeRows,
            vec![BufRef::Dummy, BufRef::Dummy, o],
            words,
            linear_workgroups(total_rows, LINEAR_THREADS),
            format!("d dot: L2-normalize {total_rows} rows of {k}, in place"),
        )?;
    }
    let identity = orders[side].iter().enumerate().all(|(a, &b)| a == b);
    let rows = rows_of[side];
    let target = if identity {
        dx
    } else {
        let t = e.scratch(node, "dot operand gradient", batch * rows * k);
        scratch.push(t);
        t
    };
    // dA[t, i, q] = sum_j dy[t, i, j] B[t, j, q]; dB[t, j, q] = sum_i dy[t, i, j] A[t, i, q].
    let (sum_len, row_stride, sum_stride) = if side == 0 { (n, n, 1) } else { (m, 1, n) };
    let w = [
        word(layer, "batch", batch)?,
        word(layer, "rows", rows)?,
        word(layer, "depth", k)?,
        word(layer, "columns", sum_len)?,
        word(layer, "length", m * n)?,
        word(layer, "columns", row_stride)?,
        word(layer, "columns", sum_stride)?,
        word(layer, "length", sum_len * k)?,
    ];
    e.dispatch(
        layer,
        node,
        Kernel::DotGrad,
        vec![dy, o, BufRef::Dummy, target],
        grad_words(layer, [&[], &[], &[], &[]], w)?,
        linear_workgroups(batch * rows * k, LINEAR_THREADS),
        format!(
            "d dot: operand {} rows, {batch} products of {rows}x{sum_len} by {sum_len}x{k}",
            side + 1
        ),
    )?;
    if d.normalize {
        let (raw, made) = dot_rows(
            e,
            layer,
            node,
            batch,
            shapes[side],
            orders[side],
            xs[side],
            "dot operand",
        )?;
        scratch.extend(made);
        let total_rows = batch * rows;
        let w = [
            word(layer, "rows", total_rows)?,
            word(layer, "depth", k)?,
            cap.to_bits(),
            0,
            0,
            0,
            0,
            0,
        ];
        e.dispatch(
            layer,
            node,
            Kernel::NormalizeRowsGrad,
            vec![raw, BufRef::Dummy, BufRef::Dummy, target],
            grad_words(layer, [&[], &[], &[], &[]], w)?,
            linear_workgroups(total_rows, LINEAR_THREADS),
            format!("d dot: through the L2 normalization of {total_rows} rows of {k}"),
        )?;
    }
    if !identity {
        // The forward's permutation reversed: from the rows into dx's own axis order.
        let forward = permute_copy(shapes[side], orders[side], batch);
        let back = StridedCopy {
            shape: forward.shape.clone(),
            src_strides: forward.dst_strides.clone(),
            src_offset: forward.dst_offset,
            dst_strides: forward.src_strides.clone(),
            dst_offset: forward.src_offset,
        };
        strided_copy(
            e,
            layer,
            node,
            &back,
            target,
            dx,
            format!(
                "d dot: operand {} rows back to {:?}",
                side + 1,
                shapes[side]
            ),
        )?;
    }
    for b in scratch {
        e.release(b);
    }
    Ok(())
}

/// PReLU backward on x (item shape `item`) with alpha (shape `alpha_shape`: the item's rank, 1
/// on the shared axes): `dx` (dy, dy * alpha or 0 by x's sign) and/or `dalpha`, the sum of
/// dy * min(x, 0) over the batch and the shared axes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prelu_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    batch: usize,
    item: &[usize],
    alpha_shape: &[usize],
    x: BufRef,
    alpha: BufRef,
    dy: BufRef,
    dx: Option<BufRef>,
    dalpha: Option<BufRef>,
) -> Result<()> {
    let strides = crate::graph::broadcast_strides(item, alpha_shape)
        .map_err(|m| layer_error(layer, "alpha", m))?;
    let total = batch * item.iter().product::<usize>();
    if total == 0 {
        return Ok(());
    }
    check_buffer(e, layer, "x", total)?;
    let run = |e: &mut dyn Emit, mode: u32, dst: BufRef, detail: String| -> Result<()> {
        let words = grad_words(
            layer,
            [item, &strides, &[], &[]],
            [
                item.len() as u32,
                word(layer, "length", total)?,
                mode,
                0,
                0,
                0,
                0,
                0,
            ],
        )?;
        e.dispatch(
            layer,
            node,
            Kernel::PReluGrad,
            vec![x, alpha, dy, dst],
            words,
            linear_workgroups(total, LINEAR_THREADS),
            detail,
        )
    };
    if let Some(dx) = dx {
        run(e, 0, dx, format!("d prelu: dx over {total} values"))?;
    }
    if let Some(dalpha) = dalpha {
        let terms = e.scratch(node, "prelu alpha terms", total);
        run(
            e,
            1,
            terms,
            format!("d prelu: dy * min(x, 0) over {total} values"),
        )?;
        let mut out = vec![batch];
        out.extend_from_slice(item);
        let mut dims = vec![1];
        dims.extend_from_slice(alpha_shape);
        sum_to(
            e,
            layer,
            node,
            &out,
            &dims,
            terms,
            dalpha,
            1.0,
            format!("d prelu: alpha {alpha_shape:?}, summed over the batch and shared axes"),
        )?;
        e.release(terms);
    }
    Ok(())
}

/// Softmax (or log_softmax) over `s.axes` of an input of item shape `item`, backward from its
/// output `y` (the forward's value) and dy into `dx`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn softmax_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    s: &Softmax,
    batch: usize,
    item: &[usize],
    y: BufRef,
    dy: BufRef,
    dx: BufRef,
) -> Result<()> {
    let l = axis_layout(item, &s.axes).map_err(|m| layer_error(layer, "axis", m))?;
    let groups = batch * l.outer * l.inner;
    if groups * l.reduced == 0 {
        return Ok(());
    }
    check_buffer(e, layer, "x", groups * l.reduced)?;
    let w = [
        word(layer, "groups", groups)?,
        word(layer, "axis", l.reduced)?,
        word(layer, "axis", l.inner.max(1))?,
        u32::from(s.log),
        0,
        0,
        0,
        0,
    ];
    e.dispatch(
        layer,
        node,
        Kernel::SoftmaxAxesGrad,
        vec![y, dy, BufRef::Dummy, dx],
        grad_words(layer, [&[], &[], &[], &[]], w)?,
        linear_workgroups(groups, LINEAR_THREADS),
        format!(
            "d {}: {groups} groups of {} values {} apart",
            if s.log { "log_softmax" } else { "softmax" },
            l.reduced,
            l.inner.max(1)
        ),
    )
}
