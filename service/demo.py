"""The main job on the embedded default: synthetic catalogue -> index -> recommendations.

Re-running reuses what an earlier run built: the catalogue is generated once per
(size, seed), and the embedding cache makes a rebuild of an unchanged catalogue cheap.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from newarrivals.indexer.build import BuildConfig, BuildSummary, build_index
from newarrivals.indexer.readers import read_catalog
from newarrivals.indexer.retrieval import retrieve_for_user, similar_products
from newarrivals.indexer.schema import Product
from newarrivals.indexer.store import Candidate, SearchFilter
from newarrivals.indexer.synth import SynthConfig, generate, load_ground_truth, write_synthetic
from newarrivals.indexer.users import UserVectors
from newarrivals.indexer.version import IndexVersion

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("demo")
    products: int = 2000
    users: int = 300
    seed: int = 0
    show_users: int = 2
    k: int = 5
    device: str = "auto"


def _line(rank: int, c: Candidate, products: dict[str, Product]) -> str:
    p = products.get(c.product_id)
    title = (p.title or "(photo only)") if p else c.product_id
    launched = p.launched_at.date().isoformat() if p and p.launched_at else "?"
    return f"    {rank}. {c.product_id}  score {c.score:.3f}  launched {launched}  {title[:60]}"


def run_demo(config: DemoConfig, say: Callable[[str], None] = print) -> BuildSummary:
    """Generate (once), build the index, and print recommendations for a few users."""
    catalog_dir = config.workdir / f"catalog-{config.products}-{config.users}-s{config.seed}"
    if not (catalog_dir / "ground_truth.json").is_file():
        say(f"[1/3] generating the synthetic catalogue into {catalog_dir}")
        synth = generate(
            SynthConfig(n_products=config.products, n_users=config.users, seed=config.seed)
        )
        write_synthetic(synth, catalog_dir)
    else:
        say(f"[1/3] reusing the synthetic catalogue in {catalog_dir}")
    say("[2/3] building the index (text + photo vectors, FAISS)")
    summary = build_index(
        BuildConfig(catalog=catalog_dir, out=config.workdir / "index", device=config.device)
    )
    say(summary.format())

    say("[3/3] recommendations from each user's history, before and after the cutoff")
    truth = load_ground_truth(catalog_dir / "ground_truth.json")
    version = IndexVersion.load(summary.version_dir)
    catalog = read_catalog(catalog_dir)
    products = {p.product_id: p for p in catalog.products}
    users = UserVectors(version.store)
    users.update_many(e for e in catalog.interactions if e.timestamp < truth.cutoff)
    shown = 0
    for user_id in sorted(users.user_ids()):
        if shown >= config.show_users:
            break
        state = users.state(user_id)
        if state is None or not state.purchased:
            continue
        recent = [products[p].title or p for p in state.recent[:3] if p in products]
        say(f"\n  user {user_id}: recently {json.dumps(recent)}")
        say("  all products:")
        for rank, c in enumerate(retrieve_for_user(version.store, users, user_id, config.k), 1):
            say(_line(rank, c, products))
        say(
            f"  new arrivals only (launched after {truth.cutoff.date()}, zero interactions "
            "before it):"
        )
        flt = SearchFilter(launched_after=truth.cutoff)
        for rank, c in enumerate(
            retrieve_for_user(version.store, users, user_id, config.k, flt), 1
        ):
            say(_line(rank, c, products))
        shown += 1
    new_id = next(p for p in truth.new_arrival_ids if p in version.store)
    say(f"\n  products like the new arrival {new_id} ({products[new_id].title or 'photo only'}):")
    for rank, c in enumerate(similar_products(version.store, new_id, config.k), 1):
        say(_line(rank, c, products))
    say(f"\nindex: {summary.version_dir}  catalogue: {catalog_dir}")
    return summary
