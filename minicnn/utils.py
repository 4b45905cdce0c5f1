"""Small helpers with Keras's names: one-hot labels, one seed for everything, a fresh session."""

import random

import numpy as np

from . import config


def to_categorical(x, num_classes=None):
    """One-hot rows from integer class labels, as ``keras.utils.to_categorical``.

    Parameters
    ----------
    x : array-like of ints, shape (N,) or (N, 1) (any shape; a trailing axis of size 1 is dropped)
    num_classes : int or None
        K; ``max(x) + 1`` when None.

    Returns
    -------
    ndarray of float64, shape ``x.shape + (K,)``: ``out[..., k] = 1.0 if x == k else 0.0``.
    """
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ValueError(f"to_categorical expects integer class labels. Received dtype={x.dtype}")
    if x.size and (not np.all(np.isfinite(x)) or np.any(x != np.round(x))):
        raise ValueError("to_categorical expects integer class labels. Received non-integer values.")
    x = x.astype(np.int64)
    shape = x.shape
    if len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    x = x.reshape(-1)
    if num_classes is None:
        num_classes = int(x.max()) + 1 if x.size else 0
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 0:
        raise ValueError(f"to_categorical: `num_classes` must be a non-negative integer. Received: {num_classes!r}")
    if x.size and (x.min() < 0 or x.max() >= num_classes):
        bad = x[(x < 0) | (x >= num_classes)]
        raise ValueError(
            f"to_categorical: labels must be in [0, {num_classes}). Received: {bad.size} label(s) outside, e.g. {bad[0]}"
        )
    out = np.zeros((x.size, int(num_classes)))
    out[np.arange(x.size), x] = 1.0
    return out.reshape(shape + (int(num_classes),))


def set_random_seed(seed):
    """Seed Python's ``random``, NumPy's global generator and minicnn's generator at once.

    After this, weight initialisation, shuffling in ``fit`` and Dropout masks (each Dropout layer
    draws its own seed from minicnn's generator when it is made) repeat exactly.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"set_random_seed expects a non-negative integer. Received: seed={seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    config.set_seed(int(seed))


def clear_session():
    """Forget automatic layer names, so the next Conv2D is called ``conv2d`` again (as in Keras)."""
    from .layers.base import reset_names

    reset_names()
