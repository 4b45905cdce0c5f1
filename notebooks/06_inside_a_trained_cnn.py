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
# # 6. Inside a trained CNN
#
# A trained network is a pile of numbers. This notebook looks at those numbers in the ways that
# explain something: what the first filters detect, what each layer passes on, which pixels a
# prediction depends on, and which mistakes the network makes while being sure of itself.
#
# **What you will learn**
#
# - what the filters of a first convolution learn, compared with their random start;
# - how an image turns into feature maps, layer by layer;
# - saliency: the gradient of a class score with respect to the input pixels, computed with the same
#   backward passes as training (and checked with finite differences);
# - how to find and read the most confident mistakes.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import minicnn
import minicnn.inspect
from minicnn import plotting
from minicnn.datasets import fashion_mnist
from minicnn.gradcheck import numerical_gradient, rel_error
from minicnn.kernels import reference
from minicnn.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D
from minicnn.layers.preprocessing import Rescaling
from minicnn.models import Sequential
from minicnn.utils import set_random_seed

SMOKE = os.environ.get("MINICNN_SMOKE") == "1"   # CI sets it: 2,000 training images and 1 epoch
set_random_seed(0)
np.set_printoptions(precision=3, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 6.1 A model to look into
#
# The small CNN of notebook 5 (without augmentation, to keep it quick), trained on Fashion-MNIST:
# the full dataset if it is installed, else the sample shipped with minicnn. We name the layers so
# we can ask for them by name, and keep a copy of the first layer's random initial filters.

# %%
USE_FULL = fashion_mnist.find() is not None and not SMOKE
(x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(sample=not USE_FULL)
if SMOKE:
    x_train, y_train = x_train[:2000], y_train[:2000]
x_train, x_test = x_train[..., None], x_test[..., None]          # NHWC, raw pixels 0..255
class_names = fashion_mnist.CLASS_NAMES
EPOCHS = 1 if SMOKE else (2 if USE_FULL else 8)

model = Sequential([
    Input(shape=(28, 28, 1)),
    Rescaling(1.0 / 255, name="rescale"),
    Conv2D(32, (3, 3), activation="relu", name="conv1"),
    MaxPooling2D((2, 2), name="pool1"),
    Conv2D(64, (3, 3), activation="relu", name="conv2"),
    MaxPooling2D((2, 2), name="pool2"),
    Flatten(name="flatten"),
    Dense(128, activation="relu", name="dense"),
    Dense(len(class_names), activation="softmax", name="output"),
], name="small_cnn")
conv1 = model.layers[1]
initial_filters = conv1.params["kernel"].copy()
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=2)
test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"trained on {len(x_train):,} images for {EPOCHS} epoch(s): test accuracy {test_accuracy:.4f}")
assert test_accuracy > (0.45 if SMOKE else 0.8)

# %% [markdown]
# ## 6.2 Filters
#
# `conv1` has 32 filters of 3×3×1 weights. Each output pixel is the dot product of one filter with
# a 3×3 patch (notebook 1), so a filter responds most to patches that look like it: plotted as
# little images (light = positive weight), they show what the layer looks for. Before training they
# are noise; after training, look for filters with a clear dark-to-light direction (edge detectors
# like the Sobel filters of notebook 1, in various orientations) and for blob and brightness
# detectors. How many there are depends on how long the model trained.

# %%
for kernel, title in ((initial_filters, "before training (random)"), (conv1.params["kernel"], "after training")):
    fig = plotting.plot_filters(kernel, ncols=16)
    fig.suptitle(f"conv1: 32 filters of 3x3, {title}")
    plt.show()

# %% [markdown]
# A number for "looks like an edge detector": the cosine similarity of each filter with the four
# Sobel-like kernels for vertical, horizontal and the two diagonal edges (either sign), 1 for a
# perfect match. What random filters score is computed from 10,000 random ones, so that the trained
# filters' score has something to be compared with.

# %%
sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=float)
sobel_d = np.array([[0, 1, 2], [-1, 0, 1], [-2, -1, 0]], dtype=float)
edges = np.stack([sobel_x, sobel_x.T, sobel_d, sobel_d[::-1]]).reshape(4, 9)
edges /= np.linalg.norm(edges, axis=1, keepdims=True)


def edge_likeness(kernel):
    """For each filter, the largest |cosine similarity| with the four edge kernels."""
    filters = kernel[:, :, 0, :].reshape(9, -1).T                      # (F, 9)
    filters = filters / np.linalg.norm(filters, axis=1, keepdims=True)
    return np.abs(filters @ edges.T).max(axis=1)


before, after = edge_likeness(initial_filters), edge_likeness(conv1.params["kernel"])
chance = edge_likeness(rng.uniform(-1, 1, (3, 3, 1, 10_000)))              # many random filters
print(f"edge-likeness, mean: 10,000 random filters {chance.mean():.2f} (above 0.8: {np.mean(chance > 0.8):.1%}); "
      f"conv1 before training {before.mean():.2f}, after {after.mean():.2f}")
print(f"conv1 filters above 0.8: before {np.sum(before > 0.8)}, after {np.sum(after > 0.8)} of 32")
print("filters most like an edge detector:", np.argsort(-after)[:6])
print("trained filters are more edge-like than random ones" if after.mean() > chance.mean() + 2 * chance.std() / np.sqrt(32)
      else "after this little training the filters are not (yet) clearly more edge-like than random ones")

# %% [markdown]
# ## 6.3 Feature maps
#
# The output of a layer for one image is a stack of *feature maps*, one per filter: where in the
# image that filter fired. `plotting.plot_feature_maps` runs the image through the model up to the
# chosen layer. conv1's maps are still recognisably the garment, each highlighting different edges;
# after one pooling and conv2 they are 11×11 (the cell checks the shapes), coarser and more
# abstract: look for maps that mark *parts* of the boot (the sole, the shaft, the heel) rather than
# edges.

# %%
image = x_test[int(np.flatnonzero(y_test == 9)[0])]                     # an ankle boot
for layer in ("conv1", "conv2"):
    fig = plotting.plot_feature_maps(model, image, layer=layer, max_maps=16, ncols=8)
    plt.show()
shapes = {name: plotting.feature_maps(model, image, layer=name)[1].shape for name in ("conv1", "pool1", "conv2", "pool2")}
print("feature map shapes for one image:", shapes)
assert shapes["conv2"] == (1, 11, 11, 64)

# %% [markdown]
# ## 6.4 Which pixels drive a prediction: saliency
#
# Let $z_k(x)$ be the score (the logit, before the softmax) of class $k$ for image $x$. Its gradient
# with respect to the input,
#
# $$ s_{h,w} = \frac{\partial z_k}{\partial x_{h,w}}, $$
#
# says how much the score would change if pixel $(h, w)$ changed a little: a map of the pixels the
# decision is most sensitive to (Simonyan et al., 2014). Computing it needs nothing new: a forward
# pass, then the layers' own `backward`, started from $dz = e_k$ (1 for class $k$, 0 elsewhere)
# instead of from a loss. `minicnn.inspect.saliency` does exactly that.
#
# First, trust but verify. We check it against finite differences (notebook 2) on a float64 copy of
# the trained model. A fashion photo has a black background full of exact ties in the max-pools
# (kinks, where finite differences and backward legitimately disagree), so we add noise of at most
# one grey level to the image first, and take small steps ($\varepsilon = 10^{-5}$ grey levels).
# Even so, a step now and then crosses a ReLU's kink somewhere in the 30,000 units of the network,
# and spoils the estimate for the pixels whose nudge reaches it. So the check is in two parts: the
# relative error over all pixels stays below $10^{-4}$ (looser than notebook 2's $10^{-7}$ for a
# single layer), and at most 1% of the pixels differ by more than 0.1% of the largest value.

# %%
minicnn.set_floatx("float64")
try:
    model64 = Sequential.from_config(model.get_config())            # same architecture, built in float64
finally:
    minicnn.set_floatx("float32")                                   # restored even if building fails
model64.set_weights(model.get_weights())
noisy = image.astype(np.float64) + np.random.default_rng(6).uniform(0, 1, image.shape)   # its own generator
k = int(np.argmax(model64(noisy[None])))


def logit_k():
    h = noisy[None]
    for layer in model64.layers[:-1]:
        h = layer.forward(h)
    output = model64.layers[-1]                                      # Dense(10) followed by softmax
    return float((h @ output.params["kernel"] + output.params["bias"])[0, k])


s = minicnn.inspect.saliency(model64, noisy, class_index=k)
window = (slice(10, 18), slice(10, 18)) if SMOKE else (slice(None), slice(None))   # smoke mode: 8x8 pixels
numeric = numerical_gradient(logit_k, noisy[window], eps=1e-5)   # a view: the nudges reach `noisy`
err = rel_error(s[window], numeric)
off = np.sum(np.abs(s[window] - numeric) > 1e-3 * np.abs(numeric).max())
print(f"saliency of '{class_names[k]}': shape {s.shape}; on {numeric.size} pixels, "
      f"rel_error against finite differences {err:.1e} ({off} pixels off by more than 0.1% of the largest)")
assert err < 1e-4 and off <= 0.01 * numeric.size

# %% [markdown]
# Now the maps, for one test image of each class, for the class the model predicts. Bright pixels
# are those the score is most sensitive to (we plot $|s|$).

# %%
picks = [int(np.flatnonzero(y_test == c)[0]) for c in range(len(class_names))]
images = x_test[picks].astype(np.float32)
predicted = model.predict(images, verbose=0).argmax(axis=1)
maps = np.abs(minicnn.inspect.saliency(model, images))               # (10, 28, 28, 1), predicted classes
fig, axes = plt.subplots(2, len(picks), figsize=(16, 3.6))
for col, (img, heat, p) in enumerate(zip(images, maps, predicted)):
    axes[0, col].imshow(img[..., 0], cmap="gray")
    axes[0, col].set_title(f"{class_names[y_test[picks[col]]]}\npred: {class_names[p]}", fontsize=8,
                           color="black" if p == y_test[picks[col]] else "red")
    axes[1, col].imshow(heat[..., 0], cmap="hot")
for ax in axes.ravel():
    ax.axis("off")
fig.suptitle("test images (top) and |d score / d pixel| for the predicted class (bottom)")
plt.tight_layout()
plt.show()

# %% [markdown]
# Raw gradients are noisy, and they are not confined to the garment: a bright pixel appearing in the
# background would change the score too (light in the gap between trouser legs would make them look
# more like a dress). Look where the strongest values sit: for a well-trained model they tend to mark
# telling places, such as the gap between trouser legs or the heel of a boot. (Smoother variants,
# such as averaging the gradient over noisy copies of the image, are a small step from here.)
#
# Does the map mean what it says? A simple test: blank (set to 0, the background value) the 5% of
# pixels with the largest $|s|$, and, for comparison, as many random pixels of the garment, then see
# how much the probability of the predicted class drops. If the map points at what matters, blanking
# its pixels should hurt more.
#
# A caveat: a garment with holes punched in it is an image unlike any the model was trained on
# (*out of distribution*). Part of any drop may come from that strangeness rather than from the
# evidence removed, which is why the comparison with random pixels matters more than either number;
# even so, the two kinds of holes look different (salient pixels cluster on edges), so the test is
# suggestive, not proof. Retraining on blanked images (ROAR, Hooker et al., 2019) removes the
# caveat at the cost of many trainings.

# %%
n = 200 if SMOKE else 500
batch = x_test[:n].astype(np.float32)
probs = model.predict(batch, verbose=0)
pred = probs.argmax(axis=1)
heat = np.abs(minicnn.inspect.saliency(model, batch)).reshape(n, -1)
salient = heat >= np.quantile(heat, 0.95, axis=1, keepdims=True)
random_pixels = np.zeros_like(salient)
for i in range(n):
    garment = np.flatnonzero(batch[i].reshape(-1) > 0)
    random_pixels[i, rng.choice(garment, min(salient[i].sum(), garment.size), replace=False)] = True


def probability_drop(mask):
    blanked = batch.reshape(n, -1).copy()
    blanked[mask] = 0
    after = model.predict(blanked.reshape(batch.shape), verbose=0)
    return float(np.mean(probs[np.arange(n), pred] - after[np.arange(n), pred]))


drop_salient, drop_random = probability_drop(salient), probability_drop(random_pixels)
print(f"mean drop of the predicted class's probability: blanking the most salient 5% {drop_salient:.3f}, "
      f"as many random garment pixels {drop_random:.3f}")
assert drop_salient > drop_random

# %% [markdown]
# ## 6.5 The most confident mistakes
#
# Every model makes mistakes; the interesting ones are those it makes with high confidence. Sort the
# misclassified test images by the probability the model gave its (wrong) answer:

# %%
probabilities = model.predict(x_test, verbose=0)
y_pred = probabilities.argmax(axis=1)
confidence = probabilities.max(axis=1)
wrong = np.flatnonzero(y_pred != y_test)
worst = wrong[np.argsort(-confidence[wrong])][:16]
print(f"{wrong.size} of {len(y_test)} test images misclassified; "
      f"{np.sum(confidence[wrong] > 0.9)} of those with more than 90% confidence")
for i in worst[:8]:
    print(f"  test image {i:5d}: true {class_names[y_test[i]]:<12s} predicted {class_names[y_pred[i]]:<12s} "
          f"with {confidence[i]:.1%}")
fig = plotting.plot_images(x_test[worst], labels=y_test[worst], predictions=probabilities[worst],
                           class_names=class_names, ncols=8)
plt.show()
assert wrong.size > 0 and np.all(np.diff(confidence[worst]) <= 0)

# %%
edges_conf = np.linspace(0.1, 1.0, 10)
group = np.clip(np.digitize(confidence, edges_conf[1:-1]), 0, len(edges_conf) - 2)
correct = y_pred == y_test
rows = [(confidence[group == b].mean(), correct[group == b].mean(), np.sum(group == b))
        for b in range(len(edges_conf) - 1) if np.any(group == b)]
mean_conf, acc = confidence.mean(), correct.mean()
ece = sum(n * abs(c - a) for c, a, n in rows) / len(y_test)      # expected calibration error
print(f"mean confidence {mean_conf:.3f}, accuracy {acc:.3f}: "
      + ("over-confident" if mean_conf > acc else "under-confident") + f" by {abs(mean_conf - acc):.3f}; "
      f"expected calibration error {ece:.3f}")
fig, ax = plt.subplots(figsize=(4.5, 4))
ax.plot([0, 1], [0, 1], color="gray", lw=0.8)
ax.plot([c for c, _, _ in rows], [a for _, a, _ in rows], "o-")
ax.set_xlabel("mean confidence of the group")
ax.set_ylabel("accuracy of the group")
ax.set_title("reliability diagram (test set)")
plt.show()
assert abs(sum(n for _, _, n in rows) - len(y_test)) == 0

# %% [markdown]
# Reading them is instructive. Look at which classes they mix up: in this dataset, classes overlap
# (shirt, T-shirt, pullover, coat; sneaker and sandal; ankle boot and sneaker), and a 28×28 grey
# thumbnail loses the detail (a collar, buttons, a strap) that would decide it. Some are arguably
# labelled wrongly, and no model can get those right.
#
# Is the softmax output a calibrated probability? If it were, of the test images predicted with
# 90% confidence, 90% would be right. Group the predictions by confidence and compare each group's
# mean confidence with its accuracy (a *reliability diagram*): points below the diagonal mean
# over-confidence, above it under-confidence. Networks trained long with cross-entropy are often
# over-confident (Guo et al., 2017); a model trained briefly may not be. This one:
#
# ## Summary
#
# - First-layer filters start as noise and learn edge and blob detectors; deeper feature maps are
#   coarser and mark parts rather than edges.
# - Saliency $\partial z_k/\partial x$ is one backward pass started from $e_k$; it is checked like any
#   other gradient, and blanking the pixels it highlights hurts the prediction more than blanking
#   random ones.
# - Sorting mistakes by confidence finds ambiguous classes and label noise; a reliability diagram
#   shows whether the confidences can be read as probabilities.
#
# ## Exercises
#
# Each exercise has a solution filled in (a cell tagged `solution`, left blank in the learner
# copies) and a cell that checks it against minicnn.
#
# **Exercise 1.** Recompute conv1's feature maps for `image` with `minicnn.kernels.reference`:
# rescale, convolve with conv1's kernel and bias, apply ReLU.

# %% tags=["solution"]
x1 = image[None].astype(np.float32) / 255
answer_1 = np.maximum(reference.conv2d_forward(x1, conv1.params["kernel"], conv1.params["bias"]), 0)

# %%
np.testing.assert_allclose(answer_1, plotting.feature_maps(model, image, layer="conv1")[1], rtol=1e-4, atol=1e-5)
print("Exercise 1: correct", answer_1.shape)

# %% [markdown]
# **Exercise 2.** For a linear model `Rescaling(1/255) -> Flatten -> Dense(10)`, the logit is
# $z_k = b_k + \sum_d W_{d,k}\, x_d / 255$. What is its saliency for class $k$? Write it from the
# weights and check it against `minicnn.inspect.saliency`.

# %%
linear = Sequential([Input(shape=(28, 28, 1)), Rescaling(1.0 / 255), Flatten(), Dense(10, activation="softmax")])
k = 3

# %% tags=["solution"]
answer_2 = (linear.layers[-1].params["kernel"][:, k] / 255).reshape(28, 28, 1)

# %%
np.testing.assert_allclose(minicnn.inspect.saliency(linear, image.astype(np.float32), class_index=k), answer_2,
                           rtol=1e-5, atol=1e-9)
print("Exercise 2: correct: a linear model's saliency is its weight template, the same for every image")

# %% [markdown]
# **Exercise 3.** The saliency of a class *probability* $p_k$ follows from the logit saliencies by the
# softmax backward of notebook 2: $\partial p_k/\partial x = p_k\big(\partial z_k/\partial x - \sum_j p_j\,
# \partial z_j/\partial x\big)$. Compute it from `saliency(..., score="logit")` for every class and check
# it against `saliency(..., score="probability")`.

# %%
img32 = image.astype(np.float32)
p = model.predict(img32[None], verbose=0)[0]
dz = np.stack([minicnn.inspect.saliency(model, img32, class_index=j) for j in range(len(class_names))])   # (10, 28, 28, 1)
k = int(p.argmax())

# %% tags=["solution"]
answer_3 = p[k] * (dz[k] - np.tensordot(p, dz, axes=1))

# %%
expected = minicnn.inspect.saliency(model, img32, class_index=k, score="probability")
np.testing.assert_allclose(answer_3, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
print("Exercise 3: correct")

# %% [markdown]
# ## Questions
#
# 1. Exercise 2 says a linear model's saliency is the same for every image. Why is a CNN's not?
#    Which layers make it depend on the image?
# 2. Train the model for more epochs and rerun the reliability diagram. Does it move towards
#    over-confidence? Why would a longer training on cross-entropy push it there?
# 3. Blanking sets pixels to 0, the background. What would blanking to the mean grey change, and
#    which of the two is further out of distribution for this dataset?
