"""Tests of the convolution and max-pooling kernels (``minicnn.kernels``).

Four kinds of evidence: finite differences on the reference kernels, Numba vs reference,
PyTorch parity, and properties of the Numba backend (thread-count determinism, dtypes).
"""

import os

import numba
import numpy as np
import pytest
from helpers import assert_sums_close, conv_sums, pool_problems
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from minicnn.kernels import conv_padding, reference
from minicnn.kernels import numba as fast
from minicnn.kernels.numba import _runtime, im2col

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

# (N, H, W, C, pool_size, strides, padding)
POOL_CASES = [
    (2, 6, 6, 3, (2, 2), (2, 2), "valid"),
    (1, 7, 7, 2, (3, 3), (2, 2), "valid"),  # overlapping windows
    (2, 7, 5, 1, (3, 3), (2, 2), "same"),  # overlapping, padded
    (2, 5, 8, 2, (2, 3), (1, 2), "same"),  # non-square pool
    (1, 9, 9, 1, (2, 2), (3, 3), "valid"),  # stride larger than the pool
    (3, 8, 6, 4, (3, 2), (1, 1), "same"),
]


def conv_id(case):
    N, H, W, C, KH, KW, F, s, pad, d = case
    return f"{N}x{H}x{W}x{C}-k{KH}x{KW}x{F}-s{s[0]}{s[1]}-{pad}-d{d[0]}{d[1]}"


def pool_id(case):
    N, H, W, C, pool, s, pad = case
    return f"{N}x{H}x{W}x{C}-p{pool[0]}{pool[1]}-s{s[0]}{s[1]}-{pad}"


def make_conv(case, rng, dtype=np.float64):
    """Random x, w, b and the explicit padding and output gradient of one conv case."""
    N, H, W, C, KH, KW, F, strides, mode, dilation = case
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


def rel_error(a, b):
    """||a - b|| / (||a|| + ||b||), the size of the difference relative to the values."""
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-30)


def numerical_gradient(f, x, h=1e-5):
    """Central differences of the scalar ``f()`` with respect to every entry of ``x`` (in place)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        f_plus = f()
        x[idx] = old - h
        f_minus = f()
        x[idx] = old
        grad[idx] = (f_plus - f_minus) / (2 * h)
    return grad


# ----------------------------------------------------------------------------------------
# 1. Finite differences (reference kernels, float64)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_reference_conv_gradients_match_finite_differences(case):
    rng = np.random.default_rng(1)
    x, w, b, dy, kw = make_conv(case, rng)
    dx = reference.conv2d_backward_input(dy, w, x.shape, **kw)
    dw, db = reference.conv2d_backward_weights(x, dy, w.shape[:2], **kw)

    def loss():  # dL/dy == dy
        return np.sum(reference.conv2d_forward(x, w, b, **kw) * dy)

    for name, analytic, param in (("dx", dx, x), ("dw", dw, w), ("db", db, b)):
        err = rel_error(analytic, numerical_gradient(loss, param))
        assert err < 1e-7, f"{name}: rel_error {err:.2e}"


@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_reference_maxpool_gradient_matches_finite_differences(case):
    rng = np.random.default_rng(2)
    x, dy, kw = make_pool(case, rng)
    y, argmax = reference.maxpool2d_forward(x, **kw)
    dx = reference.maxpool2d_backward(dy, argmax, x.shape, **kw)

    def loss():
        return np.sum(reference.maxpool2d_forward(x, **kw)[0] * dy)

    err = rel_error(dx, numerical_gradient(loss, x))
    assert err < 1e-7, f"dx: rel_error {err:.2e}"


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


# ----------------------------------------------------------------------------------------
# 2. Numba vs reference
# ----------------------------------------------------------------------------------------

def assert_conv_backends_agree(x, w, b, dy, kw):
    expected = conv_all(reference, x, w, b, dy, kw)
    actual = conv_all(fast, x, w, b, dy, kw)
    for name, (abs_sum, n_terms) in conv_sums(x, w, b, dy, **kw).items():
        assert actual[name].dtype == expected[name].dtype, name
        assert_sums_close(name, actual[name], expected[name], abs_sum, n_terms)


def assert_pool_backends_agree(x, dy, kw):
    expected = pool_all(reference, x, dy, kw)
    actual = pool_all(fast, x, dy, kw)
    np.testing.assert_array_equal(actual["argmax"], expected["argmax"], err_msg="argmax")
    np.testing.assert_array_equal(actual["y"], expected["y"], err_msg="y")  # a max is exact
    assert_sums_close("dx", actual["dx"], expected["dx"], *maxpool_dx_sums(dy, expected["argmax"], x.shape, kw))


def maxpool_dx_sums(dy, argmax, x_shape, kw):
    """sum|terms| and K of max-pooling's dx: each pixel adds dy of every window whose max it is,
    at most ceil(P/S) windows along each axis."""
    (PH, PW), (SH, SW) = kw["pool_size"], kw["strides"]
    abs_sum = reference.maxpool2d_backward(np.abs(dy).astype(np.float64), argmax, x_shape, **kw)
    return abs_sum, -(-PH // SH) * -(-PW // SW)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_numba_conv_matches_reference(case, dtype):
    rng = np.random.default_rng(4)
    assert_conv_backends_agree(*make_conv(case, rng, dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_numba_maxpool_matches_reference(case, dtype):
    rng = np.random.default_rng(5)
    assert_pool_backends_agree(*make_pool(case, rng, dtype))


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


@settings(deadline=None, max_examples=30)
@given(problem=pool_problems(), seed=st.integers(0, 2**32 - 1), ties=st.booleans())
def test_numba_maxpool_matches_reference_on_random_problems(problem, seed, ties):
    x_shape, kw = problem
    rng = np.random.default_rng(seed)
    # with ties, few distinct values: both backends must pick the same (first) maximum
    x = rng.integers(0, 3, x_shape).astype(np.float64) if ties else rng.standard_normal(x_shape)
    dy = rng.standard_normal(reference.maxpool2d_forward(x, **kw)[0].shape)
    assert_pool_backends_agree(x, dy, kw)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_maxpool_propagates_nan_like_numpy_argmax(name):
    x = np.array([1.0, np.nan, 3.0, np.nan]).reshape(1, 2, 2, 1)
    y, argmax = BACKENDS[name].maxpool2d_forward(x, (2, 2), (2, 2))
    assert np.isnan(y[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == 1  # the first NaN wins


# ----------------------------------------------------------------------------------------
# 3. PyTorch parity (float64)
# ----------------------------------------------------------------------------------------

# NHWC <-> NCHW for data, (KH, KW, C, F) <-> (F, C, KH, KW) for kernels, as axis orders
TO_TORCH = {"x": (0, 3, 1, 2), "w": (3, 2, 0, 1), "b": (0,)}
FROM_TORCH = {"x": (0, 2, 3, 1), "w": (2, 3, 1, 0), "b": (0,)}


def torch_run(fn, inputs, dy):
    """Feed our arrays to PyTorch; return its output and gradients in our layouts.

    ``inputs`` maps "x", "w", "b" to our NHWC / (KH, KW, C, F) arrays; ``fn`` takes the torch
    tensors by those names and returns an NCHW tensor; ``dy`` is our NHWC output gradient.
    """
    torch = pytest.importorskip("torch")
    tensors = {
        k: torch.from_numpy(np.ascontiguousarray(a.transpose(TO_TORCH[k]))).requires_grad_() for k, a in inputs.items()
    }
    y = fn(**tensors)
    y.backward(torch.from_numpy(np.ascontiguousarray(dy.transpose(TO_TORCH["x"]))))
    grads = {"d" + k: t.grad.numpy().transpose(FROM_TORCH[k]) for k, t in tensors.items()}
    return y.detach().numpy().transpose(FROM_TORCH["x"]), grads


def torch_pad(t, padding, value=0.0):
    """Pad an NCHW tensor explicitly (torch's own padding is symmetric, 'same' may not be)."""
    F = pytest.importorskip("torch.nn.functional")
    (pt, pb), (pl, pr) = padding
    return F.pad(t, (pl, pr, pt, pb), value=value)


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


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_maxpool_matches_pytorch(case, name):
    F = pytest.importorskip("torch.nn.functional")
    rng = np.random.default_rng(8)
    x, dy, kw = make_pool(case, rng)

    def pool(x):
        return F.max_pool2d(torch_pad(x, kw["padding"], -np.inf), kw["pool_size"], kw["strides"])

    y_torch, grads = torch_run(pool, dict(x=x), dy)
    ours = pool_all(BACKENDS[name], x, dy, kw)
    np.testing.assert_array_equal(ours["y"], y_torch, err_msg="y")
    assert_sums_close("dx", ours["dx"], grads["dx"], *maxpool_dx_sums(dy, ours["argmax"], x.shape, kw))


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize(
    "pool_size, strides, padding", [((2, 2), (2, 2), "valid"), ((3, 3), (2, 2), "valid"), ((3, 2), (1, 1), "same")]
)
def test_maxpool_tie_rule_matches_pytorch(name, pool_size, strides, padding):
    F = pytest.importorskip("torch.nn.functional")
    rng = np.random.default_rng(9)
    x = rng.integers(0, 2, (2, 7, 6, 2)).astype(np.float64)  # many ties among 0s and 1s
    x[0, :4, :4, 0] = 5.0  # windows whose cells are all equal
    pad = conv_padding(padding, x.shape[1:3], pool_size, strides)
    kw = dict(pool_size=pool_size, strides=strides, padding=pad)
    dy = rng.uniform(1, 2, reference.maxpool2d_forward(x, **kw)[0].shape)

    def pool(x):
        return F.max_pool2d(torch_pad(x, pad, -np.inf), pool_size, strides)

    _, grads = torch_run(pool, dict(x=x), dy)
    ours = pool_all(BACKENDS[name], x, dy, kw)
    assert_sums_close("dx", ours["dx"], grads["dx"], *maxpool_dx_sums(dy, ours["argmax"], x.shape, kw))
    if pool_size == strides == (2, 2):
        # four all-equal windows: the whole gradient goes to each one's first (top-left) cell
        expected = np.zeros((4, 4))
        expected[::2, ::2] = dy[0, :2, :2, 0]
        np.testing.assert_array_equal(grads["dx"][0, :4, :4, 0], expected, err_msg="torch dx")
        np.testing.assert_array_equal(ours["dx"][0, :4, :4, 0], expected, err_msg="our dx")
        np.testing.assert_array_equal(ours["argmax"][0, :2, :2, 0], 0, err_msg="argmax")


# ----------------------------------------------------------------------------------------
# 4. Determinism of the Numba backend
# ----------------------------------------------------------------------------------------


@pytest.fixture
def restore_threads():
    before = fast.get_num_threads()
    yield
    fast.set_num_threads(before)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_numba_results_do_not_depend_on_thread_count(restore_threads):
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


# ----------------------------------------------------------------------------------------
# 5. Dtypes, layouts and argument checks (both backends)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BACKENDS))
def test_float32_in_float32_out(name):
    rng = np.random.default_rng(11)
    x, w, b, dy, kw = make_conv((2, 6, 5, 2, 3, 3, 3, (2, 1), "same", (1, 1)), rng, np.float32)
    # a float64 kernel or bias must not up-cast float32 data
    for key, value in conv_all(BACKENDS[name], x, w.astype(np.float64), b.astype(np.float64), dy, kw).items():
        assert value.dtype == np.float32, f"{key}: {value.dtype}"
    xp, dyp, kwp = make_pool((2, 7, 5, 2, (3, 3), (2, 2), "same"), rng, np.float32)
    out = pool_all(BACKENDS[name], xp, dyp, kwp)
    assert out["y"].dtype == np.float32 and out["dx"].dtype == np.float32
    assert out["argmax"].dtype == np.int32


@pytest.mark.parametrize("name", list(BACKENDS))
def test_non_contiguous_inputs(name):
    rng = np.random.default_rng(12)
    m = BACKENDS[name]
    x, w, b, dy, kw = make_conv((2, 6, 5, 2, 3, 3, 3, (1, 1), "same", (1, 1)), rng)
    expected = conv_all(m, x, w, b, dy, kw)

    def strided(a):  # same values, every other element of a twice-as-large array
        big = np.zeros(tuple(2 * n for n in a.shape), dtype=a.dtype)
        big[tuple(slice(None, None, 2) for _ in a.shape)] = a
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        assert not view.flags.c_contiguous
        return view

    actual = conv_all(m, strided(x), strided(w), strided(b), strided(dy), kw)
    sums = conv_sums(x, w, b, dy, **kw)
    for key in expected:
        if name == "numba":   # the wrappers copy to contiguous arrays first: the same bits
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
        else:   # NumPy < 2.3 multiplies strided views by another loop than contiguous ones: another order
            assert_sums_close(key, actual[key], expected[key], *sums[key])
    xp, dyp, kwp = make_pool((2, 7, 5, 2, (3, 3), (2, 2), "same"), rng)
    expected = pool_all(m, xp, dyp, kwp)
    actual = pool_all(m, strided(xp), strided(dyp), kwp)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_bad_arguments_raise_clear_errors(name):
    m = BACKENDS[name]
    x = np.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="input channels"):
        m.conv2d_forward(x, np.zeros((3, 3, 3, 1)), None)
    with pytest.raises(ValueError, match="does not fit"):
        m.conv2d_forward(x, np.zeros((5, 3, 2, 1)), None)
    with pytest.raises(ValueError, match="Expected `dy` of shape"):
        m.conv2d_backward_input(np.zeros((1, 3, 3, 1)), np.zeros((3, 3, 2, 1)), x.shape)
    with pytest.raises(TypeError, match="float32 or float64"):
        m.conv2d_forward(x.astype(np.int64), np.zeros((3, 3, 2, 1)), None)
    with pytest.raises(ValueError, match="smaller than the pool"):
        m.maxpool2d_forward(x, (2, 2), (2, 2), ((2, 0), (0, 0)))


def test_conv_without_bias_equals_zero_bias():
    rng = np.random.default_rng(13)
    x, w, b, _, kw = make_conv((2, 5, 5, 2, 3, 3, 3, (1, 1), "valid", (1, 1)), rng)
    for m in BACKENDS.values():
        np.testing.assert_array_equal(m.conv2d_forward(x, w, None, **kw), m.conv2d_forward(x, w, 0 * b, **kw))


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
