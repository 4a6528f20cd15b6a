"""What the user tower reads: product content vectors and users' event histories as
padded batches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
import torch

from newarrivals.indexer.arrays import F32Array
from newarrivals.indexer.catalog.schema import Interaction
from newarrivals.indexer.towers.user_config import EVENT_CODE

__all__ = [
    "ArrayProductVectors",
    "EventSequences",
    "HistoryBatch",
    "ProductVectors",
    "collate_histories",
    "unit_rows",
]


_DAY: Final = 86_400.0


# --------------------------------------------------------------------------------------
# Product vectors
# --------------------------------------------------------------------------------------


class ProductVectors(Protocol):
    """Where the tower looks up content vectors (a ``ProductIndex`` is one)."""

    @property
    def dim(self) -> int: ...

    def __contains__(self, product_id: object) -> bool: ...

    def vectors_for(self, product_ids: Sequence[str]) -> F32Array: ...


class ArrayProductVectors:
    """:class:`ProductVectors` over an id list and a matrix (rows L2-normalised on a copy).

    Example:
        >>> vecs = ArrayProductVectors(["a", "b"], np.eye(2, 3, dtype=np.float32))
        >>> vecs.dim, "a" in vecs, vecs.vectors_for(["b"]).shape
        (3, True, (1, 3))
    """

    def __init__(self, product_ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim != 2:
            raise ValueError(f"product vectors must be a 2-d (n, dim) array, got {matrix.shape}.")
        if matrix.shape[0] != len(product_ids):
            raise ValueError(
                f"got {len(product_ids)} product ids but {matrix.shape[0]} vector rows; "
                "pass one row per id."
            )
        if not np.all(np.isfinite(matrix)):
            raise ValueError("product vectors contain NaN or infinite values.")
        self.row_of: dict[str, int] = {}
        for i, pid in enumerate(product_ids):
            if pid in self.row_of:
                raise ValueError(f"product id {pid!r} appears twice; ids must be unique.")
            self.row_of[pid] = i
        # Zero rows stay zero (they contribute nothing to a mean and score 0).
        self.matrix: F32Array = unit_rows(matrix)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def __contains__(self, product_id: object) -> bool:
        return isinstance(product_id, str) and product_id in self.row_of

    def vectors_for(self, product_ids: Sequence[str]) -> F32Array:
        rows: F32Array = self.matrix[[self.row_of[p] for p in product_ids]]
        return rows


# --------------------------------------------------------------------------------------
# Event sequences
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventSequences:
    """Every user's events on known products, concatenated user after user, time-ordered.

    User ``u`` owns positions ``starts[u]:starts[u + 1]``.
    """

    user_ids: list[str]
    starts: npt.NDArray[np.int64]
    rows: npt.NDArray[np.int64]
    codes: npt.NDArray[np.int64]
    times: npt.NDArray[np.float64]

    @classmethod
    def of(cls, events: Iterable[Interaction], row_of: Mapping[str, int]) -> EventSequences:
        usable = [e for e in events if e.product_id in row_of]
        usable.sort(key=lambda e: (e.user_id, e.timestamp))
        user_ids: list[str] = []
        starts: list[int] = []
        for i, e in enumerate(usable):
            if not user_ids or user_ids[-1] != e.user_id:
                user_ids.append(e.user_id)
                starts.append(i)
        starts.append(len(usable))
        return cls(
            user_ids=user_ids,
            starts=np.asarray(starts, dtype=np.int64),
            rows=np.asarray([row_of[e.product_id] for e in usable], dtype=np.int64),
            codes=np.asarray([EVENT_CODE[e.event] for e in usable], dtype=np.int64),
            times=np.asarray([e.timestamp.timestamp() for e in usable], dtype=np.float64),
        )


@dataclass(frozen=True)
class HistoryBatch:
    """A right-padded batch of histories: row ``b`` holds ``lengths[b]`` events, oldest first."""

    rows: torch.Tensor  # (B, L) int64 product rows (0 where padded)
    codes: torch.Tensor  # (B, L) int64 event codes (0 where padded)
    gap_days: torch.Tensor  # (B, L) float32 days from the event to the prediction time
    lengths: torch.Tensor  # (B,) int64, >= 1


def collate_histories(
    seq: EventSequences,
    begin: npt.NDArray[np.int64],
    end: npt.NDArray[np.int64],
    at: npt.NDArray[np.float64],
    max_history: int,
    device: str,
) -> HistoryBatch:
    """Histories ``positions[max(begin, end - max_history):end]`` predicted as of ``at``."""
    first = np.maximum(begin, end - max_history)
    lengths = end - first
    width = max(1, int(lengths.max(initial=1)))
    offsets = np.arange(width, dtype=np.int64)
    valid = offsets[None, :] < lengths[:, None]
    # Right-padded so that a GRU's output at lengths - 1 never saw a pad.
    pos = np.where(valid, first[:, None] + offsets[None, :], 0)
    gap = np.where(valid, np.maximum(at[:, None] - seq.times[pos], 0.0) / _DAY, 0.0)
    return HistoryBatch(
        rows=torch.as_tensor(np.where(valid, seq.rows[pos], 0), device=device),
        codes=torch.as_tensor(np.where(valid, seq.codes[pos], 0), device=device),
        gap_days=torch.as_tensor(gap.astype(np.float32), device=device),
        lengths=torch.as_tensor(lengths, device=device),
    )


def unit_rows(x: F32Array) -> F32Array:
    """Rows scaled to unit length; zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: F32Array = (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return out
