"""The Numba backend's machinery: the same bits on 1 and 2 threads for every kernel family, an error in a
lane reaching the caller, buffers reused only when no one holds them, the compile cache folder, and BLAS
found and controlled through threadpoolctl."""

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from kernel_cases import avgpool_all, bn_all, conv_all, make_avgpool, make_conv, make_pool, pool_all

from minicnn.kernels import numba as fast
from minicnn.kernels.numba import _runtime
from minicnn.kernels.numba._threads import LANES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_conv_and_maxpool_kernels_do_not_depend_on_thread_count(restore_threads):
    rng = np.random.default_rng(10)
    x, w, b, dy, kw = make_conv((5, 11, 9, 3, 3, 3, 4, (1, 1), "same", (1, 1)), rng, np.float32)
    xp, dyp, kwp = make_pool((5, 11, 9, 3, (3, 3), (2, 2), "same"), rng, np.float32)
    results = []
    for threads in (1, 2):
        fast.set_num_threads(threads)
        assert fast.get_num_threads() == threads
        results.append({**conv_all(fast, x, w, b, dy, kw), **pool_all(fast, xp, dyp, kwp)})
    for name in results[0]:
        assert np.array_equal(results[0][name], results[1][name]), f"{name} differs between 1 and 2 threads"


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_fused_conv_dense_and_adam_kernels_do_not_depend_on_thread_count(restore_threads):
    rng = np.random.default_rng(5)
    x, w, b, dy, kw = make_conv((6, 20, 19, 3, 3, 3, 8, (1, 1), "same"), rng, np.float32)
    tx, tw, tb, tdy, tkw = make_conv((6, 13, 12, 32, 3, 3, 64, (1, 1), "same"), rng, np.float32)   # register tiles
    xd, wd = rng.standard_normal((32, 3000)).astype(np.float32), rng.standard_normal((3000, 16)).astype(np.float32)
    dyd = rng.standard_normal((32, 16)).astype(np.float32)
    results = []
    for threads in (1, 2):
        fast.set_num_threads(threads)
        y = fast.conv2d_forward(x, w, b, activation="relu", **kw)
        out = [y.copy(), *(a.copy() for a in fast.conv2d_backward(dy, x, w, relu_output=y, **kw))]
        ty = fast.conv2d_forward(tx, tw, tb, activation="relu", **tkw)
        out += [ty.copy(), *(a.copy() for a in fast.conv2d_backward(tdy, tx, tw, relu_output=ty, **tkw))]
        yd = fast.dense_forward(xd, wd, None, "relu")
        out += [yd.copy(), *(a.copy() for a in fast.dense_backward(dyd, xd, wd, yd))]
        p = [a.copy() for a in (wd, wd * 0, wd * 0)]
        fast.adam_update(p[0], wd, p[1], p[2], 1e-3, 0.9, 0.999, 1e-7)
        results.append(out + p)
    for i, (a, b_) in enumerate(zip(*results)):
        assert np.array_equal(a, b_), f"result {i} differs between 1 and 2 threads"


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_batchnorm_and_avgpool_kernels_do_not_depend_on_thread_count(restore_threads):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((6, 21, 17, 3)).astype(np.float32)   # M = 2142 rows: 9 blocks
    gamma, beta, dy = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(x.shape).astype(np.float32)
    px, pdy, pkw = make_avgpool(((5, 11, 9, 3), 3, 2, "same"), rng, np.float32)
    results = []
    for threads in (1, 2):
        fast.set_num_threads(threads)
        results.append({**bn_all(fast, x, gamma, beta, dy, 1e-3)[0], **avgpool_all(fast, px, pdy, pkw)})
    for name in results[0]:
        assert np.array_equal(results[0][name], results[1][name]), f"{name} differs between 1 and 2 threads"


def test_an_error_in_one_lane_reaches_the_caller_and_the_lanes_keep_working(restore_threads):
    fast.set_num_threads(fast.MAX_LANES)

    def part(k):
        if k == fast.PARTS - 1:
            raise ValueError(f"part {k} failed")
        return k

    with pytest.raises(ValueError, match="failed"):
        LANES.run(part, fast.PARTS, work=10**9)
    assert LANES.run(lambda k: 2 * k, fast.PARTS, work=10**9) == [2 * k for k in range(fast.PARTS)]


def test_arrays_a_caller_keeps_are_never_reused():
    rng = np.random.default_rng(6)
    x1, x2 = rng.standard_normal((2, 8, 30, 30, 4)).astype(np.float32)   # outputs of 112 KB .. 900 KB
    w = rng.standard_normal((3, 3, 4, 64)).astype(np.float32)
    y1 = fast.conv2d_forward(x1, w, None)
    kept = y1.copy()
    view = y1[1:3]   # a view keeps its base alive
    pooled, argmax = fast.maxpool2d_forward(y1, (2, 2), (2, 2))
    pooled_copy = pooled.copy()
    del y1
    y2 = fast.conv2d_forward(x2, w, None)   # same shape: must not land in y1's memory
    fast.maxpool2d_forward(y2, (2, 2), (2, 2))
    np.testing.assert_array_equal(view, kept[1:3])
    np.testing.assert_array_equal(pooled, pooled_copy)
    assert not np.shares_memory(y2, view)


def test_arrays_no_one_holds_are_reused():
    x = np.ones((8, 30, 30, 4), np.float32)
    w = np.ones((3, 3, 4, 64), np.float32)
    address = fast.conv2d_forward(x, w, None).ctypes.data   # dropped at once
    assert fast.conv2d_forward(x, w, None).ctypes.data == address


def test_cache_dir_is_reported():
    path = fast.cache_dir()
    assert path is None or isinstance(path, str)
    if os.environ.get("NUMBA_CACHE_DIR"):
        assert path == os.environ["NUMBA_CACHE_DIR"]


def test_cache_falls_back_to_a_writable_folder(monkeypatch):
    # a read-only install: the package folder is not writable, the user's cache folder is
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(_runtime, "_can_write", lambda path: path != _runtime._IN_TREE_CACHE)
    assert _runtime._fallback_cache_dir().endswith(os.path.join("minicnn", "numba"))
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere/chosen")  # the user's choice wins
    assert _runtime._fallback_cache_dir() is None


def test_blas_is_found_through_threadpoolctl_and_described():
    from threadpoolctl import ThreadpoolController

    from minicnn.kernels.numba._threads import BLAS

    found = [lib.internal_api for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
    line = fast.blas_info()
    assert BLAS.controlled == bool(found)
    assert all(name in line for name in found), line
    assert ("controlled by threadpoolctl" in line) == bool(found), line


def test_blas_kernels_run_on_one_lane_where_blas_cannot_be_controlled(monkeypatch):
    from minicnn.kernels.numba import _threads

    monkeypatch.setattr(_threads.BLAS, "_libraries", [])   # as with Accelerate
    seen = []
    parts = _threads.LANES.run(lambda k: seen.append(k) or k, _threads.PARTS, work=10**9, blas=True)
    assert parts == list(range(_threads.PARTS)) and seen == list(range(_threads.PARTS))
    # kernels that do not call BLAS still get every lane
    lanes = min(_threads.PARTS, _threads.get_num_threads(), _threads.MAX_LANES)
    assert _threads.LANES.lanes_for(_threads.PARTS, 10**9, blas=False) == lanes
    assert _threads.LANES.lanes_for(_threads.PARTS, 10**9, blas=True) == 1
    monkeypatch.undo()
    assert _threads.LANES.lanes_for(_threads.PARTS, 10**9, blas=True) == (lanes if _threads.BLAS.controlled else 1)


def test_minicnn_info_names_the_blas_and_whether_it_is_controlled():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "minicnn", "info"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert fast.blas_info() in done.stdout, done.stdout
