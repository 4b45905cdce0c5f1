"""Losses: a value averaged over the batch and its gradient with respect to the model's output.

Every loss returns ``mean_n loss_n`` (Keras's "sum_over_batch_size"), so gradients carry a ``1/N``.

Probability outputs are clipped to ``[EPSILON, 1 - EPSILON]`` before the log, as Keras does
(``EPSILON = 1e-7``): a confident wrong answer costs at most ``-log(1e-7) ~= 16.12`` instead of inf.

Softmax followed by cross-entropy has the famous gradient with respect to the logits
``z``: ``dL/dz = (p - y) / N``. ``Sequential`` uses this fused form (``logits_gradient``) when the
last layer's activation is softmax (sigmoid for binary cross-entropy): it is exact and stays finite
for huge logits, where going through ``dL/dp = -y / p`` would divide by a probability that underflowed.
"""

import numpy as np

EPSILON = 1e-7


def _log_softmax(z):
    # float64: float32 logits of +-3e38 would overflow to -inf in the subtraction below.
    z = np.asarray(z, dtype=np.float64)
    z = z - np.max(z, axis=-1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def _xlogy(y, log_p):
    """``y * log_p`` with 0 where ``y == 0`` (so that 0 * -inf is 0, not nan)."""
    return np.where(y != 0, y * log_p, 0)


class Loss:
    """Base class: ``loss(y_true, y_pred) -> float`` and ``gradient(y_true, y_pred) -> dL/dy_pred``."""

    name = "loss"
    #: The output activation whose backward ``logits_gradient`` replaces (None: no fusion).
    fuses_with = None

    def __init__(self, from_logits=False):
        if not isinstance(from_logits, (bool, np.bool_)):
            raise ValueError(f"{type(self).__name__}: `from_logits` must be True or False. Received: from_logits={from_logits!r}")
        self.from_logits = bool(from_logits)

    def __call__(self, y_true, y_pred):
        return float(np.mean(self.per_sample(y_true, y_pred)))

    def per_sample(self, y_true, y_pred):
        raise NotImplementedError

    def gradient(self, y_true, y_pred):
        raise NotImplementedError

    def logits_gradient(self, y_true, y_pred):
        """dL/dz where ``y_pred = activation(z)`` and activation is ``fuses_with``."""
        raise NotImplementedError

    def check_targets(self, y_true, y_pred_shape):
        """Raise a ValueError if ``y_true`` cannot be compared with outputs of ``y_pred_shape``."""
        if tuple(np.shape(y_true)) != tuple(y_pred_shape):
            raise ValueError(
                f"{type(self).__name__}: targets and outputs must have the same shape. "
                f"Received: y_true.shape={tuple(np.shape(y_true))}, y_pred.shape={tuple(y_pred_shape)}"
            )

    def get_config(self):
        return {"from_logits": self.from_logits}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}(from_logits={self.from_logits})"


class CategoricalCrossentropy(Loss):
    """``L_n = -sum_k y[n, k] * log p[n, k]`` for one-hot (or soft) targets ``y``.

    With ``from_logits=False`` (Keras's default), ``p = clip(y_pred / sum(y_pred), eps, 1 - eps)``.
    With ``from_logits=True``, ``log p = log_softmax(y_pred)`` computed stably.
    """

    name = "categorical_crossentropy"
    fuses_with = "softmax"

    def _targets(self, y_true, y_pred):
        return np.asarray(y_true, dtype=y_pred.dtype)

    def per_sample(self, y_true, y_pred):
        y = self._targets(y_true, y_pred)
        if self.from_logits:
            return -np.sum(_xlogy(y, _log_softmax(y_pred)), axis=-1)
        p = y_pred / np.sum(y_pred, axis=-1, keepdims=True)
        return -np.sum(y * np.log(np.clip(p, EPSILON, 1 - EPSILON)), axis=-1)

    def gradient(self, y_true, y_pred):
        """Exact derivative of ``per_sample`` averaged over N.

        Logits: ``(softmax(z) * sum_k y_k - y) / N``. Probabilities: with ``s = sum(p)``,
        ``q = p / s`` and ``g = -y / q`` where ``q`` is not clipped (0 where it is),
        ``dL/dp_j = (g_j - sum_k g_k q_k) / (s N)``.
        """
        y = self._targets(y_true, y_pred)
        n = y_pred.shape[0]
        if self.from_logits:
            return self.logits_gradient(y, np.exp(_log_softmax(y_pred)).astype(y_pred.dtype))
        s = np.sum(y_pred, axis=-1, keepdims=True)
        q = y_pred / s
        inside = (q > EPSILON) & (q < 1 - EPSILON)
        g = np.where(inside, -y / np.where(inside, q, 1), 0)
        return ((g - np.sum(g * q, axis=-1, keepdims=True)) / (s * n)).astype(y_pred.dtype)

    def logits_gradient(self, y_true, probs):
        """``dL/dz = (p * sum_k y_k - y) / N``, i.e. ``(p - y) / N`` for one-hot ``y``."""
        y = self._targets(y_true, probs)
        return ((probs * np.sum(y, axis=-1, keepdims=True) - y) / probs.shape[0]).astype(probs.dtype)


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """Categorical cross-entropy with integer class labels ``y[n] in [0, K)`` instead of one-hot rows."""

    name = "sparse_categorical_crossentropy"

    def _targets(self, y_true, y_pred):
        labels = np.asarray(y_true).reshape(-1).astype(np.int64)
        onehot = np.zeros(y_pred.shape, dtype=y_pred.dtype)
        onehot[np.arange(len(labels)), labels] = 1
        return onehot

    def check_targets(self, y_true, y_pred_shape):
        y = np.asarray(y_true)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or y.shape[0] != y_pred_shape[0]:
            raise ValueError(
                f"SparseCategoricalCrossentropy expects one integer label per sample, shape ({y_pred_shape[0]},). "
                f"Received: y_true.shape={tuple(np.shape(y_true))}"
            )
        k = y_pred_shape[-1]
        if y.size and (np.any(y != np.round(y)) or y.min() < 0 or y.max() >= k):
            bad = y[(y != np.round(y)) | (y < 0) | (y >= k)]
            raise ValueError(
                f"SparseCategoricalCrossentropy: labels must be integers in [0, {k}) for a {k}-unit output. "
                f"Received: {bad.size} out-of-range label(s), e.g. {bad[0]!r}"
            )


class BinaryCrossentropy(Loss):
    """``L_n = -mean_k [y log p + (1 - y) log(1 - p)]`` with ``p`` clipped to ``[eps, 1 - eps]``."""

    name = "binary_crossentropy"
    fuses_with = "sigmoid"

    def per_sample(self, y_true, y_pred):
        y = np.asarray(y_true, dtype=y_pred.dtype)
        if self.from_logits:
            # log(sigmoid(z)) = -softplus(-z), log(1 - sigmoid(z)) = -softplus(z), softplus stable.
            return np.mean(y * np.logaddexp(0, -y_pred) + (1 - y) * np.logaddexp(0, y_pred), axis=-1)
        p = np.clip(y_pred, EPSILON, 1 - EPSILON)
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p), axis=-1)

    def gradient(self, y_true, y_pred):
        """Probabilities: ``(p - y) / (p (1 - p) N K)`` where not clipped; logits: ``(sigmoid(z) - y) / (N K)``."""
        y = np.asarray(y_true, dtype=y_pred.dtype)
        if self.from_logits:
            from .activations import sigmoid

            return self.logits_gradient(y, sigmoid(y_pred))
        p = np.clip(y_pred, EPSILON, 1 - EPSILON)
        inside = (y_pred > EPSILON) & (y_pred < 1 - EPSILON)
        return (inside * (p - y) / (p * (1 - p)) / y_pred.size).astype(y_pred.dtype)

    def logits_gradient(self, y_true, probs):
        """``dL/dz = (p - y) / (N K)``."""
        y = np.asarray(y_true, dtype=probs.dtype)
        return ((probs - y) / probs.size).astype(probs.dtype)


class MeanSquaredError(Loss):
    """``L_n = mean_k (y - p)**2``;  ``dL/dp = 2 (p - y) / (N K)``."""

    name = "mean_squared_error"

    def per_sample(self, y_true, y_pred):
        y = np.asarray(y_true, dtype=y_pred.dtype)
        return np.mean((y_pred - y) ** 2, axis=-1)

    def gradient(self, y_true, y_pred):
        y = np.asarray(y_true, dtype=y_pred.dtype)
        return (2 * (y_pred - y) / y_pred.size).astype(y_pred.dtype)


#: The closed registry of loss classes a model file may name (``serialize`` stores the class name).
LOSSES = {cls.__name__: cls for cls in (CategoricalCrossentropy, SparseCategoricalCrossentropy, BinaryCrossentropy,
                                        MeanSquaredError)}

#: The names ``compile(loss=...)`` accepts, as in Keras.
_ALIASES = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
}


def get(identifier):
    """A Loss object from a name (``'categorical_crossentropy'``, ``'mse'``, ...) or a Loss."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _ALIASES:
        return _ALIASES[identifier.lower()]()
    raise ValueError(f"Unknown loss. Expected one of {sorted(_ALIASES)} or a minicnn.losses.Loss. Received: loss={identifier!r}")


def serialize(loss):
    return {"class_name": type(loss).__name__, "config": loss.get_config()}


def deserialize(data):
    """Inverse of ``serialize``: only classes in ``LOSSES``."""
    from .registry import from_config

    return from_config(LOSSES, data, "loss")
