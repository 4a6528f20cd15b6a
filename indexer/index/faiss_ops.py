"""FAISS plumbing behind :class:`~newarrivals.indexer.index.ann.FaissIndex`.

Building an empty index from a factory string wrapped to take int64 ids, telling the index
families apart, reading the ids an index holds, seeded training with the minimum sizes
FAISS needs, and checking ids and shaping search results.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Literal

import faiss
import numpy as np

from newarrivals.indexer.arrays import F32Array, I64Array
from newarrivals.indexer.errors import ConfigError, IndexIntegrityError

__all__ = [
    "MIN_POINTS_PER_CENTROID",
    "FaissKind",
    "check_allowed",
    "check_ids",
    "clean_result",
    "empty_result",
    "id_map_view",
    "is_hnsw",
    "ivf_ids",
    "kind_of",
    "new_faiss_index",
    "pad_result",
    "preview_ids",
    "train_index",
]

logger = logging.getLogger(__name__)


#: FAISS k-means warns below 39 training points per centroid and produces poor centroids.
MIN_POINTS_PER_CENTROID: Final = 39


FaissKind = Literal["ivf", "hnsw", "idmap"]
"""The index families, by how they store and remove ids."""


def new_faiss_index(factory: str, dim: int) -> tuple[FaissKind, faiss.Index]:
    """Build an empty index for ``factory``, wrapped so that it accepts int64 ids."""
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ConfigError(f"dim must be a positive integer, got {dim!r}.")
    try:
        bare = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"FAISS cannot build factory {factory!r} for dim={dim} ({first}); use e.g. "
            f"'Flat', 'IVF1024,Flat', 'HNSW32', 'SQ8' or 'IVF1024,PQ{{m}}' with dim "
            f"divisible by m."
        ) from exc
    if faiss.try_extract_index_ivf(bare) is not None:
        # IVF stores ids itself and its remove_ids keeps them; an IDMap around an IVF
        # would corrupt its id map on removal.
        return "ivf", bare
    if is_hnsw(bare):
        return "hnsw", faiss.index_factory(dim, f"IDMap,{factory}", faiss.METRIC_INNER_PRODUCT)
    return "idmap", faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)


def is_hnsw(index: faiss.Index) -> bool:
    core = faiss.downcast_index(index)
    if isinstance(core, faiss.IndexPreTransform):
        core = faiss.downcast_index(core.index)
    return isinstance(core, faiss.IndexHNSW)


def kind_of(index: faiss.Index) -> FaissKind:
    if faiss.try_extract_index_ivf(index) is not None:
        return "ivf"
    core = faiss.downcast_index(index)
    if isinstance(core, faiss.IndexIDMap2):
        return "idmap"
    if isinstance(core, faiss.IndexIDMap) and is_hnsw(core.index):
        return "hnsw"
    raise IndexIntegrityError(
        f"unsupported FAISS index type {type(core).__name__}; expected an IVF index, an "
        f"IndexIDMap2 or an IndexIDMap over HNSW as written by FaissIndex.save."
    )


def id_map_view(index: faiss.Index) -> I64Array:
    """A writable numpy view of an IndexIDMap's id map (no copy)."""
    core: Any = faiss.downcast_index(index)
    id_map = core.id_map
    if id_map.size() == 0:
        return np.empty(0, dtype=np.int64)
    view: I64Array = faiss.rev_swig_ptr(id_map.data(), id_map.size())
    return view


def ivf_ids(index: faiss.Index) -> I64Array:
    ivf = faiss.extract_index_ivf(index)
    invlists: Any = ivf.invlists
    parts = []
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size:
            ptr = invlists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(ptr, size).copy())
            invlists.release_ids(list_no, ptr)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def train_index(
    index: faiss.Index, x: F32Array, *, factory: str, train_size: int | None, seed: int
) -> None:
    """Train on a seeded sample of at most ``train_size`` vectors (all when ``None``).

    Raises:
        ConfigError: Too few vectors for the factory's IVF lists or PQ centroids (naming
            both numbers and a factory that fits).
    """
    if index.is_trained:
        return
    n = x.shape[0]
    usable = n if train_size is None else min(n, train_size)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        need = MIN_POINTS_PER_CENTROID * int(ivf.nlist)
        if usable < need:
            smaller = max(1, usable // MIN_POINTS_PER_CENTROID)
            raise ConfigError(
                f"factory {factory!r} has nlist={ivf.nlist} and needs at least "
                f"{need} training vectors ({MIN_POINTS_PER_CENTROID} per list), but has "
                f"{usable} (n={n}, train_size={train_size}); use 'Flat' or a "
                f"smaller nlist (at most {smaller})."
            )
    pq_holder = _find_pq_holder(index)
    pq = None if pq_holder is None else pq_holder.pq
    if pq is not None and usable < int(pq.ksub):
        raise ConfigError(
            f"factory {factory!r} trains {pq.ksub} centroids per PQ sub-quantizer "
            f"and needs at least {pq.ksub} training vectors, but has {usable}; use 'Flat', "
            f"'SQ8' or fewer PQ bits."
        )
    if pq_holder is not None and hasattr(pq_holder, "do_polysemous_training"):
        # Polysemous training (simulated annealing over PQ codes) is only useful for
        # Hamming-filtered search, which is never enabled here, and dominates PQ training.
        pq_holder.do_polysemous_training = False
    if usable < n:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=usable, replace=False))
        train_x = np.ascontiguousarray(x[sample])
    else:
        train_x = x
    logger.info("training %r on %d of %d vectors", factory, usable, n)
    index.train(train_x)


def _find_pq_holder(index: faiss.Index) -> Any:
    """The (possibly wrapped) index that owns a product quantizer, or None."""
    core = faiss.downcast_index(index)
    for _ in range(4):
        if hasattr(core, "pq") and core.pq is not None:
            return core
        inner = getattr(core, "index", None) or getattr(core, "storage", None)
        if inner is None:
            return None
        core = faiss.downcast_index(inner)
    return None


def check_ids(ids: I64Array, expected: int) -> I64Array:
    idx = np.ascontiguousarray(np.asarray(ids), dtype=np.int64)
    if idx.ndim != 1 or idx.shape[0] != expected:
        raise ValueError(f"ids must be a 1-d array of {expected} ids, got shape {idx.shape}.")
    if idx.size and int(idx.min()) < 0:
        raise ValueError(f"ids must be non-negative (-1 marks a missing result), got {idx.min()}.")
    if np.unique(idx).size != idx.size:
        values, counts = np.unique(idx, return_counts=True)
        raise ValueError(f"ids must be unique, got duplicates {preview_ids(values[counts > 1])}.")
    return idx


def check_allowed(allowed: I64Array) -> I64Array:
    a = np.ascontiguousarray(np.asarray(allowed), dtype=np.int64)
    if a.ndim != 1:
        raise ValueError(f"allowed must be a 1-d array of ids, got shape {a.shape}.")
    if a.size and (int(a[0]) < 0 or np.any(a[1:] <= a[:-1])):
        raise ValueError(
            "allowed must be sorted, unique and non-negative; pass np.unique(allowed)."
        )
    return a


def clean_result(scores: F32Array, ids: I64Array) -> tuple[F32Array, I64Array]:
    ids = ids.astype(np.int64, copy=False)
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    return scores, ids


def pad_result(result: tuple[F32Array, I64Array], k: int) -> tuple[F32Array, I64Array]:
    scores, ids = result
    short = k - ids.shape[1]
    if short <= 0:
        return scores, ids
    return (
        np.pad(scores, ((0, 0), (0, short)), constant_values=-np.inf).astype(np.float32),
        np.pad(ids, ((0, 0), (0, short)), constant_values=-1).astype(np.int64),
    )


def empty_result(n: int, k: int) -> tuple[F32Array, I64Array]:
    return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)


def preview_ids(values: I64Array, limit: int = 10) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    more = f" and {values.size - limit} more" if values.size > limit else ""
    return f"[{shown}]{more}"
