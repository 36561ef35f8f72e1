//! Dense on the last axis of any rank.

use super::{Activation, ShapeResult};
use crate::graph::params::ParamId;
use crate::graph::Shape;

#[derive(Debug, Clone)]
pub struct Dense {
    pub units: usize,
    pub in_features: usize,
    /// (in, out).
    pub kernel: ParamId,
    pub bias: Option<ParamId>,
    pub activation: Activation,
}

impl Dense {
    pub fn output_shape(&self, input: &[usize]) -> ShapeResult<Shape> {
        match input.split_last() {
            Some((&f, rest)) if f == self.in_features => {
                let mut out = rest.to_vec();
                out.push(self.units);
                Ok(out)
            }
            _ => Err(format!(
                "input {input:?} does not end in the kernel's {} features",
                self.in_features
            )),
        }
    }
}
