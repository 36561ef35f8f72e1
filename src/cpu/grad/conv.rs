//! Backward of the convolutions, on the same (D, H, W) window geometry as the forward.
//!
//! Conv (any rank, groups, dilation, same / causal padding): per chunk of images, im2col of x
//! gives dW += colsᵀ · dY (one GEMM per group) and dcols = dY · Wᵀ, which col2im adds into dx.
//! ConvTranspose is the same convolution read the other way: im2col of dy over the transposed
//! geometry gives dx = cols · W and dW += colsᵀ · X. Depthwise runs direct loops over taps with
//! the channels innermost, as its forward does. Chunks of images run in parallel; each returns
//! its own parameter partials, summed in chunk order so a step is deterministic.

use ndarray::{s, ArrayD, ArrayView2, ArrayViewMut2, IxDyn};
use rayon::prelude::*;

use crate::cpu::gemm;
use crate::error::{Error, Result};
use crate::graph::*;
use crate::train::ParamGrads;

/// About this many GEMM rows per chunk of images (the forward's choice).
const CHUNK_ROWS: usize = 4096;
/// Input channels from which a stride-1 conv's dx runs as the flipped forward convolution.
const FLIPPED_MIN_CHANNELS: usize = 8;

fn linear_only(activation: Activation, class: &str, name: &str) -> Result<()> {
    if activation == Activation::Linear {
        return Ok(());
    }
    Err(Error::Internal(format!(
        "node '{name}': the training graph runs {class}'s activation as its own node"
    )))
}

fn shaped(data: Vec<f32>, dims: &[usize], what: &str) -> Result<ArrayD<f32>> {
    ArrayD::from_shape_vec(IxDyn(dims), data)
        .map_err(|e| Error::Internal(format!("{what} gradient {dims:?}: {e}")))
}

/// `x` as one row-major slice (borrowed when it already is).
pub(super) fn flat(x: &ArrayD<f32>) -> std::borrow::Cow<'_, [f32]> {
    match x.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(x.iter().copied().collect()),
    }
}

/// Runs `work(chunk, dx_chunk)` over `chunks` chunks in parallel, `dx_chunk` the chunk's slice
/// of `dx` (empty when `dx` is: the input gradient is not wanted), and returns each chunk's
/// parameter partials in chunk order.
pub(super) fn over_chunks<F>(
    chunks: usize,
    dx: &mut [f32],
    dx_chunk: usize,
    work: F,
) -> Vec<Vec<f32>>
where
    F: Fn(usize, &mut [f32]) -> Vec<f32> + Sync,
{
    if dx.is_empty() {
        (0..chunks)
            .into_par_iter()
            .map(|c| work(c, &mut []))
            .collect()
    } else {
        dx.par_chunks_mut(dx_chunk.max(1))
            .enumerate()
            .map(|(c, d)| work(c, d))
            .collect()
    }
}

/// The sum of equal-length partials, in order (None when there are none or they are empty).
fn sum_partials(parts: &[Vec<f32>], offset: usize, len: usize) -> Option<Vec<f32>> {
    let first = parts.first()?;
    if first.len() < offset + len {
        return None;
    }
    let mut acc = first[offset..offset + len].to_vec();
    for p in &parts[1..] {
        acc.iter_mut()
            .zip(&p[offset..offset + len])
            .for_each(|(a, &b)| *a += b);
    }
    Some(acc)
}

/// Sum of `rows` of width `width` into `acc`.
fn add_rows(acc: &mut [f32], rows: &[f32], width: usize) {
    for row in rows.chunks_exact(width.max(1)) {
        acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
    }
}

/// Input taps lo..hi of kernel axis `a` that fall inside the input for output position `o`,
/// and the input coordinate of tap lo (meaningless when lo == hi).
#[inline]
fn tap_range(w: &Window, a: usize, o: usize) -> (usize, usize, usize) {
    let (k, d) = (w.kernel[a], w.dilation[a] as isize);
    let first = (o * w.strides[a]) as isize - w.pad_before[a] as isize;
    let size = w.input[a] as isize;
    // Smallest tap with first + t*d >= 0, and the count of taps with first + t*d < size.
    let lo = if first >= 0 { 0 } else { (-first + d - 1) / d };
    let hi = if size - first <= 0 {
        0
    } else {
        (size - first + d - 1) / d
    };
    let lo = (lo as usize).min(k);
    let hi = (hi as usize).clamp(lo, k);
    (lo, hi, (first + lo as isize * d).max(0) as usize)
}

/// Calls `f(row, col, at, len)` for every in-bounds run of taps of `w` on an image of
/// `channels` channels, reading channels `c0..c0 + cg`: output position `row` (row-major),
/// column `col` of its im2col row (columns (kd, kh, kw, channel), the flattened kernel's
/// order), image offset `at`, `len` values. Along W, neighbouring taps of a dense window on all
/// the channels are one run.
fn for_each_run(
    w: &Window,
    channels: usize,
    c0: usize,
    cg: usize,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let [od, oh, ow] = w.output;
    let [_, ih, iw] = w.input;
    let [_, kh, kw] = w.kernel;
    let dil = w.dilation;
    let runs_join = dil[2] == 1 && cg == channels;
    let mut row = 0;
    for oz in 0..od {
        let (z_lo, z_hi, z0) = tap_range(w, 0, oz);
        for oy in 0..oh {
            let (y_lo, y_hi, y0) = tap_range(w, 1, oy);
            for ox in 0..ow {
                let (x_lo, x_hi, x0) = tap_range(w, 2, ox);
                if x_lo < x_hi {
                    for tz in z_lo..z_hi {
                        let z = z0 + (tz - z_lo) * dil[0];
                        for ty in y_lo..y_hi {
                            let y = y0 + (ty - y_lo) * dil[1];
                            let col = ((tz * kh + ty) * kw + x_lo) * cg;
                            let at = ((z * ih + y) * iw + x0) * channels + c0;
                            if runs_join {
                                f(row, col, at, (x_hi - x_lo) * cg);
                            } else {
                                for t in 0..x_hi - x_lo {
                                    f(row, col + t * cg, at + t * dil[2] * channels, cg);
                                }
                            }
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// im2col of one image: `cols` (out positions, taps * cg), zeros where taps fall outside.
fn im2col(w: &Window, channels: usize, c0: usize, cg: usize, img: &[f32], cols: &mut [f32]) {
    let row_len = w.taps() * cg;
    cols.fill(0.0);
    for_each_run(w, channels, c0, cg, |row, col, at, len| {
        cols[row * row_len + col..][..len].copy_from_slice(&img[at..at + len]);
    });
}

/// The adjoint of `im2col`: adds every column back to the image position it was read from.
fn col2im(w: &Window, channels: usize, c0: usize, cg: usize, cols: &[f32], img: &mut [f32]) {
    let row_len = w.taps() * cg;
    for_each_run(w, channels, c0, cg, |row, col, at, len| {
        img[at..at + len]
            .iter_mut()
            .zip(&cols[row * row_len + col..][..len])
            .for_each(|(d, &v)| *d += v);
    });
}

/// Images per chunk for `rows_per_image` GEMM rows each, and whether the GEMMs themselves
/// should be threaded (fewer chunks than threads).
fn chunking(n: usize, rows_per_image: usize) -> (usize, bool) {
    let per = (CHUNK_ROWS / rows_per_image.max(1)).clamp(1, n.max(1));
    (per, n.div_ceil(per) < rayon::current_num_threads())
}

/// Conv1D/2D/3D backward: dW and db into `grads` (when trainable), dx when `need_dx`.
pub(super) fn conv(
    c: &Conv,
    params: &ParamStore,
    name: &str,
    x: &ArrayD<f32>,
    dy: &ArrayD<f32>,
    need_dx: bool,
    grads: &mut ParamGrads,
) -> Result<Option<ArrayD<f32>>> {
    linear_only(c.activation, "the convolution", name)?;
    let w = &c.window;
    let n = x.shape()[0];
    let groups = c.groups.max(1);
    let (cin, f) = (c.in_channels, c.filters);
    let (cg, fg) = (cin / groups, f / groups);
    let k = w.taps() * cg;
    let pixels = w.out_positions();
    let (in_image, out_image) = (w.in_positions() * cin, pixels * f);
    let want_w = params.param(c.kernel).trainable;
    let want_b = c.bias.is_some_and(|b| params.param(b).trainable);
    let xs = flat(x);
    let dys = flat(dy);
    let kernel = ArrayView2::from_shape((k, f), params.slice(c.kernel))
        .map_err(|e| Error::Internal(format!("conv kernel: {e}")))?;
    // A stride-1 plain convolution's dx is itself a plain convolution (of dy with the flipped
    // kernel), which the forward's Winograd / im2col paths run without a col2im scatter. With
    // few input channels (an image layer) its GEMMs are too thin, and dY·Wᵀ + col2im wins.
    let flipped = c
        .plane()
        .filter(|p| need_dx && p.strides == [1, 1] && cin >= FLIPPED_MIN_CHANNELS);
    let cols_dx = need_dx && flipped.is_none();
    let mut dx = vec![0.0f32; if cols_dx { n * in_image } else { 0 }];
    let (per, threaded) = chunking(n, pixels);
    let chunks = n.div_ceil(per);
    let partial_len = if want_w { k * f } else { 0 } + if want_b { f } else { 0 };
    let parts = if n == 0 || in_image == 0 || out_image == 0 {
        Vec::new()
    } else {
        over_chunks(chunks, &mut dx, per * in_image, |ci, dxc| {
            let images = (n - ci * per).min(per);
            let m = images * pixels;
            let xc = &xs[ci * per * in_image..][..images * in_image];
            let dyc = &dys[ci * per * out_image..][..images * out_image];
            let dyv = ArrayView2::from_shape((m, f), dyc).expect("m x filters");
            let mut partial = vec![0.0f32; partial_len];
            let mut cols = vec![0.0f32; if want_w || cols_dx { m * k } else { 0 }];
            for g in 0..groups {
                let dyg = dyv.slice(s![.., g * fg..(g + 1) * fg]);
                if want_w {
                    for (img, dst) in xc
                        .chunks_exact(in_image)
                        .zip(cols.chunks_exact_mut(pixels * k))
                    {
                        im2col(w, cin, g * cg, cg, img, dst);
                    }
                    let a = ArrayView2::from_shape((m, k), &cols).expect("m x k");
                    let mut dw =
                        ArrayViewMut2::from_shape((k, f), &mut partial[..k * f]).expect("k x f");
                    let dwg = dw.slice_mut(s![.., g * fg..(g + 1) * fg]);
                    gemm::matmul_into_on(a.t(), dyg, dwg, threaded);
                }
                if cols_dx {
                    let wg = kernel.slice(s![.., g * fg..(g + 1) * fg]);
                    let dcols = ArrayViewMut2::from_shape((m, k), &mut cols).expect("m x k");
                    gemm::matmul_into_on(dyg, wg.t(), dcols, threaded);
                    for (dst, src) in dxc
                        .chunks_exact_mut(in_image)
                        .zip(cols.chunks_exact(pixels * k))
                    {
                        col2im(w, cin, g * cg, cg, src, dst);
                    }
                }
            }
            if want_b {
                add_rows(&mut partial[partial_len - f..], dyc, f);
            }
            partial
        })
    };
    add_param_grads(
        grads,
        &parts,
        want_w.then(|| (c.kernel, c.kernel_shape())),
        c.bias.filter(|_| want_b).map(|b| (b, vec![f])),
    )?;
    if let Some(plane) = flipped {
        return flipped_conv(&plane, cin, f, params.slice(c.kernel), dy, x.shape()).map(Some);
    }
    if !need_dx {
        return Ok(None);
    }
    shaped(dx, x.shape(), "conv input").map(Some)
}

/// dx of a stride-1 2-D convolution (`plane`, one group) as the forward convolution of dy with
/// the kernel flipped in space and its channel axes swapped: dx[i] = Σ_t dy[i + t - (k-1-p)]
/// W[k-1-t]ᵀ, i.e. padding k-1-p before, on dy's size, to x's size.
fn flipped_conv(
    plane: &Window2d,
    cin: usize,
    f: usize,
    kernel: &[f32],
    dy: &ArrayD<f32>,
    x_shape: &[usize],
) -> Result<ArrayD<f32>> {
    let [kh, kw] = plane.kernel;
    let mut flipped = vec![0.0f32; kernel.len()];
    for ty in 0..kh {
        for tx in 0..kw {
            let src = &kernel[((kh - 1 - ty) * kw + (kw - 1 - tx)) * cin * f..][..cin * f];
            let dst = &mut flipped[(ty * kw + tx) * f * cin..][..f * cin];
            for (ci, row) in src.chunks_exact(f).enumerate() {
                for (fo, &v) in row.iter().enumerate() {
                    dst[fo * cin + ci] = v;
                }
            }
        }
    }
    let n = dy.shape()[0];
    let window = Window2d {
        kernel: plane.kernel,
        strides: [1, 1],
        padding: plane.padding,
        in_hw: plane.out_hw,
        out_hw: plane.in_hw,
        pad_top_left: [
            kh - 1 - plane.pad_top_left[0],
            kw - 1 - plane.pad_top_left[1],
        ],
    };
    let bad = |e: ndarray::ShapeError| Error::Internal(format!("conv input gradient: {e}"));
    let args = crate::cpu::ConvArgs {
        filters: cin,
        window,
        in_channels: f,
        kernel: ndarray::ArrayView4::from_shape((kh, kw, f, cin), &flipped).map_err(bad)?,
        bias: None,
        activation: Activation::Linear,
        kernel_generation: None,
    };
    let dy4 = dy
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((n, plane.out_hw[0], plane.out_hw[1], f))
        .map_err(bad)?;
    crate::cpu::conv2d(&args, &dy4)
        .into_dyn()
        .into_shape_with_order(IxDyn(x_shape))
        .map_err(bad)
}

/// Adds the summed chunk partials (kernel first, then bias) to `grads`; zeros when no chunk ran.
fn add_param_grads(
    grads: &mut ParamGrads,
    parts: &[Vec<f32>],
    kernel: Option<(ParamId, Vec<usize>)>,
    bias: Option<(ParamId, Vec<usize>)>,
) -> Result<()> {
    let mut offset = 0;
    for (id, shape) in [kernel, bias].into_iter().flatten() {
        let len: usize = shape.iter().product();
        let sum = sum_partials(parts, offset, len).unwrap_or_else(|| vec![0.0; len]);
        grads.add(id, shaped(sum, &shape, "parameter")?);
        offset += len;
    }
    Ok(())
}

/// The convolution whose im2col reads a transposed convolution's output: its "input" is the
/// transposed op's output, its output positions the transposed op's input positions.
fn transposed_window(c: &ConvTranspose) -> Window {
    Window {
        rank: c.rank,
        kernel: c.kernel_size,
        strides: c.strides,
        dilation: c.dilation,
        padding: c.padding,
        input: c.output,
        output: c.input,
        pad_before: c.pad_before,
    }
}

/// Conv1D/2D/3DTranspose backward: cols = im2col(dy) (in positions, taps * F); dx = cols · W
/// (the kernel (taps, F, C) read as (taps * F, C)), dW = colsᵀ · X, db = Σ dy.
pub(super) fn conv_transpose(
    c: &ConvTranspose,
    params: &ParamStore,
    name: &str,
    x: &ArrayD<f32>,
    dy: &ArrayD<f32>,
    need_dx: bool,
    grads: &mut ParamGrads,
) -> Result<Option<ArrayD<f32>>> {
    linear_only(c.activation, "the transposed convolution", name)?;
    let w = transposed_window(c);
    let n = x.shape()[0];
    let (cin, f) = (c.in_channels, c.filters);
    let k = c.taps() * f;
    let in_pos = w.out_positions();
    let (in_image, out_image) = (in_pos * cin, w.in_positions() * f);
    let want_w = params.param(c.kernel).trainable;
    let want_b = c.bias.is_some_and(|b| params.param(b).trainable);
    let xs = flat(x);
    let dys = flat(dy);
    let kernel = ArrayView2::from_shape((k, cin), params.slice(c.kernel))
        .map_err(|e| Error::Internal(format!("conv transpose kernel: {e}")))?;
    let mut dx = vec![0.0f32; if need_dx { n * in_image } else { 0 }];
    let (per, threaded) = chunking(n, in_pos);
    let chunks = n.div_ceil(per);
    let partial_len = if want_w { k * cin } else { 0 } + if want_b { f } else { 0 };
    let parts = if n == 0 || in_image == 0 || out_image == 0 {
        Vec::new()
    } else {
        over_chunks(chunks, &mut dx, per * in_image, |ci, dxc| {
            let images = (n - ci * per).min(per);
            let m = images * in_pos;
            let xc = &xs[ci * per * in_image..][..images * in_image];
            let dyc = &dys[ci * per * out_image..][..images * out_image];
            let mut partial = vec![0.0f32; partial_len];
            if want_w || need_dx {
                let mut cols = vec![0.0f32; m * k];
                for (img, dst) in dyc
                    .chunks_exact(out_image)
                    .zip(cols.chunks_exact_mut(in_pos * k))
                {
                    im2col(&w, f, 0, f, img, dst);
                }
                let a = ArrayView2::from_shape((m, k), &cols).expect("m x k");
                if want_w {
                    let xv = ArrayView2::from_shape((m, cin), xc).expect("m x channels");
                    let dw = ArrayViewMut2::from_shape((k, cin), &mut partial[..k * cin])
                        .expect("k x channels");
                    gemm::matmul_into_on(a.t(), xv, dw, threaded);
                }
                if need_dx {
                    let dxv = ArrayViewMut2::from_shape((m, cin), dxc).expect("m x channels");
                    gemm::matmul_into_on(a, kernel, dxv, threaded);
                }
            }
            if want_b {
                add_rows(&mut partial[partial_len - f..], dyc, f);
            }
            partial
        })
    };
    add_param_grads(
        grads,
        &parts,
        want_w.then(|| (c.kernel, c.kernel_shape())),
        c.bias.filter(|_| want_b).map(|b| (b, vec![f])),
    )?;
    if !need_dx {
        return Ok(None);
    }
    shaped(dx, x.shape(), "conv transpose input").map(Some)
}

/// DepthwiseConv1D/2D backward: output channel c * M + m reads input channel c with weight
/// (tap, c, m); for every in-bounds tap dx[c] += Σ_m dy[cM+m] W[tap,c,m] and
/// dW[tap,c,m] += x[c] dy[cM+m].
pub(super) fn depthwise(
    c: &DepthwiseConv,
    params: &ParamStore,
    name: &str,
    x: &ArrayD<f32>,
    dy: &ArrayD<f32>,
    need_dx: bool,
    grads: &mut ParamGrads,
) -> Result<Option<ArrayD<f32>>> {
    linear_only(c.activation, "the depthwise convolution", name)?;
    let w = &c.window;
    let n = x.shape()[0];
    let (ch, mult) = (c.channels, c.multiplier);
    let cm = ch * mult;
    let taps = w.taps();
    let (in_image, out_image) = (w.in_positions() * ch, w.out_positions() * cm);
    let want_w = params.param(c.kernel).trainable;
    let want_b = c.bias.is_some_and(|b| params.param(b).trainable);
    let xs = flat(x);
    let dys = flat(dy);
    let kernel = params.slice(c.kernel);
    let mut dx = vec![0.0f32; if need_dx { n * in_image } else { 0 }];
    let partial_len = if want_w { taps * cm } else { 0 } + if want_b { cm } else { 0 };
    let [_, oh, ow] = w.output;
    let [_, ih, iw] = w.input;
    let [_, kh, kw] = w.kernel;
    let parts = if n == 0 || in_image == 0 || out_image == 0 {
        Vec::new()
    } else {
        over_chunks(n, &mut dx, in_image, |b, dxi| {
            let img = &xs[b * in_image..][..in_image];
            let dyi = &dys[b * out_image..][..out_image];
            let mut partial = vec![0.0f32; partial_len];
            if want_w || need_dx {
                let (dw, _) = partial.split_at_mut(if want_w { taps * cm } else { 0 });
                let mut at = 0;
                for oz in 0..w.output[0] {
                    let (z_lo, z_hi, z0) = tap_range(w, 0, oz);
                    for oy in 0..oh {
                        let (y_lo, y_hi, y0) = tap_range(w, 1, oy);
                        for ox in 0..ow {
                            let (x_lo, x_hi, x0) = tap_range(w, 2, ox);
                            let g = &dyi[at..at + cm];
                            at += cm;
                            for tz in z_lo..z_hi {
                                let z = z0 + (tz - z_lo) * w.dilation[0];
                                for ty in y_lo..y_hi {
                                    let y = y0 + (ty - y_lo) * w.dilation[1];
                                    for tx in x_lo..x_hi {
                                        let xx = x0 + (tx - x_lo) * w.dilation[2];
                                        let tap = (tz * kh + ty) * kw + tx;
                                        let src = ((z * ih + y) * iw + xx) * ch;
                                        if want_w {
                                            let dwt = &mut dw[tap * cm..][..cm];
                                            tap_weight_grad(dwt, &img[src..src + ch], g, mult);
                                        }
                                        if need_dx {
                                            let wt = &kernel[tap * cm..][..cm];
                                            tap_input_grad(&mut dxi[src..src + ch], wt, g, mult);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            if want_b {
                add_rows(&mut partial[partial_len - cm..], dyi, cm);
            }
            partial
        })
    };
    add_param_grads(
        grads,
        &parts,
        want_w.then(|| (c.kernel, c.kernel_shape())),
        c.bias.filter(|_| want_b).map(|b| (b, vec![cm])),
    )?;
    if !need_dx {
        return Ok(None);
    }
    shaped(dx, x.shape(), "depthwise conv input").map(Some)
}

/// dW[c, m] += x[c] * dy[c * M + m] for one tap.
#[inline]
fn tap_weight_grad(dw: &mut [f32], x: &[f32], dy: &[f32], mult: usize) {
    if mult == 1 {
        dw.iter_mut()
            .zip(x)
            .zip(dy)
            .for_each(|((d, &v), &g)| *d += v * g);
        return;
    }
    for ((d, &v), g) in dw.chunks_exact_mut(mult).zip(x).zip(dy.chunks_exact(mult)) {
        d.iter_mut().zip(g).for_each(|(d, &g)| *d += v * g);
    }
}

/// dx[c] += Σ_m W[c, m] * dy[c * M + m] for one tap.
#[inline]
fn tap_input_grad(dx: &mut [f32], w: &[f32], dy: &[f32], mult: usize) {
    if mult == 1 {
        dx.iter_mut()
            .zip(w)
            .zip(dy)
            .for_each(|((d, &k), &g)| *d += k * g);
        return;
    }
    for ((d, k), g) in dx
        .iter_mut()
        .zip(w.chunks_exact(mult))
        .zip(dy.chunks_exact(mult))
    {
        *d += k.iter().zip(g).map(|(&k, &g)| k * g).sum::<f32>();
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::{check_node, uniform};
    use super::super::testing::{assert_close, one_node, run_backward};
    use super::*;
    use crate::cpu::Tensor;

    struct ConvCase {
        item: Vec<usize>,
        kernel: Vec<usize>,
        strides: Vec<usize>,
        dilation: Vec<usize>,
        padding: Padding,
        filters: usize,
        groups: usize,
        bias: bool,
        batch: usize,
    }

    fn case(item: &[usize], kernel: &[usize], strides: &[usize], padding: Padding) -> ConvCase {
        ConvCase {
            item: item.to_vec(),
            kernel: kernel.to_vec(),
            strides: strides.to_vec(),
            dilation: vec![1; kernel.len()],
            padding,
            filters: 4,
            groups: 1,
            bias: true,
            batch: 3,
        }
    }

    impl ConvCase {
        fn filters(mut self, f: usize) -> Self {
            self.filters = f;
            self
        }
        fn groups(mut self, g: usize) -> Self {
            self.groups = g;
            self
        }
        fn dilation(mut self, d: &[usize]) -> Self {
            self.dilation = d.to_vec();
            self
        }
        fn no_bias(mut self) -> Self {
            self.bias = false;
            self
        }
        fn batch(mut self, n: usize) -> Self {
            self.batch = n;
            self
        }

        fn graph(&self) -> Graph {
            let r = self.kernel.len();
            let cin = self.item[r];
            let window = Window::new(
                &self.kernel,
                &self.strides,
                &self.dilation,
                self.padding,
                &self.item[..r],
            );
            one_node(&self.item, |p| {
                let mut kshape = self.kernel.clone();
                kshape.extend([cin / self.groups, self.filters]);
                Op::Conv(Conv {
                    filters: self.filters,
                    window,
                    in_channels: cin,
                    groups: self.groups,
                    kernel: p.add("n/kernel", uniform(&kshape, 1, 0.5), true),
                    bias: self
                        .bias
                        .then(|| p.add("n/bias", uniform(&[self.filters], 2, 0.5), true)),
                    activation: Activation::Linear,
                })
            })
        }

        fn input(&self) -> ArrayD<f32> {
            let mut shape = vec![self.batch];
            shape.extend(&self.item);
            uniform(&shape, 3, 1.0)
        }
    }

    fn conv_cases() -> Vec<ConvCase> {
        use Padding::*;
        vec![
            case(&[5, 7, 3], &[3, 3], &[1, 1], Same),
            // An even kernel: TensorFlow's same pads 1 before and 2 after.
            case(&[6, 5, 5], &[4, 2], &[1, 1], Same).batch(1).filters(3),
            // Stride larger than the kernel: some inputs reach no output.
            case(&[9, 8, 3], &[2, 2], &[3, 3], Valid).filters(5),
            case(&[7, 7, 6], &[3, 3], &[1, 1], Same)
                .dilation(&[2, 2])
                .groups(2)
                .batch(2),
            case(&[6, 5, 6], &[3, 3], &[2, 2], Same)
                .groups(3)
                .filters(6),
            case(&[5, 6, 5], &[3, 2], &[2, 1], Valid).no_bias().batch(1),
            case(&[11, 5], &[3], &[1], Causal).dilation(&[2]).filters(3),
            case(&[10, 4], &[4], &[3], Same).filters(2),
            case(&[9, 4], &[4], &[1], Causal).filters(3),
            // Stride 1 with 8+ filters: dx runs the forward's Winograd path on the flipped kernel.
            case(&[6, 7, 9], &[3, 3], &[1, 1], Same)
                .filters(10)
                .batch(2),
            case(&[7, 6, 8], &[3, 3], &[1, 1], Valid)
                .filters(9)
                .batch(1),
            case(&[6, 5, 3], &[5, 5], &[1, 1], Same).filters(6),
            case(&[4, 5, 3, 2], &[2, 3, 2], &[1, 2, 1], Same)
                .filters(3)
                .batch(2),
            case(&[3, 4, 6, 4], &[2, 2, 2], &[1, 1, 2], Valid)
                .dilation(&[1, 2, 1])
                .groups(2)
                .filters(2),
        ]
    }

    #[test]
    fn conv_backward_matches_finite_differences() {
        for (i, c) in conv_cases().iter().enumerate() {
            let g = c.graph();
            let r = std::panic::catch_unwind(|| {
                check_node(&g, 0, vec![Tensor::F32(c.input())], None, 1e-2)
            });
            assert!(r.is_ok(), "conv case {i}: {}", g.nodes[0].op.name());
        }
    }

    /// Direct loops over every output, tap and channel in f64: the reference for dx, dW, db.
    fn naive_conv_backward(
        c: &Conv,
        kernel: &[f32],
        x: &ArrayD<f32>,
        dy: &ArrayD<f32>,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let w = &c.window;
        let n = x.shape()[0];
        let (cin, f, groups) = (c.in_channels, c.filters, c.groups);
        let (cg, fg) = (cin / groups, f / groups);
        let (xs, dys) = (flat(x), flat(dy));
        let mut dx = vec![0.0f64; xs.len()];
        let mut dw = vec![0.0f64; kernel.len()];
        let mut db = vec![0.0f64; f];
        let inside = |o: usize, t: usize, a: usize| -> Option<usize> {
            let i = (o * w.strides[a] + t * w.dilation[a]) as isize - w.pad_before[a] as isize;
            (i >= 0 && (i as usize) < w.input[a]).then_some(i as usize)
        };
        for b in 0..n {
            for oz in 0..w.output[0] {
                for oy in 0..w.output[1] {
                    for ox in 0..w.output[2] {
                        let o = ((b * w.output[0] + oz) * w.output[1] + oy) * w.output[2] + ox;
                        for fo in 0..f {
                            let g = dys[o * f + fo] as f64;
                            db[fo] += g;
                            let grp = fo / fg;
                            for tz in 0..w.kernel[0] {
                                for ty in 0..w.kernel[1] {
                                    for tx in 0..w.kernel[2] {
                                        let (Some(z), Some(y), Some(xx)) = (
                                            inside(oz, tz, 0),
                                            inside(oy, ty, 1),
                                            inside(ox, tx, 2),
                                        ) else {
                                            continue;
                                        };
                                        let tap = (tz * w.kernel[1] + ty) * w.kernel[2] + tx;
                                        let pix = ((b * w.input[0] + z) * w.input[1] + y)
                                            * w.input[2]
                                            + xx;
                                        for ci in 0..cg {
                                            let xi = pix * cin + grp * cg + ci;
                                            let wi = (tap * cg + ci) * f + fo;
                                            dx[xi] += g * kernel[wi] as f64;
                                            dw[wi] += g * xs[xi] as f64;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (dx, dw, db)
    }

    fn as_f32(v: &[f64], shape: &[usize]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), v.iter().map(|&v| v as f32).collect()).unwrap()
    }

    #[test]
    fn conv_backward_matches_direct_loops() {
        for (i, c) in conv_cases().iter().enumerate() {
            let g = c.graph();
            let Op::Conv(conv) = &g.nodes[0].op else {
                unreachable!()
            };
            let x = c.input();
            let mut yshape = vec![c.batch];
            yshape.extend(&g.value(g.nodes[0].outputs[0]).shape);
            let dy = uniform(&yshape, 50 + i as u64, 1.0);
            let (dx, grads) = run_backward(&g, &x, &dy, true, None);
            let kernel = g.params.slice(conv.kernel);
            let (ndx, ndw, ndb) = naive_conv_backward(conv, kernel, &x, &dy);
            assert_close(
                &format!("case {i} dx"),
                &dx.unwrap(),
                &as_f32(&ndx, x.shape()),
            );
            let kshape = conv.kernel_shape();
            let dw = grads.get(conv.kernel).unwrap();
            assert_close(&format!("case {i} dW"), dw, &as_f32(&ndw, &kshape));
            if let Some(b) = conv.bias {
                let db = grads.get(b).unwrap();
                assert_close(&format!("case {i} db"), db, &as_f32(&ndb, &[c.filters]));
            }
        }
    }

    #[test]
    fn frozen_parameters_and_unneeded_inputs_get_no_gradient() {
        let c = case(&[5, 6, 3], &[3, 3], &[1, 1], Padding::Same);
        let mut g = c.graph();
        let Op::Conv(conv) = g.nodes[0].op.clone() else {
            unreachable!()
        };
        g.params.set_trainable(conv.kernel, false);
        let x = c.input();
        let dy = uniform(&[3, 5, 6, 4], 9, 1.0);
        let (dx, grads) = run_backward(&g, &x, &dy, false, None);
        assert!(dx.is_none());
        assert!(grads.get(conv.kernel).is_none());
        let db = grads
            .get(conv.bias.unwrap())
            .expect("the bias is still trainable");
        let expected = dy.sum_axis(ndarray::Axis(0)).sum_axis(ndarray::Axis(0));
        assert_close("db", db, &expected.sum_axis(ndarray::Axis(0)));
    }

    #[test]
    fn a_fused_activation_is_an_internal_error() {
        let c = case(&[5, 6, 3], &[3, 3], &[1, 1], Padding::Same);
        let mut g = c.graph();
        if let Op::Conv(conv) = &mut g.nodes[0].op {
            conv.activation = Activation::RELU;
        }
        let node = &g.nodes[0];
        let x = [Tensor::F32(c.input())];
        let y = crate::cpu::run_node(&g, node, x.to_vec(), None).unwrap();
        let yr: Vec<&Tensor> = y.iter().collect();
        let io = super::super::NodeIo {
            graph: &g,
            node,
            inputs: &[&x[0]],
            outputs: &yr,
            mask: None,
            saved: &None,
            needs: &[true],
        };
        let err = super::super::backward(&io, &[None], &mut ParamGrads::new(&g.params));
        assert!(matches!(err, Err(Error::Internal(m)) if m.contains("activation")));
    }

    fn depthwise_graph(
        item: &[usize],
        kernel: &[usize],
        strides: &[usize],
        dilation: &[usize],
        padding: Padding,
        mult: usize,
    ) -> Graph {
        let r = kernel.len();
        let ch = item[r];
        let window = Window::new(kernel, strides, dilation, padding, &item[..r]);
        one_node(item, |p| {
            let mut kshape = kernel.to_vec();
            kshape.extend([ch, mult]);
            Op::DepthwiseConv(DepthwiseConv {
                window,
                channels: ch,
                multiplier: mult,
                kernel: p.add("n/kernel", uniform(&kshape, 4, 0.5), true),
                bias: Some(p.add("n/bias", uniform(&[ch * mult], 5, 0.5), true)),
                activation: Activation::Linear,
            })
        })
    }

    #[test]
    fn depthwise_backward_matches_finite_differences() {
        use Padding::*;
        let cases: Vec<(Graph, Vec<usize>)> = vec![
            (
                depthwise_graph(&[6, 5, 3], &[3, 3], &[1, 1], &[1, 1], Same, 1),
                vec![3, 6, 5, 3],
            ),
            (
                depthwise_graph(&[7, 6, 2], &[2, 3], &[2, 2], &[1, 1], Same, 3),
                vec![1, 7, 6, 2],
            ),
            (
                depthwise_graph(&[8, 7, 5], &[2, 2], &[3, 3], &[1, 1], Valid, 2),
                vec![3, 8, 7, 5],
            ),
            (
                depthwise_graph(&[7, 7, 3], &[3, 2], &[1, 1], &[2, 3], Same, 2),
                vec![2, 7, 7, 3],
            ),
            (
                depthwise_graph(&[9, 5], &[3], &[1], &[2], Valid, 2),
                vec![3, 9, 5],
            ),
            (
                depthwise_graph(&[10, 3], &[4], &[2], &[1], Causal, 1),
                vec![2, 10, 3],
            ),
        ];
        for (i, (g, shape)) in cases.iter().enumerate() {
            let x = Tensor::F32(uniform(shape, 6, 1.0));
            let r = std::panic::catch_unwind(|| check_node(g, 0, vec![x], None, 1e-2));
            assert!(r.is_ok(), "depthwise case {i}");
        }
    }

    fn transpose_graph(
        item: &[usize],
        kernel: &[usize],
        strides: &[usize],
        dilation: &[usize],
        padding: Padding,
        output_padding: Option<&[usize]>,
        filters: usize,
    ) -> Graph {
        let rank = kernel.len();
        let cin = item[rank];
        let (k, s, d) = (to_dhw(kernel, 1), to_dhw(strides, 1), to_dhw(dilation, 1));
        let input = to_dhw(&item[..rank], 1);
        let (mut output, mut pad_before) = ([1; 3], [0; 3]);
        for a in 3 - rank..3 {
            let op = output_padding.map(|p| p[a + rank - 3]);
            let (o, p) = transpose_axis(input[a], k[a], s[a], d[a], padding, op).unwrap();
            output[a] = o;
            pad_before[a] = p;
        }
        one_node(item, |p| {
            let mut kshape = kernel.to_vec();
            kshape.extend([filters, cin]);
            Op::ConvTranspose(ConvTranspose {
                filters,
                in_channels: cin,
                rank,
                kernel_size: k,
                strides: s,
                dilation: d,
                padding,
                input,
                output,
                pad_before,
                kernel: p.add("n/kernel", uniform(&kshape, 7, 0.5), true),
                bias: Some(p.add("n/bias", uniform(&[filters], 8, 0.5), true)),
                activation: Activation::Linear,
            })
        })
    }

    #[test]
    fn conv_transpose_backward_matches_finite_differences() {
        use Padding::*;
        let cases: Vec<(Graph, Vec<usize>)> = vec![
            (
                transpose_graph(&[4, 3, 3], &[3, 3], &[2, 2], &[1, 1], Same, None, 4),
                vec![3, 4, 3, 3],
            ),
            (
                transpose_graph(&[3, 4, 2], &[2, 3], &[2, 1], &[1, 1], Valid, None, 3),
                vec![1, 3, 4, 2],
            ),
            (
                transpose_graph(
                    &[3, 3, 5],
                    &[2, 2],
                    &[3, 3],
                    &[1, 1],
                    Valid,
                    Some(&[2, 1]),
                    2,
                ),
                vec![3, 3, 3, 5],
            ),
            (
                transpose_graph(&[5, 3], &[4], &[2], &[1], Same, Some(&[1]), 3),
                vec![3, 5, 3],
            ),
            (
                transpose_graph(&[4, 5, 3], &[3, 3], &[1, 1], &[2, 2], Same, None, 2),
                vec![2, 4, 5, 3],
            ),
            (
                transpose_graph(
                    &[2, 3, 3, 2],
                    &[2, 2, 3],
                    &[2, 2, 1],
                    &[1, 1, 1],
                    Same,
                    None,
                    2,
                ),
                vec![2, 2, 3, 3, 2],
            ),
        ];
        for (i, (g, shape)) in cases.iter().enumerate() {
            let x = Tensor::F32(uniform(shape, 9, 1.0));
            let r = std::panic::catch_unwind(|| check_node(g, 0, vec![x], None, 1e-2));
            assert!(r.is_ok(), "conv transpose case {i}");
        }
    }
}
