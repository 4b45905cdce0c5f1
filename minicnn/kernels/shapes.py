"""Shape arithmetic both backends share: output sizes, 'same' padding, argument checks, and the
one :class:`ConvGeometry` a convolution call builds from its arguments and carries to every kernel.

All data is NHWC (channels last); conv kernels are ``(KH, KW, C, F)``; ``padding`` is the
explicit ``((pad_top, pad_bottom), (pad_left, pad_right))`` computed by :func:`conv_padding`.
"""

import math
from typing import NamedTuple

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)


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


class ConvGeometry(NamedTuple):
    """Everything about a convolution's (or pooling's) sliding window, as plain Python ints.

    Built once per kernel call (by :func:`conv2d_geometry` or :func:`pool2d_geometry`, which
    check the arguments first) and passed whole to every helper and jitted loop,
    so no helper recomputes the output size or reads the padding from another argument.
    (Plain ints: a NumPy int32 anywhere would change the tuple's type and compile every
    kernel a second time. Jitted loops receive it as ``tuple(g)``: Numba unboxes a plain tuple
    in less than half the time of a NamedTuple, and a kernel call makes a jitted call per part.)

    Fields: kernel (or pool) size ``KH, KW``; strides ``SH, SW``; dilation ``DH, DW``; padding
    ``PT, PB, PL, PR`` (top, bottom, left, right); output size ``OH, OW``, where
    ``OH = (H + PT + PB - ((KH - 1) * DH + 1)) // SH + 1`` (OW likewise).
    """

    KH: int
    KW: int
    SH: int
    SW: int
    DH: int
    DW: int
    PT: int
    PB: int
    PL: int
    PR: int
    OH: int
    OW: int

    @classmethod
    def of(cls, x_shape, window, strides, padding, dilation=(1, 1)):
        """The geometry of ``window`` sliding over an NHWC input of shape ``x_shape``."""
        (PT, PB), (PL, PR) = padding
        OH, OW = (output_size(n, k, s, p, d)
                  for n, k, s, p, d in zip(x_shape[1:3], window, strides, padding, dilation, strict=True))
        return cls(*(int(v) for v in (*window, *strides, *dilation, PT, PB, PL, PR, OH, OW)))

    @property
    def padding(self):
        """``((PT, PB), (PL, PR))``, the form the public kernels take."""
        return (self.PT, self.PB), (self.PL, self.PR)


def _geometry(op, x_shape, window, strides, padding, dilation):
    """The checked :class:`ConvGeometry` of ``window`` sliding over ``x_shape``, or ValueError."""
    if len(x_shape) != 4:
        raise ValueError(f"{op}: Expected an input of shape (N, H, W, C). Received: shape={tuple(x_shape)}")
    for name, pair in (("window", window), ("strides", strides), ("dilation", dilation)):
        if len(pair) != 2 or any(int(s) != s or s < 1 for s in pair):
            raise ValueError(f"{op}: Expected `{name}` to be 2 positive integers. Received: {name}={pair}")
    if len(padding) != 2 or any(len(p) != 2 or min(p) < 0 for p in padding):
        raise ValueError(
            f"{op}: Expected `padding` as ((top, bottom), (left, right)) of non-negative integers. "
            f"Received: padding={padding}"
        )
    g = ConvGeometry.of(x_shape, window, strides, padding, dilation)
    if min(g.OH, g.OW) < 1:
        raise ValueError(
            f"{op}: the window {tuple(window)} (dilation {tuple(dilation)}) does not fit in the padded input. "
            f"Received: input shape={tuple(x_shape)}, padding={padding}"
        )
    return g


def conv2d_geometry(op, x_shape, w_shape, strides, padding, dilation):
    """The :class:`ConvGeometry` of a convolution call, after checking that it is well defined.

    Raises ValueError naming the argument (as ``op: Expected ... Received: ...``) for a kernel
    that is not ``(KH, KW, C, F)`` with the input's C, bad strides, padding or dilation, or a
    window that does not fit in the padded input.
    """
    if len(w_shape) != 4:
        raise ValueError(f"{op}: Expected a kernel of shape (KH, KW, C, F). Received: shape={tuple(w_shape)}")
    g = _geometry(op, x_shape, w_shape[:2], strides, padding, dilation)
    if x_shape[3] != w_shape[2]:
        raise ValueError(
            f"{op}: Expected the kernel's input channels to match the input's. "
            f"Received: input shape={tuple(x_shape)}, kernel shape={tuple(w_shape)}"
        )
    return g


def pool2d_geometry(op, x_shape, pool_size, strides, padding):
    """The :class:`ConvGeometry` of a pooling call, after checking that it is well defined."""
    g = _geometry(op, x_shape, pool_size, strides, padding, (1, 1))
    # a pad as wide as the pool would make windows of padding only, whose max is -inf
    if any(p >= k for pair, k in zip(padding, pool_size, strict=True) for p in pair):
        raise ValueError(
            f"{op}: Expected each pad to be smaller than the pool. "
            f"Received: pool_size={tuple(pool_size)}, padding={padding}"
        )
    return g


def check_output_shape(op, name, shape, expected):
    """Raise ValueError unless ``shape`` (of a gradient ``name``) is the forward output's ``expected``."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{op}: Expected `{name}` of shape {tuple(expected)}. Received: {name}.shape={tuple(shape)}")


def check_activation(op, activation):
    """Raise ValueError unless ``activation`` is one a kernel can fuse (None or 'relu')."""
    if activation not in (None, "relu"):
        raise ValueError(f"{op}: Expected `activation` None or 'relu'. Received: activation={activation!r}")


def check_float(op, name, a):
    """Raise TypeError unless ``a`` holds float32 or float64 numbers."""
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: Expected `{name}` of dtype float32 or float64. Received: dtype={a.dtype}")


def check_batchnorm_args(op, x_shape, gamma, beta, epsilon):
    """Raise ValueError unless batch normalisation of ``x_shape`` with these parameters is defined."""
    if len(x_shape) < 2 or 0 in x_shape:
        raise ValueError(f"{op}: Expected a non-empty input of shape (N, ..., C). Received: shape={tuple(x_shape)}")
    for name, a in (("gamma", gamma), ("beta", beta)):
        if np.shape(a) != (x_shape[-1],):
            raise ValueError(
                f"{op}: Expected `{name}` of shape ({x_shape[-1]},), one per channel. Received: {name}.shape={np.shape(a)}"
            )
    if not np.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"{op}: Expected `epsilon` >= 0. Received: epsilon={epsilon!r}")
