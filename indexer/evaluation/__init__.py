"""Offline evaluation of cold-start recommendation: the split, metrics, methods, report."""

from __future__ import annotations

from newarrivals.indexer.evaluation.baselines import (
    AttributeAffinity,
    AttributeKeys,
    RandomBaseline,
    TypePopularity,
    default_keys_for,
    product_attribute,
)
from newarrivals.indexer.evaluation.methods import (
    ColdItemMethod,
    EvalData,
    LateFusionMethod,
    MaxSimilarityMethod,
    MeanVectorMethod,
    ProductVectors,
    UserTowerFit,
    UserTowerMethod,
    centre_vectors,
    fuse_vectors,
)
from newarrivals.indexer.evaluation.metrics import (
    MetricSpec,
    PerUserMetrics,
    hit_rate_at_k,
    hits_matrix,
    ndcg_at_k,
    rank_items,
    recall_at_k,
    score_rankings,
    standard_error,
)
from newarrivals.indexer.evaluation.protocol import (
    ColdStartSplit,
    SameProductRule,
    parse_cutoff,
    parse_events,
    split_catalog,
)
from newarrivals.indexer.evaluation.report import (
    EvaluationReport,
    Margin,
    MethodResult,
    compute_margins,
)
from newarrivals.indexer.evaluation.run import (
    DatasetProfile,
    EvaluateConfig,
    evaluate,
    resolve_profile,
)

__all__ = [
    "AttributeAffinity",
    "AttributeKeys",
    "ColdItemMethod",
    "ColdStartSplit",
    "DatasetProfile",
    "EvalData",
    "EvaluateConfig",
    "EvaluationReport",
    "LateFusionMethod",
    "Margin",
    "MaxSimilarityMethod",
    "MeanVectorMethod",
    "MethodResult",
    "MetricSpec",
    "PerUserMetrics",
    "ProductVectors",
    "RandomBaseline",
    "SameProductRule",
    "TypePopularity",
    "UserTowerFit",
    "UserTowerMethod",
    "centre_vectors",
    "compute_margins",
    "default_keys_for",
    "evaluate",
    "fuse_vectors",
    "hit_rate_at_k",
    "hits_matrix",
    "ndcg_at_k",
    "parse_cutoff",
    "parse_events",
    "product_attribute",
    "rank_items",
    "recall_at_k",
    "resolve_profile",
    "score_rankings",
    "split_catalog",
    "standard_error",
]
