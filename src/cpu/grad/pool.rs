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
            // Per channel: the maximum so far (all-maxima rule) and the winning tap (first).
            let mut best = vec![0.0f32; ch];
            let mut at_tap = vec![0u32; ch];
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
                                if pixels.is_empty() {
                                    continue;
                                }
                                first_maximum(img, &pixels, &mut at_tap);
                                add_to_winners(dxi, &pixels, &at_tap, g);
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

/// Per channel, the window tap (index into `pixels`, the window's in-bounds pixel offsets in
/// window order) holding the first maximum, as TensorFlow's MaxPoolGrad picks it: the first
/// element, then only a strictly larger one. Runs on blocks of `LANES` channels held in local
/// arrays, so the choice compiles to vector compares and blends, not a branch per channel
/// (a mispredicted branch on every other element was most of this op's time).
fn first_maximum(img: &[f32], pixels: &[usize], at_tap: &mut [u32]) {
    const LANES: usize = 8;
    let ch = at_tap.len();
    // Lane l of a block reads channel c0 + l, or repeats the block's last channel past the
    // row's end (a duplicate lane that is never written back): every load is a whole array,
    // never a memcpy call.
    let lane = |px: usize, c0: usize, width: usize| -> [f32; LANES] {
        if width == LANES {
            img[px + c0..px + c0 + LANES]
                .try_into()
                .expect("a block of LANES channels")
        } else {
            std::array::from_fn(|l| img[px + c0 + l.min(width - 1)])
        }
    };
    let mut c0 = 0;
    while c0 < ch {
        let width = LANES.min(ch - c0);
        let mut b = lane(pixels[0], c0, width);
        let mut a = [0u32; LANES];
        for (t, &px) in pixels.iter().enumerate().skip(1) {
            let v = lane(px, c0, width);
            for l in 0..LANES {
                let larger = v[l] > b[l];
                b[l] = if larger { v[l] } else { b[l] };
                a[l] = if larger { t as u32 } else { a[l] };
            }
        }
        if width == LANES {
            at_tap[c0..c0 + LANES].copy_from_slice(&a);
        } else {
            at_tap[c0..c0 + width].copy_from_slice(&a[..width]);
        }
        c0 += width;
    }
}

/// Adds each channel's gradient `g` to the pixel of its winning tap: one pass per tap over the
/// channel row (contiguous, vectorized) instead of a scatter per channel.
fn add_to_winners(dx: &mut [f32], pixels: &[usize], at_tap: &[u32], g: &[f32]) {
    let ch = g.len();
    for (t, &px) in pixels.iter().enumerate() {
        let t = t as u32;
        for ((d, &a), &v) in dx[px..px + ch].iter_mut().zip(at_tap).zip(g) {
            *d += if a == t { v } else { 0.0 };
        }
    }
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

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::super::check::{check_node, uniform};
    use super::super::testing::{assert_close, distinct, one_node, run_backward};
    use crate::cpu::Tensor;
    use crate::graph::*;

    fn pool_graph(
        op: PoolOp,
        item: &[usize],
        size: &[usize],
        strides: &[usize],
        padding: Padding,
    ) -> Graph {
        let r = size.len();
        let window = Window::new(size, strides, &vec![1; r], padding, &item[..r]);
        one_node(item, |_| {
            Op::Pool(Pool {
                op,
                window,
                channels: item[r],
            })
        })
    }

    /// (item shape, pool size, strides, padding, batch)
    type PoolCase = (Vec<usize>, Vec<usize>, Vec<usize>, Padding, usize);

    fn pool_cases() -> Vec<PoolCase> {
        use Padding::*;
        vec![
            (vec![7, 6, 3], vec![3, 3], vec![2, 2], Same, 3),
            (vec![8, 7, 5], vec![2, 2], vec![3, 3], Valid, 1),
            (vec![5, 6, 2], vec![2, 3], vec![1, 1], Same, 3),
            (vec![6, 6, 4], vec![2, 2], vec![2, 2], Valid, 2),
            // Channel rows of whole 8-lane blocks, and blocks plus a tail.
            (vec![4, 4, 16], vec![2, 2], vec![2, 2], Valid, 2),
            (vec![5, 7, 11], vec![3, 3], vec![2, 2], Same, 2),
            (vec![9, 4], vec![3], vec![2], Same, 3),
            (vec![9, 3], vec![2], vec![2], Valid, 1),
            (vec![10, 3], vec![2], vec![3], Valid, 2),
            (vec![4, 5, 3, 2], vec![2, 2, 2], vec![1, 2, 2], Same, 2),
            (vec![5, 4, 5, 3], vec![3, 2, 2], vec![2, 1, 3], Valid, 1),
        ]
    }

    #[test]
    fn pooling_backward_matches_finite_differences() {
        for op in [PoolOp::Max, PoolOp::Average] {
            for (i, (item, size, strides, padding, batch)) in pool_cases().into_iter().enumerate() {
                let g = pool_graph(op, &item, &size, &strides, padding);
                let mut shape = vec![batch];
                shape.extend(&item);
                // Max: values no finite difference can reorder within a window.
                let x = match op {
                    PoolOp::Max => distinct(&shape),
                    PoolOp::Average => uniform(&shape, 3, 1.0),
                };
                let r = std::panic::catch_unwind(|| {
                    check_node(&g, 0, vec![Tensor::F32(x)], None, 1e-2)
                });
                assert!(r.is_ok(), "{} pooling case {i}", op.name());
            }
        }
    }

    fn ones_backward(g: &Graph, x_shape: &[usize]) -> ArrayD<f32> {
        let x = ArrayD::from_elem(IxDyn(x_shape), 1.0f32);
        let mut y_shape = vec![x_shape[0]];
        y_shape.extend(&g.value(g.nodes[0].outputs[0]).shape);
        let dy = ArrayD::from_elem(IxDyn(&y_shape), 1.0f32);
        run_backward(g, &x, &dy, true, None).0.unwrap()
    }

    /// On all-equal inputs, TensorFlow 2.21's kernels (tf.GradientTape of Keras's layers, dy = 1)
    /// give these input gradients: MaxPoolGrad (1-D, 2-D) the first element of each clipped
    /// window, MaxPool3DGrad every tied element.
    #[test]
    fn max_pooling_ties_go_where_tensorflow_sends_them() {
        let g = pool_graph(PoolOp::Max, &[4, 4, 1], &[3, 3], &[1, 1], Padding::Same);
        let expected = [
            4., 2., 2., 0., 2., 1., 1., 0., 2., 1., 1., 0., 0., 0., 0., 0.,
        ];
        let got = ones_backward(&g, &[1, 4, 4, 1]);
        assert_eq!(got.iter().copied().collect::<Vec<_>>(), expected);
        // The same per channel with a whole 8-lane block and a tail of channels.
        let g = pool_graph(PoolOp::Max, &[4, 4, 11], &[3, 3], &[1, 1], Padding::Same);
        let got = ones_backward(&g, &[1, 4, 4, 11]);
        let per_channel: Vec<f32> = expected.iter().flat_map(|&e| [e; 11]).collect();
        assert_eq!(got.iter().copied().collect::<Vec<_>>(), per_channel);

        let g = pool_graph(PoolOp::Max, &[5, 1], &[2], &[1], Padding::Same);
        let got = ones_backward(&g, &[1, 5, 1]);
        assert_eq!(got.iter().copied().collect::<Vec<_>>(), [1.0; 5]);

        let g = pool_graph(
            PoolOp::Max,
            &[2, 3, 3, 1],
            &[2, 2, 2],
            &[1, 1, 1],
            Padding::Valid,
        );
        let plane = [1., 2., 1., 2., 4., 2., 1., 2., 1.];
        let got = ones_backward(&g, &[1, 2, 3, 3, 1]);
        assert_eq!(
            got.iter().copied().collect::<Vec<_>>(),
            [plane, plane].concat()
        );

        // Average, same: each input gets 1/count of every window that holds it.
        let g = pool_graph(PoolOp::Average, &[3, 3, 1], &[2, 2], &[1, 1], Padding::Same);
        let expected = [0.25, 0.5, 0.75, 0.5, 1.0, 1.5, 0.75, 1.5, 2.25];
        let got = ones_backward(&g, &[1, 3, 3, 1]);
        assert_close(
            "average same",
            &got,
            &ArrayD::from_shape_vec(IxDyn(&[1, 3, 3, 1]), expected.to_vec()).unwrap(),
        );
    }

    fn global_graph(op: PoolOp, item: &[usize], keepdims: bool) -> Graph {
        one_node(item, |_| Op::GlobalPool {
            op,
            keepdims,
            rank: item.len() - 1,
        })
    }

    #[test]
    fn global_pooling_backward_matches_finite_differences() {
        let items: [&[usize]; 4] = [&[7, 3], &[5, 4, 2], &[3, 4, 4, 3], &[1, 5]];
        for op in [PoolOp::Max, PoolOp::Average] {
            for keepdims in [false, true] {
                for (i, item) in items.iter().enumerate() {
                    let g = global_graph(op, item, keepdims);
                    let mut shape = vec![1 + 2 * (i % 2)];
                    shape.extend(*item);
                    let x = match op {
                        PoolOp::Max => distinct(&shape),
                        PoolOp::Average => uniform(&shape, 4, 1.0),
                    };
                    let r = std::panic::catch_unwind(|| {
                        check_node(&g, 0, vec![Tensor::F32(x)], None, 1e-2)
                    });
                    assert!(
                        r.is_ok(),
                        "global {} case {i} keepdims {keepdims}",
                        op.name()
                    );
                }
            }
        }
    }

    #[test]
    fn masked_global_average_matches_finite_differences() {
        let g = global_graph(PoolOp::Average, &[6, 3], false);
        let mask = ndarray::Array2::from_shape_fn((3, 6), |(b, t)| t < 6 - 2 * b || t == 0);
        let x = Tensor::F32(uniform(&[3, 6, 3], 5, 1.0));
        check_node(&g, 0, vec![x], Some(&mask), 1e-2);
    }

    /// TensorFlow 2.21: reduce_max splits dy among tied maxima; the masked mean (Keras's
    /// where(mask, x, 0) summed over sum(mask)) gives masked steps exactly 0, also when every
    /// step is masked.
    #[test]
    fn global_ties_and_masks_follow_tensorflow() {
        let g = global_graph(PoolOp::Max, &[5, 1], false);
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 5, 1]), vec![1., 3., 3., 2., 3.]).unwrap();
        let dy = ArrayD::from_elem(IxDyn(&[1, 1]), 1.0f32);
        let dx = run_backward(&g, &x, &dy, true, None).0.unwrap();
        let third = 1.0 / 3.0;
        let expected = vec![0., third, third, 0., third];
        assert_close(
            "ties",
            &dx,
            &ArrayD::from_shape_vec(IxDyn(&[1, 5, 1]), expected).unwrap(),
        );

        let g = global_graph(PoolOp::Average, &[4, 1], false);
        let x = ArrayD::from_elem(IxDyn(&[2, 4, 1]), 1.0f32);
        let dy = ArrayD::from_elem(IxDyn(&[2, 1]), 1.0f32);
        let mask = ndarray::Array2::from_shape_vec(
            (2, 4),
            vec![true, false, true, false, false, false, false, false],
        )
        .unwrap();
        let dx = run_backward(&g, &x, &dy, true, Some(&mask)).0.unwrap();
        assert_eq!(
            dx.iter().copied().collect::<Vec<_>>(),
            [0.5, 0., 0.5, 0., 0., 0., 0., 0.]
        );
    }
}
