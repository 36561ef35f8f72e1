//! Lowering of the convolutions and poolings: Conv1D/2D/3D (groups, dilation) on the
//! implicit-GEMM kernel, depthwise and transposed convolutions on their direct kernels in
//! conv.wgsl, and the poolings of any rank on pool.wgsl (a 1-D or 2-D window has a depth of 1).

use crate::error::Result;
use crate::graph::{Conv, ConvTranspose, DepthwiseConv, Pool, PoolOp};

use super::{act_words, layer_error, to_u32, BufRef, Builder, Kernel, WeightRole};

fn pool_name(op: PoolOp) -> &'static str {
    match op {
        PoolOp::Max => "max",
        PoolOp::Average => "average",
    }
}

impl Builder<'_> {
    pub(super) fn conv(&mut self, i: usize, c: &Conv, x: BufRef) -> Result<BufRef> {
        let w = &c.window;
        let groups = c.groups.max(1);
        let m = self.batch * w.out_positions();
        let out = self.alloc(i, "output", m * c.filters);
        let k = w.taps() * (c.in_channels / groups);
        let kernel = self.weight(i, WeightRole::Kernel);
        let bias = self.weight(i, WeightRole::Bias);
        self.gemm(
            i,
            x,
            kernel,
            bias,
            out,
            [m, c.filters / groups, k],
            &c.activation,
            Some(c),
        )?;
        Ok(out)
    }

    /// The uniform words of conv.wgsl's `ConvParams`.
    #[allow(clippy::too_many_arguments)]
    fn conv_params(
        &self,
        i: usize,
        act: [u32; 4],
        [in_c, out_c, multiplier]: [usize; 3],
        input: [usize; 3],
        output: [usize; 3],
        kernel: [usize; 3],
        strides: [usize; 3],
        dilation: [usize; 3],
        pad: [usize; 3],
        has_bias: bool,
    ) -> Result<Vec<u32>> {
        let l = self.layer(i);
        let mut words = act.to_vec();
        let values = [self.batch, in_c, out_c, multiplier]
            .into_iter()
            .chain(input)
            .chain(output)
            .chain(kernel)
            .chain(strides)
            .chain(dilation)
            .chain(pad)
            .chain([usize::from(has_bias)]);
        for v in values {
            words.push(to_u32(l, "geometry", v)?);
        }
        Ok(words)
    }

    pub(super) fn depthwise_conv(
        &mut self,
        i: usize,
        c: &DepthwiseConv,
        x: BufRef,
    ) -> Result<BufRef> {
        let l = self.layer(i);
        let w = &c.window;
        let out_len = self.batch * w.out_positions() * c.out_channels();
        let bias = self.weight(i, WeightRole::Bias);
        let params = self.conv_params(
            i,
            act_words(l, &c.activation)?,
            [c.channels, c.out_channels(), c.multiplier],
            w.input,
            w.output,
            w.kernel,
            w.strides,
            w.dilation,
            w.pad_before,
            bias != BufRef::Dummy,
        )?;
        let out = self.alloc(i, "output", out_len);
        let kernel = self.weight(i, WeightRole::Kernel);
        let detail = format!(
            "{} x{} over {} channels, {}",
            w.text(),
            c.multiplier,
            c.channels,
            c.activation.name()
        );
        self.dispatch(
            i,
            Kernel::DepthwiseConv,
            vec![x, kernel, bias, out],
            params,
            Self::linear_workgroups(out_len),
            detail,
        )?;
        Ok(out)
    }

    pub(super) fn conv_transpose(
        &mut self,
        i: usize,
        c: &ConvTranspose,
        x: BufRef,
    ) -> Result<BufRef> {
        let l = self.layer(i);
        let out_len = self.batch * c.output.iter().product::<usize>() * c.filters;
        let bias = self.weight(i, WeightRole::Bias);
        let params = self.conv_params(
            i,
            act_words(l, &c.activation)?,
            [c.in_channels, c.filters, 1],
            c.input,
            c.output,
            c.kernel_size,
            c.strides,
            c.dilation,
            c.pad_before,
            bias != BufRef::Dummy,
        )?;
        let out = self.alloc(i, "output", out_len);
        let kernel = self.weight(i, WeightRole::Kernel);
        let r = 3 - c.rank;
        let detail = format!(
            "transposed {:?} stride {:?} dilation {:?} {:?} -> {:?} x {}, {}",
            &c.kernel_size[r..],
            &c.strides[r..],
            &c.dilation[r..],
            c.padding,
            &c.output[r..],
            c.filters,
            c.activation.name()
        );
        self.dispatch(
            i,
            Kernel::ConvTranspose,
            vec![x, kernel, bias, out],
            params,
            Self::linear_workgroups(out_len),
            detail,
        )?;
        Ok(out)
    }

    pub(super) fn pool(&mut self, i: usize, p: &Pool, x: BufRef) -> Result<BufRef> {
        let l = self.layer(i);
        let w = &p.window;
        let out_len = self.batch * w.out_positions() * p.channels;
        let params = [
            self.batch,
            w.input[1],
            w.input[2],
            p.channels,
            w.output[1],
            w.output[2],
            w.kernel[1],
            w.kernel[2],
            w.strides[1],
            w.strides[2],
            w.pad_before[1],
            w.pad_before[2],
            usize::from(p.op == PoolOp::Max),
            w.input[0],
            w.output[0],
            w.kernel[0],
            w.strides[0],
            w.pad_before[0],
            0,
            0,
        ]
        .iter()
        .map(|&v| to_u32(l, "pool", v))
        .collect::<Result<Vec<_>>>()?;
        let out = self.alloc(i, "output", out_len);
        let detail = format!("{} {}", pool_name(p.op), w.text());
        self.dispatch(
            i,
            Kernel::Pool2d,
            vec![x, out, BufRef::Dummy],
            params,
            Self::linear_workgroups(out_len),
            detail,
        )?;
        Ok(out)
    }

    pub(super) fn global_pool(
        &mut self,
        i: usize,
        op: PoolOp,
        rank: usize,
        x: BufRef,
    ) -> Result<BufRef> {
        let l = self.layer(i);
        // Under TimeDistributed the value is (T, spatial..., C) with T folded into the batch:
        // the item is the trailing spatial axes and channels.
        let full = self.in_shape(i);
        let shape = &full[full.len().saturating_sub(rank + 1)..];
        if shape.len() != rank + 1 {
            return Err(layer_error(
                l,
                "input_shape",
                format!("{shape:?} is not {rank} spatial axes and channels"),
            ));
        }
        let positions: usize = shape[..rank].iter().product();
        let c = shape[rank];
        // A padding mask is read as the token ids it was computed from (`id != 0`).
        let ids = match l.mask {
            Some(m) => match self.value_buf[m] {
                Some(b @ BufRef::Input(_)) if self.graph.value(m).shape == [positions] => b,
                _ => {
                    return Err(layer_error(
                        l,
                        "mask",
                        "masking needs the model's token-id input of the same length",
                    ))
                }
            },
            None => BufRef::Dummy,
        };
        let mut params = vec![0u32; 20];
        params[0] = to_u32(l, "batch", self.batch)?;
        params[1] = to_u32(l, "positions", positions)?;
        params[2] = 1;
        params[3] = to_u32(l, "channels", c)?;
        params[12] = u32::from(op == PoolOp::Max);
        params[18] = u32::from(ids != BufRef::Dummy);
        let out_len = self.batch * c;
        let out = self.alloc(i, "output", out_len);
        let mut detail = format!("{} over {:?} positions", pool_name(op), &shape[..rank]);
        if ids != BufRef::Dummy {
            detail.push_str(", masked by token id 0");
        }
        self.dispatch(
            i,
            Kernel::GlobalPool2d,
            vec![x, out, ids],
            params,
            Self::linear_workgroups(out_len),
            detail,
        )?;
        Ok(out)
    }
}
