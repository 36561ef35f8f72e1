//! `Model` is shared between threads: N threads predicting on one model give exactly the
//! results of sequential calls, on the CPU and on the GPU.

mod common;

use common::{fixture, load_fixture_model, predict_fixture};
use wgnn::Backend;

fn threads_match_sequential(backend: Backend) {
    for name in ["conv2d_stack", "masked_bilstm_sequences"] {
        let fx = fixture(name);
        let model = load_fixture_model(&fx).unwrap();
        let sequential = match predict_fixture(&fx, &model, backend) {
            Err(e) if common::no_adapter_outside_ci(&e) => return,
            other => other.unwrap(),
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..3)
                            .map(|_| predict_fixture(&fx, &model, backend).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                for out in h.join().unwrap() {
                    assert_eq!(
                        out, sequential,
                        "{name} on {backend:?}: a thread's result differs"
                    );
                }
            }
        });
    }
}

#[test]
fn threads_sharing_a_model_match_sequential_calls_on_cpu() {
    threads_match_sequential(Backend::Cpu);
}

#[test]
fn threads_sharing_a_model_match_sequential_calls_on_gpu() {
    threads_match_sequential(Backend::Gpu);
}
