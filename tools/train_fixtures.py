#!/usr/bin/env python3
"""Builds the Keras training references in tests/fixtures/train/ (format: its README.md).

Run from the repository root:

    .venv-keras/bin/python tools/train_fixtures.py               # everything (clears grad/ and fit/)
    .venv-keras/bin/python tools/train_fixtures.py --part grad   # only the gradient cases
    .venv-keras/bin/python tools/train_fixtures.py --part fit    # only the fit cases
    .venv-keras/bin/python tools/train_fixtures.py --only 'lstm_*,dense_rank2'   # some cases (manifest entries merged)

grad/ (Format A): one training step's loss, gradients w.r.t. every trainable weight and every
float input, training-mode outputs and updated non-trainable state, computed as Keras's
TensorFlow train_step does: inside a tf.function, y_pred = model(x, training=True), loss =
model.compute_loss(...) (regularization losses included), tf.GradientTape. The model is saved
before the step, compiled with the case's loss and optimizer="sgd", and the step runs on the
model as loaded back from that file.

fit/ (Format B): model.fit from the saved model for 2-3 epochs (shuffle=False), the history,
the weights after, inference predictions, and the drift Keras shows against itself when every
initial weight moves by one ulp.

Everything is seeded by the case's name (see train_common.py): reruns give identical files.
"""

import argparse
import fnmatch
import json
import shutil
import time
from dataclasses import dataclass
from typing import Callable

from train_common import (
    ROOT,
    VOCAB,
    FitCase,
    as_list,
    check_spread,
    input_entries,
    mixed_lengths,
    model_call_input,
    model_targets,
    normal,
    padded_ids,
    randomize,
    save_model,
    spread,
    start_case,
    targets_for,
    weight_entries,
    write_fit_case,
    write_json,
    write_npz,
)

import keras  # noqa: E402  (configured by train_common)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, ops, optimizers, regularizers  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "train"
GRAD = OUT / "grad"
FIT = OUT / "fit"

MSE = "mean_squared_error"


@dataclass
class GradCase:
    name: str
    description: str
    build: Callable  # rng -> (model, [inputs])
    loss: object = MSE  # what model.compile gets (a list for several outputs)
    loss_weights: list | None = None
    gain: float = 1.0  # multiplies every kernel std (see randomize)


GRAD_CASES: list[GradCase] = []


def grad_case(name, description, loss=MSE, loss_weights=None, gain=1.0):
    def register(build):
        assert all(c.name != name for c in GRAD_CASES), name
        GRAD_CASES.append(GradCase(name, description, build, loss, loss_weights, gain))
        return build

    return register


def seq(input_shape, *stack, dtype="float32"):
    return keras.Sequential([keras.Input(input_shape, dtype=dtype), *stack])


def batch(rng, *shape, n=4, std=1.0):
    return [normal(rng, n, *shape, std=std)]


# ================================================================ Format A cases

# ---------------------------------------------------------------- Dense


@grad_case("dense_rank2", "Dense(5, tanh) -> Dense(3) on (N, 6)")
def _(rng):
    return seq((6,), layers.Dense(5, activation="tanh"), layers.Dense(3)), batch(rng, 6)


@grad_case("dense_rank3", "Dense(5, relu) -> Dense(2) on (N, 4, 6): kernels applied per row of the last axis")
def _(rng):
    return seq((4, 6), layers.Dense(5, activation="relu"), layers.Dense(2)), batch(rng, 4, 6)


@grad_case("dense_rank4_no_bias", "Dense(3, use_bias=False) on (N, 2, 3, 5)")
def _(rng):
    return seq((2, 3, 5), layers.Dense(3, use_bias=False)), batch(rng, 2, 3, 5)


# ---------------------------------------------------------------- activations


def activation_branches(shape, acts, units=6):
    """x -> Dense(units) -> one branch per activation -> Concatenate: every activation gets the
    same pre-activation values, spread wide by the case's gain."""
    x = keras.Input(shape)
    h = layers.Dense(units)(x)
    outs = []
    for a in acts:
        if isinstance(a, str):
            outs.append(layers.Activation(a)(h))
        else:
            outs.append(a(h))
    return keras.Model(x, layers.Concatenate()(outs))


ACTIVATION_GROUPS = {
    "act_relu_family": (
        "relu, leaky_relu, relu6 and the ReLU/LeakyReLU layers with max_value, threshold, negative_slope",
        ["relu", "leaky_relu", "relu6",
         lambda h: layers.ReLU(max_value=2.5, threshold=0.5, negative_slope=0.1)(h),
         lambda h: layers.ReLU(max_value=1.5)(h),
         lambda h: layers.LeakyReLU(negative_slope=0.3)(h)],
        3.0,
    ),
    "act_sigmoid_family": (
        "sigmoid, hard_sigmoid, tanh, softsign, log_sigmoid, sparse_sigmoid, hard_tanh",
        ["sigmoid", "hard_sigmoid", "tanh", "softsign", "log_sigmoid", "sparse_sigmoid", "hard_tanh"],
        2.5,
    ),
    "act_exp_family": (
        "elu, selu, celu, exponential, softplus, sparse_plus, squareplus and ELU(alpha=0.5)",
        ["elu", "selu", "celu", "exponential", "softplus", "sparse_plus", "squareplus",
         lambda h: layers.ELU(alpha=0.5)(h)],
        1.2,
    ),
    "act_gated": (
        "silu, hard_silu, gelu (erf), gelu approximate (keras.ops.gelu(approximate=True)), mish",
        ["silu", "hard_silu", "gelu", lambda h: ops.gelu(h, approximate=True), "mish"],
        2.5,
    ),
    "act_shrink": (
        "hard_shrink, soft_shrink, tanh_shrink, linear",
        ["hard_shrink", "soft_shrink", "tanh_shrink", "linear"],
        2.0,
    ),
    "act_softmax_family": (
        "softmax and log_softmax over the last axis (in the middle of the model: not fused into a loss)",
        ["softmax", "log_softmax"],
        2.0,
    ),
}  # fmt: skip

for _name, (_desc, _acts, _gain) in ACTIVATION_GROUPS.items():

    @grad_case(_name, f"Dense(6) on (N, 5) -> {_desc} -> Concatenate", gain=_gain)
    def _(rng, acts=_acts):
        return activation_branches((5,), acts), batch(rng, 5)


for _act in ["gelu", "selu", "hard_sigmoid"]:

    @grad_case(f"dense_activation_{_act}", f"Dense(5, activation='{_act}') -> Dense(2): the activation inside Dense", gain=2.0)
    def _(rng, act=_act):
        return seq((6,), layers.Dense(5, activation=act), layers.Dense(2)), batch(rng, 6)


# ---------------------------------------------------------------- convolutions

SEQ1 = (9, 4)
IMG = (7, 8, 3)
VOL = (4, 5, 6, 2)


@grad_case("conv1d_valid", "Conv1D(5, 3, relu) valid on (N, 9, 4)")
def _(rng):
    return seq(SEQ1, layers.Conv1D(5, 3, activation="relu")), batch(rng, *SEQ1)


@grad_case("conv1d_same_stride2", "Conv1D(5, 3, strides=2, same) on (N, 9, 4)")
def _(rng):
    return seq(SEQ1, layers.Conv1D(5, 3, strides=2, padding="same")), batch(rng, *SEQ1)


@grad_case("conv1d_valid_stride3", "Conv1D(4, 4, strides=3, valid, tanh) on (N, 9, 4): last step unused")
def _(rng):
    return seq((10, 4), layers.Conv1D(4, 4, strides=3, activation="tanh")), batch(rng, 10, 4)


@grad_case("conv1d_causal_dilation2", "Conv1D(5, 3, causal, dilation_rate=2) on (N, 9, 4)")
def _(rng):
    return seq(SEQ1, layers.Conv1D(5, 3, padding="causal", dilation_rate=2)), batch(rng, *SEQ1)


@grad_case("conv1d_groups2", "Conv1D(6, 3, same, groups=2) on (N, 9, 4)")
def _(rng):
    return seq(SEQ1, layers.Conv1D(6, 3, padding="same", groups=2)), batch(rng, *SEQ1)


@grad_case("conv2d_valid", "Conv2D(4, 3, relu) valid on (N, 7, 8, 3)")
def _(rng):
    return seq(IMG, layers.Conv2D(4, 3, activation="relu")), batch(rng, *IMG, n=3)


@grad_case("conv2d_same", "Conv2D(4, 3, same) on odd-by-even (N, 7, 8, 3)")
def _(rng):
    return seq(IMG, layers.Conv2D(4, 3, padding="same")), batch(rng, *IMG, n=3)


@grad_case("conv2d_same_stride2", "Conv2D(4, 3, strides=2, same) on (N, 7, 8, 3): rows pad 1/1, columns 0/1")
def _(rng):
    return seq(IMG, layers.Conv2D(4, 3, strides=2, padding="same")), batch(rng, *IMG, n=3)


@grad_case("conv2d_valid_stride2", "Conv2D(3, (3, 2), strides=2, valid, elu) on (N, 7, 8, 3)")
def _(rng):
    return seq(IMG, layers.Conv2D(3, (3, 2), strides=2, activation="elu")), batch(rng, *IMG, n=3)


@grad_case("conv2d_stride2x1_no_bias", "Conv2D(4, (2, 3), strides=(2, 1), same, use_bias=False) on (N, 7, 8, 3)")
def _(rng):
    return seq(IMG, layers.Conv2D(4, (2, 3), strides=(2, 1), padding="same", use_bias=False)), batch(rng, *IMG, n=3)


@grad_case("conv2d_dilation2", "Conv2D(4, 3, same, dilation_rate=2) on (N, 7, 8, 3)")
def _(rng):
    return seq(IMG, layers.Conv2D(4, 3, padding="same", dilation_rate=2)), batch(rng, *IMG, n=3)


@grad_case("conv2d_groups2", "Conv2D(6, 3, valid, groups=2) on (N, 6, 7, 4)")
def _(rng):
    return seq((6, 7, 4), layers.Conv2D(6, 3, groups=2)), batch(rng, 6, 7, 4, n=3)


@grad_case("conv3d_valid", "Conv3D(3, (2, 3, 2), valid) on (N, 4, 5, 6, 2)")
def _(rng):
    return seq(VOL, layers.Conv3D(3, (2, 3, 2))), batch(rng, *VOL, n=2)


@grad_case("conv3d_same_stride2", "Conv3D(3, 3, strides=2, same, tanh) on (N, 4, 5, 6, 2)")
def _(rng):
    return seq(VOL, layers.Conv3D(3, 3, strides=2, padding="same", activation="tanh")), batch(rng, *VOL, n=2)


@grad_case("depthwise1d", "DepthwiseConv1D(3, depth_multiplier=2) valid on (N, 9, 4)")
def _(rng):
    return seq(SEQ1, layers.DepthwiseConv1D(3, depth_multiplier=2)), batch(rng, *SEQ1)


@grad_case("depthwise1d_same_stride2", "DepthwiseConv1D(4, strides=2, same, depth_multiplier=2) on (N, 9, 4)")
def _(rng):
    return seq(SEQ1, layers.DepthwiseConv1D(4, strides=2, padding="same", depth_multiplier=2)), batch(rng, *SEQ1)


@grad_case("depthwise2d", "DepthwiseConv2D(3, depth_multiplier=2) valid on (N, 7, 8, 3)")
def _(rng):
    return seq(IMG, layers.DepthwiseConv2D(3, depth_multiplier=2)), batch(rng, *IMG, n=3)


@grad_case("depthwise2d_same_stride2", "DepthwiseConv2D(3, strides=2, same, depth_multiplier=2, relu) on (N, 7, 8, 3)")
def _(rng):
    m = seq(IMG, layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, activation="relu"))
    return m, batch(rng, *IMG, n=3)


@grad_case("separable1d", "SeparableConv1D(5, 3, same, depth_multiplier=2) on (N, 9, 4)")
def _(rng):
    return seq(SEQ1, layers.SeparableConv1D(5, 3, padding="same", depth_multiplier=2)), batch(rng, *SEQ1)


@grad_case("separable2d", "SeparableConv2D(4, 3, strides=2, valid, depth_multiplier=2) on (N, 7, 8, 3)")
def _(rng):
    return seq(IMG, layers.SeparableConv2D(4, 3, strides=2, depth_multiplier=2)), batch(rng, *IMG, n=3)


@grad_case("conv1d_transpose", "Conv1DTranspose(3, 3, strides=2, output_padding=1) valid on (N, 5, 4)")
def _(rng):
    return seq((5, 4), layers.Conv1DTranspose(3, 3, strides=2, output_padding=1)), batch(rng, 5, 4)


@grad_case("conv1d_transpose_same", "Conv1DTranspose(3, 4, strides=2, same) on (N, 5, 4)")
def _(rng):
    return seq((5, 4), layers.Conv1DTranspose(3, 4, strides=2, padding="same")), batch(rng, 5, 4)


@grad_case("conv2d_transpose", "Conv2DTranspose(3, 3, strides=2, output_padding=1) valid on (N, 4, 5, 3)")
def _(rng):
    return seq((4, 5, 3), layers.Conv2DTranspose(3, 3, strides=2, output_padding=1)), batch(rng, 4, 5, 3, n=3)


@grad_case("conv2d_transpose_same", "Conv2DTranspose(2, (3, 4), strides=2, same, relu) on (N, 4, 5, 3)")
def _(rng):
    m = seq((4, 5, 3), layers.Conv2DTranspose(2, (3, 4), strides=2, padding="same", activation="relu"))
    return m, batch(rng, 4, 5, 3, n=3)


@grad_case("conv3d_transpose", "Conv3DTranspose(2, 3, strides=2, output_padding=1) valid on (N, 2, 3, 3, 2)")
def _(rng):
    return seq((2, 3, 3, 2), layers.Conv3DTranspose(2, 3, strides=2, output_padding=1)), batch(rng, 2, 3, 3, 2, n=2)


# ---------------------------------------------------------------- pooling

POOL_SHAPES = {1: (9, 3), 2: (7, 8, 3), 3: (5, 6, 7, 2)}
POOL_LAYERS = {
    ("max", 1): layers.MaxPooling1D, ("avg", 1): layers.AveragePooling1D,
    ("max", 2): layers.MaxPooling2D, ("avg", 2): layers.AveragePooling2D,
    ("max", 3): layers.MaxPooling3D, ("avg", 3): layers.AveragePooling3D,
}  # fmt: skip

for (_kind, _dims), _cls in POOL_LAYERS.items():
    for _padding in ["valid", "same"]:
        _shape = POOL_SHAPES[_dims]

        @grad_case(
            f"{_kind}pool{_dims}d_{_padding}",
            f"{_cls.__name__}(pool 3, strides 2, {_padding}) on (N, {', '.join(map(str, _shape))}) -> Dense(3)",
        )
        def _(rng, cls=_cls, padding=_padding, shape=_shape, dims=_dims):
            m = seq(shape, cls(pool_size=3, strides=2, padding=padding), layers.Dense(3))
            return m, batch(rng, *shape, n=3 if dims < 3 else 2)


@grad_case("maxpool2d_pool2_stride1_same", "MaxPooling2D(pool 2, strides 1, same) on (N, 5, 6, 3) -> Dense(2)")
def _(rng):
    return seq((5, 6, 3), layers.MaxPooling2D(2, strides=1, padding="same"), layers.Dense(2)), batch(rng, 5, 6, 3, n=3)


@grad_case("avgpool2d_pool2x3_stride1x2_same", "AveragePooling2D((2, 3), strides (1, 2), same) on (N, 5, 6, 3) -> Dense(2)")
def _(rng):
    m = seq((5, 6, 3), layers.AveragePooling2D((2, 3), strides=(1, 2), padding="same"), layers.Dense(2))
    return m, batch(rng, 5, 6, 3, n=3)


GLOBAL_POOLS = [
    ("global_maxpool1d", layers.GlobalMaxPooling1D, (7, 4), False),
    ("global_avgpool1d_keepdims", layers.GlobalAveragePooling1D, (7, 4), True),
    ("global_maxpool2d_keepdims", layers.GlobalMaxPooling2D, (5, 6, 3), True),
    ("global_avgpool2d", layers.GlobalAveragePooling2D, (5, 6, 3), False),
    ("global_maxpool3d", layers.GlobalMaxPooling3D, (3, 4, 5, 2), False),
    ("global_avgpool3d_keepdims", layers.GlobalAveragePooling3D, (3, 4, 5, 2), True),
]

for _name, _cls, _shape, _keep in GLOBAL_POOLS:

    @grad_case(_name, f"{_cls.__name__}(keepdims={_keep}) on (N, {', '.join(map(str, _shape))}) -> Dense(3)")
    def _(rng, cls=_cls, shape=_shape, keep=_keep):
        return seq(shape, cls(keepdims=keep), layers.Dense(3)), batch(rng, *shape, n=3)


def masked_ids(rng, n=4, steps=7):
    return padded_ids(rng, mixed_lengths(rng, n, steps), steps)


@grad_case(
    "global_avgpool1d_masked",
    "Embedding(13, 4, mask_zero=True) -> GlobalAveragePooling1D (mean over unmasked steps) -> Dense(3); mixed lengths",
)
def _(rng):
    m = seq((7,), layers.Embedding(VOCAB, 4, mask_zero=True), layers.GlobalAveragePooling1D(), layers.Dense(3), dtype="int32")
    return m, [masked_ids(rng)]


# ---------------------------------------------------------------- reshaping, embedding


@grad_case("flatten", "Flatten on (N, 3, 4, 2) -> Dense(3)")
def _(rng):
    return seq((3, 4, 2), layers.Flatten(), layers.Dense(3)), batch(rng, 3, 4, 2)


@grad_case("reshape", "Reshape((-1, 4)) of (N, 12) -> Dense(2) on (N, 3, 4)")
def _(rng):
    return seq((12,), layers.Reshape((-1, 4)), layers.Dense(2)), batch(rng, 12)


@grad_case("rescaling", "Rescaling(scale=0.5, offset=-0.2) -> Dense(3) on (N, 6)")
def _(rng):
    return seq((6,), layers.Rescaling(scale=0.5, offset=-0.2), layers.Dense(3)), batch(rng, 6)


@grad_case(
    "embedding_flatten",
    "Embedding(13, 3) without mask (0 an ordinary id, ids repeated within and across rows) -> Flatten -> Dense(2)",
)
def _(rng):
    ids = rng.integers(0, 6, (4, 5)).astype(np.int32)  # a small id range: repeats are certain
    ids[0, 0] = 0
    m = seq((5,), layers.Embedding(VOCAB, 3), layers.Flatten(), layers.Dense(2), dtype="int32")
    return m, [ids]


# ---------------------------------------------------------------- recurrent (masked mixed lengths)

T = 7
EMB = 4


def text_model(*stack, steps=T):
    return seq((steps,), layers.Embedding(VOCAB, EMB, mask_zero=True), *stack, dtype="int32")


RNN_CASES = [
    ("simplernn_last", "SimpleRNN(5)", lambda: [layers.SimpleRNN(5), layers.Dense(3)]),
    ("simplernn_sequences", "SimpleRNN(5, return_sequences=True), loss over masked (N, T, 5)",
     lambda: [layers.SimpleRNN(5, return_sequences=True)]),
    ("simplernn_relu_backwards", "SimpleRNN(5, relu, go_backwards=True)",
     lambda: [layers.SimpleRNN(5, activation="relu", go_backwards=True), layers.Dense(3)]),
    ("simplernn_stacked", "SimpleRNN(5, return_sequences=True) -> SimpleRNN(4)",
     lambda: [layers.SimpleRNN(5, return_sequences=True), layers.SimpleRNN(4), layers.Dense(3)]),
    ("lstm_last", "LSTM(5)", lambda: [layers.LSTM(5), layers.Dense(3)]),
    ("lstm_sequences", "LSTM(5, return_sequences=True), loss over masked (N, T, 5)",
     lambda: [layers.LSTM(5, return_sequences=True)]),
    ("lstm_go_backwards_sequences", "LSTM(4, return_sequences=True, go_backwards=True) (outputs in reversed step order)",
     lambda: [layers.LSTM(4, return_sequences=True, go_backwards=True)]),
    ("lstm_go_backwards_last", "LSTM(4, go_backwards=True)",
     lambda: [layers.LSTM(4, go_backwards=True), layers.Dense(3)]),
    ("lstm_stacked", "LSTM(5, return_sequences=True) -> LSTM(4)",
     lambda: [layers.LSTM(5, return_sequences=True), layers.LSTM(4), layers.Dense(3)]),
    ("lstm_no_bias_hard_sigmoid", "LSTM(4, use_bias=False, recurrent_activation='hard_sigmoid')",
     lambda: [layers.LSTM(4, use_bias=False, recurrent_activation="hard_sigmoid"), layers.Dense(3)]),
    ("gru_last", "GRU(5) (reset_after=True)", lambda: [layers.GRU(5), layers.Dense(3)]),
    ("gru_reset_before_last", "GRU(5, reset_after=False)",
     lambda: [layers.GRU(5, reset_after=False), layers.Dense(3)]),
    ("gru_sequences", "GRU(5, return_sequences=True) (reset_after=True), loss over masked (N, T, 5)",
     lambda: [layers.GRU(5, return_sequences=True)]),
    ("gru_reset_before_sequences", "GRU(4, reset_after=False, return_sequences=True)",
     lambda: [layers.GRU(4, reset_after=False, return_sequences=True)]),
    ("gru_go_backwards", "GRU(4, go_backwards=True)", lambda: [layers.GRU(4, go_backwards=True), layers.Dense(3)]),
    ("gru_reset_before_go_backwards", "GRU(4, reset_after=False, go_backwards=True, return_sequences=True)",
     lambda: [layers.GRU(4, reset_after=False, go_backwards=True, return_sequences=True)]),
    ("gru_stacked", "GRU(5, return_sequences=True) -> GRU(4, reset_after=False)",
     lambda: [layers.GRU(5, return_sequences=True), layers.GRU(4, reset_after=False), layers.Dense(3)]),
    ("bidirectional_lstm_concat", "Bidirectional(LSTM(4), merge_mode='concat')",
     lambda: [layers.Bidirectional(layers.LSTM(4)), layers.Dense(3)]),
    ("bidirectional_gru_sum_sequences", "Bidirectional(GRU(4, return_sequences=True), merge_mode='sum')",
     lambda: [layers.Bidirectional(layers.GRU(4, return_sequences=True), merge_mode="sum")]),
    ("bidirectional_simplernn_mul_sequences", "Bidirectional(SimpleRNN(4, return_sequences=True), merge_mode='mul')",
     lambda: [layers.Bidirectional(layers.SimpleRNN(4, return_sequences=True), merge_mode="mul")]),
    ("bidirectional_lstm_ave", "Bidirectional(LSTM(4), merge_mode='ave')",
     lambda: [layers.Bidirectional(layers.LSTM(4), merge_mode="ave"), layers.Dense(3)]),
    ("bidirectional_gru_reset_before_concat_sequences",
     "Bidirectional(GRU(3, reset_after=False, return_sequences=True)) -> Dense(2) per step",
     lambda: [layers.Bidirectional(layers.GRU(3, reset_after=False, return_sequences=True)), layers.Dense(2)]),
]  # fmt: skip

for _name, _desc, _stack in RNN_CASES:

    @grad_case(_name, f"Embedding(13, 4, mask_zero=True) -> {_desc}; ids zero-padded to mixed lengths")
    def _(rng, stack=_stack):
        return text_model(*stack()), [masked_ids(rng)]


@grad_case(
    "bidirectional_lstm_merge_none",
    "Embedding(mask_zero) -> Bidirectional(LSTM(4), merge_mode=None): two outputs (forward, backward), "
    "an MSE loss on each",
    loss=[MSE, MSE],
)
def _(rng):
    ids = keras.Input((T,), dtype="int32")
    fwd, bwd = layers.Bidirectional(layers.LSTM(4), merge_mode=None)(layers.Embedding(VOCAB, EMB, mask_zero=True)(ids))
    return keras.Model(ids, [fwd, bwd]), [masked_ids(rng)]


def encoder_decoder(cell):
    src = keras.Input((T,), dtype="int32", name="source_ids")
    dec_in = keras.Input((5, 3), name="decoder_inputs")
    enc = layers.Embedding(VOCAB, EMB, mask_zero=True)(src)
    if cell == "lstm":
        _, h, c = layers.LSTM(5, return_state=True)(enc)
        dec = layers.LSTM(5, return_sequences=True)(dec_in, initial_state=[h, c])
    else:
        _, h = layers.GRU(5, return_state=True)(enc)
        dec = layers.GRU(5, return_sequences=True)(dec_in, initial_state=h)
    return keras.Model([src, dec_in], layers.Dense(3)(dec))


for _cell in ["lstm", "gru"]:

    @grad_case(
        f"encoder_decoder_{_cell}",
        f"encoder {_cell.upper()}(5, return_state=True) over masked ids; its states are the initial_state of a "
        f"decoder {_cell.upper()}(5, return_sequences=True) over float (N, 5, 3) -> Dense(3)",
    )
    def _(rng, cell=_cell):
        return encoder_decoder(cell), [masked_ids(rng), normal(rng, 4, 5, 3)]


@grad_case("lstm_float_input", "LSTM(4, return_sequences=True) on float (N, 6, 3), no mask")
def _(rng):
    return seq((6, 3), layers.LSTM(4, return_sequences=True)), batch(rng, 6, 3)


@grad_case("gru_float_input", "GRU(4) on float (N, 6, 3), no mask -> Dense(2)")
def _(rng):
    return seq((6, 3), layers.GRU(4), layers.Dense(2)), batch(rng, 6, 3)


# ---------------------------------------------------------------- ConvLSTM, TimeDistributed(recurrent)

CONVLSTM_CASES = [
    ("convlstm2d_last", "ConvLSTM2D(3, 3, same) on (N, 4, 5, 5, 2) -> Dense(2) per position", (4, 5, 5, 2),
     lambda: [layers.ConvLSTM2D(3, 3, padding="same"), layers.Dense(2)]),
    ("convlstm2d_sequences_valid", "ConvLSTM2D(3, (2, 3), valid, return_sequences=True) on (N, 3, 5, 6, 2)",
     (3, 5, 6, 2), lambda: [layers.ConvLSTM2D(3, (2, 3), return_sequences=True)]),
    ("convlstm2d_go_backwards_sequences",
     "ConvLSTM2D(2, 3, same, return_sequences=True, go_backwards=True) on (N, 4, 4, 5, 3) (outputs in reversed "
     "step order) -> Dense(2)", (4, 4, 5, 3),
     lambda: [layers.ConvLSTM2D(2, 3, padding="same", return_sequences=True, go_backwards=True), layers.Dense(2)]),
    ("convlstm2d_go_backwards_last", "ConvLSTM2D(3, 2, valid, go_backwards=True) on (N, 3, 4, 4, 2)",
     (3, 4, 4, 2), lambda: [layers.ConvLSTM2D(3, 2, go_backwards=True)]),
    ("convlstm2d_strides2_same",
     "ConvLSTM2D(3, 3, strides=2, same) on (N, 3, 7, 6, 2) (input conv strided, recurrent conv stride 1 on 4x3) "
     "-> Flatten -> Dense(2)", (3, 7, 6, 2),
     lambda: [layers.ConvLSTM2D(3, 3, strides=2, padding="same"), layers.Flatten(), layers.Dense(2)]),
    ("convlstm2d_no_bias_hard_sigmoid",
     "ConvLSTM2D(2, 3, same, use_bias=False, recurrent_activation='hard_sigmoid', return_sequences=True) on "
     "(N, 3, 4, 4, 2)", (3, 4, 4, 2),
     lambda: [layers.ConvLSTM2D(2, 3, padding="same", use_bias=False, recurrent_activation="hard_sigmoid",
                                return_sequences=True)]),
    ("convlstm1d_sequences", "ConvLSTM1D(4, 3, same, return_sequences=True) on (N, 5, 7, 3) -> Dense(2)",
     (5, 7, 3), lambda: [layers.ConvLSTM1D(4, 3, padding="same", return_sequences=True), layers.Dense(2)]),
    ("convlstm1d_strides2_valid_last", "ConvLSTM1D(3, 2, strides=2, valid) on (N, 4, 7, 2) -> Flatten -> Dense(2)",
     (4, 7, 2), lambda: [layers.ConvLSTM1D(3, 2, strides=2), layers.Flatten(), layers.Dense(2)]),
    ("td_lstm_last", "TimeDistributed(LSTM(4)) on float (N, 3, 5, 3) (each outer step an independent sequence) "
     "-> Dense(2)", (3, 5, 3), lambda: [layers.TimeDistributed(layers.LSTM(4)), layers.Dense(2)]),
    ("td_lstm_sequences_go_backwards", "TimeDistributed(LSTM(3, return_sequences=True, go_backwards=True)) on "
     "float (N, 2, 6, 3)", (2, 6, 3),
     lambda: [layers.TimeDistributed(layers.LSTM(3, return_sequences=True, go_backwards=True))]),
    ("td_bidirectional_gru", "TimeDistributed(Bidirectional(GRU(3))) (concat) on float (N, 3, 5, 4) -> Dense(2)",
     (3, 5, 4), lambda: [layers.TimeDistributed(layers.Bidirectional(layers.GRU(3))), layers.Dense(2)]),
    ("td_bidirectional_gru_sum_sequences",
     "TimeDistributed(Bidirectional(GRU(3, reset_after=False, return_sequences=True), merge_mode='sum')) on "
     "float (N, 2, 4, 3)", (2, 4, 3),
     lambda: [layers.TimeDistributed(layers.Bidirectional(layers.GRU(3, reset_after=False, return_sequences=True),
                                                          merge_mode="sum"))]),
    ("td_simplernn_last", "TimeDistributed(SimpleRNN(4)) on float (N, 3, 4, 2) -> Dense(2)", (3, 4, 2),
     lambda: [layers.TimeDistributed(layers.SimpleRNN(4)), layers.Dense(2)]),
]  # fmt: skip

for _name, _desc, _shape, _stack in CONVLSTM_CASES:

    @grad_case(_name, _desc, gain=1.5 if _name.startswith("convlstm") else 1.0)
    def _(rng, shape=_shape, stack=_stack):
        return seq(shape, *stack()), batch(rng, *shape, n=3)


# ---------------------------------------------------------------- normalization


@grad_case("batchnorm_conv2d", "Conv2D(4, 3, same, use_bias=False) -> BatchNormalization(axis=-1, momentum=0.9) -> relu")
def _(rng):
    m = seq((6, 6, 3), layers.Conv2D(4, 3, padding="same", use_bias=False),
            layers.BatchNormalization(momentum=0.9), layers.Activation("relu"))  # fmt: skip
    return m, batch(rng, 6, 6, 3, n=3)


@grad_case("batchnorm_dense", "Dense(6, use_bias=False) -> BatchNormalization() (momentum 0.99) -> Dense(3) on (N, 5), N=6")
def _(rng):
    m = seq((5,), layers.Dense(6, use_bias=False), layers.BatchNormalization(), layers.Dense(3))
    return m, batch(rng, 5, n=6)


@grad_case("batchnorm_axis1", "BatchNormalization(axis=1, momentum=0.9) on (N, 4, 5, 3) (statistics per row) -> Dense(2)")
def _(rng):
    return seq((4, 5, 3), layers.BatchNormalization(axis=1, momentum=0.9), layers.Dense(2)), batch(rng, 4, 5, 3, n=3)


@grad_case(
    "batchnorm_no_center_scale", "Dense(5, use_bias=False) -> BatchNormalization(center=False, scale=False, momentum=0.9)"
)
def _(rng):
    m = seq((6,), layers.Dense(5, use_bias=False), layers.BatchNormalization(center=False, scale=False, momentum=0.9))
    return m, batch(rng, 6, n=5)


@grad_case(
    "batchnorm_frozen",
    "Dense(5) -> BatchNormalization(trainable=False) -> Dense(2): a frozen BN runs in inference mode while training",
)
def _(rng):
    bn = layers.BatchNormalization()
    bn.trainable = False
    return seq((6,), layers.Dense(5), bn, layers.Dense(2)), batch(rng, 6, n=5)


@grad_case("layernorm", "Dense(6) -> LayerNormalization() on (N, 5)")
def _(rng):
    return seq((5,), layers.Dense(6), layers.LayerNormalization()), batch(rng, 5)


@grad_case("layernorm_axes12_no_center", "LayerNormalization(axis=[1, 2], center=False) on (N, 3, 4, 2) -> Dense(2)")
def _(rng):
    return seq((3, 4, 2), layers.LayerNormalization(axis=[1, 2], center=False), layers.Dense(2)), batch(rng, 3, 4, 2)


@grad_case("rms_normalization", "RMSNormalization() on (N, 3, 6) -> Dense(2)")
def _(rng):
    return seq((3, 6), layers.RMSNormalization(), layers.Dense(2)), batch(rng, 3, 6, std=1.5)


@grad_case("group_normalization", "GroupNormalization(groups=3) on (N, 5, 4, 6) -> Dense(2)")
def _(rng):
    return seq((5, 4, 6), layers.GroupNormalization(groups=3), layers.Dense(2)), batch(rng, 5, 4, 6, n=3)


@grad_case("unit_normalization", "Dense(5) -> UnitNormalization(axis=-1) -> Dense(2)")
def _(rng):
    return seq((6,), layers.Dense(5), layers.UnitNormalization(), layers.Dense(2)), batch(rng, 6)


@grad_case("prelu", "Conv2D(4, 3) -> PReLU(shared_axes=[1, 2]) and Dense(5) -> PReLU() (alpha per unit)")
def _(rng):
    m = seq((6, 6, 2), layers.Conv2D(4, 3), layers.PReLU(shared_axes=[1, 2]), layers.Flatten(),
            layers.Dense(5), layers.PReLU())  # fmt: skip
    return m, batch(rng, 6, 6, 2, n=3)


@grad_case("softmax_axis1", "Softmax(axis=1) on (N, 4, 5) (over the 4 rows) -> Dense(2)")
def _(rng):
    return seq((4, 5), layers.Softmax(axis=1), layers.Dense(2)), batch(rng, 4, 5, std=2.0)


# ---------------------------------------------------------------- merging


def two_inputs(merge, shape_a=(6,), shape_b=(6,), head=3):
    a = keras.Input(shape_a, name="a")
    b = keras.Input(shape_b, name="b")
    return keras.Model([a, b], layers.Dense(head)(merge([a, b])))


MERGES = [
    ("merge_subtract", layers.Subtract), ("merge_multiply", layers.Multiply), ("merge_average", layers.Average),
    ("merge_maximum", layers.Maximum), ("merge_minimum", layers.Minimum),
]  # fmt: skip

for _name, _cls in MERGES:

    @grad_case(_name, f"{_cls.__name__}()([a, b]) of two float (N, 6) inputs -> Dense(3)")
    def _(rng, cls=_cls):
        return two_inputs(cls()), [normal(rng, 4, 6), normal(rng, 4, 6)]


@grad_case("merge_add_three", "Add()([a, b, c]) of three float (N, 6) inputs -> Dense(3)")
def _(rng):
    ins = [keras.Input((6,), name=n) for n in "abc"]
    return keras.Model(ins, layers.Dense(3)(layers.Add()(ins))), [normal(rng, 4, 6) for _ in range(3)]


@grad_case("concatenate_axis1", "Concatenate(axis=1) of (N, 3, 4) and (N, 2, 4) -> Dense(2)")
def _(rng):
    return two_inputs(layers.Concatenate(axis=1), (3, 4), (2, 4), 2), [normal(rng, 4, 3, 4), normal(rng, 4, 2, 4)]


@grad_case("concatenate_last", "Concatenate(axis=-1) of (N, 3, 4) and (N, 3, 2) -> Dense(2)")
def _(rng):
    return two_inputs(layers.Concatenate(), (3, 4), (3, 2), 2), [normal(rng, 4, 3, 4), normal(rng, 4, 3, 2)]


@grad_case("dot_axes1", "Dot(axes=1) of (N, 5) and (N, 5) -> Dense(2)")
def _(rng):
    return two_inputs(layers.Dot(axes=1), (5,), (5,), 2), [normal(rng, 4, 5), normal(rng, 4, 5)]


@grad_case("dot_axes2_normalize", "Dot(axes=(2, 2), normalize=True) of (N, 3, 4) and (N, 5, 4) -> (N, 3, 5) -> Dense(2)")
def _(rng):
    m = two_inputs(layers.Dot(axes=(2, 2), normalize=True), (3, 4), (5, 4), 2)
    return m, [normal(rng, 4, 3, 4), normal(rng, 4, 5, 4)]


@grad_case("dot_axes_1_2", "Dot(axes=(1, 2)) of (N, 4, 3) and (N, 2, 4) -> (N, 3, 2) -> Dense(2)")
def _(rng):
    return two_inputs(layers.Dot(axes=(1, 2)), (4, 3), (2, 4), 2), [normal(rng, 4, 4, 3), normal(rng, 4, 2, 4)]


# ---------------------------------------------------------------- padding, cropping, resizing


SHAPE_CASES = [
    ("zeropad1d", "ZeroPadding1D((1, 2)) on (N, 6, 3) -> Conv1D(3, 2)", (6, 3),
     lambda: [layers.ZeroPadding1D((1, 2)), layers.Conv1D(3, 2)]),
    ("zeropad2d", "ZeroPadding2D(((1, 0), (2, 1))) on (N, 4, 5, 2) -> Conv2D(3, 2)", (4, 5, 2),
     lambda: [layers.ZeroPadding2D(((1, 0), (2, 1))), layers.Conv2D(3, 2)]),
    ("zeropad3d", "ZeroPadding3D((1, (0, 1), 2)) on (N, 2, 3, 3, 2) -> Conv3D(2, 2)", (2, 3, 3, 2),
     lambda: [layers.ZeroPadding3D((1, (0, 1), 2)), layers.Conv3D(2, 2)]),
    ("cropping1d", "Cropping1D((1, 2)) on (N, 8, 3) -> Dense(2)", (8, 3),
     lambda: [layers.Cropping1D((1, 2)), layers.Dense(2)]),
    ("cropping2d", "Cropping2D(((1, 0), (2, 1))) on (N, 6, 7, 2) -> Dense(2)", (6, 7, 2),
     lambda: [layers.Cropping2D(((1, 0), (2, 1))), layers.Dense(2)]),
    ("cropping3d", "Cropping3D(((1, 0), (0, 2), (1, 1))) on (N, 4, 5, 5, 2) -> Dense(2)", (4, 5, 5, 2),
     lambda: [layers.Cropping3D(((1, 0), (0, 2), (1, 1))), layers.Dense(2)]),
    ("upsampling1d", "UpSampling1D(2) on (N, 5, 3) -> Conv1D(2, 3)", (5, 3),
     lambda: [layers.UpSampling1D(2), layers.Conv1D(2, 3)]),
    ("upsampling2d_nearest", "UpSampling2D((2, 3), nearest) on (N, 3, 4, 2) -> Conv2D(2, 3)", (3, 4, 2),
     lambda: [layers.UpSampling2D((2, 3)), layers.Conv2D(2, 3)]),
    ("upsampling2d_bilinear", "UpSampling2D(2, interpolation='bilinear') on (N, 3, 4, 2) -> Conv2D(2, 3)", (3, 4, 2),
     lambda: [layers.UpSampling2D(2, interpolation="bilinear"), layers.Conv2D(2, 3)]),
    ("upsampling3d", "UpSampling3D((2, 1, 2)) on (N, 2, 3, 3, 2) -> Conv3D(2, 2)", (2, 3, 3, 2),
     lambda: [layers.UpSampling3D((2, 1, 2)), layers.Conv3D(2, 2)]),
    ("permute_2d", "Permute((2, 1)) on (N, 3, 4) -> Dense(2)", (3, 4),
     lambda: [layers.Permute((2, 1)), layers.Dense(2)]),
    ("permute_3d", "Permute((3, 1, 2)) on (N, 2, 3, 4) -> Dense(2)", (2, 3, 4),
     lambda: [layers.Permute((3, 1, 2)), layers.Dense(2)]),
    ("repeat_vector", "Dense(4) -> RepeatVector(3) -> Dense(2) on (N, 5)", (5,),
     lambda: [layers.Dense(4), layers.RepeatVector(3), layers.Dense(2)]),
    ("time_distributed_dense", "TimeDistributed(Dense(3, relu)) on (N, 5, 4)", (5, 4),
     lambda: [layers.TimeDistributed(layers.Dense(3, activation="relu"))]),
    ("time_distributed_conv2d", "TimeDistributed(Conv2D(3, 3)) on (N, 3, 5, 5, 2) -> Dense(2)", (3, 5, 5, 2),
     lambda: [layers.TimeDistributed(layers.Conv2D(3, 3)), layers.Dense(2)]),
]  # fmt: skip

for _name, _desc, _shape, _stack in SHAPE_CASES:

    @grad_case(_name, _desc)
    def _(rng, shape=_shape, stack=_stack):
        return seq(shape, *stack()), batch(rng, *shape, n=3)


# ---------------------------------------------------------------- graph structure


@grad_case(
    "residual_block",
    "x -> Conv2D(3, 3, same, relu) -> Conv2D(3, 3, same) -> Add with x (x feeds two branches) -> relu -> "
    "GlobalAveragePooling2D -> Dense(2)",
)
def _(rng):
    x = keras.Input((6, 6, 3))
    h = layers.Conv2D(3, 3, padding="same", activation="relu")(x)
    h = layers.Conv2D(3, 3, padding="same")(h)
    h = layers.Activation("relu")(layers.Add()([x, h]))
    return keras.Model(x, layers.Dense(2)(layers.GlobalAveragePooling2D()(h))), batch(rng, 6, 6, 3, n=3)


@grad_case(
    "shared_dense_two_inputs",
    "one Dense(4, tanh) applied to inputs a and b (weights shared), Concatenate -> Dense(2)",
)
def _(rng):
    a, b = keras.Input((5,), name="a"), keras.Input((5,), name="b")
    shared = layers.Dense(4, activation="tanh")
    out = layers.Dense(2)(layers.Concatenate()([shared(a), shared(b)]))
    return keras.Model([a, b], out), [normal(rng, 4, 5), normal(rng, 4, 5)]


@grad_case("shared_dense_twice_in_a_row", "one Dense(5, tanh) applied twice in sequence (d(d(x))) on (N, 5) -> Dense(2)")
def _(rng):
    x = keras.Input((5,))
    d = layers.Dense(5, activation="tanh")
    return keras.Model(x, layers.Dense(2)(d(d(x)))), batch(rng, 5)


@grad_case(
    "multi_output_loss_weights",
    "two heads from one trunk: Dense(3) with MSE and Dense(4, softmax) with sparse CE, loss_weights [0.5, 2.0]",
    loss=[MSE, "sparse_categorical_crossentropy"],
    loss_weights=[0.5, 2.0],
)
def _(rng):
    x = keras.Input((6,))
    h = layers.Dense(5, activation="relu")(x)
    return keras.Model(x, [layers.Dense(3)(h), layers.Dense(4, activation="softmax")(h)]), batch(rng, 6, n=5)


@grad_case("frozen_dense", "Dense(5, tanh, trainable=False) -> Dense(3): no gradient for the frozen kernel, dx still flows")
def _(rng):
    frozen = layers.Dense(5, activation="tanh")
    frozen.trainable = False
    return seq((6,), frozen, layers.Dense(3)), batch(rng, 6)


# ---------------------------------------------------------------- losses

C = 4


def head(activation, units=C):
    return seq((6,), layers.Dense(8, activation="tanh"), layers.Dense(units, activation=activation))


def loss_case(name, description, activation, loss, n=5, gain=2.0, model=None):
    @grad_case(name, description, loss=loss, gain=gain)
    def _(rng):
        return (model() if model else head(activation)), batch(rng, 6, n=n)


loss_case("loss_mae", "Dense -> Dense(4) linear, mean_absolute_error", None, "mean_absolute_error")
loss_case("loss_mse", "Dense -> Dense(4) linear, mean_squared_error", None, MSE)
loss_case("loss_bce_sigmoid", "Dense(4, sigmoid) output, binary_crossentropy (Keras uses the sigmoid's logits)",
          "sigmoid", "binary_crossentropy")
loss_case("loss_bce_from_logits", "Dense(4) linear, BinaryCrossentropy(from_logits=True)", None,
          keras.losses.BinaryCrossentropy(from_logits=True))
loss_case("loss_bce_label_smoothing", "Dense(4, sigmoid), BinaryCrossentropy(label_smoothing=0.1)", "sigmoid",
          keras.losses.BinaryCrossentropy(label_smoothing=0.1))
loss_case("loss_cce_softmax", "Dense(4, softmax), categorical_crossentropy (Keras uses the softmax's logits)",
          "softmax", "categorical_crossentropy")
loss_case("loss_cce_from_logits", "Dense(4) linear, CategoricalCrossentropy(from_logits=True)", None,
          keras.losses.CategoricalCrossentropy(from_logits=True))
loss_case("loss_cce_label_smoothing", "Dense(4, softmax), CategoricalCrossentropy(label_smoothing=0.1)", "softmax",
          keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
loss_case("loss_scce_softmax", "Dense(4, softmax), sparse_categorical_crossentropy (int32 labels)", "softmax",
          "sparse_categorical_crossentropy")
loss_case("loss_scce_from_logits", "Dense(4) linear, SparseCategoricalCrossentropy(from_logits=True)", None,
          keras.losses.SparseCategoricalCrossentropy(from_logits=True))
loss_case(
    "loss_bce_softmax_output",
    "Dense(4, softmax) output with binary_crossentropy. Keras 3.15 does NOT take the clipped probability path "
    "here: the softmax output carries _keras_logits, so the loss is sigmoid_cross_entropy_with_logits on the "
    "softmax's input",
    "softmax", "binary_crossentropy", gain=4.0,
)  # fmt: skip
loss_case(
    "loss_bce_hard_sigmoid_clipped",
    "Dense(4, hard_sigmoid) output (reaches exactly 0 and 1), binary_crossentropy: the probability path, "
    "clipped to [1e-7, 1 - 1e-7]",
    "hard_sigmoid", "binary_crossentropy", gain=4.0,
)  # fmt: skip
loss_case(
    "loss_cce_probabilities_clipped",
    "Dense(4, softmax) -> Reshape((4,)): the loss sees a Reshape, not a Softmax, so categorical_crossentropy "
    "takes the probability path (scaled to sum 1, clipped to [1e-7, 1 - 1e-7])",
    None, "categorical_crossentropy", gain=5.0,
    model=lambda: seq((6,), layers.Dense(8, activation="tanh"), layers.Dense(C, activation="softmax"), layers.Reshape((C,))),
)  # fmt: skip
loss_case(
    "loss_scce_probabilities_clipped",
    "Dense(4, softmax) -> Reshape((4,)), sparse_categorical_crossentropy on the probability path (clipped)",
    None, "sparse_categorical_crossentropy", gain=5.0,
    model=lambda: seq((6,), layers.Dense(8, activation="tanh"), layers.Dense(C, activation="softmax"), layers.Reshape((C,))),
)  # fmt: skip


@grad_case(
    "seq_scce_time_distributed_masked",
    "Embedding(mask_zero) -> LSTM(5, return_sequences=True) -> TimeDistributed(Dense(4, softmax)), "
    "sparse CE over (N, T) labels, masked steps excluded; TimeDistributed's reshape hides the softmax, so the "
    "probability path (clipped) is taken",
    loss="sparse_categorical_crossentropy",
)
def _(rng):
    return text_model(layers.LSTM(5, return_sequences=True), layers.TimeDistributed(layers.Dense(C, activation="softmax"))), [
        masked_ids(rng)
    ]


@grad_case(
    "seq_cce_dense_softmax",
    "float (N, 6, 3) -> GRU(5, return_sequences=True) -> Dense(4, softmax) on the 3-d sequence, categorical CE "
    "over (N, T, C) (the logits path)",
    loss="categorical_crossentropy",
)
def _(rng):
    return seq((6, 3), layers.GRU(5, return_sequences=True), layers.Dense(C, activation="softmax")), batch(rng, 6, 3)


@grad_case(
    "seq_bce_logits_masked",
    "Embedding(mask_zero) -> SimpleRNN(5, return_sequences=True) -> Dense(4) linear, "
    "BinaryCrossentropy(from_logits=True) over (N, T, C), masked steps excluded",
    loss=keras.losses.BinaryCrossentropy(from_logits=True),
)
def _(rng):
    return text_model(layers.SimpleRNN(5, return_sequences=True), layers.Dense(C)), [masked_ids(rng)]


@grad_case(
    "seq_mse_time_distributed",
    "float (N, 6, 3) -> LSTM(4, return_sequences=True) -> TimeDistributed(Dense(2)), MSE over (N, T, 2)",
)
def _(rng):
    return seq((6, 3), layers.LSTM(4, return_sequences=True), layers.TimeDistributed(layers.Dense(2))), batch(rng, 6, 3)


# ---------------------------------------------------------------- regularizers


@grad_case("reg_kernel_l1", "Dense(5, kernel_regularizer=L1(0.02)) -> Dense(3)")
def _(rng):
    return seq((6,), layers.Dense(5, kernel_regularizer=regularizers.L1(0.02)), layers.Dense(3)), batch(rng, 6)


@grad_case("reg_kernel_l2_bias_l1", "Dense(5, kernel_regularizer=L2(0.05), bias_regularizer=L1(0.03)) -> Dense(3)")
def _(rng):
    d = layers.Dense(5, kernel_regularizer=regularizers.L2(0.05), bias_regularizer=regularizers.L1(0.03))
    return seq((6,), d, layers.Dense(3)), batch(rng, 6)


@grad_case("reg_conv2d_l1l2", "Conv2D(3, 3, kernel_regularizer=L1L2(0.01, 0.05), bias_regularizer=L2(0.1)) -> Flatten -> Dense(2)")
def _(rng):
    c = layers.Conv2D(3, 3, kernel_regularizer=regularizers.L1L2(l1=0.01, l2=0.05), bias_regularizer=regularizers.L2(0.1))
    return seq((5, 5, 2), c, layers.Flatten(), layers.Dense(2)), batch(rng, 5, 5, 2, n=3)


@grad_case(
    "reg_lstm_recurrent",
    "Embedding(mask_zero, embeddings_regularizer=L2(0.01)) -> LSTM(4, kernel_regularizer=L1(0.01), "
    "recurrent_regularizer=L2(0.05), bias_regularizer=L1L2(0.01, 0.01)) -> Dense(3)",
)
def _(rng):
    m = seq((T,), layers.Embedding(VOCAB, EMB, mask_zero=True, embeddings_regularizer=regularizers.L2(0.01)),
            layers.LSTM(4, kernel_regularizer=regularizers.L1(0.01), recurrent_regularizer=regularizers.L2(0.05),
                        bias_regularizer=regularizers.L1L2(l1=0.01, l2=0.01)),
            layers.Dense(3), dtype="int32")  # fmt: skip
    return m, [masked_ids(rng)]


@grad_case("reg_gru_recurrent_l1l2", "GRU(4, recurrent_regularizer=L1L2(0.02, 0.02)) on float (N, 5, 3) -> Dense(2)")
def _(rng):
    return seq((5, 3), layers.GRU(4, recurrent_regularizer=regularizers.L1L2(l1=0.02, l2=0.02)), layers.Dense(2)), batch(
        rng, 5, 3
    )


@grad_case(
    "reg_activity",
    "Dense(5, activity_regularizer=L1L2(0.01, 0.02)) -> Dense(3, activity_regularizer=L2(0.05)); Keras 3.15 "
    "divides each activity penalty by the batch size",
)
def _(rng):
    m = seq((6,), layers.Dense(5, activity_regularizer=regularizers.L1L2(l1=0.01, l2=0.02)),
            layers.Dense(3, activity_regularizer=regularizers.L2(0.05)))  # fmt: skip
    return m, batch(rng, 6)


@grad_case(
    "activity_regularization_layer",
    "Dense(5) -> ActivityRegularization(l1=0.01, l2=0.02) (identity; penalty / batch size) -> Dense(3)",
)
def _(rng):
    return seq((6,), layers.Dense(5), layers.ActivityRegularization(l1=0.01, l2=0.02), layers.Dense(3)), batch(rng, 6)


# ================================================================ Format A writer


def train_step_grads(model, xs, ys):
    """Loss, training outputs and gradients as TensorFlowTrainer.train_step computes them
    (graph mode, where a Softmax/Sigmoid feeding a cross-entropy hands the loss its logits)."""
    float_idx = [i for i, x in enumerate(xs) if x.dtype.kind == "f"]
    variables = list(model.trainable_weights)

    @tf.function
    def step(xs_t, ys_t):
        with tf.GradientTape() as tape:
            for i in float_idx:
                tape.watch(xs_t[i])
            x = model_call_input(model, xs_t)
            y = model_targets(model, ys_t)
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
            extra = ops.sum([ops.sum(v) for v in model.losses]) if model.losses else ops.zeros(())
        grads = tape.gradient(loss, variables + [xs_t[i] for i in float_idx])
        # An Embedding's gradient comes as IndexedSlices (rows per looked-up id): sum them densely.
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        return loss, extra, as_list(y_pred), grads

    loss, extra, outs, grads = step([tf.constant(x) for x in xs], [tf.constant(y) for y in ys])
    assert all(g is not None for g in grads), "a gradient is None (a weight or input unconnected to the loss)"
    g = [np.asarray(v.numpy()) for v in grads[: len(variables)]]
    dx = {i: np.asarray(v.numpy()) for i, v in zip(float_idx, grads[len(variables) :])}
    return float(loss.numpy()), float(extra.numpy()), [np.asarray(o.numpy()) for o in outs], g, dx


def check_against_train_on_batch(name, path, xs, ys, loss, grads, state):
    """The same step through Keras's own train_on_batch with SGD at learning rate 1: the weights
    move by exactly -g (up to one rounding of w - g), the reported loss is this batch's, and the
    non-trainable state after is the same. This ties the fixture to what fit does."""
    model = keras.models.load_model(path)
    model.optimizer.learning_rate.assign(1.0)
    before = [np.asarray(v.numpy(), np.float64) for v in model.trainable_weights]
    got = model.train_on_batch(model_call_input(model, xs), model_targets(model, ys), return_dict=True)
    assert abs(got["loss"] - loss) <= 1e-6 * (1 + abs(loss)), f"{name}: train_on_batch loss {got['loss']} vs {loss}"
    for v, w0, g in zip(model.trainable_weights, before, grads):
        moved = w0 - np.asarray(v.numpy(), np.float64)
        err = np.abs(moved - g) / (1 + np.abs(w0) + np.abs(g))
        assert err.max() <= 1e-6, f"{name}: train_on_batch moved {v.path} by {err.max():.2e} off -g"
    for v, s in zip(model.non_trainable_weights, state):
        assert np.allclose(v.numpy(), s, rtol=1e-6, atol=1e-7), f"{name}: state {v.path} differs after train_on_batch"


def write_grad_case(case):
    t0 = time.time()
    rng = start_case(case.name)
    model, xs = case.build(rng)
    randomize(model, rng, case.gain)
    xs = [x if x.dtype == np.int32 else x.astype(np.float32) for x in xs]
    assert len(xs) == len(model.inputs), case.name
    model.compile(optimizer="sgd", loss=case.loss, loss_weights=case.loss_weights)
    inference = as_list(model.predict(model_call_input(model, xs), verbose=0))
    check_spread(case.name, inference, "inference output")
    losses = case.loss if isinstance(case.loss, list) else [case.loss] * len(inference)
    ys = [targets_for(rng, loss, o.shape) for loss, o in zip(losses, inference)]
    path = GRAD / f"{case.name}.keras"
    save_model(model, path, deflate=True)

    # The step runs on the model as read back: the fixture is what the file says.
    loaded = keras.models.load_model(path)
    for a, b in zip(inference, as_list(loaded.predict(model_call_input(loaded, xs), verbose=0))):
        assert np.array_equal(a, b), f"{case.name}: the reloaded model predicts differently"
    loss, reg, outs, grads, dx = train_step_grads(loaded, xs, ys)
    state = [np.asarray(v.numpy()) for v in loaded.non_trainable_weights]

    assert np.isfinite(loss), f"{case.name}: loss {loss}"
    check_spread(case.name, outs, "training output")
    for v, g in zip(loaded.trainable_weights, grads):
        # 1e-5: a gradient that is zero in exact arithmetic (a bias under BatchNormalization) shows as noise.
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-5, f"{case.name}: gradient of {v.path} is ~0 or not finite"
    for i, d in dx.items():
        assert np.all(np.isfinite(d)) and np.abs(d).max() > 1e-5, f"{case.name}: input {i} gradient is ~0 or not finite"
    assert len(loaded.trainable_weights) > 0, f"{case.name}: nothing to train"

    check_against_train_on_batch(case.name, path, xs, ys, loss, grads, state)

    arrays = {f"x{i}": x for i, x in enumerate(xs)}
    arrays.update({f"y{i}": y for i, y in enumerate(ys)})
    arrays["loss"] = np.float32(loss)
    arrays["loss_regularization"] = np.float32(reg)
    arrays.update({f"g{i}": g for i, g in enumerate(grads)})
    arrays.update({f"dx{i}": d for i, d in dx.items()})
    arrays.update({f"out{i}": o for i, o in enumerate(outs)})
    arrays.update({f"state{i}": s for i, s in enumerate(state)})
    write_npz(GRAD / f"{case.name}.npz", arrays)

    compile_config = loaded.get_compile_config()
    print(
        f"grad {case.name:44} {time.time() - t0:5.1f}s  loss {loss:9.4f}  spread {spread(outs):.3f}  "
        f"min|g|max {min(float(np.abs(g).max()) for g in grads):.2e}"
    )
    return {
        "name": case.name,
        "description": case.description,
        "loss": compile_config.get("loss"),
        "loss_weights": compile_config.get("loss_weights"),
        "inputs": input_entries(loaded, xs),
        "outputs": [
            {"shape": list(o.shape), "target_dtype": str(y.dtype), "spread": round(spread([o]), 4)}
            for o, y in zip(outs, ys)
        ],
        "trainable": weight_entries(loaded.trainable_weights),
        "non_trainable": weight_entries(loaded.non_trainable_weights),
        "input_gradients": sorted(dx),
        "loss_value": round(loss, 6),
        "loss_regularization": round(reg, 6),
    }


# ================================================================ Format B cases

FIT_CASES: list[FitCase] = []


def fit_case(
    name, description, optimizer, loss, metrics=(), epochs=3, batch_size=16, validation_split=0.0, gain=1.0,
    loss_weights=None,
):  # fmt: skip
    def register(build):
        assert all(c.name != name for c in FIT_CASES), name
        FIT_CASES.append(
            FitCase(name, description, build, optimizer, loss, list(metrics), epochs, batch_size, validation_split, gain,
                    loss_weights)  # fmt: skip
        )
        return build

    return register


def images(rng, n, shape):
    return normal(rng, n, *shape)


def sparse_labels(rng, n, classes):
    return rng.integers(0, classes, n).astype(np.int32)


def onehot(rng, n, classes):
    return np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]


def teacher_labels(rng, x, classes):
    """Labels from a fixed random linear teacher, so the task is learnable and accuracy moves."""
    flat = x.reshape(len(x), -1)
    w = rng.normal(0, 1, (flat.shape[1], classes))
    return np.argmax(flat @ w, axis=1).astype(np.int32)


def cnn(conv_kw=None, pool=layers.MaxPooling2D, classes=3, shape=(8, 8, 1), dense_kw=None):
    return seq(
        shape,
        layers.Conv2D(4, 3, activation="relu", **(conv_kw or {})),
        pool(2),
        layers.Flatten(),
        layers.Dense(classes, activation="softmax", **(dense_kw or {})),
    )


@fit_case(
    "cnn_adam_scce_l2",
    "Conv2D(4, 3, relu, kernel L2(1e-3)) -> MaxPooling2D(2) -> Flatten -> Dense(3, softmax, kernel L2(1e-3)); "
    "Adam(1e-2), sparse CE, accuracy; 70 samples at batch 16",
    lambda: optimizers.Adam(learning_rate=1e-2),
    "sparse_categorical_crossentropy",
    ["accuracy"],
)
def _(rng):
    x = images(rng, 70, (8, 8, 1))
    reg = {"kernel_regularizer": regularizers.L2(1e-3)}
    return cnn(reg, dense_kw=reg), [x], [teacher_labels(rng, x, 3)]


@fit_case(
    "cnn_avgpool_sgd_nesterov",
    "Conv2D(4, 3, relu) -> AveragePooling2D(2) -> Flatten -> Dense(3, softmax); SGD(0.05, momentum 0.9, nesterov), "
    "sparse CE, accuracy",
    lambda: optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
    "sparse_categorical_crossentropy",
    ["accuracy"],
)
def _(rng):
    x = images(rng, 70, (8, 8, 1))
    return cnn(pool=layers.AveragePooling2D), [x], [teacher_labels(rng, x, 3)]


def mlp(out_units, out_act=None, hidden=8, inputs=6, **dense_kw):
    return seq((inputs,), layers.Dense(hidden, activation="relu", **dense_kw), layers.Dense(out_units, activation=out_act))


def binary_task(rng, n=70, inputs=6):
    x = normal(rng, n, inputs)
    return x, (x @ rng.normal(0, 1, (inputs, 1)) > 0).astype(np.float32)


def regression_task(rng, n=70, inputs=6, outputs=2):
    x = normal(rng, n, inputs)
    return x, np.tanh(x @ rng.normal(0, 0.7, (inputs, outputs))).astype(np.float32)


@fit_case(
    "mlp_sigmoid_bce_sgd",
    "Dense(8, relu) -> Dense(1, sigmoid); SGD(0.1), binary CE, accuracy",
    lambda: optimizers.SGD(learning_rate=0.1),
    "binary_crossentropy",
    ["accuracy"],
)
def _(rng):
    x, y = binary_task(rng)
    return mlp(1, "sigmoid"), [x], [y]


@fit_case(
    "mlp_mse_rmsprop",
    "Dense(8, relu) -> Dense(2); RMSprop(1e-2), MSE, mae",
    lambda: optimizers.RMSprop(learning_rate=1e-2),
    MSE,
    ["mae"],
)
def _(rng):
    x, y = regression_task(rng)
    return mlp(2), [x], [y]


@fit_case(
    "mlp_mse_rmsprop_centered_momentum",
    "Dense(8, relu) -> Dense(2); RMSprop(5e-3, rho 0.8, momentum 0.5, centered), MSE",
    lambda: optimizers.RMSprop(learning_rate=5e-3, rho=0.8, momentum=0.5, centered=True),
    MSE,
)
def _(rng):
    x, y = regression_task(rng)
    return mlp(2), [x], [y]


@fit_case(
    "mlp_mse_adagrad",
    "Dense(8, relu) -> Dense(2); Adagrad(0.1, initial_accumulator_value 0.1), MSE",
    lambda: optimizers.Adagrad(learning_rate=0.1),
    MSE,
)
def _(rng):
    x, y = regression_task(rng)
    return mlp(2), [x], [y]


@fit_case(
    "mlp_mse_adamw",
    "Dense(8, relu) -> Dense(2); AdamW(1e-2, weight_decay 0.05), MSE",
    lambda: optimizers.AdamW(learning_rate=1e-2, weight_decay=0.05),
    MSE,
)
def _(rng):
    x, y = regression_task(rng)
    return mlp(2), [x], [y]


@fit_case(
    "mlp_bce_adam_amsgrad",
    "Dense(8, relu) -> Dense(1, sigmoid); Adam(1e-2, amsgrad=True, beta_2 0.99), binary CE, accuracy",
    lambda: optimizers.Adam(learning_rate=1e-2, beta_2=0.99, amsgrad=True),
    "binary_crossentropy",
    ["accuracy"],
)
def _(rng):
    x, y = binary_task(rng)
    return mlp(1, "sigmoid"), [x], [y]


for _name, _kw, _desc in [
    ("mlp_mse_sgd_clipnorm", {"clipnorm": 0.05}, "clipnorm 0.05 (each gradient's norm)"),
    ("mlp_mse_sgd_clipvalue", {"clipvalue": 0.02}, "clipvalue 0.02"),
    ("mlp_mse_sgd_global_clipnorm", {"global_clipnorm": 0.1}, "global_clipnorm 0.1 (all gradients together)"),
]:

    @fit_case(_name, f"Dense(8, relu) -> Dense(2); SGD(0.2, {_desc}), MSE", lambda kw=_kw: optimizers.SGD(0.2, **kw), MSE)
    def _(rng):
        x, y = regression_task(rng)
        y = y * 3.0  # large errors: the clipping is active every step
        return mlp(2), [x], [y]


SCHEDULES = [
    ("schedule_exponential_decay", "ExponentialDecay(0.05, decay_steps 3, decay_rate 0.7)",
     lambda: optimizers.schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.7)),
    ("schedule_exponential_decay_staircase", "ExponentialDecay(0.05, decay_steps 4, decay_rate 0.5, staircase)",
     lambda: optimizers.schedules.ExponentialDecay(0.05, decay_steps=4, decay_rate=0.5, staircase=True)),
    ("schedule_cosine_decay_warmup", "CosineDecay(0.01, decay_steps 10, alpha 0.1, warmup_target 0.08, warmup_steps 4)",
     lambda: optimizers.schedules.CosineDecay(0.01, decay_steps=10, alpha=0.1, warmup_target=0.08, warmup_steps=4)),
    ("schedule_piecewise_constant", "PiecewiseConstantDecay(boundaries [4, 9], values [0.08, 0.03, 0.01])",
     lambda: optimizers.schedules.PiecewiseConstantDecay([4, 9], [0.08, 0.03, 0.01])),
]  # fmt: skip

for _name, _desc, _sched in SCHEDULES:

    @fit_case(
        _name,
        f"Dense(8, relu) -> Dense(2); SGD(momentum 0.5) with learning rate {_desc}, MSE; 5 steps an epoch",
        lambda sched=_sched: optimizers.SGD(learning_rate=sched(), momentum=0.5),
        MSE,
    )
    def _(rng):
        x, y = regression_task(rng)
        return mlp(2), [x], [y]


@fit_case(
    "mlp_cce_label_smoothing_adam",
    "Dense(8, relu) -> Dense(4, softmax); Adam(1e-2), CategoricalCrossentropy(label_smoothing=0.1), "
    "categorical_accuracy",
    lambda: optimizers.Adam(learning_rate=1e-2),
    keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
    ["categorical_accuracy"],
)
def _(rng):
    x = normal(rng, 70, 6)
    return mlp(4, "softmax"), [x], [np.eye(4, dtype=np.float32)[teacher_labels(rng, x, 4)]]


def text_task(rng, n, steps, classes=2):
    lengths = [steps, 1] + [int(v) for v in rng.integers(1, steps + 1, n - 2)]
    ids = padded_ids(rng, [lengths[i] for i in rng.permutation(n)], steps)
    # Label: does token 3 or 4 appear (a learnable rule, independent of length).
    y = np.isin(ids, [3, 4]).any(axis=1).astype(np.int32) % classes
    return ids, y


@fit_case(
    "text_bilstm_masked_adam",
    "Embedding(13, 4, mask_zero=True) -> Bidirectional(LSTM(4)) -> Dense(2, softmax); Adam(1e-2), sparse CE, "
    "accuracy; 60 sequences of 8 steps zero-padded to mixed lengths, batch 16",
    lambda: optimizers.Adam(learning_rate=1e-2),
    "sparse_categorical_crossentropy",
    ["accuracy"],
)
def _(rng):
    ids, y = text_task(rng, 60, 8)
    m = seq((8,), layers.Embedding(VOCAB, 4, mask_zero=True), layers.Bidirectional(layers.LSTM(4)),
            layers.Dense(2, activation="softmax"), dtype="int32")  # fmt: skip
    return m, [ids], [y]


@fit_case(
    "text_stacked_simplernn_sgd",
    "Embedding(13, 4, mask_zero=True) -> SimpleRNN(5, return_sequences=True) -> SimpleRNN(4) -> Dense(1, sigmoid); "
    "SGD(0.1, momentum 0.9), binary CE, accuracy",
    lambda: optimizers.SGD(learning_rate=0.1, momentum=0.9),
    "binary_crossentropy",
    ["accuracy"],
)
def _(rng):
    ids, y = text_task(rng, 60, 8)
    m = seq((8,), layers.Embedding(VOCAB, 4, mask_zero=True), layers.SimpleRNN(5, return_sequences=True),
            layers.SimpleRNN(4), layers.Dense(1, activation="sigmoid"), dtype="int32")  # fmt: skip
    return m, [ids], [y.astype(np.float32)[:, None]]


@fit_case(
    "gru_float_rmsprop",
    "GRU(5) on float (N, 6, 3) -> Dense(2); RMSprop(1e-2), MSE, mae; 64 samples at batch 12",
    lambda: optimizers.RMSprop(learning_rate=1e-2),
    MSE,
    ["mae"],
    batch_size=12,
)
def _(rng):
    x = normal(rng, 64, 6, 3)
    y = np.tanh(x.sum(axis=1) @ rng.normal(0, 0.5, (3, 2))).astype(np.float32)
    return seq((6, 3), layers.GRU(5), layers.Dense(2)), [x], [y]


@fit_case(
    "cnn_batchnorm_adam",
    "Conv2D(4, 3, use_bias=False) -> BatchNormalization(momentum 0.9) -> relu -> MaxPooling2D -> Flatten -> "
    "Dense(3, softmax); Adam(1e-2), sparse CE, accuracy (moving statistics are among the weights)",
    lambda: optimizers.Adam(learning_rate=1e-2),
    "sparse_categorical_crossentropy",
    ["accuracy"],
)
def _(rng):
    x = images(rng, 70, (8, 8, 1))
    m = seq((8, 8, 1), layers.Conv2D(4, 3, use_bias=False), layers.BatchNormalization(momentum=0.9),
            layers.Activation("relu"), layers.MaxPooling2D(2), layers.Flatten(),
            layers.Dense(3, activation="softmax"))  # fmt: skip
    return m, [x], [teacher_labels(rng, x, 3)]


@fit_case(
    "mlp_validation_split",
    "Dense(8, relu) -> Dense(3, softmax); Adam(1e-2), sparse CE, accuracy; validation_split 0.25 (the last 24 of "
    "96 samples), batch 20",
    lambda: optimizers.Adam(learning_rate=1e-2),
    "sparse_categorical_crossentropy",
    ["accuracy"],
    batch_size=20,
    validation_split=0.25,
)
def _(rng):
    x = normal(rng, 96, 6)
    return mlp(3, "softmax"), [x], [teacher_labels(rng, x, 3)]


@fit_case(
    "mlp_scce_from_logits_two_epochs",
    "Dense(8, tanh) -> Dense(4) linear; Adam(5e-3), SparseCategoricalCrossentropy(from_logits=True), accuracy; "
    "2 epochs, 50 samples at batch 8",
    lambda: optimizers.Adam(learning_rate=5e-3),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ["accuracy"],
    epochs=2,
    batch_size=8,
)
def _(rng):
    x = normal(rng, 50, 6)
    m = seq((6,), layers.Dense(8, activation="tanh"), layers.Dense(4))
    return m, [x], [teacher_labels(rng, x, 4)]


@fit_case(
    "two_outputs_loss_weights_validation",
    "functional: x (6) -> Dense(12, relu, kernel L2(1e-2)) -> reg = Dense(2) (MSE, mae) and cls = Dense(3, softmax) "
    "(sparse CE, accuracy); loss_weights [1.0, 0.5]; Adam(1e-2); validation_split 0.25 of 80, batch 16: the "
    "history has each output's unweighted loss (reg_loss, cls_loss, val_reg_loss, val_cls_loss)",
    lambda: optimizers.Adam(learning_rate=1e-2),
    [MSE, "sparse_categorical_crossentropy"],
    [["mae"], ["accuracy"]],
    validation_split=0.25,
    loss_weights=[1.0, 0.5],
)
def _(rng):
    x = normal(rng, 80, 6)
    inp = keras.Input((6,), name="x")
    h = layers.Dense(12, activation="relu", kernel_regularizer=regularizers.L2(1e-2))(inp)
    m = keras.Model(inp, [layers.Dense(2, name="reg")(h), layers.Dense(3, activation="softmax", name="cls")(h)])
    reg = np.tanh(x @ rng.normal(0, 0.7, (6, 2))).astype(np.float32)
    return m, [x], [reg, teacher_labels(rng, x, 3)]


# ================================================================ main


def keras_version():
    return keras.__version__


def selected(name, only):
    return only is None or any(fnmatch.fnmatch(name, p) for p in only.split(","))


def write_grad(only=None):
    GRAD.mkdir(parents=True, exist_ok=True)
    cases = [write_grad_case(c) for c in GRAD_CASES if selected(c.name, only)]
    if only is None:
        write_json(GRAD / "manifest.json", {"keras_version": keras_version(), "cases": cases})
    else:
        merge_manifest(GRAD / "manifest.json", cases, [c.name for c in GRAD_CASES])
    return len(cases)


def merge_manifest(path, cases, order):
    """With --only: the written cases' entries replace (or join) those of an existing manifest,
    in the cases' definition order; every other entry is kept as it was."""
    if not path.exists():
        return
    manifest = json.loads(path.read_text())
    by_name = {c["name"]: c for c in manifest["cases"]}
    by_name.update({c["name"]: c for c in cases})
    rank = {name: i for i, name in enumerate(order)}
    manifest["cases"] = sorted(by_name.values(), key=lambda c: rank.get(c["name"], len(rank)))
    write_json(path, manifest)


def write_fit(only=None):
    FIT.mkdir(parents=True, exist_ok=True)
    cases = [write_fit_case(c, FIT, deflate=True) for c in FIT_CASES if selected(c.name, only)]
    if only is None:
        write_json(FIT / "manifest.json", {"keras_version": keras_version(), "cases": cases})
    return len(cases)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["grad", "fit", "all"], default="all")
    parser.add_argument(
        "--only", help="write only these cases (comma-separated fnmatch patterns); their manifest entries are merged"
    )
    args = parser.parse_args()
    t0 = time.time()
    parts = ["grad", "fit"] if args.part == "all" else [args.part]
    for part in parts:
        folder = GRAD if part == "grad" else FIT
        if args.only is None and folder.exists():
            shutil.rmtree(folder)  # no stale cases survive a rename
        t = time.time()
        n = (write_grad if part == "grad" else write_fit)(args.only)
        print(f"{part}: {n} cases in {time.time() - t:.0f}s")
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
