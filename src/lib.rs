//! wgnn runs Keras-trained convolutional and recurrent networks on any GPU through wgpu, and on
//! the CPU through an ndarray reference path that every GPU result is tested against.
//!
//! ```no_run
//! use wgnn::{Backend, Model};
//! let model = Model::load("models/cifar10_vgg6.keras")?;
//! let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 32, 32, 3]));
//! let probs = model.predict(x.view(), Backend::Cpu)?;
//! # Ok::<(), wgnn::Error>(())
//! ```

// Timing and dataset evaluation read the clock (`std::time::Instant`, absent in WebAssembly) and
// draw progress bars; the browser build times in JavaScript.
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod cpu;
pub mod data;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod eval;
pub mod gpu;
pub mod graph;
pub mod input;
pub mod keras;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod text;
pub mod train;
/// The JavaScript API of the browser build (`web/build.sh`).
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use error::{Error, Result};
pub use input::PreparedInput;
pub use model::{Backend, Model};
