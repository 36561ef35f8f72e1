//! Embedding backward: the rows of the table that the batch looked up get its gradients, summed
//! where an id repeats (Keras applies the dense sum of these sparse row updates too).

use ndarray::{Array2, ArrayD};

use crate::cpu::Tensor;
use crate::error::{Error, Result};
use crate::graph::{Embedding, Node, ParamStore};
use crate::train::ParamGrads;

pub(super) fn backward(
    e: &Embedding,
    params: &ParamStore,
    ids: &Tensor,
    node: &Node,
    dy: ArrayD<f32>,
    grads: &mut ParamGrads,
) -> Result<()> {
    if !params.param(e.table).trainable {
        return Ok(());
    }
    let Tensor::Ids(ids) = ids else {
        return Err(Error::Internal(format!(
            "Embedding '{}' read {}, not token ids",
            node.name,
            ids.kind()
        )));
    };
    let dim = e.output_dim;
    let dy = dy.as_standard_layout();
    let dys = dy.as_slice().expect("standard layout");
    let mut table = Array2::<f32>::zeros((e.input_dim, dim));
    for (k, &id) in ids.iter().enumerate() {
        let mut row = table.row_mut(id as usize);
        row.iter_mut()
            .zip(&dys[k * dim..(k + 1) * dim])
            .for_each(|(t, &g)| *t += g);
    }
    grads.add(e.table, table.into_dyn());
    Ok(())
}
