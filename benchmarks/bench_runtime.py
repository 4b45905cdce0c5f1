"""Does the Numba backend's machinery pay? Training steps with and without the lanes and the buffer pool.

The lanes (``minicnn/kernels/numba/_threads.py``) and the buffer pool (``_buffers.py``) are code a
learner has to read past, so they stay only where a measurement shows they pay. Each variant of
the backend trains a model in a fresh process of its own, steps back to back on one random batch
(as ``fit`` runs them), after untimed warm-up steps; the variants take turns, round after round,
and the median step of each is reported:

- ``default``: the backend as shipped;
- ``no-pool``: every array the kernels ask the pool for is a fresh ``np.empty`` instead;
- ``no-lanes``: every kernel computes its parts one after the other on the calling thread, and
  BLAS keeps its own threads (what the backend would be without the lanes);
- ``one-core``: one lane and one BLAS thread (what one core does).

The models: the small Fashion-MNIST CNN and the blog's 224x224x3 model of ``minicnn.bench``, and
a deeper CNN with 'same' padding and BatchNormalization (the kind ``bench_deep_cnn.py`` trains)::

    python benchmarks/bench_runtime.py             # 5 rounds, about 5 minutes
    python benchmarks/bench_runtime.py --quick     # the small CNN at batch 32 only
    python benchmarks/bench_runtime.py --dense     # the Dense split on the lanes against one BLAS call

``--dense``: the Dense kernels (batch 32, 128 units) split along D on the lanes, against one NumPy
product on BLAS's own threads, each variant in processes of its own (after a product on several
BLAS threads, OpenBLAS's idle threads spin and would slow the lanes of the same process).

Results: ``benchmarks/results/runtime.json`` (machine, threads, load average, every median).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from minicnn import bench  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "runtime.json"
VARIANTS = ("default", "no-pool", "no-lanes", "one-core")
# (model, batch, timed steps): about a second or two of steps each
CONFIGS = (("small", 32, 300), ("small", 128, 100), ("deep", 128, 20), ("blog", 32, 12))
WARMUP_STEPS = 5


def build(model):
    """A compiled minicnn model: ``minicnn.bench``'s small or blog model, or the deeper BN model."""
    if model != "deep":
        return bench.build_minicnn(model), bench.MODELS[model]["input_shape"]
    from minicnn.layers import Activation, BatchNormalization, Conv2D, Dense, Flatten, Input, MaxPooling2D
    from minicnn.models import Sequential

    layers = [Input(shape=(28, 28, 1))]
    for filters in (32, 64):
        for _ in range(2):
            layers += [Conv2D(filters, 3, padding="same", use_bias=False), BatchNormalization(), Activation("relu")]
        layers.append(MaxPooling2D(2))
    net = Sequential([*layers, Flatten(), Dense(10, activation="softmax")])
    net.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return net, (28, 28, 1)


def apply_variant(variant):
    """Change the backend of this process as ``variant`` says (see the module docstring)."""
    from minicnn.kernels import numba as backend
    from minicnn.kernels.numba import _buffers, _threads

    if variant == "no-pool":
        _buffers.POOL.empty = lambda tag, shape, dtype: np.empty(tuple(int(n) for n in shape), dtype)
    elif variant == "no-lanes":
        _threads.LANES.run = lambda part, parts, work, blas=False: [part(k) for k in range(parts)]
    elif variant == "one-core":
        from threadpoolctl import threadpool_limits

        backend.set_num_threads(1)
        threadpool_limits(1)
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def child(variant, model, batch, steps):
    """Seconds of each of ``steps`` training steps (printed as JSON), in this fresh process."""
    apply_variant(variant)
    net, shape = build(model)
    rng = np.random.default_rng(0)
    x = rng.random((batch, *shape), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    for _ in range(WARMUP_STEPS):
        net.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        net.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    print(json.dumps(times))


DENSE_INPUTS = (1600, 12544, 100352, 394272)


def dense_child(variant):
    """Median ms of Dense forward and backward (batch 32, 128 units) per D, printed as JSON."""
    from minicnn.kernels import numba as backend

    rng = np.random.default_rng(0)
    out = {}
    for D in DENSE_INPUTS:
        x, w = rng.random((32, D), dtype=np.float32), rng.random((D, 128), dtype=np.float32)
        dy = rng.random((32, 128), dtype=np.float32)
        medians = []
        for call in _dense_calls(variant, backend, x, w, dy):
            for _ in range(5):
                call()
            times = []
            for _ in range(max(8, int(3e7 / (D * 128)))):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            medians.append(bench.median_ms(times))
        out[str(D)] = medians
    print(json.dumps(out))


def _dense_calls(variant, backend, x, w, dy):
    """The forward and the backward call of ``variant``: the lanes' kernels, or one product each on BLAS's threads."""
    if variant == "lanes":
        return lambda: backend.dense_forward(x, w, None), lambda: backend.dense_backward(dy, x, w)
    return lambda: x @ w, lambda: (x.T @ dy, dy @ w.T)


def run_dense(rounds, log=print):
    """``{variant: [{D: [forward ms, backward ms]}, ...]}``, one process per variant and round."""
    env = bench.processes.thread_env()   # the same threads for every variant; this checkout first on the path
    out = {"lanes": [], "one-call": []}
    for r in range(rounds):
        for variant in (("lanes", "one-call") if r % 2 == 0 else ("one-call", "lanes")):
            proc = subprocess.run([sys.executable, __file__, "--dense-child", variant], env=env,
                                  capture_output=True, text=True, check=True)
            out[variant].append(json.loads(proc.stdout.splitlines()[-1]))
        log(f"dense round {r + 1}/{rounds} done")
    return out


def dense_table(dense):
    """Markdown: forward and backward ms (median of the processes' medians) per D, both variants."""
    lines = ["| D | lanes forward ms | lanes backward ms | one call forward ms | one call backward ms |",
             "|---:|---:|---:|---:|---:|"]
    for D in dense["lanes"][0]:
        cells = [f"{np.median([p[D][i] for p in dense[v]]):.3f}" for v in ("lanes", "one-call") for i in (0, 1)]
        lines.append(f"| {int(D):,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(configs, rounds, log=print):
    """Median step (ms) of every variant for every config, the variants taking turns each round."""
    env = bench.processes.thread_env()   # the same threads for every variant; this checkout first on the path
    rows = []
    for model, batch, steps in configs:
        times = {v: [] for v in VARIANTS}
        load = [bench.processes.loadavg()]
        for r in range(rounds):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]  # each variant goes first once
            for variant in order:
                out = subprocess.run([sys.executable, __file__, "--child", variant, model, str(batch), str(steps)],
                                     env=env, capture_output=True, text=True, check=True).stdout
                times[variant] += json.loads(out.splitlines()[-1])
            load.append(bench.processes.loadavg())
        row = {"model": model, "batch": batch, "steps": steps, "rounds": rounds, "load": load,
               "median_ms": {v: bench.median_ms(t) for v, t in times.items()}}
        log(f"{model} batch {batch}: " + ", ".join(f"{v} {ms:.2f} ms" for v, ms in row["median_ms"].items())
            + f" (load {min(load):.2f}-{max(load):.2f})")
        rows.append(row)
    return rows


def table(rows):
    """Markdown: each variant's median step and its ratio to the default."""
    head = "| model | batch | " + " | ".join(f"{v} ms" for v in VARIANTS) + " | " + \
        " | ".join(f"{v} / default" for v in VARIANTS[1:]) + " |"
    lines = [head, "|" + "---|" * 2 + "---:|" * (2 * len(VARIANTS) - 1)]
    for row in rows:
        ms = row["median_ms"]
        lines.append(f"| {row['model']} | {row['batch']} | " + " | ".join(f"{ms[v]:.2f}" for v in VARIANTS) + " | "
                     + " | ".join(f"{ms[v] / ms['default']:.2f}x" for v in VARIANTS[1:]) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small CNN at batch 32 only, 3 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5, quick 3)")
    parser.add_argument("--out", default=str(RESULTS), help=f"JSON file to write (default {RESULTS})")
    parser.add_argument("--dense", action="store_true", help="only the Dense split against one BLAS call, 3 rounds")
    parser.add_argument("--child", nargs=4, metavar=("VARIANT", "MODEL", "BATCH", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--dense-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, model, batch, steps = args.child
        return child(variant, model, int(batch), int(steps))
    if args.dense_child:
        return dense_child(args.dense_child)
    if args.dense:
        dense = run_dense(args.rounds or 3)
        print(dense_table(dense))
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        bench.save_json(args.out, {"dense": dense, "dense_date": stamp})
        print(f"\nwritten to {args.out}")
        return 0
    info = bench.machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, {bench.THREADS} threads; {info['versions']}")
    rows = run(CONFIGS[:1] if args.quick else CONFIGS, args.rounds or (3 if args.quick else 5))
    print(table(rows))
    command = "python benchmarks/bench_runtime.py " + " ".join(argv if argv is not None else sys.argv[1:])
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    bench.save_json(args.out, {"machine": info, "date": stamp, "command": command.strip(), "runtime": rows})
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
