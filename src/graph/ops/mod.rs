//! The ops of the graph: one enum, each variant's attributes in the file of its family, and the
//! three things every op answers here: its shape rule (run when its node is added), the
//! parameters it reads, and its cost. Backends match on `Op` exhaustively, with no `_ =>` arm, so
//! a new op is one arm in each and the compiler lists what is missing.

pub mod activation;
pub mod conv;
pub mod conv_lstm;
pub mod dense;
pub mod dropout;
pub mod embedding;
pub mod merge;
pub mod norm;
pub mod pool;
pub mod recurrent;
pub mod time_distributed;

pub use activation::Activation;
pub use conv::{
    axis_output, to_dhw, transpose_axis, window_output, Conv, ConvTranspose, DepthwiseConv,
    Padding, Window, Window2d,
};
pub use conv_lstm::ConvLstm;
pub use dense::Dense;
pub use dropout::{Dropout, DropoutKind};
pub use embedding::Embedding;
pub use merge::{BinaryOp, Dot, Interpolation, Merge, ScalarOp, StridedCopy};
pub use norm::{
    axis_layout, broadcast_strides, keep_axes, AxisLayout, BatchNorm, GroupNorm, LayerNorm,
    LayerNormKind, Normalization, PRelu, Softmax, NORMALIZATION_EPSILON, UNIT_NORM_MAX_INV,
};
pub use pool::{Pool, PoolOp};
pub use recurrent::{CellDropout, CellKind, MergeMode, Recurrent, RecurrentCell};

use super::params::{ParamId, ParamStore};
use super::{DType, Shape, ValueInfo};

/// A shape rule's verdict: the output shape, or why the inputs do not fit (one line).
pub type ShapeResult<T> = std::result::Result<T, String>;

#[derive(Debug, Clone)]
pub enum Op {
    /// Conv1D/2D/3D, with groups and dilation.
    Conv(Conv),
    DepthwiseConv(DepthwiseConv),
    ConvTranspose(ConvTranspose),
    /// Max and average pooling, 1-D to 3-D.
    Pool(Pool),
    /// Over the `rank` spatial axes of a channels-last tensor. A 1-D average reads the padding
    /// mask when one reaches it (Keras averages over the unmasked steps).
    GlobalPool {
        op: PoolOp,
        keepdims: bool,
        rank: usize,
    },
    Dense(Dense),
    Activation(Activation),
    /// y = x * scale + offset; each a scalar (len 1) or one value per last-axis channel.
    Rescaling {
        scale: Vec<f32>,
        offset: Vec<f32>,
    },
    Embedding(Embedding),
    /// Boxed: two cells make it much larger than the other variants.
    Recurrent(Box<Recurrent>),
    /// Flatten and Reshape: data stays in row-major order, only the shape changes.
    Reshape {
        shape: Shape,
    },
    /// Layers that do nothing at all (ActivityRegularization, a one-input merge).
    Identity,
    /// Dropout, SpatialDropout*, GaussianNoise, GaussianDropout, AlphaDropout: the identity at
    /// inference, random in training.
    Dropout(Dropout),
    /// Keras's padding mask of `Embedding(mask_zero=True)` (and of a `NotEqual(ids, 0)` op):
    /// token ids in, `id != 0` out.
    PaddingMask,
    /// Add, Subtract, Multiply, Average, Maximum, Minimum layers and tensor-tensor operator
    /// nodes: two or more inputs, broadcast.
    Merge(Merge),
    /// An operator node with one tensor and a constant (`x * 0.5`, `2.0 - x`).
    Scalar(ScalarOp),
    /// Concatenate along an item axis (0-based, without the batch).
    Concat {
        axis: usize,
    },
    Dot(Dot),
    /// ZeroPadding1D/2D/3D: `[before, after]` zeros per item axis.
    Pad {
        pads: Vec<[usize; 2]>,
    },
    /// Cropping1D/2D/3D: `[start, end]` values dropped per item axis.
    Crop {
        crops: Vec<[usize; 2]>,
    },
    /// Permute: output item axis i is input item axis `perm[i]` (0-based).
    Permute {
        perm: Vec<usize>,
    },
    /// RepeatVector: (features) -> (n, features).
    RepeatVector {
        n: usize,
    },
    /// UpSampling1D/2D/3D: one factor per item axis (1 on channels).
    Upsample {
        factors: Vec<usize>,
        interpolation: Interpolation,
    },
    BatchNorm(BatchNorm),
    LayerNorm(LayerNorm),
    GroupNorm(GroupNorm),
    Normalization(Normalization),
    PRelu(PRelu),
    /// Softmax or log_softmax over any contiguous axes (the last axis is `Activation`).
    Softmax(Softmax),
    /// TimeDistributed(Conv2D / pooling): `inner` runs on every timestep's item, (T, ...) in,
    /// (T, ...) out (`time_distributed::supported` lists the inner ops).
    TimeDistributed {
        inner: Box<Op>,
    },
    /// ConvLSTM1D / ConvLSTM2D (inference, no mask).
    ConvLstm(Box<ConvLstm>),
}

impl Op {
    /// Short name for plans and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv(_) => "conv",
            Op::DepthwiseConv(_) => "depthwise_conv",
            Op::ConvTranspose(_) => "conv_transpose",
            Op::Pool(_) => "pool",
            Op::GlobalPool { .. } => "global_pool",
            Op::Dense(_) => "dense",
            Op::Activation(_) => "activation",
            Op::Rescaling { .. } => "rescaling",
            Op::Embedding(_) => "embedding",
            Op::Recurrent(_) => "recurrent",
            Op::Reshape { .. } => "reshape",
            Op::Identity => "identity",
            Op::Dropout(_) => "dropout",
            Op::PaddingMask => "padding_mask",
            Op::Merge(_) => "merge",
            Op::Scalar(_) => "scalar",
            Op::Concat { .. } => "concat",
            Op::Dot(_) => "dot",
            Op::Pad { .. } => "pad",
            Op::Crop { .. } => "crop",
            Op::Permute { .. } => "permute",
            Op::RepeatVector { .. } => "repeat_vector",
            Op::Upsample { .. } => "upsample",
            Op::BatchNorm(_) => "batch_norm",
            Op::LayerNorm(_) => "layer_norm",
            Op::GroupNorm(_) => "group_norm",
            Op::Normalization(_) => "normalization",
            Op::PRelu(_) => "prelu",
            Op::Softmax(_) => "softmax_axes",
            Op::TimeDistributed { .. } => "time_distributed",
            Op::ConvLstm(_) => "conv_lstm",
        }
    }

    /// The shape rule: output values from input values. `inputs` are the node's data inputs
    /// (a mask, where a node takes one, is not among them).
    pub fn infer(&self, inputs: &[&ValueInfo], params: &ParamStore) -> ShapeResult<Vec<ValueInfo>> {
        let one = |dtype: DType| -> ShapeResult<&ValueInfo> {
            match inputs {
                [x] if x.dtype == dtype => Ok(x),
                [x] => Err(format!(
                    "expects {} input, got {}",
                    dtype.name(),
                    x.dtype.name()
                )),
                _ => Err(format!("expects one input, got {}", inputs.len())),
            }
        };
        let float = |shape: Shape| Ok(vec![ValueInfo::new(shape, DType::F32)]);
        let check_param = |id: ParamId, shape: &[usize]| -> ShapeResult<()> {
            let p = params.param(id);
            if p.value.shape() != shape {
                return Err(format!(
                    "weight '{}' has shape {:?}, expected {shape:?}",
                    p.name,
                    p.value.shape()
                ));
            }
            Ok(())
        };
        match self {
            Op::Conv(c) => {
                let x = one(DType::F32)?;
                let shape = c.output_shape(&x.shape)?;
                check_param(c.kernel, &c.kernel_shape())?;
                if let Some(b) = c.bias {
                    check_param(b, &[c.filters])?;
                }
                float(shape)
            }
            Op::DepthwiseConv(c) => {
                let x = one(DType::F32)?;
                check_param(c.kernel, &c.kernel_shape())?;
                if let Some(b) = c.bias {
                    check_param(b, &[c.out_channels()])?;
                }
                float(c.output_shape(&x.shape)?)
            }
            Op::ConvTranspose(c) => {
                let x = one(DType::F32)?;
                check_param(c.kernel, &c.kernel_shape())?;
                if let Some(b) = c.bias {
                    check_param(b, &[c.filters])?;
                }
                float(c.output_shape(&x.shape)?)
            }
            Op::Pool(p) => float(p.output_shape(&one(DType::F32)?.shape)?),
            Op::GlobalPool { keepdims, rank, .. } => float(pool::global_pool_shape(
                &one(DType::F32)?.shape,
                *rank,
                *keepdims,
            )?),
            Op::Dense(d) => {
                let x = one(DType::F32)?;
                check_param(d.kernel, &[d.in_features, d.units])?;
                if let Some(b) = d.bias {
                    check_param(b, &[d.units])?;
                }
                float(d.output_shape(&x.shape)?)
            }
            Op::Activation(a) => {
                let x = one(DType::F32)?;
                if a.is_row_wise() && x.shape.is_empty() {
                    return Err(format!("{} needs at least one axis", a.name()));
                }
                float(x.shape.clone())
            }
            Op::Rescaling { scale, offset } => {
                let x = one(DType::F32)?;
                let channels = x.shape.last().copied().unwrap_or(1);
                for (field, len) in [("scale", scale.len()), ("offset", offset.len())] {
                    if len != 1 && len != channels {
                        return Err(format!(
                            "{field} has {len} values; expected 1 or one per channel ({channels})"
                        ));
                    }
                }
                float(x.shape.clone())
            }
            Op::Embedding(e) => {
                let x = one(DType::Ids)?;
                check_param(e.table, &[e.input_dim, e.output_dim])?;
                float(e.output_shape(&x.shape)?)
            }
            Op::Recurrent(r) => {
                for cell in r.cells() {
                    let g = cell.gate_columns();
                    check_param(cell.kernel, &[r.input_features, g])?;
                    check_param(cell.recurrent_kernel, &[cell.units, g])?;
                    if let Some(b) = cell.bias {
                        check_param(b, &cell.bias_shape())?;
                    }
                }
                r.infer(inputs)
            }
            Op::Reshape { shape } => {
                let x = one(DType::F32)?;
                let (a, b) = (x.elements(), shape.iter().product::<usize>());
                if a != b {
                    return Err(format!(
                        "cannot reshape {:?} ({a} values) to {shape:?}",
                        x.shape
                    ));
                }
                float(shape.clone())
            }
            Op::Identity | Op::Dropout(_) => match inputs {
                [x] => Ok(vec![(*x).clone()]),
                _ => Err(format!("expects one input, got {}", inputs.len())),
            },
            Op::PaddingMask => {
                let x = one(DType::Ids)?;
                Ok(vec![ValueInfo::new(x.shape.clone(), DType::Mask)])
            }
            Op::Merge(_) | Op::Concat { .. } | Op::Dot(_) => {
                if let Some(x) = inputs.iter().find(|x| x.dtype != DType::F32) {
                    return Err(format!("expects float32 inputs, got {}", x.dtype.name()));
                }
                let shapes: Vec<&[usize]> = inputs.iter().map(|x| x.shape.as_slice()).collect();
                match self {
                    Op::Merge(_) => {
                        if shapes.len() < 2 {
                            return Err(format!(
                                "a merge needs at least two inputs, got {}",
                                shapes.len()
                            ));
                        }
                        let mut out = shapes[0].to_vec();
                        for s in &shapes[1..] {
                            out = merge::broadcast_shapes(&out, s)?;
                        }
                        float(out)
                    }
                    Op::Concat { axis } => float(merge::concat_shape(*axis, &shapes)?),
                    Op::Dot(d) => match shapes.as_slice() {
                        [x, y] => float(d.output_shape(x, y)?),
                        _ => Err(format!("Dot takes two inputs, got {}", shapes.len())),
                    },
                    _ => unreachable!("matched above"),
                }
            }
            Op::Scalar(_) => float(one(DType::F32)?.shape.clone()),
            Op::Pad { pads } => float(merge::pad_shape(pads, &one(DType::F32)?.shape)?),
            Op::Crop { crops } => float(merge::crop_shape(crops, &one(DType::F32)?.shape)?),
            Op::Permute { perm } => float(merge::permute_shape(perm, &one(DType::F32)?.shape)?),
            Op::RepeatVector { n } => match one(DType::F32)?.shape.as_slice() {
                [f] => float(vec![*n, *f]),
                other => Err(format!(
                    "RepeatVector needs (features) input, got {other:?}"
                )),
            },
            Op::Upsample {
                factors,
                interpolation,
            } => float(merge::upsample_shape(
                factors,
                *interpolation,
                &one(DType::F32)?.shape,
            )?),
            Op::BatchNorm(b) => {
                let x = one(DType::F32)?;
                b.check(&x.shape, params)?;
                float(x.shape.clone())
            }
            Op::LayerNorm(l) => {
                let x = one(DType::F32)?;
                l.check(&x.shape, params)?;
                float(x.shape.clone())
            }
            Op::GroupNorm(gn) => {
                let x = one(DType::F32)?;
                gn.check(&x.shape, params)?;
                float(x.shape.clone())
            }
            Op::Normalization(n) => {
                let x = one(DType::F32)?;
                n.check(&x.shape, params)?;
                float(x.shape.clone())
            }
            Op::PRelu(p) => {
                let x = one(DType::F32)?;
                broadcast_strides(&x.shape, params.get(p.alpha).shape())?;
                float(x.shape.clone())
            }
            Op::Softmax(s) => {
                let x = one(DType::F32)?;
                axis_layout(&x.shape, &s.axes)?;
                float(x.shape.clone())
            }
            Op::ConvLstm(c) => c.infer(inputs, params),
            Op::TimeDistributed { inner } => {
                let x = one(DType::F32)?;
                let (steps, item) = time_distributed::infer(inner, x, params)?;
                float(time_distributed::output_shape(steps, &item.shape))
            }
        }
    }

    /// Whether the op reads a mask when one reaches its input (BatchNormalization only in
    /// training: its batch statistics skip the masked steps).
    pub fn takes_mask(&self) -> bool {
        matches!(
            self,
            Op::Recurrent(_)
                | Op::BatchNorm(_)
                | Op::GlobalPool {
                    op: PoolOp::Average,
                    rank: 1,
                    ..
                }
        ) || matches!(self, Op::Merge(m) if m.masked)
    }

    /// The parameters the op reads, in Keras's weight order.
    pub fn params(&self) -> Vec<ParamId> {
        match self {
            Op::Conv(Conv { kernel, bias, .. })
            | Op::DepthwiseConv(DepthwiseConv { kernel, bias, .. })
            | Op::ConvTranspose(ConvTranspose { kernel, bias, .. }) => {
                std::iter::once(*kernel).chain(*bias).collect()
            }
            Op::Dense(d) => std::iter::once(d.kernel).chain(d.bias).collect(),
            Op::Embedding(e) => vec![e.table],
            Op::Recurrent(r) => r
                .cells()
                .flat_map(|c| [Some(c.kernel), Some(c.recurrent_kernel), c.bias])
                .flatten()
                .collect(),
            Op::BatchNorm(b) => [b.gamma, b.beta]
                .into_iter()
                .flatten()
                .chain([b.moving_mean, b.moving_variance])
                .chain(b.unused.iter().copied())
                .collect(),
            Op::LayerNorm(l) => [l.gamma, l.beta].into_iter().flatten().collect(),
            Op::GroupNorm(gn) => [gn.gamma, gn.beta].into_iter().flatten().collect(),
            Op::Normalization(n) => std::iter::once(n.mean)
                .chain([n.variance])
                .chain(n.count)
                .collect(),
            Op::PRelu(p) => vec![p.alpha],
            Op::Pool(_)
            | Op::GlobalPool { .. }
            | Op::Activation(_)
            | Op::Rescaling { .. }
            | Op::Reshape { .. }
            | Op::Identity
            | Op::Dropout(_)
            | Op::PaddingMask
            | Op::Merge(_)
            | Op::Scalar(_)
            | Op::Concat { .. }
            | Op::Dot(_)
            | Op::Pad { .. }
            | Op::Crop { .. }
            | Op::Permute { .. }
            | Op::RepeatVector { .. }
            | Op::Upsample { .. }
            | Op::Softmax(_) => Vec::new(),
            Op::TimeDistributed { inner } => inner.params(),
            Op::ConvLstm(c) => std::iter::once(c.kernel)
                .chain([c.recurrent_kernel])
                .chain(c.bias)
                .collect(),
        }
    }

    /// Multiply-adds counted as 2 FLOPs, per batch item (for `info` and `bench`).
    pub fn flops(&self, inputs: &[&ValueInfo], outputs: &[&ValueInfo], params: &ParamStore) -> u64 {
        let out: u64 = outputs.iter().map(|v| v.elements() as u64).sum();
        match self {
            Op::Conv(c) => {
                let k = (c.window.taps() * c.in_channels / c.groups.max(1)) as u64;
                2 * out * k
            }
            Op::DepthwiseConv(c) => 2 * out * c.window.taps() as u64,
            Op::ConvTranspose(c) => {
                let x: u64 = inputs.iter().map(|v| v.elements() as u64).sum();
                2 * x * (c.taps() * c.filters) as u64
            }
            Op::Dense(d) => 2 * out * d.in_features as u64,
            Op::Recurrent(r) => r
                .cells()
                .map(|c| {
                    let weights = params.len_of(c.kernel) + params.len_of(c.recurrent_kernel);
                    2 * r.timesteps as u64 * weights as u64
                })
                .sum(),
            Op::Pool(p) => out * p.window.taps() as u64,
            Op::GlobalPool { .. } => inputs.iter().map(|v| v.elements() as u64).sum(),
            Op::Merge(_) => out * inputs.len().saturating_sub(1) as u64,
            Op::Scalar(_) => out,
            Op::Dot(d) => match inputs {
                [x, y] => 2 * d.layout(&x.shape, &y.shape).k as u64 * out,
                _ => 0,
            },
            Op::Upsample {
                interpolation: Interpolation::Bilinear,
                ..
            } => 6 * out,
            Op::Concat { .. }
            | Op::Pad { .. }
            | Op::Crop { .. }
            | Op::Permute { .. }
            | Op::RepeatVector { .. }
            | Op::Upsample { .. } => 0,
            // A multiply-add per value; statistics read each value a few times more.
            Op::BatchNorm(_) | Op::Normalization(_) | Op::PRelu(_) => 2 * out,
            Op::LayerNorm(_) | Op::GroupNorm(_) => 6 * out,
            Op::Softmax(_) => 0,
            Op::Activation(_)
            | Op::Rescaling { .. }
            | Op::Embedding(_)
            | Op::Reshape { .. }
            | Op::Identity
            | Op::Dropout(_)
            | Op::PaddingMask => 0,
            Op::TimeDistributed { inner } => {
                // The inner op's cost per item, times the steps.
                let item = |v: &ValueInfo| {
                    ValueInfo::new(v.shape.get(1..).unwrap_or(&[]).to_vec(), v.dtype)
                };
                let steps = inputs.first().and_then(|v| v.shape.first()).copied();
                let ins: Vec<ValueInfo> = inputs.iter().map(|v| item(v)).collect();
                let outs: Vec<ValueInfo> = outputs.iter().map(|v| item(v)).collect();
                let ins: Vec<&ValueInfo> = ins.iter().collect();
                let outs: Vec<&ValueInfo> = outs.iter().collect();
                steps.unwrap_or(0) as u64 * inner.flops(&ins, &outs, params)
            }
            Op::ConvLstm(c) => {
                let [oh, ow] = c.window.out_hw;
                let [kh, kw] = c.window.kernel;
                let per_position = kh * kw * (c.in_channels + c.filters) * 4 * c.filters;
                2 * (c.timesteps * oh * ow * per_position) as u64
            }
        }
    }

    /// The op's options in a few words, for `wgnn info`.
    pub fn detail(&self) -> String {
        match self {
            Op::Conv(c) => {
                let mut s = format!("{} {}", c.window.text(), c.activation.name());
                if c.groups > 1 {
                    s += &format!(" groups={}", c.groups);
                }
                s
            }
            Op::DepthwiseConv(c) => format!(
                "{} x{} {}",
                c.window.text(),
                c.multiplier,
                c.activation.name()
            ),
            Op::ConvTranspose(c) => {
                let r = 3 - c.rank;
                format!(
                    "{:?} /{:?} dil {:?} {:?} -> {:?} {}",
                    &c.kernel_size[r..],
                    &c.strides[r..],
                    &c.dilation[r..],
                    c.padding,
                    &c.output[r..],
                    c.activation.name()
                )
            }
            Op::Pool(p) => format!("{:?} {}", p.op, p.window.text()),
            Op::GlobalPool { op, .. } => op.name().to_string(),
            Op::Dense(d) => d.activation.name().to_string(),
            Op::Activation(a) => a.name().to_string(),
            Op::Embedding(e) if e.mask_zero => "mask_zero".into(),
            Op::Recurrent(r) => {
                let mut s = format!("{} units={}", r.forward.kind.name(), r.units());
                if r.backward.is_some() {
                    s += &format!(" bidirectional merge={:?}", r.merge_mode);
                }
                if r.return_sequences {
                    s += " return_sequences";
                }
                if r.forward.go_backwards && r.backward.is_none() {
                    s += " go_backwards";
                }
                if matches!(r.forward.kind, CellKind::Gru { reset_after: false }) {
                    s += " reset_after=False";
                }
                if r.return_state {
                    s += " return_state";
                }
                if r.initial_state {
                    s += " initial_state";
                }
                s
            }
            Op::Merge(m) => {
                if m.average {
                    "average".into()
                } else {
                    m.op.name().into()
                }
            }
            Op::Scalar(s) if s.scalar_first => format!("{} {} x", s.value, s.op.name()),
            Op::Scalar(s) => format!("x {} {}", s.op.name(), s.value),
            Op::Concat { axis } => format!("axis {}", axis + 1),
            Op::Dot(d) => format!(
                "axes ({}, {}){}",
                d.axes[0] + 1,
                d.axes[1] + 1,
                if d.normalize { " normalize" } else { "" }
            ),
            Op::Pad { pads } => format!("{pads:?}"),
            Op::Crop { crops } => format!("{crops:?}"),
            Op::Permute { perm } => format!("{:?}", perm.iter().map(|a| a + 1).collect::<Vec<_>>()),
            Op::RepeatVector { n } => format!("n={n}"),
            Op::Upsample {
                factors,
                interpolation,
            } => format!("{factors:?} {interpolation:?}").to_lowercase(),
            Op::BatchNorm(b) => format!("axis {:?} epsilon {}", keras_axes(&b.axes), b.epsilon),
            Op::LayerNorm(l) => format!(
                "{:?} axis {:?} epsilon {}",
                l.kind,
                keras_axes(&l.axes),
                l.epsilon
            ),
            Op::GroupNorm(gn) => format!("groups {} epsilon {}", gn.groups, gn.epsilon),
            Op::Normalization(n) if n.invert => "invert".into(),
            Op::Softmax(s) => format!(
                "{} over axis {:?}",
                if s.log { "log_softmax" } else { "softmax" },
                keras_axes(&s.axes)
            ),
            Op::TimeDistributed { inner } => {
                format!("per step: {} {}", inner.name(), inner.detail())
            }
            Op::ConvLstm(c) => format!(
                "{} filters {}x{} /{}x{} {:?}{}{}",
                c.filters,
                c.window.kernel[0],
                c.window.kernel[1],
                c.window.strides[0],
                c.window.strides[1],
                c.window.padding,
                if c.return_sequences {
                    " return_sequences"
                } else {
                    ""
                },
                if c.go_backwards { " go_backwards" } else { "" }
            ),
            Op::Rescaling { .. }
            | Op::Embedding(_)
            | Op::Reshape { .. }
            | Op::Identity
            | Op::Dropout(_)
            | Op::PaddingMask
            | Op::Normalization(_)
            | Op::PRelu(_) => String::new(),
        }
    }
}

/// Axes of a value's shape without the batch axis as Keras numbers them (batch axis 0).
fn keras_axes(axes: &[usize]) -> Vec<usize> {
    axes.iter().map(|a| a + 1).collect()
}
