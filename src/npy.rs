//! `.npy` input and output for the CLI and tests, through npyz.

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
    // npyz allocates the declared header length before reading it (4 GiB for a 87-byte file).
    if let Some((start, len)) = header_span(bytes) {
        let present = bytes.len().saturating_sub(start);
        if len > present {
            return Err(format!(
                "not a valid .npy file: the header declares {len} bytes but only {present} follow"
            ));
        }
    }
    let nesting = header_nesting(bytes);
    if nesting > MAX_HEADER_NESTING {
        return Err(format!(
            "not a valid .npy file: header brackets nest {nesting} deep (at most {MAX_HEADER_NESTING})"
        ));
    }
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
        // A boolean array (a Keras mask input) reads as 0/1 integers.
        (TypeChar::Bool, 1) => {
            let values = npy.into_vec::<bool>().map_err(bad)?;
            ints(&shape, fortran, values.into_iter().map(u8::from).collect())?
        }
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
                "unsupported dtype {} (expected float32, float64, an integer type or bool)",
                dtype.descr()
            ))
        }
    };
    Ok(array)
}

/// npyz parses the header dict with a backtracking parser whose time doubles with each level of
/// bracket nesting (20 levels: 25 s); real headers nest a few levels, so deeper ones are refused
/// before npyz sees them.
const MAX_HEADER_NESTING: usize = 8;

/// The deepest `[`, `(` or `{` nesting in the header dict; 0 when the file is too short to hold
/// a header length (npyz then reports what is wrong).
/// Where an `.npy` header lies: (offset, declared length), when the file starts with the magic.
fn header_span(bytes: &[u8]) -> Option<(usize, usize)> {
    if !bytes.starts_with(b"\x93NUMPY") {
        return None;
    }
    // Magic (6 bytes), version (2), then the header length: u16 in version 1, u32 after.
    match bytes.get(6) {
        Some(1) => bytes
            .get(8..10)
            .and_then(|b| b.try_into().ok())
            .map(|b| (10usize, u16::from_le_bytes(b) as usize)),
        Some(_) => bytes
            .get(8..12)
            .and_then(|b| b.try_into().ok())
            .map(|b| (12, u32::from_le_bytes(b) as usize)),
        None => None,
    }
}

fn header_nesting(bytes: &[u8]) -> usize {
    let Some((start, len)) = header_span(bytes) else {
        return 0;
    };
    let end = start.saturating_add(len).min(bytes.len());
    let (mut depth, mut deepest) = (0usize, 0usize);
    for &b in bytes.get(start..end).unwrap_or_default() {
        match b {
            b'[' | b'(' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b')' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
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
/// The bytes of an `.npy` file holding `array` (float32, C order).
pub fn npy_bytes(array: &ArrayD<f32>) -> std::io::Result<Vec<u8>> {
    let shape: Vec<u64> = array.shape().iter().map(|&d| d as u64).collect();
    let mut bytes = Vec::new();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(&mut bytes)
        .begin_nd()?;
    writer.extend(array.as_standard_layout().iter().copied())?;
    writer.finish()?;
    Ok(bytes)
}

/// Writes a float32 `.npy` file. The file appears whole or not at all (a temporary file in the
/// same folder, renamed into place).
pub fn write_f32(path: &Path, array: &ArrayD<f32>) -> Result<()> {
    let bytes = npy_bytes(array).map_err(|e| Error::io(path, e))?;
    write_atomically(path, &bytes)
}

/// Writes an `.npz` (as `np.savez(path, name=array, ...)`: stored `name.npy` entries), whole or
/// not at all.
pub fn write_npz(path: &Path, arrays: &[(&str, &ArrayD<f32>)]) -> Result<()> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    let zip_error = |e: zip::result::ZipError| Error::io(path, std::io::Error::other(e));
    for (name, array) in arrays {
        zip.start_file(format!("{name}.npy"), options)
            .map_err(zip_error)?;
        let bytes = npy_bytes(array).map_err(|e| Error::io(path, e))?;
        zip.write_all(&bytes).map_err(|e| Error::io(path, e))?;
    }
    let bytes = zip.finish().map_err(zip_error)?.into_inner();
    write_atomically(path, &bytes)
}

/// Every array of an `.npz` (`np.savez`), by name without `.npy`, in archive order.
pub fn read_npz(path: &Path) -> Result<Vec<(String, NpyArray)>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| Error::format(path, format!("not an .npz (zip) file: {e}")))?;
    let mut arrays = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| Error::format(path, format!("corrupt .npz entry {i}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| Error::format(path, format!("corrupt .npz entry {i}: {e}")))?
            .trim_end_matches(".npy")
            .to_string();
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| Error::format(path, format!("{name}: {e}")))?;
        let array = parse(&bytes).map_err(|m| Error::format(path, format!("{name}: {m}")))?;
        arrays.push((name, array));
    }
    Ok(arrays)
}

/// `bytes` to `path` through a temporary file in the same folder and a rename, so a crash or
/// a full disk never leaves a half-written file under the final name.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(path, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// WebAssembly has no file system: saving is refused with one line (the browser build hands
/// bytes to JavaScript instead).
#[cfg(target_arch = "wasm32")]
pub fn write_atomically(path: &Path, _bytes: &[u8]) -> Result<()> {
    Err(Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "WebAssembly has no file system to write to",
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy_with_header(header: &str) -> Vec<u8> {
        let mut header = header.to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&1.5f32.to_le_bytes());
        bytes
    }

    #[test]
    fn a_plain_header_parses() {
        let bytes = npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }");
        assert_eq!(parse(&bytes).map(|a| a.shape().to_vec()), Ok(vec![1]));
    }

    #[test]
    fn a_deeply_nested_header_is_refused_before_the_slow_parser() {
        // 40 levels would take npyz's parser hours (found by fuzz/npy_npz).
        let header = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': {} (1,), }}",
            "[".repeat(40)
        );
        let message = parse(&npy_with_header(&header)).err().unwrap_or_default();
        assert!(message.contains("nest 42 deep"), "{message}");
    }
}
