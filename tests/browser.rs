//! The browser build in a real browser: `bash web/build.sh` builds `web/dist` (the crate for
//! wasm32-unknown-unknown + wasm-bindgen), a server on 127.0.0.1 serves it with the Keras
//! fixtures, and chromium-headless-shell (WebGPU on its bundled SwiftShader:
//! `--enable-unsafe-webgpu --use-webgpu-adapter=swiftshader`), driven over the DevTools
//! protocol, runs models from `.keras` bytes through the JavaScript API on `backend: "gpu"`
//! and `"cpu"`, compared with Keras's outputs at |got - expected| <= 1e-4 * (1 + |expected|).
//!
//! - Fixtures: every single-input `.keras` of `tests/fixtures/manifest.json` (Conv2D, pooling,
//!   Dense, activations, Embedding, SimpleRNN/LSTM/Bidirectional, masks, Functional chains;
//!   on the GPU the first two of each family, see `on_gpu`) and
//!   one or two per layer family of `tests/fixtures/graph/manifest.json` (`GRAPH_SUBSET`:
//!   BatchNormalization, LayerNormalization, Normalization, Conv1D/3D with groups and
//!   dilation, depthwise, separable and transposed convolutions 1-D to 3-D, 1-D/3-D and global
//!   pooling, a masked average, padding, cropping, upsampling, RepeatVector, Reshape,
//!   Concatenate, GRU both reset modes, Bidirectional GRU, masked GRU, ConvLSTM2D,
//!   TimeDistributed, an LSTM with `return_state` (four outputs), a `None` time axis, gelu,
//!   Softmax over time, PReLU, residual and inception blocks, a nested model).
//! - Env `WGNN_BROWSER_FIXTURES`: a folder of Keras models kept outside the repository, in the
//!   same manifest form, run on both backends too (see `extra_cases`).
//! - The shipped CIFAR-10 models on the first CIFAR-10 test images against Keras's saved
//!   probabilities (needs env `WGNN_DATA`), the NusaX TextVectorization model through
//!   `predictText`, and a seed NusaX model with its Keras `Tokenizer` through `Tokenizer.fromJson`
//!   and `predictTokenized` (needs `WGNN_SEED_MODELS`).
//! - The demo page renders predictions for CIFAR-10 test images; its screenshot is saved as
//!   `target/browser/demo.png` (with the page's load time and images/s in `demo.json`).
//! - Without `navigator.gpu`, `auto` runs on the CPU and `gpu` rejects.
//! - A bad file rejects the promise with the message the native loader (and the CLI) gives.
//!
//! The browser is found as env `WGNN_CHROMIUM`, else `chromium-headless-shell`, `chromium` or
//! `google-chrome` on PATH. With `CI` set, a missing browser, wasm toolchain or WebGPU adapter
//! fails; without it the test prints a note and passes.

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use headless_chrome::{Browser, LaunchOptions, Tab};
use ndarray::ArrayD;
use serde_json::Value;

/// Graph fixtures run in the browser: one or two per layer family not in the first manifest.
const GRAPH_SUBSET: &[&str] = &[
    "bn_last_axis",
    "ln_last_axis",
    "normalization_adapt",
    "conv1d_stride2_same",
    "conv1d_groups2",
    "conv2d_dilation_2x3_valid",
    "conv3d_valid",
    "depthwise2d_m2_stride2_same",
    "separable2d_m2_same",
    "conv1d_transpose_s2_valid",
    "conv2d_transpose_outpad_same",
    "conv3d_transpose_s2_same",
    "maxpool3d_pool2x2x3_stride1_same",
    "avgpool1d_pool3_stride2_same",
    "global_avgpool3d",
    "masked_global_avgpool1d",
    "zeropad2d_sym",
    "cropping1d",
    "upsampling2d_bilinear",
    "repeat_vector",
    "reshape_mid",
    "concat_last_axis",
    "gru_last",
    "gru_reset_before_sequences",
    "bigru_concat_sequences",
    "masked_gru_sequences",
    "convlstm2d_same_last",
    "time_distributed_conv2d",
    "lstm_return_state",
    "free_time_axis_len11",
    "free_time_axis_len4",
    "activation_gelu",
    "softmax_axis1",
    "prelu_full",
    "residual_block",
    "inception_block",
    "nested_sequential_in_functional",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Under CI a missing piece fails the test; elsewhere it is a note and the test passes.
fn missing<T>(what: &str) -> Option<T> {
    assert!(!ci(), "CI is set but {what}");
    eprintln!("note: {what}; skipping outside CI");
    None
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("browser"))
        .unwrap_or_else(|| PathBuf::from("target/browser"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn find_browser() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WGNN_CHROMIUM").filter(|p| !p.is_empty()) {
        // A named browser that is not there is a missing browser.
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    for name in ["chromium-headless-shell", "chromium", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// `bash web/build.sh` once per test process, into its own target folder (this test's cargo
/// holds the lock on the usual one). Err: why it could not be built.
fn build_dist() -> &'static Result<PathBuf, String> {
    static DIST: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIST.get_or_init(|| {
        let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-target");
        let out = std::process::Command::new("bash")
            .arg(repo().join("web/build.sh"))
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .map_err(|e| format!("cannot run bash web/build.sh: {e}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last: Vec<&str> = stderr.lines().rev().take(15).collect();
            return Err(format!(
                "bash web/build.sh failed: {}",
                last.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
        Ok(repo().join("web/dist"))
    })
}

/// A static file server on 127.0.0.1 for `web/dist` at `/`, `tests/fixtures` at `/fixtures/`,
/// and byte arrays the test puts under `/data/NAME`.
struct Server {
    port: u16,
    data: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl Server {
    fn start(dist: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let data: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let (dist, shared) = (dist.to_path_buf(), Arc::clone(&data));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (dist, data) = (dist.clone(), Arc::clone(&shared));
                std::thread::spawn(move || {
                    let _ = serve(stream, &dist, &data);
                });
            }
        });
        Server { port, data }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn put(&self, name: &str, bytes: Vec<u8>) -> String {
        self.data.lock().unwrap().insert(name.to_string(), bytes);
        format!("/data/{name}")
    }
}

fn serve(
    mut stream: TcpStream,
    dist: &Path,
    data: &Mutex<HashMap<String, Vec<u8>>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or("/");
    let body = if let Some(name) = path.strip_prefix("/data/") {
        data.lock().unwrap().get(name).cloned()
    } else if path.split('/').any(|part| part == "..") {
        None
    } else if let Some(rest) = path.strip_prefix("/fixtures/") {
        std::fs::read(common::fixtures_dir().join(rest)).ok()
    } else if let (Some(rest), Some(extra)) = (path.strip_prefix("/extra/"), extra_dir()) {
        std::fs::read(extra.join(rest)).ok()
    } else {
        let rest = path.trim_start_matches('/');
        let rest = if rest.is_empty() { "index.html" } else { rest };
        std::fs::read(dist.join(rest)).ok()
    };
    let kind = match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    match body {
        Some(body) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(&body)?;
        }
        None => write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
    }
    stream.flush()
}

/// The browser on the demo page, or None (with a note outside CI) when something is missing.
struct Session {
    _browser: Browser,
    tab: Arc<Tab>,
    server: Server,
    /// Whether `backend: "gpu"` found an adapter.
    gpu: bool,
}

/// One browser test at a time: SwiftShader uses every core.
static BROWSER_LOCK: Mutex<()> = Mutex::new(());

fn session() -> Option<Session> {
    let Some(chromium) = find_browser() else {
        return missing("no chromium-headless-shell (apt-get install chromium-headless-shell)");
    };
    let dist = match build_dist() {
        Ok(dist) => dist,
        Err(why) => return missing(why),
    };
    let server = Server::start(dist);
    let args: Vec<&OsStr> = [
        "--enable-unsafe-webgpu",
        "--use-webgpu-adapter=swiftshader",
        "--enable-features=Vulkan",
    ]
    .iter()
    .map(OsStr::new)
    .collect();
    let options = LaunchOptions::default_builder()
        .path(Some(chromium.clone()))
        .headless(true)
        .sandbox(false)
        .enable_gpu(true)
        .window_size(Some((1100, 1400)))
        .idle_browser_timeout(Duration::from_secs(900))
        .args(args)
        .build()
        .unwrap();
    let browser = Browser::new(options)
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(Duration::from_secs(600));
    tab.navigate_to(&server.url("index.html"))
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    // The module defines window.demo as soon as it runs; wgnn's init() is awaited below.
    let probe = eval(
        &tab,
        r#"(async () => {
            while (!window.demo) await new Promise((r) => setTimeout(r, 20));
            let gpu = "";
            try {
                const bytes = new Uint8Array(await (await fetch("/fixtures/dense_2d.keras")).arrayBuffer());
                const m = await demo.Model.load(bytes, { backend: "gpu", name: "dense_2d.keras" });
                gpu = m.backend; m.free();
            } catch (e) { gpu = "error: " + e.message; }
            return JSON.stringify({ gpu, webgpu: !!navigator.gpu });
        })()"#,
    );
    let gpu = probe["gpu"].as_str().unwrap_or("").to_string();
    eprintln!("browser: {}; gpu backend: {gpu}", chromium.display());
    let has_gpu = !gpu.starts_with("error:");
    if !has_gpu {
        assert!(
            !gpu.contains("no GPU adapter found") || !ci(),
            "CI is set but the browser has no WebGPU adapter: {gpu}"
        );
        assert!(
            gpu.contains("no GPU adapter found"),
            "loading a model on the browser's GPU failed: {gpu}"
        );
        eprintln!("note: no WebGPU adapter in the browser; the GPU half is skipped outside CI");
    }
    Some(Session {
        _browser: browser,
        tab,
        server,
        gpu: has_gpu,
    })
}

/// Evaluates an async expression that resolves to a JSON string and parses it.
fn eval(tab: &Tab, expression: &str) -> Value {
    let result = tab
        .evaluate(expression, true)
        .unwrap_or_else(|e| panic!("evaluating in the page failed: {e}"));
    let text = result
        .value
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("the page returned {result:?}, not a JSON string"));
    serde_json::from_str(text).unwrap()
}

/// One output as the page returned it: values and shape.
type Output = (Vec<f32>, Vec<usize>);

fn f32_bytes(values: impl Iterator<Item = f32>) -> Vec<u8> {
    values.flat_map(f32::to_le_bytes).collect()
}

fn i32_bytes(values: impl Iterator<Item = i64>) -> Vec<u8> {
    values.flat_map(|v| (v as i32).to_le_bytes()).collect()
}

/// One model run in the page: `model` is a URL path, `input` the served data (float32 or
/// int32) of `shape`. Returns every output (data, shape), or the promise's error message.
fn run_in_page(
    tab: &Tab,
    model: &str,
    input: &str,
    ids: bool,
    shape: &[usize],
    backend: &str,
) -> Result<Vec<Output>, String> {
    let array = if ids { "Int32Array" } else { "Float32Array" };
    let name = model.rsplit('/').next().unwrap_or(model);
    let js = format!(
        r#"(async () => {{
            try {{
                const bytes = new Uint8Array(await (await fetch("{model}")).arrayBuffer());
                const data = new {array}(await (await fetch("{input}")).arrayBuffer());
                const m = await demo.Model.load(bytes, {{ backend: "{backend}", name: "{name}" }});
                try {{
                    const out = await m.predict(data, {shape:?});
                    const all = out.outputs ?? [out];
                    return JSON.stringify({{ outputs: all.map((o) => ({{ data: Array.from(o.data), shape: o.shape }})) }});
                }} finally {{ m.free(); }}
            }} catch (e) {{ return JSON.stringify({{ error: String(e.message ?? e) }}); }}
        }})()"#
    );
    let v = eval(tab, &js);
    if let Some(e) = v["error"].as_str() {
        return Err(e.to_string());
    }
    Ok(v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let data = o["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
                .collect();
            let shape = o["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (data, shape)
        })
        .collect())
}

/// Compares one output with Keras's; Err names how many values are off and the worst.
fn compare(got: &Output, expected: &ArrayD<f32>) -> Result<(), String> {
    if got.1 != expected.shape() {
        return Err(format!("shape {:?}, Keras {:?}", got.1, expected.shape()));
    }
    let mut bad = 0;
    let mut worst = (0.0f32, 0usize);
    for (i, (&g, &e)) in got.0.iter().zip(expected.iter()).enumerate() {
        // NaN where Keras has NaN (a fully masked average) agrees.
        if (g.is_nan() && e.is_nan()) || common::within_tolerance(g, e) {
            continue;
        }
        bad += 1;
        let excess = (g - e).abs() / (1.0 + e.abs());
        // A NaN excess (one side NaN) is the worst.
        if excess.is_nan() || excess > worst.0 {
            worst = (excess, i);
        }
    }
    if bad == 0 {
        Ok(())
    } else {
        let i = worst.1;
        Err(format!(
            "{bad} of {} values outside 1e-4 * (1 + |expected|); worst at flat index {i}: got {}, expected {}",
            got.0.len(),
            got.0[i],
            expected.as_slice().map_or(f32::NAN, |s| s[i])
        ))
    }
}

/// One model run: its name, model path under /fixtures/, input (file, token ids?, shape) and
/// Keras's output files.
struct Case {
    name: String,
    /// Run on the GPU too (see `on_gpu`).
    gpu: bool,
    model: String,
    input: (PathBuf, bool, Vec<usize>),
    expected: Vec<PathBuf>,
}

impl Case {
    /// A manifest fixture whose files lie in `dir`, served under `url` (`/fixtures`, `/extra`).
    fn from_fixture(fx: &common::Fixture, dir: &Path, url: &str, name: String, gpu: bool) -> Case {
        Case {
            gpu,
            name,
            model: format!("{url}/{}", fx.model),
            input: (
                dir.join(&fx.input),
                fx.input_kind == common::FixtureInput::Ids,
                fx.input_shape.clone(),
            ),
            expected: vec![dir.join(&fx.expected)],
        }
    }
}

/// SwiftShader compiles and runs kernels slowly, so the GPU takes the first two fixtures of
/// each family of the first manifest (the name's first word; `masked_*` by its first two:
/// Conv2D valid and same, each pooling, Dense, Dropout, Rescaling, Reshape, activations, ReLU,
/// LeakyReLU, ELU, Softmax, Embedding with and without a mask, SimpleRNN/LSTM last and
/// sequences, Bidirectional, stacked, each masked recurrent kind, the Functional chains) and
/// every graph fixture of `GRAPH_SUBSET`; the CPU takes them all. Env `WGNN_BROWSER_ALL=1`
/// runs every fixture on the GPU too.
fn on_gpu(name: &str, seen: &mut HashMap<String, usize>) -> bool {
    let words: Vec<&str> = name.split('_').collect();
    let family = if words[0] == "masked" && words.len() > 1 {
        format!("{}_{}", words[0], words[1])
    } else {
        words[0].to_string()
    };
    let count = seen.entry(family).or_default();
    *count += 1;
    *count <= 2 || std::env::var_os("WGNN_BROWSER_ALL").is_some_and(|v| v == "1")
}

/// Env `WGNN_BROWSER_FIXTURES`: a folder of Keras models and inputs kept outside the repository,
/// with a `manifest.json` in the form `tools/keras_fixtures.py` writes (`fixtures`: `model`
/// (.keras), `input`, `expected`, `input_kind`, `input_shape`). Each runs on both backends,
/// served under `/extra/`.
fn extra_dir() -> Option<PathBuf> {
    std::env::var_os("WGNN_BROWSER_FIXTURES")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn extra_cases() -> Vec<Case> {
    let Some(dir) = extra_dir() else {
        return Vec::new();
    };
    let text = std::fs::read_to_string(dir.join("manifest.json"))
        .unwrap_or_else(|e| panic!("WGNN_BROWSER_FIXTURES: {}: {e}", dir.display()));
    #[derive(serde::Deserialize)]
    struct ExtraManifest {
        fixtures: Vec<common::Fixture>,
    }
    let manifest: ExtraManifest = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("WGNN_BROWSER_FIXTURES: manifest.json: {e}"));
    let cases: Vec<Case> = manifest
        .fixtures
        .into_iter()
        .filter(|fx| fx.weights.is_none() && fx.model.ends_with(".keras"))
        .map(|fx| Case::from_fixture(&fx, &dir, "/extra", format!("extra/{}", fx.name), true))
        .collect();
    assert!(
        !cases.is_empty(),
        "WGNN_BROWSER_FIXTURES: no .keras fixture in {}",
        dir.display()
    );
    eprintln!("{} fixtures from {}", cases.len(), dir.display());
    cases
}

fn cases() -> Vec<Case> {
    let dir = common::fixtures_dir();
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for fx in common::manifest().fixtures {
        if fx.weights.is_some() || !fx.model.ends_with(".keras") {
            continue;
        }
        let gpu = on_gpu(&fx.name, &mut seen);
        out.push(Case::from_fixture(
            &fx,
            &dir,
            "/fixtures",
            fx.name.clone(),
            gpu,
        ));
    }
    let graph: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("graph/manifest.json")).unwrap())
            .unwrap();
    let mut found = Vec::new();
    for fx in graph["fixtures"].as_array().unwrap() {
        let name = fx["name"].as_str().unwrap();
        if !GRAPH_SUBSET.contains(&name) {
            continue;
        }
        let model = fx["model"].as_str().unwrap();
        let inputs = fx["inputs"].as_array().unwrap();
        assert!(
            model.ends_with(".keras") && inputs.len() == 1,
            "graph fixture {name} in GRAPH_SUBSET must be a single-input .keras"
        );
        let input = &inputs[0];
        out.push(Case {
            gpu: true,
            name: format!("graph/{name}"),
            model: format!("/fixtures/graph/{model}"),
            input: (
                dir.join("graph").join(input["file"].as_str().unwrap()),
                input["kind"].as_str() != Some("float"),
                input["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
            ),
            expected: fx["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| dir.join("graph").join(o["file"].as_str().unwrap()))
                .collect(),
        });
        found.push(name);
    }
    out.extend(extra_cases());
    let absent: Vec<_> = GRAPH_SUBSET.iter().filter(|n| !found.contains(n)).collect();
    assert!(
        absent.is_empty(),
        "GRAPH_SUBSET names fixtures the graph manifest lacks: {absent:?}"
    );
    out
}

#[test]
fn keras_fixtures_match_keras_in_chromium_on_webgpu_and_wasm_cpu() {
    let _turn = BROWSER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = session() else { return };
    let backends: &[&str] = if s.gpu { &["gpu", "cpu"] } else { &["cpu"] };
    let mut failures = Vec::new();
    let mut passed: HashMap<&str, usize> = HashMap::new();
    let mut seconds: HashMap<&str, f64> = HashMap::new();
    let mut ran: HashMap<&str, usize> = HashMap::new();
    let cases = cases();
    for case in &cases {
        let (file, ids, shape) = &case.input;
        let bytes = if *ids {
            i32_bytes(common::read_npy_ids(file).into_iter())
        } else {
            f32_bytes(common::read_npy_f32(file).into_iter())
        };
        let input = s.server.put(&case.name.replace('/', "_"), bytes);
        let expected: Vec<ArrayD<f32>> = case
            .expected
            .iter()
            .map(|p| common::read_npy_f32(p))
            .collect();
        for &backend in backends {
            if backend == "gpu" && !case.gpu {
                continue;
            }
            *ran.entry(backend).or_default() += 1;
            let start = Instant::now();
            let result = run_in_page(&s.tab, &case.model, &input, *ids, shape, backend);
            *seconds.entry(backend).or_default() += start.elapsed().as_secs_f64();
            let verdict = result.and_then(|outs| {
                if outs.len() != expected.len() {
                    return Err(format!("{} outputs, Keras {}", outs.len(), expected.len()));
                }
                outs.iter()
                    .zip(&expected)
                    .try_for_each(|(g, e)| compare(g, e))
            });
            match verdict {
                Ok(()) => *passed.entry(backend).or_default() += 1,
                Err(e) => failures.push(format!("{} on {backend}: {e}", case.name)),
            }
        }
    }
    for &backend in backends {
        eprintln!(
            "{backend}: {} of {} fixtures match Keras in {:.1} s",
            passed.get(backend).copied().unwrap_or(0),
            ran.get(backend).copied().unwrap_or(0),
            seconds.get(backend).copied().unwrap_or(0.0)
        );
    }
    assert!(
        failures.is_empty(),
        "in the browser:\n{}",
        failures.join("\n")
    );
}

/// The shipped CIFAR-10 models on the first test images (exact pixels) against Keras's own
/// probabilities; the NusaX TextVectorization model on raw sentences through `predictText`.
#[test]
fn shipped_models_match_keras_in_chromium() {
    let _turn = BROWSER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(data) = common::env_dir("WGNN_DATA") else {
        return;
    };
    let Some(s) = session() else { return };
    const N: usize = 16;
    let cifar = wgnn::data::Cifar10::locate(&data.join("cifar10")).unwrap();
    let batch = cifar
        .load(wgnn::data::cifar10::Split::Test, Some(N))
        .unwrap();
    let input = s
        .server
        .put("cifar10_first.f32", f32_bytes(batch.images.iter().copied()));
    let backends: &[&str] = if s.gpu { &["gpu", "cpu"] } else { &["cpu"] };
    for model in ["cifar10_base", "cifar10_vgg6"] {
        let keras = common::read_npy_f32(
            &common::fixtures_dir().join(format!("cifar10/{model}.first1000.keras_probs.npy")),
        );
        let expected = keras
            .slice_axis(ndarray::Axis(0), (0..N).into())
            .to_owned()
            .into_dyn();
        for &backend in backends {
            let outs = run_in_page(
                &s.tab,
                &format!("/models/{model}.keras"),
                &input,
                false,
                &[N, 32, 32, 3],
                backend,
            )
            .unwrap_or_else(|e| panic!("{model} on {backend}: {e}"));
            compare(&outs[0], &expected).unwrap_or_else(|e| panic!("{model} on {backend}: {e}"));
        }
    }
    // Raw sentences: the page's TextVectorization against the logits Keras returned.
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(
            common::fixtures_dir().join("text/nusax_textvec_bilstm.cases.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let cases = cases["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let expected: Vec<f32> = cases
        .iter()
        .flat_map(|c| c["expected"].as_array().unwrap().clone())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let expected = ArrayD::from_shape_vec(ndarray::IxDyn(&[texts.len(), 3]), expected).unwrap();
    for &backend in backends {
        let js = format!(
            r#"(async () => {{
                try {{
                    const bytes = new Uint8Array(await (await fetch("/models/nusax_textvec_bilstm.keras")).arrayBuffer());
                    const m = await demo.Model.load(bytes, {{ backend: "{backend}" }});
                    const out = await m.predictText({});
                    m.free();
                    return JSON.stringify({{ data: Array.from(out.data), shape: out.shape }});
                }} catch (e) {{ return JSON.stringify({{ error: String(e.message ?? e) }}); }}
            }})()"#,
            serde_json::to_string(&texts).unwrap()
        );
        let v = eval(&s.tab, &js);
        assert!(
            v["error"].is_null(),
            "predictText on {backend}: {}",
            v["error"]
        );
        let got: Vec<f32> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        compare(&(got, vec![texts.len(), 3]), &expected)
            .unwrap_or_else(|e| panic!("predictText on {backend}: {e}"));
    }
}

/// A seed NusaX model that takes token ids, with its Keras `Tokenizer`: `Tokenizer.fromJson`
/// and `texts_to_sequences` give the native tokenizer's ids, and `predictTokenized` Keras's
/// probabilities on the first test sentences (needs `WGNN_SEED_MODELS` and `WGNN_DATA`).
#[test]
fn seed_model_with_a_keras_tokenizer_matches_keras_in_chromium() {
    let _turn = BROWSER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(seed), Some(data)) = (
        common::env_dir("WGNN_SEED_MODELS"),
        common::env_dir("WGNN_DATA"),
    ) else {
        return;
    };
    let Some(s) = session() else { return };
    const N: usize = 16;
    let examples = wgnn::data::Nusax::locate(&data.join("nusax"))
        .unwrap()
        .load(wgnn::data::nusax::Split::Test, None)
        .unwrap();
    let texts: Vec<&str> = examples.texts[..N].iter().map(String::as_str).collect();
    let tokenizer_path = seed.join("nusax_tokenizer.json");
    let native = wgnn::text::Tokenizer::load(&tokenizer_path).unwrap();
    let tokenizer = s.server.put(
        "nusax_tokenizer.json",
        std::fs::read(&tokenizer_path).unwrap(),
    );
    let model = s.server.put(
        "lstm_layer1.keras",
        std::fs::read(seed.join("lstm_layer1.keras")).unwrap(),
    );
    let probs = common::read_npy_f32(&seed.join("lstm_layer1.test_probs.npy"));
    let expected = probs
        .slice_axis(ndarray::Axis(0), (0..N).into())
        .to_owned()
        .into_dyn();
    let backends: &[&str] = if s.gpu { &["gpu", "cpu"] } else { &["cpu"] };
    for &backend in backends {
        let js = format!(
            r#"(async () => {{
                try {{
                    const tok = demo.Tokenizer.fromJson(await (await fetch("{tokenizer}")).text());
                    const texts = {texts};
                    const seqs = tok.texts_to_sequences(texts).map((a) => Array.from(a));
                    const bytes = new Uint8Array(await (await fetch("{model}")).arrayBuffer());
                    const m = await demo.Model.load(bytes, {{ backend: "{backend}", name: "lstm_layer1.keras" }});
                    const out = await m.predictTokenized(texts, tok);
                    m.free(); tok.free();
                    return JSON.stringify({{ seqs, data: Array.from(out.data), shape: out.shape }});
                }} catch (e) {{ return JSON.stringify({{ error: String(e.message ?? e) }}); }}
            }})()"#,
            texts = serde_json::to_string(&texts).unwrap()
        );
        let v = eval(&s.tab, &js);
        assert!(v["error"].is_null(), "on {backend}: {}", v["error"]);
        let seqs: Vec<Vec<i64>> = serde_json::from_value(v["seqs"].clone()).unwrap();
        assert_eq!(
            seqs,
            native.texts_to_sequences(&texts),
            "texts_to_sequences"
        );
        let got: Vec<f32> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        compare(&(got, vec![N, 3]), &expected)
            .unwrap_or_else(|e| panic!("predictTokenized on {backend}: {e}"));
    }
}

/// A bad file rejects `Model.load` with the native loader's one-line message.
#[test]
fn errors_reject_with_the_native_message() {
    let _turn = BROWSER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = session() else { return };
    let dir = common::fixtures_dir();
    let mut checked = 0;
    for bad in common::manifest().bad {
        if bad.weights.is_some() || !bad.file.ends_with(".keras") {
            continue;
        }
        let bytes = std::fs::read(dir.join(&bad.file)).unwrap();
        let name = Path::new(&bad.file).file_name().unwrap().to_str().unwrap();
        let Err(native) = wgnn::Model::load_bytes(name, &bytes) else {
            continue;
        };
        let input = s.server.put("one.f32", f32_bytes([0.0f32].into_iter()));
        let got = run_in_page(
            &s.tab,
            &format!("/fixtures/{}", bad.file),
            &input,
            false,
            &[1],
            "cpu",
        );
        assert_eq!(
            got.err().as_deref(),
            Some(native.to_string().as_str()),
            "{}",
            bad.file
        );
        checked += 1;
        if checked == 4 {
            break;
        }
    }
    assert!(checked > 0, "no bad .keras file was checked");
    // A wrong shape is the native input error, too.
    let input = s
        .server
        .put("three.f32", f32_bytes([0.0f32; 3].into_iter()));
    let got = run_in_page(
        &s.tab,
        "/models/cifar10_base.keras",
        &input,
        false,
        &[1, 3],
        "cpu",
    );
    let err = got.expect_err("a (1, 3) batch for a (N, 32, 32, 3) model");
    assert_eq!(err, "input: expected shape (N, 32, 32, 3), found [1, 3]");
}

/// A browser without WebGPU: `auto` runs on the wasm CPU path, `gpu` rejects with the
/// no-adapter message.
#[test]
fn auto_runs_on_the_cpu_without_webgpu() {
    let _turn = BROWSER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = session() else { return };
    let v = eval(
        &s.tab,
        r#"(async () => {
            Object.defineProperty(Navigator.prototype, "gpu", { get: () => undefined, configurable: true });
            const bytes = new Uint8Array(await (await fetch("/models/cifar10_base.keras")).arrayBuffer());
            const auto = await demo.Model.load(bytes, { backend: "auto" });
            const out = await auto.predict(new Float32Array(32 * 32 * 3).fill(0.5), [1, 32, 32, 3]);
            let gpu = "";
            try { (await demo.Model.load(bytes, { backend: "gpu" })).free(); gpu = "loaded"; } catch (e) { gpu = e.message; }
            return JSON.stringify({ auto: auto.backend, shape: out.shape, gpu });
        })()"#,
    );
    assert!(v["auto"].as_str().unwrap().starts_with("cpu: "), "{v}");
    assert_eq!(v["shape"], serde_json::json!([1, 10]));
    assert_eq!(
        v["gpu"],
        "gpu: no GPU adapter found: the browser offers no WebGPU adapter (navigator.gpu is absent or requestAdapter() found none)"
    );
}

/// The demo page: the CIFAR-10 CNN preloaded, 8 test images classified with top-3 bars; a
/// screenshot and the page's timings go to target/browser/.
#[test]
fn demo_page_renders_predictions() {
    let _turn = BROWSER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_) = common::env_dir("WGNN_DATA") else {
        return;
    };
    let Some(s) = session() else { return };
    let v = eval(
        &s.tab,
        r##"(async () => {
            await demo.ready;
            const cards = [...document.querySelectorAll("#results .result")];
            const first = await demo.classifyTestImages(8, 0);
            const again = await demo.classifyTestImages(32, 0);
            await demo.classifyTestImages(8, 0);
            return JSON.stringify({
                loadMs: demo.state.loadMs,
                backend: demo.state.image.backend,
                cards: cards.length,
                bars: cards.map((c) => [...c.querySelectorAll(".bar")].map((b) => [b.dataset.label, Number(b.dataset.p)])),
                truth: cards.map((c) => c.querySelector(".truth")?.textContent ?? ""),
                status: document.getElementById("status").textContent,
                timing: document.getElementById("timing").textContent,
                error: document.getElementById("error").textContent,
                msPerImage8: first.ms / 8,
                msPerImage32: again.ms / 32,
                probs: first.probs,
            });
        })()"##,
    );
    assert_eq!(v["error"], "", "the page shows an error");
    assert_eq!(
        v["cards"], 8,
        "the page shows 8 classified test images: {v}"
    );
    let keras = common::read_npy_f32(
        &common::fixtures_dir().join("cifar10/cifar10_base.first1000.keras_probs.npy"),
    );
    for (i, bars) in v["bars"].as_array().unwrap().iter().enumerate() {
        let bars = bars.as_array().unwrap();
        assert_eq!(bars.len(), 3, "image {i}: three bars");
        let row = keras.index_axis(ndarray::Axis(0), i);
        let mut order: Vec<usize> = (0..10).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        for (k, bar) in bars.iter().enumerate() {
            assert_eq!(
                bar[0],
                wgnn::data::cifar10::CLASS_NAMES[order[k]],
                "image {i}: bar {k}"
            );
            let p = bar[1].as_f64().unwrap() as f32;
            assert!(
                common::within_tolerance(p, row[order[k]]),
                "image {i}: bar {k} shows {p}, Keras {}",
                row[order[k]]
            );
        }
    }
    let png = s
        .tab
        .capture_screenshot(
            headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption::Png,
            None,
            None,
            true,
        )
        .unwrap();
    let dir = artifacts();
    std::fs::write(dir.join("demo.png"), &png).unwrap();
    let summary = serde_json::json!({
        "backend": v["backend"],
        "page_ready_ms": v["loadMs"],
        "ms_per_image_batch8": v["msPerImage8"],
        "ms_per_image_batch32": v["msPerImage32"],
        "images_per_s_batch32": 1000.0 / v["msPerImage32"].as_f64().unwrap_or(f64::NAN),
        "status": v["status"],
        "timing": v["timing"],
    });
    std::fs::write(dir.join("demo.json"), summary.to_string()).unwrap();
    eprintln!(
        "demo page: {summary}; screenshot {}",
        dir.join("demo.png").display()
    );
    let mut header = [0u8; 8];
    (&png[..]).read_exact(&mut header).unwrap();
    assert_eq!(&header, b"\x89PNG\r\n\x1a\n", "the screenshot is a PNG");
}

/// The comparison the browser tests rely on flags a value outside the tolerance, a wrong shape
/// and a NaN where Keras has a number.
#[test]
fn compare_flags_what_keras_does_not_give() {
    let expected =
        ArrayD::from_shape_vec(ndarray::IxDyn(&[2, 2]), vec![1.0, -2.0, 0.0, 3.0]).unwrap();
    let ok = (vec![1.0, -2.0001, 0.00005, 3.0], vec![2, 2]);
    assert_eq!(compare(&ok, &expected), Ok(()));
    let off = (vec![1.0, -2.0, 0.001, 3.0], vec![2, 2]);
    let err = compare(&off, &expected).unwrap_err();
    assert!(
        err.starts_with("1 of 4 values") && err.contains("flat index 2"),
        "{err}"
    );
    let nan = (vec![1.0, f32::NAN, 0.0, 3.0], vec![2, 2]);
    assert!(compare(&nan, &expected)
        .unwrap_err()
        .contains("flat index 1"));
    let shape = (vec![1.0, -2.0, 0.0, 3.0], vec![4]);
    assert!(compare(&shape, &expected)
        .unwrap_err()
        .starts_with("shape [4]"));
}
