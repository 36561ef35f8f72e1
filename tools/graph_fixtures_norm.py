#!/usr/bin/env python3
"""Keras reference fixtures for the normalization and activation family (tests/graph_norm.rs).

Run from the repository root:

    TF_ENABLE_ONEDNN_OPTS=0 /work/main/.venv-keras/bin/python tools/graph_fixtures_norm.py

Writes tests/fixtures/graph/norm/: per fixture NAME the model (NAME.keras, or NAME.json with
NAME.weights.h5 or NAME.npz = np.savez(*model.get_weights())), NAME.input0.npy and
NAME.expected0.npy (Keras's predict), and manifest.json in the format of
tests/fixtures/graph/manifest.json. Files the loader must reject are listed under "bad" with a
word their error must contain. Weights are drawn from a generator seeded by the fixture's name.
"""

import json
import os
import sys
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "graph" / "norm"
FIXTURES = []
BAD = []


def fixture(name, description, form="keras"):
    def register(build):
        FIXTURES.append((name, description, form, build))
        return build

    return register


def randomize(model, rng):
    """Weights with real scale: kernels ~ N(0, 1/fan_in), statistics away from their defaults."""
    for layer in model.layers:
        new = []
        for w in layer.weights:
            shape = tuple(w.shape)
            name = w.path.split("/")[-1]
            if "int" in str(w.dtype):
                new.append(np.asarray(w.numpy()))
                continue
            if name == "kernel":
                fan_in = int(np.prod(shape[:-1])) or 1
                v = rng.normal(0, 1.0 / np.sqrt(fan_in), shape)
            elif name in ("gamma", "scale"):
                v = rng.uniform(0.6, 1.4, shape)
            elif name in ("beta", "bias"):
                v = rng.normal(0, 0.2, shape)
            elif name in ("moving_mean", "renorm_mean"):
                v = rng.normal(0, 0.4, shape)
            elif name in ("moving_variance",):
                v = rng.uniform(0.3, 2.0, shape)
            elif name in ("moving_stddev", "renorm_stddev"):
                v = rng.uniform(0.5, 1.5, shape)
            elif name == "alpha":
                v = rng.uniform(-0.5, 0.9, shape)
            elif name in ("mean", "variance", "count"):
                new.append(np.asarray(w.numpy()))
                continue
            else:
                raise ValueError(f"no rule for weight {w.path}")
            new.append(v.astype(np.float32))
        if new:
            layer.set_weights(new)


def seq(input_shape, *stack):
    return keras.Sequential([keras.Input(shape=input_shape)] + list(stack))


# ---------------------------------------------------------------- BatchNormalization
@fixture("bn_conv_last", "Conv2D(5, 3, same, linear) -> BatchNormalization(axis=-1) on 7x9x3: foldable")
def _(rng):
    return seq((7, 9, 3), layers.Conv2D(5, 3, padding="same"), layers.BatchNormalization()), (3, 7, 9, 3)


@fixture("bn_axis1_4d", "BatchNormalization(axis=1) on (N,7,9,3): per row index", "json_h5")
def _(rng):
    return seq((7, 9, 3), layers.BatchNormalization(axis=1)), (3, 7, 9, 3)


@fixture("bn_axis_neg2", "BatchNormalization(axis=-2, epsilon=0.01) on (N,6,7,5): per column", "json_npz")
def _(rng):
    return seq((6, 7, 5), layers.BatchNormalization(axis=-2, epsilon=0.01)), (2, 6, 7, 5)


@fixture("bn_dense_no_center_no_scale", "Dense(6) -> BatchNormalization(center=False, scale=False, epsilon=1e-2): only moving stats; foldable")
def _(rng):
    return seq((9,), layers.Dense(6), layers.BatchNormalization(center=False, scale=False, epsilon=1e-2)), (3, 9)


@fixture("bn_no_center", "Dense(5, relu) -> BatchNormalization(center=False): gamma, no beta; not foldable (relu)", "json_h5")
def _(rng):
    return seq((9,), layers.Dense(5, activation="relu"), layers.BatchNormalization(center=False)), (3, 9)


@fixture("bn_no_scale_axis2", "BatchNormalization(scale=False, epsilon=1e-2, axis=2) on (N,4,6,5): beta, no gamma", "json_npz")
def _(rng):
    return seq((4, 6, 5), layers.BatchNormalization(scale=False, epsilon=1e-2, axis=2)), (2, 4, 6, 5)


@fixture("bn_renorm_synchronized", "Conv2D(6, 2) -> BatchNormalization(renorm=True, synchronized=True): 7 weights, inference uses moving stats")
def _(rng):
    return seq((5, 6, 3), layers.Conv2D(6, 2), layers.BatchNormalization(renorm=True, synchronized=True)), (2, 5, 6, 3)


@fixture("bn_dense_3d", "Dense(7) on (N,4,6) -> BatchNormalization(): foldable Dense on a rank-3 input", "json_h5")
def _(rng):
    return seq((4, 6), layers.Dense(7), layers.BatchNormalization()), (3, 4, 6)


@fixture("bn_conv_also_output", "Functional: Conv2D(5) is an output and feeds BatchNormalization (not foldable); two outputs")
def _(rng):
    x = keras.Input(shape=(6, 5, 3))
    c = layers.Conv2D(5, 3, padding="same")(x)
    b = layers.BatchNormalization()(c)
    return keras.Model(x, [b, c]), (2, 6, 5, 3)


# ---------------------------------------------------------------- LayerNormalization & RMS
@fixture("ln_last", "Dense(5) -> LayerNormalization(axis=-1) on (N,11,5)")
def _(rng):
    return seq((11, 4), layers.Dense(5), layers.LayerNormalization()), (3, 11, 4)


@fixture("ln_axes_1_2", "LayerNormalization(axis=[1,2]) on (N,7,9,3): gamma/beta (7,9)", "json_h5")
def _(rng):
    return seq((7, 9, 3), layers.LayerNormalization(axis=[1, 2])), (2, 7, 9, 3)


@fixture("ln_axes_neg", "LayerNormalization(axis=[-2,-1], epsilon=1e-5) on (N,7,9,3): gamma/beta (9,3)", "json_npz")
def _(rng):
    return seq((7, 9, 3), layers.LayerNormalization(axis=[-2, -1], epsilon=1e-5)), (2, 7, 9, 3)


@fixture("ln_axis1_3d", "LayerNormalization(axis=1) on (N,6,5): over time, per feature (strided)")
def _(rng):
    return seq((6, 5), layers.LayerNormalization(axis=1)), (3, 6, 5)


@fixture("ln_no_center_no_scale_eps", "LayerNormalization(center=False, scale=False, epsilon=1e-2): no weights")
def _(rng):
    return seq((13,), layers.LayerNormalization(center=False, scale=False, epsilon=1e-2)), (3, 13)


@fixture("ln_scale_only", "LayerNormalization(center=False) on (N,4,7)", "json_h5")
def _(rng):
    return seq((4, 7), layers.LayerNormalization(center=False)), (2, 4, 7)


@fixture("ln_rms_scaling", "LayerNormalization(rms_scaling=True): x*rsqrt(var+eps)*gamma, no beta", "json_npz")
def _(rng):
    return seq((4, 6), layers.LayerNormalization(rms_scaling=True)), (3, 4, 6)


@fixture("rms_norm", "RMSNormalization(axis=-1): x*rsqrt(mean(x^2)+eps)*scale")
def _(rng):
    return seq((5, 7), layers.RMSNormalization()), (3, 5, 7)


@fixture("rms_norm_axes", "RMSNormalization(axis=[2,3], epsilon=1e-3) on (N,3,4,5) (Keras broadcasts a multi-axis scale only when the axes end the shape)", "json_h5")
def _(rng):
    return seq((3, 4, 5), layers.RMSNormalization(axis=[2, 3], epsilon=1e-3)), (2, 3, 4, 5)


@fixture("gn_groups2_conv", "Conv2D(6, 3) -> GroupNormalization(groups=2) on 5x6x3")
def _(rng):
    return seq((5, 6, 3), layers.Conv2D(6, 3, padding="same"), layers.GroupNormalization(groups=2)), (3, 5, 6, 3)


@fixture("gn_instance_eps", "GroupNormalization(groups=-1, epsilon=1e-2) on (N,7,3): one group per channel", "json_h5")
def _(rng):
    return seq((7, 3), layers.GroupNormalization(groups=-1, epsilon=1e-2)), (3, 7, 3)


@fixture("gn_one_group_bare", "GroupNormalization(groups=1, center=False, scale=False) on (N,4,5,4): no weights", "json_npz")
def _(rng):
    return seq((4, 5, 4), layers.GroupNormalization(groups=1, center=False, scale=False)), (2, 4, 5, 4)


@fixture("gn_dense_groups3", "Dense(9) -> GroupNormalization(groups=3, center=False) on (N, 9)")
def _(rng):
    return seq((6,), layers.Dense(9), layers.GroupNormalization(groups=3, center=False)), (3, 6)


@fixture("unit_norm_last", "Dense(6) -> UnitNormalization(axis=-1) on (N,4,5)", "json_h5")
def _(rng):
    return seq((4, 5), layers.Dense(6), layers.UnitNormalization()), (3, 4, 5)


@fixture("unit_norm_axes", "UnitNormalization(axis=[1,2]) on (N,3,4,5)")
def _(rng):
    return seq((3, 4, 5), layers.UnitNormalization(axis=[1, 2])), (2, 3, 4, 5)


# ---------------------------------------------------------------- Normalization
def adapted(rng, shape, **kw):
    layer = layers.Normalization(**kw)
    data = rng.normal(1.5, 2.0, (64,) + shape).astype(np.float32)
    layer.adapt(data)
    return layer


@fixture("normalization_adapt", "Normalization(axis=-1) adapted: mean, variance, count weights")
def _(rng):
    return seq((4, 5), adapted(rng, (4, 5))), (3, 4, 5)


@fixture("normalization_adapt_axes_1_3", "Normalization(axis=(1,3)) adapted on (N,3,4,5): kept axes not neighbours", "json_h5")
def _(rng):
    return seq((3, 4, 5), adapted(rng, (3, 4, 5), axis=(1, 3))), (2, 3, 4, 5)


@fixture("normalization_explicit", "Normalization(mean=[...], variance=[...]) per channel, config only", "json_h5")
def _(rng):
    return seq((6, 3), layers.Normalization(mean=[0.5, -1.0, 2.0], variance=[4.0, 0.25, 1e-16])), (3, 6, 3)


@fixture("normalization_explicit_invert", "Normalization(mean, variance, invert=True): mean + x*sd", "json_npz")
def _(rng):
    return seq((3,), layers.Normalization(mean=[0.5, -1.0, 2.0], variance=[4.0, 0.25, 9.0], invert=True)), (3, 3)


@fixture("normalization_scalar", "Normalization(axis=None, mean=2.0, variance=9.0)")
def _(rng):
    return seq((4, 3), layers.Normalization(axis=None, mean=2.0, variance=9.0)), (3, 4, 3)


@fixture("normalization_explicit_lower_rank", "Normalization(axis=(1,2), mean shaped (3,)): aligned to the last kept axis", "json_h5")
def _(rng):
    return seq((4, 3), layers.Normalization(axis=(1, 2), mean=[1.0, 2.0, 3.0], variance=[1.0, 4.0, 0.5])), (2, 4, 3)


# ---------------------------------------------------------------- PReLU
@fixture("prelu_full", "Conv2D(4, 3) -> PReLU(): alpha per element (5,7,4)")
def _(rng):
    return seq((7, 9, 3), layers.Conv2D(4, 3), layers.PReLU()), (3, 7, 9, 3)


@fixture("prelu_shared_1_2", "Conv2D(5, 1) -> PReLU(shared_axes=[1,2]): alpha (1,1,5)", "json_h5")
def _(rng):
    return seq((4, 6, 3), layers.Conv2D(5, 1), layers.PReLU(shared_axes=[1, 2])), (2, 4, 6, 3)


@fixture("prelu_shared_2", "PReLU(shared_axes=[2]) on (N,4,6,3): alpha (4,1,3)", "json_npz")
def _(rng):
    return seq((4, 6, 3), layers.PReLU(shared_axes=[2])), (2, 4, 6, 3)


@fixture("prelu_dense", "Dense(7) -> PReLU on (N, 6)", "json_h5")
def _(rng):
    return seq((6,), layers.Dense(7), layers.PReLU()), (3, 6)


# ---------------------------------------------------------------- activations
ACTIVATIONS = [
    "gelu", "mish", "celu", "hard_silu", "hard_swish", "hard_tanh", "hard_shrink", "soft_shrink",
    "tanh_shrink", "sparse_plus", "sparse_sigmoid", "squareplus", "log_sigmoid", "log_softmax",
    "softmax", "relu6", "silu", "swish", "elu", "selu", "softplus", "softsign", "leaky_relu",
    "hard_sigmoid", "exponential", "linear", "sigmoid", "tanh", "relu",
]

for _name in ACTIVATIONS:
    def _build(rng, name=_name):
        return seq((9,), layers.Dense(11), layers.Activation(name)), (4, 9)

    fixture(f"act_{_name}", f"Dense(11) -> Activation('{_name}') on inputs spread over [-6, 6]",
            "json_h5" if len(FIXTURES) % 2 else "keras")(_build)


@fixture("dense_gelu", "Dense(6, activation='gelu') (erf form)", "json_npz")
def _(rng):
    return seq((8,), layers.Dense(6, activation="gelu")), (3, 8)


@fixture("conv2d_log_softmax", "Conv2D(6, 3, activation='log_softmax') over channels of 6x7x3")
def _(rng):
    return seq((6, 7, 3), layers.Conv2D(6, 3, activation="log_softmax")), (2, 6, 7, 3)


@fixture("dense_mish_3d", "Dense(5, activation='mish') on (N,3,4)", "json_h5")
def _(rng):
    return seq((3, 4), layers.Dense(5, activation="mish")), (2, 3, 4)


@fixture("ops_gelu_approximate", "Functional keras.ops.gelu(x, approximate=True) (tanh form): operator node 'Gelu'")
def _(rng):
    x = keras.Input(shape=(8,))
    return keras.Model(x, ops.gelu(layers.Dense(6)(x), approximate=True)), (3, 8)


@fixture("ops_gelu_exact", "Functional keras.ops.gelu(x, approximate=False): operator node 'Gelu'", "json_h5")
def _(rng):
    x = keras.Input(shape=(8,))
    return keras.Model(x, ops.gelu(layers.Dense(6)(x), approximate=False)), (3, 8)


# ---------------------------------------------------------------- Softmax layer
@fixture("softmax_axis1_3d", "Dense(5) on (N,11,4) -> Softmax(axis=1): over time, per feature")
def _(rng):
    return seq((11, 4), layers.Dense(5), layers.Softmax(axis=1)), (3, 11, 4)


@fixture("softmax_axis_neg3_4d", "Softmax(axis=-3) on (N,7,9,3): over rows", "json_npz")
def _(rng):
    return seq((7, 9, 3), layers.Softmax(axis=-3)), (2, 7, 9, 3)


@fixture("softmax_axes_1_2", "Softmax(axis=(1,2)) on (N,4,5,3): jointly over rows and columns", "json_h5")
def _(rng):
    return seq((4, 5, 3), layers.Softmax(axis=(1, 2))), (2, 4, 5, 3)


@fixture("softmax_last", "Softmax() on (N,6,7)")
def _(rng):
    return seq((6, 7), layers.Softmax()), (3, 6, 7)


# ---------------------------------------------------------------- files to reject
def bad(name, word, description, model):
    BAD.append({"file": f"{name}.keras", "word": word, "description": description})
    model.save(OUT / f"{name}.keras")


def write_bad():
    bad("bad_glu", "glu", "Activation('glu') halves an axis: unknown to wgnn",
        seq((8,), layers.Activation("glu")))
    bad("bad_ln_axes_gap", "contiguous", "LayerNormalization(axis=[1,3]): axes not neighbours",
        seq((3, 4, 5), layers.LayerNormalization(axis=[1, 3])))
    x = keras.Input(shape=(6,), dtype="int32")
    e = layers.Embedding(10, 4, mask_zero=True)(x)
    bad("bad_softmax_masked", "mask", "Softmax reached by an Embedding mask",
        keras.Model(x, layers.Softmax(axis=1)(e)))
    bad("bad_sparsemax", "sparsemax", "Activation('sparsemax') sorts: unknown to wgnn",
        seq((8,), layers.Activation("sparsemax")))


def keras2_bn_axis_list():
    """BatchNormalization(axis=[1, 2]) as Keras 2 wrote it: weights in broadcast form over the
    whole input (1, 3, 4, 1). Keras 3 takes only an int axis, so the expected output is
    tf.nn.batch_normalization's formula in float32 (x * inv + (beta - mean * inv))."""
    name = "bn_keras2_axis_list"
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    model = seq((3, 4, 5), layers.BatchNormalization(axis=2))
    config = json.loads(model.to_json())
    config["config"]["layers"][-1]["config"]["axis"] = [1, 2]
    shape = (1, 3, 4, 1)
    gamma = rng.uniform(0.6, 1.4, shape).astype(np.float32)
    beta = rng.normal(0, 0.2, shape).astype(np.float32)
    mean = rng.normal(0, 0.4, shape).astype(np.float32)
    var = rng.uniform(0.3, 2.0, shape).astype(np.float32)
    x = rng.normal(0, 2.0, (2, 3, 4, 5)).astype(np.float32)
    inv = (np.float32(1) / np.sqrt(var + np.float32(1e-3))) * gamma
    y = (x * inv + (beta - mean * inv)).astype(np.float32)
    (OUT / f"{name}.json").write_text(json.dumps(config))
    np.savez(OUT / f"{name}.npz", gamma, beta, mean, var)
    np.save(OUT / f"{name}.input0.npy", x)
    np.save(OUT / f"{name}.expected0.npy", y)
    return {
        "name": name,
        "description": keras2_bn_axis_list.__doc__.split(".")[0] + " (expected from the formula)",
        "model": f"{name}.json", "weights": f"{name}.npz", "form": "json_npz",
        "inputs": [{"file": f"{name}.input0.npy", "kind": "float", "shape": list(x.shape)}],
        "outputs": [{"name": "batch_normalization", "file": f"{name}.expected0.npy",
                     "shape": list(y.shape), "std": round(float(y.std()), 4)}],
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {
        "generated_by": "tools/graph_fixtures_norm.py",
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "tolerance": "|got - expected| <= 1e-4 * (1 + |expected|)",
        "fixtures": [],
        "bad": [],
    }
    for name, description, form, build in FIXTURES:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        model, in_shape = build(rng)
        randomize(model, rng)
        x = rng.normal(0, 2.0, in_shape).astype(np.float32)
        if name.startswith("act_"):
            x = rng.uniform(-6, 6, in_shape).astype(np.float32)
        ys = model.predict(x, verbose=0)
        ys = ys if isinstance(ys, list) else [ys]
        entry = {"name": name, "description": description, "form": form}
        if form == "keras":
            model.save(OUT / f"{name}.keras")
            entry["model"] = f"{name}.keras"
        else:
            (OUT / f"{name}.json").write_text(model.to_json())
            entry["model"] = f"{name}.json"
            if form == "json_h5":
                model.save_weights(OUT / f"{name}.weights.h5")
                entry["weights"] = f"{name}.weights.h5"
            else:
                np.savez(OUT / f"{name}.npz", *model.get_weights())
                entry["weights"] = f"{name}.npz"
        np.save(OUT / f"{name}.input0.npy", x)
        entry["inputs"] = [{"file": f"{name}.input0.npy", "kind": "float", "shape": list(x.shape)}]
        entry["outputs"] = []
        for k, y in enumerate(ys):
            y = np.asarray(y, dtype=np.float32)
            std = float(y.std())
            spread = float(np.abs(y - y[:1]).max()) if y.shape[0] > 1 else 1.0
            if name != "act_linear" and (std <= 0.05 or spread <= 0.05):
                raise SystemExit(f"{name}: output {k} hardly varies (std {std}, batch spread {spread})")
            np.save(OUT / f"{name}.expected{k}.npy", y)
            out_name = model.output_names[k] if hasattr(model, "output_names") else f"output{k}"
            entry["outputs"].append({"name": out_name, "file": f"{name}.expected{k}.npy",
                                     "shape": list(y.shape), "std": round(std, 4)})
        manifest["fixtures"].append(entry)
        print(f"{name:40s} {form:9s} {[list(np.shape(y)) for y in ys]}")
    manifest["fixtures"].append(keras2_bn_axis_list())
    write_bad()
    manifest["bad"] = BAD
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
