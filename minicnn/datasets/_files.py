"""Finding, downloading, checking and parsing dataset files: the plumbing behind every ``load_data``.

Where the loaders look, in this order (the first folder holding *all* the files wins)::

    1. path=FOLDER                      the folder you name; nothing else is tried
    2. $MINICNN_DATA/<name>/            a data root of your own
    3. ~/.minicnn/datasets/<name>/      the user cache; downloads are written here
    4. system folders                   e.g. /usr/share/datasets/fashion-mnist/ (Debian's dataset-fashion-mnist)
    5. ~/.keras/datasets/...            files Keras already downloaded
    6. a download from the dataset's canonical address into the cache (3.)

Checks. A file is identified by the SHA-256 of its *decompressed* bytes, not of the ``.gz`` file:
Debian re-compresses Fashion-MNIST, so its ``.gz`` bytes differ from upstream's while the payload is
identical. Where no hash is known (MNIST, CIFAR-10: they could not be computed offline and none is
invented), the structure is checked instead: magic numbers, counts, image sizes, label range. A file
that fails a check raises ``ValueError`` naming the file; it is never silently skipped.

Formats
-------
IDX (MNIST, Fashion-MNIST), big-endian::

    bytes 0-1  zero          byte 2  type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                                                0x0D float32, 0x0E float64)
    byte  3    number of dimensions D          then D uint32 sizes, then the data in C order

    labels: 00 00 08 01 | N            (magic 2049, data at offset 8)
    images: 00 00 08 03 | N | rows | cols   (magic 2051, data at offset 16)

CIFAR-10 binary version (``cifar-10-binary.tar.gz``: ``data_batch_1.bin`` .. ``data_batch_5.bin``,
``test_batch.bin``): 10,000 records of 3,073 bytes each, no header::

    byte 0        label 0..9
    bytes 1..     1,024 red, 1,024 green, 1,024 blue values, each plane 32 x 32 row-major

No pickle is ever read (the "python version" of CIFAR-10 is a pickle, which can run code).
"""

import gzip
import hashlib
import io
import lzma
import os
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from urllib.request import urlopen

import numpy as np


class DatasetNotFoundError(FileNotFoundError):
    """No copy of a dataset was found and none could be downloaded (the message says where to put one)."""


# ----------------------------------------------------------------------------- where to look
def cache_dir(name):
    """``~/.minicnn/datasets/<name>``: where downloads go (created on first download)."""
    return Path.home() / ".minicnn" / "datasets" / name


def search_dirs(name, system_dirs=(), keras_dirs=()):
    """The folders tried, in order, when no ``path=`` is given (see the module docstring)."""
    dirs = []
    root = os.environ.get("MINICNN_DATA")
    if root:
        dirs.append(Path(root).expanduser() / name)
    dirs.append(cache_dir(name))
    dirs += [Path(d).expanduser() for d in system_dirs]
    dirs += [Path(d).expanduser() for d in keras_dirs]
    return dirs


def find_local(name, probe, system_dirs=(), keras_dirs=()):
    """The first folder of the search order where ``probe(folder)`` finds the files, else None (no download)."""
    for folder in search_dirs(name, system_dirs, keras_dirs):
        if probe(folder) is not None:
            return folder
    return None


def find_files(folder, names):
    """``{name: path}`` if every ``name`` is in ``folder`` as ``name.gz``, ``name.xz`` or ``name``; else None."""
    found = {}
    for name in names:
        for candidate in (folder / f"{name}.gz", folder / f"{name}.xz", folder / name):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            return None
    return found


def locate(title, name, probe, *, path=None, system_dirs=(), keras_dirs=(), fetch=None, wanted="", hint=""):
    """Run ``probe(folder)`` over the search order; the first non-None answer is returned.

    Parameters
    ----------
    title : str         ``"Fashion-MNIST"``, for messages.
    name : str          folder name under ``$MINICNN_DATA`` and the cache (``"fashion-mnist"``).
    probe : callable    ``probe(folder) -> found or None``.
    fetch : callable or None
        ``fetch(cache_folder) -> found``: downloads into the cache. Network errors (``OSError``, which
        includes ``URLError``) become a ``DatasetNotFoundError``; a failed checksum stays a ValueError.
    wanted, hint : str  the file names expected, and advice, both for the error message.
    """
    if path is not None:
        folder = Path(path).expanduser()
        found = probe(folder)
        if found is None:
            raise DatasetNotFoundError(
                f"{title}: the files were not found in path={str(folder)!r}. Expected {wanted} "
                "(gzip-compressed or not) directly in that folder."
            )
        return found
    tried = search_dirs(name, system_dirs, keras_dirs)
    for folder in tried:
        found = probe(folder)
        if found is not None:
            return found
    if not os.environ.get("MINICNN_DATA"):
        tried.insert(0, f"$MINICNN_DATA/{name}  (MINICNN_DATA is not set)")
    looked = "\n".join(f"  {d}" for d in tried)
    if fetch is not None:
        try:
            return fetch(cache_dir(name))
        except OSError as e:   # includes URLError: offline, DNS, HTTP errors, a read-only home
            raise DatasetNotFoundError(
                f"{title} was not found on this machine and could not be downloaded ({e}).\n"
                f"Looked in:\n{looked}\nPut {wanted} in one of these folders, or call load_data(path=FOLDER). {hint}"
            ) from e
    raise DatasetNotFoundError(
        f"{title} was not found on this machine.\nLooked in:\n{looked}\n"
        f"Put {wanted} in one of these folders, or call load_data(path=FOLDER). {hint}"
    )


# ----------------------------------------------------------------------------- reading and checking
def read_bytes(path):
    """The decompressed contents of ``path``: gunzipped if it starts with the gzip magic ``1f 8b``,
    un-xz'd if it starts with the xz magic ``fd 37 7a 58 5a 00`` (the embedded sample is xz: smaller).

    The magic bytes decide, not the name, so a raw file called ``.gz`` (or the reverse) still reads.
    """
    data = Path(path).read_bytes()
    if data[:6] == b"\xfd7zXZ\x00":
        try:
            return lzma.decompress(data)
        except (lzma.LZMAError, EOFError) as e:
            raise ValueError(f"{path}: not a valid xz file, it may be truncated or corrupt ({e}).") from e
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:   # BadGzipFile is an OSError; a cut file is an EOFError
        raise ValueError(f"{path}: not a valid gzip file, it may be truncated or corrupt ({e}).") from e


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def check_sha256(path, data, expected):
    """Raise ValueError naming ``path`` unless ``sha256(data) == expected`` (None: no check)."""
    if expected is None:
        return
    got = sha256_hex(data)
    if got != expected:
        raise ValueError(
            f"{path}: checksum mismatch. SHA-256 of the decompressed contents is {got}, expected {expected}. "
            "The file is corrupt, truncated or not the expected file: delete it and load again."
        )


# ----------------------------------------------------------------------------- IDX
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_CODES = {np.dtype(v).newbyteorder("=").name: k for k, v in IDX_TYPES.items()}


def parse_idx(data, source="<bytes>"):
    """Parse IDX bytes into a writable native-endian array of the stored shape.

    Raises ValueError naming ``source`` on a bad header, a truncated body or trailing bytes.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{source}: not an IDX file (the first two bytes must be zero).")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        raise ValueError(f"{source}: unknown IDX type code 0x{code:02X}; expected one of {sorted(IDX_TYPES)}.")
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise ValueError(f"{source}: truncated IDX header ({len(data)} bytes for {ndim} dimensions).")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[code])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset != expected:
        what = "truncated" if len(data) - offset < expected else "too long"
        raise ValueError(
            f"{source}: IDX file {what}: header says shape {dims} ({expected:,} bytes of data), "
            f"found {len(data) - offset:,} bytes."
        )
    # frombuffer is a read-only view of `data`; astype copies into a writable native-endian array
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def idx_bytes(array):
    """The IDX encoding of ``array`` (uint8, int8, int16, int32, float32 or float64)."""
    array = np.asarray(array)
    if array.dtype.name not in IDX_CODES or array.ndim == 0:
        raise ValueError(f"IDX cannot store dtype={array.dtype} ndim={array.ndim}.")
    header = bytes([0, 0, IDX_CODES[array.dtype.name], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_bytes_atomic(path, data):
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    A crash half-way leaves either the old file or none, never a truncated one that later loads.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)   # mkstemp makes 0600 files; these are plain data files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def gzip_bytes(data):
    """Deterministic gzip (no file name, mtime 0): the same input always gives the same bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buffer, mtime=0) as f:
        f.write(data)
    return buffer.getvalue()


def write_idx(path, array):
    """Write ``array`` as an IDX file; gzip- or xz-compressed when ``path`` ends with ``.gz`` or ``.xz``."""
    data = idx_bytes(array)
    if str(path).endswith(".xz"):
        data = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)   # deterministic for the same input
    elif str(path).endswith(".gz"):
        data = gzip_bytes(data)
    write_bytes_atomic(path, data)


def load_idx(path, sha256=None, magic=None):
    """Read, check and parse one IDX file (gzip or raw).

    ``magic`` (2049 labels, 2051 images) also requires uint8 data with that many dimensions.
    """
    data = read_bytes(path)
    check_sha256(path, data, sha256)
    if magic is not None and data[:4] != int(magic).to_bytes(4, "big"):
        raise ValueError(f"{path}: IDX magic number is {data[:4].hex()}, expected {int(magic):08x}.")
    return parse_idx(data, source=path)


def load_mnist_like(files, sha256=None, n_train=60000, n_test=10000, num_classes=10):
    """((x_train, y_train), (x_test, y_test)) from the four MNIST-style IDX files, checked.

    ``files`` maps ``train-images-idx3-ubyte`` etc. to paths. Besides hashes (where known) this checks
    the magic numbers, the counts, 28 x 28 images, equal image and label counts and labels < 10.
    """
    sha256 = sha256 or {}

    def pair(images_name, labels_name, n):
        x = load_idx(files[images_name], sha256.get(images_name), magic=2051)
        y = load_idx(files[labels_name], sha256.get(labels_name), magic=2049)
        if x.shape[1:] != (28, 28) or (n is not None and x.shape[0] != n):
            raise ValueError(f"{files[images_name]}: expected {n} images of 28 x 28, found shape {x.shape}.")
        if y.shape != (x.shape[0],):
            raise ValueError(f"{files[labels_name]}: expected {x.shape[0]} labels, found shape {y.shape}.")
        if y.size and y.max() >= num_classes:
            raise ValueError(f"{files[labels_name]}: labels must be below {num_classes}, found {int(y.max())}.")
        return x, y

    return (
        pair("train-images-idx3-ubyte", "train-labels-idx1-ubyte", n_train),
        pair("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", n_test),
    )


# ----------------------------------------------------------------------------- CIFAR-10 binary
CIFAR_RECORD = 1 + 32 * 32 * 3


def parse_cifar_binary(data, source="<bytes>", num_classes=10):
    """CIFAR-10 binary records -> ``x`` uint8 (N, 32, 32, 3) NHWC, ``y`` uint8 (N,); both writable.

    ::

        record = data[n * 3073 : (n + 1) * 3073]
        y[n] = record[0];   x[n, i, j, c] = record[1 + c * 1024 + i * 32 + j]
    """
    if len(data) == 0 or len(data) % CIFAR_RECORD:
        raise ValueError(
            f"{source}: a CIFAR-10 binary batch is a whole number of {CIFAR_RECORD}-byte records; "
            f"found {len(data):,} bytes (truncated or not a CIFAR-10 file)."
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)   # (N, 3073), read-only
    y = records[:, 0].copy()
    if y.max() >= num_classes:
        raise ValueError(f"{source}: labels must be below {num_classes}, found {int(y.max())}.")
    x = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)            # planes -> NHWC
    return np.ascontiguousarray(x), y


def cifar_binary_bytes(x, y):
    """Encode ``x`` (N, 32, 32, 3) uint8 and ``y`` (N,) as CIFAR-10 binary records (for tests and tools)."""
    x, y = np.asarray(x, np.uint8), np.asarray(y, np.uint8).reshape(-1)
    planes = x.transpose(0, 3, 1, 2).reshape(len(x), -1)                        # (N, 3072) R, G, B planes
    return np.concatenate([y[:, None], planes], axis=1).tobytes()


def read_tar_member(tar_path, member):
    """The bytes of ``member`` inside the (gzip) tarball ``tar_path``, read without extracting anything."""
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            f = tar.extractfile(member)
            if f is None:
                raise ValueError(f"{tar_path}: {member} is not a regular file.")
            return f.read()
    except KeyError as e:
        raise ValueError(f"{tar_path}: the archive has no member {member!r}.") from e
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{tar_path}: not a readable tar archive, it may be truncated or corrupt ({e}).") from e


# ----------------------------------------------------------------------------- download
def _progress(label, done, total, start):
    rate = done / max(time.monotonic() - start, 1e-9) / 1e6
    if total:
        filled = int(20 * done / total)
        bar = "━" * filled + " " * (20 - filled)
        text = f"\r{label} {bar} {done / 1e6:.1f}/{total / 1e6:.1f} MB {rate:.1f} MB/s"
    else:
        text = f"\r{label} {done / 1e6:.1f} MB {rate:.1f} MB/s"
    sys.stderr.write(text)
    sys.stderr.flush()


def download(url, dest, sha256=None, validate=None, progress=True, timeout=60, chunk_size=1 << 20):
    """Fetch ``url`` into ``dest``, check it, and only then move it into place (atomically).

    Parameters
    ----------
    url : str           any URL ``urllib`` opens, ``file://`` included (the tests use it).
    dest : path         final location; a temporary ``.part`` file beside it is used meanwhile.
    sha256 : str or None
        Expected SHA-256 of the *decompressed* contents (see ``read_bytes``).
    validate : callable or None
        ``validate(tmp_path)`` raises ValueError if the file is not what was expected (structure checks).
    progress : bool     draw a progress bar on stderr.

    Raises
    ------
    OSError (urllib's URLError among them) when the transfer fails; ValueError when the check fails.
    Either way no file is left at ``dest`` or beside it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) if getattr(response, "headers", None) else 0
            done, start = 0, time.monotonic()
            label = f"Downloading {dest.name}"
            while chunk := response.read(chunk_size):
                f.write(chunk)
                done += len(chunk)
                if progress:
                    _progress(label, done, total, start)
            if progress:
                sys.stderr.write("\n")
        if sha256 is not None:
            check_sha256(f"{dest.name} downloaded from {url}", read_bytes(tmp), sha256)
        if validate is not None:
            validate(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
