"""HTTP API, read side: recommendations, sessions, similar products, cold start, errors."""

from __future__ import annotations

import base64
import json
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.schema import Catalog, EventType
from newarrivals.ranker import RankerConfig
from newarrivals.ranker.crossencoder.model import CrossEncoderRanker
from newarrivals.service.api import ServeSettings, create_app
from newarrivals.service.api import queries as queries_module
from newarrivals.service.api.deps import get_clock
from newarrivals.service.api.live import Runtime

Opener = Callable[..., TestClient]


@pytest.fixture(scope="module")
def catalog(synth_dir: Path) -> Catalog:
    return read_catalog(synth_dir)


def buyer(catalog: Catalog) -> tuple[str, set[str]]:
    """A user with purchases, and what they bought."""
    bought: dict[str, set[str]] = {}
    for e in catalog.interactions:
        if e.event is EventType.PURCHASE:
            bought.setdefault(e.user_id, set()).add(e.product_id)
    user = max(sorted(bought), key=lambda u: len(bought[u]))
    return user, bought[user]


def ids(response: Any) -> list[str]:
    return [item["product_id"] for item in response.json()["items"]]


# -------------------------------------------------------------------- health and metrics


def test_health_ready_and_metrics(open_client: Opener) -> None:
    client = open_client()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    version = ready.json()["version"]
    for _ in range(3):
        assert client.get("/v1/products/P000001/similar", params={"k": 2}).status_code == 200
    client.get("/v1/products/nope/similar")
    text = client.get("/metrics").text
    route = 'route="/v1/products/{product_id}/similar"'
    assert f'newarrivals_http_requests_total{{method="GET",{route},status="200"}} 3.0' in text
    assert f'newarrivals_http_requests_total{{method="GET",{route},status="404"}} 1.0' in text
    assert f'newarrivals_http_request_duration_seconds_count{{method="GET",{route}}} 4.0' in text
    assert "newarrivals_index_products 200.0" in text
    assert f'newarrivals_index_version_info{{version="{version}"}} 1.0' in text
    # The app owns its registry: nothing leaks into prometheus_client's global one.
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("newarrivals_index_products") is None


def test_readyz_waits_for_the_background_load(
    make_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_start = Runtime.start

    def slow_start(self: Runtime) -> None:
        release.wait(30)
        real_start(self)

    monkeypatch.setattr(Runtime, "start", slow_start)
    app = create_app(make_settings(load_in_background=True))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        busy = client.get("/v1/users/U00001/recommendations")
        assert busy.status_code == 503 and "not ready" in busy.json()["detail"]
        release.set()
        for _ in range(200):
            if client.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert client.get("/readyz").json()["status"] == "ready"
        assert client.get("/v1/users/U00001/recommendations").status_code == 200


def test_a_failed_load_is_reported_by_readyz(
    make_settings: Callable[..., Any], tmp_path: Path
) -> None:
    app = create_app(make_settings(load_in_background=True, catalog=tmp_path))
    with TestClient(app) as client:
        for _ in range(200):
            body = client.get("/readyz").json()
            if body["status"] != "loading":
                break
            threading.Event().wait(0.05)
        assert body["status"] == "failed"
        assert "no catalogue found" in body["detail"]
        assert client.get("/healthz").status_code == 200


# ---------------------------------------------------------------------- recommendations


def test_user_recommendations_exclude_purchases_and_explain(
    open_client: Opener, catalog: Catalog, auth: dict[str, str]
) -> None:
    client = open_client(max_k=500)
    user, bought = buyer(catalog)
    r = client.get(f"/v1/users/{user}/recommendations", params={"k": 15})
    assert r.status_code == 200
    body = r.json()
    assert body["user_id"] == user and body["fallback"] is False and body["reranked"] is False
    items = body["items"]
    assert len(items) == 15 and not bought & set(ids(r))
    scores = [i["retrieval_score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    assert all(i["ranker_probability"] is None for i in items)
    recent = set(client.get(f"/v1/users/{user}", headers=auth).json()["recent_product_ids"])
    assert all(i["reason"]["closest_recent_product_id"] in recent for i in items)
    assert "recently looked at" in items[0]["reason"]["text"]
    with_bought = client.get(
        f"/v1/users/{user}/recommendations", params={"k": 200, "include_purchased": True}
    )
    assert bought <= set(ids(with_bought))


def test_filters_restrict_what_is_returned(open_client: Opener, catalog: Catalog) -> None:
    client = open_client(max_k=500)
    products = {p.product_id: p for p in catalog.products}
    url = "/v1/users/U00002/recommendations"

    r = client.get(url, params={"k": 50, "category": "women > tops"})
    assert r.status_code == 200 and ids(r)
    assert all(products[p].category[:2] == ("Women", "Tops") for p in ids(r))

    r = client.get(url, params={"k": 50, "min_price": 20, "max_price": 60})
    assert ids(r) and all(20 <= (products[p].price or -1) <= 60 for p in ids(r))

    cutoff = datetime(2024, 4, 1, tzinfo=UTC)
    r = client.get(url, params={"k": 50, "launched_after": "2024-04-01"})
    launched = [products[p].launched_at for p in ids(r)]
    assert launched and all(t is not None and t > cutoff for t in launched)

    first = ids(client.get(url, params={"k": 5}))
    r = client.get(url, params={"k": 5, "exclude": first[:3]})
    assert not set(first[:3]) & set(ids(r))

    unavailable = {p.product_id for p in catalog.products if not p.available}
    everything = ids(client.get(url, params={"k": 200}))
    assert everything and not unavailable & set(everything)
    previews = ids(client.get(url, params={"k": 200, "available_only": False}))
    assert unavailable & set(previews)


def test_new_within_days_counts_back_from_the_clock(
    open_client: Opener, make_settings: Callable[..., Any], catalog: Catalog
) -> None:
    app = create_app(make_settings())
    now = datetime(2024, 4, 20, tzinfo=UTC)
    app.dependency_overrides[get_clock] = lambda: lambda: now
    client = open_client(app)
    products = {p.product_id: p for p in catalog.products}
    r = client.get("/v1/users/U00003/recommendations", params={"k": 50, "new_within_days": 10})
    launched = [products[p].launched_at for p in ids(r)]
    assert launched and all(
        t is not None and t > datetime(2024, 4, 10, tzinfo=UTC) for t in launched
    )


def test_unknown_user_gets_the_flagged_fallback(open_client: Opener) -> None:
    r = open_client().get("/v1/users/never-seen/recommendations", params={"k": 4})
    body = r.json()
    assert r.status_code == 200 and body["fallback"] is True
    assert body["fallback_reason"].startswith("cold user: popular")
    assert len(body["items"]) == 4 and all(i["reason"] is None for i in body["items"])


def test_session_recommendations(open_client: Opener, catalog: Catalog) -> None:
    client = open_client(max_k=500)
    seen = [catalog.products[3].product_id, catalog.products[9].product_id]
    r = client.post("/v1/sessions/recommendations", json={"product_ids": [*seen, "gone-1"], "k": 6})
    body = r.json()
    assert r.status_code == 200 and body["fallback"] is False and body["user_id"] is None
    assert body["ignored_product_ids"] == ["gone-1"]
    assert len(body["items"]) == 6 and not set(seen) & set(ids(r))
    assert {i["reason"]["closest_recent_product_id"] for i in body["items"]} <= set(seen)

    # A purchase in the session is never recommended back, even with exclude_seen off.
    bought = catalog.products[3].product_id
    r = client.post(
        "/v1/sessions/recommendations",
        json={
            "events": [{"product_id": bought, "event": "purchase"}],
            "exclude_seen": False,
            "k": 200,
        },
    )
    assert bought not in ids(r)
    empty = client.post("/v1/sessions/recommendations", json={"k": 3}).json()
    assert empty["fallback"] is True and len(empty["items"]) == 3


def test_similar_products_and_product_lookup(open_client: Opener, catalog: Catalog) -> None:
    client = open_client()
    pid = catalog.products[0].product_id
    r = client.get(f"/v1/products/{pid}/similar", params={"k": 5})
    assert r.status_code == 200
    assert len(r.json()["items"]) == 5 and pid not in [i["product_id"] for i in r.json()["items"]]
    product = client.get(f"/v1/products/{pid}").json()
    assert product["title"] == catalog.products[0].title
    assert product["category"] == catalog.products[0].category_path


# -------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("params", "loc", "needle"),
    [
        ({"k": 101}, ["query", "k"], "NEWARRIVALS_MAX_K"),
        ({"k": 0}, ["query", "k"], "greater than or equal to 1"),
        ({"min_price": 50, "max_price": 10}, ["query"], "min_price (50.0) is greater"),
        ({"min_price": -1}, ["query", "min_price"], "greater than or equal to 0"),
        ({"launched_after": "soon"}, ["query", "launched_after"], "datetime"),
        (
            {"launched_after": "2024-01-01", "new_within_days": 3},
            ["query"],
            "not both",
        ),
        ({"category": " > / "}, ["query", "category"], "category path"),
        ({"colour": "red"}, ["query", "colour"], "Extra inputs are not permitted"),
    ],
)
def test_bad_query_values_get_field_level_422(
    open_client: Opener, params: dict[str, Any], loc: list[str], needle: str
) -> None:
    r = open_client().get("/v1/users/U00001/recommendations", params=params)
    assert r.status_code == 422
    errors = r.json()["detail"]
    assert any(e["loc"][: len(loc)] == loc and needle in e["msg"] for e in errors), errors


def test_unknown_product_is_a_404_naming_it(open_client: Opener) -> None:
    client = open_client()
    for url in ("/v1/products/NOPE-42", "/v1/products/NOPE-42/similar"):
        r = client.get(url)
        assert r.status_code == 404 and "'NOPE-42'" in r.json()["detail"]


def test_rerank_without_a_ranker_is_a_409_naming_the_setting(open_client: Opener) -> None:
    r = open_client().get("/v1/users/U00001/recommendations", params={"rerank": True})
    assert r.status_code == 409 and "NEWARRIVALS_RANKER" in r.json()["detail"]


def test_oversized_body_is_a_413(open_client: Opener) -> None:
    client = open_client()
    big = {"product_ids": ["P000001"], "exclude": ["x" * 200] * 1500}
    r = client.post("/v1/sessions/recommendations", json=big)
    assert r.status_code == 413 and "NEWARRIVALS_MAX_BODY_BYTES" in r.json()["detail"]
    # Without a Content-Length (chunked), the body is counted as it arrives.
    payload = json.dumps(big).encode()
    chunks = (payload[i : i + 8192] for i in range(0, len(payload), 8192))
    r = client.post(
        "/v1/sessions/recommendations",
        content=chunks,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and "NEWARRIVALS_MAX_BODY_BYTES" in r.json()["detail"]
    upload = client.post(
        "/v1/cold-start/upload", files={"photo": ("big.png", b"x" * 300_000, "image/png")}
    )
    assert upload.status_code == 413


def test_internal_errors_carry_no_stack_trace(
    open_client: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("secret internals at /srv/app.py line 3")

    monkeypatch.setattr(queries_module, "similar_to_product", broken)
    r = open_client().get("/v1/products/P000001/similar")
    assert r.status_code == 500
    assert r.json()["detail"].startswith("internal error (incident ")
    assert "secret" not in r.text and "Traceback" not in r.text


# --------------------------------------------------------------------------- cold start


def _brute_force_lists(client: TestClient, users: list[str], k: int) -> dict[str, list[float]]:
    """Each user's top-k retrieval scores, as their recommendations route ranks them."""
    out = {}
    for user in users:
        r = client.get(f"/v1/users/{user}/recommendations", params={"k": k})
        out[user] = [i["retrieval_score"] for i in r.json()["items"]]
    return out


def _check_audience(
    client: TestClient, request: dict[str, Any], users: list[str]
) -> dict[str, Any]:
    """Every listed probability and reach must match a recomputation from the routes."""
    k, temperature = request["reach_k"], ServeSettings().audience_temperature
    response = client.post("/v1/cold-start", json={**request, "audience_size": len(users)})
    body: dict[str, Any] = response.json()
    lists = _brute_force_lists(client, users, k)
    listed = {u["user_id"]: u for u in body["audience"]}
    assert set(listed) == set(users)
    reach = 0
    for user, scores in lists.items():
        entry = listed[user]
        kth = scores[-1] if len(scores) == k else -math.inf
        if abs(entry["score"] - kth) > 1e-5:  # near-ties may fall either way in float32
            assert entry["in_top_k"] == (entry["score"] > kth), (user, entry, scores)
        reach += entry["in_top_k"]
        z = [entry["score"] / temperature] + [s / temperature for s in scores]
        peak = max(z)
        expected = math.exp(z[0] - peak) / sum(math.exp(v - peak) for v in z)
        assert entry["probability"] == pytest.approx(expected, rel=1e-3, abs=1e-9)
    probs = [u["probability"] for u in body["audience"]]
    assert probs == sorted(probs, reverse=True)
    assert body["reach"]["users_in_top_k"] == reach
    assert body["reach"]["users_considered"] == len(users)
    assert body["reach"]["expected_picks"] == pytest.approx(sum(probs), rel=1e-6)
    return body


def test_cold_start_audience_and_reach_match_each_users_list(
    open_client: Opener, catalog: Catalog, png_base64: Callable[..., str], auth: dict[str, str]
) -> None:
    client = open_client()
    users = sorted({e.user_id for e in catalog.interactions})
    request = {
        "title": "Red linen shirt",
        "category": "Men > Tops > Shirt",
        "attributes": {"colour": "red", "material": "linen"},
        "nearest_k": 4,
        "reach_k": 5,
    }
    body = _check_audience(client, request, users)
    assert body["encoded_from_text"] is True and body["encoded_from_photo"] is False
    assert len(body["nearest_products"]) == 4

    with_photo = client.post(
        "/v1/cold-start", json={**request, "image_base64": png_base64(), "audience_size": 3}
    ).json()
    assert with_photo["encoded_from_photo"] is True and len(with_photo["audience"]) == 3

    # The per-user cache stays right after the writes that change users' lists.
    sample = catalog.products[5]
    assert (
        client.put(
            "/v1/products/LIVE-1",
            json={"title": "Red linen shirt", "category": "Men > Tops > Shirt"},
            headers=auth,
        ).status_code
        == 200
    )
    _check_audience(client, request, users)
    top = client.get(f"/v1/users/{users[0]}/recommendations", params={"k": 1}).json()
    assert (
        client.delete(f"/v1/products/{top['items'][0]['product_id']}", headers=auth).status_code
        == 200
    )
    events = [
        {"user_id": u, "product_id": sample.product_id, "event": "purchase"} for u in users[:5]
    ]
    assert client.post("/v1/events", json={"events": events}, headers=auth).status_code == 200
    _check_audience(client, request, users)


def test_cold_start_multipart_upload(open_client: Opener, png: Callable[..., bytes]) -> None:
    client = open_client()
    r = client.post(
        "/v1/cold-start/upload",
        data={"title": "Blue wool coat", "attributes": '{"colour": "blue"}', "audience_size": "2"},
        files={"photo": ("coat.png", png((20, 40, 200)), "image/png")},
    )
    assert r.status_code == 200, r.text
    assert r.json()["encoded_from_photo"] is True and len(r.json()["audience"]) == 2
    photo_only = client.post(
        "/v1/cold-start/upload", files={"photo": ("x.png", png(), "image/png")}
    )
    assert photo_only.status_code == 200 and photo_only.json()["encoded_from_text"] is False


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ("%%% not base64", "not valid base64"),
        (base64.b64encode(b"definitely not a photo").decode(), "cannot decode image"),
    ],
)
def test_bad_photos_are_a_422_with_the_reason(
    open_client: Opener, payload: str, needle: str, png: Callable[..., bytes]
) -> None:
    client = open_client()
    r = client.post("/v1/cold-start", json={"title": "Shirt", "image_base64": payload})
    assert r.status_code == 422
    error = r.json()["detail"][0]
    assert error["loc"] == ["body", "image_base64"] and needle in error["msg"]
    upload = client.post(
        "/v1/cold-start/upload", files={"photo": ("x.png", b"GIF89a broken", "image/png")}
    )
    assert upload.status_code == 422 and upload.json()["detail"][0]["loc"] == ["body", "photo"]


def test_huge_photos_and_empty_products_are_refused(
    open_client: Opener, png_base64: Callable[..., str]
) -> None:
    client = open_client(max_image_pixels=100)
    r = client.post("/v1/cold-start", json={"image_base64": png_base64()})
    assert r.status_code == 422 and "pixel limit" in r.json()["detail"][0]["msg"]
    empty = client.post("/v1/cold-start", json={"brand": "Acme"})
    assert empty.status_code == 422
    assert empty.json()["detail"][0]["loc"] == ["body"]
    assert "nothing to encode" in empty.json()["detail"][0]["msg"]
    too_many = client.post("/v1/cold-start", json={"title": "x", "audience_size": 101})
    assert too_many.status_code == 422
    assert too_many.json()["detail"][0]["loc"] == ["body", "audience_size"]


# ------------------------------------------------------------------------------- ranker


@pytest.fixture(scope="module")
def ranker_dir(tmp_path_factory: pytest.TempPathFactory, tiny_text_model_dir: Path) -> Path:
    config = RankerConfig(
        base_model=str(tiny_text_model_dir), context_tokens=32, candidate_tokens=16,
        max_context_items=4,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("ranker") / "ranker"
    CrossEncoderRanker.from_base(config).save(out)
    return out


def test_a_ranker_that_lost_to_retrieval_on_holdout_is_flagged(
    open_client: Opener, ranker_dir: Path, tmp_path: Path, auth: dict[str, str]
) -> None:
    import shutil

    from newarrivals.ranker.blend import Blend

    client = open_client(ranker=ranker_dir)
    version = client.get("/v1/admin/version", headers=auth).json()
    assert version["ranker_loaded"] is True and version["ranker_note"] is None
    weak = tmp_path / "weak-ranker"
    shutil.copytree(ranker_dir, weak)
    holdout = {"k": 20, "n_holdout_lists": 18, "ndcg_retrieval": 0.129, "ndcg_ranker": 0.061}
    Blend(("ranker", "retrieval"), (0.05, 0.4)).save(weak, holdout=holdout)
    version = open_client(ranker=weak).get("/v1/admin/version", headers=auth).json()
    note = version["ranker_note"]
    assert note is not None and "0.061 against 0.129" in note and "rerank" in note


def test_rerank_gives_probabilities_over_the_list(open_client: Opener, ranker_dir: Path) -> None:
    client = open_client(ranker=ranker_dir, rerank_depth=10)
    plain = client.get("/v1/users/U00004/recommendations", params={"k": 10}).json()
    r = client.get("/v1/users/U00004/recommendations", params={"k": 10, "rerank": True})
    body = r.json()
    assert r.status_code == 200 and body["reranked"] is True
    probs = [i["ranker_probability"] for i in body["items"]]
    assert all(p is not None and 0 < p < 1 for p in probs)
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-6)  # k == depth: the whole list
    # Same candidates, re-ordered by the ranker; retrieval scores travel with them.
    assert {i["product_id"]: i["retrieval_score"] for i in body["items"]} == {
        i["product_id"]: i["retrieval_score"] for i in plain["items"]
    }
    session = client.post(
        "/v1/sessions/recommendations", json={"product_ids": ["P000001"], "k": 3, "rerank": True}
    ).json()
    assert session["reranked"] is True and len(session["items"]) == 3
    assert session["reranked_by"] == "ranker"  # this ranker has no blend
    nothing = client.get(
        "/v1/users/U00004/recommendations", params={"rerank": True, "category": "No such"}
    ).json()
    assert nothing["items"] == [] and nothing["reranked_by"] is None


def test_rerank_orders_by_the_blend_when_it_was_fitted_for_the_serving_index(
    open_client: Opener, ranker_dir: Path, tiny_index: Path, tmp_path: Path, auth: dict[str, str]
) -> None:
    import shutil

    from newarrivals.indexer.encoders.fusion import ConcatLayout
    from newarrivals.indexer.index.version import IndexVersion, latest_version
    from newarrivals.ranker.blend import Blend
    from newarrivals.ranker.serving.request import SERVING_RETRIEVAL

    blended = tmp_path / "blended"
    shutil.copytree(ranker_dir, blended)
    # All weight on the photo max-similarity to the session's products: an order the test
    # can compute from the index's vectors alone.
    Blend(("ranker", "retrieval", "image"), (0.0, 0.0, 1.0), retrieval=SERVING_RETRIEVAL).save(
        blended
    )
    client = open_client(ranker=blended, rerank_depth=10)
    version = client.get("/v1/admin/version", headers=auth).json()
    assert version["rerank_order"] == "blend" and version["rerank_note"] is None
    request = {"product_ids": ["P000001"], "k": 10, "rerank": True}
    body = client.post("/v1/sessions/recommendations", json=request).json()
    assert body["reranked_by"] == "blend"
    items = body["items"]
    chances = [i["blend_probability"] for i in items]
    assert chances == sorted(chances, reverse=True)
    assert sum(chances) == pytest.approx(1.0, abs=1e-6)  # k == depth: the whole list
    assert all(i["ranker_probability"] is not None for i in items)
    index = IndexVersion.load(latest_version(tiny_index), verify=False)
    photos = ConcatLayout.from_manifest(index.manifest).split(
        index.store.vectors_for([i["product_id"] for i in items] + ["P000001"])
    )["image"][0]
    similarity = photos[:-1] @ photos[-1]
    assert np.all(np.diff(similarity) <= 1e-6)  # most like the session's photo first

    # A blend fitted after another first stage does not hold here: the ranker alone, said so.
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(ranker_dir, elsewhere)
    Blend(("ranker", "retrieval"), (0.1, 1.0), retrieval="fused-late/max").save(elsewhere)
    other = open_client(ranker=elsewhere, rerank_depth=10)
    version = other.get("/v1/admin/version", headers=auth).json()
    assert version["rerank_order"] == "ranker"
    assert "--retrieval fused-concat/mean" in version["rerank_note"]
    body = other.post("/v1/sessions/recommendations", json=request).json()
    assert body["reranked_by"] == "ranker"
    assert all(i["blend_probability"] is None for i in body["items"])


def test_late_max_retrieval_serves_the_evaluations_best_first_stage(
    open_client: Opener, ranker_dir: Path, tiny_index: Path, tmp_path: Path, auth: dict[str, str]
) -> None:
    import shutil

    from newarrivals.indexer.encoders.fusion import ConcatLayout
    from newarrivals.indexer.index.filters import SearchFilter
    from newarrivals.indexer.index.version import IndexVersion, latest_version
    from newarrivals.indexer.retrieval.search import late_max_search
    from newarrivals.ranker.blend import Blend

    late = open_client(retrieval="late-max")
    assert late.get("/v1/admin/version", headers=auth).json()["retrieval"] == "late-max"
    request = {"product_ids": ["P000001", "P000002"], "k": 8}
    body = late.post("/v1/sessions/recommendations", json=request).json()
    # The same search run directly over the index: same products, same scores, same order.
    index = IndexVersion.load(latest_version(tiny_index), verify=False)
    layout = ConcatLayout.from_manifest(index.manifest)
    recent = index.store.vectors_for(["P000002", "P000001"])  # newest first
    flt = SearchFilter(exclude_ids=frozenset({"P000001", "P000002"}))
    direct = late_max_search(index.store, layout, recent, 8, flt)
    assert [i["product_id"] for i in body["items"]] == [c.product_id for c in direct]
    assert [i["retrieval_score"] for i in body["items"]] == pytest.approx([c.score for c in direct])
    mean = open_client().post("/v1/sessions/recommendations", json=request).json()
    assert ids_of(mean) != ids_of(body)
    # A cold user has nothing to compare with: the popular fallback, as with 'mean'.
    cold = late.get("/v1/users/nobody/recommendations", params={"k": 3}).json()
    assert cold["fallback"] is True and len(cold["items"]) == 3

    # The blend that holds here is the one fitted after fused-late/max.
    fitted = tmp_path / "late-blend"
    shutil.copytree(ranker_dir, fitted)
    Blend(("ranker", "retrieval", "image"), (0.1, 1.0, 0.2), retrieval="fused-late/max").save(
        fitted
    )
    served = open_client(ranker=fitted, retrieval="late-max", rerank_depth=10)
    assert served.get("/v1/admin/version", headers=auth).json()["rerank_order"] == "blend"
    mean_served = open_client(ranker=fitted, rerank_depth=10)
    assert mean_served.get("/v1/admin/version", headers=auth).json()["rerank_order"] == "ranker"
    reranked = served.post("/v1/sessions/recommendations", json={**request, "rerank": True})
    assert reranked.json()["reranked_by"] == "blend"


def ids_of(body: dict[str, Any]) -> list[str]:
    return [item["product_id"] for item in body["items"]]
