"""What the training images looked like, in a few numbers a new image can be compared with.

A model knows only the kind of image it was trained on. Fashion-MNIST items are light objects on
a black background; a product photo is usually a dark object on a white one, and a model trained
on the first reads the second confidently and wrongly. ``fit`` keeps, per channel, the mean
brightness of each training image's border (its outer ring of pixels) and of the whole image::

    border[n, c] = mean over the outer ring (BORDER_FRACTION of the side, at least 1 pixel) of x[n, :, :, c]
    whole[n, c]  = mean over all pixels of x[n, :, :, c]

summarised over n by mean, standard deviation, minimum and maximum. They are stored in the model
file under ``input_stats`` (a flat dict of lists of floats, one per channel) and ``minicnn predict``
warns when an image lies outside ``[min - 2 std, max + 2 std]`` of either. The values are in the
units the model takes (0..255 for ``minicnn train``, whatever a script passed to ``fit``).
"""

import numpy as np

#: Width of the border ring as a fraction of the image's smaller side (28 pixels -> 2).
BORDER_FRACTION = 1 / 14
KEYS = ("border_mean", "border_std", "border_min", "border_max", "image_mean", "image_std", "image_min", "image_max")


def _ring(height, width):
    """Boolean mask of the border ring of an ``height x width`` image."""
    w = max(1, int(round(min(height, width) * BORDER_FRACTION)))
    mask = np.ones((height, width), dtype=bool)
    mask[w : height - w, w : width - w] = False
    return mask


def image_brightness(x):
    """``(border, whole)``: each image's mean brightness on its border and overall, shapes (N, C), float64."""
    x = np.asarray(x)
    ring = _ring(x.shape[1], x.shape[2])
    return x[:, ring, :].mean(axis=1, dtype=np.float64), x.mean(axis=(1, 2), dtype=np.float64)


class InputStats:
    """Running per-channel summaries of ``image_brightness`` over the batches ``add`` sees."""

    def __init__(self):
        self.count, self._sums = 0, None

    def add(self, x):
        """Count a batch of NHWC images (other shapes are ignored: there is no border to speak of)."""
        if np.ndim(x) != 4 or len(x) == 0:
            return
        border, whole = image_brightness(x)
        parts = []
        for v in (border, whole):
            parts += [v.sum(axis=0), (v * v).sum(axis=0), v.min(axis=0), v.max(axis=0)]
        if self._sums is None:
            self._sums = parts
        else:
            s = self._sums
            self._sums = [s[0] + parts[0], s[1] + parts[1], np.minimum(s[2], parts[2]), np.maximum(s[3], parts[3]),
                          s[4] + parts[4], s[5] + parts[5], np.minimum(s[6], parts[6]), np.maximum(s[7], parts[7])]
        self.count += len(x)

    def result(self):
        """The ``input_stats`` dict (``KEYS`` -> list of one float per channel), or None if nothing was added."""
        if not self.count:
            return None
        out = {}
        for prefix, (total, squares, low, high) in (("border", self._sums[:4]), ("image", self._sums[4:])):
            mean = total / self.count
            out[f"{prefix}_mean"] = mean
            out[f"{prefix}_std"] = np.sqrt(np.maximum(squares / self.count - mean * mean, 0.0))
            out[f"{prefix}_min"], out[f"{prefix}_max"] = low, high
        return {k: [float(v) for v in out[k]] for k in KEYS}


def input_stats(x):
    """``InputStats`` of one array of NHWC images."""
    stats = InputStats()
    stats.add(x)
    return stats.result()


def unusual(stats, x):
    """For each image of ``x``, a sentence saying how it differs from the training images, or None.

    An image is unusual when, in some channel, its border or overall brightness lies outside
    ``[min - 2 std, max + 2 std]`` of the training images'. A border brighter than in training on
    a model trained on dark backgrounds adds the hint to try ``--invert``.
    """
    if not stats or np.ndim(x) != 4:
        return [None] * len(x)
    border, whole = image_brightness(x)
    out = []
    for n in range(len(x)):
        reasons, brighter_border = [], False
        for prefix, values, what in (("border", border[n], "border"), ("image", whole[n], "overall brightness")):
            mean, std = np.asarray(stats[f"{prefix}_mean"]), np.asarray(stats[f"{prefix}_std"])
            low, high = np.asarray(stats[f"{prefix}_min"]) - 2 * std, np.asarray(stats[f"{prefix}_max"]) + 2 * std
            for c in np.flatnonzero((values < low) | (values > high)):
                channel = "" if len(values) == 1 else f" (channel {c})"
                reasons.append(f"its {what}{channel} is {values[c]:.3g}, the training images' "
                               f"{stats[prefix + '_min'][c]:.3g} to {stats[prefix + '_max'][c]:.3g} (mean {mean[c]:.3g})")
                brighter_border |= prefix == "border" and values[c] > high[c]
        if not reasons:
            out.append(None)
            continue
        text = "unlike the training images: " + "; ".join(reasons) + "."
        if brighter_border and np.all(np.asarray(stats["border_mean"]) < np.asarray(stats["image_mean"])):
            text += (" The model learned light objects on a dark background; for a dark object on a light "
                     "background try --invert.")
        else:
            text += " Its prediction may be unreliable."
        out.append(text)
    return out


def checked(value, channels=None):
    """``value`` if it is a valid ``input_stats`` dict (as read from a file), else a ValueError naming the problem.

    Exactly ``KEYS``, each a list of finite floats, one per channel (``channels`` when known).
    """
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(KEYS):
        found = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ValueError(f"input_stats must be a dict with the keys {list(KEYS)}, found {found}")
    for key in KEYS:
        v = value[key]
        if not (isinstance(v, list) and v and all(isinstance(f, (int, float)) and not isinstance(f, bool)
                                                  and np.isfinite(f) for f in v)):
            raise ValueError(f"input_stats[{key!r}] must be a non-empty list of finite numbers, found {v!r:.80}")
        if len(v) != len(value[KEYS[0]]) or (channels is not None and len(v) != channels):
            raise ValueError(f"input_stats[{key!r}] has {len(v)} values, expected one per channel "
                             f"({channels if channels is not None else len(value[KEYS[0]])})")
    return {k: [float(f) for f in value[k]] for k in KEYS}
