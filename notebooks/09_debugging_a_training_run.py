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
# # 9. Debugging a training run
#
# A training run that goes wrong rarely crashes. The loss just stays flat, or falls and then
# explodes, or the model learns the training set and nothing else. The causes leave fingerprints in
# numbers that `fit` does not print: the size of each layer's gradients, how far each step moves the
# weights, what the layers output. `minicnn.inspect.record` collects them while the model trains.
# Here we break a healthy run in five classic ways, in the spirit of Karpathy's "A recipe for
# training neural networks", and look at each fingerprint.
#
# **What you will learn**
#
# - to record gradient norms, update/weight ratios and activation statistics during training;
# - the signature of each failure: a learning rate far too high, raw 0..255 inputs, vanishing
#   gradients in a deep sigmoid stack, dead ReLUs, and labels that carry no information;
# - which plot to look at first.

# %%
import math
import os

import matplotlib.pyplot as plt
import numpy as np

from minicnn import inspect
from minicnn.datasets import fashion_mnist
from minicnn.layers import Dense, Flatten, Input
from minicnn.models import Sequential
from minicnn.optimizers import SGD, Adam
from minicnn.utils import set_random_seed

SMOKE = os.environ.get("MINICNN_SMOKE") == "1"   # CI sets it: fewer steps, same code
rng = np.random.default_rng(0)
(x_all, y_all), (x_test, y_test) = fashion_mnist.load_data(sample=True)
x_all = x_all.reshape(len(x_all), -1).astype(np.float32)            # (N, 784) raw pixels 0..255
x_test = x_test.reshape(len(x_test), -1).astype(np.float32)
STEPS = 150 if SMOKE else 600


def mlp(hidden=(64, 64), activation="relu", name="mlp"):
    return Sequential([Input(shape=(784,))] + [Dense(u, activation=activation, name=f"dense_{i}")
                                               for i, u in enumerate(hidden)]
                      + [Dense(10, activation="softmax", name="output")], name=name)


def train(model, optimizer, x=None, y=None, steps=STEPS, every=5):
    """``steps`` steps of batch 32 with ``train_on_batch``, recorded; returns (losses, recorder)."""
    x = x_all / 255.0 if x is None else x
    y = y_all if y is None else y
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    order = np.random.default_rng(1).permutation(len(x))
    losses = []
    with inspect.record(model, every=every) as rec:
        for step in range(steps):
            batch = order[(32 * step) % len(x):][:32]
            losses.append(model.train_on_batch(x[batch], y[batch])[0])
    return np.array(losses), rec


def show(title, losses, rec, panels=("grad", "update")):
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(5 * (1 + len(panels)), 3.3))
    axes[0].plot(losses, lw=0.6)
    axes[0].axhline(math.log(10), color="gray", ls="--", lw=0.8)
    axes[0].set_title("training loss (dashed: ln 10)")
    axes[0].set_xlabel("step")
    for ax, panel in zip(axes[1:], panels):
        if panel == "grad":
            inspect.plot_gradient_norms(rec, ax=ax)
        else:
            inspect.plot_update_ratios(rec, ax=ax)
    fig.suptitle(title)
    plt.tight_layout()
    plt.show()


def median_ratio(rec, key):
    return float(np.nanmedian(rec.update_ratios[key]))

# %% [markdown]
# ## 9.1 A healthy run
#
# A small multilayer perceptron on Fashion-MNIST, inputs scaled to $[0, 1]$, Adam at its default
# rate. What healthy looks like: the loss starts near $\ln 10$ and falls; the gradient norms of the
# layers' kernels stay within an order of magnitude of each other; each step changes the weights by
# roughly $10^{-3}$ of their norm (the CS231n rule of thumb; the dashed line).

# %%
set_random_seed(0)
healthy, healthy_rec = train(mlp(), Adam(1e-3))
print(healthy_rec.summary())
print(f"loss {healthy[0]:.3f} -> {healthy[-20:].mean():.3f} (mean of the last 20 steps); "
      f"median update ratio of dense_0: {median_ratio(healthy_rec, 'dense_0/kernel'):.1e}")
show("healthy", healthy, healthy_rec)
kernel_norms = [np.mean(healthy_rec.grad_norms[f"{name}/kernel"]) for name in ("dense_0", "dense_1", "output")]
print("mean kernel gradient norms:", np.round(kernel_norms, 3))
assert abs(healthy[0] - math.log(10)) < 0.5 and healthy[-20:].mean() < 1.0
assert max(kernel_norms) < 10 * min(kernel_norms) and 1e-4 < median_ratio(healthy_rec, "dense_0/kernel") < 1e-2

# %% [markdown]
# ## 9.2 Learning rate far too high
#
# The same model with Adam at a learning rate of 1.0. Adam's first step moves every weight by about
# the learning rate, far more than the weights' own size. The signature: an update ratio far above
# $10^{-3}$ at the first step, weights whose norm balloons, and a loss that jumps up, then sits near
# $\ln 10$ while the healthy run's falls. The big step also kills most ReLUs of the first layers
# (a high learning rate is the commonest cause of dead units, 9.5); once the weights are huge, each
# step is small *relative* to them, so later ratios look harmless: look at the first steps.

# %%
set_random_seed(0)
too_high, too_high_rec = train(mlp(), Adam(1.0))
first_high = too_high_rec.update_ratios["dense_0/kernel"][0]
first_ok = healthy_rec.update_ratios["dense_0/kernel"][0]
norms_high = too_high_rec.weight_norms["dense_0/kernel"]
print(f"update ratio of dense_0 at the first step: {first_high:.1e} (healthy {first_ok:.1e}); kernel norm "
      f"{norms_high[0]:.0f} after it, {norms_high[-1]:.0f} at the end (healthy {healthy_rec.weight_norms['dense_0/kernel'][-1]:.0f})")
print(f"highest loss {too_high.max():.1f}; loss over the last 20 steps {too_high[-20:].mean():.2f} "
      f"(healthy {healthy[-20:].mean():.2f}); zero outputs of dense_1 at the end: "
      f"{too_high_rec.activations['dense_1']['zero_fraction'][-1]:.0%}")
show("learning rate far too high (Adam, 1.0)", too_high, too_high_rec)
assert first_high > 100 * first_ok and norms_high[-1] > 10 * healthy_rec.weight_norms["dense_0/kernel"][-1]
assert too_high.max() > 2 * math.log(10) and too_high[-20:].mean() > healthy[-20:].mean() + 0.5

# %% [markdown]
# ## 9.3 Raw 0..255 inputs
#
# Forget to divide by 255, and the first layer's outputs are 255 times larger than the initialisation
# was designed for. The signature is in the activations: the first layer's outputs have a standard
# deviation in the hundreds, the initial loss is far above $\ln 10$ (the softmax is confidently wrong
# from the first step), and the loss curve starts with spikes.

# %%
set_random_seed(0)
raw, raw_rec = train(mlp(), Adam(1e-3), x=x_all)
std_raw, std_ok = raw_rec.activations["dense_0"]["std"][0], healthy_rec.activations["dense_0"]["std"][0]
print(f"dense_0 output std at the first step: {std_raw:.1f} (healthy {std_ok:.2f}); first loss {raw[0]:.1f} "
      f"(healthy {healthy[0]:.2f})")
show("raw 0..255 inputs", raw, raw_rec, panels=("grad",))
inspect.plot_activation_histograms(raw_rec, step=0)
plt.show()
assert std_raw > 50 * std_ok and raw[0] > 2 * math.log(10)

# %% [markdown]
# ## 9.4 Vanishing gradients in a deep sigmoid stack
#
# Eight sigmoid layers trained with plain SGD. The sigmoid's derivative is at most $1/4$, so each
# layer the gradient passes on its way back multiplies it by a factor well below 1: the gradient
# norms *sink layer by layer* towards the input, and the first layers barely learn. The signature is
# in the gradient-norm plot: lines ordered by depth, orders of magnitude apart.

# %%
set_random_seed(0)
deep, deep_rec = train(mlp(hidden=(32,) * 8, activation="sigmoid", name="deep_sigmoid"), SGD(0.1))
norms = {f"dense_{i}": float(np.mean(deep_rec.grad_norms[f"dense_{i}/kernel"])) for i in range(8)}
print("mean gradient norm per layer, input to output:", {k: f"{v:.1e}" for k, v in norms.items()})
print(f"first layer / last hidden layer: {norms['dense_0'] / norms['dense_7']:.1e}; "
      f"loss {deep[0]:.3f} -> {deep[-20:].mean():.3f}")
show("deep sigmoid stack, SGD", deep, deep_rec, panels=("grad",))
assert norms["dense_0"] < 1e-2 * norms["dense_7"]

# %% [markdown]
# The remedies are the ones modern networks use: ReLU-like activations (derivative 1 where active),
# initialisations scaled to keep the signal's variance (He, Glorot), BatchNormalization (notebook 8)
# and residual connections.
#
# ## 9.5 Dead ReLUs
#
# A ReLU unit whose input is negative for every image outputs 0 and passes back a gradient of 0: it
# never recovers. A bad initialisation or one huge update can push a layer's biases far negative
# and kill most of its units. We do it on purpose, setting the first layer's biases to $-5$. The
# signature: the activation histograms show a spike at 0 (the share of exact zeros in the title), and
# the gradient of that layer's kernel is (nearly) zero.

# %%
set_random_seed(0)
dead_model = mlp()
kernel, bias = dead_model.layers[0].get_weights()
dead_model.layers[0].set_weights([kernel, np.full_like(bias, -5.0)])
dead, dead_rec = train(dead_model, Adam(1e-3))
zeros = dead_rec.activations["dense_0"]["zero_fraction"]
print(f"share of zero outputs of dense_0: {zeros[0]:.1%} at the start, {zeros[-1]:.1%} at the end "
      f"(healthy: {healthy_rec.activations['dense_0']['zero_fraction'][-1]:.1%}); loss {dead[0]:.3f} -> {dead[-20:].mean():.3f}")
inspect.plot_activation_histograms(dead_rec)
plt.show()
assert zeros[-1] > 0.9 and dead[-20:].mean() > healthy[-20:].mean()

# %% [markdown]
# ## 9.6 Labels that carry no information
#
# Shuffle the training labels, so that they have nothing to do with the images. A network large
# enough can still memorise them (Zhang et al., 2017), so the training loss falls, slowly; but on
# held-out images with their true labels it stays at chance. The signature is the gap: training
# loss falling, validation loss at or above $\ln 10$, validation accuracy near 10%. (It is also what
# a bug in the data pipeline that misaligns images and labels looks like.)

# %%
set_random_seed(0)
shuffled = rng.permutation(y_all)
noise_model = mlp(hidden=(256,))
noise_model.compile(optimizer=Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
noise_history = noise_model.fit(x_all / 255.0, shuffled, validation_data=(x_test / 255.0, y_test),
                                epochs=3 if SMOKE else 10, batch_size=32, verbose=0).history
truth_model = mlp(hidden=(256,))
truth_model.compile(optimizer=Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
truth_history = truth_model.fit(x_all / 255.0, y_all, validation_data=(x_test / 255.0, y_test),
                                epochs=3 if SMOKE else 10, batch_size=32, verbose=0).history
for name, h in (("shuffled labels", noise_history), ("true labels", truth_history)):
    print(f"{name:15s}: training loss {h['loss'][0]:.3f} -> {h['loss'][-1]:.3f}, "
          f"validation loss {h['val_loss'][-1]:.3f}, validation accuracy {h['val_accuracy'][-1]:.3f}")
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, h, color in (("shuffled labels", noise_history, "C3"), ("true labels", truth_history, "C0")):
    ax.plot(h["loss"], "-", color=color, label=f"{name}: training")
    ax.plot(h["val_loss"], "--", color=color, label=f"{name}: validation")
ax.axhline(math.log(10), color="gray", lw=0.8)
ax.set_xlabel("epoch")
ax.set_ylabel("loss")
ax.legend(fontsize=8)
plt.show()
assert noise_history["val_accuracy"][-1] < 0.2 and noise_history["val_loss"][-1] > math.log(10) - 0.1
assert noise_history["loss"][-1] < noise_history["loss"][0] and truth_history["val_accuracy"][-1] > 0.7

# %% [markdown]
# ## Summary: where to look first
#
# | symptom | look at | signature | cause |
# |---|---|---|---|
# | loss jumps, then stays near $\ln K$ | update ratios, weight norms | $\gg 10^{-3}$ at the first steps; norms balloon | learning rate too high |
# | first loss $\gg \ln K$, early spikes | activations of the first layer | std in the hundreds | unscaled inputs |
# | loss falls slowly, first layers frozen | gradient norms | ordered by depth, decades apart | vanishing gradients |
# | a layer outputs mostly 0 | activation histograms | zero share near 100% | dead ReLUs |
# | training improves, validation at chance | training vs validation curves | the gap | labels unrelated to inputs |
#
# And before all of them, the two checks of notebook 7: the initial loss near $\ln K$, and a model
# that can overfit 20 images.
#
# ## Exercises
#
# Each exercise has a solution filled in (a cell tagged `solution`, left blank in the learner
# copies) and a cell that checks it.
#
# **Exercise 1.** The recorder keeps, per recorded step, the norm of a weight *after* the step
# (`weight_norms`), the norm of the step (`update_norms`) and the step relative to the weight's norm
# *before* it (`update_ratios`). Recover the norm before each recorded step of `dense_0`'s kernel
# in the too-high run. It is checked at step 0 against a freshly built model with the same seed,
# whose kernel is the one the run started from.

# %% tags=["solution"]
answer_1 = np.array(too_high_rec.update_norms["dense_0/kernel"]) / np.array(too_high_rec.update_ratios["dense_0/kernel"])

# %%
set_random_seed(0)
start_norm = np.linalg.norm(mlp().layers[0].params["kernel"].astype(np.float64))
assert np.isclose(answer_1[0], start_norm, rtol=1e-5), (answer_1[0], start_norm)
print(f"Exercise 1: correct; the kernel's norm was {answer_1[0]:.2f} before the first step, "
      f"{too_high_rec.weight_norms['dense_0/kernel'][0]:.1f} after it")

# %% [markdown]
# **Exercise 2.** The sigmoid's derivative $\sigma'(z) = \sigma(z)(1-\sigma(z))$ is at most $1/4$.
# Give that maximum as a number, and the most the gradient can be scaled by through 8 sigmoid
# layers from the activations alone, i.e. $(\max\sigma')^8$.

# %% tags=["solution"]
answer_2_max = 0.25
answer_2_eight = 0.25 ** 8

# %%
z = np.linspace(-10, 10, 100_001)
s = 1 / (1 + np.exp(-z))
assert np.isclose(answer_2_max, (s * (1 - s)).max(), rtol=1e-6)
assert np.isclose(answer_2_eight, (s * (1 - s)).max() ** 8, rtol=1e-5)
print(f"Exercise 2: correct, {answer_2_eight:.1e}")

# %% [markdown]
# ## Questions
#
# 1. In 9.4 the gradient norms fell by less than $(1/4)^8$ between the last and the first layer. What
#    else in the backward pass multiplies the gradient, and can it be larger than 1?
# 2. Why does Adam at a learning rate of 1.0 *not* produce NaN here, while SGD at a huge rate
#    usually does? (Notebook 3: how big is one Adam step?)
# 3. The shuffled-label model's training loss fell. Would it reach 0 with enough epochs? What does
#    that say about using training accuracy to judge a model?
