"""Training lists: one positive and its negatives per list, and the user splits over them.

* *Index replay* (:func:`build_training_lists`). Interactions are replayed in time order
  through the retrieval index's user vectors; at each positive event the user's state just
  before it gives the context and the query, the list is the positive, hard negatives from
  the index's top ``retrieval_candidates`` (all products, not only new ones) and random
  ones from the whole catalogue.
* *Cold-start windows*: :mod:`.cold_start`.

Users, not lists, are split into training, validation and holdout, so no user's lists sit
on both sides (:mod:`.teacher_lists` rebuilds a trained ranker's own lists and split).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.catalog.schema import Interaction, Product
from newarrivals.indexer.errors import CatalogError
from newarrivals.indexer.index.store import ProductIndex
from newarrivals.indexer.retrieval.users import UserVectors
from newarrivals.ranker.config import RankerTrainConfig

__all__ = [
    "RerankList",
    "TrainingList",
    "build_training_lists",
    "split_by_user",
    "split_three_ways",
]


@dataclass(frozen=True)
class TrainingList:
    """One listwise training example.

    Attributes:
        user_id: Whose list it is.
        context_ids: The user's recent products before the positive, newest first.
        candidate_ids: The positive and the negatives, shuffled.
        positive: Index of the positive in ``candidate_ids``.
        features: Per-candidate side features by name (``retrieval``, ``image``, ...), in
            ``candidate_ids`` order; empty when the builder had none.
    """

    user_id: str
    context_ids: tuple[str, ...]
    candidate_ids: tuple[str, ...]
    positive: int
    features: Mapping[str, tuple[float, ...]] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, eq=False)
class RerankList:
    """What the two-stage method re-ranks for one user in one window.

    Attributes:
        user_id: Whose list it is.
        context_ids: Their recent products before the window, newest first.
        candidate_ids: The retrieval top-N of the pseudo-cold pool, in retrieval order.
        relevant: Whether each candidate is one the user bought in the window.
        n_relevant: How many pool products the user bought in the window (retrieved or not).
        features: Per-candidate side features by name, in ``candidate_ids`` order.
    """

    user_id: str
    context_ids: tuple[str, ...]
    candidate_ids: tuple[str, ...]
    relevant: tuple[bool, ...]
    n_relevant: int
    features: Mapping[str, tuple[float, ...]]


def build_training_lists(
    events: Sequence[Interaction],
    products: Mapping[str, Product],
    store: ProductIndex,
    config: RankerTrainConfig,
    *,
    max_context_items: int = 10,
) -> list[TrainingList]:
    """Lists from ``events`` (pass only those before the cutoff); see the module docstring.

    Each list's ``features["retrieval"]`` is the inner product of the user's vector at that
    moment with each candidate's index vector.

    Raises:
        CatalogError: when the catalogue has too few products for one list.
    """
    rng = np.random.default_rng(config.seed)
    pool = [pid for pid in products if pid in store]
    if len(pool) < config.list_size:
        raise CatalogError(
            f"a training list needs {config.list_size} products but only {len(pool)} catalogue "
            "products are indexed; index more products or lower hard/random negatives."
        )
    users = UserVectors(store, recent_limit=max_context_items + 1)
    positive_events = set(config.positive_events)
    # (user, context, positive, query vector) at each positive event, before folding it in.
    pending: dict[str, list[tuple[tuple[str, ...], str, npt.NDArray[np.float32]]]] = {}
    for event in sorted(events, key=lambda e: (e.timestamp, e.user_id)):
        if (
            event.event in positive_events
            and event.product_id in products
            and event.product_id in store
        ):
            state = users.state(event.user_id)
            vector = users.vector(event.user_id)
            if state is not None and vector is not None:
                context = tuple(p for p in state.recent if p != event.product_id)
                context = tuple(p for p in context if p in products)[:max_context_items]
                if context:
                    pending.setdefault(event.user_id, []).append(
                        (context, event.product_id, vector.astype(np.float32))
                    )
        users.update(event)

    rows = [
        (user_id, context, positive, vector)
        for user_id in sorted(pending)
        for context, positive, vector in pending[user_id][-config.max_lists_per_user :]
    ]
    if not rows:
        return []
    k = min(len(store), config.retrieval_candidates + max_context_items + 1)
    hits = store.search(np.stack([r[3] for r in rows]), k)
    lists: list[TrainingList] = []
    for (user_id, context, positive, vector), found in zip(rows, hits, strict=True):
        banned = {positive, *context}
        retrieved = [c.product_id for c in found if c.product_id not in banned]
        retrieved = [p for p in retrieved if p in products][: config.retrieval_candidates]
        n_hard = min(config.hard_negatives, len(retrieved))
        picks = rng.permutation(len(retrieved))[:n_hard].tolist()
        negatives = [retrieved[i] for i in picks]
        banned.update(negatives)
        want = config.list_size - 1 - len(negatives)
        while want > 0:
            draw = pool[int(rng.integers(len(pool)))]
            if draw not in banned:
                negatives.append(draw)
                banned.add(draw)
                want -= 1
        at = int(rng.integers(config.list_size))
        order = [negatives[int(i)] for i in rng.permutation(len(negatives))]
        order.insert(at, positive)
        retrieval = store.vectors_for(order).astype(np.float64) @ vector.astype(np.float64)
        lists.append(
            TrainingList(
                user_id, context, tuple(order), at, {"retrieval": tuple(retrieval.tolist())}
            )
        )
    return lists


def split_by_user(
    lists: Sequence[TrainingList], val_fraction: float, seed: int
) -> tuple[list[TrainingList], list[TrainingList]]:
    """Train and validation lists, split by user (a user's lists stay on one side).

    Raises:
        CatalogError: when fewer than two users have lists.
    """
    users = sorted({lst.user_id for lst in lists})
    if len(users) < 2:
        raise CatalogError(
            f"training needs lists from at least 2 users (one for validation), got {len(users)}; "
            "use more interactions or include more positive event types."
        )
    rng = np.random.default_rng(seed)
    shuffled = [users[int(i)] for i in rng.permutation(len(users))]
    n_val = min(len(users) - 1, max(1, round(val_fraction * len(users))))
    val_users = set(shuffled[:n_val])
    train = [lst for lst in lists if lst.user_id not in val_users]
    val = [lst for lst in lists if lst.user_id in val_users]
    return train, val


def split_three_ways(
    lists: Sequence[TrainingList], config: RankerTrainConfig
) -> tuple[list[TrainingList], list[TrainingList], list[TrainingList]]:
    """Train, validation and holdout lists by user: ``val_fraction`` of the users are held
    out and split in half (the seeds make it the same split every time)."""
    train, held = split_by_user(lists, config.val_fraction, config.seed)
    val, holdout = split_by_user(held, 0.5, config.seed + 1)
    return train, val, holdout
