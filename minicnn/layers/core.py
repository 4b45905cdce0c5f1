"""Dense, Flatten, Activation, ReLU, Softmax, Dropout and Input: the layers around the convolutions."""

import math

import numpy as np

from .. import activations, config, kernels, regularizers
from .base import Layer, format_shape


class Dense(Layer):
    """Fully connected layer, as ``keras.layers.Dense``.

    Shapes
    ------
    x : (N, D)  ->  y : (N, units);  kernel : (D, units),  bias : (units,)

    Notes
    -----
    ::

        y[n, k] = bias[k] + sum_d x[n, d] * kernel[d, k]
        dx = dy @ kernel.T        dkernel = x.T @ dy        dbias[k] = sum_n dy[n, k]
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        label = f"Dense '{kwargs['name']}'" if kwargs.get("name") else "Dense"
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"{label}: `units` must be a positive integer. Received: units={units!r}")
        self.units = int(units)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        super().__init__(activation=activation, **kwargs)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                f"Dense '{self.name}' expects 2-D input (batch, features); put a Flatten layer before it. "
                f"Received: input_shape={format_shape(input_shape)}"
            )
        return (input_shape[0], self.units)

    def weight_shapes(self, input_shape):
        shapes = {"kernel": (input_shape[-1], self.units)}
        return {**shapes, "bias": (self.units,)} if self.use_bias else shapes

    def _build(self, input_shape):
        self.add_weight("kernel", (input_shape[-1], self.units), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer)

    # ReLU is applied in the kernel's pass over y, and differentiated in the backward kernel
    fused_activations = ("relu",)

    def _forward(self, x, training):
        relu = self.activation_is_fused
        y = kernels.dense_forward(x, self.params["kernel"], self.params.get("bias"), "relu" if relu else None)
        self.cache = {"x": x, "relu_output": y if relu else None}
        return y

    def _backward(self, dy):
        # dy is dL/dy, y = relu(z) when the ReLU is fused (the kernel applies y > 0), else dL/dz
        x = self._cached("x")
        self.grads = {}  # let go of the last step's gradients first: the kernel can reuse their memory
        dx, dw, db = kernels.dense_backward(dy, x, self.params["kernel"], self.cache["relu_output"],
                                            input_gradient=self.needs_input_gradient)
        self.grads["kernel"] = dw
        if self.use_bias:
            self.grads["bias"] = db
        return dx

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer if isinstance(self.kernel_initializer, str) else "glorot_uniform",
            "bias_initializer": self.bias_initializer if isinstance(self.bias_initializer, str) else "zeros",
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
        }


class Flatten(Layer):
    """(N, H, W, C) -> (N, H*W*C) in row-major (h, w, c) order, the order Keras uses.

    Backward only reshapes ``dy`` back to the input shape.
    """

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        return (input_shape[0], None if None in rest else math.prod(rest))

    def _forward(self, x, training):
        self.cache = {"x_shape": x.shape}
        return x.reshape(x.shape[0], -1)

    def _backward(self, dz):
        return dz.reshape(self._cached("x_shape"))


class Activation(Layer):
    """Applies an activation function on its own: ``Activation('relu')``."""

    def __init__(self, activation, **kwargs):
        super().__init__(activation=activation, **kwargs)

    def get_config(self):
        return {**super().get_config(), "activation": activations.serialize(self.activation)}


class ReLU(Activation):
    """``max(x, 0)`` as a layer."""

    def __init__(self, **kwargs):
        kwargs.pop("activation", None)
        super().__init__("relu", **kwargs)

    def get_config(self):
        config_ = super().get_config()
        del config_["activation"]
        return config_


class Softmax(Activation):
    """Softmax over the last axis as a layer (see ``minicnn.activations.Softmax``)."""

    def __init__(self, **kwargs):
        kwargs.pop("activation", None)
        super().__init__("softmax", **kwargs)

    def get_config(self):
        config_ = super().get_config()
        del config_["activation"]
        return config_


class Dropout(Layer):
    """Inverted dropout, as ``keras.layers.Dropout``.

    In training each input is kept with probability ``1 - rate`` and scaled by ``1 / (1 - rate)``,
    so the expected output equals the input and inference needs no change: there it is the identity.
    ``dx = dy * mask / (1 - rate)`` with the same mask.

    The mask comes from the layer's own generator, seeded by ``seed`` or, if None, from
    ``minicnn.config.rng()`` when the layer is made (so ``set_random_seed`` makes it reproducible).
    """

    def __init__(self, rate, seed=None, **kwargs):
        label = f"Dropout '{kwargs['name']}'" if kwargs.get("name") else "Dropout"
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)) or not 0 <= rate < 1:
            raise ValueError(f"{label}: `rate` must be a number in [0, 1). Received: rate={rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self._rng = np.random.default_rng(seed if seed is not None else config.rng().integers(2**63))
        super().__init__(**kwargs)

    def _forward(self, x, training):
        if not training or self.rate == 0:
            self.cache = {"scale": None}
            return x
        keep = self._rng.random(x.shape) >= self.rate
        scale = keep.astype(x.dtype) / x.dtype.type(1 - self.rate)   # (N, ...) 0 or 1/(1-rate)
        self.cache = {"scale": scale}
        return x * scale

    def _backward(self, dz):
        scale = self._cached("scale")
        return dz if scale is None else dz * scale

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class InputLayer(Layer):
    """Marks the input shape of a Sequential model (``minicnn.Input(shape=(28, 28, 1))``). Identity."""

    def __init__(self, shape=None, batch_size=None, name=None, input_shape=None, **kwargs):
        shape = shape if shape is not None else input_shape
        if shape is None:
            raise ValueError("InputLayer: `shape` is required, e.g. Input(shape=(28, 28, 1)).")
        super().__init__(name=name, input_shape=tuple(shape), **kwargs)
        self.batch_size = batch_size

    def get_config(self):
        config_ = super().get_config()
        config_["shape"] = config_.pop("input_shape")
        config_["batch_size"] = self.batch_size
        return config_


def Input(shape, batch_size=None, name=None, dtype=None):
    """``minicnn.Input(shape=(28, 28, 1))``: the first element of a Sequential model."""
    return InputLayer(shape=shape, batch_size=batch_size, name=name, dtype=dtype)
