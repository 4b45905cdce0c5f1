"""The im2col route of the convolution: any shape, through one BLAS matrix product.

1. a Numba loop copies every receptive field into one row of ``cols``,
   shape ``(N*OH*OW, KH*KW*C)``, channels innermost, so that the kernel reshaped to
   ``(KH*KW*C, F)`` lines up with it without a copy;
2. NumPy's BLAS computes ``y = cols @ w2d`` (backward: ``dw = cols.T @ dy2d``,
   ``dcols = dy2d @ w2d.T``), outside the jitted code; the bias and ReLU are added in one
   pass over each chunk of ``y`` while it is still in cache;
3. for the input gradient a Numba loop ("col2im") adds each row of ``dcols`` back onto the
   pixels it was copied from.

Which convolutions take this route is decided in ``conv.py`` (see the route table in
``minicnn/kernels/numba/__init__.py``). Every loop here takes the call's :class:`ConvGeometry` ``g``.
"""

import numpy as np
from numba import njit

from ._buffers import POOL, fill_zero
from ._runtime import JIT_OPTIONS
from ._threads import LANES, PARTS, split

# im2col buffers (and the direct backward pass's chunks of dz) larger than this are filled and
# used a few images at a time: a cache-sized buffer was as fast or faster than one for the whole
# batch (benchmarks/RESULTS.md)
COLS_BUDGET_BYTES = 8 * 2**20


def forward(x, w, b, g, relu):
    """:func:`conv2d_forward` as ``cols @ [w2d; b]``, one cache-sized chunk of images at a time.

    ``cols[(n, i, j), (u, v, c)] = xp[n, SH*i + DH*u, SW*j + DW*v, c]`` with a last column of
    ones, so that the product adds the bias; ReLU is applied to each chunk of ``y`` right after
    its product, while it is still in cache. ``x`` is contiguous; ``g`` its :class:`ConvGeometry`.
    """
    KH, KW, C, F = w.shape
    K = KH * KW * C
    # [w; b]: the last column of cols is all ones, so that the product adds the bias
    w2d = np.empty((K + 1, F), dtype=x.dtype)
    w2d[:K] = w.reshape(K, F)
    w2d[K] = 0 if b is None else b
    if is_pointwise(g):  # cols is x itself, without the ones column
        w2d = w2d[:K]
    N, rows = x.shape[0], g.OH * g.OW  # rows per image
    y = POOL.empty("conv2d.y", (N, g.OH, g.OW, F), x.dtype)
    y2d = y.reshape(N * rows, F)
    images = split(N, PARTS)

    def part(k):  # part k owns the images n0:n1 of y
        n0, n1 = images[k]
        for c0, c1, cols in _im2col_chunks(x, g, n0, n1):
            out = y2d[c0 * rows : c1 * rows]
            np.matmul(cols, w2d, out=out)  # (rows, K + 1) @ (K + 1, F): with the bias
            if is_pointwise(g) and b is not None:
                out += b.astype(x.dtype, copy=False)
            if relu:
                _relu(out.reshape(-1))  # while the chunk is still in cache

    LANES.run(part, PARTS, N * rows * K, blas=True)
    return y


def backward(dy, y, w, x, g, x_shape, need_dx, need_dw):
    """``(dx, dw, db)`` (None where not needed) for contiguous ``dy`` (and ``y``, ``x``) of x's dtype.

    Per part of the images, one cache-sized chunk at a time: ``dz = dy * (y > 0)`` (when ``y``
    is given); ``[dw; db] += cols.T @ dz``, where the last column of ``cols`` is all ones so
    that the same product also sums ``dz`` for db; ``dx[chunk] = col2im(dz @ w2d.T)``. The
    parts' ``[dw; db]`` are added in part order.
    """
    KH, KW = g.KH, g.KW
    N, H, W, C = x_shape
    F, dtype = dy.shape[-1], dy.dtype
    K, rows = KH * KW * C, g.OH * g.OW
    dy2d = dy.reshape(N * rows, F)
    y2d = None if y is None else y.reshape(N * rows, F)
    # w2d.T, contiguous: the product dz @ w2d.T was 10% faster with it than with a strided view
    wT = None if w is None else np.ascontiguousarray(np.asarray(w, dtype=dtype).reshape(K, F).T)
    pointwise = is_pointwise(g)
    dx = POOL.empty("conv2d.dx", x_shape, dtype) if need_dx else None
    images = split(N, PARTS)

    def part(k):  # part k owns the images n0:n1 of dx, and returns its share of [dw; db]
        n0, n1 = images[k]
        dwb = None  # (K + 1, F): dw, then db in the last row
        if need_dx and not pointwise and n1 > n0:
            fill_zero(dx[n0:n1].reshape(-1))  # col2im adds into it
        step = images_per_chunk(N, rows * (K + 1) * dtype.itemsize)
        if need_dw:
            chunks = _im2col_chunks(x, g, n0, n1)
        else:  # the chunks _im2col_chunks would make, without their matrices
            chunks = ((c0, min(n1, c0 + step), None) for c0 in range(n0, n1, step))
        dcols = masked = None
        for c0, c1, cols in chunks:
            dz = dy2d[c0 * rows : c1 * rows]  # (rows, F) of this chunk
            if y2d is not None:
                if masked is None:  # the first chunk is the largest
                    masked = POOL.empty("conv2d.dz", dz.shape, dtype)
                _relu_grad(dz.reshape(-1), y2d[c0 * rows : c1 * rows].reshape(-1), masked[: len(dz)].reshape(-1))
                dz = masked[: len(dz)]
            if need_dw:
                if pointwise:  # cols is x itself, without the ones column
                    part_dwb = np.concatenate([cols.T @ dz, dz.sum(axis=0, keepdims=True)])
                else:
                    part_dwb = cols.T @ dz  # (K + 1, rows) @ (rows, F)
                dwb = part_dwb if dwb is None else dwb + part_dwb
            if need_dx:
                if pointwise:  # a 1x1 kernel at stride 1: dcols already is dx
                    np.matmul(dz, wT, out=dx.reshape(N * rows, C)[c0 * rows : c1 * rows])
                    continue
                if dcols is None:
                    dcols = POOL.empty("conv2d.dcols", (len(dz), K), dtype)
                chunk = dcols[: len(dz)]
                np.matmul(dz, wT, out=chunk)  # (rows, F) @ (F, K)
                _col2im(chunk, C, tuple(g), dx[c0:c1].reshape(c1 - c0, H, W * C))
        return dwb

    dwb = None
    for part_dwb in LANES.run(part, PARTS, N * rows * K, blas=True):  # in part order: the same sums for any thread count
        if part_dwb is not None:
            dwb = part_dwb if dwb is None else dwb + part_dwb
    if not need_dw:
        return dx, None, None
    if dwb is None:  # no images at all
        dwb = np.zeros((K + 1, F), dtype=dtype)
    return dx, dwb[:K].reshape(KH, KW, C, F), dwb[K].copy()


def is_pointwise(g):
    """A 1x1 kernel at stride 1 without padding: then im2col's matrix is x itself."""
    return g.KH == g.KW == g.SH == g.SW == 1 and g.PT == g.PB == g.PL == g.PR == 0


def images_per_chunk(N, bytes_per_image):
    return max(1, min(N, COLS_BUDGET_BYTES // max(bytes_per_image, 1)))


def _im2col_chunks(x, g, start=0, stop=None):
    """Yield ``(n0, n1, cols)``: the im2col matrix of images ``n0:n1``, ``(rows, KH*KW*C + 1)``
    with a last column of ones, for cache-sized chunks of the images ``start:stop``.
    (For a 1x1 kernel at stride 1, ``cols`` is x itself, ``(rows, C)``.)

    One buffer is reused for all chunks, so each ``cols`` is valid until the next one.
    """
    N, H, W, C = x.shape
    stop = N if stop is None else stop
    KH, KW, rows = g.KH, g.KW, g.OH * g.OW
    if stop <= start:
        return
    if is_pointwise(g):
        yield start, stop, x[start:stop].reshape((stop - start) * rows, C)  # x as it is
        return
    step = images_per_chunk(N, rows * (KH * KW * C + 1) * x.itemsize)
    buffer = POOL.empty("conv2d.cols", (min(step, stop - start) * rows, KH * KW * C + 1), x.dtype)
    for n0 in range(start, stop, step):
        n1 = min(stop, n0 + step)
        cols = buffer[: (n1 - n0) * rows]
        _im2col(x[n0:n1].reshape(n1 - n0, H, W * C), C, tuple(g), cols)  # a plain tuple: shapes.ConvGeometry
        yield n0, n1, cols


@njit(**JIT_OPTIONS)
def _im2col(x, C, g, cols):
    # x: (N, H, W*C), each image row flattened, so that the KW*C values under one kernel
    # row are one contiguous run when DW == 1 (most convolutions): a loop LLVM vectorizes.
    # cols: (N*OH*OW, KH*KW*C + 1), the last column all ones (it carries the bias)
    KH, KW, SH, SW, DH, DW, PT, _, PL, _, OH, OW = g
    N, H, WC = x.shape
    W, run = WC // C, KW * C
    one = cols.dtype.type(1)
    for r in range(N * OH):  # r = n*OH + i owns the rows r*OW ... r*OW + OW - 1 of cols
        n = r // OH
        i = r - n * OH
        for j in range(OW):
            row = r * OW + j
            cols[row, KH * run] = one
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
    KH, KW, SH, SW, DH, DW, PT, _, PL, _, OH, OW = g
    N, H, WC = dx.shape
    W, run = WC // C, KW * C
    for n in range(N):  # image n owns dx[n]; within it the sum order is fixed: (i, j, u, v)
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


@njit(**JIT_OPTIONS)
def _relu(y):
    # y = max(y, 0) in place, over a chunk just written by BLAS
    zero = y.dtype.type(0)
    for i in range(y.size):
        if y[i] < zero:  # NaN stays NaN, as with np.maximum
            y[i] = zero


@njit(**JIT_OPTIONS)
def _relu_grad(dy, y, dz):
    # dz = dy * (y > 0): ReLU's derivative, 0 at y == 0 as in Keras and PyTorch
    zero = dy.dtype.type(0)
    for i in range(dy.size):
        dz[i] = dy[i] if y[i] > zero else zero


# ----------------------------------------------------------------------------------------
