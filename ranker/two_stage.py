"""Two-stage cold-start evaluation: retrieve the top N cold items, then re-rank them.

:class:`TwoStageRun` plugs into ``newarrivals.indexer.evaluation.evaluate(config,
extra_methods=run.methods())`` (the indexer never imports the ranker). For every test user
it

1. scores all cold items with a retrieval method of the evaluation (by default
   ``fused-late/max``: text and photo max-similarity, z-normalised and averaged, the best
   retrieval row on H&M),
2. takes the top ``N`` (for each depth in ``depths``; the ranker scores the deepest list once
   and the shallower lists reuse those scores),
3. re-orders them by the ranker's raw score, or by a :class:`~newarrivals.ranker.blend.Blend` of
the ranker
   score with the retrieval stage's signals (:func:`feature_columns`), optionally followed
   by MMR (:func:`~newarrivals.ranker.serving.mmr.mmr_order`) over the product vectors; a "features
   blend" row orders
   them by the blend's prior, the same features without the ranker, so the ranker's own
   contribution is the difference between the two rows,

and leaves every item below the top ``N`` in retrieval order, so the two-stage ranking
differs from retrieval only inside the re-ranked head. The ranker is anything with
``encode_context(recent)`` and ``score(context, candidate_texts)`` (:class:`RankerLike`):
the full cross-encoder, a truncated one or a distilled student.

The run also scores the retrieval method alone, so :func:`rerank_margins` can report each
variant's paired margin (same users, same tie-break seeds) with its standard error, and it
records the intra-list diversity (mean pairwise ``1 - cos`` of the top ``diversity_k`` by
product vectors) of every row. With ``max_users`` only a seeded random sample of test users
is re-ranked (the others keep the retrieval order) and margins are taken on that sample.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from newarrivals.indexer.arrays import BoolArray, F64Array, I64Array
from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.evaluation.methods import (
    EvalData,
    ProductVectors,
)
from newarrivals.indexer.evaluation.metrics import standard_error
from newarrivals.indexer.evaluation.report import MethodResult
from newarrivals.indexer.validation import require_fraction, require_int
from newarrivals.ranker.blend import Blend
from newarrivals.ranker.context import UserContext, candidate_text
from newarrivals.ranker.serving.features import candidate_features
from newarrivals.ranker.serving.mmr import intra_list_diversity, mmr_order
from newarrivals.ranker.training.features import (
    FEATURES,
    RETRIEVAL_METHODS,
    diversity_vectors,
    feature_columns,
    recent_products,
    top_candidates,
)

__all__ = [
    "RankerLike",
    "RerankMargin",
    "TwoStageConfig",
    "TwoStageMethod",
    "TwoStageRun",
    "rerank_margins",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class RankerLike(Protocol):
    """What a two-stage run needs from a ranker (the cross-encoder or a distilled student)."""

    def encode_context(self, recent: Sequence[Product]) -> UserContext: ...

    def score(self, context: UserContext, candidate_texts: Sequence[str]) -> F64Array: ...


@dataclass(frozen=True)
class TwoStageConfig:
    """What a two-stage evaluation run re-ranks, and how.

    Args:
        retrieval: The first stage, one of :data:`RETRIEVAL_METHODS`.
        depths: Re-ranking depths ``N`` (one set of rows each).
        mmr_lambda: Relevance weight of an MMR row (after the blend, or after the ranker
            when there is no blend); ``None`` adds no MMR row.
        max_context_items: Products in the user's context (newest first).
        max_users: Re-rank a seeded random sample of this many test users (``None``: all).
        seed: Seed of that sample.
        diversity_k: Intra-list diversity is measured on the top this many.

    Example:
        >>> TwoStageConfig(depths=(100, 50)).depths
        (50, 100)
    """

    retrieval: str = "fused-late/max"
    depths: tuple[int, ...] = (50, 100)
    mmr_lambda: float | None = 0.7
    max_context_items: int = 10
    max_users: int | None = None
    seed: int = 0
    diversity_k: int = 20

    def __post_init__(self) -> None:
        if self.retrieval not in RETRIEVAL_METHODS:
            raise ConfigError(
                f"retrieval must be one of {', '.join(RETRIEVAL_METHODS)}, got {self.retrieval!r}."
            )
        depths = tuple(sorted(set(self.depths)))
        if not depths:
            raise ConfigError("depths must name at least one re-ranking depth, e.g. (50, 100).")
        for depth in depths:
            require_int("depths", depth, minimum=2)
        object.__setattr__(self, "depths", depths)
        if self.mmr_lambda is not None:
            require_fraction("mmr_lambda", self.mmr_lambda)
        require_int("max_context_items", self.max_context_items)
        if self.max_users is not None:
            require_int("max_users", self.max_users)
        require_int("seed", self.seed, minimum=0)
        require_int("diversity_k", self.diversity_k, minimum=2)


@dataclass(frozen=True)
class RerankMargin:
    """A two-stage row minus retrieval alone on one metric, over the re-ranked users.

    ``stderr`` is paired: the standard error of the per-user differences.
    """

    method: str
    reference: str
    metric: str
    n_users: int
    method_value: float
    reference_value: float
    margin: float
    stderr: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "reference": self.reference,
            "metric": self.metric,
            "n_users": self.n_users,
            "method_value": self.method_value,
            "reference_value": self.reference_value,
            "margin": self.margin,
            "stderr": self.stderr,
        }


@dataclass(eq=False)
class _Scored:
    """What every row of a run shares for one :class:`EvalData`, computed once."""

    data: EvalData
    retrieval: F64Array  # (n_users, n_items)
    columns: dict[str, F64Array]  # feature name -> (n_users, n_items), except "ranker"
    users: I64Array  # the re-ranked users (rows)
    top: dict[int, I64Array]  # user row -> top max-depth item positions
    ranker: dict[int, F64Array]  # user row -> ranker raw scores of top
    diversity: ProductVectors | None
    seconds: float


class TwoStageRun:
    """Shared state of the two-stage rows of one evaluation (see the module docstring).

    Args:
        ranker: Any :class:`RankerLike`.
        config: Depths, retrieval, MMR, user sample.
        blend: A blend fitted for this ranker on validation data (``blend.json`` of the
            ranker's artifact); ``None`` leaves out the blend rows.
        label: The ranker's name in the rows (e.g. ``ce-2l`` or ``distilled``).

    Example:
        >>> run = TwoStageRun(ranker, TwoStageConfig(depths=(50,)))  # doctest: +SKIP
        >>> report = evaluate(config, extra_methods=run.methods())  # doctest: +SKIP
        >>> margins = rerank_margins(report.results, run)  # doctest: +SKIP
    """

    def __init__(
        self,
        ranker: RankerLike,
        config: TwoStageConfig,
        *,
        blend: Blend | None = None,
        label: str = "ranker",
    ) -> None:
        if blend is not None:
            unknown = [f for f in blend.features if f not in FEATURES]
            if unknown:
                raise ConfigError(
                    f"blend features {unknown} are unknown here; a two-stage run supplies "
                    f"{', '.join(FEATURES)}."
                )
        self.ranker = ranker
        self.config = config
        self.blend = blend
        self.features_blend = blend.prior_blend() if blend is not None else None
        self.label = label
        self.diversity: dict[str, float] = {}
        self._scored: _Scored | None = None

    # -- rows ---------------------------------------------------------------------

    @property
    def reference_name(self) -> str:
        return f"retrieval alone ({self.config.retrieval})"

    def methods(self) -> list[TwoStageMethod]:
        """The rows: retrieval alone, then per depth the ranker, the blend, the blend + MMR,
        and the blend's features without the ranker (when its prior holds such a blend)."""
        rows = [TwoStageMethod(self, depth=None)]
        features_only = self.features_blend is not None
        for depth in self.config.depths:
            rows.append(TwoStageMethod(self, depth=depth))
            if self.blend is not None:
                rows.append(TwoStageMethod(self, depth=depth, use_blend=True))
            if features_only:
                rows.append(TwoStageMethod(self, depth=depth, use_blend=True, features_only=True))
            if self.config.mmr_lambda is not None:
                rows.append(
                    TwoStageMethod(
                        self,
                        depth=depth,
                        use_blend=self.blend is not None,
                        mmr_lambda=self.config.mmr_lambda,
                    )
                )
        return rows

    @property
    def user_mask(self) -> BoolArray:
        """Which test users were re-ranked (all of them unless ``max_users`` is set)."""
        if self._scored is None:
            raise ConfigError("the run has not scored anything yet; call a method's score().")
        mask = np.zeros(self._scored.data.n_users, dtype=bool)
        mask[self._scored.users] = True
        return mask

    def info(self) -> dict[str, Any]:
        """JSON-ready facts of the run (for the report)."""
        scored = self._scored
        return {
            "ranker": self.label,
            "retrieval": self.config.retrieval,
            "depths": list(self.config.depths),
            "mmr_lambda": self.config.mmr_lambda,
            "blend": self.blend.to_dict() if self.blend is not None else None,
            "max_users": self.config.max_users,
            "seed": self.config.seed,
            "n_reranked_users": len(scored.users) if scored else 0,
            "ranker_seconds": round(scored.seconds, 1) if scored else None,
            f"diversity@{self.config.diversity_k}": dict(self.diversity),
        }

    # -- shared scoring -------------------------------------------------------------

    def _prepare(self, data: EvalData) -> _Scored:
        if self._scored is not None and self._scored.data is data:
            return self._scored
        config = self.config
        columns = feature_columns(data, config.retrieval, data.vectors)
        retrieval = columns["retrieval"]
        n_users = data.n_users
        if config.max_users is not None and config.max_users < n_users:
            rng = np.random.default_rng(config.seed)
            users = np.sort(rng.choice(n_users, size=config.max_users, replace=False))
        else:
            users = np.arange(n_users)
        users = users.astype(np.int64)
        cold = data.split.cold_ids
        texts: dict[int, str] = {}
        deepest = max(config.depths)
        top: dict[int, I64Array] = {}
        ranker: dict[int, F64Array] = {}
        started = time.perf_counter()
        for done, u in enumerate(users.tolist(), 1):
            items = top_candidates(retrieval[u], deepest)
            top[u] = items
            if not len(items):
                ranker[u] = np.zeros(0)
                continue
            user = data.split.test_users[u]
            recent = recent_products(
                data.split.history[user], data.products, config.max_context_items
            )
            context = self.ranker.encode_context(recent)
            for i in items.tolist():
                if i not in texts:
                    product = data.products.get(cold[i])
                    texts[i] = candidate_text(product) if product is not None else ""
            ranker[u] = np.asarray(
                self.ranker.score(context, [texts[i] for i in items.tolist()]), dtype=np.float64
            )
            if done % 50 == 0 or done == len(users):
                logger.info(
                    "two-stage: re-scored %d/%d users (%.0fs)",
                    done,
                    len(users),
                    time.perf_counter() - started,
                )
        self._scored = _Scored(
            data=data,
            retrieval=retrieval,
            columns=columns,
            users=users,
            top=top,
            ranker=ranker,
            diversity=diversity_vectors(data.vectors),
            seconds=time.perf_counter() - started,
        )
        return self._scored

    def _order(
        self,
        scored: _Scored,
        u: int,
        depth: int,
        *,
        use_blend: bool,
        mmr_lambda: float | None,
        features_only: bool = False,
    ) -> I64Array:
        """Item positions of user row ``u``'s re-ranked head, best first."""
        items = scored.top[u][:depth]
        if not len(items):
            return items
        relevance = scored.ranker[u][: len(items)]
        blend = self.features_blend if features_only else self.blend
        if use_blend and blend is not None:
            columns = {"ranker": relevance}
            columns.update({k: v[u, items] for k, v in scored.columns.items()})
            relevance = blend.score(candidate_features(columns, blend.features))
        order = np.argsort(-relevance, kind="stable")
        if mmr_lambda is not None:
            vectors = self._vectors_of(scored, items[order])
            picked = mmr_order(relevance[order], vectors, mmr_lambda)
            order = order[np.asarray(picked, dtype=np.int64)]
        out: I64Array = items[order]
        return out

    def _vectors_of(self, scored: _Scored, items: I64Array) -> F64Array:
        pv = scored.diversity
        if pv is None:
            raise ConfigError("MMR needs product vectors; the run has none.")
        rows = pv.rows([scored.data.split.cold_ids[i] for i in items.tolist()])
        out = np.zeros((len(items), pv.dim), dtype=np.float64)
        out[rows >= 0] = pv.vectors[rows[rows >= 0]]
        return out

    def _record_diversity(self, name: str, scored: _Scored, heads: Sequence[I64Array]) -> None:
        if scored.diversity is None:
            return
        values = []
        for head in heads:
            items = head[: self.config.diversity_k]
            rows = scored.diversity.rows([scored.data.split.cold_ids[i] for i in items.tolist()])
            present = rows[rows >= 0]
            if len(present) >= 2:
                values.append(intra_list_diversity(scored.diversity.vectors[present]))
        if values:
            self.diversity[name] = float(np.mean(values))


@dataclass(eq=False)
class TwoStageMethod:
    """One row of a :class:`TwoStageRun` (a :class:`ColdItemMethod`).

    ``depth=None`` is retrieval alone (the reference row); ``features_only`` orders the head
    by the blend's prior (its features without the ranker: the ranker's own contribution is
    the difference between this row and the blend row).
    """

    run: TwoStageRun
    depth: int | None
    use_blend: bool = False
    mmr_lambda: float | None = None
    features_only: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        run = self.run
        if self.depth is None:
            return run.reference_name
        how = f"{run.label}+blend" if self.use_blend else run.label
        if self.features_only:
            how = f"features blend (no {run.label})"
        if self.mmr_lambda is not None:
            how += f"+MMR({self.mmr_lambda:g})"
        return f"two-stage N={self.depth}: {how}"

    def score(self, data: EvalData) -> F64Array:
        """Scores whose order is the two-stage ranking (retrieval order below the head)."""
        run = self.run
        scored = run._prepare(data)
        n_items = data.n_items
        retrieval = scored.retrieval
        out = retrieval.copy()
        heads: list[I64Array] = []
        for u in scored.users.tolist():
            full = top_candidates(retrieval[u], n_items)
            # Rank-based scores: the head first in its new order, then the rest as retrieved.
            row = np.full(n_items, -np.inf)
            row[full] = n_items - np.arange(len(full), dtype=np.float64)
            if self.depth is not None:
                head = run._order(
                    scored,
                    u,
                    self.depth,
                    use_blend=self.use_blend,
                    mmr_lambda=self.mmr_lambda,
                    features_only=self.features_only,
                )
                row[head] = 2.0 * n_items - np.arange(len(head), dtype=np.float64)
                heads.append(head)
            else:
                heads.append(full[: run.config.diversity_k])
            out[u] = row
        run._record_diversity(self.name, scored, heads)
        self.info.update(run.info())
        return out


def rerank_margins(
    results: Sequence[MethodResult],
    run: TwoStageRun,
    metrics: Sequence[str] = ("ndcg@20", "recall@20"),
) -> list[RerankMargin]:
    """Each two-stage row minus retrieval alone, paired over the re-ranked users; then each
    blend row minus its features blend (the ranker's own contribution), where both exist.

    Raises:
        ConfigError: when the run's reference row is not among ``results``.
    """
    by_name = {r.name: r for r in results}
    reference = by_name.get(run.reference_name)
    if reference is None:
        raise ConfigError(
            f"no {run.reference_name!r} row among the results; pass run.methods() to evaluate()."
        )
    mask = run.user_mask
    pairs = [(m.name, reference.name) for m in run.methods()[1:]]
    for depth in run.config.depths:
        blended = TwoStageMethod(run, depth=depth, use_blend=True).name
        features = TwoStageMethod(run, depth=depth, use_blend=True, features_only=True).name
        pairs.append((blended, features))
    out: list[RerankMargin] = []
    for name, ref_name in pairs:
        result, ref = by_name.get(name), by_name.get(ref_name)
        if result is None or ref is None:
            continue
        for metric in metrics:
            ours = result.per_user.values[metric][mask]
            base = ref.per_user.values[metric][mask]
            diff = ours - base
            out.append(
                RerankMargin(
                    method=name,
                    reference=ref_name,
                    metric=metric,
                    n_users=int(mask.sum()),
                    method_value=float(ours.mean()),
                    reference_value=float(base.mean()),
                    margin=float(diff.mean()),
                    stderr=standard_error(diff),
                )
            )
    return out
