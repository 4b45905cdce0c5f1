"""Layers: finite-difference gradient checks, PyTorch parity, config round trips, argument errors."""

import numpy as np
import pytest
from helpers import assert_sums_close, assert_within, conv_sums, float_sum_bound, spaced, unit_roundoff

import minicnn
from minicnn import gradcheck
from minicnn.layers import (
    Activation,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    MaxPooling2D,
    ReLU,
    Softmax,
    deserialize,
    serialize,
)

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


POOL_CASES = [
    ((2, 6, 6, 3), 2, None, "valid"),
    ((2, 7, 7, 2), 2, None, "same"),
    ((1, 7, 5, 1), 3, 2, "valid"),       # overlapping windows
    ((2, 6, 7, 2), (3, 2), (2, 1), "same"),
    ((1, 5, 5, 1), 5, 1, "valid"),
]


@pytest.mark.parametrize("shape,pool,strides,padding", POOL_CASES)
def test_maxpool_gradcheck(backend, shape, pool, strides, padding):
    rng = np.random.default_rng(2)
    layer = MaxPooling2D(pool, strides=strides, padding=padding, dtype="float64")
    report = gradcheck.check_layer(layer, spaced(rng, shape), seed=3)
    assert report.ok, str(report)


@pytest.mark.parametrize("act", [None, "relu", "sigmoid", "tanh", "softmax", "linear"])
def test_dense_gradcheck(act):
    rng = np.random.default_rng(4)
    layer = Dense(5, activation=act, dtype="float64")
    layer.build((None, 7))
    layer.params["bias"][:] = rng.standard_normal(5)
    report = gradcheck.check_layer(layer, spaced(rng, (3, 7)), seed=5)
    assert report.ok, str(report)


@pytest.mark.parametrize(
    "layer",
    [Flatten(dtype="float64"), Activation("tanh", dtype="float64"), ReLU(dtype="float64"),
     Softmax(dtype="float64"), Dropout(0.4, seed=7, dtype="float64")],
    ids=lambda layer: type(layer).__name__,
)
def test_weightless_layers_gradcheck(layer):
    rng = np.random.default_rng(6)
    report = gradcheck.check_layer(layer, spaced(rng, (2, 3, 4, 5)))
    assert report.ok, str(report)


def test_gradcheck_catches_a_wrong_backward():
    class BadDense(Dense):
        def _backward(self, dz):
            dx = super()._backward(dz)
            self.grads["kernel"] = self.grads["kernel"] * 1.01   # 1% off
            return dx

    layer = BadDense(3, dtype="float64")
    report = gradcheck.check_layer(layer, np.random.default_rng(8).standard_normal((4, 5)))
    assert not report.ok
    assert report.errors()["kernel"] > 1e-3 and report.errors()["input"] < 1e-7
    assert "NO" in str(report)


# --------------------------------------------------------------------------------------- PyTorch parity
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

    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(layer.params["kernel"].transpose(3, 2, 0, 1), requires_grad=True)
    bt = torch.tensor(layer.params["bias"], requires_grad=True)
    (pt, pb), (pl, pr) = minicnn.kernels.conv_padding(padding, shape[1:3], layer.kernel_size, layer.strides)
    yt = torch.relu(torch.nn.functional.conv2d(torch.nn.functional.pad(xt, (pl, pr, pt, pb)), wt, bt, stride=layer.strides))
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    sums = conv_sums(x, layer.params["kernel"], layer.params["bias"], dy * (y > 0), layer.strides, ((pt, pb), (pl, pr)))
    assert_sums_close("y", y, yt.detach().numpy().transpose(0, 2, 3, 1), *sums["y"])
    assert_sums_close("dx", dx, xt.grad.numpy().transpose(0, 2, 3, 1), *sums["dx"])
    assert_sums_close("dkernel", layer.grads["kernel"], wt.grad.numpy().transpose(2, 3, 1, 0), *sums["dw"])
    assert_sums_close("dbias", layer.grads["bias"], bt.grad.numpy(), *sums["db"])


def test_maxpool_and_dense_match_torch(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 7, 7, 3))
    pool, dense, flat = MaxPooling2D(3, strides=2, dtype="float64"), Dense(4, activation="tanh", dtype="float64"), Flatten(dtype="float64")
    h = flat.forward(pool.forward(x))
    y = dense.forward(h)
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(flat.backward(dense.backward(dy)))

    xt = torch.tensor(x, requires_grad=True)
    ht = torch.nn.functional.max_pool2d(xt.permute(0, 3, 1, 2), 3, stride=2).permute(0, 2, 3, 1).reshape(2, -1)
    wt = torch.tensor(dense.params["kernel"], requires_grad=True)
    yt = torch.tanh(ht @ wt + torch.tensor(dense.params["bias"]))
    yt.backward(torch.tensor(dy))
    # BLAS may sum in another order than torch: compare within bounds derived from the sums
    # (helpers.float_sum_bound), carried through tanh (slope <= 1, each tanh within 2 ulp) and
    # its derivative dz = dy * (1 - y**2) (which moves by 2 |dy y| per unit of y, plus 4 roundings)
    u, w = unit_roundoff(np.float64), dense.params["kernel"]
    ah, aw = np.abs(h), np.abs(w)
    e_y = float_sum_bound(ah @ aw + np.abs(dense.params["bias"]), h.shape[1], np.float64) + 4 * u * np.abs(y)
    dz = dy * (1 - y**2)
    e_dz = np.abs(dy) * (2 * np.abs(y) * e_y + 4 * u * (1 + y**2))
    e_dh = float_sum_bound(np.abs(dz) @ aw.T, w.shape[1], np.float64) + e_dz @ aw.T
    e_dw = float_sum_bound(ah.T @ np.abs(dz), len(h), np.float64) + ah.T @ e_dz
    # each pixel adds the dh of at most 2 x 2 windows (3x3, stride 2)
    abs_dh = pool.backward(flat.backward(np.abs(dz) @ aw.T)).copy()
    e_dx = pool.backward(flat.backward(e_dh)) + float_sum_bound(abs_dh, 4, np.float64)
    assert_within("y", y, yt.detach().numpy(), e_y)
    assert_within("dx", dx, xt.grad.numpy(), e_dx)
    assert_within("dkernel", dense.grads["kernel"], wt.grad.numpy(), e_dw)


# --------------------------------------------------------------------------------------- config, weights
LAYERS_FOR_CONFIG = [
    lambda: Conv2D(8, (3, 5), strides=2, padding="same", activation="relu", use_bias=False, name="c"),
    lambda: Conv2D(4, 3, dilation_rate=2, kernel_initializer="he_normal", kernel_regularizer=minicnn.regularizers.l2(1e-3)),
    lambda: MaxPooling2D((3, 3), strides=(2, 1), padding="same"),
    lambda: Dense(10, activation="softmax", bias_initializer="ones"),
    lambda: Flatten(name="f"),
    lambda: Activation("sigmoid"),
    lambda: ReLU(),
    lambda: Softmax(),
    lambda: Dropout(0.25, seed=3),
]


@pytest.mark.parametrize("make", LAYERS_FOR_CONFIG)
def test_config_round_trip(make):
    import json

    layer = make()
    data = json.loads(json.dumps(serialize(layer)))   # must survive JSON
    clone = deserialize(data)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


def test_rebuilt_layer_with_same_weights_gives_same_output():
    rng = np.random.default_rng(11)
    layer = Conv2D(3, 3, padding="same", activation="relu")
    x = rng.standard_normal((2, 6, 6, 2)).astype("float32")
    y = layer(x)
    clone = Conv2D.from_config(layer.get_config())
    clone.build(layer.input_shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x), y)


def test_weights_are_keras_layouts_and_copies():
    layer = Conv2D(5, (3, 2), input_shape=(8, 8, 3))
    layer.build((None, 8, 8, 3))
    kernel, bias = layer.get_weights()
    assert kernel.shape == (3, 2, 3, 5) and bias.shape == (5,)
    kernel[:] = 99
    assert not np.any(layer.params["kernel"] == 99)
    held = layer.params["kernel"]   # a reference taken before set_weights still shows the weights
    new = [np.ones((3, 2, 3, 5)), np.zeros(5)]
    layer.set_weights(new)
    new[0][:] = 7
    assert np.all(layer.params["kernel"] == 1) and layer.params["kernel"].dtype == np.float32
    assert layer.params["kernel"] is held and np.all(held == 1)


def test_set_weights_validates_before_changing_anything():
    layer = Dense(3)
    layer.build((None, 4))
    before = layer.get_weights()
    with pytest.raises(ValueError, match=r"weight 'bias' has shape \(3,\)"):
        layer.set_weights([np.zeros((4, 3)), np.zeros(4)])
    with pytest.raises(ValueError, match="expects 2 weight arrays"):
        layer.set_weights([np.zeros((4, 3))])
    for a, b in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_grads_have_the_keys_of_params_and_backward_needs_forward():
    layer = Conv2D(2, 3)
    layer.build((None, 5, 5, 1))
    assert layer.grads.keys() == layer.params.keys() == {"kernel", "bias"}
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.zeros((1, 3, 3, 2), dtype="float32"))


def test_floatx_controls_new_layers_and_kernels_keep_float32():
    minicnn.set_floatx("float64")
    try:
        assert Dense(2).dtype == "float64"
        layer = Dense(2)
        layer.build((None, 3))
        assert layer.params["kernel"].dtype == np.float64
    finally:
        minicnn.set_floatx("float32")
    conv = Conv2D(2, 3)
    y = conv(np.ones((1, 5, 5, 1)))           # float64 input is cast to the layer's float32
    assert y.dtype == np.float32 and conv.params["kernel"].dtype == np.float32
    assert conv.backward(np.ones_like(y)).dtype == np.float32
    with pytest.raises(ValueError, match="floatx"):
        minicnn.set_floatx("float16")


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


def test_layer_input_shape_errors_name_the_layer_and_shapes():
    layer = Conv2D(2, 3, name="conv_a")
    layer.build((None, 28, 28, 1))
    with pytest.raises(ValueError, match=r"conv_a.*expected shape=\(None, 28, 28, 1\), found shape=\(5, 28, 28\)"):
        layer.forward(np.zeros((5, 28, 28)))


INVALID = [
    (lambda: Conv2D(0, 3), "filters", "filters=0"),
    (lambda: Conv2D(-2, 3), "filters", "filters=-2"),
    (lambda: Conv2D(2.5, 3), "filters", "filters=2.5"),
    (lambda: Conv2D(4, 0), "kernel_size", "kernel_size=0"),
    (lambda: Conv2D(4, (3, 0)), "kernel_size", r"kernel_size=\(3, 0\)"),
    (lambda: Conv2D(4, 3, strides=0), "strides", "strides=0"),
    (lambda: Conv2D(4, 3, padding="full"), "padding", "padding='full'"),
    (lambda: Conv2D(4, 3, strides=2, dilation_rate=2), "dilation_rate", "dilation_rate"),
    (lambda: Conv2D(4, 3, activation="swishy"), "activation", "activation='swishy'"),
    (lambda: MaxPooling2D(0), "pool_size", "pool_size=0"),
    (lambda: MaxPooling2D(2, strides=0), "strides", "strides=0"),
    (lambda: MaxPooling2D(2, padding="causal"), "padding", "padding='causal'"),
    (lambda: Dense(0), "units", "units=0"),
    (lambda: Dense(3, activation="relu6"), "activation", "relu6"),
    (lambda: Dropout(1.0), "rate", "rate=1.0"),
    (lambda: Dropout(-0.1), "rate", "rate=-0.1"),
]


@pytest.mark.parametrize("make,arg,received", INVALID)
def test_invalid_arguments_raise_naming_argument_and_value(make, arg, received):
    with pytest.raises(ValueError, match=f"`{arg}`|{arg}") as info:
        make()
    assert "Received" in str(info.value)
    assert pytest.importorskip("re").search(received, str(info.value)), str(info.value)


def test_unknown_activation_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        Dense(3, activation="swish_me")
    for name in ("relu", "sigmoid", "tanh", "softmax", "linear"):
        assert name in str(info.value)


@pytest.mark.parametrize(
    "make,shape",
    [(lambda: Conv2D(2, 5, name="big"), (None, 4, 4, 1)), (lambda: MaxPooling2D(3, name="big"), (None, 2, 5, 1)),
     (lambda: Conv2D(2, 3, dilation_rate=3, name="big"), (None, 6, 6, 1))],
)
def test_window_larger_than_padded_input_fails_before_arrays_are_made(make, shape):
    layer = make()
    with pytest.raises(ValueError, match="big"):
        layer.build(shape)
    assert not layer.built and layer.params == {}


def test_same_padding_never_too_small():
    layer = MaxPooling2D(3, padding="same")
    assert layer.compute_output_shape((None, 2, 2, 1)) == (None, 1, 1, 1)


def test_maxpool2d_alias():
    assert MaxPool2D is MaxPooling2D


def test_dropout_is_inverted_seeded_and_identity_at_inference():
    x = np.ones((200, 50))
    a, b = Dropout(0.3, seed=1, dtype="float64"), Dropout(0.3, seed=1, dtype="float64")
    np.testing.assert_array_equal(a(x), x)                      # inference: identity
    ya, yb = a.forward(x, training=True), b.forward(x, training=True)
    np.testing.assert_array_equal(ya, yb)                       # same seed, same mask
    kept = ya != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(ya[kept], 1 / 0.7)              # kept units scaled by 1/(1-rate)
    assert abs(ya.mean() - 1) < 0.03                            # expectation preserved


def test_auto_names_are_unique_and_keras_like():
    minicnn.layers.base.reset_names()
    names = [Conv2D(1, 1).name, Conv2D(1, 1).name, MaxPooling2D().name, Dense(1).name]
    assert names == ["conv2d", "conv2d_1", "max_pooling2d", "dense"]
