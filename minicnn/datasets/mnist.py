"""MNIST: 70,000 grey 28 x 28 handwritten digits (LeCun, Cortes and Burges).

>>> (x_train, y_train), (x_test, y_test) = load_data()          # doctest: +SKIP

The same arrays as ``keras.datasets.mnist.load_data()``: uint8 images (N, 28, 28), uint8 labels (N,).
Files are searched for like Fashion-MNIST's (see ``minicnn.datasets._files``); a Keras download
(``~/.keras/datasets/mnist.npz``, read with ``allow_pickle=False``) is used too, and the last resort
is a download of the four IDX files from the PyTorch mirror of the original site.

Checks: the hash table ``SHA256`` has no entries, because the SHA-256 of the decompressed files
could not be computed where this was written (no network) and a made-up hash would be worse than
none. Instead every file's structure is checked: IDX magic numbers 2051/2049, 60,000 and 10,000
images of 28 x 28, matching label counts, labels 0..9. Fill in the table to also pin the contents.
"""

import numpy as np

from . import _files

NAME = "mnist"
CLASS_NAMES = tuple(str(d) for d in range(10))
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
N_TRAIN, N_TEST = 60000, 10000
SYSTEM_DIRS = ()
KERAS_DIRS = ("~/.keras/datasets/mnist", "~/.keras/datasets")
#: SHA-256 of the decompressed IDX files; empty on purpose (see the module docstring).
SHA256 = {}
HINT = "With Keras installed, keras.datasets.mnist.load_data() once leaves ~/.keras/datasets/mnist.npz, which is used too."


def _probe(folder):
    found = _files.find_files(folder, FILES)
    if found is None and (folder / "mnist.npz").is_file():
        found = {"npz": folder / "mnist.npz"}
    return found


def _fetch(folder):
    for name in FILES:
        if _files.find_files(folder, [name]) is None:
            _files.download(
                BASE_URL + name + ".gz", folder / f"{name}.gz", sha256=SHA256.get(name),
                validate=lambda tmp, name=name: _files.load_idx(tmp, magic=2051 if "images" in name else 2049),
            )
    return _files.find_files(folder, FILES)


def _load_npz(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = [np.array(f[k]) for k in ("x_train", "y_train", "x_test", "y_test")]
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable Keras mnist.npz ({e}).") from e
    x_train, y_train, x_test, y_test = arrays
    for k, a, shape in (("x_train", x_train, (N_TRAIN, 28, 28)), ("x_test", x_test, (N_TEST, 28, 28))):
        if a.shape != shape or a.dtype != np.uint8:
            raise ValueError(f"{path}: {k} should be uint8 {shape}, found {a.dtype} {a.shape}.")
    for k, y, n in (("y_train", y_train, N_TRAIN), ("y_test", y_test, N_TEST)):
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
            raise ValueError(f"{path}: {k} should hold {n} integer labels 0..9, found {y.dtype} {y.shape}.")
    return (x_train, y_train.astype(np.uint8)), (x_test, y_test.astype(np.uint8))


def find():
    """The folder the dataset would be loaded from, or None if it would have to be downloaded."""
    return _files.find_local(NAME, _probe, SYSTEM_DIRS, KERAS_DIRS)


def load_data(path=None):
    """Load MNIST as NumPy arrays.

    Parameters
    ----------
    path : str or Path, optional
        A folder holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
        ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]`` (or a Keras ``mnist.npz``).

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        uint8 ``x`` (60000, 28, 28) and (10000, 28, 28) in [0, 255]; uint8 ``y`` (N,) in 0..9.

    Raises
    ------
    DatasetNotFoundError (a FileNotFoundError) when no copy is found and the download fails;
    ValueError naming the file when one is corrupt or truncated.
    """
    found = _files.locate(
        "MNIST", NAME, _probe, path=path, system_dirs=SYSTEM_DIRS, keras_dirs=KERAS_DIRS, fetch=_fetch,
        wanted=", ".join(f"{f}.gz" for f in FILES), hint=HINT,
    )
    if "npz" in found:
        return _load_npz(found["npz"])
    return _files.load_mnist_like(found, SHA256, n_train=N_TRAIN, n_test=N_TEST)
