"""Sequential as a container: structure, building, weights in Keras's order, config, compile, and the
utilities around it (to_categorical, seeds, what a model file may store)."""

import json

import numpy as np
import pytest
from small_models import assert_same_predictions, small_cnn

import minicnn
from minicnn import losses
from minicnn.layers import Conv2D, Dense, Dropout, Flatten, Input, InputLayer
from minicnn.models import Sequential
from minicnn.optimizers import Adam
from minicnn.utils import clear_session, set_random_seed, to_categorical

pytestmark = pytest.mark.usefixtures("default_settings")


def test_list_constructor_add_and_layers():
    model = small_cnn()
    assert [layer.name for layer in model.layers] == ["conv2d", "max_pooling2d", "flatten", "dense"]
    assert not any(isinstance(layer, InputLayer) for layer in model.layers)
    assert model.built and model.input_shape == (None, 8, 8, 1) and model.output_shape == (None, 3)
    assert model.name == "sequential"
    other = Sequential(name="mine")
    other.add(Input(shape=(8, 8, 1)))
    other.add(Conv2D(4, 3))
    assert other.name == "mine" and other.layers[0].output_shape == (None, 6, 6, 4)


def test_input_shape_on_first_layer_builds_at_once():
    model = Sequential()
    model.add(Conv2D(2, (3, 3), input_shape=(6, 6, 3), activation="relu"))
    assert model.built and model.input_shape == (None, 6, 6, 3)
    model.add(Flatten())
    assert model.layers[-1].output_shape == (None, 32)


def test_lazy_build_on_first_data():
    rng = np.random.default_rng(10)
    model = small_cnn(input_layer=False)
    assert not model.built and not model.layers[0].built
    text = []
    model.summary(print_fn=text.append, line_length=76)
    assert "│ conv2d (Conv2D)                 │ ?                      │   0 (unbuilt) │" in text[0]
    assert " Total params: 0 (0.00 B)" in text[0]
    with pytest.raises(ValueError, match="isn't built"):
        model.count_params()
    out = model.predict(rng.random((5, 8, 8, 1)), verbose=0)
    assert out.shape == (5, 3) and model.built and model.input_shape == (None, 8, 8, 1)
    assert model.count_params() == 4 * 9 + 4 + 36 * 3 + 3


def test_explicit_build_and_rebuild_with_other_shape():
    model = small_cnn(input_layer=False)
    model.build((None, 8, 8, 1))
    model.build((32, 8, 8, 1))   # the batch size does not matter
    with pytest.raises(ValueError, match="already built"):
        model.build((None, 10, 10, 1))


def test_add_rejects_non_layers_duplicates_and_second_inputs():
    model = small_cnn()
    with pytest.raises(ValueError, match="Only instances of `minicnn.layers.Layer`"):
        model.add("dense")
    with pytest.raises(ValueError, match="unique names.*'dense'"):
        model.add(Dense(2, name="dense"))
    with pytest.raises(ValueError, match="Input"):
        model.add(Input(shape=(3,)))
    assert len(model.layers) == 4


def test_add_incompatible_layer_adds_nothing():
    model = small_cnn()
    with pytest.raises(ValueError, match="Conv2D"):
        model.add(Conv2D(2, 3))   # after Dense: 2-D input
    assert len(model.layers) == 4


def test_pop_and_add_a_new_head():
    model = small_cnn()
    last = model.pop()
    assert last.name == "dense" and len(model.layers) == 3
    model.add(Dense(5, activation="softmax", name="head"))
    assert model.output_shape == (None, 5)
    with pytest.raises(ValueError, match="no layers"):
        Sequential().pop()


def test_call_equals_predict():
    rng = np.random.default_rng(11)
    model = small_cnn()
    x = rng.random((7, 8, 8, 1)).astype(np.float32)
    assert_same_predictions("call, predict", model, x, model(x), model.predict(x, batch_size=3, verbose=0))


def test_get_and_set_weights_in_keras_order():
    model = small_cnn()
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 3, 1, 4), (4,), (36, 3), (3,)]
    new = [np.full(s, i, dtype=np.float32) for i, s in enumerate(shapes)]
    model.set_weights(new)
    for a, b in zip(model.get_weights(), new):
        np.testing.assert_array_equal(a, b)


def test_set_weights_checks_everything_before_changing_anything():
    model = small_cnn()
    before = model.get_weights()
    bad_shape = [np.zeros_like(w) for w in before]
    bad_shape[-1] = np.zeros(5)
    with pytest.raises(ValueError, match=r"dense.*bias.*\(3,\).*\(5,\)"):
        model.set_weights(bad_shape)
    with pytest.raises(ValueError, match="4 weight arrays. Received: 3"):
        model.set_weights(before[:3])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_config_round_trip_gives_the_same_model():
    rng = np.random.default_rng(12)
    model = small_cnn()
    config_ = json.loads(json.dumps(model.get_config()))   # JSON-able
    again = Sequential.from_config(config_)
    assert [type(a) for a in again.layers] == [type(b) for b in model.layers]
    assert [a.name for a in again.layers] == [b.name for b in model.layers]
    again.set_weights(model.get_weights())
    x = rng.random((4, 8, 8, 1))
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_compile_accepts_strings_and_objects_and_defaults_to_rmsprop():
    model = small_cnn()
    model.compile(loss="categorical_crossentropy")
    assert type(model.optimizer).__name__ == "RMSprop"
    opt = Adam(1e-4)
    model.compile(optimizer=opt, loss=losses.CategoricalCrossentropy(), metrics=["acc"])
    assert model.optimizer is opt and model.metrics_names == ["loss", "acc"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(optimizer="adamax", loss="mse"), "adam.*rmsprop.*sgd"),
    (dict(optimizer="adam", loss="hinge"), "categorical_crossentropy"),
    (dict(optimizer="adam", loss="mse", metrics=["f1"]), "accuracy"),
])
def test_compile_rejects_unknown_names_listing_valid_ones(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_cnn().compile(**kwargs)


def test_accuracy_is_resolved_from_shapes_like_keras():
    rng = np.random.default_rng(13)
    x = rng.random((20, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 20)

    sparse = small_cnn()
    sparse.compile("sgd", "sparse_categorical_crossentropy", ["accuracy"])
    loss, acc = sparse.evaluate(x, labels, verbose=0)
    assert acc == pytest.approx(np.mean(sparse.predict(x, verbose=0).argmax(1) == labels))

    sparse.compile("sgd", "categorical_crossentropy", ["accuracy"])
    loss, acc_onehot = sparse.evaluate(x, to_categorical(labels, 3), verbose=0)
    assert acc_onehot == pytest.approx(acc)

    binary = small_cnn(classes=1, activation="sigmoid")
    binary.compile("sgd", "binary_crossentropy", ["accuracy"])
    y = (labels > 0).astype(np.float32)
    _, acc_bin = binary.evaluate(x, y, verbose=0)   # labels (N,) for a (N, 1) output are accepted
    assert acc_bin == pytest.approx(np.mean((binary.predict(x, verbose=0)[:, 0] > 0.5) == y))


def test_to_categorical_like_keras():
    out = to_categorical([0, 2, 1])
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    assert to_categorical(np.array([[1], [0]]), 3).shape == (2, 3)   # a trailing axis of 1 is dropped
    assert to_categorical(np.zeros((2, 4), dtype=int), 2).shape == (2, 4, 2)
    for bad in ([0, 3], [-1, 0], [0.5]):
        with pytest.raises(ValueError):
            to_categorical(bad, 3)


def test_set_random_seed_and_clear_session():
    import random

    def draw():
        clear_session()
        set_random_seed(3)
        model = small_cnn()
        return model.layers[0].name, model.get_weights(), random.random(), np.random.rand()

    name_a, weights_a, r_a, n_a = draw()
    name_b, weights_b, r_b, n_b = draw()
    assert name_a == name_b == "conv2d" and r_a == r_b and n_a == n_b
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)
    assert small_cnn().layers[0].name == "conv2d_1"


def test_compile_config_is_what_a_file_can_store(tmp_path):
    """``get_compile_config`` (as Keras's): None before compile; a metric function is left out, with a warning."""
    def my_metric(y_true, y_pred):
        return 0.0

    model = small_cnn()
    assert model.get_compile_config() is None
    model.compile(Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy", my_metric])
    with pytest.warns(UserWarning, match="'my_metric' is a function and is not saved"):
        settings = model.get_compile_config()
    assert settings["metrics"] == ["accuracy"] and settings["loss"]["class_name"] == "SparseCategoricalCrossentropy"
    assert settings["optimizer"]["class_name"] == "Adam" and settings["optimizer"]["config"]["learning_rate"] == 1e-3
    json.dumps(settings)
    with pytest.warns(UserWarning, match="my_metric"):
        path = model.save(tmp_path / "m")
    loaded = minicnn.models.load_model(path)
    assert loaded.get_compile_config() == settings and loaded.metrics_names == ["loss", "accuracy"]


def test_the_random_state_a_file_stores_is_public():
    model = Sequential([Dropout(0.5, seed=1, input_shape=(4,)), Dense(2)])
    dropout, dense = model.layers
    assert isinstance(dropout.rng, np.random.Generator) and dense.rng is None
    assert dropout.declared_input_shape == (4,) and dense.declared_input_shape is None
    assert model.shuffle_rng is None
    with pytest.raises(TypeError, match="`shuffle_rng` must be a numpy.random.Generator or None. Received: int"):
        model.shuffle_rng = 3
    model.shuffle_rng = np.random.default_rng(5)
    model.compile("sgd", "mse")
    rng = np.random.default_rng(6)
    model.fit(rng.standard_normal((6, 4)), rng.standard_normal((6, 2)), batch_size=2, verbose=0)
    assert model.shuffle_rng.bit_generator.state == _after_one_permutation(5, 6)


def _after_one_permutation(seed, n):
    """The state of ``default_rng(seed)`` after one epoch's order of ``n`` samples was drawn from it."""
    rng = np.random.default_rng(seed)
    rng.permutation(n)
    return rng.bit_generator.state
