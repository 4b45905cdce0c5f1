"""Dense and Adam kernels, reference and Numba: Dense forward and backward (fused ReLU, skipped input
gradient) within the derived float bound, Adam's update equal to the reference bit for bit over ten steps."""

import numpy as np
import pytest
from helpers import assert_sums_close
from kernel_cases import BACKENDS

from minicnn.kernels import numba as fast
from minicnn.kernels import reference


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 5, 4), (32, 5000, 16)], ids=["small", "long-D"])
def test_dense_matches_reference(shape, dtype):
    rng = np.random.default_rng(3)
    N, D, U = shape
    x = rng.standard_normal((N, D)).astype(dtype)
    w = (rng.standard_normal((D, U)) / np.sqrt(D)).astype(dtype)
    b = rng.standard_normal(U).astype(dtype)
    dy = rng.standard_normal((N, U)).astype(dtype)
    ax, aw, ab = (np.abs(a).astype(np.float64) for a in (x, w, b))
    for activation in (None, "relu"):
        y = reference.dense_forward(x, w, b, activation)
        y_sums = (ax @ aw + ab, D + 1)
        assert_sums_close("y reference", y, np.maximum(x @ w + b, 0) if activation else x @ w + b, *y_sums)
        assert_sums_close("y", fast.dense_forward(x, w, b, activation), y, *y_sums)
        relu_output = y if activation else None
        adz = np.abs(dy * (y > 0) if activation else dy).astype(np.float64)
        sums = dict(dx=(adz @ aw.T, U), dw=(ax.T @ adz, N), db=(adz.sum(axis=0), N))
        want = reference.dense_backward(dy, x, w, relu_output)
        for input_gradient in (True, False):
            got = fast.dense_backward(dy, x, w, relu_output, input_gradient=input_gradient)
            assert (got[0] is None) == (not input_gradient)
            for name, a, e in zip(("dx", "dw", "db"), got, want):
                if a is not None:
                    assert a.dtype == e.dtype, name
                    assert_sums_close(name, a, e, *sums[name])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [7, 300_001])
def test_adam_update_is_the_reference_to_the_bit(size, dtype):
    rng = np.random.default_rng(4)
    state = {name: [rng.standard_normal(size).astype(dtype), np.zeros(size, dtype), np.zeros(size, dtype)]
             for name in BACKENDS}
    state["numba"][0][:] = state["reference"][0]
    for t in range(1, 11):   # ten steps: a wrong bias correction would show
        g = rng.standard_normal(size).astype(dtype)
        lr_t = 1e-2 * (1 - 0.999**t) ** 0.5 / (1 - 0.9**t)
        for name, m in BACKENDS.items():
            m.adam_update(*state[name][:1], g, *state[name][1:], lr_t, 0.9, 0.999, 1e-7)
    for i, name in enumerate(("w", "m", "v")):
        np.testing.assert_array_equal(state["numba"][i], state["reference"][i], err_msg=name)


def test_adam_update_divides_like_numpy():
    # epsilon 0 and a zero gradient: 0 / 0 is nan in NumPy, and must not raise in the kernel
    for m in BACKENDS.values():
        w, g, mom, vel = np.ones(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32)
        with np.errstate(invalid="ignore"):
            m.adam_update(w, g, mom, vel, 0.1, 0.9, 0.999, 0.0)
        assert np.isnan(w).all()


def test_adam_update_with_mixed_dtypes_falls_back_to_numpy():
    w32, g64 = np.ones(5, np.float32), np.full(5, 0.5)
    expected = [w32.copy(), np.zeros(5, np.float32), np.zeros(5, np.float32)]
    reference.adam_update(expected[0], g64, expected[1], expected[2], 0.1, 0.9, 0.999, 1e-7)
    got = [w32.copy(), np.zeros(5, np.float32), np.zeros(5, np.float32)]
    fast.adam_update(got[0], g64, got[1], got[2], 0.1, 0.9, 0.999, 1e-7)
    for a, e in zip(got, expected):
        np.testing.assert_array_equal(a, e)
