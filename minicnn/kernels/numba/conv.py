"""Convolution: the public kernels, and the register-tile route they take for 32, 64, ... filters.

Same signatures and results as ``reference.py`` (the tests hold them to it). Each public
function validates its arguments, builds the call's :class:`ConvGeometry` once, and picks a
route (the table is in ``minicnn/kernels/numba/__init__.py``): the register tiles of
``tiles.py`` driven from here, or the im2col route of ``im2col.py``.

The backward pass is one call, :func:`conv2d_backward`, which applies ReLU's derivative (the
conv + ReLU fusion) and skips the input gradient for a model's first layer.
"""

import math

import numpy as np

from ..shapes import check_activation, check_float, check_output_shape, conv2d_geometry
from . import im2col, tiles
from ._buffers import POOL, fill_zero
from ._threads import LANES, PARTS, split


def conv2d_forward(x, w, b, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), activation=None):
    """Cross-correlate a batch of NHWC images with a bank of filters (tiles, or im2col + BLAS).

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), float32 or float64
    w : ndarray of shape (KH, KW, C, F)
    b : ndarray of shape (F,), or None for no bias
    strides : (SH, SW)
    padding : ((pad_top, pad_bottom), (pad_left, pad_right)), zeros added around x
    dilation : (DH, DW)
    activation : None or 'relu'
        'relu' returns ``max(y, 0)``, applied to each chunk of ``y`` as soon as it is computed.

    Returns
    -------
    y : ndarray of shape (N, OH, OW, F), dtype of x, where
        ``OH = (H + pad_top + pad_bottom - ((KH - 1) * DH + 1)) // SH + 1`` (OW likewise)

    Notes
    -----
    With xp the zero-padded input::

        y[n, i, j, f] = b[f] + sum_{u, v, c} w[u, v, c, f] * xp[n, SH*i + DH*u, SW*j + DW*v, c]

    computed by the register tiles for a multiple of 32 filters, else by im2col and one BLAS
    product per chunk of images (the route table: ``minicnn/kernels/numba/__init__.py``).
    """
    check_float("conv2d_forward", "x", x)
    g = conv2d_geometry("conv2d_forward", x.shape, w.shape, strides, padding, dilation)
    check_activation("conv2d_forward", activation)
    relu = activation == "relu"
    x = np.ascontiguousarray(x)
    if tiles.fits(w.shape[-1]):
        return _forward_tiled(x, w, b, g, relu)
    return im2col.forward(x, w, b, g, relu)


def conv2d_backward_input(dy, w, x_shape, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1)):
    """Gradient of a loss with respect to the input of :func:`conv2d_forward` (tiles, scatter or col2im).

    Parameters
    ----------
    dy : ndarray of shape (N, OH, OW, F), the gradient with respect to y
    w : ndarray of shape (KH, KW, C, F)
    x_shape : (N, H, W, C), the shape of the forward input
    strides, padding, dilation : as in the forward call

    Returns
    -------
    dx : ndarray of shape (N, H, W, C), dtype of dy

    Notes
    -----
    ::

        dx[n, p, q, c] = sum_{i, j, u, v, f} dy[n, i, j, f] * w[u, v, c, f]
                         over SH*i + DH*u = p + pad_top  and  SW*j + DW*v = q + pad_left

    computed by the route of :func:`input_grad_route`: the register tiles, the scatter of
    small kernels, or ``dcols = dy2d @ w2d.T`` added back by col2im (contributions that fall on
    the padding are dropped).
    """
    check_float("conv2d_backward_input", "dy", dy)
    g = conv2d_geometry("conv2d_backward_input", x_shape, w.shape, strides, padding, dilation)
    check_output_shape("conv2d_backward_input", "dy", dy.shape, (x_shape[0], g.OH, g.OW, w.shape[3]))
    dy = np.ascontiguousarray(dy)
    if input_grad_route(g, x_shape[-1]) == "col2im":
        dx, _, _ = im2col.backward(dy, None, w, None, g, tuple(x_shape), need_dx=True, need_dw=False)
    else:
        dx, _, _ = _backward_direct(dy, None, w, None, g, tuple(x_shape), need_dx=True, need_dw=False)
    return dx


def conv2d_backward_weights(x, dy, kernel_size, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1)):
    """Gradients of a loss with respect to the kernel and bias of :func:`conv2d_forward`.

    Parameters
    ----------
    x : ndarray of shape (N, H, W, C), the forward input
    dy : ndarray of shape (N, OH, OW, F), the gradient with respect to y
    kernel_size : (KH, KW)
    strides, padding, dilation : as in the forward call

    Returns
    -------
    dw : ndarray of shape (KH, KW, C, F), dtype of x
    db : ndarray of shape (F,), dtype of x

    Notes
    -----
    ::

        dw[u, v, c, f] = sum_{n, i, j} dy[n, i, j, f] * xp[n, SH*i + DH*u, SW*j + DW*v, c]
        db[f]          = sum_{n, i, j} dy[n, i, j, f]

    computed by the register tiles for a multiple of 32 filters, else as ``cols.T @ dy2d``
    (one BLAS call per chunk of images); the parts' sums are added in a fixed order.
    """
    check_float("conv2d_backward_weights", "x", x)
    (KH, KW), C, F = kernel_size, x.shape[-1], dy.shape[-1]
    g = conv2d_geometry("conv2d_backward_weights", x.shape, (KH, KW, C, F), strides, padding, dilation)
    check_output_shape("conv2d_backward_weights", "dy", dy.shape, (x.shape[0], g.OH, g.OW, F))
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    if tiles.fits(F):
        _, dw, db = _backward_direct(dy, None, None, _padded(x, g), g, x.shape, need_dx=False, need_dw=True)
    else:
        _, dw, db = im2col.backward(dy, None, None, x, g, x.shape, need_dx=False, need_dw=True)
    return dw, db


def conv2d_backward(dy, x, w, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), relu_output=None,
                    input_gradient=True):
    """All the gradients of :func:`conv2d_forward` in one pass over ``dy``: ``(dx, dw, db)``.

    Parameters
    ----------
    dy : ndarray of shape (N, OH, OW, F), the gradient with respect to the layer's output
    x : ndarray of shape (N, H, W, C), the forward input
    w : ndarray of shape (KH, KW, C, F)
    strides, padding, dilation : as in the forward call
    relu_output : ndarray of shape (N, OH, OW, F) or None
        The output of ``conv2d_forward(..., activation='relu')``: then ``dy`` is the gradient
        with respect to ``max(z, 0)`` and is first multiplied by ReLU's derivative ``y > 0``.
    input_gradient : bool
        False skips ``dx`` (returned as None): a model's first layer needs no input gradient.

    Returns
    -------
    dx : ndarray of shape (N, H, W, C), or None;  dw : (KH, KW, C, F);  db : (F,); dtype of x

    Notes
    -----
    With ``dz = dy * (relu_output > 0)`` (or ``dz = dy``), :func:`conv2d_backward_input` and
    :func:`conv2d_backward_weights` of ``dz``. Done here one chunk of images at a time, so the
    masked ``dz`` and the im2col matrices only ever exist for one cache-sized chunk.
    """
    check_float("conv2d_backward", "x", x)
    g = conv2d_geometry("conv2d_backward", x.shape, w.shape, strides, padding, dilation)
    check_output_shape("conv2d_backward", "dy", dy.shape, (x.shape[0], g.OH, g.OW, w.shape[3]))
    if relu_output is not None:
        check_output_shape("conv2d_backward", "relu_output", relu_output.shape, dy.shape)
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    if relu_output is not None:
        relu_output = np.ascontiguousarray(relu_output, dtype=x.dtype)
    if tiles.fits(w.shape[-1]):
        return _backward_direct(dy, relu_output, w, _padded(x, g), g, x.shape, need_dx=input_gradient, need_dw=True)
    return im2col.backward(dy, relu_output, w, x, g, x.shape, need_dx=input_gradient, need_dw=True)


# ----------------------------------------------------------------------------------------
# The register-tile route (tiles.py), for 32, 64, ... filters
# ----------------------------------------------------------------------------------------


def _padded(x, g):
    """``x`` with the zero padding of geometry ``g`` added (``x`` itself when there is none)."""
    PT, PB, PL, PR = g.PT, g.PB, g.PL, g.PR
    if PT == PB == PL == PR == 0:
        return x
    N, H, W, C = x.shape
    xp = POOL.empty("conv2d.xp", (N, H + PT + PB, W + PL + PR, C), x.dtype)
    images = split(N, PARTS)
    LANES.run(lambda k: tiles.pad(x, *images[k], xp, PT, PL), PARTS, xp.size)
    return xp


def _forward_tiled(x, w, b, g, relu):
    """:func:`conv2d_forward` by :func:`tiles.conv_pixels`, the output pixels split over the lanes."""
    KH, KW, SH, SW, DH, DW, _, _, _, _, OH, OW = g
    N, C, F = x.shape[0], x.shape[-1], w.shape[-1]
    xp = _padded(x, g)
    wp = tiles.pack(np.asarray(w, dtype=x.dtype).reshape(KH * KW * C, F))
    bias = np.zeros(F, x.dtype) if b is None else np.asarray(b, dtype=x.dtype)
    bp = bias.reshape(F // tiles.FB, tiles.FB)
    y = POOL.empty("conv2d.y", (N, OH, OW, F), x.dtype)
    _conv_pixels(xp, wp, bp, (KH, KW), (SH, SW), (DH, DW), y, relu)
    return y


def input_grad_route(g, channels):
    """How the input gradient is computed for geometry ``g``: 'tiles', 'scatter' or 'col2im'.

    'tiles': a stride-1 convolution with a multiple of 32 channels, whose padding is at most the
    kernel's span; dx is then a 'valid' convolution of dz, padded, by the flipped kernel.
    'scatter': a kernel of at most 32 taps (a 3x3 kernel on RGB or grey images), any strides.
    """
    KH, KW, SH, SW, DH, DW, PT, PB, PL, PR, _, _ = g
    # 'tiles' also multiplies the zeros around dz, and is still faster than col2im (RESULTS.md)
    if tiles.fits(channels) and SH == SW == 1 and max(PT, PB) <= DH * (KH - 1) and max(PL, PR) <= DW * (KW - 1):
        return "tiles"
    return "scatter" if tiles.small_kernel((KH, KW), channels) else "col2im"


def _conv_pixels(xp, wp, bp, kernel_hw, strides, dilation, y, relu):
    """``y`` = the convolution of padded ``xp`` by :func:`tiles.conv_pixels`, pixels split over the lanes."""
    N, HP, WP, C = xp.shape
    _, OH, OW, F = y.shape
    koff = tiles.tap_offsets(kernel_hw, dilation, WP, C)
    g = (OH, OW, *strides, HP * WP * C, WP * C, C)
    pixels = split(N * OH * OW, PARTS)
    xf, y2 = xp.reshape(-1), y.reshape(-1, F)
    LANES.run(lambda k: tiles.conv_pixels(xf, wp, bp, koff, g, y2, *pixels[k], relu), PARTS, y.size * len(koff))


def _backward_direct(dy, y, w, xp, g, x_shape, need_dx, need_dw):
    """``(dx, dw, db)`` (None where not needed) without im2col; ``xp`` is x padded (for dw).

    dw needs a multiple of 32 filters. Per part of the images, a cache-sized chunk of images
    at a time: ``dz = dy * (y > 0)`` (when ``y`` is given) is written once, padded when dx is
    computed by the tiles, with db summed on the way; the kernel gradient tiles read it, and
    dx of the chunk follows (see :func:`input_grad_route`) while it is still in cache. So
    ``dz`` only ever exists for a few images per lane (except on the col2im route). The parts'
    ``[dw; db]`` are added in part order.
    """
    KH, KW, SH, SW, DH, DW, PT, PB, PL, PR, OH, OW = g
    N, H, W, C = x_shape
    F, dtype = dy.shape[-1], dy.dtype
    K = KH * KW * C
    route = input_grad_route(g, C) if need_dx else None
    top, left, dz_hw = 0, 0, (OH, OW)
    if route == "tiles":  # dx[n, p, q] = sum_{u,v,f} dzp[n, p + DH*u, q + DW*v, f] * w[KH-1-u, KW-1-v, :, f]
        top, left = DH * (KH - 1) - PT, DW * (KW - 1) - PL
        dz_hw = (H + DH * (KH - 1), W + DW * (KW - 1))
        flipped = tiles.pack(np.asarray(w, dtype=dtype)[::-1, ::-1].transpose(0, 1, 3, 2).reshape(KH * KW * F, C))
        no_bias = np.zeros((C // tiles.FB, tiles.FB), dtype)
        dx_taps = tiles.tap_offsets((KH, KW), (DH, DW), dz_hw[1], F)
        dx_geometry = (H, W, 1, 1, dz_hw[0] * dz_hw[1] * F, dz_hw[1] * F, F)
    elif route == "scatter":  # each pixel's dz @ w2d.T added onto its window, in a padded dx
        wt = np.zeros((F, tiles.FB), dtype)
        wt[:, :K] = np.asarray(w, dtype=dtype).reshape(K, F).T
        HP, WP = H + PT + PB, W + PL + PR
        dxp = POOL.empty("conv2d.dxp", (N, HP, WP, C), dtype) if (HP, WP) != (H, W) else None
        dx_taps = tiles.tap_offsets((KH, KW), (DH, DW), WP, C)
        dx_geometry = (OH, OW, SH, SW, HP * WP * C, WP * C, C, F)
    dx = POOL.empty("conv2d.dx", tuple(x_shape), dtype) if route in ("tiles", "scatter") else None
    if need_dw:
        koff = tiles.tap_offsets((KH, KW), (DH, DW), xp.shape[2], C)
        flat = xp.reshape(N, math.prod(xp.shape[1:]))  # (not -1: N may be 0)
        dw_geometry = (SH, SW, xp.shape[2] * C, C, OH, OW)
    masked = y is not None
    copy = masked or route == "tiles"  # otherwise dz is dy itself
    whole = route == "col2im"  # col2im takes dz of all the images at the end
    step = N if whole else im2col.images_per_chunk(N, dz_hw[0] * dz_hw[1] * F * dtype.itemsize)
    full = POOL.empty("conv2d.dz", dy.shape, dtype) if whole and copy else None
    images = split(N, PARTS)

    def part(k):  # part k owns the images n0:n1 of dz and dx, and returns their [dw; db]
        n0, n1 = images[k]
        dwb = np.zeros((K + 1, F), dtype)
        buffer = None
        if route == "scatter":
            fill_zero((dx if dxp is None else dxp)[n0:n1].reshape(-1))  # the scatter adds into it
        for c0 in range(n0, n1, step):
            c1 = min(n1, c0 + step)
            if not copy:
                dz = dy[c0:c1]
                if need_dw:
                    tiles.column_sums(dz, 0, c1 - c0, dwb[K])
            else:
                if full is not None:
                    dz = full[c0:c1]
                else:
                    if buffer is None:  # one per part, reused for its chunks
                        buffer = POOL.empty("conv2d.dz_chunk", (min(step, n1 - n0), *dz_hw, F), dtype)
                    dz = buffer[: c1 - c0]
                tiles.relu_grad_pad(dy[c0:c1], (y if masked else dy)[c0:c1], masked, 0, c1 - c0, dz, top, left, dwb[K])
            if need_dw:
                tiles.weight_grad(flat[c0:c1], koff, dz, top, left, dw_geometry, 0, c1 - c0, dwb[:K])
            if route == "tiles":
                tiles.conv_pixels(dz.reshape(-1), flipped, no_bias, dx_taps, dx_geometry,
                                  dx[c0:c1].reshape(-1, C), 0, (c1 - c0) * H * W, False)
            elif route == "scatter":
                tiles.input_grad_scatter(dz.reshape(-1), wt, dx_taps, dx_geometry,
                                         (dx if dxp is None else dxp)[c0:c1].reshape(-1), 0, (c1 - c0) * OH * OW)
        if route == "scatter" and dxp is not None:
            dx[n0:n1] = dxp[n0:n1, PT : PT + H, PL : PL + W]
        return dwb

    dwb = None
    for part_dwb in LANES.run(part, PARTS, N * OH * OW * K):  # in part order: the same sums for any thread count
        dwb = part_dwb if dwb is None else dwb + part_dwb
    if route == "col2im":
        dx, _, _ = im2col.backward(dy if full is None else full, None, w, None, g, x_shape, need_dx=True, need_dw=False)
    if not need_dw:
        return dx, None, None
    return dx, dwb[:K].reshape(KH, KW, C, F), dwb[K].copy()


