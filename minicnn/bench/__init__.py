"""Speed benchmarks: minicnn's kernels and training steps against NumPy's GEMM ceiling and PyTorch.

``minicnn bench`` runs :func:`main` with ``quick=True`` (about a minute); the scripts
``benchmarks/bench_kernels.py`` and ``benchmarks/bench_training.py`` run the full versions behind
``benchmarks/RESULTS.md``. There is one implementation of the timing, in this package.

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

Where each part lives
---------------------
- :mod:`~minicnn.bench.processes`: the worker processes, their thread settings, interleaved rounds, medians.
- :mod:`~minicnn.bench.kernel_cases`: the kernels timed, and :func:`run_kernels`.
- :mod:`~minicnn.bench.training_cases`: the two models, :func:`run_training` and the fresh-process runs.
- :mod:`~minicnn.bench.worker`: a worker's command loop.
- :mod:`~minicnn.bench.report`: machine facts, Markdown tables, the JSON file, and :func:`main`.
"""

from .kernel_cases import conv_cases, kernel_cases, run_back_to_back, run_kernels
from .processes import (
    GLIBC_TUNABLES,
    SETTLE_S,
    THREADS,
    Worker,
    interleave,
    median_ms,
    peak_rss_mb,
    torch_available,
)
from .report import kernel_table, machine_info, main, save_json, training_table
from .training_cases import (
    MODELS,
    STARTUP_COMMAND,
    build_minicnn,
    build_torch,
    load_fashion_mnist,
    run_accuracy,
    run_startup,
    run_steady,
    run_training,
)

__all__ = [
    "GLIBC_TUNABLES", "MODELS", "SETTLE_S", "STARTUP_COMMAND", "THREADS", "Worker",
    "build_minicnn", "build_torch", "conv_cases", "interleave", "kernel_cases", "kernel_table",
    "load_fashion_mnist", "machine_info", "main", "median_ms", "peak_rss_mb", "run_accuracy",
    "run_back_to_back", "run_kernels", "run_startup", "run_steady", "run_training", "save_json",
    "torch_available", "training_table",
]
