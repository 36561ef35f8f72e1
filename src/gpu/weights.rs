//! Weight buffers: which arrays each layer uploads, in the layout its kernels read. Uploaded once
//! per runtime and shared by the plans of every batch size.

use crate::error::{Error, Result};
use crate::ir::{Layer, LayerKind, ModelIr, Recurrent};

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
    pub layer: usize,
    pub role: WeightRole,
}

/// A weight buffer's identity and length in f32s.
#[derive(Debug, Clone, Copy)]
pub struct WeightSpec {
    pub key: WeightKey,
    pub len: usize,
}

/// The weight buffers a model needs, in layer order.
pub fn weight_specs(ir: &ModelIr) -> Vec<WeightSpec> {
    let mut specs = Vec::new();
    for (layer, l) in ir.layers.iter().enumerate() {
        let mut add = |role, len| {
            specs.push(WeightSpec {
                key: WeightKey { layer, role },
                len,
            })
        };
        match &l.kind {
            LayerKind::Conv2d(c) => {
                add(WeightRole::Kernel, c.kernel.len());
                if let Some(b) = &c.bias {
                    add(WeightRole::Bias, b.len());
                }
            }
            LayerKind::Dense(d) => {
                add(WeightRole::Kernel, d.kernel.len());
                if let Some(b) = &d.bias {
                    add(WeightRole::Bias, b.len());
                }
            }
            LayerKind::Embedding(e) => add(WeightRole::Table, e.table.len()),
            LayerKind::Rescaling { scale, offset } => {
                add(WeightRole::Scale, scale.len());
                add(WeightRole::Offset, offset.len());
            }
            LayerKind::Recurrent(r) => {
                add(WeightRole::Kernel, r.cells().map(|c| c.kernel.len()).sum());
                if r.cells().any(|c| c.bias.is_some()) {
                    add(WeightRole::Bias, r.cells().map(|c| c.kernel.ncols()).sum());
                }
                let recurrent = r.cells().map(|c| c.recurrent_kernel.len()).sum();
                add(WeightRole::RecurrentKernel, recurrent);
            }
            _ => {}
        }
    }
    specs
}

/// The values of one weight buffer, row-major in the layout `WeightRole` describes.
pub fn weight_values(ir: &ModelIr, key: WeightKey) -> Result<Vec<f32>> {
    let layer = ir
        .layers
        .get(key.layer)
        .ok_or_else(|| Error::Gpu(format!("internal: no layer #{}", key.layer)))?;
    let missing = || {
        Error::Gpu(format!(
            "layer '{}' ({}): weights: no {} for the GPU",
            layer.name,
            layer.class,
            key.role.name()
        ))
    };
    let values = match (&layer.kind, key.role) {
        (LayerKind::Conv2d(c), WeightRole::Kernel) => c.kernel.iter().copied().collect(),
        (LayerKind::Conv2d(c), WeightRole::Bias) => c.bias.as_ref().ok_or_else(missing)?.to_vec(),
        (LayerKind::Dense(d), WeightRole::Kernel) => d.kernel.iter().copied().collect(),
        (LayerKind::Dense(d), WeightRole::Bias) => d.bias.as_ref().ok_or_else(missing)?.to_vec(),
        (LayerKind::Embedding(e), WeightRole::Table) => e.table.iter().copied().collect(),
        (LayerKind::Rescaling { scale, .. }, WeightRole::Scale) => scale.clone(),
        (LayerKind::Rescaling { offset, .. }, WeightRole::Offset) => offset.clone(),
        (LayerKind::Recurrent(r), WeightRole::Kernel) => recurrent_input_kernel(layer, r)?,
        (LayerKind::Recurrent(r), WeightRole::Bias) => r
            .cells()
            .flat_map(|c| match &c.bias {
                Some(b) => b.to_vec(),
                None => vec![0.0; c.kernel.ncols()],
            })
            .collect(),
        (LayerKind::Recurrent(r), WeightRole::RecurrentKernel) => r
            .cells()
            .flat_map(|c| c.recurrent_kernel.iter().copied())
            .collect(),
        _ => return Err(missing()),
    };
    Ok(values)
}

/// [W_forward | W_backward] along columns, so one GEMM projects the input for both directions.
fn recurrent_input_kernel(layer: &Layer, r: &Recurrent) -> Result<Vec<f32>> {
    let features = r.forward.kernel.nrows();
    if r.cells().any(|c| c.kernel.nrows() != features) {
        return Err(Error::Gpu(format!(
            "layer '{}' ({}): kernel: directions disagree on the input features",
            layer.name, layer.class
        )));
    }
    let mut out = Vec::with_capacity(r.cells().map(|c| c.kernel.len()).sum());
    for row in 0..features {
        for cell in r.cells() {
            out.extend(cell.kernel.row(row).iter().copied());
        }
    }
    Ok(out)
}
