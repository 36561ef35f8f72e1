//! Backward of pooling, as TensorFlow's CPU kernels compute it (what Keras's `fit` uses):
//! - max 1-D / 2-D (MaxPoolGrad): each window's gradient goes to its first maximal element in
//!   window order (row-major over the window clipped to the input: padding never wins);
//! - max 3-D (MaxPool3DGrad): every element equal to the window's max gets the whole gradient;
//! - average (AvgPoolGrad): dy / (in-bounds count) to every in-bounds element;
//! - global max (reduce_max's gradient): dy split equally among the tied maxima;
//! - global average: dy / positions; the masked 1-D mean gives unmasked steps dy / Σ mask.

use ndarray::{Array2, ArrayD};
use rayon::prelude::*;

use super::conv::flat;
use crate::error::{Error, Result};
use crate::graph::*;

fn shaped(data: Vec<f32>, like: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    ArrayD::from_shape_vec(like.raw_dim(), data)
        .map_err(|e| Error::Internal(format!("pooling gradient: {e}")))
}

/// Pool backward: dx of the input `x` from the output gradient `dy`.
pub(super) fn pool(p: &Pool, x: &ArrayD<f32>, dy: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let w = &p.window;
    let ch = p.channels;
    let [od, oh, ow] = w.output;
    let [_, ih, iw] = w.input;
    let in_image = w.in_positions() * ch;
    let out_image = w.out_positions() * ch;
    let xs = flat(x);
    let dys = flat(dy);
    let mut dx = vec![0.0f32; xs.len()];
    if dx.is_empty() || out_image == 0 {
        return shaped(dx, x);
    }
    let range = |o: usize, a: usize| {
        let start = (o * w.strides[a]) as isize - w.pad_before[a] as isize;
        let end = (start + w.kernel[a] as isize).min(w.input[a] as isize);
        start.max(0) as usize..end.max(0) as usize
    };
    let rule = match (p.op, w.rank) {
        (PoolOp::Average, _) => Rule::Average,
        (PoolOp::Max, 3) => Rule::AllMaxima,
        (PoolOp::Max, _) => Rule::FirstMaximum,
    };
    dx.par_chunks_mut(in_image)
        .zip(xs.par_chunks(in_image).zip(dys.par_chunks(out_image)))
        .for_each(|(dxi, (img, dyi))| {
            // Per channel: the best value so far and where it is (image offset of the pixel).
            let mut best = vec![0.0f32; ch];
            let mut at_best = vec![usize::MAX; ch];
            let mut scaled = vec![0.0f32; ch];
            let mut pixels = Vec::with_capacity(w.taps());
            let mut o = 0;
            for oz in 0..od {
                let zs = range(oz, 0);
                for oy in 0..oh {
                    let ys = range(oy, 1);
                    for ox in 0..ow {
                        let xs = range(ox, 2);
                        let g = &dyi[o * ch..][..ch];
                        o += 1;
                        // The window's in-bounds pixels (image offsets), in window order.
                        pixels.clear();
                        for z in zs.clone() {
                            for yy in ys.clone() {
                                let row = (z * ih + yy) * iw;
                                pixels.extend(xs.clone().map(|xx| (row + xx) * ch));
                            }
                        }
                        match rule {
                            Rule::Average => {
                                let count = pixels.len() as f32;
                                scaled.iter_mut().zip(g).for_each(|(s, &v)| *s = v / count);
                                for &px in &pixels {
                                    dxi[px..px + ch]
                                        .iter_mut()
                                        .zip(&scaled)
                                        .for_each(|(d, &s)| *d += s);
                                }
                            }
                            Rule::FirstMaximum => {
                                at_best.fill(usize::MAX);
                                for &px in &pixels {
                                    for (c, &v) in img[px..px + ch].iter().enumerate() {
                                        // TensorFlow: the first element, then only a larger one.
                                        if at_best[c] == usize::MAX || v > best[c] {
                                            best[c] = v;
                                            at_best[c] = px + c;
                                        }
                                    }
                                }
                                for (&i, &v) in at_best.iter().zip(g) {
                                    if i != usize::MAX {
                                        dxi[i] += v;
                                    }
                                }
                            }
                            Rule::AllMaxima => {
                                best.fill(f32::NEG_INFINITY);
                                for &px in &pixels {
                                    best.iter_mut()
                                        .zip(&img[px..px + ch])
                                        .for_each(|(b, &v)| *b = b.max(v));
                                }
                                for &px in &pixels {
                                    for (c, (d, &v)) in dxi[px..px + ch]
                                        .iter_mut()
                                        .zip(&img[px..px + ch])
                                        .enumerate()
                                    {
                                        if v == best[c] {
                                            *d += g[c];
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
    shaped(dx, x)
}

#[derive(Clone, Copy)]
enum Rule {
    Average,
    FirstMaximum,
    AllMaxima,
}

/// GlobalPool backward: x (N, positions..., C), dy (N, C) or with keepdims (N, 1..., C).
pub(super) fn global_pool(
    op: PoolOp,
    x: &ArrayD<f32>,
    dy: &ArrayD<f32>,
    mask: Option<&Array2<bool>>,
) -> Result<ArrayD<f32>> {
    let n = x.shape()[0];
    let ch = *x.shape().last().unwrap_or(&1);
    let xs = flat(x);
    let dys = flat(dy);
    let positions = xs.len().checked_div(n * ch).unwrap_or(0);
    if dys.len() != n * ch {
        return Err(Error::Internal(format!(
            "global pooling gradient of shape {:?} for an input {:?}",
            dy.shape(),
            x.shape()
        )));
    }
    if let Some(m) = mask {
        if m.dim() != (n, positions) {
            return Err(Error::Internal(format!(
                "mask of shape {:?} for {n} sequences of {positions} steps",
                m.shape()
            )));
        }
    }
    let mut dx = vec![0.0f32; xs.len()];
    if dx.is_empty() {
        return shaped(dx, x);
    }
    dx.par_chunks_mut(positions * ch)
        .zip(xs.par_chunks(positions * ch))
        .enumerate()
        .for_each(|(b, (dxi, img))| {
            let g = &dys[b * ch..][..ch];
            match op {
                PoolOp::Max => {
                    let mut best = vec![f32::NEG_INFINITY; ch];
                    for px in img.chunks_exact(ch) {
                        best.iter_mut().zip(px).for_each(|(m, &v)| *m = m.max(v));
                    }
                    let mut ties = vec![0usize; ch];
                    for px in img.chunks_exact(ch) {
                        for ((t, &v), &m) in ties.iter_mut().zip(px).zip(&best) {
                            *t += usize::from(v == m);
                        }
                    }
                    let share: Vec<f32> =
                        g.iter().zip(&ties).map(|(&v, &t)| v / t as f32).collect();
                    for (d, px) in dxi.chunks_exact_mut(ch).zip(img.chunks_exact(ch)) {
                        for (((d, &v), &m), &s) in d.iter_mut().zip(px).zip(&best).zip(&share) {
                            if v == m {
                                *d = s;
                            }
                        }
                    }
                }
                PoolOp::Average => match mask {
                    // Keras: sum(where(mask, x, 0)) / sum(mask): masked steps get exactly 0.
                    Some(m) => {
                        let count = (0..positions).filter(|&t| m[[b, t]]).count() as f32;
                        let share: Vec<f32> = g.iter().map(|&v| v / count).collect();
                        for (t, d) in dxi.chunks_exact_mut(ch).enumerate() {
                            if m[[b, t]] {
                                d.copy_from_slice(&share);
                            }
                        }
                    }
                    None => {
                        let share: Vec<f32> = g.iter().map(|&v| v / positions as f32).collect();
                        for d in dxi.chunks_exact_mut(ch) {
                            d.copy_from_slice(&share);
                        }
                    }
                },
            }
        });
    shaped(dx, x)
}
