#!/usr/bin/env python3
"""Checks `wgnn train` from the command line against Keras's `fit` on the acceptance set.

    .venv-keras/bin/python tools/train_acceptance.py --out /tmp/train_acc
    cargo build --release --bin wgnn
    .venv-keras/bin/python tools/check_train_acceptance.py /tmp/train_acc
    .venv-keras/bin/python tools/check_train_acceptance.py /tmp/train_acc --only 'acc_text_*' --keep /tmp/k
    .venv-keras/bin/python tools/check_train_acceptance.py /tmp/train_acc --backend gpu

For every case in DIR/manifest.json (Format B, tests/fixtures/train/README.md) it writes the
case's x0.., y0.. as .npy files and runs, exactly as a user would,

    wgnn train NAME.keras --x x0.npy .. --y y0.npy .. --epochs E --batch-size B --no-shuffle \\
        --backend cpu -o OUT.keras --json                      (and again with --save-optimizer)

(`--backend gpu` trains on the GPU instead, under the same bounds; `wgnn predict` stays on the CPU.)

from the weights and compile config (loss, optimizer, metrics) saved in NAME.keras. Then:

  loss     the per-epoch loss of the --json line vs Keras's history
  metrics  every other key of Keras's history vs the --json line's (1e-4·(1+|e|)): the metrics
           and, with several outputs, each output's unweighted loss (`reg_loss`, ...; these, like
           the loss, within the drift tolerance too); a key missing on either side fails
  weights  keras.saving.load_model(OUT.keras).weights vs Keras's trained weights, per tensor
  pred     Keras's predictions of OUT.keras vs Keras's predictions of its own trained model
  predict  Keras's predictions of OUT.keras vs `wgnn predict OUT.keras` (1e-4·(1+|p|))
  opt      the optimizer variables Keras restores from the --save-optimizer OUT.keras vs Keras's
           own after E epochs (iterations exact)
  r_loss   resuming: load_model(OUT.keras) + one more fit epoch on the same batches, vs Keras's
  r_w      own model fitted E epochs and then one more (that epoch's loss; the weights after)

Unless noted, a difference d = max |got − expected| / (1 + |expected|) (or |got − expected| for
a loss) passes when d <= max(1e-4·(1+|e|), DRIFT_MULTIPLE · drift), where drift is what Keras
shows against itself when every starting weight moves up by one ulp (the npz's drift_loss,
drift_w, drift_pred for the E epochs; for the optimizer variables and the resumed epoch this
script measures it the same way). The first table shows, per check, the largest d / tolerance
(<= 1 passes); the second the largest d and, in brackets, the largest d / drift. With --strict,
a drift check also fails when d is over DRIFT_MULTIPLE · drift (a zero drift counting as one
float32 ulp) however far below 1e-4 it is: "a small multiple of Keras's own drift", literally.

Keras runs under the set-up the references were made under (train_common.py: op determinism,
one thread, the case's seed), and this script first reproduces the reference's E-epoch history
and weights bit for bit (column `det`), so the continued run is Keras's own. The files it
writes (npy inputs, OUT.keras) go to a temporary folder, or under --keep.
Exits 1 if any check of any case fails.
"""

import argparse
import fnmatch
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from train_common import ROOT, as_list, model_call_input, model_targets, seed_of, ulp_up

import keras  # noqa: E402  (configured by train_common: op determinism, one thread)
import numpy as np  # noqa: E402

DRIFT_MULTIPLE = 4.0
CHECKS = ["loss", "metrics", "weights", "pred", "predict", "opt", "r_loss", "r_w"]
# The checks measured against Keras's one-ulp drift (the others against 1e-4 alone).
DRIFT_CHECKS = ["loss", "weights", "pred", "opt", "r_loss", "r_w"]
# A drift of 0 (Keras's loss unmoved by the ulp) is counted as one float32 ulp of the value.
EPS = float(np.finfo(np.float32).eps)


def rel(got, want):
    """max |got - want| / (1 + |want|) over all elements (0 for empty tensors)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shape {got.shape} vs {want.shape}")
    return float(np.max(np.abs(got - want) / (1.0 + np.abs(want)))) if want.size else 0.0


def tol(drift, want=0.0):
    return max(1e-4 * (1.0 + abs(float(want))), DRIFT_MULTIPLE * float(drift))


class Case:
    """One case's results: the worst d / tolerance per check and the first failure of each."""

    def __init__(self, name, strict=False):
        self.name = name
        self.strict = strict
        self.ratio = {}  # check -> the largest d / tolerance
        self.dmax = {}  # check -> the largest d
        self.mult = {}  # check -> the largest d / drift
        self.notes = []
        self.det = None

    def record(self, check, d, t, what, drift=None, scale=0.0):
        """A difference d against tolerance t; with `drift`, also d as a multiple of it (a zero
        drift counts as one ulp of a value of size `scale`)."""
        ratio = d / t
        self.ratio[check] = max(ratio, self.ratio.get(check, -1.0))
        self.dmax[check] = max(float(d), self.dmax.get(check, 0.0))
        if drift is not None:
            mult = d / max(float(drift), EPS * (1.0 + abs(float(scale))))
            self.mult[check] = max(mult, self.mult.get(check, 0.0))
            if self.strict and not mult <= DRIFT_MULTIPLE:
                self.notes.append(f"{check} (strict): {what}: {mult:.1f}x Keras's drift")
        if not ratio <= 1.0:
            self.notes.append(f"{check}: {what}")

    def fail(self, check, why):
        self.ratio[check] = float("inf")
        self.notes.append(f"{check}: {why}")

    @property
    def ok(self):
        return all(r <= 1.0 for r in self.ratio.values()) and not self.notes


def run(cmd):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:2]))} exited {done.returncode}: {done.stderr.strip()[-800:]}")
    return done.stdout


# The backend `wgnn train` runs on (--backend).
TRAIN_BACKEND = "cpu"


def wgnn_train(wgnn, model, xs, ys, entry, out, save_optimizer):
    cmd = [wgnn, "train", model]
    for x in xs:
        cmd += ["--x", x]
    for y in ys:
        cmd += ["--y", y]
    cmd += ["--epochs", entry["epochs"], "--batch-size", entry["batch_size"], "--no-shuffle", "--backend", TRAIN_BACKEND]
    if entry.get("validation_split"):
        cmd += ["--validation-split", entry["validation_split"]]
    cmd += ["-o", out, "--json"]
    if save_optimizer:
        cmd.append("--save-optimizer")
    lines = run(cmd).strip().splitlines()
    return json.loads(lines[-1])


def wgnn_predict(wgnn, model, xs, out, names, batch_size):
    """`wgnn predict`: one .npy for one output, else an .npz with one array per output name."""
    run([wgnn, "predict", model, *xs, "-o", out, "--backend", "cpu", "--batch-size", batch_size])
    if len(names) == 1:
        return [np.load(out)]
    z = np.load(out)
    if sorted(z.files) != sorted(names):
        raise ValueError(f"wgnn predict wrote {z.files}, the model's outputs are {names}")
    return [z[k] for k in names]


def output_names(model):
    """The output names wgnn predict keys its .npz by (a Sequential has one output, unnamed here)."""
    return list(getattr(model, "output_names", None) or [o.name for o in model.outputs])


def load_quiet(path):
    """load_model, returning the model and the 'Skipping variable loading' warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras.saving.load_model(path)
    return model, [str(w.message) for w in caught if "Skipping variable loading" in str(w.message)]


def fit(model, entry, xs, ys, epochs):
    return model.fit(
        model_call_input(model, xs),
        model_targets(model, ys),
        epochs=epochs,
        batch_size=entry["batch_size"],
        shuffle=False,
        validation_split=entry.get("validation_split") or 0.0,
        verbose=0,
    ).history


def keras_run(path, entry, xs, ys, perturb):
    """Keras's own run: load NAME.keras (optionally one ulp up), fit E epochs, record the state,
    fit one more epoch (a second fit call, as a resumed run is). Returns (history E, weights E,
    optimizer variables E, loss of epoch E+1, weights after E+1)."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed_of(entry["name"]))
    model = keras.models.load_model(path)
    if perturb:
        model.set_weights(ulp_up(model.get_weights()))
    history = fit(model, entry, xs, ys, entry["epochs"])
    weights = [np.asarray(v.numpy()) for v in model.weights]
    opt = [(v.path, np.asarray(v.numpy())) for v in model.optimizer.variables]
    more = fit(model, entry, xs, ys, 1)
    return history, weights, opt, float(more["loss"][0]), [np.asarray(v.numpy()) for v in model.weights]


def check_case(folder, entry, wgnn, work, strict):
    name = entry["name"]
    c = Case(name, strict)
    z = np.load(folder / f"{name}.npz")
    xs = [z[f"x{i}"] for i in range(len(entry["inputs"]))]
    ys = [z[k] for k in sorted((k for k in z.files if k[0] == "y" and k[1:].isdigit()), key=lambda k: int(k[1:]))]
    ref_w = [z[f"w{i}"] for i in range(len(entry["weights"]))]
    ref_pred = [z[k] for k in sorted((k for k in z.files if k.startswith("pred")), key=lambda k: int(k[4:]))]
    drift_loss, drift_w, drift_pred = z["drift_loss"], z["drift_w"], float(z["drift_pred"])
    model_path = folder / f"{name}.keras"

    x_files, y_files = [], []
    for i, x in enumerate(xs):
        x_files.append(work / f"x{i}.npy")
        np.save(x_files[-1], x)
    for i, y in enumerate(ys):
        y_files.append(work / f"y{i}.npy")
        np.save(y_files[-1], y)

    # (a) the run as the must-show writes it, and again with --save-optimizer.
    out_a, out_c = work / "out.keras", work / "out_opt.keras"
    try:
        report = wgnn_train(wgnn, model_path, x_files, y_files, entry, out_a, False)
        report_c = wgnn_train(wgnn, model_path, x_files, y_files, entry, out_c, True)
    except RuntimeError as e:
        c.fail("loss", str(e))
        return c
    history = report["history"]
    if report_c["history"] != history:
        c.notes.append("history: --save-optimizer changed the run's history")
    got_loss = history.get("loss", [])
    if len(got_loss) != entry["epochs"]:
        c.fail("loss", f"{len(got_loss)} epochs in the --json history, expected {entry['epochs']}")
    for e, (g, w) in enumerate(zip(got_loss, z["loss"])):
        t = tol(drift_loss[e], w)
        c.record("loss", abs(g - float(w)), t, f"epoch {e + 1}: {g:.7f} vs Keras {float(w):.7f} (tol {t:.1e})", drift_loss[e], w)
    c.ratio.setdefault("metrics", 0.0)
    for key in z.files:
        if not key.startswith(("m_", "val_m_")):
            continue
        metric = key[2:] if key.startswith("m_") else "val_" + key[6:]
        if metric not in history:
            c.fail("metrics", f"no {metric} in the --json history ({sorted(history)})")
            continue
        if len(history[metric]) != len(z[key]):
            c.fail("metrics", f"{metric}: {len(history[metric])} epochs in the --json history, Keras {len(z[key])}")
        for e, (g, w) in enumerate(zip(history[metric], z[key])):
            # An output's own loss drifts as the loss does; a metric is held to 1e-4.
            t = tol(drift_loss[e], w) if metric.endswith("loss") else 1e-4 * (1.0 + abs(float(w)))
            c.record("metrics", abs(g - float(w)), t, f"epoch {e + 1} {metric}: {g} vs Keras {float(w)}")
    keras_keys = {"loss", "val_loss"} & set(z.files)
    keras_keys |= {k[2:] for k in z.files if k.startswith("m_")} | {"val_" + k[6:] for k in z.files if k.startswith("val_m_")}
    for extra in sorted(set(history) - keras_keys):
        c.fail("metrics", f"the --json history has {extra}, Keras's has no such key ({sorted(keras_keys)})")

    trained, skipped = load_quiet(out_a)
    if len(trained.weights) != len(ref_w):
        c.fail("weights", f"Keras loads {len(trained.weights)} weights from OUT.keras, the reference has {len(ref_w)}")
    for i, (v, w, info) in enumerate(zip(trained.weights, ref_w, entry["weights"])):
        if v.path != info["path"]:
            c.notes.append(f"weights: w{i} is {v.path} in OUT.keras, {info['path']} in Keras's model")
        t = tol(drift_w[i])
        try:
            d = rel(v.numpy(), w)
        except ValueError as e:
            c.fail("weights", f"w{i} ({v.path}): {e}")
            continue
        c.record("weights", d, t, f"w{i} ({v.path}): {d:.2e} (tol {t:.1e})", drift_w[i])
    with_opt, _ = load_quiet(out_c)
    for i, (a, b) in enumerate(zip(trained.weights, with_opt.weights)):
        if not np.array_equal(a.numpy(), b.numpy()):
            c.notes.append(f"weights: w{i} differs between the runs with and without --save-optimizer")

    keras_pred = as_list(trained.predict(model_call_input(trained, xs), batch_size=entry["batch_size"], verbose=0))
    t = tol(drift_pred)
    for k, (p, w) in enumerate(zip(keras_pred, ref_pred)):
        d = rel(p, w)
        c.record("pred", d, t, f"output {k}: {d:.2e} (tol {t:.1e})", drift_pred)
    try:
        out_p = work / ("pred.npy" if len(keras_pred) == 1 else "pred.npz")
        wgnn_pred = wgnn_predict(wgnn, out_a, x_files, out_p, output_names(trained), entry["batch_size"])
        for k, (p, w) in enumerate(zip(keras_pred, wgnn_pred)):
            d = rel(p, w)
            c.record("predict", d, 1e-4, f"output {k}: Keras vs wgnn predict {d:.2e}")
    except (RuntimeError, ValueError) as e:
        c.fail("predict", str(e))

    # (c) Keras's own run, E epochs then one more, and the same from one ulp up (the drift).
    history_k, w_k, opt_k, loss_more, w_more = keras_run(model_path, entry, xs, ys, False)
    _, _, opt_d, loss_more_d, w_more_d = keras_run(model_path, entry, xs, ys, True)
    same = np.array_equal(np.asarray(history_k["loss"], np.float32), z["loss"]) and all(
        np.array_equal(a, b) for a, b in zip(w_k, ref_w)
    )
    c.det = "exact" if same else f"{max(rel(a, b) for a, b in zip(w_k, ref_w)):.1e}"
    if not same:
        c.notes.append("det: Keras did not reproduce the reference's E epochs bit for bit")

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed_of(name))
    resumed, skipped = load_quiet(out_c)
    if skipped:
        c.fail("opt", skipped[0])
    opt_got = [(v.path, np.asarray(v.numpy())) for v in resumed.optimizer.variables]
    if [p for p, _ in opt_got] != [p for p, _ in opt_k]:
        c.fail("opt", f"optimizer variables {[p for p, _ in opt_got]} vs Keras's {[p for p, _ in opt_k]}")
    else:
        for (path, g), (_, w), (_, wd) in zip(opt_got, opt_k, opt_d):
            if path.endswith("iteration") or path.endswith("iterations"):
                if int(g) != int(w):
                    c.fail("opt", f"{path}: {int(g)} vs Keras {int(w)}")
                continue
            t = tol(rel(w, wd))
            d = rel(g, w)
            c.record("opt", d, t, f"{path}: {d:.2e} (tol {t:.1e})", rel(w, wd))
    more = fit(resumed, entry, xs, ys, 1)
    t = tol(abs(loss_more - loss_more_d), loss_more)
    g = float(more["loss"][0])
    c.record("r_loss", abs(g - loss_more), t, f"epoch {entry['epochs'] + 1}: {g:.7f} vs Keras {loss_more:.7f}",
             abs(loss_more - loss_more_d), loss_more)
    for i, (v, w, wd) in enumerate(zip(resumed.weights, w_more, w_more_d)):
        t = tol(rel(w, wd))
        d = rel(v.numpy(), w)
        c.record("r_w", d, t, f"w{i} ({v.path}) after epoch {entry['epochs'] + 1}: {d:.2e} (tol {t:.1e})", rel(w, wd))
    return c


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="the set tools/train_acceptance.py wrote")
    parser.add_argument("--only", help="check only these cases (comma-separated fnmatch patterns)")
    parser.add_argument("--wgnn", type=Path, default=ROOT / "target/release/wgnn", help="the wgnn binary")
    parser.add_argument(
        "--strict",
        action="store_true",
        help=f"also fail a drift check whose difference is over {DRIFT_MULTIPLE:g}x Keras's drift, "
        "below the 1e-4 floor too",
    )
    parser.add_argument("--keep", type=Path, help="keep each case's files (npy inputs, OUT.keras) under this folder")
    parser.add_argument("--backend", choices=["cpu", "gpu"], default="cpu", help="where `wgnn train` runs")
    args = parser.parse_args()
    global TRAIN_BACKEND
    TRAIN_BACKEND = args.backend
    if not args.wgnn.exists():
        sys.exit(f"{args.wgnn} not found: cargo build --release --bin wgnn")
    manifest = json.loads((args.dir / "manifest.json").read_text())
    cases = [
        e for e in manifest["cases"] if args.only is None or any(fnmatch.fnmatch(e["name"], p) for p in args.only.split(","))
    ]
    if not cases:
        sys.exit("no case matches")
    results = []
    for entry in cases:
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            if args.keep:
                work = args.keep / entry["name"]
                work.mkdir(parents=True, exist_ok=True)
            try:
                c = check_case(args.dir, entry, args.wgnn, work, args.strict)
            except Exception as e:  # a crash is one failed case, not the end of the run
                c = Case(entry["name"])
                c.fail("loss", f"{type(e).__name__}: {e}")
        results.append(c)
        print(f"{c.name}: {'ok' if c.ok else 'FAIL'} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)

    width = max(len(c.name) for c in results)
    print(f"{'case':{width}}  " + "  ".join(f"{k:>7}" for k in CHECKS) + "      det  result")
    for c in results:
        cells = "  ".join(f"{c.ratio[k]:7.1e}" if k in c.ratio else f"{'-':>7}" for k in CHECKS)
        verdict = "ok" if c.ok else "FAIL"
        print(f"{c.name:{width}}  {cells}  {c.det or '-':>7}  {verdict}")
    print(f"(each cell: the largest difference / tolerance, <= 1 passes; tolerance max(1e-4·(1+|e|), "
          f"{DRIFT_MULTIPLE:g}·Keras's one-ulp drift), 1e-4·(1+|e|) for metrics and predict)")
    print()
    print(f"{'case':{width}}  " + "  ".join(f"{k:>16}" for k in DRIFT_CHECKS + ["predict"]))
    for c in results:
        cells = []
        for k in DRIFT_CHECKS + ["predict"]:
            d, mult = c.dmax.get(k), c.mult.get(k)
            cells.append(f"{'-':>16}" if d is None else f"{d:7.1e}" + (f" ({mult:5.1f}x)" if mult is not None else " " * 8))
        print(f"{c.name:{width}}  " + "  ".join(cells))
    print("(the largest difference per check, and in brackets the largest difference / Keras's own one-ulp "
          "drift of the same quantity; a zero drift counts as one float32 ulp)")
    failed = [c for c in results if not c.ok]
    for c in failed:
        for note in c.notes[:8]:
            print(f"  {c.name}: {note}")
    print(f"{len(results) - len(failed)} of {len(results)} cases pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
