"""``fit_distributed``: train a compiled minicnn model on PyTorch's ``DistributedDataParallel``.

::

    from minicnn.interop import fit_distributed

    history = fit_distributed(model, x, y, epochs=5, batch_size=64, validation_split=0.1, nproc=2)
    model.evaluate(x_test, y_test)       # the trained weights are back in the minicnn model

What happens, in order:

1. Everything is checked first (data, loss, optimizer, layers, ``nproc``, device); an error leaves the
   model as it was. The model's layers go to PyTorch with ``to_torch``; augmentation layers at the front
   (``RandomFlip``, ...) are run by minicnn on each process's share of the batch instead.
2. ``nproc`` processes start with the *spawn* method (never fork: the parent may hold OpenMP and Numba
   thread pools) and meet over gloo on 127.0.0.1 (NCCL, one GPU each, with ``device='cuda'``) at a free
   port. A script that calls this must guard its entry point with ``if __name__ == "__main__":``, as any
   script using ``multiprocessing`` does: each process imports the main module.
3. ``batch_size`` is the *global* batch, as with Keras's distribution strategies: each step, every
   process takes a share of it and the gradients are averaged, weighted so that the update equals
   ``model.fit``'s on the whole batch (``worker.py`` shows the arithmetic). The order of the samples is
   drawn from minicnn's generator exactly as ``model.fit`` draws it; like ``DistributedSampler``, each
   process reads its own part of it, but without padding the epoch with repeated samples.
4. Rank 0 reports the progress bar and the ``History`` (the parent prints them with minicnn's own
   callbacks), then writes its weights, which come back through ``from_torch``, and the optimizer's
   state, so ``model.fit`` can carry on where the processes stopped.

Differences from ``model.fit`` that remain: Dropout masks come from PyTorch's generator; with
``nproc > 1`` a BatchNormalization layer normalises each process's share (Keras's default,
``synchronized=False``), and its moving statistics are rank 0's. Callbacks are not supported.
"""

import contextlib
import math
import os
import pickle
import queue as queue_module
import shutil
import socket
import tempfile
import time
import warnings

import numpy as np

from .. import config, losses, optimizers
from ..callbacks import CallbackList
from ..data_adapters import is_dataset
from ..models import Sequential
from ..trainer import DEFAULT_BATCH_SIZE, _check_int, _check_verbose
from .convert import AUGMENTATION, _torch, from_torch  # augmentation: to_torch leaves it out, minicnn runs it

#: The compiled losses and optimizers with a PyTorch equivalent (``worker.loss_terms``, ``worker.KerasOptimizer``).
LOSSES = (losses.SparseCategoricalCrossentropy, losses.CategoricalCrossentropy, losses.BinaryCrossentropy,
          losses.MeanSquaredError)
OPTIMIZERS = (optimizers.SGD, optimizers.RMSprop, optimizers.Adam)
PROBE = 256   # rank 0 returns PyTorch's predictions for this many samples (``history.engine``)


def fit_distributed(model, x, y, epochs=1, batch_size=None, validation_split=0.0, validation_data=None,
                    shuffle=True, verbose="auto", initial_epoch=0, nproc=1, device="cpu", threads=1, timeout=300.0):
    """``model.fit`` on ``nproc`` PyTorch processes; the trained weights are written back into ``model``.

    Parameters
    ----------
    model : Sequential, compiled (``SGD``, ``RMSprop`` or ``Adam``, with a float or a schedule as rate)
    x : ndarray of shape (N, H, W, C) (or (N, D))
    y : ndarray of shape (N,) (integer labels) or (N, K), as the compiled loss wants
    epochs, batch_size, validation_split, validation_data, shuffle, verbose, initial_epoch
        As in ``Sequential.fit``. ``batch_size`` (default 32) is the global batch, shared by the processes.
    nproc : int
        Number of processes.
    threads : int
        PyTorch threads per process (``torch.set_num_threads``); 1 by default, as ``torchrun`` sets, so that
        ``nproc`` processes do not oversubscribe the cores (on our busy 2-core machine, a batch-32 step of the
        small CNN took 4x longer with 2 threads than with 1; see ``benchmarks/RESULTS.md`` for batch 128).
    device : 'cpu' or 'cuda'
        'cuda' runs one process per GPU (``nproc`` at most ``torch.cuda.device_count()``), over NCCL.
    timeout : float
        Seconds any wait may last: the start-up, one step, one collective. Past it, every process is
        stopped and a TimeoutError raised.

    Returns
    -------
    History, as ``fit`` returns (also ``model.history``). ``history.engine`` adds ``nproc``, ``device``,
    ``seconds`` (the run, start-up included), ``train_seconds`` (from the end of the first step to the end
    of training, validation included), ``samples_per_second`` (the samples of the steps in those seconds)
    and ``predictions``: rank 0's PyTorch outputs for the first 256 validation samples (training samples
    without validation data), to compare with ``model.predict``.

    Raises
    ------
    ImportError without PyTorch; NotImplementedError for a layer, loss or optimizer with no PyTorch
    equivalent (naming it and why); ValueError for bad arguments or data; RuntimeError naming the
    process and its error when one fails or dies; TimeoutError. In each case the model is unchanged.
    """
    torch = _torch()
    plan = _check(model, torch, epochs, batch_size, verbose, initial_epoch, nproc, device, timeout)
    plan["threads"] = _check_int("threads", threads, 1)
    x, y, val = _check_data(model, x, y, validation_split, validation_data)
    if len(x) < nproc:
        raise ValueError(f"fit_distributed: nproc={nproc} is larger than the data: {len(x)} training sample(s). "
                         "Every process needs at least one sample.")
    _check_model(model, x.shape)
    if not model.built:
        model.build(x.shape)
    split = _split_point(model)

    rng_state = config.rng().bit_generator.state
    shuffle_rng = model.shuffle_rng
    shuffle_state = None if shuffle_rng is None else shuffle_rng.bit_generator.state
    run_dir = tempfile.mkdtemp(prefix="minicnn-ddp-")
    try:
        np.save(os.path.join(run_dir, "x.npy"), x)
        np.save(os.path.join(run_dir, "y.npy"), y)
        if val is not None:
            np.save(os.path.join(run_dir, "x_val.npy"), val[0])
            np.save(os.path.join(run_dir, "y_val.npy"), val[1])
        if shuffle and epochs > initial_epoch:   # a permutation per epoch from the model's generator, as fit draws them
            shuffler = model._shuffle_generator()
            np.save(os.path.join(run_dir, "order.npy"),
                    np.stack([shuffler.permutation(len(x)) for _ in range(initial_epoch, epochs)]))
        with _generator_kept():        # seeds for PyTorch's Dropout, drawn without moving the stream fit uses
            seed = int(config.rng().integers(2**31))
        plan.update(dir=run_dir, config=model.get_config(), weights=model.get_weights(), split=split,
                    loss=model.loss, metrics=list(model._metrics), optimizer=model.optimizer,
                    dtype=str(model.layers[0].dtype), backend=config.get_backend(), probe=PROBE,
                    seed=seed, port=_free_port())
        steps = math.ceil(len(x) / plan["batch_size"])
        # model=None: the History reaches model.history only once the whole run went well
        cbs = CallbackList(None, model=None, add_history=True, add_progbar=plan["verbose"] != 0,
                           verbose=plan["verbose"], epochs=epochs, steps=steps)
        start = time.perf_counter()
        train_seconds = _run(plan, cbs)
        seconds = time.perf_counter() - start
        result = dict(np.load(os.path.join(run_dir, "result.npz"), allow_pickle=False))
    except BaseException:
        config.rng().bit_generator.state = rng_state     # a failed run leaves minicnn's generators as they were
        if shuffle_rng is not None:
            shuffle_rng.bit_generator.state = shuffle_state
        model.shuffle_rng = shuffle_rng
        raise
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    _write_back(model, split, result)
    history = cbs.history
    history.engine = {"nproc": nproc, "device": device, "seconds": seconds, "train_seconds": train_seconds,
                      # the first step's samples are not in train_seconds
                      "samples_per_second": (len(x) * (epochs - initial_epoch) - min(len(x), plan["batch_size"]))
                      / max(train_seconds, 1e-9),
                      "predictions": result["predictions"]}
    model.history = history
    return history


# ============================================================================ checks (nothing changes before they pass)
def _check(model, torch, epochs, batch_size, verbose, initial_epoch, nproc, device, timeout):
    model._check_compiled("fit_distributed")
    nproc = _check_int("nproc", nproc, 1)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else _check_int("batch_size", batch_size, 1)
    if batch_size < nproc:
        raise ValueError(f"fit_distributed: batch_size={batch_size} cannot be shared by nproc={nproc} processes: "
                         "the batch is global (each process takes batch_size / nproc). Use batch_size >= nproc.")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"fit_distributed: `device` must be 'cpu' or 'cuda'. Received: device={device!r}")
    if device == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError("fit_distributed: device='cuda' but PyTorch sees no CUDA GPU here "
                             f"(torch {torch.__version__}). Use device='cpu'.")
        if nproc > count:
            raise ValueError(f"fit_distributed: nproc={nproc} processes need {nproc} GPUs; PyTorch sees {count}.")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"fit_distributed: `timeout` must be a number of seconds > 0. Received: timeout={timeout!r}")
    loss, opt = model.loss, model.optimizer
    if type(loss) not in LOSSES:
        raise NotImplementedError(f"fit_distributed: the loss {type(loss).__name__} has no PyTorch equivalent here. "
                                  f"Supported: {', '.join(c.__name__ for c in LOSSES)}.")
    if type(opt) not in OPTIMIZERS:
        raise NotImplementedError(f"fit_distributed: the optimizer {type(opt).__name__} has no PyTorch equivalent "
                                  f"here. Supported: {', '.join(c.__name__ for c in OPTIMIZERS)}.")
    if not model.trainable:
        raise ValueError(f"fit_distributed: model '{model.name}' has trainable=False: there is nothing to train.")
    return {"world": nproc, "device": device, "timeout": float(timeout), "batch_size": batch_size,
            "verbose": _check_verbose(verbose), "epochs": _check_int("epochs", epochs, 0),
            "initial_epoch": _check_int("initial_epoch", initial_epoch, 0)}


def _check_data(model, x, y, validation_split, validation_data):
    """Checked ``(x, y, val)`` with ``fit``'s rules; arrays only (the data is memory-mapped by each process)."""
    if is_dataset(x) or (validation_data is not None and is_dataset(validation_data)):
        raise ValueError("fit_distributed takes arrays (x, y) and validation_data=(x_val, y_val); "
                         "for a dataset of batches, concatenate it into arrays first.")
    if isinstance(validation_split, bool) or not (isinstance(validation_split, (int, float)) and 0 <= validation_split < 1):
        raise ValueError(f"`validation_split` must be a number in [0, 1). Received: {validation_split!r}")
    x, y = model._check_arrays(x, y)
    val = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("`validation_data` must be a tuple (x_val, y_val).")
        val = model._check_arrays(*validation_data, expected=(None, *x.shape[1:]))
    elif validation_split:
        split_at = int(math.floor(len(x) * (1 - validation_split)))   # the last fraction, before shuffling
        if split_at == 0 or split_at == len(x):
            raise ValueError(f"`validation_split={validation_split}` leaves {split_at} of {len(x)} samples for "
                             "training and the rest for validation; one side would be empty.")
        x, y, val = x[:split_at], y[:split_at], (x[split_at:], y[split_at:])
    return x, y, val


@contextlib.contextmanager
def _generator_kept():
    """Put minicnn's generator back as it was: layers made here to check or convert (their initial weights
    are overwritten) must not shift the shuffling and initialisation that come after, as in ``fit``."""
    state = config.rng().bit_generator.state
    try:
        yield
    finally:
        config.rng().bit_generator.state = state


def _check_model(model, x_shape):
    """Do first what the processes and the write-back will do: rebuild the model from its config, convert
    it to PyTorch and back, send the loss, metrics and optimizer. Every problem shows here, before
    anything starts or changes."""
    from .worker import split_model, torch_network

    with _generator_kept():             # the copies' initial weights are thrown away
        copy = Sequential.from_config(model.get_config())
        if not copy.built:
            copy.build(x_shape)
        _, rest = split_model(copy, _split_point(copy))
        back = from_torch(torch_network(rest), rest.input_shape[1:])
    got, want = [w.shape for w in back.get_weights()], [w.shape for w in rest.get_weights()]
    if got != want:
        raise NotImplementedError(f"fit_distributed: model '{model.name}' does not come back from PyTorch with the "
                                  f"same weights (shapes {got} instead of {want}).")
    if not copy.trainable_weights:
        raise ValueError(f"fit_distributed: model '{model.name}' has no trainable weights: there is nothing to train.")
    for layer in rest.layers:
        reg = getattr(layer, "kernel_regularizer", None)
        if reg is not None and not hasattr(reg, "l1"):
            raise NotImplementedError(f"fit_distributed: layer '{layer.name}' has regularizer {reg!r}; only "
                                      "minicnn.regularizers.L1L2 (l1, l2, l1_l2) has a PyTorch equivalent here.")
    for what, obj in [("loss", model.loss), ("optimizer", model.optimizer)] + [("metric", m) for m in model._metrics]:
        try:
            pickle.dumps(obj)
        except Exception as err:        # lambdas, local functions: a spawned process cannot import them
            raise ValueError(f"fit_distributed: the {what} {obj!r} cannot be sent to the processes ({err}). "
                             "Define it at the top level of a module.") from None


def _split_point(model):
    """How many leading layers minicnn runs itself: up to the last augmentation layer (0 if none)."""
    layers = model.layers
    last = max((i for i, layer in enumerate(layers) if isinstance(layer, AUGMENTATION)), default=-1)
    for layer in layers[: last + 1]:
        if layer.params:
            raise NotImplementedError(
                f"fit_distributed: augmentation layer '{layers[last].name}' comes after '{layer.name}', which has "
                "weights; minicnn runs augmentation before PyTorch, so it must come before every trained layer."
            )
    if last + 1 == len(layers):
        raise NotImplementedError(f"fit_distributed: model '{model.name}' ends with augmentation; nothing to train.")
    return last + 1


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ============================================================================ the run
def _run(plan, cbs):
    """Start the processes, relay rank 0's progress to the callbacks, and stop everything on any failure.

    Returns the seconds from the first step's report to the end of training.
    """
    import torch.multiprocessing as mp

    from .worker import run

    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    # The plan (weights, optimizer state) goes through a file, and only its path through the spawn pipe:
    # a process that dies before reading the pipe (an unguarded script) would otherwise leave the parent
    # blocked forever writing more than the pipe holds.
    plan_path = os.path.join(plan["dir"], "plan.pickle")
    with open(plan_path, "wb") as f:
        pickle.dump(plan, f)
    procs = mp.start_processes(run, args=(plan_path, messages), nprocs=plan["world"], join=False, start_method="spawn")
    timeout, first_step, done = plan["timeout"], None, False
    last_news = time.monotonic()
    cbs.on_train_begin()
    epoch, in_epoch = plan["initial_epoch"], False
    try:
        while not done:
            try:
                kind, where, payload, *more = messages.get(timeout=0.2)
            except queue_module.Empty:
                _check_processes(procs, plan, timeout, last_news)
                continue
            last_news = time.monotonic()
            if kind == "error":
                # a process killed by a signal makes the others fail in their next collective: name the cause
                time.sleep(0.5)
                _check_processes(procs, plan, timeout, last_news, killed_only=True)
                raise RuntimeError(f"fit_distributed: process {where} of {plan['world']} failed: {payload}")
            if kind == "batch":
                first_step = first_step or time.perf_counter()
                if not in_epoch:         # the bar's clock starts with the first step, not the start-up
                    cbs.on_epoch_begin(epoch)
                    in_epoch = True
                cbs.on_train_batch_end(where, payload)
            elif kind == "epoch":
                cbs.on_epoch_end(where, payload)
                epoch, in_epoch = where + 1, False
            elif kind == "done":
                done = True
        end = time.perf_counter()
        deadline = time.monotonic() + timeout
        while not procs.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"fit_distributed: the processes did not exit within {timeout:.0f} s of the end.")
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:   # one failed after rank 0 finished
        _stop(procs)
        raise RuntimeError(f"fit_distributed: process {err.error_index} failed: {str(err).strip().splitlines()[-1]}"
                           f"{_last_words(plan['dir'], err.error_index, started=True)}") from None
    except BaseException:
        _stop(procs)
        raise
    finally:
        messages.close()
    cbs.on_train_end({})
    return end - (first_step or end)


def _check_processes(procs, plan, timeout, last_news, killed_only=False):
    """Raise if a process died (killed by a signal first: it is the cause when others failed after it),
    naming its signal or exit code and its last words; or if nothing came for too long."""
    codes = [p.exitcode for p in procs.processes]
    dead = [r for r, c in enumerate(codes) if c is not None and c < 0] + \
        ([] if killed_only else [r for r, c in enumerate(codes) if c is not None and c > 0])
    if dead:
        rank, code = dead[0], codes[dead[0]]
        if code > 0:
            raise RuntimeError(f"fit_distributed: process {rank} of {plan['world']} died (exit code {code}"
                               f"{_last_words(plan['dir'], rank)}). The run was stopped.")
        raise RuntimeError(f"fit_distributed: process {rank} of {plan['world']} died (signal {-code}). The run was "
                           f"stopped{_last_words(plan['dir'], rank, started=True)}.")   # an abort's last words say why
    if time.monotonic() - last_news > timeout:
        raise TimeoutError(f"fit_distributed: no news from the {plan['world']} process(es) for {timeout:.0f} s; "
                           "stopped them. Raise `timeout` if a step or the start-up really takes that long.")


def _last_words(run_dir, rank, started=False):
    """``"; its last output: ..."`` from the process's log, or why it has none."""
    try:
        with open(os.path.join(run_dir, f"rank{rank}.log"), errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:          # no log: it died while Python started it, before ``worker.run``
        if started:          # (or was killed before it could open one)
            return ""
        return ("; it died while starting. A script that calls fit_distributed must guard its entry point with "
                "`if __name__ == \"__main__\":` (each process imports the main module)")
    return f"; its last output: {lines[-1]}" if lines else ""


def _stop(procs):
    for p in procs.processes:
        if p.is_alive():
            p.terminate()
    for p in procs.processes:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


# ============================================================================ back into the model
def _write_back(model, split, result):
    """Rank 0's weights into ``model`` through ``from_torch``; the optimizer's step count and slots."""
    from .worker import split_model, torch_network

    torch = _torch()
    _, rest = split_model(model, split)
    net = torch_network(rest)
    net.load_state_dict({k[len("state:"):]: torch.from_numpy(v) for k, v in result.items() if k.startswith("state:")})
    with warnings.catch_warnings(), _generator_kept():
        warnings.simplefilter("ignore")
        back = from_torch(net, rest.input_shape[1:])
    prefix_weights = [w for layer in model.layers[:split] for w in layer.get_weights()]
    model.set_weights(prefix_weights + back.get_weights())
    opt = model.optimizer
    slots = {}
    for key, value in result.items():
        if key.startswith("slot:"):
            _, name, slot = key.split(":")
            slots.setdefault(name, {})[slot] = value
    for layer in rest.layers:          # minicnn keeps an entry (maybe empty: SGD without momentum) per weight
        if layer.trainable and layer.params:
            for name in layer.params:
                slots.setdefault(f"{layer.name}/{name}", {})
    opt.set_state({"iterations": int(result["iterations"]), "slots": {**opt.get_state()["slots"], **slots}})
