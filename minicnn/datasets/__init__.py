"""Built-in datasets, as ``keras.datasets``: ``fashion_mnist``, ``mnist``, ``cifar10``.

>>> from minicnn.datasets import fashion_mnist
>>> (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(sample=True)
>>> x_train.shape, x_test.shape
((6000, 28, 28), (1000, 28, 28))

Each module has ``load_data(path=None)`` returning Keras's shapes and dtypes and ``CLASS_NAMES``.
Files are looked for locally first (``path=``, ``$MINICNN_DATA``, ``~/.minicnn/datasets``, system
and Keras folders), then downloaded once, checked and cached; see ``minicnn.datasets._files``.
"""

from . import cifar10, fashion_mnist, mnist
from ._files import DatasetNotFoundError


def find_all():
    """``{dataset: folder or None}``: where each dataset would be loaded from, without downloading."""
    return {
        "sample": str(fashion_mnist.SAMPLE_DIR) + " (Fashion-MNIST subset, in the package)",
        "fashion-mnist": fashion_mnist.find(),
        "mnist": mnist.find(),
        "cifar10": cifar10.find(),
    }


__all__ = ["cifar10", "fashion_mnist", "mnist", "DatasetNotFoundError", "find_all"]
