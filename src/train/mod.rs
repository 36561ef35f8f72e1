//! Training on the CPU reference path, exact to Keras 3's `fit` with the TensorFlow backend.
//!
//! A training step runs the graph forward in training mode keeping every value (`step`), starts
//! the backward sweep from the loss's gradient (`loss`), runs each node's backward rule in
//! reverse order (the rules live beside the CPU forward, in `cpu::grad`), sums the gradients of
//! values that feed several nodes, adds the regularizers' gradients, and hands the parameter
//! gradients to the optimizer (`optim`).

pub mod compile;
pub mod fit;
pub mod grads;
pub mod init;
pub mod loss;
pub mod optim;
// plotters and its embedded font are native-only dependencies (see Cargo.toml).
#[cfg(not(target_arch = "wasm32"))]
pub mod plot;
pub mod rng;
pub mod schedule;
pub mod step;
pub mod train_metrics;

pub use grads::ParamGrads;
pub use rng::Rng;

pub use fit::{
    EpochLog, Evaluated, History, Observer, Quiet, Shuffle, TrainBackend, TrainConfig, TrainData,
    Trainer,
};
pub use loss::Loss;
pub use step::{Evaluation, StepResult, TrainGraph};
