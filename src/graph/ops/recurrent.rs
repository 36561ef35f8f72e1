//! SimpleRNN, LSTM and Bidirectional(either): cells, directions and the output shape.

use super::{Activation, ShapeResult};
use crate::graph::params::ParamId;
use crate::graph::Shape;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    SimpleRnn,
    /// Gates in Keras order i, f, c, o.
    Lstm,
}

impl CellKind {
    /// How many blocks of `units` columns the kernels hold.
    pub fn gates(&self) -> usize {
        match self {
            CellKind::SimpleRnn => 1,
            CellKind::Lstm => 4,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            CellKind::SimpleRnn => "SimpleRNN",
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
    /// LSTM only (sigmoid by default).
    pub recurrent_activation: Activation,
    /// (input_features, gates * units).
    pub kernel: ParamId,
    /// (units, gates * units).
    pub recurrent_kernel: ParamId,
    /// (gates * units).
    pub bias: Option<ParamId>,
    /// Reads the sequence from the end. With return_sequences, outputs stay in processing order
    /// (as Keras), except inside Bidirectional, which puts the backward outputs back in time order.
    pub go_backwards: bool,
}

impl RecurrentCell {
    pub fn gate_columns(&self) -> usize {
        self.kind.gates() * self.units
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeMode {
    Concat,
    Sum,
    Average,
    Multiply,
}

/// SimpleRNN, LSTM or Bidirectional(either). A node running it may take a mask as its second
/// input (Keras's propagated padding mask).
#[derive(Debug, Clone)]
pub struct Recurrent {
    pub forward: RecurrentCell,
    /// Present for Bidirectional.
    pub backward: Option<RecurrentCell>,
    pub merge_mode: MergeMode,
    pub return_sequences: bool,
    pub timesteps: usize,
    pub input_features: usize,
    /// With return_sequences: zeros at masked steps instead of repeating the previous output.
    /// Keras forces it on inside Bidirectional; a plain layer reads its `zero_output_for_mask`.
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
}
