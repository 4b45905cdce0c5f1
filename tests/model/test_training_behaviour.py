"""What ``fit``, ``evaluate`` and the optimizers promise, each checked against an independent computation.

Each of these was once broken by a one-line change that every other test let through (see
``tests/mutation``): ``fit`` ignoring ``shuffle``, ``global_clipnorm`` comparing the squared norm,
the validation pass running in training mode, Dropout's scaling, the weighting of the logged means,
the progress bar printing other numbers than ``History``, and the split of 'same' padding.
"""

import re

import numpy as np
import pytest
from torch_layout import from_torch_layout, to_torch_layout, torch_pad

from minicnn import callbacks as cb
from minicnn.kernels import conv_padding, reference
from minicnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Input
from minicnn.models import Sequential
from minicnn.optimizers import SGD
from minicnn.utils import set_random_seed

pytestmark = pytest.mark.usefixtures("default_settings")


class SeenOrder(cb.Callback):
    """The target values of every training batch, epoch by epoch (the targets are sample indices)."""

    def __init__(self):
        super().__init__()
        self.epochs, self.phase = [], "train"

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append([])
        self.phase = "train"

    def on_test_begin(self, logs=None):
        self.phase = "val"


def index_model(recorder):
    """A linear model whose metric records ``y_true``: which samples each batch held, in order."""

    def seen(y_true, y_pred):
        if recorder.phase == "train":
            recorder.epochs[-1].extend(np.asarray(y_true).reshape(-1).tolist())
        return 0.0

    model = Sequential([Input(shape=(2,)), Dense(1)])
    model.compile(SGD(0.0), "mse", metrics=[seen])
    return model


@pytest.mark.parametrize("shuffle", [True, False])
def test_fit_shuffles_every_epoch_only_when_asked(shuffle):
    set_random_seed(1)
    recorder = SeenOrder()
    model = index_model(recorder)
    x, y = np.zeros((40, 2)), np.arange(40.0)
    model.fit(x, y, batch_size=8, epochs=3, shuffle=shuffle, callbacks=[recorder], verbose=0)
    orders = [np.array(e) for e in recorder.epochs]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(40))   # every sample once per epoch
    if shuffle:
        # a fixed order (or the same order every epoch) would have probability 1/40! per epoch
        assert not np.array_equal(orders[0], np.arange(40))
        assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    else:
        for order in orders:
            np.testing.assert_array_equal(order, np.arange(40))


def test_the_validation_split_is_never_shuffled_into_training():
    set_random_seed(2)
    recorder = SeenOrder()
    model = index_model(recorder)
    model.fit(np.zeros((20, 2)), np.arange(20.0), batch_size=4, epochs=2, validation_split=0.25,
              callbacks=[recorder], verbose=0)
    for order in recorder.epochs:   # the last 5 samples validate, the first 15 train, shuffled
        np.testing.assert_array_equal(np.sort(order), np.arange(15))


def test_global_clipnorm_scales_by_the_norm_of_all_gradients_together():
    a, b = Dense(2, use_bias=False), Dense(1, use_bias=False)
    a.build((None, 1))
    b.build((None, 1))

    def step(**clip):
        a.params["kernel"][:] = 0
        b.params["kernel"][:] = 0
        a.grads["kernel"][:] = [[3.0, 4.0]]
        b.grads["kernel"][:] = [[12.0]]
        SGD(1.0, **clip).apply_gradients([a, b])
        return np.concatenate([-a.params["kernel"].ravel(), -b.params["kernel"].ravel()])

    # ||(3, 4, 12)|| = 13: above 1.3 every gradient is scaled by 1.3 / 13, direction kept
    np.testing.assert_allclose(step(global_clipnorm=1.3), [0.3, 0.4, 1.2], rtol=1e-6)
    np.testing.assert_allclose(step(global_clipnorm=13.5), [3.0, 4.0, 12.0])       # below: untouched
    # clipnorm is per array: (3, 4) has norm 5 and 12 norm 12, each scaled to norm 1.3 on its own
    np.testing.assert_allclose(step(clipnorm=1.3), [0.78, 1.04, 1.3], rtol=1e-6)


def bn_dropout_model(seed):
    set_random_seed(seed)
    model = Sequential([Input(shape=(6,)), Dense(16, activation="relu"), Dropout(0.5), BatchNormalization(),
                        Dense(3, activation="softmax")])
    model.compile(SGD(0.1), "sparse_categorical_crossentropy", ["accuracy"])
    return model


def inference_loss(model, x, y):
    """Cross-entropy of the layers run one by one with training=False, in NumPy: an independent evaluate."""
    h = x.astype(model.layers[0].params["kernel"].dtype)
    for layer in model.layers:
        h = layer.forward(h, training=False)
    return float(-np.mean(np.log(np.clip(h[np.arange(len(y)), y], 1e-7, 1.0))))


def test_evaluate_runs_in_inference_mode():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((30, 6)), rng.integers(0, 3, 30)
    model = bn_dropout_model(3)
    model.fit(x, y, batch_size=10, epochs=2, verbose=0)
    bn = model.layers[2]
    stats = bn.moving_mean.copy(), bn.moving_variance.copy()
    weights = model.get_weights()
    loss = model.evaluate(x, y, batch_size=7, verbose=0)[0]
    assert loss == pytest.approx(inference_loss(model, x, y), rel=1e-5)   # Dropout off, moving statistics used
    assert model.evaluate(x, y, batch_size=7, verbose=0)[0] == loss        # no random mask: the same twice
    np.testing.assert_array_equal(bn.moving_mean, stats[0])               # statistics left alone
    np.testing.assert_array_equal(bn.moving_variance, stats[1])
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)


class StatsAroundValidation(cb.Callback):
    def __init__(self, layer):
        super().__init__()
        self.layer, self.before, self.after = layer, [], []

    def on_test_begin(self, logs=None):
        self.before.append((self.layer.moving_mean.copy(), self.layer.moving_variance.copy()))

    def on_test_end(self, logs=None):
        self.after.append((self.layer.moving_mean.copy(), self.layer.moving_variance.copy()))


def test_the_validation_pass_runs_in_inference_mode():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)
    xv, yv = rng.standard_normal((13, 6)), rng.integers(0, 3, 13)
    model = bn_dropout_model(4)
    spy = StatsAroundValidation(model.layers[2])
    history = model.fit(x, y, batch_size=8, epochs=2, validation_data=(xv, yv), callbacks=[spy], verbose=0)
    for (m0, v0), (m1, v1) in zip(spy.before, spy.after):
        np.testing.assert_array_equal(m0, m1)
        np.testing.assert_array_equal(v0, v1)
    # the last epoch's validation ran on the final weights: it is evaluate's (inference) loss
    assert history.history["val_loss"][-1] == pytest.approx(inference_loss(model, xv, yv), rel=1e-5)


def test_dropout_keeps_the_expected_value_and_scales_the_gradient_the_same_way():
    layer = Dropout(0.3, seed=5, dtype="float64")
    x = np.full((200, 500), 2.0)
    y = layer.forward(x, training=True)
    kept = y != 0
    # each unit is kept with probability 0.7 and then scaled by 1/0.7, so E[y] = x; the kept fraction
    # has standard deviation sqrt(0.3 * 0.7 / 1e5) = 0.0015 (5 of them allowed)
    assert abs(kept.mean() - 0.7) < 5 * np.sqrt(0.3 * 0.7 / x.size)
    assert abs(y.mean() - 2.0) < 2.0 / 0.7 * 5 * np.sqrt(0.3 * 0.7 / x.size)
    dy = np.random.default_rng(5).standard_normal(x.shape)
    dx = layer.backward(dy)
    # dL/dx = dy * mask / (1 - rate), up to the rounding of 1 / 0.7 and of the product (2 eps)
    np.testing.assert_allclose(dx, np.where(kept, dy / 0.7, 0.0), rtol=2 * np.finfo(np.float64).eps, atol=0)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)


@pytest.mark.parametrize("batch_size", [3, 7, 16])
def test_logged_means_weight_each_batch_by_its_size(batch_size):
    # 16 samples in batches of 3 (last 1), 7 (last 2) or 16: the logged loss and accuracy are the
    # means over samples, whatever the split; an unweighted mean of the batch means is not
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((16, 6)), rng.integers(0, 3, 16)
    model = bn_dropout_model(6)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    probs = model.predict(x, verbose=0)
    want_loss = float(-np.mean(np.log(np.clip(probs[np.arange(16), y], 1e-7, 1.0))))
    want_acc = float(np.mean(probs.argmax(axis=1) == y))
    loss, acc = model.evaluate(x, y, batch_size=batch_size, verbose=0)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    assert acc == pytest.approx(want_acc)
    frozen = Sequential([Input(shape=(6,)), Dense(3, activation="softmax")])
    frozen.compile(SGD(0.0), "sparse_categorical_crossentropy", ["accuracy"])   # lr 0: weights never move
    history = frozen.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    probs = frozen.predict(x, verbose=0)
    assert history.history["loss"][0] == pytest.approx(-np.mean(np.log(probs[np.arange(16), y])), rel=1e-5)
    assert history.history["accuracy"][0] == pytest.approx(np.mean(probs.argmax(axis=1) == y))


def printed_values(line):
    """``{name: float}`` of a progress line's ``name: value`` pairs."""
    return {k: float(v) for k, v in re.findall(r"(\w+): ([-+\d.e]+)", line)}


def final_bars(out):
    """The last complete bar ("k/k ...") of each epoch, whether the bar is redrawn in place (a terminal,
    or a process that imported ipykernel) or printed once at the end (a log file)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", out)
    epochs = [[]]
    for segment in re.split(r"[\r\n]", text):
        if segment.startswith("Epoch "):
            epochs.append([])
        elif re.match(r"^(\d+)/\1 ", segment) and ": " in segment:
            epochs[-1].append(segment)
    return [bars[-1] for bars in epochs if bars]


def assert_printed_matches(printed, logged):
    assert set(printed) == set(logged), (printed, logged)
    for name, value in logged.items():
        # four decimals, or four significant digits in e-notation for small values
        assert abs(printed[name] - value) <= 5e-5 * max(1.0, abs(value)) or (
            abs(printed[name] - value) <= 5e-4 * abs(value)), (name, printed[name], value)


@pytest.mark.parametrize("verbose", [1, 2])
def test_progress_numbers_are_the_history(capsys, verbose):
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((30, 6)), rng.integers(0, 3, 30)
    model = bn_dropout_model(7)
    history = model.fit(x, y, batch_size=7, epochs=2, validation_split=0.2, verbose=verbose)
    lines = final_bars(capsys.readouterr().out)
    assert len(lines) == 2
    for epoch, line in enumerate(lines):
        assert_printed_matches(printed_values(line), {k: v[epoch] for k, v in history.history.items()})


def test_evaluate_prints_what_it_returns(capsys):
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((11, 6)), rng.integers(0, 3, 11)
    model = bn_dropout_model(8)
    logs = model.evaluate(x, y, batch_size=4, verbose=1, return_dict=True)
    (line,) = final_bars(capsys.readouterr().out)
    assert_printed_matches(printed_values(line), logs)


# ----------------------------------------------------------------------------------------- 'same' padding
# An independent oracle for 'same' padding: TensorFlow's rule, worked out by hand for each row.
# out = ceil(n / s); total = max((out - 1) * s + (k - 1) * d + 1 - n, 0); before = total // 2 (the
# smaller half goes first, so an even kernel pads one more cell at the bottom / right).
# (n, k, s, d) -> (before, after)
SAME_PADS = {
    (5, 3, 1, 1): (1, 1),
    (5, 2, 1, 1): (0, 1),    # even kernel: the extra cell after
    (6, 4, 1, 1): (1, 2),
    (7, 3, 2, 1): (1, 1),
    (6, 3, 2, 1): (0, 1),    # stride 2 over an even size: one cell, after
    (8, 2, 2, 1): (0, 0),
    (7, 4, 3, 1): (1, 2),
    (10, 5, 3, 1): (2, 2),
    (11, 1, 2, 1): (0, 0),
    (4, 5, 1, 1): (2, 2),    # kernel larger than the input
    (1, 1, 1, 1): (0, 0),
    (5, 3, 1, 2): (2, 2),    # dilation 2: the kernel spans 5 cells
    (9, 2, 1, 3): (1, 2),    # spans 4
    (6, 2, 1, 2): (1, 1),    # spans 3
    (10, 3, 3, 2): (2, 2),
    (28, 3, 1, 1): (1, 1),
    (28, 2, 2, 1): (0, 0),
    (27, 2, 2, 1): (0, 1),
}


@pytest.mark.parametrize("n, k, s, d", list(SAME_PADS))
def test_same_padding_follows_the_hand_table(n, k, s, d):
    other = (6, 3, 2, 1)   # the other axis: a row of the table as well
    got = conv_padding("same", (n, other[0]), (k, other[1]), (s, other[2]), (d, other[3]))
    assert got == (SAME_PADS[(n, k, s, d)], SAME_PADS[other])
    before, after = SAME_PADS[(n, k, s, d)]
    assert (n + before + after - (k - 1) * d - 1) // s + 1 == -(-n // s)   # out = ceil(n / s)


@pytest.mark.parametrize("n, k, s, d", [c for c in SAME_PADS if c[0] > 1][:12])
def test_same_conv_matches_pytorch_padded_by_the_table(backend, n, k, s, d):
    """The PyTorch input is padded with the table's numbers, not with minicnn's own conv_padding."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    layer = Conv2D(2, (k, 2), strides=(s, 1), dilation_rate=(d, 1), padding="same", dtype="float64")
    x = rng.standard_normal((2, n, 5, 3))
    y = layer(x)
    (pt, pb), (pl, pr) = SAME_PADS[(n, k, s, d)], SAME_PADS[(5, 2, 1, 1)]
    xt = torch_pad(torch.from_numpy(to_torch_layout(x)), ((pt, pb), (pl, pr)))
    wt = torch.from_numpy(to_torch_layout(layer.params["kernel"], "conv_kernel"))
    yt = torch.nn.functional.conv2d(xt, wt, torch.tensor(layer.params["bias"]), stride=(s, 1), dilation=(d, 1))
    expected = from_torch_layout(yt)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12 * np.abs(x).sum())


def test_same_max_pooling_pads_by_the_table():
    # a window that reads a padded cell would see -inf; with the table's split, 'same' 2x2 stride 2
    # over 7 rows pads one row at the bottom only: the last output row is the max of row 6 alone
    x = np.arange(7 * 7, dtype=np.float64).reshape(1, 7, 7, 1)
    padding = conv_padding("same", (7, 7), (2, 2), (2, 2))
    assert padding == ((0, 1), (0, 1))
    y, _ = reference.maxpool2d_forward(x, (2, 2), (2, 2), padding)
    assert y.shape == (1, 4, 4, 1)
    np.testing.assert_array_equal(y[0, :, :, 0], [[8, 10, 12, 13], [22, 24, 26, 27], [36, 38, 40, 41], [43, 45, 47, 48]])
