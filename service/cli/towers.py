"""Tower training commands: ``align-images`` and ``train-users``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from newarrivals.indexer.encoders import TextEncoderConfig
from newarrivals.service.cli.common import (
    utc_day,
)

__all__ = ["add_parsers"]


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
    from newarrivals.indexer.towers.image import align_images
    from newarrivals.indexer.towers.image_config import ImageTowerConfig

    launched = utc_day("--launched-before", args.launched_before)
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
    from newarrivals.indexer.towers.user_config import UserTowerConfig
    from newarrivals.indexer.towers.user_pipeline import TrainUsersConfig, train_users

    config = UserTowerConfig(
        epochs=args.epochs,
        max_minutes=args.minutes,
        model=args.model,
        max_history=args.max_history,
        seed=args.seed,
        device=resolve_device(args.device),
    )
    before = utc_day("--before", args.before)
    result = train_users(
        TrainUsersConfig(
            index=args.index, catalog=args.catalog, out=args.out, tower=config, before=before
        )
    )
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register this group's commands."""
    _add_align(sub)
    _add_train_users(sub)
