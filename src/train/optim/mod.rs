//! Keras 3's optimizers on the CPU: one `apply` is one Keras `apply_gradients` with the
//! TensorFlow backend — clip the gradients, decay the weights, run each variable's update rule,
//! count the iteration — with the optimizer's state laid out as Keras's `optimizer.variables`,
//! so that state saved by one resumes in the other.

mod clip;
mod spec;
mod update;

use ndarray::{ArrayD, IxDyn};

pub use spec::{AdamParams, Clip, OptimizerSpec, Rule, KNOWN_OPTIMIZERS};

use crate::error::{Error, Result};
use crate::graph::{ParamId, ParamStore};
use crate::train::schedule::LearningRate;
use crate::train::ParamGrads;
use update::Grad;

/// An optimizer and its state for the trainable parameters of one `ParamStore`.
#[derive(Debug, Clone)]
pub struct Optimizer {
    spec: OptimizerSpec,
    iterations: i64,
    /// The trainable parameters it was built on, in store order (Keras's trainable_variables).
    vars: Vec<ParamId>,
    /// Each parameter's index in `vars` (None: not trainable).
    index: Vec<Option<usize>>,
    /// Parameter names (Keras paths), for slot names.
    var_names: Vec<String>,
    /// `slots[var][slot]`, slots in the order of `slot_names`.
    slots: Vec<Vec<ArrayD<f32>>>,
}

/// The slots of `rule`, grouped as Keras creates them: each group is one
/// `add_optimizer_variables` call, which interleaves its names per variable.
fn slot_groups(rule: &Rule) -> Vec<Vec<&'static str>> {
    match rule {
        Rule::Sgd { momentum, .. } if *momentum != 0.0 => vec![vec!["momentum"]],
        Rule::Sgd { .. } => vec![],
        Rule::Adam(p) | Rule::AdamW(p) => {
            let mut g = vec![vec!["momentum", "velocity"]];
            if p.amsgrad {
                g.push(vec!["velocity_hat"]);
            }
            g
        }
        Rule::RmsProp {
            momentum, centered, ..
        } => {
            let mut g = vec![vec!["velocity"]];
            if *momentum > 0.0 {
                g.push(vec!["momentum"]);
            }
            if *centered {
                g.push(vec!["average_gradient"]);
            }
            g
        }
        Rule::Adagrad { .. } => vec![vec!["accumulator"]],
    }
}

/// The initial value of a slot (Adagrad's accumulator starts at initial_accumulator_value).
fn slot_init(rule: &Rule) -> f32 {
    match rule {
        Rule::Adagrad {
            initial_accumulator_value,
            ..
        } => *initial_accumulator_value as f32,
        _ => 0.0,
    }
}

impl Optimizer {
    /// Builds the optimizer's state for every trainable parameter of `params`, as Keras's
    /// `optimizer.build(model.trainable_variables)`.
    pub fn new(spec: OptimizerSpec, params: &ParamStore) -> Self {
        let mut vars = Vec::new();
        let mut index = vec![None; params.len()];
        let mut var_names = Vec::new();
        for (id, p) in params.iter() {
            if p.trainable {
                index[id.0] = Some(vars.len());
                vars.push(id);
                var_names.push(p.name.clone());
            }
        }
        let per_var = slot_groups(&spec.rule).concat().len();
        let init = slot_init(&spec.rule);
        let slots = vars
            .iter()
            .map(|&id| {
                let shape = params.param(id).value.shape();
                (0..per_var)
                    .map(|_| ArrayD::from_elem(IxDyn(shape), init))
                    .collect()
            })
            .collect();
        Optimizer {
            spec,
            iterations: 0,
            vars,
            index,
            var_names,
            slots,
        }
    }

    pub fn spec(&self) -> &OptimizerSpec {
        &self.spec
    }

    /// Completed `apply` calls (Keras's `optimizer.iterations`).
    pub fn iterations(&self) -> i64 {
        self.iterations
    }

    /// The learning rate the next `apply` uses: the constant, or the schedule at
    /// `iterations()`.
    pub fn learning_rate(&self) -> f32 {
        self.spec.learning_rate.at(self.iterations)
    }

    /// Sets a constant learning rate (Keras's `optimizer.learning_rate = lr`, as callbacks
    /// such as ReduceLROnPlateau do); an optimizer driven by a schedule refuses, as Keras does.
    pub fn set_learning_rate(&mut self, lr: f32) -> Result<()> {
        match self.spec.learning_rate {
            LearningRate::Constant(_) => {
                self.spec.learning_rate = LearningRate::Constant(lr);
                Ok(())
            }
            LearningRate::Schedule(_) => Err(Error::Train(format!(
                "optimizer '{}' takes its learning rate from a schedule, which cannot be set",
                self.spec.name
            ))),
        }
    }

    /// One Keras `apply_gradients`: takes every gradient of a trainable parameter out of
    /// `grads` (leaving the others), clips them together, decays and updates the parameters
    /// that have one, and counts the iteration. Parameters without a gradient keep their
    /// values and slots.
    pub fn apply(&mut self, params: &mut ParamStore, grads: &mut ParamGrads) -> Result<()> {
        if grads.len() != self.index.len() {
            return Err(Error::Internal(format!(
                "gradients for {} parameters given to an optimizer built on {}",
                grads.len(),
                self.index.len()
            )));
        }
        let mut which = Vec::new();
        let mut list = Vec::new();
        for (v, &id) in self.vars.iter().enumerate() {
            let Some((dense, rows)) = grads.take_with_rows(id) else {
                continue;
            };
            let shape = params.param(id).value.shape();
            if dense.shape() != shape {
                return Err(Error::Internal(format!(
                    "gradient of '{}' has shape {:?}, the parameter {shape:?}",
                    self.var_names[v],
                    dense.shape()
                )));
            }
            which.push(v);
            list.push(match rows {
                Some(r) => Grad::Rows(r),
                None => Grad::Dense(dense.as_standard_layout().into_owned()),
            });
        }
        if list.is_empty() {
            return Err(Error::Train(
                "no gradients provided for any variable".into(),
            ));
        }
        let lr = self.learning_rate();
        clip::clip(self.spec.clip, &mut list);
        if let Some(wd) = self.spec.weight_decay {
            let wd = wd as f32;
            for &v in &which {
                let var = params.get_mut(self.vars[v]);
                var.mapv_inplace(|x| x - x * wd * lr);
            }
        }
        for (&v, g) in which.iter().zip(&list) {
            let var = params.get_mut(self.vars[v]);
            let var = var.as_slice_mut().ok_or_else(|| {
                Error::Internal(format!(
                    "parameter '{}' is not in standard layout",
                    self.var_names[v]
                ))
            })?;
            update::update(
                &self.spec.rule,
                lr,
                self.iterations,
                var,
                g,
                &mut self.slots[v],
            );
        }
        self.iterations += 1;
        Ok(())
    }

    /// The state as Keras's `optimizer.variables` lists it after `build`: `iteration`, then
    /// `learning_rate` unless a schedule drives it, then each slot group, per variable, named
    /// `<variable path with / as _>_<slot>` (`dense_kernel_momentum`). Scalars are 0-d.
    pub fn keras_variables(&self) -> Vec<(String, ArrayD<f32>)> {
        let mut out = vec![(
            "iteration".to_string(),
            ArrayD::from_elem(IxDyn(&[]), self.iterations as f32),
        )];
        if let LearningRate::Constant(lr) = self.spec.learning_rate {
            out.push((
                "learning_rate".to_string(),
                ArrayD::from_elem(IxDyn(&[]), lr),
            ));
        }
        let mut offset = 0;
        for group in slot_groups(&self.spec.rule) {
            for (v, name) in self.var_names.iter().enumerate() {
                for (j, slot) in group.iter().enumerate() {
                    let label = format!("{}_{slot}", name.replace('/', "_"));
                    out.push((label, self.slots[v][offset + j].clone()));
                }
            }
            offset += group.len();
        }
        out
    }

    /// Restores the state from values in `keras_variables` order (a `.keras` file's
    /// optimizer/vars/0, 1, ...), checking their count and shapes.
    pub fn load_keras_variables(&mut self, values: &[ArrayD<f32>]) -> Result<()> {
        let expected = self.keras_variables();
        if values.len() != expected.len() {
            return Err(Error::Train(format!(
                "optimizer '{}' has {} variables, the saved state {}",
                self.spec.name,
                expected.len(),
                values.len()
            )));
        }
        for ((name, want), got) in expected.iter().zip(values) {
            if want.shape() != got.shape() {
                return Err(Error::Train(format!(
                    "optimizer variable '{name}' has shape {:?}, the saved one {:?}",
                    want.shape(),
                    got.shape()
                )));
            }
        }
        let scalar = |a: &ArrayD<f32>| a.iter().next().copied().unwrap_or(0.0);
        let iterations = scalar(&values[0]);
        if iterations < 0.0 || iterations.fract() != 0.0 {
            return Err(Error::Train(format!(
                "optimizer '{}': saved iteration count {iterations} is not a whole number",
                self.spec.name
            )));
        }
        self.iterations = iterations as i64;
        let mut next = 1;
        if let LearningRate::Constant(_) = self.spec.learning_rate {
            self.spec.learning_rate = LearningRate::Constant(scalar(&values[1]));
            next = 2;
        }
        let mut offset = 0;
        for group in slot_groups(&self.spec.rule) {
            for v in 0..self.vars.len() {
                for j in 0..group.len() {
                    self.slots[v][offset + j] = values[next].as_standard_layout().into_owned();
                    next += 1;
                }
            }
            offset += group.len();
        }
        Ok(())
    }

    /// Slots per variable (momentum, velocity, ...), in Keras's creation order.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn slot_names(&self) -> Vec<&'static str> {
        slot_groups(&self.spec.rule).concat()
    }

    /// Slot `k` of parameter `id`.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn slot(&self, id: ParamId, k: usize) -> Option<&ArrayD<f32>> {
        let v = self.index.get(id.0).copied().flatten()?;
        self.slots[v].get(k)
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn slot_mut(&mut self, id: ParamId, k: usize) -> Option<&mut ArrayD<f32>> {
        let v = self.index.get(id.0).copied().flatten()?;
        self.slots[v].get_mut(k)
    }

    /// Counts one `apply` made elsewhere (the GPU's update kernels).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn count_iteration(&mut self) {
        self.iterations += 1;
    }

    /// Whether `id` is one of the parameters this optimizer updates.
    pub fn updates(&self, id: ParamId) -> bool {
        self.index.get(id.0).copied().flatten().is_some()
    }
}
