"""MaxPooling2D, AveragePooling2D and global pooling layers: finite differences in float64 on both backends,
PyTorch parity of global pooling, 'same' average pooling leaving the padding out, and max-pool's tie rule."""

import numpy as np
import pytest
from helpers import AVGPOOL_CASES, assert_sums_close, avgpool_id, spaced
from torch_layout import torch_run

from minicnn import gradcheck
from minicnn.layers import AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D

POOL_CASES = [
    ((2, 6, 6, 3), 2, None, "valid"),
    ((2, 7, 7, 2), 2, None, "same"),
    ((1, 7, 5, 1), 3, 2, "valid"),       # overlapping windows
    ((2, 6, 7, 2), (3, 2), (2, 1), "same"),
    ((1, 5, 5, 1), 5, 1, "valid"),
]


@pytest.mark.parametrize("shape,pool,strides,padding", POOL_CASES)
def test_maxpool_gradcheck(backend, shape, pool, strides, padding):
    rng = np.random.default_rng(2)
    layer = MaxPooling2D(pool, strides=strides, padding=padding, dtype="float64")
    report = gradcheck.check_layer(layer, spaced(rng, shape), seed=3)
    assert report.ok, str(report)


@pytest.mark.parametrize("case", AVGPOOL_CASES, ids=avgpool_id)
def test_avgpool_gradcheck(backend, case):
    shape, pool, strides, padding = case
    layer = AveragePooling2D(pool, strides=strides, padding=padding, dtype="float64")
    report = gradcheck.check_layer(layer, np.random.default_rng(3).standard_normal(shape), seed=4)
    assert report.ok, str(report)


def test_same_avgpool_leaves_the_padding_out():
    layer = AveragePooling2D(3, strides=1, padding="same", dtype="float64")
    y = layer(np.ones((1, 4, 5, 2)))
    np.testing.assert_array_equal(y, 1.0)   # counting padded zeros would give 4/9 in the corners


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_matches_torch(backend, keepdims):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(17)
    x = spaced(rng, (3, 5, 4, 6))   # no ties
    for layer, fn in ((GlobalAveragePooling2D(keepdims=keepdims, dtype="float64"), F.adaptive_avg_pool2d),
                      (GlobalMaxPooling2D(keepdims=keepdims, dtype="float64"), F.adaptive_max_pool2d)):
        y = layer.forward(x)
        dy = rng.standard_normal(y.shape)
        dx = layer.backward(dy)
        y_torch, grads = torch_run(lambda x, fn=fn: fn(x, 1), dict(x=x), dy.reshape(3, 1, 1, 6))   # (N, 1, 1, C)
        assert y.shape == ((3, 1, 1, 6) if keepdims else (3, 6))
        # the mean of 5*4 cells: a sum of 20 terms and a division; dx = dy / 20 one rounding (a max is exact)
        assert_sums_close("y", y.reshape(3, 6), y_torch.reshape(3, 6), np.abs(x).mean(axis=(1, 2)), 21)
        assert_sums_close("dx", dx, grads["dx"], np.broadcast_to(np.abs(dy).reshape(3, 1, 1, 6), x.shape), 1)


def test_global_max_pooling_gives_ties_to_the_first_maximum(backend):
    x = np.zeros((2, 3, 4, 2))
    x[0, 1, 2, 0] = x[0, 2, 0, 0] = 5.0                  # two maxima in channel 0 of image 0
    layer = GlobalMaxPooling2D(dtype="float64")
    layer(x)
    dx = layer.backward(np.ones((2, 2)))
    expected = np.zeros_like(x)
    expected[0, 1, 2, 0] = 1.0                           # the first in row-major (h, w) order
    expected[0, 0, 0, 1] = expected[1, 0, 0, 0] = expected[1, 0, 0, 1] = 1.0   # all-equal: the first cell
    np.testing.assert_array_equal(dx, expected)
    pool = MaxPooling2D((3, 4), dtype="float64")         # the same rule as MaxPooling2D
    pool(x)
    np.testing.assert_array_equal(pool.backward(np.ones((2, 1, 1, 2))), expected)
