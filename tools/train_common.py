"""What tools/train_fixtures.py and tools/train_acceptance.py share: the Keras set-up every
training reference is made under, real-scale weights, targets for a loss, pinned-timestamp
files, and the Format B (fit) writer. The formats are documented in
tests/fixtures/train/README.md.

Keras set-up: TF_ENABLE_ONEDNN_OPTS=0 before TensorFlow is imported, op determinism, one
intra-op and one inter-op thread (Eigen may split a reduction by thread count, so files would
otherwise depend on the machine), keras.utils.set_random_seed per case. No layer draws random
numbers during training (every dropout rate is 0), so nothing depends on Keras's RNG streams.
"""

import json
import os
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import logging  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.experimental.enable_op_determinism()
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402

from keras_fixtures import FIXED_ZIP_TIME, save_keras  # noqa: E402

logging.getLogger("tensorflow").setLevel(logging.ERROR)
# A softmax/sigmoid output with from_logits=True is one of the cases (Keras warns about it).
warnings.filterwarnings("ignore", message=".*received `from_logits=True`.*")
warnings.filterwarnings("ignore", message=".*does not have any trainable weights.*")
# Loading a model saved before training: the saved optimizer holds only iterations and
# learning_rate, the rebuilt one more; Keras skips them and starts fresh, as fit from scratch does.
warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer.*")

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 13


def seed_of(name):
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def start_case(name):
    """Fresh layer names (dense, dense_1 ...), Keras's seed and a numpy generator, all from the
    case's name: reruns give the same files, and adding a case changes no other."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed_of(name))
    return np.random.default_rng(seed_of(name))


# ---------------------------------------------------------------- data


def normal(rng, *shape, std=1.0, mean=0.0):
    return rng.normal(mean, std, shape).astype(np.float32)


def padded_ids(rng, lengths, steps, vocab=VOCAB):
    """Post-padded token ids (0 = padding) with the given lengths per row."""
    ids = np.zeros((len(lengths), steps), dtype=np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1, vocab, n)
    return ids


def mixed_lengths(rng, batch, steps):
    """Lengths for a masked batch: one full-length row, one of length 1, the rest in between."""
    lengths = [steps, 1] + [int(v) for v in rng.integers(2, steps, batch - 2)]
    return [lengths[i] for i in rng.permutation(batch)]


def loss_kind(loss):
    """Which kind of target a loss wants: 'regression', 'binary', 'onehot' or 'sparse'."""
    fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    name = getattr(fn, "name", None) or getattr(fn, "__name__", "")
    name = type(fn).__name__ if name in ("", None) else name
    for key, kind in [
        ("sparse_categorical", "sparse"),
        ("categorical", "onehot"),
        ("binary", "binary"),
    ]:
        if key in name.lower() or key in type(fn).__name__.lower():
            return kind
    return "regression"


def targets_for(rng, loss, shape):
    """Targets of a model output of `shape` (batch first) for `loss`."""
    kind = loss_kind(loss)
    if kind == "sparse":
        return rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)
    if kind == "onehot":
        return np.eye(shape[-1], dtype=np.float32)[rng.integers(0, shape[-1], shape[:-1])]
    if kind == "binary":
        return (rng.uniform(size=shape) < 0.5).astype(np.float32)
    return normal(rng, *shape)


# ---------------------------------------------------------------- weights

# Behind sigmoid gates and o * tanh(c), recurrent weights at the plain scale leave outputs near 0.
RECURRENT_GAIN = {"lstm_cell": 2.0, "gru_cell": 1.5}


def randomize(model, rng, gain=1.0):
    """Real-scale weights by name: kernels ~ N(0, g*min(0.5, 1.5/sqrt(fan_in))) (depthwise
    kernels count only the window), biases/beta ~ N(0, 0.3), BatchNormalization moving_mean ~
    N(0, 0.5) and moving_variance ~ U(0.5, 2), gamma/scale ~ U(0.5, 1.5), PReLU alpha ~
    N(0.2, 0.4), embeddings ~ N(0, 1). Recurrent cells get RECURRENT_GAIN on top of g."""
    for v in model.weights:
        shape = tuple(int(d) for d in v.shape)
        name = v.name
        g = gain
        for cell, cg in RECURRENT_GAIN.items():
            if f"/{cell}/" in v.path or v.path.startswith(f"{cell}/"):
                g *= cg
        if name == "embeddings":
            w = rng.normal(0.0, 1.0, shape)
        elif name in ("bias", "beta"):
            w = rng.normal(0.0, 0.3, shape)
        elif name == "moving_mean":
            w = rng.normal(0.0, 0.5, shape)
        elif name == "moving_variance":
            w = rng.uniform(0.5, 2.0, shape)
        elif name in ("gamma", "scale"):
            w = rng.uniform(0.5, 1.5, shape)
        elif name == "alpha":
            w = rng.normal(0.2, 0.4, shape)
        else:
            if name == "depthwise_kernel":
                fan_in = int(np.prod(shape[:-2]))
            else:
                fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            w = rng.normal(0.0, g * min(0.5, 1.5 / np.sqrt(fan_in)), shape)
        v.assign(np.asarray(w, dtype=v.dtype))


def as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def check_spread(name, outputs, what="output"):
    """Every output is finite and differs between batch rows (deep stacks can collapse)."""
    for k, o in enumerate(outputs):
        o = np.asarray(o, dtype=np.float64)
        assert np.all(np.isfinite(o)), f"{name}: {what} {k} is not finite"
        across = float(o.reshape(o.shape[0], -1).std(axis=0).max())
        assert across > 1e-2, f"{name}: {what} {k} barely differs between batch rows ({across:.2e})"


def spread(outputs):
    """The largest std across the batch, over all outputs (the manifest records it)."""
    return max(float(np.asarray(o).reshape(len(o), -1).std(axis=0).max()) for o in outputs)


# ---------------------------------------------------------------- files


def write_npz(path, arrays):
    """An .npz (entries NAME.npy, deflated) with pinned entry timestamps, so reruns give
    identical bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for key, a in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w") as f:
                # order="C" keeps 0-d scalars 0-d (np.ascontiguousarray makes them shape (1,)).
                np.lib.format.write_array(f, np.asarray(a, order="C"), allow_pickle=False)


def save_model(model, path, deflate):
    """model.save with pinned timestamps and shared-object ids (keras_fixtures.save_keras); with
    `deflate`, the zip entries are recompressed (Keras writes them stored; its loader, and any zip
    reader, takes either), which makes the mostly-empty HDF5 weights ~8x smaller."""
    save_keras(model, path)
    if not deflate:
        return
    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in entries:
            pinned = zipfile.ZipInfo(info.filename, date_time=FIXED_ZIP_TIME)
            pinned.compress_type = zipfile.ZIP_DEFLATED
            pinned.external_attr = info.external_attr
            z.writestr(pinned, data, compresslevel=9)


def write_json(path, value):
    path.write_text(json.dumps(value, indent=1) + "\n")


def model_call_input(model, xs):
    """The structure Keras's fit hands the model: one array, or a list for several inputs."""
    return xs[0] if len(model.inputs) == 1 else list(xs)


def model_targets(model, ys):
    return ys[0] if len(model.outputs) == 1 else list(ys)


def input_entries(model, xs):
    return [
        {"name": t.name, "shape": list(x.shape), "dtype": str(x.dtype)} for t, x in zip(model.inputs, xs)
    ]


def weight_entries(variables):
    return [{"path": v.path, "shape": [int(d) for d in v.shape]} for v in variables]


# ---------------------------------------------------------------- Format B: fit cases


@dataclass
class FitCase:
    name: str
    description: str
    build: Callable  # rng -> (model, [x], [y]) ; the model is randomized afterwards
    optimizer: Callable  # () -> keras optimizer (a fresh one per case)
    loss: object
    metrics: list = field(default_factory=list)
    epochs: int = 3
    batch_size: int = 16
    validation_split: float = 0.0
    gain: float = 1.0
    loss_weights: list | None = None  # compile's loss_weights (several outputs)


def ulp_up(weights):
    return [np.nextafter(w, np.inf).astype(w.dtype) if w.dtype.kind == "f" else w for w in weights]


def run_fit(path, case, xs, ys, perturb=False):
    """Loads the saved model (so the reference is what the file says, compile config included),
    optionally moves every weight up by one ulp, fits, and returns (history, weights after,
    inference predictions on xs)."""
    keras.utils.set_random_seed(seed_of(case.name))
    model = keras.models.load_model(path)
    if perturb:
        model.set_weights(ulp_up(model.get_weights()))
    history = model.fit(
        model_call_input(model, xs),
        model_targets(model, ys),
        epochs=case.epochs,
        batch_size=case.batch_size,
        shuffle=False,
        validation_split=case.validation_split,
        verbose=0,
    )
    weights = [np.asarray(v.numpy()) for v in model.weights]
    preds = as_list(model.predict(model_call_input(model, xs), batch_size=case.batch_size, verbose=0))
    return history.history, weights, preds, model


def rel_diff(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / (1.0 + np.abs(a)))) if a.size else 0.0


def history_arrays(history):
    """history -> npz entries: loss, val_loss, m_<metric>, val_m_<metric>."""
    out = {}
    for key, values in history.items():
        if key in ("loss", "val_loss"):
            k = key
        elif key.startswith("val_"):
            k = "val_m_" + key[4:]
        else:
            k = "m_" + key
        out[k] = np.asarray(values, dtype=np.float32)
    return out


def write_fit_case(case, out_dir, deflate):
    """Writes out_dir/NAME.keras (before training; see save_model for `deflate`) and NAME.npz;
    returns the manifest entry."""
    t0 = time.time()
    rng = start_case(case.name)
    model, xs, ys = case.build(rng)
    randomize(model, rng, case.gain)
    model.compile(optimizer=case.optimizer(), loss=case.loss, metrics=case.metrics, loss_weights=case.loss_weights)
    xs = [x if x.dtype == np.int32 else x.astype(np.float32) for x in xs]
    before = as_list(model.predict(model_call_input(model, xs), batch_size=case.batch_size, verbose=0))
    check_spread(case.name, before, "initial prediction")
    path = out_dir / f"{case.name}.keras"
    save_model(model, path, deflate)

    history, weights, preds, trained = run_fit(path, case, xs, ys)
    d_history, d_weights, d_preds, _ = run_fit(path, case, xs, ys, perturb=True)

    for key, values in history.items():
        assert np.all(np.isfinite(values)), f"{case.name}: history {key} is not finite: {values}"
    check_spread(case.name, preds, "trained prediction")
    loaded = keras.models.load_model(path)
    initial = [np.asarray(v.numpy()) for v in loaded.weights]
    changed = [float(np.max(np.abs(w - i))) if w.size else 0.0 for w, i in zip(weights, initial)]
    trainable_paths = {v.path for v in trained.trainable_weights}
    for v, c in zip(trained.weights, changed):
        if v.path in trainable_paths:
            assert c > 0, f"{case.name}: trainable weight {v.path} did not move in training"

    arrays = {f"x{i}": x for i, x in enumerate(xs)}
    arrays.update({f"y{i}": y for i, y in enumerate(ys)})
    arrays.update(history_arrays(history))
    arrays.update({f"w{i}": w for i, w in enumerate(weights)})
    arrays.update({f"pred{i}": np.asarray(p, np.float32) for i, p in enumerate(preds)})
    arrays["drift_loss"] = np.abs(
        np.asarray(history["loss"], np.float64) - np.asarray(d_history["loss"], np.float64)
    ).astype(np.float32)
    arrays["drift_w"] = np.asarray([rel_diff(a, b) for a, b in zip(weights, d_weights)], np.float32)
    arrays["drift_pred"] = np.float32(max(rel_diff(a, b) for a, b in zip(preds, d_preds)))
    write_npz(out_dir / f"{case.name}.npz", arrays)

    compile_config = trained.get_compile_config()
    samples = int(xs[0].shape[0])
    val = int(samples * case.validation_split)
    entry = {
        "name": case.name,
        "description": case.description,
        "epochs": case.epochs,
        "batch_size": case.batch_size,
        "shuffle": False,
        "validation_split": case.validation_split,
        "samples": samples,
        "train_samples": samples - val,
        "compile": {
            "loss": compile_config.get("loss"),
            "loss_weights": compile_config.get("loss_weights"),
            "optimizer": compile_config.get("optimizer"),
            "metrics": compile_config.get("metrics"),
        },
        "inputs": input_entries(trained, xs),
        "weights": [
            {"path": v.path, "shape": [int(d) for d in v.shape], "trainable": v.path in trainable_paths}
            for v in trained.weights
        ],
        "history": {k: [round(float(x), 6) for x in v] for k, v in history.items()},
        "max_drift": {
            "loss": float(arrays["drift_loss"].max()),
            "w": float(arrays["drift_w"].max()) if len(weights) else 0.0,
            "pred": float(arrays["drift_pred"]),
        },
    }
    print(f"fit  {case.name:34} {time.time() - t0:6.1f}s  loss {history['loss']}  drift {entry['max_drift']}")
    return entry
