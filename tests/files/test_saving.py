"""Saving and loading: exact round trips, exact resumption, atomic writes under SIGKILL, and bad files."""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import minicnn
from minicnn import config, saving
from minicnn.layers import Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D
from minicnn.models import Sequential, load_model
from minicnn.utils import set_random_seed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.usefixtures("default_settings")


def make_model(dropout=True):
    layers = [Input(shape=(8, 8, 1)), Conv2D(4, 3, activation="relu"), MaxPooling2D(), Flatten()]
    layers += [Dropout(0.25)] if dropout else []
    return Sequential(layers + [Dense(3, activation="softmax")])


def data(seed, n=24):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, n)


def trained(seed, dropout=True):
    set_random_seed(seed)
    model = make_model(dropout)
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    x, y = data(seed)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model, x, y


def assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for i, (u, v) in enumerate(zip(wa, wb)):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v, err_msg=f"weight {i}")


def rewrite(src, dst, change):
    """Copy an .npz with ``change(arrays, meta)`` applied (to make tampered files)."""
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    original = arrays["__meta__"]
    meta = json.loads(str(original[()]))
    change(arrays, meta)
    if arrays["__meta__"] is original:   # the change edited the parsed metadata: store it
        arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(dst, **arrays)


# ------------------------------------------------------------------------------------ round trips
def test_round_trip_keeps_predictions_config_compile_state_and_class_names(tmp_path):
    model, x, y = trained(60)
    model.class_names = ["cat", "dog", "bird"]
    path = model.save(tmp_path / "model.npz")
    assert path == str(tmp_path / "model.npz")
    again = load_model(path)
    assert_same_weights(model, again)
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
    assert again.get_config() == model.get_config()
    assert again.class_names == ["cat", "dog", "bird"]
    assert again.metrics_names == ["loss", "accuracy"] and type(again.loss) is type(model.loss)
    assert again.optimizer.get_config() == model.optimizer.get_config()
    assert again.optimizer.iterations == model.optimizer.iterations == 3
    for key, slots in model.optimizer.slots.items():
        for name, array in slots.items():
            np.testing.assert_array_equal(again.optimizer.slots[key][name], array)
    assert again.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)


def test_resumed_training_is_bit_identical_to_uninterrupted_training(tmp_path):
    model, x, y = trained(61)
    model.save(tmp_path / "ckpt.npz")
    rng_state = config.rng().bit_generator.state
    model.fit(x, y, batch_size=8, epochs=3, initial_epoch=1, verbose=0)   # uninterrupted

    resumed = load_model(tmp_path / "ckpt.npz")
    config.rng().bit_generator.state = rng_state   # the same shuffling stream as the run above
    resumed.fit(x, y, batch_size=8, epochs=3, initial_epoch=1, verbose=0)
    assert_same_weights(model, resumed)
    assert resumed.optimizer.iterations == model.optimizer.iterations == 9


def test_loading_does_not_shift_the_global_random_stream(tmp_path):
    model, _, _ = trained(62)
    model.save(tmp_path / "m.npz")
    before = config.rng().bit_generator.state
    load_model(tmp_path / "m.npz")
    assert config.rng().bit_generator.state == before


def test_suffix_is_added_once_and_load_accepts_both_spellings(tmp_path):
    model, x, _ = trained(63, dropout=False)
    written = model.save(tmp_path / "model")
    assert written.endswith("model.npz") and os.listdir(tmp_path) == ["model.npz"]
    for name in ("model", "model.npz"):
        np.testing.assert_array_equal(load_model(tmp_path / name).predict(x, verbose=0), model.predict(x, verbose=0))
    assert minicnn.load_model is load_model
    with pytest.raises(FileNotFoundError, match="nothing"):
        load_model(tmp_path / "nothing.npz")
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "model", overwrite=False)


def test_uncompiled_and_unbuilt_models_round_trip(tmp_path):
    built = make_model(dropout=False)
    load_model(built.save(tmp_path / "built.npz"))
    assert not load_model(tmp_path / "built.npz").compiled
    unbuilt = Sequential([Conv2D(2, 3), Flatten(), Dense(2)])
    again = load_model(unbuilt.save(tmp_path / "unbuilt.npz"))
    assert not again.built and [type(layer) for layer in again.layers] == [Conv2D, Flatten, Dense]


def test_save_and_load_weights(tmp_path):
    model, x, _ = trained(64)
    model.save_weights(tmp_path / "w")
    fresh = Sequential([Conv2D(4, 3, activation="relu"), MaxPooling2D(), Flatten(), Dropout(0.25),
                        Dense(3, activation="softmax")])   # unbuilt: built from the stored input shape
    fresh.load_weights(tmp_path / "w.npz")
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), model.predict(x, verbose=0))
    fresh.load_weights(model.save(tmp_path / "full.npz"))   # a full model file holds weights too

    other = Sequential([Input(shape=(8, 8, 1)), Conv2D(5, 3), Flatten(), Dense(3)])
    before = other.get_weights()
    with pytest.raises(ValueError, match=r"w\.npz.*do not fit"):
        other.load_weights(tmp_path / "w.npz")
    for a, b in zip(before, other.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------ atomic writes
KILL_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from minicnn.layers import Dense, Input
    from minicnn.models import Sequential

    model = Sequential([Input(shape=(1000,)), Dense(3000)])   # 3M weights: each save takes a while
    k = 0
    while True:
        model.set_weights([np.full(w.shape, k, dtype=np.float32) for w in model.get_weights()])
        model.save(sys.argv[1])
        print(k, flush=True)
        k += 1
""")


def leftovers(folder, name="model.npz"):
    return sorted(n for n in os.listdir(folder) if n.startswith(f".{name}.") and n.endswith(".tmp"))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs signal.SIGKILL (POSIX) to kill a process mid-save")
def test_a_process_killed_mid_save_leaves_a_loadable_file_and_at_most_its_own_temp_file(tmp_path):
    rng = np.random.default_rng(65)
    script = tmp_path / "saver.py"
    script.write_text(KILL_SCRIPT)
    path = tmp_path / "model.npz"
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "MINICNN_BACKEND": "reference"}
    counts = []
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, env=env)
        try:
            first = proc.stdout.readline()   # one complete save exists now
            assert first.strip().isdigit(), first
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        model = load_model(path)   # the old version or the new one, never a torn file
        values = {float(v) for w in model.get_weights() for v in np.unique(w)}
        assert len(values) == 1, values
        left = leftovers(tmp_path)
        # each saver's first save removed the temp files of the savers killed before it
        assert len(left) <= 1 and all(f".{proc.pid}." in n for n in left), left
        counts.append(len(left))
    model.save(path)   # this process's save removes the last killed saver's file too
    assert leftovers(tmp_path) == [], counts


def test_a_save_removes_only_temp_files_whose_writer_is_gone(tmp_path):
    model = Sequential([Input(shape=(3,)), Dense(2)])
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(done.stdout), os.getppid()   # a process that has exited, and our parent
    names = [f".model.npz.{dead}.0123abcd.tmp", f".model.npz.{alive}.0123abcd.tmp", f".other.npz.{dead}.0123abcd.tmp",
             f".model.npz.{os.getpid()}.0123abcd.tmp"]   # this process may be saving in another thread
    for name in names:
        (tmp_path / name).write_bytes(b"half a file")
    model.save(tmp_path / "model.npz")
    assert sorted(os.listdir(tmp_path)) == sorted(["model.npz", *names[1:]])


def test_save_errors_name_the_target_not_the_temp_file(tmp_path):
    model = Sequential([Input(shape=(3,)), Dense(2)])
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OSError) as info:
        model.save(tmp_path / "a_file" / "model.npz")   # the folder is a file
    assert str(tmp_path / "a_file" / "model.npz") in str(info.value) and ".tmp" not in str(info.value)
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(IsADirectoryError, match="dir.npz"):
        model.save(tmp_path / "dir.npz")


def test_a_failing_write_keeps_the_previous_file_and_cleans_up(tmp_path, monkeypatch):
    model, x, _ = trained(66, dropout=False)
    path = model.save(tmp_path / "m.npz")
    expected = model.predict(x, verbose=0)

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(saving.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.npz"]
    np.testing.assert_array_equal(load_model(path).predict(x, verbose=0), expected)


# ------------------------------------------------------------------------------------ bad files
@pytest.fixture
def saved(tmp_path):
    model, _, _ = trained(67)
    return model.save(tmp_path / "good.npz"), tmp_path


def test_truncated_file(saved):
    path, folder = saved
    blob = open(path, "rb").read()
    for size in (0, 10, len(blob) // 2, len(blob) - 30):
        bad = folder / f"cut{size}.npz"
        bad.write_bytes(blob[:size])
        with pytest.raises(ValueError, match=f"cut{size}.npz"):
            load_model(bad)


def test_corrupted_bytes(saved):
    path, folder = saved
    blob = bytearray(open(path, "rb").read())
    blob[len(blob) // 2] ^= 0xFF
    bad = folder / "flipped.npz"
    bad.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="flipped.npz"):
        load_model(bad)


def test_foreign_files(saved):
    _, folder = saved
    np.savez(folder / "random.npz", a=np.arange(3), b=np.ones((2, 2)))
    (folder / "notes.npz").write_text("this is not a model\n")
    np.save(folder / "array.npy", np.arange(4))
    os.replace(folder / "array.npy", folder / "array.npz")
    np.savez(folder / "keras.npz", __meta__=np.array(json.dumps({"format": "keras"})))
    for name, match in (("random", "no '__meta__'"), ("notes", "not a readable"), ("array", "single .npy"),
                        ("keras", "format")):
        with pytest.raises(ValueError, match=match) as info:
            load_model(folder / f"{name}.npz")
        assert f"{name}.npz" in str(info.value)


class Boom:
    def __reduce__(self):
        return (open, (os.path.join(os.environ["MINICNN_TEST_MARKER"]), "w"))


def test_pickled_content_is_never_executed(saved, monkeypatch):
    path, folder = saved
    marker = folder / "pwned"
    monkeypatch.setenv("MINICNN_TEST_MARKER", str(marker))
    payload = np.empty(1, dtype=object)
    payload[0] = Boom()

    def add_pickle(arrays, meta):
        arrays["w0"] = payload

    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    add_pickle(arrays, None)
    np.savez(folder / "evil.npz", allow_pickle=True, **arrays)
    assert pickle.dumps(payload[0])   # the payload really would run on unpickling
    with pytest.raises(ValueError, match="evil.npz"):
        load_model(folder / "evil.npz")
    assert not marker.exists()


@pytest.mark.parametrize("change,match", [
    (lambda a, m: a.__setitem__("__meta__", np.array("{not json")), "JSON"),
    (lambda a, m: a.__setitem__("w0", np.zeros((2, 2), np.float32)), r"w0.*shape"),
    (lambda a, m: (a.__setitem__("w0", np.zeros((2, 2), np.float32)), m["weights"][0].__setitem__(2, [2, 2])), "kernel"),
    (lambda a, m: a.pop("w3"), "w3.*missing"),
    (lambda a, m: m["model"]["layers"][1].__setitem__("class_name", "Evil"), "Evil"),
    (lambda a, m: m["model"]["layers"][1]["config"].__setitem__("filters", "many"), "filters"),
    (lambda a, m: m["model"]["layers"][1]["config"].__setitem__("bogus", 1), "bogus"),
    (lambda a, m: m["compile"]["optimizer"].__setitem__("class_name", "Nadam"), "Nadam"),
    (lambda a, m: m["compile"]["optimizer"]["config"].__setitem__("learning_rate", {"module": "os", "class_name": "system", "config": {}}), "module"),
    (lambda a, m: a.__setitem__("s0", np.zeros(7, np.float32)), "slot"),
    (lambda a, m: m.__setitem__("class_names", [1, 2]), "class_names"),
    (lambda a, m: m.__setitem__("version", 99), "version"),
    (lambda a, m: a.__setitem__("w1", np.array(["a", "b", "c", "d"])), "floats"),
])
def test_tampered_files_raise_value_error_naming_the_file(saved, change, match):
    path, folder = saved
    bad = folder / "tampered.npz"
    rewrite(path, bad, change)
    with pytest.raises(ValueError, match=match) as info:
        load_model(bad)
    assert "tampered.npz" in str(info.value)


def test_a_new_head_after_pop_trains_and_saves_with_the_old_optimizer(tmp_path):
    model, x, y = trained(68)
    model.pop()
    model.add(Dense(5, activation="softmax", name="dense"))   # same name, other shape: fresh slots
    model.fit(x, y, epochs=1, verbose=0)
    assert model.optimizer.slots["dense/kernel"]["m"].shape == (36, 5)
    again = load_model(model.save(tmp_path / "head.npz"))
    assert_same_weights(model, again)
    model.pop()
    model.add(Dense(3, activation="softmax", name="other"))
    assert "dense/kernel" in model.optimizer.slots   # stale state of the removed layer ...
    again = load_model(model.save(tmp_path / "head2.npz"))
    assert "dense/kernel" not in again.optimizer.slots   # ... is not saved


def test_a_learning_rate_schedule_is_saved_with_the_optimizer(tmp_path):
    schedules = pytest.importorskip("minicnn.schedules")
    set_random_seed(69)
    model = make_model(dropout=False)
    model.compile(minicnn.optimizers.Adam(schedules.ExponentialDecay(0.01, decay_steps=2, decay_rate=0.5)),
                  "sparse_categorical_crossentropy")
    x, y = data(69)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    again = load_model(model.save(tmp_path / "sched.npz"))
    assert type(again.optimizer._learning_rate) is schedules.ExponentialDecay
    assert again.optimizer.learning_rate == model.optimizer.learning_rate == pytest.approx(0.01 * 0.5 ** 1.5)
    rng_state = config.rng().bit_generator.state
    model.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, verbose=0)
    config.rng().bit_generator.state = rng_state
    again.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, verbose=0)
    assert_same_weights(model, again)
