//! Convolutions and poolings, 1-D to 3-D: Conv1D/2D/3D (dilation, groups, Conv1D's causal),
//! DepthwiseConv1D/2D, SeparableConv1D/2D (a depthwise node, then a 1x1 pointwise conv),
//! Conv1D/2D/3DTranspose, Max/AveragePooling1D/2D/3D and the global poolings.

use serde_json::Value;

use crate::error::Result;
use crate::graph::*;
use crate::keras::build::Builder;
use crate::keras::fields::LayerConfig;

/// The options every windowed conv layer shares.
struct ConvOptions {
    kernel_size: Vec<usize>,
    strides: Vec<usize>,
    dilation: Vec<usize>,
    padding: Padding,
    use_bias: bool,
    activation: Activation,
}

impl Builder<'_> {
    fn require_rank(cfg: &LayerConfig, x: &ValueInfo, rank: usize) -> Result<()> {
        if x.shape.len() != rank + 1 {
            let what = match rank {
                1 => "(steps, channels)",
                2 => "(H, W, C)",
                _ => "(D, H, W, C)",
            };
            return Err(cfg.error(
                "input_shape",
                format!(
                    "expects {what} input, got shape {:?} (without the batch axis)",
                    x.shape
                ),
            ));
        }
        Ok(())
    }

    fn conv_options(
        cfg: &LayerConfig,
        x: &ValueInfo,
        rank: usize,
        causal: bool,
    ) -> Result<ConvOptions> {
        cfg.require_channels_last()?;
        Self::require_rank(cfg, x, rank)?;
        cfg.require_absent_or("lora_rank", &[], "LoRA layers are not supported")?;
        let kernel_size = cfg.tuple_or("kernel_size", rank, None)?;
        let strides = cfg.tuple_or("strides", rank, Some(1))?;
        let dilation = cfg.tuple_or("dilation_rate", rank, Some(1))?;
        let padding = if causal {
            cfg.padding_or_causal()?
        } else {
            cfg.padding()?
        };
        Ok(ConvOptions {
            kernel_size,
            strides,
            dilation,
            padding,
            use_bias: cfg.bool_or("use_bias", true)?,
            activation: cfg.activation("activation")?,
        })
    }

    fn window_for(cfg: &LayerConfig, x: &ValueInfo, o: &ConvOptions) -> Result<Window> {
        let rank = o.kernel_size.len();
        let w = Window::new(
            &o.kernel_size,
            &o.strides,
            &o.dilation,
            o.padding,
            &x.shape[..rank],
        );
        if w.output.contains(&0) {
            return Err(cfg.error(
                "kernel_size",
                format!(
                    "kernel {:?} (dilation {:?}) does not fit the input {:?} with 'valid' padding",
                    o.kernel_size, o.dilation, x.shape
                ),
            ));
        }
        Ok(w)
    }

    /// Conv1D, Conv2D, Conv3D.
    pub(super) fn conv(&mut self, cfg: &LayerConfig, x: &ValueInfo, rank: usize) -> Result<Op> {
        let o = Self::conv_options(cfg, x, rank, rank == 1)?;
        let filters = cfg.usize("filters")?;
        let groups = match cfg.get("groups") {
            None => 1,
            Some(_) => cfg.usize("groups")?,
        };
        let in_channels = x.shape[rank];
        if groups == 0 || !in_channels.is_multiple_of(groups) || !filters.is_multiple_of(groups) {
            return Err(cfg.error(
                "groups",
                format!("{groups} groups must divide the {in_channels} input channels and {filters} filters"),
            ));
        }
        let window = Self::window_for(cfg, x, &o)?;
        let mut kernel_shape = o.kernel_size.clone();
        kernel_shape.extend([in_channels / groups, filters]);
        let (kernel, bias) = self.kernel_and_bias(cfg, kernel_shape, filters, o.use_bias)?;
        Ok(Op::Conv(Conv {
            filters,
            window,
            in_channels,
            groups,
            kernel,
            bias,
            activation: o.activation,
        }))
    }

    /// DepthwiseConv1D, DepthwiseConv2D.
    pub(super) fn depthwise_conv(
        &mut self,
        cfg: &LayerConfig,
        x: &ValueInfo,
        rank: usize,
    ) -> Result<Op> {
        let o = Self::conv_options(cfg, x, rank, false)?;
        let multiplier = match cfg.get("depth_multiplier") {
            None => 1,
            Some(_) => cfg.usize("depth_multiplier")?,
        };
        if multiplier == 0 {
            return Err(cfg.error("depth_multiplier", "must be at least 1"));
        }
        let channels = x.shape[rank];
        let window = Self::window_for(cfg, x, &o)?;
        let mut kernel_shape = o.kernel_size.clone();
        kernel_shape.extend([channels, multiplier]);
        let (kernel, bias) =
            self.kernel_and_bias(cfg, kernel_shape, channels * multiplier, o.use_bias)?;
        Ok(Op::DepthwiseConv(DepthwiseConv {
            window,
            channels,
            multiplier,
            kernel,
            bias,
            activation: o.activation,
        }))
    }

    /// SeparableConv1D, SeparableConv2D: a depthwise node (no bias, linear) named
    /// `<layer>/depthwise`, then the pointwise 1x1 conv with the bias and activation.
    pub(super) fn separable_conv(
        &mut self,
        cfg: &LayerConfig,
        x: ValueId,
        rank: usize,
    ) -> Result<Vec<ValueId>> {
        let info = self.info(x).clone();
        let o = Self::conv_options(cfg, &info, rank, false)?;
        let filters = cfg.usize("filters")?;
        let multiplier = match cfg.get("depth_multiplier") {
            None => 1,
            Some(_) => cfg.usize("depth_multiplier")?,
        };
        if multiplier == 0 {
            return Err(cfg.error("depth_multiplier", "must be at least 1"));
        }
        let channels = info.shape[rank];
        let window = Self::window_for(cfg, &info, &o)?;
        let mut depthwise = o.kernel_size.clone();
        depthwise.extend([channels, multiplier]);
        let mut pointwise = vec![1; rank];
        pointwise.extend([channels * multiplier, filters]);
        let mut specs = vec![
            ("depthwise_kernel", depthwise),
            ("pointwise_kernel", pointwise),
        ];
        if o.use_bias {
            specs.push(("bias", vec![filters]));
        }
        let p = self.params(cfg, &[], &specs)?;
        let dw = Op::DepthwiseConv(DepthwiseConv {
            window,
            channels,
            multiplier,
            kernel: p[0],
            bias: None,
            activation: Activation::Linear,
        });
        let mid = self
            .graph
            .add_node(
                &format!("{}/depthwise", cfg.name),
                &cfg.class,
                dw,
                &[x],
                None,
            )
            .map_err(|m| cfg.error("input_shape", m))?;
        let mid_shape = self.info(mid[0]).shape.clone();
        let ones = vec![1; rank];
        let pw = Op::Conv(Conv {
            filters,
            window: Window::new(&ones, &ones, &ones, Padding::Valid, &mid_shape[..rank]),
            in_channels: channels * multiplier,
            groups: 1,
            kernel: p[1],
            bias: p.get(2).copied(),
            activation: o.activation,
        });
        Ok(vec![self.add1(cfg, pw, &mid, None)?])
    }

    /// Conv1DTranspose, Conv2DTranspose, Conv3DTranspose.
    pub(super) fn conv_transpose(
        &mut self,
        cfg: &LayerConfig,
        x: &ValueInfo,
        rank: usize,
    ) -> Result<Op> {
        let o = Self::conv_options(cfg, x, rank, false)?;
        cfg.require_absent_or("groups", &[Value::from(1)], "only groups=1 is supported")?;
        let filters = cfg.usize("filters")?;
        let output_padding = cfg.tuple0("output_padding", rank)?;
        let in_channels = x.shape[rank];
        let k = to_dhw(&o.kernel_size, 1);
        let s = to_dhw(&o.strides, 1);
        let d = to_dhw(&o.dilation, 1);
        let input = to_dhw(&x.shape[..rank], 1);
        let mut output = [1; 3];
        let mut pad_before = [0; 3];
        for a in 3 - rank..3 {
            let op = output_padding.as_ref().map(|p| p[a + rank - 3]);
            if let Some(p) = op {
                // Keras: "Strides must be greater than output padding".
                if p >= s[a] {
                    return Err(cfg.error(
                        "output_padding",
                        format!("{p} must be smaller than the stride {}", s[a]),
                    ));
                }
            }
            let (out, pad) = transpose_axis(input[a], k[a], s[a], d[a], o.padding, op)
                .map_err(|m| cfg.error("padding", m))?;
            output[a] = out;
            pad_before[a] = pad;
        }
        let mut kernel_shape = o.kernel_size.clone();
        kernel_shape.extend([filters, in_channels]);
        let (kernel, bias) = self.kernel_and_bias(cfg, kernel_shape, filters, o.use_bias)?;
        Ok(Op::ConvTranspose(ConvTranspose {
            filters,
            in_channels,
            rank,
            kernel_size: k,
            strides: s,
            dilation: d,
            padding: o.padding,
            input,
            output,
            pad_before,
            kernel,
            bias,
            activation: o.activation,
        }))
    }

    pub(super) fn pool(
        &mut self,
        cfg: &LayerConfig,
        x: &ValueInfo,
        rank: usize,
        op: PoolOp,
    ) -> Result<Op> {
        cfg.require_channels_last()?;
        Self::require_rank(cfg, x, rank)?;
        let pool = cfg.tuple_or("pool_size", rank, Some(2))?;
        let strides = match cfg.get("strides") {
            None => pool.clone(),
            Some(_) => cfg.tuple_or("strides", rank, None)?,
        };
        let padding = cfg.padding()?;
        let ones = vec![1; rank];
        let window = Window::new(&pool, &strides, &ones, padding, &x.shape[..rank]);
        if window.output.contains(&0) {
            return Err(cfg.error(
                "pool_size",
                format!(
                    "pool {pool:?} does not fit the input {:?} with 'valid' padding",
                    x.shape
                ),
            ));
        }
        Ok(Op::Pool(Pool {
            op,
            window,
            channels: x.shape[rank],
        }))
    }

    pub(super) fn global_pool(
        &mut self,
        cfg: &LayerConfig,
        x: &ValueInfo,
        rank: usize,
        op: PoolOp,
    ) -> Result<Op> {
        cfg.require_channels_last()?;
        Self::require_rank(cfg, x, rank)?;
        let keepdims = cfg.bool_or("keepdims", false)?;
        Ok(Op::GlobalPool { op, keepdims, rank })
    }
}
