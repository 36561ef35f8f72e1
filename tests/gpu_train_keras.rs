//! GPU gradients against real Keras: every case of tests/fixtures/train/grad runs through the
//! GPU training plan (forward, loss, backward; no update). Each case either matches Keras —
//! the loss within 1e-4·(1 + |keras|), every trainable weight's gradient at relative L2 error
//! ≤ 1e-4 — or is refused up front with a one-line error naming the layer or option that GPU
//! training does not support yet. Never a wrong answer.
//!
//! Without a GPU adapter this fails when env `CI` is set and prints a note otherwise.

mod common;

use common::grad_fixtures::{case_names, GradCase};
use wgnn::gpu::train::{GpuTrainer, StepSpec};
use wgnn::train::TrainGraph;

enum Outcome {
    Matched(f64),
    Refused(String),
    NoAdapter,
}

fn run_case(name: &str) -> Result<Outcome, String> {
    let case = GradCase::load(name)?;
    let graph = case.model.graph();
    let tg = TrainGraph::new(graph).map_err(|e| e.to_string())?;
    let spec = StepSpec {
        losses: &case.losses,
        loss_weights: &case.loss_weights,
        optimizer: None,
    };
    let mut gpu = match GpuTrainer::new(&tg, 0, None) {
        Ok(g) => g,
        Err(e) if common::no_adapter_outside_ci(&e) => return Ok(Outcome::NoAdapter),
        Err(e) => return Err(format!("creating the trainer: {e}")),
    };
    let (losses, grads) = match gpu.gradients(
        &tg,
        &spec,
        &case.inputs,
        &case.targets,
        &mut wgnn::train::Rng::new(1),
    ) {
        Ok(r) => r,
        Err(wgnn::Error::Train(why)) => return Ok(Outcome::Refused(why)),
        Err(e) => return Err(e.to_string()),
    };
    case.check_loss(losses.total(&case.loss_weights))?;
    let worst =
        case.check_param_grads(|id| grads.iter().find(|(p, _)| *p == id).map(|(_, g)| g.clone()))?;
    Ok(Outcome::Matched(worst))
}

#[test]
fn gpu_gradients_match_keras_or_are_refused_for_every_fixture() {
    let names = case_names();
    let mut matched = Vec::new();
    let mut refused = Vec::new();
    let mut failures = Vec::new();
    for name in &names {
        match run_case(name) {
            Ok(Outcome::Matched(worst)) => {
                println!("ok      {name}: worst relative L2 {worst:.1e}");
                matched.push(name.clone());
            }
            Ok(Outcome::Refused(why)) => {
                assert!(
                    !why.contains('\n') && why.contains("--backend cpu"),
                    "{name}: a refusal must be one line pointing to the CPU path: {why}"
                );
                println!("refused {name}: {why}");
                refused.push(name.clone());
            }
            Ok(Outcome::NoAdapter) => return,
            Err(why) => {
                println!("FAIL    {name}: {why}");
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    println!(
        "{} of {} cases match Keras on the GPU, {} refused",
        matched.len(),
        names.len(),
        refused.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Keras on the GPU:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
    // The families GPU training supports must not regress into refusals.
    for must in ["dense", "conv2d_same", "maxpool2d", "avgpool2d_valid"] {
        assert!(
            matched.iter().any(|n| n.starts_with(must)),
            "no '{must}' case matched on the GPU"
        );
    }
}
