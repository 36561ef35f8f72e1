#!/usr/bin/env python3
"""Keras fixture for the graph-IR CLI test (tests/cli.rs): a Functional model with two inputs
and two outputs whose branches are independent, so it needs no merge layer.

    TF_ENABLE_ONEDNN_OPTS=0 .venv-keras/bin/python tools/graph_fixtures_ir.py

Writes tests/fixtures/graph/ir/: two_branches.keras, two_branches.input<k>.npy (model.inputs
order), two_branches.expected<k>.npy (model.outputs order, Keras's predict on the model as
reloaded from the .keras file) and manifest.json in the format of tests/fixtures/graph/.
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
from keras import layers  # noqa: E402

from keras_fixtures import normal, randomize, rng_for, save_keras  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "graph" / "ir"


def two_branches():
    """Inputs [vector (5,), image (7, 9, 3)], the image Input made first; outputs
    [reg (2,), cls (4,)], listed in the reverse of the order their layers were made."""
    image = keras.Input((7, 9, 3), name="image")
    vector = keras.Input((5,), name="vector")
    c = layers.Conv2D(4, 3, activation="relu", name="conv")(image)
    c = layers.GlobalAveragePooling2D(name="gap")(c)
    cls = layers.Dense(4, activation="softmax", name="cls")(c)
    h = layers.Dense(6, activation="tanh", name="hidden")(vector)
    reg = layers.Dense(2, name="reg")(h)
    return keras.Model(inputs=[vector, image], outputs=[reg, cls], name="two_branches")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    name = "two_branches"
    keras.backend.clear_session()
    rng = rng_for(name)
    model = two_branches()
    randomize(model, rng)
    xs = [normal(rng, 3, 5, std=2.0), normal(rng, 3, 7, 9, 3, std=2.0)]
    path = OUT / f"{name}.keras"
    save_keras(model, path)
    reloaded = keras.models.load_model(path)
    expected = [np.asarray(e, dtype=np.float32) for e in reloaded.predict(xs, verbose=0)]
    in_memory = model.predict(xs, verbose=0)
    inputs, outputs = [], []
    for k, x in enumerate(xs):
        fname = f"{name}.input{k}.npy"
        np.save(OUT / fname, x)
        inputs.append({"file": fname, "kind": "float", "shape": list(x.shape),
                       "name": reloaded.inputs[k].name})  # fmt: skip
    for k, (e, m, oname) in enumerate(zip(expected, in_memory, ["reg", "cls"])):
        assert np.max(np.abs(e - m)) <= 1e-6 * (1 + np.max(np.abs(e))), f"output {k} differs on reload"
        std = float(e.std())
        assert std > 0.05, f"output {k} std {std} is near-constant"
        assert e.std(axis=0).max() > 1e-3, f"output {k} does not vary across the batch"
        fname = f"{name}.expected{k}.npy"
        np.save(OUT / fname, e)
        outputs.append({"name": oname, "file": fname, "shape": list(e.shape), "std": round(std, 4)})
    entry = {
        "name": name,
        "description": two_branches.__doc__.split("\n")[0].strip() + " " + two_branches.__doc__.split("\n")[1].strip(),
        "model": path.name,
        "form": "keras",
        "inputs": inputs,
        "outputs": outputs,
    }
    manifest = {"generated_by": "tools/graph_fixtures_ir.py", "keras_version": keras.__version__,
                "backend": keras.backend.backend(), "fixtures": [entry]}  # fmt: skip
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for o in outputs:
        print(o)


if __name__ == "__main__":
    main()
