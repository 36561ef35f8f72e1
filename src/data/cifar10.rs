//! CIFAR-10 in the official binary format: each record is 1 label byte and 3072 pixel bytes
//! (planes R, G, B, each 32x32 row-major). Images come out NHWC as f32 in [0, 1] (byte / 255),
//! the layout and scaling the Keras models were trained on.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use ndarray::Array4;

use crate::error::{Error, Result};

/// Image side in pixels.
pub const IMAGE_SIZE: usize = 32;
/// Colour channels.
pub const CHANNELS: usize = 3;
/// Pixel bytes per image (3 planes of 32x32).
pub const IMAGE_BYTES: usize = IMAGE_SIZE * IMAGE_SIZE * CHANNELS;
/// Bytes per record: the label byte, then the pixels.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Number of classes; labels are 0..=9.
pub const NUM_CLASSES: usize = 10;
/// The official class names, index 0-9 (used when `batches.meta.txt` is absent).
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// The folder the official archive unpacks to.
pub const ARCHIVE_DIR: &str = "cifar-10-batches-bin";
/// Training batch files, in official order (any subset may be present).
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch file.
pub const TEST_FILE: &str = "test_batch.bin";
/// The class-names file, one name a line.
pub const META_FILE: &str = "batches.meta.txt";

/// Which half of CIFAR-10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// `data_batch_1.bin` .. `data_batch_5.bin`, those present, in order.
    Train,
    /// `test_batch.bin`.
    Test,
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Split> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            other => Err(Error::Usage(format!(
                "unknown CIFAR-10 split '{other}' (expected train or test)"
            ))),
        }
    }
}

/// Consecutive images with their labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// (N, 32, 32, 3), pixel / 255.
    pub images: Array4<f32>,
    /// N labels in 0..=9.
    pub labels: Vec<u8>,
    /// Index of the first image within the split.
    pub start: usize,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A CIFAR-10 folder: which batch files it holds and the class names.
#[derive(Debug, Clone)]
pub struct Cifar10 {
    dir: PathBuf,
    train_files: Vec<PathBuf>,
    test_file: Option<PathBuf>,
    class_names: Vec<String>,
}

impl Cifar10 {
    /// Finds the batch files in `dir`, or in `dir/cifar-10-batches-bin/`, `dir/cifar10/` or
    /// `dir/cifar10/cifar-10-batches-bin/`. An error when none of them holds a batch file.
    pub fn locate(dir: &Path) -> Result<Cifar10> {
        let candidates = [
            dir.to_path_buf(),
            dir.join(ARCHIVE_DIR),
            dir.join("cifar10"),
            dir.join("cifar10").join(ARCHIVE_DIR),
        ];
        for candidate in &candidates {
            if let Some(found) = Cifar10::open_dir(candidate)? {
                return Ok(found);
            }
        }
        Err(Error::data(
            dir,
            format!(
                "no CIFAR-10 batch files ({}, {TEST_FILE}) here or in {ARCHIVE_DIR}/ or cifar10/; \
                 run `wgnn download cifar10` or point --data / WGNN_DATA at them",
                TRAIN_FILES.join(", ")
            ),
        ))
    }

    fn open_dir(dir: &Path) -> Result<Option<Cifar10>> {
        let train_files: Vec<PathBuf> = TRAIN_FILES
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| p.is_file())
            .collect();
        let test_file = Some(dir.join(TEST_FILE)).filter(|p| p.is_file());
        if train_files.is_empty() && test_file.is_none() {
            return Ok(None);
        }
        let class_names = read_class_names(&dir.join(META_FILE))?;
        Ok(Some(Cifar10 {
            dir: dir.to_path_buf(),
            train_files,
            test_file,
            class_names,
        }))
    }

    /// The folder holding the batch files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Class names, index 0-9.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The batch files of a split, in reading order (empty when none is present).
    pub fn files(&self, split: Split) -> Vec<PathBuf> {
        match split {
            Split::Train => self.train_files.clone(),
            Split::Test => self.test_file.iter().cloned().collect(),
        }
    }

    fn split_files(&self, split: Split) -> Result<Vec<(PathBuf, usize)>> {
        let files = self.files(split);
        if files.is_empty() {
            let wanted = match split {
                Split::Train => TRAIN_FILES.join(", "),
                Split::Test => TEST_FILE.to_string(),
            };
            return Err(Error::data(
                &self.dir,
                format!(
                    "no {} batch file ({wanted}) in this folder",
                    split_name(split)
                ),
            ));
        }
        files
            .into_iter()
            .map(|path| {
                let records = record_count(&path)?;
                Ok((path, records))
            })
            .collect()
    }

    /// Number of images in a split (from file sizes; every file's size is checked).
    pub fn len(&self, split: Split) -> Result<usize> {
        Ok(self.split_files(split)?.iter().map(|(_, n)| n).sum())
    }

    /// Reads a whole split, or its first `limit` images.
    pub fn load(&self, split: Split, limit: Option<usize>) -> Result<Batch> {
        let total = self.len(split)?;
        let n = limit.map_or(total, |l| l.min(total));
        let mut batches = self.batches(split, n.max(1), limit)?;
        match batches.next() {
            Some(batch) => batch,
            None => Ok(Batch {
                images: Array4::zeros((0, IMAGE_SIZE, IMAGE_SIZE, CHANNELS)),
                labels: Vec::new(),
                start: 0,
            }),
        }
    }

    /// Streams a split in batches of at most `batch_size` images (the last may be smaller),
    /// holding one batch in memory at a time; `limit` stops after that many images.
    pub fn batches(
        &self,
        split: Split,
        batch_size: usize,
        limit: Option<usize>,
    ) -> Result<BatchReader> {
        if batch_size == 0 {
            return Err(Error::Usage("batch size must be at least 1".into()));
        }
        let files = self.split_files(split)?;
        let total: usize = files.iter().map(|(_, n)| n).sum();
        Ok(BatchReader {
            files,
            next_file: 0,
            current: None,
            batch_size,
            remaining: limit.map_or(total, |l| l.min(total)),
            position: 0,
            failed: false,
        })
    }
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "training",
        Split::Test => "test",
    }
}

/// Reads the class names (non-empty lines, trimmed); the standard names when the file is absent.
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    if !path.is_file() {
        return Ok(CLASS_NAMES.iter().map(|s| s.to_string()).collect());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() != NUM_CLASSES {
        return Err(Error::data(
            path,
            format!(
                "expected {NUM_CLASSES} class names (one a line), found {}",
                names.len()
            ),
        ));
    }
    Ok(names)
}

/// Number of records in a batch file; an error naming the file and its length when the length
/// is not a whole number of 3073-byte records.
pub fn record_count(path: &Path) -> Result<usize> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if !len.is_multiple_of(RECORD_BYTES as u64) {
        return Err(Error::data(
            path,
            format!(
                "length {len} bytes is not a multiple of the {RECORD_BYTES}-byte CIFAR-10 record \
                 ({} whole records and {} bytes over)",
                len / RECORD_BYTES as u64,
                len % RECORD_BYTES as u64
            ),
        ));
    }
    Ok((len / RECORD_BYTES as u64) as usize)
}

/// Decodes whole records into NHWC pixels / 255 and labels. `path` and `first_record` (the index
/// of the first record within that file) name a bad label in the error.
pub fn decode_records(
    bytes: &[u8],
    path: &Path,
    first_record: usize,
) -> Result<(Array4<f32>, Vec<u8>)> {
    if !bytes.len().is_multiple_of(RECORD_BYTES) {
        return Err(Error::data(
            path,
            format!(
                "{} bytes is not a multiple of the {RECORD_BYTES}-byte record",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut images = Array4::<f32>::zeros((n, IMAGE_SIZE, IMAGE_SIZE, CHANNELS));
    let mut labels = Vec::with_capacity(n);
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    for (i, (record, mut image)) in bytes
        .chunks_exact(RECORD_BYTES)
        .zip(images.outer_iter_mut())
        .enumerate()
    {
        let (label, pixels) = record.split_at(1);
        let label = label.first().copied().unwrap_or(0);
        if label as usize >= NUM_CLASSES {
            let index = first_record + i;
            return Err(Error::data(
                path,
                format!(
                    "record {index} (byte offset {}): label {label} is not a class in 0..=9",
                    index * RECORD_BYTES
                ),
            ));
        }
        labels.push(label);
        // NHWC output, planar input: out[y][x][c] = pixels[c * 1024 + y * 32 + x].
        let out = image
            .as_slice_mut()
            .ok_or_else(|| Error::data(path, "internal: image buffer not contiguous"))?;
        for (c, plane_bytes) in pixels.chunks_exact(plane).enumerate() {
            for (p, &byte) in plane_bytes.iter().enumerate() {
                out[p * CHANNELS + c] = byte as f32 / 255.0;
            }
        }
    }
    Ok((images, labels))
}

/// Reads every record of one batch file.
pub fn read_batch_file(path: &Path) -> Result<(Array4<f32>, Vec<u8>)> {
    record_count(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_records(&bytes, path, 0)
}

/// An iterator of [`Batch`]es over a split's files (see [`Cifar10::batches`]).
#[derive(Debug)]
pub struct BatchReader {
    files: Vec<(PathBuf, usize)>,
    next_file: usize,
    /// The open file, its path, records in it and records already read.
    current: Option<(BufReader<File>, PathBuf, usize, usize)>,
    batch_size: usize,
    remaining: usize,
    position: usize,
    failed: bool,
}

impl BatchReader {
    /// Images still to be returned.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    fn read_batch(&mut self) -> Result<Batch> {
        let want = self.batch_size.min(self.remaining);
        let mut images = Array4::<f32>::zeros((want, IMAGE_SIZE, IMAGE_SIZE, CHANNELS));
        let mut labels = Vec::with_capacity(want);
        let mut buffer = Vec::new();
        while labels.len() < want {
            let exhausted = self
                .current
                .as_ref()
                .is_none_or(|(_, _, records, read)| read >= records);
            if exhausted {
                let (path, records) = self.files.get(self.next_file).cloned().ok_or_else(|| {
                    Error::data(
                        self.files
                            .last()
                            .map_or(Path::new(""), |(p, _)| p.as_path()),
                        "files ended before the expected number of records",
                    )
                })?;
                self.next_file += 1;
                let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
                self.current = Some((BufReader::with_capacity(1 << 20, file), path, records, 0));
                continue;
            }
            let Some((reader, path, records, read)) = self.current.as_mut() else {
                continue;
            };
            let take = (want - labels.len()).min(*records - *read);
            buffer.resize(take * RECORD_BYTES, 0);
            reader
                .read_exact(&mut buffer)
                .map_err(|e| Error::io(path, e))?;
            let (chunk_images, chunk_labels) = decode_records(&buffer, path, *read)?;
            let at = labels.len();
            images
                .slice_mut(ndarray::s![at..at + take, .., .., ..])
                .assign(&chunk_images);
            labels.extend_from_slice(&chunk_labels);
            *read += take;
        }
        let batch = Batch {
            images,
            labels,
            start: self.position,
        };
        self.position += want;
        self.remaining -= want;
        Ok(batch)
    }
}

impl Iterator for BatchReader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.failed || self.remaining == 0 {
            return None;
        }
        let batch = self.read_batch();
        if batch.is_err() {
            self.failed = true;
        }
        Some(batch)
    }
}
