"""Learning-rate schedules: Keras's formulas, PyTorch's schedulers, config round trips, use in optimizers."""

import json
import math

import numpy as np
import pytest
from helpers import assert_value_error_names

from minicnn import schedules
from minicnn.schedules import CosineDecay, ExponentialDecay, PiecewiseConstantDecay

STEPS = np.arange(0, 40)


# ----------------------------------------------------------------------------------------
# 1. The formulas, step by step
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("staircase", [False, True])
def test_exponential_decay_formula(staircase):
    schedule = ExponentialDecay(0.1, decay_steps=7, decay_rate=0.5, staircase=staircase)
    for step in STEPS:
        p = math.floor(step / 7) if staircase else step / 7
        assert schedule(int(step)) == pytest.approx(0.1 * 0.5**p, rel=1e-15), f"step {step}"
    assert schedule(0) == 0.1 and isinstance(schedule(3), float)
    if staircase:
        assert schedule(6) == 0.1 and schedule(7) == 0.05   # the rate changes at multiples of decay_steps


@pytest.mark.parametrize("alpha", [0.0, 0.25])
def test_cosine_decay_formula_without_warmup(alpha):
    schedule = CosineDecay(0.2, decay_steps=20, alpha=alpha)
    for step in STEPS:
        t = min(step, 20) / 20
        expected = 0.2 * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * t)) + alpha)
        assert schedule(int(step)) == pytest.approx(expected, rel=1e-14, abs=1e-17), f"step {step}"
    assert schedule(0) == 0.2
    assert schedule(20) == pytest.approx(alpha * 0.2, abs=1e-17) == schedule(35)   # held at the floor


def test_cosine_decay_formula_with_warmup():
    schedule = CosineDecay(0.01, decay_steps=10, alpha=0.1, warmup_target=0.5, warmup_steps=5)
    for step in STEPS:
        if step < 5:
            expected = 0.01 + (0.5 - 0.01) * step / 5            # linear from the initial rate
        else:
            t = min(step - 5, 10) / 10
            expected = 0.5 * ((1 - 0.1) * 0.5 * (1 + math.cos(math.pi * t)) + 0.1)
        assert schedule(int(step)) == pytest.approx(expected, rel=1e-14), f"step {step}"
    assert schedule(5) == 0.5 and schedule(15) == pytest.approx(0.05) == schedule(30)


def test_piecewise_constant_boundaries_use_the_earlier_value():
    schedule = PiecewiseConstantDecay([3, 7], [1.0, 0.5, 0.1])
    expected = [1.0] * 4 + [0.5] * 4 + [0.1] * 4         # steps 0..3, 4..7, 8..11
    assert [schedule(s) for s in range(12)] == expected
    assert schedule(3.5) == 0.5 and schedule(10**9) == 0.1


@pytest.mark.parametrize(
    "schedule",
    [ExponentialDecay(1.0, 3, 0.9), CosineDecay(1.0, 30, warmup_target=2.0, warmup_steps=4),
     PiecewiseConstantDecay([2.5, 10], [3.0, 2.0, 1.0])],
    ids=lambda s: type(s).__name__,
)
def test_a_schedule_takes_an_array_of_steps(schedule):
    rates = schedule(STEPS)
    assert isinstance(rates, np.ndarray) and rates.shape == STEPS.shape
    np.testing.assert_allclose(rates, [schedule(int(s)) for s in STEPS], rtol=1e-15)   # SIMD pow: 1 ulp
    assert schedule(np.int64(4)) == schedule(4)   # what an optimizer's counter may be


# ----------------------------------------------------------------------------------------
# 2. PyTorch's schedulers, one scheduler step per batch
# ----------------------------------------------------------------------------------------


def torch_rates(make_scheduler, lr, steps):
    """The learning rate torch's optimizer uses at steps 0 .. steps-1."""
    torch = pytest.importorskip("torch")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(torch.optim.lr_scheduler, optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(rates)


def test_exponential_decay_matches_torch_exponential_lr():
    expected = torch_rates(lambda s, o: s.ExponentialLR(o, gamma=0.9), 0.1, 40)
    np.testing.assert_allclose(ExponentialDecay(0.1, decay_steps=1, decay_rate=0.9)(STEPS), expected, rtol=1e-12)


def test_staircase_exponential_decay_matches_torch_step_lr():
    expected = torch_rates(lambda s, o: s.StepLR(o, step_size=6, gamma=0.5), 0.1, 40)
    np.testing.assert_allclose(ExponentialDecay(0.1, 6, 0.5, staircase=True)(STEPS), expected, rtol=1e-14)


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_cosine_decay_matches_torch_cosine_annealing_up_to_decay_steps(alpha):
    # torch's CosineAnnealingLR keeps following the cosine (back up) after T_max; Keras holds the floor
    expected = torch_rates(lambda s, o: s.CosineAnnealingLR(o, T_max=25, eta_min=alpha * 0.3), 0.3, 26)
    np.testing.assert_allclose(CosineDecay(0.3, 25, alpha=alpha)(np.arange(26)), expected, rtol=1e-10, atol=1e-15)


def test_cosine_decay_with_warmup_matches_torch_linear_then_cosine():
    warmup, decay, peak, start = 5, 20, 0.4, 0.04

    def make(s, o):
        return s.SequentialLR(
            o,
            [s.LinearLR(o, start_factor=start / peak, end_factor=1.0, total_iters=warmup),
             s.CosineAnnealingLR(o, T_max=decay, eta_min=0.1 * peak)],
            milestones=[warmup],
        )

    expected = torch_rates(make, peak, warmup + decay + 1)
    ours = CosineDecay(start, decay, alpha=0.1, warmup_target=peak, warmup_steps=warmup)(np.arange(warmup + decay + 1))
    np.testing.assert_allclose(ours, expected, rtol=1e-10)


def test_piecewise_constant_matches_torch_multistep_one_step_later():
    # Keras: a boundary step keeps the earlier value; MultiStepLR changes AT a milestone
    expected = torch_rates(lambda s, o: s.MultiStepLR(o, milestones=[11, 26], gamma=0.5), 0.2, 40)
    ours = PiecewiseConstantDecay([10, 25], [0.2, 0.1, 0.05])(STEPS)
    np.testing.assert_allclose(ours, expected, rtol=1e-15)


# ----------------------------------------------------------------------------------------
# 3. Config, serialization and use in an optimizer
# ----------------------------------------------------------------------------------------

SCHEDULES = [
    lambda: ExponentialDecay(0.1, 100, 0.96, staircase=True),
    lambda: ExponentialDecay(1e-3, np.int64(10), np.float32(0.5), name="exp"),
    lambda: CosineDecay(0.1, 1000),
    lambda: CosineDecay(0.0, 50.5, alpha=0.2, warmup_target=0.1, warmup_steps=10),
    lambda: PiecewiseConstantDecay([100, 200], [0.1, 0.01, 0.001]),
]


@pytest.mark.parametrize("make", SCHEDULES)
def test_config_round_trip(make):
    schedule = make()
    data = json.loads(json.dumps(schedules.serialize(schedule)))
    assert data["module"] == "minicnn.schedules"
    clone = schedules.deserialize(data)
    assert type(clone) is type(schedule) and clone.get_config() == schedule.get_config()
    assert type(schedule).from_config(schedule.get_config()).get_config() == schedule.get_config()
    np.testing.assert_array_equal(clone(np.arange(0, 2000, 37)), schedule(np.arange(0, 2000, 37)))
    assert schedules.get(data).get_config() == schedule.get_config() and schedules.get(schedule) is schedule
    assert type(schedule).__name__ in repr(schedule)


def test_unknown_schedules_are_refused():
    with pytest.raises(ValueError, match="Unknown learning-rate schedule"):
        schedules.deserialize({"class_name": "Os", "config": {}})
    with pytest.raises(ValueError, match="Unknown learning-rate schedule"):
        schedules.deserialize({"class_name": "CosineDecay", "module": "os", "config": {}})
    with pytest.raises(ValueError, match="LearningRateSchedule"):
        schedules.get("cosine")
    with pytest.raises(TypeError, match="step number"):
        ExponentialDecay(0.1, 10, 0.5)("3")


def test_an_optimizer_follows_saves_and_reloads_a_schedule():
    optimizers = pytest.importorskip("minicnn.optimizers")
    assert optimizers.schedules is schedules        # minicnn.optimizers.schedules.CosineDecay, as in Keras

    class Layer:   # the smallest thing an optimizer updates: one parameter, gradient 1
        name, trainable = "layer", True
        params = {"w": np.zeros(1)}
        grads = {"w": np.ones(1)}

    schedule = PiecewiseConstantDecay([1, 3], [1.0, 0.1, 0.01])
    optimizer = optimizers.SGD(learning_rate=schedule)
    layer = Layer()
    for _ in range(5):   # the update at step k uses schedule(k), k = 0, 1, 2, ...
        optimizer.apply_gradients([layer])
    assert layer.params["w"][0] == pytest.approx(-(1.0 + 1.0 + 0.1 + 0.1 + 0.01))
    data = json.loads(json.dumps(optimizers.serialize(optimizer)))
    clone = optimizers.deserialize(data)
    assert clone._learning_rate.get_config() == schedule.get_config()
    clone.iterations = 5
    assert clone.learning_rate == optimizer.learning_rate == 0.01


INVALID = [
    (lambda: ExponentialDecay(-0.1, 10, 0.5), "ExponentialDecay", "initial_learning_rate", "initial_learning_rate=-0.1"),
    (lambda: ExponentialDecay(0.1, 0, 0.5), "ExponentialDecay", "decay_steps", "decay_steps=0"),
    (lambda: ExponentialDecay(0.1, 10, 0), "ExponentialDecay", "decay_rate", "decay_rate=0"),
    (lambda: ExponentialDecay(0.1, 10, 0.5, staircase="yes"), "ExponentialDecay", "staircase", "staircase='yes'"),
    (lambda: CosineDecay("0.1", 10), "CosineDecay", "initial_learning_rate", "initial_learning_rate='0.1'"),
    (lambda: CosineDecay(0.1, -5), "CosineDecay", "decay_steps", "decay_steps=-5"),
    (lambda: CosineDecay(0.1, 10, alpha=1.5), "CosineDecay", "alpha", "alpha=1.5"),
    (lambda: CosineDecay(0.1, 10, warmup_target=-1), "CosineDecay", "warmup_target", "warmup_target=-1"),
    (lambda: CosineDecay(0.1, 10, warmup_steps=2.5), "CosineDecay", "warmup_steps", "warmup_steps=2.5"),
    (lambda: PiecewiseConstantDecay([5, 3], [1, 2, 3]), "PiecewiseConstantDecay", "boundaries", r"boundaries=\[5, 3\]"),
    (lambda: PiecewiseConstantDecay([5], [1, -2]), "PiecewiseConstantDecay", "values", r"values=\[1, -2\]"),
    (lambda: PiecewiseConstantDecay([5], [1]), "PiecewiseConstantDecay", "values", "len.values.=1"),
]


@pytest.mark.parametrize("make,cls,arg,received", INVALID)
def test_invalid_arguments_raise_naming_class_argument_and_value(make, cls, arg, received):
    assert_value_error_names(make, cls, arg, received)
