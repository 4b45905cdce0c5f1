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
# # 2. Backprop through convolution and pooling
#
# Training needs the gradient of the loss with respect to every weight. minicnn has no automatic
# differentiation: each layer's `backward` is written by hand from a short derivation. A hand-written
# backward can be wrong in ways no error message reveals (the network then just learns badly), so
# every one is checked against finite differences. This notebook derives the gradients and runs the
# checks.
#
# **What you will learn**
#
# - the one rule every `backward(dy)` follows (a vector-Jacobian product), and how a numerical
#   gradient check tests it;
# - the gradients of `Dense`, `Conv2D`, `MaxPooling2D`, softmax and cross-entropy, derived in index
#   notation and checked with `minicnn.gradcheck`;
# - how to read a gradient-check number: what a correct backward, a float32 rounding error, a kink
#   and a real bug each look like.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import minicnn
from minicnn import kernels, losses
from minicnn.gradcheck import GradcheckReport, check_layer, numerical_gradient, rel_error
from minicnn.kernels import reference
from minicnn.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D, Softmax
from minicnn.models import Sequential
from minicnn.utils import set_random_seed, to_categorical

SMOKE = os.environ.get("MINICNN_SMOKE") == "1"   # CI sets it: smaller sizes, same code
set_random_seed(0)
np.set_printoptions(precision=3, suppress=True)
rng = np.random.default_rng(0)
reports = {}                                     # every gradient check of this notebook, for the final table

# %% [markdown]
# ## 2.1 The rule: backward is a vector-Jacobian product
#
# A layer computes $y = f(x)$. Somewhere downstream a scalar loss $L$ depends on $y$. Backprop hands
# the layer $dy = \partial L/\partial y$ (same shape as $y$), and the layer must return
#
# $$ dx_m = \frac{\partial L}{\partial x_m} = \sum_k \frac{\partial L}{\partial y_k}\,\frac{\partial y_k}{\partial x_m}
#    = \big(J^\top dy\big)_m, \qquad J_{km} = \frac{\partial y_k}{\partial x_m}, $$
#
# and likewise $\partial L/\partial w$ for each parameter $w$, stored in `layer.grads`.
# To test it, pick any $dy$ (random numbers) and define the scalar
# $L(x) = \sum_k f(x)_k\, dy_k$; then $\partial L/\partial y = dy$ exactly, so `backward(dy)` must
# equal the gradient of this $L$. Central differences estimate that gradient independently:
#
# $$ \frac{\partial L}{\partial x_m} \approx \frac{L(x + \varepsilon e_m) - L(x - \varepsilon e_m)}{2\varepsilon},
#    \qquad \text{error } O(\varepsilon^2). $$
#
# We compare the two with the relative error $\|a-b\| / (\|a\|+\|b\|)$: 0 when equal, 1 when opposite,
# independent of scale. In float64 with $\varepsilon = 10^{-5}$ the truncation error is about
# $\varepsilon^2 \approx 10^{-10}$ and rounding adds about $10^{-16}/\varepsilon = 10^{-11}$, so a
# correct backward gives roughly $10^{-10}$; minicnn's bound is $10^{-7}$.
#
# `minicnn.gradcheck.numerical_gradient(f, x)` nudges each element of `x` in place. A warm-up on
# $f(x) = \sum x^3$, whose gradient is $3x^2$:

# %%
x = rng.standard_normal(5)
numeric = numerical_gradient(lambda: np.sum(x ** 3), x)
print("analytic 3x^2:", 3 * x ** 2)
print("numerical    :", numeric)
print(f"rel_error = {rel_error(3 * x ** 2, numeric):.1e}")
assert rel_error(3 * x ** 2, numeric) < 1e-9

# %% [markdown]
# `minicnn.gradcheck.check_layer(layer, x)` does this for a layer's input and each of its
# parameters and returns a table. We build every layer in float64 for the checks (`dtype="float64"`);
# section 2.8 shows why.
#
# ## 2.2 Dense
#
# $y_{n,k} = b_k + \sum_d x_{n,d}\,W_{d,k}$. Each weight $W_{d,k}$ touches the outputs $y_{n,k}$ of
# every sample $n$ with slope $x_{n,d}$, so
#
# $$ \frac{\partial L}{\partial W_{d,k}} = \sum_n x_{n,d}\,dy_{n,k} \;\Rightarrow\; dW = x^\top dy, \qquad
#    db_k = \sum_n dy_{n,k}, \qquad dx = dy\,W^\top . $$
#
# Shapes check the algebra: `x.T` is (D, N) and `dy` is (N, K), so `dW` is (D, K) like `W`.

# %%
dense = Dense(3, dtype="float64", name="dense")
reports["Dense"] = check_layer(dense, rng.standard_normal((4, 5)))
print(reports["Dense"])

# %% [markdown]
# ## 2.3 Conv2D
#
# With the zero-padded input $x^p$ and stride $S$:
# $y_{n,i,j,f} = b_f + \sum_{u,v,c} w_{u,v,c,f}\; x^p_{n,\,Si+u,\,Sj+v,\,c}$.
#
# **Kernel.** $w_{u,v,c,f}$ multiplies one input value in every output pixel of filter $f$, so its
# gradient sums over all of them: the input correlated with $dy$,
#
# $$ dw_{u,v,c,f} = \sum_{n,i,j} dy_{n,i,j,f}\; x^p_{n,\,Si+u,\,Sj+v,\,c}, \qquad db_f = \sum_{n,i,j} dy_{n,i,j,f}. $$
#
# **Input.** Input pixel $(p, q)$ appears in every window that covers it, once per covering tap
# $(u, v)$ with $Si+u = p$, $Sj+v = q$. Each such output pixel sends back its gradient times the tap:
#
# $$ dx^p_{n,p,q,c} = \sum_{\substack{i,j,u,v,f\\ Si+u=p,\ Sj+v=q}} dy_{n,i,j,f}\; w_{u,v,c,f}, $$
#
# then the padding is cropped away. Read as a picture: every output pixel "stamps" its gradient,
# shaped like the kernel, back onto its window. At stride 1 this is a convolution of $dy$ with the
# kernel rotated by 180° ("full" padding), which is where the flipped kernel of textbooks comes from.
#
# Let us see the stamp. One output pixel with gradient 1, all others 0:

# %%
x5 = np.arange(25.0).reshape(1, 5, 5, 1)
w3 = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float64)[:, :, None, None]
dy = np.zeros((1, 3, 3, 1))
dy[0, 1, 2, 0] = 1.0                                   # only output pixel (i, j) = (1, 2)
dx = reference.conv2d_backward_input(dy, w3, x5.shape)
print("dx: the kernel stamped on the window of output (1, 2), rows 1..3, columns 2..4\n", dx[0, :, :, 0])
assert np.array_equal(dx[0, 1:4, 2:5, 0], w3[:, :, 0, 0])

# %% [markdown]
# With $dy = 1$ everywhere and a kernel of ones, $dx$ counts how many windows cover each pixel: a
# corner is seen once, the centre nine times. A 'valid' convolution looks at the border less often
# than at the middle.

# %%
coverage = reference.conv2d_backward_input(np.ones((1, 3, 3, 1)), np.ones((3, 3, 1, 1)), x5.shape)
print(coverage[0, :, :, 0])

# %% [markdown]
# And the layer, with the checks in several modes: stride 1 and 2, `'valid'` and `'same'`, an even
# kernel (whose `'same'` padding is lopsided), several channels and filters.

# %%
conv_cases = [
    dict(filters=3, kernel_size=3, strides=1, padding="valid"),
    dict(filters=3, kernel_size=3, strides=2, padding="same"),
    dict(filters=2, kernel_size=2, strides=1, padding="same"),
    dict(filters=4, kernel_size=(3, 2), strides=(2, 1), padding="valid"),
]
for case in conv_cases:
    name = "Conv2D " + ", ".join(f"{k}={v}" for k, v in case.items() if k != "filters")
    reports[name] = check_layer(Conv2D(**case, dtype="float64", activation="relu"), rng.standard_normal((2, 6, 7, 2)))
    print(name, "\n", reports[name], "\n")

# %% [markdown]
# These layers have `activation="relu"`, so each check also covers ReLU's backward,
# $dz = dy \cdot [z > 0]$, which the layer applies before its own.
#
# ## 2.4 MaxPooling2D
#
# $y_{n,i,j,c} = \max_{u,v} x_{n,\,Si+u,\,Sj+v,\,c}$. Nudging the winning input moves the output by
# the same amount; nudging any other input does nothing (as long as it stays below the winner). So
# the derivative is 1 for the argmax and 0 elsewhere: backward **routes** each $dy$ to the position
# that won in the forward pass, which the forward pass remembers (`argmax`).

# %%
x4 = np.array([[1, 3, 2, 0],
               [4, 2, 1, 5],
               [0, 1, 7, 2],
               [6, 2, 3, 1]], dtype=np.float64)[None, :, :, None]
y4, argmax = reference.maxpool2d_forward(x4, (2, 2), (2, 2))
dy4 = np.array([[10.0, 20.0], [30.0, 40.0]])[None, :, :, None]
dx4 = reference.maxpool2d_backward(dy4, argmax, x4.shape, (2, 2), (2, 2))
print("x\n", x4[0, :, :, 0], "\ny = max of each 2x2 window\n", y4[0, :, :, 0])
print("argmax (u*PW + v inside each window)\n", argmax[0, :, :, 0], "\ndx for dy = [[10, 20], [30, 40]]\n", dx4[0, :, :, 0])
assert np.array_equal(dx4[0, :, :, 0], [[0, 0, 0, 0], [10, 0, 0, 20], [0, 0, 40, 0], [30, 0, 0, 0]])

# %%
for case in [dict(pool_size=2), dict(pool_size=3, strides=2, padding="same"), dict(pool_size=3, strides=1)]:
    name = "MaxPooling2D " + ", ".join(f"{k}={v}" for k, v in case.items())
    reports[name] = check_layer(MaxPooling2D(**case, dtype="float64"), rng.standard_normal((2, 6, 6, 3)))
    print(name, "\n", reports[name], "\n")

# %% [markdown]
# With `strides=1` the 3×3 windows overlap, so one input can win several windows; its gradients
# then add up, and the check confirms the backward does add them.
#
# ## 2.5 Softmax
#
# $p_k = e^{z_k} / \sum_j e^{z_j}$. Differentiating the quotient,
# $\partial p_k/\partial z_j = p_k(\delta_{kj} - p_j)$, so the Jacobian is $\operatorname{diag}(p) - pp^\top$
# and the vector-Jacobian product never needs the $K\times K$ matrix:
#
# $$ dz_j = \sum_k dy_k\, p_k(\delta_{kj} - p_j) = p_j\Big(dy_j - \sum_k dy_k\,p_k\Big). $$

# %%
reports["Softmax"] = check_layer(Softmax(dtype="float64"), rng.standard_normal((4, 5)))
print(reports["Softmax"])

# %% [markdown]
# ## 2.6 Cross-entropy, and softmax with cross-entropy
#
# For one-hot targets $y$ and probabilities $p$, averaged over the batch of $N$:
#
# $$ L = -\frac{1}{N}\sum_{n,k} y_{n,k}\log p_{n,k}, \qquad \frac{\partial L}{\partial p_{n,k}} = -\frac{y_{n,k}}{N\,p_{n,k}} . $$
#
# Feeding that through softmax's backward, with $\sum_k y_{n,k} = 1$:
# $dz_{n,j} = p_{n,j}\big(-\tfrac{y_{n,j}}{N p_{n,j}} + \tfrac{1}{N}\sum_k y_{n,k}\big) = \tfrac{1}{N}(p_{n,j} - y_{n,j})$.
# The famous result: the gradient with respect to the logits is *prediction minus target*, divided
# by $N$. `Sequential` uses this fused form when the last layer is softmax and the loss is
# cross-entropy: it is cheaper, and it stays exact when some $p$ underflows to 0, where
# $-y/p$ would divide by zero.
#
# **What minicnn's loss actually differentiates.** Like Keras, minicnn's cross-entropy on
# probabilities first renormalises them, $q_{n,k} = p_{n,k} / \sum_j p_{n,j}$, so that an output that
# does not quite sum to 1 is still read as a distribution, and computes $-\frac1N\sum y\log q$. The
# renormalisation adds a term to the derivative: with $\sum_j p_{n,j} = 1$ (a softmax output),
#
# $$ \frac{\partial L}{\partial p_{n,k}} = -\frac{y_{n,k}}{N\,p_{n,k}} + \frac{1}{N}. $$
#
# `ce.gradient` returns this, and the finite-difference check below agrees with it because it
# differentiates the same renormalised loss. The extra $1/N$ is harmless: it is the same constant
# $c$ for every class of a sample, and softmax's backward removes any such constant,
# $p_j\big(c - \sum_k c\, p_k\big) = 0$. So both forms of $\partial L/\partial p$ give the same
# $dz = (p - y)/N$, as the cell checks.
#
# We check both the loss's own gradient (with respect to $p$) and the fused one (with respect to $z$).

# %%
N, K = 4, 5
z = rng.standard_normal((N, K))
y = to_categorical(rng.integers(0, K, N), K)
p = minicnn.activations.softmax(z)
ce = losses.CategoricalCrossentropy()                    # takes probabilities, as after a softmax layer
ce_logits = losses.CategoricalCrossentropy(from_logits=True)

grad_p = ce.gradient(y, p)
grad_z = ce.logits_gradient(y, p)                        # (p - y) / N
reports["cross-entropy"] = GradcheckReport("cross-entropy and softmax + cross-entropy", [
    ("dL/dp", p.shape, rel_error(grad_p, numerical_gradient(lambda: ce(y, p), p))),
    ("dL/dz = (p - y)/N", z.shape, rel_error(grad_z, numerical_gradient(lambda: ce_logits(y, z), z))),
])
print("p - y =\n", p - y, "\n")
print(reports["cross-entropy"])


def softmax_backward(dy, p):
    return p * (dy - np.sum(dy * p, axis=-1, keepdims=True))


textbook = -y / (N * p)
print("\nce.gradient - (-y / (N p)) =\n", grad_p - textbook, f"\n(1/N = {1 / N})")
np.testing.assert_allclose(grad_p, textbook + 1 / N, rtol=1e-12, atol=1e-12)
np.testing.assert_allclose(softmax_backward(grad_p, p), (p - y) / N, rtol=1e-10, atol=1e-12)
np.testing.assert_allclose(softmax_backward(textbook, p), (p - y) / N, rtol=1e-10, atol=1e-12)

# %% [markdown]
# ## 2.7 A whole model
#
# A model's backward is the chain of layer backwards, starting from the loss. `model.check_gradients`
# (the same as `minicnn.gradcheck.check_model`) perturbs every parameter of every layer and watches
# the compiled loss. A small CNN with every layer type we derived:

# %%
model = Sequential([
    Input(shape=(8, 8, 2), dtype="float64"),
    Conv2D(3, 3, padding="same", activation="relu", dtype="float64", name="conv"),
    MaxPooling2D(2, dtype="float64", name="pool"),
    Flatten(dtype="float64", name="flatten"),
    Dense(4, activation="softmax", dtype="float64", name="dense_out"),
], name="tiny_cnn")
model.compile(optimizer="sgd", loss="categorical_crossentropy")
xm = rng.standard_normal((3, 8, 8, 2))
ym = to_categorical([0, 3, 1], 4)
reports["model"] = model.check_gradients(xm, ym)
print(reports["model"])

# %% [markdown]
# ## The error table
#
# Every check of this notebook in one table, with the largest error below it. All are far below the
# bound of $10^{-7}$: the hand-written gradients are right. (They are not all equally small:
# $-y/p$ curves strongly where $p$ is small, so the difference formula's $O(\varepsilon^2)$ error is
# larger for the cross-entropy's $\partial L/\partial p$ than for the layers.)

# %%
width = max(len(check) for check in reports)
print(f"{'check':<{width}}  {'array':<18} {'rel_error':>9}")
for check, report in reports.items():
    for array, _, err in report.rows:
        print(f"{check:<{width}}  {array:<18} {err:>9.1e}")
worst = max(report.max_error for report in reports.values())
worst_check = max(reports, key=lambda name: reports[name].max_error)
print(f"\nlargest error: {worst:.1e} ({worst_check})  (bound {minicnn.gradcheck.TOLERANCE:.0e})")
assert all(report.ok for report in reports.values()), [name for name, r in reports.items() if not r.ok]

# %% [markdown]
# ## 2.8 What a wrong gradient check looks like
#
# A check that fails says *something* differs. The size of the error hints at what.
#
# **A real bug.** A classic: "the backward of a convolution is a convolution with the flipped kernel",
# applied once too often. Below, a Conv2D whose input gradient uses the kernel rotated by 180°. Its
# kernel and bias gradients are still right; its input gradient is not, and the check says so with
# an error of order 1. (This class exists only to show the failure.)

# %%
class FlippedConv2D(Conv2D):
    """A deliberately WRONG Conv2D: its input gradient uses the kernel rotated by 180 degrees."""

    def _backward(self, dz):
        super()._backward(dz)                                           # kernel and bias gradients: right
        flipped = self.params["kernel"][::-1, ::-1]                     # the bug
        return kernels.conv2d_backward_input(dz, flipped, self.cache["x"].shape, self.strides, self.cache["padding"])


bug_flip = check_layer(FlippedConv2D(3, 3, dtype="float64"), rng.standard_normal((2, 6, 6, 2)))
print(bug_flip)
assert bug_flip.errors()["input"] > 0.1 and bug_flip.errors()["kernel"] < 1e-7

# %% [markdown]
# **Another bug**: a max-pool whose backward spreads $dy$ evenly over the window (that is average
# pooling's backward). Again an error of order 1.

# %%
class SpreadingMaxPool(MaxPooling2D):
    """A deliberately WRONG 2x2 max-pool backward: each dy is shared equally by its 4 inputs."""

    def _backward(self, dz):
        return np.repeat(np.repeat(dz, 2, axis=1), 2, axis=2) / 4      # the bug


bug_spread = check_layer(SpreadingMaxPool(2, dtype="float64"), rng.standard_normal((2, 6, 6, 3)))
print(bug_spread)
assert bug_spread.max_error > 0.1

# %% [markdown]
# **A bug with a telltale number.** Forget the $1/N$ of the batch mean, and every gradient is $N$
# times too large. If $a = kb$ the relative error is $(k-1)/(k+1)$, whatever the data: $0.6$ for
# $N = 4$. Errors that are suspiciously round numbers mean a missing factor.

# %%
no_mean = p - y                                                     # the bug: (p - y) instead of (p - y) / N
err = rel_error(no_mean, numerical_gradient(lambda: ce_logits(y, z), z))
print(f"rel_error = {err:.4f}, (N - 1)/(N + 1) = {(N - 1) / (N + 1):.4f}")
assert np.isclose(err, (N - 1) / (N + 1))

# %% [markdown]
# **Not a bug: float32.** The same correct Conv2D (here with a smooth `tanh` activation), built once
# in float64 and once in float32 with the same weights. `check_layer` always works on a float64
# copy unless told otherwise; `dtype="float32"` runs the check in float32 to show why. The numerical
# gradient divides a difference of two nearly equal float32 losses (7 significant digits) by
# $2\varepsilon$, so it is only good to about $10^{-7}/10^{-5} = 10^{-2}$ relative. Errors of
# $10^{-4}$ to $10^{-2}$ are rounding, not a wrong formula: that is why checks run in float64.

# %%
x_check = rng.standard_normal((2, 6, 6, 2))
conv64 = Conv2D(3, 3, activation="tanh", dtype="float64", name="conv64")
conv64.build(x_check.shape)
conv32 = Conv2D(3, 3, activation="tanh", dtype="float32", name="conv32")
conv32.build(x_check.shape)
conv32.set_weights(conv64.get_weights())                          # the same weights, rounded to float32
fp32, fp64 = check_layer(conv32, x_check, dtype="float32"), check_layer(conv64, x_check)
print(fp32, "\n\n", fp64)
assert 1e-6 < fp32.max_error < 0.1 and fp64.ok

# %% [markdown]
# The step $\varepsilon$ trades two errors: the $O(\varepsilon^2)$ error of the difference formula
# (large steps) against rounding, about $\text{machine epsilon}/\varepsilon$ (small steps). Sweeping
# $\varepsilon$ for both layers draws the classic V: float64 is best near $10^{-5}$, with errors
# around $10^{-10}$; float32 is best near $10^{-2}$ and even there only reaches a few times $10^{-5}$, too
# coarse to tell a subtle bug from rounding. (Without the `tanh` the layer would be linear, the
# difference formula exact, and only the rounding side of the V would show.)

# %%
steps = np.logspace(-9, -1, 9 if SMOKE else 17)
sweep = {name: [check_layer(layer, x_check, eps=e, dtype=name, kinks=False).max_error for e in steps]
         for name, layer in (("float64", conv64), ("float32", conv32))}
for name, errors in sweep.items():
    print(name, " ".join(f"{e:.0e}" for e in errors))
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, errors in sweep.items():
    ax.loglog(steps, errors, "o-", label=name)
ax.axhline(minicnn.gradcheck.TOLERANCE, color="gray", ls="--", label="bound $10^{-7}$")
ax.set_xlabel(r"step $\varepsilon$")
ax.set_ylabel("largest rel_error")
ax.set_title("Gradient check of a correct Conv2D (tanh)")
ax.legend()
plt.show()
assert min(sweep["float64"]) < 1e-9 and min(sweep["float32"]) > 1e-6

# %% [markdown]
# **Not a bug: a kink.** Max is not differentiable where two inputs tie. Feed the (correct) max-pool
# an image whose 2×2 windows are constant: a nudge up makes the nudged input the winner, a nudge
# down leaves another one winning, so the central difference gives each tied input half of $dy$,
# while backward (like PyTorch and Keras) gives all of it to the first one. The error is exactly
# $0.5$. ReLU has the same kink at 0. `kinks=False` shows the naive comparison:

# %%
ties = np.repeat(np.repeat(rng.standard_normal((1, 2, 2, 1)), 2, axis=1), 2, axis=2)   # constant 2x2 blocks
kink = check_layer(MaxPooling2D(2, dtype="float64"), ties, kinks=False)
print(ties[0, :, :, 0], "\n", kink)
assert np.isclose(kink.max_error, 0.5)

# %% [markdown]
# By default the check looks again at every element that disagrees: with a step 100 times smaller,
# and with the two one-sided slopes $(L(x+h) - L(x))/h$ and $(L(x) - L(x-h))/h$. At a kink those
# differ and the backward equals one of them; the element is then counted in the `kinks` column and
# left out of the error, instead of failing. A backward that matches neither slope still fails.

# %%
kink = check_layer(MaxPooling2D(2, dtype="float64"), ties)
print(kink)
assert kink.ok and kink.kinks["input"] == ties.size

# %% [markdown]
# The size of the error is a hint, not a verdict: this notebook's own float32 check gave
# `fp32.max_error` (printed above, about $10^{-2}$) and the kink gave exactly 0.5, as large as a bug.
# So read it together with how it behaves when you change the check:
#
# | relative error | what it usually means | how to tell |
# |---|---|---|
# | $10^{-12}$ to $10^{-8}$ | correct (in float64) | |
# | $10^{-6}$ to $10^{-1}$ in float32 | rounding | rerun in float64: it drops to $10^{-10}$ |
# | up to about 1, on inputs with ties or zeros, with `kinks=False` | an input sitting on a kink (ReLU at 0, a max-pool tie) | the default check counts it as a kink; or rerun on random inputs: it disappears |
# | $0.1$ to $1$ in float64 on random inputs | a bug: wrong index, transposed or flipped kernel, missing term | it stays |
# | exactly $(k-1)/(k+1)$ | off by a factor $k$ (a missing $1/N$, a doubled sum) | it is the same for any data |
#
# ## Summary
#
# - `backward(dy)` returns $J^\top dy$; to check it, define $L = \sum f(x)\cdot dy$ and compare with
#   central differences in float64: $\text{rel\_error} < 10^{-7}$.
# - Dense: $dW = x^\top dy$, $db = \sum_n dy$, $dx = dy\,W^\top$.
# - Conv2D: $dw$ correlates the input with $dy$; $dx$ stamps each $dy$ back through the kernel onto
#   its window (a convolution with the flipped kernel at stride 1).
# - Max-pool routes $dy$ to the argmax of each window; overlapping windows add up.
# - Softmax: $dz = p\odot(dy - \langle dy, p\rangle)$; with cross-entropy, $dz = (p - y)/N$.
# - A failed check's size alone does not tell a bug from rounding or a kink: rerun it in float64
#   on random inputs; a bug survives both.
# - minicnn's cross-entropy renormalises $p$ as Keras does, so its $\partial L/\partial p$ is
#   $-y/(Np) + 1/N$; the extra constant vanishes through softmax's backward.
#
# ## Exercises
#
# Each exercise has a solution filled in (a cell tagged `solution`; the learner copies made by
# `notebooks/make_learner_copies.py` leave it blank) and a cell that checks it against
# `minicnn.kernels.reference`. Try it yourself first.
#
# **Exercise 1.** Write the weight gradient of a one-image, one-channel, one-filter 'valid' convolution
# the shift-and-add way of notebook 1: $dw_{u,v} = \sum_{i,j} dy_{i,j}\,x_{i+u,\,j+v}$, one array
# product per tap.

# %% tags=["solution"]
def conv_weight_grad(x, dy, K):
    OH, OW = dy.shape
    return np.array([[np.sum(dy * x[u:u + OH, v:v + OW]) for v in range(K)] for u in range(K)])


# %%
xs, dys = rng.standard_normal((7, 6)), rng.standard_normal((5, 4))
dw_ref, db_ref = reference.conv2d_backward_weights(xs[None, :, :, None], dys[None, :, :, None], (3, 3))
np.testing.assert_allclose(conv_weight_grad(xs, dys, 3), dw_ref[:, :, 0, 0], rtol=1e-12, atol=1e-12)
print("Exercise 1: correct")

# %% [markdown]
# **Exercise 2.** Write the backward of a 2×2, stride-2 max-pool without `argmax`: compare each input
# with the maximum of its window (upsample $y$ with `np.repeat`) to get a mask, and send $dy$ where
# the mask is true. (Random inputs have no ties, so each window has one winner.)

# %% tags=["solution"]
def maxpool_backward_2x2(x, dy):
    y = x.reshape(x.shape[0], x.shape[1] // 2, 2, x.shape[2] // 2, 2, x.shape[3]).max(axis=(2, 4))
    up = lambda a: np.repeat(np.repeat(a, 2, axis=1), 2, axis=2)  # noqa: E731
    return (x == up(y)) * up(dy)


# %%
xs = rng.standard_normal((2, 6, 8, 3))
ys, am = reference.maxpool2d_forward(xs, (2, 2), (2, 2))
dys = rng.standard_normal(ys.shape)
np.testing.assert_array_equal(maxpool_backward_2x2(xs, dys), reference.maxpool2d_backward(dys, am, xs.shape, (2, 2), (2, 2)))
print("Exercise 2: correct")

# %% [markdown]
# **Exercise 3.** Give the input gradient of a one-channel, one-filter, stride-1 'valid' convolution as
# a 'valid' convolution of the zero-padded $dy$ (padded by $K-1$ on each side) with the kernel
# rotated by 180°. Use `reference.conv2d_forward` to compute it; it is checked against
# `reference.conv2d_backward_input`.

# %% tags=["solution"]
def conv_input_grad(dy, w):
    K = w.shape[0]
    dyp = np.pad(dy, K - 1)                                         # "full" padding
    return reference.conv2d_forward(dyp[None, :, :, None], w[::-1, ::-1, None, None], None)[0, :, :, 0]


# %%
ws, dys = rng.standard_normal((3, 3)), rng.standard_normal((5, 4))
expected = reference.conv2d_backward_input(dys[None, :, :, None], ws[:, :, None, None], (1, 7, 6, 1))[0, :, :, 0]
np.testing.assert_allclose(conv_input_grad(dys, ws), expected, rtol=1e-12, atol=1e-12)
print("Exercise 3: correct")

# %% [markdown]
# ## Questions
#
# 1. The kink check gave exactly 0.5. Why exactly that number? (Each window of `ties` holds four
#    equal inputs; work out the numerical and the analytic gradient of one window.) What would a
#    window with only two tied inputs give?
# 2. Why does the float32 curve of the $\varepsilon$ sweep bottom out near $\varepsilon = 10^{-2}$
#    and not at $10^{-5}$ like float64? Predict the best step from the two error terms.
# 3. `Sequential` never calls `ce.gradient` when the last layer is a softmax. Find an output layer
#    for which it would, and say which of the two forms of $\partial L/\partial p$ then matters.
