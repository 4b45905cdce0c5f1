"""minicnn.data: image files, the streaming folder dataset, and the NumPy transforms."""

import math

import numpy as np
import pytest
from PIL import Image
from torch_layout import from_torch_layout, to_torch_layout

from minicnn.data import image_dataset_from_directory, images, img_to_array, load_img, transforms


# ----------------------------------------------------------------------------- an image folder
def make_folder(root, rng):
    """birds/ cats/ dogs/ with PNG and JPEG files of mixed sizes and modes, one nested, plus junk.

    Returns {relative path: class}. ``cats/broken.png`` is not an image and ``notes.txt`` is ignored.
    """
    specs = {
        "birds/b1.png": ("RGB", (12, 10)),
        "birds/b2.jpg": ("L", (20, 8)),
        "birds/b3.jpeg": ("RGB", (9, 9)),
        "cats/c1.png": ("RGBA", (16, 16)),
        "cats/c2.png": ("P", (7, 13)),
        "cats/c3.bmp": ("RGB", (30, 20)),
        "cats/nested/c4.gif": ("L", (11, 11)),
        "dogs/d1.JPG": ("RGB", (40, 25)),
        "dogs/d2.png": ("L", (5, 6)),
        "dogs/d3.png": ("RGB", (8, 8)),
    }
    for rel, (mode, (w, h)) in specs.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        channels = {"RGB": 3, "RGBA": 4, "L": 1, "P": 1}[mode]
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        img = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, "L" if channels == 1 else mode)
        if mode == "P":
            img = img.convert("P")
        img.save(path)
    (root / "cats" / "broken.png").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    (root / "dogs" / "notes.txt").write_text("not an image")
    for hidden in (root / ".ipynb_checkpoints", root / "dogs" / ".ipynb_checkpoints"):   # skipped, as in Keras
        hidden.mkdir()
        Image.new("RGB", (3, 3)).save(hidden / "d1-checkpoint.png")
    return {rel: rel.split("/")[0] for rel in specs}


@pytest.fixture
def folder(tmp_path):
    return tmp_path, make_folder(tmp_path, np.random.default_rng(0))


def collect(ds):
    xs, ys = zip(*ds, strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def test_found_message_class_names_and_order(folder, capsys):
    root, files = folder
    ds = image_dataset_from_directory(root, image_size=(8, 6), batch_size=4, shuffle=False)
    assert capsys.readouterr().out == "Found 11 files belonging to 3 classes.\n"   # broken.png counts, notes.txt not
    assert ds.class_names == ["birds", "cats", "dogs"]
    rel = [str(p)[len(str(root)) + 1 :] for p in ds.file_paths]
    assert rel == [
        "birds/b1.png", "birds/b2.jpg", "birds/b3.jpeg", "cats/broken.png", "cats/c1.png", "cats/c2.png",
        "cats/c3.bmp", "cats/nested/c4.gif", "dogs/d1.JPG", "dogs/d2.png", "dogs/d3.png",
    ]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2]
    assert len(ds) == 3


def test_batches_and_the_corrupt_file(folder):
    root, files = folder
    ds = image_dataset_from_directory(root, image_size=(8, 6), batch_size=4, shuffle=False, verbose=False)
    with pytest.warns(UserWarning, match="broken.png"):
        batches = list(ds)
    assert [len(x) for x, _ in batches] == [3, 4, 3]   # the broken file (4th) is left out of the first batch
    x, y = collect(batches)
    assert x.dtype == np.float32 and x.shape == (10, 8, 6, 3) and y.dtype == np.int32
    assert 0 <= x.min() and x.max() <= 255 and x.max() > 200
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    # the same file through load_img + img_to_array gives the same pixels (one resize for train and predict)
    np.testing.assert_array_equal(x[0], img_to_array(load_img(root / "birds/b1.png", target_size=(8, 6))))
    # a second epoch skips the broken file without warning again
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sum(len(xb) for xb, _ in ds) == 10


@pytest.mark.parametrize("color_mode, channels", [("grayscale", 1), ("rgb", 3), ("rgba", 4)])
def test_color_modes(folder, color_mode, channels):
    root, _ = folder
    ds = image_dataset_from_directory(root, color_mode=color_mode, image_size=(5, 7), batch_size=32,
                                      shuffle=False, verbose=False)
    with pytest.warns(UserWarning):
        x, _ = next(iter(ds))
    assert x.shape == (10, 5, 7, channels)


def test_label_modes(folder):
    root, _ = folder
    kw = dict(image_size=(4, 4), batch_size=32, shuffle=False, verbose=False)
    with pytest.warns(UserWarning):
        _, y = next(iter(image_dataset_from_directory(root, label_mode="categorical", **kw)))
    assert y.dtype == np.float32 and y.shape == (10, 3)
    np.testing.assert_array_equal(y.argmax(1), [0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    _, y = next(iter(image_dataset_from_directory(root, label_mode="binary", class_names=["dogs", "birds"], **kw)))
    assert y.shape == (6, 1) and y.dtype == np.float32 and y[:, 0].tolist() == [0, 0, 0, 1, 1, 1]   # dogs first
    with pytest.warns(UserWarning):
        out = next(iter(image_dataset_from_directory(root, labels=None, **kw)))
    assert isinstance(out, np.ndarray) and out.shape == (10, 4, 4, 3)   # images only
    with pytest.raises(ValueError, match="exactly 2 class_names"):
        image_dataset_from_directory(root, label_mode="binary", **kw)
    with pytest.raises(ValueError, match="did not match the names of the subdirectories"):
        image_dataset_from_directory(root, class_names=["birds", "fish"], **kw)


def test_explicit_labels(folder):
    root, _ = folder
    labels = [5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5]
    ds = image_dataset_from_directory(root, labels=labels, image_size=(4, 4), shuffle=False, verbose=False)
    assert ds.labels.tolist() == labels and len(ds.class_names) == 6
    with pytest.raises(ValueError, match="one per image file"):
        image_dataset_from_directory(root, labels=[0, 1], image_size=(4, 4), verbose=False)


def test_validation_split_is_deterministic_and_disjoint(folder, capsys):
    root, _ = folder
    kw = dict(image_size=(4, 4), validation_split=0.3, seed=1337)
    train = image_dataset_from_directory(root, subset="training", **kw)
    val = image_dataset_from_directory(root, subset="validation", **kw)
    out = capsys.readouterr().out
    assert "Using 8 files for training." in out and "Using 3 files for validation." in out
    assert set(train.file_paths).isdisjoint(val.file_paths)
    assert len(set(train.file_paths) | set(val.file_paths)) == 11
    both = image_dataset_from_directory(root, subset="both", **kw)
    assert both[0].file_paths == train.file_paths and both[1].file_paths == val.file_paths
    other = image_dataset_from_directory(root, subset="validation", **{**kw, "seed": 1})
    assert other.file_paths != val.file_paths
    with pytest.raises(ValueError, match="must provide a `seed`"):
        image_dataset_from_directory(root, image_size=(4, 4), validation_split=0.3, subset="training")
    with pytest.raises(ValueError, match="pass both or neither"):
        image_dataset_from_directory(root, image_size=(4, 4), validation_split=0.3, seed=1)
    with pytest.raises(ValueError, match="subset"):
        image_dataset_from_directory(root, image_size=(4, 4), validation_split=0.3, subset="test", seed=1)


def test_reshuffled_every_epoch_and_reproducible(folder):
    root, _ = folder
    kw = dict(image_size=(4, 4), batch_size=3, seed=7, labels=list(range(11)), label_mode="int", verbose=False)

    def epochs(ds, n=3):
        with pytest.warns(UserWarning):
            first = np.concatenate([y for _, y in ds])
        return [first] + [np.concatenate([y for _, y in ds]) for _ in range(n - 1)]

    a, b = epochs(image_dataset_from_directory(root, **kw)), epochs(image_dataset_from_directory(root, **kw))
    for ea, eb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ea, eb)   # same seed, same sequence of epochs
    assert sorted(a[0].tolist()) == sorted(a[1].tolist()) == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]   # 3 = broken.png
    assert not np.array_equal(a[0], a[1]) or not np.array_equal(a[1], a[2])
    fixed = epochs(image_dataset_from_directory(root, **{**kw, "shuffle": False}))
    np.testing.assert_array_equal(fixed[0], fixed[1])


def test_streams_from_disk(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    for k in range(40):
        (tmp_path / f"c{k % 2}").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / f"c{k % 2}" / f"{k}.png")
    calls = []
    real = images.load_img
    monkeypatch.setattr(images, "load_img", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    ds = image_dataset_from_directory(tmp_path, image_size=(6, 6), batch_size=8, seed=0, verbose=False)
    assert calls == []                                  # making the dataset decodes nothing
    it = iter(ds)
    next(it)
    assert len(calls) == 8                              # one batch decoded, not the folder
    assert not any(isinstance(v, np.ndarray) and v.size >= 8 * 36 for v in vars(ds).values())
    rest = sum(len(x) for x, _ in it)
    assert rest == 32 and len(calls) == 40 and len(ds) == math.ceil(40 / 8)


def test_load_img_and_img_to_array(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    img = load_img(tmp_path / "a.png")
    assert img.mode == "RGB" and img.size == (14, 10)
    x = img_to_array(img)
    assert x.dtype == np.float32 and x.shape == (10, 14, 3)
    np.testing.assert_array_equal(x, pixels)
    g = img_to_array(load_img(tmp_path / "a.png", color_mode="grayscale"), dtype="float64")
    assert g.shape == (10, 14, 1) and g.dtype == np.float64
    small = load_img(tmp_path / "a.png", target_size=(5, 7))
    assert small.size == (7, 5)
    expected = Image.fromarray(pixels).resize((7, 5), Image.Resampling.BILINEAR)   # bilinear by default
    np.testing.assert_array_equal(np.asarray(small), np.asarray(expected))
    with pytest.raises(ValueError, match="color_mode"):
        load_img(tmp_path / "a.png", color_mode="cmyk")
    with pytest.raises(ValueError, match="interpolation"):
        load_img(tmp_path / "a.png", interpolation="area")


def test_argument_errors(folder):
    root, _ = folder
    for kwargs, match in [
        ({"label_mode": "sparse"}, "label_mode"),
        ({"color_mode": "bgr"}, "color_mode"),
        ({"batch_size": 0}, "batch_size"),
        ({"image_size": (0, 4)}, "image_size"),
        ({"validation_split": 1.5, "subset": "training", "seed": 1}, "validation_split"),
        ({"labels": "folders"}, "labels"),
    ]:
        with pytest.raises(ValueError, match=match):
            image_dataset_from_directory(root, verbose=False, **kwargs)
    with pytest.raises(FileNotFoundError):
        image_dataset_from_directory(root / "missing")
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="No images found"):
        image_dataset_from_directory(root / "empty")


# ----------------------------------------------------------------------------- transforms
def test_rescale_and_normalize():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (2, 3, 3, 2)).astype(np.float32)
    np.testing.assert_allclose(transforms.rescale(x, 1 / 255), x / 255, rtol=1e-6)
    np.testing.assert_allclose(transforms.rescale(x, 2.0, -1.0), 2 * x - 1)
    np.testing.assert_allclose(transforms.normalize(x, [1.0, 2.0], [4.0, 0.0]), (x - [1, 2]) / [2, 1e-7], rtol=1e-6)


@pytest.mark.parametrize("mode", transforms.FLIP_MODES)
def test_flip_twice_is_identity(mode):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 5, 3))
    np.testing.assert_array_equal(transforms.flip(transforms.flip(x, mode), mode), x)
    expected = {"horizontal": x[:, :, ::-1], "vertical": x[:, ::-1], "horizontal_and_vertical": x[:, ::-1, ::-1]}
    np.testing.assert_array_equal(transforms.flip(x, mode), expected[mode])


@pytest.mark.parametrize("size", [(14, 18), (3, 4), (7, 9), (5, 13), (1, 1)])
def test_resize_matches_torch_bilinear(size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 7, 9, 3))
    t = from_torch_layout(torch.nn.functional.interpolate(torch.from_numpy(to_torch_layout(x)), size=size, mode="bilinear",
                                                          align_corners=False, antialias=False))
    np.testing.assert_allclose(transforms.resize(x, size), t, rtol=0, atol=1e-12)
    t = from_torch_layout(torch.nn.functional.interpolate(torch.from_numpy(to_torch_layout(x)), size=size,
                                                          mode="nearest-exact"))
    np.testing.assert_array_equal(transforms.resize(x, size, "nearest"), t)


def test_resize_upsampling_matches_pillow_bilinear():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    pil = np.asarray(Image.fromarray(x, "F").resize((11, 13), Image.Resampling.BILINEAR))   # (W, H) = (11, 13)
    np.testing.assert_allclose(transforms.resize(x[:, :, None], (13, 11))[:, :, 0], pil, atol=1e-5)


@pytest.mark.parametrize("fill_mode", transforms.FILL_MODES)
def test_rotate_by_zero_is_identity(fill_mode):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 7, 2))
    np.testing.assert_allclose(transforms.rotate(x, 0.0, fill_mode=fill_mode), x, atol=1e-12)


@pytest.mark.parametrize("interpolation", transforms.INTERPOLATIONS)
def test_rotate_quarter_turns_equal_rot90(interpolation):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 6, 6, 3))
    for k in (1, 2, 3, -1):
        np.testing.assert_allclose(transforms.rotate(x, 90 * k, interpolation=interpolation),
                                   np.rot90(x, k, axes=(1, 2)), atol=1e-12, err_msg=f"k={k}")
    y = rng.standard_normal((1, 5, 8, 1))   # half a turn works on any shape
    np.testing.assert_allclose(transforms.rotate(y, 180), y[:, ::-1, ::-1], atol=1e-12)


def test_random_rotation_factor_quarter_is_90_degrees():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 5, 5, 1))
    y = transforms.random_rotation(x, (0.25, 0.25), rng=np.random.default_rng(0))
    np.testing.assert_allclose(y, np.rot90(x, 1, axes=(1, 2)), atol=1e-12)


@pytest.mark.parametrize("fill_mode, pad_mode", [("constant", "constant"), ("nearest", "edge"), ("wrap", "wrap"),
                                                  ("reflect", "symmetric")])
@pytest.mark.parametrize("dy, dx", [(2, -3), (-1, 0), (0, 4), (7, -7)])
def test_translate_whole_pixels_matches_padding(fill_mode, pad_mode, dy, dx):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((1, 5, 6, 2))
    p = 8   # pad, then crop the window the shifted image shows
    kwargs = {"constant_values": 0.0} if pad_mode == "constant" else {}
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=pad_mode, **kwargs)
    expected = padded[:, p - dy : p - dy + 5, p - dx : p - dx + 6]
    np.testing.assert_allclose(transforms.translate(x, dy, dx, fill_mode=fill_mode), expected, atol=1e-12)


def test_translate_constant_equals_roll_and_fill():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 6, 6, 1))
    expected = np.roll(x, (2, -1), axis=(1, 2))
    expected[:, :2] = 9.0
    expected[:, :, -1:] = 9.0
    y = transforms.translate(x, 2, -1, fill_mode="constant", fill_value=9.0)
    np.testing.assert_allclose(y, expected, atol=1e-12)
    np.testing.assert_allclose(transforms.translate(x, 2, -1, fill_mode="wrap"), np.roll(x, (2, -1), axis=(1, 2)))


def test_translate_half_pixel_averages_neighbours():
    x = np.arange(5.0).reshape(1, 1, 5, 1) * np.ones((1, 3, 1, 1))
    y = transforms.translate(x, 0, 0.5, fill_mode="nearest")
    np.testing.assert_allclose(y[0, 1, :, 0], [0, 0.5, 1.5, 2.5, 3.5])


def test_zoom():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 9, 9, 1))
    np.testing.assert_allclose(transforms.zoom(x, 1.0), x, atol=1e-12)
    out = transforms.zoom(x, 2.0, fill_mode="constant", fill_value=-5.0, interpolation="nearest")   # zoom out
    i = np.arange(9)
    src = 2 * i - 4                                     # centre 4, step 2
    inside = (src >= 0) & (src < 9)
    expected = np.full_like(x, -5.0)
    expected[:, i[inside][:, None], i[inside][None, :]] = x[:, src[inside][:, None], src[inside][None, :]]
    np.testing.assert_array_equal(out, expected)
    zin = transforms.zoom(x, 0.5, zx=1.0)                # zoom in vertically only: rows 2..6 stretched
    np.testing.assert_allclose(zin[:, ::2], x[:, 2:7], atol=1e-12)
    np.testing.assert_allclose(zin[:, 1::2], (x[:, 2:6] + x[:, 3:7]) / 2, atol=1e-12)


def test_adjust_contrast_formula_and_clipping():
    rng = np.random.default_rng(13)
    x = rng.uniform(0, 255, (3, 4, 5, 2))
    f = np.array([0.5, 1.0, 1.7])
    y = transforms.adjust_contrast(x, f)
    for n in range(3):
        for c in range(2):
            m = x[n, :, :, c].mean()
            np.testing.assert_allclose(y[n, :, :, c], (x[n, :, :, c] - m) * f[n] + m, err_msg=f"image {n} channel {c}")
    np.testing.assert_allclose(y[1], x[1])
    clipped = transforms.adjust_contrast(x, f, value_range=(0, 255))
    np.testing.assert_allclose(clipped, np.clip(y, 0, 255))
    assert y.max() > 255 and clipped.max() == 255


@pytest.mark.parametrize("fill_mode", transforms.FILL_MODES)
@pytest.mark.parametrize("interpolation", transforms.INTERPOLATIONS)
def test_affine_warp_backward_is_the_adjoint(fill_mode, interpolation):
    """<W x, dy> == <x, W^T dy> for a random affine map (reads outside the image included)."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 5, 6, 3))
    A = np.stack([transforms.rotation_matrices(a, 5, 6)[0] for a in (33.0, -71.0)])
    A[:, :, 2] += rng.uniform(-2, 2, (2, 2))
    y = transforms.affine_warp(x, A, (7, 4), fill_mode, interpolation)
    dy = rng.standard_normal(y.shape)
    dx = transforms.affine_warp_backward(dy, A, (5, 6), fill_mode, interpolation)
    assert dx.shape == x.shape
    np.testing.assert_allclose(np.sum(y * dy), np.sum(x * dx), rtol=1e-12)


def test_random_functions_are_seeded():
    rng = np.random.default_rng(15)
    x = rng.uniform(0, 255, (4, 6, 6, 3))
    for fn, kwargs in [
        (transforms.random_flip, {}), (transforms.random_rotation, {"factor": 0.2}),
        (transforms.random_translation, {"height_factor": 0.2, "width_factor": 0.1}),
        (transforms.random_zoom, {"height_factor": 0.3}), (transforms.random_contrast, {"factor": 0.5}),
    ]:
        a = fn(x, rng=np.random.default_rng(1), **kwargs)
        b = fn(x, rng=np.random.default_rng(1), **kwargs)
        c = fn(x, rng=np.random.default_rng(2), **kwargs)
        np.testing.assert_array_equal(a, b, err_msg=fn.__name__)
        assert not np.array_equal(a, c), fn.__name__
        assert a.shape == x.shape and a.dtype == x.dtype


def test_factor_range_errors_name_the_argument():
    assert transforms.factor_range(0.2, "factor") == (-0.2, 0.2)
    assert transforms.factor_range((0.3, -0.1), "factor") == (-0.1, 0.3)
    assert transforms.factor_range(0.2, "factor", bounds=(0, 1), symmetric=False) == (0.2, 0.2)
    for bad in (1.5, (0.1,), "x", True, (0.1, float("nan"))):
        with pytest.raises(ValueError, match=r"RandomX: `factor` must be"):
            transforms.factor_range(bad, "factor", "RandomX")
    with pytest.raises(ValueError, match="fill_mode"):
        transforms.rotate(np.zeros((1, 3, 3, 1)), 10, fill_mode="mirror")
