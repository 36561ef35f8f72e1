//! Backward of the merges: the broadcast elementwise folds (Add ... Minimum layers and operator
//! nodes, masked or not), operators with a constant, and Dot. Where an input was broadcast its
//! gradient is summed over the stretched axes. Maximum and minimum route a tie to their first
//! argument, as TensorFlow's gradients of tf.maximum / tf.minimum do (`x >= y`, `x <= y`).

use ndarray::{Array3, ArrayD, ArrayView2, ArrayViewD, Axis, IxDyn, Zip};

use super::norm::l2_normalize_back;
use super::NodeIo;
use crate::error::{Error, Result};
use crate::graph::merge::NORMALIZE_EPSILON;
use crate::graph::*;

/// `g` summed down to `shape` (same rank, each dimension 1 or g's): the gradient of a value that
/// was broadcast to g's shape. Sums in f64.
pub(super) fn sum_to_shape(g: &ArrayD<f32>, shape: &[usize]) -> ArrayD<f32> {
    if g.shape() == shape {
        return g.clone();
    }
    let mut acc = g.mapv(f64::from);
    for (k, &d) in shape.iter().enumerate() {
        if d == 1 && acc.shape()[k] != 1 {
            acc = acc.sum_axis(Axis(k)).insert_axis(Axis(k));
        }
    }
    acc.mapv(|v| v as f32)
}

/// `x` viewed with leading size-1 item axes up to `rank` item axes, as the forward reads it
/// (Keras's expand_dims(x, 1)).
fn with_rank(x: &ArrayD<f32>, rank: usize) -> ArrayViewD<'_, f32> {
    let mut v = x.view();
    while v.ndim() < rank + 1 {
        v.insert_axis_inplace(Axis(1));
    }
    v
}

/// The gradient of an output-shaped `g` for input `x`: summed over the axes the fold stretched,
/// in x's own shape.
fn to_input(g: &ArrayD<f32>, x: &ArrayD<f32>, rank: usize, node: &Node) -> Result<ArrayD<f32>> {
    let shape = with_rank(x, rank).shape().to_vec();
    sum_to_shape(g, &shape)
        .into_shape_with_order(IxDyn(x.shape()))
        .map_err(|e| Error::Internal(format!("node '{}': merge gradient: {e}", node.name)))
}

/// One fold step backwards: acc = op(a, b) given d acc, the gradients of a and b.
fn step_back(
    op: BinaryOp,
    a: &ArrayD<f32>,
    b: &ArrayD<f32>,
    g: &ArrayD<f32>,
) -> (ArrayD<f32>, ArrayD<f32>) {
    let (mut ga, mut gb) = (g.clone(), g.clone());
    Zip::from(&mut ga)
        .and(&mut gb)
        .and(a)
        .and(b)
        .for_each(|ga, gb, &x, &y| match op {
            BinaryOp::Add => {}
            BinaryOp::Subtract => *gb = -*gb,
            BinaryOp::Multiply => {
                *ga *= y;
                *gb *= x;
            }
            // TensorFlow's RealDiv gradient: dy / y and dy * ((-x / y) / y).
            BinaryOp::Divide => {
                *ga /= y;
                *gb *= -x / y / y;
            }
            // tf.where, not a product: a NaN or inf gradient stays on its side.
            BinaryOp::Maximum | BinaryOp::Minimum => {
                let to_a = if op == BinaryOp::Maximum {
                    x >= y
                } else {
                    x <= y
                };
                if to_a {
                    *gb = 0.0;
                } else {
                    *ga = 0.0;
                }
            }
        });
    (ga, gb)
}

pub(super) fn merge_backward(
    m: &Merge,
    io: &NodeIo,
    dy: ArrayD<f32>,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    let node = io.node;
    let count = io.inputs.len();
    let xs = (0..count)
        .map(|i| io.input(i))
        .collect::<Result<Vec<_>>>()?;
    let out_dims = dy.shape().to_vec();
    let rank = out_dims.len() - 1;
    let broadcast = |i: usize| {
        let v = with_rank(xs[i], rank);
        v.broadcast(IxDyn(&out_dims))
            .map(|b| b.to_owned())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "node '{}': input {i} does not broadcast",
                    node.name
                ))
            })
    };
    let mut g = dy.as_standard_layout().into_owned();
    // Steps the mask drops hold 0 (Multiply) or input 0's values (Maximum, Minimum): their
    // gradient skips the fold, going nowhere or to input 0.
    let mut to_first = None;
    if let (true, Some(mask)) = (m.masked, io.mask) {
        let width = out_dims[2..].iter().product::<usize>().max(1);
        let mut dropped = ArrayD::<f32>::zeros(g.raw_dim());
        let gs = g.as_slice_mut().expect("standard layout");
        let ds = dropped.as_slice_mut().expect("standard layout");
        for ((row, drow), &keep) in gs
            .chunks_exact_mut(width)
            .zip(ds.chunks_exact_mut(width))
            .zip(mask.iter())
        {
            if !keep {
                drow.copy_from_slice(row);
                row.fill(0.0);
            }
        }
        if !m.masked_step_is_zero() {
            to_first = Some(dropped);
        }
    }
    if m.average {
        let n = count as f32;
        g.mapv_inplace(|v| v / n);
    }
    // The running results acc_0 = x_0, acc_i = op(acc_{i-1}, x_i), as the forward folds them.
    let mut accs = vec![broadcast(0)?];
    for i in 1..count - 1 {
        let b = broadcast(i)?;
        let mut next = accs[i - 1].clone();
        Zip::from(&mut next)
            .and(&b)
            .for_each(|a, &b| *a = m.op.apply(*a, b));
        accs.push(next);
    }
    let mut dxs = vec![None; count];
    for i in (1..count).rev() {
        if !io.needs[..=i].iter().any(|&n| n) {
            break;
        }
        let b = broadcast(i)?;
        let (ga, gb) = step_back(m.op, &accs[i - 1], &b, &g);
        if io.needs[i] {
            dxs[i] = Some(to_input(&gb, xs[i], rank, node)?);
        }
        g = ga;
    }
    if io.needs[0] {
        if let Some(extra) = to_first {
            g += &extra;
        }
        dxs[0] = Some(to_input(&g, xs[0], rank, node)?);
    }
    Ok(dxs)
}

/// `x op c` or `c op x`, elementwise, with TensorFlow's gradients (ties of maximum / minimum to
/// the first argument: the constant, when it comes first).
pub(super) fn scalar_backward(
    s: &ScalarOp,
    io: &NodeIo,
    mut dy: ArrayD<f32>,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    if !io.needs[0] {
        return Ok(vec![None]);
    }
    let x = io.input(0)?;
    let c = s.value;
    let pick = |g: f32, on: bool| if on { g } else { 0.0 };
    Zip::from(&mut dy).and(x).for_each(|g, &v| {
        // With the constant first, x is tf.maximum's second argument: it gets dy where the
        // first-argument test (c >= x, c <= x) fails, NaN included.
        let (c_wins_max, c_wins_min) = (c >= v, c <= v);
        *g = match (s.op, s.scalar_first) {
            (BinaryOp::Add, _) => *g,
            (BinaryOp::Subtract, false) => *g,
            (BinaryOp::Subtract, true) => -*g,
            (BinaryOp::Multiply, _) => *g * c,
            (BinaryOp::Divide, false) => *g / c,
            (BinaryOp::Divide, true) => *g * (-c / v / v),
            (BinaryOp::Maximum, false) => pick(*g, v >= c),
            (BinaryOp::Maximum, true) => pick(*g, !c_wins_max),
            (BinaryOp::Minimum, false) => pick(*g, v <= c),
            (BinaryOp::Minimum, true) => pick(*g, !c_wins_min),
        }
    });
    Ok(vec![Some(dy)])
}

/// `x`'s item axes in `order`, as (N, rows, k) with k the last axis of the order.
fn as_rows(x: &ArrayD<f32>, order: &[usize], k: usize) -> Result<Array3<f32>> {
    let mut axes = vec![0];
    axes.extend(order.iter().map(|&a| a + 1));
    let n = x.shape()[0];
    let rows = x.len() / (n * k).max(1);
    x.view()
        .permuted_axes(IxDyn(&axes))
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((n, rows, k))
        .map_err(|e| Error::Internal(format!("Dot backward: {e}")))
}

/// The inverse of `as_rows`: (N, rows, k) back to x's shape.
fn from_rows(g: Array3<f32>, x: &ArrayD<f32>, order: &[usize]) -> Result<ArrayD<f32>> {
    let mut permuted = vec![x.shape()[0]];
    permuted.extend(order.iter().map(|&a| x.shape()[a + 1]));
    let mut inverse = vec![0; order.len() + 1];
    for (i, &a) in order.iter().enumerate() {
        inverse[a + 1] = i + 1;
    }
    Ok(g.into_shape_with_order(IxDyn(&permuted))
        .map_err(|e| Error::Internal(format!("Dot backward: {e}")))?
        .permuted_axes(IxDyn(&inverse))
        .as_standard_layout()
        .into_owned())
}

/// Each row scaled to unit L2 norm as the forward does it (f32, capped at 1 / epsilon).
fn normalized(rows: &Array3<f32>) -> Array3<f32> {
    let mut out = rows.clone();
    for mut row in out.lanes_mut(Axis(2)) {
        let ss: f32 = row.iter().map(|v| v * v).sum();
        let inv = (1.0 / ss.sqrt()).min(1.0 / NORMALIZE_EPSILON);
        row.mapv_inplace(|v| v * inv);
    }
    out
}

/// Dot, per item out = A Bᵀ with A (m, k), B (n, k): dA = dout B, dB = doutᵀ A, then through
/// the normalization when there is one, then back to each input's axis order.
pub(super) fn dot_backward(
    d: &Dot,
    io: &NodeIo,
    dy: ArrayD<f32>,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    let (x, y) = (io.input(0)?, io.input(1)?);
    let l = d.layout(&x.shape()[1..], &y.shape()[1..]);
    let batch = x.shape()[0];
    let a = as_rows(x, &l.x_order, l.k)?;
    let b = as_rows(y, &l.y_order, l.k)?;
    let (an, bn) = if d.normalize {
        (normalized(&a), normalized(&b))
    } else {
        (a.clone(), b.clone())
    };
    let g = dy
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((batch, l.m, l.n))
        .map_err(|e| Error::Internal(format!("Dot backward: {e}")))?;
    let side = |raw: &Array3<f32>,
                other: &Array3<f32>,
                transpose: bool,
                rows: usize,
                order: &[usize],
                input: &ArrayD<f32>|
     -> Result<ArrayD<f32>> {
        let mut out = Array3::<f32>::zeros((batch, rows, l.k));
        for i in 0..batch {
            let gi: ArrayView2<f32> = if transpose {
                g.index_axis(Axis(0), i).reversed_axes()
            } else {
                g.index_axis(Axis(0), i)
            };
            let prod = gi.dot(&other.index_axis(Axis(0), i));
            out.index_axis_mut(Axis(0), i).assign(&prod);
        }
        if d.normalize {
            let mut back = Array3::<f32>::zeros(out.raw_dim());
            for ((r, gr), mut br) in raw
                .lanes(Axis(2))
                .into_iter()
                .zip(out.lanes(Axis(2)))
                .zip(back.lanes_mut(Axis(2)))
            {
                let (r, gr) = (r.to_vec(), gr.to_vec());
                let mut dr = vec![0f32; r.len()];
                l2_normalize_back(&r, &gr, &mut dr, 1.0 / NORMALIZE_EPSILON);
                br.iter_mut().zip(&dr).for_each(|(v, &d)| *v = d);
            }
            out = back;
        }
        from_rows(out, input, order)
    };
    let dx = if io.needs[0] {
        Some(side(&a, &bn, false, l.m, &l.x_order, x)?)
    } else {
        None
    };
    let dyy = if io.needs[1] {
        Some(side(&b, &an, true, l.n, &l.y_order, y)?)
    } else {
        None
    };
    Ok(vec![dx, dyy])
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::super::check::{check_node, uniform};
    use super::super::norm::tests::graph_of;
    use super::super::{backward, forward, NodeIo};
    use super::*;
    use crate::cpu::Tensor;
    use crate::train::{ParamGrads, Rng};

    const OPS: [BinaryOp; 6] = [
        BinaryOp::Add,
        BinaryOp::Subtract,
        BinaryOp::Multiply,
        BinaryOp::Divide,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
    ];

    /// Inputs of `items` (batch `batch`): positive and away from each other, so Divide and the
    /// maximum / minimum selections are smooth where the differences probe.
    fn inputs(items: &[&[usize]], batch: usize) -> Vec<Tensor> {
        items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut shape = vec![batch];
                shape.extend_from_slice(s);
                Tensor::F32(uniform(&shape, 40 + i as u64, 0.4) + 1.0 + i as f32)
            })
            .collect()
    }

    fn merge_op(op: BinaryOp, average: bool, masked: bool) -> Op {
        Op::Merge(Merge {
            op,
            average,
            masked,
        })
    }

    /// The gradients the rule gives for `inputs` with dy = `dy`.
    fn gradients(
        g: &Graph,
        inputs: &[Tensor],
        mask: Option<&Array2<bool>>,
        dy: ArrayD<f32>,
    ) -> Vec<ArrayD<f32>> {
        let node = &g.nodes[0];
        let fw = forward(g, node, inputs, mask, &mut Rng::new(1)).expect("forward");
        let needs = vec![true; inputs.len()];
        let io = NodeIo {
            graph: g,
            node,
            inputs,
            outputs: &fw.outputs,
            mask,
            saved: &fw.saved,
            needs: &needs,
        };
        let mut grads = ParamGrads::new(&g.params);
        backward(&io, &[Some(dy)], &mut grads)
            .expect("backward")
            .into_iter()
            .map(|d| d.expect("a gradient per input"))
            .collect()
    }

    #[test]
    fn every_merge_matches_finite_differences_with_broadcasting() {
        // Same shapes; a size-1 axis stretched; a lower-rank input; three inputs mixing both.
        let layouts: [&[&[usize]]; 5] = [
            &[&[4, 5], &[4, 5]],
            &[&[4, 5], &[1, 5]],
            &[&[1, 5], &[4, 1]],
            &[&[3, 5], &[5]],
            &[&[4, 5], &[1, 5], &[5]],
        ];
        for items in layouts {
            for op in OPS {
                for average in [false, true] {
                    if average && op != BinaryOp::Add {
                        continue;
                    }
                    let g = graph_of(items, None, |_| merge_op(op, average, false));
                    for batch in [1, 3] {
                        let xs = inputs(items, batch);
                        let r = std::panic::catch_unwind(|| check_node(&g, 0, xs, None, 1e-2));
                        assert!(
                            r.is_ok(),
                            "{op:?} average {average} {items:?} batch {batch}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn masked_merges_match_finite_differences() {
        let mask = Array2::from_shape_fn((3, 4), |(n, t)| (n + t) % 3 != 1);
        for op in [BinaryOp::Multiply, BinaryOp::Maximum, BinaryOp::Minimum] {
            for count in [2, 3] {
                let items = vec![&[4usize, 5][..]; count];
                let g = graph_of(&items, Some(4), |_| merge_op(op, false, true));
                check_node(&g, 0, inputs(&items, 3), Some(&mask), 1e-2);
                // A dropped step: nothing through Multiply, all to input 0 otherwise.
                let dy = uniform(&[3, 4, 5], 7, 1.0);
                let dxs = gradients(&g, &inputs(&items, 3), Some(&mask), dy.clone());
                let (n, t) = (0, 1);
                assert!(!mask[[n, t]]);
                for (i, dx) in dxs.iter().enumerate() {
                    for f in 0..5 {
                        let want = if op != BinaryOp::Multiply && i == 0 {
                            dy[[n, t, f]]
                        } else {
                            0.0
                        };
                        assert_eq!(dx[[n, t, f]], want, "{op:?} input {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn maximum_and_minimum_ties_go_to_the_earliest_input() {
        // tf.maximum's gradient: x >= y to x. Folded left to right, the first input holding the
        // extreme value takes the whole gradient.
        for op in [BinaryOp::Maximum, BinaryOp::Minimum] {
            let items: Vec<&[usize]> = vec![&[2]; 3];
            let g = graph_of(&items, None, |_| merge_op(op, false, false));
            let v = |a: f32, b: f32| Tensor::F32(ndarray::arr2(&[[a, b]]).into_dyn());
            // Column 0: all tie; column 1: inputs 1 and 2 tie on the extreme.
            let (hi, lo) = if op == BinaryOp::Maximum {
                (2.0, 1.0)
            } else {
                (1.0, 2.0)
            };
            let xs = vec![v(0.5, lo), v(0.5, hi), v(0.5, hi)];
            let dy = ndarray::arr2(&[[1.0f32, 1.0]]).into_dyn();
            let dxs = gradients(&g, &xs, None, dy);
            let col = |i: usize, c: usize| dxs[i][[0, c]];
            assert_eq!(
                [col(0, 0), col(1, 0), col(2, 0)],
                [1.0, 0.0, 0.0],
                "{op:?} all tied"
            );
            assert_eq!(
                [col(0, 1), col(1, 1), col(2, 1)],
                [0.0, 1.0, 0.0],
                "{op:?} later tie"
            );
        }
    }

    #[test]
    fn only_the_needed_merge_gradients_are_made() {
        let items: Vec<&[usize]> = vec![&[5], &[5]];
        let g = graph_of(&items, None, |_| merge_op(BinaryOp::Multiply, false, false));
        let xs = inputs(&items, 2);
        let fw = forward(&g, &g.nodes[0], &xs, None, &mut Rng::new(1)).expect("forward");
        let io = NodeIo {
            graph: &g,
            node: &g.nodes[0],
            inputs: &xs,
            outputs: &fw.outputs,
            mask: None,
            saved: &fw.saved,
            needs: &[false, true],
        };
        let mut grads = ParamGrads::new(&g.params);
        let dxs = backward(&io, &[Some(uniform(&[2, 5], 1, 1.0))], &mut grads).expect("backward");
        assert!(dxs[0].is_none() && dxs[1].is_some());
    }

    #[test]
    fn every_scalar_operator_matches_finite_differences() {
        for op in OPS {
            for scalar_first in [false, true] {
                let g = graph_of(&[&[3, 5]], None, |_| {
                    Op::Scalar(ScalarOp {
                        op,
                        value: 0.7,
                        scalar_first,
                    })
                });
                for batch in [1, 3] {
                    // Both sides of 0.7, none near it (nor near 0, for Divide).
                    let x = uniform(&[batch, 3, 5], 3, 1.0).mapv(|v| {
                        if v.abs() < 0.2 || (v - 0.7).abs() < 0.1 {
                            v + 0.25
                        } else {
                            v
                        }
                    });
                    let r = std::panic::catch_unwind(|| {
                        check_node(&g, 0, vec![Tensor::F32(x)], None, 1e-2)
                    });
                    assert!(
                        r.is_ok(),
                        "{op:?} scalar_first {scalar_first} batch {batch}"
                    );
                }
            }
        }
    }

    #[test]
    fn scalar_maximum_and_minimum_ties_follow_tensorflow() {
        // max(x, c) at x == c: x gets it; max(c, x): c does.
        for (op, scalar_first, want) in [
            (BinaryOp::Maximum, false, 1.0),
            (BinaryOp::Maximum, true, 0.0),
            (BinaryOp::Minimum, false, 1.0),
            (BinaryOp::Minimum, true, 0.0),
        ] {
            let g = graph_of(&[&[1]], None, |_| {
                Op::Scalar(ScalarOp {
                    op,
                    value: 0.5,
                    scalar_first,
                })
            });
            let x = Tensor::F32(ndarray::arr2(&[[0.5f32]]).into_dyn());
            let dxs = gradients(&g, &[x], None, ndarray::arr2(&[[1.0f32]]).into_dyn());
            assert_eq!(dxs[0][[0, 0]], want, "{op:?} scalar_first {scalar_first}");
        }
    }

    #[test]
    fn dot_matches_finite_differences() {
        // (x item, y item, axes): vectors, matrices on either axis, mixed ranks.
        let cases: [(&[usize], &[usize], [usize; 2]); 5] = [
            (&[5], &[5], [0, 0]),
            (&[4, 5], &[3, 5], [1, 1]),
            (&[4, 5], &[4, 3], [0, 0]),
            (&[4, 5], &[3, 4], [0, 1]),
            (&[2, 3, 5], &[5], [2, 0]),
        ];
        for (xi, yi, axes) in cases {
            for normalize in [false, true] {
                let g = graph_of(&[xi, yi], None, |_| Op::Dot(Dot { axes, normalize }));
                for batch in [1, 3] {
                    let xs: Vec<Tensor> = [xi, yi]
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            let mut shape = vec![batch];
                            shape.extend_from_slice(s);
                            Tensor::F32(uniform(&shape, 60 + i as u64, 1.0))
                        })
                        .collect();
                    let r = std::panic::catch_unwind(|| check_node(&g, 0, xs, None, 1e-2));
                    assert!(
                        r.is_ok(),
                        "{xi:?} . {yi:?} axes {axes:?} normalize {normalize}"
                    );
                }
            }
        }
    }
}
