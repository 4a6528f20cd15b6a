"""The lists a trained ranker was trained on, rebuilt from the recipe in its manifest.

Distillation trains on the teacher's own lists and user split, so the users the teacher
was validated (and, cold-start, reported) on stay unseen by the student.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from newarrivals.indexer.catalog.schema import Interaction, Product
from newarrivals.indexer.evaluation import ProductVectors
from newarrivals.indexer.index.store import ProductIndex
from newarrivals.ranker.config import RankerTrainConfig
from newarrivals.ranker.training.cold_start import ColdStartListConfig, build_cold_start_lists
from newarrivals.ranker.training.lists import TrainingList, build_training_lists, split_by_user

__all__ = ["cold_start_lists", "replay_lists"]


def replay_lists(
    events: Sequence[Interaction],
    products: Mapping[str, Product],
    store: ProductIndex,
    train_config: RankerTrainConfig,
    *,
    max_context_items: int = 10,
) -> tuple[list[TrainingList], list[TrainingList]]:
    """Train and validation lists as ``train-ranker --lists replay`` builds and splits them.

    Pass the teacher's recorded ``train_config`` so its validation users stay held out.
    """
    lists = build_training_lists(
        events, products, store, train_config, max_context_items=max_context_items
    )
    return split_by_user(lists, train_config.val_fraction, train_config.seed)


def cold_start_lists(
    events: Sequence[Interaction],
    products: Mapping[str, Product],
    vectors: Mapping[str, ProductVectors],
    cutoff: str | datetime,
    train_config: RankerTrainConfig,
    lists_config: ColdStartListConfig,
    *,
    max_context_items: int = 10,
) -> tuple[list[TrainingList], list[TrainingList], list[TrainingList]]:
    """Train, validation and holdout lists as ``train-ranker`` (cold-start windows) builds them.

    The users are split as :func:`~newarrivals.ranker.trainer.fit_cold_start_ranker`
    splits them (train; the held-out users halved into validation and holdout); distil on
    train and validation only, so the holdout users stay unseen by teacher and student.
    """
    built = build_cold_start_lists(
        events,
        products,
        vectors,
        cutoff,
        train_config,
        lists_config,
        max_context_items=max_context_items,
    )
    train, held = split_by_user(built.lists, train_config.val_fraction, train_config.seed)
    val, holdout = split_by_user(held, 0.5, train_config.seed + 1)
    return train, val, holdout
