#!/usr/bin/env python3
"""Keras (TensorFlow CPU) vs `wgnn bench` on the same model, input shape and batch, in one run.

    .venv-keras/bin/python tools/bench_keras.py models/cifar10_vgg6.keras --batch-size 250
    .venv-keras/bin/python tools/bench_keras.py SEED/lstm_layer3.keras --batch-size 400 --backend cpu

Keras: `model.predict_on_batch` on a synthetic batch, warm-up then the best of --repeats timed
runs (each of --iters batches). wgnn: `wgnn bench MODEL --json` with the same batch size, also the
best of --repeats runs. Prints both, the ratio (wgnn / Keras) and one JSON line at the end.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def keras_items_per_s(model_path, batch, iters, repeats):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    shape = (batch,) + tuple(model.input_shape[1:])
    rng = np.random.default_rng(0)
    if "int" in str(model.inputs[0].dtype):
        vocab = next(l.input_dim for l in model.layers if l.__class__.__name__ == "Embedding")
        x = rng.integers(0, vocab, size=shape).astype("int32")
    else:
        x = rng.random(shape, dtype=np.float32)
    for _ in range(2):
        model.predict_on_batch(x)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            model.predict_on_batch(x)
        best = max(best, batch * iters / (time.perf_counter() - start))
    import tensorflow as tf

    return best, {"keras": keras.__version__, "tensorflow": tf.__version__}


def wgnn_bench(wgnn, model_path, batch, iters, repeats, backend):
    best = None
    for _ in range(repeats):
        out = subprocess.run(
            [wgnn, "bench", model_path, "--backend", backend, "--batch-size", str(batch),
             "--iters", str(iters), "--latency-runs", "0", "--json"],
            check=True, capture_output=True, text=True,
        )
        report = json.loads(out.stdout.strip().splitlines()[-1])
        if best is None or report["items_per_s"] > best["items_per_s"]:
            best = report
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--wgnn", default=str(ROOT / "target" / "release" / "wgnn"))
    args = ap.parse_args()
    if not Path(args.wgnn).exists():
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)

    keras_ips, versions = keras_items_per_s(args.model, args.batch_size, args.iters, args.repeats)
    report = wgnn_bench(args.wgnn, args.model, args.batch_size, args.iters, args.repeats, args.backend)
    ratio = report["items_per_s"] / keras_ips
    gflop = report["flops_per_item"] / 1e9
    print(f"model      {args.model} (batch {args.batch_size}, {gflop:.4f} GFLOP/item)")
    print(f"machine    {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"keras      {keras_ips:10.1f} items/s  {keras_ips * gflop:7.1f} GFLOP/s  "
          f"(Keras {versions['keras']}, TF {versions['tensorflow']}, predict_on_batch, best of {args.repeats})")
    print(f"wgnn {args.backend:5s} {report['items_per_s']:10.1f} items/s  {report['gflops']:7.1f} GFLOP/s  "
          f"({report['adapter']})")
    print(f"ratio      {ratio:.2f}x (wgnn / Keras)")
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, "keras_items_per_s": keras_ips,
                      "wgnn_items_per_s": report["items_per_s"], "wgnn_gflops": report["gflops"],
                      "keras_gflops": keras_ips * gflop, "ratio": ratio, "backend": args.backend,
                      "adapter": report["adapter"], **versions}))


if __name__ == "__main__":
    sys.exit(main())
