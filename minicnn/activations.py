"""Activation functions, each with its derivative a few lines below.

An activation object is owned by one layer: ``forward(z)`` keeps what ``backward(dy)`` needs.
The plain functions (``relu(x)``, ``softmax(x)``, ...) are there for learners to call directly.
"""

import copy

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
    with np.errstate(over="ignore"):   # float32 logits of +-3e38: the difference overflows to -inf, exp gives 0
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


#: The closed registry of activation names a layer config (and so a model file) may hold.
#: Nothing else is ever looked up: a name outside it is an error, never an import.
ACTIVATIONS = {cls.name: cls for cls in (ReLU, Sigmoid, Tanh, Softmax)}


def register(cls):
    """Make ``activation=cls.name`` available to every layer (and loadable from model files)."""
    if not (isinstance(cls, type) and issubclass(cls, ActivationFn)):
        raise TypeError(f"register expects an ActivationFn subclass. Received: {cls!r}")
    ACTIVATIONS[cls.name] = cls
    return cls


def valid_names():
    return sorted(["linear", *ACTIVATIONS])


def get(identifier, layer_name="layer"):
    """A fresh activation object for ``identifier`` (a name, None/'linear' for none, or an object)."""
    if identifier is None or identifier == "linear":
        return None
    if isinstance(identifier, ActivationFn):
        fresh = copy.copy(identifier)   # keeps its arguments (e.g. a slope), not its cache
        fresh.cache = {}
        return fresh
    if isinstance(identifier, type) and issubclass(identifier, ActivationFn):
        return identifier()
    if isinstance(identifier, str) and identifier.lower() in ACTIVATIONS:
        return ACTIVATIONS[identifier.lower()]()
    raise ValueError(
        f"{layer_name}: unknown activation. Expected one of {valid_names()} or None. "
        f"Received: activation={identifier!r}"
    )


def serialize(activation):
    """The name stored in a layer's config ('linear' for none)."""
    return "linear" if activation is None else activation.name


# ----------------------------------------------------------------------------------------
# More activations: leaky_relu, elu, gelu (registered below, so ``activation='gelu'`` works)
# ----------------------------------------------------------------------------------------

import math  # noqa: E402

_erf = np.vectorize(math.erf, otypes=[np.float64])   # NumPy has no erf; math.erf is exact to double precision


def leaky_relu(x, negative_slope=0.2):
    """x for x > 0, negative_slope * x otherwise (Keras 3's ``activations.leaky_relu`` default slope 0.2)."""
    return np.where(x > 0, x, x * negative_slope).astype(x.dtype, copy=False)


def elu(x, alpha=1.0):
    """x for x > 0, alpha * (exp(x) - 1) otherwise; ``expm1`` keeps small |x| exact."""
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype, copy=False)


def gelu(x, approximate=False):
    """Gaussian error linear unit ``x * Phi(x)``, Phi the standard normal CDF (Hendrycks & Gimpel, 2016).

    Exact (Keras's default)::

        gelu(x) = 0.5 * x * (1 + erf(x / sqrt(2)))

    ``approximate=True``: ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x**3)))``. The exact form calls
    ``math.erf`` once per element (about 0.1 us each), in float64, then casts back to the dtype of x.
    """
    if approximate:
        k = math.sqrt(2 / math.pi)
        return (0.5 * x * (1 + np.tanh(k * (x + 0.044715 * x**3)))).astype(x.dtype, copy=False)
    return (0.5 * x * (1 + _erf(x / math.sqrt(2)))).astype(x.dtype, copy=False)


class LeakyReLU(ActivationFn):
    """y = z if z > 0 else negative_slope * z;  dz = dy * (1 if z > 0 else negative_slope).

    As a string, ``activation='leaky_relu'`` uses slope 0.2 (Keras 3's ``activations.leaky_relu``);
    the layer ``minicnn.layers.LeakyReLU`` defaults to 0.3 (Keras 3's ``layers.LeakyReLU``).
    """

    name = "leaky_relu"

    def __init__(self, negative_slope=0.2):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, z):
        self.cache = {"positive": z > 0}
        return leaky_relu(z, self.negative_slope)

    def backward(self, dy):
        return np.where(self._cached("positive"), dy, dy * self.negative_slope).astype(dy.dtype, copy=False)


class ELU(ActivationFn):
    """y = z if z > 0 else alpha * (exp(z) - 1);  dz = dy * (1 if z > 0 else y + alpha)  (as ``alpha * exp(z)``)."""

    name = "elu"

    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, z):
        y = elu(z, self.alpha)
        self.cache = {"y": y, "positive": z > 0}
        return y

    def backward(self, dy):
        slope = np.where(self._cached("positive"), 1, self.cache["y"] + self.alpha)
        return (dy * slope).astype(dy.dtype, copy=False)


class GELU(ActivationFn):
    """y = z * Phi(z);  dz = dy * (Phi(z) + z * phi(z)),  phi(z) = exp(-z**2 / 2) / sqrt(2 pi).

    With ``approximate=True`` (``u = sqrt(2/pi) * (z + 0.044715 z**3)``, ``t = tanh(u)``)::

        dz = dy * (0.5 * (1 + t) + 0.5 * z * (1 - t**2) * sqrt(2/pi) * (1 + 3 * 0.044715 z**2))
    """

    name = "gelu"

    def __init__(self, approximate=False):
        super().__init__()
        self.approximate = approximate

    def forward(self, z):
        self.cache = {"z": z}
        return gelu(z, self.approximate)

    def backward(self, dy):
        z = self._cached("z")
        if self.approximate:
            k = math.sqrt(2 / math.pi)
            t = np.tanh(k * (z + 0.044715 * z**3))
            slope = 0.5 * (1 + t) + 0.5 * z * (1 - t**2) * k * (1 + 3 * 0.044715 * z**2)
        else:
            cdf = 0.5 * (1 + _erf(z / math.sqrt(2)))
            slope = cdf + z * np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
        return (dy * slope).astype(dy.dtype, copy=False)


for _cls in (LeakyReLU, ELU, GELU):
    register(_cls)
