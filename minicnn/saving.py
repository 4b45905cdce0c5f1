"""Saving and loading models as one ``.npz`` file, written atomically and read without pickle.

A model file is a NumPy ``.npz`` archive (a zip of ``.npy`` arrays) holding::

    __meta__      a JSON string: format, architecture (each layer's config), compile settings
                  (optimizer config, loss, metrics), the names and shapes of all arrays below,
                  the optimizer's step counter, random-generator states, class_names, input_stats
                  (per-channel brightness of the training images, ``minicnn.data.stats``)
    w0, w1, ...   the weights, in ``model.get_weights()`` order
    s0, s1, ...   the optimizer's slots (Adam's m and v of every parameter)

It is read with ``allow_pickle=False``, so loading a file never runs code from it; anything that
does not check out (a truncated or foreign file, bad JSON, wrong shapes, an unknown layer class)
raises a ValueError naming the file.

Writes go to a temporary file in the same folder, which is flushed, fsync'ed and then renamed over
the target with ``os.replace`` (atomic on POSIX and Windows), so a crash or a kill in the middle of
a save leaves the previous file whole.
"""

import contextlib
import json
import os
import uuid

import numpy as np

from . import config
from .data import stats as input_stats

MODEL_FORMAT = "minicnn.model"
WEIGHTS_FORMAT = "minicnn.weights"
VERSION = 1


def npz_path(path):
    """``path`` with the ``.npz`` suffix NumPy would add (so save and load agree on the file name)."""
    path = os.fspath(path)
    return path if path.endswith(".npz") else path + ".npz"


def _existing_path(path):
    path = os.fspath(path)
    for candidate in (path, npz_path(path)):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"No such minicnn file: {path!r}")


# ------------------------------------------------------------------------------------ writing
def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:   # not possible on some platforms (Windows): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_npz_atomically(path, arrays, overwrite=True):
    """Write ``arrays`` (name -> ndarray) to ``path`` so that readers see the old file or the new one."""
    path = os.path.abspath(npz_path(path))
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    return path


def _meta_array(meta):
    return np.array(json.dumps(meta, separators=(",", ":")))


def _rng_states(model):
    """Bit-generator states of layers with their own generator (Dropout, augmentation layers)."""
    states = {}
    for layer in model.layers:
        rng = getattr(layer, "_rng", None)
        if isinstance(rng, np.random.Generator):
            states[layer.name] = rng.bit_generator.state
    return states


def _compile_settings(model):
    import warnings

    from . import losses, optimizers

    if not model.compiled or model.optimizer is None:
        return None
    loss = None
    if model.loss is not None:
        loss = losses.serialize(model.loss)
        try:
            losses.deserialize(loss)
        except ValueError:
            warnings.warn(f"The loss {model.loss!r} cannot be saved; the loaded model will have no loss.", stacklevel=4)
            loss = None
    metrics = []
    for name, fn in model._metrics:
        if isinstance(name, str) and fn is _known_metric(name):
            metrics.append(name)
        else:
            warnings.warn(f"The metric {name!r} is a function and is not saved.", stacklevel=4)
    return {"optimizer": optimizers.serialize(model.optimizer), "loss": loss, "metrics": metrics}


def _known_metric(name):
    from .models import _METRICS

    return _METRICS.get(name.lower())


def save_model(model, path, overwrite=True):
    """Write the whole model (see the module docstring); returns the path written."""
    weights = model.get_weights()
    entries = [(layer.name, name, list(w.shape), str(w.dtype))
               for (layer, name, _, _), w in zip(model._weight_entries(), weights)]
    arrays = {f"w{i}": w for i, w in enumerate(weights)}
    compile_settings = _compile_settings(model)
    slots = []
    if compile_settings is not None:
        params = {f"{layer.name}/{name}": w for layer in model.layers for name, w in layer.params.items()}
        for key, slot_arrays in model.optimizer.slots.items():
            if key not in params:   # the state of a layer no longer in the model (after pop)
                continue
            for slot_name, array in slot_arrays.items():
                arrays[f"s{len(slots)}"] = array
                slots.append([key, slot_name])
    meta = {
        "format": MODEL_FORMAT,
        "version": VERSION,
        "model": model.get_config(),
        "weights": entries,
        "compile": compile_settings,
        "optimizer_state": None if compile_settings is None else {
            "iterations": int(model.optimizer.iterations), "slots": slots},
        "rng_states": _rng_states(model),
        "class_names": None if model.class_names is None else [str(c) for c in model.class_names],
        "input_stats": getattr(model, "input_stats", None),
    }
    arrays["__meta__"] = _meta_array(meta)
    return write_npz_atomically(path, arrays, overwrite=overwrite)


def save_weights(model, path, overwrite=True):
    """Write only the weights (and the input shape, to build an unbuilt model on load)."""
    weights = model.get_weights()
    meta = {
        "format": WEIGHTS_FORMAT,
        "version": VERSION,
        "build_input_shape": None if model._build_input_shape is None else list(model._build_input_shape),
        "weights": [(layer.name, name, list(w.shape), str(w.dtype))
                    for (layer, name, _, _), w in zip(model._weight_entries(), weights)],
    }
    arrays = {f"w{i}": w for i, w in enumerate(weights)}
    arrays["__meta__"] = _meta_array(meta)
    return write_npz_atomically(path, arrays, overwrite=overwrite)


# ------------------------------------------------------------------------------------ reading
def _read(path, formats):
    """All arrays of the archive and its parsed metadata; a ValueError for anything unreadable."""
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:   # zipfile, zlib, OSError, pickle refusal: all mean "not our file"
        raise ValueError(f"{path}: not a readable minicnn .npz file ({type(err).__name__}: {err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not a minicnn file (a single .npy array, not an .npz archive)")
    try:
        with archive:
            arrays = {name: archive[name] for name in archive.files}   # reads (and CRC-checks) everything now
    except Exception as err:
        raise ValueError(f"{path}: the file is damaged or truncated ({type(err).__name__}: {err})") from err
    meta_array = arrays.pop("__meta__", None)
    if meta_array is None or meta_array.dtype.kind != "U" or meta_array.shape != ():
        raise ValueError(f"{path}: not a minicnn file (no '__meta__' record)")
    try:
        meta = json.loads(str(meta_array[()]))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the metadata is not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") not in formats:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path}: not a minicnn file of format {' or '.join(formats)} (found {found!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported file version {meta.get('version')!r} (this minicnn reads {VERSION})")
    return arrays, meta


def _weights_from(path, arrays, meta):
    entries = meta.get("weights")
    if not isinstance(entries, list):
        raise ValueError(f"{path}: the metadata has no list of weights")
    weights = []
    for i, entry in enumerate(entries):
        w = arrays.get(f"w{i}")
        if w is None:
            raise ValueError(f"{path}: weight array w{i} ({entry}) is missing")
        if w.dtype.kind != "f":
            raise ValueError(f"{path}: weight array w{i} must hold floats. Found dtype={w.dtype}")
        if list(w.shape) != list(entry[2]):
            raise ValueError(f"{path}: weight array w{i} has shape {w.shape}, the metadata says {entry[2]}")
        weights.append(w)
    return weights


@contextlib.contextmanager
def _global_rng_untouched():
    """Building layers draws initial weights from ``config.rng()``; loading must not shift that stream."""
    rng = config.rng()
    state = rng.bit_generator.state
    try:
        yield
    finally:
        rng.bit_generator.state = state


def load_model(path, compile=True):
    """Rebuild a model written by ``save_model``. See ``minicnn.models.load_model``."""
    from . import losses, optimizers
    from .models import Sequential

    path = _existing_path(path)
    arrays, meta = _read(path, (MODEL_FORMAT,))
    try:
        weights = _weights_from(path, arrays, meta)
        with _global_rng_untouched():
            model = Sequential.from_config(meta["model"])
        if weights and not model.built:
            raise ValueError("the file holds weights but its architecture has no input shape")
        model.set_weights(weights)
        for name, state in (meta.get("rng_states") or {}).items():
            layer = next((lay for lay in model.layers if lay.name == name), None)
            if layer is not None and isinstance(getattr(layer, "_rng", None), np.random.Generator):
                layer._rng.bit_generator.state = state
        settings = meta.get("compile")
        if compile and settings:
            loss = None if settings.get("loss") is None else losses.deserialize(settings["loss"])
            model.compile(optimizer=optimizers.deserialize(settings["optimizer"]), loss=loss,
                          metrics=settings.get("metrics") or None)
            model.optimizer.set_state(_optimizer_state(path, arrays, meta["optimizer_state"], model))
        class_names = meta.get("class_names")
        if class_names is not None and not (isinstance(class_names, list) and all(isinstance(c, str) for c in class_names)):
            raise ValueError(f"class_names must be a list of strings, found {class_names!r}")
        model.class_names = class_names
        channels = model.input_shape[-1] if model.built and len(model.input_shape) == 4 else None
        model.input_stats = input_stats.checked(meta.get("input_stats"), channels)
    except ValueError as err:
        if str(err).startswith(path):
            raise
        raise ValueError(f"{path}: cannot rebuild the model: {err}") from err
    except Exception as err:   # a tampered config can make a constructor fail in any way
        raise ValueError(f"{path}: cannot rebuild the model ({type(err).__name__}: {err})") from err
    return model


def _optimizer_state(path, arrays, state, model):
    params = {f"{layer.name}/{name}": w for layer in model.layers for name, w in layer.params.items()}
    slots = {}
    for i, (key, slot_name) in enumerate(state["slots"]):
        array = arrays.get(f"s{i}")
        if array is None:
            raise ValueError(f"{path}: optimizer slot s{i} ({key} {slot_name}) is missing")
        if key not in params or params[key].shape != array.shape or array.dtype.kind != "f":
            raise ValueError(f"{path}: optimizer slot {key!r} {slot_name!r} does not match the model's parameters")
        slots.setdefault(key, {})[slot_name] = array.astype(params[key].dtype, copy=False)
    return {"iterations": state["iterations"], "slots": slots}


def load_weights(model, path):
    """Read weights from a ``save_weights`` or ``save`` file into ``model`` (checked before any change)."""
    path = _existing_path(path)
    arrays, meta = _read(path, (WEIGHTS_FORMAT, MODEL_FORMAT))
    weights = _weights_from(path, arrays, meta)
    shape = meta.get("build_input_shape") or (meta.get("model") or {}).get("build_input_shape")
    try:
        if not model.built:
            if not shape:
                raise ValueError("the model is not built and the file does not say the input shape")
            model.build(tuple(shape))
        model.set_weights(weights)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: the weights do not fit model '{model.name}': {err}") from err
