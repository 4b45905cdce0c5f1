"""Dense, Flatten, Dropout, ReLU, Softmax and the weight penalties: finite differences in float64, a 1%
error that the gradient check must catch, PyTorch parity of max-pool -> Flatten -> Dense within the derived
bound, and Dropout's inverted, seeded mask."""

import numpy as np
import pytest
from helpers import assert_within, float_sum_bound, numerical_gradient, rel_error, spaced, unit_roundoff
from torch_layout import flatten_like_keras, torch_run

from minicnn import gradcheck, regularizers
from minicnn.layers import Activation, Conv2D, Dense, Dropout, Flatten, MaxPooling2D, ReLU, Softmax


@pytest.mark.parametrize("act", [None, "relu", "sigmoid", "tanh", "softmax", "linear"])
def test_dense_gradcheck(act):
    rng = np.random.default_rng(4)
    layer = Dense(5, activation=act, dtype="float64")
    layer.build((None, 7))
    layer.params["bias"][:] = rng.standard_normal(5)
    report = gradcheck.check_layer(layer, spaced(rng, (3, 7)), seed=5)
    assert report.ok, str(report)


@pytest.mark.parametrize(
    "layer",
    [Flatten(dtype="float64"), Activation("tanh", dtype="float64"), ReLU(dtype="float64"),
     Softmax(dtype="float64"), Dropout(0.4, seed=7, dtype="float64")],
    ids=lambda layer: type(layer).__name__,
)
def test_weightless_layers_gradcheck(layer):
    rng = np.random.default_rng(6)
    report = gradcheck.check_layer(layer, spaced(rng, (2, 3, 4, 5)))
    assert report.ok, str(report)


def test_gradcheck_catches_a_wrong_backward():
    class BadDense(Dense):
        def _backward(self, dz):
            dx = super()._backward(dz)
            self.grads["kernel"] = self.grads["kernel"] * 1.01   # 1% off
            return dx

    layer = BadDense(3, dtype="float64")
    report = gradcheck.check_layer(layer, np.random.default_rng(8).standard_normal((4, 5)))
    assert not report.ok
    assert report.errors()["kernel"] > 1e-3 and report.errors()["input"] < 1e-7
    assert "NO" in str(report)


@pytest.mark.parametrize(
    "make",
    [lambda r: Conv2D(3, 2, kernel_regularizer=r, dtype="float64"), lambda r: Dense(4, kernel_regularizer=r, dtype="float64")],
    ids=["Conv2D", "Dense"],
)
@pytest.mark.parametrize(
    "reg", [regularizers.l2(0.01), regularizers.l1(0.02), regularizers.l1_l2(0.01, 0.03)], ids=["l2", "l1", "l1_l2"]
)
def test_regularizer_gradient_matches_finite_differences_of_the_penalty(make, reg):
    rng = np.random.default_rng(10)
    layer = make(reg)
    layer.build((None, 4, 4, 2) if isinstance(layer, Conv2D) else (None, 5))
    w = layer.params["kernel"]
    w[:] = spaced(rng, w.shape)                      # away from the kink of |w| at 0
    assert layer.regularization_penalty() == pytest.approx(reg.l1 * np.abs(w).sum() + reg.l2 * np.square(w).sum())
    upstream = rng.standard_normal(w.shape)          # the loss's own gradient, already in grads
    layer.grads["kernel"] = upstream.copy()
    layer.add_regularization_gradients()
    numeric = numerical_gradient(layer.regularization_penalty, w)
    assert rel_error(layer.grads["kernel"] - upstream, numeric) < 1e-7
    assert layer.grads["bias"].shape == layer.params["bias"].shape   # the bias is not penalised


def test_maxpool_and_dense_match_torch(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 7, 7, 3))
    pool, dense, flat = MaxPooling2D(3, strides=2, dtype="float64"), Dense(4, activation="tanh", dtype="float64"), Flatten(dtype="float64")
    h = flat.forward(pool.forward(x))
    y = dense.forward(h)
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(flat.backward(dense.backward(dy)))

    def net(x, w, b):   # w in PyTorch's (U, D) layout
        return torch.tanh(flatten_like_keras(torch.nn.functional.max_pool2d(x, 3, stride=2)) @ w.T + b)

    y_torch, grads = torch_run(net, dict(x=x, w=dense.params["kernel"], b=dense.params["bias"]), dy,
                               layouts=dict(w="dense_kernel"))
    # BLAS may sum in another order than torch: compare within bounds derived from the sums
    # (helpers.float_sum_bound), carried through tanh (slope <= 1, each tanh within 2 ulp) and
    # its derivative dz = dy * (1 - y**2) (which moves by 2 |dy y| per unit of y, plus 4 roundings)
    u, w = unit_roundoff(np.float64), dense.params["kernel"]
    ah, aw = np.abs(h), np.abs(w)
    e_y = float_sum_bound(ah @ aw + np.abs(dense.params["bias"]), h.shape[1], np.float64) + 4 * u * np.abs(y)
    dz = dy * (1 - y**2)
    e_dz = np.abs(dy) * (2 * np.abs(y) * e_y + 4 * u * (1 + y**2))
    e_dh = float_sum_bound(np.abs(dz) @ aw.T, w.shape[1], np.float64) + e_dz @ aw.T
    e_dw = float_sum_bound(ah.T @ np.abs(dz), len(h), np.float64) + ah.T @ e_dz
    # each pixel adds the dh of at most 2 x 2 windows (3x3, stride 2)
    abs_dh = pool.backward(flat.backward(np.abs(dz) @ aw.T)).copy()
    e_dx = pool.backward(flat.backward(e_dh)) + float_sum_bound(abs_dh, 4, np.float64)
    assert_within("y", y, y_torch, e_y)
    assert_within("dx", dx, grads["dx"], e_dx)
    assert_within("dkernel", dense.grads["kernel"], grads["dw"], e_dw)


def test_dropout_is_inverted_seeded_and_identity_at_inference():
    x = np.ones((200, 50))
    a, b = Dropout(0.3, seed=1, dtype="float64"), Dropout(0.3, seed=1, dtype="float64")
    np.testing.assert_array_equal(a(x), x)                      # inference: identity
    ya, yb = a.forward(x, training=True), b.forward(x, training=True)
    np.testing.assert_array_equal(ya, yb)                       # same seed, same mask
    kept = ya != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(ya[kept], 1 / 0.7)              # kept units scaled by 1/(1-rate)
    assert abs(ya.mean() - 1) < 0.03                            # expectation preserved
