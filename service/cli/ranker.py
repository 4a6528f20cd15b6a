"""Ranker commands: ``train-ranker`` and ``distill-ranker``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from newarrivals.indexer import NewArrivalsError
from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.index.version import IndexVersion
from newarrivals.service.cli.common import (
    list_text_config,
    utc_day,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from newarrivals.indexer.catalog.schema import Interaction
    from newarrivals.indexer.evaluation import ProductVectors
    from newarrivals.ranker.config import RankerTrainConfig
    from newarrivals.ranker.training.cold_start import ColdStartListConfig


__all__ = ["add_parsers"]


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
    from newarrivals.ranker import RankerConfig
    from newarrivals.ranker.config import RankerTrainConfig
    from newarrivals.ranker.training.cold_start import ColdStartListConfig
    from newarrivals.ranker.training.features import encode_product_vectors
    from newarrivals.ranker.training.fit import fit_cold_start_ranker, fit_ranker

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
        before = utc_day("--before", args.before)
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
            text=list_text_config(args.text_model),
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
    from newarrivals.ranker.training.cold_start import build_cold_start_lists
    from newarrivals.ranker.training.rerank_blend import blend_for_ranker

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
    from newarrivals.ranker.config import RankerTrainConfig
    from newarrivals.ranker.crossencoder.model import CrossEncoderRanker, read_manifest
    from newarrivals.ranker.export import export_onnx
    from newarrivals.ranker.onnx_sessions import configure_threads
    from newarrivals.ranker.training.cold_start import ColdStartListConfig
    from newarrivals.ranker.training.distill import DistillConfig, fit_student
    from newarrivals.ranker.training.features import encode_product_vectors
    from newarrivals.ranker.training.student_init import StudentConfig
    from newarrivals.ranker.training.teacher_lists import cold_start_lists, replay_lists

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
        cutoff = utc_day("--before", args.before or str(training["cutoff"]))
        if cutoff is None:
            raise NewArrivalsError("the teacher records no cutoff; pass --before.")
        tower = args.image_tower or training.get("image_tower")
        known = [p for p in catalog.products if p.launched_at is None or p.launched_at < cutoff]
        text_model = args.text_model or training.get("text_model")
        vectors = encode_product_vectors(
            known,
            text=list_text_config(None if text_model is None else str(text_model)),
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
        before = utc_day("--before", args.before)
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


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register this group's commands."""
    _add_train_ranker(sub)
    _add_distill_ranker(sub)
