"""Methods that score the cold items for each test user, and the content-based ones.

Every method implements :class:`ColdItemMethod`: given the :class:`EvalData` of a split it
returns an ``(n_test_users, n_cold_items)`` score matrix (higher is better; ``-inf`` or
``NaN`` where it cannot score an item, which then ranks last in random order). That is the
hook for later stages: the ranker's two-stage method (retrieve, then re-rank) is one more
class with a ``name`` and a ``score``.

Content methods work on :class:`ProductVectors` (one vector per product per variant, some
rows missing) and turn a user's train history into scores three ways:

* **mean** (:class:`MeanVectorMethod`): the user vector of
  :mod:`newarrivals.indexer.retrieval.users`
  (event weight times recency half-life; only its direction matters, so the decay's
  reference time does not), scored by dot product;
* **max** (:class:`MaxSimilarityMethod`): the largest similarity of the item to any product
  in the user's history. The H&M README measured it far stronger than the mean: fashion
  shoppers buy several unrelated things, and a mean of a dress and socks is neither;
* **tower** (:class:`UserTowerMethod`): a user tower trained on train-period interactions
  only (:mod:`newarrivals.indexer.towers.user`).

Fusion of text and image vectors (:func:`fuse_vectors`, :class:`LateFusionMethod`) comes
in three forms, because the modalities live on different scales (MiniLM vectors sit in a
narrow cone, mean cosine about .5, trained photo vectors about .06: a plain sum lets text
drown the photo-only products):

* ``sum``: ``t + i`` renormalised (:class:`~newarrivals.indexer.encoders.FusionMode` SUM);
* ``centred``: each modality minus its mean over the evaluated products, renormalised,
  then summed: the shared cone direction carries no preference and is removed;
* ``late``: score each modality separately and average the per-user z-normalised scores of
  the modalities an item has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.arrays import BoolArray, F64Array
from newarrivals.indexer.catalog.schema import Interaction, Product
from newarrivals.indexer.encoders.base import l2_normalize
from newarrivals.indexer.encoders.fusion import late_fuse
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.evaluation.protocol import ColdStartSplit
from newarrivals.indexer.retrieval.users import UserVectorConfig

__all__ = [
    "ColdItemMethod",
    "EvalData",
    "LateFusionMethod",
    "MaxSimilarityMethod",
    "MeanVectorMethod",
    "ProductVectors",
    "UserTowerFit",
    "UserTowerMethod",
    "centre_vectors",
    "fuse_vectors",
]

logger = logging.getLogger(__name__)

_DAY = 86_400.0


@dataclass(frozen=True, eq=False)
class EvalData:
    """What a method may look at: the split (train history, cold items) and the products.

    Nothing from the test period is here except which items are cold and who is tested.
    ``vectors`` holds the product vectors the run encoded, by variant (``text``, ``image``),
    for methods that build on them (e.g. a two-stage method that retrieves, then re-ranks).
    """

    split: ColdStartSplit
    products: Mapping[str, Product]
    vectors: Mapping[str, ProductVectors] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.split.test_users)

    @property
    def n_items(self) -> int:
        return len(self.split.cold_ids)


class ColdItemMethod(Protocol):
    """A method that scores every cold item for every test user.

    Example:
        >>> class Constant:
        ...     name = "constant"
        ...     def score(self, data):
        ...         return np.zeros((data.n_users, data.n_items))
    """

    @property
    def name(self) -> str: ...

    def score(self, data: EvalData) -> F64Array:
        """``(n_test_users, n_cold_items)`` scores, rows in ``split.test_users`` order."""
        ...


@dataclass(frozen=True, eq=False)
class ProductVectors:
    """Unit vectors for some products; ``present[i]`` says whether row ``i`` is real.

    Example:
        >>> pv = ProductVectors(["a", "b"], np.eye(2, dtype=np.float32), np.array([True, False]))
        >>> pv.rows(["b", "a", "zz"]).tolist()
        [-1, 0, -1]
    """

    product_ids: Sequence[str]
    vectors: npt.NDArray[np.float32]
    present: BoolArray
    _position: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.product_ids) != len(self.vectors) or len(self.vectors) != len(self.present):
            raise ConfigError(
                f"product vectors need one row per id: {len(self.product_ids)} ids, "
                f"{len(self.vectors)} vectors, {len(self.present)} flags."
            )
        object.__setattr__(self, "_position", {p: i for i, p in enumerate(self.product_ids)})

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def rows(self, product_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Row of each id, ``-1`` for an unknown id or a row without a vector."""
        out = np.full(len(product_ids), -1, dtype=np.int64)
        for i, pid in enumerate(product_ids):
            row = self._position.get(pid)
            if row is not None and self.present[row]:
                out[i] = row
        return out


def centre_vectors(pv: ProductVectors) -> ProductVectors:
    """Subtract the mean of the present rows and renormalise (absent rows stay zero)."""
    vectors = pv.vectors.astype(np.float32).copy()
    if pv.present.any():
        vectors[pv.present] -= vectors[pv.present].mean(axis=0, keepdims=True)
        vectors[pv.present] = l2_normalize(vectors[pv.present])
    vectors[~pv.present] = 0.0
    return ProductVectors(pv.product_ids, vectors, pv.present.copy())


def fuse_vectors(
    text: ProductVectors, image: ProductVectors, *, centre: bool, image_weight: float = 1.0
) -> ProductVectors:
    """Early fusion ``t + w * i`` (renormalised); a missing modality leaves the other alone.

    Args:
        text: text vectors.
        image: image vectors for the same ids, same dim.
        centre: centre each modality first (:func:`centre_vectors`).
        image_weight: the photo's weight relative to the text's.

    Raises:
        ConfigError: the id lists or dims differ.
    """
    if list(text.product_ids) != list(image.product_ids):
        raise ConfigError("text and image vectors must cover the same products in one order.")
    if text.dim != image.dim:
        raise ConfigError(
            f"sum fusion needs equal dims, got text {text.dim} and image {image.dim}; use late "
            "fusion (scores) or an image tower aligned to the text space."
        )
    if centre:
        text, image = centre_vectors(text), centre_vectors(image)
    t = np.where(text.present[:, None], text.vectors, 0.0)
    i = np.where(image.present[:, None], image.vectors, 0.0)
    fused = l2_normalize((t + image_weight * i).astype(np.float32))
    return ProductVectors(text.product_ids, fused, text.present | image.present)


def _cold_matrix(pv: ProductVectors, data: EvalData) -> tuple[F64Array, BoolArray]:
    rows = pv.rows(data.split.cold_ids)
    ok = rows >= 0
    cold = np.zeros((len(rows), pv.dim), dtype=np.float64)
    cold[ok] = pv.vectors[rows[ok]]
    return cold, ok


def _history_rows(pv: ProductVectors, history: Sequence[Interaction]) -> npt.NDArray[np.int64]:
    rows = pv.rows([item.product_id for item in history])
    return rows


@dataclass(frozen=True, eq=False)
class MeanVectorMethod:
    """Score = dot product with the user's weighted mean vector (:mod:`..users` weighting).

    A user none of whose history products has a vector scores every item alike (random).
    """

    name: str
    vectors: ProductVectors
    user_config: UserVectorConfig = field(default_factory=UserVectorConfig)

    def score(self, data: EvalData) -> F64Array:
        cold, ok = _cold_matrix(self.vectors, data)
        users = np.zeros((data.n_users, self.vectors.dim), dtype=np.float64)
        weights_of = self.user_config.event_weights
        half_life = self.user_config.half_life_days * _DAY
        cutoff = data.split.cutoff.timestamp()
        for u, user in enumerate(data.split.test_users):
            history = data.split.history[user]
            rows = _history_rows(self.vectors, history)
            keep = rows >= 0
            if not keep.any():
                continue
            age = np.array([cutoff - item.timestamp.timestamp() for item in history])[keep]
            weight = np.array([weights_of.get(item.event, 0.0) for item in history])[keep]
            weight = weight * 0.5 ** (age / half_life)
            users[u] = weight @ self.vectors.vectors[rows[keep]].astype(np.float64)
        users = l2_normalize(users.astype(np.float32)).astype(np.float64)
        scores = users @ cold.T
        scores[:, ~ok] = -np.inf
        return scores


@dataclass(frozen=True, eq=False)
class MaxSimilarityMethod:
    """Score = the item's largest cosine similarity to any product in the user's history."""

    name: str
    vectors: ProductVectors

    def score(self, data: EvalData) -> F64Array:
        cold, ok = _cold_matrix(self.vectors, data)
        scores = np.zeros((data.n_users, data.n_items), dtype=np.float64)
        for u, user in enumerate(data.split.test_users):
            rows = np.unique(_history_rows(self.vectors, data.split.history[user]))
            rows = rows[rows >= 0]
            if len(rows):
                sims = self.vectors.vectors[rows].astype(np.float64) @ cold.T
                scores[u] = sims.max(axis=0)
        scores[:, ~ok] = -np.inf
        return scores


@dataclass(frozen=True, eq=False)
class LateFusionMethod:
    """Average of the per-user z-normalised scores of the modalities an item has.

    z-normalising each user's row (over the items that modality can score) puts text and
    photo scores on one scale however different their raw cosine ranges are.
    """

    name: str
    parts: tuple[ColdItemMethod, ...]

    def score(self, data: EvalData) -> F64Array:
        if not self.parts:
            return np.full((data.n_users, data.n_items), -np.inf)
        return late_fuse([part.score(data) for part in self.parts], axis=1)


# Trains a user tower on the split's train interactions (nothing after the cutoff) and
# returns ``(vectors of split.test_users in order, training report)``; run.py adapts
# newarrivals.indexer.towers.user to this shape.
UserTowerFit = Callable[[ColdStartSplit, ProductVectors], tuple[F64Array, dict[str, Any]]]


@dataclass(frozen=True, eq=False)
class UserTowerMethod:
    """Score = dot product with a trained user tower's vector for the user.

    ``fit`` must train on ``split.train`` only, so nothing after the cutoff reaches
    training. ``info`` keeps what the trainer reported (losses, epochs, seconds).
    """

    name: str
    vectors: ProductVectors
    fit: UserTowerFit
    info: dict[str, Any] = field(default_factory=dict)

    def score(self, data: EvalData) -> F64Array:
        cold, ok = _cold_matrix(self.vectors, data)
        users, info = self.fit(data.split, self.vectors)
        self.info.update(info)
        if users.shape != (data.n_users, self.vectors.dim):
            raise ConfigError(
                f"user tower returned {users.shape} user vectors, expected "
                f"({data.n_users}, {self.vectors.dim})."
            )
        scores = np.asarray(users, dtype=np.float64) @ cold.T
        scores[:, ~ok] = -np.inf
        return scores
