"""Where compiled kernels are cached, and the options every jitted loop is compiled with.

Imported first by every module of the Numba package: it picks a writable cache folder before
numba is imported, so that a read-only install still caches its compiled kernels.
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

import numba  # noqa: E402

if _FALLBACK_CACHE:
    numba.config.CACHE_DIR = _FALLBACK_CACHE  # in case numba was imported before us
CACHE_OK = bool(numba.config.CACHE_DIR) or _can_write(_IN_TREE_CACHE)

# Every kernel is a serial loop that releases the GIL; the lanes (``_threads.py``) run several
# side by side. No kernel uses Numba's ``parallel=True``: its OpenMP threads spin after a
# parallel region (stealing the cores from the next BLAS call) and make a forked child die.
# fastmath stays off: it would reorder sums and assume there is no NaN or inf (the max-pool
# kernel tests for NaN; padding is -inf). NumPy's error model: a division by zero gives inf or
# nan as in the reference (and needs no test in the loop).
JIT_OPTIONS = dict(cache=CACHE_OK, fastmath=False, nogil=True, error_model="numpy")


def cache_dir():
    """Where compiled kernels are cached: a folder path, or None when caching is off."""
    if not CACHE_OK:
        return None
    return numba.config.CACHE_DIR or _IN_TREE_CACHE
