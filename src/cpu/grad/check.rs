//! Finite-difference checks of backward rules (tests only). For one node, the scalar
//! L = Σ_i <r_i, y_i> with fixed random cotangents r_i is differentiated two ways: by the rule
//! (`backward` with dy_i = r_i) and by central differences of the f32 forward, accumulated in
//! f64, at a few coordinates of every float input and trainable parameter and along one random
//! direction of each. Every forward reuses the same seed, so dropout draws the same mask.

use ndarray::{Array2, ArrayD};

use super::{backward, forward, NodeIo};
use crate::cpu::Tensor;
use crate::graph::*;
use crate::train::{ParamGrads, Rng};

/// How a check went: the worst relative error seen, for messages.
#[derive(Debug)]
pub(crate) struct Report {
    pub worst: f64,
    pub checked: usize,
}

/// Deterministic uniform values in [-scale, scale] for test inputs.
pub(crate) fn uniform(shape: &[usize], seed: u64, scale: f32) -> ArrayD<f32> {
    let mut rng = Rng::new(seed);
    ArrayD::from_shape_fn(ndarray::IxDyn(shape), |_| {
        (rng.uniform() * 2.0 - 1.0) * scale
    })
}

fn loss(
    graph: &Graph,
    node: &Node,
    inputs: &[Tensor],
    mask: Option<&Array2<bool>>,
    cot: &[ArrayD<f32>],
    seed: u64,
) -> f64 {
    let fw = forward(graph, node, inputs, mask, &mut Rng::new(seed)).expect("forward");
    fw.outputs
        .iter()
        .zip(cot)
        .map(|(y, r)| match y {
            Tensor::F32(y) => y
                .iter()
                .zip(r.iter())
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>(),
            _ => 0.0,
        })
        .sum()
}

/// Checks node `index` of `graph` on `inputs` (one per data input); panics with the tensor,
/// coordinate and both values when |fd − analytic| > atol + rtol·|analytic|, where atol is
/// `rtol` times the largest analytic gradient of that tensor. Float inputs and trainable
/// parameters are all checked.
pub(crate) fn check_node(
    graph: &Graph,
    index: usize,
    inputs: Vec<Tensor>,
    mask: Option<&Array2<bool>>,
    rtol: f64,
) -> Report {
    let node = &graph.nodes[index];
    let seed = 7;
    let fw = forward(graph, node, &inputs, mask, &mut Rng::new(seed)).expect("forward");
    let cot: Vec<ArrayD<f32>> = fw
        .outputs
        .iter()
        .enumerate()
        .map(|(i, y)| match y {
            Tensor::F32(y) => uniform(y.shape(), 100 + i as u64, 1.0),
            _ => ArrayD::zeros(ndarray::IxDyn(&[0])),
        })
        .collect();
    let needs: Vec<bool> = inputs.iter().map(|t| matches!(t, Tensor::F32(_))).collect();
    let mut grads = ParamGrads::new(&graph.params);
    let input_refs: Vec<&Tensor> = inputs.iter().collect();
    let output_refs: Vec<&Tensor> = fw.outputs.iter().collect();
    let io = NodeIo {
        graph,
        node,
        inputs: &input_refs,
        outputs: &output_refs,
        mask,
        saved: &fw.saved,
        needs: &needs,
    };
    let dys: Vec<Option<ArrayD<f32>>> = cot.iter().cloned().map(Some).collect();
    let dxs = backward(&io, &dys, &mut grads).expect("backward");
    assert_eq!(dxs.len(), inputs.len(), "one gradient per data input");

    let mut report = Report {
        worst: 0.0,
        checked: 0,
    };
    // Inputs.
    for (k, input) in inputs.iter().enumerate() {
        let Tensor::F32(x) = input else { continue };
        let g = dxs[k]
            .as_ref()
            .unwrap_or_else(|| panic!("node '{}': no gradient for input {k}", node.name));
        assert_eq!(g.shape(), x.shape(), "input {k} gradient shape");
        let eval = |xp: &ArrayD<f32>| {
            let mut ins = inputs.clone();
            ins[k] = Tensor::F32(xp.clone());
            loss(graph, node, &ins, mask, &cot, seed)
        };
        compare(&format!("input {k}"), x, g, eval, rtol, &mut report);
    }
    // Trainable parameters.
    for id in node.op.params() {
        if !graph.params.param(id).trainable {
            continue;
        }
        let w = graph.params.get(id).to_owned();
        let name = graph.params.param(id).name.clone();
        let g = grads
            .get(id)
            .unwrap_or_else(|| panic!("node '{}': no gradient for '{name}'", node.name))
            .clone();
        assert_eq!(g.shape(), w.shape(), "'{name}' gradient shape");
        let eval = |wp: &ArrayD<f32>| {
            let mut g2 = graph.clone();
            *g2.params.get_mut(id) = wp.clone();
            loss(&g2, &g2.nodes[index], &inputs, mask, &cot, seed)
        };
        compare(&name, &w, &g, eval, rtol, &mut report);
    }
    report
}

fn compare(
    what: &str,
    x: &ArrayD<f32>,
    g: &ArrayD<f32>,
    eval: impl Fn(&ArrayD<f32>) -> f64,
    rtol: f64,
    report: &mut Report,
) {
    let n = x.len();
    if n == 0 {
        return;
    }
    let gmax = g.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    let atol = rtol * gmax.max(1e-3);
    let h_for = |v: f32| 1e-2 * (v.abs() as f64).max(0.1);
    let mut rng = Rng::new(n as u64);
    // A few coordinates (all of them when small) ...
    let coords: Vec<usize> = if n <= 24 {
        (0..n).collect()
    } else {
        (0..24).map(|_| rng.below(n)).collect()
    };
    for &c in &coords {
        let v = x.as_slice_memory_order().expect("contiguous")[c];
        let h = h_for(v);
        let mut xp = x.clone();
        xp.as_slice_memory_order_mut().expect("contiguous")[c] = (v as f64 + h) as f32;
        let hp = xp.as_slice_memory_order().expect("contiguous")[c] as f64 - v as f64;
        let up = eval(&xp);
        xp.as_slice_memory_order_mut().expect("contiguous")[c] = (v as f64 - h) as f32;
        let hm = v as f64 - xp.as_slice_memory_order().expect("contiguous")[c] as f64;
        let down = eval(&xp);
        let fd = (up - down) / (hp + hm);
        let an = g.as_slice_memory_order().expect("contiguous")[c] as f64;
        let err = (fd - an).abs();
        report.worst = report.worst.max(err / (atol + an.abs()));
        report.checked += 1;
        assert!(
            err <= atol + rtol * an.abs(),
            "{what}[{c}]: finite difference {fd:.6e}, backward {an:.6e} (|Δ| {err:.2e})"
        );
    }
    // ... and one random direction through all of them.
    let dir = uniform(x.shape(), 999 + n as u64, 1.0);
    let norm = dir.iter().map(|&d| d as f64 * d as f64).sum::<f64>().sqrt();
    let scale = x.iter().fold(0.1f64, |m, &v| m.max(v.abs() as f64));
    let h = 1e-2 * scale / norm.max(1e-12) * (n as f64).sqrt();
    let shifted = |s: f64| {
        let mut xp = x.clone();
        xp.zip_mut_with(&dir, |v, &d| *v = (*v as f64 + s * d as f64) as f32);
        eval(&xp)
    };
    let fd = (shifted(h) - shifted(-h)) / (2.0 * h);
    let an: f64 = g
        .iter()
        .zip(dir.iter())
        .map(|(&a, &d)| a as f64 * d as f64)
        .sum();
    let tol = rtol * (an.abs() + gmax * norm / (n as f64).sqrt() * 4.0 + 1e-6);
    assert!(
        (fd - an).abs() <= tol,
        "{what} along a random direction: finite difference {fd:.6e}, backward {an:.6e}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph_with(shape: &[usize], op: impl FnOnce(&mut ParamStore) -> Op) -> Graph {
        let mut g = Graph::new("t");
        let x = g.add_input("x", shape.to_vec(), DType::F32);
        let op = op(&mut g.params);
        let y = g.add_node("n", "Test", op, &[x], None).expect("shape");
        g.add_output("y", y[0]);
        g
    }

    #[test]
    fn dense_backward_matches_finite_differences() {
        let g = graph_with(&[3, 5], |p| {
            let kernel = p.add("n/kernel", uniform(&[5, 4], 1, 0.5), true);
            let bias = p.add("n/bias", uniform(&[4], 2, 0.5), true);
            Op::Dense(Dense {
                units: 4,
                in_features: 5,
                kernel,
                bias: Some(bias),
                activation: Activation::Linear,
            })
        });
        let x = Tensor::F32(uniform(&[2, 3, 5], 3, 1.0));
        let r = check_node(&g, 0, vec![x], None, 1e-2);
        assert!(r.checked > 0);
    }

    #[test]
    fn every_activation_matches_finite_differences() {
        use Activation::*;
        let acts = [
            Linear,
            Activation::RELU,
            Relu {
                negative_slope: 0.2,
                max_value: Some(0.7),
                threshold: 0.1,
            },
            Relu {
                negative_slope: 0.3,
                max_value: None,
                threshold: 0.0,
            },
            Sigmoid,
            HardSigmoid,
            HardSigmoidKeras2,
            Tanh,
            Softmax,
            Elu { alpha: 0.7 },
            Selu,
            Silu,
            Softplus,
            Softsign,
            Exponential,
            Gelu { approximate: false },
            Gelu { approximate: true },
            Mish,
            Celu { alpha: 1.3 },
            HardSilu,
            HardTanh,
            HardShrink { threshold: 0.3 },
            SoftShrink { threshold: 0.3 },
            TanhShrink,
            SparsePlus,
            SparseSigmoid,
            Squareplus { b: 4.0 },
            LogSigmoid,
            LogSoftmax,
        ];
        for act in acts {
            let g = graph_with(&[7], |_| Op::Activation(act));
            // Inputs away from the kinks at 0, ±0.1, ±0.3, ±1, ±3 and 0.7.
            let mut x = uniform(&[5, 7], 11, 2.5);
            x.mapv_inplace(|v| {
                let kinks = [0.0f32, 0.1, -0.1, 0.3, -0.3, 0.7, 1.0, -1.0, 3.0, -3.0];
                if kinks.iter().any(|k| (v - k).abs() < 0.05) {
                    v + 0.11
                } else {
                    v
                }
            });
            let r =
                std::panic::catch_unwind(|| check_node(&g, 0, vec![Tensor::F32(x)], None, 1e-2));
            assert!(r.is_ok(), "activation {act:?}");
        }
    }

    #[test]
    fn dropout_backward_uses_the_forward_mask() {
        for kind in [
            DropoutKind::Dropout,
            DropoutKind::GaussianDropout,
            DropoutKind::GaussianNoise { stddev: 0.3 },
            DropoutKind::AlphaDropout,
        ] {
            let g = graph_with(&[4, 6], |_| {
                Op::Dropout(Dropout {
                    kind,
                    rate: 0.4,
                    shared_axes: vec![0],
                })
            });
            let x = Tensor::F32(uniform(&[3, 4, 6], 5, 1.0));
            check_node(&g, 0, vec![x], None, 1e-2);
        }
    }
}
