"""Tests of the kernels behind the fast training path: fused ReLU, the one-call conv backward,
Dense, Adam, the reuse of scratch arrays, and the model skipping its first layer's input gradient.

Same kinds of evidence as ``test_kernels.py``: finite differences on the reference, Numba
against reference, results independent of the thread count, plus the safety of buffer reuse.
"""

import os
import platform
import subprocess
import sys

import numba
import numpy as np
import pytest
from helpers import assert_sums_close, conv_sums

import minicnn
from minicnn.kernels import conv_padding, reference
from minicnn.kernels import numba as fast
from minicnn.kernels.numba import im2col
from minicnn.kernels.numba._threads import LANES
from minicnn.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D
from minicnn.models import Sequential
from minicnn.optimizers import SGD

BACKENDS = {"reference": reference, "numba": fast}

# (N, H, W, C, KH, KW, F, strides, padding): one channel, several, strides, 'same', 1x1,
# and sizes big enough for the work to be split over lanes
CASES = [
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


def case_id(case):
    N, H, W, C, KH, KW, F, s, pad = case
    return f"{N}x{H}x{W}x{C}-k{KH}x{KW}x{F}-s{s[0]}{s[1]}-{pad}"


def make(case, rng, dtype=np.float64):
    """x, w, b, an upstream gradient and the conv arguments of one case."""
    N, H, W, C, KH, KW, F, strides, mode = case
    kw = dict(strides=strides, padding=conv_padding(mode, (H, W), (KH, KW), strides))
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    w = rng.standard_normal((KH, KW, C, F)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    y = reference.conv2d_forward(x, w, b, **kw)
    return x, w, b, rng.standard_normal(y.shape).astype(dtype), kw


def assert_conv_close(name, actual, expected, sums):
    """Compare one conv output (``name`` starts with y, dx, dw or db) within the float sum bound
    of ``sums = conv_sums(x, w, b, dz, **kw)``, dz being the gradient after ReLU's mask."""
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert_sums_close(name, actual, expected, *sums[name.split()[0]])


def relu_grad(dy, y):
    """dz = dy * (y > 0): what reaches the convolution through a fused ReLU."""
    return dy * (y > 0)


# ----------------------------------------------------------------------------------------- convolution
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fused_relu_conv_matches_reference(case, dtype):
    rng = np.random.default_rng(0)
    x, w, b, dy, kw = make(case, rng, dtype)
    expected = np.maximum(reference.conv2d_forward(x, w, b, **kw), 0)
    y = reference.conv2d_forward(x, w, b, activation="relu", **kw)
    dz = relu_grad(dy, y)
    masked, plain = conv_sums(x, w, b, dz, **kw), conv_sums(x, w, b, dy, **kw)
    for name, m in BACKENDS.items():
        assert_conv_close(f"y {name}", m.conv2d_forward(x, w, b, activation="relu", **kw), expected, masked)
    want = dict(dx=reference.conv2d_backward_input(dz, w, x.shape, **kw),
                dw=reference.conv2d_backward_weights(x, dz, w.shape[:2], **kw)[0],
                db=reference.conv2d_backward_weights(x, dz, w.shape[:2], **kw)[1])
    for name, m in BACKENDS.items():
        for input_gradient in (True, False):
            dx, dw, db = m.conv2d_backward(dy, x, w, relu_output=y, input_gradient=input_gradient, **kw)
            assert (dx is None) == (not input_gradient)
            if input_gradient:
                assert_conv_close(f"dx {name}", dx, want["dx"], masked)
            assert_conv_close(f"dw {name}", dw, want["dw"], masked)
            assert_conv_close(f"db {name}", db, want["db"], masked)
        # without relu_output the one-call backward is the two separate ones
        dx, dw, db = m.conv2d_backward(dy, x, w, **kw)
        assert_conv_close(f"dx {name} (no relu)", dx, reference.conv2d_backward_input(dy, w, x.shape, **kw), plain)
        assert_conv_close(f"dw {name} (no relu)", dw, reference.conv2d_backward_weights(x, dy, w.shape[:2], **kw)[0], plain)


def test_reference_relu_conv_backward_matches_finite_differences():
    rng = np.random.default_rng(1)
    x, w, b, dy, kw = make((2, 5, 4, 2, 3, 2, 3, (1, 1), "same"), rng)
    y = reference.conv2d_forward(x, w, b, activation="relu", **kw)
    assume_no_kinks = np.abs(reference.conv2d_forward(x, w, b, **kw)).min()
    assert assume_no_kinks > 1e-3   # this seed keeps every pre-activation away from ReLU's kink
    dx, dw, db = reference.conv2d_backward(dy, x, w, relu_output=y, **kw)

    def loss():
        return np.sum(reference.conv2d_forward(x, w, b, activation="relu", **kw) * dy)

    for name, param, analytic in (("x", x, dx), ("w", w, dw), ("b", b, db)):
        numeric = np.zeros_like(param)
        for idx in np.ndindex(param.shape):
            old = param[idx]
            param[idx] = old + 1e-5
            plus = loss()
            param[idx] = old - 1e-5
            minus = loss()
            param[idx] = old
            numeric[idx] = (plus - minus) / 2e-5
        err = np.linalg.norm(analytic - numeric) / (np.linalg.norm(analytic) + np.linalg.norm(numeric))
        assert err < 1e-7, f"d{name}: relative error {err:.2e}"


def test_conv_backward_over_many_chunks_and_lanes(monkeypatch):
    # one image per im2col chunk, several chunks per part: dw and db add up in a fixed order
    rng = np.random.default_rng(2)
    x, w, b, dy, kw = make((7, 9, 8, 3, 3, 3, 4, (1, 1), "same"), rng)
    y = reference.conv2d_forward(x, w, b, activation="relu", **kw)
    expected = reference.conv2d_backward(dy, x, w, relu_output=y, **kw)
    monkeypatch.setattr(im2col, "COLS_BUDGET_BYTES", 1)
    sums = conv_sums(x, w, b, relu_grad(dy, y), **kw)
    for name, a, e in zip(("dx", "dw", "db"), fast.conv2d_backward(dy, x, w, relu_output=y, **kw), expected):
        assert_conv_close(name, a, e, sums)


@pytest.mark.parametrize("dilation", [(1, 1), (2, 1), (2, 3)])
@pytest.mark.parametrize("mode", ["valid", "same"])
def test_tiled_conv_with_dilation_matches_reference(mode, dilation):
    rng = np.random.default_rng(11)
    N, H, W, C, F, k = 2, 11, 12, 32, 32, (3, 2)
    kw = dict(strides=(1, 1), padding=conv_padding(mode, (H, W), k, (1, 1), dilation), dilation=dilation)
    x, w, b = rng.standard_normal((N, H, W, C)), rng.standard_normal((*k, C, F)), rng.standard_normal(F)
    y = reference.conv2d_forward(x, w, b, activation="relu", **kw)
    dy = rng.standard_normal(y.shape)
    masked, plain = conv_sums(x, w, b, relu_grad(dy, y), **kw), conv_sums(x, w, b, dy, **kw)
    assert_conv_close("y", fast.conv2d_forward(x, w, b, activation="relu", **kw), y, masked)
    expected = reference.conv2d_backward(dy, x, w, relu_output=y, **kw)
    for name, a, e in zip(("dx", "dw", "db"), fast.conv2d_backward(dy, x, w, relu_output=y, **kw), expected):
        assert_conv_close(name, a, e, masked)
    assert_conv_close("dx alone", fast.conv2d_backward_input(dy, w, x.shape, **kw),
                      reference.conv2d_backward_input(dy, w, x.shape, **kw), plain)
    for name, a, e in zip(("dw alone", "db alone"), fast.conv2d_backward_weights(x, dy, k, **kw),
                          reference.conv2d_backward_weights(x, dy, k, **kw)):
        assert_conv_close(name, a, e, plain)


@pytest.mark.parametrize("case", [(30, 13, 13, 32, 3, 3, 32, (1, 1), "valid"), (1, 52, 52, 3, 3, 3, 32, (1, 1), "same")],
                         ids=["many small images per chunk", "rows of one big image per chunk"])
def test_tiled_kernel_gradient_over_chunk_boundaries(case):
    # tiles.weight_grad sums CHUNK_PIXELS output pixels per pass: several images, or a
    # few rows of one; both cases cross a chunk boundary here
    from minicnn.kernels.numba import tiles

    N, H, W = case[:3]
    assert N * H * W > tiles.CHUNK_PIXELS
    rng = np.random.default_rng(12)
    x, w, b, dy, kw = make(case, rng)
    sums = conv_sums(x, w, b, dy, **kw)
    for name, a, e in zip(("dw", "db"), fast.conv2d_backward_weights(x, dy, w.shape[:2], **kw),
                          reference.conv2d_backward_weights(x, dy, w.shape[:2], **kw)):
        assert_conv_close(name, a, e, sums)


def test_tiles_serve_multiples_of_32_filters(monkeypatch):
    rng = np.random.default_rng(13)
    calls = []
    from minicnn.kernels.numba import conv

    tiled = conv._forward_tiled
    monkeypatch.setattr(conv, "_forward_tiled", lambda *a: calls.append(a) or tiled(*a))
    x, w, b, dy, kw = make((3, 6, 7, 32, 3, 3, 16, (1, 1), "same"), rng, np.float32)
    fast.conv2d_forward(x, w, b, **kw)
    assert not calls   # 16 filters: im2col + BLAS
    x, w, b, dy, kw = make((3, 6, 7, 32, 3, 3, 32, (1, 1), "same"), rng, np.float32)
    y = fast.conv2d_forward(x, w, b, activation="relu", **kw)
    assert len(calls) == 1
    expected = reference.conv2d_backward(dy, x, w, relu_output=y, **kw)
    sums = conv_sums(x, w, b, relu_grad(dy, y), **kw)
    for name, a, e in zip(("dx", "dw", "db"), fast.conv2d_backward(dy, x, w, relu_output=y, **kw), expected):
        assert_conv_close(name, a, e, sums)


@pytest.mark.parametrize("case", [(0, 6, 6, 32, 3, 3, 32, (1, 1), "same"), (0, 6, 6, 3, 3, 3, 32, (1, 1), "valid"),
                                  (0, 6, 6, 3, 3, 3, 4, (1, 1), "same")], ids=case_id)
def test_an_empty_batch_gives_empty_outputs_and_zero_kernel_gradients(case):
    rng = np.random.default_rng(14)
    x, w, b, dy, kw = make(case, rng, np.float32)
    y = fast.conv2d_forward(x, w, b, activation="relu", **kw)
    assert y.shape == dy.shape
    want = reference.conv2d_backward(dy, x, w, relu_output=y, **kw)
    for name, a, e in zip(("dx", "dw", "db"), fast.conv2d_backward(dy, x, w, relu_output=y, **kw), want):
        assert a.shape == e.shape and not a.any(), name


_AVX2_SCRIPT = """
from helpers import assert_sums_close, conv_sums
from minicnn.kernels import conv_padding, reference
from minicnn.kernels import numba as fast
from minicnn.kernels.numba import tiles
import numpy as np
assert (tiles.JB, tiles.SJB) == (3, 2), (tiles.JB, tiles.SJB)
rng = np.random.default_rng(15)
for C, F, mode in ((32, 64, "same"), (3, 32, "valid")):
    x, w, b = rng.standard_normal((2, 7, 9, C)), rng.standard_normal((3, 3, C, F)), rng.standard_normal(F)
    kw = dict(padding=conv_padding(mode, (7, 9), (3, 3), (1, 1)))
    y = reference.conv2d_forward(x, w, b, activation="relu", **kw)
    dy = rng.standard_normal(y.shape)
    sums = conv_sums(x, w, b, dy * (y > 0), **kw)
    assert_sums_close("y", fast.conv2d_forward(x, w, b, activation="relu", **kw), y, *sums["y"])
    for name, a, e in zip(("dx", "dw", "db"), fast.conv2d_backward(dy, x, w, relu_output=y, **kw),
                          reference.conv2d_backward(dy, x, w, relu_output=y, **kw)):
        assert_sums_close(name, a, e, *sums[name])
print("ok")
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="compiles for an x86 CPU (Haswell)")
def test_tiles_sized_for_avx2_match_reference(tmp_path):
    # the tile sizes depend on the vector registers Numba compiles for: check the AVX2 ones too
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "", "NUMBA_CACHE_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _AVX2_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_bad_activation_and_relu_output_shapes_raise():
    x, w = np.zeros((1, 4, 4, 1)), np.zeros((3, 3, 1, 2))
    for m in BACKENDS.values():
        with pytest.raises(ValueError, match="activation"):
            m.conv2d_forward(x, w, None, activation="tanh")
    with pytest.raises(ValueError, match="relu_output"):
        fast.conv2d_backward(np.zeros((1, 2, 2, 2)), x, w, relu_output=np.zeros((1, 2, 2, 3)))


# ----------------------------------------------------------------------------------------- dense
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 5, 4), (32, 5000, 16)], ids=["small", "long-D"])
def test_dense_matches_reference(shape, dtype):
    rng = np.random.default_rng(3)
    N, D, U = shape
    x = rng.standard_normal((N, D)).astype(dtype)
    w = (rng.standard_normal((D, U)) / np.sqrt(D)).astype(dtype)
    b = rng.standard_normal(U).astype(dtype)
    dy = rng.standard_normal((N, U)).astype(dtype)
    ax, aw, ab = (np.abs(a).astype(np.float64) for a in (x, w, b))
    for activation in (None, "relu"):
        y = reference.dense_forward(x, w, b, activation)
        y_sums = (ax @ aw + ab, D + 1)
        assert_sums_close("y reference", y, np.maximum(x @ w + b, 0) if activation else x @ w + b, *y_sums)
        assert_sums_close("y", fast.dense_forward(x, w, b, activation), y, *y_sums)
        relu_output = y if activation else None
        adz = np.abs(dy * (y > 0) if activation else dy).astype(np.float64)
        sums = dict(dx=(adz @ aw.T, U), dw=(ax.T @ adz, N), db=(adz.sum(axis=0), N))
        want = reference.dense_backward(dy, x, w, relu_output)
        for input_gradient in (True, False):
            got = fast.dense_backward(dy, x, w, relu_output, input_gradient=input_gradient)
            assert (got[0] is None) == (not input_gradient)
            for name, a, e in zip(("dx", "dw", "db"), got, want):
                if a is not None:
                    assert a.dtype == e.dtype, name
                    assert_sums_close(name, a, e, *sums[name])


# ----------------------------------------------------------------------------------------- Adam
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [7, 300_001])
def test_adam_update_is_the_reference_to_the_bit(size, dtype):
    rng = np.random.default_rng(4)
    state = {name: [rng.standard_normal(size).astype(dtype), np.zeros(size, dtype), np.zeros(size, dtype)]
             for name in BACKENDS}
    state["numba"][0][:] = state["reference"][0]
    for t in range(1, 11):   # ten steps: a wrong bias correction would show
        g = rng.standard_normal(size).astype(dtype)
        lr_t = 1e-2 * (1 - 0.999**t) ** 0.5 / (1 - 0.9**t)
        for name, m in BACKENDS.items():
            m.adam_update(*state[name][:1], g, *state[name][1:], lr_t, 0.9, 0.999, 1e-7)
    for i, name in enumerate(("w", "m", "v")):
        np.testing.assert_array_equal(state["numba"][i], state["reference"][i], err_msg=name)


def test_adam_update_divides_like_numpy():
    # epsilon 0 and a zero gradient: 0 / 0 is nan in NumPy, and must not raise in the kernel
    for m in BACKENDS.values():
        w, g, mom, vel = np.ones(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32)
        with np.errstate(invalid="ignore"):
            m.adam_update(w, g, mom, vel, 0.1, 0.9, 0.999, 0.0)
        assert np.isnan(w).all()


def test_adam_update_with_mixed_dtypes_falls_back_to_numpy():
    w32, g64 = np.ones(5, np.float32), np.full(5, 0.5)
    expected = [w32.copy(), np.zeros(5, np.float32), np.zeros(5, np.float32)]
    reference.adam_update(expected[0], g64, expected[1], expected[2], 0.1, 0.9, 0.999, 1e-7)
    got = [w32.copy(), np.zeros(5, np.float32), np.zeros(5, np.float32)]
    fast.adam_update(got[0], g64, got[1], got[2], 0.1, 0.9, 0.999, 1e-7)
    for a, e in zip(got, expected):
        np.testing.assert_array_equal(a, e)


# ----------------------------------------------------------------------------------------- threads
@pytest.fixture
def restore_threads():
    before = fast.get_num_threads()
    yield
    fast.set_num_threads(before)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_new_kernels_do_not_depend_on_thread_count(restore_threads):
    rng = np.random.default_rng(5)
    x, w, b, dy, kw = make((6, 20, 19, 3, 3, 3, 8, (1, 1), "same"), rng, np.float32)
    tx, tw, tb, tdy, tkw = make((6, 13, 12, 32, 3, 3, 64, (1, 1), "same"), rng, np.float32)   # register tiles
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


def test_an_error_in_one_lane_reaches_the_caller_and_the_lanes_keep_working(restore_threads):
    fast.set_num_threads(fast.MAX_LANES)

    def part(k):
        if k == fast.PARTS - 1:
            raise ValueError(f"part {k} failed")
        return k

    with pytest.raises(ValueError, match="failed"):
        LANES.run(part, fast.PARTS, work=10**9)
    assert LANES.run(lambda k: 2 * k, fast.PARTS, work=10**9) == [2 * k for k in range(fast.PARTS)]


# ----------------------------------------------------------------------------------------- buffer reuse
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


# ----------------------------------------------------------------------------------------- layers and model
def test_relu_is_fused_only_where_the_kernels_can():
    assert Conv2D(2, 3, activation="relu").activation_is_fused
    assert Dense(2, activation="relu").activation_is_fused
    assert not Conv2D(2, 3, activation="tanh").activation_is_fused
    assert not Conv2D(2, 3).activation_is_fused


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_training_step_skips_the_first_layers_input_gradient_and_nothing_else(backend):
    old = minicnn.get_backend()
    minicnn.set_backend(backend)
    try:
        minicnn.utils.set_random_seed(7)
        model = Sequential([Input(shape=(10, 10, 1)), Conv2D(4, 3, activation="relu"), MaxPooling2D(2),
                            Flatten(), Dense(8, activation="relu"), Dense(3, activation="softmax")])
        model.compile(optimizer=SGD(0.0), loss="sparse_categorical_crossentropy")
        rng = np.random.default_rng(7)
        x, y = rng.standard_normal((5, 10, 10, 1)), rng.integers(0, 3, 5)
        model.compute_gradients(x, y)   # the full backward pass
        full = [g.copy() for layer in model.layers for g in layer.grads.values()]
        assert all(layer.needs_input_gradient for layer in model.layers)
        seen = {}
        for layer in model.layers:   # record each layer's flag while its backward runs
            def spy(dz, layer=layer, inner=layer._backward):
                seen[layer.name] = layer.needs_input_gradient
                return inner(dz)
            layer._backward = spy
        model.train_on_batch(x, y)   # lr 0: the weights stay, the gradients are recomputed
        assert [seen[layer.name] for layer in model.layers] == [False] + [True] * (len(model.layers) - 1)
        assert all(layer.needs_input_gradient for layer in model.layers)   # restored after the step
        for a, b in zip(full, (g for layer in model.layers for g in layer.grads.values())):
            np.testing.assert_array_equal(a, b)
    finally:
        minicnn.set_backend(old)
