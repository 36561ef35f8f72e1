#!/usr/bin/env python3
"""The graph issue's acceptance set: real-world Keras architectures (transcribed from the
keras-io examples, plus keras.applications at 32x32), written outside the repository in every
file form wgnn reads, with Keras's own outputs; then `wgnn predict` on each, CPU and GPU.

    .venv-keras/bin/python tools/graph_acceptance.py make  --out /tmp/graph_acc
    .venv-keras/bin/python tools/graph_acceptance.py check --out /tmp/graph_acc --backend cpu gpu
    .venv-keras/bin/python tools/graph_acceptance.py make  --out DIR --only 'app_*'

File forms for each model NAME (the Keras 2 ones need tf_keras, tools/requirements-legacy.txt):
  NAME.keras                             Keras 3 `model.save`
  NAME.k3.h5                             Keras 3 legacy HDF5 `model.save("m.h5")`
  NAME.k3.json + NAME.k3.weights.h5      Keras 3 `to_json()` + `save_weights`
  NAME.k2.h5                             Keras 2 (tf_keras) `model.save("m.h5")`
  NAME.k2.json + NAME.k2_weights.h5      Keras 2 `to_json()` + legacy `save_weights`
The Keras 2 model is the same architecture built with tf_keras and given the same weights; its
expected outputs are tf_keras's own predictions.

Weights are calibrated so a deep model's output depends on its input: every kernel
N(0, gain/sqrt(fan_in)), then, layer by layer in graph order on the test batch, each
convolution/Dense kernel rescaled so its output has unit spread (LSUV) and each
BatchNormalization's moving statistics set near the batch statistics of its input (mean +
0.2·std·N(0,1), variance × U(0.6, 1.5)); the spread of every output across the batch is
recorded and checked. Tolerance: |wgnn − Keras| ≤ 1e-4·(1 + |Keras|) for every element.
"""

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

ROOT = Path(__file__).resolve().parent.parent
MODELS = []


def model(name, source, inputs, batch=5):
    """Registers build(k) -> model, where k is the keras module (Keras 3 or tf_keras).
    inputs: one spec per model input: ("float", shape, lo, hi) | ("ids", shape, vocab, pad) | ("bool", shape)."""

    def register(build):
        MODELS.append(dict(name=name, source=source, build=build, inputs=inputs, batch=batch))
        return build

    return register


# --------------------------------------------------------------------------------------------
# keras-io examples (sizes cut down so the set runs in minutes; the structure is the example's)


@model("mnist_convnet", "keras-io vision/mnist_convnet", [("float", (28, 28, 1), 0, 1)])
def _(k):
    L = k.layers
    return k.Sequential([k.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(2),
                         L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(2), L.Flatten(), L.Dropout(0.5),
                         L.Dense(10, activation="softmax")])  # fmt: skip


@model("xception_mini", "keras-io vision/image_classification_from_scratch", [("float", (48, 48, 3), 0, 255)])
def _(k):
    L = k.layers
    inputs = k.Input((48, 48, 3))
    x = L.Rescaling(1.0 / 255)(inputs)
    x = L.Conv2D(32, 3, strides=2, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    previous = x
    for size in [32, 48, 64]:
        x = L.Activation("relu")(x)
        x = L.SeparableConv2D(size, 3, padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.Activation("relu")(x)
        x = L.SeparableConv2D(size, 3, padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = L.Conv2D(size, 1, strides=2, padding="same")(previous)
        x = L.add([x, residual])
        previous = x
    x = L.SeparableConv2D(96, 3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dropout(0.25)(x)
    return k.Model(inputs, L.Dense(1, activation=None)(x))


@model("oxford_pets_unet", "keras-io vision/oxford_pets_image_segmentation", [("float", (32, 32, 3), 0, 1)], batch=3)
def _(k):
    L = k.layers
    inputs = k.Input((32, 32, 3))
    x = L.Conv2D(16, 3, strides=2, padding="same")(inputs)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    previous = x
    for filters in [32, 48]:
        x = L.Activation("relu")(x)
        x = L.SeparableConv2D(filters, 3, padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.Activation("relu")(x)
        x = L.SeparableConv2D(filters, 3, padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = L.Conv2D(filters, 1, strides=2, padding="same")(previous)
        x = L.add([x, residual])
        previous = x
    for filters in [48, 32, 16]:
        x = L.Activation("relu")(x)
        x = L.Conv2DTranspose(filters, 3, padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.Activation("relu")(x)
        x = L.Conv2DTranspose(filters, 3, padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.UpSampling2D(2)(x)
        residual = L.UpSampling2D(2)(previous)
        residual = L.Conv2D(filters, 1, padding="same")(residual)
        x = L.add([x, residual])
        previous = x
    outputs = L.Conv2D(3, 3, activation="softmax", padding="same")(x)
    return k.Model(inputs, outputs)


@model("timeseries_fcn", "keras-io timeseries/timeseries_classification_from_scratch", [("float", (96, 1), -2, 2)])
def _(k):
    L = k.layers
    inputs = k.Input((96, 1))
    x = inputs
    for _ in range(3):
        x = L.Conv1D(32, 3, padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
    x = L.GlobalAveragePooling1D()(x)
    return k.Model(inputs, L.Dense(2, activation="softmax")(x))


@model("weather_lstm", "keras-io timeseries/timeseries_weather_forecasting", [("float", (72, 7), -2, 2)])
def _(k):
    L = k.layers
    inputs = k.Input((72, 7))
    return k.Model(inputs, L.Dense(1)(L.LSTM(32)(inputs)))


@model("text_cnn", "keras-io nlp/text_classification_from_scratch", [("ids", (90,), 2000, 0)])
def _(k):
    L = k.layers
    inputs = k.Input((None,), dtype="int64")
    x = L.Embedding(2000, 32)(inputs)
    x = L.Dropout(0.5)(x)
    x = L.Conv1D(32, 7, padding="valid", activation="relu", strides=3)(x)
    x = L.Conv1D(32, 7, padding="valid", activation="relu", strides=3)(x)
    x = L.GlobalMaxPooling1D()(x)
    x = L.Dense(32, activation="relu")(x)
    x = L.Dropout(0.5)(x)
    return k.Model(inputs, L.Dense(1, activation="sigmoid", name="predictions")(x))


@model("bidirectional_lstm_imdb", "keras-io nlp/bidirectional_lstm_imdb", [("ids", (40,), 2000, 0)])
def _(k):
    L = k.layers
    inputs = k.Input((None,), dtype="int32")
    x = L.Embedding(2000, 32)(inputs)
    x = L.Bidirectional(L.LSTM(16, return_sequences=True))(x)
    x = L.Bidirectional(L.LSTM(16))(x)
    return k.Model(inputs, L.Dense(1, activation="sigmoid")(x))


@model("pretrained_word_embeddings", "keras-io nlp/pretrained_word_embeddings", [("ids", (200,), 3000, 0)], batch=3)
def _(k):
    L = k.layers
    inputs = k.Input((None,), dtype="int64")
    x = L.Embedding(3000, 32)(inputs)
    x = L.Conv1D(32, 5, activation="relu")(x)
    x = L.MaxPooling1D(5)(x)
    x = L.Conv1D(32, 5, activation="relu")(x)
    x = L.MaxPooling1D(5)(x)
    x = L.Conv1D(32, 5, activation="relu")(x)
    x = L.GlobalMaxPooling1D()(x)
    x = L.Dense(32, activation="relu")(x)
    x = L.Dropout(0.5)(x)
    return k.Model(inputs, L.Dense(20, activation="softmax")(x))


@model("lstm_seq2seq", "keras-io nlp/lstm_seq2seq", [("float", (10, 20), 0, 1), ("float", (12, 24), 0, 1)])
def _(k):
    L = k.layers
    encoder_inputs = k.Input((None, 20))
    _, state_h, state_c = L.LSTM(32, return_state=True)(encoder_inputs)
    decoder_inputs = k.Input((None, 24))
    x, _, _ = L.LSTM(32, return_sequences=True, return_state=True)(decoder_inputs, initial_state=[state_h, state_c])
    return k.Model([encoder_inputs, decoder_inputs], L.Dense(24, activation="softmax")(x))


@model("addition_rnn", "keras-io nlp/addition_rnn", [("float", (7, 12), 0, 1)])
def _(k):
    L = k.layers
    return k.Sequential([k.Input((7, 12)), L.LSTM(32), L.RepeatVector(4), L.LSTM(32, return_sequences=True),
                         L.Dense(12, activation="softmax")])  # fmt: skip


@model("conv_lstm_next_frame", "keras-io vision/conv_lstm", [("float", (4, 12, 12, 1), 0, 1)], batch=2)
def _(k):
    L = k.layers
    inp = k.Input((None, 12, 12, 1))
    x = L.ConvLSTM2D(8, (5, 5), padding="same", return_sequences=True, activation="relu")(inp)
    x = L.BatchNormalization()(x)
    x = L.ConvLSTM2D(8, (3, 3), padding="same", return_sequences=True, activation="relu")(x)
    x = L.BatchNormalization()(x)
    x = L.ConvLSTM2D(8, (1, 1), padding="same", return_sequences=True, activation="relu")(x)
    return k.Model(inp, L.Conv3D(1, (3, 3, 3), activation="sigmoid", padding="same")(x))


@model("video_gru", "keras-io vision/video_classification (sequence model)", [("float", (20, 64), -1, 1), ("bool", (20,))])
def _(k):
    L = k.layers
    frame_features_input = k.Input((20, 64))
    mask_input = k.Input((20,), dtype="bool")
    x = L.GRU(16, return_sequences=True)(frame_features_input, mask=mask_input)
    x = L.GRU(8)(x)
    x = L.Dropout(0.4)(x)
    x = L.Dense(8, activation="relu")(x)
    return k.Model([frame_features_input, mask_input], L.Dense(5, activation="softmax")(x))


@model("timeseries_anomaly", "keras-io timeseries/timeseries_anomaly_detection", [("float", (96, 1), -2, 2)])
def _(k):
    L = k.layers
    return k.Sequential([k.Input((96, 1)), L.Conv1D(32, 7, padding="same", strides=2, activation="relu"),
                         L.Dropout(0.2), L.Conv1D(16, 7, padding="same", strides=2, activation="relu"),
                         L.Conv1DTranspose(16, 7, padding="same", strides=2, activation="relu"), L.Dropout(0.2),
                         L.Conv1DTranspose(32, 7, padding="same", strides=2, activation="relu"),
                         L.Conv1DTranspose(1, 7, padding="same")])  # fmt: skip


@model("conv_autoencoder", "keras-io vision/autoencoder", [("float", (28, 28, 1), 0, 1)])
def _(k):
    L = k.layers
    inp = k.Input((28, 28, 1))
    x = L.Conv2D(32, 3, activation="relu", padding="same")(inp)
    x = L.MaxPooling2D(2, padding="same")(x)
    x = L.Conv2D(32, 3, activation="relu", padding="same")(x)
    x = L.MaxPooling2D(2, padding="same")(x)
    x = L.Conv2DTranspose(32, 3, strides=2, activation="relu", padding="same")(x)
    x = L.Conv2DTranspose(32, 3, strides=2, activation="relu", padding="same")(x)
    return k.Model(inp, L.Conv2D(1, 3, activation="sigmoid", padding="same")(x))


@model("speaker_recognition", "keras-io audio/speaker_recognition_using_cnn", [("float", (128, 1), -1, 1)])
def _(k):
    L = k.layers

    def residual_block(x, filters, conv_num):
        s = L.Conv1D(filters, 1, padding="same")(x)
        for _ in range(conv_num - 1):
            x = L.Conv1D(filters, 3, padding="same")(x)
            x = L.Activation("relu")(x)
        x = L.Conv1D(filters, 3, padding="same")(x)
        x = L.Add()([x, s])
        x = L.Activation("relu")(x)
        return L.MaxPool1D(pool_size=2, strides=2)(x)

    inputs = k.Input((128, 1))
    x = residual_block(inputs, 8, 2)
    x = residual_block(x, 16, 2)
    x = residual_block(x, 32, 3)
    x = residual_block(x, 32, 3)
    x = L.AveragePooling1D(pool_size=3, strides=3)(x)
    x = L.Flatten()(x)
    x = L.Dense(32, activation="relu")(x)
    x = L.Dense(16, activation="relu")(x)
    return k.Model(inputs, L.Dense(5, activation="softmax", name="output")(x))


@model("ctc_asr_deepspeech", "keras-io audio/ctc_asr", [("float", (20, 32), -1, 1)], batch=2)
def _(k):
    L = k.layers
    input_spectrogram = k.Input((None, 32))
    x = L.Reshape((-1, 32, 1))(input_spectrogram)
    x = L.Conv2D(8, (5, 11), strides=(2, 2), padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.Conv2D(8, (5, 7), strides=(1, 2), padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.Reshape((-1, 8 * 8))(x)
    for i in range(2):
        x = L.Bidirectional(L.GRU(16, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                                  return_sequences=True, reset_after=True), merge_mode="concat")(x)  # fmt: skip
    x = L.Dense(32)(x)
    x = L.ReLU()(x)
    x = L.Dropout(0.5)(x)
    return k.Model(input_spectrogram, L.Dense(10, activation="softmax")(x))


@model("char_lstm", "keras-io generative/lstm_character_level_text_generation", [("float", (40, 20), 0, 1)])
def _(k):
    L = k.layers
    return k.Sequential([k.Input((40, 20)), L.LSTM(32), L.Dense(20, activation="softmax")])


@model("pointnet", "keras-io vision/pointnet", [("float", (64, 3), -1, 1)], batch=4)
def _(k):
    L = k.layers
    import numpy as np

    def conv_bn(x, filters):
        x = L.Conv1D(filters, kernel_size=1, padding="valid")(x)
        x = L.BatchNormalization(momentum=0.0)(x)
        return L.Activation("relu")(x)

    def dense_bn(x, filters):
        x = L.Dense(filters)(x)
        x = L.BatchNormalization(momentum=0.0)(x)
        return L.Activation("relu")(x)

    def tnet(inputs, num_features):
        bias = k.initializers.Constant(np.eye(num_features).flatten())
        x = conv_bn(inputs, 16)
        x = conv_bn(x, 32)
        x = L.GlobalMaxPooling1D()(x)
        x = dense_bn(x, 32)
        x = L.Dense(num_features * num_features, kernel_initializer="zeros", bias_initializer=bias)(x)
        feat_t = L.Reshape((num_features, num_features))(x)
        return L.Dot(axes=(2, 1))([inputs, feat_t])

    inputs = k.Input((64, 3))
    x = tnet(inputs, 3)
    x = conv_bn(x, 16)
    x = conv_bn(x, 16)
    x = tnet(x, 16)
    x = conv_bn(x, 16)
    x = conv_bn(x, 32)
    x = L.GlobalMaxPooling1D()(x)
    x = dense_bn(x, 32)
    x = L.Dropout(0.3)(x)
    return k.Model(inputs, L.Dense(10, activation="softmax")(x))


@model("ct_3d_classification", "keras-io vision/3D_image_classification", [("float", (16, 16, 16, 1), 0, 1)], batch=2)
def _(k):
    L = k.layers
    inputs = k.Input((16, 16, 16, 1))
    x = L.Conv3D(8, 3, activation="relu")(inputs)
    x = L.MaxPool3D(2)(x)
    x = L.BatchNormalization()(x)
    x = L.Conv3D(16, 3, activation="relu")(x)
    x = L.MaxPool3D(2)(x)
    x = L.BatchNormalization()(x)
    x = L.GlobalAveragePooling3D()(x)
    x = L.Dense(16, activation="relu")(x)
    x = L.Dropout(0.3)(x)
    return k.Model(inputs, L.Dense(1, activation="sigmoid")(x))


@model("collaborative_filtering", "keras-io structured_data/collaborative_filtering_movielens (functional)",
       [("ids", (1,), 50, None), ("ids", (1,), 80, None)])  # fmt: skip
def _(k):
    L = k.layers
    user = k.Input((1,), dtype="int32")
    movie = k.Input((1,), dtype="int32")
    user_vec = L.Embedding(50, 8)(user)
    user_bias = L.Embedding(50, 1)(user)
    movie_vec = L.Embedding(80, 8)(movie)
    movie_bias = L.Embedding(80, 1)(movie)
    dot = L.Dot(axes=2)([user_vec, movie_vec])
    x = L.Add()([dot, user_bias, movie_bias])
    x = L.Flatten()(x)
    return k.Model([user, movie], L.Activation("sigmoid")(x))


@model("siamese_contrastive", "keras-io vision/siamese_contrastive (distance as Subtract·Multiply)",
       [("float", (28, 28, 1), 0, 1), ("float", (28, 28, 1), 0, 1)])  # fmt: skip
def _(k):
    L = k.layers
    inp = k.Input((28, 28, 1))
    x = L.BatchNormalization()(inp)
    x = L.Conv2D(4, (5, 5), activation="tanh")(x)
    x = L.AveragePooling2D(pool_size=(2, 2))(x)
    x = L.Conv2D(16, (5, 5), activation="tanh")(x)
    x = L.AveragePooling2D(pool_size=(2, 2))(x)
    x = L.Flatten()(x)
    x = L.BatchNormalization()(x)
    x = L.Dense(10, activation="tanh")(x)
    tower = k.Model(inp, x, name="tower")
    a = k.Input((28, 28, 1))
    b = k.Input((28, 28, 1))
    d = L.Subtract()([tower(a), tower(b)])
    d = L.Multiply()([d, d])
    d = L.BatchNormalization()(d)
    return k.Model([a, b], L.Dense(1, activation="sigmoid")(d))


@model("handwriting_ocr", "keras-io vision/handwriting_recognition", [("float", (64, 32, 1), 0, 1)], batch=2)
def _(k):
    L = k.layers
    inp = k.Input((64, 32, 1), name="image")
    x = L.Conv2D(16, (3, 3), activation="relu", kernel_initializer="he_normal", padding="same")(inp)
    x = L.MaxPooling2D((2, 2))(x)
    x = L.Conv2D(32, (3, 3), activation="relu", kernel_initializer="he_normal", padding="same")(x)
    x = L.MaxPooling2D((2, 2))(x)
    x = L.Reshape(((64 // 4), (32 // 4) * 32))(x)
    x = L.Dense(32, activation="relu")(x)
    x = L.Dropout(0.2)(x)
    x = L.Bidirectional(L.LSTM(16, return_sequences=True, dropout=0.25))(x)
    x = L.Bidirectional(L.LSTM(16, return_sequences=True, dropout=0.25))(x)
    return k.Model(inp, L.Dense(12, activation="softmax", name="dense2")(x))


@model("gru_masked_sum", "text classification: Embedding(mask_zero) -> Bi-GRU(reset_after=False, sum) -> GRU",
       [("ids", (30,), 500, 0)])  # fmt: skip
def _(k):
    L = k.layers
    inputs = k.Input((None,), dtype="int32")
    x = L.Embedding(500, 16, mask_zero=True)(inputs)
    x = L.Bidirectional(L.GRU(16, reset_after=False, return_sequences=True), merge_mode="sum")(x)
    x = L.GRU(8)(x)
    return k.Model(inputs, L.Dense(3, activation="softmax")(x))


@model("imdb_cnn_lstm", "keras examples imdb_cnn_lstm", [("ids", (60,), 1000, 0)])
def _(k):
    L = k.layers
    return k.Sequential([k.Input((60,)), L.Embedding(1000, 32), L.Dropout(0.25),
                         L.Conv1D(32, 5, padding="valid", activation="relu", strides=1), L.MaxPooling1D(pool_size=4),
                         L.LSTM(16), L.Dense(1), L.Activation("sigmoid")])  # fmt: skip


@model("imdb_fasttext", "keras examples imdb_fasttext", [("ids", (50,), 1000, 0)])
def _(k):
    L = k.layers
    return k.Sequential([k.Input((50,)), L.Embedding(1000, 16), L.GlobalAveragePooling1D(),
                         L.Dense(1, activation="sigmoid")])  # fmt: skip


@model("mnist_hierarchical_rnn", "keras examples mnist_hierarchical_rnn", [("float", (28, 28, 1), 0, 1)])
def _(k):
    L = k.layers
    x = k.Input((28, 28, 1))
    encoded_rows = L.TimeDistributed(L.LSTM(16))(x)
    encoded_columns = L.LSTM(16)(encoded_rows)
    return k.Model(x, L.Dense(10, activation="softmax")(encoded_columns))


@model("convmixer", "keras-io vision/convmixer", [("float", (32, 32, 3), 0, 255)], batch=3)
def _(k):
    L = k.layers

    def activation_block(x):
        x = L.Activation("gelu")(x)
        return L.BatchNormalization()(x)

    inputs = k.Input((32, 32, 3))
    x = L.Rescaling(scale=1.0 / 255)(inputs)
    x = L.Conv2D(32, kernel_size=2, strides=2)(x)
    x = activation_block(x)
    for _ in range(3):
        x0 = x
        x = L.DepthwiseConv2D(kernel_size=5, padding="same")(x)
        x = L.Add()([activation_block(x), x0])
        x = L.Conv2D(32, kernel_size=1)(x)
        x = activation_block(x)
    x = L.GlobalAvgPool2D()(x)
    return k.Model(inputs, L.Dense(10, activation="softmax")(x))


@model("distillation_student", "keras-io vision/knowledge_distillation", [("float", (28, 28, 1), 0, 1)])
def _(k):
    L = k.layers
    return k.Sequential([k.Input((28, 28, 1)), L.Conv2D(16, (3, 3), strides=(2, 2), padding="same"),
                         L.LeakyReLU(negative_slope=0.2) if k.__name__ == "keras" else L.LeakyReLU(alpha=0.2),
                         L.MaxPooling2D(pool_size=(2, 2), strides=(1, 1), padding="same"),
                         L.Conv2D(32, (3, 3), strides=(2, 2), padding="same"), L.Flatten(), L.Dense(10)])  # fmt: skip


@model("dcgan_generator", "keras-io generative/dcgan_overriding_train_step (generator)", [("float", (16,), -1, 1)])
def _(k):
    L = k.layers
    leaky = (lambda: L.LeakyReLU(negative_slope=0.2)) if k.__name__ == "keras" else (lambda: L.LeakyReLU(alpha=0.2))
    return k.Sequential([k.Input((16,)), L.Dense(8 * 8 * 16), L.Reshape((8, 8, 16)),
                         L.Conv2DTranspose(16, kernel_size=4, strides=2, padding="same"), leaky(),
                         L.Conv2DTranspose(16, kernel_size=4, strides=2, padding="same"), leaky(),
                         L.Conv2D(3, kernel_size=5, padding="same", activation="sigmoid")])  # fmt: skip


@model("dcgan_discriminator", "keras-io generative/dcgan_overriding_train_step (discriminator)",
       [("float", (32, 32, 3), 0, 1)])  # fmt: skip
def _(k):
    L = k.layers
    leaky = (lambda: L.LeakyReLU(negative_slope=0.2)) if k.__name__ == "keras" else (lambda: L.LeakyReLU(alpha=0.2))
    return k.Sequential([k.Input((32, 32, 3)), L.Conv2D(16, kernel_size=4, strides=2, padding="same"), leaky(),
                         L.Conv2D(32, kernel_size=4, strides=2, padding="same"), leaky(),
                         L.Conv2D(32, kernel_size=4, strides=2, padding="same"), leaky(), L.Flatten(),
                         L.Dropout(0.2), L.Dense(1, activation="sigmoid")])  # fmt: skip


@model("har_cnn_lstm", "human activity recognition: TimeDistributed(Conv1D) -> LSTM", [("float", (4, 32, 9), -1, 1)])
def _(k):
    L = k.layers
    return k.Sequential([k.Input((4, 32, 9)), L.TimeDistributed(L.Conv1D(16, 3, activation="relu")),
                         L.TimeDistributed(L.Conv1D(16, 3, activation="relu")), L.TimeDistributed(L.Dropout(0.5)),
                         L.TimeDistributed(L.MaxPooling1D(pool_size=2)), L.TimeDistributed(L.Flatten()),
                         L.LSTM(16), L.Dropout(0.5), L.Dense(16, activation="relu"),
                         L.Dense(6, activation="softmax")])  # fmt: skip


@model("wavenet_causal", "WaveNet-style gated causal dilated Conv1D stack", [("float", (64, 1), -1, 1)])
def _(k):
    L = k.layers
    inputs = k.Input((64, 1))
    x = L.Conv1D(16, 1)(inputs)
    skips = []
    for rate in (1, 2, 4, 8):
        t = L.Conv1D(16, 2, dilation_rate=rate, padding="causal", activation="tanh")(x)
        s = L.Conv1D(16, 2, dilation_rate=rate, padding="causal", activation="sigmoid")(x)
        z = L.Multiply()([t, s])
        skips.append(L.Conv1D(16, 1)(z))
        x = L.Add()([x, L.Conv1D(16, 1)(z)])
    x = L.Activation("relu")(L.Add()(skips))
    x = L.Conv1D(8, 1, activation="relu")(x)
    return k.Model(inputs, L.Conv1D(4, 1, activation="softmax")(x))


@model("inception_block", "Inception-style module (1x1, 3x3, 5x5, pool branches concatenated)",
       [("float", (32, 32, 3), 0, 1)], batch=3)  # fmt: skip
def _(k):
    L = k.layers
    inputs = k.Input((32, 32, 3))
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
    b1 = L.Conv2D(8, 1, activation="relu")(x)
    b2 = L.Conv2D(8, 3, padding="same", activation="relu")(L.Conv2D(4, 1, activation="relu")(x))
    b3 = L.Conv2D(8, 5, padding="same", activation="relu")(L.Conv2D(4, 1, activation="relu")(x))
    b4 = L.Conv2D(8, 1, activation="relu")(L.MaxPooling2D(3, strides=1, padding="same")(x))
    x = L.Concatenate(axis=-1)([b1, b2, b3, b4])
    x = L.ZeroPadding2D(1)(x)
    x = L.Conv2D(16, 3, strides=2, groups=4, activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    return k.Model(inputs, L.Dense(10, activation="softmax")(x))


@model("nmt_gru_seq2seq", "English-to-Spanish style GRU encoder-decoder with masks and initial_state",
       [("ids", (12,), 300, 0), ("ids", (10,), 400, 0)])  # fmt: skip
def _(k):
    L = k.layers
    source = k.Input((None,), dtype="int64", name="english")
    x = L.Embedding(300, 16, mask_zero=True)(source)
    encoded = L.Bidirectional(L.GRU(16), merge_mode="sum")(x)
    past_target = k.Input((None,), dtype="int64", name="spanish")
    x = L.Embedding(400, 16, mask_zero=True)(past_target)
    x = L.GRU(16, return_sequences=True)(x, initial_state=encoded)
    x = L.Dropout(0.5)(x)
    return k.Model([source, past_target], L.Dense(400, activation="softmax")(x))


@model("multi_task_heads", "Functional model with two named outputs (classification + regression)",
       [("float", (16, 16, 3), 0, 1)])  # fmt: skip
def _(k):
    L = k.layers
    inputs = k.Input((16, 16, 3))
    x = L.Conv2D(8, 3, activation="relu")(inputs)
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    shared = L.Dense(16, activation="relu")(x)
    cls = L.Dense(4, activation="softmax", name="class_probs")(shared)
    reg = L.Dense(2, name="box")(shared)
    return k.Model(inputs, [cls, reg])


# --------------------------------------------------------------------------------------------
# keras.applications, weights=None, 32x32 (the five the issue names first)


def app(name, fn_name, size=32, batch=3):
    @model(f"app_{name}", f"keras.applications.{fn_name}", [("float", (size, size, 3), 0, 255)], batch=batch)
    def _(k):
        return getattr(k.applications, fn_name)(weights=None, input_shape=(size, size, 3), classes=10)


app("mobilenetv2", "MobileNetV2")
app("resnet50", "ResNet50")
app("efficientnetb0", "EfficientNetB0")
app("densenet121", "DenseNet121")
app("vgg16", "VGG16")
app("resnet50v2", "ResNet50V2")
app("mobilenet", "MobileNet")
app("mobilenetv3small", "MobileNetV3Small")
app("efficientnetv2b0", "EfficientNetV2B0")
app("nasnetmobile", "NASNetMobile")
app("xception", "Xception", size=71, batch=2)
app("inceptionv3", "InceptionV3", size=75, batch=2)


# --------------------------------------------------------------------------------------------
# weights


def fan_in_of(v_name, shape, layer):
    import numpy as np

    if v_name == "depthwise_kernel":  # (window..., in, multiplier): each output sees one channel
        return int(np.prod(shape[:-2]))
    if "Transpose" in type(layer).__name__:  # (window..., out, in)
        return int(np.prod(shape[:-2]) * shape[-1])
    return int(np.prod(shape[:-1])) if len(shape) > 1 else 1


def randomize(model, rng):
    import numpy as np

    for layer in flat_layers(model):
        for v in layer.weights:
            shape = tuple(int(d) for d in v.shape)
            name = v.name.split("/")[-1].split(":")[0]
            if name == "embeddings":
                w = rng.normal(0.0, 1.0, shape)
            elif name in ("bias", "beta"):
                w = rng.normal(0.0, 0.1, shape)
            elif name in ("gamma",):
                w = rng.uniform(0.6, 1.4, shape)
            elif name == "moving_mean":
                w = rng.normal(0.0, 0.1, shape)
            elif name == "moving_variance":
                w = rng.uniform(0.6, 1.5, shape)
            elif name in ("mean", "variance", "count"):
                continue  # Normalization layers keep their adapted constants
            elif name == "recurrent_kernel":
                w = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
            elif len(shape) >= 2:
                w = rng.normal(0.0, np.sqrt(2.0 / max(1, fan_in_of(name, shape, layer))), shape)
            else:
                w = rng.normal(0.0, 0.1, shape)
            v.assign(np.asarray(w, dtype=v.dtype))


def flat_layers(model):
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and not hasattr(layer, "forward_layer"):
            out.extend(flat_layers(layer))
        out.append(layer)
    return out


def calibrate(keras, model, xs, rng):
    """LSUV for each top-level conv/Dense kernel and batch statistics for each top-level
    BatchNormalization, in graph order, on the test batch."""
    import numpy as np

    for layer in model.layers:
        kind = type(layer).__name__
        is_bn = kind == "BatchNormalization"
        has_kernel = any(v.name.split("/")[-1] in ("kernel", "depthwise_kernel", "pointwise_kernel") for v in layer.weights)
        if not (is_bn or (has_kernel and "RNN" not in kind and "LSTM" not in kind and "GRU" not in kind
                          and kind != "Bidirectional" and kind != "TimeDistributed")):  # fmt: skip
            continue
        try:
            if len(layer._inbound_nodes) != 1:
                continue
            if is_bn:
                feat = np.asarray(keras.Model(model.inputs, layer.input)(xs, training=False), np.float64)
                # One mean and variance over batch, space and channels (not per channel: a
                # channel that barely varies across the batch, standardized on its own, would
                # amplify rounding and make Keras disagree with itself).
                m, v = float(feat.mean()), float(feat.var())
                shape = layer.moving_mean.shape
                mm = m + 0.1 * np.sqrt(v) * rng.uniform(-1, 1, shape)
                mv = v * rng.uniform(1.0, 1.5, shape) + 1e-3
                layer.moving_mean.assign(mm.astype(np.float32))
                layer.moving_variance.assign(mv.astype(np.float32))
            else:
                out = np.asarray(keras.Model(model.inputs, layer.output)(xs, training=False), np.float64)
                std = out.std()
                if std > 1e-6 and layer not in output_layers(model):
                    for v in layer.weights:
                        if v.name.split("/")[-1] in ("kernel", "pointwise_kernel", "bias"):
                            v.assign((np.asarray(v) / std).astype(np.float32))
        except Exception as e:  # a layer the sub-model cannot reach (shared, nested): keep its weights
            print(f"    calibrate: skip {layer.name}: {str(e).splitlines()[0][:80]}")
    # The output heads: logits with a spread of about 2, so softmax/sigmoid outputs are not flat.
    for layer in output_layers(model):
        if type(layer).__name__ != "Dense":
            continue
        try:
            feat = np.asarray(keras.Model(model.inputs, layer.input)(xs, training=False), np.float64)
            w = np.asarray(layer.kernel, np.float64)
            logits = feat.reshape(-1, w.shape[0]) @ w
            std = logits.std()
            if std > 1e-6:
                layer.kernel.assign((w * 2.0 / std).astype(np.float32))
                if layer.use_bias:  # centred, so a sigmoid head does not saturate
                    centre = logits.mean(axis=0) * 2.0 / std
                    layer.bias.assign((-centre + rng.normal(0, 0.3, centre.shape)).astype(np.float32))
        except Exception as e:
            print(f"    calibrate head: skip {layer.name}: {str(e).splitlines()[0][:80]}")


def output_layers(model):
    names = set()
    for t in model.outputs:
        hist = getattr(t, "_keras_history", None)
        if hist is not None:
            names.add(hist[0].name)
    return [layer for layer in model.layers if layer.name in names]


def make_inputs(rng, spec, batch):
    import numpy as np

    xs = []
    for s in spec:
        if s[0] == "float":
            _, shape, lo, hi = s
            if len(shape) == 3 and shape[0] >= 16:
                xs.append(structured_images(rng, batch, shape, lo, hi))
            else:
                xs.append(rng.uniform(lo, hi, (batch, *shape)).astype(np.float32))
        elif s[0] == "bool":
            _, shape = s
            t = shape[0]
            lengths = [t, 1] + list(rng.integers(1, t + 1, batch - 2))
            xs.append(np.array([[j < n for j in range(t)] for n in lengths[:batch]]))
        else:
            _, shape, vocab, pad = s
            ids = rng.integers(1, vocab, (batch, *shape)).astype(np.int32)
            if pad is not None and len(shape) == 1 and shape[0] > 1:
                t = shape[0]
                lengths = [t, 1] + list(rng.integers(1, t + 1, batch - 2))
                for i, n in enumerate(lengths[:batch]):
                    ids[i, n:] = pad
            xs.append(ids)
    return xs


def structured_images(rng, batch, shape, lo, hi):
    """Images that differ as photos do (each its own low-frequency pattern, brightness and
    contrast, plus pixel noise), so a deep model's features still differ between them at 1x1."""
    import numpy as np

    h, w, c = shape
    out = np.empty((batch, h, w, c))
    for i in range(batch):
        coarse = rng.normal(0, 1, (4, 4, c))
        ys, xs = (np.arange(h) * 4 // h), (np.arange(w) * 4 // w)
        pattern = coarse[ys][:, xs]
        img = rng.uniform(0.3, 0.7) + rng.uniform(0.1, 0.3) * pattern + 0.05 * rng.normal(0, 1, (h, w, c))
        out[i] = lo + (hi - lo) * np.clip(img, 0, 1)
    return out.astype(np.float32)


def ulp_drift(model, xs, y):
    """How far Keras's own output moves when every input float moves by about one ulp: a model
    whose output moves by more than the test's tolerance is ill-conditioned, not a fair test."""
    import numpy as np

    moved = [np.nextafter(x, np.float32(np.inf)).astype(np.float32) if x.dtype == np.float32 else x for x in xs]
    y2 = [np.asarray(v, np.float32) for v in as_list(model.predict(moved if len(moved) > 1 else moved[0], verbose=0))]
    return float(max(np.max(np.abs(a - b) / (1 + np.abs(b))) for a, b in zip(y2, y)))


def spread(outputs):
    import numpy as np

    worst = np.inf
    for o in outputs:
        o = np.asarray(o, np.float64)
        s = o.std(axis=0).mean() / (np.abs(o).mean() + 1e-12)
        worst = min(worst, float(s))
    return worst


def as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def make(args):
    import numpy as np

    import keras

    try:
        import tf_keras
    except ImportError:
        tf_keras = None
        print("tf_keras missing: Keras 2 forms skipped (pip install --no-deps -r tools/requirements-legacy.txt)")
    from keras.src.legacy.saving import legacy_h5_format  # noqa: F401  (Keras 3 writes legacy .h5 by name)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for spec in MODELS:
        name = spec["name"]
        if args.only and not any(fnmatch.fnmatch(name, p) for p in args.only.split(",")):
            continue
        t0 = time.time()
        seed = zlib.crc32(name.encode())
        rng = np.random.default_rng(seed)
        keras.utils.set_random_seed(seed % 2**31)
        xs = make_inputs(rng, spec["inputs"], spec["batch"])
        entry = dict(name=name, source=spec["source"], inputs=[], forms=[])
        try:
            m3 = spec["build"](keras)
        except Exception as e:
            print(f"{name}: Keras 3 cannot build it: {e}")
            continue
        randomize(m3, rng)
        calibrate(keras, m3, xs, rng)
        y3 = [np.asarray(y, np.float32) for y in as_list(m3.predict(xs if len(xs) > 1 else xs[0], verbose=0))]
        entry["spread"] = spread(y3)
        entry["ulp_drift"] = ulp_drift(m3, xs, y3)
        entry["outputs"] = list(m3.output_names) if hasattr(m3, "output_names") else []
        for i, x in enumerate(xs):
            np.save(out / f"{name}.in{i}.npy", x)
            entry["inputs"].append(f"{name}.in{i}.npy")
        np.savez(out / f"{name}.k3.expected.npz", *y3)
        m3.save(out / f"{name}.keras")
        entry["forms"].append(dict(form="keras", model=f"{name}.keras", expected=f"{name}.k3.expected.npz"))
        try:
            m3.save(out / f"{name}.k3.h5")
            entry["forms"].append(dict(form="k3_h5", model=f"{name}.k3.h5", expected=f"{name}.k3.expected.npz"))
        except Exception as e:
            print(f"  {name}: Keras 3 legacy .h5 save failed: {e}")
        (out / f"{name}.k3.json").write_text(m3.to_json())
        m3.save_weights(out / f"{name}.k3.weights.h5")
        entry["forms"].append(dict(form="k3_json_weights", model=f"{name}.k3.json", weights=f"{name}.k3.weights.h5",
                                   expected=f"{name}.k3.expected.npz"))  # fmt: skip
        if tf_keras is not None:
            try:
                m2 = spec["build"](tf_keras)
                m2.set_weights(m3.get_weights())
                y2 = [np.asarray(y, np.float32) for y in as_list(m2.predict(xs if len(xs) > 1 else xs[0], verbose=0))]
                np.savez(out / f"{name}.k2.expected.npz", *y2)
                m2.save(out / f"{name}.k2.h5")
                (out / f"{name}.k2.json").write_text(m2.to_json())
                m2.save_weights(out / f"{name}.k2_weights.h5")
                entry["forms"].append(dict(form="k2_h5", model=f"{name}.k2.h5", expected=f"{name}.k2.expected.npz"))
                entry["forms"].append(dict(form="k2_json_weights", model=f"{name}.k2.json",
                                           weights=f"{name}.k2_weights.h5", expected=f"{name}.k2.expected.npz"))  # fmt: skip
                entry["k2_vs_k3"] = float(max(np.max(np.abs(a - b) / (1 + np.abs(b))) for a, b in zip(y2, y3)))
            except Exception as e:
                print(f"  {name}: Keras 2 forms skipped: {str(e).splitlines()[0][:160]}")
        manifest[name] = entry
        manifest_path.write_text(json.dumps(manifest, indent=1))
        print(f"{name:32} {time.time() - t0:6.1f}s  spread {entry['spread']:.3g}  ulp drift {entry['ulp_drift']:.2g}"
              f"  forms {len(entry['forms'])}"
              f"  params {m3.count_params()}")  # fmt: skip


def read_outputs(path):
    import numpy as np

    if str(path).endswith(".npz"):
        with np.load(path) as z:
            return [z[k] for k in z.files]
    return [np.load(path)]


def check(args):
    import numpy as np

    out = Path(args.out)
    manifest = json.loads((out / "manifest.json").read_text())
    wgnn = Path(args.wgnn)
    rows, failures = [], 0
    tmp = out / "wgnn_out"
    tmp.mkdir(exist_ok=True)
    for name, entry in manifest.items():
        if args.only and not any(fnmatch.fnmatch(name, p) for p in args.only.split(",")):
            continue
        for form in entry["forms"]:
            if args.forms and form["form"] not in args.forms:
                continue
            expected = read_outputs(out / form["expected"])
            for backend in args.backend:
                suffix = ".npz" if len(expected) > 1 else ".npy"
                dst = tmp / f"{name}.{form['form']}.{backend}{suffix}"
                cmd = [str(wgnn), "predict", str(out / form["model"]), *[str(out / i) for i in entry["inputs"]],
                       "-o", str(dst), "--backend", backend]  # fmt: skip
                if "weights" in form:
                    cmd += ["--weights", str(out / form["weights"])]
                t0 = time.time()
                r = subprocess.run(cmd, capture_output=True, text=True)
                secs = time.time() - t0
                if r.returncode != 0:
                    msg = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
                    rows.append((name, form["form"], backend, "ERROR", msg[:150], secs))
                    failures += 1
                    continue
                got = read_outputs(dst)
                if len(got) != len(expected) or any(g.shape != e.shape for g, e in zip(got, expected)):
                    rows.append((name, form["form"], backend, "SHAPE",
                                 f"{[g.shape for g in got]} vs {[e.shape for e in expected]}", secs))  # fmt: skip
                    failures += 1
                    continue
                worst = max(float(np.max(np.abs(g - e) / (1.0 + np.abs(e)))) for g, e in zip(got, expected))
                ok = worst <= 1e-4
                failures += not ok
                rows.append((name, form["form"], backend, "ok" if ok else "FAIL", f"max rel {worst:.2e}", secs))
                print(f"{name:30} {form['form']:16} {backend:4} {rows[-1][3]:5} {rows[-1][4]}  ({secs:.1f}s)",
                      flush=True)  # fmt: skip
    print()
    print("| model | form | backend | result | detail |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} |")
    models = {r[0] for r in rows}
    bad = {r[0] for r in rows if r[3] != "ok"}
    print(f"\n{len(models) - len(bad)} of {len(models)} models pass every form and backend; "
          f"{len(rows) - failures} of {len(rows)} runs within 1e-4·(1+|expected|)")  # fmt: skip
    print(json.dumps(dict(models=len(models), models_ok=len(models) - len(bad), runs=len(rows), runs_ok=len(rows) - failures)))
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["make", "check", "list"])
    p.add_argument("--out", default="/tmp/graph_acc")
    p.add_argument("--only", help="comma-separated globs of model names")
    p.add_argument("--backend", nargs="+", default=["cpu"])
    p.add_argument("--forms", nargs="+", help="only these forms (keras k3_h5 k3_json_weights k2_h5 k2_json_weights)")
    p.add_argument("--wgnn", default=str(ROOT / "target" / "release" / "wgnn"))
    args = p.parse_args()
    if args.what == "list":
        for m in MODELS:
            print(f"{m['name']:32} {m['source']}")
        return 0
    if args.what == "make":
        make(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
