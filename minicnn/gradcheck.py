"""Numerical gradient checks: is a hand-written backward right?

The idea (CS231n's gradient check in vector-Jacobian form): pick a random ``dy`` and define the
scalar ``L(x) = sum(f(x) * dy)``. Then ``dL/dx`` is exactly what ``backward(dy)`` must return, and
central differences estimate it independently::

    dL/dx[i] ~= (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)          error O(eps**2)

Run checks in float64: with ``eps = 1e-5`` the estimate is good to ~1e-10 there, while float32
rounding alone would swamp it. Compare with ``rel_error``; below 1e-7 means the backward is right.

Example
-------
>>> import numpy as np, minicnn
>>> layer = minicnn.layers.Conv2D(4, 3, padding="same", dtype="float64")
>>> x = np.random.default_rng(0).standard_normal((2, 5, 5, 3))
>>> print(minicnn.gradcheck.check_layer(layer, x))      # doctest: +SKIP
array    shape          rel_error   ok
input    (2, 5, 5, 3)   3.1e-11     yes
kernel   (3, 3, 3, 4)   2.4e-11     yes
bias     (4,)           1.9e-12     yes
"""

import contextlib

import numpy as np

TOLERANCE = 1e-7
#: Gradients whose norms add up to less than this are zero up to rounding (e.g. a conv bias feeding
#: BatchNormalization): their rel_error would compare noise with noise, so the absolute error is used.
ZERO_NORM = 1e-9


def rel_error(a, b):
    """``||a - b|| / (||a|| + ||b||)``: scale-free, 0 for equal arrays, 1 for opposite ones."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def _gradient_error(analytic, numeric):
    """rel_error, or the absolute error when both gradients are zero up to rounding (see ZERO_NORM)."""
    a, b = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    if np.linalg.norm(a) + np.linalg.norm(b) < ZERO_NORM:
        return float(np.linalg.norm(a - b))
    return rel_error(a, b)


def numerical_gradient(f, x, eps=1e-5):
    """Central-difference gradient of the scalar function ``f()`` with respect to array ``x``.

    ``x`` is changed in place, one element at a time, and restored; ``f`` must read it.
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    for _ in it:
        i = it.multi_index
        old = x[i].copy()
        x[i] = old + eps
        plus = f()
        x[i] = old - eps
        minus = f()
        x[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad


class GradcheckReport:
    """One row per checked array: name, shape, relative error between analytic and numerical."""

    def __init__(self, title, rows, tolerance=TOLERANCE):
        self.title = title
        self.rows = rows   # list of (name, shape, rel_error)
        self.tolerance = tolerance

    @property
    def max_error(self):
        return max((r[2] for r in self.rows), default=0.0)

    @property
    def ok(self):
        return self.max_error < self.tolerance

    def errors(self):
        """``{name: rel_error}``."""
        return {name: err for name, _, err in self.rows}

    def __str__(self):
        width = max([len("array")] + [len(r[0]) for r in self.rows])
        lines = [f"{self.title}  (pass: rel_error < {self.tolerance:.0e})", f"{'array':<{width}}  {'shape':<18}  {'rel_error':>9}  ok"]
        for name, shape, err in self.rows:
            lines.append(f"{name:<{width}}  {str(tuple(shape)):<18}  {err:>9.1e}  {'yes' if err < self.tolerance else 'NO'}")
        return "\n".join(lines)

    __repr__ = __str__


@contextlib.contextmanager
def _frozen_randomness(layers):
    """Replay the same random draws (Dropout masks, augmentation) on every forward pass."""
    states = [(layer, layer._rng.bit_generator.state) for layer in layers if hasattr(layer, "_rng")]

    def rewind():
        for layer, state in states:
            layer._rng.bit_generator.state = state

    yield rewind
    rewind()


def check_layer(layer, x, dy=None, eps=1e-5, training=True, seed=0, tolerance=TOLERANCE):
    """Check ``layer.backward`` against central differences for the input and every parameter.

    Parameters
    ----------
    layer : Layer
        Built or not; for meaningful numbers its dtype should be float64.
    x : ndarray, the input batch (converted to the layer's dtype).
    dy : ndarray or None
        Upstream gradient; random normal (from ``seed``) if None.
    training : bool
        Passed to ``forward``; random layers replay the same mask in every evaluation.

    Returns
    -------
    GradcheckReport
        Rows ``input`` and one per ``layer.params`` key; print it for a table.
    """
    if not layer.built:
        layer.build((None,) + np.shape(x)[1:])
    x = np.array(x, dtype=layer.dtype)
    with _frozen_randomness([layer]) as rewind:
        y = layer.forward(x, training=training)
        if dy is None:
            dy = np.random.default_rng(seed).standard_normal(y.shape).astype(layer.dtype)
        dx = layer.backward(dy)
        analytic = {"input": dx, **{k: g.copy() for k, g in layer.grads.items()}}

        def loss():
            rewind()
            return float(np.sum(layer.forward(x, training=training) * dy))

        rows = [("input", x.shape, _gradient_error(dx, numerical_gradient(loss, x, eps)))]
        for name, param in layer.params.items():
            rows.append((name, param.shape, _gradient_error(analytic[name], numerical_gradient(loss, param, eps))))
    return GradcheckReport(f"gradient check of layer '{layer.name}' ({type(layer).__name__})", rows, tolerance)


def check_model(model, x, y, eps=1e-5, max_elements=None, seed=0, tolerance=TOLERANCE):
    """Check a compiled model's full backward pass (loss included) for every parameter of every layer.

    The loss is the compiled loss on ``(x, y)``, with training-mode behaviour and random layers
    replaying the same draws. ``max_elements`` limits each parameter to that many randomly chosen
    entries (the blog's 50M-weight Dense layer would otherwise take hours).

    Returns
    -------
    GradcheckReport with one row ``layer/param`` per parameter.
    """
    rng = np.random.default_rng(seed)
    with _frozen_randomness(model.layers) as rewind:
        rewind()
        model.compute_gradients(x, y)
        analytic = {(layer.name, k): g.copy() for layer in model.layers for k, g in layer.grads.items()}

        def loss():
            rewind()
            return model.compute_loss(x, y, training=True)

        rows = []
        for layer in model.layers:
            for name, param in layer.params.items():
                flat_idx = np.arange(param.size)
                if max_elements is not None and param.size > max_elements:
                    flat_idx = rng.choice(param.size, max_elements, replace=False)
                numeric = np.empty(len(flat_idx))
                flat = param.reshape(-1)   # a view: numerical_gradient's edits reach the layer
                for j, i in enumerate(flat_idx):
                    view = flat[i : i + 1]
                    numeric[j] = numerical_gradient(loss, view, eps)[0]
                rows.append((f"{layer.name}/{name}", param.shape, _gradient_error(analytic[(layer.name, name)].reshape(-1)[flat_idx], numeric)))
    return GradcheckReport("gradient check of the whole model", rows, tolerance)
