"""Ranking stage: a cross-encoder that re-scores retrieved candidates for one user."""

from __future__ import annotations

from newarrivals.ranker.base import CandidateTokenCache, PairRanker, Ranker
from newarrivals.ranker.config import RankerConfig, RankerTrainConfig
from newarrivals.ranker.context import (
    PairBatch,
    UserContext,
    candidate_text,
    context_item_text,
    context_text,
)
from newarrivals.ranker.distill import (
    DistillConfig,
    DistillReport,
    StudentConfig,
    build_student,
    distill_ranker,
    fit_student,
    rank_agreement,
)
from newarrivals.ranker.loading import OnnxRanker, configure_threads, export_onnx, load_ranker
from newarrivals.ranker.mmr import intra_list_diversity, mmr_order, mmr_rerank
from newarrivals.ranker.model import (
    CrossEncoderRanker,
    RankingInputError,
    ScoredCandidate,
    TorchPairRanker,
    softmax,
)
from newarrivals.ranker.shared import (
    OnnxSharedContextRanker,
    SharedContextConfig,
    SharedContextRanker,
)
from newarrivals.ranker.trainer import (
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
    "CandidateTokenCache",
    "CrossEncoderRanker",
    "DistillConfig",
    "DistillReport",
    "EpochRecord",
    "OnnxRanker",
    "OnnxSharedContextRanker",
    "PairBatch",
    "PairRanker",
    "Ranker",
    "RankerConfig",
    "RankerTrainConfig",
    "RankerTrainingReport",
    "RankingInputError",
    "ScoredCandidate",
    "SharedContextConfig",
    "SharedContextRanker",
    "StudentConfig",
    "TorchPairRanker",
    "TrainingList",
    "UserContext",
    "build_student",
    "build_training_lists",
    "candidate_text",
    "configure_threads",
    "context_item_text",
    "context_text",
    "distill_ranker",
    "expected_calibration_error",
    "export_onnx",
    "fit_ranker",
    "fit_student",
    "fit_temperature",
    "intra_list_diversity",
    "list_nll",
    "list_scores",
    "load_ranker",
    "mmr_order",
    "mmr_rerank",
    "ndcg_at_k",
    "rank_agreement",
    "softmax",
    "split_by_user",
    "train_ranker",
]
