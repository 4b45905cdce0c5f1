"""The training cases: the two models in both libraries, and the runs that time and score them.

:func:`run_training` times steps in worker processes; :func:`run_steady`, :func:`run_startup` and
:func:`run_accuracy` each start a fresh process of their own (:mod:`minicnn.bench_runs`).
"""

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .kernel_cases import nchw
from .processes import GLIBC_TUNABLES, THREADS, Worker, interleave, loadavg, median_ms, thread_env, torch_available

# =============================================================================== models
# The two models of the issue: the small Fashion-MNIST CNN and the blog's 224x224 model.
MODELS = {
    "small": dict(input_shape=(28, 28, 1), convs=(32, 64), dense=128, classes=10),
    "blog": dict(input_shape=(224, 224, 3), convs=(32,), dense=128, classes=10),
}


class ModelRunner:
    """A training step or an inference call of one model in one library, on fixed random data."""

    def __init__(self, lib, model, batch, mode, seed=0):
        spec = MODELS[model]
        rng = np.random.default_rng(seed)
        x = rng.random((batch, *spec["input_shape"]), dtype=np.float32)
        y = rng.integers(0, spec["classes"], batch)
        self.lib = lib
        if lib == "minicnn":
            net = build_minicnn(model)
            if mode == "train":
                self.call = lambda: net.train_on_batch(x, y)
            else:
                self.call = lambda: net.predict_on_batch(x)
        else:
            import torch

            torch.set_num_threads(THREADS)
            net = build_torch(torch, model)
            xt, yt = torch.from_numpy(nchw(x)), torch.from_numpy(y)
            if mode == "train":
                opt = torch.optim.Adam(net.parameters(), lr=1e-3)
                loss_fn = torch.nn.CrossEntropyLoss()   # softmax + cross-entropy, as minicnn's fused pair

                def step():
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(net(xt), yt)
                    loss.backward()
                    opt.step()
                    return loss.item()

                self.call = step
            else:
                net.eval()

                def infer():
                    with torch.inference_mode():
                        return torch.softmax(net(xt), dim=1)

                self.call = infer


def build_minicnn(model, optimizer=None, package="minicnn"):
    """The model in minicnn, compiled with Adam(1e-3) and sparse categorical cross-entropy.

    ``package``: the name minicnn is imported by; another checkout's copy can be timed beside
    this one in the same process (``benchmarks/bench_before_after.py --same-process``).
    """
    L = importlib.import_module(f"{package}.layers")
    Sequential = importlib.import_module(f"{package}.models").Sequential
    Adam = importlib.import_module(f"{package}.optimizers").Adam

    spec = MODELS[model]
    layers = [L.Input(shape=spec["input_shape"])]
    for filters in spec["convs"]:
        layers += [L.Conv2D(filters, 3, activation="relu"), L.MaxPooling2D(2)]
    layers += [L.Flatten(), L.Dense(spec["dense"], activation="relu"), L.Dense(spec["classes"], activation="softmax")]
    net = Sequential(layers)
    net.compile(optimizer=optimizer or Adam(1e-3), loss="sparse_categorical_crossentropy")
    return net


def build_torch(torch, model, nhwc_flatten=False):
    """The same model in PyTorch (NCHW). ``nhwc_flatten`` flattens in minicnn's (h, w, c) order."""
    nn = torch.nn
    spec = MODELS[model]
    H, W, C = spec["input_shape"]
    layers = []
    for filters in spec["convs"]:
        layers += [nn.Conv2d(C, filters, 3), nn.ReLU(), nn.MaxPool2d(2)]
        H, W, C = (H - 2) // 2, (W - 2) // 2, filters
    if nhwc_flatten:
        class ToNHWC(nn.Module):
            def forward(self, x):
                return x.permute(0, 2, 3, 1)

        layers.append(ToNHWC())
    layers += [nn.Flatten(), nn.Linear(H * W * C, spec["dense"]), nn.ReLU(), nn.Linear(spec["dense"], spec["classes"])]
    return nn.Sequential(*layers)


def run_training(configs, rounds=5, reps=None, glibc=False, log=print):
    """Images/s of training steps and inference calls, minicnn vs torch, interleaved per config.

    ``configs``: ``(model, batch)`` pairs. Each (library, model, batch, mode) has a worker of its own,
    so its ``ru_maxrss`` is that case's peak memory. With ``glibc=True`` the blog model's training
    step is also timed with ``GLIBC_TUNABLES`` raised, for both libraries.
    """
    libs = ["minicnn"] + (["torch"] if torch_available() else [])
    out = []
    for model, batch in configs:
        variants = [("train", None), ("infer", None)]
        if glibc and model == "blog":
            variants.append(("train", {"GLIBC_TUNABLES": GLIBC_TUNABLES}))
        for mode, env in variants:
            label = f"{model} batch {batch} {mode}" + (" (glibc tunables)" if env else "")
            log(f"{label}: starting workers")
            workers = {}
            try:
                first = {}
                for lib in libs:
                    workers[lib] = Worker(f"{lib} {label}", env)
                    first[lib] = workers[lib].ask(cmd="model", lib=lib, model=model, batch=batch, mode=mode)["first_call_s"]
                n = reps or (2 if model == "blog" else 20)
                # bursts of 20 steps: on the machine of RESULTS.md a core left idle comes back
                # slowly, which short bursts after every pause would mostly measure
                times = interleave({lib: (w, None) for lib, w in workers.items()}, rounds, n, settle=0.02)
                rss = {lib: w.ask(cmd="rss")["maxrss_mb"] for lib, w in workers.items()}
            finally:
                for w in workers.values():
                    w.close()
            row = dict(model=model, batch=batch, mode=mode, glibc_tunables=bool(env), threads=THREADS,
                       loadavg_1min=loadavg())
            for lib in libs:
                ms = median_ms(times[lib])
                row[lib] = {"ms": ms, "images_per_s": batch / (ms * 1e-3), "peak_rss_mb": rss[lib],
                            "first_call_s": first[lib], "q25_ms": float(np.percentile(times[lib], 25)) * 1e3,
                            "q75_ms": float(np.percentile(times[lib], 75)) * 1e3}
            if "torch" in row:
                row["speedup"] = row["torch"]["ms"] / row["minicnn"]["ms"]
            log(f"  minicnn {row['minicnn']['ms']:.2f} ms" + (f", torch {row['torch']['ms']:.2f} ms, ratio {row['speedup']:.2f}x" if "torch" in row else ""))
            out.append(row)
    return out


def run_steady(configs=((32, 400), (128, 150)), repeats=3, log=print):
    """The small CNN's training step in steady state: each library alone in a fresh process,
    ``steps`` steps in a row on random Fashion-MNIST minibatches; the libraries take turns
    ``repeats`` times. Median ms of all steps, per batch size.

    No pauses and no other process between the steps: this is how ``fit`` calls them, and it
    is the fairer figure for a library whose threads start slowly after a pause.
    """
    libs = ["minicnn"] + (["torch"] if torch_available() else [])
    out = []
    for bs, steps in configs:
        times = {lib: [] for lib in libs}
        for _ in range(repeats):
            for lib in libs:
                proc = subprocess.run([sys.executable, "-m", "minicnn.bench_runs", "steady", lib, str(bs), str(steps)],
                                      capture_output=True, text=True, env=thread_env(), check=True)
                times[lib] += json.loads(proc.stdout.strip().splitlines()[-1])
        row = {"batch": bs, "steps": steps * repeats, "loadavg_1min": loadavg()}
        for lib in libs:
            ms = median_ms(times[lib])
            row[lib] = {"ms": ms, "images_per_s": bs / (ms * 1e-3)}
        if "torch" in row:
            row["speedup"] = row["torch"]["ms"] / row["minicnn"]["ms"]
        log(f"  batch {bs}: minicnn {row['minicnn']['ms']:.2f} ms" +
            (f", torch {row['torch']['ms']:.2f} ms, ratio {row['speedup']:.2f}x" if "torch" in row else ""))
        out.append(row)
    return out


#: The startup run (``minicnn.bench_runs.startup``): ``-c`` so that the clock starts before ``import minicnn``.
STARTUP_COMMAND = ("import time; t0 = time.perf_counter(); import minicnn; t1 = time.perf_counter(); "
                   "from minicnn.bench_runs import print_json, startup; print_json(startup(t0, t1))")


def run_startup(log=print):
    """Compile-time cost: a fresh ``NUMBA_CACHE_DIR`` (cold), then the same again (warm).

    Each run is a new process: ``import minicnn``, build the small CNN and do one training step,
    then a small ``fit`` (with validation), ``evaluate`` and ``predict``. ``process_s`` is the
    wall time of the whole process, interpreter start included.
    """
    cache = tempfile.mkdtemp(prefix="minicnn-bench-cache-")
    out = {}
    try:
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", STARTUP_COMMAND], capture_output=True, text=True,
                                  env=thread_env({"NUMBA_CACHE_DIR": cache}), check=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["process_s"] = time.perf_counter() - t0
            out[label] = result
            log(f"  {label} cache: import {result['import_s']:.2f} s, first step {result['first_step_s']:.2f} s, "
                f"small fit+evaluate+predict {result['fit_after_s']:.2f} s, whole process {result['process_s']:.2f} s")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------- accuracy run
def load_fashion_mnist():
    """``(x, y), (x_test, y_test)`` uint8 Fashion-MNIST, via minicnn.datasets or the raw IDX files."""
    try:
        from minicnn.datasets import fashion_mnist

        return fashion_mnist.load_data()
    except (ImportError, AttributeError):
        import gzip

        folder = Path("/usr/share/datasets/fashion-mnist")

        def idx(name):
            with gzip.open(folder / f"{name}.gz") as f:
                data = f.read()
            ndim = data[3]
            shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
            return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()

        return ((idx("train-images-idx3-ubyte"), idx("train-labels-idx1-ubyte")),
                (idx("t10k-images-idx3-ubyte"), idx("t10k-labels-idx1-ubyte")))


def run_accuracy(epochs=5, seed=0, log=print):
    """Fashion-MNIST, small CNN, batch 128, Adam 1e-3, ``epochs`` epochs: test accuracy of both.

    Both start from the same weights (minicnn's initialisation, copied into torch) and see the
    batches in the same order; torch's Adam gets Keras's epsilon (1e-7). Run one after the other.
    """
    libs = ["minicnn"] + (["torch"] if torch_available() else [])
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init.npz")
        for lib in libs:
            log(f"  {lib}: {epochs} epochs of Fashion-MNIST ...")
            proc = subprocess.run([sys.executable, "-m", "minicnn.bench_runs", "accuracy", lib, str(epochs), init, str(seed),
                                   str(THREADS)], capture_output=True, text=True, env=thread_env(), check=False)
            if proc.returncode:
                raise RuntimeError(f"accuracy run of {lib} failed:\n{proc.stderr[-2000:]}")
            out[lib] = json.loads(proc.stdout.strip().splitlines()[-1])
            log(f"    test accuracy {out[lib]['test_accuracy']:.4f}, "
                f"{np.median(out[lib]['epoch_s']):.1f} s per epoch")
    return out
