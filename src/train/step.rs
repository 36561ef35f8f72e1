//! One training step over the graph: the forward in training mode keeping every value, the
//! loss and the regularizers, and the backward sweep in reverse node order. Planned once per
//! model (`TrainGraph::new`): fused activations become their own nodes (so a softmax output's
//! logits are a value of their own, and each backward rule handles one thing), which values
//! need gradients is worked out, and every node that needs a backward is checked to have one.

use ndarray::{Array2, ArrayD};

use super::loss::{Loss, Prediction};
use super::{ParamGrads, Rng};
use crate::cpu::grad::{self, NodeIo, Saved};
use crate::cpu::Tensor;
use crate::error::{Error, Result};
use crate::graph::*;
use crate::input::PreparedInput;

/// A model's graph prepared for training.
#[derive(Debug, Clone)]
pub struct TrainGraph {
    pub graph: Graph,
    /// Per value: is it a float that depends on a trainable parameter (so its gradient is
    /// needed)?
    needs_grad: Vec<bool>,
    /// Per node: does its backward run (it reaches the loss and something it reads or owns
    /// needs a gradient)?
    runs_backward: Vec<bool>,
}

/// Everything a step's forward kept.
pub(crate) struct Tape {
    values: Vec<Option<Tensor>>,
    saved: Vec<Saved>,
    /// Non-trainable state the forward updated (moving statistics), applied after the step.
    pub state: Vec<(ParamId, ArrayD<f32>)>,
    pub batch: usize,
}

impl Tape {
    pub fn float(&self, v: ValueId) -> Result<&ArrayD<f32>> {
        match &self.values[v] {
            Some(Tensor::F32(x)) => Ok(x),
            Some(other) => Err(Error::Internal(format!(
                "value #{v} holds {}, not floats",
                other.kind()
            ))),
            None => Err(Error::Internal(format!("value #{v} was not computed"))),
        }
    }
}

/// New values of non-trainable parameters (moving statistics) a training forward computed.
pub type StateUpdates = Vec<(ParamId, ArrayD<f32>)>;

/// Gradients of the loss w.r.t. graph values, where the backward sweep starts.
type Seeds = Vec<(ValueId, ArrayD<f32>)>;

/// A step's result, its state updates and the gradients of the graph inputs.
pub type InputGradients = (StepResult, StateUpdates, Vec<Option<ArrayD<f32>>>);

/// What one step computed.
#[derive(Debug)]
pub struct StepResult {
    /// The total loss: every output's loss (weighted) plus the regularizers.
    pub loss: f64,
    /// Each output's own loss, before its loss weight and without the regularizers (what
    /// Keras logs as `{output}_loss` for a model with several outputs).
    pub output_losses: Vec<f64>,
    pub grads: ParamGrads,
    /// The training-mode outputs (for metrics).
    pub outputs: Vec<ArrayD<f32>>,
}

/// What an inference pass computed (`TrainGraph::loss_only`).
#[derive(Debug)]
pub struct Evaluation {
    /// Every output's loss (weighted) plus the regularizers.
    pub loss: f64,
    /// Each output's own loss, before its loss weight.
    pub output_losses: Vec<f64>,
    /// The inference outputs (for metrics).
    pub outputs: Vec<ArrayD<f32>>,
}

impl TrainGraph {
    /// Prepares `graph` for training; fails, naming the layer, when a node on the way from a
    /// trainable weight to the loss has no backward.
    pub fn new(graph: &Graph) -> Result<TrainGraph> {
        Self::build(graph, false)
    }

    /// Like `new`, and the gradients of the float graph inputs are computed too.
    pub fn with_input_gradients(graph: &Graph) -> Result<TrainGraph> {
        Self::build(graph, true)
    }

    fn build(graph: &Graph, input_grads: bool) -> Result<TrainGraph> {
        let graph = split_activations(graph)?;
        graph.verify()?;
        let mut needs_grad = vec![false; graph.values.len()];
        if input_grads {
            for p in &graph.inputs {
                needs_grad[p.value] = graph.value(p.value).dtype == DType::F32;
            }
        }
        for node in &graph.nodes {
            let owns = node
                .op
                .params()
                .iter()
                .any(|&p| graph.params.param(p).trainable);
            let reads = node.inputs.iter().any(|&v| needs_grad[v]);
            for &v in &node.outputs {
                needs_grad[v] = (owns || reads) && graph.value(v).dtype == DType::F32;
            }
        }
        // Values whose gradient reaches the loss: the outputs and the activity-regularized
        // values, and everything upstream of them.
        let mut reaches = vec![false; graph.values.len()];
        for p in &graph.outputs {
            reaches[p.value] = true;
        }
        for r in &graph.regularizers {
            if let Penalized::Activity(v) = r.target {
                reaches[v] = true;
            }
        }
        let mut runs_backward = vec![false; graph.nodes.len()];
        for (i, node) in graph.nodes.iter().enumerate().rev() {
            if !node.outputs.iter().any(|&v| reaches[v] && needs_grad[v]) {
                continue;
            }
            runs_backward[i] = true;
            for &v in &node.inputs {
                reaches[v] = true;
            }
        }
        for (i, node) in graph.nodes.iter().enumerate() {
            if runs_backward[i] {
                if let Err(why) = grad::support(&node.op) {
                    return Err(Error::Train(format!(
                        "layer '{}' ({}): {why}",
                        node.name, node.class
                    )));
                }
            }
        }
        Ok(TrainGraph {
            graph,
            needs_grad,
            runs_backward,
        })
    }

    /// Does value `v` need a gradient (a float that depends on a trainable parameter)?
    pub(crate) fn needs_grad(&self, v: ValueId) -> bool {
        self.needs_grad[v]
    }

    /// Does node `i`'s backward run?
    pub(crate) fn runs_backward(&self, i: usize) -> bool {
        self.runs_backward[i]
    }

    /// Does anything trainable reach the loss?
    pub fn has_trainable_path(&self) -> bool {
        self.runs_backward.iter().any(|&b| b)
    }

    /// The forward in training mode, keeping every value.
    pub(crate) fn forward(&self, inputs: &[PreparedInput], rng: &mut Rng) -> Result<Tape> {
        self.forward_in(inputs, rng, true)
    }

    /// The forward, in training mode (dropout draws, batch statistics) or at inference.
    fn forward_in(&self, inputs: &[PreparedInput], rng: &mut Rng, training: bool) -> Result<Tape> {
        let graph = &self.graph;
        if inputs.len() != graph.inputs.len() {
            return Err(Error::Input(format!(
                "the model takes {} input(s), got {}",
                graph.inputs.len(),
                inputs.len()
            )));
        }
        let batch = crate::input::common_batch(inputs)?;
        let mut values: Vec<Option<Tensor>> = vec![None; graph.values.len()];
        for (port, input) in graph.inputs.iter().zip(inputs) {
            values[port.value] = Some(match input {
                PreparedInput::Float(x) => Tensor::F32(x.clone()),
                PreparedInput::Ids(ids) => Tensor::Ids(ids.clone()),
            });
        }
        let mut saved = Vec::with_capacity(graph.nodes.len());
        let mut state = Vec::new();
        for node in &graph.nodes {
            let borrowed: Vec<&Tensor> = node
                .inputs
                .iter()
                .map(|&v| {
                    values[v].as_ref().ok_or_else(|| {
                        Error::Internal(format!(
                            "node '{}' reads value #{v} before it is computed",
                            node.name
                        ))
                    })
                })
                .collect::<Result<_>>()?;
            let mask = mask_of(node, &values)?;
            // Ops that only read their input run on the tape's own copy; the others take
            // theirs over (they may work in place).
            let fw = match crate::cpu::run_read_only(graph, node, &borrowed, mask.as_ref()) {
                Some(outputs) => grad::Forward {
                    outputs: outputs?,
                    saved: None,
                    state: Vec::new(),
                },
                None => {
                    let args: Vec<Tensor> = borrowed.into_iter().cloned().collect();
                    if training {
                        grad::forward_owned(graph, node, args, mask.as_ref(), rng)?
                    } else {
                        grad::Forward {
                            outputs: crate::cpu::run_node(graph, node, args, mask.as_ref())?,
                            saved: None,
                            state: Vec::new(),
                        }
                    }
                }
            };
            if fw.outputs.len() != node.outputs.len() {
                return Err(Error::Internal(format!(
                    "node '{}' made {} outputs, the graph expects {}",
                    node.name,
                    fw.outputs.len(),
                    node.outputs.len()
                )));
            }
            for (&v, t) in node.outputs.iter().zip(fw.outputs) {
                values[v] = Some(t);
            }
            saved.push(fw.saved);
            state.extend(fw.state);
        }
        Ok(Tape {
            values,
            saved,
            state,
            batch,
        })
    }

    /// The prediction a loss reads for output `index`: the output itself, or the logits
    /// feeding its softmax / sigmoid where Keras's TF backend takes those.
    pub(crate) fn prediction_for(&self, index: usize, loss: &Loss) -> (ValueId, Prediction) {
        let out = self.graph.outputs[index].value;
        // Keras's layers that pass their input through untouched (Dropout at rate 0, an
        // identity) hand on the very tensor, logits tag included.
        let mut v = out;
        while let Some(node) = self.graph.nodes.iter().find(|n| n.outputs.contains(&v)) {
            match &node.op {
                Op::Activation(a) if loss.uses_logits_of(*a) => {
                    return (node.inputs[0], Prediction::Logits)
                }
                Op::Identity => v = node.inputs[0],
                Op::Dropout(d) if d.is_noop_in_training() => v = node.inputs[0],
                _ => break,
            }
        }
        (out, Prediction::Output)
    }

    /// The mask of output `index` in the tape, flattened to one flag per loss row.
    fn output_mask(&self, tape: &Tape, index: usize) -> Result<Option<Vec<bool>>> {
        let Some(Some(m)) = self.graph.output_masks.get(index) else {
            return Ok(None);
        };
        match &tape.values[*m] {
            Some(Tensor::Mask(m)) => Ok(Some(m.iter().copied().collect())),
            _ => Err(Error::Internal(format!(
                "output '{}': its mask was not computed",
                self.graph.outputs[index].name
            ))),
        }
    }

    /// Output `index`'s loss and its gradient w.r.t. the value it is computed from.
    fn output_loss(
        &self,
        tape: &Tape,
        index: usize,
        loss: &Loss,
        target: &ArrayD<f32>,
    ) -> Result<(f64, ValueId, ArrayD<f32>)> {
        let name = &self.graph.outputs[index].name;
        let out = tape.float(self.graph.outputs[index].value)?;
        loss.check_targets(out.shape(), target)
            .map_err(|e| Error::Train(format!("output '{name}': {e}")))?;
        let (value, what) = self.prediction_for(index, loss);
        let pred = tape.float(value)?;
        let mask = self.output_mask(tape, index)?;
        let rows = pred.len() / pred.shape().last().copied().unwrap_or(1).max(1);
        if let Some(m) = &mask {
            if m.len() != rows {
                return Err(Error::Train(format!(
                    "output '{name}': its mask has {} entries for {rows} loss rows",
                    m.len()
                )));
            }
        }
        let (l, g) = loss.value_and_grad(pred, what, target, mask.as_deref());
        Ok((l, value, g))
    }

    /// The regularizers' value and their gradients (weights into `grads`; activity penalties
    /// returned as seeds for the backward sweep).
    fn regularization(&self, tape: &Tape, grads: &mut ParamGrads) -> Result<(f64, Seeds)> {
        let mut total = 0.0f64;
        let mut seeds = Vec::new();
        for r in &self.graph.regularizers {
            let penalty = |x: &ArrayD<f32>| -> (f64, ArrayD<f32>) {
                let mut l1 = 0.0f32;
                let mut l2 = 0.0f32;
                for &v in x.iter() {
                    l1 += v.abs();
                    l2 += v * v;
                }
                let value = r.l1 * l1 + r.l2 * l2;
                let g = x.mapv(|v| r.l1 * sign(v) + 2.0 * r.l2 * v);
                (value as f64, g)
            };
            match r.target {
                Penalized::Param(id) => {
                    // Keras regularizes trainable weights only.
                    if !self.graph.params.param(id).trainable {
                        continue;
                    }
                    let w = self.graph.params.get(id).to_owned();
                    let (v, g) = penalty(&w);
                    total += v;
                    grads.add(id, g);
                }
                Penalized::Activity(value) => {
                    // Keras 3 divides an activity penalty by the batch size.
                    let x = tape.float(value)?;
                    let (v, mut g) = penalty(x);
                    let n = tape.batch.max(1) as f32;
                    g.mapv_inplace(|e| e / n);
                    total += v / n as f64;
                    seeds.push((value, g));
                }
            }
        }
        Ok((total, seeds))
    }

    /// The loss at inference (dropout off, moving statistics), regularizers included, as
    /// Keras's `evaluate` computes `val_loss`, with each output's own (unweighted) loss.
    pub fn loss_only(
        &self,
        inputs: &[PreparedInput],
        targets: &[ArrayD<f32>],
        losses: &[Loss],
        loss_weights: &[f32],
    ) -> Result<Evaluation> {
        let tape = self.forward_in(inputs, &mut Rng::new(0), false)?;
        let mut total = 0.0;
        let mut output_losses = Vec::with_capacity(losses.len());
        for (i, (loss, target)) in losses.iter().zip(targets).enumerate() {
            let (l, _, _) = self.output_loss(&tape, i, loss, target)?;
            output_losses.push(l);
            total += l * loss_weights.get(i).copied().unwrap_or(1.0) as f64;
        }
        let mut unused = ParamGrads::new(&self.graph.params);
        let outputs = self
            .graph
            .outputs
            .iter()
            .map(|p| tape.float(p.value).cloned())
            .collect::<Result<_>>()?;
        Ok(Evaluation {
            loss: total + self.regularization(&tape, &mut unused)?.0,
            output_losses,
            outputs,
        })
    }

    /// One step's loss and gradients (no update). `losses[i]` and `targets[i]` belong to
    /// output i; `loss_weights` scale each output's loss.
    pub fn compute(
        &self,
        inputs: &[PreparedInput],
        targets: &[ArrayD<f32>],
        losses: &[Loss],
        loss_weights: &[f32],
        rng: &mut Rng,
    ) -> Result<(StepResult, StateUpdates)> {
        self.compute_with_inputs(inputs, targets, losses, loss_weights, rng)
            .map(|(r, state, _)| (r, state))
    }

    /// `compute`, also returning the gradients of the graph inputs (see
    /// `with_input_gradients`).
    pub fn compute_with_inputs(
        &self,
        inputs: &[PreparedInput],
        targets: &[ArrayD<f32>],
        losses: &[Loss],
        loss_weights: &[f32],
        rng: &mut Rng,
    ) -> Result<InputGradients> {
        let tape = self.forward(inputs, rng)?;
        let mut grads = ParamGrads::new(&self.graph.params);
        let mut seeds = Vec::new();
        let mut total = 0.0f64;
        let mut output_losses = Vec::with_capacity(losses.len());
        for (i, (loss, target)) in losses.iter().zip(targets).enumerate() {
            let (l, value, mut g) = self.output_loss(&tape, i, loss, target)?;
            output_losses.push(l);
            let w = loss_weights.get(i).copied().unwrap_or(1.0);
            if w != 1.0 {
                g.mapv_inplace(|v| v * w);
            }
            total += l * w as f64;
            seeds.push((value, g));
        }
        let (reg, reg_seeds) = self.regularization(&tape, &mut grads)?;
        total += reg;
        seeds.extend(reg_seeds);
        let input_grads = self.backward(&tape, seeds, &mut grads)?;
        let outputs = self
            .graph
            .outputs
            .iter()
            .map(|p| tape.float(p.value).cloned())
            .collect::<Result<_>>()?;
        Ok((
            StepResult {
                loss: total,
                output_losses,
                grads,
                outputs,
            },
            tape.state,
            input_grads,
        ))
    }

    /// The training forward, then the backward from `seeds` (one gradient per graph output,
    /// shaped like it) instead of a loss: the parameter gradients and the gradients of the
    /// graph inputs (see `with_input_gradients`). What GPU backward tests compare against.
    pub fn seeded_gradients(
        &self,
        inputs: &[PreparedInput],
        seeds: &[ArrayD<f32>],
        rng: &mut Rng,
    ) -> Result<(ParamGrads, Vec<Option<ArrayD<f32>>>)> {
        if seeds.len() != self.graph.outputs.len() {
            return Err(Error::Input(format!(
                "{} output gradients for {} outputs",
                seeds.len(),
                self.graph.outputs.len()
            )));
        }
        let tape = self.forward(inputs, rng)?;
        let seeds = self
            .graph
            .outputs
            .iter()
            .zip(seeds)
            .map(|(p, g)| (p.value, g.clone()))
            .collect();
        let mut grads = ParamGrads::new(&self.graph.params);
        let input_grads = self.backward(&tape, seeds, &mut grads)?;
        Ok((grads, input_grads))
    }

    /// The backward sweep from `seeds` (gradients of the loss w.r.t. some values).
    /// Returns the gradients that reached the graph inputs (None where none did).
    pub(crate) fn backward(
        &self,
        tape: &Tape,
        seeds: Seeds,
        grads: &mut ParamGrads,
    ) -> Result<Vec<Option<ArrayD<f32>>>> {
        let graph = &self.graph;
        let mut d: Vec<Option<ArrayD<f32>>> = vec![None; graph.values.len()];
        for (v, g) in seeds {
            accumulate(&mut d[v], g);
        }
        for (i, node) in graph.nodes.iter().enumerate().rev() {
            if !self.runs_backward[i] {
                continue;
            }
            let dys: Vec<Option<ArrayD<f32>>> = node.outputs.iter().map(|&v| d[v].take()).collect();
            if dys.iter().all(Option::is_none) {
                continue;
            }
            let computed = |v: &ValueId| {
                tape.values[*v]
                    .as_ref()
                    .ok_or_else(|| Error::Internal(format!("value #{v} was not computed")))
            };
            let inputs: Vec<&Tensor> = node.inputs.iter().map(computed).collect::<Result<_>>()?;
            let outputs: Vec<&Tensor> = node.outputs.iter().map(computed).collect::<Result<_>>()?;
            let mask = mask_of(node, &tape.values)?;
            let needs: Vec<bool> = node.inputs.iter().map(|&v| self.needs_grad[v]).collect();
            let io = NodeIo {
                graph,
                node,
                inputs: &inputs,
                outputs: &outputs,
                mask: mask.as_ref(),
                saved: &tape.saved[i],
                needs: &needs,
            };
            let dxs = grad::backward_owned(&io, dys, grads)?;
            for (&v, dx) in node.inputs.iter().zip(dxs) {
                if let (Some(dx), true) = (dx, self.needs_grad[v]) {
                    accumulate(&mut d[v], dx);
                }
            }
        }
        Ok(graph.inputs.iter().map(|p| d[p.value].take()).collect())
    }
}

fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Gradients of a value read by several nodes are summed.
fn accumulate(slot: &mut Option<ArrayD<f32>>, g: ArrayD<f32>) {
    match slot {
        Some(acc) => *acc += &g,
        None => *slot = Some(g),
    }
}

fn mask_of(node: &Node, values: &[Option<Tensor>]) -> Result<Option<Array2<bool>>> {
    match node.mask.and_then(|m| values[m].as_ref()) {
        Some(Tensor::Mask(m)) => Ok(Some(m.clone())),
        Some(other) => Err(Error::Internal(format!(
            "node '{}': its mask holds {}",
            node.name,
            other.kind()
        ))),
        None => Ok(None),
    }
}

/// The graph with each fused activation of Dense and the convolutions as an Activation node of
/// its own, under the same layer name. Parameters keep their ids.
fn split_activations(g: &Graph) -> Result<Graph> {
    let mut out = Graph {
        name: g.name.clone(),
        params: g.params.clone(),
        text_vectorization: g.text_vectorization.clone(),
        compile_config: g.compile_config.clone(),
        ..Default::default()
    };
    let mut map: Vec<Option<ValueId>> = vec![None; g.values.len()];
    for p in &g.inputs {
        let info = g.value(p.value);
        map[p.value] = Some(out.add_input(p.name.clone(), info.shape.clone(), info.dtype));
    }
    let lookup = |map: &[Option<ValueId>], v: ValueId| {
        map[v].ok_or_else(|| Error::Internal(format!("value #{v} is used before it is made")))
    };
    for node in &g.nodes {
        let inputs: Vec<ValueId> = node
            .inputs
            .iter()
            .map(|&v| lookup(&map, v))
            .collect::<Result<_>>()?;
        let mask = node.mask.map(|m| lookup(&map, m)).transpose()?;
        let mut op = node.op.clone();
        let act = match &mut op {
            Op::Dense(d) => std::mem::replace(&mut d.activation, Activation::Linear),
            Op::Conv(c) => std::mem::replace(&mut c.activation, Activation::Linear),
            Op::DepthwiseConv(c) => std::mem::replace(&mut c.activation, Activation::Linear),
            Op::ConvTranspose(c) => std::mem::replace(&mut c.activation, Activation::Linear),
            _ => Activation::Linear,
        };
        let add = |out: &mut Graph, op: Op, inputs: &[ValueId], mask| {
            out.add_node(&node.name, &node.class, op, inputs, mask)
                .map_err(|e| Error::Internal(format!("layer '{}': {e}", node.name)))
        };
        let mut outs = add(&mut out, op, &inputs, mask)?;
        if act != Activation::Linear {
            outs = add(&mut out, Op::Activation(act), &outs, None)?;
        }
        for (&old, new) in node.outputs.iter().zip(outs) {
            map[old] = Some(new);
        }
    }
    for p in &g.outputs {
        out.add_output(p.name.clone(), lookup(&map, p.value)?);
    }
    for m in &g.output_masks {
        out.output_masks
            .push(m.map(|m| lookup(&map, m)).transpose()?);
    }
    for r in &g.regularizers {
        let target = match r.target {
            Penalized::Param(id) => Penalized::Param(id),
            Penalized::Activity(v) => Penalized::Activity(lookup(&map, v)?),
        };
        out.regularizers.push(Regularizer { target, ..*r });
    }
    Ok(out)
}
