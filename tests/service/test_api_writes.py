"""HTTP API, write side: keys, upserts, deletes, events, erasure, hot swap, replay."""

from __future__ import annotations

import base64
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.schema import Catalog
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.index.build import BuildConfig, build_index
from newarrivals.indexer.index.version import list_versions
from newarrivals.service.api import ServeSettings, create_app

Opener = Callable[..., TestClient]


@pytest.fixture(scope="module")
def catalog(synth_dir: Path) -> Catalog:
    return read_catalog(synth_dir)


def ids(response: Any) -> list[str]:
    return [item["product_id"] for item in response.json()["items"]]


# ----------------------------------------------------------------------------- security


def test_write_and_admin_routes_need_the_key(open_client: Opener, auth: dict[str, str]) -> None:
    client = open_client()
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("put", "/v1/products/X1", {"json": {"title": "Shirt"}}),
        ("delete", "/v1/products/P000001", {}),
        ("post", "/v1/events", {"json": {"events": []}}),
        ("get", "/v1/users/U00001", {}),
        ("delete", "/v1/users/U00001", {}),
        ("post", "/v1/admin/reload", {}),
        ("get", "/v1/admin/version", {}),
    ]
    for method, url, kwargs in calls:
        for headers in ({}, {"X-API-Key": "wrong-key-but-long-enough"}):
            r = client.request(method, url, headers=headers, **kwargs)
            assert r.status_code == 401, (method, url)
            assert "X-API-Key" in r.json()["detail"]
    assert client.get("/v1/admin/version", headers=auth).status_code == 200
    # Reads are open by default.
    assert client.get("/v1/users/U00001/recommendations").status_code == 200


def test_the_server_refuses_to_start_writes_without_a_key(
    make_settings: Callable[..., ServeSettings], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="NEWARRIVALS_API_KEY") as err:
        create_app(make_settings(api_key=None))
    assert "--read-only" in str(err.value)
    with pytest.raises(ConfigError, match="at least 16"):
        create_app(make_settings(api_key="short"))
    with pytest.raises(ConfigError, match="REQUIRE_KEY_FOR_READS"):
        create_app(make_settings(api_key=None, read_only=True, require_key_for_reads=True))
    key_file = tmp_path / "key.txt"
    key_file.write_text("from-a-file-0123456789\n")
    app = create_app(make_settings(api_key=None, api_key_file=key_file))
    assert app.state.api_key == "from-a-file-0123456789"


def test_read_only_serves_no_write_route(open_client: Opener) -> None:
    client = open_client(api_key=None, read_only=True)
    assert client.get("/v1/users/U00001/recommendations").status_code == 200
    assert client.put("/v1/products/X", json={"title": "x"}).status_code == 405
    # No route: 404, or 405 from the web page's static mount at / when it is installed.
    assert client.post("/v1/events", json={"events": []}).status_code in (404, 405)
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/events" not in paths and "/v1/admin/reload" not in paths


def test_reads_can_be_keyed(open_client: Opener, auth: dict[str, str]) -> None:
    client = open_client(require_key_for_reads=True)
    assert client.get("/v1/users/U00001/recommendations").status_code == 401
    assert client.get("/v1/users/U00001/recommendations", headers=auth).status_code == 200
    assert client.get("/healthz").status_code == 200  # never keyed


# ---------------------------------------------------------------------- products, events


def test_an_upserted_product_is_searchable_by_the_next_request(
    open_client: Opener, catalog: Catalog, auth: dict[str, str]
) -> None:
    client = open_client()
    twin = next(p for p in catalog.products if p.has_text and p.image and p.available)
    assert twin.image is not None
    photo = base64.b64encode(Path(twin.image).read_bytes()).decode()
    body = {
        "title": twin.title,
        "description": twin.description,
        "category": list(twin.category),
        "brand": twin.brand,
        "price": 12.5,
        "attributes": dict(twin.attributes),
        "launched_at": "2024-06-01T00:00:00Z",
        "image_base64": photo,
    }
    r = client.put("/v1/products/LIVE-TWIN", json=body, headers=auth)
    assert r.status_code == 200 and r.json()["index_size"] == 201 and r.json()["seq"] >= 1
    # Encoded live as the build encoded its twin (same text, same photo bytes; the ONNX
    # copies the service uses agree with torch to 1e-3 per component).
    similar = client.get(f"/v1/products/{twin.product_id}/similar", params={"k": 3}).json()
    assert similar["items"][0]["product_id"] == "LIVE-TWIN"
    assert similar["items"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert client.get("/v1/products/LIVE-TWIN").json()["price"] == 12.5
    new_only = client.get(
        "/v1/users/U00005/recommendations", params={"launched_after": "2024-05-15", "k": 5}
    )
    assert ids(new_only) == ["LIVE-TWIN"]
    # Overwrite: the same id, now unavailable -> never recommended, still readable.
    body["available"] = False
    assert client.put("/v1/products/LIVE-TWIN", json=body, headers=auth).json()["index_size"] == 201
    assert "LIVE-TWIN" not in ids(client.get(f"/v1/products/{twin.product_id}/similar"))
    assert client.get("/v1/products/LIVE-TWIN").json()["available"] is False


def test_a_deleted_product_is_never_recommended_again(
    open_client: Opener, catalog: Catalog, auth: dict[str, str]
) -> None:
    client = open_client(max_k=500)
    top = ids(client.get("/v1/users/U00006/recommendations", params={"k": 1}))[0]
    seen_with = [p.product_id for p in catalog.products[:3]]
    r = client.delete(f"/v1/products/{top}", headers=auth)
    assert r.status_code == 200 and r.json()["index_size"] == 199
    everywhere = [
        client.get("/v1/users/U00006/recommendations", params={"k": 500}),
        client.get("/v1/users/nobody/recommendations", params={"k": 500}),
        client.post("/v1/sessions/recommendations", json={"product_ids": seen_with, "k": 500}),
        client.get(f"/v1/products/{seen_with[0]}/similar", params={"k": 500}),
    ]
    for response in everywhere:
        assert response.status_code == 200 and top not in ids(response)
    cold = client.post("/v1/cold-start", json={"title": "x", "nearest_k": 500}).json()
    assert top not in [p["product_id"] for p in cold["nearest_products"]]
    assert client.get(f"/v1/products/{top}").status_code == 404
    again = client.delete(f"/v1/products/{top}", headers=auth)
    assert again.status_code == 404 and top in again.json()["detail"]


def test_events_change_the_next_recommendations(
    open_client: Opener, catalog: Catalog, auth: dict[str, str]
) -> None:
    client = open_client()
    cold = client.get("/v1/users/new-shopper/recommendations", params={"k": 5}).json()
    assert cold["fallback"] is True
    bought = catalog.products[10].product_id
    events = [
        {"user_id": "new-shopper", "product_id": bought, "event": "view"},
        {"user_id": "new-shopper", "product_id": bought, "event": "purchase"},
    ]
    r = client.post("/v1/events", json={"events": events}, headers=auth)
    assert r.status_code == 200 and r.json()["accepted"] == 2
    warm = client.get("/v1/users/new-shopper/recommendations", params={"k": 5}).json()
    assert warm["fallback"] is False and bought not in [i["product_id"] for i in warm["items"]]
    assert warm["items"][0]["reason"]["closest_recent_product_id"] == bought
    profile = client.get("/v1/users/new-shopper", headers=auth).json()
    assert profile == {
        "user_id": "new-shopper",
        "known": True,
        "events": 2,
        "recent_product_ids": [bought],
        "purchased_product_ids": [bought],
    }
    # A known user's list moves towards what they just did.
    before = ids(client.get("/v1/users/U00007/recommendations", params={"k": 10}))
    far = catalog.products[-1].product_id
    many = [{"user_id": "U00007", "product_id": far, "event": "purchase"}] * 20
    client.post("/v1/events", json={"events": many}, headers=auth)
    after = ids(client.get("/v1/users/U00007/recommendations", params={"k": 10}))
    assert after != before and far not in after


def test_events_on_unknown_products_are_refused_whole(
    open_client: Opener, auth: dict[str, str]
) -> None:
    client = open_client(max_events_per_request=3)
    seq = client.get("/v1/admin/version", headers=auth).json()["journal_seq"]
    events = [
        {"user_id": "u1", "product_id": "P000001", "event": "view"},
        {"user_id": "u1", "product_id": "NOT-THERE", "event": "view"},
    ]
    r = client.post("/v1/events", json={"events": events}, headers=auth)
    assert r.status_code == 404 and "NOT-THERE" in r.json()["detail"]
    assert client.get("/v1/admin/version", headers=auth).json()["journal_seq"] == seq
    assert client.get("/v1/users/u1", headers=auth).json()["known"] is False
    too_many = client.post("/v1/events", json={"events": events[:1] * 4}, headers=auth)
    assert too_many.status_code == 422
    assert "NEWARRIVALS_MAX_EVENTS_PER_REQUEST" in too_many.json()["detail"][0]["msg"]
    bad_event = client.post(
        "/v1/events",
        json={"events": [{"user_id": "u", "product_id": "P000001", "event": "like"}]},
        headers=auth,
    )
    assert bad_event.status_code == 422
    assert bad_event.json()["detail"][0]["loc"] == ["body", "events", 0, "event"]


# ------------------------------------------------------------------------ erasure, replay


def test_erasure_is_durable_across_a_restart(
    open_client: Opener, catalog: Catalog, auth: dict[str, str], tmp_path: Path
) -> None:
    client = open_client()
    user = catalog.interactions[0].user_id  # has base-catalogue history
    pid = catalog.products[1].product_id
    events = [{"user_id": user, "product_id": pid, "event": "cart"}] * 2
    client.post("/v1/events", json={"events": events}, headers=auth)
    assert client.get(f"/v1/users/{user}", headers=auth).json()["known"] is True
    r = client.delete(f"/v1/users/{user}", headers=auth)
    assert r.json() == {"user_id": user, "erased": True, "journal_rows_deleted": 2}
    assert client.get(f"/v1/users/{user}", headers=auth).json()["known"] is False
    assert client.get(f"/v1/users/{user}/recommendations").json()["fallback"] is True
    # The journal holds no row naming the user, and the erasure record is pseudonymous.
    with sqlite3.connect(tmp_path / "journal.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM journal WHERE user_id = ?", (user,)).fetchone() == (
            0,
        )
        keys = [row[0] for row in db.execute("SELECT user_key FROM erasures")]
    assert len(keys) == 1 and user not in keys[0]
    # A restart reads the base catalogue again: the user stays erased.
    restarted = open_client()
    assert restarted.get(f"/v1/users/{user}", headers=auth).json()["known"] is False
    # ... and can come back with new events, which are kept.
    client.post("/v1/events", json={"events": events[:1]}, headers=auth)
    assert open_client().get(f"/v1/users/{user}", headers=auth).json()["events"] == 1
    assert client.delete("/v1/users/never-existed", headers=auth).json()["erased"] is False


def test_a_restart_replays_every_write(
    open_client: Opener, catalog: Catalog, auth: dict[str, str]
) -> None:
    client = open_client()
    client.put("/v1/products/R1", json={"title": "Replayed raincoat"}, headers=auth)
    client.put("/v1/products/R1", json={"title": "Replayed raincoat", "price": 9.0}, headers=auth)
    client.put("/v1/products/R2", json={"title": "Deleted later"}, headers=auth)
    client.delete("/v1/products/R2", headers=auth)
    gone = catalog.products[2].product_id
    client.delete(f"/v1/products/{gone}", headers=auth)
    event = {"user_id": "replayed", "product_id": "R1", "event": "purchase"}
    client.post("/v1/events", json={"events": [event]}, headers=auth)
    before = client.get("/v1/users/replayed/recommendations").json()

    again = open_client()
    assert again.get("/v1/products/R1").json()["price"] == 9.0
    assert again.get("/v1/products/R2").status_code == 404
    assert again.get(f"/v1/products/{gone}").status_code == 404
    assert again.get("/v1/users/replayed", headers=auth).json()["purchased_product_ids"] == ["R1"]
    assert again.get("/v1/users/replayed/recommendations").json()["items"] == before["items"]
    version = again.get("/v1/admin/version", headers=auth).json()
    assert version["products"] == 200 and version["journal_seq"] == 6


# ------------------------------------------------------------------------------ hot swap


def test_reload_swaps_versions_under_load_without_failures(
    open_client: Opener,
    auth: dict[str, str],
    private_index: Path,
    build_config: Callable[[Path], BuildConfig],
    tmp_path: Path,
) -> None:
    client = open_client(index=private_index)
    first = client.get("/v1/admin/version", headers=auth).json()["version"]
    unchanged = client.post("/v1/admin/reload", headers=auth).json()
    assert unchanged["swapped"] is False and unchanged["current_version"] == first
    client.put("/v1/products/SWAP-1", json={"title": "Survives the swap"}, headers=auth)

    stop = threading.Event()
    failures: list[str] = []
    counts = {"ok": 0}

    def hammer(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            if worker == 0:
                event = {"user_id": f"swap-{i % 7}", "product_id": "P000003", "event": "view"}
                r = client.post("/v1/events", json={"events": [event]}, headers=auth)
            elif worker == 1:
                r = client.get(f"/v1/users/U0000{1 + i % 9}/recommendations", params={"k": 5})
            elif worker == 2:
                r = client.post("/v1/cold-start", json={"title": f"shirt {i}", "audience_size": 3})
            else:
                r = client.get("/v1/products/SWAP-1/similar", params={"k": 3})
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text[:200]}")
            else:
                counts["ok"] += 1

    with ThreadPoolExecutor(max_workers=4) as pool:
        workers = [pool.submit(hammer, w) for w in range(4)]
        second = build_index(build_config(private_index)).version_dir.name
        swapped = client.post("/v1/admin/reload", headers=auth).json()
        forced = client.post("/v1/admin/reload", params={"force": True}, headers=auth).json()
        stop.set()
        for w in workers:
            w.result()
    assert failures == [] and counts["ok"] > 20
    assert swapped["swapped"] is True and swapped["previous_version"] == first
    assert swapped["current_version"] == second and swapped["replayed_entries"] >= 1
    assert forced["swapped"] is True and forced["current_version"] == second
    # Writes made before and during the swaps are all in the new state.
    version = client.get("/v1/admin/version", headers=auth).json()
    assert version["version"] == second
    assert client.get("/v1/products/SWAP-1").status_code == 200
    total = sum(client.get(f"/v1/users/swap-{u}", headers=auth).json()["events"] for u in range(7))
    with sqlite3.connect(tmp_path / "journal.sqlite") as db:
        journaled = db.execute("SELECT COUNT(*) FROM journal WHERE kind = 'event'").fetchone()[0]
    assert total == journaled
    metrics = client.get("/metrics").text
    assert 'newarrivals_reloads_total{outcome="swapped"} 2.0' in metrics
    assert f'newarrivals_index_version_info{{version="{second}"}} 1.0' in metrics
    assert first not in metrics
    assert len(list_versions(private_index)) == 2


def test_the_read_write_lock_lets_a_waiting_writer_in_before_new_readers() -> None:
    from newarrivals.service.api.state import ReadWriteLock

    lock = ReadWriteLock()
    order: list[str] = []
    first_reader_in = threading.Event()
    release_first = threading.Event()

    def reader(name: str, hold: threading.Event | None = None) -> None:
        with lock.read():
            order.append(f"{name} in")
            if hold is not None:
                first_reader_in.set()
                hold.wait(5)
            order.append(f"{name} out")

    def writer() -> None:
        with lock.write():
            order.append("writer in")
            order.append("writer out")

    threads = [threading.Thread(target=reader, args=("r1", release_first))]
    threads[0].start()
    assert first_reader_in.wait(5)
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    while not lock._waiting_writers:  # the writer is queued behind r1
        threading.Event().wait(0.001)
    threads.append(threading.Thread(target=reader, args=("r2",)))
    threads[2].start()
    threading.Event().wait(0.05)
    assert order == ["r1 in"]  # neither the writer nor the later reader got in
    release_first.set()
    for t in threads:
        t.join(5)
    assert order == ["r1 in", "r1 out", "writer in", "writer out", "r2 in", "r2 out"]
