"""Ranking stage: a cross-encoder that re-scores retrieved candidates for one user.

This package's top level holds what a request needs and nothing heavier: the ranker
interface, its config and context types, and :func:`load_ranker`. The model families live
in :mod:`.crossencoder` and :mod:`.student`, the request-time blend and MMR in
:mod:`.serving`, and everything that trains (lists, losses, the training loop, blend
fitting, distillation, the ``train-ranker`` / ``distill-ranker`` pipelines) in
:mod:`.training`, which serving never imports.
"""

from __future__ import annotations

from newarrivals.ranker.base import (
    CandidateTokenCache,
    PairRanker,
    Ranker,
    RankingInputError,
    ScoredCandidate,
    softmax,
)
from newarrivals.ranker.config import RankerConfig
from newarrivals.ranker.context import (
    PairBatch,
    UserContext,
    candidate_text,
    context_item_text,
    context_text,
)
from newarrivals.ranker.loading import load_ranker

__all__ = [
    "CandidateTokenCache",
    "PairBatch",
    "PairRanker",
    "Ranker",
    "RankerConfig",
    "RankingInputError",
    "ScoredCandidate",
    "UserContext",
    "candidate_text",
    "context_item_text",
    "context_text",
    "load_ranker",
    "softmax",
]
