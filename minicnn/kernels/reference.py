"""Convolution and max-pooling in plain NumPy: the textbook page and the test oracle.

Every function here is written to be read. A convolution is computed one kernel offset
``(u, v)`` at a time: for a fixed offset, every output pixel reads the same strided view of
the padded input, so the whole offset is one matrix product ``patch @ w[u, v]``. The Numba
backend (``numba_cpu.py``) computes the same numbers with a different algorithm (im2col and
one big matrix product); the tests check the two against each other, against finite
differences and against PyTorch.

Conventions shared by both backends:

- data is NHWC ``(N, H, W, C)``; conv kernels are ``(KH, KW, C, F)``, as in Keras;
- ``padding`` is explicit, ``((pad_top, pad_bottom), (pad_left, pad_right))``
  (see :func:`minicnn.kernels.conv_padding` for 'valid' and 'same');
- cross-correlation, not flipped convolution (as Keras and PyTorch);
- outputs have the dtype of the main input (float32 stays float32).
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import output_size

FLOAT_DTYPES = (np.float32, np.float64)


# ----------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------


def conv2d_forward(x, w, b, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1)):
    """Cross-correlate a batch of NHWC images with a bank of filters.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), float32 or float64
    w : ndarray of shape (KH, KW, C, F)
    b : ndarray of shape (F,), or None for no bias
    strides : (SH, SW)
    padding : ((pad_top, pad_bottom), (pad_left, pad_right)), zeros added around x
    dilation : (DH, DW), the step between kernel taps (1: an ordinary kernel)

    Returns
    -------
    y : ndarray of shape (N, OH, OW, F), dtype of x, where
        ``OH = (H + pad_top + pad_bottom - ((KH - 1) * DH + 1)) // SH + 1`` (OW likewise)

    Notes
    -----
    With xp the zero-padded input::

        y[n, i, j, f] = b[f] + sum_{u, v, c} w[u, v, c, f] * xp[n, SH*i + DH*u, SW*j + DW*v, c]
    """
    check_float("conv2d_forward", "x", x)
    check_conv2d_args("conv2d_forward", x.shape, w.shape, strides, padding, dilation)
    w = w.astype(x.dtype, copy=False)  # a float64 kernel must not up-cast float32 data
    (KH, KW, _, F), (SH, SW), (DH, DW) = w.shape, strides, dilation
    OH, OW = conv2d_output_hw(x.shape, (KH, KW), strides, padding, dilation)
    xp = pad_hw(x, padding)
    y = np.zeros((x.shape[0], OH, OW, F), dtype=x.dtype)
    for u in range(KH):  # one kernel offset at a time: every output pixel
        for v in range(KW):  # reads the same strided view of the input
            patch = xp[:, DH * u : DH * u + SH * OH : SH, DW * v : DW * v + SW * OW : SW, :]
            y += patch @ w[u, v]  # (N, OH, OW, C) @ (C, F) -> (N, OH, OW, F)
    if b is not None:
        y += b  # in place: keeps the dtype of x
    return y


def conv2d_backward_input(dy, w, x_shape, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1)):
    """Gradient of a loss with respect to the input of :func:`conv2d_forward`.

    Parameters
    ----------
    dy : ndarray of shape (N, OH, OW, F), the gradient with respect to y
    w : ndarray of shape (KH, KW, C, F)
    x_shape : (N, H, W, C), the shape of the forward input
    strides, padding, dilation : as in the forward call

    Returns
    -------
    dx : ndarray of shape (N, H, W, C), dtype of dy

    Notes
    -----
    Every input pixel ``(p, q)`` receives the gradient of each output pixel whose window
    covered it, weighted by the kernel tap that touched it::

        dx[n, p, q, c] = sum_{i, j, u, v, f} dy[n, i, j, f] * w[u, v, c, f]
                         over SH*i + DH*u = p + pad_top  and  SW*j + DW*v = q + pad_left

    We scatter ``dy @ w[u, v].T`` into the padded gradient at the same strided views the
    forward pass read, then crop the padding away (padded pixels are constants).
    """
    check_float("conv2d_backward_input", "dy", dy)
    check_conv2d_args("conv2d_backward_input", x_shape, w.shape, strides, padding, dilation)
    check_dy("conv2d_backward_input", dy.shape, x_shape, w.shape, strides, padding, dilation)
    w = w.astype(dy.dtype, copy=False)
    (KH, KW, C, _), (SH, SW), (DH, DW) = w.shape, strides, dilation
    N, H, W, _ = x_shape
    OH, OW = dy.shape[1:3]
    (pt, pb), (pl, pr) = padding
    dxp = np.zeros((N, H + pt + pb, W + pl + pr, C), dtype=dy.dtype)
    for u in range(KH):
        for v in range(KW):
            # a view into dxp, so += writes the gradient into place; within one view every
            # output pixel hits a different input pixel, so plain += is exact
            patch = dxp[:, DH * u : DH * u + SH * OH : SH, DW * v : DW * v + SW * OW : SW, :]
            patch += dy @ w[u, v].T  # (N, OH, OW, F) @ (F, C) -> (N, OH, OW, C)
    return dxp[:, pt : pt + H, pl : pl + W, :]


def conv2d_backward_weights(x, dy, kernel_size, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1)):
    """Gradients of a loss with respect to the kernel and bias of :func:`conv2d_forward`.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), the forward input
    dy : ndarray of shape (N, OH, OW, F), the gradient with respect to y
    kernel_size : (KH, KW)
    strides, padding, dilation : as in the forward call

    Returns
    -------
    dw : ndarray of shape (KH, KW, C, F), dtype of x
    db : ndarray of shape (F,), dtype of x

    Notes
    -----
    Each kernel tap ``(u, v)`` saw one strided view of the padded input, so its gradient is
    that view contracted with ``dy`` over the batch and all output pixels::

        dw[u, v, c, f] = sum_{n, i, j} dy[n, i, j, f] * xp[n, SH*i + DH*u, SW*j + DW*v, c]
        db[f]          = sum_{n, i, j} dy[n, i, j, f]
    """
    (KH, KW), C, F = kernel_size, x.shape[-1], dy.shape[-1]
    check_float("conv2d_backward_weights", "x", x)
    check_conv2d_args("conv2d_backward_weights", x.shape, (KH, KW, C, F), strides, padding, dilation)
    check_dy("conv2d_backward_weights", dy.shape, x.shape, (KH, KW, C, F), strides, padding, dilation)
    dy = dy.astype(x.dtype, copy=False)
    (SH, SW), (DH, DW) = strides, dilation
    OH, OW = dy.shape[1:3]
    xp = pad_hw(x, padding)
    dw = np.empty((KH, KW, C, F), dtype=x.dtype)
    for u in range(KH):
        for v in range(KW):
            patch = xp[:, DH * u : DH * u + SH * OH : SH, DW * v : DW * v + SW * OW : SW, :]
            # contract (n, i, j): (N, OH, OW, C) x (N, OH, OW, F) -> (C, F)
            dw[u, v] = np.tensordot(patch, dy, axes=([0, 1, 2], [0, 1, 2]))
    db = dy.sum(axis=(0, 1, 2))
    return dw, db


# ----------------------------------------------------------------------------------------
# Max pooling
# ----------------------------------------------------------------------------------------


def maxpool2d_forward(x, pool_size, strides, padding=((0, 0), (0, 0))):
    """Max over each ``PH x PW`` window of each channel, and where the max was.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), float32 or float64
    pool_size : (PH, PW)
    strides : (SH, SW); windows overlap when a stride is smaller than the pool
    padding : ((pad_top, pad_bottom), (pad_left, pad_right)), filled with -inf so that a
        padded cell never wins; each pad must be smaller than the pool

    Returns
    -------
    y : ndarray of shape (N, OH, OW, C), dtype of x, where
        ``OH = (H + pad_top + pad_bottom - PH) // SH + 1`` (OW likewise)
    argmax : int32 ndarray of shape (N, OH, OW, C), the row-major position ``u*PW + v`` of
        the maximum inside its window (what the backward pass needs)

    Notes
    -----
    With xp the input padded with -inf::

        y[n, i, j, c]      = max_{u, v} xp[n, SH*i + u, SW*j + v, c]
        argmax[n, i, j, c] = u*PW + v of the first maximum, in row-major order (u, then v)

    Ties: when several cells of a window hold the maximum, the FIRST one in row-major window
    order wins and later receives the whole gradient. This is what ``np.argmax`` and PyTorch's
    CPU ``max_pool2d`` do; the gradient is not split between tied cells. A NaN counts as a
    maximum (the first NaN wins), as in ``np.argmax``.
    """
    check_float("maxpool2d_forward", "x", x)
    check_pool2d_args("maxpool2d_forward", x.shape, pool_size, strides, padding)
    (PH, PW), (SH, SW) = pool_size, strides
    N, _, _, C = x.shape
    OH, OW = pool2d_output_hw(x.shape, pool_size, strides, padding)
    xp = pad_hw(x, padding, value=-np.inf)
    # every PH x PW window, then keep one window in SH (SW): (N, OH, OW, C, PH, PW)
    windows = sliding_window_view(xp, (PH, PW), axis=(1, 2))[:, ::SH, ::SW]
    windows = windows.reshape(N, OH, OW, C, PH * PW)  # cells in row-major (u, v) order
    argmax = windows.argmax(axis=-1).astype(np.int32)  # np.argmax: the first maximum wins
    y = np.take_along_axis(windows, argmax[..., None], axis=-1)[..., 0]
    return y, argmax


def maxpool2d_backward(dy, argmax, x_shape, pool_size, strides, padding=((0, 0), (0, 0))):
    """Gradient of a loss with respect to the input of :func:`maxpool2d_forward`.

    Parameters
    ----------
    dy : ndarray of shape (N, OH, OW, C), the gradient with respect to y
    argmax : int ndarray of shape (N, OH, OW, C), as returned by the forward pass
    x_shape : (N, H, W, C), the shape of the forward input
    pool_size, strides, padding : as in the forward call

    Returns
    -------
    dx : ndarray of shape (N, H, W, C), dtype of dy

    Notes
    -----
    Only the winning cell of each window depends on its input, with slope 1; with
    ``(u, v) = divmod(argmax[n, i, j, c], PW)``::

        dx[n, p, q, c] = sum_{i, j} dy[n, i, j, c]
                         over SH*i + u = p + pad_top  and  SW*j + v = q + pad_left

    Overlapping windows (stride < pool) can share a winner, so the gradients ACCUMULATE:
    ``np.add.at`` adds repeated indices, where ``dxp[idx] += dy`` would keep only one.
    Ties were settled in the forward pass: the first maximum in row-major window order gets
    the whole gradient (as ``np.argmax`` and PyTorch's CPU ``max_pool2d``).
    """
    check_float("maxpool2d_backward", "dy", dy)
    check_pool2d_args("maxpool2d_backward", x_shape, pool_size, strides, padding)
    expected = (x_shape[0], *pool2d_output_hw(x_shape, pool_size, strides, padding), x_shape[3])
    for name, shape in (("dy", dy.shape), ("argmax", argmax.shape)):
        if tuple(shape) != expected:
            raise ValueError(
                f"maxpool2d_backward: Expected `{name}` of shape {expected}. Received: {name}.shape={tuple(shape)}"
            )
    (_, PW), (SH, SW) = pool_size, strides
    N, H, W, C = x_shape
    OH, OW = dy.shape[1:3]
    (pt, pb), (pl, pr) = padding
    u, v = np.divmod(argmax, PW)
    n, i, j, c = np.ogrid[:N, :OH, :OW, :C]  # broadcast to (N, OH, OW, C)
    dxp = np.zeros((N, H + pt + pb, W + pl + pr, C), dtype=dy.dtype)
    np.add.at(dxp, (n, SH * i + u, SW * j + v, c), dy)
    return dxp[:, pt : pt + H, pl : pl + W, :]


# ----------------------------------------------------------------------------------------
# Helpers (shared with numba_cpu.py, so both backends raise the same errors)
# ----------------------------------------------------------------------------------------


def pad_hw(x, padding, value=0.0):
    """Pad the two spatial axes of an NHWC array with a constant (the batch and channels not)."""
    (pt, pb), (pl, pr) = padding
    return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=value)


def conv2d_output_hw(x_shape, kernel_hw, strides, padding, dilation=(1, 1)):
    """``(OH, OW)`` of a convolution (see :func:`minicnn.kernels.output_size`)."""
    return tuple(
        output_size(n, k, s, p, d)
        for n, k, s, p, d in zip(x_shape[1:3], kernel_hw, strides, padding, dilation, strict=True)
    )


def pool2d_output_hw(x_shape, pool_size, strides, padding):
    """``(OH, OW)`` of a pooling window sliding over ``x``."""
    return conv2d_output_hw(x_shape, pool_size, strides, padding)


def _check_geometry(op, x_shape, window, strides, padding, dilation):
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
    out_hw = conv2d_output_hw(x_shape, window, strides, padding, dilation)
    if min(out_hw) < 1:
        raise ValueError(
            f"{op}: the window {tuple(window)} (dilation {tuple(dilation)}) does not fit in the padded input. "
            f"Received: input shape={tuple(x_shape)}, padding={padding}"
        )


def check_conv2d_args(op, x_shape, w_shape, strides, padding, dilation):
    """Raise ValueError unless a convolution of these shapes and settings is well defined."""
    if len(w_shape) != 4:
        raise ValueError(f"{op}: Expected a kernel of shape (KH, KW, C, F). Received: shape={tuple(w_shape)}")
    _check_geometry(op, x_shape, w_shape[:2], strides, padding, dilation)
    if x_shape[3] != w_shape[2]:
        raise ValueError(
            f"{op}: Expected the kernel's input channels to match the input's. "
            f"Received: input shape={tuple(x_shape)}, kernel shape={tuple(w_shape)}"
        )


def check_dy(op, dy_shape, x_shape, w_shape, strides, padding, dilation):
    """Raise ValueError unless ``dy`` has the shape the forward pass would have produced."""
    expected = (x_shape[0], *conv2d_output_hw(x_shape, w_shape[:2], strides, padding, dilation), w_shape[3])
    if tuple(dy_shape) != expected:
        raise ValueError(f"{op}: Expected `dy` of shape {expected}. Received: dy.shape={tuple(dy_shape)}")


def check_pool2d_args(op, x_shape, pool_size, strides, padding):
    """Raise ValueError unless max-pooling with these settings is well defined."""
    _check_geometry(op, x_shape, pool_size, strides, padding, (1, 1))
    # a pad as wide as the pool would make windows of padding only, whose max is -inf
    if any(p >= k for pair, k in zip(padding, pool_size, strict=True) for p in pair):
        raise ValueError(
            f"{op}: Expected each pad to be smaller than the pool. "
            f"Received: pool_size={tuple(pool_size)}, padding={padding}"
        )


def check_float(op, name, a):
    """Raise TypeError unless ``a`` holds float32 or float64 numbers."""
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: Expected `{name}` of dtype float32 or float64. Received: dtype={a.dtype}")
