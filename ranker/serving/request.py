"""The blend at request time: its features for one candidate list, read off the index.

The evaluation's blend (:mod:`newarrivals.ranker.blend`) reads, per candidate, the retrieval score,
the photo
and text max-similarity to the user's products and the photo and text similarity to the
user's mean vector. The serving index keeps one vector per product, the concat fusion
``[w_t t, w_i i] / norm`` (:func:`~newarrivals.indexer.encoders.fuse`), and each block of
it is one modality's unit vector times a per-product constant. Renormalising a block
therefore gives the modality's vector back (an all-zero block: the product lacks it), and
every feature can be computed from what the index already holds:

* ``retrieval``: the index's own score, the inner product with the user's vector. It is the
  evaluation's ``fused-concat/mean`` score, so a blend fitted on lists from that first stage
  (``train-ranker --retrieval fused-concat/mean``) is the one that holds at serving time;
* ``image``, ``text``: the largest similarity to any of the user's recent products (the
  serving state keeps the last ``recent_limit``; the evaluation reads the whole history);
* ``image-mean``, ``text-mean``: the similarity to the user's vector's own block,
  renormalised. The user's vector sums fused product vectors, so a product that has only
  one modality weighs more in that block than in the evaluation's per-modality mean.

Those two differences are why the serving blend is measured on its own (README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.arrays import F64Array
from newarrivals.indexer.encoders.fusion import ConcatLayout, FusionConfig
from newarrivals.indexer.errors import ConfigError
from newarrivals.ranker.blend import Blend
from newarrivals.ranker.serving.features import candidate_features

__all__ = [
    "SERVING_RETRIEVAL",
    "SERVING_RETRIEVALS",
    "RequestBlend",
    "request_blend",
    "request_features",
]


#: The evaluation's name for the first stage the serving index runs by default.
SERVING_RETRIEVAL: Final = "fused-concat/mean"


#: The evaluation's name for each serving first stage (``NEWARRIVALS_RETRIEVAL``).
SERVING_RETRIEVALS: Final = {"mean": SERVING_RETRIEVAL, "late-max": "fused-late/max"}


def request_features(
    layout: ConcatLayout,
    candidates: npt.ArrayLike,
    retrieval: npt.ArrayLike,
    recent: npt.ArrayLike,
    user: npt.ArrayLike | None,
) -> dict[str, F64Array]:
    """Every blend feature but the ranker's, for one request's candidate list.

    Args:
        layout: The index's layout.
        candidates: ``(n, dim)`` fused vectors of the candidates.
        retrieval: ``(n,)`` their retrieval scores.
        recent: ``(h, dim)`` fused vectors of the user's recent products (``h`` may be 0).
        user: The user's fused query vector, or ``None`` (a cold user's fallback query).

    Returns:
        Columns by feature name, each ``(n,)``; ``NaN`` where a feature cannot score a
        candidate (it lacks the modality, or the user has nothing in it), which
        :func:`~newarrivals.ranker.serving.features.candidate_features` turns into the column's
        minimum.
    """
    cand = layout.split(candidates)
    n = next(iter(cand.values()))[0].shape[0]
    scores = np.asarray(retrieval, dtype=np.float64).reshape(-1)
    if scores.shape != (n,):
        raise ConfigError(f"{n} candidates but {scores.shape[0]} retrieval scores.")
    hist = np.asarray(recent, dtype=np.float64).reshape(-1, layout.dim)
    past = layout.split(hist)
    mean = None if user is None else layout.split(np.asarray(user, dtype=np.float64))
    columns: dict[str, F64Array] = {"retrieval": scores}
    for name in layout.modalities:
        vectors, has = cand[name]
        seen, seen_has = past[name]
        best = np.full(n, np.nan)
        if seen_has.any():
            best = (vectors @ seen[seen_has].T).max(axis=1)
        best[~has] = np.nan
        columns[name] = best
        centre = np.full(n, np.nan)
        if mean is not None and mean[name][1][0]:
            centre = vectors @ mean[name][0][0]
        centre[~has] = np.nan
        columns[f"{name}-mean"] = centre
    return columns


@dataclass(frozen=True)
class RequestBlend:
    """A blend that holds for the served index: the blend and the index's layout."""

    blend: Blend
    layout: ConcatLayout

    def score(
        self,
        ranker: npt.ArrayLike,
        candidates: npt.ArrayLike,
        retrieval: npt.ArrayLike,
        recent: npt.ArrayLike,
        user: npt.ArrayLike | None,
    ) -> F64Array:
        """Blended scores of one list (``ranker``: the cross-encoder's raw scores)."""
        columns = request_features(self.layout, candidates, retrieval, recent, user)
        columns["ranker"] = np.asarray(ranker, dtype=np.float64).reshape(-1)
        return self.blend.score(candidate_features(columns, self.blend.features))


def request_blend(
    blend: Blend | None, layout: ConcatLayout | None, retrieval: str = SERVING_RETRIEVAL
) -> tuple[RequestBlend | None, str]:
    """The blend serving can apply on an index with ``layout`` (``None``: the index is not
    concat-fused), and why not if not.

    A blend's weights hold for the first stage its lists came from, so only a blend fitted
    after the first stage serving runs (``retrieval``, one of :data:`SERVING_RETRIEVALS`'
    values; ``train-ranker --retrieval NAME``) applies; for the mean-vector one, only on an
    index fused at the default weights, which that first stage's score depends on.

    Returns:
        ``(blend, "")`` when it applies, else ``(None, reason)``.
    """
    if blend is None:
        return None, "the ranker has no blend.json (train-ranker writes one)"
    if blend.retrieval != retrieval:
        fitted = blend.retrieval or "an unrecorded first stage"
        return None, (
            f"its blend was fitted on lists from {fitted}, and serving retrieves with "
            f"{retrieval}; refit it with `newarrivals train-ranker --blend-only "
            f"--retrieval {retrieval}` (same other options)"
        )
    if layout is None:
        return None, (
            "the index does not fuse by concat, so the blend's per-modality features cannot "
            "be read from its vectors; rebuild it with --fusion concat (the default)"
        )
    default = FusionConfig()
    weights = (layout.fusion.text_weight, layout.fusion.image_weight)
    both = "text" in layout.modalities and "image" in layout.modalities
    if (
        retrieval == SERVING_RETRIEVAL
        and both
        and weights != (default.text_weight, default.image_weight)
    ):
        return None, (
            f"the index fuses with weights text {weights[0]} / photo {weights[1]}, the blend "
            f"was fitted at {default.text_weight} / {default.image_weight}; rebuild the index "
            "with the default weights"
        )
    missing = [
        f
        for f in blend.features
        if f not in ("ranker", "retrieval") and f.removesuffix("-mean") not in layout.modalities
    ]
    if missing:
        return None, (
            f"its blend reads {missing}, which this index cannot give (modalities "
            f"{list(layout.modalities)})"
        )
    return RequestBlend(blend, layout), ""
