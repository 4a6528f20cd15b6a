"""The web page: its helper routes, and both views clicked through in a real Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.service.api import ServeSettings, create_app

# The same search as `make browser`: NEWARRIVALS_CHROMIUM, else `chromium` on PATH.
CHROMIUM = os.environ.get("NEWARRIVALS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "reports" / "test-artifacts"


def test_photo_route_serves_the_catalogue_file(
    open_client: Callable[..., TestClient], synth_dir: Path
) -> None:
    client = open_client()
    products = read_catalog(synth_dir).products
    with_photo = next(p for p in products if p.image and Path(p.image).is_file())
    r = client.get(f"/v1/products/{with_photo.product_id}/photo")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/")
    assert r.content == Path(str(with_photo.image)).read_bytes()
    without = next((p for p in products if not p.image and (p.title or p.description)), None)
    if without is not None:
        r = client.get(f"/v1/products/{without.product_id}/photo")
        assert r.status_code == 404 and "no photo" in r.json()["detail"]
    r = client.get("/v1/products/NOPE/photo")
    assert r.status_code == 404 and "'NOPE'" in r.json()["detail"]


def test_status_is_public_and_consistent(open_client: Callable[..., TestClient]) -> None:
    client = open_client()
    status = client.get("/v1/status").json()
    version = client.get("/v1/admin/version", headers={"X-API-Key": _key(client)}).json()
    assert status["version"] == version["version"]
    assert status["products"] == version["products"] and status["users"] == version["users"]
    assert status["build_seconds"] > 0 and status["ranker_loaded"] is False
    assert status["new_arrivals_after"] is not None


def _key(client: TestClient) -> str:
    settings: ServeSettings = client.app.state.settings  # type: ignore[attr-defined]
    key = settings.resolved_api_key()
    assert key is not None
    return key


def test_user_list_is_keyed_and_ordered(open_client: Callable[..., TestClient]) -> None:
    client = open_client()
    assert client.get("/v1/users").status_code == 401
    body = client.get("/v1/users?limit=5", headers={"X-API-Key": _key(client)}).json()
    assert body["total"] >= len(body["users"]) == 5
    events = [u["events"] for u in body["users"]]
    assert events == sorted(events, reverse=True)
    assert client.get("/v1/users?limit=0", headers={"X-API-Key": _key(client)}).status_code == 422


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def live_server(make_settings: Callable[..., ServeSettings]) -> Iterator[tuple[str, str]]:
    """The app on a real loopback port (the browser needs one), in a thread."""
    settings = make_settings()
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    key = settings.resolved_api_key()
    assert key is not None
    yield f"http://127.0.0.1:{port}", key
    server.should_exit = True
    thread.join(timeout=30)


def test_both_views_render_in_a_real_browser(live_server: tuple[str, str]) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run `make browser` (it installs Debian's package) "
            "or point NEWARRIVALS_CHROMIUM at one."
        )
    from playwright.sync_api import expect, sync_playwright

    base, key = live_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            # No sandbox as root in CI; no background traffic on a closed network.
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(base + "/")

            # Launch planner: a brand-new product, text only.
            page.fill("#pl-title", "red striped cotton t-shirt")
            page.fill("#pl-description", "a light summer tee with red stripes")
            page.fill("#pl-audience", "5")
            page.click("#pl-submit")
            expect(page.locator("#pl-nearest .card").first).to_be_visible(timeout=30_000)
            assert page.locator("#pl-nearest .card").count() == 10
            expect(page.locator("#pl-reach")).to_contain_text("Expected reach")
            # The index has an image tower, so a text-only lookup says its reach is not
            # comparable with what a photo would give.
            expect(page.locator("#pl-reach")).to_contain_text("add a photo")
            assert page.locator("#pl-audience-table tbody tr").count() == 5
            # Without the key, "bought before" explains what is missing.
            expect(page.locator("#pl-audience-table tbody tr td").nth(4)).to_contain_text("API key")
            page.screenshot(path=str(ARTIFACTS / "web-launch-planner.png"), full_page=True)

            # Shopper view: needs the key; pick the first user and see history + picks.
            page.fill("#api-key", key)
            page.dispatch_event("#api-key", "change")
            page.click("#tab-shopper")
            expect(page.locator("#sh-recs .card").first).to_be_visible(timeout=30_000)
            assert page.locator("#sh-history .card").count() >= 1
            expect(page.locator("#sh-recs .card .reason").first).to_contain_text("closest to")
            # Each reason names a product the history shows.
            history = set(page.locator("#sh-history .card .title").all_inner_texts())
            for reason in page.locator("#sh-recs .card .reason").all_inner_texts():
                quoted = reason.removeprefix("closest to ")
                named = quoted[1 : quoted.index(quoted[0] + ", which")]
                assert named in history, (named, sorted(history))
            # Photos come from the photo route: at least one loaded for real.
            page.wait_for_function(
                "[...document.querySelectorAll('#sh-recs img')].some(i => i.naturalWidth > 0)"
            )
            # New arrivals only: every card launched after the date the page proposes.
            after = page.input_value("#sh-new-after")
            assert after
            page.check("#sh-new")
            page.wait_for_timeout(500)
            expect(page.locator("#sh-recs .card").first).to_be_visible(timeout=30_000)
            launched = page.locator("#sh-recs .card .meta").all_inner_texts()
            dates = [t.split("launched ")[1] for t in launched if "launched " in t]
            assert dates and all(d > after for d in dates)
            # No ranker loaded: the re-rank toggle is disabled rather than failing.
            assert page.is_disabled("#sh-rerank")
            page.screenshot(path=str(ARTIFACTS / "web-shopper.png"), full_page=True)

            page.click("#tab-status")
            expect(page.locator('dd[data-field="Products"]')).not_to_have_text("–")
            assert page.locator("#banner").is_hidden(), page.inner_text("#banner")
            assert not page_errors, page_errors
        finally:
            browser.close()
