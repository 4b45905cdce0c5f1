"""The kernels package as a contract: identical signatures, no import cycle, no OpenMP that kills
a forked child, plain Python under ``NUMBA_DISABLE_JIT=1``, BLAS found through threadpoolctl."""

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minicnn.kernels import KERNELS, reference

numba_backend = pytest.importorskip("minicnn.kernels.numba")

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "minicnn" / "kernels"


@pytest.mark.parametrize("name", KERNELS)
def test_fast_and_reference_kernels_have_identical_signatures(name):
    fast, ref = inspect.signature(getattr(numba_backend, name)), inspect.signature(getattr(reference, name))
    assert fast == ref, f"{name}: numba {fast} != reference {ref}"


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


def test_batchnorm_with_more_row_blocks_than_parts_matches_the_reference():
    # 40*9*9 = 3240 rows: 13 blocks of 256 rows over 8 parts
    rng = np.random.default_rng(41)
    x = rng.standard_normal((40, 9, 9, 5))
    gamma, beta, dy = rng.standard_normal(5), rng.standard_normal(5), rng.standard_normal(x.shape)
    got, want = numba_backend.batchnorm_forward_train(x, gamma, beta, 1e-3), reference.batchnorm_forward_train(
        x, gamma, beta, 1e-3)
    for name, a, e in zip(("y", "mean", "var"), got, want):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12, err_msg=name)
    got = numba_backend.batchnorm_backward(dy, x, gamma, want[1], want[2], 1e-3)
    for name, a, e in zip(("dx", "dgamma", "dbeta"), got, reference.batchnorm_backward(dy, x, gamma, want[1], want[2],
                                                                                        1e-3)):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-10, err_msg=name)


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


def test_blas_is_found_through_threadpoolctl_and_described():
    from threadpoolctl import ThreadpoolController

    from minicnn.kernels.numba._threads import BLAS

    found = [lib.internal_api for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
    line = numba_backend.blas_info()
    assert BLAS.controlled == bool(found)
    assert all(name in line for name in found), line
    assert ("controlled by threadpoolctl" in line) == bool(found), line


def test_blas_kernels_run_on_one_lane_where_blas_cannot_be_controlled(monkeypatch):
    from minicnn.kernels.numba import _threads

    monkeypatch.setattr(_threads.BLAS, "_libraries", [])   # as with Accelerate
    seen = []
    parts = _threads.LANES.run(lambda k: seen.append(k) or k, _threads.PARTS, work=10**9, blas=True)
    assert parts == list(range(_threads.PARTS)) and seen == list(range(_threads.PARTS))
    # kernels that do not call BLAS still get every lane
    lanes = min(_threads.PARTS, _threads.get_num_threads(), _threads.MAX_LANES)
    assert _threads.LANES.lanes_for(_threads.PARTS, 10**9, blas=False) == lanes
    assert _threads.LANES.lanes_for(_threads.PARTS, 10**9, blas=True) == 1
    monkeypatch.undo()
    assert _threads.LANES.lanes_for(_threads.PARTS, 10**9, blas=True) == (lanes if _threads.BLAS.controlled else 1)


def test_minicnn_info_names_the_blas_and_whether_it_is_controlled():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "minicnn", "info"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert numba_backend.blas_info() in done.stdout, done.stdout


def test_bench_peak_memory_without_proc_or_resource_is_nan(monkeypatch):
    # Windows has neither /proc nor the resource module: the benchmark reports NaN, it does not crash
    import builtins
    import math

    from minicnn import bench

    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc"):
            raise OSError("no /proc here")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    monkeypatch.setitem(sys.modules, "resource", None)   # `import resource` raises ImportError
    assert math.isnan(bench.peak_rss_mb())
    monkeypatch.delitem(sys.modules, "resource")
    assert bench.peak_rss_mb() > 0
