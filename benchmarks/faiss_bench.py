"""Benchmark FAISS index families on synthetic product-like vectors.

For each index (exact Flat, IVF-Flat with an nprobe sweep, HNSW32 with an efSearch
sweep, IVF-SQ8, SQ8 flat and IVF-PQ) prints: build time (train + add), serialised index
size, queries/s one query at a time and in batches of 64, and recall@10 against exact
Flat, as a Markdown table.

The vectors mimic sentence embeddings of a catalogue: a two-level mixture (departments,
then product types with Zipf-distributed sizes), each product type spanning a low-rank
subspace plus isotropic noise, L2-normalised. Queries are "user vectors": the normalised
mean of 1-5 products from one product type, which is what the recommender searches with.

Usage::

    python benchmarks/faiss_bench.py --n 50000 --queries 500
    nohup python benchmarks/faiss_bench.py --out /tmp/faiss_bench_1m.json \\
        > /tmp/faiss_bench_1m.md 2>&1 &

Slow configurations are time-boxed (``--single-budget``, ``--batch-budget``): throughput
and recall are then measured on the queries that fit in the budget (the table says how
many).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from newarrivals.indexer.arrays import F32Array, I64Array

K = 10
BATCH = 64


@dataclass(frozen=True)
class Row:
    """One measured configuration."""

    index: str
    params: str
    build_s: float
    size_mb: float
    single_qps: float
    batch_qps: float
    recall_at_10: float
    queries_used: int


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    parser.add_argument("--dim", type=int, default=384, help="vector dimension")
    parser.add_argument("--queries", type=int, default=1000, help="query vectors")
    parser.add_argument("--single", type=int, default=200, help="queries timed one by one")
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists (0: ~4*sqrt(n))")
    parser.add_argument("--pq-m", type=int, default=32, help="PQ sub-quantizers")
    parser.add_argument("--train-size", type=int, default=0, help="0: 64 per IVF list")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single-budget", type=float, default=10.0, help="s per config")
    parser.add_argument("--batch-budget", type=float, default=30.0, help="s per config")
    parser.add_argument(
        "--skip", default="", help="comma-separated families to skip: hnsw,ivfpq,sq8,ivfsq8"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write rows as JSON")
    args = parser.parse_args(argv)
    for name in ("n", "dim", "queries", "single", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}.")
    if args.dim % args.pq_m:
        parser.error(f"--dim {args.dim} must be divisible by --pq-m {args.pq_m}.")
    return args


def normalise(x: F32Array) -> F32Array:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: F32Array = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


class CatalogueMixture:
    """A seeded two-level Gaussian mixture shaped like product embeddings."""

    def __init__(self, dim: int, seed: int, departments: int = 24, types: int = 2000) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.rank = min(16, dim)
        dept = normalise(rng.standard_normal((departments, dim)).astype(np.float32))
        parent = rng.integers(0, departments, size=types)
        own = normalise(rng.standard_normal((types, dim)).astype(np.float32))
        self.centres = normalise(0.7 * dept[parent] + 0.7 * own)
        self.bases = (rng.standard_normal((types, self.rank, dim)) / math.sqrt(dim)).astype(
            np.float32
        )
        # Zipf-like product-type sizes: a few huge types (T-shirts), a long tail.
        weights = 1.0 / np.arange(1, types + 1) ** 0.8
        self.weights = weights / weights.sum()
        self.types = types

    def sample(self, n: int, rng: np.random.Generator) -> tuple[F32Array, I64Array]:
        cluster = rng.choice(self.types, size=n, p=self.weights).astype(np.int64)
        z = rng.standard_normal((n, self.rank)).astype(np.float32) * 0.9
        local = np.einsum("nr,nrd->nd", z, self.bases[cluster])
        noise = rng.standard_normal((n, self.dim)).astype(np.float32) * (0.45 / math.sqrt(self.dim))
        return normalise(self.centres[cluster] + local + noise), cluster

    def database(self, n: int, seed: int, chunk: int = 100_000) -> F32Array:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            out[start:stop] = self.sample(stop - start, rng)[0]
        return out

    def user_queries(self, n: int, seed: int) -> F32Array:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        for i in range(n):
            cluster = int(rng.choice(self.types, p=self.weights))
            m = int(rng.integers(1, 6))
            z = rng.standard_normal((m, self.rank)).astype(np.float32) * 0.9
            items = self.centres[cluster] + z @ self.bases[cluster]
            items += rng.standard_normal((m, self.dim)).astype(np.float32) * (
                0.45 / math.sqrt(self.dim)
            )
            out[i] = normalise(items).mean(axis=0)
        return normalise(out)


def index_bytes(index: faiss.Index) -> int:
    return len(faiss.serialize_index(index))


def recall_at_k(found: I64Array, truth: I64Array) -> float:
    hits = sum(
        len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)
    )
    return hits / truth.size


SearchFn = Callable[[F32Array], I64Array]


def time_single(search: SearchFn, queries: F32Array, count: int, budget: float) -> float:
    done = 0
    start = time.perf_counter()
    for i in range(min(count, queries.shape[0])):
        search(queries[i : i + 1])
        done += 1
        if time.perf_counter() - start > budget:
            break
    return done / (time.perf_counter() - start)


def time_batches(search: SearchFn, queries: F32Array, budget: float) -> tuple[float, I64Array]:
    """Batch QPS and the ids found, for as many 64-query batches as fit the budget."""
    found = []
    start = time.perf_counter()
    for lo in range(0, queries.shape[0], BATCH):
        found.append(search(queries[lo : lo + BATCH]))
        if time.perf_counter() - start > budget:
            break
    elapsed = time.perf_counter() - start
    ids = np.concatenate(found)
    return ids.shape[0] / elapsed, ids


def measure(
    name: str,
    params: str,
    index: faiss.Index,
    search_params: Any,
    build_s: float,
    size: int,
    queries: F32Array,
    truth: I64Array,
    args: argparse.Namespace,
) -> Row:
    def search(q: F32Array) -> I64Array:
        _, ids = index.search(q, K, params=search_params)
        return np.asarray(ids, dtype=np.int64)

    search(queries[:BATCH])  # warm-up: page in the codes, spin up OpenMP
    single_qps = time_single(search, queries, args.single, args.single_budget)
    batch_qps, found = time_batches(search, queries, args.batch_budget)
    row = Row(
        index=name,
        params=params,
        build_s=build_s,
        size_mb=size / 2**20,
        single_qps=single_qps,
        batch_qps=batch_qps,
        recall_at_10=recall_at_k(found, truth[: found.shape[0]]),
        queries_used=int(found.shape[0]),
    )
    print(
        f"  {name:<16} {params:<14} recall@10={row.recall_at_10:.3f} "
        f"single={single_qps:,.0f}/s batch={batch_qps:,.0f}/s",
        file=sys.stderr,
        flush=True,
    )
    return row


def build(
    factory: str, xb: F32Array, train_size: int, seed: int
) -> tuple[faiss.Index, float, float]:
    """Train on a seeded sample and add everything; returns (index, train s, add s)."""
    index = faiss.index_factory(xb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    core = faiss.downcast_index(index)
    if hasattr(core, "do_polysemous_training"):
        # As in the library: no polysemous training (never used, and it dominates PQ).
        core.do_polysemous_training = False
    start = time.perf_counter()
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(xb.shape[0], size=min(train_size, xb.shape[0]), replace=False))
        index.train(np.ascontiguousarray(xb[sample]))
    trained = time.perf_counter()
    index.add(xb)
    return index, trained - start, time.perf_counter() - trained


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> list[Row]:
    nlist = args.nlist or max(16, 2 ** round(math.log2(4 * math.sqrt(args.n))))
    nlist = min(nlist, max(1, args.n // 39))
    train_size = args.train_size or min(args.n, 64 * nlist)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    log(f"generating {args.n:,} x {args.dim} database and {args.queries:,} queries")
    mixture = CatalogueMixture(args.dim, args.seed)
    xb = mixture.database(args.n, args.seed + 1)
    xq = mixture.user_queries(args.queries, args.seed + 2)

    rows: list[Row] = []
    log("Flat (exact): ground truth")
    flat, _, add_s = build("Flat", xb, train_size, args.seed)
    _, truth = flat.search(xq, K)
    rows.append(measure("Flat", "exact", flat, None, add_s, index_bytes(flat), xq, truth, args))
    del flat

    def ivf_family(factory: str, probes: Sequence[int]) -> None:
        log(f"{factory}: train on {train_size:,}, add {args.n:,}")
        index, train_s, add_s = build(factory, xb, train_size, args.seed)
        size = index_bytes(index)
        log(f"{factory}: train {train_s:.1f}s add {add_s:.1f}s")
        for nprobe in probes:
            params = faiss.SearchParametersIVF()
            params.nprobe = nprobe
            rows.append(
                measure(
                    factory,
                    f"nprobe={nprobe}",
                    index,
                    params,
                    train_s + add_s,
                    size,
                    xq,
                    truth,
                    args,
                )
            )

    ivf_family(f"IVF{nlist},Flat", (1, 4, 16, 64))

    if "hnsw" not in skip:
        log("HNSW32: build")
        hnsw, _, add_s = build("HNSW32", xb, train_size, args.seed)
        size = index_bytes(hnsw)
        log(f"HNSW32: build {add_s:.1f}s")
        for ef in (16, 32, 64, 128):
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = ef
            rows.append(
                measure("HNSW32", f"efSearch={ef}", hnsw, params, add_s, size, xq, truth, args)
            )
        del hnsw

    if "ivfsq8" not in skip:
        ivf_family(f"IVF{nlist},SQ8", (16, 64))
    if "sq8" not in skip:
        log("SQ8 (flat scan of 8-bit codes)")
        sq, train_s, add_s = build("SQ8", xb, train_size, args.seed)
        rows.append(
            measure(
                "SQ8", "exhaustive", sq, None, train_s + add_s, index_bytes(sq), xq, truth, args
            )
        )
        del sq
    if "ivfpq" not in skip:
        ivf_family(f"IVF{nlist},PQ{args.pq_m}", (16, 64))
    return rows


def markdown(rows: Sequence[Row], args: argparse.Namespace) -> str:
    head = (
        f"FAISS on {args.n:,} x {args.dim} clustered unit vectors, {args.queries:,} user-vector "
        f"queries, k={K}, inner product, {args.threads} thread(s), faiss {faiss.__version__}.\n\n"
        "| index | search params | build s | size MB | 1-query QPS | batch-64 QPS "
        "| recall@10 | queries |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r.index} | {r.params} | {r.build_s:.1f} | {r.size_mb:,.0f} | {r.single_qps:,.0f} "
        f"| {r.batch_qps:,.0f} | {r.recall_at_10:.3f} | {r.queries_used} |\n"
        for r in rows
    )
    return head + body


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Thread count is set here, at startup, never at import.
    faiss.omp_set_num_threads(args.threads)
    start = time.perf_counter()
    rows = run(args)
    table = markdown(rows, args)
    print(table)
    print(f"Total wall time: {time.perf_counter() - start:.0f} s")
    if args.out is not None:
        payload = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "faiss": faiss.__version__,
            "rows": [asdict(r) for r in rows],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
