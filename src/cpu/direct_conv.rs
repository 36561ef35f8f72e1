//! Direct convolution for layers with few input channels (an RGB or grayscale image layer).
//!
//! With 3 input channels a 3x3 layer has K = 27 values per output pixel: im2col then writes a
//! matrix as large as the GEMM's work is small, and the GEMM packs it once more. Here each
//! output pixel reads its window straight from a zero-padded copy of the image (a kernel row's
//! taps are kw·C neighbouring floats) and accumulates into a register block of pixels ×
//! filters, like a GEMM microkernel whose A operand is the image itself. The weights, padded
//! to a whole number of register blocks of filters, stay in L1.
//!
//! Each output is one sum over K in kernel order, `acc + x * w` without FMA contraction, the
//! same at AVX2 and AVX-512 (see `simd`). The baseline level (SSE2, 4 lanes) keeps im2col and
//! the `gemm` crate, which are faster there.

use super::simd::{self, Level};
use crate::graph::Window2d;

/// At most this many input channels: above it im2col's copies are long and the GEMM wins.
pub(super) const MAX_IN_CHANNELS: usize = 4;
/// At most this many values per output pixel, so that one block of weights (K × 32 floats)
/// stays in L1.
const MAX_K: usize = 256;
/// Filters per register block: weights are padded to a multiple of it.
const FILTER_BLOCK: usize = 32;

/// Whether [`Direct`] handles a 2-D convolution with `in_channels` channels and this window.
pub(super) fn supports(w: &Window2d, in_channels: usize) -> bool {
    (1..=MAX_IN_CHANNELS).contains(&in_channels)
        && w.kernel[0] * w.kernel[1] * in_channels <= MAX_K
        && w.kernel.iter().all(|&k| k > 0)
        && w.strides.iter().all(|&s| s > 0)
}

/// One layer's weights as (K, filters padded to [`FILTER_BLOCK`]), and the window.
pub(super) struct Direct {
    window: Window2d,
    channels: usize,
    filters: usize,
    padded_filters: usize,
    weights: Vec<f32>,
}

impl Direct {
    /// `kernel` is HWIO flattened to (K, filters), row-major.
    pub(super) fn new(window: Window2d, channels: usize, filters: usize, kernel: &[f32]) -> Self {
        let k = window.kernel[0] * window.kernel[1] * channels;
        debug_assert_eq!(kernel.len(), k * filters);
        let padded_filters = filters.div_ceil(FILTER_BLOCK) * FILTER_BLOCK;
        let mut weights = vec![0.0; k * padded_filters];
        for (dst, src) in weights
            .chunks_exact_mut(padded_filters)
            .zip(kernel.chunks_exact(filters.max(1)))
        {
            dst[..filters].copy_from_slice(src);
        }
        Direct {
            window,
            channels,
            filters,
            padded_filters,
            weights,
        }
    }

    /// Floats of one image's zero-padded copy.
    pub(super) fn padded_len(&self) -> usize {
        let (rows, cols) = self.padded_hw();
        rows * cols * self.channels
    }

    fn padded_hw(&self) -> (usize, usize) {
        let w = &self.window;
        let rows = (w.out_hw[0].max(1) - 1) * w.strides[0] + w.kernel[0];
        let cols = (w.out_hw[1].max(1) - 1) * w.strides[1] + w.kernel[1];
        (rows, cols)
    }

    /// Copies one NHWC image into `padded` (length [`Self::padded_len`]) with the layer's
    /// padding as zeros; rows and columns past the input (valid padding's leftovers, or the
    /// far side of same padding) are zeros too and never read by a real tap.
    pub(super) fn pad_image(&self, img: &[f32], padded: &mut [f32]) {
        let w = &self.window;
        let (rows, cols) = self.padded_hw();
        let c = self.channels;
        let [ih, iw] = w.in_hw;
        let [pt, pl] = w.pad_top_left;
        padded.fill(0.0);
        let copy_w = iw.min(cols.saturating_sub(pl));
        for y in 0..ih.min(rows.saturating_sub(pt)) {
            let dst = &mut padded[((y + pt) * cols + pl) * c..][..copy_w * c];
            dst.copy_from_slice(&img[y * iw * c..][..copy_w * c]);
        }
    }

    /// Output rows `first_row..` of one image into `out` (whole rows of out_w × filters, no
    /// bias), reading the image's padded copy.
    pub(super) fn rows(&self, padded: &[f32], first_row: usize, out: &mut [f32]) {
        rows_dispatched(self, padded, first_row, out);
    }
}

simd::multiversion! {
fn rows_dispatched(d: &Direct, padded: &[f32], first_row: usize, out: &mut [f32]) {
    // More pixels per block where there are more vector registers (AVX-512 has 32): each
    // block keeps pixels × 32 accumulators.
    match simd::level() {
        Level::Avx512 => rows_blocked::<6>(d, padded, first_row, out),
        _ => rows_blocked::<3>(d, padded, first_row, out),
    }
}
}

#[inline(always)]
fn rows_blocked<const P: usize>(d: &Direct, padded: &[f32], first_row: usize, out: &mut [f32]) {
    let w = &d.window;
    let ow = w.out_hw[1];
    let f = d.filters;
    if ow == 0 || f == 0 {
        return;
    }
    let (_, cols) = d.padded_hw();
    let c = d.channels;
    let row_taps = w.kernel[1] * c;
    let padded_row = cols * c;
    let pixel_step = w.strides[1] * c;
    for (r, out_row) in out.chunks_exact_mut(ow * f).enumerate() {
        let oy = first_row + r;
        let window_top = &padded[oy * w.strides[0] * padded_row..];
        for f0 in (0..d.padded_filters).step_by(FILTER_BLOCK) {
            let width = (f - f0.min(f)).min(FILTER_BLOCK);
            let mut ox = 0;
            while ox + P <= ow {
                let acc = block::<P>(d, window_top, padded_row, row_taps, pixel_step, ox, f0);
                store(&acc, out_row, ox, f, f0, width);
                ox += P;
            }
            while ox < ow {
                let acc = block::<1>(d, window_top, padded_row, row_taps, pixel_step, ox, f0);
                store(&acc, out_row, ox, f, f0, width);
                ox += 1;
            }
        }
    }
}

/// P neighbouring output pixels × 32 filters from `f0`: the sum over the window in kernel
/// order (kernel row, then its kw·C taps).
#[inline(always)]
fn block<const P: usize>(
    d: &Direct,
    window_top: &[f32],
    padded_row: usize,
    row_taps: usize,
    pixel_step: usize,
    ox: usize,
    f0: usize,
) -> [[f32; FILTER_BLOCK]; P] {
    let mut acc = [[0.0f32; FILTER_BLOCK]; P];
    let pf = d.padded_filters;
    for ky in 0..d.window.kernel[0] {
        let line = &window_top[ky * padded_row + ox * pixel_step..];
        let weights = &d.weights[ky * row_taps * pf..][..row_taps * pf];
        for j in 0..row_taps {
            let wv: &[f32; FILTER_BLOCK] = weights[j * pf + f0..][..FILTER_BLOCK]
                .try_into()
                .expect("a whole filter block");
            for (p, acc) in acc.iter_mut().enumerate() {
                let x = line[p * pixel_step + j];
                for (a, &wf) in acc.iter_mut().zip(wv) {
                    *a += x * wf;
                }
            }
        }
    }
    acc
}

#[inline(always)]
fn store<const P: usize>(
    acc: &[[f32; FILTER_BLOCK]; P],
    out_row: &mut [f32],
    ox: usize,
    filters: usize,
    f0: usize,
    width: usize,
) {
    for (p, acc) in acc.iter().enumerate() {
        out_row[(ox + p) * filters + f0..][..width].copy_from_slice(&acc[..width]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::winograd::tests::noise;
    use crate::graph::Padding;

    /// The convolution by its definition, in f64.
    fn naive(w: &Window2d, c: usize, f: usize, img: &[f32], kernel: &[f32]) -> Vec<f64> {
        let [oh, ow] = w.out_hw;
        let [ih, iw] = w.in_hw;
        let [kh, kw] = w.kernel;
        let mut out = vec![0.0f64; oh * ow * f];
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let y = (oy * w.strides[0] + ky) as isize - w.pad_top_left[0] as isize;
                        let x = (ox * w.strides[1] + kx) as isize - w.pad_top_left[1] as isize;
                        if y < 0 || x < 0 || y >= ih as isize || x >= iw as isize {
                            continue;
                        }
                        for ci in 0..c {
                            let v = img[(y as usize * iw + x as usize) * c + ci] as f64;
                            for fi in 0..f {
                                let k = ((ky * kw + kx) * c + ci) * f + fi;
                                out[(oy * ow + ox) * f + fi] += v * kernel[k] as f64;
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_on_odd_windows_strides_paddings_and_filter_counts() {
        let cases = [
            ([3, 3], [1, 1], Padding::Same, [32, 32], 3, 32),
            ([3, 3], [2, 2], Padding::Same, [15, 17], 3, 40),
            ([5, 3], [1, 2], Padding::Valid, [11, 9], 1, 5),
            ([7, 7], [2, 2], Padding::Same, [19, 20], 3, 64),
            ([1, 1], [1, 1], Padding::Valid, [4, 6], 4, 1),
            ([3, 2], [3, 1], Padding::Valid, [10, 7], 2, 33),
            ([4, 4], [1, 1], Padding::Same, [6, 5], 4, 7),
        ];
        for (i, (kernel_hw, strides, padding, in_hw, c, f)) in cases.into_iter().enumerate() {
            let w = Window2d::new(kernel_hw, strides, padding, in_hw);
            assert!(supports(&w, c), "case {i}");
            let img = noise(in_hw[0] * in_hw[1] * c, i as u64 + 1);
            let kernel = noise(kernel_hw[0] * kernel_hw[1] * c * f, i as u64 + 100);
            let d = Direct::new(w, c, f, &kernel);
            let mut padded = vec![f32::NAN; d.padded_len()];
            d.pad_image(&img, &mut padded);
            let mut got = vec![f32::NAN; w.out_hw[0] * w.out_hw[1] * f];
            d.rows(&padded, 0, &mut got);
            let want = naive(&w, c, f, &img, &kernel);
            for (j, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()),
                    "case {i}, output {j}: {g} vs {e}"
                );
            }
            // Rows from the middle (a band on another thread) agree with the whole image.
            let row = w.out_hw[1] * f;
            if w.out_hw[0] > 2 {
                let mut band = vec![f32::NAN; row * (w.out_hw[0] - 2)];
                d.rows(&padded, 2, &mut band);
                assert_eq!(band, got[2 * row..], "case {i}: band from row 2");
            }
            let spread = want.iter().cloned().fold(f64::MIN, f64::max)
                - want.iter().cloned().fold(f64::MAX, f64::min);
            assert!(spread > 0.1, "case {i}: outputs depend on the input");
        }
    }

    #[test]
    fn declines_many_channels_and_huge_windows() {
        let w = Window2d::new([3, 3], [1, 1], Padding::Same, [8, 8]);
        assert!(!supports(&w, MAX_IN_CHANNELS + 1));
        assert!(!supports(&w, 0));
        let big = Window2d::new([11, 11], [1, 1], Padding::Same, [16, 16]);
        assert!(!supports(&big, 3));
    }
}
