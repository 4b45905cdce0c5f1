"""Convolution and max-pooling in plain NumPy: the textbook page and the test oracle.

Every function here is written to be read. A convolution is computed one kernel offset
``(u, v)`` at a time: for a fixed offset, every output pixel reads the same strided view of
the padded input, so the whole offset is one matrix product ``patch @ w[u, v]``. The Numba
backend (``minicnn/kernels/numba/``) computes the same numbers with other algorithms (register
tiles, or im2col and one big matrix product); the tests check the two against each other,
against finite differences and against PyTorch. Shape arithmetic and argument checks live in
``shapes.py``.

Conventions shared by both backends:

- data is NHWC ``(N, H, W, C)``; conv kernels are ``(KH, KW, C, F)``, as in Keras;
- ``padding`` is explicit, ``((pad_top, pad_bottom), (pad_left, pad_right))``
  (see :func:`minicnn.kernels.conv_padding` for 'valid' and 'same');
- cross-correlation, not flipped convolution (as Keras and PyTorch);
- outputs have the dtype of the main input (float32 stays float32).
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .shapes import (  # noqa: F401  (the checks are re-exported: both backends raise the same errors)
    FLOAT_DTYPES,
    check_activation,
    check_batchnorm_args,
    check_float,
    check_output_shape,
    conv2d_geometry,
    pool2d_geometry,
)

# ----------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------


def conv2d_forward(x, w, b, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), activation=None):
    """Cross-correlate a batch of NHWC images with a bank of filters.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), float32 or float64
    w : ndarray of shape (KH, KW, C, F)
    b : ndarray of shape (F,), or None for no bias
    strides : (SH, SW)
    padding : ((pad_top, pad_bottom), (pad_left, pad_right)), zeros added around x
    dilation : (DH, DW), the step between kernel taps (1: an ordinary kernel)
    activation : None or 'relu'
        'relu' returns ``max(y, 0)`` (the Numba backend applies it in the same pass as the bias).

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
    g = conv2d_geometry("conv2d_forward", x.shape, w.shape, strides, padding, dilation)
    check_activation("conv2d_forward", activation)
    w = w.astype(x.dtype, copy=False)  # a float64 kernel must not up-cast float32 data
    (KH, KW, _, F), (SH, SW), (DH, DW), (OH, OW) = w.shape, strides, dilation, (g.OH, g.OW)
    xp = pad_hw(x, padding)
    y = np.zeros((x.shape[0], OH, OW, F), dtype=x.dtype)
    for u in range(KH):  # one kernel offset at a time: every output pixel
        for v in range(KW):  # reads the same strided view of the input
            patch = xp[:, DH * u : DH * u + SH * OH : SH, DW * v : DW * v + SW * OW : SW, :]
            y += patch @ w[u, v]  # (N, OH, OW, C) @ (C, F) -> (N, OH, OW, F)
    if b is not None:
        y += b  # in place: keeps the dtype of x
    if activation == "relu":
        np.maximum(y, 0, out=y)
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
    g = conv2d_geometry("conv2d_backward_input", x_shape, w.shape, strides, padding, dilation)
    check_output_shape("conv2d_backward_input", "dy", dy.shape, (x_shape[0], g.OH, g.OW, w.shape[3]))
    w = w.astype(dy.dtype, copy=False)
    (KH, KW, C, _), (SH, SW), (DH, DW), (OH, OW) = w.shape, strides, dilation, (g.OH, g.OW)
    N, H, W, _ = x_shape
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
    g = conv2d_geometry("conv2d_backward_weights", x.shape, (KH, KW, C, F), strides, padding, dilation)
    check_output_shape("conv2d_backward_weights", "dy", dy.shape, (x.shape[0], g.OH, g.OW, F))
    dy = dy.astype(x.dtype, copy=False)
    (SH, SW), (DH, DW), (OH, OW) = strides, dilation, (g.OH, g.OW)
    xp = pad_hw(x, padding)
    dw = np.empty((KH, KW, C, F), dtype=x.dtype)
    for u in range(KH):
        for v in range(KW):
            patch = xp[:, DH * u : DH * u + SH * OH : SH, DW * v : DW * v + SW * OW : SW, :]
            # contract (n, i, j): (N, OH, OW, C) x (N, OH, OW, F) -> (C, F)
            dw[u, v] = np.tensordot(patch, dy, axes=([0, 1, 2], [0, 1, 2]))
    db = dy.sum(axis=(0, 1, 2))
    return dw, db


def conv2d_backward(dy, x, w, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), relu_output=None,
                    input_gradient=True):
    """All the gradients of :func:`conv2d_forward` in one call: ``(dx, dw, db)``.

    Parameters
    ----------
    dy : ndarray of shape (N, OH, OW, F), the gradient with respect to the output
    x : ndarray of shape (N, H, W, C), the forward input
    w : ndarray of shape (KH, KW, C, F)
    strides, padding, dilation : as in the forward call
    relu_output : ndarray of shape (N, OH, OW, F) or None
        ``y`` of ``conv2d_forward(..., activation='relu')``: ``dy`` is then the gradient with
        respect to ``y = max(z, 0)``, and the chain rule first multiplies it by ``y > 0``.
    input_gradient : bool
        False skips ``dx`` and returns None for it (the first layer of a model needs none).

    Returns
    -------
    dx : ndarray of shape (N, H, W, C) or None;  dw : (KH, KW, C, F);  db : (F,)

    Notes
    -----
    ::

        dz = dy * (relu_output > 0)            (ReLU's derivative; 0 at 0, as Keras and PyTorch)
        dx = conv2d_backward_input(dz, ...)    dw, db = conv2d_backward_weights(x, dz, ...)
    """
    if relu_output is not None:
        dy = dy * (relu_output > 0)
    dw, db = conv2d_backward_weights(x, dy, w.shape[:2], strides, padding, dilation)
    dx = conv2d_backward_input(dy, w, x.shape, strides, padding, dilation) if input_gradient else None
    return dx, dw, db


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
    g = pool2d_geometry("maxpool2d_forward", x.shape, pool_size, strides, padding)
    (PH, PW), (SH, SW), (OH, OW) = pool_size, strides, (g.OH, g.OW)
    N, _, _, C = x.shape
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
    g = pool2d_geometry("maxpool2d_backward", x_shape, pool_size, strides, padding)
    N, H, W, C = x_shape
    check_output_shape("maxpool2d_backward", "dy", dy.shape, (N, g.OH, g.OW, C))
    check_output_shape("maxpool2d_backward", "argmax", argmax.shape, dy.shape)
    (_, PW), (SH, SW), (OH, OW) = pool_size, strides, (g.OH, g.OW)
    (pt, pb), (pl, pr) = padding
    u, v = np.divmod(argmax, PW)
    n, i, j, c = np.ogrid[:N, :OH, :OW, :C]  # broadcast to (N, OH, OW, C)
    dxp = np.zeros((N, H + pt + pb, W + pl + pr, C), dtype=dy.dtype)
    np.add.at(dxp, (n, SH * i + u, SW * j + v, c), dy)
    return dxp[:, pt : pt + H, pl : pl + W, :]


# ----------------------------------------------------------------------------------------
# Dense (fully connected)
# ----------------------------------------------------------------------------------------


def dense_forward(x, w, b, activation=None):
    """A fully connected layer: every output is a weighted sum of all the inputs.

    Parameters
    ----------
    x : ndarray of shape (N, D)
    w : ndarray of shape (D, U)
    b : ndarray of shape (U,), or None for no bias
    activation : None or 'relu'

    Returns
    -------
    y : ndarray of shape (N, U), dtype of x

    Notes
    -----
    ::

        y[n, k] = b[k] + sum_d x[n, d] * w[d, k]        (then max(y, 0) for 'relu')
    """
    check_float("dense_forward", "x", x)
    check_activation("dense_forward", activation)
    y = x @ w.astype(x.dtype, copy=False)
    if b is not None:
        y += b
    if activation == "relu":
        np.maximum(y, 0, out=y)
    return y


def dense_backward(dy, x, w, relu_output=None, input_gradient=True):
    """All the gradients of :func:`dense_forward`: ``(dx, dw, db)``.

    Parameters
    ----------
    dy : ndarray of shape (N, U), the gradient with respect to the output
    x : ndarray of shape (N, D), the forward input
    w : ndarray of shape (D, U)
    relu_output : ndarray of shape (N, U) or None
        ``y`` of ``dense_forward(..., activation='relu')``: ``dy`` is first multiplied by ``y > 0``.
    input_gradient : bool
        False skips ``dx`` and returns None for it.

    Notes
    -----
    With ``dz = dy * (relu_output > 0)`` (or ``dz = dy``)::

        dx = dz @ w.T        dw = x.T @ dz        db[k] = sum_n dz[n, k]
    """
    check_float("dense_backward", "dy", dy)
    if relu_output is not None:
        dy = dy * (relu_output > 0)
    dy = dy.astype(x.dtype, copy=False)
    dx = dy @ w.astype(x.dtype, copy=False).T if input_gradient else None
    return dx, x.T @ dy, dy.sum(axis=0)


# ----------------------------------------------------------------------------------------
# Adam's update
# ----------------------------------------------------------------------------------------


def adam_update(w, g, m, v, lr_t, beta_1, beta_2, epsilon):
    """One Adam step on one array, in place, in Keras's form.

    Parameters
    ----------
    w : ndarray, the weights (changed in place)
    g : ndarray of the shape of w, the gradient dL/dw
    m, v : ndarrays of the shape of w, the moment estimates (changed in place)
    lr_t : float
        The step size with both bias corrections folded in:
        ``learning_rate * sqrt(1 - beta_2**t) / (1 - beta_1**t)`` at step t = 1, 2, ...
        A Python float: NumPy rounds it to float32 for float32 arrays (a NumPy float64
        scalar would instead turn the update into float64 arithmetic).
    beta_1, beta_2, epsilon : floats

    Notes
    -----
    ::

        m = m + (1 - beta_1) * (g - m)        # = beta_1 * m + (1 - beta_1) * g
        v = v + (1 - beta_2) * (g**2 - v)     # = beta_2 * v + (1 - beta_2) * g**2
        w = w - lr_t * m / (sqrt(v) + epsilon)

    Each line is a pass over the whole array; the Numba backend does all three in one.
    """
    m += (g - m) * (1 - beta_1)
    v += (g * g - v) * (1 - beta_2)
    w -= lr_t * m / (np.sqrt(v) + epsilon)


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def pad_hw(x, padding, value=0.0):
    """Pad the two spatial axes of an NHWC array with a constant (the batch and channels not)."""
    (pt, pb), (pl, pr) = padding
    return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=value)


# ----------------------------------------------------------------------------------------
# Average pooling
# ----------------------------------------------------------------------------------------


def avgpool2d_forward(x, pool_size, strides, padding=((0, 0), (0, 0))):
    """Mean of each ``PH x PW`` window of each channel, padded cells left out.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), float32 or float64
    pool_size : (PH, PW)
    strides : (SH, SW)
    padding : ((pad_top, pad_bottom), (pad_left, pad_right)); each pad smaller than the pool

    Returns
    -------
    y : ndarray of shape (N, OH, OW, C), dtype of x, ``OH = (H + pad_top + pad_bottom - PH) // SH + 1``

    Notes
    -----
    With xp the input padded with zeros and ``count[i, j]`` the number of cells of window
    ``(i, j)`` that lie inside x (not in the padding)::

        y[n, i, j, c] = (1 / count[i, j]) * sum_{u, v} xp[n, SH*i + u, SW*j + v, c]

    Padded cells count neither in the sum nor in the divisor, as in Keras/TensorFlow 'same'
    average pooling (PyTorch's ``count_include_pad=False``; its default ``True`` divides by
    ``PH*PW`` everywhere). Every window holds at least one real cell because each pad is
    smaller than the pool.
    """
    check_float("avgpool2d_forward", "x", x)
    g = pool2d_geometry("avgpool2d_forward", x.shape, pool_size, strides, padding)
    (PH, PW), (SH, SW), (OH, OW) = pool_size, strides, (g.OH, g.OW)
    N, _, _, C = x.shape
    xp = pad_hw(x, padding)
    total = np.zeros((N, OH, OW, C), dtype=x.dtype)
    for u in range(PH):  # one window offset at a time, as in conv2d_forward
        for v in range(PW):
            total += xp[:, u : u + SH * OH : SH, v : v + SW * OW : SW, :]
    return total / avgpool2d_counts(x.shape, g, x.dtype)


def avgpool2d_backward(dy, x_shape, pool_size, strides, padding=((0, 0), (0, 0))):
    """Gradient of a loss with respect to the input of :func:`avgpool2d_forward`.

    Parameters
    ----------
    dy : ndarray of shape (N, OH, OW, C), the gradient with respect to y
    x_shape : (N, H, W, C), the shape of the forward input
    pool_size, strides, padding : as in the forward call

    Returns
    -------
    dx : ndarray of shape (N, H, W, C), dtype of dy

    Notes
    -----
    Every cell of a window has slope ``1 / count[i, j]``, so each input pixel collects the
    shares of all windows that cover it::

        dx[n, p, q, c] = sum_{i, j} dy[n, i, j, c] / count[i, j]
                         over SH*i + u = p + pad_top, SW*j + v = q + pad_left, 0 <= u < PH, 0 <= v < PW
    """
    check_float("avgpool2d_backward", "dy", dy)
    g = pool2d_geometry("avgpool2d_backward", x_shape, pool_size, strides, padding)
    N, H, W, C = x_shape
    check_output_shape("avgpool2d_backward", "dy", dy.shape, (N, g.OH, g.OW, C))
    (PH, PW), (SH, SW), (OH, OW) = pool_size, strides, (g.OH, g.OW)
    (pt, pb), (pl, pr) = padding
    share = dy / avgpool2d_counts(x_shape, g, dy.dtype)  # (N, OH, OW, C)
    dxp = np.zeros((N, H + pt + pb, W + pl + pr, C), dtype=dy.dtype)
    for u in range(PH):
        for v in range(PW):
            # within one offset every window hits a different pixel, so += is exact
            dxp[:, u : u + SH * OH : SH, v : v + SW * OW : SW, :] += share
    return dxp[:, pt : pt + H, pl : pl + W, :]


def avgpool2d_counts(x_shape, g, dtype=np.float64):
    """``count[i, j]``, shape (1, OH, OW, 1): how many cells of each window are inside the input.

    The same windowed sum as the forward pass, over an array that is 1 inside and 0 in the
    padding; ``g`` is the call's :class:`~minicnn.kernels.shapes.ConvGeometry`.
    """
    (PH, PW, SH, SW), (OH, OW) = (g.KH, g.KW, g.SH, g.SW), (g.OH, g.OW)
    inside = pad_hw(np.ones((1, x_shape[1], x_shape[2], 1), dtype=dtype), g.padding)
    count = np.zeros((1, OH, OW, 1), dtype=dtype)
    for u in range(PH):
        for v in range(PW):
            count += inside[:, u : u + SH * OH : SH, v : v + SW * OW : SW, :]
    return count


# ----------------------------------------------------------------------------------------
# Batch normalisation (training mode: batch statistics)
# ----------------------------------------------------------------------------------------


def batchnorm_forward_train(x, gamma, beta, epsilon):
    """Normalise each channel with the mean and variance of this batch, then scale and shift.

    Parameters
    ----------
    x : ndarray of shape (..., C), float32 or float64; channels last, statistics over all
        other axes (N, H, W for images, N for (N, D) features)
    gamma, beta : ndarrays of shape (C,), the learned scale and shift
    epsilon : float >= 0, added to the variance

    Returns
    -------
    y : ndarray of the shape of x, dtype of x
    mean, var : ndarrays of shape (C,), dtype of x: the batch mean and the BIASED batch
        variance (divided by M, not M - 1) that normalised x

    Notes
    -----
    With x seen as M = N*H*W rows of C channels, ``x[m, c]``::

        mean[c]    = (1/M) sum_m x[m, c]
        var[c]     = (1/M) sum_m (x[m, c] - mean[c])**2
        xhat[m, c] = (x[m, c] - mean[c]) / sqrt(var[c] + epsilon)
        y[m, c]    = gamma[c] * xhat[m, c] + beta[c]

    The variance is computed in two passes (mean first), which stays accurate when
    ``|mean| >> std``; Keras computes ``E[x**2] - E[x]**2``, equal up to rounding.
    """
    check_float("batchnorm_forward_train", "x", x)
    check_batchnorm_args("batchnorm_forward_train", x.shape, gamma, beta, epsilon)
    gamma, beta = gamma.astype(x.dtype, copy=False), beta.astype(x.dtype, copy=False)
    x2 = x.reshape(-1, x.shape[-1])  # (M, C)
    mean = x2.mean(axis=0)
    var = ((x2 - mean) ** 2).mean(axis=0)
    xhat = (x2 - mean) / np.sqrt(var + epsilon)
    y = gamma * xhat + beta
    return y.reshape(x.shape), mean, var


def batchnorm_backward(dy, x, gamma, mean, var, epsilon):
    """Gradients of a loss with respect to x, gamma and beta of :func:`batchnorm_forward_train`.

    Parameters
    ----------
    dy : ndarray of the shape of x, the gradient with respect to y
    x : ndarray of shape (..., C), the forward input
    gamma : ndarray of shape (C,)
    mean, var : ndarrays of shape (C,), as returned by the forward pass
    epsilon : float, as in the forward call

    Returns
    -------
    dx : ndarray of the shape of x, dtype of x
    dgamma, dbeta : ndarrays of shape (C,), dtype of x

    Notes
    -----
    Each ``xhat[m, c]`` depends on every ``x[k, c]`` of its channel, through the mean and the
    variance. Differentiating the three paths and simplifying gives the compact form::

        dbeta[c]  = sum_m dy[m, c]
        dgamma[c] = sum_m dy[m, c] * xhat[m, c]
        dx[m, c]  = gamma[c] / sqrt(var[c] + epsilon)
                    * (dy[m, c] - dbeta[c] / M - xhat[m, c] * dgamma[c] / M)

    The two subtracted terms are the projections of ``dy`` onto the directions the
    normalisation removes: a constant shift (the mean) and a rescaling of ``xhat`` (the variance).
    """
    check_float("batchnorm_backward", "dy", dy)
    check_batchnorm_args("batchnorm_backward", x.shape, gamma, gamma, epsilon)
    if dy.shape != x.shape:
        raise ValueError(f"batchnorm_backward: Expected `dy` of shape {x.shape}. Received: dy.shape={dy.shape}")
    dtype = dy.dtype
    C = x.shape[-1]
    x2, dy2 = x.reshape(-1, C).astype(dtype, copy=False), dy.reshape(-1, C)  # (M, C)
    M = x2.shape[0]
    inv_std = 1 / np.sqrt(var.astype(dtype, copy=False) + epsilon)
    xhat = (x2 - mean.astype(dtype, copy=False)) * inv_std
    dbeta = dy2.sum(axis=0)
    dgamma = (dy2 * xhat).sum(axis=0)
    dx = gamma.astype(dtype, copy=False) * inv_std * (dy2 - dbeta / M - xhat * (dgamma / M))
    return dx.reshape(x.shape), dgamma, dbeta
