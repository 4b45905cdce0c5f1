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
# # 3. Optimizers: SGD, momentum and Adam
#
# Backprop (notebook 2) gives the gradient $g = \nabla L(w)$. An optimizer turns it into a step.
# The blog compiles its model with `optimizer='adam'`; here we open that box. To *see* what an
# optimizer does we use a loss of only two weights, so that its surface is a picture and every
# step is a point on it.
#
# **What you will learn**
#
# - the update rules of SGD, SGD with momentum and Adam, written out and checked step by step
#   against `minicnn.optimizers`;
# - why plain SGD crawls along a narrow valley, how momentum speeds it up, and what Adam's
#   per-weight scaling buys;
# - what Adam's bias correction does, and what goes wrong without it (or with it done wrong).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minicnn.layers import Layer
from minicnn.optimizers import SGD, Adam

SMOKE = os.environ.get("MINICNN_SMOKE") == "1"   # CI sets it: a coarser contour grid, same code
np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 3.1 A loss surface with two weights
#
# A narrow valley, the shape that makes training hard: the loss is 50 times steeper across the valley
# ($w_1$) than along it ($w_0$),
#
# $$ L(w) = \tfrac12\left(w_0^2 + \kappa\, w_1^2\right), \quad \kappa = 50, \qquad \nabla L(w) = (w_0,\ \kappa\, w_1). $$
#
# Real networks have millions of weights, but near a minimum their loss looks like this in many
# directions at once, with $\kappa$ (the *condition number*) in the thousands.
#
# minicnn's optimizers update anything that has a `.name`, `.trainable`, `.params` and `.grads`,
# exactly what a layer has. So our "model" is a bare `minicnn.layers.Layer` holding one parameter,
# the point $w$; at each step we write the gradient into `.grads` and call `apply_gradients`, as
# `fit` does for every layer of a real model.

# %%
KAPPA = 50.0
SCALES = np.array([1.0, KAPPA])
START = np.array([-4.0, 1.0])
STEPS = 100


def loss(w):
    return 0.5 * np.sum(SCALES * np.asarray(w) ** 2, axis=-1)


def gradient(w):
    return SCALES * w


def run(optimizer, steps=STEPS, start=START, grad=gradient):
    """The path of the point under `optimizer`: an array of shape (steps + 1, 2)."""
    point = Layer(name="point")
    point.params = {"w": np.array(start, dtype=np.float64)}
    point.grads = {"w": np.zeros(2)}
    path = [point.params["w"].copy()]
    for _ in range(steps):
        point.grads["w"] = grad(point.params["w"])
        optimizer.apply_gradients([point])            # updates point.params["w"] in place
        path.append(point.params["w"].copy())
    return np.array(path)


def draw_surface(ax, title, height=1.6):
    n = 80 if SMOKE else 300
    X, Y = np.meshgrid(np.linspace(-4.5, 4.5, n), np.linspace(-height, height, n))
    ax.contour(X, Y, loss(np.stack([X, Y], axis=-1)), levels=np.logspace(-2, 2, 12), colors="lightgray")
    ax.plot(0, 0, "k*", ms=10)
    ax.set_title(title)
    ax.set_xlabel("$w_0$ (flat direction)")
    ax.set_ylabel("$w_1$ (steep)")
    ax.set_xlim(-4.5, 4.5)
    ax.set_ylim(-height, height)


print("start", START, "loss", loss(START), "gradient", gradient(START))

# %% [markdown]
# ## 3.2 SGD
#
# $$ w \leftarrow w - \eta\, g $$
#
# Each step goes straight downhill, as far as the gradient is large. On our surface the update
# multiplies each coordinate by its own factor: $w_0 \leftarrow (1 - \eta)w_0$ and
# $w_1 \leftarrow (1 - \eta\kappa)w_1$. The steep direction diverges as soon as
# $|1 - \eta\kappa| > 1$, i.e. $\eta > 2/\kappa = 0.04$. So the steep direction caps the learning
# rate, and the flat direction, shrinking by only $1-\eta \ge 0.96$ per step, crawls.

# %%
sgd_paths = {eta: run(SGD(learning_rate=eta)) for eta in (0.02, 0.038, 0.041)}
for eta, path in sgd_paths.items():
    print(f"SGD eta={eta}: loss after 10 steps {loss(path[10]):9.3g}, after {STEPS}: {loss(path[-1]):9.3g}")
assert loss(sgd_paths[0.041][-1]) > loss(START) > loss(sgd_paths[0.038][-1])   # past 2/kappa it diverges

fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
for ax, eta in zip(axes, (0.02, 0.038)):
    draw_surface(ax, rf"SGD, $\eta$ = {eta}")
    ax.plot(*sgd_paths[eta].T, ".-", lw=1, ms=3)
plt.tight_layout()
plt.show()

# %% [markdown]
# With $\eta = 0.02$, $1 - \eta\kappa = 0$: the steep coordinate is zeroed in one step, then the
# point creeps along the valley floor, 2% of the remaining way per step. With $\eta = 0.038$, just
# under the limit, it zigzags across the valley ($1 - 0.038\cdot 50 = -0.9$: each step overshoots and
# flips sign) and moves along it a little faster, 3.8% per step. At $\eta = 0.041$ it diverges.
# No learning rate makes plain SGD fast along the valley without blowing up across it.
#
# ## 3.3 Momentum
#
# Give the point a velocity $v$ that remembers past gradients (Keras's form, which minicnn uses):
#
# $$ v \leftarrow \mu v - \eta\, g, \qquad w \leftarrow w + v . $$
#
# Along the valley the gradients keep pointing the same way, so the velocity builds up to about
# $\eta g / (1 - \mu)$, ten times the plain step for $\mu = 0.9$. Across the valley they flip sign
# every step and mostly cancel. First, the rule written out by hand for three steps with made-up
# gradients, against `minicnn.optimizers.SGD(momentum=0.9)`:

# %%
eta, mu = 0.1, 0.9
gs = rng.standard_normal((3, 2))                                   # three made-up gradients
w, v = START.copy(), np.zeros(2)
for g in gs:
    v = mu * v - eta * g
    w = w + v
by_hand = w
replay = iter(gs)                                                  # hands the same gradients to minicnn
by_minicnn = run(SGD(learning_rate=eta, momentum=mu), steps=3, grad=lambda w: next(replay))[-1]
print("by hand:", by_hand, " minicnn:", by_minicnn)
np.testing.assert_allclose(by_minicnn, by_hand, rtol=1e-12)

# %%
momentum_path = run(SGD(learning_rate=0.02, momentum=0.9))
print(f"SGD      eta=0.02:         loss after {STEPS} steps {loss(sgd_paths[0.02][-1]):.2e}")
print(f"momentum eta=0.02, mu=0.9: loss after {STEPS} steps {loss(momentum_path[-1]):.2e}")
assert loss(momentum_path[-1]) < loss(sgd_paths[0.02][-1]) / 100

# %% [markdown]
# ## 3.4 Adam
#
# Adam keeps two running averages per weight, of the gradient ($m$, like momentum) and of its square
# ($v$), and divides one by the square root of the other. With $t = 1, 2, \dots$ the step number:
#
# $$
# \begin{aligned}
# m &\leftarrow \beta_1 m + (1-\beta_1)\, g, & \hat m &= m / (1 - \beta_1^t),\\
# v &\leftarrow \beta_2 v + (1-\beta_2)\, g^2, & \hat v &= v / (1 - \beta_2^t),\\
# w &\leftarrow w - \eta\, \frac{\hat m}{\sqrt{\hat v} + \epsilon} .
# \end{aligned}
# $$
#
# Defaults: $\beta_1 = 0.9$, $\beta_2 = 0.999$, $\epsilon = 10^{-7}$ (Keras; PyTorch uses $10^{-8}$).
# $\hat m/\sqrt{\hat v}$ is about $\pm 1$ when the gradient is steady, whatever its size: every
# weight moves by about $\eta$ per step, the steep one and the flat one alike. The hats are the
# *bias correction* (section 3.6). minicnn folds the two corrections into the step size
# ($\alpha_t = \eta\sqrt{1-\beta_2^t}/(1-\beta_1^t)$, Keras's form), which changes only how
# $\epsilon$ enters: the two agree exactly when $\epsilon = 0$, which is what we check. (With
# $\epsilon = 10^{-7}$ they differ in the 4th digit at $t = 1$ for a gradient of $0.03$: Keras's
# form acts like the textbook one with $\epsilon/\sqrt{1-\beta_2^t}$, 32 times larger at $t = 1$;
# the cell after this one prints it.) By hand for three steps:

# %%
eta, b1, b2, eps = 0.1, 0.9, 0.999, 0.0
w, m, v = START.copy(), np.zeros(2), np.zeros(2)
for t, g in enumerate(gs, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g ** 2
    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    w = w - eta * m_hat / (np.sqrt(v_hat) + eps)
replay = iter(gs)
by_minicnn = run(Adam(learning_rate=eta, beta_1=b1, beta_2=b2, epsilon=eps), steps=3, grad=lambda w: next(replay))[-1]
print("by hand:", w, " minicnn:", by_minicnn)
np.testing.assert_allclose(by_minicnn, w, rtol=1e-12)

# %% [markdown]
# The two placements of $\epsilon = 10^{-7}$, for one step with a gradient of 0.03 (textbook:
# $\epsilon$ added to $\sqrt{\hat v}$; minicnn/Keras: added to $\sqrt{v}$, the corrections folded
# into the step size):

# %%
g1 = np.array([0.03, 0.0])
m1, v1 = (1 - 0.9) * g1[0], (1 - 0.999) * g1[0] ** 2
textbook = (m1 / (1 - 0.9)) / (np.sqrt(v1 / (1 - 0.999)) + 1e-7)
keras_form = START[0] - run(Adam(learning_rate=1.0, epsilon=1e-7), steps=1, grad=lambda w: g1)[1, 0]
print(f"textbook step {textbook:.7f}, minicnn's step {keras_form:.7f}, relative difference {abs(textbook - keras_form) / textbook:.1e}")
assert 1e-5 < abs(textbook - keras_form) / textbook < 1e-3                        # the 4th digit

# %% [markdown]
# Because Adam divides by the gradient's own size, multiplying the loss by 1000 leaves its path
# unchanged, while SGD with the same learning rate explodes. One learning rate works for weights
# whose gradients differ by orders of magnitude, which is why Adam is the default choice.

# %%
adam_path = run(Adam(learning_rate=0.1))
adam_path_x1000 = run(Adam(learning_rate=0.1), grad=lambda w: 1000 * gradient(w))
sgd_path_x1000 = run(SGD(learning_rate=0.02), steps=5, grad=lambda w: 1000 * gradient(w))
print("Adam, loss x1: final w", adam_path[-1], "| loss x1000: final w", adam_path_x1000[-1])
print("SGD on loss x1000 after 5 steps: w =", sgd_path_x1000[-1])
np.testing.assert_allclose(adam_path_x1000, adam_path, rtol=1e-5, atol=1e-6)

# %% [markdown]
# ## 3.5 The three side by side

# %%
paths = {"SGD η=0.02": sgd_paths[0.02], "momentum η=0.02, μ=0.9": momentum_path, "Adam η=0.1": adam_path}
fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [1.6, 1]})
draw_surface(ax, f"{STEPS} steps from ({START[0]:g}, {START[1]:g})")
for label, path in paths.items():
    ax.plot(*path.T, ".-", lw=1, ms=3, label=label)
    ax_loss.semilogy(loss(path), label=label)
ax.legend(loc="lower right", fontsize=8)
ax_loss.set_xlabel("step")
ax_loss.set_ylabel("loss")
ax_loss.set_title("loss per step")
plt.tight_layout()
plt.show()
for label, path in paths.items():
    print(f"{label:24s} loss after {STEPS} steps: {loss(path[-1]):.2e}")

# %% [markdown]
# SGD creeps along the valley. Momentum overshoots and swings back (its loss curve waves) but gets
# down several orders of magnitude further. Adam first heads diagonally, each weight moving by about
# $\eta$, then slows as the averages of its steep coordinate flip sign. On a real network the picture
# is the same in many dimensions.
#
# ## 3.6 Adam's bias correction
#
# $m$ and $v$ start at zero, so in the first steps they are averages over a few gradients *and a lot
# of zeros*: with a constant gradient, $m_t = (1-\beta_1^t)\,g$ and $v_t = (1-\beta_2^t)\,g^2$. The
# corrections divide those factors out. Without them the step is
# $\eta\, m_t/\sqrt{v_t} = \eta\,\frac{1-\beta_1^t}{\sqrt{1-\beta_2^t}}\,\operatorname{sign}(g)$: $v$ is
# biased far more than $m$ ($\beta_2$ is closer to 1), so the uncorrected steps are *too large*,
# by $(1-\beta_1)/\sqrt{1-\beta_2} = 3.16\times$ at $t=1$ and more a few steps later for the
# defaults, and much more for $\beta_2 = 0.9999$; the cell prints the figures.
#
# Since the correction is the factor $c_t = \sqrt{1-\beta_2^t}/(1-\beta_1^t)$ on the step size, we
# can switch it off without touching minicnn: give Adam a learning-rate *schedule* (a function of
# the step $0, 1, 2, \dots$) equal to $\eta / c_t$.

# %%
def correction(t, b1=0.9, b2=0.999):
    """Adam's bias correction as a factor on the step size, at step t = 1, 2, ..."""
    return np.sqrt(1 - b2 ** t) / (1 - b1 ** t)


def uncorrected_adam(eta, b2=0.999):
    return Adam(learning_rate=lambda step: eta / correction(step + 1, b2=b2), beta_2=b2)


t = np.arange(1, 5001)
fig, ax = plt.subplots(figsize=(6, 3.5))
for b2 in (0.999, 0.9999):
    ax.semilogx(t, 1 / correction(t, b2=b2), label=rf"$\beta_2$ = {b2}")
ax.axhline(1, color="gray", lw=0.8)
ax.set_xlabel("step t")
ax.set_ylabel("uncorrected step / corrected step")
ax.set_title(r"Without bias correction, early steps are too large ($\beta_1$ = 0.9)")
ax.legend()
plt.show()
print(f"beta_2=0.999: {1 / correction(1):.2f}x at t=1, largest {1 / correction(t).min():.2f}x at t={t[np.argmin(correction(t))]}")
print(f"beta_2=0.9999: largest {1 / correction(t, b2=0.9999).min():.1f}x at t={t[np.argmin(correction(t, b2=0.9999))]}, "
      f"{1 / correction(300, b2=0.9999):.1f}x at t=300")
assert np.isclose(1 / correction(1), 0.1 / np.sqrt(0.001)) and 1 / correction(t).min() > 6
assert 1 / correction(t, b2=0.9999).min() > 20 and 1 / correction(300, b2=0.9999) > 5

# %% [markdown]
# What this does to the point. With the correction, no step of this run is longer than $\eta$ in
# any coordinate, so here $\eta$ means what it says: how far a weight moves per step at most.
# Without it the first steps jump several times further, and with $\beta_2 = 0.9999$ the point is
# thrown across the valley to a loss higher than where it started.

# %%
eta = 0.3
variants = {
    "Adam, β2=0.9999": run(Adam(learning_rate=eta, beta_2=0.9999)),
    "no correction, β2=0.999": run(uncorrected_adam(eta)),
    "no correction, β2=0.9999": run(uncorrected_adam(eta, b2=0.9999)),
}
fig, (ax, ax_step) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [1.6, 1]})
draw_surface(ax, rf"Adam, $\eta$ = {eta}, first 30 steps", height=2.5)
for label, path in variants.items():
    ax.plot(*path[:31].T, ".-", lw=1, ms=3, label=label)
    ax_step.plot(np.abs(np.diff(path, axis=0)).max(axis=1)[:60], label=label)
ax.legend(loc="lower right", fontsize=8)
ax_step.axhline(eta, color="gray", ls="--", lw=0.8)
ax_step.set_xlabel("step")
ax_step.set_ylabel(r"largest $|\Delta w|$ of the step")
ax_step.set_title("step sizes")
plt.tight_layout()
plt.show()

for label, path in variants.items():
    steps = np.abs(np.diff(path, axis=0))
    print(f"{label:25s} first step {steps[0].max():.3f}, largest step {steps.max():.3f}, "
          f"highest loss {loss(path).max():6.1f}, loss after {STEPS} steps {loss(path[-1]):.1e}")
corrected, plain = variants["Adam, β2=0.9999"], variants["no correction, β2=0.999"]
assert np.abs(np.diff(corrected, axis=0)).max() <= eta * (1 + 1e-6)
assert np.isclose(np.abs(plain[1] - plain[0]).max(), eta / correction(1), rtol=1e-5)   # 3.16 eta

# %% [markdown]
# "At most $\eta$ per step" is a rule of thumb for steady gradients, not a law. Kingma and Ba
# (2015, section 2.1) bound the corrected step by $\eta\,(1-\beta_1)/\sqrt{1-\beta_2}$ when
# $1-\beta_1 > \sqrt{1-\beta_2}$ (3.16 $\eta$ for the defaults), and that is reached when a
# gradient jumps after a long quiet stretch: $v$ has forgotten large gradients, and one big one
# moves $m$ by $(1-\beta_1)g$ but $\sqrt v$ only by $\sqrt{1-\beta_2}\,|g|$. A weight whose gradient
# is 0 for 2,000 steps and then 1:

# %%
quiet = 2000
calls = iter(range(quiet + 1))
jump = run(Adam(learning_rate=1.0), steps=quiet + 1, start=[0.0, 0.0],
           grad=lambda w: np.array([1.0 if next(calls) == quiet else 0.0, 0.0]))
jump_step = abs(jump[-1, 0] - jump[-2, 0])
bound = (1 - 0.9) / np.sqrt(1 - 0.999)
print(f"step after the jump: {jump_step:.2f} eta (Kingma and Ba's bound {bound:.2f} eta)")
assert 2 < jump_step <= bound

# %% [markdown]
# On this convex bowl every variant gets to the bottom eventually; in a real network a burst of
# oversized early steps, when the weights are random and the gradients large, can wreck the
# initialisation or produce NaNs. (Learning-rate *warm-up*, popular for large models, is the same
# medicine taken on purpose: small steps first.)
#
# **A subtle bug.** A popular from-scratch implementation (ML-From-Scratch) writes the correction
# with $\beta$ instead of $\beta^t$: $\hat m = m/(1-\beta_1)$, $\hat v = v/(1-\beta_2)$. At $t = 1$ the
# two agree exactly, so a one-step test passes. Afterwards the step is off by the factor
#
# $$ r_t = \frac{\sqrt{1-\beta_2}/(1-\beta_1)}{\sqrt{1-\beta_2^t}/(1-\beta_1^t)} , $$
#
# which is *above* 1 for about the first hundred steps (the steps are too large) and only later
# settles towards $\sqrt{1-\beta_2}/(1-\beta_1) \approx 0.32$ (too small). The next cell prints
# $r_t$; a ten-step trajectory already catches the bug, which is why minicnn's tests compare
# optimizers with PyTorch over ten steps and more.

# %%
def adam_without_step_exponent(eta, b1=0.9, b2=0.999):
    buggy = np.sqrt(1 - b2) / (1 - b1)                              # the correction with beta, not beta**t
    return Adam(learning_rate=lambda step: eta * buggy / correction(step + 1), beta_1=b1, beta_2=b2)


ratio = (np.sqrt(1 - 0.999) / (1 - 0.9)) / correction(t)
print(f"r_t: {ratio[1]:.2f} at t=2, {ratio[11]:.2f} at t=12, below 1 from t={t[np.argmax(ratio < 1)]}, "
      f"{ratio[-1]:.2f} at t={t[-1]} (limit {np.sqrt(1 - 0.999) / (1 - 0.9):.2f})")
assert np.isclose(ratio[0], 1) and ratio[1] > 1.3 and ratio[11] > 2 and 50 < t[np.argmax(ratio < 1)] < 200

right, wrong = run(Adam(learning_rate=0.1), steps=10), run(adam_without_step_exponent(0.1), steps=10)
print("after  1 step :", right[1], wrong[1])
print("after 10 steps:", right[10], wrong[10])
print("distance travelled in 10 steps: right", np.abs(np.diff(right, axis=0)).sum().round(3),
      " wrong", np.abs(np.diff(wrong, axis=0)).sum().round(3))
assert np.abs(np.diff(wrong, axis=0)).sum() > np.abs(np.diff(right, axis=0)).sum()   # larger steps, not smaller
np.testing.assert_allclose(wrong[1], right[1], rtol=1e-12)          # a one-step test cannot tell
assert np.abs(wrong[10] - right[10]).max() > 0.05                   # ten steps can

# %% [markdown]
# ## Summary
#
# - SGD: $w \leftarrow w - \eta g$. Its learning rate is capped by the steepest direction
#   ($\eta < 2/\lambda_\text{max}$), so flat directions crawl.
# - Momentum: $v \leftarrow \mu v - \eta g$, $w \leftarrow w + v$. Consistent gradients add up to
#   steps about $1/(1-\mu)$ times larger; alternating ones cancel.
# - Adam: running means of $g$ and $g^2$, step $\eta\,\hat m/(\sqrt{\hat v}+\epsilon)$. Every weight
#   moves about $\eta$ per step, whatever the scale of its gradient; multiplying the loss by a
#   constant changes nothing.
# - Bias correction removes the pull of the zero initial $m$ and $v$. Without it the early steps are
#   several times larger than $\eta$ (20 times for $\beta_2 = 0.9999$); written with $\beta$ instead of
#   $\beta^t$ it passes a one-step test, then takes too-large steps for about a hundred steps and
#   too-small ones after.
# - With it, a step is about $\eta$ for steady gradients but can reach $\eta(1-\beta_1)/\sqrt{1-\beta_2}$
#   when a gradient jumps after a quiet stretch.
# - An optimizer only needs `.params` and `.grads`: minicnn's update any object that has them.
#
# ## Exercises
#
# Each exercise has a solution filled in (a cell tagged `solution`, left blank in the learner
# copies) and a cell that checks it against `minicnn.optimizers`.
#
# **Exercise 1.** Nesterov momentum (Keras's form) evaluates the momentum step "one step ahead":
# $v \leftarrow \mu v - \eta g$, then $w \leftarrow w + \mu v - \eta g$. Write three steps by hand
# with the gradients `gs` and compare with `SGD(momentum=0.9, nesterov=True)`.

# %%
eta, mu = 0.1, 0.9

# %% tags=["solution"]
w, v = START.copy(), np.zeros(2)
for g in gs:
    v = mu * v - eta * g
    w = w + mu * v - eta * g
answer_1 = w

# %%
replay = iter(gs)
expected = run(SGD(learning_rate=eta, momentum=mu, nesterov=True), steps=3, grad=lambda w: next(replay))[-1]
np.testing.assert_allclose(answer_1, expected, rtol=1e-12)
print("Exercise 1: correct", answer_1)

# %% [markdown]
# **Exercise 2.** For $L = \frac12(w_0^2 + \kappa w_1^2)$ with $\kappa = 50$, what is the largest
# learning rate for which plain SGD does not diverge? Check: just below it the loss falls, just
# above it grows.

# %% tags=["solution"]
answer_2 = 2 / KAPPA

# %%
below, above = run(SGD(answer_2 * 0.99), steps=300), run(SGD(answer_2 * 1.01), steps=300)
assert loss(below[-1]) < loss(START) < loss(above[-1])
print(f"Exercise 2: correct, eta_max = {answer_2}")

# %% [markdown]
# **Exercise 3.** With a constant gradient $g$ and the default $\beta$s, how long is uncorrected
# Adam's *first* step, as a multiple of $\eta$? Give the number, then check it with `run`.

# %% tags=["solution"]
answer_3 = (1 - 0.9) / np.sqrt(1 - 0.999)        # m_1 / sqrt(v_1) for g = 1

# %%
first = run(uncorrected_adam(1.0), steps=1, grad=lambda w: np.array([0.5, -2.0]))
np.testing.assert_allclose(np.abs(first[1] - first[0]), answer_3, rtol=1e-5)
print(f"Exercise 3: correct, {answer_3:.3f} x eta")

# %% [markdown]
# ## Questions
#
# 1. What does $\beta_1 = 0$ make of Adam? Write its step for a gradient that alternates between
#    $+g$ and $-g$, and compare with momentum's.
# 2. Rotate the valley by 45 degrees, $L(w) = \tfrac12 (Rw)^\top \operatorname{diag}(1, \kappa)\, Rw$. SGD's
#    path just rotates with it. What changes for Adam, whose scaling is per coordinate? (Try it
#    with `run` and a rotated `gradient`.)
# 3. Multiplying the loss by 1000 left Adam's path unchanged (to 1e-5). Why not exactly? Which term
#    of the update breaks the invariance, and when would it matter?
