"""Helpers shared by several test modules (fixtures live in ``conftest.py``)."""

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from minicnn.kernels import reference


def spaced(rng, shape):
    """Random values at least 0.05 apart: no max-pool ties and no ReLU input within 0.025 of its kink at 0."""
    n = int(np.prod(shape))
    values = (rng.permutation(n) - n / 2 + 0.5) * 0.05 + rng.uniform(-0.01, 0.01, n)
    return values.reshape(shape)


@st.composite
def pool_problems(draw):
    """``(x_shape, kwargs)`` of a random pooling problem: windows, strides, padding smaller than the window."""
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    pool_size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple((draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))) for k in pool_size)
    assume(H + sum(padding[0]) >= pool_size[0] and W + sum(padding[1]) >= pool_size[1])
    return (N, H, W, C), dict(pool_size=pool_size, strides=strides, padding=padding)


# ----------------------------------------------------------------------------------------------------------
# Tolerances derived from the sums being compared
# ----------------------------------------------------------------------------------------------------------
# Two kernels that compute the same sums in another order (threads, register tiles, BLAS blocking, FMA) do
# not give the same bits. How far apart may they be? Higham, "Accuracy and Stability of Numerical
# Algorithms", ch. 3: a sum of K terms computed in any order, in floating point of unit roundoff u, is off
# the exact sum by at most
#
#     |computed - exact| <= gamma_K * sum_k |term_k|,      gamma_K = K*u / (1 - K*u),
#
# (a dot product a . b: terms a_k * b_k, the products' rounding included), so two such computations differ
# by at most twice that. The bound follows from the inputs, not from a machine: sum|terms| is the same
# computation on the absolute values, done in float64 (e.g. |x| conv |w| + |b| for a convolution's output,
# |x| conv |dy| for its kernel gradient). A value near zero after heavy cancellation (0.116 out of terms
# whose absolute values add to 50) may legitimately be off by far more than any rtol would allow, while a
# real bug (a term missing, one counted twice, a wrong index) is off by a whole term: of the order of
# sum|terms| / K, above the bound 2 (K+1) u sum|terms| while 2 K (K+1) u < 1, that is K below about 2,900
# in float32 (all float64 cases). Longer float32 sums (the long-D Dense case, K = 5,000) still catch a
# missing block of terms, not a single one: those kernels are also compared in float64.


def unit_roundoff(dtype):
    """u = eps / 2: 2**-24 for float32, 2**-53 for float64."""
    return float(np.finfo(dtype).eps) / 2


def gamma_n(n, dtype):
    """Higham's gamma_n = n*u / (1 - n*u) for the unit roundoff u of ``dtype``."""
    nu = n * unit_roundoff(dtype)
    assert nu < 0.5, f"{n} terms are too many for a bound in {np.dtype(dtype).name}"
    return nu / (1 - nu)


def float_sum_bound(abs_sum, n_terms, dtype):
    """Largest |a - b| between two computations, in ``dtype``, of sums of ``n_terms`` terms each.

    Parameters
    ----------
    abs_sum : float or ndarray
        sum_k |term_k| for every compared value, computed in float64 from the inputs.
    n_terms : int
        K, the number of terms of each sum (one more for a bias; the largest count where it varies).
    dtype : the floating-point type both computations ran in.

    Returns
    -------
    bound : float64 ndarray shaped like ``abs_sum``: ``2 * gamma_{K+1} * abs_sum``
        (the +1 covers the final rounding of each result to ``dtype``).
    """
    return 2 * gamma_n(n_terms + 1, dtype) * np.asarray(abs_sum, dtype=np.float64)


def assert_sums_close(name, actual, expected, abs_sum, n_terms):
    """Assert ``|actual - expected| <= float_sum_bound(abs_sum, n_terms, dtype)`` everywhere,
    ``dtype`` being the coarser of the two arrays' floating-point types."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    floats = [d for d in (actual.dtype, expected.dtype) if d.kind == "f"] or [np.dtype(np.float64)]
    dtype = max(floats, key=unit_roundoff)
    bound = float_sum_bound(abs_sum, n_terms, dtype)
    assert_within(name, actual, expected, bound, f"2 * gamma_{n_terms + 1}({dtype.name}) * sum|terms|")


def assert_within(name, actual, expected, bound, how="bound"):
    """Assert ``|actual - expected| <= bound`` elementwise (NaN fails); on failure, name the array, the
    worst index (largest excess over the bound), both values, the bound there and how it was derived."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != expected {expected.shape}"
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), actual.shape)
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    excess = np.where(np.isnan(err), np.inf, err - bound)
    if excess.size and excess.max() > 0:
        i = np.unravel_index(np.argmax(excess), excess.shape)
        raise AssertionError(
            f"{name}: {int((excess > 0).sum())} of {excess.size} values differ by more than the derived bound; "
            f"worst at index {tuple(map(int, i))}: {actual[i]!r} vs expected {expected[i]!r}, "
            f"|difference| {err[i]:.3g} > {how} = {bound[i]:.3g}"
        )


def conv_sums(x, w, b, dy, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1)):
    """``{name: (sum|terms|, K)}`` for the outputs ``y, dx, dw, db`` of a convolution, for :func:`assert_sums_close`.

    The reference kernels run on the absolute values in float64: ``|x| conv |w| + |b|`` has the
    sum of |terms| of each ``y``, and likewise for the gradients (``dy`` is the gradient that
    reaches the convolution, after ReLU's mask if there is one).
    """
    ax, aw, ady = (np.abs(a).astype(np.float64) for a in (x, w, dy))
    ab = None if b is None else np.abs(b).astype(np.float64)
    (KH, KW, C, F), (N, OH, OW, _) = w.shape, dy.shape
    kw = dict(strides=strides, padding=padding, dilation=dilation)
    dw, db = reference.conv2d_backward_weights(ax, ady, (KH, KW), **kw)
    return dict(y=(reference.conv2d_forward(ax, aw, ab, **kw), KH * KW * C + 1),
                dx=(reference.conv2d_backward_input(ady, aw, x.shape, **kw), KH * KW * F),
                dw=(dw, N * OH * OW), db=(db, N * OH * OW))
