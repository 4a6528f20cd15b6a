"""``newarrivals evaluate``: split a catalogue, score every method, write the report.

Dataset defaults (each can be overridden in :class:`EvaluateConfig`):

* **H&M** (a folder in the Kaggle layout): cutoff 2020-06-22 (the README's split), test
  events ``purchase``, same product ``id-prefix:7``, type/colour/department keys
  ``category[-1]`` (product type), ``colour``, ``department``;
* **synthetic** (a folder with ``ground_truth.json``): the cutoff stored there, test events
  ``purchase`` and ``cart``, no same-product rule, keys ``type``, ``colour``, ``style``;
* **generic**: the cutoff is required, test events ``purchase``, same product
  ``attribute:product_code`` when products carry that attribute, keys guessed from the
  attributes (:func:`~.baselines.default_keys_for`).

Synthetic shoppers cart about 2.5 times as often as they buy, and both follow the same
hidden tastes, so carts count as test events there: on a 3,000-product, 600-user catalogue
purchases alone leave 151 test users and 173 truth pairs, purchases and carts 269 and 407.
Pass ``test_events`` to change it; the events used are recorded in the report.

Methods, in report order: the baselines (:mod:`.baselines`), then for each product-vector
variant (text; image and the fused variants when an image tower is given) the mean user
vector and the max similarity, and the trained user tower for text, image and the centred
fusion (unless disabled). Products are encoded through the embedding cache, so a second run
encodes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from newarrivals.indexer.catalog.hm import is_hm_layout
from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.schema import Catalog, EventType, Product
from newarrivals.indexer.catalog.synth import GROUND_TRUTH_FILE, load_ground_truth
from newarrivals.indexer.device import resolve_device
from newarrivals.indexer.encoders import FusionConfig, ImageEncoder, ImageEncoderConfig, TextEncoder
from newarrivals.indexer.encoders.text import TextEncoderConfig
from newarrivals.indexer.errors import CatalogError, ConfigError, NewArrivalsError
from newarrivals.indexer.evaluation.baselines import (
    AttributeAffinity,
    AttributeKeys,
    RandomBaseline,
    TypePopularity,
    default_keys_for,
)
from newarrivals.indexer.evaluation.methods import (
    ColdItemMethod,
    EvalData,
    LateFusionMethod,
    MaxSimilarityMethod,
    MeanVectorMethod,
    ProductVectors,
    UserTowerFit,
    UserTowerMethod,
    fuse_vectors,
)
from newarrivals.indexer.evaluation.metrics import MetricSpec, score_rankings
from newarrivals.indexer.evaluation.protocol import (
    ColdStartSplit,
    SameProductRule,
    parse_cutoff,
    parse_events,
    split_catalog,
)
from newarrivals.indexer.evaluation.report import (
    BASELINE,
    EvaluationReport,
    MethodResult,
    compute_margins,
)
from newarrivals.indexer.index.encoding import encode_products
from newarrivals.indexer.index.version import library_versions

__all__ = [
    "DEFAULT_CACHE",
    "DatasetProfile",
    "EvaluateConfig",
    "encode_product_vectors",
    "evaluate",
    "resolve_profile",
]

logger = logging.getLogger(__name__)

HM_CUTOFF = "2020-06-22"
SYNTH_TEST_EVENTS: tuple[EventType, ...] = (EventType.CART, EventType.PURCHASE)
DEFAULT_CACHE = Path("~/.cache/newarrivals/embeddings")


@dataclass(frozen=True)
class EvaluateConfig:
    """One evaluation run.

    Args:
        data: a catalogue folder (generic schema, H&M layout, or a synthetic catalogue).
        cutoff: first day of the test period; ``None`` = the dataset default (see module).
        test_events: post-cutoff events that make an item relevant; ``None`` = default.
        same_product: same-product rule (``none``, ``id-prefix:N``, ``attribute:KEY``);
            ``None`` = default.
        attributes: type/colour/department keys of the baselines; ``None`` = default.
        text: the text encoder, or ``None`` for no text rows.
        image_tower: a ``local-dir`` image tower (``newarrivals align-images``); ``None``
            skips the image and fused rows.
        user_tower: also train and score the user tower (train period only).
        user_tower_minutes: training time cap per user tower.
        seeds: tie-break seeds averaged (``seed``, ``seed + 1``, ...); ``seed`` also seeds
            the user towers.
        seed: the first seed.
        spec: which metrics.
        reports_dir: where the JSON, Markdown and PNG go.
        json_path: also write the JSON here.
        cache_dir: the embedding cache (shared with ``build-index`` when pointed at its).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        progress: progress bars and per-epoch logs.

    Example:
        >>> EvaluateConfig(Path("data/hm"), seeds=3, seed=10).seed_list
        (10, 11, 12)
    """

    data: Path
    cutoff: str | None = None
    test_events: tuple[EventType, ...] | None = None
    same_product: str | None = None
    attributes: AttributeKeys | None = None
    text: TextEncoderConfig | None = field(default_factory=TextEncoderConfig)
    image_tower: Path | None = None
    user_tower: bool = True
    user_tower_minutes: float = 3.0
    seeds: int = 5
    seed: int = 0
    spec: MetricSpec = field(default_factory=MetricSpec)
    reports_dir: Path = Path("reports")
    json_path: Path | None = None
    cache_dir: Path | None = None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise ConfigError(f"seeds must be a positive integer, got {self.seeds}.")
        if self.cutoff is not None:
            parse_cutoff(self.cutoff)  # fail now, naming the value, not after reading the data
        if self.test_events is not None:
            object.__setattr__(self, "test_events", parse_events(self.test_events))
        if self.same_product is not None:
            SameProductRule(self.same_product)
        if not self.user_tower_minutes > 0:
            raise ConfigError(f"user_tower_minutes must be > 0, got {self.user_tower_minutes}.")
        if self.image_tower is not None and not self.image_tower.is_dir():
            raise ConfigError(
                f"image tower {self.image_tower} is not a directory; pass the folder written "
                "by `newarrivals align-images`."
            )

    @property
    def resolved_cache_dir(self) -> Path:
        return (self.cache_dir or DEFAULT_CACHE).expanduser()

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.seeds))

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": str(self.data),
            "cutoff": self.cutoff,
            "test_events": [e.value for e in self.test_events] if self.test_events else None,
            "same_product": self.same_product,
            "attributes": self.attributes.to_dict() if self.attributes else None,
            "text": self.text.to_dict() if self.text else None,
            "image_tower": str(self.image_tower) if self.image_tower else None,
            "user_tower": self.user_tower,
            "user_tower_minutes": self.user_tower_minutes,
            "seeds": self.seeds,
            "seed": self.seed,
            "ks": list(self.spec.ks),
            "hit_rate_ks": list(self.spec.hit_rate_ks),
            "reports_dir": str(self.reports_dir),
            "json_path": str(self.json_path) if self.json_path else None,
            "cache_dir": str(self.resolved_cache_dir),
            "device": self.device,
        }


@dataclass(frozen=True)
class DatasetProfile:
    """The dataset-dependent settings actually used (defaults filled in)."""

    kind: str
    name: str
    cutoff: datetime
    test_events: tuple[EventType, ...]
    same_product: SameProductRule
    keys: AttributeKeys

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "cutoff": self.cutoff.isoformat(),
            "test_events": [e.value for e in self.test_events],
            "same_product": self.same_product.spec,
            "attributes": self.keys.to_dict(),
        }

    def split(self, catalog: Catalog) -> ColdStartSplit:
        """The cold-start split of ``catalog`` these settings define."""
        return split_catalog(
            catalog, self.cutoff, test_events=self.test_events, same_product=self.same_product
        )


def resolve_profile(config: EvaluateConfig, catalog: Catalog) -> DatasetProfile:
    """Fill in the dataset defaults the config leaves open (see the module table).

    Raises:
        ConfigError: a generic catalogue without a cutoff.
    """
    data = config.data
    products = {p.product_id: p for p in catalog.products}
    if data.is_dir() and is_hm_layout(data):
        kind = "hm"
        cutoff: str | datetime = config.cutoff or HM_CUTOFF
        events: tuple[EventType, ...] = (EventType.PURCHASE,)
        rule = "id-prefix:7"
        keys = AttributeKeys("category[-1]", "colour", "department")
    elif data.is_dir() and (data / GROUND_TRUTH_FILE).is_file():
        kind = "synthetic"
        cutoff = config.cutoff or load_ground_truth(data).cutoff
        events = SYNTH_TEST_EVENTS
        rule = "none"
        keys = AttributeKeys("type", "colour", "style")
    else:
        kind = "generic"
        if config.cutoff is None:
            raise ConfigError(
                f"{data} is neither an H&M folder nor a synthetic catalogue, so there is no "
                "default cutoff; pass one (e.g. --cutoff 2020-06-22)."
            )
        cutoff = config.cutoff
        events = (EventType.PURCHASE,)
        has_code = any(p.attributes.get("product_code") for p in catalog.products)
        rule = "attribute:product_code" if has_code else "none"
        keys = default_keys_for(products)
    return DatasetProfile(
        kind=kind,
        name=data.resolve().name or kind,
        cutoff=parse_cutoff(cutoff),
        test_events=config.test_events or events,
        same_product=SameProductRule(config.same_product or rule),
        keys=config.attributes or keys,
    )


def encode_product_vectors(
    products: Sequence[Product],
    *,
    text: TextEncoderConfig | None,
    image_tower: Path | None,
    cache_dir: Path,
    device: str,
    progress: bool = False,
    notes: list[str] | None = None,
) -> dict[str, ProductVectors]:
    """Per-modality vectors of ``products`` through the embedding cache.

    What :func:`evaluate` scores, and what the ranker's cold-start lists are built from (so
    a ranker trained on them retrieves like the evaluation does).

    Args:
        products: What to encode.
        text: The text encoder, or ``None`` for no text vectors.
        image_tower: An ``align-images`` tower directory, or ``None`` for no photo vectors.
        cache_dir: The embedding cache (share ``evaluate``'s to encode nothing twice).
        device: A resolved torch device.
        progress: Progress bars.
        notes: When given, a line is added for photos that could not be decoded.

    Returns:
        ``"text"`` and/or ``"image"`` vectors (empty when neither is asked for).

    Raises:
        ConfigError: ``image_tower`` is not a directory.
    """
    ids = [p.product_id for p in products]
    out: dict[str, ProductVectors] = {}
    if text is not None:
        encoded = encode_products(
            products,
            text_encoder=TextEncoder(text, device),
            image_encoder=None,
            fusion=FusionConfig(),
            cache_root=cache_dir,
            progress=progress,
        )
        if encoded.text is not None:
            out["text"] = ProductVectors(ids, encoded.text, encoded.has_text)
    if image_tower is not None:
        if not Path(image_tower).is_dir():
            raise ConfigError(
                f"image tower {image_tower} is not a directory; pass the folder written by "
                "`newarrivals align-images`."
            )
        image_config = ImageEncoderConfig(model=f"local-dir:{Path(image_tower).resolve()}")
        encoded = encode_products(
            products,
            text_encoder=None,
            image_encoder=ImageEncoder(image_config, device),
            fusion=FusionConfig(),
            cache_root=cache_dir,
            progress=progress,
        )
        if encoded.image is not None:
            out["image"] = ProductVectors(ids, encoded.image, encoded.has_image)
        if encoded.failures and notes is not None:
            notes.append(f"{len(encoded.failures)} photos could not be decoded (no image vector)")
    for name, pv in out.items():
        logger.info(
            "%s vectors: %d of %d products (dim %d)", name, pv.present.sum(), len(ids), pv.dim
        )
    return out


def _encode(
    config: EvaluateConfig, products: Sequence[Product], device: str, notes: list[str]
) -> dict[str, ProductVectors]:
    """Per-modality vectors for ``products`` as ``config`` asks, through its cache."""
    if config.image_tower is None:
        notes.append("no image tower given (--image-tower): image and fused rows skipped")
    return encode_product_vectors(
        products,
        text=config.text,
        image_tower=config.image_tower,
        cache_dir=config.resolved_cache_dir,
        device=device,
        progress=config.progress,
        notes=notes,
    )


def _tower_fit(config: EvaluateConfig, device: str) -> UserTowerFit:
    """Adapt :func:`~newarrivals.indexer.towers.user_training.train_user_tower` to
    :data:`UserTowerFit`."""
    from newarrivals.indexer.towers.user_config import UserTowerConfig
    from newarrivals.indexer.towers.user_training import train_user_tower

    tower_config = UserTowerConfig(
        seed=config.seed, device=device, max_minutes=config.user_tower_minutes
    )

    def fit(split: ColdStartSplit, vectors: ProductVectors) -> tuple[np.ndarray, dict[str, Any]]:
        ids = [p for p, ok in zip(vectors.product_ids, vectors.present.tolist(), strict=True) if ok]
        matrix = vectors.vectors[vectors.present]
        tower, report = train_user_tower(
            split.train, ids, matrix, tower_config, progress=config.progress
        )
        user_ids, user_vecs = tower.user_vectors(split.train, ids, matrix, now=split.cutoff)
        row = {u: i for i, u in enumerate(user_ids)}
        out = np.zeros((len(split.test_users), vectors.dim), dtype=np.float64)
        for i, user in enumerate(split.test_users):
            if user in row:
                out[i] = user_vecs[row[user]]
        keep = ("epochs", "best_epoch", "seconds", "valid_recall", "valid_recall_baseline")
        return out, {"config": tower_config.to_dict()} | {k: report.get(k) for k in keep}

    return fit


def _methods(
    config: EvaluateConfig,
    profile: DatasetProfile,
    vectors: dict[str, ProductVectors],
    device: str,
    notes: list[str],
) -> list[tuple[str, ColdItemMethod]]:
    """(kind, method) pairs in report order."""
    methods: list[tuple[str, ColdItemMethod]] = [
        (BASELINE, RandomBaseline()),
        (BASELINE, TypePopularity(profile.keys)),
        (BASELINE, AttributeAffinity(profile.keys)),
    ]
    variants: dict[str, ProductVectors] = dict(vectors)
    text, image = vectors.get("text"), vectors.get("image")
    if text is not None and image is not None:
        if text.dim == image.dim:
            variants["fused-sum"] = fuse_vectors(text, image, centre=False)
            variants["fused-centred"] = fuse_vectors(text, image, centre=True)
        else:
            notes.append(
                f"text dim {text.dim} != image dim {image.dim}: sum fusions skipped, late "
                "(score) fusion only"
            )
    for name, pv in variants.items():
        methods.append(("content", MeanVectorMethod(f"{name} / mean user vector", pv)))
        methods.append(("content", MaxSimilarityMethod(f"{name} / max similarity", pv)))
    if text is not None and image is not None:
        for label, cls in (
            ("mean user vector", MeanVectorMethod),
            ("max similarity", MaxSimilarityMethod),
        ):
            parts = (cls(f"text / {label}", text), cls(f"image / {label}", image))
            methods.append(("content", LateFusionMethod(f"fused-late / {label}", parts)))
    if config.user_tower:
        try:
            fit = _tower_fit(config, device)
        except ImportError as exc:
            notes.append(f"user tower rows skipped: {exc}")
        else:
            for name in ("text", "image", "fused-centred"):
                if name in variants:
                    methods.append(
                        ("user tower", UserTowerMethod(f"{name} / user tower", variants[name], fit))
                    )
    else:
        notes.append("user tower rows disabled (--no-user-tower)")
    return methods


def evaluate(
    config: EvaluateConfig, *, extra_methods: Sequence[ColdItemMethod] = ()
) -> EvaluationReport:
    """Run the cold-start protocol on ``config.data`` and write the report files.

    Args:
        config: what to evaluate and where to write.
        extra_methods: more methods to score after the built-in ones (e.g. the ranker's
            two-stage pipeline); their ``kind`` in the report is ``extra``.

    Returns:
        The report (already written to ``config.reports_dir``, and to ``config.json_path``).

    Raises:
        CatalogError: no test user (nothing to evaluate) or no interactions.
        ConfigError: a bad setting (see :class:`EvaluateConfig`).
    """
    started = time.perf_counter()
    catalog = read_catalog(config.data)
    if not catalog.interactions:
        raise CatalogError(
            f"{config.data} has no interactions; evaluation needs a purchase/event history."
        )
    profile = resolve_profile(config, catalog)
    split = profile.split(catalog)
    logger.info("split %s: %s", profile.name, split.summary())
    if not split.test_users:
        raise CatalogError(
            f"no test users at cutoff {profile.cutoff.date()}: nobody with a history before it "
            f"has a {'/'.join(e.value for e in profile.test_events)} of a cold item after it. "
            "Move the cutoff or widen --test-events."
        )
    notes: list[str] = []
    device = resolve_device(config.device)
    products = {p.product_id: p for p in catalog.products}
    needed = {item.product_id for item in split.train} | set(split.cold_ids)
    to_encode = [p for p in catalog.products if p.product_id in needed]
    vectors = _encode(config, to_encode, device, notes)
    if "text" in vectors:
        no_text = int((vectors["text"].rows(split.cold_ids) < 0).sum())
        if no_text:
            notes.append(
                f"{no_text} of {len(split.cold_ids)} cold items have no text: text-only rows "
                "rank them last"
            )

    data = EvalData(split=split, products=products, vectors=vectors)
    truth = split.truth_indices()
    subset = np.array([u not in split.same_product_users for u in split.test_users])
    methods = _methods(config, profile, vectors, device, notes)
    methods += [("extra", m) for m in extra_methods]
    results: list[MethodResult] = []
    tower_info: dict[str, Any] = {}
    for kind, method in methods:
        t0 = time.perf_counter()
        try:
            scores = method.score(data)
        except (NewArrivalsError, RuntimeError, ValueError) as exc:
            if kind != "user tower":
                raise
            notes.append(f"{method.name} skipped: training failed ({exc})")
            logger.warning("%s skipped: %s", method.name, exc)
            continue
        per_user = score_rankings(scores, truth, spec=config.spec, seeds=config.seed_list)
        result = MethodResult.from_per_user(
            method.name, kind, per_user, subset, time.perf_counter() - t0
        )
        results.append(result)
        if isinstance(method, UserTowerMethod):
            tower_info[method.name] = dict(method.info)
        logger.info(
            "%-40s R@20 %.4f N@20 %.4f (%.1fs)",
            method.name,
            result.metrics.get("recall@20", float("nan")),
            result.metrics.get("ndcg@20", float("nan")),
            result.seconds,
        )

    best, margins = compute_margins(results)
    _, subset_margins = compute_margins(results, users=subset)
    recorded = {
        "evaluate": config.to_dict(),
        "dataset": profile.to_dict(),
        "device": device,
        "libraries": library_versions(),
        "user_towers": tower_info,
        "seconds": round(time.perf_counter() - started, 1),
    }
    report = EvaluationReport(
        dataset=profile.name,
        split=split.summary(),
        spec=config.spec,
        results=tuple(results),
        seed=config.seed,
        seeds=config.seed_list,
        config=recorded,
        n_subset_users=int(subset.sum()),
        best_method=best,
        margins=margins,
        subset_margins=subset_margins if subset.sum() < len(subset) else (),
        notes=tuple(notes),
    )
    written = report.write(config.reports_dir, json_path=config.json_path)
    logger.info("wrote %s", ", ".join(str(p) for p in written.values()))
    return report
