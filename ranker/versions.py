"""Library versions a ranker artifact records in its manifest, so a reader knows what wrote it.

One place for both lists (torch-side and ONNX-side); the torch savers and the ONNX exporters
of both model families import it.
"""

from __future__ import annotations

from importlib import metadata

from newarrivals.indexer.index.version import library_versions

__all__ = ["onnx_library_versions", "ranker_library_versions"]


def _installed(found: dict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """``found`` plus the installed version of each of ``names`` (absent ones skipped)."""
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def ranker_library_versions() -> dict[str, str]:
    """The index's library versions plus transformers, tokenizers and safetensors."""
    return _installed(library_versions(), ("transformers", "tokenizers", "safetensors"))


def onnx_library_versions() -> dict[str, str]:
    """:func:`ranker_library_versions` plus onnx, onnxscript and onnxruntime."""
    return _installed(ranker_library_versions(), ("onnx", "onnxscript", "onnxruntime"))
