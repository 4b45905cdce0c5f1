"""Looking inside a network while it trains: activations, gradients, update sizes, saliency.

Three questions a learner asks when training goes wrong, and where the answer is:

* **Do the gradients reach the first layers?** ``Recorder.grad_norms``: ``||dL/dw||`` of every
  parameter at each recorded step. With sigmoids in a deep stack they shrink layer after layer
  (vanishing gradients); a plot with a log scale shows it at a glance.
* **Are the steps the right size?** ``Recorder.update_ratios``: ``||w_after - w_before|| / ||w_before||``
  around each optimizer step. About 1e-3 is the usual rule of thumb (CS231n); 1e-1 means the
  learning rate is too high, 1e-6 that the layer barely learns.
* **What do the layers output?** ``Recorder.activations``: mean, standard deviation, extremes,
  the fraction of exact zeros (dead ReLUs) and a histogram of every chosen layer's output.

Record inside a ``with`` block; ``fit`` and ``train_on_batch`` are recorded alike::

    with minicnn.inspect.record(model, every=10) as rec:
        model.fit(x_train, y_train, epochs=2)
    minicnn.inspect.plot_gradient_norms(rec)
    minicnn.inspect.plot_activation_histograms(rec)

and, for a trained model, which pixels the class score is most sensitive to::

    s = minicnn.inspect.saliency(model, x_test[0])            # same shape as the image
    minicnn.inspect.plot_saliency(model, x_test[0])

Memory stays bounded: each recorded step keeps a few numbers per layer and parameter and a
``bins``-bin histogram per layer, never the tensors themselves (``keep_activations=True`` keeps
the full outputs of the most recent recorded step only). matplotlib is imported inside the
plotting functions, as in ``minicnn.plotting``.
"""

import contextlib
import math

import numpy as np

from .callbacks import Callback

__all__ = [
    "Recorder", "record", "saliency",
    "plot_gradient_norms", "plot_update_ratios", "plot_activation_histograms", "plot_saliency",
]


def _norm(a):
    """L2 norm over all entries, accumulated in float64."""
    return float(np.sqrt(np.sum(np.square(a, dtype=np.float64))))


class Recorder(Callback):
    """Keeps per-step summaries of a model's activations, gradients and weight updates.

    Use it through ``record(model)`` (which also sees ``train_on_batch``) or pass it to ``fit`` as
    a callback: ``model.fit(x, y, callbacks=[Recorder(every=10)])``.

    Parameters
    ----------
    every : int, default 1
        Record training steps 0, every, 2*every, ... (steps count ``train_step`` calls seen).
    layers : list of str, int or Layer, or None
        The layers to watch (names, indices or the layers themselves); None watches them all.
    bins : int, default 30
        Histogram bins per layer and recorded step (0: no histograms).
    keep_activations : bool, default False
        Also keep a copy of each watched layer's output at the most recent recorded step.

    Attributes
    ----------
    steps : list of int
        The recorded step numbers; every list below has one entry per recorded step.
    grad_norms, weight_norms, update_norms, update_ratios : dict of str -> list of float
        Keyed ``"layer_name/param_name"``. ``grad_norms`` are the gradients backward computed
        (weight penalties included, before any optimizer clipping); ``update_ratios`` are
        ``||w_after - w_before|| / ||w_before||`` (NaN while ``||w_before|| == 0``, e.g. a zero-
        initialised bias before its first step).
    activations : dict of str -> dict of str -> list
        Per layer name: ``mean``, ``std``, ``min``, ``max``, ``zero_fraction`` (floats) and
        ``histogram`` (``(counts, edges)`` pairs) of the layer's output in the training forward pass.
    last_activations : dict of str -> ndarray
        Only with ``keep_activations``: outputs at the latest recorded step.
    """

    def __init__(self, every=1, layers=None, bins=30, keep_activations=False):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"Recorder: `every` must be a positive integer. Received: every={every!r}")
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 0:
            raise ValueError(f"Recorder: `bins` must be an integer >= 0. Received: bins={bins!r}")
        self.every, self.bins, self.keep_activations = int(every), int(bins), bool(keep_activations)
        self._layer_spec = layers
        self.step = 0                # train steps seen so far
        self.steps = []
        self.grad_norms, self.weight_norms, self.update_norms, self.update_ratios = {}, {}, {}, {}
        self.activations, self.last_activations = {}, {}
        self._watched = []
        self._patched = {}           # layer -> what its instance dict held under "forward" before
        self._before = None          # weights copied at the start of a recorded step
        self._in_step = False
        self._attached_by_fit = False

    # ------------------------------------------------------------------ attaching to a model
    def _choose_layers(self, model):
        layers = model.layers
        if self._layer_spec is None:
            return layers
        specs = self._layer_spec
        if isinstance(specs, (str, int, np.integer)) or not hasattr(specs, "__iter__"):
            specs = [specs]    # one name, index or layer
        chosen = []
        for spec in specs:
            if isinstance(spec, str):
                match = [lay for lay in layers if lay.name == spec]
                if not match:
                    raise ValueError(f"Recorder: no layer named {spec!r}. Layers: {[lay.name for lay in layers]}")
                chosen.append(match[0])
            elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
                if not -len(layers) <= spec < len(layers):
                    raise ValueError(f"Recorder: layer index {spec} out of range for {len(layers)} layers.")
                chosen.append(layers[spec])
            elif any(spec is lay for lay in layers):
                chosen.append(spec)
            else:
                raise ValueError(f"Recorder: expected layer names, indices or layers of the model. Received: {spec!r}")
        return chosen

    def attach(self, model):
        """Start watching ``model``: each watched layer's ``forward`` reports its output while a step is recorded."""
        self.model = model
        self._watched = self._choose_layers(model)
        for layer in self._watched:
            if layer in self._patched:
                continue
            self._patched[layer] = vars(layer).get("forward")
            layer.forward = self._spy(layer, layer.forward)

    def detach(self):
        """Give every watched layer its own ``forward`` back."""
        for layer, previous in self._patched.items():
            if previous is None:
                del layer.forward
            else:
                layer.forward = previous
        self._patched = {}

    def _spy(self, layer, forward):
        def spied_forward(x, training=False):
            y = forward(x, training=training)
            if self._before is not None and training:
                self._summarise(layer.name, y)
            return y

        spied_forward.__doc__ = forward.__doc__
        return spied_forward

    # ------------------------------------------------------------------ one training step
    def begin_step(self):
        """Called before the forward pass of a training step: decide whether to record it."""
        if self._in_step:
            return
        self._in_step = True
        if self.step % self.every == 0:
            self._before = {(layer, k): w.copy() for layer in self._watched for k, w in layer.params.items()}

    def end_step(self):
        """Called after the optimizer step: gradient norms and update sizes."""
        if not self._in_step:
            return
        self._in_step = False
        if self._before is not None:
            self.steps.append(self.step)
            for (layer, k), old in self._before.items():
                key = f"{layer.name}/{k}"
                new = layer.params[k]
                old_norm, delta = _norm(old), _norm(new - old)
                self.grad_norms.setdefault(key, []).append(_norm(layer.grads[k]))
                self.weight_norms.setdefault(key, []).append(_norm(new))
                self.update_norms.setdefault(key, []).append(delta)
                self.update_ratios.setdefault(key, []).append(delta / old_norm if old_norm > 0 else math.nan)
            self._before = None
        self.step += 1

    def _summarise(self, name, y):
        y = np.asarray(y)
        stats = self.activations.setdefault(
            name, {"mean": [], "std": [], "min": [], "max": [], "zero_fraction": [], "histogram": []}
        )
        stats["mean"].append(float(np.mean(y, dtype=np.float64)))
        stats["std"].append(float(np.std(y, dtype=np.float64)))
        stats["min"].append(float(np.min(y)))
        stats["max"].append(float(np.max(y)))
        stats["zero_fraction"].append(float(np.mean(y == 0)))
        if self.bins:
            finite = y[np.isfinite(y)]
            counts, edges = np.histogram(finite, bins=self.bins) if finite.size else (np.zeros(self.bins, int), None)
            stats["histogram"].append((counts, edges))
        if self.keep_activations:
            self.last_activations[name] = np.array(y, copy=True)

    # ------------------------------------------------------------------ as a fit callback
    def on_train_begin(self, logs=None):
        self._attached_by_fit = not self._patched
        if self._attached_by_fit:
            self.attach(self.model)

    def on_train_batch_begin(self, batch, logs=None):
        self.begin_step()

    def on_train_batch_end(self, batch, logs=None):
        self.end_step()

    def on_train_end(self, logs=None):
        if self._attached_by_fit:
            self.detach()
            self._attached_by_fit = False

    # ------------------------------------------------------------------ reading the record
    def keys(self, params=None):
        """The recorded ``"layer/param"`` keys, optionally only those whose param name is in ``params``."""
        if isinstance(params, str):
            params = [params]
        return [k for k in self.grad_norms if params is None or k.rsplit("/", 1)[1] in params]

    def summary(self):
        """A table of the latest recorded step: gradient norm, weight norm and update ratio per parameter."""
        if not self.steps:
            return "Recorder: nothing recorded yet."
        width = max([len("parameter")] + [len(k) for k in self.grad_norms])
        lines = [f"step {self.steps[-1]}", f"{'parameter':<{width}}  {'||grad||':>9}  {'||w||':>9}  {'update/w':>9}"]
        for k in self.grad_norms:
            lines.append(f"{k:<{width}}  {self.grad_norms[k][-1]:>9.2e}  {self.weight_norms[k][-1]:>9.2e}  "
                         f"{self.update_ratios[k][-1]:>9.2e}")
        return "\n".join(lines)

    def __repr__(self):
        return (f"<Recorder every={self.every} steps_recorded={len(self.steps)} "
                f"layers={[lay.name for lay in self._watched]}>")


@contextlib.contextmanager
def record(model, every=1, layers=None, bins=30, keep_activations=False):
    """Record ``model``'s training steps inside a ``with`` block; yields the ``Recorder``.

    Every ``model.train_step`` in the block (so ``fit`` and ``train_on_batch`` alike) is wrapped by
    ``Recorder.begin_step``/``end_step``; on leaving the block the model and its layers are exactly
    as before. Arguments as ``Recorder``.
    """
    rec = Recorder(every=every, layers=layers, bins=bins, keep_activations=keep_activations)
    if model.built:
        rec.attach(model)      # else on the first step: fit and train_on_batch build the model before it
    previous = vars(model).get("train_step")
    train_step = model.train_step

    def recorded_train_step(x, y):
        if rec.model is None:
            rec.attach(model)
        rec.begin_step()
        try:
            return train_step(x, y)
        finally:
            rec.end_step()

    model.train_step = recorded_train_step
    try:
        yield rec
    finally:
        if previous is None:
            del model.train_step
        else:
            model.train_step = previous
        rec.detach()


# ============================================================================ saliency
def _as_batch(model, image):
    x = np.asarray(image)
    input_rank = len(model.input_shape) if model.built else None
    if x.ndim == 2 and input_rank == 4:
        x = x[:, :, None]                   # (H, W) grayscale -> (H, W, 1)
    single = input_rank is None or x.ndim == input_rank - 1
    return (x[None] if single else x), single


def saliency(model, image, class_index=None, score="logit"):
    """Gradient of a class score with respect to the input pixels (Simonyan et al., 2014).

    Parameters
    ----------
    model : Sequential
    image : ndarray of shape (H, W, C) (one image) or (N, H, W, C) (a batch)
    class_index : int, sequence of ints or None
        The class whose score is differentiated; None: the class the model predicts.
    score : {'logit', 'probability'}
        'logit' (default): when the last layer ends in softmax (or sigmoid), differentiate its
        input ``z_k``, the pre-activation logit, as the paper does; a probability also moves when the
        *other* classes' logits move, which blurs the map. 'probability': differentiate ``y_k``.
        Without a softmax/sigmoid the two are the same.

    Returns
    -------
    ndarray, the shape of ``image``: ``d score_k / d x``

    Notes
    -----
    One forward pass (``training=False``) and one backward pass through the layers' own
    ``backward``, started from the one-hot vector ``e_k``::

        s[n, h, w, c] = d z[n, k] / d x[n, h, w, c]

    The layers' ``grads`` are restored afterwards; their caches hold this forward pass.
    """
    if score not in ("logit", "probability"):
        raise ValueError(f"saliency: `score` must be 'logit' or 'probability'. Received: score={score!r}")
    layers = model.layers
    if not layers:
        raise ValueError(f"saliency: model '{model.name}' has no layers.")
    x, single = _as_batch(model, image)
    y = model(x, training=False)
    if y.ndim != 2:
        raise ValueError(f"saliency needs a model with outputs of shape (N, K). Received outputs of shape {y.shape}")
    n, k = y.shape
    if class_index is None:
        classes = np.argmax(y, axis=-1)
    else:
        classes = np.broadcast_to(np.asarray(class_index), (n,))
        if not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or classes.max() >= k:
            raise ValueError(f"saliency: `class_index` must be integer(s) in [0, {k}). Received: {class_index!r}")
    dy = np.zeros_like(y)
    dy[np.arange(n), classes] = 1
    saved = [(dict(layer.grads), getattr(layer, "needs_input_gradient", True)) for layer in layers]
    try:
        for layer in layers:   # a training step may have told the first layer that no one needs its dL/dx
            layer.needs_input_gradient = True
        last = layers[-1]
        squashed = last.activation is not None and last.activation.name in ("softmax", "sigmoid")
        d = last.backward_from_logits(dy) if score == "logit" and squashed else last.backward(dy)
        for layer in reversed(layers[:-1]):
            d = layer.backward(d)
    finally:
        for layer, (grads, flag) in zip(layers, saved):
            layer.grads, layer.needs_input_gradient = grads, flag
    d = np.asarray(d).reshape(x.shape)
    return d[0].reshape(np.shape(image)) if single else d


# ============================================================================ plots
def _axes(ax, figsize=(7, 4)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize).add_subplot()


def _plot_series(rec, series, params, ax, ylabel, title):
    ax = _axes(ax)
    keys = rec.keys(params)
    if not keys:
        raise ValueError(f"Nothing recorded for params={params!r}. Recorded: {list(rec.grad_norms)}")
    for key in keys:
        values = np.asarray(series[key], dtype=float)
        ax.plot(rec.steps, np.where(values > 0, values, np.nan), label=key)   # log scale: hide zeros
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", ncol=max(1, len(keys) // 8))
    return ax


def plot_gradient_norms(rec, params="kernel", ax=None):
    """``||dL/dw||`` per parameter over training, log scale (vanishing gradients: the first layers' lines sink).

    ``params``: the parameter names to draw (default ``'kernel'``), a list of them, or None for all.
    Returns the Axes.
    """
    return _plot_series(rec, rec.grad_norms, params, ax, "gradient norm", "Gradient norm per layer")


def plot_update_ratios(rec, params="kernel", ax=None, reference=1e-3):
    """``||delta w|| / ||w||`` per parameter over training, log scale, with a dashed line at ``reference``.

    Around 1e-3 is healthy; far above, the learning rate is too high; far below, the layer barely
    moves. Returns the Axes.
    """
    ax = _plot_series(rec, rec.update_ratios, params, ax, "update / weight", "Update size relative to the weights")
    if reference:
        ax.axhline(reference, color="gray", linestyle="--", linewidth=1)
    return ax


def plot_activation_histograms(rec, step=-1, layers=None, ncols=4, fig=None):
    """One histogram per layer of its outputs at one recorded step (default: the latest).

    Each title gives the layer, the mean and standard deviation, and the share of exact zeros.
    Saturated sigmoids pile up at 0 and 1; dead ReLUs show as a large zero share. Returns the Figure.
    """
    names = [n for n in rec.activations if layers is None or n in layers]
    names = [n for n in names if rec.activations[n]["histogram"]]
    if not names:
        raise ValueError("No activation histograms recorded (was bins=0, or nothing trained inside record()?).")
    ncols = max(1, min(int(ncols), len(names)))
    nrows = math.ceil(len(names) / ncols)
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(3 * ncols, 2.4 * nrows))
    index = rec.steps[step] if rec.steps else 0
    for i, name in enumerate(names):
        stats = rec.activations[name]
        counts, edges = stats["histogram"][step]
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if edges is not None:
            ax.stairs(counts, edges, fill=True)
        ax.set_title(f"{name}\nmean {stats['mean'][step]:.2g}, std {stats['std'][step]:.2g}, "
                     f"zeros {100 * stats['zero_fraction'][step]:.0f}%", fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.set_yticks([])
    fig.suptitle(f"Layer outputs at step {index}")
    fig.tight_layout()
    return fig


def plot_saliency(model, image, class_index=None, score="logit", fig=None, cmap="hot", class_names=None):
    """The image, its saliency map ``max_c |d score / d x[h, w, c]|``, and the two overlaid. Returns the Figure."""
    xb, single = _as_batch(model, image)
    if not single:
        raise ValueError(f"plot_saliency draws one image of shape (H, W, C). Received: shape={np.shape(image)}")
    if class_index is None:
        class_index = int(np.argmax(model(xb, training=False)[0]))
    s = saliency(model, xb[0], class_index=class_index, score=score)
    heat = np.abs(s).max(axis=-1)                 # (H, W): the strongest channel at each pixel
    label = class_names[class_index] if class_names is not None else f"class {class_index}"
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(9, 3.2))
    shown = np.asarray(xb[0, ..., 0] if xb.shape[-1] == 1 else xb[0], dtype=np.float64)
    shown = (shown - shown.min()) / max(float(np.ptp(shown)), 1e-12)   # imshow wants [0, 1] for RGB
    gray = "gray" if shown.ndim == 2 else None
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    axes[0].imshow(shown, cmap=gray)
    axes[0].set_title("image", fontsize="small")
    axes[1].imshow(heat, cmap=cmap)
    axes[1].set_title(f"saliency ({score} of {label})", fontsize="small")
    axes[2].imshow(shown, cmap=gray)
    axes[2].imshow(heat, cmap=cmap, alpha=0.5)
    axes[2].set_title("overlay", fontsize="small")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig
