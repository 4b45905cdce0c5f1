"""PyTorch, imported on first use, and the three small modules it lacks (``ChannelsLastFlatten``, ``Rescale``,
``Standardize``), defined once PyTorch is there so that ``import minicnn`` does not need it."""

import numpy as np

from ..layers import Normalization


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("minicnn.interop needs PyTorch: pip install torch==2.13.0 (or pip install 'minicnn[torch]')") from None
    return torch


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
