"""Cost of the serving first stages: ``late-max`` (exact late fusion) against ``mean``.

``NEWARRIVALS_RETRIEVAL=late-max`` scores every product passing the request's filters
(:func:`newarrivals.indexer.retrieval.search.late_max_search`); ``mean`` is one index search with
the user's vector. This builds exact (Flat) indexes of random concat-fused vectors (384 text
+ 384 photo dims, the bundled MiniLM's and a tower's), then times both for users with 20
recent products, unfiltered and with a new-arrivals filter that keeps 10% of the products,
and prints p50 and p99 per size. Ratios within one run are what to compare.

    python benchmarks/late_retrieval_bench.py --sizes 10000,100000 --requests 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.encoders.fusion import ConcatLayout, FusionConfig, fuse
from newarrivals.indexer.index.ann import AnnConfig
from newarrivals.indexer.index.filters import SearchFilter
from newarrivals.indexer.index.store import ProductIndex
from newarrivals.indexer.retrieval.search import late_max_search

DIM = 384
START = datetime(2024, 1, 1, tzinfo=UTC)


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="10000,100000", help="products, comma-separated")
    p.add_argument("--requests", type=int, default=50, help="timed requests per cell")
    p.add_argument("--recent", type=int, default=20, help="recent products per user")
    p.add_argument("--k", type=int, default=50, help="candidates (the re-rank depth)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    layout = ConcatLayout((("text", 0, DIM), ("image", DIM, 2 * DIM)), FusionConfig())
    # 100 launch days: "launched after day 89.5" keeps the last 10% of the products.
    new_arrivals = SearchFilter(launched_after=START + timedelta(days=89, hours=12))
    rows = []
    print("| products | filter | late-max p50 / p99 ms | mean p50 / p99 ms | p50 ratio |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for n in (int(x) for x in args.sizes.split(",")):
        vectors = fuse(FusionConfig(), _unit(rng, n), None, _unit(rng, n), None)
        products = [
            Product(f"p{j}", title="x", launched_at=START + timedelta(days=j % 100))
            for j in range(n)
        ]
        store = ProductIndex.build(products, vectors, AnnConfig(factory="Flat"))
        for label, flt in (("none", SearchFilter()), ("new arrivals (10%)", new_arrivals)):
            late: list[float] = []
            mean: list[float] = []
            for _ in range(args.requests):
                recent = vectors[rng.choice(n, args.recent, replace=False)]
                t0 = time.perf_counter()
                late_max_search(store, layout, recent, args.k, flt)
                late.append(time.perf_counter() - t0)
                query = recent.mean(axis=0)
                query /= np.linalg.norm(query)
                t0 = time.perf_counter()
                store.search(query[None, :], args.k, flt)
                mean.append(time.perf_counter() - t0)
            (l50, l99), (m50, m99) = _percentiles(late), _percentiles(mean)
            print(f"| {n:,} | {label} | {l50:.1f} / {l99:.1f} | {m50:.1f} / {m99:.1f} | "
                  f"{l50 / m50:.1f}x |")  # fmt: skip
            rows.append(
                {"products": n, "filter": label, "late_p50_ms": l50, "late_p99_ms": l99,
                 "mean_p50_ms": m50, "mean_p99_ms": m99}
            )  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
