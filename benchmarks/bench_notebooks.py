"""Time the full-size run (not the CI smoke run) of every notebook, top to bottom, in a fresh kernel::

    python benchmarks/bench_notebooks.py                       # all notebooks, a few minutes
    python benchmarks/bench_notebooks.py 05_image_classification_pipeline

Each notebook runs in its own Jupyter kernel, in a temporary working folder, with ``MINICNN_SMOKE``
unset and a headless matplotlib. The wall time includes the kernel's start and the notebooks'
own Numba compilation (the cache folder in use is reported). Results go to
``benchmarks/results/notebooks.json`` (one record per run, appended), and each notebook's latest
time goes into the table ``benchmarks/NOTEBOOK_TIMES.md``. The machine's load average is recorded
before and after each notebook: on a shared machine the times are upper bounds.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RESULTS = ROOT / "benchmarks" / "results" / "notebooks.json"
TABLE = ROOT / "benchmarks" / "NOTEBOOK_TIMES.md"


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def _load():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def run_notebook(path, timeout=1800):
    """Seconds to execute ``path`` top to bottom in a fresh kernel (raises if a cell fails)."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="minicnn-bench-nb-") as work:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": work}})
        start = time.perf_counter()
        client.execute()
        return time.perf_counter() - start


def write_table(history):
    """``NOTEBOOK_TIMES.md``: each notebook's latest full-size run, with the run's date and machine."""
    latest = {}
    for run in history:                                  # later runs replace earlier ones
        for row in run["notebooks"]:
            latest[row["notebook"]] = (run, row)
    lines = [
        "# Full-size run of every notebook",
        "",
        "Written by `python benchmarks/bench_notebooks.py` (raw records: `results/notebooks.json`). Wall time",
        "per notebook in a fresh kernel, kernel start and the notebooks' own compilation included, with",
        "`MINICNN_SMOKE` unset (notebooks 05 and 06 then train on the full Fashion-MNIST when it is installed). The machine was shared with",
        "other work while these ran: the load average (1 minute) is given before and after each notebook,",
        "and the times are upper bounds for an idle machine.",
        "",
        "| notebook | seconds | load average before -> after | date (UTC) | machine | full Fashion-MNIST installed |",
        "|---|---|---|---|---|---|",
    ]
    for name in [p.stem for p in NOTEBOOKS if p.stem in latest]:
        run, row = latest[name]
        data = "yes (05 and 06 use it)" if run["full_fashion_mnist"] else "no (the sample)"
        lines.append(f"| {name} | {row['seconds']:.0f} | {row['load_before']:.1f} -> {row['load_after']:.1f} | "
                     f"{run['date']} | {run['machine']}; {run['versions']} | {data} |")
    total = sum(latest[name][1]["seconds"] for name in latest)
    lines += [f"| **total** | **{total:.0f}** | | | | |", ""]
    TABLE.write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (stems) to run; default all")
    args = parser.parse_args(argv)
    paths = [p for p in NOTEBOOKS if not args.names or p.stem in args.names]
    if not paths:
        print(f"bench_notebooks: no notebook matches {args.names}; known: {[p.stem for p in NOTEBOOKS]}", file=sys.stderr)
        return 2
    os.environ.pop("MINICNN_SMOKE", None)
    os.environ["MPLBACKEND"] = "Agg"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    import numba
    import numpy as np

    from minicnn.datasets import fashion_mnist

    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "versions": f"Python {platform.python_version()}, NumPy {np.__version__}, Numba {numba.__version__}",
        "numba_cache": os.environ.get("NUMBA_CACHE_DIR", "next to the sources"),
        "full_fashion_mnist": str(fashion_mnist.find()) if fashion_mnist.find() else None,
        "notebooks": [],
    }
    for path in paths:
        before = _load()
        seconds = run_notebook(path)
        row = {"notebook": path.stem, "seconds": round(seconds, 1), "load_before": before, "load_after": _load()}
        record["notebooks"].append(row)
        print(f"{path.stem:40s} {seconds:7.1f} s   (load average {before:.1f} -> {row['load_after']:.1f})", flush=True)
    record["total_seconds"] = round(sum(r["seconds"] for r in record["notebooks"]), 1)
    print(f"{'total':40s} {record['total_seconds']:7.1f} s")

    history = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    history.append(record)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(history, indent=1) + "\n")
    write_table(history)
    return 0


if __name__ == "__main__":
    sys.exit(main())
