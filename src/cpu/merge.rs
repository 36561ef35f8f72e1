//! Merge and shape ops on the CPU: broadcast elementwise folds, constants, Dot as one GEMM per
//! item, bilinear upsampling, and the strided copies (`graph::StridedCopy`) that concatenate,
//! pad, crop, permute, repeat and nearest-upsample.

use ndarray::{ArrayD, ArrayView2, ArrayViewMut2, Axis, IxDyn, Zip};
use rayon::prelude::*;

use super::gemm;
use crate::graph::merge::{
    bilinear_scale, bilinear_tap, concat_copies, crop_copy, pad_copy, permute_copy, repeat_copy,
    upsample_nearest_copy, NORMALIZE_EPSILON,
};
use crate::graph::*;

/// Runs `copy` from `src` into `dst` (row-major buffers of the whole batch), items in parallel
/// when each item reads and writes only its own slice (as every copy of this family does: the
/// batch strides are the item sizes and the offsets lie inside one item).
pub(crate) fn strided_copy(copy: &StridedCopy, src: &[f32], dst: &mut [f32]) {
    let batch = copy.shape.first().copied().unwrap_or(1);
    let (src_item, dst_item) = (
        copy.src_strides.first().copied().unwrap_or(0),
        copy.dst_strides.first().copied().unwrap_or(0),
    );
    let per_item = copy.len() / batch.max(1);
    let separable = batch > 1
        && src_item * batch == src.len()
        && dst_item * batch == dst.len()
        && per_item >= 1024;
    if separable {
        let mut one = copy.clone();
        one.shape[0] = 1;
        dst.par_chunks_mut(dst_item)
            .zip(src.par_chunks(src_item))
            .for_each(|(d, s)| copy_serial(&one, s, d));
        return;
    }
    copy_serial(copy, src, dst);
}

fn copy_serial(copy: &StridedCopy, src: &[f32], dst: &mut [f32]) {
    let c = copy.coalesced();
    if c.is_empty() {
        return;
    }
    let rank = c.shape.len();
    let inner = c.shape[rank - 1];
    let (si, di) = (c.src_strides[rank - 1], c.dst_strides[rank - 1]);
    let outer: usize = c.shape[..rank - 1].iter().product();
    let mut index = vec![0usize; rank - 1];
    for _ in 0..outer {
        let mut s = c.src_offset;
        let mut d = c.dst_offset;
        for (k, &i) in index.iter().enumerate() {
            s += i * c.src_strides[k];
            d += i * c.dst_strides[k];
        }
        if si == 1 && di == 1 {
            dst[d..d + inner].copy_from_slice(&src[s..s + inner]);
        } else {
            for j in 0..inner {
                dst[d + j * di] = src[s + j * si];
            }
        }
        for k in (0..rank - 1).rev() {
            index[k] += 1;
            if index[k] < c.shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
}

fn contiguous(x: &ArrayD<f32>) -> std::borrow::Cow<'_, [f32]> {
    match x.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(x.iter().copied().collect()),
    }
}

fn item_shape(x: &ArrayD<f32>) -> &[usize] {
    &x.shape()[1..]
}

/// Output of item shape `out` filled by `copies` from `srcs` (one source per copy), zeros
/// elsewhere.
fn by_copies(
    batch: usize,
    out: &[usize],
    srcs: &[&ArrayD<f32>],
    copies: &[StridedCopy],
) -> ArrayD<f32> {
    let mut dims = vec![batch];
    dims.extend_from_slice(out);
    let mut y = vec![0.0f32; dims.iter().product()];
    for (x, c) in srcs.iter().zip(copies) {
        strided_copy(c, &contiguous(x), &mut y);
    }
    ArrayD::from_shape_vec(IxDyn(&dims), y).expect("output matches its shape")
}

/// The copy ops: Concat, Pad, Crop, Permute, RepeatVector, nearest Upsample.
pub(crate) fn copy_op(op: &Op, inputs: &[ArrayD<f32>], out: &[usize]) -> Option<ArrayD<f32>> {
    let batch = inputs.first()?.shape()[0];
    let x = &inputs[0];
    let xs = item_shape(x);
    let copies = match op {
        Op::Concat { axis } => {
            let shapes: Vec<&[usize]> = inputs.iter().map(item_shape).collect();
            concat_copies(*axis, &shapes, out, batch)
        }
        Op::Pad { pads } => vec![pad_copy(pads, xs, out, batch)],
        Op::Crop { crops } => vec![crop_copy(crops, xs, out, batch)],
        Op::Permute { perm } => vec![permute_copy(xs, perm, batch)],
        Op::RepeatVector { n } => vec![repeat_copy(*n, xs.iter().product(), batch)],
        Op::Upsample {
            factors,
            interpolation: Interpolation::Nearest,
        } => vec![upsample_nearest_copy(factors, xs, batch)],
        _ => return None,
    };
    let srcs: Vec<&ArrayD<f32>> = inputs.iter().collect();
    Some(by_copies(batch, out, &srcs, &copies))
}

/// `x` viewed with leading size-1 item axes up to `rank` item axes (Keras's expand_dims(x, 1)).
fn with_rank(x: &ArrayD<f32>, rank: usize) -> ndarray::ArrayViewD<'_, f32> {
    let mut v = x.view();
    while v.ndim() < rank + 1 {
        v.insert_axis_inplace(Axis(1));
    }
    v
}

/// Folds `m.op` over the inputs with broadcasting; Average divides by the count.
pub(crate) fn merge(
    m: &Merge,
    inputs: &[ArrayD<f32>],
    out_dims: &[usize],
    mask: Option<&ndarray::Array2<bool>>,
) -> ArrayD<f32> {
    let rank = out_dims.len() - 1;
    let op = m.op;
    let same = inputs.iter().all(|x| x.shape() == out_dims);
    let mut y = if same {
        let mut y = inputs[0].as_standard_layout().into_owned();
        for x in &inputs[1..] {
            let xs = contiguous(x);
            y.as_slice_mut()
                .expect("standard layout")
                .par_chunks_mut(1 << 14)
                .zip(xs.par_chunks(1 << 14))
                .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, &b)| *a = op.apply(*a, b)));
        }
        y
    } else {
        let first = with_rank(&inputs[0], rank);
        let mut y = first
            .broadcast(IxDyn(out_dims))
            .expect("the shape rule checked broadcasting")
            .to_owned();
        for x in &inputs[1..] {
            let v = with_rank(x, rank);
            let b = v.broadcast(IxDyn(out_dims)).expect("checked broadcasting");
            Zip::from(&mut y)
                .and(&b)
                .par_for_each(|a, &b| *a = op.apply(*a, b));
        }
        y
    };
    if m.average {
        let n = inputs.len() as f32;
        y.mapv_inplace(|v| v / n);
    }
    if let (true, Some(mask)) = (m.masked, mask) {
        // Steps the mask drops: 0 for Multiply, the first input for Maximum/Minimum.
        let (t, width) = (out_dims[1], out_dims[2..].iter().product::<usize>());
        let first = contiguous(&inputs[0]);
        let data = y.as_slice_mut().expect("a new array is contiguous");
        for ((row, dst), &keep) in data
            .chunks_exact_mut(width.max(1))
            .enumerate()
            .zip(mask.iter())
        {
            if !keep {
                if m.masked_step_is_zero() {
                    dst.fill(0.0);
                } else {
                    dst.copy_from_slice(&first[row * width..(row + 1) * width]);
                }
            }
        }
        debug_assert_eq!(mask.len(), data.len() / (t * width).max(1) * t);
    }
    y
}

pub(crate) fn scalar(s: &ScalarOp, mut x: ArrayD<f32>) -> ArrayD<f32> {
    x.mapv_inplace(|v| s.apply(v));
    x
}

/// Scales each row of `k` values to unit L2 norm as keras.ops.normalize does.
fn normalize_rows(data: &mut [f32], k: usize) {
    for row in data.chunks_exact_mut(k.max(1)) {
        let ss: f32 = row.iter().map(|v| v * v).sum();
        let inv = (1.0 / ss.sqrt()).min(1.0 / NORMALIZE_EPSILON);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Dot: both inputs permuted to (m, k) and (n, k) per item, then one (m x k)(k x n) GEMM per item.
pub(crate) fn dot(d: &Dot, x: &ArrayD<f32>, y: &ArrayD<f32>, out_dims: &[usize]) -> ArrayD<f32> {
    let batch = x.shape()[0];
    let l = d.layout(item_shape(x), item_shape(y));
    let (m, n, k) = (l.m, l.n, l.k);
    let mut a = vec![0.0f32; batch * m * k];
    let mut b = vec![0.0f32; batch * n * k];
    strided_copy(
        &permute_copy(item_shape(x), &l.x_order, batch),
        &contiguous(x),
        &mut a,
    );
    strided_copy(
        &permute_copy(item_shape(y), &l.y_order, batch),
        &contiguous(y),
        &mut b,
    );
    if d.normalize {
        normalize_rows(&mut a, k);
        normalize_rows(&mut b, k);
    }
    let mut out = vec![0.0f32; batch * m * n];
    if m * n > 0 {
        out.par_chunks_mut(m * n)
            .zip(a.par_chunks(m * k.max(1)).zip(b.par_chunks(n * k.max(1))))
            .for_each(|(o, (ai, bi))| {
                if k == 0 {
                    return;
                }
                let av = ArrayView2::from_shape((m, k), ai).expect("m x k");
                let bv = ArrayView2::from_shape((n, k), bi).expect("n x k");
                let ov = ArrayViewMut2::from_shape((m, n), o).expect("m x n");
                gemm::matmul_into_on(av, bv.t(), ov, false);
            });
    }
    ArrayD::from_shape_vec(IxDyn(out_dims), out).expect("Dot output matches its shape")
}

/// UpSampling2D(interpolation='bilinear'): TensorFlow's half-pixel bilinear resize.
pub(crate) fn bilinear(x: &ArrayD<f32>, out_dims: &[usize]) -> ArrayD<f32> {
    let (ih, iw, c) = (x.shape()[1], x.shape()[2], x.shape()[3]);
    let (oh, ow) = (out_dims[1], out_dims[2]);
    let (sy, sx) = (bilinear_scale(ih, oh), bilinear_scale(iw, ow));
    let xs: Vec<_> = (0..ow).map(|o| bilinear_tap(o, iw, sx)).collect();
    let src = contiguous(x);
    let mut out = vec![0.0f32; out_dims.iter().product()];
    if !out.is_empty() {
        out.par_chunks_mut(ow * c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (n, oy) = (row / oh, row % oh);
                let (y0, y1, yl) = bilinear_tap(oy, ih, sy);
                let img = &src[n * ih * iw * c..];
                for (ox, &(x0, x1, xl)) in xs.iter().enumerate() {
                    for ch in 0..c {
                        let at = |yy: usize, xx: usize| img[(yy * iw + xx) * c + ch];
                        let top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * xl;
                        let bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * xl;
                        dst[ox * c + ch] = top + (bottom - top) * yl;
                    }
                }
            });
    }
    ArrayD::from_shape_vec(IxDyn(out_dims), out).expect("bilinear output matches its shape")
}
