#!/usr/bin/env python3
"""Training speed side by side in one run: `wgnn train --backend cpu` and `--backend gpu` against
Keras's `fit` (TensorFlow CPU) on the same model, data, batch size and optimizer, as items/s per
epoch.

    .venv-keras/bin/python tools/bench_train.py            # the default set below, CPU and GPU
    .venv-keras/bin/python tools/bench_train.py models/cifar10_base.keras --items 2048
    .venv-keras/bin/python tools/bench_train.py --backends cpu   # without the GPU column

Models: the seed's base CNN and VGG6 on CIFAR-10 training images (WGNN_DATA/cifar10), and a
NusaX LSTM from WGNN_SEED_MODELS on its training sentences (ids from the seed's tokenizer).
Both sides train from the same weights with Adam(1e-3) and sparse categorical cross-entropy,
shuffle off, for --epochs epochs; the first epoch is warm-up and the best later epoch counts.
Prints a table with the ratios (wgnn / Keras) and one JSON line at the end, with the GPU adapter
wgnn trained on (the GPU column is only a speed figure on a real GPU: lavapipe's is not).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def cifar_data(items):
    import numpy as np

    data = Path(os.environ.get("WGNN_DATA", ROOT.parent / "shared" / "data")) / "cifar10"
    raw = np.fromfile(data / "data_batch_1.bin", dtype=np.uint8).reshape(-1, 3073)[:items]
    labels = raw[:, 0].astype("int32")
    images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype("float32") / 255.0
    return images, labels


def nusax_data(model_path, items):
    import csv
    import numpy as np

    data = Path(os.environ.get("WGNN_DATA", ROOT.parent / "shared" / "data")) / "nusax"
    seed = Path(model_path).parent
    from keras.src.legacy.preprocessing.text import tokenizer_from_json

    tok = tokenizer_from_json((seed / "nusax_tokenizer.json").read_text())
    names = ["neutral", "positive", "negative"]
    texts, labels = [], []
    with open(data / "train.csv", newline="") as f:
        for row in csv.DictReader(f):
            texts.append(row["text"])
            labels.append(names.index(row["label"]))
    import keras

    length = keras.saving.load_model(model_path, compile=False).input_shape[1]
    seqs = tok.texts_to_sequences(texts)
    ids = np.zeros((len(seqs), length), dtype="int32")
    for i, s in enumerate(seqs):
        s = s[:length]
        ids[i, : len(s)] = s
    reps = -(-items // len(ids))
    ids = np.concatenate([ids] * reps)[:items]
    labels = np.concatenate([np.array(labels, dtype="int32")] * reps)[:items]
    return ids, labels


def keras_fit(model_path, x, y, batch, epochs):
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_path, compile=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0, callbacks=[Timer()])
    return [len(x) / t for t in times], {"keras": keras.__version__, "tensorflow": tf.__version__}


def wgnn_train(wgnn, model_path, x, y, batch, epochs, backend):
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/x.npy", x)
        np.save(f"{tmp}/y.npy", y)
        cmd = [wgnn, "train", str(model_path), "--x", f"{tmp}/x.npy", "--y", f"{tmp}/y.npy",
               "--epochs", str(epochs), "--batch-size", str(batch), "--no-shuffle",
               "--loss", "sparse_categorical_crossentropy", "--optimizer", "adam",
               "--learning-rate", "0.001", "--backend", backend, "--json", "-o", f"{tmp}/out.keras"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"wgnn train --backend {backend} failed: {out.stderr.strip()}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        return [len(x) / s for s in result["epoch_seconds"]], result["adapter"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*")
    p.add_argument("--items", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--backends", default="cpu,gpu",
                   help="wgnn backends to time, comma-separated (default cpu,gpu)")
    p.add_argument("--wgnn", default=str(ROOT / "target" / "release" / "wgnn"))
    args = p.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    if not backends or any(b not in ("cpu", "gpu") for b in backends):
        sys.exit(f"--backends: expected cpu and/or gpu, got '{args.backends}'")
    seed = Path(os.environ.get("WGNN_SEED_MODELS", ROOT.parent / "shared" / "models" / "seed"))
    models = args.models or [str(ROOT / "models/cifar10_base.keras"),
                             str(ROOT / "models/cifar10_vgg6.keras"),
                             str(seed / "lstm_layer2.keras")]
    rows = []
    versions = {}
    adapter = None
    for m in models:
        if "cifar10" in Path(m).name:
            x, y = cifar_data(args.items)
        else:
            x, y = nusax_data(m, args.items)
        k, versions = keras_fit(m, x, y, args.batch_size, args.epochs)
        kb = max(k[1:] or k)
        row = {"model": Path(m).name, "items": len(x), "batch": args.batch_size, "keras_items_per_s": kb}
        line = f"{Path(m).name:24} keras {kb:9.1f}"
        for backend in backends:
            w, used = wgnn_train(args.wgnn, m, x, y, args.batch_size, args.epochs, backend)
            wb = max(w[1:] or w)
            if backend == "gpu":
                adapter = used
            # The CPU column keeps its old keys so earlier JSON lines stay comparable.
            key = "wgnn" if backend == "cpu" else "wgnn_gpu"
            row[f"{key}_items_per_s"] = wb
            row["ratio" if backend == "cpu" else "gpu_ratio"] = wb / kb
            line += f"  wgnn {backend} {wb:9.1f} ({wb / kb:5.2f}x)"
        rows.append(row)
        print(line, flush=True)
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "gpu_adapter": adapter, **versions}
    print(json.dumps({"rows": rows, **info}))


if __name__ == "__main__":
    main()
