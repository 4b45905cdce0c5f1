"""When does the PyTorch engine pay? ``model.fit`` against ``fit_distributed`` with 1 and 2 processes.

The same model (the small CNN of ``minicnn train``), the same initial weights, data and order, one
epoch per case; the cases take turns, round after round, so that a busy machine slows them alike::

    python benchmarks/bench_distributed.py                  # 12,000 Fashion-MNIST images, batch 128, 2 rounds
    python benchmarks/bench_distributed.py --n 6000 --batch-size 32 --rounds 1

For each case: the training throughput (images per second, from the end of the first step to the end
of the epoch: steady state), the wall time of the whole call (process start-up included) and the test
accuracy after the epoch. Results are written to ``benchmarks/results/distributed.json``.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minicnn import bench, datasets, zoo  # noqa: E402
from minicnn.interop import fit_distributed  # noqa: E402
from minicnn.utils import set_random_seed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "distributed.json"
CASES = [
    ("minicnn fit", dict()),
    ("torch, 1 process, 1 thread", dict(nproc=1, threads=1)),
    ("torch, 1 process, 2 threads", dict(nproc=1, threads=2)),
    ("torch, 2 processes, 1 thread each", dict(nproc=2, threads=1)),
]


def load(n):
    try:
        (x, y), (xt, yt) = datasets.fashion_mnist.load_data()
        name = "Fashion-MNIST"
    except Exception:           # no real data here: the sample inside the package
        (x, y), (xt, yt) = datasets.fashion_mnist.load_data(sample=True)
        name = "the embedded Fashion-MNIST sample"
    return name, x[:n, ..., None], np.asarray(y[:n]), xt[..., None], np.asarray(yt)


def one_case(engine, x, y, xt, yt, batch_size, weights):
    set_random_seed(0)
    model = zoo.small_cnn()
    model.set_weights(weights)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    if engine:
        history = fit_distributed(model, x, y, batch_size=batch_size, epochs=1, verbose=0, **engine)
        wall = time.perf_counter() - start
        rate = history.engine["samples_per_second"]
    else:
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
        wall = time.perf_counter() - start
        rate = len(x) / wall
    accuracy = model.evaluate(xt, yt, batch_size=500, verbose=0)[1]
    return {"images_per_second": rate, "wall_seconds": wall, "test_accuracy": accuracy,
            "load_1min": [load_before, os.getloadavg()[0]]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12000, help="training images (default 12000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    name, x, y, xt, yt = load(args.n)
    info = bench.machine_info()
    print(f"{info['cpu']}, {info['cores']} cores; {info['versions']}")
    print(f"{len(x)} images of {name}, batch {args.batch_size}, one epoch per case, {args.rounds} round(s)")
    set_random_seed(0)
    weights = zoo.small_cnn().get_weights()
    runs = {label: [] for label, _ in CASES}
    for r in range(args.rounds):
        for label, engine in CASES:
            runs[label].append(one_case(engine, x, y, xt, yt, args.batch_size, weights))
            print(f"round {r + 1}  {label:<36} {runs[label][-1]}", flush=True)
    base = np.median([run["images_per_second"] for run in runs["minicnn fit"]])
    print("\n| engine | images/s (median) | vs minicnn fit | wall s (median, start-up included) | test accuracy |")
    print("|---|---:|---:|---:|---:|")
    for label, _ in CASES:
        rate = np.median([run["images_per_second"] for run in runs[label]])
        wall = np.median([run["wall_seconds"] for run in runs[label]])
        accs = ", ".join(f"{run['test_accuracy']:.4f}" for run in runs[label])
        print(f"| {label} | {rate:,.0f} | {rate / base:.2f}x | {wall:.1f} | {accs} |")
    out = {"machine": info, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "data": name,
           "n": len(x), "batch_size": args.batch_size, "runs": runs}
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
