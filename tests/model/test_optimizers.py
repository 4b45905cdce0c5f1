"""Optimizers: Keras's update formulas, PyTorch trajectories over 15 steps, in-place updates, config and state."""

import numpy as np
import pytest
from helpers import assert_within

from minicnn import optimizers
from minicnn.optimizers import SGD, Adam, RMSprop

STEPS = 15


class FakeLayer:
    """The part of the Layer contract an optimizer reads: name, trainable, params, grads."""

    def __init__(self, name, trainable=True, **params):
        self.name, self.trainable = name, trainable
        self.params = params
        self.grads = {k: np.zeros_like(v) for k, v in params.items()}


def objective_grad(w, c, t):
    """Gradient of sum(c/2 (w - t)**2 + sin(w)): depends on w, so trajectories can drift apart."""
    return c * (w - t) + np.cos(w)


def problem(seed):
    rng = np.random.default_rng(seed)
    shapes = {"kernel": (3, 4), "bias": (4,)}
    w0 = {k: rng.standard_normal(s) for k, s in shapes.items()}
    c = {k: rng.uniform(0.5, 2.0, s) for k, s in shapes.items()}
    t = {k: rng.standard_normal(s) for k, s in shapes.items()}
    return w0, c, t


def run_minicnn(opt, w0, c, t, steps=STEPS):
    layer = FakeLayer("dense", **{k: v.copy() for k, v in w0.items()})
    for _ in range(steps):
        for k, w in layer.params.items():
            layer.grads[k] = objective_grad(w, c[k], t[k])
        opt.apply_gradients([layer])
    return layer.params


def run_torch(torch, make_opt, w0, c, t, steps=STEPS):
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in w0.items()}
    opt = make_opt(list(params.values()))
    for _ in range(steps):
        opt.zero_grad()
        loss = sum((torch.tensor(c[k]) / 2 * (p - torch.tensor(t[k])) ** 2 + torch.sin(p)).sum() for k, p in params.items())
        loss.backward()
        opt.step()
    return {k: p.detach().numpy() for k, p in params.items()}


# Trajectories run in float64, where the point is the update formulas, not rounding. Each step is a handful
# of elementwise operations (no long sums) done in another order by PyTorch, a few ulps of the weights'
# magnitude per step; over 15 steps of these contracting problems (measured: at most 6 ulps for SGD and
# RMSprop) a few hundred ulps of max|w| is the budget. Adam with a negligible epsilon divides by sqrt(v_hat),
# so where a gradient passes near zero its update (~lr sign(g)) turns on a few-ulp difference of g: each
# such step may move a weight by ulps(g) * lr / sqrt(v_hat), measured up to ~300 ulps of max|w|; 4,096
# ulps leaves a margin while a wrong formula (a rate or beta off by 1e-3 relative) is off by 1e11 ulps.
ULPS = 256
ADAM_ULPS = 4096


def assert_close(ours, theirs, ulps=ULPS):
    """Each parameter within ``ulps`` float64 ulps of its largest magnitude (see above)."""
    for k in ours:
        tol = ulps * np.finfo(np.float64).eps * np.abs(theirs[k]).max()
        assert_within(f"param {k!r}", ours[k], theirs[k], tol, f"{ulps} float64 ulps of max|w|")


# ------------------------------------------------------------------------------------ PyTorch parity
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True), (0.5, True)])
def test_sgd_matches_torch_trajectory(momentum, nesterov):
    torch = pytest.importorskip("torch")
    w0, c, t = problem(1)
    ours = run_minicnn(SGD(learning_rate=0.05, momentum=momentum, nesterov=nesterov), w0, c, t)
    theirs = run_torch(torch, lambda p: torch.optim.SGD(p, lr=0.05, momentum=momentum, nesterov=nesterov), w0, c, t)
    assert_close(ours, theirs)


@pytest.mark.parametrize("lr,betas", [(0.01, (0.9, 0.999)), (0.1, (0.8, 0.99))])
def test_adam_matches_torch_trajectory(lr, betas):
    # Keras's epsilon-hat form equals PyTorch's when eps_keras = eps_torch * sqrt(1 - beta_2**t);
    # with a negligible epsilon on both sides the trajectories must agree to rounding.
    torch = pytest.importorskip("torch")
    w0, c, t = problem(2)
    ours = run_minicnn(Adam(learning_rate=lr, beta_1=betas[0], beta_2=betas[1], epsilon=1e-14), w0, c, t)
    theirs = run_torch(torch, lambda p: torch.optim.Adam(p, lr=lr, betas=betas, eps=1e-14), w0, c, t)
    assert_close(ours, theirs, ADAM_ULPS)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_rmsprop_matches_torch_trajectory(momentum):
    # Keras: lr g / sqrt(v + eps); PyTorch: lr g / (sqrt(v) + eps). Equal when eps is negligible.
    torch = pytest.importorskip("torch")
    w0, c, t = problem(3)
    ours = run_minicnn(RMSprop(learning_rate=0.01, rho=0.9, momentum=momentum, epsilon=1e-16), w0, c, t)
    theirs = run_torch(torch, lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-16, momentum=momentum), w0, c, t)
    assert_close(ours, theirs)


def test_adam_with_keras_epsilon_matches_torch_with_matched_epsilon():
    # One step from zero state: t = 1, so eps_torch = eps_keras / sqrt(1 - beta_2) reproduces Keras exactly.
    torch = pytest.importorskip("torch")
    w0, c, t = problem(4)
    eps = 1e-3   # large enough that its placement matters
    ours = run_minicnn(Adam(learning_rate=0.1, epsilon=eps), w0, c, t, steps=1)
    theirs = run_torch(torch, lambda p: torch.optim.Adam(p, lr=0.1, eps=eps / np.sqrt(1 - 0.999)), w0, c, t, steps=1)
    assert_close(ours, theirs)


# ------------------------------------------------------------------------------------ the formulas
def test_adam_formula_by_hand_over_ten_steps():
    """The Keras update written out independently; catches a missing step exponent in the bias correction."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal(6)
    grads = rng.standard_normal((10, 6))
    layer = FakeLayer("d", kernel=w.copy())
    opt = Adam(learning_rate=0.01)
    m = np.zeros(6)
    v = np.zeros(6)
    expected = w.copy()
    for t, g in enumerate(grads, start=1):
        layer.grads["kernel"] = g
        opt.apply_gradients([layer])
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g**2
        m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.999**t)
        expected -= 0.01 * m_hat / (np.sqrt(v_hat) + 1e-7 / np.sqrt(1 - 0.999**t))
    np.testing.assert_allclose(layer.params["kernel"], expected, rtol=1e-12)
    assert opt.iterations == 10


def test_adam_first_step_moves_each_weight_by_about_lr():
    layer = FakeLayer("d", kernel=np.zeros(5))
    layer.grads["kernel"] = np.array([3.0, -0.2, 50.0, -1e-3, 1.0])
    Adam(learning_rate=0.01).apply_gradients([layer])
    g = layer.grads["kernel"]
    np.testing.assert_allclose(layer.params["kernel"][[0, 1, 2, 4]], -0.01 * np.sign(g[[0, 1, 2, 4]]), rtol=1e-4)
    # Keras's epsilon acts like eps / sqrt(1 - beta_2) = 3.2e-6 at t=1: a 1e-3 gradient moves 0.3 % less.
    np.testing.assert_allclose(layer.params["kernel"], -0.01 * g / (np.abs(g) + 1e-7 / np.sqrt(0.001)), rtol=1e-12)


def test_rmsprop_keeps_epsilon_inside_the_square_root_as_keras():
    layer = FakeLayer("d", kernel=np.zeros(3))
    g = np.array([0.5, -1.0, 2.0])
    layer.grads["kernel"] = g
    RMSprop(learning_rate=0.1, rho=0.9, epsilon=1.0).apply_gradients([layer])
    v = 0.1 * g**2
    np.testing.assert_allclose(layer.params["kernel"], -0.1 * g / np.sqrt(v + 1.0), rtol=1e-12)


def test_sgd_momentum_keras_form_by_hand():
    layer = FakeLayer("d", kernel=np.array([1.0, -2.0]))
    opt = SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
    velocity = np.zeros(2)
    expected = layer.params["kernel"].copy()
    for g in ([1.0, 2.0], [0.5, -1.0], [-3.0, 0.25]):
        g = np.array(g)
        layer.grads["kernel"] = g
        opt.apply_gradients([layer])
        velocity = 0.9 * velocity - 0.1 * g
        expected += 0.9 * velocity - 0.1 * g
    np.testing.assert_allclose(layer.params["kernel"], expected, rtol=1e-14)


# ------------------------------------------------------------------------------------ mechanics
@pytest.mark.parametrize("make", [lambda: SGD(0.1), lambda: SGD(0.1, momentum=0.9), lambda: Adam(), lambda: RMSprop(momentum=0.5)])
def test_updates_are_in_place_and_keep_float32(make):
    rng = np.random.default_rng(6)
    kernel = rng.standard_normal((4, 3)).astype(np.float32)
    view = kernel[0]
    layer = FakeLayer("dense", kernel=kernel)
    layer.grads["kernel"] = rng.standard_normal((4, 3)).astype(np.float32)
    before = kernel.copy()
    opt = make()
    opt.apply_gradients([layer])
    assert layer.params["kernel"] is kernel
    assert kernel.dtype == np.float32
    assert not np.array_equal(kernel, before)
    np.testing.assert_array_equal(view, kernel[0])   # a view held elsewhere sees the update
    for slots in opt.slots.values():
        assert all(a.dtype == np.float32 for a in slots.values())


def test_float64_gradients_on_float32_weights_stay_float32():
    layer = FakeLayer("dense", kernel=np.ones(3, dtype=np.float32))
    layer.grads["kernel"] = np.array([1.0, 2.0, 3.0])   # float64
    Adam().apply_gradients([layer])
    assert layer.params["kernel"].dtype == np.float32


def test_state_is_keyed_by_layer_and_parameter_and_frozen_layers_are_skipped():
    a = FakeLayer("conv2d", kernel=np.ones((2, 2)), bias=np.ones(2))
    b = FakeLayer("dense", trainable=False, kernel=np.ones(3))
    for layer in (a, b):
        for k in layer.grads:
            layer.grads[k] = np.ones_like(layer.params[k])
    opt = Adam()
    opt.apply_gradients([a, b])
    assert sorted(opt.slots) == ["conv2d/bias", "conv2d/kernel"]
    assert sorted(opt.slots["conv2d/kernel"]) == ["m", "v"]
    np.testing.assert_array_equal(b.params["kernel"], np.ones(3))


def test_unknown_arguments_are_refused_like_keras():
    with pytest.raises(ValueError, match="Argument\\(s\\) not recognized"):
        Adam(lr=0.01)
    with pytest.raises(ValueError, match="Argument\\(s\\) not recognized"):
        SGD(decay=0.1)


@pytest.mark.parametrize("bad", [dict(learning_rate=-1.0), dict(learning_rate="fast"), dict(beta_1=1.0), dict(epsilon=-1.0)])
def test_bad_hyperparameters_raise(bad):
    with pytest.raises(ValueError):
        Adam(**bad)


def test_keras_defaults():
    adam, sgd, rms = Adam(), SGD(), RMSprop()
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (0.001, 0.9, 0.999, 1e-7)
    assert (sgd.learning_rate, sgd.momentum, sgd.nesterov) == (0.01, 0.0, False)
    assert (rms.learning_rate, rms.rho, rms.momentum, rms.epsilon) == (0.001, 0.9, 0.0, 1e-7)


def test_get_by_name_and_unknown_names_list_the_valid_ones():
    assert isinstance(optimizers.get("adam"), Adam)
    assert isinstance(optimizers.get("SGD"), SGD)
    assert isinstance(optimizers.get("rmsprop"), RMSprop)
    opt = Adam()
    assert optimizers.get(opt) is opt
    with pytest.raises(ValueError, match="adam.*rmsprop.*sgd"):
        optimizers.get("adamw")


def test_learning_rate_schedule_is_called_with_the_step():
    seen = []

    def schedule(step):
        seen.append(step)
        return 0.1 / (1 + step)

    layer = FakeLayer("d", kernel=np.zeros(1))
    layer.grads["kernel"] = np.ones(1)
    opt = SGD(learning_rate=schedule)
    for _ in range(3):
        opt.apply_gradients([layer])
    assert seen[:3] == [0, 1, 2]
    np.testing.assert_allclose(layer.params["kernel"], [-(0.1 + 0.05 + 0.1 / 3)])
    assert opt.learning_rate == pytest.approx(0.1 / 4)
    opt.learning_rate = 0.5   # a float replaces the schedule
    assert opt.learning_rate == 0.5


def test_clipping():
    layer = FakeLayer("d", kernel=np.zeros(2))
    layer.grads["kernel"] = np.array([3.0, 4.0])
    SGD(1.0, clipnorm=1.0).apply_gradients([layer])
    np.testing.assert_allclose(layer.params["kernel"], [-0.6, -0.8])
    layer = FakeLayer("d", kernel=np.zeros(2))
    layer.grads["kernel"] = np.array([3.0, -0.5])
    SGD(1.0, clipvalue=1.0).apply_gradients([layer])
    np.testing.assert_allclose(layer.params["kernel"], [-1.0, 0.5])


@pytest.mark.parametrize("opt", [Adam(0.003, beta_1=0.8), SGD(0.2, momentum=0.5, nesterov=True), RMSprop(0.01, rho=0.8, momentum=0.1)])
def test_config_round_trip(opt):
    again = optimizers.deserialize(optimizers.serialize(opt))
    assert type(again) is type(opt)
    assert again.get_config() == opt.get_config()


def test_state_round_trip_continues_identically():
    w0, c, t = problem(7)
    a = Adam(0.05)
    layer_a = FakeLayer("d", **{k: v.copy() for k, v in w0.items()})
    for _ in range(4):
        for k, w in layer_a.params.items():
            layer_a.grads[k] = objective_grad(w, c[k], t[k])
        a.apply_gradients([layer_a])
    b = Adam(0.05)
    b.set_state(a.get_state())
    layer_b = FakeLayer("d", **{k: v.copy() for k, v in layer_a.params.items()})
    for opt, layer in ((a, layer_a), (b, layer_b)):
        for _ in range(3):
            for k, w in layer.params.items():
                layer.grads[k] = objective_grad(w, c[k], t[k])
            opt.apply_gradients([layer])
    for k in layer_a.params:
        np.testing.assert_array_equal(layer_a.params[k], layer_b.params[k])
    assert b.iterations == 7


def test_bad_state_changes_nothing():
    opt = Adam()
    layer = FakeLayer("d", kernel=np.zeros(2))
    layer.grads["kernel"] = np.ones(2)
    opt.apply_gradients([layer])
    before = opt.get_state()
    with pytest.raises(ValueError, match="slots"):
        opt.set_state({"iterations": 3, "slots": {"d/kernel": {"m": np.zeros(2)}}})
    with pytest.raises(ValueError, match="iterations"):
        opt.set_state({"iterations": -1, "slots": {}})
    assert opt.iterations == before["iterations"] == 1
    np.testing.assert_array_equal(opt.slots["d/kernel"]["m"], before["slots"]["d/kernel"]["m"])
