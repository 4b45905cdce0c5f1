"""Register-tiled convolution loops: the Numba backend's fast path for 32, 64, ... filters.

The im2col route (``im2col.py``) turns a convolution into one BLAS product, which wastes time twice at
the shapes of small CNNs: building the im2col matrix costs as much as the product, and
OpenBLAS runs products with only 32 or 64 columns (or 27 rows, for RGB input) far below
its peak. The loops here skip the matrix and compute the convolution directly, a small
block of the output at a time, with the whole block held in CPU registers:

- :func:`conv_pixels` (forward, and the input gradient of a stride-1 convolution): a tile
  is ``JB`` neighbouring output pixels x ``FB`` filters; for every tap ``(u, v, c)`` of the
  kernel it loads ``JB`` input values and one row of ``FB`` weights and does ``JB * FB``
  multiply-adds. With ``JB = 6``, ``FB = 32`` that is 12 AVX-512 registers of float32 sums.
- :func:`input_grad_scatter`: the input gradient of a kernel with at most ``FB`` taps
  (a 3x3 kernel on RGB or grey images has 27 or 9): a tile is ``SJB`` output pixels x the
  ``FB`` taps of their windows, ``dz[pixel] @ w2d.T``, then added onto the input pixels.
- :func:`weight_grad`: a tile is ``KB`` taps x ``FB`` filters of the kernel gradient,
  summed over every output pixel of a few image rows.

The tile lives in a small array on the stack (:func:`_stack_array`): nothing else can point
into it, so LLVM keeps it in registers for the whole loop over taps or pixels (a NumPy
array made with ``np.empty`` lives on the heap, and LLVM reloads and stores it at every
step). The innermost loop runs over the ``FB`` filters, which
LLVM turns into vector instructions because ``FB`` is a constant.

What else made a difference (measured: ``benchmarks/RESULTS.md``, "What made the Numba path fast"):

- Indices into the flattened arrays are unsigned (``np.uint64``): Numba then drops its test
  for negative (wrap-around) indices, a few instructions per load.
- A tile's pixels advance by counters, not by a division per pixel (and a tile may run on into
  the next image row, so no tile is wasted at the end of a row).
- Numba runs LLVM's loop vectorizer but not its SLP vectorizer, after fully unrolling small
  constant loops: a loop over ``FB`` alone (zeroing a tile) becomes 32 scalar instructions.
  Only loops with a body big enough (``FB`` with the ``JB`` or ``KB`` loop inside) stay loops
  and get vectorized. So tile sizes are chosen by measurement, and speed is not monotonic in them.

Sums are taken in a fixed order (taps in ``(u, v, c)`` order for an output; pixels in row
order for a kernel gradient), so results do not depend on the thread count. ``fastmath``
allows only ``contract``: a multiply and an add may become one fused multiply-add (one
rounding instead of two); nothing is reordered and NaN and inf behave as usual.
"""

import llvmlite.binding as llvm
import numpy as np
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic

from ._runtime import CACHE_OK


def _avx512():
    """True if Numba compiles for AVX-512 (32 vector registers of 16 floats), else AVX2 or less (16 of 8).

    Numba's own rule: ``NUMBA_CPU_FEATURES`` when set, else the host CPU's features.
    """
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else llvm.get_host_cpu_features().flatten()
    return "+avx512f" in features


# Tile sizes, measured best on the AVX-512 machine of benchmarks/RESULTS.md; the AVX2 ones by
# compiling for Haswell there (NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=''): AVX2's 16
# registers cannot hold an AVX-512 tile. (Numba's cache is per CPU target: each compiles its own.)
FB = 32  # filters per tile: two AVX-512 registers (four AVX2 ones) of float32
JB = 6 if _avx512() else 3  # output pixels per forward tile: JB * FB / 16 = 12 AVX-512 registers of sums
# kernel taps per weight-gradient tile: KB * FB / 16 = 18 AVX-512 registers of sums (a 3x3 kernel row
# of RGB); with AVX2, 9 taps need 36 registers of 16 and spill: 3 taps (12) measured fastest there
KB = 9 if _avx512() else 3
SJB = 4 if _avx512() else 2  # output pixels per tile of the small kernels' input gradient
CHUNK_PIXELS = 2048  # weight_grad sums this many output pixels (image rows) per pass over the taps


def fits(n_filters):
    """True if the tiles cover ``n_filters`` exactly (a multiple of ``FB``)."""
    return n_filters > 0 and n_filters % FB == 0


def _stack_array(size):
    """A jitted ``f(dtype)`` returning a pointer to ``size`` uninitialised values on the stack.

    Wrap it with ``carray`` to index it. Numba has no stack arrays for the CPU (only
    ``cuda.local.array``), so this allocates one (an LLVM ``alloca``) with an intrinsic.
    With ``NUMBA_DISABLE_JIT=1`` (plain Python, for a debugger) a NumPy array stands in for it.
    """
    if config.DISABLE_JIT:
        return lambda dtype: np.empty(size, dtype)

    @intrinsic
    def stack(typingctx, dtype):
        def codegen(context, builder, signature, args):
            value_type = context.get_value_type(dtype.dtype)
            return cgutils.alloca_once(builder, value_type, size=context.get_constant(types.intp, size))

        return types.CPointer(dtype.dtype)(dtype), codegen

    return stack


if config.DISABLE_JIT:
    def carray(array, shape):
        """Plain Python's stand-in for ``numba.carray``: the array above, in that shape."""
        return array.reshape(shape)
else:
    from numba import carray


_tile_of_outputs = _stack_array(JB * FB)
_tile_of_inputs = _stack_array(JB)
_pixel_corners = _stack_array(JB)
_tile_of_taps = _stack_array(KB * FB)
_scatter_tile = _stack_array(SJB * FB)
_scatter_inputs = _stack_array(SJB)
_scatter_corners = _stack_array(SJB)
_scatter_sources = _stack_array(SJB)
_tap_offsets = _stack_array(KB)

TILE_OPTIONS = dict(cache=CACHE_OK, nogil=True, fastmath={"contract"}, error_model="numpy", boundscheck=False)


def pack(w2d):
    """``(K, F)`` kernel matrix -> ``(F // FB, K, FB)``: each tile's weights contiguous."""
    K, F = w2d.shape
    return np.ascontiguousarray(w2d.reshape(K, F // FB, FB).transpose(1, 0, 2))


def tap_offsets(kernel_hw, dilation, padded_width, channels):
    """Offset of tap ``(u, v, c)`` from a window's corner in a flattened ``(HP, WP, C)`` image."""
    (KH, KW), (DH, DW) = kernel_hw, dilation
    u, v, c = np.meshgrid(np.arange(KH), np.arange(KW), np.arange(channels), indexing="ij")
    return ((DH * u * padded_width + DW * v) * channels + c).reshape(-1).astype(np.int64)


@njit(inline="always")
def _pixel(t, OH, OW):
    """``(n, i, j)`` of output pixel ``t = (n*OH + i)*OW + j``."""
    n = t // (OH * OW)
    i = (t - n * OH * OW) // OW
    return n, i, t - (n * OH + i) * OW


@njit(inline="always")
def _next_pixel(n, i, j, OH, OW):
    """The pixel after ``(n, i, j)``, by counting (a division per pixel cost 10-30%)."""
    j += 1
    if j == OW:
        j = 0
        i += 1
        if i == OH:
            i = 0
            n += 1
    return n, i, j


@njit(**TILE_OPTIONS)
def conv_pixels(xf, wp, bp, koff, g, y2, t0, t1, relu):
    """Output pixels ``t0 <= t < t1`` (``t = (n*OH + i)*OW + j``) of a convolution of padded input.

    xf   : (N*HP*WP*C,), the input with its padding added, flattened
    wp   : (F // FB, K, FB), the kernel packed by :func:`pack`, K = KH*KW*C
    bp   : (F // FB, FB), the bias
    koff : (K,), from :func:`tap_offsets`
    g    : (OH, OW, SH, SW, HP*WP*C, WP*C, C)
    y2   : (N*OH*OW, F), written: ``y[n, i, j, f] = b[f] + sum_{u,v,c} w[u,v,c,f] *
           xp[n, SH*i + DH*u, SW*j + DW*v, c]``, then ``max(y, 0)`` if ``relu``.

    A tile is JB pixels in a row of ``y2``; it may run on into the next image row or image.
    """
    OH, OW, SH, SW, IMAGE, WPC, C = g
    F = y2.shape[1]
    K = koff.shape[0]
    acc = carray(_tile_of_outputs(xf.dtype), (JB, FB))
    xs = carray(_tile_of_inputs(xf.dtype), (JB,))
    corner = carray(_pixel_corners(np.uint64), (JB,))  # where each pixel's window starts in xf
    zero = xf.dtype.type(0)
    for fb in range(F // FB):
        n, i, j = _pixel(t0, OH, OW)
        for s in range(t0, t1, JB):
            for jj in range(JB):
                corner[jj] = np.uint64(n * IMAGE + SH * i * WPC + SW * j * C)
                if s + jj + 1 < t1:  # a last, short tile repeats its last pixel
                    n, i, j = _next_pixel(n, i, j, OH, OW)
            for f in range(FB):  # vectorised; a loop over FB alone would be unrolled to scalars
                bf = bp[fb, f]
                for jj in range(JB):
                    acc[jj, f] = bf
            for k in range(K):
                offset = np.uint64(koff[k])  # unsigned indices: no test for negative ones
                for jj in range(JB):
                    xs[jj] = xf[corner[jj] + offset]
                for f in range(FB):  # vectorised: FB filters side by side
                    wf = wp[fb, k, f]
                    for jj in range(JB):
                        acc[jj, f] += xs[jj] * wf
            if s + JB <= t1:  # a whole tile: vectorised stores
                for f in range(FB):
                    for jj in range(JB):
                        a = acc[jj, f]
                        y2[s + jj, fb * FB + f] = zero if relu and a < zero else a  # NaN stays NaN
            else:
                for jj in range(t1 - s):
                    for f in range(FB):
                        a = acc[jj, f]
                        y2[s + jj, fb * FB + f] = zero if relu and a < zero else a


def small_kernel(kernel_hw, channels):
    """True if :func:`input_grad_scatter` serves the kernel: ``KH*KW*C <= FB`` taps."""
    return 0 < kernel_hw[0] * kernel_hw[1] * channels <= FB


@njit(**TILE_OPTIONS)
def input_grad_scatter(dzf, wt, koff, g, dxf, t0, t1):
    """Add the input gradient of output pixels ``t0 <= t < t1`` into a padded ``dx`` (flattened).

    dzf  : (N*OH*OW*F,), the output gradient, flattened
    wt   : (F, FB), ``w.reshape(K, F).T`` with zero columns after the K = KH*KW*C taps
    koff : (K,), from :func:`tap_offsets` for the padded input
    g    : (OH, OW, SH, SW, HP*WP*C, WP*C, C, F)
    dxf  : (N*HP*WP*C,), ``dx`` with room for the padding, flattened: for each pixel,
           ``g = dz[n, i, j, :] @ wt`` is the gradient of the K values of its window, and
           ``g[k]`` is added where tap k of the window sits. Pixels are taken in order, so each
           input value adds up its contributions in a fixed order.
    """
    OH, OW, SH, SW, IMAGE, WPC, C, F = g
    K = koff.shape[0]
    acc = carray(_scatter_tile(dzf.dtype), (SJB, FB))
    ds = carray(_scatter_inputs(dzf.dtype), (SJB,))
    corner = carray(_scatter_corners(np.uint64), (SJB,))  # where each pixel's window starts in dxf
    source = carray(_scatter_sources(np.uint64), (SJB,))  # where each pixel's gradient starts in dzf
    n, i, j = _pixel(t0, OH, OW)
    for s in range(t0, t1, SJB):
        for jj in range(SJB):
            corner[jj] = np.uint64(n * IMAGE + SH * i * WPC + SW * j * C)
            source[jj] = np.uint64(min(s + jj, t1 - 1) * F)
            if s + jj + 1 < t1:  # a last, short tile repeats its last pixel
                n, i, j = _next_pixel(n, i, j, OH, OW)
        for k in range(FB):  # vectorised (see conv_pixels)
            for jj in range(SJB):
                acc[jj, k] = 0
        for f in range(F):
            for jj in range(SJB):
                ds[jj] = dzf[source[jj] + np.uint64(f)]
            for k in range(FB):  # vectorised
                wk = wt[f, k]
                for jj in range(SJB):
                    acc[jj, k] += ds[jj] * wk
        for jj in range(min(SJB, t1 - s)):
            for k in range(K):
                dxf[corner[jj] + np.uint64(koff[k])] += acc[jj, k]


@njit(**TILE_OPTIONS)
def weight_grad(xp, koff, dz, top, left, g, n0, n1, dw):
    """Add the kernel gradient of the images ``n0:n1`` into ``dw``.

    xp   : (N, HP*WP*C), the padded forward input, each image flattened
    koff : (K,), from :func:`tap_offsets`, K = KH*KW*C
    dz   : (N, ., ., F); the output gradient ``dz[n, i, j]`` is read at ``dz[n, top + i, left + j]``
    g    : (SH, SW, WP*C, C, OH, OW)
    dw   : (K, F), ``dw[k, f] += sum_{n, i, j} xp[n, SH*i, SW*j][k] * dz[n, i, j, f]``

    The output rows ``n*OH + i`` are taken ``CHUNK_PIXELS`` pixels at a time (several small
    images, or a few rows of a big one), so that the chunk of ``dz`` stays in cache while
    every tile of taps passes over it, and a tile is written out once per chunk.
    """
    SH, SW, WPC, C, OH, OW = g
    F = dz.shape[3]
    K = koff.shape[0]
    acc = carray(_tile_of_taps(xp.dtype), (KB, FB))
    xo = carray(_tap_offsets(np.uint64), (KB,))  # unsigned: no test for negative indices
    per_image = OH * OW
    images = max(1, CHUNK_PIXELS // per_image)  # whole images per chunk, or
    rows = OH if images > 1 else max(1, CHUNK_PIXELS // OW)  # rows of one image per chunk
    for m0 in range(n0, n1, images):
        m1 = min(n1, m0 + images)
        for i0 in range(0, OH, rows):
            i1 = min(OH, i0 + rows)
            for fb in range(F // FB):
                f0 = fb * FB
                for k0 in range(0, K, KB):
                    kb = min(KB, K - k0)  # the last tile may be narrower: it repeats a tap
                    for kk in range(KB):
                        xo[kk] = np.uint64(koff[k0 + min(kk, kb - 1)])
                    for f in range(FB):
                        for kk in range(KB):
                            acc[kk, f] = 0
                    for n in range(m0, m1):
                        image = xp[n]
                        for i in range(i0, i1):
                            for j in range(OW):
                                corner = np.uint64(SH * i * WPC + SW * j * C)
                                for f in range(FB):  # vectorised
                                    d = dz[n, top + i, left + j, f0 + f]
                                    for kk in range(KB):
                                        acc[kk, f] += image[corner + xo[kk]] * d
                    for kk in range(kb):
                        for f in range(FB):
                            dw[k0 + kk, f0 + f] += acc[kk, f]


@njit(**TILE_OPTIONS)
def pad(x, n0, n1, out, top, left):
    """``out[n] = x[n]`` placed at ``(top, left)`` in zeros, for the images ``n0:n1``."""
    _, H, W, C = x.shape
    _, HP, WP, _ = out.shape
    zero = out.dtype.type(0)
    for n in range(n0, n1):
        for p in range(HP):
            i = p - top
            for q in range(WP):
                j = q - left
                inside = 0 <= i < H and 0 <= j < W
                for c in range(C):
                    out[n, p, q, c] = x[n, i, j, c] if inside else zero


@njit(**TILE_OPTIONS)
def relu_grad_pad(dy, y, masked, n0, n1, out, top, left, db):
    """``out[n]`` = ``dz[n] = dy[n] * (y[n] > 0)`` (``dy[n]`` unless ``masked``) placed at
    ``(top, left)`` in zeros, for the images ``n0:n1``; and ``db += dz.sum(axis=(0, 1, 2))``.

    db : (F,), the bias gradient: the sum of ``dz`` over the images' pixels, in pixel order.
    """
    _, OH, OW, F = dy.shape
    _, HP, WP, _ = out.shape
    zero = out.dtype.type(0)
    for n in range(n0, n1):
        for p in range(HP):
            i = p - top
            for q in range(WP):
                j = q - left
                if 0 <= i < OH and 0 <= j < OW:
                    for f in range(F):
                        d = dy[n, i, j, f]
                        if masked and not y[n, i, j, f] > zero:
                            d = zero
                        out[n, p, q, f] = d
                        db[f] += d
                else:
                    for f in range(F):
                        out[n, p, q, f] = zero


@njit(**TILE_OPTIONS)
def column_sums(dz, n0, n1, db):
    """``db += dz[n0:n1].sum(axis=(0, 1, 2))``, pixel after pixel."""
    _, OH, OW, F = dz.shape
    for n in range(n0, n1):
        for i in range(OH):
            for j in range(OW):
                for f in range(F):
                    db[f] += dz[n, i, j, f]
