#!/usr/bin/env python3
"""The seed report's experiments, trained natively by `wgnn train` beside Keras's `fit` from the
same initial weights and the same batches, with each side's macro-F1 on the test set.

    .venv-keras/bin/python tools/seed_grid.py --cifar-images 8000 --epochs 3 --nusax-epochs 10 --out /tmp/seed_grid

CIFAR-10 CNN grid (the seed's ablations, one factor at a time from a base of 2 conv layers,
32-64 filters, 3x3 kernels, max pooling): conv layers 1/2/3; filters 16-32 / 32-64 / 64-128;
kernels 2..6; max vs average pooling. NusaX grid: SimpleRNN and LSTM with 1-3 layers, 8/16/24
units, uni- and bidirectional (Embedding(2796, 50) -> recurrent -> Dense(3, softmax), 60 tokens,
the seed's tokenizer). Dropout is 0 on both sides (Keras's RNG cannot be matched). Keras builds
and saves each model with its initial weights; then Keras trains it (shuffle=False) and so does
`wgnn train MODEL --dataset ... --no-shuffle` (no Python on that side), and both are scored with
the same test images/sentences (`wgnn eval` for wgnn). Prints a Markdown table (macro-F1 and the
last epoch's training loss of each side, and of Keras again from a start one ulp away — the
size of the differences a long run amplifies — and the seconds of each run) and a JSON line.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("WGNN_DATA", ROOT.parent / "shared" / "data"))
SEED = Path(os.environ.get("WGNN_SEED_MODELS", ROOT.parent / "shared" / "models" / "seed"))


def macro_f1(labels, preds, classes):
    f1s = []
    for c in range(classes):
        tp = sum(1 for l, p in zip(labels, preds) if l == c and p == c)
        fp = sum(1 for l, p in zip(labels, preds) if l != c and p == c)
        fn = sum(1 for l, p in zip(labels, preds) if l == c and p != c)
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / classes


def cifar(split, n):
    import numpy as np

    files = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin"] if split == "train" else ["test_batch.bin"]
    raw = np.concatenate([np.fromfile(DATA / "cifar10" / f, dtype=np.uint8).reshape(-1, 3073) for f in files])[:n]
    x = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype("float32") / 255.0
    return x, raw[:, 0].astype("int32")


def nusax(split):
    import csv
    import numpy as np
    from keras.src.legacy.preprocessing.text import tokenizer_from_json

    tok = tokenizer_from_json((SEED / "nusax_tokenizer.json").read_text())
    names = ["neutral", "positive", "negative"]
    texts, labels = [], []
    with open(DATA / "nusax" / f"{split}.csv", newline="") as f:
        for row in csv.DictReader(f):
            texts.append(row["text"])
            labels.append(names.index(row["label"]))
    ids = np.zeros((len(texts), 60), dtype="int32")
    for i, s in enumerate(tok.texts_to_sequences(texts)):
        s = s[:60]
        ids[i, : len(s)] = s
    return ids, np.array(labels, dtype="int32")


def cnn(layers=2, filters=(32, 64), kernel=3, pool="max"):
    import keras

    widths = {1: [filters[0]], 2: list(filters), 3: [filters[0], filters[1], filters[1]]}[layers]
    Pool = keras.layers.MaxPooling2D if pool == "max" else keras.layers.AveragePooling2D
    net = [keras.Input((32, 32, 3))]
    for w in widths:
        net += [keras.layers.Conv2D(w, kernel, padding="same", activation="relu"), Pool(2)]
    net += [keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax")]
    return keras.Sequential(net)


def rnn(kind="lstm", layers=1, units=8, bidirectional=False):
    import keras

    Cell = keras.layers.LSTM if kind == "lstm" else keras.layers.SimpleRNN
    net = [keras.Input((60,), dtype="int32"), keras.layers.Embedding(2796, 50)]
    for i in range(layers):
        layer = Cell(units, return_sequences=i < layers - 1)
        net.append(keras.layers.Bidirectional(layer) if bidirectional else layer)
    net.append(keras.layers.Dense(3, activation="softmax"))
    return keras.Sequential(net)


def grid():
    yield "cnn base (2 conv, 32-64, k3, max)", "cifar", dict()
    yield "cnn 1 conv layer", "cifar", dict(layers=1)
    yield "cnn 3 conv layers", "cifar", dict(layers=3)
    yield "cnn filters 16-32", "cifar", dict(filters=(16, 32))
    yield "cnn filters 64-128", "cifar", dict(filters=(64, 128))
    for k in (2, 4, 5, 6):
        yield f"cnn kernel {k}", "cifar", dict(kernel=k)
    yield "cnn average pooling", "cifar", dict(pool="avg")
    for kind in ("rnn", "lstm"):
        for layers in (1, 2, 3):
            yield f"{kind} {layers} layer(s) x8", "nusax", dict(kind=kind, layers=layers)
        for units in (16, 24):
            yield f"{kind} 1 layer x{units}", "nusax", dict(kind=kind, units=units)
        yield f"{kind} bidirectional x8", "nusax", dict(kind=kind, bidirectional=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-images", type=int, default=4000)
    # The first 1,000 test records are the official images with exact pixels (WGNN_DATA's README).
    p.add_argument("--cifar-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2, help="epochs of each CIFAR-10 run")
    p.add_argument("--nusax-epochs", type=int, default=10, help="epochs of each NusaX run")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--only", default="", help="run the grid rows whose name contains this")
    p.add_argument("--out", default="/tmp/seed_grid")
    p.add_argument("--wgnn", default=str(ROOT / "target" / "release" / "wgnn"))
    args = p.parse_args()
    import numpy as np
    import keras
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {}
    rows = []
    for i, (name, dataset, cfg) in enumerate(grid()):
        if args.only and args.only not in name:
            continue
        if dataset not in data:
            if dataset == "cifar":
                data["cifar"] = (cifar("train", args.cifar_images), cifar("test", args.cifar_test))
            else:
                data["nusax"] = (nusax("train"), nusax("test"))
        (x, y), (xt, yt) = data[dataset]
        keras.utils.set_random_seed(i)
        model = cnn(**cfg) if dataset == "cifar" else rnn(**cfg)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        init = out / f"row{i}.keras"
        model.save(init)
        # Keras against itself: the same run from a start one ulp away, for the scale of the
        # differences a long training run amplifies.
        nudged = keras.models.clone_model(model)
        nudged.set_weights([np.nextafter(w, np.float32(np.inf)).astype(w.dtype) for w in model.get_weights()])
        nudged.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        start = time.perf_counter()
        epochs = args.epochs if dataset == "cifar" else args.nusax_epochs
        hist = model.fit(x, y, batch_size=args.batch_size, epochs=epochs, shuffle=False, verbose=0)
        keras_s = time.perf_counter() - start
        keras_loss = float(hist.history["loss"][-1])
        nudged_hist = nudged.fit(x, y, batch_size=args.batch_size, epochs=epochs, shuffle=False, verbose=0)
        nudged_loss = float(nudged_hist.history["loss"][-1])
        classes = 10 if dataset == "cifar" else 3
        keras_f1 = macro_f1(yt, model.predict(xt, verbose=0).argmax(1), classes)
        nudged_f1 = macro_f1(yt, nudged.predict(xt, verbose=0).argmax(1), classes)
        trained = out / f"row{i}.wgnn.keras"
        cmd = [args.wgnn, "train", str(init), "--epochs", str(epochs), "--batch-size",
               str(args.batch_size), "--no-shuffle", "--backend", "cpu", "--json", "-o", str(trained)]
        if dataset == "cifar":
            cmd += ["--dataset", "cifar10", "--data", str(DATA / "cifar10"), "--limit", str(args.cifar_images)]
            ev = [args.wgnn, "eval", "cifar10", str(trained), "--data", str(DATA / "cifar10"),
                  "--limit", str(args.cifar_test), "--backend", "cpu", "--json"]
        else:
            cmd += ["--dataset", "nusax", "--data", str(DATA / "nusax"), "--tokenizer", str(SEED / "nusax_tokenizer.json")]
            ev = [args.wgnn, "eval", "nusax", str(trained), "--data", str(DATA / "nusax"),
                  "--tokenizer", str(SEED / "nusax_tokenizer.json"), "--backend", "cpu", "--json"]
        start = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        wgnn_s = time.perf_counter() - start
        if r.returncode != 0:
            sys.exit(f"{name}: wgnn train failed: {r.stderr.strip()}")
        wgnn_loss = float(json.loads(r.stdout.strip().splitlines()[-1])["history"]["loss"][-1])
        r = subprocess.run(ev, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{name}: wgnn eval failed: {r.stderr.strip()}")
        wgnn_f1 = json.loads(r.stdout.strip().splitlines()[-1])["macro_f1"]
        rows.append(dict(name=name, keras_f1=keras_f1, wgnn_f1=wgnn_f1, keras_ulp_f1=nudged_f1, keras_loss=keras_loss,
                         wgnn_loss=wgnn_loss, keras_ulp_loss=nudged_loss, keras_s=keras_s, wgnn_s=wgnn_s))
        print(f"| {name} | {keras_f1:.4f} | {wgnn_f1:.4f} | {nudged_f1:.4f} | {keras_loss:.4f} | {wgnn_loss:.4f} | "
              f"{nudged_loss:.4f} | {keras_s:.0f} | {wgnn_s:.0f} |", flush=True)
    print(json.dumps({"rows": rows, "cifar_images": args.cifar_images, "cifar_test": args.cifar_test,
                      "epochs": args.epochs, "nusax_epochs": args.nusax_epochs, "batch_size": args.batch_size}))


if __name__ == "__main__":
    main()
