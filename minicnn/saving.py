"""Saving and loading models as one ``.npz`` file, written atomically and read as data only.

A model file is a NumPy ``.npz`` archive (a zip of uncompressed ``.npy`` arrays) holding::

    __meta__      a JSON string: format, architecture (each layer's config), compile settings
                  (optimizer config, loss, metrics), the names, shapes and SHA-256 digests of all
                  arrays below, the optimizer's step counter, random-generator states, class_names,
                  input_stats (per-channel brightness of the training images, ``minicnn.data.stats``)
    w0, w1, ...   the weights, in ``model.get_weights()`` order
    s0, s1, ...   the optimizer's slots (Adam's m and v of every parameter)

Reading is a closed world and bounded, in this order, so that a hostile file costs at most a few
times its own size in memory and can make nothing run:

1. the zip directory: only the members above, stored (not compressed), no duplicates; a member
   whose name or size is not what the metadata announces is refused before it is read;
2. ``__meta__`` (at most ``MAX_META_BYTES``), parsed as JSON;
3. the architecture: every name (layer, activation, initializer, regularizer, loss, metric,
   optimizer, schedule) resolves through its module's registry (see ``minicnn.registry``); the
   weight shapes are computed from ``compute_output_shape`` and ``weight_shapes`` and compared with
   the metadata and with each member's ``.npy`` header *before* any layer is built;
4. only then the layers are built and the arrays read (``allow_pickle=False``), each checked
   against the zip CRC and against its digest in the metadata (which catches swapped arrays).

Anything that does not check out raises a ValueError naming the file. ``load_model(compile=False)``
does not read the optimizer's config or state at all.

Writes go to a temporary file in the same folder, which is flushed, fsync'ed and then renamed over
the target with ``os.replace`` (atomic on POSIX and Windows), so a crash or a kill in the middle of
a save leaves the previous file whole. The temporary file of a killed save is removed by the next
save of the same target, once its writer process is gone.
"""

import contextlib
import hashlib
import json
import math
import os
import re
import sys
import uuid
import warnings
import zipfile

import numpy as np

from . import config, losses, optimizers
from .data import stats as input_stats_
from .layers import InputLayer
from .layers import deserialize as deserialize_layer
from .layers.base import Layer
from .registry import short

MODEL_FORMAT = "minicnn.model"
WEIGHTS_FORMAT = "minicnn.weights"
VERSION = 1
MAX_META_BYTES = 16 << 20   # the JSON of a large model is a few kB
_MEMBER = re.compile(r"(__meta__|[ws](?:0|[1-9][0-9]{0,6}))\.npy")
_FLOATS = ("float32", "float64")


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


def _writer_is_gone(pid):
    """True only when no process ``pid`` exists (POSIX); on Windows, never (keep the file)."""
    if sys.platform == "win32" or pid == os.getpid():
        return False   # os.kill(pid, 0) would terminate a process on Windows
    try:
        os.kill(pid, 0)   # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:   # it exists but belongs to someone else
        pass
    return False


def _remove_stale_temp_files(path):
    """Delete ``.<name>.<pid>.<hex>.tmp`` files of ``path`` left by saves whose process was killed."""
    directory, name = os.path.split(path)
    pattern = re.compile(rf"\.{re.escape(name)}\.([0-9]+)\.[0-9a-f]{{8}}\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            match = pattern.fullmatch(entry.name)
            if match and entry.is_file(follow_symlinks=False) and _writer_is_gone(int(match.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def write_npz_atomically(path, arrays, overwrite=True):
    """Write ``arrays`` (name -> ndarray) to ``path`` so that readers see the old file or the new one.

    OSErrors name ``path`` (not the temporary file) and keep their type.
    """
    path = os.path.abspath(npz_path(path))
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    if os.path.isdir(path):
        raise IsADirectoryError(f"Cannot save to {path}: it is a folder.")
    directory = os.path.dirname(path)
    _remove_stale_temp_files(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise type(err)(f"Cannot save to {path}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise type(err)(f"Cannot save to {path}: {err.strerror or err}") from err
        raise
    _fsync_directory(directory)
    return path


def _meta_array(meta):
    return np.array(json.dumps(meta, separators=(",", ":")))


def _rng_states(model):
    """Bit-generator states of layers with their own generator (Dropout, augmentation layers)."""
    return {layer.name: layer.rng.bit_generator.state for layer in model.layers
            if isinstance(layer.rng, np.random.Generator)}


def _digest(array):
    """The first 16 hex digits of the SHA-256 of the array's bytes (as stored)."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()[:16]


def _weight_names(model):
    """``(layer name, weight name)`` of every weight, in ``model.get_weights()`` order."""
    return [(layer.name, name) for layer in model.layers for name in layer.weight_names]


def _weight_entries(model, weights):
    return [(layer, name, list(w.shape), str(w.dtype), _digest(w))
            for (layer, name), w in zip(_weight_names(model), weights)]


def save_model(model, path, overwrite=True):
    """Write the whole model (see the module docstring); returns the path written."""
    weights = model.get_weights()
    arrays = {f"w{i}": w for i, w in enumerate(weights)}
    compile_settings = model.get_compile_config()
    slots = []
    if compile_settings is not None:
        params = {f"{layer.name}/{name}": w for layer in model.layers for name, w in layer.params.items()}
        for key, slot_arrays in model.optimizer.slots.items():
            if key not in params:   # the state of a layer no longer in the model (after pop)
                continue
            for slot_name, array in slot_arrays.items():
                arrays[f"s{len(slots)}"] = array
                slots.append([key, slot_name, _digest(array)])
    shuffle_rng = model.shuffle_rng
    meta = {
        "format": MODEL_FORMAT,
        "version": VERSION,
        "model": model.get_config(),
        "weights": _weight_entries(model, weights),
        "compile": compile_settings,
        "optimizer_state": None if compile_settings is None else {
            "iterations": int(model.optimizer.iterations), "slots": slots},
        "rng_states": _rng_states(model),
        "shuffle_rng_state": None if shuffle_rng is None else shuffle_rng.bit_generator.state,
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
        "build_input_shape": list(model.input_shape) if model.built else None,
        "weights": _weight_entries(model, weights),
    }
    arrays = {f"w{i}": w for i, w in enumerate(weights)}
    arrays["__meta__"] = _meta_array(meta)
    return write_npz_atomically(path, arrays, overwrite=overwrite)


# ------------------------------------------------------------------------------------ reading
class _Archive:
    """The zip directory of a model file, checked; members are read one at a time, on request."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                raise ValueError(f"{path}: not a minicnn file (a single .npy array, not an .npz archive)")
        try:
            self.zip = zipfile.ZipFile(path)
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as err:
            raise ValueError(f"{path}: not a readable minicnn .npz file ({type(err).__name__}: {err})") from None
        self.members = {}
        try:
            if "__meta__.npy" not in (info.filename for info in infos):
                raise ValueError(f"{path}: not a minicnn file (no '__meta__' record)")
            for info in infos:
                name = info.filename
                if not _MEMBER.fullmatch(name) or name[:-4] in self.members:
                    what = "a second member" if _MEMBER.fullmatch(name) else "a member"
                    raise ValueError(f"{path}: {what} {short(name)} that is not part of the minicnn format")
                if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                    raise ValueError(f"{path}: member {name!r} is compressed or encrypted; minicnn files store "
                                     "arrays uncompressed (np.savez)")
                self.members[name[:-4]] = info
        except ValueError:
            self.zip.close()
            raise

    def header(self, name):
        """``(shape, dtype)`` from the ``.npy`` header of member ``name``, checked against its size."""
        info = self.members[name]
        try:
            with self.zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"unsupported .npy version {version}")
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
                offset = f.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError, TypeError, NotImplementedError) as err:
            raise ValueError(f"{self.path}: the header of {name!r} is damaged ({type(err).__name__}: {err})") from None
        if dtype.hasobject:
            raise ValueError(f"{self.path}: {name!r} holds Python objects; minicnn files hold numbers only")
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != offset + nbytes:
            raise ValueError(f"{self.path}: {name!r} declares shape {shape} ({nbytes} bytes) but the member "
                             f"holds {info.file_size - offset} bytes")
        return tuple(shape), dtype

    def read(self, name):
        """The array of member ``name`` (its header already checked), CRC-checked, without pickle."""
        try:
            with self.zip.open(self.members[name]) as f:
                array = np.lib.format.read_array(f, allow_pickle=False)
                f.read(1)   # reach the end of the member, where zipfile compares the CRC
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as err:
            raise ValueError(f"{self.path}: {name!r} is damaged or truncated ({type(err).__name__}: {err})") from None
        return array


def _read_meta(archive, formats):
    path, size = archive.path, archive.members["__meta__"].file_size
    if size > MAX_META_BYTES:
        raise ValueError(f"{path}: the metadata is {size} bytes; minicnn reads at most {MAX_META_BYTES}")
    shape, dtype = archive.header("__meta__")
    if shape != () or dtype.kind != "U":
        raise ValueError(f"{path}: not a minicnn file (no '__meta__' record)")
    try:
        meta = json.loads(str(archive.read("__meta__")[()]))
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{path}: the metadata is not valid JSON ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict) or meta.get("format") not in formats:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path}: not a minicnn file of format {' or '.join(formats)} (found {short(found)})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported file version {short(meta.get('version'))} (this minicnn reads {VERSION})")
    return meta


def _check_members(archive, n_weights, n_slots):
    """Exactly ``__meta__``, ``w0..w{n_weights-1}`` and ``s0..s{n_slots-1}``: nothing else."""
    expected = {"__meta__", *(f"w{i}" for i in range(n_weights)), *(f"s{i}" for i in range(n_slots))}
    missing, extra = sorted(expected - set(archive.members)), sorted(set(archive.members) - expected)
    if missing:
        raise ValueError(f"{archive.path}: array(s) {', '.join(missing[:5])} named in the metadata are missing")
    if extra:
        raise ValueError(f"{archive.path}: array(s) {', '.join(extra[:5])} are not named in the metadata")


def _check_weights(archive, meta, planned, by_layer_name=True):
    """Compare the metadata's weight list and each member's header with ``planned`` [(layer, name, shape)].

    ``by_layer_name=False`` (``load_weights``): weights go to layers by position, as in Keras.
    """
    path = archive.path
    entries = meta.get("weights")
    if not isinstance(entries, list):
        raise ValueError(f"{path}: the metadata has no list of weights")
    if len(entries) != len(planned):
        raise ValueError(f"{path}: the metadata lists {len(entries)} weight arrays; the architecture has {len(planned)}")
    for i, (entry, (layer, name, shape)) in enumerate(zip(entries, planned)):
        first = 0 if by_layer_name else 1
        if not (isinstance(entry, list) and len(entry) in (4, 5) and entry[first:3] == [layer, name, list(shape)][first:]):
            raise ValueError(f"{path}: weight w{i} is listed as {short(entry)}; the architecture has "
                             f"{layer!r} {name!r} of shape {list(shape)}")
        found, dtype = archive.header(f"w{i}")
        if dtype.name not in _FLOATS:
            raise ValueError(f"{path}: weight array w{i} must hold floats (float32 or float64). Found dtype={dtype}")
        if found != tuple(shape):
            raise ValueError(f"{path}: weight array w{i} has shape {found}, the metadata says {list(shape)}")


def _planned_weights(model_config):
    """``[(layer name, weight name, shape)]`` of the architecture, from the configs alone (builds nothing)."""
    if not isinstance(model_config, dict) or not isinstance(model_config.get("layers"), list):
        raise ValueError(f"the architecture must be a dict with a list of layers. Received: {short(model_config)}")
    layers = [deserialize_layer(data) for data in model_config["layers"]]
    shape = model_config.get("build_input_shape")
    if layers and isinstance(layers[0], InputLayer):
        shape, layers = (None, *layers[0].declared_input_shape), layers[1:]
    elif layers and layers[0].declared_input_shape is not None:
        shape = (None, *layers[0].declared_input_shape)
    return [] if shape is None else _weight_shapes(layers, shape)


def _weight_shapes(layers, shape):
    """``[(layer name, weight name, shape)]`` for ``layers`` fed inputs of ``shape``: pure, allocates nothing."""
    if not isinstance(shape, (list, tuple)) or not all(
            d is None or isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape[1:]):
        raise ValueError(f"`build_input_shape` must be a list of positive integers. Received: {short(shape)}")
    planned, shape = [], (None, *shape[1:])
    for layer in layers:
        shapes = layer.weight_shapes(shape)
        if type(layer).weight_shapes is Layer.weight_shapes and not type(layer).__module__.startswith("minicnn."):
            layer.build(shape)   # a learner's registered layer that does not say: build it to see
            shapes = dict(zip(layer.weight_names, (w.shape for w in layer.get_weights())))
        planned += [(layer.name, name, tuple(int(d) for d in s)) for name, s in shapes.items()]
        shape = tuple(layer.compute_output_shape(shape))
    return planned


def _read_checked(archive, name, entry):
    """Member ``name``, compared with the digest at ``entry[-1]`` when the metadata has one."""
    array = archive.read(name)
    if isinstance(entry, list) and len(entry) in (3, 5) and entry[-1] != _digest(array):
        raise ValueError(f"{archive.path}: array {name!r} does not match its digest in the metadata "
                         "(the file is damaged, or its arrays were swapped)")
    return array


def _read_weights(archive, entries):
    weights = [_read_checked(archive, f"w{i}", entry) for i, entry in enumerate(entries)]
    bad = sum(int(w.size - np.count_nonzero(np.isfinite(w))) for w in weights)
    if bad:
        warnings.warn(f"{archive.path}: {bad} of {sum(w.size for w in weights)} weights are NaN or infinite "
                      "(saved from a run that diverged?); predictions will be NaN.", stacklevel=4)
    return weights


def _set_rng_state(rng, state, what):
    """Restore a generator from a state a file holds, or a ValueError (the generator is unchanged)."""
    if not isinstance(state, dict) or state.get("bit_generator") != type(rng.bit_generator).__name__:
        raise ValueError(f"bad random-generator state for {what}: {short(state)}")
    saved = rng.bit_generator.state
    try:
        rng.bit_generator.state = state
    except (ValueError, TypeError, KeyError, OverflowError) as err:
        rng.bit_generator.state = saved
        raise ValueError(f"bad random-generator state for {what}: {err}") from None


def _class_names(value, model):
    if value is None:
        return None
    if not (isinstance(value, list) and all(isinstance(c, str) for c in value)):
        raise ValueError(f"class_names must be a list of strings, found {short(value)}")
    if model.built and model.layers:
        units = model.output_shape[-1]
        if len(value) != units and not (units == 1 and len(value) == 2):
            raise ValueError(f"class_names has {len(value)} names but the model has {units} outputs")
    return value


@contextlib.contextmanager
def _global_rng_untouched():
    """Building layers draws initial weights from ``config.rng()``; loading must not shift that stream."""
    rng = config.rng()
    state = rng.bit_generator.state
    try:
        yield
    finally:
        rng.bit_generator.state = state


def _named(path, err):
    """``err`` as a ValueError whose message starts with the file's path."""
    if isinstance(err, ValueError) and str(err).startswith(path):
        return err
    if isinstance(err, (ValueError, TypeError)):
        return ValueError(f"{path}: cannot rebuild the model: {err}")
    return ValueError(f"{path}: cannot rebuild the model ({type(err).__name__}: {err})")


def load_model(path, from_config, compile=True):
    """Rebuild a model written by ``save_model``. See ``minicnn.models.load_model``.

    ``from_config`` builds the model from its checked architecture (``Sequential.from_config``):
    the file format does not depend on the model class, so this module imports no model.
    """
    path = _existing_path(path)
    archive = _Archive(path)
    try:
        with _global_rng_untouched():   # constructing and building layers draws from config.rng()
            return _load_model(archive, from_config, compile)
    except Exception as err:   # a tampered config can make a constructor fail in any way
        raise _named(path, err) from None
    finally:
        archive.zip.close()


def _load_model(archive, from_config, compile):
    meta = _read_meta(archive, (MODEL_FORMAT,))
    planned = _planned_weights(meta.get("model"))
    state = meta.get("optimizer_state") or {}
    slots = state.get("slots", []) if isinstance(state, dict) else None
    if not isinstance(slots, list):
        raise ValueError(f"the optimizer state must list its slots. Received: {short(state)}")
    _check_members(archive, len(planned), len(slots))
    _check_weights(archive, meta, planned)
    class_names, stats = meta.get("class_names"), input_stats_.checked(meta.get("input_stats"))
    model = from_config(meta["model"])   # every shape is known to match the file: now allocate
    model.set_weights(_read_weights(archive, meta["weights"]))
    rng_states = meta.get("rng_states") or {}
    for layer in model.layers:
        if isinstance(layer.rng, np.random.Generator) and layer.name in dict(rng_states):
            _set_rng_state(layer.rng, rng_states[layer.name], f"layer {layer.name!r}")
    if meta.get("shuffle_rng_state") is not None:
        shuffle_rng = np.random.default_rng()
        _set_rng_state(shuffle_rng, meta["shuffle_rng_state"], "shuffling")
        model.shuffle_rng = shuffle_rng
    settings = meta.get("compile")
    if compile and settings:
        _compile(archive, model, settings, state, slots)
    model.class_names = _class_names(class_names, model)
    channels = model.input_shape[-1] if model.built and len(model.input_shape) == 4 else None
    model.input_stats = input_stats_.checked(stats, channels)
    return model


def _compile(archive, model, settings, state, slots):
    if not isinstance(settings, dict):
        raise ValueError(f"the compile settings must be a dict. Received: {short(settings)}")
    loss = None if settings.get("loss") is None else losses.deserialize(settings["loss"])
    optimizer = optimizers.deserialize(settings.get("optimizer"))
    optimizer.set_state(_optimizer_state(archive, state, slots, model, optimizer))
    model.compile(optimizer=optimizer, loss=loss, metrics=settings.get("metrics") or None)   # names: METRICS only


def _optimizer_state(archive, state, slots, model, optimizer):
    """The optimizer's step count and slots, every slot's header checked before any is read."""
    path = archive.path
    params = {f"{layer.name}/{name}": w for layer in model.layers for name, w in layer.params.items()}
    seen = set()
    for i, pair in enumerate(slots):
        ok = isinstance(pair, list) and len(pair) in (2, 3) and all(isinstance(p, str) for p in pair)
        if not ok or pair[0] not in params or pair[1] not in optimizer.slot_names or tuple(pair) in seen:
            raise ValueError(f"{path}: optimizer slot s{i} {short(pair)} does not match the model's parameters")
        seen.add(tuple(pair))
        shape, dtype = archive.header(f"s{i}")
        if shape != params[pair[0]].shape or dtype.name not in _FLOATS:
            raise ValueError(f"{path}: optimizer slot {pair[0]!r} {pair[1]!r} does not match the model's parameters")
    out = {}
    for i, (key, slot_name, *_) in enumerate(slots):
        out.setdefault(key, {})[slot_name] = _read_checked(archive, f"s{i}", slots[i]).astype(params[key].dtype, copy=False)
    return {"iterations": state.get("iterations", 0), "slots": out}


def load_weights(model, path):
    """Read weights from a ``save_weights`` or ``save`` file into ``model`` (checked before any change)."""
    path = _existing_path(path)
    archive = _Archive(path)
    try:
        meta = _read_meta(archive, (WEIGHTS_FORMAT, MODEL_FORMAT))
        shape = meta.get("build_input_shape") or (meta.get("model") or {}).get("build_input_shape")
        state = meta.get("optimizer_state") or {}
        try:
            if model.built:
                planned = [(layer, name, w.shape) for (layer, name), w in zip(_weight_names(model), model.weights)]
            elif shape:
                planned = _weight_shapes(model.layers, shape)
            else:
                raise ValueError("the model is not built and the file does not say the input shape")
            _check_members(archive, len(planned), len(state.get("slots") or []) if isinstance(state, dict) else 0)
            _check_weights(archive, meta, planned, by_layer_name=False)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: the weights do not fit model '{model.name}': {err}") from None
        weights = _read_weights(archive, meta["weights"])
        if not model.built:
            model.build(tuple(shape))
        model.set_weights(weights)
    finally:
        archive.zip.close()
