"""ONNX Runtime set-up shared by both model families: threads, session options, graph files.

:func:`configure_threads` is the one place that sets torch's intra-op threads; ONNX Runtime
sessions take theirs when created (:func:`session_options`). Both happen at start-up
(:func:`~newarrivals.ranker.loading.load_ranker`), never at import.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from newarrivals.indexer.errors import ConfigError, IndexIntegrityError, MissingExtraError
from newarrivals.indexer.validation import require_int
from newarrivals.ranker.crossencoder.model import (
    read_manifest,
)

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["PRECISIONS", "configure_threads", "onnx_graphs", "session_options"]

#: Weight precisions an ONNX export writes: ``fp32`` and dynamic-quantised ``int8``.
PRECISIONS: Final = ("fp32", "int8")

logger = logging.getLogger(__name__)


def configure_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads (``None`` leaves the library default).

    Call once at start-up (the CLI, the service's lifespan, a benchmark); ONNX Runtime
    sessions get the same number through :func:`session_options`.

    Raises:
        ConfigError: for a count below 1.
    """
    if threads is None:
        return
    require_int("threads", threads)
    import torch

    torch.set_num_threads(threads)
    logger.info("torch intra-op threads: %d", threads)


def session_options(threads: int | None) -> onnxruntime.SessionOptions:
    """ONNX Runtime options for one ranking session: ``threads`` intra-op, one inter-op.

    A request is one batched forward pass, so parallelism inside operators is all there
    is to use; ``None`` lets ONNX Runtime pick (all cores).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        require_int("threads", threads)
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def onnx_graphs(
    directory: Path, kind: str, precision: str | None, parts: Sequence[str]
) -> tuple[dict[str, Any], str, list[Path]]:
    """An ONNX ranker artifact's manifest, the precision chosen and its graph files.

    Args:
        directory: The artifact.
        kind: The manifest ``kind`` it must have.
        precision: ``fp32``/``int8``; ``None`` takes the manifest's default.
        parts: The keys of the precision's entry that name graph files.

    Raises:
        ConfigError: when ``directory`` holds another kind, or not ``precision`` (naming
            the ones it holds).
        IndexIntegrityError: when a graph file the manifest names is missing.
    """
    manifest = read_manifest(directory)
    if manifest.get("kind") != kind:
        raise ConfigError(
            f"{directory} holds a {manifest.get('kind')!r} ranker, not a {kind!r} one; load "
            "it with newarrivals.ranker.load_ranker."
        )
    models: dict[str, Any] = manifest["models"]
    chosen = precision or str(manifest["default_precision"])
    if chosen not in models:
        raise ConfigError(
            f"{directory} holds ONNX precisions {sorted(models)}, not {chosen!r}; pass "
            "one of those (or export it again with that precision)."
        )
    paths = [directory / str(models[chosen][part]) for part in parts]
    for path in paths:
        if not path.is_file():
            raise IndexIntegrityError(
                f"{directory}: the manifest names {path.name!r}, which is missing."
            )
    return manifest, chosen, paths


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"ONNX export and inference need onnx, onnxscript and onnxruntime ({exc}); "
            "install them with `pip install -e '.[export]'`."
        ) from None
