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

pub mod bench;
pub mod cpu;
pub mod data;
pub mod error;
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

pub use error::{Error, Result};
pub use input::PreparedInput;
pub use model::{Backend, Model};
