"""The ``newarrivals`` command line: parse arguments into configs, call one library function.

Logging and environment defaults are set here and only here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from newarrivals.indexer import NewArrivalsError
from newarrivals.indexer.ann import AnnConfig
from newarrivals.indexer.build import ENCODER_RUNTIMES, BuildConfig, build_index
from newarrivals.indexer.encoders import FusionConfig, ImageEncoderConfig, TextEncoderConfig
from newarrivals.indexer.readers import read_catalog
from newarrivals.indexer.retrieval import (
    PopularFallback,
    recommend_for_user,
    similar_products,
)
from newarrivals.indexer.schema import Product
from newarrivals.indexer.store import Candidate, SearchFilter
from newarrivals.indexer.synth import SynthConfig, generate, write_synthetic
from newarrivals.indexer.users import UserVectors
from newarrivals.indexer.version import IndexVersion
from newarrivals.service.demo import DemoConfig, run_demo

if TYPE_CHECKING:
    from collections.abc import Mapping

    from newarrivals.indexer.evaluation import EvaluationReport, ProductVectors
    from newarrivals.indexer.schema import Interaction
    from newarrivals.ranker import RankerTrainConfig
    from newarrivals.ranker.evaluation import TwoStageRun
    from newarrivals.ranker.trainer import ColdStartListConfig

__all__ = ["main"]

logger = logging.getLogger("newarrivals")


def _add_synth(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("synth", help="generate the synthetic catalogue (the embedded default)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--products", type=int, default=2000)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["jsonl", "parquet", "csv"], default="jsonl")
    p.set_defaults(func=_cmd_synth)


def _add_build(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("build-index", help="bulk (re)build: catalogue -> vectors -> index version")
    p.add_argument(
        "--catalog",
        type=Path,
        required=True,
        help="generic-schema folder/file or an H&M-layout folder",
    )
    p.add_argument("--out", type=Path, required=True, help="index root (versions go under it)")
    p.add_argument(
        "--text-model",
        default=TextEncoderConfig.model,
        help="sentence-transformers model: bundled (default), local path or name",
    )
    p.add_argument("--no-text", action="store_true", help="index photos only")
    p.add_argument(
        "--image-model",
        default=ImageEncoderConfig.model,
        help="open_clip model name, local-dir:PATH, or builtin:tiny (default)",
    )
    p.add_argument(
        "--image-pretrained", default=None, help="open_clip pretrained tag or local checkpoint path"
    )
    p.add_argument("--no-image", action="store_true", help="index text only")
    p.add_argument("--fusion", choices=["concat", "sum"], default="concat")
    p.add_argument("--text-weight", type=float, default=FusionConfig.text_weight)
    p.add_argument("--image-weight", type=float, default=FusionConfig.image_weight)
    p.add_argument(
        "--ann",
        default=None,
        help="FAISS factory string (Flat, HNSW32, IVF1024,Flat, IVF1024,SQ8 ...); "
        "default picks by catalogue size",
    )
    p.add_argument("--nprobe", type=int, default=AnnConfig.nprobe)
    p.add_argument("--ef-search", type=int, default=AnnConfig.ef_search)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: <out>/cache")
    p.add_argument("--strict", action="store_true", help="fail on the first bad row")
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument(
        "--encoder-runtime",
        choices=list(ENCODER_RUNTIMES),
        default="auto",
        help="auto: on the CPU, encode with verified ONNX copies of the encoders kept in the "
        "cache (written after a torch build); torch: always torch",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--summary-json", type=Path, default=None, help="write the summary as JSON")
    p.set_defaults(func=_cmd_build)


def _add_query_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--category", default=None, help="category path prefix, e.g. 'Women > Tops'")
    p.add_argument("--min-price", type=float, default=None)
    p.add_argument("--max-price", type=float, default=None)
    p.add_argument("--launched-after", default=None, help="ISO date: new arrivals only")
    p.add_argument("--include-unavailable", action="store_true")


def _add_recommend(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("recommend", help="top-k products for a user from their history")
    p.add_argument("--index", type=Path, required=True, help="index root or version directory")
    p.add_argument("--catalog", type=Path, required=True, help="catalogue with the interactions")
    p.add_argument("--user", action="append", required=True, help="user id (repeatable)")
    p.add_argument("--include-purchased", action="store_true")
    _add_query_filters(p)
    p.set_defaults(func=_cmd_recommend)

    s = sub.add_parser("similar", help="products nearest a product")
    s.add_argument("--index", type=Path, required=True)
    s.add_argument("--catalog", type=Path, default=None, help="for titles in the output")
    s.add_argument("--product", required=True)
    _add_query_filters(s)
    s.set_defaults(func=_cmd_similar)

    i = sub.add_parser("info", help="print an index version's manifest")
    i.add_argument("--index", type=Path, required=True)
    i.set_defaults(func=_cmd_info)


def _list_text_config(name: str | None) -> TextEncoderConfig | None:
    """The text encoder of cold-start lists: ``None`` the bundled MiniLM, ``"none"`` none."""
    if name == "none":
        return None
    return TextEncoderConfig(model=name) if name else TextEncoderConfig()


def _utc_day(flag: str, value: str | None) -> datetime | None:
    """An ISO date or datetime from the command line; naive means UTC."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise NewArrivalsError(
            f"{flag} must be an ISO date like 2020-06-22, got {value!r}."
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _filter_from(args: argparse.Namespace) -> SearchFilter:
    launched = _utc_day("--launched-after", args.launched_after)
    return SearchFilter(
        category=args.category,
        min_price=args.min_price,
        max_price=args.max_price,
        launched_after=launched,
        available_only=not args.include_unavailable,
    )


def _cmd_synth(args: argparse.Namespace) -> int:
    synth = generate(SynthConfig(n_products=args.products, n_users=args.users, seed=args.seed))
    out = write_synthetic(synth, args.out, fmt=args.format)
    print(
        f"wrote {len(synth.catalog.products)} products, {len(synth.catalog.interactions)} "
        f"events, {len(synth.new_arrival_ids)} new arrivals (after {synth.cutoff.date()}) "
        f"to {out}"
    )
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    config = BuildConfig(
        catalog=args.catalog,
        out=args.out,
        text=None if args.no_text else TextEncoderConfig(model=args.text_model),
        image=None
        if args.no_image
        else ImageEncoderConfig(model=args.image_model, pretrained=args.image_pretrained),
        fusion=FusionConfig(
            mode=args.fusion, text_weight=args.text_weight, image_weight=args.image_weight
        ),
        ann=AnnConfig(factory=args.ann, nprobe=args.nprobe, ef_search=args.ef_search)
        if args.ann
        else None,
        device=args.device,
        cache_dir=args.cache_dir,
        strict=args.strict,
        chunk_size=args.chunk_size,
        progress=not args.no_progress,
        encoder_runtime=args.encoder_runtime,
    )
    summary = build_index(config)
    print(summary.format())
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2))
    return 0


def _titles(catalog_path: Path | None) -> dict[str, Product]:
    if catalog_path is None:
        return {}
    return {p.product_id: p for p in read_catalog(catalog_path).products}


def _print_candidates(cands: Sequence[Candidate], products: dict[str, Product]) -> None:
    for rank, c in enumerate(cands, 1):
        p = products.get(c.product_id)
        title = (p.title or "(no text)") if p else ""
        launched = p.launched_at.date().isoformat() if p and p.launched_at else ""
        print(f"  {rank:>3}. {c.product_id:<14} {c.score:6.3f}  {launched:<10}  {title[:60]}")


def _cmd_recommend(args: argparse.Namespace) -> int:
    version = IndexVersion.load(args.index)
    catalog = read_catalog(args.catalog)
    users = UserVectors(version.store)
    users.update_many(catalog.interactions)
    products = {p.product_id: p for p in catalog.products}
    flt = _filter_from(args)
    fallback = PopularFallback.fit(version.store, catalog.interactions)
    for user_id in args.user:
        result = recommend_for_user(
            version.store,
            users,
            user_id,
            args.k,
            flt,
            fallback=fallback,
            exclude_purchased=not args.include_purchased,
        )
        state = users.state(user_id)
        recent = ", ".join(
            products[p].title[:30] or p
            for p in (state.recent[:3] if state else [])
            if p in products
        )
        print(f"user {user_id} (index {version.version}); recently: {recent or '-'}")
        if result.fallback:
            print(f"  (fallback) {result.reason}")
        _print_candidates(result.candidates, products)
    return 0


def _cmd_similar(args: argparse.Namespace) -> int:
    version = IndexVersion.load(args.index)
    cands = similar_products(version.store, args.product, args.k, _filter_from(args))
    _print_candidates(cands, _titles(args.catalog))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    version = IndexVersion.load(args.index, verify=False)
    manifest = {k: v for k, v in version.manifest.items() if k != "content_hashes"}
    print(json.dumps(manifest, indent=2))
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="first run: catalogue -> image tower -> index -> ranker -> evaluation -> API + page",
    )
    p.add_argument("--workdir", type=Path, default=DemoConfig.workdir)
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a catalogue (generic schema or H&M layout) instead of the synthetic one",
    )
    p.add_argument("--cutoff", default=None, help="first day of the new arrivals (ISO date)")
    p.add_argument("--products", type=int, default=DemoConfig.products)
    p.add_argument("--users", type=int, default=DemoConfig.users)
    p.add_argument("--seed", type=int, default=DemoConfig.seed)
    p.add_argument("--tower-minutes", type=float, default=DemoConfig.tower_minutes)
    p.add_argument("--ranker-minutes", type=float, default=DemoConfig.ranker_minutes)
    p.add_argument("--user-tower-minutes", type=float, default=DemoConfig.user_tower_minutes)
    p.add_argument("--eval-seeds", type=int, default=DemoConfig.eval_seeds)
    p.add_argument("--no-serve", action="store_true", help="prepare everything, then exit")
    p.add_argument("--host", default=DemoConfig.host)
    p.add_argument("--port", type=int, default=DemoConfig.port)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(
        DemoConfig(
            workdir=args.workdir,
            data=args.data,
            cutoff=args.cutoff,
            products=args.products,
            users=args.users,
            seed=args.seed,
            tower_minutes=args.tower_minutes,
            ranker_minutes=args.ranker_minutes,
            user_tower_minutes=args.user_tower_minutes,
            eval_seeds=args.eval_seeds,
            serve=not args.no_serve,
            host=args.host,
            port=args.port,
            device=args.device,
        )
    )
    return 0


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="cold-start evaluation: baselines vs content methods (Recall/NDCG/HitRate)",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="catalogue: generic-schema folder, H&M-layout folder or synthetic catalogue",
    )
    p.add_argument(
        "--cutoff",
        default=None,
        help="first day of the test period (default: H&M 2020-06-22; synthetic: its "
        "ground_truth.json; required otherwise)",
    )
    p.add_argument(
        "--test-events",
        default=None,
        help="events that make a cold item relevant, e.g. purchase,cart or all "
        "(default: H&M purchase; synthetic purchase,cart)",
    )
    p.add_argument(
        "--same-product",
        default=None,
        help="same-product rule: none, id-prefix:N or attribute:KEY (default per dataset)",
    )
    p.add_argument("--image-tower", type=Path, default=None, help="trained image tower folder")
    p.add_argument("--text-model", default=None, help="text model (default: bundled MiniLM)")
    p.add_argument("--no-text", action="store_true", help="skip the text rows")
    p.add_argument("--no-user-tower", action="store_true", help="skip the user-tower rows")
    p.add_argument("--tower-minutes", type=float, default=3.0, help="training cap per tower")
    p.add_argument("--seeds", type=int, default=5, help="tie-break seeds averaged")
    p.add_argument("--seed", type=int, default=0, help="first seed (also seeds the towers)")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON table here")
    p.add_argument("--reports", type=Path, default=Path("reports"), help="report folder")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="embedding cache (default ~/.cache/newarrivals/embeddings)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true")
    r = p.add_argument_group("two-stage re-ranking (retrieve the top N, re-rank with a ranker)")
    r.add_argument(
        "--ranker", type=Path, default=None, help="ranker artifact (train- or distill-ranker)"
    )
    r.add_argument("--rerank-n", default="50,100", help="re-ranking depths, comma-separated")
    r.add_argument(
        "--rerank-retrieval",
        default="fused-late/max",
        help="first stage: fused-late/max (default; needs --image-tower), fused-concat/mean "
        "(what the serving index retrieves), text/max, ...",
    )
    r.add_argument(
        "--rerank-users", type=int, default=None, help="re-rank a seeded sample of test users"
    )
    r.add_argument("--mmr-lambda", type=float, default=0.7, help="relevance weight of MMR rows")
    r.add_argument("--no-mmr", action="store_true", help="no MMR rows")
    r.add_argument("--no-blend", action="store_true", help="ignore the ranker's blend.json")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    # Imported here: the evaluation stack (torch, matplotlib) is slow to import and only
    # this command needs it.
    from newarrivals.indexer.evaluation import EvaluateConfig, evaluate, parse_events

    text = None
    if not args.no_text:
        text = TextEncoderConfig(model=args.text_model) if args.text_model else TextEncoderConfig()
    run = _two_stage_run(args) if args.ranker is not None else None
    report = evaluate(
        EvaluateConfig(
            data=args.data,
            cutoff=args.cutoff,
            test_events=parse_events(args.test_events) if args.test_events else None,
            same_product=args.same_product,
            text=text,
            image_tower=args.image_tower,
            user_tower=not args.no_user_tower,
            user_tower_minutes=args.tower_minutes,
            seeds=args.seeds,
            seed=args.seed,
            reports_dir=args.reports,
            json_path=args.json,
            cache_dir=args.cache_dir,
            device=args.device,
            progress=not args.no_progress,
        ),
        extra_methods=run.methods() if run is not None else (),
    )
    print(report.format_table())
    if run is not None:
        _print_rerank(report, run, args.reports)
    return 0


def _two_stage_run(args: argparse.Namespace) -> TwoStageRun:
    """The two-stage rows of ``evaluate --ranker``."""
    from newarrivals.indexer.device import resolve_device
    from newarrivals.ranker import configure_threads, load_ranker
    from newarrivals.ranker.blend import Blend
    from newarrivals.ranker.evaluation import RankerLike, TwoStageConfig, TwoStageRun

    try:
        depths = tuple(int(d) for d in str(args.rerank_n).split(",") if d.strip())
    except ValueError:
        raise NewArrivalsError(
            f"--rerank-n must be comma-separated integers like 50,100, got {args.rerank_n!r}."
        ) from None
    config = TwoStageConfig(
        retrieval=args.rerank_retrieval,
        depths=depths,
        mmr_lambda=None if args.no_mmr else args.mmr_lambda,
        max_users=args.rerank_users,
        seed=args.seed,
    )
    configure_threads(args.threads)
    ranker = load_ranker(args.ranker, device=resolve_device(args.device))
    if not isinstance(ranker, RankerLike):
        raise NewArrivalsError(
            f"the ranker in {args.ranker} has no score(context, texts); pass a ranker artifact "
            "written by train-ranker or distill-ranker."
        )
    blend = None if args.no_blend else Blend.load(args.ranker)
    return TwoStageRun(ranker, config, blend=blend, label=args.ranker.name or "ranker")


def _print_rerank(report: EvaluationReport, run: TwoStageRun, reports: Path) -> None:
    """Paired margins of the two-stage rows over retrieval alone, and diversity; saved as
    ``rerank-<dataset>.json`` next to the evaluation report."""
    from newarrivals.ranker.evaluation import rerank_margins

    margins = rerank_margins(report.results, run)
    print(f"\ntwo-stage margins, paired over {run.user_mask.sum()} users:")
    for m in margins:
        print(
            f"  {m.method:<44} {m.metric:<10} {m.method_value:.4f} vs {m.reference_value:.4f}"
            f"  margin {m.margin:+.4f} (s.e. {m.stderr:.4f})  vs {m.reference}"
        )
    key = f"diversity@{run.config.diversity_k}"
    for name, value in run.diversity.items():
        print(f"  {key} {name:<44} {value:.4f}")
    out = reports / f"rerank-{report.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"run": run.info(), "margins": [m.to_dict() for m in margins]}
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


def _add_align(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "align-images",
        help="train an image tower into the text encoder's space (photos near their text)",
    )
    p.add_argument("--catalog", type=Path, required=True, help="generic-schema or H&M folder")
    p.add_argument("--out", type=Path, required=True, help="tower directory (local-dir: format)")
    p.add_argument(
        "--arch",
        default="mobilenetv3-small",
        help="mobilenetv3-small (default), mobilenetv3-large, convnext-atto, resnet18, "
        "vit-micro, vit-tiny, vit-small, or open_clip:NAME",
    )
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    p.add_argument("--epochs", type=int, default=1000, help="upper bound on epochs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--valid-size", type=int, default=None, help="held-out count (overrides)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument(
        "--init", default=None, help="fine-tune from: local-dir:PATH, a .safetensors, or a tag"
    )
    p.add_argument("--launched-before", default=None, help="ISO date: train on older products only")
    p.add_argument(
        "--text-model",
        default=TextEncoderConfig.model,
        help="sentence-transformers model: bundled (default), local path or name",
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="text embedding cache")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-json", type=Path, default=None, help="write the report as JSON")
    p.set_defaults(func=_cmd_align)


def _cmd_align(args: argparse.Namespace) -> int:
    # Imported here: the training module pulls in open_clip, which other commands skip.
    from newarrivals.indexer.image_tower import ImageTowerConfig, align_images

    launched = _utc_day("--launched-before", args.launched_before)
    config = ImageTowerConfig(
        architecture=args.arch,
        image_size=args.image_size,
        batch_size=args.batch_size,
        lr=args.lr,
        max_minutes=args.minutes,
        max_epochs=args.epochs,
        valid_fraction=args.valid_fraction,
        valid_size=args.valid_size,
        augment=not args.no_augment,
        init=args.init,
        seed=args.seed,
        device=args.device,
    )
    report = align_images(
        args.catalog,
        args.out,
        config,
        text_config=TextEncoderConfig(model=args.text_model),
        cache_dir=args.cache_dir,
        launched_before=launched,
        progress=not args.no_progress,
    )
    print(report.format())
    if args.report_json:
        args.report_json.write_text(json.dumps(report.to_dict(), indent=2))
    return 0


def _add_train_users(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train-users", help="train the user tower (history -> product space) and save it"
    )
    p.add_argument("--index", type=Path, required=True, help="index root or version directory")
    p.add_argument("--catalog", type=Path, required=True, help="catalogue with the interactions")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    p.add_argument("--before", default=None, help="ISO date: train only on interactions before it")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--minutes", type=float, default=None, help="training time limit")
    p.add_argument("--model", choices=["gru", "transformer"], default="gru")
    p.add_argument("--max-history", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=_cmd_train_users)


def _cmd_train_users(args: argparse.Namespace) -> int:
    # Imported here: torch is slow to import and only this command trains.
    from newarrivals.indexer.device import resolve_device
    from newarrivals.indexer.user_tower import UserTowerConfig, train_user_tower

    config = UserTowerConfig(
        epochs=args.epochs,
        max_minutes=args.minutes,
        model=args.model,
        max_history=args.max_history,
        seed=args.seed,
        device=resolve_device(args.device),
    )
    version = IndexVersion.load(args.index)
    events = read_catalog(args.catalog).interactions
    before = _utc_day("--before", args.before)
    if before is not None:
        events = [e for e in events if e.timestamp < before]
    ids = version.store.product_ids()
    tower, report = train_user_tower(events, ids, version.store.vectors_for(ids), config)
    out = tower.save(args.out)
    summary = {k: v for k, v in report.items() if k != "history"}
    print(json.dumps({"artifact": str(out), "index": version.version, **summary}, indent=2))
    return 0


def _add_train_ranker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train-ranker",
        help="fine-tune the cross-encoder ranker on lists built from interactions and save it",
    )
    p.add_argument("--catalog", type=Path, required=True, help="catalogue with the interactions")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    p.add_argument(
        "--lists",
        choices=["cold-start", "replay"],
        default="cold-start",
        help="cold-start: pseudo cold-start windows before the cutoff, hard negatives from the "
        "evaluation's retrieval over new products (default); replay: next purchases, hard "
        "negatives from an index (--index)",
    )
    p.add_argument("--index", type=Path, default=None, help="index root or version (replay)")
    p.add_argument(
        "--before",
        default=None,
        help="ISO date: train only on interactions before it (cold-start default: the "
        "dataset's evaluation cutoff, H&M 2020-06-22, synthetic its ground_truth.json)",
    )
    p.add_argument("--image-tower", type=Path, default=None, help="trained image tower folder")
    p.add_argument("--text-model", default=None, help="text model (default: bundled MiniLM)")
    p.add_argument(
        "--retrieval",
        default="fused-late/max",
        help="first stage hard negatives come from (cold-start): fused-late/max (default), "
        "fused-concat/mean (the serving index's own; a blend fitted after it is the one "
        "`serve` applies to rerank=true), text/max, image/max, fused-centred/mean, ...",
    )
    p.add_argument("--windows", type=int, default=4, help="pseudo cold-start windows")
    p.add_argument("--window-days", type=float, default=91.0, help="days per window")
    p.add_argument(
        "--positive-events",
        default=None,
        help="events that make a positive, e.g. purchase,cart (default: the evaluation's)",
    )
    p.add_argument("--max-users", type=int, default=None, help="users per window (subsample)")
    p.add_argument(
        "--positives",
        choices=["any", "retrieved"],
        default="any",
        help="cold-start: which bought products make lists: any, or only those in the "
        "retrieval's top --candidates (the ones re-ranking can move; hard negatives come from "
        "there, so 'any' lets a list be solved by dissimilarity)",
    )
    p.add_argument("--lists-per-user", type=int, default=10, help="lists per user (and window)")
    p.add_argument("--hard", type=int, default=15, help="hard negatives per list")
    p.add_argument("--random", type=int, default=4, help="random negatives per list")
    p.add_argument(
        "--candidates", type=int, default=50, help="retrieval depth hard negatives come from"
    )
    p.add_argument(
        "--base-model",
        default=None,
        help="bundled MiniLM (default) or a local model directory",
    )
    p.add_argument("--layers", type=int, default=None, help="keep the first N encoder layers")
    p.add_argument("--context-tokens", type=int, default=64)
    p.add_argument("--candidate-tokens", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument(
        "--patience", type=int, default=2, help="epochs without a better validation NDCG to stop"
    )
    p.add_argument("--minutes", type=float, default=None, help="training time limit")
    p.add_argument("--batch-lists", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="encoder learning rate")
    p.add_argument("--head-lr", type=float, default=2e-3, help="head and pooler learning rate")
    p.add_argument(
        "--keep-cls", action="store_true", help="keep MiniLM's pretrained [CLS] attention"
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out users (val+holdout)")
    p.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (cold-start)")
    p.add_argument(
        "--blend-only",
        action="store_true",
        help="cold-start: train nothing; fit the blend for the ranker already in --out (e.g. a "
        "distilled one) on the same validation users, and write OUT/blend.json",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train_ranker)


def _cmd_train_ranker(args: argparse.Namespace) -> int:
    # Imported here: torch and transformers are slow to import and only this command trains.
    from newarrivals.indexer.device import resolve_device
    from newarrivals.indexer.evaluation import EvaluateConfig, parse_events, resolve_profile
    from newarrivals.ranker import RankerConfig, RankerTrainConfig, fit_ranker
    from newarrivals.ranker.evaluation import encode_product_vectors
    from newarrivals.ranker.trainer import ColdStartListConfig, fit_cold_start_ranker

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    config = RankerConfig(
        base_model=str(args.base_model) if args.base_model else RankerConfig.base_model,
        num_layers=args.layers,
        context_tokens=args.context_tokens,
        candidate_tokens=args.candidate_tokens,
        seed=args.seed,
    )
    catalog = read_catalog(args.catalog)
    products = {p.product_id: p for p in catalog.products}
    device = resolve_device(args.device)
    if args.lists == "replay":
        if args.index is None:
            raise NewArrivalsError("--lists replay needs --index (hard negatives come from it).")
        before = _utc_day("--before", args.before)
        events = catalog.interactions
        if before is not None:
            events = [e for e in events if e.timestamp < before]
    else:
        profile = resolve_profile(
            EvaluateConfig(data=args.catalog, cutoff=args.before, text=None), catalog
        )
        cutoff = profile.cutoff
        events = [e for e in catalog.interactions if e.timestamp < cutoff]
    positives = (
        parse_events(args.positive_events)
        if args.positive_events
        else (RankerTrainConfig.positive_events if args.lists == "replay" else profile.test_events)
    )
    train_config = RankerTrainConfig(
        retrieval_candidates=args.candidates,
        hard_negatives=args.hard,
        random_negatives=args.random,
        positive_events=positives,
        max_lists_per_user=args.lists_per_user,
        epochs=args.epochs,
        patience=args.patience,
        max_minutes=args.minutes,
        batch_lists=args.batch_lists,
        learning_rate=args.lr,
        head_learning_rate=args.head_lr,
        open_cls=not args.keep_cls,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=device,
    )
    extra: dict[str, object] = {"train_config": train_config.to_dict()}
    if args.lists == "replay":
        version = IndexVersion.load(args.index)
        ranker, report = fit_ranker(events, products, version.store, config, train_config)
        extra["index"] = version.version
        blend = None
    else:
        lists_config = ColdStartListConfig(
            windows=args.windows,
            window_days=args.window_days,
            retrieval=args.retrieval,
            max_users=args.max_users,
            positives=args.positives,
        )
        known = [p for p in catalog.products if p.launched_at is None or p.launched_at < cutoff]
        vectors = encode_product_vectors(
            known,
            text=_list_text_config(args.text_model),
            image_tower=args.image_tower,
            cache_dir=(args.cache_dir or Path("~/.cache/newarrivals/embeddings")).expanduser(),
            device=device,
            progress=not args.no_progress,
        )
        if args.blend_only:
            return _blend_only(args, events, products, vectors, cutoff, train_config, lists_config)
        ranker, report, blend, built = fit_cold_start_ranker(
            events, products, vectors, cutoff, config, train_config, lists_config
        )
        extra.update(
            {
                "lists": "cold-start",
                "cutoff": cutoff.isoformat(),
                "lists_config": lists_config.to_dict(),
                "windows": built.windows,
                "image_tower": str(args.image_tower) if args.image_tower else None,
                # None: the bundled MiniLM. distill-ranker rebuilds the lists with it.
                "text_model": args.text_model,
            }
        )
    summary = {k: v for k, v in report.to_dict().items() if k != "history"}
    out = ranker.save(args.out, extra={**extra, **summary, "history": report.to_dict()["history"]})
    result: dict[str, object] = {"artifact": str(out), **summary}
    if blend is not None:
        blend.save(out)
        result["blend"] = blend.to_dict()
    print(json.dumps(result, indent=2, default=str))
    return 0


def _blend_only(
    args: argparse.Namespace,
    events: Sequence[Interaction],
    products: dict[str, Product],
    vectors: Mapping[str, ProductVectors],
    cutoff: datetime,
    train_config: RankerTrainConfig,
    lists_config: ColdStartListConfig,
) -> int:
    """``train-ranker --blend-only``: a blend for the ranker in ``--out``, nothing trained."""
    from newarrivals.ranker import PairRanker, load_ranker
    from newarrivals.ranker.trainer import blend_for_ranker, build_cold_start_lists

    ranker = load_ranker(args.out, device=train_config.device)
    if not isinstance(ranker, PairRanker):
        raise NewArrivalsError(f"{args.out} holds no pair ranker to fit a blend for.")
    built = build_cold_start_lists(
        events,
        products,
        vectors,
        cutoff,
        train_config,
        lists_config,
        max_context_items=ranker.config.max_context_items,
    )
    blend = blend_for_ranker(ranker, built, products, train_config)
    path = blend.save(args.out)
    print(json.dumps({"blend_file": str(path), **blend.to_dict()}, indent=2))
    return 0


def _add_distill_ranker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "distill-ranker",
        help="distil a trained ranker into a small fast student (optionally ONNX / int8)",
    )
    p.add_argument("--teacher", type=Path, required=True, help="ranker artifact to learn from")
    p.add_argument("--catalog", type=Path, required=True, help="catalogue with the interactions")
    p.add_argument("--out", type=Path, required=True, help="student artifact directory to write")
    p.add_argument(
        "--index",
        type=Path,
        default=None,
        help="index root or version (teachers trained on replay lists)",
    )
    p.add_argument(
        "--before",
        default=None,
        help="ISO date: use only interactions before it (default: the teacher's cutoff)",
    )
    p.add_argument(
        "--image-tower",
        type=Path,
        default=None,
        help="cold-start lists: trained image tower (default: the teacher's)",
    )
    p.add_argument(
        "--text-model", default=None, help="cold-start lists: text model (default: the teacher's)"
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (cold-start)")
    p.add_argument("--hidden", type=int, default=128, help="student hidden size")
    p.add_argument("--layers", type=int, default=2, help="student encoder layers")
    p.add_argument("--heads", type=int, default=2, help="student attention heads")
    p.add_argument("--context-tokens", type=int, default=48)
    p.add_argument("--candidate-tokens", type=int, default=24)
    p.add_argument("--init", choices=["pca", "random"], default="pca")
    p.add_argument(
        "--architecture",
        choices=["bert", "shared-context"],
        default="bert",
        help="shared-context encodes the user context once per request (about 3x faster)",
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--minutes", type=float, default=None, help="student training time limit")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-lists", type=int, default=16)
    p.add_argument("--label-weight", type=float, default=0.2, help="CE on the true positive")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--onnx",
        nargs="+",
        choices=["fp32", "int8"],
        default=None,
        help="also export the student for ONNX Runtime into OUT/onnx (default precision: "
        "int8 when exported)",
    )
    p.set_defaults(func=_cmd_distill_ranker)


def _cmd_distill_ranker(args: argparse.Namespace) -> int:
    # Imported here: torch and transformers are slow to import and only this command uses them.
    from newarrivals.indexer.device import resolve_device
    from newarrivals.ranker import (
        CrossEncoderRanker,
        DistillConfig,
        RankerTrainConfig,
        StudentConfig,
        configure_threads,
        export_onnx,
        fit_student,
    )
    from newarrivals.ranker.distill import cold_start_lists, replay_lists
    from newarrivals.ranker.evaluation import encode_product_vectors
    from newarrivals.ranker.model import read_manifest
    from newarrivals.ranker.trainer import ColdStartListConfig

    configure_threads(args.threads)
    device = resolve_device(args.device)
    student_config = StudentConfig(
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        context_tokens=args.context_tokens,
        candidate_tokens=args.candidate_tokens,
        init=args.init,
        architecture=args.architecture,
        seed=args.seed,
    )
    distill_config = DistillConfig(
        epochs=args.epochs,
        max_minutes=args.minutes,
        learning_rate=args.lr,
        batch_lists=args.batch_lists,
        label_weight=args.label_weight,
        seed=args.seed,
        device=device,
    )
    # The teacher's own list recipe and user split, so its held-out users stay held out.
    training = read_manifest(args.teacher).get("training", {})
    train_config = RankerTrainConfig.from_dict(
        {**training.get("train_config", {}), "device": device}
    )
    teacher = CrossEncoderRanker.load(args.teacher, device=device)
    catalog = read_catalog(args.catalog)
    products = {p.product_id: p for p in catalog.products}
    max_items = teacher.config.max_context_items
    extra: dict[str, object] = {"teacher": str(args.teacher), "lists": "replay"}
    if training.get("lists") == "cold-start":
        cutoff = _utc_day("--before", args.before or str(training["cutoff"]))
        if cutoff is None:
            raise NewArrivalsError("the teacher records no cutoff; pass --before.")
        tower = args.image_tower or training.get("image_tower")
        known = [p for p in catalog.products if p.launched_at is None or p.launched_at < cutoff]
        text_model = args.text_model or training.get("text_model")
        vectors = encode_product_vectors(
            known,
            text=_list_text_config(None if text_model is None else str(text_model)),
            image_tower=Path(tower) if tower else None,
            cache_dir=(args.cache_dir or Path("~/.cache/newarrivals/embeddings")).expanduser(),
            device=device,
        )
        lists_config = ColdStartListConfig(**training.get("lists_config", {}))
        train, val, _ = cold_start_lists(
            catalog.interactions,
            products,
            vectors,
            cutoff,
            train_config,
            lists_config,
            max_context_items=max_items,
        )
        extra.update(
            {"lists": "cold-start", "cutoff": cutoff.isoformat(), "text_model": text_model}
        )
    else:
        if args.index is None:
            raise NewArrivalsError(
                "the teacher was trained on replay lists: pass --index (hard negatives come "
                "from it)."
            )
        version = IndexVersion.load(args.index)
        before = _utc_day("--before", args.before)
        events = [e for e in catalog.interactions if before is None or e.timestamp < before]
        train, val = replay_lists(
            events, products, version.store, train_config, max_context_items=max_items
        )
        extra["index"] = version.version
    student, report = fit_student(teacher, train, val, products, student_config, distill_config)
    summary = {k: v for k, v in report.to_dict().items() if k != "history"}
    extra.update(
        {
            "teacher_architecture": teacher.architecture,
            "student_config": student_config.to_dict(),
            "distill_config": distill_config.to_dict(),
            "train_config": train_config.to_dict(),
            **summary,
        }
    )
    out = student.save(args.out, extra=extra)
    result: dict[str, object] = {"artifact": str(out), **summary}
    if args.onnx:
        result["onnx"] = str(export_onnx(student, out / "onnx", precisions=args.onnx, extra=extra))
    print(json.dumps(result, indent=2))
    return 0


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP API over an index (FastAPI + uvicorn); every setting can also come from "
        "a NEWARRIVALS_* variable (flags win)",
    )
    p.add_argument(
        "--index", type=Path, default=None, help="index root or version (default demo/index)"
    )
    p.add_argument("--catalog", type=Path, default=None, help="default: the manifest's")
    p.add_argument("--journal", type=Path, default=None, help="default <index>/journal.sqlite")
    p.add_argument("--ranker", type=Path, default=None, help="ranker artifact (for rerank)")
    p.add_argument(
        "--api-key-file", type=Path, default=None, help="file with the write/admin API key"
    )
    p.add_argument(
        "--read-only", action="store_const", const=True, default=None, help="no write routes"
    )
    p.add_argument("--device", default=None, help="encoders' and ranker's device (cpu)")
    p.add_argument("--threads", type=int, default=None, help="encoder and ranker CPU threads")
    p.add_argument(
        "--retrieval",
        choices=["mean", "late-max"],
        default=None,
        help="first stage: mean (user vector, ANN; default) or late-max (per-modality "
        "max-similarity to recent products, exact; README)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default: /metrics counts and times them, and a log "
        "line per request costs the hot path)",
    )
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    # Imported here: the web stack is only needed by this command.
    import uvicorn
    from pydantic import ValidationError

    from newarrivals.service.api import ServeSettings, create_app

    flags = {
        "index": args.index,
        "catalog": args.catalog,
        "journal": args.journal,
        "ranker": args.ranker,
        "api_key_file": args.api_key_file,
        "read_only": args.read_only,
        "device": args.device,
        "threads": args.threads,
        "retrieval": args.retrieval,
    }
    try:
        settings = ServeSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        raise NewArrivalsError(f"invalid serve settings: {exc}") from None
    app = create_app(settings)
    # log_config=None: uvicorn's loggers go through the logging set up in main().
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=args.access_log)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="newarrivals",
        description="Content-based recommendations for brand-new products.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_synth(sub)
    _add_build(sub)
    _add_recommend(sub)
    _add_demo(sub)
    _add_align(sub)
    _add_evaluate(sub)
    _add_train_users(sub)
    _add_train_ranker(sub)
    _add_distill_ranker(sub)
    _add_serve(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The default models ship inside packages; never let a library reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        return int(args.func(args))
    except NewArrivalsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
