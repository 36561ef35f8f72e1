#!/usr/bin/env python3
"""ONNX Runtime (CPU) vs Keras (TensorFlow CPU) vs `wgnn bench --backend cpu`, side by side in one run.

    .venv-keras/bin/pip install -r tools/requirements.txt -r tools/requirements-ort.txt
    WGNN_SEED_MODELS=/path/to/seed nice -n 19 .venv-keras/bin/python tools/bench_ort.py
    .venv-keras/bin/python tools/bench_ort.py --models cifar10_base,lstm_layer3 --rounds 1 --iters 2
    .venv-keras/bin/python tools/bench_ort.py --models path/to/model.keras --batch-size 64 --latency-models none

Built-in models: models/cifar10_base.keras and models/cifar10_vgg6.keras at batch 250, and the seed
models $WGNN_SEED_MODELS/lstm_layer3.keras and $WGNN_SEED_MODELS/rnn_layer1Bi.keras (default
../shared/models/seed beside the repository) at batch 400, their 60-token inputs int ids drawn
below the Embedding's input_dim. --models takes built-in names or .keras paths (a path runs at
--batch-size, default 250).

Throughput (items/s): each round times ORT, then Keras, then wgnn on the model (rounds interleaved:
ORT, Keras, wgnn, ORT, Keras, wgnn, ...); each figure is the median of --rounds rounds, a round
being --iters batches (by default about a second's work per model) after warm-up (--warmup
batches for ORT and Keras before round 1; `wgnn bench` warms up 2 batches in each of its
processes). Batch-1 latency (ms) for --latency-models (default VGG6 and the base CNN): per round
the median of --latency-runs single-item calls, then the median over rounds.

- ORT: `onnxruntime.InferenceSession(..., providers=["CPUExecutionProvider"])`, default threads,
  `session.run` on the batch. The ONNX file is Keras's own `model.export(path, format="onnx")`
  (through tf2onnx), cached under the system temp dir (--cache), never in the repository.
- Keras: `model.predict_on_batch` on the same numpy array (ORT gets that array cast to the ONNX
  input's dtype only if it differs, so the values are identical). The table's last column is the
  largest |ORT - Keras| output difference on 16 items of that array: the export is the same model.
- wgnn: `wgnn bench MODEL --backend cpu --json` (the helper from tools/bench_keras.py), which times
  its own deterministic synthetic input of the same shape and value ranges (pixels in [0, 1), ids
  below input_dim), not the numpy array: the work is the same, which is all throughput needs.
  The environment is passed through (WGNN_CPU, RAYON_NUM_THREADS, ...).

Ratios are speeds, > 1 means wgnn is faster: items/s wgnn / ORT and wgnn / Keras, and for latency
ORT ms / wgnn ms and Keras ms / wgnn ms. Prints the host's CPU model and SIMD level (WGNN_CPU if
set, else avx512f / avx2+fma / sse2 from /proc/cpuinfo), the versions, the tables and one JSON line
at the end.
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_keras import ROOT, wgnn_bench  # noqa: E402

SEED = os.environ.get("WGNN_SEED_MODELS", str(ROOT.parent / "shared" / "models" / "seed"))
MODELS = {
    # name: (path, batch, timed batches per round: about a second of work on a 2-core host)
    "cifar10_base": (str(ROOT / "models" / "cifar10_base.keras"), 250, 20),
    "cifar10_vgg6": (str(ROOT / "models" / "cifar10_vgg6.keras"), 250, 4),
    "lstm_layer3": (os.path.join(SEED, "lstm_layer3.keras"), 400, 20),
    "rnn_layer1Bi": (os.path.join(SEED, "rnn_layer1Bi.keras"), 400, 20),
}
LATENCY_MODELS = "cifar10_vgg6,cifar10_base"
SEQ_LEN = 60  # the seed models' token count, where the model leaves it open


def cpu_info():
    """(model name, SIMD level): WGNN_CPU wins if set, else the widest of avx512f / avx2+fma / sse2."""
    name, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    if os.environ.get("WGNN_CPU"):
        simd = f"{os.environ['WGNN_CPU']} (WGNN_CPU)"
    elif "avx512f" in flags:
        simd = "avx512f"
    elif {"avx2", "fma"} <= flags:
        simd = "avx2+fma"
    elif "sse2" in flags:
        simd = "sse2"
    else:
        simd = "unknown"
    return name, simd


def onnx_export(model, keras_path, cache):
    """Keras's own ONNX export of `model`, cached by the .keras file's content."""
    digest = hashlib.sha256(Path(keras_path).read_bytes()).hexdigest()[:12]
    path = Path(cache) / f"{Path(keras_path).stem}-{digest}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial.onnx")
        with warnings.catch_warnings():  # tf2onnx's np.object probe
            warnings.simplefilter("ignore", FutureWarning)
            model.export(str(tmp), format="onnx", verbose=False)
        tmp.replace(path)
    return path


def make_input(model, batch, rng):
    """One numpy batch for all engines: float pixels in [0, 1) or int32 ids below input_dim."""
    shape = tuple(d if d is not None else SEQ_LEN for d in model.input_shape[1:])
    if "int" in str(model.inputs[0].dtype):
        vocab = next(l.input_dim for l in model.layers if l.__class__.__name__ == "Embedding")
        return rng.integers(0, vocab, size=(batch,) + shape).astype("int32")
    return rng.random((batch,) + shape, dtype="float32")


def timed(fn, x, iters):
    """Items/s of `iters` calls of fn(x)."""
    start = time.perf_counter()
    for _ in range(iters):
        fn(x)
    return len(x) * iters / (time.perf_counter() - start)


def latency_ms(fn, x1, runs):
    """Median ms of `runs` single-item calls (after one untimed call)."""
    fn(x1)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x1)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def wgnn_latency_ms(wgnn, model_path, runs):
    out = subprocess.run(
        [wgnn, "bench", model_path, "--backend", "cpu", "--batch-size", "1", "--iters", "1",
         "--latency-runs", str(runs), "--json"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["latency_ms_p50"]


class Engines:
    """Keras model, ORT session and the shared input for one .keras file."""

    def __init__(self, keras_path, batch, cache, ort):
        import keras
        import numpy as np

        self.model = keras.saving.load_model(keras_path, compile=False)
        self.x = make_input(self.model, batch, np.random.default_rng(0))
        self.model.predict_on_batch(self.x[:1])  # Keras's export needs a model that has been called
        onnx_path = onnx_export(self.model, keras_path, cache)
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        meta = self.session.get_inputs()[0]
        self.ort_name = meta.name
        self.ort_dtype = {"tensor(float)": "float32", "tensor(int32)": "int32",
                          "tensor(int64)": "int64"}[meta.type]

    def keras(self, x):
        return self.model.predict_on_batch(x)

    def ort(self, x):
        return self.session.run(None, {self.ort_name: x.astype(self.ort_dtype, copy=False)})


def resolve(spec, batch_override, iters_override):
    if spec in MODELS:
        path, batch, iters = MODELS[spec]
        return spec, path, batch_override or batch, iters_override or iters
    return Path(spec).stem, spec, batch_override or 250, iters_override or 10


def versions(wgnn):
    import keras
    import numpy
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    try:
        wv = subprocess.run([wgnn, "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        wv = "?"
    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "tf2onnx": tf2onnx.__version__, "keras": keras.__version__, "tensorflow": tf.__version__,
            "numpy": numpy.__version__, "wgnn": wv}


def ratio(a, b):
    return a / b if a and b else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated built-in names ({', '.join(MODELS)}) or .keras paths")
    ap.add_argument("--batch-size", type=int, help="one batch for every model (default: 250 / 400 as above)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int,
                    help="timed batches per round and engine (default: 20, VGG6 4, a .keras path 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches per engine before round 1")
    ap.add_argument("--latency-models", default=LATENCY_MODELS, help="comma-separated, or none")
    ap.add_argument("--latency-runs", type=int, default=50, help="single-item calls per round and engine")
    ap.add_argument("--wgnn", default=str(ROOT / "target" / "release" / "wgnn"))
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "wgnn-bench-ort"),
                    help="where the ONNX exports are cached")
    args = ap.parse_args()
    if not Path(args.wgnn).exists():
        sys.exit(f"no wgnn binary at {args.wgnn} (cargo build --release, or --wgnn PATH)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import onnxruntime as ort
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # predict_on_batch's retracing notes at batch 1 and 16

    cpu, simd = cpu_info()
    vers = versions(args.wgnn)
    latency_specs = [] if args.latency_models in ("", "none") else args.latency_models.split(",")
    throughput, latency = [], []
    for spec in args.models.split(","):
        name, path, batch, iters = resolve(spec, args.batch_size, args.iters)
        print(f"[{name}] loading, exporting ONNX ...", file=sys.stderr, flush=True)
        eng = Engines(path, batch, args.cache, ort)
        x = eng.x
        agree = float(np.abs(np.asarray(eng.ort(x[:16])[0]) - np.asarray(eng.keras(x[:16]))).max())
        for fn in (eng.ort, eng.keras):
            for _ in range(args.warmup):
                fn(x)
        rounds = {"ort": [], "keras": [], "wgnn": []}
        report = None
        for r in range(args.rounds):
            print(f"[{name}] batch {batch}, round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
            rounds["ort"].append(timed(eng.ort, x, iters))
            rounds["keras"].append(timed(eng.keras, x, iters))
            report = wgnn_bench(args.wgnn, path, batch, iters, 1, "cpu")
            rounds["wgnn"].append(report["items_per_s"])
        med = {k: statistics.median(v) for k, v in rounds.items()}
        throughput.append({"model": name, "path": path, "batch_size": batch, "iters": iters,
                           "input_shape": list(x.shape), "input_dtype": str(x.dtype),
                           "max_abs_ort_minus_keras": agree,
                           "gflop_per_item": report["flops_per_item"] / 1e9,
                           "ort_items_per_s": med["ort"], "keras_items_per_s": med["keras"],
                           "wgnn_items_per_s": med["wgnn"], "wgnn_over_ort": ratio(med["wgnn"], med["ort"]),
                           "wgnn_over_keras": ratio(med["wgnn"], med["keras"]), "rounds": rounds})
        if spec in latency_specs or name in latency_specs:
            x1 = x[:1]
            lat = {"ort": [], "keras": [], "wgnn": []}
            for r in range(args.rounds):
                print(f"[{name}] batch-1 latency, round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
                lat["ort"].append(latency_ms(eng.ort, x1, args.latency_runs))
                lat["keras"].append(latency_ms(eng.keras, x1, args.latency_runs))
                lat["wgnn"].append(wgnn_latency_ms(args.wgnn, path, args.latency_runs))
            med = {k: statistics.median(v) for k, v in lat.items()}
            latency.append({"model": name, "ort_ms": med["ort"], "keras_ms": med["keras"], "wgnn_ms": med["wgnn"],
                            "wgnn_over_ort": ratio(med["ort"], med["wgnn"]),
                            "wgnn_over_keras": ratio(med["keras"], med["wgnn"]), "rounds": lat})
        del eng

    print(f"host       {cpu}, {os.cpu_count()} CPUs, SIMD {simd}")
    print(f"versions   onnxruntime {vers['onnxruntime']} (CPUExecutionProvider, default threads), "
          f"onnx {vers['onnx']}, tf2onnx {vers['tf2onnx']}, Keras {vers['keras']}, TF {vers['tensorflow']}, "
          f"numpy {vers['numpy']}, {vers['wgnn']} ({args.wgnn})")
    print(f"method     median of {args.rounds} interleaved rounds (ORT, Keras, wgnn), "
          f"'iters' timed batches per round and engine; ratios > 1: wgnn faster")
    print()
    print(f"{'model':<14} {'batch':>5} {'iters':>5} {'GFLOP/item':>10} {'ORT items/s':>12} {'Keras items/s':>14} "
          f"{'wgnn items/s':>13} {'wgnn/ORT':>9} {'wgnn/Keras':>11} {'|ORT-Keras|':>11}")
    for t in throughput:
        print(f"{t['model']:<14} {t['batch_size']:>5} {t['iters']:>5} {t['gflop_per_item']:>10.4f} "
              f"{t['ort_items_per_s']:>12.1f} {t['keras_items_per_s']:>14.1f} {t['wgnn_items_per_s']:>13.1f} {t['wgnn_over_ort']:>8.2f}x "
              f"{t['wgnn_over_keras']:>10.2f}x {t['max_abs_ort_minus_keras']:>11.1e}")
    if latency:
        print()
        print(f"batch-1 latency, median of {args.latency_runs} calls per round, median of {args.rounds} rounds")
        print(f"{'model':<14} {'ORT ms':>9} {'Keras ms':>9} {'wgnn ms':>9} {'wgnn/ORT':>9} {'wgnn/Keras':>11}")
        for t in latency:
            print(f"{t['model']:<14} {t['ort_ms']:>9.3f} {t['keras_ms']:>9.3f} {t['wgnn_ms']:>9.3f} "
                  f"{t['wgnn_over_ort']:>8.2f}x {t['wgnn_over_keras']:>10.2f}x")
    print(json.dumps({"host_cpu": cpu, "cpus": os.cpu_count(), "simd": simd, "versions": vers,
                      "rounds": args.rounds, "latency_runs": args.latency_runs,
                      "throughput": throughput, "latency": latency}))


if __name__ == "__main__":
    sys.exit(main())
