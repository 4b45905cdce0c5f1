"""Data adapters: how ``fit``, ``evaluate`` and ``predict`` walk through their data, batch by batch.

``ArrayData`` slices in-memory arrays (shuffled each epoch by the model's own generator);
``IterableData`` reads an iterable of ``(x, y)`` batches (a minicnn dataset, a generator), checking
each batch as it comes. The functions below them are the checks' messages: NaN and infinite values
counted after the cast to the model's dtype, and hints for the usual shape mistakes (no channel
axis, channels-first data, one-hot width).
"""

import math

import numpy as np

from . import losses
from .layers.base import format_shape


def is_dataset(x):
    """An iterable of batches (a minicnn dataset, a generator, ...) rather than an array."""
    if isinstance(x, (np.ndarray, list, tuple, str, bytes, dict)) or np.isscalar(x):
        return False
    return hasattr(x, "__iter__") or hasattr(x, "__next__")


class ArrayData:
    """Batches of in-memory arrays: ``ceil(n / batch_size)`` steps, the last one possibly partial.

    ``shuffle`` is False or the generator that draws each epoch's order (the model's own).
    """

    def __init__(self, x, y, batch_size, shuffle):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.steps = math.ceil(len(x) / batch_size)

    def batches(self):
        n = len(self.x)
        order = self.shuffle.permutation(n) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                pick = slice(start, start + self.batch_size)
            else:
                pick = order[start : start + self.batch_size]
            yield self.x[pick], (None if self.y is None else self.y[pick])


class IterableData:
    """Batches from an iterable of ``(x, y)`` pairs (or of ``x`` alone for predict), checked one by one.

    A re-iterable object (a list, a minicnn dataset) is iterated afresh every epoch; a one-shot
    iterator (a generator) is read on from where the previous epoch stopped.
    """

    def __init__(self, source, check_batch, need_y):
        self.source, self.check_batch, self.need_y = source, check_batch, need_y
        self.reiterable = not hasattr(source, "__next__")
        self._iterator = None if self.reiterable else iter(source)
        try:
            self.steps = len(source)
        except TypeError:
            self.steps = None

    def batches(self):
        for item in iter(self.source) if self.reiterable else self._iterator:
            if isinstance(item, (tuple, list)) and len(item) == 2:
                xb, yb = item[0], item[1]
            elif self.need_y:
                raise ValueError(
                    "A dataset passed to fit/evaluate must yield (x_batch, y_batch) pairs. "
                    f"Received an element of type {type(item).__name__}"
                )
            else:
                xb, yb = item, None
            yield self.check_batch(xb, yb if self.need_y else None)


# ------------------------------------------------------------------------ checks and their messages
def count_bad(a):
    """Counts of NaN and of +-inf entries (0, 0 for integer arrays)."""
    if a.dtype.kind != "f":
        return 0, 0
    finite = np.isfinite(a)
    if finite.all():
        return 0, 0
    nan = int(np.isnan(a).sum())
    return nan, int(a.size - finite.sum()) - nan


def finite_after_cast(a, dtype, name, hint=""):
    """``a`` cast to ``dtype``, or a ValueError counting the NaN/inf entries *after* the cast.

    The check runs on the cast array: 1e39 is finite in float64 but ``inf`` in float32.
    """
    with np.errstate(over="ignore"):   # an overflow is reported below, by count
        cast = a.astype(dtype, copy=False)
    nan, inf = count_bad(cast)
    if nan or inf:
        overflow = count_bad(a) != (nan, inf)
        raise ValueError(
            f"`{name}` contains {nan} NaN and {inf} infinite value(s) out of {a.size}"
            + (f" after conversion to {np.dtype(dtype).name} (values beyond +-{np.finfo(dtype).max:.3g} overflow)"
               if overflow else "") + "." + hint
        )
    return cast


def shape_hint(got, expected):
    got, exp = tuple(got), tuple(expected)
    if len(got) == len(exp) - 1 and exp[-1] == 1 and all(e is None or e == g for e, g in zip(exp[1:-1], got[1:])):
        return (" The images have no channel axis: add one with x = x[..., None] "
                "(or np.expand_dims(x, -1)) to get shape (N, H, W, 1).")
    if len(got) == len(exp) == 4 and got[1] == exp[3] and got[2:] == exp[1:3]:
        return (" This looks like channels-first data (N, C, H, W); minicnn is channels-last (N, H, W, C), "
                "as Keras: use x = np.transpose(x, (0, 2, 3, 1)).")
    if got == exp[1:]:
        return " This looks like a single sample: add the batch axis with x[None] (or np.expand_dims(x, 0))."
    return ""


def target_shape_message(loss, y, out, name):
    msg = (f"{type(loss).__name__}: `{name}` must have shape {format_shape((None, *out[1:]))} to match the "
           f"model's outputs. Received: {name}.shape={tuple(y.shape)}.")
    integer_like = y.dtype.kind in "biu" or (y.size and np.all(y == np.round(y)))
    if isinstance(loss, losses.CategoricalCrossentropy) and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)) \
            and integer_like:
        msg += (" These look like integer class labels: use loss='sparse_categorical_crossentropy', "
                f"or one-hot encode them with minicnn.utils.to_categorical({name}, {out[-1]}).")
    elif y.ndim == len(out) and y.shape[:-1] == out[:-1]:
        msg += (f" The targets have {y.shape[-1]} columns (one-hot width) but the last layer has {out[-1]} units: "
                "make them equal (e.g. Dense(num_classes)).")
    return msg
