"""Preprocessing and augmentation layers, as ``keras.layers.Rescaling`` ... ``RandomContrast``.

Put them first in a model so the preprocessing travels with it::

    model = Sequential([
        Input(shape=(28, 28, 1)),
        RandomFlip("horizontal"), RandomRotation(0.05), RandomZoom(0.1),   # training only
        Rescaling(1.0 / 255),                                              # always
        Conv2D(32, 3, activation="relu"), ...
    ])

* ``Rescaling``, ``Resizing`` and ``Normalization`` act in training *and* inference.
* ``Random*`` layers act only when ``training=True`` (inside ``fit``) and are the identity
  otherwise. Each has its own generator ``self._rng`` seeded by ``seed`` or, if None, from
  ``minicnn.config.rng()`` when it is made (as ``Dropout``), so ``set_random_seed`` makes runs
  repeatable and ``minicnn.gradcheck`` can replay a draw.

Backward passes are exact, so the layers can sit anywhere in a model: ``Rescaling`` ``dx = dy * scale``,
``Normalization`` ``dx = dy / std``, ``RandomFlip`` flips ``dy`` back, ``RandomContrast`` differentiates
the mean it subtracts, and the geometric layers (``Resizing``, ``RandomRotation``, ``RandomTranslation``,
``RandomZoom``) scatter ``dy`` back through the same interpolation taps (the adjoint of
``minicnn.data.transforms.affine_warp``).

The numerical work lives in ``minicnn.data.transforms``; these classes keep the state (seeds, the
drawn amounts for backward, Normalization's statistics) and follow the ``Layer`` contract.
"""

import numpy as np

from .. import config
from ..data import transforms as T
from .base import Layer, format_shape


def _label(cls_name, kwargs):
    return f"{cls_name} '{kwargs['name']}'" if kwargs.get("name") else cls_name


def _is_number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _jsonable(value):
    """Tuples and arrays as lists, NumPy scalars as Python numbers: what ``get_config`` returns."""
    return np.asarray(value).tolist() if isinstance(value, (tuple, list, np.ndarray, np.generic)) else value


class _ImageLayer(Layer):
    """Layers on NHWC batches: check that the input is 4-D."""

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects 4-D input (batch, height, width, channels). "
                f"Received: input_shape={format_shape(input_shape)}"
            )
        return tuple(input_shape)


class _RandomLayer(_ImageLayer):
    """Own seeded generator, identity unless ``training``; subclasses implement ``_augment``/``_augment_backward``."""

    def __init__(self, seed=None, **kwargs):
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"{_label(type(self).__name__, kwargs)}: `seed` must be a non-negative integer or None. "
                             f"Received: seed={seed!r}")
        self.seed = seed
        self._rng = np.random.default_rng(seed if seed is not None else config.rng().integers(2**63))
        super().__init__(**kwargs)

    def _forward(self, x, training):
        if not training:
            self.cache = {"identity": True}
            return x
        self.cache = {"identity": False}
        return self._augment(x)

    def _backward(self, dz):
        return dz if self._cached("identity") else self._augment_backward(dz)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


# ----------------------------------------------------------------------------- always-on layers
class Rescaling(Layer):
    """``y = x * scale + offset``, as ``keras.layers.Rescaling`` (``Rescaling(1 / 255)`` maps to [0, 1]).

    ``scale`` and ``offset`` are numbers or per-channel lists. ``dx = dy * scale``.
    """

    def __init__(self, scale, offset=0.0, **kwargs):
        label = _label("Rescaling", kwargs)
        for arg, value in (("scale", scale), ("offset", offset)):
            flat = np.ravel(np.asarray(value, dtype=object))
            if flat.size == 0 or not all(_is_number(v) and np.isfinite(v) for v in flat):
                raise ValueError(f"{label}: `{arg}` must be a finite number or a list of them. Received: {arg}={value!r}")
        self.scale = _jsonable(scale)
        self.offset = _jsonable(offset)
        super().__init__(**kwargs)

    def _forward(self, x, training):
        self.cache = {"forward": True}
        return x * np.asarray(self.scale, x.dtype) + np.asarray(self.offset, x.dtype)

    def _backward(self, dz):
        self._cached("forward")
        return dz * np.asarray(self.scale, dz.dtype)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


class Resizing(_ImageLayer):
    """Resize each image to ``(height, width)``, as ``keras.layers.Resizing`` (no antialiasing).

    Bilinear with half-pixel centres (``tf.image.resize``, PyTorch ``align_corners=False``); see
    ``minicnn.data.transforms.resize``. Backward is the adjoint of that interpolation: each output
    gradient goes back to the (up to) four input pixels it was read from, with the same weights.
    Keras's ``crop_to_aspect_ratio``/``pad_to_aspect_ratio`` are not implemented.
    """

    def __init__(self, height, width, interpolation="bilinear", **kwargs):
        label = _label("Resizing", kwargs)
        for arg, value in (("height", height), ("width", width)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{label}: `{arg}` must be a positive integer. Received: {arg}={value!r}")
        if interpolation not in T.INTERPOLATIONS:
            raise ValueError(f"{label}: `interpolation` must be one of {T.INTERPOLATIONS}. "
                             f"Received: interpolation={interpolation!r}")
        self.height, self.width, self.interpolation = int(height), int(width), interpolation
        super().__init__(**kwargs)

    def compute_output_shape(self, input_shape):
        super().compute_output_shape(input_shape)
        return (input_shape[0], self.height, self.width, input_shape[3])

    def _forward(self, x, training):
        self.cache = {"input_size": x.shape[1:3]}
        return T.resize(x, (self.height, self.width), self.interpolation)

    def _backward(self, dz):
        input_size = self._cached("input_size")
        A = T.resize_matrix(input_size, (self.height, self.width))
        return T.affine_warp_backward(dz, A, input_size, "nearest", self.interpolation)

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width, "interpolation": self.interpolation}


class Normalization(Layer):
    """Standardise features: ``y = (x - mean) / max(sqrt(variance), 1e-7)``, as ``keras.layers.Normalization``.

    ``axis`` names the axes that keep their own statistics (default -1: one mean and variance per
    channel); None means one scalar for everything. Set them with ``mean=``/``variance=`` or learn
    them from data with ``adapt(x)``. They are non-trainable weights: ``get_weights()`` returns
    ``[mean, variance]`` and a saved model keeps them. ``dx = dy / max(sqrt(variance), 1e-7)``.
    """

    non_trainable_names = ("mean", "variance")
    epsilon = 1e-7

    def __init__(self, axis=-1, mean=None, variance=None, **kwargs):
        label = _label("Normalization", kwargs)
        if axis is None:
            axes = ()
        elif isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
            axes = (int(axis),)
        elif isinstance(axis, (tuple, list)) and all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axis):
            axes = tuple(int(a) for a in axis)
        else:
            raise ValueError(f"{label}: `axis` must be an integer, a tuple of integers or None. Received: axis={axis!r}")
        if (mean is None) != (variance is None):
            raise ValueError(f"{label}: pass both `mean` and `variance`, or neither. "
                             f"Received: mean={mean!r}, variance={variance!r}")
        for arg, value in (("mean", mean), ("variance", variance)):
            if value is None:
                continue
            flat = np.ravel(np.asarray(value, dtype=object))
            if flat.size == 0 or not all(_is_number(v) and np.isfinite(v) for v in flat):
                raise ValueError(f"{label}: `{arg}` must be a number or a list of numbers. Received: {arg}={value!r}")
        if variance is not None and np.min(np.asarray(variance, dtype=np.float64)) < 0:
            raise ValueError(f"{label}: `variance` must be non-negative. Received: variance={variance!r}")
        self.axis = list(axes) if isinstance(axis, (tuple, list)) else axis
        self._axes = axes
        self._mean_arg = _jsonable(mean)
        self._variance_arg = _jsonable(variance)
        self.mean = None
        self.variance = None
        super().__init__(**kwargs)

    def _keep_axes(self, ndim):
        axes = tuple(a + ndim if a < 0 else a for a in self._axes)
        if any(a <= 0 or a >= ndim for a in axes):
            raise ValueError(
                f"Normalization '{self.name}': `axis`={self.axis!r} is invalid for {ndim}-D input "
                "(axis 0 is the batch axis and cannot keep its own statistics)."
            )
        return axes

    def compute_output_shape(self, input_shape):
        for a in self._keep_axes(len(input_shape)):
            if input_shape[a] is None:
                raise ValueError(f"Normalization '{self.name}': axis {a} must have a known size. "
                                 f"Received: input_shape={format_shape(input_shape)}")
        return tuple(input_shape)

    def _stat_shape(self, input_shape):
        return tuple(input_shape[a] for a in self._keep_axes(len(input_shape)))

    def weight_shapes(self, input_shape):
        return {"mean": self._stat_shape(input_shape), "variance": self._stat_shape(input_shape)}

    def _build(self, input_shape):
        shape = self._stat_shape(input_shape)
        if self._mean_arg is not None:
            try:
                mean = np.broadcast_to(np.asarray(self._mean_arg, np.float64), shape)
                variance = np.broadcast_to(np.asarray(self._variance_arg, np.float64), shape)
            except ValueError as e:
                raise ValueError(f"Normalization '{self.name}': `mean`/`variance` cannot be broadcast to the "
                                 f"statistics shape {shape} of input {format_shape(input_shape)}.") from e
        elif self.mean is not None and self.mean.shape == shape:   # adapted (or set) before this build
            mean, variance = self.mean, self.variance
        else:                                                      # not adapted yet: the identity
            mean, variance = np.zeros(shape), np.ones(shape)
        self.mean = np.array(mean, dtype=self.dtype)
        self.variance = np.array(variance, dtype=self.dtype)

    def adapt(self, data):
        """Set ``mean`` and ``variance`` to the statistics of ``data`` over all non-kept axes.

        ``data`` is an array (N, ...) or any iterable of batches (arrays, or ``(x, y)`` pairs such as
        an ``image_dataset_from_directory`` dataset), combined exactly (Chan et al.'s pairwise update,
        in float64). The variance is the population variance (divide by the count), as Keras.
        """
        if self._mean_arg is not None:
            raise ValueError(f"Normalization '{self.name}' was given fixed `mean` and `variance`; it cannot be adapted.")
        batches = [np.asarray(data)] if isinstance(data, (np.ndarray, list, tuple)) else data   # else: a dataset
        count, mean, m2, shape = 0, 0.0, 0.0, None
        for batch in batches:
            if isinstance(batch, (tuple, list)) and len(batch) == 2 and not _is_number(batch[0]):
                batch = batch[0]
            x = np.asarray(batch, dtype=np.float64)
            if shape is None:
                shape = x.shape
                keep = self._keep_axes(x.ndim)
                reduce = tuple(a for a in range(x.ndim) if a not in keep)
            elif x.shape[1:] != shape[1:]:
                raise ValueError(f"Normalization '{self.name}'.adapt: batches differ in shape: {shape} vs {x.shape}")
            n_b = x.size // int(np.prod([x.shape[a] for a in keep], dtype=np.int64))
            mean_b = x.mean(axis=reduce)
            m2_b = x.var(axis=reduce) * n_b
            delta = mean_b - mean
            total = count + n_b
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta**2 * (count * n_b / total)
            count = total
        if shape is None or count == 0:
            raise ValueError(f"Normalization '{self.name}'.adapt: received no data.")
        input_shape = (None,) + tuple(shape[1:])
        if not self.built:
            self.build(input_shape)
        else:
            self.compute_output_shape(input_shape)
        self.mean = np.array(mean, dtype=self.dtype).reshape(self._stat_shape(input_shape))
        self.variance = np.array(m2 / count, dtype=self.dtype).reshape(self._stat_shape(input_shape))

    def _broadcast(self, stat, ndim):
        shape = [1] * ndim
        for k, a in enumerate(self._keep_axes(ndim)):
            shape[a] = stat.shape[k]
        return stat.reshape(shape)

    def _forward(self, x, training):
        std = np.maximum(np.sqrt(self.variance), self.epsilon).astype(x.dtype)
        inv_std = self._broadcast(1 / std, x.ndim)
        self.cache = {"inv_std": inv_std}
        return (x - self._broadcast(self.mean, x.ndim)) * inv_std

    def _backward(self, dz):
        return dz * self._cached("inv_std")

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "mean": self._mean_arg, "variance": self._variance_arg}


# ----------------------------------------------------------------------------- random augmentation
class RandomFlip(_RandomLayer):
    """Flip each image left-right and/or up-down with probability 1/2, as ``keras.layers.RandomFlip``.

    ``mode``: 'horizontal', 'vertical' or 'horizontal_and_vertical' (Keras's default: both axes,
    drawn independently). A flip is a permutation, so ``dx`` is ``dy`` flipped back the same way.
    """

    def __init__(self, mode="horizontal_and_vertical", seed=None, **kwargs):
        if mode not in T.FLIP_MODES:
            raise ValueError(f"{_label('RandomFlip', kwargs)}: `mode` must be one of {T.FLIP_MODES}. Received: mode={mode!r}")
        self.mode = mode
        super().__init__(seed=seed, **kwargs)

    def _augment(self, x):
        flips = T.sample_flips(self._rng, len(x), self.mode)
        self.cache["flips"] = flips
        return T.flip_each(x, flips)

    def _augment_backward(self, dz):
        return T.flip_each(dz, self.cache["flips"])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


class _WarpLayer(_RandomLayer):
    """A random affine warp per image: subclasses return the (N, 2, 3) matrices from ``_matrices``."""

    def __init__(self, fill_mode="reflect", interpolation="bilinear", seed=None, fill_value=0.0, **kwargs):
        label = _label(type(self).__name__, kwargs)
        if fill_mode not in T.FILL_MODES:
            raise ValueError(f"{label}: `fill_mode` must be one of {T.FILL_MODES}. Received: fill_mode={fill_mode!r}")
        if interpolation not in T.INTERPOLATIONS:
            raise ValueError(f"{label}: `interpolation` must be one of {T.INTERPOLATIONS}. "
                             f"Received: interpolation={interpolation!r}")
        if not _is_number(fill_value) or not np.isfinite(fill_value):
            raise ValueError(f"{label}: `fill_value` must be a finite number. Received: fill_value={fill_value!r}")
        self.fill_mode, self.interpolation, self.fill_value = fill_mode, interpolation, float(fill_value)
        super().__init__(seed=seed, **kwargs)

    def _augment(self, x):
        A = self._matrices(len(x), x.shape[1], x.shape[2])
        self.cache.update(matrices=A, input_size=x.shape[1:3])
        return T.affine_warp(x, A, None, self.fill_mode, self.interpolation, self.fill_value)

    def _augment_backward(self, dz):
        return T.affine_warp_backward(dz, self.cache["matrices"], self.cache["input_size"], self.fill_mode,
                                      self.interpolation)

    def get_config(self):
        return {**super().get_config(), "fill_mode": self.fill_mode, "interpolation": self.interpolation,
                "fill_value": self.fill_value}


class RandomRotation(_WarpLayer):
    """Rotate each image by a random angle, as ``keras.layers.RandomRotation``.

    ``factor`` is a fraction of a full turn: a number f draws from [-f, f] * 360 degrees, a pair
    (lo, hi) from [lo, hi] * 360; positive angles turn counter-clockwise. The centre of rotation is
    the centre of the pixel grid, ((H - 1) / 2, (W - 1) / 2).
    """

    def __init__(self, factor, fill_mode="reflect", interpolation="bilinear", seed=None, fill_value=0.0, **kwargs):
        self._range = T.factor_range(factor, "factor", _label("RandomRotation", kwargs))
        self.factor = _jsonable(factor)
        super().__init__(fill_mode, interpolation, seed, fill_value, **kwargs)

    def _matrices(self, n, height, width):
        angle = self._rng.uniform(self._range[0], self._range[1], n) * 360.0
        return T.rotation_matrices(angle, height, width)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class RandomTranslation(_WarpLayer):
    """Shift each image by a random fraction of its size, as ``keras.layers.RandomTranslation``.

    ``height_factor`` f draws a vertical shift in [-f, f] * H pixels (a pair: [lo, hi] * H),
    positive = down; ``width_factor`` likewise for columns, positive = right. Shifts are fractional
    (bilinear), not rounded.
    """

    def __init__(self, height_factor, width_factor, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, **kwargs):
        label = _label("RandomTranslation", kwargs)
        self._height_range = T.factor_range(height_factor, "height_factor", label)
        self._width_range = T.factor_range(width_factor, "width_factor", label)
        self.height_factor, self.width_factor = _jsonable(height_factor), _jsonable(width_factor)
        super().__init__(fill_mode, interpolation, seed, fill_value, **kwargs)

    def _matrices(self, n, height, width):
        dy = self._rng.uniform(*self._height_range, n) * height
        dx = self._rng.uniform(*self._width_range, n) * width
        return T.translation_matrices(dy, dx)

    def get_config(self):
        return {**super().get_config(), "height_factor": self.height_factor, "width_factor": self.width_factor}


class RandomZoom(_WarpLayer):
    """Zoom each image in or out about its centre, as ``keras.layers.RandomZoom``.

    The sampling step is ``1 + uniform(range)``: positive factors zoom *out* (content shrinks),
    negative zoom in, e.g. ``height_factor=0.2`` draws steps in [0.8, 1.2]. ``width_factor=None``
    uses the vertical step for both axes (keeps the aspect ratio). Factors must be >= -1.
    """

    def __init__(self, height_factor, width_factor=None, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, **kwargs):
        label = _label("RandomZoom", kwargs)
        self._height_range = T.factor_range(height_factor, "height_factor", label, bounds=(-1.0, np.inf))
        self._width_range = (None if width_factor is None
                             else T.factor_range(width_factor, "width_factor", label, bounds=(-1.0, np.inf)))
        self.height_factor, self.width_factor = _jsonable(height_factor), _jsonable(width_factor)
        super().__init__(fill_mode, interpolation, seed, fill_value, **kwargs)

    def _matrices(self, n, height, width):
        zy = 1.0 + self._rng.uniform(*self._height_range, n)
        zx = zy if self._width_range is None else 1.0 + self._rng.uniform(*self._width_range, n)
        return T.zoom_matrices(zy, zx, height, width)

    def get_config(self):
        return {**super().get_config(), "height_factor": self.height_factor, "width_factor": self.width_factor}


class RandomContrast(_RandomLayer):
    """Scale each image's deviation from its per-channel mean by a random factor, as ``keras.layers.RandomContrast``.

    ::

        m[n, c] = mean_{i, j} x[n, i, j, c]          f[n] ~ uniform(1 - lower, 1 + upper)
        y[n, i, j, c] = clip((x[n, i, j, c] - m[n, c]) * f[n] + m[n, c], *value_range)

    ``factor`` f gives lower = upper = f (a pair gives them separately), each in [0, 1]. As in
    Keras 3 the result is clipped to ``value_range`` (default (0, 255); None: no clipping).

    Backward, with g = dy where not clipped (0 where clipped) and HW = H * W::

        dx[n, i, j, c] = f[n] * g[n, i, j, c] + (1 - f[n]) * sum_{i', j'} g[n, i', j', c] / HW
    """

    def __init__(self, factor, value_range=(0, 255), seed=None, **kwargs):
        label = _label("RandomContrast", kwargs)
        self._range = T.factor_range(factor, "factor", label, bounds=(0.0, 1.0), symmetric=False)
        if value_range is not None and (
            not isinstance(value_range, (tuple, list)) or len(value_range) != 2
            or not all(_is_number(v) for v in value_range) or not value_range[0] < value_range[1]
        ):
            raise ValueError(f"{label}: `value_range` must be (low, high) with low < high, or None. "
                             f"Received: value_range={value_range!r}")
        self.factor = _jsonable(factor)
        self.value_range = _jsonable(value_range)
        super().__init__(seed=seed, **kwargs)

    def _augment(self, x):
        f = self._rng.uniform(1.0 - self._range[0], 1.0 + self._range[1], len(x)).astype(x.dtype)
        y = T.adjust_contrast(x, f)   # unclipped, to know where clipping acts
        mask = None
        if self.value_range is not None:
            low, high = self.value_range
            mask = (y >= low) & (y <= high)
            y = np.clip(y, low, high)
        self.cache.update(factor=f[:, None, None, None], mask=mask)
        return y

    def _augment_backward(self, dz):
        f, mask = self.cache["factor"], self.cache["mask"]
        g = dz if mask is None else dz * mask
        return f * g + (1 - f) * g.mean(axis=(1, 2), keepdims=True)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor, "value_range": self.value_range}
