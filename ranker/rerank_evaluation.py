"""The ``evaluate --ranker`` job: the cold-start evaluation with two-stage rows (retrieve,
then re-rank with a ranker artifact), and the paired margins of those rows over retrieval
alone, written as ``rerank-<dataset>.json`` next to the evaluation report.

It lives in the ranker package because it loads a ranker; the indexer's
:func:`~newarrivals.indexer.evaluation.evaluate` runs the rows without knowing about it.

Example:
    >>> result = evaluate_reranked(  # doctest: +SKIP
    ...     EvaluateConfig(data=Path("catalog")), RerankEvaluationConfig(ranker=Path("ranker"))
    ... )
    >>> result.margins[0].margin  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.evaluation import EvaluateConfig, EvaluationReport, evaluate
from newarrivals.ranker.blend import Blend
from newarrivals.ranker.loading import load_ranker
from newarrivals.ranker.onnx_sessions import configure_threads
from newarrivals.ranker.two_stage import (
    RankerLike,
    RerankMargin,
    TwoStageConfig,
    TwoStageRun,
    rerank_margins,
)

__all__ = ["RerankEvaluation", "RerankEvaluationConfig", "evaluate_reranked"]


@dataclass(frozen=True)
class RerankEvaluationConfig:
    """The second stage of a two-stage evaluation.

    Args:
        ranker: Ranker artifact directory (written by ``train-ranker`` or ``distill-ranker``).
        two_stage: First stage, depths, MMR and user sample of the two-stage rows.
        use_blend: Add the blend rows from the artifact's ``blend.json`` (when it has one).
        threads: Torch CPU threads (``None``: the library default).
        device: Where the ranker runs, already resolved (``cpu``, ``cuda``, ``cuda:N``).
    """

    ranker: Path
    two_stage: TwoStageConfig = field(default_factory=TwoStageConfig)
    use_blend: bool = True
    threads: int | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class RerankEvaluation:
    """The evaluation report, the run behind its two-stage rows, their margins, and the
    file the margins were written to."""

    report: EvaluationReport
    run: TwoStageRun
    margins: list[RerankMargin]
    margins_file: Path


def evaluate_reranked(config: EvaluateConfig, rerank: RerankEvaluationConfig) -> RerankEvaluation:
    """Run the evaluation with the two-stage rows of ``rerank.ranker`` and write the margins.

    Raises:
        ConfigError: when the artifact holds no ranker that scores candidate texts.
    """
    configure_threads(rerank.threads)
    ranker = load_ranker(rerank.ranker, device=rerank.device)
    if not isinstance(ranker, RankerLike):
        raise ConfigError(
            f"the ranker in {rerank.ranker} has no score(context, texts); pass a ranker "
            "artifact written by train-ranker or distill-ranker."
        )
    blend = Blend.load(rerank.ranker) if rerank.use_blend else None
    run = TwoStageRun(ranker, rerank.two_stage, blend=blend, label=rerank.ranker.name or "ranker")
    report = evaluate(config, extra_methods=run.methods())
    margins = rerank_margins(report.results, run)
    out = config.reports_dir / f"rerank-{report.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"run": run.info(), "margins": [m.to_dict() for m in margins]}
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return RerankEvaluation(report=report, run=run, margins=margins, margins_file=out)
