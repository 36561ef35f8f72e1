//! Weight buffers: which arrays each layer uploads, in the layout its kernels read. Uploaded once
//! per runtime and shared by the plans of every batch size.

use super::plan::{batch_norm_folds, folded_weights};
use crate::error::{Error, Result};
use crate::graph::{Conv2d, Dense, Graph, Op, ParamStore, Recurrent};

/// What a weight buffer holds for its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WeightRole {
    /// Dense (in, out); Conv2D HWIO, which is already the (kh*kw*in, out) GEMM matrix;
    /// recurrent: the input kernels of all directions side by side, (features, dirs*gates*units).
    Kernel,
    /// Dense/Conv2D bias; recurrent: the biases of all directions, concatenated.
    Bias,
    /// Embedding table (input_dim, output_dim).
    Table,
    /// Rescaling scale and offset; BatchNormalization and Normalization as x * scale + offset;
    /// LayerNormalization's gamma and beta; PReLU's alpha (scale).
    Scale,
    Offset,
    /// Recurrent kernels of all directions stacked: (dirs*units, gates*units).
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
            Op::Conv2d(Conv2d { kernel, bias, .. }) | Op::Dense(Dense { kernel, bias, .. }) => {
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
                add(
                    WeightRole::Kernel,
                    r.cells().map(|c| p.len_of(c.kernel)).sum(),
                );
                if r.cells().any(|c| c.bias.is_some()) {
                    add(WeightRole::Bias, r.cells().map(|c| c.gate_columns()).sum());
                }
                let recurrent = r.cells().map(|c| p.len_of(c.recurrent_kernel)).sum();
                add(WeightRole::RecurrentKernel, recurrent);
            }
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
            Op::Pool2d(_)
            | Op::GlobalPool2d { .. }
            | Op::Activation(_)
            | Op::Reshape { .. }
            | Op::Identity
            | Op::PaddingMask
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
    if let (Op::Conv2d(_) | Op::Dense(_), Some(bn)) =
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
            Op::Conv2d(Conv2d { kernel, .. }) | Op::Dense(Dense { kernel, .. }),
            WeightRole::Kernel,
        ) => p.slice(*kernel).to_vec(),
        (Op::Conv2d(Conv2d { bias, .. }) | Op::Dense(Dense { bias, .. }), WeightRole::Bias) => {
            p.slice(bias.ok_or_else(missing)?).to_vec()
        }
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
        (Op::Recurrent(r), WeightRole::Kernel) => recurrent_input_kernel(p, r),
        (Op::Recurrent(r), WeightRole::Bias) => r
            .cells()
            .flat_map(|c| match c.bias {
                Some(b) => p.slice(b).to_vec(),
                None => vec![0.0; c.gate_columns()],
            })
            .collect(),
        (Op::Recurrent(r), WeightRole::RecurrentKernel) => r
            .cells()
            .flat_map(|c| p.slice(c.recurrent_kernel).iter().copied())
            .collect(),
        _ => return Err(missing()),
    };
    Ok(values)
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
