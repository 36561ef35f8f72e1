"""Conv-family fixtures for tests/graph_conv.rs beyond tools/graph_fixtures.py's: (1) its three
Keras-2-layout (legacy .h5) conv fixtures, re-saved as Keras 3 files with the same model,
weights, inputs and expected outputs (checked against Keras again), since this branch does not
read legacy .h5; (2) options its set leaves out: dilated transposed convolutions, dilated
depthwise 1-D and separable convs, grouped causal dilated Conv1D, a bigger batch.

Run with the Keras venv from the repository root:
    TF_ENABLE_ONEDNN_OPTS=0 /work/main/.venv-keras/bin/python tools/graph_fixtures_conv.py
It rewrites those entries of tests/fixtures/graph/conv/manifest.json in place.
"""

import json
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

DIR = os.path.join("tests", "fixtures", "graph", "conv")


def load_legacy(entry):
    model_path = os.path.join(DIR, entry["model"])
    if entry.get("weights"):
        with open(model_path) as f:
            model = keras.models.model_from_json(f.read())
        model.load_weights(os.path.join(DIR, entry["weights"]))
    else:
        model = keras.models.load_model(model_path, compile=False)
    return model


def dilated_transpose(layer, x):
    """TensorFlow's CPU kernels refuse dilated transposed convolutions, so the expected output
    is computed as what a transposed convolution is: the gradient, with respect to its input, of
    the dilated forward convolution (which TF runs) whose kernel (k..., F, C) maps an
    output-shaped tensor of F channels to the layer's input of C channels. Then bias and
    activation, as the layer applies them."""
    import tensorflow as tf

    kernel, bias = layer.get_weights()
    out_shape = (x.shape[0],) + tuple(layer.compute_output_shape(x.shape)[1:])
    z = tf.zeros(out_shape)
    with tf.GradientTape() as tape:
        tape.watch(z)
        fwd = tf.nn.convolution(z, kernel, strides=1, padding=layer.padding.upper(),
                                dilations=list(layer.dilation_rate))
        assert tuple(fwd.shape) == x.shape, (fwd.shape, x.shape)
        inner = tf.reduce_sum(fwd * x)
    y = tape.gradient(inner, z).numpy() + bias
    return keras.ops.convert_to_numpy(layer.activation(y))


def new_fixtures():
    layers = keras.layers
    rng = np.random.default_rng(20261201)

    def seq(shape, *ls):
        return keras.Sequential([keras.Input(shape)] + list(ls))

    specs = [
        ("conv2d_transpose_dilation2_same", "Conv2DTranspose(3, 3, dilation_rate=2, same) on 7x9x3",
         (7, 9, 3), [layers.Conv2DTranspose(3, 3, dilation_rate=2, padding="same")]),
        ("conv1d_transpose_dilation2_valid", "Conv1DTranspose(4, 3, dilation_rate=2, valid) relu on (N,11,5)",
         (11, 5), [layers.Conv1DTranspose(4, 3, dilation_rate=2, activation="relu")]),
        ("depthwise1d_dilation2_m2", "DepthwiseConv1D(3, dilation_rate=2, depth_multiplier=2, same) on (N,11,5)",
         (11, 5), [layers.DepthwiseConv1D(3, dilation_rate=2, depth_multiplier=2, padding="same")]),
        ("separable2d_dilation2", "SeparableConv2D(4, 3, dilation_rate=2, same, tanh) on 7x9x3",
         (7, 9, 3), [layers.SeparableConv2D(4, 3, dilation_rate=2, padding="same", activation="tanh")]),
        ("conv1d_groups3_causal_dilation2", "Conv1D(6, 3, groups=3, causal, dilation_rate=2) on (N,13,6)",
         (13, 6), [layers.Conv1D(6, 3, groups=3, padding="causal", dilation_rate=2)]),
        ("conv3d_groups2_valid", "Conv3D(4, 2, groups=2, valid) on 4x5x6x4",
         (4, 5, 6, 4), [layers.Conv3D(4, 2, groups=2)]),
        ("conv2d_plain_batch5", "Conv2D(5, 3, same, relu) -> MaxPooling2D -> Conv2D(6, 3) on 9x11x8, batch 5 (the Winograd and im2col paths)",
         (9, 11, 8), [layers.Conv2D(5, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
                      layers.Conv2D(6, 3)]),
    ]
    entries = []
    for name, description, shape, ls in specs:
        model = seq(shape, *ls)
        # Real-scale weights: the initializers' kernels, biases around 0.3.
        for layer in model.layers:
            ws = layer.get_weights()
            layer.set_weights([w if w.ndim > 1 else rng.normal(0.0, 0.3, w.shape).astype("float32")
                               for w in ws])
        batch = 5 if name.endswith("batch5") else 3
        x = rng.normal(0.0, 1.0, (batch,) + shape).astype("float32")
        if "transpose_dilation" in name:
            y = dilated_transpose(model.layers[-1], x)
        else:
            y = model.predict(x, verbose=0)
        assert y.std() > 0.05, name
        model.save(os.path.join(DIR, f"{name}.keras"))
        np.save(os.path.join(DIR, f"{name}.input0.npy"), x)
        np.save(os.path.join(DIR, f"{name}.expected0.npy"), y)
        entries.append({
            "name": name,
            "description": description,
            "model": f"{name}.keras",
            "form": "keras",
            "inputs": [{"file": f"{name}.input0.npy", "kind": "float", "shape": list(x.shape),
                        "name": model.inputs[0].name}],
            "outputs": [{"name": model.layers[-1].name, "file": f"{name}.expected0.npy",
                         "shape": list(y.shape), "std": round(float(y.std()), 3)}],
        })
        print("wrote", name)
    return entries


def main():
    path = os.path.join(DIR, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    for entry in manifest["fixtures"]:
        if entry["form"] != "legacy_h5":
            continue
        model = load_legacy(entry)
        xs = [np.load(os.path.join(DIR, i["file"])) for i in entry["inputs"]]
        got = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
        got = got if isinstance(got, list) else [got]
        for g, o in zip(got, entry["outputs"]):
            want = np.load(os.path.join(DIR, o["file"]))
            assert np.allclose(g, want, rtol=0, atol=1e-6), entry["name"]
        old = [entry["model"]] + ([entry["weights"]] if entry.get("weights") else [])
        name = entry["name"]
        model.save(os.path.join(DIR, f"{name}.keras"))
        for f in old:
            os.remove(os.path.join(DIR, f))
        entry["model"] = f"{name}.keras"
        entry.pop("weights", None)
        entry["form"] = "keras"
        entry["description"] += " (re-saved from Keras 2 .h5 as .keras)"
        print("rewrote", name)
    new = new_fixtures()
    names = {e["name"] for e in new}
    manifest["fixtures"] = [e for e in manifest["fixtures"] if e["name"] not in names] + new
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
