"""The kernel tests' case tables and runners: one problem in, every output of a backend out, by name.

``BACKENDS`` maps a name to a kernel module with the same public signatures (``reference.py``, the
textbook, and ``numba``, the fast path); ``*_all(m, ...)`` runs forward and every backward output of
one kernel family on backend ``m``, so that the tests compare the two dict by dict.
"""

import numpy as np
from helpers import assert_sums_close, conv_sums

from minicnn.kernels import conv_padding, reference
from minicnn.kernels import numba as fast

BACKENDS = {"reference": reference, "numba": fast}

# (N, H, W, C, KH, KW, F, strides, padding, dilation); padding 'valid' or 'same' as in Keras
CONV_CASES = [
    (2, 5, 5, 3, 3, 3, 4, (1, 1), "valid", (1, 1)),
    (2, 7, 6, 2, 3, 3, 3, (2, 2), "same", (1, 1)),  # odd image, stride 2
    (1, 8, 5, 1, 2, 3, 1, (1, 2), "same", (1, 1)),  # even kernel: asymmetric 'same' padding
    (3, 9, 7, 2, 3, 2, 2, (3, 3), "valid", (1, 1)),  # stride 3, leftover rows never read
    (2, 9, 8, 2, 3, 3, 2, (1, 1), "same", (2, 2)),  # dilation 2
    (2, 10, 7, 2, 2, 2, 3, (3, 2), "same", (2, 1)),
    (1, 6, 6, 3, 1, 1, 5, (1, 1), "valid", (1, 1)),  # 1x1 kernel
    (2, 7, 7, 1, 1, 2, 2, (3, 3), "valid", (1, 1)),  # stride larger than the kernel
    (1, 4, 3, 2, 4, 3, 2, (1, 1), "valid", (1, 1)),  # kernel as large as the image
]

# (N, H, W, C, KH, KW, F, strides, padding) of the fused ReLU + one-call backward: one channel,
# several, strides, 'same', 1x1, and sizes big enough for the work to be split over lanes
FUSED_CASES = [
    (2, 6, 5, 1, 3, 3, 4, (1, 1), "valid"),
    (2, 7, 6, 1, 3, 3, 3, (2, 1), "same"),
    (2, 6, 6, 3, 3, 3, 4, (1, 1), "same"),
    (3, 7, 5, 2, 2, 3, 3, (2, 2), "valid"),
    (2, 5, 5, 3, 1, 1, 4, (1, 1), "valid"),
    (6, 20, 19, 1, 3, 3, 8, (1, 1), "valid"),
    (6, 20, 19, 3, 3, 3, 8, (1, 1), "same"),
    # multiples of 32 filters go to the register tiles (tiles); the input gradient too
    # with 32 channels (stride 1), or by a scatter for kernels of at most 32 taps (here 27, 18
    # and 6 above), otherwise through col2im (36 taps of 4 channels)
    (2, 7, 6, 3, 3, 3, 32, (1, 1), "valid"),
    (2, 6, 6, 4, 3, 3, 32, (1, 1), "same"),
    (2, 6, 7, 32, 3, 3, 32, (1, 1), "same"),
    (3, 9, 8, 32, 3, 3, 64, (2, 2), "same"),
    (2, 5, 5, 32, 1, 1, 32, (1, 1), "valid"),
    (2, 8, 7, 64, 2, 3, 32, (1, 2), "same"),
]

# (N, H, W, C, pool_size, strides, padding)
MAXPOOL_CASES = [
    (2, 6, 6, 3, (2, 2), (2, 2), "valid"),
    (1, 7, 7, 2, (3, 3), (2, 2), "valid"),  # overlapping windows
    (2, 7, 5, 1, (3, 3), (2, 2), "same"),  # overlapping, padded
    (2, 5, 8, 2, (2, 3), (1, 2), "same"),  # non-square pool
    (1, 9, 9, 1, (2, 2), (3, 3), "valid"),  # stride larger than the pool
    (2, 7, 10, 3, (3, 3), (3, 3), "same"),  # disjoint windows, padded on every side
    (3, 8, 6, 4, (3, 2), (1, 1), "same"),
]


def conv_id(case):
    N, H, W, C, KH, KW, F, s, pad, *dilation = case
    d = f"-d{dilation[0][0]}{dilation[0][1]}" if dilation else ""
    return f"{N}x{H}x{W}x{C}-k{KH}x{KW}x{F}-s{s[0]}{s[1]}-{pad}{d}"


def pool_id(case):
    N, H, W, C, pool, s, pad = case
    return f"{N}x{H}x{W}x{C}-p{pool[0]}{pool[1]}-s{s[0]}{s[1]}-{pad}"


def make_conv(case, rng, dtype=np.float64):
    """Random x, w, b, an output gradient and the conv arguments of one case (dilation 1 if not given)."""
    N, H, W, C, KH, KW, F, strides, mode, *dilation = case
    dilation = dilation[0] if dilation else (1, 1)
    padding = conv_padding(mode, (H, W), (KH, KW), strides, dilation)
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    w = rng.standard_normal((KH, KW, C, F)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    y = reference.conv2d_forward(x, w, b, strides, padding, dilation)
    dy = rng.standard_normal(y.shape).astype(dtype)
    return x, w, b, dy, dict(strides=strides, padding=padding, dilation=dilation)


def make_pool(case, rng, dtype=np.float64):
    """An input without ties (distinct values 0.1 apart), its pool settings and a random dy."""
    N, H, W, C, pool_size, strides, mode = case
    padding = conv_padding(mode, (H, W), pool_size, strides)
    x = (rng.permutation(N * H * W * C) * 0.1 + rng.uniform(0, 0.01, N * H * W * C)).reshape(N, H, W, C)
    x = x.astype(dtype)
    y, _ = reference.maxpool2d_forward(x, pool_size, strides, padding)
    dy = rng.standard_normal(y.shape).astype(dtype)
    return x, dy, dict(pool_size=pool_size, strides=strides, padding=padding)


def make_avgpool(case, rng, dtype):
    """x, dy and the kernel arguments of an ``AVGPOOL_CASES`` row (tests/helpers.py: layer arguments)."""
    shape, pool, strides, mode = case
    pool = (pool, pool) if isinstance(pool, int) else pool
    strides = pool if strides is None else (strides, strides) if isinstance(strides, int) else strides
    kw = dict(pool_size=pool, strides=strides, padding=conv_padding(mode, shape[1:3], pool, strides))
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(reference.avgpool2d_forward(x, **kw).shape).astype(dtype)
    return x, dy, kw


def conv_all(m, x, w, b, dy, kw):
    """Forward and every backward output of backend ``m``, by name."""
    y = m.conv2d_forward(x, w, b, **kw)
    dx = m.conv2d_backward_input(dy, w, x.shape, **kw)
    dw, db = m.conv2d_backward_weights(x, dy, w.shape[:2], **kw)
    return dict(y=y, dx=dx, dw=dw, db=db)


def pool_all(m, x, dy, kw):
    y, argmax = m.maxpool2d_forward(x, **kw)
    dx = m.maxpool2d_backward(dy, argmax, x.shape, **kw)
    return dict(y=y, argmax=argmax, dx=dx)


def avgpool_all(m, x, dy, kw):
    y = m.avgpool2d_forward(x, **kw)
    return dict(y=y, dx=m.avgpool2d_backward(dy, x.shape, **kw))


def bn_all(m, x, gamma, beta, dy, eps):
    y, mean, var = m.batchnorm_forward_train(x, gamma, beta, eps)
    # both backends differentiate at the same statistics (the reference ones)
    r_mean, r_var = reference.batchnorm_forward_train(x, gamma, beta, eps)[1:]
    dx, dgamma, dbeta = m.batchnorm_backward(dy, x, gamma, r_mean, r_var, eps)
    return dict(y=y, mean=mean, var=var, dx=dx, dgamma=dgamma, dbeta=dbeta), (r_mean, r_var)


def relu_grad(dy, y):
    """dz = dy * (y > 0): what reaches the convolution through a fused ReLU."""
    return dy * (y > 0)


def assert_conv_close(name, actual, expected, sums):
    """Compare one conv output (``name`` starts with y, dx, dw or db) within the float sum bound
    of ``sums = conv_sums(x, w, b, dz, **kw)``, dz being the gradient after ReLU's mask."""
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert_sums_close(name, actual, expected, *sums[name.split()[0]])


def assert_conv_backends_agree(x, w, b, dy, kw):
    expected = conv_all(reference, x, w, b, dy, kw)
    actual = conv_all(fast, x, w, b, dy, kw)
    for name, (abs_sum, n_terms) in conv_sums(x, w, b, dy, **kw).items():
        assert actual[name].dtype == expected[name].dtype, name
        assert_sums_close(name, actual[name], expected[name], abs_sum, n_terms)
