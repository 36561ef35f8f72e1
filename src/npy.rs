//! `.npy` input and output for the CLI and tests, through npyz.

use std::io::BufWriter;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use npyz::{DType, TypeChar, WriterBuilder};

use crate::error::{Error, Result};

/// An `.npy` array as read: floats, or integers (token ids). float64 stays float64 so that
/// token ids stored as doubles are checked for integrality before any rounding.
#[derive(Debug, Clone)]
pub enum NpyArray {
    Float(ArrayD<f32>),
    Float64(ArrayD<f64>),
    Int(ArrayD<i64>),
}

impl NpyArray {
    pub fn shape(&self) -> &[usize] {
        match self {
            NpyArray::Float(a) => a.shape(),
            NpyArray::Float64(a) => a.shape(),
            NpyArray::Int(a) => a.shape(),
        }
    }
}

/// Reads an `.npy` of float32/float64 or any integer type (C or Fortran order).
pub fn read(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes).map_err(|message| Error::format(path, message))
}

/// Parses `.npy` bytes (a file, or an entry of an `.npz`); the error is a message without a path.
pub fn parse(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    let npy = npyz::NpyFile::new(bytes).map_err(|e| format!("not a valid .npy file: {e}"))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let fortran = npy.order() == npyz::Order::Fortran;
    let dtype = npy.dtype();
    let bad = |e: std::io::Error| format!("corrupt .npy data: {e}");
    let (tc, size) = match &dtype {
        DType::Plain(t) => (t.type_char(), t.size_field()),
        other => return Err(format!("unsupported dtype {}", other.descr())),
    };
    let array = match (tc, size) {
        (TypeChar::Float, 4) => NpyArray::Float(to_array(
            &shape,
            fortran,
            npy.into_vec::<f32>().map_err(bad)?,
        )?),
        (TypeChar::Float, 8) => NpyArray::Float64(to_array(
            &shape,
            fortran,
            npy.into_vec::<f64>().map_err(bad)?,
        )?),
        (TypeChar::Int, 1) => ints(&shape, fortran, npy.into_vec::<i8>().map_err(bad)?)?,
        (TypeChar::Int, 2) => ints(&shape, fortran, npy.into_vec::<i16>().map_err(bad)?)?,
        (TypeChar::Int, 4) => ints(&shape, fortran, npy.into_vec::<i32>().map_err(bad)?)?,
        (TypeChar::Int, 8) => ints(&shape, fortran, npy.into_vec::<i64>().map_err(bad)?)?,
        (TypeChar::Uint, 1) => ints(&shape, fortran, npy.into_vec::<u8>().map_err(bad)?)?,
        (TypeChar::Uint, 2) => ints(&shape, fortran, npy.into_vec::<u16>().map_err(bad)?)?,
        (TypeChar::Uint, 4) => ints(&shape, fortran, npy.into_vec::<u32>().map_err(bad)?)?,
        (TypeChar::Uint, 8) => {
            let values: Option<Vec<i64>> = npy
                .into_vec::<u64>()
                .map_err(bad)?
                .into_iter()
                .map(|v| i64::try_from(v).ok())
                .collect();
            let values = values.ok_or("a uint64 value is beyond the int64 range")?;
            NpyArray::Int(to_array(&shape, fortran, values)?)
        }
        _ => {
            return Err(format!(
                "unsupported dtype {} (expected float32, float64 or an integer type)",
                dtype.descr()
            ))
        }
    };
    Ok(array)
}

impl NpyArray {
    /// Every value as f32 (weights; token ids stay exact below 2^24).
    pub fn into_f32(self) -> ArrayD<f32> {
        match self {
            NpyArray::Float(a) => a,
            NpyArray::Float64(a) => a.mapv(|v| v as f32),
            NpyArray::Int(a) => a.mapv(|v| v as f32),
        }
    }
}

/// Values in file order to an array. Fortran order is column-major: the C-order array of the
/// reversed shape, transposed.
fn to_array<T: Clone>(
    shape: &[usize],
    fortran: bool,
    values: Vec<T>,
) -> std::result::Result<ArrayD<T>, String> {
    let dims: Vec<usize> = if fortran {
        shape.iter().rev().copied().collect()
    } else {
        shape.to_vec()
    };
    let array = ArrayD::from_shape_vec(IxDyn(&dims), values)
        .map_err(|e| format!("data does not fill shape {shape:?}: {e}"))?;
    Ok(if fortran {
        array.reversed_axes().as_standard_layout().into_owned()
    } else {
        array
    })
}

fn ints<T: Into<i64>>(
    shape: &[usize],
    fortran: bool,
    values: Vec<T>,
) -> std::result::Result<NpyArray, String> {
    let values: Vec<i64> = values.into_iter().map(Into::into).collect();
    Ok(NpyArray::Int(to_array(shape, fortran, values)?))
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
