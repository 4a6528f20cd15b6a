"""The first run: catalogue -> towers -> index -> ranker -> evaluation -> API with its web page.

Every step writes its output under ``workdir`` with a stamp (``steps/<name>.json``) that
records the inputs it was made from; a re-run skips a step whose stamp still matches, so a
second ``make demo`` goes straight to serving. ``data`` switches the synthetic catalogue for
a catalogue in the generic schema or the H&M layout.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from newarrivals.indexer.catalog.hm import is_hm_layout
from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.schema import Catalog
from newarrivals.indexer.catalog.synth import (
    GROUND_TRUTH_FILE,
    SynthConfig,
    generate,
    write_synthetic,
)
from newarrivals.indexer.encoders import ImageEncoderConfig
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.index.build import BuildConfig, build_index
from newarrivals.indexer.index.version import latest_version
from newarrivals.indexer.validation import require_int, require_positive

__all__ = ["DemoConfig", "DemoResult", "prepare_demo", "run_demo"]

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoConfig:
    """What the demo prepares, at what size and time budget, and where it serves.

    Args:
        workdir: everything the demo writes (reused by the next run).
        data: a catalogue (generic schema or H&M layout); ``None`` generates the synthetic one.
        cutoff: first day of the "new arrivals" period; default: the synthetic catalogue's,
            H&M's 2020-06-22, or for a generic catalogue the day before which 90% of the
            products launched.
        products, users, seed: size and seed of the synthetic catalogue.
        tower_minutes: training budget of the image tower.
        user_tower_minutes: training budget of each user tower in the evaluation.
        ranker_minutes: training budget of the ranker (and of its distilled student).
        eval_seeds: tie-break seeds averaged in the evaluation table.
        serve: start the API and its web page at the end.
        host, port: where it listens.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    workdir: Path = Path("demo")
    data: Path | None = None
    cutoff: str | None = None
    products: int = 2000
    users: int = 300
    seed: int = 0
    tower_minutes: float = 1.5
    user_tower_minutes: float = 0.5
    ranker_minutes: float = 1.5
    eval_seeds: int = 2
    serve: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"

    def __post_init__(self) -> None:
        require_int("products", self.products, minimum=50)
        require_int("users", self.users, minimum=10)
        require_int("eval_seeds", self.eval_seeds, minimum=1)
        require_int("port", self.port, minimum=1)
        for name in ("tower_minutes", "user_tower_minutes", "ranker_minutes"):
            require_positive(name, getattr(self, name))


@dataclass
class DemoResult:
    """Where the prepared pieces are, and how long preparing them took."""

    catalog: Path
    cutoff: datetime
    image_tower: Path
    index: Path
    ranker: Path | None
    evaluation_table: str
    api_key_file: Path
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)


class _Steps:
    """Stamped steps: a step runs unless its stamp records the same inputs."""

    def __init__(self, workdir: Path, say: Say) -> None:
        self.dir = workdir / "steps"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.say = say
        self.seconds: dict[str, float] = {}
        self.total = 6

    def done(self, name: str, inputs: dict[str, Any]) -> bool:
        stamp = self.dir / f"{name}.json"
        return stamp.is_file() and json.loads(stamp.read_text()).get("key") == _key(inputs)

    def mark(self, name: str, inputs: dict[str, Any], seconds: float) -> None:
        self.seconds[name] = seconds
        stamp = {"key": _key(inputs), "inputs": inputs, "seconds": round(seconds, 1)}
        (self.dir / f"{name}.json").write_text(json.dumps(stamp, indent=2, default=str))

    def run(
        self, n: int, name: str, what: str, inputs: dict[str, Any], work: Callable[[], Any]
    ) -> bool:
        """Run ``work`` unless stamped; returns whether it ran."""
        if self.done(name, inputs):
            self.say(
                f"[{n}/{self.total}] {what}: reusing the previous run's ({self.dir / name}.json)"
            )
            return False
        self.say(f"[{n}/{self.total}] {what}")
        t0 = time.perf_counter()
        work()
        took = time.perf_counter() - t0
        self.mark(name, inputs, took)
        self.say(f"      done in {took:.0f} s")
        return True


def _key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _catalog_digest(path: Path) -> str:
    """Names, sizes and mtimes of the catalogue's files: changes when the catalogue does."""
    files = sorted(p for p in (path.rglob("*") if path.is_dir() else [path]) if p.is_file())
    h = hashlib.sha256()
    for f in files:
        if f.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}:
            continue  # photos are hashed by the build's own cache; listing 100k is enough cost
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _default_cutoff(config: DemoConfig, data: Path, catalog: Catalog) -> str | None:
    """The generic-catalogue default: the day before which 90% of products launched."""
    if config.cutoff or is_hm_layout(data) or (data / GROUND_TRUTH_FILE).is_file():
        return config.cutoff
    launches = sorted(p.launched_at for p in catalog.products if p.launched_at)
    if len(launches) < 20:
        raise ConfigError(
            f"{data}: only {len(launches)} products have a launch date, too few to split old "
            "from new products; pass --cutoff YYYY-MM-DD."
        )
    return launches[int(0.9 * len(launches))].date().isoformat()


def prepare_demo(config: DemoConfig, say: Say = print) -> DemoResult:
    """Run every preparation step (or reuse it) and return where the pieces are."""
    from newarrivals.indexer.evaluation import EvaluateConfig, evaluate, resolve_profile
    from newarrivals.indexer.towers.image import align_images
    from newarrivals.indexer.towers.image_config import ImageTowerConfig
    from newarrivals.ranker.serving.request import SERVING_RETRIEVAL

    t_start = time.perf_counter()
    work = config.workdir
    steps = _Steps(work, say)

    # 1. The catalogue.
    if config.data is None:
        data = work / f"catalog-{config.products}-{config.users}-s{config.seed}"
        synth_inputs = {"products": config.products, "users": config.users, "seed": config.seed}

        def make_catalog() -> None:
            synth = generate(
                SynthConfig(n_products=config.products, n_users=config.users, seed=config.seed)
            )
            write_synthetic(synth, data)

        steps.run(
            1,
            "catalog",
            f"generating the synthetic catalogue into {data}",
            synth_inputs,
            make_catalog,
        )
    else:
        data = config.data
        say(f"[1/{steps.total}] using the catalogue at {data}")
    catalog = read_catalog(data)
    cutoff_text = _default_cutoff(config, data, catalog)
    profile = resolve_profile(EvaluateConfig(data=data, cutoff=cutoff_text, text=None), catalog)
    cutoff = profile.cutoff
    old = sum(1 for p in catalog.products if p.launched_at is None or p.launched_at < cutoff)
    say(
        f"      {len(catalog.products):,} products ({len(catalog.products) - old:,} launched on or "
        f"after {cutoff.date()}: the new arrivals), {len(catalog.interactions):,} interactions"
    )
    data_key = _catalog_digest(data)

    # 2. The image tower, trained on products launched before the cutoff only.
    tower = work / "towers" / "image"
    tower_inputs = {"data": data_key, "cutoff": cutoff, "minutes": config.tower_minutes}
    tower_config = ImageTowerConfig(
        architecture="mobilenetv3-small",
        image_size=96,
        max_minutes=config.tower_minutes,
        seed=config.seed,
        device=config.device,
    )

    def train_tower() -> None:
        report = align_images(
            data,
            tower,
            tower_config,
            cache_dir=work / "index" / "cache",
            launched_before=cutoff,
        )
        say(report.format())

    steps.run(
        2,
        "image-tower",
        f"training the image tower for up to {config.tower_minutes:g} min (photos -> text space)",
        tower_inputs,
        train_tower,
    )

    # 3. The index: text + trained photo tower, FAISS.
    index = work / "index"
    index_inputs = {"data": data_key, "tower": tower_inputs}

    def build() -> None:
        summary = build_index(
            BuildConfig(
                catalog=data,
                out=index,
                image=ImageEncoderConfig(model=f"local-dir:{tower}"),
                device=config.device,
            )
        )
        say(summary.format())

    if not steps.run(
        3, "index", "building the index (text + photo vectors, FAISS)", index_inputs, build
    ):
        say(f"      serving {latest_version(index).name}")

    # 4. The ranker.
    ranker_dir = work / "ranker"
    ranker_inputs = {
        "index": index_inputs,
        "minutes": config.ranker_minutes,
        "seed": config.seed,
        "blend": SERVING_RETRIEVAL,
    }
    steps.run(
        4,
        "ranker",
        f"training the ranker for up to {config.ranker_minutes:g} min, distilling it, then "
        "fitting its blend for the index's own retrieval",
        ranker_inputs,
        lambda: _train_ranker(config, data, index, tower, ranker_dir, cutoff, say),
    )

    # 5. The cold-start evaluation (it trains its own user towers, on pre-cutoff events).
    reports = work / "reports"
    eval_inputs = {
        "index": index_inputs,
        "ranker": ranker_inputs,
        "user_minutes": config.user_tower_minutes,
        "seeds": config.eval_seeds,
    }
    table_file = reports / "demo-evaluation.md"

    def run_evaluation() -> None:
        report = evaluate(
            EvaluateConfig(
                data=data,
                cutoff=cutoff_text,
                image_tower=tower,
                user_tower_minutes=config.user_tower_minutes,
                seeds=config.eval_seeds,
                seed=config.seed,
                reports_dir=reports,
                cache_dir=index / "cache",
                device=config.device,
            )
        )
        table_file.parent.mkdir(parents=True, exist_ok=True)
        table_file.write_text(report.format_table() + "\n")

    steps.run(
        5,
        "evaluation",
        "cold-start evaluation (baselines vs content methods)",
        eval_inputs,
        run_evaluation,
    )
    table = table_file.read_text() if table_file.is_file() else ""
    say(table)

    from newarrivals.ranker.crossencoder.model import MANIFEST_FILE as RANKER_MANIFEST

    # 6. The API key for the write/admin routes and the page's user views.
    key_file = work / "api_key"
    if not key_file.is_file():
        key_file.write_text(secrets.token_urlsafe(24) + "\n")
        key_file.chmod(0o600)
    return DemoResult(
        catalog=data,
        cutoff=cutoff,
        image_tower=tower,
        index=index,
        ranker=next(
            (d for d in (ranker_dir / "onnx", ranker_dir) if (d / RANKER_MANIFEST).is_file()),
            None,
        ),
        evaluation_table=table,
        api_key_file=key_file,
        seconds=time.perf_counter() - t_start,
        steps=steps.seconds,
    )


def _train_ranker(
    config: DemoConfig,
    data: Path,
    index: Path,
    tower: Path,
    out: Path,
    cutoff: datetime,
    say: Say,
) -> None:
    """A 2-layer MiniLM cross-encoder on replay lists, distilled into a small student, and
    the student's blend fitted on cold-start lists from the serving index's own first stage
    (so ``rerank=true`` orders by the blend; README, *The blend serving applies*).

    It runs the pipelines behind ``train-ranker`` and ``distill-ranker`` (the functions
    those commands call), so the demo trains exactly what a user's commands would.
    """
    from newarrivals.indexer.errors import NewArrivalsError
    from newarrivals.indexer.evaluation.protocol import parse_cutoff
    from newarrivals.ranker.config import RankerConfig, RankerTrainConfig
    from newarrivals.ranker.serving.request import SERVING_RETRIEVAL
    from newarrivals.ranker.training.distill import DistillConfig
    from newarrivals.ranker.training.pipeline import (
        DistillJob,
        TrainRankerJob,
        run_blend_only,
        run_distill,
        run_train_ranker,
    )
    from newarrivals.ranker.training.student_init import StudentConfig

    teacher = out.parent / "ranker-teacher"
    minutes = config.ranker_minutes / 2
    before = parse_cutoff(cutoff.date())  # what ``--before YYYY-MM-DD`` would give
    say(f"      train-ranker: replay lists, 2 layers, up to {minutes:g} min -> {teacher}")
    run_train_ranker(
        TrainRankerJob(
            catalog=data,
            out=teacher,
            lists="replay",
            index=index,
            before=before,
            model=RankerConfig(
                num_layers=2, context_tokens=48, candidate_tokens=32, seed=config.seed
            ),
            train=RankerTrainConfig(max_minutes=minutes, seed=config.seed),
            device=config.device,
        )
    )
    # Context encoded once per request, int8 ONNX: the variant that meets the latency
    # target (README, Ranker speed).
    say(f"      distill-ranker: shared-context student, int8 ONNX, up to {minutes:g} min -> {out}")
    run_distill(
        DistillJob(
            teacher=teacher,
            catalog=data,
            out=out,
            index=index,
            before=before,
            student=StudentConfig(architecture="shared-context", seed=config.seed),
            distill=DistillConfig(max_minutes=minutes, seed=config.seed),
            onnx=("int8",),
            device=config.device,
        )
    )
    student = out / "onnx" if (out / "onnx").is_dir() else out
    say(f"      train-ranker --blend-only: the blend for {student} ({SERVING_RETRIEVAL} lists)")
    try:
        run_blend_only(
            TrainRankerJob(
                catalog=data,
                out=student,
                before=before,
                retrieval=SERVING_RETRIEVAL,
                image_tower=tower,
                cache_dir=index / "cache",
                # The synthetic catalogue's history before the cutoff is a few months long.
                windows=3,
                window_days=20.0,
                train=RankerTrainConfig(max_lists_per_user=3, val_fraction=0.3, seed=config.seed),
                device=config.device,
                progress=False,
            )
        )
    except NewArrivalsError as exc:
        # A small catalogue may leave no validation list to fit on; serving then re-ranks
        # by the ranker alone and says so (rerank_note), which is no reason to stop here.
        say(f"      no blend was fitted ({exc}): rerank=true will order by the ranker alone")


def run_demo(config: DemoConfig, say: Say = print) -> DemoResult:
    """Prepare everything, then (unless ``config.serve`` is off) serve it until interrupted."""
    result = prepare_demo(config, say)
    spent = ", ".join(f"{k} {v:.0f} s" for k, v in result.steps.items()) or "all reused"
    say(f"preparation took {result.seconds:.0f} s ({spent})")
    if not config.serve:
        return result
    import uvicorn

    from newarrivals.service.api import ServeSettings, create_app

    settings = ServeSettings(
        index=result.index,
        ranker=result.ranker,
        api_key_file=result.api_key_file,
        journal=config.workdir / "journal.sqlite",
        device="cpu" if config.device == "auto" else config.device,
    )
    say(
        f"[6/6] serving on http://{config.host}:{config.port}/ "
        "(web page: launch planner, shopper view)"
    )
    say(
        f"      API key for user data and writes: {result.api_key_file.read_text().strip()} "
        f"(in {result.api_key_file})"
    )
    say("      Ctrl-C stops it; `make demo` again reuses everything prepared above.")
    uvicorn.run(create_app(settings), host=config.host, port=config.port, log_level="warning")
    return result
