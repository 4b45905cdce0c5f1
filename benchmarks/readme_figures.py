"""Regenerate the figures README.md quotes for ``minicnn train``, with date and machine.

Each run is the command a learner types, in a fresh process, and its own printed line
(``Test accuracy: 0.8640  (1000 images, trained in 6s)``) is what is recorded:

- ``first_run``: ``minicnn train`` with an empty Numba cache, so its kernels compile first
  (its wall time minus the next run's is the compile cost too, but load on a shared machine blurs it);
- ``sample``: the same command again, the compiled kernels now read from the cache;
- ``full``: ``minicnn train --dataset fashion-mnist --epochs 10`` (needs the real data set; skipped
  with a note when it is not found).

``compile`` times the first training step, prediction and evaluation of the small CNN in a fresh
process, once with an empty Numba cache (the kernels compile) and once with the cache filled: the
difference is the one-time compile cost a learner waits for on a first run. On a shared machine the
wall times grow with the load (recorded before and after each run); ``cpu_seconds`` (user + system
time of the whole process, all threads) grows much less. ``minicnn train`` seeds
everything with ``--seed 0`` by default, so the accuracies repeat from run to run on one machine.

Usage::

    python benchmarks/readme_figures.py [--skip-full] [--out benchmarks/results/readme_figures.json]

The run is appended to ``{"runs": [...]}`` in the output file; ``benchmarks/RESULTS.md`` and the
README quote them.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"Test accuracy: ([0-9.]+)\s+\((\d+) images, trained in (\d+)s\)")


def machine():
    """CPU model, core count, load average and library versions: what the timings depend on."""
    import numba
    import numpy

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": numpy.__version__, "numba": numba.__version__,
            "numba_threads": int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count()))}


FIRST_STEP = """
import time, numpy as np
from minicnn import zoo
model = zoo.MODELS["small"]((28, 28, 1), 10)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
x, y = np.zeros((32, 28, 28, 1), np.uint8), np.arange(32) % 10
start = time.perf_counter()
model.train_on_batch(x, y); model.predict(x, verbose=0); model.evaluate(x, y, verbose=0)
print(time.perf_counter() - start)
"""


def first_step_seconds(cache_dir):
    """Seconds of the small CNN's first train step, predict and evaluate in a fresh process."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", FIRST_STEP], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return round(float(out.stdout.split()[-1]), 2)


def run_train(args, cache_dir, out_dir):
    """Run ``python -m minicnn train ARGS`` in a fresh process; its accuracy, training and wall seconds."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, MPLBACKEND="Agg", PYTHONPATH=ROOT)
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "minicnn", "train", *args, "--out", out_dir],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    match = LINE.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"minicnn train {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return {"command": " ".join(["minicnn train", *args]), "test_accuracy": float(match.group(1)),
            "test_images": int(match.group(2)), "train_seconds": int(match.group(3)), "wall_seconds": round(wall, 1),
            "cpu_seconds": round(cpu, 1),
            "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2)}


def table(path):
    """The runs recorded in ``path`` as the Markdown table of ``benchmarks/RESULTS.md``."""
    with open(path) as f:
        runs = json.load(f)["runs"]
    lines = ["| date (UTC) | run | command | test accuracy | trained in | wall | CPU (all threads) | load before / after |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for run in runs:
        for key, label in (("first_run", "first (empty cache)"), ("sample", "again (cached)"), ("full", "full data set")):
            r = run.get(key)
            if r:
                cpu = f"{r['cpu_seconds']:.0f} s" if "cpu_seconds" in r else "-"
                lines.append(f"| {run['date']} | {label} | `{r['command']}` | {r['test_accuracy']:.2%} | {r['train_seconds']} s "
                             f"| {r['wall_seconds']:.0f} s | {cpu} | {r['load_average_before']} / {r['load_average_after']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-full", action="store_true", help="only the embedded-sample runs")
    parser.add_argument("--table", action="store_true", help="print the recorded runs as a Markdown table, run nothing")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "readme_figures.json"))
    opts = parser.parse_args(argv)
    if opts.table:
        print(table(opts.out))
        return 0

    sys.path.insert(0, ROOT)
    from minicnn import datasets

    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        cache, out = os.path.join(tmp, "numba-cache"), os.path.join(tmp, "run")
        cold = first_step_seconds(os.path.join(tmp, "step-cache"))
        warm = first_step_seconds(os.path.join(tmp, "step-cache"))
        result["compile"] = {"first_step_empty_cache_seconds": cold, "first_step_filled_cache_seconds": warm,
                             "compile_seconds": round(cold - warm, 1)}
        print("compile:", result["compile"], flush=True)
        result["first_run"] = run_train([], cache, out)
        print("first run (compiling):", result["first_run"], flush=True)
        result["sample"] = run_train([], cache, out)
        print("sample (cached kernels):", result["sample"], flush=True)
        if opts.skip_full or datasets.find_all().get("fashion-mnist") is None:
            result["full"] = None
            print("full Fashion-MNIST run skipped", flush=True)
        else:
            result["full"] = run_train(["--dataset", "fashion-mnist", "--epochs", "10"], cache, out)
            print("full Fashion-MNIST:", result["full"], flush=True)
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    runs = []
    if os.path.exists(opts.out):   # keep earlier runs: on a shared machine one run is not the whole story
        with open(opts.out) as f:
            runs = json.load(f)["runs"]
    with open(opts.out, "w") as f:
        json.dump({"runs": runs + [result]}, f, indent=2)
        f.write("\n")
    print(f"added a run to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
