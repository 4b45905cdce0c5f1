"""The ``minicnn`` command: train, evaluate, predict, gradcheck, bench, info.

``minicnn ...`` and ``python -m minicnn ...`` are the same program. Every command first checks
all its arguments (``check_<command>``: numbers in range, files present, ``--out`` a writable
folder), before it prints or trains anything. Errors a user can cause (a bad argument, a missing
file, a wrong model file, an unreadable image) print one line naming the value and what to do,
and exit with status 1; no error shows a traceback.
"""

import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np


class CLIError(Exception):
    """An error to report in one line, without a traceback."""


DATASETS = ("sample", "fashion-mnist", "fashion_mnist", "mnist", "cifar10")


# ----------------------------------------------------------------------------------------- checks
def _at_least(args, name, minimum, flag=None):
    value = getattr(args, name)
    if value is not None and value < minimum:
        raise CLIError(f"{flag or '--' + name.replace('_', '-')} must be at least {minimum}. Received: {value}")


def _check_dataset(name):
    if name not in DATASETS and not os.path.isdir(name):
        raise CLIError(f"unknown dataset {name!r}: use {', '.join(DATASETS[:2] + DATASETS[3:])} or a folder of images")


def _check_file(path, what):
    if not os.path.isfile(path):
        raise CLIError(f"{what} not found: {path}" + (" (it is a folder)" if os.path.isdir(path) else ""))


def _check_out_folder(out):
    """Make ``out`` (a folder) and prove that a file can be written in it, before any training."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out {out} is a file, not a folder: give a folder name (it is created if missing)")
    target = os.path.join(out, "model.npz")
    if os.path.isdir(target):
        raise CLIError(f"--out {out}: {target} is a folder; the model file cannot be written there")
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise CLIError(f"--out {out} is not a writable folder ({err.strerror or err}): choose another --out") from None


def check_train(args):
    """Every ``train`` argument, before anything is loaded, printed or trained; makes ``--out``."""
    from . import zoo

    _at_least(args, "epochs", 1)
    _at_least(args, "batch_size", 1)
    _at_least(args, "seed", 0)
    if not 0 <= args.validation_split < 1:
        raise CLIError(f"--validation-split must be in [0, 1). Received: {args.validation_split}")
    if args.image_size is not None and min(args.image_size) < 1:
        raise CLIError(f"--image-size must be two positive integers. Received: {' '.join(map(str, args.image_size))}")
    _check_engine(args)
    _check_dataset(args.dataset)
    if args.model not in zoo.MODELS:
        _check_file(args.model, f"--model is not one of {', '.join(sorted(zoo.MODELS))}, and the model file is")
    _check_out_folder(args.out)


def check_evaluate(args):
    _check_file(args.model, "model file")
    _check_dataset(args.dataset)


def check_predict(args):
    _check_file(args.model, "model file")
    for path in args.images:
        _check_file(path, "image")
    _at_least(args, "top_k", 1)


# ----------------------------------------------------------------------------------------- data
def load_dataset(name, seed=None, image_size=None, batch_size=32):
    """``(x_train, y_train), (x_test, y_test), class_names`` as NHWC uint8/float arrays and int labels.

    ``name``: 'sample' (the Fashion-MNIST subset inside the package), 'fashion-mnist', 'mnist',
    'cifar10', or a folder of images (one sub-folder per class; ``train/`` and ``test/`` sub-folders
    are used when present, else a seeded 80/20 split).
    """
    from . import datasets

    if name in ("sample", "fashion-mnist", "fashion_mnist"):
        (x, y), (xt, yt) = datasets.fashion_mnist.load_data(sample=(name == "sample"))
        classes = datasets.fashion_mnist.CLASS_NAMES
    elif name == "mnist":
        (x, y), (xt, yt) = datasets.mnist.load_data()
        classes = datasets.mnist.CLASS_NAMES
    elif name == "cifar10":
        (x, y), (xt, yt) = datasets.cifar10.load_data()
        classes = datasets.cifar10.CLASS_NAMES
    elif os.path.isdir(name):
        return _load_folder(name, seed, image_size or (64, 64), batch_size)
    else:
        _check_dataset(name)
    if x.ndim == 3:   # (N, 28, 28) -> (N, 28, 28, 1): NHWC with one channel
        x, xt = x[..., None], xt[..., None]
    return (x, np.asarray(y).reshape(-1)), (xt, np.asarray(yt).reshape(-1)), list(classes)


def _load_folder(folder, seed, image_size, batch_size):
    from .data import image_dataset_from_directory

    kw = dict(image_size=image_size, batch_size=batch_size, seed=seed if seed is not None else 0)
    if os.path.isdir(os.path.join(folder, "train")) and os.path.isdir(os.path.join(folder, "test")):
        train = image_dataset_from_directory(os.path.join(folder, "train"), shuffle=True, **kw)
        test = image_dataset_from_directory(os.path.join(folder, "test"), shuffle=False, class_names=train.class_names, **kw)
    else:
        train, test = image_dataset_from_directory(folder, validation_split=0.2, subset="both", **kw)
    return train, test, list(train.class_names)


def _optimizer(args, train, streaming):
    """Adam(1e-3) with its learning rate decayed along half a cosine to 0 over the run's steps.

    The decay lets the last epochs settle instead of bouncing around a minimum: with a constant
    rate the small CNN's test accuracy on Fashion-MNIST after 10 epochs was 90.8% (seed 0), with
    the decay 91.8% (seed 0) and 92.1% (seed 1). (``model.compile(optimizer='adam')`` in a
    script keeps Keras's constant rate; this is the command's recipe only.)
    """
    from .optimizers import Adam
    from .schedules import CosineDecay

    if streaming:
        steps = len(train)
    else:
        n_fit = len(train[0]) - int(len(train[0]) * args.validation_split)
        steps = math.ceil(n_fit / args.batch_size)
    return Adam(learning_rate=CosineDecay(1e-3, decay_steps=max(1, steps * args.epochs)))


# ----------------------------------------------------------------------------------------- commands
def cmd_train(args):
    from . import metrics, zoo
    from .models import load_model
    from .utils import set_random_seed

    set_random_seed(args.seed)   # a fixed default (0): the printed accuracy is the same on every run
    loaded = None if args.model in zoo.MODELS else _load_model_or_fail(load_model, args.model, compile=False)
    train, test, class_names = load_dataset(args.dataset, args.seed, args.image_size, args.batch_size)
    streaming = not isinstance(train, tuple)
    if streaming:
        input_shape, fit_args = train.element_shape, (train,)
    else:
        input_shape, fit_args = train[0].shape[1:], train
    if loaded is None:
        model = zoo.MODELS[args.model](input_shape, len(class_names), augment=args.augment)
    else:
        model = _fits_the_data(loaded, args.model, tuple(input_shape), class_names)
    optimizer = _optimizer(args, train, streaming)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.class_names = class_names
    model.summary()
    if loaded is not None:
        print(f"Continuing from {args.model} with a fresh Adam optimizer: learning rate 1e-3 decaying to 0 "
              f"over this run's {optimizer._learning_rate.decay_steps} steps (the file's optimizer state is not used).")

    out = args.out
    fit_kw = dict(epochs=args.epochs, verbose=1)
    if streaming:
        fit_kw["validation_data"] = test
    else:
        fit_kw.update(batch_size=args.batch_size, validation_split=args.validation_split)
    start = time.perf_counter()
    if args.engine == "torch":
        history = _fit_torch(model, train, test, streaming, args)
    else:
        history = model.fit(*fit_args, **fit_kw)
    seconds = time.perf_counter() - start
    if not history.epoch:
        raise CLIError(f"no training batch could be read from {args.dataset} (every image failed to decode?); "
                       "nothing was saved")

    y_true, y_prob = _predict_all(model, test)
    y_pred = y_prob.argmax(axis=1)
    print(f"\nTest accuracy: {metrics.accuracy(y_true, y_pred):.4f}  ({len(y_true)} images, trained in {seconds:.0f}s)\n")
    print(metrics.classification_report(y_true, y_pred, class_names=class_names))
    model.save(os.path.join(out, "model.npz"))
    _write_pictures(out, history, y_true, y_pred, class_names)
    print(f"Wrote {out}/model.npz, {out}/history.png, {out}/confusion_matrix.png")
    return 0


def _check_engine(args):
    """``--engine/--nproc/--device``, checked before any data is read."""
    if args.nproc < 1:
        raise CLIError(f"--nproc must be at least 1 (received {args.nproc})")
    if args.engine == "minicnn":
        if args.nproc != 1 or args.device != "cpu":
            raise CLIError("--nproc and --device choose how PyTorch trains: add --engine torch")
        return
    try:
        import torch
    except ImportError:
        raise CLIError("--engine torch needs PyTorch, which is not installed: "
                       "pip install torch==2.13.0 (or pip install 'minicnn[torch]')") from None
    if args.device == "cuda" and (not torch.cuda.is_available() or torch.cuda.device_count() < args.nproc):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise CLIError(f"--device cuda --nproc {args.nproc} needs {args.nproc} GPU(s); PyTorch sees {count}. "
                       "Use --device cpu.")


def _arrays(data):
    """A streaming dataset (a folder of images) as ``(x, y)`` arrays: the processes read arrays."""
    xs, ys = zip(*((np.asarray(xb), np.asarray(yb)) for xb, yb in data))
    return np.concatenate(xs), np.concatenate(ys)


def _fit_torch(model, train, test, streaming, args):
    """``model.fit`` on PyTorch's DistributedDataParallel (``minicnn.interop.fit_distributed``)."""
    from .interop import fit_distributed

    kw = dict(epochs=args.epochs, batch_size=args.batch_size, verbose=1, nproc=args.nproc, device=args.device)
    if streaming:
        kw["validation_data"] = _arrays(test)
        train = _arrays(train)
    else:
        kw["validation_split"] = args.validation_split
    try:
        history = fit_distributed(model, *train, **kw)
    except TimeoutError as err:
        raise CLIError(str(err)) from None
    engine = history.engine
    print(f"PyTorch engine: {engine['nproc']} process(es) on {engine['device']}, "
          f"{engine['samples_per_second']:.0f} samples/s ({engine['seconds']:.0f}s with start-up)")
    return history


def _predict_all(model, data):
    """True labels and predicted probabilities for a (x, y) tuple or a streaming dataset."""
    if isinstance(data, tuple):
        x, y = data
        return np.asarray(y).reshape(-1), model.predict(x, batch_size=256, verbose=0)
    ys, ps = [], []
    for xb, yb in data:
        ys.append(np.asarray(yb).reshape(len(xb), -1).argmax(1) if np.ndim(yb) == 2 else np.asarray(yb))
        ps.append(model.predict_on_batch(xb))
    if not ys:
        raise CLIError("the test data yielded no images (every image failed to decode?)")
    return np.concatenate(ys), np.concatenate(ps)


def _write_pictures(out, history, y_true, y_pred, class_names):
    import matplotlib

    matplotlib.use("Agg")
    from . import metrics, plotting

    plotting.save_figure(plotting.plot_history(history).figure, os.path.join(out, "history.png"))
    cm = metrics.confusion_matrix(y_true, y_pred, num_classes=len(class_names))
    plotting.save_figure(plotting.plot_confusion_matrix(cm, class_names=class_names).figure, os.path.join(out, "confusion_matrix.png"))


def _load_model_or_fail(load_model, path, compile=False):
    """The model in ``path``; without its optimizer unless ``compile`` (predicting needs none)."""
    if not os.path.exists(path):
        raise CLIError(f"model file not found: {path}")
    try:
        return load_model(path, compile=compile)
    except ValueError as err:
        raise CLIError(f"cannot load {path} as a minicnn model: {err}") from None


def _fits_the_data(model, path, input_shape, class_names):
    """``model`` if it takes images of ``input_shape`` and has one output per class, else a CLIError."""
    if not model.built or tuple(model.input_shape[1:]) != input_shape:
        expected = "unknown" if not model.built else tuple(model.input_shape[1:])
        raise CLIError(f"{path} takes images of shape {expected} but the dataset's are {input_shape}: "
                       "use --image-size or a matching dataset")
    if model.output_shape[-1] != len(class_names):
        raise CLIError(f"{path} has {model.output_shape[-1]} outputs but the dataset has {len(class_names)} classes")
    return model


def cmd_evaluate(args):
    from . import metrics
    from .models import load_model

    model = _load_model_or_fail(load_model, args.model)
    size = model.input_shape[1:3] if args.dataset and os.path.isdir(args.dataset) else None
    _, test, class_names = load_dataset(args.dataset, 0, size)
    class_names = getattr(model, "class_names", None) or class_names
    y_true, y_prob = _predict_all(model, test)
    y_pred = y_prob.argmax(axis=1)
    print(f"Test accuracy: {metrics.accuracy(y_true, y_pred):.4f}  ({len(y_true)} images)\n")
    print(metrics.classification_report(y_true, y_pred, class_names=class_names))
    return 0


def cmd_predict(args):
    """Top classes of each image; a warning on stderr for an image unlike the training images.

    ``--invert`` turns each image into its negative (``255 - x``) first: a dark object photographed
    on a light background then looks like Fashion-MNIST's light objects on black.
    """
    from .data import img_to_array, load_img, stats
    from .models import load_model

    model = _load_model_or_fail(load_model, args.model)
    _, height, width, channels = model.input_shape
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}.get(channels)
    images = []
    for path in args.images:
        if not os.path.exists(path):
            raise CLIError(f"image not found: {path}")
        try:
            images.append(img_to_array(load_img(path, color_mode=mode, target_size=(height, width))))
        except Exception as err:   # Pillow raises many types for unreadable files
            raise CLIError(f"cannot read image {path}: {err}") from None
    x = np.stack(images)
    if args.invert:
        x = 255.0 - x   # img_to_array gives 0..255 for the 8-bit images load_img returns
    for path, warning in zip(args.images, stats.unusual(model.input_stats, x)):
        if warning:
            print(f"minicnn: warning: {path}: {warning}", file=sys.stderr)
    probs = model.predict(x, verbose=0)
    names = getattr(model, "class_names", None) or [str(i) for i in range(probs.shape[1])]
    k = min(args.top_k, probs.shape[1])
    for path, p in zip(args.images, probs):
        best = np.argsort(-p, kind="stable")[:k]
        print(f"{path}: " + ", ".join(f"{names[i]} ({p[i]:.1%})" for i in best))
    return 0


def cmd_info(args):
    import platform

    import numpy

    from . import __version__, config, datasets

    print(f"minicnn {__version__}   Python {platform.python_version()}   NumPy {numpy.__version__}")
    try:
        import numba

        from .kernels import numba as fast

        print(f"Numba {numba.__version__}   threads: {fast.get_num_threads()}   cache: {fast.cache_dir()}")
        print(fast.blas_info())
    except ImportError as err:
        print(f"Numba: not available ({err})")
    print(f"backend: {config.get_backend()}   floatx: {config.get_floatx()}   CPUs: {os.cpu_count()}")
    print("datasets found:")
    for name, where in datasets.find_all().items():
        print(f"  {name:<14} {where or 'not found'}")
    return 0


def cmd_gradcheck(args):
    """Check the backward pass of every layer type against finite differences, in float64, and print the tables."""
    from . import gradcheck

    cases = gradcheck.layer_cases(args.seed)
    failed = []
    for layer, x in cases:
        report = gradcheck.check_layer(layer, x)
        print(report, end="\n\n")
        if not report.ok:
            failed.append(type(layer).__name__)
    if failed:
        print(f"SOME GRADIENTS DISAGREE: {', '.join(failed)} (of {len(cases)} layer types)")
        return 1
    print(f"all gradients agree: {len(cases)} layer types checked in float64")
    return 0


def cmd_bench(args):
    from . import bench

    return bench.main(quick=True)


# ----------------------------------------------------------------------------------------- parser
def build_parser():
    parser = argparse.ArgumentParser(prog="minicnn", description="A CNN library written from scratch to be read.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a CNN (default: the small CNN on the embedded Fashion-MNIST sample)")
    train.add_argument("--dataset", default="sample", help="sample | fashion-mnist | mnist | cifar10 | DIR (default: sample)")
    train.add_argument("--model", default="small", help="seed (the blog's model) | small | a saved model file")
    train.add_argument("--epochs", type=int, default=5,
                       help="passes over the data; Adam's learning rate (1e-3) decays to 0 over them (default: 5)")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--augment", action="store_true", help="random flips and shifts during training")
    train.add_argument("--validation-split", type=float, default=0.1)
    train.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="resize folder images (default 64 64)")
    train.add_argument("--seed", type=int, default=0,
                       help="seeds the weights, shuffling, dropout, augmentation and a folder's 80/20 split; "
                            "the same seed gives the same accuracy on the same machine (default: 0)")
    train.add_argument("--out", default="minicnn-run", help="output folder (default: ./minicnn-run)")
    train.add_argument("--engine", choices=("minicnn", "torch"), default="minicnn",
                       help="minicnn's own loop, or PyTorch's DistributedDataParallel (needs PyTorch; default: minicnn)")
    train.add_argument("--nproc", type=int, default=1, help="--engine torch: processes sharing each batch (default: 1)")
    train.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="--engine torch: cpu (gloo) or cuda (NCCL, one GPU per process) (default: cpu)")
    train.set_defaults(func=cmd_train, check=check_train)

    evaluate = sub.add_parser("evaluate", help="accuracy and per-class report of a saved model")
    evaluate.add_argument("model")
    evaluate.add_argument("--dataset", default="sample")
    evaluate.set_defaults(func=cmd_evaluate, check=check_evaluate)

    predict = sub.add_parser("predict", help="classify image files with a saved model")
    predict.add_argument("model")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--invert", action="store_true",
                         help="use each image's negative (255 - pixel): Fashion-MNIST models expect light objects "
                              "on a dark background, so a dark object photographed on white needs this")
    predict.set_defaults(func=cmd_predict, check=check_predict)

    info = sub.add_parser("info", help="versions, backend, threads, Numba cache folder, datasets found")
    info.set_defaults(func=cmd_info)

    check = sub.add_parser("gradcheck", help="check the backward pass of every layer type against finite differences (float64)")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=cmd_gradcheck)

    bench = sub.add_parser("bench", help="quick speed comparison: reference vs Numba kernels (and PyTorch)")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        getattr(args, "check", lambda args: None)(args)
        return args.func(args)
    except CLIError as err:
        print(f"minicnn: error: {err}", file=sys.stderr)
    except OSError as err:
        where = f": {err.filename}" if err.filename and str(err.filename) not in str(err.strerror or err) else ""
        print(f"minicnn: error: {err.strerror or err}{where}", file=sys.stderr)
    except (ValueError, RuntimeError) as err:
        print(f"minicnn: error: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print("minicnn: interrupted", file=sys.stderr)
        return 130
    except Exception as err:   # a bug of ours: still one line, with what to report
        print(f"minicnn: internal error ({type(err).__name__}: {err}); please report it with the command line",
              file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
