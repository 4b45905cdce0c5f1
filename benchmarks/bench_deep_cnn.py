"""A deeper CNN on the full Fashion-MNIST: how far minicnn gets on a small CPU, and how fast.

Three VGG-style blocks, each ``[Conv-BN-ReLU] x 2 -> MaxPool -> Dropout`` with 32, 64 and 128 filters,
then ``Flatten -> Dropout -> Dense(10, softmax)``. Adam with a short linear warm-up (a fifth of an
epoch) and a cosine decay to zero over the run, batch 128, and a random horizontal flip as the only augmentation (Fashion-MNIST's
clothes are left-right symmetric; translations did not pay for themselves in a short run)::

    python benchmarks/bench_deep_cnn.py                        # full size: 5 epochs
    python benchmarks/bench_deep_cnn.py --epochs 1 --n-train 5000 --out /tmp/sizing.json   # a sizing run

Every epoch prints the training loss and accuracy, the test accuracy (reported for progress only:
the number of epochs is fixed in advance, nothing is selected on the test set) and the time so far.
The result goes to ``benchmarks/results/deep_cnn.json``.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

import minicnn
from minicnn.callbacks import Callback
from minicnn.datasets import fashion_mnist
from minicnn.layers import (
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Input,
    MaxPooling2D,
    RandomFlip,
    ReLU,
)
from minicnn.models import Sequential
from minicnn.optimizers import Adam
from minicnn.schedules import CosineDecay
from minicnn.utils import set_random_seed

RESULTS = Path(__file__).resolve().parent / "results" / "deep_cnn.json"


def build_model(widths=(32, 64, 128), dropout=0.1, seed=0):
    """``[Conv-BN-ReLU-Conv-BN-ReLU-MaxPool-Dropout]`` per width, then Flatten, Dropout, Dense(10)."""
    layers = [Input(shape=(28, 28, 1)), RandomFlip("horizontal", seed=seed)]
    for f in widths:
        for _ in range(2):   # the conv's bias is redundant before BatchNormalization's beta
            layers += [Conv2D(f, 3, padding="same", use_bias=False, kernel_initializer="he_normal"),
                       BatchNormalization(), ReLU()]
        layers += [MaxPooling2D(), Dropout(dropout)]
    layers += [Flatten(), Dropout(0.25), Dense(10, activation="softmax")]
    return Sequential(layers, name="deep_cnn")


class EpochReport(Callback):
    """One line per epoch: train loss/accuracy, test accuracy, wall time; keeps the rows for the JSON."""

    def __init__(self, start):
        super().__init__()
        self.start, self.rows = start, []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": epoch + 1, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
               "test_loss": logs.get("val_loss"), "test_accuracy": logs.get("val_accuracy"),
               "elapsed_s": round(time.perf_counter() - self.start, 1)}
        self.rows.append(row)
        print(f"epoch {row['epoch']:2d}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
              f"test_acc {row['test_accuracy']:.4f}  elapsed {row['elapsed_s'] / 60:.1f} min", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--n-train", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    if args.n_train:
        x_train, y_train = x_train[: args.n_train], y_train[: args.n_train]
    x_train = x_train[..., None].astype("float32") / 255.0
    x_test = x_test[..., None].astype("float32") / 255.0

    steps_per_epoch = -(-len(x_train) // args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = min(steps_per_epoch // 5, total // 4)   # a fifth of an epoch
    schedule = CosineDecay(0.0, decay_steps=total - warmup, warmup_target=args.learning_rate, warmup_steps=warmup)
    model = build_model(seed=args.seed)
    model.compile(optimizer=Adam(schedule), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()
    print(f"{len(x_train)} training images, {args.epochs} epochs of {steps_per_epoch} steps, "
          f"backend={minicnn.get_backend()}, {os.cpu_count()} CPUs", flush=True)

    start = time.perf_counter()
    report = EpochReport(start)
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
              validation_data=(x_test, y_test), callbacks=[report])
    wall = time.perf_counter() - start
    test_loss, test_acc = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
    first_92 = next((r["epoch"] for r in report.rows if r["test_accuracy"] >= 0.92), None)
    print(f"final test accuracy {test_acc:.4f} (loss {test_loss:.4f}) after {args.epochs} epochs, "
          f"{wall / 60:.1f} min; first epoch at >= 92%: {first_92}", flush=True)

    result = {
        "benchmark": "deep_cnn_fashion_mnist",
        "architecture": "RandomFlip(h) + [Conv-BN-ReLU x2, MaxPool, Dropout(0.1)] x (32, 64, 128) "
                        "+ Flatten + Dropout(0.25) + Dense(10, softmax)",
        "params": model.count_params(),
        "optimizer": f"Adam, linear warm-up {warmup} steps to {args.learning_rate}, cosine decay to 0",
        "batch_size": args.batch_size, "epochs": args.epochs, "n_train": len(x_train), "n_test": len(x_test),
        "test_accuracy": round(float(test_acc), 4), "test_loss": round(float(test_loss), 4),
        "first_epoch_at_92": first_92, "wall_time_s": round(wall, 1),
        "seconds_per_epoch": round(wall / max(len(report.rows), 1), 1),
        "per_epoch": report.rows, "backend": minicnn.get_backend(), "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "numpy": np.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
