//! Embedding: token ids (T,) -> (T, output_dim).

use super::ShapeResult;
use crate::graph::params::ParamId;
use crate::graph::Shape;

#[derive(Debug, Clone)]
pub struct Embedding {
    pub input_dim: usize,
    pub output_dim: usize,
    /// (input_dim, output_dim).
    pub table: ParamId,
    pub mask_zero: bool,
}

impl Embedding {
    pub fn output_shape(&self, input: &[usize]) -> ShapeResult<Shape> {
        let mut out = input.to_vec();
        out.push(self.output_dim);
        Ok(out)
    }
}
