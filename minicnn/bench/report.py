"""Reports: the machine's facts, Markdown tables of the results, the JSON file, and ``minicnn bench``."""

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from .kernel_cases import run_kernels
from .processes import THREADS, loadavg, thread_env, torch_available
from .training_cases import run_training


def machine_info():
    """CPU, core count, library versions and the thread settings used."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from importlib import metadata

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("numba", "llvmlite", "torch", "scipy"):
        try:
            versions[name] = metadata.version(name)   # without importing it into this process
        except metadata.PackageNotFoundError:
            pass
    from .. import __version__

    versions["minicnn"] = __version__
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        versions["blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "versions": versions,
        "threads": THREADS, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "loadavg_1min": loadavg(),
        "env": {k: v for k, v in thread_env().items() if k.endswith("_THREADS") or k in ("OMP_WAIT_POLICY", "GLIBC_TUNABLES")},
    }


def kernel_table(results):
    """Markdown table of a ``run_kernels`` result."""
    libs = [lib for lib in ("reference", "numba", "torch") if any(lib in row for row in results["cases"])]
    ceiling = results["gemm_ceiling_gflops"]
    lines = [f"fp32 GEMM ceiling (NumPy, 2048^3, {THREADS} threads): {ceiling:.0f} GFLOP/s", "",
             "| kernel | " + " | ".join(f"{lib} ms" for lib in libs) + " | numba GFLOP/s | % of ceiling | torch / numba |",
             "|---|" + "---:|" * (len(libs) + 3)]
    for row in results["cases"]:
        cells = [f"{row[lib]['ms']:.3f}" if lib in row else "" for lib in libs]
        gf = row["numba"]["gflops"]
        pct = f"{100 * gf / ceiling:.0f}%" if gf else ""
        ratio = f"{row['torch']['ms'] / row['numba']['ms']:.2f}x" if "torch" in row else ""
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {gf:.0f} | {pct} | {ratio} |" if gf else
                     f"| {row['name']} | " + " | ".join(cells) + f" |  |  | {ratio} |")
    if results.get("back_to_back"):
        lines += ["", "Back to back (each case called repeatedly, one library at a time):", "",
                  "| kernel | numba ms | numba GFLOP/s | % of ceiling | torch ms | torch / numba |", "|---|---:|---:|---:|---:|---:|"]
        for name, r in results["back_to_back"].items():
            n, t = r["numba"], r.get("torch")
            lines.append(f"| {name} | {n['ms']:.3f} | {n['gflops']:.0f} | {100 * n['gflops'] / ceiling:.0f}% | "
                         + (f"{t['ms']:.3f} | {t['ms'] / n['ms']:.2f}x |" if t else " |  |"))
    return "\n".join(lines)


def training_table(rows):
    """Markdown table of a ``run_training`` result."""
    lines = ["| model | batch | mode | minicnn ms | minicnn img/s | torch ms | torch img/s | minicnn/torch speed | minicnn peak MB | torch peak MB |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mode = r["mode"] + (" (glibc tunables)" if r["glibc_tunables"] else "")
        m, t = r["minicnn"], r.get("torch")
        tcells = f"{t['ms']:.2f} | {t['images_per_s']:.0f} | {r['speedup']:.2f}x" if t else " |  | "
        lines.append(f"| {r['model']} | {r['batch']} | {mode} | {m['ms']:.2f} | {m['images_per_s']:.0f} | {tcells} | "
                     f"{m['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} |" if t else
                     f"| {r['model']} | {r['batch']} | {mode} | {m['ms']:.2f} | {m['images_per_s']:.0f} | {tcells} | {m['peak_rss_mb']:.0f} |  |")
    return "\n".join(lines)


def save_json(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(data)
    path.write_text(json.dumps(old, indent=1))
    return path


def main(quick=True):
    """The quick benchmark of ``minicnn bench``: kernels at the small CNN's shapes, one training config.

    Prints two tables (kernels; training and inference of the small CNN at batch 32, minicnn vs
    PyTorch when it is installed) and returns 0. The full runs are in ``benchmarks/``.
    """
    info = machine_info()
    print(f"minicnn {info['versions']['minicnn']} on {info['cpu']} ({info['cores']} cores), {THREADS} threads per library")
    kernels = run_kernels(quick=quick, log=lambda s: None)
    print(kernel_table(kernels), end="\n\n")
    training = run_training([("small", 32)], rounds=3 if quick else 7, log=lambda s: None)
    print(training_table(training))
    if not torch_available():
        print("\n(PyTorch is not installed: no comparison column.)")
    return 0
