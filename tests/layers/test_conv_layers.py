"""Conv2D (strides, 'valid' and 'same', dilation, activations): finite differences in float64 on both
backends, PyTorch parity of the output and every gradient within the derived float bound, and where
'same' puts the extra padding."""

import numpy as np
import pytest
from helpers import assert_sums_close, conv_sums, spaced
from torch_layout import torch_pad, torch_run

import minicnn
from minicnn import gradcheck
from minicnn.kernels import conv_padding
from minicnn.layers import Conv2D

CONV_CASES = [
    # (x shape, filters, kernel_size, strides, padding, dilation, activation)
    ((2, 5, 5, 3), 4, 3, 1, "valid", 1, None),
    ((2, 5, 5, 3), 4, 3, 1, "same", 1, "relu"),
    ((2, 7, 6, 2), 3, 3, 2, "same", 1, "tanh"),
    ((1, 7, 5, 1), 2, (3, 2), (2, 3), "valid", 1, "sigmoid"),
    ((2, 6, 6, 2), 2, 2, 2, "same", 1, None),
    ((1, 9, 8, 2), 3, (2, 3), 1, "same", 2, None),
    ((3, 4, 4, 1), 1, 1, 1, "valid", 1, "softmax"),
]


@pytest.mark.parametrize("shape,filters,k,s,padding,d,act", CONV_CASES)
def test_conv2d_gradcheck(backend, shape, filters, k, s, padding, d, act):
    rng = np.random.default_rng(0)
    layer = Conv2D(filters, k, strides=s, padding=padding, dilation_rate=d, activation=act, dtype="float64")
    layer.build((None,) + shape[1:])
    layer.params["bias"][:] = rng.standard_normal(filters) * 0.1
    report = gradcheck.check_layer(layer, spaced(rng, shape) * 0.3, seed=1)
    assert set(report.errors()) == {"input", "kernel", "bias"}
    assert report.ok, str(report)


DILATED_CASES = [
    # (x shape, filters, kernel_size, padding, dilation_rate)
    ((2, 9, 9, 2), 3, 3, "same", 2),
    ((2, 9, 9, 2), 3, 3, "valid", 2),
    ((1, 11, 10, 1), 2, (3, 2), "same", 3),
    ((2, 10, 11, 2), 2, 3, "valid", 3),
    ((1, 8, 9, 3), 2, (2, 3), "same", (2, 3)),   # even kernel: asymmetric 'same' padding
]


def dilated_id(case):
    shape, filters, k, padding, d = case
    return f"{'x'.join(map(str, shape))}-f{filters}-k{k}-{padding}-d{d}"


@pytest.mark.parametrize("case", DILATED_CASES, ids=dilated_id)
def test_dilated_conv2d_gradcheck(backend, case):
    shape, filters, k, padding, d = case
    rng = np.random.default_rng(8)
    layer = Conv2D(filters, k, padding=padding, dilation_rate=d, dtype="float64")
    layer.build((None,) + shape[1:])
    layer.params["bias"][:] = rng.standard_normal(filters)
    report = gradcheck.check_layer(layer, rng.standard_normal(shape), seed=9)
    assert report.ok, str(report)


torch_cases = [
    ((2, 8, 7, 3), 4, 3, 1, "valid"),
    ((2, 8, 7, 3), 4, 3, 2, "same"),   # asymmetric 'same' padding: extra row/col at bottom/right
    ((1, 6, 6, 1), 2, (2, 3), (1, 2), "same"),
]


@pytest.mark.parametrize("shape,filters,k,s,padding", torch_cases)
def test_conv2d_matches_torch(backend, shape, filters, k, s, padding):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    layer = Conv2D(filters, k, strides=s, padding=padding, activation="relu", dtype="float64")
    x = rng.standard_normal(shape)
    layer.build((None,) + shape[1:])
    layer.params["bias"][:] = rng.standard_normal(filters)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)

    pad = minicnn.kernels.conv_padding(padding, shape[1:3], layer.kernel_size, layer.strides)

    def conv(x, w, b):
        return torch.relu(torch.nn.functional.conv2d(torch_pad(x, pad), w, b, stride=layer.strides))

    y_torch, grads = torch_run(conv, dict(x=x, w=layer.params["kernel"], b=layer.params["bias"]), dy)
    sums = conv_sums(x, layer.params["kernel"], layer.params["bias"], dy * (y > 0), layer.strides, pad)
    assert_sums_close("y", y, y_torch, *sums["y"])
    assert_sums_close("dx", dx, grads["dx"], *sums["dx"])
    assert_sums_close("dkernel", layer.grads["kernel"], grads["dw"], *sums["dw"])
    assert_sums_close("dbias", layer.grads["bias"], grads["db"], *sums["db"])


@pytest.mark.parametrize("case", DILATED_CASES, ids=dilated_id)
def test_dilated_conv2d_matches_torch(backend, case):
    torch = pytest.importorskip("torch")
    shape, filters, k, padding, d = case
    rng = np.random.default_rng(24)
    layer = Conv2D(filters, k, padding=padding, dilation_rate=d, dtype="float64")
    layer.build((None,) + shape[1:])
    layer.params["bias"][:] = rng.standard_normal(filters)
    x = rng.standard_normal(shape)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    pad = conv_padding(padding, shape[1:3], layer.kernel_size, layer.strides, layer.dilation_rate)

    def conv(x, w, b):
        return torch.nn.functional.conv2d(torch_pad(x, pad), w, b, dilation=layer.dilation_rate)

    y_torch, grads = torch_run(conv, dict(x=x, w=layer.params["kernel"], b=layer.params["bias"]), dy)
    if padding == "same":
        assert y.shape[1:3] == shape[1:3]
    sums = conv_sums(x, layer.params["kernel"], layer.params["bias"], dy, layer.strides, pad, layer.dilation_rate)
    assert_sums_close("y", y, y_torch, *sums["y"])
    assert_sums_close("dx", dx, grads["dx"], *sums["dx"])
    assert_sums_close("dkernel", layer.grads["kernel"], grads["dw"], *sums["dw"])
    assert_sums_close("dbias", layer.grads["bias"], grads["db"], *sums["db"])


def test_same_padding_puts_the_extra_pixel_bottom_right():
    # H=4, K=3, S=2: OH = ceil(4/2) = 2, total pad = (2-1)*2 + 3 - 4 = 1 -> (top 0, bottom 1).
    assert minicnn.kernels.conv_padding("same", (4, 4), (3, 3), (2, 2)) == ((0, 1), (0, 1))
    layer = Conv2D(1, 3, strides=2, padding="same", use_bias=False, dtype="float64")
    layer.build((None, 4, 4, 1))
    layer.set_weights([np.ones((3, 3, 1, 1))])
    x = np.arange(16.0).reshape(1, 4, 4, 1)
    y = layer(x)[0, :, :, 0]
    # top-left output sums rows 0-2 and columns 0-2 (no padding above or left)
    assert y[0, 0] == x[0, 0:3, 0:3, 0].sum()
    assert y[1, 1] == x[0, 2:4, 2:4, 0].sum()   # bottom-right window hangs over the padding
