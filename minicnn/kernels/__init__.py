"""Stateless kernels behind the layers, dispatched to the active backend.

Two implementations share one set of signatures:

- ``reference``: plain, readable NumPy; the textbook page and the test oracle.
- ``numba_cpu``: Numba-jitted loops (the fast default), imported on first use so that
  ``import minicnn`` stays light.

Layers call the functions below; each looks up ``minicnn.get_backend()`` at call time.
This module also holds the shape arithmetic (output size, 'same' padding) both backends share.

All data is NHWC (channels last); conv kernels are ``(KH, KW, C, F)``; ``padding`` is the
explicit ``((pad_top, pad_bottom), (pad_left, pad_right))`` computed by :func:`conv_padding`.
"""

import importlib
import math

from .. import config

KERNELS = (
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_weights",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "conv2d_backward",
    "dense_forward",
    "dense_backward",
    "adam_update",
    "avgpool2d_forward", "avgpool2d_backward", "batchnorm_forward_train", "batchnorm_backward",
)


def backend_module(name=None):
    """Return the kernel module of backend ``name`` (default: the active one)."""
    name = name or config.get_backend()
    return importlib.import_module(f".{'reference' if name == 'reference' else 'numba_cpu'}", __name__)


def same_padding_1d(size, window, stride, dilation=1):
    """Padding ``(before, after)`` of one axis for Keras/TensorFlow 'same' padding.

    ``out = ceil(size / stride)``; the total padding is
    ``max((out - 1) * stride + (window - 1) * dilation + 1 - size, 0)``, split with the extra
    pixel after (bottom/right), as TensorFlow and PyTorch's ``padding='same'`` (stride 1 only) do.
    """
    out = math.ceil(size / stride)
    effective = (window - 1) * dilation + 1
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def conv_padding(padding, input_hw, window, strides, dilation=(1, 1)):
    """Explicit ``((top, bottom), (left, right))`` padding for 'valid' or 'same'."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    return tuple(same_padding_1d(n, k, s, d) for n, k, s, d in zip(input_hw, window, strides, dilation, strict=True))


def output_size(size, window, stride, pad=(0, 0), dilation=1):
    """Output length of a sliding window: ``(size + pad_before + pad_after - eff) // stride + 1``,
    where ``eff = (window - 1) * dilation + 1`` is the span the window covers."""
    effective = (window - 1) * dilation + 1
    return (size + pad[0] + pad[1] - effective) // stride + 1


def __getattr__(name):
    # minicnn.kernels.conv2d_forward(...) runs the active backend's kernel.
    if name in KERNELS:
        return getattr(backend_module(), name)
    raise AttributeError(f"module 'minicnn.kernels' has no attribute {name!r}")
