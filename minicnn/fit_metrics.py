"""Fit metrics: the metrics ``compile`` accepts and the running means ``fit`` and ``evaluate`` log.

A compiled model keeps its metrics as ``[(log name, function)]``: a name from ``minicnn.metrics``
(``'accuracy'`` is read as binary, sparse or categorical accuracy from the shapes, as in Keras) or
any function ``(y_true, y_pred) -> float``. During an epoch every batch's loss and metrics enter
a ``RunningMeans``, weighted by the batch's size, so the logged value of an epoch with a smaller
last batch is the mean over the samples, as Keras's trackers compute it.
"""

import warnings

from .metrics import METRICS


def resolve(metrics):
    """``[(log name, function)]`` for the ``metrics`` argument of ``compile``.

    Parameters
    ----------
    metrics : None, str, callable, or a list of them

    Raises
    ------
    ValueError : a name that is not in ``minicnn.metrics.METRICS`` and not a function.
    """
    if isinstance(metrics, str) or callable(metrics):
        metrics = [metrics]
    resolved = []
    for metric in metrics or []:
        if isinstance(metric, str) and metric.lower() in METRICS:
            resolved.append((metric, METRICS[metric.lower()]))
        elif callable(metric) and not isinstance(metric, str):
            resolved.append((getattr(metric, "__name__", type(metric).__name__), metric))
        else:
            raise ValueError(
                f"Unknown metric. Expected one of {sorted(METRICS)} or a function (y_true, y_pred) -> float. "
                f"Received: metrics={metrics!r}"
            )
    return resolved


def stored_names(metrics, stacklevel=2):
    """The names a file can store of resolved ``metrics``: functions of your own are left out, with a warning."""
    names = []
    for name, fn in metrics:
        if isinstance(name, str) and fn is METRICS.get(name.lower()):
            names.append(name)
        else:
            warnings.warn(f"The metric {name!r} is a function and is not saved.", stacklevel=stacklevel + 1)
    return names


def batch_logs(loss, metrics, y, y_pred):
    """``{"loss": loss, name: metric(y, y_pred), ...}`` of one batch."""
    return {"loss": loss, **{name: fn(y, y_pred) for name, fn in metrics}}


class RunningMeans:
    """Means over the batches seen so far, each batch weighted by its size (as Keras's loss tracker)."""

    def __init__(self):
        self.totals, self.count = {}, 0

    def add(self, values, n):
        for name, value in values.items():
            self.totals[name] = self.totals.get(name, 0.0) + float(value) * n
        self.count += n

    def logs(self):
        return {name: total / self.count for name, total in sorted(self.totals.items())}
