//! Max and average pooling over 1-, 2- and 3-D windows, and global pooling.

use super::conv::Window;
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

/// MaxPooling1D/2D/3D and AveragePooling1D/2D/3D. Windows are clipped to the input like
/// TensorFlow's: padding never wins a max, and averages divide by the in-bounds count.
#[derive(Debug, Clone)]
pub struct Pool {
    pub op: PoolOp,
    pub window: Window,
    pub channels: usize,
}

impl Pool {
    pub fn output_shape(&self, input: &[usize]) -> ShapeResult<Shape> {
        self.window
            .output_shape(input, self.channels, self.channels)
    }
}

/// Global pooling over the `rank` spatial axes of a (spatial..., C) tensor.
pub fn global_pool_shape(input: &[usize], rank: usize, keepdims: bool) -> ShapeResult<Shape> {
    if input.len() != rank + 1 || input[..rank].contains(&0) {
        return Err(format!(
            "expects {rank} spatial axes and channels, got {input:?}"
        ));
    }
    let c = input[rank];
    Ok(if keepdims {
        let mut s = vec![1; rank];
        s.push(c);
        s
    } else {
        vec![c]
    })
}
