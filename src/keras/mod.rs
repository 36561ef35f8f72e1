//! Keras model files to the IR.
use crate::error::{Error, Result};
use crate::ir::ModelIr;
use std::path::Path;

pub fn load(path: &Path, _weights: Option<&Path>) -> Result<ModelIr> {
    Err(Error::format(path, "loader not written yet"))
}
