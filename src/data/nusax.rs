//! NusaX-Senti (Indonesian): CSV files `train.csv`, `valid.csv`, `test.csv` with columns
//! `id,text,label` (quoted fields may hold commas and newlines; UTF-8). Labels are numbered
//! neutral=0, positive=1, negative=2 unless another list of names is given.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The label order of the seed report's models.
pub const DEFAULT_LABELS: [&str; 3] = ["neutral", "positive", "negative"];

/// One of the three CSV files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// `train.csv` (500 rows).
    Train,
    /// `valid.csv` (100 rows).
    Valid,
    /// `test.csv` (400 rows).
    Test,
}

impl Split {
    /// All splits, in download order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    /// The CSV file name.
    pub fn file_name(self) -> &'static str {
        match self {
            Split::Train => "train.csv",
            Split::Valid => "valid.csv",
            Split::Test => "test.csv",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Split> {
        match s {
            "train" => Ok(Split::Train),
            "valid" | "validation" => Ok(Split::Valid),
            "test" => Ok(Split::Test),
            other => Err(Error::Usage(format!(
                "unknown NusaX split '{other}' (expected train, valid or test)"
            ))),
        }
    }
}

/// The rows of one CSV file, column by column.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Examples {
    /// The file read.
    pub path: PathBuf,
    /// The `id` column (the 1-based row number when the file has no `id` column).
    pub ids: Vec<String>,
    /// The `text` column, as written.
    pub texts: Vec<String>,
    /// Label indices into `label_names`.
    pub labels: Vec<usize>,
    /// The names labels were numbered by.
    pub label_names: Vec<String>,
}

impl Examples {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// True when the file has no data rows.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The texts as `&str`, for the tokenizers.
    pub fn text_refs(&self) -> Vec<&str> {
        self.texts.iter().map(String::as_str).collect()
    }
}

/// A NusaX folder holding the CSV files.
#[derive(Debug, Clone)]
pub struct Nusax {
    dir: PathBuf,
}

impl Nusax {
    /// Finds the CSV files in `dir` or in `dir/nusax/`; an error when neither holds any.
    pub fn locate(dir: &Path) -> Result<Nusax> {
        for candidate in [dir.to_path_buf(), dir.join("nusax")] {
            if Split::ALL
                .iter()
                .any(|s| candidate.join(s.file_name()).is_file())
            {
                return Ok(Nusax { dir: candidate });
            }
        }
        Err(Error::data(
            dir,
            "no NusaX CSV files (train.csv, valid.csv, test.csv) here or in nusax/; \
             run `wgnn download nusax` or point --data / WGNN_DATA at them",
        ))
    }

    /// The folder holding the CSV files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of one split's CSV file.
    pub fn path(&self, split: Split) -> PathBuf {
        self.dir.join(split.file_name())
    }

    /// Reads one split with labels numbered by `label_names` (default: [`DEFAULT_LABELS`]).
    pub fn load(&self, split: Split, label_names: Option<&[String]>) -> Result<Examples> {
        let defaults: Vec<String> = DEFAULT_LABELS.iter().map(|s| s.to_string()).collect();
        read_csv(&self.path(split), label_names.unwrap_or(&defaults))
    }
}

/// Reads an `id,text,label` CSV (columns found by header name, `id` optional). A missing column,
/// a short row or a label not in `label_names` is an error naming the file, row and value.
/// Labels match case-insensitively, ignoring surrounding spaces.
pub fn read_csv(path: &Path, label_names: &[String]) -> Result<Examples> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().trim_start_matches('\u{feff}') == name)
    };
    let found = headers.iter().collect::<Vec<_>>().join(",");
    let missing = |name: &str| {
        Error::data(
            path,
            format!("row 1 (header): no '{name}' column (found: {found}; expected id,text,label)"),
        )
    };
    let text_col = column("text").ok_or_else(|| missing("text"))?;
    let label_col = column("label").ok_or_else(|| missing("label"))?;
    let id_col = column("id");

    let mut examples = Examples {
        path: path.to_path_buf(),
        ids: Vec::new(),
        texts: Vec::new(),
        labels: Vec::new(),
        label_names: label_names.to_vec(),
    };
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| csv_error(path, e))?;
        // Row numbers count the header as row 1, as a spreadsheet shows them.
        let row = i + 2;
        let line = record.position().map_or(row as u64, |p| p.line());
        let field = |col: usize, name: &str| -> Result<String> {
            record.get(col).map(str::to_string).ok_or_else(|| {
                Error::data(
                    path,
                    format!(
                        "row {row} (line {line}): no '{name}' field ({} fields)",
                        record.len()
                    ),
                )
            })
        };
        let text = field(text_col, "text")?;
        let label = field(label_col, "label")?;
        let label_index = label_names
            .iter()
            .position(|n| n.trim().eq_ignore_ascii_case(label.trim()))
            .ok_or_else(|| {
                Error::data(
                    path,
                    format!(
                        "row {row} (line {line}): unknown label '{label}' (expected one of: {})",
                        label_names.join(", ")
                    ),
                )
            })?;
        let id = match id_col {
            Some(col) => field(col, "id")?,
            None => (row - 1).to_string(),
        };
        examples.ids.push(id);
        examples.texts.push(text);
        examples.labels.push(label_index);
    }
    Ok(examples)
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    let message = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(io) => Error::io(path, io),
        _ => Error::data(path, format!("malformed CSV: {message}")),
    }
}
