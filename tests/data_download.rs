//! Dataset downloads against a local HTTP server on 127.0.0.1 started inside each test: a small
//! CIFAR-10-shaped .tar.gz built in memory, checksum verification with nothing left behind on a
//! mismatch, and the NusaX CSVs.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wgnn::data::cifar10::Split;
use wgnn::data::{DownloadOptions, Downloader, RemoteFile};

/// Serves `files` (URL path -> body) for at most `requests` connections, then stops. Unknown
/// paths get a 404.
fn serve(files: Vec<(&'static str, Vec<u8>)>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let response = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    format!("http://{address}")
}

fn record(label: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072).map(|i| (i % 251) as u8));
    r
}

/// A .tar.gz with the official layout: cifar-10-batches-bin/{test_batch,data_batch_1}.bin and
/// batches.meta.txt, plus a file outside that folder which must not be unpacked.
fn cifar_archive() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |path: &str, data: Vec<u8>| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, data.as_slice()).unwrap();
    };
    add(
        "cifar-10-batches-bin/test_batch.bin",
        [4u8, 0, 9].iter().flat_map(|&l| record(l)).collect(),
    );
    add(
        "cifar-10-batches-bin/data_batch_1.bin",
        [1u8, 2].iter().flat_map(|&l| record(l)).collect(),
    );
    add(
        "cifar-10-batches-bin/batches.meta.txt",
        CLASS_LINES.as_bytes().to_vec(),
    );
    add("elsewhere/readme.txt", b"not part of the dataset".to_vec());
    tar.into_inner().unwrap().finish().unwrap()
}

const CLASS_LINES: &str =
    "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn quiet() -> Downloader {
    Downloader::new(DownloadOptions {
        progress: false,
        force: false,
    })
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[test]
fn verified_cifar10_archive_is_unpacked_and_loads() {
    let archive = cifar_archive();
    let base = serve(vec![("/cifar-10-binary.tar.gz", archive.clone())], 1);
    let cache = tempfile::tempdir().unwrap();
    let remote = RemoteFile {
        url: format!("{base}/cifar-10-binary.tar.gz"),
        sha256: Some(sha256_hex(&archive)),
        size: Some(archive.len() as u64),
    };
    let cifar = quiet().cifar10(cache.path(), &remote).unwrap();
    assert_eq!(
        cifar.dir(),
        cache.path().join("cifar10/cifar-10-batches-bin")
    );
    assert_eq!(cifar.load(Split::Test, None).unwrap().labels, vec![4, 0, 9]);
    assert_eq!(cifar.load(Split::Train, None).unwrap().labels, vec![1, 2]);
    assert_eq!(cifar.class_names()[1], "automobile");
    // Only the unpacked folder remains: no archive, no temporary files, nothing from elsewhere/.
    assert_eq!(
        names_in(&cache.path().join("cifar10")),
        vec!["cifar-10-batches-bin"]
    );
    assert_eq!(
        names_in(cifar.dir()),
        vec!["batches.meta.txt", "data_batch_1.bin", "test_batch.bin"]
    );
    // The cache now answers the folder rules too.
    assert_eq!(
        wgnn::data::Cifar10::locate(cache.path()).unwrap().dir(),
        cifar.dir()
    );
}

#[test]
fn checksum_mismatch_is_an_error_and_leaves_no_file() {
    let archive = cifar_archive();
    let base = serve(vec![("/cifar-10-binary.tar.gz", archive.clone())], 1);
    let cache = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let remote = RemoteFile {
        url: format!("{base}/cifar-10-binary.tar.gz"),
        sha256: Some(wrong.clone()),
        size: None,
    };
    let e = quiet()
        .cifar10(cache.path(), &remote)
        .unwrap_err()
        .to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
    assert!(e.contains(&format!("expected sha256 {wrong}")), "{e}");
    assert!(
        e.contains(&format!("found {}", sha256_hex(&archive))),
        "{e}"
    );
    assert!(
        names_in(&cache.path().join("cifar10")).is_empty(),
        "{:?}",
        names_in(&cache.path().join("cifar10"))
    );
}

#[test]
fn http_errors_and_short_bodies_are_clear_errors() {
    let base = serve(vec![("/small.bin", vec![1, 2, 3])], 2);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("file.bin");
    let missing = RemoteFile {
        url: format!("{base}/missing.bin"),
        sha256: None,
        size: None,
    };
    let e = quiet().fetch(&missing, &dest).unwrap_err().to_string();
    assert!(e.contains("missing.bin failed") && e.contains("404"), "{e}");
    let short = RemoteFile {
        url: format!("{base}/small.bin"),
        sha256: None,
        size: Some(10),
    };
    let e = quiet().fetch(&short, &dest).unwrap_err().to_string();
    assert!(e.contains("expected 10 bytes, received 3"), "{e}");
    assert!(names_in(dir.path()).is_empty());
}

#[test]
fn nusax_csvs_are_downloaded_and_checked() {
    let csv = |label: &str| format!("id,text,label\n1,\"Enak, murah\",{label}\n").into_bytes();
    let base = serve(
        vec![
            ("/sentiment/train.csv", csv("positive")),
            ("/sentiment/valid.csv", csv("neutral")),
            ("/sentiment/test.csv", csv("negative")),
        ],
        3,
    );
    let cache = tempfile::tempdir().unwrap();
    let nusax = quiet()
        .nusax(cache.path(), &format!("{base}/sentiment/"))
        .unwrap();
    assert_eq!(nusax.dir(), cache.path().join("nusax"));
    let test = nusax.load(wgnn::data::nusax::Split::Test, None).unwrap();
    assert_eq!((test.texts[0].as_str(), test.labels[0]), ("Enak, murah", 2));
    assert_eq!(
        names_in(nusax.dir()),
        vec!["test.csv", "train.csv", "valid.csv"]
    );
}

#[test]
fn a_download_that_is_not_nusax_is_rejected_and_removed() {
    let base = serve(
        vec![("/train.csv", b"<html>rate limited</html>\n".to_vec())],
        1,
    );
    let cache = tempfile::tempdir().unwrap();
    let e = quiet().nusax(cache.path(), &base).unwrap_err().to_string();
    assert!(e.contains("does not look like NusaX"), "{e}");
    assert!(names_in(&cache.path().join("nusax")).is_empty());
}
