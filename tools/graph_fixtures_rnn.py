#!/usr/bin/env python3
"""Keras reference fixtures for the recurrent family (GRU, return_state, initial_state, a free
time axis, TimeDistributed) in tests/fixtures/graph/rnn/, read by tests/graph_rnn.rs.

    TF_ENABLE_ONEDNN_OPTS=0 .venv-keras/bin/python tools/graph_fixtures_rnn.py

Each fixture NAME is NAME.keras, or NAME.json + NAME.npz (np.savez(*model.get_weights())), or
NAME.json + NAME.weights.h5; NAME.input<k>.npy per model input (float32, or int32 token ids),
NAME.expected<k>.npy per model output: Keras's predict with the model reloaded from the written
files. Entries in manifest.json: {"name","description","model","weights"?,"form","inputs":
[{"file","kind","shape"}],"outputs":[{"name","file","shape"}]}. Weights come from a generator
seeded by the fixture's name; every output must vary across the batch (std > 0.05).
"""

import json
import os
import sys
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers  # noqa: E402

from keras_fixtures import save_keras, savez_weights  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "graph" / "rnn"
KERAS, JSON_NPZ, JSON_H5 = "keras", "json_npz", "json_h5"
VOCAB = 13
SEQ = (11, 5)
FIXTURES = []


def fixture(name, description, form=KERAS, shares=None):
    def register(build):
        FIXTURES.append(dict(name=name, description=description, build=build, form=form, shares=shares))
        return build

    return register


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def normal(rng, *shape):
    return rng.normal(0.0, 1.0, shape).astype(np.float32)


def padded_ids(rng, lengths, steps=8):
    ids = np.zeros((len(lengths), steps), dtype=np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1, VOCAB, n)
    return ids


MIXED = [8, 3, 0, 5, 1]  # full, short, all padding, middle, one step


def seq(shape, *stack, dtype="float32"):
    return keras.Sequential([keras.Input(shape, dtype=dtype), *stack])


def randomize(model, rng):
    weights = []
    for v in model.weights:
        shape = tuple(int(d) for d in v.shape)
        gain = 1.5 if "conv_lstm_cell" in v.path else 2.0 if "lstm_cell" in v.path else 1.5 if "gru_cell" in v.path else 1.0
        if v.name == "embeddings":
            std = 1.0
        elif v.name == "bias":
            std = 0.3 * gain
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            std = gain * min(0.5, 1.5 / np.sqrt(fan_in))
        weights.append(rng.normal(0.0, std, shape).astype(np.float32))
    model.set_weights(weights)


# ---------------------------------------------------------------- GRU

for _name, _units, _kw, _form in [
    ("gru_last", 5, {}, KERAS),
    ("gru_sequences", 7, dict(return_sequences=True), JSON_NPZ),
    ("gru_reset_before_sequences", 6, dict(reset_after=False, return_sequences=True), KERAS),
    ("gru_reset_before_no_bias_last", 5, dict(reset_after=False, use_bias=False), JSON_H5),
    ("gru_no_bias_sequences", 5, dict(use_bias=False, return_sequences=True), KERAS),
    ("gru_go_backwards_sequences", 5, dict(go_backwards=True, return_sequences=True), KERAS),
    ("gru_go_backwards_reset_before_last", 3, dict(go_backwards=True, reset_after=False), JSON_NPZ),
    ("gru_relu_hard_sigmoid", 6, dict(activation="relu", recurrent_activation="hard_sigmoid", return_sequences=True), KERAS),
    ("gru_wide_sequences", 37, dict(return_sequences=True), KERAS),
    ("gru_wide_reset_before_last", 19, dict(reset_after=False), KERAS),
]:

    @fixture(_name, f"GRU({_units}, {_kw}) on (N,11,5)", form=_form)
    def _(rng, units=_units, kw=_kw):
        return seq(SEQ, layers.GRU(units, **kw)), [normal(rng, 3, *SEQ)]


@fixture("gru_t1", "GRU(5) on one timestep (N,1,5)")
def _(rng):
    return seq((1, 5), layers.GRU(5)), [normal(rng, 4, 1, 5)]


def masked(*stack, steps=8):
    return seq((steps,), layers.Embedding(VOCAB, 4, mask_zero=True), *stack, dtype="int32")


for _name, _units, _kw in [
    ("masked_gru_last", 5, {}),
    ("masked_gru_sequences", 5, dict(return_sequences=True)),
    ("masked_gru_reset_before_sequences", 6, dict(reset_after=False, return_sequences=True)),
    ("masked_gru_go_backwards_last", 5, dict(go_backwards=True)),
    ("masked_gru_wide_sequences", 21, dict(return_sequences=True)),
    ("masked_gru_zero_output_sequences", 3, dict(return_sequences=True, zero_output_for_mask=True)),
]:

    @fixture(_name, f"Embedding(mask_zero), ids of lengths {MIXED} -> GRU({_units}, {_kw})")
    def _(rng, units=_units, kw=_kw):
        return masked(layers.GRU(units, **kw)), [padded_ids(rng, MIXED)]


for _name, _layer, _mode, _form in [
    ("bigru_concat_sequences", lambda: layers.GRU(4, return_sequences=True), "concat", KERAS),
    ("bigru_sum_last_reset_before", lambda: layers.GRU(4, reset_after=False), "sum", JSON_NPZ),
    ("bigru_ave_sequences", lambda: layers.GRU(5, return_sequences=True), "ave", KERAS),
    ("bigru_mul_last", lambda: layers.GRU(3), "mul", KERAS),
]:

    @fixture(_name, f"Bidirectional(GRU, merge_mode={_mode}) on (N,11,5)", form=_form)
    def _(rng, layer=_layer, mode=_mode):
        return seq(SEQ, layers.Bidirectional(layer(), merge_mode=mode)), [normal(rng, 3, *SEQ)]


@fixture("masked_bigru_sequences", "Embedding(mask_zero) -> Bidirectional(GRU(3, return_sequences)) -> Dense")
def _(rng):
    m = masked(layers.Bidirectional(layers.GRU(3, return_sequences=True)), layers.Dense(2))
    return m, [padded_ids(rng, MIXED)]


@fixture("masked_bigru_reset_before_last", "Embedding(mask_zero) -> Bidirectional(GRU(5, reset_after=False), ave)")
def _(rng):
    m = masked(layers.Bidirectional(layers.GRU(5, reset_after=False), merge_mode="ave"))
    return m, [padded_ids(rng, MIXED)]


# ---------------------------------------------------------------- return_state


@fixture("lstm_return_state", "LSTM(5, return_sequences, return_state) -> [sequences, h, c, Dense(c)]")
def _(rng):
    inp = keras.Input(SEQ, name="x")
    seq_out, h, c = layers.LSTM(5, return_sequences=True, return_state=True, name="lstm")(inp)
    return keras.Model(inp, [seq_out, h, c, layers.Dense(2, name="head")(c)]), [normal(rng, 3, *SEQ)]


@fixture("gru_return_state", "GRU(4, return_state, go_backwards) -> [last, Dense(h)]", form=JSON_H5)
def _(rng):
    inp = keras.Input(SEQ, name="x")
    out, h = layers.GRU(4, return_state=True, go_backwards=True, name="gru")(inp)
    return keras.Model(inp, [out, layers.Dense(3, name="head")(h)]), [normal(rng, 3, *SEQ)]


@fixture("masked_simplernn_return_state", "Embedding(mask_zero) -> SimpleRNN(6, return_state) -> [last, h]")
def _(rng):
    inp = keras.Input((8,), dtype="int32", name="ids")
    x = layers.Embedding(VOCAB, 4, mask_zero=True)(inp)
    out, h = layers.SimpleRNN(6, return_state=True, name="rnn")(x)
    return keras.Model(inp, [out, h]), [padded_ids(rng, MIXED)]


@fixture("masked_lstm_wide_return_state", "Embedding(mask_zero) -> LSTM(18, return_state) -> [last, h, c]")
def _(rng):
    inp = keras.Input((8,), dtype="int32", name="ids")
    x = layers.Embedding(VOCAB, 4, mask_zero=True)(inp)
    out, h, c = layers.LSTM(18, return_state=True, name="lstm")(x)
    return keras.Model(inp, [out, h, c]), [padded_ids(rng, MIXED)]


@fixture("masked_lstm_t1_return_state", "Embedding(mask_zero) on one step -> LSTM(5, return_state)")
def _(rng):
    inp = keras.Input((1,), dtype="int32", name="ids")
    x = layers.Embedding(VOCAB, 4, mask_zero=True)(inp)
    out, h, c = layers.LSTM(5, return_state=True, name="lstm")(x)
    return keras.Model(inp, [out, h, c]), [np.array([[3], [0], [7], [1]], dtype=np.int32)]


@fixture("bilstm_return_state", "Bidirectional(LSTM(3, return_state)) -> [merged, h_fw, c_fw, h_bw, c_bw]")
def _(rng):
    inp = keras.Input(SEQ, name="x")
    outs = layers.Bidirectional(layers.LSTM(3, return_state=True), name="bi")(inp)
    return keras.Model(inp, list(outs)), [normal(rng, 3, *SEQ)]


@fixture("masked_bigru_return_state", "Embedding(mask_zero) -> Bidirectional(GRU(4, return_sequences, return_state), sum)")
def _(rng):
    inp = keras.Input((8,), dtype="int32", name="ids")
    x = layers.Embedding(VOCAB, 4, mask_zero=True)(inp)
    outs = layers.Bidirectional(layers.GRU(4, return_sequences=True, return_state=True), merge_mode="sum", name="bi")(x)
    return keras.Model(inp, list(outs)), [padded_ids(rng, MIXED)]


@fixture("bilstm_merge_none_sequences", "Bidirectional(LSTM(4, return_sequences), merge_mode=None) -> [forward, backward]")
def _(rng):
    inp = keras.Input(SEQ, name="x")
    fw, bw = layers.Bidirectional(layers.LSTM(4, return_sequences=True), merge_mode=None, name="bi")(inp)
    return keras.Model(inp, [fw, bw]), [normal(rng, 3, *SEQ)]


@fixture(
    "masked_bigru_merge_none_return_state",
    "Embedding(mask_zero) -> Bidirectional(GRU(3, return_state), merge_mode=None) -> [fw, bw, h_fw, h_bw]",
    form=JSON_H5,
)
def _(rng):
    inp = keras.Input((8,), dtype="int32", name="ids")
    x = layers.Embedding(VOCAB, 4, mask_zero=True)(inp)
    outs = layers.Bidirectional(layers.GRU(3, return_state=True), merge_mode=None, name="bi")(x)
    return keras.Model(inp, list(outs)), [padded_ids(rng, MIXED)]


# ---------------------------------------------------------------- initial_state (seq2seq)


@fixture("seq2seq_lstm", "encoder LSTM(6, return_state) -> decoder LSTM(6, return_sequences, initial_state=[h, c]) -> Dense")
def _(rng):
    enc_in = keras.Input(SEQ, name="encoder_in")
    dec_in = keras.Input((7, 3), name="decoder_in")
    _, h, c = layers.LSTM(6, return_state=True, name="encoder")(enc_in)
    dec = layers.LSTM(6, return_sequences=True, name="decoder")(dec_in, initial_state=[h, c])
    out = layers.Dense(4, name="proj")(dec)
    return keras.Model([enc_in, dec_in], out), [normal(rng, 3, *SEQ), normal(rng, 3, 7, 3)]


@fixture("seq2seq_gru", "encoder GRU(5, return_state) -> decoder GRU(5, return_sequences, initial_state=h) -> Dense", form=JSON_NPZ)
def _(rng):
    enc_in = keras.Input(SEQ, name="encoder_in")
    dec_in = keras.Input((6, 2), name="decoder_in")
    _, h = layers.GRU(5, return_state=True, name="encoder")(enc_in)
    dec = layers.GRU(5, return_sequences=True, name="decoder")(dec_in, initial_state=h)
    out = layers.Dense(3, name="proj")(dec)
    return keras.Model([enc_in, dec_in], out), [normal(rng, 3, *SEQ), normal(rng, 3, 6, 2)]


@fixture(
    "seq2seq_masked_decoder",
    "encoder SimpleRNN(5, return_state) -> masked decoder GRU(5, return_sequences, return_state, initial_state=h)",
)
def _(rng):
    enc_in = keras.Input(SEQ, name="encoder_in")
    dec_in = keras.Input((8,), dtype="int32", name="decoder_ids")
    _, h = layers.SimpleRNN(5, return_state=True, name="encoder")(enc_in)
    emb = layers.Embedding(VOCAB, 4, mask_zero=True, name="emb")(dec_in)
    dec, h2 = layers.GRU(5, return_sequences=True, return_state=True, name="decoder")(emb, initial_state=h)
    return keras.Model([enc_in, dec_in], [dec, h2]), [normal(rng, 5, *SEQ), padded_ids(rng, MIXED)]


@fixture("seq2seq_bidirectional", "Bidirectional(GRU(4, return_state)) -> Bidirectional(LSTM... no: GRU)(initial_state=[h_fw, h_bw])")
def _(rng):
    enc_in = keras.Input(SEQ, name="encoder_in")
    dec_in = keras.Input((5, 3), name="decoder_in")
    _, h_fw, h_bw = layers.Bidirectional(layers.GRU(4, return_state=True), name="encoder")(enc_in)
    dec = layers.Bidirectional(layers.GRU(4, return_sequences=True), name="decoder")(dec_in, initial_state=[h_fw, h_bw])
    return keras.Model([enc_in, dec_in], dec), [normal(rng, 3, *SEQ), normal(rng, 3, 5, 3)]


@fixture("seq2seq_wide_lstm", "encoder LSTM(20, return_state) -> decoder LSTM(20, initial_state) (GEMM step path)")
def _(rng):
    enc_in = keras.Input(SEQ, name="encoder_in")
    dec_in = keras.Input((4, 3), name="decoder_in")
    _, h, c = layers.LSTM(20, return_state=True, name="encoder")(enc_in)
    dec = layers.LSTM(20, name="decoder")(dec_in, initial_state=[h, c])
    return keras.Model([enc_in, dec_in], dec), [normal(rng, 3, *SEQ), normal(rng, 3, 4, 3)]


# ---------------------------------------------------------------- free time axis


@fixture("free_time_len9", "Sequential Input((None, 5)) -> GRU(4, return_sequences) -> Dense(2), run on length 9", form=JSON_H5)
def _(rng):
    return seq((None, 5), layers.GRU(4, return_sequences=True), layers.Dense(2)), [normal(rng, 2, 9, 5)]


@fixture("free_time_len1", "free_time_len9's files, run on length 1", shares="free_time_len9")
def _(rng):
    return [normal(rng, 3, 1, 5)]


@fixture("free_time_len4", "free_time_len9's files, run on length 4", shares="free_time_len9")
def _(rng):
    return [normal(rng, 3, 4, 5)]


@fixture("free_time_functional_len11", "Input((None, 5)) -> LSTM(5, return_sequences) -> GRU(4) -> Dense(3), length 11")
def _(rng):
    inp = keras.Input((None, 5), name="x")
    x = layers.LSTM(5, return_sequences=True)(inp)
    x = layers.GRU(4)(x)
    return keras.Model(inp, layers.Dense(3)(x)), [normal(rng, 2, 11, 5)]


@fixture("free_time_functional_len3", "free_time_functional_len11's files, run on length 3", shares="free_time_functional_len11")
def _(rng):
    return [normal(rng, 4, 3, 5)]


@fixture("free_time_masked_ids", "Input((None,), int32) -> Embedding(mask_zero) -> LSTM(4), run on length 8")
def _(rng):
    return seq((None,), layers.Embedding(VOCAB, 4, mask_zero=True), layers.LSTM(4), dtype="int32"), [padded_ids(rng, MIXED)]


# ---------------------------------------------------------------- TimeDistributed


@fixture("td_dense", "TimeDistributed(Dense(4, relu)) -> TimeDistributed(Dense(2)) on (N,11,5)")
def _(rng):
    m = seq(SEQ, layers.TimeDistributed(layers.Dense(4, activation="relu")), layers.TimeDistributed(layers.Dense(2)))
    return m, [normal(rng, 2, *SEQ)]


@fixture("td_conv2d_gmp_lstm", "TimeDistributed(Conv2D(4,3,relu)) -> TimeDistributed(GlobalMaxPooling2D) -> LSTM(3)")
def _(rng):
    m = seq(
        (3, 7, 9, 2),
        layers.TimeDistributed(layers.Conv2D(4, 3, activation="relu")),
        layers.TimeDistributed(layers.GlobalMaxPooling2D()),
        layers.LSTM(3),
    )
    return m, [normal(rng, 2, 3, 7, 9, 2)]


@fixture("td_conv_pool_flatten_gru", "TimeDistributed(Conv2D(3,3,strides 2,same)) -> TD(MaxPooling2D) -> TD(Flatten) -> GRU(3)", form=JSON_NPZ)
def _(rng):
    m = seq(
        (4, 9, 11, 2),
        layers.TimeDistributed(layers.Conv2D(3, 3, strides=2, padding="same")),
        layers.TimeDistributed(layers.MaxPooling2D(2)),
        layers.TimeDistributed(layers.Flatten()),
        layers.GRU(3),
    )
    return m, [normal(rng, 3, 4, 9, 11, 2)]


@fixture("masked_td_dense_lstm", "Embedding(mask_zero) -> TimeDistributed(Dense(4)) -> LSTM(3) (the mask passes through)")
def _(rng):
    return masked(layers.TimeDistributed(layers.Dense(4)), layers.LSTM(3)), [padded_ids(rng, MIXED)]


@fixture("td_lstm", "TimeDistributed(LSTM(4)) over (N,3,6,5) (each item its own sequence) -> LSTM(3)")
def _(rng):
    return seq((3, 6, 5), layers.TimeDistributed(layers.LSTM(4)), layers.LSTM(3)), [normal(rng, 3, 3, 6, 5)]


@fixture("td_bigru_sequences", "TimeDistributed(Bidirectional(GRU(3, return_sequences))) -> TD(Flatten) -> Dense(2)",
         form=JSON_H5)  # fmt: skip
def _(rng):
    m = seq((2, 5, 4), layers.TimeDistributed(layers.Bidirectional(layers.GRU(3, return_sequences=True))),
            layers.TimeDistributed(layers.Flatten()), layers.Dense(2))  # fmt: skip
    return m, [normal(rng, 3, 2, 5, 4)]


@fixture("mask_kwarg_bool_input", "GRU(5, return_sequences)(x, mask=bool_input) -> LSTM(3): a mask given as a model input")
def _(rng):
    x = keras.Input((8, 4), name="frames")
    m = keras.Input((8,), dtype="bool", name="frame_mask")
    h = layers.GRU(5, return_sequences=True)(x, mask=m)
    model = keras.Model([x, m], layers.LSTM(3)(h))
    mask = np.array([[j < n for j in range(8)] for n in MIXED if n > 0])
    return model, [normal(rng, len(mask), 8, 4), mask]


@fixture("free_time_strided_conv1d", "keras.Input((None,), int) -> Embedding -> Conv1D(4, 7, strides=3) x2 -> "
         "GlobalMaxPooling1D -> Dense(2) on length 40 (too short a placeholder length cannot hold the stack)")  # fmt: skip
def _(rng):
    m = seq((None,), layers.Embedding(VOCAB, 4), layers.Conv1D(4, 7, strides=3, activation="relu"),
            layers.Conv1D(4, 7, strides=3), layers.GlobalMaxPooling1D(), layers.Dense(2), dtype="int32")  # fmt: skip
    return m, [rng.integers(1, VOCAB, (3, 40)).astype(np.int32)]


# ---------------------------------------------------------------- ConvLSTM

for _name, _cls, _shape, _kw, _form in [
    ("convlstm1d_same_sequences", "1D", (4, 7, 3), dict(filters=4, kernel_size=3, padding="same", return_sequences=True), KERAS),
    ("convlstm1d_valid_last", "1D", (4, 7, 3), dict(filters=3, kernel_size=3), JSON_NPZ),
    ("convlstm1d_stride2_backwards", "1D", (5, 9, 2), dict(filters=5, kernel_size=2, strides=2, go_backwards=True, return_sequences=True), KERAS),
    ("convlstm2d_same_last", "2D", (3, 5, 6, 2), dict(filters=3, kernel_size=3, padding="same"), KERAS),
    ("convlstm2d_valid_sequences", "2D", (3, 5, 6, 2), dict(filters=4, kernel_size=(3, 2), return_sequences=True), JSON_H5),
    ("convlstm2d_stride2_go_backwards", "2D", (3, 5, 6, 2), dict(filters=3, kernel_size=3, strides=2, padding="same", go_backwards=True), KERAS),
    ("convlstm2d_no_bias_relu_t1", "2D", (1, 4, 5, 3), dict(filters=2, kernel_size=2, use_bias=False, activation="relu", recurrent_activation="hard_sigmoid", return_sequences=True), KERAS),
]:

    @fixture(_name, f"ConvLSTM{_cls}({_kw}) on (N,{_shape})", form=_form)
    def _(rng, cls=_cls, shape=_shape, kw=_kw):
        layer = layers.ConvLSTM1D if cls == "1D" else layers.ConvLSTM2D
        return seq(shape, layer(**kw)), [normal(rng, 3, *shape)]


# ---------------------------------------------------------------- writing


def load_back(entry):
    model_path = OUT / entry["model"]
    if entry["form"] == KERAS:
        return keras.models.load_model(model_path)
    model = keras.models.model_from_json(model_path.read_text())
    if entry["form"] == JSON_H5:
        model.load_weights(OUT / entry["weights"])
    else:
        with np.load(OUT / entry["weights"]) as npz:
            model.set_weights([npz[f"arr_{i}"] for i in range(len(npz.files))])
    return model


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = []
    written = {}
    for spec in FIXTURES:
        name = spec["name"]
        rng = rng_for(name)
        if spec["shares"]:
            base = written[spec["shares"]]
            entry = dict(name=name, description=spec["description"], model=base["model"], form=base["form"])
            if "weights" in base:
                entry["weights"] = base["weights"]
            inputs = spec["build"](rng)
        else:
            model, inputs = spec["build"](rng)
            randomize(model, rng)
            entry = dict(name=name, description=spec["description"], form=spec["form"])
            if spec["form"] == KERAS:
                entry["model"] = f"{name}.keras"
                save_keras(model, OUT / entry["model"])
            else:
                entry["model"] = f"{name}.json"
                (OUT / entry["model"]).write_text(model.to_json())
                if spec["form"] == JSON_H5:
                    entry["weights"] = f"{name}.weights.h5"
                    model.save_weights(OUT / entry["weights"])
                else:
                    entry["weights"] = f"{name}.npz"
                    savez_weights(model.get_weights(), OUT / entry["weights"])
            written[name] = entry
        reloaded = load_back(entry)
        entry["inputs"] = []
        for k, x in enumerate(inputs):
            f = f"{name}.input{k}.npy"
            np.save(OUT / f, x)
            kind = "ids" if x.dtype.kind in "ib" else "float"
            entry["inputs"].append(dict(file=f, kind=kind, shape=list(x.shape)))
        outs = reloaded.predict(inputs if len(inputs) > 1 else inputs[0], verbose=0)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        entry["outputs"] = []
        for k, y in enumerate(outs):
            y = np.asarray(y, dtype=np.float32)
            f = f"{name}.expected{k}.npy"
            np.save(OUT / f, y)
            spread = float(np.std(y, axis=0).mean()) if y.shape[0] > 1 else 0.0
            assert spread > 0.05, f"{name} output {k}: std across the batch {spread:.4f}"
            oname = reloaded.output_names[k] if hasattr(reloaded, "output_names") else f"output_{k}"
            entry["outputs"].append(dict(name=str(oname), file=f, shape=list(y.shape), std=round(spread, 4)))
        manifest.append(entry)
        print(f"{name:40s} {[o['shape'] for o in entry['outputs']]}")
    doc = dict(generated_by="tools/graph_fixtures_rnn.py", keras_version=keras.__version__, fixtures=manifest)
    (OUT / "manifest.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
