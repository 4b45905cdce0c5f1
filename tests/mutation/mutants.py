"""Plausible one-line bugs that the test suite must catch, one at a time (run by ``.ci/mutation_check.py``).

Each mutant names a file, the exact source text to replace (it must occur exactly once, so that a
change to the code makes the mutant fail loudly instead of silently testing nothing), the text to
put instead, and the test subset that must fail once it is planted. A mutant that survives means
a behaviour no test guards any more. ``tests/project/test_mutants.py`` checks in the normal suite that
every mutant still applies.

This folder holds no tests (no ``test_*.py``): pytest does not collect it.
"""

from typing import NamedTuple


class Mutant(NamedTuple):
    name: str
    path: str        # relative to the repository root
    old: str         # exact source text, found exactly once
    new: str
    tests: tuple     # pytest arguments: the subset that must catch it


CONV_KERNEL_TESTS = ("tests/kernels/test_conv_kernels.py",)
POOL_KERNEL_TESTS = ("tests/kernels/test_pooling_kernels.py",)

MUTANTS = [
    # ---------------------------------------------------------------- kernels
    Mutant("conv forward ignores dilation", "minicnn/kernels/reference.py",
           "            patch = xp[:, DH * u : DH * u + SH * OH : SH, DW * v : DW * v + SW * OW : SW, :]\n"
           "            y += patch @ w[u, v]",
           "            patch = xp[:, u : u + SH * OH : SH, v : v + SW * OW : SW, :]\n"
           "            y += patch @ w[u, v]", CONV_KERNEL_TESTS),
    Mutant("conv bias gradient averaged over the batch", "minicnn/kernels/reference.py",
           "    db = dy.sum(axis=(0, 1, 2))\n", "    db = dy.sum(axis=(0, 1, 2)) / dy.shape[0]\n", CONV_KERNEL_TESTS),
    Mutant("'same' padding puts the extra cell before (PyTorch's split)", "minicnn/kernels/shapes.py",
           "    return total // 2, total - total // 2", "    return total - total // 2, total // 2",
           ("tests/model/test_training_behaviour.py", "-k", "padding")),
    Mutant("max-pool tie goes to the last maximum", "minicnn/kernels/reference.py",
           "    argmax = windows.argmax(axis=-1).astype(np.int32)",
           "    argmax = (windows.shape[-1] - 1 - windows[..., ::-1].argmax(axis=-1)).astype(np.int32)", POOL_KERNEL_TESTS),
    Mutant("average pooling counts the padded cells", "minicnn/kernels/reference.py",
           "            count += inside[:, u : u + SH * OH : SH, v : v + SW * OW : SW, :]",
           "            count += 1",
           ("tests/layers/test_pooling_layers.py", "tests/kernels/test_pooling_kernels.py", "-k", "avgpool")),
    Mutant("Dense weight gradient skips ReLU's mask", "minicnn/kernels/reference.py",
           "        dy = dy * (relu_output > 0)\n    dy = dy.astype(x.dtype, copy=False)",
           "        pass\n    dy = dy.astype(x.dtype, copy=False)", ("tests/kernels/test_dense_adam_kernels.py", "-k", "dense")),
    Mutant("Numba Dense forward drops a part of the sum", "minicnn/kernels/numba/dense.py",
           "    for other in parts[1:]:", "    for other in parts[2:]:", ("tests/kernels/test_dense_adam_kernels.py", "-k", "dense")),
    Mutant("Numba batch norm drops the last block of rows from its sums", "minicnn/kernels/numba/norm.py",
           "    for b in range(part.shape[0]):", "    for b in range(part.shape[0] - 1):",
           ("tests/kernels/test_norm_kernels.py", "-k", "batchnorm")),
    Mutant("Numba max-pool backward counts columns from 0 instead of from the left padding",
           "minicnn/kernels/numba/pooling.py",
           "        j, v = PL // SW, PL % SW", "        j, v = 0, 0", POOL_KERNEL_TESTS),
    Mutant("Numba tiles pad the input by the bottom padding at the top", "minicnn/kernels/numba/conv.py",
           "tiles.pad(x, *images[k], xp, PT, PL)", "tiles.pad(x, *images[k], xp, PB, PL)", CONV_KERNEL_TESTS),
    # ---------------------------------------------------------------- layers
    Mutant("Dropout forgets the 1/(1-rate) scaling", "minicnn/layers/core.py",
           "scale = keep.astype(x.dtype) / x.dtype.type(1 - self.rate)", "scale = keep.astype(x.dtype)",
           ("tests/model/test_training_behaviour.py", "-k", "dropout")),
    Mutant("BatchNormalization's moving mean keeps the wrong share", "minicnn/layers/normalization.py",
           "            self.moving_mean *= self.momentum\n", "            self.moving_mean *= 1 - self.momentum\n",
           ("tests/layers/test_normalization_layers.py", "-k", "batchnorm")),
    Mutant("BatchNormalization normalises with batch statistics at inference", "minicnn/layers/normalization.py",
           "        if training and self.trainable:", "        if self.trainable:",
           ("tests/layers/test_normalization_layers.py", "-k", "batchnorm")),
    # ---------------------------------------------------------------- losses and metrics
    Mutant("binary cross-entropy sums over outputs instead of averaging", "minicnn/losses.py",
           "        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p), axis=-1)",
           "        return -np.sum(y * np.log(p) + (1 - y) * np.log(1 - p), axis=-1)", ("tests/model/test_losses.py",)),
    Mutant("log-softmax without the max shift (overflows)", "minicnn/losses.py",
           "    z = z - np.max(z, axis=-1, keepdims=True)\n", "    z = z - 0\n", ("tests/model/test_losses.py",)),
    Mutant("sparse accuracy compares against the wrong axis", "minicnn/metrics.py",
           "np.asarray(y_true).reshape(-1) == np.argmax(y_pred, axis=-1)",
           "np.asarray(y_true).reshape(-1) == np.argmax(y_pred, axis=0)[: len(y_pred)]",
           ("tests/model/test_training_behaviour.py", "tests/model/test_metrics.py")),
    # ---------------------------------------------------------------- optimizers
    Mutant("global_clipnorm compares the squared norm", "minicnn/optimizers.py",
           "            norm = math.sqrt(sum(", "            norm = (sum(",
           ("tests/model/test_training_behaviour.py", "-k", "clipnorm")),
    Mutant("clipnorm scales up small gradients", "minicnn/optimizers.py",
           "g * min(1.0, self.clipnorm /", "g * max(1.0, self.clipnorm /", ("tests/model/test_optimizers.py",)),
    Mutant("Adam's bias correction without the step exponent", "minicnn/optimizers.py",
           "        alpha = lr * math.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)",
           "        alpha = lr * math.sqrt(1 - self.beta_2) / (1 - self.beta_1)", ("tests/model/test_optimizers.py",)),
    Mutant("SGD's Nesterov step is the plain momentum step", "minicnn/optimizers.py",
           "            w += self.momentum * v - lr * g", "            w += v", ("tests/model/test_optimizers.py",)),
    # ---------------------------------------------------------------- training loop
    Mutant("fit ignores shuffle=True", "minicnn/data_adapters.py",
           "        order = self.shuffle.permutation(n) if self.shuffle else None", "        order = None",
           ("tests/model/test_training_behaviour.py", "-k", "shuffle")),
    Mutant("evaluate and validation run in training mode", "minicnn/models.py",
           "        y_pred = self._forward(x, training=False)\n        return self.loss(",
           "        y_pred = self._forward(x, training=True)\n        return self.loss(",
           ("tests/model/test_training_behaviour.py", "-k", "inference")),
    Mutant("logged means ignore the batch sizes", "minicnn/fit_metrics.py",
           "            self.totals[name] = self.totals.get(name, 0.0) + float(value) * n\n        self.count += n",
           "            self.totals[name] = self.totals.get(name, 0.0) + float(value)\n        self.count += 1",
           ("tests/model/test_training_behaviour.py", "-k", "weight")),
    # ---------------------------------------------------------------- callbacks
    Mutant("EarlyStopping waits one epoch too many", "minicnn/callbacks.py",
           "        if self.wait >= self.patience and epoch > 0:", "        if self.wait > self.patience and epoch > 0:",
           ("tests/model/test_callbacks.py", "-k", "early_stopping")),
    Mutant("EarlyStopping restores the first weights, not the best", "minicnn/callbacks.py",
           "            if self.restore_best_weights:\n                self.best_weights = self.model.get_weights()",
           "            if self.restore_best_weights:\n                pass", ("tests/model/test_callbacks.py", "-k", "early_stopping")),
    Mutant("History keeps only the last epoch", "minicnn/callbacks.py",
           "            self.history.setdefault(k, []).append(v)", "            self.history[k] = [v]",
           ("tests/model/test_training_behaviour.py", "-k", "progress")),
    Mutant("progress bar prints two decimals", "minicnn/progbar.py",
           '    return f"{v:.4f}" if abs(v) > 1e-3 else f"{v:.4e}"', '    return f"{v:.2f}" if abs(v) > 1e-3 else f"{v:.4e}"',
           ("tests/model/test_training_behaviour.py", "-k", "progress or prints")),
    # ---------------------------------------------------------------- saving
    Mutant("loading restarts the optimizer's step count", "minicnn/saving.py",
           '    return {"iterations": state.get("iterations", 0), "slots": out}', '    return {"iterations": 0, "slots": out}',
           ("tests/files/test_saving.py",)),
]
