"""Batch normalisation: per-channel sums over blocks of rows, the blocks split over the lanes.

Same signatures and results as ``reference.py``.
"""

import numpy as np
from numba import njit

from ..shapes import check_batchnorm_args, check_float
from ._runtime import JIT_OPTIONS
from ._threads import LANES, PARTS, split

# Batch norm sums each channel over all M = N*H*W rows. Channels are the fastest axis in NHWC,
# so a loop in which one thread owns one channel would stride through memory C values at a
# time (slower than NumPy, measured). Instead the rows are cut into
# blocks of BN_BLOCK_ROWS: block b owns row b of a (blocks, C) array of partial sums, read and
# written contiguously; the partial sums are then added in block order. The block size and the
# split of the blocks into PARTS parts are fixed, so the results are the same bits for any
# number of threads. Sums are accumulated in float64.
BN_BLOCK_ROWS = 256


def batchnorm_forward_train(x, gamma, beta, epsilon):
    """Normalise each channel with the mean and variance of this batch, then scale and shift.

    Parameters
    ----------
    x : ndarray of shape (..., C), float32 or float64; statistics over all axes but the last
    gamma, beta : ndarrays of shape (C,)
    epsilon : float >= 0

    Returns
    -------
    y : ndarray of the shape of x, dtype of x
    mean, var : ndarrays of shape (C,), dtype of x: batch mean and biased batch variance

    Notes
    -----
    With x seen as M rows of C channels::

        mean[c]    = (1/M) sum_m x[m, c]
        var[c]     = (1/M) sum_m (x[m, c] - mean[c])**2          (two passes, float64 sums)
        y[m, c]    = gamma[c] * (x[m, c] - mean[c]) / sqrt(var[c] + epsilon) + beta[c]
    """
    check_float("batchnorm_forward_train", "x", x)
    check_batchnorm_args("batchnorm_forward_train", x.shape, gamma, beta, epsilon)
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)
    M = x2.shape[0]
    n, blocks = _blocks(M)
    part = np.zeros((n, C))
    no_mean = np.zeros(C)
    LANES.run(lambda k: _bn_sums(x2, no_mean, False, BN_BLOCK_ROWS, *blocks[k], part), PARTS, x2.size)
    mean = _sum_blocks(part) / M
    part[:] = 0  # second pass: squared deviations from the mean
    LANES.run(lambda k: _bn_sums(x2, mean, True, BN_BLOCK_ROWS, *blocks[k], part), PARTS, x2.size)
    var = _sum_blocks(part) / M
    inv_std = 1.0 / np.sqrt(var + epsilon)
    y = np.empty_like(x2)
    gamma, beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
    LANES.run(lambda k: _bn_normalize(x2, mean, inv_std, gamma, beta, BN_BLOCK_ROWS, *blocks[k], y), PARTS, x2.size)
    return y.reshape(x.shape), mean.astype(x.dtype), var.astype(x.dtype)


def batchnorm_backward(dy, x, gamma, mean, var, epsilon):
    """Gradients of a loss with respect to x, gamma and beta of :func:`batchnorm_forward_train`.

    Parameters
    ----------
    dy : ndarray of the shape of x
    x : ndarray of shape (..., C), the forward input
    gamma, mean, var : ndarrays of shape (C,) (mean and var as returned by the forward pass)
    epsilon : float

    Returns
    -------
    dx : ndarray of the shape of x, dtype of dy
    dgamma, dbeta : ndarrays of shape (C,), dtype of dy

    Notes
    -----
    ::

        dbeta[c]  = sum_m dy[m, c]
        dgamma[c] = sum_m dy[m, c] * xhat[m, c]
        dx[m, c]  = gamma[c] / sqrt(var[c] + epsilon) * (dy[m, c] - dbeta[c] / M - xhat[m, c] * dgamma[c] / M)

    Two passes: the sums (one block of rows per iteration), then dx (rows owned by their block).
    """
    check_float("batchnorm_backward", "dy", dy)
    check_batchnorm_args("batchnorm_backward", x.shape, gamma, gamma, epsilon)
    if dy.shape != x.shape:
        raise ValueError(f"batchnorm_backward: Expected `dy` of shape {x.shape}. Received: dy.shape={dy.shape}")
    C = x.shape[-1]
    dy2 = np.ascontiguousarray(dy).reshape(-1, C)
    x2 = np.ascontiguousarray(x, dtype=dy.dtype).reshape(-1, C)
    mean = np.asarray(mean, np.float64)
    inv_std = 1.0 / np.sqrt(np.asarray(var, np.float64) + epsilon)
    gamma = np.asarray(gamma, np.float64)
    n, blocks = _blocks(x2.shape[0])
    part_dbeta, part_dgamma = np.zeros((n, C)), np.zeros((n, C))
    LANES.run(lambda k: _bn_grad_sums(dy2, x2, mean, inv_std, BN_BLOCK_ROWS, *blocks[k], part_dbeta, part_dgamma),
              PARTS, x2.size)
    dbeta, dgamma = _sum_blocks(part_dbeta), _sum_blocks(part_dgamma)
    dx = np.empty_like(dy2)
    LANES.run(lambda k: _bn_dx(dy2, x2, mean, inv_std, gamma, dbeta, dgamma, BN_BLOCK_ROWS, *blocks[k], dx),
              PARTS, x2.size)
    return dx.reshape(x.shape), dgamma.astype(dy.dtype), dbeta.astype(dy.dtype)


def _blocks(M):
    """The number of blocks of ``BN_BLOCK_ROWS`` rows in ``M`` rows, and each part's ``(b0, b1)`` range of them."""
    n = (M + BN_BLOCK_ROWS - 1) // BN_BLOCK_ROWS
    return n, split(n, PARTS)


@njit(**JIT_OPTIONS)
def _sum_blocks(part):
    # (blocks, C) -> (C,), added in block order: the same bits for any thread count
    total = np.zeros(part.shape[1])
    for b in range(part.shape[0]):
        for c in range(part.shape[1]):
            total[c] += part[b, c]
    return total


@njit(**JIT_OPTIONS)
def _bn_sums(x, mean, squared, rows, b0, b1, part):
    # part[b, c] = sum of x[m, c] (or of (x[m, c] - mean[c])**2) over the rows of block b
    M, C = x.shape
    for b in range(b0, b1):  # block b owns part[b]
        for m in range(b * rows, min(M, b * rows + rows)):
            for c in range(C):
                if squared:
                    d = x[m, c] - mean[c]
                    part[b, c] += d * d
                else:
                    part[b, c] += x[m, c]


@njit(**JIT_OPTIONS)
def _bn_normalize(x, mean, inv_std, gamma, beta, rows, b0, b1, y):
    M, C = x.shape
    for b in range(b0, b1):  # block b owns its rows of y
        for m in range(b * rows, min(M, b * rows + rows)):
            for c in range(C):
                y[m, c] = gamma[c] * ((x[m, c] - mean[c]) * inv_std[c]) + beta[c]


@njit(**JIT_OPTIONS)
def _bn_grad_sums(dy, x, mean, inv_std, rows, b0, b1, part_dbeta, part_dgamma):
    M, C = x.shape
    for b in range(b0, b1):  # block b owns row b of both partial sums
        for m in range(b * rows, min(M, b * rows + rows)):
            for c in range(C):
                part_dbeta[b, c] += dy[m, c]
                part_dgamma[b, c] += dy[m, c] * ((x[m, c] - mean[c]) * inv_std[c])


@njit(**JIT_OPTIONS)
def _bn_dx(dy, x, mean, inv_std, gamma, dbeta, dgamma, rows, b0, b1, dx):
    M, C = x.shape
    for b in range(b0, b1):  # block b owns its rows of dx
        for m in range(b * rows, min(M, b * rows + rows)):
            for c in range(C):
                xhat = (x[m, c] - mean[c]) * inv_std[c]
                dx[m, c] = gamma[c] * inv_std[c] * (dy[m, c] - dbeta[c] / M - xhat * (dgamma[c] / M))
