//! A convolution followed by a pooling that alone reads it runs as one op in [`super::run`]
//! (`pooled_conv`): bit for bit what the two nodes give one after the other, on every path —
//! Winograd on whole images and on bands of large images (fused, or made whole then pooled when
//! a window crosses a band), and im2col — and never when the output is read elsewhere.

use ndarray::ArrayD;

use super::{run, run_node, Tensor};
use crate::cpu::grad::check::uniform;
use crate::graph::*;
use crate::input::PreparedInput;

struct Case {
    item: Vec<usize>,
    kernel: Vec<usize>,
    filters: usize,
    pool: Vec<usize>,
    pool_strides: Vec<usize>,
    pool_padding: Padding,
    op: PoolOp,
    batch: usize,
}

fn case(
    item: &[usize],
    kernel: &[usize],
    filters: usize,
    pool: &[usize],
    strides: &[usize],
) -> Case {
    Case {
        item: item.to_vec(),
        kernel: kernel.to_vec(),
        filters,
        pool: pool.to_vec(),
        pool_strides: strides.to_vec(),
        pool_padding: Padding::Valid,
        op: PoolOp::Max,
        batch: 3,
    }
}

impl Case {
    fn same(mut self) -> Self {
        self.pool_padding = Padding::Same;
        self
    }
    fn average(mut self) -> Self {
        self.op = PoolOp::Average;
        self
    }

    /// Input -> Conv (same padding, bias, relu) -> Pool -> output; with `conv_is_output` the
    /// convolution's output is a graph output too.
    fn graph(&self, conv_is_output: bool) -> Graph {
        let r = self.kernel.len();
        let cin = self.item[r];
        let mut g = Graph::new("t");
        let x = g.add_input("x", self.item.clone(), DType::F32);
        let mut kshape = self.kernel.clone();
        kshape.extend([cin, self.filters]);
        let conv = Op::Conv(Conv {
            filters: self.filters,
            window: Window::new(
                &self.kernel,
                &vec![1; r],
                &vec![1; r],
                Padding::Same,
                &self.item[..r],
            ),
            in_channels: cin,
            groups: 1,
            kernel: g.params.add("c/kernel", uniform(&kshape, 1, 0.5), true),
            bias: Some(
                g.params
                    .add("c/bias", uniform(&[self.filters], 2, 0.5), true),
            ),
            activation: Activation::RELU,
        });
        let y = g
            .add_node("c", "Conv", conv, &[x], None)
            .expect("conv shape")[0];
        let window = Window::new(
            &self.pool,
            &self.pool_strides,
            &vec![1; r],
            self.pool_padding,
            &self.item[..r],
        );
        let pool = Op::Pool(Pool {
            op: self.op,
            window,
            channels: self.filters,
        });
        let z = g
            .add_node("p", "Pool", pool, &[y], None)
            .expect("pool shape")[0];
        g.add_output("z", z);
        if conv_is_output {
            g.add_output("y", y);
        }
        g
    }

    fn input(&self) -> ArrayD<f32> {
        let mut shape = vec![self.batch];
        shape.extend(&self.item);
        uniform(&shape, 3, 1.0)
    }
}

/// The nodes one by one, as the training forward runs them.
fn node_by_node(g: &Graph, x: &ArrayD<f32>) -> Vec<ArrayD<f32>> {
    let mut values: Vec<Option<Tensor>> = vec![None; g.values.len()];
    values[g.inputs[0].value] = Some(Tensor::F32(x.clone()));
    for node in &g.nodes {
        let args = node
            .inputs
            .iter()
            .map(|&v| values[v].clone().expect("computed"))
            .collect();
        let outs = run_node(g, node, args, None).expect("node runs");
        for (&v, t) in node.outputs.iter().zip(outs) {
            values[v] = Some(t);
        }
    }
    g.outputs
        .iter()
        .map(|p| match values[p.value].take() {
            Some(Tensor::F32(y)) => y,
            _ => panic!("a float output"),
        })
        .collect()
}

fn same_bits(a: &ArrayD<f32>, b: &ArrayD<f32>) -> bool {
    a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn a_pooled_convolution_equals_the_two_nodes_bit_for_bit() {
    let cases = [
        // Winograd (3x3, 8+ channels) on groups of whole images, odd sizes.
        case(&[9, 7, 8], &[3, 3], 10, &[2, 2], &[2, 2]),
        case(&[9, 7, 8], &[3, 3], 10, &[3, 3], &[2, 2])
            .same()
            .average(),
        // Winograd on bands of a large image (19 x 20 tiles): 2x2 and 3x3 windows that tile the
        // 12-row bands are pooled per band; 2x2 stride 1 crosses bands, so the whole output is
        // made and then pooled.
        case(&[40, 38, 8], &[3, 3], 9, &[2, 2], &[2, 2]),
        case(&[39, 38, 8], &[3, 3], 9, &[3, 3], &[3, 3])
            .same()
            .average(),
        case(&[40, 38, 8], &[3, 3], 9, &[2, 2], &[1, 1]),
        // im2col: 3 input channels, a 5x5 kernel, Conv1D.
        case(&[11, 9, 3], &[3, 3], 5, &[3, 3], &[2, 2]).same(),
        case(&[12, 10, 4], &[5, 5], 6, &[2, 2], &[2, 2]).average(),
        case(&[17, 8], &[3], 7, &[2], &[2]),
    ];
    for (k, c) in cases.iter().enumerate() {
        let g = c.graph(false);
        assert!(
            super::pooled_conv(&g, 0, &g.last_uses()).is_some(),
            "case {k} fuses"
        );
        let x = c.input();
        let fused = run(&g, &[PreparedInput::Float(x.clone())]).expect("fused run");
        let want = node_by_node(&g, &x);
        assert!(
            same_bits(&fused[0], &want[0]),
            "case {k}: fused output differs"
        );
        let spread = want[0].std(0.0);
        assert!(spread > 1e-2, "case {k}: outputs barely vary ({spread})");
        // The convolution's output is a graph output too: not fused, both outputs right.
        let g = c.graph(true);
        assert!(
            super::pooled_conv(&g, 0, &g.last_uses()).is_none(),
            "case {k}"
        );
        let both = run(&g, &[PreparedInput::Float(x.clone())]).expect("unfused run");
        let want = node_by_node(&g, &x);
        assert!(
            same_bits(&both[0], &want[0]) && same_bits(&both[1], &want[1]),
            "case {k}"
        );
    }
}
