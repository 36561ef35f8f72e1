#!/usr/bin/env python3
"""Writes the small seed corpora under fuzz/corpus/<target>/.

Most seeds are copies (JSON minified) of tests/fixtures; the rest are made here. Run from the
repository root with the project's Keras venv (only tv_rnn.keras needs Keras):
    .venv-keras/bin/python fuzz/make_seeds.py
"""
import io
import json
import os
import shutil
import struct
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def out(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def minified(name):
    # Key order kept: the loader reads it as written.
    return json.dumps(json.loads(fixture(name)), separators=(",", ":")).encode()


def npy(dtype_descr, shape, payload):
    """An .npy (format 1.0) with the header padded as numpy pads it."""
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (dtype_descr, tuple(shape))
    pad = 63 - (10 + len(header)) % 64
    header = header + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


def keras_tv_rnn():
    """TextVectorization (assets/ vocabulary) + Embedding(mask_zero) + SimpleRNN + Dense."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras  # noqa: E402

    keras.utils.set_random_seed(0)
    tv = keras.layers.TextVectorization(max_tokens=12, output_sequence_length=6)
    tv.adapt(["enak murah", "tidak enak", "murah meriah enak"])
    inp = keras.Input(shape=(1,), dtype="string")
    x = keras.layers.Embedding(12, 2, mask_zero=True)(tv(inp))
    x = keras.layers.SimpleRNN(2)(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    path = "/tmp/wgnn_fuzz_tv_rnn.keras"
    model.save(path)
    with open(path, "rb") as f:
        return f.read()


def main():
    shutil.rmtree(CORPUS, ignore_errors=True)

    out("keras_file", "maxpool2d_same.keras", fixture("maxpool2d_same.keras"))
    out("keras_file", "dense_no_bias.keras", fixture("dense_no_bias.keras"))
    try:
        out("keras_file", "tv_rnn.keras", keras_tv_rnn())
    except ImportError:
        print("keras not importable: tv_rnn.keras skipped", file=sys.stderr)

    # keras_parts: u16 LE config length, config.json, vocabulary (fuzz_targets/keras_parts.rs).
    tv_path = os.path.join(CORPUS, "keras_file", "tv_rnn.keras")
    if os.path.exists(tv_path):
        with zipfile.ZipFile(tv_path) as z:
            config = z.read("config.json")
            vocabulary = z.read("assets/layers/text_vectorization/vocabulary.txt")
        out("keras_parts", "tv_rnn.bin", struct.pack("<H", len(config)) + config + vocabulary)

    # config_json: first byte picks the fixed weights file (see fuzz_targets/config_json.rs).
    for selector, name in enumerate(
        [
            "h5_weights_cnn.json",
            "h5_weights_rnn.json",
            "h5_weights_functional_cnn.json",
            "npz_weights_functional_rnn.json",
            "npz_weights_bilstm_unmasked.json",
        ]
    ):
        out("config_json", f"{selector}_{name}", bytes([selector]) + minified(name))

    out("weights_h5", "cnn.weights.h5", fixture("h5_weights_cnn.weights.h5"))
    out("weights_h5", "rnn.weights.h5", fixture("h5_weights_rnn.weights.h5"))

    out("npy_npz", "swish.npz", fixture("activation_swish.npz"))
    out("npy_npz", "f32_2x4.npy", fixture("h5_weights_cnn.expected.npy"))
    out("npy_npz", "i64_2x3.npy", npy("<i8", (2, 3), struct.pack("<6q", 0, 1, 2, 3, -1, 9)))
    out("npy_npz", "u8_4.npy", npy("|u1", (4,), bytes([0, 1, 200, 255])))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("arr_0.npy", npy("<f8", (2,), struct.pack("<2d", 0.5, -1.0)))
        z.writestr("arr_1.npy", npy("<i4", (1, 2), struct.pack("<2i", 3, 4)))
    out("npy_npz", "deflated.npz", buf.getvalue())

    out(
        "tokenizer_json",
        "keras.json",
        json.dumps(
            {
                "class_name": "Tokenizer",
                "config": {
                    "num_words": 4,
                    "filters": "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n",
                    "lower": True,
                    "split": " ",
                    "char_level": False,
                    "oov_token": "<OOV>",
                    "document_count": 2,
                    "word_counts": json.dumps({"enak": 3, "murah": 1, "<OOV>": 0}),
                    "word_docs": json.dumps({"enak": 2, "murah": 1}),
                    "index_docs": json.dumps({"2": 2, "3": 1}),
                    "index_word": json.dumps({"1": "<OOV>", "2": "enak", "3": "murah"}),
                    "word_index": json.dumps({"<OOV>": 1, "enak": 2, "murah": 3}),
                },
            }
        ).encode(),
    )
    out(
        "tokenizer_json",
        "char_level.json",
        b'{"config":{"char_level":true,"lower":false,"split":"","word_index":{"a":1,"b":2}}}',
    )

    record = bytes([3]) + bytes((i * 7) % 256 for i in range(3072))
    out("cifar_batch", "one_record.bin", record)
    out("cifar_batch", "two_records.bin", record + bytes([9]) + bytes(3072))

    out(
        "nusax_csv",
        "quoted_multiline.csv",
        b'id,text,label\n1,"Enak sekali, murah!",positive\n2,"Tidak enak\nlambat",Negative\n'
        b"3,biasa saja, neutral \n",
    )
    out("nusax_csv", "no_id.csv", "\ufefftext,label\n\"a \"\"b\"\"\",neutral\n".encode())


if __name__ == "__main__":
    main()
