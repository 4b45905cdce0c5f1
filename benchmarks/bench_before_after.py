"""Before and after a change, back to back: two checkouts of minicnn timed in turn on one machine.

    git worktree add ../before <commit>          # the code before the change, with its own Numba cache
    python benchmarks/bench_before_after.py ../before --rounds 8 [--torch]

Each round starts one fresh process per checkout (and one for PyTorch with ``--torch``, whose
times divide both); the order rotates. A process times every kernel case of ``minicnn.bench``
back to back (median of up to 60 calls after 7 untimed ones) and then the training step of the
small CNN (batch 32 and 128) and the blog model (batch 32), steps back to back as ``fit`` runs
them. The medians of all rounds are printed; every process's figures go to the JSON file.
The child side uses only names both checkouts have (``minicnn.bench`` as a module or a package).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent.parent
STEPS = (("small", 32, 300), ("small", 128, 100), ("blog", 32, 10))


def child(lib):
    """Print the JSON of this checkout's (or PyTorch's) kernel and training-step medians, in ms."""
    from minicnn import bench

    try:
        from minicnn.bench.kernel_cases import KernelRunner
    except ImportError:   # before minicnn.bench was a package
        KernelRunner = bench._KernelRunner
    runner = KernelRunner(lib)
    out = {"kernels": {}, "steps": {}}
    for case in bench.kernel_cases(quick=False):
        runner.setup(case)
        call = runner.calls[case["name"]]
        t0 = time.perf_counter()
        call()
        first = time.perf_counter() - t0
        for _ in range(6):
            call()
        times = []
        for _ in range(int(min(60, max(6, 0.4 / max(first, 1e-5))))):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        out["kernels"][case["name"]] = float(np.median(times)) * 1e3
    for model, batch, steps in STEPS:
        out["steps"][f"{model} batch {batch}"] = float(np.median(_step_times(bench, lib, model, batch, steps))) * 1e3
    print(json.dumps(out))


def _step_times(bench, lib, model, batch, steps):
    """Seconds of ``steps`` training steps in a row, after 5 untimed ones, on one random batch."""
    spec = bench.MODELS[model]
    rng = np.random.default_rng(0)
    x = rng.random((batch, *spec["input_shape"]), dtype=np.float32)
    y = rng.integers(0, spec["classes"], batch)
    if lib == "torch":
        import torch

        torch.set_num_threads(bench.THREADS)
        net = bench.build_torch(torch, model)
        xt, yt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y)
        opt, loss_fn = torch.optim.Adam(net.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(net(xt), yt).backward()
            opt.step()
    else:
        net = bench.build_minicnn(model)

        def step():
            net.train_on_batch(x, y)
    for _ in range(5):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def run(before, rounds, torch, log=print):
    trees = {"before": Path(before).resolve(), "after": HERE}
    labels = ["before", "after"] + (["torch"] if torch else [])
    sys.path.insert(0, str(HERE))   # here, not at the top: a child runs this file in the other checkout
    from minicnn.bench.processes import thread_env

    env = thread_env()
    results, loads = {label: [] for label in labels}, []
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            tree = trees.get(label, HERE)
            cache = tree / ".numba_cache_before_after"   # one per checkout: their kernels differ
            child_env = {**env, "PYTHONPATH": str(tree), "NUMBA_CACHE_DIR": str(cache)}
            loads.append(os.getloadavg()[0])
            proc = subprocess.run([sys.executable, __file__, "--child", "numba" if label != "torch" else "torch"],
                                  env=child_env, cwd=tree, capture_output=True, text=True, check=True)
            results[label].append(json.loads(proc.stdout.splitlines()[-1]))
            log(f"round {r + 1}/{rounds}: {label} done, load {os.getloadavg()[0]:.2f}")
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": rounds, "loadavg_1min": loads,
            "results": results}


def table(data):
    """Markdown: medians over the rounds, before and after, and before / after (above 1: faster after)."""
    res = data["results"]
    torch = "torch" in res
    lines = ["| case | before ms | after ms | before / after |" + (" torch ms |" if torch else ""),
             "|---|---:|---:|---:|" + ("---:|" if torch else "")]
    for kind in ("steps", "kernels"):
        for key in res["after"][0][kind]:
            b, a = (float(np.median([r[kind][key] for r in res[label]])) for label in ("before", "after"))
            cells = f"| {kind[:-1]}: {key} | {b:.3f} | {a:.3f} | {b / a:.2f} |"
            if torch:
                cells += f" {float(np.median([r[kind][key] for r in res['torch']])):.3f} |"
            lines.append(cells)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", nargs="?", help="the checkout of the code before the change")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--torch", action="store_true", help="time PyTorch too, in its own process each round")
    parser.add_argument("--out", default=str(HERE / "benchmarks" / "results" / "before_after.json"))
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return 0
    if not args.before:
        parser.error("the checkout before the change is needed")
    data = run(args.before, args.rounds, args.torch)
    data["before"] = subprocess.run(["git", "-C", args.before, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
    Path(args.out).write_text(json.dumps(data, indent=1))
    print(table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
