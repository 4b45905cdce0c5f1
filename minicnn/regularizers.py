"""Weight penalties added to the loss: ``kernel_regularizer=minicnn.regularizers.l2(1e-4)``.

A regularizer is called on a weight array and returns the penalty it adds to the loss;
``gradient(w)`` is that penalty's derivative, which the model adds to the layer's gradient.
"""

import numpy as np


class Regularizer:
    def __call__(self, w):
        raise NotImplementedError

    def gradient(self, w):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class L1L2(Regularizer):
    """``penalty = l1 * sum|w| + l2 * sum w**2``;  ``gradient = l1 * sign(w) + 2 * l2 * w`` (Keras's form)."""

    def __init__(self, l1=0.0, l2=0.0):
        for arg, value in (("l1", l1), ("l2", l2)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"Regularizer: `{arg}` must be a non-negative number. Received: {arg}={value!r}")
        self.l1, self.l2 = float(l1), float(l2)

    def __call__(self, w):
        return float(self.l1 * np.sum(np.abs(w)) + self.l2 * np.sum(np.square(w)))

    def gradient(self, w):
        return (self.l1 * np.sign(w) + 2 * self.l2 * w).astype(w.dtype)

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}

    def __repr__(self):
        return f"L1L2(l1={self.l1}, l2={self.l2})"


def l1(l1=0.01):
    return L1L2(l1=l1)


def l2(l2=0.01):
    return L1L2(l2=l2)


def l1_l2(l1=0.01, l2=0.01):
    return L1L2(l1=l1, l2=l2)


#: The closed registry of regularizer classes a layer config (and so a model file) may name.
REGULARIZERS = {"L1L2": L1L2}


def get(identifier):
    """None, a Regularizer, a saved ``serialize`` dict, or 'l1' / 'l2' / 'l1_l2' with Keras's defaults."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    table = {"l1": l1, "l2": l2, "l1_l2": l1_l2}
    if isinstance(identifier, str) and identifier in table:
        return table[identifier]()
    raise ValueError(f"Unknown regularizer. Expected one of {sorted(table)}, a Regularizer or None. Received: {identifier!r}")


def serialize(regularizer):
    return None if regularizer is None else {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}


def deserialize(data):
    """Inverse of ``serialize``: only classes in ``REGULARIZERS``."""
    from .registry import from_config

    return from_config(REGULARIZERS, data, "regularizer")
