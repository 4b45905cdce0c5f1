"""A whole model's loss and gradients: finite differences (``check_gradients``), PyTorch's autograd on
the same network (loss, every gradient, an SGD step, twelve Adam steps), and the first layer's input
gradient, skipped only inside a training step."""

import numpy as np
import pytest
from helpers import assert_within
from small_models import EPS64, FLOAT64_REL, assert_unchanged, snapshot, trained
from torch_layout import copy_weights, flatten_like_keras, module_weights, to_torch_layout

import minicnn
from minicnn import losses
from minicnn.layers import Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D
from minicnn.models import Sequential
from minicnn.optimizers import SGD, Adam
from minicnn.utils import to_categorical

pytestmark = pytest.mark.usefixtures("default_settings")


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


def _torch_twin(torch, model):
    """The same CNN in PyTorch with our weights (their layouts: tests/torch_layout.py)."""
    conv1, _, conv2, _, dense1, dense2 = model.layers
    nn = torch.nn
    net = nn.ModuleDict({
        "conv1": nn.Conv2d(2, 3, 3, padding=1), "conv2": nn.Conv2d(3, 4, 3),
        "dense1": nn.Linear(36, 6), "dense2": nn.Linear(6, 4),
    }).double()
    names = ("conv1", "conv2", "dense1", "dense2")
    for name, layer in zip(names, (conv1, conv2, dense1, dense2)):
        copy_weights(net[name], layer.params["kernel"], layer.params["bias"])

    def loss_fn(x, y_onehot):
        h = torch.from_numpy(to_torch_layout(x))
        h = torch.nn.functional.max_pool2d(torch.relu(net["conv1"](h)), 2)
        h = flatten_like_keras(torch.relu(net["conv2"](h)))
        z = net["dense2"](torch.relu(net["dense1"](h)))
        return -(torch.from_numpy(y_onehot) * torch.log_softmax(z, dim=1)).sum(1).mean()

    def grads_as_ours():
        return [a for name in names for a in module_weights(net[name], grad=True)]

    def weights_as_ours():
        return [a for name in names for a in module_weights(net[name])]

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


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_training_step_skips_the_first_layers_input_gradient_and_nothing_else(backend):
    old = minicnn.get_backend()
    minicnn.set_backend(backend)
    try:
        minicnn.utils.set_random_seed(7)
        model = Sequential([Input(shape=(10, 10, 1)), Conv2D(4, 3, activation="relu"), MaxPooling2D(2),
                            Flatten(), Dense(8, activation="relu"), Dense(3, activation="softmax")])
        model.compile(optimizer=SGD(0.0), loss="sparse_categorical_crossentropy")
        rng = np.random.default_rng(7)
        x, y = rng.standard_normal((5, 10, 10, 1)), rng.integers(0, 3, 5)
        model.compute_gradients(x, y)   # the full backward pass
        full = [g.copy() for layer in model.layers for g in layer.grads.values()]
        assert all(layer.needs_input_gradient for layer in model.layers)
        seen = {}
        for layer in model.layers:   # record each layer's flag while its backward runs
            def spy(dz, layer=layer, inner=layer._backward):
                seen[layer.name] = layer.needs_input_gradient
                return inner(dz)
            layer._backward = spy
        model.train_on_batch(x, y)   # lr 0: the weights stay, the gradients are recomputed
        assert [seen[layer.name] for layer in model.layers] == [False] + [True] * (len(model.layers) - 1)
        assert all(layer.needs_input_gradient for layer in model.layers)   # restored after the step
        for a, b in zip(full, (g for layer in model.layers for g in layer.grads.values())):
            np.testing.assert_array_equal(a, b)
    finally:
        minicnn.set_backend(old)
