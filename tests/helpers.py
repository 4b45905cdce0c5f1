"""Helpers shared by several test modules (fixtures live in ``conftest.py``)."""

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st


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
