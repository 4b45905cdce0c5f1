"""Layers: thin stateful classes over ``minicnn.kernels`` (see ``base.Layer`` for the contract)."""

from .base import Layer
from .conv import Conv2D
from .core import Activation, Dense, Dropout, Flatten, Input, InputLayer, ReLU, Softmax
from .pooling import MaxPool2D, MaxPooling2D

_BUILTIN = [Activation, Conv2D, Dense, Dropout, Flatten, InputLayer, MaxPooling2D, ReLU, Softmax]
_REGISTRY = {cls.__name__: cls for cls in _BUILTIN}


def register(cls):
    """Make a Layer subclass loadable by name from saved models (``@register`` on the class)."""
    _REGISTRY[cls.__name__] = cls
    return cls


def get(class_name):
    """The layer class saved under ``class_name``."""
    if class_name not in _REGISTRY:
        raise ValueError(f"Unknown layer class {class_name!r}. Known: {sorted(_REGISTRY)}")
    return _REGISTRY[class_name]


def serialize(layer):
    """``{"class_name": ..., "config": ...}``, JSON-able."""
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def deserialize(data):
    return get(data["class_name"]).from_config(data["config"])


__all__ = [
    "Layer", "Activation", "Conv2D", "Dense", "Dropout", "Flatten", "Input", "InputLayer",
    "MaxPool2D", "MaxPooling2D", "ReLU", "Softmax", "register", "get", "serialize", "deserialize",
]
from .preprocessing import Normalization, RandomContrast, RandomFlip, RandomRotation, RandomTranslation, RandomZoom, Rescaling, Resizing  # noqa: E402, I001
for _cls in (Normalization, RandomContrast, RandomFlip, RandomRotation, RandomTranslation, RandomZoom, Rescaling, Resizing): register(_cls)  # noqa: E701
from .activation_layers import ELU, LeakyReLU  # noqa: E402, I001
from .normalization import BatchNormalization  # noqa: E402
from .pooling import AveragePooling2D, AvgPool2D, GlobalAveragePooling2D, GlobalAvgPool2D, GlobalMaxPool2D, GlobalMaxPooling2D  # noqa: E402
from .reshaping import ZeroPadding2D  # noqa: E402
for _cls in (AveragePooling2D, BatchNormalization, ELU, GlobalAveragePooling2D, GlobalMaxPooling2D, LeakyReLU, ZeroPadding2D): register(_cls)  # noqa: E701
__all__ += ["AveragePooling2D", "AvgPool2D", "BatchNormalization", "ELU", "GlobalAveragePooling2D", "GlobalAvgPool2D", "GlobalMaxPool2D", "GlobalMaxPooling2D", "LeakyReLU", "ZeroPadding2D"]  # noqa: E501
