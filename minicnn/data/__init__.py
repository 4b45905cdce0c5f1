"""Data pipeline helpers: image files, streaming folder datasets, preprocessing and augmentation.

* ``load_img``, ``img_to_array``, ``image_dataset_from_directory`` (``images.py``), as in Keras.
* Plain NumPy functions on NHWC batches (``transforms.py``): ``rescale``, ``normalize``, ``resize``,
  ``flip``, ``rotate``, ``translate``, ``zoom``, ``adjust_contrast``, one ``affine_warp`` behind the
  geometric ones, and ``random_*`` versions that draw their amounts from a seeded ``rng``.

The built-in datasets (Fashion-MNIST, MNIST, CIFAR-10) are in ``minicnn.datasets``; the same
operations as layers are in ``minicnn.layers.preprocessing``.
"""

from .images import ImageDataset, image_dataset_from_directory, img_to_array, load_img
from .transforms import (
    adjust_contrast,
    affine_warp,
    affine_warp_backward,
    flip,
    normalize,
    random_contrast,
    random_flip,
    random_rotation,
    random_translation,
    random_zoom,
    rescale,
    resize,
    rotate,
    translate,
    zoom,
)

__all__ = [
    "ImageDataset", "image_dataset_from_directory", "img_to_array", "load_img",
    "adjust_contrast", "affine_warp", "affine_warp_backward", "flip", "normalize", "random_contrast",
    "random_flip", "random_rotation", "random_translation", "random_zoom", "rescale", "resize", "rotate",
    "translate", "zoom",
]
