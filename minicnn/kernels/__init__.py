"""Stateless kernels behind the layers, dispatched to the active backend.

Two implementations share one set of public signatures (a test holds them to it):

- ``reference.py``: plain, readable NumPy; the textbook page and the test oracle.
- ``numba/``: Numba-compiled loops, the fast default; imported on first use so that
  ``import minicnn`` stays light. Its ``__init__`` has the route table (which algorithm runs
  for which shapes, and why).

``shapes.py`` holds what both share: output sizes, 'same' padding, the argument checks and the
:class:`~minicnn.kernels.shapes.ConvGeometry` of a call. Layers call the functions named in
``KERNELS`` below; each looks up ``minicnn.get_backend()`` at call time.

All data is NHWC (channels last); conv kernels are ``(KH, KW, C, F)``; ``padding`` is the
explicit ``((pad_top, pad_bottom), (pad_left, pad_right))`` computed by :func:`conv_padding`.
"""

import importlib

from .. import config
from .shapes import conv_padding, output_size, same_padding_1d  # noqa: F401  (the public names)

# backend name -> the module that implements it
BACKENDS = {"reference": ".reference", "numba": ".numba"}

KERNELS = (
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_weights",
    "conv2d_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "dense_forward",
    "dense_backward",
    "adam_update",
    "batchnorm_forward_train",
    "batchnorm_backward",
)


def backend_module(name=None):
    """Return the kernel module of backend ``name`` (default: the active one)."""
    return importlib.import_module(BACKENDS[name or config.get_backend()], __name__)


def __getattr__(name):
    # minicnn.kernels.conv2d_forward(...) runs the active backend's kernel.
    if name in KERNELS:
        return getattr(backend_module(), name)
    raise AttributeError(f"module 'minicnn.kernels' has no attribute {name!r}")
