//! CIFAR-10 binary batches: record decoding to NHWC / 255, folder layouts, any subset of batch
//! files, streaming in batches, clear errors; and the real test batch (env WGNN_DATA).

mod common;

use common::env_dir;
use std::path::{Path, PathBuf};

use wgnn::data::cifar10::{self, Batch, Split, CLASS_NAMES, RECORD_BYTES};
use wgnn::data::{Cifar10, DataRoot, DataRootSource};

/// One record: `label`, then planes R = (y*32+x) % 256 + seed, G = 255 - R, B = 7 * label.
fn record(label: u8, seed: u8) -> Vec<u8> {
    let mut r = vec![label];
    let red: Vec<u8> = (0..1024)
        .map(|p| ((p % 256) as u8).wrapping_add(seed))
        .collect();
    r.extend(&red);
    r.extend(red.iter().map(|v| 255 - v));
    r.extend(std::iter::repeat_n(label.wrapping_mul(7), 1024));
    r
}

fn write_batch(dir: &Path, name: &str, labels: &[u8], seed: u8) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let bytes: Vec<u8> = labels.iter().flat_map(|&l| record(l, seed)).collect();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn records_decode_to_nhwc_pixels_over_255() {
    let dir = tempfile::tempdir().unwrap();
    write_batch(dir.path(), "test_batch.bin", &[3, 9, 0], 5);
    let cifar = Cifar10::locate(dir.path()).unwrap();
    let batch = cifar.load(Split::Test, None).unwrap();
    assert_eq!(batch.images.shape(), &[3, 32, 32, 3]);
    assert_eq!(batch.labels, vec![3, 9, 0]);
    for (y, x) in [(0, 0), (0, 31), (7, 3), (31, 31)] {
        let red = (((y * 32 + x) % 256) as u8).wrapping_add(5);
        assert_eq!(batch.images[[1, y, x, 0]], red as f32 / 255.0);
        assert_eq!(batch.images[[1, y, x, 1]], (255 - red) as f32 / 255.0);
        assert_eq!(batch.images[[1, y, x, 2]], 63.0 / 255.0);
    }
    assert_eq!(
        cifar.class_names(),
        CLASS_NAMES.map(String::from).as_slice()
    );
}

#[test]
fn locate_accepts_the_files_the_archive_folder_or_a_cifar10_folder() {
    for sub in [
        "",
        "cifar-10-batches-bin",
        "cifar10",
        "cifar10/cifar-10-batches-bin",
    ] {
        let root = tempfile::tempdir().unwrap();
        write_batch(&root.path().join(sub), "test_batch.bin", &[1], 0);
        let cifar = Cifar10::locate(root.path()).unwrap_or_else(|e| panic!("{sub}: {e}"));
        assert_eq!(cifar.dir(), root.path().join(sub));
    }
    let empty = tempfile::tempdir().unwrap();
    let e = Cifar10::locate(empty.path()).unwrap_err().to_string();
    assert!(
        e.contains("no CIFAR-10 batch files") && e.contains("wgnn download cifar10"),
        "{e}"
    );
}

#[test]
fn any_subset_of_training_batches_is_read_in_order() {
    let dir = tempfile::tempdir().unwrap();
    write_batch(dir.path(), "data_batch_5.bin", &[5, 5], 0);
    write_batch(dir.path(), "data_batch_2.bin", &[2, 2, 2], 0);
    let cifar = Cifar10::locate(dir.path()).unwrap();
    assert_eq!(cifar.len(Split::Train).unwrap(), 5);
    assert_eq!(
        cifar.load(Split::Train, None).unwrap().labels,
        vec![2, 2, 2, 5, 5]
    );
    let e = cifar.load(Split::Test, None).unwrap_err().to_string();
    assert!(e.contains("no test batch file (test_batch.bin)"), "{e}");
}

#[test]
fn streaming_crosses_files_and_honours_limit() {
    let dir = tempfile::tempdir().unwrap();
    write_batch(dir.path(), "data_batch_1.bin", &[0, 1, 2], 0);
    write_batch(dir.path(), "data_batch_3.bin", &[3, 4, 5, 6], 0);
    let cifar = Cifar10::locate(dir.path()).unwrap();
    let all = cifar.load(Split::Train, None).unwrap();
    let batches: Vec<Batch> = cifar
        .batches(Split::Train, 3, None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        batches.iter().map(Batch::len).collect::<Vec<_>>(),
        vec![3, 3, 1]
    );
    assert_eq!(
        batches.iter().map(|b| b.start).collect::<Vec<_>>(),
        vec![0, 3, 6]
    );
    let streamed: Vec<u8> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    assert_eq!(streamed, all.labels);
    assert_eq!(
        batches[1].images,
        all.images.slice(ndarray::s![3..6, .., .., ..])
    );

    let limited: Vec<usize> = cifar
        .batches(Split::Train, 3, Some(5))
        .unwrap()
        .map(|b| b.unwrap().len())
        .collect();
    assert_eq!(limited, vec![3, 2]);
    assert_eq!(
        cifar.load(Split::Train, Some(4)).unwrap().labels,
        vec![0, 1, 2, 3]
    );
    assert!(cifar.batches(Split::Train, 0, None).is_err());
}

#[test]
fn a_file_of_partial_records_is_an_error_naming_file_and_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_batch(dir.path(), "test_batch.bin", &[1, 2], 0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend([0u8; 5]);
    std::fs::write(&path, bytes).unwrap();
    let cifar = Cifar10::locate(dir.path()).unwrap();
    let e = cifar.load(Split::Test, None).unwrap_err().to_string();
    let expected = format!(
        "{}: length {} bytes is not a multiple of the 3073-byte CIFAR-10 record",
        path.display(),
        2 * RECORD_BYTES + 5
    );
    assert!(e.starts_with(&expected), "{e}");
}

#[test]
fn a_label_above_9_is_an_error_naming_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_batch(dir.path(), "test_batch.bin", &[1, 10, 2], 0);
    let cifar = Cifar10::locate(dir.path()).unwrap();
    let e = cifar.load(Split::Test, None).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: record 1 (byte offset 3073): label 10 is not a class in 0..=9",
            path.display()
        )
    );
    let e = cifar
        .batches(Split::Test, 1, None)
        .unwrap()
        .nth(1)
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(e.contains("record 1 (byte offset 3073)"), "{e}");
}

#[test]
fn class_names_come_from_batches_meta_txt() {
    let dir = tempfile::tempdir().unwrap();
    write_batch(dir.path(), "test_batch.bin", &[1], 0);
    let names: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
    std::fs::write(
        dir.path().join("batches.meta.txt"),
        names.join("\n") + "\n\n",
    )
    .unwrap();
    assert_eq!(
        Cifar10::locate(dir.path()).unwrap().class_names(),
        names.as_slice()
    );
    std::fs::write(dir.path().join("batches.meta.txt"), "a\nb\n").unwrap();
    let e = Cifar10::locate(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("expected 10 class names (one a line), found 2"),
        "{e}"
    );
}

#[test]
fn data_flag_wins_over_env_and_cache() {
    let root = DataRoot::resolve(Some(Path::new("/some/where"))).unwrap();
    assert_eq!(root.source, DataRootSource::Flag);
    assert_eq!(root.path, Path::new("/some/where"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("cifar10")).unwrap();
    let root = DataRoot::resolve(Some(dir.path())).unwrap();
    assert_eq!(root.dataset_dir("cifar10"), dir.path().join("cifar10"));
    assert_eq!(root.dataset_dir("nusax"), dir.path());
}

#[test]
fn real_test_batch_has_the_official_first_1000_labels() {
    let Some(data) = env_dir("WGNN_DATA") else {
        return;
    };
    let root = DataRoot::resolve(None).unwrap();
    assert_eq!(root.source, DataRootSource::Env);
    let cifar = wgnn::data::locate_cifar10(None).unwrap();
    assert_eq!(cifar.class_names()[0], "airplane");
    assert_eq!(cifar.class_names()[9], "truck");
    assert_eq!(cifar.len(Split::Test).unwrap(), 10_000);
    assert_eq!(cifar.len(Split::Train).unwrap() % 10_000, 0);

    let official: Vec<u8> =
        std::fs::read_to_string(data.join("cifar10/test_labels_first1000_official.txt"))
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
    assert_eq!(official.len(), 1000);
    let first = cifar.load(Split::Test, Some(1000)).unwrap();
    assert_eq!(first.labels, official);
    assert_eq!(first.images.shape(), &[1000, 32, 32, 3]);
    assert!(first.images.iter().all(|&v| (0.0..=1.0).contains(&v)));

    // Streaming in batches gives the same labels as one read, 1,000 per class.
    let whole = cifar.load(Split::Test, None).unwrap();
    let mut streamed = Vec::new();
    for batch in cifar.batches(Split::Test, 4096, None).unwrap() {
        let batch = batch.unwrap();
        assert!(batch.len() <= 4096);
        streamed.extend(batch.labels);
    }
    assert_eq!(streamed, whole.labels);
    for class in 0..10u8 {
        assert_eq!(whole.labels.iter().filter(|&&l| l == class).count(), 1000);
    }
    assert_eq!(
        cifar10::read_batch_file(&cifar.files(Split::Test)[0])
            .unwrap()
            .1,
        whole.labels
    );
}

#[test]
fn not_found_errors_say_which_rule_chose_the_folder() {
    let empty = tempfile::tempdir().unwrap();
    let e = wgnn::data::locate_cifar10(Some(empty.path()))
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("(data folder: from --data)"), "{e}");
    let e = wgnn::data::locate_nusax(Some(empty.path()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no NusaX CSV files") && e.ends_with("(data folder: from --data)"),
        "{e}"
    );
}
