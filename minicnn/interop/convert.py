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
Rescaling / Normalization     ``Rescale`` / ``Standardize`` (small modules defined here)
Resizing                      ``Upsample(size, mode='bilinear', align_corners=False)`` or 'nearest-exact'
Random* augmentation          left out (the identity at inference), with a warning
activation='softmax'          ``Softmax(dim=1)`` (the channel axis, for NCHW maps too)
============================  =====================================================================

Two differences that remain: PyTorch's BatchNorm updates ``running_var`` with the *unbiased* batch
variance (minicnn and Keras use the biased one), so moving variances drift apart by ~M/(M-1) if
you keep training; and ``nn.CrossEntropyLoss`` wants logits, so train on ``torch_model[:-1]``
(everything but the final Softmax), or use ``nn.NLLLoss`` on ``torch.log`` of the output.

PyTorch is imported only when these functions run; ``import minicnn`` does not need it.
"""

import math
import warnings

import numpy as np

from .. import activations as activations_module
from .. import kernels
from ..layers import (
    ELU,
    Activation,
    AveragePooling2D,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    Input,
    LeakyReLU,
    MaxPooling2D,
    Normalization,
    RandomContrast,
    RandomFlip,
    RandomRotation,
    RandomTranslation,
    RandomZoom,
    Rescaling,
    Resizing,
    ZeroPadding2D,
)
from ..layers import ReLU as ReLULayer
from ..layers import Softmax as SoftmaxLayer

#: Training-time augmentation: the identity at inference, so ``to_torch`` leaves it out.
AUGMENTATION = (RandomContrast, RandomFlip, RandomRotation, RandomTranslation, RandomZoom)

__all__ = ["to_torch", "from_torch", "ChannelsLastFlatten", "Rescale", "Standardize"]  # noqa: F822 (made on first use)


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("minicnn.interop needs PyTorch: pip install torch==2.13.0 (or pip install 'minicnn[torch]')") from None
    return torch


# ============================================================================ three small modules
_MODULES = {}


def _custom_modules():
    """Define (once, when PyTorch is first needed) the modules PyTorch lacks."""
    if _MODULES:
        return _MODULES
    torch = _torch()
    nn = torch.nn

    def per_channel(value, x):
        """A (C,) tensor shaped to broadcast over axis 1 of x (NCHW or (N, C)); scalars as they are."""
        return value if value.dim() == 0 else value.reshape(1, -1, *([1] * (x.dim() - 2)))

    class ChannelsLastFlatten(nn.Module):
        """Flatten (N, C, H, W) in (h, w, c) order, as minicnn/Keras do: permute to NHWC, then flatten."""

        def forward(self, x):
            if x.dim() == 4:
                x = x.permute(0, 2, 3, 1)
            return x.flatten(1)

    class Rescale(nn.Module):
        """``y = x * scale + offset`` (``minicnn.layers.Rescaling``); per-channel values act on axis 1."""

        def __init__(self, scale, offset=0.0):
            super().__init__()
            self.register_buffer("scale", torch.as_tensor(np.asarray(scale, dtype=np.float64)))
            self.register_buffer("offset", torch.as_tensor(np.asarray(offset, dtype=np.float64)))

        def forward(self, x):
            return x * per_channel(self.scale, x) + per_channel(self.offset, x)

        def extra_repr(self):
            return f"scale={self.scale.tolist()}, offset={self.offset.tolist()}"

    class Standardize(nn.Module):
        """``y = (x - mean) / max(sqrt(variance), 1e-7)`` (``minicnn.layers.Normalization``), per channel or scalar."""

        def __init__(self, mean, variance):
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float64)))
            self.register_buffer("variance", torch.as_tensor(np.asarray(variance, dtype=np.float64)))

        def forward(self, x):
            std = torch.clamp(torch.sqrt(self.variance), min=Normalization.epsilon)
            return (x - per_channel(self.mean, x)) / per_channel(std, x)

    _MODULES.update(ChannelsLastFlatten=ChannelsLastFlatten, Rescale=Rescale, Standardize=Standardize)
    return _MODULES


def __getattr__(name):
    if name in ("ChannelsLastFlatten", "Rescale", "Standardize"):
        return _custom_modules()[name]
    raise AttributeError(f"module 'minicnn.interop' has no attribute {name!r}")


# ============================================================================ minicnn -> PyTorch
def _tensor(torch, array):
    return torch.from_numpy(np.ascontiguousarray(array)).clone()


def _set(torch, param, array):
    with torch.no_grad():
        param.copy_(_tensor(torch, array).to(param.dtype))   # the module is already in the model's dtype


def _activation_modules(nn, fn, where):
    """The PyTorch module for an activation object (none for None)."""
    if fn is None:
        return []
    name = fn.name
    if name == "relu":
        return [nn.ReLU()]
    if name == "sigmoid":
        return [nn.Sigmoid()]
    if name == "tanh":
        return [nn.Tanh()]
    if name == "softmax":
        return [nn.Softmax(dim=1)]
    if name == "leaky_relu":
        return [nn.LeakyReLU(fn.negative_slope)]
    if name == "elu":
        return [nn.ELU(fn.alpha)]
    if name == "gelu":
        return [nn.GELU(approximate="tanh" if fn.approximate else "none")]
    raise NotImplementedError(f"to_torch: {where} uses activation {name!r}, which has no PyTorch equivalent here.")


def _pool_padding(layer):
    return kernels.conv_padding(layer.padding, layer.input_shape[1:3], layer.pool_size, layer.strides)


def _symmetric(pads, window):
    """True when ``((t, b), (l, r))`` is symmetric and within PyTorch's pooling limit (pad <= window // 2)."""
    return all(a == b and a <= k // 2 for (a, b), k in zip(pads, window))


def _ceil_mode_matches(layer, pads):
    """True when all padding is bottom/right and PyTorch's ``ceil_mode`` gives the same windows."""
    if any(top for top, _ in pads):
        return False
    for size, k, s in zip(layer.input_shape[1:3], layer.pool_size, layer.strides):
        out = math.ceil((size - k) / s) + 1
        if (out - 1) * s >= size:    # PyTorch drops a last window that would start in the padding
            out -= 1
        if out != kernels.output_size(size, k, s, kernels.same_padding_1d(size, k, s)):
            return False
    return True


def _export_layer(torch, layer, dtype):
    """The PyTorch modules computing ``layer`` (its activation included), with its weights copied in."""
    nn = torch.nn
    kw = {"dtype": dtype}                            # weights are made in the final dtype, then copied in
    where = f"layer '{layer.name}' ({type(layer).__name__})"
    rank = len(layer.input_shape)
    mods = []
    if isinstance(layer, Conv2D):
        (t, b), (l, r) = kernels.conv_padding(layer.padding, layer.input_shape[1:3], layer.kernel_size,
                                              layer.strides, layer.dilation_rate)
        padding = (t, l)
        if t != b or l != r:                         # TensorFlow puts the odd row/column bottom/right
            mods.append(nn.ZeroPad2d((l, r, t, b)))
            padding = 0
        kernel = layer.params["kernel"]              # (KH, KW, C, F)
        conv = nn.Conv2d(kernel.shape[2], layer.filters, layer.kernel_size, stride=layer.strides, padding=padding,
                         dilation=layer.dilation_rate, bias=layer.use_bias, **kw)
        _set(torch, conv.weight, kernel.transpose(3, 2, 0, 1))   # (F, C, KH, KW)
        if layer.use_bias:
            _set(torch, conv.bias, layer.params["bias"])
        mods.append(conv)
    elif isinstance(layer, Dense):
        kernel = layer.params["kernel"]              # (D, K)
        linear = nn.Linear(kernel.shape[0], layer.units, bias=layer.use_bias, **kw)
        _set(torch, linear.weight, kernel.T)         # (K, D)
        if layer.use_bias:
            _set(torch, linear.bias, layer.params["bias"])
        mods.append(linear)
    elif isinstance(layer, BatchNormalization):
        if layer.axis not in (-1, rank - 1) or rank not in (2, 4):
            raise NotImplementedError(f"to_torch: {where} normalises axis {layer.axis} of {rank}-D input; "
                                      "only the channel axis of 2-D or 4-D input maps to PyTorch.")
        C = layer.moving_mean.shape[0]
        bn = (nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d)(C, eps=layer.epsilon, momentum=1 - layer.momentum, **kw)
        _set(torch, bn.weight, layer.params["gamma"] if layer.scale else np.ones(C))
        _set(torch, bn.bias, layer.params["beta"] if layer.center else np.zeros(C))
        bn.weight.requires_grad_(layer.scale)
        bn.bias.requires_grad_(layer.center)
        _set(torch, bn.running_mean, layer.moving_mean)
        _set(torch, bn.running_var, layer.moving_variance)
        mods.append(bn)
    elif isinstance(layer, MaxPooling2D):
        pads = _pool_padding(layer)
        if _symmetric(pads, layer.pool_size):
            mods.append(nn.MaxPool2d(layer.pool_size, layer.strides, padding=(pads[0][0], pads[1][0])))
        else:                                        # -inf padding never wins a max, like minicnn's
            (t, b), (l, r) = pads
            mods += [nn.ConstantPad2d((l, r, t, b), -math.inf), nn.MaxPool2d(layer.pool_size, layer.strides)]
    elif isinstance(layer, AveragePooling2D):
        pads = _pool_padding(layer)
        if _symmetric(pads, layer.pool_size):
            mods.append(nn.AvgPool2d(layer.pool_size, layer.strides, padding=(pads[0][0], pads[1][0]),
                                     count_include_pad=False))
        elif _ceil_mode_matches(layer, pads):
            mods.append(nn.AvgPool2d(layer.pool_size, layer.strides, ceil_mode=True, count_include_pad=False))
        else:
            raise NotImplementedError(
                f"to_torch: {where} has padding='same' with padding {pads} (top/bottom, left/right) on input "
                f"{layer.input_shape}; PyTorch's AvgPool2d cannot leave asymmetric padding out of the means. "
                "Use padding='valid', or sizes where 'same' pads symmetrically."
            )
    elif isinstance(layer, GlobalAveragePooling2D):
        mods += [nn.AdaptiveAvgPool2d(1)] + ([] if layer.keepdims else [nn.Flatten()])
    elif isinstance(layer, GlobalMaxPooling2D):
        mods += [nn.AdaptiveMaxPool2d(1)] + ([] if layer.keepdims else [nn.Flatten()])
    elif isinstance(layer, ZeroPadding2D):
        (t, b), (l, r) = layer.padding
        mods.append(nn.ZeroPad2d((l, r, t, b)))
    elif isinstance(layer, Flatten):
        mods.append(_custom_modules()["ChannelsLastFlatten"]() if rank == 4 else nn.Flatten())
    elif isinstance(layer, Dropout):
        mods.append(nn.Dropout(layer.rate))
    elif isinstance(layer, LeakyReLU):
        mods.append(nn.LeakyReLU(layer.negative_slope))
    elif isinstance(layer, ELU):
        mods.append(nn.ELU(layer.alpha))
    elif isinstance(layer, Activation):
        pass                                         # the activation itself is appended below
    elif isinstance(layer, Rescaling):
        mods.append(_custom_modules()["Rescale"](layer.scale, layer.offset))
    elif isinstance(layer, Normalization):
        axes = layer.axis if isinstance(layer.axis, list) else [layer.axis]
        if axes not in ([None], [-1], [rank - 1]):
            raise NotImplementedError(f"to_torch: {where} keeps statistics for axis {layer.axis}; "
                                      "only per-channel (axis=-1) or scalar (axis=None) statistics are supported.")
        mods.append(_custom_modules()["Standardize"](layer.mean, layer.variance))
    elif isinstance(layer, Resizing):
        mode = "bilinear" if layer.interpolation == "bilinear" else "nearest-exact"
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        mods.append(nn.Upsample(size=(layer.height, layer.width), mode=mode, **kwargs))
    else:
        raise NotImplementedError(
            f"to_torch: {where} has no PyTorch equivalent here. Supported: Conv2D, Dense, BatchNormalization, "
            "MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, ZeroPadding2D, Flatten, "
            "Dropout, Activation/ReLU/Softmax, LeakyReLU, ELU, Rescaling, Normalization, Resizing, Random* layers."
        )
    return mods + _activation_modules(nn, layer.activation, where)


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
        modules += _export_layer(torch, layer, dtype)
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


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _numpy(tensor):
    return tensor.detach().cpu().numpy().copy()


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


def _convert(imp, path, module, following):
    """Add the minicnn layer(s) for one PyTorch module; returns how many following modules it consumed."""
    nn, dtype, torch_all = imp.nn, imp.dtype, imp.torch.all
    where = f"module '{path}' ({type(module).__name__})"
    custom = _custom_modules()
    nxt = following[0][1] if following else None

    if isinstance(module, nn.Conv2d):
        imp.need_rank(4, where)
        if module.groups != 1 or module.padding_mode != "zeros":
            raise NotImplementedError(f"from_torch: {where} has groups={module.groups}, "
                                      f"padding_mode={module.padding_mode!r}; minicnn has groups=1, zero padding.")
        k, s, d = _pair(module.kernel_size), _pair(module.stride), _pair(module.dilation)
        if isinstance(module.padding, str):
            padding = module.padding
        else:
            pads = tuple((p, p) for p in _pair(module.padding))
            padding = imp.same_or_none(pads, k, s, d)
            if padding is None:
                imp.add(ZeroPadding2D(pads, dtype=dtype))
                padding = "valid"
        w = _numpy(module.weight).transpose(2, 3, 1, 0)    # (F, C, KH, KW) -> (KH, KW, C, F)
        weights = [w] + ([_numpy(module.bias)] if module.bias is not None else [])
        imp.add(Conv2D(module.out_channels, k, strides=s, padding=padding, dilation_rate=d,
                       use_bias=module.bias is not None, dtype=dtype), weights)
        return 0
    if isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d)):
        imp.need_rank(4, where)
        l, r, t, b = module.padding
        pads = ((t, b), (l, r))
        value = getattr(module, "value", 0.0)
        if min(pads[0] + pads[1]) < 0:
            raise NotImplementedError(f"from_torch: {where} crops (negative padding); minicnn has no cropping layer.")
        if value == -math.inf and isinstance(nxt, nn.MaxPool2d) and _pair(nxt.padding) == (0, 0) and not nxt.ceil_mode:
            k = _pair(nxt.kernel_size)
            s = _pair(nxt.stride if nxt.stride is not None else nxt.kernel_size)
            if imp.same_or_none(pads, k, s) == "same" and _pair(nxt.dilation) == (1, 1):
                imp.add(MaxPooling2D(k, s, padding="same", dtype=dtype))
                return 1
        if value != 0:
            raise NotImplementedError(f"from_torch: {where} pads with {value}; only zero padding (or -inf padding "
                                      "that makes a following MaxPool2d 'same') has a minicnn equivalent.")
        if isinstance(nxt, nn.Conv2d) and _pair(nxt.padding) == (0, 0) and nxt.groups == 1:
            k, s, d = _pair(nxt.kernel_size), _pair(nxt.stride), _pair(nxt.dilation)
            if imp.same_or_none(pads, k, s, d) == "same":     # TensorFlow-style 'same': fold into the conv
                w = _numpy(nxt.weight).transpose(2, 3, 1, 0)
                weights = [w] + ([_numpy(nxt.bias)] if nxt.bias is not None else [])
                imp.add(Conv2D(nxt.out_channels, k, strides=s, padding="same", dilation_rate=d,
                               use_bias=nxt.bias is not None, dtype=dtype), weights)
                return 1
        imp.add(ZeroPadding2D(pads, dtype=dtype))
        return 0
    if isinstance(module, nn.Linear):
        imp.need_rank(2, where)
        if imp.shape[-1] != module.in_features:
            raise ValueError(f"from_torch: {where} takes {module.in_features} features; the input here has "
                             f"{imp.shape[-1]} (minicnn shape {imp.shape}). Check `input_shape`.")
        w = _numpy(module.weight)                           # (K, D)
        if imp.permute_next_linear is not None:
            w = w[:, imp.permute_next_linear]               # columns from (c, h, w) order to (h, w, c)
            imp.permute_next_linear = None
        weights = [w.T] + ([_numpy(module.bias)] if module.bias is not None else [])
        imp.add(Dense(module.out_features, use_bias=module.bias is not None, dtype=dtype), weights)
        return 0
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        imp.need_rank(4 if isinstance(module, nn.BatchNorm2d) else 2, where)
        if module.momentum is None or not module.track_running_stats:
            raise NotImplementedError(f"from_torch: {where} has momentum=None or no running statistics; "
                                      "minicnn's BatchNormalization keeps exponential moving averages.")
        # a frozen gamma of ones or beta of zeros is how to_torch writes scale=False or center=False
        scale = module.affine and not (not module.weight.requires_grad and bool(torch_all(module.weight == 1)))
        center = module.affine and not (not module.bias.requires_grad and bool(torch_all(module.bias == 0)))
        weights = ([_numpy(module.weight)] if scale else []) + ([_numpy(module.bias)] if center else []) + \
                  [_numpy(module.running_mean), _numpy(module.running_var)]
        imp.add(BatchNormalization(momentum=1 - module.momentum, epsilon=module.eps, center=center, scale=scale,
                                   dtype=dtype), weights)
        return 0
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        imp.need_rank(4, where)
        k = _pair(module.kernel_size)
        s = _pair(module.stride if module.stride is not None else module.kernel_size)
        is_max = isinstance(module, nn.MaxPool2d)
        if is_max and (_pair(module.dilation) != (1, 1) or module.return_indices):
            raise NotImplementedError(f"from_torch: {where} uses dilation or return_indices, which minicnn lacks.")
        if not is_max and (module.divisor_override is not None
                           or (module.count_include_pad and _pair(module.padding) != (0, 0))):
            raise NotImplementedError(f"from_torch: {where} counts padded cells in its means; minicnn's "
                                      "AveragePooling2D leaves them out (use count_include_pad=False).")
        padding = imp.same_or_none(imp.pooled_pads(k, s, _pair(module.padding), module.ceil_mode), k, s)
        if padding is None:
            raise NotImplementedError(f"from_torch: {where}'s padding {module.padding} (ceil_mode={module.ceil_mode}) "
                                      f"on input {imp.shape} is neither 'valid' nor TensorFlow's 'same'.")
        imp.add((MaxPooling2D if is_max else AveragePooling2D)(k, s, padding=padding, dtype=dtype))
        return 0
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        imp.need_rank(4, where)
        if _pair(module.output_size) != (1, 1):
            raise NotImplementedError(f"from_torch: {where} has output_size={module.output_size}; only 1 "
                                      "(global pooling) is supported.")
        cls = GlobalAveragePooling2D if isinstance(module, nn.AdaptiveAvgPool2d) else GlobalMaxPooling2D
        flattened = isinstance(nxt, nn.Flatten)     # to_torch's keepdims=False (ChannelsLastFlatten: a Flatten layer)
        imp.add(cls(keepdims=not flattened, dtype=dtype))
        return int(flattened)
    if isinstance(module, custom["ChannelsLastFlatten"]):
        imp.add(Flatten(dtype=dtype))
        return 0
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise NotImplementedError(f"from_torch: {where} flattens dims {module.start_dim}..{module.end_dim}; "
                                      "only Flatten(start_dim=1) is supported.")
        if len(imp.shape) == 4 and imp.shape[1] * imp.shape[2] > 1:
            _, H, W, C = imp.shape
            # position (h, w, c) of minicnn's flat vector holds PyTorch's feature c*H*W + h*W + w
            imp.permute_next_linear = np.arange(C * H * W).reshape(C, H, W).transpose(1, 2, 0).ravel()
            elementwise = (nn.Dropout, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Identity)
            rest = [m for _, m in following]
            target = next((m for m in rest if not isinstance(m, elementwise)), None)
            if not isinstance(target, nn.Linear):
                raise NotImplementedError(f"from_torch: {where} flattens NCHW maps in (c, h, w) order and is not "
                                          "followed by a Linear whose columns could be reordered to minicnn's "
                                          "(h, w, c) order. Use minicnn.interop.ChannelsLastFlatten instead.")
        imp.add(Flatten(dtype=dtype))
        return 0
    if isinstance(module, nn.Dropout):
        imp.add(Dropout(module.p, dtype=dtype))
        return 0
    # activations that an ``activation=`` string restores exactly (default slope and alpha, exact GELU)
    name = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Softmax: "softmax"}.get(type(module))
    if isinstance(module, nn.GELU) and module.approximate == "none":
        name = "gelu"
    elif isinstance(module, nn.LeakyReLU) and imp.fusable is not None \
            and module.negative_slope == activations_module.LeakyReLU().negative_slope:
        name = "leaky_relu"
    elif isinstance(module, nn.ELU) and imp.fusable is not None and module.alpha == 1.0:
        name = "elu"
    if name is not None:
        if name == "softmax" and module.dim not in ((1, -1) if len(imp.shape) == 2 else (1, -3)):
            raise NotImplementedError(f"from_torch: {where} has dim={module.dim}; minicnn's softmax runs over "
                                      "the channel axis (PyTorch dim=1).")
        if imp.fusable is not None:
            imp.fusable.activation = activations_module.get(name)
            imp.fusable = None
        elif name == "relu":
            imp.add(ReLULayer(dtype=dtype))
        elif name == "softmax":
            imp.add(SoftmaxLayer(dtype=dtype))
        else:
            imp.add(Activation(name, dtype=dtype))
        return 0
    if isinstance(module, nn.GELU):                          # approximate='tanh'
        imp.add(Activation(activations_module.GELU(approximate=True), dtype=dtype))
        return 0
    if isinstance(module, nn.LeakyReLU):
        imp.add(LeakyReLU(module.negative_slope, dtype=dtype))
        return 0
    if isinstance(module, nn.ELU):
        imp.add(ELU(module.alpha, dtype=dtype))
        return 0
    if isinstance(module, nn.Identity):
        return 0
    if isinstance(module, custom["Rescale"]):
        imp.add(Rescaling(_numpy(module.scale).tolist(), _numpy(module.offset).tolist(), dtype=dtype))
        return 0
    if isinstance(module, custom["Standardize"]):
        mean, variance = _numpy(module.mean), _numpy(module.variance)
        imp.add(Normalization(axis=None if mean.ndim == 0 else -1, mean=mean.tolist(), variance=variance.tolist(),
                              dtype=dtype))
        return 0
    if isinstance(module, nn.Upsample):
        imp.need_rank(4, where)
        mode = {"bilinear": "bilinear", "nearest-exact": "nearest"}.get(module.mode)
        if mode is None or (mode == "bilinear" and module.align_corners):
            raise NotImplementedError(f"from_torch: {where} uses mode={module.mode!r}, "
                                      f"align_corners={module.align_corners}; minicnn's Resizing is 'bilinear' "
                                      "(align_corners=False) or 'nearest-exact'.")
        if module.size is not None:
            size = _pair(module.size)
        else:
            size = tuple(int(math.floor(n * f)) for n, f in zip(imp.shape[1:3], _pair(module.scale_factor)))
        imp.add(Resizing(*size, interpolation=mode, dtype=dtype))
        return 0
    raise NotImplementedError(
        f"from_torch: cannot convert {where}. minicnn knows nn.Sequential stacks of Conv2d, Linear, "
        "BatchNorm1d/2d, MaxPool2d, AvgPool2d, AdaptiveAvg/MaxPool2d(1), ZeroPad2d, Flatten, Dropout, ReLU, "
        "Sigmoid, Tanh, Softmax, LeakyReLU, ELU, GELU, Identity, Upsample and minicnn.interop's "
        "ChannelsLastFlatten, Rescale and Standardize."
    )


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
        i += 1 + _convert(imp, path, leaf, leaves[i + 1:])
    model = Sequential([Input(shape=input_shape, dtype=dtype)] + imp.layers, name=name)
    for layer, weights in zip(imp.layers, imp.weights):
        if weights:
            layer.set_weights(weights)
    return model
