//! Embedding backward: the rows of the table that the batch looked up get its gradients, summed
//! where an id repeats; the unsummed rows are kept too, as TensorFlow's `IndexedSlices` are,
//! because Keras's optimizers treat repeated rows one by one (see `ParamGrads::add_rows`).

use ndarray::ArrayD;

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
    let dy = dy.as_standard_layout();
    let dys = dy.as_slice().expect("standard layout");
    let indices: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
    grads.add_rows(e.table, &[e.input_dim, e.output_dim], &indices, dys);
    Ok(())
}
