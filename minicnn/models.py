"""Sequential: a stack of layers you compile, fit, evaluate, predict with, and save, as in Keras.

The whole of training is one short loop. For each batch, ``train_step`` does::

    y_pred = forward(x)                        # every layer's forward, training=True
    loss = loss_fn(y, y_pred)                  # a number, averaged over the batch
    backward(y, y_pred)                        # every layer's backward: fills layer.grads
    optimizer.apply_gradients(layers)          # w -= ... for every parameter

``fit`` wraps that loop with what a Keras user expects: batching and shuffling, a validation
split, running means of loss and accuracy, callbacks, a progress bar and the ``History`` it
returns. That loop and the checks of its data are ``minicnn.trainer.Trainer``, which
``Sequential`` inherits (as a Keras model inherits its ``Trainer``); this module is the model:
its layers, weights, config, compile settings, forward and backward, saving and summary.

Threads: a model is used by one thread at a time. Its layers keep the last batch's arrays for
backward, so ``fit`` in one thread and ``predict`` in another would read each other's caches; the
second call raises a RuntimeError instead. Use one model per thread (``load_model`` a copy).
"""

import warnings

import numpy as np

from . import activations, config, fit_metrics, gradcheck, losses, optimizers, saving
from .layers import InputLayer, Layer
from .layers import deserialize as deserialize_layer
from .layers import serialize as serialize_layer
from .layers.base import format_shape, unique_name
from .summary import summary_text
from .trainer import Trainer, one_thread

__all__ = ["Sequential", "load_model"]

# ============================================================================ the model
class Sequential(Trainer):
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
            self.build((None, *layer.declared_input_shape))
            return
        if not isinstance(layer, Layer):
            raise ValueError(
                "Only instances of `minicnn.layers.Layer` can be added to a Sequential model. "
                f"Received: {layer!r} (of type {type(layer).__name__})"
            )
        self._check_name(layer)
        input_shape = self._build_input_shape
        if not self._layers and self._input_layer is None and layer.declared_input_shape is not None:
            input_shape = (None, *layer.declared_input_shape)   # the blog's Conv2D(..., input_shape=(224, 224, 3))
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
        resolved = fit_metrics.resolve(metrics)
        self.optimizer, self.loss, self._metrics = optimizer, loss, resolved
        self.compiled = True

    def get_compile_config(self):
        """The arguments of ``compile`` as JSON-able data (what ``save`` stores), or None before ``compile``.

        ``{"optimizer": {...}, "loss": {...} or None, "metrics": ["accuracy", ...]}``, as Keras's
        ``get_compile_config``. A loss or metric that is a function of your own cannot be stored:
        it is left out, with a warning.
        """
        if not self.compiled or self.optimizer is None:
            return None
        loss = None
        if self.loss is not None:
            loss = losses.serialize(self.loss)
            try:
                losses.deserialize(loss)
            except ValueError:
                warnings.warn(f"The loss {self.loss!r} cannot be saved; the loaded model will have no loss.", stacklevel=4)
                loss = None
        metrics = fit_metrics.stored_names(self._metrics, stacklevel=4)
        return {"optimizer": optimizers.serialize(self.optimizer), "loss": loss, "metrics": metrics}

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

    def _dtype(self):
        """The dtype inputs are cast to: the first layer's."""
        first = self._layers[0] if self._layers else None
        if first is None:
            return np.dtype(config.get_floatx())
        return np.dtype(first.dtype if first.built else first.build_dtype)

    # ------------------------------------------------------------------------ forward, loss, backward
    @one_thread
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
        return fit_metrics.batch_logs(loss, self._metrics, y, y_pred)

    @one_thread
    def compute_loss(self, x, y, training=False):
        """The compiled loss (plus weight penalties) on ``(x, y)``, as a float. Changes no weights."""
        self._check_compiled("compute_loss")
        x, y = self._check_arrays(x, y)
        return self.loss(y, self._forward(x, training)) + self._penalty()

    @one_thread
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
        return gradcheck.check_model(self, x, y, **kwargs)

    # ------------------------------------------------------------------------ saving
    @one_thread
    def save(self, filepath, overwrite=True):
        """Write architecture, weights, compile settings and optimizer state to one ``.npz`` file.

        The suffix ``.npz`` is added when missing. The write is atomic: a crash during the save
        leaves any previous file intact. Returns the path written.
        """
        return saving.save_model(self, filepath, overwrite=overwrite)

    @one_thread
    def save_weights(self, filepath, overwrite=True):
        """Write only the weights (``.npz``); ``load_weights`` reads them back into the same architecture."""
        return saving.save_weights(self, filepath, overwrite=overwrite)

    @one_thread
    def load_weights(self, filepath):
        """Read weights saved by ``save_weights`` (or ``save``) into this model; checked before any change."""
        saving.load_weights(self, filepath)

    # ------------------------------------------------------------------------ summary
    def summary(self, line_length=None, positions=None, print_fn=None):
        """Print the layers, their output shapes and parameter counts, in Keras's table.

        ``print_fn`` (default ``print``) receives the whole text; ``line_length`` defaults to 88
        characters, or the terminal width minus 4 if that is smaller.
        """
        (print_fn or print)(summary_text(self, line_length, positions))

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
    return saving.load_model(filepath, Sequential.from_config, compile=compile)


