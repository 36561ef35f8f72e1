//! Gradients of the parameters, keyed like the `ParamStore` they belong to.

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::graph::{ParamId, ParamStore};

/// One optional gradient per parameter of a `ParamStore` (None: not reached this step, or not
/// trainable). A shared layer's gradients from each call are summed.
///
/// A table read only by lookups (Embedding) also keeps its gradient as TensorFlow's
/// `IndexedSlices` does: one row per looked-up id, repeated ids not summed. Keras's optimizers
/// square and clip those rows one by one (Adam's velocity gets the sum of the squares, not the
/// square of the sum), so the optimizer needs them; everyone else reads the dense sum.
#[derive(Debug, Clone, Default)]
pub struct ParamGrads {
    grads: Vec<Option<ArrayD<f32>>>,
    rows: Vec<Option<RowSlices>>,
}

/// The rows of a lookup table's gradient before duplicates are summed, in lookup order (the
/// values of TensorFlow's `IndexedSlices`); several lookups of one table are concatenated.
#[derive(Debug, Clone, PartialEq)]
pub struct RowSlices {
    /// Row of the table each slice belongs to.
    pub indices: Vec<usize>,
    /// `indices.len() * row_len` values, row-major.
    pub values: Vec<f32>,
    /// Values per row: the product of the table's shape after its first axis.
    pub row_len: usize,
}

impl RowSlices {
    pub fn row(&self, k: usize) -> &[f32] {
        &self.values[k * self.row_len..(k + 1) * self.row_len]
    }
}

impl ParamGrads {
    pub fn new(params: &ParamStore) -> Self {
        ParamGrads {
            grads: vec![None; params.len()],
            rows: vec![None; params.len()],
        }
    }

    /// Adds `g` to the gradient of `id`. A dense gradient makes the whole gradient dense, as
    /// TensorFlow's tape does when it sums `IndexedSlices` with a tensor.
    pub fn add(&mut self, id: ParamId, g: ArrayD<f32>) {
        self.rows[id.0] = None;
        match &mut self.grads[id.0] {
            Some(acc) => *acc += &g,
            slot @ None => *slot = Some(g.as_standard_layout().into_owned()),
        }
    }

    /// Adds a view (copied only when it is the first gradient of `id`).
    pub fn add_view(&mut self, id: ParamId, g: ArrayViewD<f32>) {
        self.rows[id.0] = None;
        match &mut self.grads[id.0] {
            Some(acc) => *acc += &g,
            slot @ None => *slot = Some(g.as_standard_layout().into_owned()),
        }
    }

    /// Adds the gradient of lookups into the table `id` of `shape`: `values` holds one row of
    /// `row_len` values per entry of `indices` (each below `shape[0]`). The dense sum is kept
    /// too; the slices stay only while every gradient of `id` comes from lookups.
    pub fn add_rows(&mut self, id: ParamId, shape: &[usize], indices: &[usize], values: &[f32]) {
        let row_len: usize = shape[1..].iter().product();
        debug_assert_eq!(values.len(), indices.len() * row_len);
        let first = self.grads[id.0].is_none();
        let dense = self.grads[id.0].get_or_insert_with(|| ArrayD::zeros(IxDyn(shape)));
        let flat = dense
            .as_slice_mut()
            .expect("gradients are kept in standard layout");
        for (k, &i) in indices.iter().enumerate() {
            flat[i * row_len..(i + 1) * row_len]
                .iter_mut()
                .zip(&values[k * row_len..(k + 1) * row_len])
                .for_each(|(t, &g)| *t += g);
        }
        match &mut self.rows[id.0] {
            Some(rows) => {
                rows.indices.extend_from_slice(indices);
                rows.values.extend_from_slice(values);
            }
            slot @ None if first => {
                *slot = Some(RowSlices {
                    indices: indices.to_vec(),
                    values: values.to_vec(),
                    row_len,
                })
            }
            // Already dense: stays dense.
            None => {}
        }
    }

    /// The unsummed rows of `id`'s gradient, when it came from lookups only.
    pub fn rows(&self, id: ParamId) -> Option<&RowSlices> {
        self.rows[id.0].as_ref()
    }

    /// Takes the gradient of `id` out, with its rows when it came from lookups only.
    pub fn take_with_rows(&mut self, id: ParamId) -> Option<(ArrayD<f32>, Option<RowSlices>)> {
        let rows = self.rows[id.0].take();
        self.grads[id.0].take().map(|g| (g, rows))
    }

    pub fn get(&self, id: ParamId) -> Option<&ArrayD<f32>> {
        self.grads[id.0].as_ref()
    }

    /// The dense gradient to change in place; it is then no longer described by its rows.
    pub fn get_mut(&mut self, id: ParamId) -> Option<&mut ArrayD<f32>> {
        self.rows[id.0] = None;
        self.grads[id.0].as_mut()
    }

    pub fn take(&mut self, id: ParamId) -> Option<ArrayD<f32>> {
        self.rows[id.0] = None;
        self.grads[id.0].take()
    }

    pub fn len(&self) -> usize {
        self.grads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// The gradients present, in parameter order.
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &ArrayD<f32>)> {
        self.grads
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.as_ref().map(|g| (ParamId(i), g)))
    }

    /// The dense gradients to change in place; they are then no longer described by rows.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ParamId, &mut ArrayD<f32>)> {
        self.rows.iter_mut().for_each(|r| *r = None);
        self.grads
            .iter_mut()
            .enumerate()
            .filter_map(|(i, g)| g.as_mut().map(|g| (ParamId(i), g)))
    }
}
