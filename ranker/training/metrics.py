"""List metrics and calibration: NDCG of training and re-rank lists, NLL, ECE, temperature.

**Calibration.** The temperature ``T`` minimises the NLL of the positive on the validation
lists (a 1-d search over ``log T``: a grid, then golden-section refinement); the training
lists are never used. The reported expected calibration error is the **top-1** ECE on the
*holdout* lists when given (validation users kept out of early stopping and the fit), else
on the validation lists: per list the confidence is the largest probability and the outcome
whether that candidate is the positive; lists go into ``ece_bins`` equal-width confidence
bins and ECE = sum over bins of (share of lists) x |accuracy - mean confidence|.

NDCG of a training list (one relevant item) is ``1 / log2(1 + rank)`` when ``rank <= k``,
else 0; tied scores count as the average over the tied positions (so a constant scorer is
not rewarded or punished by the order of the list). NDCG of a re-rank list uses the
evaluation's definition (binary gains, ideal DCG over all the user's items in the window).

"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from newarrivals.indexer.arrays import F64Array, I64Array
from newarrivals.indexer.evaluation.metrics import ndcg_at_k
from newarrivals.ranker.training.lists import RerankList

__all__ = ["expected_calibration_error", "fit_temperature", "list_nll", "rerank_ndcg"]

logger = logging.getLogger(__name__)


def rerank_ndcg(scores: Sequence[F64Array], lists: Sequence[RerankList], k: int) -> float:
    """Mean NDCG@k of re-rank lists ordered by ``scores`` (one array per list; ties keep the
    list's retrieval order), ideal DCG over each user's items in the window: the
    evaluation's :func:`~newarrivals.indexer.evaluation.metrics.ndcg_at_k` per list."""
    if not lists:
        return math.nan
    total = 0.0
    for s, lst in zip(scores, lists, strict=True):
        order = np.argsort(-np.asarray(s, dtype=np.float64), kind="stable")[:k]
        hits = np.asarray(lst.relevant, dtype=np.bool_)[order][None, :]
        total += float(ndcg_at_k(hits, np.asarray([lst.n_relevant], dtype=np.int64), k)[0])
    return total / len(lists)


def list_nll(scores: F64Array, positives: I64Array, temperature: float = 1.0) -> float:
    """Mean negative log-probability of the positive under the softmax over its list."""
    z = scores / temperature
    m = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
    return float(np.mean(log_norm - z[np.arange(z.shape[0]), positives]))


def expected_calibration_error(probs: F64Array, positives: I64Array, n_bins: int = 10) -> float:
    """Top-1 ECE: bins of the top probability vs whether the top candidate is the positive."""
    if probs.shape[0] == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == positives).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - conf[members].mean())
    return float(ece)


_LOG_T_RANGE = (math.log(1e-3), math.log(1e3))


def fit_temperature(scores: F64Array, positives: I64Array) -> float:
    """The temperature minimising :func:`list_nll` (grid over log T, then golden section).

    A result at the edge of [1e-3, 1e3] means the scores are (nearly) constant or perfectly
    separating; it is logged as a warning.
    """
    if scores.shape[0] == 0:
        return 1.0
    grid = np.linspace(*_LOG_T_RANGE, 121)
    nll = [list_nll(scores, positives, math.exp(g)) for g in grid]
    best = int(np.argmin(nll))
    lo, hi = grid[max(0, best - 1)], grid[min(len(grid) - 1, best + 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(40):
        a = hi - ratio * (hi - lo)
        b = lo + ratio * (hi - lo)
        if list_nll(scores, positives, math.exp(a)) <= list_nll(scores, positives, math.exp(b)):
            hi = b
        else:
            lo = a
    fitted = math.exp((lo + hi) / 2.0)
    # Never return something worse than the best grid point (flat or noisy objective).
    if list_nll(scores, positives, fitted) > nll[best]:
        fitted = math.exp(grid[best])
    if best in (0, len(grid) - 1):
        logger.warning(
            "temperature %.3g is at the edge of its range: the scores barely separate the "
            "lists (untrained or collapsed ranker?)",
            fitted,
        )
    return fitted
