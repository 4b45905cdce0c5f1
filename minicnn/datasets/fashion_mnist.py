"""Fashion-MNIST: 70,000 grey 28 x 28 photos of clothing in 10 classes (Zalando Research, MIT licence).

>>> (x_train, y_train), (x_test, y_test) = load_data()          # doctest: +SKIP
>>> x_train.shape, x_train.dtype, y_train[:10]                 # doctest: +SKIP
((60000, 28, 28), dtype('uint8'), array([9, 0, 0, 3, 0, 2, 7, 2, 5, 5], dtype=uint8))

The same arrays as ``keras.datasets.fashion_mnist.load_data()``. The files are searched for as
described in ``minicnn.datasets._files`` (``path=``, ``$MINICNN_DATA``, ``~/.minicnn/datasets``,
``/usr/share/datasets/fashion-mnist`` from the Debian package ``dataset-fashion-mnist``,
``~/.keras/datasets/fashion-mnist``), then downloaded from Zalando's bucket. Every file is checked
against the SHA-256 of its decompressed contents (Keras checks nothing for this dataset).

``load_data(sample=True)`` needs no file at all: it reads the 6,000 + 1,000 image subset shipped
inside minicnn (see ``sample/make_sample.py``), so the examples run offline out of the box.
"""

from pathlib import Path

from . import _files

NAME = "fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
N_TRAIN, N_TEST = 60000, 10000
SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)
KERAS_DIRS = ("~/.keras/datasets/fashion-mnist",)

#: SHA-256 of the decompressed IDX files (47,040,016 / 60,008 / 7,840,016 / 10,008 bytes).
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
#: SHA-256 of the decompressed sample files, as printed by ``sample/make_sample.py``.
SAMPLE_SHA256 = {
    "train-images-idx3-ubyte": "cf313073c7eb485392848071d5c433571d7166043e971e3345b095cc30518084",
    "train-labels-idx1-ubyte": "097b93fbcf9bd5bc648b1a457ddc55c9e4ab49afb33f9ecae8ce068399a75e3a",
    "t10k-images-idx3-ubyte": "7cee33c3c6414b1b86c25e665a6c4f41584269de3b7cc9768b1d351922845eef",
    "t10k-labels-idx1-ubyte": "3128d790775889812b73c4f13923559c8b9e281d112c6ea7862acf60a206a909",
}

HINT = (
    "On Debian or Ubuntu `sudo apt install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist. "
    "To start right away without them, load_data(sample=True) loads the 6,000 + 1,000 image subset shipped with minicnn."
)


def _probe(folder):
    return _files.find_files(folder, FILES)


def find():
    """The folder the full dataset would be loaded from, or None if it would have to be downloaded."""
    return _files.find_local(NAME, _probe, SYSTEM_DIRS, KERAS_DIRS)


def _fetch(folder):
    for name in FILES:
        if _files.find_files(folder, [name]) is None:
            _files.download(BASE_URL + name + ".gz", folder / f"{name}.gz", sha256=SHA256.get(name))
    return _files.find_files(folder, FILES)


def load_data(path=None, sample=False):
    """Load Fashion-MNIST as NumPy arrays.

    Parameters
    ----------
    path : str or Path, optional
        A folder holding the four files ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
        ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``; only that folder is used.
    sample : bool
        Load the subset shipped with minicnn instead: 6,000 training images (600 per class) and
        1,000 test images (100 per class), no file search and no network.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        ``x`` uint8 of shape (N, 28, 28) in [0, 255]; ``y`` uint8 of shape (N,) in 0..9
        (names in ``CLASS_NAMES``). N = 60,000 and 10,000 (6,000 and 1,000 with ``sample=True``).

    Raises
    ------
    DatasetNotFoundError (a FileNotFoundError)
        No copy found and the download failed; the message lists the folders tried.
    ValueError
        A file is corrupt, truncated or fails its checksum; the message names it.
    """
    if sample:
        files = _files.find_files(SAMPLE_DIR, FILES)
        if files is None:
            raise _files.DatasetNotFoundError(f"The Fashion-MNIST sample files are missing from {SAMPLE_DIR}.")
        return _files.load_mnist_like(files, SAMPLE_SHA256, n_train=6000, n_test=1000)
    files = _files.locate(
        "Fashion-MNIST", NAME, _probe,
        path=path, system_dirs=SYSTEM_DIRS, keras_dirs=KERAS_DIRS, fetch=_fetch,
        wanted=", ".join(f"{f}.gz" for f in FILES), hint=HINT,
    )
    return _files.load_mnist_like(files, SHA256, n_train=N_TRAIN, n_test=N_TEST)
