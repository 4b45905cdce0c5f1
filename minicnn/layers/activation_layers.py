"""LeakyReLU and ELU: activations with a parameter, as layers (``keras.layers.LeakyReLU``, ``ELU``)."""

import numpy as np

from .. import activations
from .base import Layer


def _check_number(layer_cls, kwargs, arg, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
        label = f"{layer_cls} '{kwargs['name']}'" if kwargs.get("name") else layer_cls
        raise ValueError(f"{label}: `{arg}` must be a finite number. Received: {arg}={value!r}")
    return float(value)


class LeakyReLU(Layer):
    """``y = x if x > 0 else negative_slope * x``, as ``keras.layers.LeakyReLU``.

    Parameters
    ----------
    negative_slope : float >= 0, default 0.3
        Keras 3's layer default. The activation string ``'leaky_relu'`` uses 0.2, the default of
        Keras 3's ``activations.leaky_relu``; PyTorch's ``nn.LeakyReLU`` uses 0.01.

    Notes
    -----
    ::

        y[k]  = x[k] if x[k] > 0 else negative_slope * x[k]
        dx[k] = dy[k] if x[k] > 0 else negative_slope * dy[k]      (slope at 0: negative_slope)
    """

    def __init__(self, negative_slope=0.3, **kwargs):
        self.negative_slope = _check_number("LeakyReLU", kwargs, "negative_slope", negative_slope)
        if self.negative_slope < 0:
            label = f"LeakyReLU '{kwargs['name']}'" if kwargs.get("name") else "LeakyReLU"
            raise ValueError(f"{label}: `negative_slope` must be >= 0. Received: negative_slope={negative_slope!r}")
        super().__init__(**kwargs)
        self._fn = activations.LeakyReLU(self.negative_slope)

    def _forward(self, x, training):
        return self._fn.forward(x)

    def _backward(self, dz):
        return self._fn.backward(dz)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


class ELU(Layer):
    """``y = x if x > 0 else alpha * (exp(x) - 1)``, as ``keras.layers.ELU`` (Clevert et al., 2015).

    Parameters
    ----------
    alpha : float, default 1.0
        The value ``y`` tends to as ``x -> -inf`` is ``-alpha``.

    Notes
    -----
    ::

        y[k]  = x[k] if x[k] > 0 else alpha * (exp(x[k]) - 1)
        dx[k] = dy[k] if x[k] > 0 else dy[k] * alpha * exp(x[k])   (= dy[k] * (y[k] + alpha))
    """

    def __init__(self, alpha=1.0, **kwargs):
        self.alpha = _check_number("ELU", kwargs, "alpha", alpha)
        super().__init__(**kwargs)
        self._fn = activations.ELU(self.alpha)

    def _forward(self, x, training):
        return self._fn.forward(x)

    def _backward(self, dz):
        return self._fn.backward(dz)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}
