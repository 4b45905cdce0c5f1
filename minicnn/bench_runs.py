"""The benchmark runs that need a fresh process: ``minicnn.bench`` starts each one alone.

A library that runs alone in its own process cannot be slowed or helped by the other's threads,
memory or compiled code, and a cold start is only cold in a new process. ``minicnn.bench`` starts::

    python -m minicnn.bench_runs steady LIB BATCH STEPS
    python -m minicnn.bench_runs accuracy LIB EPOCHS INIT_PATH SEED THREADS
    python -c "$STARTUP_COMMAND"      (minicnn.bench.STARTUP_COMMAND, which calls ``startup``)

and reads the last line the run prints on stdout, one JSON value. ``LIB`` is ``minicnn`` or
``torch``. The startup run is started with ``-c`` because ``-m`` would import minicnn before the
run could start its clock.
"""

import json
import sys
import time

import numpy as np

from . import utils
from .bench import THREADS, build_minicnn, build_torch, load_fashion_mnist
from .callbacks import Callback
from .optimizers import Adam


def _fashion_mnist(data=None):
    """``(x, y), (x_test, y_test)`` as float32 NHWC images in [0, 1] and int64 labels."""
    (x, y), (xt, yt) = load_fashion_mnist() if data is None else data

    def images(a):
        return (a[..., None] / np.float32(255)).astype(np.float32)

    return (images(x), y.astype(np.int64)), (images(xt), yt.astype(np.int64))


def steady(lib, batch_size, steps, data=None):
    """Seconds of each of ``steps`` training steps of the small CNN in a row, after 10 untimed ones.

    Every step takes a random minibatch of Fashion-MNIST (``data``, as ``load_fashion_mnist``
    returns it, by default the real one), as ``fit`` does: no pause between the steps.
    """
    (x, y), _ = _fashion_mnist(data)
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, len(x), batch_size) for _ in range(steps + 10)]
    if lib == "minicnn":
        net = build_minicnn("small")

        def step(idx):
            net.train_on_batch(x[idx], y[idx])
    else:
        import torch

        torch.set_num_threads(THREADS)
        X, Y = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y)
        net = build_torch(torch, "small")
        opt, loss_fn = torch.optim.Adam(net.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss()

        def step(idx):
            idx = torch.from_numpy(idx)
            opt.zero_grad(set_to_none=True)
            loss_fn(net(X[idx]), Y[idx]).backward()
            opt.step()
    for idx in batches[:10]:
        step(idx)
    times = []
    for idx in batches[10:]:
        t0 = time.perf_counter()
        step(idx)
        times.append(time.perf_counter() - t0)
    return times


def startup(t0, t1):
    """Seconds from ``t0`` (before ``import minicnn``) to ``t1`` (after it), to the first training step
    of the small CNN, and to a small ``fit`` (with validation), ``evaluate`` and ``predict``."""
    rng = np.random.default_rng(0)
    x = rng.random((32, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 32)
    t_step = time.perf_counter()
    net = build_minicnn("small")
    net.train_on_batch(x, y)
    t_fit = time.perf_counter()
    net = build_minicnn("small")
    xs, ys = rng.random((512, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 512)
    net.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    net.fit(xs, ys, batch_size=128, epochs=1, validation_split=0.25, verbose=0)
    net.evaluate(xs, ys, verbose=0)
    net.predict(xs[:10], verbose=0)
    end = time.perf_counter()
    return dict(import_s=t1 - t0, first_step_s=t_fit - t_step, fit_after_s=end - t_fit, total_s=end - t0)


def _torch_weights(net, weights):
    """Copy minicnn's small-CNN weights (Keras layouts) into ``build_torch(..., nhwc_flatten=True)``."""
    import torch

    params = [net[0].weight, net[0].bias, net[3].weight, net[3].bias, net[8].weight, net[8].bias,
              net[10].weight, net[10].bias]
    with torch.no_grad():
        for p, a in zip(params, weights):
            a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else (a.T if a.ndim == 2 else a)   # (F, C, KH, KW), (out, in)
            p.copy_(torch.from_numpy(np.ascontiguousarray(a)))


def accuracy(lib, epochs, init_path, seed, threads=THREADS, data=None):
    """Test accuracy of the small CNN after ``epochs`` epochs (batch 128, Adam 1e-3), and seconds per epoch.

    The minicnn run writes its initial weights to ``init_path``; the torch run starts from them
    (``eps=1e-7``, Keras's) and replays the batch orders minicnn's ``fit`` drew from seed ``seed + 1``.
    """
    (x, y), (xt, yt) = _fashion_mnist(data)
    epoch_times = []
    if lib == "minicnn":
        utils.set_random_seed(seed)
        net = build_minicnn("small", Adam(1e-3))
        net.compile(optimizer=Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        np.savez(init_path, *net.get_weights())
        net.shuffle_rng = np.random.default_rng(seed + 1)   # fit's epoch orders: the torch run replays them

        class Timer(Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                epoch_times.append(time.perf_counter() - self.t)

        net.fit(x, y, batch_size=128, epochs=epochs, verbose=0, callbacks=[Timer()])
        _, acc = net.evaluate(xt, yt, batch_size=1000, verbose=0)
    else:
        import torch

        torch.set_num_threads(threads)
        net = build_torch(torch, "small", nhwc_flatten=True)
        with np.load(init_path) as w:
            _torch_weights(net, [w[f"arr_{i}"] for i in range(len(w.files))])
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
        loss_fn = torch.nn.CrossEntropyLoss()
        X, Y = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y)
        rng = np.random.default_rng(seed + 1)
        for _ in range(epochs):
            t = time.perf_counter()
            order = torch.from_numpy(rng.permutation(len(X)))
            for s in range(0, len(X), 128):
                idx = order[s : s + 128]
                opt.zero_grad(set_to_none=True)
                loss_fn(net(X[idx]), Y[idx]).backward()
                opt.step()
            epoch_times.append(time.perf_counter() - t)
        net.eval()
        with torch.inference_mode():
            pred = net(torch.from_numpy(np.ascontiguousarray(xt.transpose(0, 3, 1, 2)))).argmax(1).numpy()
        acc = float(np.mean(pred == yt))
    return dict(test_accuracy=float(acc), epoch_s=epoch_times)


def print_json(value):
    """The run's answer: one line of JSON on stdout."""
    print(json.dumps(value), flush=True)


def main(argv):
    run, args = argv[0], argv[1:]
    if run == "steady":
        lib, batch_size, steps = args
        return print_json(steady(lib, int(batch_size), int(steps)))
    if run == "accuracy":
        lib, epochs, init_path, seed, threads = args
        return print_json(accuracy(lib, int(epochs), init_path, int(seed), int(threads)))
    raise SystemExit(f"unknown run {run!r}: expected steady or accuracy (see minicnn.bench.STARTUP_COMMAND for startup)")


if __name__ == "__main__":
    main(sys.argv[1:])
