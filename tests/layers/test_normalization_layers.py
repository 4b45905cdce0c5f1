"""BatchNormalization: finite differences in float64 (alone, and inside a model), PyTorch parity in training
and inference (outputs and gradients within the derived bound of ``helpers.bn_bounds``), Keras's moving
averages, axis and freezing, and its weights through set_weights and a model file."""

import numpy as np
import pytest
from helpers import assert_close, assert_sums_close, assert_within, bn_bounds
from torch_layout import torch_run

import minicnn
from minicnn import gradcheck
from minicnn.layers import (
    Activation,
    AveragePooling2D,
    BatchNormalization,
    Conv2D,
    Dense,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    LeakyReLU,
    ZeroPadding2D,
    deserialize,
    serialize,
)


def randomize_bn(layer, rng, moving=False):
    """gamma away from 0, a random beta and (optionally) random moving statistics."""
    C = layer.moving_mean.shape[0]
    if layer.scale:
        layer.params["gamma"][:] = rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C)
    if layer.center:
        layer.params["beta"][:] = rng.standard_normal(C)
    if moving:
        layer.moving_mean[:] = rng.standard_normal(C)
        layer.moving_variance[:] = rng.uniform(0.3, 2.0, C)


BN_CASES = [
    # (x shape, constructor arguments)
    ((4, 5, 6, 3), {}),
    ((2, 3, 3, 1), {"momentum": 0.9, "epsilon": 1e-5}),   # C = 1
    ((1, 4, 5, 2), {}),                                   # N = 1: statistics over H, W only
    ((7, 4), {}),                                         # after a Dense layer
    ((3, 4, 5, 2), {"axis": 1}),                          # statistics per row h
    ((3, 4, 5, 2), {"axis": 2, "center": False}),
    ((5, 3, 2, 4), {"scale": False}),
    ((2, 17, 19, 2), {}),                                 # M = 646 > BN_BLOCK_ROWS: several blocks
]


def bn_id(case):
    shape, kw = case
    return "x".join(map(str, shape)) + "".join(f"-{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", BN_CASES, ids=bn_id)
def test_batchnorm_gradcheck(backend, case, training):
    shape, kw = case
    rng = np.random.default_rng(0)
    layer = BatchNormalization(dtype="float64", **kw)
    layer.build((None,) + shape[1:])
    randomize_bn(layer, rng, moving=True)
    x = rng.standard_normal(shape) * 1.5 + 0.7
    # in training mode every forward pass also moves the moving averages; that does not change
    # the training output, so the function being differentiated stays the same
    report = gradcheck.check_layer(layer, x, training=training, seed=1)
    assert set(report.errors()) == {"input", *layer.params}
    assert report.ok, str(report)


def test_batchnorm_gradcheck_in_a_model(backend):
    """The whole chain: conv -> batch norm -> relu -> average pool -> global pool -> dense -> loss."""
    minicnn.set_floatx("float64")
    try:
        from minicnn.models import Sequential

        rng = np.random.default_rng(2)
        model = Sequential([
            minicnn.Input(shape=(6, 6, 2)),
            Conv2D(3, 3, padding="same", name="conv"),
            BatchNormalization(),
            Activation("gelu"),
            AveragePooling2D(2, strides=1, padding="same"),
            ZeroPadding2D(1),
            GlobalAveragePooling2D(),
            Dense(3, activation="softmax"),
        ])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        randomize_bn(model.layers[1], rng)
        x, y = rng.standard_normal((4, 6, 6, 2)), np.array([0, 1, 2, 1])
        report = gradcheck.check_model(model, x, y)
        # batch norm subtracts each channel's mean, so a conv bias before it cannot change the
        # loss: its gradient is 0 (up to rounding) and the relative error compares noise with noise
        errors = {k: v for k, v in report.errors().items() if k != "conv/bias"}
        assert max(errors.values()) < 1e-7, str(report)
        model.compute_gradients(x, y)
        assert np.abs(model.layers[0].grads["bias"]).max() < 1e-12
    finally:
        minicnn.set_floatx("float32")


def torch_bn(torch, C, ndim, momentum, epsilon):
    cls = torch.nn.BatchNorm1d if ndim == 2 else torch.nn.BatchNorm2d
    return cls(C, eps=epsilon, momentum=1 - momentum, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (1, 3, 4, 2), (8, 5)], ids=["nhwc", "N=1", "dense"])
def test_batchnorm_training_matches_torch(backend, shape):
    """Outputs, gradients and the moving mean agree; the moving variances differ by design.

    PyTorch updates ``running_var`` with the unbiased batch variance (divide by M - 1), Keras and
    minicnn ``moving_variance`` with the biased one (divide by M), the one both normalise with.
    """
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(18)
    C, momentum, eps = shape[-1], 0.9, 1e-3
    layer = BatchNormalization(momentum=momentum, epsilon=eps, dtype="float64")
    layer.build((None,) + shape[1:])
    randomize_bn(layer, rng)
    bn = torch_bn(torch, C, len(shape), momentum, eps)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(layer.params["gamma"]))
        bn.bias.copy_(torch.tensor(layer.params["beta"]))
    keras_var, torch_var = np.ones(C), np.ones(C)
    axes = tuple(range(len(shape) - 1))
    for step in range(3):
        x = rng.standard_normal(shape) * 2 + step
        y = layer.forward(x, training=True)
        dy = rng.standard_normal(y.shape)
        dx = layer.backward(dy)
        bn.zero_grad()
        y_torch, grads = torch_run(lambda x: bn(x), dict(x=x), dy)
        x2 = x.reshape(-1, C)
        bounds = bn_bounds(x, layer.params["gamma"], layer.params["beta"], dy, eps, x2.mean(axis=0), x2.var(axis=0))
        for name, ours, theirs in (("y", y, y_torch), ("dx", dx, grads["dx"]),
                                   ("dgamma", layer.grads["gamma"], bn.weight.grad.numpy()),
                                   ("dbeta", layer.grads["beta"], bn.bias.grad.numpy())):
            assert_within(name, ours, theirs, bounds[name], "the float bound of bn_bounds")
        assert_close("moving_mean", layer.moving_mean, bn.running_mean.numpy(), rtol=1e-12, atol=1e-14)
        M = x.size // C
        keras_var = momentum * keras_var + (1 - momentum) * x.var(axis=axes)
        torch_var = momentum * torch_var + (1 - momentum) * x.var(axis=axes, ddof=1)
        assert_close("moving_variance (Keras: biased)", layer.moving_variance, keras_var, rtol=1e-12)
        assert_close("torch running_var (unbiased)", bn.running_var.numpy(), torch_var, rtol=1e-12)
    if M > 1:
        assert not np.allclose(layer.moving_variance, bn.running_var.numpy(), rtol=1e-6)


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (8, 5)], ids=["nhwc", "dense"])
def test_batchnorm_inference_matches_torch(backend, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(19)
    layer = BatchNormalization(epsilon=1e-5, dtype="float64")
    layer.build((None,) + shape[1:])
    randomize_bn(layer, rng, moving=True)
    bn = torch_bn(torch, shape[-1], len(shape), 0.99, 1e-5)
    with torch.no_grad():
        for t, a in ((bn.weight, "gamma"), (bn.bias, "beta")):
            t.copy_(torch.tensor(layer.params[a]))
        bn.running_mean.copy_(torch.tensor(layer.moving_mean))
        bn.running_var.copy_(torch.tensor(layer.moving_variance))
    bn.eval()
    x = rng.standard_normal(shape)
    y = layer.forward(x, training=False)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    y_torch, grads = torch_run(lambda x: bn(x), dict(x=x), dy)
    # inference: y = gamma * (x - mean) * inv_std + beta, a few roundings per value; dgamma and dbeta
    # sum M terms each (|dy * xhat| and |dy|); dx = dy * gamma * inv_std, a few roundings
    M, C = x.size // shape[-1], shape[-1]
    inv_std = 1 / np.sqrt(layer.moving_variance + 1e-5)
    xhat = np.abs(x - layer.moving_mean) * inv_std
    gamma, beta = np.abs(layer.params["gamma"]), np.abs(layer.params["beta"])
    assert_sums_close("y", y, y_torch, gamma * xhat + beta + np.abs(layer.moving_mean) * gamma * inv_std, 6)
    assert_sums_close("dx", dx, grads["dx"], np.abs(dy) * gamma * inv_std, 4)
    assert_sums_close("dgamma", layer.grads["gamma"], bn.weight.grad.numpy(), (np.abs(dy) * xhat).reshape(M, C).sum(axis=0), M + 6)
    assert_sums_close("dbeta", layer.grads["beta"], bn.bias.grad.numpy(), np.abs(dy).reshape(M, C).sum(axis=0), M)


def test_batchnorm_axis_normalises_along_that_axis(backend):
    rng = np.random.default_rng(20)
    x = rng.standard_normal((3, 4, 5, 2)) * 3 + 1
    layer = BatchNormalization(axis=1, epsilon=1e-3, momentum=0.5, dtype="float64")
    layer.build((None, 4, 5, 2))
    randomize_bn(layer, rng)
    y = layer.forward(x, training=True)
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    gamma, beta = layer.params["gamma"].reshape(1, 4, 1, 1), layer.params["beta"].reshape(1, 4, 1, 1)
    assert_close("y", y, gamma * (x - mean) / np.sqrt(var + 1e-3) + beta, rtol=1e-12, atol=1e-12)
    assert_close("moving_mean", layer.moving_mean, 0.5 * mean.ravel(), rtol=1e-12)
    assert_close("moving_variance", layer.moving_variance, 0.5 + 0.5 * var.ravel(), rtol=1e-12)


def test_batchnorm_moving_averages_follow_keras_and_inference_uses_them():
    rng = np.random.default_rng(21)
    layer = BatchNormalization(momentum=0.8, dtype="float64")
    x1, x2 = rng.standard_normal((6, 2, 2, 3)) + 2, rng.standard_normal((6, 2, 2, 3)) * 3
    layer.build((None, 2, 2, 3))
    held = layer.get_weights()[2]                      # a copy, and a live reference below
    live = layer.moving_mean
    layer(x2)                                          # inference: statistics unchanged
    np.testing.assert_array_equal(layer.moving_mean, held)
    layer.forward(x1, training=True)
    layer.forward(x2, training=True)
    axes = (0, 1, 2)
    expected_mean = 0.8 * (0.2 * x1.mean(axis=axes)) + 0.2 * x2.mean(axis=axes)
    expected_var = 0.8 * (0.8 + 0.2 * x1.var(axis=axes)) + 0.2 * x2.var(axis=axes)
    assert_close("moving_mean", layer.moving_mean, expected_mean, rtol=1e-12)
    assert_close("moving_variance", layer.moving_variance, expected_var, rtol=1e-12)
    assert live is layer.moving_mean                   # updated in place: model.weights stays live
    y = layer(x1)                                      # inference: the moving averages
    assert_close("y", y, (x1 - expected_mean) / np.sqrt(expected_var + 1e-3), rtol=1e-12, atol=1e-12)


def test_frozen_batchnorm_runs_in_inference_mode_even_when_training():
    rng = np.random.default_rng(22)
    layer = BatchNormalization(trainable=False, dtype="float64")
    layer.build((None, 3, 3, 2))
    randomize_bn(layer, rng, moving=True)
    before = layer.get_weights()
    x = rng.standard_normal((4, 3, 3, 2))
    np.testing.assert_array_equal(layer.forward(x, training=True), layer.forward(x, training=False))
    for a, b in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(a, b)            # Keras 3: trainable=False freezes the statistics


def test_batchnorm_weights_are_in_keras_order_and_round_trip():
    rng = np.random.default_rng(25)
    layer = BatchNormalization()
    layer.build((None, 4, 4, 3))
    assert layer.weight_names == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert set(layer.params) == set(layer.grads) == {"gamma", "beta"}   # the optimizer trains only these
    assert layer.count_params() == 12
    x = rng.standard_normal((5, 4, 4, 3)).astype("float32")
    layer.forward(x * 2 + 1, training=True)
    clone = deserialize(serialize(layer))
    clone.build(layer.input_shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x), layer(x))
    for a, b in zip(clone.get_weights(), layer.get_weights()):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32
    only_scale = BatchNormalization(center=False)
    only_scale.build((None, 3))
    assert only_scale.weight_names == ["gamma", "moving_mean", "moving_variance"]
    with pytest.raises(ValueError, match="expects 3 weight arrays"):
        only_scale.set_weights(layer.get_weights())


def test_model_with_batchnorm_saves_and_loads_its_moving_statistics(tmp_path):
    models = pytest.importorskip("minicnn.models")
    rng = np.random.default_rng(26)
    minicnn.utils.set_random_seed(0)
    model = models.Sequential([
        minicnn.Input(shape=(6, 6, 1)),
        Conv2D(4, 3, padding="same"),
        BatchNormalization(),
        LeakyReLU(),
        AveragePooling2D(),
        GlobalMaxPooling2D(),
        Dense(2, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = rng.standard_normal((16, 6, 6, 1)).astype("float32") * 2 + 3, rng.integers(0, 2, 16)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    bn = model.layers[1]
    assert not np.allclose(bn.moving_mean, 0) and not np.allclose(bn.moving_variance, 1)
    assert len(model.non_trainable_weights) == 2 and len(model.weights) == 2 + 4 + 2
    model.save(tmp_path / "bn.npz")
    loaded = models.load_model(tmp_path / "bn.npz")
    np.testing.assert_array_equal(loaded.layers[1].moving_variance, bn.moving_variance)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
