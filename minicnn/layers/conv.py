"""Conv2D: a bank of learned filters slid over NHWC images."""

import numpy as np

from .. import activations, kernels, regularizers
from .base import Layer, check_padding, check_positive_int_tuple, format_shape


class Conv2D(Layer):
    """2-D convolution (cross-correlation, no kernel flip), as ``keras.layers.Conv2D``.

    Parameters
    ----------
    filters : int
        F, the number of output channels.
    kernel_size : int or (KH, KW)
    strides : int or (SH, SW), default (1, 1)
    padding : {'valid', 'same'}
        'same' pads so that ``OH = ceil(H / SH)``, the extra row/column at the bottom/right
        (TensorFlow's rule, and PyTorch's for its stride-1 ``padding='same'``).
    dilation_rate : int or (DH, DW), default (1, 1)
        Gaps between kernel taps; strides > 1 with dilation > 1 is refused, as in Keras.
    activation : str or None
    use_bias : bool
    kernel_initializer, bias_initializer : str
    kernel_regularizer : callable or None
        Adds ``kernel_regularizer(kernel)`` to the loss and its gradient to ``grads['kernel']``.

    Shapes
    ------
    x : (N, H, W, C)  ->  y : (N, OH, OW, F),  OH = (H + pad_top + pad_bottom - DH*(KH-1) - 1) // SH + 1
    kernel : (KH, KW, C, F),  bias : (F,)

    Notes
    -----
    ::

        y[n, i, j, f] = bias[f] + sum_{u, v, c} kernel[u, v, c, f] * xp[n, SH*i + DH*u, SW*j + DW*v, c]

    with ``xp`` the zero-padded input. The math lives in ``minicnn.kernels``.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        dilation_rate=(1, 1),
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        label = f"Conv2D '{kwargs['name']}'" if kwargs.get("name") else "Conv2D"
        if not isinstance(filters, (int, np.integer)) or isinstance(filters, bool) or filters <= 0:
            raise ValueError(f"{label}: `filters` must be a positive integer. Received: filters={filters!r}")
        self.filters = int(filters)
        self.kernel_size = check_positive_int_tuple(label, "kernel_size", kernel_size)
        self.strides = check_positive_int_tuple(label, "strides", strides)
        self.padding = check_padding(label, padding)
        self.dilation_rate = check_positive_int_tuple(label, "dilation_rate", dilation_rate)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                f"{label}: `strides > 1` is not compatible with `dilation_rate > 1`. "
                f"Received: strides={self.strides}, dilation_rate={self.dilation_rate}"
            )
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        super().__init__(activation=activation, **kwargs)

    def _padding(self, input_shape):
        return kernels.conv_padding(self.padding, input_shape[1:3], self.kernel_size, self.strides, self.dilation_rate)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"Conv2D '{self.name}' expects 4-D input (batch, height, width, channels). "
                f"Received: input_shape={format_shape(input_shape)}"
            )
        pads = self._padding(input_shape)
        out = []
        for axis, k, s, d, pad in zip((1, 2), self.kernel_size, self.strides, self.dilation_rate, pads):
            n = kernels.output_size(input_shape[axis], k, s, pad, d)
            if n <= 0:
                raise ValueError(
                    f"Conv2D '{self.name}': the {(k - 1) * d + 1}-pixel window of kernel_size={self.kernel_size} "
                    f"does not fit in the padded input of shape {format_shape(input_shape)} "
                    f"(axis {axis}, padding={self.padding!r})."
                )
            out.append(n)
        return (input_shape[0], out[0], out[1], self.filters)

    def weight_shapes(self, input_shape):
        shapes = {"kernel": (*self.kernel_size, input_shape[-1], self.filters)}   # (KH, KW, C, F)
        return {**shapes, "bias": (self.filters,)} if self.use_bias else shapes

    def _build(self, input_shape):
        channels = input_shape[-1]
        self.add_weight("kernel", (*self.kernel_size, channels, self.filters), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)

    # ReLU is applied by the kernel in the same pass as the bias, and differentiated in the
    # backward kernel: no separate pass (and array) for it in either direction
    fused_activations = ("relu",)

    def _forward(self, x, training):
        pads = self._padding(x.shape)
        self.cache = {}  # let go of the last batch's arrays first: the kernels can reuse them
        relu = self.activation_is_fused
        y = kernels.conv2d_forward(
            x, self.params["kernel"], self.params.get("bias"), self.strides, pads, self.dilation_rate,
            activation="relu" if relu else None,
        )
        self.cache = {"x": x, "padding": pads, "relu_output": y if relu else None}
        return y

    def _backward(self, dy):
        # dy is dL/dy, y = relu(z) when the ReLU is fused (the kernel applies y > 0), else dL/dz
        x, pads = self._cached("x"), self.cache["padding"]
        dx, dw, db = kernels.conv2d_backward(
            dy, x, self.params["kernel"], self.strides, pads, self.dilation_rate,
            relu_output=self.cache["relu_output"], input_gradient=self.needs_input_gradient,
        )
        self.grads["kernel"] = dw
        if self.use_bias:
            self.grads["bias"] = db
        return dx

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding,
            "dilation_rate": list(self.dilation_rate),
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer if isinstance(self.kernel_initializer, str) else "glorot_uniform",
            "bias_initializer": self.bias_initializer if isinstance(self.bias_initializer, str) else "zeros",
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
        }
