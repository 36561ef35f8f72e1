//! A cell's dropout masks for one training batch, as Keras's `DropoutRNNCell` draws them: one
//! per sequence, kept for every timestep, values 0 or 1 / (1 - rate).
//!
//! Keras's rules (keras/src/layers/rnn/{simple_rnn,lstm,gru}.py): SimpleRNN multiplies x_t and
//! h_{t-1} by one mask each whenever its rate is above 0 (a rate of 1 gives zeros). LSTM and GRU
//! apply a mask only for 0 < rate < 1; with `implementation=1` (forced by a nonzero
//! recurrent_dropout) each gate block gets its own input and recurrent mask, else one input
//! mask is shared by all gates.

use crate::graph::{CellKind, RecurrentCell};
use crate::train::Rng;

/// None, one mask for all gate blocks, or one per block; each (N, width) row-major.
#[derive(Debug, Default)]
pub(crate) struct MaskSet(Vec<Vec<f32>>);

impl MaskSet {
    /// The mask gate block `block` reads, if any.
    pub fn for_block(&self, block: usize) -> Option<&[f32]> {
        match self.0.len() {
            0 => None,
            1 => Some(&self.0[0]),
            _ => Some(&self.0[block]),
        }
    }

    /// One mask per gate block (not one shared).
    pub fn per_block(&self) -> bool {
        self.0.len() > 1
    }
}

/// Both mask sets of one direction.
#[derive(Debug, Default)]
pub(crate) struct Masks {
    /// On x_t, (N, features).
    pub input: MaskSet,
    /// On h_{t-1} before the recurrent kernel, (N, units).
    pub recurrent: MaskSet,
}

impl Masks {
    pub fn draw(cell: &RecurrentCell, n: usize, features: usize, rng: &mut Rng) -> Masks {
        let d = cell.dropout;
        let (input_on, recurrent_on, count) = match cell.kind {
            CellKind::SimpleRnn => (d.input > 0.0, d.recurrent > 0.0, 1),
            CellKind::Lstm | CellKind::Gru { .. } => (
                d.input > 0.0 && d.input < 1.0,
                d.recurrent > 0.0 && d.recurrent < 1.0,
                if d.per_gate { cell.kind.gates() } else { 1 },
            ),
        };
        let mut set = |on: bool, rate: f32, width: usize| {
            MaskSet(if on {
                (0..count).map(|_| draw(rng, rate, n * width)).collect()
            } else {
                Vec::new()
            })
        };
        let input = set(input_on, d.input, features);
        let recurrent = set(recurrent_on, d.recurrent, cell.units);
        Masks { input, recurrent }
    }
}

/// Keras's `backend.random.dropout(ones, rate)`: zeros at rate 1, else keep with 1 - rate.
fn draw(rng: &mut Rng, rate: f32, len: usize) -> Vec<f32> {
    if rate >= 1.0 {
        return vec![0.0; len];
    }
    let keep = 1.0 / (1.0 - rate);
    (0..len)
        .map(|_| if rng.uniform() >= rate { keep } else { 0.0 })
        .collect()
}
