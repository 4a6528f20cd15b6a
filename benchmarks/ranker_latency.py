"""Ranker speed and quality, step by step: p50/p99 per request next to NDCG@20 and ECE.

A request is what serving does: tokenise the user's context once
(:meth:`~newarrivals.ranker.Ranker.encode_context`), then
:meth:`~newarrivals.ranker.Ranker.rank` -- candidate token ids from the per-product cache
(warmed with the whole catalogue first, as serving does at load), one batched forward
pass, softmax, sort. Each variant adds one step to the one before it:

1. ``teacher 6L`` -- the MiniLM cross-encoder (torch, fp32, the teacher's token budgets);
2. ``teacher 2L`` -- MiniLM truncated to 2 layers (trained separately);
3. ``teacher 2L, tight budget`` -- the same weights reading ``--tight`` context/candidate
   tokens (no retraining: a pessimistic view of the budget's quality cost);
4. ``student torch`` -- the distilled student (``newarrivals distill-ranker``);
5. ``student ONNX fp32`` -- the same weights in ONNX Runtime;
6. ``student ONNX int8`` -- dynamic int8 quantisation;
7. ``student ONNX int8, no cache`` -- the candidates tokenised on every request instead
   (what the per-product cache saves).

Latency: requests use real catalogue products (random contexts of 10 recent products and
random candidate sets) for 20, 50 and 100 candidates, at each ``--threads`` count; a cell
runs ``--max-requests`` requests or ``--seconds`` of them, whichever ends first (at least
``--min-requests``); the table shows how many. With a CUDA GPU the torch variants also run
there. Quality: NDCG@20 and top-1 ECE (with each ranker's own temperature) on held-out
lists of 50 candidates -- the users the teacher's training split held out, each list the
real next purchase, 45 retrieval hard negatives and 4 random products -- scored through
the same ``rank`` path.

Without ``--teacher`` etc. the models are the untrained bundled MiniLM (6 and 2 layers)
and a student built from it: the latency rows are real, the quality columns are ``n/a``.
The machine is shared: compare the speed-ups measured in one run, not absolute numbers.

Prepare the artifacts (synthetic catalogue; a few minutes to an hour on 2 CPU cores), then
run (about 5-8 minutes)::

    newarrivals synth --out /tmp/rk/synth --products 2000 --users 300
    newarrivals build-index --catalog /tmp/rk/synth --out /tmp/rk/index --no-image
    newarrivals train-ranker --index /tmp/rk/index --catalog /tmp/rk/synth --out /tmp/rk/t6
    newarrivals train-ranker --index /tmp/rk/index --catalog /tmp/rk/synth --out /tmp/rk/t2 \\
        --layers 2
    newarrivals distill-ranker --teacher /tmp/rk/t6 --index /tmp/rk/index \\
        --catalog /tmp/rk/synth --out /tmp/rk/student --onnx fp32 int8
    python benchmarks/ranker_latency.py --catalog /tmp/rk/synth --index /tmp/rk/index \\
        --teacher /tmp/rk/t6 --teacher-2l /tmp/rk/t2 --student /tmp/rk/student \\
        --json /tmp/rk/latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.evaluation.metrics import one_relevant_ndcg_at_k
from newarrivals.indexer.index.filters import Candidate
from newarrivals.ranker import Ranker, RankerConfig, load_ranker, softmax
from newarrivals.ranker.base import DEFAULT_CACHE_SIZE
from newarrivals.ranker.crossencoder.model import CrossEncoderRanker, TorchPairRanker, read_manifest
from newarrivals.ranker.export import export_onnx
from newarrivals.ranker.onnx_sessions import configure_threads
from newarrivals.ranker.training.cold_start import ColdStartListConfig
from newarrivals.ranker.training.lists import TrainingList, build_training_lists
from newarrivals.ranker.training.metrics import expected_calibration_error
from newarrivals.ranker.training.pipeline import list_product_vectors
from newarrivals.ranker.training.record import read_training_record
from newarrivals.ranker.training.student_init import StudentConfig, build_student
from newarrivals.ranker.training.teacher_lists import cold_start_lists, replay_lists

SIZES = (20, 50, 100)


@dataclass
class Variant:
    """One row group: how to get the ranker at a thread count, and what it is."""

    name: str
    runtime: str
    shape: str
    tokens: str
    make: Callable[[int | None], Ranker]
    device: str = "cpu"
    cached: bool = True
    torch_ranker: TorchPairRanker | None = None
    quality: dict[str, float | None] = field(default_factory=dict)


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load_catalogue(path: Path | None) -> tuple[dict[str, Product], list[Any]]:
    if path is None:
        from newarrivals.indexer.catalog.synth import SynthConfig, generate

        catalog = generate(SynthConfig(n_products=1000, n_users=50, seed=0)).catalog
    else:
        from newarrivals.indexer.catalog.readers import read_catalog

        catalog = read_catalog(path)
    return {p.product_id: p for p in catalog.products}, list(catalog.interactions)


def _requests(
    products: Mapping[str, Product], n: int, count: int, seed: int
) -> list[tuple[list[Product], list[Candidate]]]:
    ids = sorted(products)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        picks = rng.permutation(len(ids))[: n + 10]
        recent = [products[ids[int(i)]] for i in picks[:10]]
        candidates = [
            Candidate(ids[int(i)], 1.0 - j / (n + 1)) for j, i in enumerate(picks[10 : 10 + n])
        ]
        out.append((recent, candidates))
    return out


def _latency(
    ranker: Ranker,
    products: Mapping[str, Product],
    n: int,
    *,
    seconds: float,
    min_requests: int,
    max_requests: int,
    warmup: int,
) -> dict[str, float]:
    requests = _requests(products, n, max_requests + warmup, seed=n)
    for recent, candidates in requests[:warmup]:
        ranker.rank(ranker.encode_context(recent), candidates, products)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    for recent, candidates in requests[warmup:]:
        t0 = time.perf_counter()
        context = ranker.encode_context(recent)
        ranker.rank(context, candidates, products)
        times.append((time.perf_counter() - t0) * 1000.0)
        if len(times) >= min_requests and time.perf_counter() > deadline:
            break
    return {
        "requests": len(times),
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(_percentile(times, 99), 2),
        "mean_ms": round(statistics.fmean(times), 2),
    }


def _eval_lists(
    args: argparse.Namespace,
    products: Mapping[str, Product],
    events: list[Any],
    teacher_dir: Path | None,
) -> list[TrainingList]:
    """Held-out lists of 50 (45 hard + 4 random negatives) for users the teacher never
    trained on, built with the teacher's recorded recipe: its validation users (replay
    lists) or its holdout users (cold-start windows)."""
    if teacher_dir is None:
        return []
    manifest = read_manifest(teacher_dir)
    record = read_training_record(teacher_dir)
    base = replace(record.train_config, device="cpu")
    wide = replace(
        base,
        retrieval_candidates=max(50, base.retrieval_candidates),
        hard_negatives=45,
        random_negatives=4,
    )
    max_items = RankerConfig.from_dict(manifest["config"]).max_context_items
    if record.cold_start and record.cutoff is not None:
        cutoff = record.cutoff
        known = [p for p in products.values() if p.launched_at is None or p.launched_at < cutoff]
        vectors = list_product_vectors(
            known,
            text_model=record.text_model,
            image_tower=Path(record.image_tower) if record.image_tower else None,
            cache_dir=args.cache_dir,
            device="cpu",
        )
        recipe = record.lists_config or ColdStartListConfig()
        _, _, holdout = cold_start_lists(
            events, products, vectors, cutoff, base, recipe, max_context_items=max_items
        )
        users = {lst.user_id for lst in holdout}
        _, _, wide_holdout = cold_start_lists(
            events, products, vectors, cutoff, wide, recipe, max_context_items=max_items
        )
        held = [lst for lst in wide_holdout if lst.user_id in users]
    else:
        if args.index is None:
            return []
        from newarrivals.indexer.index.version import IndexVersion

        store = IndexVersion.load(args.index).store
        _, val = replay_lists(events, products, store, base, max_context_items=max_items)
        users = {lst.user_id for lst in val}
        built = build_training_lists(events, products, store, wide, max_context_items=max_items)
        held = [lst for lst in built if lst.user_id in users]
    return held[: args.eval_lists]


def _quality(
    ranker: Ranker, lists: Sequence[TrainingList], products: Mapping[str, Product]
) -> dict[str, float | None]:
    if not lists:
        return {"ndcg@20": None, "ece_top1": None}
    size = len(lists[0].candidate_ids)
    scores = np.zeros((len(lists), size))
    for row, lst in enumerate(lists):
        context = ranker.encode_context([products[p] for p in lst.context_ids])
        candidates = [Candidate(pid, 0.0) for pid in lst.candidate_ids]
        raw = {c.product_id: c.raw_score for c in ranker.rank(context, candidates, products)}
        scores[row] = [raw[pid] for pid in lst.candidate_ids]
    positives = np.asarray([lst.positive for lst in lists], dtype=np.int64)
    probs = softmax(scores, ranker.temperature)
    return {
        "ndcg@20": round(one_relevant_ndcg_at_k(scores, positives, 20), 4),
        "ece_top1": round(expected_calibration_error(probs, positives, 10), 4),
    }


def _tokens(config: RankerConfig) -> str:
    return f"{config.context_tokens}/{config.candidate_tokens}"


def _shape(ranker: TorchPairRanker) -> str:
    arch = ranker.architecture
    shared = ", shared ctx" if arch["model_type"] == "shared-context" else ""
    return (
        f"{arch['num_layers']}L x {arch['hidden_size']}{shared} ({arch['parameters'] / 1e6:.1f}M)"
    )


def _variants(args: argparse.Namespace, workdir: Path) -> list[Variant]:
    """Load (or, without artifacts, build untrained) the rankers once; wrap per thread count."""
    trained = args.teacher is not None
    teacher = (
        CrossEncoderRanker.load(args.teacher)
        if trained
        else CrossEncoderRanker.from_base(RankerConfig(context_tokens=64, candidate_tokens=32))
    )
    teacher2 = (
        CrossEncoderRanker.load(args.teacher_2l)
        if args.teacher_2l is not None
        else CrossEncoderRanker.from_base(replace(teacher.config, num_layers=2))
    )
    tight_context, tight_candidate = args.tight
    tight_config = replace(
        teacher2.config, context_tokens=tight_context, candidate_tokens=tight_candidate
    )

    def student(path: Path | None, architecture: str) -> TorchPairRanker:
        if path is None:
            return build_student(teacher, StudentConfig(architecture=architecture))
        loaded = load_ranker(path)
        if not isinstance(loaded, TorchPairRanker):
            raise SystemExit(f"{path} is not a torch student artifact")
        return loaded

    def onnx_dir(ranker: TorchPairRanker, path: Path | None, name: str) -> Path:
        if path is not None and (path / "onnx" / "ranker.json").is_file():
            return path / "onnx"
        return export_onnx(ranker, workdir / name)

    def torch_variant(
        name: str, ranker: TorchPairRanker, config: RankerConfig | None = None
    ) -> Variant:
        view = ranker
        if config is not None and isinstance(ranker, CrossEncoderRanker):
            view = CrossEncoderRanker(
                ranker.torch_model, ranker.tokenizer, config, temperature=ranker.temperature
            )

        def make(threads: int | None) -> Ranker:
            configure_threads(threads)
            return view

        return Variant(name, "torch", _shape(ranker), _tokens(view.config), make, torch_ranker=view)

    def onnx_variant(
        name: str, source: TorchPairRanker, directory: Path, precision: str, cache_size: int
    ) -> Variant:
        def make(threads: int | None) -> Ranker:
            return load_ranker(
                directory, precision=precision, threads=threads, cache_size=cache_size
            )

        return Variant(
            name,
            f"ONNX {precision}",
            _shape(source),
            _tokens(source.config),
            make,
            cached=cache_size > 0,
        )

    plain = student(args.student, "bert")
    plain_onnx = onnx_dir(plain, args.student, "student-onnx")
    shared = student(args.shared_student, "shared-context")
    shared_onnx = onnx_dir(shared, args.shared_student, "shared-onnx")
    untrained = " (untrained)"
    plain_name = "student" + ("" if args.student else untrained)
    shared_name = "shared-context student" + ("" if args.shared_student else untrained)
    return [
        torch_variant("teacher 6L" + ("" if trained else untrained), teacher),
        torch_variant("teacher 2L" + ("" if args.teacher_2l else untrained), teacher2),
        torch_variant("teacher 2L, tight budget", teacher2, tight_config),
        torch_variant(plain_name, plain),
        onnx_variant(plain_name, plain, plain_onnx, "fp32", DEFAULT_CACHE_SIZE),
        onnx_variant(plain_name, plain, plain_onnx, "int8", DEFAULT_CACHE_SIZE),
        onnx_variant(plain_name + ", no token cache", plain, plain_onnx, "int8", 0),
        torch_variant(shared_name, shared),
        onnx_variant(shared_name, shared, shared_onnx, "fp32", DEFAULT_CACHE_SIZE),
        onnx_variant(shared_name, shared, shared_onnx, "int8", DEFAULT_CACHE_SIZE),
    ]


def _gpu_variants(variants: Sequence[Variant]) -> list[Variant]:
    """The torch variants again on CUDA (after every CPU row: the weights move there)."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for v in variants:
        source = v.torch_ranker
        if source is None or not v.cached:
            continue

        def make(_: int | None, source: TorchPairRanker = source) -> Ranker:
            return type(source)(
                source.torch_model.to("cuda"),
                source.tokenizer,
                source.config,
                temperature=source.temperature,
                device="cuda",
            )

        out.append(replace(v, runtime="torch cuda", make=make, device="cuda", quality={}))
    return out


def _table(
    rows: list[dict[str, Any]], sizes: Sequence[int], base: dict[tuple[Any, int], float]
) -> str:
    head = ["variant", "runtime", "model", "tokens ctx/cand", "threads"]
    head += [f"{n} cand. p50 / p99 ms (n)" for n in sizes]
    head += ["speed-up @50 (p50)", "NDCG@20", "ECE top-1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["variant"], row["runtime"], row["model"], row["tokens"], str(row["threads"])]
        for n in sizes:
            cell = row["latency"].get(str(n))
            cells.append(
                f"{cell['p50_ms']:.1f} / {cell['p99_ms']:.1f} ({cell['requests']})" if cell else "-"
            )
        ref = base.get((row["threads"], 50))
        at50 = row["latency"].get("50")
        cells.append(f"{ref / at50['p50_ms']:.1f}x" if ref and at50 else "-")
        q = row["quality"]
        cells.append("n/a" if q.get("ndcg@20") is None else f"{q['ndcg@20']:.4f}")
        cells.append("n/a" if q.get("ece_top1") is None else f"{q['ece_top1']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=None, help="catalogue (default: synth)")
    parser.add_argument("--index", type=Path, default=None, help="index (for quality lists)")
    parser.add_argument("--teacher", type=Path, default=None, help="6-layer teacher artifact")
    parser.add_argument("--teacher-2l", type=Path, default=None, help="2-layer teacher artifact")
    parser.add_argument("--student", type=Path, default=None, help="distilled student artifact")
    parser.add_argument(
        "--shared-student", type=Path, default=None, help="shared-context student artifact"
    )
    parser.add_argument("--candidates", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tight", type=int, nargs=2, default=[48, 24], metavar=("CTX", "CAND"))
    parser.add_argument("--seconds", type=float, default=4.0, help="time cap per cell")
    parser.add_argument("--min-requests", type=int, default=10)
    parser.add_argument("--max-requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--eval-lists", type=int, default=100, help="held-out lists for NDCG")
    parser.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (cold-start)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    started = time.perf_counter()
    load_before = os.getloadavg()
    products, events = _load_catalogue(args.catalog)
    eval_lists = _eval_lists(args, products, events, args.teacher)
    _log(f"{len(products)} products; {len(eval_lists)} held-out lists of 50 for quality")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        configure_threads(1)
        variants = _variants(args, Path(tmp))
        variants += _gpu_variants(variants)
        for variant in variants:
            if eval_lists and variant.device == "cpu":
                t0 = time.perf_counter()
                variant.quality = _quality(variant.make(1), eval_lists, products)
                spent = time.perf_counter() - t0
                _log(f"{variant.name} {variant.runtime}: {variant.quality} ({spent:.0f}s)")
            for threads in args.threads if variant.device == "cpu" else [None]:
                ranker = variant.make(threads)
                if variant.cached:
                    ranker.warm_cache(products.values())
                latency = {}
                for n in args.candidates:
                    latency[str(n)] = _latency(
                        ranker,
                        products,
                        min(n, len(products) - 10),
                        seconds=args.seconds,
                        min_requests=args.min_requests,
                        max_requests=args.max_requests,
                        warmup=args.warmup,
                    )
                row = {
                    "variant": variant.name,
                    "runtime": variant.runtime,
                    "model": variant.shape,
                    "tokens": variant.tokens,
                    "threads": threads if threads is not None else "gpu",
                    "token_cache": variant.cached,
                    "latency": latency,
                    "quality": variant.quality,
                }
                rows.append(row)
                _log(json.dumps(row))
    base = {
        (row["threads"], int(n)): cell["p50_ms"]
        for row in rows[: len(args.threads)]
        for n, cell in row["latency"].items()
    }
    table = _table(rows, args.candidates, base)
    print(table)
    meta = {
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "platform": platform.platform(),
        "eval_lists": len(eval_lists),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    print(f"\n{meta['seconds']}s; load average {load_before} -> {meta['load_average_after']}")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "meta": meta}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
