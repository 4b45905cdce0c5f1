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
# # 1. Convolution by hand
#
# A convolutional layer slides a small grid of weights over an image and, at every position, takes a
# dot product. That is the whole idea; everything else (padding, stride, channels, filters) is
# bookkeeping around it. In this notebook we compute convolutions on numbers small enough to check
# in your head, then hand the same numbers to minicnn and see that it agrees.
#
# **What you will learn**
#
# - what one output pixel of a 2-D convolution is, and how to compute it with a pencil;
# - the output-size formula, and what `'valid'` padding, `'same'` padding and a stride do to it;
# - how images with channels and banks of filters fit together in the NHWC layout
#   (`x: (N, H, W, C)`, `kernel: (KH, KW, C, F)`);
# - how minicnn's readable reference kernel computes the same thing with a few matrix products,
#   and that `minicnn.layers.Conv2D` gives the same numbers;
# - how a hand-made filter finds the edges in a real photo.

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np

import minicnn
from minicnn import kernels
from minicnn.data import img_to_array, load_img
from minicnn.kernels import numba as fast
from minicnn.kernels import reference
from minicnn.layers import Conv2D

SMOKE = os.environ.get("MINICNN_SMOKE") == "1"   # CI sets it: smaller sizes, same code
np.set_printoptions(precision=3, suppress=True)
print("minicnn", minicnn.__version__, "| backend:", minicnn.get_backend(), "| smoke mode:", SMOKE)

# %% [markdown]
# ## 1.1 One output pixel
#
# Take a 5×5 grey image `x` and a 3×3 kernel `w`. Put the kernel on the top-left corner of the
# image, multiply the nine pairs of numbers that lie on top of each other, and add them up. That
# sum is the first output pixel. Move the kernel one pixel to the right and do it again; when the
# row is done, go down one row. For a one-channel image and one filter:
#
# $$
# y_{i,j} \;=\; b + \sum_{u=0}^{K_H-1} \sum_{v=0}^{K_W-1} w_{u,v}\; x_{i+u,\; j+v}
# $$
#
# Deep-learning libraries (Keras, PyTorch, minicnn) compute exactly this, which mathematicians call
# a *cross-correlation*: the kernel is not flipped. A "true" convolution would use
# $w_{K_H-1-u,\,K_W-1-v}$; since the weights are learned, the flip makes no difference to what a
# network can do, so nobody pays for it.

# %%
x = np.array([[3, 0, 1, 2, 7],
              [1, 5, 8, 9, 3],
              [2, 7, 2, 5, 1],
              [0, 1, 3, 1, 7],
              [4, 2, 1, 6, 2]], dtype=np.float64)
w = np.array([[1, 0, -1],
              [1, 0, -1],
              [1, 0, -1]], dtype=np.float64)   # left column minus right column

patch = x[0:3, 0:3]                            # the 3x3 window under the kernel at (i, j) = (0, 0)
print("patch =\n", patch)
print("patch * w =\n", patch * w)
print("y[0, 0] = sum =", np.sum(patch * w))

# %% [markdown]
# By hand: the left column of the patch adds up to $3+1+2=6$, the right column to $1+8+2=11$, so
# $y_{0,0} = 6 - 11 = -5$. A 3×3 kernel fits into a 5×5 image at 3 positions per row and 3 per
# column, so the output is 3×3. Here is every output pixel, straight from the definition:

# %%
y_by_hand = np.array([[np.sum(x[i:i + 3, j:j + 3] * w) for j in range(3)] for i in range(3)])
print(y_by_hand)

# %% [markdown]
# Now the same with minicnn's reference kernel, `minicnn.kernels.reference.conv2d_forward`. It works
# on batches of multi-channel images, so the 5×5 image becomes an array of shape
# `(N, H, W, C) = (1, 5, 5, 1)` and the kernel one of shape `(KH, KW, C, F) = (3, 3, 1, 1)`:
# one input channel, one filter. `None` means "no bias".

# %%
y_ref = reference.conv2d_forward(x[None, :, :, None], w[:, :, None, None], None)
print("input", x[None, :, :, None].shape, "kernel", w[:, :, None, None].shape, "-> output", y_ref.shape)
print(y_ref[0, :, :, 0])
assert np.array_equal(y_ref[0, :, :, 0], y_by_hand)

# %% [markdown]
# ### The same sum, the other way round
#
# The definition loops over output pixels $(i, j)$ and sums over kernel taps $(u, v)$. Swap the two:
# for one tap $(u, v)$, *every* output pixel reads the input shifted by $(u, v)$, scaled by the same
# weight $w_{u,v}$. So the output is a weighted sum of 9 shifted copies of the image,
#
# $$ y = \sum_{u,v} w_{u,v}\; x[u:u+O_H,\; v:v+O_W], $$
#
# and each term is one big array operation instead of many small ones. This is how the reference
# kernel is written (with a matrix product over channels for each tap); read it below.

# %%
y_shift_and_add = sum(w[u, v] * x[u:u + 3, v:v + 3] for u in range(3) for v in range(3))
assert np.array_equal(y_shift_and_add, y_by_hand)
print(inspect.getsource(reference.conv2d_forward))

# %% [markdown]
# ## 1.2 Output size, padding and stride
#
# Along one axis, an image of $H$ pixels, padded with $P_\text{top}$ and $P_\text{bottom}$ zeros, a
# kernel of $K$ taps and a stride of $S$ (the step between two positions of the kernel) give
#
# $$ O_H = \left\lfloor \frac{H + P_\text{top} + P_\text{bottom} - K}{S} \right\rfloor + 1 . $$
#
# - **`'valid'`**: no padding; the kernel only goes where it fits entirely, so $O_H = H - K + 1$ at
#   stride 1. Every layer shrinks the image by $K-1$ pixels.
# - **`'same'`**: pad so that $O_H = \lceil H / S \rceil$; at stride 1 the output has the size of
#   the input. The total padding is $\max((O_H-1)S + K - H,\ 0)$; when it is odd, Keras, minicnn
#   and PyTorch (whose `padding='same'` allows only stride 1) all put the extra zero at the
#   bottom/right. The total depends on the stride: $H = 6$, $K = 3$ pads $(1, 1)$ at stride 1 but
#   $(0, 1)$ at stride 2.
#
# `minicnn.kernels.output_size` is the formula and `minicnn.kernels.conv_padding` computes the
# padding; a `Conv2D` layer uses both in `compute_output_shape`.

# %%
print(f"{'H':>3} {'K':>2} {'S':>2} {'padding':>8} {'(top, bottom)':>14} {'O_H':>4} {'Conv2D says':>12}")
for H, K, S, padding in [(5, 3, 1, "valid"), (5, 3, 1, "same"), (5, 3, 2, "valid"), (5, 3, 2, "same"),
                         (6, 3, 2, "same"), (28, 5, 1, "valid"), (28, 4, 1, "same")]:
    pad = kernels.conv_padding(padding, (H, H), (K, K), (S, S))[0]
    out = kernels.output_size(H, K, S, pad)
    layer_out = Conv2D(1, K, strides=S, padding=padding).compute_output_shape((None, H, H, 1))
    print(f"{H:>3} {K:>2} {S:>2} {padding:>8} {str(pad):>14} {out:>4} {str(layer_out):>12}")
    assert layer_out[1] == out
assert kernels.conv_padding("same", (6, 6), (3, 3), (1, 1))[0] == (1, 1)
assert kernels.conv_padding("same", (6, 6), (3, 3), (2, 2))[0] == (0, 1)
assert kernels.conv_padding("same", (28, 28), (4, 4), (1, 1))[0] == (1, 2)   # odd total: the extra zero after

# %% [markdown]
# PyTorch agrees (if it is installed): a 4×4 kernel whose only nonzero tap is the top-left one,
# $w_{0,0} = 1$, copies $y_{i,j} = x^p_{i,j}$, so its output shows how many zero rows were put
# *before* the image: one, not two.

# %%
try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    picker = np.zeros((4, 4, 1, 1), dtype=np.float32)
    picker[0, 0] = 1.0
    image = np.arange(1.0, 37.0, dtype=np.float32).reshape(1, 6, 6, 1)
    ours = reference.conv2d_forward(image, picker, None, padding=kernels.conv_padding("same", (6, 6), (4, 4), (1, 1)))
    theirs = torch.nn.functional.conv2d(torch.from_numpy(image).permute(0, 3, 1, 2),
                                        torch.from_numpy(picker).permute(3, 2, 0, 1), padding="same")
    print("first two rows of the output (a copy of the padded image):\n", ours[0, :2, :, 0])
    np.testing.assert_array_equal(ours, theirs.permute(0, 2, 3, 1).numpy())
    assert np.all(ours[0, 0, :, 0] == 0) and np.array_equal(ours[0, 1, 1:, 0], image[0, 0, :5, 0])
else:
    print("PyTorch is not installed: skipped")

# %% [markdown]
# With `'same'` padding the 5×5 image gets a border of zeros, one pixel wide, and the 3×3 kernel
# then fits at 5×5 positions. The edge pixels now see some zeros, which is why the border of the
# output looks different from its middle.

# %%
same = kernels.conv_padding("same", (5, 5), (3, 3), (1, 1))
xp = reference.pad_hw(x[None, :, :, None], same)[0, :, :, 0]
print("padding", same, "-> padded image", xp.shape, "\n", xp)
y_same = reference.conv2d_forward(x[None, :, :, None], w[:, :, None, None], None, padding=same)[0, :, :, 0]
print("'same' output", y_same.shape, "\n", y_same)
assert np.array_equal(y_same[1:-1, 1:-1], y_by_hand)   # the inside is the 'valid' output

# %% [markdown]
# A stride of 2 moves the kernel two pixels at a time. With `'valid'` padding it computes every
# other pixel of the stride-1 output, no more: $y^{(S=2)}_{i,j} = y^{(S=1)}_{2i,\,2j}$.
# Strided convolutions are a cheap way to shrink feature maps.
#
# With `'same'` padding that holds only when the padding is the same at both strides. For $H = 6$
# it is not: stride 1 pads $(1, 1)$, stride 2 pads $(0, 1)$, so the stride-2 windows start one pixel
# further in, and the output is *not* every other pixel of the stride-1 `'same'` output.

# %%
y_s2 = reference.conv2d_forward(x[None, :, :, None], w[:, :, None, None], None, strides=(2, 2))[0, :, :, 0]
print("stride 2:", y_s2.shape, "\n", y_s2)
assert np.array_equal(y_s2, y_by_hand[::2, ::2])

x6 = np.arange(36.0).reshape(1, 6, 6, 1) % 7                   # a 6x6 image
w6 = w[:, :, None, None]
same_s1 = reference.conv2d_forward(x6, w6, None, padding=kernels.conv_padding("same", (6, 6), (3, 3), (1, 1)))
same_s2 = reference.conv2d_forward(x6, w6, None, strides=(2, 2),
                                   padding=kernels.conv_padding("same", (6, 6), (3, 3), (2, 2)))
print("'same', stride 2:\n", same_s2[0, :, :, 0], "\nevery other pixel of 'same', stride 1:\n", same_s1[0, ::2, ::2, 0])
assert not np.array_equal(same_s2, same_s1[:, ::2, ::2])
assert np.array_equal(same_s2, same_s1[:, 1::2, 1::2])         # the (0, 1) padding starts one pixel in

# %% [markdown]
# ## 1.3 Channels and filters: the layer
#
# A colour image has $C=3$ numbers per pixel, and a layer applies $F$ filters at once. Each filter
# spans all input channels, so the kernel has shape `(KH, KW, C, F)` and the output has one channel
# per filter. With the zero-padded input $x^p$ and strides $(S_H, S_W)$:
#
# $$
# y_{n,i,j,f} = b_f + \sum_{u,v,c} w_{u,v,c,f}\; x^p_{n,\; S_H i+u,\; S_W j+v,\; c}
# $$
#
# Data is NHWC (channels last), as in Keras: the $C$ numbers of one pixel sit next to each other in
# memory, so the inner sum over $c$ for a fixed tap is a matrix product `(…, C) @ (C, F)`.
#
# `minicnn.layers.Conv2D` owns the kernel and bias and calls the kernel of the active backend. Let us
# build one, look at its weights, and check it against both backends on a random batch.

# %%
rng = np.random.default_rng(0)
xb = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)     # (N, H, W, C)
conv = Conv2D(filters=4, kernel_size=3, strides=1, padding="same", name="conv")
yb = conv(xb)                                                 # builds the layer on first use
print(conv)
print("x", xb.shape, "| kernel", conv.params["kernel"].shape, "| bias", conv.params["bias"].shape, "| y", yb.shape)
print("parameters: 3*3*3*4 + 4 =", 3 * 3 * 3 * 4 + 4, "=", conv.count_params())

pads = kernels.conv_padding("same", (6, 6), (3, 3), (1, 1))
y_reference = reference.conv2d_forward(xb, conv.params["kernel"], conv.params["bias"], (1, 1), pads)
y_numba = fast.conv2d_forward(xb, conv.params["kernel"], conv.params["bias"], (1, 1), pads)
print("max |layer - reference| =", np.abs(yb - y_reference).max())
print("max |numba - reference| =", np.abs(y_numba - y_reference).max())
np.testing.assert_allclose(yb, y_reference, rtol=1e-5, atol=1e-5)
np.testing.assert_allclose(y_numba, y_reference, rtol=1e-5, atol=1e-5)

# %% [markdown]
# The two backends compute the same numbers by different algorithms (a loop over taps in NumPy;
# im2col plus one matrix product in Numba, see notebook 4), so in float32 they agree to rounding
# (~1e-7 relative), not bit for bit.
#
# One output pixel is still the pencil-and-paper sum: pick pixel $(n, i, j) = (1, 2, 3)$ and filter
# $f = 2$, cut out the 3×3×3 window of the padded input and take its dot product with that filter.

# %%
n, i, j, f = 1, 2, 3, 2
xpb = reference.pad_hw(xb, pads)
window = xpb[n, i:i + 3, j:j + 3, :]                          # (KH, KW, C)
by_hand = np.sum(window * conv.params["kernel"][:, :, :, f]) + conv.params["bias"][f]
print(f"by hand: {by_hand:.6f}   layer: {yb[n, i, j, f]:.6f}")
assert np.isclose(by_hand, yb[n, i, j, f], rtol=1e-5, atol=1e-6)

# %% [markdown]
# ## 1.4 Edge detection on a real photo
#
# Our kernel `w` above subtracts the right column from the left one: it responds where the image
# changes from left to right, i.e. at vertical edges. The Sobel filters do the same with a little
# smoothing (weights 1, 2, 1 along the edge):
#
# $$
# G_x = \begin{pmatrix} -1 & 0 & 1 \\ -2 & 0 & 2 \\ -1 & 0 & 1 \end{pmatrix},\qquad
# G_y = G_x^\top,\qquad |G| = \sqrt{G_x^2 + G_y^2}.
# $$
#
# First on an image whose answer we know: a dark left half and a bright right half. Only the windows
# that straddle the step see a difference, $(1+2+1)\cdot 1 = 4$; everywhere else the response is 0.

# %%
sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
sobel = np.stack([sobel_x, sobel_x.T], axis=-1)[:, :, None, :]   # (3, 3, C=1, F=2): G_x and G_y

edges = Conv2D(2, 3, use_bias=False, padding="valid")
edges.build((None, 6, 6, 1))
edges.set_weights([sobel])
step = np.zeros((1, 6, 6, 1), dtype=np.float32)
step[:, :, 3:, :] = 1.0                                           # bright right half
g = edges(step)
print("step image row:", step[0, 0, :, 0], "\nG_x output (4x4):\n", g[0, :, :, 0], "\nG_y output:\n", g[0, :, :, 1])
assert np.array_equal(g[0, :, :, 0], np.tile([0, 4, 4, 0], (4, 1)))
assert np.all(g[0, :, :, 1] == 0)

# %% [markdown]
# Now a real photograph: Grace Hopper, from matplotlib's sample data (it ships with matplotlib, so
# no download). `minicnn.data.load_img` reads it as a grey Pillow image, resized, and `img_to_array`
# turns it into an `(H, W, 1)` array with values 0…255. A `'same'` Sobel layer for this size gives
# one output map per filter.

# %%
from matplotlib import cbook

photo_path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
size = (150, 128) if SMOKE else (300, 256)                      # (height, width)
photo = img_to_array(load_img(photo_path, color_mode="grayscale", target_size=size)) / 255.0
print("photo:", photo.shape, photo.dtype, f"values in [{photo.min():.2f}, {photo.max():.2f}]")

edges = Conv2D(2, 3, use_bias=False, padding="same")
edges.build((None, *photo.shape))
edges.set_weights([sobel])
g = edges(photo[None])[0]                                        # (H, W, 2)
magnitude = np.sqrt(g[..., 0] ** 2 + g[..., 1] ** 2)
print("G_x, G_y:", g.shape, "| |G| range", magnitude.min().round(3), "to", magnitude.max().round(3))
assert g.shape == photo.shape[:2] + (2,)

fig, axes = plt.subplots(1, 4, figsize=(13, 4))
panels = [(photo[..., 0], "photo", "gray"), (g[..., 0], "$G_x$ (vertical edges)", "RdBu_r"),
          (g[..., 1], "$G_y$ (horizontal edges)", "RdBu_r"), (magnitude, "$|G|$", "gray_r")]
for ax, (img, title, cmap) in zip(axes, panels):
    lim = np.abs(img).max()
    ax.imshow(img, cmap=cmap, vmin=-lim if cmap == "RdBu_r" else None, vmax=lim if cmap == "RdBu_r" else None)
    ax.set_title(title)
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# $G_x$ is red where the photo gets brighter from left to right and blue where it gets darker; $G_y$
# does the same from top to bottom; $|G|$ draws the outline. The first layer of a trained CNN learns
# filters much like these (notebook 6 shows them), because edges are the cheapest clue to what is in
# a picture.
#
# ## Summary
#
# - One output pixel of a convolution is the dot product of the kernel with the window under it:
#   $y_{i,j} = b + \sum_{u,v} w_{u,v}\,x_{i+u,j+v}$ (no kernel flip: a cross-correlation).
# - Output size: $O = \lfloor (H + P_\text{top} + P_\text{bottom} - K)/S \rfloor + 1$. `'valid'`
#   pads nothing; `'same'` pads so that $O = \lceil H/S \rceil$, the odd pixel at the bottom/right
#   (Keras, PyTorch and minicnn alike); how much it pads depends on the stride.
# - With `'valid'` padding, a stride of $S$ keeps every $S$-th output of the stride-1 convolution;
#   with `'same'` only when both strides pad alike.
# - With channels and filters (`x: (N, H, W, C)`, `kernel: (KH, KW, C, F)`) the inner sum over
#   channels is a matrix product; the reference kernel does one per kernel tap.
# - `Conv2D`, the reference kernel and the Numba kernel give the same numbers.
#
# ## Exercises
#
# Each exercise has a cell with a solution filled in (so the notebook runs top to bottom) and a cell
# that checks it against minicnn. The solution cells carry the tag `solution`:
# `python notebooks/make_learner_copies.py` writes copies of the notebooks in which each is replaced
# by a blank to fill in (see the README). Try it yourself first, then run the check.
#
# **Exercise 1.** A 28×28 Fashion-MNIST image goes through a 5×5 convolution. What is the output
# height with (a) stride 1, `'valid'`; (b) stride 2, `'valid'`; (c) stride 2, `'same'`?

# %% tags=["solution"]
answer_1 = {"a": 24, "b": 12, "c": 14}       # (28 - 5) + 1;  floor(23 / 2) + 1;  ceil(28 / 2)

# %%
for part, (S, padding) in {"a": (1, "valid"), "b": (2, "valid"), "c": (2, "same")}.items():
    expected = Conv2D(1, 5, strides=S, padding=padding).compute_output_shape((None, 28, 28, 1))[1]
    assert answer_1[part] == expected, f"({part}): expected {expected}, got {answer_1[part]}"
print("Exercise 1: correct")

# %% [markdown]
# **Exercise 2.** Write `conv2d_single(x, k, stride, pad)` for one 2-D image and one 2-D kernel with
# loops: pad with `pad` zeros on every side, then apply the definition with a stride. It is checked
# against `minicnn.kernels.reference.conv2d_forward` for several strides and paddings.

# %% tags=["solution"]
def conv2d_single(x, k, stride=1, pad=0):
    xp = np.pad(x, pad)
    KH, KW = k.shape
    OH = (xp.shape[0] - KH) // stride + 1
    OW = (xp.shape[1] - KW) // stride + 1
    y = np.zeros((OH, OW))
    for i in range(OH):
        for j in range(OW):
            y[i, j] = np.sum(xp[stride * i:stride * i + KH, stride * j:stride * j + KW] * k)
    return y


# %%
rng = np.random.default_rng(1)
for H, W, K, stride, pad in [(5, 5, 3, 1, 0), (7, 6, 3, 2, 1), (8, 8, 2, 2, 0), (6, 9, 4, 3, 2)]:
    xs, ks = rng.standard_normal((H, W)), rng.standard_normal((K, K))
    expected = reference.conv2d_forward(xs[None, :, :, None], ks[:, :, None, None], None,
                                        strides=(stride, stride), padding=((pad, pad), (pad, pad)))[0, :, :, 0]
    np.testing.assert_allclose(conv2d_single(xs, ks, stride, pad), expected, rtol=1e-12, atol=1e-12)
print("Exercise 2: correct")

# %% [markdown]
# **Exercise 3.** Find a 3×3 kernel that, with `'same'` padding, shifts an image one pixel to the
# right: $y_{i,j} = x_{i,j-1}$, with zeros coming in on the left. (Hint: with padding 1,
# $y_{i,j} = \sum_{u,v} w_{u,v}\, x_{i+u-1,\, j+v-1}$.)

# %% tags=["solution"]
shift_right = np.zeros((3, 3))
shift_right[1, 0] = 1.0                      # u - 1 = 0 and v - 1 = -1

# %%
xs = np.arange(1.0, 26.0).reshape(5, 5)
shifted = reference.conv2d_forward(xs[None, :, :, None], shift_right[:, :, None, None], None,
                                   padding=kernels.conv_padding("same", (5, 5), (3, 3), (1, 1)))[0, :, :, 0]
expected = np.zeros_like(xs)
expected[:, 1:] = xs[:, :-1]
assert np.array_equal(shifted, expected), shifted
print("Exercise 3: correct\n", shifted)

# %% [markdown]
# ## Questions
#
# 1. Why does a `'same'` convolution with an *even* kernel size always need lopsided padding, even
#    at stride 1? What would a network lose if the extra zero went on top instead?
# 2. The Sobel response to the step image is 4, not 1. Where does the 4 come from, and what would a
#    kernel with rows $(1, 0, -1)$ (no smoothing) give?
# 3. A 3×3 convolution at stride 1 followed by another: how large is the window of the input that
#    one output pixel of the second layer sees? And after $L$ layers?
