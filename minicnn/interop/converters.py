"""The tables of layer converters: one function per minicnn layer class (``TO_TORCH``) and one per PyTorch
module class (``from_torch_table()``). ``export_layer`` and ``import_module`` look a class up (a subclass
finds its nearest listed base, as ``isinstance`` would) and name the layer, and why, when there is no
converter or a setting has no equal. The walk over a model and the shape tracking live in ``convert.py``.
"""

import math

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
    LeakyReLU,
    MaxPooling2D,
    Normalization,
    Rescaling,
    Resizing,
    ZeroPadding2D,
)
from ..layers import ReLU as ReLULayer
from ..layers import Softmax as SoftmaxLayer
from .torch_modules import _custom_modules, _torch


def _lookup(table, obj):
    """The converter for ``obj``'s class, or for its nearest base class in ``table``; None if there is none."""
    return next((table[cls] for cls in type(obj).__mro__ if cls in table), None)


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


# ============================================================================ minicnn -> PyTorch
def _set(param, array):
    torch = _torch()
    with torch.no_grad():   # the module is already in the model's dtype
        param.copy_(torch.from_numpy(np.ascontiguousarray(array)).clone().to(param.dtype))


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


# Each converter: (nn, layer, dtype, where) -> the PyTorch modules computing the layer (its activation
# aside), made in the final dtype, with its weights copied in.
def _conv2d_to_torch(nn, layer, dtype, where):
    mods = []
    (t, b), (l, r) = kernels.conv_padding(layer.padding, layer.input_shape[1:3], layer.kernel_size,
                                          layer.strides, layer.dilation_rate)
    padding = (t, l)
    if t != b or l != r:                         # TensorFlow puts the odd row/column bottom/right
        mods.append(nn.ZeroPad2d((l, r, t, b)))
        padding = 0
    kernel = layer.params["kernel"]              # (KH, KW, C, F)
    conv = nn.Conv2d(kernel.shape[2], layer.filters, layer.kernel_size, stride=layer.strides, padding=padding,
                     dilation=layer.dilation_rate, bias=layer.use_bias, dtype=dtype)
    _set(conv.weight, kernel.transpose(3, 2, 0, 1))   # (F, C, KH, KW)
    if layer.use_bias:
        _set(conv.bias, layer.params["bias"])
    return mods + [conv]


def _dense_to_torch(nn, layer, dtype, where):
    kernel = layer.params["kernel"]              # (D, K)
    linear = nn.Linear(kernel.shape[0], layer.units, bias=layer.use_bias, dtype=dtype)
    _set(linear.weight, kernel.T)                # (K, D)
    if layer.use_bias:
        _set(linear.bias, layer.params["bias"])
    return [linear]


def _batch_norm_to_torch(nn, layer, dtype, where):
    rank = len(layer.input_shape)
    if layer.axis not in (-1, rank - 1) or rank not in (2, 4):
        raise NotImplementedError(f"to_torch: {where} normalises axis {layer.axis} of {rank}-D input; "
                                  "only the channel axis of 2-D or 4-D input maps to PyTorch.")
    C = layer.moving_mean.shape[0]
    bn = (nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d)(C, eps=layer.epsilon, momentum=1 - layer.momentum,
                                                           dtype=dtype)
    _set(bn.weight, layer.params["gamma"] if layer.scale else np.ones(C))
    _set(bn.bias, layer.params["beta"] if layer.center else np.zeros(C))
    bn.weight.requires_grad_(layer.scale)
    bn.bias.requires_grad_(layer.center)
    _set(bn.running_mean, layer.moving_mean)
    _set(bn.running_var, layer.moving_variance)
    return [bn]


def _max_pool_to_torch(nn, layer, dtype, where):
    pads = _pool_padding(layer)
    if _symmetric(pads, layer.pool_size):
        return [nn.MaxPool2d(layer.pool_size, layer.strides, padding=(pads[0][0], pads[1][0]))]
    (t, b), (l, r) = pads                        # -inf padding never wins a max, like minicnn's
    return [nn.ConstantPad2d((l, r, t, b), -math.inf), nn.MaxPool2d(layer.pool_size, layer.strides)]


def _average_pool_to_torch(nn, layer, dtype, where):
    pads = _pool_padding(layer)
    if _symmetric(pads, layer.pool_size):
        return [nn.AvgPool2d(layer.pool_size, layer.strides, padding=(pads[0][0], pads[1][0]),
                             count_include_pad=False)]
    if _ceil_mode_matches(layer, pads):
        return [nn.AvgPool2d(layer.pool_size, layer.strides, ceil_mode=True, count_include_pad=False)]
    raise NotImplementedError(
        f"to_torch: {where} has padding='same' with padding {pads} (top/bottom, left/right) on input "
        f"{layer.input_shape}; PyTorch's AvgPool2d cannot leave asymmetric padding out of the means. "
        "Use padding='valid', or sizes where 'same' pads symmetrically."
    )


def _global_pool_to_torch(nn, layer, dtype, where):
    pool = nn.AdaptiveAvgPool2d(1) if isinstance(layer, GlobalAveragePooling2D) else nn.AdaptiveMaxPool2d(1)
    return [pool] + ([] if layer.keepdims else [nn.Flatten()])


def _zero_padding_to_torch(nn, layer, dtype, where):
    (t, b), (l, r) = layer.padding
    return [nn.ZeroPad2d((l, r, t, b))]


def _flatten_to_torch(nn, layer, dtype, where):
    return [_custom_modules()["ChannelsLastFlatten"]() if len(layer.input_shape) == 4 else nn.Flatten()]


def _normalization_to_torch(nn, layer, dtype, where):
    axes = layer.axis if isinstance(layer.axis, list) else [layer.axis]
    if axes not in ([None], [-1], [len(layer.input_shape) - 1]):
        raise NotImplementedError(f"to_torch: {where} keeps statistics for axis {layer.axis}; "
                                  "only per-channel (axis=-1) or scalar (axis=None) statistics are supported.")
    return [_custom_modules()["Standardize"](layer.mean, layer.variance)]


def _resizing_to_torch(nn, layer, dtype, where):
    mode = "bilinear" if layer.interpolation == "bilinear" else "nearest-exact"
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return [nn.Upsample(size=(layer.height, layer.width), mode=mode, **kwargs)]


#: minicnn layer class -> converter. The Random* augmentation layers are left out by ``to_torch`` itself.
TO_TORCH = {
    Conv2D: _conv2d_to_torch,
    Dense: _dense_to_torch,
    BatchNormalization: _batch_norm_to_torch,
    MaxPooling2D: _max_pool_to_torch,
    AveragePooling2D: _average_pool_to_torch,
    GlobalAveragePooling2D: _global_pool_to_torch,
    GlobalMaxPooling2D: _global_pool_to_torch,
    ZeroPadding2D: _zero_padding_to_torch,
    Flatten: _flatten_to_torch,
    Dropout: lambda nn, layer, dtype, where: [nn.Dropout(layer.rate)],
    LeakyReLU: lambda nn, layer, dtype, where: [nn.LeakyReLU(layer.negative_slope)],
    ELU: lambda nn, layer, dtype, where: [nn.ELU(layer.alpha)],
    Activation: lambda nn, layer, dtype, where: [],   # (ReLU, Softmax too) the activation itself is appended
    Rescaling: lambda nn, layer, dtype, where: [_custom_modules()["Rescale"](layer.scale, layer.offset)],
    Normalization: _normalization_to_torch,
    Resizing: _resizing_to_torch,
}


def export_layer(torch, layer, dtype):
    """The PyTorch modules computing ``layer`` (its activation included), with its weights copied in."""
    where = f"layer '{layer.name}' ({type(layer).__name__})"
    converter = _lookup(TO_TORCH, layer)
    if converter is None:
        raise NotImplementedError(
            f"to_torch: {where} has no PyTorch equivalent here. Supported: Conv2D, Dense, BatchNormalization, "
            "MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, ZeroPadding2D, Flatten, "
            "Dropout, Activation/ReLU/Softmax, LeakyReLU, ELU, Rescaling, Normalization, Resizing, Random* layers."
        )
    return converter(torch.nn, layer, dtype, where) + _activation_modules(torch.nn, layer.activation, where)


# ============================================================================ PyTorch -> minicnn
def _numpy(tensor):
    return tensor.detach().cpu().numpy().copy()


def _next_module(following):
    return following[0][1] if following else None


def _add_layer(imp, cls, *args):
    imp.add(cls(*args, dtype=imp.dtype))
    return 0


def _cannot_convert(where):
    return NotImplementedError(
        f"from_torch: cannot convert {where}. minicnn knows nn.Sequential stacks of Conv2d, Linear, "
        "BatchNorm1d/2d, MaxPool2d, AvgPool2d, AdaptiveAvg/MaxPool2d(1), ZeroPad2d, Flatten, Dropout, ReLU, "
        "Sigmoid, Tanh, Softmax, LeakyReLU, ELU, GELU, Identity, Upsample and minicnn.interop's "
        "ChannelsLastFlatten, Rescale and Standardize."
    )


def _conv_weights(module):
    """A Conv2d's weights in minicnn's order and layout: kernel (F, C, KH, KW) -> (KH, KW, C, F), then bias."""
    w = _numpy(module.weight).transpose(2, 3, 1, 0)
    return [w] + ([_numpy(module.bias)] if module.bias is not None else [])


# Each converter: (imp, module, where, following) -> how many of the following modules it consumed, after
# adding the minicnn layer(s) for ``module`` to ``imp`` (convert._Importer: the layers so far and the shape).
def _conv2d_from_torch(imp, module, where, following):
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
            imp.add(ZeroPadding2D(pads, dtype=imp.dtype))
            padding = "valid"
    imp.add(Conv2D(module.out_channels, k, strides=s, padding=padding, dilation_rate=d,
                   use_bias=module.bias is not None, dtype=imp.dtype), _conv_weights(module))
    return 0


def _pad_from_torch(imp, module, where, following):
    nn, dtype, nxt = imp.nn, imp.dtype, _next_module(following)
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
            imp.add(Conv2D(nxt.out_channels, k, strides=s, padding="same", dilation_rate=d,
                           use_bias=nxt.bias is not None, dtype=dtype), _conv_weights(nxt))
            return 1
    imp.add(ZeroPadding2D(pads, dtype=dtype))
    return 0


def _linear_from_torch(imp, module, where, following):
    imp.need_rank(2, where)
    if imp.shape[-1] != module.in_features:
        raise ValueError(f"from_torch: {where} takes {module.in_features} features; the input here has "
                         f"{imp.shape[-1]} (minicnn shape {imp.shape}). Check `input_shape`.")
    w = _numpy(module.weight)                           # (K, D)
    if imp.permute_next_linear is not None:
        w = w[:, imp.permute_next_linear]               # columns from (c, h, w) order to (h, w, c)
        imp.permute_next_linear = None
    weights = [w.T] + ([_numpy(module.bias)] if module.bias is not None else [])
    imp.add(Dense(module.out_features, use_bias=module.bias is not None, dtype=imp.dtype), weights)
    return 0


def _batch_norm_from_torch(imp, module, where, following):
    imp.need_rank(4 if isinstance(module, imp.nn.BatchNorm2d) else 2, where)
    if module.momentum is None or not module.track_running_stats:
        raise NotImplementedError(f"from_torch: {where} has momentum=None or no running statistics; "
                                  "minicnn's BatchNormalization keeps exponential moving averages.")
    # a frozen gamma of ones or beta of zeros is how to_torch writes scale=False or center=False
    torch_all = imp.torch.all
    scale = module.affine and not (not module.weight.requires_grad and bool(torch_all(module.weight == 1)))
    center = module.affine and not (not module.bias.requires_grad and bool(torch_all(module.bias == 0)))
    weights = ([_numpy(module.weight)] if scale else []) + ([_numpy(module.bias)] if center else []) + \
              [_numpy(module.running_mean), _numpy(module.running_var)]
    imp.add(BatchNormalization(momentum=1 - module.momentum, epsilon=module.eps, center=center, scale=scale,
                               dtype=imp.dtype), weights)
    return 0


def _pool_from_torch(imp, module, where, following):
    imp.need_rank(4, where)
    k = _pair(module.kernel_size)
    s = _pair(module.stride if module.stride is not None else module.kernel_size)
    is_max = isinstance(module, imp.nn.MaxPool2d)
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
    imp.add((MaxPooling2D if is_max else AveragePooling2D)(k, s, padding=padding, dtype=imp.dtype))
    return 0


def _adaptive_pool_from_torch(imp, module, where, following):
    imp.need_rank(4, where)
    if _pair(module.output_size) != (1, 1):
        raise NotImplementedError(f"from_torch: {where} has output_size={module.output_size}; only 1 "
                                  "(global pooling) is supported.")
    cls = GlobalAveragePooling2D if isinstance(module, imp.nn.AdaptiveAvgPool2d) else GlobalMaxPooling2D
    flattened = isinstance(_next_module(following), imp.nn.Flatten)   # to_torch's keepdims=False
    imp.add(cls(keepdims=not flattened, dtype=imp.dtype))            # (ChannelsLastFlatten: a Flatten layer)
    return int(flattened)


def _flatten_from_torch(imp, module, where, following):
    nn = imp.nn
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
    imp.add(Flatten(dtype=imp.dtype))
    return 0


def _add_activation(imp, module, where, name):
    """An activation that an ``activation=`` string restores exactly: fused into the Conv2D/Dense just made, or a layer."""
    if name == "softmax" and module.dim not in ((1, -1) if len(imp.shape) == 2 else (1, -3)):
        raise NotImplementedError(f"from_torch: {where} has dim={module.dim}; minicnn's softmax runs over "
                                  "the channel axis (PyTorch dim=1).")
    if imp.fusable is not None:
        imp.fusable.activation = activations_module.get(name)
        imp.fusable = None
    elif name == "relu":
        imp.add(ReLULayer(dtype=imp.dtype))
    elif name == "softmax":
        imp.add(SoftmaxLayer(dtype=imp.dtype))
    else:
        imp.add(Activation(name, dtype=imp.dtype))
    return 0


def _named_activation_from_torch(imp, module, where, following):
    nn = imp.nn
    name = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Softmax: "softmax"}.get(type(module))
    if name is None:                              # a subclass: its forward may differ
        raise _cannot_convert(where)
    return _add_activation(imp, module, where, name)


def _gelu_from_torch(imp, module, where, following):
    if module.approximate == "none":
        return _add_activation(imp, module, where, "gelu")
    imp.add(Activation(activations_module.GELU(approximate=True), dtype=imp.dtype))   # approximate='tanh'
    return 0


def _leaky_relu_from_torch(imp, module, where, following):
    if imp.fusable is not None and module.negative_slope == activations_module.LeakyReLU().negative_slope:
        return _add_activation(imp, module, where, "leaky_relu")   # the default slope fuses
    imp.add(LeakyReLU(module.negative_slope, dtype=imp.dtype))
    return 0


def _elu_from_torch(imp, module, where, following):
    if imp.fusable is not None and module.alpha == 1.0:
        return _add_activation(imp, module, where, "elu")          # the default alpha fuses
    imp.add(ELU(module.alpha, dtype=imp.dtype))
    return 0


def _rescale_from_torch(imp, module, where, following):
    imp.add(Rescaling(_numpy(module.scale).tolist(), _numpy(module.offset).tolist(), dtype=imp.dtype))
    return 0


def _standardize_from_torch(imp, module, where, following):
    mean, variance = _numpy(module.mean), _numpy(module.variance)
    imp.add(Normalization(axis=None if mean.ndim == 0 else -1, mean=mean.tolist(), variance=variance.tolist(),
                          dtype=imp.dtype))
    return 0


def _upsample_from_torch(imp, module, where, following):
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
    imp.add(Resizing(*size, interpolation=mode, dtype=imp.dtype))
    return 0


_FROM_TORCH = {}


def from_torch_table():
    """PyTorch module class -> converter; made when PyTorch is first needed, since the keys are its classes."""
    if not _FROM_TORCH:
        nn, custom = _torch().nn, _custom_modules()
        _FROM_TORCH.update({
            nn.Conv2d: _conv2d_from_torch,
            nn.ZeroPad2d: _pad_from_torch,
            nn.ConstantPad2d: _pad_from_torch,
            nn.Linear: _linear_from_torch,
            nn.BatchNorm1d: _batch_norm_from_torch,
            nn.BatchNorm2d: _batch_norm_from_torch,
            nn.MaxPool2d: _pool_from_torch,
            nn.AvgPool2d: _pool_from_torch,
            nn.AdaptiveAvgPool2d: _adaptive_pool_from_torch,
            nn.AdaptiveMaxPool2d: _adaptive_pool_from_torch,
            custom["ChannelsLastFlatten"]: lambda imp, module, where, following: _add_layer(imp, Flatten),
            nn.Flatten: _flatten_from_torch,
            nn.Dropout: lambda imp, module, where, following: _add_layer(imp, Dropout, module.p),
            nn.ReLU: _named_activation_from_torch,
            nn.Sigmoid: _named_activation_from_torch,
            nn.Tanh: _named_activation_from_torch,
            nn.Softmax: _named_activation_from_torch,
            nn.GELU: _gelu_from_torch,
            nn.LeakyReLU: _leaky_relu_from_torch,
            nn.ELU: _elu_from_torch,
            nn.Identity: lambda imp, module, where, following: 0,
            custom["Rescale"]: _rescale_from_torch,
            custom["Standardize"]: _standardize_from_torch,
            nn.Upsample: _upsample_from_torch,
        })
    return _FROM_TORCH



def import_module(imp, path, module, following):
    """Add the minicnn layer(s) for one PyTorch module; returns how many following modules it consumed."""
    where = f"module '{path}' ({type(module).__name__})"
    converter = _lookup(from_torch_table(), module)
    if converter is None:
        raise _cannot_convert(where)
    return converter(imp, module, where, following)
