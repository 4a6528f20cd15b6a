"""ONNX export for every torch ranker: checks the precisions, then the model family exports.

:func:`export_onnx` takes a :class:`~newarrivals.ranker.crossencoder.model.CrossEncoderRanker`
(teacher or BERT student) or a
:class:`~newarrivals.ranker.student.model.SharedContextRanker` and writes the artifact that
:func:`~newarrivals.ranker.loading.load_ranker` serves on CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from newarrivals.indexer.errors import ConfigError
from newarrivals.ranker.crossencoder.model import CrossEncoderRanker, TorchPairRanker
from newarrivals.ranker.crossencoder.onnx import export_crossencoder_onnx
from newarrivals.ranker.onnx_sessions import PRECISIONS, require_onnx
from newarrivals.ranker.student.model import SharedContextRanker
from newarrivals.ranker.student.onnx import export_shared_onnx

__all__ = ["export_onnx"]


def export_onnx(
    ranker: TorchPairRanker,
    directory: Path,
    *,
    precisions: Sequence[str] = PRECISIONS,
    default_precision: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``ranker`` as an ONNX Runtime ranker artifact in ``directory``.

    Args:
        ranker: A torch ranker (its temperature and token budgets are carried over).
        directory: Where to write (created; files overwritten).
        precisions: Which of :data:`~newarrivals.ranker.onnx_sessions.PRECISIONS` to write.
        default_precision: What :func:`~newarrivals.ranker.loading.load_ranker` opens when
            not told; ``None`` picks int8 when written, else fp32.
        extra: JSON-ready data recorded in the manifest under ``"training"``.

    Returns:
        The directory.

    Raises:
        ConfigError: for an unknown or missing precision, or a ranker with no ONNX form.
        IndexIntegrityError: when the fp32 graph's scores differ from torch's by more
            than the family's export tolerance.
        MissingExtraError: without onnx/onnxscript/onnxruntime.
    """
    wanted = list(dict.fromkeys(precisions))
    unknown = [p for p in wanted if p not in PRECISIONS]
    if unknown or not wanted:
        raise ConfigError(
            f"precisions must be a non-empty selection of {list(PRECISIONS)}, got "
            f"{list(precisions)!r}."
        )
    default = default_precision or ("int8" if "int8" in wanted else "fp32")
    if default not in wanted:
        raise ConfigError(
            f"default_precision {default!r} is not among the exported precisions {wanted}."
        )
    require_onnx()
    if isinstance(ranker, SharedContextRanker):
        return export_shared_onnx(
            ranker, directory, precisions=wanted, default_precision=default, extra=extra
        )
    if isinstance(ranker, CrossEncoderRanker):
        return export_crossencoder_onnx(
            ranker, directory, precisions=wanted, default_precision=default, extra=extra
        )
    raise ConfigError(
        f"cannot export a {type(ranker).__name__} to ONNX; pass a CrossEncoderRanker or "
        "a SharedContextRanker."
    )
