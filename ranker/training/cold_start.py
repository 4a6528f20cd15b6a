"""Cold-start training lists: the evaluation's protocol replayed on pseudo-cutoffs before it.

**Lists, two ways.**
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import numpy as np

from newarrivals.indexer.arrays import F64Array
from newarrivals.indexer.catalog.schema import Catalog, Interaction, Product
from newarrivals.indexer.errors import CatalogError, ConfigError
from newarrivals.indexer.evaluation.methods import EvalData, ProductVectors
from newarrivals.indexer.evaluation.protocol import parse_cutoff, split_catalog
from newarrivals.indexer.validation import require_int, require_positive
from newarrivals.ranker.config import RankerTrainConfig
from newarrivals.ranker.serving.features import candidate_features
from newarrivals.ranker.training.features import (
    RETRIEVAL_METHODS,
    feature_columns,
    recent_products,
    top_candidates,
)
from newarrivals.ranker.training.lists import RerankList, TrainingList

__all__ = [
    "BLEND_FEATURES",
    "BLEND_FEATURES_AFTER_MEAN",
    "POSITIVE_POOLS",
    "ColdStartListConfig",
    "ColdStartLists",
    "blend_features",
    "build_cold_start_lists",
]

logger = logging.getLogger(__name__)


#: Blend features in column order; the photo ones only where photo vectors exist. The
#: text max-similarity is left out: the retrieval score already averages it with the
#: photo's. The mean-vector similarities ask something the max-similarity retrieval does
#: not ("like what they buy overall"); on H&M's pre-cutoff windows they lift the blend.
BLEND_FEATURES = ("ranker", "retrieval", "image", "image-mean", "text-mean")


#: After a mean-vector first stage (the serving index's ``fused-concat/mean``) the
#: max-similarities are what the retrieval score lacks, the text one included.
BLEND_FEATURES_AFTER_MEAN = ("ranker", "retrieval", "image", "text", "image-mean", "text-mean")


def blend_features(retrieval: str) -> tuple[str, ...]:
    """The blend's features after the first stage ``retrieval`` (before dropping those the
    vectors cannot give)."""
    return BLEND_FEATURES_AFTER_MEAN if retrieval.endswith("/mean") else BLEND_FEATURES


#: Which bought products make training lists (see :class:`ColdStartListConfig`).
POSITIVE_POOLS: Final = ("any", "retrieved")


@dataclass(frozen=True)
class ColdStartListConfig:
    """The pseudo cold-start windows lists are built from (see the module docstring).

    Args:
        windows: How many windows, stepping back from the cutoff.
        window_days: Length of each window (the H&M test period is 92 days).
        retrieval: The first stage whose top candidates give the hard negatives, one of
            :data:`~newarrivals.ranker.training.features.RETRIEVAL_METHODS` (use the one the
            two-stage evaluation
            starts from).
        max_users: Build lists for at most this many (seeded random) users per window;
            ``None`` for all (a budget knob for slow CPUs).
        positives: ``any``: every product a user bought in the window makes a list;
            ``retrieved``: only those the retrieval's top ``retrieval_candidates`` holds,
            the only ones a re-ranker can move. With ``any``, most positives lie outside
            that top while the hard negatives come from it, so a list can be solved by
            "the one least like the history", the opposite of what re-ranking the top
            needs.

    Example:
        >>> ColdStartListConfig(windows=2, window_days=30).window_days
        30.0
    """

    windows: int = 4
    window_days: float = 91.0
    retrieval: str = "fused-late/max"
    max_users: int | None = None
    positives: str = "any"

    def __post_init__(self) -> None:
        require_int("windows", self.windows)
        if self.positives not in POSITIVE_POOLS:
            raise ConfigError(
                f"positives must be one of {', '.join(POSITIVE_POOLS)}, got {self.positives!r}."
            )
        require_positive("window_days", self.window_days)
        object.__setattr__(self, "window_days", float(self.window_days))
        if self.retrieval not in RETRIEVAL_METHODS:
            raise ConfigError(
                f"retrieval must be one of {', '.join(RETRIEVAL_METHODS)}, got {self.retrieval!r}."
            )
        if self.max_users is not None:
            require_int("max_users", self.max_users)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class ColdStartLists:
    """Everything :func:`build_cold_start_lists` built.

    Attributes:
        lists: Training-format lists (positive, hard and random negatives).
        rerank: One re-rank list per (window, user).
        features: The side features the lists carry, in blend column order.
        windows: Per window: its start, pool size, users and lists (for the report).
        retrieval: The first stage that ordered the re-rank lists and gave their
            ``retrieval`` feature (one of
            :data:`~newarrivals.ranker.training.features.RETRIEVAL_METHODS`).
    """

    lists: list[TrainingList]
    rerank: list[RerankList]
    features: tuple[str, ...]
    windows: list[dict[str, Any]]
    retrieval: str = ""


def feature_rows(
    columns: Mapping[str, F64Array], u: int, items: Sequence[int]
) -> dict[str, tuple[float, ...]]:
    idx = np.asarray(items, dtype=np.int64)
    matrix = candidate_features({k: v[u, idx] for k, v in columns.items()}, list(columns))
    return {name: tuple(matrix[:, j].tolist()) for j, name in enumerate(columns)}


def build_cold_start_lists(
    events: Sequence[Interaction],
    products: Mapping[str, Product],
    vectors: Mapping[str, ProductVectors],
    cutoff: str | datetime,
    config: RankerTrainConfig,
    lists_config: ColdStartListConfig,
    *,
    max_context_items: int = 10,
) -> ColdStartLists:
    """Training and re-rank lists from pseudo cold-start windows before ``cutoff``.

    Args:
        events: Interactions; any at or after ``cutoff`` are ignored.
        products: The catalogue, by product id.
        vectors: Product vectors by variant (``text``, ``image``), as the evaluation
            encodes them; products first seen in a window need a vector to be retrieved.
        cutoff: The real cutoff (the end of the latest window).
        config: List sizes, positive events, seed, per-user cap.
        lists_config: Windows and the retrieval method.
        max_context_items: Products in a context (newest first, those with text).

    Raises:
        CatalogError: when no window yields a list.
    """
    moment = parse_cutoff(cutoff)
    rng = np.random.default_rng(config.seed)
    past = [e for e in events if e.timestamp < moment]
    lists: list[TrainingList] = []
    rerank: list[RerankList] = []
    report: list[dict[str, Any]] = []
    columns_of: tuple[str, ...] = ()
    span = timedelta(days=lists_config.window_days)
    for k in range(1, lists_config.windows + 1):
        start, end = moment - k * span, moment - (k - 1) * span
        window_events = [e for e in past if e.timestamp < end]
        # A product's launch date may come from the future (H&M: its first sale); only
        # products known by the window's end may be candidates.
        known = [p for p in products.values() if p.launched_at is None or p.launched_at < end]
        split = split_catalog(
            Catalog(products=known, interactions=window_events),
            start,
            test_events=config.positive_events,
        )
        if not split.test_users or len(split.cold_ids) < config.list_size:
            report.append({"start": start.isoformat(), "users": 0, "lists": 0})
            continue
        data = EvalData(split=split, products=products, vectors=vectors)
        columns = feature_columns(data, lists_config.retrieval, vectors)
        retrieval = columns["retrieval"]
        columns_of = tuple(columns)
        position = {pid: i for i, pid in enumerate(split.cold_ids)}
        users = list(range(len(split.test_users)))
        if lists_config.max_users is not None and lists_config.max_users < len(users):
            users = sorted(rng.choice(len(users), lists_config.max_users, replace=False).tolist())
        n_lists = n_users = 0
        for u in users:
            user = split.test_users[u]
            context = tuple(
                p.product_id
                for p in recent_products(split.history[user], products, max_context_items)
            )
            if not context:
                continue
            truth = {position[p] for p in split.truth[user]}
            top = top_candidates(retrieval[u], config.retrieval_candidates).tolist()
            n_users += 1
            rerank.append(
                RerankList(
                    user_id=user,
                    context_ids=context,
                    candidate_ids=tuple(split.cold_ids[i] for i in top),
                    relevant=tuple(i in truth for i in top),
                    n_relevant=len(truth),
                    features=feature_rows(columns, u, top),
                )
            )
            hard_pool = [i for i in top if i not in truth]
            positives = sorted(
                truth.intersection(top) if lists_config.positives == "retrieved" else truth
            )
            if len(positives) > config.max_lists_per_user:
                positives = sorted(
                    rng.choice(positives, config.max_lists_per_user, replace=False).tolist()
                )
            for positive in positives:
                n_hard = min(config.hard_negatives, len(hard_pool))
                negatives = [hard_pool[int(i)] for i in rng.permutation(len(hard_pool))[:n_hard]]
                banned = {*truth, *negatives}
                want = config.list_size - 1 - len(negatives)
                while want > 0:
                    draw = int(rng.integers(len(split.cold_ids)))
                    if draw not in banned:
                        negatives.append(draw)
                        banned.add(draw)
                        want -= 1
                at = int(rng.integers(config.list_size))
                order = [negatives[int(i)] for i in rng.permutation(len(negatives))]
                order.insert(at, positive)
                lists.append(
                    TrainingList(
                        user_id=user,
                        context_ids=context,
                        candidate_ids=tuple(split.cold_ids[i] for i in order),
                        positive=at,
                        features=feature_rows(columns, u, order),
                    )
                )
                n_lists += 1
        report.append(
            {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "pool": len(split.cold_ids),
                "users": n_users,
                "lists": n_lists,
                "truth_in_top": int(sum(sum(r.relevant) for r in rerank[-n_users:]))
                if n_users
                else 0,
                "truth_pairs": split.n_truth_pairs,
            }
        )
        logger.info(
            "window from %s: %d pseudo-cold products, %d users, %d lists",
            start.date(),
            len(split.cold_ids),
            n_users,
            n_lists,
        )
    if not lists:
        raise CatalogError(
            f"no pseudo cold-start window before {moment.date()} gave a list "
            f"({lists_config.windows} windows of {lists_config.window_days:g} days); use "
            "shorter windows, fewer of them, or a later cutoff."
        )
    return ColdStartLists(lists, rerank, columns_of, report, retrieval=lists_config.retrieval)
