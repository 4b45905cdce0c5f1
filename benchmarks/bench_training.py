"""Training benchmark: minicnn against PyTorch on the same models, data, threads and machine.

For the small Fashion-MNIST CNN (batch 32 and 128) and the blog's 224x224x3 model (batch 32):
images per second of a training step (forward, backward, Adam) and of inference, peak memory
(each case in a process of its own), the blog model's step again with glibc's malloc thresholds
raised for both libraries, the small CNN's step in steady state (each library alone, steps back
to back on Fashion-MNIST minibatches), the start-up cost (``import minicnn`` and the first step with a cold
and a warm Numba cache), and a 5-epoch Fashion-MNIST run of both libraries from the same initial
weights for the test accuracy::

    python benchmarks/bench_training.py                     # about 15 minutes
    python benchmarks/bench_training.py --skip-accuracy     # without the Fashion-MNIST run
    python benchmarks/bench_training.py --quick             # small CNN only, few rounds

The results are added to ``benchmarks/results/bench.json``; ``benchmarks/plot_results.py`` draws
them. See ``minicnn.bench`` for how the timing is done.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minicnn import bench  # noqa: E402  (MINICNN_BENCH_THREADS=1 for a one-thread run)

RESULTS = Path(__file__).resolve().parent / "results" / "bench.json"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small CNN at batch 32 only, 3 rounds, no accuracy run")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 7)")
    parser.add_argument("--skip-accuracy", action="store_true", help="skip the 5-epoch Fashion-MNIST run (minutes)")
    parser.add_argument("--skip-blog", action="store_true", help="skip the 224x224x3 model")
    parser.add_argument("--skip-startup", action="store_true", help="skip the cold/warm start-up measurement")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the accuracy run (default 5)")
    parser.add_argument("--out", default=str(RESULTS), help=f"JSON file to update (default {RESULTS})")
    args = parser.parse_args(argv)
    command = ("python benchmarks/bench_training.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    info = bench.machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, {bench.THREADS} threads per library; {info['versions']}")
    data = {"machine": info, "training_command": command}

    configs = [("small", 32)] if args.quick else [("small", 32), ("small", 128)] + ([] if args.skip_blog else [("blog", 32)])
    rows = bench.run_training(configs, rounds=args.rounds or (3 if args.quick else 7), glibc=not args.quick)
    print(bench.training_table(rows))
    data["training"] = rows
    bench.save_json(args.out, data)

    if not args.quick:
        print("\nsteady state: the small CNN, each library alone, steps back to back on Fashion-MNIST minibatches")
        data["steady"] = bench.run_steady()
        bench.save_json(args.out, data)

    if not (args.quick or args.skip_startup):
        print("\nstart-up: import minicnn, build the small CNN, first training step, then a small fit")
        data["startup"] = bench.run_startup()
        bench.save_json(args.out, data)

    if not (args.quick or args.skip_accuracy):
        print(f"\naccuracy: {args.epochs} epochs of Fashion-MNIST, batch 128, Adam 1e-3, same initial weights")
        data["accuracy"] = bench.run_accuracy(epochs=args.epochs)
        data["accuracy"]["epochs"] = args.epochs
        bench.save_json(args.out, data)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
