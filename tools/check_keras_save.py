"""Loads the .keras files wgnn saved with real Keras and checks them against wgnn.

    WGNN_KERAS_SAVE_DIR=/tmp/wgnn-saved cargo test --release --test keras_save
    .venv-keras/bin/python tools/check_keras_save.py /tmp/wgnn-saved

The test run saves every committed model (shipped models, tests/fixtures/, graph/, legacy/,
the TextVectorization model) with `Model::save` into the folder, with each case's inputs and
wgnn's outputs, listed in manifest-*.json. For each case this script runs
`keras.saving.load_model` on the saved file and `model.predict` on the same inputs, and checks
|keras - wgnn| <= 1e-4 * (1 + |wgnn|) for every element of every output. For the optimizer case
(an Adam state wgnn wrote under optimizer/vars) it checks that load_model restores it:
`model.optimizer.variables` equal the variables wgnn was given, one for one.

A case Keras cannot run is reported as `skip` (not a failure) only when Keras fails the same
way on the file wgnn read it from: fixtures whose config Keras 3 refuses, or ops TensorFlow's
CPU kernels refuse. Prints one line per case and a summary; exits 1 if any case fails.
"""

import glob
import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402

TOLERANCE = 1e-4


def as_list(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def check_prediction(folder, case):
    model = keras.saving.load_model(os.path.join(folder, case["model"]))
    got = as_list(model.predict(feed(model, folder, case), verbose=0))
    want = [np.load(os.path.join(folder, name)) for name in case["outputs"]]
    if len(got) != len(want):
        return False, f"{len(got)} outputs, wgnn has {len(want)}", None
    worst = 0.0
    for k, (g, w) in enumerate(zip(got, want)):
        g = np.asarray(g, dtype=np.float32)
        if g.shape != w.shape:
            return False, f"output {k}: shape {g.shape}, wgnn {w.shape}", None
        both_nan = np.isnan(g) & np.isnan(w)
        err = np.where(both_nan, 0.0, np.abs(g - w) / (1.0 + np.abs(w)))
        bad = ~(err <= TOLERANCE)
        if bad.any():
            i = int(np.argmax(bad.reshape(-1)))
            return False, (
                f"output {k}: {int(bad.sum())} of {g.size} elements off, e.g. #{i}: "
                f"keras {g.reshape(-1)[i]}, wgnn {w.reshape(-1)[i]}"
            ), None
        worst = max(worst, float(err.max()) if err.size else 0.0)
    return True, f"{len(got)} outputs, max |keras - wgnn| / (1 + |wgnn|) = {worst:.2e}", worst


def feed(model, folder, case):
    """The case's inputs as Keras takes them."""
    if "texts" in case:
        import tensorflow as tf

        return tf.constant(case["texts"])
    inputs = []
    for name, is_ids, spec in zip(case["inputs"], case["ids"], model.inputs):
        x = np.load(os.path.join(folder, name))
        # Token ids were exported as integral floats; Keras takes them in the input's dtype.
        inputs.append(x.astype(spec.dtype) if is_ids else x)
    return inputs if len(inputs) > 1 else inputs[0]


def source_fails_in_keras(folder, case):
    """Why Keras cannot run the model wgnn saved from, if it cannot (a config Keras 3 refuses,
    an op TensorFlow's CPU kernels refuse); None when it runs."""
    source, weights = case.get("source"), case.get("source_weights")
    if not source:
        return None
    try:
        if weights:
            model = keras.models.model_from_json(open(source).read())
            if weights.endswith(".npz"):
                saved = np.load(weights)
                model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
            else:
                model.load_weights(weights)
        else:
            model = keras.saving.load_model(source)
        model.predict(feed(model, folder, case), verbose=0)
        return None
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def check_optimizer(folder, case):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras.saving.load_model(os.path.join(folder, case["model"]))
    skipped = [str(w.message) for w in caught if "Skipping variable loading" in str(w.message)]
    if skipped:
        return False, skipped[0], None
    saved = np.load(os.path.join(folder, case["variables"]))
    want = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    got = model.optimizer.variables
    if len(got) != len(want):
        return False, f"Keras's optimizer has {len(got)} variables, wgnn wrote {len(want)}", None
    for name, v, w in zip(case["names"], got, want):
        g = np.asarray(v.numpy())
        if g.shape != w.shape or not np.array_equal(g.astype(np.float64), w.astype(np.float64)):
            return False, f"{name} ({v.path}): keras {g.reshape(-1)[:4]}, wgnn {w.reshape(-1)[:4]}", None
    it = int(np.asarray(model.optimizer.iterations.numpy()))
    return True, (
        f"{type(model.optimizer).__name__}: {len(got)} variables restored equal "
        f"(iterations {it}, learning_rate {float(model.optimizer.learning_rate.numpy()):g})"
    ), None


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    folder = sys.argv[1]
    manifests = sorted(glob.glob(os.path.join(folder, "manifest-*.json")))
    if not manifests:
        sys.exit(f"no manifest-*.json in {folder}: run the keras_save test with WGNN_KERAS_SAVE_DIR={folder}")
    passed, failed, unrunnable, worst = 0, [], [], (0.0, None)
    for path in manifests:
        for case in json.load(open(path))["cases"]:
            check = check_optimizer if "variables" in case else check_prediction
            try:
                ok, message, err = check(folder, case)
            except Exception as e:  # a file Keras cannot load is a failure, reported by name
                ok, message, err = False, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}", None
            if err is not None and err >= worst[0]:
                worst = (err, case["id"])
            why = None if ok or "variables" in case else source_fails_in_keras(folder, case)
            if why:
                # Not a saving problem: Keras cannot run the file wgnn read either.
                print(f"skip {case['id']}: {message}; Keras fails on the source too: {why}")
                unrunnable.append(case["id"])
                continue
            print(f"{'ok  ' if ok else 'FAIL'} {case['id']}: {message}", flush=True)
            if ok:
                passed += 1
            else:
                failed.append(case["id"])
    print(f"{passed} passed, {len(failed)} failed, {len(unrunnable)} that Keras cannot run "
          f"from their source file either; largest |keras - wgnn| / (1 + |wgnn|): "
          f"{worst[0]:.2e} ({worst[1]})")
    if unrunnable:
        print("Keras cannot run (source and saved alike):", " ".join(unrunnable))
    if failed:
        print("failed:", " ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
