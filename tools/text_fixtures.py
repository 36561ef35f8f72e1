"""Makes the Keras reference fixtures under tests/fixtures/text/ that the Rust text tests compare against.

Run with the Keras venv (Keras 3.15.1, TensorFlow 2.21, tf_keras 2.21):

    WGNN_SEED_MODELS=/path/to/models/seed .venv-keras/bin/python tools/text_fixtures.py

Writes:
  tests/fixtures/text/tokenizer_cases.json      Tokenizer fits (tf_keras.preprocessing.text.Tokenizer), sequences,
                                               keras.utils.pad_sequences variants, and the seed NusaX tokenizer's
                                               sequences for a few sentences.
  tests/fixtures/text/text_vectorization.keras  a model whose outputs are several TextVectorization layers
                                               (adapted vocabulary in assets/, vocabulary in config, each standardize
                                               and split mode).
  tests/fixtures/text/text_vectorization.json   the texts fed to it and the ids each layer returned.

Also checks that Keras's `tokenizer_from_json` loads a tokenizer JSON written by the Rust port when one is given:

    .venv-keras/bin/python tools/text_fixtures.py --check-json path/to/tokenizer.json
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "text")

# Sentences that exercise punctuation, mixed case, non-ASCII letters and punctuation, unknown words, runs of
# whitespace (tab, newline, no-break space) and empty text.
PROBE_TEXTS = [
    "Makanan di sini ENAK sekali!!! Harganya juga murah, pelayanannya ramah.",
    "Saya tidak suka: pelayanannya lambat & tempatnya kotor...",
    "ÉNAK, Café-nya \u201cmantap\u201d banget \u2014 recommended!",
    "kata_yang_tidak_dikenal qwertyuiop zzz",
    "",
    "   \t spasi\tdan\nbaris   baru\u00a0nbsp  ",
    "Ini (sangat) [sangat] {sangat} <enak> 'banget' \"banget\" #1 @resto 100% 2023/05/17 tiket-pesawat",
    "Ibu pernah bekerja di grab indonesia",
]


def tokenizer_cases():
    from tf_keras.preprocessing.text import Tokenizer, tokenizer_from_json
    from keras.utils import pad_sequences

    corpus = [
        "Enak enak ENAK sekali, harganya murah!",
        "Tidak enak; pelayanannya lambat.",
        "Murah meriah\ttapi\nenak",
        "Saya suka tempat ini. Tempat ini bersih!",
        "",
        "b a b a c c d",
    ]
    fit_options = [
        {},
        {"oov_token": "<UNK>"},
        {"oov_token": "<UNK>", "num_words": 5},
        {"num_words": 4},
        {"lower": False},
        {"filters": "", "split": " "},
        {"split": "a"},
        {"char_level": True, "oov_token": "?"},
    ]
    fits = []
    for options in fit_options:
        tok = Tokenizer(**options)
        tok.fit_on_texts(corpus)
        fits.append(
            {
                "options": options,
                "texts": corpus,
                "word_index": list(tok.word_index.items()),
                "word_counts": list(tok.word_counts.items()),
                "word_docs": sorted(tok.word_docs.items()),
                "document_count": tok.document_count,
                "sequences": tok.texts_to_sequences(PROBE_TEXTS),
            }
        )

    seqs = [[1, 2, 3, 4, 5], [6, 7], [], [8, 9, 10]]
    pads = []
    for maxlen in [None, 3, 6]:
        for padding in ["pre", "post"]:
            for truncating in ["pre", "post"]:
                for value in [0, -1]:
                    out = pad_sequences(
                        seqs, maxlen=maxlen, padding=padding, truncating=truncating, value=value
                    )
                    pads.append(
                        {
                            "maxlen": maxlen,
                            "padding": padding,
                            "truncating": truncating,
                            "value": value,
                            "expected": out.tolist(),
                        }
                    )

    seed = {}
    seed_dir = os.environ.get("WGNN_SEED_MODELS")
    if seed_dir:
        with open(os.path.join(seed_dir, "nusax_tokenizer.json")) as f:
            tok = tokenizer_from_json(f.read())
        seqs = tok.texts_to_sequences(PROBE_TEXTS)
        seed = {
            "texts": PROBE_TEXTS,
            "sequences": seqs,
            "padded_60_post_post": pad_sequences(
                seqs, maxlen=60, padding="post", truncating="post"
            ).tolist(),
        }
    else:
        print("WGNN_SEED_MODELS unset: seed tokenizer sequences left out", file=sys.stderr)

    return {"fits": fits, "pad_sequences": {"sequences": [[1, 2, 3, 4, 5], [6, 7], [], [8, 9, 10]], "cases": pads}, "seed_nusax": seed}


def text_vectorization_fixture():
    import keras

    adapt_corpus = [
        "Makanan enak, harga murah!",
        "Pelayanannya ramah dan tempatnya bersih.",
        "Tidak enak. Tempatnya kotor dan lambat.",
        "Enak banget, saya suka sekali.",
        "Café-nya mantap, ÉNAK banget.",
    ]
    inp = keras.Input(shape=(1,), dtype="string", name="text")
    layers = [
        keras.layers.TextVectorization(output_sequence_length=12, name="tv_adapted"),
        keras.layers.TextVectorization(
            standardize="lower",
            vocabulary=["enak", "makanan", "sekali!!!", "ramah.", "murah,", "éNAK,"],
            output_sequence_length=6,
            name="tv_lower_config_vocab",
        ),
        keras.layers.TextVectorization(standardize="strip_punctuation", name="tv_strip_ragged_len"),
        keras.layers.TextVectorization(standardize=None, output_sequence_length=5, name="tv_no_standardize"),
        keras.layers.TextVectorization(split="character", output_sequence_length=16, name="tv_character"),
        keras.layers.TextVectorization(
            vocabulary=["", "[UNK]", "ibu", "pernah", "bekerja"],
            output_sequence_length=4,
            name="tv_config_vocab_with_specials",
        ),
    ]
    for layer in layers:
        if layer.name in ("tv_adapted", "tv_strip_ragged_len", "tv_no_standardize", "tv_character"):
            layer.adapt(adapt_corpus + PROBE_TEXTS[:3])
    model = keras.Model(inp, [layer(inp) for layer in layers], name="text_vectorization_fixture")
    path = os.path.join(OUT, "text_vectorization.keras")
    model.save(path)

    outputs = model(np.array(PROBE_TEXTS, dtype=object)[:, None])
    expected = {}
    for layer, out in zip(layers, outputs):
        expected[layer.name] = np.asarray(out).tolist()
    return {"texts": PROBE_TEXTS, "expected": expected}


def check_json(path):
    from tf_keras.preprocessing.text import tokenizer_from_json

    with open(path) as f:
        tok = tokenizer_from_json(f.read())
    print(f"{path}: loaded by tokenizer_from_json; {len(tok.word_index)} words")
    print(json.dumps(tok.texts_to_sequences(PROBE_TEXTS)))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check-json":
        check_json(sys.argv[2])
        return
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "tokenizer_cases.json"), "w") as f:
        json.dump(tokenizer_cases(), f, ensure_ascii=False, indent=1)
    with open(os.path.join(OUT, "text_vectorization.json"), "w") as f:
        json.dump(text_vectorization_fixture(), f, ensure_ascii=False, indent=1)
    print(f"wrote fixtures to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
