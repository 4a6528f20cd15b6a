"""Ranking metrics over sets of relevant items, with ties broken at random.

Definitions (per user, ``T`` the set of relevant items, ``hit_r`` = 1 when the item at
rank ``r`` (1-based) is in ``T``):

* ``Recall@K = sum_{r<=K} hit_r / |T|``;
* ``NDCG@K = DCG@K / IDCG@K`` with binary gains, ``DCG@K = sum_{r<=K} hit_r / log2(r + 1)``
  and the ideal ``IDCG@K = sum_{r<=min(|T|, K)} 1 / log2(r + 1)``;
* ``HitRate@K = 1`` when any of the top K is relevant, else 0.

Equal scores are ordered at random (a seeded random key is the secondary sort key), so a
method that scores everything alike is the random baseline, and no method gains from the
order items happen to be listed in. Results are averaged over several seeds per user
first, then the mean and its standard error are taken over users, as the H&M README does.

Example:
    >>> import numpy as np
    >>> hits = hits_matrix(np.array([[2, 0, 1]]), [frozenset({0, 1})])
    >>> float(recall_at_k(hits, np.array([2]), 2)[0])
    0.5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from newarrivals.indexer.arrays import BoolArray, F64Array, I64Array
from newarrivals.indexer.errors import ConfigError

__all__ = [
    "MetricSpec",
    "PerUserMetrics",
    "hit_rate_at_k",
    "hits_matrix",
    "ndcg_at_k",
    "ndcg_discounts",
    "one_relevant_ndcg_at_k",
    "rank_items",
    "recall_at_k",
    "score_rankings",
    "standard_error",
]


@dataclass(frozen=True)
class MetricSpec:
    """Which cut-offs to report: Recall and NDCG at ``ks``, HitRate at ``hit_rate_ks``.

    Example:
        >>> MetricSpec().names()
        ['recall@10', 'recall@20', 'recall@50', 'ndcg@10', 'ndcg@20', 'ndcg@50', 'hitrate@20']
    """

    ks: tuple[int, ...] = (10, 20, 50)
    hit_rate_ks: tuple[int, ...] = (20,)

    def __post_init__(self) -> None:
        for name in ("ks", "hit_rate_ks"):
            values = tuple(getattr(self, name))
            if not values or any(not isinstance(k, int) or k < 1 for k in values):
                raise ConfigError(f"{name} must be positive integers, got {values!r}.")
            object.__setattr__(self, name, tuple(sorted(set(values))))

    @property
    def max_k(self) -> int:
        return max(*self.ks, *self.hit_rate_ks)

    def names(self) -> list[str]:
        return (
            [f"recall@{k}" for k in self.ks]
            + [f"ndcg@{k}" for k in self.ks]
            + [f"hitrate@{k}" for k in self.hit_rate_ks]
        )


@dataclass(frozen=True, eq=False)
class PerUserMetrics:
    """Each metric as a per-user array (users in the order the truth was given)."""

    values: Mapping[str, F64Array]

    def mean(self, mask: BoolArray | None = None) -> dict[str, float]:
        return {k: float(np.mean(_pick(v, mask))) for k, v in self.values.items()}

    def stderr(self, mask: BoolArray | None = None) -> dict[str, float]:
        return {k: standard_error(_pick(v, mask)) for k, v in self.values.items()}


def _pick(values: F64Array, mask: BoolArray | None) -> F64Array:
    return values if mask is None else values[mask]


def standard_error(values: F64Array) -> float:
    """The standard error of the mean (sample standard deviation / sqrt(n)); 0 for n < 2."""
    n = len(values)
    return float(np.std(values, ddof=1) / np.sqrt(n)) if n > 1 else 0.0


def rank_items(scores: F64Array, rng: np.random.Generator, k: int) -> I64Array:
    """The top ``k`` item positions per row, best first, ties broken at random.

    Args:
        scores: ``(n_users, n_items)``; higher is better. ``NaN`` and ``-inf`` mean "cannot
            score" and rank below every finite score (in random order among themselves).
        rng: the source of the random tie-break key.
        k: how many positions to return (capped at ``n_items``).

    Returns:
        ``(n_users, min(k, n_items))`` int64 item positions.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ConfigError(f"scores must be a (users, items) matrix, got shape {scores.shape}.")
    clean = np.where(np.isnan(scores), -np.inf, scores)
    key = rng.random(clean.shape)
    # lexsort sorts by its last key first: score (descending), then the random key.
    order = np.lexsort((key, -clean), axis=1)
    top: I64Array = order[:, : min(k, clean.shape[1])].astype(np.int64)
    return top


def hits_matrix(ranking: I64Array, truth: Sequence[frozenset[int]]) -> BoolArray:
    """``hits[u, r]`` is True when the item at rank ``r`` (0-based) is relevant to user ``u``."""
    if len(ranking) != len(truth):
        raise ConfigError(
            f"ranking has {len(ranking)} rows but truth has {len(truth)} users; they must match."
        )
    hits = np.zeros(ranking.shape, dtype=bool)
    for u, relevant in enumerate(truth):
        if relevant:
            hits[u] = np.isin(ranking[u], np.fromiter(relevant, dtype=np.int64))
    return hits


def recall_at_k(hits: BoolArray, n_relevant: I64Array, k: int) -> F64Array:
    """Per-user share of the relevant items found in the top ``k``."""
    found = hits[:, :k].sum(axis=1).astype(np.float64)
    out: F64Array = found / np.maximum(n_relevant, 1)
    return out


def ndcg_discounts(k: int) -> F64Array:
    """``1 / log2(r + 1)`` for ranks ``r = 1..k``: the gain of a hit at each rank."""
    out: F64Array = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    return out


def ndcg_at_k(hits: BoolArray, n_relevant: I64Array, k: int) -> F64Array:
    """Per-user NDCG@k with binary gains; the ideal ranking puts min(|T|, k) hits first."""
    discounts = ndcg_discounts(k)
    dcg = (hits[:, :k] * discounts[: hits[:, :k].shape[1]]).sum(axis=1)
    ideal_cumulative = np.concatenate([[0.0], np.cumsum(discounts)])
    idcg = ideal_cumulative[np.minimum(n_relevant, k)]
    out: F64Array = np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)
    return out


def one_relevant_ndcg_at_k(scores: F64Array, positives: I64Array, k: int) -> float:
    """Mean NDCG@k over score lists with one relevant item each, ties averaged.

    Row ``i`` of ``scores`` scores one list whose relevant item is at ``positives[i]``. With
    one relevant item the ideal DCG is 1, so a list's NDCG is the discount of the item's
    rank; when ``t`` items tie with it, the average discount over the ``t`` tied ranks (so
    a constant scorer is neither rewarded nor punished by the order of the list). The
    ranker's training and distillation lists use it; :func:`ndcg_at_k` breaks ties at
    random instead.
    """
    if scores.shape[0] == 0:
        return 0.0
    discounts = ndcg_discounts(k).tolist()
    pos = scores[np.arange(scores.shape[0]), positives][:, None]
    above = (scores > pos).sum(axis=1)
    tied = (scores == pos).sum(axis=1)  # includes the relevant item itself
    total = 0.0
    for a, t in zip(above.tolist(), tied.tolist(), strict=True):
        total += sum(discounts[a : min(a + t, k)]) / t
    return total / int(scores.shape[0])


def hit_rate_at_k(hits: BoolArray, k: int) -> F64Array:
    """Per-user 1.0 when any of the top ``k`` is relevant, else 0.0."""
    out: F64Array = np.asarray(hits[:, :k].any(axis=1), dtype=np.float64)
    return out


def score_rankings(
    scores: F64Array,
    truth: Sequence[frozenset[int]],
    *,
    spec: MetricSpec,
    seeds: Sequence[int],
) -> PerUserMetrics:
    """Rank every row of ``scores`` once per seed and average each user's metrics over seeds.

    Args:
        scores: ``(n_users, n_items)`` scores, rows in ``truth`` order.
        truth: per user, the positions of the relevant items.
        spec: which metrics to compute.
        seeds: tie-break seeds; the same seeds for every method give common random numbers,
            so differences between methods are not blurred by tie-break noise alone.

    Returns:
        Per-user metric arrays (each the mean over seeds).
    """
    if not seeds:
        raise ConfigError("at least one seed is needed to break ties.")
    n_relevant = np.array([len(t) for t in truth], dtype=np.int64)
    totals = {name: np.zeros(len(truth)) for name in spec.names()}
    for seed in seeds:
        ranking = rank_items(scores, np.random.default_rng(seed), spec.max_k)
        hits = hits_matrix(ranking, truth)
        for k in spec.ks:
            totals[f"recall@{k}"] += recall_at_k(hits, n_relevant, k)
            totals[f"ndcg@{k}"] += ndcg_at_k(hits, n_relevant, k)
        for k in spec.hit_rate_ks:
            totals[f"hitrate@{k}"] += hit_rate_at_k(hits, k)
    return PerUserMetrics({name: total / len(seeds) for name, total in totals.items()})
