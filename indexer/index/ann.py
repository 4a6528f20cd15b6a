"""Approximate-nearest-neighbour backends over int64 ids (inner product on unit vectors).

One small interface, :class:`VectorIndex`, and one implementation, :class:`FaissIndex`,
picked from a read-only registry by :func:`make_index`. Vectors are float32 and
L2-normalised by the caller, so inner product is cosine similarity.

How each FAISS family stores ids and removes them:

=================  ===================  =================================================
factory            id storage           removal
=================  ===================  =================================================
``Flat``/``SQ8``/  ``IndexIDMap2``      ``remove_ids`` (compacts the codes, O(n))
``PQ32``
``IVF…``           the IVF's own ids    ``remove_ids`` (scans the inverted lists, O(n))
``HNSW…``          ``IndexIDMap``       tombstones: FAISS cannot delete from an HNSW graph,
                                        so the removed entry's id in the ``IndexIDMap`` is
                                        overwritten with ``-1`` and every search runs
                                        with an ``IDSelector`` that only accepts ids >= 0.
                                        The tombstones live in the index file itself (the
                                        id map is serialised), so no sidecar is needed.
                                        Callers holding the vectors (``ProductIndex``)
                                        rebuild once too many tombstones pile up.
=================  ===================  =================================================

Filtered search (``allowed``) is done inside FAISS on CPU with an ``IDSelectorBitmap``
(ids are small and dense in practice) or an ``IDSelectorBatch``. GPU indexes cannot take
selectors, so the GPU path over-fetches and post-filters; GPU searches are serialised with a
lock because GPU FAISS is not thread-safe even for concurrent reads.
"""

from __future__ import annotations

import logging
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import faiss
import numpy as np

from newarrivals.indexer.arrays import F32Array, I64Array
from newarrivals.indexer.device import faiss_gpu_count
from newarrivals.indexer.errors import ConfigError, IndexIntegrityError
from newarrivals.indexer.index import faiss_ops
from newarrivals.indexer.validation import require_known_fields

__all__ = [
    "BACKENDS",
    "AnnConfig",
    "FaissIndex",
    "VectorIndex",
    "auto_factory",
    "load_index",
    "make_index",
]

logger = logging.getLogger(__name__)


#: Below this many vectors, exact search is fast enough (a 384-d Flat scan of 50,000
#: vectors takes ~2 ms per query on 2 cores) and needs no training or tuning.
AUTO_FLAT_BELOW: Final = 50_000

#: Largest k a GPU FAISS search accepts.
GPU_MAX_K: Final = 2048

#: ``IDSelectorBitmap`` costs (max id + 1) / 8 bytes; above this use ``IDSelectorBatch``.
_BITMAP_MAX_ID: Final = 1 << 29

_INT64_MAX: Final = int(np.iinfo(np.int64).max)


def auto_factory(n: int) -> str:
    """A FAISS factory string suited to a catalogue of ``n`` products.

    * ``n < 50,000``: ``"Flat"``. Exact, no training, nothing to tune, and fast enough:
      ``benchmarks/faiss_bench.py --n 50000`` (384-d, 2 cores) measured 215 queries/s one
      at a time and 604/s in batches of 64, i.e. ~2-5 ms per query.
    * otherwise ``"IVF{nlist},Flat"`` with ``nlist`` the power of two nearest
      ``4 * sqrt(n)``, at least 256 and at most ``n / 39`` (FAISS k-means needs ~39
      training points per list). Measured at 1M x 384 on 2 cores (faiss 1.15.1, clustered
      synthetic vectors, user-vector queries): IVF4096,Flat trains and fills in 47 s and
      reaches recall@10 0.86 at nprobe=16 (1,058 single queries/s) and 0.93 at nprobe=64
      (357/s), where exact Flat manages 6/s. HNSW32 took 198 s to build and reached only
      0.85 at efSearch=128 (1,060/s). IVF also deletes natively (HNSW needs tombstones)
      and its ``IDSelector`` filtering stays cheap under tight filters, which matters for
      a catalogue of new arrivals that is upserted and delisted every day. Pair it with
      ``nprobe`` 32-64 when recall matters more than latency. Memory is that of the raw
      vectors (1.5 GB at 1M x 384); ``IVF{nlist},SQ8`` gives nearly the same recall
      (0.93 at nprobe=64) in a quarter of the memory if that becomes the limit.

    Args:
        n: Number of vectors the index will hold.

    Returns:
        A factory string for :class:`AnnConfig`.

    Example:
        >>> auto_factory(10_000), auto_factory(1_000_000)
        ('Flat', 'IVF4096,Flat')
    """
    if n < 0:
        raise ConfigError(f"n must be a non-negative number of vectors, got {n}.")
    if n < AUTO_FLAT_BELOW:
        return "Flat"
    target = 4.0 * math.sqrt(n)
    nlist = 2 ** round(math.log2(target))
    nlist = max(256, min(nlist, 65_536))
    while nlist > 256 and nlist * faiss_ops.MIN_POINTS_PER_CENTROID > n:
        nlist //= 2
    return f"IVF{nlist},Flat"


@dataclass(frozen=True)
class AnnConfig:
    """How the vector index is built and searched.

    Args:
        factory: A FAISS ``index_factory`` string without a metric or ``IDMap`` prefix,
            e.g. ``"Flat"``, ``"IVF1024,Flat"``, ``"HNSW32"``, ``"IVF1024,SQ8"``,
            ``"IVF1024,PQ32"``, ``"SQ8"``. See :func:`auto_factory`.
        nprobe: Inverted lists visited per query (IVF only): recall vs speed.
        ef_search: Candidate list size per query (HNSW only): recall vs speed.
        use_gpu: Search on all visible GPUs (needs the ``gpu`` extra). Resolve it once at
            the edge, e.g. ``use_gpu=settings.use_gpu and faiss_gpu_count() > 0``.
        train_size: At most this many vectors (a seeded random sample) train IVF
            centroids and SQ/PQ codebooks; ``None`` uses all of them (FAISS k-means still
            subsamples to 256 points per centroid).
        seed: Seed for the training sample.
        backend: Registry name of the implementation (see :data:`BACKENDS`).

    Example:
        >>> cfg = AnnConfig(factory="IVF1024,Flat", nprobe=32, train_size=100_000)
        >>> AnnConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    factory: str = "Flat"
    nprobe: int = 16
    ef_search: int = 64
    use_gpu: bool = False
    train_size: int | None = None
    seed: int = 0
    backend: str = "faiss"

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise ConfigError(
                f"factory must be a FAISS index_factory string such as 'Flat', "
                f"'IVF1024,Flat' or 'HNSW32', got {self.factory!r}."
            )
        upper = self.factory.upper()
        if upper.startswith("IDMAP"):
            raise ConfigError(
                f"factory must not start with IDMap (ids are managed for you), got "
                f"{self.factory!r}; drop the IDMap prefix."
            )
        for name in ("nprobe", "ef_search"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if self.train_size is not None and (
            not isinstance(self.train_size, int)
            or isinstance(self.train_size, bool)
            or self.train_size < 1
        ):
            raise ConfigError(
                f"train_size must be a positive integer or None (use every vector), "
                f"got {self.train_size!r}."
            )
        if not isinstance(self.use_gpu, bool):
            raise ConfigError(f"use_gpu must be True or False, got {self.use_gpu!r}.")
        if self.use_gpu and not (upper == "FLAT" or upper.startswith("IVF")):
            # FAISS GPU implements Flat and IVF (Flat/SQ/PQ) only; HNSW or a flat SQ/PQ
            # would fail at the first search, far from the config that caused it.
            raise ConfigError(
                f"factory {self.factory!r} has no GPU implementation in FAISS; use 'Flat' "
                f"or an IVF factory such as 'IVF1024,Flat' on GPU, or set use_gpu=False."
            )
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {sorted(BACKENDS)}, got {self.backend!r}.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; the inverse of :meth:`from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnnConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are an error."""
        require_known_fields(cls, data)
        return cls(**dict(data))


class VectorIndex(ABC):
    """The interface every vector-index backend implements.

    Ids are non-negative int64 (``-1`` marks a missing result). Scores are inner
    products, highest first; a missing result scores ``-inf``.
    """

    @classmethod
    @abstractmethod
    def create(cls, config: AnnConfig, dim: int) -> VectorIndex:
        """An empty index of ``dim``-dimensional vectors."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector dimension."""

    @property
    @abstractmethod
    def config(self) -> AnnConfig:
        """The configuration the index was created or loaded with."""

    @property
    def tombstones(self) -> int:
        """Removed vectors still held in memory (only backends that cannot delete)."""
        return 0

    @abstractmethod
    def build(self, vectors: F32Array, ids: I64Array) -> None:
        """Replace the contents: train (if the index needs it) and add ``vectors``."""

    @abstractmethod
    def add(self, vectors: F32Array, ids: I64Array) -> None:
        """Add vectors under ids that are not in the index yet."""

    @abstractmethod
    def remove(self, ids: I64Array) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed."""

    @abstractmethod
    def search(
        self, queries: F32Array, k: int, *, allowed: I64Array | None = None
    ) -> tuple[F32Array, I64Array]:
        """The ``k`` best ids per query, optionally restricted to ``allowed`` ids.

        Args:
            queries: ``(q, dim)`` float32.
            k: Results per query.
            allowed: Sorted unique int64 ids that may be returned; ``None`` for all.

        Returns:
            ``(scores, ids)``, both ``(q, k)``; rows are padded with ``-inf`` / ``-1``
            when fewer than ``k`` results were found.
        """

    @abstractmethod
    def ids(self) -> I64Array:
        """The live ids, sorted."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write the index (CPU form) to one file."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path, config: AnnConfig) -> VectorIndex:
        """Read an index written by :meth:`save`; ``config`` gives the search settings."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of live (searchable) vectors."""


class FaissIndex(VectorIndex):
    """A FAISS index over int64 ids with removal, filtered search and optional GPU search.

    The CPU index is always the source of truth: adds and removals go to it, and a GPU
    replica (when ``config.use_gpu``) is re-cloned lazily on the next search. That keeps
    removal working on GPU (GPU indexes cannot ``remove_ids``) and makes ``save`` write
    the CPU form without a GPU-to-CPU copy, at the cost of holding both copies.

    Not safe for a mutation concurrent with searches; concurrent CPU searches are fine.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((100, 8)).astype(np.float32)
        >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
        >>> index = make_index(AnnConfig(factory="HNSW16"), dim=8)
        >>> index.build(x, np.arange(100, dtype=np.int64))
        >>> index.remove(np.array([0], dtype=np.int64)), len(index)
        (1, 99)
        >>> scores, ids = index.search(x[:2], k=1)
        >>> int(ids[0, 0]) != 0, int(ids[1, 0])  # the removed id 0 never comes back
        (True, 1)
    """

    def __init__(
        self, cpu_index: faiss.Index, kind: faiss_ops.FaissKind, config: AnnConfig
    ) -> None:
        if config.use_gpu and faiss_gpu_count() == 0:
            raise ConfigError(
                "use_gpu=True but FAISS sees no GPU; install the GPU build "
                "(pip install 'newarrivals[gpu]' after uninstalling faiss-cpu) or set "
                "use_gpu=False."
            )
        self._cpu = cpu_index
        self._kind: faiss_ops.FaissKind = kind
        self._config = config
        self._live: I64Array = np.empty(0, dtype=np.int64)
        self._tombstones = 0
        self._gpu: faiss.Index | None = None
        self._gpu_lock = threading.Lock()
        self._refresh_ids()

    # -- construction ---------------------------------------------------------------

    @classmethod
    def create(cls, config: AnnConfig, dim: int) -> FaissIndex:
        kind, index = faiss_ops.new_faiss_index(config.factory, dim)
        return cls(index, kind, config)

    @classmethod
    def load(cls, path: Path, config: AnnConfig) -> FaissIndex:
        path = Path(path)
        if not path.is_file():
            raise IndexIntegrityError(f"index file {path} does not exist.")
        index = faiss.read_index(str(path))
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexIntegrityError(
                f"{path} uses FAISS metric {index.metric_type}, expected inner product "
                f"({faiss.METRIC_INNER_PRODUCT}); rebuild the index."
            )
        return cls(index, faiss_ops.kind_of(index), config)

    # -- properties -----------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self._cpu.d)

    @property
    def config(self) -> AnnConfig:
        return self._config

    @property
    def tombstones(self) -> int:
        return self._tombstones

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying CPU FAISS index (for inspection; do not mutate)."""
        return self._cpu

    def __len__(self) -> int:
        return int(self._live.size)

    def ids(self) -> I64Array:
        return self._live.copy()

    # -- mutation -------------------------------------------------------------------

    def build(self, vectors: F32Array, ids: I64Array) -> None:
        x = self._check_vectors(vectors)
        idx = faiss_ops.check_ids(ids, expected=x.shape[0])
        _, fresh = faiss_ops.new_faiss_index(self._config.factory, self.dim)
        faiss_ops.train_index(
            fresh,
            x,
            factory=self._config.factory,
            train_size=self._config.train_size,
            seed=self._config.seed,
        )
        if x.shape[0]:
            fresh.add_with_ids(x, idx)
        self._cpu = fresh
        self._tombstones = 0
        self._refresh_ids()
        self._invalidate_gpu()

    def add(self, vectors: F32Array, ids: I64Array) -> None:
        x = self._check_vectors(vectors)
        idx = faiss_ops.check_ids(ids, expected=x.shape[0])
        if x.shape[0] == 0:
            return
        if not self._cpu.is_trained:
            raise ConfigError(
                f"factory {self._config.factory!r} needs training; call build() with the "
                f"first batch of vectors before add()."
            )
        fresh = np.sort(idx)
        # ProductIndex never reuses ids, so a live upsert adds ids above every live one:
        # appending keeps ``_live`` sorted without the O(n) set operations.
        appends = self._live.size == 0 or fresh[0] > self._live[-1]
        if not appends:
            clash = idx[np.isin(idx, self._live, assume_unique=True)]
            if clash.size:
                raise ValueError(
                    f"ids already in the index: {faiss_ops.preview_ids(clash)}; remove them first "
                    f"(an upsert is remove + add)."
                )
        self._cpu.add_with_ids(x, idx)
        self._live = np.concatenate([self._live, fresh]) if appends else np.union1d(self._live, idx)
        self._invalidate_gpu()

    def remove(self, ids: I64Array) -> int:
        idx = np.unique(np.asarray(ids, dtype=np.int64))
        present = idx[np.isin(idx, self._live, assume_unique=True)]
        if present.size == 0:
            return 0
        if self._kind == "hnsw":
            # FAISS cannot delete from an HNSW graph: overwrite the id with -1 in place
            # (the id map is serialised, so the tombstone survives save/load) and filter
            # ids < 0 out of every search.
            id_map = faiss_ops.id_map_view(self._cpu)
            id_map[np.isin(id_map, present)] = -1
            self._tombstones += int(present.size)
            removed = int(present.size)
        else:
            selector = faiss.IDSelectorBatch(present.size, faiss.swig_ptr(present))
            removed = int(self._cpu.remove_ids(selector))
            if removed != present.size:
                raise IndexIntegrityError(
                    f"FAISS removed {removed} vectors but {present.size} of the ids were "
                    f"present; the index is inconsistent, rebuild it."
                )
        self._live = np.setdiff1d(self._live, present, assume_unique=True)
        self._invalidate_gpu()
        return removed

    # -- search ---------------------------------------------------------------------

    def search(
        self, queries: F32Array, k: int, *, allowed: I64Array | None = None
    ) -> tuple[F32Array, I64Array]:
        q = self._check_vectors(queries, what="queries")
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        k = int(k)
        allowed_ids = None if allowed is None else faiss_ops.check_allowed(allowed)
        if q.shape[0] == 0 or len(self) == 0 or (allowed_ids is not None and not allowed_ids.size):
            return faiss_ops.empty_result(q.shape[0], k)
        if self._config.use_gpu:
            return self._search_gpu(q, k, allowed_ids)
        selector, _keepalive = self._selector(allowed_ids)
        scores, ids = self._cpu.search(q, k, params=self._params(selector))
        return faiss_ops.clean_result(scores, ids)

    def _selector(self, allowed: I64Array | None) -> tuple[Any, Any]:
        """An ``IDSelector`` (or None) and the buffer it points into, to keep alive."""
        if allowed is None:
            if self._tombstones:
                return faiss.IDSelectorRange(0, _INT64_MAX), None
            return None, None
        if int(allowed[-1]) < _BITMAP_MAX_ID:
            mask = np.zeros(int(allowed[-1]) + 1, dtype=bool)
            mask[allowed] = True
            bitmap = np.packbits(mask, bitorder="little")
            return faiss.IDSelectorBitmap(bitmap.size, faiss.swig_ptr(bitmap)), bitmap
        return faiss.IDSelectorBatch(allowed.size, faiss.swig_ptr(allowed)), allowed

    def _params(self, selector: Any) -> Any:
        params: Any
        if self._kind == "ivf":
            params = faiss.SearchParametersIVF()
            params.nprobe = self._config.nprobe
        elif self._kind == "hnsw":
            # The bundled faiss stubs lag the library: SearchParametersHNSW exists.
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = self._config.ef_search
        elif selector is None:
            return None
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        return params

    def _search_gpu(
        self, q: F32Array, k: int, allowed: I64Array | None
    ) -> tuple[F32Array, I64Array]:
        with self._gpu_lock:
            gpu = self._gpu_replica()
            if allowed is None:
                scores, ids = gpu.search(q, min(k, GPU_MAX_K))
                return faiss_ops.pad_result(faiss_ops.clean_result(scores, ids), k)
            # GPU indexes take no IDSelector: over-fetch, drop what is not allowed, and
            # widen the fetch until every row has enough (or the GPU limit is hit).
            live_allowed = int(np.isin(allowed, self._live, assume_unique=True).sum())
            want = min(k, live_allowed)
            cap = min(len(self), GPU_MAX_K)
            fetch = min(cap, max(4 * k, k + 64))
            while True:
                scores, ids = gpu.search(q, fetch)
                keep = np.isin(ids, allowed) & (ids >= 0)
                if bool((keep.sum(axis=1) >= want).all()) or fetch >= cap:
                    break
                fetch = min(cap, fetch * 4)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(keep, order, axis=1)
        out_ids = np.where(kept, np.take_along_axis(ids, order, axis=1), -1)
        out_scores = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf)
        return faiss_ops.pad_result((out_scores.astype(np.float32), out_ids.astype(np.int64)), k)

    def _gpu_replica(self) -> faiss.Index:
        """The GPU copy of the CPU index, re-cloned after mutations (lock held)."""
        if self._gpu is None:
            gpu = faiss.index_cpu_to_all_gpus(self._cpu)
            if self._kind == "ivf":
                faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", self._config.nprobe)
            self._gpu = gpu
            logger.info("cloned %d vectors to %d GPU(s)", len(self), faiss.get_num_gpus())
        return self._gpu

    def _invalidate_gpu(self) -> None:
        with self._gpu_lock:
            self._gpu = None

    # -- persistence ----------------------------------------------------------------

    def save(self, path: Path) -> None:
        # The CPU index is the source of truth, so this is always the CPU form.
        faiss.write_index(self._cpu, str(path))

    # -- helpers --------------------------------------------------------------------

    def _refresh_ids(self) -> None:
        if self._kind == "ivf":
            ids = faiss_ops.ivf_ids(self._cpu)
            self._tombstones = 0
        else:
            raw = faiss_ops.id_map_view(self._cpu)
            ids = raw[raw >= 0]
            self._tombstones = int(raw.size - ids.size)
        self._live = np.sort(ids.astype(np.int64, copy=True))
        if self._live.size and np.any(self._live[1:] == self._live[:-1]):
            dup = self._live[1:][self._live[1:] == self._live[:-1]]
            raise IndexIntegrityError(
                f"the index holds duplicate ids {faiss_ops.preview_ids(dup)}; rebuild it."
            )

    def _check_vectors(self, vectors: F32Array, what: str = "vectors") -> F32Array:
        x = np.asarray(vectors)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"{what} must have shape (n, {self.dim}), got {x.shape}; reshape single "
                f"vectors with v[None, :]."
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{what} contain NaN or infinite values; fix the encoder output.")
        return x


#: Backend name -> implementation. Read-only: add a backend by editing this module.
BACKENDS: Mapping[str, type[VectorIndex]] = MappingProxyType({"faiss": FaissIndex})


def make_index(config: AnnConfig, dim: int) -> VectorIndex:
    """An empty index for ``config`` (backend looked up in :data:`BACKENDS`).

    Args:
        config: Backend name, factory and search settings.
        dim: Vector dimension.

    Returns:
        An empty :class:`VectorIndex`; call ``build`` to train and fill it.

    Raises:
        ConfigError: Unknown backend (the message lists the valid ones) or a factory
            FAISS cannot build for ``dim``.
    """
    return _backend(config).create(config, dim)


def load_index(path: Path, config: AnnConfig) -> VectorIndex:
    """Load an index written by ``VectorIndex.save`` with the backend named in ``config``."""
    return _backend(config).load(path, config)


def _backend(config: AnnConfig) -> type[VectorIndex]:
    try:
        return BACKENDS[config.backend]
    except KeyError:
        raise ConfigError(
            f"unknown index backend {config.backend!r}; choose one of {sorted(BACKENDS)}."
        ) from None
