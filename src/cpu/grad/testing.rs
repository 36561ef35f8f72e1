//! Helpers for the backward rules' unit tests: one-node graphs, inputs a max cannot tie on, and
//! running one rule directly.

use ndarray::{Array2, ArrayD, IxDyn};

use super::{backward, forward, NodeIo};
use crate::cpu::Tensor;
use crate::graph::*;
use crate::train::{ParamGrads, Rng};

/// A graph of one node `op` (made with the graph's parameter store) on one float input of item
/// shape `item`.
pub(crate) fn one_node(item: &[usize], op: impl FnOnce(&mut ParamStore) -> Op) -> Graph {
    let mut g = Graph::new("t");
    let x = g.add_input("x", item.to_vec(), DType::F32);
    let op = op(&mut g.params);
    let y = g.add_node("n", "Test", op, &[x], None).expect("shape rule");
    g.add_output("y", y[0]);
    g
}

/// Values on 53 levels in [-1, 1] where, per image and channel, the spatial positions within 53
/// of each other differ by at least 1/26: far more than the finite differences move them, so a
/// max over any window of under 53 positions has one clear winner.
pub(crate) fn distinct(shape: &[usize]) -> ArrayD<f32> {
    let r = shape.len();
    ArrayD::from_shape_fn(IxDyn(shape), |i| {
        let pos = (1..r - 1).fold(0, |acc, a| acc * shape[a] + i[a]);
        let (b, c) = (i[0], i[r - 1]);
        ((7 * (pos + 17 * c + 5 * b)) % 53) as f32 / 26.0 - 1.0
    })
}

/// Runs node 0's training forward and backward with output gradient `dy`: the input
/// gradients (every input needed) and the parameter gradients.
pub(crate) fn run_backward(
    graph: &Graph,
    x: &ArrayD<f32>,
    dy: &ArrayD<f32>,
    needs: bool,
    mask: Option<&Array2<bool>>,
) -> (Option<ArrayD<f32>>, ParamGrads) {
    let node = &graph.nodes[0];
    let inputs = [Tensor::F32(x.clone())];
    let fw = forward(graph, node, &inputs, mask, &mut Rng::new(1)).expect("forward");
    let mut grads = ParamGrads::new(&graph.params);
    let outs: Vec<&Tensor> = fw.outputs.iter().collect();
    let io = NodeIo {
        graph,
        node,
        inputs: &[&inputs[0]],
        outputs: &outs,
        mask,
        saved: &fw.saved,
        needs: &[needs],
    };
    let mut dxs = backward(&io, &[Some(dy.clone())], &mut grads).expect("backward");
    assert_eq!(dxs.len(), 1, "one gradient per data input");
    (dxs.pop().flatten(), grads)
}

/// |got − expected| ≤ 1e-4·(1 + |expected|) everywhere, else a panic naming the worst element.
pub(crate) fn assert_close(what: &str, got: &ArrayD<f32>, expected: &ArrayD<f32>) {
    assert_eq!(got.shape(), expected.shape(), "{what}: shape");
    for (i, (&g, &e)) in got.iter().zip(expected.iter()).enumerate() {
        assert!(
            (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
            "{what}[{i}]: got {g}, expected {e}"
        );
    }
}

/// The new values a forward gives non-trainable parameters.
pub(crate) type StateUpdates = Vec<(ParamId, ArrayD<f32>)>;

/// Runs node 0's training forward on one float input: its float outputs and the state it
/// updates (BatchNormalization's new moving statistics).
pub(crate) fn run_forward(
    graph: &Graph,
    x: &ArrayD<f32>,
    mask: Option<&Array2<bool>>,
) -> (Vec<ArrayD<f32>>, StateUpdates) {
    let node = &graph.nodes[0];
    let inputs = [Tensor::F32(x.clone())];
    let fw = forward(graph, node, &inputs, mask, &mut Rng::new(1)).expect("forward");
    let outputs = fw
        .outputs
        .into_iter()
        .map(|t| match t {
            Tensor::F32(a) => a,
            _ => panic!("a float output expected"),
        })
        .collect();
    (outputs, fw.state)
}

/// `run_backward` for a node of several float inputs (every input's gradient needed).
pub(crate) fn run_backward_inputs(
    graph: &Graph,
    xs: &[ArrayD<f32>],
    dy: &ArrayD<f32>,
) -> (Vec<Option<ArrayD<f32>>>, ParamGrads) {
    let node = &graph.nodes[0];
    let inputs: Vec<Tensor> = xs.iter().map(|x| Tensor::F32(x.clone())).collect();
    let fw = forward(graph, node, &inputs, None, &mut Rng::new(1)).expect("forward");
    let mut grads = ParamGrads::new(&graph.params);
    let outs: Vec<&Tensor> = fw.outputs.iter().collect();
    let ins: Vec<&Tensor> = inputs.iter().collect();
    let needs = vec![true; xs.len()];
    let io = NodeIo {
        graph,
        node,
        inputs: &ins,
        outputs: &outs,
        mask: None,
        saved: &fw.saved,
        needs: &needs,
    };
    let dxs = backward(&io, &[Some(dy.clone())], &mut grads).expect("backward");
    assert_eq!(dxs.len(), xs.len(), "one gradient per data input");
    (dxs, grads)
}
