//! Gradients of the parameters, keyed like the `ParamStore` they belong to.

use ndarray::{ArrayD, ArrayViewD};

use crate::graph::{ParamId, ParamStore};

/// One optional gradient per parameter of a `ParamStore` (None: not reached this step, or not
/// trainable). A shared layer's gradients from each call are summed.
#[derive(Debug, Clone, Default)]
pub struct ParamGrads {
    grads: Vec<Option<ArrayD<f32>>>,
}

impl ParamGrads {
    pub fn new(params: &ParamStore) -> Self {
        ParamGrads {
            grads: vec![None; params.len()],
        }
    }

    /// Adds `g` to the gradient of `id`.
    pub fn add(&mut self, id: ParamId, g: ArrayD<f32>) {
        match &mut self.grads[id.0] {
            Some(acc) => *acc += &g,
            slot @ None => *slot = Some(g.as_standard_layout().into_owned()),
        }
    }

    /// Adds a view (copied only when it is the first gradient of `id`).
    pub fn add_view(&mut self, id: ParamId, g: ArrayViewD<f32>) {
        match &mut self.grads[id.0] {
            Some(acc) => *acc += &g,
            slot @ None => *slot = Some(g.as_standard_layout().into_owned()),
        }
    }

    pub fn get(&self, id: ParamId) -> Option<&ArrayD<f32>> {
        self.grads[id.0].as_ref()
    }

    pub fn get_mut(&mut self, id: ParamId) -> Option<&mut ArrayD<f32>> {
        self.grads[id.0].as_mut()
    }

    pub fn take(&mut self, id: ParamId) -> Option<ArrayD<f32>> {
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

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ParamId, &mut ArrayD<f32>)> {
        self.grads
            .iter_mut()
            .enumerate()
            .filter_map(|(i, g)| g.as_mut().map(|g| (ParamId(i), g)))
    }
}
