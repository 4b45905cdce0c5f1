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
# # 8. Write your own layer
#
# Every layer of minicnn follows one contract (`minicnn/layers/base.py`): `build` creates the
# parameters, `forward` computes and keeps what backward needs, `backward(dy)` fills `grads` and
# returns $\partial L/\partial x$. Follow it, and a layer you write trains inside `Sequential`, with
# any optimizer, like the built-in ones. We write one, check its gradients, train it; then derive
# the backward pass of `BatchNormalization`, the trickiest one in the library, from its
# computational graph.
#
# **What you will learn**
#
# - the `Layer` contract in practice: `_build`, `_forward`, `_backward`, `get_config`;
# - to gradient-check a new layer before training with it, and to train it inside `Sequential`;
# - Batch Normalization's backward pass, derived node by node through its graph and simplified to
#   the compact form minicnn uses, all checked against finite differences;
# - the difference between BatchNormalization in training and in inference mode.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minicnn.datasets import fashion_mnist
from minicnn.gradcheck import check_layer, numerical_gradient, rel_error
from minicnn.kernels import reference
from minicnn.layers import BatchNormalization, Conv2D, Dense, Flatten, Input, Layer, MaxPooling2D
from minicnn.models import Sequential
from minicnn.utils import set_random_seed

SMOKE = os.environ.get("MINICNN_SMOKE") == "1"   # CI sets it: fewer images, same code
set_random_seed(0)
rng = np.random.default_rng(0)
np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 8.1 A new layer: PReLU
#
# The *parametric ReLU* (He et al., 2015) lets negative inputs through with a learned slope, one per
# channel:
#
# $$ y_{\dots,c} = \begin{cases} x_{\dots,c} & x_{\dots,c} > 0 \\ a_c\, x_{\dots,c} & \text{otherwise} \end{cases}
#    \qquad\Rightarrow\qquad
#    \frac{\partial L}{\partial x} = dy \cdot \begin{cases} 1 \\ a_c \end{cases}, \qquad
#    \frac{\partial L}{\partial a_c} = \sum_{x_{\dots,c} \le 0} dy_{\dots,c}\; x_{\dots,c} . $$
#
# The sum for $a_c$ runs over every position that shares the slope: all images, rows and columns.
# The layer needs four methods; the base class does the rest (naming, input checks, dtype, the
# `activation=` hook, `get_weights`/`set_weights`).

# %%
class PReLU(Layer):
    """``y = x`` where ``x > 0``, ``alpha[c] * x`` elsewhere; one learned slope per channel (last axis).

    Parameters
    ----------
    alpha_init : float, default 0.25
        The slopes' starting value (He et al. start at 0.25).
    """

    def __init__(self, alpha_init=0.25, **kwargs):
        super().__init__(**kwargs)
        self.alpha_init = float(alpha_init)

    def _build(self, input_shape):                       # params: name -> array; grads are made to match
        self.params["alpha"] = np.full(input_shape[-1:], self.alpha_init, dtype=self.dtype)

    def _forward(self, x, training):
        self.cache["x"] = x                              # backward needs to know where x <= 0
        return np.where(x > 0, x, self.params["alpha"] * x)

    def _backward(self, dy):
        x = self._cached("x")
        batch_axes = tuple(range(x.ndim - 1))            # every axis but the channels
        self.grads["alpha"] = np.sum(np.where(x > 0, 0, dy * x), axis=batch_axes)
        return np.where(x > 0, dy, self.params["alpha"] * dy)

    def get_config(self):
        return {**super().get_config(), "alpha_init": self.alpha_init}


prelu = PReLU(name="prelu")
y = prelu(np.array([[-2.0, -1.0, 0.5, 3.0]]))
print(prelu, "alpha:", prelu.params["alpha"], "\ny for x = [-2, -1, 0.5, 3]:", y)
assert np.allclose(y, [[-0.5, -0.25, 0.5, 3.0]])

# %% [markdown]
# ## 8.2 Check it before you trust it
#
# `check_layer` (notebook 2) compares `backward` with central differences for the input and each
# parameter. In float64, with random inputs (which are never exactly at the kink $x = 0$), and with
# random slopes so that each channel's slope matters:

# %%
prelu64 = PReLU(dtype="float64", name="prelu64")
x = rng.standard_normal((4, 5, 5, 3))
prelu64.build(x.shape)
prelu64.set_weights([rng.uniform(0.1, 0.5, 3)])
report = check_layer(prelu64, x)
print(report)
assert report.ok

# %% [markdown]
# ## 8.3 Train it inside `Sequential`
#
# A small CNN whose convolution has no activation of its own, followed by our PReLU. `fit` calls
# `forward`, `backward` and the optimizer on it like on any other layer.

# %%
(x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(sample=True)
n_train = 1000 if SMOKE else len(x_train)
x_train, y_train = x_train[:n_train].reshape(-1, 28, 28, 1) / 255.0, y_train[:n_train]
x_test = x_test.reshape(-1, 28, 28, 1) / 255.0

model = Sequential([
    Input(shape=(28, 28, 1)),
    Conv2D(16, (3, 3), name="conv"),
    PReLU(name="prelu"),
    MaxPooling2D((2, 2)),
    Flatten(),
    Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, epochs=1 if SMOKE else 3, batch_size=32, verbose=2)
_, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
alpha = model.layers[1].params["alpha"]
print(f"test accuracy {test_accuracy:.4f}; learned slopes from {alpha.min():.3f} to {alpha.max():.3f} (start 0.25)")
assert test_accuracy > (0.45 if SMOKE else 0.75) and not np.allclose(alpha, 0.25)

fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(np.arange(alpha.size), alpha)
ax.axhline(0.25, color="gray", ls="--", label="start")
ax.set_xlabel("channel")
ax.set_ylabel("slope $a_c$ for $x < 0$")
ax.set_title("PReLU slopes after training")
ax.legend()
plt.show()

# %% [markdown]
# ## 8.4 Batch Normalization, forward
#
# BatchNormalization normalises each channel with the statistics of the current batch, then lets the
# network rescale and shift it. With $x$ seen as $M$ rows of $C$ channels ($M = N\cdot H\cdot W$ for
# images), per channel:
#
# $$ \mu = \frac1M\sum_m x_m, \quad \sigma^2 = \frac1M\sum_m (x_m-\mu)^2, \quad
#    \hat x_m = \frac{x_m-\mu}{\sqrt{\sigma^2+\epsilon}}, \quad y_m = \gamma\,\hat x_m + \beta . $$
#
# As a computational graph, one node per line (the names are the variables of the code below):
#
# ```
# mu   = mean(x)            xc  = x - mu          var  = mean(xc**2)
# inv  = 1/sqrt(var + eps)  xhat = xc * inv       y    = gamma * xhat + beta
# ```

# %%
eps = 1e-3
M, C = 64, 3
x = rng.normal(5.0, 2.0, (M, C))                        # far from zero mean and unit variance
gamma, beta = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)


def bn_forward_staged(x, gamma, beta):
    mu = x.mean(axis=0)
    xc = x - mu
    var = (xc ** 2).mean(axis=0)
    inv = 1 / np.sqrt(var + eps)
    xhat = xc * inv
    return gamma * xhat + beta, (xc, var, inv, xhat)


y, saved = bn_forward_staged(x, gamma, beta)
y_ref, mean_ref, var_ref = reference.batchnorm_forward_train(x, gamma, beta, eps)
print("x: mean", x.mean(axis=0), "std", x.std(axis=0), "\ny: mean", y.mean(axis=0), "std", y.std(axis=0))
np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)

# %% [markdown]
# ## 8.5 Backward, node by node
#
# Walk the graph backwards from $dy$, each node receiving the gradient of its output and passing on
# the gradient of its inputs. The traps are the nodes with two uses: $x_c$ feeds both $\sigma^2$ and
# $\hat x$, and $x$ feeds both $\mu$ and $x_c$, so their gradients are *sums* over both paths.
#
# $$
# \begin{aligned}
# d\beta &= \textstyle\sum_m dy_m, \qquad d\gamma = \sum_m dy_m\,\hat x_m, \qquad d\hat x_m = \gamma\, dy_m,\\
# d\,\text{inv} &= \textstyle\sum_m d\hat x_m\, x_{c,m}, \qquad d\sigma^2 = d\,\text{inv}\cdot\left(-\tfrac12\right)(\sigma^2+\epsilon)^{-3/2},\\
# dx_{c,m} &= d\hat x_m\,\text{inv} + d\sigma^2\cdot\tfrac{2}{M}\,x_{c,m}
#     \quad\text{(through } \hat x \text{ and through } \sigma^2\text{)},\\
# d\mu &= -\textstyle\sum_m dx_{c,m}, \qquad dx_m = dx_{c,m} + \tfrac1M\, d\mu .
# \end{aligned}
# $$

# %%
def bn_backward_staged(dy, gamma, saved):
    xc, var, inv, xhat = saved
    M = dy.shape[0]
    dbeta = dy.sum(axis=0)
    dgamma = (dy * xhat).sum(axis=0)
    dxhat = gamma * dy
    dinv = (dxhat * xc).sum(axis=0)
    dvar = dinv * -0.5 * (var + eps) ** -1.5
    dxc = dxhat * inv + dvar * 2 * xc / M
    dmu = -dxc.sum(axis=0)
    return dxc + dmu / M, dgamma, dbeta


dy = rng.standard_normal((M, C))
dx_staged, dgamma_staged, dbeta_staged = bn_backward_staged(dy, gamma, saved)
loss = lambda: np.sum(bn_forward_staged(x, gamma, beta)[0] * dy)   # dL/dy = dy  # noqa: E731
errors = {"dx": rel_error(dx_staged, numerical_gradient(loss, x)),
          "dgamma": rel_error(dgamma_staged, numerical_gradient(loss, gamma)),
          "dbeta": rel_error(dbeta_staged, numerical_gradient(loss, beta))}
print("staged backward vs finite differences:", {k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < 1e-7

# %% [markdown]
# ## 8.6 The compact form
#
# Substitute and simplify. $\sum_m x_{c,m} = 0$, so the $\sigma^2$ path adds nothing to $d\mu$, and
# $d\mu = -\text{inv}\sum_m d\hat x_m$. The $\sigma^2$ path itself is
# $d\sigma^2\cdot\frac2M x_{c,m} = -\text{inv}\cdot\hat x_m \cdot \frac1M\sum_k d\hat x_k\,\hat x_k$.
# With $d\hat x = \gamma\, dy$, so that $\sum_k d\hat x_k = \gamma\, d\beta$ and
# $\sum_k d\hat x_k \hat x_k = \gamma\, d\gamma$:
#
# $$ dx_m = \frac{\gamma}{\sqrt{\sigma^2+\epsilon}}\left(dy_m - \frac{d\beta}{M} - \hat x_m\,\frac{d\gamma}{M}\right). $$
#
# Read it as: the normalisation removes a shift and a rescaling of each channel, so the gradient
# loses its components along those two directions (its mean, and its projection on $\hat x$). This
# is the formula in `minicnn.kernels.reference.batchnorm_backward` and in the Numba kernel; one
# pass over the data instead of a graph's worth of temporaries.

# %%
dx_ref, dgamma_ref, dbeta_ref = reference.batchnorm_backward(dy, x, gamma, mean_ref, var_ref, eps)
xhat = saved[3]
dx_compact = gamma / np.sqrt(var_ref + eps) * (dy - dbeta_ref / M - xhat * dgamma_ref / M)
print("max |staged - reference| :", np.abs(dx_staged - dx_ref).max())
print("max |compact - reference|:", np.abs(dx_compact - dx_ref).max())
np.testing.assert_allclose(dx_staged, dx_ref, rtol=1e-10, atol=1e-12)
np.testing.assert_allclose(dx_compact, dx_ref, rtol=1e-10, atol=1e-12)
np.testing.assert_allclose(dgamma_staged, dgamma_ref, rtol=1e-12)

bn_layer = BatchNormalization(dtype="float64", name="bn")
report = check_layer(bn_layer, rng.normal(3.0, 2.0, (4, 5, 5, 3)))   # the layer, on images, in training mode
print(report)
assert report.ok

# %% [markdown]
# ## 8.7 Training mode and inference mode
#
# In training mode the layer normalises with the statistics of the batch, so one image's output
# depends on which other images share its batch. That is fine for training (it even acts as a mild
# regulariser) but not for predicting one image, so the layer also keeps *moving averages* of the
# batch statistics, $\bar\mu \leftarrow 0.99\,\bar\mu + 0.01\,\mu$ (the same for $\sigma^2$), and in
# inference mode uses those: an affine map of $x$ that no longer depends on the batch.

# %%
bn = BatchNormalization(momentum=0.99, name="bn_demo")
features = rng.normal(5.0, 2.0, (4000, 3)).astype(np.float32)
bn.build((None, 3))
one = features[:1]
with_a = bn(np.concatenate([one, features[1:32]]), training=True)[0]
with_b = bn(np.concatenate([one, features[1000:1031] + 3]), training=True)[0]
print("the same row, training mode, in two batches:", with_a, with_b)
print("the same row, inference mode, alone and in a batch:", bn(one)[0], bn(features[:32])[0])
assert not np.allclose(with_a, with_b) and np.allclose(bn(one)[0], bn(features[:32])[0])

# %% [markdown]
# The moving averages start at mean 0 and variance 1 and move 1% of the way per training step, so it
# takes a few hundred steps before inference mode normalises the way training mode does. Until then
# a model can look fine in training and poor in evaluation: a classic surprise with BatchNorm and
# short training runs.

# %%
bn = BatchNormalization(momentum=0.99, name="bn_moving")
bn.build((None, 3))
steps = 500                                             # cheap: 500 tiny batches
moving = []
for step in range(steps):
    batch = features[rng.choice(len(features), 32, replace=False)]
    bn(batch, training=True)
    moving.append(bn.moving_mean.copy())
moving = np.array(moving)
true_mean = features.mean(axis=0)
print(f"true channel means {true_mean}; moving mean after 10 steps {moving[9]}, after {steps}: {moving[-1]}")
assert np.abs(moving[9] - true_mean).max() > 3 and np.abs(moving[-1] - true_mean).max() < 0.5
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(moving[:, 0], label=r"moving mean $\bar\mu$ (channel 0)")
ax.axhline(true_mean[0], color="gray", ls="--", label="mean of the data")
ax.plot(true_mean[0] * (1 - 0.99 ** np.arange(1, steps + 1)), ":", label=r"$(1 - 0.99^t)\,\mu$")
ax.set_xlabel("training step")
ax.legend()
ax.set_title("BatchNormalization's moving mean, momentum 0.99")
plt.show()

# %% [markdown]
# ## Summary
#
# - A layer is `_build` (create `params`), `_forward` (compute, keep what backward needs),
#   `_backward` (fill `grads` for every parameter, return $dx$) and `get_config`; check it with
#   `check_layer` in float64, then it trains in `Sequential` like any other.
# - BatchNorm's backward, node by node, sums the gradients of nodes with two uses; simplified, it is
#   $dx = \frac{\gamma}{\sqrt{\sigma^2+\epsilon}}(dy - \overline{dy} - \hat x\,\overline{dy\,\hat x})$,
#   the gradient with its mean and its $\hat x$ component removed.
# - Training mode uses the batch's statistics, inference mode the moving averages, which need a few
#   hundred steps to settle.
#
# ## Exercises
#
# Each exercise has a solution filled in (a cell tagged `solution`, left blank in the learner
# copies) and a cell that checks it.
#
# **Exercise 1.** A layer `y = x * s` with one learned scale per channel, `s` of shape `(C,)`. Write
# `scale_backward(x, s, dy)` returning `(dx, ds)`; it is checked against finite differences.

# %% tags=["solution"]
def scale_backward(x, s, dy):
    return dy * s, np.sum(dy * x, axis=tuple(range(x.ndim - 1)))


# %%
xs, ss, dys = rng.standard_normal((3, 4, 4, 2)), rng.standard_normal(2), rng.standard_normal((3, 4, 4, 2))
dx_e1, ds_e1 = scale_backward(xs, ss, dys)
scale_loss = lambda: np.sum(xs * ss * dys)  # noqa: E731
assert rel_error(dx_e1, numerical_gradient(scale_loss, xs)) < 1e-8
assert rel_error(ds_e1, numerical_gradient(scale_loss, ss)) < 1e-8
print("Exercise 1: correct")

# %% [markdown]
# **Exercise 2.** In inference mode BatchNormalization is an affine map per channel, $y = a\,x + b$.
# Write `bn_affine(gamma, beta, moving_mean, moving_variance, epsilon)` returning `(a, b)`; it is
# checked against the layer `bn` of 8.7 in inference mode.

# %% tags=["solution"]
def bn_affine(gamma, beta, moving_mean, moving_variance, epsilon):
    a = gamma / np.sqrt(moving_variance + epsilon)
    return a, beta - a * moving_mean


# %%
a, b = bn_affine(*bn.get_weights(), bn.epsilon)
np.testing.assert_allclose(a * features[:10] + b, bn(features[:10]), rtol=1e-5, atol=1e-5)
print("Exercise 2: correct, a =", a, "b =", b)

# %% [markdown]
# **Exercise 3.** Write the compact `bn_dx(dy, x, gamma, epsilon)` for a `(M, C)` batch, computing
# the statistics itself; it is checked against `reference.batchnorm_backward`.

# %% tags=["solution"]
def bn_dx(dy, x, gamma, epsilon):
    var = x.var(axis=0)
    xhat = (x - x.mean(axis=0)) / np.sqrt(var + epsilon)
    M = x.shape[0]
    return gamma / np.sqrt(var + epsilon) * (dy - dy.sum(axis=0) / M - xhat * (dy * xhat).sum(axis=0) / M)


# %%
np.testing.assert_allclose(bn_dx(dy, x, gamma, eps), reference.batchnorm_backward(dy, x, gamma, mean_ref, var_ref, eps)[0],
                           rtol=1e-10, atol=1e-12)
print("Exercise 3: correct")

# %% [markdown]
# ## Questions
#
# 1. PReLU with $a_c = 1$ is the identity and with $a_c = 0$ is ReLU. What keeps the learned slopes
#    from drifting to 1, which would make the layer linear?
# 2. Why is $\sum_m dx_m = 0$ for BatchNorm in training mode, whatever $dy$ is? (Look at the compact
#    form.) What does that say about a loss that depends only on each channel's mean of $y$?
# 3. A batch of one image: what does training-mode BatchNorm output for it (after a Flatten, with
#    `(1, C)` features)? Why do frameworks warn about it?
