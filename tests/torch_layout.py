"""PyTorch as the parity oracle: the one place where minicnn's array layouts meet PyTorch's.

minicnn keeps Keras's layouts: images NHWC, Conv2D kernels ``(KH, KW, C, F)``, Dense kernels ``(D, U)``;
PyTorch uses NCHW, ``(F, C, KH, KW)`` and ``(U, D)``. Every parity test crosses over through these
functions (never through ``minicnn.interop``, which would check the converters with themselves), and
:func:`torch_run` feeds the same inputs to PyTorch and hands back its output and gradients in
minicnn's layouts, as tinygrad's ``helper_test_op`` does for its ops.
"""

import numpy as np
import pytest


def _image_to_torch(a):
    # channels last -> channels at axis 1; a 2-D (N, C) array is already both
    return a if a.ndim < 3 else np.moveaxis(a, -1, 1)


def _image_from_torch(a):
    return a if a.ndim < 3 else np.moveaxis(a, 1, -1)


# layout name -> (ours -> PyTorch's, PyTorch's -> ours), as NumPy axis moves
LAYOUTS = {
    "image": (_image_to_torch, _image_from_torch),                                      # NHWC <-> NCHW
    "conv_kernel": (lambda w: w.transpose(3, 2, 0, 1), lambda w: w.transpose(2, 3, 1, 0)),  # (KH, KW, C, F) <-> (F, C, KH, KW)
    "dense_kernel": (lambda w: w.T, lambda w: w.T),                                     # (D, U) <-> (U, D)
    "same": (lambda a: a, lambda a: a),                                                 # biases, labels, vectors
}

# what torch_run assumes when a name's layout is not given
DEFAULT_LAYOUTS = {"x": "image", "w": "conv_kernel"}


def to_torch_layout(a, layout="image"):
    """Our array ``a`` as a C-contiguous NumPy array in PyTorch's layout (``torch.from_numpy`` takes it as is)."""
    return np.ascontiguousarray(LAYOUTS[layout][0](np.asarray(a)))


def from_torch_layout(t, layout="image"):
    """A PyTorch tensor (or NumPy array in PyTorch's layout) as a NumPy array in our layout."""
    a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
    return LAYOUTS[layout][1](a)


def torch_pad(t, padding, value=0.0):
    """Pad an NCHW tensor by ``((top, bottom), (left, right))``: PyTorch's own ``padding=`` is symmetric,
    and 'same' with an even window or a stride is not."""
    F = pytest.importorskip("torch.nn.functional")
    (pt, pb), (pl, pr) = padding
    return F.pad(t, (pl, pr, pt, pb), value=value)


def flatten_like_keras(t):
    """Flatten an NCHW tensor in (h, w, c) order, as Flatten does on NHWC data."""
    return t.permute(0, 2, 3, 1).reshape(len(t), -1)


def torch_run(fn, inputs, dy, layouts=None, out_layout="image"):
    """Feed our arrays to PyTorch, backpropagate ``dy``; return its output and gradients in our layouts.

    Parameters
    ----------
    fn : callable
        Takes the tensors by the names of ``inputs`` (in PyTorch's layouts) and returns one tensor.
    inputs : dict of name -> ndarray in our layout (float64 for the parity tests)
    dy : ndarray shaped like our output: the gradient fed back, ``sum(y * dy)`` being the loss.
    layouts : dict of name -> layout, optional
        Layout of each input (a key of ``LAYOUTS``); by default "x" is an image, "w" a Conv2D kernel,
        anything else ("b", ...) is the same in both libraries.
    out_layout : the layout of ``fn``'s output and of ``dy``.

    Returns
    -------
    y : ndarray, PyTorch's output in our layout
    grads : dict ``{"d" + name: gradient in our layout}`` for every input
    """
    torch = pytest.importorskip("torch")
    layouts = {name: (layouts or {}).get(name, DEFAULT_LAYOUTS.get(name, "same")) for name in inputs}
    tensors = {name: torch.from_numpy(to_torch_layout(a, layouts[name])).requires_grad_() for name, a in inputs.items()}
    y = fn(**tensors)
    y.backward(torch.from_numpy(to_torch_layout(dy, out_layout)))
    grads = {"d" + name: from_torch_layout(t.grad, layouts[name]) for name, t in tensors.items()}
    return from_torch_layout(y, out_layout), grads


def copy_weights(module, kernel, bias=None):
    """Set a ``torch.nn.Conv2d`` or ``torch.nn.Linear`` to our Conv2D or Dense weights."""
    torch = pytest.importorskip("torch")
    layout = "conv_kernel" if np.ndim(kernel) == 4 else "dense_kernel"
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(to_torch_layout(kernel, layout)))
        if bias is not None:
            module.bias.copy_(torch.from_numpy(np.asarray(bias)))


def module_weights(module, grad=False):
    """``[kernel, bias]`` of a ``torch.nn.Conv2d`` or ``torch.nn.Linear`` (or their gradients) in our layouts."""
    layout = "conv_kernel" if module.weight.dim() == 4 else "dense_kernel"
    weight, bias = (module.weight.grad, module.bias.grad) if grad else (module.weight, module.bias)
    return [from_torch_layout(weight, layout), from_torch_layout(bias, "same")]
