"""Make the Fashion-MNIST sample shipped with minicnn (run once; its output is committed).

    python minicnn/datasets/sample/make_sample.py [SOURCE_FOLDER]

SOURCE_FOLDER (default /usr/share/datasets/fashion-mnist, from the Debian package
dataset-fashion-mnist) holds the four real Fashion-MNIST files; they are checked against the SHA-256
table in ``minicnn.datasets.fashion_mnist`` first.

Selection, deterministic and without a random seed: for each class c, the first 600 training images
with label c and the first 100 test images with label c, by their position in the original file;
the chosen images keep their original relative order, so classes stay interleaved as in the full
set (a class-sorted file would make Keras-style ``validation_split``, which takes the *last*
samples, validate on one class only). Result: 6,000 training and 1,000 test images, 600 and 100 per
class, written as xz-compressed IDX files (preset 9e, about 10% smaller than gzip, keeping the package
under 3 MB; re-running gives the same bytes) next to this script. It prints the SHA-256 of each decompressed file for ``SAMPLE_SHA256``.

Fashion-MNIST is Copyright (c) 2017 Zalando SE, MIT licence: see LICENSE beside this script.
"""

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))   # the repository root: run from a checkout, not an install

from minicnn.datasets import _files, fashion_mnist  # noqa: E402

PER_CLASS = {"train": 600, "t10k": 100}


def main(source="/usr/share/datasets/fashion-mnist"):
    files = _files.find_files(Path(source), fashion_mnist.FILES)
    if files is None:
        sys.exit(f"Fashion-MNIST files not found in {source}")
    (x_train, y_train), (x_test, y_test) = _files.load_mnist_like(files, fashion_mnist.SHA256)
    for split, x, y in (("train", x_train, y_train), ("t10k", x_test, y_test)):
        k = PER_CLASS[split]
        keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:k] for c in range(10)]))
        for kind, array in (("images-idx3", x[keep]), ("labels-idx1", y[keep])):
            name = f"{split}-{kind}-ubyte"
            _files.write_idx(HERE / f"{name}.xz", array)
            payload = _files.idx_bytes(array)
            size = (HERE / f"{name}.xz").stat().st_size
            print(f'    "{name}": "{_files.sha256_hex(payload)}",   # {size:,} bytes xz, shape {array.shape}')


if __name__ == "__main__":
    main(*sys.argv[1:])
