"""A path out: hand a trained minicnn model to PyTorch, and bring PyTorch stacks back.

minicnn is for understanding; when a model outgrows one CPU (a GPU, many GPUs with
``torch.nn.parallel.DistributedDataParallel``, mixed precision) carry on in PyTorch (or let
``minicnn.interop.fit_distributed`` train it there and bring the weights back)::

    torch_model = minicnn.interop.to_torch(model)                  # an nn.Sequential, trained weights included
    probs = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2))   # PyTorch takes NCHW images

and back, for the layers minicnn has::

    model = minicnn.interop.from_torch(torch_model, input_shape=(28, 28, 1))

What changes on the way (``to_torch``; ``from_torch`` undoes each):

============================  =====================================================================
minicnn (Keras layout)        PyTorch
============================  =====================================================================
images (N, H, W, C)           (N, C, H, W): permute the input with ``x.permute(0, 3, 1, 2)``
Conv2D kernel (KH, KW, C, F)  ``Conv2d.weight`` (F, C, KH, KW)
Dense kernel (D, K)           ``Linear.weight`` (K, D)
padding='same'                symmetric ``padding=(top, left)``, or ``ZeroPad2d((left, right, top, bottom))``
                              before an unpadded conv when the extra row/column goes bottom/right
Flatten (h, w, c order)       ``ChannelsLastFlatten``: permute to NHWC, then flatten, so the Dense
                              kernel rows keep their meaning (``from_torch`` of a plain ``nn.Flatten``
                              permutes the next Linear's columns instead)
MaxPooling2D 'same'           ``MaxPool2d(padding=...)``, or ``ConstantPad2d(..., -inf)`` before it
AveragePooling2D 'same'       ``AvgPool2d(count_include_pad=False)`` with symmetric padding, or
                              ``ceil_mode=True`` when all padding is bottom/right; otherwise
                              NotImplementedError
BatchNormalization            ``BatchNorm2d``/``BatchNorm1d``, ``momentum = 1 - momentum``, same ``eps``
Global*Pooling2D              ``AdaptiveAvg/MaxPool2d(1)`` (+ ``Flatten``)
Rescaling / Normalization     ``Rescale`` / ``Standardize`` (small modules, ``torch_modules.py``)
Resizing                      ``Upsample(size, mode='bilinear', align_corners=False)`` or 'nearest-exact'
Random* augmentation          left out (the identity at inference), with a warning
activation='softmax'          ``Softmax(dim=1)`` (the channel axis, for NCHW maps too)
============================  =====================================================================

Two differences that remain: PyTorch's BatchNorm updates ``running_var`` with the *unbiased* batch
variance (minicnn and Keras use the biased one), so moving variances drift apart by ~M/(M-1) if
you keep training; and ``nn.CrossEntropyLoss`` wants logits, so train on ``torch_model[:-1]``
(everything but the final Softmax), or use ``nn.NLLLoss`` on ``torch.log`` of the output.

Each layer crosses through one converter in the tables of ``converters.py`` (``TO_TORCH``,
``from_torch_table()``); this module walks the model and keeps track of dtype and shape.

PyTorch is imported only when these functions run; ``import minicnn`` does not need it.
"""

import math
import warnings

from .. import kernels
from ..layers import (
    Conv2D,
    Dense,
    Input,
    RandomContrast,
    RandomFlip,
    RandomRotation,
    RandomTranslation,
    RandomZoom,
)
from .converters import export_layer, import_module
from .torch_modules import _custom_modules, _torch

#: Training-time augmentation: the identity at inference, so ``to_torch`` leaves it out.
AUGMENTATION = (RandomContrast, RandomFlip, RandomRotation, RandomTranslation, RandomZoom)

__all__ = ["to_torch", "from_torch", "ChannelsLastFlatten", "Rescale", "Standardize"]  # noqa: F822 (made on first use)


def __getattr__(name):
    if name in ("ChannelsLastFlatten", "Rescale", "Standardize"):
        return _custom_modules()[name]
    raise AttributeError(f"module 'minicnn.interop' has no attribute {name!r}")


# ============================================================================ minicnn -> PyTorch
def to_torch(model):
    """An ``nn.Sequential`` computing the same function as ``model``, in eval mode, with its weights.

    Parameters
    ----------
    model : Sequential, built (trained or not)

    Returns
    -------
    torch.nn.Sequential
        Takes ``(N, C, H, W)`` images (or ``(N, D)`` vectors for a model of Dense layers) in the
        model's float type; outputs what ``model.predict`` does. Call ``.train()`` before training it.

    Raises
    ------
    NotImplementedError
        For a layer (or a setting, e.g. asymmetric 'same' average pooling) PyTorch has no equal of.
    """
    torch = _torch()
    if not model.built:
        raise ValueError(f"to_torch: model '{model.name}' is not built. Build it first (e.g. start it with Input(shape=...)).")
    if len(model.input_shape) not in (2, 4):
        raise NotImplementedError(f"to_torch: inputs must be images (N, H, W, C) or vectors (N, D). "
                                  f"Received: input_shape={model.input_shape}")
    dtype = torch.float64 if model.layers and model.layers[0].dtype == "float64" else torch.float32
    modules, skipped = [], []
    for layer in model.layers:
        if isinstance(layer, AUGMENTATION):
            skipped.append(layer.name)
            continue
        modules += export_layer(torch, layer, dtype)
    if skipped:
        warnings.warn(f"to_torch: left out the augmentation layer(s) {skipped}: they are the identity at inference. "
                      "Augment in the PyTorch data pipeline instead (e.g. torchvision.transforms).", stacklevel=2)
    return torch.nn.Sequential(*modules).to(dtype).eval()   # .to: the buffers of Rescale and Standardize


# ============================================================================ PyTorch -> minicnn
def _leaves(torch, module, prefix=""):
    """``(path, module)`` for the modules of nested ``nn.Sequential`` containers, in order."""
    if isinstance(module, torch.nn.Sequential):
        out = []
        for name, child in module.named_children():
            out += _leaves(torch, child, f"{prefix}.{name}" if prefix else name)
        return out
    return [(prefix or type(module).__name__, module)]


class _Importer:
    """Walks the PyTorch modules in order, making minicnn layers and tracking the (NHWC) shape."""

    def __init__(self, torch, input_shape, dtype):
        self.torch, self.nn, self.dtype = torch, torch.nn, dtype
        self.shape = (None, *input_shape)
        self.layers, self.weights = [], []
        self.permute_next_linear = None     # set by an NCHW nn.Flatten: the Linear after it reads (c, h, w)
        self.fusable = None                 # the layer just made from a Conv2d/Linear, open to an activation

    def add(self, layer, weights=()):
        self.shape = tuple(layer.compute_output_shape(self.shape))
        self.layers.append(layer)
        self.weights.append(list(weights))
        self.fusable = layer if isinstance(layer, (Conv2D, Dense)) and layer.activation is None else None
        return layer

    def need_rank(self, rank, where):
        if len(self.shape) != rank:
            raise NotImplementedError(f"from_torch: {where} expects {rank}-D input here, but the tensor is "
                                      f"{len(self.shape)}-D (minicnn shape {self.shape}).")

    def same_or_none(self, pads, window, strides, dilation=(1, 1)):
        """'valid' or 'same' if explicit padding ``((t, b), (l, r))`` equals one of them here, else None."""
        if all(p == (0, 0) for p in pads):
            return "valid"
        if tuple(pads) == kernels.conv_padding("same", self.shape[1:3], window, strides, dilation):
            return "same"
        return None

    def pooled_pads(self, k, s, p, ceil_mode):
        """PyTorch's pooling padding as explicit ``((t, b), (l, r))``, the ``ceil_mode`` overhang included."""
        pads = []
        for size, kk, ss, pp in zip(self.shape[1:3], k, s, p):
            out = (math.ceil if ceil_mode else math.floor)((size + 2 * pp - kk) / ss) + 1
            if ceil_mode and (out - 1) * ss >= size + pp:
                out -= 1
            pads.append((pp, max((out - 1) * ss + kk - size - pp, 0)))
        return tuple(pads)


def from_torch(module, input_shape, name=None):
    """A minicnn ``Sequential`` computing the same function as a PyTorch ``nn.Sequential``.

    Parameters
    ----------
    module : torch.nn.Sequential (nested ones are flattened) or one supported module
    input_shape : tuple
        One sample's shape in **minicnn's layout, without the batch axis**: (H, W, C) for images
        (the PyTorch model sees (C, H, W)), or (D,) for vectors. Shapes decide 'same' padding,
        BatchNorm1d vs 2d checks and the Flatten order.
    name : str, optional

    Returns
    -------
    Sequential, built (not compiled), with the module's weights, in the module's float type.
    Conv2d or Linear followed by ReLU, Sigmoid, Tanh, Softmax or exact GELU become one layer with
    ``activation=``, as Keras writes them (so a final softmax fuses with the cross-entropy loss).

    Raises
    ------
    NotImplementedError
        Naming the first module (by its path in the container) minicnn cannot express.
    """
    from ..models import Sequential

    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module. Received: {type(module).__name__}")
    leaves = _leaves(torch, module)
    params = list(module.parameters()) + list(module.buffers())
    floating = [p.dtype for p in params if p.dtype.is_floating_point]
    dtype = "float64" if floating and floating[0] == torch.float64 else "float32"
    input_shape = tuple(int(d) for d in input_shape)
    imp = _Importer(torch, input_shape, dtype)
    i = 0
    while i < len(leaves):
        path, leaf = leaves[i]
        i += 1 + import_module(imp, path, leaf, leaves[i + 1:])
    model = Sequential([Input(shape=input_shape, dtype=dtype)] + imp.layers, name=name)
    for layer, weights in zip(imp.layers, imp.weights):
        if weights:
            layer.set_weights(weights)
    return model
