"""Helpers shared by the test modules (fixtures live in ``conftest.py``, PyTorch's layouts in
``torch_layout.py``): the finite-difference oracle, inputs without ties or kinks, derived float bounds."""

import re

import numpy as np
import pytest
from hypothesis import assume
from hypothesis import strategies as st

from minicnn.kernels import reference

# ----------------------------------------------------------------------------------------------------------
# Finite differences: the test oracle for every backward (minicnn.gradcheck is the library's own feature)
# ----------------------------------------------------------------------------------------------------------


def numerical_gradient(f, x, h=1e-5):
    """Central differences of the scalar ``f()`` with respect to every entry of ``x``.

    ``x`` is changed in place, one entry at a time, and restored; ``f`` must read it. In float64 the
    estimate ``(f(x + h e_i) - f(x - h e_i)) / 2h`` is off by O(h**2 |f'''|) + O(eps64 |f| / h), about
    1e-10 relative for h = 1e-5 away from kinks, well below the ``rel_error < 1e-7`` the tests ask.

    Returns
    -------
    grad : float64 ndarray shaped like ``x``
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        old = x[idx].copy()
        x[idx] = old + h
        f_plus = f()
        x[idx] = old - h
        f_minus = f()
        x[idx] = old
        grad[idx] = (f_plus - f_minus) / (2 * h)
    return grad


def rel_error(a, b):
    """``||a - b|| / (||a|| + ||b||)``: scale-free, 0 for equal arrays (two zero arrays included)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def assert_gradients_match(loss, pairs, bound=1e-7):
    """For each ``name: (analytic, param)``, ``rel_error(analytic, numerical_gradient(loss, param)) < bound``;
    a failure names the array and its error. ``loss()`` reads the params in place; in vector-Jacobian form,
    ``sum(f(x) * dy)``, its gradient with respect to ``f(x)`` is ``dy``."""
    for name, (analytic, param) in pairs.items():
        err = rel_error(analytic, numerical_gradient(loss, param))
        assert err < bound, f"{name}: rel_error {err:.2e}, not below {bound:g}"


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------


def spaced(rng, shape):
    """Random values at least 0.05 apart: no max-pool ties and no ReLU input within 0.025 of its kink at 0."""
    n = int(np.prod(shape))
    values = (rng.permutation(n) - n / 2 + 0.5) * 0.05 + rng.uniform(-0.01, 0.01, n)
    return values.reshape(shape)


@st.composite
def pool_problems(draw):
    """``(x_shape, kwargs)`` of a random pooling problem: windows, strides, padding smaller than the window."""
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    pool_size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple((draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))) for k in pool_size)
    assume(H + sum(padding[0]) >= pool_size[0] and W + sum(padding[1]) >= pool_size[1])
    return (N, H, W, C), dict(pool_size=pool_size, strides=strides, padding=padding)


# ----------------------------------------------------------------------------------------------------------
# Cases and checks shared by the layer and kernel tests
# ----------------------------------------------------------------------------------------------------------


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


def avgpool_id(case):
    shape, pool, strides, padding = case
    return f"{'x'.join(map(str, shape))}-p{pool}-s{strides}-{padding}"


def assert_close(name, actual, expected, rtol, atol=0.0):
    """assert_allclose, naming the array and the index of the worst entry."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual.astype(np.float64) - expected) - rtol * np.abs(expected)
    worst = np.unravel_index(np.argmax(err), err.shape) if err.size else ()
    np.testing.assert_allclose(
        actual, expected, rtol=rtol, atol=atol, err_msg=f"{name}: worst at index {tuple(map(int, worst))}"
    )


# ----------------------------------------------------------------------------------------------------------
# Tolerances derived from the sums being compared
# ----------------------------------------------------------------------------------------------------------
# Two kernels that compute the same sums in another order (threads, register tiles, BLAS blocking, FMA) do
# not give the same bits. How far apart may they be? Higham, "Accuracy and Stability of Numerical
# Algorithms", ch. 3: a sum of K terms computed in any order, in floating point of unit roundoff u, is off
# the exact sum by at most
#
#     |computed - exact| <= gamma_K * sum_k |term_k|,      gamma_K = K*u / (1 - K*u),
#
# (a dot product a . b: terms a_k * b_k, the products' rounding included), so two such computations differ
# by at most twice that. The bound follows from the inputs, not from a machine: sum|terms| is the same
# computation on the absolute values, done in float64 (e.g. |x| conv |w| + |b| for a convolution's output,
# |x| conv |dy| for its kernel gradient). A value near zero after heavy cancellation (0.116 out of terms
# whose absolute values add to 50) may legitimately be off by far more than any rtol would allow, while a
# real bug (a term missing, one counted twice, a wrong index) is off by a whole term: of the order of
# sum|terms| / K, above the bound 2 (K+1) u sum|terms| while 2 K (K+1) u < 1, that is K below about 2,900
# in float32 (all float64 cases). Longer float32 sums (the long-D Dense case, K = 5,000) still catch a
# missing block of terms, not a single one: those kernels are also compared in float64.


def unit_roundoff(dtype):
    """u = eps / 2: 2**-24 for float32, 2**-53 for float64."""
    return float(np.finfo(dtype).eps) / 2


def gamma_n(n, dtype):
    """Higham's gamma_n = n*u / (1 - n*u) for the unit roundoff u of ``dtype``."""
    nu = n * unit_roundoff(dtype)
    assert nu < 0.5, f"{n} terms are too many for a bound in {np.dtype(dtype).name}"
    return nu / (1 - nu)


def float_sum_bound(abs_sum, n_terms, dtype):
    """Largest |a - b| between two computations, in ``dtype``, of sums of ``n_terms`` terms each.

    Parameters
    ----------
    abs_sum : float or ndarray
        sum_k |term_k| for every compared value, computed in float64 from the inputs.
    n_terms : int
        K, the number of terms of each sum (one more for a bias; the largest count where it varies).
    dtype : the floating-point type both computations ran in.

    Returns
    -------
    bound : float64 ndarray shaped like ``abs_sum``: ``2 * gamma_{K+1} * abs_sum``
        (the +1 covers the final rounding of each result to ``dtype``).
    """
    return 2 * gamma_n(n_terms + 1, dtype) * np.asarray(abs_sum, dtype=np.float64)


def assert_sums_close(name, actual, expected, abs_sum, n_terms):
    """Assert ``|actual - expected| <= float_sum_bound(abs_sum, n_terms, dtype)`` everywhere,
    ``dtype`` being the coarser of the two arrays' floating-point types."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    floats = [d for d in (actual.dtype, expected.dtype) if d.kind == "f"] or [np.dtype(np.float64)]
    dtype = max(floats, key=unit_roundoff)
    bound = float_sum_bound(abs_sum, n_terms, dtype)
    assert_within(name, actual, expected, bound, f"2 * gamma_{n_terms + 1}({dtype.name}) * sum|terms|")


def assert_within(name, actual, expected, bound, how="bound"):
    """Assert ``|actual - expected| <= bound`` elementwise (NaN fails); on failure, name the array, the
    worst index (largest excess over the bound), both values, the bound there and how it was derived."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != expected {expected.shape}"
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), actual.shape)
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    excess = np.where(np.isnan(err), np.inf, err - bound)
    if excess.size and excess.max() > 0:
        i = np.unravel_index(np.argmax(excess), excess.shape)
        raise AssertionError(
            f"{name}: {int((excess > 0).sum())} of {excess.size} values differ by more than the derived bound; "
            f"worst at index {tuple(map(int, i))}: {actual[i]!r} vs expected {expected[i]!r}, "
            f"|difference| {err[i]:.3g} > {how} = {bound[i]:.3g}"
        )


def conv_sums(x, w, b, dy, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1)):
    """``{name: (sum|terms|, K)}`` for the outputs ``y, dx, dw, db`` of a convolution, for :func:`assert_sums_close`.

    The reference kernels run on the absolute values in float64: ``|x| conv |w| + |b|`` has the
    sum of |terms| of each ``y``, and likewise for the gradients (``dy`` is the gradient that
    reaches the convolution, after ReLU's mask if there is one).
    """
    ax, aw, ady = (np.abs(a).astype(np.float64) for a in (x, w, dy))
    ab = None if b is None else np.abs(b).astype(np.float64)
    (KH, KW, C, F), (N, OH, OW, _) = w.shape, dy.shape
    kw = dict(strides=strides, padding=padding, dilation=dilation)
    dw, db = reference.conv2d_backward_weights(ax, ady, (KH, KW), **kw)
    return dict(y=(reference.conv2d_forward(ax, aw, ab, **kw), KH * KW * C + 1),
                dx=(reference.conv2d_backward_input(ady, aw, x.shape, **kw), KH * KW * F),
                dw=(dw, N * OH * OW), db=(db, N * OH * OW))


def bn_bounds(x, gamma, beta, dy, eps, r_mean, r_var):
    """Largest |difference| between two float computations of each batch-norm kernel output (``y, mean, var``
    of the forward, ``dx, dgamma, dbeta`` of the backward at the given statistics ``r_mean, r_var``).

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


# ----------------------------------------------------------------------------------------------------------
# A whole model in float32: the bound propagated layer by layer
# ----------------------------------------------------------------------------------------------------------
# Two float32 runs of one model (minicnn's kernels and PyTorch's, or two engines) each differ from the
# exact result, the same model in float64, by an amount that follows from the sums of every layer. For a
# layer y = f(x), input x known to within e (e >= 0 elementwise, e = 0 for the float32 input itself):
#
# * Dense / Conv2D (the linear part z = x W + b, K = fan-in): the input's error reaches z through |W|
#   (|W|^T e, i.e. the layer run on e with |W| and no bias), and z's own rounding is at most
#   gamma_{K+1} * (|x| |W| + |b| + |W|^T e) (Higham, above; the sums of |terms| of the perturbed input);
# * pooling, padding, Flatten, Dropout at inference, Resizing, global pooling: every output is a max or a
#   convex combination (nonnegative weights adding to 1) of inputs, so the layer run on e bounds the
#   propagated error; averages round by gamma_{K} of the average of |x| + e, bilinear weights (computed in
#   float32 from coordinates up to max(H, W)) by gamma_{8 + 2 max(H, W)};
# * per-channel affine layers (BatchNormalization at inference, Normalization, Rescaling), y = a x + c:
#   |a| e, plus gamma_8 * (|a| (|x| + e) + |a * mean| + |beta|) for the few operations and the float32
#   rounding of a (and of mean, variance, scale given as Python floats);
# * monotone activations (ReLU, LeakyReLU, ELU, sigmoid, tanh): exact interval arithmetic in float64,
#   max |g(z +- e) - g(z)|; GELU (not monotone) with its Lipschitz constant 1.13 (max |GELU'| = 1.129);
#   softmax: p_i * expm1(2 max_j e_j) per row; and each smooth function's own evaluation in float32
#   (libm exp/tanh/erf within a few ulps, a handful of operations) by 16 u (1 + |z| + |y|), softmax's
#   normalizing sum by gamma_{K+4} p.
#
# The bound is worst case (not the sqrt(K) typical one), 1e-6 to 1e-4 for the small models in the tests,
# while a real difference (a weight off by 1%, a wrong padding, a layer left out) moves outputs by 1e-3 or
# more. For a long sum (a Dense layer on 1,352 features) and a quantity that averages many outputs (a loss
# over 1,000 samples), ``typical=True`` counts 4 sqrt(K) terms instead of K in each sum's gamma: rounding
# errors of a sum add up like a random walk, of standard deviation about sqrt(K/3) u/2 sum|terms|, so this
# is some 14 standard deviations, the STYLE.md "sqrt(K) * eps32 * sum|terms|" bound.


def _terms(n, typical):
    """K, or 4 sqrt(K) (rounded up, at most K) for the typical bound."""
    return min(n, int(np.ceil(4 * np.sqrt(n)))) if typical else n

_MONOTONE = ("relu", "leaky_relu", "elu", "sigmoid", "tanh", "linear")


def _float64_clone(layer, input_shape, activation=True):
    """The same layer in float64 (weights converted exactly), without its activation unless asked."""
    import copy

    config_ = {**layer.get_config(), "dtype": "float64"}
    if not activation and "activation" in config_:
        config_["activation"] = None
    clone = type(layer).from_config(config_)
    clone.build((None, *input_shape))
    clone.set_weights([np.asarray(w, np.float64) for w in layer.get_weights()])
    for attr in ("mean", "variance"):     # Normalization's statistics, as float32 had them
        if getattr(layer, attr, None) is not None and getattr(clone, attr, None) is not None:
            setattr(clone, attr, np.asarray(getattr(layer, attr), np.float64))
    return clone, copy.deepcopy(layer.activation) if layer.activation is not None else None


def _activation_bound(act, z, e, dtype):
    """(g(z), bound on |g(z~) - g(z)| + g's own float32 rounding) for |z~ - z| <= e."""
    u = unit_roundoff(dtype)
    y = act.forward(z)
    if act.name == "softmax":
        return y, y * np.expm1(2 * e.max(axis=-1, keepdims=True)) + gamma_n(z.shape[-1] + 4, dtype) * y
    if act.name in _MONOTONE:
        prop = np.maximum(np.abs(act.forward(z + e) - y), np.abs(act.forward(z - e) - y))
    elif act.name == "gelu":
        prop = 1.13 * e
    else:
        raise NotImplementedError(f"no error bound for activation {act.name!r}")
    exact = act.name in ("relu", "linear") or (act.name == "leaky_relu")
    return y, prop + (u * np.abs(y) if exact else 16 * u * (1 + np.abs(z) + np.abs(y)))


def model_forward_bound(model, x, dtype=np.float32, typical=False):
    """``(y, bound)``: the model's inference output computed in float64 from its weights, and a bound on
    how far any computation of it in ``dtype`` (float32 kernels, PyTorch, another order of the sums) may
    be from ``y``, propagated layer by layer as described above.

    Compare each float32 result with ``y`` by ``assert_within(name, result, y, bound)``: two results then
    agree within twice the bound, and each is checked against the exact math, not only against the other.
    minicnn's global generator is left as it was (cloning a random layer draws a seed from it).
    """
    from minicnn import config

    state = config.rng().bit_generator.state
    try:
        return _model_forward_bound(model, x, dtype, typical)
    finally:
        config.rng().bit_generator.state = state


def _model_forward_bound(model, x, dtype, typical):
    from minicnn.layers import (
        BatchNormalization,
        Conv2D,
        Dense,
        Normalization,
        Rescaling,
        Resizing,
    )
    from minicnn.layers.activation_layers import ELU, LeakyReLU
    from minicnn.layers.pooling import AveragePooling2D, GlobalAveragePooling2D

    x = np.asarray(x, np.float64)
    e = np.zeros_like(x)
    for layer in model.layers:
        shape = x.shape[1:]
        clone, act = _float64_clone(layer, shape, activation=False)
        z = clone.forward(x)
        if isinstance(layer, (Dense, Conv2D)):
            absolute, _ = _float64_clone(layer, shape, activation=False)
            absolute.set_weights([np.abs(w) for w in clone.get_weights()])
            prop = absolute.forward(e) - (absolute.forward(np.zeros_like(e)))   # |W|^T e, no bias
            K = clone.params["kernel"].size // clone.params["kernel"].shape[-1]
            e = prop + gamma_n(_terms(K + 1, typical), dtype) * (absolute.forward(np.abs(x)) + prop)
        elif isinstance(layer, (BatchNormalization, Normalization, Rescaling)):
            c = clone.forward(np.zeros_like(x))
            a = clone.forward(np.ones_like(x)) - c
            if isinstance(layer, BatchNormalization):
                c = np.abs(a * clone.moving_mean) + (np.abs(clone.params["beta"]) if "beta" in clone.params else 0)
            e = np.abs(a) * e + gamma_n(8, dtype) * (np.abs(a) * (np.abs(x) + e) + np.abs(c))
        elif isinstance(layer, (LeakyReLU, ELU)):
            y = clone.forward(x)
            prop = np.maximum(np.abs(clone.forward(x + e) - y), np.abs(clone.forward(x - e) - y))
            e = prop + (unit_roundoff(dtype) * np.abs(y) if isinstance(layer, LeakyReLU)
                        else 16 * unit_roundoff(dtype) * (1 + np.abs(x) + np.abs(y)))
        else:   # max / convex combinations of inputs: the layer itself carries e
            prop = clone.forward(e)
            if isinstance(layer, (AveragePooling2D, GlobalAveragePooling2D)):
                K = int(np.prod(layer.pool_size)) if isinstance(layer, AveragePooling2D) else int(np.prod(shape[:2]))
                prop = prop + gamma_n(_terms(K, typical), dtype) * clone.forward(np.abs(x) + e)
            elif isinstance(layer, Resizing) and layer.interpolation != "nearest":
                prop = prop + gamma_n(8 + 2 * max(*shape[:2], layer.height, layer.width), dtype) * clone.forward(np.abs(x) + e)
            e = prop
        if act is not None:
            z, e = _activation_bound(act, z, e, dtype)
        x = z
    return x, e


def sparse_crossentropy_bound(p, bound, labels, dtype=np.float32, typical=False):
    """``(loss, loss_bound)``: the mean sparse categorical crossentropy of the exact probabilities ``p``
    (float64, e.g. from :func:`model_forward_bound`) and how far a computation in ``dtype`` from outputs
    within ``bound`` of ``p`` may be from it.

    Each sample: q = p_y / sum_k p_k is off by at most dq = (b_y + q sum_k b_k) / (sum_k p_k - sum_k b_k);
    clipping to [1e-7, 1 - 1e-7] (losses.EPSILON) is 1-Lipschitz, so -log q moves by at most
    log(clip(q + dq) / clip(q - dq)), plus the log's own rounding 4 u (1 + |log q|); the mean of N such
    terms adds gamma_N * mean (the terms are positive), gamma_{4 sqrt(N)} with ``typical`` (see
    :func:`model_forward_bound`; pass it the ``bound`` of ``model_forward_bound(..., typical=True)``).
    """
    from minicnn.losses import EPSILON

    p, bound = np.asarray(p, np.float64), np.asarray(bound, np.float64)
    rows = np.arange(len(p))
    s, sb = p.sum(axis=1), bound.sum(axis=1)
    assert np.all(sb < s), "outputs too uncertain for a loss bound"
    q = p[rows, labels] / s
    dq = (bound[rows, labels] + q * sb) / (s - sb)
    lo, hi = np.clip(q - dq, EPSILON, 1 - EPSILON), np.clip(q + dq, EPSILON, 1 - EPSILON)
    terms = -np.log(np.clip(q, EPSILON, 1 - EPSILON))
    per_sample = np.log(hi / lo) + 4 * unit_roundoff(dtype) * (1 + terms)
    loss = terms.mean()
    return loss, per_sample.mean() + gamma_n(_terms(len(p), typical), dtype) * (loss + per_sample.mean())


# ----------------------------------------------------------------------------------------------------------
# Error messages: "Name: ... `argument` ... Received: value"
# ----------------------------------------------------------------------------------------------------------


def assert_value_error_names(make, who, arg, received):
    """``make()`` raises ValueError starting with ``who`` and naming `arg` and the value (regex ``received``)."""
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert message.startswith(who) and f"`{arg}`" in message and "Received" in message, message
    assert re.search(received, message), message
