"""The model file remembers what its training images looked like (``minicnn.data.stats``)."""

import json

import numpy as np
import pytest

from minicnn.data import stats
from minicnn.layers import Conv2D, Dense, Flatten, Input
from minicnn.models import Sequential, load_model
from minicnn.utils import set_random_seed

pytestmark = pytest.mark.usefixtures("default_settings")


def by_hand(x):
    """The documented statistics, computed with explicit loops over a 2-pixel ring (28 / 14 = 2)."""
    n, h, w, c = x.shape
    border = np.zeros((n, c))
    for i in range(n):
        for ch in range(c):
            ring = [x[i, r, q, ch] for r in range(h) for q in range(w) if r < 2 or q < 2 or r >= h - 2 or q >= w - 2]
            border[i, ch] = np.mean(ring)
    whole = x.reshape(n, -1, c).mean(axis=1)
    out = {}
    for prefix, v in (("border", border), ("image", whole)):
        out.update({f"{prefix}_mean": v.mean(0), f"{prefix}_std": v.std(0), f"{prefix}_min": v.min(0),
                    f"{prefix}_max": v.max(0)})
    return out


def tiny_model(channels=2):
    model = Sequential([Input(shape=(28, 28, channels)), Conv2D(2, 5, strides=4), Flatten(),
                        Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def test_fit_records_the_statistics_of_the_training_part():
    set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (40, 28, 28, 2))
    x[:, 5:20, 6:22, 1] += 100                          # channels differ, centre brighter than border
    y = rng.integers(0, 3, 40)
    model = tiny_model()
    model.fit(x, y, epochs=2, batch_size=7, validation_split=0.25, verbose=0)
    expected = by_hand(x[:30])                          # the last quarter is validation data
    assert set(model.input_stats) == set(stats.KEYS)
    # fit sees the pixels as float32, each rounded by at most 2**-24 of its size: so is every mean, min and max
    atol = 2.0**-24 * np.abs(x).max()
    for key in stats.KEYS:
        np.testing.assert_allclose(model.input_stats[key], expected[key], rtol=0, atol=atol, err_msg=key)


def test_fit_on_batches_records_them_too():
    set_random_seed(2)
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 1, (12, 28, 28, 1)), rng.integers(0, 3, 12)
    model = tiny_model(1)
    model.fit(iter([(x[:5], y[:5]), (x[5:], y[5:])]), epochs=1, verbose=0)   # a stream of batches
    np.testing.assert_allclose(model.input_stats["border_max"], by_hand(x)["border_max"], rtol=0, atol=2.0**-24)


def test_statistics_survive_save_and_load_and_a_bad_value_is_refused(tmp_path):
    set_random_seed(3)
    rng = np.random.default_rng(3)
    model = tiny_model()
    model.fit(rng.uniform(0, 255, (8, 28, 28, 2)), rng.integers(0, 3, 8), epochs=1, verbose=0)
    path = tmp_path / "m.npz"
    model.save(path)
    assert load_model(path).input_stats == model.input_stats
    for bad, message in (({"border_mean": [1.0]}, "keys"), ({**model.input_stats, "image_std": [1.0, float("nan")]}, "finite"),
                         ({**model.input_stats, "image_max": [1.0]}, "one per channel")):
        text = json.dumps(dict(json.loads(np.load(path)["__meta__"].item()), input_stats=bad), allow_nan=True)
        np.savez(tmp_path / "bad.npz", **{k: v for k, v in np.load(path).items() if k != "__meta__"},
                 __meta__=np.array(text))
        with pytest.raises(ValueError, match=message):
            load_model(tmp_path / "bad.npz")


def test_unusual_flags_an_inverted_image_and_not_a_similar_one():
    rng = np.random.default_rng(4)
    x = np.zeros((50, 28, 28, 1))
    for image in x:                                                # light objects of many sizes on black
        top, left, bottom, right = rng.integers(3, 9), rng.integers(3, 9), rng.integers(19, 26), rng.integers(19, 26)
        image[top:bottom, left:right] = rng.uniform(120, 255, (bottom - top, right - left, 1))
    s = stats.input_stats(x)
    similar = np.zeros((1, 28, 28, 1))
    similar[:, 7:21, 9:19] = 200
    inverted = 255 - x[:1]
    assert stats.unusual(s, similar) == [None]
    [message] = stats.unusual(s, inverted)
    assert "its border is 255" in message and "--invert" in message
