"""The evaluation report: results per method, margins, and how to print and save them.

Written forms:

* a plain-text table for the terminal (:meth:`EvaluationReport.format_table`);
* JSON (:meth:`EvaluationReport.to_dict`): ``{"methods": {method: {metric: value}},
  "n_test_users": ..., "n_cold_items": ..., "config": ..., "seed": ...}`` plus standard
  errors, the same for the users without a same-product hit, margins and notes;
* Markdown with both tables, the margins, the configuration and the notes;
* a PNG chart of Recall@K against K per method (a matplotlib Figure on an Agg canvas, without
  pyplot, so drawing never touches a display or matplotlib's global state).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from newarrivals.indexer.evaluation.metrics import MetricSpec, PerUserMetrics, standard_error

__all__ = ["EvaluationReport", "Margin", "MethodResult", "compute_margins"]

BASELINE = "baseline"
_SHORT = {"recall": "R", "ndcg": "N", "hitrate": "HR"}


def _short(metric: str) -> str:
    name, _, k = metric.partition("@")
    return f"{_SHORT.get(name, name)}@{k}"


@dataclass(frozen=True, eq=False)
class MethodResult:
    """One method's metrics over all test users and over those without a same-product hit.

    ``kind`` is ``baseline`` for the baselines and the method family otherwise (``mean``,
    ``max``, ``tower``, ...); ``per_user`` keeps the per-user values for paired margins.
    """

    name: str
    kind: str
    metrics: Mapping[str, float]
    stderr: Mapping[str, float]
    subset_metrics: Mapping[str, float]
    subset_stderr: Mapping[str, float]
    seconds: float
    per_user: PerUserMetrics = field(repr=False)

    @classmethod
    def from_per_user(
        cls,
        name: str,
        kind: str,
        per_user: PerUserMetrics,
        subset: np.ndarray,
        seconds: float,
    ) -> MethodResult:
        return cls(
            name=name,
            kind=kind,
            metrics=per_user.mean(),
            stderr=per_user.stderr(),
            subset_metrics=per_user.mean(subset) if subset.any() else {},
            subset_stderr=per_user.stderr(subset) if subset.any() else {},
            seconds=seconds,
            per_user=per_user,
        )


@dataclass(frozen=True)
class Margin:
    """How far ``method`` is above ``baseline`` on ``metric``; ``stderr`` is paired (the
    standard error of the per-user differences, same users and tie-break seeds)."""

    metric: str
    method: str
    baseline: str
    method_value: float
    baseline_value: float
    value: float
    stderr: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "method": self.method,
            "baseline": self.baseline,
            "method_value": self.method_value,
            "baseline_value": self.baseline_value,
            "margin": self.value,
            "stderr": self.stderr,
        }


def compute_margins(
    results: Sequence[MethodResult],
    metrics: Sequence[str] = ("recall@20", "ndcg@20"),
    *,
    users: np.ndarray | None = None,
) -> tuple[str | None, tuple[Margin, ...]]:
    """The best non-baseline method (by the last of ``metrics``) and its margin over the
    best baseline on each metric; ``(None, ())`` when either side is missing.

    Args:
        results: every method's result.
        metrics: the metrics to compare on; the last one picks the best method.
        users: a boolean mask over test users to compare on (default: all of them).
    """
    baselines = [r for r in results if r.kind == BASELINE]
    methods = [r for r in results if r.kind != BASELINE]
    if not baselines or not methods or (users is not None and not users.any()):
        return None, ()

    def values(result: MethodResult, metric: str) -> np.ndarray:
        per_user = result.per_user.values[metric]
        return per_user if users is None else per_user[users]

    best = max(methods, key=lambda r: float(values(r, metrics[-1]).mean()))
    margins = []
    for metric in metrics:
        base = max(baselines, key=lambda r: float(values(r, metric).mean()))
        diff = values(best, metric) - values(base, metric)
        margins.append(
            Margin(
                metric=metric,
                method=best.name,
                baseline=base.name,
                method_value=float(values(best, metric).mean()),
                baseline_value=float(values(base, metric).mean()),
                value=float(diff.mean()),
                stderr=standard_error(diff),
            )
        )
    return best.name, tuple(margins)


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """Everything one ``newarrivals evaluate`` run measured, and how it was configured."""

    dataset: str
    split: Mapping[str, Any]
    spec: MetricSpec
    results: tuple[MethodResult, ...]
    seed: int
    seeds: tuple[int, ...]
    config: Mapping[str, Any]
    n_subset_users: int
    best_method: str | None = None
    margins: tuple[Margin, ...] = ()
    subset_margins: tuple[Margin, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def n_test_users(self) -> int:
        return int(self.split["test_users"])

    @property
    def n_cold_items(self) -> int:
        return int(self.split["cold_items"])

    def to_dict(self) -> dict[str, Any]:
        def table(attr: str) -> dict[str, dict[str, float]]:
            return {r.name: dict(getattr(r, attr)) for r in self.results}

        return {
            "dataset": self.dataset,
            "methods": table("metrics"),
            "stderr": table("stderr"),
            "n_test_users": self.n_test_users,
            "n_cold_items": self.n_cold_items,
            "without_same_product": {
                "n_test_users": self.n_subset_users,
                "methods": table("subset_metrics"),
                "stderr": table("subset_stderr"),
                "margins": [m.to_dict() for m in self.subset_margins],
            },
            "kinds": {r.name: r.kind for r in self.results},
            "seconds": {r.name: round(r.seconds, 2) for r in self.results},
            "best_method": self.best_method,
            "margins": [m.to_dict() for m in self.margins],
            "split": dict(self.split),
            "seed": self.seed,
            "seeds": list(self.seeds),
            "config": dict(self.config),
            "notes": list(self.notes),
        }

    def _rows(self, subset: bool) -> list[list[str]]:
        names = self.spec.names()
        rows = []
        for r in self.results:
            values = r.subset_metrics if subset else r.metrics
            errors = r.subset_stderr if subset else r.stderr
            if not values:
                continue
            cells = [f"{values[n]:.4f}" for n in names]
            se = errors.get("ndcg@20", errors.get(names[-1], 0.0))
            rows.append([r.name, *cells, f"{se:.4f}"])
        return rows

    def _header(self) -> list[str]:
        return ["method", *[_short(n) for n in self.spec.names()], "±N@20"]

    def _margin_lines(self, margins: Sequence[Margin]) -> list[str]:
        lines = []
        for m in margins:
            verdict = "beats" if m.value > 0 else "does NOT beat"
            ratio = m.value / m.stderr if m.stderr else 0.0
            lines.append(
                f"{_short(m.metric)}: {m.method} {m.method_value:.4f} {verdict} the best baseline "
                f"({m.baseline} {m.baseline_value:.4f}): margin {m.value:+.4f}, "
                f"paired s.e. {m.stderr:.4f} ({ratio:+.1f} s.e.)"
            )
        return lines

    def _title(self) -> str:
        s = self.split
        return (
            f"{self.dataset}: cutoff {s['cutoff']}, test events {','.join(s['test_events'])}; "
            f"{s['test_users']} test users ({self.n_subset_users} without a same-product hit), "
            f"{s['cold_items']} cold items, {s['truth_pairs']} truth pairs; "
            f"mean of {len(self.seeds)} tie-break seeds (seed {self.seed})"
        )

    def format_table(self) -> str:
        """The results as an aligned plain-text table, with the margins and notes."""
        header = self._header()

        def block(rows: list[list[str]]) -> list[str]:
            widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
            fmt = [
                "  ".join(
                    c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)
                )
                for row in [header, *rows]
            ]
            return fmt

        out = [self._title(), "", *block(self._rows(False))]
        subset = self._rows(True)
        if self.n_subset_users != self.n_test_users and subset:
            out += ["", f"users without a same-product hit ({self.n_subset_users}):"]
            out += block(subset)
        if self.margins:
            out += ["", "best method vs best baseline, all users:"]
            out += self._margin_lines(self.margins)
        if self.subset_margins:
            out += [f"users without a same-product hit ({self.n_subset_users}):"]
            out += self._margin_lines(self.subset_margins)
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)

    def to_markdown(self) -> str:
        """The report as Markdown: title, both tables, margins, notes and configuration."""
        header = self._header()

        def table(rows: list[list[str]]) -> list[str]:
            lines = ["| " + " | ".join(header) + " |"]
            lines.append("| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |")
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            return lines

        out = [f"# Cold-start evaluation: {self.dataset}", "", self._title(), ""]
        out += ["## All test users", "", *table(self._rows(False)), ""]
        subset = self._rows(True)
        if self.n_subset_users != self.n_test_users and subset:
            out += [
                f"## Users without a same-product hit ({self.n_subset_users})",
                "",
                *table(subset),
                "",
            ]
        if self.margins:
            out += ["## Margin of the best method over the best baseline", ""]
            out += [f"- all users: {line}" for line in self._margin_lines(self.margins)]
            out += [
                f"- without a same-product hit: {line}"
                for line in self._margin_lines(self.subset_margins)
            ] + [""]
        if self.notes:
            out += ["## Notes", "", *[f"- {n}" for n in self.notes], ""]
        out += [
            "## Configuration",
            "",
            "```json",
            json.dumps({"seed": self.seed, "config": self.config}, indent=2, default=str),
            "```",
            "",
        ]
        return "\n".join(out)

    def plot(self, path: Path) -> Path:
        """Draw Recall@K against K, one line per method, to ``path`` (PNG)."""
        # A bare Figure on an Agg canvas: no pyplot, so the host's backend (a notebook's,
        # say) and pyplot's global figure list are left alone.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        ks = list(self.spec.ks)
        fig = Figure(figsize=(9, 5.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for r in self.results:
            values = [r.metrics[f"recall@{k}"] for k in ks]
            style = "--" if r.kind == BASELINE else "-"
            ax.plot(ks, values, style, marker="o", label=r.name)
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K")
        ax.set_xticks(ks)
        ax.set_title(
            f"{self.dataset}: {self.n_test_users} users, {self.n_cold_items} cold items",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        return path

    def write(self, reports_dir: Path, *, json_path: Path | None = None) -> dict[str, Path]:
        """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``reports_dir`` (and the
        JSON also to ``json_path`` when given); returns what was written."""
        stem = f"evaluation-{_slug(self.dataset)}-{str(self.split['cutoff'])[:10]}"
        reports_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, default=str)
        written = {
            "json": reports_dir / f"{stem}.json",
            "markdown": reports_dir / f"{stem}.md",
            "png": reports_dir / f"{stem}.png",
        }
        written["json"].write_text(text + "\n", encoding="utf-8")
        written["markdown"].write_text(self.to_markdown(), encoding="utf-8")
        self.plot(written["png"])
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(text + "\n", encoding="utf-8")
            written["json_copy"] = json_path
        return written


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-") or "data"
