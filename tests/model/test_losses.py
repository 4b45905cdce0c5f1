"""Losses: values against direct formulas, gradients against finite differences, huge logits."""

import numpy as np
import pytest
from helpers import numerical_gradient, rel_error, unit_roundoff

from minicnn import activations, losses


def onehot(labels, k):
    out = np.zeros((len(labels), k))
    out[np.arange(len(labels)), labels] = 1
    return out


@pytest.mark.parametrize(
    "loss_cls,from_logits",
    [(losses.CategoricalCrossentropy, False), (losses.CategoricalCrossentropy, True),
     (losses.BinaryCrossentropy, False), (losses.BinaryCrossentropy, True), (losses.MeanSquaredError, False)],
)
def test_gradient_matches_finite_differences(loss_cls, from_logits):
    rng = np.random.default_rng(0)
    loss = loss_cls(from_logits=from_logits)
    if from_logits:
        y_pred = rng.standard_normal((4, 5))
    elif loss_cls is losses.CategoricalCrossentropy:
        y_pred = activations.softmax(rng.standard_normal((4, 5)))
    else:
        y_pred = rng.uniform(0.05, 0.95, (4, 5))
    y_true = onehot(rng.integers(0, 5, 4), 5) if loss_cls is losses.CategoricalCrossentropy else rng.uniform(0, 1, (4, 5))
    numeric = numerical_gradient(lambda: loss(y_true, y_pred), y_pred)
    assert rel_error(loss.gradient(y_true, y_pred), numeric) < 1e-7


@pytest.mark.parametrize("loss_cls,act", [(losses.CategoricalCrossentropy, "softmax"), (losses.BinaryCrossentropy, "sigmoid")])
def test_fused_logits_gradient_is_the_chain_rule(loss_cls, act):
    """(p - y) / N equals d loss(activation(z)) / dz, by finite differences on z."""
    rng = np.random.default_rng(1)
    z = rng.standard_normal((6, 4))
    y = onehot(rng.integers(0, 4, 6), 4) if act == "softmax" else rng.integers(0, 2, (6, 4)).astype(float)
    f = getattr(activations, act)
    loss = loss_cls()
    assert loss.fuses_with == act
    numeric = numerical_gradient(lambda: loss(y, f(z)), z)
    assert rel_error(loss.logits_gradient(y, f(z)), numeric) < 1e-7
    np.testing.assert_allclose(loss.logits_gradient(y, f(z)), (f(z) - y) / y.size * (y.shape[1] if act == "softmax" else 1))


def test_categorical_crossentropy_value_matches_keras_formula():
    rng = np.random.default_rng(2)
    p = activations.softmax(rng.standard_normal((5, 3)))
    y = onehot([0, 1, 2, 1, 0], 3)
    expected = np.mean(-np.log(p[np.arange(5), [0, 1, 2, 1, 0]]))
    # float64: a mean of 5 logs (and a normalization by sum(p), a clip) in another order, a few hundred ulps
    rel = 256 * np.finfo(np.float64).eps
    assert losses.CategoricalCrossentropy()(y, p) == pytest.approx(expected, rel=rel)
    assert losses.SparseCategoricalCrossentropy()(np.array([0, 1, 2, 1, 0]), p) == pytest.approx(expected, rel=rel)
    logits = rng.standard_normal((5, 3))
    assert losses.CategoricalCrossentropy(from_logits=True)(y, logits) == pytest.approx(
        losses.CategoricalCrossentropy()(y, activations.softmax(logits)), rel=1e-10)


def test_huge_logits_give_finite_losses_and_gradients():
    z = np.array([[1e4, -1e4, 0.0], [-3e38, 3e38, 1.0]], dtype=np.float32)
    y = onehot([1, 0], 3).astype(np.float32)
    p = activations.softmax(z)
    assert np.all(np.isfinite(p))
    for loss in (losses.CategoricalCrossentropy(), losses.CategoricalCrossentropy(from_logits=True)):
        value = loss(y, z if loss.from_logits else p)
        assert np.isfinite(value)
    # Keras's clip: a certain wrong answer costs -log(1e-7) per sample
    # float32: the clip bound 1e-7 rounded to float32 (u relative), the log and the mean (u each): 4 u
    assert losses.CategoricalCrossentropy()(y, p) == pytest.approx(-np.log(1e-7), rel=4 * unit_roundoff(np.float32))
    grad = losses.CategoricalCrossentropy().logits_gradient(y, p)
    assert np.all(np.isfinite(grad)) and grad.dtype == np.float32
    np.testing.assert_allclose(grad, (p - y) / 2)


def test_sparse_labels_out_of_range_are_named():
    loss = losses.SparseCategoricalCrossentropy()
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss.check_targets(np.array([0, 3, 1]), (3, 3))
    loss.check_targets(np.array([[0], [2], [1]]), (3, 3))


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="categorical_crossentropy"):
        losses.get("hinge_me")
    assert isinstance(losses.get("mse"), losses.MeanSquaredError)
