"""Every Pillow mode in common use loads as 8-bit values scaled, not clipped (one test per mode).

Expected values are computed here from the stored samples with the textbook formulas (16-bit:
v / 257; float: 255 f; luma: ITU-R 601-2 0.299 R + 0.587 G + 0.114 B; CMYK: (255 - c)(255 - k) / 255),
not by asking Pillow to convert."""

import numpy as np
import pytest
from PIL import Image

from minicnn.data import image_dataset_from_directory, img_to_array, load_img

H, W = 4, 16


def stored(tmp_path, img, fmt, mode):
    """Write ``img``, read it back, and check the file really holds ``mode`` (else the test covers nothing)."""
    path = tmp_path / f"image.{fmt.lower()}"
    img.save(path, fmt)
    with Image.open(path) as back:
        assert back.mode == mode, (mode, back.mode)
    return path


def loaded(path, color_mode):
    return img_to_array(load_img(path, color_mode=color_mode), dtype="float64")


def luma(rgb):
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def ramp8():
    return np.arange(H * W, dtype=np.uint8).reshape(H, W) * 4   # 0, 4, ..., 252


def colours(rng):
    return rng.integers(0, 256, (H, W, 3)).astype(np.uint8)


def assert_gray_and_rgb(path, gray, rgb, gray_atol=0.0):
    np.testing.assert_allclose(loaded(path, "grayscale")[..., 0], gray, atol=gray_atol, err_msg="grayscale")
    np.testing.assert_array_equal(loaded(path, "rgb"), rgb, err_msg="rgb")


def test_mode_1(tmp_path):
    bits = (np.arange(H * W).reshape(H, W) % 3) == 0
    path = stored(tmp_path, Image.fromarray(bits), "PNG", "1")
    gray = 255.0 * bits
    assert_gray_and_rgb(path, gray, np.repeat(gray[..., None], 3, axis=-1))


def test_mode_L(tmp_path):
    v = ramp8()
    path = stored(tmp_path, Image.fromarray(v), "PNG", "L")
    assert_gray_and_rgb(path, v, np.repeat(v[..., None], 3, axis=-1))


def test_mode_LA(tmp_path):
    v, alpha = ramp8(), np.full((H, W), 7, np.uint8)
    path = stored(tmp_path, Image.fromarray(np.stack([v, alpha], -1), mode="LA"), "PNG", "LA")
    assert_gray_and_rgb(path, v, np.repeat(v[..., None], 3, axis=-1))   # alpha is dropped


def test_mode_P(tmp_path):
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (8, 3)).astype(np.uint8)
    index = rng.integers(0, 8, (H, W)).astype(np.uint8)
    img = Image.fromarray(index, mode="P")
    img.putpalette(palette.reshape(-1).tolist() + [0] * (768 - palette.size))
    path = stored(tmp_path, img, "PNG", "P")
    rgb = palette[index]
    assert_gray_and_rgb(path, luma(rgb.astype(float)), rgb, gray_atol=1.0)   # Pillow rounds luma in integers


def test_mode_RGB(tmp_path):
    rgb = colours(np.random.default_rng(1))
    path = stored(tmp_path, Image.fromarray(rgb), "PNG", "RGB")
    assert_gray_and_rgb(path, luma(rgb.astype(float)), rgb, gray_atol=1.0)


def test_mode_RGBA(tmp_path):
    rng = np.random.default_rng(2)
    rgba = np.concatenate([colours(rng), rng.integers(0, 256, (H, W, 1)).astype(np.uint8)], -1)
    path = stored(tmp_path, Image.fromarray(rgba), "PNG", "RGBA")
    np.testing.assert_array_equal(loaded(path, "rgba"), rgba)
    assert_gray_and_rgb(path, luma(rgba[..., :3].astype(float)), rgba[..., :3], gray_atol=1.0)


def test_mode_I16_a_16_bit_ramp_keeps_256_levels(tmp_path):
    v = np.arange(H * W * 4, dtype=np.uint16).reshape(H * 4, W) * 257   # 0, 257, ..., 65535
    v[-1, -1] = 65535
    path = stored(tmp_path, Image.fromarray(v), "PNG", "I;16")
    gray = np.rint(v / 257)
    got = loaded(path, "grayscale")[..., 0]
    np.testing.assert_array_equal(got, gray)
    assert len(np.unique(got)) == 256 and got.max() == 255   # clipping would give {0, 255}
    np.testing.assert_array_equal(loaded(path, "rgb"), np.repeat(gray[..., None], 3, axis=-1))


def test_mode_I_holds_16_bit_samples(tmp_path):
    v = (np.arange(H * W, dtype=np.int32).reshape(H, W) * 1000) % 65536
    path = stored(tmp_path, Image.fromarray(v), "TIFF", "I")
    gray = np.rint(v / 257)
    assert_gray_and_rgb(path, gray, np.repeat(gray[..., None], 3, axis=-1))
    outside = v.copy()
    outside[0, 0] = 70000
    path = stored(tmp_path, Image.fromarray(outside), "TIFF", "I")
    with pytest.raises(ValueError, match=r"mode 'I' with values \[.*70000\].*\[0, 65535\]"):
        load_img(path)


def test_mode_F_holds_floats_in_0_1(tmp_path):
    f = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    path = stored(tmp_path, Image.fromarray(f), "TIFF", "F")
    gray = np.rint(255 * f.astype(np.float64))
    assert_gray_and_rgb(path, gray, np.repeat(gray[..., None], 3, axis=-1))
    for bad in (np.float32(1.5), np.float32("nan")):
        g = f.copy()
        g[1, 1] = bad
        path = stored(tmp_path, Image.fromarray(g), "TIFF", "F")
        with pytest.raises(ValueError, match="mode 'F'"):
            load_img(path)


def test_mode_CMYK(tmp_path):
    rng = np.random.default_rng(3)
    cmyk = rng.integers(0, 256, (H, W, 4)).astype(np.uint8)
    path = stored(tmp_path, Image.fromarray(cmyk, mode="CMYK"), "TIFF", "CMYK")
    c = cmyk.astype(np.float64)
    rgb = (255 - c[..., :3]) * (255 - c[..., 3:]) / 255   # ink coverage multiplies
    np.testing.assert_allclose(loaded(path, "rgb"), rgb, atol=0.5)   # rounded to integers


def test_a_folder_of_16_bit_pngs_streams_scaled_values(tmp_path):
    v = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 1024) + 3
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.fromarray(v).save(tmp_path / label / "x.png")
    ds = image_dataset_from_directory(tmp_path, color_mode="grayscale", image_size=(H, W), shuffle=False)
    x, _ = next(iter(ds))
    np.testing.assert_array_equal(x[0, ..., 0], np.rint(v / 257))
