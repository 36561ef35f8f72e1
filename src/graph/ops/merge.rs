//! Merge and shape ops: Keras's merge layers (Add ... Minimum, Concatenate, Dot), Keras 3
//! arithmetic operator nodes, and the reshaping layers (ZeroPadding, Cropping, UpSampling,
//! Permute, RepeatVector). Shapes here exclude the batch axis, like every shape of the graph.
//!
//! Most of these ops move values without arithmetic. Each such op describes itself as strided
//! copies (`StridedCopy`: for every index over a shape, dst[i . dst_strides] = src[i . src_strides])
//! that both backends run as they are, so the index arithmetic lives only here.

use super::ShapeResult;
use crate::graph::Shape;

/// The elementwise arithmetic of merges and operator nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Subtract,
    Multiply,
    Divide,
    Maximum,
    Minimum,
}

impl BinaryOp {
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Subtract => a - b,
            BinaryOp::Multiply => a * b,
            BinaryOp::Divide => a / b,
            // TensorFlow's maximum/minimum propagate NaN from either side.
            BinaryOp::Maximum => {
                if a.is_nan() || b.is_nan() {
                    f32::NAN
                } else {
                    a.max(b)
                }
            }
            BinaryOp::Minimum => {
                if a.is_nan() || b.is_nan() {
                    f32::NAN
                } else {
                    a.min(b)
                }
            }
        }
    }

    /// The code `merge.wgsl` switches on.
    pub fn code(self) -> u32 {
        match self {
            BinaryOp::Add => 0,
            BinaryOp::Subtract => 1,
            BinaryOp::Multiply => 2,
            BinaryOp::Divide => 3,
            BinaryOp::Maximum => 4,
            BinaryOp::Minimum => 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Subtract => "subtract",
            BinaryOp::Multiply => "multiply",
            BinaryOp::Divide => "divide",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
        }
    }
}

/// `op` folded over two or more inputs left to right (`((x0 op x1) op x2) ...`), with Keras's
/// broadcasting: shapes aligned at the end (a lower-rank input gets leading size-1 axes, as
/// Keras's `expand_dims(x, 1)` gives it) and size-1 axes stretched. `average` divides the folded
/// sum by the number of inputs (Keras's Average).
///
/// `masked`: the node's mask (a step mask over (T, features) inputs that all carry it) applies
/// Keras's rule for masked Multiply, Maximum and Minimum: steps the mask drops are 0 (Multiply)
/// or the first input's values (Maximum, Minimum).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Merge {
    pub op: BinaryOp,
    pub average: bool,
    pub masked: bool,
}

impl Merge {
    /// What a masked-out step holds: zero (Multiply), or the first input's value.
    pub fn masked_step_is_zero(&self) -> bool {
        self.op == BinaryOp::Multiply
    }
}

/// One tensor with a constant: `x op value`, or `value op x` with `scalar_first`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalarOp {
    pub op: BinaryOp,
    pub value: f32,
    pub scalar_first: bool,
}

impl ScalarOp {
    pub fn apply(&self, x: f32) -> f32 {
        if self.scalar_first {
            self.op.apply(self.value, x)
        } else {
            self.op.apply(x, self.value)
        }
    }
}

/// Keras's Dot on two inputs: per item, contracts axis `axes[0]` of x with axis `axes[1]` of y
/// (axes without the batch, 0-based); the output is x's other axes then y's other axes, or `[1]`
/// when both are vectors. `normalize` L2-normalizes both along the contracted axis first
/// (`x * min(rsqrt(sum x^2), 1/epsilon)`, epsilon 1e-7, as keras.ops.normalize does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dot {
    pub axes: [usize; 2],
    pub normalize: bool,
}

/// Keras's `backend.epsilon()`, the floor of Dot's normalization.
pub const NORMALIZE_EPSILON: f32 = 1e-7;

/// How a Dot runs as one batched product: per item, A (m x k) times B (n x k) transposed, where A
/// is x with its axes in `x_order` (the contracted axis last) and B is y in `y_order`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotLayout {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub x_order: Vec<usize>,
    pub y_order: Vec<usize>,
}

impl Dot {
    pub fn output_shape(&self, x: &[usize], y: &[usize]) -> ShapeResult<Shape> {
        let [a0, a1] = self.axes;
        if a0 >= x.len() || a1 >= y.len() {
            return Err(format!(
                "axes {:?} do not fit inputs of shapes {x:?} and {y:?}",
                [a0 + 1, a1 + 1]
            ));
        }
        if x[a0] != y[a1] {
            return Err(format!(
                "cannot contract axis {} of {x:?} ({}) with axis {} of {y:?} ({})",
                a0 + 1,
                x[a0],
                a1 + 1,
                y[a1]
            ));
        }
        let mut out: Shape = x
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != a0)
            .map(|(_, &d)| d)
            .collect();
        out.extend(
            y.iter()
                .enumerate()
                .filter(|&(i, _)| i != a1)
                .map(|(_, &d)| d),
        );
        if out.is_empty() {
            out.push(1);
        }
        Ok(out)
    }

    pub fn layout(&self, x: &[usize], y: &[usize]) -> DotLayout {
        let [a0, a1] = self.axes;
        let order = |rank: usize, axis: usize| -> Vec<usize> {
            (0..rank).filter(|&i| i != axis).chain([axis]).collect()
        };
        let k = x[a0];
        DotLayout {
            m: x.iter().product::<usize>() / k.max(1),
            n: y.iter().product::<usize>() / k.max(1),
            k,
            x_order: order(x.len(), a0),
            y_order: order(y.len(), a1),
        }
    }
}

/// Resampling of UpSampling layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// Each value repeated `factor` times along each axis (Keras's `ops.repeat`).
    Nearest,
    /// TensorFlow's bilinear resize with half-pixel centers, no antialiasing (UpSampling2D).
    Bilinear,
}

/// Numpy broadcasting of two shapes aligned at the end.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> ShapeResult<Shape> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], i: usize| {
        let pad = rank - s.len();
        if i < pad {
            1
        } else {
            s[i - pad]
        }
    };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        })
        .collect()
}

/// Row-major strides of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// Strides that read a value of item shape `input` as if it had item shape `output` (broadcast,
/// aligned at the end), with the batch axis first: 0 along stretched axes.
pub fn broadcast_strides(input: &[usize], output: &[usize]) -> Vec<usize> {
    let in_strides = contiguous_strides(input);
    let pad = output.len() - input.len();
    let mut strides = vec![input.iter().product::<usize>()];
    for (i, &d) in output.iter().enumerate() {
        strides.push(if i < pad || (input[i - pad] == 1 && d != 1) {
            0
        } else {
            in_strides[i - pad]
        });
    }
    strides
}

/// For every index `i` over `shape`: `dst[dst_offset + i . dst_strides] =
/// src[src_offset + i . src_strides]` (strides in elements; the batch axis included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StridedCopy {
    pub shape: Vec<usize>,
    pub src_strides: Vec<usize>,
    pub src_offset: usize,
    pub dst_strides: Vec<usize>,
    pub dst_offset: usize,
}

impl StridedCopy {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same copy with size-1 axes dropped and neighbouring axes merged where both sides
    /// walk them as one (fewer, longer axes: what the GPU kernel's fixed rank needs).
    pub fn coalesced(&self) -> StridedCopy {
        let (shape, mut strides) = coalesce(&self.shape, &[&self.src_strides, &self.dst_strides]);
        let dst_strides = strides.pop().expect("two stride sets");
        let src_strides = strides.pop().expect("two stride sets");
        StridedCopy {
            shape,
            src_strides,
            src_offset: self.src_offset,
            dst_strides,
            dst_offset: self.dst_offset,
        }
    }
}

/// `shape` walked by several stride sets at once, with size-1 axes dropped and neighbouring axes
/// merged where every set walks them as one axis. Never empty: a scalar walk is `[1]` (or `[0]`
/// when `shape` holds nothing).
pub fn coalesce(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::new();
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for (i, &d) in shape.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let mergeable = out_shape.last().is_some()
            && strides
                .iter()
                .zip(&out)
                .all(|(s, o)| o.last() == Some(&(s[i] * d)));
        if mergeable {
            *out_shape.last_mut().expect("nonempty") *= d;
            for (s, o) in strides.iter().zip(out.iter_mut()) {
                *o.last_mut().expect("nonempty") = s[i];
            }
            continue;
        }
        out_shape.push(d);
        for (s, o) in strides.iter().zip(out.iter_mut()) {
            o.push(s[i]);
        }
    }
    if out_shape.is_empty() {
        out_shape.push(usize::from(!shape.contains(&0)));
        for o in out.iter_mut() {
            o.push(1);
        }
    }
    (out_shape, out)
}

/// A copy that reads a tensor of item shape `input` in the axis order `order` (output axis i =
/// input axis order[i]) into a contiguous tensor.
pub fn permute_copy(input: &[usize], order: &[usize], batch: usize) -> StridedCopy {
    let in_strides = contiguous_strides(input);
    let out: Vec<usize> = order.iter().map(|&a| input[a]).collect();
    let mut shape = vec![batch];
    shape.extend(&out);
    let mut src_strides = vec![input.iter().product()];
    src_strides.extend(order.iter().map(|&a| in_strides[a]));
    let mut dst_strides = vec![out.iter().product()];
    dst_strides.extend(contiguous_strides(&out));
    StridedCopy {
        shape,
        src_strides,
        src_offset: 0,
        dst_strides,
        dst_offset: 0,
    }
}

/// A per-axis `[before, after]` pair count check shared by padding and cropping.
fn check_rank(what: &str, pairs: usize, x: &[usize]) -> ShapeResult<()> {
    if pairs != x.len() {
        return Err(format!(
            "{what} for {pairs} axes, the input {x:?} has {}",
            x.len()
        ));
    }
    Ok(())
}

pub fn pad_shape(pads: &[[usize; 2]], x: &[usize]) -> ShapeResult<Shape> {
    check_rank("padding", pads.len(), x)?;
    Ok(x.iter().zip(pads).map(|(&d, p)| d + p[0] + p[1]).collect())
}

pub fn crop_shape(crops: &[[usize; 2]], x: &[usize]) -> ShapeResult<Shape> {
    check_rank("cropping", crops.len(), x)?;
    x.iter()
        .zip(crops)
        .map(|(&d, c)| {
            d.checked_sub(c[0] + c[1])
                .filter(|&r| r > 0)
                .ok_or_else(|| format!("cropping {c:?} leaves nothing of an axis of {d}"))
        })
        .collect()
}

pub fn permute_shape(perm: &[usize], x: &[usize]) -> ShapeResult<Shape> {
    let mut seen = vec![false; x.len()];
    if perm.len() != x.len() {
        return Err(format!(
            "dims {:?} do not permute the {} axes of {x:?}",
            perm.iter().map(|a| a + 1).collect::<Vec<_>>(),
            x.len()
        ));
    }
    for &a in perm {
        if a >= x.len() || std::mem::replace(&mut seen[a], true) {
            return Err(format!(
                "dims {:?} are not a permutation of 1..={}",
                perm.iter().map(|a| a + 1).collect::<Vec<_>>(),
                x.len()
            ));
        }
    }
    Ok(perm.iter().map(|&a| x[a]).collect())
}

pub fn upsample_shape(
    factors: &[usize],
    interpolation: Interpolation,
    x: &[usize],
) -> ShapeResult<Shape> {
    check_rank("upsampling factors", factors.len(), x)?;
    if interpolation == Interpolation::Bilinear
        && (x.len() != 3 || factors[2] != 1 || factors[0] == 0 || factors[1] == 0)
    {
        return Err(format!(
            "bilinear upsampling needs (height, width, channels) input, got {x:?}"
        ));
    }
    if factors.contains(&0) {
        return Err("upsampling factors must be positive".into());
    }
    Ok(x.iter().zip(factors).map(|(&d, &f)| d * f).collect())
}

/// Concatenation of item shapes along `axis`; every other axis must agree.
pub fn concat_shape(axis: usize, inputs: &[&[usize]]) -> ShapeResult<Shape> {
    let Some(first) = inputs.first() else {
        return Err("needs at least one input".into());
    };
    if axis >= first.len() {
        return Err(format!("axis {} is outside {first:?}", axis + 1));
    }
    let mut out = first.to_vec();
    for s in &inputs[1..] {
        let same_rest = s.len() == first.len()
            && s.iter()
                .zip(first.iter())
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        if !same_rest {
            return Err(format!(
                "inputs must match except along the concatenation axis: {first:?} and {s:?} (axis {})",
                axis + 1
            ));
        }
        out[axis] += s[axis];
    }
    Ok(out)
}

/// The copies that concatenate `inputs` along item axis `axis` into a tensor of item shape `out`.
pub fn concat_copies(
    axis: usize,
    inputs: &[&[usize]],
    out: &[usize],
    batch: usize,
) -> Vec<StridedCopy> {
    let out_strides = contiguous_strides(out);
    let mut offset = 0;
    inputs
        .iter()
        .map(|s| {
            let mut shape = vec![batch];
            shape.extend_from_slice(s);
            let mut src_strides = vec![s.iter().product()];
            src_strides.extend(contiguous_strides(s));
            let mut dst_strides = vec![out.iter().product()];
            dst_strides.extend(&out_strides);
            let copy = StridedCopy {
                shape,
                src_strides,
                src_offset: 0,
                dst_strides,
                dst_offset: offset * out_strides[axis],
            };
            offset += s[axis];
            copy
        })
        .collect()
}

/// The copy that places the input inside a zeroed output of item shape `out` (ZeroPadding).
pub fn pad_copy(pads: &[[usize; 2]], x: &[usize], out: &[usize], batch: usize) -> StridedCopy {
    let out_strides = contiguous_strides(out);
    let mut shape = vec![batch];
    shape.extend_from_slice(x);
    let mut src_strides = vec![x.iter().product()];
    src_strides.extend(contiguous_strides(x));
    let mut dst_strides = vec![out.iter().product()];
    dst_strides.extend(&out_strides);
    StridedCopy {
        shape,
        src_strides,
        src_offset: 0,
        dst_strides,
        dst_offset: pads.iter().zip(&out_strides).map(|(p, s)| p[0] * s).sum(),
    }
}

/// The copy that reads the kept window of the input (Cropping).
pub fn crop_copy(crops: &[[usize; 2]], x: &[usize], out: &[usize], batch: usize) -> StridedCopy {
    let in_strides = contiguous_strides(x);
    let mut shape = vec![batch];
    shape.extend_from_slice(out);
    let mut src_strides = vec![x.iter().product()];
    src_strides.extend(&in_strides);
    let mut dst_strides = vec![out.iter().product()];
    dst_strides.extend(contiguous_strides(out));
    StridedCopy {
        shape,
        src_strides,
        src_offset: crops.iter().zip(&in_strides).map(|(c, s)| c[0] * s).sum(),
        dst_strides,
        dst_offset: 0,
    }
}

/// Nearest upsampling as one copy: each input axis of size d becomes the pair (d, factor), the
/// factor axis read with stride 0, which in row-major order is exactly output index d*f + r.
pub fn upsample_nearest_copy(factors: &[usize], x: &[usize], batch: usize) -> StridedCopy {
    let in_strides = contiguous_strides(x);
    let mut shape = vec![batch];
    let mut src_strides = vec![x.iter().product::<usize>()];
    for ((&d, &f), &s) in x.iter().zip(factors).zip(&in_strides) {
        shape.extend([d, f]);
        src_strides.extend([s, 0]);
    }
    let dst_strides = contiguous_strides(&shape);
    StridedCopy {
        shape,
        src_strides,
        src_offset: 0,
        dst_strides,
        dst_offset: 0,
    }
}

/// RepeatVector: (features) -> (n, features), the repeat axis read with stride 0.
pub fn repeat_copy(n: usize, features: usize, batch: usize) -> StridedCopy {
    StridedCopy {
        shape: vec![batch, n, features],
        src_strides: vec![features, 0, 1],
        src_offset: 0,
        dst_strides: vec![n * features, features, 1],
        dst_offset: 0,
    }
}

/// One output coordinate of TensorFlow's half-pixel bilinear resize: the two input rows (or
/// columns) it reads and the weight of the second, computed in f32 as TensorFlow does
/// (`in = (out + 0.5) * scale - 0.5`, `scale = in_size / out_size`).
pub fn bilinear_tap(out_index: usize, in_size: usize, scale: f32) -> (usize, usize, f32) {
    let pos = (out_index as f32 + 0.5) * scale - 0.5;
    let floor = pos.floor();
    let lower = (floor as i64).max(0) as usize;
    let upper = (pos.ceil() as i64).min(in_size as i64 - 1).max(0) as usize;
    (lower, upper, pos - floor)
}

/// TensorFlow's resize scale, in f32.
pub fn bilinear_scale(in_size: usize, out_size: usize) -> f32 {
    in_size as f32 / out_size as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_aligns_at_the_end() {
        assert_eq!(broadcast_shapes(&[3, 1], &[4]).unwrap(), vec![3, 4]);
        assert_eq!(broadcast_shapes(&[5], &[2, 1, 5]).unwrap(), vec![2, 1, 5]);
        assert!(broadcast_shapes(&[3], &[4]).is_err());
        assert_eq!(broadcast_strides(&[1, 5], &[3, 5]), vec![5, 0, 1]);
        assert_eq!(broadcast_strides(&[5], &[3, 5]), vec![5, 0, 1]);
    }

    #[test]
    fn coalescing_merges_contiguous_axes() {
        let c = permute_copy(&[2, 3, 4], &[0, 1, 2], 5).coalesced();
        assert_eq!(c.shape, vec![120]);
        let c = upsample_nearest_copy(&[2, 1], &[3, 4], 1).coalesced();
        assert_eq!(c.len(), 24);
    }

    #[test]
    fn dot_shapes_follow_keras() {
        let d = Dot {
            axes: [0, 0],
            normalize: false,
        };
        assert_eq!(d.output_shape(&[6], &[6]).unwrap(), vec![1]);
        let d = Dot {
            axes: [1, 1],
            normalize: false,
        };
        assert_eq!(d.output_shape(&[4, 5], &[3, 5]).unwrap(), vec![4, 3]);
        let d = Dot {
            axes: [0, 1],
            normalize: false,
        };
        assert_eq!(d.output_shape(&[4, 5], &[3, 4]).unwrap(), vec![5, 3]);
    }

    #[test]
    fn bilinear_taps_match_tensorflow_half_pixel() {
        // 3 -> 6: scale 0.5; out 0 -> in -0.25 (clamped to row 0), out 1 -> 0.25.
        let s = bilinear_scale(3, 6);
        assert_eq!(bilinear_tap(0, 3, s), (0, 0, 0.75));
        assert_eq!(bilinear_tap(1, 3, s), (0, 1, 0.25));
        assert_eq!(bilinear_tap(5, 3, s), (2, 2, 0.25));
    }
}
