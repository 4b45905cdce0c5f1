"""minicnn and PyTorch: convert a model both ways, or train it on PyTorch's distributed engine.

==========================  ============================================================================
``to_torch(model)``         an ``nn.Sequential`` with the same layers and weights (``convert.py``)
``from_torch(module, ...)`` a minicnn ``Sequential`` from an ``nn.Sequential`` stack (``convert.py``)
                            (both: one converter per layer class, in the tables of ``converters.py``)
``fit_distributed(...)``    ``model.fit`` on ``DistributedDataParallel`` over ``nproc`` processes, the
                            trained weights written back into the minicnn model (``distributed.py``,
                            the per-process loop in ``worker.py``)
==========================  ============================================================================

PyTorch is imported only when these functions run; ``import minicnn`` does not need it.
"""

from .convert import from_torch, to_torch
from .distributed import fit_distributed

__all__ = ["to_torch", "from_torch", "fit_distributed", "ChannelsLastFlatten", "Rescale", "Standardize"]  # noqa: F822


def __getattr__(name):
    """``ChannelsLastFlatten``, ``Rescale``, ``Standardize``: nn.Module classes made when PyTorch is first needed."""
    from . import convert

    return getattr(convert, name)
