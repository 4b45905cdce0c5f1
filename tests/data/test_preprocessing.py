"""Preprocessing and augmentation layers: inference identity, seeding, Keras semantics, gradients, configs."""

import json

import numpy as np
import pytest

from minicnn import config, gradcheck
from minicnn.data import transforms
from minicnn.layers import deserialize, serialize
from minicnn.layers.preprocessing import (
    Normalization,
    RandomContrast,
    RandomFlip,
    RandomRotation,
    RandomTranslation,
    RandomZoom,
    Rescaling,
    Resizing,
)

RANDOM_LAYERS = [
    lambda seed: RandomFlip(seed=seed),
    lambda seed: RandomFlip("horizontal", seed=seed),
    lambda seed: RandomRotation(0.2, seed=seed),
    lambda seed: RandomRotation((-0.1, 0.3), fill_mode="constant", fill_value=3.0, seed=seed),
    lambda seed: RandomTranslation(0.2, (-0.1, 0.3), fill_mode="wrap", seed=seed),
    lambda seed: RandomZoom(0.3, seed=seed),
    lambda seed: RandomZoom((-0.2, 0.1), (0.0, 0.4), fill_mode="nearest", interpolation="nearest", seed=seed),
    lambda seed: RandomContrast(0.5, seed=seed),
]
ALL_LAYERS = RANDOM_LAYERS + [
    lambda seed: Rescaling(1 / 255, offset=-0.5),
    lambda seed: Resizing(3, 5),
    lambda seed: Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 1.0, 9.0]),
]


def images(rng, shape=(4, 6, 7, 3)):
    return rng.uniform(0, 255, shape)


@pytest.mark.parametrize("make", RANDOM_LAYERS)
def test_random_layers_are_identity_at_inference(make):
    rng = np.random.default_rng(0)
    x = images(rng).astype(np.float32)
    layer = make(1)
    state = layer._rng.bit_generator.state
    y = layer(x)
    np.testing.assert_array_equal(y, x)
    assert layer._rng.bit_generator.state == state   # no draw at inference
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), np.ones_like(x))


@pytest.mark.parametrize("make", RANDOM_LAYERS)
def test_random_layers_are_seeded_reproducible(make):
    rng = np.random.default_rng(1)
    x = images(rng).astype(np.float32)
    a, b, c = make(3), make(3), make(4)
    ya, yb, yc = (layer(x, training=True) for layer in (a, b, c))
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, yc)
    assert ya.shape == x.shape and ya.dtype == np.float32
    assert not np.array_equal(a(x, training=True), ya)   # the next batch gets new draws
    config.set_seed(123)
    d = make(None)
    config.set_seed(123)
    e = make(None)
    np.testing.assert_array_equal(d(x, training=True), e(x, training=True))


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_config_round_trip(make):
    rng = np.random.default_rng(2)
    x = images(rng)
    layer = make(5)
    data = json.loads(json.dumps(serialize(layer)))
    clone = deserialize(data)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    np.testing.assert_array_equal(clone(x, training=True), layer(x, training=True))


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_gradcheck(make):
    rng = np.random.default_rng(3)
    layer = make(6)
    layer.dtype = layer._dtype_arg = "float64"
    if isinstance(layer, RandomContrast):
        layer.value_range = None   # no clipping kinks for finite differences
    x = rng.uniform(0, 1, (2, 5, 6, 3))
    layer.build(x.shape)
    report = gradcheck.check_layer(layer, x, seed=1)
    assert report.ok, str(report)


def test_random_contrast_gradient_with_clipping():
    rng = np.random.default_rng(4)
    layer = RandomContrast((0.9, 0.9), value_range=(0.2, 0.8), seed=2, dtype="float64")
    x = rng.choice([0.05, 0.3, 0.45, 0.55, 0.7, 0.95], (2, 4, 4, 2)) + rng.uniform(-0.01, 0.01, (2, 4, 4, 2))
    report = gradcheck.check_layer(layer, x, seed=3, eps=1e-6)   # clip kinks are far from every value
    assert report.ok, str(report)


def test_random_contrast_matches_keras_formula():
    rng = np.random.default_rng(5)
    x = images(rng)
    layer = RandomContrast((0.2, 0.5), seed=9, dtype="float64")
    y = layer(x, training=True)
    f = np.random.default_rng(9).uniform(0.8, 1.5, len(x))     # [1 - lower, 1 + upper]
    m = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(y, np.clip((x - m) * f[:, None, None, None] + m, 0, 255))


def test_random_rotation_uses_factor_times_360_degrees():
    rng = np.random.default_rng(6)
    x = images(rng)
    layer = RandomRotation(0.1, fill_mode="nearest", seed=11, dtype="float64")
    angle = np.random.default_rng(11).uniform(-0.1, 0.1, len(x)) * 360
    np.testing.assert_allclose(layer(x, training=True), transforms.rotate(x, angle, fill_mode="nearest"), atol=1e-9)
    quarter = RandomRotation((0.25, 0.25), seed=0, dtype="float64")
    sq = images(rng, (2, 5, 5, 1))
    np.testing.assert_allclose(quarter(sq, training=True), np.rot90(sq, 1, axes=(1, 2)), atol=1e-9)


def test_random_translation_and_zoom_sampling():
    rng = np.random.default_rng(7)
    x = images(rng)
    layer = RandomTranslation(0.2, 0.1, seed=12, dtype="float64")
    draw = np.random.default_rng(12)
    dy, dx = draw.uniform(-0.2, 0.2, len(x)) * 6, draw.uniform(-0.1, 0.1, len(x)) * 7
    np.testing.assert_allclose(layer(x, training=True), transforms.translate(x, dy, dx), atol=1e-9)
    layer = RandomZoom(0.3, seed=13, dtype="float64")   # width_factor=None: the same step on both axes
    z = 1 + np.random.default_rng(13).uniform(-0.3, 0.3, len(x))
    np.testing.assert_allclose(layer(x, training=True), transforms.zoom(x, z, z), atol=1e-9)


def test_random_flip_modes():
    rng = np.random.default_rng(8)
    x = images(rng, (64, 2, 3, 1))
    y = RandomFlip("horizontal", seed=1, dtype="float64")(x, training=True)
    lr = np.all(y == x[:, :, ::-1], axis=(1, 2, 3))
    same = np.all(y == x, axis=(1, 2, 3))
    assert np.all(lr ^ same) and 15 < lr.sum() < 49   # every image either flipped left-right or kept
    y = RandomFlip(seed=2, dtype="float64")(x, training=True)
    kinds = [np.all(y == t, axis=(1, 2, 3)) for t in (x, x[:, ::-1], x[:, :, ::-1], x[:, ::-1, ::-1])]
    assert all(k.sum() > 4 for k in kinds)            # all four outcomes occur with the default mode


def test_rescaling_and_resizing():
    rng = np.random.default_rng(9)
    x = images(rng)
    layer = Rescaling(1 / 255)
    y = layer(x)
    np.testing.assert_allclose(y, (x / 255).astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(layer.backward(np.ones_like(y)), np.full_like(y, 1 / 255), rtol=1e-6)
    r = Resizing(12, 4, dtype="float64")
    out = r(x)
    assert out.shape == (4, 12, 4, 3) and r.compute_output_shape((None, 6, 7, 3)) == (None, 12, 4, 3)
    np.testing.assert_allclose(out, transforms.resize(x, (12, 4)))
    np.testing.assert_allclose(r(x, training=True), out)   # not random: the same in training


def test_normalization_adapt():
    rng = np.random.default_rng(10)
    x = rng.normal([10.0, -3.0, 100.0], [2.0, 0.5, 30.0], (50, 4, 5, 3))
    layer = Normalization(dtype="float64")
    layer.adapt(x)
    np.testing.assert_allclose(layer.mean, x.mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(layer.variance, x.var(axis=(0, 1, 2)))
    mean, variance = layer.get_weights()
    np.testing.assert_allclose(mean, layer.mean)
    y = layer(x)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1, rtol=1e-12)
    layer.build((None, 4, 5, 3))   # a model building it again keeps the adapted statistics
    np.testing.assert_allclose(layer.mean, x.mean(axis=(0, 1, 2)))

    streamed = Normalization(dtype="float64")
    streamed.adapt((x[k : k + 7], None) for k in range(0, 50, 7))   # batches of (x, y), like a dataset
    np.testing.assert_allclose(streamed.mean, layer.mean)
    np.testing.assert_allclose(streamed.variance, layer.variance)

    scalar = Normalization(axis=None, dtype="float64")
    scalar.adapt(x)
    assert scalar.mean.shape == () and np.isclose(scalar.variance, x.var())
    per_row = Normalization(axis=(1, 3), dtype="float64")
    per_row.adapt(x)
    assert per_row.mean.shape == (4, 3)
    np.testing.assert_allclose(per_row.mean, x.mean(axis=(0, 2)))


def test_normalization_weights_round_trip():
    rng = np.random.default_rng(11)
    x = rng.normal(5.0, 2.0, (8, 3, 3, 2))
    layer = Normalization()
    layer.adapt(x)
    clone = deserialize(serialize(layer))
    clone.build((None, 3, 3, 2))
    assert clone.weight_names == ["mean", "variance"] and clone.count_params() == 4
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x), layer(x))
    fixed = Normalization(mean=2.0, variance=4.0)
    np.testing.assert_allclose(fixed(np.full((1, 2, 2, 3), 6.0)), 2.0)
    with pytest.raises(ValueError, match="cannot be adapted"):
        fixed.adapt(x)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RandomFlip("diagonal"), r"RandomFlip: `mode` must be one of .* Received: mode='diagonal'"),
        (lambda: RandomRotation(1.5), r"RandomRotation: `factor` must be .* Received: factor=1.5"),
        (lambda: RandomRotation(0.1, fill_mode="mirror", name="rot"), r"RandomRotation 'rot': `fill_mode`"),
        (lambda: RandomRotation(0.1, interpolation="bicubic"), r"`interpolation` must be one of"),
        (lambda: RandomTranslation(0.1, "x"), r"RandomTranslation: `width_factor` must be"),
        (lambda: RandomZoom(-1.5), r"RandomZoom: `height_factor` must be"),
        (lambda: RandomContrast(1.5), r"RandomContrast: `factor` must be .* \[0.0, 1.0\]"),
        (lambda: RandomContrast(0.2, value_range=(1, 0)), r"RandomContrast: `value_range`"),
        (lambda: RandomFlip(seed=-1), r"RandomFlip: `seed` must be a non-negative integer"),
        (lambda: Rescaling("a"), r"Rescaling: `scale` must be a finite number"),
        (lambda: Resizing(0, 4), r"Resizing: `height` must be a positive integer. Received: height=0"),
        (lambda: Normalization(mean=1.0), r"Normalization: pass both `mean` and `variance`"),
        (lambda: Normalization(mean=0.0, variance=-1.0), r"Normalization: `variance` must be non-negative"),
        (lambda: Normalization(axis="c"), r"Normalization: `axis` must be"),
    ],
)
def test_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_shape_errors():
    with pytest.raises(ValueError, match="RandomFlip 'flip' expects 4-D input"):
        RandomFlip(name="flip").build((None, 28, 28))
    with pytest.raises(ValueError, match="axis 0 is the batch axis"):
        Normalization(axis=0).build((None, 3, 3, 1))
    with pytest.raises(ValueError, match="cannot be broadcast"):
        Normalization(mean=[1.0, 2.0], variance=[1.0, 1.0]).build((None, 3, 3, 3))
