"""The ``evaluate`` command: the cold-start evaluation, optionally two-stage."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from newarrivals.indexer import NewArrivalsError
from newarrivals.indexer.encoders import TextEncoderConfig

if TYPE_CHECKING:
    from newarrivals.indexer.evaluation import EvaluateConfig
    from newarrivals.ranker.rerank_evaluation import RerankEvaluation, RerankEvaluationConfig


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
    from newarrivals.indexer.evaluation import EvaluateConfig, parse_events

    # The two-stage flags are checked before the evaluation's, as the ranker loads first.
    rerank = _rerank_config(args) if args.ranker is not None else None
    text = None
    if not args.no_text:
        text = TextEncoderConfig(model=args.text_model) if args.text_model else TextEncoderConfig()
    return _report(
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
        rerank,
    )


def _report(config: EvaluateConfig, rerank: RerankEvaluationConfig | None) -> int:
    """Run the evaluation (with the two-stage rows when ``rerank`` is set) and print it."""
    from newarrivals.indexer.evaluation import evaluate

    if rerank is None:
        print(evaluate(config).format_table())
        return 0
    # Imported here: the ranker stack loads only for two-stage runs.
    from newarrivals.ranker.rerank_evaluation import evaluate_reranked

    result = evaluate_reranked(config, rerank)
    print(result.report.format_table())
    _print_margins(result)
    return 0


def _rerank_config(args: argparse.Namespace) -> RerankEvaluationConfig:
    """The two-stage flags of ``evaluate --ranker``."""
    from newarrivals.indexer.device import resolve_device
    from newarrivals.ranker.rerank_evaluation import RerankEvaluationConfig
    from newarrivals.ranker.two_stage import TwoStageConfig

    try:
        depths = tuple(int(d) for d in str(args.rerank_n).split(",") if d.strip())
    except ValueError:
        raise NewArrivalsError(
            f"--rerank-n must be comma-separated integers like 50,100, got {args.rerank_n!r}."
        ) from None
    return RerankEvaluationConfig(
        ranker=args.ranker,
        two_stage=TwoStageConfig(
            retrieval=args.rerank_retrieval,
            depths=depths,
            mmr_lambda=None if args.no_mmr else args.mmr_lambda,
            max_users=args.rerank_users,
            seed=args.seed,
        ),
        use_blend=not args.no_blend,
        threads=args.threads,
        device=resolve_device(args.device),
    )


def _print_margins(result: RerankEvaluation) -> None:
    """Paired margins of the two-stage rows over retrieval alone, and diversity."""
    run = result.run
    print(f"\ntwo-stage margins, paired over {run.user_mask.sum()} users:")
    for m in result.margins:
        print(
            f"  {m.method:<44} {m.metric:<10} {m.method_value:.4f} vs {m.reference_value:.4f}"
            f"  margin {m.margin:+.4f} (s.e. {m.stderr:.4f})  vs {m.reference}"
        )
    key = f"diversity@{run.config.diversity_k}"
    for name, value in run.diversity.items():
        print(f"  {key} {name:<44} {value:.4f}")
    print(f"wrote {result.margins_file}")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register this group's commands."""
    _add_evaluate(sub)
