"""The benchmark runs of ``minicnn.bench_runs`` (each started alone in a fresh process by ``minicnn.bench``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch_layout import to_torch_layout

from minicnn import bench, bench_runs

ROOT = Path(__file__).resolve().parents[2]


def small_data(n_train, n_test, seed):
    """``(x, y), (x_test, y_test)`` shaped as Fashion-MNIST: uint8 images (N, 28, 28), labels 0..9."""
    rng = np.random.default_rng(seed)

    def part(n):
        return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)

    return part(n_train), part(n_test)


@pytest.mark.parametrize("lib", ["minicnn", "torch"])
def test_steady_run_times_every_step_after_the_untimed_ones(lib):
    if lib == "torch":
        pytest.importorskip("torch")
    times = bench_runs.steady(lib, 4, 3, data=small_data(64, 1, seed=0))
    assert len(times) == 3 and all(t > 0 for t in times), times


def test_torch_copy_of_the_small_cnn_computes_what_minicnn_computes():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    net = bench.build_minicnn("small")
    copy = bench.build_torch(torch, "small", nhwc_flatten=True)
    bench_runs._torch_weights(copy, net.get_weights())
    x = rng.random((5, 28, 28, 1), dtype=np.float32)
    with torch.no_grad():
        logits = copy(torch.from_numpy(to_torch_layout(x))).double().numpy()
    expected = net.predict(x, verbose=0).astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6, err_msg="softmax of the torch copy vs minicnn")


def test_accuracy_runs_of_both_libraries_start_from_the_same_weights(tmp_path):
    pytest.importorskip("torch")
    data = small_data(8, 300, seed=2)
    init = str(tmp_path / "init.npz")
    ours = bench_runs.accuracy("minicnn", 0, init, seed=3, threads=1, data=data)   # no epoch: the initial weights
    theirs = bench_runs.accuracy("torch", 0, init, seed=3, threads=1, data=data)
    assert ours["epoch_s"] == theirs["epoch_s"] == []
    # the same predictions, but for a near tie of two logits that float32 sums in another order may flip
    assert abs(ours["test_accuracy"] - theirs["test_accuracy"]) <= 1 / 300, (ours, theirs)


def test_a_run_in_its_own_process_answers_one_line_of_json():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", bench.STARTUP_COMMAND], capture_output=True, text=True, env=env,
                          cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) == {"import_s", "first_step_s", "fit_after_s", "total_s"}
    assert 0 < result["import_s"] < result["total_s"] and result["first_step_s"] + result["fit_after_s"] < result["total_s"]


def test_an_unknown_run_is_refused_by_name():
    with pytest.raises(SystemExit, match="unknown run 'stedy'"):
        bench_runs.main(["stedy", "minicnn", "4", "3"])


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
