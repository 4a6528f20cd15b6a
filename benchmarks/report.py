"""One benchmark report from the benchmark scripts' JSON: ``REPORT.md`` plus PNG charts.

``make bench`` runs the benchmarks into ``reports/bench/`` and then this script. It also runs
alone on files measured earlier::

    python benchmarks/report.py --in reports/bench --out reports/bench/REPORT.md
    python benchmarks/report.py --in reports/bench --record-machine   # writes machine.json

Inputs, each optional, read from ``--in``:

===========================  ==========================================================
``machine.json``             ``--record-machine``, run on the machine that measured (else
                             the machine writing the report is described, and it says so)
``faiss.json``               ``benchmarks/faiss_bench.py --out``
``load_test.json``           the API load test: a list of rows ``{scenario, route,
                             concurrency, requests, p50_ms, p99_ms, rps, errors_5xx}``
``ranker_latency.json``      ``benchmarks/ranker_latency.py --json``: rows ``{variant,
                             candidates, p50_ms, p99_ms, ndcg20}`` (or rows nesting
                             ``latency`` per candidate count, expanded to those)
``rebuild.json``             ``benchmarks/rebuild_bench.py --out``
``evaluation.json``          ``newarrivals evaluate --json`` (cold-start quality per method)
``image_tower_synth.json``   ``newarrivals align-images --report-json`` (synthetic tower)
``image_tower_hm.json``      ``benchmarks/image_tower_hm.py --json`` (H&M tower)
===========================  ==========================================================

A missing input gives a section that says so and how to produce it; a malformed one stops
the report with an error naming the file, the row and the field. Charts are drawn on
matplotlib ``Figure`` objects with the Agg canvas, never through pyplot's global state.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

MACHINE_FILE = "machine.json"
LIBRARIES = (
    "newarrivals",
    "torch",
    "torchvision",
    "transformers",
    "sentence-transformers",
    "open_clip_torch",
    "faiss-cpu",
    "faiss-gpu",
    "numpy",
    "onnxruntime",
    "fastapi",
    "uvicorn",
    "matplotlib",
)


#: Field name -> the JSON types a row's value may have.
Fields = Mapping[str, type | tuple[type, ...]]


class ReportInputError(ValueError):
    """A benchmark JSON file does not have the shape the report reads."""


@dataclass(frozen=True)
class Section:
    """One part of the report: its Markdown lines and the charts it drew."""

    title: str
    lines: list[str]
    charts: list[Path]
    measured: bool


# --------------------------------------------------------------------------------------
# Reading and checking inputs
# --------------------------------------------------------------------------------------


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{path} is not valid JSON ({exc}); rerun the benchmark.") from None


def _rows(data: Any, path: Path, fields: Fields) -> list[dict[str, Any]]:
    """The list of row objects in ``data`` (a list, or ``{"rows": [...]}``), each checked to
    have ``fields`` of the given types."""
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ReportInputError(
            f"{path} must hold a JSON list of rows (or an object with a 'rows' list), got "
            f"{type(rows).__name__}; expected rows with fields {', '.join(fields)}."
        )
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ReportInputError(f"{path}: row {i} is a {type(row).__name__}, not an object.")
        for name, kind in fields.items():
            if name not in row:
                raise ReportInputError(
                    f"{path}: row {i} lacks {name!r}; each row needs {', '.join(fields)}."
                )
            value = row[name]
            ok = isinstance(value, kind) and not (
                isinstance(value, bool) and bool not in _as_tuple(kind)
            )
            if not ok:
                raise ReportInputError(
                    f"{path}: row {i} field {name!r} is {value!r}; expected "
                    f"{' or '.join(t.__name__ for t in _as_tuple(kind))}."
                )
    return rows


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


NUMBER: tuple[type, ...] = (int, float)
OPTIONAL_NUMBER: tuple[type, ...] = (int, float, type(None))


# --------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.M)
    return match.group(1).strip() if match else platform.machine() or "unknown"


def _ram_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s*(\d+) kB", text, flags=re.M)
    return round(int(match.group(1)) / 2**20, 1) if match else None


def _gpus() -> list[str]:
    """GPU names and memory from ``nvidia-smi`` (an empty list when there is none)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def machine_info() -> dict[str, Any]:
    """The machine this process runs on: CPU, cores, RAM, GPUs, library versions, date."""
    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": _ram_gib(),
        "gpus": _gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": libraries,
    }


def _machine_section(in_dir: Path) -> Section:
    path = in_dir / MACHINE_FILE
    if path.is_file():
        info = _load(path)
        if not isinstance(info, dict):
            raise ReportInputError(f"{path} must be a JSON object; rerun --record-machine.")
        origin = f"recorded in `{MACHINE_FILE}` when the benchmarks ran"
    else:
        info = machine_info()
        origin = (
            f"no `{MACHINE_FILE}` in the input folder, so this describes the machine that "
            "wrote the report, which may not be the one that measured"
        )
    gpus = info.get("gpus") or []
    ram = info.get("ram_gib")
    libs = info.get("libraries") or {}
    lines = [
        f"Machine ({origin}):",
        "",
        f"- CPU: {info.get('cpu', 'unknown')}, {info.get('cores', '?')} cores "
        f"({info.get('usable_cores', '?')} usable by the benchmarks)",
        f"- RAM: {f'{ram:g} GiB' if isinstance(ram, int | float) else 'unknown'}",
        f"- GPU: {', '.join(gpus) if gpus else 'none'}",
        f"- OS: {info.get('os', '?')}, Python {info.get('python', '?')}",
        f"- measured: {info.get('recorded_at', '?')}",
        "- libraries: " + (", ".join(f"{k} {v}" for k, v in libs.items()) or "unknown"),
    ]
    return Section("Machine", lines, [], True)


# --------------------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    """A Figure with its own Agg canvas: no pyplot, no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _hbars(
    path: Path,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    title: str,
    errors: Mapping[str, Sequence[float]] | None = None,
    value_format: str = "{:,.1f}",
) -> Path:
    """Horizontal grouped bars: one group per label, one bar per series."""
    import numpy as np

    n = len(labels)
    fig = _figure(9, 0.32 * n * max(1, len(series)) + 1.6)
    ax = fig.subplots()
    y = np.arange(n)
    height = 0.8 / max(1, len(series))
    for j, (name, values) in enumerate(series.items()):
        offset = (j - (len(series) - 1) / 2) * height
        err = errors.get(name) if errors else None
        bars = ax.barh(y + offset, values, height=height, xerr=err, label=name)
        ax.bar_label(bars, fmt=value_format, fontsize=6, padding=2)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.12)  # room for the value labels
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


def _absent(title: str, file: str, how: str) -> Section:
    return Section(title, [f"Not measured: `{file}` is absent. Produce it with {how}."], [], False)


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


FAISS_FIELDS: Fields = {
    "index": str,
    "params": str,
    "build_s": NUMBER,
    "size_mb": NUMBER,
    "single_qps": NUMBER,
    "batch_qps": NUMBER,
    "recall_at_10": NUMBER,
    "queries_used": int,
}


def faiss_section(in_dir: Path, out_dir: Path) -> Section:
    title = "Vector index: recall against queries/s"
    path = in_dir / "faiss.json"
    if not path.is_file():
        return _absent(
            title,
            "faiss.json",
            f"`python benchmarks/faiss_bench.py --n 200000 --out {path}` (or `make bench`)",
        )
    data = _load(path)
    rows = _rows(data, path, FAISS_FIELDS)
    args = data.get("args", {}) if isinstance(data, dict) else {}
    n = args.get("n", "?")
    dim = args.get("dim", "?")
    threads = args.get("threads", "?")
    version = data.get("faiss", "?") if isinstance(data, dict) else "?"
    lines = [
        f"FAISS {version} on {_int_text(n)} x {dim} clustered synthetic unit vectors, "
        f"{_int_text(args.get('queries', '?'))} user-vector queries, k=10, inner product, "
        f"{threads} thread(s); recall@10 against exact search. Source: `{path.name}`.",
        "",
        "| index | search params | build s | size MB | 1-query QPS | batch-64 QPS | recall@10 "
        "| queries |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['index']} | {r['params']} | {_fmt(r['build_s'])} | {_fmt(r['size_mb'], 0)} "
            f"| {_fmt(r['single_qps'], 0)} | {_fmt(r['batch_qps'], 0)} "
            f"| {r['recall_at_10']:.3f} | {r['queries_used']} |"
        )
    chart = out_dir / "faiss_recall_qps.png"
    fig = _figure(11, 4.8)
    axes = fig.subplots(1, 2, sharey=False)
    families: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault(r["index"], []).append(r)
    for ax, key, label in (
        (axes[0], "batch_qps", "queries/s, batches of 64"),
        (axes[1], "single_qps", "queries/s, one query at a time"),
    ):
        for family, members in families.items():
            members = sorted(members, key=lambda m: m["recall_at_10"])
            xs = [m["recall_at_10"] for m in members]
            ys = [max(m[key], 1e-3) for m in members]
            ax.plot(xs, ys, marker="o", label=family)
            for m, x, y in zip(members, xs, ys, strict=True):
                ax.annotate(
                    m["params"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
        ax.set_yscale("log")
        ax.set_xlabel("recall@10")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"FAISS at {_int_text(n)} vectors: up and to the right is better", fontsize=10)
    lines += ["", f"![recall against queries/s]({chart.name})"]
    return Section(title, lines, [_save(fig, chart)], True)


LOAD_FIELDS: Fields = {
    "scenario": str,
    "route": str,
    "concurrency": int,
    "requests": int,
    "p50_ms": NUMBER,
    "p99_ms": NUMBER,
    "rps": NUMBER,
    "errors_5xx": int,
}


def load_test_section(in_dir: Path, out_dir: Path) -> Section:
    title = "API latency per route"
    path = in_dir / "load_test.json"
    if not path.is_file():
        return _absent(
            title,
            "load_test.json",
            "the API load test writing its rows (`scenario, route, concurrency, requests, "
            f"p50_ms, p99_ms, rps, errors_5xx`) to `{path}`; `make bench` runs "
            "`benchmarks/load_test.py --json` when that script exists",
        )
    rows = _rows(_load(path), path, LOAD_FIELDS)
    lines = [
        f"Source: `{path.name}`.",
        "",
        "| scenario | route | concurrency | requests | p50 ms | p99 ms | req/s | 5xx errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        errors = f"**{r['errors_5xx']}**" if r["errors_5xx"] else "0"
        lines.append(
            f"| {r['scenario']} | `{r['route']}` | {r['concurrency']} | {r['requests']:,} "
            f"| {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['rps'])} | {errors} |"
        )
    return _percentile_section(
        title,
        lines,
        rows,
        out_dir / "api_latency.png",
        [f"{r['route']} · {r['scenario']} · c={r['concurrency']}" for r in rows],
        xlabel="latency, ms",
        chart_title="API latency percentiles per route",
    )


def _percentile_section(
    title: str,
    lines: list[str],
    rows: list[dict[str, Any]],
    chart_path: Path,
    labels: list[str],
    *,
    xlabel: str,
    chart_title: str,
) -> Section:
    """A table's section with its p50/p99 bar chart (or a note that it has no rows)."""
    if not rows:
        return Section(title, [*lines, "", "The file holds no rows."], [], True)
    chart = _hbars(
        chart_path,
        labels,
        {"p50": [r["p50_ms"] for r in rows], "p99": [r["p99_ms"] for r in rows]},
        xlabel=xlabel,
        title=chart_title,
    )
    return Section(title, [*lines, "", f"![{chart_title}]({chart.name})"], [chart], True)


RANKER_FIELDS: Fields = {
    "variant": str,
    "candidates": int,
    "p50_ms": NUMBER,
    "p99_ms": NUMBER,
    "ndcg20": OPTIONAL_NUMBER,
}


def _flatten_ranker(data: Any, path: Path) -> Any:
    """Expand rows that nest latency per candidate count into the flat rows the report reads.

    ``ranker_latency.py`` may write ``{"variant", "runtime", "threads", "latency": {"50":
    {"p50_ms", "p99_ms", ...}}, "quality": {"ndcg@20"}}``: one flat row per latency cell, the
    runtime and thread count joined to the variant's name. Flat rows pass through.
    """
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        return data
    flat: list[Any] = []
    for i, row in enumerate(rows):
        if not (isinstance(row, dict) and isinstance(row.get("latency"), dict)):
            flat.append(row)
            continue
        quality = row.get("quality")
        if not isinstance(quality, dict):
            quality = {}
        name = " · ".join(
            str(part)
            for part in (row.get("variant", "?"), row.get("runtime"), _threads(row.get("threads")))
            if part not in (None, "")
        )
        for n, cell in row["latency"].items():
            if not (isinstance(cell, dict) and str(n).isdigit()):
                raise ReportInputError(
                    f"{path}: row {i} latency[{n!r}] must be an object keyed by a candidate "
                    "count, with p50_ms and p99_ms."
                )
            flat.append(
                {
                    "variant": name,
                    "candidates": int(n),
                    "p50_ms": cell.get("p50_ms"),
                    "p99_ms": cell.get("p99_ms"),
                    "ndcg20": quality.get("ndcg@20"),
                }
            )
    return flat


def _threads(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value} thread{'s' if value != 1 else ''}"
    return None if value is None else str(value)


def ranker_section(in_dir: Path, out_dir: Path) -> Section:
    title = "Ranker latency per request"
    path = in_dir / "ranker_latency.json"
    if not path.is_file():
        return _absent(
            title,
            "ranker_latency.json",
            f"`python benchmarks/ranker_latency.py --json {path}` (or `make bench`)",
        )
    rows = _rows(_flatten_ranker(_load(path), path), path, RANKER_FIELDS)
    lines = [
        f"One request scores and sorts N candidates for one user. Source: `{path.name}`.",
        "",
        "| variant | candidates | p50 ms | p99 ms | NDCG@20 |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ndcg = "–" if r["ndcg20"] is None else f"{r['ndcg20']:.4f}"
        lines.append(
            f"| {r['variant']} | {r['candidates']} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} "
            f"| {ndcg} |"
        )
    return _percentile_section(
        title,
        lines,
        rows,
        out_dir / "ranker_latency.png",
        [f"{r['variant']} · {r['candidates']} candidates" for r in rows],
        xlabel="latency per request, ms",
        chart_title="Ranker latency percentiles",
    )


REBUILD_FIELDS: Fields = {
    "run": str,
    "wall_s": NUMBER,
    "build_s": NUMBER,
    "text_encoded": int,
    "image_encoded": int,
}


def rebuild_section(in_dir: Path, out_dir: Path) -> Section:
    title = "Encode throughput and rebuild times"
    path = in_dir / "rebuild.json"
    if not path.is_file():
        return _absent(
            title,
            "rebuild.json",
            f"`python benchmarks/rebuild_bench.py --products 10000 --out {path}` (or `make bench`)",
        )
    data = _load(path)
    rows = _rows(data, path, REBUILD_FIELDS)
    if not rows:
        raise ReportInputError(f"{path} holds no rows; rerun benchmarks/rebuild_bench.py.")
    full = rows[0]
    products = data.get("products", "?") if isinstance(data, dict) else "?"
    lines = [
        f"Synthetic catalogue of {_int_text(products)} products; the first row is the full "
        "rebuild every other row is compared with. Wall time is a new `build-index` process "
        f"(imports and model loads included). Source: `{path.name}`.",
        "",
        "| run | wall s | build s (in-process) | % of full (wall) | text encoded "
        "| photos encoded |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = 100 * r["wall_s"] / full["wall_s"] if full["wall_s"] else math.nan
        lines.append(
            f"| {r['run']} | {_fmt(r['wall_s'])} | {_fmt(r['build_s'])} | {share:.1f}% "
            f"| {r['text_encoded']:,} | {r['image_encoded']:,} |"
        )
    stages = data.get("stages", {}) if isinstance(data, dict) else {}
    if isinstance(stages, dict) and stages:
        lines += [
            "",
            "Throughput of each stage in the full rebuild:",
            "",
            "| stage | items | seconds | items/s |",
            "|---|---:|---:|---:|",
        ]
        for name, st in stages.items():
            if not (isinstance(st, dict) and isinstance(st.get("items"), int)):
                raise ReportInputError(f"{path}: stage {name!r} needs integer 'items'.")
            seconds = float(st.get("seconds") or 0.0)
            rate = _fmt(st["items"] / seconds, 0) if seconds > 0 else "–"
            lines.append(f"| {name} | {st['items']:,} | {seconds:.2f} | {rate} |")
    chart = _hbars(
        out_dir / "rebuild.png",
        [r["run"] for r in rows],
        {
            "wall s (new process)": [r["wall_s"] for r in rows],
            "build s (in-process)": [r["build_s"] for r in rows],
        },
        xlabel="seconds",
        title=f"Index rebuild times, {_int_text(products)} products",
    )
    lines += ["", f"![rebuild times]({chart.name})"]
    return Section(title, lines, [chart], True)


def evaluation_section(in_dir: Path, out_dir: Path) -> Section:
    title = "Cold-start quality per method"
    path = in_dir / "evaluation.json"
    if not path.is_file():
        return _absent(
            title,
            "evaluation.json",
            "`newarrivals evaluate --data CATALOGUE --image-tower TOWER --json "
            f"{path}` on the synthetic catalogue (or `make bench`)",
        )
    data = _load(path)
    methods = data.get("methods") if isinstance(data, dict) else None
    if not isinstance(methods, dict) or not methods:
        raise ReportInputError(
            f"{path} has no 'methods' object; pass the JSON written by `newarrivals evaluate`."
        )
    stderr = data.get("stderr", {})
    kinds = data.get("kinds", {})
    metrics = ["recall@20", "ndcg@20", "hitrate@20"]
    for name, values in methods.items():
        for metric in metrics[:2]:
            if not isinstance(values, dict) or not isinstance(values.get(metric), NUMBER):
                raise ReportInputError(
                    f"{path}: method {name!r} lacks a number for {metric!r}; rerun "
                    "`newarrivals evaluate` (its defaults report @10, @20 and @50)."
                )
    split = data.get("split", {})
    lines = [
        f"`newarrivals evaluate` on {data.get('dataset', '?')}: cutoff "
        f"{str(split.get('cutoff', '?'))[:10]}, {data.get('n_test_users', '?')} test users, "
        f"{data.get('n_cold_items', '?')} cold items; every cold item ranked for every test "
        f"user, mean over users (± standard error). Source: `{path.name}`.",
        "",
        "| method | kind | R@20 | ±R@20 | N@20 | ±N@20 | HR@20 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def se(name: str, metric: str) -> float:
        value = stderr.get(name, {}).get(metric) if isinstance(stderr, dict) else None
        return float(value) if isinstance(value, int | float) else 0.0

    for name, values in methods.items():
        hr = values.get("hitrate@20")
        lines.append(
            f"| {name} | {kinds.get(name, '?')} | {values['recall@20']:.4f} "
            f"| {se(name, 'recall@20'):.4f} | {values['ndcg@20']:.4f} "
            f"| {se(name, 'ndcg@20'):.4f} | {'–' if hr is None else f'{hr:.4f}'} |"
        )
    best = data.get("best_method")
    for margin in data.get("margins", []) or []:
        if isinstance(margin, dict) and {"metric", "margin", "stderr"} <= margin.keys():
            lines.append(
                f"\nBest method `{margin.get('method')}` vs best baseline "
                f"`{margin.get('baseline')}` on {margin['metric']}: {margin['margin']:+.4f} "
                f"(paired s.e. {margin['stderr']:.4f})."
            )
    if best is None:
        lines.append("\nNo margin: the file has no baseline or no non-baseline method.")
    names = list(methods)
    chart = _hbars(
        out_dir / "coldstart.png",
        [f"{n} ({kinds.get(n, '?')})" for n in names],
        {m: [float(methods[n][m]) for n in names] for m in metrics[:2]},
        errors={m: [se(n, m) for n in names] for m in metrics[:2]},
        xlabel="mean over test users (bars: ± standard error)",
        value_format="{:.3f}",
        title=f"Cold-start quality: {data.get('n_test_users', '?')} test users, "
        f"{data.get('n_cold_items', '?')} cold items",
    )
    lines += ["", f"![cold-start quality per method]({chart.name})"]
    return Section(title, lines, [chart], True)


def image_tower_section(in_dir: Path, out_dir: Path) -> Section:
    title = "Image tower: photo to text retrieval"
    files = [
        ("synthetic catalogue", in_dir / "image_tower_synth.json"),
        ("H&M sample", in_dir / "image_tower_hm.json"),
    ]
    present = [(label, p) for label, p in files if p.is_file()]
    if not present:
        return _absent(
            title,
            "image_tower_synth.json",
            f"`newarrivals align-images ... --report-json {files[0][1]}` (or `make bench`); "
            f"the H&M tower: `python benchmarks/image_tower_hm.py --json {files[1][1]}`",
        )
    lines = [
        "Share of photos whose own product's text ranks in the top k among the set's texts "
        "(chance: R@1 = 1/n, R@10 = 10/n); untrained = the same architecture at its random "
        "initialisation.",
        "",
        "| data | architecture | train min | set | n | trained R@1 | trained R@10 "
        "| untrained R@10 |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for label, path in present:
        data = _load(path)
        if not isinstance(data, dict) or "valid_trained" not in data:
            raise ReportInputError(
                f"{path} lacks 'valid_trained'; pass the JSON of `align-images --report-json` "
                "or `image_tower_hm.py --json`."
            )
        arch = f"{data.get('architecture', '?')} @ {data.get('image_size', '?')} px"
        minutes = float(data.get("train_seconds", 0.0)) / 60
        for set_name, key, n_key in (
            ("held out", "valid", "n_valid"),
            ("cold items", "test", "n_test"),
        ):
            trained = data.get(f"{key}_trained") or {}
            untrained = data.get(f"{key}_untrained") or {}
            if not trained:
                continue
            lines.append(
                f"| {label} | {arch} | {minutes:.1f} | {set_name} | {data.get(n_key, '?')} "
                f"| {trained.get('R@1', math.nan):.3f} | {trained.get('R@10', math.nan):.3f} "
                f"| {untrained.get('R@10', math.nan):.3f} |"
            )
    lines.append("")
    lines.append("Sources: " + ", ".join(f"`{p.name}`" for _, p in present) + ".")
    return Section(title, lines, [], True)


def _int_text(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


SECTIONS: tuple[Callable[[Path, Path], Section], ...] = (
    faiss_section,
    load_test_section,
    ranker_section,
    rebuild_section,
    evaluation_section,
    image_tower_section,
)


def build_report(in_dir: Path, out: Path) -> list[Section]:
    """Write ``out`` (Markdown) and its charts next to it; returns the sections.

    Raises:
        ReportInputError: an input file is malformed, or there is no benchmark result at all.
    """
    if not in_dir.is_dir():
        raise ReportInputError(f"--in {in_dir} is not a folder; run `make bench` first.")
    out_dir = out.parent
    sections = [make(in_dir, out_dir) for make in SECTIONS]
    if not any(s.measured for s in sections):
        raise ReportInputError(
            f"no benchmark result in {in_dir} (looked for faiss.json, load_test.json, "
            "ranker_latency.json, rebuild.json, evaluation.json, image_tower_*.json); "
            "run `make bench` first."
        )
    machine = _machine_section(in_dir)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    text = [
        "# newarrivals benchmark report",
        "",
        f"Written {now} by `benchmarks/report.py` from `{in_dir}`. Timings on shared "
        "machines are noisy: compare rows measured in the same run, not absolute numbers "
        "across runs.",
        "",
        *machine.lines,
        "",
        "Contents:",
        "",
    ]
    for s in sections:
        status = "" if s.measured else " (not measured)"
        text.append(f"- {s.title}{status}")
    for s in sections:
        text += ["", f"## {s.title}", "", *s.lines]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text) + "\n", encoding="utf-8")
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--in", dest="in_dir", type=Path, default=Path("reports/bench"), help="benchmark JSON"
    )
    parser.add_argument("--out", type=Path, default=None, help="default: <in>/REPORT.md")
    parser.add_argument(
        "--record-machine",
        action="store_true",
        help=f"write <in>/{MACHINE_FILE} describing this machine, and stop",
    )
    args = parser.parse_args(argv)
    if args.record_machine:
        args.in_dir.mkdir(parents=True, exist_ok=True)
        path = args.in_dir / MACHINE_FILE
        path.write_text(json.dumps(machine_info(), indent=2) + "\n", encoding="utf-8")
        print(f"machine recorded in {path}", file=sys.stderr)
        return 0
    out = args.out or args.in_dir / "REPORT.md"
    try:
        sections = build_report(args.in_dir, out)
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    charts = [c for s in sections for c in s.charts]
    missing = [s.title for s in sections if not s.measured]
    print(f"wrote {out} and {len(charts)} chart(s)", file=sys.stderr)
    if missing:
        print(f"not measured: {'; '.join(missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
