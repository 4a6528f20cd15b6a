"""Encode throughput and full vs 1%-changed rebuild time on a synthetic catalogue.

Usage:
    python benchmarks/rebuild_bench.py --products 10000 --users 2000 --workdir /tmp/nb

Prints one Markdown table (progress goes to stderr). Each build runs in a fresh subprocess
(``newarrivals build-index``) so its wall time includes what a real refresh pays (imports,
model load), next to the in-process build time the library reports. All figures come from
one run: the ratios are what to compare, since these machines are noisy.

``--out PATH`` also writes the figures as JSON: ``rows`` (one per run: ``run``, ``wall_s``,
``build_s``, ``text_encoded``, ``image_encoded``), ``stages`` (the full build's per-stage
items and seconds), the catalogue size, and each build's raw summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def _build(catalog: Path, out: Path, summary: Path, extra: list[str]) -> tuple[float, dict]:  # type: ignore[type-arg]
    cmd = [
        sys.executable,
        "-m",
        "newarrivals.service.cli",
        "build-index",
        "--catalog",
        str(catalog),
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
        "--summary-json",
        str(summary),
        *extra,
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return wall, json.loads(summary.read_text())


def _change_one_percent(catalog_dir: Path, seed: int) -> int:
    from newarrivals.indexer.catalog.readers import read_catalog
    from newarrivals.indexer.catalog.writers import write_catalog

    catalog = read_catalog(catalog_dir)
    rng = np.random.default_rng(seed)
    n = max(1, len(catalog.products) // 100)
    picked = set(rng.choice(len(catalog.products), size=n, replace=False).tolist())
    products = []
    for i, p in enumerate(catalog.products):
        if i in picked:
            if p.has_text:
                p = replace(p, title=p.title + " (new season)")
            if p.image:
                img = Image.open(p.image).convert("RGB")
                img.putpixel((0, 0), (int(rng.integers(256)), 0, 0))
                new_path = Path(p.image).with_name(Path(p.image).stem + "-v2.png")
                img.save(new_path)
                p = replace(p, image=str(new_path))
        products.append(p)
    catalog.products = products
    write_catalog(catalog, catalog_dir)
    return n


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/newarrivals-rebuild-bench"))
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()

    from newarrivals.indexer.catalog.synth import SynthConfig, generate, write_synthetic

    shutil.rmtree(args.workdir, ignore_errors=True)
    catalog = args.workdir / "catalog"
    _log(f"generating a synthetic catalogue of {args.products} products, {args.users} users")
    t0 = time.perf_counter()
    write_synthetic(
        generate(SynthConfig(n_products=args.products, n_users=args.users, seed=args.seed)),
        catalog,
        progress=False,
    )
    synth_s = time.perf_counter() - t0
    index = args.workdir / "index"

    _log("[1/4] full rebuild, empty cache (new process)")
    full_wall, full = _build(catalog, index, args.workdir / "full.json", [])
    _log(f"[2/4] rebuild, nothing changed (full took {full_wall:.1f}s)")
    same_wall, same = _build(catalog, index, args.workdir / "same.json", [])
    changed = _change_one_percent(catalog, args.seed + 1)
    _log(f"[3/4] rebuild, 1% changed ({changed} products, new process)")
    inc_wall, inc = _build(catalog, index, args.workdir / "inc.json", [])

    # The same 1% refresh in a process that already imported torch, sentence-transformers
    # and open_clip (a scheduler or the service's ingestion worker): the marginal cost.
    from newarrivals.indexer.encoders import (
        ImageEncoder,
        ImageEncoderConfig,
        TextEncoder,
        TextEncoderConfig,
    )
    from newarrivals.indexer.index.build import BuildConfig, build_index

    _log("[4/4] rebuild, 1% changed, in this process (libraries already imported)")
    _ = TextEncoder(TextEncoderConfig(), "cpu").model, ImageEncoder(ImageEncoderConfig()).model
    _change_one_percent(catalog, args.seed + 2)
    t0 = time.perf_counter()
    warm_summary = build_index(
        BuildConfig(catalog=catalog, out=index, device="cpu", progress=False)
    )
    warm_s = time.perf_counter() - t0
    warm = warm_summary.to_dict()

    def stage(s: dict, name: str, key: str) -> float:  # type: ignore[type-arg]
        return float(s["stages"].get(name, {}).get(key, 0) or 0)

    rows = [
        ("full rebuild (empty cache)", full_wall, full),
        ("rebuild, nothing changed", same_wall, same),
        (f"rebuild, 1% changed ({changed} products)", inc_wall, inc),
        ("rebuild, 1% changed, warm process (libraries imported)", warm_s, warm),
    ]
    print(
        f"\nsynthetic catalogue: {args.products} products, {args.users} users "
        f"(generated in {synth_s:.1f}s)\n"
    )
    print(
        "| run | wall s (process) | build s (in-process) | text encoded | image encoded "
        "| % of full (wall) | % of full (in-process) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, wall, s in rows:
        print(
            f"| {name} | {wall:.1f} | {s['seconds']:.1f} | "
            f"{int(stage(s, 'text', 'encoded'))} | {int(stage(s, 'image', 'encoded'))} | "
            f"{100 * wall / full_wall:.1f}% | {100 * s['seconds'] / full['seconds']:.1f}% |"
        )
    print("\n| stage (full build) | items | seconds | items/s |\n|---|---|---|---|")
    for name in ("read", "text", "image", "fuse", "index"):
        st = full["stages"].get(name)
        if st:
            rate = st["items"] / st["seconds"] if st["seconds"] else float("inf")
            print(f"| {name} | {st['items']} | {st['seconds']:.2f} | {rate:,.0f} |")
    if args.out:
        payload: dict[str, Any] = {
            "products": args.products,
            "users": args.users,
            "changed": changed,
            "rows": [
                {
                    "run": name,
                    "wall_s": round(wall, 2),
                    "build_s": round(float(s["seconds"]), 2),
                    "text_encoded": int(stage(s, "text", "encoded")),
                    "image_encoded": int(stage(s, "image", "encoded")),
                }
                for name, wall, s in rows
            ],
            "stages": {
                name: {"items": st["items"], "seconds": st["seconds"]}
                for name, st in full["stages"].items()
            },
            "full": full,
            "same": same,
            "incremental": inc,
            "warm": warm,
            "wall": [full_wall, same_wall, inc_wall, warm_s],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
