//! One error type for the whole crate. Every variant names what a user needs to find the problem:
//! the file, the layer and the field, where they are known.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in wgnn. `Display` is one line; the CLI prints it as `error: ...`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file is not what it claims to be (not a zip, not JSON, corrupt HDF5, bad npy ...).
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },

    /// A layer's configuration is invalid or unsupported: names the file, the layer and the field.
    #[error("{}: layer '{layer}' ({class}): {field}: {message}", path.display())]
    Layer {
        path: PathBuf,
        layer: String,
        class: String,
        field: String,
        message: String,
    },

    /// A layer's weights are missing, extra or of the wrong shape.
    #[error("{}: layer '{layer}': weights: {message}", path.display())]
    Weights {
        path: PathBuf,
        layer: String,
        message: String,
    },

    /// The input given to `predict` does not fit the model.
    #[error("input: {0}")]
    Input(String),

    /// No usable GPU, or the GPU failed.
    #[error("gpu: {0}")]
    Gpu(String),

    /// A dataset file is malformed.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },

    /// A broken internal invariant: a bug in wgnn, not bad input.
    #[error("internal error: {0}")]
    Internal(String),

    /// Training cannot start or cannot go on: a layer without a backward, a loss that does not
    /// fit the output, a NaN loss (naming the epoch and step) ...
    #[error("train: {0}")]
    Train(String),

    /// A command-line usage problem found after argument parsing.
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn format(path: &Path, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub fn data(path: &Path, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
