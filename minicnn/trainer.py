"""The training loop: ``fit``, ``evaluate``, ``predict`` and the ``*_on_batch`` methods, as Keras's ``Trainer``.

``Sequential`` inherits these from ``Trainer``. ``fit`` does, for each epoch::

    for x_batch, y_batch in data.batches():      # checked, shuffled by the model's own generator
        loss, y_pred = model.train_step(x_batch, y_batch)   # forward, loss, backward, optimizer step
        means.add(logs of the batch, len(x_batch))          # the running means the progress bar shows

with callbacks called at fixed points (``minicnn.callbacks``), then runs the validation data in
inference mode. Everything a user passes in is checked before any weight or optimizer state
changes, with errors that say what was expected and what was received.

The model provides the methods the loop calls (``build``, ``_shapes``, ``_dtype``, ``_forward``,
``train_step``, ``test_step``, ``_batch_logs``, ``_check_compiled``) and the state it reads and
sets (``loss``, ``_metrics``, ``_layers``, ``built``, ``stop_training``, ``history``, ``input_stats``).

Threads: a model is used by one thread at a time. Its layers keep the last batch's arrays for
backward, so ``fit`` in one thread and ``predict`` in another would read each other's caches; the
second call raises a RuntimeError instead (``one_thread``). Use one model per thread.
"""

import functools
import math
import threading
import warnings

import numpy as np

from . import callbacks as callbacks_module
from . import config, fit_metrics, losses
from .data.stats import InputStats
from .data_adapters import ArrayData, IterableData, finite_after_cast, is_dataset, shape_hint, target_shape_message
from .layers.base import format_shape

DEFAULT_BATCH_SIZE = 32


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


_owners_lock = threading.Lock()


def one_thread(method):
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


class Trainer:
    """``fit``, ``evaluate``, ``predict`` and the checks of their data, for a model that inherits them."""

    # ------------------------------------------------------------------------ input checks
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
                f"expected shape={format_shape(expected)}, found shape={tuple(x.shape)}.{shape_hint(x.shape, expected)}"
            )
        if expected is None:
            self._shapes((None, *x.shape[1:]))   # raises if the layers cannot take this shape
        return finite_after_cast(x, self._dtype(), name, " Clean or impute them before training (e.g. np.nan_to_num).")

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
            finite_after_cast(y, y.dtype, name)
            self.loss.check_targets(y, out)
            return y
        if y.shape == out[:-1] and out[-1] == 1:
            y = y.reshape(out)   # labels (N,) for a single output unit (N, 1), as Keras allows
        if y.shape != out:
            raise ValueError(target_shape_message(self.loss, y, out, name))
        y = finite_after_cast(y, self._dtype(), name)
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
        if is_dataset(x):
            if y is not None:
                raise ValueError(f"`y` must not be given when `x` is a dataset ({purpose}): it yields (x, y) pairs.")
            return IterableData(x, self._checked_batch(need_y), need_y)
        if x is None:
            raise ValueError(f"`{purpose}` needs input data `x`.")
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else _check_int("batch_size", batch_size, 1)
        x, y = self._check_arrays(x, y, need_y, expected)
        return ArrayData(x, y, batch_size, shuffle)

    # ------------------------------------------------------------------------ training
    @one_thread
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
        expected = (None, *train.x.shape[1:]) if isinstance(train, ArrayData) else None
        val = None
        if validation_data is not None:
            val = self._validation_data(validation_data, batch_size, expected)
        elif validation_split:
            if not isinstance(train, ArrayData):
                raise ValueError("`validation_split` is only supported for arrays; pass `validation_data` instead.")
            split_at = int(math.floor(len(train.x) * (1 - validation_split)))
            if split_at == 0 or split_at == len(train.x):
                raise ValueError(
                    f"`validation_split={validation_split}` leaves {split_at} of {len(train.x)} samples for "
                    "training and the rest for validation; one side would be empty."
                )
            val = ArrayData(train.x[split_at:], train.y[split_at:], train.batch_size, False)
            train = ArrayData(train.x[:split_at], train.y[:split_at], train.batch_size, train.shuffle)
        if isinstance(train, ArrayData) and not self.built:
            self.build(train.x.shape)   # every check passed: now weights may be created
        if isinstance(train, ArrayData) and train.shuffle:
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

    @property
    def shuffle_rng(self):
        """The model's own generator of epoch orders: None until the first shuffling ``fit`` seeds it
        from ``config.rng()``.

        ``save`` stores its state, so training resumed from a file (even in a new process) shuffles
        exactly as the interrupted run would have.
        """
        return self._shuffle_rng

    @shuffle_rng.setter
    def shuffle_rng(self, rng):
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"`shuffle_rng` must be a numpy.random.Generator or None. Received: {type(rng).__name__}")
        self._shuffle_rng = rng

    def _shuffle_generator(self):
        if self._shuffle_rng is None:
            self._shuffle_rng = np.random.default_rng(config.rng().integers(2**63))
        return self._shuffle_rng

    def _validation_data(self, data, batch_size, expected):
        if is_dataset(data):
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
        means = fit_metrics.RunningMeans()
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
        means = fit_metrics.RunningMeans()
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

    @one_thread
    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", return_dict=False, callbacks=None):
        """Loss and metrics on ``(x, y)`` in inference mode: ``[loss, accuracy]`` (a float without metrics)."""
        self._check_compiled("evaluate")
        verbose = _check_verbose(verbose)
        data = self._data(x, y, batch_size, False, True, "evaluate")
        if isinstance(data, ArrayData) and not self.built:
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

    @one_thread
    def predict(self, x, batch_size=None, verbose="auto", callbacks=None):
        """The model's outputs for ``x`` (e.g. class probabilities of shape (N, K)), batch by batch."""
        verbose = _check_verbose(verbose)
        if not self._layers:
            raise RuntimeError(f"Model '{self.name}' has no layers: `add` some before calling `predict()`.")
        data = self._data(x, None, batch_size, False, False, "predict")
        if isinstance(data, ArrayData) and not self.built:
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

    @one_thread
    def train_on_batch(self, x, y):
        """One optimizer step on this batch; returns ``[loss, accuracy]`` (the loss alone without metrics)."""
        self._check_compiled("train_on_batch")
        x, y = self._check_arrays(x, y)
        if not self.built:
            self.build(x.shape)
        loss, y_pred = self.train_step(x, y)
        return self._results(self._batch_logs(loss, y, y_pred), False)

    @one_thread
    def test_on_batch(self, x, y):
        """``[loss, accuracy]`` on this batch in inference mode; changes nothing."""
        self._check_compiled("test_on_batch")
        x, y = self._check_arrays(x, y)
        if not self.built:
            self.build(x.shape)
        loss, y_pred = self.test_step(x, y)
        return self._results(self._batch_logs(loss, y, y_pred), False)

    @one_thread
    def predict_on_batch(self, x):
        """The outputs for one batch, in inference mode."""
        x, _ = self._check_arrays(x, need_y=False)
        if not self.built:
            self.build(x.shape)
        return self._forward(x, training=False)
