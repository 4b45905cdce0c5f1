"""Convolution, max-pooling, Dense and Adam compiled with Numba: the fast default backend.

Same signatures and results as ``reference.py`` (the tests hold them to it), different
algorithm. A convolution is turned into one big matrix product ("im2col"):

1. a Numba loop copies every receptive field into one row of ``cols``,
   shape ``(N*OH*OW, KH*KW*C)``, channels innermost, so that the kernel reshaped to
   ``(KH*KW*C, F)`` lines up with it without a copy;
2. NumPy's BLAS computes ``y = cols @ w2d`` (backward: ``dw = cols.T @ dy2d``,
   ``dcols = dy2d @ w2d.T``), outside the jitted code, so SciPy is not needed; the bias and
   ReLU are added in one pass over each chunk of ``y`` while it is still in cache;
3. for the input gradient a Numba loop ("col2im") adds each row of ``dcols`` back onto the
   pixels it was copied from.

With a multiple of 32 filters (most CNNs) the convolution skips the matrix altogether: the
register-tiled loops of ``numba_tiles.py`` compute it directly, two to three times faster than
im2col + BLAS at the shapes of small CNNs. The im2col route stays for the other shapes.

The backward pass is one call, :func:`conv2d_backward`, which applies ReLU's derivative, and
skips the input gradient for a model's first layer.

Each Python wrapper validates, makes inputs contiguous, takes its outputs from a pool of
reused arrays (see "Scratch buffers"), splits the work into parts that own disjoint pieces of
the output, and runs the parts on "lanes" (see "Lanes"): so there are no races, and the
results are the same bits for any number of threads. This module and ``numba_tiles.py`` are
the only ones in minicnn that import numba.
"""

import collections
import ctypes
import math
import os
import sys
import tempfile
import threading
import time


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

from . import reference  # noqa: E402
from .reference import (  # noqa: E402
    check_activation,
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

from . import numba_tiles as tiles  # noqa: E402  (it reads _CACHE_OK)

# The OpenMP-parallel kernels (prange) share these options; the convolution, max-pooling and
# Adam kernels run on lanes instead (see "Lanes" below). fastmath stays off: it would reorder
# sums and assume there is no NaN or inf (the max-pool kernel tests for NaN; padding is -inf).
JIT_OPTIONS = dict(cache=_CACHE_OK, fastmath=False, parallel=True)

# im2col buffers (and the direct backward pass's chunks of dz) larger than this are filled and
# used a few images at a time: a cache-sized buffer was as fast or faster than one for the whole
# batch (224x224x3 images)
COLS_BUDGET_BYTES = 8 * 2**20

# a training layer keeps its whole im2col matrix from the forward pass for the backward pass
# when it is at most this big (32 images of 13x13x32 -> 64 filters: 4.5 MB)
KEEP_COLS_BYTES = 64 * 2**20


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
# Scratch buffers: big per-call arrays are reused instead of allocated afresh
# ----------------------------------------------------------------------------------------
# The first write to each 4 KiB page of a fresh array costs a page fault, and glibc hands
# blocks of more than a few MB back to the system when they are freed, so every call pays it
# again: measured here, the 6 MB a 32-image first conv layer allocated per call (output,
# ReLU output, im2col matrix) cost 2.2 ms of faults, four times its arithmetic. So the
# outputs and work arrays of the kernels below come from this pool. A pooled array is handed
# out again only when no one else holds it (its reference count is back to the pool's own):
# an array a caller kept, or any view of it (a view holds its base), is never overwritten.
# Arrays below ``POOL_MIN_BYTES`` come from malloc's free lists anyway and are not pooled.

POOL_MIN_BYTES = 256 * 2**10
POOL_MAX_BYTES = 2**30  # at most this much is kept; least recently used shapes go first
POOL_PER_SHAPE = 4  # arrays of one tag and shape alive at once (e.g. outputs of 2 layers)


def _refs_of_a_free_buffer():
    # the references a pooled array has inside _BufferPool.empty's loop when no one else
    # holds it (list slot, loop variable, getrefcount's argument), measured the same way
    for array in [np.empty(0)]:
        return sys.getrefcount(array)


class _BufferPool:
    """Arrays kept between calls, keyed by ``(tag, shape, dtype)``; thread-safe."""

    def __init__(self):
        self._arrays = {}  # key -> list of arrays; dicts keep insertion order: LRU first
        self._lock = threading.Lock()
        self.nbytes = 0

    def empty(self, tag, shape, dtype):
        """An uninitialised array: a pooled one no one else holds, else a new one."""
        shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        if math.prod(shape) * dtype.itemsize < POOL_MIN_BYTES:
            return np.empty(shape, dtype)
        key = (tag, shape, dtype.str)
        with self._lock:
            arrays = self._arrays.pop(key, [])
            self._arrays[key] = arrays  # now the most recently used
            for array in arrays:
                if sys.getrefcount(array) <= _FREE_REFS:
                    return array
            array = np.empty(shape, dtype)
            if len(arrays) < POOL_PER_SHAPE:
                arrays.append(array)
                self.nbytes += array.nbytes
                self._trim()
            return array

    def _trim(self):
        for key in list(self._arrays):
            if self.nbytes <= POOL_MAX_BYTES:
                return
            for array in self._arrays.pop(key):
                self.nbytes -= array.nbytes  # a holder keeps its array; the pool forgets it

    def clear(self):
        with self._lock:
            self._arrays.clear()
            self.nbytes = 0


_FREE_REFS = _refs_of_a_free_buffer()
_POOL = _BufferPool()


def clear_buffers():
    """Let go of the scratch arrays kept between calls (they are freed once no one holds them)."""
    _POOL.clear()


# ----------------------------------------------------------------------------------------
# Lanes: how the convolution, pooling and Adam kernels use several cores
# ----------------------------------------------------------------------------------------
# A kernel splits its work into parts that own disjoint pieces of the output (a range of
# images, of rows, of a flat array) and runs each part start to finish (im2col, matrix product,
# bias and ReLU) on one "lane": the calling thread, or one of a few Python threads waiting in a
# pool. The jitted loops release the GIL and BLAS is held to one thread meanwhile, so there is
# one busy thread per core and nothing spins. (With Numba's OpenMP threads for the loops and
# OpenBLAS's threads for the products, each pool's idle threads took the cores from the other:
# OpenBLAS's threads spin for about 0.1 s after a call, and on a busy machine a 1 ms kernel
# took 500 ms.) The split depends only on the shapes (``PARTS`` parts, whatever the thread
# count or ``NUMBA_NUM_THREADS``): every sum is added up in the same order, and the results are
# the same bits on 1, 2 or 16 threads of the same CPU target.

# serial loops that release the GIL: lanes run them side by side. NumPy's error model: a
# division by zero gives inf or nan as in the reference (and needs no test in the loop)
LANE_JIT_OPTIONS = dict(cache=_CACHE_OK, fastmath=False, nogil=True, error_model="numpy")
MAX_LANES = max(1, numba.config.NUMBA_NUM_THREADS)
# parts per kernel call, a constant (a split by thread count would change dw's partial sums):
# up to 8 busy lanes; on 2 cores, small CNN, as fast as two parts per lane (16: 4-9% slower)
PARTS = 8
LANE_MIN_WORK = 2**16  # below this many output values a call runs on the calling thread alone
LANE_SPIN_S = 1e-3  # an idle lane looks for work this long before it sleeps


class _BlasThreads:
    """Hold OpenBLAS to one thread while lanes run (NumPy's bundled OpenBLAS on Linux).

    ``openblas_set_num_threads`` is process-wide (even its ``_local`` variant is, in pthread
    builds), so the count is saved when the first kernel call starts and restored when the
    last one ends. Where no OpenBLAS is found, ``available`` is False and kernels use one lane.
    """

    NAMES = (
        ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
        ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
        ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
        ("openblas_set_num_threads", "openblas_get_num_threads"),
    )

    def __init__(self):
        self.controls = []
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = []
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
        except OSError:
            paths = []
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for set_name, get_name in self.NAMES:
                if hasattr(lib, set_name) and hasattr(lib, get_name):
                    setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                    setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
                    self.controls.append((setter, getter))
                    break
        self.available = bool(self.controls)

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                self._saved = [getter() for _, getter in self.controls]
                for (setter, _), n in zip(self.controls, self._saved):
                    if n != 1:
                        setter(1)
            self._depth += 1

    def __exit__(self, *exc):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for (setter, _), n in zip(self.controls, self._saved):
                    if n != 1:
                        setter(n)


class _Lanes:
    """``MAX_LANES - 1`` Python threads that, with the calling thread, compute a kernel's parts.

    Between kernel calls an idle lane keeps looking for work for about ``LANE_SPIN_S`` before
    it sleeps, yielding its core to any other ready thread at each look: on this virtual
    machine a lane that slept between the kernels of a training step woke up too late to
    help (the small CNN trained at 6.7 ms a step with sleeping lanes, 5.1 ms with looking
    ones, 7.7 ms on one lane). The looking loop is jitted and releases the GIL.
    """

    def __init__(self):
        self._pid = None
        self._lock = threading.Lock()

    def _start(self):
        with self._lock:
            if self._pid == os.getpid():
                return
            self._signal = np.zeros(1, np.int64)  # bumped for every new task
            self._scratch = np.zeros(1, np.int64)
            self._tasks = collections.deque()
            self._wakeup = threading.Condition()
            self._sleeping = 0
            _spin(self._signal, self._scratch, 0, 10)  # compile (or load) before timing it
            t0 = time.perf_counter()
            _spin(self._signal, self._scratch, 0, 2**20)  # signal[0] stays 0: all 2**20 looks
            self._spin_tries = max(1, int(2**20 * LANE_SPIN_S / max(time.perf_counter() - t0, 1e-9)))
            for _ in range(MAX_LANES - 1):
                threading.Thread(target=self._serve, name="minicnn-lane", daemon=True).start()
            self._pid = os.getpid()  # threads do not survive a fork: a child starts its own

    def _serve(self):
        while True:
            seen = int(self._signal[0])
            try:
                task = self._tasks.popleft()
            except IndexError:
                if not _spin(self._signal, self._scratch, seen, self._spin_tries):
                    with self._wakeup:
                        self._sleeping += 1
                        while not self._tasks:
                            self._wakeup.wait()
                        self._sleeping -= 1
                continue
            task()
            del task  # it holds the kernel's arrays: an idle lane must not keep them from reuse

    def _submit(self, task):
        self._tasks.append(task)
        self._signal[0] += 1
        if self._sleeping:
            with self._wakeup:
                self._wakeup.notify()

    def run(self, part, parts, work):
        """``[part(k) for k in range(parts)]``, computed on up to ``get_num_threads()`` lanes.

        Each lane takes the next part not yet taken, so a lane that the system holds up
        leaves its share to the others; ``work`` (output values) below ``LANE_MIN_WORK``
        keeps everything on the calling thread. Results come back in part order.
        """
        lanes = min(parts, numba.get_num_threads(), MAX_LANES) if _BLAS.available else 1
        if lanes <= 1 or work < LANE_MIN_WORK:
            with _BLAS:
                return [part(k) for k in range(parts)]
        self._start()
        results, errors = [None] * parts, []
        todo = collections.deque(range(parts))
        done = np.zeros(1, np.int64)  # lanes finished; the caller spins on it like the lanes

        def lane():
            try:
                while True:
                    try:
                        k = todo.popleft()
                    except IndexError:
                        return
                    results[k] = part(k)
            except BaseException as err:  # raised again in the calling thread
                errors.append(err)
                todo.clear()
            finally:
                done[0] += 1

        with _BLAS:
            for _ in range(lanes - 1):
                self._submit(lane)
            lane()
            while done[0] < lanes:
                if not _spin(done, self._scratch, int(done[0]), self._spin_tries):
                    time.sleep(1e-4)
        if errors:
            raise errors[0]
        return results


_sched_yield = numba.types.ExternalFunction("sched_yield", numba.types.int32())  # the C library's


@njit(**LANE_JIT_OPTIONS)
def _spin(signal, scratch, seen, tries):
    # True as soon as signal[0] differs from seen, False after `tries` looks. Between looks
    # the thread yields its core to any other thread that is ready to run on it.
    for _ in range(tries):
        if signal[0] != seen:
            return True
        _sched_yield()
    return False


_BLAS = _BlasThreads()
_LANES = _Lanes()


def _split(n, parts):
    """``parts`` contiguous ``(start, stop)`` ranges covering ``range(n)`` (some may be empty)."""
    bounds = [n * k // parts for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


@njit(**LANE_JIT_OPTIONS)
def _fill_zero(a):
    zero = a.dtype.type(0)
    for i in range(a.size):
        a[i] = zero


# ----------------------------------------------------------------------------------------
# Convolution: im2col + BLAS
# ----------------------------------------------------------------------------------------


def conv2d_forward(x, w, b, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), activation=None,
                   workspace=None):
    """Cross-correlate a batch of NHWC images with a bank of filters (im2col + matmul).

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), float32 or float64
    w : ndarray of shape (KH, KW, C, F)
    b : ndarray of shape (F,), or None for no bias
    strides : (SH, SW)
    padding : ((pad_top, pad_bottom), (pad_left, pad_right)), zeros added around x
    dilation : (DH, DW)
    activation : None or 'relu'
        'relu' returns ``max(y, 0)``, applied to each chunk of ``y`` as soon as it is computed.
    workspace : dict or None
        A training layer's dict: the im2col matrix is kept there (when it is at most
        ``KEEP_COLS_BYTES``) for :func:`conv2d_backward` with the same ``x`` and workspace,
        which then need not build it again.

    Returns
    -------
    y : ndarray of shape (N, OH, OW, F), dtype of x, where
        ``OH = (H + pad_top + pad_bottom - ((KH - 1) * DH + 1)) // SH + 1`` (OW likewise)

    Notes
    -----
    With xp the zero-padded input::

        y[n, i, j, f] = b[f] + sum_{u, v, c} w[u, v, c, f] * xp[n, SH*i + DH*u, SW*j + DW*v, c]

    computed as ``cols @ [w2d; b]`` with ``cols[(n, i, j), (u, v, c)] = xp[n, SH*i + DH*u, SW*j + DW*v, c]``
    and a last column of ones (so the product adds the bias), one cache-sized chunk of images
    at a time; ReLU is applied to each chunk of ``y`` right after its product, while it is
    still in cache. (A direct loop without im2col was slower even for a first layer on grey
    images: 0.61 ms against 0.46 ms for 32 images of 28x28x1 and 32 filters.)
    """
    check_float("conv2d_forward", "x", x)
    check_conv2d_args("conv2d_forward", x.shape, w.shape, strides, padding, dilation)
    check_activation("conv2d_forward", activation)
    relu = activation == "relu"
    x = np.ascontiguousarray(x)
    KH, KW, C, F = w.shape
    g = _geometry((KH, KW), strides, padding, dilation, x.shape)
    if tiles.fits(F):
        return _conv2d_forward_tiled(x, w, b, g, padding, relu, workspace)
    K = KH * KW * C
    # [w; b]: the last column of cols is all ones, so that the product adds the bias
    w2d = np.empty((K + 1, F), dtype=x.dtype)
    w2d[:K] = w.reshape(K, F)
    w2d[K] = 0 if b is None else b
    if _is_pointwise(g, x.shape):  # cols is x itself, without the ones column
        w2d = w2d[:K]
    N, rows = x.shape[0], g[-2] * g[-1]  # rows = OH*OW per image
    y = _POOL.empty("conv2d.y", (N, g[-2], g[-1], F), x.dtype)
    y2d = y.reshape(N * rows, F)
    images = _split(N, PARTS)
    kept = None
    if workspace is not None:
        workspace.clear()
        if not _is_pointwise(g, x.shape) and N * rows * (K + 1) * x.itemsize <= KEEP_COLS_BYTES:
            kept = _POOL.empty("conv2d.kept_cols", (N * rows, K + 1), x.dtype)
            workspace.update(x=x, geometry=g, cols=kept)

    def part(k):  # part k owns the images n0:n1 of y (and of the kept im2col matrix)
        n0, n1 = images[k]
        for c0, c1, cols in _im2col_chunks(x, g, n0, n1, into=kept):
            out = y2d[c0 * rows : c1 * rows]
            np.matmul(cols, w2d, out=out)  # (rows, K + 1) @ (K + 1, F): with the bias
            if _is_pointwise(g, x.shape) and b is not None:
                out += b.astype(x.dtype, copy=False)
            if relu:
                _relu(out.reshape(-1))  # while the chunk is still in cache

    _LANES.run(part, PARTS, N * rows * K)
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
    g = _geometry(w.shape[:2], strides, padding, dilation, x_shape)
    if _input_grad_route(g, padding, x_shape[-1]) == "col2im":
        dx, _, _ = _conv2d_backward(dy, None, w, None, g, tuple(x_shape), need_dx=True, need_dw=False)
    else:
        dx, _, _ = _conv2d_backward_direct(dy, None, w, None, g, padding, tuple(x_shape), need_dx=True, need_dw=False)
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
    if tiles.fits(F):
        _, dw, db = _conv2d_backward_direct(dy, None, None, _padded(x, padding), g, padding, x.shape,
                                            need_dx=False, need_dw=True)
    else:
        _, dw, db = _conv2d_backward(dy, None, None, x, g, x.shape, need_dx=False, need_dw=True)
    return dw, db


def conv2d_backward(dy, x, w, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), relu_output=None,
                    input_gradient=True, workspace=None):
    """All the gradients of :func:`conv2d_forward` in one pass over ``dy``: ``(dx, dw, db)``.

    Parameters
    ----------
    dy : ndarray of shape (N, OH, OW, F), the gradient with respect to the layer's output
    x : ndarray of shape (N, H, W, C), the forward input
    w : ndarray of shape (KH, KW, C, F)
    strides, padding, dilation : as in the forward call
    relu_output : ndarray of shape (N, OH, OW, F) or None
        The output of ``conv2d_forward(..., activation='relu')``: then ``dy`` is the gradient
        with respect to ``max(z, 0)`` and is first multiplied by ReLU's derivative ``y > 0``.
    input_gradient : bool
        False skips ``dx`` (returned as None): a model's first layer needs no input gradient.
    workspace : dict or None
        The forward call's workspace: its im2col matrix of ``x`` is used instead of a new one.
        ``x`` must not have changed in between (as in every framework that saves activations).

    Returns
    -------
    dx : ndarray of shape (N, H, W, C), or None;  dw : (KH, KW, C, F);  db : (F,); dtype of x

    Notes
    -----
    With ``dz = dy * (relu_output > 0)`` (or ``dz = dy``), :func:`conv2d_backward_input` and
    :func:`conv2d_backward_weights` of ``dz``. Done here one chunk of images at a time, so the
    masked ``dz`` and the im2col matrices only ever exist for one cache-sized chunk.
    """
    check_float("conv2d_backward", "x", x)
    check_conv2d_args("conv2d_backward", x.shape, w.shape, strides, padding, dilation)
    check_dy("conv2d_backward", dy.shape, x.shape, w.shape, strides, padding, dilation)
    if relu_output is not None and tuple(relu_output.shape) != tuple(dy.shape):
        raise ValueError(
            f"conv2d_backward: Expected `relu_output` of shape {tuple(dy.shape)}. "
            f"Received: relu_output.shape={tuple(relu_output.shape)}"
        )
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    if relu_output is not None:
        relu_output = np.ascontiguousarray(relu_output, dtype=x.dtype)
    g = _geometry(w.shape[:2], strides, padding, dilation, x.shape)
    kept = workspace if workspace and workspace.get("x") is x and workspace.get("geometry") == g else {}
    if tiles.fits(w.shape[-1]):
        xp = kept["xp"] if "xp" in kept else _padded(x, padding)
        return _conv2d_backward_direct(dy, relu_output, w, xp, g, padding, x.shape, need_dx=input_gradient,
                                       need_dw=True)
    return _conv2d_backward(dy, relu_output, w, x, g, x.shape, need_dx=input_gradient, need_dw=True,
                            kept=kept.get("cols"))


# ----------------------------------------------------------------------------------------
# Convolution with register tiles (numba_tiles), for 32, 64, ... filters
# ----------------------------------------------------------------------------------------
# The im2col route above stays for the other shapes: its matrix products accept any size.


def _padded(x, padding):
    """``x`` with its zero padding added (``x`` itself when there is none)."""
    (PT, PB), (PL, PR) = padding
    if PT == PB == PL == PR == 0:
        return x
    N, H, W, C = x.shape
    xp = _POOL.empty("conv2d.xp", (N, H + PT + PB, W + PL + PR, C), x.dtype)
    images = _split(N, PARTS)
    _LANES.run(lambda k: tiles.pad(x, *images[k], xp, PT, PL), PARTS, xp.size)
    return xp


def _conv2d_forward_tiled(x, w, b, g, padding, relu, workspace):
    """:func:`conv2d_forward` by :func:`numba_tiles.conv_pixels`, the output pixels split over the lanes."""
    KH, KW, SH, SW, DH, DW, _, _, OH, OW = g
    N, C, F = x.shape[0], x.shape[-1], w.shape[-1]
    xp = _padded(x, padding)
    wp = tiles.pack(np.asarray(w, dtype=x.dtype).reshape(KH * KW * C, F))
    bias = np.zeros(F, x.dtype) if b is None else np.asarray(b, dtype=x.dtype)
    bp = bias.reshape(F // tiles.FB, tiles.FB)
    y = _POOL.empty("conv2d.y", (N, OH, OW, F), x.dtype)
    _conv_pixels(xp, wp, bp, (KH, KW), (SH, SW), (DH, DW), y, relu)
    if workspace is not None:  # the backward pass reuses the padded input
        workspace.clear()
        workspace.update(x=x, geometry=g, xp=xp)
    return y


def _input_grad_route(g, padding, channels):
    """How :func:`_conv2d_backward_direct` computes dx: 'tiles', 'scatter' or 'col2im'.

    'tiles': a stride-1 convolution with a multiple of 32 channels, whose padding is at most the
    kernel's span; dx is then a 'valid' convolution of dz, padded, by the flipped kernel.
    'scatter': a kernel of at most 32 taps (a 3x3 kernel on RGB or grey images), any strides.
    """
    KH, KW, SH, SW, DH, DW = g[:6]
    (PT, PB), (PL, PR) = padding
    # 'tiles' also multiplies the zeros around dz: at 13x13x32 -> 64 (11x11 outputs, 15x15
    # padded) 40% more multiply-adds than needed, and still twice as fast as col2im
    if tiles.fits(channels) and SH == SW == 1 and max(PT, PB) <= DH * (KH - 1) and max(PL, PR) <= DW * (KW - 1):
        return "tiles"
    return "scatter" if tiles.small_kernel((KH, KW), channels) else "col2im"


def _conv_pixels(xp, wp, bp, kernel_hw, strides, dilation, y, relu):
    """``y`` = the convolution of padded ``xp`` by :func:`numba_tiles.conv_pixels`, pixels split over the lanes."""
    N, HP, WP, C = xp.shape
    _, OH, OW, F = y.shape
    koff = tiles.tap_offsets(kernel_hw, dilation, WP, C)
    g = (OH, OW, *strides, HP * WP * C, WP * C, C)
    pixels = _split(N * OH * OW, PARTS)
    xf, y2 = xp.reshape(-1), y.reshape(-1, F)
    _LANES.run(lambda k: tiles.conv_pixels(xf, wp, bp, koff, g, y2, *pixels[k], relu), PARTS, y.size * len(koff))


def _conv2d_backward_direct(dy, y, w, xp, g, padding, x_shape, need_dx, need_dw):
    """``(dx, dw, db)`` (None where not needed) without im2col; ``xp`` is x padded (for dw).

    dw needs a multiple of 32 filters. Per part of the images, a cache-sized chunk of images
    at a time: ``dz = dy * (y > 0)`` (when ``y`` is given) is written once, padded when dx is
    computed by the tiles, with db summed on the way; the kernel gradient tiles read it, and
    dx of the chunk follows (see :func:`_input_grad_route`) while it is still in cache. So
    ``dz`` only ever exists for a few images per lane (except on the col2im route). The parts'
    ``[dw; db]`` are added in part order.
    """
    KH, KW, SH, SW, DH, DW, PT, PL, OH, OW = g
    N, H, W, C = x_shape
    F, dtype = dy.shape[-1], dy.dtype
    K = KH * KW * C
    route = _input_grad_route(g, padding, C) if need_dx else None
    top, left, dz_hw = 0, 0, (OH, OW)
    if route == "tiles":  # dx[n, p, q] = sum_{u,v,f} dzp[n, p + DH*u, q + DW*v, f] * w[KH-1-u, KW-1-v, :, f]
        top, left = DH * (KH - 1) - PT, DW * (KW - 1) - PL
        dz_hw = (H + DH * (KH - 1), W + DW * (KW - 1))
        flipped = tiles.pack(np.asarray(w, dtype=dtype)[::-1, ::-1].transpose(0, 1, 3, 2).reshape(KH * KW * F, C))
        no_bias = np.zeros((C // tiles.FB, tiles.FB), dtype)
        dx_taps = tiles.tap_offsets((KH, KW), (DH, DW), dz_hw[1], F)
        dx_geometry = (H, W, 1, 1, dz_hw[0] * dz_hw[1] * F, dz_hw[1] * F, F)
    elif route == "scatter":  # each pixel's dz @ w2d.T added onto its window, in a padded dx
        wt = np.zeros((F, tiles.FB), dtype)
        wt[:, :K] = np.asarray(w, dtype=dtype).reshape(K, F).T
        (_, PB), (_, PR) = padding
        HP, WP = H + PT + PB, W + PL + PR
        dxp = _POOL.empty("conv2d.dxp", (N, HP, WP, C), dtype) if (HP, WP) != (H, W) else None
        dx_taps = tiles.tap_offsets((KH, KW), (DH, DW), WP, C)
        dx_geometry = (OH, OW, SH, SW, HP * WP * C, WP * C, C, F)
    dx = _POOL.empty("conv2d.dx", tuple(x_shape), dtype) if route in ("tiles", "scatter") else None
    if need_dw:
        koff = tiles.tap_offsets((KH, KW), (DH, DW), xp.shape[2], C)
        flat = xp.reshape(N, math.prod(xp.shape[1:]))  # (not -1: N may be 0)
        dw_geometry = (SH, SW, xp.shape[2] * C, C, OH, OW)
    masked = y is not None
    copy = masked or route == "tiles"  # otherwise dz is dy itself
    whole = route == "col2im"  # col2im takes dz of all the images at the end
    step = N if whole else _images_per_chunk(N, dz_hw[0] * dz_hw[1] * F * dtype.itemsize)
    full = _POOL.empty("conv2d.dz", dy.shape, dtype) if whole and copy else None
    images = _split(N, PARTS)

    def part(k):  # part k owns the images n0:n1 of dz and dx, and returns their [dw; db]
        n0, n1 = images[k]
        dwb = np.zeros((K + 1, F), dtype)
        buffer = None
        if route == "scatter":
            _fill_zero((dx if dxp is None else dxp)[n0:n1].reshape(-1))  # the scatter adds into it
        for c0 in range(n0, n1, step):
            c1 = min(n1, c0 + step)
            if not copy:
                dz = dy[c0:c1]
                if need_dw:
                    tiles.column_sums(dz, 0, c1 - c0, dwb[K])
            else:
                if full is not None:
                    dz = full[c0:c1]
                else:
                    if buffer is None:  # one per part, reused for its chunks
                        buffer = _POOL.empty("conv2d.dz_chunk", (min(step, n1 - n0), *dz_hw, F), dtype)
                    dz = buffer[: c1 - c0]
                tiles.relu_grad_pad(dy[c0:c1], (y if masked else dy)[c0:c1], masked, 0, c1 - c0, dz, top, left, dwb[K])
            if need_dw:
                tiles.weight_grad(flat[c0:c1], koff, dz, top, left, dw_geometry, 0, c1 - c0, dwb[:K])
            if route == "tiles":
                tiles.conv_pixels(dz.reshape(-1), flipped, no_bias, dx_taps, dx_geometry,
                                  dx[c0:c1].reshape(-1, C), 0, (c1 - c0) * H * W, False)
            elif route == "scatter":
                tiles.input_grad_scatter(dz.reshape(-1), wt, dx_taps, dx_geometry,
                                         (dx if dxp is None else dxp)[c0:c1].reshape(-1), 0, (c1 - c0) * OH * OW)
        if route == "scatter" and dxp is not None:
            dx[n0:n1] = dxp[n0:n1, PT : PT + H, PL : PL + W]
        return dwb

    dwb = None
    for part_dwb in _LANES.run(part, PARTS, N * OH * OW * K):  # in part order: the same sums for any thread count
        dwb = part_dwb if dwb is None else dwb + part_dwb
    if route == "col2im":
        dx, _, _ = _conv2d_backward(dy if full is None else full, None, w, None, g, x_shape, need_dx=True, need_dw=False)
    if not need_dw:
        return dx, None, None
    return dx, dwb[:K].reshape(KH, KW, C, F), dwb[K].copy()


def _conv2d_backward(dy, y, w, x, g, x_shape, need_dx, need_dw, kept=None):
    """``(dx, dw, db)`` (None where not needed) for contiguous ``dy`` (and ``y``, ``x``) of x's dtype.

    Per part of the images, one cache-sized chunk at a time: ``dz = dy * (y > 0)`` (when ``y``
    is given); ``[dw; db] += cols.T @ dz``, where the last column of ``cols`` is all ones so
    that the same product also sums ``dz`` for db; ``dx[chunk] = col2im(dz @ w2d.T)``. The
    parts' ``[dw; db]`` are added in part order.
    """
    KH, KW = g[0], g[1]
    N, H, W, C = x_shape
    F, dtype = dy.shape[-1], dy.dtype
    K, rows = KH * KW * C, g[-2] * g[-1]
    dy2d = dy.reshape(N * rows, F)
    y2d = None if y is None else y.reshape(N * rows, F)
    # w2d.T, contiguous: the product dz @ w2d.T was 10% faster with it than with a strided view
    wT = None if w is None else np.ascontiguousarray(np.asarray(w, dtype=dtype).reshape(K, F).T)
    pointwise = _is_pointwise(g, x_shape)
    dx = _POOL.empty("conv2d.dx", x_shape, dtype) if need_dx else None
    images = _split(N, PARTS)

    def part(k):  # part k owns the images n0:n1 of dx, and returns its share of [dw; db]
        n0, n1 = images[k]
        dwb = None  # (K + 1, F): dw, then db in the last row
        if need_dx and not pointwise and n1 > n0:
            _fill_zero(dx[n0:n1].reshape(-1))  # col2im adds into it
        step = _images_per_chunk(N, rows * (K + 1) * dtype.itemsize)
        if kept is not None:  # the forward pass's im2col matrix, chunk by chunk
            chunks = ((c0, min(n1, c0 + step), kept[c0 * rows : min(n1, c0 + step) * rows]) for c0 in range(n0, n1, step))
        elif need_dw:
            chunks = _im2col_chunks(x, g, n0, n1)
        else:  # the chunks _im2col_chunks would make, without their matrices
            chunks = ((c0, min(n1, c0 + step), None) for c0 in range(n0, n1, step))
        dcols = masked = None
        for c0, c1, cols in chunks:
            dz = dy2d[c0 * rows : c1 * rows]  # (rows, F) of this chunk
            if y2d is not None:
                if masked is None:  # the first chunk is the largest
                    masked = _POOL.empty("conv2d.dz", dz.shape, dtype)
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
                    dcols = _POOL.empty("conv2d.dcols", (len(dz), K), dtype)
                chunk = dcols[: len(dz)]
                np.matmul(dz, wT, out=chunk)  # (rows, F) @ (F, K)
                _col2im(chunk, C, g, dx[c0:c1].reshape(c1 - c0, H, W * C))
        return dwb

    dwb = None
    for part_dwb in _LANES.run(part, PARTS, N * rows * K):  # in part order: the same sums for any thread count
        if part_dwb is not None:
            dwb = part_dwb if dwb is None else dwb + part_dwb
    if not need_dw:
        return dx, None, None
    if dwb is None:  # no images at all
        dwb = np.zeros((K + 1, F), dtype=dtype)
    return dx, dwb[:K].reshape(KH, KW, C, F), dwb[K].copy()


def _geometry(kernel_hw, strides, padding, dilation, x_shape):
    """The ints the jitted kernels need, as one tuple ``(KH, KW, SH, SW, DH, DW, PT, PL, OH, OW)``.

    Plain Python ints: a numpy int32 anywhere would change the tuple's type and trigger a
    second compilation of every kernel.
    """
    OH, OW = conv2d_output_hw(x_shape, kernel_hw, strides, padding, dilation)
    values = (*kernel_hw, *strides, *dilation, padding[0][0], padding[1][0], OH, OW)
    return tuple(int(v) for v in values)


def _is_pointwise(g, x_shape):
    """A 1x1 kernel at stride 1 without padding: then im2col's matrix is x itself."""
    KH, KW, SH, SW, _, _, PT, PL, OH, OW = g
    # g holds only the top and left padding: equal output and input sizes rule out the rest
    return KH == KW == SH == SW == 1 and PT == PL == 0 and (OH, OW) == tuple(x_shape[1:3])


def _images_per_chunk(N, bytes_per_image):
    return max(1, min(N, COLS_BUDGET_BYTES // max(bytes_per_image, 1)))


def _im2col_chunks(x, g, start=0, stop=None, into=None):
    """Yield ``(n0, n1, cols)``: the im2col matrix of images ``n0:n1``, ``(rows, KH*KW*C + 1)``
    with a last column of ones, for cache-sized chunks of the images ``start:stop``.
    (For a 1x1 kernel at stride 1, ``cols`` is x itself, ``(rows, C)``.)

    One buffer is reused for all chunks, so each ``cols`` is valid until the next one; or,
    with ``into`` (the matrix of all the images), each chunk is built in its rows of ``into``.
    """
    N, H, W, C = x.shape
    stop = N if stop is None else stop
    KH, KW, rows = g[0], g[1], g[-2] * g[-1]
    if stop <= start:
        return
    if _is_pointwise(g, x.shape):
        yield start, stop, x[start:stop].reshape((stop - start) * rows, C)  # x as it is
        return
    step = _images_per_chunk(N, rows * (KH * KW * C + 1) * x.itemsize)
    if into is None:
        buffer = _POOL.empty("conv2d.cols", (min(step, stop - start) * rows, KH * KW * C + 1), x.dtype)
    for n0 in range(start, stop, step):
        n1 = min(stop, n0 + step)
        cols = buffer[: (n1 - n0) * rows] if into is None else into[n0 * rows : n1 * rows]
        _im2col(x[n0:n1].reshape(n1 - n0, H, W * C), C, g, cols)
        yield n0, n1, cols


@njit(**LANE_JIT_OPTIONS)
def _im2col(x, C, g, cols):
    # x: (N, H, W*C), each image row flattened, so that the KW*C values under one kernel
    # row are one contiguous run when DW == 1 (most convolutions): a loop LLVM vectorizes.
    # cols: (N*OH*OW, KH*KW*C + 1), the last column all ones (it carries the bias)
    KH, KW, SH, SW, DH, DW, PT, PL, OH, OW = g
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


@njit(**LANE_JIT_OPTIONS)
def _col2im(dcols, C, g, dx):
    # dx: (N, H, W*C) as in _im2col; adds each row of dcols back where _im2col read it
    KH, KW, SH, SW, DH, DW, PT, PL, OH, OW = g
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


@njit(**LANE_JIT_OPTIONS)
def _relu(y):
    # y = max(y, 0) in place, over a chunk just written by BLAS
    zero = y.dtype.type(0)
    for i in range(y.size):
        if y[i] < zero:  # NaN stays NaN, as with np.maximum
            y[i] = zero


@njit(**LANE_JIT_OPTIONS)
def _relu_grad(dy, y, dz):
    # dz = dy * (y > 0): ReLU's derivative, 0 at y == 0 as in Keras and PyTorch
    zero = dy.dtype.type(0)
    for i in range(dy.size):
        dz[i] = dy[i] if y[i] > zero else zero


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
    y = _POOL.empty("maxpool2d.y", (N, OH, OW, C), x.dtype)
    argmax = _POOL.empty("maxpool2d.argmax", (N, OH, OW, C), np.int32)
    g, images = _pool_geometry(pool_size, strides, padding), _split(N, PARTS)

    def part(k):  # part k owns the images n0:n1 of y and argmax
        n0, n1 = images[k]
        _maxpool_forward(x[n0:n1], g, y[n0:n1], argmax[n0:n1])

    _LANES.run(part, PARTS, x.size)
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
    g, images = _pool_geometry(pool_size, strides, padding), _split(x_shape[0], PARTS)
    disjoint = strides[0] >= pool_size[0] and strides[1] >= pool_size[1]  # windows do not overlap
    dx = _POOL.empty("maxpool2d.dx", x_shape, dy.dtype)

    def part(k):  # part k owns the images n0:n1 of dx (windows never cross images)
        n0, n1 = images[k]
        if disjoint:
            _maxpool_backward_disjoint(dy[n0:n1], argmax[n0:n1], g, dx[n0:n1])
        else:
            _fill_zero(dx[n0:n1].reshape(-1))
            _maxpool_backward(dy[n0:n1], argmax[n0:n1], g, dx[n0:n1])

    _LANES.run(part, PARTS, math.prod(x_shape))
    return dx


def _pool_geometry(pool_size, strides, padding):
    """``(PH, PW, SH, SW, PT, PL)`` as plain Python ints (one compiled type)."""
    return tuple(int(v) for v in (*pool_size, *strides, padding[0][0], padding[1][0]))


@njit(**LANE_JIT_OPTIONS)
def _maxpool_forward(x, g, y, argmax):
    PH, PW, SH, SW, PT, PL = g
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
                    for c in range(C):
                        val = x[n, p, q, c]
                        best = y[n, i, j, c]
                        # strict > keeps the first maximum; the first NaN wins as in np.argmax
                        if val > best or (val != val and best == best):
                            y[n, i, j, c] = val
                            argmax[n, i, j, c] = u * PW + v


@njit(**LANE_JIT_OPTIONS)
def _maxpool_backward_disjoint(dy, argmax, g, dx):
    # windows that do not overlap: every input pixel lies in at most one window, so each
    # pixel of dx is written once, with its window's gradient if it won, else 0 (no zeros
    # pass first, no scatter)
    PH, PW, SH, SW, PT, PL = g
    N, H, W, C = dx.shape
    _, OH, OW, _ = dy.shape
    zero = dx.dtype.type(0)
    for r in range(N * H):  # r = n*H + p owns dx[n, p]
        n = r // H
        p = r - n * H
        i = (p + PT) // SH
        u = p + PT - SH * i
        row_in_window = u < PH and i < OH
        for q in range(W):
            j = (q + PL) // SW
            v = q + PL - SW * j
            if row_in_window and v < PW and j < OW:
                k = u * PW + v
                for c in range(C):
                    dx[n, p, q, c] = dy[n, i, j, c] if argmax[n, i, j, c] == k else zero
            else:
                for c in range(C):
                    dx[n, p, q, c] = zero


@njit(**LANE_JIT_OPTIONS)
def _maxpool_backward(dy, argmax, g, dx):
    PH, PW, SH, SW, PT, PL = g
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
# Dense: BLAS on lanes, split along the long input axis D
# ----------------------------------------------------------------------------------------


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
    span = _split(x.shape[1], PARTS)
    parts = _LANES.run(lambda k: x[:, span[k][0] : span[k][1]] @ w[span[k][0] : span[k][1]], PARTS, w.size)
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
    dw = _POOL.empty("dense.dw", (D, U), x.dtype)
    dx = _POOL.empty("dense.dx", (N, D), x.dtype) if input_gradient else None
    span = _split(D, PARTS)

    def part(k):  # part k owns the rows d0:d1 of dw and the columns d0:d1 of dx
        d0, d1 = span[k]
        np.matmul(x[:, d0:d1].T, dz, out=dw[d0:d1])  # (d, N) @ (N, U)
        if input_gradient:
            np.matmul(dz, w[d0:d1].T, out=dx[:, d0:d1])  # (N, U) @ (U, d)

    _LANES.run(part, PARTS, w.size)
    return dx, dw, dz.sum(axis=0)


# ----------------------------------------------------------------------------------------
# Adam's update: one pass instead of NumPy's dozen
# ----------------------------------------------------------------------------------------

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
        pieces = _split(w.size, PARTS)

        def part(k):  # part k owns its slice of w, m and v
            a, b = pieces[k]
            _adam(*(f[a:b] for f in flat), *scalars)

        _LANES.run(part, PARTS, w.size)
    else:
        reference.adam_update(w, g, m, v, lr_t, beta_1, beta_2, epsilon)


@njit(**LANE_JIT_OPTIONS)
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
        w = np.ones(4, dtype=dtype)
        adam_update(w, w.copy(), w.copy(), w.copy(), 1e-3, 0.9, 0.999, 1e-7)


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
