"""Speed benchmarks: minicnn's kernels and training steps against NumPy's GEMM ceiling and PyTorch.

``minicnn bench`` runs :func:`main` with ``quick=True`` (about a minute); the scripts
``benchmarks/bench_kernels.py`` and ``benchmarks/bench_training.py`` run the full versions behind
``benchmarks/RESULTS.md``. There is one implementation of the timing, here.

How it measures, and why
------------------------
- Each library runs in its own worker process (``python -m minicnn.bench --worker``): PyTorch and
  Numba each bring an OpenMP runtime, and one started first changes how the other's threads wait
  (4 ms stalls were measured with torch imported before Numba).
- Every worker uses the same number of threads (``THREADS``): Numba's, OpenBLAS's and torch's
  intra-op pool. Each library otherwise keeps its own defaults (minicnn's kernels use no OpenMP;
  torch's workers get nothing extra).
- The parent interleaves: round after round, each worker times a few repetitions of its case in
  turn, so that a noisy neighbour slows every library alike. We report medians over all
  repetitions of all rounds. Before each turn the parent waits ``SETTLE_S``: the idle threads
  of the worker that ran before (OpenBLAS's, OpenMP's) spin for a while after their last call
  and would otherwise take a core from the next one.
- Peak memory is a worker's peak resident size (``VmHWM``; ``ru_maxrss`` where there is no
  ``/proc``; NaN on Windows, which has neither), and each training case has a worker of its own.
- Inputs are random numbers of the right shape, the same for both libraries (same seed).
- The steady-state, startup and accuracy runs each need a fresh process of their own: they are
  ``minicnn.bench_runs``, started by ``run_steady``, ``run_startup`` and ``run_accuracy``.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: threads of every library's pool; ``MINICNN_BENCH_THREADS`` changes it (workers inherit it)
THREADS = int(os.environ.get("MINICNN_BENCH_THREADS", "2"))
#: glibc settings under which big blocks stay with the process instead of going back to the system
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824"
_MARK = "@@bench@@ "  # prefix of the worker's answers on stdout (anything else is ignored)


# =============================================================================== cases
# The two models of the issue: the small Fashion-MNIST CNN and the blog's 224x224 model.
MODELS = {
    "small": dict(input_shape=(28, 28, 1), convs=(32, 64), dense=128, classes=10),
    "blog": dict(input_shape=(224, 224, 3), convs=(32,), dense=128, classes=10),
}


def conv_cases(quick=False):
    """``(name, N, H, W, C, F)`` of the 3x3 'valid' convolutions of the two models, batch 32."""
    cases = [("28x28x1->32", 32, 28, 28, 1, 32), ("13x13x32->64", 32, 13, 13, 32, 64)]
    if not quick:
        cases.append(("224x224x3->32", 32, 224, 224, 3, 32))
    return cases


def kernel_cases(quick=False):
    """Every kernel case: dicts with ``name``, ``op``, shapes and ``flops`` (0 for pooling)."""
    cases = []
    for name, N, H, W, C, F in conv_cases(quick):
        flops = 2 * N * (H - 2) * (W - 2) * F * 9 * C
        for op in ("conv_forward", "conv_backward_input", "conv_backward_weights"):
            cases.append(dict(name=f"{op} {name}", op=op, shape=(N, H, W, C), filters=F, flops=flops))
    pool = (32, 26, 26, 32)
    cases.append(dict(name="maxpool_forward 26x26x32", op="maxpool_forward", shape=pool, flops=0))
    cases.append(dict(name="maxpool_backward 26x26x32", op="maxpool_backward", shape=pool, flops=0))
    for name, (M, K, N) in (("1600->128", (32, 1600, 128)), ("394272->128", (32, 394272, 128))):
        if quick and K > 10000:
            continue
        for op in ("dense_forward", "dense_backward"):   # backward: dW = x.T @ dy and dx = dy @ W.T
            cases.append(dict(name=f"{op} {name}", op=op, shape=(M, K, N), flops=2 * M * K * N * (1 if op == "dense_forward" else 2)))
    return cases


# =============================================================================== worker side
def _thread_env(extra=None):
    """The environment of a worker: the same thread count for every library's pool."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "MINICNN_BENCH_THREADS"):
        env[var] = str(THREADS)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
    env.update(extra or {})
    return env


def _nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


class _KernelRunner:
    """One library's kernels (``reference``, ``numba``, ``torch`` or ``numpy`` for the GEMM ceiling)."""

    def __init__(self, lib):
        self.lib = lib
        self.calls = {}
        if lib == "torch":
            import torch

            torch.set_num_threads(THREADS)
            self.torch = torch
        elif lib in ("reference", "numba"):
            from minicnn import kernels

            self.k = kernels.backend_module(lib)

    def setup(self, case):
        rng = np.random.default_rng(0)
        op, name = case["op"], case["name"]
        if op == "gemm":
            n = case["n"]
            a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
            self.calls[name] = lambda: a @ b
            return
        if op.startswith("conv"):
            N, H, W, C = case["shape"]
            F = case["filters"]
            x = rng.random((N, H, W, C), dtype=np.float32)
            w = (rng.standard_normal((3, 3, C, F)) * 0.1).astype(np.float32)
            b = np.zeros(F, np.float32)
            dy = rng.standard_normal((N, H - 2, W - 2, F)).astype(np.float32)
            if self.lib == "torch":
                t = self.torch
                xt, wt, bt, dyt = t.from_numpy(_nchw(x)), t.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))), t.from_numpy(b), t.from_numpy(_nchw(dy))
                conv_bwd = t.ops.aten.convolution_backward
                args = ([F], [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
                self.calls[name] = {
                    "conv_forward": lambda: t.nn.functional.conv2d(xt, wt, bt),
                    "conv_backward_input": lambda: conv_bwd(dyt, xt, wt, *args, [True, False, False]),
                    "conv_backward_weights": lambda: conv_bwd(dyt, xt, wt, *args, [False, True, True]),
                }[op]
            else:
                k = self.k
                self.calls[name] = {
                    "conv_forward": lambda: k.conv2d_forward(x, w, b),
                    "conv_backward_input": lambda: k.conv2d_backward_input(dy, w, x.shape),
                    "conv_backward_weights": lambda: k.conv2d_backward_weights(x, dy, (3, 3)),
                }[op]
            return
        if op.startswith("maxpool"):
            x = rng.random(case["shape"], dtype=np.float32)
            if self.lib == "torch":
                t = self.torch
                xt = t.from_numpy(_nchw(x))
                yt, idx = t.nn.functional.max_pool2d_with_indices(xt, 2)
                dyt = t.ones_like(yt)
                self.calls[name] = {
                    "maxpool_forward": lambda: t.nn.functional.max_pool2d_with_indices(xt, 2),
                    "maxpool_backward": lambda: t.ops.aten.max_pool2d_with_indices_backward(dyt, xt, [2, 2], [2, 2], [0, 0], [1, 1], False, idx),
                }[op]
            else:
                k = self.k
                y, argmax = k.maxpool2d_forward(x, (2, 2), (2, 2))
                dy = np.ones_like(y)
                self.calls[name] = {
                    "maxpool_forward": lambda: k.maxpool2d_forward(x, (2, 2), (2, 2)),
                    "maxpool_backward": lambda: k.maxpool2d_backward(dy, argmax, x.shape, (2, 2), (2, 2)),
                }[op]
            return
        if op.startswith("dense"):   # backward: dw = x.T @ dy and dx = dy @ w.T
            M, K, N = case["shape"]
            x = rng.random((M, K), dtype=np.float32)
            w = rng.random((K, N), dtype=np.float32)
            b = np.zeros(N, np.float32)
            dy = rng.random((M, N), dtype=np.float32)
            if self.lib == "torch":
                t = self.torch
                x, w, b, dy = t.from_numpy(x), t.from_numpy(w), t.from_numpy(b), t.from_numpy(dy)
                self.calls[name] = {
                    "dense_forward": lambda: t.addmm(b, x, w),
                    "dense_backward": lambda: (x.T @ dy, dy @ w.T),
                }[op]
            else:
                k = self.k
                self.calls[name] = {
                    "dense_forward": lambda: k.dense_forward(x, w, b),
                    "dense_backward": lambda: k.dense_backward(dy, x, w),
                }[op]
            return
        raise ValueError(f"unknown kernel op {op!r}")


class _ModelRunner:
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
            xt, yt = torch.from_numpy(_nchw(x)), torch.from_numpy(y)
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


def build_minicnn(model, optimizer=None):
    """The model in minicnn, compiled with Adam(1e-3) and sparse categorical cross-entropy."""
    from minicnn.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D
    from minicnn.models import Sequential
    from minicnn.optimizers import Adam

    spec = MODELS[model]
    layers = [Input(shape=spec["input_shape"])]
    for filters in spec["convs"]:
        layers += [Conv2D(filters, 3, activation="relu"), MaxPooling2D(2)]
    layers += [Flatten(), Dense(spec["dense"], activation="relu"), Dense(spec["classes"], activation="softmax")]
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


def peak_rss_mb():
    """This process's peak resident memory in MB: ``VmHWM``, else ``ru_maxrss``, else NaN (Windows).

    ``ru_maxrss`` survives ``exec``: a worker started by a parent that imported torch would
    report at least the parent's size. ``VmHWM`` belongs to the process's own address space.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource  # POSIX only
    except ImportError:   # Windows: no peak size to read without another dependency
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker():
    """Answer the parent's JSON commands on stdin, one line each: setup, time, rss, quit."""
    runner = None
    out = sys.stdout
    for line in sys.stdin:
        cmd = json.loads(line)
        reply = {}
        try:
            if cmd["cmd"] == "kernels":
                runner = _KernelRunner(cmd["lib"])
                for case in cmd["cases"]:
                    runner.setup(case)
                    runner.calls[case["name"]]()   # compile / warm up
            elif cmd["cmd"] == "model":
                t0 = time.perf_counter()
                runner = _ModelRunner(cmd["lib"], cmd["model"], cmd["batch"], cmd["mode"])
                runner.call()
                reply["first_call_s"] = time.perf_counter() - t0
                for _ in range(cmd.get("warmup", 2)):
                    runner.call()
            elif cmd["cmd"] == "time":
                fn = runner.calls[cmd["case"]] if cmd.get("case") else runner.call
                times = []
                for _ in range(cmd["reps"]):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                reply["times"] = times
            elif cmd["cmd"] == "rss":
                reply["maxrss_mb"] = peak_rss_mb()
            elif cmd["cmd"] == "quit":
                break
        except Exception as err:   # reported to the parent, which says which case failed
            reply["error"] = f"{type(err).__name__}: {err}"
        out.write(_MARK + json.dumps(reply) + "\n")
        out.flush()


# =============================================================================== parent side
class Worker:
    """A ``python -m minicnn.bench --worker`` process and its command pipe."""

    def __init__(self, label, env=None):
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "minicnn.bench", "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=_thread_env(env), bufsize=1,
        )

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(_MARK):
                reply = json.loads(line[len(_MARK):])
                if "error" in reply:
                    raise RuntimeError(f"{self.label}: {reply['error']}")
                return reply
        raise RuntimeError(f"{self.label}: the worker died (exit code {self.proc.wait()})")

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


#: pause before each burst of calls: the previous worker's idle threads stop spinning meanwhile
#: (OpenBLAS's spin about 0.1 s after a call, OpenMP's a few ms) and leave the cores to the next
SETTLE_S = 0.2


def interleave(workers_and_cases, rounds, reps, log=None, settle=SETTLE_S):
    """Time ``(worker, case)`` pairs in turn, ``rounds`` times ``reps`` calls; returns lists of seconds.

    ``settle``: the pause before each turn (0.2 s when a worker uses multi-threaded OpenBLAS,
    whose idle threads spin 0.1 s; the training workers need only OpenMP's few ms).
    """
    times = {key: [] for key in workers_and_cases}
    for r in range(rounds):
        order = list(workers_and_cases) if r % 2 == 0 else list(reversed(list(workers_and_cases)))
        for key in order:
            worker, case = workers_and_cases[key]
            time.sleep(settle)
            times[key] += worker.ask(cmd="time", case=case, reps=reps)["times"]
        if log:
            log(f"  round {r + 1}/{rounds}")
    return times


def _loadavg():
    """The 1-minute load average (other processes competing for the cores), or None."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def median_ms(seconds):
    return float(np.median(seconds)) * 1e3


def torch_available():
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def run_kernels(quick=False, rounds=None, reps=None, log=print):
    """Median time and GFLOP/s of each kernel, per library, and the fp32 GEMM ceiling, interleaved."""
    rounds = rounds or (3 if quick else 7)
    cases = kernel_cases(quick)
    libs = ["reference", "numba"] + (["torch"] if torch_available() else [])
    workers = {}
    try:
        workers["numpy"] = Worker("numpy GEMM")
        gemm = dict(name="gemm 2048", op="gemm", n=2048, flops=2 * 2048**3)
        workers["numpy"].ask(cmd="kernels", lib="numpy", cases=[gemm])
        for lib in libs:
            log(f"starting the {lib} worker (compiling and warming up its kernels)")
            workers[lib] = Worker(lib)
            workers[lib].ask(cmd="kernels", lib=lib, cases=cases)
        pairs = {("numpy", gemm["name"]): (workers["numpy"], gemm["name"])}
        for case in cases:
            for lib in libs:
                pairs[(lib, case["name"])] = (workers[lib], case["name"])
        times = {}   # big cases get fewer calls per round
        small = {k: p for k, p in pairs.items() if not ("224" in k[1] or "394272" in k[1])}
        big = {k: p for k, p in pairs.items() if k not in small}
        log(f"timing {len(small)} small cases x {rounds} rounds")
        times.update(interleave(small, rounds, reps or (5 if quick else 10)))
        if big:
            log(f"timing {len(big)} big cases x {rounds} rounds")
            times.update(interleave(big, rounds, reps or 2))
    finally:
        for w in workers.values():
            w.close()
    ceiling = gemm["flops"] / (median_ms(times[("numpy", gemm["name"])]) * 1e-3) / 1e9
    results = {"gemm_ceiling_gflops": ceiling, "cases": [], "threads": THREADS, "loadavg_1min": _loadavg()}
    for case in cases:
        row = dict(name=case["name"], op=case["op"], flops=case["flops"])
        for lib in libs:
            if (lib, case["name"]) not in times:
                continue
            ms = median_ms(times[(lib, case["name"])])
            row[lib] = {"ms": ms, "gflops": case["flops"] / (ms * 1e-3) / 1e9 if case["flops"] else None}
        results["cases"].append(row)
    if not quick:
        log("timing the convolutions back to back, one library at a time")
        results["back_to_back"] = run_back_to_back([c for c in cases if c["op"].startswith("conv")], log=log)
    return results


def run_back_to_back(cases, reps=40, log=print):
    """Median ms of each case called ``reps`` times in a row after 20 untimed calls, one library
    (Numba, torch) at a time in its own worker, with nothing in between.

    The interleaved timing pauses before every turn; on the machine of RESULTS.md a core left
    idle that long came back slowly, so short kernels timed right after a pause ran on one core.
    Back to back is how a training loop calls them.
    """
    out = {}
    for lib in ["numba"] + (["torch"] if torch_available() else []):
        worker = Worker(f"{lib} back to back")
        try:
            worker.ask(cmd="kernels", lib=lib, cases=cases)
            for case in cases:
                n = 4 if "224" in case["name"] else reps
                worker.ask(cmd="time", case=case["name"], reps=min(n, 20))
                ms = median_ms(worker.ask(cmd="time", case=case["name"], reps=n)["times"])
                out.setdefault(case["name"], {})[lib] = {"ms": ms, "gflops": case["flops"] / (ms * 1e-3) / 1e9}
        finally:
            worker.close()
    return out


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
                       loadavg_1min=_loadavg())
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
                                      capture_output=True, text=True, env=_thread_env(), check=True)
                times[lib] += json.loads(proc.stdout.strip().splitlines()[-1])
        row = {"batch": bs, "steps": steps * repeats, "loadavg_1min": _loadavg()}
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
                                  env=_thread_env({"NUMBA_CACHE_DIR": cache}), check=True)
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
                                   str(THREADS)], capture_output=True, text=True, env=_thread_env(), check=False)
            if proc.returncode:
                raise RuntimeError(f"accuracy run of {lib} failed:\n{proc.stderr[-2000:]}")
            out[lib] = json.loads(proc.stdout.strip().splitlines()[-1])
            log(f"    test accuracy {out[lib]['test_accuracy']:.4f}, "
                f"{np.median(out[lib]['epoch_s']):.1f} s per epoch")
    return out


# =============================================================================== reports
def machine_info():
    """CPU, core count, library versions and the thread settings used."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from importlib import metadata

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("numba", "llvmlite", "torch", "scipy"):
        try:
            versions[name] = metadata.version(name)   # without importing it into this process
        except metadata.PackageNotFoundError:
            pass
    from . import __version__

    versions["minicnn"] = __version__
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        versions["blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "versions": versions,
        "threads": THREADS, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "loadavg_1min": _loadavg(),
        "env": {k: v for k, v in _thread_env().items() if k.endswith("_THREADS") or k in ("OMP_WAIT_POLICY", "GLIBC_TUNABLES")},
    }


def kernel_table(results):
    """Markdown table of a ``run_kernels`` result."""
    libs = [lib for lib in ("reference", "numba", "torch") if any(lib in row for row in results["cases"])]
    ceiling = results["gemm_ceiling_gflops"]
    lines = [f"fp32 GEMM ceiling (NumPy, 2048^3, {THREADS} threads): {ceiling:.0f} GFLOP/s", "",
             "| kernel | " + " | ".join(f"{lib} ms" for lib in libs) + " | numba GFLOP/s | % of ceiling | torch / numba |",
             "|---|" + "---:|" * (len(libs) + 3)]
    for row in results["cases"]:
        cells = [f"{row[lib]['ms']:.3f}" if lib in row else "" for lib in libs]
        gf = row["numba"]["gflops"]
        pct = f"{100 * gf / ceiling:.0f}%" if gf else ""
        ratio = f"{row['torch']['ms'] / row['numba']['ms']:.2f}x" if "torch" in row else ""
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {gf:.0f} | {pct} | {ratio} |" if gf else
                     f"| {row['name']} | " + " | ".join(cells) + f" |  |  | {ratio} |")
    if results.get("back_to_back"):
        lines += ["", "Back to back (each case called repeatedly, one library at a time):", "",
                  "| kernel | numba ms | numba GFLOP/s | % of ceiling | torch ms | torch / numba |", "|---|---:|---:|---:|---:|---:|"]
        for name, r in results["back_to_back"].items():
            n, t = r["numba"], r.get("torch")
            lines.append(f"| {name} | {n['ms']:.3f} | {n['gflops']:.0f} | {100 * n['gflops'] / ceiling:.0f}% | "
                         + (f"{t['ms']:.3f} | {t['ms'] / n['ms']:.2f}x |" if t else " |  |"))
    return "\n".join(lines)


def training_table(rows):
    """Markdown table of a ``run_training`` result."""
    lines = ["| model | batch | mode | minicnn ms | minicnn img/s | torch ms | torch img/s | minicnn/torch speed | minicnn peak MB | torch peak MB |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mode = r["mode"] + (" (glibc tunables)" if r["glibc_tunables"] else "")
        m, t = r["minicnn"], r.get("torch")
        tcells = f"{t['ms']:.2f} | {t['images_per_s']:.0f} | {r['speedup']:.2f}x" if t else " |  | "
        lines.append(f"| {r['model']} | {r['batch']} | {mode} | {m['ms']:.2f} | {m['images_per_s']:.0f} | {tcells} | "
                     f"{m['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} |" if t else
                     f"| {r['model']} | {r['batch']} | {mode} | {m['ms']:.2f} | {m['images_per_s']:.0f} | {tcells} | {m['peak_rss_mb']:.0f} |  |")
    return "\n".join(lines)


def save_json(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(data)
    path.write_text(json.dumps(old, indent=1))
    return path


def main(quick=True):
    """The quick benchmark of ``minicnn bench``: kernels at the small CNN's shapes, one training config.

    Prints two tables (kernels; training and inference of the small CNN at batch 32, minicnn vs
    PyTorch when it is installed) and returns 0. The full runs are in ``benchmarks/``.
    """
    info = machine_info()
    print(f"minicnn {info['versions']['minicnn']} on {info['cpu']} ({info['cores']} cores), {THREADS} threads per library")
    kernels = run_kernels(quick=quick, log=lambda s: None)
    print(kernel_table(kernels), end="\n\n")
    training = run_training([("small", 32)], rounds=3 if quick else 7, log=lambda s: None)
    print(training_table(training))
    if not torch_available():
        print("\n(PyTorch is not installed: no comparison column.)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker()
    else:
        sys.exit(main(quick=True))
