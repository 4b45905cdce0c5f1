"""minicnn: a convolutional neural network library written from scratch to be read.

The blog's Keras code runs with ``keras`` replaced by ``minicnn``::

    from minicnn.models import Sequential
    from minicnn.layers import Conv2D, MaxPooling2D, Flatten, Dense

Every layer's forward and backward pass is a few screens of NumPy (``minicnn.kernels.reference``)
with a Numba-compiled twin (``minicnn.kernels.numba``) that tests prove equal.
"""

import importlib

from .config import get_backend, get_floatx, set_backend, set_floatx
from .layers import Input

__version__ = "0.1.0"

# Submodules load on first use (``minicnn.plotting`` pulls in matplotlib, ``models`` the training loop).
_SUBMODULES = (
    "activations", "callbacks", "cli", "config", "data", "datasets", "gradcheck", "initializers",
    "inspect", "interop", "kernels", "layers", "losses", "metrics", "models", "optimizers", "plotting",
    "regularizers", "schedules", "utils", "zoo",
)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in ("Sequential", "load_model"):
        return getattr(importlib.import_module(".models", __name__), name)
    raise AttributeError(f"module 'minicnn' has no attribute {name!r}")


__all__ = ["Sequential", "Input", "load_model", "set_backend", "get_backend", "set_floatx", "get_floatx", "__version__"]
