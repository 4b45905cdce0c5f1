"""Global settings: the float type new layers use, the kernel backend, and the random generator.

These are the only pieces of global state in minicnn. Everything else receives its settings as
arguments, so a learner can read any function on its own.
"""

import os

import numpy as np

_FLOATX = "float32"
_VALID_FLOATX = ("float32", "float64")
_VALID_BACKENDS = ("reference", "numba")


def _backend_from_env():
    name = os.environ.get("MINICNN_BACKEND", "numba").strip().lower()
    if name not in _VALID_BACKENDS:
        raise ValueError(
            f"MINICNN_BACKEND must be one of {_VALID_BACKENDS}. Received: MINICNN_BACKEND={name!r}"
        )
    return name


_BACKEND = _backend_from_env()
_RNG = np.random.default_rng()


def set_floatx(value):
    """Set the float type ('float32' or 'float64') of layers built after this call."""
    global _FLOATX
    if value not in _VALID_FLOATX:
        raise ValueError(f"floatx must be one of {_VALID_FLOATX}. Received: floatx={value!r}")
    _FLOATX = value


def get_floatx():
    """The float type new layers use: 'float32' (default) or 'float64'."""
    return _FLOATX


def set_backend(name):
    """Choose the kernels behind every layer: 'numba' (fast, default) or 'reference' (NumPy)."""
    global _BACKEND
    if name not in _VALID_BACKENDS:
        raise ValueError(f"backend must be one of {_VALID_BACKENDS}. Received: backend={name!r}")
    _BACKEND = name


def get_backend():
    """The active kernel backend: 'numba' or 'reference'."""
    return _BACKEND


def rng():
    """The generator behind weight initialisation, shuffling and default dropout seeds."""
    return _RNG


def set_seed(seed):
    """Re-seed the global generator (see ``minicnn.utils.set_random_seed``)."""
    global _RNG
    _RNG = np.random.default_rng(seed)
