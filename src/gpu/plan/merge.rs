//! Lowering of the merge and shape ops: broadcast binary folds (`binary`), constants in place,
//! strided copies for concatenation, padding, cropping, permutation, repetition and nearest
//! upsampling (`strided_copy`, after a clear for padding), Dot as permuting copies + row
//! normalization + a batched product, and the bilinear resize.

use super::{layer_error, to_u32, BufRef, Builder, Op as PlanOp};
use crate::error::{Error, Result};
use crate::gpu::kernels::Kernel;
use crate::graph::merge::{
    bilinear_scale, broadcast_strides, coalesce, concat_copies, contiguous_strides, crop_copy,
    pad_copy, permute_copy, repeat_copy, upsample_nearest_copy, NORMALIZE_EPSILON,
};
use crate::graph::{BinaryOp, Dot, Interpolation, Merge, Op as GraphOp, ScalarOp, StridedCopy};

/// Axes the strided kernels walk (merge.wgsl and copy.wgsl hold 8 per stride set).
const MAX_RANK: usize = 8;

const FLAG_A_IS_Y: u32 = 1;
const FLAG_B_SCALAR: u32 = 2;
const FLAG_SCALAR_FIRST: u32 = 4;

impl Builder<'_> {
    fn buffer_of(&self, i: usize, k: usize) -> Result<BufRef> {
        let node = self.layer(i);
        self.value_buf[node.inputs[k]].ok_or_else(|| {
            Error::Internal(format!("node '{}' reads a value with no buffer", node.name))
        })
    }

    fn item_shape(&self, i: usize, k: usize) -> &[usize] {
        &self.graph.value(self.graph.nodes[i].inputs[k]).shape
    }

    fn out_shape(&self, i: usize) -> &[usize] {
        &self.graph.value(self.graph.nodes[i].outputs[0]).shape
    }

    /// 32 uniform words: shape, two stride sets (each padded to 8) and 8 kernel words.
    fn strided_words(
        &self,
        i: usize,
        shape: &[usize],
        s0: &[usize],
        s1: &[usize],
        w: [u32; 8],
    ) -> Result<Vec<u32>> {
        let l = self.layer(i);
        if shape.len() > MAX_RANK {
            return Err(layer_error(
                l,
                "input_shape",
                format!(
                    "needs {} axes, the GPU kernels walk at most {MAX_RANK}",
                    shape.len()
                ),
            ));
        }
        let mut words = Vec::with_capacity(32);
        for set in [shape, s0, s1] {
            for k in 0..MAX_RANK {
                words.push(to_u32(l, "index", set.get(k).copied().unwrap_or(0))?);
            }
        }
        words.extend(w);
        Ok(words)
    }

    /// Lowers node `i` of the merge family; returns its output buffer.
    pub(super) fn merge_node(&mut self, i: usize) -> Result<BufRef> {
        let node = self.layer(i);
        match &node.op {
            GraphOp::Merge(m) => self.merge(i, m),
            GraphOp::Scalar(s) => self.scalar(i, s),
            GraphOp::Dot(d) => self.dot(i, d),
            GraphOp::Upsample {
                interpolation: Interpolation::Bilinear,
                ..
            } => self.bilinear(i),
            op => self.copies(i, op),
        }
    }

    /// Elements of the output for the whole batch.
    fn out_len(&self, i: usize) -> usize {
        self.batch * self.out_shape(i).iter().product::<usize>()
    }

    #[allow(clippy::too_many_arguments)]
    fn binary(
        &mut self,
        i: usize,
        op: BinaryOp,
        [a, b, y]: [BufRef; 3],
        a_strides: &[usize],
        b_strides: &[usize],
        flags: u32,
        scalar: f32,
        detail: String,
    ) -> Result<()> {
        let l = self.layer(i);
        let mut shape = vec![self.batch];
        shape.extend_from_slice(self.out_shape(i));
        let y_strides = contiguous_strides(&shape);
        let (walk, strides) = coalesce(&shape, &[&y_strides, a_strides, b_strides]);
        let total = self.out_len(i);
        let w = [
            walk.len() as u32,
            to_u32(l, "length", total)?,
            op.code(),
            flags,
            scalar.to_bits(),
            0,
            0,
            0,
        ];
        let words = self.strided_words(i, &walk, &strides[1], &strides[2], w)?;
        self.dispatch(
            i,
            Kernel::Binary,
            vec![a, b, y],
            words,
            Self::linear_workgroups(total),
            detail,
        )
    }

    /// ((x0 op x1) op x2) ...: the first step writes a fresh output, later ones fold in place.
    fn merge(&mut self, i: usize, m: &Merge) -> Result<BufRef> {
        let n = self.layer(i).inputs.len();
        let out = self.out_shape(i).to_vec();
        let y = self.alloc(i, "output", self.out_len(i));
        let strides: Vec<Vec<usize>> = (0..n)
            .map(|k| broadcast_strides(self.item_shape(i, k), &out))
            .collect();
        let x0 = self.buffer_of(i, 0)?;
        let x1 = self.buffer_of(i, 1)?;
        let detail = format!("{} of 2 inputs into {out:?}", m.op.name());
        self.binary(
            i,
            m.op,
            [x0, x1, y],
            &strides[0],
            &strides[1],
            0,
            0.0,
            detail,
        )?;
        for (k, s) in strides.iter().enumerate().skip(2) {
            let xk = self.buffer_of(i, k)?;
            let detail = format!("{} input {} in place", m.op.name(), k + 1);
            self.binary(
                i,
                m.op,
                [BufRef::Dummy, xk, y],
                s,
                s,
                FLAG_A_IS_Y,
                0.0,
                detail,
            )?;
        }
        if m.average {
            let zeros = vec![0; out.len() + 1];
            let detail = format!("divide by {n} in place");
            self.binary(
                i,
                BinaryOp::Divide,
                [BufRef::Dummy, BufRef::Dummy, y],
                &zeros,
                &zeros,
                FLAG_A_IS_Y | FLAG_B_SCALAR,
                n as f32,
                detail,
            )?;
        }
        if m.masked {
            self.mask_select(i, m, x0, y)?;
        }
        Ok(y)
    }

    /// Keras's masked Multiply/Maximum/Minimum: the padded steps (token id 0 in the id input the
    /// mask comes from) become 0 or the first input's values.
    fn mask_select(&mut self, i: usize, m: &Merge, first: BufRef, y: BufRef) -> Result<()> {
        let l = self.layer(i);
        let out = self.out_shape(i).to_vec();
        let ids = match l
            .mask
            .map(|v| (self.value_buf[v], &self.graph.value(v).shape))
        {
            Some((Some(b @ BufRef::Input(_)), shape))
                if out.len() == 2 && shape[..] == out[..1] =>
            {
                b
            }
            _ => {
                return Err(layer_error(
                    l,
                    "mask",
                    "a masked merge needs the model's token-id input of the same length",
                ))
            }
        };
        let total = self.out_len(i);
        let params = vec![
            to_u32(l, "length", total)?,
            to_u32(l, "steps", out[0])?,
            to_u32(l, "width", out[1])?,
            u32::from(!m.masked_step_is_zero()),
        ];
        let what = if m.masked_step_is_zero() {
            "zero"
        } else {
            "first input"
        };
        self.dispatch(
            i,
            Kernel::MaskSelect,
            vec![ids, first, y],
            params,
            Self::linear_workgroups(total),
            format!("padded steps (id 0) -> {what}"),
        )
    }

    fn scalar(&mut self, i: usize, s: &ScalarOp) -> Result<BufRef> {
        let x_value = self.layer(i).inputs[0];
        let y = self.in_place(i, x_value)?;
        let zeros = vec![0; self.out_shape(i).len() + 1];
        let mut flags = FLAG_A_IS_Y | FLAG_B_SCALAR;
        if s.scalar_first {
            flags |= FLAG_SCALAR_FIRST;
        }
        let detail = if s.scalar_first {
            format!("{} {} x, in place", s.value, s.op.name())
        } else {
            format!("x {} {}, in place", s.op.name(), s.value)
        };
        self.binary(
            i,
            s.op,
            [BufRef::Dummy, BufRef::Dummy, y],
            &zeros,
            &zeros,
            flags,
            s.value,
            detail,
        )?;
        Ok(y)
    }

    fn strided_copy(
        &mut self,
        i: usize,
        c: &StridedCopy,
        x: BufRef,
        y: BufRef,
        detail: String,
    ) -> Result<()> {
        let l = self.layer(i);
        let c = c.coalesced();
        let total = c.len();
        if total == 0 {
            return Ok(());
        }
        let w = [
            c.shape.len() as u32,
            to_u32(l, "length", total)?,
            to_u32(l, "offset", c.src_offset)?,
            to_u32(l, "offset", c.dst_offset)?,
            0,
            0,
            0,
            0,
        ];
        let words = self.strided_words(i, &c.shape, &c.src_strides, &c.dst_strides, w)?;
        self.dispatch(
            i,
            Kernel::StridedCopy,
            vec![x, y],
            words,
            Self::linear_workgroups(total),
            detail,
        )
    }

    /// Concat, Pad, Crop, Permute, RepeatVector and nearest Upsample as strided copies.
    fn copies(&mut self, i: usize, op: &GraphOp) -> Result<BufRef> {
        let l = self.layer(i);
        let batch = self.batch;
        let out = self.out_shape(i).to_vec();
        let x = self.item_shape(i, 0).to_vec();
        let (copies, what): (Vec<StridedCopy>, &str) = match op {
            GraphOp::Concat { axis } => {
                let shapes: Vec<&[usize]> =
                    (0..l.inputs.len()).map(|k| self.item_shape(i, k)).collect();
                (
                    concat_copies(*axis, &shapes, &out, batch),
                    "concatenate input",
                )
            }
            GraphOp::Pad { pads } => (vec![pad_copy(pads, &x, &out, batch)], "pad: copy inside"),
            GraphOp::Crop { crops } => (vec![crop_copy(crops, &x, &out, batch)], "crop"),
            GraphOp::Permute { perm } => (vec![permute_copy(&x, perm, batch)], "permute"),
            GraphOp::RepeatVector { n } => {
                (vec![repeat_copy(*n, x.iter().product(), batch)], "repeat")
            }
            GraphOp::Upsample { factors, .. } => (
                vec![upsample_nearest_copy(factors, &x, batch)],
                "nearest upsampling",
            ),
            other => {
                return Err(layer_error(
                    l,
                    "class_name",
                    format!("internal: {} is not a copy op", other.name()),
                ))
            }
        };
        let y = self.alloc(i, "output", self.out_len(i));
        if matches!(op, GraphOp::Pad { .. }) {
            self.ops.push(PlanOp::Clear { node: i, buffer: y });
        }
        for (k, c) in copies.iter().enumerate() {
            let src = self.buffer_of(i, k)?;
            let detail = if copies.len() > 1 {
                format!(
                    "{what} {} of {}: {:?} at offset {}",
                    k + 1,
                    copies.len(),
                    c.shape,
                    c.dst_offset
                )
            } else {
                format!("{what} {:?} -> {out:?}", x)
            };
            self.strided_copy(i, c, src, y, detail)?;
        }
        Ok(y)
    }

    /// Dot: x and y permuted (when needed) to (m, k) and (n, k) rows per item, normalized in
    /// place when asked, then one batched product.
    fn dot(&mut self, i: usize, d: &Dot) -> Result<BufRef> {
        let l = self.layer(i);
        let batch = self.batch;
        let shapes = [
            self.item_shape(i, 0).to_vec(),
            self.item_shape(i, 1).to_vec(),
        ];
        let layout = d.layout(&shapes[0], &shapes[1]);
        let (m, n, k) = (layout.m, layout.n, layout.k);
        let mut operands = Vec::new();
        let mut scratch = Vec::new();
        for (side, (shape, order)) in [(&shapes[0], &layout.x_order), (&shapes[1], &layout.y_order)]
            .into_iter()
            .enumerate()
        {
            let src = self.buffer_of(i, side)?;
            let identity = order.iter().enumerate().all(|(a, &b)| a == b);
            if identity && !d.normalize {
                operands.push(src);
                continue;
            }
            let rows = if side == 0 { m } else { n };
            let buf = self.alloc(i, "dot operand", batch * rows * k);
            scratch.push(buf);
            let copy = permute_copy(shape, order, batch);
            let detail = format!("operand {} as {rows}x{k} rows", side + 1);
            self.strided_copy(i, &copy, src, buf, detail)?;
            if d.normalize {
                let total_rows = batch * rows;
                let w = vec![
                    to_u32(l, "rows", total_rows)?,
                    to_u32(l, "depth", k)?,
                    (1.0 / NORMALIZE_EPSILON).to_bits(),
                    0,
                ];
                let mut words = vec![0u32; 24];
                words.extend(w);
                words.extend([0u32; 4]);
                self.dispatch(
                    i,
                    Kernel::NormalizeRows,
                    vec![BufRef::Dummy, BufRef::Dummy, buf],
                    words,
                    Self::linear_workgroups(total_rows),
                    format!("L2-normalize {total_rows} rows of {k}, in place"),
                )?;
            }
            operands.push(buf);
        }
        let total = batch * m * n;
        let y = self.alloc(i, "output", total);
        let mut words = vec![0u32; 24];
        words.extend([
            to_u32(l, "batch", batch)?,
            to_u32(l, "rows", m)?,
            to_u32(l, "columns", n)?,
            to_u32(l, "depth", k)?,
            0,
            0,
            0,
            0,
        ]);
        self.dispatch(
            i,
            Kernel::BatchedDot,
            vec![operands[0], operands[1], y],
            words,
            Self::linear_workgroups(total),
            format!("{batch} products of {m}x{k} by {k}x{n}"),
        )?;
        for buf in scratch {
            self.release(buf);
        }
        Ok(y)
    }

    fn bilinear(&mut self, i: usize) -> Result<BufRef> {
        let l = self.layer(i);
        let (x_shape, out) = (self.item_shape(i, 0).to_vec(), self.out_shape(i).to_vec());
        let (&[ih, iw, c], &[oh, ow, _]) = (x_shape.as_slice(), out.as_slice()) else {
            return Err(layer_error(
                l,
                "input_shape",
                "bilinear upsampling needs (height, width, channels)",
            ));
        };
        let x = self.buffer_of(i, 0)?;
        let total = self.out_len(i);
        let y = self.alloc(i, "output", total);
        let mut words = vec![0u32; 24];
        words.extend([
            to_u32(l, "batch", self.batch)?,
            to_u32(l, "height", ih)?,
            to_u32(l, "width", iw)?,
            to_u32(l, "channels", c)?,
            to_u32(l, "height", oh)?,
            to_u32(l, "width", ow)?,
            bilinear_scale(ih, oh).to_bits(),
            bilinear_scale(iw, ow).to_bits(),
        ]);
        self.dispatch(
            i,
            Kernel::Bilinear,
            vec![x, y],
            words,
            Self::linear_workgroups(total),
            format!("bilinear {ih}x{iw} -> {oh}x{ow}, {c} channels"),
        )?;
        Ok(y)
    }
}
