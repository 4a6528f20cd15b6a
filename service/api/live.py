"""The running service: the current state, the journal, writes, and the hot swap.

Ordering rules (they are what makes a crash or a swap lose nothing):

* **Writes** (events, upserts, deletes, erasures) are serialised by one mutex. Under it a
  write is journaled (durable on return), then applied to the current state under that
  state's exclusive lock. Encoding an upserted product happens before, without any lock.
* **Hot swap** (:meth:`Runtime.reload`): the new version is loaded and the whole journal
  replayed onto it *off-lock*, while requests keep being served by the old state. Then,
  under the write mutex, the entries journaled meanwhile (sequence numbers after the
  replayed ones) and the erasures made meanwhile are applied, and the state reference is
  swapped. Requests that started on the old state finish on it.
* **Start-up** is a reload with nothing to swap from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from newarrivals.indexer.catalog.schema import Interaction, Product
from newarrivals.indexer.device import resolve_device
from newarrivals.indexer.encoders.fusion import ConcatLayout
from newarrivals.indexer.encoders.product import EncodedInputs, ProductEncoder
from newarrivals.indexer.errors import ConfigError, NewArrivalsError, UnknownProductError
from newarrivals.indexer.index.version import MANIFEST_FILE, latest_version
from newarrivals.ranker.base import Ranker
from newarrivals.ranker.blend import Blend
from newarrivals.service.api.journal import Journal
from newarrivals.service.api.settings import ServeSettings
from newarrivals.service.api.state import ServingState, load_state

__all__ = [
    "EncodedProduct",
    "NotReadyError",
    "NothingToEncodeError",
    "ReloadInProgressError",
    "ReloadOutcome",
    "Runtime",
]

logger = logging.getLogger(__name__)


class NotReadyError(NewArrivalsError):
    """The index is still loading (or failed to load)."""


class ReloadInProgressError(NewArrivalsError):
    """Another reload is running."""


class NothingToEncodeError(NewArrivalsError, ValueError):
    """A product has neither text nor a photo."""


@dataclass(frozen=True)
class EncodedProduct:
    """A product's fused vector and which modalities it came from."""

    vector: np.ndarray
    from_text: bool
    from_photo: bool


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did."""

    swapped: bool
    previous_version: str
    current_version: str
    seconds: float
    replayed: int


class Runtime:
    """Owns the current :class:`ServingState`, the journal, the encoders and the ranker.

    Example:
        >>> runtime = Runtime(ServeSettings(index=Path("demo/index"), read_only=True))
        ... # doctest: +SKIP
        >>> runtime.start()  # doctest: +SKIP
        >>> runtime.state.version.version  # doctest: +SKIP
    """

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.journal = Journal(settings.journal_path)
        self.device = resolve_device(settings.device)
        self.ranker: Ranker | None = None
        self.blend: Blend | None = None
        self.load_error: str | None = None
        self.started_at = time.time()
        self._state: ServingState | None = None
        self._encoders: dict[str, ProductEncoder] = {}
        self._write_mutex = threading.Lock()
        self._reload_lock = threading.Lock()
        # Encoders and rankers tokenise with Hugging Face fast tokenizers, which refuse
        # concurrent calls; both are CPU-bound anyway, so one call at a time.
        self._encode_lock = threading.Lock()
        self._rank_lock = threading.Lock()
        self._pending_erasures: list[str] | None = None

    # -- state ------------------------------------------------------------------------

    @property
    def state(self) -> ServingState | None:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is not None

    def require_state(self) -> ServingState:
        state = self._state
        if state is None:
            detail = f"loading failed: {self.load_error}" if self.load_error else "loading"
            raise NotReadyError(f"the index is not ready ({detail}); retry when /readyz is 200.")
        return state

    def close(self) -> None:
        self.journal.close()

    # -- start and reload ---------------------------------------------------------------

    def start(self) -> None:
        """Load the ranker and the index version, replay the journal, publish the state."""
        try:
            if self.settings.ranker is not None:
                from newarrivals.ranker.loading import load_ranker

                self.ranker = load_ranker(
                    self.settings.ranker, device=self.device, threads=self.settings.threads
                )
                self.blend = Blend.load(self.settings.ranker)
            self._swap_in(self._target_version())
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            logger.exception("loading the index failed")
            raise

    def reload(self, *, force: bool = False) -> ReloadOutcome:
        """Swap to the newest version under the index root (or reload the same one with
        ``force``), without stopping requests.

        Raises:
            ReloadInProgressError: when another reload is running.
            NotReadyError: before the first load finished.
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadInProgressError(
                "a reload is already running; wait for it to finish and retry."
            )
        try:
            current = self.require_state()
            target = self._target_version()
            if not force and target.resolve() == current.version.path.resolve():
                return ReloadOutcome(
                    False, current.version.version, current.version.version, 0.0, 0
                )
            t0 = time.perf_counter()
            state = self._swap_in(target, hold_reload_lock=False)
            return ReloadOutcome(
                True,
                current.version.version,
                state.version.version,
                time.perf_counter() - t0,
                state.replayed,
            )
        finally:
            self._reload_lock.release()

    def _target_version(self) -> Path:
        index = self.settings.index
        if (index / MANIFEST_FILE).is_file():
            return index
        return latest_version(index)

    def _swap_in(self, version_dir: Path, *, hold_reload_lock: bool = True) -> ServingState:
        guard: AbstractContextManager[object] = (
            self._reload_lock if hold_reload_lock else nullcontext()
        )
        with guard:
            with self._write_mutex:
                self._pending_erasures = []
            try:
                state = self._build(version_dir)
                with self._write_mutex:
                    self._catch_up(state)
                    self._state = state
            finally:
                with self._write_mutex:
                    self._pending_erasures = None
        logger.info(
            "serving %s (%d products, %d users; %d journal entries replayed, last seq %d)",
            state.version.version,
            len(state.store),
            len(state.users),
            state.replayed,
            state.applied_seq,
        )
        return state

    def _build(self, version_dir: Path) -> ServingState:
        """Load a version and replay the journal onto it (no lock: it is not published)."""
        s = self.settings
        state = load_state(
            version_dir,
            catalog=s.catalog,
            erased_user_keys=self.journal.erased_user_keys(),
            user_key=self.journal.user_key,
            encoders=self._encoders,
            device=self.device,
            use_gpu=s.use_gpu_faiss,
            verify=s.verify_index,
            recent_limit=s.recent_limit,
            audience_k=s.audience_max_k,
            encoder_runtime=s.encoder_runtime,
            threads=s.threads,
        )
        for entry in self.journal.entries():
            state.apply_entry(entry, max_image_pixels=s.max_image_pixels)
            state.applied_seq = entry.seq
            state.replayed += 1
        # Models load lazily: the first request should not pay for it.
        with self._encode_lock:
            state.encoder.encode([Product("warm-up", title="warm up")], [None])
        state.layout = self._layout(state)
        if self.ranker is not None:
            self.ranker.warm_cache(state.products.values())
            self._attach_blend(state)
        if s.precompute_audience:
            t0 = time.perf_counter()
            n = state.audience.refresh(state.store, state.purchased)
            logger.info("audience cache: %d users in %.1fs", n, time.perf_counter() - t0)
        return state

    def _layout(self, state: ServingState) -> ConcatLayout | None:
        """The index's concat layout; ``None`` for a sum-fused index, which the late-fusion
        first stage cannot read (refused then, naming the fix)."""
        try:
            return ConcatLayout.from_manifest(state.version.manifest)
        except ConfigError as exc:
            if self.settings.retrieval == "late-max":
                raise ConfigError(
                    f"NEWARRIVALS_RETRIEVAL=late-max needs each modality's own columns: {exc} "
                    "Rebuild the index with --fusion concat, or serve with retrieval 'mean'."
                ) from None
            return None

    def _attach_blend(self, state: ServingState) -> None:
        """Decide, per index version, whether ``rerank`` orders by the blend or the ranker
        alone (a blend holds only for the first stage it was fitted on), and warn when that
        order lost to retrieval on the ranker's holdout lists."""
        from newarrivals.ranker.blend import holdout_warning
        from newarrivals.ranker.serving.request import SERVING_RETRIEVALS, request_blend

        ranker_dir = self.settings.ranker
        if ranker_dir is None:
            return
        applied, why_not = request_blend(
            self.blend, state.layout, SERVING_RETRIEVALS[self.settings.retrieval]
        )
        state.rerank_blend, state.rerank_note = applied, why_not
        state.ranker_note = holdout_warning(
            ranker_dir, blended=applied is not None, why_not=why_not
        )
        if applied is None:
            logger.warning("rerank orders by the ranker alone: %s", why_not)
        else:
            logger.info("rerank orders by the blend of %s", ", ".join(applied.blend.features))
        if state.ranker_note:
            logger.warning("ranker %s: %s", ranker_dir, state.ranker_note)

    def _catch_up(self, state: ServingState) -> None:
        """Apply what was written while ``state`` was being built (write mutex held)."""
        s = self.settings
        for user_id in self._pending_erasures or []:
            # The erasure deleted the user's older rows; what is left was written after it.
            state.apply_erasure(user_id)
            for entry in self.journal.entries(user_id=user_id, upto=state.applied_seq):
                state.apply_entry(entry, max_image_pixels=s.max_image_pixels)
        for entry in self.journal.entries(after=state.applied_seq):
            state.apply_entry(entry, max_image_pixels=s.max_image_pixels)
            state.applied_seq = entry.seq
            state.replayed += 1

    # -- encoding and ranking -----------------------------------------------------------

    def encode(
        self, state: ServingState, product: Product, photo: Image.Image | None
    ) -> EncodedProduct:
        """The product's fused vector, as the state's index version would encode it.

        Raises:
            NothingToEncodeError: when the product has neither text nor a photo.
        """
        with self._encode_lock:
            encoded: EncodedInputs = state.encoder.encode([product], [photo])
        if not (encoded.has_text[0] or encoded.has_image[0]):
            raise NothingToEncodeError(
                "the product has no title, no description and no photo, so there is nothing "
                "to encode; send a title or description, or a photo."
            )
        return EncodedProduct(
            vector=encoded.vectors[0],
            from_text=bool(encoded.has_text[0]),
            from_photo=bool(encoded.has_image[0]),
        )

    def ranking(self) -> AbstractContextManager[object]:
        """Hold while calling the ranker (one forward pass at a time)."""
        return self._rank_lock

    # -- writes -------------------------------------------------------------------------

    def record_events(self, events: Sequence[Interaction]) -> int:
        """Journal events, then fold them into their users. Returns the last sequence number.

        Raises:
            UnknownProductError: naming products that are not indexed (nothing is written).
        """
        with self._write_mutex:
            state = self.require_state()
            unknown = sorted({e.product_id for e in events if e.product_id not in state.store})
            if unknown:
                raise UnknownProductError(
                    f"unknown product id(s) {unknown[:10]}: events must refer to indexed "
                    "products (PUT /v1/products/{product_id} first)."
                )
            seq = self.journal.append_events(events)
            with state.lock.write():
                for event in events:
                    state.apply_event(event)
                state.applied_seq = seq
        return seq

    def upsert_product(
        self, product: Product, photo: Image.Image | None, photo_bytes: bytes | None
    ) -> int:
        """Encode (no lock held), journal, then index a product. Returns its sequence number."""
        state = self.require_state()
        vector = self.encode(state, product, photo).vector
        with self._write_mutex:
            current = self.require_state()
            if current.encoder.signature != state.encoder.signature:
                # A swap to a version with other encoders happened while encoding.
                vector = self.encode(current, product, photo).vector
            seq = self.journal.append_upsert(
                product, vector, current.encoder.signature, photo_bytes
            )
            with current.lock.write():
                current.apply_upsert(product, vector)
                current.applied_seq = seq
        return seq

    def delete_product(self, product_id: str) -> int:
        """Journal and apply a product delete. Returns its sequence number.

        Raises:
            UnknownProductError: when the product is not indexed.
        """
        with self._write_mutex:
            state = self.require_state()
            if product_id not in state.store:
                raise UnknownProductError(f"product {product_id!r} is not in the index.")
            seq = self.journal.append_delete(product_id)
            with state.lock.write():
                state.apply_delete(product_id)
                state.applied_seq = seq
        return seq

    def erase_user(self, user_id: str) -> tuple[bool, int]:
        """Erase a user everywhere, durably.

        Returns:
            Whether the serving state held anything of theirs, and how many journal rows
            were deleted.
        """
        with self._write_mutex:
            deleted = self.journal.erase_user(user_id)
            had = False
            state = self._state
            if state is not None:
                with state.lock.write():
                    had = state.apply_erasure(user_id)
            if self._pending_erasures is not None:
                self._pending_erasures.append(user_id)
        return had or deleted > 0, deleted
