//! The ops of the graph: one enum, each variant's attributes in the file of its family, and the
//! three things every op answers here: its shape rule (run when its node is added), the
//! parameters it reads, and its cost. Backends match on `Op` exhaustively, with no `_ =>` arm, so
//! a new op is one arm in each and the compiler lists what is missing.

pub mod activation;
pub mod conv;
pub mod conv_lstm;
pub mod dense;
pub mod embedding;
pub mod pool;
pub mod recurrent;
pub mod time_distributed;

pub use activation::Activation;
pub use conv::{window_output, Conv2d, Padding, Window2d};
pub use conv_lstm::ConvLstm;
pub use dense::Dense;
pub use embedding::Embedding;
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
                if *a == Activation::Softmax && x.shape.is_empty() {
                    return Err("softmax needs at least one axis".into());
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
            Op::Identity => match inputs {
                [x] => Ok(vec![(*x).clone()]),
                _ => Err(format!("expects one input, got {}", inputs.len())),
            },
            Op::PaddingMask => {
                let x = one(DType::Ids)?;
                Ok(vec![ValueInfo::new(x.shape.clone(), DType::Mask)])
            }
            Op::ConvLstm(c) => c.infer(inputs, params),
            Op::TimeDistributed { inner } => {
                let x = one(DType::F32)?;
                let (steps, item) = time_distributed::infer(inner, x, params)?;
                float(time_distributed::output_shape(steps, &item.shape))
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
            Op::Pool2d(_)
            | Op::GlobalPool2d { .. }
            | Op::Activation(_)
            | Op::Rescaling { .. }
            | Op::Reshape { .. }
            | Op::Identity
            | Op::PaddingMask => Vec::new(),
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
            Op::Activation(_)
            | Op::Rescaling { .. }
            | Op::Embedding(_)
            | Op::Reshape { .. }
            | Op::Identity
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
            | Op::PaddingMask => String::new(),
        }
    }
}
