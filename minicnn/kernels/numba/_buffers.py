"""Scratch buffers: the kernels' big outputs and work arrays are reused between calls.

Why: glibc hands a block bigger than its mmap threshold (at most 32 MB) back to the system when
it is freed, and a fresh one pays a page fault on the first write to each 4 KiB page, so the
blog model's 202 MB convolution output would pay again at every step; with the pool its
training step is measurably faster, while models whose arrays are a few MB neither gain nor
lose (``benchmarks/RESULTS.md``, "The lanes and the buffer pool: do they pay?").

A pooled array is handed out again only when no one else holds it (its reference count is back
to the pool's own): an array a caller kept, or any view of it (a view holds its base), is never
overwritten. So a layer need not do anything for the pool. Arrays below ``POOL_MIN_BYTES`` come
from malloc's free lists anyway and are not pooled.
"""

import math
import sys
import threading

import numpy as np
from numba import njit

from ._runtime import JIT_OPTIONS

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
POOL = _BufferPool()


def clear_buffers():
    """Let go of the scratch arrays kept between calls (they are freed once no one holds them)."""
    POOL.clear()



@njit(**JIT_OPTIONS)
def fill_zero(a):
    """``a[:] = 0`` for a flat array, on the calling lane (``np.zeros`` would allocate afresh)."""
    zero = a.dtype.type(0)
    for i in range(a.size):
        a[i] = zero
