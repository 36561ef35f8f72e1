//! Where datasets live: `--data DIR`, else env `WGNN_DATA`, else the user cache
//! (`$XDG_CACHE_HOME/wgnn` or `~/.cache/wgnn`), where `wgnn download` puts them.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The environment variable naming the data folder.
pub const DATA_ENV: &str = "WGNN_DATA";

/// Which rule chose the data folder (for messages that tell the user what to change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DataRootSource {
    /// The `--data DIR` flag.
    Flag,
    /// Env `WGNN_DATA`.
    Env,
    /// The user cache folder.
    Cache,
}

/// The resolved data folder and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRoot {
    /// A folder holding `cifar10/` and `nusax/`, or a dataset's files directly.
    pub path: PathBuf,
    /// The rule that chose it.
    pub source: DataRootSource,
}

impl DataRoot {
    /// Resolves the data folder: `flag` (from `--data`), else `WGNN_DATA`, else [`cache_dir`].
    pub fn resolve(flag: Option<&Path>) -> Result<DataRoot> {
        if let Some(path) = flag {
            return Ok(DataRoot {
                path: path.to_path_buf(),
                source: DataRootSource::Flag,
            });
        }
        if let Some(path) = std::env::var_os(DATA_ENV).filter(|v| !v.is_empty()) {
            return Ok(DataRoot {
                path: PathBuf::from(path),
                source: DataRootSource::Env,
            });
        }
        Ok(DataRoot {
            path: cache_dir()?,
            source: DataRootSource::Cache,
        })
    }

    /// The folder of one dataset: `<root>/<name>` when it exists, else the root itself (which
    /// then holds the dataset's files directly).
    pub fn dataset_dir(&self, name: &str) -> PathBuf {
        let nested = self.path.join(name);
        if nested.is_dir() {
            nested
        } else {
            self.path.clone()
        }
    }

    /// A phrase for error messages: where the folder came from and how to change it.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.path.display(), self.source_phrase())
    }

    /// Why this folder was chosen, e.g. `from env WGNN_DATA`.
    pub fn source_phrase(&self) -> String {
        match self.source {
            DataRootSource::Flag => "from --data".to_string(),
            DataRootSource::Env => format!("from env {DATA_ENV}"),
            DataRootSource::Cache => {
                format!("the cache; pass --data DIR or set {DATA_ENV} to use another folder")
            }
        }
    }
}

/// wgnn's cache folder: `$XDG_CACHE_HOME/wgnn`, else `$HOME/.cache/wgnn` (`%LOCALAPPDATA%\wgnn`
/// on Windows). Not created here.
pub fn cache_dir() -> Result<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(xdg) = non_empty("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(xdg).join("wgnn"));
    }
    if cfg!(windows) {
        if let Some(local) = non_empty("LOCALAPPDATA") {
            return Ok(PathBuf::from(local).join("wgnn"));
        }
    }
    if let Some(home) = non_empty("HOME").or_else(|| non_empty("USERPROFILE")) {
        return Ok(PathBuf::from(home).join(".cache").join("wgnn"));
    }
    Err(Error::Usage(format!(
        "no cache folder: set XDG_CACHE_HOME or HOME, or pass --data DIR / set {DATA_ENV}"
    )))
}
