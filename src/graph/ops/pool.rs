//! Max and average pooling over 2-D windows, and global pooling.

use super::conv::Window2d;
use super::ShapeResult;
use crate::graph::Shape;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolOp {
    Max,
    Average,
}

impl PoolOp {
    pub fn name(self) -> &'static str {
        match self {
            PoolOp::Max => "max",
            PoolOp::Average => "average",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pool2d {
    pub op: PoolOp,
    pub window: Window2d,
    pub channels: usize,
}

impl Pool2d {
    pub fn output_shape(&self, input: &[usize]) -> ShapeResult<Shape> {
        if input.last() != Some(&self.channels) {
            return Err(format!(
                "input {input:?} does not have {} channels",
                self.channels
            ));
        }
        self.window.output_shape(input, self.channels)
    }
}

/// Global pooling over H and W of an (H, W, C) tensor.
pub fn global_pool2d_shape(input: &[usize], keepdims: bool) -> ShapeResult<Shape> {
    match input {
        [_, _, c] => Ok(if keepdims { vec![1, 1, *c] } else { vec![*c] }),
        _ => Err(format!("expects (H, W, C) input, got {input:?}")),
    }
}
