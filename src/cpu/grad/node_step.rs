//! One node's training step from outside the crate: its training forward run once and kept, its
//! backward run as often as asked. What `benches/grad.rs` times; the trainer itself drives
//! `forward` and `backward` over a whole graph.

use ndarray::ArrayD;

use super::{backward, forward, NodeIo, Saved};
use crate::cpu::Tensor;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::train::{ParamGrads, Rng};

pub struct NodeStep {
    graph: Graph,
    index: usize,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    saved: Saved,
    dys: Vec<Option<ArrayD<f32>>>,
    needs: Vec<bool>,
}

impl NodeStep {
    /// Runs node `index` of `graph` forward in training mode on `inputs` (one float batch per
    /// data input); the output gradients are uniform draws from a fixed seed. `needs[i]`: whether
    /// the backward computes input i's gradient.
    pub fn new(
        graph: Graph,
        index: usize,
        inputs: Vec<ArrayD<f32>>,
        needs: Vec<bool>,
    ) -> Result<Self> {
        let node = graph
            .nodes
            .get(index)
            .ok_or_else(|| Error::Input(format!("the graph has no node {index}")))?;
        if needs.len() != inputs.len() || inputs.len() != node.inputs.len() {
            return Err(Error::Input(format!(
                "node '{}' reads {} inputs, got {} inputs and {} needs",
                node.name,
                node.inputs.len(),
                inputs.len(),
                needs.len()
            )));
        }
        let inputs: Vec<Tensor> = inputs.into_iter().map(Tensor::F32).collect();
        let mut rng = Rng::new(0);
        let fw = forward(&graph, node, &inputs, None, &mut rng)?;
        let dys = fw
            .outputs
            .iter()
            .map(|y| match y {
                Tensor::F32(y) => Some(y.mapv(|_| rng.uniform() * 2.0 - 1.0)),
                Tensor::Ids(_) | Tensor::Mask(_) => None,
            })
            .collect();
        Ok(NodeStep {
            index,
            inputs,
            outputs: fw.outputs,
            saved: fw.saved,
            dys,
            needs,
            graph,
        })
    }

    /// The backward: the parameter gradients and one gradient per data input (None where not
    /// needed).
    pub fn backward(&self) -> Result<(ParamGrads, Vec<Option<ArrayD<f32>>>)> {
        let inputs: Vec<&Tensor> = self.inputs.iter().collect();
        let outputs: Vec<&Tensor> = self.outputs.iter().collect();
        let io = NodeIo {
            graph: &self.graph,
            node: &self.graph.nodes[self.index],
            inputs: &inputs,
            outputs: &outputs,
            mask: None,
            saved: &self.saved,
            needs: &self.needs,
        };
        let mut grads = ParamGrads::new(&self.graph.params);
        let dxs = backward(&io, &self.dys, &mut grads)?;
        Ok((grads, dxs))
    }
}
