"""The one place that asks which accelerators exist.

Everything else takes a resolved ``device`` string (or a ``use_gpu`` flag) as an argument,
so the choice is made once, at the edge, from configuration, and logged.
"""

from __future__ import annotations

import logging

from newarrivals.indexer.errors import ConfigError

__all__ = ["cuda_available", "faiss_gpu_count", "resolve_device"]

logger = logging.getLogger(__name__)

_VALID = ("auto", "cpu", "cuda", "cuda:N")


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (imports torch lazily: it is slow to import)."""
    import torch

    return bool(torch.cuda.is_available())


def faiss_gpu_count() -> int:
    """How many GPUs FAISS can use (0 with faiss-cpu)."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def resolve_device(requested: str) -> str:
    """Turn a configured device (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a torch device.

    Args:
        requested: the configured value.

    Returns:
        ``"cpu"`` or ``"cuda"``/``"cuda:N"``.

    Raises:
        ConfigError: for an unknown value, or ``cuda`` asked for where there is none.
    """
    value = requested.strip().lower()
    if value == "auto":
        device = "cuda" if cuda_available() else "cpu"
    elif value == "cpu":
        device = "cpu"
    elif value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
        if not cuda_available():
            raise ConfigError(
                f"device {requested!r} was requested but torch sees no CUDA device; "
                "use device='cpu' or 'auto'."
            )
        device = value
    else:
        raise ConfigError(f"device must be one of {', '.join(_VALID)}; got {requested!r}.")
    logger.info("device: %s (requested %s)", device, requested)
    return device
