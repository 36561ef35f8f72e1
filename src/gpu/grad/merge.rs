//! Merge-family backward on the GPU: Concatenate's input gradients, each its slice of dy along
//! the concatenation axis (cpu/grad/copy.rs), as strided copies (shaders/copy.wgsl) that
//! overwrite each dx.

// Called by the training plan; until it lands only the tests do.
#![cfg_attr(not(test), allow(dead_code))]

use crate::error::{Error, Result};
use crate::graph::ops::merge::concat_copies;
use crate::graph::{Node, StridedCopy};

use super::super::kernels::{Kernel, LINEAR_THREADS};
use super::super::plan::BufRef;
use super::conv::{check_buffer, layer_error};
use super::{linear_workgroups, word, Emit};

/// The axes copy.wgsl's strided copy walks at most.
const MAX_RANK: usize = 8;

/// One strided copy of `c` (coalesced first) from `src` into `dst`.
pub(crate) fn strided_copy(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    c: &StridedCopy,
    src: BufRef,
    dst: BufRef,
    detail: String,
) -> Result<()> {
    let c = c.coalesced();
    let total = c.len();
    if total == 0 {
        return Ok(());
    }
    if c.shape.len() > MAX_RANK {
        return Err(layer_error(
            layer,
            "input_shape",
            format!(
                "needs {} axes, the GPU kernels walk at most {MAX_RANK}",
                c.shape.len()
            ),
        ));
    }
    let mut words = Vec::with_capacity(4 * MAX_RANK);
    for set in [&c.shape, &c.src_strides, &c.dst_strides] {
        for k in 0..MAX_RANK {
            words.push(word(layer, "index", set.get(k).copied().unwrap_or(0))?);
        }
    }
    words.extend([
        c.shape.len() as u32,
        word(layer, "length", total)?,
        word(layer, "offset", c.src_offset)?,
        word(layer, "offset", c.dst_offset)?,
        0,
        0,
        0,
        0,
    ]);
    e.dispatch(
        layer,
        node,
        Kernel::StridedCopy,
        vec![src, dst],
        words,
        linear_workgroups(total, LINEAR_THREADS),
        detail,
    )
}

/// Copies `len` contiguous floats from `src` at `src_offset` to the start of `dst`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_range(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    src: BufRef,
    src_offset: usize,
    len: usize,
    dst: BufRef,
    detail: String,
) -> Result<()> {
    let c = StridedCopy {
        shape: vec![len],
        src_strides: vec![1],
        src_offset,
        dst_strides: vec![1],
        dst_offset: 0,
    };
    strided_copy(e, layer, node, &c, src, dst, detail)
}

/// Concatenate backward: input k's gradient `dxs[k]` (when wanted) is its slice of `dy` along
/// item axis `axis` (0-based, without the batch axis; any axis). `input_shapes` are the
/// inputs' item shapes; dy is their concatenation for `batch` items.
#[allow(clippy::too_many_arguments)]
pub(crate) fn concat_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    axis: usize,
    batch: usize,
    input_shapes: &[Vec<usize>],
    dy: BufRef,
    dxs: &[Option<BufRef>],
) -> Result<()> {
    if dxs.len() != input_shapes.len() {
        return Err(Error::Internal(format!(
            "layer '{}': Concatenate backward given {} gradients for {} inputs",
            layer.name,
            dxs.len(),
            input_shapes.len()
        )));
    }
    let Some(first) = input_shapes.first() else {
        return Ok(());
    };
    if axis >= first.len() {
        return Err(layer_error(
            layer,
            "axis",
            format!(
                "axis {} is out of range for inputs of shape {first:?}",
                axis + 1
            ),
        ));
    }
    let mut out = first.clone();
    out[axis] = 0;
    for s in input_shapes {
        let agrees = s.len() == first.len()
            && s.iter()
                .zip(first)
                .enumerate()
                .all(|(a, (x, y))| a == axis || x == y);
        if !agrees {
            return Err(layer_error(
                layer,
                "input_shape",
                format!(
                    "inputs of shapes {input_shapes:?} do not concatenate along axis {}",
                    axis + 1
                ),
            ));
        }
        out[axis] += s[axis];
    }
    check_buffer(e, layer, "dy", batch * out.iter().product::<usize>())?;
    let shapes: Vec<&[usize]> = input_shapes.iter().map(Vec::as_slice).collect();
    let copies = concat_copies(axis, &shapes, &out, batch);
    for (k, (forward, dx)) in copies.iter().zip(dxs).enumerate() {
        let Some(dx) = *dx else { continue };
        // The forward's copy reversed: from dy's slice into a contiguous dx.
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
            dy,
            dx,
            format!(
                "d concatenate: input {} of {}, {:?} at offset {}",
                k + 1,
                copies.len(),
                input_shapes[k],
                forward.dst_offset
            ),
        )?;
    }
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::super::test_emit::TestEmit;
    use super::*;
    use crate::cpu::grad::check::uniform;
    use crate::cpu::grad::testing::{assert_close, run_backward_inputs};
    use crate::gpu::testing::runner;
    use crate::graph::{DType, Graph, Op};

    const STALE: f32 = 123.0;

    fn concat_graph(items: &[Vec<usize>], axis: usize) -> Graph {
        let mut g = Graph::new("t");
        let xs: Vec<_> = items
            .iter()
            .enumerate()
            .map(|(i, s)| g.add_input(format!("x{i}"), s.clone(), DType::F32))
            .collect();
        let y = g
            .add_node("n", "Concatenate", Op::Concat { axis }, &xs, None)
            .expect("shape rule");
        g.add_output("y", y[0]);
        g
    }

    fn with_batch(batch: usize, item: &[usize]) -> Vec<usize> {
        let mut s = vec![batch];
        s.extend(item);
        s
    }

    #[test]
    fn concat_backward_matches_the_cpu() {
        let Some(mut r) = runner() else { return };
        // (item shapes, axis, batch)
        let cases: Vec<(Vec<Vec<usize>>, usize, usize)> = vec![
            (vec![vec![3], vec![5]], 0, 4),
            (vec![vec![4, 3], vec![4, 5]], 1, 3),
            (vec![vec![2, 5], vec![3, 5], vec![1, 5]], 0, 3),
            (vec![vec![4, 2, 3], vec![4, 2, 1], vec![4, 2, 6]], 2, 2),
            (vec![vec![4, 2, 3], vec![1, 2, 3], vec![3, 2, 3]], 0, 5),
            (vec![vec![3, 2, 4], vec![3, 5, 4]], 1, 3),
            (vec![vec![6, 5, 7, 3], vec![6, 5, 7, 13]], 3, 2),
        ];
        for (case, (items, axis, batch)) in cases.iter().enumerate() {
            let g = concat_graph(items, *axis);
            let xs: Vec<ArrayD<f32>> = items
                .iter()
                .enumerate()
                .map(|(i, s)| uniform(&with_batch(*batch, s), 10 + i as u64, 1.0))
                .collect();
            let y_shape = with_batch(*batch, &g.value(g.nodes[0].outputs[0]).shape);
            let dy = uniform(&y_shape, 7, 1.0);
            let (expected, _) = run_backward_inputs(&g, &xs, &dy);
            // Every input's gradient; then only the last one's.
            for only_last in [false, true] {
                let mut buffers = vec![dy.iter().copied().collect::<Vec<_>>()];
                buffers.extend(xs.iter().map(|x| vec![STALE; x.len()]));
                let dxs: Vec<Option<BufRef>> = (0..items.len())
                    .map(|k| (!only_last || k + 1 == items.len()).then_some(BufRef::Input(k + 1)))
                    .collect();
                let mut emit = TestEmit::new(r.limits, buffers.len());
                concat_backward(
                    &mut emit,
                    &g.nodes[0],
                    0,
                    *axis,
                    *batch,
                    items,
                    BufRef::Input(0),
                    &dxs,
                )
                .expect("lowering");
                let got = emit.run(&mut r, &buffers).expect("GPU run");
                for (k, x) in xs.iter().enumerate() {
                    let name = format!("case {case} input {k} (only last: {only_last})");
                    if dxs[k].is_none() {
                        assert!(got[k + 1].iter().all(|&v| v == STALE), "{name}: untouched");
                        continue;
                    }
                    let got = ArrayD::from_shape_vec(IxDyn(x.shape()), got[k + 1].clone())
                        .expect("shape");
                    assert_close(&name, &got, expected[k].as_ref().expect("dx"));
                }
            }
        }
    }

    #[test]
    fn concat_backward_refuses_mismatched_inputs() {
        let node = Node {
            name: "cat".into(),
            class: "Concatenate".into(),
            op: Op::Concat { axis: 0 },
            inputs: Vec::new(),
            mask: None,
            outputs: Vec::new(),
        };
        let limits = crate::gpu::plan::PlanLimits {
            max_binding_bytes: 1 << 30,
            max_workgroups_per_dim: 65535,
            max_storage_buffers_per_stage: 8,
            fold_batch_norm: false,
        };
        let mut emit = TestEmit::new(limits, 3);
        let shapes = [vec![2, 3], vec![2, 4]];
        let dxs = [Some(BufRef::Input(1)), Some(BufRef::Input(2))];
        let err = concat_backward(&mut emit, &node, 0, 0, 2, &shapes, BufRef::Input(0), &dxs)
            .expect_err("axis 1 disagrees");
        assert!(err.to_string().contains("'cat'"), "{err}");
    }
}
