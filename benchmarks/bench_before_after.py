"""Before and after a change, back to back: two checkouts of minicnn timed in turn on one machine.

    git worktree add ../before <commit>          # the code before the change, with its own Numba cache
    python benchmarks/bench_before_after.py ../before --rounds 8 [--torch]
    python benchmarks/bench_before_after.py ../before --same-process --rounds 6 --blocks 8

Each round starts one fresh process per checkout (and one for PyTorch with ``--torch``, whose
times divide both); the order rotates. A process times every kernel case of ``minicnn.bench``
back to back (median of up to 60 calls after 7 untimed ones) and then the training step of the
small CNN (batch 32 and 128) and the blog model (batch 32), steps back to back as ``fit`` runs
them. The medians of all rounds are printed; every process's figures go to the JSON file.
The child side uses only names both checkouts have (``minicnn.bench`` as a module or a package).

``--same-process`` times both checkouts in one process instead: the checkout before is copied
as the package ``minicnn_before``, and each case runs in blocks, before and after taking turns
(20 ms of untimed calls after a 5 ms pause start each block, so that the other copy's idle lanes
have gone to sleep and the cores are awake). On this VM whole processes differ: the small CNN's
step has a median of 5.3 ms in some and 7.5 ms in others, for the same code. In one process,
block after block, both copies meet the same conditions, so the ratio compares the code.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
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


def same_process_child(copy_dir, blocks):
    """Print the JSON of both checkouts' medians (ms), timed in turns in this one process."""
    sys.path.insert(0, copy_dir)   # holds minicnn_before, the other checkout's package
    from minicnn import bench
    from minicnn.bench.kernel_cases import KernelRunner

    packages = {"before": "minicnn_before", "after": "minicnn"}
    runners = {label: KernelRunner("numba", package) for label, package in packages.items()}
    out = {label: {"kernels": {}, "steps": {}} for label in packages}
    for case in bench.kernel_cases(quick=False):
        calls = {}
        for label, runner in runners.items():
            runner.setup(case)
            calls[label] = runner.calls.pop(case["name"])
        for label, ms in _in_turns(calls, blocks).items():
            out[label]["kernels"][case["name"]] = ms
    for model, batch, _ in STEPS:
        rng = np.random.default_rng(0)
        spec = bench.MODELS[model]
        x = rng.random((batch, *spec["input_shape"]), dtype=np.float32)
        y = rng.integers(0, spec["classes"], batch)
        nets = {label: bench.build_minicnn(model, package=package) for label, package in packages.items()}
        calls = {label: (lambda net=net, x=x, y=y: net.train_on_batch(x, y)) for label, net in nets.items()}
        for label, ms in _in_turns(calls, blocks).items():
            out[label]["steps"][f"{model} batch {batch}"] = ms
        del nets, calls
    print(json.dumps(out))


def _in_turns(calls, blocks, block_s=0.1, warm_s=0.02, pause_s=0.005):
    """Median ms of each call, timed in ``blocks`` blocks per call, the calls taking turns."""
    first = {}
    for label, call in calls.items():
        call()
        t0 = time.perf_counter()
        call()
        first[label] = time.perf_counter() - t0
    times = {label: [] for label in calls}
    labels = list(calls)
    for b in range(blocks):
        for label in labels if b % 2 == 0 else labels[::-1]:
            call, t = calls[label], max(first[label], 1e-5)
            time.sleep(pause_s)
            for _ in range(max(2, int(warm_s / t))):
                call()
            for _ in range(max(2, min(40, int(block_s / t)))):
                t0 = time.perf_counter()
                call()
                times[label].append(time.perf_counter() - t0)
    return {label: float(np.median(ts)) * 1e3 for label, ts in times.items()}


def _copy_of(before):
    """A folder holding ``before``'s package as ``minicnn_before`` (kept, so its Numba cache lasts)."""
    commit = subprocess.run(["git", "-C", str(before), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    folder = Path(tempfile.gettempdir()) / f"minicnn-before-{commit}"
    if not (folder / "minicnn_before").is_dir():
        shutil.copytree(Path(before) / "minicnn", folder / "minicnn_before",
                        ignore=shutil.ignore_patterns("__pycache__"))
    return folder


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


def run(before, rounds, torch, log=print, same_process=False, blocks=10):
    trees = {"before": Path(before).resolve(), "after": HERE}
    labels = ["before", "after"] + (["torch"] if torch else [])
    sys.path.insert(0, str(HERE))   # here, not at the top: a child runs this file in the other checkout
    from minicnn.bench.processes import thread_env

    env = thread_env()
    if same_process:
        return _run_same_process(trees["before"], rounds, env, blocks, log)
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


def _run_same_process(before, rounds, env, blocks, log):
    """``rounds`` fresh processes, each timing both checkouts in turns (``same_process_child``)."""
    copy_dir = _copy_of(before)
    child_env = {**env, "PYTHONPATH": str(HERE), "NUMBA_CACHE_DIR": str(HERE / ".numba_cache_before_after")}
    results, loads = {"before": [], "after": []}, []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        proc = subprocess.run([sys.executable, __file__, "--same-process-child", str(copy_dir), "--blocks", str(blocks)],
                              env=child_env, cwd=HERE, capture_output=True, text=True, check=True)
        both = json.loads(proc.stdout.splitlines()[-1])
        for label in results:
            results[label].append(both[label])
        log(f"round {r + 1}/{rounds} done, load {os.getloadavg()[0]:.2f}")
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": rounds, "same_process": True,
            "blocks": blocks, "loadavg_1min": loads, "results": results}


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
    parser.add_argument("--same-process", action="store_true",
                        help="time both checkouts in one process per round, in turns (see above)")
    parser.add_argument("--blocks", type=int, default=10, help="with --same-process: turns per case (default 10)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--same-process-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    if args.same_process_child:
        return same_process_child(args.same_process_child, args.blocks)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return 0
    if not args.before:
        parser.error("the checkout before the change is needed")
    if args.same_process and args.torch:
        parser.error("--torch times PyTorch in processes of its own: not with --same-process")
    data = run(args.before, args.rounds, args.torch, same_process=args.same_process, blocks=args.blocks)
    data["before"] = subprocess.run(["git", "-C", args.before, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
    Path(args.out).write_text(json.dumps(data, indent=1))
    print(table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
