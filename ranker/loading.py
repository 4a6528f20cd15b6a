"""One loader for every ranker kind: a registry from a manifest's ``kind`` to its loader.

:data:`RANKER_KINDS` maps each ``kind`` a ranker manifest can hold to the function that loads
it (as :data:`newarrivals.indexer.index.ann.BACKENDS` does for index backends);
:func:`load_ranker` reads the manifest and returns a
:class:`~newarrivals.ranker.base.Ranker` whatever the directory holds: a torch teacher, a
torch student or an ONNX student. An unknown kind raises with the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

from newarrivals.indexer.errors import ConfigError
from newarrivals.ranker.base import DEFAULT_CACHE_SIZE, Ranker
from newarrivals.ranker.crossencoder.model import TORCH_KIND, CrossEncoderRanker, read_manifest
from newarrivals.ranker.crossencoder.onnx import ONNX_KIND, OnnxRanker
from newarrivals.ranker.onnx_sessions import configure_threads
from newarrivals.ranker.student.model import SHARED_KIND, SharedContextRanker
from newarrivals.ranker.student.onnx import ONNX_SHARED_KIND, OnnxSharedContextRanker

__all__ = ["RANKER_KINDS", "RankerLoader", "load_ranker"]

#: ``loader(directory, *, device, threads, precision, cache_size)``.
RankerLoader = Callable[..., Ranker]


def _torch_loader(
    torch_class: type[CrossEncoderRanker] | type[SharedContextRanker],
) -> RankerLoader:
    """A loader for a torch artifact: fp32 only, threads set at load."""

    def load(
        directory: Path,
        *,
        device: str,
        threads: int | None,
        precision: str | None,
        cache_size: int,
    ) -> Ranker:
        if precision not in (None, "fp32"):
            raise ConfigError(
                f"{directory} is a torch ranker (fp32), so precision must be None or 'fp32', "
                f"got {precision!r}; export it with export_onnx for int8."
            )
        configure_threads(threads)
        return torch_class.load(directory, device=device, cache_size=cache_size)

    return load


def _onnx_loader(onnx_class: type[OnnxRanker] | type[OnnxSharedContextRanker]) -> RankerLoader:
    """A loader for an ONNX artifact, which runs on CPU here."""

    def load(
        directory: Path,
        *,
        device: str,
        threads: int | None,
        precision: str | None,
        cache_size: int,
    ) -> Ranker:
        if device != "cpu":
            raise ConfigError(
                f"{directory} is an ONNX ranker, which runs on CPU here, but device is "
                f"{device!r}; pass device='cpu' or serve the torch artifact on the GPU."
            )
        return onnx_class.load(
            directory, precision=precision, threads=threads, cache_size=cache_size
        )

    return load


#: Every ranker kind this code loads, by the ``kind`` its manifest records.
RANKER_KINDS: Final[dict[str, RankerLoader]] = {
    TORCH_KIND: _torch_loader(CrossEncoderRanker),
    SHARED_KIND: _torch_loader(SharedContextRanker),
    ONNX_KIND: _onnx_loader(OnnxRanker),
    ONNX_SHARED_KIND: _onnx_loader(OnnxSharedContextRanker),
}


def load_ranker(
    directory: Path,
    *,
    device: str = "cpu",
    threads: int | None = None,
    precision: str | None = None,
    cache_size: int = DEFAULT_CACHE_SIZE,
) -> Ranker:
    """Load whatever ranker ``directory`` holds, by its manifest's ``kind``.

    Args:
        directory: A ranker artifact (``train-ranker``, ``distill-ranker``, an ONNX export).
        device: A resolved torch device for torch rankers; ONNX rankers run on CPU.
        threads: CPU threads for the forward pass (``None``: the library default); set at
            load, i.e. at start-up.
        precision: For an ONNX artifact, ``fp32`` or ``int8`` (``None``: its default); a
            torch artifact is fp32.
        cache_size: Products whose candidate token ids are kept between requests.

    Returns:
        A ranker with ``encode_context``, ``warm_cache`` and ``rank``.

    Raises:
        ConfigError: for a directory without a ranker manifest, an unknown ``kind`` (the
            valid ones are named), or an ONNX ranker asked onto a GPU.
    """
    directory = Path(directory)
    kind = str(read_manifest(directory).get("kind", TORCH_KIND))
    loader = RANKER_KINDS.get(kind)
    if loader is None:
        raise ConfigError(
            f"{directory}: unknown ranker kind {kind!r}; this code loads {sorted(RANKER_KINDS)}."
        )
    return loader(
        directory, device=device, threads=threads, precision=precision, cache_size=cache_size
    )
