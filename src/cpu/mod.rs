//! CPU reference path on ndarray.
use crate::error::{Error, Result};
use crate::ir::ModelIr;
use crate::model::PreparedInput;
use ndarray::ArrayD;

pub fn run(_ir: &ModelIr, _input: &PreparedInput) -> Result<ArrayD<f32>> {
    Err(Error::Input("CPU path not written yet".into()))
}
