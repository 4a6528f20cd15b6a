"""What one loaded index version serves: the typed state behind every request.

A :class:`ServingState` is built off to the side (:func:`load_state`), brought up to date
with the journal, then published by an atomic reference swap (see
:mod:`newarrivals.service.api.live`). Requests read the state they picked up at their
start, so a swap never changes the ground under a request in flight.

Inside one state, searches run under the shared side of :attr:`ServingState.lock` and the
in-place mutations (an event, an upsert, a delete, an erasure) under its exclusive side.
Mutations are short (encoding happens before the lock is taken), so reads wait at most
for one of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.schema import Interaction, Product
from newarrivals.indexer.encoders import decode_photo
from newarrivals.indexer.encoders.product import ProductEncoder
from newarrivals.indexer.errors import ConfigError, NewArrivalsError
from newarrivals.indexer.index.manifest import IndexManifest
from newarrivals.indexer.index.store import ProductIndex
from newarrivals.indexer.index.version import IndexVersion
from newarrivals.indexer.retrieval.search import PopularFallback
from newarrivals.indexer.retrieval.users import UserVectors
from newarrivals.service.api.audience import AudienceIndex
from newarrivals.service.api.journal import JournalEntry, product_from_payload

if TYPE_CHECKING:
    from newarrivals.indexer.encoders.fusion import ConcatLayout
    from newarrivals.ranker.serving.request import RequestBlend

__all__ = ["ReadWriteLock", "ServingState", "load_state", "resolve_catalog"]

logger = logging.getLogger(__name__)


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers (no starvation).

    Not reentrant: never take the read side twice in one thread.

    Example:
        >>> lock = ReadWriteLock()
        >>> with lock.read():
        ...     pass
        >>> with lock.write():
        ...     pass
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass
class ServingState:
    """One index version with its live changes: products, users, audience, encoders.

    Attributes:
        version: The loaded index version (its ``store`` is mutated in place by upserts).
        catalog_path: Where product metadata and base interactions were read from.
        products: Metadata of every indexed product (upserts included).
        users: User vectors: base interactions, then journaled events.
        audience: User-vector index and top-k cache for cold-start lookups.
        fallback: The cold-user query (popular centroid at load time).
        encoder: The version's encoders, for upserts and cold-start lookups.
        loaded_at: When the state was built.
        applied_seq: The last journal sequence number applied.
        replayed: Journal entries applied when the state was built (and caught up).
        layout: Where each modality sits in the index's vectors (``None``: not concat).
        rerank_blend: The ranker's blend when it holds for this version's index (``rerank``
            then orders by it), else ``None`` (the ranker's probabilities alone).
        rerank_note: Why the blend is not applied to this version (``""``: it is, or there
            is no ranker).
        ranker_note: A warning when the order ``rerank`` uses lost to retrieval on the
            ranker's holdout lists.
    """

    version: IndexVersion
    catalog_path: Path
    products: dict[str, Product]
    users: UserVectors
    audience: AudienceIndex
    fallback: PopularFallback
    encoder: ProductEncoder
    loaded_at: datetime
    applied_seq: int = 0
    replayed: int = 0
    lock: ReadWriteLock = field(default_factory=ReadWriteLock)
    layout: ConcatLayout | None = None
    rerank_blend: RequestBlend | None = None
    rerank_note: str = ""
    ranker_note: str | None = None

    @property
    def store(self) -> ProductIndex:
        return self.version.store

    def purchased(self, user_id: str) -> set[str]:
        st = self.users.state(user_id)
        return st.purchased if st is not None else set()

    # -- mutations: the caller holds ``lock.write()`` (or owns an unpublished state) -----

    def apply_event(self, event: Interaction) -> bool:
        """Fold one event into its user; False when the product is not indexed."""
        if not self.users.update(event):
            return False
        self.audience.set_user(event.user_id, self.users.vector(event.user_id))
        return True

    def apply_upsert(self, product: Product, vector: np.ndarray) -> None:
        """Add or overwrite a product (searchable by the next request)."""
        pid = product.product_id
        self.store.add([product], np.asarray(vector, dtype=np.float32)[None, :])
        self.products[pid] = product
        self.audience.product_changed(
            pid,
            self.store.vector(pid) if product.available else None,
            purchased_by=lambda user: pid in self.purchased(user),
        )

    def apply_delete(self, product_id: str) -> bool:
        """Delist a product; False when it was not indexed."""
        removed = self.store.remove([product_id], missing_ok=True)
        self.products.pop(product_id, None)
        self.audience.product_changed(product_id, None, purchased_by=lambda _: False)
        return removed > 0

    def apply_erasure(self, user_id: str) -> bool:
        """Forget a user's vector, history and place in the audience index."""
        had_vector = self.users.erase(user_id)
        had_row = self.audience.remove_user(user_id)
        return had_vector or had_row

    def apply_entry(self, entry: JournalEntry, *, max_image_pixels: int) -> bool:
        """Apply one journal entry (replay); returns whether it changed anything.

        An entry that cannot be applied to this version (a journaled photo its encoders
        cannot read) is logged and skipped rather than keeping the service down.
        """
        try:
            return self._apply_entry(entry, max_image_pixels=max_image_pixels)
        except NewArrivalsError as exc:
            logger.warning("journal entry %d (%s) skipped: %s", entry.seq, entry.kind, exc)
            return False

    def _apply_entry(self, entry: JournalEntry, *, max_image_pixels: int) -> bool:
        if entry.kind == "event":
            return self.apply_event(entry.interaction())
        if entry.kind == "delete":
            return self.apply_delete(str(entry.product_id))
        product = product_from_payload(entry.payload["product"])
        vector = entry.vector_array()
        if vector is None or entry.payload.get("signature") != self.encoder.signature:
            # The journaled vector came from other encoders (a swap to a version built
            # with different models): encode the product again, as this version would.
            photo = (
                None
                if entry.photo is None
                else decode_photo(entry.photo, max_pixels=max_image_pixels)
            )
            encoded = self.encoder.encode([product], [photo])
            if not (encoded.has_text[0] or encoded.has_image[0]):
                logger.warning("journal entry %d: %s has nothing to encode", entry.seq, product)
                return False
            vector = encoded.vectors[0]
        self.apply_upsert(product, vector)
        return True


def resolve_catalog(manifest: IndexManifest, override: Path | None) -> Path:
    """The catalogue to read: ``override``, else the one recorded in the manifest.

    Raises:
        ConfigError: when the recorded path does not exist from here (naming it and the fix).
    """
    if override is not None:
        if not override.exists():
            raise ConfigError(
                f"catalogue {override} does not exist; pass the folder the index was built "
                "from (NEWARRIVALS_CATALOG or --catalog)."
            )
        return override
    recorded = manifest.catalog
    if not recorded:
        raise ConfigError(
            "the index manifest records no catalogue; pass one with NEWARRIVALS_CATALOG "
            "or --catalog."
        )
    path = Path(recorded)
    if not path.exists():
        raise ConfigError(
            f"the catalogue recorded in the index manifest, {path}, does not exist from "
            f"{Path.cwd()} (it may be relative to where the index was built); pass it with "
            "NEWARRIVALS_CATALOG or --catalog."
        )
    return path


def _cache_root(version: IndexVersion) -> Path:
    """The embedding cache the version was built with (ONNX copies of its encoders live
    there)."""
    recorded = version.manifest.cache_dir
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return version.path.parent / "cache"


def load_state(
    version_dir: Path,
    *,
    catalog: Path | None,
    erased_user_keys: frozenset[str],
    user_key: Any,
    encoders: dict[str, ProductEncoder],
    device: str,
    use_gpu: bool,
    verify: bool,
    recent_limit: int,
    audience_k: int,
    encoder_runtime: str = "auto",
    threads: int | None = None,
) -> ServingState:
    """Load a version, its catalogue and base interactions (minus erased users).

    Args:
        version_dir: A version directory or an index root (its LATEST).
        catalog: Catalogue override (default: the manifest's).
        erased_user_keys: Pseudonymous keys of erased users; their base interactions are
            skipped.
        user_key: Maps a user id to its pseudonymous key.
        encoders: Encoders already loaded, by signature; reused and extended.
        device: Resolved device for the encoders.
        use_gpu: Search the product index on GPU.
        verify: Check the version's file hashes.
        recent_limit: Recent products kept per user.
        audience_k: The top-k the audience cache keeps per user.
        encoder_runtime: ``auto`` uses the verified ONNX copies of the encoders in the
            version's embedding cache on the CPU (as a CPU build does); ``torch`` never.
        threads: CPU threads of the encoders' forward passes (``None``: library default).
    """
    version = IndexVersion.load(version_dir, verify=verify, use_gpu=use_gpu)
    catalog_path = resolve_catalog(version.manifest, catalog)
    data = read_catalog(catalog_path)
    store = version.store
    products = {p.product_id: p for p in data.products if p.product_id in store}
    if len(products) < len(store):
        # The catalogue changed since the build: keep serving those products, without
        # their metadata, rather than fail every request that meets one.
        missing = [pid for pid in store.product_ids() if pid not in products]
        logger.warning(
            "%d indexed products are not in %s (e.g. %s); they are served without metadata",
            len(missing),
            catalog_path,
            missing[:3],
        )
        products.update({pid: Product(pid) for pid in missing})
    if erased_user_keys:
        interactions = [e for e in data.interactions if user_key(e.user_id) not in erased_user_keys]
    else:
        interactions = list(data.interactions)
    users = UserVectors(store, recent_limit=recent_limit)
    users.update_many(interactions)
    fallback = PopularFallback.fit(store, interactions)

    onnx_cache = _cache_root(version) if encoder_runtime == "auto" else None
    encoder = ProductEncoder.from_manifest(
        version.manifest, device, onnx_cache=onnx_cache, threads=threads
    )
    key = repr(sorted(encoder.signature.items()))
    if key in encoders:
        encoder = encoders[key]
    else:
        if threads is not None and encoder.runtime != "onnx":
            import torch  # only when a torch encoder is in use: it is slow to import

            torch.set_num_threads(threads)
        encoder.check_dim()
        encoders[key] = encoder

    audience = AudienceIndex(store.dim, audience_k)
    for user_id in users.user_ids():
        audience.set_user(user_id, users.vector(user_id))
    logger.info(
        "loaded %s: %d products, %d users, %d base interactions from %s; encoders: %s",
        version.version,
        len(store),
        len(users),
        len(interactions),
        catalog_path,
        encoder.runtime,
    )
    return ServingState(
        version=version,
        catalog_path=catalog_path,
        products=products,
        users=users,
        audience=audience,
        fallback=fallback,
        encoder=encoder,
        loaded_at=datetime.now(UTC),
    )
