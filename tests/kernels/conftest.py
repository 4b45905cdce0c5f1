"""Fixtures of the kernel tests."""

import pytest

from minicnn.kernels import numba as fast


@pytest.fixture
def restore_threads():
    """Numba's thread count as it was before the test."""
    before = fast.get_num_threads()
    yield
    fast.set_num_threads(before)
