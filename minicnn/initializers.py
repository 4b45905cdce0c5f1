"""Weight initialisers with Keras names and formulas, drawing from ``minicnn.config.rng()``.

Fans (``compute_fans``): a Dense kernel ``(in, out)`` has ``fan_in = in, fan_out = out``; a conv kernel
``(KH, KW, C, F)`` has ``fan_in = KH*KW*C`` and ``fan_out = KH*KW*F`` (Keras's rule).
"""

import math

import numpy as np

from . import config


def compute_fans(shape):
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def ones(shape, dtype):
    return np.ones(shape, dtype=dtype)


def glorot_uniform(shape, dtype):
    """U(-l, l) with l = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010); Keras's default."""
    fan_in, fan_out = compute_fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return config.rng().uniform(-limit, limit, size=shape).astype(dtype)


def glorot_normal(shape, dtype):
    """Truncated normal (within 2 std), std = sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = compute_fans(shape)
    return _truncated_normal(shape, math.sqrt(2.0 / (fan_in + fan_out)), dtype)


def he_uniform(shape, dtype):
    """U(-l, l) with l = sqrt(6 / fan_in) (He et al., 2015): keeps ReLU activations' variance."""
    fan_in, _ = compute_fans(shape)
    limit = math.sqrt(6.0 / fan_in)
    return config.rng().uniform(-limit, limit, size=shape).astype(dtype)


def he_normal(shape, dtype):
    """Truncated normal (within 2 std), std = sqrt(2 / fan_in)."""
    fan_in, _ = compute_fans(shape)
    return _truncated_normal(shape, math.sqrt(2.0 / fan_in), dtype)


def random_normal(shape, dtype):
    """N(0, 0.05**2), Keras's RandomNormal default."""
    return config.rng().normal(0.0, 0.05, size=shape).astype(dtype)


def random_uniform(shape, dtype):
    """U(-0.05, 0.05), Keras's RandomUniform default."""
    return config.rng().uniform(-0.05, 0.05, size=shape).astype(dtype)


def _truncated_normal(shape, std, dtype):
    # Keras draws from a normal truncated at 2 std, with std corrected by 0.8796 so the
    # truncated distribution has the requested spread.
    std = std / 0.87962566103423978
    out = config.rng().normal(0.0, std, size=shape)
    bad = np.abs(out) > 2 * std
    while bad.any():
        out[bad] = config.rng().normal(0.0, std, size=int(bad.sum()))
        bad = np.abs(out) > 2 * std
    return out.astype(dtype)


#: The closed registry of initializer names a layer config (and so a model file) may hold.
INITIALIZERS = {
    f.__name__: f
    for f in (zeros, ones, glorot_uniform, glorot_normal, he_uniform, he_normal, random_normal, random_uniform)
}


def get(identifier, layer_name="layer"):
    """The initialiser function for a name, or ``identifier`` itself if it is callable."""
    if callable(identifier):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in INITIALIZERS:
        return INITIALIZERS[identifier.lower()]
    raise ValueError(
        f"{layer_name}: unknown initializer. Expected one of {sorted(INITIALIZERS)}. "
        f"Received: {identifier!r}"
    )
