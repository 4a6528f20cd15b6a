"""What every encoder shares: the interface the build pipeline relies on, and hashing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["Encoder", "directory_digest", "file_digest", "l2_normalize", "text_digest"]


class Encoder(Protocol):
    """Maps inputs to L2-normalised float32 vectors of a fixed dimension.

    ``encoder_id`` names the model *and* its weights, so it is a safe cache key: two
    encoders with the same id give the same vector for the same input.
    """

    @property
    def encoder_id(self) -> str: ...

    @property
    def dim(self) -> int: ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    out: np.ndarray = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return out


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(path: Path, *, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (the image cache key: a renamed photo is not re-encoded)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def directory_digest(path: Path) -> str:
    """A digest of every file under a model directory (names and bytes), for encoder ids."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(file_digest(f).encode())
    return h.hexdigest()
