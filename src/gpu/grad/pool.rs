//! Pooling backward on the GPU (shaders/pool_grad.wgsl), by cpu/grad/pool.rs's rules: max 1-D
//! and 2-D send each window's gradient to its first maximum, max 3-D to every element equal to
//! the maximum, average to every in-bounds element over the in-bounds count; global max splits
//! the gradient among tied maxima, global average (optionally masked) spreads it evenly. All are
//! gathers that overwrite dx.

// Called by the training plan; until it lands only the tests do.

use crate::error::Result;
use crate::graph::{Node, Pool, PoolOp};

use super::super::kernels::{Kernel, LINEAR_THREADS};
use super::super::plan::BufRef;
use super::conv::{check_buffer, layer_error};
use super::{linear_workgroups, word, Emit};

/// pool_grad.wgsl's windowed modes.
const MODE_AVERAGE: u32 = 0;
const MODE_FIRST_MAX: u32 = 1;
const MODE_ALL_MAXIMA: u32 = 2;

/// Pool backward: `dx` (x's shape) from the forward's input `x` (N, spatial..., C) and the
/// output's gradient `dy`. The windows are re-read from `x`, so the forward's output is not
/// needed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pool_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    pool: &Pool,
    batch: usize,
    x: BufRef,
    dy: BufRef,
    dx: BufRef,
) -> Result<()> {
    let w = &pool.window;
    if w.dilation != [1, 1, 1] {
        return Err(layer_error(
            layer,
            "dilation",
            "a dilated pooling window's backward is not supported on the GPU yet",
        ));
    }
    if w.strides.contains(&0) {
        return Err(layer_error(layer, "strides", "a stride of 0"));
    }
    let mode = match (pool.op, w.rank) {
        (PoolOp::Average, _) => MODE_AVERAGE,
        // TensorFlow's MaxPool3DGrad (unlike MaxPoolGrad) credits every tied maximum.
        (PoolOp::Max, 3) => MODE_ALL_MAXIMA,
        (PoolOp::Max, _) => MODE_FIRST_MAX,
    };
    let elements = batch * w.in_positions() * pool.channels;
    check_buffer(e, layer, "x", elements)?;
    check_buffer(e, layer, "dy", batch * w.out_positions() * pool.channels)?;
    if elements == 0 {
        return Ok(());
    }
    let mut params = [batch, pool.channels]
        .into_iter()
        .chain(w.input)
        .chain(w.output)
        .chain(w.kernel)
        .chain(w.strides)
        .chain(w.pad_before)
        .map(|v| word(layer, "pool", v))
        .collect::<Result<Vec<_>>>()?;
    params.extend([mode, 0, 0]);
    e.dispatch(
        layer,
        node,
        Kernel::PoolGrad,
        vec![x, dy, BufRef::Dummy, BufRef::Dummy, dx],
        params,
        linear_workgroups(elements, LINEAR_THREADS),
        format!("d{} pool {}", pool.op.name(), w.text()),
    )
}

/// GlobalPool backward over the last `rank` spatial axes of `item` (x's shape without the batch
/// axis; leading axes beyond them, as under TimeDistributed, fold into the batch). `dy` is
/// (N, C) or, with keepdims, (N, 1..., C): the same values in the same order, so keepdims does
/// not matter here. `mask_ids`: for a masked GlobalAveragePooling1D, the token ids (u32,
/// (N, steps)) whose zeros mark masked steps, as the forward reads them. Max takes a scratch
/// buffer of 2 floats per (item, channel), released at the end.
#[allow(clippy::too_many_arguments)]
pub(crate) fn global_pool_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    op: PoolOp,
    rank: usize,
    item: &[usize],
    batch: usize,
    x: BufRef,
    dy: BufRef,
    dx: BufRef,
    mask_ids: Option<BufRef>,
) -> Result<()> {
    if item.len() < rank + 1 {
        return Err(layer_error(
            layer,
            "input_shape",
            format!("{item:?} is not {rank} spatial axes and channels"),
        ));
    }
    let (lead, shape) = item.split_at(item.len() - rank - 1);
    let items = batch * lead.iter().product::<usize>();
    let positions: usize = shape[..rank].iter().product();
    let channels = shape[rank];
    if mask_ids.is_some() && (op == PoolOp::Max || !lead.is_empty()) {
        return Err(layer_error(
            layer,
            "mask",
            "a masked global pooling's backward is supported on the GPU only for \
             GlobalAveragePooling1D directly on the masked sequence",
        ));
    }
    let elements = items * positions * channels;
    check_buffer(e, layer, "x", elements)?;
    if elements == 0 {
        return Ok(());
    }
    let mut params = vec![0u32; 20];
    params[0] = word(layer, "batch", items)?;
    params[1] = word(layer, "channels", channels)?;
    params[17] = u32::from(op == PoolOp::Max);
    params[18] = word(layer, "positions", positions)?;
    params[19] = u32::from(mask_ids.is_some());
    let ids = mask_ids.unwrap_or(BufRef::Dummy);
    let detail = format!("d global {} over {positions} positions", op.name());
    if op == PoolOp::Average && mask_ids.is_none() {
        return e.dispatch(
            layer,
            node,
            Kernel::GlobalPoolGrad,
            vec![x, dy, ids, BufRef::Dummy, dx],
            params,
            linear_workgroups(elements, LINEAR_THREADS),
            detail,
        );
    }
    check_buffer(e, layer, "global pooling share", 2 * items * channels)?;
    let share = e.scratch(node, "global pooling share", 2 * items * channels);
    e.dispatch(
        layer,
        node,
        Kernel::GlobalPoolGradShare,
        vec![x, dy, ids, BufRef::Dummy, share],
        params.clone(),
        linear_workgroups(items * channels, LINEAR_THREADS),
        format!("{detail}: shares"),
    )?;
    e.dispatch(
        layer,
        node,
        Kernel::GlobalPoolGrad,
        vec![x, dy, ids, share, dx],
        params,
        linear_workgroups(elements, LINEAR_THREADS),
        detail,
    )?;
    e.release(share);
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use ndarray::{Array2, ArrayD, Dimension, IxDyn};

    use super::super::test_emit::TestEmit;
    use super::*;
    use crate::cpu::grad::check::uniform;
    use crate::cpu::grad::testing::{assert_close, distinct, one_node, run_backward};
    use crate::gpu::testing::{runner, KernelRunner};
    use crate::graph::{Graph, Op, Padding, Window};

    const STALE: f32 = 123.0;

    fn pool_graph(
        op: PoolOp,
        item: &[usize],
        size: &[usize],
        strides: &[usize],
        pad: Padding,
    ) -> Graph {
        let r = size.len();
        let window = Window::new(size, strides, &vec![1; r], pad, &item[..r]);
        one_node(item, |_| {
            Op::Pool(Pool {
                op,
                window,
                channels: item[r],
            })
        })
    }

    fn shaped(v: &[f32], shape: &[usize]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).expect("shape")
    }

    fn with_batch(batch: usize, item: &[usize]) -> Vec<usize> {
        let mut s = vec![batch];
        s.extend(item);
        s
    }

    /// The GPU's dx of node 0 (a Pool) against the CPU's, for input `x` and a random dy.
    fn check_pool(r: &mut KernelRunner, name: &str, g: &Graph, x: &ArrayD<f32>) {
        let Op::Pool(pool) = &g.nodes[0].op else {
            panic!("not a pool")
        };
        let batch = x.shape()[0];
        let y_shape = with_batch(batch, &g.value(g.nodes[0].outputs[0]).shape);
        let dy = uniform(&y_shape, 4, 1.0);
        let expected = run_backward(g, x, &dy, true, None).0.expect("dx");
        let buffers = vec![
            x.iter().copied().collect::<Vec<_>>(),
            dy.iter().copied().collect(),
            vec![STALE; x.len()],
        ];
        let mut emit = TestEmit::new(r.limits, 3);
        let i = BufRef::Input;
        pool_backward(&mut emit, &g.nodes[0], 0, pool, batch, i(0), i(1), i(2)).expect("lowering");
        let got = emit.run(r, &buffers).expect("GPU run");
        assert_close(name, &shaped(&got[2], x.shape()), &expected);
    }

    /// (item shape, pool size, strides, padding, batch)
    type PoolCase = (Vec<usize>, Vec<usize>, Vec<usize>, Padding, usize);

    fn pool_cases() -> Vec<PoolCase> {
        use Padding::*;
        vec![
            (vec![7, 6, 3], vec![3, 3], vec![2, 2], Same, 3),
            (vec![8, 7, 5], vec![2, 2], vec![3, 3], Valid, 1),
            // An even window with same padding, overlapping (stride 1).
            (vec![5, 6, 2], vec![2, 3], vec![1, 1], Same, 3),
            (vec![6, 6, 4], vec![2, 2], vec![2, 2], Valid, 2),
            (vec![5, 7, 11], vec![3, 3], vec![2, 2], Same, 33),
            (vec![9, 4], vec![3], vec![2], Same, 3),
            (vec![10, 3], vec![2], vec![3], Valid, 2),
            (vec![4, 5, 3, 2], vec![2, 2, 2], vec![1, 2, 2], Same, 2),
            (vec![5, 4, 5, 3], vec![3, 2, 2], vec![2, 1, 3], Valid, 1),
        ]
    }

    #[test]
    fn pool_backward_matches_the_cpu() {
        let Some(mut r) = runner() else { return };
        for op in [PoolOp::Max, PoolOp::Average] {
            for (i, (item, size, strides, padding, batch)) in pool_cases().into_iter().enumerate() {
                let g = pool_graph(op, &item, &size, &strides, padding);
                let shape = with_batch(batch, &item);
                let x = match op {
                    PoolOp::Max => distinct(&shape),
                    PoolOp::Average => uniform(&shape, 3, 1.0),
                };
                check_pool(&mut r, &format!("{} case {i}", op.name()), &g, &x);
            }
        }
    }

    /// Exact ties: 1-D / 2-D max credits each window's first maximum, 3-D every tied maximum.
    #[test]
    fn max_pool_ties_follow_the_cpu() {
        let Some(mut r) = runner() else { return };
        let g = pool_graph(PoolOp::Max, &[4, 4, 1], &[3, 3], &[1, 1], Padding::Same);
        let x = ArrayD::from_elem(IxDyn(&[1, 4, 4, 1]), 1.0f32);
        check_pool(&mut r, "all equal", &g, &x);
        // Few levels: many ties, at every place in the windows.
        for (i, (item, size, strides, padding, batch)) in pool_cases().into_iter().enumerate() {
            let g = pool_graph(PoolOp::Max, &item, &size, &strides, padding);
            let x = ArrayD::from_shape_fn(IxDyn(&with_batch(batch, &item)), |i| {
                (i.as_array_view().iter().sum::<usize>() % 3) as f32
            });
            check_pool(&mut r, &format!("ties case {i}"), &g, &x);
        }
        // The all-ones expectation of TensorFlow (cpu/grad/pool.rs), from the GPU directly.
        let Op::Pool(pool) = &g.nodes[0].op else {
            panic!("not a pool")
        };
        let mut emit = TestEmit::new(r.limits, 3);
        let i = BufRef::Input;
        pool_backward(&mut emit, &g.nodes[0], 0, pool, 1, i(0), i(1), i(2)).expect("lowering");
        let got = emit
            .run(&mut r, &[vec![1.0; 16], vec![1.0; 16], vec![STALE; 16]])
            .expect("GPU run");
        let expected = [
            4., 2., 2., 0., 2., 1., 1., 0., 2., 1., 1., 0., 0., 0., 0., 0.,
        ];
        assert_eq!(got[2], expected);
    }

    fn global_graph(op: PoolOp, item: &[usize], keepdims: bool) -> Graph {
        one_node(item, |_| Op::GlobalPool {
            op,
            keepdims,
            rank: item.len() - 1,
        })
    }

    /// The GPU's dx of node 0 (a GlobalPool) against the CPU's.
    fn check_global(
        r: &mut KernelRunner,
        name: &str,
        g: &Graph,
        x: &ArrayD<f32>,
        mask: Option<&Array2<bool>>,
    ) {
        let Op::GlobalPool { op, rank, .. } = g.nodes[0].op else {
            panic!("not a global pool")
        };
        let batch = x.shape()[0];
        let y_shape = with_batch(batch, &g.value(g.nodes[0].outputs[0]).shape);
        let dy = uniform(&y_shape, 4, 1.0);
        let expected = run_backward(g, x, &dy, true, mask).0.expect("dx");
        let mut buffers = vec![
            x.iter().copied().collect::<Vec<_>>(),
            dy.iter().copied().collect(),
            vec![STALE; x.len()],
        ];
        // Token ids: 0 where masked, else any non-zero id.
        if let Some(m) = mask {
            let ids = m
                .iter()
                .enumerate()
                .map(|(t, &keep)| u32::from(keep) * (t as u32 + 1));
            buffers.push(ids.map(f32::from_bits).collect());
        }
        let mut emit = TestEmit::new(r.limits, buffers.len());
        let i = BufRef::Input;
        global_pool_backward(
            &mut emit,
            &g.nodes[0],
            0,
            op,
            rank,
            &x.shape()[1..],
            batch,
            i(0),
            i(1),
            i(2),
            mask.map(|_| i(3)),
        )
        .expect("lowering");
        let got = emit.run(r, &buffers).expect("GPU run");
        assert_close(name, &shaped(&got[2], x.shape()), &expected);
    }

    #[test]
    fn global_pool_backward_matches_the_cpu() {
        let Some(mut r) = runner() else { return };
        let items: [&[usize]; 4] = [&[7, 3], &[5, 4, 2], &[3, 4, 4, 3], &[1, 5]];
        for op in [PoolOp::Max, PoolOp::Average] {
            for keepdims in [false, true] {
                for (i, item) in items.iter().enumerate() {
                    let g = global_graph(op, item, keepdims);
                    let shape = with_batch([1, 3, 33][i % 3], item);
                    let x = match op {
                        PoolOp::Max => distinct(&shape),
                        PoolOp::Average => uniform(&shape, 4, 1.0),
                    };
                    let name = format!("global {} case {i} keepdims {keepdims}", op.name());
                    check_global(&mut r, &name, &g, &x, None);
                }
            }
        }
        // Tied maxima share the gradient.
        let g = global_graph(PoolOp::Max, &[5, 4, 2], false);
        let x = ArrayD::from_shape_fn(IxDyn(&[3, 5, 4, 2]), |i| ((i[1] + i[2] + i[3]) % 3) as f32);
        check_global(&mut r, "global max ties", &g, &x, None);
    }

    #[test]
    fn masked_global_average_matches_the_cpu() {
        let Some(mut r) = runner() else { return };
        let g = global_graph(PoolOp::Average, &[6, 3], false);
        // The last sequence is masked entirely: its gradient is 0.
        let mask = Array2::from_shape_fn((4, 6), |(b, t)| b < 3 && (t < 6 - 2 * b || t == 0));
        let x = uniform(&[4, 6, 3], 5, 1.0);
        check_global(&mut r, "masked", &g, &x, Some(&mask));
    }
}
