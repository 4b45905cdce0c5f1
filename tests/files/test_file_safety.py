"""A model file is data: loading one names nothing outside the registries, costs about its size in
memory, and any damage (truncation, bit flips, rewritten JSON, swapped members, giant declared
shapes) ends in a clean ValueError or in exactly the weights that were saved."""

import io
import json
import os
import sys
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

from minicnn import activations, initializers, layers, losses, metrics, optimizers, regularizers, schedules
from minicnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D
from minicnn.layers.preprocessing import Normalization, RandomFlip, Rescaling
from minicnn.models import Sequential, load_model
from minicnn.utils import set_random_seed

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.usefixtures("default_settings")
MB = 1 << 20


def small_model(seed=0):
    set_random_seed(seed)
    model = Sequential([Input(shape=(6, 6, 1)), Rescaling(1 / 255), RandomFlip("horizontal"), Conv2D(3, 3, activation="relu"),
                        BatchNormalization(), MaxPooling2D(), Flatten(), Dropout(0.2), Dense(4, activation="softmax")])
    model.compile(optimizers.Adam(schedules.CosineDecay(1e-2, 10)), "sparse_categorical_crossentropy", ["accuracy"])
    rng = np.random.default_rng(seed)
    model.fit(rng.random((8, 6, 6, 1)) * 255, rng.integers(0, 4, 8), batch_size=4, verbose=0)
    model.class_names = ["a", "b", "c", "d"]
    return model


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.npz"
    model = small_model()
    model.save(path)
    return str(path), model.get_weights()


def members(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write(path, arrays, meta=None):
    arrays = dict(arrays)
    if meta is not None:
        arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    return str(path)


def meta_of(arrays):
    return json.loads(str(arrays["__meta__"][()]))


# ------------------------------------------------------------------------------------ registries
def test_every_registry_holds_only_minicnn_classes_or_functions():
    for registry in (layers.LAYERS, activations.ACTIVATIONS, initializers.INITIALIZERS, regularizers.REGULARIZERS,
                     losses.LOSSES, metrics.METRICS, optimizers.OPTIMIZERS, schedules.SCHEDULES):
        assert registry
        for name, obj in registry.items():
            assert isinstance(name, str) and obj.__module__.startswith("minicnn."), (name, obj)


HOSTILE_NAMES = ["minicnn.datasets._files.download", "minicnn.cli.main", "os.system", "builtins.eval",
                 "__import__", "Sequential", "Layer", "LearningRateSchedule", "Optimizer", "download"]


def _plant(meta, where, name):
    """Put ``name`` where a file names a class or a function."""
    conv = meta["model"]["layers"][3]["config"]
    if where == "layer":
        meta["model"]["layers"][3]["class_name"] = name
    elif where == "activation":
        conv["activation"] = name
    elif where == "initializer":
        conv["kernel_initializer"] = name
    elif where == "regularizer":
        conv["kernel_regularizer"] = {"class_name": name, "config": {"l2": 0.1}}
    elif where == "loss":
        meta["compile"]["loss"] = {"class_name": name, "config": {}}
    elif where == "metric":
        meta["compile"]["metrics"] = [name]
    elif where == "optimizer":
        meta["compile"]["optimizer"]["class_name"] = name
    elif where == "schedule":
        meta["compile"]["optimizer"]["config"]["learning_rate"]["class_name"] = name
    elif where == "schedule module":
        meta["compile"]["optimizer"]["config"]["learning_rate"]["module"] = name.rsplit(".", 1)[0]
        meta["compile"]["optimizer"]["config"]["learning_rate"]["class_name"] = name.rsplit(".", 1)[-1]


WHERE = ["layer", "activation", "initializer", "regularizer", "loss", "metric", "optimizer", "schedule", "schedule module"]


class CallRecorder:
    """Every Python function (by file) and C function (``module.name``) called while active (``sys.setprofile``)."""

    def __init__(self):
        self.files, self.builtins = set(), set()

    def __call__(self, frame, event, arg):
        if event == "call":
            self.files.add(frame.f_code.co_filename)
        elif event == "c_call":
            self.builtins.add(f"{getattr(arg, '__module__', None)}.{getattr(arg, '__name__', '')}")

    def __enter__(self):
        sys.setprofile(self)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_no_file_can_make_loading_call_anything_outside_the_registries(good_file, tmp_path, monkeypatch, where, name):
    import importlib

    path, _ = good_file
    arrays = members(path)
    meta = meta_of(arrays)
    _plant(meta, where, name)
    bad = write(tmp_path / "hostile.npz", arrays, meta)
    monkeypatch.setattr(importlib, "import_module", lambda *a, **k: pytest.fail("import_module called"))
    monkeypatch.setattr(os, "system", lambda *a, **k: pytest.fail("os.system called"))
    modules = set(sys.modules)
    with CallRecorder() as calls, pytest.raises(ValueError) as info:
        load_model(bad)
    assert "hostile.npz" in str(info.value)
    assert set(sys.modules) == modules   # no module was imported
    package = os.path.dirname(os.path.dirname(os.path.abspath(layers.__file__)))
    forbidden = [os.path.join(package, "datasets"), os.path.join(package, "cli.py"), os.path.join(package, "data")]
    allowed = [os.path.join(package, "data", "stats.py")]   # the pure validator of the file's input_stats
    reached = [f for f in calls.files if any(f.startswith(part) for part in forbidden) and f not in allowed]
    assert not reached, reached
    # (builtins.compile does run: ast.literal_eval, numpy's .npy header parser, builds a syntax tree with it)
    executed = calls.builtins & {"builtins.eval", "builtins.exec", "builtins.__import__", "posix.system", "nt.system"}
    assert not executed, executed
    assert os.listdir(tmp_path) == ["hostile.npz"]   # nothing written


def test_predicting_needs_no_optimizer_config(good_file, tmp_path):
    path, weights = good_file
    arrays = members(path)
    meta = meta_of(arrays)
    _plant(meta, "optimizer", "os.system")
    bad = write(tmp_path / "bad_optimizer.npz", arrays, meta)
    with pytest.raises(ValueError, match="Unknown optimizer class"):
        load_model(bad)
    model = load_model(bad, compile=False)   # what minicnn predict/evaluate do
    assert not model.compiled
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [
    lambda: Conv2D(4, 3), lambda: Conv2D(2, (2, 3), use_bias=False), lambda: Dense(5), lambda: Dense(2, use_bias=False),
    lambda: BatchNormalization(), lambda: BatchNormalization(center=False, scale=False), lambda: Normalization(),
    lambda: Normalization(axis=(1, 2, 3)),
])
def test_weight_shapes_are_what_build_creates(make):
    layer = make()
    shape = (None, 7) if isinstance(layer, Dense) else (None, 6, 5, 3)
    planned = layer.weight_shapes(shape)
    layer.build(shape)
    assert planned == {name: w.shape for name, w in zip(layer.weight_names, layer.get_weights())}


def test_every_registered_layer_with_weights_says_their_shapes():
    """A layer that creates weights but does not override ``weight_shapes`` would slip past the loader's check."""
    samples = {"Conv2D": (Conv2D(2, 3), (None, 6, 6, 3)), "Dense": (Dense(3), (None, 4)),
               "BatchNormalization": (BatchNormalization(), (None, 6, 6, 3)), "Normalization": (Normalization(), (None, 6, 6, 3))}
    for name, cls in layers.LAYERS.items():
        if name in samples:
            continue
        try:
            layer = cls() if name != "InputLayer" else None
        except TypeError:   # needs arguments: give it the simplest ones
            layer = None
        if layer is not None:
            layer.build((None, 6, 6, 3))
            assert not layer.get_weights() or layer.weight_shapes((None, 6, 6, 3)), name
    for name, (layer, shape) in samples.items():
        layer.build(shape)
        assert layer.weight_shapes(shape) == {n: w.shape for n, w in zip(layer.weight_names, layer.get_weights())}, name


# ------------------------------------------------------------------------------------ bounded loading
def peak_while(fn):
    """``fn()``'s outcome and the peak of traced memory (bytes) while it ran."""
    tracemalloc.start()
    try:
        try:
            outcome = fn()
        except ValueError as err:
            outcome = err
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_deflated_giant_member_is_refused_without_being_decompressed(good_file, tmp_path):
    path, _ = good_file
    bomb = tmp_path / "bomb.npz"
    bomb.write_bytes(open(path, "rb").read())
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("extra.npy", b"\0" * (256 * MB))   # 256 MB that deflate to about 250 kB
    assert os.path.getsize(bomb) < 2 * MB
    outcome, peak = peak_while(lambda: load_model(bomb))
    assert isinstance(outcome, ValueError) and "extra.npy" in str(outcome) and "bomb.npz" in str(outcome)
    assert peak < 4 * MB, peak


def test_an_architecture_far_larger_than_its_file_is_refused_before_any_weight_is_made(good_file, tmp_path):
    path, _ = good_file
    arrays = members(path)
    meta = meta_of(arrays)
    meta["model"]["layers"][0]["config"]["shape"] = [3000, 3000, 1]   # Dense after Flatten: 5.6e6 x 4 x 4 bytes ...
    meta["model"]["layers"][-1]["config"]["units"] = 200000          # ... x 200000 units: far beyond any memory
    bad = write(tmp_path / "huge.npz", arrays, meta)
    outcome, peak = peak_while(lambda: load_model(bad))
    assert isinstance(outcome, ValueError) and "huge.npz" in str(outcome)
    assert peak < 4 * MB, peak


def npy_bytes(shape, dtype="<f4", data=b""):
    """A .npy member whose header declares ``shape`` whatever data follows."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + data


def rezip(src, dst, replace):
    """Copy the zip ``src`` with members in ``replace`` (name -> bytes) swapped in, stored."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, replace.get(info.filename, zin.read(info.filename)))
    return str(dst)


@pytest.mark.parametrize("member", ["w0.npy", "s0.npy", "__meta__.npy"])
def test_a_giant_declared_shape_is_refused_from_the_header(good_file, tmp_path, member):
    path, _ = good_file
    bad = rezip(path, tmp_path / "giant.npz", {member: npy_bytes((10**6, 10**6), data=b"\0" * 64)})
    outcome, peak = peak_while(lambda: load_model(bad))
    assert isinstance(outcome, ValueError) and "giant.npz" in str(outcome)
    assert peak < 4 * MB, peak


# ------------------------------------------------------------------------------------ the fuzz test
def _mutations():
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=6,
    )
    return st.one_of(
        st.tuples(st.just("truncate"), st.floats(0, 1)),
        st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
        st.tuples(st.just("json"), st.lists(st.integers(0, 2**16), min_size=1, max_size=6), json_values),
        st.tuples(st.just("swap"), st.integers(0, 2**16), st.integers(0, 2**16)),
        st.tuples(st.just("giant"), st.integers(0, 2**16), st.lists(st.integers(0, 2**40), max_size=4)),
    )


def _rewrite_json(meta, path_choices, value):
    """Replace one node of ``meta``, reached by indexing with ``path_choices``, with ``value``."""
    node = meta
    for i, choice in enumerate(path_choices):
        keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not keys:
            break
        key = keys[choice % len(keys)]
        last = i == len(path_choices) - 1 or not isinstance(node[key], (dict, list)) or not node[key]
        if last:
            node[key] = value
            return meta
        node = node[key]
    return meta


def _mutate(blob, path, tmp, mutation):
    kind = mutation[0]
    if kind == "truncate":
        tmp.write_bytes(blob[: int(mutation[1] * len(blob))])
    elif kind == "flip":
        data = bytearray(blob)
        data[min(int(mutation[1] * len(data)), len(data) - 1)] ^= 1 << mutation[2]
        tmp.write_bytes(bytes(data))
    else:
        arrays = members(path)
        names = sorted(arrays)
        if kind == "json":
            meta = _rewrite_json(meta_of(arrays), mutation[1], mutation[2])
            write(tmp, arrays, meta)
        elif kind == "swap":
            a, b = names[mutation[1] % len(names)], names[mutation[2] % len(names)]
            arrays[a], arrays[b] = arrays[b], arrays[a]
            write(tmp, arrays)
        else:   # a member's header declares another (maybe giant) shape; its data stays small
            name = names[mutation[1] % len(names)] + ".npy"
            rezip(path, tmp, {name: npy_bytes(mutation[2], data=b"\0" * 16)})


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutation=_mutations())
def test_fuzz_every_damaged_file_is_a_clean_value_error_or_the_same_weights(good_file, tmp_path_factory, mutation):
    path, weights = good_file
    tmp = tmp_path_factory.mktemp("fuzz") / "damaged.npz"
    blob = open(path, "rb").read()
    _mutate(blob, path, tmp, mutation)
    size = os.path.getsize(tmp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome, peak = peak_while(lambda: load_model(tmp))
    assert peak < size + 4 * MB, (mutation, peak)
    event(f"{mutation[0]}: {type(outcome).__name__}")
    if isinstance(outcome, ValueError):
        assert "damaged.npz" in str(outcome), (mutation, outcome)
        return
    loaded = outcome.get_weights()
    assert len(loaded) == len(weights), mutation
    for i, (a, b) in enumerate(zip(loaded, weights)):
        np.testing.assert_array_equal(a, b, err_msg=f"weight {i} after {mutation}")


# ------------------------------------------------------------------------------------ other records
def test_nan_weights_load_with_a_warning(good_file, tmp_path):
    path, _ = good_file
    model = load_model(path)
    weights = model.get_weights()
    weights[0].flat[:3] = [np.nan, np.inf, -np.inf]   # as a run that diverged would leave them
    model.set_weights(weights)
    model.save(tmp_path / "diverged.npz")
    with pytest.warns(UserWarning, match=r"diverged.npz: 3 of \d+ weights are NaN or infinite"):
        again = load_model(tmp_path / "diverged.npz")
    assert np.isnan(again.get_weights()[0].flat[0])


def test_swapped_arrays_of_the_same_shape_are_caught_by_their_digests(good_file, tmp_path):
    path, _ = good_file
    arrays = members(path)
    meta = meta_of(arrays)
    same = [(i, j) for i in range(len(meta["weights"])) for j in range(i) if meta["weights"][i][2] == meta["weights"][j][2]]
    i, j = same[0]   # e.g. BatchNormalization's gamma and beta
    arrays[f"w{i}"], arrays[f"w{j}"] = arrays[f"w{j}"], arrays[f"w{i}"]
    with pytest.raises(ValueError, match="does not match its digest"):
        load_model(write(tmp_path / "swapped.npz", arrays))


def _stats(channels, **change):
    from minicnn.data.stats import KEYS

    return {**{k: [0.5] * channels for k in KEYS}, **change}


@pytest.mark.parametrize("make,ok", [
    (lambda c: _stats(c), True),
    (lambda c: None, True),
    (lambda c: _stats(c, border_mean=[float("nan")] * c), False),
    (lambda c: _stats(c, border_mean=["0.5"] * c), False),
    (lambda c: _stats(c, border_mean=[True] * c), False),
    (lambda c: _stats(c + 1), False),           # one value per channel
    (lambda c: {"border_mean": [0.5] * c}, False),   # keys missing
    (lambda c: [0.5], False),
])
def test_optional_input_stats_must_be_a_dict_of_finite_numbers(good_file, tmp_path, make, ok):
    path, _ = good_file
    arrays = members(path)
    meta = meta_of(arrays)
    meta["input_stats"] = stats = make(load_model(path, compile=False).input_shape[-1])
    bad = write(tmp_path / "stats.npz", arrays, meta)
    if ok:
        assert load_model(bad).input_stats == stats
    else:
        with pytest.raises(ValueError, match="stats.npz.*input_stats"):
            load_model(bad)


def test_a_zip_directory_asking_for_an_unknown_zip_version_is_a_value_error(good_file, tmp_path):
    """zipfile raises NotImplementedError for a member that needs a newer zip version (found by the fuzz test)."""
    path, _ = good_file
    data = bytearray(open(path, "rb").read())
    entry = data.index(b"PK\x01\x02")            # the first central-directory entry
    data[entry + 6 : entry + 8] = (109).to_bytes(2, "little")   # "version needed to extract": 10.9
    bad = tmp_path / "version.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"version.npz: not a readable minicnn .npz file \(NotImplementedError"):
        load_model(bad)


def test_members_outside_the_format_are_refused_by_name(good_file, tmp_path):
    path, _ = good_file
    arrays = members(path)
    bad = write(tmp_path / "extra.npz", {**arrays, "payload": np.zeros(3)})
    with pytest.raises(ValueError, match=r"extra.npz: a member 'payload.npy' that is not part of the minicnn format"):
        load_model(bad)
    bad = write(tmp_path / "extra_s.npz", {**arrays, "s99": np.zeros(3)})
    with pytest.raises(ValueError, match=r"s99 are not named in the metadata"):
        load_model(bad)


def test_a_registered_layer_of_your_own_round_trips(tmp_path, monkeypatch):
    class Gain(layers.Layer):   # creates a weight but does not override weight_shapes
        def _build(self, input_shape):
            self.add_weight("gain", (input_shape[-1],), "ones")

        def _forward(self, x, training):
            return x * self.params["gain"]

    monkeypatch.setitem(layers.LAYERS, "Gain", Gain)   # what @minicnn.layers.register does
    model = Sequential([Input(shape=(3,)), Gain(), Dense(2)])
    model.set_weights([np.array([1.0, 2.0, 3.0], np.float32), *model.get_weights()[1:]])
    again = load_model(model.save(tmp_path / "gain.npz"))
    for a, b in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_loading_takes_at_most_three_times_the_file_size(tmp_path):
    model = Sequential([Input(shape=(500,)), Dense(2000), Dense(10)])
    model.compile("adam", "mse")
    model.fit(np.zeros((4, 500)), np.zeros((4, 10)), verbose=0)   # Adam's two slots per weight: a 3x larger file
    path = model.save(tmp_path / "big.npz")
    size = os.path.getsize(path)
    assert size > 10 * MB
    for compile in (False, True):
        loaded, peak = peak_while(lambda compile=compile: load_model(path, compile=compile))
        assert isinstance(loaded, Sequential) and peak < 3 * size, (compile, peak / size)
