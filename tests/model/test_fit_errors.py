"""Bad input to fit, evaluate, predict and the batch methods: one error naming the problem, raised
before the weights, the optimizer state or the build change."""

import re

import numpy as np
import pytest
from small_models import assert_unchanged, small_cnn, snapshot, trained

from minicnn.utils import to_categorical

pytestmark = pytest.mark.usefixtures("default_settings")


@pytest.fixture
def fitted():
    rng = np.random.default_rng(30)
    model, x, y = trained(rng)
    return model, x, y, snapshot(model)


def test_fit_before_compile_names_compile():
    model = small_cnn()
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(np.zeros((2, 8, 8, 1)), np.zeros(2))
    with pytest.raises(RuntimeError, match="compile"):
        model.evaluate(np.zeros((2, 8, 8, 1)), np.zeros(2))


@pytest.mark.parametrize("make_x,error,patterns", [
    (lambda x: x[..., 0], ValueError, [r"expected shape=\(None, 8, 8, 1\)", r"found shape=\(48, 8, 8\)", "channel axis"]),
    (lambda x: np.zeros((48, 8, 8, 3)), ValueError, [r"expected shape=\(None, 8, 8, 1\)", r"\(48, 8, 8, 3\)"]),
    (lambda x: x.astype(object), TypeError, ["numbers", "object"]),
    (lambda x: x.astype(str), TypeError, ["numbers"]),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) < 2, np.nan, np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x)),
     ValueError, ["2 NaN and 1 infinite"]),
    (lambda x: x[:0], ValueError, ["non-empty"]),
])
def test_bad_x_raises_and_changes_nothing(fitted, make_x, error, patterns):
    model, x, y, snap = fitted
    bad = make_x(x)
    calls = [lambda: model.fit(bad, y, verbose=0), lambda: model.evaluate(bad, y, verbose=0),
             lambda: model.train_on_batch(bad, y)]
    if bad.ndim and len(bad):
        calls.append(lambda: model.predict(bad, verbose=0))
    for call in calls:
        with pytest.raises(error) as info:
            call()
        for pattern in patterns:
            assert re.search(pattern, str(info.value)), str(info.value)
        assert_unchanged(model, snap)


def test_channels_first_data_gets_a_hint():
    rng = np.random.default_rng(31)
    model = small_cnn(input_shape=(6, 6, 3))
    model.compile("adam", "sparse_categorical_crossentropy")
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"expected shape=\(None, 6, 6, 3\).*channels-first.*transpose") as info:
        model.fit(rng.random((4, 3, 6, 6)), np.zeros(4), verbose=0)
    assert "found shape=(4, 3, 6, 6)" in str(info.value)
    with pytest.raises(ValueError, match="single sample"):
        model.predict(rng.random((6, 6, 3)), verbose=0)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("make_y,compile_loss,error,patterns", [
    (lambda y: y[:-1], None, ValueError, ["cardinality", "'x' sizes: 48", "'y' sizes: 47"]),
    (lambda y: y + 3, None, ValueError, [r"\[0, 3\)", "out-of-range"]),
    (lambda y: to_categorical(y, 5), "categorical_crossentropy", ValueError, ["5 columns", "3 units"]),
    (lambda y: y, "categorical_crossentropy", ValueError, ["sparse_categorical_crossentropy", "to_categorical"]),
    (lambda y: np.where(np.arange(48)[:, None] < 3, np.nan, to_categorical(y, 3)), "categorical_crossentropy",
     ValueError, ["9 NaN and 0 infinite"]),
    (lambda y: y.astype(str), None, TypeError, ["numbers"]),
    (lambda y: None, None, ValueError, ["targets"]),
])
def test_bad_y_raises_and_changes_nothing(fitted, make_y, compile_loss, error, patterns):
    model, x, y, snap = fitted
    if compile_loss:
        model.compile(optimizer=model.optimizer, loss=compile_loss, metrics=["accuracy"])
    bad = make_y(y)
    for call in (lambda: model.fit(x, bad, verbose=0), lambda: model.evaluate(x, bad, verbose=0),
                 lambda: model.train_on_batch(x, bad),
                 lambda: model.fit(x, y if compile_loss is None else to_categorical(y, 3), validation_data=(x, bad),
                                   verbose=0)):
        with pytest.raises(error) as info:
            call()
        for pattern in patterns:
            assert re.search(pattern, str(info.value)), str(info.value)
        assert_unchanged(model, snap)


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=2.5), "batch_size"), (dict(verbose=3), "verbose"),
    (dict(validation_split=1.0), "validation_split"), (dict(validation_split=0.99), "empty"), (dict(validation_split=1e-18), "empty"),
    (dict(epochs=-1), "epochs"), (dict(validation_data=[1, 2, 3, 4]), "validation_data"),
])
def test_bad_fit_arguments_change_nothing(fitted, kwargs, match):
    model, x, y, snap = fitted
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, **kwargs)
    assert_unchanged(model, snap)


def test_failed_fit_leaves_an_unbuilt_model_unbuilt():
    model = small_cnn(input_layer=False)
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="cardinality"):
        model.fit(np.zeros((4, 8, 8, 1)), np.zeros(3), verbose=0)
    with pytest.raises(ValueError, match=r"validation_data.*expected shape=\(None, 8, 8, 1\), found shape=\(2, 9, 9, 1\)"):
        model.fit(np.zeros((4, 8, 8, 1)), np.zeros(4), validation_data=(np.zeros((2, 9, 9, 1)), np.zeros(2)), verbose=0)
    assert not model.built and not any(layer.built for layer in model.layers)
