"""minicnn.plotting: the figures hold the data they claim to show, and save as valid images."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from minicnn import metrics, plotting  # noqa: E402
from minicnn.layers import Conv2D, Dense, Flatten, MaxPooling2D  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_importing_minicnn_does_not_import_matplotlib():
    code = "import sys, minicnn, minicnn.metrics, minicnn.plotting; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- plot_history
HISTORY = {
    "loss": [2.0, 1.2, 0.8, 0.6],
    "accuracy": [0.3, 0.6, 0.75, 0.8],
    "val_loss": [2.1, 1.4, 1.0, 0.9],
    "val_accuracy": [0.25, 0.55, 0.7, 0.72],
}


def test_plot_history_dict_one_subplot_per_metric():
    fig = plotting.plot_history(HISTORY)
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Accuracy"]
    for ax, name in zip(fig.axes, ["loss", "accuracy"], strict=True):
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["train", "validation"]
        np.testing.assert_array_equal(lines[0].get_xdata(), [1, 2, 3, 4])
        np.testing.assert_array_equal(lines[0].get_ydata(), HISTORY[name])
        np.testing.assert_array_equal(lines[1].get_ydata(), HISTORY[f"val_{name}"])
        assert ax.get_xlabel() == "epoch"


def test_plot_history_accepts_history_object_and_uses_its_epochs():
    history = SimpleNamespace(history=HISTORY, epoch=[0, 1, 2, 3])     # what fit returns
    fig = plotting.plot_history(history, metrics="accuracy")
    (ax,) = fig.axes
    assert ax.get_title() == "Accuracy"
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), [1, 2, 3, 4])


def test_plot_history_without_validation_and_into_given_figure():
    fig = plt.figure()
    out = plotting.plot_history({"loss": [1.0, 0.5]}, fig=fig)
    assert out is fig
    assert len(fig.axes) == 1 and [line.get_label() for line in fig.axes[0].get_lines()] == ["train"]


def test_plot_history_invalid():
    with pytest.raises(ValueError, match="not in the history"):
        plotting.plot_history(HISTORY, metrics=["precision"])
    with pytest.raises(ValueError, match="non-empty"):
        plotting.plot_history({})


# --------------------------------------------------------------------------- plot_confusion_matrix
def cell_texts(ax):
    """{(row, col): text} of the annotations, placed at the cell centres."""
    return {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}


def test_confusion_matrix_annotations_equal_counts():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 100)
    p = np.where(rng.random(100) < 0.6, t, rng.integers(0, 4, 100))
    names = ["cat", "dog", "frog", "horse"]
    ax = plotting.plot_confusion_matrix(t, p, class_names=names)
    cm = metrics.confusion_matrix(t, p)
    texts = cell_texts(ax)
    assert len(texts) == 16
    for (i, j), text in texts.items():
        assert text == str(cm[i, j]), f"cell ({i}, {j})"
    np.testing.assert_array_equal(ax.images[0].get_array(), cm)
    assert [tick.get_text() for tick in ax.get_xticklabels()] == names
    assert [tick.get_text() for tick in ax.get_yticklabels()] == names
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("Predicted label", "True label", "Confusion matrix")
    assert len(ax.figure.axes) == 2                     # the heat map and its colorbar


def test_confusion_matrix_from_matrix_normalized_into_given_axes():
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    fig, ax = plt.subplots()
    out = plotting.plot_confusion_matrix(cm, normalize=True, ax=ax)
    assert out is ax
    texts = cell_texts(ax)
    rows = cm.sum(axis=1, keepdims=True)
    expected = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows != 0)   # empty row stays 0
    for (i, j), text in texts.items():
        assert text == f"{expected[i, j]:.2f}", f"cell ({i}, {j})"
    assert "normalized" in ax.get_title()
    pred = plotting.plot_confusion_matrix(cm, normalize="pred", ax=plt.figure().add_subplot())
    np.testing.assert_allclose(pred.images[0].get_array().sum(axis=0), [1, 1, 1])


def test_confusion_matrix_many_classes_not_annotated():
    ax = plotting.plot_confusion_matrix(np.eye(40, dtype=int))
    assert len(ax.texts) == 0


def test_confusion_matrix_invalid():
    with pytest.raises(ValueError, match="square"):
        plotting.plot_confusion_matrix(np.ones((2, 3)))
    with pytest.raises(ValueError, match="class_names"):
        plotting.plot_confusion_matrix(np.eye(3, dtype=int), class_names=["a", "b"])
    with pytest.raises(ValueError, match="normalize"):
        plotting.plot_confusion_matrix(np.eye(3, dtype=int), normalize="rows")


# --------------------------------------------------------------------------- plot_images
def distinct_images(n, h=6, w=5, c=3):
    """Images whose first pixel encodes their index, so a tile tells which image it shows."""
    images = np.zeros((n, h, w, c))
    images[:, 0, 0, 0] = np.arange(n) / n
    images[:, -1, -1, :] = 1.0
    return images


def shown_indices(fig, n):
    return [round(ax.images[0].get_array()[0, 0, 0] * n) for ax in fig.axes]


def test_plot_images_misclassified_first():
    n = 10
    labels = np.arange(n) % 3
    predictions = labels.copy()
    predictions[[2, 5, 7]] = (labels[[2, 5, 7]] + 1) % 3
    names = ["cat", "dog", "frog"]
    fig = plotting.plot_images(distinct_images(n), labels, np.eye(3)[predictions], class_names=names, ncols=4)
    assert len(fig.axes) == n
    assert shown_indices(fig, n) == [2, 5, 7, 0, 1, 3, 4, 6, 8, 9]
    for ax, i in zip(fig.axes, shown_indices(fig, n), strict=True):
        assert ax.get_title() == f"true: {names[labels[i]]}\npred: {names[predictions[i]]}"
        wrong = i in (2, 5, 7)
        assert matplotlib.colors.same_color(ax.title.get_color(), "red" if wrong else "black"), f"image {i}"
    assert fig._suptitle.get_text().startswith("3 of 10 misclassified")


def test_plot_images_input_order_and_max_images():
    n = 10
    labels = np.zeros(n, dtype=int)
    predictions = np.array([0, 1] * 5)
    fig = plotting.plot_images(distinct_images(n), labels, predictions, misclassified_first=False, max_images=4)
    assert shown_indices(fig, n) == [0, 1, 2, 3]
    fig = plotting.plot_images(distinct_images(n), labels, predictions, max_images=4)
    assert shown_indices(fig, n) == [1, 3, 5, 7]


def test_plot_images_grayscale_labels_only():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 1)).astype(np.uint8)
    fig = plotting.plot_images(images, labels=[3, 1, 4, 1, 5])
    assert [ax.get_title() for ax in fig.axes] == ["3", "1", "4", "1", "5"]
    np.testing.assert_array_equal(fig.axes[2].images[0].get_array(), images[2, :, :, 0])
    assert fig.axes[0].images[0].get_clim() == (0, 255)


def test_plot_images_standardised_floats_are_rescaled():
    image = np.array([[-2.0, 0.0], [1.0, 2.0]])[None, :, :, None]
    fig = plotting.plot_images(image)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), [[0.0, 0.5], [0.75, 1.0]])


def test_plot_images_invalid():
    with pytest.raises(ValueError, match="one entry of `labels` per image"):
        plotting.plot_images(distinct_images(3), labels=[0, 1])
    with pytest.raises(ValueError, match="class_names"):
        plotting.plot_images(distinct_images(2), labels=[0, 2], class_names=["a", "b"])
    with pytest.raises(ValueError, match="ncols"):
        plotting.plot_images(distinct_images(2), ncols=0)


# --------------------------------------------------------------------------- plot_filters
def test_plot_filters_rgb_tiles_are_normalised_kernel_slices():
    layer = Conv2D(6, 3, name="first_conv")
    layer.build((None, 10, 10, 3))
    kernel = layer.params["kernel"]
    fig = plotting.plot_filters(layer, ncols=4)
    assert len(fig.axes) == 6
    for f, ax in enumerate(fig.axes):
        w = kernel[:, :, :, f].astype(float)
        np.testing.assert_allclose(ax.images[0].get_array(), (w - w.min()) / (w.max() - w.min()),
                                   err_msg=f"filter {f}")
        assert ax.get_title() == str(f)
    assert "first_conv" in fig._suptitle.get_text() and "3x3x3" in fig._suptitle.get_text()


@pytest.mark.parametrize(
    "C, channel, expected",
    [
        (1, None, lambda w: w[:, :, 0]),
        (4, None, lambda w: w.mean(axis=2)),
        (4, 2, lambda w: w[:, :, 2]),
        (3, 1, lambda w: w[:, :, 1]),
    ],
)
def test_plot_filters_grayscale_tiles(C, channel, expected):
    kernel = np.random.default_rng(C).standard_normal((5, 4, C, 3))
    fig = plotting.plot_filters(kernel, channel=channel)
    assert len(fig.axes) == 3
    for f, ax in enumerate(fig.axes):
        np.testing.assert_allclose(ax.images[0].get_array(), expected(kernel[:, :, :, f]), err_msg=f"filter {f}")
        assert ax.images[0].get_cmap().name == "gray"


def test_plot_filters_invalid():
    with pytest.raises(ValueError, match=r"\(KH, KW, C, F\)"):
        plotting.plot_filters(np.ones((3, 3, 2)))
    with pytest.raises(ValueError, match="channel"):
        plotting.plot_filters(np.ones((3, 3, 2, 4)), channel=2)
    with pytest.raises(ValueError, match="no kernel"):
        plotting.plot_filters(Conv2D(4, 3))                     # not built


# --------------------------------------------------------------------------- plot_feature_maps
def tiny_model():
    layers = [Conv2D(5, 3, activation="relu", name="c1"), MaxPooling2D(2, name="p1"), Flatten(name="f1"),
              Dense(3, name="d1")]
    return SimpleNamespace(layers=layers)       # the part of Sequential plot_feature_maps uses


@pytest.mark.parametrize("layer, stop", [(None, 0), ("c1", 0), (0, 0), ("p1", 1), (1, 1), (-3, 1)])
def test_plot_feature_maps_shows_the_layer_output(layer, stop):
    model = tiny_model()
    image = np.random.default_rng(0).random((9, 9, 2))
    fig = plotting.plot_feature_maps(model, image, layer=layer)
    x = image[None]
    for lyr in model.layers[: stop + 1]:
        x = lyr.forward(x, training=False)
    assert len(fig.axes) == 5
    for c, ax in enumerate(fig.axes):
        np.testing.assert_allclose(ax.images[0].get_array(), x[0, :, :, c], err_msg=f"channel {c}")
        assert ax.get_title() == str(c)
    assert fig._suptitle.get_text().startswith(model.layers[stop].name)


def test_plot_feature_maps_batch_of_one_list_of_layers_and_max_maps():
    model = tiny_model()
    image = np.random.default_rng(1).random((1, 9, 9, 2))
    fig = plotting.plot_feature_maps(model.layers, image, layer="c1", max_maps=2)
    assert len(fig.axes) == 2
    assert "first 2 shown" in fig._suptitle.get_text()


def test_plot_feature_maps_invalid():
    model = tiny_model()
    image = np.random.default_rng(2).random((9, 9, 2))
    with pytest.raises(ValueError, match="feature maps need"):
        plotting.plot_feature_maps(model, image, layer="d1")
    with pytest.raises(ValueError, match="No layer named 'conv9'"):
        plotting.plot_feature_maps(model, image, layer="conv9")
    with pytest.raises(ValueError, match="layer index"):
        plotting.plot_feature_maps(model, image, layer=4)
    with pytest.raises(ValueError, match="one image"):
        plotting.plot_feature_maps(model, np.zeros((2, 9, 9, 2)))


def test_with_a_real_sequential_model():
    models = pytest.importorskip("minicnn.models")
    from minicnn import Input

    rng = np.random.default_rng(3)
    x = rng.random((16, 8, 8, 1)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(int)
    model = models.Sequential([
        Input(shape=(8, 8, 1)),
        Conv2D(4, 3, activation="relu", name="seq_conv"),
        Flatten(),
        Dense(2, activation="softmax"),
    ])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=2, batch_size=8, validation_data=(x, y), verbose=0)
    fig = plotting.plot_history(history)
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Accuracy"]
    np.testing.assert_allclose(fig.axes[0].get_lines()[1].get_ydata(), history.history["val_loss"])
    fig = plotting.plot_feature_maps(model, x[0], layer="seq_conv")
    assert len(fig.axes) == 4
    expected = model.layers[0].forward(x[:1], training=False)
    np.testing.assert_allclose(fig.axes[3].images[0].get_array(), expected[0, :, :, 3])
    ax = plotting.plot_confusion_matrix(y, model.predict(x), class_names=["dark", "light"])
    assert sum(int(t.get_text()) for t in ax.texts) == 16


# --------------------------------------------------------------------------- save_figure
def test_save_figure_writes_a_png_and_creates_folders(tmp_path):
    fig = plotting.plot_history(HISTORY)
    path = plotting.save_figure(fig, tmp_path / "a" / "b" / "history.png")
    data = path.read_bytes()
    assert path == tmp_path / "a" / "b" / "history.png"
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert sorted(p.name for p in path.parent.iterdir()) == ["history.png"]     # no temporary left behind
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")   # IHDR
    assert width > 300 and height > 200


def test_save_figure_accepts_axes_overwrites_and_keeps_the_suffix_format(tmp_path):
    ax = plotting.plot_confusion_matrix([0, 1, 1], [0, 1, 0])
    path = tmp_path / "cm.png"
    path.write_bytes(b"old")
    plotting.save_figure(ax, path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    pdf = plotting.save_figure(ax, tmp_path / "cm.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")


def test_save_figure_failure_leaves_no_file(tmp_path):
    fig = plotting.plot_history(HISTORY)
    with pytest.raises(ValueError):
        plotting.save_figure(fig, tmp_path / "history.unknownformat")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="Figure or Axes"):
        plotting.save_figure("not a figure", tmp_path / "x.png")
