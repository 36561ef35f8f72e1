#!/usr/bin/env python3
"""Builds the Keras reference fixtures for graphs and the wider layer set in tests/fixtures/graph/.

Run from the repository root (TF_ENABLE_ONEDNN_OPTS=0 keeps TensorFlow's CPU kernels plain):

    TF_ENABLE_ONEDNN_OPTS=0 .venv-keras/bin/python tools/graph_fixtures.py          # everything
    ... tools/graph_fixtures.py --part graph     # only the layer/graph fixtures and bad files
    ... tools/graph_fixtures.py --part apps      # only the keras.applications recipes
    ... tools/graph_fixtures.py --list           # summary table of the written manifest
    ... tools/graph_fixtures.py --check          # reload every fixture in Keras, recompute the
                                                 # app weights from the recipe, compare outputs

For every fixture NAME it writes the model in one of these forms:

    keras      NAME.keras
    json_h5    NAME.json + NAME.weights.h5         (Keras 3 model.save_weights layout)
    json_npz   NAME.json + NAME.npz                (np.savez(*model.get_weights()), arr_0, arr_1 ...)
    legacy_h5  NAME.h5                             (Keras 2 layout: model.save("NAME.h5"), attrs
                                                    model_config + group model_weights)
               or NAME.json + NAME.legacy.h5       (Keras 2 save_weights layout, written by
                                                    keras.src.legacy.saving.legacy_h5_format
                                                    .save_weights_to_hdf5_group)
    recipe     apps/NAME.json + weights computed from "weights_recipe" (see RECIPE_DEFINITION)

plus NAME.input<k>.npy (one per model input, model.inputs order; float32, or int32 token ids) and
NAME.expected<k>.npy (one per model output, model.outputs order, float32: Keras's predict with
the model as reloaded from the written files), and tests/fixtures/graph/manifest.json. Files the
Rust loader must reject go to tests/fixtures/graph/bad/, each with a word its error must contain.

Weights are drawn explicitly from a generator seeded by the fixture's name (reruns give the same
files; adding a fixture changes no other). Every output is checked to depend on the input.
"""

import argparse
import json
import os
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import logging  # noqa: E402
import warnings  # noqa: E402

import absl.logging  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers, ops  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

absl.logging.set_verbosity(absl.logging.ERROR)  # "saving as HDF5 is legacy" on every .h5
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # tf.function retracing notes
warnings.filterwarnings("ignore", message=".*rms_scaling.*")  # ln_rms_scaling uses the deprecated option

from keras_fixtures import (  # noqa: E402
    MASK_T,
    VOCAB,
    normal,
    padded_ids,
    rng_for,
    save_keras,
    savez_weights,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "graph"
BAD = OUT / "bad"
APPS = OUT / "apps"

KERAS = "keras"
JSON_H5 = "json_h5"
JSON_NPZ = "json_npz"
LEGACY_H5 = "legacy_h5"  # full model NAME.h5
LEGACY_WEIGHTS = "legacy_weights"  # NAME.json + NAME.legacy.h5; written to the manifest as legacy_h5
RECIPE = "recipe"


@dataclass
class Spec:
    name: str
    description: str
    build: Callable  # rng -> (model, [inputs]) ; for shares=: (rng, model) -> [inputs]
    form: str = KERAS
    gain: float = 1.0  # multiplies every kernel/recurrent std
    shares: str | None = None  # name of an earlier fixture whose model files this one reuses
    keep: tuple = ()  # weight names (v.name) left as built (e.g. adapted Normalization stats)


FIXTURES: list[Spec] = []


# Fixtures made in loops or by helpers that are written as json + npz instead of .keras, to spread
# the forms and keep the folder small (a .keras file carries ~10 KB of HDF5 overhead).
AS_NPZ = {
    "maxpool1d_valid", "maxpool1d_same", "maxpool1d_pool3_stride2_valid", "maxpool1d_pool3_stride2_same",
    "global_maxpool1d_keepdims", "global_avgpool1d_keepdims", "global_maxpool3d_keepdims",
    "global_avgpool3d_keepdims", "merge_average", "merge_maximum", "merge_minimum", "gru_sequences",
    "gru_relu_hard_sigmoid", "masked_gru_reset_before_sequences", "conv1d_same_even_kernel", "conv1d_no_bias",
    "zeropad2d_tuple2", "cropping2d_sym", "upsampling2d_nearest", "activation_mish", "ln_axes_1_2_3",
    "rms_normalization", "depthwise1d_m1_valid", "conv2d_transpose_s2x3_k3x4_same", "conv3d_same_dilation",
    "avgpool1d_pool4_stride1_same", "zeropad1d_sym", "cropping3d", "permute_2d", "conv1d_causal_dilation2",
}  # fmt: skip


def fixture(name, description, form=KERAS, gain=1.0, shares=None, keep=()):
    if name in AS_NPZ:
        assert form == KERAS, name
        form = JSON_NPZ

    def register(build):
        FIXTURES.append(Spec(name, description, build, form, gain, shares, tuple(keep)))
        return build

    return register


def seq(input_shape, *stack, dtype="float32"):
    return keras.Sequential([keras.Input(input_shape, dtype=dtype), *stack])


def as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


# ---------------------------------------------------------------- weights

RECURRENT_GAIN = {"lstm_cell": 2.0, "gru_cell": 1.5, "conv_lstm_cell": 1.5}


def randomize(model, rng, gain=1.0, keep=()):
    """Real-scale weights by name: kernels ~ N(0, g*min(0.5, 1.5/sqrt(fan_in))) (depthwise
    kernels count only the window in fan_in), biases/beta ~ N(0, 0.3), BatchNormalization
    moving_mean ~ N(0, 0.5), moving_variance ~ U(0.5, 2), gamma (BN and LayerNorm) ~ U(0.5, 1.5),
    RMSNormalization scale ~ U(0.5, 1.5), PReLU alpha ~ N(0.2, 0.4), embeddings ~ N(0, 1).
    Recurrent cells get RECURRENT_GAIN on top of g."""
    for v in model.weights:
        if v.name in keep:
            continue
        shape = tuple(int(d) for d in v.shape)
        name = v.name
        g = gain
        for cell, cg in RECURRENT_GAIN.items():
            if f"/{cell}/" in v.path:
                g *= cg
        if name == "embeddings":
            w = rng.normal(0.0, 1.0, shape)
        elif name in ("bias", "beta"):
            w = rng.normal(0.0, 0.3 * (g if g > 1 else 1.0), shape)
        elif name == "moving_mean":
            w = rng.normal(0.0, 0.5, shape)
        elif name == "moving_variance":
            w = rng.uniform(0.5, 2.0, shape)
        elif name in ("gamma", "scale"):
            w = rng.uniform(0.5, 1.5, shape)
        elif name == "alpha":
            w = rng.normal(0.2, 0.4, shape)
        else:
            if name == "depthwise_kernel" or (len(shape) >= 3 and "depthwise" in v.path and name == "kernel"):
                fan_in = int(np.prod(shape[:-2]))
            else:
                fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            w = rng.normal(0.0, g * min(0.5, 1.5 / np.sqrt(fan_in)), shape)
        v.assign(np.asarray(w, dtype=v.dtype))


# ---------------------------------------------------------------- shapes used throughout

IMG = (7, 9, 3)
SEQ = (11, 5)  # timesteps, features
VOL = (5, 6, 7, 2)  # depth, height, width, channels


def img(rng, n=2, shape=IMG, mean=0.0):
    return [normal(rng, n, *shape, mean=mean)]


# ---------------------------------------------------------------- normalization


@fixture("bn_last_axis", "Conv2D same -> BatchNormalization(axis=-1) on 7x9x3 (random moving stats)")
def _(rng):
    return seq(IMG, layers.Conv2D(5, 3, padding="same"), layers.BatchNormalization()), img(rng)


@fixture(
    "bn_axis1",
    "BatchNormalization(axis=1) on a (N,7,9,3) tensor: statistics per row index (7 of them)",
    form=JSON_H5,
)
def _(rng):
    return seq(IMG, layers.BatchNormalization(axis=1)), img(rng, 3)


@fixture("bn_dense_2d", "Dense -> BatchNormalization -> ReLU on (N, 6)", form=LEGACY_H5)
def _(rng):
    return seq((6,), layers.Dense(7), layers.BatchNormalization(), layers.ReLU()), [normal(rng, 3, 6)]


@fixture(
    "bn_no_center_no_scale_eps",
    "BatchNormalization(center=False, scale=False, epsilon=1e-2) on (N,11,5): only moving stats stored",
)
def _(rng):
    m = seq(SEQ, layers.BatchNormalization(center=False, scale=False, epsilon=1e-2))
    return m, [normal(rng, 2, *SEQ)]


@fixture("bn_no_center", "BatchNormalization(center=False) (gamma, no beta) after Conv1D", form=JSON_NPZ)
def _(rng):
    return seq(SEQ, layers.Conv1D(4, 3), layers.BatchNormalization(center=False)), [normal(rng, 2, *SEQ)]


@fixture("bn_no_scale_eps", "BatchNormalization(scale=False, epsilon=1e-2) (beta, no gamma), axis 2 of 4-D")
def _(rng):
    return seq(IMG, layers.BatchNormalization(axis=2, scale=False, epsilon=1e-2)), img(rng)


@fixture("ln_last_axis", "Dense -> LayerNormalization(axis=-1) on (N,11,5)")
def _(rng):
    return seq(SEQ, layers.Dense(6), layers.LayerNormalization()), [normal(rng, 2, *SEQ)]


@fixture("ln_axes_1_2", "LayerNormalization(axis=[1,2]) on (N,7,9,3): gamma/beta shaped (7,9)", form=JSON_H5)
def _(rng):
    return seq(IMG, layers.LayerNormalization(axis=[1, 2])), img(rng, 3, mean=0.5)


@fixture("ln_axes_1_2_3", "Conv2D -> LayerNormalization(axis=[1,2,3]) over a whole image")
def _(rng):
    return seq(IMG, layers.Conv2D(4, 3), layers.LayerNormalization(axis=[1, 2, 3])), img(rng)


@fixture(
    "ln_no_center_no_scale_eps",
    "LayerNormalization(center=False, scale=False, epsilon=1e-2): no weights",
)
def _(rng):
    m = seq(SEQ, layers.Dense(4), layers.LayerNormalization(center=False, scale=False, epsilon=1e-2))
    return m, [normal(rng, 2, *SEQ)]


@fixture(
    "ln_rms_scaling",
    "LayerNormalization(rms_scaling=True) (deprecated option): x*rsqrt(var+eps)*gamma, no mean "
    "subtraction; only a gamma weight, though the config says center=true",
    form=JSON_NPZ,
)
def _(rng):
    m = seq(SEQ, layers.Dense(6), layers.LayerNormalization(rms_scaling=True))
    return m, [normal(rng, 2, *SEQ, mean=0.5)]


@fixture("rms_normalization", "RMSNormalization(axis=-1, epsilon=1e-6): x*rsqrt(mean(x^2)+eps)*scale")
def _(rng):
    return seq(SEQ, layers.Dense(6), layers.RMSNormalization()), [normal(rng, 2, *SEQ)]


NORM_DATA = np.random.default_rng(7).normal([1.0, -2.0, 0.5], [2.0, 0.5, 3.0], (40, 3)).astype(np.float32)


@fixture(
    "normalization_adapt",
    "Normalization(axis=-1) adapted on data: mean, variance, count (int64) stored as weights",
    keep=("mean", "variance", "count"),
)
def _(rng):
    norm = layers.Normalization(axis=-1)
    norm.adapt(NORM_DATA)
    return seq(IMG, norm, layers.Conv2D(3, 3)), img(rng, mean=0.5)


@fixture(
    "normalization_adapt_json_h5",
    "Normalization adapted (weights in .weights.h5) on (N, 3) -> Dense",
    form=JSON_H5,
    keep=("mean", "variance", "count"),
)
def _(rng):
    norm = layers.Normalization()
    norm.adapt(NORM_DATA)
    return seq((3,), norm, layers.Dense(4)), [normal(rng, 3, 3)]


@fixture(
    "normalization_explicit",
    "Normalization(mean=[...], variance=[...]) per channel: values only in the config (no weights)",
)
def _(rng):
    norm = layers.Normalization(mean=[0.5, -1.0, 2.0], variance=[4.0, 0.25, 1.5])
    return seq(IMG, norm), img(rng)


@fixture(
    "normalization_explicit_invert",
    "Normalization(mean, variance, invert=True): x*sqrt(var)+mean",
    form=JSON_NPZ,
)
def _(rng):
    norm = layers.Normalization(mean=[0.5, -1.0, 2.0, 0.0, 3.0], variance=[4.0, 0.25, 1.5, 1.0, 9.0], invert=True)
    return seq(SEQ, norm), [normal(rng, 2, *SEQ)]


@fixture(
    "normalization_explicit_scalar",
    "Normalization(axis=None, mean=2.0, variance=9.0): one scalar for every element",
)
def _(rng):
    return seq(SEQ, layers.Normalization(axis=None, mean=2.0, variance=9.0)), [normal(rng, 2, *SEQ)]


# ---------------------------------------------------------------- Conv1D / Conv2D / Conv3D


def conv1d_case(name, desc, form=KERAS, in_ch=5, steps=11, **kw):
    @fixture(name, desc, form=form)
    def _(rng):
        return seq((steps, in_ch), layers.Conv1D(**kw)), [normal(rng, 2, steps, in_ch)]


conv1d_case("conv1d_valid", "Conv1D(4, 3) valid on (N,11,5)", filters=4, kernel_size=3)
conv1d_case("conv1d_same_even_kernel", "Conv1D(4, 4) same on length 11", filters=4, kernel_size=4, padding="same")
conv1d_case(
    "conv1d_causal", "Conv1D(3, 3, causal): left pad 2", form=JSON_H5, filters=3, kernel_size=3, padding="causal"
)
conv1d_case(
    "conv1d_causal_dilation2",
    "Conv1D(3, 3, causal, dilation_rate=2): left pad 4",
    filters=3,
    kernel_size=3,
    padding="causal",
    dilation_rate=2,
)
conv1d_case(
    "conv1d_stride2_same", "Conv1D(4, 3, strides=2, same) relu", filters=4, kernel_size=3, strides=2, padding="same",
    activation="relu",
)  # fmt: skip
conv1d_case(
    "conv1d_stride3_valid", "Conv1D(4, 2, strides=3, valid)", form=JSON_NPZ, filters=4, kernel_size=2, strides=3
)
conv1d_case(
    "conv1d_dilation2_same", "Conv1D(4, 3, dilation_rate=2, same)", filters=4, kernel_size=3, dilation_rate=2,
    padding="same",
)  # fmt: skip
conv1d_case(
    "conv1d_dilation2_valid", "Conv1D(4, 3, dilation_rate=2, valid)", form=LEGACY_WEIGHTS, filters=4, kernel_size=3,
    dilation_rate=2,
)  # fmt: skip
conv1d_case(
    "conv1d_groups2", "Conv1D(4, 3, groups=2, same) on 6 channels: kernel (3,3,4)", in_ch=6, filters=4,
    kernel_size=3, groups=2, padding="same",
)  # fmt: skip
conv1d_case("conv1d_no_bias", "Conv1D(3, 5, use_bias=False, tanh)", filters=3, kernel_size=5, use_bias=False,
            activation="tanh")  # fmt: skip


@fixture("conv2d_dilation_2x3_valid", "Conv2D(4, 3, dilation_rate=(2,3)) valid on 9x11x3")
def _(rng):
    return seq((9, 11, 3), layers.Conv2D(4, 3, dilation_rate=(2, 3))), img(rng, shape=(9, 11, 3))


@fixture("conv2d_dilation_2x3_same", "Conv2D(4, (3,2), dilation_rate=(2,3)) same on 7x9x3", form=JSON_H5)
def _(rng):
    return seq(IMG, layers.Conv2D(4, (3, 2), dilation_rate=(2, 3), padding="same")), img(rng)


@fixture("conv2d_groups3", "Conv2D(9, 3, groups=3, same) on 7x9x6: kernel (3,3,2,9)")
def _(rng):
    return seq((7, 9, 6), layers.Conv2D(9, 3, groups=3, padding="same")), img(rng, shape=(7, 9, 6))


@fixture("conv2d_groups3_stride2", "Conv2D(6, 3, groups=3, strides=2, valid, relu) on 7x9x6", form=JSON_NPZ)
def _(rng):
    return seq((7, 9, 6), layers.Conv2D(6, 3, groups=3, strides=2, activation="relu")), img(rng, shape=(7, 9, 6))


@fixture("conv3d_valid", "Conv3D(4, (2,3,3)) valid on 5x6x7x2")
def _(rng):
    return seq(VOL, layers.Conv3D(4, (2, 3, 3))), img(rng, shape=VOL)


@fixture("conv3d_same_stride2", "Conv3D(3, 3, strides=2, same) relu on 5x6x7x2", form=JSON_H5)
def _(rng):
    return seq(VOL, layers.Conv3D(3, 3, strides=2, padding="same", activation="relu")), img(rng, shape=VOL)


@fixture("conv3d_same_dilation", "Conv3D(3, (3,2,3), dilation_rate=(1,2,1), same) on 5x6x7x2")
def _(rng):
    return seq(VOL, layers.Conv3D(3, (3, 2, 3), dilation_rate=(1, 2, 1), padding="same")), img(rng, shape=VOL)


# ---------------------------------------------------------------- depthwise and separable


@fixture("depthwise2d_m1_same", "DepthwiseConv2D(3, depth_multiplier=1, same) on 7x9x3: kernel (3,3,3,1)")
def _(rng):
    return seq(IMG, layers.DepthwiseConv2D(3, padding="same")), img(rng)


@fixture(
    "depthwise2d_m2_stride2_valid",
    "DepthwiseConv2D((3,2), strides=2, depth_multiplier=2) valid: output channel c*2+m",
    form=JSON_H5,
)
def _(rng):
    return seq(IMG, layers.DepthwiseConv2D((3, 2), strides=2, depth_multiplier=2)), img(rng)


@fixture("depthwise2d_m2_stride2_same", "DepthwiseConv2D(3, strides=2, depth_multiplier=2, same) relu6")
def _(rng):
    m = seq(IMG, layers.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same", activation="relu6"))
    return m, img(rng)


@fixture("depthwise2d_dilation2", "DepthwiseConv2D(3, dilation_rate=2, same, use_bias=False)", form=JSON_NPZ)
def _(rng):
    return seq(IMG, layers.DepthwiseConv2D(3, dilation_rate=2, padding="same", use_bias=False)), img(rng)


@fixture("depthwise1d_m1_valid", "DepthwiseConv1D(3) valid on (N,11,5)")
def _(rng):
    return seq(SEQ, layers.DepthwiseConv1D(3)), [normal(rng, 2, *SEQ)]


@fixture("depthwise1d_m2_stride2_same", "DepthwiseConv1D(4, strides=2, depth_multiplier=2, same)", form=LEGACY_H5)
def _(rng):
    return seq(SEQ, layers.DepthwiseConv1D(4, strides=2, depth_multiplier=2, padding="same")), [normal(rng, 2, *SEQ)]


@fixture(
    "separable2d_m2_same",
    "SeparableConv2D(5, 3, depth_multiplier=2, same): depthwise (3,3,3,2) then pointwise (1,1,6,5)",
)
def _(rng):
    return seq(IMG, layers.SeparableConv2D(5, 3, depth_multiplier=2, padding="same")), img(rng)


@fixture("separable2d_m2_valid_stride2", "SeparableConv2D(4, (3,2), strides=2, depth_multiplier=2) valid relu",
         form=JSON_H5)  # fmt: skip
def _(rng):
    m = seq(IMG, layers.SeparableConv2D(4, (3, 2), strides=2, depth_multiplier=2, activation="relu"))
    return m, img(rng)


@fixture("separable1d_m2_same", "SeparableConv1D(4, 3, depth_multiplier=2, same) on (N,11,5)")
def _(rng):
    return seq(SEQ, layers.SeparableConv1D(4, 3, depth_multiplier=2, padding="same")), [normal(rng, 2, *SEQ)]


@fixture("separable1d_m1_valid", "SeparableConv1D(3, 4) valid, use_bias=False", form=JSON_NPZ)
def _(rng):
    return seq(SEQ, layers.SeparableConv1D(3, 4, use_bias=False)), [normal(rng, 2, *SEQ)]


# ---------------------------------------------------------------- transposed convolutions


@fixture("conv1d_transpose_s2_valid", "Conv1DTranspose(4, 3, strides=2) valid on (N,11,5): kernel (3, 4, 5)")
def _(rng):
    return seq(SEQ, layers.Conv1DTranspose(4, 3, strides=2)), [normal(rng, 2, *SEQ)]


@fixture("conv1d_transpose_s2_same", "Conv1DTranspose(4, 4, strides=2, same)", form=LEGACY_WEIGHTS)
def _(rng):
    return seq(SEQ, layers.Conv1DTranspose(4, 4, strides=2, padding="same")), [normal(rng, 2, *SEQ)]


@fixture("conv1d_transpose_s3_outpad", "Conv1DTranspose(3, 3, strides=3, output_padding=2, valid)")
def _(rng):
    return seq(SEQ, layers.Conv1DTranspose(3, 3, strides=3, output_padding=2)), [normal(rng, 2, *SEQ)]


@fixture("conv2d_transpose_s2_same", "Conv2DTranspose(4, 3, strides=2, same) on 7x9x3")
def _(rng):
    return seq(IMG, layers.Conv2DTranspose(4, 3, strides=2, padding="same")), img(rng)


@fixture("conv2d_transpose_s2_valid", "Conv2DTranspose(4, 3, strides=2, valid) relu", form=JSON_H5)
def _(rng):
    return seq(IMG, layers.Conv2DTranspose(4, 3, strides=2, activation="relu")), img(rng)


@fixture(
    "conv2d_transpose_s2x3_k3x4_same",
    "Conv2DTranspose(3, (3,4), strides=(2,3), same) (non-square everything)",
)
def _(rng):
    return seq(IMG, layers.Conv2DTranspose(3, (3, 4), strides=(2, 3), padding="same")), img(rng)


@fixture(
    "conv2d_transpose_outpad",
    "Conv2DTranspose(4, 3, strides=2, output_padding=(1,0), valid)",
    form=JSON_NPZ,
)
def _(rng):
    return seq(IMG, layers.Conv2DTranspose(4, 3, strides=2, output_padding=(1, 0))), img(rng)


@fixture(
    "conv2d_transpose_outpad_same",
    "Conv2DTranspose(4, 4, strides=2, output_padding=1, same)",
)
def _(rng):
    return seq(IMG, layers.Conv2DTranspose(4, 4, strides=2, padding="same", output_padding=1)), img(rng)


@fixture("conv3d_transpose_s2_same", "Conv3DTranspose(3, 3, strides=2, same) on 5x6x7x2")
def _(rng):
    return seq(VOL, layers.Conv3DTranspose(3, 3, strides=2, padding="same")), img(rng, shape=VOL)


@fixture("conv3d_transpose_s2_valid_outpad", "Conv3DTranspose(2, (2,3,2), strides=2, output_padding=(1,0,1)) valid",
         form=JSON_H5)  # fmt: skip
def _(rng):
    m = seq(VOL, layers.Conv3DTranspose(2, (2, 3, 2), strides=2, output_padding=(1, 0, 1)))
    return m, img(rng, shape=VOL)


# ---------------------------------------------------------------- pooling 1D / 3D and global

for _cls, _short, _shift in [(layers.MaxPooling1D, "maxpool1d", -1.0), (layers.AveragePooling1D, "avgpool1d", 0.0)]:
    for _suffix, _kw in [
        ("valid", dict(pool_size=2)),
        ("same", dict(pool_size=2, padding="same")),
        ("pool3_stride2_valid", dict(pool_size=3, strides=2)),
        ("pool3_stride2_same", dict(pool_size=3, strides=2, padding="same")),
        ("pool4_stride1_same", dict(pool_size=4, strides=1, padding="same")),
    ]:

        @fixture(f"{_short}_{_suffix}", f"{_cls.__name__}({_kw}) on (N,11,5)")
        def _(rng, cls=_cls, kw=_kw, shift=_shift):
            return seq(SEQ, cls(**kw)), [normal(rng, 2, *SEQ, mean=shift)]


for _cls, _short, _shift in [(layers.MaxPooling3D, "maxpool3d", -1.0), (layers.AveragePooling3D, "avgpool3d", 0.0)]:
    for _suffix, _kw, _form in [
        ("valid", dict(pool_size=2), KERAS),
        ("same", dict(pool_size=2, padding="same"), JSON_H5),
        ("pool2x2x3_stride1_same", dict(pool_size=(2, 2, 3), strides=1, padding="same"), KERAS),
        ("pool3_stride2_valid", dict(pool_size=3, strides=2), JSON_NPZ),
    ]:

        @fixture(f"{_short}_{_suffix}", f"{_cls.__name__}({_kw}) on 5x6x7x2", form=_form)
        def _(rng, cls=_cls, kw=_kw, shift=_shift):
            return seq(VOL, cls(**kw)), img(rng, shape=VOL, mean=shift)


for _cls, _short, _shape in [
    (layers.GlobalMaxPooling1D, "global_maxpool1d", SEQ),
    (layers.GlobalAveragePooling1D, "global_avgpool1d", SEQ),
    (layers.GlobalMaxPooling3D, "global_maxpool3d", VOL),
    (layers.GlobalAveragePooling3D, "global_avgpool3d", VOL),
]:
    for _keep in [False, True]:

        @fixture(f"{_short}{'_keepdims' if _keep else ''}", f"Dense -> {_cls.__name__}(keepdims={_keep})")
        def _(rng, cls=_cls, keep=_keep, shape=_shape):
            return seq(shape, layers.Dense(4), cls(keepdims=keep)), [normal(rng, 3, *shape)]


@fixture(
    "masked_global_avgpool1d",
    "Embedding(mask_zero) -> GlobalAveragePooling1D: masked mean over the unpadded steps only "
    "(lengths 8,3,5,1)",
)
def _(rng):
    m = seq((MASK_T,), layers.Embedding(VOCAB, 4, mask_zero=True), layers.GlobalAveragePooling1D(), dtype="int32")
    return m, [padded_ids(rng, lengths=[MASK_T, 3, 5, 1])]


# ---------------------------------------------------------------- padding, cropping, upsampling, permute


@fixture("zeropad1d_sym", "Conv1D -> ZeroPadding1D(2) -> Conv1D")
def _(rng):
    return seq(SEQ, layers.Conv1D(3, 2), layers.ZeroPadding1D(2), layers.Conv1D(3, 3)), [normal(rng, 2, *SEQ)]


@fixture("zeropad1d_asym", "ZeroPadding1D((1,3)) -> Conv1D", form=JSON_NPZ)
def _(rng):
    return seq(SEQ, layers.ZeroPadding1D((1, 3)), layers.Conv1D(3, 3)), [normal(rng, 2, *SEQ)]


@fixture("zeropad2d_sym", "ZeroPadding2D(1) -> Conv2D valid")
def _(rng):
    return seq(IMG, layers.ZeroPadding2D(1), layers.Conv2D(3, 3)), img(rng)


@fixture("zeropad2d_asym", "ZeroPadding2D(((1,2),(0,3))) -> Conv2D", form=JSON_H5)
def _(rng):
    return seq(IMG, layers.ZeroPadding2D(((1, 2), (0, 3))), layers.Conv2D(3, 3)), img(rng)


@fixture("zeropad2d_tuple2", "ZeroPadding2D((2,1)): 2 rows each side, 1 column each side, then Conv2D")
def _(rng):
    return seq(IMG, layers.ZeroPadding2D((2, 1)), layers.Conv2D(3, 3)), img(rng)


@fixture("zeropad3d_sym", "ZeroPadding3D(1) -> Conv3D")
def _(rng):
    return seq(VOL, layers.ZeroPadding3D(1), layers.Conv3D(2, 3)), img(rng, shape=VOL)


@fixture("zeropad3d_asym", "ZeroPadding3D(((1,0),(0,2),(2,1))) -> Conv3D", form=JSON_NPZ)
def _(rng):
    return seq(VOL, layers.ZeroPadding3D(((1, 0), (0, 2), (2, 1))), layers.Conv3D(2, 2)), img(rng, shape=VOL)


@fixture("cropping1d", "Cropping1D((1,3)) -> Conv1D")
def _(rng):
    return seq(SEQ, layers.Cropping1D((1, 3)), layers.Conv1D(3, 2)), [normal(rng, 2, *SEQ)]


@fixture("cropping2d", "Conv2D same -> Cropping2D(((1,2),(3,0)))", form=JSON_H5)
def _(rng):
    return seq(IMG, layers.Conv2D(3, 3, padding="same"), layers.Cropping2D(((1, 2), (3, 0)))), img(rng)


@fixture("cropping2d_sym", "Cropping2D(1) -> Conv2D 1x1")
def _(rng):
    return seq(IMG, layers.Cropping2D(1), layers.Conv2D(2, 1)), img(rng)


@fixture("cropping3d", "Cropping3D(((1,1),(0,2),(2,1))) -> Dense")
def _(rng):
    return seq(VOL, layers.Cropping3D(((1, 1), (0, 2), (2, 1))), layers.Dense(3)), img(rng, shape=VOL)


@fixture("upsampling1d", "Conv1D -> UpSampling1D(3) -> Conv1D")
def _(rng):
    m = seq(SEQ, layers.Conv1D(3, 3), layers.UpSampling1D(3), layers.Conv1D(2, 3, padding="same"))
    return m, [normal(rng, 2, *SEQ)]


@fixture("upsampling2d_nearest", "UpSampling2D((2,3), nearest) -> Conv2D same")
def _(rng):
    return seq(IMG, layers.UpSampling2D((2, 3)), layers.Conv2D(3, 3, padding="same")), img(rng)


@fixture("upsampling2d_bilinear", "UpSampling2D((2,3), interpolation='bilinear') (half-pixel centers)")
def _(rng):
    return seq(IMG, layers.UpSampling2D((2, 3), interpolation="bilinear")), img(rng)


@fixture("upsampling2d_bilinear_conv", "Conv2D -> UpSampling2D(2, bilinear) -> Conv2D", form=JSON_H5)
def _(rng):
    m = seq(IMG, layers.Conv2D(4, 3), layers.UpSampling2D(2, interpolation="bilinear"), layers.Conv2D(3, 3))
    return m, img(rng)


@fixture("upsampling3d", "UpSampling3D((2,1,3)) -> Conv3D")
def _(rng):
    return seq(VOL, layers.UpSampling3D((2, 1, 3)), layers.Conv3D(2, 2)), img(rng, shape=VOL)


@fixture("permute_2d", "Permute((2,1)) on (N,11,5) -> Dense over the time axis")
def _(rng):
    return seq(SEQ, layers.Permute((2, 1)), layers.Dense(3)), [normal(rng, 2, *SEQ)]


@fixture("permute_3d", "Permute((3,1,2)) on (N,7,9,3) -> Conv2D", form=JSON_NPZ)
def _(rng):
    return seq(IMG, layers.Permute((3, 1, 2)), layers.Conv2D(4, 2)), img(rng)


@fixture("repeat_vector", "Dense -> RepeatVector(4) -> LSTM(return_sequences) -> Dense")
def _(rng):
    m = seq((6,), layers.Dense(5), layers.RepeatVector(4), layers.LSTM(3, return_sequences=True), layers.Dense(2))
    return m, [normal(rng, 3, 6)]


@fixture("reshape_mid", "Conv2D same -> Reshape((7, 36)) -> Conv1D -> Flatten -> Dense")
def _(rng):
    m = seq(
        IMG,
        layers.Conv2D(4, 3, padding="same", activation="relu"),
        layers.Reshape((7, 36)),
        layers.Conv1D(5, 3),
        layers.Flatten(),
        layers.Dense(4),
    )
    return m, img(rng)


@fixture("flatten_reshape_mid", "Conv1D -> Flatten -> Dense(18) -> Reshape((3,-1)) -> Conv1D", form=JSON_H5)
def _(rng):
    m = seq(
        SEQ,
        layers.Conv1D(3, 3, activation="tanh"),
        layers.Flatten(),
        layers.Dense(18),
        layers.Reshape((3, -1)),
        layers.Conv1D(4, 2),
    )
    return m, [normal(rng, 2, *SEQ)]


# ---------------------------------------------------------------- merge layers


def three_inputs(shape=(6,)):
    return [keras.Input(shape, name=f"in_{k}") for k in "abc"]


for _cls, _n in [
    (layers.Add, 3),
    (layers.Subtract, 2),
    (layers.Multiply, 3),
    (layers.Average, 3),
    (layers.Maximum, 3),
    (layers.Minimum, 3),
]:
    _short = _cls.__name__.lower()

    @fixture(f"merge_{_short}", f"Functional: {_n} inputs (N,6) -> Dense each -> {_cls.__name__}")
    def _(rng, cls=_cls, n=_n):
        ins = three_inputs()[:n]
        branches = [layers.Dense(5, name=f"branch_{i}")(x) for i, x in enumerate(ins)]
        out = cls(name="merge")(branches)
        return keras.Model(ins, out), [normal(rng, 3, 6) for _ in ins]


@fixture("merge_add_direct", "Functional: Add of two raw inputs (N,11,5), then Dense", form=JSON_H5)
def _(rng):
    a, b = keras.Input(SEQ, name="left"), keras.Input(SEQ, name="right")
    out = layers.Dense(3)(layers.Add()([a, b]))
    return keras.Model([a, b], out), [normal(rng, 2, *SEQ), normal(rng, 2, *SEQ)]


@fixture("merge_multiply_3d", "Functional: Conv2D branches on one image -> Multiply -> Conv2D", form=JSON_NPZ)
def _(rng):
    inp = keras.Input(IMG)
    a = layers.Conv2D(4, 3, padding="same", name="a")(inp)
    b = layers.Conv2D(4, 1, activation="sigmoid", name="b")(inp)
    out = layers.Conv2D(2, 3)(layers.Multiply()([a, b]))
    return keras.Model(inp, out), img(rng)


@fixture("concat_last_axis", "Functional: two Conv2D branches -> Concatenate(axis=-1) -> Conv2D")
def _(rng):
    inp = keras.Input(IMG)
    a = layers.Conv2D(3, 3, padding="same", name="a")(inp)
    b = layers.Conv2D(2, 1, name="b")(inp)
    out = layers.Conv2D(4, 3)(layers.Concatenate()([a, b]))
    return keras.Model(inp, out), img(rng)


@fixture("concat_axis1", "Functional: (N,4,5) and (N,3,5) -> Concatenate(axis=1) -> LSTM", form=JSON_H5)
def _(rng):
    a, b = keras.Input((4, 5), name="a"), keras.Input((3, 5), name="b")
    x = layers.Concatenate(axis=1)([a, b])
    return keras.Model([a, b], layers.LSTM(3)(x)), [normal(rng, 2, 4, 5), normal(rng, 2, 3, 5)]


@fixture("concat_axis2", "Functional: 4-D (N,7,9,3) and (N,7,2,3) -> Concatenate(axis=2)")
def _(rng):
    a, b = keras.Input(IMG, name="a"), keras.Input((7, 2, 3), name="b")
    x = layers.Concatenate(axis=2)([a, b])
    out = layers.Conv2D(2, 3)(x)
    return keras.Model([a, b], [x, out]), [normal(rng, 2, *IMG), normal(rng, 2, 7, 2, 3)]


@fixture("concat_three_seq", "Functional: Concatenate(axis=-1) of three sequences (N,11,5),(N,11,2),(N,11,3)")
def _(rng):
    ins = [keras.Input((11, c), name=f"s{c}") for c in (5, 2, 3)]
    out = layers.Dense(3)(layers.Concatenate(axis=-1)(ins))
    return keras.Model(ins, out), [normal(rng, 2, 11, c) for c in (5, 2, 3)]


@fixture("dot_axes1_2d", "Functional: Dot(axes=1) of two (N,6) vectors -> (N,1) (plus the inputs' Dense)")
def _(rng):
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    out = layers.Dot(axes=1)([layers.Dense(6)(a), b])
    return keras.Model([a, b], out), [normal(rng, 3, 6), normal(rng, 3, 6)]


@fixture("dot_axes1_normalize_2d", "Dot(axes=1, normalize=True): cosine similarity of (N,6) rows", form=JSON_NPZ)
def _(rng):
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    out = layers.Dot(axes=1, normalize=True)([layers.Dense(6)(a), b])
    return keras.Model([a, b], out), [normal(rng, 3, 6), normal(rng, 3, 6)]


@fixture("dot_axes2_3d", "Dot(axes=2) of (N,4,5) and (N,3,5) -> (N,4,3) (attention-score shape)")
def _(rng):
    a, b = keras.Input((4, 5), name="q"), keras.Input((3, 5), name="k")
    out = layers.Dot(axes=2)([a, b])
    return keras.Model([a, b], out), [normal(rng, 2, 4, 5), normal(rng, 2, 3, 5)]


@fixture("dot_axes1_3d_normalize", "Dot(axes=1, normalize=True) of (N,4,5) and (N,4,3) -> (N,5,3)", form=JSON_H5)
def _(rng):
    a, b = keras.Input((4, 5), name="a"), keras.Input((4, 3), name="b")
    out = layers.Dot(axes=1, normalize=True)([a, b])
    return keras.Model([a, b], out), [normal(rng, 3, 4, 5), normal(rng, 3, 4, 3)]


@fixture("dot_axes_1_2_3d", "Dot(axes=(1,2)) of (N,4,5) and (N,3,4) -> (N,5,3)")
def _(rng):
    a, b = keras.Input((4, 5), name="a"), keras.Input((3, 4), name="b")
    out = layers.Dot(axes=(1, 2))([a, b])
    return keras.Model([a, b], out), [normal(rng, 2, 4, 5), normal(rng, 2, 3, 4)]


# ---------------------------------------------------------------- GRU

for _suffix, _kw, _form in [
    ("last", {}, KERAS),
    ("sequences", dict(return_sequences=True), KERAS),
    ("reset_before_last", dict(reset_after=False), LEGACY_WEIGHTS),
    ("reset_before_sequences", dict(reset_after=False, return_sequences=True), KERAS),
    ("go_backwards_last", dict(go_backwards=True), JSON_H5),
    ("go_backwards_sequences", dict(go_backwards=True, return_sequences=True), KERAS),
    ("no_bias", dict(use_bias=False, return_sequences=True), JSON_NPZ),
    ("no_bias_reset_before", dict(use_bias=False, reset_after=False), KERAS),
    ("relu_hard_sigmoid", dict(activation="relu", recurrent_activation="hard_sigmoid", return_sequences=True), KERAS),
]:

    @fixture(f"gru_{_suffix}", f"GRU(5, {_kw}) on (N,11,5)", form=_form)
    def _(rng, kw=_kw):
        return seq(SEQ, layers.GRU(5, **kw)), [normal(rng, 3, *SEQ)]


@fixture("bigru_concat_sequences", "Bidirectional(GRU(4, return_sequences)) concat")
def _(rng):
    return seq(SEQ, layers.Bidirectional(layers.GRU(4, return_sequences=True))), [normal(rng, 3, *SEQ)]


@fixture("bigru_sum_last_reset_before", "Bidirectional(GRU(4, reset_after=False), merge_mode='sum')", form=LEGACY_H5)
def _(rng):
    return seq(SEQ, layers.Bidirectional(layers.GRU(4, reset_after=False), merge_mode="sum")), [normal(rng, 3, *SEQ)]


MASK_DESC = "Embedding(mask_zero) on post-padded ids of lengths 8,3,0,5"


def masked(*stack):
    return seq((MASK_T,), layers.Embedding(VOCAB, 4, mask_zero=True), *stack, dtype="int32")


for _suffix, _kw in [
    ("last", {}),
    ("sequences", dict(return_sequences=True)),
    ("reset_before_sequences", dict(reset_after=False, return_sequences=True)),
    ("go_backwards_last", dict(go_backwards=True)),
]:

    @fixture(f"masked_gru_{_suffix}", f"{MASK_DESC} -> GRU(5, {_kw})")
    def _(rng, kw=_kw):
        return masked(layers.GRU(5, **kw)), [padded_ids(rng)]


@fixture("masked_bigru_sequences", f"{MASK_DESC} -> Bidirectional(GRU(3, return_sequences)) -> Dense", form=JSON_H5)
def _(rng):
    return masked(layers.Bidirectional(layers.GRU(3, return_sequences=True)), layers.Dense(2)), [padded_ids(rng)]


# ---------------------------------------------------------------- ConvLSTM, TimeDistributed


@fixture("convlstm1d_same_sequences", "ConvLSTM1D(4, 3, same, return_sequences) on (N,4,7,3)")
def _(rng):
    return seq((4, 7, 3), layers.ConvLSTM1D(4, 3, padding="same", return_sequences=True)), img(rng, shape=(4, 7, 3))


@fixture("convlstm1d_valid_last", "ConvLSTM1D(3, 3, valid) last state on (N,4,7,3)", form=JSON_NPZ)
def _(rng):
    return seq((4, 7, 3), layers.ConvLSTM1D(3, 3)), img(rng, shape=(4, 7, 3))


@fixture("convlstm2d_same_last", "ConvLSTM2D(3, 3, same) last state on (N,3,5,6,2)")
def _(rng):
    return seq((3, 5, 6, 2), layers.ConvLSTM2D(3, 3, padding="same")), img(rng, shape=(3, 5, 6, 2))


@fixture("convlstm2d_valid_sequences", "ConvLSTM2D(4, (3,2), valid, return_sequences) on (N,3,5,6,2)", form=JSON_H5)
def _(rng):
    m = seq((3, 5, 6, 2), layers.ConvLSTM2D(4, (3, 2), return_sequences=True))
    return m, img(rng, shape=(3, 5, 6, 2))


@fixture("convlstm2d_stride2_go_backwards", "ConvLSTM2D(3, 3, strides=2, same, go_backwards) on (N,3,5,6,2)")
def _(rng):
    m = seq((3, 5, 6, 2), layers.ConvLSTM2D(3, 3, strides=2, padding="same", go_backwards=True))
    return m, img(rng, shape=(3, 5, 6, 2))


@fixture("time_distributed_dense", "TimeDistributed(Dense(4, relu)) -> TimeDistributed(Dense(2)) on (N,11,5)")
def _(rng):
    m = seq(SEQ, layers.TimeDistributed(layers.Dense(4, activation="relu")), layers.TimeDistributed(layers.Dense(2)))
    return m, [normal(rng, 2, *SEQ)]


@fixture(
    "time_distributed_conv2d",
    "TimeDistributed(Conv2D(4,3)) -> TimeDistributed(GlobalAveragePooling2D) -> LSTM on (N,3,7,9,2)",
)
def _(rng):
    m = seq(
        (3, 7, 9, 2),
        layers.TimeDistributed(layers.Conv2D(4, 3, activation="relu")),
        layers.TimeDistributed(layers.GlobalAveragePooling2D()),
        layers.LSTM(3),
    )
    return m, img(rng, shape=(3, 7, 9, 2))


@fixture("time_distributed_conv2d_flatten", "TimeDistributed(Conv2D) -> TimeDistributed(Flatten)", form=JSON_NPZ)
def _(rng):
    m = seq((3, 7, 9, 2), layers.TimeDistributed(layers.Conv2D(2, 3, strides=2)), layers.TimeDistributed(layers.Flatten()))
    return m, img(rng, shape=(3, 7, 9, 2))


# ---------------------------------------------------------------- return_state, seq2seq, free time axis


@fixture(
    "lstm_return_state",
    "Functional: LSTM(5, return_sequences, return_state) -> outputs [sequences, h, c] and Dense(c)",
)
def _(rng):
    inp = keras.Input(SEQ, name="x")
    seq_out, h, c = layers.LSTM(5, return_sequences=True, return_state=True, name="lstm")(inp)
    head = layers.Dense(2, name="head")(c)
    return keras.Model(inp, [seq_out, h, c, head]), [normal(rng, 3, *SEQ)]


@fixture("gru_return_state", "Functional: GRU(4, return_state, go_backwards) -> outputs [last, h]", form=JSON_H5)
def _(rng):
    inp = keras.Input(SEQ, name="x")
    out, h = layers.GRU(4, return_state=True, go_backwards=True, name="gru")(inp)
    return keras.Model(inp, [out, layers.Dense(3, name="head")(h)]), [normal(rng, 3, *SEQ)]


@fixture(
    "bilstm_return_state",
    "Functional: Bidirectional(LSTM(3, return_state)) -> [merged, h_fw, c_fw, h_bw, c_bw]",
)
def _(rng):
    inp = keras.Input(SEQ, name="x")
    outs = layers.Bidirectional(layers.LSTM(3, return_state=True), name="bi")(inp)
    return keras.Model(inp, list(outs)), [normal(rng, 3, *SEQ)]


@fixture(
    "seq2seq_lstm",
    "Encoder LSTM(6, return_state) -> decoder LSTM(6, return_sequences)(dec, initial_state=[h, c]) -> "
    "Dense(4); inputs [encoder (N,11,5), decoder (N,7,3)]",
)
def _(rng):
    enc_in = keras.Input(SEQ, name="encoder_in")
    dec_in = keras.Input((7, 3), name="decoder_in")
    _, h, c = layers.LSTM(6, return_state=True, name="encoder")(enc_in)
    dec = layers.LSTM(6, return_sequences=True, name="decoder")(dec_in, initial_state=[h, c])
    out = layers.Dense(4, name="proj")(dec)
    return keras.Model([enc_in, dec_in], out), [normal(rng, 3, *SEQ), normal(rng, 3, 7, 3)]


@fixture(
    "seq2seq_gru",
    "Encoder GRU(5, return_state) -> decoder GRU(5, return_sequences, initial_state=h) -> Dense, json+npz",
    form=JSON_NPZ,
)
def _(rng):
    enc_in = keras.Input(SEQ, name="encoder_in")
    dec_in = keras.Input((6, 2), name="decoder_in")
    _, h = layers.GRU(5, return_state=True, name="encoder")(enc_in)
    dec = layers.GRU(5, return_sequences=True, name="decoder")(dec_in, initial_state=h)
    out = layers.Dense(3, name="proj")(dec)
    return keras.Model([enc_in, dec_in], out), [normal(rng, 3, *SEQ), normal(rng, 3, 6, 2)]


@fixture(
    "free_time_axis_len11",
    "keras.Input((None, 5)): Conv1D same -> LSTM(return_sequences) -> GRU -> Dense, run on length 11",
)
def _(rng):
    inp = keras.Input((None, 5), name="x")
    x = layers.Conv1D(4, 3, padding="same", activation="relu")(inp)
    x = layers.LSTM(5, return_sequences=True)(x)
    x = layers.GRU(4)(x)
    return keras.Model(inp, layers.Dense(3)(x)), [normal(rng, 2, 11, 5)]


@fixture("free_time_axis_len4", "The free_time_axis_len11 model files, run on length 4", shares="free_time_axis_len11")
def _(rng, model):
    return [normal(rng, 3, 4, 5)]


@fixture("free_time_axis_seq", "Sequential keras.Input((None, 5)) -> GRU(return_sequences) -> Dense per step (len 9)",
         form=JSON_H5)  # fmt: skip
def _(rng):
    return seq((None, 5), layers.GRU(4, return_sequences=True), layers.Dense(2)), [normal(rng, 2, 9, 5)]


# ---------------------------------------------------------------- activations


@fixture("activation_gelu", "Dense -> Activation('gelu') (erf form, approximate=False)")
def _(rng):
    return seq((8,), layers.Dense(6), layers.Activation("gelu")), [normal(rng, 3, 8, std=2.0)]


@fixture("dense_gelu", "Dense(6, activation='gelu') (erf form)", form=JSON_NPZ)
def _(rng):
    return seq((8,), layers.Dense(6, activation="gelu")), [normal(rng, 3, 8, std=2.0)]


@fixture(
    "ops_gelu_approximate",
    "Functional with keras.ops.gelu(x, approximate=True) (tanh form): an operator node 'Gelu'",
)
def _(rng):
    inp = keras.Input((8,), name="x")
    x = layers.Dense(6)(inp)
    out = ops.gelu(x, approximate=True)
    return keras.Model(inp, out), [normal(rng, 3, 8, std=2.0)]


@fixture("activation_mish", "Dense -> Activation('mish')")
def _(rng):
    return seq((8,), layers.Dense(6), layers.Activation("mish")), [normal(rng, 3, 8, std=2.0)]


@fixture("activation_log_softmax", "Dense -> Activation('log_softmax') (last axis)", form=JSON_H5)
def _(rng):
    return seq((8,), layers.Dense(6), layers.Activation("log_softmax")), [normal(rng, 3, 8, std=2.0)]


@fixture("conv1d_log_softmax", "Conv1D(5, 3, activation='log_softmax') over channels of (N,11,5)")
def _(rng):
    return seq(SEQ, layers.Conv1D(5, 3, activation="log_softmax")), [normal(rng, 2, *SEQ)]


@fixture("softmax_axis1", "Dense on (N,11,5) -> Softmax(axis=1): over time, per feature")
def _(rng):
    return seq(SEQ, layers.Dense(4), layers.Softmax(axis=1)), [normal(rng, 2, *SEQ, std=2.0)]


@fixture("softmax_axis1_4d", "Softmax(axis=1) on a (N,7,9,3) image: over rows", form=JSON_NPZ)
def _(rng):
    return seq(IMG, layers.Softmax(axis=1)), img(rng)


@fixture("prelu_full", "Conv2D -> PReLU() (alpha per element, shape (5,7,4))")
def _(rng):
    return seq(IMG, layers.Conv2D(4, 3), layers.PReLU()), img(rng)


@fixture("prelu_shared_axes_1_2", "Conv2D -> PReLU(shared_axes=[1,2]) (alpha per channel, (1,1,4))", form=JSON_H5)
def _(rng):
    return seq(IMG, layers.Conv2D(4, 3), layers.PReLU(shared_axes=[1, 2])), img(rng)


@fixture("prelu_dense", "Dense -> PReLU on (N, 6)", form=LEGACY_WEIGHTS)
def _(rng):
    return seq((6,), layers.Dense(7), layers.PReLU()), [normal(rng, 3, 6, std=2.0)]


# ---------------------------------------------------------------- graph shapes


def residual_model():
    inp = keras.Input((8, 10, 6), name="image")
    x = layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv_a")(inp)
    x = layers.BatchNormalization(name="bn_a")(x)
    x = layers.ReLU(name="relu_a")(x)
    x = layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv_b")(x)
    x = layers.BatchNormalization(name="bn_b")(x)
    x = layers.Add(name="add")([x, inp])
    x = layers.ReLU(name="relu_out")(x)
    # A projection shortcut with stride 2, as ResNet does between stages.
    y = layers.Conv2D(5, 3, strides=2, padding="same", name="conv_c")(x)
    y = layers.BatchNormalization(name="bn_c")(y)
    s = layers.Conv2D(5, 1, strides=2, name="proj")(x)
    y = layers.Activation("relu", name="relu_c")(layers.Add(name="add_proj")([y, s]))
    out = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D(name="gap")(y))
    return keras.Model(inp, out, name="residual")


@fixture("residual_block", "Conv-BN-ReLU-Conv-BN + identity Add, ReLU; then a stride-2 block with a 1x1 projection")
def _(rng):
    return residual_model(), img(rng, shape=(8, 10, 6))


@fixture("residual_block_legacy", "The residual model as a Keras 2 style model.save('NAME.h5')", form=LEGACY_H5)
def _(rng):
    return residual_model(), img(rng, shape=(8, 10, 6))


@fixture("inception_block", "Inception block: 1x1, 1x1->3x3, 1x1->5x5, maxpool 3 same->1x1, Concatenate")
def _(rng):
    inp = keras.Input((9, 9, 4), name="image")
    b1 = layers.Conv2D(3, 1, activation="relu", name="b1")(inp)
    b3 = layers.Conv2D(2, 1, activation="relu", name="b3_reduce")(inp)
    b3 = layers.Conv2D(4, 3, padding="same", activation="relu", name="b3")(b3)
    b5 = layers.Conv2D(2, 1, activation="relu", name="b5_reduce")(inp)
    b5 = layers.Conv2D(3, 5, padding="same", activation="relu", name="b5")(b5)
    bp = layers.MaxPooling2D(3, strides=1, padding="same", name="pool")(inp)
    bp = layers.Conv2D(2, 1, activation="relu", name="pool_proj")(bp)
    x = layers.Concatenate(name="concat")([b1, b3, b5, bp])
    out = layers.Conv2D(3, 3, strides=2, name="head")(x)
    return keras.Model(inp, out, name="inception"), img(rng, shape=(9, 9, 4))


@fixture(
    "unet_small",
    "U-Net: conv, MaxPool, conv, MaxPool, bottleneck, UpSampling2D + skip Concatenate, Conv2DTranspose + "
    "skip Concatenate, 1x1 sigmoid head on 8x12x3",
)
def _(rng):
    inp = keras.Input((8, 12, 3), name="image")
    e1 = layers.Conv2D(4, 3, padding="same", activation="relu", name="enc1")(inp)
    p1 = layers.MaxPooling2D(name="pool1")(e1)
    e2 = layers.Conv2D(6, 3, padding="same", activation="relu", name="enc2")(p1)
    p2 = layers.MaxPooling2D(name="pool2")(e2)
    b = layers.Conv2D(8, 3, padding="same", activation="relu", name="bottleneck")(p2)
    u2 = layers.UpSampling2D(name="up2")(b)
    d2 = layers.Conv2D(6, 3, padding="same", activation="relu", name="dec2")(layers.Concatenate(name="skip2")([u2, e2]))
    u1 = layers.Conv2DTranspose(4, 2, strides=2, name="up1")(d2)
    d1 = layers.Conv2D(4, 3, padding="same", activation="relu", name="dec1")(layers.Concatenate(name="skip1")([u1, e1]))
    out = layers.Conv2D(2, 1, activation="sigmoid", name="mask")(d1)
    return keras.Model(inp, out, name="unet"), img(rng, shape=(8, 12, 3))


@fixture("shared_dense", "One Dense layer called on two inputs (two inbound nodes), Subtract, and both calls as outputs",
         form=JSON_H5)  # fmt: skip
def _(rng):
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    shared = layers.Dense(4, activation="tanh", name="shared")
    sa, sb = shared(a), shared(b)
    diff = layers.Subtract(name="diff")([sa, sb])
    out = layers.Dense(2, name="head")(diff)
    return keras.Model([a, b], [out, sb]), [normal(rng, 3, 6), normal(rng, 3, 6)]


@fixture("shared_conv_siamese", "Siamese: one Conv2D+GAP Sequential submodel applied to two images, Concatenate")
def _(rng):
    tower = keras.Sequential(
        [keras.Input(IMG), layers.Conv2D(4, 3, activation="relu"), layers.GlobalAveragePooling2D()], name="tower"
    )
    a, b = keras.Input(IMG, name="left"), keras.Input(IMG, name="right")
    out = layers.Dense(2, name="head")(layers.Concatenate(name="concat")([tower(a), tower(b)]))
    return keras.Model([a, b], out), [normal(rng, 2, *IMG), normal(rng, 2, *IMG)]


def nested_seq_in_functional():
    inner = keras.Sequential(
        [keras.Input((6,)), layers.Dense(5, activation="relu", name="inner_a"), layers.Dense(4, name="inner_b")],
        name="inner_seq",
    )
    inp = keras.Input((6,), name="x")
    x = inner(inp)
    out = layers.Dense(3, name="outer_head")(layers.Concatenate(name="concat")([x, inp]))
    return keras.Model(inp, out, name="outer")


@fixture("nested_sequential_in_functional", "A Sequential submodel used as a layer inside a Functional model")
def _(rng):
    return nested_seq_in_functional(), [normal(rng, 3, 6)]


@fixture("nested_sequential_in_functional_legacy", "The same nested model as a legacy model.save('NAME.h5')",
         form=LEGACY_H5)  # fmt: skip
def _(rng):
    return nested_seq_in_functional(), [normal(rng, 3, 6)]


def nested_functional_in_seq():
    i = keras.Input((7, 9, 3), name="block_in")
    a = layers.Conv2D(4, 3, padding="same", activation="relu", name="block_conv")(i)
    b = layers.Conv2D(4, 1, name="block_skip")(i)
    block = keras.Model(i, layers.Add(name="block_add")([a, b]), name="block")
    return keras.Sequential(
        [keras.Input(IMG), block, layers.GlobalMaxPooling2D(name="gmp"), layers.Dense(3, name="head")], name="outer_seq"
    )


@fixture("nested_functional_in_sequential", "A Functional residual block used as a layer inside a Sequential")
def _(rng):
    return nested_functional_in_seq(), img(rng)


@fixture("nested_functional_in_sequential_npz", "The same model as json + npz", form=JSON_NPZ)
def _(rng):
    return nested_functional_in_seq(), img(rng)


@fixture(
    "two_inputs_two_outputs",
    "Inputs [vector (N,5), image (N,7,9,3)] (image created first); outputs [regression (N,2), class softmax (N,4)] "
    "(listed in the reverse of the order their layers were made)",
)
def _(rng):
    image = keras.Input(IMG, name="image")
    vector = keras.Input((5,), name="vector")
    f = layers.GlobalAveragePooling2D(name="gap")(layers.Conv2D(4, 3, activation="relu", name="conv")(image))
    v = layers.Dense(4, activation="relu", name="vec_dense")(vector)
    joint = layers.Concatenate(name="joint")([f, v])
    cls = layers.Dense(4, activation="softmax", name="cls")(joint)
    reg = layers.Dense(2, name="reg")(joint)
    return keras.Model([vector, image], [reg, cls]), [normal(rng, 3, 5), normal(rng, 3, *IMG)]


@fixture(
    "ops_arithmetic",
    "Functional with operator nodes: keras.ops.add(a, b), a * b, x * 0.5 - 1.5, 2.0 * y, keras.ops.multiply, "
    "keras.ops.concatenate",
)
def _(rng):
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    s = ops.add(layers.Dense(6, name="da")(a), b)
    p = a * b
    q = p * 0.5 - 1.5
    r = 2.0 * s
    m = ops.multiply(r, q)
    out = layers.Dense(3, name="head")(ops.concatenate([m, s], axis=-1))
    return keras.Model([a, b], out), [normal(rng, 3, 6), normal(rng, 3, 6)]


@fixture(
    "ops_residual_conv",
    "Functional with x + conv(x) written as '+' on 4-D tensors, then keras.ops.relu and keras.ops.mean(axis=[1,2])",
    form=JSON_H5,
)
def _(rng):
    inp = keras.Input(IMG, name="image")
    x = layers.Conv2D(3, 3, padding="same", name="conv")(inp)
    x = ops.relu(inp + x)
    out = ops.mean(x, axis=[1, 2])
    return keras.Model(inp, out), img(rng)


# ---------------------------------------------------------------- files the loader must reject

BAD_FILES = []  # (stem, word, description, build)


def bad(stem, word, description):
    def register(build):
        BAD_FILES.append((stem, word, description, build))
        return build

    return register


@bad("conv1d_channels_first", "channels_first", "Conv1D with data_format='channels_first'")
def _():
    return seq((5, 11), layers.Conv1D(3, 3, data_format="channels_first"))


@bad("gru_stateful", "stateful", "GRU(stateful=True) on a fixed batch_shape")
def _():
    return keras.Sequential([keras.Input(batch_shape=(2, 11, 5)), layers.GRU(4, stateful=True)])


@bad("lambda_layer", "Lambda", "A Lambda layer wrapping a Python function (keras.ops.negative, saved by name)")
def _():
    # A named function rather than a lambda: a lambda is saved as marshalled bytecode, which
    # differs from run to run.
    return seq((6,), layers.Dense(4), layers.Lambda(ops.negative))


@bad("upsampling2d_bicubic", "bicubic", "UpSampling2D(interpolation='bicubic')")
def _():
    return seq(IMG, layers.UpSampling2D(2, interpolation="bicubic"))


@bad("ops_cumsum", "Cumsum", "An operator node keras.ops.cumsum in a Functional model")
def _():
    inp = keras.Input((6,))
    return keras.Model(inp, ops.cumsum(layers.Dense(4)(inp), axis=-1))


# ---------------------------------------------------------------- writing graph fixtures


def model_files(spec_form, name):
    if spec_form == KERAS:
        return {"model": f"{name}.keras"}
    if spec_form == LEGACY_H5:
        return {"model": f"{name}.h5"}
    weights = {JSON_H5: f"{name}.weights.h5", JSON_NPZ: f"{name}.npz", LEGACY_WEIGHTS: f"{name}.legacy.h5"}[spec_form]
    return {"model": f"{name}.json", "weights": weights}


def write_model(model, form, files):
    if form == KERAS:
        save_keras(model, OUT / files["model"])
        return
    if form == LEGACY_H5:
        model.save(OUT / files["model"])  # Keras 3 still writes the Keras 2 layout for .h5
        return
    text = json.dumps(json.loads(model.to_json()), indent=1)
    (OUT / files["model"]).write_text(text + "\n")
    path = OUT / files["weights"]
    if form == JSON_H5:
        model.save_weights(path)
    elif form == JSON_NPZ:
        savez_weights(model.get_weights(), path)
    else:
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)


def load_back(form, files):
    """Loads the written files with Keras, independently of the model object in memory."""
    model_path = OUT / files["model"]
    if form in (KERAS, LEGACY_H5):
        return keras.models.load_model(model_path, compile=False)
    model = keras.models.model_from_json(model_path.read_text())
    weights_path = OUT / files["weights"]
    if form == JSON_NPZ:
        with np.load(weights_path) as npz:
            set_weights_finalized(model, [npz[f"arr_{i}"] for i in range(len(npz.files))])
    else:  # .weights.h5 and the legacy .h5: Keras picks the reader by the file name
        model.load_weights(weights_path)
    return model


def predict(model, xs):
    out = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    return [np.asarray(o, dtype=np.float32) for o in as_list(out)]


def output_names(model):
    """Keras's name for each output: the producing layer (or operator node), with the tensor index
    when the layer has several outputs, e.g. 'lstm' and 'lstm:1'."""
    return [h[0] if h[2] == 0 else f"{h[0]}:{h[2]}" for h in output_histories(model)]


def output_histories(model):
    """[layer name, node index, tensor index] of each output as the config's output_layers gives
    it (a single output is written there as one flat triple); a Sequential's last layer."""
    if isinstance(model, keras.Sequential):
        return [[model.layers[-1].name, 0, 0]]
    outs = model.get_config()["output_layers"]
    if outs and isinstance(outs[0], str):
        outs = [outs]
    return [list(o) for o in outs]


def check_varies(name, outputs):
    for k, o in enumerate(outputs):
        std = float(o.std())
        across = float(o.reshape(o.shape[0], -1).std(axis=0).max())
        assert std > 0.05, f"{name}: output {k} std {std} is near-constant"
        assert across > 1e-3, f"{name}: output {k} does not differ between batch rows ({across})"
        assert np.all(np.isfinite(o)), f"{name}: output {k} is not finite"


SHARED_MODELS = {}  # fixture name -> (form, files, reloaded model)


def write_fixture(spec):
    keras.backend.clear_session()  # layer names restart at conv2d, dense ... for every fixture
    rng = rng_for(spec.name)
    if spec.shares:
        form, files, reloaded = SHARED_MODELS[spec.shares]
        xs = spec.build(rng, reloaded)
    else:
        model, xs = spec.build(rng)
        randomize(model, rng, spec.gain, spec.keep)
        form = spec.form
        files = model_files(form, spec.name)
        write_model(model, form, files)
        reloaded = load_back(form, files)
        SHARED_MODELS[spec.name] = (form, files, reloaded)
    xs = [x if x.dtype == np.int32 else x.astype(np.float32) for x in xs]
    assert len(xs) == len(reloaded.inputs), f"{spec.name}: {len(xs)} inputs for {len(reloaded.inputs)}"

    # Expected values come from the model as read back from disk.
    expected = predict(reloaded, xs)
    if not spec.shares:
        in_memory = predict(model, xs)
        for e, m in zip(expected, in_memory):
            diff = float(np.max(np.abs(e - m)))
            assert diff <= 1e-6 * (1 + float(np.max(np.abs(e)))), f"{spec.name}: reload differs by {diff}"
    check_varies(spec.name, expected)

    inputs = []
    for k, x in enumerate(xs):
        fname = f"{spec.name}.input{k}.npy"
        np.save(OUT / fname, x)
        kind = "ids" if x.dtype == np.int32 else "float"
        inputs.append({"file": fname, "kind": kind, "shape": list(x.shape), "name": reloaded.inputs[k].name})
    outputs = []
    names, histories = output_names(reloaded), output_histories(reloaded)
    for k, (e, oname, hist) in enumerate(zip(expected, names, histories)):
        fname = f"{spec.name}.expected{k}.npy"
        np.save(OUT / fname, e)
        outputs.append({"name": oname, "keras_history": hist, "file": fname, "shape": list(e.shape),
                        "std": round(float(e.std()), 4)})  # fmt: skip
    entry = {
        "name": spec.name,
        "description": spec.description,
        "model": files["model"],
        **({"weights": files["weights"]} if "weights" in files else {}),
        "form": LEGACY_H5 if form == LEGACY_WEIGHTS else form,
        "inputs": inputs,
        "outputs": outputs,
    }
    return entry


def write_bad(stem, word, description, build):
    keras.backend.clear_session()
    model = build()
    randomize(model, rng_for(stem))
    path = BAD / f"{stem}.keras"
    save_keras(model, path)
    config = zipfile.ZipFile(path).read("config.json").decode()
    assert word in config, f"bad/{stem}: '{word}' does not appear in its config"
    return {"file": f"bad/{stem}.keras", "word": word, "description": description}


def clean(folder, suffixes=(".keras", ".json", ".h5", ".npz", ".npy", ".gz")):
    if not folder.exists():
        return
    for p in folder.iterdir():
        if p.is_file() and p.suffix in suffixes and p.name != "manifest.json":
            p.unlink()


def run_graph(only=None):
    names = [s.name for s in FIXTURES]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"duplicate fixture names: {dupes}"
    OUT.mkdir(parents=True, exist_ok=True)
    BAD.mkdir(parents=True, exist_ok=True)
    if only is None:
        clean(OUT)
        clean(BAD)
    keras.utils.set_random_seed(0)
    entries = []
    for spec in FIXTURES:
        if only is not None and spec.name not in only and spec.shares not in only:
            continue
        entry = write_fixture(spec)
        entries.append(entry)
        print_row(entry, flush=True)
    bad_entries = [write_bad(*b) for b in BAD_FILES] if only is None else None
    if bad_entries:
        for b in bad_entries:
            print(f"bad: {b['file']:40} must mention '{b['word']}'")
    return entries, bad_entries


# ---------------------------------------------------------------- keras.applications recipes

GOLDEN = np.uint64(0x9E3779B97F4A7C15)

RECIPE_DEFINITION = """\
Weights and inputs of the "recipe" fixtures are not stored; they are computed.
splitmix64(x: u64) -> u64, all arithmetic wrapping mod 2^64:
    z = x + 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)
For an array with recipe {seed, offset, scale} and C-order flat index j (0-based, over the whole
array, batch axis included for inputs):
    u  = (splitmix64(seed + j) >> 40) as f64 / 2^24          (exact; u in [0, 1))
    v  = offset + (2*u - 1) * scale                          (IEEE f64: one multiply, one add, no FMA)
    value[j] = v rounded to f32 (round to nearest even), or for dtype int64: (v as i64) (truncation)
The weights of a recipe model are its model.weights in order (= get_weights() order, = npz arr_i order);
seed = (crc32(path) as u64) * 0x9E3779B97F4A7C15 wrapping, crc32 = zlib/IEEE CRC-32 of the UTF-8 path
(the manifest gives seed, so it need not be recomputed). offset and scale are written with at most 7
significant digits, so any correct decimal-to-f64 parse reads the same f64 Python used.
Rule that chose (offset, scale) by weight name, fan_in = product of all kernel dims but the last
(depthwise kernels: product of the window dims only), gain per model (manifest "gain", "head_gain"):
    kernel (conv, dense)  offset 0, scale sqrt(3)*gain/sqrt(fan_in)  (uniform with std gain/sqrt(fan_in));
                          the last Dense uses head_gain instead of gain
    bias                  offset 0, scale 0.1
    gamma                 offset 1, scale 0.2
    beta                  offset 0, scale 0.1
    moving_mean           offset 0, scale 0.1
    moving_variance       offset 1.25, scale 0.25   (values in [1, 1.5))
    In models with "calibrated": true the BatchNormalization moving statistics were instead fitted,
    layer by layer in model.layers order, to the recipe input: with m and v the mean and variance
    (over batch, space and channels) of the layer's input under all weights chosen so far,
    moving_mean offset m, scale 0.1*sqrt(v); moving_variance offset 1.25*v, scale 0.25*v
    (kind "moving_mean_calibrated" / "moving_variance_calibrated"). Without this, deep random
    DenseNet/EfficientNet map every input to nearly the same output.
    Normalization mean    offset 0.5, scale 0.05;  variance offset 0.08, scale 0.02;  count offset 0, scale 0 (int64)
"check" per weight: the first 4 values (as f32, in decimal) and the f64 sum of all f32 values.
"""


def splitmix64(x):
    with np.errstate(over="ignore"):
        z = x + GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def recipe_values(seed, offset, scale, shape, dtype="float32"):
    n = int(np.prod(shape)) if len(shape) else 1
    with np.errstate(over="ignore"):
        x = np.uint64(seed) + np.arange(n, dtype=np.uint64)
    u = (splitmix64(x) >> np.uint64(40)).astype(np.float64) / float(1 << 24)
    v = np.float64(offset) + (2.0 * u - 1.0) * np.float64(scale)
    if dtype == "int64":
        return v.astype(np.int64).reshape(shape)
    return v.astype(np.float32).reshape(shape)


def seed_for(path):
    with np.errstate(over="ignore"):
        return int(np.uint64(zlib.crc32(path.encode())) * GOLDEN)


def sig7(x):
    return float(f"{x:.7g}")


APP_SPECS = {
    # name: (constructor, gain, head_gain, input (offset, scale), calibrate BatchNormalization)
    "mobilenetv2": ("MobileNetV2", 1.5, 6.0, (0.0, 1.0), False),
    "resnet50": ("ResNet50", 1.2, 6.0, (0.0, 1.0), False),
    "efficientnetb0": ("EfficientNetB0", 1.0, 6.0, (127.5, 127.5), True),
    "densenet121": ("DenseNet121", 1.0, 6.0, (0.0, 1.0), True),
    "vgg16": ("VGG16", 1.4, 4.0, (0.0, 2.0), False),
}
APP_BATCH = 3


def weight_rule(v, layer_cls, gain, head_gain, is_head):
    shape = tuple(int(d) for d in v.shape)
    name = v.name
    if layer_cls == "Normalization":
        return {"mean": ("norm_mean", 0.5, 0.05), "variance": ("norm_variance", 0.08, 0.02), "count": ("count", 0, 0)}[name]
    if name == "kernel":
        fan_in = int(np.prod(shape[:-2])) if layer_cls == "DepthwiseConv2D" else int(np.prod(shape[:-1]))
        g = head_gain if is_head else gain
        return ("kernel", 0.0, sig7(np.sqrt(3.0) * g / np.sqrt(fan_in)))
    return {
        "bias": ("bias", 0.0, 0.1),
        "gamma": ("gamma", 1.0, 0.2),
        "beta": ("beta", 0.0, 0.1),
        "moving_mean": ("moving_mean", 0.0, 0.1),
        "moving_variance": ("moving_variance", 1.25, 0.25),
    }[name]


def build_app(cls_name):
    fn = getattr(keras.applications, cls_name)
    return fn(weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation="softmax")


def owner_classes(model):
    owners = {}
    for layer in model.layers:
        for w in layer.weights:
            owners[id(w)] = layer.__class__.__name__
    return owners


def app_weights(entry):
    return [recipe_values(w["seed"], w["offset"], w["scale"], w["shape"], w["dtype"]) for w in entry["weights_recipe"]]


def set_weights_finalized(model, weights):
    """model.set_weights, then what loading from a file does after it: layers with derived
    state (an adapted Normalization's mean and variance) recompute it. Keras's set_weights
    alone leaves Normalization at mean 0, variance 1, which no saved file reproduces."""
    model.set_weights(weights)
    for layer in model._flatten_layers():
        if hasattr(layer, "finalize_state") and layer.built:
            layer.finalize_state()


def write_app(name):
    cls_name, gain, head_gain, (in_off, in_scale), calibrate = APP_SPECS[name]
    keras.backend.clear_session()
    model = build_app(cls_name)
    owners = owner_classes(model)
    last_kernel = max(i for i, v in enumerate(model.weights) if v.name == "kernel")
    recipe = []
    for i, v in enumerate(model.weights):
        kind, off, scale = weight_rule(v, owners[id(v)], gain, head_gain, i == last_kernel)
        shape = [int(d) for d in v.shape]
        dtype = "int64" if "int" in str(v.dtype) else "float32"
        entry = {"path": v.path, "shape": shape, "dtype": dtype, "kind": kind, "offset": off, "scale": scale,
                 "seed": seed_for(v.path)}  # fmt: skip
        recipe.append(entry)
    set_weights_finalized(model, app_weights({"weights_recipe": recipe}))

    in_shape = [APP_BATCH, 32, 32, 3]
    in_seed = seed_for(f"input:{name}")
    x = recipe_values(in_seed, in_off, in_scale, in_shape)
    if calibrate:
        calibrate_bn(model, x, recipe)
    weights = app_weights({"weights_recipe": recipe})
    for w, arr in zip(recipe, weights):
        flat = arr.reshape(-1)
        w["check"] = {"first": [float(t) for t in flat[:4]], "sum": float(np.sum(flat.astype(np.float64)))}
    set_weights_finalized(model, weights)

    APPS.mkdir(parents=True, exist_ok=True)
    config_file = f"apps/{name}.json"
    (OUT / config_file).write_text(model.to_json() + "\n")
    reloaded = keras.models.model_from_json((OUT / config_file).read_text())
    set_weights_finalized(reloaded, app_weights({"weights_recipe": recipe}))
    (probs,) = predict(reloaded, [x])
    (mem,) = predict(model, [x])
    assert float(np.max(np.abs(probs - mem))) < 1e-6, f"{name}: reload differs"
    check_varies(name, [probs])
    # How much a relative 1e-6 change of the input moves the output: f32 rounding differences
    # between implementations must not be amplified past the test tolerance.
    noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    (moved,) = predict(reloaded, [x * (1 + 1e-6 * noise)])
    sensitivity = float(np.max(np.abs(moved - probs)))
    assert sensitivity < 1e-5, f"{name}: output too sensitive to input rounding ({sensitivity})"
    np.save(OUT / f"apps/{name}.input0.npy", x)
    np.save(OUT / f"apps/{name}.expected0.npy", probs)
    print(f"{name:16} params {model.count_params():>9}  {spread_report(probs)} 1e-6 input change -> {sensitivity:.1e}",
          flush=True)  # fmt: skip
    return {
        "name": name,
        "description": f"keras.applications.{cls_name}(weights=None, input_shape=(32,32,3), classes=10, "
        "classifier_activation='softmax') with recipe weights",
        "model": config_file,
        "form": RECIPE,
        "gain": gain,
        "head_gain": head_gain,
        "calibrated": calibrate,
        "weights_recipe": recipe,
        "inputs": [{"file": f"apps/{name}.input0.npy", "kind": "float", "shape": in_shape, "name": reloaded.inputs[0].name,
                    "recipe": {"seed": in_seed, "offset": in_off, "scale": in_scale, "dtype": "float32"}}],
        "outputs": [{"name": output_names(reloaded)[0], "keras_history": output_histories(reloaded)[0],
                     "file": f"apps/{name}.expected0.npy", "shape": list(probs.shape),
                     "std": round(float(probs.std()), 4)}],
    }  # fmt: skip


def calibrate_bn(model, x, recipe):
    """Fits each BatchNormalization's moving statistics (two scalars per layer, see
    RECIPE_DEFINITION) to its input on x, in model.layers order."""
    index = {e["path"]: i for i, e in enumerate(recipe)}
    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    probe = keras.Model(model.inputs, [layer.input for layer in bns])
    for k, layer in enumerate(bns):
        a = np.asarray(probe.predict(x, verbose=0)[k], dtype=np.float64)
        m, v = float(a.mean()), float(a.var())
        mm, mv = recipe[index[layer.moving_mean.path]], recipe[index[layer.moving_variance.path]]
        mm.update(kind="moving_mean_calibrated", offset=sig7(m), scale=sig7(0.1 * np.sqrt(v)))
        mv.update(kind="moving_variance_calibrated", offset=sig7(1.25 * v), scale=sig7(0.25 * v))
        layer.moving_mean.assign(recipe_values(mm["seed"], mm["offset"], mm["scale"], mm["shape"]))
        layer.moving_variance.assign(recipe_values(mv["seed"], mv["offset"], mv["scale"], mv["shape"]))


def spread_report(probs):
    top = probs.max(axis=1)
    arg = probs.argmax(axis=1)
    across = probs.std(axis=0).max()
    return (
        f"max p per row {np.round(top, 3).tolist()} argmax {arg.tolist()} "
        f"std {probs.std():.4f} max std across batch {across:.4f}"
    )


def run_apps(only=None):
    entries = []
    for name in APP_SPECS:
        if only is not None and name not in only:
            continue
        entries.append(write_app(name))
    return entries


def splitmix64_scalar(x):
    """RECIPE_DEFINITION's splitmix64 in plain Python ints, to check the numpy version."""
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def recipe_value_scalar(seed, offset, scale, j):
    u = (splitmix64_scalar((seed + j) & ((1 << 64) - 1)) >> 40) / float(1 << 24)
    v = offset + (2.0 * u - 1.0) * scale
    return struct.unpack("<f", struct.pack("<f", v))[0]


def check_recipes(manifest):
    """Regenerates every recipe's weights and input from the manifest alone and compares with
    the stored input, the per-weight checks and Keras's output."""
    for e in manifest["fixtures"]:
        if e["form"] != RECIPE:
            continue
        keras.backend.clear_session()
        weights = app_weights(e)
        for w, arr in zip(e["weights_recipe"], weights):
            flat = arr.reshape(-1)
            if w["dtype"] == "float32":
                n = flat.size
                for j in [0, 1, n // 2, n - 1]:
                    assert recipe_value_scalar(w["seed"], w["offset"], w["scale"], j) == float(flat[j]), w["path"]
            assert [float(t) for t in flat[:4]] == w["check"]["first"], w["path"]
            assert float(np.sum(flat.astype(np.float64))) == w["check"]["sum"], w["path"]
            assert w["seed"] == seed_for(w["path"]), w["path"]
        r = e["inputs"][0]["recipe"]
        x = recipe_values(r["seed"], r["offset"], r["scale"], e["inputs"][0]["shape"])
        assert np.array_equal(x, np.load(OUT / e["inputs"][0]["file"])), f"{e['name']}: input differs"
        model = keras.models.model_from_json((OUT / e["model"]).read_text())
        set_weights_finalized(model, weights)
        (probs,) = predict(model, [x])
        expected = np.load(OUT / e["outputs"][0]["file"])
        diff = float(np.max(np.abs(probs - expected)))
        assert diff < 1e-6, f"{e['name']}: output differs by {diff}"
        print(f"recipe {e['name']}: {len(weights)} weights regenerated, output max diff {diff:.2e}")


def check_splitmix():
    # Reference value: the first output of the splitmix64 generator seeded with 0.
    assert splitmix64_scalar(0) == 0xE220A8397B1DCDAF
    x = np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)
    assert [int(t) for t in splitmix64(x)] == [splitmix64_scalar(int(t)) for t in x]


def check_all(manifest):
    check_splitmix()
    for e in manifest["fixtures"]:
        if e["form"] == RECIPE:
            continue
        keras.backend.clear_session()
        files = {"model": e["model"], **({"weights": e["weights"]} if "weights" in e else {})}
        form = e["form"]
        if form == LEGACY_H5 and "weights" in e:
            form = LEGACY_WEIGHTS
        model = load_back(form, files)
        xs = [np.load(OUT / i["file"]) for i in e["inputs"]]
        got = predict(model, xs)
        for o, g in zip(e["outputs"], got):
            exp = np.load(OUT / o["file"])
            assert exp.shape == g.shape, e["name"]
            diff = float(np.max(np.abs(exp - g)))
            assert diff <= 1e-6 * (1 + float(np.max(np.abs(exp)))), f"{e['name']}: {o['name']} differs by {diff}"
    print(f"reloaded {sum(e['form'] != RECIPE for e in manifest['fixtures'])} fixtures: outputs match")
    for b in manifest["bad"]:
        assert (OUT / b["file"]).exists(), b["file"]
    check_recipes(manifest)


# ---------------------------------------------------------------- manifest and summary


def print_row(e, flush=False):
    ins = " ".join(("i" if i["kind"] == "ids" else "f") + str(tuple(i["shape"])).replace(" ", "") for i in e["inputs"])
    outs = " ".join(str(tuple(o["shape"])).replace(" ", "") for o in e["outputs"])
    stds = " ".join(f"{o['std']:.3f}" for o in e["outputs"])
    print(f"{e['name']:40} {e['form']:9} {ins:34} {outs:28} {stds}", flush=flush)


def read_manifest():
    path = OUT / "manifest.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"fixtures": [], "bad": []}


def write_manifest(graph_entries, bad_entries, app_entries):
    old = read_manifest()
    old_graph = [e for e in old["fixtures"] if e["form"] != RECIPE]
    old_apps = [e for e in old["fixtures"] if e["form"] == RECIPE]
    if graph_entries is not None:
        by_name = {e["name"]: e for e in graph_entries}
        if len(graph_entries) < len([s for s in FIXTURES]):  # a partial run: replace just those
            graph_entries = [by_name.get(e["name"], e) for e in old_graph] + [
                e for e in graph_entries if e["name"] not in {o["name"] for o in old_graph}
            ]
    else:
        graph_entries = old_graph
    if app_entries is not None:
        names = {e["name"] for e in app_entries}
        app_entries = [e for e in old_apps if e["name"] not in names] + app_entries
        order = list(APP_SPECS)
        app_entries.sort(key=lambda e: order.index(e["name"]))
    else:
        app_entries = old_apps
    manifest = {
        "generated_by": "tools/graph_fixtures.py",
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "tolerance": "|got - expected| <= 1e-4 * (1 + |expected|)",
        "forms": {
            "keras": "model is a Keras 3 .keras zip",
            "json_h5": "model is model.to_json(), weights a Keras 3 .weights.h5",
            "json_npz": "model is model.to_json(), weights np.savez(*model.get_weights()) (arr_0, arr_1, ...)",
            "legacy_h5": "model is a Keras 2 layout .h5 (attrs model_config, group model_weights), or model is "
            "model.to_json() and weights a Keras 2 layout save_weights .legacy.h5 (root attr layer_names)",
            "recipe": "model is model.to_json() under apps/; weights computed from weights_recipe",
        },
        "recipe_definition": RECIPE_DEFINITION,
        "fixtures": graph_entries + app_entries,
        "bad": bad_entries if bad_entries is not None else old.get("bad", []),
    }
    (OUT / "manifest.json").write_text(manifest_text(manifest))
    return manifest


def manifest_text(manifest):
    """indent=1 JSON, except that each weights_recipe item stays on one line."""
    recipes = {}
    for e in manifest["fixtures"]:
        if "weights_recipe" in e:
            key = f"@@recipe:{e['name']}@@"
            recipes[key] = e["weights_recipe"]
    shallow = {**manifest, "fixtures": [
        {**e, "weights_recipe": f"@@recipe:{e['name']}@@"} if "weights_recipe" in e else e for e in manifest["fixtures"]
    ]}  # fmt: skip
    text = json.dumps(shallow, indent=1)
    for key, items in recipes.items():
        body = "[\n" + ",\n".join("  " + json.dumps(w) for w in items) + "\n  ]"
        text = text.replace(json.dumps(key), body)
    assert json.loads(text) == manifest
    return text + "\n"


def summary(manifest):
    print(f"{'fixture':40} {'form':9} {'inputs':34} {'outputs':28} std")
    for e in manifest["fixtures"]:
        print_row(e)
    for b in manifest["bad"]:
        print(f"bad: {b['file']:40} must mention '{b['word']}'")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    apps = sum(p.stat().st_size for p in APPS.rglob("*") if p.is_file()) if APPS.exists() else 0
    forms = {}
    for e in manifest["fixtures"]:
        forms[e["form"]] = forms.get(e["form"], 0) + 1
    print(f"{len(manifest['fixtures'])} fixtures {forms}, {len(manifest['bad'])} bad files, "
          f"{total / 1e6:.2f} MB in {OUT.relative_to(ROOT)} ({apps / 1e6:.2f} MB of it in apps/)")  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["all", "graph", "apps"], default="all")
    ap.add_argument("--only", nargs="*", help="regenerate just these fixtures (no cleaning)")
    ap.add_argument("--list", action="store_true", help="print the summary of the written manifest")
    ap.add_argument("--check", action="store_true", help="reload every fixture and regenerate the recipes")
    args = ap.parse_args()
    if args.list:
        summary(read_manifest())
        return 0
    if args.check:
        check_all(read_manifest())
        return 0
    only = set(args.only) if args.only else None
    graph_entries = bad_entries = app_entries = None
    if args.part in ("all", "graph"):
        graph_entries, bad_entries = run_graph(only)
    if args.part in ("all", "apps"):
        app_entries = run_apps(only)
    manifest = write_manifest(graph_entries, bad_entries, app_entries)
    summary(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
