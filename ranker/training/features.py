"""The blend's columns computed offline over an evaluation's users and cold items.

The first stage's score (one of :data:`RETRIEVAL_METHODS`), and per modality the
max-similarity and the mean-vector similarity to a user's products. The cold-start list
builders (:mod:`.cold_start`) and the two-stage evaluation (:mod:`newarrivals.ranker.two_stage`)
read them; the request path computes the same features from the index
(:mod:`newarrivals.ranker.serving.request`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from newarrivals.indexer.arrays import F64Array, I64Array
from newarrivals.indexer.catalog.schema import Interaction, Product
from newarrivals.indexer.encoders.fusion import FusionConfig, FusionMode, fuse
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.evaluation.methods import (
    ColdItemMethod,
    EvalData,
    LateFusionMethod,
    MaxSimilarityMethod,
    MeanVectorMethod,
    ProductVectors,
    fuse_vectors,
)
from newarrivals.ranker.context import context_item_text

__all__ = [
    "FEATURES",
    "RETRIEVAL_METHODS",
    "concat_vectors",
    "diversity_vectors",
    "feature_columns",
    "recent_products",
    "retrieval_method",
    "top_candidates",
]


#: ``variant/scoring`` names of the retrieval methods a two-stage run can start from.
RETRIEVAL_METHODS: Final = (
    "fused-late/max",
    "fused-concat/mean",
    "fused-concat/max",
    "fused-late/mean",
    "fused-centred/max",
    "fused-centred/mean",
    "text/max",
    "text/mean",
    "image/max",
    "image/mean",
)


#: Blend features a two-stage run can supply: the ranker's raw score, the retrieval
#: method's score, the photo and text max-similarity to the user's products, and the photo
#: and text similarity to the user's mean vector (the kind of query the serving index runs).
FEATURES: Final = ("ranker", "retrieval", "image", "text", "image-mean", "text-mean")


def vectors_variant(name: str, vectors: Mapping[str, ProductVectors]) -> ProductVectors:
    text, image = vectors.get("text"), vectors.get("image")
    if name in ("text", "image"):
        found = vectors.get(name)
        if found is None:
            raise ConfigError(
                f"retrieval needs {name} vectors but the run has only {sorted(vectors)}; "
                f"{'pass --image-tower' if name == 'image' else 'keep the text encoder'} or "
                "choose another --retrieval."
            )
        return found
    if name == "fused-concat":
        return concat_vectors(vectors)
    if text is None or image is None:
        raise ConfigError(
            f"{name} retrieval needs text and image vectors, the run has {sorted(vectors)}; "
            "pass --image-tower or choose text/max (or image/max)."
        )
    return fuse_vectors(text, image, centre=True)


def concat_vectors(
    vectors: Mapping[str, ProductVectors], fusion: FusionConfig | None = None
) -> ProductVectors:
    """The serving index's own product vectors: ``[w_t t, w_i i]`` renormalised
    (:func:`~newarrivals.indexer.encoders.fuse`, default weights), so ``fused-concat/mean``
    scores the cold items as ``newarrivals serve`` retrieves them (a user's weighted mean
    vector, inner product). Either modality may be missing.
    """
    fusion = fusion or FusionConfig()
    if fusion.mode is not FusionMode.CONCAT:
        raise ConfigError(f"concat_vectors needs a concat fusion, got {fusion.mode.value!r}.")
    text, image = vectors.get("text"), vectors.get("image")
    first = text if text is not None else image
    if first is None:
        raise ConfigError("fused-concat retrieval needs text or image vectors; the run has none.")
    ids = first.product_ids
    if image is not None and list(image.product_ids) != list(ids):
        raise ConfigError("text and image vectors must cover the same products in one order.")
    fused = fuse(
        fusion,
        None if text is None else text.vectors,
        None if text is None else text.present,
        None if image is None else image.vectors,
        None if image is None else image.present,
    )
    present = np.zeros(len(ids), dtype=bool)
    for pv in (text, image):
        if pv is not None:
            present |= pv.present
    return ProductVectors(ids, fused.astype(np.float32), present)


def retrieval_method(name: str, vectors: Mapping[str, ProductVectors]) -> ColdItemMethod:
    """The evaluation's retrieval method called ``name`` (one of :data:`RETRIEVAL_METHODS`).

    The returned method carries the same name as the evaluation's own row (e.g.
    ``fused-late / max similarity``).

    Raises:
        ConfigError: for an unknown name or missing vectors.
    """
    if name not in RETRIEVAL_METHODS:
        raise ConfigError(
            f"unknown retrieval {name!r}; choose one of {', '.join(RETRIEVAL_METHODS)}."
        )
    variant, _, how = name.partition("/")
    label = "max similarity" if how == "max" else "mean user vector"
    cls: type[MaxSimilarityMethod] | type[MeanVectorMethod] = (
        MaxSimilarityMethod if how == "max" else MeanVectorMethod
    )
    if variant == "fused-late":
        text, image = vectors_variant("text", vectors), vectors_variant("image", vectors)
        parts = (cls(f"text / {label}", text), cls(f"image / {label}", image))
        return LateFusionMethod(f"fused-late / {label}", parts)
    return cls(f"{variant} / {label}", vectors_variant(variant, vectors))


def feature_columns(
    data: EvalData, retrieval: str, vectors: Mapping[str, ProductVectors]
) -> dict[str, F64Array]:
    """Every blend feature but the ranker's, as ``(n_users, n_items)`` matrices.

    ``retrieval`` is the first stage's score (one of :data:`RETRIEVAL_METHODS`); per modality
    present in ``vectors`` the max-similarity (``image``, ``text``) and the mean-vector
    similarity (``image-mean``, ``text-mean``). Max-similarity asks "is it like one thing
    they bought", the mean vector "is it like what they buy overall"; on H&M's pre-cutoff
    windows the second adds to a max-similarity retrieval (see the README).
    """
    columns = {
        "retrieval": np.asarray(retrieval_method(retrieval, vectors).score(data), dtype=np.float64)
    }
    for name in ("image", "text"):
        if name in vectors:
            pv = vectors[name]
            columns[name] = np.asarray(
                MaxSimilarityMethod(f"{name} / max similarity", pv).score(data), dtype=np.float64
            )
            columns[f"{name}-mean"] = np.asarray(
                MeanVectorMethod(f"{name} / mean user vector", pv).score(data), dtype=np.float64
            )
    return columns


def diversity_vectors(vectors: Mapping[str, ProductVectors]) -> ProductVectors | None:
    """The vectors diversity is measured with: the centred text+photo fusion when both
    modalities exist (so photo-only products count), else whichever exists."""
    text, image = vectors.get("text"), vectors.get("image")
    if text is not None and image is not None and text.dim == image.dim:
        return fuse_vectors(text, image, centre=True)
    return text if text is not None else image


def recent_products(
    history: Sequence[Interaction], products: Mapping[str, Product], max_items: int
) -> list[Product]:
    """A user's context: their products newest first, each once, only those with text.

    Products without any text (H&M photo-only articles) say nothing to a text model, so
    they do not take a context slot.
    """
    seen: set[str] = set()
    out: list[Product] = []
    for item in reversed(history):
        if item.product_id in seen:
            continue
        seen.add(item.product_id)
        product = products.get(item.product_id)
        if product is not None and context_item_text(product):
            out.append(product)
            if len(out) >= max_items:
                break
    return out


def top_candidates(scores: npt.ArrayLike, depth: int) -> I64Array:
    """Positions of the ``depth`` best finite scores, best first (ties: earlier first)."""
    row = np.asarray(scores, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(row))
    order = finite[np.argsort(-row[finite], kind="stable")]
    out: I64Array = order[:depth].astype(np.int64)
    return out
