//! Weight buffers: which arrays each layer uploads, in the layout its kernels read. Uploaded once
//! per runtime and shared by the plans of every batch size.

use super::plan::{batch_norm_folds, folded_weights};
use crate::error::{Error, Result};
use crate::graph::{
    CellKind, Conv, ConvTranspose, Dense, DepthwiseConv, Graph, Op, ParamStore, Recurrent,
};

/// What a weight buffer holds for its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WeightRole {
    /// Dense (in, out); Conv (k..., in/groups, out), which is already the (taps*in/groups, out)
    /// GEMM matrix; depthwise (k..., C, M) and transposed (k..., out, in) as Keras stores them;
    /// recurrent: the input kernels of all directions side by side, (features, dirs*gates*units);
    /// ConvLSTM: (k..., C, 4F) as Keras stores it, the input conv's GEMM matrix.
    Kernel,
    /// Dense/Conv2D bias; recurrent: the biases of all directions, concatenated.
    Bias,
    /// Embedding table (input_dim, output_dim).
    Table,
    /// Rescaling scale and offset; BatchNormalization and Normalization as x * scale + offset;
    /// LayerNormalization's gamma and beta; PReLU's alpha (scale).
    Scale,
    Offset,
    /// Recurrent kernels of all directions stacked: (dirs*units, gates*units); ConvLSTM's
    /// (k..., F, 4F), the recurrent conv's GEMM matrix.
    RecurrentKernel,
}

impl WeightRole {
    pub fn name(self) -> &'static str {
        match self {
            WeightRole::Kernel => "kernel",
            WeightRole::Bias => "bias",
            WeightRole::Table => "table",
            WeightRole::Scale => "scale",
            WeightRole::Offset => "offset",
            WeightRole::RecurrentKernel => "recurrent_kernel",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WeightKey {
    /// The graph node whose kernels read the buffer.
    pub node: usize,
    pub role: WeightRole,
}

/// A weight buffer's identity and length in f32s.
#[derive(Debug, Clone, Copy)]
pub struct WeightSpec {
    pub key: WeightKey,
    pub len: usize,
}

/// Which BatchNormalization each node folds, with folding on or off.
fn folds(graph: &Graph, fold_batch_norm: bool) -> Vec<Option<usize>> {
    if fold_batch_norm {
        batch_norm_folds(graph)
    } else {
        vec![None; graph.nodes.len()]
    }
}

/// The weight buffers a graph needs, in node order. With `fold_batch_norm`, a Conv2D or Dense
/// followed by a foldable BatchNormalization has folded weights (and always a bias), and the
/// BatchNormalization none.
pub fn weight_specs(graph: &Graph, fold_batch_norm: bool) -> Vec<WeightSpec> {
    let p = &graph.params;
    let folds = folds(graph, fold_batch_norm);
    let mut specs = Vec::new();
    for (node, n) in graph.nodes.iter().enumerate() {
        let mut add = |role, len| {
            specs.push(WeightSpec {
                key: WeightKey { node, role },
                len,
            })
        };
        match &n.op {
            Op::Conv(Conv { kernel, bias, .. })
            | Op::DepthwiseConv(DepthwiseConv { kernel, bias, .. })
            | Op::ConvTranspose(ConvTranspose { kernel, bias, .. })
            | Op::Dense(Dense { kernel, bias, .. }) => {
                add(WeightRole::Kernel, p.len_of(*kernel));
                if let Some(bn) = folds[node] {
                    add(WeightRole::Bias, bn_channels(graph, bn));
                } else if let Some(b) = bias {
                    add(WeightRole::Bias, p.len_of(*b));
                }
            }
            Op::Embedding(e) => add(WeightRole::Table, p.len_of(e.table)),
            Op::Rescaling { scale, offset } => {
                add(WeightRole::Scale, scale.len());
                add(WeightRole::Offset, offset.len());
            }
            Op::Recurrent(r) => {
                for (role, len) in recurrent_specs(p, r) {
                    add(role, len);
                }
            }
            Op::ConvLstm(c) => {
                add(WeightRole::Kernel, p.len_of(c.kernel));
                if let Some(b) = c.bias {
                    add(WeightRole::Bias, p.len_of(b));
                }
                add(WeightRole::RecurrentKernel, p.len_of(c.recurrent_kernel));
            }
            Op::TimeDistributed { inner } => match inner.as_ref() {
                Op::Conv(Conv { kernel, bias, .. }) => {
                    add(WeightRole::Kernel, p.len_of(*kernel));
                    if let Some(b) = bias {
                        add(WeightRole::Bias, p.len_of(*b));
                    }
                }
                Op::Recurrent(r) => {
                    for (role, len) in recurrent_specs(p, r) {
                        add(role, len);
                    }
                }
                _ => {}
            },
            Op::BatchNorm(b) if !folds.contains(&Some(node)) => {
                add(WeightRole::Scale, p.len_of(b.moving_mean));
                add(WeightRole::Offset, p.len_of(b.moving_mean));
            }
            Op::LayerNorm(l) => {
                if let Some(g) = l.gamma {
                    add(WeightRole::Scale, p.len_of(g));
                }
                if let Some(b) = l.beta {
                    add(WeightRole::Offset, p.len_of(b));
                }
            }
            Op::GroupNorm(gn) => {
                if let Some(g) = gn.gamma {
                    add(WeightRole::Scale, p.len_of(g));
                }
                if let Some(b) = gn.beta {
                    add(WeightRole::Offset, p.len_of(b));
                }
            }
            Op::Normalization(n) => {
                add(WeightRole::Scale, p.len_of(n.mean));
                add(WeightRole::Offset, p.len_of(n.mean));
            }
            Op::PRelu(a) => add(WeightRole::Scale, p.len_of(a.alpha)),
            Op::Pool(_)
            | Op::GlobalPool { .. }
            | Op::Activation(_)
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
            | Op::BatchNorm(_)
            | Op::Softmax(_) => {}
        }
    }
    specs
}

fn bn_channels(graph: &Graph, bn: usize) -> usize {
    match &graph.nodes[bn].op {
        Op::BatchNorm(b) => graph.params.len_of(b.moving_mean),
        _ => 0,
    }
}

/// The values of one weight buffer, row-major in the layout `WeightRole` describes.
pub fn weight_values(graph: &Graph, key: WeightKey, fold_batch_norm: bool) -> Result<Vec<f32>> {
    let node = graph
        .nodes
        .get(key.node)
        .ok_or_else(|| Error::Internal(format!("no node #{}", key.node)))?;
    let p = &graph.params;
    let missing = || {
        Error::Internal(format!(
            "layer '{}' ({}): weights: no {} for the GPU",
            node.name,
            node.class,
            key.role.name()
        ))
    };
    if let (Op::Conv(_) | Op::Dense(_), Some(bn)) =
        (&node.op, folds(graph, fold_batch_norm)[key.node])
    {
        let (kernel, bias) = folded_weights(graph, key.node, bn)?;
        return match key.role {
            WeightRole::Kernel => Ok(kernel),
            WeightRole::Bias => Ok(bias),
            _ => Err(missing()),
        };
    }
    let values = match (&node.op, key.role) {
        (
            Op::Conv(Conv { kernel, .. })
            | Op::DepthwiseConv(DepthwiseConv { kernel, .. })
            | Op::ConvTranspose(ConvTranspose { kernel, .. })
            | Op::Dense(Dense { kernel, .. }),
            WeightRole::Kernel,
        ) => p.slice(*kernel).to_vec(),
        (
            Op::Conv(Conv { bias, .. })
            | Op::DepthwiseConv(DepthwiseConv { bias, .. })
            | Op::ConvTranspose(ConvTranspose { bias, .. })
            | Op::Dense(Dense { bias, .. }),
            WeightRole::Bias,
        ) => p.slice(bias.ok_or_else(missing)?).to_vec(),
        (Op::Embedding(e), WeightRole::Table) => p.slice(e.table).to_vec(),
        (Op::Rescaling { scale, .. }, WeightRole::Scale) => scale.clone(),
        (Op::Rescaling { offset, .. }, WeightRole::Offset) => offset.clone(),
        (Op::BatchNorm(b), WeightRole::Scale) => b.affine(p).0,
        (Op::BatchNorm(b), WeightRole::Offset) => b.affine(p).1,
        (Op::LayerNorm(l), WeightRole::Scale) => p.slice(l.gamma.ok_or_else(missing)?).to_vec(),
        (Op::LayerNorm(l), WeightRole::Offset) => p.slice(l.beta.ok_or_else(missing)?).to_vec(),
        (Op::GroupNorm(gn), WeightRole::Scale) => p.slice(gn.gamma.ok_or_else(missing)?).to_vec(),
        (Op::GroupNorm(gn), WeightRole::Offset) => p.slice(gn.beta.ok_or_else(missing)?).to_vec(),
        (Op::Normalization(n), WeightRole::Scale) => n.affine(p).0,
        (Op::Normalization(n), WeightRole::Offset) => n.affine(p).1,
        (Op::PRelu(a), WeightRole::Scale) => p.slice(a.alpha).to_vec(),
        (Op::Recurrent(r), role) => recurrent_values(p, r, role).ok_or_else(missing)?,
        (Op::ConvLstm(c), WeightRole::Kernel) => p.slice(c.kernel).to_vec(),
        (Op::ConvLstm(c), WeightRole::Bias) => p.slice(c.bias.ok_or_else(missing)?).to_vec(),
        (Op::ConvLstm(c), WeightRole::RecurrentKernel) => p.slice(c.recurrent_kernel).to_vec(),
        (Op::TimeDistributed { inner }, role) if matches!(inner.as_ref(), Op::Recurrent(_)) => {
            match inner.as_ref() {
                Op::Recurrent(r) => recurrent_values(p, r, role).ok_or_else(missing)?,
                _ => return Err(missing()),
            }
        }
        (Op::TimeDistributed { inner }, WeightRole::Kernel) => match inner.as_ref() {
            Op::Conv(c) => p.slice(c.kernel).to_vec(),
            _ => return Err(missing()),
        },
        (Op::TimeDistributed { inner }, WeightRole::Bias) => match inner.as_ref() {
            Op::Conv(Conv { bias: Some(b), .. }) => p.slice(*b).to_vec(),
            _ => return Err(missing()),
        },
        _ => return Err(missing()),
    };
    Ok(values)
}

/// A recurrent layer's weight buffers: the input kernels of all directions, their biases (when
/// any cell has one), the recurrent kernels with a reset_after GRU's recurrent biases.
fn recurrent_specs(p: &ParamStore, r: &Recurrent) -> Vec<(WeightRole, usize)> {
    let mut specs = vec![(
        WeightRole::Kernel,
        r.cells().map(|c| p.len_of(c.kernel)).sum(),
    )];
    if r.cells().any(|c| c.bias.is_some()) {
        specs.push((WeightRole::Bias, r.cells().map(|c| c.gate_columns()).sum()));
    }
    let recurrent: usize = r.cells().map(|c| p.len_of(c.recurrent_kernel)).sum();
    specs.push((
        WeightRole::RecurrentKernel,
        recurrent + recurrent_bias_len(r),
    ));
    specs
}

/// The values of one of [`recurrent_specs`]' buffers; None for a role it does not have.
fn recurrent_values(p: &ParamStore, r: &Recurrent, role: WeightRole) -> Option<Vec<f32>> {
    Some(match role {
        WeightRole::Kernel => recurrent_input_kernel(p, r),
        // A reset_after GRU's bias is (input bias, recurrent bias): the input half here.
        WeightRole::Bias => r
            .cells()
            .flat_map(|c| match c.bias {
                Some(b) => p.slice(b)[..c.gate_columns()].to_vec(),
                None => vec![0.0; c.gate_columns()],
            })
            .collect(),
        // The recurrent kernels, then the recurrent biases of a reset_after GRU.
        WeightRole::RecurrentKernel => {
            let mut v: Vec<f32> = r
                .cells()
                .flat_map(|c| p.slice(c.recurrent_kernel).iter().copied())
                .collect();
            if recurrent_bias_len(r) > 0 {
                for c in r.cells() {
                    match c.bias {
                        Some(b) => v.extend_from_slice(&p.slice(b)[c.gate_columns()..]),
                        None => v.extend(std::iter::repeat_n(0.0, c.gate_columns())),
                    }
                }
            }
            v
        }
        _ => return None,
    })
}

/// [W_forward | W_backward] along columns, so one GEMM projects the input for both directions.
fn recurrent_input_kernel(p: &ParamStore, r: &Recurrent) -> Vec<f32> {
    let features = r.input_features;
    let mut out = Vec::with_capacity(r.cells().map(|c| p.len_of(c.kernel)).sum());
    for row in 0..features {
        for cell in r.cells() {
            let g = cell.gate_columns();
            out.extend_from_slice(&p.slice(cell.kernel)[row * g..(row + 1) * g]);
        }
    }
    out
}

/// Floats of recurrent bias after the recurrent kernels: a reset_after GRU with a bias keeps one
/// (gates * units) row per direction there.
pub fn recurrent_bias_len(r: &Recurrent) -> usize {
    let has = r
        .cells()
        .any(|c| matches!(c.kind, CellKind::Gru { reset_after: true }) && c.bias.is_some());
    if has {
        r.cells().map(|c| c.gate_columns()).sum()
    } else {
        0
    }
}
