"""The Layer contract every minicnn layer follows.

A layer is a small object with parameters and two methods a learner can call by hand::

    layer.build((None, 28, 28, 1))         # creates layer.params (and matching layer.grads)
    y = layer.forward(x, training=True)    # also keeps what backward needs in layer.cache
    dx = layer.backward(dy)                # fills layer.grads[k] = dL/dparams[k]; returns dL/dx

``layer(x)`` is ``layer.forward(x)`` (building the layer on first use). Layers never update their own
weights: the optimizer does, reading ``params`` and ``grads``.

Subclasses implement ``_forward(x, training)`` and ``_backward(dz)`` for their operation; an
``activation=`` argument is applied after ``_forward`` here and differentiated first in
``backward``, so each layer file only holds its own math.
"""

import re

import numpy as np

from .. import activations as activations_module
from .. import config

_NAME_COUNTS = {}


def _snake_case(name):
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()   # Keras's rule: Conv2D -> conv2d


def unique_name(prefix):
    """Keras-style automatic names: ``conv2d``, ``conv2d_1``, ``conv2d_2``, ..."""
    count = _NAME_COUNTS.get(prefix, 0)
    _NAME_COUNTS[prefix] = count + 1
    return prefix if count == 0 else f"{prefix}_{count}"


def reset_names():
    """Restart automatic naming (``minicnn.utils.clear_session`` calls this)."""
    _NAME_COUNTS.clear()


def format_shape(shape):
    """``(None, 26, 26, 32)`` as Keras prints it."""
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def check_positive_int_tuple(layer_name, arg, value, length=2):
    """Turn ``3`` or ``(3, 3)`` into a tuple of positive ints, or raise a ValueError naming it."""
    values = (value,) * length if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    try:
        values = tuple(values)
    except TypeError:
        values = None
    if (
        values is None
        or len(values) != length
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in values)
    ):
        raise ValueError(
            f"{layer_name}: `{arg}` must be a positive integer or a tuple of {length} positive integers. "
            f"Received: {arg}={value!r}"
        )
    return tuple(int(v) for v in values)


def check_padding(layer_name, padding):
    """'valid' or 'same' (case-insensitive, as in Keras), else a ValueError."""
    if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
        raise ValueError(f"{layer_name}: `padding` must be 'valid' or 'same'. Received: padding={padding!r}")
    return padding.lower()


class Layer:
    """Base class: naming, building, input checks, weights, config and the activation hook.

    Attributes
    ----------
    params : dict of str -> ndarray
        Trainable arrays, Keras names (``"kernel"``, ``"bias"``).
    grads : dict of str -> ndarray
        ``dL/dparams[k]`` after ``backward``; same keys and shapes as ``params``.
    cache : dict
        What ``forward`` kept for ``backward`` (references, not copies).
    input_shape, output_shape : tuple
        With the batch axis first (``None`` or an int).
    """

    #: Arrays kept with the weights but not trained (e.g. BatchNormalization's moving mean).
    non_trainable_names = ()

    #: Activations this layer's kernels apply themselves, in the same pass as the op (Conv2D:
    #: 'relu'); ``forward`` and ``backward`` then leave the activation to ``_forward``/``_backward``.
    fused_activations = ()

    #: False when no one needs ``dL/dx`` (``Sequential`` sets it for its first trainable layer
    #: during training): ``backward`` then only fills ``grads`` and may return None.
    needs_input_gradient = True

    def __init__(self, name=None, input_shape=None, activation=None, dtype=None, trainable=True):
        cls = type(self).__name__
        self.name = name if name is not None else unique_name(_snake_case(cls))
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{cls}: `name` must be a non-empty string. Received: name={name!r}")
        if input_shape is not None:
            input_shape = tuple(input_shape)
            if not all(d is None or (isinstance(d, (int, np.integer)) and d > 0) for d in input_shape):
                raise ValueError(
                    f"{cls} '{self.name}': `input_shape` must hold positive integers (no batch axis). "
                    f"Received: input_shape={input_shape!r}"
                )
        self._input_shape_arg = input_shape
        self.activation = activations_module.get(activation, layer_name=f"{cls} '{self.name}'")
        if dtype is not None and np.dtype(dtype).name not in ("float32", "float64"):
            raise ValueError(f"{cls} '{self.name}': `dtype` must be 'float32' or 'float64'. Received: dtype={dtype!r}")
        self._dtype_arg = None if dtype is None else np.dtype(dtype).name
        self.dtype = self._dtype_arg or config.get_floatx()
        self.trainable = trainable
        self.params = {}
        self.grads = {}
        self.cache = {}
        self.built = False
        self.input_shape = None
        self.output_shape = None

    @property
    def declared_input_shape(self):
        """The ``input_shape=`` given to the constructor (no batch axis), as a tuple, or None."""
        return self._input_shape_arg

    @property
    def rng(self):
        """The layer's own random generator (Dropout and the augmentation layers draw from it), or None.

        ``save`` stores its state, so that a model loaded to resume training draws what it would have.
        """
        return getattr(self, "_rng", None)

    # ----------------------------------------------------------------- shapes and building
    def compute_output_shape(self, input_shape):
        """Output shape for ``input_shape`` (batch axis included); pure, raises on impossible shapes."""
        return tuple(input_shape)

    def build(self, input_shape):
        """Check ``input_shape`` (batch axis included) and create ``params``/``grads``.

        Subclasses create their arrays in ``_build`` and call nothing else.
        """
        input_shape = tuple(None if d is None else int(d) for d in input_shape)
        output_shape = self.compute_output_shape(input_shape)   # validates before anything is made
        self.dtype = self._dtype_arg or config.get_floatx()
        self.params = {}
        self._build(input_shape)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.input_shape, self.output_shape = input_shape, tuple(output_shape)
        self.built = True

    def _build(self, input_shape):
        """Create ``self.params`` (and non-trainable state). Layers without weights do nothing."""

    def weight_shapes(self, input_shape):
        """``{name: shape}`` of the arrays ``build(input_shape)`` creates, in ``weight_names`` order.

        Pure and cheap: a loader compares a file's arrays with these before allocating any weight.
        A layer of your own that creates weights should say their shapes here too (else loading
        has to build it to find out).
        """
        return {}

    def add_weight(self, name, shape, initializer):
        """Create ``params[name]`` of ``shape`` in this layer's dtype from ``initializer``."""
        from .. import initializers

        init = initializers.get(initializer, layer_name=f"{type(self).__name__} '{self.name}'")
        self.params[name] = init(tuple(shape), dtype=self.dtype)
        return self.params[name]

    # ----------------------------------------------------------------- forward and backward
    def check_input(self, x):
        """Cast ``x`` to this layer's dtype after checking its shape against the built one."""
        x = np.asarray(x)
        expected = self.input_shape
        if x.ndim != len(expected) or any(e is not None and e != d for e, d in zip(expected[1:], x.shape[1:])):
            raise ValueError(
                f"Input of layer '{self.name}' ({type(self).__name__}) is incompatible with the layer: "
                f"expected shape={format_shape(expected)}, found shape={tuple(x.shape)}"
            )
        if x.dtype != self.dtype:
            if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
                raise TypeError(f"Layer '{self.name}' expects numeric input. Received dtype={x.dtype}")
            x = x.astype(self.dtype)
        return x

    def forward(self, x, training=False):
        """``y = activation(op(x))``; keeps what ``backward`` needs in ``self.cache``.

        Parameters
        ----------
        x : ndarray of shape ``input_shape`` (any batch size)
        training : bool
            True inside ``fit``: Dropout drops, BatchNormalization uses batch statistics.
        """
        if not self.built:
            self.build((None,) + tuple(np.shape(x))[1:])
        x = self.check_input(x)
        z = self._forward(x, training)
        return z if self.activation is None or self.activation_is_fused else self.activation.forward(z)

    def backward(self, dy):
        """Given ``dy = dL/dy``, fill ``self.grads`` and return ``dL/dx``.

        With an activation ``y = g(z)``: ``dz = g'(z) * dy`` first (for softmax, the Jacobian-vector
        product), then the layer's own ``_backward(dz)``.
        """
        dz = dy if self.activation is None or self.activation_is_fused else self.activation.backward(dy)
        return self._backward(dz)

    def backward_from_logits(self, dz):
        """Given ``dz = dL/dz`` for ``z`` the output *before* the activation (the logits, for softmax),
        fill ``self.grads`` and return ``dL/dx``: :meth:`backward` without the activation's derivative.

        The softmax + cross-entropy fusion uses it: the loss gives ``dL/dz = (p - y) / N`` directly,
        which is cheaper and more accurate than the softmax Jacobian applied to ``dL/dp``.
        """
        return self._backward(dz)

    @property
    def build_dtype(self):
        """The dtype :meth:`build` gives this layer: its ``dtype`` argument, else the current floatx."""
        return self._dtype_arg or config.get_floatx()

    @property
    def activation_is_fused(self):
        """True when ``_forward`` applies the activation itself (and ``_backward`` differentiates it)."""
        return self.activation is not None and self.activation.name in self.fused_activations

    def _forward(self, x, training):
        return x

    def _cached(self, key):
        """``self.cache[key]``, or a RuntimeError saying forward must come first."""
        if key not in self.cache:
            raise RuntimeError(f"Layer '{self.name}': call forward(x) before backward(dy).")
        return self.cache[key]

    def _backward(self, dz):
        return dz

    def __call__(self, x, training=False):
        return self.forward(x, training=training)

    # ----------------------------------------------------------------- weight penalties
    def regularization_penalty(self):
        """What ``kernel_regularizer`` adds to the loss (0.0 without one)."""
        reg = getattr(self, "kernel_regularizer", None)
        return 0.0 if reg is None or "kernel" not in self.params else reg(self.params["kernel"])

    def add_regularization_gradients(self):
        """``grads['kernel'] += d(penalty)/d(kernel)``; the model calls it after ``backward``."""
        reg = getattr(self, "kernel_regularizer", None)
        if reg is not None and "kernel" in self.params:
            self.grads["kernel"] = self.grads["kernel"] + reg.gradient(self.params["kernel"])

    # ----------------------------------------------------------------- weights
    @property
    def weight_names(self):
        """Names of all saved arrays in Keras order: trainable first, then non-trainable."""
        return list(self.params) + [n for n in self.non_trainable_names if n not in self.params]

    def _weight_arrays(self):
        return [self.params[n] if n in self.params else getattr(self, n) for n in self.weight_names]

    def get_weights(self):
        """Copies of the weights in Keras order and layouts (conv: kernel (KH, KW, C, F), bias (F,))."""
        return [np.array(w, copy=True) for w in self._weight_arrays()]

    def set_weights(self, weights):
        """Write ``weights`` (Keras order) into the layer's arrays, after checking count and shapes.

        The values are copied into the existing arrays, as Keras assigns to its variables: a
        reference to ``layer.params['kernel']`` taken before still shows the layer's weights after.
        """
        weights = list(weights)
        current = self._weight_arrays()
        if len(weights) != len(current):
            raise ValueError(
                f"Layer '{self.name}' expects {len(current)} weight arrays ({', '.join(self.weight_names) or 'none'}). "
                f"Received: {len(weights)} arrays"
            )
        new = []
        for n, old, w in zip(self.weight_names, current, weights):
            w = np.asarray(w)
            if w.shape != old.shape:
                raise ValueError(
                    f"Layer '{self.name}': weight '{n}' has shape {old.shape}. Received: shape {w.shape}"
                )
            if not np.issubdtype(w.dtype, np.number):
                raise TypeError(f"Layer '{self.name}': weight '{n}' must be numeric. Received dtype={w.dtype}")
            new.append(np.array(w, dtype=old.dtype, copy=True))
        for n, old, w in zip(self.weight_names, current, new):   # all checked: now change state
            if isinstance(old, np.ndarray) and old.flags.writeable:
                np.copyto(old, w)
            elif n in self.params:
                self.params[n] = w
            else:
                setattr(self, n, w)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def count_params(self):
        """Number of scalars in all weights (trainable and not)."""
        return int(sum(np.size(w) for w in self._weight_arrays())) if self.built else 0

    # ----------------------------------------------------------------- config
    def get_config(self):
        """JSON-able constructor arguments (weights are saved separately)."""
        config_ = {"name": self.name, "trainable": self.trainable}
        if self._dtype_arg is not None:
            config_["dtype"] = self._dtype_arg
        if self._input_shape_arg is not None:
            config_["input_shape"] = list(self._input_shape_arg)
        return config_

    @classmethod
    def from_config(cls, config_):
        """Rebuild a layer from ``get_config()``'s output."""
        return cls(**config_)

    def __repr__(self):
        shape = format_shape(self.output_shape) if self.built else "unbuilt"
        return f"<{type(self).__name__} name={self.name!r} output_shape={shape} params={self.count_params():,}>"
