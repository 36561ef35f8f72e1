#!/usr/bin/env python3
"""Builds the Keras-parity fixtures in tests/fixtures/ (read by tests/keras_parity.rs).

Run from the repository root:

    .venv-keras/bin/python tools/keras_fixtures.py

For every fixture NAME it writes the model (NAME.keras, or NAME.json + NAME.weights.h5, or
NAME.json + NAME.npz holding model.get_weights() in order), NAME.input.npy (float32, or int32
token ids) and NAME.expected.npy (float32, Keras's model.predict on that input), then
tests/fixtures/manifest.json. Files the Rust loader must reject go to tests/fixtures/bad/, each
with the word its error message must contain.

Weights are drawn explicitly (not Keras initializers) at a scale that keeps outputs far from
uniform, from a generator seeded by the fixture's name: reruns give the same numbers, and adding
a fixture does not change the others. Zip timestamps and the saved date are pinned so that a
rerun leaves git with nothing to commit.
"""

import io
import json
import os
import re
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures"
BAD = OUT / "bad"
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
FIXED_DATE_SAVED = "2000-01-01@00:00:00"

# Forms a model is written in.
KERAS = "keras"  # NAME.keras
JSON_H5 = "json_h5"  # NAME.json + NAME.weights.h5
JSON_NPZ = "json_npz"  # NAME.json + NAME.npz


@dataclass
class Spec:
    name: str
    description: str
    build: Callable  # rng -> (model, input array)
    form: str = KERAS
    input_kind: str = "float"
    # Applied to the JSON text before it is written (the edited model is what gets verified).
    edit_json: Callable | None = None


FIXTURES: list[Spec] = []


def fixture(name, description, form=KERAS, input_kind="float", edit_json=None):
    def register(build):
        FIXTURES.append(Spec(name, description, build, form, input_kind, edit_json))
        return build

    return register


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


# ---------------------------------------------------------------- helpers


def seq(input_shape, *stack, dtype="float32"):
    return keras.Sequential([keras.Input(input_shape, dtype=dtype), *stack])


def randomize(model, rng):
    """Real-scale weights: kernels ~ N(0, min(0.5, 1.5/sqrt(fan_in))), biases ~ N(0, 0.3),
    embedding tables ~ N(0, 1). LSTM cells get twice that: behind sigmoid gates and
    o * tanh(c), smaller weights leave outputs near zero."""
    weights = []
    for v in model.weights:
        shape = tuple(int(d) for d in v.shape)
        gain = 2.0 if "lstm_cell" in v.path else 1.0
        if v.name == "embeddings":
            std = 1.0
        elif v.name == "bias":
            std = 0.3 * gain
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            std = gain * min(0.5, 1.5 / np.sqrt(fan_in))
        weights.append(rng.normal(0.0, std, shape).astype(np.float32))
    model.set_weights(weights)


def normal(rng, *shape, std=1.0, mean=0.0):
    return (rng.normal(mean, std, shape)).astype(np.float32)


VOCAB = 13
MASK_T = 8
# Post-padded rows of mixed lengths: full, short, all padding, middle.
MASK_LENGTHS = [MASK_T, 3, 0, 5]


def padded_ids(rng, lengths=MASK_LENGTHS, steps=MASK_T, vocab=VOCAB):
    ids = np.zeros((len(lengths), steps), dtype=np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1, vocab, n)
    return ids


def any_ids(rng, batch=3, steps=7, vocab=VOCAB):
    """Ids that include 0 as an ordinary token (no mask)."""
    ids = rng.integers(0, vocab, (batch, steps)).astype(np.int32)
    ids[0, 0] = 0
    return ids


def rnn_layer(kind, units, **kw):
    return {"simplernn": layers.SimpleRNN, "lstm": layers.LSTM}[kind](units, **kw)


# ---------------------------------------------------------------- Conv2D

IMG = (7, 9, 3)  # odd sizes so TensorFlow's asymmetric "same" padding shows


@fixture("conv2d_valid", "Conv2D 4 filters 3x3 valid, linear, on 7x9x3")
def _(rng):
    return seq(IMG, layers.Conv2D(4, 3, padding="valid")), normal(rng, 2, *IMG)


@fixture("conv2d_same", "Conv2D 4 filters 3x3 same on odd 7x9x3")
def _(rng):
    return seq(IMG, layers.Conv2D(4, 3, padding="same")), normal(rng, 2, *IMG)


@fixture(
    "conv2d_same_even_kernel",
    "Conv2D kernel (2,4) same on 7x9x3: total pad 1 and 3, the odd one goes at the end",
)
def _(rng):
    return seq(IMG, layers.Conv2D(3, (2, 4), padding="same")), normal(rng, 2, *IMG)


@fixture(
    "conv2d_same_stride2",
    "Conv2D 3x3 strides 2 same on 8x7x3: rows pad 0 before 1 after, columns 1 and 1",
)
def _(rng):
    return seq((8, 7, 3), layers.Conv2D(4, 3, strides=2, padding="same")), normal(rng, 2, 8, 7, 3)


@fixture("conv2d_valid_stride2", "Conv2D 3x3 strides 2 valid on 9x8x3 (last column unused)")
def _(rng):
    return seq((9, 8, 3), layers.Conv2D(4, 3, strides=2, padding="valid")), normal(rng, 2, 9, 8, 3)


@fixture("conv2d_kernel3x5_stride2x1_same", "Conv2D kernel (3,5) strides (2,1) same on 7x9x3")
def _(rng):
    return seq(IMG, layers.Conv2D(4, (3, 5), strides=(2, 1), padding="same")), normal(rng, 2, *IMG)


@fixture("conv2d_kernel3x5_stride2x1_valid", "Conv2D kernel (3,5) strides (2,1) valid on 7x9x3")
def _(rng):
    return seq(IMG, layers.Conv2D(4, (3, 5), strides=(2, 1), padding="valid")), normal(rng, 2, *IMG)


@fixture("conv2d_no_bias", "Conv2D 3x3 same with use_bias=False, relu")
def _(rng):
    return seq(IMG, layers.Conv2D(4, 3, padding="same", use_bias=False, activation="relu")), normal(
        rng, 2, *IMG
    )


for _act in ["relu", "tanh", "sigmoid", "linear", "elu", "leaky_relu", "softmax"]:

    @fixture(f"conv2d_{_act}", f"Conv2D 3x3 same with activation='{_act}'")
    def _(rng, act=_act):
        return seq(IMG, layers.Conv2D(5, 3, padding="same", activation=act)), normal(rng, 2, *IMG)


@fixture("conv2d_stack", "Conv2D relu -> Conv2D stride 2 -> Conv2D 1x1 on 9x9x2")
def _(rng):
    m = seq(
        (9, 9, 2),
        layers.Conv2D(6, 3, padding="same", activation="relu"),
        layers.Conv2D(5, 3, strides=2, padding="same", activation="tanh"),
        layers.Conv2D(3, 1),
    )
    return m, normal(rng, 3, 9, 9, 2)


# ---------------------------------------------------------------- pooling

# Max pooling inputs are shifted negative: padding with zeros instead of -inf would show.
for _pool, _layer in [("maxpool2d", layers.MaxPooling2D), ("avgpool2d", layers.AveragePooling2D)]:
    _shift = -1.0 if _pool == "maxpool2d" else 0.0
    for _suffix, _kw, _desc in [
        ("valid", dict(pool_size=2, padding="valid"), "pool 2 default strides valid"),
        ("same", dict(pool_size=2, padding="same"), "pool 2 default strides same"),
        ("pool3_stride2_valid", dict(pool_size=3, strides=2, padding="valid"), "pool 3 stride 2 valid"),
        ("pool3_stride2_same", dict(pool_size=3, strides=2, padding="same"), "pool 3 stride 2 same"),
        ("pool2x3_stride1_same", dict(pool_size=(2, 3), strides=1, padding="same"), "pool (2,3) stride 1 same"),
    ]:

        @fixture(
            f"{_pool}_{_suffix}",
            f"{_layer.__name__} {_desc} on odd 7x9x3"
            + (" (average divides by in-bounds cells)" if _pool == "avgpool2d" and "same" in _suffix else ""),
        )
        def _(rng, cls=_layer, kw=_kw, shift=_shift):
            return seq(IMG, cls(**kw)), normal(rng, 2, *IMG, mean=shift)


for _cls, _short in [
    (layers.GlobalMaxPooling2D, "global_maxpool2d"),
    (layers.GlobalAveragePooling2D, "global_avgpool2d"),
]:
    for _keep in [False, True]:

        @fixture(
            f"{_short}{'_keepdims' if _keep else ''}",
            f"Conv2D then {_cls.__name__}(keepdims={_keep})",
        )
        def _(rng, cls=_cls, keep=_keep):
            m = seq(IMG, layers.Conv2D(4, 3, activation="relu"), cls(keepdims=keep))
            return m, normal(rng, 2, *IMG)


# ---------------------------------------------------------------- Dense, Flatten and friends


@fixture("flatten_dense", "Conv2D -> MaxPooling2D -> Flatten (HWC order) -> Dense")
def _(rng):
    m = seq(IMG, layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(), layers.Flatten(), layers.Dense(5))
    return m, normal(rng, 2, *IMG)


@fixture("dense_2d", "Dense relu -> Dense linear on (N, 6)")
def _(rng):
    return seq((6,), layers.Dense(8, activation="relu"), layers.Dense(4)), normal(rng, 3, 6)


@fixture("dense_no_bias", "Dense use_bias=False, tanh")
def _(rng):
    return seq((6,), layers.Dense(5, use_bias=False, activation="tanh")), normal(rng, 3, 6)


@fixture("dense_3d_sequence", "Dense on the last axis of a (N, 5, 6) sequence")
def _(rng):
    return seq((5, 6), layers.Dense(4, activation="elu"), layers.Dense(3)), normal(rng, 2, 5, 6)


@fixture("dense_4d_image", "Dense on the channel axis of an NHWC image")
def _(rng):
    return seq((3, 4, 5), layers.Dense(2)), normal(rng, 2, 3, 4, 5)


@fixture("dropout", "Dense -> Dropout(0.5) -> Dense: identity at inference")
def _(rng):
    return seq((6,), layers.Dense(8, activation="relu"), layers.Dropout(0.5), layers.Dense(3)), normal(rng, 3, 6)


@fixture("spatial_dropout2d", "Conv2D -> SpatialDropout2D(0.4) -> Conv2D: identity at inference")
def _(rng):
    m = seq(IMG, layers.Conv2D(4, 3, activation="relu"), layers.SpatialDropout2D(0.4), layers.Conv2D(2, 3))
    return m, normal(rng, 2, *IMG)


@fixture("rescaling_scalar", "Rescaling(scale=1/127.5, offset=-1) on 0..255 pixels -> Conv2D")
def _(rng):
    m = seq(IMG, layers.Rescaling(1.0 / 127.5, offset=-1.0), layers.Conv2D(3, 3))
    return m, rng.integers(0, 256, (2, *IMG)).astype(np.float32)


@fixture("rescaling_per_channel", "Rescaling with per-channel scale and offset lists -> Conv2D")
def _(rng):
    m = seq(IMG, layers.Rescaling([0.5, -2.0, 3.0], offset=[0.1, 0.0, -0.7]), layers.Conv2D(3, 3))
    return m, normal(rng, 2, *IMG)


@fixture("reshape", "Dense -> Reshape((2,4,3)) row-major -> Conv2D same -> Flatten")
def _(rng):
    m = seq((5,), layers.Dense(24), layers.Reshape((2, 4, 3)), layers.Conv2D(2, 2, padding="same"), layers.Flatten())
    return m, normal(rng, 3, 5)


# ---------------------------------------------------------------- activations

ACTIVATIONS = [
    "linear", "relu", "sigmoid", "tanh", "softmax", "elu", "leaky_relu", "selu", "silu",
    "softplus", "softsign", "hard_sigmoid", "exponential", "relu6",
]  # fmt: skip

# Input std 3 puts pre-activations around +-8: relu6 and hard_sigmoid clip, exponential is large.
for _act in ACTIVATIONS:

    @fixture(f"activation_{_act}", f"Dense -> Activation('{_act}') on pre-activations around +-8")
    def _(rng, act=_act):
        return seq((8,), layers.Dense(6), layers.Activation(act)), normal(rng, 3, 8, std=3.0)


def _swish_in_json(text):
    out, n = re.subn(r'"activation": "silu"', '"activation": "swish"', text)
    assert n == 1, "expected one silu activation to rename"
    return out


@fixture(
    "activation_swish",
    "Activation('swish') as written in the JSON (Keras saves it as silu), json + npz",
    form=JSON_NPZ,
    edit_json=_swish_in_json,
)
def _(rng):
    return seq((8,), layers.Dense(6), layers.Activation("silu")), normal(rng, 3, 8, std=3.0)


@fixture("relu_layer_full", "ReLU(max_value=2.5, negative_slope=0.1, threshold=0.5)")
def _(rng):
    m = seq((8,), layers.Dense(6), layers.ReLU(max_value=2.5, negative_slope=0.1, threshold=0.5))
    return m, normal(rng, 3, 8, std=3.0)


@fixture("relu_layer_max_value", "ReLU(max_value=6.0) (relu6 as a layer)")
def _(rng):
    return seq((8,), layers.Dense(6), layers.ReLU(max_value=6.0)), normal(rng, 3, 8, std=3.0)


@fixture("relu_layer_default", "ReLU() with default arguments")
def _(rng):
    return seq((8,), layers.Dense(6), layers.ReLU()), normal(rng, 3, 8, std=3.0)


@fixture("leaky_relu_layer", "LeakyReLU(negative_slope=0.15) after Conv2D")
def _(rng):
    return seq(IMG, layers.Conv2D(4, 3), layers.LeakyReLU(negative_slope=0.15)), normal(rng, 2, *IMG)


@fixture("elu_layer", "ELU(alpha=0.7)")
def _(rng):
    return seq((8,), layers.Dense(6), layers.ELU(alpha=0.7)), normal(rng, 3, 8, std=3.0)


@fixture("softmax_layer", "Dense on (N, 4, 6) -> Softmax(axis=-1) over the last axis")
def _(rng):
    return seq((4, 6), layers.Dense(5), layers.Softmax(axis=-1)), normal(rng, 2, 4, 6, std=2.0)


# ---------------------------------------------------------------- Embedding


@fixture("embedding", "Embedding(13, 5) lookup; id 0 is an ordinary token", input_kind="ids")
def _(rng):
    return seq((7,), layers.Embedding(VOCAB, 5), dtype="int32"), any_ids(rng)


@fixture(
    "embedding_mask_zero_dense",
    "Embedding(mask_zero=True) -> Dense: padding rows still look up row 0 (mask does not zero)",
    input_kind="ids",
)
def _(rng):
    m = seq((MASK_T,), layers.Embedding(VOCAB, 5, mask_zero=True), layers.Dense(3), dtype="int32")
    return m, padded_ids(rng)


@fixture("embedding_flatten_dense", "Embedding -> Flatten -> Dense", input_kind="ids")
def _(rng):
    m = seq((7,), layers.Embedding(VOCAB, 4), layers.Flatten(), layers.Dense(3), dtype="int32")
    return m, any_ids(rng)


# ---------------------------------------------------------------- SimpleRNN and LSTM, unmasked

SEQ = (6, 4)  # timesteps, features


def _rnn_cases(kind):
    short = "simplernn" if kind == "simplernn" else "lstm"
    cases = [
        ("last", {}, "last output"),
        ("sequences", dict(return_sequences=True), "return_sequences"),
        ("go_backwards_last", dict(go_backwards=True), "go_backwards, last output"),
        (
            "go_backwards_sequences",
            dict(go_backwards=True, return_sequences=True),
            "go_backwards + return_sequences (outputs in processing order)",
        ),
        ("no_bias", dict(use_bias=False, return_sequences=True), "use_bias=False, return_sequences"),
        ("relu", dict(activation="relu", return_sequences=True), "activation='relu', return_sequences"),
    ]
    if kind == "lstm":
        cases += [
            (
                "hard_sigmoid_recurrent",
                dict(recurrent_activation="hard_sigmoid"),
                "recurrent_activation='hard_sigmoid'",
            ),
            (
                "tanh_recurrent",
                dict(recurrent_activation="tanh", return_sequences=True),
                "recurrent_activation='tanh', return_sequences",
            ),
        ]
    return short, cases


for _kind in ["simplernn", "lstm"]:
    _short, _cases = _rnn_cases(_kind)
    _cls = "SimpleRNN" if _kind == "simplernn" else "LSTM"
    for _suffix, _kw, _desc in _cases:

        @fixture(f"{_short}_{_suffix}", f"{_cls}(5) on (N, 6, 4) floats, {_desc}")
        def _(rng, kind=_kind, kw=_kw):
            return seq(SEQ, rnn_layer(kind, 5, **kw)), normal(rng, 3, *SEQ)


for _kind in ["simplernn", "lstm"]:
    _cls = "SimpleRNN" if _kind == "simplernn" else "LSTM"
    for _mode in ["concat", "sum", "ave", "mul"]:
        for _rs in [False, True]:

            @fixture(
                f"bi{_kind}_{_mode}_{'sequences' if _rs else 'last'}",
                f"Bidirectional({_cls}(4), merge_mode='{_mode}')"
                + (", return_sequences" if _rs else ", last output"),
            )
            def _(rng, kind=_kind, mode=_mode, rs=_rs):
                m = seq(SEQ, layers.Bidirectional(rnn_layer(kind, 4, return_sequences=rs), merge_mode=mode))
                # A product of two states is small: wider inputs keep it far from zero.
                return m, normal(rng, 3, *SEQ, std=2.0 if mode == "mul" else 1.0)


@fixture("stacked_simplernn", "SimpleRNN(6, return_sequences) -> SimpleRNN(4) -> Dense(3)")
def _(rng):
    m = seq(SEQ, layers.SimpleRNN(6, return_sequences=True), layers.SimpleRNN(4), layers.Dense(3))
    return m, normal(rng, 3, *SEQ)


@fixture("stacked_lstm", "LSTM(6, return_sequences) -> LSTM(4, return_sequences) -> Dense(3) per step")
def _(rng):
    m = seq(SEQ, layers.LSTM(6, return_sequences=True), layers.LSTM(4, return_sequences=True), layers.Dense(3))
    return m, normal(rng, 3, *SEQ)


@fixture("stacked_bilstm", "Bidirectional(LSTM, seq) -> Bidirectional(LSTM, sum) -> Dense(3)")
def _(rng):
    m = seq(
        SEQ,
        layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
        layers.Bidirectional(layers.LSTM(3), merge_mode="sum"),
        layers.Dense(3),
    )
    return m, normal(rng, 3, *SEQ)


@fixture("stacked_mixed_rnn", "LSTM(seq) -> Bidirectional(SimpleRNN, seq, ave) -> SimpleRNN(go_backwards)")
def _(rng):
    m = seq(
        SEQ,
        layers.LSTM(5, return_sequences=True),
        layers.Bidirectional(layers.SimpleRNN(4, return_sequences=True), merge_mode="ave"),
        layers.SimpleRNN(3, go_backwards=True),
    )
    return m, normal(rng, 3, *SEQ)


@fixture("embedding_lstm_unmasked", "Embedding (no mask) -> LSTM -> Dense", input_kind="ids")
def _(rng):
    m = seq((7,), layers.Embedding(VOCAB, 4), layers.LSTM(5), layers.Dense(2), dtype="int32")
    return m, any_ids(rng)


# ---------------------------------------------------------------- masking

MASK_DESC = "Embedding(mask_zero) on post-padded rows of lengths 8,3,0,5"


def masked(*stack):
    return seq((MASK_T,), layers.Embedding(VOCAB, 4, mask_zero=True), *stack, dtype="int32")


for _kind in ["simplernn", "lstm"]:
    _cls = "SimpleRNN" if _kind == "simplernn" else "LSTM"
    for _suffix, _kw, _desc in [
        ("last", {}, "last output (state frozen at masked steps)"),
        ("sequences", dict(return_sequences=True), "return_sequences (masked steps repeat the last output)"),
        ("go_backwards_last", dict(go_backwards=True), "go_backwards, last output"),
        ("go_backwards_sequences", dict(go_backwards=True, return_sequences=True), "go_backwards + return_sequences"),
    ]:

        @fixture(f"masked_{_kind}_{_suffix}", f"{MASK_DESC} -> {_cls}(5), {_desc}", input_kind="ids")
        def _(rng, kind=_kind, kw=_kw):
            return masked(rnn_layer(kind, 5, **kw)), padded_ids(rng)

    for _rs in [False, True]:

        @fixture(
            f"masked_bi{_kind}_{'sequences' if _rs else 'last'}",
            f"{MASK_DESC} -> Bidirectional({_cls}(4))"
            + (", return_sequences (masked steps are zeros)" if _rs else ", last output"),
            input_kind="ids",
        )
        def _(rng, kind=_kind, rs=_rs):
            return masked(layers.Bidirectional(rnn_layer(kind, 4, return_sequences=rs))), padded_ids(rng)


@fixture(
    "masked_bilstm_sum_sequences",
    f"{MASK_DESC} -> Bidirectional(LSTM(4), sum), return_sequences",
    input_kind="ids",
)
def _(rng):
    return masked(layers.Bidirectional(layers.LSTM(4, return_sequences=True), merge_mode="sum")), padded_ids(rng)


@fixture("masked_stacked_simplernn", f"{MASK_DESC} -> SimpleRNN(seq) -> SimpleRNN -> Dense", input_kind="ids")
def _(rng):
    return masked(layers.SimpleRNN(5, return_sequences=True), layers.SimpleRNN(4), layers.Dense(3)), padded_ids(rng)


@fixture(
    "masked_stacked_lstm",
    f"{MASK_DESC} -> LSTM(seq) -> Dropout -> LSTM(seq) -> Dense per step",
    input_kind="ids",
)
def _(rng):
    m = masked(
        layers.LSTM(5, return_sequences=True),
        layers.Dropout(0.3),
        layers.LSTM(4, return_sequences=True),
        layers.Dense(3),
    )
    return m, padded_ids(rng)


@fixture(
    "masked_stacked_bilstm",
    f"{MASK_DESC} -> Bidirectional(LSTM, seq) -> Bidirectional(LSTM) -> Dense",
    input_kind="ids",
)
def _(rng):
    m = masked(
        layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
        layers.Bidirectional(layers.LSTM(3)),
        layers.Dense(3),
    )
    return m, padded_ids(rng)


@fixture(
    "masked_bilstm_then_lstm_sequences",
    f"{MASK_DESC} -> Bidirectional(LSTM, seq, mul) -> LSTM(seq): zeros from the first feed the second",
    input_kind="ids",
)
def _(rng):
    m = masked(
        layers.Bidirectional(layers.LSTM(4, return_sequences=True), merge_mode="mul"),
        layers.LSTM(3, return_sequences=True),
    )
    return m, padded_ids(rng)


# ---------------------------------------------------------------- Functional chains and file forms


def functional_cnn():
    inp = keras.Input(IMG, name="image")
    x = layers.Rescaling(0.5, name="scale")(inp)
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv_a")(x)
    x = layers.MaxPooling2D(name="pool_a")(x)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_b")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="drop")(x)
    out = layers.Dense(5, name="logits")(x)
    return keras.Model(inp, out, name="functional_cnn")


def functional_rnn():
    inp = keras.Input((MASK_T,), dtype="int32", name="tokens")
    x = layers.Embedding(VOCAB, 4, mask_zero=True, name="embed")(inp)
    x = layers.Bidirectional(layers.LSTM(4, return_sequences=True), name="bi_a")(x)
    x = layers.Bidirectional(layers.SimpleRNN(3), merge_mode="ave", name="bi_b")(x)
    out = layers.Dense(3, name="logits")(x)
    return keras.Model(inp, out, name="functional_rnn")


def sequential_cnn():
    return seq(
        IMG,
        layers.Conv2D(5, 3, padding="same", activation="relu"),
        layers.AveragePooling2D(2, padding="same"),
        layers.Conv2D(4, (3, 2), strides=(1, 2), activation="tanh"),
        layers.Flatten(),
        layers.Dense(4),
    )


def sequential_rnn():
    return masked(layers.LSTM(5, return_sequences=True), layers.SimpleRNN(4), layers.Dense(3))


@fixture("functional_cnn_chain", "Functional keras.Input -> Rescaling -> Conv/Pool/GAP -> Dense chain, .keras")
def _(rng):
    return functional_cnn(), normal(rng, 2, *IMG)


@fixture(
    "functional_rnn_chain",
    "Functional ids -> Embedding(mask) -> Bi(LSTM seq) -> Bi(SimpleRNN, ave) -> Dense chain, .keras",
    input_kind="ids",
)
def _(rng):
    return functional_rnn(), padded_ids(rng)


@fixture("h5_weights_cnn", "Sequential CNN as model.to_json() + .weights.h5", form=JSON_H5)
def _(rng):
    return sequential_cnn(), normal(rng, 2, *IMG)


@fixture(
    "h5_weights_rnn",
    "Sequential masked LSTM/SimpleRNN as model.to_json() + .weights.h5",
    form=JSON_H5,
    input_kind="ids",
)
def _(rng):
    return sequential_rnn(), padded_ids(rng)


@fixture("h5_weights_functional_cnn", "Functional CNN chain as model.to_json() + .weights.h5", form=JSON_H5)
def _(rng):
    return functional_cnn(), normal(rng, 2, *IMG)


@fixture("npz_weights_cnn", "Sequential CNN as model.to_json() + np.savez(*get_weights())", form=JSON_NPZ)
def _(rng):
    return sequential_cnn(), normal(rng, 2, *IMG)


@fixture(
    "npz_weights_rnn",
    "Sequential masked LSTM/SimpleRNN as model.to_json() + np.savez(*get_weights())",
    form=JSON_NPZ,
    input_kind="ids",
)
def _(rng):
    return sequential_rnn(), padded_ids(rng)


@fixture(
    "npz_weights_functional_rnn",
    "Functional Bidirectional RNN chain as model.to_json() + np.savez(*get_weights())",
    form=JSON_NPZ,
    input_kind="ids",
)
def _(rng):
    return functional_rnn(), padded_ids(rng)


@fixture(
    "npz_weights_bilstm_unmasked",
    "Bidirectional(LSTM, concat) on floats as model.to_json() + np.savez (forward then backward weights)",
    form=JSON_NPZ,
)
def _(rng):
    return seq(SEQ, layers.Bidirectional(layers.LSTM(4)), layers.Dense(2)), normal(rng, 3, *SEQ)


# ---------------------------------------------------------------- files the loader must reject

BAD_FILES = []  # (file stem, word the error must contain, description, build)


def bad(stem, word, description):
    def register(build):
        BAD_FILES.append((stem, word, description, build))
        return build

    return register


@bad("conv2d_lora", "lora_rank", "Conv2D with lora_rank=2 (LoRA layers are not supported)")
def _():
    return seq(IMG, layers.Conv2D(4, 3, lora_rank=2))


@bad("conv2d_channels_first", "channels_first", "Conv2D with data_format='channels_first'")
def _():
    return seq((3, 7, 9), layers.Conv2D(4, 3, data_format="channels_first"))


@bad("lstm_stateful", "stateful", "LSTM(stateful=True) on a fixed batch_shape")
def _():
    inp = keras.Input(batch_shape=(2, 6, 4))
    return keras.Sequential([inp, layers.LSTM(4, stateful=True)])


@bad("bilstm_merge_none", "merge_mode", "Bidirectional(LSTM, merge_mode=None): two outputs")
def _():
    inp = keras.Input(SEQ)
    outs = layers.Bidirectional(layers.LSTM(4), merge_mode=None)(inp)
    return keras.Model(inp, outs)


@bad("gru", "GRU", "GRU, an unsupported layer class")
def _():
    return seq(SEQ, layers.GRU(4))


# ---------------------------------------------------------------- writing


def pin_zip(path, edit=None):
    """Rewrites a zip with fixed timestamps (and lets `edit(name, bytes)` change an entry)."""
    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in entries:
            if edit:
                data = edit(info.filename, data)
            pinned = zipfile.ZipInfo(info.filename, date_time=FIXED_ZIP_TIME)
            pinned.compress_type = info.compress_type
            pinned.external_attr = info.external_attr
            z.writestr(pinned, data)


def save_keras(model, path):
    model.save(path)

    def pin(name, data):
        if name == "metadata.json":
            meta = json.loads(data)
            meta["date_saved"] = FIXED_DATE_SAVED
            data = json.dumps(meta).encode()
        elif name == "config.json":
            data = renumber_shared_objects(data.decode()).encode()
        return data

    pin_zip(path, pin)


def renumber_shared_objects(text):
    """Keras writes id() of shared objects (e.g. the dtype policy) as shared_object_id; number
    them in order of first appearance instead, which keeps which-is-shared and is reproducible."""
    numbers = {}

    def renumber(match):
        return f'"shared_object_id": {numbers.setdefault(match.group(1), len(numbers) + 1)}'

    return re.sub(r'"shared_object_id": (\d+)', renumber, text)


def savez_weights(weights, path):
    """Byte for byte what np.savez(path, *weights) writes (arr_0, arr_1, ... stored, zip64),
    except that entry timestamps are pinned so reruns give identical files."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for i, w in enumerate(weights):
            info = zipfile.ZipInfo(f"arr_{i}.npy", date_time=FIXED_ZIP_TIME)
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(w), allow_pickle=False)


def load_back(spec, files):
    """Loads the written files with Keras, independently of the model object in memory."""
    model_path = OUT / files["model"]
    if spec.form == KERAS:
        return keras.models.load_model(model_path)
    model = keras.models.model_from_json(model_path.read_text())
    weights_path = OUT / files["weights"]
    if spec.form == JSON_H5:
        model.load_weights(weights_path)
    else:
        with np.load(weights_path) as npz:
            model.set_weights([npz[f"arr_{i}"] for i in range(len(npz.files))])
    return model


def write_fixture(spec):
    keras.backend.clear_session()  # layer names restart at conv2d, dense ... for every fixture
    rng = rng_for(spec.name)
    model, x = spec.build(rng)
    randomize(model, rng)
    if spec.input_kind == "ids":
        assert x.dtype == np.int32
    else:
        x = x.astype(np.float32)

    files = {}
    if spec.form == KERAS:
        files["model"] = f"{spec.name}.keras"
        save_keras(model, OUT / files["model"])
    else:
        text = json.dumps(json.loads(model.to_json()), indent=1)
        if spec.edit_json:
            text = spec.edit_json(text)
        files["model"] = f"{spec.name}.json"
        (OUT / files["model"]).write_text(text + "\n")
        if spec.form == JSON_H5:
            files["weights"] = f"{spec.name}.weights.h5"
            model.save_weights(OUT / files["weights"])
        else:
            files["weights"] = f"{spec.name}.npz"
            savez_weights(model.get_weights(), OUT / files["weights"])

    # Expected values come from the model as read back from disk, so an edited JSON is what
    # the fixture claims, and a file that does not round-trip fails here.
    reloaded = load_back(spec, files)
    expected = np.asarray(reloaded.predict(x, verbose=0), dtype=np.float32)
    in_memory = np.asarray(model.predict(x, verbose=0), dtype=np.float32)
    roundtrip = float(np.max(np.abs(expected - in_memory)))
    assert roundtrip <= 1e-6 * (1 + float(np.max(np.abs(expected)))), f"{spec.name}: reload differs by {roundtrip}"

    files["input"] = f"{spec.name}.input.npy"
    files["expected"] = f"{spec.name}.expected.npy"
    np.save(OUT / files["input"], x)
    np.save(OUT / files["expected"], expected)

    entry = {
        "name": spec.name,
        "model": files["model"],
        **({"weights": files["weights"]} if "weights" in files else {}),
        "input": files["input"],
        "expected": files["expected"],
        "input_kind": spec.input_kind,
        "input_shape": list(x.shape),
        "output_shape": list(expected.shape),
        "description": spec.description,
    }
    return entry, expected


def write_bad(stem, word, description, build):
    keras.backend.clear_session()
    model = build()
    randomize(model, rng_for(stem))
    path = BAD / f"{stem}.keras"
    save_keras(model, path)
    config = zipfile.ZipFile(path).read("config.json").decode()
    assert word in config, f"bad/{stem}: '{word}' does not appear in its config"
    return {"file": f"bad/{stem}.keras", "word": word, "description": description}


def clean(folder):
    for p in folder.iterdir():
        if p.is_file() and p.suffix in {".keras", ".json", ".h5", ".npz", ".npy"}:
            p.unlink()


def main():
    names = [s.name for s in FIXTURES]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"duplicate fixture names: {dupes}"
    OUT.mkdir(parents=True, exist_ok=True)
    BAD.mkdir(parents=True, exist_ok=True)
    clean(OUT)
    clean(BAD)
    keras.utils.set_random_seed(0)

    entries = []
    print(f"{'fixture':40} {'form':8} {'input':16} {'output':14} {'std':>8} {'min':>9} {'max':>9}")
    for spec in FIXTURES:
        entry, expected = write_fixture(spec)
        entries.append(entry)
        print(
            f"{spec.name:40} {spec.form:8} {str(tuple(entry['input_shape'])):16} "
            f"{str(tuple(entry['output_shape'])):14} {expected.std():8.4f} "
            f"{expected.min():9.4f} {expected.max():9.4f}"
        )
        # A fixture whose output barely varies would let a wrong implementation pass.
        assert expected.std() > 0.05, f"{spec.name}: output std {expected.std()} is near-uniform"

    bad_entries = [write_bad(*b) for b in BAD_FILES]
    for b in bad_entries:
        print(f"bad: {b['file']:36} must mention '{b['word']}'")

    manifest = {
        "generated_by": "tools/keras_fixtures.py",
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "tolerance": "|got - expected| <= 1e-4 * (1 + |expected|)",
        "fixtures": entries,
        "bad": bad_entries,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(entries)} fixtures, {len(bad_entries)} bad files, {total / 1e6:.2f} MB in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
