"""The blog post's code, with ``keras`` replaced by ``minicnn``: same model, same numbers, and it trains."""

import gzip
import os

import numpy as np
import pytest

from minicnn.utils import clear_session, set_random_seed, to_categorical

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

SUMMARY_28_AT_76 = """\
Model: "sequential"
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━┓
┃ Layer (type)                    ┃ Output Shape           ┃       Param # ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━┩
│ conv2d (Conv2D)                 │ (None, 26, 26, 32)     │           320 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ max_pooling2d (MaxPooling2D)    │ (None, 13, 13, 32)     │             0 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ flatten (Flatten)               │ (None, 5408)           │             0 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ dense (Dense)                   │ (None, 128)            │       692,352 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ dense_1 (Dense)                 │ (None, 10)             │         1,290 │
└─────────────────────────────────┴────────────────────────┴───────────────┘
 Total params: 693,962 (2.65 MB)
 Trainable params: 693,962 (2.65 MB)
 Non-trainable params: 0 (0.00 B)"""

# Keras 3.x (rich) output on a terminal at least 92 columns wide.
SUMMARY_224_AT_88 = """\
Model: "sequential"
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━┓
┃ Layer (type)                         ┃ Output Shape                ┃         Param # ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━┩
│ conv2d (Conv2D)                      │ (None, 222, 222, 32)        │             896 │
├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤
│ max_pooling2d (MaxPooling2D)         │ (None, 111, 111, 32)        │               0 │
├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤
│ flatten (Flatten)                    │ (None, 394272)              │               0 │
├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤
│ dense (Dense)                        │ (None, 128)                 │      50,466,944 │
├──────────────────────────────────────┼─────────────────────────────┼─────────────────┤
│ dense_1 (Dense)                      │ (None, 10)                  │           1,290 │
└──────────────────────────────────────┴─────────────────────────────┴─────────────────┘
 Total params: 50,469,130 (192.52 MB)
 Trainable params: 50,469,130 (192.52 MB)
 Non-trainable params: 0 (0.00 B)"""

pytestmark = pytest.mark.usefixtures("default_settings")


def blog_model(num_classes, input_shape=(224, 224, 3)):
    """The blog's "Building the Model" cell; only the import line differs (and input_shape is a parameter)."""
    from minicnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
    from minicnn.models import Sequential

    model = Sequential()
    model.add(Conv2D(32, (3, 3), input_shape=input_shape, activation='relu'))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Flatten())
    model.add(Dense(units=128, activation='relu'))
    model.add(Dense(units=num_classes, activation='softmax'))
    return model


def test_blog_model_has_kerass_parameter_counts_and_summary(monkeypatch):
    model = blog_model(num_classes=10)
    assert model.count_params() == 50_469_130
    text = []
    model.summary(print_fn=text.append, line_length=88)
    assert text[0] == SUMMARY_224_AT_88
    clear_session()
    small = blog_model(num_classes=10, input_shape=(28, 28, 1))
    assert small.count_params() == 693_962
    monkeypatch.setenv("COLUMNS", "80")   # not a terminal: Keras uses 80 columns, a table of 76
    text = []
    small.summary(print_fn=text.append)
    assert text[0] == SUMMARY_28_AT_76


def test_blog_code_trains_on_random_224_images(capsys):
    rng = np.random.default_rng(70)
    set_random_seed(70)
    num_classes = 10
    train_data = rng.random((4, 224, 224, 3), dtype=np.float32)
    train_labels = to_categorical(rng.integers(0, num_classes, 4), num_classes)
    val_data = rng.random((2, 224, 224, 3), dtype=np.float32)
    val_labels = to_categorical(rng.integers(0, num_classes, 2), num_classes)

    model = blog_model(num_classes)
    before = model.get_weights()
    # The blog's "Training the Model" cell; epochs and batch_size shrunk from 10 and 32 (50M weights).
    model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
    history = model.fit(train_data, train_labels, validation_data=(val_data, val_labels), epochs=1, batch_size=2)

    assert list(history.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert all(np.isfinite(v[0]) for v in history.history.values())
    assert all(np.any(a != b) for a, b in zip(before, model.get_weights()))
    assert "2/2 ━━━━━━━━━━━━━━━━━━━━" in capsys.readouterr().out
    probs = model.predict(val_data, verbose=0)
    assert probs.shape == (2, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_subset(n_train, n_test):
    x = _read_idx(os.path.join(FASHION_MNIST, "train-images-idx3-ubyte.gz"))
    y = _read_idx(os.path.join(FASHION_MNIST, "train-labels-idx1-ubyte.gz"))
    xt = _read_idx(os.path.join(FASHION_MNIST, "t10k-images-idx3-ubyte.gz"))
    yt = _read_idx(os.path.join(FASHION_MNIST, "t10k-labels-idx1-ubyte.gz"))
    return (x[:n_train, ..., None], y[:n_train]), (xt[:n_test, ..., None], yt[:n_test])


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason="Fashion-MNIST not installed on this machine")
def test_blog_model_learns_a_fashion_mnist_subset():
    set_random_seed(71)
    (x, y), (xt, yt) = _fashion_subset(1500, 500)
    train_data, val_data = x / np.float32(255), xt / np.float32(255)   # the blog's "normalize"
    train_labels, val_labels = to_categorical(y, 10), to_categorical(yt, 10)
    model = blog_model(num_classes=10, input_shape=(28, 28, 1))
    model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
    history = model.fit(train_data, train_labels, validation_data=(val_data, val_labels), epochs=2, batch_size=32,
                        verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
    loss, accuracy = model.evaluate(val_data, val_labels, verbose=0)
    assert accuracy > 0.65   # 10 classes: chance is 0.1; Keras gets ~0.75 from this subset in 2 epochs


def test_blog_model_learns_synthetic_shapes():
    """Always available: 16x16 images of a horizontal or a vertical bar, or a cross, at random places."""
    rng = np.random.default_rng(72)
    set_random_seed(72)
    n = 480
    labels = rng.integers(0, 3, n)
    images = rng.normal(0, 0.2, (n, 16, 16, 1)).astype(np.float32)
    for img, label in zip(images, labels):
        r, c = rng.integers(3, 13, 2)
        if label in (0, 2):
            img[r, c - 3 : c + 3] += 1
        if label in (1, 2):
            img[r - 3 : r + 3, c] += 1
    model = blog_model(num_classes=3, input_shape=(16, 16, 1))
    model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
    history = model.fit(images, labels, epochs=10, batch_size=16, validation_split=0.25, verbose=0)
    assert history.history["val_accuracy"][-1] > 0.85
