#!/usr/bin/env python3
"""Train the CIFAR-10 CNNs that wgnn ships (Keras 3, TensorFlow backend).

Shipped models (written to --out, default models/):
  cifar10_base.keras  Conv2D(32)-MaxPool-Conv2D(64)-MaxPool-Flatten-Dense(64)-Dense(10)
  cifar10_vgg6.keras  [Conv2D(64)x2, MaxPool] [128x2, MaxPool] [256x2, MaxPool] Flatten Dense(512) Dense(10)
                      (3,248,202 parameters)

--experiments trains the seed report's grid instead (conv layer count, filter widths, kernel size, pooling
kind); those models are for study only and are not shipped.

Training: pixels/255, Adam (default learning rate), sparse categorical cross-entropy, batch 64, the last 10% of
the training images held out for validation. The weights with the best validation accuracy are kept.

Each saved file is CLEAN: a fresh uncompiled model of the same architecture gets the trained weights and is
saved, so model.weights.h5 holds no optimizer group. After saving, the file is reloaded and Keras's own
predictions on all test images (batch 250) go to --ref-out as NAME.test_probs.npy plus NAME.metrics.json
(accuracy and macro-F1 on all test images and on the first 1,000, the official exact-pixel ones).

Example:
  .venv-keras/bin/python tools/train_cifar10.py --data $WGNN_DATA/cifar10 --model base \
      --epochs 30 --time-budget-min 10 --ref-out /tmp/cifar_ref
"""

import argparse
import io
import json
import os
import sys
import time
import zipfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

NUM_CLASSES = 10
IMAGE_BYTES = 32 * 32 * 3
RECORD_BYTES = 1 + IMAGE_BYTES
BATCH_SIZE = 64
PREDICT_BATCH_SIZE = 250
VALIDATION_FRACTION = 0.1
VGG6_PARAMS = 3_248_202
MAX_MODEL_BYTES = 20 * 1024 * 1024
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILE = "test_batch.bin"
OFFICIAL_PREFIX = 1000  # test records 0..999 carry the official, exact pixels


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- data


def read_batch_file(path):
    """One CIFAR-10 binary batch -> (NHWC float32 pixels/255, uint8 labels)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % RECORD_BYTES != 0:
        sys.exit(f"{path}: size {raw.size} is not a multiple of the {RECORD_BYTES}-byte record")
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].copy()
    if labels.max(initial=0) >= NUM_CLASSES:
        sys.exit(f"{path}: label {labels.max()} out of range 0..9")
    # Each record holds planes R, G, B of 32x32 row-major: CHW -> HWC.
    pixels = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return pixels.astype(np.float32) / 255.0, labels


def load_training(data_dir):
    """Whatever data_batch_*.bin files are present, in order (the folder may hold a subset)."""
    parts = [
        read_batch_file(os.path.join(data_dir, name))
        for name in TRAIN_FILES
        if os.path.exists(os.path.join(data_dir, name))
    ]
    if not parts:
        sys.exit(f"{data_dir}: no data_batch_*.bin files")
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    n_val = int(round(len(x) * VALIDATION_FRACTION))
    return (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])


def load_test(data_dir):
    x, y = read_batch_file(os.path.join(data_dir, TEST_FILE))
    official = os.path.join(data_dir, "test_labels_first1000_official.txt")
    if os.path.exists(official):
        expected = np.loadtxt(official, dtype=np.int64)
        if not np.array_equal(expected, y[: len(expected)]):
            sys.exit(f"{official}: labels disagree with {TEST_FILE}")
    return x, y


# ---------------------------------------------------------------- metrics


def macro_f1(labels, predicted, num_classes=NUM_CLASSES):
    """sklearn's f1_score(average='macro'): unweighted mean of per-class F1, 0 where undefined."""
    scores = []
    for c in range(num_classes):
        tp = np.sum((predicted == c) & (labels == c))
        fp = np.sum((predicted == c) & (labels != c))
        fn = np.sum((predicted != c) & (labels == c))
        denominator = 2 * tp + fp + fn
        scores.append(0.0 if denominator == 0 else 2.0 * tp / denominator)
    return float(np.mean(scores))


def metrics_for(probs, labels):
    predicted = np.argmax(probs, axis=1)
    first = slice(0, OFFICIAL_PREFIX)
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "macro_f1": macro_f1(labels, predicted),
        "accuracy_first1000": float(np.mean(predicted[first] == labels[first])),
        "macro_f1_first1000": macro_f1(labels[first], predicted[first]),
        "count": int(len(labels)),
    }


# ---------------------------------------------------------------- models


def build_base(keras):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Conv2D(32, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="cifar10_base",
    )


def build_vgg6(keras):
    layers = keras.layers
    stack = [keras.Input((32, 32, 3))]
    for filters in (64, 128, 256):
        stack += [
            layers.Conv2D(filters, 3, activation="relu", padding="same"),
            layers.Conv2D(filters, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(2),
        ]
    stack += [
        layers.Flatten(),
        layers.Dense(512, activation="relu"),
        layers.Dense(NUM_CLASSES, activation="softmax"),
    ]
    model = keras.Sequential(stack, name="cifar10_vgg6")
    if model.count_params() != VGG6_PARAMS:
        sys.exit(f"vgg6 has {model.count_params()} params, expected {VGG6_PARAMS}")
    return model


def build_grid_model(keras, name, filters, kernel, pooling):
    """The seed grid's CNN: one Conv2D+pool block per entry of `filters`, then Dense(64) and softmax."""
    layers = keras.layers
    pool = layers.MaxPooling2D if pooling == "max" else layers.AveragePooling2D
    stack = [keras.Input((32, 32, 3))]
    for width in filters:
        stack += [layers.Conv2D(width, kernel, activation="relu", padding="same"), pool(2)]
    stack += [
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(NUM_CLASSES, activation="softmax"),
    ]
    return keras.Sequential(stack, name=name)


def experiment_grid():
    """(name, builder) pairs; each varies one factor of the base model (32-64 filters, kernel 3, max pooling)."""
    grid = []
    for depth, filters in ((1, (32,)), (2, (32, 64)), (3, (32, 64, 128))):
        grid.append((f"cifar10_exp_layers{depth}", filters, 3, "max"))
    for filters in ((16, 32), (32, 64), (64, 128)):
        grid.append((f"cifar10_exp_filters{filters[0]}-{filters[1]}", filters, 3, "max"))
    for kernel in (2, 3, 4, 5, 6):
        grid.append((f"cifar10_exp_kernel{kernel}", (32, 64), kernel, "max"))
    for pooling in ("max", "avg"):
        grid.append((f"cifar10_exp_pool_{pooling}", (32, 64), 3, pooling))
    return [
        (name, lambda keras, n=name, f=f, k=k, p=p: build_grid_model(keras, n, f, k, p))
        for name, f, k, p in grid
    ]


SHIPPED = {"base": ("cifar10_base", build_base), "vgg6": ("cifar10_vgg6", build_vgg6)}


# ---------------------------------------------------------------- training


def make_callbacks(keras, budget_min, log_every=100):
    class Progress(keras.callbacks.Callback):
        """Readable, flushed log lines (no progress bars) and a wall-clock budget checked per epoch."""

        def __init__(self):
            super().__init__()
            self.train_start = time.time()
            self.best_val_accuracy = -1.0
            self.best_weights = None
            self.best_epoch = None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.time()
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if log_every and (batch + 1) % log_every == 0:
                logs = logs or {}
                log(
                    f"  epoch {self.epoch + 1} batch {batch + 1}: loss {logs.get('loss', float('nan')):.4f}"
                    f" acc {logs.get('accuracy', float('nan')):.4f} ({time.time() - self.epoch_start:.0f}s)"
                )

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            seconds = time.time() - self.epoch_start
            val_accuracy = logs.get("val_accuracy", float("nan"))
            log(
                f"epoch {epoch + 1} done in {seconds:.0f}s: loss {logs.get('loss', float('nan')):.4f}"
                f" acc {logs.get('accuracy', float('nan')):.4f} val_loss {logs.get('val_loss', float('nan')):.4f}"
                f" val_acc {val_accuracy:.4f}"
            )
            # Keep the best validation weights: the larger nets overfit after a few epochs.
            if val_accuracy > self.best_val_accuracy:
                self.best_val_accuracy = val_accuracy
                self.best_weights = self.model.get_weights()
                self.best_epoch = epoch + 1
            elapsed_min = (time.time() - self.train_start) / 60.0
            if budget_min is not None and elapsed_min >= budget_min:
                log(f"time budget {budget_min} min passed ({elapsed_min:.1f} min): stopping")
                self.model.stop_training = True

    return Progress()


def weights_h5_groups(path):
    """Top-level groups of model.weights.h5 inside a .keras zip."""
    import h5py

    with zipfile.ZipFile(path) as archive:
        data = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(data), "r") as h5:
        return list(h5.keys())


def save_clean(keras, builder, trained, path):
    """Fresh uncompiled model + trained weights, so the file carries no optimizer state."""
    clean = builder(keras)
    clean.set_weights(trained.get_weights())
    clean.save(path)
    groups = weights_h5_groups(path)
    if "optimizer" in groups:
        sys.exit(f"{path}: model.weights.h5 still holds an optimizer group ({groups})")
    size = os.path.getsize(path)
    if size >= MAX_MODEL_BYTES:
        sys.exit(f"{path}: {size} bytes, over the {MAX_MODEL_BYTES}-byte limit")
    log(f"saved {path} ({size / 1e6:.2f} MB, weight groups {groups})")


def write_reference(keras, path, name, x_test, y_test, ref_out):
    """Keras's own outputs of the SAVED file, for the Rust parity tests."""
    os.makedirs(ref_out, exist_ok=True)
    reloaded = keras.models.load_model(path, compile=False)
    probs = reloaded.predict(x_test, batch_size=PREDICT_BATCH_SIZE, verbose=0).astype(np.float32)
    np.save(os.path.join(ref_out, f"{name}.test_probs.npy"), probs)
    np.save(os.path.join(ref_out, "test_labels.npy"), y_test.astype(np.uint8))
    np.save(os.path.join(ref_out, "test_first16.npy"), x_test[:16].astype(np.float32))
    metrics = {"model": name, "params": int(reloaded.count_params()), **metrics_for(probs, y_test)}
    with open(os.path.join(ref_out, f"{name}.metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    log(f"{name} metrics: {json.dumps(metrics)}")
    return metrics


def train_one(keras, name, builder, data, args):
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data
    model = builder(keras)
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    log(f"training {name}: {model.count_params()} params, {len(x_train)} train / {len(x_val)} val images")
    progress = make_callbacks(keras, args.time_budget_min)
    start = time.time()
    model.fit(
        x_train,
        y_train,
        batch_size=BATCH_SIZE,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        callbacks=[progress],
        verbose=0,
    )
    log(f"{name} trained in {(time.time() - start) / 60:.1f} min; best val_acc {progress.best_val_accuracy:.4f}"
        f" at epoch {progress.best_epoch}")
    if progress.best_weights is not None:
        model.set_weights(progress.best_weights)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{name}.keras")
    save_clean(keras, builder, model, path)
    if args.ref_out:
        write_reference(keras, path, name, x_test, y_test, args.ref_out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with data_batch_*.bin and test_batch.bin")
    parser.add_argument("--out", default="models", help="where .keras files go (default: models/)")
    parser.add_argument("--model", choices=["base", "vgg6", "all"], default="all")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--time-budget-min", type=float, default=None,
                        help="stop after the epoch in which this many minutes of training have passed (per model)")
    parser.add_argument("--experiments", action="store_true", help="train the seed grid instead of the shipped models")
    parser.add_argument("--ref-out", default=None, help="where Keras reference outputs go (keep it outside the repo)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow inter/intra-op threads")
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    import keras

    keras.utils.set_random_seed(args.seed)

    train, val = load_training(args.data)
    test = load_test(args.data)
    data = (train, val, test)

    if args.experiments:
        jobs = experiment_grid()
    elif args.model == "all":
        jobs = [SHIPPED["base"], SHIPPED["vgg6"]]
    else:
        jobs = [SHIPPED[args.model]]
    for name, builder in jobs:
        train_one(keras, name, builder, data, args)


if __name__ == "__main__":
    main()
