"""Convolution kernels, reference and Numba, every route: finite differences on the reference (float64), the
Notes formula term by term, Numba vs reference on case tables and random problems (hypothesis), PyTorch
parity, the fused ReLU with its one-call backward, the register tiles (also compiled for AVX2), chunks and
empty batches; outputs compared within the float bound derived from the sums (tests/helpers.py)."""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_gradients_match, assert_sums_close, conv_sums
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from kernel_cases import (
    BACKENDS,
    CONV_CASES,
    FUSED_CASES,
    assert_conv_backends_agree,
    assert_conv_close,
    conv_all,
    conv_id,
    make_conv,
    relu_grad,
)
from torch_layout import torch_pad, torch_run

from minicnn.kernels import conv_padding, reference
from minicnn.kernels import numba as fast
from minicnn.kernels.numba import im2col

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # helpers.py, for the AVX2 process


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_reference_conv_gradients_match_finite_differences(case):
    rng = np.random.default_rng(1)
    x, w, b, dy, kw = make_conv(case, rng)
    dx = reference.conv2d_backward_input(dy, w, x.shape, **kw)
    dw, db = reference.conv2d_backward_weights(x, dy, w.shape[:2], **kw)

    def loss():  # dL/dy == dy
        return np.sum(reference.conv2d_forward(x, w, b, **kw) * dy)

    assert_gradients_match(loss, {"dx": (dx, x), "dw": (dw, w), "db": (db, b)})


def test_reference_relu_conv_backward_matches_finite_differences():
    rng = np.random.default_rng(1)
    x, w, b, dy, kw = make_conv((2, 5, 4, 2, 3, 2, 3, (1, 1), "same"), rng)
    y = reference.conv2d_forward(x, w, b, activation="relu", **kw)
    assume_no_kinks = np.abs(reference.conv2d_forward(x, w, b, **kw)).min()
    assert assume_no_kinks > 1e-3   # this seed keeps every pre-activation away from ReLU's kink
    dx, dw, db = reference.conv2d_backward(dy, x, w, relu_output=y, **kw)

    def loss():
        return np.sum(reference.conv2d_forward(x, w, b, activation="relu", **kw) * dy)

    assert_gradients_match(loss, {"dx": (dx, x), "dw": (dw, w), "db": (db, b)})


def test_reference_conv_forward_matches_a_naive_loop():
    rng = np.random.default_rng(3)
    x, w, b, _, kw = make_conv((2, 7, 6, 2, 3, 2, 3, (2, 1), "same", (2, 1)), rng)
    (SH, SW), (DH, DW), ((pt, pb), (pl, pr)) = kw["strides"], kw["dilation"], kw["padding"]
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    y = reference.conv2d_forward(x, w, b, **kw)
    expected = np.zeros_like(y)
    for n, i, j, f in np.ndindex(y.shape):  # the Notes formula, term by term
        expected[n, i, j, f] = b[f] + sum(
            w[u, v, c, f] * xp[n, SH * i + DH * u, SW * j + DW * v, c]
            for u in range(w.shape[0])
            for v in range(w.shape[1])
            for c in range(w.shape[2])
        )
    assert_sums_close("y", y, expected, *conv_sums(x, w, b, np.zeros_like(y), **kw)["y"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_numba_conv_matches_reference(case, dtype):
    rng = np.random.default_rng(4)
    assert_conv_backends_agree(*make_conv(case, rng, dtype))


def test_numba_conv_is_chunked_like_a_single_pass(monkeypatch):
    # a tiny im2col budget forces one image per chunk (and the dw sum over chunks)
    rng = np.random.default_rng(6)
    x, w, b, dy, kw = make_conv((4, 6, 5, 2, 3, 3, 3, (1, 2), "same", (1, 1)), rng)
    monkeypatch.setattr(im2col, "COLS_BUDGET_BYTES", 1)
    assert_conv_backends_agree(x, w, b, dy, kw)


@st.composite
def conv_problems(draw):
    # 32 channels or filters reach the register tiles (numba/tiles.py)
    N, C, F = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 3, 32])), draw(st.sampled_from([1, 2, 3, 32]))
    H, W = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    assume(H + sum(padding[0]) >= (KH - 1) * dilation[0] + 1)
    assume(W + sum(padding[1]) >= (KW - 1) * dilation[1] + 1)
    return (N, H, W, C), (KH, KW, C, F), dict(strides=strides, padding=padding, dilation=dilation)


@settings(deadline=None, max_examples=30)
@given(problem=conv_problems(), seed=st.integers(0, 2**32 - 1))
# a 1x1 kernel with padding on one side only is not "x itself" for im2col (found by this test)
@example(problem=((1, 1, 1, 1), (1, 1, 1, 1), dict(strides=(1, 1), padding=((0, 0), (0, 1)), dilation=(1, 1))), seed=0)
@example(problem=((2, 5, 6, 32), (2, 3, 32, 32), dict(strides=(1, 1), padding=((1, 0), (2, 1)), dilation=(2, 1))), seed=1)
def test_numba_conv_matches_reference_on_random_problems(problem, seed):
    x_shape, w_shape, kw = problem
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[-1])
    dy = rng.standard_normal(reference.conv2d_forward(x, w, b, **kw).shape)
    assert_conv_backends_agree(x, w, b, dy, kw)


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_conv_matches_pytorch(case, name):
    F = pytest.importorskip("torch.nn.functional")
    rng = np.random.default_rng(7)
    x, w, b, dy, kw = make_conv(case, rng)

    def conv(x, w, b):
        return F.conv2d(torch_pad(x, kw["padding"]), w, b, stride=kw["strides"], dilation=kw["dilation"])

    y_torch, grads = torch_run(conv, dict(x=x, w=w, b=b), dy)
    ours = conv_all(BACKENDS[name], x, w, b, dy, kw)
    sums = conv_sums(x, w, b, dy, **kw)
    for key, expected in dict(y=y_torch, **grads).items():
        assert_sums_close(key, ours[key], expected, *sums[key])


def test_conv_without_bias_equals_zero_bias():
    rng = np.random.default_rng(13)
    x, w, b, _, kw = make_conv((2, 5, 5, 2, 3, 3, 3, (1, 1), "valid", (1, 1)), rng)
    for m in BACKENDS.values():
        np.testing.assert_array_equal(m.conv2d_forward(x, w, None, **kw), m.conv2d_forward(x, w, 0 * b, **kw))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", FUSED_CASES, ids=conv_id)
def test_fused_relu_conv_matches_reference(case, dtype):
    rng = np.random.default_rng(0)
    x, w, b, dy, kw = make_conv(case, rng, dtype)
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


def test_conv_backward_over_many_chunks_and_lanes(monkeypatch):
    # one image per im2col chunk, several chunks per part: dw and db add up in a fixed order
    rng = np.random.default_rng(2)
    x, w, b, dy, kw = make_conv((7, 9, 8, 3, 3, 3, 4, (1, 1), "same"), rng)
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
    x, w, b, dy, kw = make_conv(case, rng)
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
    x, w, b, dy, kw = make_conv((3, 6, 7, 32, 3, 3, 16, (1, 1), "same"), rng, np.float32)
    fast.conv2d_forward(x, w, b, **kw)
    assert not calls   # 16 filters: im2col + BLAS
    x, w, b, dy, kw = make_conv((3, 6, 7, 32, 3, 3, 32, (1, 1), "same"), rng, np.float32)
    y = fast.conv2d_forward(x, w, b, activation="relu", **kw)
    assert len(calls) == 1
    expected = reference.conv2d_backward(dy, x, w, relu_output=y, **kw)
    sums = conv_sums(x, w, b, relu_grad(dy, y), **kw)
    for name, a, e in zip(("dx", "dw", "db"), fast.conv2d_backward(dy, x, w, relu_output=y, **kw), expected):
        assert_conv_close(name, a, e, sums)


@pytest.mark.parametrize("case", [(0, 6, 6, 32, 3, 3, 32, (1, 1), "same"), (0, 6, 6, 3, 3, 3, 32, (1, 1), "valid"),
                                  (0, 6, 6, 3, 3, 3, 4, (1, 1), "same")], ids=conv_id)
def test_an_empty_batch_gives_empty_outputs_and_zero_kernel_gradients(case):
    rng = np.random.default_rng(14)
    x, w, b, dy, kw = make_conv(case, rng, np.float32)
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
           "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _AVX2_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
