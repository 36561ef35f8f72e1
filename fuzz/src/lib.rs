//! Helpers shared by the fuzz targets: scratch files for the path-only loaders and a bounded
//! "use the model" step after a successful load.

use std::path::PathBuf;
use std::sync::OnceLock;

use wgnn::{Backend, Model};

/// A per-process scratch path (on tmpfs when there is one): the loaders that take a path get the
/// fuzzed bytes through it, overwritten on every run instead of creating a new file each time.
pub fn scratch_path(tag: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("wgnn-fuzz-{}-{tag}", std::process::id()))
}

/// Writes `bytes` to the scratch file `tag` and returns its path. A failed write is a harness
/// problem, not a library finding, so it panics with a clear message.
pub fn write_scratch(tag: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_path(tag);
    if let Err(e) = std::fs::write(&path, bytes) {
        panic!("fuzz harness: cannot write {}: {e}", path.display());
    }
    path
}

/// Writes fixed `(tag, bytes)` files (fixtures a target loads beside the fuzzed input) to their
/// scratch paths once per process, keeping the paths in `cell`; the loaders only read them.
pub fn fixed_scratch_files(
    cell: &'static OnceLock<Vec<PathBuf>>,
    files: &[(&str, &[u8])],
) -> &'static [PathBuf] {
    cell.get_or_init(|| {
        files
            .iter()
            .map(|(tag, bytes)| write_scratch(tag, bytes))
            .collect()
    })
}

/// Per-item work above which a loaded model is not run (keeps each execution in milliseconds).
const MAX_FLOPS_PER_ITEM: u64 = 4_000_000;
const MAX_INPUT_ELEMENTS: usize = 1 << 14;

/// What the CLI's `info` and a first prediction do with a freshly loaded model: the summary
/// figures, and (when small) one CPU prediction on zeros, which must not panic either. A model
/// that loaded is a promise that its shapes and weights fit together.
pub fn exercise(model: &Model) {
    let graph = model.graph();
    let _ = graph.param_count();
    let flops = graph.flops_per_item();
    for index in 0..graph.outputs.len() {
        let _ = graph.output_info(index);
    }
    for node in &graph.nodes {
        let _ = node.op.detail();
        let _ = graph.node_param_count(node);
    }
    if let Some(tv) = &graph.text_vectorization {
        // Bounded: a huge output_sequence_length is an allocation, not a logic error.
        if tv.output_sequence_length.is_none_or(|n| n <= 4096) {
            let _ = tv.vectorize(&["", "Enak sekali, murah!", "a  b\tc [UNK]"]);
        }
    }
    let mut elements = Some(0usize);
    for index in 0..graph.inputs.len() {
        let n = graph
            .input_info(index)
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        elements = match (elements, n) {
            (Some(total), Some(n)) if n > 0 => total.checked_add(n),
            _ => None,
        };
    }
    let small = matches!(elements, Some(n) if n > 0 && n <= MAX_INPUT_ELEMENTS);
    if !small || flops > MAX_FLOPS_PER_ITEM {
        return;
    }
    // Zeros are valid floats and valid token ids (0 is padding) alike.
    let prepared: Result<Vec<_>, _> = (0..graph.inputs.len())
        .map(|index| {
            let mut shape = vec![1usize];
            shape.extend_from_slice(&graph.input_info(index).shape);
            let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&shape));
            model.prepare_input(index, x.view())
        })
        .collect();
    if let Ok(inputs) = prepared {
        let _ = model.run_all(&inputs, Backend::Cpu);
    }
}
