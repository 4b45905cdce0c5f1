"""Activation functions, each with its derivative a few lines below.

An activation object is owned by one layer: ``forward(z)`` keeps what ``backward(dy)`` needs.
The plain functions (``relu(x)``, ``softmax(x)``, ...) are there for learners to call directly.
"""

import numpy as np


def relu(x):
    """max(x, 0)."""
    return np.maximum(x, 0)


def sigmoid(x):
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""
    e = np.exp(-np.abs(x))   # in (0, 1]: never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def tanh(x):
    return np.tanh(x)


def softmax(x, axis=-1):
    """exp(x_k) / sum_j exp(x_j); the max is subtracted first so huge logits stay finite."""
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def linear(x):
    return x


class ActivationFn:
    """Base: ``y = f(z)`` forward, ``dz = f'(z) * dy`` backward."""

    name = "linear"

    def __init__(self):
        self.cache = {}

    def forward(self, z):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def _cached(self, key):
        if key not in self.cache:
            raise RuntimeError(f"activation '{self.name}': call forward before backward.")
        return self.cache[key]

    def __repr__(self):
        return f"<activation {self.name}>"


class ReLU(ActivationFn):
    """y = max(z, 0);  dz = dy * [z > 0]  (the kink at 0 gets derivative 0, as in Keras and PyTorch)."""

    name = "relu"

    def forward(self, z):
        y = relu(z)
        self.cache = {"y": y}
        return y

    def backward(self, dy):
        return dy * (self._cached("y") > 0)


class Sigmoid(ActivationFn):
    """y = 1 / (1 + exp(-z));  dz = dy * y * (1 - y)."""

    name = "sigmoid"

    def forward(self, z):
        y = sigmoid(z)
        self.cache = {"y": y}
        return y

    def backward(self, dy):
        y = self._cached("y")
        return dy * y * (1 - y)


class Tanh(ActivationFn):
    """y = tanh(z);  dz = dy * (1 - y**2)."""

    name = "tanh"

    def forward(self, z):
        y = tanh(z)
        self.cache = {"y": y}
        return y

    def backward(self, dy):
        return dy * (1 - self._cached("y") ** 2)


class Softmax(ActivationFn):
    """y_k = exp(z_k) / sum_j exp(z_j) over the last axis.

    Backward is the Jacobian-vector product ``dz_k = y_k * (dy_k - sum_j dy_j * y_j)``.
    Followed by cross-entropy, the two simplify to ``(y - t) / N``: ``Sequential`` uses that
    fused form (see ``minicnn.losses``), which stays exact when some y_k underflow to 0.
    """

    name = "softmax"

    def forward(self, z):
        y = softmax(z)
        self.cache = {"y": y}
        return y

    def backward(self, dy):
        y = self._cached("y")
        return y * (dy - np.sum(dy * y, axis=-1, keepdims=True))


_ACTIVATIONS = {cls.name: cls for cls in (ReLU, Sigmoid, Tanh, Softmax)}
_EXTRA = {}   # more activations registered by other modules (e.g. leaky_relu, elu, gelu)


def register(cls):
    """Make ``activation=cls.name`` available to every layer."""
    _EXTRA[cls.name] = cls
    return cls


def valid_names():
    return sorted(["linear", *_ACTIVATIONS, *_EXTRA])


def get(identifier, layer_name="layer"):
    """A fresh activation object for ``identifier`` (a name, None/'linear' for none, or an object)."""
    if identifier is None or identifier == "linear":
        return None
    if isinstance(identifier, ActivationFn):
        return type(identifier)()
    if isinstance(identifier, type) and issubclass(identifier, ActivationFn):
        return identifier()
    table = {**_ACTIVATIONS, **_EXTRA}
    if isinstance(identifier, str) and identifier.lower() in table:
        return table[identifier.lower()]()
    raise ValueError(
        f"{layer_name}: unknown activation. Expected one of {valid_names()} or None. "
        f"Received: activation={identifier!r}"
    )


def serialize(activation):
    """The name stored in a layer's config ('linear' for none)."""
    return "linear" if activation is None else activation.name
