//! Datasets: CIFAR-10 (binary batches) and NusaX-Senti (CSV), where to find them, and how to
//! download them into the cache.
//!
//! Folder rules: `--data DIR`, else env `WGNN_DATA`, else the cache (`$XDG_CACHE_HOME/wgnn` or
//! `~/.cache/wgnn`). The folder holds `cifar10/` and `nusax/`, or a dataset's files directly.

pub mod cache;
pub mod cifar10;
// The HTTP client (ureq) is native only.
#[cfg(not(target_arch = "wasm32"))]
pub mod download;
pub mod nusax;

use std::path::Path;

pub use cache::{cache_dir, DataRoot, DataRootSource, DATA_ENV};
pub use cifar10::Cifar10;
#[cfg(not(target_arch = "wasm32"))]
pub use download::{DownloadOptions, Downloader, RemoteFile};
pub use nusax::Nusax;

use crate::error::{Error, Result};

/// Finds CIFAR-10 by the folder rules (`flag` is `--data`); the error says which folder was
/// searched and why.
pub fn locate_cifar10(flag: Option<&Path>) -> Result<Cifar10> {
    let root = DataRoot::resolve(flag)?;
    Cifar10::locate(&root.path).map_err(|e| explain(e, &root))
}

/// Finds NusaX by the folder rules (`flag` is `--data`).
pub fn locate_nusax(flag: Option<&Path>) -> Result<Nusax> {
    let root = DataRoot::resolve(flag)?;
    Nusax::locate(&root.path).map_err(|e| explain(e, &root))
}

/// Adds where the folder came from to a not-found error.
fn explain(error: Error, root: &DataRoot) -> Error {
    match error {
        Error::Data { path, message } if path == root.path => Error::Data {
            path,
            message: format!("{message} (data folder: {})", root.source_phrase()),
        },
        other => other,
    }
}
