"""Latency of one ranking request: score and sort N candidates for one user on CPU.

A request is :meth:`CrossEncoderRanker.rank`: tokenise the candidates' text, one batched
forward pass over the (context, candidate) pairs, softmax, sort. The user context is
tokenised once per request and included in the timing. Texts are long enough to fill the
budgets, so each pair has the full length.

``--budgets`` are per-pair token budgets: a budget B gives context and candidate B // 2
tokens each (a pair is then B + 3 tokens with [CLS] and two [SEP]).

    nice -n 5 .venv/bin/python benchmarks/ranker_latency.py --layers 6 2 --budgets 64 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence

import numpy as np

from newarrivals.indexer.schema import Product
from newarrivals.indexer.store import Candidate
from newarrivals.ranker import CrossEncoderRanker, RankerConfig

WORDS = [
    "relaxed",
    "fit",
    "organic",
    "cotton",
    "jersey",
    "shirt",
    "with",
    "a",
    "striped",
    "pattern",
    "in",
    "navy",
    "and",
    "white,",
    "ribbed",
    "crew",
    "neck,",
    "dropped",
    "shoulders,",
    "long",
    "sleeves",
    "and",
    "a",
    "straight",
    "hem;",
    "machine",
    "washable",
]


def _catalogue(n: int) -> dict[str, Product]:
    rng = np.random.default_rng(0)
    products = {}
    for i in range(n):
        words = [WORDS[int(j)] for j in rng.integers(0, len(WORDS), size=60)]
        products[f"b{i}"] = Product(
            f"b{i}",
            title=" ".join(words[:8]),
            description=" ".join(words[8:]),
            category=("Women", "Tops", "Shirt"),
            brand="Acme",
            attributes={"colour": "navy", "material": "cotton"},
        )
    return products


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    products = _catalogue(args.candidates + 10)
    history = [products[f"b{i}"] for i in range(args.candidates, args.candidates + 10)]
    candidates = [Candidate(f"b{i}", 1.0 - i / 100) for i in range(args.candidates)]
    rows = []
    for layers in args.layers:
        for budget in args.budgets:
            half = budget // 2
            config = RankerConfig(num_layers=layers, context_tokens=half, candidate_tokens=half)
            ranker = CrossEncoderRanker.from_base(config)
            for _ in range(args.warmup):
                ranker.rank(ranker.encode_context(history), candidates, products)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                context = ranker.encode_context(history)
                ranker.rank(context, candidates, products)
                times.append((time.perf_counter() - t0) * 1000.0)
            row = {
                "layers": layers,
                "budget": budget,
                "candidates": args.candidates,
                "threads": args.threads,
                "p50_ms": round(statistics.median(times), 1),
                "p99_ms": round(_percentile(times, 99), 1),
                "mean_ms": round(statistics.fmean(times), 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
