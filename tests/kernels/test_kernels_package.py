"""The kernels package as a contract: identical signatures, float32 in and out, non-contiguous input, clear
errors on both backends, dispatch to the active backend, no import cycle, no OpenMP that kills a forked
child, plain Python under ``NUMBA_DISABLE_JIT=1``."""

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_sums_close, conv_sums
from kernel_cases import BACKENDS, conv_all, make_conv, make_pool, pool_all

import minicnn
from minicnn.kernels import KERNELS, reference
from minicnn.kernels import numba as fast

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "minicnn" / "kernels"


@pytest.mark.parametrize("name", KERNELS)
def test_fast_and_reference_kernels_have_identical_signatures(name):
    numba_sig, ref_sig = inspect.signature(getattr(fast, name)), inspect.signature(getattr(reference, name))
    assert numba_sig == ref_sig, f"{name}: numba {numba_sig} != reference {ref_sig}"


@pytest.mark.parametrize("name", list(BACKENDS))
def test_float32_in_float32_out(name):
    rng = np.random.default_rng(11)
    x, w, b, dy, kw = make_conv((2, 6, 5, 2, 3, 3, 3, (2, 1), "same", (1, 1)), rng, np.float32)
    # a float64 kernel or bias must not up-cast float32 data
    for key, value in conv_all(BACKENDS[name], x, w.astype(np.float64), b.astype(np.float64), dy, kw).items():
        assert value.dtype == np.float32, f"{key}: {value.dtype}"
    xp, dyp, kwp = make_pool((2, 7, 5, 2, (3, 3), (2, 2), "same"), rng, np.float32)
    out = pool_all(BACKENDS[name], xp, dyp, kwp)
    assert out["y"].dtype == np.float32 and out["dx"].dtype == np.float32
    assert out["argmax"].dtype == np.int32


@pytest.mark.parametrize("name", list(BACKENDS))
def test_non_contiguous_inputs(name):
    rng = np.random.default_rng(12)
    m = BACKENDS[name]
    x, w, b, dy, kw = make_conv((2, 6, 5, 2, 3, 3, 3, (1, 1), "same", (1, 1)), rng)
    expected = conv_all(m, x, w, b, dy, kw)

    def strided(a):  # same values, every other element of a twice-as-large array
        big = np.zeros(tuple(2 * n for n in a.shape), dtype=a.dtype)
        big[tuple(slice(None, None, 2) for _ in a.shape)] = a
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        assert not view.flags.c_contiguous
        return view

    actual = conv_all(m, strided(x), strided(w), strided(b), strided(dy), kw)
    sums = conv_sums(x, w, b, dy, **kw)
    for key in expected:
        if name == "numba":   # the wrappers copy to contiguous arrays first: the same bits
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
        else:   # NumPy < 2.3 multiplies strided views by another loop than contiguous ones: another order
            assert_sums_close(key, actual[key], expected[key], *sums[key])
    xp, dyp, kwp = make_pool((2, 7, 5, 2, (3, 3), (2, 2), "same"), rng)
    expected = pool_all(m, xp, dyp, kwp)
    actual = pool_all(m, strided(xp), strided(dyp), kwp)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_bad_arguments_raise_clear_errors(name):
    m = BACKENDS[name]
    x = np.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="input channels"):
        m.conv2d_forward(x, np.zeros((3, 3, 3, 1)), None)
    with pytest.raises(ValueError, match="does not fit"):
        m.conv2d_forward(x, np.zeros((5, 3, 2, 1)), None)
    with pytest.raises(ValueError, match="Expected `dy` of shape"):
        m.conv2d_backward_input(np.zeros((1, 3, 3, 1)), np.zeros((3, 3, 2, 1)), x.shape)
    with pytest.raises(TypeError, match="float32 or float64"):
        m.conv2d_forward(x.astype(np.int64), np.zeros((3, 3, 2, 1)), None)
    with pytest.raises(ValueError, match="smaller than the pool"):
        m.maxpool2d_forward(x, (2, 2), (2, 2), ((2, 0), (0, 0)))


@pytest.mark.parametrize("name", list(BACKENDS))
def test_batchnorm_and_avgpool_keep_float32_and_accept_non_contiguous_input(name):
    m = BACKENDS[name]
    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 6, 5, 4)).astype(np.float32)
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)   # float64 parameters must not up-cast
    y, mean, var = m.batchnorm_forward_train(x, gamma, beta, 1e-3)
    outputs = [y, mean, var, *m.batchnorm_backward(np.ones_like(x), x, gamma, mean, var, 1e-3)]
    kw = dict(pool_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    yp = m.avgpool2d_forward(x, **kw)
    outputs += [yp, m.avgpool2d_backward(yp, x.shape, **kw)]
    assert [o.dtype for o in outputs] == [np.float32] * len(outputs)
    strided = np.zeros((6, 12, 10, 8))[::2, ::2, ::2, ::2]
    strided[:] = x
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(m.avgpool2d_forward(strided, **kw), m.avgpool2d_forward(x.astype(np.float64), **kw))
    np.testing.assert_array_equal(
        m.batchnorm_forward_train(strided, gamma, beta, 1e-3)[0],
        m.batchnorm_forward_train(x.astype(np.float64), gamma, beta, 1e-3)[0],
    )


@pytest.mark.parametrize("name", list(BACKENDS))
def test_batchnorm_and_avgpool_raise_clear_errors(name):
    m = BACKENDS[name]
    x = np.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"`gamma` of shape \(3,\)"):
        m.batchnorm_forward_train(x, np.ones(2), np.zeros(3), 1e-3)
    with pytest.raises(ValueError, match="epsilon"):
        m.batchnorm_forward_train(x, np.ones(3), np.zeros(3), -1.0)
    with pytest.raises(ValueError, match="non-empty"):
        m.batchnorm_forward_train(np.zeros((0, 3)), np.ones(3), np.zeros(3), 1e-3)
    with pytest.raises(ValueError, match="Expected `dy` of shape"):
        m.batchnorm_backward(np.zeros((2, 4, 4, 2)), x, np.ones(3), np.zeros(3), np.ones(3), 1e-3)
    with pytest.raises(TypeError, match="float32 or float64"):
        m.avgpool2d_forward(x.astype(np.int32), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="smaller than the pool"):
        m.avgpool2d_forward(x, (2, 2), (2, 2), ((2, 0), (0, 0)))
    with pytest.raises(ValueError, match="Expected `dy` of shape"):
        m.avgpool2d_backward(np.zeros((2, 3, 3, 3)), x.shape, (2, 2), (2, 2))


def test_bad_activation_and_relu_output_shapes_raise():
    x, w = np.zeros((1, 4, 4, 1)), np.zeros((3, 3, 1, 2))
    for m in BACKENDS.values():
        with pytest.raises(ValueError, match="activation"):
            m.conv2d_forward(x, w, None, activation="tanh")
    with pytest.raises(ValueError, match="relu_output"):
        fast.conv2d_backward(np.zeros((1, 2, 2, 2)), x, w, relu_output=np.zeros((1, 2, 2, 3)))


def test_kernels_dispatch_to_the_active_backend(backend):
    assert minicnn.kernels.avgpool2d_forward is BACKENDS[backend].avgpool2d_forward
    assert minicnn.kernels.batchnorm_backward is BACKENDS[backend].batchnorm_backward


def _imports(path):
    """The minicnn.kernels modules that ``path`` imports at module level (relative imports resolved)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            target = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
            names = [f"{target}.{alias.name}" for alias in node.names] + [target]
            found.update(n for n in names if (ROOT / (n.replace(".", "/") + ".py")).exists()
                         or (ROOT / n.replace(".", "/") / "__init__.py").exists())
    return {n for n in found if n.startswith("minicnn.kernels") and n != module}


def test_kernels_package_has_no_import_cycle_and_reference_imports_no_fast_path():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {n.removesuffix(".__init__") for n in _imports(path)} - {name}
    assert not any("numba" in n for n in graph["minicnn.kernels.reference"]), graph["minicnn.kernels.reference"]
    # depth-first search for a back edge; a package importing its own submodules is not a cycle
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if nxt.startswith(node + "."):
                continue
            assert state.get(nxt) != "open", f"import cycle: {' -> '.join(trail + [nxt])}"
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_no_kernel_module_is_over_500_lines_except_the_textbook_reference():
    long = {p.name: n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert set(long) <= {"reference.py"}, long


def test_no_kernel_is_compiled_with_openmp_parallel():
    # parallel=True starts OpenMP threads, which make a forked child die and fight BLAS for the cores
    import importlib

    from numba.core.registry import CPUDispatcher

    jitted = []
    for path in (PACKAGE / "numba").glob("*.py"):
        module = importlib.import_module(f"minicnn.kernels.numba.{path.stem}".removesuffix(".__init__"))
        jitted += [(path.stem, name, f) for name, f in vars(module).items() if isinstance(f, CPUDispatcher)]
    assert len(jitted) > 10, jitted
    assert [(m, n) for m, n, f in jitted if f.targetoptions.get("parallel")] == []


SMALL_MODEL = """
import sys
import numpy as np
import minicnn
from minicnn.layers import AveragePooling2D, BatchNormalization, Conv2D, Dense, Flatten, Input, MaxPooling2D
from minicnn.models import Sequential
from minicnn.utils import set_random_seed

minicnn.set_backend(sys.argv[1])
minicnn.set_floatx("float64")
set_random_seed(5)
rng = np.random.default_rng(5)
x, y = rng.random((4, 8, 8, 3)), rng.integers(0, 3, 4)
model = Sequential([Input(shape=(8, 8, 3)), Conv2D(32, 3, padding="same", activation="relu"),
                    BatchNormalization(), Conv2D(32, 3, activation="relu"), MaxPooling2D(2),
                    AveragePooling2D(1), Conv2D(3, 1), Flatten(), Dense(3, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
np.save(sys.argv[2], model.predict(x, verbose=0))
"""


def test_disable_jit_runs_every_kernel_as_plain_python_with_32_filter_convolutions(tmp_path):
    # the way a learner steps through a jitted loop in a debugger; same numbers as the compiled run
    outputs = {}
    for mode, jit_off in (("jit", "0"), ("python", "1")):
        env = {**os.environ, "NUMBA_DISABLE_JIT": jit_off, "PYTHONPATH": str(ROOT)}
        out = tmp_path / f"{mode}.npy"
        done = subprocess.run([sys.executable, "-c", SMALL_MODEL, "numba", str(out)], env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, f"NUMBA_DISABLE_JIT={jit_off} failed:\n{done.stderr[-3000:]}"
        outputs[mode] = np.load(out)
    # plain Python evaluates a*b + c in two roundings where the tiles may fuse them (fastmath contract)
    np.testing.assert_allclose(outputs["python"], outputs["jit"], rtol=1e-9, atol=1e-12)


FORK_CHILD = """
import os
import sys
import numpy as np
import minicnn
from minicnn.layers import AveragePooling2D, BatchNormalization, Conv2D, Dense, Flatten, Input
from minicnn.models import Sequential

minicnn.set_backend("numba")
rng = np.random.default_rng(2)
x, y = rng.random((64, 12, 12, 3)).astype("float32"), rng.integers(0, 2, 64)
model = Sequential([Input(shape=(12, 12, 3)), Conv2D(32, 3, activation="relu"), BatchNormalization(),
                    AveragePooling2D(2), Flatten(), Dense(2, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
model.fit(x, y, batch_size=32, epochs=1, verbose=0)
model.train_on_batch(x, y)   # BatchNormalization's training kernels are the last to run before the fork
before = model.predict(x, verbose=0)
pid = os.fork()
if pid == 0:
    model.train_on_batch(x, y)
    os._exit(0 if np.isfinite(model.predict(x, verbose=0)).all() and before.shape == (64, 2) else 3)
_, status = os.waitpid(pid, 0)
print("child status", status)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork does not exist on this platform")
def test_a_model_with_batchnorm_used_before_fork_leaves_a_working_child():
    # with an OpenMP kernel (Numba's prange) run last, the child died: "fork() called from a
    # process already using GNU OpenMP, this is unsafe" (reproduced with the code before lanes)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", FORK_CHILD], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"the forked child failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}"
