"""Callbacks: code that ``fit``, ``evaluate`` and ``predict`` call at fixed points of the loop.

The hook names are Keras's. Inside ``fit`` the order of calls is::

    on_train_begin
      on_epoch_begin(epoch)
        on_train_batch_begin(step) ... on_train_batch_end(step, logs)     # logs: running means
        on_test_begin ... on_test_end                                     # validation, if any
      on_epoch_end(epoch, logs)                                           # logs: loss, val_loss, ...
    on_train_end

``logs`` is a dict of Python floats with sorted keys. A callback sees the model as ``self.model``
and stops training by setting ``self.model.stop_training = True``.
"""

import csv
import os
import sys
import warnings

import numpy as np

from .progbar import Progbar
from .saving import npz_path


class Callback:
    """Base class: every hook does nothing. Override the ones you need."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_test_begin(self, logs=None): ...
    def on_test_end(self, logs=None): ...
    def on_predict_begin(self, logs=None): ...
    def on_predict_end(self, logs=None): ...
    def on_batch_begin(self, batch, logs=None): ...
    def on_batch_end(self, batch, logs=None): ...
    def on_test_batch_begin(self, batch, logs=None): ...
    def on_test_batch_end(self, batch, logs=None): ...
    def on_predict_batch_begin(self, batch, logs=None): ...
    def on_predict_batch_end(self, batch, logs=None): ...

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)   # Keras's older name

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)


class CallbackList:
    """Calls one hook on every callback in order; adds History and the progress bar as Keras does."""

    def __init__(self, callbacks=None, model=None, add_history=False, add_progbar=False, verbose=1, **params):
        callbacks = list(callbacks or [])
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"Callbacks must be minicnn.callbacks.Callback instances. Received: {cb!r}")
        self.history = next((cb for cb in callbacks if isinstance(cb, History)), None)
        if self.history is None and add_history:
            self.history = History()
            callbacks.append(self.history)
        if add_progbar and not any(isinstance(cb, ProgbarLogger) for cb in callbacks):
            callbacks.append(ProgbarLogger())
        self.callbacks = callbacks
        for cb in callbacks:
            cb.set_model(model)
            cb.set_params({"verbose": verbose, **params})

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args, **kwargs):
            for cb in self.callbacks:
                getattr(cb, hook)(*args, **kwargs)

        return call


class History(Callback):
    """Records each epoch's logs: ``history.history == {'accuracy': [...], 'loss': [...], ...}``.

    ``fit`` returns this object (also kept as ``model.history``). ``history.epoch`` lists the epoch
    indices and ``history.params`` is ``{'verbose', 'epochs', 'steps'}``.
    """

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)
        if self.model is not None:
            self.model.history = self


class ProgbarLogger(Callback):
    """Prints ``Epoch i/n`` and the progress bar during ``fit``, ``evaluate`` and ``predict``."""

    def __init__(self):
        super().__init__()
        self.progbar = None
        self._in_fit = False

    def _verbose(self):
        return self.params.get("verbose", 1)

    def _new_bar(self, steps, header=None):
        self.progbar = Progbar(steps, verbose=self._verbose(), header=header)
        self.seen = 0

    def on_train_begin(self, logs=None):
        self._in_fit = True

    def on_train_end(self, logs=None):
        self._in_fit = False

    def on_epoch_begin(self, epoch, logs=None):
        epochs = self.params.get("epochs", 1)
        self._new_bar(self.params.get("steps"), header=f"Epoch {epoch + 1}/{epochs}" if epochs > 1 else None)

    def on_train_batch_end(self, batch, logs=None):
        self.seen = batch + 1
        self.progbar.update(self.seen, logs, finalize=False)

    def on_epoch_end(self, epoch, logs=None):
        if self.progbar.target is None:   # an unsized dataset: now we know its length
            self.params["steps"] = self.progbar.target = self.seen
        self.progbar.update(self.seen, logs, finalize=True)

    def on_test_begin(self, logs=None):
        if not self._in_fit:
            self._new_bar(self.params.get("steps"))

    def on_test_batch_end(self, batch, logs=None):
        if not self._in_fit:
            self.seen = batch + 1
            self.progbar.update(self.seen, logs, finalize=False)

    def on_test_end(self, logs=None):
        if not self._in_fit:
            if self.progbar.target is None:
                self.progbar.target = self.seen
            self.progbar.update(self.seen, logs, finalize=True)

    def on_predict_begin(self, logs=None):
        self._new_bar(self.params.get("steps"))

    def on_predict_batch_end(self, batch, logs=None):
        self.seen = batch + 1
        self.progbar.update(self.seen, None, finalize=False)

    def on_predict_end(self, logs=None):
        if self.progbar.target is None:
            self.progbar.target = self.seen
        self.progbar.update(self.seen, None, finalize=True)


# --------------------------------------------------------------------------------------- monitoring
def _monitor_op(callback, monitor, mode):
    """``np.less`` for quantities to minimise, ``np.greater`` for those to maximise (Keras's 'auto' rule)."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{callback}: `mode` must be 'auto', 'min' or 'max'. Received: mode={mode!r}")
    if mode == "min":
        return np.less
    if mode == "max":
        return np.greater
    name = monitor.removeprefix("val_")
    if name in ("accuracy", "acc") or "acc" in name:
        return np.greater
    if "loss" in name or name in ("mse", "mae"):
        return np.less
    raise ValueError(
        f"{callback} received monitor={monitor!r} but cannot tell whether it should be minimised or maximised. "
        "Pass mode='min' or mode='max'."
    )


def _print(message):
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has stopped improving for ``patience`` epochs (Keras's rules).

    An epoch improves if ``current - min_delta`` beats the best value so far (``<`` for losses,
    ``>`` for accuracies). With ``baseline``, the patience counter restarts only on an improvement
    that also beats the baseline. Epochs before ``start_from_epoch`` are ignored. With
    ``restore_best_weights=True`` the weights of the best epoch are put back at the end of training.
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self.monitor = monitor
        self.min_delta = abs(min_delta)
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.monitor_op = _monitor_op("EarlyStopping", monitor, mode)
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def _is_improvement(self, value, reference):
        if reference is None:
            return True
        delta = -self.min_delta if self.monitor_op is np.less else self.min_delta
        return bool(self.monitor_op(value - delta, reference))

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(
                f"Early stopping conditioned on metric `{self.monitor}` which is not available. "
                f"Available metrics are: {','.join(logs or {})}",
                stacklevel=2,
            )
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            _print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                _print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (or only its weights) at the end of every epoch, or only when it improved.

    ``filepath`` may contain ``{epoch:02d}`` and any log key, e.g. ``'ckpt-{epoch:02d}-{val_loss:.2f}.npz'``;
    minicnn files are ``.npz`` (the suffix is added when missing). Saves are atomic: a crash while
    saving leaves the previous file intact. A model whose weights hold NaN or inf (a run that
    diverged) is never saved: the callback warns and the last good file stays.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", initial_value_threshold=None):
        super().__init__()
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.monitor_op = _monitor_op("ModelCheckpoint", monitor, mode) if save_best_only else np.less
        if initial_value_threshold is not None:
            self.best = float(initial_value_threshold)
        else:
            self.best = np.inf if self.monitor_op is np.less else -np.inf

    def _path(self, epoch, logs):
        try:
            return npz_path(self.filepath.format(epoch=epoch + 1, **logs))
        except KeyError as err:
            raise KeyError(
                f"ModelCheckpoint: filepath {self.filepath!r} names {err} which is not in the logs "
                f"(available: epoch, {', '.join(logs)})"
            ) from None

    def _save(self, path, epoch, message):
        bad = sum(int(w.size - np.count_nonzero(np.isfinite(w))) for w in self.model.weights)
        if bad:
            warnings.warn(f"ModelCheckpoint: epoch {epoch + 1}: {bad} weights are NaN or infinite; not saving "
                          f"to {path} (the last good checkpoint, if any, is kept).", stacklevel=3)
            return False
        if self.verbose > 0:
            _print(message)
        dirname = os.path.dirname(path)
        if dirname:
            os.makedirs(dirname, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        return True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = self._path(epoch, logs)
        if not self.save_best_only:
            self._save(path, epoch, f"\nEpoch {epoch + 1}: saving model to {path}")
            return
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available, skipping.", stacklevel=2)
        elif self.monitor_op(current, self.best):
            message = (f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {current:.5f}, "
                       f"saving model to {path}")
            if self._save(path, epoch, message):
                self.best = current
        elif self.verbose > 0:
            _print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch's loss is NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            _print(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)`` (or ``schedule(epoch)``).

    ``epoch`` counts from 0; the rate in force is added to the epoch's logs as ``learning_rate``.
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        lr = self.model.optimizer.learning_rate
        try:
            new_lr = self.schedule(epoch, lr)
        except TypeError:   # the one-argument form schedule(epoch)
            new_lr = self.schedule(epoch)
        if isinstance(new_lr, bool) or not isinstance(new_lr, (int, float, np.integer, np.floating)):
            raise ValueError(f"The output of the `schedule` function should be a float. Got: {new_lr!r}")
        self.model.optimizer.learning_rate = float(new_lr)
        if self.verbose > 0:
            _print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(new_lr)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved for ``patience`` epochs.

    An improvement must beat the best value by more than ``min_delta``. After a reduction, ``cooldown``
    epochs pass before waiting starts again; the rate never goes below ``min_lr``.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__()
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau does not support a factor >= 1.0. Received factor={factor}")
        self.monitor, self.factor, self.patience, self.verbose = monitor, factor, patience, verbose
        self.min_delta, self.cooldown, self.min_lr = min_delta, cooldown, min_lr
        self.monitor_op = _monitor_op("ReduceLROnPlateau", monitor, mode)
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.best = np.inf if self.monitor_op is np.less else -np.inf
        self.wait = 0
        self.cooldown_counter = 0

    def _improved(self, current):
        if self.monitor_op is np.less:
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = float(self.model.optimizer.learning_rate)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"Learning rate reduction is conditioned on metric `{self.monitor}` which is not available. "
                f"Available metrics are: {','.join(logs)}",
                stacklevel=2,
            )
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = float(self.model.optimizer.learning_rate)
                if old_lr > np.float32(self.min_lr):
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    self.model.optimizer.learning_rate = new_lr
                    if self.verbose > 0:
                        _print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class CSVLogger(Callback):
    """Write one CSV row per epoch: ``epoch,accuracy,loss,val_accuracy,val_loss``.

    With ``append=True`` rows are added to an existing file (and the header is written only if the
    file was empty), which suits training resumed with ``initial_epoch``.
    """

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = append
        self._file = None
        self._writer = None
        self.keys = None

    def on_train_begin(self, logs=None):
        write_header = True
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="") as f:
                write_header = not f.readline()
        self._file = open(self.filename, "a" if self.append else "w", newline="")   # closed in on_train_end
        self._write_header = write_header
        self._writer = None
        self.keys = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._writer is None:
            self.keys = sorted(logs)
            self._writer = csv.DictWriter(self._file, fieldnames=["epoch", *self.keys], delimiter=self.sep,
                                          lineterminator="\n")
            if self._write_header:
                self._writer.writeheader()
        self._writer.writerow({"epoch": epoch, **{k: logs.get(k, "NA") for k in self.keys}})
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
        self._file = None
        self._writer = None


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: print(epoch))``."""

    def __init__(self, **hooks):
        super().__init__()
        for name, fn in hooks.items():
            if not name.startswith("on_") or not hasattr(Callback, name):
                raise ValueError(f"LambdaCallback: unknown hook {name!r}")
            setattr(self, name, fn)
