//! GPU backend (wgpu + WGSL). Placeholder until the GPU path lands.

use crate::error::{Error, Result};
use crate::ir::ModelIr;
use crate::model::PreparedInput;
use ndarray::ArrayD;

const NO_ADAPTER: &str = "no GPU adapter found";

/// True when a GPU error message means "there is no adapter" (so `--backend auto` falls back).
pub fn is_no_adapter(message: &str) -> bool {
    message.starts_with(NO_ADAPTER)
}

pub struct GpuRuntime;

impl GpuRuntime {
    pub fn new(_ir: &ModelIr, _adapter: Option<&str>) -> Result<Self> {
        Err(Error::Gpu(format!("{NO_ADAPTER} (the GPU backend is not built yet)")))
    }

    pub fn run(&self, _ir: &ModelIr, _input: &PreparedInput) -> Result<ArrayD<f32>> {
        Err(Error::Gpu(NO_ADAPTER.into()))
    }
}
