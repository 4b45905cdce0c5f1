"""Callbacks and the progress bar: Keras's rules for stopping, checkpoints, learning rates, CSV logs,
and the exact text of the progress lines."""

import csv
import io
import os
import re

import numpy as np
import pytest

from minicnn import callbacks as cb
from minicnn import progbar
from minicnn.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D
from minicnn.losses import MeanSquaredError
from minicnn.models import Sequential, load_model
from minicnn.optimizers import SGD, Adam

pytestmark = pytest.mark.usefixtures("default_settings")


def model_and_data(seed, n=24, optimizer="adam"):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, n)
    for i, c in enumerate(y):
        x[i, 2 * c : 2 * c + 2] += 1.5
    model = Sequential([Input(shape=(8, 8, 1)), Conv2D(4, 3, activation="relu"), MaxPooling2D(), Flatten(),
                        Dense(3, activation="softmax")])
    model.compile(optimizer, "sparse_categorical_crossentropy", ["accuracy"])
    return model, x, y


class ScriptedLogs(cb.Callback):
    """Overwrites one log value per epoch from a script (it runs before the callbacks listed after it)."""

    def __init__(self, key, values):
        super().__init__()
        self.key, self.values = key, values

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]


class WeightsAtEpochEnd(cb.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


# ------------------------------------------------------------------------------------ EarlyStopping
def test_early_stopping_stops_at_the_keras_epoch_and_restores_best_weights(capsys):
    model, x, y = model_and_data(40)
    record = WeightsAtEpochEnd()
    stop = cb.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True, verbose=1)
    script = ScriptedLogs("val_loss", [1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.4])
    history = model.fit(x, y, epochs=7, validation_split=0.25, callbacks=[script, record, stop], verbose=0)
    # best at epoch 1; epochs 2 and 3 do not improve -> wait reaches patience at epoch 3
    assert history.epoch == [0, 1, 2, 3]
    assert stop.stopped_epoch == 3 and stop.best_epoch == 1
    out = capsys.readouterr().out
    assert "Epoch 4: early stopping" in out
    assert "Restoring model weights from the end of the best epoch: 2." in out
    for a, b in zip(model.get_weights(), record.weights[1]):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_min_delta_baseline_start_from_epoch_and_max_mode():
    model, x, y = model_and_data(41)
    stop = cb.EarlyStopping(monitor="loss", min_delta=0.1, patience=1)
    model.fit(x, y, epochs=6, callbacks=[ScriptedLogs("loss", [1.0, 0.95, 0.5, 0.45, 0.3, 0.2]), stop], verbose=0)
    assert stop.stopped_epoch == 1   # 0.95 is not 0.1 better than 1.0

    stop = cb.EarlyStopping(monitor="accuracy", patience=0, start_from_epoch=2)
    assert stop.monitor_op is np.greater
    history = model.fit(x, y, epochs=6, callbacks=[ScriptedLogs("accuracy", [0.9, 0.1, 0.5, 0.6, 0.55, 0.7]), stop],
                        verbose=0)
    assert history.epoch == [0, 1, 2, 3, 4]

    stop = cb.EarlyStopping(monitor="loss", patience=2, baseline=0.5)
    history = model.fit(x, y, epochs=6, callbacks=[ScriptedLogs("loss", [0.9, 0.8, 0.85, 0.4, 0.3, 0.2]), stop],
                        verbose=0)
    # improvements that miss the baseline do not restart the patience count: the first bad epoch stops
    assert history.epoch == [0, 1, 2]


def test_early_stopping_needs_a_mode_for_unknown_metrics_and_warns_on_missing_ones():
    with pytest.raises(ValueError, match="mode='min' or mode='max'"):
        cb.EarlyStopping(monitor="val_f1")
    model, x, y = model_and_data(42)
    with pytest.warns(UserWarning, match="val_loss.*not available"):
        model.fit(x, y, epochs=2, callbacks=[cb.EarlyStopping()], verbose=0)


# ------------------------------------------------------------------------------------ ModelCheckpoint
def test_checkpoint_save_best_only_writes_only_on_improvement(tmp_path, capsys):
    model, x, y = model_and_data(43)
    record = WeightsAtEpochEnd()
    ckpt = cb.ModelCheckpoint(str(tmp_path / "ckpt-{epoch:02d}.npz"), save_best_only=True, verbose=1)
    model.fit(x, y, epochs=4, validation_split=0.25, verbose=0,
              callbacks=[ScriptedLogs("val_loss", [1.0, 1.2, 0.8, 0.9]), record, ckpt])
    assert sorted(os.listdir(tmp_path)) == ["ckpt-01.npz", "ckpt-03.npz"]
    out = capsys.readouterr().out
    assert "Epoch 1: val_loss improved from inf to 1.00000, saving model to" in out
    assert "Epoch 2: val_loss did not improve from 1.00000" in out
    best = load_model(tmp_path / "ckpt-03.npz")
    for a, b in zip(best.get_weights(), record.weights[2]):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_every_epoch_formats_log_values_and_weights_only(tmp_path):
    model, x, y = model_and_data(44)
    ckpt = cb.ModelCheckpoint(str(tmp_path / "sub" / "w-{epoch:02d}-{val_loss:.2f}"), save_weights_only=True)
    model.fit(x, y, epochs=2, validation_split=0.25, verbose=0, callbacks=[ScriptedLogs("val_loss", [0.5, 0.25]), ckpt])
    assert sorted(os.listdir(tmp_path / "sub")) == ["w-01-0.50.npz", "w-02-0.25.npz"]
    fresh, _, _ = model_and_data(44)
    fresh.load_weights(tmp_path / "sub" / "w-02-0.25.npz")
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_mode_auto_maximises_accuracy(tmp_path):
    model, x, y = model_and_data(45)
    ckpt = cb.ModelCheckpoint(str(tmp_path / "best-{epoch}.npz"), monitor="val_accuracy", save_best_only=True)
    model.fit(x, y, epochs=3, validation_split=0.25, verbose=0,
              callbacks=[ScriptedLogs("val_accuracy", [0.5, 0.4, 0.6]), ckpt])
    assert sorted(os.listdir(tmp_path)) == ["best-1.npz", "best-3.npz"]


# ------------------------------------------------------------------------------------ learning rates
def test_reduce_lr_on_plateau():
    model, x, y = model_and_data(46, optimizer=SGD(0.1))
    reduce = cb.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=1, min_lr=0.02)
    history = model.fit(x, y, epochs=8, verbose=0,
                        callbacks=[ScriptedLogs("loss", [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]), reduce])
    # Keras's counting: reductions at the end of epochs 2, 4 and 6 (the cooldown epoch after a reduction
    # resets the wait, and is also the first epoch of the next wait); min_lr caps the third one.
    # The log holds the rate in force during each epoch.
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02])
    assert model.optimizer.learning_rate == pytest.approx(0.02)
    with pytest.raises(ValueError, match="factor >= 1.0"):
        cb.ReduceLROnPlateau(factor=2.0)


def test_learning_rate_scheduler_both_signatures(capsys):
    model, x, y = model_and_data(47, optimizer=Adam(0.01))
    sched = cb.LearningRateScheduler(lambda epoch, lr: lr if epoch < 1 else lr * 0.5, verbose=1)
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[sched])
    assert history.history["learning_rate"] == pytest.approx([0.01, 0.005, 0.0025])
    assert "Epoch 2: LearningRateScheduler setting learning rate to 0.005." in capsys.readouterr().out
    model.fit(x, y, epochs=2, verbose=0, callbacks=[cb.LearningRateScheduler(lambda epoch: 0.1 * (epoch + 1))])
    assert model.optimizer.learning_rate == pytest.approx(0.2)
    with pytest.raises(ValueError, match="should be a float"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[cb.LearningRateScheduler(lambda epoch: "fast")])


# ------------------------------------------------------------------------------------ other callbacks
def test_terminate_on_nan(capsys):
    class NaNLoss(MeanSquaredError):
        def __call__(self, y_true, y_pred):
            return float("nan")

    rng = np.random.default_rng(48)
    model = Sequential([Input(shape=(3,)), Dense(1)])
    model.compile("sgd", NaNLoss())
    history = model.fit(rng.random((20, 3)), rng.random(20), batch_size=5, epochs=3, verbose=0,
                        callbacks=[cb.TerminateOnNaN()])
    assert "Batch 0: Invalid loss, terminating training" in capsys.readouterr().out
    assert history.epoch == [0] and model.optimizer.iterations == 1


def test_csv_logger_content_and_append(tmp_path):
    model, x, y = model_and_data(49)
    path = tmp_path / "log.csv"
    history = model.fit(x, y, epochs=2, validation_split=0.25, verbose=0, callbacks=[cb.CSVLogger(path)])
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1"]
    for row, epoch in zip(rows[1:], range(2)):
        for key, value in zip(rows[0][1:], row[1:]):
            assert float(value) == history.history[key][epoch]
    model.fit(x, y, epochs=3, initial_epoch=2, validation_split=0.25, verbose=0,
              callbacks=[cb.CSVLogger(path, append=True)])
    rows = list(csv.reader(open(path)))
    assert len(rows) == 4 and rows[3][0] == "2"
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb.CSVLogger(path, separator=";")])
    assert open(path).read().splitlines()[0] == "epoch;accuracy;loss"


def test_hooks_are_called_in_keras_order():
    calls = []
    hooks = ["on_train_begin", "on_epoch_begin", "on_train_batch_begin", "on_train_batch_end", "on_test_begin",
             "on_test_batch_begin", "on_test_batch_end", "on_test_end", "on_epoch_end", "on_train_end"]
    recorder = cb.LambdaCallback(**{h: (lambda *a, h=h, **k: calls.append(h)) for h in hooks})
    model, x, y = model_and_data(50, n=8)
    model.fit(x, y, batch_size=8, epochs=1, validation_data=(x, y), verbose=0, callbacks=[recorder])
    assert calls == hooks
    with pytest.raises(TypeError, match="Callback"):
        model.fit(x, y, verbose=0, callbacks=[lambda: None])


def test_callbacks_can_stop_training_from_a_batch():
    class StopAfterTwo(cb.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    model, x, y = model_and_data(51)
    history = model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[StopAfterTwo()])
    assert history.epoch == [0] and model.optimizer.iterations == 2


# ------------------------------------------------------------------------------------ progress output
STEP = r"\d+(s|ms|us)/step"
VALUE = r"\d+\.\d{4}(e[+-]\d+)?"


def test_verbose_2_prints_one_line_per_epoch(capsys):
    model, x, y = model_and_data(52)
    model.fit(x, y, batch_size=8, epochs=2, validation_split=0.25, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2" and len(lines) == 4
    pattern = rf"^3/3 - \d+s - {STEP} - accuracy: {VALUE} - loss: {VALUE} - val_accuracy: {VALUE} - val_loss: {VALUE}$"
    assert re.match(pattern, lines[1]), lines[1]


def test_verbose_1_in_a_log_file_prints_only_the_final_bar(capsys):
    model, x, y = model_and_data(53)
    model.fit(x, y, batch_size=4, epochs=1, validation_split=0.25)   # one epoch: no "Epoch 1/1" header
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert len(lines) == 1
    pattern = rf"^5/5 ━{{20}} \d+s {STEP} - accuracy: {VALUE} - loss: {VALUE} - val_accuracy: {VALUE} - val_loss: {VALUE}$"
    assert re.match(pattern, lines[0]), lines[0]


def test_evaluate_and_predict_print_a_bar(capsys):
    model, x, y = model_and_data(54, n=10)
    model.evaluate(x, y, batch_size=4)
    model.predict(x)
    lines = capsys.readouterr().out.splitlines()
    assert re.match(rf"^3/3 ━{{20}} \d+s {STEP} - accuracy: {VALUE} - loss: {VALUE}$", lines[0]), lines[0]
    assert re.match(rf"^1/1 ━{{20}} \d+s {STEP}$", lines[1]), lines[1]
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)
    assert capsys.readouterr().out == ""


def test_dynamic_bar_redraws_in_place_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = cb.Progbar(4, stream=stream, interval=0.0)
    for step in range(1, 5):
        bar.update(step, {"loss": 0.5 / step})
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "\x1b[32m" in text   # the done part of the bar is green
    final = re.sub(r"\x1b\[[0-9;]*m", "", text.split("\r")[-1])
    assert re.match(rf"^4/4 ━{{20}} \d+s {STEP} - loss: 0\.1250\s*$", final), final
    # throttled: a burst of updates inside the interval draws only the first and the final line
    stream = Terminal()
    bar = cb.Progbar(100, stream=stream, interval=60.0)
    for step in range(1, 101):
        bar.update(step, {"loss": 1.0})
    assert stream.getvalue().count("\r") == 2


def test_bar_shows_eta_during_the_epoch_and_small_values_in_e_notation():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = cb.Progbar(10, stream=stream, interval=0.0)
    bar.update(1, {"loss": 1e-5, "val_loss": -0.25})
    line = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())
    assert re.match(rf"^\r 1/10 ━{{20}} \d+s {STEP} - loss: 1\.0000e-05 - val_loss: -0\.2500$", line), repr(line)
    assert progbar.format_duration(3725) == "1:02:05" and progbar.format_duration(65) == "1:05"
    assert progbar.format_duration(7.9) == "7s"
    assert progbar.format_per_step(0.0021) == "2ms/step" and progbar.format_per_step(3e-5) == "30us/step"
    assert progbar.format_per_step(2.4) == "2s/step"
