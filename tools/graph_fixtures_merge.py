#!/usr/bin/env python3
"""Keras reference fixtures for the merge and shape ops (tests/graph_merge.rs), written to
tests/fixtures/graph/merge/ with a manifest in the format of tools/graph_fixtures.py:
{"name","description","model","weights"?,"form","inputs":[{"file","kind","shape"}],
"outputs":[{"name","file","shape","std"}]} plus "bad" files the loader must reject.

    TF_ENABLE_ONEDNN_OPTS=0 .venv-keras/bin/python tools/graph_fixtures_merge.py

Only layers wgnn supports besides this family (Dense, Conv2D, pooling, LSTM, Embedding) appear,
so every fixture tests the merge/shape op it is named after. Weights are drawn from a generator
seeded by the fixture's name; expected outputs come from the model as reloaded from its files.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

from keras_fixtures import normal, padded_ids, rng_for, save_keras, savez_weights  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "graph" / "merge"
KERAS, JSON_H5, JSON_NPZ = "keras", "json_h5", "json_npz"

FIXTURES = []
BAD = []


def fixture(name, description, form=KERAS):
    def register(build):
        FIXTURES.append((name, description, form, build))
        return build

    return register


def bad(name, word, description, form=JSON_H5):
    def register(build):
        BAD.append((name, word, description, form, build))
        return build

    return register


def randomize(model, rng):
    for v in model.weights:
        shape = tuple(int(d) for d in v.shape)
        if v.name == "embeddings":
            w = rng.normal(0.0, 1.0, shape)
        elif v.name == "bias":
            w = rng.normal(0.0, 0.3, shape)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            g = 2.0 if "lstm_cell" in v.path else 1.0
            w = rng.normal(0.0, g * min(0.5, 1.5 / np.sqrt(fan_in)), shape)
        v.assign(np.asarray(w, dtype=v.dtype))


def files_for(form, name):
    if form == KERAS:
        return {"model": f"{name}.keras"}
    if form == JSON_H5:
        return {"model": f"{name}.json", "weights": f"{name}.weights.h5"}
    return {"model": f"{name}.json", "weights": f"{name}.npz"}


def write_model(model, form, files):
    if form == KERAS:
        save_keras(model, OUT / files["model"])
        return
    (OUT / files["model"]).write_text(json.dumps(json.loads(model.to_json()), indent=1) + "\n")
    if form == JSON_H5:
        model.save_weights(OUT / files["weights"])
    else:
        savez_weights(model.get_weights(), OUT / files["weights"])


def load_back(form, files):
    if form == KERAS:
        return keras.models.load_model(OUT / files["model"], compile=False)
    model = keras.models.model_from_json((OUT / files["model"]).read_text())
    if form == JSON_NPZ:
        with np.load(OUT / files["weights"]) as npz:
            model.set_weights([npz[f"arr_{i}"] for i in range(len(npz.files))])
    else:
        model.load_weights(OUT / files["weights"])
    return model


def output_names(model):
    outs = model.get_config()["output_layers"] if not isinstance(model, keras.Sequential) else [[model.layers[-1].name, 0, 0]]
    if outs and isinstance(outs[0], str):
        outs = [outs]
    return [o[0] if o[2] == 0 else f"{o[0]}:{o[2]}" for o in outs]


def write_fixture(name, description, form, build):
    keras.backend.clear_session()
    rng = rng_for(name)
    model, xs = build(rng)
    randomize(model, rng)
    files = files_for(form, name)
    write_model(model, form, files)
    reloaded = load_back(form, files)
    outs = reloaded.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    outs = [np.asarray(o, dtype=np.float32) for o in (outs if isinstance(outs, (list, tuple)) else [outs])]
    inputs = []
    for k, x in enumerate(xs):
        f = f"{name}.input{k}.npy"
        np.save(OUT / f, x)
        kind = "ids" if x.dtype.kind == "i" else "float"
        inputs.append({"file": f, "kind": kind, "shape": list(x.shape), "name": reloaded.inputs[k].name})
    outputs = []
    for k, (o, oname) in enumerate(zip(outs, output_names(reloaded))):
        std = float(o.std())
        across = float(o.reshape(o.shape[0], -1).std(axis=0).max())
        assert std > 0.05, f"{name}: output {k} std {std}"
        assert across > 1e-3, f"{name}: output {k} same for every row"
        assert np.all(np.isfinite(o))
        f = f"{name}.expected{k}.npy"
        np.save(OUT / f, o)
        outputs.append({"name": oname, "file": f, "shape": list(o.shape), "std": round(std, 4)})
    print(f"{name:34} {form:9} {[i['shape'] for i in inputs]} -> {[o['shape'] for o in outputs]}", flush=True)
    return {"name": name, "description": description, "form": form, **files, "inputs": inputs, "outputs": outputs}


def write_bad(name, word, description, form, build):
    keras.backend.clear_session()
    model = build()
    randomize(model, rng_for(name))
    files = files_for(form, name)
    write_model(model, form, files)
    return {"file": files["model"], **({"weights": files["weights"]} if "weights" in files else {}), "word": word,
            "description": description}


def inp(shape, name=None, dtype="float32"):
    return keras.Input(shape, name=name, dtype=dtype)


IMG = (7, 9, 3)
SEQ = (11, 5)

# ---------------------------------------------------------------- elementwise merges


@fixture("merge_all_ops", "3 inputs (N,6) -> Dense(5) each -> Add, Subtract, Multiply, Average, Maximum, Minimum (6 outputs)")
def _(rng):
    a, b, c = inp((6,), "a"), inp((6,), "b"), inp((6,), "c")
    da, db, dc = layers.Dense(5)(a), layers.Dense(5)(b), layers.Dense(5)(c)
    outs = [
        layers.Add(name="add3")([da, db, dc]),
        layers.Subtract(name="sub")([da, db]),
        layers.Multiply(name="mul3")([da, db, dc]),
        layers.Average(name="avg3")([da, db, dc]),
        layers.Maximum(name="max3")([da, db, dc]),
        layers.Minimum(name="min3")([da, db, dc]),
    ]
    return keras.Model([a, b, c], outs), [normal(rng, 3, 6) for _ in range(3)]


@fixture("merge_broadcast", "Add (N,4,5)+(N,1,5), Multiply (N,4,5)*(N,5) (rank expanded at axis 1), Maximum with (N,4,1), Average of 3", JSON_H5)
def _(rng):
    x, y, z = inp((4, 5), "x"), inp((1, 5), "y"), inp((5,), "z")
    w = layers.Dense(1)(x)  # (N,4,1)
    outs = [
        layers.Add()([x, y]),
        layers.Multiply()([x, z]),
        layers.Maximum()([w, x, y]),
        layers.Average()([z, x, w]),
        layers.Subtract()([y, w]),
    ]
    return keras.Model([x, y, z], outs), [normal(rng, 3, 4, 5), normal(rng, 3, 1, 5), normal(rng, 3, 5)]


@fixture("residual_conv", "Conv2D-ReLU-Conv2D + identity Add, ReLU, then a stride-2 block with a 1x1 projection Add, GAP, Dense")
def _(rng):
    x = inp((8, 10, 6))
    h = layers.Conv2D(6, 3, padding="same", activation="relu")(x)
    h = layers.Conv2D(6, 3, padding="same")(h)
    h = layers.Activation("relu")(layers.Add()([x, h]))
    s = layers.Conv2D(5, 3, strides=2, padding="same", activation="relu")(h)
    s = layers.Conv2D(5, 3, padding="same")(s)
    p = layers.Conv2D(5, 1, strides=2)(h)
    h = layers.ReLU()(layers.Add()([s, p]))
    out = layers.Dense(3)(layers.GlobalAveragePooling2D()(h))
    return keras.Model(x, out), [normal(rng, 2, 8, 10, 6)]


@fixture("residual_mid_output", "Residual Add with both the block and the final head as outputs; the Add input is read by two layers", JSON_NPZ)
def _(rng):
    x = inp(IMG)
    h = layers.Conv2D(3, 3, padding="same")(x)
    r = layers.Add()([x, h])
    o1 = layers.Conv2D(4, 1, activation="tanh")(r)
    o2 = layers.Add()([r, layers.Conv2D(3, 3, padding="same")(r)])
    return keras.Model(x, [o1, o2]), [normal(rng, 2, *IMG)]


@fixture("shared_layer_twice", "One Dense applied to two inputs and one Conv2D applied twice in sequence, merged with Add and Concatenate")
def _(rng):
    a, b = inp((6,), "a"), inp((6,), "b")
    shared = layers.Dense(4, activation="tanh", name="shared")
    ya, yb = shared(a), shared(b)
    v = layers.Concatenate()([ya, yb, layers.Add()([ya, yb])])
    img = inp((6, 7, 2), "img")
    conv = layers.Conv2D(2, 3, padding="same", name="conv_shared")
    c2 = conv(conv(img))
    return keras.Model([a, b, img], [v, layers.Add()([img, c2])]), [normal(rng, 3, 6), normal(rng, 3, 6), normal(rng, 3, 6, 7, 2)]


@fixture("add_same_tensor_twice", "Add([x, x, h]) and Multiply([h, h]): one tensor passed several times")
def _(rng):
    x = inp((7,))
    h = layers.Dense(7)(x)
    return keras.Model(x, [layers.Add()([x, x, h]), layers.Multiply()([h, h])]), [normal(rng, 3, 7)]


# ---------------------------------------------------------------- concatenate


@fixture("inception_block", "Inception block: 1x1, 1x1->3x3, 1x1->5x5, maxpool 3 same->1x1, Concatenate(-1), then GAP Dense")
def _(rng):
    x = inp((9, 9, 4))
    b1 = layers.Conv2D(3, 1, activation="relu")(x)
    b2 = layers.Conv2D(3, 3, padding="same", activation="relu")(layers.Conv2D(2, 1, activation="relu")(x))
    b3 = layers.Conv2D(2, 5, padding="same", activation="relu")(layers.Conv2D(2, 1, activation="relu")(x))
    b4 = layers.Conv2D(3, 1, activation="relu")(layers.MaxPooling2D(3, strides=1, padding="same")(x))
    c = layers.Concatenate()([b1, b2, b3, b4])
    h = layers.Conv2D(5, 3, strides=2)(c)
    return keras.Model(x, [h, layers.Dense(3)(layers.GlobalAveragePooling2D()(c))]), [normal(rng, 2, 9, 9, 4)]


@fixture("concat_axes", "Concatenate along axis 1 of (N,4,5)+(N,3,5) -> LSTM; axis=2 of 4-D; axis=-3 (=1) of 4-D; 2-D axis=-1", JSON_H5)
def _(rng):
    s1, s2 = inp((4, 5), "s1"), inp((3, 5), "s2")
    t = layers.LSTM(3)(layers.Concatenate(axis=1)([s1, s2]))
    i1, i2 = inp((7, 9, 3), "i1"), inp((7, 2, 3), "i2")
    w = layers.Concatenate(axis=2)([i1, i2])
    i3 = inp((2, 9, 3), "i3")
    h = layers.Concatenate(axis=-3)([i1, i3, i1])
    v = layers.Concatenate(axis=-1)([layers.Dense(2)(t), t])
    return keras.Model([s1, s2, i1, i2, i3], [t, w, h, v]), [
        normal(rng, 2, 4, 5), normal(rng, 2, 3, 5), normal(rng, 2, 7, 9, 3), normal(rng, 2, 7, 2, 3), normal(rng, 2, 2, 9, 3)]


# ---------------------------------------------------------------- dot


@fixture("dot_all", "Dot axes=1 (N,6)x(N,6); normalize; axes=2 of (N,4,5),(N,3,5); axes=(1,2) of (N,4,5),(N,3,4); axes=1 normalize 3-D; axes=-1 2-D x 3-D")
def _(rng):
    a, b = inp((6,), "a"), inp((6,), "b")
    x, y, z = inp((4, 5), "x"), inp((3, 5), "y"), inp((3, 4), "z")
    w = inp((4, 3), "w")
    outs = [
        layers.Dot(axes=1)([layers.Dense(6)(a), b]),
        layers.Dot(axes=1, normalize=True)([a, b]),
        layers.Dot(axes=2)([x, y]),
        layers.Dot(axes=(1, 2))([x, z]),
        layers.Dot(axes=1, normalize=True)([x, w]),
        layers.Dot(axes=-1)([layers.Dense(5)(a), x]),
    ]
    return keras.Model([a, b, x, y, z, w], outs), [
        normal(rng, 3, 6), normal(rng, 3, 6), normal(rng, 3, 4, 5), normal(rng, 3, 3, 5), normal(rng, 3, 3, 4), normal(rng, 3, 4, 3)]


# ---------------------------------------------------------------- operator nodes


@fixture("ops_arithmetic", "Operator nodes: a+b, a*b, x*0.5-1.5, 2.0*y, 1.0-x, x/3.0, 2.0/(x*x+1), maximum/minimum with tensors and constants, ops.concatenate axis -1 and 1")
def _(rng):
    a, b = inp((6,), "a"), inp((6,), "b")
    da = layers.Dense(6)(a)
    s = ops.add(da, b)
    m = a * b
    t = m * 0.5 - 1.5
    u = 2.0 * s
    v = 1.0 - t
    q = u / 3.0
    r = 2.0 / (v * v + 1.0)
    mx = ops.maximum(q, r)
    mn = ops.minimum(ops.maximum(q, 0.1), -0.2 + r)
    d = ops.divide(mx, ops.add(ops.multiply(mn, mn), 1.0))
    c = ops.concatenate([d, mn, ops.subtract(s, m)], axis=-1)
    head = layers.Dense(3)(c)
    x3 = layers.Reshape((2, 3))(s)
    c1 = ops.concatenate([x3, x3 * 2.0], axis=1)
    return keras.Model([a, b], [head, c1, mx]), [normal(rng, 3, 6), normal(rng, 3, 6)]


@fixture("ops_residual_conv", "x + conv(x) as '+' on 4-D tensors, conv(x) * x, then Dense", JSON_H5)
def _(rng):
    x = inp(IMG)
    h = layers.Conv2D(3, 3, padding="same")(x)
    y = x + h
    z = layers.Conv2D(3, 1)(y) * x
    return keras.Model(x, layers.Dense(2)(z - y)), [normal(rng, 2, *IMG)]


# ---------------------------------------------------------------- shape layers


@fixture("zeropad_all", "ZeroPadding1D(2), ZeroPadding1D((1,3)), ZeroPadding2D(1), (2,1), ((1,2),(0,3)), ZeroPadding3D(((1,0),(0,2),(2,1))) then Dense/Conv2D")
def _(rng):
    s = inp(SEQ, "s")
    i = inp(IMG, "i")
    v = inp((3, 4, 5, 2), "v")
    outs = [
        layers.Dense(3)(layers.ZeroPadding1D(2)(s)),
        layers.ZeroPadding1D((1, 3))(s),
        layers.Conv2D(3, 3)(layers.ZeroPadding2D(1)(i)),
        layers.ZeroPadding2D((2, 1))(i),
        layers.Conv2D(2, 3)(layers.ZeroPadding2D(((1, 2), (0, 3)))(i)),
        layers.Dense(3)(layers.ZeroPadding3D(((1, 0), (0, 2), (2, 1)))(v)),
        layers.ZeroPadding3D(1)(v),
    ]
    return keras.Model([s, i, v], outs), [normal(rng, 2, *SEQ), normal(rng, 2, *IMG), normal(rng, 2, 3, 4, 5, 2)]


@fixture("cropping_all", "Cropping1D((1,3)), Cropping1D(2), Cropping2D(1), ((1,2),(3,0)), (2,1), Cropping3D(((1,1),(0,2),(2,1))) around Conv2D/Dense", JSON_NPZ)
def _(rng):
    s = inp(SEQ, "s")
    i = inp(IMG, "i")
    v = inp((5, 6, 7, 2), "v")
    outs = [
        layers.Dense(3)(layers.Cropping1D((1, 3))(s)),
        layers.Cropping1D(2)(s),
        layers.Conv2D(2, 1)(layers.Cropping2D(1)(i)),
        layers.Cropping2D(((1, 2), (3, 0)))(layers.Conv2D(3, 3, padding="same")(i)),
        layers.Cropping2D((2, 1))(i),
        layers.Dense(3)(layers.Cropping3D(((1, 1), (0, 2), (2, 1)))(v)),
    ]
    return keras.Model([s, i, v], outs), [normal(rng, 2, *SEQ), normal(rng, 2, *IMG), normal(rng, 2, 5, 6, 7, 2)]


@fixture("upsampling_all", "UpSampling1D(3), UpSampling2D((2,3)) nearest, bilinear (2,3) and (3,2) and 2, UpSampling3D((2,1,3)), around Conv2D/Dense")
def _(rng):
    s = inp(SEQ, "s")
    i = inp(IMG, "i")
    v = inp((3, 4, 5, 2), "v")
    outs = [
        layers.Dense(2)(layers.UpSampling1D(3)(layers.Dense(4)(s))),
        layers.Conv2D(3, 3, padding="same")(layers.UpSampling2D((2, 3))(i)),
        layers.UpSampling2D((2, 3), interpolation="bilinear")(i),
        layers.UpSampling2D((3, 2), interpolation="bilinear")(layers.Conv2D(4, 3)(i)),
        layers.Conv2D(2, 3)(layers.UpSampling2D(2, interpolation="bilinear")(i)),
        layers.Dense(2)(layers.UpSampling3D((2, 1, 3))(v)),
    ]
    return keras.Model([s, i, v], outs), [normal(rng, 2, *SEQ), normal(rng, 2, *IMG), normal(rng, 2, 3, 4, 5, 2)]


@fixture("permute_repeat", "Permute((2,1)) -> Dense over time; Permute((3,1,2)) -> Conv2D; Permute((2,3,1)); RepeatVector(4) -> LSTM(seq) -> Dense", JSON_H5)
def _(rng):
    s = inp(SEQ, "s")
    i = inp(IMG, "i")
    f = inp((6,), "f")
    outs = [
        layers.Dense(3)(layers.Permute((2, 1))(s)),
        layers.Conv2D(4, 3)(layers.Permute((3, 1, 2))(i)),
        layers.Permute((2, 3, 1))(i),
        layers.Dense(2)(layers.LSTM(3, return_sequences=True)(layers.RepeatVector(4)(layers.Dense(5)(f)))),
    ]
    return keras.Model([s, i, f], outs), [normal(rng, 2, *SEQ), normal(rng, 2, *IMG), normal(rng, 2, 6)]


@fixture("flatten_reshape_mid", "Conv2D -> Reshape((7,27)) -> Dense -> Flatten -> Dense(18) -> Reshape((3,-1)) -> LSTM; Flatten of a Concatenate")
def _(rng):
    i = inp(IMG)
    h = layers.Conv2D(3, 3, padding="same")(i)
    r = layers.Dense(4)(layers.Reshape((7, 27))(h))
    g = layers.Reshape((3, -1))(layers.Dense(18)(layers.Flatten()(r)))
    o1 = layers.LSTM(3)(g)
    o2 = layers.Dense(2)(layers.Flatten()(layers.Concatenate()([h, i])))
    return keras.Model(i, [o1, o2]), [normal(rng, 2, *IMG)]


@fixture("sequential_shape_layers", "Sequential: ZeroPadding2D((1,2)) Conv2D Cropping2D(((0,1),(2,1))) UpSampling2D(2, bilinear) Permute((2,1,3)) UpSampling2D((1,2)) Flatten Dense RepeatVector(3) Permute((2,1)) ZeroPadding1D(1) Cropping1D((0,2)) UpSampling1D(2) Dense")
def _(rng):
    m = keras.Sequential([
        keras.Input(IMG),
        layers.ZeroPadding2D((1, 2)),
        layers.Conv2D(4, 3),
        layers.Cropping2D(((0, 1), (2, 1))),
        layers.UpSampling2D(2, interpolation="bilinear"),
        layers.Permute((2, 1, 3)),
        layers.UpSampling2D((1, 2)),
        layers.Flatten(),
        layers.Dense(5, activation="tanh"),
        layers.RepeatVector(3),
        layers.Permute((2, 1)),
        layers.ZeroPadding1D(1),
        layers.Cropping1D((0, 2)),
        layers.UpSampling1D(2),
        layers.Dense(3),
    ])
    return m, [normal(rng, 3, *IMG)]


@fixture("merge_single_input", "Add, Average, Maximum and Concatenate called on a list of one tensor", JSON_NPZ)
def _(rng):
    x = inp((6,))
    h = layers.Dense(4)(x)
    s = layers.Concatenate()([layers.Add()([h]), layers.Average()([h]), layers.Maximum()([h])])
    return keras.Model(x, [layers.Concatenate()([s]), layers.Dense(2)(s)]), [normal(rng, 3, 6)]


# ---------------------------------------------------------------- masks


@fixture("masked_merges", "Embedding(mask_zero) -> two Dense -> Add / Average / Concatenate(-1) keep the mask -> LSTMs; Add with an unmasked Embedding drops it")
def _(rng):
    ids = inp((8,), "ids", dtype="int32")
    e = layers.Embedding(13, 4, mask_zero=True)(ids)
    d1, d2 = layers.Dense(4)(e), layers.Dense(3)(e)
    a = layers.LSTM(3)(layers.Add()([e, d1]))
    av = layers.LSTM(2, return_sequences=True)(layers.Average()([e, d1, e]))
    c = layers.LSTM(3)(layers.Concatenate()([e, d2]))
    plain = layers.Embedding(13, 4)(ids)
    un = layers.LSTM(3)(layers.Add()([e, plain]))
    # Concatenating with an unmasked tensor makes every step true: Keras's LSTM runs unmasked.
    cu = layers.LSTM(2)(layers.Concatenate()([e, plain]))
    # A second Embedding(mask_zero) on the same ids gives an equal mask.
    e2 = layers.Embedding(13, 4, mask_zero=True)(ids)
    two = layers.LSTM(2)(layers.Add()([e, e2]))
    # Multiply zeroes masked steps; Maximum/Minimum keep the first input there.
    mul = layers.LSTM(2, return_sequences=True)(layers.Multiply()([e, d1]))
    mx = layers.Maximum()([d1, e, e2])
    mn = layers.Minimum()([e, d1])
    return keras.Model(ids, [a, av, c, un, cu, two, mul, mx, mn]), [padded_ids(rng)]


# ---------------------------------------------------------------- files the loader must reject


@bad("bad_channels_first_pad", "channels_last", "ZeroPadding2D(data_format='channels_first')")
def _():
    return keras.Sequential([keras.Input((3, 7, 9)), layers.ZeroPadding2D(1, data_format="channels_first")])


@bad("bad_bicubic", "interpolation", "UpSampling2D(interpolation='bicubic')")
def _():
    return keras.Sequential([keras.Input(IMG), layers.UpSampling2D(2, interpolation="bicubic")])


@bad("bad_masked_multiply", "mask", "Multiply of a masked and an unmasked sequence (Keras substitutes 1 at the masked steps)")
def _():
    ids = inp((8,), "ids", dtype="int32")
    e = layers.Embedding(13, 4, mask_zero=True)(ids)
    plain = layers.Embedding(13, 4)(ids)
    return keras.Model(ids, layers.LSTM(2)(layers.Multiply()([e, plain])))


@bad("bad_masked_concat_time", "mask", "Concatenate(axis=1) of masked sequences (the mask would be concatenated)")
def _():
    ids = inp((8,), "ids", dtype="int32")
    e = layers.Embedding(13, 4, mask_zero=True)(ids)
    return keras.Model(ids, layers.LSTM(2)(layers.Concatenate(axis=1)([e, e])))


@bad("bad_two_masks", "mask", "Add of sequences masked by two different id inputs (Keras ORs the masks)")
def _():
    i1, i2 = inp((8,), "i1", dtype="int32"), inp((8,), "i2", dtype="int32")
    e1 = layers.Embedding(13, 4, mask_zero=True)(i1)
    e2 = layers.Embedding(13, 4, mask_zero=True)(i2)
    return keras.Model([i1, i2], layers.LSTM(2)(layers.Add()([e1, e2])))


@fixture("ops_broadcast", "Operator nodes on equal-rank tensors with size-1 axes: (N,4,5)+(N,1,5), (N,4,5)*(N,4,1), maximum, x - y; ops.expand_dims at axis 2 and -1")
def _(rng):
    x, y = inp((4, 5), "x"), inp((1, 5), "y")
    w = layers.Dense(1)(x)
    outs = [x + y, x * w, ops.maximum(y, w), y - x, ops.expand_dims(x, 2) * 2.0, layers.Dense(2)(ops.expand_dims(x, -1))]
    return keras.Model([x, y], outs), [normal(rng, 3, 4, 5), normal(rng, 3, 1, 5)]


@bad("bad_concat_batch_axis_op", "batch", "keras.ops.concatenate along axis 0 (the batch axis)")
def _():
    a = inp((6,), "a")
    return keras.Model(a, layers.Dense(2)(ops.concatenate([a, a], axis=0)))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for p in OUT.iterdir():
        p.unlink()
    entries = [write_fixture(*f) for f in FIXTURES]
    bads = [write_bad(*b) for b in BAD]
    manifest = {
        "generated_by": "tools/graph_fixtures_merge.py",
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "tolerance": "|got - expected| <= 1e-4 * (1 + |expected|)",
        "fixtures": entries,
        "bad": bads,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(entries)} fixtures, {len(bads)} bad files")


if __name__ == "__main__":
    main()
