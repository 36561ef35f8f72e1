//! Downloads the datasets into the cache: CIFAR-10's official binary archive (SHA-256 checked
//! while streaming, kept only when it matches, then unpacked) and NusaX-Senti's Indonesian CSVs.
//! URLs and checksums are parameters, so tests can serve the files from a local server.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::data::cifar10::{self, Cifar10};
use crate::data::nusax::{self, Nusax};
use crate::error::{Error, Result};

/// The official CIFAR-10 binary archive.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// Its size in bytes.
pub const CIFAR10_SIZE: u64 = 170_052_171;
/// Its MD5, as published on the dataset page.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// Its SHA-256, the checksum verified.
pub const CIFAR10_SHA256: &str = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd";
/// The archive's file name in the cache.
pub const CIFAR10_ARCHIVE: &str = "cifar-10-binary.tar.gz";
/// Folder of NusaX-Senti's Indonesian CSVs (`train.csv`, `valid.csv`, `test.csv`).
pub const NUSAX_BASE_URL: &str =
    "https://raw.githubusercontent.com/IndoNLP/nusax/main/datasets/sentiment/indonesian";

/// Where an archive comes from and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// http(s) URL.
    pub url: String,
    /// Lower-case hex SHA-256 the download must match; `None` skips the check.
    pub sha256: Option<String>,
    /// Expected size in bytes, when known (also sizes the progress bar).
    pub size: Option<u64>,
}

impl RemoteFile {
    /// The official CIFAR-10 archive with its published size and checksum.
    pub fn cifar10() -> RemoteFile {
        RemoteFile {
            url: CIFAR10_URL.to_string(),
            sha256: Some(CIFAR10_SHA256.to_string()),
            size: Some(CIFAR10_SIZE),
        }
    }
}

/// How downloads behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadOptions {
    /// Draw a progress bar on stderr (see [`stderr_is_terminal`]).
    pub progress: bool,
    /// Download again even when the files are already in place.
    pub force: bool,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            progress: stderr_is_terminal(),
            force: false,
        }
    }
}

/// True when stderr is a terminal: progress bars are only drawn there.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A small blocking HTTP(S) client (ureq with rustls) for dataset files.
#[derive(Debug, Clone)]
pub struct Downloader {
    agent: ureq::Agent,
    options: DownloadOptions,
}

/// Removes a temporary file when dropped, unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a temporary folder when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// `dir/.NAME.part-PID`: next to the destination, so the final rename stays on one filesystem.
fn temp_path(dest: &Path, tag: &str) -> PathBuf {
    let name = dest
        .file_name()
        .map_or_else(|| "download".into(), |n| n.to_string_lossy().into_owned());
    dest.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

impl Downloader {
    /// A client with connect and read timeouts suited to large files.
    pub fn new(options: DownloadOptions) -> Downloader {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .user_agent(concat!("wgnn/", env!("CARGO_PKG_VERSION")))
            .build();
        Downloader {
            agent: config.into(),
            options,
        }
    }

    /// Streams `remote` to `dest`: written to a temporary file beside it while hashing, renamed
    /// into place only when the size and SHA-256 match; on any error nothing is left behind.
    /// Returns the number of bytes written.
    pub fn fetch(&self, remote: &RemoteFile, dest: &Path) -> Result<u64> {
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dir(dir)?;
        }
        let mut temp = TempFile {
            path: temp_path(dest, "part"),
            keep: false,
        };
        let fail = |message: String| Error::data(dest, message);
        let response = self
            .agent
            .get(&remote.url)
            .call()
            .map_err(|e| fail(format!("download of {} failed: {e}", remote.url)))?;
        let (_, body) = response.into_parts();
        let total = body.content_length().or(remote.size);
        let mut reader = body.into_reader();
        let file = File::create(&temp.path).map_err(|e| Error::io(&temp.path, e))?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        let progress = self.progress_bar(total, &remote.url);
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut written: u64 = 0;
        loop {
            let n = reader.read(&mut buffer).map_err(|e| {
                fail(format!(
                    "download of {} failed after {written} bytes: {e}",
                    remote.url
                ))
            })?;
            if n == 0 {
                break;
            }
            let chunk = &buffer[..n];
            hasher.update(chunk);
            writer
                .write_all(chunk)
                .map_err(|e| Error::io(&temp.path, e))?;
            written += n as u64;
            if let Some(bar) = &progress {
                bar.set_position(written);
            }
        }
        writer.flush().map_err(|e| Error::io(&temp.path, e))?;
        drop(writer);
        if let Some(bar) = &progress {
            bar.finish_and_clear();
        }
        if let Some(size) = remote.size {
            if written != size {
                return Err(fail(format!(
                    "size mismatch for {}: expected {size} bytes, received {written}; the download was deleted",
                    remote.url
                )));
            }
        }
        if let Some(expected) = &remote.sha256 {
            let found = hex(&hasher.finalize());
            if !found.eq_ignore_ascii_case(expected) {
                return Err(fail(format!(
                    "checksum mismatch for {}: expected sha256 {expected}, found {found}; the download was deleted",
                    remote.url
                )));
            }
        }
        std::fs::rename(&temp.path, dest).map_err(|e| Error::io(dest, e))?;
        temp.keep = true;
        Ok(written)
    }

    fn progress_bar(&self, total: Option<u64>, url: &str) -> Option<indicatif::ProgressBar> {
        if !self.options.progress {
            return None;
        }
        let name = url.rsplit('/').next().unwrap_or(url).to_string();
        let bar = match total {
            Some(total) => indicatif::ProgressBar::new(total).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .ok()?
                .progress_chars("=> "),
            ),
            None => indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                    .ok()?,
            ),
        };
        bar.set_message(name);
        Some(bar)
    }

    /// Downloads and unpacks CIFAR-10 into `<cache>/cifar10/cifar-10-batches-bin/` (skipped when
    /// all six batch files are already there, unless `force`); the archive is removed once
    /// unpacked. Returns the dataset.
    pub fn cifar10(&self, cache: &Path, remote: &RemoteFile) -> Result<Cifar10> {
        let dataset_dir = cache.join("cifar10");
        let batches_dir = dataset_dir.join(cifar10::ARCHIVE_DIR);
        let complete = cifar10::TRAIN_FILES
            .iter()
            .chain([&cifar10::TEST_FILE])
            .all(|f| batches_dir.join(f).is_file());
        if complete && !self.options.force {
            return Cifar10::locate(&batches_dir);
        }
        create_dir(&dataset_dir)?;
        let archive = dataset_dir.join(CIFAR10_ARCHIVE);
        let reusable = !self.options.force
            && archive.is_file()
            && match &remote.sha256 {
                Some(expected) => sha256_file(&archive)?.eq_ignore_ascii_case(expected),
                None => false,
            };
        if !reusable {
            self.fetch(remote, &archive)?;
        }
        extract_cifar10(&archive, &dataset_dir)?;
        std::fs::remove_file(&archive).map_err(|e| Error::io(&archive, e))?;
        Cifar10::locate(&batches_dir)
    }

    /// Downloads NusaX-Senti's `train.csv`, `valid.csv` and `test.csv` from `base_url` into
    /// `<cache>/nusax/` (skipped for files already there, unless `force`). No checksum is
    /// published: each file must be non-empty and have `text` and `label` header columns.
    pub fn nusax(&self, cache: &Path, base_url: &str) -> Result<Nusax> {
        let dir = cache.join("nusax");
        create_dir(&dir)?;
        for split in nusax::Split::ALL {
            let dest = dir.join(split.file_name());
            let present = std::fs::metadata(&dest).is_ok_and(|m| m.len() > 0);
            if present && !self.options.force {
                continue;
            }
            let remote = RemoteFile {
                url: format!("{}/{}", base_url.trim_end_matches('/'), split.file_name()),
                sha256: None,
                size: None,
            };
            // Fetch under a temporary name, check, then rename: a bad file never takes the
            // real name.
            let staged = temp_path(&dest, "check");
            let mut guard = TempFile {
                path: staged.clone(),
                keep: false,
            };
            let bytes = self.fetch(&remote, &staged)?;
            if bytes == 0 {
                return Err(Error::data(
                    &dest,
                    format!("download of {} is empty", remote.url),
                ));
            }
            check_nusax_header(&staged, &remote.url)?;
            std::fs::rename(&staged, &dest).map_err(|e| Error::io(&dest, e))?;
            guard.keep = true;
        }
        Nusax::locate(&dir)
    }
}

fn check_nusax_header(path: &Path, url: &str) -> Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| Error::data(path, format!("download of {url} is not CSV: {e}")))?;
    let headers = reader
        .headers()
        .map_err(|e| Error::data(path, format!("download of {url} is not CSV: {e}")))?;
    let has = |name: &str| headers.iter().any(|h| h.trim() == name);
    if !has("text") || !has("label") {
        return Err(Error::data(
            path,
            format!(
                "download of {url} does not look like NusaX: header is '{}', expected id,text,label",
                headers.iter().collect::<Vec<_>>().join(",")
            ),
        ));
    }
    Ok(())
}

/// Unpacks the `cifar-10-batches-bin/` entries of a CIFAR-10 `.tar.gz` into `dest_dir`
/// (through a temporary folder, so a failed unpack leaves no half folder) and returns the
/// unpacked folder. Entries elsewhere, links and paths leaving the folder are skipped.
pub fn extract_cifar10(archive: &Path, dest_dir: &Path) -> Result<PathBuf> {
    create_dir(dest_dir)?;
    let staging = TempDir(dest_dir.join(format!(".extract-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&staging.0);
    create_dir(&staging.0)?;
    let file = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let bad = |e: std::io::Error| Error::data(archive, format!("not a valid .tar.gz: {e}"));
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let entry_path = entry.path().map_err(bad)?.into_owned();
        let inside = entry_path
            .components()
            .next()
            .is_some_and(|c| c.as_os_str() == cifar10::ARCHIVE_DIR);
        let kind = entry.header().entry_type();
        if !inside || !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        // unpack_in refuses absolute paths and `..`.
        entry.unpack_in(&staging.0).map_err(bad)?;
    }
    let unpacked = staging.0.join(cifar10::ARCHIVE_DIR);
    if !unpacked.join(cifar10::TEST_FILE).is_file() {
        return Err(Error::data(
            archive,
            format!(
                "archive holds no {}/{}",
                cifar10::ARCHIVE_DIR,
                cifar10::TEST_FILE
            ),
        ));
    }
    let final_dir = dest_dir.join(cifar10::ARCHIVE_DIR);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    std::fs::rename(&unpacked, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    Ok(final_dir)
}
