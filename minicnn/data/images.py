"""Image files: ``load_img``, ``img_to_array`` and ``image_dataset_from_directory``, as in Keras.

>>> from minicnn.data import image_dataset_from_directory
>>> train_ds, val_ds = image_dataset_from_directory(                       # doctest: +SKIP
...     "photos/", image_size=(224, 224), validation_split=0.2, subset="both", seed=1337)
Found 2000 files belonging to 2 classes.
Using 1600 files for training.
Using 400 files for validation.
>>> for x, y in train_ds: ...                   # x float32 (32, 224, 224, 3) in [0, 255], y int32 (32,)

The dataset object streams: it keeps only the list of file paths and labels, and decodes each batch
with Pillow when it is asked for, so a folder far larger than memory trains fine. Iterating it
again is another epoch, reshuffled (when ``shuffle=True``) by its own seeded generator.

One resize for training and inference. Keras's ``load_img`` resizes with 'nearest' by default
while ``image_dataset_from_directory`` uses 'bilinear', and the two also use different resize code
(Pillow vs ``tf.image.resize``), so a model can see slightly different pixels at prediction time
than in training. In minicnn both default to 'bilinear' and the dataset decodes every file *with*
``load_img`` + ``img_to_array``: a photo loaded for ``predict`` is bit-for-bit what training saw.
(Pillow's bilinear filter averages over the source pixels when shrinking, i.e. it antialiases,
whereas ``tf.image.resize`` without ``antialias`` samples; for the array-level ``Resizing`` layer
and ``transforms.resize`` minicnn follows TensorFlow/PyTorch.)
"""

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np

ALLOWED_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
COLOR_MODES = {"grayscale": ("L", 1), "rgb": ("RGB", 3), "rgba": ("RGBA", 4)}
LABEL_MODES = ("int", "categorical", "binary", None)
SUBSETS = ("training", "validation", "both")


def _resample(interpolation):
    from PIL import Image

    filters = {
        "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
        "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
    }
    if interpolation not in filters:
        raise ValueError(f"`interpolation` must be one of {tuple(filters)}. Received: interpolation={interpolation!r}")
    return filters[interpolation]


def load_img(path, color_mode="rgb", target_size=None, interpolation="bilinear"):
    """Load an image file as a Pillow image, converted and optionally resized.

    Parameters
    ----------
    path : str, Path or a binary file object
    color_mode : 'rgb' | 'grayscale' | 'rgba'
    target_size : (height, width) or None (keep the file's size)
    interpolation : 'bilinear' (default; Keras's is 'nearest', see the module docstring), 'nearest',
        'bicubic', 'lanczos', 'box' or 'hamming': Pillow's filters.

    Returns
    -------
    PIL.Image.Image in mode 'RGB', 'L' or 'RGBA', 8 bits per channel (see ``to_8bit`` for how 16-bit,
    32-bit and float images are scaled). Unreadable files raise Pillow's errors
    (``PIL.UnidentifiedImageError``, an OSError, for a file that is not an image).
    """
    from PIL import Image

    if color_mode not in COLOR_MODES:
        raise ValueError(f"`color_mode` must be one of {tuple(COLOR_MODES)}. Received: color_mode={color_mode!r}")
    resample = _resample(interpolation)
    if hasattr(path, "read"):
        img = Image.open(path)
    else:
        with open(path, "rb") as f:   # read fully, so no file handle outlives the call
            img = Image.open(io.BytesIO(f.read()))
    img.load()   # decode now: a corrupt file fails here, not later
    img = to_8bit(img)
    mode = COLOR_MODES[color_mode][0]
    if img.mode != mode:
        img = img.convert(mode)
    if target_size is not None:
        height, width = target_size
        if img.size != (width, height):
            img = img.resize((width, height), resample)
    return img


def to_8bit(img):
    """``img`` with 8-bit samples (0..255), scaled rather than clipped; 8-bit modes are returned as is.

    ==================  =======================  ==========================================
    Pillow mode         samples                  becomes
    ==================  =======================  ==========================================
    1, L, LA, P, RGB,   0..255 (1: 0 or 1)       unchanged (``convert`` gives 1 -> 0/255)
    RGBA, CMYK, ...
    I;16, I;16B, ...    uint16 0..65535          L, ``round(v / 257)`` (65535 -> 255)
    I                   int32, 16-bit PNG/TIFF   L, ``round(v / 257)``; outside 0..65535 refused
    F                   float32 in [0, 1]        L, ``round(255 v)``; outside [0, 1] or NaN refused
    ==================  =======================  ==========================================

    Pillow's own ``convert('L')`` clips those modes at 255 instead, so a 16-bit ramp turns into
    {0, 255}. Refused images raise a ValueError that names the mode and the range found.
    """
    from PIL import Image

    mode = img.mode
    if not (mode.startswith("I") or mode == "F"):
        return img
    x = np.asarray(img)
    if mode == "F":
        lo, hi, scale = 0.0, 1.0, 255.0
    else:   # I;16*, I: 16-bit samples (Pillow turns I;16 into I for many operations)
        lo, hi, scale = 0, 65535, 1 / 257
    if x.size and (np.isnan(x).any() or x.min() < lo or x.max() > hi):
        found = "NaN" if np.isnan(x).any() else f"[{x.min()}, {x.max()}]"
        raise ValueError(f"Image mode {mode!r} with values {found}: minicnn reads this mode as values in "
                         f"[{lo}, {hi}]. Convert the image to 8 bits first.")
    return Image.fromarray(np.rint(x.astype(np.float64) * scale).astype(np.uint8))   # 2-D uint8: mode L


def img_to_array(img, dtype=None):
    """A Pillow image as an array of shape (H, W, C) (C = 1 for grayscale), values unchanged (0..255).

    ``dtype`` defaults to minicnn's float type (``minicnn.get_floatx()``, float32 unless changed).
    """
    from .. import config

    x = np.asarray(img, dtype=dtype or config.get_floatx())
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ValueError(f"Unsupported image shape: {x.shape}")
    return x


# ----------------------------------------------------------------------------- indexing a folder
def _list_images(folder, follow_links):
    """Image files under ``folder`` (recursively, hidden folders skipped), sorted by (folder, name) as Keras does."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=follow_links):
        dirs[:] = [d for d in dirs if not d.startswith(".")]   # e.g. .ipynb_checkpoints
        for name in files:
            if name.lower().endswith(ALLOWED_FORMATS):
                found.append((root, name))
    return [os.path.join(root, name) for root, name in sorted(found)]


def _index_directory(directory, labels, class_names, follow_links):
    """(file_paths, labels or None, class_names) before any shuffling, in Keras's order."""
    if labels == "inferred":
        subdirs = sorted(
            e.name for e in os.scandir(directory) if e.is_dir(follow_symlinks=follow_links) and not e.name.startswith(".")
        )
        if class_names is not None:
            if not set(class_names) <= set(subdirs) or len(set(class_names)) != len(class_names):
                raise ValueError(
                    "The `class_names` passed did not match the names of the subdirectories of the target "
                    f"directory. Expected: {subdirs} (or a subset of it), but received: class_names={class_names}"
                )
            subdirs = list(class_names)   # the order given defines the label numbers
        paths, ys = [], []
        for k, name in enumerate(subdirs):
            files = _list_images(os.path.join(directory, name), follow_links)
            paths += files
            ys += [k] * len(files)
        return paths, np.asarray(ys, dtype=np.int64), list(subdirs)
    paths = _list_images(directory, follow_links)
    if labels is None:
        return paths, None, None
    ys = np.asarray(labels)
    if ys.ndim != 1 or len(ys) != len(paths) or not np.issubdtype(ys.dtype, np.integer) or (ys.size and ys.min() < 0):
        raise ValueError(
            "Expected `labels` to be a list of non-negative integers, one per image file in the directory "
            f"({len(paths)} found). Received: {len(ys)} labels"
        )
    names = list(class_names) if class_names is not None else [str(i) for i in range(int(ys.max(initial=-1)) + 1)]
    return paths, ys.astype(np.int64), names


class ImageDataset:
    """Batches ``(x, y)`` decoded from image files on demand; iterate once per epoch.

    Attributes
    ----------
    file_paths : list of str      the files of this dataset, in the base (pre-epoch) order
    labels : ndarray of int or None   their labels, same order
    class_names : list of str or None
    batch_size, image_size, color_mode, label_mode, shuffle, interpolation

    Each ``iter()`` decodes ``batch_size`` files at a time with ``load_img`` + ``img_to_array``:
    ``x`` float32 (B, H, W, C) in [0, 255]; ``y`` int32 (B,) ('int'), float32 one-hot (B, K)
    ('categorical') or float32 (B, 1) ('binary'); only ``x`` when ``label_mode`` is None.
    A file that cannot be decoded is left out of its batch with a ``warnings.warn`` naming it
    (once; afterwards it is skipped quietly), so one bad file never stops a long run. The last
    batch may be smaller; ``len(ds)`` is ``ceil(len(file_paths) / batch_size)``.
    """

    def __init__(self, file_paths, labels, class_names, label_mode="int", color_mode="rgb", batch_size=32,
                 image_size=(256, 256), interpolation="bilinear", shuffle=True, seed=None):
        self.file_paths = list(file_paths)
        self.labels = labels
        self.class_names = class_names
        self.label_mode = label_mode
        self.color_mode = color_mode
        self.batch_size = batch_size
        self.image_size = tuple(image_size)
        self.interpolation = interpolation
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._unreadable = set()

    def __len__(self):
        return math.ceil(len(self.file_paths) / self.batch_size)

    @property
    def element_shape(self):
        """Shape of one image, ``(H, W, C)``."""
        return (*self.image_size, COLOR_MODES[self.color_mode][1])

    def __repr__(self):
        channels = COLOR_MODES[self.color_mode][1]
        return (
            f"<ImageDataset files={len(self.file_paths)} batches={len(self)} "
            f"x=(None, {self.image_size[0]}, {self.image_size[1]}, {channels}) float32 label_mode={self.label_mode!r}>"
        )

    def _decode(self, path):
        """The image as float32 (H, W, C), or None (with a warning the first time) if unreadable."""
        if path in self._unreadable:
            return None
        try:
            img = load_img(path, self.color_mode, self.image_size, self.interpolation)
            return img_to_array(img, dtype="float32")
        except Exception as e:   # any decoder error: skip the file, keep the run going
            self._unreadable.add(path)
            warnings.warn(f"Skipping unreadable image file {path}: {type(e).__name__}: {e}", stacklevel=3)
            return None

    def _encode(self, ys):
        if self.label_mode == "int":
            return ys.astype(np.int32)
        if self.label_mode == "binary":
            return ys.astype(np.float32)[:, None]
        return np.eye(len(self.class_names), dtype=np.float32)[ys]   # categorical

    def __iter__(self):
        n = len(self.file_paths)
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, n, self.batch_size):
            batch = [(k, self._decode(self.file_paths[k])) for k in order[start : start + self.batch_size]]
            batch = [(k, x) for k, x in batch if x is not None]
            if not batch:
                continue
            x = np.stack([x for _, x in batch])                  # (B, H, W, C)
            if self.label_mode is None:
                yield x
            else:
                yield x, self._encode(self.labels[[k for k, _ in batch]])


def _check_args(labels, label_mode, class_names, color_mode, batch_size, image_size, validation_split, subset,
                interpolation, shuffle, seed):
    if not (isinstance(labels, (list, tuple)) or labels is None or labels == "inferred"):
        raise ValueError(
            "`labels` must be 'inferred', None, or a list/tuple of integer labels, one per image file. "
            f"Received: labels={labels!r}"
        )
    if label_mode not in LABEL_MODES:
        raise ValueError(f"`label_mode` must be one of {LABEL_MODES}. Received: label_mode={label_mode!r}")
    if class_names is not None and labels is None:
        raise ValueError("`class_names` needs labels='inferred' or explicit labels. Received: labels=None")
    if color_mode not in COLOR_MODES:
        raise ValueError(f"`color_mode` must be one of {tuple(COLOR_MODES)}. Received: color_mode={color_mode!r}")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if (
        not isinstance(image_size, (tuple, list)) or len(image_size) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        raise ValueError(f"`image_size` must be (height, width) of positive integers. Received: image_size={image_size!r}")
    _resample(interpolation)
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(f"`validation_split` must be between 0 and 1. Received: validation_split={validation_split!r}")
    if subset not in (None, *SUBSETS):
        raise ValueError(f"`subset` must be one of {SUBSETS} or None. Received: subset={subset!r}")
    if (subset is None) != (validation_split is None):
        raise ValueError(
            "`validation_split` and `subset` go together: pass both or neither. "
            f"Received: validation_split={validation_split!r}, subset={subset!r}"
        )
    if validation_split is not None and shuffle and seed is None:
        raise ValueError(
            "If using `validation_split` and shuffling the data, you must provide a `seed` argument, to make sure "
            "that there is no overlap between the training and validation subset."
        )


def image_dataset_from_directory(
    directory, labels="inferred", label_mode="int", class_names=None, color_mode="rgb", batch_size=32,
    image_size=(256, 256), shuffle=True, seed=None, validation_split=None, subset=None, interpolation="bilinear",
    follow_links=False, verbose=True,
):
    """A streaming dataset of labelled images from a folder tree, as ``keras.utils.image_dataset_from_directory``.

    With ``labels='inferred'`` every sub-folder of ``directory`` is a class; class names are the
    sub-folder names in alphanumeric order (or ``class_names``, in the order given) and label k is
    ``class_names[k]``. Files ending in .bmp .gif .jpeg .jpg .png are used, also in nested folders;
    folders whose names start with a dot (``.ipynb_checkpoints``) are skipped.

    Parameters
    ----------
    directory : str or Path
    labels : 'inferred', None (images only) or a list of ints, one per file in sorted path order
    label_mode : 'int' | 'categorical' | 'binary' (exactly 2 classes) | None
    class_names : list of str, optional
    color_mode : 'rgb' | 'grayscale' | 'rgba'  (3, 1 or 4 channels)
    batch_size : int
    image_size : (height, width); every image is resized to it with ``interpolation``
    shuffle : bool      shuffle the files once (seeded) and again every epoch
    seed : int, optional
        Seeds both shuffles; required with ``validation_split`` when shuffling (as Keras), so the
        training and validation calls agree on the split.
    validation_split : float in (0, 1), optional
        The *last* ``int(validation_split * N)`` files after the seeded shuffle are the validation set.
    subset : 'training' | 'validation' | 'both'
    interpolation : Pillow filter name, 'bilinear' by default (see ``load_img``)
    follow_links : bool
    verbose : bool      print "Found N files belonging to K classes." etc.

    Returns
    -------
    ImageDataset, or (train, validation) with ``subset='both'``. The validation set of 'both' is
    not reshuffled per epoch (as in Keras 3).
    """
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    _check_args(labels, label_mode, class_names, color_mode, batch_size, image_size, validation_split, subset,
                interpolation, shuffle, seed)
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image_dataset_from_directory: no such directory: {str(directory)!r}")
    if labels is None or label_mode is None:
        labels, label_mode = None, None
    paths, ys, names = _index_directory(str(directory), labels, class_names, follow_links)
    if not paths:
        raise ValueError(f"No images found in directory {directory}. Allowed formats: {ALLOWED_FORMATS}")
    if label_mode == "binary" and len(names) != 2:
        raise ValueError(
            f'When passing `label_mode="binary"`, there must be exactly 2 class_names. Received: class_names={names}'
        )
    if verbose:
        print(f"Found {len(paths)} files belonging to {len(names)} classes." if labels == "inferred"
              else f"Found {len(paths)} files.")
    if seed is None:
        from .. import config

        seed = int(config.rng().integers(2**31))
    order = np.random.default_rng(seed).permutation(len(paths)) if shuffle else np.arange(len(paths))
    paths = [paths[k] for k in order]
    ys = None if ys is None else ys[order]

    def make(indices, name, reshuffle, stream):
        if verbose and name is not None:
            print(f"Using {len(indices)} files for {name}.")
        return ImageDataset(
            [paths[k] for k in indices], None if ys is None else ys[indices], names, label_mode, color_mode,
            batch_size, image_size, interpolation, reshuffle, seed=[seed, stream],
        )

    n = len(paths)
    if validation_split is None:
        return make(np.arange(n), None, shuffle, 0)
    n_val = int(validation_split * n)
    train_idx, val_idx = np.arange(n - n_val), np.arange(n - n_val, n)
    if subset == "training":
        return make(train_idx, "training", shuffle, 0)
    if subset == "validation":
        return make(val_idx, "validation", shuffle, 1)
    return make(train_idx, "training", shuffle, 0), make(val_idx, "validation", False, 1)
