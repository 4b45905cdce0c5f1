"""CIFAR-10: 60,000 colour 32 x 32 photos in 10 classes (Krizhevsky, 2009).

>>> (x_train, y_train), (x_test, y_test) = load_data()          # doctest: +SKIP
>>> x_train.shape, y_train.shape                               # doctest: +SKIP
((50000, 32, 32, 3), (50000, 1))

Keras's shapes and dtypes: uint8 NHWC images and uint8 labels of shape (N, 1) (two-dimensional, as
Keras returns them). minicnn reads the *binary* version (``cifar-10-binary.tar.gz``), never the
pickled "python version" Keras downloads, because unpickling a file can run code.

Accepted copies (see ``minicnn.datasets._files`` for the folders searched): the six files
``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin`` in the folder or in its
``cifar-10-batches-bin/`` sub-folder, or the tarball ``cifar-10-binary.tar.gz`` itself (read in
place, nothing is extracted). The download stores the tarball in ``~/.minicnn/datasets/cifar-10/``.

Checks: ``SHA256`` is empty because the hashes could not be computed offline where this was
written, and none is invented; every batch is checked for its structure instead (a whole number of
3,073-byte records, 10,000 of them, labels 0..9).
"""

import numpy as np

from . import _files

NAME = "cifar-10"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
FILES = TRAIN_FILES + TEST_FILES
TARBALL = "cifar-10-binary.tar.gz"
TAR_FOLDER = "cifar-10-batches-bin"
URL = "https://www.cs.toronto.edu/~kriz/" + TARBALL
SYSTEM_DIRS = ()
KERAS_DIRS = ("~/.keras/datasets",)
#: SHA-256 of the decompressed batch files; empty on purpose (see the module docstring).
SHA256 = {}
RECORDS_PER_BATCH = 10000


def _probe(folder):
    for sub in (folder, folder / TAR_FOLDER):
        found = _files.find_files(sub, FILES)
        if found is not None:
            return found
    if (folder / TARBALL).is_file():
        return {"tar": folder / TARBALL}
    return None


def _batch(found, name):
    """(x, y) of one batch file, from the folder or from inside the tarball, checked."""
    if "tar" in found:
        source = f"{found['tar']}:{TAR_FOLDER}/{name}"
        data = _files.read_tar_member(found["tar"], f"{TAR_FOLDER}/{name}")
    else:
        source = found[name]
        data = _files.read_bytes(source)
    _files.check_sha256(source, data, SHA256.get(name))
    x, y = _files.parse_cifar_binary(data, source)
    if len(y) != RECORDS_PER_BATCH:
        raise ValueError(f"{source}: expected {RECORDS_PER_BATCH} records, found {len(y)}.")
    return x, y


def _validate_tarball(path):
    for name in FILES:
        _batch({"tar": path}, name)


def _fetch(folder):
    _files.download(URL, folder / TARBALL, sha256=None, validate=_validate_tarball)
    return _probe(folder)


def find():
    """The folder the dataset would be loaded from, or None if it would have to be downloaded."""
    return _files.find_local(NAME, _probe, SYSTEM_DIRS, KERAS_DIRS)


def load_data(path=None):
    """Load CIFAR-10 as NumPy arrays.

    Parameters
    ----------
    path : str or Path, optional
        A folder with the six ``.bin`` batch files (or a ``cifar-10-batches-bin/`` sub-folder, or
        ``cifar-10-binary.tar.gz``); only that folder is used.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        ``x`` uint8 (50000, 32, 32, 3) and (10000, 32, 32, 3), NHWC, RGB in [0, 255];
        ``y`` uint8 (50000, 1) and (10000, 1) in 0..9 (names in ``CLASS_NAMES``).

    Raises
    ------
    DatasetNotFoundError (a FileNotFoundError) when no copy is found and the download fails;
    ValueError naming the file when a batch is corrupt or truncated.
    """
    found = _files.locate(
        "CIFAR-10", NAME, _probe, path=path, system_dirs=SYSTEM_DIRS, keras_dirs=KERAS_DIRS, fetch=_fetch,
        wanted=f"{', '.join(FILES)} (or {TARBALL})",
        hint="They are the 'binary version' from the CIFAR-10 page; the pickled 'python version' is not read.",
    )
    train = [_batch(found, name) for name in TRAIN_FILES]
    x_test, y_test = _batch(found, TEST_FILES[0])
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return (x_train, y_train.reshape(-1, 1)), (x_test, y_test.reshape(-1, 1))
