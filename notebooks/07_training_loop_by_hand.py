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
# # 7. A training loop by hand
#
# `model.fit` hides four steps that every training loop repeats: a forward pass through the layers,
# the loss, a backward pass through the layers in reverse, and an optimizer step. Here we write them
# out, check that they do exactly what `fit` does, and run the sanity checks a practitioner runs
# before trusting a long training run.
#
# **What you will learn**
#
# - the four steps of a training step, written with the layers' own `forward`, `backward` and an
#   optimizer's `apply_gradients`, and checked against `train_on_batch`;
# - an epoch: shuffling, mini-batches, a loss curve;
# - the first sanity checks: the initial loss of a 10-class classifier is near $\ln 10$, and a
#   model must be able to overfit 20 images to 100% accuracy.

# %%
import math
import os

import matplotlib.pyplot as plt
import numpy as np

from minicnn.datasets import fashion_mnist
from minicnn.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D
from minicnn.losses import SparseCategoricalCrossentropy
from minicnn.models import Sequential
from minicnn.optimizers import Adam
from minicnn.utils import set_random_seed

SMOKE = os.environ.get("MINICNN_SMOKE") == "1"   # CI sets it: fewer images, same code
set_random_seed(0)
rng = np.random.default_rng(0)

(x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(sample=True)
n_train = 1000 if SMOKE else len(x_train)
x_train = x_train[:n_train].reshape(-1, 28, 28, 1) / 255.0       # NHWC in [0, 1]; safe to rerun
y_train = y_train[:n_train]
x_test = x_test.reshape(-1, 28, 28, 1) / 255.0
print("train", x_train.shape, "test", x_test.shape)


def make_model(num_classes=10):
    """A small CNN: 8 filters, a pooling, a softmax classifier."""
    return Sequential([
        Input(shape=(28, 28, 1)),
        Conv2D(8, (3, 3), activation="relu"),
        MaxPooling2D((2, 2)),
        Flatten(),
        Dense(num_classes, activation="softmax"),
    ])

# %% [markdown]
# ## 7.1 The four steps
#
# A `Sequential` model is a list of layers, `model.layers`. One training step on a batch `(x, y)`:
#
# 1. **forward**: $h_0 = x$, $h_{l} = f_l(h_{l-1})$ for each layer, with `training=True` (so that
#    each layer keeps in its `cache` what its backward needs); the last $h$ is the probabilities $p$;
# 2. **loss**: $L = -\frac1N \sum_n \log p_{n, y_n}$, and its gradient $\partial L/\partial p$;
# 3. **backward**: in reverse order, `dh = layer.backward(dh)`; each layer fills `layer.grads`
#    with $\partial L/\partial w$ for its parameters and returns $\partial L/\partial h_{l-1}$;
# 4. **step**: `optimizer.apply_gradients(layers)` moves every parameter using its gradient.

# %%
model = make_model()
loss_fn = SparseCategoricalCrossentropy()
optimizer = Adam(learning_rate=1e-3)
xb, yb = x_train[:32], y_train[:32]

h = xb
for layer in model.layers:                        # 1. forward
    h = layer.forward(h, training=True)
    print(f"{layer.name:<16s} -> {h.shape}")
p = h
loss = loss_fn(yb, p)                             # 2. loss and dL/dp
dh = loss_fn.gradient(yb, p)
for layer in reversed(model.layers):              # 3. backward
    dh = layer.backward(dh)
print("gradients:", {f"{layer.name}/{k}": g.shape for layer in model.layers for k, g in layer.grads.items()})
optimizer.apply_gradients(model.layers)           # 4. step
print(f"loss on the batch before the step: {loss:.4f}")

# %% [markdown]
# Is that what `fit` does? A second model with the same starting weights, compiled with the same
# optimizer and loss, takes one step with `train_on_batch`; the weights must come out the same.
# (Not bit for bit: `fit` takes the fused softmax + cross-entropy gradient $(p - y)/N$ of notebook 2
# instead of going through $\partial L/\partial p$ and softmax's backward, so float32 rounding
# differs.)

# %%
set_random_seed(1)
mine, theirs = make_model(), make_model()
theirs.set_weights(mine.get_weights())
theirs.compile(optimizer=Adam(learning_rate=1e-3), loss="sparse_categorical_crossentropy")


def train_step(model, loss_fn, optimizer, x, y):
    """One step of the four; returns the loss before the step."""
    h = x
    for layer in model.layers:
        h = layer.forward(h, training=True)
    loss = loss_fn(y, h)
    dh = loss_fn.gradient(y, h)
    for layer in reversed(model.layers):
        dh = layer.backward(dh)
    optimizer.apply_gradients(model.layers)
    return loss


opt_mine = Adam(learning_rate=1e-3)
for step in range(3):
    batch = slice(32 * step, 32 * step + 32)
    loss_mine = train_step(mine, loss_fn, opt_mine, x_train[batch], y_train[batch])
    loss_theirs = theirs.train_on_batch(x_train[batch], y_train[batch])
    gap = max(np.abs(a - b).max() for a, b in zip(mine.get_weights(), theirs.get_weights()))
    print(f"step {step}: loss by hand {loss_mine:.6f}, train_on_batch {loss_theirs:.6f}; largest weight difference {gap:.1e}")
    assert np.isclose(loss_mine, loss_theirs, rtol=1e-5) and gap < 1e-5

# %% [markdown]
# ## 7.2 Sanity check 1: the initial loss
#
# Before training, a classifier should not prefer any class: with small random weights the logits
# are all near 0 and the softmax gives every class about $1/K$. The cross-entropy is then
# $-\log(1/K) = \ln K$: $\ln 10 \approx 2.303$ for 10 classes. An initial loss far from it means
# something is off before the first step (inputs on the wrong scale, a wrong loss, labels in the
# wrong format). Checked on a fresh model, over 1,000 training images:

# %%
fresh = make_model()
initial_loss = loss_fn(y_train[:1000], fresh.predict(x_train[:1000], verbose=0))
print(f"initial loss {initial_loss:.4f}, ln 10 = {math.log(10):.4f}")
assert abs(initial_loss - math.log(10)) < 0.2

raw = loss_fn(y_train[:1000], fresh.predict(x_train[:1000] * 255, verbose=0))
print(f"the same model on raw 0..255 pixels: initial loss {raw:.2f}  <- a red flag")
assert raw > initial_loss + 1

# %% [markdown]
# ## 7.3 Sanity check 2: overfit a tiny set
#
# A model that cannot learn 20 images by heart cannot learn 60,000. Train on 20 images only, with a
# full batch, until the training accuracy is 100%. If the loss does not fall towards 0, the bug is in
# the loop (a missing step, a sign, a gradient not reaching the weights), not in the data.

# %%
set_random_seed(2)
tiny = make_model()
x20, y20 = x_train[:20], y_train[:20]
tiny_optimizer = Adam(learning_rate=1e-2)
tiny_losses = [train_step(tiny, loss_fn, tiny_optimizer, x20, y20) for _ in range(100)]
tiny_accuracy = np.mean(tiny.predict(x20, verbose=0).argmax(axis=1) == y20)
print(f"20 images: loss {tiny_losses[0]:.3f} -> {tiny_losses[-1]:.4f} in 100 steps, accuracy {tiny_accuracy:.0%}")
assert tiny_accuracy == 1.0 and tiny_losses[-1] < 0.05

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogy(tiny_losses)
ax.axhline(math.log(10), color="gray", ls="--", label="ln 10")
ax.set_xlabel("step")
ax.set_ylabel("training loss")
ax.set_title("overfitting 20 images")
ax.legend()
plt.show()

# %% [markdown]
# ## 7.4 Epochs and mini-batches
#
# An epoch visits every training image once, in a new random order each time (so that consecutive
# batches are not always the same), in mini-batches of 32. We keep the loss of every step, and at
# the end of each epoch measure the test accuracy.

# %%
set_random_seed(3)
net, opt = make_model(), Adam(learning_rate=1e-3)
epochs, batch_size = (1 if SMOKE else 3), 32
step_losses, test_accuracy = [], []
for epoch in range(epochs):
    order = rng.permutation(len(x_train))
    for start in range(0, len(x_train), batch_size):
        batch = order[start:start + batch_size]
        step_losses.append(train_step(net, loss_fn, opt, x_train[batch], y_train[batch]))
    test_accuracy.append(np.mean(net.predict(x_test, verbose=0).argmax(axis=1) == y_test))
    print(f"epoch {epoch + 1}/{epochs}: mean training loss {np.mean(step_losses[-(len(x_train) // batch_size):]):.4f}, "
          f"test accuracy {test_accuracy[-1]:.4f}")
assert test_accuracy[-1] > (0.45 if SMOKE else 0.75)   # chance is 0.10

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(step_losses, lw=0.5, alpha=0.5, label="one step")
window = 20
ax.plot(np.arange(window - 1, len(step_losses)), np.convolve(step_losses, np.ones(window) / window, "valid"),
        label=f"mean of {window} steps")
ax.set_xlabel("step")
ax.set_ylabel("training loss")
ax.set_title("a training run written by hand")
ax.legend()
plt.show()

# %% [markdown]
# The loss of one step jumps around (each batch is a different sample of 32), so a curve is read
# through a running mean. This loop is, step for step, what `model.fit(x, y, batch_size=32,
# epochs=...)` runs, plus what `fit` adds around it: the progress bar, validation, callbacks,
# metrics and a few speed tricks (the fused softmax gradient; no input gradient for the first layer).
#
# ## Summary
#
# - A training step is forward (`training=True`), loss and $\partial L/\partial p$, backward in
#   reverse, optimizer step; it matches `train_on_batch` to float32 rounding.
# - Before a long run: the initial loss should be near $\ln K$; the model must overfit a tiny set.
# - An epoch shuffles, then walks through the data in mini-batches; read the loss through a running mean.
#
# ## Exercises
#
# Each exercise has a solution filled in (a cell tagged `solution`, left blank in the learner
# copies) and a cell that checks it.
#
# **Exercise 1.** Write `accuracy(model, x, y)`: the fraction of images whose most probable class is
# the label, from `model.predict`. It is checked against `model.evaluate`.

# %% tags=["solution"]
def accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0).argmax(axis=1) == y))


# %%
net.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
expected = net.evaluate(x_test[:500], y_test[:500], verbose=0)[1]
assert np.isclose(accuracy(net, x_test[:500], y_test[:500]), expected), expected
print("Exercise 1: correct", expected)

# %% [markdown]
# **Exercise 2.** What initial loss do you expect for a classifier with $K = 4$ classes and logits
# all near 0? It is checked on a fresh 4-class model.

# %% tags=["solution"]
answer_2 = math.log(4)

# %%
measured = loss_fn(y_train[:1000] % 4, make_model(num_classes=4).predict(x_train[:1000], verbose=0))
assert abs(answer_2 - measured) < 0.2, (answer_2, measured)
print(f"Exercise 2: correct, {answer_2:.4f} (measured {measured:.4f})")

# %% [markdown]
# **Exercise 3.** Plain SGD by hand: write `sgd_step(layers, learning_rate)`, which moves every
# parameter by $-\eta\, \partial L/\partial w$ (in place), and check it against
# `minicnn.optimizers.SGD` after one forward and backward pass.

# %% tags=["solution"]
def sgd_step(layers, learning_rate):
    for layer in layers:
        for name in layer.params:
            layer.params[name] -= learning_rate * layer.grads[name]


# %%
from minicnn.optimizers import SGD

a, b = make_model(), make_model()
b.set_weights(a.get_weights())
for m in (a, b):
    h = x_train[:16]
    for layer in m.layers:
        h = layer.forward(h, training=True)
    dh = loss_fn.gradient(y_train[:16], h)
    for layer in reversed(m.layers):
        dh = layer.backward(dh)
sgd_step(a.layers, 0.1)
SGD(learning_rate=0.1).apply_gradients(b.layers)
for wa, wb in zip(a.get_weights(), b.get_weights()):
    np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)
print("Exercise 3: correct")

# %% [markdown]
# ## Questions
#
# 1. The raw-pixel model's initial loss was far above $\ln 10$. Why does multiplying the inputs by
#    255 make the initial predictions confident (and mostly wrong)?
# 2. Why overfit 20 images *before* tuning anything else? What would a model that overfits 20 images
#    but not 200 tell you?
# 3. In 7.4 the last batch of an epoch may have fewer than 32 images. Does that change the loss's
#    scale, given that the loss is a mean over the batch? Would a sum be better or worse?
