"""The small models, data and checks that the model tests share (``from small_models import ...``)."""

import numpy as np
from helpers import assert_within, model_forward_bound

from minicnn.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D
from minicnn.models import Sequential

# Losses compared in float64, where the point is the arithmetic of the means (batch weights, penalties),
# not float32 rounding: the computations differ only in the order of their sums (of at most ~50 terms
# each, through a few layers), a few hundred float64 ulps at most: 1e-13 is ~450 ulps of the loss.
FLOAT64_REL = 1e-13
EPS64 = float(np.finfo(np.float64).eps)


def assert_same_predictions(name, model, x, *predictions):
    """Each prediction within the float32 bound derived from the model's sums (tests/helpers.py)."""
    exact, bound = model_forward_bound(model, x, model.layers[0].dtype)
    for i, p in enumerate(predictions):
        assert_within(f"{name} [{i}]", p, exact, bound)


def small_cnn(input_shape=(8, 8, 1), classes=3, activation="softmax", input_layer=True):
    layers = [
        Conv2D(4, (3, 3), activation="relu"),
        MaxPooling2D(pool_size=(2, 2)),
        Flatten(),
        Dense(classes, activation=activation),
    ]
    return Sequential(([Input(shape=input_shape)] if input_layer else []) + layers)


def signal_data(rng, n=48, shape=(8, 8, 1), classes=3):
    """Images whose class shows as a bright horizontal band at a class-dependent height."""
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 0.3, (n, *shape)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 2 * c : 2 * c + 2] += 1.5
    return x, y


def trained(rng, **compile_kw):
    model = small_cnn()
    model.compile(**{"optimizer": "adam", "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
                     **compile_kw})
    x, y = signal_data(rng)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return model, x, y


def snapshot(model):
    state = model.optimizer.get_state() if model.optimizer is not None else None
    return model.get_weights(), state


def assert_unchanged(model, snap):
    weights, state = snap
    for i, (a, b) in enumerate(zip(weights, model.get_weights())):
        np.testing.assert_array_equal(a, b, err_msg=f"weight {i} changed")
    if state is not None:
        now = model.optimizer.get_state()
        assert now["iterations"] == state["iterations"]
        assert sorted(now["slots"]) == sorted(state["slots"])
        for key, slots in state["slots"].items():
            for name, arr in slots.items():
                np.testing.assert_array_equal(arr, now["slots"][key][name], err_msg=f"optimizer slot {key} {name}")
