"""Diversity re-ranking: maximal marginal relevance (MMR) over product vectors.

Greedy MMR picks, at each step, the candidate maximising

    lambda * rel(i) - (1 - lambda) * max_{j already picked} cos(v_i, v_j)

where ``rel`` is the ranker's raw score min-max scaled to [0, 1] over the list (so it is on
the same scale as a cosine), and ``v`` are the retrieval index's product vectors.
``lambda = 1`` keeps the relevance order; lower values trade relevance for diversity.

Intra-list diversity (ILD) of a list is the mean pairwise ``1 - cos`` of its vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.errors import ConfigError, UnknownProductError
from newarrivals.indexer.index.store import ProductIndex
from newarrivals.indexer.validation import require_fraction, require_int
from newarrivals.ranker.base import ScoredCandidate

__all__ = ["intra_list_diversity", "mmr_order", "mmr_rerank"]


def _unit(vectors: npt.ArrayLike) -> npt.NDArray[np.float64]:
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2:
        raise ConfigError(f"vectors must be a 2-d (n, dim) array, got shape {v.shape}.")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    out: npt.NDArray[np.float64] = v / np.where(norms > 0, norms, 1.0)
    return out


def mmr_order(
    relevance: npt.ArrayLike, vectors: npt.ArrayLike, lambda_: float, k: int | None = None
) -> list[int]:
    """Indices of the MMR selection, in pick order.

    Args:
        relevance: ``(n,)`` relevance scores (any scale; min-max scaled here).
        vectors: ``(n, dim)`` item vectors (cosine similarity is used).
        lambda_: Relevance weight in [0, 1]; 1 is the pure relevance order.
        k: How many to pick; ``None`` orders all ``n``.

    Example:
        >>> mmr_order([0.9, 0.8, 0.1], [[1, 0], [1, 0], [0, 1]], lambda_=0.5)
        [0, 2, 1]
    """
    require_fraction("lambda_", lambda_)
    rel = np.asarray(relevance, dtype=np.float64)
    v = _unit(vectors)
    n = rel.shape[0]
    if v.shape[0] != n:
        raise ConfigError(f"relevance has {n} items but vectors has {v.shape[0]} rows.")
    if k is not None:
        require_int("k", k)
    want = n if k is None else min(k, n)
    span = float(rel.max() - rel.min()) if n else 0.0
    scaled = (rel - rel.min()) / span if span > 0 else np.zeros(n)
    chosen: list[int] = []
    max_sim = np.full(n, -np.inf)
    remaining = np.ones(n, dtype=bool)
    for _ in range(want):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        value = lambda_ * scaled - (1.0 - lambda_) * penalty
        value[~remaining] = -np.inf
        # argmax takes the first maximum, so ties keep the relevance order given.
        pick = int(np.argmax(value))
        chosen.append(pick)
        remaining[pick] = False
        max_sim = np.maximum(max_sim, v @ v[pick])
    return chosen


def intra_list_diversity(vectors: npt.ArrayLike) -> float:
    """Mean pairwise ``1 - cosine`` of a list's vectors (0 for fewer than two items)."""
    v = _unit(vectors)
    n = v.shape[0]
    if n < 2:
        return 0.0
    sims = v @ v.T
    off_diagonal = sims[~np.eye(n, dtype=bool)]
    return float(np.mean(1.0 - off_diagonal))


def mmr_rerank(
    ranked: Sequence[ScoredCandidate],
    store: ProductIndex,
    lambda_: float,
    k: int | None = None,
) -> list[ScoredCandidate]:
    """Re-order ranker output with MMR over the index's product vectors.

    Args:
        ranked: The ranker's output (probabilities are kept as they are).
        store: The retrieval index holding the products' vectors.
        lambda_: Relevance weight in [0, 1].
        k: Keep this many; ``None`` keeps all.

    Raises:
        UnknownProductError: naming a candidate that is not in the index.
    """
    if not ranked:
        return []
    for c in ranked:
        if c.product_id not in store:
            raise UnknownProductError(
                f"product {c.product_id!r} is not in the index, so it has no vector for MMR."
            )
    vectors = store.vectors_for([c.product_id for c in ranked])
    order = mmr_order([c.raw_score for c in ranked], vectors, lambda_, k)
    return [ranked[i] for i in order]
