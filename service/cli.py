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
    p = sub.add_parser("demo", help="synthetic catalogue -> index -> recommendations")
    p.add_argument("--workdir", type=Path, default=DemoConfig.workdir)
    p.add_argument("--products", type=int, default=DemoConfig.products)
    p.add_argument("--users", type=int, default=DemoConfig.users)
    p.add_argument("--seed", type=int, default=DemoConfig.seed)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(
        DemoConfig(
            workdir=args.workdir,
            products=args.products,
            users=args.users,
            seed=args.seed,
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
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    # Imported here: the evaluation stack (torch, matplotlib) is slow to import and only
    # this command needs it.
    from newarrivals.indexer.evaluation import EvaluateConfig, evaluate, parse_events

    text = None
    if not args.no_text:
        text = TextEncoderConfig(model=args.text_model) if args.text_model else TextEncoderConfig()
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
        )
    )
    print(report.format_table())
    return 0


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
    p.add_argument("--index", type=Path, required=True, help="index root or version directory")
    p.add_argument("--catalog", type=Path, required=True, help="catalogue with the interactions")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    p.add_argument("--before", default=None, help="ISO date: train only on interactions before it")
    p.add_argument(
        "--base-model",
        default=None,
        help="bundled MiniLM (default) or a local model directory",
    )
    p.add_argument("--layers", type=int, default=None, help="keep the first N encoder layers")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--minutes", type=float, default=None, help="training time limit")
    p.add_argument(
        "--candidates", type=int, default=50, help="retrieval depth hard negatives come from"
    )
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=_cmd_train_ranker)


def _cmd_train_ranker(args: argparse.Namespace) -> int:
    # Imported here: torch and transformers are slow to import and only this command trains.
    from dataclasses import replace

    from newarrivals.indexer.device import resolve_device
    from newarrivals.ranker import RankerConfig, RankerTrainConfig, fit_ranker

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    config = RankerConfig(num_layers=args.layers, seed=args.seed)
    if args.base_model is not None:
        config = replace(config, base_model=str(args.base_model))
    train_config = RankerTrainConfig(
        retrieval_candidates=args.candidates,
        epochs=args.epochs,
        max_minutes=args.minutes,
        learning_rate=args.lr,
        seed=args.seed,
        device=resolve_device(args.device),
    )
    version = IndexVersion.load(args.index)
    catalog = read_catalog(args.catalog)
    events = catalog.interactions
    before = _utc_day("--before", args.before)
    if before is not None:
        events = [e for e in events if e.timestamp < before]
    products = {p.product_id: p for p in catalog.products}
    ranker, report = fit_ranker(events, products, version.store, config, train_config)
    summary = {k: v for k, v in report.to_dict().items() if k != "history"}
    out = ranker.save(
        args.out,
        extra={"index": version.version, "train_config": train_config.to_dict(), **summary},
    )
    print(json.dumps({"artifact": str(out), "index": version.version, **summary}, indent=2))
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
