"""The ranker pipelines behind ``train-ranker`` and ``distill-ranker``, as library functions.

Each job is a typed config (:class:`TrainRankerJob`, :class:`DistillJob`); the CLI parses its
flags into one and calls :func:`run_train_ranker`, :func:`run_blend_only` or
:func:`run_distill`, and ``demo`` and the benchmarks call the same functions. Each writes an
artifact whose manifest carries a :class:`~.record.TrainingRecord`, and returns what the
command prints.

Heavy libraries (torch, transformers) load only when a pipeline runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.schema import Catalog, EventType, Interaction, Product
from newarrivals.indexer.device import resolve_device
from newarrivals.indexer.encoders.text import TextEncoderConfig
from newarrivals.indexer.errors import ConfigError, NewArrivalsError
from newarrivals.indexer.evaluation import EvaluateConfig, resolve_profile
from newarrivals.indexer.evaluation.methods import ProductVectors
from newarrivals.indexer.evaluation.run import DEFAULT_CACHE, encode_product_vectors
from newarrivals.indexer.index.version import IndexVersion
from newarrivals.ranker.base import PairRanker
from newarrivals.ranker.config import RankerConfig, RankerTrainConfig
from newarrivals.ranker.crossencoder.model import CrossEncoderRanker
from newarrivals.ranker.export import export_onnx
from newarrivals.ranker.loading import load_ranker
from newarrivals.ranker.onnx_sessions import configure_threads
from newarrivals.ranker.training.cold_start import ColdStartListConfig, build_cold_start_lists
from newarrivals.ranker.training.distill import DistillConfig, fit_student
from newarrivals.ranker.training.fit import fit_cold_start_ranker, fit_ranker
from newarrivals.ranker.training.record import LIST_KINDS, TrainingRecord, read_training_record
from newarrivals.ranker.training.rerank_blend import blend_for_ranker
from newarrivals.ranker.training.student_init import StudentConfig
from newarrivals.ranker.training.teacher_lists import cold_start_lists, replay_lists

__all__ = [
    "BlendOnlyResult",
    "DistillJob",
    "DistillResult",
    "TrainRankerJob",
    "TrainRankerResult",
    "list_product_vectors",
    "list_text_encoder",
    "run_blend_only",
    "run_distill",
    "run_train_ranker",
]

#: ``text_model`` that means "no text vectors in the lists".
NO_TEXT: Final = "none"


def list_text_encoder(name: str | None) -> TextEncoderConfig | None:
    """The text encoder of cold-start lists: ``None`` the bundled MiniLM, ``"none"`` none."""
    if name == NO_TEXT:
        return None
    return TextEncoderConfig(model=name) if name else TextEncoderConfig()


def list_product_vectors(
    products: Sequence[Product],
    *,
    text_model: str | None,
    image_tower: Path | None,
    cache_dir: Path | None,
    device: str,
    progress: bool = False,
) -> dict[str, ProductVectors]:
    """The product vectors cold-start lists are built from, encoded as ``evaluate`` does.

    Args:
        products: What to encode.
        text_model: As :func:`list_text_encoder` reads it.
        image_tower: An ``align-images`` tower directory, or ``None`` for no photo vectors.
        cache_dir: The embedding cache (``None``: the evaluation's default).
        device: A resolved torch device.
        progress: Progress bars.

    Raises:
        ConfigError: neither text nor photo vectors were asked for.
    """
    out = encode_product_vectors(
        products,
        text=list_text_encoder(text_model),
        image_tower=image_tower,
        cache_dir=(cache_dir or DEFAULT_CACHE).expanduser(),
        device=device,
        progress=progress,
    )
    if not out:
        raise ConfigError("no product vectors: keep the text encoder or pass an image tower.")
    return out


@dataclass(frozen=True)
class TrainRankerJob:
    """What ``train-ranker`` does: the lists, the model, the training run.

    Args:
        catalog: The catalogue with the interactions.
        out: The artifact directory to write (``run_blend_only``: the ranker to fit for).
        lists: ``cold-start`` (pseudo cold-start windows before the cutoff) or ``replay``
            (next purchases, hard negatives from ``index``).
        index: The index root or version (replay).
        before: Train only on interactions before it (cold-start default: the dataset's
            evaluation cutoff).
        image_tower: A trained image tower folder (cold-start).
        text_model: The text model of cold-start lists (``None``: bundled MiniLM;
            ``"none"``: no text vectors).
        retrieval: The first stage hard negatives come from (cold-start).
        windows: Pseudo cold-start windows.
        window_days: Days per window.
        positive_events: Events that make a positive (``None``: the evaluation's test events
            for cold-start, ``train``'s for replay).
        max_users: Users per window (a subsample).
        positives: ``any`` bought product makes a list, or only those ``retrieved``.
        model: The ranker to build (base model, layers, token budgets, seed).
        train: How to train it; its ``positive_events`` and ``device`` are replaced by the
            resolved ones.
        cache_dir: The embedding cache (cold-start; ``None``: the evaluation's default).
        threads: torch CPU threads (``None``: the library default).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        progress: Progress bars while encoding.
    """

    catalog: Path
    out: Path
    lists: str = "cold-start"
    index: Path | None = None
    before: datetime | None = None
    image_tower: Path | None = None
    text_model: str | None = None
    retrieval: str = "fused-late/max"
    windows: int = 4
    window_days: float = 91.0
    positive_events: tuple[EventType, ...] | None = None
    max_users: int | None = None
    positives: str = "any"
    model: RankerConfig = field(default_factory=RankerConfig)
    train: RankerTrainConfig = field(default_factory=RankerTrainConfig)
    cache_dir: Path | None = None
    threads: int | None = None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.lists not in LIST_KINDS:
            raise ConfigError(f"lists must be one of {list(LIST_KINDS)}, got {self.lists!r}.")


@dataclass(frozen=True)
class TrainRankerResult:
    """What :func:`run_train_ranker` wrote: the artifact, its record and (cold-start) blend."""

    artifact: Path
    record: TrainingRecord
    blend: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, object]:
        """What ``train-ranker`` prints."""
        out: dict[str, object] = {"artifact": str(self.artifact), **self.record.report}
        if self.blend is not None:
            out["blend"] = dict(self.blend)
        return out


@dataclass(frozen=True)
class BlendOnlyResult:
    """What :func:`run_blend_only` wrote: the blend file and the fitted blend."""

    blend_file: Path
    blend: Mapping[str, Any]

    def to_dict(self) -> dict[str, object]:
        """What ``train-ranker --blend-only`` prints."""
        return {"blend_file": str(self.blend_file), **self.blend}


@dataclass(frozen=True)
class _ColdStartInputs:
    """The catalogue, the pre-cutoff events and the product vectors cold-start lists read."""

    products: dict[str, Product]
    events: list[Interaction]
    vectors: dict[str, ProductVectors]
    cutoff: datetime
    train: RankerTrainConfig
    lists: ColdStartListConfig


def _train_config(
    job: TrainRankerJob, default_events: tuple[EventType, ...] | None, device: str
) -> RankerTrainConfig:
    """``job.train`` with the resolved device and positive events."""
    events = job.positive_events or default_events or job.train.positive_events
    return replace(job.train, positive_events=events, device=device)


def _cold_start_inputs(job: TrainRankerJob, catalog: Catalog, device: str) -> _ColdStartInputs:
    before = None if job.before is None else job.before.isoformat()
    profile = resolve_profile(EvaluateConfig(data=job.catalog, cutoff=before, text=None), catalog)
    cutoff = profile.cutoff
    train = _train_config(job, profile.test_events, device)
    known = [p for p in catalog.products if p.launched_at is None or p.launched_at < cutoff]
    return _ColdStartInputs(
        products={p.product_id: p for p in catalog.products},
        events=[e for e in catalog.interactions if e.timestamp < cutoff],
        vectors=list_product_vectors(
            known,
            text_model=job.text_model,
            image_tower=job.image_tower,
            cache_dir=job.cache_dir,
            device=device,
            progress=job.progress,
        ),
        cutoff=cutoff,
        train=train,
        lists=ColdStartListConfig(
            windows=job.windows,
            window_days=job.window_days,
            retrieval=job.retrieval,
            max_users=job.max_users,
            positives=job.positives,
        ),
    )


def _set_torch_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def run_train_ranker(job: TrainRankerJob) -> TrainRankerResult:
    """Build lists, train and calibrate a cross-encoder, and save it (cold-start: with its
    blend) into ``job.out``.

    Raises:
        NewArrivalsError: replay lists without an index, or no lists to train on.
    """
    _set_torch_threads(job.threads)
    catalog = read_catalog(job.catalog)
    device = resolve_device(job.device)
    if job.lists == "replay":
        if job.index is None:
            raise NewArrivalsError("--lists replay needs --index (hard negatives come from it).")
        events = catalog.interactions
        if job.before is not None:
            events = [e for e in events if e.timestamp < job.before]
        train = _train_config(job, None, device)
        version = IndexVersion.load(job.index)
        products = {p.product_id: p for p in catalog.products}
        ranker, report = fit_ranker(events, products, version.store, job.model, train)
        record = TrainingRecord(lists="replay", train_config=train, index=version.version)
        blend = None
    else:
        inputs = _cold_start_inputs(job, catalog, device)
        ranker, report, blend, built = fit_cold_start_ranker(
            inputs.events,
            inputs.products,
            inputs.vectors,
            inputs.cutoff,
            job.model,
            inputs.train,
            inputs.lists,
        )
        record = TrainingRecord(
            lists="cold-start",
            train_config=inputs.train,
            cutoff=inputs.cutoff,
            lists_config=inputs.lists,
            windows=list(built.windows),
            image_tower=str(job.image_tower) if job.image_tower else None,
            # None: the bundled MiniLM. Distillation rebuilds the lists with it.
            text_model=job.text_model,
        )
    summary = report.to_dict()
    history = summary.pop("history")
    record = replace(record, report=summary, history=history)
    out = ranker.save(job.out, extra=record.to_dict())
    if blend is None:
        return TrainRankerResult(artifact=out, record=record)
    blend.save(out)
    return TrainRankerResult(artifact=out, record=record, blend=blend.to_dict())


def run_blend_only(job: TrainRankerJob) -> BlendOnlyResult:
    """Fit the blend for the ranker already in ``job.out`` on the cold-start lists'
    validation users (nothing trained), and write ``blend.json`` next to it.

    Raises:
        NewArrivalsError: ``job.out`` holds no pair ranker, or there are no lists to fit on.
    """
    _set_torch_threads(job.threads)
    catalog = read_catalog(job.catalog)
    inputs = _cold_start_inputs(job, catalog, resolve_device(job.device))
    ranker = load_ranker(job.out, device=inputs.train.device)
    if not isinstance(ranker, PairRanker):
        raise NewArrivalsError(f"{job.out} holds no pair ranker to fit a blend for.")
    built = build_cold_start_lists(
        inputs.events,
        inputs.products,
        inputs.vectors,
        inputs.cutoff,
        inputs.train,
        inputs.lists,
        max_context_items=ranker.config.max_context_items,
    )
    blend = blend_for_ranker(ranker, built, inputs.products, inputs.train)
    return BlendOnlyResult(blend_file=blend.save(job.out), blend=blend.to_dict())


@dataclass(frozen=True)
class DistillJob:
    """What ``distill-ranker`` does: a teacher, its lists rebuilt, a student, an export.

    Args:
        teacher: The ranker artifact to learn from.
        catalog: The catalogue with the interactions.
        out: The student artifact directory to write.
        index: The index root or version (teachers trained on replay lists).
        before: Use only interactions before it (default: the teacher's cutoff).
        image_tower: Cold-start lists: the image tower (default: the teacher's).
        text_model: Cold-start lists: the text model (default: the teacher's).
        cache_dir: The embedding cache (cold-start; ``None``: the evaluation's default).
        student: The student's shape.
        distill: How to distil; its ``device`` is replaced by the resolved one.
        onnx: Precisions to also export the student in, into ``out/onnx`` (empty: none).
        threads: CPU threads (``None``: the library default).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    teacher: Path
    catalog: Path
    out: Path
    index: Path | None = None
    before: datetime | None = None
    image_tower: Path | None = None
    text_model: str | None = None
    cache_dir: Path | None = None
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    onnx: Sequence[str] = ()
    threads: int | None = None
    device: str = "auto"


@dataclass(frozen=True)
class DistillResult:
    """What :func:`run_distill` wrote: the student, its record and its ONNX export."""

    artifact: Path
    record: TrainingRecord
    onnx: Path | None = None

    def to_dict(self) -> dict[str, object]:
        """What ``distill-ranker`` prints."""
        out: dict[str, object] = {"artifact": str(self.artifact), **self.record.report}
        if self.onnx is not None:
            out["onnx"] = str(self.onnx)
        return out


def run_distill(job: DistillJob) -> DistillResult:
    """Rebuild the teacher's lists with its recorded recipe and user split, distil a student
    on them, save it into ``job.out`` and (``job.onnx``) export it.

    Raises:
        NewArrivalsError: a cold-start teacher without a cutoff and no ``before``, or a
            replay teacher without ``index``.
    """
    configure_threads(job.threads)
    device = resolve_device(job.device)
    distill_config = replace(job.distill, device=device)
    # The teacher's own list recipe and user split, so its held-out users stay held out.
    recorded = read_training_record(job.teacher)
    train_config = replace(recorded.train_config, device=device)
    teacher = CrossEncoderRanker.load(job.teacher, device=device)
    catalog = read_catalog(job.catalog)
    products = {p.product_id: p for p in catalog.products}
    max_items = teacher.config.max_context_items
    if recorded.cold_start:
        cutoff = job.before or recorded.cutoff
        if cutoff is None:
            raise NewArrivalsError("the teacher records no cutoff; pass --before.")
        tower = job.image_tower or recorded.image_tower
        known = [p for p in catalog.products if p.launched_at is None or p.launched_at < cutoff]
        text_model = job.text_model or recorded.text_model
        vectors = list_product_vectors(
            known,
            text_model=text_model,
            image_tower=Path(tower) if tower else None,
            cache_dir=job.cache_dir,
            device=device,
        )
        train, val, _ = cold_start_lists(
            catalog.interactions,
            products,
            vectors,
            cutoff,
            train_config,
            recorded.lists_config or ColdStartListConfig(),
            max_context_items=max_items,
        )
        lists = TrainingRecord(lists="cold-start", cutoff=cutoff, text_model=text_model)
    else:
        if job.index is None:
            raise NewArrivalsError(
                "the teacher was trained on replay lists: pass --index (hard negatives come "
                "from it)."
            )
        version = IndexVersion.load(job.index)
        events = [e for e in catalog.interactions if job.before is None or e.timestamp < job.before]
        train, val = replay_lists(
            events, products, version.store, train_config, max_context_items=max_items
        )
        lists = TrainingRecord(lists="replay", index=version.version)
    student, report = fit_student(teacher, train, val, products, job.student, distill_config)
    summary = report.to_dict()
    summary.pop("history")
    record = replace(
        lists,
        teacher=str(job.teacher),
        teacher_architecture=teacher.architecture,
        student_config=job.student.to_dict(),
        distill_config=distill_config.to_dict(),
        train_config=train_config,
        report=summary,
    )
    extra = record.to_dict()
    out = student.save(job.out, extra=extra)
    if not job.onnx:
        return DistillResult(artifact=out, record=record)
    onnx = export_onnx(student, out / "onnx", precisions=job.onnx, extra=extra)
    return DistillResult(artifact=out, record=record, onnx=onnx)
