"""Numerical gradient checks: is a hand-written backward right?

The idea (CS231n's gradient check in vector-Jacobian form): pick a random ``dy`` and define the
scalar ``L(x) = sum(f(x) * dy)``. Then ``dL/dx`` is exactly what ``backward(dy)`` must return, and
central differences estimate it independently::

    dL/dx[i] ~= (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)          error O(eps**2)

Checks run in float64 whatever the layer's or model's dtype, on a float64 copy (the original is
left exactly as it was): with ``eps = 1e-5`` the estimate is good to ~1e-10 there, while float32
rounding alone would swamp it (``dtype='float32'`` shows that). Compare with ``rel_error``; below
1e-7 means the backward is right.

Kinks. ReLU at 0, a max-pool tie and a probability clipped by the loss have no derivative: where
``x +- eps`` straddles such a point the central difference averages two slopes, and a correct
backward, which takes one of them, seems wrong. For every element whose difference disagrees,
the check looks again with a step 100 times smaller: if the estimates then agree, the first step
crossed a kink; if the two one-sided slopes ``(L(x + h) - L(x)) / h`` and ``(L(x) - L(x - h)) / h``
still differ and the backward equals one of them, the kink is at ``x`` itself. Either way the
element is counted in the table's ``kinks`` column and left out of ``rel_error``; an element whose
backward matches neither slope stays in, so a wrong gradient still fails. ``model.check_gradients``
also leaves out samples whose predicted probability the loss clips (outside ``[1e-7, 1 - 1e-7]``):
their loss is flat while the fused softmax + cross-entropy backward ``(p - y) / N`` is not.

Example
-------
>>> import numpy as np, minicnn
>>> layer = minicnn.layers.Conv2D(4, 3, padding="same", activation="relu")
>>> x = np.random.default_rng(0).standard_normal((2, 5, 5, 3))
>>> print(minicnn.gradcheck.check_layer(layer, x))      # doctest: +SKIP
gradient check of layer 'conv2d' (Conv2D) in float64 (a float64 copy of a float32 layer), eps=1e-05
array   shape          rel_error  kinks  ok
input   (2, 5, 5, 3)     3.1e-11      0  yes
kernel  (3, 3, 3, 4)     2.4e-11      0  yes
bias    (4,)             1.9e-12      0  yes
pass: rel_error < 1e-07 over the elements away from kinks
"""

import contextlib
import copy

import numpy as np

TOLERANCE = 1e-7
#: Gradients whose norms add up to less than this are zero up to rounding (e.g. a conv bias feeding
#: BatchNormalization): their rel_error would compare noise with noise, so the absolute error is used.
ZERO_NORM = 1e-9
#: The second look at a disagreeing element uses the step ``eps / REFINE``.
REFINE = 100


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


# ----------------------------------------------------------------------------------- the report
class GradcheckReport:
    """One row per checked array: name, shape, relative error between analytic and numerical.

    ``rows`` holds ``(name, shape, rel_error)``; ``kinks`` maps a row's name to the number of its
    elements left out because ``+-eps`` crossed a point without a derivative; ``notes`` are lines
    printed under the table (what was done, what was left out).
    """

    def __init__(self, title, rows, tolerance=TOLERANCE, kinks=None, notes=()):
        self.title = title
        self.rows = rows   # list of (name, shape, rel_error)
        self.tolerance = tolerance
        self.kinks = dict(kinks or {})
        self.notes = list(notes)

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
        lines = [self.title, f"{'array':<{width}}  {'shape':<18}  {'rel_error':>9}  {'kinks':>5}  ok"]
        for name, shape, err in self.rows:
            ok = "yes" if err < self.tolerance else "NO"
            lines.append(f"{name:<{width}}  {str(tuple(shape)):<18}  {err:>9.1e}  {self.kinks.get(name, 0):>5}  {ok}")
        lines.append(f"pass: rel_error < {self.tolerance:.0e} over the elements away from kinks")
        return "\n".join(lines + self.notes)

    __repr__ = __str__


_KINK_NOTE = ("kinks: elements where +-eps crossed a point without a derivative (ReLU at 0, a max-pool tie, "
              "a clipped probability); the backward matched a one-sided slope there, so they are not errors")


# ----------------------------------------------------------------------------------- copies
def _copy_as(layer, dtype):
    """A deep copy of ``layer`` holding its weights in ``dtype``: a check runs on it, not on ``layer``.

    The copy keeps the layer's class and any method a learner replaced, and its random generator
    starts from the layer's state; ``layer``'s weights, cache, gradients and generator are untouched.
    """
    clone = copy.deepcopy(layer, memo={id(layer.cache): {}, id(layer.grads): {}})   # no copy of old caches
    clone._dtype_arg = clone.dtype = np.dtype(dtype).name
    for name in clone.weight_names:
        if name in clone.params:
            clone.params[name] = np.array(clone.params[name], dtype=clone.dtype)
        else:
            setattr(clone, name, np.array(getattr(clone, name), dtype=clone.dtype))
    clone.grads = {k: np.zeros_like(v) for k, v in clone.params.items()}
    return clone


def _model_copy_as(model, dtype):
    """A copy of ``model`` whose layers are ``_copy_as(layer, dtype)``; optimizer and history are shared, never used."""
    clone = copy.copy(model)
    clone._layers = [_copy_as(layer, dtype) for layer in model.layers]
    clone.loss = copy.deepcopy(model.loss)
    return clone


@contextlib.contextmanager
def _frozen_randomness(layers):
    """Replay the same random draws (Dropout masks, augmentation) on every forward pass."""
    states = [(layer, layer._rng.bit_generator.state) for layer in layers if hasattr(layer, "_rng")]

    def rewind():
        for layer, state in states:
            layer._rng.bit_generator.state = state

    yield rewind
    rewind()


# ----------------------------------------------------------------------------------- one array
def _slope(rise, run):
    """``rise / run``; 0 when the step was lost to rounding (a float32 x does not move by 1e-9)."""
    return rise / run if run else 0.0


def _nudge(loss, x, index, step):
    """``L(x + step e_i)``, ``L(x - step e_i)`` and the steps really taken (rounded to x's dtype)."""
    old = x[index].copy()
    x[index] = old + step
    up = float(x[index]) - float(old)
    plus = loss()
    x[index] = old - step
    down = float(old) - float(x[index])
    minus = loss()
    x[index] = old
    return plus, minus, up, down


def _check_array(loss, x, analytic, eps, tolerance, flat_idx, find_kinks=True):
    """``(rel_error, kinks)`` of ``analytic`` against differences of ``loss()`` in ``x`` (changed in place, restored).

    ``flat_idx`` selects the elements (flat indices into ``x``); ``kinks`` counts those left out
    (see the module docstring). An element is looked at twice only when the first estimate disagrees.
    """
    g = np.asarray(analytic, dtype=np.float64).reshape(-1)[flat_idx]
    base = loss()
    # Rounding in a loss of size |L| blurs a difference quotient with step h by ~ u |L| / h (u: unit
    # roundoff of x's dtype); a few dozen times that covers the sums inside the loss.
    blur = 32 * np.finfo(x.dtype).eps * max(abs(base), np.finfo(np.float64).tiny)
    scale = float(np.sqrt(np.mean(g * g))) if g.size else 0.0

    def agree(a, b, h):
        return abs(a - b) <= tolerance * (abs(a) + abs(b) + scale) + blur / h

    numeric, kink = np.empty(len(flat_idx)), np.zeros(len(flat_idx), dtype=bool)
    for j, i in enumerate(flat_idx):
        index = np.unravel_index(i, x.shape)
        plus, minus, up, down = _nudge(loss, x, index, eps)
        numeric[j] = _slope(plus - minus, up + down)
        coarse = abs(numeric[j] - g[j])
        if not find_kinks or agree(numeric[j], g[j], eps):
            continue
        h = eps / REFINE
        plus, minus, up, down = _nudge(loss, x, index, h)
        fine = _slope(plus - minus, up + down)
        if agree(fine, g[j], h) and 10 * abs(fine - g[j]) < coarse:
            kink[j] = True       # the small step agrees (a wrong gradient would be as far off): a kink was crossed
            continue
        # A kink at x itself: the one-sided slopes differ and the backward took one of them.
        right, left = _slope(plus - base, up), _slope(base - minus, down)
        loose = 1e-4 * (abs(right) + abs(left) + scale) + 2 * blur / h
        kink[j] = abs(right - left) > 10 * loose and min(abs(g[j] - right), abs(g[j] - left)) <= loose
    keep = ~kink
    return _gradient_error(g[keep], numeric[keep]), int(kink.sum())


def _check_settings(where, eps, dtype):
    """The check's dtype name, after refusing a step or a dtype it cannot work with (before any copy)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) or not 0 < eps < np.inf:
        raise ValueError(f"{where}: `eps` must be a positive finite number. Received: eps={eps!r}")
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in ("float32", "float64"):
        raise ValueError(f"{where}: `dtype` must be 'float64' (the default) or 'float32'. Received: dtype={dtype!r}")
    return name


def _dtype_note(obj_dtype, dtype, what):
    if np.dtype(obj_dtype) == np.dtype(dtype):
        return f"in {np.dtype(dtype).name}"
    return f"in {np.dtype(dtype).name} (on a {np.dtype(dtype).name} copy of the {np.dtype(obj_dtype).name} {what})"


# ----------------------------------------------------------------------------------- public checks
def check_layer(layer, x, dy=None, eps=1e-5, training=True, seed=0, tolerance=TOLERANCE, dtype="float64", kinks=True):
    """Check ``layer.backward`` against central differences for the input and every parameter.

    Parameters
    ----------
    layer : Layer
        Built or not, any dtype. The check runs on a copy in ``dtype``; ``layer`` is left as it was.
    x : ndarray, the input batch (converted to ``dtype``).
    dy : ndarray or None
        Upstream gradient; random normal (from ``seed``) if None.
    training : bool
        Passed to ``forward``; random layers replay the same mask in every evaluation.
    dtype : {'float64', 'float32'}
        Precision of the check. float64 (the default) resolves errors down to ~1e-10; float32
        shows what rounding does to a check (errors of 1e-4 to 1e-2 for a correct layer).
    kinks : bool
        Look again at disagreeing elements and leave out those at a kink (module docstring);
        False compares every element as it is.

    Returns
    -------
    GradcheckReport
        Rows ``input`` and one per ``layer.params`` key; print it for a table.
    """
    dtype = _check_settings("check_layer", eps, dtype)
    if not layer.built:
        layer.build((None,) + np.shape(x)[1:])
    clone = _copy_as(layer, dtype)
    x = np.array(x, dtype=clone.dtype)
    with _frozen_randomness([clone]) as rewind:
        y = clone.forward(x, training=training)
        if dy is None:
            dy = np.random.default_rng(seed).standard_normal(y.shape)
        dy = np.asarray(dy, dtype=clone.dtype)
        dx = clone.backward(dy)
        analytic = {"input": dx, **{k: g.copy() for k, g in clone.grads.items()}}

        def loss():
            rewind()
            return float(np.sum(clone.forward(x, training=training) * dy))

        rows, counts = [], {}
        for name, array in [("input", x)] + list(clone.params.items()):
            err, counts[name] = _check_array(loss, array, analytic[name], eps, tolerance, np.arange(array.size), kinks)
            rows.append((name, array.shape, err))
    title = (f"gradient check of layer '{layer.name}' ({type(layer).__name__}) "
             f"{_dtype_note(layer.dtype, dtype, 'layer')}, eps={eps:g}")
    return GradcheckReport(title, rows, tolerance, counts, [_KINK_NOTE] if any(counts.values()) else [])


def _clipped_samples(model, y, y_pred):
    """Samples whose loss is flat because the loss clips a probability the fused backward does not.

    With softmax + cross-entropy (sigmoid + binary cross-entropy) the backward is ``(p - y) / N``,
    the gradient of the unclipped loss; where the loss clips ``p`` to ``[1e-7, 1 - 1e-7]`` its value
    stops changing, so differences there measure 0. Other losses' backwards already give 0 there.
    """
    from .losses import EPSILON

    n = len(y_pred)
    if not (model.layers and model._fuses(model.layers[-1])):
        return np.zeros(n, dtype=bool)
    p = np.asarray(y_pred, dtype=np.float64)
    outside = (p < EPSILON) | (p > 1 - EPSILON)
    if hasattr(model.loss, "_targets") and getattr(model.loss, "fuses_with", None) == "softmax":
        outside &= model.loss._targets(y, p) != 0    # only the probabilities the loss takes the log of
    return outside.reshape(n, -1).any(axis=1)


def check_model(model, x, y, eps=1e-5, max_elements=None, seed=0, tolerance=TOLERANCE, dtype="float64", kinks=True):
    """Check a compiled model's full backward pass (loss included) for every parameter of every layer.

    The loss is the compiled loss on ``(x, y)``, with training-mode behaviour and random layers
    replaying the same draws. It runs on a copy of the model in ``dtype`` (float64 by default): the
    model's weights, dtype, caches, gradients, random generators and optimizer are left as they were.
    ``max_elements`` limits each parameter to that many randomly chosen entries (the blog's
    50M-weight Dense layer would otherwise take hours). ``kinks`` as in ``check_layer``; samples
    whose probability the loss clips are left out (module docstring), and the table says so.

    Returns
    -------
    GradcheckReport with one row ``layer/param`` per parameter.
    """
    dtype = _check_settings("check_gradients", eps, dtype)
    model._check_compiled("check_gradients")
    if not model.built:
        raise ValueError("check_gradients: the model has no weights yet; build it, call it on a batch or fit it first.")
    clone = _model_copy_as(model, dtype)
    x, y = clone._check_arrays(x, y)
    rng = np.random.default_rng(seed)
    notes = []
    with _frozen_randomness(clone.layers) as rewind:
        rewind()
        clipped = _clipped_samples(clone, y, clone._forward(x, True))
        if clipped.all():
            raise ValueError(
                f"check_gradients: every one of the {len(x)} samples has a probability clipped by the loss "
                "(p > 1 - 1e-7 or p < 1e-7), where the loss is flat and nothing can be compared. "
                "Pass samples the model is less sure of."
            )
        if clipped.any():
            notes.append(f"left out {int(clipped.sum())} of {len(x)} samples: the loss clips their probability "
                         "(p > 1 - 1e-7 or p < 1e-7) and is flat there, while the fused backward (p - y)/N is not")
            x, y = x[~clipped], y[~clipped]
        rewind()
        clone.compute_gradients(x, y)
        analytic = {(layer.name, k): g.copy() for layer in clone.layers for k, g in layer.grads.items()}

        def loss():
            rewind()
            return clone.compute_loss(x, y, training=True)

        rows, counts = [], {}
        for layer in clone.layers:
            for name, param in layer.params.items():
                flat_idx = np.arange(param.size)
                if max_elements is not None and param.size > max_elements:
                    flat_idx = np.sort(rng.choice(param.size, max_elements, replace=False))
                key = f"{layer.name}/{name}"
                err, counts[key] = _check_array(loss, param, analytic[(layer.name, name)], eps, tolerance, flat_idx, kinks)
                rows.append((key, param.shape, err))
    if any(counts.values()):
        notes.insert(0, _KINK_NOTE)
    sampled = "" if max_elements is None else f", up to {max_elements} elements per array"
    title = f"gradient check of the whole model {_dtype_note(model._dtype(), dtype, 'model')}, eps={eps:g}{sampled}"
    return GradcheckReport(title, rows, tolerance, counts, notes)


# ----------------------------------------------------------------------------------- every layer type
def layer_cases(seed=0):
    """One ``(layer, x)`` per layer type with a backward pass (every registered one but ``InputLayer``).

    Inputs are random: normal for the math layers, pixel-like in [0, 1] for the preprocessing ones.
    ``minicnn gradcheck`` checks them all; a test keeps the list in step with the layer registry.
    """
    from . import layers as L

    # Not ``seed`` itself: check_layer draws dy from it, and dy == x would cancel BatchNormalization's dx.
    rng = np.random.default_rng(seed + 1000)
    img, flat, pixels = rng.standard_normal((2, 7, 7, 3)), rng.standard_normal((2, 10)), rng.uniform(0, 1, (2, 7, 7, 3))
    return [
        (L.Conv2D(4, 3, strides=2, padding="same", activation="relu"), img),
        (L.MaxPooling2D(3, strides=2), img),
        (L.AveragePooling2D(2, padding="same"), img),
        (L.GlobalAveragePooling2D(), img),
        (L.GlobalMaxPooling2D(), img),
        (L.BatchNormalization(), img),
        (L.ZeroPadding2D(1), img),
        (L.Flatten(), img),
        (L.Dense(5, activation="softmax"), flat),
        (L.Dropout(0.4, seed=seed), flat),
        (L.Activation("tanh"), flat),
        (L.ReLU(), flat),
        (L.LeakyReLU(), flat),
        (L.ELU(), flat),
        (L.Softmax(), flat),
        (L.Rescaling(1 / 255, offset=-0.5), pixels),
        (L.Normalization(mean=[0.5, 0.4, 0.3], variance=[0.1, 0.2, 0.3]), pixels),
        (L.Resizing(5, 4), pixels),
        (L.RandomFlip(seed=seed), pixels),
        (L.RandomRotation(0.2, seed=seed), pixels),
        (L.RandomTranslation(0.2, 0.2, seed=seed), pixels),
        (L.RandomZoom(0.3, seed=seed), pixels),
        (L.RandomContrast(0.5, seed=seed), pixels),
    ]
