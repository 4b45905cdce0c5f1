"""Closed registries: how a name stored in a model file becomes an object, and nothing else.

Every kind of object a file may name (layers, activations, initializers, regularizers, losses,
metrics, optimizers, learning-rate schedules) has one dict in its own module, from the name in the
file to the class (or function) meant for it, built from minicnn's own classes at import time::

    LAYERS       minicnn.layers        ACTIVATIONS   minicnn.activations
    INITIALIZERS minicnn.initializers  REGULARIZERS  minicnn.regularizers
    LOSSES       minicnn.losses        METRICS       minicnn.metrics
    OPTIMIZERS   minicnn.optimizers    SCHEDULES     minicnn.schedules

A name outside its dict is a ValueError; no name from a file is ever imported or looked up as an
attribute (the idea of Keras's ``safe_mode`` and PyTorch's ``weights_only``).
"""


def short(value, limit=120):
    """``repr(value)`` cut to ``limit`` characters: a file's content can be long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_config(registry, data, kind):
    """The object ``{"class_name": name, "config": {...}}`` describes, with the class from ``registry``.

    Parameters
    ----------
    registry : dict of str -> class
    data : the stored dict (from JSON)
    kind : str, for messages ("layer", "loss", ...)

    Raises
    ------
    ValueError : ``data`` is not such a dict, the name is not in ``registry``, or the class refuses
        the config (its constructor validates every argument).
    """
    if not isinstance(data, dict) or not isinstance(data.get("class_name"), str):
        raise ValueError(f"A {kind} must be stored as {{'class_name': ..., 'config': {{...}}}}. Received: {short(data)}")
    cls = registry.get(data["class_name"])
    if cls is None:
        raise ValueError(f"Unknown {kind} class {short(data['class_name'])}. Known: {sorted(registry)}")
    config = data.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"The config of {kind} {cls.__name__} must be a dict. Received: {short(config)}")
    try:
        return cls.from_config(dict(config))
    except TypeError as err:   # an argument the constructor does not take
        raise ValueError(f"Bad {kind} config for {cls.__name__}: {err}") from None
