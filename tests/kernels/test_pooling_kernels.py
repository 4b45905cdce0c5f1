"""Max and average pooling kernels, reference and Numba: finite differences on the reference (float64),
the Notes formula cell by cell, Numba vs reference on case tables and random problems (hypothesis, ties
included), PyTorch parity and its tie rule, NaN like NumPy's argmax."""

import numpy as np
import pytest
from helpers import AVGPOOL_CASES, assert_gradients_match, assert_sums_close, avgpool_id, pool_problems
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import BACKENDS, MAXPOOL_CASES, avgpool_all, make_avgpool, make_pool, pool_all, pool_id
from torch_layout import torch_pad, torch_run

from minicnn.kernels import conv_padding, reference
from minicnn.kernels import numba as fast


@pytest.mark.parametrize("case", MAXPOOL_CASES, ids=pool_id)
def test_reference_maxpool_gradient_matches_finite_differences(case):
    rng = np.random.default_rng(2)
    x, dy, kw = make_pool(case, rng)
    y, argmax = reference.maxpool2d_forward(x, **kw)
    dx = reference.maxpool2d_backward(dy, argmax, x.shape, **kw)

    def loss():
        return np.sum(reference.maxpool2d_forward(x, **kw)[0] * dy)

    assert_gradients_match(loss, {"dx": (dx, x)})


def maxpool_dx_sums(dy, argmax, x_shape, kw):
    """sum|terms| and K of max-pooling's dx: each pixel adds dy of every window whose max it is,
    at most ceil(P/S) windows along each axis."""
    (PH, PW), (SH, SW) = kw["pool_size"], kw["strides"]
    abs_sum = reference.maxpool2d_backward(np.abs(dy).astype(np.float64), argmax, x_shape, **kw)
    return abs_sum, -(-PH // SH) * -(-PW // SW)


def assert_pool_backends_agree(x, dy, kw):
    expected = pool_all(reference, x, dy, kw)
    actual = pool_all(fast, x, dy, kw)
    np.testing.assert_array_equal(actual["argmax"], expected["argmax"], err_msg="argmax")
    np.testing.assert_array_equal(actual["y"], expected["y"], err_msg="y")  # a max is exact
    assert_sums_close("dx", actual["dx"], expected["dx"], *maxpool_dx_sums(dy, expected["argmax"], x.shape, kw))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", MAXPOOL_CASES, ids=pool_id)
def test_numba_maxpool_matches_reference(case, dtype):
    rng = np.random.default_rng(5)
    assert_pool_backends_agree(*make_pool(case, rng, dtype))


@settings(deadline=None, max_examples=30)
@given(problem=pool_problems(), seed=st.integers(0, 2**32 - 1), ties=st.booleans())
def test_numba_maxpool_matches_reference_on_random_problems(problem, seed, ties):
    x_shape, kw = problem
    rng = np.random.default_rng(seed)
    # with ties, few distinct values: both backends must pick the same (first) maximum
    x = rng.integers(0, 3, x_shape).astype(np.float64) if ties else rng.standard_normal(x_shape)
    dy = rng.standard_normal(reference.maxpool2d_forward(x, **kw)[0].shape)
    assert_pool_backends_agree(x, dy, kw)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_maxpool_propagates_nan_like_numpy_argmax(name):
    x = np.array([1.0, np.nan, 3.0, np.nan]).reshape(1, 2, 2, 1)
    y, argmax = BACKENDS[name].maxpool2d_forward(x, (2, 2), (2, 2))
    assert np.isnan(y[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == 1  # the first NaN wins


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("case", MAXPOOL_CASES, ids=pool_id)
def test_maxpool_matches_pytorch(case, name):
    F = pytest.importorskip("torch.nn.functional")
    rng = np.random.default_rng(8)
    x, dy, kw = make_pool(case, rng)

    def pool(x):
        return F.max_pool2d(torch_pad(x, kw["padding"], -np.inf), kw["pool_size"], kw["strides"])

    y_torch, grads = torch_run(pool, dict(x=x), dy)
    ours = pool_all(BACKENDS[name], x, dy, kw)
    np.testing.assert_array_equal(ours["y"], y_torch, err_msg="y")
    assert_sums_close("dx", ours["dx"], grads["dx"], *maxpool_dx_sums(dy, ours["argmax"], x.shape, kw))


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize(
    "pool_size, strides, padding", [((2, 2), (2, 2), "valid"), ((3, 3), (2, 2), "valid"), ((3, 2), (1, 1), "same")]
)
def test_maxpool_tie_rule_matches_pytorch(name, pool_size, strides, padding):
    F = pytest.importorskip("torch.nn.functional")
    rng = np.random.default_rng(9)
    x = rng.integers(0, 2, (2, 7, 6, 2)).astype(np.float64)  # many ties among 0s and 1s
    x[0, :4, :4, 0] = 5.0  # windows whose cells are all equal
    pad = conv_padding(padding, x.shape[1:3], pool_size, strides)
    kw = dict(pool_size=pool_size, strides=strides, padding=pad)
    dy = rng.uniform(1, 2, reference.maxpool2d_forward(x, **kw)[0].shape)

    def pool(x):
        return F.max_pool2d(torch_pad(x, pad, -np.inf), pool_size, strides)

    _, grads = torch_run(pool, dict(x=x), dy)
    ours = pool_all(BACKENDS[name], x, dy, kw)
    assert_sums_close("dx", ours["dx"], grads["dx"], *maxpool_dx_sums(dy, ours["argmax"], x.shape, kw))
    if pool_size == strides == (2, 2):
        # four all-equal windows: the whole gradient goes to each one's first (top-left) cell
        expected = np.zeros((4, 4))
        expected[::2, ::2] = dy[0, :2, :2, 0]
        np.testing.assert_array_equal(grads["dx"][0, :4, :4, 0], expected, err_msg="torch dx")
        np.testing.assert_array_equal(ours["dx"][0, :4, :4, 0], expected, err_msg="our dx")
        np.testing.assert_array_equal(ours["argmax"][0, :2, :2, 0], 0, err_msg="argmax")


def avgpool_sums(x, dy, kw):
    """``{name: (sum|terms|, K)}`` of average pooling (see ``helpers.float_sum_bound``): y is a sum of
    at most PH*PW cells then a division; dx adds dy / count of the at most ceil(P/S) windows along
    each axis that hold the pixel."""
    (PH, PW), (SH, SW) = kw["pool_size"], kw["strides"]
    y = reference.avgpool2d_forward(np.abs(x).astype(np.float64), **kw)
    dx = reference.avgpool2d_backward(np.abs(dy).astype(np.float64), x.shape, **kw)
    return dict(y=(y, PH * PW + 1), dx=(dx, -(-PH // SH) * -(-PW // SW) + 1))


def assert_avgpool_backends_agree(x, dy, kw):
    expected, actual = avgpool_all(reference, x, dy, kw), avgpool_all(fast, x, dy, kw)
    for name, (abs_sum, n_terms) in avgpool_sums(x, dy, kw).items():
        assert actual[name].dtype == expected[name].dtype, name
        assert_sums_close(name, actual[name], expected[name], abs_sum, n_terms)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", AVGPOOL_CASES, ids=avgpool_id)
def test_numba_avgpool_matches_reference(case, dtype):
    assert_avgpool_backends_agree(*make_avgpool(case, np.random.default_rng(11), dtype))


@settings(deadline=None, max_examples=40)
@given(problem=pool_problems(), seed=st.integers(0, 2**32 - 1))
def test_numba_avgpool_matches_reference_on_random_problems(problem, seed):
    x_shape, kw = problem
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    dy = rng.standard_normal(reference.avgpool2d_forward(x, **kw).shape)
    assert_avgpool_backends_agree(x, dy, kw)


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("case", AVGPOOL_CASES, ids=avgpool_id)
def test_avgpool_matches_a_naive_loop(name, case):
    x, _, kw = make_avgpool(case, np.random.default_rng(15), np.float64)
    (PH, PW), (SH, SW), ((pt, _), (pl, _)) = kw["pool_size"], kw["strides"], kw["padding"]
    y = BACKENDS[name].avgpool2d_forward(x, **kw)
    N, H, W, C = x.shape
    expected = np.zeros_like(y)
    for n, i, j, c in np.ndindex(y.shape):   # the Notes formula: mean over the cells inside x
        cells = [x[n, p, q, c] for u in range(PH) for v in range(PW)
                 if 0 <= (p := SH * i + u - pt) < H and 0 <= (q := SW * j + v - pl) < W]
        expected[n, i, j, c] = sum(cells) / len(cells)
    assert_sums_close("y", y, expected, *avgpool_sums(x, np.zeros_like(y), kw)["y"])


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize(
    "shape, pool, strides",
    [((2, 7, 7, 3), 3, 1), ((2, 5, 9, 2), 3, 2), ((1, 9, 9, 1), (5, 3), (1, 2)), ((2, 6, 6, 2), 2, 2)],
)
def test_avgpool_matches_torch_where_same_padding_is_symmetric(name, shape, pool, strides):
    F = pytest.importorskip("torch.nn.functional")
    x, dy, kw = make_avgpool((shape, pool, strides, "same"), np.random.default_rng(16), np.float64)
    (pt, pb), (pl, pr) = kw["padding"]
    assert pt == pb and pl == pr, "torch pads symmetrically: choose a case where 'same' does too"

    def pool(x):
        return F.avg_pool2d(x, kw["pool_size"], kw["strides"], padding=(pt, pl), count_include_pad=False)

    y_torch, grads = torch_run(pool, dict(x=x), dy)
    ours, sums = avgpool_all(BACKENDS[name], x, dy, kw), avgpool_sums(x, dy, kw)
    assert_sums_close("y", ours["y"], y_torch, *sums["y"])
    assert_sums_close("dx", ours["dx"], grads["dx"], *sums["dx"])
