"""BatchNormalization, AveragePooling2D, global pooling, ZeroPadding2D, LeakyReLU/ELU/GELU, dilated
convolutions and weight penalties.

The four kinds of evidence, for every new layer and kernel: finite differences in float64 on both
backends, Numba kernels vs reference kernels (case tables and hypothesis), PyTorch parity, and config
and weight round trips; then argument validation and dtypes.
"""

import json
import math
import re

import numba
import numpy as np
import pytest
from helpers import assert_sums_close, assert_within, conv_sums, gamma_n, pool_problems, spaced, unit_roundoff
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import activations, gradcheck, regularizers
from minicnn.gradcheck import numerical_gradient, rel_error
from minicnn.kernels import conv_padding, reference
from minicnn.kernels import numba as fast
from minicnn.layers import (
    ELU,
    Activation,
    AveragePooling2D,
    AvgPool2D,
    BatchNormalization,
    Conv2D,
    Dense,
    GlobalAveragePooling2D,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    GlobalMaxPooling2D,
    LeakyReLU,
    MaxPooling2D,
    ZeroPadding2D,
    deserialize,
    serialize,
)

BACKENDS = {"reference": reference, "numba": fast}


def assert_close(name, actual, expected, rtol, atol=0.0):
    """assert_allclose, naming the array and the index of the worst entry."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual.astype(np.float64) - expected) - rtol * np.abs(expected)
    worst = np.unravel_index(np.argmax(err), err.shape) if err.size else ()
    np.testing.assert_allclose(
        actual, expected, rtol=rtol, atol=atol, err_msg=f"{name}: worst at index {tuple(map(int, worst))}"
    )


def nchw(a):
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def nhwc(a):
    return np.moveaxis(a, 1, -1)


def randomize_bn(layer, rng, moving=False):
    """gamma away from 0, a random beta and (optionally) random moving statistics."""
    C = layer.moving_mean.shape[0]
    if layer.scale:
        layer.params["gamma"][:] = rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C)
    if layer.center:
        layer.params["beta"][:] = rng.standard_normal(C)
    if moving:
        layer.moving_mean[:] = rng.standard_normal(C)
        layer.moving_variance[:] = rng.uniform(0.3, 2.0, C)


# ========================================================================================
# 1. Finite differences (float64, both backends)
# ========================================================================================

BN_CASES = [
    # (x shape, constructor arguments)
    ((4, 5, 6, 3), {}),
    ((2, 3, 3, 1), {"momentum": 0.9, "epsilon": 1e-5}),   # C = 1
    ((1, 4, 5, 2), {}),                                   # N = 1: statistics over H, W only
    ((7, 4), {}),                                         # after a Dense layer
    ((3, 4, 5, 2), {"axis": 1}),                          # statistics per row h
    ((3, 4, 5, 2), {"axis": 2, "center": False}),
    ((5, 3, 2, 4), {"scale": False}),
    ((2, 17, 19, 2), {}),                                 # M = 646 > BN_BLOCK_ROWS: several blocks
]


def bn_id(case):
    shape, kw = case
    return "x".join(map(str, shape)) + "".join(f"-{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", BN_CASES, ids=bn_id)
def test_batchnorm_gradcheck(backend, case, training):
    shape, kw = case
    rng = np.random.default_rng(0)
    layer = BatchNormalization(dtype="float64", **kw)
    layer.build((None,) + shape[1:])
    randomize_bn(layer, rng, moving=True)
    x = rng.standard_normal(shape) * 1.5 + 0.7
    # in training mode every forward pass also moves the moving averages; that does not change
    # the training output, so the function being differentiated stays the same
    report = gradcheck.check_layer(layer, x, training=training, seed=1)
    assert set(report.errors()) == {"input", *layer.params}
    assert report.ok, str(report)


def test_batchnorm_gradcheck_in_a_model(backend):
    """The whole chain: conv -> batch norm -> relu -> average pool -> global pool -> dense -> loss."""
    minicnn.set_floatx("float64")
    try:
        from minicnn.models import Sequential

        rng = np.random.default_rng(2)
        model = Sequential([
            minicnn.Input(shape=(6, 6, 2)),
            Conv2D(3, 3, padding="same", name="conv"),
            BatchNormalization(),
            Activation("gelu"),
            AveragePooling2D(2, strides=1, padding="same"),
            ZeroPadding2D(1),
            GlobalAveragePooling2D(),
            Dense(3, activation="softmax"),
        ])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        randomize_bn(model.layers[1], rng)
        x, y = rng.standard_normal((4, 6, 6, 2)), np.array([0, 1, 2, 1])
        report = gradcheck.check_model(model, x, y)
        # batch norm subtracts each channel's mean, so a conv bias before it cannot change the
        # loss: its gradient is 0 (up to rounding) and the relative error compares noise with noise
        errors = {k: v for k, v in report.errors().items() if k != "conv/bias"}
        assert max(errors.values()) < 1e-7, str(report)
        model.compute_gradients(x, y)
        assert np.abs(model.layers[0].grads["bias"]).max() < 1e-12
    finally:
        minicnn.set_floatx("float32")


AVGPOOL_CASES = [
    # (x shape, pool_size, strides, padding)
    ((2, 6, 6, 3), 2, None, "valid"),
    ((2, 7, 7, 2), 2, None, "same"),
    ((1, 7, 5, 1), 3, 2, "valid"),          # overlapping windows, N = 1, C = 1
    ((2, 6, 7, 2), (3, 2), (2, 1), "same"), # asymmetric 'same' padding
    ((1, 5, 5, 1), 5, 1, "valid"),
    ((2, 5, 4, 3), 3, 1, "same"),           # every border window partly padded
    ((1, 9, 9, 2), 2, 3, "valid"),          # stride larger than the pool
]


def pool_id(case):
    shape, pool, strides, padding = case
    return f"{'x'.join(map(str, shape))}-p{pool}-s{strides}-{padding}"


@pytest.mark.parametrize("case", AVGPOOL_CASES, ids=pool_id)
def test_avgpool_gradcheck(backend, case):
    shape, pool, strides, padding = case
    layer = AveragePooling2D(pool, strides=strides, padding=padding, dtype="float64")
    report = gradcheck.check_layer(layer, np.random.default_rng(3).standard_normal(shape), seed=4)
    assert report.ok, str(report)


@pytest.mark.parametrize(
    "layer",
    [
        GlobalAveragePooling2D(dtype="float64"),
        GlobalAveragePooling2D(keepdims=True, dtype="float64"),
        GlobalMaxPooling2D(dtype="float64"),
        GlobalMaxPooling2D(keepdims=True, dtype="float64"),
        ZeroPadding2D(dtype="float64"),
        ZeroPadding2D(((0, 2), (3, 1)), dtype="float64"),
        LeakyReLU(dtype="float64"),
        LeakyReLU(negative_slope=0.05, dtype="float64"),
        ELU(dtype="float64"),
        ELU(alpha=0.5, dtype="float64"),
        Activation("gelu", dtype="float64"),
        Activation("elu", dtype="float64"),
        Activation("leaky_relu", dtype="float64"),
    ],
    ids=lambda layer: f"{type(layer).__name__}-{layer.get_config()}",
)
def test_weightless_layers_gradcheck(backend, layer):
    x = spaced(np.random.default_rng(5), (2, 5, 4, 3)) * 0.8   # values in about [-2.4, 2.4]
    report = gradcheck.check_layer(layer, x, seed=6)
    assert report.ok, str(report)


@pytest.mark.parametrize(
    "fn",
    [activations.LeakyReLU(0.1), activations.ELU(2.0), activations.GELU(), activations.GELU(approximate=True)],
    ids=lambda fn: f"{fn.name}-{vars(fn)}",
)
def test_activation_functions_gradcheck(fn):
    rng = np.random.default_rng(7)
    z = spaced(rng, (4, 25)) * 0.3                  # [-15, 15]: the tails of elu and gelu too
    dy = rng.standard_normal(z.shape)
    fn.forward(z)
    dz = fn.backward(dy)
    numeric = numerical_gradient(lambda: float(np.sum(fn.forward(z) * dy)), z)
    assert rel_error(dz, numeric) < 1e-7


DILATED_CASES = [
    # (x shape, filters, kernel_size, padding, dilation_rate)
    ((2, 9, 9, 2), 3, 3, "same", 2),
    ((2, 9, 9, 2), 3, 3, "valid", 2),
    ((1, 11, 10, 1), 2, (3, 2), "same", 3),
    ((2, 10, 11, 2), 2, 3, "valid", 3),
    ((1, 8, 9, 3), 2, (2, 3), "same", (2, 3)),   # even kernel: asymmetric 'same' padding
]


def dilated_id(case):
    shape, filters, k, padding, d = case
    return f"{'x'.join(map(str, shape))}-f{filters}-k{k}-{padding}-d{d}"


@pytest.mark.parametrize("case", DILATED_CASES, ids=dilated_id)
def test_dilated_conv2d_gradcheck(backend, case):
    shape, filters, k, padding, d = case
    rng = np.random.default_rng(8)
    layer = Conv2D(filters, k, padding=padding, dilation_rate=d, dtype="float64")
    layer.build((None,) + shape[1:])
    layer.params["bias"][:] = rng.standard_normal(filters)
    report = gradcheck.check_layer(layer, rng.standard_normal(shape), seed=9)
    assert report.ok, str(report)


@pytest.mark.parametrize(
    "make",
    [lambda r: Conv2D(3, 2, kernel_regularizer=r, dtype="float64"), lambda r: Dense(4, kernel_regularizer=r, dtype="float64")],
    ids=["Conv2D", "Dense"],
)
@pytest.mark.parametrize(
    "reg", [regularizers.l2(0.01), regularizers.l1(0.02), regularizers.l1_l2(0.01, 0.03)], ids=["l2", "l1", "l1_l2"]
)
def test_regularizer_gradient_matches_finite_differences_of_the_penalty(make, reg):
    rng = np.random.default_rng(10)
    layer = make(reg)
    layer.build((None, 4, 4, 2) if isinstance(layer, Conv2D) else (None, 5))
    w = layer.params["kernel"]
    w[:] = spaced(rng, w.shape)                      # away from the kink of |w| at 0
    assert layer.regularization_penalty() == pytest.approx(reg.l1 * np.abs(w).sum() + reg.l2 * np.square(w).sum())
    upstream = rng.standard_normal(w.shape)          # the loss's own gradient, already in grads
    layer.grads["kernel"] = upstream.copy()
    layer.add_regularization_gradients()
    numeric = numerical_gradient(layer.regularization_penalty, w)
    assert rel_error(layer.grads["kernel"] - upstream, numeric) < 1e-7
    assert layer.grads["bias"].shape == layer.params["bias"].shape   # the bias is not penalised


# ========================================================================================
# 2. Numba kernels vs reference kernels
# ========================================================================================

def avgpool_all(m, x, dy, kw):
    y = m.avgpool2d_forward(x, **kw)
    return dict(y=y, dx=m.avgpool2d_backward(dy, x.shape, **kw))


def avgpool_sums(x, dy, kw):
    """``{name: (sum|terms|, K)}`` of average pooling (see ``helpers.float_sum_bound``): y is a sum of
    at most PH*PW cells then a division; dx adds dy / count of the at most ceil(P/S) windows along
    each axis that hold the pixel."""
    (PH, PW), (SH, SW) = kw["pool_size"], kw["strides"]
    y = reference.avgpool2d_forward(np.abs(x).astype(np.float64), **kw)
    dx = reference.avgpool2d_backward(np.abs(dy).astype(np.float64), x.shape, **kw)
    return dict(y=(y, PH * PW + 1), dx=(dx, -(-PH // SH) * -(-PW // SW) + 1))


def bn_all(m, x, gamma, beta, dy, eps):
    y, mean, var = m.batchnorm_forward_train(x, gamma, beta, eps)
    # both backends differentiate at the same statistics (the reference ones)
    r_mean, r_var = reference.batchnorm_forward_train(x, gamma, beta, eps)[1:]
    dx, dgamma, dbeta = m.batchnorm_backward(dy, x, gamma, r_mean, r_var, eps)
    return dict(y=y, mean=mean, var=var, dx=dx, dgamma=dgamma, dbeta=dbeta), (r_mean, r_var)


def bn_bounds(x, gamma, beta, dy, eps, r_mean, r_var):
    """Largest |difference| between two float computations of each output of :func:`bn_all`.

    Each computation's error, to first order in u, from the sums' bound (``helpers.float_sum_bound``)
    and a few roundings per value, in the inputs' dtype; the differences are at most twice that.
    Forward, with d = x - mean over M rows:

    - mean: a sum of M terms then a division: e_m = gamma_{M+1} * mean|x|;
    - var = mean(d**2): the mean's error cancels to first order (sum(d) = 0), so
      e_v = gamma_{M+3} * (var + e_m**2) + e_m**2;
    - y = g * d / sqrt(var + eps) + beta: e_y = |g| * inv * (e_m + |d| * (e_v / (2 (var + eps)) + 4u))
      + 3u * (|g| * |d| * inv + |beta|).

    Backward, at the same (given) statistics, xhat = (x - mean) * inv rounded 5u at most:
    dbeta sums M terms |dy|, dgamma M terms |dy * xhat| (+5 roundings), and
    dx = g * inv * (dy - dbeta / M - xhat * dgamma / M) inherits both sums' errors:
    e_dx = gamma_{M+9} * |g| * inv * (|dy| + sum|dy| / M + |xhat| * sum|dy * xhat| / M).
    """
    dtype = np.result_type(x.dtype, dy.dtype)
    u = unit_roundoff(dtype)
    C = x.shape[-1]
    x2, dy2 = x.reshape(-1, C).astype(np.float64), dy.reshape(-1, C).astype(np.float64)
    M = x2.shape[0]
    ag, ab = np.abs(gamma).astype(np.float64), np.abs(beta).astype(np.float64)
    mean = x2.mean(axis=0)
    d = np.abs(x2 - mean)
    var = (d**2).mean(axis=0)
    inv = 1 / np.sqrt(var + eps)
    e_m = gamma_n(M + 1, dtype) * np.abs(x2).mean(axis=0)
    e_v = gamma_n(M + 3, dtype) * (var + e_m**2) + e_m**2
    e_y = ag * inv * (e_m + d * (e_v / (2 * (var + eps)) + 4 * u)) + 3 * u * (ag * d * inv + ab)
    r_inv = 1 / np.sqrt(np.asarray(r_var, np.float64) + eps)
    xhat = np.abs(x2 - r_mean) * r_inv
    s_dbeta, s_dgamma = np.abs(dy2).sum(axis=0), np.abs(dy2 * xhat).sum(axis=0)
    e_dx = gamma_n(M + 9, dtype) * ag * r_inv * (np.abs(dy2) + s_dbeta / M + xhat * s_dgamma / M)
    bounds = dict(mean=e_m, var=e_v, y=e_y, dbeta=gamma_n(M, dtype) * s_dbeta,
                  dgamma=gamma_n(M + 5, dtype) * s_dgamma, dx=e_dx)
    return {k: 2 * v.reshape(x.shape if k in ("y", "dx") else (C,)) for k, v in bounds.items()}


def assert_avgpool_backends_agree(x, dy, kw):
    expected, actual = avgpool_all(reference, x, dy, kw), avgpool_all(fast, x, dy, kw)
    for name, (abs_sum, n_terms) in avgpool_sums(x, dy, kw).items():
        assert actual[name].dtype == expected[name].dtype, name
        assert_sums_close(name, actual[name], expected[name], abs_sum, n_terms)


def assert_bn_backends_agree(x, gamma, beta, dy, eps=1e-3):
    # the two backends sum M rows in different orders (NumPy pairwise in the dtype of x, Numba
    # in float64 blocks); dx is a difference of terms that can cancel almost exactly (M = 2)
    (expected, stats), (actual, _) = bn_all(reference, x, gamma, beta, dy, eps), bn_all(fast, x, gamma, beta, dy, eps)
    bounds = bn_bounds(x, gamma, beta, dy, eps, *stats)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        assert_within(name, actual[name], value, bounds[name], "the float bound of bn_bounds")


def make_avgpool(case, rng, dtype):
    shape, pool, strides, mode = case
    pool = (pool, pool) if isinstance(pool, int) else pool
    strides = pool if strides is None else (strides, strides) if isinstance(strides, int) else strides
    kw = dict(pool_size=pool, strides=strides, padding=conv_padding(mode, shape[1:3], pool, strides))
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(reference.avgpool2d_forward(x, **kw).shape).astype(dtype)
    return x, dy, kw


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", AVGPOOL_CASES, ids=pool_id)
def test_numba_avgpool_matches_reference(case, dtype):
    assert_avgpool_backends_agree(*make_avgpool(case, np.random.default_rng(11), dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "shape", [(4, 5, 6, 3), (1, 1, 1, 1), (2, 1), (7, 4), (3, 17, 13, 5), (1, 256, 1), (1, 257, 2), (2, 3, 4, 5, 2)]
)
def test_numba_batchnorm_matches_reference(shape, dtype):
    rng = np.random.default_rng(12)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    gamma, beta = rng.standard_normal(shape[-1]).astype(dtype), rng.standard_normal(shape[-1]).astype(dtype)
    assert_bn_backends_agree(x, gamma, beta, rng.standard_normal(shape).astype(dtype))


@settings(deadline=None, max_examples=40)
@given(problem=pool_problems(), seed=st.integers(0, 2**32 - 1))
def test_numba_avgpool_matches_reference_on_random_problems(problem, seed):
    x_shape, kw = problem
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    dy = rng.standard_normal(reference.avgpool2d_forward(x, **kw).shape)
    assert_avgpool_backends_agree(x, dy, kw)


@settings(deadline=None, max_examples=40)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple),
    N=st.integers(1, 40),
    C=st.integers(1, 4),
    offset=st.floats(-5, 5),
    spread=st.floats(0.1, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_numba_batchnorm_matches_reference_on_random_problems(shape, N, C, offset, spread, seed):
    rng = np.random.default_rng(seed)
    shape = (N, *shape[:-1], C)   # 2-D to 4-D inputs, up to 40*9*9 = 3240 rows
    x = rng.standard_normal(shape) * spread + offset
    assert_bn_backends_agree(x, rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(shape))


@pytest.fixture
def restore_threads():
    before = fast.get_num_threads()
    yield
    fast.set_num_threads(before)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_new_numba_kernels_do_not_depend_on_thread_count(restore_threads):
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


@pytest.mark.parametrize("name", list(BACKENDS))
def test_new_kernels_keep_float32_and_accept_non_contiguous_input(name):
    m = BACKENDS[name]
    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 6, 5, 4)).astype(np.float32)
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)   # float64 parameters must not up-cast
    y, mean, var = m.batchnorm_forward_train(x, gamma, beta, 1e-3)
    outputs = [y, mean, var, *m.batchnorm_backward(np.ones_like(x), x, gamma, mean, var, 1e-3)]
    kw = dict(pool_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    yp = m.avgpool2d_forward(x, **kw)
    outputs += [yp, m.avgpool2d_backward(yp, x.shape, **kw)]
    assert [o.dtype for o in outputs] == [np.float32] * len(outputs)
    strided = np.zeros((6, 12, 10, 8))[::2, ::2, ::2, ::2]
    strided[:] = x
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(m.avgpool2d_forward(strided, **kw), m.avgpool2d_forward(x.astype(np.float64), **kw))
    np.testing.assert_array_equal(
        m.batchnorm_forward_train(strided, gamma, beta, 1e-3)[0],
        m.batchnorm_forward_train(x.astype(np.float64), gamma, beta, 1e-3)[0],
    )


@pytest.mark.parametrize("name", list(BACKENDS))
def test_new_kernels_raise_clear_errors(name):
    m = BACKENDS[name]
    x = np.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"`gamma` of shape \(3,\)"):
        m.batchnorm_forward_train(x, np.ones(2), np.zeros(3), 1e-3)
    with pytest.raises(ValueError, match="epsilon"):
        m.batchnorm_forward_train(x, np.ones(3), np.zeros(3), -1.0)
    with pytest.raises(ValueError, match="non-empty"):
        m.batchnorm_forward_train(np.zeros((0, 3)), np.ones(3), np.zeros(3), 1e-3)
    with pytest.raises(ValueError, match="Expected `dy` of shape"):
        m.batchnorm_backward(np.zeros((2, 4, 4, 2)), x, np.ones(3), np.zeros(3), np.ones(3), 1e-3)
    with pytest.raises(TypeError, match="float32 or float64"):
        m.avgpool2d_forward(x.astype(np.int32), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="smaller than the pool"):
        m.avgpool2d_forward(x, (2, 2), (2, 2), ((2, 0), (0, 0)))
    with pytest.raises(ValueError, match="Expected `dy` of shape"):
        m.avgpool2d_backward(np.zeros((2, 3, 3, 3)), x.shape, (2, 2), (2, 2))


def test_kernels_dispatch_to_the_active_backend(backend):
    assert minicnn.kernels.avgpool2d_forward is BACKENDS[backend].avgpool2d_forward
    assert minicnn.kernels.batchnorm_backward is BACKENDS[backend].batchnorm_backward


# ========================================================================================
# 3. Against the formulas, naive loops and PyTorch (float64)
# ========================================================================================


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("case", AVGPOOL_CASES, ids=pool_id)
def test_avgpool_matches_a_naive_loop(name, case):
    x, _, kw = make_avgpool(case, np.random.default_rng(15), np.float64)
    (PH, PW), (SH, SW), ((pt, _), (pl, _)) = kw["pool_size"], kw["strides"], kw["padding"]
    y = BACKENDS[name].avgpool2d_forward(x, **kw)
    N, H, W, C = x.shape
    expected = np.zeros_like(y)
    for n, i, j, c in np.ndindex(y.shape):   # the Notes formula: mean over the cells inside x
        cells = [x[n, p, q, c] for u in range(PH) for v in range(PW)
                 if 0 <= (p := SH * i + u - pt) < H and 0 <= (q := SW * j + v - pl) < W]
        expected[n, i, j, c] = sum(cells) / len(cells)
    assert_sums_close("y", y, expected, *avgpool_sums(x, np.zeros_like(y), kw)["y"])


def test_same_avgpool_leaves_the_padding_out():
    layer = AveragePooling2D(3, strides=1, padding="same", dtype="float64")
    y = layer(np.ones((1, 4, 5, 2)))
    np.testing.assert_array_equal(y, 1.0)   # counting padded zeros would give 4/9 in the corners


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize(
    "shape, pool, strides",
    [((2, 7, 7, 3), 3, 1), ((2, 5, 9, 2), 3, 2), ((1, 9, 9, 1), (5, 3), (1, 2)), ((2, 6, 6, 2), 2, 2)],
)
def test_avgpool_matches_torch_where_same_padding_is_symmetric(name, shape, pool, strides):
    torch = pytest.importorskip("torch")
    x, dy, kw = make_avgpool((shape, pool, strides, "same"), np.random.default_rng(16), np.float64)
    (pt, pb), (pl, pr) = kw["padding"]
    assert pt == pb and pl == pr, "torch pads symmetrically: choose a case where 'same' does too"
    xt = torch.tensor(nchw(x), requires_grad=True)
    yt = torch.nn.functional.avg_pool2d(xt, kw["pool_size"], kw["strides"], padding=(pt, pl), count_include_pad=False)
    yt.backward(torch.tensor(nchw(dy)))
    ours, sums = avgpool_all(BACKENDS[name], x, dy, kw), avgpool_sums(x, dy, kw)
    assert_sums_close("y", ours["y"], nhwc(yt.detach().numpy()), *sums["y"])
    assert_sums_close("dx", ours["dx"], nhwc(xt.grad.numpy()), *sums["dx"])


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_matches_torch(backend, keepdims):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(17)
    x = spaced(rng, (3, 5, 4, 6))   # no ties
    for layer, fn in ((GlobalAveragePooling2D(keepdims=keepdims, dtype="float64"), F.adaptive_avg_pool2d),
                      (GlobalMaxPooling2D(keepdims=keepdims, dtype="float64"), F.adaptive_max_pool2d)):
        y = layer.forward(x)
        dy = rng.standard_normal(y.shape)
        dx = layer.backward(dy)
        xt = torch.tensor(nchw(x), requires_grad=True)
        yt = fn(xt, 1)                                   # (N, C, 1, 1)
        yt.backward(torch.tensor(nchw(dy.reshape(3, 1, 1, 6))))
        assert y.shape == ((3, 1, 1, 6) if keepdims else (3, 6))
        # the mean of 5*4 cells: a sum of 20 terms and a division; dx = dy / 20 one rounding (a max is exact)
        assert_sums_close("y", y.reshape(3, 6), yt.detach().numpy().reshape(3, 6), np.abs(x).mean(axis=(1, 2)), 21)
        assert_sums_close("dx", dx, nhwc(xt.grad.numpy()), np.broadcast_to(np.abs(dy).reshape(3, 1, 1, 6), x.shape), 1)


def test_global_max_pooling_gives_ties_to_the_first_maximum(backend):
    x = np.zeros((2, 3, 4, 2))
    x[0, 1, 2, 0] = x[0, 2, 0, 0] = 5.0                  # two maxima in channel 0 of image 0
    layer = GlobalMaxPooling2D(dtype="float64")
    layer(x)
    dx = layer.backward(np.ones((2, 2)))
    expected = np.zeros_like(x)
    expected[0, 1, 2, 0] = 1.0                           # the first in row-major (h, w) order
    expected[0, 0, 0, 1] = expected[1, 0, 0, 0] = expected[1, 0, 0, 1] = 1.0   # all-equal: the first cell
    np.testing.assert_array_equal(dx, expected)
    pool = MaxPooling2D((3, 4), dtype="float64")         # the same rule as MaxPooling2D
    pool(x)
    np.testing.assert_array_equal(pool.backward(np.ones((2, 1, 1, 2))), expected)


def torch_bn(torch, C, ndim, momentum, epsilon):
    cls = torch.nn.BatchNorm1d if ndim == 2 else torch.nn.BatchNorm2d
    return cls(C, eps=epsilon, momentum=1 - momentum, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (1, 3, 4, 2), (8, 5)], ids=["nhwc", "N=1", "dense"])
def test_batchnorm_training_matches_torch(backend, shape):
    """Outputs, gradients and the moving mean agree; the moving variances differ by design.

    PyTorch updates ``running_var`` with the unbiased batch variance (divide by M - 1), Keras and
    minicnn ``moving_variance`` with the biased one (divide by M), the one both normalise with.
    """
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(18)
    C, momentum, eps = shape[-1], 0.9, 1e-3
    layer = BatchNormalization(momentum=momentum, epsilon=eps, dtype="float64")
    layer.build((None,) + shape[1:])
    randomize_bn(layer, rng)
    bn = torch_bn(torch, C, len(shape), momentum, eps)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(layer.params["gamma"]))
        bn.bias.copy_(torch.tensor(layer.params["beta"]))
    keras_var, torch_var = np.ones(C), np.ones(C)
    axes = tuple(range(len(shape) - 1))
    for step in range(3):
        x = rng.standard_normal(shape) * 2 + step
        y = layer.forward(x, training=True)
        dy = rng.standard_normal(y.shape)
        dx = layer.backward(dy)
        xt = torch.tensor(nchw(x), requires_grad=True)
        bn.zero_grad()
        yt = bn(xt)
        yt.backward(torch.tensor(nchw(dy)))
        x2 = x.reshape(-1, C)
        bounds = bn_bounds(x, layer.params["gamma"], layer.params["beta"], dy, eps, x2.mean(axis=0), x2.var(axis=0))
        for name, ours, theirs in (("y", y, nhwc(yt.detach().numpy())), ("dx", dx, nhwc(xt.grad.numpy())),
                                   ("dgamma", layer.grads["gamma"], bn.weight.grad.numpy()),
                                   ("dbeta", layer.grads["beta"], bn.bias.grad.numpy())):
            assert_within(name, ours, theirs, bounds[name], "the float bound of bn_bounds")
        assert_close("moving_mean", layer.moving_mean, bn.running_mean.numpy(), rtol=1e-12, atol=1e-14)
        M = x.size // C
        keras_var = momentum * keras_var + (1 - momentum) * x.var(axis=axes)
        torch_var = momentum * torch_var + (1 - momentum) * x.var(axis=axes, ddof=1)
        assert_close("moving_variance (Keras: biased)", layer.moving_variance, keras_var, rtol=1e-12)
        assert_close("torch running_var (unbiased)", bn.running_var.numpy(), torch_var, rtol=1e-12)
    if M > 1:
        assert not np.allclose(layer.moving_variance, bn.running_var.numpy(), rtol=1e-6)


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (8, 5)], ids=["nhwc", "dense"])
def test_batchnorm_inference_matches_torch(backend, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(19)
    layer = BatchNormalization(epsilon=1e-5, dtype="float64")
    layer.build((None,) + shape[1:])
    randomize_bn(layer, rng, moving=True)
    bn = torch_bn(torch, shape[-1], len(shape), 0.99, 1e-5)
    with torch.no_grad():
        for t, a in ((bn.weight, "gamma"), (bn.bias, "beta")):
            t.copy_(torch.tensor(layer.params[a]))
        bn.running_mean.copy_(torch.tensor(layer.moving_mean))
        bn.running_var.copy_(torch.tensor(layer.moving_variance))
    bn.eval()
    x = rng.standard_normal(shape)
    y = layer.forward(x, training=False)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    xt = torch.tensor(nchw(x), requires_grad=True)
    yt = bn(xt)
    yt.backward(torch.tensor(nchw(dy)))
    # inference: y = gamma * (x - mean) * inv_std + beta, a few roundings per value; dgamma and dbeta
    # sum M terms each (|dy * xhat| and |dy|); dx = dy * gamma * inv_std, a few roundings
    M, C = x.size // shape[-1], shape[-1]
    inv_std = 1 / np.sqrt(layer.moving_variance + 1e-5)
    xhat = np.abs(x - layer.moving_mean) * inv_std
    gamma, beta = np.abs(layer.params["gamma"]), np.abs(layer.params["beta"])
    assert_sums_close("y", y, nhwc(yt.detach().numpy()), gamma * xhat + beta + np.abs(layer.moving_mean) * gamma * inv_std, 6)
    assert_sums_close("dx", dx, nhwc(xt.grad.numpy()), np.abs(dy) * gamma * inv_std, 4)
    assert_sums_close("dgamma", layer.grads["gamma"], bn.weight.grad.numpy(), (np.abs(dy) * xhat).reshape(M, C).sum(axis=0), M + 6)
    assert_sums_close("dbeta", layer.grads["beta"], bn.bias.grad.numpy(), np.abs(dy).reshape(M, C).sum(axis=0), M)


def test_batchnorm_axis_normalises_along_that_axis(backend):
    rng = np.random.default_rng(20)
    x = rng.standard_normal((3, 4, 5, 2)) * 3 + 1
    layer = BatchNormalization(axis=1, epsilon=1e-3, momentum=0.5, dtype="float64")
    layer.build((None, 4, 5, 2))
    randomize_bn(layer, rng)
    y = layer.forward(x, training=True)
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    gamma, beta = layer.params["gamma"].reshape(1, 4, 1, 1), layer.params["beta"].reshape(1, 4, 1, 1)
    assert_close("y", y, gamma * (x - mean) / np.sqrt(var + 1e-3) + beta, rtol=1e-12, atol=1e-12)
    assert_close("moving_mean", layer.moving_mean, 0.5 * mean.ravel(), rtol=1e-12)
    assert_close("moving_variance", layer.moving_variance, 0.5 + 0.5 * var.ravel(), rtol=1e-12)


def test_batchnorm_moving_averages_follow_keras_and_inference_uses_them():
    rng = np.random.default_rng(21)
    layer = BatchNormalization(momentum=0.8, dtype="float64")
    x1, x2 = rng.standard_normal((6, 2, 2, 3)) + 2, rng.standard_normal((6, 2, 2, 3)) * 3
    layer.build((None, 2, 2, 3))
    held = layer.get_weights()[2]                      # a copy, and a live reference below
    live = layer.moving_mean
    layer(x2)                                          # inference: statistics unchanged
    np.testing.assert_array_equal(layer.moving_mean, held)
    layer.forward(x1, training=True)
    layer.forward(x2, training=True)
    axes = (0, 1, 2)
    expected_mean = 0.8 * (0.2 * x1.mean(axis=axes)) + 0.2 * x2.mean(axis=axes)
    expected_var = 0.8 * (0.8 + 0.2 * x1.var(axis=axes)) + 0.2 * x2.var(axis=axes)
    assert_close("moving_mean", layer.moving_mean, expected_mean, rtol=1e-12)
    assert_close("moving_variance", layer.moving_variance, expected_var, rtol=1e-12)
    assert live is layer.moving_mean                   # updated in place: model.weights stays live
    y = layer(x1)                                      # inference: the moving averages
    assert_close("y", y, (x1 - expected_mean) / np.sqrt(expected_var + 1e-3), rtol=1e-12, atol=1e-12)


def test_frozen_batchnorm_runs_in_inference_mode_even_when_training():
    rng = np.random.default_rng(22)
    layer = BatchNormalization(trainable=False, dtype="float64")
    layer.build((None, 3, 3, 2))
    randomize_bn(layer, rng, moving=True)
    before = layer.get_weights()
    x = rng.standard_normal((4, 3, 3, 2))
    np.testing.assert_array_equal(layer.forward(x, training=True), layer.forward(x, training=False))
    for a, b in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(a, b)            # Keras 3: trainable=False freezes the statistics


@pytest.mark.parametrize(
    "layer, fn",
    [
        (LeakyReLU(dtype="float64"), lambda F, t: F.leaky_relu(t, 0.3)),
        (LeakyReLU(0.01, dtype="float64"), lambda F, t: F.leaky_relu(t, 0.01)),
        (Activation("leaky_relu", dtype="float64"), lambda F, t: F.leaky_relu(t, 0.2)),
        (ELU(alpha=1.5, dtype="float64"), lambda F, t: F.elu(t, 1.5)),
        (Activation("elu", dtype="float64"), lambda F, t: F.elu(t)),
        (Activation("gelu", dtype="float64"), lambda F, t: F.gelu(t)),
        (ZeroPadding2D(((1, 0), (2, 3)), dtype="float64"), lambda F, t: F.pad(t, (2, 3, 1, 0))),
    ],
    ids=lambda v: f"{type(v).__name__}-{v.get_config()}" if hasattr(v, "get_config") else "",
)
def test_elementwise_and_padding_layers_match_torch(layer, fn):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(23)
    x = rng.standard_normal((2, 4, 5, 3)) * 3
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    xt = torch.tensor(nchw(x), requires_grad=True)
    yt = fn(torch.nn.functional, xt)
    yt.backward(torch.tensor(nchw(dy)))
    assert_close("y", y, nhwc(yt.detach().numpy()), rtol=1e-12, atol=1e-14)
    assert_close("dx", dx, nhwc(xt.grad.numpy()), rtol=1e-12, atol=1e-14)


def test_gelu_tanh_approximation_matches_torch():
    torch = pytest.importorskip("torch")
    z = np.linspace(-6, 6, 101)
    fn = activations.GELU(approximate=True)
    y = fn.forward(z)
    dz = fn.backward(np.ones_like(z))
    zt = torch.tensor(z, requires_grad=True)
    yt = torch.nn.functional.gelu(zt, approximate="tanh")
    yt.sum().backward()
    assert_close("y", y, yt.detach().numpy(), rtol=1e-12, atol=1e-15)
    assert_close("dz", dz, zt.grad.numpy(), rtol=1e-12, atol=1e-14)   # 0.5 * (1 + t) cancels for t ~ -1


@pytest.mark.parametrize("case", DILATED_CASES, ids=dilated_id)
def test_dilated_conv2d_matches_torch(backend, case):
    torch = pytest.importorskip("torch")
    shape, filters, k, padding, d = case
    rng = np.random.default_rng(24)
    layer = Conv2D(filters, k, padding=padding, dilation_rate=d, dtype="float64")
    layer.build((None,) + shape[1:])
    layer.params["bias"][:] = rng.standard_normal(filters)
    x = rng.standard_normal(shape)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    (pt, pb), (pl, pr) = conv_padding(padding, shape[1:3], layer.kernel_size, layer.strides, layer.dilation_rate)
    xt = torch.tensor(nchw(x), requires_grad=True)
    wt = torch.tensor(layer.params["kernel"].transpose(3, 2, 0, 1), requires_grad=True)
    bt = torch.tensor(layer.params["bias"], requires_grad=True)
    yt = torch.nn.functional.conv2d(torch.nn.functional.pad(xt, (pl, pr, pt, pb)), wt, bt, dilation=layer.dilation_rate)
    yt.backward(torch.tensor(nchw(dy)))
    if padding == "same":
        assert y.shape[1:3] == shape[1:3]
    sums = conv_sums(x, layer.params["kernel"], layer.params["bias"], dy, layer.strides, ((pt, pb), (pl, pr)), layer.dilation_rate)
    assert_sums_close("y", y, nhwc(yt.detach().numpy()), *sums["y"])
    assert_sums_close("dx", dx, nhwc(xt.grad.numpy()), *sums["dx"])
    assert_sums_close("dkernel", layer.grads["kernel"], wt.grad.numpy().transpose(2, 3, 1, 0), *sums["dw"])
    assert_sums_close("dbias", layer.grads["bias"], bt.grad.numpy(), *sums["db"])


def test_string_activations_follow_keras_defaults():
    z = np.array([-2.0, -0.5, 0.5, 2.0])
    np.testing.assert_allclose(activations.get("leaky_relu").forward(z), [-0.4, -0.1, 0.5, 2.0])   # slope 0.2
    np.testing.assert_allclose(LeakyReLU(dtype="float64")(z[None]), [[-0.6, -0.15, 0.5, 2.0]])     # layer: 0.3
    np.testing.assert_allclose(activations.elu(z), [math.expm1(-2), math.expm1(-0.5), 0.5, 2.0])
    np.testing.assert_allclose(activations.gelu(z), [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z], rtol=1e-15)
    layer = Dense(3, activation="gelu")
    assert layer.get_config()["activation"] == "gelu"
    with pytest.raises(ValueError) as info:
        Dense(3, activation="swish_me")
    for name in ("leaky_relu", "elu", "gelu"):
        assert name in str(info.value)


# ========================================================================================
# 4. Config, weights and saving
# ========================================================================================

LAYERS_FOR_CONFIG = [
    lambda: BatchNormalization(),
    lambda: BatchNormalization(axis=1, momentum=0.9, epsilon=1e-5, center=False, gamma_initializer="random_normal",
                               moving_variance_initializer="zeros", name="bn"),
    lambda: AveragePooling2D(),
    lambda: AveragePooling2D((3, 2), strides=(1, 2), padding="same", name="avg"),
    lambda: GlobalAveragePooling2D(),
    lambda: GlobalMaxPooling2D(keepdims=True),
    lambda: ZeroPadding2D(),
    lambda: ZeroPadding2D(((1, 2), (3, 4))),
    lambda: LeakyReLU(),
    lambda: LeakyReLU(negative_slope=0.1),
    lambda: ELU(alpha=0.7),
    lambda: Dense(3, activation="leaky_relu"),
    lambda: Conv2D(2, 3, activation="gelu", dilation_rate=3),
]


@pytest.mark.parametrize("make", LAYERS_FOR_CONFIG)
def test_config_round_trip(make):
    layer = make()
    data = json.loads(json.dumps(serialize(layer)))   # must survive JSON
    clone = deserialize(data)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


def test_padding_forms_and_aliases():
    assert ZeroPadding2D(2).padding == ((2, 2), (2, 2))
    assert ZeroPadding2D((1, 3)).padding == ((1, 1), (3, 3))
    assert ZeroPadding2D([[0, 1], [2, 3]]).padding == ((0, 1), (2, 3))
    assert ZeroPadding2D((1, 3)).compute_output_shape((None, 5, None, 2)) == (None, 7, None, 2)
    assert AvgPool2D is AveragePooling2D and GlobalAvgPool2D is GlobalAveragePooling2D
    assert GlobalMaxPool2D is GlobalMaxPooling2D


def test_batchnorm_weights_are_in_keras_order_and_round_trip():
    rng = np.random.default_rng(25)
    layer = BatchNormalization()
    layer.build((None, 4, 4, 3))
    assert layer.weight_names == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert set(layer.params) == set(layer.grads) == {"gamma", "beta"}   # the optimizer trains only these
    assert layer.count_params() == 12
    x = rng.standard_normal((5, 4, 4, 3)).astype("float32")
    layer.forward(x * 2 + 1, training=True)
    clone = deserialize(serialize(layer))
    clone.build(layer.input_shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x), layer(x))
    for a, b in zip(clone.get_weights(), layer.get_weights()):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32
    only_scale = BatchNormalization(center=False)
    only_scale.build((None, 3))
    assert only_scale.weight_names == ["gamma", "moving_mean", "moving_variance"]
    with pytest.raises(ValueError, match="expects 3 weight arrays"):
        only_scale.set_weights(layer.get_weights())


def test_model_with_batchnorm_saves_and_loads_its_moving_statistics(tmp_path):
    models = pytest.importorskip("minicnn.models")
    rng = np.random.default_rng(26)
    minicnn.utils.set_random_seed(0)
    model = models.Sequential([
        minicnn.Input(shape=(6, 6, 1)),
        Conv2D(4, 3, padding="same"),
        BatchNormalization(),
        LeakyReLU(),
        AveragePooling2D(),
        GlobalMaxPooling2D(),
        Dense(2, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = rng.standard_normal((16, 6, 6, 1)).astype("float32") * 2 + 3, rng.integers(0, 2, 16)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    bn = model.layers[1]
    assert not np.allclose(bn.moving_mean, 0) and not np.allclose(bn.moving_variance, 1)
    assert len(model.non_trainable_weights) == 2 and len(model.weights) == 2 + 4 + 2
    model.save(tmp_path / "bn.npz")
    loaded = models.load_model(tmp_path / "bn.npz")
    np.testing.assert_array_equal(loaded.layers[1].moving_variance, bn.moving_variance)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# ========================================================================================
# 5. Argument validation and dtypes
# ========================================================================================

INVALID = [
    (lambda: BatchNormalization(axis=1.5), "BatchNormalization", "axis", "axis=1.5"),
    (lambda: BatchNormalization(axis=True), "BatchNormalization", "axis", "axis=True"),
    (lambda: BatchNormalization(momentum=1.5), "BatchNormalization", "momentum", "momentum=1.5"),
    (lambda: BatchNormalization(momentum="0.9"), "BatchNormalization", "momentum", "momentum='0.9'"),
    (lambda: BatchNormalization(epsilon=0), "BatchNormalization", "epsilon", "epsilon=0"),
    (lambda: BatchNormalization(epsilon=-1e-3, name="bn7"), "BatchNormalization 'bn7'", "epsilon", "epsilon=-0.001"),
    (lambda: BatchNormalization(center="yes"), "BatchNormalization", "center", "center='yes'"),
    (lambda: BatchNormalization(gamma_initializer="twos"), "BatchNormalization", "gamma_initializer", "gamma_initializer='twos'"),
    (lambda: AveragePooling2D(0), "AveragePooling2D", "pool_size", "pool_size=0"),
    (lambda: AveragePooling2D(2, strides=(1, 0)), "AveragePooling2D", "strides", r"strides=\(1, 0\)"),
    (lambda: AveragePooling2D(2, padding="full"), "AveragePooling2D", "padding", "padding='full'"),
    (lambda: GlobalAveragePooling2D(keepdims="yes"), "GlobalAveragePooling2D", "keepdims", "keepdims='yes'"),
    (lambda: GlobalMaxPooling2D(keepdims=1), "GlobalMaxPooling2D", "keepdims", "keepdims=1"),
    (lambda: ZeroPadding2D(-1), "ZeroPadding2D", "padding", "padding=-1"),
    (lambda: ZeroPadding2D((1, 2, 3)), "ZeroPadding2D", "padding", r"padding=\(1, 2, 3\)"),
    (lambda: ZeroPadding2D(((1, 2), (3,))), "ZeroPadding2D", "padding", r"padding=\(\(1, 2\), \(3,\)\)"),
    (lambda: ZeroPadding2D(1.5), "ZeroPadding2D", "padding", "padding=1.5"),
    (lambda: LeakyReLU(negative_slope=-0.1), "LeakyReLU", "negative_slope", "negative_slope=-0.1"),
    (lambda: LeakyReLU(negative_slope="a"), "LeakyReLU", "negative_slope", "negative_slope='a'"),
    (lambda: ELU(alpha=float("nan")), "ELU", "alpha", "alpha=nan"),
]


@pytest.mark.parametrize("make,layer_name,arg,received", INVALID)
def test_invalid_arguments_raise_naming_layer_argument_and_value(make, layer_name, arg, received):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert message.startswith(layer_name) and f"`{arg}`" in message and "Received" in message, message
    assert re.search(received, message), message


@pytest.mark.parametrize(
    "make, shape, match",
    [
        (lambda: BatchNormalization(axis=4, name="big"), (None, 3, 3, 2), "axis"),
        (lambda: BatchNormalization(axis=0, name="big"), (None, 3, 3, 2), "batch axis"),
        (lambda: BatchNormalization(name="big"), (None, 3, 3, None), "known size"),
        (lambda: AveragePooling2D(3, name="big"), (None, 2, 5, 1), "larger than"),
        (lambda: GlobalMaxPooling2D(name="big"), (None, 5, 1), "4-D"),
        (lambda: ZeroPadding2D(name="big"), (None, 5, 1), "4-D"),
    ],
)
def test_impossible_input_shapes_fail_before_arrays_are_made(make, shape, match):
    layer = make()
    with pytest.raises(ValueError, match=f"big.*{match}|{match}.*big"):
        layer.build(shape)
    assert not layer.built and layer.params == {}


@pytest.mark.parametrize(
    "make",
    [BatchNormalization, lambda: AveragePooling2D(3, 2, padding="same"), GlobalAveragePooling2D, GlobalMaxPooling2D,
     ZeroPadding2D, LeakyReLU, ELU, lambda: Activation("gelu")],
)
@pytest.mark.parametrize("training", [True, False])
def test_float32_in_float32_out(backend, make, training):
    layer = make()
    x = np.random.default_rng(27).standard_normal((3, 5, 6, 2))   # float64 in: cast to the layer's float32
    y = layer.forward(x, training=training)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads.values())
    assert all(w.dtype == np.float32 for w in layer.get_weights())
