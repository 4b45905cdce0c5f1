"""Fixtures shared by the test modules."""

import importlib

import pytest

import minicnn
from minicnn.utils import clear_session

# a missing PyTorch, notebook runner or Fashion-MNIST: a named skip, or a failure with MINICNN_REQUIRE_ORACLES=1
pytest_plugins = ["oracles"]


@pytest.fixture
def default_settings():
    """Default kernels when they import (else the NumPy reference), fresh layer names; the backend
    and floatx are restored afterwards. Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    backend, floatx = minicnn.get_backend(), minicnn.get_floatx()
    try:
        importlib.import_module("minicnn.kernels.numba")
    except ImportError:
        minicnn.set_backend("reference")
    clear_session()
    yield
    minicnn.set_backend(backend)
    minicnn.set_floatx(floatx)


@pytest.fixture(params=["reference", "numba"])
def backend(request):
    """Each test that asks for it runs once per kernel backend; the backend is restored afterwards."""
    old = minicnn.get_backend()
    minicnn.set_backend(request.param)
    yield request.param
    minicnn.set_backend(old)
