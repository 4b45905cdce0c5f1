# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Fast kernels with Numba
#
# Notebook 1 defined a convolution with a few nested loops. Written in Python, those loops are far
# too slow to train anything; rewritten as array operations they are fast but harder to read. Numba
# compiles the loops themselves to machine code. This notebook times the three approaches and
# looks at what makes compiled loops fast, or wrong.
#
# **What you will learn**
#
# - how much faster vectorized NumPy and Numba-compiled loops are than plain Python loops, and
#   why minicnn's Numba backend hands the heavy arithmetic to a matrix product, except where a
#   register-tiled loop nest does better;
# - why memory layout and loop order matter: the innermost loop should walk through consecutive
#   addresses;
# - how a parallel loop (`prange`) silently gives wrong answers when two threads add into the same
#   output, and the rule that prevents it;
# - what compilation costs, and how Numba's on-disk cache avoids paying it twice.
#
# The small functions defined here *are* the lesson; each is checked against minicnn's kernels.
# Timings depend on the machine (and on what else it is doing), so we print and plot them but never
# assert on them.

# %%
import os
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import matplotlib.pyplot as plt
import numba
import numpy as np
from numba import njit, prange
from threadpoolctl import threadpool_info, threadpool_limits

from minicnn.kernels import numba as fast  # minicnn's Numba backend (a package: conv, tiles, pooling, ...)
from minicnn.kernels import reference
from minicnn.kernels.numba import tiles

SMOKE = os.environ.get("MINICNN_SMOKE") == "1"   # CI sets it: smaller sizes, same code
rng = np.random.default_rng(0)

# BLAS (behind NumPy's matrix products) and Numba each start their own threads. On a small machine
# that also runs other programs, the two pools fight over the cores and a small matrix product can
# take many times longer than it should. To compare *algorithms*, this notebook holds BLAS to one thread with threadpoolctl
# (it works after NumPy is imported, for OpenBLAS, MKL and BLIS alike); the last cell restores it.
blas_one_thread = threadpool_limits(limits=1, user_api="blas")
blas = [(lib["internal_api"], lib["num_threads"]) for lib in threadpool_info() if lib["user_api"] == "blas"]
print(f"numba {numba.__version__}, {numba.get_num_threads()} threads, {os.cpu_count()} CPUs; BLAS {blas}; smoke mode: {SMOKE}")


def best_time(fn, repeat=3):
    """The fastest of `repeat` calls, in seconds (the minimum is the least disturbed by other work)."""
    return min(timeit.repeat(fn, number=1, repeat=repeat))

# %% [markdown]
# ## 4.1 Python loops, NumPy, Numba
#
# Here is the convolution of notebook 1 ('valid' padding, stride 1, no bias) as seven plain loops,
# one per index of
# $y_{n,i,j,f} = \sum_{u,v,c} w_{u,v,c,f}\, x_{n,i+u,j+v,c}$:

# %%
def conv2d_loops(x, w):
    N, H, W, C = x.shape
    KH, KW, _, F = w.shape
    OH, OW = H - KH + 1, W - KW + 1
    y = np.zeros((N, OH, OW, F), dtype=x.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                for f in range(F):
                    s = 0.0
                    for u in range(KH):
                        for v in range(KW):
                            for c in range(C):
                                s += x[n, i + u, j + v, c] * w[u, v, c, f]
                    y[n, i, j, f] = s
    return y


conv2d_loops_numba = njit(conv2d_loops)     # the very same function, compiled by Numba on first call

# %% [markdown]
# Four ways to compute the same numbers:
#
# 1. `conv2d_loops`: the Python interpreter runs every multiply-add, each costing dozens of
#    bytecodes and a boxed float;
# 2. `minicnn.kernels.reference.conv2d_forward`: NumPy, one strided view and one matrix product per
#    kernel tap ($K_H K_W = 9$ big operations instead of millions of small ones);
# 3. `conv2d_loops_numba`: the loops of (1), compiled to machine code by Numba;
# 4. `minicnn.kernels.numba.conv2d_forward` (minicnn's default backend): a Numba loop copies every
#    receptive field into one row of a matrix (*im2col*, shape `(N*OH*OW, KH*KW*C)`), then one
#    matrix product with the kernel reshaped to `(KH*KW*C, F)` does all the arithmetic in BLAS;
#    except with a multiple of 32 filters, where a *register-tiled* Numba loop nest takes over
#    (`minicnn/kernels/numba/tiles.py`, see below). Either way the batch is split into parts
#    that run side by side on several threads ("lanes", section 4.3).
#
# First: do they agree?

# %%
x = rng.standard_normal((2, 10, 9, 3)).astype(np.float32)
w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
results = {
    "Python loops": conv2d_loops(x, w),
    "NumPy reference": reference.conv2d_forward(x, w, None),
    "Numba loops": conv2d_loops_numba(x, w),
    "minicnn numba": fast.conv2d_forward(x, w, None),
}
for name, y in results.items():
    print(f"{name:18s} shape {y.shape}, max |difference from reference| = {np.abs(y - results['NumPy reference']).max():.1e}")
    np.testing.assert_allclose(y, results["NumPy reference"], rtol=1e-5, atol=1e-5)

# %% [markdown]
# Now the clock, on batches of 28×28 images with $C$ input channels and $F = C$ filters (a first
# layer has small $C$; deeper layers have 32 to 512). The Python loops only run at the small sizes:
# they would take minutes at the large ones. Everything runs on one thread, so that we compare the
# algorithms (minicnn's kernels would otherwise also split the batch over several threads).

# %%
N, H = (2, 16) if SMOKE else (8, 28)
channels = [1, 2, 4, 8, 16, 32] if SMOKE else [1, 2, 4, 8, 16, 32, 64]
methods = {
    "Python loops": conv2d_loops,
    "NumPy reference": lambda x, w: reference.conv2d_forward(x, w, None),
    "Numba loops": conv2d_loops_numba,
    "minicnn numba": lambda x, w: fast.conv2d_forward(x, w, None),
}
python_up_to = 2 if SMOKE else 4
times = {name: {} for name in methods}
numba.set_num_threads(1)
for C in channels:
    x = rng.standard_normal((N, H, H, C)).astype(np.float32)
    w = rng.standard_normal((3, 3, C, C)).astype(np.float32)
    for name, fn in methods.items():
        if name == "Python loops" and C > python_up_to:
            continue
        times[name][C] = best_time(lambda: fn(x, w), repeat=1 if name == "Python loops" else 3)
numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)             # back to all threads

print(f"N={N}, {H}x{H} images, 3x3 kernel, F = C; time per call in milliseconds")
print(f"{'C':>4} " + " ".join(f"{name:>18s}" for name in methods))
for C in channels:
    print(f"{C:>4} " + " ".join(f"{times[name][C] * 1e3:>18.3f}" if C in times[name] else f"{'-':>18s}" for name in methods))
C0 = python_up_to
print(f"\nat C={C0}: NumPy is {times['Python loops'][C0] / times['NumPy reference'][C0]:,.0f}x, Numba loops "
      f"{times['Python loops'][C0] / times['Numba loops'][C0]:,.0f}x, minicnn's numba backend "
      f"{times['Python loops'][C0] / times['minicnn numba'][C0]:,.0f}x faster than Python loops")
for C in (c for c in channels if tiles.fits(c)):
    print(f"at C={C} (register tiles): the numba backend takes {times['minicnn numba'][C] / times['NumPy reference'][C]:.2f}x "
          f"the reference's time, {times['minicnn numba'][C] / times['Numba loops'][C]:.2f}x the plain Numba loops'")

fig, ax = plt.subplots(figsize=(7, 4))
for name in methods:
    cs = sorted(times[name])
    ax.loglog(cs, [times[name][c] * 1e3 for c in cs], "o-", label=name)
ax.set_xlabel("channels C (= filters F)")
ax.set_ylabel("milliseconds per forward pass")
ax.set_title(f"Conv2D forward, {N} images of {H}x{H}, 3x3 kernel, one thread")
ax.legend()
plt.show()

# %% [markdown]
# Python loops are hopeless: far slower than everything else, and the gap grows with the work
# per call (the ratios are printed above). The compiled loops do the same multiply-adds as the Python ones, a few
# nanoseconds each, and with one or two channels they are among the fastest (no intermediate
# arrays, no call overhead). But as $C$ and $F$ grow they fall far behind the methods that hand the
# arithmetic to BLAS, the NumPy reference (nine matrix products, one per kernel tap) and minicnn's
# the numba backend up to 16 filters (one big product after im2col): BLAS splits a matrix product into
# blocks that stay in the CPU cache and uses SIMD instructions, which a straightforward loop nest
# does not. Read the table for how close the two BLAS methods are on your machine.
#
# From 32 filters on, the numba backend runs a loop nest that is not straightforward (how it then compares
# with the reference is printed above; one thread, small images: the gap is larger on a full
# training step, see `benchmarks/RESULTS.md`): `conv_pixels` in `minicnn/kernels/tiles.py`
# computes a *tile* of `JB` output pixels x `FB = 32` filters at a time, and keeps the tile's
# running sums in the CPU's vector registers for the whole loop over the kernel's taps. Each step
# loads `JB` input values and one row of 32 weights and does `JB * 32` multiply-adds; nothing is
# written to memory until the tile is done, and no im2col matrix is built at all. `JB` follows the
# registers Numba compiles for: 6 pixels with AVX-512's 32 registers of 16 floats, 3 with AVX2's 16
# registers of 8 (the next cell prints this machine's). (The tile is a small array on the stack, so that the
# compiler knows nothing else can touch it and may keep it in registers; the innermost loop runs
# over the 32 filters, which the compiler turns into SIMD instructions. Read the module's
# docstring for what made a 2x difference: unsigned indices, a constant tile size, no division
# in the inner loops.) That is the trick BLAS itself uses inside its matrix products.

# %%
print(f"this machine compiles for AVX-512: {tiles._avx512()}; a forward tile is JB={tiles.JB} pixels "
      f"x FB={tiles.FB} filters = {tiles.JB * tiles.FB} running sums")
assert tiles.JB == (6 if tiles._avx512() else 3) and tiles.FB == 32
#
# ## 4.2 Memory layout and loop order
#
# An array is one long run of bytes. In NumPy's default (C) order the **last** index moves fastest:
# `strides` says how many bytes to jump to move one step along each axis. For an NHWC float32
# batch, the $C$ channels of one pixel are neighbours, then the next pixel, then the next row:

# %%
batch = np.zeros((32, 28, 28, 16), dtype=np.float32)
print("shape  ", batch.shape, "\nstrides", batch.strides, "bytes (N, H, W, C)")

# %% [markdown]
# The CPU fetches memory in 64-byte cache lines and prefetches the next ones when it sees a
# pattern. A loop whose innermost index walks along the last axis uses every byte of each line it
# fetches, and the compiler can process several neighbours at once with SIMD instructions. The
# same loop nested the other way round jumps a whole row between two steps.
#
# The classic case is a matrix product. Both functions below compute $C = AB$ with the same
# multiply-adds; only the order of the loops differs. In `matmul_ijk` the inner loop reads `b`
# down a column (a jump of a whole row each step) and sums into one number; in `matmul_ikj` it
# runs along a row of `b` and a row of `c`.

# %%
@njit
def matmul_ijk(a, b):
    n, m = a.shape[0], b.shape[1]
    c = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            s = 0.0
            for k in range(a.shape[1]):
                s += a[i, k] * b[k, j]          # b[k, j], b[k+1, j]: m * 8 bytes apart
            c[i, j] = s
    return c


@njit
def matmul_ikj(a, b):
    n, m = a.shape[0], b.shape[1]
    c = np.zeros((n, m))
    for i in range(n):
        for k in range(a.shape[1]):
            aik = a[i, k]
            for j in range(m):
                c[i, j] += aik * b[k, j]        # b[k, j], b[k, j+1]: neighbours
    return c


size = 256 if SMOKE else 512
a = rng.standard_normal((size, size))
b_rows = rng.standard_normal((size, size))       # C order: each row of b is contiguous
b_cols = np.asfortranarray(b_rows)               # Fortran order, same values: each column is contiguous
print("strides of b in C order", b_rows.strides, "| in Fortran order", b_cols.strides)
loop_times = {}
for layout, b in (("C order", b_rows), ("Fortran order", b_cols)):
    for fn in (matmul_ijk, matmul_ikj):
        np.testing.assert_allclose(fn(a, b), a @ b, rtol=1e-9, atol=1e-9)   # (also compiles fn for this layout)
        loop_times[layout, fn.__name__] = best_time(lambda: fn(a, b))
t_blas = best_time(lambda: a @ b_rows)
print(f"\n{size}x{size} matrix product, milliseconds:")
print(f"{'b stored in':>14s} {'matmul_ijk':>11s} {'matmul_ikj':>11s}")
for layout in ("C order", "Fortran order"):
    print(f"{layout:>14s} {loop_times[layout, 'matmul_ijk'] * 1e3:>11.1f} {loop_times[layout, 'matmul_ikj'] * 1e3:>11.1f}")
print(f"NumPy's a @ b (BLAS): {t_blas * 1e3:.1f} ms")

# %% [markdown]
# With `b` in C order, `matmul_ikj` wins by an order of magnitude: its inner loop streams through
# rows, and because it only adds into independent `c[i, j]` the compiler can use SIMD. Store the same
# values column by column (Fortran order) and the ranking flips: now `matmul_ijk` walks along
# contiguous columns. Neither layout nor loop order is fast on its own; they must match. And BLAS,
# with cache blocking and hand-tuned kernels, still beats the best simple loop.
#
# minicnn keeps Keras's layouts (NHWC data, `(KH, KW, C, F)` kernels) and orders its loops to match:
# its im2col loop copies, for each kernel row, the `KW*C` values that lie next to each other in an
# NHWC image as one contiguous run (read `_im2col` in `minicnn/kernels/fast.py`). A PyTorch
# model's `(N, C, H, W)` data and `(F, C, KH, KW)` kernels would need the loops in another order.

# %% [markdown]
# ## 4.3 Parallel loops without races
#
# `numba.prange` in a function compiled with `parallel=True` splits a loop's iterations among
# threads. It is only correct if the iterations are independent. Here is the kernel gradient of a
# convolution (notebook 2): $dw_{u,v,c,f} = \sum_{n,i,j} dy_{n,i,j,f}\, x_{n,i+u,j+v,c}$. The tempting
# way to parallelise is over the batch: each thread takes some images. But every image adds into
# *every* element of `dw`, so two threads can read the same `dw[u, v, c, f]`, each add their
# number, and write back: one of the two additions is lost. This is a *data race*.

# %%
@njit(parallel=True)
def conv_dw_racy(x, dy, KH, KW):
    N, H, W, C = x.shape
    _, OH, OW, F = dy.shape
    dw = np.zeros((KH, KW, C, F))
    for n in prange(N):                           # WRONG: every n writes to all of dw
        for i in range(OH):
            for j in range(OW):
                for u in range(KH):
                    for v in range(KW):
                        for c in range(C):
                            for f in range(F):
                                dw[u, v, c, f] += dy[n, i, j, f] * x[n, i + u, j + v, c]
    return dw


@njit(parallel=True)
def conv_dw_owned(x, dy, KH, KW):
    N, H, W, C = x.shape
    _, OH, OW, F = dy.shape
    dw = np.zeros((KH, KW, C, F))
    for f in prange(F):                           # each f owns dw[:, :, :, f]: no two threads share an element
        for n in range(N):
            for i in range(OH):
                for j in range(OW):
                    for u in range(KH):
                        for v in range(KW):
                            for c in range(C):
                                dw[u, v, c, f] += dy[n, i, j, f] * x[n, i + u, j + v, c]
    return dw


xs = rng.standard_normal((64, 28, 28, 4))
dys = rng.standard_normal((64, 26, 26, 8))
dw_ref, _ = reference.conv2d_backward_weights(xs, dys, (3, 3))
runs = 20
racy_errors = [np.abs(conv_dw_racy(xs, dys, 3, 3) - dw_ref).max() for _ in range(runs)]
owned_errors = [np.abs(conv_dw_owned(xs, dys, 3, 3) - dw_ref).max() for _ in range(runs)]
print(f"{numba.get_num_threads()} threads, {runs} runs each")
print(f"prange over the batch  : {sum(e > 1e-9 for e in racy_errors):2d} wrong runs, largest error {max(racy_errors):.3g}")
print(f"prange over the filters: {sum(e > 1e-9 for e in owned_errors):2d} wrong runs, largest error {max(owned_errors):.1e}")
assert max(owned_errors) < 1e-9

# %% [markdown]
# How often the racy version goes wrong depends on whether its threads really run at the same
# moment, which on a busy machine they may not (then it passes). To see the race every time, make
# the threads *contend*: give each thread one long part of the work (so that the parts overlap in
# time even if a thread starts late), and let every step add 1 into one of only 4 counters (a
# histogram), so that two threads running together collide constantly. Then try until they overlap.

# %%
@njit(parallel=True)
def histogram_racy(bins, n_bins, parts):
    counts = np.zeros(n_bins, np.int64)
    size = bins.size // parts
    for p in prange(parts):                       # WRONG: every part adds into the same 4 counters
        for k in range(p * size, (p + 1) * size):
            counts[bins[k]] += 1
    return counts


bins = rng.integers(0, 4, 20_000_000, dtype=np.int8)
threads = numba.get_num_threads()
histogram_racy(bins[:10], 4, 1)                   # compile first
tries, lost = 0, 0
deadline = time.perf_counter() + 30
while lost == 0 and threads > 1 and time.perf_counter() < deadline:
    tries += 1
    counted = histogram_racy(bins[:bins.size // threads * threads], 4, threads)
    lost = bins.size // threads * threads - int(counted.sum())
print(f"{threads} threads: {lost:,} of {bins.size:,} additions lost in try {tries}")
assert lost > 0 or threads == 1, "the threads never ran at the same time in 30 s: is the machine very busy?"

# %% [markdown]
# With two or more threads running together the racy versions are wrong, by a different amount on
# each run: the errors are lost additions, not rounding. With one thread, or on a machine so busy
# that the threads take turns, they pass. No error message, no crash, and a passing test proves
# nothing. The rule: **split a loop only along an axis whose iterations own their part of the
# output.**
#
# minicnn's parallel kernels follow it. The convolution, pooling and Adam kernels split the batch
# (or the array) into parts that own disjoint pieces of the output, the images `n0:n1` of `y` and
# `dx`, and run the parts side by side on a few threads ("lanes", see the comments in
# `minicnn/kernels/fast.py`). The kernel gradient, to which every image contributes, is
# computed as one partial sum per part, and the parts' sums are added afterwards in part order:
# exercise 3 below does the same. How the work is split is decided before any thread starts and
# does not depend on `numba.set_num_threads`, so every element is summed in the same order and the
# result is the same bits for any number of threads:

# %%
x32 = rng.standard_normal((64, 14, 14, 8)).astype(np.float32)
w32 = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
dy32 = rng.standard_normal((64, 12, 12, 8)).astype(np.float32)
by_threads = {}
for threads in sorted({1, numba.get_num_threads()}):
    numba.set_num_threads(threads)
    by_threads[threads] = (fast.conv2d_backward_input(dy32, w32, x32.shape),       # parts own images of dx
                           fast.conv2d_backward_weights(x32, dy32, (3, 3))[0])      # partial sums in part order
numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
first = by_threads[1]
for threads, (dx, dw) in by_threads.items():
    same = np.array_equal(dx, first[0]) and np.array_equal(dw, first[1])
    print(f"{threads} thread(s): dx and dw bit-identical to 1 thread: {same}")
    assert same

# %% [markdown]
# ## 4.4 The price of compiling, and the cache
#
# Numba compiles a function the first time it is called *with a new combination of argument types*
# (float32 and float64 arrays are different types, as are C-ordered and transposed ones). That takes
# a fraction of a second or more per function (printed below); later calls with the same types are fast.

# %%
fresh = njit(conv2d_loops)                          # a new dispatcher: nothing compiled yet
x = rng.standard_normal((2, 12, 12, 3)).astype(np.float32)
w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
for label, args in [("1st call, float32", (x, w)), ("2nd call, float32", (x, w)),
                    ("1st call, float64", (x.astype(np.float64), w.astype(np.float64))),
                    ("2nd call, float64", (x.astype(np.float64), w.astype(np.float64)))]:
    start = time.perf_counter()
    fresh(*args)
    print(f"{label}: {(time.perf_counter() - start) * 1e3:8.2f} ms")
print("compiled signatures:", len(fresh.signatures))
assert len(fresh.signatures) == 2

# %% [markdown]
# With `cache=True`, Numba also writes the machine code to disk (an index `.nbi` and the code
# `.nbc`, in a `__pycache__` folder next to the source, or in `NUMBA_CACHE_DIR`), and a new Python
# process loads it instead of compiling. All of minicnn's kernels use it. To see the difference we
# start two fresh Python processes that compile (or load) minicnn's float32 kernels, sharing a new,
# empty cache folder (made for this cell and deleted at its end, so a rerun compiles again).

# %%
code = ("import time; t = time.perf_counter(); from minicnn.kernels import numba as fast; "
        "fast.warmup(('float32',)); print(time.perf_counter() - t)")
seconds = {}
with tempfile.TemporaryDirectory(prefix="minicnn-04-cache-") as cache:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    assert not any(Path(cache).iterdir())                          # nothing to load: the first run compiles
    for label in ("empty cache (compile)", "filled cache (load)"):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        seconds[label] = float(done.stdout.split()[-1])
        print(f"{label:22s}: {seconds[label]:.2f} s to import minicnn's Numba backend and run every kernel once")
    files = [p for p in Path(cache).rglob("*") if p.suffix in (".nbi", ".nbc")]
    print(f"cache: {len(files)} files, {sum(p.stat().st_size for p in files) / 1024:.0f} KiB")
print("minicnn's own cache folder:", fast.cache_dir())
assert files and seconds["filled cache (load)"] < seconds["empty cache (compile)"]

# %% [markdown]
# So the first training run after installing minicnn is a few seconds slower, and never again (until
# minicnn or Numba changes). Keras's progress bar, which minicnn copies, leaves the first step out of
# the time per step for the same reason. Two traps worth knowing: the cache is keyed on the
# function's source file and name, so two `njit(cache=True)` variants built from one Python function
# overwrite each other's entry (numba#6845); and `fastmath=True` lets the compiler reorder sums and
# assume there is no NaN, which minicnn avoids because its kernels are tested against a reference.
# The register-tile loops allow one of fastmath's flags, `contract` (printed below): a multiply and
# an add may become one fused multiply-add, rounded once instead of twice; nothing is reordered.

# %%
print("tiles fastmath:", tiles.TILE_OPTIONS["fastmath"], "| other kernels' fastmath:", fast.JIT_OPTIONS["fastmath"])
assert tiles.TILE_OPTIONS["fastmath"] == {"contract"} and fast.JIT_OPTIONS["fastmath"] is False

# %% [markdown]
# ## 4.5 Stepping through a kernel in a debugger: `NUMBA_DISABLE_JIT=1`
#
# A debugger cannot step into compiled machine code. Set the environment variable
# `NUMBA_DISABLE_JIT=1` *before* Python starts (Numba reads it on import) and every `@njit` function
# stays the plain Python function it was written as: a breakpoint inside `conv_pixels` in
# `minicnn/kernels/numba/tiles.py` then stops there, and `print` works inside the loop. The numbers
# are the same (up to the rounding of fused multiply-adds), only hundreds of times slower. minicnn's
# register tiles keep their running sums in a small stack array that only compiled code has; without
# the compiler a NumPy array stands in for it. Below, a fresh Python process runs minicnn's
# 32-filter convolution with the compiler off, and we compare its output with the compiled one.
#
# ```
# NUMBA_DISABLE_JIT=1 python -m pdb my_script.py      # then: b minicnn/kernels/numba/tiles.py:<line>
# ```

# %%
xj = rng.standard_normal((2, 7, 7, 3))
wj = rng.standard_normal((3, 3, 3, 32))
plain = ("import sys, time, numpy as np, numba; from minicnn.kernels import numba as fast; "
         "x, w = np.load(sys.argv[1]), np.load(sys.argv[2]); t = time.perf_counter(); "
         "y = fast.conv2d_forward(x, w, None, activation='relu'); print(time.perf_counter() - t); "
         "print('jit disabled:', bool(numba.config.DISABLE_JIT)); np.save(sys.argv[3], y)")
with tempfile.TemporaryDirectory(prefix="minicnn-04-plain-") as folder:
    paths = [str(Path(folder) / name) for name in ("x.npy", "w.npy", "y.npy")]
    np.save(paths[0], xj)
    np.save(paths[1], wj)
    done = subprocess.run([sys.executable, "-c", plain, *paths], env={**os.environ, "NUMBA_DISABLE_JIT": "1"},
                          capture_output=True, text=True, check=True)
    y_plain = np.load(paths[2])
seconds_plain, flag = done.stdout.splitlines()[:2]
y_compiled = fast.conv2d_forward(xj, wj, None, activation="relu")
print(flag, f"| plain Python: {float(seconds_plain) * 1e3:.0f} ms for {y_plain.size} outputs")
print("largest difference from the compiled kernel:", np.abs(y_plain - y_compiled).max())
assert "True" in flag and np.allclose(y_plain, y_compiled, rtol=1e-12, atol=1e-12)   # 27-term float64 sums: a few ulps apart

# %% [markdown]
#
# ## Summary
#
# - Python loops: orders of magnitude too slow. NumPy: fast when the work is a few big array
#   operations. Numba: the loops themselves, compiled; fastest where no array operation fits.
# - For the arithmetic of a convolution, one large matrix product (im2col + BLAS) beats any simple
#   loop nest once there are more than a few channels; a loop nest that keeps a tile of outputs in
#   registers (minicnn's `tiles.py`) is how minicnn competes with BLAS at 32 filters and more.
# - The innermost loop should walk along the last (contiguous) axis of the arrays it touches; the
#   same code can be many times slower on the same values laid out differently.
# - Split a loop only along an axis whose iterations own their outputs; otherwise additions get
#   lost, silently and differently on each run. Sums that every iteration contributes to become
#   per-part partial sums, added in a fixed order: the same bits for any thread count.
# - Compilation costs a fraction of a second per function and type signature; `cache=True` keeps
#   the machine code on disk for the next process. `NUMBA_DISABLE_JIT=1` turns it all back into
#   plain Python that a debugger can step through.
#
# ## Exercises
#
# Each exercise has a solution filled in (a cell tagged `solution`, left blank in the learner
# copies) and a cell that checks it against `minicnn.kernels`.
#
# **Exercise 1.** What are the strides, in bytes, of a C-ordered float32 array of shape
# `(32, 28, 28, 16)` (a batch of NHWC feature maps)? Work them out by hand.

# %% tags=["solution"]
answer_1 = (28 * 28 * 16 * 4, 28 * 16 * 4, 16 * 4, 4)

# %%
assert answer_1 == np.empty((32, 28, 28, 16), dtype=np.float32).strides
print("Exercise 1: correct", answer_1)

# %% [markdown]
# **Exercise 2.** Write a parallel Numba max-pool forward for 2×2 windows at stride 2 ('valid'),
# returning only `y`. Choose the `prange` axis so that no two iterations write to the same output.
# It is checked against `reference.maxpool2d_forward`.

# %% tags=["solution"]
@njit(parallel=True)
def maxpool_2x2(x):
    N, H, W, C = x.shape
    OH, OW = H // 2, W // 2
    y = np.empty((N, OH, OW, C), dtype=x.dtype)
    for r in prange(N * OH):                      # r = n*OH + i owns the output row y[n, i]
        n, i = r // OH, r % OH
        for j in range(OW):
            for c in range(C):
                y[n, i, j, c] = max(x[n, 2 * i, 2 * j, c], x[n, 2 * i, 2 * j + 1, c],
                                    x[n, 2 * i + 1, 2 * j, c], x[n, 2 * i + 1, 2 * j + 1, c])
    return y


# %%
xs = rng.standard_normal((3, 8, 10, 5)).astype(np.float32)
np.testing.assert_array_equal(maxpool_2x2(xs), reference.maxpool2d_forward(xs, (2, 2), (2, 2))[0])
print("Exercise 2: correct")

# %% [markdown]
# **Exercise 3.** Keep `prange` over the batch in `conv_dw_racy`, but make it correct: let each image
# add into its own slice of a `(N, KH, KW, C, F)` buffer (so each iteration owns its output), then
# sum the buffer over the batch after the loop. Checked against `reference.conv2d_backward_weights`.

# %% tags=["solution"]
@njit(parallel=True)
def conv_dw_private(x, dy, KH, KW):
    N, H, W, C = x.shape
    _, OH, OW, F = dy.shape
    partial = np.zeros((N, KH, KW, C, F))
    for n in prange(N):                           # image n owns partial[n]
        for i in range(OH):
            for j in range(OW):
                for u in range(KH):
                    for v in range(KW):
                        for c in range(C):
                            for f in range(F):
                                partial[n, u, v, c, f] += dy[n, i, j, f] * x[n, i + u, j + v, c]
    return partial.sum(axis=0)


# %%
xs, dys = rng.standard_normal((64, 12, 12, 2)), rng.standard_normal((64, 10, 10, 4))
for _ in range(5):
    np.testing.assert_allclose(conv_dw_private(xs, dys, 3, 3), reference.conv2d_backward_weights(xs, dys, (3, 3))[0],
                               rtol=1e-10, atol=1e-10)
print("Exercise 3: correct")

# %% [markdown]
# ## Questions
#
# 1. `conv_dw_owned` runs `prange` over the filters. With 8 filters and 2 threads that is fine;
#    what goes wrong for speed (not correctness) with 3 filters on 8 threads, and how does splitting
#    the batch into per-part partial sums (exercise 3) avoid it?
# 2. Why does the racy histogram lose *more* additions with 4 counters than it would with 4,000?
# 3. The register tile holds `JB * 32` sums. Count the vector registers it needs on AVX2 and on
#    AVX-512 for float32; why would `JB = 6` on AVX2 be slower, not faster?

# %%
blas_one_thread.restore_original_limits()          # BLAS back to its own thread count
