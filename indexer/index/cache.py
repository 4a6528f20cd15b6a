"""Embedding cache keyed by (encoder id, content hash).

Layout: ``<root>/<sha256(encoder_id)[:16]>/`` holds ``encoder.json`` (the full id and dim)
and shards ``shard-*.npz`` with two arrays, ``keys`` (content digests, fixed-width bytes)
and ``vectors`` (float32). Each shard is written to a temporary name and renamed, so an
interrupted build leaves only whole shards behind, and the next build resumes from them:
that is the resume mechanism, there is no separate checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from newarrivals.indexer.errors import IndexIntegrityError

__all__ = ["EmbeddingCache"]

logger = logging.getLogger(__name__)

_KEY_DTYPE = "S64"  # a hex sha256


class EmbeddingCache:
    """Vectors already computed by one encoder, looked up by content digest.

    Example:
        >>> cache = EmbeddingCache(Path("cache"), "text:minilm", dim=384)  # doctest: +SKIP
        >>> found, vecs = cache.lookup(["ab12..."])  # doctest: +SKIP
    """

    def __init__(self, root: Path, encoder_id: str, dim: int) -> None:
        self.encoder_id = encoder_id
        self.dim = dim
        self.dir = self.folder(root, encoder_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "encoder.json"
        if meta.exists():
            stored = json.loads(meta.read_text())
            if stored.get("encoder_id") != encoder_id or stored.get("dim") != dim:
                raise IndexIntegrityError(
                    f"cache folder {self.dir} belongs to encoder {stored.get('encoder_id')!r} "
                    f"(dim {stored.get('dim')}), not {encoder_id!r} (dim {dim}); delete the folder."
                )
        else:
            meta.write_text(json.dumps({"encoder_id": encoder_id, "dim": dim}))
        self._index: dict[bytes, int] = {}
        self._blocks: list[np.ndarray] = []
        self._rows = 0
        self._load()

    @staticmethod
    def folder(root: Path, encoder_id: str) -> Path:
        return root / hashlib.sha256(encoder_id.encode()).hexdigest()[:16]

    @classmethod
    def known_dim(cls, root: Path, encoder_id: str) -> int | None:
        """The dim recorded for an encoder, so a cache-only refresh need not load the model."""
        meta = cls.folder(root, encoder_id) / "encoder.json"
        return int(json.loads(meta.read_text())["dim"]) if meta.is_file() else None

    def _load(self) -> None:
        for shard in sorted(self.dir.glob("shard-*.npz")):
            with np.load(shard, allow_pickle=False) as data:
                keys, vecs = data["keys"], data["vectors"]
            if vecs.ndim != 2 or vecs.shape[1] != self.dim or len(keys) != len(vecs):
                logger.warning("skipping malformed cache shard %s", shard)
                continue
            self._add(keys, vecs.astype(np.float32, copy=False))

    def _add(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        base = self._rows
        for i, k in enumerate(keys.tolist()):
            self._index[k] = base + i
        self._blocks.append(vecs)
        self._rows += len(vecs)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key.encode() in self._index

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(found mask, vectors)``; rows not found are zero."""
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        found = np.zeros(len(keys), dtype=bool)
        if not self._blocks:
            return found, out
        if len(self._blocks) > 1:
            # Consolidate once so lookups are one fancy-index, not a loop over shards.
            self._blocks = [np.concatenate(self._blocks)]
        table = self._blocks[0]
        rows = np.array([self._index.get(k.encode(), -1) for k in keys], dtype=np.int64)
        found = rows >= 0
        out[found] = table[rows[found]]
        return found, out

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Persist new vectors as one shard (atomically) and make them visible to lookups."""
        if len(keys) == 0:
            return
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.shape != (len(keys), self.dim):
            raise ValueError(
                f"expected vectors of shape ({len(keys)}, {self.dim}), got {vecs.shape}"
            )
        arr = np.array([k.encode() for k in keys], dtype=_KEY_DTYPE)
        name = f"shard-{uuid.uuid4().hex}"
        tmp = self.dir / f".{name}.tmp.npz"
        np.savez(tmp, keys=arr, vectors=vecs)
        tmp.replace(self.dir / f"{name}.npz")
        self._add(arr, vecs)
