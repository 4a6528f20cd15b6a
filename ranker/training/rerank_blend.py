"""Fitting the re-rank blend for a trained ranker, and reporting it on held-out users.

:func:`fit_rerank_blend` fits a :class:`~newarrivals.ranker.blend.Blend` of the ranker score with
the retrieval stage's own signals (retrieval score, photo max-similarity, photo and text
similarity to the user's mean vector) in two steps: the features without the ranker on the
re-rank lists of every user but the holdout ones (hundreds of lists on H&M), then the ranker's
weight on the validation users' lists (the only ones where the ranker's score is unbiased: a
few dozen), the other weights kept from the first fit. The holdout users' re-rank lists
report NDCG@k of the retrieval order, the ranker alone, the features blend and the blend.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from newarrivals.indexer.arrays import F64Array
from newarrivals.indexer.catalog.schema import Product
from newarrivals.ranker.base import PairRanker
from newarrivals.ranker.blend import Blend, BlendList, fit_blend
from newarrivals.ranker.config import RankerTrainConfig
from newarrivals.ranker.serving.features import candidate_features
from newarrivals.ranker.training.cold_start import ColdStartLists, blend_features
from newarrivals.ranker.training.lists import RerankList, split_three_ways
from newarrivals.ranker.training.metrics import rerank_ndcg
from newarrivals.ranker.training.trainer import rerank_scores

__all__ = ["BLEND_PRIOR", "RerankReport", "blend_for_ranker", "fit_rerank_blend"]

logger = logging.getLogger(__name__)


#: The prior of the features-only fit: retrieval alone (see :mod:`newarrivals.ranker.blend`).
BLEND_PRIOR = {"retrieval": 1.0}


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


def blend_lists(
    lists: Sequence[RerankList], ranker_scores: Sequence[F64Array] | None, features: Sequence[str]
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
            :func:`~newarrivals.ranker.blend.fit_blend`).
    """
    side = [f for f in features if f != "ranker"]
    side_prior = [BLEND_PRIOR.get(f, 0.0) for f in side]
    n_feature_lists = 0
    if feature_lists and len(side) > 1:
        base = fit_blend(
            blend_lists(feature_lists, None, side),
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
    fit_scores = rerank_scores(ranker, fit_lists, products)
    blend = fit_blend(
        blend_lists(fit_lists, fit_scores, features),
        features,
        l2=l2,
        prior=[by_name.get(f, 0.0) for f in features],
        fitted_on=f"{len(fit_lists)} re-rank lists of validation users",
        # After step 1 the few validation lists fit only the ranker's weight: refitting all
        # five on H&M's 18-50 lists undid step 1 (holdout NDCG .150 -> .131).
        free=("ranker",) if n_feature_lists else None,
        retrieval=retrieval,
    )
    hold_scores = rerank_scores(ranker, holdout_lists, products)
    hold = blend_lists(holdout_lists, hold_scores, features)
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


def blend_for_ranker(
    ranker: PairRanker,
    built: ColdStartLists,
    products: Mapping[str, Product],
    config: RankerTrainConfig,
    *,
    k: int = 20,
    l2: float = 20.0,
) -> RerankReport:
    """Fit a blend for ``ranker`` (any :class:`~newarrivals.ranker.base.PairRanker`: the trained
    cross-encoder
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
