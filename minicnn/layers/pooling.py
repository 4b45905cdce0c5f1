"""MaxPooling2D: keep the largest value of each window."""

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
