"""Fine-tuning the cross-encoder on lists built from interactions, calibrating it, blending.

**Lists, two ways.**

* *Cold-start windows* (:func:`build_cold_start_lists`; ``train-ranker`` by default). The
  evaluation's own protocol replayed on the past, so the ranker trains on the lists it
  will re-rank. For pseudo-cutoffs ``c_k = cutoff - k * window_days`` (``k = 1..windows``),
  the interactions before ``c_k`` are the history, the products first seen in
  ``[c_k, c_k + window_days)`` are the pseudo-cold pool, and every user with a history who
  bought one of them gets lists: the bought product, ``hard_negatives`` drawn from the top
  ``retrieval_candidates`` that the same retrieval method as the two-stage evaluation
  returns from that pool (the real candidate pool: new arrivals ordered the way the first
  stage orders them), and ``random_negatives`` from the rest of the pool. Each list carries
  its candidates' retrieval score and photo/text similarity (the blend's features), and each
  (window, user) also gives a :class:`RerankList`: the whole retrieval top-N with the
  bought products marked, on which the blend is fitted and two-stage NDCG is checked.
  Nothing at or after ``cutoff`` is read.
* *Index replay* (:func:`build_training_lists`). Interactions are replayed in time order
  through the retrieval index's user vectors; at each positive event the user's state just
  before it gives the context and the query, the list is the positive, hard negatives from
  the index's top ``retrieval_candidates`` (all products, not only new ones) and random
  ones from the whole catalogue.

**Training.** Listwise softmax cross-entropy (the positive's negative log-probability under
the softmax over its list), AdamW with two learning rates (``learning_rate`` for the
pretrained encoder, ``head_learning_rate`` for the new head and the pooler), linear warmup
then linear decay, gradient clipping at 1, and early stopping on the validation NDCG@k;
the best epoch's weights are kept.

*Why the first pass did not learn.* Its loss sat at ln(list size) for a whole run and the
temperature fit ran to the edge of its range. MiniLM (``all-MiniLM-L6-v2``) was trained
with mean pooling, so its [CLS] state, the only thing a sequence-classification head reads,
is an attention sink that hardly depends on the pair: across the 20 candidates of one list
its per-dimension standard deviation was .0007 against a norm of 8, and the logits differed
by 5e-5. A head on it has no signal to fit and the encoder almost no gradient to follow:
overfitting a fixed batch of 8 lists for 30 steps left the loss at 2.296 (chance 2.303)
with the pretrained [CLS] and 1.79 with ``open_cls`` (a mean-pooled head: 1.37). A higher
learning rate alone did not help. ``open_cls`` zeroes the last layer's query projection
before training: every token then attends uniformly, so [CLS] starts as a mean over the
whole pair (what MiniLM's representations were trained for), and the query weights learn
back from zero. It is a change of initial weights only: the architecture, the artifact
format, ONNX export and distillation are untouched.

**Calibration.** The temperature ``T`` minimises the NLL of the positive on the validation
lists (a 1-d search over ``log T``: a grid, then golden-section refinement); the training
lists are never used. The reported expected calibration error is the **top-1** ECE on the
*holdout* lists when given (validation users kept out of early stopping and the fit), else
on the validation lists: per list the confidence is the largest probability and the outcome
whether that candidate is the positive; lists go into ``ece_bins`` equal-width confidence
bins and ECE = sum over bins of (share of lists) x |accuracy - mean confidence|.

**Blend.** :func:`fit_rerank_blend` fits a :class:`~.blend.Blend` of the ranker score with
the retrieval stage's own signals (retrieval score, photo max-similarity, photo and text
similarity to the user's mean vector) in two steps: the features without the ranker on the
re-rank lists of every user but the holdout ones (hundreds of lists on H&M), then the ranker's
weight on the validation users' lists (the only ones where the ranker's score is unbiased: a
few dozen), the other weights kept from the first fit. The holdout users' re-rank lists
report NDCG@k of the retrieval order, the ranker alone, the features blend and the blend.

NDCG of a training list (one relevant item) is ``1 / log2(1 + rank)`` when ``rank <= k``,
else 0; tied scores count as the average over the tied positions (so a constant scorer is
not rewarded or punished by the order of the list). NDCG of a re-rank list uses the
evaluation's definition (binary gains, ideal DCG over all the user's items in the window).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.catalog.schema import Catalog, Interaction, Product
from newarrivals.indexer.errors import CatalogError, ConfigError
from newarrivals.indexer.evaluation.methods import EvalData, ProductVectors
from newarrivals.indexer.evaluation.protocol import parse_cutoff, split_catalog
from newarrivals.indexer.index.store import ProductIndex
from newarrivals.indexer.retrieval.users import UserVectors
from newarrivals.indexer.validation import require_int, require_positive
from newarrivals.ranker.base import PairRanker
from newarrivals.ranker.blend import Blend, BlendList, fit_blend
from newarrivals.ranker.config import RankerConfig, RankerTrainConfig
from newarrivals.ranker.context import candidate_text, context_text, encode_texts
from newarrivals.ranker.evaluation import (
    RETRIEVAL_METHODS,
    candidate_features,
    feature_columns,
    recent_products,
    top_candidates,
)
from newarrivals.ranker.model import CrossEncoderRanker, softmax

__all__ = [
    "ColdStartListConfig",
    "ColdStartLists",
    "EarlyStopping",
    "EpochRecord",
    "RankerTrainingReport",
    "RerankList",
    "RerankReport",
    "TrainingList",
    "blend_features",
    "blend_for_ranker",
    "build_cold_start_lists",
    "build_training_lists",
    "expected_calibration_error",
    "fit_cold_start_ranker",
    "fit_ranker",
    "fit_rerank_blend",
    "fit_temperature",
    "list_nll",
    "list_scores",
    "ndcg_at_k",
    "open_cls",
    "optimiser_step",
    "rerank_ndcg",
    "split_by_user",
    "split_three_ways",
    "train_ranker",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

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


#: The prior of the features-only fit: retrieval alone (see :mod:`.blend`).
BLEND_PRIOR = {"retrieval": 1.0}


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


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: its mean training loss and the validation NDCG@k after it."""

    epoch: int
    train_loss: float
    val_ndcg: float
    seconds: float


@dataclass(frozen=True)
class RankerTrainingReport:
    """What a training run did and how the ranker scores on validation and holdout lists.

    ``ndcg_retrieval`` is the validation NDCG@k of the lists ordered by their retrieval
    score (``nan`` when the lists carry none); the ``holdout_*`` fields are measured on the
    holdout lists (``nan`` and 0 lists when there were none) and calibration is reported
    there, T having been fitted on the validation lists.
    """

    n_train_lists: int
    n_val_lists: int
    list_size: int
    ndcg_k: int
    ndcg_before: float
    ndcg_after: float
    best_epoch: int
    epochs_run: int
    stop_reason: str
    temperature: float
    nll_before_temperature: float
    nll_after_temperature: float
    ece_before_temperature: float
    ece_after_temperature: float
    ece_kind: str
    seconds: float
    history: tuple[EpochRecord, ...] = field(default_factory=tuple)
    steps: int = 0
    ndcg_retrieval: float = math.nan
    n_holdout_lists: int = 0
    holdout_ndcg_before: float = math.nan
    holdout_ndcg_after: float = math.nan
    holdout_ndcg_retrieval: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = [asdict(h) for h in self.history]
        return data


# -- lists: index replay --------------------------------------------------------------


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


# -- lists: cold-start windows --------------------------------------------------------


#: Which bought products make training lists (see :class:`ColdStartListConfig`).
POSITIVE_POOLS: Final = ("any", "retrieved")


@dataclass(frozen=True)
class ColdStartListConfig:
    """The pseudo cold-start windows lists are built from (see the module docstring).

    Args:
        windows: How many windows, stepping back from the cutoff.
        window_days: Length of each window (the H&M test period is 92 days).
        retrieval: The first stage whose top candidates give the hard negatives, one of
            :data:`~.evaluation.RETRIEVAL_METHODS` (use the one the two-stage evaluation
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
            ``retrieval`` feature (one of :data:`~.evaluation.RETRIEVAL_METHODS`).
    """

    lists: list[TrainingList]
    rerank: list[RerankList]
    features: tuple[str, ...]
    windows: list[dict[str, Any]]
    retrieval: str = ""


def _feature_rows(
    columns: Mapping[str, FloatArray], u: int, items: Sequence[int]
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
                    features=_feature_rows(columns, u, top),
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
                        features=_feature_rows(columns, u, order),
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


# -- metrics ------------------------------------------------------------------------


def ndcg_at_k(scores: FloatArray, positives: IntArray, k: int) -> float:
    """Mean NDCG@k over lists with one relevant item each (ties averaged)."""
    if scores.shape[0] == 0:
        return 0.0
    pos = scores[np.arange(scores.shape[0]), positives][:, None]
    above = (scores > pos).sum(axis=1)
    tied = (scores == pos).sum(axis=1)  # includes the positive itself
    total = 0.0
    for a, t in zip(above.tolist(), tied.tolist(), strict=True):
        ranks = range(a + 1, a + t + 1)
        total += sum(1.0 / math.log2(1 + r) for r in ranks if r <= k) / t
    return total / int(scores.shape[0])


def rerank_ndcg(scores: Sequence[FloatArray], lists: Sequence[RerankList], k: int) -> float:
    """Mean NDCG@k of re-rank lists ordered by ``scores`` (one array per list; ties keep the
    list's retrieval order), ideal DCG over each user's items in the window."""
    if not lists:
        return math.nan
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    total = 0.0
    for s, lst in zip(scores, lists, strict=True):
        order = np.argsort(-np.asarray(s, dtype=np.float64), kind="stable")[:k]
        hits = np.asarray(lst.relevant, dtype=np.float64)[order]
        ideal = discounts[: min(lst.n_relevant, k)].sum()
        total += float(hits @ discounts[: len(hits)]) / ideal if ideal > 0 else 0.0
    return total / len(lists)


def list_nll(scores: FloatArray, positives: IntArray, temperature: float = 1.0) -> float:
    """Mean negative log-probability of the positive under the softmax over its list."""
    z = scores / temperature
    m = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
    return float(np.mean(log_norm - z[np.arange(z.shape[0]), positives]))


def expected_calibration_error(probs: FloatArray, positives: IntArray, n_bins: int = 10) -> float:
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


def fit_temperature(scores: FloatArray, positives: IntArray) -> float:
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


# -- scoring lists ------------------------------------------------------------------


class _Tokens:
    """Token ids of every product and context the lists need, tokenised once."""

    def __init__(
        self,
        ranker: PairRanker,
        lists: Sequence[TrainingList | RerankList],
        products: Mapping[str, Product],
    ) -> None:
        ids = sorted({pid for lst in lists for pid in lst.candidate_ids})
        encoded = ranker.encode_candidates([candidate_text(products[p]) for p in ids])
        self.product: dict[str, list[int]] = dict(zip(ids, encoded, strict=True))
        contexts = sorted({lst.context_ids for lst in lists})
        texts = [
            context_text([products[p] for p in c], ranker.config.max_context_items)
            for c in contexts
        ]
        encoded_ctx = encode_texts(ranker.tokenizer, texts, ranker.config.context_tokens)
        self.context: dict[tuple[str, ...], list[int]] = dict(
            zip(contexts, encoded_ctx, strict=True)
        )

    def pairs(
        self, lists: Sequence[TrainingList | RerankList]
    ) -> list[tuple[list[int], list[int]]]:
        return [
            (self.context[lst.context_ids], self.product[pid])
            for lst in lists
            for pid in lst.candidate_ids
        ]


def _check_lists(lists: Sequence[TrainingList], products: Mapping[str, Product]) -> int:
    sizes = {len(lst.candidate_ids) for lst in lists}
    if len(sizes) > 1:
        raise CatalogError(f"training lists must all have one size, got sizes {sorted(sizes)}.")
    missing = {p for lst in lists for p in (*lst.candidate_ids, *lst.context_ids)} - set(products)
    if missing:
        raise CatalogError(
            f"{len(missing)} products in the lists are not in the catalogue, e.g. "
            f"{sorted(missing)[:3]}; pass the catalogue the lists were built from."
        )
    return sizes.pop() if sizes else 0


def list_scores(
    ranker: CrossEncoderRanker,
    lists: Sequence[TrainingList],
    products: Mapping[str, Product],
    *,
    batch_lists: int = 16,
    tokens: _Tokens | None = None,
) -> FloatArray:
    """Raw scores, ``(len(lists), list size)``, in eval mode."""
    size = _check_lists(lists, products)
    tokens = tokens or _Tokens(ranker, lists, products)
    out = np.zeros((len(lists), size), dtype=np.float64)
    for lo in range(0, len(lists), batch_lists):
        chunk = lists[lo : lo + batch_lists]
        scores = ranker.score_batch(ranker.pairs(tokens.pairs(chunk)))
        out[lo : lo + len(chunk)] = scores.reshape(len(chunk), size)
    return out


def _rerank_scores(
    ranker: PairRanker,
    lists: Sequence[RerankList],
    products: Mapping[str, Product],
    *,
    batch_pairs: int = 256,
) -> list[FloatArray]:
    """The ranker's raw scores of each re-rank list's candidates."""
    if not lists:
        return []
    tokens = _Tokens(ranker, lists, products)
    pairs = tokens.pairs(lists)
    flat = np.concatenate(
        [
            ranker.score_batch(ranker.pairs(pairs[lo : lo + batch_pairs]))
            for lo in range(0, len(pairs), batch_pairs)
        ]
    )
    out: list[FloatArray] = []
    at = 0
    for lst in lists:
        out.append(flat[at : at + len(lst.candidate_ids)])
        at += len(lst.candidate_ids)
    return out


def _positives(lists: Sequence[TrainingList]) -> IntArray:
    return np.asarray([lst.positive for lst in lists], dtype=np.int64)


def _retrieval_matrix(lists: Sequence[TrainingList]) -> FloatArray | None:
    if not lists or any("retrieval" not in lst.features for lst in lists):
        return None
    return np.asarray([lst.features["retrieval"] for lst in lists], dtype=np.float64)


# -- training -----------------------------------------------------------------------


def open_cls(model: Any) -> bool:
    """Zero the last encoder layer's query projection, so every token (and so [CLS])
    attends uniformly over the pair; see the module docstring. Returns whether the model
    had a BERT-style layer to open (others are left alone)."""
    import torch

    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not layers:
        return False
    attention = getattr(getattr(layers[-1], "attention", None), "self", None)
    query = getattr(attention, "query", None)
    if not isinstance(query, torch.nn.Linear):
        return False
    with torch.no_grad():
        query.weight.zero_()
        if query.bias is not None:
            query.bias.zero_()
    return True


class EarlyStopping:
    """The best validation score so far, the weights that had it, and when to stop.

    Shared by the ranker's training and the student's distillation loops.
    """

    def __init__(self, model: Any, score: float, patience: int) -> None:
        self.best = score
        self.best_epoch = 0
        self.stale = 0
        self._patience = patience
        self._state = _snapshot(model)

    def update(self, model: Any, epoch: int, score: float, *, counts: bool = True) -> None:
        """Record an epoch's validation score; ``counts=False`` (an epoch that ended inside
        the learning-rate warmup) keeps a better model but does not use up patience."""
        if score > self.best:
            self.best, self.best_epoch, self.stale = score, epoch, 0
            self._state = _snapshot(model)
        elif counts:
            self.stale += 1

    def stop_reason(self, out_of_time: bool) -> str | None:
        """Why to stop after this epoch, or ``None`` to go on."""
        if out_of_time:
            return "time limit"
        if self.stale >= self._patience:
            return f"no better validation NDCG for {self.stale} epochs"
        return None

    def restore(self, model: Any) -> None:
        """Load the best weights back into ``model`` and put it in eval mode."""
        model.load_state_dict(self._state)
        model.eval()


def _snapshot(model: Any) -> dict[str, Any]:
    return {n: v.detach().clone() for n, v in model.state_dict().items()}


def optimiser_step(model: Any, optimiser: Any, loss: Any) -> float:
    """Backward, clip the gradient norm to 1, step; returns the loss."""
    import torch

    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimiser.step()
    return float(loss.detach())


def _warmup_steps(config: RankerTrainConfig, total_steps: int) -> int:
    return max(1, round(config.warmup_fraction * total_steps))


def _optimiser(model: Any, config: RankerTrainConfig, total_steps: int) -> tuple[Any, Any]:
    """AdamW with the head's own learning rate, and the warmup-then-linear-decay schedule."""
    import torch

    head = ("classifier", "pooler")
    encoder_params = [
        p for n, p in model.named_parameters() if not any(h in n.split(".") for h in head)
    ]
    head_params = [p for n, p in model.named_parameters() if any(h in n.split(".") for h in head)]
    optimiser = torch.optim.AdamW(
        [
            {"params": encoder_params, "lr": config.learning_rate},
            {"params": head_params, "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    warmup = _warmup_steps(config, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
    return optimiser, schedule


def train_ranker(
    ranker: CrossEncoderRanker,
    train_lists: Sequence[TrainingList],
    val_lists: Sequence[TrainingList],
    products: Mapping[str, Product],
    config: RankerTrainConfig,
    *,
    holdout_lists: Sequence[TrainingList] = (),
) -> RankerTrainingReport:
    """Fine-tune ``ranker`` in place, keep the best epoch, fit its temperature.

    Args:
        ranker: The ranker to train (usually fresh from :meth:`CrossEncoderRanker.from_base`).
        train_lists: Lists to learn from.
        val_lists: Lists of other users: early stopping and the temperature fit.
        products: The catalogue.
        config: How to train.
        holdout_lists: Lists of yet other users, used for nothing but the report (NDCG
            before/after, calibration error before/after the temperature).

    Raises:
        CatalogError: when either list set is empty or the lists disagree in size.
    """
    import torch

    if not train_lists or not val_lists:
        raise CatalogError(
            f"training needs train and validation lists, got {len(train_lists)} and "
            f"{len(val_lists)}; use more interactions (or an earlier --before cutoff)."
        )
    size = _check_lists([*train_lists, *val_lists, *holdout_lists], products)
    start = time.perf_counter()
    tokens = _Tokens(ranker, [*train_lists, *val_lists, *holdout_lists], products)
    val_pos = _positives(val_lists)
    hold_pos = _positives(holdout_lists)
    model = ranker.torch_model
    k = config.ndcg_k

    def scores_of(lists: Sequence[TrainingList]) -> FloatArray:
        if not lists:
            return np.zeros((0, size))
        return list_scores(
            ranker, lists, products, batch_lists=config.batch_lists * 2, tokens=tokens
        )

    def ndcg_or_nan(scores: FloatArray | None, positives: IntArray) -> float:
        return math.nan if scores is None or not len(positives) else ndcg_at_k(scores, positives, k)

    ndcg_before = ndcg_at_k(scores_of(val_lists), val_pos, k)
    holdout_before = ndcg_or_nan(scores_of(holdout_lists), hold_pos)
    # No epoch better than the model as it came: keep it as it came (before open_cls).
    stopping = EarlyStopping(model, ndcg_before, config.patience)
    if config.open_cls and not open_cls(model):
        logger.warning("open_cls: the model has no BERT-style last layer; left as it is")
    history: list[EpochRecord] = []
    stop_reason = "epochs"
    steps = 0
    rng = np.random.default_rng(config.seed)
    per_epoch = math.ceil(len(train_lists) / config.batch_lists)
    logger.info(
        "training ranker: %d train / %d val / %d holdout lists of %d, val NDCG@%d before %.4f",
        len(train_lists),
        len(val_lists),
        len(holdout_lists),
        size,
        k,
        ndcg_before,
    )
    # The time limit counts from the first step: scoring the validation and holdout lists
    # before training (minutes for large lists on a CPU) must not eat the training budget.
    begun = time.perf_counter()
    deadline = None if config.max_minutes is None else begun + 60.0 * config.max_minutes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        total = per_epoch * config.epochs
        warmup = _warmup_steps(config, total)
        optimiser, schedule = _optimiser(model, config, total)
        out_of_time = False
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            order = rng.permutation(len(train_lists))
            losses: list[float] = []
            for lo in range(0, len(order), config.batch_lists):
                chunk = [train_lists[int(i)] for i in order[lo : lo + config.batch_lists]]
                logits = ranker.forward(ranker.pairs(tokens.pairs(chunk))).view(len(chunk), size)
                target = torch.as_tensor([lst.positive for lst in chunk], device=ranker.device)
                loss = torch.nn.functional.cross_entropy(logits, target)
                losses.append(optimiser_step(model, optimiser, loss))
                schedule.step()
                steps += 1
                if deadline is not None and time.perf_counter() > deadline:
                    out_of_time = True
                    break
            model.eval()
            val_ndcg = ndcg_at_k(scores_of(val_lists), val_pos, k)
            record = EpochRecord(epoch, float(np.mean(losses)), val_ndcg, time.perf_counter() - t0)
            history.append(record)
            logger.info(
                "epoch %d: loss %.4f (chance %.4f), val NDCG@%d %.4f (%.1fs)",
                epoch,
                record.train_loss,
                math.log(size),
                k,
                val_ndcg,
                record.seconds,
            )
            # Epochs still inside the warmup do not count against patience: on small lists
            # the warmup spans epochs, and their flat scores are not a plateau.
            stopping.update(model, epoch, val_ndcg, counts=steps >= warmup)
            reason = stopping.stop_reason(out_of_time)
            if reason is not None:
                stop_reason = reason
                break
    stopping.restore(model)
    val_scores = scores_of(val_lists)
    ndcg_after = ndcg_at_k(val_scores, val_pos, k)
    temperature = fit_temperature(val_scores, val_pos)
    ranker.temperature = temperature
    hold_scores = scores_of(holdout_lists) if holdout_lists else None
    calib_scores, calib_pos = (
        (hold_scores, hold_pos) if hold_scores is not None else (val_scores, val_pos)
    )
    where = (
        "holdout lists (T fitted on the validation lists)"
        if holdout_lists
        else ("validation lists (the ones T was fitted on)")
    )
    val_retrieval = _retrieval_matrix(val_lists)
    hold_retrieval = _retrieval_matrix(holdout_lists)
    report = RankerTrainingReport(
        n_train_lists=len(train_lists),
        n_val_lists=len(val_lists),
        list_size=size,
        ndcg_k=k,
        ndcg_before=ndcg_before,
        ndcg_after=ndcg_after,
        best_epoch=stopping.best_epoch,
        epochs_run=len(history),
        stop_reason=stop_reason,
        temperature=temperature,
        nll_before_temperature=list_nll(calib_scores, calib_pos, 1.0),
        nll_after_temperature=list_nll(calib_scores, calib_pos, temperature),
        ece_before_temperature=expected_calibration_error(
            softmax(calib_scores, 1.0), calib_pos, config.ece_bins
        ),
        ece_after_temperature=expected_calibration_error(
            softmax(calib_scores, temperature), calib_pos, config.ece_bins
        ),
        ece_kind=f"top-1, {config.ece_bins} equal-width bins, {where}",
        seconds=time.perf_counter() - start,
        history=tuple(history),
        steps=steps,
        ndcg_retrieval=ndcg_or_nan(val_retrieval, val_pos),
        n_holdout_lists=len(holdout_lists),
        holdout_ndcg_before=holdout_before,
        holdout_ndcg_after=ndcg_or_nan(hold_scores, hold_pos),
        holdout_ndcg_retrieval=ndcg_or_nan(hold_retrieval, hold_pos),
    )
    logger.info(
        "ranker: val NDCG@%d %.4f -> %.4f (retrieval order %.4f); holdout %.4f -> %.4f "
        "(retrieval %.4f); T=%.3f; ECE %.4f -> %.4f",
        k,
        ndcg_before,
        ndcg_after,
        report.ndcg_retrieval,
        report.holdout_ndcg_before,
        report.holdout_ndcg_after,
        report.holdout_ndcg_retrieval,
        temperature,
        report.ece_before_temperature,
        report.ece_after_temperature,
    )
    return report


# -- blend on re-rank lists -------------------------------------------------------------


@dataclass(frozen=True)
class RerankReport:
    """The blend fitted on validation users' re-rank lists, checked on holdout users'.

    NDCG@k on the holdout re-rank lists orders the same candidates (the retrieval top-N)
    by the retrieval score, the ranker alone, the features blend without the ranker (the
    blend's prior) and the blend. :func:`fit_cold_start_ranker` passes only lists whose
    top-N holds at least one of the user's items, so these NDCGs are conditional on
    retrieval having found something (higher than the evaluation's).
    """

    blend: Blend
    k: int
    n_fit_lists: int
    n_holdout_lists: int
    ndcg_retrieval: float
    ndcg_ranker: float
    ndcg_blend: float
    n_feature_lists: int = 0
    ndcg_features: float = float("nan")

    def save(self, directory: Path) -> Path:
        """Write the blend with these holdout figures as ``blend.json`` into ``directory``."""
        figures = {k: v for k, v in self.to_dict().items() if k != "blend"}
        return self.blend.save(directory, holdout=figures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "blend": self.blend.to_dict(),
            "k": self.k,
            "n_fit_lists": self.n_fit_lists,
            "n_feature_lists": self.n_feature_lists,
            "n_holdout_lists": self.n_holdout_lists,
            "ndcg_retrieval": self.ndcg_retrieval,
            "ndcg_ranker": self.ndcg_ranker,
            "ndcg_features": self.ndcg_features,
            "ndcg_blend": self.ndcg_blend,
        }


def _blend_lists(
    lists: Sequence[RerankList], ranker_scores: Sequence[FloatArray] | None, features: Sequence[str]
) -> list[BlendList]:
    out = []
    scores_of = ranker_scores if ranker_scores is not None else [None] * len(lists)
    for lst, scores in zip(lists, scores_of, strict=True):
        columns = {k: np.asarray(v) for k, v in lst.features.items()}
        if scores is not None:
            columns["ranker"] = scores
        out.append(
            BlendList(candidate_features(columns, features), np.asarray(lst.relevant, dtype=bool))
        )
    return out


def fit_rerank_blend(
    ranker: PairRanker,
    fit_lists: Sequence[RerankList],
    holdout_lists: Sequence[RerankList],
    products: Mapping[str, Product],
    features: Sequence[str],
    *,
    k: int = 20,
    l2: float = 20.0,
    feature_lists: Sequence[RerankList] = (),
    retrieval: str = "",
) -> RerankReport:
    """Fit the blend on ``fit_lists`` (validation users) and check it on ``holdout_lists``.

    Two steps, because the ranker's score is only unbiased on users it was not trained on
    (a few dozen lists) while the other features are fair on every user's lists:

    1. the features without the ranker are fitted on ``feature_lists`` (any users but the
       holdout ones), shrunk towards retrieval alone (:data:`BLEND_PRIOR`);
    2. the ranker's weight is fitted on ``fit_lists``, shrunk towards 0, the other weights
       kept from step 1 (the blend's ``prior``), each with a strength worth ``l2`` lists.

    Without ``feature_lists`` (or without a second feature) there is no step 1: the whole
    blend is fitted on ``fit_lists``, shrunk towards retrieval alone.

    ``retrieval`` names the first stage the lists' ``retrieval`` feature came from; the
    blend records it, because its weights hold only for that first stage (serving applies a
    blend only when it matches the index's own fusion).

    Raises:
        ConfigError: when no fitting list holds one of the user's products (see
            :func:`~.blend.fit_blend`).
    """
    side = [f for f in features if f != "ranker"]
    side_prior = [BLEND_PRIOR.get(f, 0.0) for f in side]
    n_feature_lists = 0
    if feature_lists and len(side) > 1:
        base = fit_blend(
            _blend_lists(feature_lists, None, side),
            side,
            l2=l2,
            prior=side_prior,
            fitted_on=f"{len(feature_lists)} re-rank lists of train and validation users",
        )
        n_feature_lists = base.n_lists
        side_prior = list(base.weights)
        logger.info(
            "features blend (no ranker) on %d lists: %s",
            n_feature_lists,
            {f: round(w, 3) for f, w in base.weight.items()},
        )
    by_name = dict(zip(side, side_prior, strict=True))
    fit_scores = _rerank_scores(ranker, fit_lists, products)
    blend = fit_blend(
        _blend_lists(fit_lists, fit_scores, features),
        features,
        l2=l2,
        prior=[by_name.get(f, 0.0) for f in features],
        fitted_on=f"{len(fit_lists)} re-rank lists of validation users",
        # After step 1 the few validation lists fit only the ranker's weight: refitting all
        # five on H&M's 18-50 lists undid step 1 (holdout NDCG .150 -> .131).
        free=("ranker",) if n_feature_lists else None,
        retrieval=retrieval,
    )
    hold_scores = _rerank_scores(ranker, holdout_lists, products)
    hold = _blend_lists(holdout_lists, hold_scores, features)
    prior = blend.prior_blend()
    first_stage = [np.asarray(lst.features["retrieval"]) for lst in holdout_lists]
    report = RerankReport(
        blend=blend,
        k=k,
        n_fit_lists=len(fit_lists),
        n_holdout_lists=len(holdout_lists),
        ndcg_retrieval=rerank_ndcg(first_stage, holdout_lists, k),
        ndcg_ranker=rerank_ndcg(hold_scores, holdout_lists, k),
        ndcg_blend=rerank_ndcg([blend.score(b.features) for b in hold], holdout_lists, k),
        n_feature_lists=n_feature_lists,
        ndcg_features=(
            rerank_ndcg([prior.score(b.features) for b in hold], holdout_lists, k)
            if prior is not None
            else float("nan")
        ),
    )
    logger.info(
        "blend %s; holdout re-rank NDCG@%d: retrieval %.4f, ranker %.4f, features %.4f, blend %.4f",
        {f: round(w, 3) for f, w in blend.weight.items()},
        k,
        report.ndcg_retrieval,
        report.ndcg_ranker,
        report.ndcg_features,
        report.ndcg_blend,
    )
    return report


# -- end to end ---------------------------------------------------------------------


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


def split_three_ways(
    lists: Sequence[TrainingList], config: RankerTrainConfig
) -> tuple[list[TrainingList], list[TrainingList], list[TrainingList]]:
    """Train, validation and holdout lists by user: ``val_fraction`` of the users are held
    out and split in half (the seeds make it the same split every time)."""
    train, held = split_by_user(lists, config.val_fraction, config.seed)
    val, holdout = split_by_user(held, 0.5, config.seed + 1)
    return train, val, holdout


def blend_for_ranker(
    ranker: PairRanker,
    built: ColdStartLists,
    products: Mapping[str, Product],
    config: RankerTrainConfig,
    *,
    k: int = 20,
    l2: float = 20.0,
) -> RerankReport:
    """Fit a blend for ``ranker`` (any :class:`~.base.PairRanker`: the trained cross-encoder
    or a distilled student) on the re-rank lists of ``built``: the features without the
    ranker on every non-holdout user's lists, the whole blend on the validation users',
    checked on the holdout users' (the same user split as :func:`fit_cold_start_ranker`)."""
    _, val, holdout = split_three_ways(built.lists, config)
    val_users = {lst.user_id for lst in val}
    hold_users = {lst.user_id for lst in holdout}
    # Only lists where retrieval found one of the user's items: the others teach the blend
    # nothing and score 0 under every order (and scoring 50-100 pairs each is not free).
    found = [r for r in built.rerank if any(r.relevant)]
    fit_lists = [r for r in found if r.user_id in val_users]
    hold_lists = [r for r in found if r.user_id in hold_users]
    feature_lists = [r for r in found if r.user_id not in hold_users]
    wanted = blend_features(built.retrieval)
    features = tuple(f for f in wanted if f == "ranker" or f in built.features)
    return fit_rerank_blend(
        ranker,
        fit_lists,
        hold_lists,
        products,
        features,
        k=k,
        l2=l2,
        feature_lists=feature_lists,
        retrieval=built.retrieval,
    )
