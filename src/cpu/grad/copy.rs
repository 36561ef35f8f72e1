//! Backward of the ops that move values without arithmetic: Concatenate (dy split along the
//! axis), Permute (dy permuted back) and RepeatVector (dy summed over the repeats).

use ndarray::{ArrayD, Axis, IxDyn, Slice};

use super::merge::sum_to_shape;
use super::NodeIo;
use crate::error::{Error, Result};

pub(super) fn concat_backward(
    axis: usize,
    io: &NodeIo,
    dy: ArrayD<f32>,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    let mut start = 0;
    let mut dxs = Vec::with_capacity(io.inputs.len());
    for i in 0..io.inputs.len() {
        let len = io.input(i)?.shape()[axis + 1];
        let part = dy.slice_axis(Axis(axis + 1), Slice::from(start..start + len));
        dxs.push(io.needs[i].then(|| part.as_standard_layout().into_owned()));
        start += len;
    }
    if start != dy.shape()[axis + 1] {
        return Err(Error::Internal(format!(
            "node '{}': Concatenate inputs cover {start} of {} along the axis",
            io.node.name,
            dy.shape()[axis + 1]
        )));
    }
    Ok(dxs)
}

/// Output item axis i is input item axis perm[i], so input axis a is output axis inverse[a].
pub(super) fn permute_backward(
    perm: &[usize],
    io: &NodeIo,
    dy: ArrayD<f32>,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    if !io.needs[0] {
        return Ok(vec![None]);
    }
    let mut inverse = vec![0; perm.len() + 1];
    for (i, &a) in perm.iter().enumerate() {
        inverse[a + 1] = i + 1;
    }
    let dx = dy
        .permuted_axes(IxDyn(&inverse))
        .as_standard_layout()
        .into_owned();
    Ok(vec![Some(dx)])
}

/// (N, n, F) summed over the n repeats to (N, F).
pub(super) fn repeat_vector_backward(
    io: &NodeIo,
    dy: ArrayD<f32>,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    if !io.needs[0] {
        return Ok(vec![None]);
    }
    let x = io.input(0)?;
    let mut summed_shape = dy.shape().to_vec();
    summed_shape[1] = 1;
    let dx = sum_to_shape(&dy, &summed_shape)
        .into_shape_with_order(IxDyn(x.shape()))
        .map_err(|e| Error::Internal(format!("RepeatVector backward: {e}")))?;
    Ok(vec![Some(dx)])
}

#[cfg(test)]
mod tests {
    use super::super::check::{check_node, uniform};
    use super::super::norm::tests::graph_of;
    use crate::cpu::Tensor;
    use crate::graph::Op;

    fn batch_of(items: &[&[usize]], batch: usize) -> Vec<Tensor> {
        items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut shape = vec![batch];
                shape.extend_from_slice(s);
                Tensor::F32(uniform(&shape, 80 + i as u64, 1.0))
            })
            .collect()
    }

    #[test]
    fn concatenate_matches_finite_differences() {
        let cases: [(&[&[usize]], usize); 4] = [
            (&[&[3], &[5]], 0),
            (&[&[2, 5], &[3, 5], &[1, 5]], 0),
            (&[&[4, 2], &[4, 3]], 1),
            (&[&[2, 3, 1], &[2, 3, 4]], 2),
        ];
        for (items, axis) in cases {
            let g = graph_of(items, None, |_| Op::Concat { axis });
            for batch in [1, 3] {
                check_node(&g, 0, batch_of(items, batch), None, 1e-2);
            }
        }
    }

    #[test]
    fn permute_matches_finite_differences() {
        for perm in [vec![1, 0], vec![2, 0, 1], vec![1, 2, 0], vec![0, 2, 1]] {
            let item: &[usize] = if perm.len() == 2 { &[3, 5] } else { &[2, 3, 5] };
            let g = graph_of(&[item], None, |_| Op::Permute { perm: perm.clone() });
            for batch in [1, 3] {
                check_node(&g, 0, batch_of(&[item], batch), None, 1e-2);
            }
        }
    }

    #[test]
    fn repeat_vector_matches_finite_differences() {
        for n in [1, 4] {
            let g = graph_of(&[&[5]], None, |_| Op::RepeatVector { n });
            for batch in [1, 3] {
                check_node(&g, 0, batch_of(&[&[5]], batch), None, 1e-2);
            }
        }
    }
}
