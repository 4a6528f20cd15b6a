"""Bulk index rebuild: catalogue -> text and image vectors (cached) -> fused -> FAISS version.

Each stage reports items/s; encoders load only when the cache misses, so a refresh where 1%
of products changed encodes 1% of them. Quarantine rules:

* a row the reader refuses (no id, duplicate id, bad price/timestamp) is rejected there;
* an unreadable photo is rejected (kind ``image``) and its product is encoded from its text;
* a product left with neither text nor a readable photo is rejected (kind ``product``);
* with ``strict`` the first of any of these fails the build instead.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.schema import Catalog, Product, Reject, SourceRef, product_document
from newarrivals.indexer.catalog.writers import write_rejects
from newarrivals.indexer.device import faiss_gpu_count, resolve_device
from newarrivals.indexer.encoders import (
    FusionConfig,
    ImageEncoder,
    ImageEncoderConfig,
    ImageEncoding,
    TextEncoder,
    TextEncoderConfig,
    TextEncoding,
    fused_dim,
)
from newarrivals.indexer.encoders.onnx_encoders import (
    export_image,
    export_text,
    load_image_export,
    load_text_export,
)
from newarrivals.indexer.errors import CatalogError, ConfigError
from newarrivals.indexer.index.ann import AnnConfig, auto_factory
from newarrivals.indexer.index.encoding import (
    StageStats,
    encode_products,
    encoder_dim,
)
from newarrivals.indexer.index.manifest import (
    FORMAT_VERSION,
    EncoderRecord,
    EncoderRecords,
    ImageEncoderRecord,
    IndexCounts,
    IndexManifest,
)
from newarrivals.indexer.index.store import ProductIndex
from newarrivals.indexer.index.version import (
    library_versions,
    new_version_id,
    publish_version,
    utc_now,
)

__all__ = ["BuildConfig", "BuildSummary", "build_index"]

logger = logging.getLogger(__name__)


ENCODER_RUNTIMES = ("auto", "torch")


@dataclass(frozen=True)
class BuildConfig:
    """Everything a bulk build needs; recorded in the version's manifest.

    Args:
        catalog: a catalogue in the generic schema or the H&M layout.
        out: the index root; versions are published under it.
        text: text encoder, or ``None`` to index photos only.
        image: image tower, or ``None`` to index text only.
        fusion: how the two vectors combine.
        ann: FAISS index settings; ``None`` picks one by catalogue size.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` for the encoders.
        cache_dir: embedding cache; default ``<out>/cache``.
        strict: fail on the first bad row instead of quarantining it.
        chunk_size: products encoded between cache checkpoints (the resume granularity).
        progress: show progress bars.
        encoder_runtime: ``auto`` encodes on the CPU with a verified ONNX copy of each
            encoder when the cache holds one, and writes one after a torch encoder was
            loaded (so a small refresh never imports torch); ``torch`` never uses ONNX.
    """

    catalog: Path
    out: Path
    text: TextEncoderConfig | None = field(default_factory=TextEncoderConfig)
    image: ImageEncoderConfig | None = field(default_factory=ImageEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    ann: AnnConfig | None = None
    device: str = "auto"
    cache_dir: Path | None = None
    strict: bool = False
    chunk_size: int = 1024
    progress: bool = True
    encoder_runtime: str = "auto"

    def __post_init__(self) -> None:
        if self.encoder_runtime not in ENCODER_RUNTIMES:
            raise ConfigError(
                f"encoder_runtime must be one of {', '.join(ENCODER_RUNTIMES)}, "
                f"got {self.encoder_runtime!r}."
            )
        if self.text is None and self.image is None:
            raise ConfigError("both encoders are disabled; enable text, image or both.")
        if self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {self.chunk_size}.")

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.out / "cache"

    def to_dict(self) -> dict[str, Any]:
        return {
            "catalog": str(self.catalog),
            "out": str(self.out),
            "text": self.text.to_dict() if self.text else None,
            "image": self.image.to_dict() if self.image else None,
            "fusion": self.fusion.to_dict(),
            "ann": self.ann.to_dict() if self.ann else None,
            "device": self.device,
            "cache_dir": str(self.cache_dir) if self.cache_dir else None,
            "strict": self.strict,
            "chunk_size": self.chunk_size,
            "encoder_runtime": self.encoder_runtime,
        }


@dataclass
class BuildSummary:
    """What a build did, for the run summary and the manifest."""

    version_dir: Path
    counts: IndexCounts
    stages: dict[str, StageStats]
    seconds: float
    rejects_file: Path

    def to_dict(self) -> dict[str, Any]:
        counts = self.counts.to_dict()
        # The summary reports products; the interactions read are the manifest's to record.
        del counts["interactions"]
        return {
            "version_dir": str(self.version_dir),
            **counts,
            "stages": {
                name: {
                    **asdict(st),
                    "per_second": round(st.per_second, 1) if st.seconds else None,
                }
                for name, st in self.stages.items()
            },
            "seconds": self.seconds,
            "rejects_file": str(self.rejects_file),
        }

    def format(self) -> str:
        c = self.counts
        lines = [
            f"index version: {self.version_dir}",
            f"products read: {c.products_read}  rejected rows: {c.rejected_rows}  "
            f"photos rejected: {c.image_rejects}  nothing to encode: {c.content_rejects}",
            f"indexed: {c.indexed} (text {c.with_text}, photo {c.with_image}, both {c.with_both})",
        ]
        for name, st in self.stages.items():
            rate = f"{st.per_second:,.0f} items/s" if st.seconds > 0 else "-"
            lines.append(
                f"  {name:<6} items {st.items:>8}  encoded {st.encoded:>8}  cached {st.cached:>8}"
                f"  failed {st.failed:>5}  {st.seconds:7.2f}s  {rate}"
            )
        lines.append(f"total {self.seconds:.2f}s; rejects in {self.rejects_file}")
        return "\n".join(lines)


def build_index(config: BuildConfig) -> BuildSummary:
    """Read a catalogue, encode it (through the cache) and publish a new index version.

    Raises:
        CatalogError: in strict mode on the first bad row, or when nothing can be indexed.
    """
    t_start = time.perf_counter()
    stats: dict[str, StageStats] = {}
    config.out.mkdir(parents=True, exist_ok=True)

    st = stats.setdefault("read", StageStats())
    t0 = time.perf_counter()
    catalog = read_catalog(config.catalog, strict=config.strict)
    st.items = len(catalog.products) + len(catalog.rejects)
    st.seconds = time.perf_counter() - t0
    logger.info(
        "read %d products (%d rejected rows) from %s",
        len(catalog.products),
        len(catalog.rejects),
        config.catalog,
    )
    if not catalog.products:
        raise CatalogError(f"no usable product in {config.catalog}; see the rejects reported.")

    device = resolve_device(config.device)
    text_encoder = TextEncoder(config.text, device) if config.text else None
    image_encoder = ImageEncoder(config.image, device) if config.image else None
    cache_root = config.resolved_cache_dir
    onnx = config.encoder_runtime == "auto" and device == "cpu"
    text_run: TextEncoding | None = text_encoder
    image_run: ImageEncoding | None = image_encoder
    if onnx and text_encoder is not None:
        text_run = load_text_export(cache_root, text_encoder.encoder_id) or text_encoder
    if onnx and image_encoder is not None:
        image_run = load_image_export(cache_root, image_encoder.encoder_id) or image_encoder
    encoded = encode_products(
        catalog.products,
        text_encoder=text_run,
        image_encoder=image_run,
        fusion=config.fusion,
        cache_root=config.resolved_cache_dir,
        chunk_size=config.chunk_size,
        progress=config.progress,
        stats=stats,
    )
    if onnx:
        _export_loaded(text_encoder, image_encoder, text_run, image_run, catalog, cache_root)

    has_text, has_image = encoded.has_text, encoded.has_image
    rejects = list(catalog.rejects)
    keep = has_text | has_image
    image_rejects = _quarantine_images(catalog, encoded.failures, config.strict)
    rejects.extend(image_rejects)
    content_rejects = [
        Reject(
            source=catalog.provenance.get(p.product_id, SourceRef(str(config.catalog), 0)),
            reason=f"product {p.product_id!r} has no text and no readable photo: nothing to encode",
            raw=_json_line(p),
            kind="product",
        )
        for p, k in zip(catalog.products, keep.tolist(), strict=True)
        if not k
    ]
    if content_rejects and config.strict:
        raise CatalogError(
            f"{content_rejects[0].source}: {content_rejects[0].reason} "
            "(fix the row or drop --strict)"
        )
    rejects.extend(content_rejects)
    products = [p for p, k in zip(catalog.products, keep.tolist(), strict=True) if k]
    if not products:
        raise CatalogError(
            f"none of the {len(catalog.products)} products in {config.catalog} "
            "has text or a readable photo."
        )
    vectors = encoded.vectors[keep]

    text_dim = encoder_dim(text_run, cache_root) if text_run else None
    image_dim = encoder_dim(image_run, cache_root) if image_run else None
    dim = fused_dim(config.fusion, text_dim, image_dim)
    ann = config.ann or AnnConfig(factory=auto_factory(len(products)))
    if faiss_gpu_count() > 0 and device != "cpu" and not ann.use_gpu:
        try:
            ann = replace(ann, use_gpu=True)
        except ConfigError as exc:  # FAISS has no GPU form of this index type
            logger.info("FAISS index stays on the CPU: %s", exc)

    st = stats.setdefault("index", StageStats())
    t0 = time.perf_counter()
    store = ProductIndex.build(products, vectors, ann)
    tmp = config.out / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        store.save(tmp)
        rejects_file = tmp / "rejects.jsonl"
        write_rejects(rejects, rejects_file)
        st.items = len(products)
        st.seconds = time.perf_counter() - t0
        now = utc_now()
        version = new_version_id(now, tmp.name)
        counts = IndexCounts(
            products_read=len(catalog.products),
            rejected_rows=len(catalog.rejects),
            image_rejects=len(image_rejects),
            content_rejects=len(content_rejects),
            indexed=len(products),
            with_text=int(has_text[keep].sum()),
            with_image=int(has_image[keep].sum()),
            with_both=int((has_text & has_image)[keep].sum()),
            interactions=len(catalog.interactions),
        )
        manifest = IndexManifest(
            format_version=FORMAT_VERSION,
            version=version,
            built_at=now,
            dim=dim,
            counts=counts,
            encoders=EncoderRecords(
                # A run exists exactly when its encoder does, so the dims are set here.
                text=None
                if text_encoder is None or text_dim is None
                else EncoderRecord(
                    id=text_encoder.encoder_id,
                    model=text_encoder.config.model,
                    dim=text_dim,
                    runtime=_runtime(text_run),
                ),
                image=None
                if image_encoder is None or image_dim is None
                else ImageEncoderRecord(
                    id=image_encoder.encoder_id,
                    model=image_encoder.config.model,
                    pretrained=image_encoder.config.pretrained,
                    trained=image_encoder.trained,
                    dim=image_dim,
                    runtime=_runtime(image_run),
                ),
            ),
            fusion=config.fusion.to_dict(),
            ann=ann.to_dict(),
            device=device,
            config=config.to_dict(),
            libraries=library_versions(),
            stats={k: asdict(v) for k, v in stats.items()},
        )
        final = publish_version(tmp, config.out, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = BuildSummary(
        version_dir=final,
        counts=counts,
        stages=stats,
        seconds=time.perf_counter() - t_start,
        rejects_file=final / "rejects.jsonl",
    )
    logger.info("published %s (%d products) in %.1fs", final, len(products), summary.seconds)
    return summary


def _runtime(encoder: TextEncoding | ImageEncoding | None) -> str:
    return str(getattr(encoder, "runtime", "torch"))


def _export_loaded(
    text_encoder: TextEncoder | None,
    image_encoder: ImageEncoder | None,
    text_run: TextEncoding | None,
    image_run: ImageEncoding | None,
    catalog: Catalog,
    cache_root: Path,
) -> None:
    """Write ONNX copies of the torch encoders this build loaded anyway.

    Only a loaded encoder is exported: a build that found everything in the cache must
    not pay seconds of model loading to make a copy it did not need.
    """
    if text_encoder is not None and text_run is text_encoder and "model" in vars(text_encoder):
        docs = [d for d in (product_document(p) for p in catalog.products[:256]) if d]
        export_text(text_encoder, cache_root, docs)
    if (
        image_encoder is not None
        and image_run is image_encoder
        and "_loaded" in vars(image_encoder)
    ):
        photos = [p.image for p in catalog.products[:256] if p.image]
        export_image(image_encoder, cache_root, photos)


def _quarantine_images(catalog: Catalog, failures: dict[int, str], strict: bool) -> list[Reject]:
    rejects = []
    for row in sorted(failures):
        p = catalog.products[row]
        src = catalog.provenance.get(p.product_id, SourceRef(str(catalog.root or ""), 0))
        reason = f"product {p.product_id!r}: {failures[row]}"
        if strict:
            raise CatalogError(f"{src}: {reason} (fix the photo or drop --strict)")
        rejects.append(Reject(source=src, reason=reason, raw=_json_line(p), kind="image"))
    return rejects


def _json_line(product: Product) -> str:
    return json.dumps(product.to_record(), ensure_ascii=False)
