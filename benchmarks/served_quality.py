"""Cold-start quality of what the API serves, on the evaluation's split.

``newarrivals evaluate`` scores methods on matrices; this script asks the service itself.
For every test user of the split it sends ``POST /v1/sessions/recommendations`` with the
user's pre-cutoff history as timed events and the new-arrivals filter, and scores the
returned top ``k`` against what the user bought after the cutoff (NDCG@k and Recall@k, the
evaluation's definitions). One row per first stage (``NEWARRIVALS_RETRIEVAL``) and, with
``--ranker``, per re-rank; margins are paired over users against the first row.

The index must hold the evaluation's vectors (build it with the same image tower, e.g.
``newarrivals build-index --catalog ../shared/data/hm --out idx --image-model
local-dir:towers/hm``). A session's recent products are its whole history, so the late
first stage compares with every pre-cutoff product, as the evaluation does.

    python benchmarks/served_quality.py --data ../shared/data/hm --index idx \\
        --ranker mean=rankers/hm-mean,late-max=rankers/hm-late --json served.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.evaluation import EvaluateConfig, resolve_profile
from newarrivals.indexer.evaluation.metrics import ndcg_at_k, recall_at_k, standard_error
from newarrivals.indexer.evaluation.protocol import ColdStartSplit

#: The session route's cap on events per body: longer histories send their newest 200.
MAX_EVENTS = 200


@dataclass(frozen=True)
class Row:
    name: str
    retrieval: str
    rerank: bool
    ndcg: np.ndarray
    recall: np.ndarray
    seconds: float
    reranked_by: str | None


def _bodies(split: ColdStartSplit, k: int, users: list[str]) -> list[dict[str, Any]]:
    after = (split.cutoff - timedelta(seconds=1)).isoformat()
    out = []
    for user in users:
        history = list(reversed(split.history[user]))[:MAX_EVENTS]  # newest first
        events = [
            {
                "product_id": e.product_id,
                "event": e.event.value,
                "timestamp": e.timestamp.isoformat(),
            }
            for e in history
        ]
        out.append({"events": events, "k": k, "launched_after": after})
    return out


def _run(
    settings_kwargs: dict[str, Any],
    bodies: list[dict[str, Any]],
    truth: list[frozenset[str]],
    k: int,
    name: str,
    rerank: bool,
) -> Row:
    from fastapi.testclient import TestClient

    from newarrivals.service.api import ServeSettings, create_app

    settings = ServeSettings(**settings_kwargs)
    hits = np.zeros((len(bodies), k), dtype=bool)
    reranked_by = None
    with TestClient(create_app(settings)) as client:
        t0 = time.perf_counter()
        for u, body in enumerate(bodies):
            r = client.post("/v1/sessions/recommendations", json={**body, "rerank": rerank})
            if r.status_code != 200:
                raise SystemExit(f"{name}: HTTP {r.status_code}: {r.text[:300]}")
            answer = r.json()
            reranked_by = answer.get("reranked_by")
            got = [item["product_id"] for item in answer["items"]][:k]
            hits[u, : len(got)] = [p in truth[u] for p in got]
        seconds = time.perf_counter() - t0
    n_relevant = np.array([len(t) for t in truth])
    return Row(
        name,
        str(settings.retrieval),
        rerank,
        ndcg_at_k(hits, n_relevant, k),
        recall_at_k(hits, n_relevant, k),
        seconds,
        reranked_by,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="catalogue (H&M layout or generic)")
    p.add_argument("--index", type=Path, required=True, help="index root built from --data")
    p.add_argument(
        "--ranker",
        default=None,
        help="ranker artifact: adds re-rank rows; or one per first stage, "
        "mean=DIR,late-max=DIR (a blend applies only after the first stage it was fitted on)",
    )
    p.add_argument("--cutoff", default=None, help="ISO date (default: the dataset's)")
    p.add_argument("--retrievals", default="mean,late-max", help="first stages, comma-separated")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--rerank-depth", type=int, default=50)
    p.add_argument("--users", type=int, default=None, help="a seeded sample of test users")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    catalog = read_catalog(args.data)
    profile = resolve_profile(
        EvaluateConfig(data=args.data, cutoff=args.cutoff, text=None), catalog
    )
    split = profile.split(catalog)
    users = list(split.test_users)
    if args.users is not None and args.users < len(users):
        rng = np.random.default_rng(0)
        users = sorted(rng.choice(users, size=args.users, replace=False).tolist())
    bodies = _bodies(split, args.k, users)
    truth = [split.truth[u] for u in users]
    base: dict[str, Any] = {
        "index": args.index,
        "catalog": args.data,
        "read_only": True,
        "device": "cpu",
        "threads": args.threads,
        "load_in_background": False,
        "verify_index": False,
        "rerank_depth": args.rerank_depth,
        "max_k": max(100, args.k),
        "journal": Path("/tmp") / f"served-quality-{time.time_ns()}.sqlite",
    }
    retrievals = args.retrievals.split(",")
    rankers: dict[str, Path] = {}
    if args.ranker is not None and "=" in args.ranker:
        for part in args.ranker.split(","):
            name, _, path = part.partition("=")
            rankers[name] = Path(path)
    elif args.ranker is not None:
        rankers = {r: Path(args.ranker) for r in retrievals}
    rows: list[Row] = []
    for retrieval in retrievals:
        settings = {**base, "retrieval": retrieval}
        rows.append(_run(settings, bodies, truth, args.k, f"{retrieval}", rerank=False))
        if retrieval in rankers:
            settings["ranker"] = rankers[retrieval]
            row = _run(settings, bodies, truth, args.k, f"{retrieval} + re-rank", rerank=True)
            rows.append(row)

    ref = rows[0]
    print(
        f"served quality: {len(users)} test users, cutoff {split.cutoff.date()}, "
        f"{len(split.cold_ids)} cold items, k={args.k}"
    )
    k = args.k
    print(f"| row | reranked by | R@{k} | N@{k} | N@{k} vs {ref.name} (paired s.e.) | s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    out: list[dict[str, Any]] = []
    for row in rows:
        diff = row.ndcg - ref.ndcg
        margin = "–" if row is ref else f"{diff.mean():+.4f} ({standard_error(diff):.4f})"
        print(
            f"| {row.name} | {row.reranked_by or '–'} | {row.recall.mean():.4f} | "
            f"{row.ndcg.mean():.4f} | {margin} | {row.seconds:.0f} |"
        )
        out.append(
            {
                "row": row.name,
                "retrieval": row.retrieval,
                "rerank": row.rerank,
                "reranked_by": row.reranked_by,
                f"recall@{args.k}": float(row.recall.mean()),
                f"ndcg@{args.k}": float(row.ndcg.mean()),
                "ndcg_margin": float(diff.mean()),
                "ndcg_margin_stderr": standard_error(diff),
                "seconds": row.seconds,
            }
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"users": len(users), "cutoff": split.cutoff.isoformat(), "k": args.k}
        args.json.write_text(json.dumps({**meta, "rows": out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
