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
# # 5. An image classification pipeline, end to end
#
# The blog *Image Classification With Deep Learning* lists the steps: collect and preprocess the data
# (resize, normalize, augment), build a CNN, train it while watching a validation set, evaluate it on
# a separate test set, and use it on new images. Its Keras code runs in minicnn with `keras` replaced
# by `minicnn`. Here we follow the steps on Fashion-MNIST: 28×28 grey photos of clothing in 10
# classes.
#
# **What you will learn**
#
# - how to look at a dataset before training on it (shapes, value ranges, class balance, pictures);
# - normalization and data augmentation, with minicnn's preprocessing layers;
# - the blog's model, why its dense layer holds most of its weights, and a smaller CNN with a third
#   of the weights;
# - training with a validation set and Keras's progress bar, and reading the learning curves;
# - evaluation beyond one accuracy number: a confusion matrix and a per-class report;
# - predicting the class of image files, and saving and loading a trained model.
#
# By default the notebook uses the 6,000 + 1,000 image sample that ships inside minicnn (it runs
# offline). If the full dataset is installed (`sudo apt install dataset-fashion-mnist` on
# Debian/Ubuntu, 60,000 + 10,000 images), it uses that instead.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

import minicnn
from minicnn import metrics, plotting
from minicnn.callbacks import EarlyStopping
from minicnn.data import img_to_array, load_img
from minicnn.datasets import fashion_mnist
from minicnn.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D
from minicnn.layers.preprocessing import Normalization, RandomFlip, RandomTranslation, Rescaling
from minicnn.models import Sequential, load_model
from minicnn.utils import clear_session, set_random_seed, to_categorical

SMOKE = os.environ.get("MINICNN_SMOKE") == "1"   # CI sets it: 2,000 training images and 1 epoch
scratch = tempfile.TemporaryDirectory(prefix="minicnn-05-")   # deleted by the last cell
OUT = Path(os.environ.get("MINICNN_NOTEBOOK_OUT") or scratch.name)
set_random_seed(0)                               # weights, shuffling and augmentation repeat exactly
print("minicnn", minicnn.__version__, "| smoke mode:", SMOKE, "| files go to", OUT)

# %% [markdown]
# ## 5.1 Look at the data
#
# `fashion_mnist.find()` tells where the full dataset would be loaded from (None if it is not on this
# machine); `load_data(sample=True)` reads the embedded sample. Both return Keras's arrays: uint8
# images of shape `(N, 28, 28)` and uint8 labels of shape `(N,)`.

# %%
full_dataset = fashion_mnist.find()
USE_FULL = full_dataset is not None and not SMOKE
if USE_FULL:
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
else:
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(sample=True)
if SMOKE:
    x_train, y_train = x_train[:2000], y_train[:2000]
EPOCHS = 1 if SMOKE else (3 if USE_FULL else 10)
class_names = fashion_mnist.CLASS_NAMES
num_classes = len(class_names)

print("data:", f"full dataset from {full_dataset}" if USE_FULL else "the sample shipped with minicnn")
print("x_train", x_train.shape, x_train.dtype, f"values {x_train.min()}..{x_train.max()}", "| y_train", y_train.shape, y_train.dtype)
print("x_test ", x_test.shape, "| y_test", y_test.shape)
print("training images per class:", dict(zip(class_names, np.bincount(y_train, minlength=num_classes).tolist())))
assert x_train.shape[1:] == (28, 28) and set(np.unique(y_train)) <= set(range(num_classes))

# %%
fig = plotting.plot_images(x_train[:24], labels=y_train[:24], class_names=class_names, ncols=8)
plt.show()

# %% [markdown]
# The classes are balanced, so accuracy is a fair summary and guessing gives 10%. The average image
# of each class shows what a "typical" item looks like, and hints at which classes will be confused
# (T-shirt, pullover, coat and shirt share a silhouette).

# %%
fig, axes = plt.subplots(1, num_classes, figsize=(15, 2))
for k, ax in enumerate(axes):
    ax.imshow(x_train[y_train == k].mean(axis=0), cmap="gray")
    ax.set_title(class_names[k], fontsize=9)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 5.2 Preprocess: channels, normalization, augmentation
#
# **Channels.** Layers take NHWC batches, so grey images get a channel axis of size 1. (The blog's
# model expects `(224, 224, 3)` colour photos; our images are `(28, 28, 1)`. For photos of other
# sizes, `minicnn.data.load_img(path, target_size=...)` or a `Resizing` layer resizes them.)
#
# **Normalization.** Pixels are 0…255. Networks train best on inputs of order 1, centred near 0:
# weights are initialised for that scale, and a huge input gives huge early gradients. Two common
# choices: divide by 255 (values in $[0, 1]$), or standardise, $x' = (x - \mu)/\sigma$ with the mean
# and standard deviation of the *training* set (never the test set: that would leak information).

# %%
x_train, x_test = x_train.reshape(-1, 28, 28, 1), x_test.reshape(-1, 28, 28, 1)   # (N, 28, 28) -> (N, 28, 28, 1); safe to rerun
n_val = len(x_train) // 10                                        # hold out the last 10% for validation
x_tr, y_tr, x_val, y_val = x_train[:-n_val], y_train[:-n_val], x_train[-n_val:], y_train[-n_val:]
print(f"train {x_tr.shape}, validation {x_val.shape}, test {x_test.shape}")

standardize = Normalization(axis=None)                            # one mean and variance for all pixels
standardize.adapt(x_tr.astype(np.float32))
z = standardize(x_tr[:1000].astype(np.float32))
print(f"pixel mean {float(standardize.mean):.2f}, std {float(np.sqrt(standardize.variance)):.2f}")
print(f"x / 255:       mean {np.mean(x_tr / 255):.3f}, std {np.std(x_tr / 255):.3f}")
print(f"standardized:  mean {z.mean():.3f}, std {z.std():.3f}  (first 1,000 training images)")

# %% [markdown]
# The models below use the first choice, as the blog does: the blog's model gets `x / 255`, the small
# CNN a `Rescaling(1/255)` layer. The standardisation is shown for comparison; to use it, put the
# adapted `standardize` layer first in a model instead of `Rescaling` (question 1 at the end).

# %% [markdown]
# **Augmentation.** A model sees each training image once per epoch and can memorise it. Random,
# label-preserving changes make every epoch a little different: a jacket mirrored left to right is
# still a jacket, and so is one shifted by a few pixels. (Not every change preserves the label: a
# vertical flip turns a sneaker upside down, which never happens in this dataset, so we don't use it.)
# minicnn's `Random*` layers apply such changes only when `training=True`, inside `fit`; at test time
# they pass images through unchanged.

# %%
augment = Sequential([Input(shape=(28, 28, 1)), RandomFlip("horizontal", seed=1),
                      RandomTranslation(0.1, 0.1, fill_mode="constant", seed=2)], name="augment")
one = np.repeat(x_tr[:1], 8, axis=0).astype(np.float32)          # the same image, 8 times
augmented = augment(one, training=True)
assert np.array_equal(augment(one, training=False), one)          # inference: unchanged
fig = plotting.plot_images(np.concatenate([one[:1], augmented]), ncols=9)
fig.suptitle("the original (left) and 8 random flips and shifts of it (up to 10% = 2.8 pixels)")
fig.subplots_adjust(top=0.8)
plt.show()

# %% [markdown]
# Look closely: a shift by a fraction of a pixel is done by bilinear interpolation, which blurs the
# image. Fashion-MNIST items are already centred, so shifts may teach the model little while the blur
# costs it detail; whether they help is a question for an experiment (several epochs, several seeds,
# compared on the validation set; question 2), not for a guess. Augmentation has to fit the data. To
# keep this notebook quick, the model below uses only the flip.

# %% [markdown]
# ## 5.3 Build the blog's model
#
# The blog's code, with `keras` replaced by `minicnn` and the input shape of our images:

# %%
clear_session()                                                   # layer names start again at conv2d, dense, ...
model = Sequential()
model.add(Conv2D(32, (3, 3), input_shape=(28, 28, 1), activation='relu'))
model.add(MaxPooling2D(pool_size=(2, 2)))
model.add(Flatten())
model.add(Dense(units=128, activation='relu'))
model.add(Dense(units=num_classes, activation='softmax'))
model.summary()

# %% [markdown]
# The convolution has only $3\cdot3\cdot1\cdot32 + 32 = 320$ weights; almost all of the
# 693,962 parameters sit in the first `Dense` layer, which connects each of the
# $13\cdot13\cdot32 = 5{,}408$ pooled features to 128 units. On the blog's 224×224×3 photos the same
# architecture would have a dense layer of $111\cdot111\cdot32\cdot128 \approx 50$ million weights:

# %%
shape = (None, 224, 224, 3)
for layer in [Conv2D(32, (3, 3)), MaxPooling2D(pool_size=(2, 2)), Flatten()]:
    shape = layer.compute_output_shape(shape)
blog_224_params = (3 * 3 * 3 + 1) * 32 + (shape[1] + 1) * 128 + (128 + 1) * num_classes
print("features entering Dense(128):", shape[1], "| parameters of the blog's model on 224x224x3:", f"{blog_224_params:,}")
clear_session()

# %% [markdown]
# A dense layer that large can memorise the training images instead of learning what they have in
# common. A smaller CNN stacks a second convolution and pooling before the dense layer: each of the
# $5 \cdot 5 \cdot 64 = 1{,}600$ features it passes on summarises a 10×10 patch of the image, and the
# dense layer shrinks from 692,352 to 204,928 parameters (the cell checks both). Its first layers do the preprocessing of 5.2, so it takes raw pixels
# and carries its preprocessing with it when saved. (`minicnn.zoo.small_cnn()` builds the same
# layers without the flip.)

# %%
small = Sequential([
    Input(shape=(28, 28, 1)),
    Rescaling(1.0 / 255),                                        # 0..255 -> 0..1
    RandomFlip("horizontal"),                                    # training only
    Conv2D(32, (3, 3), activation="relu"),
    MaxPooling2D((2, 2)),
    Conv2D(64, (3, 3), activation="relu"),
    MaxPooling2D((2, 2)),
    Flatten(),
    Dense(128, activation="relu"),
    Dense(num_classes, activation="softmax"),
], name="small_cnn")
small.summary()
print(f"parameters: blog {model.count_params():,} vs small CNN {small.count_params():,} "
      f"({small.count_params() / model.count_params():.2f} of them)")
dense_params = [m.layers[i].count_params() for m, i in ((model, 3), (small, -2))]
features = small.layers[-3].compute_output_shape((None, 5, 5, 64))
print("Dense(128) parameters, blog vs small:", dense_params, "| features entering the small CNN's:", features)
assert dense_params == [692_352, 204_928] and features == (None, 1600)
assert 0.25 < small.count_params() / model.count_params() < 0.4          # "a third"

# %% [markdown]
# ## 5.4 Train, watching a validation set
#
# The blog's training code: Adam, cross-entropy on one-hot labels (`to_categorical`), and a
# validation set the model never trains on. The progress bar shows the running training loss and
# accuracy; at the end of each epoch the validation numbers are added.

# %%
train_data, val_data, test_data = x_tr / 255.0, x_val / 255.0, x_test / 255.0
train_labels, val_labels, test_labels = (to_categorical(y, num_classes) for y in (y_tr, y_val, y_test))

model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
blog_history = model.fit(train_data, train_labels, validation_data=(val_data, val_labels), epochs=EPOCHS, batch_size=32)

# %% [markdown]
# The small CNN takes the raw pixels and integer labels (`sparse_categorical_crossentropy` is the
# same loss without the one-hot encoding). It also shows how to stop early: `EarlyStopping` watches
# the validation loss, stops when it has not improved for `patience` epochs, and with
# `restore_best_weights=True` puts back the weights of the best epoch.

# %%
small.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
stop = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
small_history = small.fit(x_tr, y_tr, validation_data=(x_val, y_val), epochs=EPOCHS, batch_size=32, callbacks=[stop])
print(f"trained {len(small_history.epoch)} of {EPOCHS} epochs; best val_loss {min(small_history.history['val_loss']):.4f}")

# %%
for name, history in (("blog model", blog_history), ("small CNN", small_history)):
    fig = plotting.plot_history(history)
    fig.suptitle(name, y=1.02)
    plt.show()
    h = history.history
    print(f"{name}: final training accuracy {h['accuracy'][-1]:.3f}, validation accuracy {h['val_accuracy'][-1]:.3f}")

# %% [markdown]
# How to read the curves: the training values are running means over each epoch (the weights
# changed during it), the validation values are measured at its end, which is why validation can
# look *better* than training in the first epochs. While both improve, train longer. When the
# training loss keeps falling but the validation loss turns up, the model has started to memorise
# the training images (*overfitting*): stop there, or add augmentation, dropout or data.
#
# The next cell prints, for each model, the gap between training and validation accuracy and the
# epoch with the lowest validation loss; a model whose best epoch lies well before the last one has
# started to memorise. (In smoke mode, one epoch, there is nothing to see.)

# %%
for name, history in (("blog model", blog_history), ("small CNN", small_history)):
    h = history.history
    best = int(np.argmin(h["val_loss"]))
    print(f"{name}: training - validation accuracy {h['accuracy'][-1] - h['val_accuracy'][-1]:+.3f}; "
          f"lowest val_loss {h['val_loss'][best]:.4f} at epoch {best + 1} of {len(h['val_loss'])}")
#
# ## 5.5 Evaluate on the test set
#
# The validation set guided our choices (which model, how many epochs), so it is no longer an
# unbiased judge. The test set, untouched so far, is.

# %%
blog_loss, blog_accuracy = model.evaluate(test_data, test_labels, verbose=0)
test_loss, test_accuracy = small.evaluate(x_test, y_test, verbose=0)
print(f"blog model: test accuracy {blog_accuracy:.4f} (loss {blog_loss:.4f})")
print(f"small CNN:  test accuracy {test_accuracy:.4f} (loss {test_loss:.4f})")
chance = 1 / num_classes
required = 0.45 if SMOKE else (0.85 if USE_FULL else 0.75)
assert min(blog_accuracy, test_accuracy) > required, (blog_accuracy, test_accuracy)
print(f"both well above chance ({chance:.0%}); required here: {required:.0%}")

# %% [markdown]
# One accuracy hides *which* mistakes the model makes. The confusion matrix counts, for every true
# class (row), how often each class was predicted (column); the diagonal holds the correct answers.

# %%
probabilities = small.predict(x_test, verbose=0)
y_pred = probabilities.argmax(axis=1)
cm = metrics.confusion_matrix(y_test, y_pred, num_classes=num_classes)
plotting.plot_confusion_matrix(cm, class_names=class_names)
plt.show()
off_diagonal = cm - np.diag(np.diag(cm))
i, j = np.unravel_index(off_diagonal.argmax(), cm.shape)
print(f"most frequent mistake: {class_names[i]} predicted as {class_names[j]} ({cm[i, j]} of {cm[i].sum()} test images)")
assert cm.sum() == len(y_test) and np.trace(cm) == np.sum(y_pred == y_test)

# %% [markdown]
# Per class: *precision* (of the images predicted as class $k$, the fraction that are $k$),
# *recall* (of the images of class $k$, the fraction found) and their harmonic mean, F1.

# %%
print(metrics.classification_report(y_test, y_pred, class_names=class_names))
recall = metrics.precision_recall_f1(y_test, y_pred, num_classes=num_classes).recall
print(f"hardest class: {class_names[recall.argmin()]} (recall {recall.min():.2f}); "
      f"easiest: {class_names[recall.argmax()]} (recall {recall.max():.2f})")

# %% [markdown]
# ## 5.6 Predict new images from files
#
# The last step of the blog: use the model on images it has never seen, as files. We write a few
# test images as PNG files (standing in for your own photos), then load them the way you would load
# any image: `load_img` (Pillow, converted to grey and resized to the model's input size) and
# `img_to_array`.

# %%
folder = OUT / "new_images"
folder.mkdir(parents=True, exist_ok=True)
picks = sorted(int(np.flatnonzero(y_test == k)[0]) for k in range(0, num_classes, 2))   # one item of every other class
for k in picks:
    Image.fromarray(x_test[k, :, :, 0]).save(folder / f"item_{k:05d}.png")
paths = sorted(folder.glob("*.png"))
print([p.name for p in paths])

images = np.stack([img_to_array(load_img(p, color_mode="grayscale", target_size=(28, 28))) for p in paths])
print("loaded:", images.shape, images.dtype)
assert np.array_equal(images, x_test[picks].astype(np.float32))   # PNG is lossless

new_probabilities = small.predict(images, verbose=0)
for path, p, k in zip(paths, new_probabilities, picks):
    print(f"{path.name}: {class_names[p.argmax()]:<12s} ({p.max():.0%})   true: {class_names[y_test[k]]}")
fig = plotting.plot_images(images, labels=y_test[picks], predictions=new_probabilities, class_names=class_names, ncols=5)
plt.show()

# %% [markdown]
# To use the model later, or from the command line (`minicnn predict small_cnn.npz photo.png`), save
# it. One `.npz` file holds the architecture (preprocessing layers included), the weights and the
# optimizer state; `load_model` rebuilds it and predicts the same numbers.

# %%
saved = small.save(OUT / "small_cnn.npz")
reloaded = load_model(saved)
np.testing.assert_allclose(reloaded.predict(images, verbose=0), new_probabilities, rtol=1e-6, atol=1e-7)
print(f"saved {Path(saved).name} ({Path(saved).stat().st_size / 1024:.0f} KiB); the reloaded model predicts the same")

# %% [markdown]
# ## Summary
#
# - Look first: shapes, value ranges, class balance, a grid of images.
# - Give inputs a channel axis and a small range (`/ 255` or standardisation with training-set
#   statistics); augment with label-preserving random changes, during training only.
# - The blog's model puts almost all its weights in one dense layer; a second conv/pool block gives a
#   model with a third of the weights (compare their test accuracies and curves above).
# - `EarlyStopping(monitor="val_loss", patience=..., restore_best_weights=True)` stops when the
#   validation loss stops improving and keeps the best epoch's weights.
# - Train with a validation set and read both curves; judge the final model once, on the test set,
#   with a confusion matrix and per-class scores, not just accuracy.
# - `load_img` + `img_to_array` + `predict` classify image files; `save`/`load_model` keep the model.
#
# ## Exercises
#
# Each exercise has a solution filled in (a cell tagged `solution`, left blank in the learner
# copies) and a cell that checks it against `minicnn.metrics` or the model.
#
# **Exercise 1.** Compute the accuracy from the confusion matrix `cm` alone.

# %% tags=["solution"]
answer_1 = np.trace(cm) / cm.sum()

# %%
assert np.isclose(answer_1, metrics.accuracy(y_test, y_pred))
print(f"Exercise 1: correct, accuracy = {answer_1:.4f}")

# %% [markdown]
# **Exercise 2.** Compute each class's recall and precision from `cm` (rows: true class, columns:
# predicted class).

# %% tags=["solution"]
answer_2_recall = np.diag(cm) / cm.sum(axis=1)
answer_2_precision = np.diag(cm) / np.maximum(cm.sum(axis=0), 1)

# %%
scores = metrics.precision_recall_f1(y_test, y_pred, num_classes=num_classes)
np.testing.assert_allclose(answer_2_recall, scores.recall)
np.testing.assert_allclose(answer_2_precision, scores.precision)
print("Exercise 2: correct")

# %% [markdown]
# **Exercise 3.** Count the parameters of the blog's model on 28×28×1 images by hand, layer by layer
# (a conv layer has $K_H K_W C F + F$, a dense layer $D\cdot U + U$).

# %% tags=["solution"]
conv = 3 * 3 * 1 * 32 + 32
dense_1 = (13 * 13 * 32) * 128 + 128          # 28 - 3 + 1 = 26, pooled to 13
dense_2 = 128 * num_classes + num_classes
answer_3 = conv + dense_1 + dense_2

# %%
assert answer_3 == model.count_params(), (answer_3, model.count_params())
print(f"Exercise 3: correct, {answer_3:,} parameters")

# %% [markdown]
# ## Questions
#
# 1. Replace `Rescaling(1.0 / 255)` in the small CNN with the adapted `standardize` layer. Does it
#    train faster in the first epoch? Why might it, given how the weights are initialised?
# 2. Add `RandomTranslation(0.1, 0.1)` to the small CNN and compare validation accuracy over several
#    epochs and two seeds. Do shifts help on centred items? What about on photos?
# 3. Why must the mean and standard deviation of the standardisation come from the training images
#    only? Describe how the test accuracy could be flattered otherwise.

# %%
scratch.cleanup()                                  # the files of 5.6 (unless MINICNN_NOTEBOOK_OUT was set)
