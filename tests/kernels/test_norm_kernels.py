"""Batch-normalisation kernels, reference and Numba: forward statistics and every backward output agree
within the float bound of ``helpers.bn_bounds``, on a case table, random problems (hypothesis) and more
row blocks than parts."""

import numpy as np
import pytest
from helpers import assert_within, bn_bounds
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import bn_all

from minicnn.kernels import numba as fast
from minicnn.kernels import reference


def assert_bn_backends_agree(x, gamma, beta, dy, eps=1e-3):
    # the two backends sum M rows in different orders (NumPy pairwise in the dtype of x, Numba
    # in float64 blocks); dx is a difference of terms that can cancel almost exactly (M = 2)
    (expected, stats), (actual, _) = bn_all(reference, x, gamma, beta, dy, eps), bn_all(fast, x, gamma, beta, dy, eps)
    bounds = bn_bounds(x, gamma, beta, dy, eps, *stats)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        assert_within(name, actual[name], value, bounds[name], "the float bound of bn_bounds")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "shape", [(4, 5, 6, 3), (1, 1, 1, 1), (2, 1), (7, 4), (3, 17, 13, 5), (1, 256, 1), (1, 257, 2), (2, 3, 4, 5, 2)]
)
def test_numba_batchnorm_matches_reference(shape, dtype):
    rng = np.random.default_rng(12)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    gamma, beta = rng.standard_normal(shape[-1]).astype(dtype), rng.standard_normal(shape[-1]).astype(dtype)
    assert_bn_backends_agree(x, gamma, beta, rng.standard_normal(shape).astype(dtype))


@settings(deadline=None, max_examples=40)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple),
    N=st.integers(1, 40),
    C=st.integers(1, 4),
    offset=st.floats(-5, 5),
    spread=st.floats(0.1, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_numba_batchnorm_matches_reference_on_random_problems(shape, N, C, offset, spread, seed):
    rng = np.random.default_rng(seed)
    shape = (N, *shape[:-1], C)   # 2-D to 4-D inputs, up to 40*9*9 = 3240 rows
    x = rng.standard_normal(shape) * spread + offset
    assert_bn_backends_agree(x, rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(shape))


def test_batchnorm_with_more_row_blocks_than_parts_matches_the_reference():
    # 40*9*9 = 3240 rows: 13 blocks of 256 rows over 8 parts
    rng = np.random.default_rng(41)
    x = rng.standard_normal((40, 9, 9, 5))
    gamma, beta, dy = rng.standard_normal(5), rng.standard_normal(5), rng.standard_normal(x.shape)
    got, want = fast.batchnorm_forward_train(x, gamma, beta, 1e-3), reference.batchnorm_forward_train(
        x, gamma, beta, 1e-3)
    for name, a, e in zip(("y", "mean", "var"), got, want):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12, err_msg=name)
    got = fast.batchnorm_backward(dy, x, gamma, want[1], want[2], 1e-3)
    for name, a, e in zip(("dx", "dgamma", "dbeta"), got, reference.batchnorm_backward(dy, x, gamma, want[1], want[2],
                                                                                        1e-3)):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-10, err_msg=name)
