#!/usr/bin/env python3
"""Builds the legacy-HDF5 fixtures in tests/fixtures/legacy/ (read by tests/legacy_h5.rs).

Run from the repository root, with the Keras venv (tools/requirements.txt) plus tf-keras for the
true Keras 2 files:

    .venv-keras/bin/pip install tf-keras==2.21.0      # Keras 2 (tf.keras), matches TF 2.21
    TF_ENABLE_ONEDNN_OPTS=0 .venv-keras/bin/python tools/legacy_fixtures.py

Each model is written by two real Keras versions:

- `k3_*`: Keras 3 (`keras`), `model.save("NAME.h5")` (the legacy format, with a deprecation
  warning) and Keras 3's own legacy writer for weights only
  (keras.src.legacy.saving.legacy_h5_format.save_weights_to_hdf5_group, which Keras 3's
  `save_weights` no longer reaches: it insists on `.weights.h5`) next to `model.to_json()`.
  Keras 3 puts a Keras 3 style config into `model_config` and names weights by variable path
  (`sequential/dense/kernel`).
- `k2_*`: Keras 2 (`tf_keras`), `model.save("NAME.h5")` and `model.save_weights("NAME_weights.h5")`
  with `model.to_json()`: Keras 2 configs (`batch_input_shape`, `[[["dense", 0, 0, {}]]]`
  inbound nodes, dtype strings) and Keras 2 weight names (`dense/kernel:0`).

Plus `k2_old_text`: the Keras 2 text model rewritten the way older stacks stored it (h5py 2 /
Keras 2.2): fixed-length byte strings instead of variable-length ones, `layer_names` split into
`layer_names0`, `layer_names1` chunks (what Keras does when the list outgrows an HDF5 object
header), `class_name: "Model"` and `keras_version` 2.2.4. The expected outputs are Keras 2's for
the unmodified model.

For every model NAME: NAME.input.npy (float32, or int32 ids), NAME.expected.npy (float32, that
Keras's `model.predict`), and entries in tests/fixtures/legacy/manifest.json: one for the whole
model file and one for JSON + weights-only file. `bad/` holds files that must be rejected.

Weights are drawn explicitly, seeded by the model's name, as in tools/keras_fixtures.py: reruns
give the same numbers.
"""

import json
import os
import shutil
import sys
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import keras  # noqa: E402  (Keras 3)
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

try:
    import tf_keras  # noqa: E402  (Keras 2)
except ImportError:
    sys.exit("tf_keras is missing: .venv-keras/bin/pip install --no-deps -r tools/requirements-legacy.txt")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "legacy"
BAD = OUT / "bad"

VOCAB = 13
MASK_T = 8
MASK_LENGTHS = [MASK_T, 3, 0, 5]  # post-padded rows: full, short, all padding, middle
IMG = (8, 8, 3)
SEQ = (6, 4)


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def randomize(model, rng):
    """Real-scale weights (kernels ~ N(0, min(0.5, 1.5/sqrt(fan_in))), biases ~ N(0, 0.3),
    embeddings ~ N(0, 1), twice that inside LSTM cells), in `model.weights` order."""
    weights = []
    for v in model.weights:
        shape = tuple(int(d) for d in v.shape)
        name = getattr(v, "path", None) or v.name
        gain = 2.0 if "lstm_cell" in name else 1.0
        if "moving_variance" in name or "gamma" in name:
            weights.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
            continue
        if "embeddings" in name:
            std = 1.0
        elif "bias" in name:
            std = 0.3 * gain
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            std = gain * min(0.5, 1.5 / np.sqrt(fan_in))
        weights.append(rng.normal(0.0, std, shape).astype(np.float32))
    model.set_weights(weights)


def padded_ids(rng):
    ids = np.zeros((len(MASK_LENGTHS), MASK_T), dtype=np.int32)
    for row, n in enumerate(MASK_LENGTHS):
        ids[row, :n] = rng.integers(1, VOCAB, n)
    return ids


# ---------------------------------------------------------------- models, in either Keras


def seq_cnn(k):
    L = k.layers
    return k.Sequential(
        [
            k.Input(IMG),
            L.Conv2D(4, 3, activation="relu", name="conv"),
            L.MaxPooling2D(2, name="pool"),
            L.Flatten(name="flat"),
            L.Dense(5, activation="softmax", name="probs"),
        ],
        name="seq_cnn",
    )


def functional_cnn(k):
    L = k.layers
    inp = k.Input(IMG, name="image")
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="conv_a")(inp)
    x = L.AveragePooling2D(2, name="pool_a")(x)
    x = L.Conv2D(4, (3, 2), strides=(1, 2), activation="tanh", name="conv_b")(x)
    x = L.GlobalMaxPooling2D(name="gmp")(x)
    x = L.Dropout(0.2, name="drop")(x)
    out = L.Dense(3, name="logits")(x)
    return k.Model(inp, out, name="functional_cnn")


def text_bilstm(k):
    L = k.layers
    return k.Sequential(
        [
            k.Input((MASK_T,), dtype="int32"),
            L.Embedding(VOCAB, 4, mask_zero=True),
            L.Bidirectional(L.LSTM(4)),
            L.Dense(3, activation="softmax"),
        ],
        name="text_bilstm",
    )


def text_functional(k):
    """Functional Embedding(mask_zero) -> Bi(LSTM, seq) -> Bi(SimpleRNN, ave) -> Dense."""
    L = k.layers
    inp = k.Input((MASK_T,), dtype="int32", name="tokens")
    x = L.Embedding(VOCAB, 4, mask_zero=True, name="embed")(inp)
    x = L.Bidirectional(L.LSTM(4, return_sequences=True), name="bi_a")(x)
    x = L.Bidirectional(L.SimpleRNN(3), merge_mode="ave", name="bi_b")(x)
    out = L.Dense(3, name="logits")(x)
    return k.Model(inp, out, name="text_functional")


def stacked_simplernn(k):
    L = k.layers
    return k.Sequential(
        [
            k.Input(SEQ),
            L.SimpleRNN(6, return_sequences=True),
            L.SimpleRNN(4),
            L.Dense(3),
        ],
        name="stacked_simplernn",
    )


def cnn_hard_swish(k):
    """MobileNetV3's hard-swish written with operators: Keras 2 records `x + 3.0` and
    `* (1/6)` as TFOpLambda layers, Keras 3 as operator nodes."""
    L = k.layers
    inp = k.Input(IMG, name="image")
    x = L.Conv2D(4, 3, padding="same", name="conv")(inp)
    hard_sigmoid = L.ReLU(6.0, name="relu6")(x + 3.0) * (1.0 / 6.0)
    x = L.Multiply(name="hard_swish")([x, hard_sigmoid])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return k.Model(inp, L.Dense(3, name="logits")(x), name="cnn_hard_swish")


def convlstm_defaults(k):
    """ConvLSTM2D with its defaults: recurrent_activation is hard_sigmoid in Keras 2 (0.2x + 0.5,
    clipped) and sigmoid in Keras 3."""
    L = k.layers
    return k.Sequential([k.Input((3, 6, 6, 2)), L.ConvLSTM2D(3, 3, padding="same"), L.Flatten(), L.Dense(3)],
                        name="convlstm_defaults")  # fmt: skip


def lstm_hard_sigmoid(k):
    L = k.layers
    return k.Sequential([k.Input(SEQ), L.LSTM(5, recurrent_activation="hard_sigmoid"), L.Dense(3)],
                        name="lstm_hard_sigmoid")  # fmt: skip


def cnn_shared_tower(k):
    """A Functional submodel (with BatchNormalization) called on two tensors: Keras 3 numbers the
    calls from 0 in call arguments, Keras 2 from 1; the legacy weights list the tower's trainable
    arrays before its moving statistics."""
    L = k.layers
    t_in = k.Input(IMG)
    t = L.Conv2D(4, 3, name="tower_conv")(t_in)
    t = L.BatchNormalization(name="tower_bn")(t)
    t = L.GlobalAveragePooling2D(name="tower_gap")(t)
    tower = k.Model(t_in, t, name="tower")
    inp = k.Input(IMG, name="image")
    a = tower(inp)
    b = tower(L.Activation("tanh", name="squash")(inp))
    d = L.Subtract(name="diff")([a, b])
    return k.Model(inp, L.Dense(3, name="logits")(L.Concatenate(name="both")([a, d])), name="cnn_shared_tower")


def text_seq2seq_state(k):
    """Encoder LSTM(return_state) -> decoder LSTM(return_sequences, initial_state=...) on the same
    masked tokens: Keras 2 masks the decoder, Keras 3 runs a call with initial states unmasked."""
    L = k.layers
    inp = k.Input((MASK_T,), dtype="int32", name="tokens")
    e = L.Embedding(VOCAB, 4, mask_zero=True, name="embed")(inp)
    _, h, c = L.LSTM(4, return_state=True, name="encoder")(e)
    y = L.LSTM(4, return_sequences=True, name="decoder")(e, initial_state=[h, c])
    return k.Model(inp, L.Dense(3, name="logits")(y), name="text_seq2seq_state")


# (stem, description, builder, input kind, compile+one train step first)
MODELS = [
    ("seq_cnn", "Sequential Conv2D(relu) -> MaxPool -> Flatten -> Dense(softmax)", seq_cnn, "float", True),
    (
        "functional_cnn",
        "Functional Conv2D(same) -> AvgPool -> Conv2D(3x2, stride 1x2) -> GlobalMaxPool -> Dropout -> Dense",
        functional_cnn,
        "float",
        False,
    ),
    (
        "text_bilstm",
        "Embedding(mask_zero) on rows of lengths 8,3,0,5 -> Bidirectional(LSTM(4)) -> Dense(softmax)",
        text_bilstm,
        "ids",
        True,
    ),
    (
        "text_functional",
        "Functional Embedding(mask_zero) -> Bi(LSTM, seq) -> Bi(SimpleRNN, ave) -> Dense",
        text_functional,
        "ids",
        False,
    ),
    ("stacked_simplernn", "SimpleRNN(6, seq) -> SimpleRNN(4) -> Dense(3)", stacked_simplernn, "float", False),
    ("cnn_hard_swish", "Conv2D -> x * relu6(x + 3) / 6 written with operators -> GAP -> Dense", cnn_hard_swish,
     "float", False),
    ("convlstm_defaults", "ConvLSTM2D(3, 3, same) with its default activations -> Flatten -> Dense", convlstm_defaults,
     "float", False),
    ("lstm_hard_sigmoid", "LSTM(5, recurrent_activation='hard_sigmoid') -> Dense(3)", lstm_hard_sigmoid, "float", False),
    ("cnn_shared_tower", "A Functional tower (Conv2D, BatchNormalization, GAP) called on x and tanh(x)",
     cnn_shared_tower, "float", False),
    ("text_seq2seq_state", "Embedding(mask_zero) -> encoder LSTM(return_state) -> decoder LSTM(initial_state) "
     "-> Dense per step", text_seq2seq_state, "ids", False),
]  # fmt: skip


def make_input(stem, kind):
    rng = rng_for(stem + "/input")
    if kind == "ids":
        return padded_ids(rng)
    shape = IMG if "cnn" in stem else (3, 6, 6, 2) if "convlstm" in stem else SEQ
    return rng.normal(0.0, 1.0, (3, *shape)).astype(np.float32)


# ---------------------------------------------------------------- writing


def save_keras3_weights_only(model, path):
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def write_json(model, path):
    path.write_text(model.to_json())


def check_varies(name, out):
    flat = out.reshape(out.shape[0], -1)
    assert np.abs(flat - flat[0]).max() > 1e-3, f"{name}: outputs do not vary across the batch"


def build_all():
    entries = []
    for stem, desc, builder, kind, train in MODELS:
        x = make_input(stem, kind)
        for prefix, k, who in [("k3", keras, "Keras 3.15 legacy h5"), ("k2", tf_keras, "Keras 2 (tf_keras 2.21)")]:
            name = f"{prefix}_{stem}"
            k.utils.set_random_seed(0)
            model = builder(k)
            if train:
                # training_config and optimizer_weights in the file, to be ignored.
                model.compile(optimizer="adam", loss="mse")
                model.train_on_batch(x, np.zeros(model.output_shape[1:], np.float32)[None].repeat(len(x), 0))
            randomize(model, rng_for(name))
            expected = np.asarray(model.predict(x, verbose=0), dtype=np.float32)
            check_varies(name, expected)
            np.save(OUT / f"{name}.input.npy", x)
            np.save(OUT / f"{name}.expected.npy", expected)
            model.save(OUT / f"{name}.h5")
            write_json(model, OUT / f"{name}.json")
            if prefix == "k3":
                save_keras3_weights_only(model, OUT / f"{name}_weights.h5")
            else:
                model.save_weights(OUT / f"{name}_weights.h5")
            common = dict(
                input=f"{name}.input.npy",
                expected=f"{name}.expected.npy",
                input_kind=kind,
                input_shape=list(x.shape),
                output_shape=list(expected.shape),
            )
            entries.append(
                dict(name=name, model=f"{name}.h5", description=f"{desc}; {who} model.save", **common)
            )
            entries.append(
                dict(
                    name=f"{name}_weights",
                    model=f"{name}.json",
                    weights=f"{name}_weights.h5",
                    description=f"{desc}; {who} model.to_json() + weights-only legacy h5",
                    **common,
                )
            )
    entries += old_style_fixtures()
    return entries


def fixed(strings):
    """A fixed-length byte-string array, as h5py 2 wrote Keras's lists of names."""
    data = [s.encode() if isinstance(s, str) else s for s in strings]
    width = max([len(s) for s in data] + [1])
    return np.array(data, dtype=f"S{width}")


def rewrite_old_style(src, dst, edit_config=None):
    """Copies a Keras 2 legacy file, rewriting its string attributes as older stacks wrote them:
    fixed-length byte strings, `layer_names` split into two chunks."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        weights = f["model_weights"] if "model_weights" in f else f
        if "model_config" in f.attrs:
            config = json.loads(f.attrs["model_config"])
            if edit_config:
                edit_config(config)
            f.attrs["model_config"] = np.bytes_(json.dumps(config).encode())
        for holder in {id(f): f, id(weights): weights}.values():
            for key in ("keras_version", "backend"):
                if key in holder.attrs:
                    value = "2.2.4" if key == "keras_version" else holder.attrs[key]
                    holder.attrs[key] = np.bytes_(value.encode() if isinstance(value, str) else value)
        names = [n.decode() if isinstance(n, bytes) else n for n in weights.attrs["layer_names"]]
        del weights.attrs["layer_names"]
        half = (len(names) + 1) // 2
        weights.attrs["layer_names0"] = fixed(names[:half])
        weights.attrs["layer_names1"] = fixed(names[half:])
        for layer in names:
            group = weights[layer]
            wn = list(group.attrs["weight_names"])
            if wn:
                group.attrs["weight_names"] = fixed(wn)


def to_old_config(config):
    config["class_name"] = "Model"
    config["keras_version"] = "2.2.4"


def old_style_fixtures():
    src = "k2_text_functional"
    name = "k2_old_text_functional"
    for ext in (".input.npy", ".expected.npy"):
        shutil.copyfile(OUT / f"{src}{ext}", OUT / f"{name}{ext}")
    rewrite_old_style(OUT / f"{src}.h5", OUT / f"{name}.h5", to_old_config)
    rewrite_old_style(OUT / f"{src}_weights.h5", OUT / f"{name}_weights.h5")
    config = json.loads((OUT / f"{src}.json").read_text())
    to_old_config(config)
    (OUT / f"{name}.json").write_text(json.dumps(config))
    x = np.load(OUT / f"{name}.input.npy")
    y = np.load(OUT / f"{name}.expected.npy")
    desc = (
        "Keras 2 Functional text model as h5py 2 / Keras 2.2 stored it: fixed-length string "
        "attributes, layer_names0/layer_names1 chunks, class_name 'Model'"
    )
    common = dict(
        input=f"{name}.input.npy",
        expected=f"{name}.expected.npy",
        input_kind="ids",
        input_shape=list(x.shape),
        output_shape=list(y.shape),
    )
    return [
        dict(name=name, model=f"{name}.h5", description=desc + "; model file", **common),
        dict(
            name=f"{name}_weights",
            model=f"{name}.json",
            weights=f"{name}_weights.h5",
            description=desc + "; JSON + weights-only file",
            **common,
        ),
    ]


# ---------------------------------------------------------------- files the loader must reject


def bad_files():
    """Legacy files that must fail to load: (file, weights or None, word the error must contain,
    description)."""
    out = []

    # A layer left out: its name gone from layer_names and its group deleted.
    path = BAD / "k2_seq_cnn_no_dense.h5"
    shutil.copyfile(OUT / "k2_seq_cnn.h5", path)
    with h5py.File(path, "r+") as f:
        g = f["model_weights"]
        g.attrs["layer_names"] = [n for n in g.attrs["layer_names"] if n != "probs"]
        del g["probs"]
    out.append((f"bad/{path.name}", None, "probs", "Keras 2 model file whose Dense layer 'probs' has no weights"))

    # weight_names lists a dataset the file does not hold.
    path = BAD / "k3_seq_cnn_no_bias.h5"
    shutil.copyfile(OUT / "k3_seq_cnn.h5", path)
    with h5py.File(path, "r+") as f:
        g = f["model_weights/conv"]
        bias = [n for n in g.attrs["weight_names"] if n.endswith("bias")][0]
        del g[bias]
    out.append((f"bad/{path.name}", None, "bias", "Keras 3 legacy file whose Conv2D bias dataset is gone"))

    # A weights-only file for a different model.
    out.append(
        (
            "k2_seq_cnn.json",
            "k2_text_bilstm_weights.h5",
            "missing",
            "the CNN's JSON with the text model's weights",
        )
    )
    return out


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    BAD.mkdir(parents=True)
    fixtures = build_all()
    bad = [dict(file=f, weights=w, word=word, description=d) for f, w, word, d in bad_files()]
    manifest = dict(
        keras=keras.__version__,
        tf_keras=tf_keras.__version__,
        h5py=h5py.__version__,
        fixtures=fixtures,
        bad=bad,
    )
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(fixtures)} fixtures, {len(bad)} bad files, {total / 1024:.0f} KiB in {OUT}")


if __name__ == "__main__":
    main()
