"""minicnn.metrics against explicit loops (the definitions, one sample at a time) and sklearn's output."""

import numpy as np
import pytest

from minicnn import metrics


# --------------------------------------------------------------------------- loop oracles
def loop_confusion(t, p, K):
    cm = [[0] * K for _ in range(K)]
    for a, b in zip(t, p, strict=True):
        cm[a][b] += 1
    return np.array(cm)


def loop_scores(t, p, K):
    """Precision, recall, F1, support of each class by counting, 0.0 for 0/0."""
    precision, recall, f1, support = [], [], [], []
    for k in range(K):
        tp = sum(1 for a, b in zip(t, p, strict=True) if a == k and b == k)
        fp = sum(1 for a, b in zip(t, p, strict=True) if a != k and b == k)
        fn = sum(1 for a, b in zip(t, p, strict=True) if a == k and b != k)
        pr = tp / (tp + fp) if tp + fp else 0.0
        rc = tp / (tp + fn) if tp + fn else 0.0
        precision.append(pr)
        recall.append(rc)
        f1.append(2 * pr * rc / (pr + rc) if pr + rc else 0.0)
        support.append(tp + fn)
    return np.array(precision), np.array(recall), np.array(f1), np.array(support)


def loop_top_k(t, scores, k):
    """Keras's in_top_k rule: a hit when fewer than k classes score strictly higher."""
    hits = 0
    for n, label in enumerate(t):
        higher = sum(1 for s in scores[n] if s > scores[n][label])
        hits += higher < k
    return hits / len(t)


def one_hot(t, K):
    return np.eye(K)[t]


def random_case(seed, N=200, K=7):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, K, N)
    # Mostly right, some random mistakes: all cells of the matrix get a chance.
    p = np.where(rng.random(N) < 0.6, t, rng.integers(0, K, N))
    return t, p


# --------------------------------------------------------------------------- to_labels
def test_to_labels_accepts_every_form():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, 30)
    probs = rng.random((30, 5))
    probs[np.arange(30), t] += 1.0                       # the argmax is t
    for form in (t, t.astype(np.float32), t.tolist(), t[:, None], one_hot(t, 5), probs):
        np.testing.assert_array_equal(metrics.to_labels(form), t)
    np.testing.assert_array_equal(metrics.to_labels(np.array([True, False])), [1, 0])
    assert metrics.to_labels(t).dtype == np.int64


# --------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_matches_loop(seed):
    t, p = random_case(seed)
    expected = sum(a == b for a, b in zip(t, p, strict=True)) / len(t)
    assert metrics.accuracy(t, p) == pytest.approx(expected, abs=0)
    assert metrics.accuracy(one_hot(t, 7), one_hot(p, 7)) == pytest.approx(expected, abs=0)
    assert metrics.accuracy(t, one_hot(p, 7)) == pytest.approx(expected, abs=0)
    assert isinstance(metrics.accuracy(t, p), float)


def test_accuracy_extremes():
    assert metrics.accuracy([0, 1, 2], [0, 1, 2]) == 1.0
    assert metrics.accuracy([0, 1, 2], [1, 2, 0]) == 0.0


# --------------------------------------------------------------------------- top-k accuracy
@pytest.mark.parametrize("seed, k", [(0, 1), (1, 2), (2, 3), (3, 5), (4, 10)])
def test_top_k_accuracy_matches_loop(seed, k):
    rng = np.random.default_rng(seed)
    N, K = 100, 8
    t = rng.integers(0, K, N)
    scores = rng.integers(0, 4, (N, K)).astype(float)   # few distinct values: many ties
    assert metrics.top_k_accuracy(t, scores, k=k) == pytest.approx(loop_top_k(t, scores, k), abs=0)
    assert metrics.top_k_accuracy(one_hot(t, K), scores, k=k) == metrics.top_k_accuracy(t, scores, k=k)


def test_top_k_accuracy_continuous_scores_k1_is_accuracy():
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((50, 6))               # no ties
    t = rng.integers(0, 6, 50)
    assert metrics.top_k_accuracy(t, scores, k=1) == metrics.accuracy(t, scores)
    assert metrics.top_k_accuracy(t, scores, k=6) == 1.0


def test_top_k_accuracy_ties_favour_the_true_class():
    scores = np.array([[0.25, 0.25, 0.25, 0.25], [0.1, 0.4, 0.4, 0.1], [0.1, 0.4, 0.4, 0.1]])
    # Row 0: nobody is strictly higher than class 3. Row 1: class 2 ties for first.
    # Row 2: two classes (1 and 2) beat class 0, so it is out of the top 2.
    assert metrics.top_k_accuracy([3, 2, 0], scores, k=1) == pytest.approx(2 / 3)
    assert metrics.top_k_accuracy([3, 2, 0], scores, k=2) == pytest.approx(2 / 3)
    assert metrics.top_k_accuracy([3, 2, 0], scores, k=3) == 1.0


# --------------------------------------------------------------------------- confusion matrix
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_matches_loop(seed):
    t, p = random_case(seed)
    cm = metrics.confusion_matrix(t, p, num_classes=7)
    np.testing.assert_array_equal(cm, loop_confusion(t, p, 7))
    assert cm.dtype == np.int64 and cm.shape == (7, 7)
    assert cm.sum() == len(t)
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(t, minlength=7))   # rows are true classes
    np.testing.assert_array_equal(metrics.confusion_matrix(one_hot(t, 7), one_hot(p, 7)), cm)


def test_confusion_matrix_rows_true_cols_predicted():
    cm = metrics.confusion_matrix([0, 0, 1], [1, 1, 1])
    np.testing.assert_array_equal(cm, [[0, 2], [0, 1]])


def test_confusion_matrix_num_classes():
    # Inferred: max label + 1 (here 3), or the one-hot width; given: padded with empty classes.
    assert metrics.confusion_matrix([0, 2], [1, 2]).shape == (3, 3)
    assert metrics.confusion_matrix(one_hot([0, 1], 5), [0, 1]).shape == (5, 5)
    cm = metrics.confusion_matrix([0, 1], [0, 1], num_classes=4)
    np.testing.assert_array_equal(cm, np.diag([1, 1, 0, 0]))


# --------------------------------------------------------------------------- precision, recall, F1
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_precision_recall_f1_matches_loop(seed):
    t, p = random_case(seed, N=60, K=9)                 # small N: some classes are rare
    result = metrics.precision_recall_f1(t, p, num_classes=9)
    for name, got, want in zip(result._fields, result, loop_scores(t, p, 9), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=name)
    assert result.support.dtype == np.int64


def test_precision_recall_f1_edge_classes():
    # Class 1 never predicted (precision 0/0), class 2 absent from y_true (recall 0/0),
    # class 3 neither (all 0/0): every undefined ratio is 0.0.
    t = [0, 0, 1, 1]
    p = [0, 2, 0, 0]
    precision, recall, f1, support = metrics.precision_recall_f1(t, p, num_classes=4)
    np.testing.assert_allclose(precision, [1 / 3, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(recall, [0.5, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(f1, [0.4, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(support, [2, 2, 0, 0])
    for name, got, want in zip(("precision", "recall", "f1", "support"), (precision, recall, f1, support),
                               loop_scores(t, p, 4), strict=True):
        np.testing.assert_allclose(got, want, err_msg=name)


def test_precision_recall_f1_perfect():
    precision, recall, f1, support = metrics.precision_recall_f1([0, 1, 2, 2], [0, 1, 2, 2])
    for name, arr in (("precision", precision), ("recall", recall), ("f1", f1)):
        np.testing.assert_array_equal(arr, 1.0, err_msg=name)
    np.testing.assert_array_equal(support, [1, 1, 2])


# --------------------------------------------------------------------------- classification report
SKLEARN_DOC_EXAMPLE = """\
              precision    recall  f1-score   support

     class 0       0.50      1.00      0.67         1
     class 1       0.00      0.00      0.00         1
     class 2       1.00      0.67      0.80         3

    accuracy                           0.60         5
   macro avg       0.50      0.56      0.49         5
weighted avg       0.70      0.60      0.61         5
"""

def test_classification_report_matches_sklearn_docstring():
    # The example in sklearn.metrics.classification_report's docstring, character for character.
    report = metrics.classification_report(
        [0, 1, 2, 2, 2], [0, 0, 2, 2, 1], class_names=["class 0", "class 1", "class 2"], digits=2
    )
    assert report == SKLEARN_DOC_EXAMPLE


@pytest.mark.parametrize("seed", [0, 1])
def test_classification_report_numbers_match_loop(seed):
    t, p = random_case(seed, N=80, K=5)
    names = ["airplane", "cat", "dog", "frog", "ship"]
    report = metrics.classification_report(t, p, class_names=names)
    precision, recall, f1, support = loop_scores(t, p, 5)
    lines = report.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    for k, name in enumerate(names):
        row = lines[2 + k].split()
        assert row[0] == name
        np.testing.assert_allclose([float(v) for v in row[1:4]], [precision[k], recall[k], f1[k]], atol=5e-5)
        assert int(row[4]) == support[k]
    acc = lines[2 + 5 + 1].split()
    assert acc[0] == "accuracy" and float(acc[1]) == pytest.approx(np.mean(t == p), abs=5e-5)
    assert int(acc[2]) == len(t)
    macro = lines[-2].split()
    weighted = lines[-1].split()
    assert macro[:2] == ["macro", "avg"] and weighted[:2] == ["weighted", "avg"]
    np.testing.assert_allclose([float(v) for v in macro[2:5]], [np.mean(precision), np.mean(recall), np.mean(f1)],
                               atol=5e-5)
    w = support / support.sum()
    np.testing.assert_allclose([float(v) for v in weighted[2:5]], [w @ precision, w @ recall, w @ f1], atol=5e-5)


def test_classification_report_default_names_and_alignment():
    report = metrics.classification_report(one_hot([0, 1, 1], 3), [0, 1, 0])
    lines = report.splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["0", "1", "2"]   # absent class 2 still listed
    assert len({len(line) for line in lines if line}) == 1               # every row equally wide


def test_print_classification_report(capsys):
    metrics.print_classification_report([0, 1], [0, 1], class_names=["a", "b"])
    assert capsys.readouterr().out == metrics.classification_report([0, 1], [0, 1], class_names=["a", "b"]) + "\n"


# --------------------------------------------------------------------------- input validation
@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        ([0, 1, 2], [0, 1], "same number of samples"),
        ([0, 1.5], [0, 1], r"integer class indices.*y_true\[1\]=1.5"),
        ([0, 1], [0, np.nan], "integer class indices"),
        ([0, -1], [0, 1], r">= 0.*y_true\[1\]=-1"),
        (["a", "b"], [0, 1], "hold numbers"),
        ([], [], "at least one sample"),
        (np.zeros((2, 2, 2)), [0, 1], r"shape \(N,\)"),
        (np.eye(3), np.eye(4)[:3], "one column per class"),
        ([[0.5, np.nan], [1, 0]], [0, 1], "finite"),
    ],
)
def test_invalid_inputs_raise(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        metrics.accuracy(y_true, y_pred)


def test_labels_out_of_range_raise():
    with pytest.raises(ValueError, match=r"labels in \[0, 3\).*y_pred\[1\]=3"):
        metrics.confusion_matrix([0, 1], [0, 3], num_classes=3)
    with pytest.raises(ValueError, match=r"labels in \[0, 2\)"):
        metrics.classification_report([0, 2], [0, 1], class_names=["a", "b"])
    with pytest.raises(ValueError, match="one column per class"):
        metrics.confusion_matrix(np.eye(3), [0, 1, 2], num_classes=4)
    with pytest.raises(ValueError, match="num_classes"):
        metrics.confusion_matrix([0], [0], num_classes=0)


def test_top_k_accuracy_invalid():
    scores = np.ones((2, 3))
    with pytest.raises(ValueError, match="positive integer"):
        metrics.top_k_accuracy([0, 1], scores, k=0)
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        metrics.top_k_accuracy([0, 1], [0.1, 0.9], k=1)
    with pytest.raises(ValueError, match="finite"):
        metrics.top_k_accuracy([0, 1], [[0.1, np.inf, 0], [1, 0, 0]], k=1)
    with pytest.raises(ValueError, match=r"labels in \[0, 3\)"):
        metrics.top_k_accuracy([0, 3], scores, k=1)
    with pytest.raises(ValueError, match="same number of samples"):
        metrics.top_k_accuracy([0, 1, 2], scores, k=1)


def test_classification_report_invalid_arguments():
    with pytest.raises(ValueError, match="one class name per class"):
        metrics.classification_report([0, 1], [0, 1], class_names=["a", "b"], num_classes=3)
    with pytest.raises(ValueError, match="digits"):
        metrics.classification_report([0, 1], [0, 1], digits=-1)
