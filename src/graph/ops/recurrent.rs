//! SimpleRNN, GRU, LSTM and Bidirectional(any): cells, directions, states and the output shape.

use super::{Activation, ShapeResult};
use crate::graph::params::ParamId;
use crate::graph::{DType, Shape, ValueInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    SimpleRnn,
    /// Gates in Keras order z, r, h. `reset_after` (Keras 3's default): the bias is (2, 3*units)
    /// (input bias, recurrent bias) and the reset gate multiplies `h R_h + b_rh`; else the bias
    /// is (3*units,) and the reset gate multiplies `h` before `R_h`.
    Gru {
        reset_after: bool,
    },
    /// Gates in Keras order i, f, c, o.
    Lstm,
}

impl CellKind {
    /// How many blocks of `units` columns the kernels hold.
    pub fn gates(&self) -> usize {
        match self {
            CellKind::SimpleRnn => 1,
            CellKind::Gru { .. } => 3,
            CellKind::Lstm => 4,
        }
    }

    /// State tensors per direction: h (and c for LSTM).
    pub fn states(&self) -> usize {
        match self {
            CellKind::SimpleRnn | CellKind::Gru { .. } => 1,
            CellKind::Lstm => 2,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            CellKind::SimpleRnn => "SimpleRNN",
            CellKind::Gru { .. } => "GRU",
            CellKind::Lstm => "LSTM",
        }
    }
}

/// One direction of a recurrent layer.
#[derive(Debug, Clone)]
pub struct RecurrentCell {
    pub kind: CellKind,
    pub units: usize,
    pub activation: Activation,
    /// LSTM and GRU gates (sigmoid by default).
    pub recurrent_activation: Activation,
    /// (input_features, gates * units).
    pub kernel: ParamId,
    /// (units, gates * units).
    pub recurrent_kernel: ParamId,
    /// `bias_shape()`: (gates * units), or (2, 3 * units) for a GRU with reset_after.
    pub bias: Option<ParamId>,
    /// Reads the sequence from the end. With return_sequences, outputs stay in processing order
    /// (as Keras), except inside Bidirectional, which puts the backward outputs back in time order.
    pub go_backwards: bool,
    /// Dropout in training; inference ignores it.
    pub dropout: CellDropout,
}

/// A cell's dropout rates (Keras's `dropout` and `recurrent_dropout`, clamped to [0, 1] as
/// Keras does). Each mask is drawn once per batch and kept for every timestep.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CellDropout {
    /// On the input x_t, mask (N, features).
    pub input: f32,
    /// On h_{t-1} before the recurrent kernel, mask (N, units).
    pub recurrent: f32,
    /// Keras's `implementation=1` (which a nonzero recurrent_dropout forces): LSTM and GRU
    /// draw one mask per gate instead of one shared by all gates.
    pub per_gate: bool,
}

impl RecurrentCell {
    pub fn gate_columns(&self) -> usize {
        self.kind.gates() * self.units
    }

    /// The shape of Keras's bias weight.
    pub fn bias_shape(&self) -> Vec<usize> {
        match self.kind {
            CellKind::Gru { reset_after: true } => vec![2, self.gate_columns()],
            _ => vec![self.gate_columns()],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeMode {
    Concat,
    Sum,
    Average,
    Multiply,
    /// Keras's `merge_mode=None`: two outputs, forward then backward (in time order).
    None,
}

/// SimpleRNN, GRU, LSTM or Bidirectional(any). A node running it may take Keras's propagated
/// padding mask. Inputs: the sequence, then (with `initial_state`) one (units,) value per state,
/// in the order of the outputs. Outputs: the output (two, forward and backward, with
/// `MergeMode::None`), then (with `return_state`) the final states, h (, c) per direction.
#[derive(Debug, Clone)]
pub struct Recurrent {
    pub forward: RecurrentCell,
    /// Present for Bidirectional.
    pub backward: Option<RecurrentCell>,
    pub merge_mode: MergeMode,
    pub return_sequences: bool,
    /// Outputs the final states after the output: [h (, c)] per direction, forward first
    /// (Keras's order, also inside Bidirectional).
    pub return_state: bool,
    /// The node's inputs after the sequence are the initial states, in the same order.
    pub initial_state: bool,
    pub timesteps: usize,
    pub input_features: usize,
    /// With a mask: zeros at masked steps instead of repeating the previous output.
    /// Keras forces it to return_sequences inside Bidirectional; a plain layer reads its
    /// `zero_output_for_mask`.
    pub zero_masked_outputs: bool,
}

impl Recurrent {
    pub fn units(&self) -> usize {
        self.forward.units
    }

    /// Features per timestep of the output.
    pub fn output_features(&self) -> usize {
        match (&self.backward, self.merge_mode) {
            (Some(_), MergeMode::Concat) => 2 * self.forward.units,
            _ => self.forward.units,
        }
    }

    /// Keras 3 writes zeros at masked steps inside Bidirectional with return_sequences, and
    /// repeats the previous output in a plain RNN layer (unless its `zero_output_for_mask`).
    pub fn zero_output_for_mask(&self) -> bool {
        self.zero_masked_outputs
    }

    pub fn cells(&self) -> impl Iterator<Item = &RecurrentCell> {
        std::iter::once(&self.forward).chain(self.backward.as_ref())
    }

    /// Bidirectional with merge_mode None: the directions are separate outputs.
    pub fn two_outputs(&self) -> bool {
        self.backward.is_some() && self.merge_mode == MergeMode::None
    }

    /// How many state tensors the layer has in all (initial_state inputs, return_state outputs).
    pub fn state_count(&self) -> usize {
        self.cells().map(|c| c.kind.states()).sum()
    }

    /// The output's shape, from the sequence's.
    pub fn output_shape(&self, input: &[usize]) -> ShapeResult<Shape> {
        if input != [self.timesteps, self.input_features] {
            return Err(format!(
                "expects ({}, {}) (timesteps, features) input, got {input:?}",
                self.timesteps, self.input_features
            ));
        }
        Ok(if self.return_sequences {
            vec![self.timesteps, self.output_features()]
        } else {
            vec![self.output_features()]
        })
    }

    /// The shape rule over all inputs: sequence (+ initial states) -> output (+ final states).
    pub fn infer(&self, inputs: &[&ValueInfo]) -> ShapeResult<Vec<ValueInfo>> {
        let states = self.state_count();
        let expected = 1 + if self.initial_state { states } else { 0 };
        if inputs.len() != expected {
            return Err(format!(
                "expects {expected} input(s) (the sequence{}), got {}",
                if self.initial_state {
                    format!(" and {states} initial state(s)")
                } else {
                    String::new()
                },
                inputs.len()
            ));
        }
        if let Some(bad) = inputs.iter().find(|v| v.dtype != DType::F32) {
            return Err(format!("expects float32 inputs, got {}", bad.dtype.name()));
        }
        if self.timesteps == 0 {
            return Err("a recurrent layer needs at least one timestep".into());
        }
        let mut outs = vec![ValueInfo::new(
            self.output_shape(&inputs[0].shape)?,
            DType::F32,
        )];
        if self.two_outputs() {
            outs.push(outs[0].clone());
        }
        for (k, s) in inputs[1..].iter().enumerate() {
            if s.shape != [self.units()] {
                return Err(format!(
                    "initial state #{k} has shape {:?}, expected ({},)",
                    s.shape,
                    self.units()
                ));
            }
        }
        if self.return_state {
            for cell in self.cells() {
                for _ in 0..cell.kind.states() {
                    outs.push(ValueInfo::new(vec![cell.units], DType::F32));
                }
            }
        }
        Ok(outs)
    }
}
