"""The Layer contract (STYLE.md) for every layer: JSON config round trips, weights in Keras's layouts as
copies, set_weights validating first, float32 in and out, Keras's automatic names, and constructor and
build errors that name the layer, the argument and the value before any array is made."""

import json
import re

import numpy as np
import pytest
from helpers import assert_value_error_names

import minicnn
from minicnn.layers import (
    ELU,
    Activation,
    AveragePooling2D,
    AvgPool2D,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    GlobalMaxPooling2D,
    LeakyReLU,
    MaxPool2D,
    MaxPooling2D,
    ReLU,
    Softmax,
    ZeroPadding2D,
    deserialize,
    serialize,
)

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
    lambda: BatchNormalization(),
    lambda: BatchNormalization(axis=1, momentum=0.9, epsilon=1e-5, center=False, gamma_initializer="random_normal",
                               moving_variance_initializer="zeros", name="bn"),
    lambda: AveragePooling2D(),
    lambda: AveragePooling2D((3, 2), strides=(1, 2), padding="same", name="avg"),
    lambda: GlobalAveragePooling2D(),
    lambda: GlobalMaxPooling2D(keepdims=True),
    lambda: ZeroPadding2D(),
    lambda: ZeroPadding2D(((1, 2), (3, 4))),
    lambda: LeakyReLU(),
    lambda: LeakyReLU(negative_slope=0.1),
    lambda: ELU(alpha=0.7),
    lambda: Dense(3, activation="leaky_relu"),
    lambda: Conv2D(2, 3, activation="gelu", dilation_rate=3),
]


@pytest.mark.parametrize("make", LAYERS_FOR_CONFIG)
def test_config_round_trip(make):
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


@pytest.mark.parametrize(
    "make",
    [BatchNormalization, lambda: AveragePooling2D(3, 2, padding="same"), GlobalAveragePooling2D, GlobalMaxPooling2D,
     ZeroPadding2D, LeakyReLU, ELU, lambda: Activation("gelu")],
)
@pytest.mark.parametrize("training", [True, False])
def test_float32_in_float32_out(backend, make, training):
    layer = make()
    x = np.random.default_rng(27).standard_normal((3, 5, 6, 2))   # float64 in: cast to the layer's float32
    y = layer.forward(x, training=training)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads.values())
    assert all(w.dtype == np.float32 for w in layer.get_weights())


def test_auto_names_are_unique_and_keras_like():
    minicnn.layers.base.reset_names()
    names = [Conv2D(1, 1).name, Conv2D(1, 1).name, MaxPooling2D().name, Dense(1).name]
    assert names == ["conv2d", "conv2d_1", "max_pooling2d", "dense"]


def test_padding_forms_and_aliases():
    assert ZeroPadding2D(2).padding == ((2, 2), (2, 2))
    assert ZeroPadding2D((1, 3)).padding == ((1, 1), (3, 3))
    assert ZeroPadding2D([[0, 1], [2, 3]]).padding == ((0, 1), (2, 3))
    assert ZeroPadding2D((1, 3)).compute_output_shape((None, 5, None, 2)) == (None, 7, None, 2)
    assert AvgPool2D is AveragePooling2D and GlobalAvgPool2D is GlobalAveragePooling2D
    assert GlobalMaxPool2D is GlobalMaxPooling2D


def test_maxpool2d_alias():
    assert MaxPool2D is MaxPooling2D


def test_layer_input_shape_errors_name_the_layer_and_shapes():
    layer = Conv2D(2, 3, name="conv_a")
    layer.build((None, 28, 28, 1))
    with pytest.raises(ValueError, match=r"conv_a.*expected shape=\(None, 28, 28, 1\), found shape=\(5, 28, 28\)"):
        layer.forward(np.zeros((5, 28, 28)))


# Conv2D, MaxPooling2D, Dense, Dropout: (make, argument, received value)
INVALID_CORE = [
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


@pytest.mark.parametrize("make,arg,received", INVALID_CORE)
def test_invalid_arguments_raise_naming_argument_and_value(make, arg, received):
    with pytest.raises(ValueError, match=f"`{arg}`|{arg}") as info:
        make()
    assert "Received" in str(info.value)
    assert re.search(received, str(info.value)), str(info.value)


# the other layers: (make, the message's start, argument, received value)
INVALID_OTHERS = [
    (lambda: BatchNormalization(axis=1.5), "BatchNormalization", "axis", "axis=1.5"),
    (lambda: BatchNormalization(axis=True), "BatchNormalization", "axis", "axis=True"),
    (lambda: BatchNormalization(momentum=1.5), "BatchNormalization", "momentum", "momentum=1.5"),
    (lambda: BatchNormalization(momentum="0.9"), "BatchNormalization", "momentum", "momentum='0.9'"),
    (lambda: BatchNormalization(epsilon=0), "BatchNormalization", "epsilon", "epsilon=0"),
    (lambda: BatchNormalization(epsilon=-1e-3, name="bn7"), "BatchNormalization 'bn7'", "epsilon", "epsilon=-0.001"),
    (lambda: BatchNormalization(center="yes"), "BatchNormalization", "center", "center='yes'"),
    (lambda: BatchNormalization(gamma_initializer="twos"), "BatchNormalization", "gamma_initializer", "gamma_initializer='twos'"),
    (lambda: AveragePooling2D(0), "AveragePooling2D", "pool_size", "pool_size=0"),
    (lambda: AveragePooling2D(2, strides=(1, 0)), "AveragePooling2D", "strides", r"strides=\(1, 0\)"),
    (lambda: AveragePooling2D(2, padding="full"), "AveragePooling2D", "padding", "padding='full'"),
    (lambda: GlobalAveragePooling2D(keepdims="yes"), "GlobalAveragePooling2D", "keepdims", "keepdims='yes'"),
    (lambda: GlobalMaxPooling2D(keepdims=1), "GlobalMaxPooling2D", "keepdims", "keepdims=1"),
    (lambda: ZeroPadding2D(-1), "ZeroPadding2D", "padding", "padding=-1"),
    (lambda: ZeroPadding2D((1, 2, 3)), "ZeroPadding2D", "padding", r"padding=\(1, 2, 3\)"),
    (lambda: ZeroPadding2D(((1, 2), (3,))), "ZeroPadding2D", "padding", r"padding=\(\(1, 2\), \(3,\)\)"),
    (lambda: ZeroPadding2D(1.5), "ZeroPadding2D", "padding", "padding=1.5"),
    (lambda: LeakyReLU(negative_slope=-0.1), "LeakyReLU", "negative_slope", "negative_slope=-0.1"),
    (lambda: LeakyReLU(negative_slope="a"), "LeakyReLU", "negative_slope", "negative_slope='a'"),
    (lambda: ELU(alpha=float("nan")), "ELU", "alpha", "alpha=nan"),
]


@pytest.mark.parametrize("make,layer_name,arg,received", INVALID_OTHERS)
def test_invalid_arguments_raise_naming_layer_argument_and_value(make, layer_name, arg, received):
    assert_value_error_names(make, layer_name, arg, received)


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


@pytest.mark.parametrize(
    "make, shape, match",
    [
        (lambda: BatchNormalization(axis=4, name="big"), (None, 3, 3, 2), "axis"),
        (lambda: BatchNormalization(axis=0, name="big"), (None, 3, 3, 2), "batch axis"),
        (lambda: BatchNormalization(name="big"), (None, 3, 3, None), "known size"),
        (lambda: AveragePooling2D(3, name="big"), (None, 2, 5, 1), "larger than"),
        (lambda: GlobalMaxPooling2D(name="big"), (None, 5, 1), "4-D"),
        (lambda: ZeroPadding2D(name="big"), (None, 5, 1), "4-D"),
    ],
)
def test_impossible_input_shapes_fail_before_arrays_are_made(make, shape, match):
    layer = make()
    with pytest.raises(ValueError, match=f"big.*{match}|{match}.*big"):
        layer.build(shape)
    assert not layer.built and layer.params == {}


def test_same_padding_never_too_small():
    layer = MaxPooling2D(3, padding="same")
    assert layer.compute_output_shape((None, 2, 2, 1)) == (None, 1, 1, 1)
