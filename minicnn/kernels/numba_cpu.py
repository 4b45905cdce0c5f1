"""Convolution and max-pooling compiled with Numba: the fast default backend.

Same signatures and results as ``reference.py`` (the tests hold them to it), different
algorithm. A convolution is turned into one big matrix product ("im2col"):

1. a Numba loop copies every receptive field into one row of ``cols``,
   shape ``(N*OH*OW, KH*KW*C)``, channels innermost, so that the kernel reshaped to
   ``(KH*KW*C, F)`` lines up with it without a copy;
2. NumPy's BLAS computes ``y = cols @ w2d`` (backward: ``dw = cols.T @ dy2d``,
   ``dcols = dy2d @ w2d.T``), outside the jitted code, so SciPy is not needed;
3. for the input gradient a Numba loop ("col2im") adds each row of ``dcols`` back onto the
   pixels it was copied from.

Each Python wrapper validates, makes inputs contiguous, allocates the outputs, then calls a
private ``@njit`` kernel. Every ``prange`` runs over an axis whose iterations own their part
of the output (rows of ``cols``; images ``n`` of ``dx``), so there are no races and the
results are the same bits for any number of threads. This is the only module of minicnn
that imports numba.
"""

import os
import tempfile


def _can_write(path):
    """True if a file can be created in ``path`` (made if missing), the test Numba uses."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


_IN_TREE_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")


def _fallback_cache_dir():
    """A writable folder for compiled kernels when Numba's default one is not writable.

    Numba caches next to the source file (``__pycache__``) unless ``NUMBA_CACHE_DIR`` is set;
    in a read-only install it would fail with "no locator available". The user's choice
    (``NUMBA_CACHE_DIR``) always wins.
    """
    if os.environ.get("NUMBA_CACHE_DIR") or _can_write(_IN_TREE_CACHE):
        return None
    candidates = (
        os.path.join(os.path.expanduser("~"), ".cache", "minicnn", "numba"),
        os.path.join(tempfile.gettempdir(), "minicnn-numba"),
    )
    return next((path for path in candidates if _can_write(path)), None)


_FALLBACK_CACHE = _fallback_cache_dir()
if _FALLBACK_CACHE:
    os.environ["NUMBA_CACHE_DIR"] = _FALLBACK_CACHE  # numba reads it when first imported

# After a parallel region, OpenMP threads spin-wait for the next one and steal the cores
# from the BLAS call that follows: measured here, im2col (0.2 ms) then matmul (0.1 ms) took
# 8 ms on 2 cores; with passive threads, which sleep instead, 0.4 ms. The runtime reads it
# when it starts (our first parallel call), so it is too late if a library that shares the
# runtime started it first (``import torch`` does): then export it before starting Python.
# A value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from .reference import (  # noqa: E402
    check_conv2d_args,
    check_dy,
    check_float,
    check_pool2d_args,
    conv2d_output_hw,
    pool2d_output_hw,
)

if _FALLBACK_CACHE:
    numba.config.CACHE_DIR = _FALLBACK_CACHE  # in case numba was imported before us
_CACHE_OK = bool(numba.config.CACHE_DIR) or _can_write(_IN_TREE_CACHE)

# All jitted kernels share these options. fastmath stays off: it would reorder sums and
# assume there is no NaN or inf (the max-pool kernel tests for NaN; padding is -inf).
JIT_OPTIONS = dict(cache=_CACHE_OK, fastmath=False, parallel=True)

# im2col buffers larger than this are filled and multiplied a few images at a time:
# a cache-sized buffer was as fast or faster than one for the whole batch (224x224x3 images)
COLS_BUDGET_BYTES = 8 * 2**20


def cache_dir():
    """Where compiled kernels are cached: a folder path, or None when caching is off."""
    if not _CACHE_OK:
        return None
    return numba.config.CACHE_DIR or _IN_TREE_CACHE


def set_num_threads(n):
    """Use ``n`` threads in the parallel kernels (at most ``NUMBA_NUM_THREADS``)."""
    numba.set_num_threads(n)


def get_num_threads():
    """The number of threads the parallel kernels use."""
    return numba.get_num_threads()


# ----------------------------------------------------------------------------------------
# Convolution: im2col + BLAS
# ----------------------------------------------------------------------------------------


def conv2d_forward(x, w, b, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1)):
    """Cross-correlate a batch of NHWC images with a bank of filters (im2col + matmul).

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), float32 or float64
    w : ndarray of shape (KH, KW, C, F)
    b : ndarray of shape (F,), or None for no bias
    strides : (SH, SW)
    padding : ((pad_top, pad_bottom), (pad_left, pad_right)), zeros added around x
    dilation : (DH, DW)

    Returns
    -------
    y : ndarray of shape (N, OH, OW, F), dtype of x, where
        ``OH = (H + pad_top + pad_bottom - ((KH - 1) * DH + 1)) // SH + 1`` (OW likewise)

    Notes
    -----
    With xp the zero-padded input::

        y[n, i, j, f] = b[f] + sum_{u, v, c} w[u, v, c, f] * xp[n, SH*i + DH*u, SW*j + DW*v, c]

    computed as ``cols @ w2d`` with ``cols[(n, i, j), (u, v, c)] = xp[n, SH*i + DH*u, SW*j + DW*v, c]``.
    """
    check_float("conv2d_forward", "x", x)
    check_conv2d_args("conv2d_forward", x.shape, w.shape, strides, padding, dilation)
    x = np.ascontiguousarray(x)
    KH, KW, C, F = w.shape
    w2d = np.ascontiguousarray(w, dtype=x.dtype).reshape(KH * KW * C, F)
    g = _geometry((KH, KW), strides, padding, dilation, x.shape)
    N, rows = x.shape[0], g[-2] * g[-1]  # rows = OH*OW per image
    y = np.empty((N, g[-2], g[-1], F), dtype=x.dtype)
    y2d = y.reshape(N * rows, F)
    for n0, n1, cols in _im2col_chunks(x, g):
        np.matmul(cols, w2d, out=y2d[n0 * rows : n1 * rows])  # (rows, K) @ (K, F)
    if b is not None:
        y += b.astype(x.dtype, copy=False)
    return y


def conv2d_backward_input(dy, w, x_shape, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1)):
    """Gradient of a loss with respect to the input of :func:`conv2d_forward` (matmul + col2im).

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
    ::

        dx[n, p, q, c] = sum_{i, j, u, v, f} dy[n, i, j, f] * w[u, v, c, f]
                         over SH*i + DH*u = p + pad_top  and  SW*j + DW*v = q + pad_left

    computed as ``dcols = dy2d @ w2d.T``, then each row of ``dcols`` is added back onto the
    pixels im2col copied it from (contributions that fall on the padding are dropped).
    """
    check_float("conv2d_backward_input", "dy", dy)
    check_conv2d_args("conv2d_backward_input", x_shape, w.shape, strides, padding, dilation)
    check_dy("conv2d_backward_input", dy.shape, x_shape, w.shape, strides, padding, dilation)
    dy = np.ascontiguousarray(dy)
    KH, KW, C, F = w.shape
    w2d = np.ascontiguousarray(w, dtype=dy.dtype).reshape(KH * KW * C, F)
    g = _geometry((KH, KW), strides, padding, dilation, x_shape)
    N, rows = x_shape[0], g[-2] * g[-1]
    dy2d = dy.reshape(N * rows, F)
    if _is_pointwise(g):  # a 1x1 kernel at stride 1: dcols already is dx
        return (dy2d @ w2d.T).reshape(x_shape)
    dx = np.zeros(tuple(x_shape), dtype=dy.dtype)
    step = _images_per_chunk(N, rows * KH * KW * C * dy.itemsize)
    dcols = np.empty((min(step, N) * rows, KH * KW * C), dtype=dy.dtype)
    for n0 in range(0, N, step):
        n1 = min(N, n0 + step)
        chunk = dcols[: (n1 - n0) * rows]
        np.matmul(dy2d[n0 * rows : n1 * rows], w2d.T, out=chunk)  # (rows, F) @ (F, K)
        _col2im(chunk, C, g, dx[n0:n1].reshape(n1 - n0, x_shape[1], x_shape[2] * C))
    return dx


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
    ::

        dw[u, v, c, f] = sum_{n, i, j} dy[n, i, j, f] * xp[n, SH*i + DH*u, SW*j + DW*v, c]
        db[f]          = sum_{n, i, j} dy[n, i, j, f]

    computed as ``cols.T @ dy2d`` (one BLAS call per chunk of images, summed in a fixed order).
    """
    check_float("conv2d_backward_weights", "x", x)
    (KH, KW), C, F = kernel_size, x.shape[-1], dy.shape[-1]
    check_conv2d_args("conv2d_backward_weights", x.shape, (KH, KW, C, F), strides, padding, dilation)
    check_dy("conv2d_backward_weights", dy.shape, x.shape, (KH, KW, C, F), strides, padding, dilation)
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    g = _geometry((KH, KW), strides, padding, dilation, x.shape)
    rows = g[-2] * g[-1]
    dy2d = dy.reshape(-1, F)
    dw2d = np.empty((KH * KW * C, F), dtype=x.dtype)
    for n0, n1, cols in _im2col_chunks(x, g):
        part = dy2d[n0 * rows : n1 * rows]
        if n0 == 0:
            np.matmul(cols.T, part, out=dw2d)  # (K, rows) @ (rows, F)
        else:
            dw2d += cols.T @ part
    return dw2d.reshape(KH, KW, C, F), dy2d.sum(axis=0)


def _geometry(kernel_hw, strides, padding, dilation, x_shape):
    """The ints the jitted kernels need, as one tuple ``(KH, KW, SH, SW, DH, DW, PT, PL, OH, OW)``.

    Plain Python ints: a numpy int32 anywhere would change the tuple's type and trigger a
    second compilation of every kernel.
    """
    OH, OW = conv2d_output_hw(x_shape, kernel_hw, strides, padding, dilation)
    values = (*kernel_hw, *strides, *dilation, padding[0][0], padding[1][0], OH, OW)
    return tuple(int(v) for v in values)


def _is_pointwise(g):
    KH, KW, SH, SW, _, _, PT, PL, _, _ = g
    return KH == KW == SH == SW == 1 and PT == PL == 0  # then OH, OW = H, W: no padding at all


def _images_per_chunk(N, bytes_per_image):
    return max(1, min(N, COLS_BUDGET_BYTES // max(bytes_per_image, 1)))


def _im2col_chunks(x, g):
    """Yield ``(n0, n1, cols)``: the im2col matrix of images ``n0:n1``, ``(rows, KH*KW*C)``.

    One buffer is reused for all chunks, so each ``cols`` is valid until the next one.
    """
    N, H, W, C = x.shape
    KH, KW, rows = g[0], g[1], g[-2] * g[-1]
    if _is_pointwise(g):
        yield 0, N, x.reshape(N * rows, C)  # a 1x1 kernel at stride 1 reads x as it is
        return
    step = _images_per_chunk(N, rows * KH * KW * C * x.itemsize)
    buffer = np.empty((min(step, N) * rows, KH * KW * C), dtype=x.dtype)
    for n0 in range(0, N, step):
        n1 = min(N, n0 + step)
        cols = buffer[: (n1 - n0) * rows]
        _im2col(x[n0:n1].reshape(n1 - n0, H, W * C), C, g, cols)
        yield n0, n1, cols


@njit(**JIT_OPTIONS)
def _im2col(x, C, g, cols):
    # x: (N, H, W*C), each image row flattened, so that the KW*C values under one kernel
    # row are one contiguous run when DW == 1 (most convolutions): a loop LLVM vectorizes
    KH, KW, SH, SW, DH, DW, PT, PL, OH, OW = g
    N, H, WC = x.shape
    W, run = WC // C, KW * C
    for r in prange(N * OH):  # r = n*OH + i owns the rows r*OW ... r*OW + OW - 1 of cols
        n = r // OH
        i = r - n * OH
        for j in range(OW):
            row = r * OW + j
            q0 = SW * j - PL
            whole = DW == 1 and q0 >= 0 and q0 + KW <= W  # no tap of a kernel row in the padding
            for u in range(KH):
                p = SH * i + DH * u - PT
                k0 = u * run
                if p < 0 or p >= H:  # a padded row
                    for t in range(run):
                        cols[row, k0 + t] = 0
                elif whole:
                    a = q0 * C
                    for t in range(run):
                        cols[row, k0 + t] = x[n, p, a + t]
                else:
                    for v in range(KW):
                        q = q0 + DW * v
                        k = k0 + v * C
                        inside = 0 <= q < W
                        for c in range(C):
                            cols[row, k + c] = x[n, p, q * C + c] if inside else 0


@njit(**JIT_OPTIONS)
def _col2im(dcols, C, g, dx):
    # dx: (N, H, W*C) as in _im2col; adds each row of dcols back where _im2col read it
    KH, KW, SH, SW, DH, DW, PT, PL, OH, OW = g
    N, H, WC = dx.shape
    W, run = WC // C, KW * C
    for n in prange(N):  # image n owns dx[n]; within it the sum order is fixed: (i, j, u, v)
        for i in range(OH):
            for j in range(OW):
                row = (n * OH + i) * OW + j
                q0 = SW * j - PL
                whole = DW == 1 and q0 >= 0 and q0 + KW <= W
                for u in range(KH):
                    p = SH * i + DH * u - PT
                    if p < 0 or p >= H:
                        continue  # gradient that falls on the padding is dropped
                    k0 = u * run
                    if whole:
                        a = q0 * C
                        for t in range(run):
                            dx[n, p, a + t] += dcols[row, k0 + t]
                    else:
                        for v in range(KW):
                            q = q0 + DW * v
                            if 0 <= q < W:
                                for c in range(C):
                                    dx[n, p, q * C + c] += dcols[row, k0 + v * C + c]


# ----------------------------------------------------------------------------------------
# Max pooling: one fused loop for y and argmax, a scatter for dx
# ----------------------------------------------------------------------------------------


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
    check_pool2d_args("maxpool2d_forward", x.shape, pool_size, strides, padding)
    x = np.ascontiguousarray(x)
    OH, OW = pool2d_output_hw(x.shape, pool_size, strides, padding)
    N, _, _, C = x.shape
    y = np.empty((N, OH, OW, C), dtype=x.dtype)
    argmax = np.empty((N, OH, OW, C), dtype=np.int32)
    _maxpool_forward(x, _pool_geometry(pool_size, strides, padding), y, argmax)
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
    check_pool2d_args("maxpool2d_backward", x_shape, pool_size, strides, padding)
    expected = (x_shape[0], *pool2d_output_hw(x_shape, pool_size, strides, padding), x_shape[3])
    for name, shape in (("dy", dy.shape), ("argmax", argmax.shape)):
        if tuple(shape) != expected:
            raise ValueError(
                f"maxpool2d_backward: Expected `{name}` of shape {expected}. Received: {name}.shape={tuple(shape)}"
            )
    dy = np.ascontiguousarray(dy)
    argmax = np.ascontiguousarray(argmax, dtype=np.int32)
    dx = np.zeros(tuple(x_shape), dtype=dy.dtype)
    _maxpool_backward(dy, argmax, _pool_geometry(pool_size, strides, padding), dx)
    return dx


def _pool_geometry(pool_size, strides, padding):
    """``(PH, PW, SH, SW, PT, PL)`` as plain Python ints (one compiled type)."""
    return tuple(int(v) for v in (*pool_size, *strides, padding[0][0], padding[1][0]))


@njit(**JIT_OPTIONS)
def _maxpool_forward(x, g, y, argmax):
    PH, PW, SH, SW, PT, PL = g
    N, H, W, C = x.shape
    _, OH, OW, _ = y.shape
    for r in prange(N * OH):  # r = n*OH + i owns y[n, i] and argmax[n, i]
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
                    for c in range(C):
                        val = x[n, p, q, c]
                        best = y[n, i, j, c]
                        # strict > keeps the first maximum; the first NaN wins as in np.argmax
                        if val > best or (val != val and best == best):
                            y[n, i, j, c] = val
                            argmax[n, i, j, c] = u * PW + v


@njit(**JIT_OPTIONS)
def _maxpool_backward(dy, argmax, g, dx):
    PH, PW, SH, SW, PT, PL = g
    N, H, W, C = dx.shape
    _, OH, OW, _ = dy.shape
    for n in prange(N):  # overlapping windows add into the same pixel: only n owns dx[n]
        for i in range(OH):
            for j in range(OW):
                for c in range(C):
                    k = argmax[n, i, j, c]
                    p = SH * i + k // PW - PT
                    q = SW * j + k % PW - PL
                    if 0 <= p < H and 0 <= q < W:  # a winner in the padding has no input
                        dx[n, p, q, c] += dy[n, i, j, c]


# ----------------------------------------------------------------------------------------


def warmup(dtypes=("float32", "float64")):
    """Compile (or load from the cache) every kernel for ``dtypes`` on tiny inputs."""
    for dtype in dtypes:
        x = np.ones((1, 3, 3, 1), dtype=dtype)
        w = np.ones((2, 2, 1, 1), dtype=dtype)
        y = conv2d_forward(x, w, None, padding=((0, 1), (0, 1)))
        conv2d_backward_input(y, w, x.shape, padding=((0, 1), (0, 1)))
        conv2d_backward_weights(x, y, (2, 2), padding=((0, 1), (0, 1)))
        y, argmax = maxpool2d_forward(x, (2, 2), (1, 1))
        maxpool2d_backward(y, argmax, x.shape, (2, 2), (1, 1))


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
    check_pool2d_args("avgpool2d_forward", x.shape, pool_size, strides, padding)
    x = np.ascontiguousarray(x)
    OH, OW = pool2d_output_hw(x.shape, pool_size, strides, padding)
    y = np.empty((x.shape[0], OH, OW, x.shape[3]), dtype=x.dtype)
    _avgpool_forward(x, _pool_geometry(pool_size, strides, padding), y)
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
    check_pool2d_args("avgpool2d_backward", x_shape, pool_size, strides, padding)
    expected = (x_shape[0], *pool2d_output_hw(x_shape, pool_size, strides, padding), x_shape[3])
    if tuple(dy.shape) != expected:
        raise ValueError(f"avgpool2d_backward: Expected `dy` of shape {expected}. Received: dy.shape={tuple(dy.shape)}")
    dy = np.ascontiguousarray(dy)
    dx = np.zeros(tuple(x_shape), dtype=dy.dtype)
    _avgpool_backward(dy, _pool_geometry(pool_size, strides, padding), dx)
    return dx


@njit(**JIT_OPTIONS)
def _avgpool_forward(x, g, y):
    PH, PW, SH, SW, PT, PL = g
    N, H, W, C = x.shape
    _, OH, OW, _ = y.shape
    for r in prange(N * OH):  # r = n*OH + i owns y[n, i]
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
    PH, PW, SH, SW, PT, PL = g
    N, H, W, C = dx.shape
    _, OH, OW, _ = dy.shape
    for n in prange(N):  # overlapping windows add into the same pixel: only n owns dx[n]
        for i in range(OH):
            p0, p1 = max(SH * i - PT, 0), min(SH * i - PT + PH, H)
            for j in range(OW):
                q0, q1 = max(SW * j - PL, 0), min(SW * j - PL + PW, W)
                count = (p1 - p0) * (q1 - q0)
                for p in range(p0, p1):
                    for q in range(q0, q1):
                        for c in range(C):
                            dx[n, p, q, c] += dy[n, i, j, c] / count


# ----------------------------------------------------------------------------------------
# Batch normalisation: per-channel sums over row blocks
# ----------------------------------------------------------------------------------------

from .reference import check_batchnorm_args  # noqa: E402

# Batch norm sums each channel over all M = N*H*W rows. Channels are the fastest axis in NHWC,
# so a loop in which one thread owns one channel would stride through memory C values at a
# time (measured 10x slower than this, and slower than NumPy). Instead the rows are cut into
# blocks of BN_BLOCK_ROWS: block b owns row b of a (blocks, C) array of partial sums, read and
# written contiguously; the partial sums are then added in block order. The block size is fixed,
# so the results are the same bits for any number of threads. Sums are accumulated in float64.
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
    mean, var = _bn_moments(x2, BN_BLOCK_ROWS)
    inv_std = 1.0 / np.sqrt(var + epsilon)
    y = np.empty_like(x2)
    _bn_normalize(x2, mean, inv_std, np.asarray(gamma, np.float64), np.asarray(beta, np.float64), BN_BLOCK_ROWS, y)
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
    dx = np.empty_like(dy2)
    dgamma, dbeta = _bn_backward(dy2, x2, mean, inv_std, np.asarray(gamma, np.float64), BN_BLOCK_ROWS, dx)
    return dx.reshape(x.shape), dgamma.astype(dy.dtype), dbeta.astype(dy.dtype)


@njit(cache=_CACHE_OK)
def _sum_blocks(part):
    # (blocks, C) -> (C,), added in block order: the same bits for any thread count
    total = np.zeros(part.shape[1])
    for b in range(part.shape[0]):
        for c in range(part.shape[1]):
            total[c] += part[b, c]
    return total


@njit(**JIT_OPTIONS)
def _bn_moments(x, rows):
    M, C = x.shape
    blocks = (M + rows - 1) // rows
    part = np.zeros((blocks, C))
    for b in prange(blocks):  # block b owns part[b]
        for m in range(b * rows, min(M, b * rows + rows)):
            for c in range(C):
                part[b, c] += x[m, c]
    mean = _sum_blocks(part) / M
    part2 = np.zeros((blocks, C))
    for b in prange(blocks):  # second pass: squared deviations from the mean
        for m in range(b * rows, min(M, b * rows + rows)):
            for c in range(C):
                d = x[m, c] - mean[c]
                part2[b, c] += d * d
    return mean, _sum_blocks(part2) / M


@njit(**JIT_OPTIONS)
def _bn_normalize(x, mean, inv_std, gamma, beta, rows, y):
    M, C = x.shape
    for b in prange((M + rows - 1) // rows):  # block b owns its rows of y
        for m in range(b * rows, min(M, b * rows + rows)):
            for c in range(C):
                y[m, c] = gamma[c] * ((x[m, c] - mean[c]) * inv_std[c]) + beta[c]


@njit(**JIT_OPTIONS)
def _bn_backward(dy, x, mean, inv_std, gamma, rows, dx):
    M, C = x.shape
    blocks = (M + rows - 1) // rows
    part_dbeta = np.zeros((blocks, C))
    part_dgamma = np.zeros((blocks, C))
    for b in prange(blocks):  # block b owns row b of both partial sums
        for m in range(b * rows, min(M, b * rows + rows)):
            for c in range(C):
                part_dbeta[b, c] += dy[m, c]
                part_dgamma[b, c] += dy[m, c] * ((x[m, c] - mean[c]) * inv_std[c])
    dbeta, dgamma = _sum_blocks(part_dbeta), _sum_blocks(part_dgamma)
    for b in prange(blocks):  # block b owns its rows of dx
        for m in range(b * rows, min(M, b * rows + rows)):
            for c in range(C):
                xhat = (x[m, c] - mean[c]) * inv_std[c]
                dx[m, c] = gamma[c] * inv_std[c] * (dy[m, c] - dbeta[c] / M - xhat * (dgamma[c] / M))
    return dgamma, dbeta
