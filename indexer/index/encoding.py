"""Encode products through the embedding cache and fuse their text and image vectors.

:func:`encode_products` is what the index build encodes with; the evaluation, the image tower
and the ranker's evaluation call it too, so a product gets the same vector everywhere.
Each modality goes through the :class:`~newarrivals.indexer.index.cache.EmbeddingCache` in
chunks (an interrupted encode resumes from the last chunk written); :class:`StageStats`
records what each stage encoded, took from the cache or failed on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from newarrivals.indexer.catalog.schema import Product, product_document
from newarrivals.indexer.encoders.base import file_digest, text_digest
from newarrivals.indexer.encoders.fusion import FusionConfig, fuse
from newarrivals.indexer.encoders.image import ImageEncoding
from newarrivals.indexer.encoders.text import TextEncoding
from newarrivals.indexer.index.cache import EmbeddingCache

__all__ = ["EncodedProducts", "StageStats", "encode_products", "encoder_dim"]

logger = logging.getLogger(__name__)


@dataclass
class StageStats:
    """Work done by one stage: items it handled, how many came from the cache, time."""

    items: int = 0
    encoded: int = 0
    cached: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class EncodedProducts:
    """Vectors for a list of products, row ``i`` for product ``i``.

    ``text``/``image`` are ``None`` when that encoder is disabled; rows without the
    modality are zero and ``has_text``/``has_image`` say which rows are real.
    ``failures`` maps a row to the reason its photo could not be used.
    """

    text: np.ndarray | None
    has_text: np.ndarray
    image: np.ndarray | None
    has_image: np.ndarray
    failures: dict[int, str]
    vectors: np.ndarray


def _encode_cached(
    keys: Sequence[str | None],
    cache: EmbeddingCache,
    encode: Callable[[list[int]], tuple[np.ndarray, np.ndarray, dict[int, str]]],
    *,
    chunk_size: int,
    stats: StageStats,
    desc: str,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Fill vectors from the cache, encode the misses chunk by chunk, cache each chunk.

    ``encode(rows)`` returns (vectors, ok mask, failures by position in ``rows``). Rows with a
    ``None`` key have no input for this modality. Identical keys are encoded once.
    """
    n = len(keys)
    has_key = np.array([k is not None for k in keys], dtype=bool)
    present_keys = [k for k in keys if k is not None]
    found, cached_vecs = cache.lookup(present_keys)
    vectors = np.zeros((n, cache.dim), dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    key_rows = np.flatnonzero(has_key)
    vectors[key_rows[found]] = cached_vecs[found]
    present[key_rows[found]] = True
    stats.items = int(has_key.sum())
    stats.cached = int(found.sum())

    # One representative row per distinct missing key.
    first_row: dict[str, int] = {}
    for row in key_rows[~found].tolist():
        first_row.setdefault(str(keys[row]), row)
    todo = list(first_row.items())
    failures: dict[int, str] = {}
    failed_keys: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc=desc, unit="item", disable=not progress or not todo)
    for start in range(0, len(todo), chunk_size):
        part = todo[start : start + chunk_size]
        rows = [r for _, r in part]
        vecs, ok, fails = encode(rows)
        good = [i for i in range(len(part)) if ok[i]]
        cache.put([part[i][0] for i in good], vecs[good])
        for i, reason in fails.items():
            failed_keys[part[i][0]] = reason
        stats.encoded += len(good)
        bar.update(len(part))
    bar.close()
    if todo:
        # Spread results to every row that shares a key.
        missing_rows = key_rows[~found]
        miss_keys = [str(keys[r]) for r in missing_rows.tolist()]
        fresh_found, fresh = cache.lookup(miss_keys)
        vectors[missing_rows[fresh_found]] = fresh[fresh_found]
        present[missing_rows[fresh_found]] = True
        for r, k in zip(missing_rows.tolist(), miss_keys, strict=True):
            if k in failed_keys:
                failures[r] = failed_keys[k]
    stats.failed = len(failures)
    return vectors, present, failures


def encode_products(
    products: Sequence[Product],
    *,
    text_encoder: TextEncoding | None,
    image_encoder: ImageEncoding | None,
    fusion: FusionConfig,
    cache_root: Path,
    chunk_size: int = 1024,
    progress: bool = False,
    stats: dict[str, StageStats] | None = None,
) -> EncodedProducts:
    """Encode products through the cache and fuse them.

    Returns:
        Per-modality vectors and masks, photo failures, and the fused vectors (a product
        with neither modality gets a zero row).
    """
    stats = stats if stats is not None else {}
    n = len(products)
    text_vecs: np.ndarray | None = None
    has_text = np.zeros(n, dtype=bool)
    if text_encoder is not None:
        st = stats.setdefault("text", StageStats())
        t0 = time.perf_counter()
        docs = [product_document(p) for p in products]
        keys: list[str | None] = [text_digest(d) if d else None for d in docs]
        text_enc = text_encoder
        cache = EmbeddingCache(cache_root, text_enc.encoder_id, encoder_dim(text_enc, cache_root))

        def encode_text(rows: list[int]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
            vecs = text_enc.encode([docs[r] for r in rows])
            return vecs, np.ones(len(rows), dtype=bool), {}

        text_vecs, has_text, _ = _encode_cached(
            keys,
            cache,
            encode_text,
            chunk_size=chunk_size,
            stats=st,
            desc="text",
            progress=progress,
        )
        st.seconds = time.perf_counter() - t0

    image_vecs: np.ndarray | None = None
    has_image = np.zeros(n, dtype=bool)
    failures: dict[int, str] = {}
    if image_encoder is not None:
        st = stats.setdefault("image", StageStats())
        t0 = time.perf_counter()
        img_keys: list[str | None] = []
        for i, p in enumerate(products):
            if not p.image:
                img_keys.append(None)
                continue
            try:
                img_keys.append(file_digest(Path(p.image)))
            except OSError as exc:
                failures[i] = f"image file unreadable: {p.image} ({exc.strerror or exc})"
                img_keys.append(None)
        image_enc = image_encoder
        cache = EmbeddingCache(cache_root, image_enc.encoder_id, encoder_dim(image_enc, cache_root))

        def encode_images(rows: list[int]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
            res = image_enc.encode_paths([str(products[r].image) for r in rows])
            return res.vectors, res.ok, res.failures

        image_vecs, has_image, decode_failures = _encode_cached(
            img_keys,
            cache,
            encode_images,
            chunk_size=chunk_size,
            stats=st,
            desc="image",
            progress=progress,
        )
        failures.update(decode_failures)
        st.failed = len(failures)
        st.seconds = time.perf_counter() - t0

    st = stats.setdefault("fuse", StageStats())
    t0 = time.perf_counter()
    vectors = fuse(fusion, text_vecs, has_text, image_vecs, has_image)
    st.items = n
    st.seconds = time.perf_counter() - t0
    return EncodedProducts(
        text=text_vecs,
        has_text=has_text,
        image=image_vecs,
        has_image=has_image,
        failures=failures,
        vectors=vectors,
    )


def encoder_dim(encoder: TextEncoding | ImageEncoding, cache_root: Path) -> int:
    """The encoder's output dim, without loading the model when the cache already knows it.

    Loading a model costs seconds; a refresh that is all cache hits should not pay it.
    """
    known = EmbeddingCache.known_dim(cache_root, encoder.encoder_id)
    return known if known is not None else encoder.dim
