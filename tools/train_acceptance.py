#!/usr/bin/env python3
"""Writes the training acceptance set: Format B fit references (tests/fixtures/train/README.md)
for models a user would write, bigger than the committed fixtures and kept out of the repository.

    .venv-keras/bin/python tools/train_acceptance.py --out DIR
    .venv-keras/bin/python tools/train_acceptance.py --out DIR --only 'acc_text_*'

DIR gets NAME.keras (saved before training, compiled with the optimizer, loss and metrics),
NAME.npz and manifest.json for each case: 256 samples, 3 epochs, batch 32 (8 steps an epoch),
shuffle=False. Seeded by the case names (train_common.py): reruns give identical files.
"""

import argparse
import fnmatch
import time
from pathlib import Path

from train_common import VOCAB, FitCase, normal, padded_ids, write_fit_case, write_json

import keras  # noqa: E402  (configured by train_common)
import numpy as np  # noqa: E402
from keras import layers, optimizers, regularizers  # noqa: E402

N = 256
EPOCHS = 3
BATCH = 32
CASES: list[FitCase] = []


def case(name, description, optimizer, loss, metrics=()):
    def register(build):
        CASES.append(FitCase(name, description, build, optimizer, loss, list(metrics), EPOCHS, BATCH))
        return build

    return register


def seq(input_shape, *stack, dtype="float32"):
    return keras.Sequential([keras.Input(input_shape, dtype=dtype), *stack])


def teacher_labels(rng, x, classes):
    """Labels from a fixed random linear teacher of the inputs: learnable, so accuracy moves."""
    flat = x.reshape(len(x), -1)
    return np.argmax(flat @ rng.normal(0, 1, (flat.shape[1], classes)), axis=1).astype(np.int32)


def smooth_images(rng, n, size, channels):
    """Random images blurred by a 3x3 box, so neighbouring pixels correlate like real ones."""
    x = rng.normal(0, 1, (n, size + 2, size + 2, channels))
    x = sum(x[:, i : i + size, j : j + size] for i in range(3) for j in range(3)) / 3.0
    return x.astype(np.float32)


def text_task(rng, n, steps):
    lengths = [steps, 1] + [int(v) for v in rng.integers(1, steps + 1, n - 2)]
    ids = padded_ids(rng, [lengths[i] for i in rng.permutation(n)], steps)
    # Label: does token 3 or 4 occur — a rule a recurrent model can learn whatever the length.
    return ids, np.isin(ids, [3, 4]).any(axis=1).astype(np.int32)


@case(
    "acc_cnn_adam_l2",
    "Conv2D(8, 3, relu, L2 1e-3) -> MaxPooling2D -> Conv2D(8, 3, relu, L2 1e-3) -> Flatten -> Dense(10, softmax); "
    "Adam(1e-3), sparse CE, accuracy; 12x12x3 images",
    lambda: optimizers.Adam(learning_rate=1e-3),
    "sparse_categorical_crossentropy",
    ["accuracy"],
)
def _(rng):
    x = smooth_images(rng, N, 12, 3)
    l2 = regularizers.L2(1e-3)
    m = seq((12, 12, 3), layers.Conv2D(8, 3, activation="relu", kernel_regularizer=l2), layers.MaxPooling2D(),
            layers.Conv2D(8, 3, activation="relu", kernel_regularizer=l2), layers.Flatten(),
            layers.Dense(10, activation="softmax"))  # fmt: skip
    return m, [x], [teacher_labels(rng, x, 10)]


@case(
    "acc_cnn_batchnorm_sgd_momentum",
    "Conv2D(8, 3, same, no bias) -> BatchNormalization -> relu -> MaxPooling2D -> Conv2D(8, 3, relu) -> "
    "GlobalAveragePooling2D -> Dense(5, softmax); SGD(0.05, momentum 0.9), sparse CE, accuracy",
    lambda: optimizers.SGD(learning_rate=0.05, momentum=0.9),
    "sparse_categorical_crossentropy",
    ["accuracy"],
)
def _(rng):
    x = smooth_images(rng, N, 12, 3)
    m = seq((12, 12, 3), layers.Conv2D(8, 3, padding="same", use_bias=False), layers.BatchNormalization(),
            layers.Activation("relu"), layers.MaxPooling2D(), layers.Conv2D(8, 3, activation="relu"),
            layers.GlobalAveragePooling2D(), layers.Dense(5, activation="softmax"))  # fmt: skip
    return m, [x], [teacher_labels(rng, x, 5)]


@case(
    "acc_cnn_avgpool_sgd_nesterov_l1l2",
    "Conv2D(6, 3, relu, L1L2(1e-4, 1e-3)) -> AveragePooling2D -> Conv2D(8, 3, same, relu) -> MaxPooling2D -> "
    "Flatten -> Dense(16, relu, L2 1e-3) -> Dense(4, softmax); SGD(0.02, momentum 0.9, nesterov), categorical CE, "
    "accuracy; 10x10x1 images",
    lambda: optimizers.SGD(learning_rate=0.02, momentum=0.9, nesterov=True),
    "categorical_crossentropy",
    ["accuracy"],
)
def _(rng):
    x = smooth_images(rng, N, 10, 1)
    m = seq((10, 10, 1),
            layers.Conv2D(6, 3, activation="relu", kernel_regularizer=regularizers.L1L2(l1=1e-4, l2=1e-3)),
            layers.AveragePooling2D(2), layers.Conv2D(8, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
            layers.Flatten(), layers.Dense(16, activation="relu", kernel_regularizer=regularizers.L2(1e-3)),
            layers.Dense(4, activation="softmax"))  # fmt: skip
    return m, [x], [np.eye(4, dtype=np.float32)[teacher_labels(rng, x, 4)]]


def binary_task(rng, features):
    x = normal(rng, N, features)
    h = np.tanh(x @ rng.normal(0, 1, (features, 4)))
    return x, (h @ rng.normal(0, 1, (4, 1)) > 0).astype(np.float32)


@case(
    "acc_mlp_bce_adam",
    "Dense(32, relu) -> Dense(16, relu) -> Dense(1, sigmoid); Adam(1e-3), binary CE, accuracy; 20 features",
    lambda: optimizers.Adam(learning_rate=1e-3),
    "binary_crossentropy",
    ["accuracy"],
)
def _(rng):
    x, y = binary_task(rng, 20)
    m = seq((20,), layers.Dense(32, activation="relu"), layers.Dense(16, activation="relu"),
            layers.Dense(1, activation="sigmoid"))  # fmt: skip
    return m, [x], [y]


@case(
    "acc_mlp_bce_sgd_nesterov_l2",
    "Dense(24, tanh, L2 1e-3) -> Dense(1, sigmoid); SGD(0.05, momentum 0.9, nesterov), binary CE, accuracy",
    lambda: optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
    "binary_crossentropy",
    ["accuracy"],
)
def _(rng):
    x, y = binary_task(rng, 12)
    m = seq((12,), layers.Dense(24, activation="tanh", kernel_regularizer=regularizers.L2(1e-3)),
            layers.Dense(1, activation="sigmoid"))  # fmt: skip
    return m, [x], [y]


@case(
    "acc_mlp_mse_sgd_momentum",
    "Dense(32, relu) -> Dense(16, relu) -> Dense(3); SGD(0.01, momentum 0.9), MSE, mae; regression on 10 features",
    lambda: optimizers.SGD(learning_rate=0.01, momentum=0.9),
    "mean_squared_error",
    ["mae"],
)
def _(rng):
    x = normal(rng, N, 10)
    y = np.tanh(x @ rng.normal(0, 0.5, (10, 3))) + 0.1 * normal(rng, N, 3)
    m = seq((10,), layers.Dense(32, activation="relu"), layers.Dense(16, activation="relu"), layers.Dense(3))
    return m, [x], [y.astype(np.float32)]


@case(
    "acc_text_bilstm_adam",
    "Embedding(13, 8, mask_zero=True) -> Bidirectional(LSTM(8)) -> Dense(2, softmax); Adam(5e-3), sparse CE, "
    "accuracy; 12-step sequences zero-padded to mixed lengths",
    lambda: optimizers.Adam(learning_rate=5e-3),
    "sparse_categorical_crossentropy",
    ["accuracy"],
)
def _(rng):
    ids, y = text_task(rng, N, 12)
    m = seq((12,), layers.Embedding(VOCAB, 8, mask_zero=True), layers.Bidirectional(layers.LSTM(8)),
            layers.Dense(2, activation="softmax"), dtype="int32")  # fmt: skip
    return m, [ids], [y]


@case(
    "acc_text_stacked_simplernn_sgd_momentum",
    "Embedding(13, 8, mask_zero=True) -> SimpleRNN(12, return_sequences=True) -> SimpleRNN(8) -> Dense(1, sigmoid); "
    "SGD(0.05, momentum 0.9), binary CE, accuracy",
    lambda: optimizers.SGD(learning_rate=0.05, momentum=0.9),
    "binary_crossentropy",
    ["accuracy"],
)
def _(rng):
    ids, y = text_task(rng, N, 12)
    m = seq((12,), layers.Embedding(VOCAB, 8, mask_zero=True), layers.SimpleRNN(12, return_sequences=True),
            layers.SimpleRNN(8), layers.Dense(1, activation="sigmoid"), dtype="int32")  # fmt: skip
    return m, [ids], [y.astype(np.float32)[:, None]]


@case(
    "acc_mlp_mse_adam_l1",
    "Dense(32, tanh, L1 1e-4 on kernel and bias) -> Dense(16, relu) -> Dense(2); Adam(3e-3), MSE, mae; regression "
    "on 8 features",
    lambda: optimizers.Adam(learning_rate=3e-3),
    "mse",
    ["mae"],
)
def _(rng):
    x = normal(rng, N, 8)
    y = np.sin(x @ rng.normal(0, 0.6, (8, 2))) + 0.1 * normal(rng, N, 2)
    l1 = regularizers.L1(1e-4)
    m = seq((8,), layers.Dense(32, activation="tanh", kernel_regularizer=l1, bias_regularizer=l1),
            layers.Dense(16, activation="relu"), layers.Dense(2))  # fmt: skip
    return m, [x], [y.astype(np.float32)]


@case(
    "acc_text_bilstm_sgd_nesterov_l2",
    "Embedding(13, 8, mask_zero=True) -> Bidirectional(LSTM(6, L2 1e-3 on kernel and recurrent kernel), merge sum) "
    "-> Dense(1, sigmoid); SGD(0.05, momentum 0.9, nesterov), binary CE, accuracy",
    lambda: optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
    "binary_crossentropy",
    ["accuracy"],
)
def _(rng):
    ids, y = text_task(rng, N, 12)
    l2 = regularizers.L2(1e-3)
    lstm = layers.LSTM(6, kernel_regularizer=l2, recurrent_regularizer=l2)
    m = seq((12,), layers.Embedding(VOCAB, 8, mask_zero=True), layers.Bidirectional(lstm, merge_mode="sum"),
            layers.Dense(1, activation="sigmoid"), dtype="int32")  # fmt: skip
    return m, [ids], [y.astype(np.float32)[:, None]]


@case(
    "acc_mlp_two_inputs_two_outputs_adam",
    "functional: inputs a (6 features) and b (4) -> Dense(16, relu) each -> Concatenate -> Dense(16, relu) -> "
    "outputs reg = Dense(2) (MSE, mae) and cls = Dense(1, sigmoid) (binary CE, accuracy); Adam(2e-3); "
    "--x a.npy --x b.npy --y reg.npy --y cls.npy on the command line",
    lambda: optimizers.Adam(learning_rate=2e-3),
    ["mse", "binary_crossentropy"],
    [["mae"], ["accuracy"]],
)
def _(rng):
    a, b = normal(rng, N, 6), normal(rng, N, 4)
    ia, ib = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    h = layers.Concatenate()([layers.Dense(16, activation="relu")(ia), layers.Dense(16, activation="relu")(ib)])
    h = layers.Dense(16, activation="relu")(h)
    m = keras.Model([ia, ib], [layers.Dense(2, name="reg")(h), layers.Dense(1, activation="sigmoid", name="cls")(h)])
    both = np.concatenate([a, b], axis=1)
    reg = np.tanh(both @ rng.normal(0, 0.5, (10, 2))) + 0.1 * normal(rng, N, 2)
    cls = (np.tanh(both @ rng.normal(0, 1, (10, 3))) @ rng.normal(0, 1, (3, 1)) > 0).astype(np.float32)
    return m, [a, b], [reg.astype(np.float32), cls]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder to write (created; kept out of the repo)")
    parser.add_argument("--only", help="write only these cases (comma-separated fnmatch patterns); no manifest")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    chosen = [c for c in CASES if args.only is None or any(fnmatch.fnmatch(c.name, p) for p in args.only.split(","))]
    cases = [write_fit_case(c, args.out, deflate=False) for c in chosen]
    if args.only is None:
        write_json(args.out / "manifest.json", {"keras_version": keras.__version__, "cases": cases})
    print(f"{len(cases)} cases in {time.time() - t0:.0f}s -> {args.out}")


if __name__ == "__main__":
    main()
