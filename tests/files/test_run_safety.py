"""Runs that cannot lose or spoil work: non-finite values caught after the cast, checkpoints that
never hold NaN weights, exact resumption in a new process, and one thread at a time per model."""

import os
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

from minicnn.callbacks import Callback, ModelCheckpoint, TerminateOnNaN
from minicnn.layers import Conv2D, Dense, Flatten, Input
from minicnn.models import Sequential, load_model
from minicnn.utils import set_random_seed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.usefixtures("default_settings")


def compiled(seed=0, loss="sparse_categorical_crossentropy", dtype=None, units=3):
    set_random_seed(seed)
    model = Sequential([Input(shape=(6, 6, 1)), Conv2D(4, 3, activation="relu", dtype=dtype), Flatten(dtype=dtype),
                        Dense(units, activation="softmax", dtype=dtype)])
    model.compile("adam", loss, ["accuracy"])
    return model


def data(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return rng.random((n, 6, 6, 1)), rng.integers(0, 3, n)


# ------------------------------------------------------------------------------------ non-finite values
@pytest.mark.parametrize("value,after", [(1e39, True), (-3.5e38, True), (np.inf, False), (np.nan, False)])
def test_values_that_overflow_the_models_dtype_are_caught_after_the_cast(value, after):
    model = compiled()
    x, y = data()
    x[2, 1, 1, 0] = value   # float64 input; the model computes in float32
    before = model.get_weights()
    with pytest.raises(ValueError) as info:
        model.fit(x, y, epochs=1, verbose=0)
    message = str(info.value)
    assert "`x` contains" in message and "out of 576" in message
    assert ("after conversion to float32" in message) == after, message
    assert (("1 NaN" in message) if np.isnan(value) else ("1 infinite" in message)), message
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)   # refused before any step


def test_a_float64_model_takes_1e39_and_targets_are_checked_after_the_cast_too():
    model = compiled(dtype="float64")
    x, y = data()
    x[0, 0, 0, 0] = 1e39
    model.predict(x, verbose=0)   # finite in float64: no error
    mse = compiled(loss="mse", units=1)
    x, _ = data()
    targets = np.zeros(len(x))
    targets[3] = 1e39
    with pytest.raises(ValueError, match=r"`y` contains 0 NaN and 1 infinite value\(s\) out of 16 after conversion to float32"):
        mse.fit(x, targets, epochs=1, verbose=0)


# ------------------------------------------------------------------------------------ checkpoints
class Explode(Callback):
    """Turn every weight into NaN at the end of epoch ``at`` (a diverged run, reproducibly)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.at:
            self.model.set_weights([np.full_like(w, np.nan) for w in self.model.get_weights()])

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


@pytest.mark.parametrize("save_best_only", [False, True])
@pytest.mark.parametrize("terminate", [False, True])
def test_model_checkpoint_keeps_the_last_good_file_when_weights_turn_nan(tmp_path, save_best_only, terminate):
    model = compiled()
    x, y = data()
    path = tmp_path / "ckpt.npz"
    callbacks = [Explode(at=1)] + ([TerminateOnNaN()] if terminate else [])
    callbacks.append(ModelCheckpoint(path, monitor="loss", save_best_only=save_best_only))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=callbacks)
    refused = [str(w.message) for w in caught if "ModelCheckpoint: epoch 2:" in str(w.message)]
    if not save_best_only:   # (with save_best_only the NaN loss of epoch 2 is no improvement: no save is tried)
        assert refused and "weights are NaN or infinite; not saving" in refused[0], [str(w.message) for w in caught]
    assert all(np.isnan(w).all() for w in model.get_weights())
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a good file: no NaN warning on load
        saved = load_model(path)
    assert all(np.isfinite(w).all() for w in saved.get_weights())
    assert saved.optimizer.iterations == 2   # the file of epoch 1 (2 batches of 8)


# ------------------------------------------------------------------------------------ resumption
RESUME_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from minicnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D
    from minicnn.layers.preprocessing import RandomFlip
    from minicnn.models import Sequential, load_model
    from minicnn.schedules import CosineDecay
    from minicnn.optimizers import Adam
    from minicnn.utils import set_random_seed

    mode, path, checkpoint = sys.argv[1:4]
    rng = np.random.default_rng(7)
    x, y = rng.random((40, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, 40)
    if mode == "resume":
        set_random_seed(99)   # another process, another global stream: the file must carry what matters
        model = load_model(checkpoint)
        model.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, verbose=0, validation_split=0.2)
    else:
        set_random_seed(5)
        model = Sequential([Input(shape=(8, 8, 1)), RandomFlip("horizontal"), Conv2D(4, 3, activation="relu"),
                            BatchNormalization(), MaxPooling2D(), Flatten(), Dropout(0.3), Dense(3, activation="softmax")])
        model.compile(Adam(CosineDecay(1e-2, decay_steps=8)), "sparse_categorical_crossentropy", ["accuracy"])
        model.fit(x, y, batch_size=8, epochs=2 if mode == "straight" else 1, verbose=0, validation_split=0.2)
        if mode == "first":
            model.save(checkpoint)
    np.savez(path, *model.get_weights(), iterations=model.optimizer.iterations)
""")


def test_one_epoch_save_load_in_a_new_process_one_epoch_equals_two_epochs_straight(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for mode in ("straight", "first", "resume"):
        subprocess.run([sys.executable, str(script), mode, str(tmp_path / mode), str(tmp_path / "ckpt.npz")],
                       check=True, env=env)
    with np.load(tmp_path / "straight.npz") as straight, np.load(tmp_path / "resume.npz") as resumed:
        assert set(straight.files) == set(resumed.files) and int(resumed["iterations"]) == 8
        for name in straight.files:
            np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)


# ------------------------------------------------------------------------------------ threads
def test_a_second_thread_gets_a_clear_error_while_fit_runs_and_the_same_thread_may_reenter():
    model = compiled()
    x, y = data()
    entered, release = threading.Event(), threading.Event()
    inner = []

    class Park(Callback):
        def on_train_batch_end(self, batch, logs=None):
            inner.append(self.model.predict(x[:2], verbose=0))   # the fitting thread itself: allowed
            entered.set()
            release.wait(30)

    errors = []
    worker = threading.Thread(target=lambda: model.fit(x, y, epochs=1, batch_size=len(x), verbose=0, callbacks=[Park()]))
    worker.start()
    try:
        assert entered.wait(30)
        for call in (lambda: model.predict(x, verbose=0), lambda: model.fit(x, y, verbose=0), lambda: model(x)):
            with pytest.raises(RuntimeError, match=r"running fit\(\) in another thread") as info:
                call()
            errors.append(str(info.value))
    finally:
        release.set()
        worker.join()
    assert len(errors) == 3 and inner[0].shape == (2, 3)
    assert model.predict(x, verbose=0).shape == (16, 3)   # free again once fit returned


THREADS_SCRIPT = textwrap.dedent("""
    import threading
    import numpy as np
    from minicnn.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D
    from minicnn.models import Sequential
    from minicnn.utils import set_random_seed

    def make(seed):
        set_random_seed(seed)
        model = Sequential([Input(shape=(12, 12, 1)), Conv2D(32, 3, activation="relu"), MaxPooling2D(), Flatten(),
                            Dense(3, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        return model

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 12, 12, 1)).astype(np.float32), rng.integers(0, 3, 64)
    a, b = make(1), make(2)
    a.fit(x, y, epochs=2, batch_size=8, verbose=0)
    expected = b.predict(x, batch_size=8, verbose=0)
    a2, b2 = make(1), make(2)
    got = []
    fit = threading.Thread(target=lambda: a2.fit(x, y, epochs=2, batch_size=8, verbose=0))
    predict = threading.Thread(target=lambda: got.extend(b2.predict(x, batch_size=8, verbose=0) for _ in range(10)))
    fit.start(); predict.start(); fit.join(); predict.join()
    assert all(np.array_equal(u, v) for u, v in zip(a.get_weights(), a2.get_weights()))
    assert all(np.array_equal(p, expected) for p in got)
    print("ok")
""")


def test_two_models_in_two_threads_compute_what_they_compute_alone(tmp_path):
    """In a subprocess: a kernel runtime that cannot take two threads would abort the whole process."""
    script = tmp_path / "threads.py"
    script.write_text(THREADS_SCRIPT)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
