"""Print the tables of ``benchmarks/RESULTS.md`` from the JSON the benchmark scripts wrote.

    python benchmarks/results_tables.py            # every table, in the order of RESULTS.md

RESULTS.md holds the same lines; ``tests`` check that each table printed here appears there
verbatim, so a figure in RESULTS.md is always one a run wrote.
"""

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = {"small": "small CNN", "blog": "blog model"}


def _load(name):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _ms(v):
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def training_table(rows):
    """Interleaved training and inference: ms per step, images/s, ratio, peak memory."""
    lines = ["| model | batch | mode | minicnn ms | minicnn img/s | torch ms | torch img/s | minicnn/torch "
             "| minicnn peak MB | torch peak MB |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m, t = r["minicnn"], r["torch"]
        mode = r["mode"] + (", glibc tunables (both)" if r.get("glibc_tunables") else "")
        lines.append(f"| {NAMES[r['model']]} | {r['batch']} | {mode} | {_ms(m['ms'])} | {m['images_per_s']:,.0f} "
                     f"| {_ms(t['ms'])} | {t['images_per_s']:,.0f} | **{r['speedup']:.2f}x** "
                     f"| {m['peak_rss_mb']:,.0f} | {t['peak_rss_mb']:,.0f} |")
    return "\n".join(lines)


def steady_table(rows):
    """Each library alone, steps back to back (what ``fit`` sees)."""
    lines = ["| batch | minicnn ms | minicnn img/s | torch ms | torch img/s | minicnn/torch |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m, t = r["minicnn"], r["torch"]
        lines.append(f"| {r['batch']} | {_ms(m['ms'])} | {m['images_per_s']:,.0f} | {_ms(t['ms'])} "
                     f"| {t['images_per_s']:,.0f} | **{r['speedup']:.2f}x** |")
    return "\n".join(lines)


def kernel_table(kernels):
    """Each kernel: reference, Numba and PyTorch (interleaved), GFLOP/s, and back to back."""
    ceiling = kernels["gemm_ceiling_gflops"]
    b2b = kernels.get("back_to_back", {})
    lines = ["| kernel | reference ms | Numba ms | torch ms | Numba GFLOP/s | % of ceiling | Numba back to back ms "
             "| GFLOP/s | % of ceiling | torch back to back ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in kernels["cases"]:
        cells = [c["name"], _ms(c["reference"]["ms"]), _ms(c["numba"]["ms"]), _ms(c["torch"]["ms"])]
        cells += [f"{c['numba']['gflops']:.0f}", f"{c['numba']['gflops'] / ceiling:.0%}"] if c["flops"] else ["", ""]
        back = b2b.get(c["name"])
        if back:
            cells += [_ms(back["numba"]["ms"]), f"{back['numba']['gflops']:.0f}",
                      f"{back['numba']['gflops'] / ceiling:.0%}", _ms(back["torch"]["ms"])]
        else:
            cells += ["", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def startup_table(startup):
    lines = ["| cache | import minicnn | first training step | fit + evaluate + predict | whole process |",
             "|---|---:|---:|---:|---:|"]
    for key, label in (("cold", "cold (fresh `NUMBA_CACHE_DIR`)"), ("warm", "warm (second process)")):
        s = startup[key]
        lines.append(f"| {label} | {s['import_s']:.2f} s | {s['first_step_s']:.2f} s | {s['fit_after_s']:.2f} s "
                     f"| {s['process_s']:.2f} s |")
    return "\n".join(lines)


def accuracy_table(accuracy):
    lines = ["| | test accuracy | seconds per epoch (2 threads, median) |", "|---|---:|---:|"]
    for lib, label in (("minicnn", "minicnn"), ("torch", "PyTorch")):
        a = accuracy[lib]
        epochs = sorted(a["epoch_s"])
        lines.append(f"| {label} | **{a['test_accuracy']:.4f}** | {epochs[len(epochs) // 2]:.1f} |")
    return "\n".join(lines)


def runtime_tables(runtime):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_runtime import dense_table, table

    out = [("lanes and buffer pool", table(runtime["runtime"]))]
    if "dense" in runtime:
        out.append(("Dense split", dense_table(runtime["dense"])))
    return out


def before_after_table(name="before_after.json"):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_before_after import table

    return table(_load(name))


def tables():
    """``(title, markdown)`` of every table whose JSON exists, in the order of RESULTS.md."""
    out = []
    bench = _load("bench.json")
    if bench:
        out += [("training", training_table(bench["training"])), ("steady state", steady_table(bench["steady"])),
                ("kernels", kernel_table(bench["kernels"])), ("start-up", startup_table(bench["startup"])),
                ("accuracy", accuracy_table(bench["accuracy"]))]
    control = _load("bench_1thread.json")
    if control:
        out += [("one thread: training", training_table(control["training"])),
                ("one thread: steady state", steady_table(control["steady"]))]
    avx2 = _load("bench_avx2.json")
    if avx2:
        out += [("AVX2: training", training_table(avx2["training"])), ("AVX2: steady state", steady_table(avx2["steady"])),
                ("AVX2: kernels", kernel_table(avx2["kernels"]))]
    runtime = _load("runtime.json")
    if runtime:
        out += runtime_tables(runtime)
    if _load("before_after.json"):
        out.append(("kernels package, before and after", before_after_table()))
    if _load("before_after_same_process.json"):
        out.append(("kernels package, before and after, in one process",
                    before_after_table("before_after_same_process.json")))
    return out


def main():
    for title, table in tables():
        print(f"<!-- {title} -->\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
