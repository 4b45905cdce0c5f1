"""Sequential: structure, weights, config, compile, gradients (finite differences and PyTorch), fit semantics,
datasets, and clear errors that leave the model untouched."""

import json
import re
import warnings

import numpy as np
import pytest
from helpers import assert_within, model_forward_bound

import minicnn
from minicnn import config, losses
from minicnn.callbacks import Callback
from minicnn.layers import Conv2D, Dense, Dropout, Flatten, Input, InputLayer, MaxPooling2D
from minicnn.models import Sequential
from minicnn.optimizers import SGD, Adam
from minicnn.utils import clear_session, set_random_seed, to_categorical

pytestmark = pytest.mark.usefixtures("default_settings")

# Losses compared in float64, where the point is the arithmetic of the means (batch weights, penalties),
# not float32 rounding: the computations differ only in the order of their sums (of at most ~50 terms
# each, through a few layers), a few hundred float64 ulps at most: 1e-13 is ~450 ulps of the loss.
FLOAT64_REL = 1e-13
EPS64 = float(np.finfo(np.float64).eps)


def assert_same_predictions(name, model, x, *predictions):
    """Each prediction within the float32 bound derived from the model's sums (tests/helpers.py)."""
    exact, bound = model_forward_bound(model, x, model.layers[0].dtype)
    for i, p in enumerate(predictions):
        assert_within(f"{name} [{i}]", p, exact, bound)


def small_cnn(input_shape=(8, 8, 1), classes=3, activation="softmax", input_layer=True):
    layers = [
        Conv2D(4, (3, 3), activation="relu"),
        MaxPooling2D(pool_size=(2, 2)),
        Flatten(),
        Dense(classes, activation=activation),
    ]
    return Sequential(([Input(shape=input_shape)] if input_layer else []) + layers)


def signal_data(rng, n=48, shape=(8, 8, 1), classes=3):
    """Images whose class shows as a bright horizontal band at a class-dependent height."""
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 0.3, (n, *shape)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 2 * c : 2 * c + 2] += 1.5
    return x, y


def trained(rng, **compile_kw):
    model = small_cnn()
    model.compile(**{"optimizer": "adam", "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
                     **compile_kw})
    x, y = signal_data(rng)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return model, x, y


def snapshot(model):
    state = model.optimizer.get_state() if model.optimizer is not None else None
    return model.get_weights(), state


def assert_unchanged(model, snap):
    weights, state = snap
    for i, (a, b) in enumerate(zip(weights, model.get_weights())):
        np.testing.assert_array_equal(a, b, err_msg=f"weight {i} changed")
    if state is not None:
        now = model.optimizer.get_state()
        assert now["iterations"] == state["iterations"]
        assert sorted(now["slots"]) == sorted(state["slots"])
        for key, slots in state["slots"].items():
            for name, arr in slots.items():
                np.testing.assert_array_equal(arr, now["slots"][key][name], err_msg=f"optimizer slot {key} {name}")


# ====================================================================================== structure
def test_list_constructor_add_and_layers():
    model = small_cnn()
    assert [layer.name for layer in model.layers] == ["conv2d", "max_pooling2d", "flatten", "dense"]
    assert not any(isinstance(layer, InputLayer) for layer in model.layers)
    assert model.built and model.input_shape == (None, 8, 8, 1) and model.output_shape == (None, 3)
    assert model.name == "sequential"
    other = Sequential(name="mine")
    other.add(Input(shape=(8, 8, 1)))
    other.add(Conv2D(4, 3))
    assert other.name == "mine" and other.layers[0].output_shape == (None, 6, 6, 4)


def test_input_shape_on_first_layer_builds_at_once():
    model = Sequential()
    model.add(Conv2D(2, (3, 3), input_shape=(6, 6, 3), activation="relu"))
    assert model.built and model.input_shape == (None, 6, 6, 3)
    model.add(Flatten())
    assert model.layers[-1].output_shape == (None, 32)


def test_lazy_build_on_first_data():
    rng = np.random.default_rng(10)
    model = small_cnn(input_layer=False)
    assert not model.built and not model.layers[0].built
    text = []
    model.summary(print_fn=text.append, line_length=76)
    assert "│ conv2d (Conv2D)                 │ ?                      │   0 (unbuilt) │" in text[0]
    assert " Total params: 0 (0.00 B)" in text[0]
    with pytest.raises(ValueError, match="isn't built"):
        model.count_params()
    out = model.predict(rng.random((5, 8, 8, 1)), verbose=0)
    assert out.shape == (5, 3) and model.built and model.input_shape == (None, 8, 8, 1)
    assert model.count_params() == 4 * 9 + 4 + 36 * 3 + 3


def test_explicit_build_and_rebuild_with_other_shape():
    model = small_cnn(input_layer=False)
    model.build((None, 8, 8, 1))
    model.build((32, 8, 8, 1))   # the batch size does not matter
    with pytest.raises(ValueError, match="already built"):
        model.build((None, 10, 10, 1))


def test_add_rejects_non_layers_duplicates_and_second_inputs():
    model = small_cnn()
    with pytest.raises(ValueError, match="Only instances of `minicnn.layers.Layer`"):
        model.add("dense")
    with pytest.raises(ValueError, match="unique names.*'dense'"):
        model.add(Dense(2, name="dense"))
    with pytest.raises(ValueError, match="Input"):
        model.add(Input(shape=(3,)))
    assert len(model.layers) == 4


def test_add_incompatible_layer_adds_nothing():
    model = small_cnn()
    with pytest.raises(ValueError, match="Conv2D"):
        model.add(Conv2D(2, 3))   # after Dense: 2-D input
    assert len(model.layers) == 4


def test_pop_and_add_a_new_head():
    model = small_cnn()
    last = model.pop()
    assert last.name == "dense" and len(model.layers) == 3
    model.add(Dense(5, activation="softmax", name="head"))
    assert model.output_shape == (None, 5)
    with pytest.raises(ValueError, match="no layers"):
        Sequential().pop()


def test_call_equals_predict():
    rng = np.random.default_rng(11)
    model = small_cnn()
    x = rng.random((7, 8, 8, 1)).astype(np.float32)
    assert_same_predictions("call, predict", model, x, model(x), model.predict(x, batch_size=3, verbose=0))


# ====================================================================================== weights and config
def test_get_and_set_weights_in_keras_order():
    model = small_cnn()
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 3, 1, 4), (4,), (36, 3), (3,)]
    new = [np.full(s, i, dtype=np.float32) for i, s in enumerate(shapes)]
    model.set_weights(new)
    for a, b in zip(model.get_weights(), new):
        np.testing.assert_array_equal(a, b)


def test_set_weights_checks_everything_before_changing_anything():
    model = small_cnn()
    before = model.get_weights()
    bad_shape = [np.zeros_like(w) for w in before]
    bad_shape[-1] = np.zeros(5)
    with pytest.raises(ValueError, match=r"dense.*bias.*\(3,\).*\(5,\)"):
        model.set_weights(bad_shape)
    with pytest.raises(ValueError, match="4 weight arrays. Received: 3"):
        model.set_weights(before[:3])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_config_round_trip_gives_the_same_model():
    rng = np.random.default_rng(12)
    model = small_cnn()
    config_ = json.loads(json.dumps(model.get_config()))   # JSON-able
    again = Sequential.from_config(config_)
    assert [type(a) for a in again.layers] == [type(b) for b in model.layers]
    assert [a.name for a in again.layers] == [b.name for b in model.layers]
    again.set_weights(model.get_weights())
    x = rng.random((4, 8, 8, 1))
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


# ====================================================================================== compile and metrics
def test_compile_accepts_strings_and_objects_and_defaults_to_rmsprop():
    model = small_cnn()
    model.compile(loss="categorical_crossentropy")
    assert type(model.optimizer).__name__ == "RMSprop"
    opt = Adam(1e-4)
    model.compile(optimizer=opt, loss=losses.CategoricalCrossentropy(), metrics=["acc"])
    assert model.optimizer is opt and model.metrics_names == ["loss", "acc"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(optimizer="adamax", loss="mse"), "adam.*rmsprop.*sgd"),
    (dict(optimizer="adam", loss="hinge"), "categorical_crossentropy"),
    (dict(optimizer="adam", loss="mse", metrics=["f1"]), "accuracy"),
])
def test_compile_rejects_unknown_names_listing_valid_ones(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_cnn().compile(**kwargs)


def test_accuracy_is_resolved_from_shapes_like_keras():
    rng = np.random.default_rng(13)
    x = rng.random((20, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 20)

    sparse = small_cnn()
    sparse.compile("sgd", "sparse_categorical_crossentropy", ["accuracy"])
    loss, acc = sparse.evaluate(x, labels, verbose=0)
    assert acc == pytest.approx(np.mean(sparse.predict(x, verbose=0).argmax(1) == labels))

    sparse.compile("sgd", "categorical_crossentropy", ["accuracy"])
    loss, acc_onehot = sparse.evaluate(x, to_categorical(labels, 3), verbose=0)
    assert acc_onehot == pytest.approx(acc)

    binary = small_cnn(classes=1, activation="sigmoid")
    binary.compile("sgd", "binary_crossentropy", ["accuracy"])
    y = (labels > 0).astype(np.float32)
    _, acc_bin = binary.evaluate(x, y, verbose=0)   # labels (N,) for a (N, 1) output are accepted
    assert acc_bin == pytest.approx(np.mean((binary.predict(x, verbose=0)[:, 0] > 0.5) == y))


# ====================================================================================== gradients
@pytest.mark.parametrize("loss,activation,classes,target", [
    ("categorical_crossentropy", "softmax", 3, "onehot"),          # fused softmax + CE
    ("sparse_categorical_crossentropy", "softmax", 3, "sparse"),   # fused
    ("binary_crossentropy", "sigmoid", 1, "binary"),               # fused sigmoid + BCE
    ("mse", "softmax", 3, "onehot"),                               # through the softmax Jacobian
    ("categorical_crossentropy", "relu", 3, "onehot"),             # probabilities path, no fusion
])
def test_model_gradients_match_finite_differences(loss, activation, classes, target):
    rng = np.random.default_rng(14)
    minicnn.set_floatx("float64")
    model = Sequential([
        Input(shape=(6, 6, 2)),
        Conv2D(3, (3, 3), padding="same", activation="relu", kernel_regularizer=minicnn.regularizers.l2(1e-2)),
        MaxPooling2D(),
        Flatten(),
        Dropout(0.3),   # the gradient check replays the same mask in every evaluation
        Dense(5, activation="tanh"),
        Dense(classes, activation=activation, bias_initializer="ones"),
    ])
    model.compile(optimizer="sgd", loss=loss)
    x = rng.standard_normal((4, 6, 6, 2))
    labels = rng.integers(0, classes, 4)
    y = {"onehot": to_categorical(labels, classes), "sparse": labels, "binary": rng.integers(0, 2, (4, 1)).astype(float)}[target]
    report = model.check_gradients(x, y)
    assert report.ok, str(report)
    assert len(report.rows) == 6


def test_compute_gradients_changes_no_weights_and_matches_compute_loss():
    rng = np.random.default_rng(15)
    minicnn.set_floatx("float64")
    model, x, y = trained(rng)
    before = snapshot(model)
    loss = model.compute_gradients(x, y)
    assert loss == pytest.approx(model.compute_loss(x, y, training=True), rel=FLOAT64_REL)
    assert loss == pytest.approx(model.evaluate(x, y, verbose=0, batch_size=len(x))[0], rel=FLOAT64_REL)
    assert_unchanged(model, before)
    assert all(np.any(g != 0) for layer in model.layers for g in layer.grads.values())


def test_regularization_penalty_is_added_to_the_reported_loss():
    rng = np.random.default_rng(16)
    minicnn.set_floatx("float64")
    model = Sequential([Input(shape=(4,)), Dense(2, activation="softmax", kernel_regularizer=minicnn.regularizers.l2(0.5))])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = rng.random((6, 4)), rng.integers(0, 2, 6)
    plain = losses.get("sparse_categorical_crossentropy")(y, model.predict(x, verbose=0))
    penalty = 0.5 * np.sum(model.layers[0].params["kernel"] ** 2)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(plain + penalty, rel=FLOAT64_REL)


# ====================================================================================== PyTorch parity
def _torch_twin(torch, model):
    """The same CNN in PyTorch with our weights; NHWC <-> NCHW moves happen here only."""
    conv1, _, conv2, _, dense1, dense2 = model.layers
    nn = torch.nn
    net = nn.ModuleDict({
        "conv1": nn.Conv2d(2, 3, 3, padding=1), "conv2": nn.Conv2d(3, 4, 3),
        "dense1": nn.Linear(36, 6), "dense2": nn.Linear(6, 4),
    }).double()
    with torch.no_grad():
        for name, layer in (("conv1", conv1), ("conv2", conv2)):
            net[name].weight.copy_(torch.from_numpy(layer.params["kernel"].transpose(3, 2, 0, 1).copy()))
            net[name].bias.copy_(torch.from_numpy(layer.params["bias"]))
        for name, layer in (("dense1", dense1), ("dense2", dense2)):
            net[name].weight.copy_(torch.from_numpy(layer.params["kernel"].T.copy()))
            net[name].bias.copy_(torch.from_numpy(layer.params["bias"]))

    def loss_fn(x, y_onehot):
        h = torch.from_numpy(x).permute(0, 3, 1, 2)                         # NHWC -> NCHW
        h = torch.nn.functional.max_pool2d(torch.relu(net["conv1"](h)), 2)
        h = torch.relu(net["conv2"](h))
        h = h.permute(0, 2, 3, 1).reshape(len(x), -1)                       # flatten in (h, w, c) order, as Keras
        z = net["dense2"](torch.relu(net["dense1"](h)))
        return -(torch.from_numpy(y_onehot) * torch.log_softmax(z, dim=1)).sum(1).mean()

    def grads_as_ours():
        out = []
        for name in ("conv1", "conv2"):
            out += [net[name].weight.grad.numpy().transpose(2, 3, 1, 0), net[name].bias.grad.numpy()]
        for name in ("dense1", "dense2"):
            out += [net[name].weight.grad.numpy().T, net[name].bias.grad.numpy()]
        return out

    def weights_as_ours():
        out = []
        for name in ("conv1", "conv2"):
            out += [net[name].weight.detach().numpy().transpose(2, 3, 1, 0), net[name].bias.detach().numpy()]
        for name in ("dense1", "dense2"):
            out += [net[name].weight.detach().numpy().T, net[name].bias.detach().numpy()]
        return out

    return net, loss_fn, grads_as_ours, weights_as_ours


def _parity_model():
    minicnn.set_floatx("float64")
    return Sequential([
        Input(shape=(10, 10, 2)),
        Conv2D(3, (3, 3), padding="same", activation="relu"),
        MaxPooling2D(pool_size=(2, 2)),
        Conv2D(4, (3, 3), activation="relu"),
        Flatten(),
        Dense(6, activation="relu"),
        Dense(4, activation="softmax"),
    ])


def test_loss_and_every_gradient_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(17)
    model = _parity_model()
    model.compile(optimizer=SGD(0.1), loss="categorical_crossentropy")
    x = rng.standard_normal((5, 10, 10, 2))
    y = to_categorical(rng.integers(0, 4, 5), 4)
    net, loss_fn, grads_as_ours, _ = _torch_twin(torch, model)
    torch_loss = loss_fn(x, y)
    torch_loss.backward()
    loss = model.compute_gradients(x, y)
    assert loss == pytest.approx(torch_loss.item(), rel=FLOAT64_REL)
    ours = [layer.grads[k] for layer in model.layers for k in layer.params]
    names = [f"{layer.name}/{k}" for layer in model.layers for k in layer.params]
    # float64: the same math with sums in other orders, a few hundred ulps of each array's magnitude
    # (measured: under 3 ulps); a wrong gradient is off by a whole term, ~1e-3 of the magnitude or more
    tols = [256 * EPS64 * np.abs(b).max() for b in grads_as_ours()]
    for name, a, b, tol in zip(names, ours, grads_as_ours(), tols):
        assert_within(name, a, b, tol, "256 float64 ulps of max|grad|")
    # and one SGD step with train_on_batch is w - lr * grad (one multiply and one subtraction more)
    before = model.get_weights()
    model.train_on_batch(x, y)
    for name, w0, w1, g, tol in zip(names, before, model.get_weights(), grads_as_ours(), tols):
        assert_within(name, w1, w0 - 0.1 * g, 0.1 * tol + 4 * EPS64 * np.abs(w0), "0.1 * grad bound + 4 ulps of |w|")


def test_twelve_adam_steps_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(18)
    model = _parity_model()
    model.compile(optimizer=Adam(learning_rate=0.01), loss="categorical_crossentropy")   # Keras's epsilon 1e-7
    net, loss_fn, _, weights_as_ours = _torch_twin(torch, model)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for t in range(1, 13):
        x = rng.standard_normal((6, 10, 10, 2))
        y = to_categorical(rng.integers(0, 4, 6), 4)
        model.train_on_batch(x, y)
        # Keras's "epsilon hat" is PyTorch's eps scaled by sqrt(1 - beta_2**t): match it step by step.
        opt.param_groups[0]["eps"] = 1e-7 / np.sqrt(1 - 0.999**t)
        opt.zero_grad()
        loss_fn(x, y).backward()
        opt.step()
    # float64. Adam's update lr * m_hat / (sqrt(v_hat) + eps_hat) is a ratio of moments of the same
    # gradients: gradients a few ulps apart (see the test above) move each update (at most ~lr) by a few
    # hundred ulps of lr at most (while sqrt(v_hat) >> eps_hat, as with these O(0.01..1) gradients), and
    # the weights by that over the 12 steps plus their own rounding
    for i, (a, b) in enumerate(zip(model.get_weights(), weights_as_ours())):
        assert_within(f"weight {i}", a, b, 12 * 0.01 * 256 * EPS64 + 256 * EPS64 * np.abs(b),
                      "12 steps * lr * 256 ulps + 256 ulps of |w|")


# ====================================================================================== fit semantics
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


# ====================================================================================== datasets
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


# ====================================================================================== bad input
@pytest.fixture
def fitted():
    rng = np.random.default_rng(30)
    model, x, y = trained(rng)
    return model, x, y, snapshot(model)


def test_fit_before_compile_names_compile():
    model = small_cnn()
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(np.zeros((2, 8, 8, 1)), np.zeros(2))
    with pytest.raises(RuntimeError, match="compile"):
        model.evaluate(np.zeros((2, 8, 8, 1)), np.zeros(2))


@pytest.mark.parametrize("make_x,error,patterns", [
    (lambda x: x[..., 0], ValueError, [r"expected shape=\(None, 8, 8, 1\)", r"found shape=\(48, 8, 8\)", "channel axis"]),
    (lambda x: np.zeros((48, 8, 8, 3)), ValueError, [r"expected shape=\(None, 8, 8, 1\)", r"\(48, 8, 8, 3\)"]),
    (lambda x: x.astype(object), TypeError, ["numbers", "object"]),
    (lambda x: x.astype(str), TypeError, ["numbers"]),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) < 2, np.nan, np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x)),
     ValueError, ["2 NaN and 1 infinite"]),
    (lambda x: x[:0], ValueError, ["non-empty"]),
])
def test_bad_x_raises_and_changes_nothing(fitted, make_x, error, patterns):
    model, x, y, snap = fitted
    bad = make_x(x)
    calls = [lambda: model.fit(bad, y, verbose=0), lambda: model.evaluate(bad, y, verbose=0),
             lambda: model.train_on_batch(bad, y)]
    if bad.ndim and len(bad):
        calls.append(lambda: model.predict(bad, verbose=0))
    for call in calls:
        with pytest.raises(error) as info:
            call()
        for pattern in patterns:
            assert re.search(pattern, str(info.value)), str(info.value)
        assert_unchanged(model, snap)


def test_channels_first_data_gets_a_hint():
    rng = np.random.default_rng(31)
    model = small_cnn(input_shape=(6, 6, 3))
    model.compile("adam", "sparse_categorical_crossentropy")
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"expected shape=\(None, 6, 6, 3\).*channels-first.*transpose") as info:
        model.fit(rng.random((4, 3, 6, 6)), np.zeros(4), verbose=0)
    assert "found shape=(4, 3, 6, 6)" in str(info.value)
    with pytest.raises(ValueError, match="single sample"):
        model.predict(rng.random((6, 6, 3)), verbose=0)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("make_y,compile_loss,error,patterns", [
    (lambda y: y[:-1], None, ValueError, ["cardinality", "'x' sizes: 48", "'y' sizes: 47"]),
    (lambda y: y + 3, None, ValueError, [r"\[0, 3\)", "out-of-range"]),
    (lambda y: to_categorical(y, 5), "categorical_crossentropy", ValueError, ["5 columns", "3 units"]),
    (lambda y: y, "categorical_crossentropy", ValueError, ["sparse_categorical_crossentropy", "to_categorical"]),
    (lambda y: np.where(np.arange(48)[:, None] < 3, np.nan, to_categorical(y, 3)), "categorical_crossentropy",
     ValueError, ["9 NaN and 0 infinite"]),
    (lambda y: y.astype(str), None, TypeError, ["numbers"]),
    (lambda y: None, None, ValueError, ["targets"]),
])
def test_bad_y_raises_and_changes_nothing(fitted, make_y, compile_loss, error, patterns):
    model, x, y, snap = fitted
    if compile_loss:
        model.compile(optimizer=model.optimizer, loss=compile_loss, metrics=["accuracy"])
    bad = make_y(y)
    for call in (lambda: model.fit(x, bad, verbose=0), lambda: model.evaluate(x, bad, verbose=0),
                 lambda: model.train_on_batch(x, bad),
                 lambda: model.fit(x, y if compile_loss is None else to_categorical(y, 3), validation_data=(x, bad),
                                   verbose=0)):
        with pytest.raises(error) as info:
            call()
        for pattern in patterns:
            assert re.search(pattern, str(info.value)), str(info.value)
        assert_unchanged(model, snap)


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=2.5), "batch_size"), (dict(verbose=3), "verbose"),
    (dict(validation_split=1.0), "validation_split"), (dict(validation_split=0.99), "empty"), (dict(validation_split=1e-18), "empty"),
    (dict(epochs=-1), "epochs"), (dict(validation_data=[1, 2, 3, 4]), "validation_data"),
])
def test_bad_fit_arguments_change_nothing(fitted, kwargs, match):
    model, x, y, snap = fitted
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, **kwargs)
    assert_unchanged(model, snap)


def test_failed_fit_leaves_an_unbuilt_model_unbuilt():
    model = small_cnn(input_layer=False)
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="cardinality"):
        model.fit(np.zeros((4, 8, 8, 1)), np.zeros(3), verbose=0)
    with pytest.raises(ValueError, match=r"validation_data.*expected shape=\(None, 8, 8, 1\), found shape=\(2, 9, 9, 1\)"):
        model.fit(np.zeros((4, 8, 8, 1)), np.zeros(4), validation_data=(np.zeros((2, 9, 9, 1)), np.zeros(2)), verbose=0)
    assert not model.built and not any(layer.built for layer in model.layers)


def test_no_warnings_on_a_clean_fit():
    rng = np.random.default_rng(32)
    x, y = signal_data(rng, n=10)
    model = small_cnn()
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(x, y, epochs=1, verbose=0, validation_split=0.2)
    assert config.get_floatx() == "float32"


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


# ====================================================================================== utils
def test_to_categorical_like_keras():
    out = to_categorical([0, 2, 1])
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    assert to_categorical(np.array([[1], [0]]), 3).shape == (2, 3)   # a trailing axis of 1 is dropped
    assert to_categorical(np.zeros((2, 4), dtype=int), 2).shape == (2, 4, 2)
    for bad in ([0, 3], [-1, 0], [0.5]):
        with pytest.raises(ValueError):
            to_categorical(bad, 3)


def test_set_random_seed_and_clear_session():
    import random

    def draw():
        clear_session()
        set_random_seed(3)
        model = small_cnn()
        return model.layers[0].name, model.get_weights(), random.random(), np.random.rand()

    name_a, weights_a, r_a, n_a = draw()
    name_b, weights_b, r_b, n_b = draw()
    assert name_a == name_b == "conv2d" and r_a == r_b and n_a == n_b
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)
    assert small_cnn().layers[0].name == "conv2d_1"


def test_first_layer_gives_input_gradients_again_after_fit():
    """fit skips dL/dx of the first layer (nobody needs it), but only inside the training step."""
    rng = np.random.default_rng(77)
    from minicnn.layers import Conv2D, Dense, Flatten
    from minicnn.models import Sequential

    model = Sequential([Conv2D(2, 3, input_shape=(6, 6, 1)), Flatten(), Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(rng.standard_normal((8, 6, 6, 1)), rng.integers(0, 3, 8), epochs=1, verbose=0)
    conv = model.layers[0]
    y = conv(rng.standard_normal((2, 6, 6, 1)))
    dx = conv.backward(np.ones_like(y))
    assert dx is not None and dx.shape == (2, 6, 6, 1)


def test_compile_config_is_what_a_file_can_store(tmp_path):
    """``get_compile_config`` (as Keras's): None before compile; a metric function is left out, with a warning."""
    def my_metric(y_true, y_pred):
        return 0.0

    model = small_cnn()
    assert model.get_compile_config() is None
    model.compile(Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy", my_metric])
    with pytest.warns(UserWarning, match="'my_metric' is a function and is not saved"):
        settings = model.get_compile_config()
    assert settings["metrics"] == ["accuracy"] and settings["loss"]["class_name"] == "SparseCategoricalCrossentropy"
    assert settings["optimizer"]["class_name"] == "Adam" and settings["optimizer"]["config"]["learning_rate"] == 1e-3
    json.dumps(settings)
    with pytest.warns(UserWarning, match="my_metric"):
        path = model.save(tmp_path / "m")
    loaded = minicnn.models.load_model(path)
    assert loaded.get_compile_config() == settings and loaded.metrics_names == ["loss", "accuracy"]


def test_the_random_state_a_file_stores_is_public():
    model = Sequential([Dropout(0.5, seed=1, input_shape=(4,)), Dense(2)])
    dropout, dense = model.layers
    assert isinstance(dropout.rng, np.random.Generator) and dense.rng is None
    assert dropout.declared_input_shape == (4,) and dense.declared_input_shape is None
    assert model.shuffle_rng is None
    with pytest.raises(TypeError, match="`shuffle_rng` must be a numpy.random.Generator or None. Received: int"):
        model.shuffle_rng = 3
    model.shuffle_rng = np.random.default_rng(5)
    model.compile("sgd", "mse")
    rng = np.random.default_rng(6)
    model.fit(rng.standard_normal((6, 4)), rng.standard_normal((6, 2)), batch_size=2, verbose=0)
    assert model.shuffle_rng.bit_generator.state == _after_one_permutation(5, 6)


def _after_one_permutation(seed, n):
    """The state of ``default_rng(seed)`` after one epoch's order of ``n`` samples was drawn from it."""
    rng = np.random.default_rng(seed)
    rng.permutation(n)
    return rng.bit_generator.state
