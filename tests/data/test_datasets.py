"""Datasets: IDX and CIFAR-10 parsers, checksums, search order, downloads (file:// only), the shipped sample.

No test touches the network: downloads use ``file://`` URLs, and every test that could fall through
to a real download replaces ``_files.urlopen`` by a function that raises ``URLError``.
"""

import gzip
import io
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from minicnn.datasets import DatasetNotFoundError, _files, cifar10, fashion_mnist, mnist

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")
HAVE_REAL_FASHION = all((REAL_FASHION / f"{name}.gz").is_file() for name in fashion_mnist.FILES)


def offline(*args, **kwargs):
    raise urllib.error.URLError("network disabled in tests")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No network, an empty home, no $MINICNN_DATA, no system or Keras folders."""
    monkeypatch.setattr(_files, "urlopen", offline)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MINICNN_DATA", raising=False)
    for module in (fashion_mnist, mnist, cifar10):
        monkeypatch.setattr(module, "SYSTEM_DIRS", ())
        monkeypatch.setattr(module, "KERAS_DIRS", ())
    return tmp_path


def write_mnist_like(folder, rng, n_train=12, n_test=5, marker=None, compress=True):
    """Four small IDX files; images filled with ``marker`` when given (to tell folders apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) if marker is None else np.full((n, 28, 28), marker, np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"] = x, y
    for name, a in arrays.items():
        _files.write_idx(folder / (f"{name}.gz" if compress else name), a)
    return arrays


def small_sizes(monkeypatch, module, sha256=None):
    monkeypatch.setattr(module, "N_TRAIN", 12)
    monkeypatch.setattr(module, "N_TEST", 5)
    monkeypatch.setattr(module, "SHA256", sha256 or {})


# ----------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = tmp_path / f"a-idx3{suffix}"
    _files.write_idx(path, a)
    b = _files.load_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative and b.shape == (3, 4, 5)
    np.testing.assert_array_equal(a, b)
    assert b.flags.writeable
    b[0, 0, 0] = 1   # np.frombuffer alone would be read-only


def test_idx_hand_written_header():
    data = bytes([0, 0, 0x08, 0x01]) + (3).to_bytes(4, "big") + bytes([7, 8, 9])
    np.testing.assert_array_equal(_files.parse_idx(data), [7, 8, 9])
    data = bytes([0, 0, 0x0B, 0x02]) + (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes([1, 2, 255, 254])
    np.testing.assert_array_equal(_files.parse_idx(data), [[258, -2]])   # big-endian int16


def test_idx_gz_and_raw_give_the_same_arrays(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    _files.write_idx(tmp_path / "x.gz", a)
    _files.write_idx(tmp_path / "x", a)
    (tmp_path / "raw-named.gz").write_bytes((tmp_path / "x").read_bytes())   # the magic bytes decide
    for name in ("x.gz", "x", "raw-named.gz"):
        np.testing.assert_array_equal(_files.load_idx(tmp_path / name, magic=2051), a)
    assert gzip.decompress((tmp_path / "x.gz").read_bytes()) == (tmp_path / "x").read_bytes()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: d[:-1], "truncated"),
        (lambda d: d + b"\0", "too long"),
        (lambda d: d[:6], "truncated IDX header"),
        (lambda d: b"\1" + d[1:], "not an IDX file"),
        (lambda d: d[:2] + b"\x07" + d[3:], "unknown IDX type code"),
    ],
)
def test_idx_corrupt_raw_files_name_the_file(tmp_path, corrupt, message):
    data = _files.idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(corrupt(data))
    with pytest.raises(ValueError, match=message) as info:
        _files.load_idx(path)
    assert str(path) in str(info.value)


def test_idx_truncated_gzip_names_the_file(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "cut-idx3-ubyte.gz"
    _files.write_idx(path, rng.integers(0, 256, (50, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="gzip") as info:
        _files.load_idx(path)
    assert str(path) in str(info.value)


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "labels.gz"
    _files.write_idx(path, np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="magic"):
        _files.load_idx(path, magic=2051)


def test_sha256_mismatch_names_the_file(tmp_path):
    path = tmp_path / "f.gz"
    _files.write_idx(path, np.zeros(3, np.uint8))
    good = _files.sha256_hex(_files.read_bytes(path))
    _files.load_idx(path, sha256=good)
    with pytest.raises(ValueError, match="checksum") as info:
        _files.load_idx(path, sha256="0" * 64)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- CIFAR-10 binary
def test_cifar_record_layout_by_hand():
    planes = np.zeros((3, 32, 32), np.uint8)
    planes[0, 1, 2], planes[1, 3, 4], planes[2, 31, 0] = 11, 22, 33      # R at (1, 2), G at (3, 4), B at (31, 0)
    data = bytes([7]) + planes.tobytes()
    x, y = _files.parse_cifar_binary(data)
    assert x.shape == (1, 32, 32, 3) and y.tolist() == [7]
    assert (x[0, 1, 2, 0], x[0, 3, 4, 1], x[0, 31, 0, 2]) == (11, 22, 33) and x.sum() == 66
    assert x.flags.writeable and x.flags.c_contiguous and y.flags.writeable


def test_cifar_round_trip_and_truncation(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 5).astype(np.uint8)
    data = _files.cifar_binary_bytes(x, y)
    assert len(data) == 5 * 3073
    x2, y2 = _files.parse_cifar_binary(data)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    with pytest.raises(ValueError, match="3073-byte records"):
        _files.parse_cifar_binary(data[:-1], source="batch.bin")
    with pytest.raises(ValueError, match="labels must be below 10"):
        _files.parse_cifar_binary(b"\x0a" + data[1:])


def write_cifar(folder, rng, records, layout):
    """The six batches as .bin files in ``folder`` ('bins'), in ``folder/cifar-10-batches-bin`` ('sub'), or a tarball."""
    batches = {
        name: (rng.integers(0, 256, (records, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, records).astype(np.uint8))
        for name in cifar10.FILES
    }
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "tar":
        with tarfile.open(folder / cifar10.TARBALL, "w:gz") as tar:
            for name, (x, y) in batches.items():
                data = _files.cifar_binary_bytes(x, y)
                info = tarfile.TarInfo(f"{cifar10.TAR_FOLDER}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        target = folder if layout == "bins" else folder / cifar10.TAR_FOLDER
        target.mkdir(exist_ok=True)
        for name, (x, y) in batches.items():
            (target / name).write_bytes(_files.cifar_binary_bytes(x, y))
    return batches


@pytest.mark.parametrize("layout", ["bins", "sub", "tar"])
def test_cifar10_load_data_layouts(isolated, monkeypatch, layout):
    rng = np.random.default_rng(4)
    monkeypatch.setattr(cifar10, "RECORDS_PER_BATCH", 3)
    batches = write_cifar(isolated / "cifar", rng, 3, layout)
    (x_train, y_train), (x_test, y_test) = cifar10.load_data(path=isolated / "cifar")
    assert x_train.shape == (15, 32, 32, 3) and y_train.shape == (15, 1)
    assert x_test.shape == (3, 32, 32, 3) and y_test.shape == (3, 1)
    assert x_train.dtype == y_train.dtype == np.uint8
    np.testing.assert_array_equal(x_train[3:6], batches["data_batch_2.bin"][0])
    np.testing.assert_array_equal(y_test[:, 0], batches["test_batch.bin"][1])
    assert len(cifar10.CLASS_NAMES) == 10 and cifar10.CLASS_NAMES[0] == "airplane"


def test_cifar10_wrong_record_count_names_the_file(isolated, monkeypatch):
    rng = np.random.default_rng(5)
    monkeypatch.setattr(cifar10, "RECORDS_PER_BATCH", 3)
    write_cifar(isolated / "cifar", rng, 2, "bins")
    with pytest.raises(ValueError, match="data_batch_1.bin: expected 3 records"):
        cifar10.load_data(path=isolated / "cifar")


def test_cifar10_download_from_file_url_into_cache(isolated, monkeypatch):
    rng = np.random.default_rng(6)
    monkeypatch.setattr(cifar10, "RECORDS_PER_BATCH", 2)
    write_cifar(isolated / "server", rng, 2, "tar")
    monkeypatch.setattr(_files, "urlopen", __import__("urllib.request").request.urlopen)   # file:// only
    monkeypatch.setattr(cifar10, "URL", (isolated / "server" / cifar10.TARBALL).as_uri())
    (x_train, _), _ = cifar10.load_data()
    assert x_train.shape == (10, 32, 32, 3)
    assert (isolated / "home/.minicnn/datasets/cifar-10" / cifar10.TARBALL).is_file()


def test_cifar10_offline_error(isolated):
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10 was not found") as info:
        cifar10.load_data()
    assert "cifar-10-binary.tar.gz" in str(info.value) and "network disabled" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


# ----------------------------------------------------------------------------- search order and errors
def test_search_order_path_env_cache_system_keras(isolated, monkeypatch):
    rng = np.random.default_rng(7)
    small_sizes(monkeypatch, fashion_mnist)
    folders = {
        "path": isolated / "explicit",
        "env": isolated / "env" / "fashion-mnist",
        "cache": isolated / "home/.minicnn/datasets/fashion-mnist",
        "system": isolated / "system",
        "keras": isolated / "keras",
    }
    for marker, folder in enumerate(folders.values(), start=1):
        write_mnist_like(folder, rng, marker=marker)
    monkeypatch.setenv("MINICNN_DATA", str(isolated / "env"))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", (str(folders["system"]),))
    monkeypatch.setattr(fashion_mnist, "KERAS_DIRS", (str(folders["keras"]),))

    def marker(**kwargs):
        (x_train, _), _ = fashion_mnist.load_data(**kwargs)
        return int(x_train[0, 0, 0])

    assert marker(path=folders["path"]) == 1
    assert marker() == 2
    for expected, name in enumerate(["env", "cache", "system"], start=3):
        for f in folders[name].iterdir():
            f.unlink()
        assert marker() == expected, f"after removing {name}"
    (folders["keras"] / "t10k-labels-idx1-ubyte.gz").unlink()   # an incomplete folder does not count
    with pytest.raises(DatasetNotFoundError):
        fashion_mnist.load_data()


def test_explicit_path_does_not_fall_back(isolated, monkeypatch):
    rng = np.random.default_rng(8)
    small_sizes(monkeypatch, fashion_mnist)
    write_mnist_like(isolated / "home/.minicnn/datasets/fashion-mnist", rng)
    (isolated / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="not found in path="):
        fashion_mnist.load_data(path=isolated / "empty")


def test_offline_error_message(isolated):
    with pytest.raises(DatasetNotFoundError) as info:
        fashion_mnist.load_data()
    message = str(info.value)
    for needle in (
        "Fashion-MNIST was not found", "could not be downloaded", "network disabled",
        str(isolated / "home/.minicnn/datasets/fashion-mnist"), "MINICNN_DATA", "train-images-idx3-ubyte.gz",
        "apt install dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist", "sample=True", "path=",
    ):
        assert needle in message, needle


def test_checksum_failure_in_path_names_the_file(isolated, monkeypatch):
    rng = np.random.default_rng(9)
    monkeypatch.setattr(fashion_mnist, "N_TRAIN", 12)
    monkeypatch.setattr(fashion_mnist, "N_TEST", 5)   # the real SHA-256 table stays
    write_mnist_like(isolated / "fake", rng)
    with pytest.raises(ValueError, match="checksum mismatch") as info:
        fashion_mnist.load_data(path=isolated / "fake")
    assert str(isolated / "fake" / "train-images-idx3-ubyte.gz") in str(info.value)


def test_wrong_counts_and_labels_are_rejected(isolated, monkeypatch):
    rng = np.random.default_rng(10)
    small_sizes(monkeypatch, mnist)
    arrays = write_mnist_like(isolated / "m", rng, n_train=11)
    with pytest.raises(ValueError, match="expected 12 images"):
        mnist.load_data(path=isolated / "m")
    monkeypatch.setattr(mnist, "N_TRAIN", 11)
    y = arrays["t10k-labels-idx1-ubyte"].copy()
    y[0] = 10
    _files.write_idx(isolated / "m/t10k-labels-idx1-ubyte.gz", y)
    with pytest.raises(ValueError, match="labels must be below 10"):
        mnist.load_data(path=isolated / "m")


def test_mnist_reads_raw_files_and_keras_npz(isolated, monkeypatch):
    rng = np.random.default_rng(11)
    small_sizes(monkeypatch, mnist)
    arrays = write_mnist_like(isolated / "raw", rng, compress=False)
    (x_train, y_train), (x_test, y_test) = mnist.load_data(path=isolated / "raw")
    np.testing.assert_array_equal(x_train, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])
    keras_dir = isolated / "keras"
    keras_dir.mkdir()
    np.savez(keras_dir / "mnist.npz", x_train=x_train, y_train=y_train.astype(np.int64), x_test=x_test, y_test=y_test)
    monkeypatch.setattr(mnist, "KERAS_DIRS", (str(keras_dir),))
    (x2, y2), _ = mnist.load_data()
    np.testing.assert_array_equal(x2, x_train)
    assert y2.dtype == np.uint8 and mnist.CLASS_NAMES[3] == "3"


# ----------------------------------------------------------------------------- downloads (file:// only)
def test_download_verifies_before_moving_into_place(tmp_path, capsys):
    rng = np.random.default_rng(12)
    source = tmp_path / "server" / "labels.gz"
    _files.write_idx(source, rng.integers(0, 10, 100).astype(np.uint8))
    good = _files.sha256_hex(_files.read_bytes(source))
    dest = tmp_path / "cache" / "labels.gz"
    with pytest.raises(ValueError, match="checksum mismatch") as info:
        _files.download(source.as_uri(), dest, sha256="f" * 64)
    assert "labels.gz" in str(info.value) and source.as_uri() in str(info.value)
    assert list(dest.parent.iterdir()) == []   # neither the file nor a .part left behind
    _files.download(source.as_uri(), dest, sha256=good)
    assert dest.read_bytes() == source.read_bytes()
    assert "Downloading labels.gz" in capsys.readouterr().err
    assert list(dest.parent.iterdir()) == [dest]


def test_download_validate_hook_and_missing_url(tmp_path):
    source = tmp_path / "junk.bin"
    source.write_bytes(b"not cifar")
    dest = tmp_path / "cache" / "batch.bin"

    def validate(path):
        _files.parse_cifar_binary(path.read_bytes(), source=path)

    with pytest.raises(ValueError, match="3073-byte records"):
        _files.download(source.as_uri(), dest, validate=validate, progress=False)
    with pytest.raises(urllib.error.URLError):
        _files.download((tmp_path / "nope.gz").as_uri(), dest, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_fashion_mnist_download_into_cache_then_reuse(isolated, monkeypatch):
    rng = np.random.default_rng(13)
    arrays = write_mnist_like(isolated / "server", rng)
    hashes = {name: _files.sha256_hex(_files.idx_bytes(a)) for name, a in arrays.items()}
    small_sizes(monkeypatch, fashion_mnist, hashes)
    monkeypatch.setattr(_files, "urlopen", __import__("urllib.request").request.urlopen)
    monkeypatch.setattr(fashion_mnist, "BASE_URL", (isolated / "server").as_uri() + "/")
    (x_train, y_train), _ = fashion_mnist.load_data()
    np.testing.assert_array_equal(x_train, arrays["train-images-idx3-ubyte"])
    cache = isolated / "home/.minicnn/datasets/fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in fashion_mnist.FILES)
    monkeypatch.setattr(_files, "urlopen", offline)   # the second load reads the cache
    (x_again, _), _ = fashion_mnist.load_data()
    np.testing.assert_array_equal(x_again, x_train)


def test_fashion_mnist_download_with_bad_hash_leaves_nothing(isolated, monkeypatch):
    rng = np.random.default_rng(14)
    write_mnist_like(isolated / "server", rng)
    small_sizes(monkeypatch, fashion_mnist, {name: "0" * 64 for name in fashion_mnist.FILES})
    monkeypatch.setattr(_files, "urlopen", __import__("urllib.request").request.urlopen)
    monkeypatch.setattr(fashion_mnist, "BASE_URL", (isolated / "server").as_uri() + "/")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*checksum mismatch"):
        fashion_mnist.load_data()
    cache = isolated / "home/.minicnn/datasets/fashion-mnist"
    assert not cache.exists() or list(cache.iterdir()) == []


# ----------------------------------------------------------------------------- the shipped sample and real data
def test_sample_loader(isolated):
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(sample=True)   # works offline, empty home
    assert x_train.shape == (6000, 28, 28) and x_test.shape == (1000, 28, 28)
    assert x_train.dtype == y_train.dtype == x_test.dtype == y_test.dtype == np.uint8
    assert np.bincount(y_train).tolist() == [600] * 10
    assert np.bincount(y_test).tolist() == [100] * 10
    assert y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]   # first-k per class keeps the original order
    assert x_train.flags.writeable and 0 < x_train.mean() < 255


def test_sample_files_are_small():
    sizes = [p.stat().st_size for p in fashion_mnist.SAMPLE_DIR.glob("*.xz")]
    assert len(sizes) == 4 and sum(sizes) <= 3_000_000
    assert "Zalando SE" in (fashion_mnist.SAMPLE_DIR / "LICENSE").read_text()


def test_xz_files_read_and_truncated_xz_is_named(tmp_path):
    rng = np.random.default_rng(31)
    array = rng.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    _files.write_idx(tmp_path / "a.xz", array)
    np.testing.assert_array_equal(_files.load_idx(tmp_path / "a.xz"), array)
    data = (tmp_path / "a.xz").read_bytes()
    (tmp_path / "b.xz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="b.xz"):
        _files.load_idx(tmp_path / "b.xz")


@pytest.mark.skipif(not HAVE_REAL_FASHION, reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist(isolated, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", (str(REAL_FASHION),))
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()   # found by the search, SHA-256 checked
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == y_train.dtype == np.uint8
    assert np.bincount(y_train).tolist() == [6000] * 10 and np.bincount(y_test).tolist() == [1000] * 10
    assert y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert abs(x_train.mean() - 72.94) < 0.01
    (xs, ys), (xt, yt) = fashion_mnist.load_data(sample=True)   # the sample is a real subset
    keep = np.sort(np.concatenate([np.flatnonzero(y_train == c)[:600] for c in range(10)]))
    np.testing.assert_array_equal(xs, x_train[keep])
    np.testing.assert_array_equal(ys, y_train[keep])
