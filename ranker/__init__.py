"""Ranking stage: a cross-encoder that re-scores retrieved candidates for one user."""

from __future__ import annotations

from .config import RankerConfig, RankerTrainConfig
from .context import PairBatch, UserContext, candidate_text, context_item_text, context_text
from .mmr import intra_list_diversity, mmr_order, mmr_rerank
from .model import CrossEncoderRanker, RankingInputError, ScoredCandidate, softmax
from .trainer import (
    EpochRecord,
    RankerTrainingReport,
    TrainingList,
    build_training_lists,
    expected_calibration_error,
    fit_ranker,
    fit_temperature,
    list_nll,
    list_scores,
    ndcg_at_k,
    split_by_user,
    train_ranker,
)

__all__ = [
    "CrossEncoderRanker",
    "EpochRecord",
    "PairBatch",
    "RankerConfig",
    "RankerTrainConfig",
    "RankerTrainingReport",
    "RankingInputError",
    "ScoredCandidate",
    "TrainingList",
    "UserContext",
    "build_training_lists",
    "candidate_text",
    "context_item_text",
    "context_text",
    "expected_calibration_error",
    "fit_ranker",
    "fit_temperature",
    "intra_list_diversity",
    "list_nll",
    "list_scores",
    "mmr_order",
    "mmr_rerank",
    "ndcg_at_k",
    "softmax",
    "split_by_user",
    "train_ranker",
]
