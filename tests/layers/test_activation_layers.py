"""Activations (LeakyReLU, ELU, GELU, Keras's string names) and the other weightless layers (global pooling,
ZeroPadding2D): finite differences in float64 on both backends, PyTorch parity, Keras's defaults, and
which activations the kernels fuse."""

import math

import numpy as np
import pytest
from helpers import assert_close, numerical_gradient, rel_error, spaced
from torch_layout import torch_run

from minicnn import activations, gradcheck
from minicnn.layers import (
    ELU,
    Activation,
    Conv2D,
    Dense,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    LeakyReLU,
    ZeroPadding2D,
)


@pytest.mark.parametrize(
    "layer",
    [
        GlobalAveragePooling2D(dtype="float64"),
        GlobalAveragePooling2D(keepdims=True, dtype="float64"),
        GlobalMaxPooling2D(dtype="float64"),
        GlobalMaxPooling2D(keepdims=True, dtype="float64"),
        ZeroPadding2D(dtype="float64"),
        ZeroPadding2D(((0, 2), (3, 1)), dtype="float64"),
        LeakyReLU(dtype="float64"),
        LeakyReLU(negative_slope=0.05, dtype="float64"),
        ELU(dtype="float64"),
        ELU(alpha=0.5, dtype="float64"),
        Activation("gelu", dtype="float64"),
        Activation("elu", dtype="float64"),
        Activation("leaky_relu", dtype="float64"),
    ],
    ids=lambda layer: f"{type(layer).__name__}-{layer.get_config()}",
)
def test_weightless_layers_gradcheck(backend, layer):
    x = spaced(np.random.default_rng(5), (2, 5, 4, 3)) * 0.8   # values in about [-2.4, 2.4]
    report = gradcheck.check_layer(layer, x, seed=6)
    assert report.ok, str(report)


@pytest.mark.parametrize(
    "fn",
    [activations.LeakyReLU(0.1), activations.ELU(2.0), activations.GELU(), activations.GELU(approximate=True)],
    ids=lambda fn: f"{fn.name}-{vars(fn)}",
)
def test_activation_functions_gradcheck(fn):
    rng = np.random.default_rng(7)
    z = spaced(rng, (4, 25)) * 0.3                  # [-15, 15]: the tails of elu and gelu too
    dy = rng.standard_normal(z.shape)
    fn.forward(z)
    dz = fn.backward(dy)
    numeric = numerical_gradient(lambda: float(np.sum(fn.forward(z) * dy)), z)
    assert rel_error(dz, numeric) < 1e-7


@pytest.mark.parametrize(
    "layer, fn",
    [
        (LeakyReLU(dtype="float64"), lambda F, t: F.leaky_relu(t, 0.3)),
        (LeakyReLU(0.01, dtype="float64"), lambda F, t: F.leaky_relu(t, 0.01)),
        (Activation("leaky_relu", dtype="float64"), lambda F, t: F.leaky_relu(t, 0.2)),
        (ELU(alpha=1.5, dtype="float64"), lambda F, t: F.elu(t, 1.5)),
        (Activation("elu", dtype="float64"), lambda F, t: F.elu(t)),
        (Activation("gelu", dtype="float64"), lambda F, t: F.gelu(t)),
        (ZeroPadding2D(((1, 0), (2, 3)), dtype="float64"), lambda F, t: F.pad(t, (2, 3, 1, 0))),
    ],
    ids=lambda v: f"{type(v).__name__}-{v.get_config()}" if hasattr(v, "get_config") else "",
)
def test_elementwise_and_padding_layers_match_torch(layer, fn):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(23)
    x = rng.standard_normal((2, 4, 5, 3)) * 3
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    y_torch, grads = torch_run(lambda x: fn(torch.nn.functional, x), dict(x=x), dy)
    assert_close("y", y, y_torch, rtol=1e-12, atol=1e-14)
    assert_close("dx", dx, grads["dx"], rtol=1e-12, atol=1e-14)


def test_gelu_tanh_approximation_matches_torch():
    torch = pytest.importorskip("torch")
    z = np.linspace(-6, 6, 101)
    fn = activations.GELU(approximate=True)
    y = fn.forward(z)
    dz = fn.backward(np.ones_like(z))
    y_torch, grads = torch_run(lambda z: torch.nn.functional.gelu(z, approximate="tanh"), dict(z=z), np.ones_like(z))
    assert_close("y", y, y_torch, rtol=1e-12, atol=1e-15)
    assert_close("dz", dz, grads["dz"], rtol=1e-12, atol=1e-14)   # 0.5 * (1 + t) cancels for t ~ -1


def test_string_activations_follow_keras_defaults():
    z = np.array([-2.0, -0.5, 0.5, 2.0])
    np.testing.assert_allclose(activations.get("leaky_relu").forward(z), [-0.4, -0.1, 0.5, 2.0])   # slope 0.2
    np.testing.assert_allclose(LeakyReLU(dtype="float64")(z[None]), [[-0.6, -0.15, 0.5, 2.0]])     # layer: 0.3
    np.testing.assert_allclose(activations.elu(z), [math.expm1(-2), math.expm1(-0.5), 0.5, 2.0])
    np.testing.assert_allclose(activations.gelu(z), [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z], rtol=1e-15)
    layer = Dense(3, activation="gelu")
    assert layer.get_config()["activation"] == "gelu"
    with pytest.raises(ValueError) as info:
        Dense(3, activation="swish_me")
    for name in ("leaky_relu", "elu", "gelu"):
        assert name in str(info.value)


def test_relu_is_fused_only_where_the_kernels_can():
    assert Conv2D(2, 3, activation="relu").activation_is_fused
    assert Dense(2, activation="relu").activation_is_fused
    assert not Conv2D(2, 3, activation="tanh").activation_is_fused
    assert not Conv2D(2, 3).activation_is_fused
