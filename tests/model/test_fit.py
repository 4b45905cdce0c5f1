"""fit, evaluate and predict: the validation split, History, batch-weighted logs, seeds, learning,
the batch methods, and datasets (re-iterable batches, generators, image folders) in place of arrays."""

import warnings

import numpy as np
import pytest
from small_models import FLOAT64_REL, assert_same_predictions, signal_data, small_cnn

import minicnn
from minicnn import config
from minicnn.callbacks import Callback
from minicnn.layers import Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D
from minicnn.models import Sequential
from minicnn.optimizers import SGD, Adam
from minicnn.utils import clear_session, set_random_seed

pytestmark = pytest.mark.usefixtures("default_settings")


class Recorder(Callback):
    """Records which phase is running, for a metric that records the targets it sees."""

    def __init__(self):
        super().__init__()
        self.phase, self.seen, self.batches = "train", {"train": [], "val": []}, []

    def on_epoch_begin(self, epoch, logs=None):
        self.phase = "train"

    def on_test_begin(self, logs=None):
        self.phase = "val"

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append(batch)


def test_validation_split_takes_the_last_samples_before_shuffling():
    rng = np.random.default_rng(19)
    recorder = Recorder()

    def seen(y_true, y_pred):
        recorder.seen[recorder.phase].append(np.asarray(y_true).reshape(-1).copy())
        return 0.0

    model = Sequential([Input(shape=(3,)), Dense(1)])
    model.compile("sgd", "mse", metrics=[seen])
    x = rng.random((10, 3))
    y = np.arange(10.0)   # the target is the sample index
    model.fit(x, y, batch_size=4, epochs=1, validation_split=0.25, callbacks=[recorder], verbose=0)
    # split_at = floor(10 * 0.75) = 7: samples 7, 8, 9 validate, in order
    np.testing.assert_array_equal(np.concatenate(recorder.seen["val"]), [7, 8, 9])
    train_seen = np.concatenate(recorder.seen["train"])
    np.testing.assert_array_equal(np.sort(train_seen), np.arange(7))
    assert recorder.batches == [0, 1]   # 7 samples, batch 4: the last partial batch is kept


def test_validation_split_on_distinguishable_data_reports_the_last_block():
    rng = np.random.default_rng(20)
    x = rng.random((50, 8, 8, 1)).astype(np.float32)
    y = np.zeros(50, dtype=int)
    y[40:] = 2   # only the last 20 % are class 2
    model = small_cnn()
    model.compile(SGD(0.0), "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(x, y, epochs=1, validation_split=0.2, verbose=0)
    predicted = model.predict(x[40:], verbose=0).argmax(1)
    assert history.history["val_accuracy"][0] == pytest.approx(np.mean(predicted == 2))


def test_history_keys_sorted_python_floats_epochs_and_params():
    rng = np.random.default_rng(21)
    x, y = signal_data(rng, n=20)
    model = small_cnn()
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(x, y, batch_size=8, epochs=4, initial_epoch=1, validation_data=(x[:6], y[:6]), verbose=0)
    assert list(history.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert all(type(v) is float for values in history.history.values() for v in values)
    assert all(len(v) == 3 for v in history.history.values())
    assert history.epoch == [1, 2, 3]
    assert history.params == {"verbose": 0, "epochs": 4, "steps": 3}
    assert model.history is history


def test_training_logs_are_batch_size_weighted_means():
    # With a learning rate of 0 the weights never move, so the epoch's running mean over batches
    # of sizes 4, 4, 2 must equal the loss over all 10 samples.
    rng = np.random.default_rng(22)
    minicnn.set_floatx("float64")
    x, y = signal_data(rng, n=10)
    model = small_cnn()
    model.compile(SGD(0.0), "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    loss, acc = model.evaluate(x, y, batch_size=10, verbose=0)
    assert history.history["loss"][0] == pytest.approx(loss, rel=FLOAT64_REL)
    assert history.history["accuracy"][0] == pytest.approx(acc)


def test_same_seed_gives_bit_identical_weights_after_fit():
    rng = np.random.default_rng(23)
    x, y = signal_data(rng, n=30)

    def run():
        clear_session()
        set_random_seed(7)
        model = Sequential([Input(shape=(8, 8, 1)), Conv2D(4, 3, activation="relu"), MaxPooling2D(), Flatten(),
                            Dropout(0.3), Dense(3, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=8, epochs=2, validation_split=0.2, verbose=0)
        return model.get_weights()

    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)


def test_small_cnn_overfits_64_samples():
    rng = np.random.default_rng(24)
    set_random_seed(24)
    x = rng.standard_normal((64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    model = Sequential([Input(shape=(8, 8, 1)), Conv2D(8, 3, activation="relu"), MaxPooling2D(), Flatten(),
                        Dense(32, activation="relu"), Dense(4, activation="softmax")])
    model.compile(Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, batch_size=16, epochs=60, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] == 1.0


def test_loss_decreases_on_data_with_signal():
    rng = np.random.default_rng(25)
    set_random_seed(25)
    x, y = signal_data(rng, n=96)
    model = small_cnn()
    model.compile(Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=6, verbose=0)
    losses_ = history.history["loss"]
    assert losses_[-1] < 0.5 * losses_[0]
    assert history.history["accuracy"][-1] > 0.9
    assert all(b < a for a, b in zip(losses_, losses_[1:]))


def test_batch_methods_and_evaluate_return_forms():
    rng = np.random.default_rng(26)
    x, y = signal_data(rng, n=12)
    model = small_cnn()
    model.compile("sgd", "sparse_categorical_crossentropy", ["accuracy"])
    loss, acc = model.train_on_batch(x, y)
    assert type(loss) is float and 0 <= acc <= 1
    assert model.optimizer.iterations == 1
    assert len(model.test_on_batch(x, y)) == 2
    assert model.predict_on_batch(x).shape == (12, 3)
    assert set(model.evaluate(x, y, verbose=0, return_dict=True)) == {"accuracy", "loss"}
    model.compile("sgd", "sparse_categorical_crossentropy")
    assert isinstance(model.evaluate(x, y, verbose=0), float)
    assert isinstance(model.train_on_batch(x, y), float)


def test_uint8_images_are_converted_silently():
    rng = np.random.default_rng(27)
    x = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    model = small_cnn()
    model.compile("sgd", "sparse_categorical_crossentropy")
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x.astype(np.float32), verbose=0))
    model.fit(x, rng.integers(0, 3, 6), verbose=0)
    assert model.get_weights()[0].dtype == np.float32


class BatchList:
    """A re-iterable dataset with a length, like minicnn.data's datasets."""

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.iterations = 0

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        self.iterations += 1
        for i in range(0, len(self.x), self.batch_size):
            yield self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]


def test_fit_evaluate_predict_on_reiterable_datasets():
    rng = np.random.default_rng(28)
    minicnn.set_floatx("float64")
    x, y = signal_data(rng, n=20)
    train, val = BatchList(x[:14], y[:14], 4), BatchList(x[14:], y[14:], 4)
    model = small_cnn(input_layer=False)   # built from the first batch
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(train, epochs=3, validation_data=val, verbose=0)
    assert train.iterations == 3 and val.iterations == 3
    assert history.params["steps"] == 4 and len(history.history["val_loss"]) == 3
    loss, acc = model.evaluate(val, verbose=0)
    assert loss == pytest.approx(model.evaluate(x[14:], y[14:], verbose=0)[0], rel=FLOAT64_REL)
    assert_same_predictions("batches, array", model, x[14:], model.predict(val, verbose=0), model.predict(x[14:], verbose=0))
    assert_same_predictions("iterator, array", model, x[:5], model.predict(iter([x[:3], x[3:5]]), verbose=0),
                            model.predict(x[:5], verbose=0))


def test_generators_are_read_once_and_running_out_stops_training():
    rng = np.random.default_rng(29)
    x, y = signal_data(rng, n=12)
    model = small_cnn()
    model.compile("sgd", "sparse_categorical_crossentropy")
    gen = ((x[i : i + 4], y[i : i + 4]) for i in range(0, 12, 4))
    with pytest.warns(UserWarning, match="ran out of data"):
        history = model.fit(gen, epochs=3, verbose=0)
    assert history.epoch == [0]
    with pytest.raises(ValueError, match="`y` must not be given"):
        model.fit(BatchList(x, y, 4), y, verbose=0)
    with pytest.raises(ValueError, match="only supported for arrays"):
        model.fit(BatchList(x, y, 4), validation_split=0.2, verbose=0)


def test_fit_on_an_image_folder_dataset(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    data = pytest.importorskip("minicnn.data")
    rng = np.random.default_rng(33)
    for k, name in enumerate(["bright", "dark"]):
        (tmp_path / name).mkdir()
        for i in range(6):
            pixels = rng.integers(150, 256, (10, 10)) if k == 0 else rng.integers(0, 100, (10, 10))
            pil.fromarray(pixels.astype(np.uint8)).save(tmp_path / name / f"{i}.png")
    ds = data.image_dataset_from_directory(tmp_path, image_size=(8, 8), color_mode="grayscale", batch_size=4,
                                           seed=1, verbose=False)
    model = small_cnn(classes=2)
    model.compile(Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(ds, epochs=3, validation_data=ds, verbose=0)
    assert history.params["steps"] == 3 and len(history.history["val_accuracy"]) == 3
    assert model.predict(ds, verbose=0).shape == (12, 2)
    assert len(model.evaluate(ds, verbose=0)) == 2


def test_no_warnings_on_a_clean_fit():
    rng = np.random.default_rng(32)
    x, y = signal_data(rng, n=10)
    model = small_cnn()
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(x, y, epochs=1, verbose=0, validation_split=0.2)
    assert config.get_floatx() == "float32"
