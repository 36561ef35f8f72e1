//! Training rules of SimpleRNN, GRU, LSTM and Bidirectional (`Op::Recurrent`). The training
//! forward runs each direction keeping its gates per step (`direction`), with the cell's
//! dropout masks drawn from the run's seeded RNG (`masks`); the backward routes the outputs'
//! gradients — merge mode, return_sequences, return_state — to the directions and runs
//! backpropagation through time on each, giving the kernels', recurrent kernels' and biases'
//! gradients, dx and the initial states' gradients.

/// The cell rows, shared with ConvLSTM (`super::conv_lstm`).
pub(super) mod cells;
mod direction;
pub(crate) mod masks;
#[cfg(test)]
mod tests;

use ndarray::{Array2, ArrayD, Axis, IxDyn};

use super::{as_float, Forward, NodeIo};
use crate::cpu::Tensor;
use crate::error::{Error, Result};
use crate::graph::{MergeMode, Node, ParamStore, Recurrent, RecurrentCell};
use crate::train::{ParamGrads, Rng};
use direction::{DirectionGrads, DirectionInput, DirectionRun, Tape, Wants};
use masks::Masks;

/// What the backward keeps of the forward: each direction's masks and tape, and (Bidirectional
/// with merge_mode mul) both directions' outputs before the merge, in time order.
struct LayerTape {
    directions: Vec<(Masks, Tape)>,
    parts: Option<(ArrayD<f32>, ArrayD<f32>)>,
}

/// The layer's input x (N, T, F) and initial states (N, U), checked against the op.
struct LayerInputs<'a> {
    x: ndarray::CowArray<'a, f32, IxDyn>,
    states: Vec<ndarray::CowArray<'a, f32, IxDyn>>,
    n: usize,
}

fn layer_inputs<'a>(r: &Recurrent, node: &Node, inputs: &[&'a Tensor]) -> Result<LayerInputs<'a>> {
    let bad = |what: String| Error::Internal(format!("layer '{}': {what}", node.name));
    let x = as_float(inputs[0], node)?;
    let n = match x.shape() {
        [n, t, f] if *t == r.timesteps && *f == r.input_features => *n,
        other => {
            return Err(bad(format!(
                "expects (N, {}, {}) input, got {other:?}",
                r.timesteps, r.input_features
            )))
        }
    };
    let mut states = Vec::new();
    for &s in &inputs[1..] {
        let s = as_float(s, node)?;
        if s.shape() != [n, r.units()] {
            return Err(bad(format!(
                "an initial state is {:?}, expected ({n}, {})",
                s.shape(),
                r.units()
            )));
        }
        states.push(s.as_standard_layout());
    }
    let expected = if r.initial_state { r.state_count() } else { 0 };
    if states.len() != expected {
        return Err(bad(format!(
            "got {} initial state(s), expected {expected}",
            states.len()
        )));
    }
    Ok(LayerInputs {
        x: x.as_standard_layout(),
        states,
        n,
    })
}

/// Index of direction `d`'s first state among the states (h, c of the forward, then of the
/// backward direction).
fn first_state(r: &Recurrent, d: usize) -> usize {
    if d == 0 {
        0
    } else {
        r.forward.kind.states()
    }
}

fn direction_input<'a>(
    r: &Recurrent,
    li: &'a LayerInputs,
    d: usize,
    cell: &RecurrentCell,
    mask: Option<&'a Array2<bool>>,
) -> DirectionInput<'a> {
    let k = first_state(r, d);
    let state = |i: usize| li.states.get(i).and_then(|s| s.as_slice());
    DirectionInput {
        x: li.x.as_slice().expect("standard layout"),
        n: li.n,
        t_len: r.timesteps,
        features: r.input_features,
        mask,
        zero_masked: r.zero_output_for_mask(),
        h0: state(k),
        c0: if cell.kind.states() == 2 {
            state(k + 1)
        } else {
            None
        },
    }
}

/// Runs one direction per cell, two at once for Bidirectional.
fn run_all<T: Send>(cells: &[&RecurrentCell], f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    match cells.len() {
        2 => {
            let (a, b) = rayon::join(|| f(0), || f(1));
            vec![a, b]
        }
        _ => vec![f(0)],
    }
}

/// The training forward: the inference outputs (with the cells' dropout applied) and the tape.
pub(super) fn forward(
    r: &Recurrent,
    params: &ParamStore,
    node: &Node,
    inputs: &[Tensor],
    mask: Option<&Array2<bool>>,
    rng: &mut Rng,
) -> Result<Forward> {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let li = layer_inputs(r, node, &refs)?;
    let cells: Vec<&RecurrentCell> = r.cells().collect();
    let masks: Vec<Masks> = cells
        .iter()
        .map(|c| Masks::draw(c, li.n, r.input_features, rng))
        .collect();
    let runs = run_all(&cells, |d| {
        let input = direction_input(r, &li, d, cells[d], mask);
        direction::forward(cells[d], params, &input, &masks[d])
    });
    let (n, t, u) = (li.n, r.timesteps, r.units());
    let main = |run: &DirectionRun| -> ArrayD<f32> {
        if r.return_sequences {
            ArrayD::from_shape_vec(IxDyn(&[n, t, u]), run.sequence.clone())
        } else {
            ArrayD::from_shape_vec(IxDyn(&[n, u]), run.last.clone())
        }
        .expect("direction output shape")
    };
    let mut outputs = Vec::new();
    let mut parts = None;
    match runs.as_slice() {
        [fwd] => outputs.push(main(fwd)),
        [fwd, bwd] => {
            let a = main(fwd);
            let mut b = main(bwd);
            if r.return_sequences {
                // Bidirectional puts the backward outputs back in time order.
                b.invert_axis(Axis(1));
                b = b.as_standard_layout().into_owned();
            }
            match r.merge_mode {
                MergeMode::Concat => outputs.push(
                    ndarray::concatenate(Axis(a.ndim() - 1), &[a.view(), b.view()])
                        .expect("same leading shape"),
                ),
                MergeMode::Sum => outputs.push(&a + &b),
                MergeMode::Average => outputs.push((&a + &b) * 0.5),
                MergeMode::Multiply => {
                    outputs.push(&a * &b);
                    parts = Some((a, b));
                }
                MergeMode::None => outputs.extend([a, b]),
            }
        }
        _ => unreachable!("one or two directions"),
    }
    if r.return_state {
        for (cell, run) in cells.iter().zip(&runs) {
            outputs.push(ArrayD::from_shape_vec(IxDyn(&[n, u]), run.h.clone()).expect("N x U"));
            if cell.kind.states() == 2 {
                outputs.push(ArrayD::from_shape_vec(IxDyn(&[n, u]), run.c.clone()).expect("N x U"));
            }
        }
    }
    let directions = masks
        .into_iter()
        .zip(runs)
        .map(|(m, run)| (m, run.tape))
        .collect();
    Ok(Forward {
        outputs: outputs.into_iter().map(Tensor::F32).collect(),
        saved: Some(Box::new(LayerTape { directions, parts })),
        state: Vec::new(),
    })
}

fn flat(a: &ArrayD<f32>) -> Vec<f32> {
    a.as_standard_layout()
        .into_owned()
        .into_raw_vec_and_offset()
        .0
}

/// The gradients of each direction's main output (its sequence in time order, or its last
/// output), from the layer's output gradients through the merge.
fn direction_output_grads(
    r: &Recurrent,
    tape: &LayerTape,
    dy: impl Fn(usize) -> Option<ArrayD<f32>>,
    node: &Node,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    if r.backward.is_none() {
        return Ok(vec![dy(0)]);
    }
    let u = r.units();
    let (gf, gb) = match r.merge_mode {
        MergeMode::Concat => match dy(0) {
            Some(d) => {
                let last = Axis(d.ndim() - 1);
                let f = d.slice_axis(last, (0..u).into()).to_owned();
                let b = d.slice_axis(last, (u..2 * u).into()).to_owned();
                (Some(f), Some(b))
            }
            None => (None, None),
        },
        MergeMode::Sum => (dy(0), dy(0)),
        MergeMode::Average => {
            let half = dy(0).map(|d| d * 0.5);
            (half.clone(), half)
        }
        MergeMode::Multiply => {
            let (a, b) = tape.parts.as_ref().ok_or_else(|| {
                Error::Internal(format!(
                    "layer '{}': its forward kept no outputs to multiply",
                    node.name
                ))
            })?;
            match dy(0) {
                Some(d) => (Some(&d * b), Some(&d * a)),
                None => (None, None),
            }
        }
        MergeMode::None => (dy(0), dy(1)),
    };
    Ok(vec![gf, gb])
}

/// Backpropagation through time: parameter gradients into `grads`; dx (if needed), then one
/// gradient per initial state (if the layer takes them and they are needed).
pub(super) fn backward(
    r: &Recurrent,
    io: &NodeIo,
    dys: &[Option<ArrayD<f32>>],
    grads: &mut ParamGrads,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    let node = io.node;
    let params = io.params();
    let tape = io.saved::<LayerTape>()?;
    let li = layer_inputs(r, node, io.inputs)?;
    let cells: Vec<&RecurrentCell> = r.cells().collect();
    let dy = |i: usize| dys.get(i).and_then(|d| d.clone());
    let mut mains = direction_output_grads(r, tape, dy, node)?;
    if r.return_sequences && r.backward.is_some() {
        // Back to the backward direction's processing order.
        if let Some(g) = mains[1].as_mut() {
            g.invert_axis(Axis(1));
        }
    }
    let mains: Vec<Option<Vec<f32>>> = mains.iter().map(|g| g.as_ref().map(flat)).collect();
    let outputs_before_states = if r.two_outputs() { 2 } else { 1 };
    let state_grad = |k: usize| -> Option<Vec<f32>> {
        if !r.return_state {
            return None;
        }
        dys.get(outputs_before_states + k)
            .and_then(Option::as_ref)
            .map(flat)
    };
    let (n, u) = (li.n, r.units());
    let state_grads: Vec<Option<Vec<f32>>> = (0..r.state_count()).map(state_grad).collect();
    let needs_state = |k: usize| r.initial_state && io.needs.get(1 + k).copied().unwrap_or(false);
    let backs = run_all(&cells, |d| {
        let cell = cells[d];
        let k = first_state(r, d);
        let input = direction_input(r, &li, d, cell, io.mask);
        let main = mains[d].as_deref();
        let lstm = cell.kind.states() == 2;
        let incoming = DirectionGrads {
            sequence: main.filter(|_| r.return_sequences),
            last: main.filter(|_| !r.return_sequences),
            h: state_grads[k].as_deref(),
            c: if lstm {
                state_grads[k + 1].as_deref()
            } else {
                None
            },
        };
        let wants = Wants {
            x: io.needs[0],
            h0: needs_state(k),
            c0: lstm && needs_state(k + 1),
        };
        let (m, t) = &tape.directions[d];
        direction::backward(cell, params, &input, m, t, &incoming, wants)
    });
    let mut dx: Option<Vec<f32>> = None;
    let mut states: Vec<Option<ArrayD<f32>>> = Vec::new();
    for (cell, back) in cells.iter().zip(backs) {
        for (id, g) in back.params {
            grads.add(id, g);
        }
        if let Some(d) = back.dx {
            match dx.as_mut() {
                Some(acc) => acc.iter_mut().zip(&d).for_each(|(a, &v)| *a += v),
                None => dx = Some(d),
            }
        }
        let as_state = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&[n, u]), v).expect("N x U");
        states.push(back.dh0.map(as_state));
        if cell.kind.states() == 2 {
            states.push(back.dc0.map(as_state));
        }
    }
    let x_shape = [n, r.timesteps, r.input_features];
    let mut out = vec![dx.map(|d| ArrayD::from_shape_vec(IxDyn(&x_shape), d).expect("x shape"))];
    if r.initial_state {
        out.extend(states);
    }
    Ok(out)
}
