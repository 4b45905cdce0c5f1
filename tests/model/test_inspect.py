"""Looking inside: whole-model gradient checks, the training recorder, vanishing gradients, saliency maps."""

import numpy as np
import pytest
from helpers import assert_within, gamma_n, numerical_gradient, rel_error, unit_roundoff

import minicnn
from minicnn import inspect as mi
from minicnn.layers import (
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
    RandomFlip,
    RandomTranslation,
    Rescaling,
    Resizing,
    ZeroPadding2D,
)
from minicnn.models import Sequential
from minicnn.optimizers import SGD
from minicnn.utils import set_random_seed

pytestmark = pytest.mark.usefixtures("default_settings")


def every_layer_cnn(head):
    """A tiny CNN with every layer type; ``head`` picks Flatten, global average or global max pooling.

    Smooth activations (tanh, ELU, GELU) keep the finite differences away from kinks; the one
    LeakyReLU has a kink at 0 that, for this seed, no input lands within eps of.
    """
    heads = {
        "flatten": [Flatten()],
        "gap": [GlobalAveragePooling2D()],
        "gmp": [GlobalMaxPooling2D(keepdims=True), Flatten()],
    }
    return Sequential([
        Input(shape=(6, 6, 2)),
        Rescaling(0.5, offset=0.1),
        Normalization(mean=[0.1, -0.2], variance=[1.5, 0.7]),
        RandomFlip("horizontal", seed=3),                        # random layers replay the same draw
        RandomTranslation(0.1, 0.1, seed=4),                     # in every evaluation of the check
        Resizing(7, 7),
        ZeroPadding2D(1),                                        # 9 x 9
        Conv2D(3, 3, activation="tanh"),                         # 7 x 7
        BatchNormalization(),
        LeakyReLU(0.1),
        MaxPooling2D(2),                                         # 3 x 3
        Conv2D(4, 2, padding="same", activation="elu"),          # asymmetric 'same' padding
        AveragePooling2D(2, strides=1),                          # 2 x 2
        ELU(),
        Activation("sigmoid"),
        Dropout(0.25, seed=5),
        *heads[head],
        Dense(5, activation="gelu"),
        Dense(3, activation="softmax"),
    ])


# ----------------------------------------------------------------------------- model.check_gradients
@pytest.mark.parametrize("head", ["flatten", "gap", "gmp"])
def test_check_gradients_passes_on_a_cnn_with_every_layer_type(head):
    rng = np.random.default_rng(1)
    set_random_seed(1)
    minicnn.set_floatx("float64")
    model = every_layer_cnn(head)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = rng.standard_normal((4, 6, 6, 2))
    y = rng.integers(0, 3, 4)
    report = model.check_gradients(x, y)
    assert report.ok, str(report)
    assert len(report.rows) == sum(len(layer.params) for layer in model.layers)


class BiasOfFirstSampleDense(Dense):
    """A classic bug: the bias gradient takes the first sample only instead of summing over the batch."""

    def _backward(self, dz):
        dx = super()._backward(dz)
        self.grads["bias"] = dz[0].copy()
        return dx


def test_check_gradients_flags_a_broken_layer_and_only_it():
    rng = np.random.default_rng(2)
    set_random_seed(2)
    minicnn.set_floatx("float64")
    model = Sequential([
        Input(shape=(5, 5, 1)),
        Conv2D(2, 3, activation="tanh"),
        Flatten(),
        BiasOfFirstSampleDense(4, activation="tanh", name="broken"),
        Dense(3, activation="softmax"),
    ])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    report = model.check_gradients(rng.standard_normal((3, 5, 5, 1)), rng.integers(0, 3, 3))
    errors = report.errors()
    assert not report.ok
    assert errors["broken/bias"] > 1e-2, str(report)
    assert all(err < 1e-7 for key, err in errors.items() if key != "broken/bias"), str(report)
    assert "NO" in str(report)


# ----------------------------------------------------------------------------- the recorder
def small_model(seed, optimizer="adam"):
    set_random_seed(seed)
    model = Sequential([
        Input(shape=(6, 6, 1)),
        Conv2D(3, 3, activation="relu", name="conv"),
        MaxPooling2D(name="pool"),
        Flatten(name="flat"),
        Dense(4, activation="softmax", name="out"),
    ])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


def test_record_keeps_per_step_summaries_for_fit_and_train_on_batch():
    rng = np.random.default_rng(3)
    model = small_model(3)
    x, y = rng.standard_normal((40, 6, 6, 1)), rng.integers(0, 4, 40)
    with mi.record(model, every=2, bins=10) as rec:
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)        # steps 0..4
        model.train_on_batch(x[:8], y[:8])                        # step 5
        model.train_on_batch(x[:8], y[:8])                        # step 6
    assert rec.step == 7
    assert rec.steps == [0, 2, 4, 6]
    assert list(rec.grad_norms) == ["conv/kernel", "conv/bias", "out/kernel", "out/bias"]
    for series in (rec.grad_norms, rec.weight_norms, rec.update_norms, rec.update_ratios):
        assert all(len(v) == 4 for v in series.values())
    assert all(g > 0 for g in rec.grad_norms["out/kernel"])
    assert np.isnan(rec.update_ratios["out/bias"][0])              # zero-initialised bias: no ratio yet
    assert set(rec.activations) == {"conv", "pool", "flat", "out"}
    conv = rec.activations["conv"]
    assert len(conv["mean"]) == 4 and len(conv["histogram"]) == 4
    counts, edges = conv["histogram"][-1]
    assert counts.sum() == 8 * 4 * 4 * 3 and len(edges) == 11       # every output of the batch counted once
    assert 0 < conv["zero_fraction"][-1] < 1                         # ReLU zeros
    # softmax rows sum to 1: each float32 probability within gamma_{2K+4} (K = 4 exps, their sum, the
    # division) of its exact value, so each row's sum within that of 1, the float64 mean of the 8 rows / 4
    assert_within("out mean", np.array(rec.activations["out"]["mean"]), np.full(4, 1 / 4), gamma_n(12, np.float32) / 4)
    # the model is exactly as before: no instance attributes left behind
    assert "train_step" not in vars(model)
    assert all("forward" not in vars(layer) for layer in model.layers)
    assert "conv/kernel" in rec.summary()


def test_update_ratio_is_learning_rate_times_gradient_over_weight_for_sgd():
    rng = np.random.default_rng(4)
    model = small_model(4, optimizer=SGD(learning_rate=0.1))
    x, y = rng.standard_normal((8, 6, 6, 1)), rng.integers(0, 4, 8)
    model.train_on_batch(x, y)                                      # biases become non-zero
    w_before = model.layers[0].params["kernel"].copy()
    with mi.record(model, layers=["conv"]) as rec:
        model.train_on_batch(x, y)
    g = rec.grad_norms["conv/kernel"][0]
    assert list(rec.grad_norms) == ["conv/kernel", "conv/bias"]
    # float32: w_new = w - 0.1 g and the recorded w_new - w each round once (0.1 g too), by u times
    # |0.1 g|, |w_new| and |w_new - w|: in norm, at most 4 u (||w|| + 0.1 ||g||); the norms themselves
    # are accumulated in float64
    w_norm = np.linalg.norm(w_before.astype(np.float64))
    bound = 4 * unit_roundoff(np.float32) * (w_norm + 0.1 * g)
    assert_within("update norm", rec.update_norms["conv/kernel"][0], 0.1 * g, bound, "4 u (||w|| + 0.1 ||g||)")
    assert_within("update ratio", rec.update_ratios["conv/kernel"][0], 0.1 * g / w_norm, 1.01 * bound / w_norm,
                  "update norm bound / ||w||")
    assert set(rec.activations) == {"conv"}


def test_recorder_works_as_a_fit_callback_and_keeps_the_last_activations():
    rng = np.random.default_rng(5)
    model = small_model(5)
    x, y = rng.standard_normal((24, 6, 6, 1)), rng.integers(0, 4, 24)
    rec = mi.Recorder(every=1, keep_activations=True)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_data=(x[:8], y[:8]), callbacks=[rec])
    assert rec.steps == list(range(6))                               # validation passes are not recorded
    assert rec.last_activations["conv"].shape == (8, 4, 4, 3)
    assert all("forward" not in vars(layer) for layer in model.layers)


def test_record_rejects_bad_arguments():
    with pytest.raises(ValueError, match="every"):
        mi.Recorder(every=0)
    model = small_model(6)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        with mi.record(model, layers=["nope"]):
            pass
    with pytest.raises(ValueError, match="Received: 3.5"):
        with mi.record(model, layers=3.5):
            pass


def test_record_waits_for_a_model_built_by_its_first_step():
    rng = np.random.default_rng(6)
    model = Sequential([Dense(3, activation="relu", name="hidden"), Dense(2, activation="softmax", name="out")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with mi.record(model, layers="out") as rec:
        model.train_on_batch(rng.standard_normal((4, 5)), rng.integers(0, 2, 4))
    assert rec.steps == [0] and list(rec.grad_norms) == ["out/kernel", "out/bias"]


def deep_mlp(activation, seed):
    set_random_seed(seed)
    layers = [Input(shape=(32,))] + [Dense(32, activation=activation) for _ in range(8)]
    model = Sequential(layers + [Dense(10, activation="softmax")])
    model.compile(optimizer=SGD(0.01), loss="sparse_categorical_crossentropy")
    return model


def test_recorder_shows_vanishing_gradients_in_a_deep_sigmoid_mlp():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((256, 32)), rng.integers(0, 10, 256)
    ratios = {}
    for activation in ("sigmoid", "relu"):
        model = deep_mlp(activation, seed=7)
        with mi.record(model) as rec:
            model.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
        kernels = rec.keys("kernel")
        first, last = np.array(rec.grad_norms[kernels[0]]), np.array(rec.grad_norms[kernels[-1]])
        ratios[activation] = float(np.median(first / last))
    # measured with this seed: sigmoid ~1e-5, relu ~1 (seeds 1-3 alike); each layer's sigmoid' <= 1/4 shrinks the signal
    assert ratios["sigmoid"] < 1e-3, ratios
    assert ratios["relu"] > 0.05, ratios
    assert ratios["sigmoid"] < 1e-2 * ratios["relu"], ratios


# ----------------------------------------------------------------------------- saliency
def saliency_models(seed):
    """The same float64 CNN twice: ending in softmax, and ending in the bare logits."""
    set_random_seed(seed)
    minicnn.set_floatx("float64")

    def body():
        return [Input(shape=(5, 5, 2)), Rescaling(2.0), Conv2D(3, 3, padding="same", activation="tanh"),
                BatchNormalization(), AveragePooling2D(), Dropout(0.5), Flatten(), Dense(6, activation="elu")]

    soft = Sequential(body() + [Dense(4, activation="softmax")])
    logits = Sequential(body() + [Dense(4)])
    rng = np.random.default_rng(seed)
    weights = [w + 0.1 * rng.standard_normal(w.shape) for w in soft.get_weights()]
    weights[-4:-2] = [np.abs(w) + 0.5 for w in weights[-4:-2]]     # a positive moving variance
    soft.set_weights(weights)
    logits.set_weights(weights)
    return soft, logits


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_saliency_matches_finite_differences(score):
    rng = np.random.default_rng(8)
    soft, logits = saliency_models(8)
    image = rng.standard_normal((5, 5, 2))
    reference = logits if score == "logit" else soft
    k = 2

    def class_score():
        return float(reference(image[None], training=False)[0, k])

    s = mi.saliency(soft, image, class_index=k, score=score)
    assert s.shape == image.shape
    assert rel_error(s, numerical_gradient(class_score, image)) < 1e-7


def test_saliency_of_a_batch_defaults_to_the_predicted_class_and_restores_grads():
    rng = np.random.default_rng(9)
    soft, _ = saliency_models(9)
    images = rng.standard_normal((3, 5, 5, 2))
    soft.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    soft.compute_gradients(images, np.array([0, 1, 2]))
    grads_before = [{k: g.copy() for k, g in layer.grads.items()} for layer in soft.layers]
    batch = mi.saliency(soft, images)
    predicted = np.argmax(soft.predict(images, verbose=0), axis=-1)
    assert batch.shape == images.shape
    for n in range(3):
        single = mi.saliency(soft, images[n], class_index=predicted[n])
        # float64, the same gradient through sums in other orders (batch of 3 or 1): 256 ulps of its magnitude
        assert_within(f"saliency {n}", batch[n], single, 256 * np.finfo(np.float64).eps * np.abs(single).max())
    for layer, before in zip(soft.layers, grads_before):
        for k, g in before.items():
            np.testing.assert_array_equal(layer.grads[k], g, err_msg=f"{layer.name}/{k}")
    with pytest.raises(ValueError, match="class_index"):
        mi.saliency(soft, images[0], class_index=4)


# ----------------------------------------------------------------------------- plots
def test_plots_return_axes_and_figures():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(10)
    model = small_model(10)
    x, y = rng.standard_normal((16, 6, 6, 1)), rng.integers(0, 4, 16)
    with mi.record(model) as rec:
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    ax = mi.plot_gradient_norms(rec)
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 2    # the two kernels
    ax = mi.plot_update_ratios(rec, params=None)
    assert len(ax.get_lines()) == 5                                 # four parameters and the 1e-3 reference
    fig = mi.plot_activation_histograms(rec)
    assert len(fig.axes) == 4
    fig = mi.plot_saliency(model, x[0])
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match="Nothing recorded"):
        mi.plot_gradient_norms(rec, params="gamma")
    plt.close("all")
