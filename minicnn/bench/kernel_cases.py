"""The kernel cases: what a worker sets up and calls for each kernel, and the parent's timing runs."""

import importlib

import numpy as np

from .processes import THREADS, Worker, interleave, loadavg, median_ms, torch_available


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
def nchw(a):
    """NHWC (minicnn) to contiguous NCHW (PyTorch)."""
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


class KernelRunner:
    """One library's kernels (``reference``, ``numba``, ``torch`` or ``numpy`` for the GEMM ceiling)."""

    def __init__(self, lib, package="minicnn"):
        self.lib = lib
        self.calls = {}
        if lib == "torch":
            import torch

            torch.set_num_threads(THREADS)
            self.torch = torch
        elif lib in ("reference", "numba"):   # package: as in training_cases.build_minicnn
            self.k = importlib.import_module(f"{package}.kernels").backend_module(lib)

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
                xt, wt, bt, dyt = t.from_numpy(nchw(x)), t.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))), t.from_numpy(b), t.from_numpy(nchw(dy))
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
                xt = t.from_numpy(nchw(x))
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


# =============================================================================== parent side
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
    results = {"gemm_ceiling_gflops": ceiling, "cases": [], "threads": THREADS, "loadavg_1min": loadavg()}
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
