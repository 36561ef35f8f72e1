//! `.npy` input and output for the CLI and tests, through npyz.

use std::io::BufWriter;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use npyz::{DType, TypeChar, WriterBuilder};

use crate::error::{Error, Result};

/// An `.npy` array as read: floats, or integers (token ids).
#[derive(Debug, Clone)]
pub enum NpyArray {
    Float(ArrayD<f32>),
    Int(ArrayD<i64>),
}

impl NpyArray {
    pub fn shape(&self) -> &[usize] {
        match self {
            NpyArray::Float(a) => a.shape(),
            NpyArray::Int(a) => a.shape(),
        }
    }
}

/// Reads a C-ordered `.npy` of float32/float64 or any integer type.
pub fn read(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .map_err(|e| Error::format(path, format!("not a valid .npy file: {e}")))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() == npyz::Order::Fortran && shape.len() > 1 {
        return Err(Error::format(
            path,
            "Fortran-ordered arrays are not supported (save with np.ascontiguousarray)",
        ));
    }
    let dtype = npy.dtype();
    let bad = |e: std::io::Error| Error::format(path, format!("corrupt .npy data: {e}"));
    let (tc, size) = match &dtype {
        DType::Plain(t) => (t.type_char(), t.size_field()),
        other => {
            return Err(Error::format(
                path,
                format!("unsupported dtype {}", other.descr()),
            ));
        }
    };
    let array = match (tc, size) {
        (TypeChar::Float, 4) => {
            NpyArray::Float(to_array(path, &shape, npy.into_vec::<f32>().map_err(bad)?)?)
        }
        (TypeChar::Float, 8) => NpyArray::Float(to_array(
            path,
            &shape,
            npy.into_vec::<f64>()
                .map_err(bad)?
                .into_iter()
                .map(|v| v as f32)
                .collect(),
        )?),
        (TypeChar::Int, 1) => ints(path, &shape, npy.into_vec::<i8>().map_err(bad)?)?,
        (TypeChar::Int, 2) => ints(path, &shape, npy.into_vec::<i16>().map_err(bad)?)?,
        (TypeChar::Int, 4) => ints(path, &shape, npy.into_vec::<i32>().map_err(bad)?)?,
        (TypeChar::Int, 8) => ints(path, &shape, npy.into_vec::<i64>().map_err(bad)?)?,
        (TypeChar::Uint, 1) => ints(path, &shape, npy.into_vec::<u8>().map_err(bad)?)?,
        (TypeChar::Uint, 2) => ints(path, &shape, npy.into_vec::<u16>().map_err(bad)?)?,
        (TypeChar::Uint, 4) => ints(path, &shape, npy.into_vec::<u32>().map_err(bad)?)?,
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "unsupported dtype {} (expected float32, float64 or an integer type)",
                    dtype.descr()
                ),
            ))
        }
    };
    Ok(array)
}

fn to_array<T>(path: &Path, shape: &[usize], values: Vec<T>) -> Result<ArrayD<T>> {
    ArrayD::from_shape_vec(IxDyn(shape), values)
        .map_err(|e| Error::format(path, format!("data does not fill shape {shape:?}: {e}")))
}

fn ints<T: Into<i64>>(path: &Path, shape: &[usize], values: Vec<T>) -> Result<NpyArray> {
    Ok(NpyArray::Int(to_array(
        path,
        shape,
        values.into_iter().map(Into::into).collect(),
    )?))
}

/// Writes a float32 `.npy`.
pub fn write_f32(path: &Path, array: &ArrayD<f32>) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let shape: Vec<u64> = array.shape().iter().map(|&d| d as u64).collect();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(|e| Error::io(path, e))?;
    writer
        .extend(array.as_standard_layout().iter().copied())
        .map_err(|e| Error::io(path, e))?;
    writer.finish().map_err(|e| Error::io(path, e))?;
    Ok(())
}
