//! GPU training of the shape / elementwise ops against the CPU reference path: ZeroPadding and
//! Cropping 1D/2D/3D, Permute, RepeatVector, nearest and bilinear UpSampling, Rescaling,
//! operator nodes with a constant, the adapted Normalization layer, and the padding mask
//! (no gradient). Each op runs after a trainable layer, so its backward feeds both a parameter
//! gradient and the input's, from given output gradients (`Mode::Seeded`) at batch 1 and 33
//! and sizes that are not multiples of 4; every gradient must match the CPU's within
//! 1e-4·(1 + |cpu|).
//!
//! Without a GPU adapter these tests fail when env `CI` is set and print a note otherwise.

mod common;
mod gpu_support;

use gpu_support::{check_backward, float_input, Chain, Rng};
use ndarray::ArrayD;
use wgnn::graph::*;
use wgnn::PreparedInput;

const BATCHES: [usize; 2] = [1, 33];

/// Input (`item`) -> Dense to `channels` on the last axis -> `op`: both the Dense parameters'
/// and the input's gradients flow through the op's backward. False when there is no GPU.
fn after_dense(what: &str, item: &[usize], channels: usize, class: &str, op: Op) -> bool {
    for batch in BATCHES {
        let mut rng = Rng::new(11 + batch as u64);
        let graph = Chain::float(item)
            .dense(&mut rng, "d", channels, Activation::Tanh)
            .op("op", class, op.clone())
            .build();
        let x = float_input(&mut rng, batch, item, 1.0);
        if !check_backward(&format!("{what}, batch {batch}"), &graph, &[x], true) {
            return false;
        }
    }
    true
}

#[test]
fn zero_padding_backward_matches_cpu() {
    let cases: [(&[usize], Vec<[usize; 2]>); 4] = [
        (&[5, 3], vec![[1, 2], [0, 0]]),
        (&[3, 5, 2], vec![[2, 1], [0, 3], [0, 0]]),
        (&[3, 5, 2], vec![[0, 0], [1, 1], [0, 0]]),
        (&[2, 3, 2, 3], vec![[1, 0], [0, 2], [1, 1], [0, 0]]),
    ];
    for (item, pads) in cases {
        let what = format!("zero padding {pads:?} of {item:?}");
        let channels = *item.last().unwrap();
        if !after_dense(&what, item, channels, "ZeroPadding", Op::Pad { pads }) {
            return;
        }
    }
}

#[test]
fn cropping_backward_matches_cpu() {
    let cases: [(&[usize], Vec<[usize; 2]>); 4] = [
        (&[7, 3], vec![[1, 2], [0, 0]]),
        (&[6, 7, 2], vec![[2, 1], [0, 3], [0, 0]]),
        (&[5, 6, 3], vec![[0, 0], [1, 1], [0, 0]]),
        (&[4, 5, 3, 3], vec![[1, 0], [0, 2], [1, 1], [0, 0]]),
    ];
    for (item, crops) in cases {
        let what = format!("cropping {crops:?} of {item:?}");
        let channels = *item.last().unwrap();
        if !after_dense(&what, item, channels, "Cropping", Op::Crop { crops }) {
            return;
        }
    }
}

#[test]
fn permute_backward_matches_cpu() {
    let cases: [(&[usize], Vec<usize>); 5] = [
        (&[5, 3], vec![1, 0]),
        (&[3, 5, 7], vec![2, 0, 1]),
        (&[3, 5, 7], vec![1, 2, 0]),
        (&[3, 5, 7], vec![0, 2, 1]),
        (&[2, 3, 5, 3], vec![3, 1, 0, 2]),
    ];
    for (item, perm) in cases {
        let what = format!("permute {perm:?} of {item:?}");
        let channels = *item.last().unwrap();
        if !after_dense(&what, item, channels, "Permute", Op::Permute { perm }) {
            return;
        }
    }
}

#[test]
fn repeat_vector_backward_matches_cpu() {
    for n in [1, 3, 7] {
        let what = format!("repeat vector x{n}");
        let op = Op::RepeatVector { n };
        if !after_dense(&what, &[6], 5, "RepeatVector", op) {
            return;
        }
    }
}

#[test]
fn nearest_upsampling_backward_matches_cpu() {
    let cases: [(&[usize], Vec<usize>); 5] = [
        (&[5, 3], vec![2, 1]),
        (&[5, 3], vec![3, 1]),
        (&[3, 5, 2], vec![2, 3, 1]),
        (&[3, 2, 3], vec![1, 1, 1]),
        (&[2, 3, 2, 3], vec![2, 1, 3, 1]),
    ];
    for (item, factors) in cases {
        let what = format!("nearest upsampling {factors:?} of {item:?}");
        let channels = *item.last().unwrap();
        let op = Op::Upsample {
            factors,
            interpolation: Interpolation::Nearest,
        };
        if !after_dense(&what, item, channels, "UpSampling", op) {
            return;
        }
    }
}

#[test]
fn bilinear_upsampling_backward_matches_cpu() {
    let cases: [(&[usize], [usize; 2]); 5] = [
        (&[3, 5, 2], [2, 2]),
        (&[4, 3, 3], [3, 2]),
        (&[5, 2, 1], [1, 4]),
        (&[1, 1, 3], [3, 5]),
        (&[3, 3, 5], [7, 1]),
    ];
    for (item, [fh, fw]) in cases {
        let what = format!("bilinear upsampling {fh}x{fw} of {item:?}");
        let channels = *item.last().unwrap();
        let op = Op::Upsample {
            factors: vec![fh, fw, 1],
            interpolation: Interpolation::Bilinear,
        };
        if !after_dense(&what, item, channels, "UpSampling2D", op) {
            return;
        }
    }
}

#[test]
fn bilinear_upsampling_after_a_convolution_matches_cpu() {
    for batch in BATCHES {
        let mut rng = Rng::new(5 + batch as u64);
        let graph = Chain::float(&[5, 6, 2])
            .conv(
                &mut rng,
                "conv",
                3,
                [3, 3],
                [1, 1],
                Padding::Same,
                Activation::Linear,
                true,
            )
            .op(
                "up",
                "UpSampling2D",
                Op::Upsample {
                    factors: vec![3, 2, 1],
                    interpolation: Interpolation::Bilinear,
                },
            )
            .build();
        let x = float_input(&mut rng, batch, &[5, 6, 2], 1.0);
        if !check_backward(
            &format!("conv -> bilinear, batch {batch}"),
            &graph,
            &[x],
            true,
        ) {
            return;
        }
    }
}

#[test]
fn rescaling_backward_matches_cpu() {
    let cases: [(&[usize], Vec<f32>, Vec<f32>); 4] = [
        (&[7], vec![0.5], vec![-1.0]),
        (&[7], vec![1.0, -2.0, 0.25, 3.0, 0.1, -0.7, 1.5], vec![0.0]),
        (&[3, 5], vec![1.0 / 255.0], vec![0.3, 0.1, -0.2, 0.0, 2.0]),
        (&[2, 3, 5], vec![2.0, -1.0, 0.5, 1.0, 4.0], vec![1.0]),
    ];
    for (item, scale, offset) in cases {
        let what = format!("rescaling by {scale:?} of {item:?}");
        let channels = *item.last().unwrap();
        let op = Op::Rescaling { scale, offset };
        if !after_dense(&what, item, channels, "Rescaling", op) {
            return;
        }
    }
}

const BINARY_OPS: [BinaryOp; 6] = [
    BinaryOp::Add,
    BinaryOp::Subtract,
    BinaryOp::Multiply,
    BinaryOp::Divide,
    BinaryOp::Maximum,
    BinaryOp::Minimum,
];

#[test]
fn scalar_operator_backward_matches_cpu() {
    // Dense (tanh) -> x + 2 -> the op: x in (1, 3), so c / x stays well conditioned.
    let shift = Op::Scalar(ScalarOp {
        op: BinaryOp::Add,
        value: 2.0,
        scalar_first: false,
    });
    for op in BINARY_OPS {
        for scalar_first in [false, true] {
            let s = ScalarOp {
                op,
                value: 1.7,
                scalar_first,
            };
            for batch in BATCHES {
                let mut rng = Rng::new(23 + batch as u64);
                let graph = Chain::float(&[3, 5])
                    .dense(&mut rng, "d", 7, Activation::Tanh)
                    .op("shift", "TFOpLambda", shift.clone())
                    .op("op", "TFOpLambda", Op::Scalar(s))
                    .build();
                let x = float_input(&mut rng, batch, &[3, 5], 1.0);
                let what = format!("{op:?} 1.7 (constant first: {scalar_first}), batch {batch}");
                if !check_backward(&what, &graph, &[x], true) {
                    return;
                }
            }
        }
    }
}

#[test]
fn scalar_maximum_and_minimum_split_ties_as_the_cpu() {
    // The constant itself among the inputs: which argument wins a tie decides dx there.
    let c = 0.5;
    for op in [BinaryOp::Maximum, BinaryOp::Minimum] {
        for scalar_first in [false, true] {
            let s = ScalarOp {
                op,
                value: c,
                scalar_first,
            };
            let graph = Chain::float(&[9])
                .op("op", "TFOpLambda", Op::Scalar(s))
                .build();
            let mut rng = Rng::new(17);
            let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[5, 9]), |i| {
                if (i[0] + i[1]) % 3 == 0 {
                    c
                } else {
                    rng.uniform(-1.0, 1.0)
                }
            });
            let what = format!("{op:?} with ties (constant first: {scalar_first})");
            if !check_backward(&what, &graph, &[PreparedInput::Float(x)], true) {
                return;
            }
        }
    }
}

/// The adapted Normalization layer's mean and variance (not trainable), shaped `weight`.
/// With `floor`, one variance is 0, so the deviation's floor (epsilon) takes its place.
fn normalization(
    chain: &mut Chain,
    rng: &mut Rng,
    weight: &[usize],
    invert: bool,
    floor: bool,
) -> Op {
    let mean = chain
        .graph
        .params
        .add("norm/mean", rng.array(weight, 1.0), false);
    let mut var = rng.array(weight, 1.0).mapv(|v| v * v + 0.05);
    if let Some(first) = var.iter_mut().next().filter(|_| floor) {
        *first = 0.0;
    }
    let variance = chain.graph.params.add("norm/variance", var, false);
    Op::Normalization(Normalization {
        mean,
        variance,
        count: None,
        invert,
    })
}

#[test]
fn normalization_backward_matches_cpu() {
    let cases: [(&[usize], &[usize]); 4] = [
        (&[5], &[5]),
        (&[3, 5], &[1, 5]),
        (&[3, 5], &[3, 1]),
        (&[2, 3, 5], &[2, 1, 5]),
    ];
    for (item, weight) in cases {
        for invert in [false, true] {
            for batch in BATCHES {
                let mut rng = Rng::new(40 + batch as u64);
                let mut chain =
                    Chain::float(item).dense(&mut rng, "d", item[item.len() - 1], Activation::Tanh);
                let op = normalization(&mut chain, &mut rng, weight, invert, true);
                let graph = chain.op("norm", "Normalization", op).build();
                let x = float_input(&mut rng, batch, item, 1.0);
                let what = format!(
                    "normalization {weight:?} of {item:?} (invert {invert}), batch {batch}"
                );
                if !check_backward(&what, &graph, &[x], true) {
                    return;
                }
            }
        }
    }
}

#[test]
fn shape_ops_chained_after_a_convolution_match_cpu() {
    // Conv -> pad -> crop -> nearest upsampling -> permute -> rescaling -> normalization.
    for batch in BATCHES {
        let mut rng = Rng::new(60 + batch as u64);
        let mut chain = Chain::float(&[5, 6, 3])
            .conv(
                &mut rng,
                "conv",
                2,
                [3, 3],
                [1, 1],
                Padding::Valid,
                Activation::Tanh,
                true,
            )
            .op(
                "pad",
                "ZeroPadding2D",
                Op::Pad {
                    pads: vec![[1, 2], [2, 0], [0, 0]],
                },
            )
            .op(
                "crop",
                "Cropping2D",
                Op::Crop {
                    crops: vec![[0, 1], [1, 1], [0, 0]],
                },
            )
            .op(
                "up",
                "UpSampling2D",
                Op::Upsample {
                    factors: vec![2, 3, 1],
                    interpolation: Interpolation::Nearest,
                },
            )
            .op(
                "perm",
                "Permute",
                Op::Permute {
                    perm: vec![1, 0, 2],
                },
            )
            .op(
                "scale",
                "Rescaling",
                Op::Rescaling {
                    scale: vec![0.5, -3.0],
                    offset: vec![1.0],
                },
            );
        let weight = [1, 1, 2];
        let op = normalization(&mut chain, &mut rng, &weight, false, false);
        let graph = chain.op("norm", "Normalization", op).build();
        let x = float_input(&mut rng, batch, &[5, 6, 3], 1.0);
        if !check_backward(&format!("shape chain, batch {batch}"), &graph, &[x], true) {
            return;
        }
    }
}

#[test]
fn a_padding_mask_contributes_no_gradient() {
    // Embedding(mask_zero) makes a PaddingMask node on the ids; the masked average reads it.
    for batch in BATCHES {
        let mut rng = Rng::new(70 + batch as u64);
        let graph = Chain::ids(6)
            .embedding(&mut rng, "embedding", 11, 5, true)
            .op(
                "pool",
                "GlobalAveragePooling1D",
                Op::GlobalPool {
                    op: PoolOp::Average,
                    keepdims: false,
                    rank: 1,
                },
            )
            .dense(&mut rng, "out", 3, Activation::Tanh)
            .build();
        // Padded rows of every length but 0 (an empty row's average is NaN on both sides).
        let PreparedInput::Ids(mut ids) = gpu_support::padded_ids(&mut rng, batch, 6, 11) else {
            unreachable!("padded_ids makes ids")
        };
        for mut row in ids.rows_mut() {
            if row.iter().all(|&id| id == 0) {
                row[0] = 1;
            }
        }
        let ids = PreparedInput::Ids(ids);
        if !check_backward(
            &format!("padding mask, batch {batch}"),
            &graph,
            &[ids],
            false,
        ) {
            return;
        }
    }
}
