"""Dense layers through BLAS on lanes, and Adam's update in one pass.

Same signatures and results as ``reference.py``. The Dense products are split along the long
input axis D, so that each lane reads its own slice of the weights once.
"""

import numpy as np
from numba import njit

from .. import reference
from ..shapes import check_activation, check_float
from ._buffers import POOL
from ._runtime import JIT_OPTIONS
from ._threads import LANES, PARTS, split


def dense_forward(x, w, b, activation=None):
    """``y = x @ w + b`` (then ``max(y, 0)`` for 'relu'); x (N, D), w (D, U) -> y (N, U).

    The same numbers as ``reference.dense_forward``. With a long D (the blog's 394,272 inputs)
    each lane multiplies its own range of D, reading its slice of ``w`` once, and the partial
    products are added in a fixed order; the matrix products never use BLAS's own threads.
    """
    check_float("dense_forward", "x", x)
    check_activation("dense_forward", activation)
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w, dtype=x.dtype)
    span = split(x.shape[1], PARTS)
    parts = LANES.run(lambda k: x[:, span[k][0] : span[k][1]] @ w[span[k][0] : span[k][1]], PARTS, w.size, blas=True)
    y = parts[0]
    for other in parts[1:]:
        y += other
    if b is not None:
        y += b.astype(x.dtype, copy=False)
    if activation == "relu":
        np.maximum(y, 0, out=y)
    return y


def dense_backward(dy, x, w, relu_output=None, input_gradient=True):
    """``(dx, dw, db)`` of :func:`dense_forward` (see ``reference.dense_backward``).

    ``dw = x.T @ dz`` and ``dx = dz @ w.T`` are computed a range of D at a time, one per lane,
    each writing its own rows of ``dw`` and columns of ``dx``: no sums across lanes.
    """
    check_float("dense_backward", "dy", dy)
    x = np.ascontiguousarray(x)
    dz = np.asarray(dy, dtype=x.dtype)
    if relu_output is not None:
        dz = dz * (relu_output > 0)
    dz = np.ascontiguousarray(dz)
    w = np.ascontiguousarray(w, dtype=x.dtype)
    (N, D), U = x.shape, w.shape[1]
    dw = POOL.empty("dense.dw", (D, U), x.dtype)
    dx = POOL.empty("dense.dx", (N, D), x.dtype) if input_gradient else None
    span = split(D, PARTS)

    def part(k):  # part k owns the rows d0:d1 of dw and the columns d0:d1 of dx
        d0, d1 = span[k]
        np.matmul(x[:, d0:d1].T, dz, out=dw[d0:d1])  # (d, N) @ (N, U)
        if input_gradient:
            np.matmul(dz, w[d0:d1].T, out=dx[:, d0:d1])  # (N, U) @ (U, d)

    LANES.run(part, PARTS, w.size, blas=True)
    return dx, dw, dz.sum(axis=0)



def adam_update(w, g, m, v, lr_t, beta_1, beta_2, epsilon):
    """One Adam step on one array, in place, in Keras's form (see ``reference.adam_update``).

    ::

        m = m + (1 - beta_1) * (g - m)
        v = v + (1 - beta_2) * (g**2 - v)
        w = w - lr_t * m / (sqrt(v) + epsilon)

    with ``lr_t = learning_rate * sqrt(1 - beta_2**t) / (1 - beta_1**t)``. NumPy makes a pass
    over memory (and a temporary array) per operation, about a dozen; this loop reads
    ``w, g, m, v`` once and writes ``w, m, v`` once, with the same float32 rounding (the
    scalars are rounded to the arrays' dtype as NumPy does), so the results are the same bits.
    Arrays of mixed dtypes or layouts go to the reference version.
    """
    arrays = (w, g, m, v)
    if w.dtype in (np.float32, np.float64) and all(
        a.dtype == w.dtype and a.shape == w.shape and a.flags.c_contiguous for a in arrays
    ) and all(a.flags.writeable for a in (w, m, v)):
        flat = [a.reshape(-1) for a in arrays]
        scalars = (float(lr_t), float(beta_1), float(beta_2), float(epsilon))
        pieces = split(w.size, PARTS)

        def part(k):  # part k owns its slice of w, m and v
            a, b = pieces[k]
            _adam(*(f[a:b] for f in flat), *scalars)

        LANES.run(part, PARTS, w.size)
    else:
        reference.adam_update(w, g, m, v, lr_t, beta_1, beta_2, epsilon)


@njit(**JIT_OPTIONS)
def _adam(w, g, m, v, lr_t, beta_1, beta_2, epsilon):
    dt = w.dtype.type  # NumPy rounds the Python-float scalars to the arrays' dtype: so do we
    step, c1, c2, eps = dt(lr_t), dt(1 - beta_1), dt(1 - beta_2), dt(epsilon)
    for i in range(w.size):
        gi = g[i]
        mi = m[i] + (gi - m[i]) * c1
        vi = v[i] + (gi * gi - v[i]) * c2
        m[i] = mi
        v[i] = vi
        w[i] -= dt(dt(step * mi) / dt(np.sqrt(vi) + eps))  # rounded where NumPy rounds
