//! Weight buffers: which arrays each layer uploads, in the layout its kernels read. Uploaded once
//! per runtime and shared by the plans of every batch size.

use crate::error::{Error, Result};
use crate::graph::{CellKind, Conv2d, Dense, Graph, Op, ParamStore, Recurrent};

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
    /// Rescaling scale and offset.
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

/// The weight buffers a graph needs, in node order.
pub fn weight_specs(graph: &Graph) -> Vec<WeightSpec> {
    let p = &graph.params;
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
                if let Some(b) = bias {
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
                let recurrent: usize = r.cells().map(|c| p.len_of(c.recurrent_kernel)).sum();
                add(
                    WeightRole::RecurrentKernel,
                    recurrent + recurrent_bias_len(r),
                );
            }
            // Not lowered for the GPU yet (the plan reports it).
            Op::ConvLstm(_) => {}
            Op::TimeDistributed { inner } => {
                if let Op::Conv2d(Conv2d { kernel, bias, .. }) = inner.as_ref() {
                    add(WeightRole::Kernel, p.len_of(*kernel));
                    if let Some(b) = bias {
                        add(WeightRole::Bias, p.len_of(*b));
                    }
                }
            }
            Op::Pool2d(_)
            | Op::GlobalPool2d { .. }
            | Op::Activation(_)
            | Op::Reshape { .. }
            | Op::Identity
            | Op::PaddingMask => {}
        }
    }
    specs
}

/// The values of one weight buffer, row-major in the layout `WeightRole` describes.
pub fn weight_values(graph: &Graph, key: WeightKey) -> Result<Vec<f32>> {
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
        (Op::Recurrent(r), WeightRole::Kernel) => recurrent_input_kernel(p, r),
        // A reset_after GRU's bias is (input bias, recurrent bias): the input half here.
        (Op::Recurrent(r), WeightRole::Bias) => r
            .cells()
            .flat_map(|c| match c.bias {
                Some(b) => p.slice(b)[..c.gate_columns()].to_vec(),
                None => vec![0.0; c.gate_columns()],
            })
            .collect(),
        // The recurrent kernels, then the recurrent biases of a reset_after GRU.
        (Op::Recurrent(r), WeightRole::RecurrentKernel) => {
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
        (Op::TimeDistributed { inner }, WeightRole::Kernel) => match inner.as_ref() {
            Op::Conv2d(c) => p.slice(c.kernel).to_vec(),
            _ => return Err(missing()),
        },
        (Op::TimeDistributed { inner }, WeightRole::Bias) => match inner.as_ref() {
            Op::Conv2d(Conv2d { bias: Some(b), .. }) => p.slice(*b).to_vec(),
            _ => return Err(missing()),
        },
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
