//! The ops of the graph: one enum, each variant's attributes in the file of its family, and the
//! three things every op answers here: its shape rule (run when its node is added), the
//! parameters it reads, and its cost. Backends match on `Op` exhaustively, with no `_ =>` arm, so
//! a new op is one arm in each and the compiler lists what is missing.

pub mod activation;
pub mod conv;
pub mod dense;
pub mod embedding;
pub mod norm;
pub mod pool;
pub mod recurrent;

pub use activation::Activation;
pub use conv::{window_output, Conv2d, Padding, Window2d};
pub use dense::Dense;
pub use embedding::Embedding;
pub use norm::{
    axis_layout, broadcast_strides, keep_axes, AxisLayout, BatchNorm, GroupNorm, LayerNorm,
    LayerNormKind, Normalization, PRelu, Softmax, NORMALIZATION_EPSILON, UNIT_NORM_MAX_INV,
};
pub use pool::{Pool2d, PoolOp};
pub use recurrent::{CellKind, MergeMode, Recurrent, RecurrentCell};

use super::params::{ParamId, ParamStore};
use super::{DType, Shape, ValueInfo};

/// A shape rule's verdict: the output shape, or why the inputs do not fit (one line).
pub type ShapeResult<T> = std::result::Result<T, String>;

#[derive(Debug, Clone)]
pub enum Op {
    Conv2d(Conv2d),
    Pool2d(Pool2d),
    /// Over H and W of NHWC.
    GlobalPool2d {
        op: PoolOp,
        keepdims: bool,
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
    /// Dropout, SpatialDropout*, and other layers that do nothing at inference.
    Identity,
    /// Keras's padding mask of `Embedding(mask_zero=True)` (and of a `NotEqual(ids, 0)` op):
    /// token ids in, `id != 0` out.
    PaddingMask,
    BatchNorm(BatchNorm),
    LayerNorm(LayerNorm),
    GroupNorm(GroupNorm),
    Normalization(Normalization),
    PRelu(PRelu),
    /// Softmax or log_softmax over any contiguous axes (the last axis is `Activation`).
    Softmax(Softmax),
}

impl Op {
    /// Short name for plans and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv2d(_) => "conv2d",
            Op::Pool2d(_) => "pool2d",
            Op::GlobalPool2d { .. } => "global_pool2d",
            Op::Dense(_) => "dense",
            Op::Activation(_) => "activation",
            Op::Rescaling { .. } => "rescaling",
            Op::Embedding(_) => "embedding",
            Op::Recurrent(_) => "recurrent",
            Op::Reshape { .. } => "reshape",
            Op::Identity => "identity",
            Op::PaddingMask => "padding_mask",
            Op::BatchNorm(_) => "batch_norm",
            Op::LayerNorm(_) => "layer_norm",
            Op::GroupNorm(_) => "group_norm",
            Op::Normalization(_) => "normalization",
            Op::PRelu(_) => "prelu",
            Op::Softmax(_) => "softmax_axes",
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
            Op::Conv2d(c) => {
                let x = one(DType::F32)?;
                let w = &c.window;
                check_param(
                    c.kernel,
                    &[w.kernel[0], w.kernel[1], c.in_channels, c.filters],
                )?;
                if let Some(b) = c.bias {
                    check_param(b, &[c.filters])?;
                }
                float(c.output_shape(&x.shape)?)
            }
            Op::Pool2d(p) => float(p.output_shape(&one(DType::F32)?.shape)?),
            Op::GlobalPool2d { keepdims, .. } => float(pool::global_pool2d_shape(
                &one(DType::F32)?.shape,
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
                let x = one(DType::F32)?;
                for cell in r.cells() {
                    let g = cell.gate_columns();
                    check_param(cell.kernel, &[r.input_features, g])?;
                    check_param(cell.recurrent_kernel, &[cell.units, g])?;
                    if let Some(b) = cell.bias {
                        check_param(b, &[g])?;
                    }
                }
                if r.timesteps == 0 {
                    return Err("a recurrent layer needs at least one timestep".into());
                }
                float(r.output_shape(&x.shape)?)
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
            Op::Identity => match inputs {
                [x] => Ok(vec![(*x).clone()]),
                _ => Err(format!("expects one input, got {}", inputs.len())),
            },
            Op::PaddingMask => {
                let x = one(DType::Ids)?;
                Ok(vec![ValueInfo::new(x.shape.clone(), DType::Mask)])
            }
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
        }
    }

    /// Whether the op reads a mask when one reaches its input.
    pub fn takes_mask(&self) -> bool {
        matches!(self, Op::Recurrent(_))
    }

    /// The parameters the op reads, in Keras's weight order.
    pub fn params(&self) -> Vec<ParamId> {
        match self {
            Op::Conv2d(c) => std::iter::once(c.kernel).chain(c.bias).collect(),
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
            Op::Pool2d(_)
            | Op::GlobalPool2d { .. }
            | Op::Activation(_)
            | Op::Rescaling { .. }
            | Op::Reshape { .. }
            | Op::Identity
            | Op::PaddingMask
            | Op::Softmax(_) => Vec::new(),
        }
    }

    /// Multiply-adds counted as 2 FLOPs, per batch item (for `info` and `bench`).
    pub fn flops(&self, inputs: &[&ValueInfo], outputs: &[&ValueInfo], params: &ParamStore) -> u64 {
        let out: u64 = outputs.iter().map(|v| v.elements() as u64).sum();
        match self {
            Op::Conv2d(c) => {
                let k = (c.window.kernel[0] * c.window.kernel[1] * c.in_channels) as u64;
                2 * out * k
            }
            Op::Dense(d) => 2 * out * d.in_features as u64,
            Op::Recurrent(r) => r
                .cells()
                .map(|c| {
                    let weights = params.len_of(c.kernel) + params.len_of(c.recurrent_kernel);
                    2 * r.timesteps as u64 * weights as u64
                })
                .sum(),
            Op::Pool2d(p) => out * (p.window.kernel[0] * p.window.kernel[1]) as u64,
            Op::GlobalPool2d { .. } => inputs.iter().map(|v| v.elements() as u64).sum(),
            // A multiply-add per value; statistics read each value a few times more.
            Op::BatchNorm(_) | Op::Normalization(_) | Op::PRelu(_) => 2 * out,
            Op::LayerNorm(_) | Op::GroupNorm(_) => 6 * out,
            Op::Softmax(_) => 0,
            Op::Activation(_)
            | Op::Rescaling { .. }
            | Op::Embedding(_)
            | Op::Reshape { .. }
            | Op::Identity
            | Op::PaddingMask => 0,
        }
    }

    /// The op's options in a few words, for `wgnn info`.
    pub fn detail(&self) -> String {
        match self {
            Op::Conv2d(c) => format!(
                "{}x{} /{}x{} {:?} {}",
                c.window.kernel[0],
                c.window.kernel[1],
                c.window.strides[0],
                c.window.strides[1],
                c.window.padding,
                c.activation.name()
            ),
            Op::Pool2d(p) => format!(
                "{:?} {}x{} /{}x{} {:?}",
                p.op,
                p.window.kernel[0],
                p.window.kernel[1],
                p.window.strides[0],
                p.window.strides[1],
                p.window.padding
            ),
            Op::GlobalPool2d { op, .. } => op.name().to_string(),
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
                s
            }
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
            Op::Rescaling { .. }
            | Op::Embedding(_)
            | Op::Reshape { .. }
            | Op::Identity
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
