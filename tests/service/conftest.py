"""Fixtures for the HTTP API tests: one tiny index per session, apps over it, an API key."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from newarrivals.indexer.encoders import ImageEncoderConfig, TextEncoderConfig
from newarrivals.indexer.index.build import BuildConfig, build_index
from newarrivals.service.api import ServeSettings, create_app

API_KEY = "test-key-0123456789abcdef"
AUTH = {"X-API-Key": API_KEY}


def tiny_build_config(catalog: Path, out: Path, text_model: Path, clip_dir: Path) -> BuildConfig:
    return BuildConfig(
        catalog=catalog,
        out=out,
        text=TextEncoderConfig(model=str(text_model), max_seq_length=64),
        image=ImageEncoderConfig(model=f"local-dir:{clip_dir}"),
        device="cpu",
        progress=False,
    )


@pytest.fixture(scope="session")
def tiny_index(
    tmp_path_factory: pytest.TempPathFactory,
    synth_dir: Path,
    tiny_text_model_dir: Path,
    tiny_clip_dir: Path,
) -> Path:
    """An index root built once from the 200-product synthetic catalogue, tiny models."""
    root = tmp_path_factory.mktemp("api-index") / "index"
    build_index(tiny_build_config(synth_dir, root, tiny_text_model_dir, tiny_clip_dir))
    return root


@pytest.fixture
def build_config(
    synth_dir: Path, tiny_text_model_dir: Path, tiny_clip_dir: Path
) -> Callable[[Path], BuildConfig]:
    """The tiny build of the synthetic catalogue into a given index root."""

    def make(root: Path) -> BuildConfig:
        return tiny_build_config(synth_dir, root, tiny_text_model_dir, tiny_clip_dir)

    return make


@pytest.fixture
def private_index(tiny_index: Path, tmp_path: Path) -> Path:
    """A copy of the tiny index root (with its embedding cache) that a test may publish to."""
    root = tmp_path / "private-index"
    shutil.copytree(tiny_index, root, ignore=shutil.ignore_patterns("journal.sqlite*"))
    return root


@pytest.fixture
def make_settings(tiny_index: Path, tmp_path: Path) -> Callable[..., ServeSettings]:
    """Settings over the tiny index with a fresh journal per test (overrides by keyword)."""

    def make(**overrides: Any) -> ServeSettings:
        values: dict[str, Any] = {
            "index": tiny_index,
            "journal": tmp_path / "journal.sqlite",
            "api_key": API_KEY,
            "device": "cpu",
            "verify_index": False,
            "load_in_background": False,
            "max_body_bytes": 256 * 1024,
        }
        values.update(overrides)
        return ServeSettings(**values)

    return make


@pytest.fixture
def open_client(
    make_settings: Callable[..., ServeSettings],
) -> Iterator[Callable[..., TestClient]]:
    """Start apps (lifespan run) over the tiny index; all are closed at the end."""
    clients: list[TestClient] = []

    def open_(app: FastAPI | None = None, **overrides: Any) -> TestClient:
        client = TestClient(
            app if app is not None else create_app(make_settings(**overrides)),
            raise_server_exceptions=False,
        )
        client.__enter__()
        clients.append(client)
        return client

    yield open_
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def auth() -> dict[str, str]:
    """Headers carrying the test API key."""
    return dict(AUTH)


@pytest.fixture
def api_key() -> str:
    return API_KEY


def _png(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def png() -> Callable[..., bytes]:
    """Make a small PNG photo of one colour."""
    return _png


@pytest.fixture
def png_base64() -> Callable[..., str]:
    """Make a small PNG photo of one colour, base64-encoded."""

    def make(colour: tuple[int, int, int] = (200, 30, 30)) -> str:
        return base64.b64encode(_png(colour)).decode("ascii")

    return make
