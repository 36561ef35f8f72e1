#!/usr/bin/env python3
"""Keras reference fixtures for what a model config says about training (tests/train_config.rs):
regularizers, trainable flags, compile configs and the initializers of a model with no weights.

Run from the repository root:

    TF_ENABLE_ONEDNN_OPTS=0 /work/main/.venv-keras/bin/python tools/train_config_fixtures.py

Writes tests/fixtures/train_config/ and its manifest.json:

- "penalties": models with every regularizer kind and placement (weights set to random values
  so that every penalty is non-trivial) and their inputs: Keras's `model.losses` after calling
  the model on the inputs, split into the activity penalties of each layer (in call order) and
  the weight penalties of each trainable variable; the trainable and non-trainable weight lists
  (path, shape) in Keras's order; the compile config.
- "compile": one tiny compiled model per Keras optimizer (with a different loss and metrics
  each; the first a whole .keras, the others without their weights file):
  `model.get_compile_config()` as Keras serializes it; model JSONs of an uncompiled and a
  compiled model.
- "init": model configs with no weights (a model JSON, a .keras whose model.weights.h5 was
  removed). For every weight in Keras's order: its path, shape, Keras's compute_fans, and the
  mean, std, min and max of the values Keras initializes it with, pooled over POOL fresh builds;
  "bounded" says the initializer has hard bounds (uniform, truncated or constant), so the
  extremes are comparable; "draws" is how many independent builds the statistics pool (1 for a
  seeded initializer, which draws the same values in every build); "deterministic" says every
  build gave the same values (constants, the identity, seeded initializers).
- "bad": real Keras configs wgnn must refuse, with a word the error must contain.
"""

import json
import os
import zipfile
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers, regularizers  # noqa: E402
from keras.src.initializers.random_initializers import compute_fans  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "train_config"
# Fresh Keras builds pooled for the initializer statistics.
POOL = 16


def randomize(model, rng):
    """Every float weight to a random value of a real scale (variances positive)."""
    for w in model.weights:
        if "int" in str(w.dtype):
            continue
        shape = tuple(w.shape)
        name = w.path.split("/")[-1]
        if name == "moving_variance":
            v = rng.uniform(0.3, 2.0, shape)
        else:
            v = rng.normal(0, 0.5, shape)
        w.assign(v.astype(np.float32))


def weight_list(ws):
    return [{"path": w.path, "shape": list(w.shape)} for w in ws]


def penalties(model, inputs):
    """Keras's losses after a call on `inputs`: activity penalties per layer, weight penalties
    per trainable variable, and their total, checked against sum(model.losses)."""
    model(inputs)
    activity = []
    for layer in model._flatten_layers(include_self=False):
        own = [float(x) for x in layer._get_own_losses()]
        if own:
            activity.append({"layer": layer.name, "values": own})
    weights = [
        {"path": v.path, "value": float(v.regularizer(v))}
        for v in model.trainable_weights
        if v.regularizer is not None
    ]
    total = float(sum(float(x) for x in model.losses))
    parts = sum(sum(a["values"]) for a in activity) + sum(w["value"] for w in weights)
    assert abs(total - parts) <= 1e-5 * (1 + abs(total)), (total, parts)
    return {"activity": activity, "weights": weights, "total": total}


def save_without_weights(model, path):
    """A real .keras file with its model.weights.h5 taken out."""
    full = path.with_suffix(".full.keras")
    model.save(full)
    with zipfile.ZipFile(full) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename != "model.weights.h5":
                dst.writestr(item, src.read(item.filename))
    full.unlink()


def save_inputs(name, inputs):
    files = []
    for i, x in enumerate(inputs):
        f = f"{name}.input{i}.npy"
        np.save(OUT / f, x)
        files.append(f)
    return files


# ------------------------------------------------------------------------- penalties

def every_regularizer():
    """Every regularizer class on every weight kind Keras regularizes, activity regularizers on
    single and multi-call layers, a frozen layer whose weight penalty Keras does not count, and
    a TimeDistributed layer whose inner activity regularizer Keras does not apply."""
    L1, L2, L1L2 = regularizers.L1, regularizers.L2, regularizers.L1L2
    img = keras.Input((8, 8, 3), name="img")
    x = layers.Conv2D(4, 3, kernel_regularizer=L1L2(0.01, 0.02), bias_regularizer="l2",
                      activity_regularizer=L1(0.001), name="conv")(img)
    x = layers.DepthwiseConv2D(3, padding="same", depthwise_regularizer=L2(0.03),
                               bias_regularizer=L1(0.02), name="dw")(x)
    x = layers.SeparableConv2D(6, 3, depthwise_regularizer=L1(0.01),
                               pointwise_regularizer=L2(0.02),
                               bias_regularizer=L1L2(l1=0.03, l2=0.04), name="sep")(x)
    x = layers.BatchNormalization(gamma_regularizer=L2(0.05), beta_regularizer=L1(0.05),
                                  name="bn")(x)
    x = layers.PReLU(alpha_regularizer=L1(0.1), name="prelu")(x)
    x = layers.Conv2DTranspose(3, 2, strides=2, kernel_regularizer="l1", name="deconv")(x)
    x = layers.GroupNormalization(groups=3, gamma_regularizer=L1(0.02),
                                  beta_regularizer=L2(0.03), name="gn")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(8, kernel_regularizer=L2(0.01), bias_regularizer=L1(0.01),
                     activity_regularizer=L1L2(0.01, 0.01), name="img_dense")(x)
    x = layers.Dense(8, trainable=False, kernel_regularizer=L2(1.0),
                     activity_regularizer=L2(0.01), name="frozen_dense")(x)

    tok = keras.Input((6,), dtype="int32", name="tok")
    s = layers.Embedding(20, 8, embeddings_regularizer=L2(0.01), activity_regularizer="l1",
                         name="emb")(tok)
    s = layers.LSTM(5, return_sequences=True, kernel_regularizer=L1(0.01),
                    recurrent_regularizer=L2(0.02), bias_regularizer=L1L2(0.01, 0.01),
                    activity_regularizer=L2(0.01), name="lstm")(s)
    s = layers.TimeDistributed(layers.Dense(3, kernel_regularizer=L1(0.05),
                                            activity_regularizer=L1(1.0), name="td_dense"),
                               name="td")(s)
    s = layers.ActivityRegularization(l1=0.01, l2=0.02, name="act_reg")(s)
    s = layers.SimpleRNN(4, return_sequences=True, kernel_regularizer=L2(0.02),
                         recurrent_regularizer=L1(0.03), bias_regularizer=L2(0.04),
                         name="rnn")(s)
    s = layers.Bidirectional(layers.GRU(4, kernel_regularizer=L2(0.01),
                                        recurrent_regularizer=L1(0.02),
                                        bias_regularizer=L2(0.03), name="gru"),
                             name="bigru")(s)
    s = layers.LayerNormalization(gamma_regularizer=L1(0.01), beta_regularizer=L2(0.02),
                                  name="ln")(s)
    shared = layers.Dense(8, kernel_regularizer=L2(0.1), bias_regularizer=L1(0.1),
                          activity_regularizer=L1L2(0.01, 0.02), name="shared")
    a, b = shared(x), shared(s)
    y = layers.Concatenate(name="cat")([a, b])
    y = layers.Dense(2, name="out")(y)
    model = keras.Model([img, tok], y, name="every_regularizer")
    rng = np.random.default_rng(1)
    inputs = [rng.normal(0, 1, (2, 8, 8, 3)).astype(np.float32),
              rng.integers(0, 20, (2, 6)).astype(np.int32)]
    return model, inputs, dict(optimizer=keras.optimizers.Adam(1e-3), loss="mse")


def frozen_nested():
    """A frozen nested Sequential (its layers' regularizers not counted), a trainable nested
    Functional model with one frozen layer inside, a frozen top-level BatchNormalization."""
    tower = keras.Sequential([
        keras.Input((6,)),
        layers.Dense(5, kernel_regularizer=regularizers.L2(0.5), name="tower_dense"),
        layers.BatchNormalization(gamma_regularizer=regularizers.L1(0.5), name="tower_bn"),
    ], name="tower")
    tower.trainable = False
    hin = keras.Input((5,))
    h = layers.Dense(4, kernel_regularizer=regularizers.L1(0.2), name="head_dense")(hin)
    h = layers.Dense(3, trainable=False, bias_regularizer=regularizers.L2(0.3),
                     name="head_frozen")(h)
    h = layers.Dense(2, kernel_regularizer=regularizers.L1L2(0.1, 0.1), name="head_out")(h)
    head = keras.Model(hin, h, name="head")
    inp = keras.Input((6,), name="x")
    x = layers.BatchNormalization(trainable=False, name="top_bn")(inp)
    x = tower(x)
    y = head(x)
    model = keras.Model(inp, y, name="frozen_nested")
    rng = np.random.default_rng(2)
    inputs = [rng.normal(0, 1, (3, 6)).astype(np.float32)]
    return model, inputs, dict(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                               loss="mae", metrics=["mae"])


def frozen_model():
    """A whole model saved frozen: every weight non-trainable, so no weight penalty counts; its
    activity penalty still does."""
    # Named explicitly, so that Keras's name counters (in the other fixtures' files) stay put.
    model = keras.Sequential([
        keras.Input((4,), name="frozen_x"),
        layers.Dense(5, kernel_regularizer=regularizers.L2(0.5),
                     activity_regularizer=regularizers.L1(0.1), name="d1"),
        layers.BatchNormalization(gamma_regularizer=regularizers.L1(0.5), name="bn"),
        layers.Dense(2, name="d2"),
    ], name="frozen_model")
    model.trainable = False
    rng = np.random.default_rng(6)
    inputs = [rng.normal(0, 1, (4, 4)).astype(np.float32)]
    return model, inputs, dict(optimizer=keras.optimizers.SGD(name="frozen_sgd"), loss="mse")


def penalty_fixture(name, build):
    model, inputs, compile_args = build()
    randomize(model, np.random.default_rng(zlib.crc32(name.encode())))
    model.compile(**compile_args)
    model.save(OUT / f"{name}.keras")
    return {
        "name": name,
        "model": f"{name}.keras",
        "inputs": save_inputs(name, inputs),
        "batch": int(inputs[0].shape[0]),
        "trainable": weight_list(model.trainable_weights),
        "non_trainable": weight_list(model.non_trainable_weights),
        "penalties": penalties(model, inputs),
        "compile_config": model.get_compile_config(),
    }


# --------------------------------------------------------------------------- compile

def compile_fixtures():
    o = keras.optimizers
    cases = [
        ("sgd", o.SGD(learning_rate=0.05, momentum=0.9, nesterov=True), "mse", ["mae"]),
        ("adam", o.Adam(learning_rate=3e-4, beta_1=0.8, amsgrad=True), "mae", ["mse"]),
        ("adamw", o.AdamW(learning_rate=1e-3, weight_decay=0.01), "huber", None),
        ("rmsprop", o.RMSprop(learning_rate=1e-3, rho=0.8, momentum=0.1, centered=True),
         "binary_crossentropy", ["accuracy"]),
        ("adagrad", o.Adagrad(learning_rate=0.02, initial_accumulator_value=0.2),
         keras.losses.BinaryCrossentropy(from_logits=True), [keras.metrics.AUC()]),
        ("adadelta", o.Adadelta(learning_rate=1.0, rho=0.9), "log_cosh", None),
        ("adamax", o.Adamax(learning_rate=2e-3), "mean_squared_logarithmic_error", None),
        ("nadam", o.Nadam(learning_rate=2e-3, clipnorm=1.0), "mse", ["mae", "mse"]),
        ("ftrl", o.Ftrl(learning_rate=0.1, l1_regularization_strength=0.01), "mse", None),
        ("lion", o.Lion(learning_rate=1e-4, global_clipnorm=2.0), "mse", None),
        ("lamb", o.Lamb(learning_rate=1e-3), "mse", None),
        ("adafactor", o.Adafactor(learning_rate=1e-3), "mse", None),
        ("sgd_schedule", o.SGD(learning_rate=o.schedules.ExponentialDecay(0.1, 100, 0.9)),
         "mse", None),
    ]
    out = []
    for name, optimizer, loss, metrics in cases:
        model = keras.Sequential([keras.Input((3,)), layers.Dense(1, name="d")],
                                 name=f"compile_{name}")
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
        # The first file is whole; the others keep only their config (the weights of a
        # Dense(1) say nothing about the compile config, and they are loaded initialized).
        f = f"compile_{name}.keras"
        if out:
            save_without_weights(model, OUT / f)
        else:
            model.save(OUT / f)
        out.append({"name": name, "model": f, "weights": not out,
                    "compile_config": model.get_compile_config()})
    # A model JSON of a compiled model carries the compile config too; an uncompiled one none.
    model = keras.Sequential([keras.Input((3,)), layers.Dense(1, name="d")], name="uncompiled")
    (OUT / "uncompiled.json").write_text(model.to_json())
    # It saves "compile_config": {}, which Keras's loader takes for "not compiled".
    assert not keras.models.model_from_json(model.to_json()).compiled
    out.append({"name": "uncompiled", "model": "uncompiled.json", "weights": False,
                "compile_config": None})
    model.compile(optimizer="rmsprop", loss="mse")
    (OUT / "compiled.json").write_text(model.to_json())
    out.append({"name": "compiled_json", "model": "compiled.json", "weights": False,
                "compile_config": model.get_compile_config()})
    return out


# ------------------------------------------------------------------------------ init

def init_cnn():
    """Keras's defaults and every initializer class on conv, depthwise, separable, transposed,
    normalization, PReLU and Dense weights."""
    ini = keras.initializers
    inp = keras.Input((12, 12, 3))
    x = layers.Conv2D(16, 3, name="conv")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.PReLU(name="prelu")(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, depthwise_initializer="he_normal",
                               bias_initializer=ini.Constant(0.1), name="dw")(x)
    x = layers.SeparableConv2D(32, 3, pointwise_initializer="lecun_uniform", name="sep")(x)
    x = layers.Conv2DTranspose(8, 3, kernel_initializer=ini.VarianceScaling(
        2.0, mode="fan_out", distribution="untruncated_normal"), name="deconv")(x)
    x = layers.Conv1D(8, 3, kernel_initializer="he_uniform", name="conv1d")(
        layers.Reshape((-1, 8), name="flat_steps")(x))
    x = layers.GlobalAveragePooling1D(name="gap")(x)
    x = layers.Dense(64, kernel_initializer=ini.TruncatedNormal(stddev=0.1),
                     bias_initializer=ini.RandomUniform(-0.1, 0.2), name="trunc")(x)
    x = layers.Dense(64, kernel_initializer="identity", name="eye")(x)
    x = layers.Dense(64, kernel_initializer=ini.RandomNormal(mean=0.1, stddev=0.2),
                     bias_initializer="ones", name="normal")(x)
    x = layers.Dense(64, kernel_initializer="glorot_normal", name="glorot_normal")(x)
    x = layers.Dense(64, kernel_initializer="lecun_normal", name="lecun_normal")(x)
    # Two layers with the same seeded initializer and shape: Keras draws the same values.
    x = layers.Dense(64, kernel_initializer=ini.GlorotUniform(seed=7), name="seeded_a")(x)
    x = layers.Dense(64, kernel_initializer=ini.GlorotUniform(seed=7), name="seeded_b")(x)
    x = layers.LayerNormalization(gamma_initializer=ini.Constant(2.0), name="ln")(x)
    y = layers.Dense(10, kernel_initializer=ini.Orthogonal(gain=1.5), activation="softmax",
                     name="orth")(x)
    rng = np.random.default_rng(3)
    model = keras.Model(inp, y, name="init_cnn")
    a, b = model.get_layer("seeded_a").kernel, model.get_layer("seeded_b").kernel
    assert np.array_equal(a.numpy(), b.numpy()), "Keras draws a seeded initializer once"
    return model, [rng.normal(0, 1, (2, 12, 12, 3)).astype(np.float32)]


def init_rnn():
    """Embedding, LSTM (forget-gate bias), GRU both reset_after forms, SimpleRNN, a
    Bidirectional LSTM, a ConvLSTM1D, and an LSTM without unit_forget_bias."""
    inp = keras.Input((10,), dtype="int32")
    x = layers.Embedding(50, 16, name="emb")(inp)
    x = layers.LSTM(16, return_sequences=True, name="lstm")(x)
    x = layers.Bidirectional(layers.LSTM(12, return_sequences=True, name="bl"), name="bi")(x)
    x = layers.GRU(16, return_sequences=True, name="gru")(x)
    x = layers.GRU(16, return_sequences=True, reset_after=False, name="gru_v1")(x)
    x = layers.LSTM(16, return_sequences=True, unit_forget_bias=False,
                    bias_initializer="ones", name="lstm_plain")(x)
    x = layers.Reshape((10, 16, 1), name="steps")(x)
    x = layers.ConvLSTM1D(4, 3, return_sequences=True, name="convlstm")(x)
    x = layers.Reshape((10, 56), name="flat")(x)
    x = layers.SimpleRNN(16, name="rnn")(x)
    y = layers.Dense(4, name="out")(x)
    rng = np.random.default_rng(4)
    return keras.Model(inp, y, name="init_rnn"), [rng.integers(0, 50, (2, 10))
                                                   .astype(np.int32)]


def init_free_time():
    """A free time axis: the graph is rebuilt for each length, with the same weights."""
    inp = keras.Input((None, 4))
    x = layers.LSTM(6, name="lstm")(inp)
    y = layers.Dense(3, name="out")(x)
    rng = np.random.default_rng(5)
    return keras.Model(inp, y, name="init_free_time"), [rng.normal(0, 1, (2, 7, 4))
                                                         .astype(np.float32)]


def bounded(initializer_config):
    """Whether an initializer's draws lie in hard bounds that a large sample reaches."""
    if initializer_config is None:
        return True
    if isinstance(initializer_config, str):
        name = initializer_config
        config = {}
    else:
        name = initializer_config["class_name"]
        config = initializer_config.get("config") or {}
    if name in ("RandomNormal", "Orthogonal"):
        return False
    if name == "VarianceScaling":
        return config.get("distribution") != "untruncated_normal"
    return True


def initializer_of(model, weight):
    """The serialized initializer of a weight, from its layer's config (None: fixed)."""
    field = {
        "kernel": "kernel_initializer",
        "bias": "bias_initializer",
        "recurrent_kernel": "recurrent_initializer",
        "embeddings": "embeddings_initializer",
        "depthwise_kernel": "depthwise_initializer",
        "pointwise_kernel": "pointwise_initializer",
        "gamma": "gamma_initializer",
        "beta": "beta_initializer",
        "moving_mean": "moving_mean_initializer",
        "moving_variance": "moving_variance_initializer",
        "alpha": "alpha_initializer",
    }[weight.name]
    owner = weight.path.split("/")[0]
    config = model.get_layer(owner).get_config()
    if "layer" in config:  # Bidirectional
        config = config["layer"]["config"]
    if field == "kernel_initializer" and "depthwise_initializer" in config \
            and "pointwise_initializer" not in config:
        field = "depthwise_initializer"
    return config.get(field)


def init_fixture(name, build, form):
    model, inputs = build()
    config = model.to_json()
    if form == "json":
        f = f"{name}.json"
        (OUT / f).write_text(config)
    else:
        f = f"{name}.keras"
        save_without_weights(model, OUT / f)
    pooled = [[] for _ in model.weights]
    for k in range(POOL):
        keras.utils.set_random_seed(1000 + k)
        fresh = keras.models.model_from_json(config)
        for i, w in enumerate(fresh.weights):
            pooled[i].append(np.asarray(w.numpy(), dtype=np.float64).ravel())
    weights = []
    for w, draws in zip(model.weights, pooled):
        init = initializer_of(model, w)
        # A seeded initializer draws the same values in every build: one independent draw.
        seeded = isinstance(init, dict) and (init.get("config") or {}).get("seed") is not None
        deterministic = all(np.array_equal(d, draws[0]) for d in draws)
        if seeded:
            assert deterministic, w.path
            draws = draws[:1]
        v = np.concatenate(draws)
        weights.append({
            "path": w.path,
            "shape": list(w.shape),
            "fans": list(compute_fans(tuple(w.shape))),
            "draws": len(draws),
            "deterministic": deterministic,
            "n": int(v.size),
            "mean": float(v.mean()),
            "std": float(v.std()),
            "min": float(v.min()),
            "max": float(v.max()),
            "bounded": bounded(init),
        })
    return {"name": name, "model": f, "inputs": save_inputs(name, inputs), "pool": POOL,
            "weights": weights}


# ------------------------------------------------------------------------------- bad

def bad_fixtures():
    out = []
    model = keras.Sequential([
        keras.Input((4,)),
        layers.Dense(3, kernel_regularizer=regularizers.OrthogonalRegularizer(0.01),
                     name="orth_reg"),
    ], name="orthogonal_regularizer")
    (OUT / "orthogonal_regularizer.json").write_text(model.to_json())
    out.append({"file": "orthogonal_regularizer.json", "words": ["orth_reg",
                "kernel_regularizer", "OrthogonalRegularizer"],
                "description": "OrthogonalRegularizer is an error naming the layer and field"})
    model = keras.Sequential([
        keras.Input((5, 4)),
        layers.Bidirectional(layers.LSTM(3, activity_regularizer="l2", name="inner"),
                             name="bi_act"),
    ], name="bidirectional_activity")
    (OUT / "bidirectional_activity.json").write_text(model.to_json())
    out.append({"file": "bidirectional_activity.json", "words": ["bi_act", "layer",
                "activity_regularizer"],
                "description": "an activity regularizer on the layer Bidirectional wraps"})
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    keras.utils.set_random_seed(0)
    manifest = {
        "penalties": [penalty_fixture("every_regularizer", every_regularizer),
                      penalty_fixture("frozen_nested", frozen_nested),
                      penalty_fixture("frozen_model", frozen_model)],
        "compile": compile_fixtures(),
        "init": [init_fixture("init_cnn", init_cnn, "json"),
                 init_fixture("init_rnn", init_rnn, "keras"),
                 init_fixture("init_free_time", init_free_time, "json")],
        "bad": bad_fixtures(),
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1024:.0f} KiB, to {OUT}")


if __name__ == "__main__":
    main()
