"""The ``evaluate`` command: the cold-start evaluation, optionally two-stage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from newarrivals.indexer import NewArrivalsError
from newarrivals.indexer.encoders import TextEncoderConfig

if TYPE_CHECKING:
    from newarrivals.indexer.evaluation import EvaluationReport
    from newarrivals.ranker.two_stage import TwoStageRun


__all__ = ["add_parsers"]


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
    from newarrivals.ranker import load_ranker
    from newarrivals.ranker.blend import Blend
    from newarrivals.ranker.onnx_sessions import configure_threads
    from newarrivals.ranker.two_stage import RankerLike, TwoStageConfig, TwoStageRun

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
    from newarrivals.ranker.two_stage import rerank_margins

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


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register this group's commands."""
    _add_evaluate(sub)
