"""minicnn <-> PyTorch: the same predictions after to_torch, from_torch and round trips; training carries on."""

import warnings

import numpy as np
import pytest
from helpers import assert_within, model_forward_bound
from torch_layout import to_torch_layout

import minicnn
from minicnn.interop import from_torch, to_torch
from minicnn.layers import (
    ELU,
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
    RandomFlip,
    RandomTranslation,
    ReLU,
    Rescaling,
    Resizing,
    ZeroPadding2D,
)
from minicnn.models import Sequential
from minicnn.utils import set_random_seed

torch = pytest.importorskip("torch")
nn = torch.nn

pytestmark = pytest.mark.usefixtures("default_settings")


def torch_predict(module, x):
    """PyTorch's output for our NHWC images (tests/torch_layout.py moves the axes)."""
    with torch.no_grad():
        return module(torch.from_numpy(to_torch_layout(x))).numpy()


def randomize(model, rng):
    """Weights away from their initial values: kernels ~ N(0, 0.3^2), vectors (gamma, moving stats) in [0.5, 1.5]."""
    weights = [rng.uniform(0.5, 1.5, w.shape) if w.ndim == 1 else 0.3 * rng.standard_normal(w.shape)
               for w in model.get_weights()]
    model.set_weights(weights)


# Each model: (layers, input shape). Sizes are chosen so that every padding case occurs:
# symmetric and asymmetric 'same', PyTorch's ceil_mode, and odd sizes.
MODELS = {
    "conv_stack": (lambda: [
        Conv2D(4, 3, strides=2, padding="same", activation="relu"),   # 9 -> 5, 'same' pads (1, 1)
        Conv2D(4, 2, padding="same"),                                  # pads (0, 1): ZeroPad2d + Conv2d
        BatchNormalization(), LeakyReLU(0.1),
        MaxPooling2D(2, padding="same"),                               # 5 -> 3, -inf pads (0, 1)
        ZeroPadding2D(((1, 0), (2, 1))),                               # 4 x 6
        AveragePooling2D(3, strides=1, padding="same"),                # symmetric, count_include_pad=False
        ELU(),
        Conv2D(3, 3, dilation_rate=2, padding="same", activation="gelu"),
        AveragePooling2D(2),
        Flatten(), Dropout(0.3), Dense(6, activation="tanh"), Dense(3, activation="softmax"),
    ], (9, 9, 2)),
    "pooling": (lambda: [
        AveragePooling2D(2, padding="same"),                           # 7 -> 4, pads (0, 1): ceil_mode
        MaxPooling2D(3, strides=1, padding="same"),                    # symmetric: MaxPool2d(padding=1)
        Conv2D(3, 3, strides=2, activation="sigmoid"),                 # 4 -> 1 x 1
        GlobalMaxPooling2D(), Dense(4, activation="softmax"),
    ], (7, 7, 3)),
    "preprocessing": (lambda: [
        RandomFlip("horizontal"), RandomTranslation(0.1, 0.1),         # left out, with a warning
        Rescaling([0.5, 2.0], offset=0.1), Normalization(mean=[0.1, 0.2], variance=[1.5, 0.5]),
        Resizing(6, 10), Conv2D(3, 3, activation="relu"),
        Resizing(5, 5, interpolation="nearest"),
        GlobalAveragePooling2D(), Dense(3, activation="softmax"),
    ], (8, 8, 2)),
    "keepdims_head": (lambda: [
        Conv2D(5, 3, padding="same", use_bias=False), BatchNormalization(center=False), ReLU(),
        GlobalAveragePooling2D(keepdims=True), Flatten(), Dense(2, activation="sigmoid"),
    ], (5, 6, 1)),
    "mlp": (lambda: [
        Dense(8, activation="elu"), BatchNormalization(), Dropout(0.5), Dense(8, activation="leaky_relu"),
        Dense(4, activation="softmax"),
    ], (10,)),
}


def make(name, rng, dtype):
    layers, shape = MODELS[name]
    minicnn.set_floatx(dtype)
    model = Sequential([Input(shape=shape)] + layers())
    randomize(model, rng)
    x = rng.standard_normal((6, *shape)).astype(dtype)
    return model, x


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_to_torch_predicts_what_minicnn_predicts(name, dtype):
    rng = np.random.default_rng(1)
    model, x = make(name, rng, dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exported = to_torch(model)
    assert [str(w.message) for w in caught if "augmentation" in str(w.message)] == (
        ["to_torch: left out the augmentation layer(s) ['random_flip', 'random_translation']: they are the identity "
         "at inference. Augment in the PyTorch data pipeline instead (e.g. torchvision.transforms)."]
        if name == "preprocessing" else [])
    assert not exported.training
    assert all(p.dtype == getattr(torch, dtype) for p in exported.parameters())
    expected = model.predict(x, verbose=0)
    got = torch_predict(exported, x)
    assert got.dtype == np.dtype(dtype)
    # both within the bound derived from every layer's sums of the exact (float64) forward
    exact, bound = model_forward_bound(model, x, dtype)
    assert_within(f"{name} in {dtype}: PyTorch", got, exact, bound)
    assert_within(f"{name} in {dtype}: minicnn", expected, exact, bound)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_to_torch_then_from_torch_round_trips(name):
    rng = np.random.default_rng(2)
    model, x = make(name, rng, "float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = from_torch(to_torch(model), model.input_shape[1:])
    kept = [layer for layer in model.layers if not isinstance(layer, (RandomFlip, RandomTranslation))]
    assert [type(layer) for layer in back.layers] == [type(layer) for layer in kept]
    assert back.output_shape == model.output_shape
    for a, b in zip(model.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the same layers with the same weights run the same kernels: the same bits
    np.testing.assert_array_equal(back.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_trained_model_round_trips_with_equal_predictions():
    rng = np.random.default_rng(3)
    set_random_seed(3)
    model = Sequential([
        Input(shape=(8, 8, 1)),
        Conv2D(4, 3, padding="same", activation="relu"), BatchNormalization(), MaxPooling2D(),
        Conv2D(6, 3, activation="relu"), Flatten(), Dropout(0.2), Dense(3, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = rng.standard_normal((64, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 64)
    model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    exported = to_torch(model)
    exact, bound = model_forward_bound(model, x)      # float32: bound derived from the layers' sums
    assert_within("PyTorch", torch_predict(exported, x), exact, bound)
    assert_within("minicnn", model.predict(x, verbose=0), exact, bound)
    back = from_torch(exported, (8, 8, 1))
    np.testing.assert_array_equal(back.predict(x, verbose=0), model.predict(x, verbose=0))
    back.compile(optimizer="adam", loss="sparse_categorical_crossentropy")   # and it trains on in minicnn
    back.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_exported_model_keeps_learning_in_pytorch():
    rng = np.random.default_rng(4)
    set_random_seed(4)
    model = Sequential([
        Input(shape=(8, 8, 1)),
        Conv2D(4, 3, padding="same", activation="relu"), BatchNormalization(), MaxPooling2D(),
        Flatten(), Dense(3, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = rng.standard_normal((32, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 32)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)

    torch.manual_seed(4)
    exported = to_torch(model).train()
    logits = exported[:-1]                       # all but the Softmax: what nn.CrossEntropyLoss wants
    optimizer = torch.optim.Adam(exported.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(to_torch_layout(x)), torch.from_numpy(y)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(logits(xt), yt)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 20, losses   # falling, step after step


def test_from_torch_reads_a_plain_pytorch_model():
    rng = np.random.default_rng(5)
    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding="same"), nn.Tanh()),   # nested containers are flattened
        nn.AvgPool2d(2, ceil_mode=True),                                  # 3 -> 2: TensorFlow's 'same'
        nn.Flatten(),                                                      # NCHW order: the next Linear is permuted
        nn.Dropout(0.2), nn.Linear(24, 8), nn.GELU(approximate="tanh"), nn.Linear(8, 5), nn.Softmax(dim=1),
    ).double()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 1.5)
    net.eval()
    model = from_torch(net, input_shape=(6, 6, 2))
    assert [type(layer).__name__ for layer in model.layers] == [
        "Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D", "Conv2D", "AveragePooling2D", "Flatten",
        "Dropout", "Dense", "Activation", "Dense",
    ]
    assert model.layers[0].padding == "same" and model.layers[4].activation.name == "tanh"
    assert model.layers[5].padding == "same" and model.layers[-1].activation.name == "softmax"
    bn = model.layers[1]
    assert bn.momentum == pytest.approx(0.9) and bn.epsilon == pytest.approx(1e-5)
    x = rng.standard_normal((4, 6, 6, 2))
    exact, bound = model_forward_bound(model, x, np.float64)   # float64 kernels, sums in other orders
    assert_within("minicnn", model.predict(x, verbose=0), exact, bound)
    assert_within("PyTorch", torch_predict(net, x), exact, bound)


def test_batchnorm_settings_map_both_ways():
    rng = np.random.default_rng(6)
    minicnn.set_floatx("float64")
    model = Sequential([Input(shape=(4, 4, 3)), BatchNormalization(momentum=0.9, epsilon=1e-4), Flatten()])
    randomize(model, rng)
    bn = to_torch(model)[0]
    assert isinstance(bn, nn.BatchNorm2d)
    assert bn.momentum == pytest.approx(0.1) and bn.eps == pytest.approx(1e-4)
    np.testing.assert_array_equal(bn.running_var.numpy(), model.layers[0].moving_variance)


def test_to_torch_refuses_what_pytorch_cannot_express():
    minicnn.set_floatx("float32")
    model = Sequential([Input(shape=(5, 5, 1)), AveragePooling2D(2, strides=1, padding="same")])
    with pytest.raises(NotImplementedError, match=r"average_pooling2d.*asymmetric"):
        to_torch(model)
    with pytest.raises(ValueError, match="not built"):
        to_torch(Sequential([Dense(2)]))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


@pytest.mark.parametrize("net, match", [
    (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2))),
     r"module '1\.1' \(Conv2d\) has groups=2"),
    (lambda: nn.Sequential(nn.Conv2d(2, 2, 3), Residual()), r"cannot convert module '1' \(Residual\)"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Conv2d(2, 2, 1)), r"module '0' \(Flatten\) flattens NCHW"),
    (lambda: nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")), "padding_mode='reflect'"),
    (lambda: nn.Sequential(nn.AvgPool2d(3, padding=1)), "counts padded cells"),
    (lambda: nn.Sequential(nn.AdaptiveAvgPool2d(2)), "output_size=2"),
])
def test_from_torch_names_the_module_it_cannot_convert(net, match):
    with pytest.raises(NotImplementedError, match=match):
        from_torch(net(), input_shape=(6, 6, 2))


def test_from_torch_checks_the_input_shape():
    with pytest.raises(ValueError, match="takes 12 features"):
        from_torch(nn.Sequential(nn.Linear(12, 3)), input_shape=(10,))
