//! Merge-family backward on the GPU (cpu/grad/merge.rs and cpu/grad/copy.rs are the
//! reference):
//!  - Concatenate: each input's gradient is its slice of dy along the concatenation axis, as
//!    strided copies (shaders/copy.wgsl) that overwrite each dx.
//!  - the merges (Add ... Minimum, Average, masked): the forward's left fold walked backwards
//!    one step per input (`MergeBackward`), each input's gradient summed over the axes it was
//!    broadcast along (`sum_to`, one thread per gradient element: no atomics).
//!
//! Dot, PReLU and the Softmax layer are in softmax.rs; the arithmetic of all but
//! Concatenate is shaders/merge_grad.wgsl's.

use crate::error::{Error, Result};
use crate::graph::merge::{broadcast_strides, concat_copies, contiguous_strides};
use crate::graph::{BinaryOp, Merge, Node, StridedCopy};

use super::super::kernels::{Kernel, LINEAR_THREADS};
use super::super::plan::{BufRef, Op};
use super::conv::{check_buffer, layer_error};
use super::{linear_workgroups, word, Emit};

/// The axes copy.wgsl's strided copy walks at most.
pub(super) const MAX_RANK: usize = 8;

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

/// The 40 uniform words of merge_grad.wgsl: the shape and three stride sets (each padded to
/// `MAX_RANK`), then the kernel's 8 words.
pub(super) fn grad_words(layer: &Node, sets: [&[usize]; 4], w: [u32; 8]) -> Result<Vec<u32>> {
    let mut words = Vec::with_capacity(5 * MAX_RANK);
    for set in sets {
        if set.len() > MAX_RANK {
            return Err(layer_error(
                layer,
                "input_shape",
                format!(
                    "needs {} axes, the GPU kernels walk at most {MAX_RANK}",
                    set.len()
                ),
            ));
        }
        for k in 0..MAX_RANK {
            words.push(word(layer, "index", set.get(k).copied().unwrap_or(0))?);
        }
    }
    words.extend(w);
    Ok(words)
}

/// `dst = scale * src` summed down from `out` to `dims` (both batch first, the same rank; each
/// of `dims` 1 or `out`'s): the gradient of a value that was broadcast to `out`. Without
/// broadcast axes a scaled copy, or a plain one at scale 1.
#[allow(clippy::too_many_arguments)]
pub(super) fn sum_to(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    out: &[usize],
    dims: &[usize],
    src: BufRef,
    dst: BufRef,
    scale: f32,
    detail: String,
) -> Result<()> {
    let total: usize = dims.iter().product();
    if total == 0 {
        return Ok(());
    }
    let strides = contiguous_strides(out);
    let summed: Vec<usize> = (0..out.len())
        .filter(|&a| dims[a] == 1 && out[a] != 1)
        .collect();
    // Op::Copy moves activation buffers only (not a parameter's gradient).
    let copyable = |b: BufRef| matches!(b, BufRef::Slot(_) | BufRef::Input(_));
    if summed.is_empty() && scale == 1.0 && copyable(src) && copyable(dst) {
        e.push(Op::Copy {
            node,
            src,
            dst,
            bytes: 4 * total as u64,
        });
        return Ok(());
    }
    let summed_dims: Vec<usize> = summed.iter().map(|&a| out[a]).collect();
    let summed_strides: Vec<usize> = summed.iter().map(|&a| strides[a]).collect();
    let count: usize = summed_dims.iter().product();
    let words = grad_words(
        layer,
        [dims, &strides, &summed_dims, &summed_strides],
        [
            dims.len() as u32,
            word(layer, "length", total)?,
            word(layer, "length", count)?,
            scale.to_bits(),
            summed.len() as u32,
            0,
            0,
            0,
        ],
    )?;
    e.dispatch(
        layer,
        node,
        Kernel::MergeGradSum,
        vec![src, BufRef::Dummy, BufRef::Dummy, dst],
        words,
        linear_workgroups(total, LINEAR_THREADS),
        detail,
    )
}

/// Keras's masked merge as the forward runs it: the token ids the padding mask comes from.
pub(crate) struct MergeMask {
    pub ids: BufRef,
}

/// A merge's backward, the forward's fold `acc_0 = x_0, acc_i = op(acc_{i-1}, x_i)` walked
/// back from the last input: `g` is the gradient of `acc_at`, each step back gives input
/// `at`'s share and the gradient of `acc_{at-1}`. [`MergeBackward::input`] is called for the
/// inputs that need a gradient in decreasing order, then [`MergeBackward::finish`].
pub(crate) struct MergeBackward {
    layer: Node,
    node: usize,
    op: BinaryOp,
    /// The output's dims, batch first.
    out: Vec<usize>,
    /// Each input's buffer, its dims aligned to the output's (batch first, leading 1s) and
    /// its strides as the output reads it (0 along the broadcast axes).
    xs: Vec<BufRef>,
    dims: Vec<Vec<usize>>,
    strides: Vec<Vec<usize>>,
    dy: BufRef,
    mask: Option<MergeMask>,
    /// The gradient of acc_at: dy itself where no step changes it (Add, Subtract), else a copy.
    g: BufRef,
    owned: bool,
    /// What every input's share is still multiplied by (Average's 1 / n when g is dy).
    scale: f32,
    at: usize,
    /// acc_1 .. acc_{n-2}, recomputed (the forward folds in place).
    accs: Vec<BufRef>,
}

impl MergeBackward {
    /// Checks the shapes and seeds the walk: `input_shapes` and `out_shape` are item shapes,
    /// `xs` the inputs' forward buffers; `lowest` is the lowest input that needs a gradient.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        e: &mut dyn Emit,
        layer: &Node,
        node: usize,
        m: &Merge,
        batch: usize,
        input_shapes: &[Vec<usize>],
        out_shape: &[usize],
        xs: &[BufRef],
        mask: Option<MergeMask>,
        dy: BufRef,
        lowest: usize,
    ) -> Result<Self> {
        let n = input_shapes.len();
        if n < 2 || xs.len() != n {
            return Err(Error::Internal(format!(
                "layer '{}': a merge backward of {n} inputs given {} buffers",
                layer.name,
                xs.len()
            )));
        }
        let mut out = vec![batch];
        out.extend_from_slice(out_shape);
        let rank = out_shape.len();
        let mut dims = Vec::with_capacity(n);
        let mut strides = Vec::with_capacity(n);
        for s in input_shapes {
            let pad = rank.checked_sub(s.len()).unwrap_or(usize::MAX);
            let fits = pad != usize::MAX
                && s.iter()
                    .zip(&out_shape[pad.min(rank)..])
                    .all(|(&d, &o)| d == o || d == 1);
            if !fits {
                return Err(layer_error(
                    layer,
                    "input_shape",
                    format!("inputs of shapes {input_shapes:?} do not broadcast to {out_shape:?}"),
                ));
            }
            let mut d = vec![batch];
            d.extend(std::iter::repeat_n(1, pad));
            d.extend_from_slice(s);
            dims.push(d);
            strides.push(broadcast_strides(s, out_shape));
        }
        let total: usize = out.iter().product();
        check_buffer(e, layer, "dy", total)?;
        let average = if m.average { 1.0 / n as f32 } else { 1.0 };
        let folds = !matches!(m.op, BinaryOp::Add | BinaryOp::Subtract);
        let mut walk = MergeBackward {
            layer: layer.clone(),
            node,
            op: m.op,
            out,
            xs: xs.to_vec(),
            dims,
            strides,
            dy,
            mask: if m.masked { mask } else { None },
            g: dy,
            owned: false,
            scale: average,
            at: n - 1,
            accs: Vec::new(),
        };
        if folds || walk.mask.is_some() {
            let g = e.scratch(node, "merge gradient", total);
            let out = walk.out.clone();
            sum_to(
                e,
                layer,
                node,
                &out,
                &out,
                dy,
                g,
                average,
                "d merge: dy".into(),
            )?;
            walk.g = g;
            walk.owned = true;
            walk.scale = 1.0;
            if let Some(mask) = &walk.mask {
                walk.mask_select(e, mask.ids, BufRef::Dummy, 0, "d merge: padded steps -> 0")?;
            }
        }
        if folds && lowest + 2 < n {
            // acc_j for j = 1 .. n - 2: step i reads acc_{i-1}.
            for j in 1..n - 1 {
                let acc = e.scratch(node, "merge fold", total);
                let (a, a_strides) = walk.acc(j - 1);
                walk.binary(e, a, &a_strides, j, acc)?;
                walk.accs.push(acc);
            }
        }
        Ok(walk)
    }

    /// acc_j's buffer and the strides the output reads it at.
    fn acc(&self, j: usize) -> (BufRef, Vec<usize>) {
        if j == 0 {
            (self.xs[0], self.strides[0].clone())
        } else {
            (self.accs[j - 1], contiguous_strides(&self.out))
        }
    }

    /// acc = op(a, x_j) with merge.wgsl's forward kernel, as the forward folds.
    fn binary(
        &self,
        e: &mut dyn Emit,
        a: BufRef,
        a_strides: &[usize],
        j: usize,
        acc: BufRef,
    ) -> Result<()> {
        let l = &self.layer;
        let total: usize = self.out.iter().product();
        let mut words = Vec::with_capacity(4 * MAX_RANK);
        for set in [&self.out[..], a_strides, &self.strides[j]] {
            if set.len() > MAX_RANK {
                return Err(layer_error(
                    l,
                    "input_shape",
                    format!(
                        "needs {} axes, the GPU kernels walk at most {MAX_RANK}",
                        set.len()
                    ),
                ));
            }
            for k in 0..MAX_RANK {
                words.push(word(l, "index", set.get(k).copied().unwrap_or(0))?);
            }
        }
        words.extend([
            self.out.len() as u32,
            word(l, "length", total)?,
            self.op.code(),
            0,
            0,
            0,
            0,
            0,
        ]);
        e.dispatch(
            l,
            self.node,
            Kernel::Binary,
            vec![a, self.xs[j], acc],
            words,
            linear_workgroups(total, LINEAR_THREADS),
            format!("d merge: refold {} up to input {}", self.op.name(), j + 1),
        )
    }

    /// mask.wgsl on g: the padded steps (id 0) become 0 (mode 0) or `first`'s (mode 1).
    fn mask_select(
        &self,
        e: &mut dyn Emit,
        ids: BufRef,
        first: BufRef,
        mode: u32,
        detail: &str,
    ) -> Result<()> {
        let l = &self.layer;
        let total: usize = self.out.iter().product();
        let &[_, steps, width] = self.out.as_slice() else {
            return Err(layer_error(
                l,
                "mask",
                "a masked merge needs (steps, features) inputs",
            ));
        };
        e.dispatch(
            l,
            self.node,
            Kernel::MaskSelect,
            vec![ids, first, self.g],
            vec![
                word(l, "length", total)?,
                word(l, "steps", steps)?,
                word(l, "width", width)?,
                mode,
            ],
            linear_workgroups(total, LINEAR_THREADS),
            detail.into(),
        )
    }

    /// One step of the fold backwards at input `i` (>= 1) with merge_grad_step: acc_{i-1}'s
    /// gradient in place in g (`first`), or input i's share into `dst`.
    fn step(&self, e: &mut dyn Emit, i: usize, first: bool, dst: BufRef) -> Result<()> {
        let l = &self.layer;
        let total: usize = self.out.iter().product();
        let (a, a_strides) = self.acc(i - 1);
        let (g, flags) = if first {
            (BufRef::Dummy, 3)
        } else {
            (self.g, 0)
        };
        let words = grad_words(
            l,
            [&self.out, &a_strides, &self.strides[i], &[]],
            [
                self.out.len() as u32,
                word(l, "length", total)?,
                self.op.code(),
                flags,
                0,
                0,
                0,
                0,
            ],
        )?;
        let detail = if first {
            format!("d merge: {} step {} back", self.op.name(), i + 1)
        } else {
            format!("d merge: {} input {}", self.op.name(), i + 1)
        };
        e.dispatch(
            l,
            self.node,
            Kernel::MergeGradStep,
            vec![a, self.xs[i], g, dst],
            words,
            linear_workgroups(total, LINEAR_THREADS),
            detail,
        )
    }

    /// Input `k`'s gradient into `dx` (its own shape, overwritten). Inputs are asked for in
    /// decreasing order.
    pub(crate) fn input(&mut self, e: &mut dyn Emit, k: usize, dx: BufRef) -> Result<()> {
        if k > self.at {
            return Err(Error::Internal(format!(
                "layer '{}': merge gradients asked out of order",
                self.layer.name
            )));
        }
        let folds = !matches!(self.op, BinaryOp::Add | BinaryOp::Subtract);
        while self.at > k {
            if folds {
                self.step(e, self.at, true, self.g)?;
            }
            self.at -= 1;
        }
        let node = self.node;
        let layer = self.layer.clone();
        let out = self.out.clone();
        let dims = self.dims[k].clone();
        let detail = format!("d merge: input {} {:?}", k + 1, &dims[1..]);
        if k == 0 {
            if let Some(mask) = &self.mask {
                if self.op != BinaryOp::Multiply {
                    // Padded steps hold input 0's values: their gradient goes to it whole
                    // (g is 0 there).
                    let ids = mask.ids;
                    self.mask_select(e, ids, self.dy, 1, "d merge: padded steps -> dy")?;
                }
            }
            return sum_to(e, &layer, node, &out, &dims, self.g, dx, self.scale, detail);
        }
        if !folds {
            let sign = if self.op == BinaryOp::Subtract {
                -1.0
            } else {
                1.0
            };
            return sum_to(
                e,
                &layer,
                node,
                &out,
                &dims,
                self.g,
                dx,
                sign * self.scale,
                detail,
            );
        }
        if dims == out {
            return self.step(e, k, false, dx);
        }
        let share = e.scratch(node, "merge share", out.iter().product());
        self.step(e, k, false, share)?;
        sum_to(e, &layer, node, &out, &dims, share, dx, 1.0, detail)?;
        e.release(share);
        Ok(())
    }

    /// Frees the walk's scratch buffers.
    pub(crate) fn finish(self, e: &mut dyn Emit) {
        if self.owned {
            e.release(self.g);
        }
        for acc in self.accs {
            e.release(acc);
        }
    }
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
            loop_iterations: None,
        };
        let mut emit = TestEmit::new(limits, 3);
        let shapes = [vec![2, 3], vec![2, 4]];
        let dxs = [Some(BufRef::Input(1)), Some(BufRef::Input(2))];
        let err = concat_backward(&mut emit, &node, 0, 0, 2, &shapes, BufRef::Input(0), &dxs)
            .expect_err("axis 1 disagrees");
        assert!(err.to_string().contains("'cat'"), "{err}");
    }
}
