"""What the ONNX text and image exports share: where a copy lives in the cache, its metadata,
ONNX Runtime sessions, and keeping a copy only once it reproduces the torch vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from newarrivals.indexer.encoders.base import file_digest
from newarrivals.indexer.errors import MissingExtraError

__all__ = [
    "IMAGE_TOLERANCE",
    "META_FILE",
    "MODEL_FILE",
    "TEXT_TOLERANCE",
    "TOKENIZER_FILE",
    "OnnxExport",
    "export_folder",
    "keep_if_verified",
    "open_session",
    "publish_export",
    "quiet_tracing",
    "read_meta",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
META_FILE = "export.json"
TOKENIZER_FILE = "tokenizer.json"
#: Largest |torch - onnx| difference accepted on the probe, per vector component of unit
#: vectors: float32 reorderings give ~1e-7; a wrong graph or preprocessing gives ~1e-1.
TEXT_TOLERANCE = 1e-4
IMAGE_TOLERANCE = 1e-3


def export_folder(cache_root: Path, encoder_id: str) -> Path:
    """Where the ONNX copy of an encoder lives inside an embedding cache."""
    return cache_root / "onnx" / hashlib.sha256(encoder_id.encode()).hexdigest()[:16]


def open_session(model_path: Path, threads: int | None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise MissingExtraError(
            "the ONNX encoders need onnxruntime: `pip install onnxruntime`."
        ) from exc
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def read_meta(folder: Path, encoder_id: str, kind: str) -> dict[str, Any] | None:
    """The export's metadata when it is a verified copy of ``encoder_id``, else ``None``."""
    meta_path = folder / META_FILE
    if not meta_path.is_file() or not (folder / MODEL_FILE).is_file():
        return None
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    if meta.get("encoder_id") != encoder_id or meta.get("kind") != kind:
        logger.warning(
            "ignoring ONNX export in %s: it belongs to %r", folder, meta.get("encoder_id")
        )
        return None
    if not meta.get("verified"):
        return None
    if file_digest(folder / MODEL_FILE) != meta.get("model_sha256"):
        logger.warning("ignoring ONNX export in %s: %s changed after export", folder, MODEL_FILE)
        return None
    return meta


@contextmanager
def quiet_tracing() -> Iterator[None]:
    """Silence the tracer's warnings about Python-side branches: the probe check catches a
    trace that does not generalise, and the warnings would bury the build's own output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Tt]race.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index")
        yield


def keep_if_verified(
    tmp: Path, folder: Path, meta: dict[str, Any], diff: float, tolerance: float
) -> Path | None:
    """Record the probe check; publish the export when it passed, discard it otherwise."""
    meta |= {"verified": diff <= tolerance, "probe_max_abs_diff": diff}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    if not meta["verified"]:
        logger.warning(
            "ONNX copy of %s differs from torch by %.2g > %.0g: not used",
            meta["encoder_id"],
            diff,
            tolerance,
        )
        shutil.rmtree(tmp)
        return None
    publish_export(tmp, folder)
    logger.info("ONNX copy of %s in %s (probe diff %.1g)", meta["encoder_id"], folder, diff)
    return folder


def publish_export(tmp: Path, folder: Path) -> None:
    """Move a finished export into place; a crash mid-export leaves only a temp folder."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(folder)


class OnnxExport:
    """What every ONNX copy of an encoder shares: its export folder, metadata and session."""

    runtime = "onnx"

    def __init__(self, folder: Path, meta: dict[str, Any], *, threads: int | None = None) -> None:
        self.folder = folder
        self.meta = meta
        self.threads = threads

    @property
    def encoder_id(self) -> str:
        return str(self.meta["encoder_id"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @cached_property
    def session(self) -> Any:
        """The ONNX Runtime session, opened on first use."""
        return open_session(self.folder / MODEL_FILE, self.threads)
