"""Layers: thin stateful classes over ``minicnn.kernels`` (see ``base.Layer`` for the contract)."""

from ..registry import from_config
from .activation_layers import ELU, LeakyReLU
from .base import Layer
from .conv import Conv2D
from .core import Activation, Dense, Dropout, Flatten, Input, InputLayer, ReLU, Softmax
from .normalization import BatchNormalization
from .pooling import (
    AveragePooling2D,
    AvgPool2D,
    GlobalAveragePooling2D,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    GlobalMaxPooling2D,
    MaxPool2D,
    MaxPooling2D,
)
from .preprocessing import (
    Normalization,
    RandomContrast,
    RandomFlip,
    RandomRotation,
    RandomTranslation,
    RandomZoom,
    Rescaling,
    Resizing,
)
from .reshaping import ZeroPadding2D

_BUILTIN = [
    Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, ELU, Flatten, GlobalAveragePooling2D,
    GlobalMaxPooling2D, InputLayer, LeakyReLU, MaxPooling2D, Normalization, RandomContrast, RandomFlip,
    RandomRotation, RandomTranslation, RandomZoom, ReLU, Rescaling, Resizing, Softmax, ZeroPadding2D,
]
#: The closed registry of layer classes a model file may name (``register`` adds a learner's own).
LAYERS = {cls.__name__: cls for cls in _BUILTIN}


def register(cls):
    """Make a Layer subclass loadable by name from saved models (``@register`` on the class)."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise TypeError(f"register expects a Layer subclass. Received: {cls!r}")
    LAYERS[cls.__name__] = cls
    return cls


def get(class_name):
    """The layer class saved under ``class_name``."""
    if not isinstance(class_name, str) or class_name not in LAYERS:
        raise ValueError(f"Unknown layer class {class_name!r}. Known: {sorted(LAYERS)}")
    return LAYERS[class_name]


def serialize(layer):
    """``{"class_name": ..., "config": ...}``, JSON-able."""
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def deserialize(data):
    """Inverse of ``serialize``: only classes in ``LAYERS``; nothing a file names is imported."""
    return from_config(LAYERS, data, "layer")


__all__ = [cls.__name__ for cls in _BUILTIN] + [
    "Layer", "Input", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "GlobalMaxPool2D",
    "LAYERS", "register", "get", "serialize", "deserialize",
]
