"""The timing machinery: worker processes, their thread settings, interleaved rounds, medians.

The parent starts one :class:`Worker` per library (``python -m minicnn.bench --worker``, whose
command loop is :mod:`minicnn.bench.worker`) and times them in turn with :func:`interleave`.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: threads of every library's pool; ``MINICNN_BENCH_THREADS`` changes it (workers inherit it)
THREADS = int(os.environ.get("MINICNN_BENCH_THREADS", "2"))
#: glibc settings under which big blocks stay with the process instead of going back to the system
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824"
MARK = "@@bench@@ "  # prefix of the worker's answers on stdout (anything else is ignored)


def thread_env(extra=None):
    """The environment of a worker: the same thread count for every library's pool."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "MINICNN_BENCH_THREADS"):
        env[var] = str(THREADS)
    root = str(Path(__file__).resolve().parents[2])   # the folder that holds minicnn/
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
    env.update(extra or {})
    return env


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


class Worker:
    """A ``python -m minicnn.bench --worker`` process and its command pipe."""

    def __init__(self, label, env=None):
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "minicnn.bench", "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=thread_env(env), bufsize=1,
        )

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(MARK):
                reply = json.loads(line[len(MARK):])
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


def loadavg():
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
