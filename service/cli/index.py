"""Catalogue and index commands: ``synth``, ``build-index``, ``recommend``, ``similar``,
``info``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.synth import SynthConfig, generate, write_synthetic
from newarrivals.indexer.encoders import FusionConfig, ImageEncoderConfig, TextEncoderConfig
from newarrivals.indexer.index.ann import AnnConfig
from newarrivals.indexer.index.build import ENCODER_RUNTIMES, BuildConfig, build_index
from newarrivals.indexer.index.version import IndexVersion
from newarrivals.indexer.retrieval.search import (
    PopularFallback,
    recommend_for_user,
    similar_products,
)
from newarrivals.indexer.retrieval.users import UserVectors
from newarrivals.service.cli.common import (
    add_query_filters,
    catalog_titles,
    filter_from,
    print_candidates,
)

__all__ = ["add_parsers"]


def _add_synth(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("synth", help="generate the synthetic catalogue (the embedded default)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--products", type=int, default=2000)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["jsonl", "parquet", "csv"], default="jsonl")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    synth = generate(SynthConfig(n_products=args.products, n_users=args.users, seed=args.seed))
    out = write_synthetic(synth, args.out, fmt=args.format)
    print(
        f"wrote {len(synth.catalog.products)} products, {len(synth.catalog.interactions)} "
        f"events, {len(synth.new_arrival_ids)} new arrivals (after {synth.cutoff.date()}) "
        f"to {out}"
    )
    return 0


def _add_build(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("build-index", help="bulk (re)build: catalogue -> vectors -> index version")
    p.add_argument(
        "--catalog",
        type=Path,
        required=True,
        help="generic-schema folder/file or an H&M-layout folder",
    )
    p.add_argument("--out", type=Path, required=True, help="index root (versions go under it)")
    p.add_argument(
        "--text-model",
        default=TextEncoderConfig.model,
        help="sentence-transformers model: bundled (default), local path or name",
    )
    p.add_argument("--no-text", action="store_true", help="index photos only")
    p.add_argument(
        "--image-model",
        default=ImageEncoderConfig.model,
        help="open_clip model name, local-dir:PATH, or builtin:tiny (default)",
    )
    p.add_argument(
        "--image-pretrained", default=None, help="open_clip pretrained tag or local checkpoint path"
    )
    p.add_argument("--no-image", action="store_true", help="index text only")
    p.add_argument("--fusion", choices=["concat", "sum"], default="concat")
    p.add_argument("--text-weight", type=float, default=FusionConfig.text_weight)
    p.add_argument("--image-weight", type=float, default=FusionConfig.image_weight)
    p.add_argument(
        "--ann",
        default=None,
        help="FAISS factory string (Flat, HNSW32, IVF1024,Flat, IVF1024,SQ8 ...); "
        "default picks by catalogue size",
    )
    p.add_argument("--nprobe", type=int, default=AnnConfig.nprobe)
    p.add_argument("--ef-search", type=int, default=AnnConfig.ef_search)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: <out>/cache")
    p.add_argument("--strict", action="store_true", help="fail on the first bad row")
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument(
        "--encoder-runtime",
        choices=list(ENCODER_RUNTIMES),
        default="auto",
        help="auto: on the CPU, encode with verified ONNX copies of the encoders kept in the "
        "cache (written after a torch build); torch: always torch",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--summary-json", type=Path, default=None, help="write the summary as JSON")
    p.set_defaults(func=_cmd_build)


def _cmd_build(args: argparse.Namespace) -> int:
    config = BuildConfig(
        catalog=args.catalog,
        out=args.out,
        text=None if args.no_text else TextEncoderConfig(model=args.text_model),
        image=None
        if args.no_image
        else ImageEncoderConfig(model=args.image_model, pretrained=args.image_pretrained),
        fusion=FusionConfig(
            mode=args.fusion, text_weight=args.text_weight, image_weight=args.image_weight
        ),
        ann=AnnConfig(factory=args.ann, nprobe=args.nprobe, ef_search=args.ef_search)
        if args.ann
        else None,
        device=args.device,
        cache_dir=args.cache_dir,
        strict=args.strict,
        chunk_size=args.chunk_size,
        progress=not args.no_progress,
        encoder_runtime=args.encoder_runtime,
    )
    summary = build_index(config)
    print(summary.format())
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2))
    return 0


def _add_recommend(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("recommend", help="top-k products for a user from their history")
    p.add_argument("--index", type=Path, required=True, help="index root or version directory")
    p.add_argument("--catalog", type=Path, required=True, help="catalogue with the interactions")
    p.add_argument("--user", action="append", required=True, help="user id (repeatable)")
    p.add_argument("--include-purchased", action="store_true")
    add_query_filters(p)
    p.set_defaults(func=_cmd_recommend)

    s = sub.add_parser("similar", help="products nearest a product")
    s.add_argument("--index", type=Path, required=True)
    s.add_argument("--catalog", type=Path, default=None, help="for titles in the output")
    s.add_argument("--product", required=True)
    add_query_filters(s)
    s.set_defaults(func=_cmd_similar)

    i = sub.add_parser("info", help="print an index version's manifest")
    i.add_argument("--index", type=Path, required=True)
    i.set_defaults(func=_cmd_info)


def _cmd_recommend(args: argparse.Namespace) -> int:
    version = IndexVersion.load(args.index)
    catalog = read_catalog(args.catalog)
    users = UserVectors(version.store)
    users.update_many(catalog.interactions)
    products = {p.product_id: p for p in catalog.products}
    flt = filter_from(args)
    fallback = PopularFallback.fit(version.store, catalog.interactions)
    for user_id in args.user:
        result = recommend_for_user(
            version.store,
            users,
            user_id,
            args.k,
            flt,
            fallback=fallback,
            exclude_purchased=not args.include_purchased,
        )
        state = users.state(user_id)
        recent = ", ".join(
            products[p].title[:30] or p
            for p in (state.recent[:3] if state else [])
            if p in products
        )
        print(f"user {user_id} (index {version.version}); recently: {recent or '-'}")
        if result.fallback:
            print(f"  (fallback) {result.reason}")
        print_candidates(result.candidates, products)
    return 0


def _cmd_similar(args: argparse.Namespace) -> int:
    version = IndexVersion.load(args.index)
    cands = similar_products(version.store, args.product, args.k, filter_from(args))
    print_candidates(cands, catalog_titles(args.catalog))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    version = IndexVersion.load(args.index, verify=False)
    manifest = {k: v for k, v in version.manifest.to_dict().items() if k != "content_hashes"}
    print(json.dumps(manifest, indent=2))
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register this group's commands."""
    _add_synth(sub)
    _add_build(sub)
    _add_recommend(sub)
