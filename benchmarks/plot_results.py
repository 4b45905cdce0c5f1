"""Draw ``benchmarks/results.png`` from the JSON the benchmark scripts write.

    python benchmarks/plot_results.py [benchmarks/results/bench.json] [--control benchmarks/results/bench_1thread.json]

Three panels: training and inference speed of minicnn relative to PyTorch (bars, with the
absolute images/s written on them; diamonds: the same ratio in the one-thread control run;
triangles: the small CNN's training step in steady state),
peak memory of the training runs, and the convolution kernels' GFLOP/s against NumPy's fp32
GEMM ceiling (bars: interleaved, each call after a pause; dots: called back to back).
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
COLORS = {"minicnn": "#1f77b4", "torch": "#ee7733", "reference": "#999999", "numba": "#1f77b4"}


def _label(row):
    name = {"small": "small CNN", "blog": "blog model"}[row["model"]]
    extra = "\nglibc tunables" if row.get("glibc_tunables") else ""
    return f"{name}\nbatch {row['batch']}{extra}"


def plot_speed(ax, rows, control=None, steady=None):
    """Throughput ratio minicnn / PyTorch per case; >1 means minicnn is faster."""
    rows = [r for r in rows if "torch" in r]
    control = [r for r in control or [] if "torch" in r]
    steady = [r for r in steady or [] if "torch" in r]
    groups = [("train", "training step"), ("infer", "inference")]
    labels = []
    for r in rows:
        if r["mode"] == "train":
            labels.append(_label(r))
    x = np.arange(len(labels))
    width = 0.38
    for i, (mode, title) in enumerate(groups):
        ratios, texts, pos = [], [], []
        for j, label in enumerate(labels):
            match = [r for r in rows if r["mode"] == mode and _label(r) == label]
            if not match:
                continue
            r = match[0]
            ratios.append(r["speedup"])
            texts.append(f"{r['minicnn']['images_per_s']:,.0f}\nvs {r['torch']['images_per_s']:,.0f}")
            pos.append(x[j] + (i - 0.5) * width)
        bars = ax.bar(pos, ratios, width, label=f"{title}, {rows[0].get('threads', 2)} threads", color=["#1f77b4", "#66aadd"][i])
        for bar, text in zip(bars, texts):
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=8, xytext=(0, 2), textcoords="offset points")
        marks = [(x[j] + (i - 0.5) * width, r["speedup"]) for j, label in enumerate(labels)
                 for r in control if r["mode"] == mode and _label(r) == label]
        if marks:
            ax.plot(*zip(*marks), "D", color="black", markersize=6,
                    label="same, 1 thread each (control)" if i == 0 else None)
        marks = [(x[j] + (i - 0.5) * width, r["speedup"]) for j, label in enumerate(labels) for r in steady
                 if mode == "train" and label == _label({"model": "small", "batch": r["batch"]})]
        if marks:
            ax.plot(*zip(*marks), "v", color="#d62728", markersize=9,
                    label="training, steady state: each library alone, steps back to back")
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.text(x[-1] + 0.45, 1.0, "PyTorch = 1", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(x, labels, fontsize=9)
    ax.set_ylabel("speed relative to PyTorch (x)")
    ax.set_title("minicnn vs PyTorch, same threads, interleaved\n(labels: images/s, minicnn vs PyTorch)", fontsize=10)
    ax.set_ylim(0, max(max(r["speedup"] for r in rows + control + steady) * 1.75, 1.5))  # room for the legend
    ax.legend(loc="upper left", fontsize=9)


def plot_memory(ax, rows):
    rows = [r for r in rows if r["mode"] == "train" and not r.get("glibc_tunables") and "torch" in r]
    labels = [_label(r) for r in rows]
    x = np.arange(len(rows))
    width = 0.38
    for i, lib in enumerate(("minicnn", "torch")):
        values = [r[lib]["peak_rss_mb"] for r in rows]
        bars = ax.bar(x + (i - 0.5) * width, values, width, label={"minicnn": "minicnn", "torch": "PyTorch"}[lib],
                      color=COLORS[lib])
        for bar, v in zip(bars, values):
            ax.annotate(f"{v:,.0f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, labels, fontsize=9)
    ax.set_ylabel("peak resident memory (MB)")
    ax.set_title("peak memory of a training run\n(one process per case)", fontsize=10)
    ax.set_ylim(0, max(max(r[lib]["peak_rss_mb"] for lib in ("minicnn", "torch")) for r in rows) * 1.2)
    ax.legend(loc="upper left", fontsize=9)


def plot_kernels(ax, kernels):
    cases = [c for c in kernels["cases"] if c["op"].startswith("conv")]
    short = {"conv_forward": "fwd", "conv_backward_input": "d input", "conv_backward_weights": "d weights"}
    labels = [f"{c['name'].split()[1]}\n{short[c['op']]}" for c in cases]
    libs = [lib for lib in ("reference", "numba", "torch") if any(lib in c for c in cases)]
    x = np.arange(len(cases))
    width = 0.8 / len(libs)
    names = {"reference": "minicnn reference", "numba": "minicnn Numba", "torch": "PyTorch"}
    colors = {"reference": "#bbbbbb", "numba": "#1f77b4", "torch": "#ee7733"}
    back = kernels.get("back_to_back", {})
    for i, lib in enumerate(libs):
        values = [c[lib]["gflops"] if lib in c else 0 for c in cases]
        pos = x + (i - (len(libs) - 1) / 2) * width
        ax.bar(pos, values, width, label=f"{names[lib]}, interleaved", color=colors[lib])
        marks = [(p, back[c["name"]][lib]["gflops"]) for p, c in zip(pos, cases) if lib in back.get(c["name"], {})]
        if marks:
            ax.plot(*zip(*marks), "o", color=colors[lib], markeredgecolor="black", markersize=8,
                    label=f"{names[lib]}, back to back")
    ceiling = kernels["gemm_ceiling_gflops"]
    ax.axhline(ceiling, color="black", lw=1, ls="--")
    ax.axhline(ceiling / 2, color="black", lw=0.8, ls=":")
    ax.text(len(cases) - 0.5, ceiling, f"NumPy fp32 GEMM ceiling {ceiling:.0f}", ha="right", va="bottom", fontsize=8)
    ax.text(len(cases) - 0.5, ceiling / 2, "50% of it", ha="right", va="bottom", fontsize=8)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("GFLOP/s (float32)")
    ax.set_title("3x3 convolution kernels, batch 32 (input HxWxC->filters)", fontsize=10)
    ax.legend(loc="upper left", fontsize=9, ncol=3)
    top = max([ceiling] + [v[lib]["gflops"] for v in back.values() for lib in v] + [c[lib]["gflops"] for c in cases for lib in libs if lib in c])
    ax.set_ylim(0, top * 1.35)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="?", default=str(HERE / "results" / "bench.json"))
    parser.add_argument("--control", default=None, help="a one-thread run's JSON, drawn as diamonds")
    parser.add_argument("--out", default=str(HERE / "results.png"))
    args = parser.parse_args(argv)
    data = json.loads(Path(args.json).read_text())
    control = json.loads(Path(args.control).read_text()).get("training") if args.control else None
    fig = plt.figure(figsize=(13, 9.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 2, width_ratios=[1.6, 1])
    if data.get("training"):
        plot_speed(fig.add_subplot(grid[0, 0]), data["training"], control, data.get("steady"))
        plot_memory(fig.add_subplot(grid[0, 1]), data["training"])
    if data.get("kernels"):
        plot_kernels(fig.add_subplot(grid[1, :]), data["kernels"])
    m = data.get("machine", {})
    v = m.get("versions", {})
    loads = [r.get("loadavg_1min") for r in data.get("training", [])] + [data.get("kernels", {}).get("loadavg_1min")]
    loads = [f for f in loads if f is not None]
    busy = f"; other processes: load average {min(loads):.1f} to {max(loads):.1f} on {m.get('cores', '?')} cores" if loads else ""
    fig.suptitle(f"minicnn {v.get('minicnn', '?')} vs PyTorch {v.get('torch', '-')} on {m.get('cpu', '?')}, "
                 f"{m.get('threads', '?')} threads each ({m.get('date', '')}{busy})", fontsize=12)
    fig.savefig(args.out, dpi=110)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
