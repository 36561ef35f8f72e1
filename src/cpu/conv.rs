//! Convolutions and poolings of any rank (1-D to 3-D, as (D, H, W) windows). The plain 2-D case
//! (Conv1D is Conv2D on a one-row image) keeps the Winograd / im2col fast paths of `cpu/mod.rs`;
//! dilation, groups and 3-D go through a general im2col + one GEMM per group; depthwise is a
//! direct loop over taps with the channels innermost; transposed convolution is one GEMM per
//! image (input pixels x (taps, filters)) then col2im.

use ndarray::{s, ArrayD, ArrayView2, ArrayViewMut2, IxDyn};
use rayon::prelude::*;

use super::{activation, bias_activation_rows, gemm, ConvArgs};
use crate::error::{Error, Result};
use crate::graph::*;

fn contiguous(x: &ArrayD<f32>) -> std::borrow::Cow<'_, [f32]> {
    match x.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(x.iter().copied().collect()),
    }
}

fn shaped(out: Vec<f32>, dims: &[usize]) -> Result<ArrayD<f32>> {
    ArrayD::from_shape_vec(IxDyn(dims), out)
        .map_err(|e| Error::Internal(format!("conv output {dims:?}: {e}")))
}

/// Input coordinate of output `o`, tap `k` along one axis, if inside `0..size`.
#[inline]
fn tap_at(
    o: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    size: usize,
) -> Option<usize> {
    let i = (o * stride + k * dilation) as isize - pad as isize;
    (i >= 0 && (i as usize) < size).then_some(i as usize)
}

/// Conv1D/2D/3D. `out_dims` includes the batch axis. With `pool` (only for a plain 2-D or 1-D
/// convolution, [`Conv::plane`]) the result is the pooled output, pooled group by group.
pub(super) fn conv(
    c: &Conv,
    params: &ParamStore,
    x: &ArrayD<f32>,
    pool: Option<&Pool>,
    out_dims: &[usize],
) -> Result<ArrayD<f32>> {
    let n = x.shape()[0];
    let w = &c.window;
    if let Some(plane) = c.plane() {
        // The plain case: the existing 2-D paths, with a 1-D input as a one-row image.
        let [kh, kw] = plane.kernel;
        let kernel = params
            .get(c.kernel)
            .into_shape_with_order((kh, kw, c.in_channels, c.filters))
            .map_err(|e| Error::Internal(format!("conv kernel: {e}")))?;
        let args = ConvArgs {
            filters: c.filters,
            window: plane,
            in_channels: c.in_channels,
            kernel,
            bias: c.bias.map(|b| params.view1(b)),
            activation: c.activation,
            kernel_generation: Some(params.generation(c.kernel)),
        };
        let x = x.as_standard_layout();
        let x4 = x
            .view()
            .into_shape_with_order((n, plane.in_hw[0], plane.in_hw[1], c.in_channels))
            .map_err(|e| Error::Internal(format!("conv input: {e}")))?;
        let y = super::conv2d_then_pool(&args, &x4, pool);
        return super::reshape(y.into_dyn(), out_dims);
    }
    if pool.is_some() {
        return Err(Error::Internal(
            "a pooling is fused only into a plain convolution".into(),
        ));
    }
    let input = contiguous(x);
    let groups = c.groups.max(1);
    let cg = c.in_channels / groups;
    let fg = c.filters / groups;
    let f = c.filters;
    let taps = w.taps();
    let k = taps * cg;
    let pixels = w.out_positions();
    let in_image = w.in_positions() * c.in_channels;
    let out_image = pixels * f;
    let mut out = vec![0.0f32; n * out_image];
    if in_image == 0 || out_image == 0 {
        return shaped(out, out_dims);
    }
    let kernel = params.slice(c.kernel);
    let kernel = ArrayView2::from_shape((k, f), kernel)
        .map_err(|e| Error::Internal(format!("conv kernel: {e}")))?;
    let bias = c.bias.map(|b| params.view1(b));
    let group = (4096 / pixels.max(1)).clamp(1, n.max(1));
    let threaded_gemm = n.div_ceil(group) < rayon::current_num_threads();
    out.par_chunks_mut(group * out_image)
        .zip(input.par_chunks(group * in_image))
        .for_each(|(y, images)| {
            let m = y.len() / f;
            let mut cols = vec![0.0f32; m * k];
            for g in 0..groups {
                for (img, dst) in images
                    .chunks_exact(in_image)
                    .zip(cols.chunks_exact_mut(pixels * k))
                {
                    im2col_nd(w, c.in_channels, g * cg, cg, img, dst);
                }
                let a = ArrayView2::from_shape((m, k), &cols).expect("m x k scratch");
                let b = kernel.slice(s![.., g * fg..(g + 1) * fg]);
                let mut yv = ArrayViewMut2::from_shape((m, f), &mut *y).expect("m x filters");
                let yg = yv.slice_mut(s![.., g * fg..(g + 1) * fg]);
                gemm::matmul_into_on(a, b, yg, threaded_gemm);
            }
            bias_activation_rows(y, f, bias, c.activation);
        });
    shaped(out, out_dims)
}

/// im2col of one channels-last image for channels `c0..c0+cg` of `channels`: one row per output
/// position, columns (kd, kh, kw, channel) like the kernel flattened to (taps * cg, filters).
fn im2col_nd(w: &Window, channels: usize, c0: usize, cg: usize, img: &[f32], cols: &mut [f32]) {
    let [od, oh, ow] = w.output;
    let [id, ih, iw] = w.input;
    let [kd, kh, kw] = w.kernel;
    let [sd, sh, sw] = w.strides;
    let [dd, dh, dw] = w.dilation;
    let [pd, ph, pw] = w.pad_before;
    let row_len = w.taps() * cg;
    let mut rows = cols.chunks_exact_mut(row_len);
    for oz in 0..od {
        for oy in 0..oh {
            for ox in 0..ow {
                let row = rows.next().expect("one row per output position");
                let mut at = 0;
                for tz in 0..kd {
                    let z = tap_at(oz, tz, sd, dd, pd, id);
                    for ty in 0..kh {
                        let y = tap_at(oy, ty, sh, dh, ph, ih);
                        for tx in 0..kw {
                            let dst = &mut row[at..at + cg];
                            at += cg;
                            match (z, y, tap_at(ox, tx, sw, dw, pw, iw)) {
                                (Some(z), Some(y), Some(x)) => {
                                    let src = ((z * ih + y) * iw + x) * channels + c0;
                                    dst.copy_from_slice(&img[src..src + cg]);
                                }
                                _ => dst.fill(0.0),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// DepthwiseConv1D/2D: for each output position, the in-bounds taps times each channel's
/// `multiplier` weights; output channel c * multiplier + m (the kernel's (c, m) order).
pub(super) fn depthwise(
    c: &DepthwiseConv,
    params: &ParamStore,
    x: &ArrayD<f32>,
    out_dims: &[usize],
) -> Result<ArrayD<f32>> {
    let n = x.shape()[0];
    let w = &c.window;
    let input = contiguous(x);
    let (ch, mult) = (c.channels, c.multiplier);
    let cm = ch * mult;
    let [od, oh, ow] = w.output;
    let [id, ih, iw] = w.input;
    let [kd, kh, kw] = w.kernel;
    let in_image = w.in_positions() * ch;
    let mut out = vec![0.0f32; n * w.out_positions() * cm];
    if out.is_empty() || in_image == 0 {
        return shaped(out, out_dims);
    }
    let kernel = params.slice(c.kernel);
    let bias = c.bias.map(|b| params.slice(b));
    // One task per output row (image, z, y).
    out.par_chunks_mut(ow * cm)
        .enumerate()
        .for_each(|(r, row)| {
            let oy = r % oh;
            let oz = (r / oh) % od;
            let img = &input[(r / (oh * od)) * in_image..][..in_image];
            for ox in 0..ow {
                let acc = &mut row[ox * cm..][..cm];
                match bias {
                    Some(b) => acc.copy_from_slice(b),
                    None => acc.fill(0.0),
                }
                for tz in 0..kd {
                    let Some(z) = tap_at(oz, tz, w.strides[0], w.dilation[0], w.pad_before[0], id)
                    else {
                        continue;
                    };
                    for ty in 0..kh {
                        let Some(y) =
                            tap_at(oy, ty, w.strides[1], w.dilation[1], w.pad_before[1], ih)
                        else {
                            continue;
                        };
                        for tx in 0..kw {
                            let Some(xx) =
                                tap_at(ox, tx, w.strides[2], w.dilation[2], w.pad_before[2], iw)
                            else {
                                continue;
                            };
                            let src = &img[((z * ih + y) * iw + xx) * ch..][..ch];
                            let tap = (tz * kh + ty) * kw + tx;
                            let wt = &kernel[tap * cm..][..cm];
                            if mult == 1 {
                                for ((a, &v), &k) in acc.iter_mut().zip(src).zip(wt) {
                                    *a += v * k;
                                }
                            } else {
                                for ((a, &v), k) in acc
                                    .chunks_exact_mut(mult)
                                    .zip(src)
                                    .zip(wt.chunks_exact(mult))
                                {
                                    for (aa, &kk) in a.iter_mut().zip(k) {
                                        *aa += v * kk;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            activation::apply_rows(c.activation, row, cm);
        });
    shaped(out, out_dims)
}

/// Conv1D/2D/3DTranspose: per image, cols = X (in positions, C) . Wᵀ ((C, taps * F), the Keras
/// kernel (taps, F, C) read transposed), then each input position's taps are added at output
/// position i * stride + k * dilation - pad_before.
pub(super) fn conv_transpose(
    c: &ConvTranspose,
    params: &ParamStore,
    x: &ArrayD<f32>,
    out_dims: &[usize],
) -> Result<ArrayD<f32>> {
    let n = x.shape()[0];
    let input = contiguous(x);
    let (cin, f) = (c.in_channels, c.filters);
    let taps = c.taps();
    let in_pos: usize = c.input.iter().product();
    let out_pos: usize = c.output.iter().product();
    let (in_image, out_image) = (in_pos * cin, out_pos * f);
    let mut out = vec![0.0f32; n * out_image];
    if in_image == 0 || out_image == 0 {
        return shaped(out, out_dims);
    }
    let kernel = ArrayView2::from_shape((taps * f, cin), params.slice(c.kernel))
        .map_err(|e| Error::Internal(format!("conv transpose kernel: {e}")))?;
    let bias = c.bias.map(|b| params.view1(b));
    let threaded_gemm = n < rayon::current_num_threads();
    let [id, ih, iw] = c.input;
    let [od, oh, ow] = c.output;
    let [kd, kh, kw] = c.kernel_size;
    out.par_chunks_mut(out_image)
        .zip(input.par_chunks(in_image))
        .for_each(|(y, img)| {
            let mut cols = vec![0.0f32; in_pos * taps * f];
            let a = ArrayView2::from_shape((in_pos, cin), img).expect("image");
            let cv = ArrayViewMut2::from_shape((in_pos, taps * f), &mut cols[..]).expect("cols");
            gemm::matmul_into_on(a, kernel.t(), cv, threaded_gemm);
            let place = |i: usize, k: usize, a: usize, size: usize| -> Option<usize> {
                let o = (i * c.strides[a] + k * c.dilation[a]) as isize - c.pad_before[a] as isize;
                (o >= 0 && (o as usize) < size).then_some(o as usize)
            };
            let mut src = cols.chunks_exact(f);
            for iz in 0..id {
                for iy in 0..ih {
                    for ix in 0..iw {
                        for tz in 0..kd {
                            let z = place(iz, tz, 0, od);
                            for ty in 0..kh {
                                let yy = place(iy, ty, 1, oh);
                                for tx in 0..kw {
                                    let v = src.next().expect("one row per tap");
                                    if let (Some(z), Some(yy), Some(xx)) =
                                        (z, yy, place(ix, tx, 2, ow))
                                    {
                                        let dst = &mut y[((z * oh + yy) * ow + xx) * f..][..f];
                                        dst.iter_mut().zip(v).for_each(|(d, &s)| *d += s);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            bias_activation_rows(y, f, bias, c.activation);
        });
    shaped(out, out_dims)
}

/// Max or average pooling of any rank; windows clipped to the input (TensorFlow: padding never
/// wins a max, and `same` averages divide by the in-bounds count).
pub(super) fn pool(p: &Pool, x: &ArrayD<f32>, out_dims: &[usize]) -> Result<ArrayD<f32>> {
    let w = &p.window;
    let n = x.shape()[0];
    let [od, oh, ow] = w.output;
    let [id, ih, iw] = w.input;
    let ch = p.channels;
    let input = contiguous(x);
    let in_image = id * ih * iw * ch;
    let mut out = vec![0.0f32; n * od * oh * ow * ch];
    if out.is_empty() || input.is_empty() {
        return shaped(out, out_dims);
    }
    // One task per image, as plain nested loops (the shipped CNNs' 2x2 pools run here).
    out.par_chunks_mut(od * oh * ow * ch)
        .zip(input.par_chunks(in_image))
        .for_each(|(o, img)| pool_image(p, o, img));
    shaped(out, out_dims)
}

/// Pools consecutive whole images of `src` into `dest`: a fused convolution's staged group.
pub(super) fn pool_images(p: &Pool, dest: &mut [f32], src: &[f32]) {
    let in_image = p.window.input.iter().product::<usize>() * p.channels;
    let out_image = p.window.output.iter().product::<usize>() * p.channels;
    for (d, x) in dest
        .chunks_exact_mut(out_image)
        .zip(src.chunks_exact(in_image))
    {
        pool_image(p, d, x);
    }
}

super::simd::multiversion! {
/// One image's max or average pooling into `o` (NDHWC, any rank as 3-D).
fn pool_image(p: &Pool, o: &mut [f32], img: &[f32]) {
    let w = &p.window;
    let [od, oh, ow] = w.output;
    let [id, ih, iw] = w.input;
    let ch = p.channels;
    let range = |o: usize, a: usize, size: usize| {
        let start = (o * w.strides[a]) as isize - w.pad_before[a] as isize;
        let end = (start + w.kernel[a] as isize).min(size as isize);
        start.max(0) as usize..end.max(0) as usize
    };
    let mut at = 0;
    for oz in 0..od {
        let zs = range(oz, 0, id);
        for oy in 0..oh {
            let ys = range(oy, 1, ih);
            for ox in 0..ow {
                let xs = range(ox, 2, iw);
                let acc = &mut o[at..at + ch];
                at += ch;
                let count = (zs.len() * ys.len() * xs.len()) as f32;
                match p.op {
                    PoolOp::Max => acc.fill(f32::NEG_INFINITY),
                    PoolOp::Average => acc.fill(0.0),
                }
                for z in zs.clone() {
                    for yy in ys.clone() {
                        for xx in xs.clone() {
                            let src = &img[((z * ih + yy) * iw + xx) * ch..][..ch];
                            match p.op {
                                PoolOp::Max => acc
                                    .iter_mut()
                                    .zip(src)
                                    .for_each(|(a, &v)| *a = a.max(v)),
                                PoolOp::Average => {
                                    acc.iter_mut().zip(src).for_each(|(a, &v)| *a += v)
                                }
                            }
                        }
                    }
                }
                if p.op == PoolOp::Average {
                    acc.iter_mut().for_each(|a| *a /= count);
                }
            }
        }
    }
}
}

/// Global max or average over all spatial positions; with a mask (GlobalAveragePooling1D after
/// a masking layer) Keras's masked mean: the sum over unmasked steps divided by their count.
pub(super) fn global_pool(
    op: PoolOp,
    x: &ArrayD<f32>,
    mask: Option<&ndarray::Array2<bool>>,
    out_dims: &[usize],
) -> Result<ArrayD<f32>> {
    let n = x.shape()[0];
    let ch = *x.shape().last().unwrap_or(&1);
    let input = contiguous(x);
    let positions = input.len().checked_div(n * ch).unwrap_or(0);
    if let Some(m) = mask {
        if m.dim() != (n, positions) {
            return Err(Error::Input(format!(
                "mask of shape {:?} for {n} sequences of {positions} steps",
                m.shape()
            )));
        }
    }
    let mut out = vec![0.0f32; n * ch];
    if out.is_empty() {
        return shaped(out, out_dims);
    }
    out.par_chunks_mut(ch).enumerate().for_each(|(b, acc)| {
        let img = &input[b * positions * ch..][..positions * ch];
        let keep = |t: usize| mask.is_none_or(|m| m[[b, t]]);
        match op {
            PoolOp::Max => {
                acc.fill(f32::NEG_INFINITY);
                for px in img.chunks_exact(ch) {
                    acc.iter_mut().zip(px).for_each(|(a, &v)| *a = a.max(v));
                }
            }
            PoolOp::Average => {
                acc.fill(0.0);
                let mut count = 0usize;
                for (t, px) in img.chunks_exact(ch).enumerate() {
                    if keep(t) {
                        count += 1;
                        acc.iter_mut().zip(px).for_each(|(a, &v)| *a += v);
                    }
                }
                // Keras divides by the mask's sum even when it is 0 (all steps masked): NaN.
                let count = count as f32;
                acc.iter_mut().for_each(|a| *a /= count);
            }
        }
    });
    shaped(out, out_dims)
}
