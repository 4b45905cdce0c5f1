"""Sequential: a stack of layers you compile, fit, evaluate, predict with, and save, as in Keras.

The whole of training is one short loop. For each batch, ``train_step`` does::

    y_pred = forward(x)                        # every layer's forward, training=True
    loss = loss_fn(y, y_pred)                  # a number, averaged over the batch
    backward(y, y_pred)                        # every layer's backward: fills layer.grads
    optimizer.apply_gradients(layers)          # w -= ... for every parameter

``fit`` wraps that loop with what a Keras user expects: batching and shuffling, a validation
split, running means of loss and accuracy, callbacks, a progress bar and the ``History`` it returns.

Everything a user passes in is checked before any weight or optimizer state changes, with errors
that say what was expected and what was received.

Threads: a model is used by one thread at a time. Its layers keep the last batch's arrays for
backward, so ``fit`` in one thread and ``predict`` in another would read each other's caches; the
second call raises a RuntimeError instead. Use one model per thread (``load_model`` a copy).
"""

import functools
import math
import shutil
import textwrap
import threading
import warnings

import numpy as np

from . import activations, config, losses, optimizers, saving
from . import callbacks as callbacks_module
from .data.stats import InputStats
from .layers import InputLayer, Layer
from .layers import deserialize as deserialize_layer
from .layers import serialize as serialize_layer
from .layers.base import format_shape, unique_name
from .metrics import METRICS

__all__ = ["Sequential", "load_model"]

DEFAULT_BATCH_SIZE = 32


# ============================================================================ running means
class _RunningMeans:
    """Means over the batches seen so far, each batch weighted by its size (as Keras's loss tracker)."""

    def __init__(self):
        self.totals, self.count = {}, 0

    def add(self, values, n):
        for name, value in values.items():
            self.totals[name] = self.totals.get(name, 0.0) + float(value) * n
        self.count += n

    def logs(self):
        return {name: total / self.count for name, total in sorted(self.totals.items())}


# ============================================================================ data
def _is_dataset(x):
    """An iterable of batches (a minicnn dataset, a generator, ...) rather than an array."""
    if isinstance(x, (np.ndarray, list, tuple, str, bytes, dict)) or np.isscalar(x):
        return False
    return hasattr(x, "__iter__") or hasattr(x, "__next__")


class _ArrayData:
    """Batches of in-memory arrays: ``ceil(n / batch_size)`` steps, the last one possibly partial.

    ``shuffle`` is False or the generator that draws each epoch's order (the model's own).
    """

    def __init__(self, x, y, batch_size, shuffle):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.steps = math.ceil(len(x) / batch_size)

    def batches(self):
        n = len(self.x)
        order = self.shuffle.permutation(n) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                pick = slice(start, start + self.batch_size)
            else:
                pick = order[start : start + self.batch_size]
            yield self.x[pick], (None if self.y is None else self.y[pick])


class _IterableData:
    """Batches from an iterable of ``(x, y)`` pairs (or of ``x`` alone for predict), checked one by one.

    A re-iterable object (a list, a minicnn dataset) is iterated afresh every epoch; a one-shot
    iterator (a generator) is read on from where the previous epoch stopped.
    """

    def __init__(self, source, check_batch, need_y):
        self.source, self.check_batch, self.need_y = source, check_batch, need_y
        self.reiterable = not hasattr(source, "__next__")
        self._iterator = None if self.reiterable else iter(source)
        try:
            self.steps = len(source)
        except TypeError:
            self.steps = None

    def batches(self):
        for item in iter(self.source) if self.reiterable else self._iterator:
            if isinstance(item, (tuple, list)) and len(item) == 2:
                xb, yb = item[0], item[1]
            elif self.need_y:
                raise ValueError(
                    "A dataset passed to fit/evaluate must yield (x_batch, y_batch) pairs. "
                    f"Received an element of type {type(item).__name__}"
                )
            else:
                xb, yb = item, None
            yield self.check_batch(xb, yb if self.need_y else None)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _check_verbose(verbose):
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f"`verbose` must be 'auto', 0, 1 or 2. Received: verbose={verbose!r}")
    return int(verbose)


def _count_bad(a):
    """Counts of NaN and of +-inf entries (0, 0 for integer arrays)."""
    if a.dtype.kind != "f":
        return 0, 0
    finite = np.isfinite(a)
    if finite.all():
        return 0, 0
    nan = int(np.isnan(a).sum())
    return nan, int(a.size - finite.sum()) - nan


def _finite_after_cast(a, dtype, name, hint=""):
    """``a`` cast to ``dtype``, or a ValueError counting the NaN/inf entries *after* the cast.

    The check runs on the cast array: 1e39 is finite in float64 but ``inf`` in float32.
    """
    with np.errstate(over="ignore"):   # an overflow is reported below, by count
        cast = a.astype(dtype, copy=False)
    nan, inf = _count_bad(cast)
    if nan or inf:
        overflow = _count_bad(a) != (nan, inf)
        raise ValueError(
            f"`{name}` contains {nan} NaN and {inf} infinite value(s) out of {a.size}"
            + (f" after conversion to {np.dtype(dtype).name} (values beyond +-{np.finfo(dtype).max:.3g} overflow)"
               if overflow else "") + "." + hint
        )
    return cast


_owners_lock = threading.Lock()


def _one_thread(method):
    """Let one thread at a time into the model's methods that run layers (they share the layers' caches).

    The same thread may re-enter (a callback calling ``predict`` inside ``fit``); another thread gets
    a RuntimeError at once instead of silently corrupting the running call.
    """
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        me = threading.get_ident()
        with _owners_lock:
            owner = self.__dict__.get("_owner")
            if owner is not None and owner[0] != me:
                raise RuntimeError(
                    f"Model '{self.name}' is running {owner[1]}() in another thread; {method.__name__}() cannot run "
                    "at the same time (the layers keep per-call caches). Use one model per thread, or wait."
                )
            self._owner = (me, method.__name__) if owner is None else owner
            self._depth = self.__dict__.get("_depth", 0) + 1
        try:
            return method(self, *args, **kwargs)
        finally:
            with _owners_lock:
                self._depth -= 1
                if not self._depth:
                    self._owner = None

    return guarded


# ============================================================================ the model
class Sequential:
    """A linear stack of layers, as ``keras.Sequential``.

    Parameters
    ----------
    layers : list of Layer, optional
        Added in order with ``add``. The first may be ``minicnn.Input(shape=...)``, or the first
        layer may carry ``input_shape=`` (the blog's style); otherwise the model is built on the
        first data it sees.
    name : str, optional
        Default ``"sequential"``, ``"sequential_1"``, ...

    Examples
    --------
    >>> model = Sequential([Input(shape=(28, 28, 1)), Conv2D(32, 3, activation="relu"),
    ...                     MaxPooling2D(), Flatten(), Dense(10, activation="softmax")])
    >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> history = model.fit(x_train, y_train, epochs=5, validation_split=0.1)   # doctest: +SKIP
    """

    def __init__(self, layers=None, name=None, trainable=True):
        self.name = name if name is not None else unique_name("sequential")
        self._layers = []
        self._input_layer = None
        self._build_input_shape = None
        self.built = False
        self.trainable = trainable
        self.optimizer = None
        self.loss = None
        self._metrics = []   # [(log name, function)]
        self.compiled = False
        self.stop_training = False
        self.history = None
        self.class_names = None
        self._shuffle_rng = None   # created by the first shuffling fit; saved with the model
        #: Per-channel brightness of the training images (``minicnn.data.stats``), set by ``fit``.
        self.input_stats = None
        for layer in layers or []:
            self.add(layer)

    # ------------------------------------------------------------------------ structure
    @property
    def layers(self):
        """The layers in order (an ``Input`` is not listed, as in Keras)."""
        return list(self._layers)

    def _check_name(self, layer):
        names = [lay.name for lay in self._layers] + ([self._input_layer.name] if self._input_layer else [])
        if layer.name in names:
            raise ValueError(
                f"All layers added to a Sequential model should have unique names. Name '{layer.name}' is "
                f"already the name of a layer in this model. Update the `name` argument to pass a unique name."
            )

    def add(self, layer):
        """Append ``layer``; builds it at once when the model's input shape is known."""
        if isinstance(layer, InputLayer):
            if self._input_layer is not None or self._layers:
                raise ValueError(
                    "An Input can only be the first element of a Sequential model. "
                    f"Received: {layer.name!r} after {len(self._layers)} layer(s)"
                )
            self._check_name(layer)
            self._input_layer = layer
            self.build((None, *layer._input_shape_arg))
            return
        if not isinstance(layer, Layer):
            raise ValueError(
                "Only instances of `minicnn.layers.Layer` can be added to a Sequential model. "
                f"Received: {layer!r} (of type {type(layer).__name__})"
            )
        self._check_name(layer)
        input_shape = self._build_input_shape
        if not self._layers and self._input_layer is None and layer._input_shape_arg is not None:
            input_shape = (None, *layer._input_shape_arg)   # the blog's Conv2D(..., input_shape=(224, 224, 3))
        if input_shape is not None:
            shape = self._shapes(input_shape)[-1]
            self._check_or_build([layer], [shape], build=True)
            self._build_input_shape, self.built = input_shape, True
        self._layers.append(layer)

    def pop(self):
        """Remove and return the last layer."""
        if not self._layers:
            raise ValueError("There are no layers in the model.")
        return self._layers.pop()

    def _shapes(self, input_shape, layers=None):
        """The input shape of each layer and the final output shape (pure: builds nothing)."""
        shapes = [tuple(input_shape)]
        for layer in self._layers if layers is None else layers:
            shapes.append(tuple(layer.compute_output_shape(shapes[-1])))
        return shapes

    def _check_or_build(self, layers, input_shapes, build):
        for layer, shape in zip(layers, input_shapes):
            if layer.built and tuple(layer.input_shape[1:]) != tuple(shape[1:]):
                raise ValueError(
                    f"Layer '{layer.name}' was built for inputs of shape {format_shape(layer.input_shape)} "
                    f"but would receive {format_shape(shape)} in this model."
                )
        if build:
            for layer, shape in zip(layers, input_shapes):
                if not layer.built:
                    layer.build(shape)

    def build(self, input_shape):
        """Create every layer's weights for inputs of ``input_shape`` (batch axis included, any size)."""
        input_shape = (None, *(None if d is None else int(d) for d in tuple(input_shape)[1:]))
        if self.built and self._build_input_shape is not None:
            if input_shape != self._build_input_shape:
                raise ValueError(
                    f"Model '{self.name}' is already built for input shape {format_shape(self._build_input_shape)}. "
                    f"Received: input_shape={format_shape(input_shape)}"
                )
            return
        shapes = self._shapes(input_shape)             # validates every layer first ...
        self._check_or_build(self._layers, shapes, build=False)
        self._check_or_build(self._layers, shapes, build=True)   # ... then creates weights
        self._build_input_shape, self.built = input_shape, True

    @property
    def input_shape(self):
        if self._build_input_shape is None:
            raise AttributeError(f"Model '{self.name}' has no defined input shape yet: it has not been built.")
        return self._build_input_shape

    @property
    def output_shape(self):
        return self._shapes(self.input_shape)[-1]

    # ------------------------------------------------------------------------ weights
    def _weight_entries(self):
        """``(layer, name, array, trainable)`` for every weight, in Keras order."""
        entries = []
        for layer in self._layers:
            for name, array in zip(layer.weight_names, layer._weight_arrays()):
                trainable = self.trainable and layer.trainable and name in layer.params
                entries.append((layer, name, array, trainable))
        return entries

    @property
    def weights(self):
        """All weight arrays (the live arrays, not copies), in Keras order."""
        return [array for _, _, array, _ in self._weight_entries()]

    @property
    def trainable_weights(self):
        return [array for _, _, array, trainable in self._weight_entries() if trainable]

    @property
    def non_trainable_weights(self):
        return [array for _, _, array, trainable in self._weight_entries() if not trainable]

    def count_params(self):
        """Number of scalars in all weights."""
        if not self.built:
            raise ValueError(
                f"You tried to call `count_params` on model '{self.name}', but the model isn't built. "
                "Build it first: pass input data, call `build(input_shape)`, or start with `Input(shape=...)`."
            )
        return int(sum(layer.count_params() for layer in self._layers))

    def get_weights(self):
        """Copies of every layer's weights, in Keras order (conv: kernel, bias; dense: kernel, bias)."""
        return [w for layer in self._layers for w in layer.get_weights()]

    def set_weights(self, weights):
        """Replace all weights (Keras order). Count and every shape are checked before anything changes."""
        weights = list(weights)
        entries = self._weight_entries()
        if len(weights) != len(entries):
            raise ValueError(
                f"Model '{self.name}' has {len(entries)} weight arrays. Received: {len(weights)} arrays"
            )
        for (layer, name, current, _), w in zip(entries, weights):
            w = np.asarray(w)
            if w.shape != current.shape:
                raise ValueError(
                    f"Layer '{layer.name}' weight '{name}' has shape {current.shape}. Received: shape {w.shape}"
                )
            if w.dtype.kind not in "biuf":
                raise TypeError(f"Layer '{layer.name}' weight '{name}' must be numeric. Received dtype={w.dtype}")
        i = 0
        for layer in self._layers:
            n = len(layer.weight_names)
            layer.set_weights(weights[i : i + n])
            i += n

    # ------------------------------------------------------------------------ config
    def get_config(self):
        layer_list = ([self._input_layer] if self._input_layer is not None else []) + self._layers
        return {
            "name": self.name,
            "trainable": self.trainable,
            "layers": [serialize_layer(layer) for layer in layer_list],
            "build_input_shape": None if self._build_input_shape is None else list(self._build_input_shape),
        }

    @classmethod
    def from_config(cls, config_):
        model = cls(name=config_.get("name"), trainable=config_.get("trainable", True))
        for data in config_["layers"]:
            model.add(deserialize_layer(data))
        if not model.built and config_.get("build_input_shape"):
            model.build(tuple(config_["build_input_shape"]))
        return model

    # ------------------------------------------------------------------------ compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Choose the optimizer, the loss and the metrics reported during training.

        Parameters
        ----------
        optimizer : str or Optimizer
            ``'rmsprop'`` (Keras's default), ``'adam'``, ``'sgd'``, or an object such as ``Adam(1e-4)``.
        loss : str or Loss
            ``'categorical_crossentropy'`` (one-hot targets), ``'sparse_categorical_crossentropy'``
            (integer labels), ``'binary_crossentropy'``, ``'mse'``.
        metrics : list of str or callables, optional
            ``['accuracy']``: read as binary, sparse or categorical accuracy from the shapes, as in Keras.
        """
        optimizer = optimizers.get(optimizer)
        loss = None if loss is None else losses.get(loss)
        if isinstance(metrics, str) or callable(metrics):
            metrics = [metrics]
        resolved = []
        for metric in metrics or []:
            if isinstance(metric, str) and metric.lower() in METRICS:
                resolved.append((metric, METRICS[metric.lower()]))
            elif callable(metric) and not isinstance(metric, str):
                resolved.append((getattr(metric, "__name__", type(metric).__name__), metric))
            else:
                raise ValueError(
                    f"Unknown metric. Expected one of {sorted(METRICS)} or a function (y_true, y_pred) -> float. "
                    f"Received: metrics={metrics!r}"
                )
        self.optimizer, self.loss, self._metrics = optimizer, loss, resolved
        self.compiled = True

    @property
    def metrics_names(self):
        return ["loss"] + [name for name, _ in self._metrics]

    def _check_compiled(self, method):
        if not self.compiled or self.optimizer is None:
            raise RuntimeError(f"You must call `compile()` before calling `{method}()`.")
        if self.loss is None:
            raise RuntimeError(f"`{method}()` needs a loss: call `compile(loss=...)` first.")
        if not self._layers:
            raise RuntimeError(f"Model '{self.name}' has no layers: `add` some before calling `{method}()`.")

    # ------------------------------------------------------------------------ forward, loss, backward
    @_one_thread
    def __call__(self, x, training=False):
        """``model(x)``: the outputs for a batch ``x`` (building the model on first use)."""
        x = np.asarray(x)
        if not self.built:
            self.build(x.shape)
        return self._forward(x, training)

    def _forward(self, x, training):
        for layer in self._layers:
            x = layer.forward(x, training=training)
        return x

    def _penalty(self):
        """Sum of the layers' weight penalties (``kernel_regularizer``), added to the loss."""
        return float(sum(layer.regularization_penalty() for layer in self._layers))

    def _fuses(self, layer):
        """True when the loss differentiates through the last activation in one step (softmax + CE)."""
        fused = getattr(self.loss, "fuses_with", None)
        return fused is not None and not self.loss.from_logits and fused == activations.serialize(layer.activation)

    def _backward(self, y, y_pred, input_gradient=True):
        """Fill every layer's ``grads`` with ``dL/dparams``, from the loss back to the first layer.

        ``input_gradient=False`` (a training step) stops at the first layer with trainable weights
        and tells it, with ``needs_input_gradient = False``, that no one needs its ``dL/dx``.
        """
        first = 0
        if not input_gradient:
            first = next((i for i, lay in enumerate(self._layers) if lay.trainable and lay.params), len(self._layers) - 1)
            self._layers[first].needs_input_gradient = False
        try:
            last = self._layers[-1]
            if self._fuses(last):
                dy = last.backward_from_logits(self.loss.logits_gradient(y, y_pred))   # dL/dz = (p - y) / N
            else:
                dy = last.backward(self.loss.gradient(y, y_pred))
            for layer in reversed(self._layers[first:-1]):
                dy = layer.backward(dy)
        finally:   # only for this step: a learner calling backward by hand later gets dL/dx again
            self._layers[first].needs_input_gradient = True
        for layer in self._layers:
            layer.add_regularization_gradients()

    def train_step(self, x, y):
        """One step of gradient descent on a checked batch; returns the loss and the predictions."""
        y_pred = self._forward(x, training=True)
        loss = self.loss(y, y_pred) + self._penalty()
        self._backward(y, y_pred, input_gradient=False)
        if self.trainable:
            self.optimizer.apply_gradients(self._layers)
        return loss, y_pred

    def test_step(self, x, y):
        """The loss and predictions for a checked batch, in inference mode."""
        y_pred = self._forward(x, training=False)
        return self.loss(y, y_pred) + self._penalty(), y_pred

    def _batch_logs(self, loss, y, y_pred):
        return {"loss": loss, **{name: fn(y, y_pred) for name, fn in self._metrics}}

    @_one_thread
    def compute_loss(self, x, y, training=False):
        """The compiled loss (plus weight penalties) on ``(x, y)``, as a float. Changes no weights."""
        self._check_compiled("compute_loss")
        x, y = self._check_arrays(x, y)
        return self.loss(y, self._forward(x, training)) + self._penalty()

    @_one_thread
    def compute_gradients(self, x, y):
        """Forward (training mode) and backward on ``(x, y)``: fills every ``layer.grads``, updates nothing.

        Returns the loss, as ``compute_loss(x, y, training=True)`` would.
        """
        self._check_compiled("compute_gradients")
        x, y = self._check_arrays(x, y)
        y_pred = self._forward(x, training=True)
        loss = self.loss(y, y_pred) + self._penalty()
        self._backward(y, y_pred)
        return loss

    def check_gradients(self, x, y, **kwargs):
        """Compare every parameter's backprop gradient with finite differences, in float64 on a copy of
        the model, kinks recognised (``minicnn.gradcheck.check_model``); the model is left as it was."""
        from . import gradcheck

        return gradcheck.check_model(self, x, y, **kwargs)

    # ------------------------------------------------------------------------ input checks
    def _dtype(self):
        first = self._layers[0] if self._layers else None
        if first is None:
            return np.dtype(config.get_floatx())
        return np.dtype(first.dtype if first.built else first.build_dtype)

    def _check_x(self, x, name="x", expected=None):
        """``x`` as a float array of the model's dtype, after checking type, shape and values.

        ``expected`` is the input shape to check against when the model is not built yet.
        """
        try:
            x = np.asarray(x)
        except ValueError as err:
            raise ValueError(f"`{name}` must be an array of numbers with one shape. ({err})") from None
        if x.dtype.kind not in "biuf":
            raise TypeError(
                f"`{name}` must hold numbers (float or integer pixels). Received: dtype={x.dtype}"
                + (" (strings or Python objects)" if x.dtype.kind in "OUS" else "")
            )
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"`{name}` must be a non-empty batch of samples. Received: shape={x.shape}")
        expected = self._build_input_shape or expected
        if expected is not None and (x.ndim != len(expected) or any(
            e is not None and e != d for e, d in zip(expected[1:], x.shape[1:])
        )):
            raise ValueError(
                f"Input of Sequential model '{self.name}' is incompatible with the model: "
                f"expected shape={format_shape(expected)}, found shape={tuple(x.shape)}.{_shape_hint(x.shape, expected)}"
            )
        if expected is None:
            self._shapes((None, *x.shape[1:]))   # raises if the layers cannot take this shape
        return _finite_after_cast(x, self._dtype(), name, " Clean or impute them before training (e.g. np.nan_to_num).")

    def _check_y(self, y, n, output_shape, name="y"):
        """``y`` in the form the loss expects, after checking type, length, shape and values."""
        if y is None:
            raise ValueError(f"`{name}` (the targets) is required. Pass the labels, e.g. model.fit(x, y).")
        try:
            y = np.asarray(y)
        except ValueError as err:
            raise ValueError(f"`{name}` must be an array of numbers with one shape. ({err})") from None
        if y.dtype.kind not in "biuf":
            raise TypeError(f"`{name}` must hold numbers (class labels or one-hot rows). Received: dtype={y.dtype}")
        if y.ndim == 0 or y.shape[0] != n:
            got = y.shape[0] if y.ndim else "a scalar"
            raise ValueError(
                "Data cardinality is ambiguous. Make sure all arrays contain the same number of samples. "
                f"'x' sizes: {n}, '{name}' sizes: {got}"
            )
        out = (n, *output_shape[1:])
        if isinstance(self.loss, losses.SparseCategoricalCrossentropy):
            _finite_after_cast(y, y.dtype, name)
            self.loss.check_targets(y, out)
            return y
        if y.shape == out[:-1] and out[-1] == 1:
            y = y.reshape(out)   # labels (N,) for a single output unit (N, 1), as Keras allows
        if y.shape != out:
            raise ValueError(_target_shape_message(self.loss, y, out, name))
        y = _finite_after_cast(y, self._dtype(), name)
        self.loss.check_targets(y, out)
        return y

    def _check_arrays(self, x, y=None, need_y=True, expected=None):
        """Checked ``(x, y)``; builds nothing. ``y`` is checked against the output shape for ``x``."""
        x = self._check_x(x, expected=expected)
        if not need_y:
            return x, None
        output_shape = self._shapes((None, *x.shape[1:]))[-1]
        return x, self._check_y(y, len(x), output_shape)

    def _checked_batch(self, need_y):
        def check(xb, yb):
            xb, yb = self._check_arrays(xb, yb, need_y)
            if not self.built:
                self.build(xb.shape)
            return xb, yb

        return check

    def _data(self, x, y, batch_size, shuffle, need_y, purpose, expected=None):
        """Wrap arrays or an iterable in an object whose ``batches()`` yields checked batches."""
        if _is_dataset(x):
            if y is not None:
                raise ValueError(f"`y` must not be given when `x` is a dataset ({purpose}): it yields (x, y) pairs.")
            return _IterableData(x, self._checked_batch(need_y), need_y)
        if x is None:
            raise ValueError(f"`{purpose}` needs input data `x`.")
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else _check_int("batch_size", batch_size, 1)
        x, y = self._check_arrays(x, y, need_y, expected)
        return _ArrayData(x, y, batch_size, shuffle)

    # ------------------------------------------------------------------------ training
    @_one_thread
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0):
        """Train for ``epochs - initial_epoch`` passes over the data; returns a ``History``.

        Parameters
        ----------
        x : ndarray of shape (N, H, W, C), or an iterable of (x_batch, y_batch)
            Integer pixels (uint8) are converted to float.
        y : ndarray of shape (N,) (integer labels) or (N, K) (one-hot), or None for a dataset.
        batch_size : int, default 32
            The last batch of an epoch may be smaller.
        epochs : int
            The index of the last epoch (with ``initial_epoch=5, epochs=10`` five epochs run).
        verbose : 'auto' (=1), 0, 1 or 2
            1: a progress bar; 2: one line per epoch; 0: silent.
        callbacks : list of Callback
        validation_split : float in [0, 1)
            Hold out the **last** fraction of the arrays (before shuffling) for validation, as Keras.
        validation_data : (x_val, y_val) or an iterable of batches; overrides ``validation_split``.
        shuffle : bool
            Shuffle the training arrays every epoch, with the model's own generator (seeded from
            ``minicnn.config.rng()`` by the first fit, and saved by ``save``: a resumed run shuffles
            as the uninterrupted one). A dataset shuffles itself.
        initial_epoch : int

        Returns
        -------
        History with ``history.history = {'accuracy': [...], 'loss': [...], 'val_accuracy': [...], ...}``.
        """
        self._check_compiled("fit")
        verbose = _check_verbose(verbose)
        epochs = _check_int("epochs", epochs, 0)
        initial_epoch = _check_int("initial_epoch", initial_epoch, 0)
        if isinstance(validation_split, bool) or not (
            isinstance(validation_split, (int, float, np.integer, np.floating)) and 0 <= validation_split < 1
        ):
            raise ValueError(f"`validation_split` must be a number in [0, 1). Received: {validation_split!r}")
        train = self._data(x, y, batch_size, bool(shuffle), True, "fit")
        expected = (None, *train.x.shape[1:]) if isinstance(train, _ArrayData) else None
        val = None
        if validation_data is not None:
            val = self._validation_data(validation_data, batch_size, expected)
        elif validation_split:
            if not isinstance(train, _ArrayData):
                raise ValueError("`validation_split` is only supported for arrays; pass `validation_data` instead.")
            split_at = int(math.floor(len(train.x) * (1 - validation_split)))
            if split_at == 0 or split_at == len(train.x):
                raise ValueError(
                    f"`validation_split={validation_split}` leaves {split_at} of {len(train.x)} samples for "
                    "training and the rest for validation; one side would be empty."
                )
            val = _ArrayData(train.x[split_at:], train.y[split_at:], train.batch_size, False)
            train = _ArrayData(train.x[:split_at], train.y[:split_at], train.batch_size, train.shuffle)
        if isinstance(train, _ArrayData) and not self.built:
            self.build(train.x.shape)   # every check passed: now weights may be created
        if isinstance(train, _ArrayData) and train.shuffle:
            train.shuffle = self._shuffle_generator()

        cbs = callbacks_module.CallbackList(callbacks, model=self, add_history=True, add_progbar=verbose != 0,
                                            verbose=verbose, epochs=epochs, steps=train.steps)
        self.stop_training = False
        logs = {}
        stats = InputStats()   # of the batches of the first epoch: the images the model learns from
        cbs.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch)
            epoch_logs = self._train_epoch(train, cbs, stats if epoch == initial_epoch else None)
            if epoch == initial_epoch and stats.count:
                self.input_stats = stats.result()
            if epoch_logs is None:
                warnings.warn("Your input ran out of data; interrupting training.", stacklevel=2)
                break
            if val is not None:
                val_logs = self._evaluate_batches(val, cbs)
                epoch_logs.update({"val_" + k: v for k, v in val_logs.items()})
            logs = dict(sorted(epoch_logs.items()))
            cbs.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cbs.on_train_end(logs)
        self.history = cbs.history
        return cbs.history

    def _shuffle_generator(self):
        """The model's own generator of epoch orders, seeded once from ``config.rng()``.

        It is saved with the model, so training resumed from a file (even in a new process)
        shuffles exactly as the interrupted run would have.
        """
        if self._shuffle_rng is None:
            self._shuffle_rng = np.random.default_rng(config.rng().integers(2**63))
        return self._shuffle_rng

    def _validation_data(self, data, batch_size, expected):
        if _is_dataset(data):
            return self._data(data, None, batch_size, False, True, "validation_data")
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise ValueError(
                "`validation_data` must be a tuple (x_val, y_val) or a dataset of (x, y) batches "
                "(sample weights are not supported). "
                f"Received: {type(data).__name__}" + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
            )
        try:
            return self._data(data[0], data[1], batch_size, False, True, "validation_data", expected)
        except (ValueError, TypeError) as err:
            raise type(err)(f"In `validation_data`: {err}") from None

    def _train_epoch(self, data, cbs, stats=None):
        """One pass over ``data``; the epoch's logs (running means), or None if there was no batch.

        ``stats``, an ``InputStats``, also counts every batch's images.
        """
        means = _RunningMeans()
        for step, (xb, yb) in enumerate(data.batches()):
            if stats is not None:
                stats.add(xb)
            cbs.on_train_batch_begin(step)
            loss, y_pred = self.train_step(xb, yb)
            means.add(self._batch_logs(loss, yb, y_pred), len(xb))
            cbs.on_train_batch_end(step, means.logs())
            if self.stop_training:
                break
        return means.logs() if means.count else None

    def _evaluate_batches(self, data, cbs):
        means = _RunningMeans()
        cbs.on_test_begin()
        for step, (xb, yb) in enumerate(data.batches()):
            cbs.on_test_batch_begin(step)
            loss, y_pred = self.test_step(xb, yb)
            means.add(self._batch_logs(loss, yb, y_pred), len(xb))
            cbs.on_test_batch_end(step, means.logs())
        if not means.count:
            raise ValueError("The evaluation data yielded no batches.")
        logs = means.logs()
        cbs.on_test_end(logs)
        return logs

    @_one_thread
    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", return_dict=False, callbacks=None):
        """Loss and metrics on ``(x, y)`` in inference mode: ``[loss, accuracy]`` (a float without metrics)."""
        self._check_compiled("evaluate")
        verbose = _check_verbose(verbose)
        data = self._data(x, y, batch_size, False, True, "evaluate")
        if isinstance(data, _ArrayData) and not self.built:
            self.build(data.x.shape)
        cbs = callbacks_module.CallbackList(callbacks, model=self, add_progbar=verbose != 0, verbose=verbose,
                                            steps=data.steps)
        logs = self._evaluate_batches(data, cbs)
        return self._results(logs, return_dict)

    def _results(self, logs, return_dict):
        if return_dict:
            return logs
        if not self._metrics:
            return logs["loss"]
        return [logs[name] for name in self.metrics_names]

    @_one_thread
    def predict(self, x, batch_size=None, verbose="auto", callbacks=None):
        """The model's outputs for ``x`` (e.g. class probabilities of shape (N, K)), batch by batch."""
        verbose = _check_verbose(verbose)
        if not self._layers:
            raise RuntimeError(f"Model '{self.name}' has no layers: `add` some before calling `predict()`.")
        data = self._data(x, None, batch_size, False, False, "predict")
        if isinstance(data, _ArrayData) and not self.built:
            self.build(data.x.shape)
        cbs = callbacks_module.CallbackList(callbacks, model=self, add_progbar=verbose != 0, verbose=verbose,
                                            steps=data.steps)
        outputs = []
        cbs.on_predict_begin()
        for step, (xb, _) in enumerate(data.batches()):
            cbs.on_predict_batch_begin(step)
            outputs.append(self._forward(xb, training=False))
            cbs.on_predict_batch_end(step, {"outputs": outputs[-1]})
        cbs.on_predict_end()
        if not outputs:
            raise ValueError("`predict` received no batches.")
        return np.concatenate(outputs)

    @_one_thread
    def train_on_batch(self, x, y):
        """One optimizer step on this batch; returns ``[loss, accuracy]`` (the loss alone without metrics)."""
        self._check_compiled("train_on_batch")
        x, y = self._check_arrays(x, y)
        if not self.built:
            self.build(x.shape)
        loss, y_pred = self.train_step(x, y)
        return self._results(self._batch_logs(loss, y, y_pred), False)

    @_one_thread
    def test_on_batch(self, x, y):
        """``[loss, accuracy]`` on this batch in inference mode; changes nothing."""
        self._check_compiled("test_on_batch")
        x, y = self._check_arrays(x, y)
        if not self.built:
            self.build(x.shape)
        loss, y_pred = self.test_step(x, y)
        return self._results(self._batch_logs(loss, y, y_pred), False)

    @_one_thread
    def predict_on_batch(self, x):
        """The outputs for one batch, in inference mode."""
        x, _ = self._check_arrays(x, need_y=False)
        if not self.built:
            self.build(x.shape)
        return self._forward(x, training=False)

    # ------------------------------------------------------------------------ saving
    @_one_thread
    def save(self, filepath, overwrite=True):
        """Write architecture, weights, compile settings and optimizer state to one ``.npz`` file.

        The suffix ``.npz`` is added when missing. The write is atomic: a crash during the save
        leaves any previous file intact. Returns the path written.
        """
        return saving.save_model(self, filepath, overwrite=overwrite)

    @_one_thread
    def save_weights(self, filepath, overwrite=True):
        """Write only the weights (``.npz``); ``load_weights`` reads them back into the same architecture."""
        return saving.save_weights(self, filepath, overwrite=overwrite)

    @_one_thread
    def load_weights(self, filepath):
        """Read weights saved by ``save_weights`` (or ``save``) into this model; checked before any change."""
        saving.load_weights(self, filepath)

    # ------------------------------------------------------------------------ summary
    def summary(self, line_length=None, positions=None, print_fn=None):
        """Print the layers, their output shapes and parameter counts, in Keras's table.

        ``print_fn`` (default ``print``) receives the whole text; ``line_length`` defaults to 88
        characters, or the terminal width minus 4 if that is smaller.
        """
        (print_fn or print)(_summary_text(self, line_length, positions))

    def __repr__(self):
        return f"<Sequential name={self.name!r} layers={len(self._layers)} built={self.built}>"


def load_model(filepath, compile=True):
    """Read a model written by ``model.save``: architecture, weights, compile settings, optimizer state.

    ``compile=False`` skips the loss, metrics and optimizer (their config and state are not even
    read): enough for ``predict``. Every class the file names must be in minicnn's registries, and
    sizes are checked against the architecture before anything is allocated (see ``minicnn.saving``).

    Raises FileNotFoundError if there is no such file and ValueError (naming the file) if it is
    not a complete, consistent minicnn model file. Nothing in the file is ever imported or executed.
    """
    return saving.load_model(filepath, compile=compile)


# ============================================================================ messages
def _shape_hint(got, expected):
    got, exp = tuple(got), tuple(expected)
    if len(got) == len(exp) - 1 and exp[-1] == 1 and all(e is None or e == g for e, g in zip(exp[1:-1], got[1:])):
        return (" The images have no channel axis: add one with x = x[..., None] "
                "(or np.expand_dims(x, -1)) to get shape (N, H, W, 1).")
    if len(got) == len(exp) == 4 and got[1] == exp[3] and got[2:] == exp[1:3]:
        return (" This looks like channels-first data (N, C, H, W); minicnn is channels-last (N, H, W, C), "
                "as Keras: use x = np.transpose(x, (0, 2, 3, 1)).")
    if got == exp[1:]:
        return " This looks like a single sample: add the batch axis with x[None] (or np.expand_dims(x, 0))."
    return ""


def _target_shape_message(loss, y, out, name):
    msg = (f"{type(loss).__name__}: `{name}` must have shape {format_shape((None, *out[1:]))} to match the "
           f"model's outputs. Received: {name}.shape={tuple(y.shape)}.")
    integer_like = y.dtype.kind in "biu" or (y.size and np.all(y == np.round(y)))
    if isinstance(loss, losses.CategoricalCrossentropy) and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)) \
            and integer_like:
        msg += (" These look like integer class labels: use loss='sparse_categorical_crossentropy', "
                f"or one-hot encode them with minicnn.utils.to_categorical({name}, {out[-1]}).")
    elif y.ndim == len(out) and y.shape[:-1] == out[:-1]:
        msg += (f" The targets have {y.shape[-1]} columns (one-hot width) but the last layer has {out[-1]} units: "
                "make them equal (e.g. Dense(num_classes)).")
    return msg


# ============================================================================ summary table
def _readable_size(num_bytes):
    """``2.65 MB``: 1024 steps, two decimals (Keras's ``readable_memory_size``)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if num_bytes / 1024 < 1:
            return f"{num_bytes:.2f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.2f} PB"


def _shrink(widths, excess):
    """Take ``excess`` characters off the columns evenly, as rich's ``ratio_reduce`` (Keras renders with rich)."""
    out, remaining, parts = [], excess, len(widths)
    for w in widths:
        cut = min(w, round(remaining / parts))
        out.append(w - cut)
        remaining -= cut
        parts -= 1
    return out


def _summary_text(model, line_length=None, positions=None):
    if line_length is None:
        line_length = min(88, shutil.get_terminal_size().columns - 4)
    positions = positions or [0.45, 0.80, 1.0]
    bounds = [int(p * line_length) for p in positions]
    widths = [b - a for a, b in zip([0] + bounds[:-1], bounds)]
    # Each cell has one space of padding on both sides and the table has len + 1 borders;
    # the columns give up the excess so the table is exactly line_length wide.
    inner = _shrink([w + 2 for w in widths], sum(widths) + 2 * len(widths) - (line_length - len(widths) - 1))
    widths = [max(w - 2, 1) for w in inner]

    rows = []
    for layer in model.layers:
        if layer.built and layer.output_shape is not None:
            shape = "(" + ", ".join("None" if d is None else str(d) for d in layer.output_shape) + ")"
            params = f"{layer.count_params():,}"
        else:
            shape, params = "?", "0 (unbuilt)"
        rows.append([f"{layer.name} ({type(layer).__name__})", shape, params])

    def line(left, mid, right, fill):
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def cells(texts, bar):
        wrapped = [textwrap.wrap(t, w, break_long_words=True, break_on_hyphens=False) or [""]
                   for t, w in zip(texts, widths)]
        out = []
        for i in range(max(len(c) for c in wrapped)):
            parts = []
            for col, (c, w) in enumerate(zip(wrapped, widths)):
                text = c[i] if i < len(c) else ""
                parts.append(" " + (text.rjust(w) if col == 2 else text.ljust(w)) + " ")
            out.append(bar + bar.join(parts) + bar)
        return out

    lines = [f'Model: "{model.name}"', line("┏", "┳", "┓", "━")]
    lines += cells(["Layer (type)", "Output Shape", "Param #"], "┃")
    lines.append(line("┡", "╇", "┩", "━"))
    for i, row in enumerate(rows):
        if i:
            lines.append(line("├", "┼", "┤", "─"))
        lines += cells(row, "│")
    lines.append(line("└", "┴", "┘", "─"))

    def size(arrays):
        return sum(a.size for a in arrays), sum(a.nbytes for a in arrays)

    trainable, trainable_bytes = size(model.trainable_weights)
    frozen, frozen_bytes = size(model.non_trainable_weights)
    opt_count = opt_bytes = 0
    opt = model.optimizer
    if opt is not None and opt.built:
        slots = [a for s in opt.slots.values() for a in s.values()]
        # Keras also counts the step counter (int64) and the learning rate (float32) as variables.
        has_lr_variable = not callable(opt._learning_rate)
        opt_count = sum(a.size for a in slots) + 1 + has_lr_variable
        opt_bytes = sum(a.nbytes for a in slots) + 8 + 4 * has_lr_variable
    lines.append(f" Total params: {trainable + frozen + opt_count:,} "
                 f"({_readable_size(trainable_bytes + frozen_bytes + opt_bytes)})")
    lines.append(f" Trainable params: {trainable:,} ({_readable_size(trainable_bytes)})")
    lines.append(f" Non-trainable params: {frozen:,} ({_readable_size(frozen_bytes)})")
    if opt is not None and opt.built:
        lines.append(f" Optimizer params: {opt_count:,} ({_readable_size(opt_bytes)})")
    return "\n".join(lines)
