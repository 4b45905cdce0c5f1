"""BatchNormalization: normalise each channel with batch statistics in training, moving averages after."""

import numpy as np

from .. import initializers, kernels
from .base import Layer, format_shape


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


class BatchNormalization(Layer):
    """Batch normalisation (Ioffe & Szegedy, 2015), as ``keras.layers.BatchNormalization`` (Keras 3).

    Parameters
    ----------
    axis : int, default -1
        The channel axis: one ``gamma``, ``beta``, moving mean and moving variance per entry of it;
        statistics are taken over all the other axes (for NHWC images: N, H and W).
    momentum : float in [0, 1], default 0.99
        Weight of the old value in the moving averages. PyTorch's ``momentum`` is ``1 - momentum``.
    epsilon : float > 0, default 1e-3
        Added to the variance (PyTorch's default is 1e-5).
    center, scale : bool
        Learn ``beta`` (a shift) and ``gamma`` (a scale); without one it is fixed at 0 (or 1).
    beta_initializer, gamma_initializer, moving_mean_initializer, moving_variance_initializer : str
        Defaults 'zeros', 'ones', 'zeros', 'ones'.

    Shapes
    ------
    x : (N, ..., C, ...)  ->  y : same shape;  gamma, beta, moving_mean, moving_variance : (C,)

    Weights, in Keras order: ``gamma``, ``beta`` (trainable, in ``params``), ``moving_mean``,
    ``moving_variance`` (not trained: attributes listed in ``non_trainable_names``, so
    ``get_weights``/``set_weights`` and saved models include them).

    Notes
    -----
    Training (``forward(x, training=True)`` on a trainable layer), with x seen as M rows of C
    channels (M = N*H*W)::

        mean[c] = (1/M) sum_m x[m, c]          var[c] = (1/M) sum_m (x[m, c] - mean[c])**2
        xhat[m, c] = (x[m, c] - mean[c]) / sqrt(var[c] + epsilon)
        y[m, c] = gamma[c] * xhat[m, c] + beta[c]
        moving_mean[c]     <- momentum * moving_mean[c]     + (1 - momentum) * mean[c]
        moving_variance[c] <- momentum * moving_variance[c] + (1 - momentum) * var[c]

    Inference (``training=False``, or a layer with ``trainable=False``, as in Keras 3) uses the
    moving averages in place of ``mean`` and ``var``: an affine map of x.

    Derivatives. Training (x moves the statistics too; see ``kernels.reference.batchnorm_backward``)::

        dbeta[c] = sum_m dy[m, c]        dgamma[c] = sum_m dy[m, c] * xhat[m, c]
        dx[m, c] = gamma[c] / sqrt(var[c] + epsilon) * (dy[m, c] - dbeta[c] / M - xhat[m, c] * dgamma[c] / M)

    Inference: the same ``dbeta`` and ``dgamma``, and ``dx[m, c] = gamma[c] / sqrt(moving_variance[c] + epsilon) * dy[m, c]``.

    Both Keras 3 and this layer feed the BIASED batch variance (divided by M) to the moving
    variance. PyTorch's ``BatchNorm2d`` normalises with the biased variance too, but updates its
    ``running_var`` with the unbiased one (divided by M - 1), so after training the two moving
    variances differ by about a factor ``M / (M - 1)``; outputs and gradients in training agree.
    """

    non_trainable_names = ("moving_mean", "moving_variance")

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        **kwargs,
    ):
        label = f"BatchNormalization '{kwargs['name']}'" if kwargs.get("name") else "BatchNormalization"
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, (bool, np.bool_)):
            raise ValueError(f"{label}: `axis` must be an integer. Received: axis={axis!r}")
        if not _is_number(momentum) or not 0 <= momentum <= 1:
            raise ValueError(f"{label}: `momentum` must be a number in [0, 1]. Received: momentum={momentum!r}")
        if not _is_number(epsilon) or not np.isfinite(epsilon) or epsilon <= 0:
            raise ValueError(f"{label}: `epsilon` must be a positive number. Received: epsilon={epsilon!r}")
        for arg, value in (("center", center), ("scale", scale)):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{label}: `{arg}` must be True or False. Received: {arg}={value!r}")
        inits = {
            "beta_initializer": beta_initializer,
            "gamma_initializer": gamma_initializer,
            "moving_mean_initializer": moving_mean_initializer,
            "moving_variance_initializer": moving_variance_initializer,
        }
        for arg, value in inits.items():
            if not callable(value) and not (isinstance(value, str) and value.lower() in initializers.INITIALIZERS):
                raise ValueError(
                    f"{label}: unknown `{arg}`. Expected one of {sorted(initializers.INITIALIZERS)} or a callable. "
                    f"Received: {arg}={value!r}"
                )
        self.axis = int(axis)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        for arg, value in inits.items():
            setattr(self, arg, value)
        self.moving_mean = None
        self.moving_variance = None
        super().__init__(**kwargs)

    def _channel_axis(self, ndim):
        """``axis`` as a non-negative index, or a ValueError if it is the batch axis or out of range."""
        axis = self.axis + ndim if self.axis < 0 else self.axis
        if not 1 <= axis < ndim:
            raise ValueError(
                f"BatchNormalization '{self.name}': `axis`={self.axis} is invalid for {ndim}-D input "
                "(axis 0 is the batch axis)."
            )
        return axis

    def compute_output_shape(self, input_shape):
        axis = self._channel_axis(len(input_shape))
        if input_shape[axis] is None:
            raise ValueError(
                f"BatchNormalization '{self.name}': the channel axis {axis} must have a known size. "
                f"Received: input_shape={format_shape(input_shape)}"
            )
        return tuple(input_shape)

    def weight_shapes(self, input_shape):
        channels = (input_shape[self._channel_axis(len(input_shape))],)
        names = ["gamma"] * self.scale + ["beta"] * self.center + ["moving_mean", "moving_variance"]
        return {name: channels for name in names}

    def _build(self, input_shape):
        channels = input_shape[self._channel_axis(len(input_shape))]
        if self.scale:
            self.add_weight("gamma", (channels,), self.gamma_initializer)
        if self.center:
            self.add_weight("beta", (channels,), self.beta_initializer)
        label = f"BatchNormalization '{self.name}'"
        self.moving_mean = initializers.get(self.moving_mean_initializer, label)((channels,), dtype=self.dtype)
        self.moving_variance = initializers.get(self.moving_variance_initializer, label)((channels,), dtype=self.dtype)

    def _gamma_beta(self, dtype):
        C = self.moving_mean.shape[0]
        gamma = self.params["gamma"] if self.scale else np.ones(C, dtype=dtype)
        beta = self.params["beta"] if self.center else np.zeros(C, dtype=dtype)
        return gamma, beta

    def _forward(self, x, training):
        axis = self._channel_axis(x.ndim)
        xc = np.moveaxis(x, axis, -1)  # channels last: (..., C), a view
        gamma, beta = self._gamma_beta(x.dtype)
        if training and self.trainable:
            y, mean, var = kernels.batchnorm_forward_train(xc, gamma, beta, self.epsilon)
            # in place, so that arrays a learner holds (model.weights) stay live
            self.moving_mean *= self.momentum
            self.moving_mean += (1 - self.momentum) * mean
            self.moving_variance *= self.momentum
            self.moving_variance += (1 - self.momentum) * var
            self.cache = {"training": True, "x": xc, "mean": mean, "var": var, "axis": axis}
        else:
            inv_std = (1 / np.sqrt(self.moving_variance + self.epsilon)).astype(x.dtype, copy=False)  # (C,)
            xhat = (xc - self.moving_mean) * inv_std
            y = gamma * xhat + beta
            self.cache = {"training": False, "xhat": xhat, "inv_std": inv_std, "axis": axis}
        return np.moveaxis(y, -1, axis)

    def _backward(self, dz):
        training = self._cached("training")
        axis = self.cache["axis"]
        dzc = np.moveaxis(dz, axis, -1)
        gamma, _ = self._gamma_beta(dz.dtype)
        if training:
            c = self.cache
            dx, dgamma, dbeta = kernels.batchnorm_backward(dzc, c["x"], gamma, c["mean"], c["var"], self.epsilon)
        else:
            reduce = tuple(range(dzc.ndim - 1))
            dgamma = (dzc * self.cache["xhat"]).sum(axis=reduce)
            dbeta = dzc.sum(axis=reduce)
            dx = dzc * (gamma * self.cache["inv_std"])
        if self.scale:
            self.grads["gamma"] = dgamma
        if self.center:
            self.grads["beta"] = dbeta
        return np.moveaxis(dx, -1, axis)

    def get_config(self):
        def name_or(value, default):
            return value if isinstance(value, str) else default

        return {
            **super().get_config(),
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": name_or(self.beta_initializer, "zeros"),
            "gamma_initializer": name_or(self.gamma_initializer, "ones"),
            "moving_mean_initializer": name_or(self.moving_mean_initializer, "zeros"),
            "moving_variance_initializer": name_or(self.moving_variance_initializer, "ones"),
        }
