"""Lanes: how the kernels use several cores, and how BLAS is kept out of their way.

A kernel splits its work into ``PARTS`` parts that own disjoint pieces of the output (a range
of images, of rows, of a flat array) and runs each part start to finish on one "lane": the
calling thread, or one of a few Python threads waiting in a pool. The jitted loops release the
GIL, and BLAS is held to one thread while the lanes run, so there is one busy thread per core.
Why lanes rather than Numba's ``parallel=True``: with OpenMP threads for the loops and BLAS's
own threads for the products, each pool's idle threads took the cores from the other, and an
OpenMP region makes a forked child process die (``benchmarks/RESULTS.md``, "Lanes instead of two thread pools").
They pay: without them (each kernel's parts one after the other, BLAS with its own threads) a
training step is about as slow as on one core, since the register tiles, pooling, batch norm
and Adam never call BLAS (``benchmarks/RESULTS.md``, "The lanes and the buffer pool: do they pay?").

The split depends only on the shapes (``PARTS`` parts, whatever the thread count), so every
sum is added up in the same order and the results are the same bits on 1, 2 or 16 threads.

BLAS thread control goes through threadpoolctl (OpenBLAS, MKL, BLIS, FlexiBLAS on Linux, macOS
and Windows), found once on first use. Where NumPy's BLAS cannot be controlled (Apple's
Accelerate), kernels that call BLAS run on the calling thread alone and let BLAS use the cores;
kernels that never call BLAS (register tiles, pooling, normalisation, Adam) use every lane
whatever the BLAS.
"""

import collections
import ctypes
import os
import sys
import threading
import time

import llvmlite.binding as llvm
import numba
import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from ._runtime import JIT_OPTIONS

MAX_LANES = max(1, numba.config.NUMBA_NUM_THREADS)
# parts per kernel call, a constant (a split by thread count would change dw's partial sums):
# up to 8 busy lanes, and as fast as fewer parts on 2 cores (benchmarks/RESULTS.md)
PARTS = 8
LANE_MIN_WORK = 2**16  # below this many output values a call runs on the calling thread alone
LANE_SPIN_S = 1e-3  # an idle lane looks for work this long before it sleeps


def set_num_threads(n):
    """Run the kernels on at most ``n`` lanes (at most ``NUMBA_NUM_THREADS``); as ``numba.set_num_threads``."""
    numba.set_num_threads(n)


def get_num_threads():
    """The number of lanes the kernels may use (``numba.get_num_threads()``)."""
    return numba.get_num_threads()


def split(n, parts):
    """``parts`` contiguous ``(start, stop)`` ranges covering ``range(n)`` (some may be empty)."""
    bounds = [n * k // parts for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


class _Blas:
    """Hold every BLAS that threadpoolctl finds to one thread while the lanes run.

    A BLAS thread count is process-wide, so it is saved when the first kernel call starts and
    restored when the last one ends (calls may nest or overlap from several threads).
    """

    def __init__(self):
        self._libraries = None
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = []

    @property
    def libraries(self):
        """threadpoolctl's controllers of the loaded BLAS libraries (found on first use)."""
        if self._libraries is None:
            from threadpoolctl import ThreadpoolController

            self._libraries = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        return self._libraries

    @property
    def controlled(self):
        """True if NumPy's BLAS threads can be set (then BLAS-calling kernels may use lanes)."""
        return bool(self.libraries)

    def describe(self):
        """One line for ``minicnn info``: which BLAS was found and whether it is controlled."""
        if not self.libraries:
            return "BLAS: none that threadpoolctl can control (e.g. Accelerate): BLAS kernels run on one lane"
        found = ", ".join(f"{lib.internal_api} {lib.version or ''} ({lib.num_threads} threads)".replace(" (", " (", 1)
                          for lib in self.libraries)
        return f"BLAS: {found}, controlled by threadpoolctl"

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                self._saved = [lib.num_threads for lib in self.libraries]
                for lib, n in zip(self.libraries, self._saved):
                    if n != 1:
                        lib.set_num_threads(1)
            self._depth += 1

    def __exit__(self, *exc):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for lib, n in zip(self.libraries, self._saved):
                    if n != 1:
                        lib.set_num_threads(n)


class _Lanes:
    """``MAX_LANES - 1`` Python threads that, with the calling thread, compute a kernel's parts.

    Between kernel calls an idle lane keeps looking for work for about ``LANE_SPIN_S`` before
    it sleeps, yielding its core at each look: a lane that slept between the kernels of a
    training step woke up too late to help (``benchmarks/RESULTS.md``, "Lanes instead of two thread pools"). The looking loop is jitted and releases the GIL.
    """

    def __init__(self):
        self._pid = None
        self._lock = threading.Lock()

    def _start(self):
        with self._lock:
            if self._pid == os.getpid():
                return
            self._signal = np.zeros(1, np.int64)  # bumped for every new task
            self._tasks = collections.deque()
            self._wakeup = threading.Condition()
            self._sleeping = 0
            _spin(self._signal, 0, 10)  # compile (or load) before timing it
            t0 = time.perf_counter()
            _spin(self._signal, 0, 2**20)  # signal[0] stays 0: all 2**20 looks
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
                if not _spin(self._signal, seen, self._spin_tries):
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

    @staticmethod
    def lanes_for(parts, work, blas):
        """How many lanes :meth:`run` uses for ``parts`` parts of ``work`` output values."""
        if work < LANE_MIN_WORK or numba.config.DISABLE_JIT:  # plain Python holds the GIL: lanes would take turns
            return 1
        if blas and not BLAS.controlled:  # BLAS would run its own threads inside each lane
            return 1
        return min(parts, numba.get_num_threads(), MAX_LANES)

    def run(self, part, parts, work, blas=False):
        """``[part(k) for k in range(parts)]``, computed on up to ``get_num_threads()`` lanes.

        Each lane takes the next part not yet taken, so a lane that the system holds up
        leaves its share to the others; ``work`` (output values) below ``LANE_MIN_WORK``
        keeps everything on the calling thread, and so does ``blas=True`` (the parts call
        BLAS) where BLAS's threads cannot be controlled. Results come back in part order.
        """
        lanes = self.lanes_for(parts, work, blas)
        if lanes <= 1:
            if not blas:
                return [part(k) for k in range(parts)]
            with BLAS:
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

        with BLAS:
            for _ in range(lanes - 1):
                self._submit(lane)
            lane()
            while done[0] < lanes:
                if not _spin(done, int(done[0]), self._spin_tries):
                    time.sleep(1e-4)
        if errors:
            raise errors[0]
        return results


@intrinsic
def _atomic_load(typingctx, array):
    """``array[0]`` read afresh from memory at every call (a relaxed atomic load), on every CPU.

    A plain read in a loop that writes nothing would be hoisted out of it by LLVM and the loop
    would never see another thread's write.
    """
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load_atomic(data, "monotonic", 8)

    return types.int64(array), codegen


def _yield_address():
    """Address of the system call that hands the core to another ready thread, or None.

    ``sched_yield`` from the C library (Linux, macOS, BSD), ``SwitchToThread`` from kernel32
    (Windows); found through ctypes, so nothing is bound to a symbol that may not exist.
    """
    try:
        call = ctypes.windll.kernel32.SwitchToThread if sys.platform == "win32" else ctypes.CDLL(None).sched_yield
    except (OSError, AttributeError):
        return None
    return ctypes.cast(call, ctypes.c_void_p).value


_YIELD = _yield_address()
if _YIELD:
    llvm.add_symbol("minicnn_yield_core", _YIELD)  # the jitted code calls it by this name
    _yield_core = types.ExternalFunction("minicnn_yield_core", types.int32())
else:
    @njit(**JIT_OPTIONS)
    def _yield_core():
        return 0


@njit(**JIT_OPTIONS)
def _spin(signal, seen, tries):
    # True as soon as signal[0] differs from seen, False after `tries` looks. Between looks the
    # thread yields its core to any other ready thread: on a busy machine, maybe the one whose
    # work it is waiting for.
    for _ in range(tries):
        if _atomic_load(signal) != seen:
            return True
        _yield_core()
    return False


BLAS = _Blas()
LANES = _Lanes()
