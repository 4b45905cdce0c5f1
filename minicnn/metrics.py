"""Evaluation metrics for classifiers: accuracy, top-k accuracy, confusion matrix, precision/recall/F1.

Pure NumPy. Every function accepts labels in either of the two forms a Keras workflow produces::

    y = [3, 0, 2]                         # integer class indices, shape (N,)
    y = [[0, 0, 0, 1], [1, 0, 0, 0], ...]  # one-hot targets or predicted probabilities, shape (N, K)

``to_labels`` turns the second form into the first with an argmax over the last axis, so
``accuracy(y_test, model.predict(x_test))`` works whether ``y_test`` is one-hot or not.

The functions for looking at a trained model's mistakes come first; at the end, ``METRICS`` holds
the running metrics ``fit`` reports (``compile(metrics=['accuracy'])``), by the names a model file stores. Results match scikit-learn's functions of the same
name with ``labels=range(num_classes)`` and ``zero_division=0`` (sklearn is not a dependency).
"""

from typing import NamedTuple

import numpy as np

__all__ = [
    "to_labels",
    "accuracy",
    "top_k_accuracy",
    "confusion_matrix",
    "precision_recall_f1",
    "PrecisionRecallF1",
    "classification_report",
    "print_classification_report",
]


# --------------------------------------------------------------------------- input checks
def _labels_and_width(y, name):
    """``(labels, K)``: int64 class indices of shape (N,), and K for (N, K) inputs (else None)."""
    y = np.asarray(y)
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise ValueError(f"Expected `{name}` to hold numbers. Received: dtype={y.dtype}")
    if y.ndim == 2 and y.shape[1] > 1:
        if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
            n, k = np.argwhere(~np.isfinite(y))[0]
            raise ValueError(f"Expected `{name}` to be finite. Received: {name}[{n}, {k}]={y[n, k]}")
        return np.argmax(y, axis=1).astype(np.int64), y.shape[1]
    if y.ndim == 2 and y.shape[1] == 1:   # (N, 1): a column of labels, as Keras's sparse targets
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"Expected `{name}` of shape (N,) (class indices) or (N, K) (one-hot or probabilities). "
            f"Received: shape={y.shape}"
        )
    if y.dtype == np.bool_:
        return y.astype(np.int64), None
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(
                f"Expected `{name}` to hold integer class indices. Received: {name}[{i}]={y[i]}. "
                "(For a single sigmoid output, threshold it first: `(p > 0.5).astype(int)`.)"
            )
    if y.size and y.min() < 0:
        i = int(np.argmin(y))
        raise ValueError(f"Expected `{name}` to hold class indices >= 0. Received: {name}[{i}]={y[i]}")
    return y.astype(np.int64), None


def to_labels(y, name="y"):
    """Class indices from integer labels or from one-hot / probability rows.

    Parameters
    ----------
    y : array-like of shape (N,), (N, 1) or (N, K)
        Integer labels (floats such as ``3.0`` and bools are accepted), or one row of K scores per
        sample, turned into labels by ``argmax`` (the first maximum wins on ties, as ``np.argmax``).
    name : str
        Used in error messages.

    Returns
    -------
    labels : ndarray of int64, shape (N,)
    """
    return _labels_and_width(y, name)[0]


def _check_num_classes(num_classes):
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1
    ):
        raise ValueError(f"Expected `num_classes` to be a positive integer or None. Received: {num_classes!r}")
    return None if num_classes is None else int(num_classes)


def _label_pair(y_true, y_pred, num_classes=None):
    """Checked ``(t, p, K)``: two label vectors of equal length N >= 1, every label in ``[0, K)``.

    K is ``num_classes`` if given, else the width of (N, K) inputs, else ``max label + 1``.
    """
    num_classes = _check_num_classes(num_classes)
    t, width_t = _labels_and_width(y_true, "y_true")
    p, width_p = _labels_and_width(y_pred, "y_pred")
    if t.shape[0] != p.shape[0]:
        raise ValueError(
            f"Expected `y_true` and `y_pred` to have the same number of samples. "
            f"Received: {t.shape[0]} and {p.shape[0]}"
        )
    if t.shape[0] == 0:
        raise ValueError("Expected at least one sample. Received: empty `y_true` and `y_pred`")
    widths = {w for w in (width_t, width_p) if w is not None}
    if len(widths) > 1 or (num_classes is not None and widths and widths != {num_classes}):
        raise ValueError(
            f"Expected one-hot/probability inputs with one column per class. Received: "
            f"y_true with {width_t or 'no'} columns, y_pred with {width_p or 'no'} columns, "
            f"num_classes={num_classes}"
        )
    if num_classes is None:
        num_classes = widths.pop() if widths else int(max(t.max(), p.max())) + 1
    for name, y in (("y_true", t), ("y_pred", p)):
        if y.max() >= num_classes:
            i = int(np.argmax(y))
            raise ValueError(
                f"Expected `{name}` to hold labels in [0, {num_classes}). Received: {name}[{i}]={y[i]}"
            )
    return t, p, num_classes


# --------------------------------------------------------------------------- metrics
def accuracy(y_true, y_pred):
    """Fraction of samples whose predicted class equals the true class.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (N,) or (N, K)
        Labels or one-hot / probability rows (see ``to_labels``).

    Returns
    -------
    float in [0, 1]: ``mean_n [t[n] == p[n]]``.
    """
    t, p, _ = _label_pair(y_true, y_pred)
    return float(np.mean(t == p))


def top_k_accuracy(y_true, y_prob, k=5):
    """Fraction of samples whose true class is among the ``k`` highest scores.

    Parameters
    ----------
    y_true : array-like of shape (N,) or (N, K)
        Labels or one-hot rows.
    y_prob : array-like of shape (N, K)
        Scores (probabilities or logits; only their order matters). Must be finite.
    k : int >= 1
        With ``k >= K`` every sample counts as a hit.

    Returns
    -------
    float in [0, 1]

    Notes
    -----
    Ties are resolved in favour of the true class, as Keras's ``top_k_categorical_accuracy``
    (``in_top_k``) does: sample n is a hit when fewer than k classes score *strictly* higher than
    the true class::

        hit[n] = #{j : y_prob[n, j] > y_prob[n, t[n]]} < k

    So with all scores equal every sample is a hit, even for k=1. (sklearn's
    ``top_k_accuracy_score`` breaks ties by position instead; the two differ only on ties.)
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"Expected `k` to be a positive integer. Received: k={k!r}")
    scores = np.asarray(y_prob)
    if scores.ndim != 2 or scores.shape[1] == 0 or not np.issubdtype(scores.dtype, np.number):
        raise ValueError(
            f"Expected `y_prob` to be a numeric array of shape (N, K). Received: shape={scores.shape}, "
            f"dtype={scores.dtype}"
        )
    if not np.all(np.isfinite(scores)):
        n, j = np.argwhere(~np.isfinite(scores))[0]
        raise ValueError(f"Expected `y_prob` to be finite. Received: y_prob[{n}, {j}]={scores[n, j]}")
    # The labels are checked against the argmax of the scores, which has the right length and range.
    t, _, _ = _label_pair(y_true, np.argmax(scores, axis=1), num_classes=scores.shape[1])
    true_score = scores[np.arange(t.shape[0]), t]                     # (N,)
    n_higher = np.sum(scores > true_score[:, None], axis=1)            # (N,)
    return float(np.mean(n_higher < k))


def confusion_matrix(y_true, y_pred, num_classes=None):
    """Counts of (true class, predicted class) pairs.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (N,) or (N, K)
    num_classes : int or None
        K. If None: the width of one-hot inputs, else ``max label + 1``.

    Returns
    -------
    cm : ndarray of int64, shape (K, K)
        ``cm[i, j]`` = number of samples of true class i predicted as j: rows are true classes,
        columns predicted ones (sklearn's layout). The diagonal holds the correct predictions,
        row sums are the class supports and column sums how often each class was predicted.
    """
    t, p, K = _label_pair(y_true, y_pred, num_classes)
    # Each (i, j) pair gets the flat index i*K + j; counting those fills the matrix in one pass.
    return np.bincount(t * K + p, minlength=K * K).reshape(K, K)


class PrecisionRecallF1(NamedTuple):
    """Per-class scores, each an ndarray of shape (K,); unpacks as ``p, r, f1, support = ...``."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray


def _safe_divide(num, den):
    """``num / den`` elementwise, 0.0 where ``den == 0`` (sklearn's ``zero_division=0``)."""
    out = np.zeros(np.shape(num), dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def precision_recall_f1(y_true, y_pred, num_classes=None):
    """Precision, recall, F1 score and support of every class.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (N,) or (N, K)
    num_classes : int or None
        K, as in ``confusion_matrix``.

    Returns
    -------
    PrecisionRecallF1
        ``precision``, ``recall``, ``f1`` (float64) and ``support`` (int64), each of shape (K,).

    Notes
    -----
    With ``tp[k]`` the correct predictions of class k, ``fp[k]`` other samples predicted as k and
    ``fn[k]`` samples of class k predicted as something else::

        precision[k] = tp[k] / (tp[k] + fp[k])      # of the samples predicted k, how many are k
        recall[k]    = tp[k] / (tp[k] + fn[k])      # of the samples that are k, how many were found
        f1[k]        = 2 * tp[k] / (2 * tp[k] + fp[k] + fn[k])   # harmonic mean of the two
        support[k]   = tp[k] + fn[k]                # number of samples of class k

    A ratio whose denominator is 0 (a class never predicted has no precision; a class absent from
    ``y_true`` has no recall) is defined as 0.0, like sklearn's ``zero_division=0``, and without a
    warning.
    """
    return _scores_from_confusion(confusion_matrix(y_true, y_pred, num_classes))


def _scores_from_confusion(cm):
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)        # tp + fp
    support = cm.sum(axis=1)          # tp + fn
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * tp, predicted + support)
    return PrecisionRecallF1(precision, recall, f1, support.astype(np.int64))


def classification_report(y_true, y_pred, class_names=None, digits=4, num_classes=None):
    """A text table of per-class precision, recall, F1 and support, formatted like sklearn's.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (N,) or (N, K)
    class_names : sequence of str or None
        One name per class; K = ``len(class_names)``. Default: the class indices.
    digits : int
        Decimals of the scores.
    num_classes : int or None
        K when ``class_names`` is None (see ``confusion_matrix``).

    Returns
    -------
    str
        One row per class (all K of them, also classes absent from both inputs), then
        ``accuracy``, ``macro avg`` (unweighted mean over the K rows) and ``weighted avg``
        (mean weighted by support). Equal to sklearn's ``classification_report(y_true, y_pred,
        labels=range(K), target_names=class_names, digits=digits, zero_division=0)``::

                          precision    recall  f1-score   support

                     cat     1.0000    0.5000    0.6667         2
                     dog     0.5000    1.0000    0.6667         1

                accuracy                         0.6667         3
               macro avg     0.7500    0.7500    0.6667         3
            weighted avg     0.8333    0.6667    0.6667         3
    """
    if isinstance(digits, bool) or not isinstance(digits, (int, np.integer)) or digits < 0:
        raise ValueError(f"Expected `digits` to be a non-negative integer. Received: digits={digits!r}")
    if class_names is not None:
        class_names = [str(name) for name in class_names]
        num_classes = _check_num_classes(num_classes)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"Expected one class name per class. Received: {len(class_names)} class_names, "
                f"num_classes={num_classes}"
            )
        num_classes = len(class_names)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    precision, recall, f1, support = _scores_from_confusion(cm)
    if class_names is None:
        class_names = [str(k) for k in range(len(support))]
    total = int(support.sum())
    weights = support / total

    headers = ["precision", "recall", "f1-score", "support"]
    width = max(max(len(name) for name in class_names), len("weighted avg"), digits)
    head_fmt = "{:>{width}s} " + " {:>9}" * len(headers)
    row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"

    report = head_fmt.format("", *headers, width=width) + "\n\n"
    for row in zip(class_names, precision, recall, f1, support, strict=True):
        report += row_fmt.format(*row, width=width, digits=digits)
    report += "\n"
    acc = np.trace(cm) / total
    report += ("{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n").format(
        "accuracy", "", "", acc, total, width=width, digits=digits
    )
    macro = [np.mean(precision), np.mean(recall), np.mean(f1)]
    weighted = [np.sum(weights * precision), np.sum(weights * recall), np.sum(weights * f1)]
    report += row_fmt.format("macro avg", *macro, total, width=width, digits=digits)
    report += row_fmt.format("weighted avg", *weighted, total, width=width, digits=digits)
    return report


def print_classification_report(y_true, y_pred, class_names=None, digits=4, num_classes=None):
    """Print ``classification_report(...)`` (same arguments)."""
    print(classification_report(y_true, y_pred, class_names=class_names, digits=digits, num_classes=num_classes))


# --------------------------------------------------------------------------- metrics reported by fit
def binary_accuracy(y_true, y_pred, threshold=0.5):
    """``mean [y_true == (y_pred > threshold)]`` over every output."""
    return float(np.mean(np.asarray(y_true) == (y_pred > threshold)))


def sparse_categorical_accuracy(y_true, y_pred):
    """``mean [y_true[n] == argmax_k y_pred[n, k]]`` for integer labels."""
    return float(np.mean(np.asarray(y_true).reshape(-1) == np.argmax(y_pred, axis=-1)))


def categorical_accuracy(y_true, y_pred):
    """``mean [argmax y_true[n] == argmax y_pred[n]]`` for one-hot targets."""
    return float(np.mean(np.argmax(y_true, axis=-1) == np.argmax(y_pred, axis=-1)))


def accuracy_fn(y_true, y_pred):
    """Keras's reading of ``metrics=['accuracy']`` from the shapes (``compile_utils.get_metric``).

    One output unit: binary accuracy. Labels of lower rank than the outputs, or a last axis of 1:
    sparse categorical accuracy. Otherwise (one-hot targets): categorical accuracy.
    """
    y_true = np.asarray(y_true)
    if y_pred.shape[-1] == 1:
        return binary_accuracy(y_true, y_pred)
    if y_true.ndim < y_pred.ndim or y_true.shape[-1] == 1:
        return sparse_categorical_accuracy(y_true, y_pred)
    return categorical_accuracy(y_true, y_pred)


def _mean_squared_error(y_true, y_pred):
    return float(np.mean((y_pred - y_true) ** 2))


def _mean_absolute_error(y_true, y_pred):
    return float(np.mean(np.abs(y_pred - y_true)))


#: The closed registry of metric names ``compile(metrics=[...])`` accepts and a model file may hold.
METRICS = {
    "accuracy": accuracy_fn, "acc": accuracy_fn,
    "mse": _mean_squared_error, "mean_squared_error": _mean_squared_error,
    "mae": _mean_absolute_error, "mean_absolute_error": _mean_absolute_error,
}

