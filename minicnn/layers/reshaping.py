"""ZeroPadding2D: add rows and columns of zeros around each image."""

import numpy as np

from .base import Layer, format_shape


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


class ZeroPadding2D(Layer):
    """Pad the height and width of NHWC images with zeros, as ``keras.layers.ZeroPadding2D``.

    Parameters
    ----------
    padding : int, (ph, pw) or ((top, bottom), (left, right)), default (1, 1)
        An int pads all four sides by it; ``(ph, pw)`` pads top and bottom by ph, left and right by pw.

    Shapes
    ------
    x : (N, H, W, C)  ->  y : (N, top + H + bottom, left + W + right, C)

    Notes
    -----
    ::

        y[n, top + h, left + w, c] = x[n, h, w, c],  and 0 everywhere else
        dx[n, h, w, c] = dy[n, top + h, left + w, c]     (the padding's gradient goes nowhere)
    """

    def __init__(self, padding=(1, 1), **kwargs):
        label = f"ZeroPadding2D '{kwargs['name']}'" if kwargs.get("name") else "ZeroPadding2D"
        self.padding = self._normalize(label, padding)
        super().__init__(**kwargs)

    @staticmethod
    def _normalize(label, padding):
        if _is_int(padding) and padding >= 0:
            return ((int(padding),) * 2,) * 2
        if isinstance(padding, (tuple, list)) and len(padding) == 2:
            if all(_is_int(p) and p >= 0 for p in padding):
                return tuple((int(p), int(p)) for p in padding)
            if all(isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) and v >= 0 for v in p) for p in padding):
                return tuple((int(p[0]), int(p[1])) for p in padding)
        raise ValueError(
            f"{label}: `padding` must be a non-negative int, a tuple of 2 non-negative ints, or a tuple of "
            f"2 tuples of 2 non-negative ints ((top, bottom), (left, right)). Received: padding={padding!r}"
        )

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"ZeroPadding2D '{self.name}' expects 4-D input (batch, height, width, channels). "
                f"Received: input_shape={format_shape(input_shape)}"
            )
        (t, b), (l, r) = self.padding
        N, H, W, C = input_shape
        return (N, None if H is None else H + t + b, None if W is None else W + l + r, C)

    def _forward(self, x, training):
        (t, b), (l, r) = self.padding
        self.cache = {"x_shape": x.shape}
        return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))

    def _backward(self, dz):
        _, H, W, _ = self._cached("x_shape")
        (t, _), (l, _) = self.padding
        return dz[:, t : t + H, l : l + W, :]

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding]}
