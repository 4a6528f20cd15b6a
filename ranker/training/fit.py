"""Training recipes: lists built, a ranker trained and calibrated, and (cold-start) a blend.

:func:`fit_ranker` trains on index-replay lists; :func:`fit_cold_start_ranker` on
cold-start windows, then fits the re-rank blend on the validation users.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime

from newarrivals.indexer.catalog.schema import Interaction, Product
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.evaluation.methods import ProductVectors
from newarrivals.indexer.index.store import ProductIndex
from newarrivals.ranker.config import RankerConfig, RankerTrainConfig
from newarrivals.ranker.crossencoder.model import CrossEncoderRanker
from newarrivals.ranker.training.cold_start import (
    ColdStartListConfig,
    ColdStartLists,
    build_cold_start_lists,
)
from newarrivals.ranker.training.lists import build_training_lists, split_by_user, split_three_ways
from newarrivals.ranker.training.rerank_blend import RerankReport, blend_for_ranker
from newarrivals.ranker.training.trainer import RankerTrainingReport, train_ranker

__all__ = ["fit_cold_start_ranker", "fit_ranker"]

logger = logging.getLogger(__name__)


def fit_ranker(
    events: Sequence[Interaction],
    products: Mapping[str, Product],
    store: ProductIndex,
    config: RankerConfig,
    train_config: RankerTrainConfig,
) -> tuple[CrossEncoderRanker, RankerTrainingReport]:
    """Index replay: build lists from ``events``, split by user, fine-tune, calibrate.

    Args:
        events: Interactions before the cutoff (the caller filters them).
        products: The catalogue, by product id.
        store: The retrieval index (hard negatives come from it).
        config: The ranker to build (base model, layers, token budgets).
        train_config: How to train it.

    Returns:
        The trained ranker (temperature set) and the training report.
    """
    lists = build_training_lists(
        events, products, store, train_config, max_context_items=config.max_context_items
    )
    train, val = split_by_user(lists, train_config.val_fraction, train_config.seed)
    ranker = CrossEncoderRanker.from_base(config, device=train_config.device)
    report = train_ranker(ranker, train, val, products, train_config)
    return ranker, report


def fit_cold_start_ranker(
    events: Sequence[Interaction],
    products: Mapping[str, Product],
    vectors: Mapping[str, ProductVectors],
    cutoff: str | datetime,
    config: RankerConfig,
    train_config: RankerTrainConfig,
    lists_config: ColdStartListConfig,
    *,
    blend_k: int = 20,
) -> tuple[CrossEncoderRanker, RankerTrainingReport, RerankReport | None, ColdStartLists]:
    """Cold-start windows end to end: lists, three-way user split, training, blend.

    Users are split into train (``1 - val_fraction``), validation (early stopping, the
    temperature, the blend) and holdout (half of the held-out users: the report only).

    Returns:
        The trained ranker, its training report, the blend report (``None`` when no
        validation re-rank list held one of the user's products), and the lists.
    """
    built = build_cold_start_lists(
        events,
        products,
        vectors,
        cutoff,
        train_config,
        lists_config,
        max_context_items=config.max_context_items,
    )
    train, val, holdout = split_three_ways(built.lists, train_config)
    ranker = CrossEncoderRanker.from_base(config, device=train_config.device)
    report = train_ranker(ranker, train, val, products, train_config, holdout_lists=holdout)
    try:
        blend = blend_for_ranker(ranker, built, products, train_config, k=blend_k)
    except ConfigError as exc:
        logger.warning("no blend: %s", exc)
        blend = None
    return ranker, report, blend, built
