"""Image preprocessing and augmentation as plain NumPy functions on NHWC batches.

Every function takes a batch ``x`` of shape (N, H, W, C) (a single (H, W, C) image works too) and
returns a new float array; nothing is changed in place. Two kinds:

* exact operations with explicit amounts: ``rescale``, ``normalize``, ``resize``, ``flip``,
  ``rotate``, ``translate``, ``zoom``, ``adjust_contrast``. Amounts may be one number for the whole
  batch or one per image (shape (N,)).
* ``random_*`` versions that draw one amount per image from ``rng`` within a Keras-style ``factor``
  range and call the exact operation; the ``Random*`` layers in ``minicnn.layers.preprocessing``
  use the same samplers with their own seeded generator.

All geometry goes through one helper, ``affine_warp``: an *inverse* mapping. For every output pixel
(i, j) it asks "where in the input does this come from?", gets (u, v) = A @ (i, j, 1), and reads the
input there by bilinear (or nearest) interpolation. Pixel centres sit at integer coordinates and
(u, v) are (row, column)::

    u = A[0, 0] * i + A[0, 1] * j + A[0, 2]
    v = A[1, 0] * i + A[1, 1] * j + A[1, 2]
    y[n, i, j, c] = sum_{k, l in {0, 1}} wu_k * wv_l * x[n, fill(u0 + k), fill(v0 + l), c]
    u0 = floor(u), wu_1 = u - u0, wu_0 = 1 - wu_1        (same for v)

``fill`` decides what lies outside the image, as in Keras (``abcd`` is one row of the image)::

    'reflect'   d c b a | a b c d | d c b a     (mirror about the edge of the last pixel)
    'constant'  k k k k | a b c d | k k k k     (k = fill_value)
    'nearest'   a a a a | a b c d | d d d d
    'wrap'      a b c d | a b c d | a b c d

Because ``y`` is linear in ``x`` for fixed coordinates, its adjoint (``affine_warp_backward``) is
the same taps with the arrows reversed: each ``dy`` value is scattered back to the four input pixels
it was read from, with the same weights. The layers use it for an exact backward pass.
"""

import numpy as np

FILL_MODES = ("reflect", "constant", "nearest", "wrap")
INTERPOLATIONS = ("bilinear", "nearest")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


# ----------------------------------------------------------------------------- helpers
def _as_batch(x):
    """(batch as a float array of rank 4, whether the input was one image)."""
    x = np.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"Expected an image (H, W, C) or a batch (N, H, W, C). Received: shape={x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return (x[None], True) if x.ndim == 3 else (x, False)


def _per_image(value, n, name):
    """A number or an (N,) array -> float64 array of shape (N,)."""
    value = np.asarray(value, dtype=np.float64)
    if value.ndim == 0:
        return np.full(n, float(value))
    if value.shape != (n,):
        raise ValueError(f"`{name}` must be a number or have one value per image, shape ({n},). Received: shape={value.shape}")
    return value


def _check_choice(value, choices, name):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")


def _generator(rng):
    """``rng`` as a Generator: a Generator is used as is, an int seeds one, None means ``config.rng()``."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        from .. import config

        return config.rng()
    return np.random.default_rng(rng)


# ----------------------------------------------------------------------------- value transforms
def rescale(x, scale, offset=0.0):
    """``x * scale + offset`` (``rescale(x, 1 / 255)`` maps [0, 255] to [0, 1])."""
    x, single = _as_batch(x)
    y = x * np.asarray(scale, x.dtype) + np.asarray(offset, x.dtype)
    return y[0] if single else y


def normalize(x, mean, variance, epsilon=1e-7):
    """``(x - mean) / max(sqrt(variance), epsilon)``, broadcasting ``mean``/``variance`` (Keras's Normalization)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    std = np.maximum(np.sqrt(np.asarray(variance, dtype=x.dtype)), epsilon).astype(x.dtype)
    return (x - np.asarray(mean, dtype=x.dtype)) / std


def adjust_contrast(x, factor, value_range=None):
    """Stretch each channel of each image away from its mean by ``factor``.

    ::

        m[n, c] = mean_{i, j} x[n, i, j, c]
        y[n, i, j, c] = (x[n, i, j, c] - m[n, c]) * factor[n] + m[n, c]

    then, as Keras 3's ``RandomContrast`` does, clipped to ``value_range = (low, high)`` when given
    (Keras's default is (0, 255); None: no clipping). ``factor`` 1 is the identity, 0 a flat grey.
    """
    x, single = _as_batch(x)
    f = _per_image(factor, len(x), "factor").astype(x.dtype)[:, None, None, None]
    mean = x.mean(axis=(1, 2), keepdims=True)   # (N, 1, 1, C)
    y = (x - mean) * f + mean
    if value_range is not None:
        y = np.clip(y, value_range[0], value_range[1])
    return y[0] if single else y


# ----------------------------------------------------------------------------- the affine warp
def _fill_index(k, n, fill_mode):
    """Map integer coordinates ``k`` (any value) into 0..n-1; also whether each was inside."""
    inside = (k >= 0) & (k < n)
    if fill_mode == "reflect":          # period 2n: 0..n-1 forwards, then n-1..0
        k = np.mod(k, 2 * n)
        k = np.where(k >= n, 2 * n - 1 - k, k)
    elif fill_mode == "wrap":
        k = np.mod(k, n)
    else:                               # 'nearest' and 'constant' (whose outside taps are masked)
        k = np.clip(k, 0, n - 1)
    return k, inside


def _taps(matrices, input_size, output_size, fill_mode, interpolation):
    """For every output pixel, the input pixels read and their weights.

    Returns a list of ``(rows, cols, weights)``, each of shape (N, OH, OW); with ``'constant'`` a
    tap outside the image has weight 0 here and is accounted for by ``_constant_weight``.
    """
    (H, W), (OH, OW) = input_size, output_size
    A = np.asarray(matrices, dtype=np.float64)
    i, j = np.meshgrid(np.arange(OH, dtype=np.float64), np.arange(OW, dtype=np.float64), indexing="ij")
    u = A[:, 0, 0, None, None] * i + A[:, 0, 1, None, None] * j + A[:, 0, 2, None, None]   # (N, OH, OW)
    v = A[:, 1, 0, None, None] * i + A[:, 1, 1, None, None] * j + A[:, 1, 2, None, None]
    if interpolation == "nearest":
        corners = [(np.floor(u + 0.5), np.floor(v + 0.5), np.ones_like(u))]
    else:
        u0, v0 = np.floor(u), np.floor(v)
        du, dv = u - u0, v - v0
        corners = [
            (u0, v0, (1 - du) * (1 - dv)), (u0, v0 + 1, (1 - du) * dv),
            (u0 + 1, v0, du * (1 - dv)), (u0 + 1, v0 + 1, du * dv),
        ]
    taps = []
    for r, c, w in corners:
        r, r_inside = _fill_index(r.astype(np.int64), H, fill_mode)
        c, c_inside = _fill_index(c.astype(np.int64), W, fill_mode)
        if fill_mode == "constant":
            w = w * (r_inside & c_inside)
        taps.append((r, c, w))
    return taps


def _check_warp_args(fill_mode, interpolation):
    _check_choice(fill_mode, FILL_MODES, "fill_mode")
    _check_choice(interpolation, INTERPOLATIONS, "interpolation")


def affine_warp(x, matrices, output_size=None, fill_mode="reflect", interpolation="bilinear", fill_value=0.0):
    """Resample each image at ``A[n] @ (i, j, 1)``: the one geometric primitive (see the module docstring).

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C)
    matrices : ndarray of shape (N, 2, 3) or (2, 3)
        Maps output (row, col, 1) to input (row, col), pixel centres at integers.
    output_size : (OH, OW), default (H, W)
    fill_mode : 'reflect' | 'constant' | 'nearest' | 'wrap'
    interpolation : 'bilinear' | 'nearest'
    fill_value : float, used by 'constant'

    Returns
    -------
    y : ndarray of shape (N, OH, OW, C), float (x's dtype when x is float, else float32)
    """
    _check_warp_args(fill_mode, interpolation)
    x, single = _as_batch(x)
    N, H, W, C = x.shape
    A = np.broadcast_to(np.asarray(matrices, dtype=np.float64), (N, 2, 3))
    OH, OW = output_size if output_size is not None else (H, W)
    n = np.arange(N)[:, None, None]
    y = np.zeros((N, OH, OW, C), dtype=x.dtype)
    covered = np.zeros((N, OH, OW), dtype=np.float64)
    for r, c, w in _taps(A, (H, W), (OH, OW), fill_mode, interpolation):
        y += w.astype(x.dtype)[..., None] * x[n, r, c]          # x[n, r, c]: (N, OH, OW, C)
        covered += w
    if fill_mode == "constant" and fill_value != 0:
        y += ((1 - covered) * fill_value).astype(x.dtype)[..., None]   # the taps that fell outside
    return y[0] if single else y


def affine_warp_backward(dy, matrices, input_size, fill_mode="reflect", interpolation="bilinear"):
    """The adjoint of ``affine_warp``: ``dx = dL/dx`` given ``dy = dL/dy``.

    ::

        dx[n, r, c, ch] = sum over taps (i, j) that read x[n, r, c] of  w[n, i, j] * dy[n, i, j, ch]

    ``fill_value`` does not depend on ``x``, so it has no gradient.
    """
    _check_warp_args(fill_mode, interpolation)
    dy, single = _as_batch(dy)
    N, OH, OW, C = dy.shape
    H, W = input_size
    A = np.broadcast_to(np.asarray(matrices, dtype=np.float64), (N, 2, 3))
    n = np.arange(N)[:, None, None]
    dx = np.zeros((N, H, W, C), dtype=dy.dtype)
    for r, c, w in _taps(A, (H, W), (OH, OW), fill_mode, interpolation):
        np.add.at(dx, (n, r, c), w.astype(dy.dtype)[..., None] * dy)   # repeated (r, c) accumulate
    return dx[0] if single else dx


# ----------------------------------------------------------------------------- matrices
def rotation_matrices(angle, height, width):
    """(N, 2, 3) matrices rotating counter-clockwise by ``angle`` degrees about the image centre.

    With centre (ci, cj) = ((H - 1) / 2, (W - 1) / 2) and t = radians(angle), output pixel (i, j)
    reads the input at::

        u = ci + cos(t) * (i - ci) + sin(t) * (j - cj)
        v = cj - sin(t) * (i - ci) + cos(t) * (j - cj)

    so 90 degrees on a square image is exactly ``np.rot90`` (counter-clockwise, as displayed).
    """
    t = np.deg2rad(np.atleast_1d(np.asarray(angle, dtype=np.float64)))
    ci, cj = (height - 1) / 2, (width - 1) / 2
    cos, sin = np.cos(t), np.sin(t)
    A = np.zeros((len(t), 2, 3))
    A[:, 0, 0], A[:, 0, 1], A[:, 0, 2] = cos, sin, ci - cos * ci - sin * cj
    A[:, 1, 0], A[:, 1, 1], A[:, 1, 2] = -sin, cos, cj + sin * ci - cos * cj
    return A


def translation_matrices(dy, dx):
    """Shift content down by ``dy`` and right by ``dx`` pixels: ``u = i - dy, v = j - dx``."""
    dy, dx = np.broadcast_arrays(np.atleast_1d(np.asarray(dy, np.float64)), np.atleast_1d(np.asarray(dx, np.float64)))
    A = np.zeros((len(dy), 2, 3))
    A[:, 0, 0], A[:, 0, 2] = 1, -dy
    A[:, 1, 1], A[:, 1, 2] = 1, -dx
    return A


def zoom_matrices(zy, zx, height, width):
    """Sample with step ``zy``/``zx`` about the centre: ``u = ci + zy * (i - ci)``; > 1 zooms out."""
    zy, zx = np.broadcast_arrays(np.atleast_1d(np.asarray(zy, np.float64)), np.atleast_1d(np.asarray(zx, np.float64)))
    ci, cj = (height - 1) / 2, (width - 1) / 2
    A = np.zeros((len(zy), 2, 3))
    A[:, 0, 0], A[:, 0, 2] = zy, ci * (1 - zy)
    A[:, 1, 1], A[:, 1, 2] = zx, cj * (1 - zx)
    return A


def resize_matrix(input_size, output_size):
    """Half-pixel-centre scaling (TF ``half_pixel_centers=True``, PyTorch ``align_corners=False``)::

        u = (i + 0.5) * H / OH - 0.5        v = (j + 0.5) * W / OW - 0.5

    Used with ``fill_mode='nearest'``, which clamps at the border exactly as those libraries do.
    """
    (H, W), (OH, OW) = input_size, output_size
    return np.array([[[H / OH, 0, 0.5 * H / OH - 0.5], [0, W / OW, 0.5 * W / OW - 0.5]]])


# ----------------------------------------------------------------------------- exact geometric ops
def resize(x, size, interpolation="bilinear"):
    """Resize to ``size = (height, width)``, as ``tf.image.resize`` / Keras ``Resizing`` (no antialiasing).

    Bilinear equals ``torch.nn.functional.interpolate(mode='bilinear', align_corners=False,
    antialias=False)``; 'nearest' picks ``floor((i + 0.5) * H / OH)`` (PyTorch's 'nearest-exact').
    Downscaling by a large factor without antialiasing skips pixels, like those libraries do.
    """
    x, single = _as_batch(x)
    OH, OW = size
    y = affine_warp(x, resize_matrix(x.shape[1:3], (OH, OW)), (OH, OW), "nearest", interpolation)
    return y[0] if single else y


def flip(x, mode="horizontal"):
    """Mirror every image: 'horizontal' reverses columns (left-right), 'vertical' rows, or both."""
    _check_choice(mode, FLIP_MODES, "mode")
    x, single = _as_batch(x)
    y = x
    if mode in ("horizontal", "horizontal_and_vertical"):
        y = y[:, :, ::-1]
    if mode in ("vertical", "horizontal_and_vertical"):
        y = y[:, ::-1]
    y = np.ascontiguousarray(y)
    return y[0] if single else y


def rotate(x, angle, fill_mode="reflect", interpolation="bilinear", fill_value=0.0):
    """Rotate counter-clockwise by ``angle`` degrees (one number, or one per image) about the centre."""
    x, single = _as_batch(x)
    A = rotation_matrices(_per_image(angle, len(x), "angle"), *x.shape[1:3])
    y = affine_warp(x, A, None, fill_mode, interpolation, fill_value)
    return y[0] if single else y


def translate(x, dy, dx, fill_mode="reflect", interpolation="bilinear", fill_value=0.0):
    """Shift content ``dy`` pixels down and ``dx`` pixels right (negative: up / left); fractions interpolate."""
    x, single = _as_batch(x)
    A = translation_matrices(_per_image(dy, len(x), "dy"), _per_image(dx, len(x), "dx"))
    y = affine_warp(x, A, None, fill_mode, interpolation, fill_value)
    return y[0] if single else y


def zoom(x, zy, zx=None, fill_mode="reflect", interpolation="bilinear", fill_value=0.0):
    """Zoom about the centre with sampling steps ``zy`` (rows) and ``zx`` (columns, default ``zy``).

    A step > 1 shows more of the scene (zoom out, content shrinks), < 1 magnifies (zoom in); it is
    Keras's ``1 + factor`` of ``RandomZoom``.
    """
    x, single = _as_batch(x)
    zy = _per_image(zy, len(x), "zy")
    zx = zy if zx is None else _per_image(zx, len(x), "zx")
    A = zoom_matrices(zy, zx, *x.shape[1:3])
    y = affine_warp(x, A, None, fill_mode, interpolation, fill_value)
    return y[0] if single else y


# ----------------------------------------------------------------------------- random factors (Keras semantics)
def factor_range(factor, name, owner="", bounds=(-1.0, 1.0), symmetric=True):
    """Keras's ``factor`` argument as ``(lower, upper)``, or a ValueError naming ``owner`` and ``name``.

    A number f gives (-|f|, |f|) (``symmetric``) or (|f|, |f|); a pair gives it sorted. Both ends
    must lie in ``bounds``.
    """
    prefix = f"{owner}: " if owner else ""
    message = (
        f"{prefix}`{name}` must be a number or a pair of numbers in [{bounds[0]}, {bounds[1]}]. "
        f"Received: {name}={factor!r}"
    )
    if isinstance(factor, (bool, np.bool_)):
        raise ValueError(message)
    if isinstance(factor, (int, float, np.integer, np.floating)):
        f = abs(float(factor))
        lower, upper = (-f, f) if symmetric else (f, f)
    elif isinstance(factor, (tuple, list)) and len(factor) == 2 and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in factor
    ):
        lower, upper = sorted(float(v) for v in factor)
    else:
        raise ValueError(message)
    if not (bounds[0] <= lower and upper <= bounds[1]) or not np.isfinite([lower, upper]).all():
        raise ValueError(message)
    return lower, upper


def sample_flips(rng, n, mode):
    """(N, 2) booleans: flip image n left-right? / up-down? Each with probability 1/2 where ``mode`` allows."""
    _check_choice(mode, FLIP_MODES, "mode")
    flips = rng.random((n, 2)) < 0.5
    flips[:, 0] &= mode in ("horizontal", "horizontal_and_vertical")
    flips[:, 1] &= mode in ("vertical", "horizontal_and_vertical")
    return flips


def flip_each(x, flips):
    """Flip image n left-right where ``flips[n, 0]`` and up-down where ``flips[n, 1]`` (its own inverse)."""
    x, single = _as_batch(x)
    y = x.copy()
    y[flips[:, 0]] = y[flips[:, 0], :, ::-1]
    y[flips[:, 1]] = y[flips[:, 1], ::-1]
    return y[0] if single else y


def random_flip(x, mode="horizontal_and_vertical", rng=None):
    """Flip each image with probability 1/2 (per allowed axis), drawing from ``rng``."""
    x, single = _as_batch(x)
    y = flip_each(x, sample_flips(_generator(rng), len(x), mode))
    return y[0] if single else y


def random_rotation(x, factor, rng=None, fill_mode="reflect", interpolation="bilinear", fill_value=0.0):
    """Rotate each image by ``uniform(lower, upper) * 360`` degrees, ``factor`` as in Keras's RandomRotation."""
    lower, upper = factor_range(factor, "factor")
    x, single = _as_batch(x)
    angle = _generator(rng).uniform(lower, upper, len(x)) * 360.0
    y = rotate(x, angle, fill_mode, interpolation, fill_value)
    return y[0] if single else y


def random_translation(x, height_factor, width_factor, rng=None, fill_mode="reflect", interpolation="bilinear",
                       fill_value=0.0):
    """Shift each image by ``uniform(range) * H`` rows and ``uniform(range) * W`` columns (Keras's RandomTranslation)."""
    hl, hu = factor_range(height_factor, "height_factor")
    wl, wu = factor_range(width_factor, "width_factor")
    x, single = _as_batch(x)
    g = _generator(rng)
    dy = g.uniform(hl, hu, len(x)) * x.shape[1]
    dx = g.uniform(wl, wu, len(x)) * x.shape[2]
    y = translate(x, dy, dx, fill_mode, interpolation, fill_value)
    return y[0] if single else y


def random_zoom(x, height_factor, width_factor=None, rng=None, fill_mode="reflect", interpolation="bilinear",
                fill_value=0.0):
    """Zoom each image by steps ``1 + uniform(range)`` (Keras's RandomZoom: positive zooms out).

    ``width_factor=None`` uses the same step for both axes (keeps the aspect ratio).
    """
    hl, hu = factor_range(height_factor, "height_factor", bounds=(-1.0, np.inf))
    x, single = _as_batch(x)
    g = _generator(rng)
    zy = 1.0 + g.uniform(hl, hu, len(x))
    if width_factor is None:
        zx = zy
    else:
        wl, wu = factor_range(width_factor, "width_factor", bounds=(-1.0, np.inf))
        zx = 1.0 + g.uniform(wl, wu, len(x))
    y = zoom(x, zy, zx, fill_mode, interpolation, fill_value)
    return y[0] if single else y


def random_contrast(x, factor, rng=None, value_range=(0, 255)):
    """Adjust each image's contrast by ``uniform(1 - lower, 1 + upper)`` (Keras's RandomContrast)."""
    lower, upper = factor_range(factor, "factor", bounds=(0.0, 1.0), symmetric=False)
    x, single = _as_batch(x)
    f = _generator(rng).uniform(1.0 - lower, 1.0 + upper, len(x))
    y = adjust_contrast(x, f, value_range)
    return y[0] if single else y
