"""Image tower on the real H&M sample: held-out image->text recall, trained vs untrained.

Trains an image tower (default MobileNetV3-small from scratch at 128 px, 10 minutes) against
frozen MiniLM text vectors, on the products launched before the cold-start cutoff
(2020-06-22, the first sale day is the launch day), holding out 1,000 of them (with text and
a photo) to pick the checkpoint. Reports Recall@1/@10 among those 1,000 and among up to 1,000
cold products launched on or after the cutoff (never trained on, never used for the
checkpoint), for the trained tower and for the same architecture at its random
initialisation. Chance is 0.001 / 0.010.

Usage:
    nice -n 5 .venv/bin/python benchmarks/image_tower_hm.py --minutes 10 \\
        --launched-before 2020-06-22 --tower /tmp/towers/hm-mnv3-128 \\
        --cache-dir /tmp/na-cache --out /tmp/image_tower_hm.md \\
        --json reports/bench/image_tower_hm.json

The data stays in the shared folder (default ``../shared/data/hm`` next to the repo); only
the tower and the report are written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from newarrivals.indexer.towers.image import align_images
from newarrivals.indexer.towers.image_config import ImageTowerConfig, ImageTowerReport

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/hm"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="H&M-layout folder")
    p.add_argument("--tower", type=Path, default=Path("/tmp/towers/hm-mnv3-128"))
    p.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--cache-dir", type=Path, default=None, help="text embedding cache")
    p.add_argument("--arch", default="mobilenetv3-small")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=ImageTowerConfig.lr)
    p.add_argument("--held-out", type=int, default=1000, help="held-out products (checkpoint)")
    p.add_argument("--test", type=int, default=1000, help="cold products measured after cutoff")
    p.add_argument(
        "--launched-before",
        default="2020-06-22",
        help="train only on products launched before this ISO date ('' to use all)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is steadier on a shared box",
    )
    return p.parse_args(argv)


def _markdown(report: ImageTowerReport, command: str) -> str:
    def row(name: str, n: int, trained: dict[str, float], untrained: dict[str, float]) -> str:
        return (
            f"| {name} | {n} | {trained.get('R@1', float('nan')):.3f} | "
            f"{trained.get('R@10', float('nan')):.3f} | {untrained.get('R@1', float('nan')):.3f} "
            f"| {untrained.get('R@10', float('nan')):.3f} |"
        )

    lines = [
        "# Image tower on the H&M sample: image -> text retrieval",
        "",
        f"Command: `{command}`",
        "",
        f"Architecture {report.architecture} at {report.image_size} px (from scratch) -> "
        f"{report.embed_dim}-d MiniLM text space, on {report.device}; trained on "
        f"{report.n_train} products"
        + (f" launched before {report.launched_before}" if report.launched_before else "")
        + ".",
        f"Training: {report.train_seconds / 60:.1f} min (incl. held-out evaluations), "
        f"{report.epochs:.1f} epochs, "
        f"{report.steps} steps, {report.images_per_second:.0f} images/s (training steps only),"
        f" best held-out checkpoint after epoch {report.best_epoch}.",
        "",
        "Recall@k: share of photos whose own product's text ranks in the top k among the set's"
        " texts (chance R@1 = 1/n, R@10 = 10/n).",
        "",
        "| set | n | trained R@1 | trained R@10 | untrained R@1 | untrained R@10 |",
        "| --- | --- | --- | --- | --- | --- |",
        row(
            "held out, launched before cutoff (picks the checkpoint)",
            report.n_valid,
            report.valid_trained,
            report.valid_untrained,
        ),
    ]
    if report.n_test:
        lines.append(
            row(
                "cold items, launched on/after cutoff (never seen)",
                report.n_test,
                report.test_trained,
                report.test_untrained,
            )
        )
    lines += [
        "",
        f"Photo-only products (no text): {report.photo_only_embedded} of {report.photo_only} "
        "embedded in the text space by the saved tower.",
        f"Tower: `{report.out_dir}`",
        "",
        "```json",
        json.dumps(report.to_dict(), indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    launched_before = None
    if args.launched_before:
        launched_before = datetime.fromisoformat(args.launched_before)
        if launched_before.tzinfo is None:
            launched_before = launched_before.replace(tzinfo=UTC)
    config = ImageTowerConfig(
        architecture=args.arch,
        image_size=args.image_size,
        batch_size=args.batch_size,
        lr=args.lr,
        max_minutes=args.minutes,
        max_epochs=args.epochs,
        valid_size=args.held_out,
        seed=args.seed,
        device=args.device,
    )
    report = align_images(
        args.data,
        args.tower,
        config,
        cache_dir=args.cache_dir,
        launched_before=launched_before,
        max_test=args.test,
        progress=False,
    )
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    text = _markdown(report, command)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"command": command, "data": str(args.data), **report.to_dict()}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
