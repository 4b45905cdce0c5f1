"""The Numba backend: the same kernels as ``reference.py``, compiled, and the fast default.

Every public kernel has the signature of its ``reference.py`` twin (a test checks it) and gives
the same numbers within float rounding (tests check that too). This package is the only part
of minicnn that imports numba. Set ``NUMBA_DISABLE_JIT=1`` before starting Python and every
kernel runs as plain Python, which a debugger can step through (slowly).

Route table: which algorithm runs for which shapes, and why
-----------------------------------------------------------

=====================  =============================================  =================================
kernel                 shapes                                         route (module)
=====================  =============================================  =================================
conv forward           F a multiple of 32                             register tiles (``tiles.py``)
conv forward           other F                                        im2col + BLAS (``im2col.py``)
conv kernel gradient   F a multiple of 32                             register tiles
conv kernel gradient   other F                                        im2col + BLAS
conv input gradient    F a multiple of 32 (or ``conv2d_backward_``    ``input_grad_route`` in ``conv.py``:
                       ``input`` alone), then: C a multiple of 32,    tiles: a 'valid' convolution of
                       stride 1, padding at most the kernel's span    the padded dz by the flipped kernel
                       ... else at most 32 taps (KH*KW*C)             scatter tiles (``tiles.py``)
                       ... else                                       BLAS + col2im (``im2col.py``)
conv input gradient    other F, in ``conv2d_backward``                BLAS + col2im, with dw's chunks
1x1 conv, stride 1,    on the im2col route                            no im2col: x is the matrix
no padding
max / average pooling  any                                            one loop (``pooling.py``)
dense                  any                                            BLAS, split along D (``dense.py``)
batch norm             any                                            blocks of rows (``norm.py``)
Adam                   one dtype, contiguous (else the reference)     one loop (``dense.py``)
=====================  =============================================  =================================

Why: at the shapes of small CNNs the register tiles beat im2col + BLAS (building the im2col
matrix costs as much as the product, and BLAS runs narrow products far below its peak); the
im2col route stays because its products accept any size. The scatter and col2im routes cover
the input gradients the tiles cannot compute as a convolution. The figures are in
``benchmarks/RESULTS.md``.

Fusion, part of the backend contract (the reference honours the same arguments):

- ``conv2d_forward(..., activation='relu')`` and ``dense_forward(..., activation='relu')``
  apply ReLU while the output is in cache; the backward calls take ``relu_output=`` (that
  output) and apply ReLU's derivative first;
- ``conv2d_backward(..., input_gradient=False)`` and ``dense_backward`` likewise skip ``dx``
  (a model's first layer needs none).

The machinery lives apart, out of the reader's way: ``_runtime.py`` (cache folder, JIT
options), ``_threads.py`` (lanes and BLAS thread control), ``_buffers.py`` (reused arrays).
"""

import numpy as np

from ._buffers import clear_buffers  # noqa: F401
from ._runtime import JIT_OPTIONS, cache_dir  # noqa: F401
from ._threads import BLAS, MAX_LANES, PARTS, get_num_threads, set_num_threads  # noqa: F401
from .conv import conv2d_backward, conv2d_backward_input, conv2d_backward_weights, conv2d_forward
from .dense import adam_update, dense_backward, dense_forward  # noqa: F401
from .norm import batchnorm_backward, batchnorm_forward_train  # noqa: F401
from .pooling import avgpool2d_backward, avgpool2d_forward, maxpool2d_backward, maxpool2d_forward


def blas_info():
    """One line: which BLAS NumPy uses and whether minicnn controls its threads (``minicnn info``)."""
    return BLAS.describe()


def warmup(dtypes=("float32", "float64")):
    """Compile (or load from the cache) every kernel for ``dtypes`` on tiny inputs."""
    pad = ((0, 1), (0, 1))
    for dtype in dtypes:
        # 1 or 2 filters: im2col; 32: the register tiles (dx by scatter for 2 channels, by tiles for 32)
        for C, F in ((1, 1), (2, 2), (2, 32), (32, 32)):
            x = np.ones((1, 3, 3, C), dtype=dtype)
            w = np.ones((2, 2, C, F), dtype=dtype)
            y = conv2d_forward(x, w, None, padding=pad, activation="relu")
            conv2d_backward(y, x, w, padding=pad, relu_output=y)
            conv2d_backward(y, x, w, padding=pad)
            conv2d_backward_input(y, w, x.shape, padding=pad)
            conv2d_backward_weights(x, y, (2, 2), padding=pad)
        for strides in ((1, 1), (2, 2)):  # overlapping and disjoint windows
            y, argmax = maxpool2d_forward(x, (2, 2), strides)
            maxpool2d_backward(y, argmax, x.shape, (2, 2), strides)
            avgpool2d_backward(avgpool2d_forward(x, (2, 2), strides), x.shape, (2, 2), strides)
        w = np.ones(4, dtype=dtype)
        adam_update(w, w.copy(), w.copy(), w.copy(), 1e-3, 0.9, 0.999, 1e-7)
        x, w = np.ones((2, 4), dtype=dtype), np.ones((4, 3), dtype=dtype)
        dense_backward(dense_forward(x, w, None, "relu"), x, w)
        x = np.ones((2, 3), dtype=dtype)
        y, mean, var = batchnorm_forward_train(x, np.ones(3), np.zeros(3), 1e-3)
        batchnorm_backward(y, x, np.ones(3), mean, var, 1e-3)


# ----------------------------------------------------------------------------------------
