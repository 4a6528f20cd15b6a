"""benchmarks/served_quality.py: what the API serves scores as the evaluation scores it.

The two served first stages, asked through the session route, against the evaluation's
own methods run on the index's vectors: the same NDCG@20, so the README's served figures
and its evaluation figures measure one thing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.encoders.fusion import ConcatLayout
from newarrivals.indexer.evaluation import EvaluateConfig, resolve_profile
from newarrivals.indexer.evaluation.methods import EvalData, ProductVectors
from newarrivals.indexer.evaluation.metrics import ndcg_at_k
from newarrivals.indexer.index.version import IndexVersion, latest_version
from newarrivals.ranker.training.features import retrieval_method


@pytest.fixture(scope="module")
def served_quality(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("served_quality.py")


def test_served_first_stages_score_as_the_evaluation_scores_them(
    served_quality: ModuleType, tiny_index: Path, synth_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "served.json"
    argv = ["--data", str(synth_dir), "--index", str(tiny_index), "--json", str(out)]
    assert served_quality.main([*argv, "--threads", "1"]) == 0
    served = {row["row"]: row["ndcg@20"] for row in json.loads(out.read_text())["rows"]}

    version = IndexVersion.load(latest_version(tiny_index), verify=False)
    ids = version.store.product_ids()
    parts = ConcatLayout.from_manifest(version.manifest).split(version.store.vectors_for(ids))
    vectors = {
        name: ProductVectors(ids, unit.astype(np.float32), has)
        for name, (unit, has) in parts.items()
    }
    catalog = read_catalog(synth_dir)
    profile = resolve_profile(EvaluateConfig(data=synth_dir, text=None), catalog)
    split = profile.split(catalog)
    # The API's new-arrivals filter is by launch date; the split's cold items also hold
    # products launched earlier but first bought after the cutoff, which it cannot return,
    # and late fusion z-normalises over what the filter lets through. So the evaluation
    # runs here over the servable cold items, with every user's whole truth.
    launched = {p.product_id: p.launched_at for p in catalog.products}
    servable = tuple(c for c in split.cold_ids if (launched[c] or split.cutoff) >= split.cutoff)
    assert 0 < len(servable) < len(split.cold_ids)
    products = {p.product_id: p for p in catalog.products}
    data = EvalData(replace(split, cold_ids=servable), products, vectors)
    n_relevant = np.array([len(split.truth[u]) for u in split.test_users])
    for row, method in (("mean", "fused-concat/mean"), ("late-max", "fused-late/max")):
        scores = retrieval_method(method, vectors).score(data)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :20]
        hits = np.array(
            [
                [servable[i] in split.truth[u] for i in row_top]
                for u, row_top in zip(split.test_users, top.tolist(), strict=True)
            ]
        )
        expected = ndcg_at_k(hits, n_relevant, 20).mean()
        assert served[row] == pytest.approx(expected, abs=1e-9), row
    assert served["late-max"] != served["mean"]
