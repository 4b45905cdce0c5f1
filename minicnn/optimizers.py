"""Optimizers: turn the gradients in ``layer.grads`` into updates of ``layer.params``.

Each optimizer's update is a few lines of NumPy in ``update``, with the formula in its docstring,
written in Keras's form so that numbers match Keras step for step. All updates happen in place
(``w -= ...``), so any view of a weight array a learner holds stays valid, and float32 stays float32.

The optimizer owns all its state: the step counter ``iterations`` and, for every parameter,
the "slots" it needs (Adam's moments ``m`` and ``v``, SGD's ``momentum``), keyed by
``"layer_name/param_name"``::

    opt = Adam(learning_rate=1e-3)
    opt.apply_gradients(model.layers)       # one step for every trainable layer
    opt.slots["dense/kernel"]["m"]          # Adam's first moment of that kernel

``learning_rate`` is a float or a schedule: any callable of the step number (0, 1, 2, ...).
"""

import math

import numpy as np

from . import kernels


class Optimizer:
    """Base class: the step counter, learning-rate handling, gradient clipping and the state.

    Parameters
    ----------
    learning_rate : float >= 0, or callable ``step -> float``
    clipnorm : float or None
        Rescale each gradient whose L2 norm exceeds this value to that norm.
    clipvalue : float or None
        Clip each gradient element to ``[-clipvalue, clipvalue]``.
    global_clipnorm : float or None
        Rescale all gradients together when their joint L2 norm exceeds this value.
    name : str or None
    """

    #: Per-parameter arrays this optimizer keeps (created as zeros on the first step).
    slot_names = ()

    def __init__(self, learning_rate, clipnorm=None, clipvalue=None, global_clipnorm=None, name=None, **kwargs):
        if kwargs:
            raise ValueError(
                f"Argument(s) not recognized: {kwargs}. {type(self).__name__} accepts: "
                f"{', '.join(self._argument_names())}"
            )
        for arg, value in (("clipnorm", clipnorm), ("clipvalue", clipvalue), ("global_clipnorm", global_clipnorm)):
            if value is not None and not (_is_number(value) and value > 0):
                raise ValueError(f"{type(self).__name__}: `{arg}` must be a positive number or None. Received: {arg}={value!r}")
        if clipnorm is not None and global_clipnorm is not None:
            raise ValueError(f"{type(self).__name__}: pass only one of `clipnorm` and `global_clipnorm`.")
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.name = name or type(self).__name__.lower()
        self.learning_rate = learning_rate
        self.iterations = 0
        self.slots = {}

    @classmethod
    def _argument_names(cls):
        import inspect

        names = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
        return names + [p for p in ("clipnorm", "clipvalue", "global_clipnorm", "name") if p not in names]

    # ----------------------------------------------------------------- learning rate
    @property
    def learning_rate(self):
        """The learning rate of the next step, as a float (a schedule is evaluated at ``iterations``)."""
        lr = self._learning_rate
        return float(lr(self.iterations)) if callable(lr) else lr

    @learning_rate.setter
    def learning_rate(self, value):
        if not callable(value):
            if not _is_number(value) or not np.isfinite(value) or value < 0:
                raise ValueError(
                    f"{type(self).__name__}: `learning_rate` must be a number >= 0 or a schedule "
                    f"(a callable of the step). Received: learning_rate={value!r}"
                )
            value = float(value)
        self._learning_rate = value

    @property
    def built(self):
        """True once the first step has created the slots."""
        return self.iterations > 0 or bool(self.slots)

    # ----------------------------------------------------------------- one step
    def apply_gradients(self, layers):
        """Update every trainable layer's ``params`` from its ``grads``, then count one step."""
        layers = [layer for layer in layers if getattr(layer, "trainable", True) and layer.params]
        lr = self.learning_rate
        grads = self._clip([[layer.grads[k] for k in layer.params] for layer in layers])
        for layer, layer_grads in zip(layers, grads):
            for (name, w), g in zip(layer.params.items(), layer_grads):
                slots = self._slots_for(f"{layer.name}/{name}", w)
                self.update(w, g, slots, lr, self.iterations + 1)
        self.iterations += 1

    def update(self, w, g, slots, lr, t):
        """Change ``w`` in place given its gradient ``g``, its ``slots``, the rate and step ``t`` (from 1)."""
        raise NotImplementedError

    def _slots_for(self, key, w):
        slots = self.slots.get(key)
        if slots is None or any(a.shape != w.shape for a in slots.values()):
            # first step, or a layer of that name was replaced by one of another shape (pop + add)
            slots = self.slots[key] = {name: np.zeros_like(w) for name in self.slot_names}
        return slots

    def _clip(self, grads):
        if self.clipvalue is not None:
            grads = [[np.clip(g, -self.clipvalue, self.clipvalue) for g in gs] for gs in grads]
        if self.clipnorm is not None:
            grads = [[g * min(1.0, self.clipnorm / max(float(np.linalg.norm(g)), 1e-30)) for g in gs] for gs in grads]
        if self.global_clipnorm is not None:
            norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for gs in grads for g in gs))
            if norm > self.global_clipnorm:
                grads = [[g * (self.global_clipnorm / norm) for g in gs] for gs in grads]
        return grads

    # ----------------------------------------------------------------- config and state
    def get_config(self):
        """JSON-able constructor arguments (a schedule is stored by ``serialize``, not here)."""
        config = {"name": self.name, "learning_rate": self.learning_rate}
        for arg in ("clipnorm", "clipvalue", "global_clipnorm"):
            if getattr(self, arg) is not None:
                config[arg] = getattr(self, arg)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def get_state(self):
        """``{"iterations": int, "slots": {"layer/param": {"m": array, ...}}}`` (copies)."""
        return {
            "iterations": self.iterations,
            "slots": {key: {k: v.copy() for k, v in slots.items()} for key, slots in self.slots.items()},
        }

    def set_state(self, state):
        """Restore what ``get_state`` returned (checked first: nothing changes on a bad state)."""
        iterations = state.get("iterations", 0)
        if not isinstance(iterations, (int, np.integer)) or isinstance(iterations, bool) or iterations < 0:
            raise ValueError(f"{type(self).__name__}: `iterations` must be an integer >= 0. Received: {iterations!r}")
        slots = {}
        for key, arrays in state.get("slots", {}).items():
            if set(arrays) != set(self.slot_names):
                raise ValueError(
                    f"{type(self).__name__}: slots of {key!r} must be {sorted(self.slot_names)}. Received: {sorted(arrays)}"
                )
            slots[key] = {k: np.array(v, copy=True) for k, v in arrays.items()}
        self.iterations = int(iterations)
        self.slots = slots

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum, in Keras's form.

    ::

        momentum == 0:   w -= lr * g
        momentum > 0:    v = momentum * v - lr * g
                         w += v                                  (nesterov=False)
                         w += momentum * v - lr * g              (nesterov=True)

    With a constant learning rate this is PyTorch's ``torch.optim.SGD`` (which keeps
    ``b = momentum * b + g`` and steps ``w -= lr * b``): here ``v = -lr * b``.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kwargs):
        if not _is_number(momentum) or not 0 <= momentum <= 1:
            raise ValueError(f"SGD: `momentum` must be a number in [0, 1]. Received: momentum={momentum!r}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.slot_names = ("momentum",) if self.momentum > 0 else ()
        super().__init__(learning_rate, **kwargs)

    def update(self, w, g, slots, lr, t):
        if self.momentum == 0:
            w -= lr * g
            return
        v = slots["momentum"]
        v *= self.momentum
        v -= lr * g
        if self.nesterov:
            w += self.momentum * v - lr * g
        else:
            w += v

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class RMSprop(Optimizer):
    """RMSprop: divide each step by a running root-mean-square of recent gradients (Keras's form).

    ::

        v = rho * v + (1 - rho) * g**2
        step = lr * g / sqrt(v + epsilon)
        w -= step                              (momentum == 0)
        mom = momentum * mom + step;  w -= mom   (momentum > 0)

    Keras puts ``epsilon`` inside the square root; PyTorch's ``torch.optim.RMSprop`` adds it outside
    (``sqrt(v) + eps``, default 1e-8). The two agree to rounding when ``epsilon`` is tiny against ``v``.
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, **kwargs):
        if not _is_number(rho) or not 0 <= rho < 1:
            raise ValueError(f"RMSprop: `rho` must be a number in [0, 1). Received: rho={rho!r}")
        if not _is_number(momentum) or not 0 <= momentum <= 1:
            raise ValueError(f"RMSprop: `momentum` must be a number in [0, 1]. Received: momentum={momentum!r}")
        if not _is_number(epsilon) or epsilon < 0:
            raise ValueError(f"RMSprop: `epsilon` must be a number >= 0. Received: epsilon={epsilon!r}")
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.slot_names = ("velocity", "momentum") if self.momentum > 0 else ("velocity",)
        super().__init__(learning_rate, **kwargs)

    def update(self, w, g, slots, lr, t):
        v = slots["velocity"]
        v *= self.rho
        v += (1 - self.rho) * g * g
        step = lr * g / np.sqrt(v + self.epsilon)
        if self.momentum > 0:
            mom = slots["momentum"]
            mom *= self.momentum
            mom += step
            step = mom
        w -= step

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) in Keras's "epsilon hat" form, with the step ``t`` counted from 1.

    ::

        m += (g - m) * (1 - beta_1)                      # m = beta_1 m + (1 - beta_1) g
        v += (g**2 - v) * (1 - beta_2)                   # v = beta_2 v + (1 - beta_2) g**2
        alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        w -= alpha * m / (sqrt(v) + epsilon)

    The bias corrections are folded into ``alpha``. PyTorch's ``torch.optim.Adam`` instead steps
    ``lr * m_hat / (sqrt(v_hat) + eps)``; both are the same update when
    ``epsilon_keras = eps_torch * sqrt(1 - beta_2**t)``, so they differ only in how much epsilon
    matters early on (and PyTorch's default eps is 1e-8, Keras's 1e-7).
    """

    slot_names = ("m", "v")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        for arg, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not _is_number(value) or not 0 <= value < 1:
                raise ValueError(f"Adam: `{arg}` must be a number in [0, 1). Received: {arg}={value!r}")
        if not _is_number(epsilon) or epsilon < 0:
            raise ValueError(f"Adam: `epsilon` must be a number >= 0. Received: epsilon={epsilon!r}")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        super().__init__(learning_rate, **kwargs)

    def update(self, w, g, slots, lr, t):
        alpha = lr * math.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        # the three lines of the docstring, in one pass over memory with the Numba backend
        kernels.adam_update(w, g, slots["m"], slots["v"], alpha, self.beta_1, self.beta_2, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


#: The closed registry of optimizer classes a model file may name.
OPTIMIZERS = {cls.__name__: cls for cls in (SGD, RMSprop, Adam)}


def get(identifier):
    """An Optimizer from a name (``'adam'``, ``'sgd'``, ``'rmsprop'``), a saved config, or an Optimizer."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    by_name = {name.lower(): cls for name, cls in OPTIMIZERS.items()}
    if isinstance(identifier, str) and identifier.lower() in by_name:
        return by_name[identifier.lower()]()
    raise ValueError(
        f"Unknown optimizer. Expected one of {sorted(by_name)} or a minicnn.optimizers.Optimizer. "
        f"Received: optimizer={identifier!r}"
    )


def serialize(optimizer):
    """``{"class_name": "Adam", "config": {...}}``, JSON-able.

    A learning-rate schedule from ``minicnn.schedules.SCHEDULES`` is stored as its ``serialize``
    dict; any other callable is stored as its current value (with a warning).
    """

    config = optimizer.get_config()
    lr = optimizer._learning_rate
    if callable(lr):
        if type(lr) in schedules.SCHEDULES.values():
            config["learning_rate"] = schedules.serialize(lr)
        else:
            import warnings

            warnings.warn(
                f"The learning-rate schedule {lr!r} cannot be saved; storing its current value "
                f"{config['learning_rate']} instead.",
                stacklevel=3,
            )
    return {"class_name": type(optimizer).__name__, "config": config}


def deserialize(data):
    """Inverse of ``serialize``: only classes in ``OPTIMIZERS`` and ``schedules.SCHEDULES``.

    Nothing named in ``data`` is imported or called; anything else is a ValueError.
    """
    from .registry import from_config

    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        lr = data["config"].get("learning_rate")
        if isinstance(lr, dict):   # a schedule, from its own registry
            data = {**data, "config": {**data["config"], "learning_rate": schedules.deserialize(lr)}}
    return from_config(OPTIMIZERS, data, "optimizer")


from . import schedules  # noqa: E402, F401  (minicnn.optimizers.schedules.ExponentialDecay, as in Keras)
