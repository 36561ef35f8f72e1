//! The parameter store: every weight array of a model, keyed by `ParamId`. Ops hold ids, never
//! arrays, so that backends, training and saving all address one weight the same way.

use ndarray::{ArrayD, ArrayView1, ArrayView2, ArrayView4, ArrayViewD, Ix1, Ix2, Ix4};

use crate::error::{Error, Result};

/// Index of one weight array in its graph's `ParamStore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);

/// One weight array: Keras's path for it (`dense_1/kernel`), its values, whether an optimizer
/// updates it (BatchNormalization's moving statistics are not trainable), and where a Keras 3
/// weights file keeps it (none for a weight the config itself holds, such as Normalization's
/// `mean` given in the config).
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub value: ArrayD<f32>,
    pub trainable: bool,
    pub keras: Option<KerasVar>,
}

/// A weight's place in Keras 3's `model.weights.h5`, whatever file it was read from (`.keras`,
/// `.weights.h5`, legacy `.h5`, `.npz`), so that a model saves in Keras 3's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KerasVar {
    /// The dataset: `layers/<group>/[<sub-object>/]vars/<index>`, e.g.
    /// `layers/bidirectional/forward_layer/cell/vars/0`.
    pub path: String,
    /// The variable's shape in Keras, which a loader may have reshaped for its op
    /// (Normalization's statistics are broadcast to the input's rank).
    pub shape: Vec<usize>,
    pub dtype: KerasDType,
}

/// The dtype Keras gives a variable (and writes its dataset in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KerasDType {
    Float32,
    /// Counters such as Normalization's `count`.
    Int64,
}

#[derive(Debug, Clone, Default)]
pub struct ParamStore {
    params: Vec<Param>,
    /// Per parameter, its values' [`generation`](ParamStore::generation).
    generations: Vec<u64>,
}

/// Source of generations: unique across every store of the process.
static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl ParamStore {
    pub fn add(&mut self, name: impl Into<String>, value: ArrayD<f32>, trainable: bool) -> ParamId {
        self.generations.push(next_generation());
        self.params.push(Param {
            name: name.into(),
            value: value.as_standard_layout().into_owned(),
            trainable,
            keras: None,
        });
        ParamId(self.params.len() - 1)
    }

    /// Records where Keras 3 keeps parameter `id` (see [`KerasVar`]).
    pub fn set_keras(&mut self, id: ParamId, var: KerasVar) {
        self.params[id.0].keras = Some(var);
    }

    /// Sets the Keras dtype of a parameter whose place is recorded (a no-op otherwise).
    pub fn set_keras_dtype(&mut self, id: ParamId, dtype: KerasDType) {
        if let Some(var) = &mut self.params[id.0].keras {
            var.dtype = dtype;
        }
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Param)> {
        self.params.iter().enumerate().map(|(i, p)| (ParamId(i), p))
    }

    pub fn param(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }

    pub fn get(&self, id: ParamId) -> ArrayViewD<'_, f32> {
        self.params[id.0].value.view()
    }

    /// Mutable values; the parameter gets a new [`generation`](ParamStore::generation).
    pub fn get_mut(&mut self, id: ParamId) -> &mut ArrayD<f32> {
        self.generations[id.0] = next_generation();
        &mut self.params[id.0].value
    }

    /// A number that changes whenever the values of `id` may have changed (every `get_mut`) and
    /// that no other parameter of any store in this process has had: with the values' address
    /// it identifies them, so caches of derived data (the CPU path's Winograd kernel
    /// transforms) need not compare the values themselves. A clone keeps the generations, but
    /// its values live at other addresses.
    pub fn generation(&self, id: ParamId) -> u64 {
        self.generations[id.0]
    }

    /// The values in row-major order (every stored array is in standard layout).
    pub fn slice(&self, id: ParamId) -> &[f32] {
        self.params[id.0]
            .value
            .as_slice()
            .expect("parameters are stored in standard layout")
    }

    /// Marks a weight as (not) updated by optimizers, e.g. moving statistics.
    pub fn set_trainable(&mut self, id: ParamId, trainable: bool) {
        self.params[id.0].trainable = trainable;
    }

    pub fn len_of(&self, id: ParamId) -> usize {
        self.params[id.0].value.len()
    }

    pub fn view1(&self, id: ParamId) -> ArrayView1<'_, f32> {
        self.typed::<Ix1>(id)
    }

    pub fn view2(&self, id: ParamId) -> ArrayView2<'_, f32> {
        self.typed::<Ix2>(id)
    }

    pub fn view4(&self, id: ParamId) -> ArrayView4<'_, f32> {
        self.typed::<Ix4>(id)
    }

    fn typed<D: ndarray::Dimension>(&self, id: ParamId) -> ndarray::ArrayView<'_, f32, D> {
        let p = &self.params[id.0];
        p.value
            .view()
            .into_dimensionality::<D>()
            .unwrap_or_else(|_| panic!("parameter '{}' has shape {:?}", p.name, p.value.shape()))
    }

    /// Checks that `id` has `shape`: an internal invariant the shape rules rely on.
    pub fn expect_shape(&self, id: ParamId, shape: &[usize]) -> Result<()> {
        let p = &self.params[id.0];
        if p.value.shape() != shape {
            return Err(Error::Internal(format!(
                "parameter '{}' has shape {:?}, its op expects {shape:?}",
                p.name,
                p.value.shape()
            )));
        }
        Ok(())
    }
}
