"""Figures for looking at a CNN: training curves, confusion matrix, images, filters, feature maps.

matplotlib is imported inside each function, so ``import minicnn`` (and this module) stays light.
Every function draws into a figure or axes you pass (``fig=`` / ``ax=``) or makes a new one with
pyplot, and returns it; nothing calls ``plt.show()``, so the functions work in notebooks, scripts
and headless runs (``MPLBACKEND=Agg``) alike. ``save_figure`` writes any of them to disk::

    from minicnn import plotting
    fig = plotting.plot_history(model.fit(x, y, validation_split=0.1, epochs=5))
    plotting.save_figure(fig, "plots/history.png")
"""

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .metrics import confusion_matrix, to_labels

__all__ = [
    "plot_history",
    "plot_confusion_matrix",
    "plot_images",
    "plot_filters",
    "plot_feature_maps",
    "save_figure",
    "filter_images",
    "feature_maps",
]


def _new_figure(figsize):
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize)


def _grid(n, ncols):
    """(nrows, ncols) for n tiles, at most ``ncols`` per row."""
    ncols = max(1, min(int(ncols), n))
    return math.ceil(n / ncols), ncols


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected `{name}` to be a positive integer. Received: {name}={value!r}")
    return int(value)


# --------------------------------------------------------------------------- training curves
def plot_history(history, metrics=None, fig=None):
    """Training curves: one subplot per metric, the training and the validation value per epoch.

    Parameters
    ----------
    history : History or dict of str -> list of float
        What ``model.fit`` returns, or its ``.history`` dict (``{'loss': [...], 'val_loss': [...]}``).
    metrics : str, list of str or None
        Base names to plot (``['loss', 'accuracy']``); ``val_<name>`` is added when present.
        Default: every key without the ``val_`` prefix, loss first.
    fig : matplotlib Figure or None

    Returns
    -------
    Figure with one Axes per metric, titled with the metric's name.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs:
        raise ValueError(f"Expected a History or a non-empty dict of metric lists. Received: {history!r}")
    if isinstance(metrics, str):
        metrics = [metrics]
    if metrics is None:
        metrics = [key for key in logs if not key.startswith("val_")]
        metrics = sorted(metrics, key=lambda key: key != "loss")       # loss first, others in fit order
        if not metrics:                                              # only validation values logged
            metrics = [key[len("val_"):] for key in logs]
    missing = [m for m in metrics if m not in logs and f"val_{m}" not in logs]
    if missing:
        raise ValueError(f"Metrics {missing} are not in the history. Available: {sorted(logs)}")

    fig = fig if fig is not None else _new_figure((5 * len(metrics), 3.8))
    n_epochs = max(len(values) for values in logs.values())
    epoch = getattr(history, "epoch", None)
    # History.epoch counts from 0, as in Keras; people count epochs from 1.
    x = np.asarray(epoch) + 1 if epoch is not None and len(epoch) == n_epochs else np.arange(1, n_epochs + 1)
    marker = "o" if n_epochs <= 30 else None
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, name in zip(axes, metrics, strict=True):
        for key, label, style in ((name, "train", "-"), (f"val_{name}", "validation", "--")):
            if key in logs:
                values = np.asarray(logs[key], dtype=float)
                ax.plot(x[: len(values)], values, style, marker=marker, markersize=4, label=label)
        ax.set_title(name.replace("_", " ").capitalize())
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend()
        if n_epochs <= 20:
            ax.set_xticks(x)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- confusion matrix
def plot_confusion_matrix(
    cm_or_y_true, y_pred=None, class_names=None, normalize=False, ax=None, cmap="Blues", annotate=None
):
    """Heat map of a confusion matrix (rows: true class, columns: predicted), each cell annotated.

    Parameters
    ----------
    cm_or_y_true : ndarray of shape (K, K), or labels of shape (N,) / (N, K)
        A confusion matrix, or the true labels when ``y_pred`` is given.
    y_pred : array-like of shape (N,) or (N, K), or None
    class_names : sequence of str or None
        Tick labels; default: the class indices.
    normalize : False, True, 'true', 'pred' or 'all'
        As sklearn's ``ConfusionMatrixDisplay``: ``'true'`` (or True) divides each row by its sum
        (the diagonal is then the recall of each class), ``'pred'`` each column (precision), ``'all'``
        the total. Rows/columns with sum 0 stay 0. Cells then show fractions with two decimals.
    ax : matplotlib Axes or None
    cmap : str
    annotate : bool or None
        Write the value in each cell; default: only when K <= 30, where the text still fits.

    Returns
    -------
    Axes. The colorbar is added to the same figure.
    """
    if y_pred is not None:
        num_classes = None if class_names is None else len(class_names)
        cm = confusion_matrix(cm_or_y_true, y_pred, num_classes=num_classes)
    else:
        cm = np.asarray(cm_or_y_true)
        if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or not np.issubdtype(cm.dtype, np.number) or np.any(cm < 0):
            raise ValueError(
                "Expected a square confusion matrix of non-negative counts, or y_true and y_pred. "
                f"Received: shape={cm.shape}, dtype={cm.dtype}"
            )
    K = cm.shape[0]
    class_names = [str(k) for k in range(K)] if class_names is None else [str(c) for c in class_names]
    if len(class_names) != K:
        raise ValueError(f"Expected {K} class_names. Received: {len(class_names)}")

    modes = {False: None, None: None, True: "true", "true": "true", "pred": "pred", "all": "all"}
    if not isinstance(normalize, (bool, str, type(None))) or normalize not in modes:
        raise ValueError(f"Expected normalize in (False, True, 'true', 'pred', 'all'). Received: {normalize!r}")
    mode = modes[normalize]
    values = cm.astype(float)
    if mode is not None:
        sums = {"true": cm.sum(axis=1, keepdims=True), "pred": cm.sum(axis=0, keepdims=True), "all": cm.sum()}[mode]
        values = np.divide(values, sums, out=np.zeros_like(values), where=sums != 0)

    if ax is None:
        side = min(12.0, max(4.5, 0.5 * K + 2.5))
        ax = _new_figure((side + 1.0, side)).add_subplot()
    image = ax.imshow(values, interpolation="nearest", cmap=cmap, vmin=0, vmax=1 if mode else None)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)

    if annotate is None:
        annotate = K <= 30
    if annotate:
        threshold = (values.max() + values.min()) / 2    # dark cells get white text
        fontsize = 10 if K <= 10 else max(5, 10 - (K - 10) // 4)
        for i in range(K):
            for j in range(K):
                text = f"{values[i, j]:.2f}" if mode else f"{cm[i, j]:d}"
                color = "white" if values[i, j] > threshold else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize)

    ax.set_xticks(np.arange(K))
    ax.set_yticks(np.arange(K))
    long_names = max(len(name) for name in class_names) > 3
    ax.set_xticklabels(class_names, rotation=45 if long_names else 0, ha="right" if long_names else "center",
                       rotation_mode="anchor")
    ax.set_yticklabels(class_names)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title("Confusion matrix" + ("" if mode is None else f" (normalized over {mode})"))
    ax.figure.tight_layout()
    return ax


# --------------------------------------------------------------------------- image grids
def _display_image(img):
    """``(image, imshow kwargs)``: (H, W) gray or (H, W, 3|4) colour, scaled as ``plot_images`` says."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
        raise ValueError(f"Expected images of shape (H, W) or (H, W, C), C in (1, 3, 4). Received: {img.shape}")
    if np.issubdtype(img.dtype, np.integer):
        img, vmax = np.clip(img, 0, 255).astype(np.uint8), 255
    else:
        img = img.astype(float)
        lo, hi = img.min(), img.max()
        if lo < 0 or hi > 1:
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        vmax = 1
    return img, ({"cmap": "gray", "vmin": 0, "vmax": vmax} if img.ndim == 2 else {})


def plot_images(
    images, labels=None, predictions=None, class_names=None, ncols=8, misclassified_first=True, max_images=32,
    fig=None,
):
    """A grid of images titled with their true and predicted classes; mistakes in red.

    Parameters
    ----------
    images : ndarray of shape (N, H, W, C) with C in {1, 3, 4}, or (N, H, W)
        Integer pixels are taken as 0..255; float pixels in [0, 1] are shown as they are, other
        floats (e.g. standardised images) min-max scaled to [0, 1], each image on its own.
    labels, predictions : array-like of shape (N,) or (N, K), or None
        True classes and model outputs (labels, one-hot or probabilities; see ``metrics.to_labels``).
    class_names : sequence of str or None
        Names for the class indices.
    ncols : int
        Images per row.
    misclassified_first : bool
        With both labels and predictions: show the misclassified images first (each group keeps the
        input order), so the grid answers "what does the model get wrong?".
    max_images : int
        Show at most this many.
    fig : matplotlib Figure or None

    Returns
    -------
    Figure with one Axes per image shown, in display order. A title reads ``"cat"`` (labels only),
    ``"pred: cat"`` (predictions only) or ``"true: cat\\npred: dog"``, red when they differ.
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4) or images.shape[0] == 0:
        raise ValueError(f"Expected images of shape (N, H, W) or (N, H, W, C), N >= 1. Received: {images.shape}")
    ncols, max_images = _check_positive_int("ncols", ncols), _check_positive_int("max_images", max_images)
    N = images.shape[0]
    t = None if labels is None else to_labels(labels, "labels")
    p = None if predictions is None else to_labels(predictions, "predictions")
    for name, y in (("labels", t), ("predictions", p)):
        if y is not None and y.shape[0] != N:
            raise ValueError(f"Expected one entry of `{name}` per image ({N}). Received: {y.shape[0]}")
        if y is not None and class_names is not None and y.max() >= len(class_names):
            raise ValueError(
                f"Expected `{name}` below len(class_names)={len(class_names)}. Received: {name} with {y.max()}"
            )

    order = np.arange(N)
    if misclassified_first and t is not None and p is not None:
        wrong = t != p
        order = np.concatenate([order[wrong], order[~wrong]])
    order = order[:max_images]

    def name(k):
        return str(class_names[k]) if class_names is not None else str(k)

    def title(n):
        if t is not None and p is not None:
            return f"true: {name(t[n])}\npred: {name(p[n])}"
        if t is not None:
            return name(t[n])
        return "" if p is None else f"pred: {name(p[n])}"

    nrows, ncols = _grid(len(order), ncols)
    title_height = 0.3 * title(0).count("\n") + (0.3 if title(0) else 0.0)
    fig = fig if fig is not None else _new_figure((1.6 * ncols, (1.6 + title_height) * nrows))
    for slot, n in enumerate(order):
        ax = fig.add_subplot(nrows, ncols, slot + 1)
        img, kwargs = _display_image(images[n])
        ax.imshow(img, **kwargs)
        ax.set_xticks([])
        ax.set_yticks([])
        wrong = t is not None and p is not None and t[n] != p[n]
        ax.set_title(title(n), fontsize=9, color="red" if wrong else "black", fontweight="bold" if wrong else "normal")
        if wrong:                                   # a red frame too, for readers who don't see red text
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2)
    if t is not None and p is not None:
        first = ", shown first" if misclassified_first else ""
        fig.suptitle(f"{int(np.sum(t != p))} of {N} misclassified{first} (in red)")
    fig.tight_layout()
    return fig


def _kernel_of(layer_or_kernel):
    if hasattr(layer_or_kernel, "params"):
        if "kernel" not in layer_or_kernel.params:
            raise ValueError(
                f"Layer '{layer_or_kernel.name}' has no kernel: it is not a convolution or not built yet "
                "(build it, or run the model once)."
            )
        layer_or_kernel = layer_or_kernel.params["kernel"]
    kernel = np.asarray(layer_or_kernel)
    if kernel.ndim != 4:
        raise ValueError(
            f"Expected a Conv2D layer or a kernel of shape (KH, KW, C, F). Received: shape={kernel.shape}"
        )
    return kernel


def filter_images(kernel, channel=None):
    """The F tiles ``plot_filters`` shows, as an array of shape (F, KH, KW) or (F, KH, KW, 3).

    - C == 3 and ``channel`` None: each filter as an RGB image, min-max scaled to [0, 1] over its
      own KH*KW*3 values (one scale for the three channels keeps their relative strengths).
    - C == 1: the raw weights ``kernel[:, :, 0, f]`` (imshow's grayscale then scales each tile).
    - C not in (1, 3) and ``channel`` None: the mean over the C input channels, raw.
    - ``channel=c``: the raw weights of input channel c only.
    """
    KH, KW, C, F = kernel.shape
    tiles = np.moveaxis(kernel, -1, 0).astype(float)                       # (F, KH, KW, C)
    if channel is not None:
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 0 <= channel < C:
            raise ValueError(f"Expected `channel` in [0, {C}) or None. Received: channel={channel!r}")
        return tiles[..., channel]
    if C == 3:
        lo = tiles.min(axis=(1, 2, 3), keepdims=True)
        span = tiles.max(axis=(1, 2, 3), keepdims=True) - lo
        return np.divide(tiles - lo, span, out=np.full_like(tiles, 0.5), where=span > 0)
    return tiles[..., 0] if C == 1 else tiles.mean(axis=-1)


def plot_filters(layer_or_kernel, ncols=8, channel=None, fig=None, cmap="gray"):
    """One tile per filter of a convolution kernel (most telling for the first layer).

    Parameters
    ----------
    layer_or_kernel : Conv2D layer or ndarray of shape (KH, KW, C, F)
    ncols : int
    channel : int or None
        How the C input channels become one picture (see ``filter_images``): RGB for C == 3,
        grayscale for C == 1, the channel mean for other C, or only input channel ``channel``.
    fig : matplotlib Figure or None
    cmap : str
        Colormap of the grayscale tiles (light = large weight).

    Returns
    -------
    Figure with F Axes titled by filter index, in filter order.
    """
    kernel = _kernel_of(layer_or_kernel)
    KH, KW, C, F = kernel.shape
    tiles = filter_images(kernel, channel)
    nrows, ncols = _grid(F, _check_positive_int("ncols", ncols))
    fig = fig if fig is not None else _new_figure((1.2 * ncols, 1.3 * nrows + 0.6))
    for f in range(F):
        ax = fig.add_subplot(nrows, ncols, f + 1)
        ax.imshow(tiles[f], cmap=None if tiles.ndim == 4 else cmap, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(str(f), fontsize=8)
    if tiles.ndim == 4:
        shown = "RGB"
    elif channel is not None:
        shown = f"input channel {channel}"
    else:
        shown = "grayscale" if C == 1 else f"mean of the {C} input channels"
    name = getattr(layer_or_kernel, "name", "kernel")
    fig.suptitle(f"{name}: {F} filters of {KH}x{KW}x{C} ({shown})")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- feature maps
def _pick_layer(layers, layer):
    """Index of ``layer`` (None: 0, an int, possibly negative, or a layer name) in ``layers``."""
    if layer is None:
        return 0
    if isinstance(layer, str):
        names = [getattr(lyr, "name", None) for lyr in layers]
        if layer not in names:
            raise ValueError(f"No layer named {layer!r}. Layers: {names}")
        return names.index(layer)
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        if not -len(layers) <= layer < len(layers):
            raise ValueError(f"Expected a layer index in [{-len(layers)}, {len(layers)}). Received: {layer}")
        return int(layer) % len(layers)
    if layer in layers:
        return next(i for i, lyr in enumerate(layers) if lyr is layer)
    raise ValueError(f"Expected `layer` to be None, an index, a name or one of the model's layers. Received: {layer!r}")


def feature_maps(model, image, layer=None):
    """The output of one layer for one image: ``(layer, maps)`` with maps of shape (1, OH, OW, F).

    ``model`` is a Sequential model or a plain list of layers; the image passes through
    ``layer.forward(x, training=False)`` of each layer up to and including the chosen one.
    """
    layers = list(getattr(model, "layers", model))
    if not layers:
        raise ValueError("Expected a model with at least one layer.")
    x = np.asarray(image)
    if x.ndim == 2:
        x = x[:, :, None]                 # (H, W) grayscale -> (H, W, 1)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"Expected one image of shape (H, W, C) or (1, H, W, C). Received: shape={np.shape(image)}")
    stop = _pick_layer(layers, layer)
    for lyr in layers[: stop + 1]:
        x = lyr.forward(x, training=False)
    return layers[stop], x


def plot_feature_maps(model, image, layer=None, max_maps=32, ncols=8, fig=None, cmap="viridis"):
    """The channels of one layer's output for one image, as a grid (what each filter responds to).

    Parameters
    ----------
    model : Sequential or list of layers
    image : ndarray of shape (H, W, C), (1, H, W, C) or (H, W)
        Preprocessed the way the model was trained.
    layer : None, int, str or Layer
        Where to stop: None is the first layer, an int an index into ``model.layers`` (negative
        counts from the end), a str a layer name.
    max_maps : int
        Show the first ``max_maps`` channels.
    ncols : int
    fig : matplotlib Figure or None
    cmap : str
        Each map is scaled to its own min..max.

    Returns
    -------
    Figure with one Axes per channel shown, titled by channel index; the suptitle names the layer.
    """
    max_maps = _check_positive_int("max_maps", max_maps)
    lyr, maps = feature_maps(model, image, layer)
    if maps.ndim != 4:
        raise ValueError(
            f"Layer '{lyr.name}' ({type(lyr).__name__}) outputs shape {maps.shape}; feature maps need "
            "(1, H, W, C). Choose a convolution or pooling layer."
        )
    _, OH, OW, F = maps.shape
    shown = min(F, max_maps)
    nrows, ncols = _grid(shown, _check_positive_int("ncols", ncols))
    fig = fig if fig is not None else _new_figure((1.3 * ncols, 1.35 * nrows + 0.6))
    for c in range(shown):
        ax = fig.add_subplot(nrows, ncols, c + 1)
        ax.imshow(maps[0, :, :, c], cmap=cmap, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(str(c), fontsize=8)
    more = f", first {shown} shown" if shown < F else ""
    fig.suptitle(f"{lyr.name} ({type(lyr).__name__}): output {OH}x{OW}x{F}{more}")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- saving
def save_figure(fig, path, dpi=100, **savefig_kwargs):
    """Write ``fig`` (a Figure, or an Axes of one) to ``path``, creating missing parent folders.

    The figure is written to a temporary file next to ``path`` and then renamed over it
    (``os.replace``), so a reader never sees a half-written image. The format comes from the
    suffix (``.png``, ``.pdf``, ``.svg``, ...), PNG when there is none.

    Returns
    -------
    pathlib.Path of the written file.
    """
    if not hasattr(fig, "savefig"):
        fig = getattr(fig, "figure", fig)   # an Axes: save the figure it belongs to
    if not hasattr(fig, "savefig"):
        raise ValueError(f"Expected a matplotlib Figure or Axes. Received: {type(fig).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower() or "png"
    savefig_kwargs.setdefault("bbox_inches", "tight")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            fig.savefig(file, format=fmt, dpi=dpi, **savefig_kwargs)
        os.chmod(tmp, 0o644)    # mkstemp makes the file private (0o600); give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
