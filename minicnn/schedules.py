"""Learning-rate schedules, as ``keras.optimizers.schedules``: a learning rate that changes with the step.

Pass one wherever a learning rate goes::

    from minicnn.schedules import ExponentialDecay
    opt = minicnn.optimizers.SGD(learning_rate=ExponentialDecay(0.1, decay_steps=1000, decay_rate=0.5))

A schedule is a function of the step number ``step``: the number of updates made so far, so the
first update uses ``schedule(0)`` (Keras passes ``optimizer.iterations``; so does
``minicnn.optimizers``). Steps count batches, not epochs. ``schedule(np.arange(n))`` returns all n
rates at once, handy for plotting a schedule before training.

Schedules are saved with the optimizer: ``serialize`` gives ``{"class_name", "module", "config"}``
(the form ``minicnn.optimizers.serialize`` stores) and ``deserialize``/``get`` rebuild them, from the
classes in ``SCHEDULES`` only.
"""

import math

import numpy as np


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check(cls, arg, value, ok, expected):
    if not _is_number(value) or not np.isfinite(value) or not ok(value):
        raise ValueError(f"{cls}: `{arg}` must be {expected}. Received: {arg}={value!r}")
    return value


def _plain(value):
    """A NumPy scalar as the Python number it holds (so that configs stay JSON-able)."""
    return value.item() if isinstance(value, np.generic) else value


def _steps(step):
    """``step`` as float64 (a scalar or an array of steps)."""
    step = np.asarray(step)
    if not (np.issubdtype(step.dtype, np.integer) or np.issubdtype(step.dtype, np.floating)):
        raise TypeError(f"A learning-rate schedule takes a step number. Received: step={step!r}")
    return step.astype(np.float64)


def _result(rate):
    """A Python float for one step, an array for an array of steps."""
    rate = np.asarray(rate, dtype=np.float64)
    return float(rate) if rate.ndim == 0 else rate


class LearningRateSchedule:
    """Base class: ``schedule(step) -> float``, ``get_config()``, ``from_config(config)``."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class ExponentialDecay(LearningRateSchedule):
    """Multiply the rate by ``decay_rate`` every ``decay_steps`` steps, smoothly or in stairs.

    Parameters
    ----------
    initial_learning_rate : float >= 0
    decay_steps : number > 0
    decay_rate : float > 0
    staircase : bool
        True: decay at whole multiples of ``decay_steps`` only.

    Notes
    -----
    ::

        lr(step) = initial_learning_rate * decay_rate ** (step / decay_steps)          (staircase=False)
        lr(step) = initial_learning_rate * decay_rate ** floor(step / decay_steps)     (staircase=True)

    PyTorch: ``ExponentialLR(gamma=decay_rate)`` is ``decay_steps=1``; ``StepLR(step_size=k, gamma)``
    is ``decay_steps=k, staircase=True`` (with one scheduler step per batch).
    """

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="ExponentialDecay"):
        cls = "ExponentialDecay"
        self.initial_learning_rate = float(_check(cls, "initial_learning_rate", initial_learning_rate, lambda v: v >= 0, "a number >= 0"))
        self.decay_steps = _plain(_check(cls, "decay_steps", decay_steps, lambda v: v > 0, "a number > 0"))
        self.decay_rate = float(_check(cls, "decay_rate", decay_rate, lambda v: v > 0, "a number > 0"))
        if not isinstance(staircase, (bool, np.bool_)):
            raise ValueError(f"{cls}: `staircase` must be True or False. Received: staircase={staircase!r}")
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        p = _steps(step) / self.decay_steps
        if self.staircase:
            p = np.floor(p)
        return _result(self.initial_learning_rate * self.decay_rate**p)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class CosineDecay(LearningRateSchedule):
    """Optional linear warmup, then half a cosine from the peak down to ``alpha * peak`` (Loshchilov & Hutter, 2017).

    Parameters
    ----------
    initial_learning_rate : float >= 0
        The rate at step 0 (the start of the warmup, or of the decay when there is none).
    decay_steps : number > 0
        Length of the cosine part.
    alpha : float in [0, 1]
        The final rate as a fraction of the peak.
    warmup_target : float >= 0 or None
        The peak reached after the warmup; None: no warmup, the decay starts from ``initial_learning_rate``.
    warmup_steps : int >= 0
        Length of the linear warmup (used only with a ``warmup_target``).

    Notes
    -----
    With ``peak = warmup_target`` (or ``initial_learning_rate`` without warmup), ``W = warmup_steps``
    (0 without warmup) and ``D = decay_steps``::

        lr(step) = initial_learning_rate + (peak - initial_learning_rate) * step / W      for step < W
        t        = min(step - W, D) / D                                                   otherwise
        lr(step) = peak * ((1 - alpha) * 0.5 * (1 + cos(pi * t)) + alpha)

    After ``W + D`` steps the rate stays at ``alpha * peak``. PyTorch's ``CosineAnnealingLR(T_max=D,
    eta_min=alpha * lr)`` is the same curve up to step D, and then climbs back up (a cosine has period 2D).
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None, warmup_steps=0):
        cls = "CosineDecay"
        self.initial_learning_rate = float(_check(cls, "initial_learning_rate", initial_learning_rate, lambda v: v >= 0, "a number >= 0"))
        self.decay_steps = _plain(_check(cls, "decay_steps", decay_steps, lambda v: v > 0, "a number > 0"))
        self.alpha = float(_check(cls, "alpha", alpha, lambda v: 0 <= v <= 1, "a number in [0, 1]"))
        if warmup_target is not None:
            warmup_target = float(_check(cls, "warmup_target", warmup_target, lambda v: v >= 0, "a number >= 0 or None"))
        if not isinstance(warmup_steps, (int, np.integer)) or isinstance(warmup_steps, (bool, np.bool_)) or warmup_steps < 0:
            raise ValueError(f"{cls}: `warmup_steps` must be an integer >= 0. Received: warmup_steps={warmup_steps!r}")
        self.warmup_target = warmup_target
        self.warmup_steps = int(warmup_steps)
        self.name = name

    def __call__(self, step):
        step = _steps(step)
        if self.warmup_target is None:
            peak, W = self.initial_learning_rate, 0
        else:
            peak, W = self.warmup_target, self.warmup_steps
        t = np.minimum(np.maximum(step - W, 0), self.decay_steps) / self.decay_steps
        decayed = peak * ((1 - self.alpha) * 0.5 * (1 + np.cos(math.pi * t)) + self.alpha)
        if W == 0:
            return _result(decayed)
        warming = self.initial_learning_rate + (peak - self.initial_learning_rate) * step / W
        return _result(np.where(step < W, warming, decayed))

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }


class PiecewiseConstantDecay(LearningRateSchedule):
    """A constant rate between boundaries: ``values[k]`` for steps in ``(boundaries[k-1], boundaries[k]]``.

    Parameters
    ----------
    boundaries : list of numbers, strictly increasing
    values : list of floats >= 0, one more than ``boundaries``

    Notes
    -----
    ::

        lr(step) = values[0]    for step <= boundaries[0]
                 = values[k]    for boundaries[k-1] < step <= boundaries[k]
                 = values[-1]   for step > boundaries[-1]

    A boundary step still uses the rate before it (Keras's rule). PyTorch's ``MultiStepLR`` changes
    the rate AT its milestones: ``MultiStepLR(milestones=[b + 1 for b in boundaries], gamma)`` is the
    same schedule when ``values`` fall geometrically by ``gamma``.
    """

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        cls = "PiecewiseConstantDecay"
        if not isinstance(boundaries, (list, tuple)) or not all(_is_number(b) and np.isfinite(b) for b in boundaries) or any(
            b >= a for b, a in zip(boundaries[:-1], boundaries[1:])
        ):
            raise ValueError(f"{cls}: `boundaries` must be a list of strictly increasing numbers. Received: boundaries={boundaries!r}")
        if not isinstance(values, (list, tuple)) or not all(_is_number(v) and np.isfinite(v) and v >= 0 for v in values):
            raise ValueError(f"{cls}: `values` must be a list of numbers >= 0. Received: values={values!r}")
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"{cls}: `values` must have one more entry than `boundaries`. "
                f"Received: len(boundaries)={len(boundaries)}, len(values)={len(values)}"
            )
        self.boundaries = [_plain(b) for b in boundaries]
        self.values = [float(v) for v in values]
        self.name = name

    def __call__(self, step):
        # side='left': the number of boundaries strictly below step, i.e. the index of its value
        k = np.searchsorted(np.asarray(self.boundaries, dtype=np.float64), _steps(step), side="left")
        return _result(np.asarray(self.values)[k])

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values), "name": self.name}


#: The closed registry of schedule classes a model file may name.
SCHEDULES = {cls.__name__: cls for cls in (ExponentialDecay, CosineDecay, PiecewiseConstantDecay)}


def serialize(schedule):
    """``{"class_name": ..., "module": "minicnn.schedules", "config": {...}}``, JSON-able.

    ``module`` is informative (and checked on load as a plain string); nothing is imported from it.
    """
    if type(schedule) not in SCHEDULES.values():
        raise ValueError(f"serialize expects one of {sorted(SCHEDULES)}. Received: {schedule!r}")
    return {"class_name": type(schedule).__name__, "module": __name__, "config": schedule.get_config()}


def deserialize(data):
    """Inverse of ``serialize``: only classes in ``SCHEDULES``; a ValueError for anything else."""
    from .registry import from_config, short

    if isinstance(data, dict) and data.get("module", __name__) != __name__:
        raise ValueError(f"Unknown learning-rate schedule {short(data)}: module must be {__name__!r}. "
                         f"Known: {sorted(SCHEDULES)}")
    return from_config(SCHEDULES, data, "learning-rate schedule")


def get(identifier):
    """A schedule from a schedule (returned as is) or a ``serialize`` dict."""
    if isinstance(identifier, LearningRateSchedule):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(
        f"Could not interpret learning-rate schedule. Expected a LearningRateSchedule or a dict from "
        f"serialize(). Received: {identifier!r}"
    )
