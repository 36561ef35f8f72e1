"""Trains the seed report's NusaX-Senti models with Keras 3, and makes the small TextVectorization test fixture.

Run with the Keras venv (Keras 3.15.1, TensorFlow 2.21, tf_keras 2.21 for the legacy Tokenizer):

    .venv-keras/bin/python tools/train_nusax.py --data DATA/nusax --out OUT [--experiment NAME|all] [--epochs N]
                                                [--text-vectorization]
    .venv-keras/bin/python tools/train_nusax.py --data DATA/nusax --fixture tests/fixtures/text

DATA/nusax holds train.csv, valid.csv and test.csv (id,text,label; neutral=0, positive=1, negative=2).

Architecture (the seed's): Input(60 ids) -> Embedding(vocab, 50) -> recurrent part -> Dropout(0.5) -> Dense(3, softmax),
Adam, sparse categorical cross-entropy, validated on valid.csv.

The 16 experiments, as the seed report defined them (each for SimpleRNN "rnn" and LSTM "lstm"):
    layer count at 8 cells:   {rnn,lstm}_layer1   one layer of 8
                              {rnn,lstm}_layer2   two layers of 8 (the first with return_sequences)
                              {rnn,lstm}_layer3   three layers of 8 (all but the last with return_sequences)
    cell count at 1 layer:    {rnn,lstm}_cell8, {rnn,lstm}_cell16, {rnn,lstm}_cell24
    direction at 24 cells:    {rnn,lstm}_layer1Uni  one layer of 24
                              {rnn,lstm}_layer1Bi   Bidirectional (concat) layer of 24
(layer1 and cell8 are the same architecture; the seed trained both, so both are kept.)

Text to ids (default): tf_keras Tokenizer(oov_token="<UNK>") fitted on train.csv (default filters, lower-casing,
split on " "; id 0 is padding, 1 is <UNK>), then pad_sequences(maxlen=60, padding="post", truncating="post").
Writes OUT/NAME.keras (no optimizer state) and OUT/nusax_tokenizer.json.

--text-vectorization: the model instead starts with TextVectorization(max_tokens=None,
standardize="lower_and_strip_punctuation", split="whitespace", output_mode="int", output_sequence_length=60)
adapted on train.csv and takes raw strings; writes OUT/NAME_textvec.keras (no tokenizer file needed).

--fixture OUT_DIR: a small end-to-end fixture for tests/text_vectorization_model.rs:
TextVectorization(adapted on train.csv, max_tokens=2000, output_sequence_length=24) -> Embedding(vocab, 8,
mask_zero=True) -> Bidirectional(LSTM(6)) -> Dense(3) (logits), trained a few epochs so the outputs are far from
uniform. Writes OUT_DIR/nusax_textvec_bilstm.keras and OUT_DIR/nusax_textvec_bilstm.cases.json (raw strings and
Keras's logits for each).
"""

import argparse
import csv
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

LABELS = {"neutral": 0, "positive": 1, "negative": 2}
SEQUENCE_LENGTH = 60
EMBEDDING_DIM = 50
SEED = 1234

# name -> (cell class name, units per layer, bidirectional)
EXPERIMENTS = {}
for _prefix, _cell in (("rnn", "SimpleRNN"), ("lstm", "LSTM")):
    EXPERIMENTS[f"{_prefix}_layer1"] = (_cell, [8], False)
    EXPERIMENTS[f"{_prefix}_layer2"] = (_cell, [8, 8], False)
    EXPERIMENTS[f"{_prefix}_layer3"] = (_cell, [8, 8, 8], False)
    EXPERIMENTS[f"{_prefix}_cell8"] = (_cell, [8], False)
    EXPERIMENTS[f"{_prefix}_cell16"] = (_cell, [16], False)
    EXPERIMENTS[f"{_prefix}_cell24"] = (_cell, [24], False)
    EXPERIMENTS[f"{_prefix}_layer1Uni"] = (_cell, [24], False)
    EXPERIMENTS[f"{_prefix}_layer1Bi"] = (_cell, [24], True)


def read_split(data_dir, split):
    texts, labels = [], []
    with open(os.path.join(data_dir, f"{split}.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            texts.append(row["text"])
            labels.append(LABELS[row["label"]])
    return texts, np.array(labels, dtype=np.int32)


def string_column(texts):
    """Texts as a (n, 1) string tensor: Keras's fit rejects numpy object arrays."""
    import tensorflow as tf

    return tf.constant([[t] for t in texts])


def recurrent_layers(keras, cell, units, bidirectional):
    layers = []
    for i, n in enumerate(units):
        rnn = getattr(keras.layers, cell)(n, return_sequences=i < len(units) - 1)
        layers.append(keras.layers.Bidirectional(rnn, merge_mode="concat") if bidirectional else rnn)
    return layers


def clean_copy(keras, model):
    """The same layers in an uncompiled model, so the saved file carries no optimizer state."""
    return keras.Model(model.inputs, model.outputs, name=model.name)


def train_experiment(keras, name, data, epochs, text_vectorization, out_dir, tokenizer=None, vectorizer=None):
    cell, units, bidirectional = EXPERIMENTS[name]
    (train_x, train_y), (valid_x, valid_y) = data
    if text_vectorization:
        inputs = keras.Input(shape=(1,), dtype="string", name="text")
        x = vectorizer(inputs)
        vocab_size = vectorizer.vocabulary_size()
    else:
        inputs = keras.Input(shape=(SEQUENCE_LENGTH,), dtype="int32", name="ids")
        x = inputs
        vocab_size = len(tokenizer.word_index) + 1
    x = keras.layers.Embedding(vocab_size, EMBEDDING_DIM)(x)
    for layer in recurrent_layers(keras, cell, units, bidirectional):
        x = layer(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name=name)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_x, train_y, validation_data=(valid_x, valid_y), epochs=epochs, batch_size=32, verbose=2)
    path = os.path.join(out_dir, f"{name}_textvec.keras" if text_vectorization else f"{name}.keras")
    clean_copy(keras, model).save(path)
    print(f"wrote {path}")


def train(args):
    import keras

    keras.utils.set_random_seed(SEED)
    os.makedirs(args.out, exist_ok=True)
    train_texts, train_y = read_split(args.data, "train")
    valid_texts, valid_y = read_split(args.data, "valid")
    names = sorted(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    if any(n not in EXPERIMENTS for n in names):
        sys.exit(f"unknown experiment {args.experiment!r}; one of: all, {', '.join(sorted(EXPERIMENTS))}")

    if args.text_vectorization:
        vectorizer = keras.layers.TextVectorization(
            max_tokens=None,
            standardize="lower_and_strip_punctuation",
            split="whitespace",
            output_mode="int",
            output_sequence_length=SEQUENCE_LENGTH,
        )
        vectorizer.adapt(train_texts)
        data = (
            (string_column(train_texts), train_y),
            (string_column(valid_texts), valid_y),
        )
        for name in names:
            train_experiment(keras, name, data, args.epochs, True, args.out, vectorizer=vectorizer)
        return

    from keras.utils import pad_sequences
    from tf_keras.preprocessing.text import Tokenizer

    tokenizer = Tokenizer(oov_token="<UNK>")
    tokenizer.fit_on_texts(train_texts)
    tokenizer_path = os.path.join(args.out, "nusax_tokenizer.json")
    with open(tokenizer_path, "w", encoding="utf-8") as f:
        f.write(tokenizer.to_json())
    print(f"wrote {tokenizer_path} ({len(tokenizer.word_index)} words)")

    def ids(texts):
        return pad_sequences(
            tokenizer.texts_to_sequences(texts), maxlen=SEQUENCE_LENGTH, padding="post", truncating="post"
        ).astype(np.int32)

    data = ((ids(train_texts), train_y), (ids(valid_texts), valid_y))
    for name in names:
        train_experiment(keras, name, data, args.epochs, False, args.out, tokenizer=tokenizer)


def fixture_texts(valid_texts):
    long_text = " ".join(f"kata{i}" for i in range(40)) + " enak sekali"
    return [
        "Makanan di sini ENAK sekali!!! Harganya juga murah, pelayanannya ramah.",
        "Saya tidak suka: pelayanannya lambat & tempatnya kotor...",
        "MaKaNaN iNi EnAk BaNgEt",
        "qwertyuiop zxcvbnm kata_yang_tidak_dikenal",
        "",
        "!!! ... ??? ,,, ;:",
        long_text,
        valid_texts[0],
        valid_texts[1],
        valid_texts[2],
        "buruk, mengecewakan, tidak akan kembali lagi",
        "   spasi   di   mana-mana   ",
    ]


def make_fixture(args):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    os.makedirs(args.fixture, exist_ok=True)
    train_texts, train_y = read_split(args.data, "train")
    valid_texts, _ = read_split(args.data, "valid")

    vectorizer = keras.layers.TextVectorization(
        max_tokens=2000,
        standardize="lower_and_strip_punctuation",
        split="whitespace",
        output_mode="int",
        output_sequence_length=24,
        name="text_vectorization",
    )
    vectorizer.adapt(train_texts)
    inputs = keras.Input(shape=(1,), dtype="string", name="text")
    x = vectorizer(inputs)
    x = keras.layers.Embedding(vectorizer.vocabulary_size(), 8, mask_zero=True)(x)
    x = keras.layers.Bidirectional(keras.layers.LSTM(6))(x)
    outputs = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, outputs, name="nusax_textvec_bilstm")
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # A few epochs so the logits are well away from uniform (a fresh Embedding gives near-zero outputs).
    model.fit(string_column(train_texts), train_y, epochs=args.epochs, batch_size=32, verbose=2)

    path = os.path.join(args.fixture, "nusax_textvec_bilstm.keras")
    clean_copy(keras, model).save(path)
    reloaded = keras.saving.load_model(path)

    texts = fixture_texts(valid_texts)
    logits = np.asarray(reloaded(string_column(texts))).astype(np.float32)
    ids = np.asarray(vectorizer(tf.constant(texts))).astype(np.int64)
    spread = float(np.min(logits.max(axis=1) - logits.min(axis=1)))
    print(f"wrote {path} ({os.path.getsize(path)} bytes), vocabulary {vectorizer.vocabulary_size()}, "
          f"smallest per-row logit spread {spread:.3f}")
    cases = {
        "description": "Raw strings and the logits Keras's nusax_textvec_bilstm.keras returned for each "
        "(made by tools/train_nusax.py --fixture).",
        "keras_version": keras.__version__,
        "cases": [
            {"text": t, "ids": i.tolist(), "expected": row.tolist()} for t, i, row in zip(texts, ids, logits)
        ],
    }
    cases_path = os.path.join(args.fixture, "nusax_textvec_bilstm.cases.json")
    with open(cases_path, "w", encoding="utf-8") as f:
        # One case per line, so a diff shows which text changed.
        head = {k: v for k, v in cases.items() if k != "cases"}
        f.write(json.dumps(head, ensure_ascii=False, indent=1)[:-2] + ',\n "cases": [\n  ')
        f.write(",\n  ".join(json.dumps(c, ensure_ascii=False) for c in cases["cases"]))
        f.write("\n ]\n}\n")
    print(f"wrote {cases_path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder holding train.csv, valid.csv, test.csv")
    parser.add_argument("--out", help="folder for the trained models")
    parser.add_argument("--experiment", default="all", help="one experiment name, or all")
    parser.add_argument("--epochs", type=int, default=None, help="default 10 (training) or 5 (--fixture)")
    parser.add_argument("--text-vectorization", action="store_true", help="models that take raw strings")
    parser.add_argument("--fixture", metavar="OUT_DIR", help="make the small TextVectorization test fixture")
    args = parser.parse_args()
    if args.fixture:
        args.epochs = args.epochs or 5
        make_fixture(args)
    elif args.out:
        args.epochs = args.epochs or 10
        train(args)
    else:
        parser.error("give --out (training) or --fixture")


if __name__ == "__main__":
    main()
