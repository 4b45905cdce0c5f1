"""Pooling layers: MaxPooling2D (largest value of each window), AveragePooling2D, global pooling."""

from .. import kernels
from .base import Layer, check_padding, check_positive_int_tuple, format_shape


class MaxPooling2D(Layer):
    """Max over each ``pool_size`` window, as ``keras.layers.MaxPooling2D``.

    Parameters
    ----------
    pool_size : int or (PH, PW), default (2, 2)
    strides : int or (SH, SW) or None
        None means ``strides = pool_size`` (non-overlapping windows). Smaller strides overlap.
    padding : {'valid', 'same'}
        'same' pads with -inf so that ``OH = ceil(H / SH)``; a padded cell never wins.

    Shapes
    ------
    x : (N, H, W, C)  ->  y : (N, OH, OW, C),  OH = (H + pad_top + pad_bottom - PH) // SH + 1

    Notes
    -----
    ::

        y[n, i, j, c] = max_{u, v} xp[n, SH*i + u, SW*j + v, c]
        dx[n, h, w, c] = sum over windows (i, j) whose argmax is (h, w) of dy[n, i, j, c]

    Ties: when several inputs of a window share the maximum, the first one in row-major window
    order gets the whole gradient (as ``np.argmax`` and PyTorch's CPU kernel do); overlapping
    windows can each send gradient to the same input, and those contributions add up.
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", **kwargs):
        label = f"MaxPooling2D '{kwargs['name']}'" if kwargs.get("name") else "MaxPooling2D"
        self.pool_size = check_positive_int_tuple(label, "pool_size", pool_size)
        self.strides = self.pool_size if strides is None else check_positive_int_tuple(label, "strides", strides)
        self.padding = check_padding(label, padding)
        super().__init__(**kwargs)

    def _padding(self, input_shape):
        return kernels.conv_padding(self.padding, input_shape[1:3], self.pool_size, self.strides)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects 4-D input (batch, height, width, channels). "
                f"Received: input_shape={format_shape(input_shape)}"
            )
        pads = self._padding(input_shape)
        out = [kernels.output_size(input_shape[a], p, s, pad) for a, p, s, pad in zip((1, 2), self.pool_size, self.strides, pads)]
        if min(out) <= 0:
            raise ValueError(
                f"{type(self).__name__} '{self.name}': pool_size={self.pool_size} is larger than the "
                f"padded input {format_shape(input_shape)} (padding={self.padding!r})."
            )
        return (input_shape[0], out[0], out[1], input_shape[3])

    def _forward(self, x, training):
        pads = self._padding(x.shape)
        self.cache = {}  # let go of the last batch's argmax first: the kernel can reuse its memory
        y, argmax = kernels.maxpool2d_forward(x, self.pool_size, self.strides, pads)
        self.cache = {"argmax": argmax, "x_shape": x.shape, "padding": pads}
        return y

    def _backward(self, dz):
        argmax = self._cached("argmax")
        return kernels.maxpool2d_backward(dz, argmax, self.cache["x_shape"], self.pool_size, self.strides, self.cache["padding"])

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding,
        }


MaxPool2D = MaxPooling2D


class AveragePooling2D(Layer):
    """Mean over each ``pool_size`` window, as ``keras.layers.AveragePooling2D``.

    Parameters
    ----------
    pool_size : int or (PH, PW), default (2, 2)
    strides : int or (SH, SW) or None
        None means ``strides = pool_size``.
    padding : {'valid', 'same'}
        'same' pads so that ``OH = ceil(H / SH)``; padded cells are left out of each mean
        (Keras/TensorFlow; PyTorch's ``avg_pool2d(..., count_include_pad=False)``).

    Shapes
    ------
    x : (N, H, W, C)  ->  y : (N, OH, OW, C),  OH = (H + pad_top + pad_bottom - PH) // SH + 1

    Notes
    -----
    With ``count[i, j]`` the number of cells of window ``(i, j)`` inside x::

        y[n, i, j, c]  = (1 / count[i, j]) * sum_{u, v} xp[n, SH*i + u, SW*j + v, c]
        dx[n, p, q, c] = sum over windows (i, j) covering (p, q) of dy[n, i, j, c] / count[i, j]
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", **kwargs):
        label = f"AveragePooling2D '{kwargs['name']}'" if kwargs.get("name") else "AveragePooling2D"
        self.pool_size = check_positive_int_tuple(label, "pool_size", pool_size)
        self.strides = self.pool_size if strides is None else check_positive_int_tuple(label, "strides", strides)
        self.padding = check_padding(label, padding)
        super().__init__(**kwargs)

    # the window geometry (padding, output shape and its errors) is max pooling's
    _padding = MaxPooling2D._padding
    compute_output_shape = MaxPooling2D.compute_output_shape

    def _forward(self, x, training):
        pads = self._padding(x.shape)
        self.cache = {"x_shape": x.shape, "padding": pads}
        return kernels.avgpool2d_forward(x, self.pool_size, self.strides, pads)

    def _backward(self, dz):
        x_shape = self._cached("x_shape")
        return kernels.avgpool2d_backward(dz, x_shape, self.pool_size, self.strides, self.cache["padding"])

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding,
        }


AvgPool2D = AveragePooling2D


class _GlobalPooling2D(Layer):
    """Pool each channel over the whole image: ``(N, H, W, C) -> (N, C)``, or ``(N, 1, 1, C)`` with ``keepdims``.

    A global pooling is the ordinary pooling kernel with one window as large as the image.
    """

    def __init__(self, keepdims=False, **kwargs):
        if not isinstance(keepdims, bool):
            label = f"{type(self).__name__} '{kwargs['name']}'" if kwargs.get("name") else type(self).__name__
            raise ValueError(f"{label}: `keepdims` must be True or False. Received: keepdims={keepdims!r}")
        self.keepdims = bool(keepdims)
        super().__init__(**kwargs)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects 4-D input (batch, height, width, channels). "
                f"Received: input_shape={format_shape(input_shape)}"
            )
        N, C = input_shape[0], input_shape[3]
        return (N, 1, 1, C) if self.keepdims else (N, C)

    def _window(self, x_shape):
        return dict(pool_size=x_shape[1:3], strides=x_shape[1:3], padding=((0, 0), (0, 0)))

    def _backward(self, dz):
        x_shape = self._cached("x_shape")
        return self._pool_backward(dz.reshape(x_shape[0], 1, 1, x_shape[3]), x_shape)

    def get_config(self):
        return {**super().get_config(), "keepdims": self.keepdims}


class GlobalAveragePooling2D(_GlobalPooling2D):
    """Mean of each channel over all pixels, as ``keras.layers.GlobalAveragePooling2D``.

    Notes
    -----
    ::

        y[n, c] = (1 / (H*W)) sum_{h, w} x[n, h, w, c]          dx[n, h, w, c] = dy[n, c] / (H*W)
    """

    def _forward(self, x, training):
        self.cache = {"x_shape": x.shape}
        y = kernels.avgpool2d_forward(x, **self._window(x.shape))  # (N, 1, 1, C)
        return y if self.keepdims else y.reshape(x.shape[0], x.shape[3])

    def _pool_backward(self, dy, x_shape):
        return kernels.avgpool2d_backward(dy, x_shape, **self._window(x_shape))


class GlobalMaxPooling2D(_GlobalPooling2D):
    """Max of each channel over all pixels, as ``keras.layers.GlobalMaxPooling2D``.

    Notes
    -----
    ::

        y[n, c] = max_{h, w} x[n, h, w, c]          dx[n, h, w, c] = dy[n, c] at the argmax, 0 elsewhere

    Ties: the first maximum in row-major (h, w) order gets the whole gradient, as in
    ``MaxPooling2D`` (the same kernel, with one window covering the image).
    """

    def _forward(self, x, training):
        y, argmax = kernels.maxpool2d_forward(x, **self._window(x.shape))  # (N, 1, 1, C)
        self.cache = {"x_shape": x.shape, "argmax": argmax}
        return y if self.keepdims else y.reshape(x.shape[0], x.shape[3])

    def _pool_backward(self, dy, x_shape):
        return kernels.maxpool2d_backward(dy, self.cache["argmax"], x_shape, **self._window(x_shape))


GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D
