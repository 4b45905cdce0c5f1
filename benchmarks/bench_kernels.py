"""Kernel benchmark: minicnn's reference and Numba kernels against PyTorch and NumPy's GEMM ceiling.

Convolution forward, backward-input and backward-weights (3x3, 'valid', batch 32) at the shapes of
the small Fashion-MNIST CNN (28x28x1->32, 13x13x32->64) and of the blog's model (224x224x3->32),
max-pooling 2x2 on 26x26x32, and the two models' first Dense layers, float32, the same number of
threads for every library. Each library runs in its own process; the cases are timed in
interleaved rounds and the medians reported (see ``minicnn.bench``)::

    python benchmarks/bench_kernels.py                  # about 5 minutes
    python benchmarks/bench_kernels.py --quick          # the small shapes only

The results are added to ``benchmarks/results/bench.json`` (key ``kernels``);
``benchmarks/plot_results.py`` draws them.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minicnn import bench  # noqa: E402  (MINICNN_BENCH_THREADS=1 for a one-thread run)

RESULTS = Path(__file__).resolve().parent / "results" / "bench.json"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the small CNN's shapes")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7, quick 3)")
    parser.add_argument("--out", default=str(RESULTS), help=f"JSON file to update (default {RESULTS})")
    args = parser.parse_args(argv)
    info = bench.machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, {bench.THREADS} threads per library; {info['versions']}")
    results = bench.run_kernels(quick=args.quick, rounds=args.rounds)
    print(bench.kernel_table(results))
    command = "python benchmarks/bench_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = bench.save_json(args.out, {"machine": info, "kernels": results, "kernels_command": command.strip()})
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
