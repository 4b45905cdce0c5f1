"""Gradient checks a learner can trust: float64 on a copy, kinks reported, wrong gradients still caught."""

import re

import numpy as np
import pytest

from minicnn import cli, gradcheck, layers
from minicnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D, ReLU
from minicnn.layers.base import Layer
from minicnn.models import Sequential
from minicnn.utils import set_random_seed

pytestmark = pytest.mark.usefixtures("default_settings")


def snapshot(model):
    """Everything a check must leave as it was: weights (values and dtypes), caches, gradients, generators, optimizer."""
    state = []
    for layer in model.layers:
        state.append((
            layer.dtype,
            [(w.dtype, w.copy()) for w in layer.get_weights()],
            {k: (v, v.copy()) if isinstance(v, np.ndarray) else (v, v) for k, v in layer.cache.items()},
            {k: g.copy() for k, g in layer.grads.items()},
            layer._rng.bit_generator.state if hasattr(layer, "_rng") else None,
        ))
    opt = {k: [a.copy() for a in v] if isinstance(v, list) else v for k, v in vars(model.optimizer).items()}
    return state, opt


def assert_same(before, after):
    for (dt0, w0, c0, g0, r0), (dt1, w1, c1, g1, r1) in zip(before[0], after[0]):
        assert dt0 == dt1
        assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(w0, w1))
        assert c0.keys() == c1.keys()
        for k in c0:
            assert c0[k][0] is c1[k][0], f"cache[{k!r}] replaced"
            assert np.array_equal(c0[k][1], c1[k][1]) if isinstance(c0[k][1], np.ndarray) else c0[k][1] == c1[k][1]
        assert all(np.array_equal(g0[k], g1[k]) for k in g0)
        assert r0 == r1
    assert before[1].keys() == after[1].keys()
    for k, v in before[1].items():
        w = after[1][k]
        assert (all(np.array_equal(a, b) for a, b in zip(v, w)) if isinstance(v, list) else v is w or v == w), k


# ------------------------------------------------------------------------------- float64 on a copy
def test_a_float32_model_is_checked_in_float64_and_left_as_it_was():
    set_random_seed(3)
    rng = np.random.default_rng(3)
    model = Sequential([
        Input(shape=(6, 6, 2)),
        Conv2D(4, 3, activation="relu"),
        BatchNormalization(),
        MaxPooling2D(),
        Flatten(),
        Dropout(0.3),
        Dense(3, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = rng.standard_normal((5, 6, 6, 2)).astype(np.float32), rng.integers(0, 3, 5)
    model.train_on_batch(x, y)                       # optimizer state, caches and moved statistics exist
    assert model.layers[0].dtype == "float32"
    before = snapshot(model)
    report = model.check_gradients(x, y)
    assert_same(before, snapshot(model))
    assert report.ok, str(report)
    assert "in float64 (on a float64 copy of the float32 model)" in str(report) and "eps=1e-05" in str(report)
    # the same check in float32 is swamped by rounding: what the float64 copy is for
    assert model.check_gradients(x, y, dtype="float32", kinks=False).max_error > 1e-5


def test_check_layer_leaves_the_layer_as_it_was():
    rng = np.random.default_rng(4)
    layer = Dropout(0.5, seed=1)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    y = layer.forward(x, training=True)
    layer.backward(np.ones_like(y))
    cache, state = dict(layer.cache), layer._rng.bit_generator.state
    report = gradcheck.check_layer(layer, x)
    assert report.ok, str(report)
    assert layer.dtype == "float32" and layer.cache == cache and layer._rng.bit_generator.state == state


@pytest.mark.parametrize("kwargs,message", [
    (dict(dtype="float16"), "`dtype` must be 'float64' (the default) or 'float32'. Received: dtype='float16'"),
    (dict(eps=0.0), "`eps` must be a positive finite number. Received: eps=0.0"),
    (dict(eps=float("nan")), "`eps` must be a positive finite number"),
])
def test_bad_settings_are_refused_before_anything_is_touched(kwargs, message):
    layer = Dense(3)
    with pytest.raises(ValueError, match=re.escape(message)):
        gradcheck.check_layer(layer, np.ones((2, 4)), **kwargs)
    assert not layer.built


def test_an_unbuilt_model_is_refused():
    model = Sequential([Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="the model has no weights yet"):
        model.check_gradients(np.ones((2, 4)), np.array([0, 1]))
    assert not model.built


# ------------------------------------------------------------------------------- kinks
def test_relu_inputs_at_or_near_zero_are_reported_as_kinks_not_errors():
    rng = np.random.default_rng(5)
    x = rng.uniform(0.5, 2.0, (4, 6)) * rng.choice([-1, 1], (4, 6))
    x[0, :3] = 0.0                                   # on the kink
    x[1, :2] = [3e-6, -4e-6]                         # within +-eps = 1e-5 of it
    layer = ReLU(dtype="float64")
    assert not gradcheck.check_layer(layer, x, kinks=False).ok     # the naive comparison fails ...
    report = gradcheck.check_layer(layer, x)                       # ... the check says what happened
    assert report.ok, str(report)
    assert report.kinks["input"] == 5
    assert "kinks" in str(report) and "    5  yes" in str(report)


def test_max_pool_ties_are_reported_as_kinks():
    rng = np.random.default_rng(6)
    ties = np.repeat(np.repeat(rng.standard_normal((2, 3, 3, 2)), 2, axis=1), 2, axis=2)   # constant 2x2 windows
    assert np.isclose(gradcheck.check_layer(MaxPooling2D(2), ties, kinks=False).max_error, 0.5)
    report = gradcheck.check_layer(MaxPooling2D(2), ties)
    assert report.ok and report.kinks["input"] == ties.size, str(report)


def test_samples_whose_probability_the_loss_clips_are_left_out_and_named(monkeypatch):
    set_random_seed(7)
    rng = np.random.default_rng(7)
    model = Sequential([Input(shape=(4,)), Dense(3, activation="softmax", dtype="float64")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = rng.standard_normal((4, 4)), np.array([1, 1, 2, 0])
    x[0] = [40.0, 0, 0, 0]
    model.layers[0].params["kernel"][0] = [1.0, 0.0, 0.0]   # sample 0: p[1] ~ e**-40, clipped to 1e-7: loss flat
    report = model.check_gradients(x, y)
    assert report.ok, str(report)
    assert "left out 1 of 4 samples" in str(report)
    with pytest.raises(ValueError, match="every one of the 1 samples"):
        model.check_gradients(x[:1], y[:1])
    # without leaving it out, the fused backward's -1/N for that sample meets a flat loss
    monkeypatch.setattr(gradcheck, "_clipped_samples", lambda model, y, p: np.zeros(len(p), dtype=bool))
    assert model.check_gradients(x, y).max_error > 0.1


# ------------------------------------------------------------------------------- wrong gradients are caught
class OffByFivePercent(Conv2D):
    """A wrong backward: one element of the kernel gradient is 5% too large."""

    def _backward(self, dz):
        dx = super()._backward(dz)
        self.grads["kernel"][1, 2, 0, 3] *= 1.05
        return dx


def test_a_five_percent_error_in_one_gradient_element_fails():
    rng = np.random.default_rng(8)
    report = gradcheck.check_layer(OffByFivePercent(4, 3, activation="relu"), rng.standard_normal((2, 6, 6, 2)))
    errors = report.errors()
    assert not report.ok and errors["kernel"] > 1e-4 and errors["input"] < 1e-7 and errors["bias"] < 1e-7, str(report)
    assert report.kinks["kernel"] == 0


class DoubleSlopeAtZero(Layer):
    """ReLU with a wrong backward at 0: twice dy, neither one-sided slope (0 or 1) nor their mean."""

    def _forward(self, x, training):
        self.cache["x"] = x
        return np.maximum(x, 0)

    def _backward(self, dz):
        x = self.cache["x"]
        return np.where(x > 0, dz, np.where(x == 0, 2 * dz, 0))


def test_a_wrong_value_at_a_kink_is_not_excused():
    x = np.random.default_rng(9).standard_normal((3, 5))
    x[0, 0] = 0.0
    report = gradcheck.check_layer(DoubleSlopeAtZero(dtype="float64"), x)
    assert not report.ok and report.kinks["input"] == 0, str(report)


def test_model_check_catches_a_five_percent_error():
    class OffDense(Dense):
        def _backward(self, dz):
            dx = super()._backward(dz)
            self.grads["bias"][1] *= 1.05
            return dx

    set_random_seed(10)
    rng = np.random.default_rng(10)
    model = Sequential([Input(shape=(5, 5, 1)), Conv2D(3, 3, activation="relu"), Flatten(),
                        OffDense(4, activation="softmax", name="off")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    report = model.check_gradients(rng.standard_normal((3, 5, 5, 1)), rng.integers(0, 4, 3))
    assert not report.ok and report.errors()["off/bias"] > 1e-3, str(report)


# ------------------------------------------------------------------------------- the command covers every layer type
def test_gradcheck_command_covers_every_layer_type_with_a_backward():
    covered = {type(layer) for layer, _ in gradcheck.layer_cases()}
    registered = set(layers.LAYERS.values())
    without_backward = {cls for cls in registered - covered
                        if cls._forward is Layer._forward and cls._backward is Layer._backward
                        and cls.__init__ is Layer.__init__ or cls is layers.InputLayer}
    assert registered - covered == without_backward == {layers.InputLayer}


def test_gradcheck_command_prints_what_it_did(capsys):
    assert cli.main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    n = len(gradcheck.layer_cases())
    assert f"all gradients agree: {n} layer types checked in float64" in out
    assert out.count("gradient check of layer") == n and " NO" not in out
    assert "eps=1e-05" in out and "kinks" in out
