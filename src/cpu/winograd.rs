//! 3x3 stride-1 convolution by Winograd F(2x2, 3x3) (Lavin & Gray, 2016).
//!
//! Each 4x4 input tile (stride 2) gives one 2x2 output tile. With the kernel transformed once
//! per call, U = G g Gᵀ, and each tile transformed, V = Bᵀ d B, the output is
//! Y = Aᵀ (U ⊙ V) A; summed over input channels, the 16 elementwise products become 16 GEMMs
//! (tiles x Cin) · (Cin x Cout), one per position of the transformed tile: 16 multiplies per
//! output tile and channel pair where im2col needs 36, i.e. 2.25x fewer FLOPs. F(2,3)'s
//! transforms only add, subtract and halve, so the result stays within f32 rounding of the
//! direct convolution.
//!
//! Work is split into blocks of a few dozen tiles (whole images when they are small, bands of
//! tile rows when they are large), one rayon task each, so that a block's transformed input,
//! GEMM results and output stay in cache from the input transform to the activation. Every
//! transform works on whole channel vectors, which the compiler vectorizes.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use ndarray::{s, Array4, ArrayView3, ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::activation;
use super::gemm::{matmul_into, matmul_into_on};
use super::ConvArgs as Conv2d;
use crate::graph::{Activation, Pool, Window};

/// Positions in a transformed 4x4 tile: one GEMM each.
const POSITIONS: usize = 16;
/// Below this many input channels the GEMMs are too thin to win; a 3-channel image layer stays
/// on im2col.
const MIN_IN_CHANNELS: usize = 8;
/// Tiles per block: large enough for efficient GEMMs, small enough that a block's scratch,
/// 16 x tiles x (Cin + Cout) floats, stays in the L2/L3 caches.
const BLOCK_TILES: usize = 128;

/// Whether [`conv2d`] handles this layer: a 3x3 kernel, stride 1, at least 8 input channels.
pub(super) fn supports(c: &Conv2d) -> bool {
    c.window.kernel == [3, 3]
        && c.window.strides == [1, 1]
        && c.in_channels >= MIN_IN_CHANNELS
        && c.kernel.shape() == [3, 3, c.in_channels, c.filters]
        && c.bias.is_none_or(|b| b.len() == c.filters)
}

/// Where the tiles of a layer lie: input and output sizes, padding and tile counts.
struct Geometry {
    in_h: usize,
    in_w: usize,
    in_channels: usize,
    out_h: usize,
    out_w: usize,
    out_channels: usize,
    pad_top: usize,
    pad_left: usize,
    tiles_w: usize,
}

/// One unit of parallel work: `images` whole images, or one band of tile rows of one image.
#[derive(Debug, Clone, Copy)]
struct Span {
    first_image: usize,
    images: usize,
    first_tile_row: usize,
    /// Output rows per image in this block (the last band of an odd height has an odd count).
    out_rows: usize,
}

/// A span with where its results go: the convolution's rows, or with a fused pooling the
/// pooled rows, NHWC and contiguous.
struct Block<'a> {
    out: &'a mut [f32],
    span: Span,
}

impl Span {
    fn tile_rows(&self) -> usize {
        self.out_rows.div_ceil(2)
    }
}

/// The convolution of `x` (NHWC) with bias and activation, or `None` when the layer or the
/// input is not one this path handles (the caller then uses im2col).
///
/// With `pool` (a pooling layer that reads only this convolution's output) the result is the
/// pooled output: each block's convolution is staged in the thread's scratch and pooled while
/// in cache, so the full-size output is never written. Blocks that are bands of a large image
/// are pooled the same way when no pooling window crosses a band; otherwise the whole output is
/// made and then pooled.
pub(super) fn conv2d<S: ndarray::Data<Elem = f32>>(
    c: &Conv2d,
    x: &ndarray::ArrayBase<S, ndarray::Ix4>,
    pool: Option<&Pool>,
) -> Option<Array4<f32>> {
    if !supports(c) {
        return None;
    }
    let n = x.shape()[0];
    let [in_h, in_w] = c.window.in_hw;
    if x.shape() != [n, in_h, in_w, c.in_channels] {
        return None;
    }
    let x = x.as_standard_layout();
    let input = x.as_slice()?;
    let kernel = c.kernel.as_standard_layout();
    let kernel = kernel.as_slice()?;
    let bias = match c.bias {
        Some(b) => b.to_vec(),
        None => vec![0.0; c.filters],
    };
    let [out_h, out_w] = c.window.out_hw;
    let geo = Geometry {
        in_h,
        in_w,
        in_channels: c.in_channels,
        out_h,
        out_w,
        out_channels: c.filters,
        pad_top: c.window.pad_top_left[0],
        pad_left: c.window.pad_top_left[1],
        tiles_w: out_w.div_ceil(2),
    };
    let spans = block_spans(&geo, n);
    if let Some(p) = pool {
        if !pools_by_block(p, &geo, &spans) {
            let y = conv2d(c, &x, None)?.into_dyn();
            let dims = [n, p.window.output[1], p.window.output[2], p.channels];
            let pooled = super::conv::pool(p, &y, &dims).ok()?;
            return pooled.into_dimensionality().ok();
        }
    }
    let [dest_h, dest_w] = super::dest_hw(pool, [out_h, out_w]);
    let mut out = Array4::<f32>::zeros((n, dest_h, dest_w, c.filters));
    let out_all = out.as_slice_mut()?;
    if out_all.is_empty() {
        return Some(out);
    }
    let (cin, cout) = (geo.in_channels, geo.out_channels);
    let u = transformed_kernel(kernel, c.kernel_generation, cin, cout);
    let u = ArrayView3::from_shape((POSITIONS, cin, cout), &u[..]).ok()?;
    // Plain relu, by far the most common, is fused into the output transform.
    let fused_relu = c.activation == Activation::RELU;
    let blocks = carve_blocks(out_all, &spans, |span| {
        let rows = pool.map_or(span.out_rows, |p| pooled_rows(p, span, geo.out_h));
        span.images * rows * dest_w * cout
    });
    let few_blocks = blocks.len() < rayon::current_num_threads();
    blocks.into_par_iter().for_each(|Block { out, span }| {
        let tiles = span.images * span.tile_rows() * geo.tiles_w;
        let staged_len = match pool {
            Some(_) => span.images * span.out_rows * geo.out_w * cout,
            None => 0,
        };
        // A stolen nested task (the GEMMs may use rayon) finds the cell empty and allocates
        // its own scratch, so taking it out is safe where a RefCell borrow would panic.
        let mut scratch = SCRATCH.take();
        let (v, m, work, staged) = carve_scratch(&mut scratch, tiles, cin, cout, staged_len);
        transform_input(input, &geo, &span, v, work);
        let v = ArrayView3::from_shape((tiles, POSITIONS, cin), &*v)
            .expect("the scratch holds tiles x 16 x Cin floats");
        let mut m = ArrayViewMut3::from_shape((tiles, POSITIONS, cout), m)
            .expect("the scratch holds tiles x 16 x Cout floats");
        if few_blocks {
            // Fewer blocks than threads (batch 1): the 16 GEMMs side by side on the threads,
            // one fork-join per block instead of one per GEMM.
            let per_position: Vec<_> = m.axis_iter_mut(Axis(1)).enumerate().collect();
            per_position.into_par_iter().for_each(|(pos, mp)| {
                matmul_into_on(
                    v.slice(s![.., pos, ..]),
                    u.slice(s![pos, .., ..]),
                    mp,
                    false,
                );
            });
        } else {
            for pos in 0..POSITIONS {
                matmul_into(
                    v.slice(s![.., pos, ..]),
                    u.slice(s![pos, .., ..]),
                    m.slice_mut(s![.., pos, ..]),
                );
            }
        }
        let m = m.into_slice().expect("a standard-layout view of a slice");
        let (conv_out, pooled) = match pool {
            Some(p) => (staged, Some((p, out))),
            None => (out, None),
        };
        transform_output(m, &bias, fused_relu, &geo, conv_out, span.out_rows, work);
        if !fused_relu {
            activation::apply_rows(c.activation, conv_out, cout);
        }
        if let Some((p, dest)) = pooled {
            pool_block(p, &span, geo.out_h, conv_out, dest);
        }
        SCRATCH.set(scratch);
    });
    Some(out)
}

thread_local! {
    /// Per-thread block scratch, reused across blocks and calls.
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Splits the per-thread scratch into the block's transformed input V ([tile][position][Cin]),
/// GEMM results M ([tile][position][Cout]), the transforms' small work area, and `staged_len`
/// floats for a convolution output that is pooled before it leaves the block.
fn carve_scratch(
    scratch: &mut Vec<f32>,
    tiles: usize,
    cin: usize,
    cout: usize,
    staged_len: usize,
) -> (&mut [f32], &mut [f32], &mut [f32], &mut [f32]) {
    let v_len = tiles * POSITIONS * cin;
    let m_len = tiles * POSITIONS * cout;
    let w_len = work_len(cin, cout);
    let need = v_len + m_len + w_len + staged_len;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (v, rest) = scratch.split_at_mut(v_len);
    let (m, rest) = rest.split_at_mut(m_len);
    let (work, rest) = rest.split_at_mut(w_len);
    (v, m, work, &mut rest[..staged_len])
}

/// Work area of the transforms: 16 x Cin half-transformed input plus Cin zeros (the padding),
/// or 8 x Cout half-transformed output plus 2 x Cout for outputs past the edge.
fn work_len(cin: usize, cout: usize) -> usize {
    (17 * cin).max(10 * cout)
}

/// Cuts the output into blocks of about [`BLOCK_TILES`] tiles: groups of whole images when
/// they are small, bands of tile rows of one image when they are large.
fn block_spans(geo: &Geometry, n: usize) -> Vec<Span> {
    let tiles_h = geo.out_h.div_ceil(2);
    let tiles_per_image = tiles_h * geo.tiles_w;
    let images_per_block = (BLOCK_TILES / tiles_per_image.max(1)).clamp(1, n.max(1));
    let mut spans = Vec::new();
    if images_per_block > 1 || tiles_per_image <= BLOCK_TILES {
        for first_image in (0..n).step_by(images_per_block) {
            spans.push(Span {
                first_image,
                images: images_per_block.min(n - first_image),
                first_tile_row: 0,
                out_rows: geo.out_h,
            });
        }
    } else {
        let band_tile_rows = (BLOCK_TILES / geo.tiles_w).clamp(1, tiles_h);
        for image in 0..n {
            for first_tile_row in (0..tiles_h).step_by(band_tile_rows) {
                let first_row = 2 * first_tile_row;
                spans.push(Span {
                    first_image: image,
                    images: 1,
                    first_tile_row,
                    out_rows: (2 * band_tile_rows).min(geo.out_h - first_row),
                });
            }
        }
    }
    spans
}

/// Hands each span its consecutive part of `out`, `len(span)` floats.
fn carve_blocks<'a>(
    mut out: &'a mut [f32],
    spans: &[Span],
    len: impl Fn(&Span) -> usize,
) -> Vec<Block<'a>> {
    spans
        .iter()
        .map(|span| {
            let (part, rest) = std::mem::take(&mut out).split_at_mut(len(span));
            out = rest;
            Block {
                out: part,
                span: *span,
            }
        })
        .collect()
}

/// Whether each block can pool its own rows: always for whole images; for bands, when the
/// pooling has no padding before and its row windows are its row strides and tile the bands.
fn pools_by_block(p: &Pool, geo: &Geometry, spans: &[Span]) -> bool {
    let w = &p.window;
    if w.input != [1, geo.out_h, geo.out_w] || p.channels != geo.out_channels {
        return false;
    }
    spans.iter().all(|s| s.out_rows == geo.out_h)
        || (w.pad_before == [0, 0, 0]
            && w.kernel[1] == w.strides[1]
            && spans.iter().all(|s| {
                s.out_rows % w.kernel[1] == 0 || 2 * s.first_tile_row + s.out_rows == geo.out_h
            }))
}

/// Pooled rows per image of a span: the pooling's for whole images; for a band, its rows'
/// windows ([`pools_by_block`] holds).
fn pooled_rows(p: &Pool, span: &Span, out_h: usize) -> usize {
    let w = &p.window;
    if span.out_rows == out_h {
        return w.output[1];
    }
    let first = 2 * span.first_tile_row / w.kernel[1];
    let end = if 2 * span.first_tile_row + span.out_rows == out_h {
        w.output[1]
    } else {
        (2 * span.first_tile_row + span.out_rows) / w.kernel[1]
    };
    end - first
}

/// Pools a block's staged convolution rows into `dest`: image by image, or one band as an
/// image of the band's rows (its windows stop at the band's end, which is the image's end for
/// the last band).
fn pool_block(p: &Pool, span: &Span, out_h: usize, conv_out: &[f32], dest: &mut [f32]) {
    if span.out_rows == out_h {
        return super::conv::pool_images(p, dest, conv_out);
    }
    let rows = pooled_rows(p, span, out_h);
    let band = Pool {
        op: p.op,
        channels: p.channels,
        window: Window {
            input: [1, span.out_rows, p.window.input[2]],
            output: [1, rows, p.window.output[2]],
            ..p.window
        },
    };
    super::conv::pool_images(&band, dest, conv_out);
}

/// Splits `buf` into `N` consecutive slices of `len`.
fn split_rows<const N: usize>(buf: &mut [f32], len: usize) -> [&mut [f32]; N] {
    let mut rest = buf;
    std::array::from_fn(|_| {
        let (row, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        row
    })
}

/// One 1-D pass of Bᵀ over four channel vectors: (x0 - x2, x1 + x2, x2 - x1, x1 - x3).
#[inline(always)]
fn input_pass(x: [&[f32]; 4], out: [&mut [f32]; 4]) {
    let len = out[0].len();
    let [x0, x1, x2, x3] = x.map(|x| &x[..len]);
    let [o0, o1, o2, o3] = out.map(|o| &mut o[..len]);
    for i in 0..len {
        let (a, b, c, d) = (x0[i], x1[i], x2[i], x3[i]);
        o0[i] = a - c;
        o1[i] = b + c;
        o2[i] = c - b;
        o3[i] = b - d;
    }
}

/// One 1-D pass of Aᵀ over four channel vectors: (m0 + m1 + m2, m1 - m2 - m3).
#[inline(always)]
fn output_pass(m: [&[f32]; 4], o0: &mut [f32], o1: &mut [f32]) {
    let len = o0.len();
    let [m0, m1, m2, m3] = m.map(|m| &m[..len]);
    let o1 = &mut o1[..len];
    for i in 0..len {
        o0[i] = m0[i] + m1[i] + m2[i];
        o1[i] = m1[i] - m2[i] - m3[i];
    }
}

/// The last Aᵀ pass, plus bias and, if `relu`, max(0, ·), written to two output pixels.
#[inline(always)]
fn output_final(m: [&[f32]; 4], bias: &[f32], relu: bool, o0: &mut [f32], o1: &mut [f32]) {
    let len = o0.len();
    let [m0, m1, m2, m3] = m.map(|m| &m[..len]);
    let (bias, o1) = (&bias[..len], &mut o1[..len]);
    if relu {
        // f32::max(NaN, 0) is 0, as in activation::scalar's relu.
        for i in 0..len {
            o0[i] = (m0[i] + m1[i] + m2[i] + bias[i]).max(0.0);
            o1[i] = (m1[i] - m2[i] - m3[i] + bias[i]).max(0.0);
        }
    } else {
        for i in 0..len {
            o0[i] = m0[i] + m1[i] + m2[i] + bias[i];
            o1[i] = m1[i] - m2[i] - m3[i] + bias[i];
        }
    }
}

/// A kernel's transform, remembered with a copy of the kernel it came from.
struct CachedKernel {
    cin: usize,
    cout: usize,
    kernel: Vec<f32>,
    /// The stored parameter's generation and address, when the kernel was one.
    stored: Option<(u64, usize)>,
    u: Arc<Vec<f32>>,
}

/// Recently transformed kernels, least recently used first. Recomputing U costs little next to
/// a large batch but as much as the layer itself at batch 1. A stored parameter matches on its
/// generation and address (both change when its values may have: see
/// `ParamStore::generation`), so a batch-1 call reads no kernel; any other kernel matches on
/// its contents, never on its address alone, so a freed and reused allocation cannot hit.
static KERNEL_CACHE: Mutex<Vec<CachedKernel>> = Mutex::new(Vec::new());
/// Bound on the cache: floats held (kernel copies and transforms), about 128 MiB.
const KERNEL_CACHE_FLOATS: usize = 32 << 20;

/// U for `kernel`, from the cache when the same weights were transformed before.
fn transformed_kernel(
    kernel: &[f32],
    generation: Option<u64>,
    cin: usize,
    cout: usize,
) -> Arc<Vec<f32>> {
    let stored = generation.map(|g| (g, kernel.as_ptr() as usize));
    // A poisoned lock only means another thread panicked mid-update: skip the cache then.
    if let Ok(mut cache) = KERNEL_CACHE.lock() {
        let hit = |e: &CachedKernel| {
            (e.cin, e.cout) == (cin, cout)
                && e.kernel.len() == kernel.len()
                && match (stored, e.stored) {
                    (Some(now), Some(then)) => now == then,
                    _ => same_bits(&e.kernel, kernel),
                }
        };
        if let Some(i) = cache.iter().position(hit) {
            let entry = cache.remove(i);
            let u = Arc::clone(&entry.u);
            cache.push(entry);
            return u;
        }
    }
    let u = Arc::new(transform_kernel(kernel, cin, cout));
    let floats = kernel.len() + u.len();
    if floats <= KERNEL_CACHE_FLOATS {
        if let Ok(mut cache) = KERNEL_CACHE.lock() {
            let mut held: usize = cache.iter().map(|e| e.kernel.len() + e.u.len()).sum();
            while held + floats > KERNEL_CACHE_FLOATS && !cache.is_empty() {
                let evicted = cache.remove(0);
                held -= evicted.kernel.len() + evicted.u.len();
            }
            cache.push(CachedKernel {
                cin,
                cout,
                kernel: kernel.to_vec(),
                stored,
                u: Arc::clone(&u),
            });
        }
    }
    u
}

/// Bitwise equality, so that NaN weights match themselves.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    // As bytes, one memcmp: at batch 1 this check reads every kernel on every call.
    bytemuck::cast_slice::<f32, u8>(a) == bytemuck::cast_slice::<f32, u8>(b)
}

/// U = G g Gᵀ for every (input, output) channel pair, laid out [position][Cin][Cout] (each
/// position's GEMM reads one contiguous Cin x Cout matrix). `kernel` is HWIO.
///
/// G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]].
fn transform_kernel(kernel: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; cin * POSITIONS * cout];
    u.par_chunks_mut(POSITIONS * cout)
        .enumerate()
        .for_each_init(
            || vec![0.0f32; 12 * cout],
            |gg, (ci, u_ci)| {
                let tap = |ky: usize, kx: usize| {
                    let start = ((ky * 3 + kx) * cin + ci) * cout;
                    &kernel[start..start + cout]
                };
                // G g, 4x3, stored column-major: gg[kx * 4 + row].
                for kx in 0..3 {
                    let [r0, r1, r2, r3] = split_rows::<4>(&mut gg[kx * 4 * cout..], cout);
                    let (g0, g1, g2) = (tap(0, kx), tap(1, kx), tap(2, kx));
                    for i in 0..cout {
                        r0[i] = g0[i];
                        r1[i] = 0.5 * (g0[i] + g1[i] + g2[i]);
                        r2[i] = 0.5 * (g0[i] - g1[i] + g2[i]);
                        r3[i] = g2[i];
                    }
                }
                // (G g) Gᵀ, row by row.
                for row in 0..4 {
                    let col = |kx: usize| &gg[(kx * 4 + row) * cout..(kx * 4 + row + 1) * cout];
                    let (a, b, c) = (col(0), col(1), col(2));
                    let [u0, u1, u2, u3] = split_rows::<4>(&mut u_ci[row * 4 * cout..], cout);
                    for i in 0..cout {
                        u0[i] = a[i];
                        u1[i] = 0.5 * (a[i] + b[i] + c[i]);
                        u2[i] = 0.5 * (a[i] - b[i] + c[i]);
                        u3[i] = c[i];
                    }
                }
            },
        );
    // Regrouped [position][Cin][Cout], so that each position's GEMM reads one contiguous
    // Cin x Cout matrix (built per channel above, where the taps are at hand).
    let mut by_position = vec![0.0f32; u.len()];
    for (ci, u_ci) in u.chunks_exact(POSITIONS * cout).enumerate() {
        for (pos, row) in u_ci.chunks_exact(cout).enumerate() {
            by_position[(pos * cin + ci) * cout..][..cout].copy_from_slice(row);
        }
    }
    by_position
}

super::simd::multiversion! {
/// Fills `v` ([tile][position][Cin]) with V = Bᵀ d B of the block's tiles; taps outside the
/// image are the convolution's zero padding.
///
/// Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
fn transform_input(input: &[f32], geo: &Geometry, block: &Span, v: &mut [f32], work: &mut [f32]) {
    let cin = geo.in_channels;
    let image_len = geo.in_h * geo.in_w * cin;
    let (half, zeros) = work.split_at_mut(POSITIONS * cin);
    let zeros = &mut zeros[..cin];
    zeros.fill(0.0);
    let zeros: &[f32] = zeros;
    let mut tiles = v.chunks_exact_mut(POSITIONS * cin);
    for image in block.first_image..block.first_image + block.images {
        let pixels = &input[image * image_len..(image + 1) * image_len];
        for ty in block.first_tile_row..block.first_tile_row + block.tile_rows() {
            for tx in 0..geo.tiles_w {
                let Some(tile) = tiles.next() else { return };
                // The channel vector of tap (row, col) of the 4x4 window, zeros in the padding.
                let tap = |row: usize, col: usize| -> &[f32] {
                    let y = (2 * ty + row).checked_sub(geo.pad_top);
                    let x = (2 * tx + col).checked_sub(geo.pad_left);
                    match (y, x) {
                        (Some(y), Some(x)) if y < geo.in_h && x < geo.in_w => {
                            let start = (y * geo.in_w + x) * cin;
                            &pixels[start..start + cin]
                        }
                        _ => zeros,
                    }
                };
                // Bᵀ d, column by column, stored column-major: half[col * 4 + row].
                for col in 0..4 {
                    let x = [tap(0, col), tap(1, col), tap(2, col), tap(3, col)];
                    input_pass(x, split_rows(&mut half[col * 4 * cin..], cin));
                }
                // (Bᵀ d) B, row by row, into positions row * 4 + col.
                for row in 0..4 {
                    let x = std::array::from_fn(|col| {
                        &half[(col * 4 + row) * cin..(col * 4 + row + 1) * cin]
                    });
                    input_pass(x, split_rows(&mut tile[row * 4 * cin..], cin));
                }
            }
        }
    }
}
}

super::simd::multiversion! {
/// Writes Y = Aᵀ m A + bias (then max(0, ·) if `relu`) for every tile of `m`
/// ([tile][position][Cout]) into the block's output `out` (`out_rows` rows per image); the
/// parts of partial tiles past an odd-sized output go to the work area and are dropped.
///
/// Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]].
fn transform_output(
    m: &[f32],
    bias: &[f32],
    relu: bool,
    geo: &Geometry,
    out: &mut [f32],
    out_rows: usize,
    work: &mut [f32],
) {
    let cout = geo.out_channels;
    let (half, discard) = work.split_at_mut(8 * cout);
    let discard = &mut discard[..2 * cout];
    let tile_rows = out_rows.div_ceil(2);
    for (t, tile) in m.chunks_exact(POSITIONS * cout).enumerate() {
        let image = t / (tile_rows * geo.tiles_w);
        let band_row = t / geo.tiles_w % tile_rows;
        let tx = t % geo.tiles_w;
        let position = |p: usize| &tile[p * cout..(p + 1) * cout];
        // Aᵀ m, column by column, stored column-major: half[col * 2 + row].
        for col in 0..4 {
            let x = [
                position(col),
                position(4 + col),
                position(8 + col),
                position(12 + col),
            ];
            let (o0, o1) = half[col * 2 * cout..(col + 1) * 2 * cout].split_at_mut(cout);
            output_pass(x, o0, o1);
        }
        // (Aᵀ m) A, row by row, into the output pixels (2 ty + row, 2 tx) and (.., 2 tx + 1).
        for row in 0..2 {
            let x = std::array::from_fn(|col| {
                &half[(col * 2 + row) * cout..(col * 2 + row + 1) * cout]
            });
            let y = 2 * band_row + row;
            let x0 = 2 * tx;
            let start = ((image * out_rows + y) * geo.out_w + x0) * cout;
            let (o0, o1) = discard.split_at_mut(cout);
            if y >= out_rows {
                output_final(x, bias, relu, o0, o1);
            } else if x0 + 1 < geo.out_w {
                let (p0, p1) = out[start..start + 2 * cout].split_at_mut(cout);
                output_final(x, bias, relu, p0, p1);
            } else {
                output_final(x, bias, relu, &mut out[start..start + cout], o1);
            }
        }
    }
}
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::graph::{Padding, Window2d};
    use ndarray::Array1;

    /// A Conv2D layer that owns its weights; `args()` lends them as the CPU path reads them.
    struct Layer {
        window: Window2d,
        cin: usize,
        cout: usize,
        kernel: Array4<f32>,
        bias: Option<Array1<f32>>,
        activation: Activation,
    }

    impl Layer {
        fn args(&self) -> Conv2d<'_> {
            Conv2d {
                filters: self.cout,
                window: self.window,
                in_channels: self.cin,
                kernel: self.kernel.view(),
                bias: self.bias.as_ref().map(|b| b.view()),
                activation: self.activation,
                kernel_generation: None,
            }
        }
    }

    /// Deterministic values in [-1, 1) (xorshift), so failures reproduce.
    pub(in crate::cpu) fn noise(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn layer(
        hw: [usize; 2],
        cin: usize,
        cout: usize,
        padding: Padding,
        activation: Activation,
        seed: u64,
    ) -> Layer {
        // Weights scaled like Keras's initializers (variance 1 / fan_in), so the sums have a
        // trained layer's magnitude rather than growing with the channel count.
        let scale = (3.0 / (9 * cin) as f32).sqrt();
        let weights = noise(9 * cin * cout, seed)
            .iter()
            .map(|w| w * scale)
            .collect();
        Layer {
            window: Window2d::new([3, 3], [1, 1], padding, hw),
            cin,
            cout,
            kernel: Array4::from_shape_vec((3, 3, cin, cout), weights).expect("kernel shape"),
            bias: Some(Array1::from(noise(cout, seed + 1))),
            activation,
        }
    }

    fn input(n: usize, hw: [usize; 2], cin: usize, seed: u64) -> Array4<f32> {
        Array4::from_shape_vec((n, hw[0], hw[1], cin), noise(n * hw[0] * hw[1] * cin, seed))
            .expect("input shape")
    }

    /// Winograd against the im2col reference within 1e-5 * (1 + |ref|).
    fn assert_matches_im2col(layer: &Layer, x: &Array4<f32>) {
        let c = &layer.args();
        let got = conv2d(c, x, None).expect("a 3x3 stride-1 layer takes the Winograd path");
        let want = super::super::conv2d_im2col(c, x, None);
        assert_eq!(got.shape(), want.shape());
        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{:?} {:?}, {} -> {} channels: element {i}: winograd {g}, im2col {w}",
                c.window.in_hw,
                c.window.padding,
                c.in_channels,
                c.filters,
            );
        }
    }

    #[test]
    fn matches_im2col_on_odd_and_even_sizes_and_channel_counts() {
        let sizes = [[1, 1], [2, 2], [5, 7], [13, 11], [32, 32]];
        let mut seed = 1;
        for hw in sizes {
            for cin in [8, 17, 64] {
                for cout in [1, 5, 64] {
                    for padding in [Padding::Same, Padding::Valid] {
                        if padding == Padding::Valid && hw[0].min(hw[1]) < 3 {
                            continue; // No output; Keras rejects such a layer.
                        }
                        let c = layer(hw, cin, cout, padding, Activation::Linear, seed);
                        assert_matches_im2col(&c, &input(2, hw, cin, seed + 2));
                        seed += 3;
                    }
                }
            }
        }
    }

    #[test]
    fn fuses_bias_and_every_activation_like_im2col() {
        let activations = [
            Activation::RELU,
            Activation::Relu {
                negative_slope: 0.1,
                max_value: Some(0.5),
                threshold: 0.2,
            },
            Activation::Tanh,
            Activation::Softmax,
            Activation::Selu,
        ];
        for (i, act) in activations.into_iter().enumerate() {
            let c = layer([6, 9], 12, 10, Padding::Same, act, 100 + i as u64);
            assert_matches_im2col(&c, &input(3, [6, 9], 12, 200 + i as u64));
        }
        let mut no_bias = layer([5, 5], 8, 3, Padding::Same, Activation::RELU, 7);
        no_bias.bias = None;
        assert_matches_im2col(&no_bias, &input(1, [5, 5], 8, 8));
    }

    #[test]
    fn splits_large_images_into_bands_and_groups_small_ones() {
        // 64x64 has 1024 tiles per image (bands of tile rows); 4x4 has 4 (many images a block).
        let big = layer([64, 64], 8, 16, Padding::Same, Activation::RELU, 11);
        assert_matches_im2col(&big, &input(2, [64, 64], 8, 12));
        let small = layer([4, 4], 32, 8, Padding::Same, Activation::RELU, 13);
        assert_matches_im2col(&small, &input(37, [4, 4], 32, 14));
    }

    #[test]
    fn a_kernel_changed_in_place_is_transformed_again() {
        let mut c = layer([6, 6], 8, 4, Padding::Same, Activation::Linear, 41);
        let x = input(2, [6, 6], 8, 42);
        assert_matches_im2col(&c, &x);
        // The second call finds the transform in the cache.
        assert_matches_im2col(&c, &x);
        // Same allocation, same shape, new weights: the cached transform must not be used.
        c.kernel.mapv_inplace(|w| -2.0 * w);
        assert_matches_im2col(&c, &x);
    }

    #[test]
    fn a_stored_kernel_is_found_by_generation_and_missed_after_get_mut() {
        let c = layer([6, 6], 8, 4, Padding::Same, Activation::Linear, 43);
        let x = input(2, [6, 6], 8, 44);
        let mut store = crate::graph::ParamStore::default();
        let id = store.add("k", c.kernel.clone().into_dyn(), true);
        let run = |store: &crate::graph::ParamStore| {
            let kernel = store.view4(id);
            let args = Conv2d {
                kernel,
                kernel_generation: Some(store.generation(id)),
                ..c.args()
            };
            (
                conv2d(&args, &x, None).expect("the Winograd path"),
                super::super::conv2d_im2col(&args, &x, None),
            )
        };
        let (first, want) = run(&store);
        let (again, _) = run(&store);
        assert_eq!(first, again, "the cached transform gives the same bits");
        let before = store.generation(id);
        store.get_mut(id).mapv_inplace(|w| 3.0 * w - 0.5);
        assert_ne!(store.generation(id), before);
        let (changed, want_changed) = run(&store);
        for (got, want) in [(&first, &want), (&changed, &want_changed)] {
            for (g, w) in got.iter().zip(want.iter()) {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
        assert_ne!(first, changed, "the new weights were used");
    }

    #[test]
    fn an_empty_batch_or_output_is_empty() {
        let c = layer([8, 8], 8, 4, Padding::Same, Activation::Linear, 21);
        assert_eq!(
            conv2d(&c.args(), &input(0, [8, 8], 8, 22), None).map(|y| y.len()),
            Some(0)
        );
        let valid_too_small = layer([2, 2], 8, 4, Padding::Valid, Activation::Linear, 23);
        let y = conv2d(&valid_too_small.args(), &input(1, [2, 2], 8, 24), None);
        assert_eq!(y.map(|y| y.shape().to_vec()), Some(vec![1, 0, 0, 4]));
    }

    #[test]
    fn declines_layers_it_does_not_handle() {
        let few_channels = layer([8, 8], 3, 4, Padding::Same, Activation::Linear, 31);
        assert!(!supports(&few_channels.args()));
        let mut strided = layer([8, 8], 8, 4, Padding::Same, Activation::Linear, 32);
        strided.window = Window2d::new([3, 3], [2, 2], Padding::Same, [8, 8]);
        assert!(!supports(&strided.args()));
        let mut five_by_five = layer([8, 8], 8, 4, Padding::Same, Activation::Linear, 33);
        five_by_five.window = Window2d::new([5, 5], [1, 1], Padding::Same, [8, 8]);
        assert!(!supports(&five_by_five.args()));
        // An input whose shape disagrees with the layer goes back to the caller.
        let c = layer([8, 8], 8, 4, Padding::Same, Activation::Linear, 34);
        assert!(conv2d(&c.args(), &input(1, [8, 7], 8, 35), None).is_none());
    }
}
