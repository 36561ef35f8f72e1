//! Validated input batches, in the form both backends read.

use ndarray::{s, Array2, ArrayD, Axis};

/// One model input's batch.
#[derive(Debug, Clone)]
pub enum PreparedInput {
    /// (N, ...input shape), standard layout.
    Float(ArrayD<f32>),
    /// (N, T) token ids, each checked to be < the Embedding's input_dim.
    Ids(Array2<u32>),
}

impl PreparedInput {
    pub fn batch(&self) -> usize {
        match self {
            PreparedInput::Float(x) => x.shape()[0],
            PreparedInput::Ids(x) => x.nrows(),
        }
    }

    /// Rows `start..end` of the batch.
    pub fn slice(&self, start: usize, end: usize) -> PreparedInput {
        match self {
            PreparedInput::Float(x) => PreparedInput::Float(
                x.slice_axis(Axis(0), (start..end).into())
                    .as_standard_layout()
                    .into_owned(),
            ),
            PreparedInput::Ids(x) => PreparedInput::Ids(x.slice(s![start..end, ..]).to_owned()),
        }
    }

    /// Shape without the batch axis.
    pub fn item_shape(&self) -> &[usize] {
        match self {
            PreparedInput::Float(x) => &x.shape()[1..],
            PreparedInput::Ids(x) => &x.shape()[1..],
        }
    }
}

/// The batch size shared by all inputs, or an error when they disagree.
pub fn common_batch(inputs: &[PreparedInput]) -> crate::Result<usize> {
    let n = inputs.first().map_or(0, PreparedInput::batch);
    if let Some((i, other)) = inputs.iter().enumerate().find(|(_, x)| x.batch() != n) {
        return Err(crate::Error::Input(format!(
            "input {i} has {} rows but input 0 has {n}: every input needs the same batch size",
            other.batch()
        )));
    }
    Ok(n)
}
