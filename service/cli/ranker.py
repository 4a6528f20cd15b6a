"""Ranker commands: ``train-ranker`` and ``distill-ranker``.

Each parses its flags into a job of :mod:`newarrivals.ranker.training.pipeline` and runs it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from newarrivals.ranker.config import RankerConfig, RankerTrainConfig
from newarrivals.service.cli.common import utc_day

if TYPE_CHECKING:
    from newarrivals.ranker.training.pipeline import BlendOnlyResult, TrainRankerResult


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
    # Imported here: the pipeline loads training code, which only this command needs.
    from newarrivals.indexer.evaluation import parse_events
    from newarrivals.ranker.training.pipeline import (
        TrainRankerJob,
        run_blend_only,
        run_train_ranker,
    )

    job = TrainRankerJob(
        catalog=args.catalog,
        out=args.out,
        lists=args.lists,
        index=args.index,
        before=utc_day("--before", args.before),
        image_tower=args.image_tower,
        text_model=args.text_model,
        retrieval=args.retrieval,
        windows=args.windows,
        window_days=args.window_days,
        positive_events=parse_events(args.positive_events) if args.positive_events else None,
        max_users=args.max_users,
        positives=args.positives,
        model=RankerConfig(
            base_model=str(args.base_model) if args.base_model else RankerConfig.base_model,
            num_layers=args.layers,
            context_tokens=args.context_tokens,
            candidate_tokens=args.candidate_tokens,
            seed=args.seed,
        ),
        train=RankerTrainConfig(
            retrieval_candidates=args.candidates,
            hard_negatives=args.hard,
            random_negatives=args.random,
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
        ),
        cache_dir=args.cache_dir,
        threads=args.threads,
        device=args.device,
        progress=not args.no_progress,
    )
    if args.blend_only and job.lists == "cold-start":
        result: TrainRankerResult | BlendOnlyResult = run_blend_only(job)
    else:
        result = run_train_ranker(job)
    print(json.dumps(result.to_dict(), indent=2, default=str))
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
    # Imported here: the pipeline loads training code, which only this command needs.
    from newarrivals.ranker.training.distill import DistillConfig
    from newarrivals.ranker.training.pipeline import DistillJob, run_distill
    from newarrivals.ranker.training.student_init import StudentConfig

    job = DistillJob(
        teacher=args.teacher,
        catalog=args.catalog,
        out=args.out,
        index=args.index,
        before=utc_day("--before", args.before),
        image_tower=args.image_tower,
        text_model=args.text_model,
        cache_dir=args.cache_dir,
        student=StudentConfig(
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=args.heads,
            context_tokens=args.context_tokens,
            candidate_tokens=args.candidate_tokens,
            init=args.init,
            architecture=args.architecture,
            seed=args.seed,
        ),
        distill=DistillConfig(
            epochs=args.epochs,
            max_minutes=args.minutes,
            learning_rate=args.lr,
            batch_lists=args.batch_lists,
            label_weight=args.label_weight,
            seed=args.seed,
        ),
        onnx=tuple(args.onnx or ()),
        threads=args.threads,
        device=args.device,
    )
    print(json.dumps(run_distill(job).to_dict(), indent=2))
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register this group's commands."""
    _add_train_ranker(sub)
    _add_distill_ranker(sub)
