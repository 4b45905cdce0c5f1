"""Max and average pooling: one loop per pass, the images split over the lanes (no BLAS).

Same signatures and results as ``reference.py``. Max pooling finds ``y`` and ``argmax`` in one
fused loop, and its backward pass writes each pixel once when windows do not overlap (else a
scatter). Average pooling divides a window sum by its count of real (unpadded) cells.
"""

import math

import numpy as np
from numba import njit

from ..shapes import check_float, check_output_shape, pool2d_geometry
from ._buffers import POOL, fill_zero
from ._runtime import JIT_OPTIONS
from ._threads import LANES, PARTS, split


def maxpool2d_forward(x, pool_size, strides, padding=((0, 0), (0, 0))):
    """Max over each ``PH x PW`` window of each channel, and where the max was.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), float32 or float64
    pool_size : (PH, PW)
    strides : (SH, SW); windows overlap when a stride is smaller than the pool
    padding : ((pad_top, pad_bottom), (pad_left, pad_right)), treated as -inf so that a
        padded cell never wins; each pad must be smaller than the pool

    Returns
    -------
    y : ndarray of shape (N, OH, OW, C), dtype of x, ``OH = (H + pad_top + pad_bottom - PH) // SH + 1``
    argmax : int32 ndarray of shape (N, OH, OW, C), the row-major position ``u*PW + v`` of
        the maximum inside its window

    Notes
    -----
    With xp the input padded with -inf::

        y[n, i, j, c]      = max_{u, v} xp[n, SH*i + u, SW*j + v, c]
        argmax[n, i, j, c] = u*PW + v of the first maximum, in row-major order (u, then v)

    Ties: the FIRST maximum in row-major window order wins and later receives the whole
    gradient, as with ``np.argmax`` and PyTorch's CPU ``max_pool2d`` (a strict ``>`` scan).
    A NaN counts as a maximum (the first NaN wins), as in ``np.argmax``.
    """
    check_float("maxpool2d_forward", "x", x)
    g = pool2d_geometry("maxpool2d_forward", x.shape, pool_size, strides, padding)
    x = np.ascontiguousarray(x)
    N, _, _, C = x.shape
    y = POOL.empty("maxpool2d.y", (N, g.OH, g.OW, C), x.dtype)
    argmax = POOL.empty("maxpool2d.argmax", (N, g.OH, g.OW, C), np.int32)
    images, loop_g = split(N, PARTS), tuple(g)  # the jitted loops take g as a plain tuple (shapes.ConvGeometry)

    def part(k):  # part k owns the images n0:n1 of y and argmax
        n0, n1 = images[k]
        _maxpool_forward(x[n0:n1], loop_g, y[n0:n1], argmax[n0:n1])

    LANES.run(part, PARTS, x.size)
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
    With ``(u, v) = divmod(argmax[n, i, j, c], PW)``::

        dx[n, p, q, c] = sum_{i, j} dy[n, i, j, c]
                         over SH*i + u = p + pad_top  and  SW*j + v = q + pad_left

    Overlapping windows can share a winner, so gradients accumulate. Ties were settled in the
    forward pass: the first maximum in row-major window order gets the whole gradient.
    """
    check_float("maxpool2d_backward", "dy", dy)
    g = pool2d_geometry("maxpool2d_backward", x_shape, pool_size, strides, padding)
    out_shape = (x_shape[0], g.OH, g.OW, x_shape[3])
    check_output_shape("maxpool2d_backward", "dy", dy.shape, out_shape)
    check_output_shape("maxpool2d_backward", "argmax", argmax.shape, out_shape)
    dy = np.ascontiguousarray(dy)
    argmax = np.ascontiguousarray(argmax, dtype=np.int32)
    images, loop_g = split(x_shape[0], PARTS), tuple(g)
    disjoint = g.SH >= g.KH and g.SW >= g.KW  # windows do not overlap
    dx = POOL.empty("maxpool2d.dx", x_shape, dy.dtype)

    def part(k):  # part k owns the images n0:n1 of dx (windows never cross images)
        n0, n1 = images[k]
        if disjoint:
            _maxpool_backward_disjoint(dy[n0:n1], argmax[n0:n1], loop_g, dx[n0:n1])
        else:
            fill_zero(dx[n0:n1].reshape(-1))
            _maxpool_backward(dy[n0:n1], argmax[n0:n1], loop_g, dx[n0:n1])

    LANES.run(part, PARTS, math.prod(x_shape))
    return dx


@njit(**JIT_OPTIONS)
def _maxpool_forward(x, g, y, argmax):
    PH, PW, SH, SW, _, _, PT, _, PL, _, _, _ = g
    N, H, W, C = x.shape
    _, OH, OW, _ = y.shape
    for r in range(N * OH):  # r = n*OH + i owns y[n, i] and argmax[n, i]
        n = r // OH
        i = r - n * OH
        for j in range(OW):
            p0 = SH * i - PT
            q0 = SW * j - PL
            # start from window cell (0, 0); a padded one is -inf
            inside = 0 <= p0 < H and 0 <= q0 < W
            for c in range(C):
                y[n, i, j, c] = x[n, p0, q0, c] if inside else -np.inf
                argmax[n, i, j, c] = 0
            for u in range(PH):
                p = p0 + u
                if p < 0 or p >= H:
                    continue
                for v in range(PW):
                    q = q0 + v
                    if (u == 0 and v == 0) or q < 0 or q >= W:
                        continue  # a padded cell (-inf) can never beat the running max
                    code = np.int32(u * PW + v)
                    for c in range(C):
                        val = x[n, p, q, c]
                        best = y[n, i, j, c]
                        # strict > keeps the first maximum; the first NaN wins as in np.argmax.
                        # | and & (not `or`, `and`) and a store either way: no branch, so LLVM
                        # vectorizes the loop with selects (with a branch it did not on AVX2)
                        wins = (val > best) | ((val != val) & (best == best))
                        y[n, i, j, c] = val if wins else best
                        argmax[n, i, j, c] = code if wins else argmax[n, i, j, c]


@njit(**JIT_OPTIONS)
def _maxpool_backward_disjoint(dy, argmax, g, dx):
    # windows that do not overlap: every input pixel lies in at most one window, so each
    # pixel of dx is written once, with its window's gradient if it won, else 0 (no zeros
    # pass first, no scatter)
    PH, PW, SH, SW, _, _, PT, _, PL, _, _, _ = g
    N, H, W, C = dx.shape
    _, OH, OW, _ = dy.shape
    zero = dx.dtype.type(0)
    for r in range(N * H):  # r = n*H + p owns dx[n, p]
        n = r // H
        p = r - n * H
        i = (p + PT) // SH  # the window row that covers p, and p's row u inside it
        u = p + PT - SH * i
        row_in_window = u < PH and i < OH
        j, v = PL // SW, PL % SW  # likewise for q = 0: window column j, column v inside it
        for q in range(W):
            if row_in_window and v < PW and j < OW:
                k = u * PW + v
                for c in range(C):
                    dx[n, p, q, c] = dy[n, i, j, c] if argmax[n, i, j, c] == k else zero
            else:
                for c in range(C):
                    dx[n, p, q, c] = zero
            v += 1  # the next q, by counting (a division per pixel was 1.3x slower)
            if v == SW:
                v = 0
                j += 1


@njit(**JIT_OPTIONS)
def _maxpool_backward(dy, argmax, g, dx):
    PH, PW, SH, SW, _, _, PT, _, PL, _, _, _ = g
    N, H, W, C = dx.shape
    _, OH, OW, _ = dy.shape
    for n in range(N):  # overlapping windows add into the same pixel: only n owns dx[n]
        for i in range(OH):
            for j in range(OW):
                for c in range(C):
                    k = argmax[n, i, j, c]
                    p = SH * i + k // PW - PT
                    q = SW * j + k % PW - PL
                    if 0 <= p < H and 0 <= q < W:  # a winner in the padding has no input
                        dx[n, p, q, c] += dy[n, i, j, c]


# ----------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------
# Average pooling: a window sum divided by its count of real (unpadded) cells
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
    ::

        y[n, i, j, c] = (1 / count[i, j]) * sum_{u, v} xp[n, SH*i + u, SW*j + v, c]

    where ``count[i, j] = rows_inside(i) * cols_inside(j)`` counts the window's cells inside x:
    padding is left out of the sum and the divisor (Keras 'same'; PyTorch's ``count_include_pad=False``).
    """
    check_float("avgpool2d_forward", "x", x)
    g = pool2d_geometry("avgpool2d_forward", x.shape, pool_size, strides, padding)
    x = np.ascontiguousarray(x)
    y = POOL.empty("avgpool2d.y", (x.shape[0], g.OH, g.OW, x.shape[3]), x.dtype)
    images, loop_g = split(x.shape[0], PARTS), tuple(g)

    def part(k):  # part k owns the images n0:n1 of y
        n0, n1 = images[k]
        _avgpool_forward(x[n0:n1], loop_g, y[n0:n1])

    LANES.run(part, PARTS, x.size)
    return y


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
    ::

        dx[n, p, q, c] = sum_{i, j} dy[n, i, j, c] / count[i, j]   over the windows (i, j) covering (p, q)
    """
    check_float("avgpool2d_backward", "dy", dy)
    g = pool2d_geometry("avgpool2d_backward", x_shape, pool_size, strides, padding)
    check_output_shape("avgpool2d_backward", "dy", dy.shape, (x_shape[0], g.OH, g.OW, x_shape[3]))
    dy = np.ascontiguousarray(dy)
    dx = POOL.empty("avgpool2d.dx", tuple(x_shape), dy.dtype)
    images, loop_g = split(x_shape[0], PARTS), tuple(g)

    def part(k):  # part k owns the images n0:n1 of dx (windows never cross images)
        n0, n1 = images[k]
        fill_zero(dx[n0:n1].reshape(-1))  # overlapping windows add into it
        _avgpool_backward(dy[n0:n1], loop_g, dx[n0:n1])

    LANES.run(part, PARTS, math.prod(x_shape))
    return dx


@njit(**JIT_OPTIONS)
def _avgpool_forward(x, g, y):
    PH, PW, SH, SW, _, _, PT, _, PL, _, _, _ = g
    N, H, W, C = x.shape
    _, OH, OW, _ = y.shape
    for r in range(N * OH):  # r = n*OH + i owns y[n, i]
        n = r // OH
        i = r - n * OH
        p0, p1 = max(SH * i - PT, 0), min(SH * i - PT + PH, H)  # the window's rows inside x
        for j in range(OW):
            q0, q1 = max(SW * j - PL, 0), min(SW * j - PL + PW, W)
            count = (p1 - p0) * (q1 - q0)
            for c in range(C):
                y[n, i, j, c] = 0
            for p in range(p0, p1):  # same (u, v) order as the reference sum
                for q in range(q0, q1):
                    for c in range(C):
                        y[n, i, j, c] += x[n, p, q, c]
            for c in range(C):
                y[n, i, j, c] /= count


@njit(**JIT_OPTIONS)
def _avgpool_backward(dy, g, dx):
    PH, PW, SH, SW, _, _, PT, _, PL, _, _, _ = g
    N, H, W, C = dx.shape
    _, OH, OW, _ = dy.shape
    for n in range(N):  # overlapping windows add into the same pixel: only n owns dx[n]
        for i in range(OH):
            p0, p1 = max(SH * i - PT, 0), min(SH * i - PT + PH, H)
            for j in range(OW):
                q0, q1 = max(SW * j - PL, 0), min(SW * j - PL + PW, W)
                count = (p1 - p0) * (q1 - q0)
                for p in range(p0, p1):
                    for q in range(q0, q1):
                        for c in range(C):
                            dx[n, p, q, c] += dy[n, i, j, c] / count


