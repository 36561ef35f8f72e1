//! Gradients against real Keras: every case of tests/fixtures/train/grad (made by
//! tools/train_fixtures.py with tf.GradientTape inside a tf.function, as Keras's train_step
//! computes them) — the loss, the gradient of every trainable weight and of every float input
//! at relative L2 error ≤ 1e-4 per tensor, the training-mode outputs and the updated moving
//! statistics within 1e-4·(1 + |expected|).

mod common;

use common::grad_fixtures::{case_names, max_excess, rel_l2, GradCase};
use ndarray::ArrayD;
use wgnn::train::{Rng, TrainGraph};

/// Runs one case; Err(why) names the first tensor off.
fn check_case(name: &str) -> Result<String, String> {
    let case = GradCase::load(name)?;
    let graph = case.model.graph();
    let (inputs, targets) = (&case.inputs, &case.targets);
    let (losses, loss_weights) = (&case.losses, &case.loss_weights);
    let get = |key: &str| case.get(key);
    let tg = TrainGraph::with_input_gradients(graph).map_err(|e| e.to_string())?;
    let (result, state, dxs) = tg
        .compute_with_inputs(inputs, targets, losses, loss_weights, &mut Rng::new(0))
        .map_err(|e| e.to_string())?;

    case.check_loss(result.loss)?;
    let mut worst = case.check_param_grads(|id| result.grads.get(id).cloned())?;
    for (i, dx) in dxs.iter().enumerate() {
        if let Some(expected) = get(&format!("dx{i}")) {
            let got = dx
                .clone()
                .unwrap_or_else(|| ArrayD::zeros(expected.raw_dim()));
            let e = rel_l2(&got, &expected);
            worst = worst.max(e);
            if e > 1e-4 {
                return Err(format!("dx{i}: relative L2 error {e:.2e}"));
            }
        }
    }
    for (i, out) in result.outputs.iter().enumerate() {
        if let Some(expected) = get(&format!("out{i}")) {
            let x = max_excess(out, &expected);
            if x > 1.0 {
                return Err(format!("out{i}: {x:.1}x the tolerance"));
            }
        }
    }
    // Moving statistics after the training-mode call, in non-trainable order.
    let non_trainable: Vec<_> = graph.params.iter().filter(|(_, p)| !p.trainable).collect();
    let mut s = 0;
    while let Some(expected) = get(&format!("state{s}")) {
        let (id, p) = non_trainable.get(s).ok_or(format!(
            "Keras has state{s}, wgnn fewer non-trainable weights"
        ))?;
        let got = state
            .iter()
            .find(|(sid, _)| sid == id)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| p.value.clone());
        let x = max_excess(&got, &expected);
        if x > 1.0 {
            return Err(format!("state{s} ({}): {x:.1}x the tolerance", p.name));
        }
        s += 1;
    }
    Ok(format!("worst relative L2 {worst:.1e}"))
}

#[test]
fn gradients_match_keras_for_every_fixture() {
    let names = case_names();
    let mut failures = Vec::new();
    for name in &names {
        match check_case(name) {
            Ok(note) => println!("ok   {name}: {note}"),
            Err(why) => {
                println!("FAIL {name}: {why}");
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Keras:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}
